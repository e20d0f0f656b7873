//! `Queue`, `SimpleQueue` and `JoinableQueue`: many producer and many consumer processes, at
//! shared-memory speed.
//!
//! A queue is a ring of bytes in shared memory (a memfd mapped by every process that holds the
//! queue) with futex waits; see [`ring`](self) for its layout and protocols. `put` serializes
//! the value in the caller's thread (the crate's wire format, as [`Connection`](crate::Connection) does) and
//! copies it into the ring; there is no feeder thread, so a serialization error reaches the
//! caller and a process that put data can always exit. Messages larger than a quarter of the
//! ring stream through it in chunks. Handles inside a message (a [`Connection`], another
//! queue, a [`SharedFd`](crate::handle::SharedFd)) travel too: their descriptors go over a
//! Unix datagram socket owned by the queue, matched to the message by a sequence number.
//!
//! A queue is itself a handle: pass it to a child as (part of) the target's argument under any
//! start method, send it through a `Connection` or through another queue, or make it part of a
//! pool task's argument.
//!
//! # Robustness
//! A process killed at any point of `put` or `get` leaves a queue that the others keep using.
//! Each side's lock word holds its owner's identity (thread id and start time, as
//! [`Lock`](crate::Lock)); a waiter checks every 100 ms whether the owner is alive, and takes
//! a dead owner's lock over. What was published before the death is whole; a message whose
//! producer died in the middle of writing it, or whose consumer died in the middle of reading
//! it, is dropped as a whole and counted by [`Queue::dropped`]. No call returns an error for
//! it: the next message is delivered as usual.
//!
//! # Trust
//! Every process holding the queue can write its shared memory. Positions, record headers,
//! lengths, flags and lock words are checked before they are used; a value no correct process
//! writes fails the queue for every process ([`GetError::Corrupt`], [`PutError::Corrupt`]),
//! never an access outside the queue's memory, a panic or a hang.
//!
//! [`Connection`]: crate::Connection

mod ring;
mod small;

use std::cell::Cell;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::handle::{self, TrackedFd};
use crate::region::Region;
use crate::sys::ipc;
use crate::wire;
use ring::{Fail, Got, Ring, Wait};
use small::Small;

/// The default size of a queue's ring: 1 MiB.
pub const DEFAULT_CAPACITY: usize = 1 << 20;

thread_local! {
    static OUT_BUF: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
    static IN_BUF: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// Keeps a scratch buffer for the next call unless it grew very large.
fn keep(slot: &Cell<Vec<u8>>, mut buf: Vec<u8>) {
    if buf.capacity() <= 4 * DEFAULT_CAPACITY {
        buf.clear();
        slot.set(buf);
    }
}

/// Serialization target of a put: a [`Small`] on the stack, spilling into the thread's
/// reusable heap buffer when the message outgrows it.
struct Spill<'a> {
    small: &'a mut Small,
    big: Option<Vec<u8>>,
}

impl Spill<'_> {
    #[cold]
    fn spill(&mut self) -> &mut Vec<u8> {
        let mut big = OUT_BUF.with(|s| s.take());
        big.extend_from_slice(self.small.as_bytes());
        self.big.insert(big)
    }
}

impl wire::Out for Spill<'_> {
    #[inline]
    fn put(&mut self, data: &[u8]) -> Result<(), wire::WireError> {
        if let Some(big) = &mut self.big {
            big.extend_from_slice(data);
        } else if !self.small.extend(data) {
            self.spill().extend_from_slice(data);
        }
        Ok(())
    }

    fn pos(&self) -> usize {
        match &self.big {
            Some(big) => big.len(),
            None => self.small.len(),
        }
    }

    fn patch(&mut self, at: usize, bytes: [u8; 8]) -> Result<(), wire::WireError> {
        match &mut self.big {
            Some(big) => wire::patch_slice(big, at, bytes),
            None => wire::patch_slice(self.small.as_bytes_mut(), at, bytes),
        }
    }
}

// ------------------------------------------------------------------------------------------
// Errors

/// Why a value was not put; every case gives the value back ([`into_inner`](Self::into_inner)).
pub enum PutError<T> {
    /// The queue is full (`put_nowait`): `maxsize` items are in it, or its ring has no room.
    Full(T),
    /// The queue stayed full until the timeout passed (`put_timeout`).
    Timeout(T),
    /// The queue was closed ([`Queue::close`]).
    Closed(T),
    /// The value could not be serialized; nothing was put.
    Encode(T, String),
    /// An operating-system error (sending the message's handles).
    Io(T, io::Error),
    /// The queue's shared memory holds values no correct process writes (another process
    /// wrote past the protocol): the queue has failed for every process. The message names the
    /// field and its value.
    Corrupt(T, String),
}

impl<T> PutError<T> {
    /// The same error without the value (for [`crate::Error`]).
    pub(crate) fn without_value(self) -> PutError<()> {
        match self {
            PutError::Full(_) => PutError::Full(()),
            PutError::Timeout(_) => PutError::Timeout(()),
            PutError::Closed(_) => PutError::Closed(()),
            PutError::Encode(_, m) => PutError::Encode((), m),
            PutError::Io(_, e) => PutError::Io((), e),
            PutError::Corrupt(_, m) => PutError::Corrupt((), m),
        }
    }

    /// The value that was not put.
    pub fn into_inner(self) -> T {
        match self {
            PutError::Full(v)
            | PutError::Timeout(v)
            | PutError::Closed(v)
            | PutError::Encode(v, _)
            | PutError::Io(v, _)
            | PutError::Corrupt(v, _) => v,
        }
    }

    /// Whether this is [`PutError::Full`].
    pub fn is_full(&self) -> bool {
        matches!(self, PutError::Full(_))
    }

    /// Whether this is [`PutError::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, PutError::Timeout(_))
    }

    /// Whether this is [`PutError::Closed`].
    pub fn is_closed(&self) -> bool {
        matches!(self, PutError::Closed(_))
    }

    fn from_fail(f: Fail, v: T) -> Self {
        match f {
            Fail::WouldBlock => PutError::Full(v),
            Fail::Timeout => PutError::Timeout(v),
            Fail::Closed => PutError::Closed(v),
            Fail::Io(e) => PutError::Io(v, e),
            Fail::Corrupt(m) => PutError::Corrupt(v, m),
        }
    }
}

impl<T> fmt::Debug for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let variant = match self {
            PutError::Full(_) => "Full",
            PutError::Timeout(_) => "Timeout",
            PutError::Closed(_) => "Closed",
            PutError::Encode(..) => "Encode",
            PutError::Io(..) => "Io",
            PutError::Corrupt(..) => "Corrupt",
        };
        // The value is left out (it need not be Debug); the message says what went wrong.
        write!(f, "{variant}(..): {self}")
    }
}

impl<T> fmt::Display for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PutError::Full(_) => f.write_str("the queue is full"),
            PutError::Timeout(_) => f.write_str("timed out waiting for room in the queue"),
            PutError::Closed(_) => f.write_str("the queue is closed"),
            PutError::Encode(_, m) => write!(f, "cannot put: {m}"),
            PutError::Io(_, e) => write!(f, "queue i/o error: {e}"),
            PutError::Corrupt(_, m) => write!(f, "the queue has failed: {m}"),
        }
    }
}

impl<T> std::error::Error for PutError<T> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PutError::Io(_, e) => Some(e),
            _ => None,
        }
    }
}

/// Why no value was taken.
#[non_exhaustive]
pub enum GetError {
    /// The queue is empty (`get_nowait`): Python's `queue.Empty`.
    Empty,
    /// Nothing arrived before the timeout passed (`get_timeout`).
    Timeout,
    /// The queue was closed and everything in it has been taken.
    Closed,
    /// The message does not decode as the queue's type; it was consumed.
    Decode(String),
    /// An operating-system error.
    Io(io::Error),
    /// The queue's shared memory holds values no correct process writes (another process
    /// wrote past the protocol): the queue has failed for every process. The message names the
    /// field and its value.
    Corrupt(String),
}

impl GetError {
    /// Whether this is [`GetError::Empty`].
    pub fn is_empty(&self) -> bool {
        matches!(self, GetError::Empty)
    }

    /// Whether this is [`GetError::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, GetError::Timeout)
    }

    /// Whether this is [`GetError::Closed`].
    pub fn is_closed(&self) -> bool {
        matches!(self, GetError::Closed)
    }

    fn from_fail(f: Fail) -> Self {
        match f {
            Fail::WouldBlock => GetError::Empty,
            Fail::Timeout => GetError::Timeout,
            Fail::Closed => GetError::Closed,
            Fail::Io(e) => GetError::Io(e),
            Fail::Corrupt(m) => GetError::Corrupt(m),
        }
    }
}

/// The variant and its message (as `io::Error` shows both).
impl fmt::Debug for GetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let variant = match self {
            GetError::Empty => "Empty",
            GetError::Timeout => "Timeout",
            GetError::Closed => "Closed",
            GetError::Decode(_) => "Decode",
            GetError::Io(_) => "Io",
            GetError::Corrupt(_) => "Corrupt",
        };
        write!(f, "{variant}: {self}")
    }
}

impl fmt::Display for GetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GetError::Empty => f.write_str("the queue is empty"),
            GetError::Timeout => f.write_str("timed out waiting for a message"),
            GetError::Closed => f.write_str("the queue is closed and empty"),
            GetError::Decode(m) => write!(f, "cannot get: {m}"),
            GetError::Io(e) => write!(f, "queue i/o error: {e}"),
            GetError::Corrupt(m) => write!(f, "the queue has failed: {m}"),
        }
    }
}

impl std::error::Error for GetError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            GetError::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// [`JoinableQueue::task_done`] was called more times than items were put (Python's
/// `ValueError`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskDoneError;

impl fmt::Display for TaskDoneError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("task_done() called more times than there were items put")
    }
}

impl std::error::Error for TaskDoneError {}

// ------------------------------------------------------------------------------------------
// Queue

struct Shared {
    ring: Ring,
    /// The descriptor socket: everyone sends on `tx` and receives on `rx`.
    tx: TrackedFd,
    rx: TrackedFd,
    /// The doorbell of async waiters (an eventfd shared by every holder of the queue), rung
    /// with a wake only when a waiter registered.
    bell: TrackedFd,
}

impl Shared {
    fn new(ring: Ring, tx: OwnedFd, rx: OwnedFd, bell: OwnedFd) -> Shared {
        let bell = TrackedFd::new(bell);
        ring.set_bell(bell.as_fd().as_raw_fd());
        Shared {
            ring,
            tx: TrackedFd::new(tx),
            rx: TrackedFd::new(rx),
            bell,
        }
    }
}

/// A FIFO queue between processes, like Python's `multiprocessing.Queue`.
///
/// Many processes may put and get at once; every message is delivered exactly once, and the
/// messages of one producer arrive in the order it put them. `T` is any serde type (an enum
/// for several kinds of message); handles inside it travel too.
///
/// Clone a `Queue` to use it from several threads; pass it (or a clone) to a child as part of
/// the target's argument to use it there.
///
/// # Capacity
/// `maxsize` counts items, as in Python (0: no limit). Independently, the ring holds
/// [`capacity`](Self::capacity) bytes (default [`DEFAULT_CAPACITY`]): `put` waits while the
/// ring has no room, and `put_nowait` then returns [`PutError::Full`], even on a queue without
/// an item limit. Messages larger than a quarter of the ring stream through it in chunks while a
/// consumer reads them; a message of any size fits.
///
/// # Examples
/// ```
/// use multiprocess::{Process, Queue};
///
/// fn child(q: Queue<String>) {
///     q.put("hello from the child".to_string()).unwrap();
/// }
///
/// let q = Queue::new(10)?;
/// let mut p = Process::new(child, q.clone());
/// p.start()?;
/// assert_eq!(q.get()?, "hello from the child");
/// p.join()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Queue<T> {
    shared: Arc<Shared>,
    _t: PhantomData<fn(T) -> T>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue {
            shared: self.shared.clone(),
            _t: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("qsize", &self.qsize())
            .field("maxsize", &self.maxsize())
            .field("capacity", &self.capacity())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl<T: Serialize + DeserializeOwned> Queue<T> {
    /// A queue of at most `maxsize` items (0: no item limit, as in Python), with a ring of
    /// [`DEFAULT_CAPACITY`] bytes.
    ///
    /// # Errors
    /// When shared memory or a socket cannot be created (out of memory or descriptors), or
    /// `maxsize` exceeds `i32::MAX`.
    ///
    /// # Examples
    /// ```
    /// let q = multiprocess::Queue::<u32>::new(2)?;
    /// q.put(1).unwrap();
    /// q.put(2).unwrap();
    /// assert!(q.is_full());
    /// assert_eq!(q.put_nowait(3).unwrap_err().into_inner(), 3);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[must_use = "a queue does nothing unless used"]
    pub fn new(maxsize: usize) -> io::Result<Queue<T>> {
        Self::with_capacity(maxsize, DEFAULT_CAPACITY)
    }

    /// A queue without an item limit (Python's `Queue()`).
    ///
    /// # Errors
    /// As [`new`](Self::new).
    ///
    /// # Examples
    /// ```
    /// let q = multiprocess::Queue::<String>::unbounded()?;
    /// assert!(!q.is_full());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[must_use = "a queue does nothing unless used"]
    pub fn unbounded() -> io::Result<Queue<T>> {
        Self::new(0)
    }

    /// A queue of at most `maxsize` items (0: no limit) whose ring holds `bytes` bytes
    /// (rounded up to a power of two, at least 4 KiB, at most 1 GiB).
    ///
    /// # Errors
    /// As [`new`](Self::new).
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// let q = multiprocess::Queue::<Vec<u8>>::with_capacity(0, 64 * 1024)?;
    /// assert_eq!(q.capacity(), 64 * 1024);
    /// // 1 MiB streams through the 64 KiB ring only while someone reads: here nobody does.
    /// let e = q.put_timeout(vec![7; 1 << 20], Duration::from_millis(50)).unwrap_err();
    /// assert!(e.is_timeout());
    /// assert!(q.is_empty());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[must_use = "a queue does nothing unless used"]
    pub fn with_capacity(maxsize: usize, bytes: usize) -> io::Result<Queue<T>> {
        let maxsize = u32::try_from(maxsize)
            .ok()
            .filter(|m| *m <= i32::MAX as u32)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "maxsize is larger than i32::MAX",
                )
            })?;
        let _birth = handle::birth();
        let ring = Ring::create(bytes, maxsize)?;
        let (tx, rx) = ipc::dgram_pair()?;
        let bell = crate::sys::doorbell::new()?;
        Ok(Queue {
            shared: Arc::new(Shared::new(ring, tx, rx, bell)),
            _t: PhantomData,
        })
    }

    fn put_with(&self, value: T, wait: Wait) -> Result<(), PutError<T>> {
        // Serialized on the stack; spilled into the thread's heap buffer when larger.
        let mut small = Small::new();
        let spill = Spill {
            small: &mut small,
            big: None,
        };
        let (big, fds) = match handle::encode_to(&value, spill) {
            Ok((spill, fds)) => (spill.big, fds),
            Err(e) => return Err(PutError::Encode(value, e.0)),
        };
        match big {
            None if fds.is_empty() => self
                .shared
                .ring
                .put_small(&small, wait)
                .map_err(|f| PutError::from_fail(f, value)),
            None => {
                let enc = handle::Encoded {
                    bytes: small.as_bytes().to_vec(),
                    fds,
                };
                self.put_encoded(enc, value, wait, None)
            }
            Some(bytes) => OUT_BUF.with(|slot| {
                self.put_encoded(handle::Encoded { bytes, fds }, value, wait, Some(slot))
            }),
        }
    }

    /// Puts an encoded message (with descriptors, or larger than [`Small`]); its buffer goes
    /// back to `slot` (the thread's reusable one) afterwards.
    fn put_encoded(
        &self,
        enc: handle::Encoded,
        value: T,
        wait: Wait,
        slot: Option<&Cell<Vec<u8>>>,
    ) -> Result<(), PutError<T>> {
        let ring = &self.shared.ring;
        let result = if enc.fds.is_empty() {
            ring.put(&enc.bytes, None, wait)
        } else {
            // SAFETY: `value` is alive for this whole call, so its descriptors stay open.
            #[allow(unsafe_code)]
            let fds = unsafe { handle::borrow_all(&enc.fds) };
            let tx = self.shared.tx.as_fd();
            let mut send = |seq: u64, wait: Wait| -> Result<(), Fail> {
                loop {
                    match ipc::send_dgram(tx, &seq.to_le_bytes(), &fds) {
                        Ok(()) => return Ok(()),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            let Some(slice) = wait.slice() else {
                                return Err(match wait {
                                    Wait::Now => Fail::WouldBlock,
                                    _ => Fail::Timeout,
                                });
                            };
                            ipc::poll_writable(tx, slice)?;
                        }
                        Err(e) => return Err(Fail::Io(e)),
                    }
                }
            };
            ring.put(&enc.bytes, Some(&mut send), wait)
        };
        if let Some(slot) = slot {
            keep(slot, enc.bytes);
        }
        result.map_err(|f| PutError::from_fail(f, value))
    }

    fn get_with(&self, wait: Wait) -> Result<T, GetError> {
        // Small messages are copied to the stack under the consumer lock and decoded after
        // it: user `Deserialize` code never runs under the queue's lock.
        let mut small = Small::new();
        if self
            .shared
            .ring
            .get_small(&mut small, !matches!(wait, Wait::Now))
        {
            return handle::decode(small.as_bytes(), Vec::new()).map_err(|e| GetError::Decode(e.0));
        }
        IN_BUF.with(|slot| {
            let mut buf = slot.take();
            let mut fds = Vec::new();
            let rx = self.shared.rx.as_fd();
            let mut recv = |seq: u64, fds: &mut Vec<OwnedFd>| recv_fds(rx, seq, fds);
            let taken = self
                .shared
                .ring
                .get(&mut buf, &mut fds, &mut recv, &mut small, wait);
            let result = match taken {
                Ok(Got::Small) => handle::decode(small.as_bytes(), Vec::new()),
                Ok(Got::Copied) => handle::decode(&buf, fds),
                Err(f) => {
                    keep(slot, buf);
                    return Err(GetError::from_fail(f));
                }
            };
            keep(slot, buf);
            result.map_err(|e| GetError::Decode(e.0))
        })
    }

    /// Puts `value`, waiting while the queue is full.
    ///
    /// # Errors
    /// [`PutError::Closed`] after [`close`](Self::close); [`PutError::Encode`] when the value
    /// does not serialize. The value comes back in the error.
    ///
    /// # Examples
    /// ```
    /// let q = multiprocess::Queue::new(0)?;
    /// q.put((1, "one".to_string())).unwrap();
    /// assert_eq!(q.get().unwrap(), (1, "one".to_string()));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn put(&self, value: T) -> Result<(), PutError<T>> {
        self.put_with(value, Wait::Forever)
    }

    /// Puts `value`, waiting at most `timeout` for room.
    ///
    /// A message larger than a quarter of the ring that has started to stream is abandoned
    /// (consumers discard its start) when the timeout passes, and the value comes back.
    ///
    /// # Errors
    /// [`PutError::Timeout`] when there was no room in time; otherwise as [`put`](Self::put).
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// let q = multiprocess::Queue::new(1)?;
    /// q.put_timeout('a', Duration::from_millis(10)).unwrap();
    /// let e = q.put_timeout('b', Duration::from_millis(10)).unwrap_err();
    /// assert!(e.is_timeout());
    /// assert_eq!(e.into_inner(), 'b');
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn put_timeout(&self, value: T, timeout: Duration) -> Result<(), PutError<T>> {
        self.put_with(value, Wait::Until(Instant::now() + timeout))
    }

    /// Puts `value` if there is room now (Python's `put_nowait`).
    ///
    /// "Now" includes waiting for another producer that is in the middle of a put; a message
    /// large enough to stream in chunks is finished once its first chunk is in.
    ///
    /// # Errors
    /// [`PutError::Full`] with the value when the queue is full; otherwise as
    /// [`put`](Self::put).
    ///
    /// # Examples
    /// ```
    /// let q = multiprocess::Queue::new(1)?;
    /// q.put_nowait(1).unwrap();
    /// assert!(q.put_nowait(2).unwrap_err().is_full());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn put_nowait(&self, value: T) -> Result<(), PutError<T>> {
        self.put_with(value, Wait::Now)
    }

    /// Takes the next message, waiting until one arrives.
    ///
    /// A large message whose producer dies while it streams is dropped as a whole (counted by
    /// [`dropped`](Self::dropped)), and the call takes the next whole message.
    ///
    /// # Errors
    /// [`GetError::Closed`] when the queue is closed and empty; [`GetError::Decode`] when the
    /// message is not a `T` (it is consumed).
    ///
    /// # Examples
    /// ```
    /// let q = multiprocess::Queue::new(0)?;
    /// q.put(vec![1.5, 2.5]).unwrap();
    /// assert_eq!(q.get().unwrap(), [1.5, 2.5]);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn get(&self) -> Result<T, GetError> {
        self.get_with(Wait::Forever)
    }

    /// Takes the next message, waiting at most `timeout`.
    ///
    /// A message whose first chunk was already taken is read to its end, even past the timeout,
    /// while its producer keeps writing it. When its producer dies in the middle, the partial
    /// message is dropped (counted by [`dropped`](Self::dropped)) within about 100 ms and the
    /// call goes on waiting for the next message until its timeout. When its producer lives
    /// but writes nothing for 100 ms after the timeout has passed, the call returns
    /// [`GetError::Timeout`] and the rest of that message is skipped: it is lost (counted as
    /// dropped once its end passes).
    ///
    /// # Errors
    /// [`GetError::Timeout`] when nothing arrived in time; otherwise as [`get`](Self::get).
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// let q = multiprocess::Queue::<u8>::new(0)?;
    /// assert!(q.get_timeout(Duration::from_millis(20)).unwrap_err().is_timeout());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, GetError> {
        self.get_with(Wait::Until(Instant::now() + timeout))
    }

    /// Takes the next message if there is one now (Python's `get_nowait`).
    ///
    /// # Errors
    /// [`GetError::Empty`] at once when there is none (or another consumer is in the middle of
    /// taking one); otherwise as [`get`](Self::get).
    ///
    /// # Examples
    /// ```
    /// let q = multiprocess::Queue::new(0)?;
    /// assert!(q.get_nowait().unwrap_err().is_empty());
    /// q.put("x".to_string()).unwrap();
    /// assert_eq!(q.get_nowait().unwrap(), "x");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn get_nowait(&self) -> Result<T, GetError> {
        self.get_with(Wait::Now)
    }

    /// Takes the first item without blocking a thread: the future completes when an item
    /// comes (or the queue is closed and empty). It works under any executor: a reactor
    /// thread of the crate waits on the queue's doorbell, an eventfd that a producer rings
    /// only when an async consumer waits, so synchronous users pay nothing for it.
    ///
    /// Cancellation: dropping the future before it completes loses nothing; an item is taken
    /// only in the poll that returns it.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    ///
    /// # Examples
    /// ```
    /// use multiprocess::{Process, Queue};
    ///
    /// fn produce(q: Queue<u32>) { q.put(7).unwrap(); }
    ///
    /// let q = Queue::new(0)?;
    /// let mut p = Process::new(produce, q.clone());
    /// p.start()?;
    /// # let block_on = |f| multiprocess::__block_on(f);
    /// assert_eq!(block_on(q.get_async())?, 7);
    /// p.join()?;
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub async fn get_async(&self) -> Result<T, GetError> {
        self.until_async(true, || match self.get_nowait() {
            Err(GetError::Empty) => None,
            other => Some(other),
        })
        .await
        .unwrap_or_else(|e| Err(GetError::Io(e)))
    }

    /// Puts an item without blocking a thread while the queue is full (see
    /// [`get_async`](Self::get_async)).
    ///
    /// Cancellation: dropping the future before it completes drops the item, which was not
    /// put; the queue is unchanged.
    ///
    /// # Errors
    /// As [`put`](Self::put).
    pub async fn put_async(&self, value: T) -> Result<(), PutError<T>> {
        let mut value = Some(value);
        let done = self
            .until_async(false, || {
                let v = value.take()?;
                match self.put_nowait(v) {
                    Err(PutError::Full(v)) => {
                        value = Some(v);
                        None
                    }
                    other => Some(other),
                }
            })
            .await;
        match (done, value) {
            (Ok(r), _) => r,
            (Err(e), Some(v)) => Err(PutError::Io(v, e)),
            (Err(_), None) => Ok(()),
        }
    }

    /// Runs `attempt` until it gives an outcome, waiting on the queue's doorbell between
    /// tries: after an empty-handed try, drains the doorbell (rings meant for items others
    /// took), registers on the ring's event count for items (`items`) or for room, and tries
    /// again before waiting, so no ring is missed. `Err` only when the reactor fails.
    async fn until_async<R>(
        &self,
        items: bool,
        mut attempt: impl FnMut() -> Option<R>,
    ) -> io::Result<R> {
        let mut interest = crate::sys::reactor::Interest::new();
        std::future::poll_fn(|cx| {
            if let Some(r) = attempt() {
                return std::task::Poll::Ready(Ok(r));
            }
            crate::sys::doorbell::drain(self.shared.bell.as_fd());
            self.shared.ring.register_async(items);
            if let Some(r) = attempt() {
                return std::task::Poll::Ready(Ok(r));
            }
            match interest.arm(&[self.shared.bell.as_fd()], cx.waker()) {
                Ok(()) => std::task::Poll::Pending,
                Err(e) => std::task::Poll::Ready(Err(e)),
            }
        })
        .await
    }

    /// A blocking iterator: yields messages until the queue is closed and empty (or a `get`
    /// fails).
    ///
    /// # Examples
    /// ```
    /// let q = multiprocess::Queue::new(0)?;
    /// for i in 0..3 { q.put(i).unwrap(); }
    /// q.close();
    /// assert_eq!(q.iter().collect::<Vec<i32>>(), [0, 1, 2]);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn iter(&self) -> Iter<'_, T> {
        Iter { q: self }
    }

    /// A draining iterator: yields the messages that are there now, without waiting, and ends
    /// when the queue is empty.
    ///
    /// # Examples
    /// ```
    /// let q = multiprocess::Queue::new(0)?;
    /// q.put('a').unwrap();
    /// q.put('b').unwrap();
    /// assert_eq!(q.drain().collect::<String>(), "ab");
    /// assert!(q.is_empty());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn drain(&self) -> Drain<'_, T> {
        Drain { q: self }
    }
}

impl<T> Queue<T> {
    /// The number of messages in the queue (Python's `qsize`): exact when no `put` or `get` is
    /// in flight. A streamed message counts once its last chunk is in.
    ///
    /// # Examples
    /// ```
    /// let q = multiprocess::Queue::new(0)?;
    /// q.put(1u8).unwrap();
    /// q.put(2u8).unwrap();
    /// assert_eq!(q.qsize(), 2);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn qsize(&self) -> usize {
        self.shared.ring.qsize()
    }

    /// Whether the queue holds no message (Python's `empty`).
    ///
    /// # Examples
    /// ```
    /// let q = multiprocess::Queue::<u8>::new(0)?;
    /// assert!(q.is_empty());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "empty")]
    pub fn is_empty(&self) -> bool {
        self.qsize() == 0
    }

    /// Whether the queue holds `maxsize` items (Python's `full`); always false without an item
    /// limit.
    ///
    /// # Examples
    /// ```
    /// let q = multiprocess::Queue::new(1)?;
    /// q.put(()).unwrap();
    /// assert!(q.is_full());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "full")]
    pub fn is_full(&self) -> bool {
        let max = self.shared.ring.maxsize();
        max != 0 && self.qsize() >= max as usize
    }

    /// The item limit (0: none).
    ///
    /// # Examples
    /// ```
    /// assert_eq!(multiprocess::Queue::<u8>::new(5)?.maxsize(), 5);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn maxsize(&self) -> usize {
        self.shared.ring.maxsize() as usize
    }

    /// The size of the ring in bytes.
    ///
    /// # Examples
    /// ```
    /// assert_eq!(multiprocess::Queue::<u8>::new(0)?.capacity(), multiprocess::queue::DEFAULT_CAPACITY);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn capacity(&self) -> usize {
        self.shared.ring.capacity()
    }

    /// Closes the queue for every process: later puts fail with [`PutError::Closed`], gets
    /// take what is left and then fail with [`GetError::Closed`]; waiting puts and gets wake up.
    /// (Python's `close` only concerns the calling process's feeder thread, which this crate
    /// does not have.)
    ///
    /// # Examples
    /// ```
    /// let q = multiprocess::Queue::new(0)?;
    /// q.put(1).unwrap();
    /// q.close();
    /// assert!(q.put(2).unwrap_err().is_closed());
    /// assert_eq!(q.get().unwrap(), 1);
    /// assert!(q.get().unwrap_err().is_closed());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn close(&self) {
        self.shared.ring.close();
    }

    /// Whether [`close`](Self::close) was called (by any process).
    ///
    /// # Examples
    /// ```
    /// let q = multiprocess::Queue::<u8>::new(0)?;
    /// q.close();
    /// assert!(q.is_closed());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn is_closed(&self) -> bool {
        self.shared.ring.is_closed()
    }

    /// How many messages were dropped because a process died in the middle of putting or
    /// taking them (counted by the queue, across all processes). Such a message is dropped as a
    /// whole: never delivered in part.
    ///
    /// # Examples
    /// ```
    /// assert_eq!(multiprocess::Queue::<u8>::new(0)?.dropped(), 0);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn dropped(&self) -> u64 {
        self.shared.ring.dropped() as u64
    }

    /// How many times a process took over a lock of this queue from a dead owner.
    ///
    /// # Examples
    /// ```
    /// assert_eq!(multiprocess::Queue::<u8>::new(0)?.recoveries(), 0);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn recoveries(&self) -> u64 {
        self.shared.ring.recovered() as u64
    }

    /// Test support: the thread id holding the consumer (`true`) or producer lock.
    #[doc(hidden)]
    pub fn __lock_owner(&self, consumer: bool) -> Option<u32> {
        self.shared.ring.lock_owner(consumer)
    }

    /// Test support (a hostile peer): stores `value` in the 8-aligned 64-bit word at byte
    /// `offset` of the queue's shared memory (the header of `ring.rs`, then the ring from
    /// byte 4096); `false` when there is no such word.
    #[doc(hidden)]
    pub fn __poke(&self, offset: usize, value: u64) -> bool {
        self.shared.ring.poke(offset, value)
    }

    /// Test support: bytes in use in the ring (published, not yet consumed).
    #[doc(hidden)]
    pub fn __ring_used(&self) -> usize {
        self.shared.ring.used()
    }

    /// Test support: takes the producer lock, calls `then`, and sleeps forever holding it.
    #[doc(hidden)]
    pub fn __hold_producer_lock(&self, then: impl FnOnce()) -> ! {
        let _ = self.shared.ring.hold_producer_lock();
        then();
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }

    /// Test support: takes the consumer lock, reads the first record (the first chunk of a
    /// large message), calls `then`, and sleeps forever holding the lock.
    #[doc(hidden)]
    pub fn __hold_consumer_lock_mid_message(&self, then: impl FnOnce()) -> ! {
        let _ = self.shared.ring.hold_consumer_lock_mid_message();
        then();
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}

/// The `ring_records` fuzz target: see `crate::fuzz::ring_records`.
pub(crate) fn fuzz_ring_records(data: &[u8]) {
    ring::fuzz_records(data);
}

/// Takes the descriptors of message `want` from the datagram socket (under the consumer lock).
fn recv_fds(rx: BorrowedFd<'_>, want: u64, fds: &mut Vec<OwnedFd>) -> io::Result<bool> {
    let mut b = [0u8; 8];
    loop {
        let Some(n) = ipc::peek_dgram(rx, &mut b)? else {
            return Ok(false);
        };
        let seq = u64::from_le_bytes(b);
        if n == 8 && seq == want {
            ipc::recv_dgram(rx, &mut b, fds)?;
            return Ok(true);
        }
        if n != 8 || seq < want {
            // Sent by a producer that died before publishing its message.
            ipc::recv_dgram(rx, &mut b, &mut Vec::new())?;
            continue;
        }
        // Ours was taken by a consumer that died before finishing this message.
        return Ok(false);
    }
}

impl<T> Serialize for Queue<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        struct Fd<'a>(BorrowedFd<'a>);
        impl Serialize for Fd<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                handle::serialize_borrowed(self.0, serializer)
            }
        }
        let mut t = serializer.serialize_tuple(4)?;
        t.serialize_element(self.shared.ring.region())?;
        t.serialize_element(&Fd(self.shared.tx.as_fd()))?;
        t.serialize_element(&Fd(self.shared.rx.as_fd()))?;
        t.serialize_element(&Fd(self.shared.bell.as_fd()))?;
        t.end()
    }
}

impl<'de, T> Deserialize<'de> for Queue<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Wire(
            Region,
            #[serde(with = "handle::fd")] OwnedFd,
            #[serde(with = "handle::fd")] OwnedFd,
            #[serde(with = "handle::fd")] OwnedFd,
        );
        let Wire(region, tx, rx, bell) = Wire::deserialize(deserializer)?;
        let ring = Ring::open(region).map_err(serde::de::Error::custom)?;
        let bell = crate::sys::doorbell::adopt(bell).map_err(serde::de::Error::custom)?;
        Ok(Queue {
            shared: Arc::new(Shared::new(ring, tx, rx, bell)),
            _t: PhantomData,
        })
    }
}

/// The blocking iterator of [`Queue::iter`].
#[derive(Debug)]
pub struct Iter<'a, T> {
    q: &'a Queue<T>,
}

impl<T: Serialize + DeserializeOwned> Iterator for Iter<'_, T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        self.q.get().ok()
    }
}

impl<'a, T: Serialize + DeserializeOwned> IntoIterator for &'a Queue<T> {
    type Item = T;
    type IntoIter = Iter<'a, T>;
    fn into_iter(self) -> Iter<'a, T> {
        self.iter()
    }
}

/// The non-blocking iterator of [`Queue::drain`].
#[derive(Debug)]
pub struct Drain<'a, T> {
    q: &'a Queue<T>,
}

impl<T: Serialize + DeserializeOwned> Iterator for Drain<'_, T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        self.q.get_nowait().ok()
    }
}

// ------------------------------------------------------------------------------------------
// SimpleQueue

/// An unbounded queue with only `put`, `get`, `is_empty` and `close`, like Python's
/// `multiprocessing.SimpleQueue`. It is a [`Queue`] underneath, with the same speed and
/// robustness.
///
/// # Examples
/// ```
/// use multiprocess::{Process, SimpleQueue};
///
/// fn child(q: SimpleQueue<u64>) {
///     q.put(42).unwrap();
/// }
///
/// let q = SimpleQueue::new()?;
/// let mut p = Process::new(child, q.clone());
/// p.start()?;
/// assert_eq!(q.get()?, 42);
/// p.join()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SimpleQueue<T>(#[serde(bound = "")] Queue<T>);

impl<T> Clone for SimpleQueue<T> {
    fn clone(&self) -> Self {
        SimpleQueue(self.0.clone())
    }
}

impl<T: Serialize + DeserializeOwned> SimpleQueue<T> {
    /// A new, empty queue.
    ///
    /// # Errors
    /// As [`Queue::new`].
    ///
    /// # Examples
    /// ```
    /// let q = multiprocess::SimpleQueue::<u8>::new()?;
    /// assert!(q.is_empty());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[must_use = "a queue does nothing unless used"]
    pub fn new() -> io::Result<SimpleQueue<T>> {
        Queue::unbounded().map(SimpleQueue)
    }

    /// Puts `value`, waiting while the ring has no room.
    ///
    /// # Errors
    /// As [`Queue::put`].
    ///
    /// # Examples
    /// ```
    /// let q = multiprocess::SimpleQueue::new()?;
    /// q.put("x".to_string()).unwrap();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn put(&self, value: T) -> Result<(), PutError<T>> {
        self.0.put(value)
    }

    /// Takes the next message, waiting until one arrives.
    ///
    /// # Errors
    /// As [`Queue::get`].
    ///
    /// # Examples
    /// ```
    /// let q = multiprocess::SimpleQueue::new()?;
    /// q.put(3).unwrap();
    /// assert_eq!(q.get().unwrap(), 3);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn get(&self) -> Result<T, GetError> {
        self.0.get()
    }

    /// Takes the first item without blocking a thread (see [`Queue::get_async`]).
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub async fn get_async(&self) -> Result<T, GetError> {
        self.0.get_async().await
    }

    /// Puts an item from async code (see [`Queue::put_async`]).
    ///
    /// # Errors
    /// As [`put`](Self::put).
    pub async fn put_async(&self, value: T) -> Result<(), PutError<T>> {
        self.0.put_async(value).await
    }

    /// Whether the queue holds no message (Python's `empty`).
    ///
    /// # Examples
    /// ```
    /// assert!(multiprocess::SimpleQueue::<u8>::new()?.is_empty());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "empty")]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Closes the queue (see [`Queue::close`]).
    ///
    /// # Examples
    /// ```
    /// let q = multiprocess::SimpleQueue::<u8>::new()?;
    /// q.close();
    /// assert!(q.get().unwrap_err().is_closed());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn close(&self) {
        self.0.close()
    }
}

// ------------------------------------------------------------------------------------------
// JoinableQueue

/// A [`Queue`] that also counts unfinished tasks, like Python's
/// `multiprocessing.JoinableQueue`: every `put` adds one, [`task_done`](Self::task_done)
/// removes one, and [`join`](Self::join) waits until none is left. All of [`Queue`]'s methods
/// are available on it.
///
/// A message dropped because a process died in the middle of it (see [`Queue::dropped`]) counts
/// as done.
///
/// # Examples
/// ```
/// use multiprocess::{JoinableQueue, Process};
///
/// fn worker(q: JoinableQueue<u32>) {
///     while let Ok(n) = q.get() {
///         let _ = n * 2;
///         q.task_done().unwrap();
///     }
/// }
///
/// let q = JoinableQueue::new(0)?;
/// let mut p = Process::builder().daemon(true).start(worker, q.clone())?;
/// for n in 0..10 {
///     q.put(n).unwrap();
/// }
/// q.join(); // every task is done
/// q.close();
/// p.join()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JoinableQueue<T>(#[serde(bound = "")] Queue<T>);

impl<T> Clone for JoinableQueue<T> {
    fn clone(&self) -> Self {
        JoinableQueue(self.0.clone())
    }
}

impl<T> std::ops::Deref for JoinableQueue<T> {
    type Target = Queue<T>;
    fn deref(&self) -> &Queue<T> {
        &self.0
    }
}

impl<T: Serialize + DeserializeOwned> JoinableQueue<T> {
    /// A queue of at most `maxsize` items (0: no limit).
    ///
    /// # Errors
    /// As [`Queue::new`].
    ///
    /// # Examples
    /// ```
    /// let q = multiprocess::JoinableQueue::<u8>::new(0)?;
    /// q.join(); // nothing put: returns at once
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[must_use = "a queue does nothing unless used"]
    pub fn new(maxsize: usize) -> io::Result<JoinableQueue<T>> {
        Queue::new(maxsize).map(JoinableQueue)
    }
}

impl<T> JoinableQueue<T> {
    /// Marks one task taken from the queue as finished.
    ///
    /// # Errors
    /// [`TaskDoneError`] when called more times than items were put.
    ///
    /// # Examples
    /// ```
    /// let q = multiprocess::JoinableQueue::new(0)?;
    /// q.put(1).unwrap();
    /// q.get().unwrap();
    /// q.task_done().unwrap();
    /// assert!(q.task_done().is_err());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn task_done(&self) -> Result<(), TaskDoneError> {
        if self.0.shared.ring.task_done() {
            Ok(())
        } else {
            Err(TaskDoneError)
        }
    }

    /// Waits until every item ever put has been marked done.
    ///
    /// # Examples
    /// ```
    /// let q = multiprocess::JoinableQueue::new(0)?;
    /// q.put('a').unwrap();
    /// q.get().unwrap();
    /// q.task_done().unwrap();
    /// q.join();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn join(&self) {
        self.0.shared.ring.join(None);
    }

    /// As [`join`](Self::join), waiting at most `timeout`; whether every item is done.
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// let q = multiprocess::JoinableQueue::new(0)?;
    /// q.put('a').unwrap();
    /// assert!(!q.join_timeout(Duration::from_millis(10)));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn join_timeout(&self, timeout: Duration) -> bool {
        self.0.shared.ring.join(Some(Instant::now() + timeout))
    }
}
