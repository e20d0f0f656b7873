//! Managers: a server process that owns shared objects, reached through proxies over an
//! authenticated connection, like Python's `multiprocessing.managers`.
//!
//! ```text
//! your processes                          the manager's process
//! DictProxy ─┐                           ┌ thread per client ┐
//! ListProxy ─┼─ Connection (Unix socket, ┤                   ├─ objects by id: dict, list,
//! Proxy<T>  ─┘  then shared memory; or   └ ...               ┘  Value, Queue, Lock, Event,
//!               TCP across machines)                            your registered types
//! ```
//!
//! - [`Manager::start`] runs the server in its own process (Python's `Manager()` /
//!   `SyncManager().start()`), under the current start method; it is a daemon child, so it
//!   ends with its parent as other children do.
//! - [`ManagerBuilder::get_server`] and [`Server::serve_forever`] serve from this process, on
//!   an address others reach with [`Manager::connect`] (Python's `BaseManager(address,
//!   authkey).get_server().serve_forever()` and `.connect()`), also from other machines.
//! - A proxy is a handle: pass it to a child or a pool task, or send it through a
//!   connection, and the receiver reaches the same object. It carries the manager's address
//!   and authkey (so send proxies only over connections you trust).
//!
//! # Faster than Python, and how to be faster still
//! A local client's requests go through shared memory after the handshake (the client sends
//! the server one end of a [`Pipe`](crate::Pipe) through the Unix socket). A request is one
//! round trip; Python's `Manager().dict()` costs about 70 µs per write on a small machine,
//! ours a few microseconds (the harness's W9b measures both). Each round trip still costs
//! two context switches: when you do many operations in a row, send them together with
//! [`DictProxy::set_many`], [`DictProxy::get_many`], [`ListProxy::extend`] or
//! [`DictProxy::batch`] — one round trip for all of them.
//!
//! # Python's pitfall, fixed
//! In Python, `d["k"].append(1)` on a managed dict changes a copy, and the change is lost.
//! Here [`DictProxy::update`] (and the `update` of lists and values) reads the value, runs
//! your closure on it and writes it back only if nobody wrote in between (else it reads
//! again and reruns the closure): an update is never lost, even with many writers.
//!
//! # Lifetime
//! Objects live as long as the manager (Python frees one when its last proxy is gone).
//! A manager started with [`Manager::start`] shuts down when its `Manager` is dropped or
//! [`shutdown`](Manager::shutdown) is called: a shutdown request, then after a second
//! `terminate`, then `kill` (Python's ladder). Proxies then return [`ManagerError::Gone`].
//!
//! # Security
//! A client must pass the authkey handshake (the manager's key, by default this process's
//! [`authkey`](crate::CurrentProcess::authkey), which children inherit). The key
//! authenticates but does not encrypt; across an untrusted network, use a tunnel. A client
//! holding the key is trusted to run the registered types' handlers; the server does not
//! run code it did not register.

use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::connection::{Address, Client, Connection, ConnectionError, Listener, ToAddress};
use crate::context::StartMethod;
use crate::process::Process;

mod protocol;
mod proxy;
mod server;

use protocol::{Fault, Kind, Op, Reply, Request};
pub use proxy::{
    DictBatch, DictProxy, EventProxy, ListProxy, LockProxy, ManagedLockGuard, NamespaceProxy,
    Proxy, QueueProxy, ValueProxy,
};

/// A type of yours that a manager can hold (Python's `BaseManager.register(typeid,
/// callable)`): the server keeps the value and answers each request with [`handle`]
/// (one request at a time per object).
///
/// Register it on the builder that starts or serves the manager
/// ([`ManagerBuilder::register`]); make one with [`Manager::create`]; call it through
/// [`Proxy::call`].
///
/// [`handle`]: Shared::handle
///
/// # Examples
/// ```
/// use multiprocess::managers::{Manager, Shared};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Counter(i64);
///
/// #[derive(Serialize, Deserialize)]
/// enum Op { Add(i64), Get }
///
/// impl Shared for Counter {
///     type Request = Op;
///     type Response = i64;
///     fn handle(&mut self, op: Op) -> i64 {
///         if let Op::Add(n) = op { self.0 += n; }
///         self.0
///     }
/// }
///
/// let manager = Manager::builder().register::<Counter>().start()?;
/// let counter = manager.create(Counter(40))?;
/// assert_eq!(counter.call(Op::Add(2))?, 42);
/// # Ok::<(), multiprocess::Error>(())
/// ```
pub trait Shared: Serialize + DeserializeOwned + Send + 'static {
    /// What clients ask.
    type Request: Serialize + DeserializeOwned;
    /// What the server answers.
    type Response: Serialize + DeserializeOwned;
    /// Answers one request, in the manager's process. A panic here is reported to the
    /// caller as [`ManagerError::Remote`]; the manager goes on.
    fn handle(&mut self, request: Self::Request) -> Self::Response;
    /// The name this type is registered under (default: its Rust type name). Override it
    /// when the server is another program, in which the same type has another path.
    fn name() -> &'static str
    where
        Self: Sized,
    {
        std::any::type_name::<Self>()
    }
}

/// The registered types of a manager, as a type-level list built by
/// [`ManagerBuilder::register`] (implemented by `()` and `(Registered<T>, R)`).
pub trait Registry: Send + Sync + 'static {
    #[doc(hidden)]
    fn construct(name: &str, init: &[u8]) -> Option<Result<ObjectBox, String>>;
    #[doc(hidden)]
    fn names(out: &mut Vec<&'static str>);
}

/// A shared object as the server holds it (not part of the API).
#[doc(hidden)]
pub struct ObjectBox(pub(crate) Arc<dyn server::Object>);

impl fmt::Debug for ObjectBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ObjectBox")
    }
}

/// One entry of a [`Registry`].
pub struct Registered<T>(PhantomData<fn() -> T>);

impl<T> fmt::Debug for Registered<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Registered<{}>", std::any::type_name::<T>())
    }
}

impl Registry for () {
    fn construct(_: &str, _: &[u8]) -> Option<Result<ObjectBox, String>> {
        None
    }
    fn names(_: &mut Vec<&'static str>) {}
}

impl<T: Shared, R: Registry> Registry for (Registered<T>, R) {
    fn construct(name: &str, init: &[u8]) -> Option<Result<ObjectBox, String>> {
        if name != T::name() {
            return R::construct(name, init);
        }
        Some(
            crate::handle::decode::<T>(init, Vec::new())
                .map(|v| ObjectBox(Arc::new(server::UserObject(Mutex::new(v)))))
                .map_err(|e| format!("the initial value does not decode as {}: {e}", T::name())),
        )
    }
    fn names(out: &mut Vec<&'static str>) {
        out.push(T::name());
        R::names(out);
    }
}

/// Why a manager operation failed.
#[non_exhaustive]
pub enum ManagerError {
    /// The manager could not be reached, or the authkey handshake failed.
    Connect(ConnectionError),
    /// The manager is gone: it was shut down, or its process ended.
    Gone(String),
    /// The manager's process could not be started.
    Start(String),
    /// `get` on an empty queue did not get an item in time (Python's `queue.Empty`).
    Empty,
    /// `put` on a full queue found no room in time (Python's `queue.Full`).
    Full,
    /// An index outside a list (Python's `IndexError`).
    Index(String),
    /// A namespace has no attribute of this name (Python's `AttributeError`).
    NoAttribute(String),
    /// `release` of a lock that is not held.
    NotLocked,
    /// A value could not be encoded (nothing was sent).
    Encode(String),
    /// An answer does not decode as the type asked for.
    Decode(String),
    /// The server refused the request: a handler panicked, a type is not registered, an
    /// operation does not apply.
    Remote(String),
}

impl ManagerError {
    fn from_fault(fault: Fault, why: String) -> ManagerError {
        match fault {
            Fault::Empty => ManagerError::Empty,
            Fault::Full => ManagerError::Full,
            Fault::Index => ManagerError::Index(why),
            Fault::NotLocked => ManagerError::NotLocked,
            Fault::Closing => ManagerError::Gone(format!("the manager is shutting down ({why})")),
            Fault::Timeout | Fault::Usage | Fault::NoSuchObject | Fault::Panicked => {
                ManagerError::Remote(why)
            }
        }
    }

    /// Whether this is [`ManagerError::Gone`].
    pub fn is_gone(&self) -> bool {
        matches!(self, ManagerError::Gone(_))
    }
}

impl fmt::Display for ManagerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ManagerError::Connect(e) => write!(f, "cannot reach the manager: {e}"),
            ManagerError::Gone(why) => write!(
                f,
                "the manager is gone (shut down, or its process ended): {why}"
            ),
            ManagerError::Start(why) => write!(f, "cannot start the manager: {why}"),
            ManagerError::Empty => f.write_str("the managed queue is empty"),
            ManagerError::Full => f.write_str("the managed queue is full"),
            ManagerError::Index(why) => f.write_str(why),
            ManagerError::NoAttribute(name) => write!(f, "the namespace has no attribute {name:?}"),
            ManagerError::NotLocked => f.write_str("release of a managed lock that is not held"),
            ManagerError::Encode(why) => write!(f, "cannot send to the manager: {why}"),
            ManagerError::Decode(why) => write!(f, "cannot read the manager's answer: {why}"),
            ManagerError::Remote(why) => write!(f, "the manager refused: {why}"),
        }
    }
}

impl fmt::Debug for ManagerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let variant = match self {
            ManagerError::Connect(_) => "Connect",
            ManagerError::Gone(_) => "Gone",
            ManagerError::Start(_) => "Start",
            ManagerError::Empty => "Empty",
            ManagerError::Full => "Full",
            ManagerError::Index(_) => "Index",
            ManagerError::NoAttribute(_) => "NoAttribute",
            ManagerError::NotLocked => "NotLocked",
            ManagerError::Encode(_) => "Encode",
            ManagerError::Decode(_) => "Decode",
            ManagerError::Remote(_) => "Remote",
        };
        write!(f, "{variant}: {self}")
    }
}

impl std::error::Error for ManagerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ManagerError::Connect(e) => Some(e),
            _ => None,
        }
    }
}

const HANDLES_REFUSED: &str = "a value holding handles (pipes, queues, ...) cannot be stored \
    in a manager, which keeps bytes; pass the handle to the process that needs it instead";

/// Encodes a key or value for the server (no handles: the server keeps bytes only).
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, ManagerError> {
    let e = crate::handle::encode(value).map_err(|e| ManagerError::Encode(e.0))?;
    if !e.fds.is_empty() {
        return Err(ManagerError::Encode(HANDLES_REFUSED.into()));
    }
    Ok(e.bytes)
}

/// Values encoded one after another into one buffer, each after its length (`u64`, little
/// endian): a batch of keys and values costs one allocation, and the server, which never
/// decodes them, splits them without copying.
pub(crate) struct Framer {
    buf: Vec<u8>,
}

impl Framer {
    /// Runs `fill` to frame values; refuses values that hold handles.
    pub(crate) fn build(
        fill: impl FnOnce(&mut Framer) -> Result<(), ManagerError>,
    ) -> Result<Vec<u8>, ManagerError> {
        let mut f = Framer {
            buf: Vec::with_capacity(4096),
        };
        let (r, fds) = crate::handle::collecting(|| fill(&mut f));
        r?;
        if !fds.is_empty() {
            return Err(ManagerError::Encode(HANDLES_REFUSED.into()));
        }
        Ok(f.buf)
    }

    pub(crate) fn push<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ManagerError> {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0; 8]);
        value
            .serialize(&mut crate::wire::Ser { out: &mut self.buf })
            .map_err(|e| ManagerError::Encode(format!("cannot serialize the value: {e}")))?;
        let len = (self.buf.len() - at - 8) as u64;
        self.buf[at..at + 8].copy_from_slice(&len.to_le_bytes());
        Ok(())
    }
}

/// Splits a framed buffer; a length that runs past the end is an error (the buffer comes
/// from another process).
pub(crate) fn unframe(mut blob: &[u8]) -> impl Iterator<Item = Result<&[u8], String>> {
    std::iter::from_fn(move || {
        if blob.is_empty() {
            return None;
        }
        let Some((len, rest)) = blob.split_first_chunk::<8>() else {
            blob = &[];
            return Some(Err("a framed length is cut short".into()));
        };
        let len = u64::from_le_bytes(*len);
        match usize::try_from(len).ok().filter(|&n| n <= rest.len()) {
            Some(n) => {
                let (item, after) = rest.split_at(n);
                blob = after;
                Some(Ok(item))
            }
            None => {
                blob = &[];
                Some(Err(format!(
                    "a framed value of {len} bytes runs past the {} bytes left",
                    rest.len()
                )))
            }
        }
    })
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ManagerError> {
    crate::handle::decode(bytes, Vec::new()).map_err(|e| ManagerError::Decode(e.0))
}

// ---------------------------------------------------------------------------------------------
// The client side: a session per manager and process, with a connection per concurrent call.

/// The connections of this process to one manager. Idle connections are kept for the next
/// call; a call while all are busy (another thread waits in a queue's `get`) opens another.
pub(crate) struct Session {
    address: Address,
    authkey: Vec<u8>,
    idle: Mutex<Vec<Connection>>,
    gone: AtomicBool,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// This process's sessions, so that proxies received from elsewhere share connections.
static SESSIONS: Mutex<Vec<(i32, Weak<Session>)>> = Mutex::new(Vec::new());

impl Session {
    fn new(address: Address, authkey: Vec<u8>) -> Arc<Session> {
        let pid = crate::sys::process::getpid();
        let mut all = SESSIONS.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|(p, w)| *p == pid && w.strong_count() > 0);
        for (_, w) in all.iter() {
            if let Some(s) = w.upgrade() {
                if s.address == address && s.authkey == authkey {
                    return s;
                }
            }
        }
        let s = Arc::new(Session {
            address,
            authkey,
            idle: Mutex::new(Vec::new()),
            gone: AtomicBool::new(false),
        });
        all.push((pid, Arc::downgrade(&s)));
        s
    }

    fn connect(&self) -> Result<Connection, ManagerError> {
        let conn = Client::builder()
            .authkey(&self.authkey)
            .connect(&self.address)
            .map_err(|e| match e {
                ConnectionError::Io(io)
                    if matches!(
                        io.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                    ) && self.gone.load(Ordering::Relaxed) =>
                {
                    ManagerError::Gone(format!("nothing listens at {} any more", self.address))
                }
                e => ManagerError::Connect(e),
            })?;
        if !self.address.is_unix() {
            return Ok(conn);
        }
        // Same machine: go on through shared memory.
        let (mine, theirs) = crate::Pipe::new().map_err(|e| ManagerError::Connect(e.into()))?;
        conn.send(&Request::Upgrade(theirs))
            .map_err(|e| self.lost(e))?;
        match mine.recv::<Reply>().map_err(|e| self.lost(e))? {
            Reply::Unit => Ok(mine),
            other => Err(ManagerError::Remote(format!(
                "unexpected answer to an upgrade: {other:?}"
            ))),
        }
    }

    fn lost(&self, e: ConnectionError) -> ManagerError {
        match e {
            ConnectionError::Eof | ConnectionError::BrokenPipe => {
                self.gone.store(true, Ordering::Relaxed);
                ManagerError::Gone(format!("the connection to {} closed", self.address))
            }
            ConnectionError::Io(io) if io.kind() == io::ErrorKind::ConnectionReset => {
                self.gone.store(true, Ordering::Relaxed);
                ManagerError::Gone(format!("the connection to {} was reset", self.address))
            }
            e => ManagerError::Connect(e),
        }
    }

    /// One round trip.
    pub(crate) fn request(&self, request: &Request) -> Result<Reply, ManagerError> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match idle {
            Some(c) => c,
            None => self.connect()?,
        };
        conn.send(request).map_err(|e| self.lost(e))?;
        let reply = conn.recv::<Reply>().map_err(|e| self.lost(e))?;
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn);
        match reply {
            Reply::Err(fault, why) => Err(ManagerError::from_fault(fault, why)),
            r => Ok(r),
        }
    }

    pub(crate) fn call(&self, id: u64, op: Op) -> Result<Reply, ManagerError> {
        self.request(&Request::Call(id, op))
    }

    pub(crate) fn batch(&self, id: u64, ops: Vec<Op>) -> Result<Vec<Reply>, ManagerError> {
        match self.request(&Request::Batch(id, ops))? {
            Reply::Batch(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    fn create(&self, kind: Kind) -> Result<u64, ManagerError> {
        match self.request(&Request::Create(kind))? {
            Reply::Id(id) => Ok(id),
            other => Err(unexpected(other)),
        }
    }
}

pub(crate) fn unexpected(reply: Reply) -> ManagerError {
    match reply {
        Reply::Err(fault, why) => ManagerError::from_fault(fault, why),
        other => ManagerError::Remote(format!("unexpected answer from the manager: {other:?}")),
    }
}

/// What a proxy carries when it travels: where its manager is, its key, and the object.
#[derive(Serialize, Deserialize)]
pub(crate) struct ProxyWire {
    pub(crate) address: Address,
    pub(crate) authkey: Vec<u8>,
    pub(crate) id: u64,
}

impl ProxyWire {
    pub(crate) fn of(session: &Session, id: u64) -> ProxyWire {
        ProxyWire {
            address: session.address.clone(),
            authkey: session.authkey.clone(),
            id,
        }
    }

    pub(crate) fn session(self) -> (Arc<Session>, u64) {
        (Session::new(self.address, self.authkey), self.id)
    }
}

// ---------------------------------------------------------------------------------------------

/// Options for a manager: where it listens, its authkey, its start method, and the types it
/// holds besides the built-in ones.
pub struct ManagerBuilder<R: Registry = ()> {
    address: Option<io::Result<Address>>,
    authkey: Option<Vec<u8>>,
    start_method: Option<StartMethod>,
    timeout: Duration,
    registry: PhantomData<fn() -> R>,
}

impl<R: Registry> fmt::Debug for ManagerBuilder<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names = Vec::new();
        R::names(&mut names);
        f.debug_struct("ManagerBuilder")
            .field("address", &self.address.as_ref().map(|a| a.as_ref().ok()))
            .field("start_method", &self.start_method)
            .field("registered", &names)
            .finish_non_exhaustive()
    }
}

/// What the manager's process is given.
#[derive(Serialize, Deserialize)]
struct Boot {
    address: Option<Address>,
    authkey: Vec<u8>,
    ready: Connection,
}

/// The manager's process.
fn manager_main<R: Registry>(boot: Boot) {
    let mut b = Listener::builder().authkey(&boot.authkey);
    if let Some(a) = &boot.address {
        b = b.address(a);
    }
    let listener = match b.bind() {
        Ok(l) => l,
        Err(e) => {
            let _ = boot.ready.send(&Err::<Address, String>(e.to_string()));
            return;
        }
    };
    let _ = boot
        .ready
        .send(&Ok::<Address, String>(listener.address().clone()));
    drop(boot.ready);
    let state = Arc::new(server::State::<R>::new(listener));
    let _ = state.serve_forever();
}

static MANAGERS: AtomicU32 = AtomicU32::new(0);

impl<R: Registry> ManagerBuilder<R> {
    /// Where the server listens (default: a Unix socket in a new private directory). A TCP
    /// address lets other machines connect; it binds exactly where you say.
    pub fn address(mut self, address: impl ToAddress) -> Self {
        self.address = Some(address.to_address());
        self
    }

    /// The key clients must hold (default: this process's
    /// [`authkey`](crate::CurrentProcess::authkey), which children inherit).
    pub fn authkey(mut self, key: &[u8]) -> Self {
        self.authkey = Some(key.to_vec());
        self
    }

    /// How the manager's process is started (default: the current start method).
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.start_method = Some(method);
        self
    }

    /// How long [`start`](Self::start) and [`connect`](Self::connect) wait for the server
    /// (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Lets the manager hold values of `T` (Python's `register`), made with
    /// [`Manager::create`]. Every type a client will create must be registered on the
    /// builder that starts or serves the manager.
    pub fn register<T: Shared>(self) -> ManagerBuilder<(Registered<T>, R)> {
        ManagerBuilder {
            address: self.address,
            authkey: self.authkey,
            start_method: self.start_method,
            timeout: self.timeout,
            registry: PhantomData,
        }
    }

    fn key(&self) -> Vec<u8> {
        self.authkey
            .clone()
            .unwrap_or_else(crate::lifecycle::authkey)
    }

    /// Starts the server in a new process and connects to it (Python's `Manager()`, or
    /// `BaseManager.start()`).
    ///
    /// # Errors
    /// [`ManagerError::Start`] when the process or its listener could not be made.
    pub fn start(self) -> Result<Manager, ManagerError> {
        let authkey = self.key();
        let address = match self.address {
            Some(a) => Some(a.map_err(|e| ManagerError::Start(e.to_string()))?),
            None => None,
        };
        let (ready, ready_w) =
            crate::Pipe::new().map_err(|e| ManagerError::Start(e.to_string()))?;
        let n = MANAGERS.fetch_add(1, Ordering::Relaxed) + 1;
        let mut b = Process::builder()
            .name(format!("SyncManager-{n}"))
            .daemon(true);
        if let Some(m) = self.start_method {
            b = b.start_method(m);
        }
        let address_given = address.clone();
        let mut process = b.target(
            manager_main::<R>,
            Boot {
                address,
                authkey: authkey.clone(),
                ready: ready_w,
            },
        );
        process
            .start()
            .map_err(|e| ManagerError::Start(e.to_string()))?;
        let bound = match ready.recv_timeout::<Result<Address, String>>(self.timeout) {
            Ok(Ok(a)) => a,
            Ok(Err(why)) => {
                let _ = process.join_timeout(self.timeout);
                return Err(ManagerError::Start(why));
            }
            Err(e) => {
                let _ = process.kill();
                let _ = process.join_timeout(self.timeout);
                return Err(ManagerError::Start(format!(
                    "the manager's process did not report its address ({e}; exit code {:?})",
                    process.exitcode()
                )));
            }
        };
        let private_dir = address_given.is_none();
        let session = Session::new(bound, authkey);
        let manager = Manager {
            session,
            process: Some(Mutex::new(process)),
            done: AtomicBool::new(false),
            private_dir,
        };
        manager.session.request(&Request::Ping)?;
        Ok(manager)
    }

    /// Binds the server's listener in this process, without serving yet (Python's
    /// `get_server()`): [`Server::address`] tells where it is, [`Server::serve_forever`]
    /// serves.
    ///
    /// # Errors
    /// The address is in use or cannot be resolved.
    pub fn get_server(self) -> Result<Server<R>, ManagerError> {
        let key = self.key();
        let mut b = Listener::builder().authkey(&key);
        if let Some(a) = self.address {
            b = b.address(a.map_err(|e| ManagerError::Start(e.to_string()))?);
        }
        let listener = b.bind().map_err(|e| ManagerError::Start(e.to_string()))?;
        Ok(Server {
            state: Arc::new(server::State::new(listener)),
        })
    }

    /// Connects to a running manager at the builder's [`address`](Self::address) (Python's
    /// `BaseManager(address, authkey).connect()`).
    ///
    /// # Errors
    /// Nothing serves there, or the handshake failed.
    pub fn connect(self) -> Result<Manager, ManagerError> {
        let key = self.key();
        let address = match self.address {
            Some(a) => a.map_err(|e| ManagerError::Connect(e.into()))?,
            None => {
                return Err(ManagerError::Connect(ConnectionError::Io(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "connect needs the manager's address (ManagerBuilder::address)",
                ))))
            }
        };
        let session = Session::new(address, key);
        session.request(&Request::Ping)?;
        Ok(Manager {
            session,
            process: None,
            done: AtomicBool::new(false),
            private_dir: false,
        })
    }
}

/// A manager's server running in this process (Python's `Server`, from `get_server()`).
pub struct Server<R: Registry = ()> {
    state: Arc<server::State<R>>,
}

impl<R: Registry> fmt::Debug for Server<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server").finish_non_exhaustive()
    }
}

impl<R: Registry> Server<R> {
    /// Where clients connect.
    pub fn address(&self) -> &Address {
        self.state.address()
    }

    /// Serves clients until a client asks the manager to shut down
    /// ([`Manager::shutdown`]) or [`stop`](Self::stop) is called; a thread serves each
    /// client.
    ///
    /// # Errors
    /// The listening socket failed.
    pub fn serve_forever(&self) -> Result<(), ManagerError> {
        self.state.serve_forever().map_err(ManagerError::Connect)
    }

    /// Stops serving: `serve_forever` returns, and every client's connection is ended.
    pub fn stop(&self) {
        self.state.stop();
    }
}

/// A connection to a manager: makes shared objects and returns proxies to them (Python's
/// `SyncManager`).
///
/// # Examples
/// ```
/// use multiprocess::managers::{DictProxy, Manager};
/// use multiprocess::Process;
///
/// fn worker(d: DictProxy<String, Vec<u32>>) {
///     d.update("seen", |v: &mut Vec<u32>| v.push(std::process::id())).unwrap();
/// }
///
/// let manager = Manager::start()?;
/// let d = manager.dict::<String, Vec<u32>>()?;
/// let mut children: Vec<Process> = (0..3).map(|_| Process::new(worker, d.clone())).collect();
/// for p in &mut children { p.start()?; }
/// for p in &mut children { p.join()?; }
/// assert_eq!(d.get("seen")?.unwrap().len(), 3); // no update was lost
/// # Ok::<(), multiprocess::Error>(())
/// ```
pub struct Manager {
    session: Arc<Session>,
    process: Option<Mutex<Process>>,
    done: AtomicBool,
    /// The manager's socket is in a private directory it made: removed here once its
    /// process ended, even if it was killed.
    private_dir: bool,
}

impl fmt::Debug for Manager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manager")
            .field("address", &self.session.address)
            .field("pid", &self.pid())
            .finish()
    }
}

impl Manager {
    /// Starts a manager in its own process with the default options (Python's
    /// `multiprocessing.Manager()`).
    ///
    /// # Errors
    /// As [`ManagerBuilder::start`].
    pub fn start() -> Result<Manager, ManagerError> {
        Manager::builder().start()
    }

    /// Options, and registering your own types.
    pub fn builder() -> ManagerBuilder<()> {
        ManagerBuilder {
            address: None,
            authkey: None,
            start_method: None,
            timeout: Duration::from_secs(30),
            registry: PhantomData,
        }
    }

    /// Connects to the manager serving at `address`, with this process's authkey (see
    /// [`ManagerBuilder::connect`] for another key).
    ///
    /// # Errors
    /// As [`ManagerBuilder::connect`].
    pub fn connect(address: impl ToAddress) -> Result<Manager, ManagerError> {
        Manager::builder().address(address).connect()
    }

    /// Where the manager listens.
    pub fn address(&self) -> &Address {
        &self.session.address
    }

    /// The pid of the manager's process, if this `Manager` started it.
    pub fn pid(&self) -> Option<i32> {
        self.process
            .as_ref()
            .and_then(|p| p.lock().unwrap_or_else(|e| e.into_inner()).pid())
    }

    /// A new shared dict (Python's `manager.dict()`).
    ///
    /// # Errors
    /// [`ManagerError::Gone`] when the manager is gone.
    pub fn dict<K, V>(&self) -> Result<DictProxy<K, V>, ManagerError> {
        Ok(DictProxy::new(
            self.session.clone(),
            self.session.create(Kind::Dict)?,
        ))
    }

    /// A new shared list (Python's `manager.list()`).
    ///
    /// # Errors
    /// As [`dict`](Self::dict).
    pub fn list<T>(&self) -> Result<ListProxy<T>, ManagerError> {
        Ok(ListProxy::new(
            self.session.clone(),
            self.session.create(Kind::List)?,
        ))
    }

    /// A new namespace: named attributes of any serde type (Python's `manager.Namespace()`).
    ///
    /// # Errors
    /// As [`dict`](Self::dict).
    pub fn namespace(&self) -> Result<NamespaceProxy, ManagerError> {
        Ok(NamespaceProxy::new(
            self.session.clone(),
            self.session.create(Kind::Dict)?,
        ))
    }

    /// A new shared value (Python's `manager.Value(typecode, value)`).
    ///
    /// # Errors
    /// As [`dict`](Self::dict), or [`ManagerError::Encode`].
    pub fn value<T: Serialize>(&self, initial: T) -> Result<ValueProxy<T>, ManagerError> {
        let id = self.session.create(Kind::Value(encode(&initial)?))?;
        Ok(ValueProxy::new(self.session.clone(), id))
    }

    /// A new queue held by the manager (Python's `manager.Queue(maxsize)`; 0 is unbounded).
    /// Unlike [`crate::Queue`], which lives in shared memory, it works across machines.
    ///
    /// # Errors
    /// As [`dict`](Self::dict).
    pub fn queue<T>(&self, maxsize: usize) -> Result<QueueProxy<T>, ManagerError> {
        let max = (maxsize > 0).then_some(maxsize as u64);
        Ok(QueueProxy::new(
            self.session.clone(),
            self.session.create(Kind::Queue(max))?,
        ))
    }

    /// A new lock held by the manager (Python's `manager.Lock()`). A client that ends while
    /// holding it releases it.
    ///
    /// # Errors
    /// As [`dict`](Self::dict).
    pub fn lock(&self) -> Result<LockProxy, ManagerError> {
        Ok(LockProxy::new(
            self.session.clone(),
            self.session.create(Kind::Lock)?,
        ))
    }

    /// A new event held by the manager (Python's `manager.Event()`).
    ///
    /// # Errors
    /// As [`dict`](Self::dict).
    pub fn event(&self) -> Result<EventProxy, ManagerError> {
        Ok(EventProxy::new(
            self.session.clone(),
            self.session.create(Kind::Event)?,
        ))
    }

    /// A new object of a registered type `T`, starting as `initial` (Python's
    /// `manager.MyType(...)` after `register('MyType', MyType)`).
    ///
    /// # Errors
    /// [`ManagerError::Remote`] when `T` is not registered with this manager.
    pub fn create<T: Shared>(&self, initial: T) -> Result<Proxy<T>, ManagerError> {
        let id = self
            .session
            .create(Kind::User(T::name().to_string(), encode(&initial)?))?;
        Ok(Proxy::new(self.session.clone(), id))
    }

    /// Stops the manager (Python's `shutdown`). For a manager this `Manager` started: a
    /// shutdown request, then, if its process has not ended within a second, `terminate`,
    /// and if still alive after a tenth of a second, `kill`; the process is joined. For a
    /// connected manager, asks the server to stop. Calling it again does nothing.
    ///
    /// # Errors
    /// The request could not be sent to a connected manager.
    pub fn shutdown(&self) -> Result<(), ManagerError> {
        if self.done.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let asked = self.session.request(&Request::Shutdown);
        self.session.gone.store(true, Ordering::Relaxed);
        self.session
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let Some(p) = &self.process else {
            return asked.map(|_| ());
        };
        let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
        if !p.join_timeout(Duration::from_secs(1)).unwrap_or(false) {
            let _ = p.terminate();
            if !p.join_timeout(Duration::from_millis(100)).unwrap_or(false) {
                let _ = p.kill();
                let _ = p.join_timeout(Duration::from_secs(5));
            }
        }
        if let (true, Address::Unix(path)) = (self.private_dir, &self.session.address) {
            crate::sys::net::remove_socket(path, true);
        }
        Ok(())
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        if self.process.is_some() {
            let _ = self.shutdown();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_round_trip_and_hostile_lengths() {
        let blob = Framer::build(|f| {
            f.push("key")?;
            f.push(&7u64)?;
            Ok(())
        })
        .unwrap();
        let parts: Vec<&[u8]> = unframe(&blob).map(|r| r.unwrap()).collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(decode::<String>(parts[0]).unwrap(), "key");
        assert_eq!(decode::<u64>(parts[1]).unwrap(), 7);
        // A length past the end, a length of 2^64-1, a cut length: errors, then the end.
        let mut bad = u64::MAX.to_le_bytes().to_vec();
        bad.extend_from_slice(b"abc");
        let got: Vec<_> = unframe(&bad).collect();
        assert_eq!(got.len(), 1);
        assert!(got[0].is_err());
        let got: Vec<_> = unframe(&[1, 2, 3]).collect();
        assert!(got.len() == 1 && got[0].is_err());
        let mut over = 10u64.to_le_bytes().to_vec();
        over.extend_from_slice(b"short");
        assert!(unframe(&over).next().unwrap().is_err());
        // Handles are refused.
        let (a, _b) = crate::Pipe::new().unwrap();
        assert!(Framer::build(|f| f.push(&a)).is_err());
    }
}
