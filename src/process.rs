//! `Process`: a child process running a target, with Python's lifecycle.

use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::connection::{Connection, ConnectionError, Waitable};
use crate::context::{self, StartMethod};
use crate::error::{Kind, ProcessError};
use crate::handle::{self, EncodeError, Encoded};
use crate::lifecycle::{lock_state, ChildInfo, Registered};
use crate::sys::{process as sysproc, socket};
use crate::task::{self, Run, Status};

// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
enum Outcome {
    Value(Vec<u8>, Vec<OwnedFd>),
    Panicked(String),
    Failed(String),
}

#[derive(Debug, Default)]
struct ChildState {
    outcome: Option<Outcome>,
    /// `Some(Ok(code))` once reaped; `Some(Err(why))` when the exit status was lost.
    exit: Option<Result<i32, String>>,
    status_closed: bool,
    /// A fork-server child whose server died before reporting its exit: from then on the
    /// child's pidfd, not the server's exit channel, tells when it ends.
    server_lost: bool,
}

/// The exit code of a fork-server child whose server died before it could report the child's
/// status (the status is then unknowable: only a parent can collect it). Python reports the
/// same 255.
pub const EXITCODE_UNKNOWN: i32 = 255;

/// The parent's record of one started child, shared by its `Process` and the registry.
#[derive(Debug)]
pub(crate) struct ChildShared {
    pid: i32,
    name: String,
    daemon: bool,
    method: StartMethod,
    sentinel: Option<OwnedFd>,
    signal_fd: Option<OwnedFd>,
    status: Connection,
    exit: Option<Connection>,
    st: Mutex<ChildState>,
    /// Held by whoever reads the status channel or reaps the child: a thread that took a
    /// message off the channel stores it before any other thread can see end of file there
    /// and conclude that the child sent nothing (`Process::start`'s clean-up polls every
    /// child, from any thread, while the owner may be joining it).
    pumping: Mutex<()>,
}

impl ChildShared {
    fn state(&self) -> MutexGuard<'_, ChildState> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_pumping(&self) -> MutexGuard<'_, ()> {
        self.pumping.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ended(&self) -> bool {
        self.state().exit.is_some()
    }

    fn exitcode(&self) -> Option<i32> {
        match self.state().exit {
            Some(Ok(code)) => Some(code),
            _ => None,
        }
    }

    fn signal(&self, sig: i32) -> io::Result<()> {
        if self.ended() {
            return Ok(());
        }
        match (&self.signal_fd, &self.sentinel, self.method) {
            (Some(fd), _, _) => sysproc::pidfd_signal(fd.as_fd(), sig),
            (None, Some(fd), StartMethod::Fork | StartMethod::Spawn) => {
                sysproc::pidfd_signal(fd.as_fd(), sig)
            }
            // A fork-server child whose pidfd could not be opened had already exited.
            _ => Ok(()),
        }
    }

    /// Polls without blocking; reaps the child if it has ended. Returns whether it ended.
    fn poll(&self) -> bool {
        matches!(self.wait(Some(Duration::ZERO)), Ok(true))
    }

    /// Waits until the child has ended (and reaps it) or `timeout` passes, reading whatever
    /// the child reports meanwhile. Returns whether it ended.
    fn wait(&self, timeout: Option<Duration>) -> io::Result<bool> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if self.state().exit.is_some() {
                return Ok(true);
            }
            let Some(fds) = self.wait_fds() else {
                self.reap();
                return Ok(true);
            };
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let ready = socket::poll_readable(&fds, left)?;
            if ready.get(1) == Some(&true) {
                self.pump_status();
            }
            if ready[0] {
                self.reap();
                if self.ended() {
                    return Ok(true);
                }
                // The fork server died, not the child: wait on the child's pidfd from now on.
                continue;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) && !ready.iter().any(|r| *r) {
                return Ok(false);
            }
        }
    }

    /// Like `wait(None)` but reads nothing from the child (for the exit handler).
    fn wait_quiet(&self) -> io::Result<()> {
        loop {
            if let Some(sentinel) = self.sentinel_now() {
                if !self.ended() {
                    socket::poll_readable(&[sentinel], None)?;
                }
            }
            let _pumping = self.lock_pumping();
            if self.ended() {
                return Ok(());
            }
            if let Some(exit) = self.collect_exit() {
                self.state().exit = Some(exit);
                return Ok(());
            }
        }
    }

    /// What becomes readable when the child ends: its sentinel, or its pidfd once its fork
    /// server is gone.
    fn sentinel_now(&self) -> Option<BorrowedFd<'_>> {
        if self.state().server_lost {
            if let Some(fd) = &self.signal_fd {
                return Some(fd.as_fd());
            }
        }
        self.sentinel.as_ref().map(|fd| fd.as_fd())
    }

    /// What a wait for the child watches: the sentinel (pidfd, or the fork server's signal
    /// descriptor) first, then the status channel while it is open. `None` when there is no
    /// sentinel any more: the child has ended and can be reaped.
    fn wait_fds(&self) -> Option<Vec<BorrowedFd<'_>>> {
        let status_open = !self.state().status_closed;
        let mut fds = vec![self.sentinel_now()?];
        if status_open {
            fds.push(self.status.as_fd());
        }
        Some(fds)
    }

    /// Reads one complete status message if there is one.
    fn pump_status(&self) {
        let _pumping = self.lock_pumping();
        self.pump_status_locked();
    }

    /// [`pump_status`](Self::pump_status), for a caller that holds `pumping`.
    fn pump_status_locked(&self) {
        match self.status.recv_raw_timeout(Duration::ZERO) {
            Ok((bytes, fds)) => {
                let outcome = match handle::decode::<Status>(&bytes, Vec::new()) {
                    Ok(Status::Value(v)) => Some(Outcome::Value(v, fds)),
                    Ok(Status::Panicked(m)) => Some(Outcome::Panicked(m)),
                    Ok(Status::Failed(m)) => Some(Outcome::Failed(m)),
                    Ok(Status::Started { .. } | Status::Exited(_)) => None,
                    Err(e) => Some(Outcome::Failed(format!("malformed status message: {e}"))),
                };
                if let Some(o) = outcome {
                    self.state().outcome = Some(o);
                }
            }
            Err(ConnectionError::Timeout) => {}
            Err(_) => self.state().status_closed = true,
        }
    }

    /// The child has ended: collect its exit status and whatever it reported last. The exit
    /// status is published last, so a thread that finds the child ended finds its report too.
    fn reap(&self) {
        let _pumping = self.lock_pumping();
        if self.ended() {
            return;
        }
        let Some(exit) = self.collect_exit() else {
            // Its fork server died; the child still runs.
            return;
        };
        // Everything the child wrote before exiting is in the socket buffer now.
        while !self.state().status_closed {
            match self.status.poll(Duration::ZERO) {
                Ok(true) => {
                    let before = self.state().outcome.is_some();
                    self.pump_status_locked();
                    let st = self.state();
                    if !st.status_closed && st.outcome.is_some() == before {
                        break;
                    }
                }
                _ => break,
            }
        }
        self.state().exit = Some(exit);
    }

    /// The child's exit code, once it has ended; `None` for a fork-server child whose server
    /// died while the child still runs (then `server_lost` is set, and its pidfd is the
    /// sentinel from then on).
    fn collect_exit(&self) -> Option<Result<i32, String>> {
        Some(match &self.exit {
            Some(exit) => {
                let wait = if self.state().server_lost {
                    Duration::ZERO
                } else {
                    Duration::from_secs(30)
                };
                match exit.recv_timeout::<Status>(wait) {
                    Ok(Status::Exited(raw)) => Ok(sysproc::exitcode_of(raw)),
                    Ok(other) => Err(format!(
                        "fork server sent {other:?} instead of an exit status"
                    )),
                    // The server is gone without a word on this child: the child's pidfd
                    // says whether it ended; its status is lost with the server.
                    Err(_) => match &self.signal_fd {
                        Some(pidfd) => {
                            match socket::poll_readable(&[pidfd.as_fd()], Some(Duration::ZERO)) {
                                Ok(r) if !r[0] => {
                                    self.state().server_lost = true;
                                    return None;
                                }
                                _ => Ok(EXITCODE_UNKNOWN),
                            }
                        }
                        // No pidfd: the child had already ended when it was started.
                        None => Ok(EXITCODE_UNKNOWN),
                    },
                }
            }
            None => match sysproc::waitpid(self.pid, false) {
                Ok(Some(raw)) => Ok(sysproc::exitcode_of(raw)),
                Ok(None) => Err("waitpid returned no status".into()),
                Err(e) => Err(format!("cannot collect the exit status: {e}")),
            },
        })
    }

    fn take_outcome(&self) -> Option<Outcome> {
        self.state().outcome.take()
    }
}

impl Registered for ChildShared {
    fn release_at_exit(&self) {
        // Nobody will read results now: let a child blocked on writing one fail instead.
        let _ = socket::shutdown(self.status.as_fd(), true);
        if self.daemon && !self.ended() {
            let _ = self.signal(sysproc::SIGTERM);
        }
    }

    fn wait_at_exit(&self) {
        let _ = self.wait_quiet();
    }

    fn into_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync> {
        self
    }
}

/// Whether the registry entry `c` is `child`.
fn is(c: &Arc<dyn Registered>, child: &Arc<ChildShared>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(c), Arc::as_ptr(child))
}

fn register(child: &Arc<ChildShared>) {
    let mut g = lock_state();
    g.children.push(Arc::clone(child) as Arc<dyn Registered>);
}

fn unregister(child: &Arc<ChildShared>) {
    let mut g = lock_state();
    g.children.retain(|c| !is(c, child));
}

/// Reaps children that have ended (as Python's `_cleanup`), dropping them from the registry.
fn cleanup() -> Vec<Arc<ChildShared>> {
    let children: Vec<Arc<ChildShared>> = lock_state()
        .children
        .iter()
        .filter_map(|c| Arc::clone(c).into_any().downcast::<ChildShared>().ok())
        .collect();
    let (ended, alive): (Vec<_>, Vec<_>) = children.into_iter().partition(|c| c.poll());
    if !ended.is_empty() {
        let mut g = lock_state();
        g.children.retain(|c| !ended.iter().any(|e| is(c, e)));
    }
    alive
}

// ---------------------------------------------------------------------------------------------

trait ErasedArgs: Send {
    fn encode(&self) -> Result<Encoded, EncodeError>;
}

impl<A: Serialize + Send> ErasedArgs for A {
    fn encode(&self) -> Result<Encoded, EncodeError> {
        handle::encode(self)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    New,
    Started,
    Closed,
}

/// A child process running a target, with Python's lifecycle: create, [`start`](Self::start),
/// [`join`](Self::join), and the rest.
///
/// The target is a function item or a closure that captures nothing, taking one serde
/// argument (use a tuple or struct for several) and returning a serde value, which the parent
/// gets from [`join_result`](Self::join_result) (Python drops it). `R` is that value's type.
///
/// # Examples
/// ```
/// use multiprocess::Process;
///
/// fn greet((name, times): (String, usize)) -> String {
///     name.repeat(times)
/// }
///
/// let mut p = Process::new(greet, ("ab".to_string(), 3));
/// p.set_name("greeter");
/// p.start()?;
/// assert_eq!(p.join_result()?, "ababab");
/// assert_eq!(p.exitcode(), Some(0));
/// # Ok::<(), multiprocess::ProcessError>(())
/// ```
///
/// A closure that captures anything is rejected at compile time:
/// ```compile_fail
/// let n = 5;
/// let p = multiprocess::Process::new(move |x: u32| x + n, 1);
/// ```
///
/// # Warning
/// Dropping a started `Process` does not stop the child. If it has not ended, the crate reaps
/// it in the background when it does (so it never lingers as a zombie); at normal exit of the
/// parent, daemon children are terminated and the others joined, as in Python.
pub struct Process<R = ()> {
    name: String,
    identity: String,
    daemon: bool,
    method: Option<StartMethod>,
    entry: i64,
    // A Mutex only to make `Process` Sync without asking `A: Sync`.
    args: Option<Mutex<Box<dyn ErasedArgs>>>,
    child: Option<Arc<ChildShared>>,
    life: Life,
    result_taken: bool,
    _result: PhantomData<fn() -> R>,
}

impl<R> fmt::Debug for Process<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Process")
            .field("name", &self.name)
            .field("pid", &self.child.as_ref().map(|c| c.pid))
            .field("daemon", &self.daemon)
            .field("life", &self.life)
            .finish()
    }
}

/// Builds a [`Process`] with a name, daemon flag and start method (Python's keyword arguments).
///
/// # Examples
/// ```
/// use multiprocess::{Process, StartMethod};
///
/// fn work(x: i32) -> i32 { x + 1 }
///
/// let mut p = Process::builder()
///     .name("worker")
///     .daemon(true)
///     .start_method(StartMethod::Fork)
///     .start(work, 41)?;
/// assert_eq!(p.join_result()?, 42);
/// # Ok::<(), multiprocess::ProcessError>(())
/// ```
#[derive(Debug, Default, Clone)]
#[must_use]
pub struct Builder {
    name: Option<String>,
    daemon: Option<bool>,
    method: Option<StartMethod>,
}

impl Builder {
    /// The child's name (default `Process-N`, as in Python).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Whether the child is a daemon (default: the current process's own daemon flag).
    pub fn daemon(mut self, daemon: bool) -> Self {
        self.daemon = Some(daemon);
        self
    }

    /// The start method (default: [`get_start_method`](crate::get_start_method)).
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.method = Some(method);
        self
    }

    /// A process, not yet started, that will run `target(args)`.
    pub fn target<F, A, R>(self, target: F, args: A) -> Process<R>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        let entry = task::entry_offset::<F, A, R>();
        let _ = target;
        let (name, identity, daemon) = {
            let mut g = lock_state();
            g.counter += 1;
            let identity = if g.identity.is_empty() {
                g.counter.to_string()
            } else {
                format!("{}:{}", g.identity, g.counter)
            };
            let name = self.name.unwrap_or_else(|| format!("Process-{identity}"));
            (name, identity, self.daemon.unwrap_or(g.daemon))
        };
        Process {
            name,
            identity,
            daemon,
            method: self.method,
            entry,
            args: Some(Mutex::new(Box::new(args))),
            child: None,
            life: Life::New,
            result_taken: false,
            _result: PhantomData,
        }
    }

    /// A process, not yet started, that runs a [`Run`] value.
    pub fn runnable<T: Run + Send>(self, value: T) -> Process<T::Output> {
        self.target(task::run_target::<T>, value)
    }

    /// Creates and starts a process running `target(args)`.
    ///
    /// # Errors
    /// As [`Process::start`].
    pub fn start<F, A, R>(self, target: F, args: A) -> Result<Process<R>, ProcessError>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        let mut p = self.target(target, args);
        p.start()?;
        Ok(p)
    }
}

impl Process<()> {
    /// A [`Builder`] for a process.
    pub fn builder() -> Builder {
        Builder::default()
    }
}

impl<R: DeserializeOwned> Process<R> {
    /// A process, not yet started, that will run `target(args)` (Python's
    /// `Process(target=..., args=...)`).
    pub fn new<F, A>(target: F, args: A) -> Process<R>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + 'static,
    {
        Builder::default().target(target, args)
    }

    /// A process, not yet started, that runs a [`Run`] value: Python's "subclass `Process`
    /// and override `run`".
    pub fn from_run<T>(value: T) -> Process<R>
    where
        T: Run<Output = R> + Send,
    {
        Builder::default().runnable(value)
    }

    /// Starts the child (Python's `start`). The argument is sent to the child and dropped here,
    /// as Python drops its reference to `args` after starting.
    ///
    /// # Errors
    /// Started already ([`is_misuse`](ProcessError::is_misuse)); the system refused a process
    /// or descriptor; the argument does not serialize; a re-executed child never reached the
    /// crate ([`is_init_missing`](ProcessError::is_init_missing)).
    pub fn start(&mut self) -> Result<(), ProcessError> {
        match self.life {
            Life::Started => return Err(ProcessError::new(Kind::AlreadyStarted)),
            Life::Closed => return Err(ProcessError::new(Kind::Closed)),
            Life::New => {}
        }
        let _ = cleanup();
        let Some(args) = self.args.as_ref() else {
            return Err(ProcessError::new(Kind::AlreadyStarted));
        };
        let args = args.lock().unwrap_or_else(|p| p.into_inner());
        let encoded = args
            .encode()
            .map_err(|e| ProcessError::new(Kind::Encode(e.0)))?;
        let parent_name = lock_state().name.clone();
        let info = ChildInfo {
            name: self.name.clone(),
            identity: self.identity.clone(),
            daemon: self.daemon,
            parent_name,
            authkey: crate::lifecycle::authkey(),
        };
        let method = self.method.unwrap_or_else(context::get_start_method);
        crate::lifecycle::ensure_atexit();
        let launched = context::launch(method, self.entry, &encoded, info)?;
        drop(encoded);
        drop(args);
        self.args = None;
        let child = Arc::new(ChildShared {
            pid: launched.pid,
            name: self.name.clone(),
            daemon: self.daemon,
            method,
            sentinel: launched.sentinel,
            signal_fd: launched.signal_fd,
            status: launched.status,
            exit: launched.exit,
            st: Mutex::new(ChildState::default()),
            pumping: Mutex::new(()),
        });
        register(&child);
        self.child = Some(child);
        self.method = Some(method);
        self.life = Life::Started;
        Ok(())
    }

    /// The started child; `verb` names what was asked, for the error when there is none.
    fn started(&self, verb: &'static str) -> Result<&Arc<ChildShared>, ProcessError> {
        match (self.life, &self.child) {
            (Life::Closed, _) => Err(ProcessError::new(Kind::Closed)),
            (_, Some(c)) => Ok(c),
            (_, None) => Err(ProcessError::new(Kind::NotStarted(verb))),
        }
    }

    /// Waits until the child ends (Python's `join()`).
    ///
    /// # Errors
    /// Not started or closed ([`is_misuse`](ProcessError::is_misuse)); an operating-system
    /// error while waiting.
    pub fn join(&mut self) -> Result<(), ProcessError> {
        let child = Arc::clone(self.started("join")?);
        child.wait(None)?;
        unregister(&child);
        Ok(())
    }

    /// Waits for the child to end without blocking a thread: the future completes when the
    /// child's pidfd becomes readable (Python has no equivalent; `asyncio` users poll
    /// `is_alive`). It works under any executor: a reactor thread of the crate waits on the
    /// descriptors.
    ///
    /// Cancellation: dropping the future before the child ended changes nothing; join again
    /// later.
    ///
    /// # Errors
    /// As [`join`](Self::join).
    ///
    /// # Examples
    /// ```
    /// fn work(n: u64) -> u64 { (1..=n).sum() }
    ///
    /// let mut p = multiprocess::Process::new(work, 100);
    /// p.start()?;
    /// # let block_on = |f| multiprocess::__block_on(f);
    /// block_on(p.join_async())?;
    /// assert_eq!(p.exitcode(), Some(0));
    /// assert_eq!(p.join_result()?, 5050);
    /// # Ok::<(), multiprocess::ProcessError>(())
    /// ```
    pub async fn join_async(&mut self) -> Result<(), ProcessError> {
        let mut interest = crate::sys::reactor::Interest::new();
        std::future::poll_fn(|cx| {
            if self.join_timeout(Duration::ZERO)? {
                return std::task::Poll::Ready(Ok(()));
            }
            let child = Arc::clone(self.started("join")?);
            match child.wait_fds() {
                Some(fds) => interest.arm(&fds, cx.waker())?,
                // The sentinel went away since the look above: the next poll reaps.
                None => cx.waker().wake_by_ref(),
            }
            std::task::Poll::Pending
        })
        .await
    }

    /// Waits at most `timeout` for the child to end (Python's `join(timeout)`); returns whether
    /// it has ended.
    ///
    /// # Errors
    /// As [`join`](Self::join).
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// fn nap(ms: u64) { std::thread::sleep(Duration::from_millis(ms)) }
    ///
    /// let mut p = multiprocess::Process::new(nap, 10_000);
    /// p.start()?;
    /// assert!(!p.join_timeout(Duration::from_millis(50))?, "still sleeping");
    /// p.terminate()?;
    /// assert!(p.join_timeout(Duration::from_secs(10))?);
    /// assert_eq!(p.exitcode(), Some(-15));
    /// # Ok::<(), multiprocess::ProcessError>(())
    /// ```
    pub fn join_timeout(&mut self, timeout: Duration) -> Result<bool, ProcessError> {
        let child = Arc::clone(self.started("join")?);
        let ended = child.wait(Some(timeout))?;
        if ended {
            unregister(&child);
        }
        Ok(ended)
    }

    /// Waits until the child ends and returns the target's return value.
    ///
    /// # Errors
    /// As [`join`](Self::join), and: the child panicked ([`is_panic`](ProcessError::is_panic),
    /// with its message), was killed by a signal ([`signal`](ProcessError::signal)), exited
    /// before returning ([`exit_code`](ProcessError::exit_code)); the value was taken already.
    pub fn join_result(&mut self) -> Result<R, ProcessError> {
        self.join()?;
        if self.result_taken {
            return Err(ProcessError::new(Kind::ResultTaken));
        }
        let child = Arc::clone(self.started("join")?);
        let pid = child.pid;
        let outcome = child.take_outcome();
        self.result_taken = true;
        match outcome {
            Some(Outcome::Value(bytes, fds)) => {
                handle::decode(&bytes, fds).map_err(|e| ProcessError::new(Kind::Decode(e.0)))
            }
            Some(Outcome::Panicked(message)) => {
                Err(ProcessError::new(Kind::Panicked { pid, message }))
            }
            Some(Outcome::Failed(message)) => Err(ProcessError::new(Kind::Failed { pid, message })),
            None => Err(match child.state().exit.clone() {
                Some(Ok(0)) => ProcessError::new(Kind::NoResult { pid }),
                Some(Ok(code)) if code < 0 => {
                    ProcessError::new(Kind::Signaled { pid, signal: -code })
                }
                Some(Ok(code)) => ProcessError::new(Kind::Exited { pid, code }),
                Some(Err(why)) => ProcessError::from(io::Error::other(why)),
                None => ProcessError::new(Kind::NotStarted("join")),
            }),
        }
    }

    /// Whether the child is running (Python's `is_alive()`): false before start and after it
    /// ended.
    pub fn is_alive(&self) -> bool {
        match (&self.child, self.life) {
            (Some(c), Life::Started) => !c.poll(),
            _ => false,
        }
    }

    /// The exit code once the child has ended (Python's `exitcode`): the code it exited with,
    /// `1` after a panic, minus the signal number when a signal killed it; `None` while it runs
    /// or before it started. A fork-server child whose fork server died before it gets
    /// [`EXITCODE_UNKNOWN`] (255, as in Python) once it has ended: only its parent, the dead
    /// server, could have collected its status.
    pub fn exitcode(&self) -> Option<i32> {
        let c = self.child.as_ref()?;
        c.poll();
        c.exitcode()
    }

    /// The child's process id, once started (Python's `pid`).
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.pid)
    }

    /// The same as [`pid`](Self::pid) (Python's `ident`).
    pub fn ident(&self) -> Option<i32> {
        self.pid()
    }

    /// The process's name (Python's `name`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Renames the process; the child sees the name given before `start`.
    pub fn set_name(&mut self, name: impl Into<String>) {
        self.name = name.into();
    }

    /// Whether the process is a daemon (Python's `daemon`).
    pub fn daemon(&self) -> bool {
        self.daemon
    }

    /// Makes the process a daemon or not (Python's `p.daemon = ...`): a daemon child is
    /// terminated when its parent exits, and killed when the parent dies by a signal.
    ///
    /// # Errors
    /// After `start` ([`is_misuse`](ProcessError::is_misuse)).
    pub fn set_daemon(&mut self, daemon: bool) -> Result<(), ProcessError> {
        if self.life != Life::New {
            return Err(ProcessError::new(Kind::DaemonAfterStart));
        }
        self.daemon = daemon;
        Ok(())
    }

    /// The start method, once chosen (at `start` when not set before).
    pub fn start_method(&self) -> Option<StartMethod> {
        self.method
    }

    /// Sends SIGTERM (Python's `terminate()`). Nothing happens when the child has ended.
    ///
    /// # Errors
    /// Not started or closed; an operating-system error.
    pub fn terminate(&self) -> Result<(), ProcessError> {
        Ok(self.started("terminate")?.signal(sysproc::SIGTERM)?)
    }

    /// Sends SIGKILL (Python's `kill()`). Nothing happens when the child has ended.
    ///
    /// # Errors
    /// Not started or closed; an operating-system error.
    pub fn kill(&self) -> Result<(), ProcessError> {
        Ok(self.started("kill")?.signal(sysproc::SIGKILL)?)
    }

    /// Releases the process's resources (Python's `close()`). Later calls other than the
    /// getters of name and daemon fail.
    ///
    /// # Errors
    /// While the child is still running, as in Python (`ValueError`): join or kill it first.
    pub fn close(&mut self) -> Result<(), ProcessError> {
        if let Some(c) = &self.child {
            if !c.poll() {
                return Err(ProcessError::new(Kind::StillRunning));
            }
            unregister(c);
        }
        self.child = None;
        self.args = None;
        self.life = Life::Closed;
        Ok(())
    }
}

impl<R> Drop for Process<R> {
    fn drop(&mut self) {
        let Some(child) = self.child.take() else {
            return;
        };
        if child.poll() {
            unregister(&child);
            return;
        }
        // Reap it when it ends, so it never lingers as a zombie (fork and spawn children) and
        // its descriptors (status and exit channels, pidfd: four for a fork-server child) are
        // closed then, not at the next start.
        let spawned = std::thread::Builder::new()
            .name("multiprocess-reaper".into())
            .spawn(move || {
                let _ = child.wait(None);
                unregister(&child);
            });
        // Without a thread, the registry still holds it: reaped at the next start,
        // active_children() or exit.
        drop(spawned);
    }
}

impl<R> Waitable for Process<R> {
    fn ready_fd(&self) -> Option<BorrowedFd<'_>> {
        let c = self.child.as_ref()?;
        if c.ended() {
            return None;
        }
        c.sentinel.as_ref().map(|fd| fd.as_fd())
    }
}

// ---------------------------------------------------------------------------------------------

/// The calling process, as [`current_process`] describes it.
#[derive(Debug, Clone)]
pub struct CurrentProcess {
    name: String,
    pid: i32,
    daemon: bool,
}

impl CurrentProcess {
    /// This process's authentication key (Python's `current_process().authkey`): 32 random
    /// bytes made in the main process, inherited by every child (under every start method).
    /// [`Listener`](crate::connection::Listener), [`Client`](crate::connection::Client) and
    /// managers use it when no key is given.
    ///
    /// # Examples
    /// ```
    /// let key = multiprocess::current_process().authkey();
    /// assert_eq!(key.len(), 32);
    /// assert_eq!(key, multiprocess::current_process().authkey());
    /// ```
    pub fn authkey(&self) -> Vec<u8> {
        crate::lifecycle::authkey()
    }

    /// Replaces this process's authentication key (Python's `current_process().authkey =
    /// key`); children started afterwards inherit the new one.
    pub fn set_authkey(&self, key: &[u8]) {
        crate::lifecycle::set_authkey(key);
    }
}

impl CurrentProcess {
    /// `"MainProcess"` in the main process, the name its parent gave it in a child.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }
    /// Whether this process is a daemon child.
    pub fn daemon(&self) -> bool {
        self.daemon
    }
}

/// The calling process (Python's `current_process()`).
///
/// # Examples
/// ```
/// assert_eq!(multiprocess::current_process().name(), "MainProcess");
/// ```
pub fn current_process() -> CurrentProcess {
    let g = lock_state();
    CurrentProcess {
        name: g.name.clone(),
        pid: g.pid,
        daemon: g.daemon,
    }
}

/// The process that started this one, as [`parent_process`] describes it.
#[derive(Debug, Clone)]
pub struct ParentProcess {
    pid: i32,
    name: String,
}

impl ParentProcess {
    /// The parent's process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }
    /// The parent's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Whether the parent is still running.
    pub fn is_alive(&self) -> bool {
        match sysproc::pidfd_open(self.pid) {
            Ok(Some(fd)) => {
                !matches!(socket::poll_readable(&[fd.as_fd()], Some(Duration::ZERO)), Ok(v) if v[0])
            }
            _ => false,
        }
    }
}

/// The parent of this process if the crate started it, else `None` (Python's
/// `parent_process()`).
///
/// # Examples
/// ```
/// fn parent_pid(_: ()) -> Option<i32> {
///     multiprocess::parent_process().map(|p| p.pid())
/// }
///
/// assert!(multiprocess::parent_process().is_none());
/// let mut p = multiprocess::Process::new(parent_pid, ());
/// p.start()?;
/// assert_eq!(p.join_result()?, Some(std::process::id() as i32));
/// # Ok::<(), multiprocess::ProcessError>(())
/// ```
pub fn parent_process() -> Option<ParentProcess> {
    let g = lock_state();
    g.parent.as_ref().map(|(pid, name)| ParentProcess {
        pid: *pid,
        name: name.clone(),
    })
}

/// A running child, as [`active_children`] lists it.
#[derive(Debug, Clone)]
pub struct ActiveChild {
    shared: Arc<ChildShared>,
}

impl ActiveChild {
    /// The child's process id.
    pub fn pid(&self) -> i32 {
        self.shared.pid
    }
    /// The child's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }
    /// Whether it is a daemon.
    pub fn daemon(&self) -> bool {
        self.shared.daemon
    }
    /// Whether it is still running.
    pub fn is_alive(&self) -> bool {
        !self.shared.poll()
    }
    /// Sends SIGTERM.
    ///
    /// # Errors
    /// An operating-system error.
    pub fn terminate(&self) -> io::Result<()> {
        self.shared.signal(sysproc::SIGTERM)
    }
    /// Sends SIGKILL.
    ///
    /// # Errors
    /// An operating-system error.
    pub fn kill(&self) -> io::Result<()> {
        self.shared.signal(sysproc::SIGKILL)
    }
}

/// The children of this process that are still running (Python's `active_children()`);
/// ended ones are reaped on the way.
///
/// # Examples
/// ```
/// fn nap(ms: u64) { std::thread::sleep(std::time::Duration::from_millis(ms)) }
///
/// let mut p = multiprocess::Process::new(nap, 10_000);
/// p.start()?;
/// let children = multiprocess::active_children();
/// assert!(children.iter().any(|c| Some(c.pid()) == p.pid()));
/// for c in children {
///     c.kill()?;
/// }
/// p.join()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn active_children() -> Vec<ActiveChild> {
    cleanup()
        .into_iter()
        .map(|shared| ActiveChild { shared })
        .collect()
}

/// The number of CPUs this process may use (its affinity mask and cgroup quota respected).
pub fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
