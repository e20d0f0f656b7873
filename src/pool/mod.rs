//! `Pool`: a fixed number of worker processes that run tasks, as Python's
//! `multiprocessing.Pool`, and that never hangs.
//!
//! A task is "the function itself" plus its argument, as for [`Process`](crate::Process): a
//! function item or a closure that captures nothing, `Fn(A) -> R` with serde `A` and `R`;
//! its return value comes back as the result. Handles ([`Connection`](crate::Connection),
//! queues, shared memory) may be inside the argument and work in the worker: Python's
//! "pool processes cannot use a Queue" does not hold here.
//!
//! | Python | multiprocess |
//! |---|---|
//! | `Pool(n)`, `Pool(n, initializer, initargs, maxtasksperchild)` | [`Pool::new`], [`Pool::builder`] |
//! | `pool.apply(f, (x,))` | [`pool.apply(f, x)`](Pool::apply) |
//! | `pool.apply_async(f, (x,), callback, error_callback)` | [`apply_async`](Pool::apply_async), [`apply_async_with`](Pool::apply_async_with) |
//! | `pool.map(f, xs, chunksize)` | [`map`](Pool::map), [`map_chunked`](Pool::map_chunked) |
//! | `pool.map_async(f, xs, chunksize, callback, error_callback)` | [`map_async`](Pool::map_async), [`map_async_chunked`](Pool::map_async_chunked), [`map_async_with`](Pool::map_async_with) |
//! | `pool.imap(f, xs, chunksize)`, `imap_unordered` | [`imap`](Pool::imap), [`imap_unordered`](Pool::imap_unordered) (+ `_chunked`) |
//! | (none: Python pickles every item) | [`map_pod`](Pool::map_pod): plain data with no encoding (+ `_chunked`, `_async`) |
//! | `pool.starmap(f, [(a, b), ...])`, `starmap_async` | [`starmap`](Pool::starmap), [`starmap_async`](Pool::starmap_async) |
//! | `res.get()`, `res.get(t)`, `res.wait(t)`, `res.ready()`, `res.successful()` | [`AsyncResult`] |
//! | `pool.close()`, `pool.terminate()`, `pool.join()`, `with Pool() as p:` | the same; dropping a pool is close + join |
//!
//! # Never hangs, never loses a result
//! - A panic in a task is that task's error ([`PoolError::is_panic`], with the message); the
//!   worker goes on.
//! - A worker that dies (a signal, `abort`, `exit` inside the task, the OOM killer) fails the
//!   task it was running with [`PoolError::is_worker_lost`], naming its pid and signal or exit
//!   code; a replacement is started and the pool goes on. (Python's pool hangs here.)
//! - A failing initializer fails the pool: [`Builder::build`] returns the error, or, for a
//!   replacement worker, every pending task fails with it. Nothing is respawned in a loop.
//! - `map` returns the error of the first failing item by input order, and
//!   [`PoolError::item`] says which item it was.
//!
//! # How it works
//! Each worker is a [`Process`](crate::Process) (any start method) connected to the pool by
//! its own [`Pipe`](crate::Pipe). One thread per pool, the *result handler*, hands units of
//! work (a task, or a chunk of a map) to the workers in batches, reads their reports, runs the
//! callbacks, and replaces the workers that die. Targets travel as an offset from an anchor
//! function (as for `Process`), arguments and results as serde bytes (a fixed-width format
//! private to the pool) with their descriptors attached. Batches and reports of 64 KiB or more
//! go through shared memory owned by each worker instead of the socket; the chunks of a map
//! are encoded only when they are sent, straight into that memory.
//!
//! # Warning
//! Tasks queued behind another in a batch wait for it: when many tasks are queued, a worker
//! takes several at once (see [`Pool::apply_async`]). When a worker dies, the tasks of its
//! batch that had not started, and those that had finished but whose results had not been
//! sent yet, are run again on another worker; only the task that was running fails.

mod arena;
mod error;
#[cfg(feature = "mpi")]
mod mpi;
mod result;
mod supervisor;
mod worker;

/// Called by the crate's constructor: under an MPI launcher, sets up MPI, and a worker rank
/// serves as a cluster-pool worker instead of running `main`.
#[cfg(feature = "mpi")]
pub(crate) fn divert_world() {
    mpi::divert_world();
}

use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytemuck::Pod;
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use error::{PoolError, PoolErrorKind};
pub use result::AsyncResult;

use error::Kind;
use result::{MapShared, OnError, OnSuccess, Sink, StreamShared};
use supervisor::{Config, InitSpec, KeepAlive, LazyArgs, Payload, Shared, Unit, UnitKind};

use crate::context::StartMethod;
use crate::task;
use crate::wire;

/// A pool of worker processes (Python's `multiprocessing.Pool`).
///
/// # Examples
/// ```
/// use multiprocess::Pool;
///
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// let pool = Pool::new(4)?;
/// assert_eq!(pool.apply(square, 7)?, 49);
/// assert_eq!(pool.map(square, 1..=5)?, [1, 4, 9, 16, 25]);
/// let mut pending = pool.apply_async(square, 12);
/// assert_eq!(pending.get()?, 144);
/// # Ok::<(), multiprocess::PoolError>(())
/// ```
///
/// # Warning
/// Dropping a pool finishes the work submitted to it (close + join), as `with Pool() as p:`
/// would not in Python (it terminates). Call [`terminate`](Self::terminate) to stop at once.
pub struct Pool {
    shared: Arc<Shared>,
    handler: Mutex<Option<JoinHandle<()>>>,
    processes: usize,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("processes", &self.processes)
            .field("pids", &self.pids())
            .finish()
    }
}

/// Builds a [`Pool`]: number of processes, initializer, `maxtasksperchild`, start method
/// (Python's `Pool` arguments).
///
/// # Examples
/// ```
/// use multiprocess::{Pool, StartMethod};
/// use std::sync::atomic::{AtomicU32, Ordering};
///
/// // Per-worker state that the initializer sets up (each worker is its own process).
/// static LEVEL: AtomicU32 = AtomicU32::new(0);
///
/// fn setup(level: u32) {
///     LEVEL.store(level, Ordering::Relaxed);
/// }
/// fn level(_: ()) -> String {
///     LEVEL.load(Ordering::Relaxed).to_string()
/// }
///
/// let pool = Pool::builder()
///     .processes(2)
///     .initializer(setup, 3)
///     .maxtasksperchild(100)
///     .start_method(StartMethod::ForkServer)
///     .build()?;
/// assert_eq!(pool.apply(level, ())?, "3");
/// # Ok::<(), multiprocess::PoolError>(())
/// ```
#[must_use]
pub struct Builder {
    processes: Option<usize>,
    method: Option<StartMethod>,
    maxtasks: Option<u64>,
    init: Option<Result<InitSpec, PoolError>>,
    #[cfg(feature = "mpi")]
    mpi: bool,
    /// Tests only: see `supervisor::Config::pause_before_deciding`.
    #[cfg(test)]
    pause_before_deciding: std::time::Duration,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("processes", &self.processes)
            .field("method", &self.method)
            .field("maxtasks", &self.maxtasks)
            .field("initializer", &self.init.is_some())
            .finish()
    }
}

impl Builder {
    /// A cluster pool: the workers are the other ranks of the MPI job this program runs in
    /// (`mpirun -n N ./program`: rank 0 runs `main`, ranks 1..N serve), on any number of
    /// machines. The same `Pool`, verbs, chunking and errors as a local pool; the number of
    /// processes is the number of worker ranks. Needs the `mpi` cargo feature.
    ///
    /// # Errors (at [`build`](Self::build))
    /// Outside an MPI launcher, or with no worker rank; a worker rank running another build
    /// (the error names its rank and host); `maxtasksperchild` (a rank cannot be replaced);
    /// another cluster pool still running in this process.
    #[cfg(feature = "mpi")]
    pub fn mpi(mut self) -> Self {
        self.mpi = true;
        self
    }

    /// The number of worker processes (default: [`cpu_count`](crate::cpu_count)).
    pub fn processes(mut self, n: usize) -> Self {
        self.processes = Some(n);
        self
    }

    /// The start method of the workers (default: [`get_start_method`](crate::get_start_method)).
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.method = Some(method);
        self
    }

    /// Each worker runs at most `n` units of work (tasks, or chunks of a map), then is
    /// replaced by a fresh process (Python's `maxtasksperchild`). `n` must be at least 1:
    /// [`build`](Self::build) refuses 0, as Python does (a worker that may run nothing would
    /// be replaced without end).
    pub fn maxtasksperchild(mut self, n: u64) -> Self {
        self.maxtasks = Some(n);
        self
    }

    /// Every worker runs `f(arg)` when it starts, before any task (Python's `initializer`,
    /// `initargs`); no task is handed to a worker before its initializer has succeeded. The
    /// argument may hold handles. If it fails (panics, or exits its worker), the pool is
    /// broken: [`build`](Self::build) returns the error, and a replacement worker whose
    /// initializer fails fails every pending task with it; none is started again. A worker
    /// killed by a signal while it initializes (from outside, or a crash) is a lost worker and
    /// is replaced; but when `3 * processes` workers in a row die before finishing anything,
    /// the pool breaks with an error saying so, instead of starting workers without end.
    pub fn initializer<F, A>(mut self, f: F, arg: A) -> Self
    where
        F: Fn(A) + Copy + Send + Sync + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
    {
        let _ = f;
        let entry = task::pool_entry_offset::<F, A, ()>();
        let mut payload = Vec::new();
        let spec = match wire::encode_into_vec(std::slice::from_ref(&arg), &mut payload) {
            Ok(fds) => Ok(InitSpec {
                entry,
                payload,
                fds,
                keep: Arc::new(Mutex::new(arg)),
            }),
            Err(e) => Err(PoolError::new(Kind::Encode(e.into_message()))),
        };
        self.init = Some(spec);
        self
    }

    /// Starts the workers and waits until each has run the initializer.
    ///
    /// # Errors
    /// Zero processes or a `maxtasksperchild` of 0 ([`PoolError::is_misuse`]); a worker
    /// could not be started; the
    /// initializer failed ([`PoolError::is_initializer_failure`]): then every worker started
    /// has been stopped, and no more than `processes` were started.
    pub fn build(self) -> Result<Pool, PoolError> {
        #[cfg(feature = "mpi")]
        let processes = if self.mpi {
            if self.maxtasks.is_some() {
                return Err(PoolError::new(Kind::Invalid(
                    "maxtasksperchild is not available on a cluster pool: an MPI rank cannot be \
                     replaced"
                        .into(),
                )));
            }
            mpi::world_workers()?
        } else {
            self.processes.unwrap_or_else(crate::cpu_count)
        };
        #[cfg(not(feature = "mpi"))]
        let processes = self.processes.unwrap_or_else(crate::cpu_count);
        if processes == 0 {
            return Err(PoolError::new(Kind::Invalid(
                "a pool needs at least one process".into(),
            )));
        }
        if self.maxtasks == Some(0) {
            return Err(PoolError::new(Kind::Invalid(
                "maxtasksperchild must be at least 1 (as in Python): a worker allowed no task \
                 would be replaced without end"
                    .into(),
            )));
        }
        let init = self.init.transpose()?;
        let (shared, wake_rx) =
            Shared::new().map_err(|e| PoolError::new(Kind::Start(e.to_string())))?;
        let config = Config {
            processes,
            method: self.method,
            maxtasks: self.maxtasks,
            init,
            #[cfg(feature = "mpi")]
            mpi: self.mpi,
            #[cfg(test)]
            pause_before_deciding: self.pause_before_deciding,
        };
        let for_handler = Arc::clone(&shared);
        let handler = std::thread::Builder::new()
            .name("multiprocess-pool".into())
            .spawn(move || {
                #[cfg(feature = "mpi")]
                if config.mpi {
                    return mpi::run(for_handler, config, wake_rx);
                }
                supervisor::run(for_handler, config, wake_rx)
            })
            .map_err(|e| PoolError::new(Kind::Start(e.to_string())))?;
        let broken = {
            let mut st = shared.lock();
            while !st.ready && st.broken.is_none() && !st.finished {
                st = shared.cv.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            st.broken.clone()
        };
        let pool = Pool {
            shared,
            handler: Mutex::new(Some(handler)),
            processes,
        };
        match broken {
            Some(e) => {
                pool.terminate();
                Err(e)
            }
            None => Ok(pool),
        }
    }
}

/// CPython's default chunksize for `map`: `divmod(len, 4 * processes)`, rounded up.
fn default_chunksize(len: usize, processes: usize) -> usize {
    let (q, r) = (len / (4 * processes), len % (4 * processes));
    (q + usize::from(r > 0)).max(1)
}

/// The most bytes of encoded arguments a default-sized chunk should carry: larger units
/// pipeline badly (one worker computes while the other still waits for its bytes) and make
/// the workers' arenas (shared memory the size of the largest batch) larger. Measured on W6
/// (4 MiB inputs, default chunks of 32 capped to 2) before the arenas: 0.54 -> 0.59 GB/s.
const UNIT_BYTES: usize = 8 << 20;

/// Lowers a default chunksize so that a chunk of items the size of the first one stays under
/// `UNIT_BYTES` (an explicit chunksize is the caller's to choose and is never changed).
fn cap_by_size<A: Serialize>(items: &[A], chunksize: usize) -> usize {
    if chunksize <= 1 {
        return chunksize;
    }
    match items.first().map(wire::measure) {
        Some(Ok((len, _))) if len > 0 => chunksize.min((UNIT_BYTES / len).max(1)),
        _ => chunksize,
    }
}

impl Pool {
    /// A pool of `processes` workers with the default start method.
    ///
    /// # Errors
    /// As [`Builder::build`].
    pub fn new(processes: usize) -> Result<Pool, PoolError> {
        Pool::builder().processes(processes).build()
    }

    /// A [`Builder`] for a pool.
    pub fn builder() -> Builder {
        Builder {
            processes: None,
            method: None,
            maxtasks: None,
            init: None,
            #[cfg(feature = "mpi")]
            mpi: false,
            #[cfg(test)]
            pause_before_deciding: std::time::Duration::ZERO,
        }
    }

    /// The number of worker processes.
    pub fn processes(&self) -> usize {
        self.processes
    }

    /// The pids of the workers running now (they change as workers die or retire).
    pub fn pids(&self) -> Vec<i32> {
        self.shared.lock().pids.clone()
    }

    /// The number of worker processes started so far, replacements included.
    pub fn started_processes(&self) -> usize {
        self.shared.lock().started
    }

    /// A unit of items encoded now (`apply_async`: small, and encoded on the caller's thread
    /// while the result handler sends).
    fn unit<A: Serialize + Send + 'static>(
        &self,
        entry: i64,
        items: Vec<A>,
        start: usize,
        sink: Arc<dyn Sink>,
    ) -> Option<Unit> {
        let count = items.len();
        let mut bytes = Vec::new();
        let fds = match wire::encode_into_vec(&items[..], &mut bytes) {
            Ok(fds) => fds,
            Err(e) => {
                sink.fail(start, count, PoolError::new(Kind::Encode(e.into_message())));
                return None;
            }
        };
        let keep: Option<Arc<dyn KeepAlive>> = if fds.is_empty() {
            None
        } else {
            Some(Arc::new(Mutex::new(items)))
        };
        Some(Unit {
            id: self.shared.next_id(),
            entry,
            len: bytes.len(),
            nfds: fds.len(),
            payload: Payload::Ready { bytes, fds, keep },
            kind: UnitKind::Task(sink),
            start,
            count,
            pod: None,
        })
    }

    /// A unit of the items `range` of `items`, which are the call's items `start..`,
    /// measured now and encoded when it is sent (maps: no copy of the input is made before
    /// it goes to a worker).
    fn lazy_unit<A: Serialize + Send + 'static>(
        &self,
        entry: i64,
        items: &Arc<Mutex<Vec<A>>>,
        range: std::ops::Range<usize>,
        start: usize,
        sink: Arc<dyn Sink>,
    ) -> Option<Unit> {
        let count = range.len();
        let measured = {
            let all = items.lock().unwrap_or_else(|p| p.into_inner());
            wire::measure(&all[range.clone()])
        };
        let (len, nfds) = match measured {
            Ok(m) => m,
            Err(e) => {
                sink.fail(start, count, PoolError::new(Kind::Encode(e.into_message())));
                return None;
            }
        };
        Some(Unit {
            id: self.shared.next_id(),
            entry,
            len,
            nfds,
            payload: Payload::Lazy(Box::new(Items {
                items: Arc::clone(items),
                range,
            })),
            kind: UnitKind::Task(sink),
            start,
            count,
            pod: None,
        })
    }

    /// Runs `f(arg)` in a worker and waits for its value (Python's `apply`).
    ///
    /// # Errors
    /// The task's error: [`PoolError::is_panic`], [`PoolError::is_worker_lost`], a closed
    /// pool ([`PoolError::is_closed`]), an argument that does not serialize.
    pub fn apply<F, A, R>(&self, f: F, arg: A) -> Result<R, PoolError>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.apply_async(f, arg).get()
    }

    /// Submits `f(arg)` and returns at once (Python's `apply_async`); the value comes from
    /// [`AsyncResult::get`]. Errors (including a closed pool) come from `get` too.
    ///
    /// Submitting many tasks at once is cheap: the pool sends them to the workers in batches.
    pub fn apply_async<F, A, R>(&self, f: F, arg: A) -> AsyncResult<R>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.apply_async_inner(f, arg, None, None)
    }

    /// As [`apply_async`](Self::apply_async), with Python's `callback` and `error_callback`:
    /// one of them runs with the value or the error when the task ends, before
    /// [`AsyncResult::get`] returns. They run on the pool's result handler thread (keep them
    /// short: results wait meanwhile); a panic in one is caught and reported on stderr, and
    /// harms nothing else.
    ///
    /// # Examples
    /// ```
    /// use multiprocess::Pool;
    /// use std::sync::mpsc;
    ///
    /// fn double(x: i32) -> i32 { x * 2 }
    ///
    /// let pool = Pool::new(2)?;
    /// let (tx, rx) = mpsc::channel();
    /// let tx2 = tx.clone();
    /// let mut r = pool.apply_async_with(
    ///     double,
    ///     21,
    ///     move |v: &i32| tx.send(Ok(*v)).unwrap(),
    ///     move |e: &multiprocess::PoolError| tx2.send(Err(e.to_string())).unwrap(),
    /// );
    /// assert_eq!(r.get()?, 42);
    /// assert_eq!(rx.recv().unwrap(), Ok(42));
    /// # Ok::<(), multiprocess::PoolError>(())
    /// ```
    pub fn apply_async_with<F, A, R>(
        &self,
        f: F,
        arg: A,
        callback: impl FnOnce(&R) + Send + 'static,
        error_callback: impl FnOnce(&PoolError) + Send + 'static,
    ) -> AsyncResult<R>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.apply_async_inner(
            f,
            arg,
            Some(Box::new(move |v: &[R]| {
                if let Some(v) = v.first() {
                    callback(v)
                }
            })),
            Some(Box::new(error_callback)),
        )
    }

    fn apply_async_inner<F, A, R>(
        &self,
        f: F,
        arg: A,
        on_success: Option<OnSuccess<R>>,
        on_error: Option<OnError>,
    ) -> AsyncResult<R>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let _ = f;
        let entry = task::pool_entry_offset::<F, A, R>();
        let shared = MapShared::<R>::new(1, on_success, on_error);
        if let Some(unit) = self.unit(entry, vec![arg], 0, Arc::clone(&shared) as Arc<dyn Sink>) {
            self.shared.submit(unit, false);
        }
        AsyncResult::for_one(shared)
    }

    /// Runs `f` on every item, in parallel, and returns the values in input order (Python's
    /// `map`). The input is split into chunks as CPython does (`len / (4 * processes)`,
    /// rounded up); each chunk goes to a worker as one unit.
    ///
    /// # Errors
    /// The error of the first failing item by input order ([`PoolError::item`] says which).
    pub fn map<F, A, R, I>(&self, f: F, iterable: I) -> Result<Vec<R>, PoolError>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        self.map_async_with_inner(f, iterable, None, None, None)
            .get()
    }

    /// As [`map`](Self::map) with chunks of `chunksize` items (Python's `chunksize`).
    ///
    /// # Errors
    /// As [`map`](Self::map); a chunksize of 0 ([`PoolError::is_misuse`]).
    pub fn map_chunked<F, A, R, I>(
        &self,
        f: F,
        iterable: I,
        chunksize: usize,
    ) -> Result<Vec<R>, PoolError>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        self.map_async_with_inner(f, iterable, Some(chunksize), None, None)
            .get()
    }

    /// As [`map`](Self::map) without waiting (Python's `map_async`): the input is read and
    /// submitted now, the values come from [`AsyncResult::get`], and
    /// [`AsyncResult::completed`] counts the items done (a progress bar).
    ///
    /// # Examples
    /// ```
    /// use multiprocess::Pool;
    /// use std::time::Duration;
    ///
    /// fn slow_square(x: u64) -> u64 {
    ///     std::thread::sleep(Duration::from_millis(1));
    ///     x * x
    /// }
    ///
    /// let pool = Pool::new(2)?;
    /// let mut result = pool.map_async(slow_square, 0..200);
    /// while !result.wait_timeout(Duration::from_millis(20)) {
    ///     println!("{}/{} done", result.completed(), result.total());
    /// }
    /// assert_eq!(result.get()?.len(), 200);
    /// # Ok::<(), multiprocess::PoolError>(())
    /// ```
    pub fn map_async<F, A, R, I>(&self, f: F, iterable: I) -> AsyncResult<Vec<R>>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        self.map_async_with_inner(f, iterable, None, None, None)
    }

    /// As [`map_async`](Self::map_async) with chunks of `chunksize` items.
    pub fn map_async_chunked<F, A, R, I>(
        &self,
        f: F,
        iterable: I,
        chunksize: usize,
    ) -> AsyncResult<Vec<R>>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        self.map_async_with_inner(f, iterable, Some(chunksize), None, None)
    }

    /// As [`map_async`](Self::map_async) with an optional chunksize and Python's `callback`
    /// (given all the values) and `error_callback` (given the first error by input order);
    /// they run as for [`apply_async_with`](Self::apply_async_with).
    pub fn map_async_with<F, A, R, I>(
        &self,
        f: F,
        iterable: I,
        chunksize: Option<usize>,
        callback: impl FnOnce(&[R]) + Send + 'static,
        error_callback: impl FnOnce(&PoolError) + Send + 'static,
    ) -> AsyncResult<Vec<R>>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        self.map_async_with_inner(
            f,
            iterable,
            chunksize,
            Some(Box::new(callback)),
            Some(Box::new(error_callback)),
        )
    }

    fn map_async_with_inner<F, A, R, I>(
        &self,
        f: F,
        iterable: I,
        chunksize: Option<usize>,
        on_success: Option<OnSuccess<R>>,
        on_error: Option<OnError>,
    ) -> AsyncResult<Vec<R>>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        let _ = f;
        let entry = task::pool_entry_offset::<F, A, R>();
        if chunksize == Some(0) {
            return AsyncResult::for_map(MapShared::failed(0, chunksize_error()));
        }
        let items: Vec<A> = iterable.into_iter().collect();
        let total = items.len();
        let chunksize = chunksize
            .unwrap_or_else(|| cap_by_size(&items, default_chunksize(total, self.processes)));
        let shared = MapShared::<R>::new(total, on_success, on_error);
        let sink: Arc<dyn Sink> = Arc::clone(&shared) as Arc<dyn Sink>;
        let items = Arc::new(Mutex::new(items));
        let mut start = 0;
        while start < total {
            let end = (start + chunksize).min(total);
            if let Some(unit) = self.lazy_unit(entry, &items, start..end, start, Arc::clone(&sink))
            {
                self.shared.submit(unit, false);
            }
            start = end;
        }
        AsyncResult::for_map(shared)
    }

    /// As [`map`](Self::map) for plain data, with no encoding at all: the fastest way to
    /// map a large slice of numbers (or of your own `#[repr(C)]` structs deriving
    /// [`Pod`]) through the pool. Python has nothing like it: its pool pickles
    /// every item both ways.
    ///
    /// Each chunk's items are copied once, as bytes, into the worker's shared memory; the
    /// worker reads them there in place, writes each value in place in its own shared memory,
    /// and the values are copied once into the returned `Vec`. Serde is not involved, so the
    /// items need no `Serialize`; they cannot hold handles (a [`Pod`] type holds
    /// no pointer and no descriptor).
    ///
    /// The chunks are as for [`map`](Self::map) (CPython's `len / (4 * processes)`), kept
    /// under 8 MiB of arguments or values each. A chunk stops at its first panic (as a chunk
    /// of Python's `map` stops at its first exception); the error is that item's, and as for
    /// `map` the error of the first failing item by input order is returned. Every worker
    /// guarantee of [`Pool`] holds: a worker that dies fails only the item it was running.
    ///
    /// # Examples
    /// ```
    /// use multiprocess::Pool;
    ///
    /// fn scale(x: f64) -> f64 {
    ///     x * 2.5
    /// }
    ///
    /// let pool = Pool::new(2)?;
    /// let xs: Vec<f64> = (0..100_000).map(f64::from).collect();
    /// let ys = pool.map_pod(scale, xs)?;
    /// assert_eq!(ys[40_000], 100_000.0);
    /// # Ok::<(), multiprocess::PoolError>(())
    /// ```
    ///
    /// # Errors
    /// As [`map`](Self::map).
    pub fn map_pod<F, A, R>(&self, f: F, items: impl Into<Vec<A>>) -> Result<Vec<R>, PoolError>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Pod + Send + Sync,
        R: Pod + Send,
    {
        self.map_pod_async_inner(f, items.into(), None).get()
    }

    /// As [`map_pod`](Self::map_pod) with chunks of `chunksize` items.
    ///
    /// # Errors
    /// As [`map_pod`](Self::map_pod); a chunksize of 0 ([`PoolError::is_misuse`]).
    pub fn map_pod_chunked<F, A, R>(
        &self,
        f: F,
        items: impl Into<Vec<A>>,
        chunksize: usize,
    ) -> Result<Vec<R>, PoolError>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Pod + Send + Sync,
        R: Pod + Send,
    {
        self.map_pod_async_inner(f, items.into(), Some(chunksize))
            .get()
    }

    /// As [`map_pod`](Self::map_pod) without waiting: the result can be awaited, or read
    /// with [`AsyncResult::get`].
    ///
    /// # Examples
    /// ```
    /// use multiprocess::Pool;
    ///
    /// fn cube(x: u32) -> u64 {
    ///     u64::from(x).pow(3)
    /// }
    ///
    /// let pool = Pool::new(2)?;
    /// let cubes = pool.map_pod_async(cube, vec![1u32, 2, 3]);
    /// # let cubes = multiprocess::__block_on(async move {
    /// let cubes = cubes.await?;
    /// # Ok::<_, multiprocess::PoolError>(cubes) })?;
    /// assert_eq!(cubes, [1, 8, 27]);
    /// # Ok::<(), multiprocess::PoolError>(())
    /// ```
    pub fn map_pod_async<F, A, R>(&self, f: F, items: impl Into<Vec<A>>) -> AsyncResult<Vec<R>>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Pod + Send + Sync,
        R: Pod + Send,
    {
        self.map_pod_async_inner(f, items.into(), None)
    }

    fn map_pod_async_inner<F, A, R>(
        &self,
        f: F,
        items: Vec<A>,
        chunksize: Option<usize>,
    ) -> AsyncResult<Vec<R>>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Pod + Send + Sync,
        R: Pod + Send,
    {
        let _ = f;
        let (entry, direct) = task::pod_entry_offsets::<F, A, R>();
        if chunksize == Some(0) {
            return AsyncResult::for_map(MapShared::failed_pod(0, chunksize_error()));
        }
        let total = items.len();
        let chunksize = chunksize.unwrap_or_else(|| {
            let widest = std::mem::size_of::<A>()
                .max(std::mem::size_of::<R>())
                .max(1);
            default_chunksize(total, self.processes).min((UNIT_BYTES / widest).max(1))
        });
        let shared = MapShared::<R>::new_pod(total);
        let sink: Arc<dyn Sink> = Arc::clone(&shared) as Arc<dyn Sink>;
        let items = Arc::new(items);
        let mut start = 0;
        while start < total {
            let end = (start + chunksize).min(total);
            let count = end - start;
            // No overflow: the items are in memory, so their bytes are at most `isize::MAX`.
            let len = 8 + count * std::mem::size_of::<A>();
            self.shared.submit(
                Unit {
                    id: self.shared.next_id(),
                    entry,
                    len,
                    nfds: 0,
                    payload: Payload::Lazy(Box::new(PodItems {
                        items: Arc::clone(&items),
                        range: start..end,
                    })),
                    kind: UnitKind::Task(Arc::clone(&sink)),
                    start,
                    count,
                    pod: Some((
                        direct,
                        (count as u64).saturating_mul(std::mem::size_of::<R>() as u64),
                    )),
                },
                false,
            );
            start = end;
        }
        AsyncResult::for_map(shared)
    }

    /// Runs `f` on every item lazily, yielding the values in input order as they come
    /// (Python's `imap`). Unlike Python's, it reads its input only as far as it needs to keep
    /// the workers busy (a window of `16 * processes` chunks ahead of the consumer), so an
    /// endless or huge input is fine.
    ///
    /// With no chunksize given, the chunks adapt: they start at one item and grow while
    /// tasks are short, so that each chunk keeps a worker busy for about a millisecond (at
    /// most 4096 items). Small tasks then do not each pay a round trip to a worker (Python's
    /// default chunksize of 1 does, and runs 100,000 tasks of 10 µs about ten times slower
    /// than this); tasks of a millisecond or more stay one to a chunk. Give a chunksize
    /// ([`imap_chunked`](Self::imap_chunked)) to fix it.
    ///
    /// # Examples
    /// ```
    /// use multiprocess::Pool;
    ///
    /// fn square(x: u64) -> u64 { x * x }
    ///
    /// let pool = Pool::new(2)?;
    /// let firsts: Vec<u64> = pool
    ///     .imap(square, 0..) // an endless input
    ///     .take(5)
    ///     .collect::<Result<_, _>>()?;
    /// assert_eq!(firsts, [0, 1, 4, 9, 16]);
    /// # Ok::<(), multiprocess::PoolError>(())
    /// ```
    pub fn imap<F, A, R, I>(&self, f: F, iterable: I) -> IMap<'_, A, R, I::IntoIter>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        IMap::new(self, f, iterable.into_iter(), None, true)
    }

    /// As [`imap`](Self::imap) with chunks of `chunksize` items; a chunksize of 0 yields one
    /// error ([`PoolError::is_misuse`]).
    pub fn imap_chunked<F, A, R, I>(
        &self,
        f: F,
        iterable: I,
        chunksize: usize,
    ) -> IMap<'_, A, R, I::IntoIter>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        IMap::new(self, f, iterable.into_iter(), Some(chunksize), true)
    }

    /// As [`imap`](Self::imap), yielding values in the order they finish (Python's
    /// `imap_unordered`).
    pub fn imap_unordered<F, A, R, I>(&self, f: F, iterable: I) -> IMap<'_, A, R, I::IntoIter>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        IMap::new(self, f, iterable.into_iter(), None, false)
    }

    /// As [`imap_unordered`](Self::imap_unordered) with chunks of `chunksize` items.
    pub fn imap_unordered_chunked<F, A, R, I>(
        &self,
        f: F,
        iterable: I,
        chunksize: usize,
    ) -> IMap<'_, A, R, I::IntoIter>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        IMap::new(self, f, iterable.into_iter(), Some(chunksize), false)
    }

    /// Python's `starmap`: `f` takes several arguments as one tuple, so this is
    /// [`map`](Self::map) over an iterator of tuples (a target always takes its arguments as
    /// one value).
    ///
    /// # Examples
    /// ```
    /// use multiprocess::Pool;
    ///
    /// fn power((base, exp): (u64, u32)) -> u64 { base.pow(exp) }
    ///
    /// let pool = Pool::new(2)?;
    /// assert_eq!(pool.starmap(power, [(2, 3), (3, 2), (10, 0)])?, [8, 9, 1]);
    /// # Ok::<(), multiprocess::PoolError>(())
    /// ```
    ///
    /// # Errors
    /// As [`map`](Self::map).
    #[doc(alias = "map")]
    pub fn starmap<F, A, R, I>(&self, f: F, iterable: I) -> Result<Vec<R>, PoolError>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        self.map(f, iterable)
    }

    /// [`starmap`](Self::starmap) with chunks of `chunksize` items.
    ///
    /// # Errors
    /// As [`map_chunked`](Self::map_chunked).
    pub fn starmap_chunked<F, A, R, I>(
        &self,
        f: F,
        iterable: I,
        chunksize: usize,
    ) -> Result<Vec<R>, PoolError>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        self.map_chunked(f, iterable, chunksize)
    }

    /// Python's `starmap_async`: [`map_async`](Self::map_async) over an iterator of tuples.
    pub fn starmap_async<F, A, R, I>(&self, f: F, iterable: I) -> AsyncResult<Vec<R>>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        self.map_async(f, iterable)
    }

    /// [`starmap_async`](Self::starmap_async) with chunks of `chunksize` items.
    pub fn starmap_async_chunked<F, A, R, I>(
        &self,
        f: F,
        iterable: I,
        chunksize: usize,
    ) -> AsyncResult<Vec<R>>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        self.map_async_chunked(f, iterable, chunksize)
    }

    /// Takes no new calls; what was submitted still runs (Python's `close`). An `imap` begun
    /// before goes on reading its input.
    pub fn close(&self) {
        self.shared.close();
    }

    /// Stops now (Python's `terminate`): kills the workers, fails every pending task with
    /// [`PoolError::is_terminated`], and returns when every worker has been reaped.
    pub fn terminate(&self) {
        self.shared.terminate();
        self.join_handler();
    }

    /// Waits until the submitted work is done and every worker has ended (Python's `join`).
    ///
    /// # Errors
    /// When the pool was neither closed nor terminated ([`PoolError::is_misuse`]), as in
    /// Python: it would wait forever. Likewise while an [`imap`](Self::imap) of a closed (not
    /// terminated) pool still reads its input: it submits more only as it is consumed, so
    /// finish or drop it first (Python's `imap` submits its whole input at once).
    pub fn join(&self) -> Result<(), PoolError> {
        {
            let st = self.shared.lock();
            if !st.closed {
                return Err(PoolError::new(Kind::Invalid(
                    "cannot join a running pool: close or terminate it first".into(),
                )));
            }
            if st.feeders > 0 && !st.terminating && !st.finished {
                return Err(PoolError::new(Kind::Invalid(
                    "cannot join the pool while an imap still reads its input (it submits \
                     more only as it is consumed): finish or drop the imap first"
                        .into(),
                )));
            }
        }
        self.join_handler();
        Ok(())
    }

    fn join_handler(&self) {
        let handle = self
            .handler
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.close();
        self.join_handler();
    }
}

fn chunksize_error() -> PoolError {
    PoolError::new(Kind::Invalid("chunksize must be at least 1".into()))
}

/// The lazy iterator of [`Pool::imap`] and [`Pool::imap_unordered`]: yields
/// `Result<R, PoolError>` per item.
///
/// [`completed`](Self::completed) counts the items done, [`submitted`](Self::submitted) the
/// items read from the input so far.
pub struct IMap<'p, A, R, I> {
    pool: &'p Pool,
    input: I,
    entry: i64,
    chunksize: usize,
    shared: Arc<StreamShared<R>>,
    submitted: usize,
    yielded: usize,
    exhausted: bool,
    /// Registered with the pool as reading its input (see `Shared::begin_feed`).
    feeding: bool,
    error: Option<PoolError>,
    window: usize,
    /// When no chunksize was given: when feeding began (the chunk size then adapts).
    adaptive_since: Option<Instant>,
    _arg: PhantomData<fn(A)>,
}

impl<A, R, I> IMap<'_, A, R, I> {
    /// Reads no more input, and lets a closed pool wind down once the rest is done.
    fn stop_feeding(&mut self) {
        self.exhausted = true;
        if std::mem::take(&mut self.feeding) {
            self.pool.shared.end_feed();
        }
    }
}

impl<A, R, I> Drop for IMap<'_, A, R, I> {
    fn drop(&mut self) {
        self.stop_feeding();
    }
}

impl<A, R, I> std::fmt::Debug for IMap<'_, A, R, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IMap")
            .field("submitted", &self.submitted)
            .field("yielded", &self.yielded)
            .field("exhausted", &self.exhausted)
            .finish()
    }
}

/// How long an adaptive `imap` chunk should keep a worker busy: long enough that the
/// dispatch (a few µs a chunk) is lost in it, short enough that the last chunks do not leave
/// a worker idle for long and results keep coming.
const ADAPTIVE_CHUNK_TIME: Duration = Duration::from_millis(1);
/// The largest adaptive chunk, whatever the estimate.
const ADAPTIVE_MAX_CHUNK: usize = 4096;

impl<'p, A, R, I> IMap<'p, A, R, I>
where
    A: Serialize + DeserializeOwned + Send + 'static,
    R: Serialize + DeserializeOwned + Send + 'static,
    I: Iterator<Item = A>,
{
    fn new<F>(pool: &'p Pool, f: F, input: I, chunksize: Option<usize>, ordered: bool) -> Self
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
    {
        let _ = f;
        let adaptive_since = chunksize.is_none().then(Instant::now);
        let chunksize = chunksize.unwrap_or(1);
        let refused = if chunksize == 0 {
            Some(chunksize_error())
        } else {
            pool.shared.begin_feed().err()
        };
        let mut it = IMap {
            pool,
            input,
            entry: task::pool_entry_offset::<F, A, R>(),
            chunksize: chunksize.max(1),
            shared: StreamShared::new(ordered),
            submitted: 0,
            yielded: 0,
            exhausted: refused.is_some(),
            feeding: refused.is_none(),
            error: refused,
            window: 16 * pool.processes,
            adaptive_since,
            _arg: PhantomData,
        };
        it.feed();
        it
    }

    /// The size of the next chunk. Fixed when the caller gave one; otherwise it adapts, so
    /// that small tasks do not each pay a dispatch (Python's default of 1 does): from the
    /// items done so far and the time since feeding began, the time one worker spends per
    /// item is estimated, and a chunk is made to last about [`ADAPTIVE_CHUNK_TIME`]. It starts
    /// at 1, at most doubles from one chunk to the next, and never exceeds
    /// [`ADAPTIVE_MAX_CHUNK`]. A consumer that reads slowly makes the estimate too high, and
    /// so the chunks smaller: the safe side for laziness and for the order of results.
    fn next_chunksize(&self) -> usize {
        let Some(since) = self.adaptive_since else {
            return self.chunksize;
        };
        let done = self.shared.completed();
        if done == 0 {
            return self.chunksize;
        }
        let per_item = since.elapsed().as_secs_f64() * self.pool.processes as f64 / done as f64;
        let want = if per_item > 0.0 {
            (ADAPTIVE_CHUNK_TIME.as_secs_f64() / per_item) as usize
        } else {
            ADAPTIVE_MAX_CHUNK
        };
        want.clamp(1, ADAPTIVE_MAX_CHUNK)
            .min(self.chunksize.saturating_mul(2))
    }

    /// Reads and submits input until `window` chunks are ahead of the consumer.
    fn feed(&mut self) {
        while !self.exhausted && self.submitted - self.yielded < self.window * self.chunksize {
            self.chunksize = self.next_chunksize();
            let chunk: Vec<A> = self.input.by_ref().take(self.chunksize).collect();
            if chunk.is_empty() {
                self.stop_feeding();
                break;
            }
            let n = chunk.len();
            let sink: Arc<dyn Sink> = Arc::clone(&self.shared) as Arc<dyn Sink>;
            let chunk = Arc::new(Mutex::new(chunk));
            let unit = self
                .pool
                .lazy_unit(self.entry, &chunk, 0..n, self.submitted, sink);
            self.submitted += n;
            if let Some(unit) = unit {
                self.pool.shared.submit(unit, true);
            }
            if self.pool.shared.lock().finished {
                // The pool was terminated or broke: the refused chunk's items fail with the
                // reason; read no further.
                self.stop_feeding();
            }
        }
    }

    fn next_until(&mut self, deadline: Option<Instant>) -> Option<Result<R, PoolError>> {
        if let Some(e) = self.error.take() {
            return Some(Err(e));
        }
        self.feed();
        if self.exhausted && self.yielded == self.submitted {
            return None;
        }
        match self.shared.next_until(self.yielded, deadline) {
            Some(r) => {
                self.yielded += 1;
                Some(r)
            }
            None => Some(Err(PoolError::new(Kind::Timeout))),
        }
    }

    /// The next value, awaited: as [`next`](Iterator::next) without blocking a thread (the
    /// pool's result handler wakes the task). Feeding more input to the pool (reading the
    /// input iterator, encoding) still happens in this call, as in `next`.
    ///
    /// Cancellation: dropping the future before it completes loses no item; the next call
    /// returns it.
    ///
    /// # Examples
    /// ```
    /// fn double(x: u32) -> u32 { x * 2 }
    /// let pool = multiprocess::Pool::new(2)?;
    /// let mut it = pool.imap(double, 0..3u32);
    /// let mut got = Vec::new();
    /// # let block_on = |f| multiprocess::__block_on(f);
    /// block_on(async {
    ///     while let Some(v) = it.next_async().await {
    ///         got.push(v.unwrap());
    ///     }
    /// });
    /// assert_eq!(got, [0, 2, 4]);
    /// # Ok::<(), multiprocess::PoolError>(())
    /// ```
    pub async fn next_async(&mut self) -> Option<Result<R, PoolError>> {
        std::future::poll_fn(|cx| self.poll_next_item(cx)).await
    }

    /// One poll of [`next_async`](Self::next_async) (the `Stream` implementation's too).
    fn poll_next_item(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<R, PoolError>>> {
        use std::task::Poll;
        if let Some(e) = self.error.take() {
            return Poll::Ready(Some(Err(e)));
        }
        self.feed();
        if self.exhausted && self.yielded == self.submitted {
            return Poll::Ready(None);
        }
        match self.shared.poll_next(self.yielded, cx) {
            Poll::Ready(r) => {
                self.yielded += 1;
                Poll::Ready(Some(r))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// The next value, waiting at most `timeout` (Python's `next(timeout)`). On timeout,
    /// `Some(Err(e))` with [`PoolError::is_timeout`], and the item is still to come.
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Result<R, PoolError>> {
        self.next_until(Some(Instant::now() + timeout))
    }

    /// The number of items done so far (a progress count).
    pub fn completed(&self) -> usize {
        self.shared.completed()
    }

    /// The number of items read from the input and submitted so far.
    pub fn submitted(&self) -> usize {
        self.submitted
    }
}

impl<A, R, I> Iterator for IMap<'_, A, R, I>
where
    A: Serialize + DeserializeOwned + Send + 'static,
    R: Serialize + DeserializeOwned + Send + 'static,
    I: Iterator<Item = A>,
{
    type Item = Result<R, PoolError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_until(None)
    }
}

/// With the `stream` feature, `imap` and `imap_unordered` are `futures_core::Stream`s.
#[cfg(feature = "stream")]
impl<A, R, I> futures_core::Stream for IMap<'_, A, R, I>
where
    A: Serialize + DeserializeOwned + Send + 'static,
    R: Serialize + DeserializeOwned + Send + 'static,
    I: Iterator<Item = A> + Unpin,
{
    type Item = Result<R, PoolError>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.get_mut().poll_next_item(cx)
    }
}

/// The items `range` of `items` (a call's whole input, or one chunk of it), encoded when
/// their unit is sent.
struct Items<A> {
    items: Arc<Mutex<Vec<A>>>,
    range: std::ops::Range<usize>,
}

impl<A: Serialize + Send> LazyArgs for Items<A> {
    fn encode(&self, buf: &mut [u8]) -> Result<Vec<std::os::fd::RawFd>, String> {
        let all = self.items.lock().unwrap_or_else(|p| p.into_inner());
        let (n, fds) =
            wire::encode_into_slice(&all[self.range.clone()], buf).map_err(|e| e.into_message())?;
        if n != buf.len() {
            return Err("the argument encoded to another length than measured".into());
        }
        Ok(fds)
    }
}

/// The items `range` of a `map_pod`'s input, copied as bytes when their unit is sent:
/// `u64 count`, then the items' bytes (see `task::pod_entry`).
struct PodItems<A> {
    items: Arc<Vec<A>>,
    range: std::ops::Range<usize>,
}

impl<A: Pod + Send + Sync> LazyArgs for PodItems<A> {
    fn encode(&self, buf: &mut [u8]) -> Result<Vec<std::os::fd::RawFd>, String> {
        let items = self
            .items
            .get(self.range.clone())
            .ok_or("plain-data chunk out of range")?;
        let bytes: &[u8] = bytemuck::cast_slice(items);
        if buf.len() != 8 + bytes.len() {
            return Err("the argument encoded to another length than measured".into());
        }
        let (count, rest) = buf.split_at_mut(8);
        count.copy_from_slice(&(items.len() as u64).to_le_bytes());
        rest.copy_from_slice(bytes);
        Ok(Vec::new())
    }
}
