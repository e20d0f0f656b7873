//! The manager's server: a thread accepts authenticated clients, a thread per client serves
//! its requests (as Python's `Server` does), and shared objects live in a table of ids.
//! Objects hold encoded bytes; the server never needs the clients' types, except for
//! registered ones, whose code it runs.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::os::fd::AsFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use super::protocol::{Blob, Fault, Kind, Op, Reply, Request};
use super::Registry;
use crate::connection::{Connection, ConnectionError, Listener};
use crate::sys::socket;

/// Who sent a request (one number per connection), for locks held by a client that left.
pub(crate) type ClientId = u64;

/// How often a blocking operation looks whether its client is still there.
const LIVENESS_SLICE: Duration = Duration::from_millis(100);

/// Whether the client of the current request is still connected.
pub(crate) struct Liveness<'a>(&'a Connection);

impl Liveness<'_> {
    fn gone(&self) -> bool {
        socket::peer_closed(self.0.as_fd()).unwrap_or(true)
    }
}

/// A shared object, as the server holds it.
pub(crate) trait Object: Send + Sync {
    fn call(&self, op: Op, client: ClientId, live: &Liveness<'_>) -> Reply;
    /// A reply to `op` could not be delivered (the client left): undo what it took.
    fn undelivered(&self, _op: &Op, _reply: Reply) {}
    /// The client left: release what it held.
    fn disconnected(&self, _client: ClientId) {}
}

fn usage(kind: &str, op: &Op) -> Reply {
    Reply::Err(
        Fault::Usage,
        format!("{op:?} is not an operation of a managed {kind}"),
    )
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Waits on `cv` until `ready` holds, `timeout` passes (`Err(Timeout)`) or the client leaves
/// (`Err(Closing)`: nothing is taken for a client that will not read the reply).
fn wait_for<'a, T>(
    cv: &Condvar,
    mut g: MutexGuard<'a, T>,
    timeout: Option<Duration>,
    live: &Liveness<'_>,
    closing: &AtomicBool,
    mut ready: impl FnMut(&T) -> bool,
) -> Result<MutexGuard<'a, T>, Fault> {
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    loop {
        if ready(&g) {
            return Ok(g);
        }
        let now = Instant::now();
        let slice = match deadline {
            Some(d) if now >= d => return Err(Fault::Timeout),
            Some(d) => (d - now).min(LIVENESS_SLICE),
            None => LIVENESS_SLICE,
        };
        g = cv
            .wait_timeout(g, slice)
            .unwrap_or_else(|p| p.into_inner())
            .0;
        if !ready(&g) && (live.gone() || closing.load(Ordering::Relaxed)) {
            return Err(Fault::Closing);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A dict: insertion-ordered, each entry with the version of its last write.

#[derive(Default)]
struct DictState {
    entries: HashMap<Blob, (u64, Blob, u64)>,
    order: BTreeMap<u64, Blob>,
    next: u64,
}

impl DictState {
    fn bump(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    fn set(&mut self, k: &[u8], v: Blob) {
        let version = self.bump();
        match self.entries.get_mut(k) {
            Some(e) => {
                e.1 = v;
                e.2 = version;
            }
            None => {
                self.order.insert(version, k.to_vec());
                self.entries.insert(k.to_vec(), (version, v, version));
            }
        }
    }

    fn remove(&mut self, k: &[u8]) -> Option<Blob> {
        let (seq, v, _) = self.entries.remove(k)?;
        self.order.remove(&seq);
        self.bump();
        Some(v)
    }

    fn ordered(&self) -> impl Iterator<Item = (&Blob, &Blob)> + '_ {
        self.order
            .values()
            .filter_map(|k| self.entries.get(k).map(|e| (k, &e.1)))
    }
}

#[derive(Default)]
struct Dict(Mutex<DictState>);

impl Object for Dict {
    fn call(&self, op: Op, _: ClientId, _: &Liveness<'_>) -> Reply {
        let mut d = lock(&self.0);
        match op {
            Op::Get(k) => Reply::Maybe(d.entries.get(&k).map(|e| e.1.clone())),
            Op::Set(k, v) => {
                d.set(&k, v);
                Reply::Unit
            }
            Op::SetMany(blob) => {
                let mut items = super::unframe(&blob);
                while let Some(k) = items.next() {
                    match (k, items.next()) {
                        (Ok(k), Some(Ok(v))) => d.set(k, v.to_vec()),
                        (Err(e), _) | (_, Some(Err(e))) => return Reply::Err(Fault::Usage, e),
                        (Ok(_), None) => {
                            return Reply::Err(Fault::Usage, "a key without a value".into())
                        }
                    }
                }
                Reply::Unit
            }
            Op::GetMany(blob) => {
                let mut out = Vec::with_capacity(blob.len() * 2);
                for k in super::unframe(&blob) {
                    let k = match k {
                        Ok(k) => k,
                        Err(e) => return Reply::Err(Fault::Usage, e),
                    };
                    match d.entries.get(k) {
                        Some(e) => {
                            out.push(1);
                            out.extend_from_slice(&(e.1.len() as u64).to_le_bytes());
                            out.extend_from_slice(&e.1);
                        }
                        None => out.push(0),
                    }
                }
                Reply::Framed(out)
            }
            Op::Remove(k) => Reply::Maybe(d.remove(&k)),
            Op::Contains(k) => Reply::Bool(d.entries.contains_key(&k)),
            Op::SetDefault(k, v) => match d.entries.get(&k) {
                Some(e) => Reply::Bytes(e.1.clone()),
                None => {
                    d.set(&k, v.clone());
                    Reply::Bytes(v)
                }
            },
            Op::Keys => Reply::List(d.ordered().map(|(k, _)| k.clone()).collect()),
            Op::Values => Reply::List(d.ordered().map(|(_, v)| v.clone()).collect()),
            Op::Items => Reply::Pairs(d.ordered().map(|(k, v)| (k.clone(), v.clone())).collect()),
            Op::GetVersioned(k) => match d.entries.get(&k) {
                Some(e) => Reply::Versioned(Some(e.1.clone()), e.2),
                None => Reply::Versioned(None, 0),
            },
            Op::SetIfVersion(k, v, version) => {
                let now = d.entries.get(&k).map_or(0, |e| e.2);
                if now != version {
                    return Reply::Conflict;
                }
                d.set(&k, v);
                Reply::Unit
            }
            Op::Len => Reply::Len(d.entries.len() as u64),
            Op::Clear => {
                d.entries.clear();
                d.order.clear();
                d.bump();
                Reply::Unit
            }
            op => usage("dict", &op),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A list, with one version for the whole list.

#[derive(Default)]
struct List(Mutex<(Vec<Blob>, u64)>);

/// Python's index rules: negative counts from the end.
fn index(i: i64, len: usize) -> Result<usize, Reply> {
    let at = if i < 0 { len as i64 + i } else { i };
    if at < 0 || at >= len as i64 {
        return Err(Reply::Err(
            Fault::Index,
            format!("list index {i} out of range for a list of {len}"),
        ));
    }
    Ok(at as usize)
}

impl Object for List {
    fn call(&self, op: Op, _: ClientId, _: &Liveness<'_>) -> Reply {
        let mut g = lock(&self.0);
        let (items, version) = &mut *g;
        let writes = matches!(
            op,
            Op::Append(_)
                | Op::Extend(_)
                | Op::SetAt(..)
                | Op::Insert(..)
                | Op::PopAt(_)
                | Op::Clear
                | Op::SetAtIfVersion(..)
        );
        let reply = match op {
            Op::Append(v) => {
                items.push(v);
                Reply::Unit
            }
            Op::Extend(vs) => {
                items.extend(vs);
                Reply::Unit
            }
            Op::At(i) => match index(i, items.len()) {
                Ok(at) => Reply::Bytes(items[at].clone()),
                Err(r) => r,
            },
            Op::SetAt(i, v) => match index(i, items.len()) {
                Ok(at) => {
                    items[at] = v;
                    Reply::Unit
                }
                Err(r) => r,
            },
            Op::Insert(i, v) => {
                // Python's insert clamps the index.
                let len = items.len() as i64;
                let at = if i < 0 { (len + i).max(0) } else { i.min(len) };
                items.insert(at as usize, v);
                Reply::Unit
            }
            Op::PopAt(i) => {
                if items.is_empty() {
                    Reply::Err(Fault::Index, "pop from an empty list".into())
                } else {
                    match index(i.unwrap_or(-1), items.len()) {
                        Ok(at) => Reply::Bytes(items.remove(at)),
                        Err(r) => r,
                    }
                }
            }
            Op::AtVersioned(i) => match index(i, items.len()) {
                Ok(at) => Reply::Versioned(Some(items[at].clone()), *version),
                Err(r) => r,
            },
            Op::SetAtIfVersion(i, v, seen) => {
                if seen != *version {
                    return Reply::Conflict;
                }
                match index(i, items.len()) {
                    Ok(at) => {
                        items[at] = v;
                        Reply::Unit
                    }
                    Err(r) => r,
                }
            }
            Op::All => Reply::List(items.clone()),
            Op::Len => Reply::Len(items.len() as u64),
            Op::Clear => {
                items.clear();
                Reply::Unit
            }
            op => return usage("list", &op),
        };
        if writes && !matches!(reply, Reply::Err(..)) {
            *version += 1;
        }
        reply
    }
}

// ---------------------------------------------------------------------------------------------

struct Value(Mutex<(Blob, u64)>);

impl Object for Value {
    fn call(&self, op: Op, _: ClientId, _: &Liveness<'_>) -> Reply {
        let mut g = lock(&self.0);
        match op {
            Op::Load => Reply::Bytes(g.0.clone()),
            Op::Store(v) => {
                *g = (v, g.1 + 1);
                Reply::Unit
            }
            Op::LoadVersioned => Reply::Versioned(Some(g.0.clone()), g.1),
            Op::StoreIfVersion(v, seen) => {
                if seen != g.1 {
                    return Reply::Conflict;
                }
                *g = (v, g.1 + 1);
                Reply::Unit
            }
            op => usage("Value", &op),
        }
    }
}

// ---------------------------------------------------------------------------------------------

struct Queue {
    items: Mutex<VecDeque<Blob>>,
    max: Option<usize>,
    changed: Condvar,
    closing: Arc<AtomicBool>,
}

impl Object for Queue {
    fn call(&self, op: Op, _: ClientId, live: &Liveness<'_>) -> Reply {
        let g = lock(&self.items);
        match op {
            Op::Put(v, timeout) => {
                let max = self.max;
                let full = move |q: &VecDeque<Blob>| max.is_some_and(|m| q.len() >= m);
                if timeout == Some(Duration::ZERO) && full(&g) {
                    return Reply::Err(Fault::Full, "the queue is full".into());
                }
                match wait_for(&self.changed, g, timeout, live, &self.closing, |q| !full(q)) {
                    Ok(mut g) => {
                        g.push_back(v);
                        self.changed.notify_all();
                        Reply::Unit
                    }
                    Err(Fault::Timeout) => Reply::Err(Fault::Full, "the queue is full".into()),
                    Err(f) => Reply::Err(f, "the client left".into()),
                }
            }
            Op::Take(timeout) => {
                if timeout == Some(Duration::ZERO) && g.is_empty() {
                    return Reply::Err(Fault::Empty, "the queue is empty".into());
                }
                match wait_for(&self.changed, g, timeout, live, &self.closing, |q| {
                    !q.is_empty()
                }) {
                    Ok(mut g) => {
                        let v = g.pop_front().unwrap_or_default();
                        self.changed.notify_all();
                        Reply::Bytes(v)
                    }
                    Err(Fault::Timeout) => Reply::Err(Fault::Empty, "the queue is empty".into()),
                    Err(f) => Reply::Err(f, "the client left".into()),
                }
            }
            Op::QSize | Op::Len => Reply::Len(g.len() as u64),
            Op::IsFull => Reply::Bool(self.max.is_some_and(|m| g.len() >= m)),
            op => usage("Queue", &op),
        }
    }

    fn undelivered(&self, op: &Op, reply: Reply) {
        // An item taken for a client that left goes back to the front: nothing is lost.
        if let (Op::Take(_), Reply::Bytes(v)) = (op, reply) {
            lock(&self.items).push_front(v);
            self.changed.notify_all();
        }
    }
}

// ---------------------------------------------------------------------------------------------

struct Lock {
    owner: Mutex<Option<ClientId>>,
    changed: Condvar,
    closing: Arc<AtomicBool>,
}

impl Object for Lock {
    fn call(&self, op: Op, client: ClientId, live: &Liveness<'_>) -> Reply {
        let g = lock(&self.owner);
        match op {
            Op::Acquire(timeout) => {
                if timeout == Some(Duration::ZERO) && g.is_some() {
                    return Reply::Bool(false);
                }
                match wait_for(&self.changed, g, timeout, live, &self.closing, |o| {
                    o.is_none()
                }) {
                    Ok(mut g) => {
                        *g = Some(client);
                        Reply::Bool(true)
                    }
                    Err(Fault::Timeout) => Reply::Bool(false),
                    Err(f) => Reply::Err(f, "the client left".into()),
                }
            }
            Op::Release => {
                let mut g = g;
                if g.take().is_none() {
                    return Reply::Err(Fault::NotLocked, "release of an unlocked lock".into());
                }
                self.changed.notify_all();
                Reply::Unit
            }
            Op::Locked => Reply::Bool(g.is_some()),
            op => usage("Lock", &op),
        }
    }

    fn undelivered(&self, op: &Op, reply: Reply) {
        if let (Op::Acquire(_), Reply::Bool(true)) = (op, reply) {
            *lock(&self.owner) = None;
            self.changed.notify_all();
        }
    }

    fn disconnected(&self, client: ClientId) {
        // A client that left while holding the lock does not leave it locked forever.
        let mut g = lock(&self.owner);
        if *g == Some(client) {
            *g = None;
            self.changed.notify_all();
        }
    }
}

// ---------------------------------------------------------------------------------------------

struct Event {
    flag: Mutex<bool>,
    changed: Condvar,
    closing: Arc<AtomicBool>,
}

impl Object for Event {
    fn call(&self, op: Op, _: ClientId, live: &Liveness<'_>) -> Reply {
        let mut g = lock(&self.flag);
        match op {
            Op::SetFlag => {
                *g = true;
                self.changed.notify_all();
                Reply::Unit
            }
            Op::ClearFlag => {
                *g = false;
                Reply::Unit
            }
            Op::IsSet => Reply::Bool(*g),
            Op::Wait(timeout) => {
                match wait_for(&self.changed, g, timeout, live, &self.closing, |f| *f) {
                    Ok(_) => Reply::Bool(true),
                    Err(Fault::Timeout) => Reply::Bool(false),
                    Err(f) => Reply::Err(f, "the client left".into()),
                }
            }
            op => usage("Event", &op),
        }
    }
}

// ---------------------------------------------------------------------------------------------

/// A registered type, behind its own lock.
pub(crate) struct UserObject<T: super::Shared>(pub(crate) Mutex<T>);

impl<T: super::Shared> Object for UserObject<T> {
    fn call(&self, op: Op, _: ClientId, _: &Liveness<'_>) -> Reply {
        let Op::User(bytes) = op else {
            return usage(T::name(), &op);
        };
        let request: T::Request = match crate::handle::decode(&bytes, Vec::new()) {
            Ok(r) => r,
            Err(e) => {
                return Reply::Err(
                    Fault::Usage,
                    format!(
                        "the request does not decode as {}: {e}",
                        std::any::type_name::<T::Request>()
                    ),
                )
            }
        };
        let mut g = lock(&self.0);
        match catch_unwind(AssertUnwindSafe(|| g.handle(request))) {
            Ok(response) => match crate::handle::encode(&response) {
                Ok(e) if e.fds.is_empty() => Reply::Bytes(e.bytes),
                Ok(_) => Reply::Err(
                    Fault::Usage,
                    "a response holding handles cannot leave a manager".into(),
                ),
                Err(e) => Reply::Err(Fault::Usage, format!("cannot encode the response: {e}")),
            },
            Err(payload) => Reply::Err(
                Fault::Panicked,
                format!(
                    "the handler of {} panicked: {}",
                    T::name(),
                    crate::task::panic_message(&*payload)
                ),
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------

/// What to undo if a reply cannot be delivered: the object and the operation.
type Undo = (Arc<dyn Object>, Op);

/// The server's state, shared by its threads.
pub(crate) struct State<R: Registry> {
    objects: RwLock<HashMap<u64, Arc<dyn Object>>>,
    next_id: AtomicU64,
    next_client: AtomicU64,
    closing: Arc<AtomicBool>,
    listener: Listener,
    /// The clients' connections, to end them at shutdown.
    clients: Mutex<HashMap<ClientId, Connection>>,
    _registry: std::marker::PhantomData<fn() -> R>,
}

impl<R: Registry> State<R> {
    pub(crate) fn new(listener: Listener) -> State<R> {
        State {
            objects: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            next_client: AtomicU64::new(1),
            closing: Arc::new(AtomicBool::new(false)),
            listener,
            clients: Mutex::new(HashMap::new()),
            _registry: std::marker::PhantomData,
        }
    }

    fn create(&self, kind: Kind) -> Reply {
        let closing = self.closing.clone();
        let object: Arc<dyn Object> = match kind {
            Kind::Dict => Arc::new(Dict::default()),
            Kind::List => Arc::new(List::default()),
            Kind::Value(v) => Arc::new(Value(Mutex::new((v, 0)))),
            Kind::Queue(max) => Arc::new(Queue {
                items: Mutex::new(VecDeque::new()),
                max: max.map(|m| m.max(1) as usize),
                changed: Condvar::new(),
                closing,
            }),
            Kind::Lock => Arc::new(Lock {
                owner: Mutex::new(None),
                changed: Condvar::new(),
                closing,
            }),
            Kind::Event => Arc::new(Event {
                flag: Mutex::new(false),
                changed: Condvar::new(),
                closing,
            }),
            Kind::User(name, init) => match R::construct(&name, &init) {
                Some(Ok(o)) => o.0,
                Some(Err(e)) => return Reply::Err(Fault::Usage, e),
                None => {
                    let mut known = Vec::new();
                    R::names(&mut known);
                    return Reply::Err(
                        Fault::Usage,
                        format!(
                            "no type named {name:?} is registered with this manager (registered: \
                             {known:?}); register it on the builder that starts or serves the \
                             manager"
                        ),
                    );
                }
            },
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.objects
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, object);
        Reply::Id(id)
    }

    fn object(&self, id: u64) -> Result<Arc<dyn Object>, Reply> {
        self.objects
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
            .ok_or_else(|| Reply::Err(Fault::NoSuchObject, format!("no shared object {id}")))
    }

    pub(crate) fn address(&self) -> &crate::connection::Address {
        self.listener.address()
    }

    /// Stops accepting and ends every client's connection (they see the manager gone).
    pub(crate) fn stop(&self) {
        self.closing.store(true, Ordering::Release);
        self.listener.close();
        for c in lock(&self.clients).values() {
            let _ = socket::shutdown_both(c.as_fd());
        }
    }

    /// Accepts clients until [`stop`](Self::stop); a thread serves each.
    pub(crate) fn serve_forever(self: &Arc<Self>) -> Result<(), ConnectionError> {
        loop {
            match self.listener.accept() {
                Ok(conn) => {
                    let state = self.clone();
                    let spawned = std::thread::Builder::new()
                        .name("manager-client".into())
                        .spawn(move || state.serve_client(conn));
                    if spawned.is_err() {
                        // Out of threads: this client's connection is dropped (it sees end of
                        // file); the others go on.
                        continue;
                    }
                }
                Err(_) if self.closing.load(Ordering::Acquire) => return Ok(()),
                // One client's failed handshake: the others go on.
                Err(ConnectionError::Authentication(_))
                | Err(ConnectionError::Eof)
                | Err(ConnectionError::TooLarge { .. })
                | Err(ConnectionError::Malformed(_)) => continue,
                Err(ConnectionError::Io(e))
                    if e.raw_os_error() == Some(libc::EMFILE)
                        || e.raw_os_error() == Some(libc::ENFILE) =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(ConnectionError::Io(e)) => return Err(ConnectionError::Io(e)),
                Err(_) => continue,
            }
        }
    }

    fn serve_client(self: Arc<Self>, conn: Connection) {
        let client = self.next_client.fetch_add(1, Ordering::Relaxed);
        let mut conn = conn;
        let register = |c: &Connection| {
            if let Ok(dup) = c.try_clone() {
                lock(&self.clients).insert(client, dup);
            }
        };
        register(&conn);
        if self.closing.load(Ordering::Acquire) {
            lock(&self.clients).remove(&client);
            return;
        }
        let mut touched: Vec<Arc<dyn Object>> = Vec::new();
        loop {
            let request: Request = match conn.recv() {
                Ok(r) => r,
                Err(ConnectionError::Decode(why)) => {
                    if conn.send(&Reply::Err(Fault::Usage, why)).is_err() {
                        break;
                    }
                    continue;
                }
                Err(_) => break,
            };
            let (reply, undo): (Reply, Option<Undo>) = match request {
                Request::Upgrade(pipe) => {
                    conn = pipe;
                    register(&conn);
                    (Reply::Unit, None)
                }
                Request::Ping => (Reply::Unit, None),
                Request::Create(kind) => (self.create(kind), None),
                Request::Call(id, op) => match self.object(id) {
                    Ok(o) => {
                        let keep = matches!(op, Op::Take(_) | Op::Acquire(_)).then(|| op.clone());
                        let live = Liveness(&conn);
                        let reply = o.call(op, client, &live);
                        if matches!(reply, Reply::Bool(true)) && keep.is_some() {
                            touched.push(o.clone());
                        }
                        (reply, keep.map(|op| (o, op)))
                    }
                    Err(r) => (r, None),
                },
                Request::Batch(id, ops) => match self.object(id) {
                    Ok(o) => {
                        let live = Liveness(&conn);
                        let replies = ops
                            .into_iter()
                            .map(|op| o.call(op, client, &live))
                            .collect();
                        (Reply::Batch(replies), None)
                    }
                    Err(r) => (r, None),
                },
                Request::Shutdown => {
                    let _ = conn.send(&Reply::Unit);
                    self.stop();
                    break;
                }
            };
            if let Err(_e) = conn.send(&reply) {
                if let Some((o, op)) = undo {
                    o.undelivered(&op, reply);
                }
                break;
            }
        }
        lock(&self.clients).remove(&client);
        for o in touched {
            o.disconnected(client);
        }
    }
}
