//! The error of pool operations and of the tasks a pool runs.

use std::fmt;

/// Why a pool task, or a pool operation, failed.
///
/// The kind is private so that new cases break nothing; ask with the accessors. A task's
/// error says which item of a `map` it belongs to ([`item`](Self::item)), which worker ran it
/// ([`pid`](Self::pid)), and how it failed: a panic ([`is_panic`](Self::is_panic) with
/// [`panic_message`](Self::panic_message)) or the death of its worker
/// ([`is_worker_lost`](Self::is_worker_lost) with [`signal`](Self::signal) or
/// [`exit_code`](Self::exit_code)).
///
/// # Examples
/// ```
/// use multiprocess::Pool;
///
/// fn check(x: i32) -> i32 {
///     assert!(x != 3, "three is not allowed");
///     x
/// }
///
/// let pool = Pool::new(2)?;
/// let err = pool.map(check, [1, 2, 3, 4]).unwrap_err();
/// assert!(err.is_panic());
/// assert_eq!(err.item(), Some(2));
/// assert_eq!(err.panic_message(), Some("three is not allowed"));
/// # Ok::<(), multiprocess::PoolError>(())
/// ```
#[derive(Clone)]
pub struct PoolError {
    kind: Kind,
    item: Option<usize>,
    count: usize,
}

#[derive(Debug, Clone)]
pub(crate) enum Kind {
    /// The task panicked in worker `pid`.
    Panicked { pid: i32, message: String },
    /// The worker could not run the task (its argument did not decode, say).
    Failed { pid: i32, message: String },
    /// The worker died while running the task: `code` is its exit code, or minus a signal.
    WorkerLost { pid: i32, code: i32 },
    /// The initializer failed (panicked, or its worker died); the pool is broken.
    Initializer { pid: i32, message: String },
    /// A worker could not be started.
    Start(String),
    /// The pool was closed or terminated before the task was submitted.
    Closed,
    /// The pool was terminated before the task finished.
    Terminated,
    /// `get_timeout`/`next_timeout` gave up; the task goes on.
    Timeout,
    /// The task's argument does not serialize.
    Encode(String),
    /// The task's result does not decode.
    Decode(String),
    /// The result was already taken by an earlier `get`.
    Taken,
    /// A bad argument (chunksize 0, no processes, too many handles in one task).
    Invalid(String),
}

/// What kind of failure a [`PoolError`] is ([`PoolError::kind`]), to match on.
///
/// Non-exhaustive: new kinds may come, so a `match` needs a `_` arm.
///
/// # Examples
/// ```
/// use multiprocess::{Pool, PoolErrorKind};
///
/// fn check(x: i32) -> i32 {
///     assert!(x != 3, "three is not allowed");
///     x
/// }
///
/// let pool = Pool::new(2)?;
/// match pool.apply(check, 3) {
///     Err(e) if e.kind() == PoolErrorKind::Panicked => println!("task panicked: {e}"),
///     Err(e) => return Err(e),
///     Ok(v) => println!("got {v}"),
/// }
/// # Ok::<(), multiprocess::PoolError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PoolErrorKind {
    /// The task panicked ([`PoolError::panic_message`]).
    Panicked,
    /// The worker running the task died ([`PoolError::signal`], [`PoolError::exit_code`]).
    WorkerLost,
    /// The task's argument could not be serialized here, or its result in the worker.
    Encode,
    /// The task's argument did not decode in the worker, or its result did not decode here
    /// (a type mismatch, or a shape that needs [`Dynamic`](crate::Dynamic)).
    Decode,
    /// The pool's initializer failed: the pool is broken.
    Initializer,
    /// A worker could not be started (a system limit, say).
    Start,
    /// The pool was closed or terminated before the task was submitted.
    Closed,
    /// The pool was terminated before the task finished.
    Terminated,
    /// `get_timeout` or `next_timeout` gave up waiting; the task goes on.
    Timeout,
    /// The call does not fit: chunksize 0, zero processes, a result taken twice, `join`
    /// before `close`.
    Misuse,
}

impl PoolError {
    /// What kind of failure this is.
    pub fn kind(&self) -> PoolErrorKind {
        match self.kind {
            Kind::Panicked { .. } => PoolErrorKind::Panicked,
            Kind::Failed { ref message, .. } if message.starts_with("cannot decode") => {
                PoolErrorKind::Decode
            }
            Kind::Failed { .. } => PoolErrorKind::Encode,
            Kind::WorkerLost { .. } => PoolErrorKind::WorkerLost,
            Kind::Initializer { .. } => PoolErrorKind::Initializer,
            Kind::Start(_) => PoolErrorKind::Start,
            Kind::Closed => PoolErrorKind::Closed,
            Kind::Terminated => PoolErrorKind::Terminated,
            Kind::Timeout => PoolErrorKind::Timeout,
            Kind::Encode(_) => PoolErrorKind::Encode,
            Kind::Decode(_) => PoolErrorKind::Decode,
            Kind::Taken | Kind::Invalid(_) => PoolErrorKind::Misuse,
        }
    }

    pub(crate) fn new(kind: Kind) -> Self {
        PoolError {
            kind,
            item: None,
            count: 1,
        }
    }

    /// The same error, about items `start..start + count` of the call.
    pub(crate) fn at(mut self, start: usize, count: usize) -> Self {
        self.item = Some(start);
        self.count = count.max(1);
        self
    }

    /// The same error, about no particular item.
    pub(crate) fn without_item(mut self) -> Self {
        self.item = None;
        self
    }

    /// The task panicked; see [`panic_message`](Self::panic_message).
    pub fn is_panic(&self) -> bool {
        matches!(self.kind, Kind::Panicked { .. })
    }

    /// The task's panic message, when it panicked (or the initializer's, when it did).
    pub fn panic_message(&self) -> Option<&str> {
        match &self.kind {
            Kind::Panicked { message, .. } => Some(message),
            Kind::Initializer { message, .. } => Some(message),
            _ => None,
        }
    }

    /// The worker running the task died (killed by a signal, aborted, or exited inside the
    /// task); see [`pid`](Self::pid), [`signal`](Self::signal), [`exit_code`](Self::exit_code).
    /// The pool replaced it and goes on.
    pub fn is_worker_lost(&self) -> bool {
        matches!(self.kind, Kind::WorkerLost { .. })
    }

    /// The signal that killed the worker, when one did.
    pub fn signal(&self) -> Option<i32> {
        match self.kind {
            Kind::WorkerLost { code, .. } if code < 0 => Some(-code),
            _ => None,
        }
    }

    /// The exit code of a worker that exited inside the task.
    pub fn exit_code(&self) -> Option<i32> {
        match self.kind {
            Kind::WorkerLost { code, .. } if code >= 0 => Some(code),
            _ => None,
        }
    }

    /// The pid of the worker the error is about, when it is about one.
    pub fn pid(&self) -> Option<i32> {
        match self.kind {
            Kind::Panicked { pid, .. }
            | Kind::Failed { pid, .. }
            | Kind::WorkerLost { pid, .. }
            | Kind::Initializer { pid, .. } => Some(pid),
            _ => None,
        }
    }

    /// The index (in the call's input order) of the item this error is about: for `map`, the
    /// first item that failed. When a worker died running a chunk of several items, every item
    /// of the chunk fails and this is the chunk's first.
    pub fn item(&self) -> Option<usize> {
        self.item
    }

    /// The initializer failed, so the pool is broken: the pool was not built, or (for a
    /// replacement worker) every pending task fails with this error.
    pub fn is_initializer_failure(&self) -> bool {
        matches!(self.kind, Kind::Initializer { .. })
    }

    /// `get_timeout` or `next_timeout` gave up waiting; the task goes on.
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, Kind::Timeout)
    }

    /// The task was submitted to a pool that was closed or terminated.
    pub fn is_closed(&self) -> bool {
        matches!(self.kind, Kind::Closed)
    }

    /// The pool was terminated before the task finished.
    pub fn is_terminated(&self) -> bool {
        matches!(self.kind, Kind::Terminated)
    }

    /// The call does not fit: chunksize 0, zero processes, a result taken twice, `join`
    /// before `close`.
    pub fn is_misuse(&self) -> bool {
        matches!(self.kind, Kind::Taken | Kind::Invalid(_))
    }
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.item, self.count) {
            (Some(i), 1) => write!(f, "item {i}: ")?,
            (Some(i), n) => write!(f, "items {i}..{}: ", i + n)?,
            (None, _) => {}
        }
        match &self.kind {
            Kind::Panicked { pid, message } => {
                write!(f, "task panicked in pool worker {pid}: {message}")
            }
            Kind::Failed { pid, message } => {
                write!(f, "pool worker {pid} could not run the task: {message}")
            }
            Kind::WorkerLost { pid, code } if *code < 0 => write!(
                f,
                "pool worker {pid} was killed by signal {} while running the task",
                -code
            ),
            Kind::WorkerLost { pid, code } => write!(
                f,
                "pool worker {pid} exited with code {code} while running the task"
            ),
            Kind::Initializer { pid, message } => {
                write!(
                    f,
                    "the pool's initializer failed in worker {pid}: {message}"
                )
            }
            Kind::Start(m) => write!(f, "cannot start a pool worker: {m}"),
            Kind::Closed => f.write_str("the pool is closed: it takes no new tasks"),
            Kind::Terminated => f.write_str("the pool was terminated before the task finished"),
            Kind::Timeout => f.write_str("timed out waiting for the result"),
            Kind::Encode(m) => write!(f, "cannot pass the argument to the pool: {m}"),
            Kind::Decode(m) => write!(f, "cannot read the task's result: {m}"),
            Kind::Taken => f.write_str(
                "the result was already taken by an earlier get(); to read it more than once \
                 (as Python's get() can), use get_ref()",
            ),
            Kind::Invalid(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for PoolError {}

/// Shows the message too (as `io::Error` does), so `unwrap()` says what went wrong.
impl std::fmt::Debug for PoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolError")
            .field("kind", &self.kind)
            .field("message", &self.to_string())
            .finish()
    }
}
