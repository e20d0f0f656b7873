//! The error of process operations.

use std::fmt;
use std::io;

/// Why a [`Process`](crate::Process) operation failed, or how a child failed.
///
/// The kind is private so that new cases break nothing; ask with the accessors.
///
/// # Examples
/// ```
/// use multiprocess::Process;
///
/// fn boom(_: ()) { panic!("boom") }
///
/// let mut p = Process::new(boom, ());
/// p.start()?;
/// let err = p.join_result().unwrap_err();
/// assert!(err.is_panic());
/// assert_eq!(err.panic_message(), Some("boom"));
/// assert_eq!(p.exitcode(), Some(1));
/// # Ok::<(), multiprocess::ProcessError>(())
/// ```
pub struct ProcessError {
    kind: Kind,
}

/// Shows the message too, as `io::Error` does: `fn main() -> Result<(), ProcessError>` and
/// `unwrap()` print what went wrong, not only a variant's name.
impl fmt::Debug for ProcessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessError")
            .field("kind", &self.kind)
            .field("message", &self.to_string())
            .finish()
    }
}

#[derive(Debug)]
pub(crate) enum Kind {
    AlreadyStarted,
    /// What was asked of the process ("join", "terminate"...).
    NotStarted(&'static str),
    Closed,
    StillRunning,
    DaemonAfterStart,
    ResultTaken,
    Start(io::Error),
    StartMsg(String),
    InitMissing(String),
    Encode(String),
    Decode(String),
    Panicked {
        pid: i32,
        message: String,
    },
    Failed {
        pid: i32,
        message: String,
    },
    Exited {
        pid: i32,
        code: i32,
    },
    Signaled {
        pid: i32,
        signal: i32,
    },
    NoResult {
        pid: i32,
    },
    Io(io::Error),
}

impl ProcessError {
    pub(crate) fn new(kind: Kind) -> Self {
        ProcessError { kind }
    }
    pub(crate) fn start(e: io::Error) -> Self {
        Self::new(Kind::Start(e))
    }
    pub(crate) fn start_msg(m: impl Into<String>) -> Self {
        Self::new(Kind::StartMsg(m.into()))
    }
    pub(crate) fn init_missing(m: impl Into<String>) -> Self {
        Self::new(Kind::InitMissing(m.into()))
    }

    /// The child panicked (the error of `join_result`).
    pub fn is_panic(&self) -> bool {
        matches!(self.kind, Kind::Panicked { .. })
    }

    /// The child's panic message, when it panicked.
    pub fn panic_message(&self) -> Option<&str> {
        match &self.kind {
            Kind::Panicked { message, .. } => Some(message),
            _ => None,
        }
    }

    /// The child's exit code, when it exited with a non-zero code and no result.
    pub fn exit_code(&self) -> Option<i32> {
        match self.kind {
            Kind::Exited { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The signal that killed the child, when one did.
    pub fn signal(&self) -> Option<i32> {
        match self.kind {
            Kind::Signaled { signal, .. } => Some(signal),
            _ => None,
        }
    }

    /// The pid of the child this error is about, when it is about one.
    pub fn pid(&self) -> Option<i32> {
        match self.kind {
            Kind::Panicked { pid, .. }
            | Kind::Failed { pid, .. }
            | Kind::Exited { pid, .. }
            | Kind::Signaled { pid, .. }
            | Kind::NoResult { pid } => Some(pid),
            _ => None,
        }
    }

    /// The call does not fit the process's state: starting twice, joining before start,
    /// setting `daemon` after start, closing a running process, using a closed one.
    pub fn is_misuse(&self) -> bool {
        matches!(
            self.kind,
            Kind::AlreadyStarted
                | Kind::NotStarted(_)
                | Kind::Closed
                | Kind::StillRunning
                | Kind::DaemonAfterStart
                | Kind::ResultTaken
        )
    }

    /// A re-executed child never reached the crate (see [`init`](crate::init)).
    pub fn is_init_missing(&self) -> bool {
        matches!(self.kind, Kind::InitMissing(_))
    }

    /// The child could not be started.
    pub fn is_start_failure(&self) -> bool {
        matches!(
            self.kind,
            Kind::Start(_) | Kind::StartMsg(_) | Kind::InitMissing(_)
        )
    }
}

impl fmt::Display for ProcessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::AlreadyStarted => f.write_str("processes can only be started once"),
            Kind::NotStarted(verb) => write!(f, "can only {verb} a started process"),
            Kind::Closed => f.write_str("process object is closed"),
            Kind::StillRunning => f.write_str(
                "cannot close a process while it is still running; join or kill it first",
            ),
            Kind::DaemonAfterStart => f.write_str("cannot set daemon status of an active process"),
            Kind::ResultTaken => f.write_str("the process's result was already taken"),
            Kind::Start(e) => write!(f, "cannot start the process: {e}"),
            Kind::StartMsg(m) => write!(f, "cannot start the process: {m}"),
            Kind::InitMissing(m) => f.write_str(m),
            Kind::Encode(m) => write!(f, "cannot pass the argument to the process: {m}"),
            Kind::Decode(m) => write!(f, "cannot read the process's result: {m}"),
            Kind::Panicked { pid, message } => write!(f, "process {pid} panicked: {message}"),
            Kind::Failed { pid, message } => {
                write!(f, "process {pid} could not run its target: {message}")
            }
            Kind::Exited { pid, code } => {
                write!(f, "process {pid} exited with code {code} and no result")
            }
            Kind::Signaled { pid, signal } => {
                write!(f, "process {pid} was killed by signal {signal}")
            }
            Kind::NoResult { pid } => write!(
                f,
                "process {pid} exited with code 0 before returning a result"
            ),
            Kind::Io(e) => write!(f, "process i/o error: {e}"),
        }
    }
}

impl std::error::Error for ProcessError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            Kind::Start(e) | Kind::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for ProcessError {
    fn from(e: io::Error) -> Self {
        ProcessError::new(Kind::Io(e))
    }
}

/// Any error of the crate, for `?` in a function that uses several parts of it: every
/// specific error converts into it, and `fn main() -> Result<(), multiprocess::Error>` needs
/// no `Box<dyn Error>`. The specific types stay for matching; `Error` wraps them unchanged
/// (see [`source`](std::error::Error::source)).
///
/// A [`PutError`](crate::PutError) loses the value it carried, and a lock's
/// [`OwnerDied`](crate::OwnerDied) its guard (the lock is released), when they become an
/// `Error`.
///
/// # Examples
/// ```
/// use multiprocess::{Pipe, Pool, Process, Queue};
///
/// fn double(x: u64) -> u64 {
///     x * 2
/// }
///
/// fn main() -> Result<(), multiprocess::Error> {
///     let pool = Pool::new(2)?;
///     let q: Queue<u64> = Queue::new(0)?;
///     q.put(pool.apply(double, 21)?)?;
///     let (a, b) = Pipe::new()?;
///     a.send(&q.get()?)?;
///     let mut p = Process::new(double, b.recv::<u64>()?);
///     p.start()?;
///     assert_eq!(p.join_result()?, 84);
///     Ok(())
/// }
/// # main().unwrap();
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A [`Process`](crate::Process) operation failed, or the child did.
    Process(ProcessError),
    /// A [`Pool`](crate::Pool) operation or task failed.
    Pool(crate::PoolError),
    /// A [`Connection`](crate::Connection) failed.
    Connection(crate::ConnectionError),
    /// A queue `put` failed (the value is dropped).
    Put(crate::PutError<()>),
    /// A queue `get` failed.
    Get(crate::GetError),
    /// `task_done` was called too often.
    TaskDone(crate::TaskDoneError),
    /// A start method or context could not be used.
    Context(crate::ContextError),
    /// A barrier was broken, reset or timed out.
    Barrier(crate::BarrierError),
    /// A lock's previous holder died holding it (the guard was dropped).
    OwnerDied {
        /// The thread that held the lock ([`OwnerDied::previous_owner`](crate::OwnerDied)).
        previous_owner: i32,
    },
    /// A lock was not acquired in time.
    WouldBlock,
    /// A lock or semaphore was released by a process that did not hold it, or too often.
    Release(String),
    /// An index outside a shared array.
    Index(crate::shared_memory::IndexError),
    /// A manager or one of its proxies failed.
    Manager(crate::managers::ManagerError),
    /// An operating-system error (creating shared memory, a pipe, ...).
    Io(io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Process(e) => e.fmt(f),
            Error::Pool(e) => e.fmt(f),
            Error::Connection(e) => e.fmt(f),
            Error::Put(e) => e.fmt(f),
            Error::Get(e) => e.fmt(f),
            Error::TaskDone(e) => e.fmt(f),
            Error::Context(e) => e.fmt(f),
            Error::Barrier(e) => e.fmt(f),
            Error::OwnerDied { previous_owner } => write!(
                f,
                "the previous holder of the lock (thread {previous_owner}) died holding it"
            ),
            Error::WouldBlock => f.write_str("the lock is held by someone else"),
            Error::Release(m) => f.write_str(m),
            Error::Index(e) => e.fmt(f),
            Error::Manager(e) => e.fmt(f),
            Error::Io(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Process(e) => Some(e),
            Error::Pool(e) => Some(e),
            Error::Connection(e) => Some(e),
            Error::Put(e) => Some(e),
            Error::Get(e) => Some(e),
            Error::TaskDone(e) => Some(e),
            Error::Context(e) => Some(e),
            Error::Barrier(e) => Some(e),
            Error::Index(e) => Some(e),
            Error::Manager(e) => Some(e),
            Error::Io(e) => Some(e),
            Error::OwnerDied { .. } | Error::WouldBlock | Error::Release(_) => None,
        }
    }
}

macro_rules! into_error {
    ($($t:ty => $v:ident),* $(,)?) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::$v(e)
            }
        }
    )*};
}

into_error!(
    ProcessError => Process,
    crate::PoolError => Pool,
    crate::ConnectionError => Connection,
    crate::GetError => Get,
    crate::TaskDoneError => TaskDone,
    crate::ContextError => Context,
    crate::BarrierError => Barrier,
    crate::shared_memory::IndexError => Index,
    crate::managers::ManagerError => Manager,
    io::Error => Io,
);

impl<T> From<crate::PutError<T>> for Error {
    fn from(e: crate::PutError<T>) -> Self {
        Error::Put(e.without_value())
    }
}

impl<G> From<crate::OwnerDied<G>> for Error {
    fn from(e: crate::OwnerDied<G>) -> Self {
        Error::OwnerDied {
            previous_owner: e.previous_owner(),
        }
    }
}

impl<G> From<crate::sync::TryLockError<G>> for Error {
    fn from(e: crate::sync::TryLockError<G>) -> Self {
        match e {
            crate::sync::TryLockError::OwnerDied(d) => d.into(),
            crate::sync::TryLockError::WouldBlock => Error::WouldBlock,
        }
    }
}

impl From<crate::sync::ReleaseError> for Error {
    fn from(e: crate::sync::ReleaseError) -> Self {
        Error::Release(e.to_string())
    }
}

impl From<crate::sync::SemaphoreError> for Error {
    fn from(e: crate::sync::SemaphoreError) -> Self {
        Error::Release(e.to_string())
    }
}
