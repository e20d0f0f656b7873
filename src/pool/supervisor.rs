//! The result handler: one thread per pool that starts the workers, hands them work, reads
//! their reports, and replaces the ones that die.
//!
//! It waits (`connection::wait`, one `poll`) on: a wake-up pipe (new work, close, terminate),
//! every worker's connection (reports), and every worker's process (death). Work sits in one
//! queue of *units* (a task, or a chunk of a map) until a worker can take it:
//! - an idle worker gets a batch of `clamp(queued / (2 * workers), 1, 128)` units (at most
//!   1 MiB and 64 descriptors, but always at least one unit);
//! - a worker with one batch outstanding gets a second, small one (at most 32 KiB) only when
//!   the queue is deep (`queued >= 2 * workers`): this hides the round trip for floods of small
//!   tasks, and a small second batch always fits the socket's buffer, so the blocking send
//!   can never wait on a worker that is itself blocked sending its report to us.
//!
//! A batch of at least `arena::THRESHOLD` bytes goes through the worker's inbox when no
//! outstanding batch uses it (see `arena.rs`): the units are written straight into it, the
//! chunks of a map encoded only then (they were measured when submitted), and the socket
//! carries a 9-byte frame. Otherwise the batch is built in one reused buffer and sent inline.
//!
//! A worker that dies fails exactly the unit it was running (see the started counter in
//! `worker.rs`) with a typed error naming its pid and signal or exit code; the units it held
//! that had not started, or had finished without being reported, go back to the front of the
//! queue. Then a replacement is started. A failing initializer breaks the pool instead: every
//! pending unit fails with that error and no worker is started again.

use std::collections::VecDeque;
use std::os::fd::{AsFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use super::arena::{self, Arena};
use super::error::{Kind, PoolError};
use super::result::Sink;
use super::worker::{self, Body, Header, ResultHeader, UnitHeader, WorkerArgs};
use crate::connection::{self, Connection, ConnectionError, Pipe, Waitable};
use crate::context::StartMethod;
use crate::handle;
use crate::process::Process;
use crate::region::Region;
use crate::sys::socket;
use crate::task::{self, UnitOut};

/// Most units in one batch.
const MAX_BATCH_UNITS: usize = 128;
/// A batch stops growing past this many bytes (it always holds at least one unit).
const BATCH_BYTES: usize = 1 << 20;
/// The largest second batch sent to a worker that has one outstanding.
const PREFETCH_BYTES: usize = 32 << 10;

/// Anything that keeps the handles of a unit's arguments open until the unit is done.
pub(crate) trait KeepAlive: Send + Sync {}
impl<T: Send + Sync + ?Sized> KeepAlive for T {}

/// What a unit is for.
pub(crate) enum UnitKind {
    /// Items of a call; results go to the sink.
    Task(Arc<dyn Sink>),
    /// The initializer of the worker it is sent to.
    Init,
}

/// The arguments of a unit that are encoded only when the unit is sent, straight into the
/// worker's inbox (or the frame): a map's input is never copied into a second buffer.
pub(crate) trait LazyArgs: Send {
    /// Encodes the arguments into all of `buf` (exactly the length measured at submission);
    /// returns the descriptors inside them, borrowed from the values `self` holds.
    fn encode(&self, buf: &mut [u8]) -> Result<Vec<RawFd>, String>;
}

/// A unit's encoded arguments, or the values to encode them from.
pub(crate) enum Payload {
    Ready {
        bytes: Vec<u8>,
        /// Descriptors borrowed from `keep`.
        fds: Vec<RawFd>,
        /// Never read: holds the argument values whose descriptors `fds` borrows.
        #[allow(dead_code)]
        keep: Option<Arc<dyn KeepAlive>>,
    },
    Lazy(Box<dyn LazyArgs>),
}

/// One unit of work: the items `start..start + count` of a call.
pub(crate) struct Unit {
    pub(crate) id: u64,
    pub(crate) entry: i64,
    /// The length of the encoded arguments.
    pub(crate) len: usize,
    /// The number of descriptors in the arguments.
    pub(crate) nfds: usize,
    pub(crate) payload: Payload,
    pub(crate) kind: UnitKind,
    pub(crate) start: usize,
    pub(crate) count: usize,
    /// A plain-data unit (`Pool::map_pod`): the offset of its `PodEntry` and the bytes of its
    /// values; local workers run that entry instead of `entry`, writing the values in place.
    pub(crate) pod: Option<(i64, u64)>,
}

impl Unit {
    /// Fails this unit's items (an initializer unit has no caller to tell).
    pub(crate) fn fail(self, err: PoolError) {
        if let UnitKind::Task(sink) = self.kind {
            sink.fail(self.start, self.count, err);
        }
    }
}

/// The initializer and its encoded argument, sent to every new worker.
pub(crate) struct InitSpec {
    pub(crate) entry: i64,
    pub(crate) payload: Vec<u8>,
    pub(crate) fds: Vec<RawFd>,
    pub(crate) keep: Arc<dyn KeepAlive>,
}

/// How the pool was built.
pub(crate) struct Config {
    pub(crate) processes: usize,
    pub(crate) method: Option<StartMethod>,
    pub(crate) maxtasks: Option<u64>,
    pub(crate) init: Option<InitSpec>,
    /// Workers are the MPI ranks of the job (`Builder::mpi`), not local processes.
    #[cfg(feature = "mpi")]
    pub(crate) mpi: bool,
    /// Tests only: how long the result handler pauses before each decision, so that a `close`
    /// lands while it is between steps.
    #[cfg(test)]
    pub(crate) pause_before_deciding: Duration,
}

/// State shared by the `Pool` handle and its result handler.
pub(crate) struct State {
    queue: VecDeque<Unit>,
    pub(crate) closed: bool,
    pub(crate) terminating: bool,
    pub(crate) broken: Option<PoolError>,
    sleeping: bool,
    /// `imap` iterators still reading their input: a closed pool stays up for them.
    pub(crate) feeders: usize,
    pub(crate) ready: bool,
    pub(crate) finished: bool,
    pub(crate) pids: Vec<i32>,
    conns: Vec<Arc<Connection>>,
    pub(crate) started: usize,
}

pub(crate) struct Shared {
    st: Mutex<State>,
    pub(crate) cv: Condvar,
    wake: Connection,
    next_id: AtomicU64,
}

impl Shared {
    pub(crate) fn new() -> std::io::Result<(Arc<Shared>, Connection)> {
        let (wake, wake_rx) = Pipe::new()?;
        let shared = Arc::new(Shared {
            st: Mutex::new(State {
                queue: VecDeque::new(),
                closed: false,
                terminating: false,
                broken: None,
                sleeping: false,
                feeders: 0,
                ready: false,
                finished: false,
                pids: Vec::new(),
                conns: Vec::new(),
                started: 0,
            }),
            cv: Condvar::new(),
            wake,
            next_id: AtomicU64::new(1),
        });
        Ok((shared, wake_rx))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Breaks the pool with `err` (the first reason stays).
    #[cfg(feature = "mpi")]
    pub(crate) fn break_with(&self, err: PoolError) {
        let mut st = self.lock();
        if st.broken.is_none() {
            st.broken = Some(err);
        }
        drop(st);
        self.cv.notify_all();
    }

    #[cfg(feature = "mpi")]
    pub(crate) fn set_pids(&self, pids: Vec<i32>) {
        self.lock().pids = pids;
    }

    #[cfg(feature = "mpi")]
    pub(crate) fn set_ready(&self) {
        let mut st = self.lock();
        if !st.ready {
            st.ready = true;
            st.started = st.pids.len();
            drop(st);
            self.cv.notify_all();
        }
    }

    /// Terminated or broken: stop at once.
    #[cfg(feature = "mpi")]
    pub(crate) fn terminating(&self) -> bool {
        let st = self.lock();
        st.terminating || st.broken.is_some()
    }

    /// Closed, no `imap` feeding, nothing queued: the handler may end once idle.
    #[cfg(feature = "mpi")]
    pub(crate) fn done_when_idle(&self) -> bool {
        let st = self.lock();
        st.closed && st.feeders == 0 && st.queue.is_empty()
    }

    /// Takes up to `max_units` queued units (at least one when any is queued), stopping at
    /// `max_bytes`; fewer when the queue is shallow, so every rank gets a share.
    #[cfg(feature = "mpi")]
    pub(crate) fn take_batch(&self, max_units: usize, max_bytes: usize, ranks: usize) -> Vec<Unit> {
        let mut st = self.lock();
        let k = (st.queue.len() / (2 * ranks.max(1))).clamp(1, max_units);
        let mut units = Vec::new();
        let mut bytes = 0;
        while units.len() < k {
            let Some(u) = st.queue.front() else { break };
            if !units.is_empty() && bytes + u.len > max_bytes {
                break;
            }
            bytes += u.len;
            if let Some(u) = st.queue.pop_front() {
                units.push(u);
            }
        }
        units
    }

    /// Fails everything still queued, with the pool's error (broken, terminated or closed);
    /// returns that error.
    #[cfg(feature = "mpi")]
    pub(crate) fn fail_pending(&self) -> PoolError {
        let (err, pending) = {
            let mut st = self.lock();
            let err = match &st.broken {
                Some(e) => e.clone(),
                None if st.terminating => PoolError::new(Kind::Terminated),
                None => PoolError::new(Kind::Closed),
            };
            (err, st.queue.drain(..).collect::<Vec<_>>())
        };
        for u in pending {
            u.fail(err.clone());
        }
        err
    }

    /// Marks the handler asleep unless there is something to do (work queued, close,
    /// terminate), deciding and marking under one acquisition of the lock: a submission that
    /// comes after then finds the mark and wakes the handler. Whether it was marked.
    #[cfg(feature = "mpi")]
    pub(crate) fn mark_sleeping(&self) -> bool {
        let mut st = self.lock();
        let idle = st.queue.is_empty() && !st.closed && !st.terminating && st.broken.is_none();
        st.sleeping = idle;
        idle
    }

    #[cfg(feature = "mpi")]
    pub(crate) fn clear_sleeping(&self) {
        self.lock().sleeping = false;
    }

    /// The handler has ended.
    #[cfg(feature = "mpi")]
    pub(crate) fn finish(&self) {
        let mut st = self.lock();
        st.finished = true;
        st.pids.clear();
        drop(st);
        self.cv.notify_all();
    }

    fn wake_if(&self, sleeping: bool) {
        if sleeping {
            let _ = self.wake.send_bytes(&[1]);
        }
    }

    /// Queues a unit. `internal`: part of a call already accepted (an `imap` feeding its
    /// input), allowed after `close`. On refusal the unit's items fail with the reason.
    pub(crate) fn submit(&self, unit: Unit, internal: bool) {
        if unit.nfds > socket::MAX_FDS {
            let n = unit.nfds;
            unit.fail(PoolError::new(Kind::Invalid(format!(
                "a pool task can carry at most {} handles, this one has {n}",
                socket::MAX_FDS
            ))));
            return;
        }
        let mut st = self.lock();
        let refused = if let Some(e) = &st.broken {
            Some(e.clone())
        } else if st.finished || st.terminating || (st.closed && !internal) {
            Some(PoolError::new(Kind::Closed))
        } else {
            None
        };
        if let Some(e) = refused {
            drop(st);
            unit.fail(e);
            return;
        }
        st.queue.push_back(unit);
        let sleeping = std::mem::replace(&mut st.sleeping, false);
        drop(st);
        self.wake_if(sleeping);
    }

    /// An `imap` begins reading its input, which it submits as it is consumed: until
    /// [`end_feed`](Self::end_feed), a closed pool accepts its chunks and does not retire.
    pub(crate) fn begin_feed(&self) -> Result<(), PoolError> {
        let mut st = self.lock();
        if let Some(e) = &st.broken {
            return Err(e.clone());
        }
        if st.closed || st.finished || st.terminating {
            return Err(PoolError::new(Kind::Closed));
        }
        st.feeders += 1;
        Ok(())
    }

    /// An `imap` reads no more input (exhausted, refused or dropped).
    pub(crate) fn end_feed(&self) {
        let mut st = self.lock();
        st.feeders = st.feeders.saturating_sub(1);
        let sleeping = std::mem::replace(&mut st.sleeping, false);
        drop(st);
        self.wake_if(sleeping);
    }

    /// No new calls; the queued work still runs.
    pub(crate) fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        let sleeping = std::mem::replace(&mut st.sleeping, false);
        drop(st);
        self.wake_if(sleeping);
    }

    /// Stops everything now: the result handler kills the workers and fails what is pending.
    pub(crate) fn terminate(&self) {
        let mut st = self.lock();
        st.closed = true;
        st.terminating = true;
        // A send blocked on a worker fails at once, so the handler sees the flag.
        for c in &st.conns {
            let _ = socket::shutdown(c.as_fd_borrow(), true);
            let _ = socket::shutdown(c.as_fd_borrow(), false);
        }
        st.sleeping = false;
        drop(st);
        self.wake_if(true);
    }
}

trait AsFdBorrow {
    fn as_fd_borrow(&self) -> std::os::fd::BorrowedFd<'_>;
}

impl AsFdBorrow for Connection {
    fn as_fd_borrow(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(self)
    }
}

struct Worker {
    proc: Process<()>,
    pid: i32,
    conn: Option<Arc<Connection>>,
    slot: Region,
    inflight: VecDeque<Unit>,
    /// Units still unreported, per outstanding batch, oldest first, and whether the batch
    /// came through the inbox.
    batches: VecDeque<(usize, bool)>,
    /// The arena this pool writes large batches into (see `arena.rs`).
    inbox: Option<Arena>,
    /// An outstanding batch came through the inbox: the worker may still read it.
    inbox_busy: bool,
    /// This pool's mapping of the worker's outbox.
    outbox: Option<Arena>,
    /// Reports read from the outbox (wrapping; published at slot offset `CONSUMED`).
    outbox_consumed: u32,
    /// Units reported (wrapping, as the worker's started counter).
    reported: u32,
    /// Task units ever given to this worker (for maxtasksperchild).
    assigned: u64,
    initialized: bool,
    initial: bool,
    dead: bool,
}

struct Supervisor {
    shared: Arc<Shared>,
    config: Config,
    wake_rx: Connection,
    workers: Vec<Worker>,
    counter: usize,
    /// The buffer inline batches are built in, reused.
    scratch: Vec<u8>,
    /// Workers that died in a row without finishing anything (no unit reported, no task of
    /// theirs to blame): past [`FRUITLESS_DEATHS`], the pool breaks instead of starting more.
    fruitless: usize,
}

/// How many workers per process may die in a row, each before finishing anything, before the
/// pool gives up (a worker that crashes at start or in its initializer, again and again, would
/// otherwise be replaced without end).
const FRUITLESS_DEATHS: usize = 3;

/// The result handler thread's body.
pub(crate) fn run(shared: Arc<Shared>, config: Config, wake_rx: Connection) {
    let mut sup = Supervisor {
        shared,
        config,
        wake_rx,
        workers: Vec::new(),
        counter: 0,
        scratch: Vec::new(),
        fruitless: 0,
    };
    for _ in 0..sup.config.processes {
        if let Err(e) = sup.start_worker(true) {
            sup.shared.lock().broken = Some(e);
            break;
        }
    }
    sup.check_ready();
    sup.main_loop();
}

/// What the result handler does next, decided from the shared state under its lock.
enum Next {
    /// Kill every worker and fail what is pending with this error (terminate, broken pool).
    KillAll(PoolError),
    /// Closed, and nothing is queued or running: retire the workers.
    Retire,
    /// Hand out queued work.
    Dispatch,
    /// Nothing to do: sleep until a report, a death or a wake-up.
    Sleep,
}

impl Supervisor {
    fn main_loop(&mut self) {
        loop {
            #[cfg(test)]
            std::thread::sleep(self.config.pause_before_deciding);
            // Decided, and marked asleep, under one acquisition of the lock: a `close`, a
            // `terminate` or a submission either came before and is seen here, or comes after
            // and finds the handler marked asleep, so it wakes it. (Deciding and marking under
            // two acquisitions lost a `close` that came between them.)
            let next = {
                let mut st = self.shared.lock();
                let next = self.next(&st);
                if matches!(next, Next::Sleep) {
                    st.sleeping = true;
                }
                next
            };
            match next {
                Next::KillAll(e) => {
                    self.kill_all(e);
                    return;
                }
                Next::Retire => {
                    self.retire_all();
                    return;
                }
                Next::Dispatch => self.dispatch(),
                Next::Sleep => self.wait_and_read(),
            }
        }
    }

    fn next(&self, st: &State) -> Next {
        if st.terminating {
            return Next::KillAll(PoolError::new(Kind::Terminated));
        }
        if let Some(e) = &st.broken {
            return Next::KillAll(e.clone());
        }
        if st.closed
            && st.feeders == 0
            && st.queue.is_empty()
            && self.workers.iter().all(|w| w.inflight.is_empty())
        {
            return Next::Retire;
        }
        if !st.queue.is_empty() && self.has_capacity(st) {
            return Next::Dispatch;
        }
        Next::Sleep
    }

    fn live(&self) -> usize {
        self.workers.iter().filter(|w| !w.dead).count().max(1)
    }

    /// How many units worker `w` may take now (0: none), given the queue.
    fn room(&self, w: &Worker, st: &State) -> usize {
        // No task goes to a worker whose initializer has not reported success: if it fails,
        // nothing may have run there.
        if w.dead || w.conn.is_none() || st.queue.is_empty() || !w.initialized {
            return 0;
        }
        let n = self.live();
        let deep = st.queue.len() >= 2 * n;
        match w.batches.len() {
            0 => {}
            1 if deep => {
                if st.queue.front().is_some_and(|u| u.len > PREFETCH_BYTES) {
                    return 0;
                }
            }
            _ => return 0,
        }
        let mut k = (st.queue.len() / (2 * n)).clamp(1, MAX_BATCH_UNITS);
        if let Some(max) = self.config.maxtasks {
            k = k.min(max.saturating_sub(w.assigned) as usize);
        }
        k
    }

    fn has_capacity(&self, st: &State) -> bool {
        self.workers.iter().any(|w| self.room(w, st) > 0)
    }

    fn dispatch(&mut self) {
        let mut plans: Vec<(usize, Vec<Unit>)> = Vec::new();
        {
            let mut st = self.shared.lock();
            let mut order: Vec<usize> = (0..self.workers.len()).collect();
            order.sort_by_key(|&i| self.workers[i].batches.len());
            for i in order {
                let k = self.room(&self.workers[i], &st);
                if k == 0 {
                    continue;
                }
                let limit = if self.workers[i].batches.is_empty() {
                    BATCH_BYTES
                } else {
                    PREFETCH_BYTES
                };
                let mut units = Vec::new();
                let (mut bytes, mut fds) = (0usize, 0usize);
                while units.len() < k {
                    let Some(u) = st.queue.front() else { break };
                    if !units.is_empty()
                        && (bytes + u.len > limit || fds + u.nfds > socket::MAX_FDS)
                    {
                        break;
                    }
                    bytes += u.len;
                    fds += u.nfds;
                    if let Some(u) = st.queue.pop_front() {
                        units.push(u);
                    }
                }
                if !units.is_empty() {
                    self.workers[i].assigned += units.len() as u64;
                    plans.push((i, units));
                }
            }
        }
        for (i, units) in plans {
            self.send_batch(i, units);
        }
    }

    fn send_batch(&mut self, i: usize, units: Vec<Unit>) {
        let total: usize = units.iter().map(|u| UnitHeader::SIZE + u.len).sum();
        let w = &mut self.workers[i];
        let Some(conn) = w.conn.clone() else {
            w.batches.push_back((units.len(), false));
            w.inflight.extend(units);
            w.dead = true;
            return;
        };
        let mut sent = true;
        let mut via_arena = (arena::THRESHOLD..=arena::MAX_LEN).contains(&total) && !w.inbox_busy;
        if via_arena && w.inbox.as_ref().is_none_or(|a| a.len() < total) {
            match Arena::new(total) {
                Ok(a) => {
                    sent = conn
                        .send_encoded(&[worker::NEW_ARENA], &[a.as_fd()])
                        .is_ok();
                    w.inbox = Some(a);
                }
                Err(_) => via_arena = false,
            }
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        let buf: &mut [u8] = if via_arena {
            // SAFETY: no outstanding batch came through the inbox (`inbox_busy` is false), and
            // the worker reads it only while running such a batch (see `arena.rs`).
            #[allow(unsafe_code)]
            let b = w.inbox.as_mut().and_then(|a| unsafe { a.bytes_mut(total) });
            match b {
                Some(b) => b,
                None => {
                    via_arena = false;
                    scratch.clear();
                    scratch.resize(total, 0);
                    &mut scratch[..]
                }
            }
        } else {
            scratch.clear();
            scratch.resize(total, 0);
            &mut scratch[..]
        };
        let (used, raw, failed) = fill(buf, &units);
        let mut kept = Vec::with_capacity(units.len());
        for (k, unit) in units.into_iter().enumerate() {
            match failed.iter().find(|(j, _)| *j == k) {
                Some((_, why)) => unit.fail(PoolError::new(Kind::Encode(why.clone()))),
                None => kept.push(unit),
            }
        }
        if kept.is_empty() {
            self.scratch = scratch;
            return;
        }
        // SAFETY: each unit's descriptors belong to the values its payload holds (or the
        // pool's initializer argument), alive until the unit is done, so open during this
        // send.
        #[allow(unsafe_code)]
        let fds = unsafe { handle::borrow_all(&raw) };
        if sent {
            sent = if via_arena {
                let mut frame = [worker::ARENA; 9];
                frame[1..].copy_from_slice(&(used as u64).to_le_bytes());
                conn.send_encoded(&frame, &fds).is_ok()
            } else {
                conn.send_encoded_parts(&[&[worker::INLINE], &scratch[..used]], &fds)
                    .is_ok()
            };
        }
        drop(fds);
        self.scratch = scratch;
        let w = &mut self.workers[i];
        if via_arena {
            w.inbox_busy = true;
        }
        w.batches.push_back((kept.len(), via_arena));
        w.inflight.extend(kept);
        if !sent {
            // The worker is gone (or the pool is terminating): its death handling requeues.
            w.dead = true;
        }
    }

    fn wait_and_read(&mut self) {
        let ready = {
            let mut objs: Vec<&dyn Waitable> = vec![&self.wake_rx];
            for w in &self.workers {
                match &w.conn {
                    Some(c) if !w.dead => objs.push(&**c),
                    _ => objs.push(&self.wake_rx),
                }
                objs.push(&w.proc);
            }
            if self.workers.iter().any(|w| w.dead) {
                Vec::new()
            } else {
                connection::wait(&objs, None).unwrap_or_default()
            }
        };
        let terminating = {
            let mut st = self.shared.lock();
            st.sleeping = false;
            st.terminating
        };
        if terminating {
            // The main loop kills everything; settling single deaths would be wasted.
            return;
        }
        while let Ok(true) = self.wake_rx.poll(Duration::ZERO) {
            if self.wake_rx.recv_bytes_timeout(Duration::ZERO).is_err() {
                break;
            }
        }
        for idx in ready {
            if idx == 0 {
                continue;
            }
            let (i, is_proc) = ((idx - 1) / 2, (idx - 1) % 2 == 1);
            if i >= self.workers.len() {
                continue;
            }
            if is_proc {
                self.workers[i].dead = true;
            } else {
                self.read_reports(i);
            }
        }
        // Deaths and retirements change the worker list: handle them one at a time.
        while let Some(i) = self.workers.iter().position(|w| w.dead) {
            if self.shared.lock().terminating {
                return;
            }
            self.handle_death(i);
        }
        if let Some(max) = self.config.maxtasks {
            while let Some(i) = self
                .workers
                .iter()
                .position(|w| w.assigned >= max && w.inflight.is_empty() && w.conn.is_some())
            {
                self.retire(i);
            }
        }
    }

    /// Reads every complete report a worker has sent.
    fn read_reports(&mut self, i: usize) {
        loop {
            let frame = match &self.workers[i].conn {
                Some(c) => c.recv_raw_timeout(Duration::ZERO),
                None => return,
            };
            match frame {
                Ok((bytes, fds)) => self.handle_report(i, &bytes, fds),
                Err(ConnectionError::Timeout) => return,
                Err(_) => {
                    self.workers[i].dead = true;
                    return;
                }
            }
        }
    }

    fn handle_report(&mut self, i: usize, frame: &[u8], mut fds: Vec<std::os::fd::OwnedFd>) {
        // The outbox is taken out for the reading, so that the worker list stays usable.
        let outbox = self.workers[i].outbox.take();
        let body = match worker::frame_body(frame, &mut fds, outbox.as_ref()) {
            Ok(Body::Units(b)) => b,
            Ok(Body::NewArena(a)) => {
                self.workers[i].outbox = Some(a);
                return;
            }
            Err(_) => {
                self.workers[i].outbox = outbox;
                self.kill_worker(i);
                return;
            }
        };
        let from_arena = frame.first() == Some(&worker::ARENA);
        self.handle_units(i, body, fds);
        let w = &mut self.workers[i];
        if w.outbox.is_none() {
            w.outbox = outbox;
        }
        if from_arena {
            // Every read of the outbox is done: hand it back (see `arena.rs`).
            w.outbox_consumed = w.outbox_consumed.wrapping_add(1);
            w.slot
                .atomic_u32(worker::CONSUMED)
                .store(w.outbox_consumed, Ordering::Release);
        }
    }

    fn handle_units(&mut self, i: usize, bytes: &[u8], fds: Vec<std::os::fd::OwnedFd>) {
        let parts = match worker::split_frame::<ResultHeader>(bytes, fds) {
            Ok(p) => p,
            Err(_) => {
                self.kill_worker(i);
                return;
            }
        };
        for (h, body, fds) in parts {
            let w = &mut self.workers[i];
            let pid = w.pid;
            let Some(unit) = w.inflight.pop_front() else {
                self.kill_worker(i);
                return;
            };
            if unit.id != h.id {
                w.inflight.push_front(unit);
                self.kill_worker(i);
                return;
            }
            w.reported = w.reported.wrapping_add(1);
            if let Some(front) = w.batches.front_mut() {
                front.0 -= 1;
                if front.0 == 0 {
                    if front.1 {
                        w.inbox_busy = false;
                    }
                    w.batches.pop_front();
                }
            }
            match unit.kind {
                UnitKind::Task(sink) => {
                    self.fruitless = 0;
                    sink.deliver(unit.start, unit.count, body, fds, pid)
                }
                UnitKind::Init => match UnitOut::<()>::decode(body, fds) {
                    Ok(UnitOut::All(_)) => {
                        self.workers[i].initialized = true;
                        self.fruitless = 0;
                        self.check_ready();
                        // It may take tasks now.
                        self.dispatch();
                    }
                    Ok(UnitOut::Mixed(v)) => {
                        let message = v
                            .into_iter()
                            .find_map(Result::err)
                            .unwrap_or_else(|| "the initializer failed".into());
                        self.break_pool(PoolError::new(Kind::Initializer { pid, message }));
                    }
                    Ok(UnitOut::Failed(message)) => {
                        self.break_pool(PoolError::new(Kind::Initializer { pid, message }))
                    }
                    Err(e) => {
                        self.break_pool(PoolError::new(Kind::Initializer { pid, message: e }))
                    }
                },
            }
        }
    }

    fn kill_worker(&mut self, i: usize) {
        let _ = self.workers[i].proc.kill();
        self.workers[i].dead = true;
    }

    fn break_pool(&mut self, err: PoolError) {
        let mut st = self.shared.lock();
        if st.broken.is_none() {
            st.broken = Some(err);
        }
        drop(st);
        self.shared.cv.notify_all();
    }

    fn check_ready(&mut self) {
        let ready = self
            .workers
            .iter()
            .filter(|w| w.initial)
            .all(|w| w.initialized);
        if ready {
            let mut st = self.shared.lock();
            if !st.ready {
                st.ready = true;
                drop(st);
                self.shared.cv.notify_all();
            }
        }
    }

    fn publish_workers(&self) {
        let mut st = self.shared.lock();
        st.pids = self
            .workers
            .iter()
            .filter(|w| !w.dead)
            .map(|w| w.pid)
            .collect();
        st.conns = self.workers.iter().filter_map(|w| w.conn.clone()).collect();
    }

    fn start_worker(&mut self, initial: bool) -> Result<(), PoolError> {
        let start_err = |m: String| PoolError::new(Kind::Start(m));
        let (mine, theirs) = Pipe::new().map_err(|e| start_err(e.to_string()))?;
        let slot =
            Region::new("multiprocess-pool-worker", 4096).map_err(|e| start_err(e.to_string()))?;
        let their_slot = slot.try_clone().map_err(|e| start_err(e.to_string()))?;
        self.counter += 1;
        let mut builder = Process::builder()
            .daemon(true)
            .name(format!("PoolWorker-{}", self.counter));
        if let Some(m) = self.config.method {
            builder = builder.start_method(m);
        }
        let proc = builder
            .start(
                worker::worker_main,
                WorkerArgs {
                    conn: theirs,
                    slot: their_slot,
                },
            )
            .map_err(|e| start_err(e.to_string()))?;
        let pid = proc.pid().unwrap_or(0);
        self.shared.lock().started += 1;
        self.workers.push(Worker {
            proc,
            pid,
            conn: Some(Arc::new(mine)),
            slot,
            inflight: VecDeque::new(),
            batches: VecDeque::new(),
            inbox: None,
            inbox_busy: false,
            outbox: None,
            outbox_consumed: 0,
            reported: 0,
            assigned: 0,
            initialized: self.config.init.is_none(),
            initial,
            dead: false,
        });
        self.publish_workers();
        if let Some(init) = &self.config.init {
            let unit = Unit {
                id: self.shared.next_id(),
                entry: init.entry,
                len: init.payload.len(),
                nfds: init.fds.len(),
                payload: Payload::Ready {
                    bytes: init.payload.clone(),
                    fds: init.fds.clone(),
                    keep: Some(Arc::clone(&init.keep)),
                },
                kind: UnitKind::Init,
                start: 0,
                count: 1,
                pod: None,
            };
            let i = self.workers.len() - 1;
            self.send_batch(i, vec![unit]);
        }
        Ok(())
    }

    /// A worker ended (or its connection broke): settle the units it held, replace it.
    fn handle_death(&mut self, i: usize) {
        // Whatever it reported before dying is still in the socket.
        if self.workers[i].conn.is_some() {
            self.workers[i].dead = false;
            self.read_reports_until_eof(i);
        }
        let mut w = self.workers.remove(i);
        if let Some(c) = w.conn.take() {
            let _ = socket::shutdown(c.as_fd_borrow(), false);
        }
        self.join_ending(&mut w.proc);
        let code = w.proc.exitcode().unwrap_or(-9);
        let started = w.slot.atomic_u32(worker::STARTED).load(Ordering::Acquire);
        let unreported = started.wrapping_sub(w.reported) as usize;
        let culprit = if unreported >= 1 && unreported <= w.inflight.len() {
            Some(unreported - 1)
        } else {
            None
        };
        let err = PoolError::new(Kind::WorkerLost { pid: w.pid, code });
        // An initializer that ended its worker itself (an exit) failed; one whose worker was
        // killed by a signal (from outside, or a crash) is a lost worker, replaced like any
        // other, within the bound on workers that die before finishing anything.
        let init_failed = code >= 0;
        let mut requeue = Vec::new();
        let mut broken = None;
        let mut blamed_task = false;
        for (j, unit) in w.inflight.drain(..).enumerate() {
            if Some(j) == culprit {
                match unit.kind {
                    UnitKind::Init if init_failed => {
                        broken = Some(PoolError::new(Kind::Initializer {
                            pid: w.pid,
                            message: err.to_string(),
                        }))
                    }
                    UnitKind::Init => {}
                    UnitKind::Task(_) => {
                        blamed_task = true;
                        unit.fail(err.clone())
                    }
                }
            } else if matches!(unit.kind, UnitKind::Task(_)) {
                requeue.push(unit);
            }
        }
        if w.initial && !w.initialized && broken.is_none() && init_failed {
            broken = Some(PoolError::new(Kind::Initializer {
                pid: w.pid,
                message: err.to_string(),
            }));
        }
        if w.reported == 0 && !blamed_task {
            self.fruitless += 1;
            let limit = FRUITLESS_DEATHS * self.config.processes;
            if broken.is_none() && self.fruitless >= limit {
                broken = Some(PoolError::new(Kind::Initializer {
                    pid: w.pid,
                    message: format!(
                        "{} workers in a row died before finishing anything (the last one: \
                         {err}); the pool stops starting more",
                        self.fruitless
                    ),
                }));
            }
        }
        {
            let mut st = self.shared.lock();
            for unit in requeue.into_iter().rev() {
                st.queue.push_front(unit);
            }
        }
        self.publish_workers();
        if let Some(e) = broken {
            self.break_pool(e);
            return;
        }
        self.replace();
    }

    fn read_reports_until_eof(&mut self, i: usize) {
        // The process has ended or its connection broke: everything it sent is buffered, so
        // reading stops at end of file (or at a broken stream) without waiting.
        loop {
            let frame = match &self.workers[i].conn {
                Some(c) => c.recv_raw_timeout(Duration::from_millis(100)),
                None => return,
            };
            match frame {
                Ok((bytes, fds)) => self.handle_report(i, &bytes, fds),
                Err(ConnectionError::Timeout) => {
                    // Alive after all (a broken send, say): it is killed below.
                    return;
                }
                Err(_) => return,
            }
        }
    }

    /// Joins a worker that is ending. One whose connection broke while it still runs (the
    /// pool is terminating, or the worker broke the protocol) is killed after a while, or at
    /// once when the pool terminates.
    fn join_ending(&self, proc: &mut Process<()>) {
        let until = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            if matches!(
                proc.join_timeout(Duration::from_millis(50)),
                Ok(true) | Err(_)
            ) {
                return;
            }
            if self.shared.lock().terminating || std::time::Instant::now() >= until {
                let _ = proc.kill();
                let _ = proc.join();
                return;
            }
        }
    }

    /// Starts a replacement worker unless the pool is winding down.
    fn replace(&mut self) {
        let wanted = {
            let st = self.shared.lock();
            !st.terminating
                && st.broken.is_none()
                && (!st.closed
                    || st.feeders > 0
                    || !st.queue.is_empty()
                    || self.workers.iter().any(|w| !w.inflight.is_empty()))
                && self.workers.len() < self.config.processes
        };
        if wanted {
            if let Err(e) = self.start_worker(false) {
                if self.workers.is_empty() {
                    self.break_pool(e);
                }
            }
        }
    }

    /// Retires worker `i` after maxtasksperchild units: closing its connection ends it.
    fn retire(&mut self, i: usize) {
        let mut w = self.workers.remove(i);
        w.conn = None;
        self.publish_workers();
        let _ = w.proc.join();
        self.replace();
    }

    /// Normal shutdown: every worker is idle; closing their connections ends them.
    fn retire_all(&mut self) {
        let leftovers: Vec<Unit> = {
            let mut st = self.shared.lock();
            st.finished = true;
            st.queue.drain(..).collect()
        };
        for unit in leftovers {
            unit.fail(PoolError::new(Kind::Closed));
        }
        for w in &mut self.workers {
            w.conn = None;
        }
        self.publish_workers();
        for w in &mut self.workers {
            let _ = w.proc.join();
        }
        self.workers.clear();
        self.finish();
    }

    /// Terminate or broken pool: kill every worker, fail everything pending with `err`.
    fn kill_all(&mut self, err: PoolError) {
        let mut pending: Vec<Unit> = Vec::new();
        {
            let mut st = self.shared.lock();
            st.finished = true;
            pending.extend(st.queue.drain(..));
        }
        for w in &mut self.workers {
            let _ = w.proc.kill();
        }
        for w in &mut self.workers {
            let _ = w.proc.join();
            w.conn = None;
            pending.extend(w.inflight.drain(..));
        }
        self.workers.clear();
        self.publish_workers();
        for unit in pending {
            unit.fail(err.clone());
        }
        self.finish();
    }

    fn finish(&mut self) {
        let mut st = self.shared.lock();
        st.finished = true;
        st.pids.clear();
        st.conns.clear();
        drop(st);
        self.shared.cv.notify_all();
    }
}

/// Writes the units of a batch into `buf`: per unit its header, then its arguments (encoded
/// now if lazy). Returns the bytes used, the descriptors of the units written, and the units
/// that could not be encoded (left out of the batch) with the reason.
fn fill(buf: &mut [u8], units: &[Unit]) -> (usize, Vec<RawFd>, Vec<(usize, String)>) {
    let mut pos = 0;
    let mut raw = Vec::new();
    let mut failed = Vec::new();
    for (k, u) in units.iter().enumerate() {
        let body = pos + UnitHeader::SIZE;
        let dst = &mut buf[body..body + u.len];
        let fds = match &u.payload {
            Payload::Ready { bytes, fds, .. } => {
                dst.copy_from_slice(bytes);
                Ok(fds.clone())
            }
            // The argument's `Serialize` runs here, on the result handler's thread: a panic
            // in it fails this unit instead of ending the thread (and every wait on it).
            Payload::Lazy(args) => task::unless_panic("encoding the argument", || args.encode(dst)),
        };
        match fds {
            Ok(fds) if fds.len() == u.nfds => {
                let (entry, pod) = match u.pod {
                    Some((direct, values)) => (direct, values.saturating_add(1)),
                    None => (u.entry, 0),
                };
                UnitHeader {
                    id: u.id,
                    entry,
                    len: u.len as u64,
                    nfds: u.nfds as u32,
                    pod,
                }
                .write(&mut buf[pos..body]);
                raw.extend(fds);
                pos = body + u.len;
            }
            Ok(_) => failed.push((k, "the argument's handles changed after submission".into())),
            Err(e) => failed.push((k, e)),
        }
    }
    (pos, raw, failed)
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use crate::{Pool, StartMethod};

    fn double(x: u64) -> u64 {
        2 * x
    }

    /// A `close` that lands while the handler is between steps (a pause of 500 ms before
    /// each decision) is not lost: the pool's drop, which closes and joins the handler, ends.
    /// When the handler decided under one acquisition of the lock and marked itself asleep
    /// under another, a `close` between the two was lost and the drop hung.
    #[test]
    fn a_close_just_before_the_handler_sleeps_is_not_lost() {
        for method in StartMethod::ALL {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                let mut builder = Pool::builder().processes(2).start_method(method);
                builder.pause_before_deciding = Duration::from_millis(500);
                let outcome = builder.build().and_then(|pool| {
                    let out = pool.map(double, 0..2u64);
                    // The last result was just delivered: the handler is in its pause before
                    // the next decision when the drop closes the pool.
                    std::thread::sleep(Duration::from_millis(100));
                    drop(pool);
                    out
                });
                let _ = tx.send(outcome);
            });
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(out) => assert_eq!(out.unwrap(), vec![0, 2], "{method}"),
                Err(_) => {
                    for c in crate::active_children() {
                        let _ = c.kill();
                    }
                    panic!("{method}: dropping the pool did not end within 30 s");
                }
            }
        }
    }
}
