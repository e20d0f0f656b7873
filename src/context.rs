//! Start methods, contexts, and how a child comes to life under each.
//!
//! | method | how | needs |
//! |---|---|---|
//! | [`StartMethod::Fork`] | `fork(2)` of the caller; the child runs the target's entry | nothing |
//! | [`StartMethod::Spawn`] | executes `/proc/self/exe` afresh with a bootstrap socket | the crate's constructor or [`init`] |
//! | [`StartMethod::ForkServer`] | a fresh, single-threaded copy of the program forks children on request | as Spawn |
//!
//! # Diversion
//! A re-executed child must run the target instead of `main`. The crate registers a
//! constructor (the `ctor` crate) that runs before `main` in every process of a program linked
//! with it: in an ordinary start it notes that diversion works and returns at once; in a
//! re-executed child (the `MULTIPROCESS_BOOTSTRAP` environment variable names its bootstrap
//! socket) it reads the bootstrap, runs the target, and exits, so the child's `main` never
//! runs. This makes [`init`] optional; calling it first in `main` is still the belt to the
//! constructor's braces (platforms or link setups where constructors do not run).
//!
//! Caveats of running before `main`: the child's target runs before `main` would have
//! initialized anything it sets up (loggers, globals filled in `main`); other constructors of
//! the program have run, in link order. Rust's standard library works there (allocation,
//! threads, I/O).
//!
//! # Never a fork bomb
//! A re-executed child that never reaches the crate (no constructor, no `init()`) would run
//! `main` again. Three guards: its command line is `<program> --multiprocess-child`, which
//! most programs reject; while its bootstrap is unconsumed, every attempt to start a process
//! fails; and the parent waits for a handshake with a deadline
//! (`MULTIPROCESS_HANDSHAKE_TIMEOUT_MS`, default 10 s), after which it kills the child and
//! reports an error that names the fix.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::connection::{Connection, ConnectionError, Pipe};
use crate::error::ProcessError;
use crate::handle::{self, Encoded};
use crate::lifecycle::{self, ChildInfo};
use crate::sys::{build_id, process as sysproc, socket};
use crate::task::{self, Status};

/// How a child process is started (Python's start methods).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StartMethod {
    /// `fork(2)` the calling process. Fastest; the child starts with a copy of the parent's
    /// memory.
    ///
    /// # Warning
    /// Only the calling thread exists in the child. If other threads held locks at the moment
    /// of the fork (the allocator is safe with glibc; `stdout`'s lock and your own mutexes are
    /// not), the child can deadlock on them. The crate warns once on stderr when it forks a
    /// process that runs threads of its own (not counting the crate's;
    /// [`set_fork_warning`] silences it). Prefer [`ForkServer`](StartMethod::ForkServer)
    /// there.
    ///
    /// The child also inherits every open descriptor of the parent, as in Python (files,
    /// sockets, the other ends of pipes); the other methods pass only the standard streams and
    /// what the crate sends.
    Fork,
    /// Execute a fresh copy of the program, which runs only the target. Slowest to start;
    /// the child shares nothing but what is passed to it: descriptors the parent left
    /// inheritable are closed before the program runs.
    Spawn,
    /// Ask a fork server (a fresh, single-threaded copy of the program, started on first use)
    /// to fork the child. Fast and safe in multi-threaded programs. The server ignores Ctrl-C
    /// (it blocks SIGINT, as Python's ignores it); its children do not.
    ForkServer,
}

impl StartMethod {
    /// Python's name of the method (`"fork"`, `"spawn"`, `"forkserver"`).
    pub fn name(self) -> &'static str {
        match self {
            StartMethod::Fork => "fork",
            StartMethod::Spawn => "spawn",
            StartMethod::ForkServer => "forkserver",
        }
    }

    /// All start methods, in Python's order of `get_all_start_methods()`.
    pub const ALL: [StartMethod; 3] = [
        StartMethod::Fork,
        StartMethod::Spawn,
        StartMethod::ForkServer,
    ];
}

impl fmt::Display for StartMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl std::str::FromStr for StartMethod {
    type Err = ContextError;
    fn from_str(s: &str) -> Result<Self, ContextError> {
        match s {
            "fork" => Ok(StartMethod::Fork),
            "spawn" => Ok(StartMethod::Spawn),
            "forkserver" => Ok(StartMethod::ForkServer),
            other => Err(ContextError(format!("cannot find context for {other:?}"))),
        }
    }
}

/// An error about start methods: an unknown name, or setting the method twice.
#[derive(Debug, Clone)]
pub struct ContextError(String);

impl fmt::Display for ContextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ContextError {}

/// The constructor ran in this process, or `init()` was called: re-executed copies divert.
static DIVERTS: AtomicBool = AtomicBool::new(false);
static CHOSEN: Mutex<Option<StartMethod>> = Mutex::new(None);
/// Set in a re-executed child that has not (yet) consumed its bootstrap.
static UNCONSUMED_BOOTSTRAP: AtomicBool = AtomicBool::new(false);

const BOOTSTRAP_ENV: &str = "MULTIPROCESS_BOOTSTRAP";
const CHILD_ARG: &str = "--multiprocess-child";

#[ctor::ctor(unsafe)]
fn before_main() {
    // `MULTIPROCESS_NO_CONSTRUCTOR=1` simulates a platform where constructors do not run (for
    // testing the guards below, and for debugging); `init()` still diverts.
    if std::env::var_os("MULTIPROCESS_NO_CONSTRUCTOR").is_some() {
        if std::env::var_os(BOOTSTRAP_ENV).is_some() {
            UNCONSUMED_BOOTSTRAP.store(true, Ordering::Relaxed);
        }
        return;
    }
    divert();
}

/// Prepares the crate; call it first in `main` (or use [`#[multiprocess::main]`](crate::main)).
///
/// In a re-executed child started by [`StartMethod::Spawn`] or the fork server, it runs the
/// child's target and exits, never returning; in any other process it returns at once.
/// The crate's constructor does the same before `main`, so calling `init()` is optional on
/// Linux; it costs nothing to call it anyway.
pub fn init() {
    divert();
}

fn divert() {
    // The bootstrap is consumed once; later calls only mark that diversion works.
    if let Some(value) = std::env::var_os(BOOTSTRAP_ENV) {
        // SAFETY (of removing an environment variable): this runs before `main` or first in
        // `main`, before the program starts threads.
        std::env::remove_var(BOOTSTRAP_ENV);
        let value = value.to_string_lossy().into_owned();
        run_bootstrap(&value);
    }
    // Not a child of ours: under an MPI launcher, a worker rank serves the cluster pool here.
    #[cfg(feature = "mpi")]
    crate::pool::divert_world();
    DIVERTS.store(true, Ordering::Release);
}

/// Whether re-executed copies of this program reach the crate.
pub(crate) fn diverts() -> bool {
    DIVERTS.load(Ordering::Acquire)
}

/// Fails when this process is a re-executed child whose bootstrap was never consumed: starting
/// processes from there would multiply the program.
pub(crate) fn check_not_undiverted_child() -> Result<(), ProcessError> {
    if UNCONSUMED_BOOTSTRAP.load(Ordering::Relaxed) || std::env::var_os(BOOTSTRAP_ENV).is_some() {
        UNCONSUMED_BOOTSTRAP.store(true, Ordering::Relaxed);
        return Err(ProcessError::init_missing(
            "this process was started by multiprocess but its main ran: call multiprocess::init() first in main",
        ));
    }
    Ok(())
}

/// Sets the default start method for this process (Python's `set_start_method`).
///
/// # Errors
/// When a different method was already set (as Python's `RuntimeError`).
pub fn set_start_method(method: StartMethod) -> Result<(), ContextError> {
    let mut chosen = CHOSEN.lock().unwrap_or_else(|p| p.into_inner());
    match *chosen {
        Some(m) if m != method => Err(ContextError(format!(
            "the start method was already set to {m}; it cannot change to {method}"
        ))),
        _ => {
            *chosen = Some(method);
            Ok(())
        }
    }
}

/// The default start method: the one set by [`set_start_method`], else
/// [`StartMethod::ForkServer`] when re-executed copies of the program reach the crate (its
/// constructor ran or [`init`] was called), else [`StartMethod::Fork`].
pub fn get_start_method() -> StartMethod {
    if let Some(m) = *CHOSEN.lock().unwrap_or_else(|p| p.into_inner()) {
        return m;
    }
    if diverts() {
        StartMethod::ForkServer
    } else {
        StartMethod::Fork
    }
}

/// The start methods this platform offers (Python's `get_all_start_methods`), the default
/// ([`get_start_method`]) first, as Python documents.
///
/// # Examples
/// ```
/// let all = multiprocess::get_all_start_methods();
/// assert_eq!(all[0], multiprocess::get_start_method());
/// assert_eq!(all.len(), 3);
/// ```
pub fn get_all_start_methods() -> Vec<StartMethod> {
    let default = get_start_method();
    std::iter::once(default)
        .chain(StartMethod::ALL.into_iter().filter(|m| *m != default))
        .collect()
}

/// A start method to create things with (Python's `get_context`): its methods make processes
/// and pipes as the crate's functions do, with this method.
///
/// # Examples
/// ```
/// use multiprocess::{get_context, StartMethod};
///
/// fn double(x: u64) -> u64 { x * 2 }
///
/// let ctx = get_context(StartMethod::Fork);
/// let mut p = ctx.process(double, 21);
/// p.start()?;
/// assert_eq!(p.join_result()?, 42);
/// # Ok::<(), multiprocess::ProcessError>(())
/// ```
pub fn get_context(method: StartMethod) -> Context {
    Context { method }
}

/// A start method bound into a value; see [`get_context`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    method: StartMethod,
}

impl Context {
    /// This context's start method.
    pub fn start_method(&self) -> StartMethod {
        self.method
    }

    /// A process (not yet started) that runs `target(args)` with this context's method.
    pub fn process<F, A, R>(&self, target: F, args: A) -> crate::Process<R>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Serialize + serde::de::DeserializeOwned + Send + 'static,
        R: Serialize + serde::de::DeserializeOwned + 'static,
    {
        crate::Process::builder()
            .start_method(self.method)
            .target(target, args)
    }

    /// A duplex pipe (the same for every method).
    ///
    /// # Errors
    /// As [`Pipe::new`].
    pub fn pipe(&self) -> io::Result<(Connection, Connection)> {
        Pipe::new()
    }
}

/// What the parent sends to a re-executed or fork-server child.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Bootstrap {
    pub(crate) build_id: u64,
    pub(crate) entry: i64,
    pub(crate) info: ChildInfo,
    pub(crate) args: Vec<u8>,
}

/// What a start method hands back to the parent.
#[derive(Debug)]
pub(crate) struct Launched {
    pub(crate) pid: i32,
    /// Readable when the child has ended: a pidfd (fork, spawn) or the fork server's exit
    /// channel. `None` when the child was already gone.
    pub(crate) sentinel: Option<OwnedFd>,
    /// A pidfd to signal the child through (fork server children).
    pub(crate) signal_fd: Option<OwnedFd>,
    /// The parent's end of the child's status channel.
    pub(crate) status: Connection,
    /// The fork server's exit channel (fork server children).
    pub(crate) exit: Option<Connection>,
}

/// Starts a child running `entry` (by offset) on `args`.
pub(crate) fn launch(
    method: StartMethod,
    entry: i64,
    args: &Encoded,
    info: ChildInfo,
) -> Result<Launched, ProcessError> {
    check_not_undiverted_child()?;
    if method != StartMethod::Fork && !diverts() {
        return Err(ProcessError::init_missing(
            "the spawn and forkserver start methods need re-executed copies of the program to reach \
             multiprocess: call multiprocess::init() first in main",
        ));
    }
    match method {
        StartMethod::Fork => launch_fork(entry, args, info),
        StartMethod::Spawn => launch_spawn(entry, args, info),
        StartMethod::ForkServer => launch_forkserver(entry, args, info),
    }
}

fn handshake_timeout() -> Duration {
    std::env::var("MULTIPROCESS_HANDSHAKE_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(Duration::from_secs(10))
}

// ---------------------------------------------------------------------------------------------
// Fork

static WARNED_THREADS: AtomicBool = AtomicBool::new(false);
static FORK_WARNING: AtomicBool = AtomicBool::new(true);

/// Turns off (or on again) the warning printed once on stderr when
/// [`StartMethod::Fork`] forks a process that runs other threads of its own (the crate's
/// threads, a pool's result handler or a reaper, are not counted). For a program that knows
/// its threads hold no lock the child could need.
///
/// # Examples
/// ```
/// multiprocess::context::set_fork_warning(false);
/// ```
pub fn set_fork_warning(enabled: bool) {
    FORK_WARNING.store(enabled, Ordering::Relaxed);
}

fn launch_fork(
    entry_offset: i64,
    args: &Encoded,
    info: ChildInfo,
) -> Result<Launched, ProcessError> {
    // Here, not in the child: a forked child must not take std's hook lock.
    lifecycle::ensure_panic_hook();
    if FORK_WARNING.load(Ordering::Relaxed) && !WARNED_THREADS.swap(true, Ordering::Relaxed) {
        if let Some(n) = sysproc::foreign_thread_count().filter(|n| *n > 1) {
            eprintln!(
                "multiprocess: warning: the fork start method is used in a process with {n} threads; \
                 the child may deadlock on a lock another thread held (use StartMethod::ForkServer, \
                 or multiprocess::context::set_fork_warning(false) to silence this)"
            );
        }
    }
    // SAFETY: the offset was made by `entry_offset` in this very process.
    #[allow(unsafe_code)]
    let entry = unsafe { task::entry_at(entry_offset) };
    crate::sys::before_fork();
    let (parent_end, child_end) = socket::socketpair().map_err(ProcessError::start)?;
    let parent_pid = sysproc::getpid();
    // Hold stdout's and stderr's locks across the fork, flushed: otherwise another thread
    // printing at that moment leaves them locked forever in the child, whose first print, panic
    // message or exit flush would then deadlock; and the child would repeat output the parent
    // had buffered.
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    {
        use std::io::Write;
        let _ = out.flush();
        let _ = err.flush();
    }
    // Hold every global lock of the crate across the fork too, so that the child finds them
    // consistent and resets them (lock order: descriptor births, SERVER, the process registry,
    // tracked descriptors, the named-shared-memory ledger).
    let births = handle::lock_births_for_fork();
    let mut server_slot = SERVER.lock().unwrap_or_else(|p| p.into_inner());
    let mut state = lifecycle::lock_state();
    let tracked = handle::lock_tracked();
    let ledger = crate::shared_memory::lock_ledger_for_fork();
    // SAFETY: the child below runs only the target's entry and exits with `_exit`; it never
    // returns into the caller's frames. The crate's global state is reset in the child under
    // the locks held across the fork.
    #[allow(unsafe_code)]
    let forked = unsafe { sysproc::fork() };
    if let Ok(sysproc::Forked::Child) = forked {
        // The server and the children belong to the parent.
        if let Some(server) = server_slot.take() {
            std::mem::forget(server);
        }
        lifecycle::reset_after_fork(&mut state);
    }
    drop(ledger);
    drop(tracked);
    drop(state);
    drop(server_slot);
    drop(births);
    drop(err);
    drop(out);
    match forked {
        Err(e) => Err(ProcessError::start(e)),
        Ok(sysproc::Forked::Child) => {
            drop(parent_end);
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                if info.daemon && !sysproc::die_with_parent(parent_pid) {
                    return 1;
                }
                let fds: Vec<OwnedFd> = match args
                    .fds
                    .iter()
                    .map(|fd| {
                        // SAFETY: the descriptors were open in the parent at the fork (their
                        // owner is borrowed by `start`), so they are open here.
                        #[allow(unsafe_code)]
                        let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(*fd) };
                        socket::dup(b)
                    })
                    .collect()
                {
                    Ok(fds) => fds,
                    Err(_) => return 1,
                };
                // The parent's handles are the parent's (see `handle::TrackedFd`).
                handle::neutralize_tracked_after_fork(&mut handle::lock_tracked());
                let status = Connection::from_fd(child_end, true, true);
                lifecycle::become_child(info, parent_pid);
                entry(&args.bytes, fds, &status)
            }));
            lifecycle::exit_child(outcome.unwrap_or(1), true)
        }
        Ok(sysproc::Forked::Parent(pid)) => {
            drop(child_end);
            let sentinel = sysproc::pidfd_open(pid).map_err(ProcessError::start)?;
            Ok(Launched {
                pid,
                sentinel,
                signal_fd: None,
                status: Connection::from_fd(parent_end, true, true),
                exit: None,
            })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Spawn

fn launch_spawn(entry: i64, args: &Encoded, info: ChildInfo) -> Result<Launched, ProcessError> {
    let boot = Bootstrap {
        build_id: build_id::build_id(),
        entry,
        info,
        args: args.bytes.clone(),
    };
    let (parent_end, pid) = exec_self("spawn").map_err(ProcessError::start)?;
    // SAFETY: the argument value is borrowed by `start` for this whole call.
    #[allow(unsafe_code)]
    let fds = unsafe { args.borrowed_fds() };
    let boot_bytes = handle::encode(&boot).map_err(|e| ProcessError::start_msg(e.0))?;
    if let Err(e) = parent_end.send_encoded(&boot_bytes.bytes, &fds) {
        return Err(reap_failed_start(
            pid,
            &format!("cannot send the bootstrap: {e}"),
        ));
    }
    wait_started(&parent_end, pid)?;
    let sentinel = sysproc::pidfd_open(pid).map_err(ProcessError::start)?;
    Ok(Launched {
        pid,
        sentinel,
        signal_fd: None,
        status: parent_end,
        exit: None,
    })
}

/// Executes a fresh copy of this program whose bootstrap socket is `<role>:<fd>`; returns the
/// parent's end of that socket and the child's pid.
fn exec_self(role: &str) -> io::Result<(Connection, i32)> {
    let (parent_end, child_end) = socket::socketpair()?;
    // Above the standard streams (one of them may be closed in this process), which the
    // child keeps, and where its bootstrap check expects it.
    let child_end = if child_end.as_raw_fd() <= 2 {
        rustix::io::fcntl_dupfd_cloexec(&child_end, 3)?
    } else {
        child_end
    };
    let child_fd = child_end.as_raw_fd();
    let argv0 = std::env::args_os()
        .next()
        .unwrap_or_else(|| "multiprocess-child".into());
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.arg0(argv0)
        .arg(CHILD_ARG)
        .env(BOOTSTRAP_ENV, format!("{role}:{child_fd}"));
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
    // syscalls (fcntl, prctl, getppid).
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(move || {
            // SAFETY: `child_fd` is open in the parent, so in this copy of it.
            let fd = std::os::fd::BorrowedFd::borrow_raw(child_fd);
            socket::clear_cloexec(fd)?;
            // Only stdio and the bootstrap socket reach the new program: descriptors the
            // parent left inheritable (not close-on-exec) do not leak into it.
            sysproc::close_other_fds(child_fd);

            Ok(())
        })
    };
    let child = cmd.spawn()?;
    let pid = child.id() as i32;
    // Dropping a std Child neither waits nor kills; the crate reaps `pid` itself.
    drop(child);
    drop(child_end);
    Ok((Connection::from_fd(parent_end, true, true), pid))
}

/// Waits for a re-executed child's handshake.
fn wait_started(conn: &Connection, pid: i32) -> Result<(), ProcessError> {
    let timeout = handshake_timeout();
    match conn.recv_timeout::<Status>(timeout) {
        Ok(Status::Started { .. }) => Ok(()),
        Ok(Status::Failed(msg)) => Err(reap_failed_start(pid, &msg)),
        Ok(other) => Err(reap_failed_start(
            pid,
            &format!("unexpected handshake {other:?}"),
        )),
        Err(ConnectionError::Timeout) => {
            let _ = sysproc::kill(pid, sysproc::SIGKILL);
            let _ = sysproc::waitpid(pid, false);
            Err(ProcessError::init_missing(format!(
                "spawned child {pid} did not reach multiprocess within {timeout:?} and was killed: \
                 call multiprocess::init() first in main"
            )))
        }
        Err(_) => {
            let status = sysproc::waitpid(pid, false).ok().flatten();
            let code = status.map(sysproc::exitcode_of);
            Err(ProcessError::init_missing(format!(
                "spawned child {pid} exited (code {code:?}) before reaching multiprocess: \
                 call multiprocess::init() first in main"
            )))
        }
    }
}

fn reap_failed_start(pid: i32, msg: &str) -> ProcessError {
    let _ = sysproc::kill(pid, sysproc::SIGKILL);
    let _ = sysproc::waitpid(pid, false);
    ProcessError::start_msg(msg.to_string())
}

// ---------------------------------------------------------------------------------------------
// Fork server: the client side

/// The client's connection to its fork server.
#[derive(Debug)]
pub(crate) struct ForkServer {
    pid: i32,
    ctl: Connection,
    lock: Mutex<()>,
}

/// Requests to the fork server.
#[derive(Debug, Serialize, Deserialize)]
enum Request {
    /// Fork a child; the frame's descriptors are `[status, exit, args...]`.
    Spawn(Bootstrap),
}

/// The fork server's answers.
#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    Spawned(i32),
    Failed(String),
}

impl ForkServer {
    fn start() -> Result<ForkServer, ProcessError> {
        // Not a daemon of the calling thread: the server notices its client's exit through
        // end of file on `ctl`, which works whatever thread started it.
        let (ctl, pid) = exec_self("forkserver").map_err(ProcessError::start)?;
        wait_started(&ctl, pid)?;
        Ok(ForkServer {
            pid,
            ctl,
            lock: Mutex::new(()),
        })
    }

    fn request(
        &self,
        boot: &Bootstrap,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> Result<i32, ProcessError> {
        let enc = handle::encode(&Request::Spawn(Bootstrap {
            build_id: boot.build_id,
            entry: boot.entry,
            info: boot.info.clone(),
            args: boot.args.clone(),
        }))
        .map_err(|e| ProcessError::start_msg(e.0))?;
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.ctl.send_encoded(&enc.bytes, fds).map_err(|e| {
            ProcessError::start_msg(format!("the fork server (pid {}) is gone: {e}", self.pid))
        })?;
        match self.ctl.recv::<Reply>() {
            Ok(Reply::Spawned(pid)) => Ok(pid),
            Ok(Reply::Failed(msg)) => Err(ProcessError::start_msg(msg)),
            Err(e) => Err(ProcessError::start_msg(format!(
                "the fork server (pid {}) is gone: {e}",
                self.pid
            ))),
        }
    }
}

impl Drop for ForkServer {
    fn drop(&mut self) {
        // Closing `ctl` tells the server to exit; reap it only if it is our child.
        let _ = shutdown_ctl(&self.ctl);
        if let Ok(Some(fd)) = sysproc::pidfd_open(self.pid) {
            let exited = socket::poll_readable(&[fd.as_fd()], Some(Duration::from_secs(5)));
            if !matches!(exited, Ok(v) if v[0]) {
                let _ = sysproc::pidfd_signal(fd.as_fd(), sysproc::SIGKILL);
            }
        }
        let _ = sysproc::waitpid(self.pid, false);
    }
}

fn shutdown_ctl(ctl: &Connection) -> io::Result<()> {
    socket::shutdown(ctl.as_fd(), false)
}

static SERVER: Mutex<Option<Arc<ForkServer>>> = Mutex::new(None);
/// Shuts the fork server down (at exit).
pub(crate) fn stop_server() {
    let server = SERVER.lock().unwrap_or_else(|p| p.into_inner()).take();
    drop(server);
}

fn server() -> Result<Arc<ForkServer>, ProcessError> {
    let mut slot = SERVER.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(s) = slot.as_ref() {
        if s.pid_alive() {
            return Ok(Arc::clone(s));
        }
    }
    let s = Arc::new(ForkServer::start()?);
    lifecycle::set_exit_finisher(stop_server);
    lifecycle::ensure_atexit();
    *slot = Some(Arc::clone(&s));
    Ok(s)
}

impl ForkServer {
    /// Whether the server still answers: `ctl` is readable only at end of file once no
    /// request is in flight. The request lock is held for the look, or a reply that another
    /// thread is about to read would pass for the server's death, and replacing a live server
    /// would close the exit channels of the children it started (their `join` would fail).
    fn pid_alive(&self) -> bool {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        !matches!(socket::poll_readable(&[self.ctl.as_fd()], Some(Duration::ZERO)), Ok(v) if v[0])
    }
}

fn launch_forkserver(
    entry: i64,
    args: &Encoded,
    info: ChildInfo,
) -> Result<Launched, ProcessError> {
    let server = server()?;
    let (status_parent, status_child) = socket::socketpair().map_err(ProcessError::start)?;
    let (exit_parent, exit_server) = socket::socketpair().map_err(ProcessError::start)?;
    let boot = Bootstrap {
        build_id: build_id::build_id(),
        entry,
        info,
        args: args.bytes.clone(),
    };
    let mut fds = vec![status_child.as_fd(), exit_server.as_fd()];
    // SAFETY: the argument value is borrowed by `start` for this whole call.
    #[allow(unsafe_code)]
    fds.extend(unsafe { args.borrowed_fds() });
    let pid = server.request(&boot, &fds)?;
    drop(fds);
    drop((status_child, exit_server));
    let exit = Connection::from_fd(exit_parent, true, false);
    let signal_fd = sysproc::pidfd_open(pid).ok().flatten();
    let sentinel = exit
        .as_fd()
        .try_clone_to_owned()
        .map_err(ProcessError::start)?;
    Ok(Launched {
        pid,
        sentinel: Some(sentinel),
        signal_fd,
        status: Connection::from_fd(status_parent, true, true),
        exit: Some(exit),
    })
}

// ---------------------------------------------------------------------------------------------
// The child side of Spawn and the fork server

fn run_bootstrap(value: &str) -> ! {
    UNCONSUMED_BOOTSTRAP.store(false, Ordering::Relaxed);
    let (role, fd) = match parse_bootstrap(value) {
        Ok(parsed) => parsed,
        Err(why) => {
            eprintln!(
                "multiprocess: this process was started with {BOOTSTRAP_ENV}={value:?}, which \
                 is not a bootstrap of this crate ({why}); the variable is set only by \
                 multiprocess for the children it starts. Exiting with status \
                 {BAD_BOOTSTRAP_EXIT}."
            );
            sysproc::exit_now(BAD_BOOTSTRAP_EXIT);
        }
    };
    let owned = match socket::adopt_inherited_socket(fd) {
        Ok(fd) => fd,
        Err(why) => {
            eprintln!(
                "multiprocess: {BOOTSTRAP_ENV}={value:?} does not name this process's \
                 bootstrap socket: {why}. Exiting with status {BAD_BOOTSTRAP_EXIT}."
            );
            sysproc::exit_now(BAD_BOOTSTRAP_EXIT);
        }
    };
    // Keep it from leaking into our own children's exec.
    let owned = match owned.try_clone() {
        Ok(dup) => dup,
        Err(_) => sysproc::exit_now(1),
    };
    let conn = Connection::from_fd(owned, true, true);
    match role {
        Role::Spawn => spawn_child_main(conn),
        Role::ForkServer => forkserver_main(conn),
    }
}

/// The exit status of a process started with a `MULTIPROCESS_BOOTSTRAP` that is not one of
/// the crate's (malformed, or naming a descriptor that is not a bootstrap socket).
pub const BAD_BOOTSTRAP_EXIT: i32 = 121;

enum Role {
    Spawn,
    ForkServer,
}

/// `spawn:<fd>` or `forkserver:<fd>`, with a descriptor number in decimal.
fn parse_bootstrap(value: &str) -> Result<(Role, i32), String> {
    let (role, fd) = value
        .split_once(':')
        .ok_or("expected ROLE:FD, such as spawn:5")?;
    let role = match role {
        "spawn" => Role::Spawn,
        "forkserver" => Role::ForkServer,
        _ => return Err(format!("unknown role {role:?}")),
    };
    if fd.is_empty() || !fd.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{fd:?} is not a descriptor number"));
    }
    let fd = fd
        .parse::<i32>()
        .map_err(|_| format!("{fd:?} is not a descriptor number"))?;
    Ok((role, fd))
}

fn spawn_child_main(conn: Connection) -> ! {
    let (bytes, fds) = match conn.recv_raw_timeout(handshake_timeout()) {
        Ok(frame) => frame,
        Err(e) => {
            eprintln!("multiprocess: spawned child got no bootstrap: {e}");
            sysproc::exit_now(1)
        }
    };
    let boot: Bootstrap = match handle::decode(&bytes, Vec::new()) {
        Ok(b) => b,
        Err(e) => {
            let _ = conn.send(&Status::Failed(format!("malformed bootstrap: {e}")));
            sysproc::exit_now(1)
        }
    };
    if let Err(msg) = check_build(&boot) {
        let _ = conn.send(&Status::Failed(msg));
        sysproc::exit_now(1);
    }
    // The process that made the bootstrap socket is the parent, even if it has died and
    // this one was handed to a reaper meanwhile.
    let parent_pid = socket::peer_pid(conn.as_fd()).unwrap_or_else(sysproc::getppid);
    if boot.info.daemon && !sysproc::die_with_parent(parent_pid) {
        sysproc::exit_now(1);
    }
    let _ = conn.send(&Status::Started {
        pid: sysproc::getpid(),
    });
    DIVERTS.store(true, Ordering::Release);
    // SAFETY: the build id matched, so the offset names an entry in this same executable.
    #[allow(unsafe_code)]
    let entry = unsafe { task::entry_at(boot.entry) };
    lifecycle::become_child(boot.info, parent_pid);
    let code = entry(&boot.args, fds, &conn);
    drop(conn);
    lifecycle::exit_child(code, false)
}

fn check_build(boot: &Bootstrap) -> Result<(), String> {
    let mine = build_id::build_id();
    if boot.build_id != mine {
        return Err(format!(
            "the child runs a different binary than its parent (build id {mine:016x}, parent's \
             {:016x}): the executable was replaced; restart the program",
            boot.build_id
        ));
    }
    Ok(())
}

fn forkserver_main(ctl: Connection) -> ! {
    DIVERTS.store(true, Ordering::Release);
    let client_pid = sysproc::getppid();
    let signals = match sysproc::ChildSignals::new() {
        Ok(s) => s,
        Err(e) => {
            let _ = ctl.send(&Status::Failed(format!(
                "fork server cannot watch its children: {e}"
            )));
            sysproc::exit_now(1)
        }
    };
    // After `signals` saved the mask its children get back (see `block_sigint`).
    sysproc::block_sigint(true);
    if ctl
        .send(&Status::Started {
            pid: sysproc::getpid(),
        })
        .is_err()
    {
        sysproc::exit_now(0);
    }
    // pid -> (exit channel, daemon)
    let mut children: std::collections::HashMap<i32, (Connection, bool)> = Default::default();
    loop {
        let ready = match socket::poll_readable(&[ctl.as_fd(), signals.as_fd()], None) {
            Ok(r) => r,
            Err(_) => continue,
        };
        if ready[1] {
            signals.drain();
            while let Some((pid, raw)) = sysproc::wait_any_nohang() {
                if let Some((exit, _)) = children.remove(&pid) {
                    let _ = exit.send(&Status::Exited(raw));
                }
            }
        }
        if !ready[0] {
            continue;
        }
        let (bytes, mut fds) = match ctl.recv_raw_timeout(Duration::from_secs(60)) {
            Ok(frame) => frame,
            Err(_) => {
                // The client is gone (or broke the protocol): its daemon children go with it.
                for (pid, (_, daemon)) in &children {
                    if *daemon {
                        let _ = sysproc::kill(*pid, sysproc::SIGKILL);
                    }
                }
                sysproc::exit_now(0)
            }
        };
        let boot = match handle::decode::<Request>(&bytes, Vec::new()) {
            Ok(Request::Spawn(boot)) if fds.len() >= 2 => boot,
            Ok(_) => {
                let _ = ctl.send(&Reply::Failed("malformed fork server request".into()));
                continue;
            }
            Err(e) => {
                let _ = ctl.send(&Reply::Failed(format!(
                    "malformed fork server request: {e}"
                )));
                continue;
            }
        };
        if let Err(msg) = check_build(&boot) {
            let _ = ctl.send(&Reply::Failed(msg));
            continue;
        }
        let args_fds = fds.split_off(2);
        let exit_fd = fds.pop();
        let status_fd = fds.pop();
        let (Some(status_fd), Some(exit_fd)) = (status_fd, exit_fd) else {
            continue;
        };
        // SAFETY: the fork server is single-threaded (it was diverted before `main`), so the
        // child is a complete copy; it runs the entry and exits.
        #[allow(unsafe_code)]
        match unsafe { sysproc::fork() } {
            Ok(sysproc::Forked::Child) => {
                signals.restore_mask();
                sysproc::block_sigint(false);
                drop(signals);
                drop(ctl);
                drop(children);
                drop(exit_fd);
                if boot.info.daemon && !sysproc::die_with_parent(sysproc::getppid()) {
                    sysproc::exit_now(1);
                }
                let status = Connection::from_fd(status_fd, true, true);
                // SAFETY: the build id matched.
                #[allow(unsafe_code)]
                let entry = unsafe { task::entry_at(boot.entry) };
                lifecycle::become_child(boot.info, client_pid);
                let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    entry(&boot.args, args_fds, &status)
                }))
                .unwrap_or(1);
                drop(status);
                lifecycle::exit_child(code, false)
            }
            Ok(sysproc::Forked::Parent(pid)) => {
                drop(status_fd);
                drop(args_fds);
                children.insert(
                    pid,
                    (Connection::from_fd(exit_fd, false, true), boot.info.daemon),
                );
                let _ = ctl.send(&Reply::Spawned(pid));
            }
            Err(e) => {
                let _ = ctl.send(&Reply::Failed(format!("fork server cannot fork: {e}")));
            }
        }
    }
}
