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
