//! `Pipe` and `Connection`: two connected ends that carry serde values, raw bytes and handles;
//! [`Listener`] and [`Client`]: connections between processes that did not start one another.
//!
//! # Listener and Client
//! The ends a [`Listener`] accepts and a [`Client`] connects are ordinary [`Connection`]s
//! without the shared-memory ring, framed as CPython frames them (a 4-byte big-endian length,
//! or -1 and an 8-byte length past 2 GiB), after CPython's authkey handshake (HMAC-SHA256 in
//! the `{sha256}` form of Python 3.12, HMAC-MD5 for Python 3.11 and older): a Python program's
//! `multiprocessing.connection` is a peer like any other. [`Connection::send_bytes`] and
//! [`Connection::recv_bytes`] meet Python's methods of the same names; `send`/`recv` carry
//! this crate's format (between Rust peers); `send_pickle`/`recv_pickle` (feature `pickle`)
//! carry plain data to and from Python's `send`/`recv`. Over a Unix socket, handles travel too.
//!
//! A message over the end's limit ([`Connection::set_max_message_len`]) is refused at its
//! header, and the end stops receiving (Python's `recv_bytes(maxlength)` does the same);
//! during the handshake the limit is 256 bytes.
//!
//! # Two transports, one order
//! A pipe made by [`Pipe`] is a Unix stream socketpair plus a shared-memory ring per direction
//! (64 KiB each, in one memfd; see the layout and protocol in `connection/fast.rs`). A message
//! of at most a quarter of the ring that carries no handle is copied into the ring: no syscall,
//! and a receiver that is waiting spins briefly (bounded, adaptive, only while the peer may
//! answer) before it sleeps, so a round trip between two busy processes costs about a
//! microsecond instead of two kernel wake-ups. Every other message is a *frame* on the socket,
//! announced by a marker record in the ring, so messages arrive in the order they were sent
//! whichever way each went. The socket also tells a sleeping receiver that the peer is gone
//! (end of file), and a sender that the receiver is: a send after the peer's end closed is
//! [`ConnectionError::BrokenPipe`], as with a socket.
//!
//! # Frame format (the socket)
//! ```text
//! offset  size  field
//! 0       4     magic  "MPC1" (0x3143_504d little-endian): catches a stream that lost sync
//! 4       4     nfds   number of descriptors attached to the frame (SCM_RIGHTS, first byte)
//! 8       8     len    payload length in bytes, little-endian
//! 16      len   payload: the encoded value (crate::wire), or the raw bytes of send_bytes
//! ```
//!
//! A frame is written by one `sendmsg` (header and payload as two slices, descriptors as
//! ancillary data), under the send lock, so frames from several threads never interleave. The
//! receiver keeps a partly read frame across calls, so `recv_timeout` can give up in the middle
//! of a frame and a later call resumes where it stopped. The locks of a pipe's ends live in its
//! shared memory, so an end passed to several processes (or cloned with
//! [`Connection::try_clone`]) still delivers each message whole and exactly once.
//!
//! Bad input never hangs or panics: a peer that closed gives [`ConnectionError::Eof`] once
//! every message it sent has been read; a message longer than the receiver's limit is skipped
//! and reported as [`ConnectionError::TooLarge`] (the connection stays usable); a payload that
//! does not decode as the requested type is consumed and reported as
//! [`ConnectionError::Decode`] (usable); a header that is not a header, a damaged ring, or
//! bytes on the socket that the ring did not announce ([`ConnectionError::Malformed`]) mean
//! the stream lost its framing, so the connection is closed for receiving and says so on every
//! later call.

use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::handle;
use crate::region::Region;
use crate::sys::socket;

mod address;
mod auth;
mod fast;
mod listener;
#[cfg(feature = "pickle")]
mod pickle;

pub use address::{Address, ToAddress};
pub use auth::AuthenticationError;
use fast::{Fast, Next};
pub use listener::{Client, ClientBuilder, Listener, ListenerBuilder, DEFAULT_HANDSHAKE_TIMEOUT};

const MAGIC: u32 = u32::from_le_bytes(*b"MPC1");
const HEADER: usize = 16;
/// The most one read with a deadline takes (see `read_more`).
const TIMED_READ_SLICE: usize = 1 << 20;
/// The default largest message a connection accepts: 4 GiB.
pub const DEFAULT_MAX_MESSAGE_LEN: u64 = 1 << 32;

/// Creates connected pairs of [`Connection`]s, like Python's `multiprocessing.Pipe()`.
///
/// # Examples
/// ```
/// use multiprocess::{Pipe, Process, Connection};
///
/// fn child(conn: Connection) {
///     let greeting: String = conn.recv().unwrap();
///     conn.send(&format!("{greeting}, parent")).unwrap();
/// }
///
/// let (parent, child_end) = Pipe::new()?;
/// let mut p = Process::new(child, child_end);
/// p.start()?;
/// parent.send(&"hello")?;
/// assert_eq!(parent.recv::<String>()?, "hello, parent");
/// p.join()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Pipe;

impl Pipe {
    /// A duplex pair: both ends send and receive (Python's `Pipe()` / `Pipe(duplex=True)`).
    /// The ends are a Unix `socketpair` plus a shared-memory ring per direction, through which
    /// small messages travel without a syscall (see the [module docs](crate::connection)).
    ///
    /// # Errors
    /// When the system is out of descriptors or memory.
    #[allow(clippy::new_ret_no_self)]
    pub fn new() -> io::Result<(Connection, Connection)> {
        let _birth = handle::birth();
        let (a, b) = socket::socketpair()?;
        let (fa, fb) = Fast::pair()?;
        Ok((
            Connection::with_fast(a, true, true, Some(fa)),
            Connection::with_fast(b, true, true, Some(fb)),
        ))
    }

    /// A one-way pair `(receiver, sender)`, in Python's order for `Pipe(duplex=False)`.
    ///
    /// It is a socketpair shut down in the other direction (not a `pipe(2)`), so that handles
    /// can travel through it too, with the same shared-memory ring as [`Pipe::new`].
    ///
    /// # Errors
    /// When the system is out of descriptors or memory.
    ///
    /// # Examples
    /// ```
    /// let (receiver, sender) = multiprocess::Pipe::oneway()?;
    /// sender.send(&"one way")?;
    /// assert_eq!(receiver.recv::<String>()?, "one way");
    /// assert!(receiver.send(&1).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn oneway() -> io::Result<(Connection, Connection)> {
        let _birth = handle::birth();
        let (r, w) = socket::socketpair()?;
        socket::shutdown(r.as_fd(), false)?;
        socket::shutdown(w.as_fd(), true)?;
        let (fw, fr) = Fast::pair()?;
        Ok((
            Connection::with_fast(r, true, false, Some(fr)),
            Connection::with_fast(w, false, true, Some(fw)),
        ))
    }
}

/// A duplex pair without the shared-memory ring: every message is a frame on the socket.
/// For tests and fuzzing that play a peer writing raw bytes (through the ends' descriptors);
/// not part of the API.
#[doc(hidden)]
pub fn __socket_only_pair() -> io::Result<(Connection, Connection)> {
    let _birth = handle::birth();
    let (a, b) = socket::socketpair()?;
    Ok((
        Connection::with_fast(a, true, true, None),
        Connection::with_fast(b, true, true, None),
    ))
}

/// Why a [`Connection`] operation failed.
#[non_exhaustive]
pub enum ConnectionError {
    /// The other end was closed (or its process ended) and no message is left: Python's
    /// `EOFError`. Also reported when the peer vanished in the middle of a message.
    Eof,
    /// The other end was closed, so a message could not be sent: Python's `BrokenPipeError`.
    BrokenPipe,
    /// No message arrived in time; a later call resumes where this one stopped.
    Timeout,
    /// A message was longer than this end accepts; it was skipped, the connection stays usable.
    TooLarge {
        /// The message's length.
        len: u64,
        /// The limit (see [`Connection::set_max_message_len`]).
        max: u64,
    },
    /// `recv_bytes_into` got a message longer than the buffer; the message is here, not lost.
    BufferTooShort(Vec<u8>),
    /// The byte stream lost its framing (not a frame header); this end no longer receives.
    Malformed(String),
    /// The value could not be serialized; nothing was sent.
    Encode(String),
    /// The message does not decode as the requested type; it was consumed, the connection stays
    /// usable.
    Decode(String),
    /// A message's handles (descriptors) could not be received: this process is at its limit
    /// of open files (`RLIMIT_NOFILE`), so the kernel dropped them. The message was consumed
    /// and is lost; the connection stays usable for the next one.
    HandlesLost {
        /// How many the message carried.
        announced: usize,
        /// How many arrived (they were closed).
        arrived: usize,
    },
    /// Sending on the receiving end of a one-way pipe, or receiving on the sending end.
    WrongDirection(&'static str),
    /// The authkey handshake of a [`Listener`] or [`Client`] failed (Python's
    /// `AuthenticationError`); the connection is closed.
    Authentication(AuthenticationError),
    /// An operating-system error.
    Io(io::Error),
}

impl ConnectionError {
    /// Whether this is [`ConnectionError::Eof`].
    pub fn is_eof(&self) -> bool {
        matches!(self, ConnectionError::Eof)
    }

    /// Whether this is [`ConnectionError::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, ConnectionError::Timeout)
    }
}

/// The variant and its message (as `io::Error` shows both), so `unwrap()` and `main`'s
/// error say what went wrong.
impl fmt::Debug for ConnectionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let variant = match self {
            ConnectionError::Eof => "Eof",
            ConnectionError::BrokenPipe => "BrokenPipe",
            ConnectionError::Timeout => "Timeout",
            ConnectionError::TooLarge { .. } => "TooLarge",
            ConnectionError::BufferTooShort(_) => "BufferTooShort",
            ConnectionError::Malformed(_) => "Malformed",
            ConnectionError::Encode(_) => "Encode",
            ConnectionError::Decode(_) => "Decode",
            ConnectionError::HandlesLost { .. } => "HandlesLost",
            ConnectionError::WrongDirection(_) => "WrongDirection",
            ConnectionError::Authentication(_) => "Authentication",
            ConnectionError::Io(_) => "Io",
        };
        write!(f, "{variant}: {self}")
    }
}

impl fmt::Display for ConnectionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectionError::Eof => f.write_str("end of file: the other end of the connection was closed"),
            ConnectionError::BrokenPipe => f.write_str("broken pipe: the other end of the connection was closed"),
            ConnectionError::Timeout => f.write_str("timed out waiting for a message"),
            ConnectionError::TooLarge { len, max } => write!(
                f,
                "message of {len} bytes is larger than the limit of {max} bytes (see set_max_message_len)"
            ),
            ConnectionError::BufferTooShort(m) => {
                write!(f, "buffer too short for a message of {} bytes", m.len())
            }
            ConnectionError::Malformed(why) => write!(f, "malformed frame, connection closed for receiving: {why}"),
            ConnectionError::Encode(why) => write!(f, "cannot send: {why}"),
            ConnectionError::Decode(why) => write!(f, "cannot receive: {why}"),
            ConnectionError::HandlesLost { announced, arrived } => write!(
                f,
                "too many open files: a message's {announced} handles could not be received \
                 ({arrived} arrived), so the message was lost; close descriptors or raise the \
                 limit (RLIMIT_NOFILE, `ulimit -n`). The connection still works"
            ),
            ConnectionError::WrongDirection(why) => f.write_str(why),
            ConnectionError::Authentication(e) => write!(f, "authentication failed: {e}"),
            ConnectionError::Io(e) => write!(f, "connection i/o error: {e}"),
        }
    }
}

impl std::error::Error for ConnectionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConnectionError::Io(e) => Some(e),
            ConnectionError::Authentication(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for ConnectionError {
    fn from(e: io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc_epipe) if libc_epipe == rustix::io::Errno::PIPE.raw_os_error() => {
                ConnectionError::BrokenPipe
            }
            Some(reset) if reset == rustix::io::Errno::CONNRESET.raw_os_error() => {
                ConnectionError::Eof
            }
            _ => ConnectionError::Io(e),
        }
    }
}

/// One end of a [`Pipe`]: sends and receives serde values, raw bytes, and handles.
///
/// A `Connection` is itself a handle: pass it as a process or task argument, or send it through
/// another `Connection`, and the receiver gets a working end of the same pipe.
///
/// Methods take `&self`: one thread may send while another receives. Sends from several
/// threads are whole messages, never interleaved; so are receives.
pub struct Connection {
    fd: handle::TrackedFd,
    readable: bool,
    writable: bool,
    framing: Framing,
    /// The shared-memory path (ends made by [`Pipe`]); `None`: frames on the socket only.
    fast: Option<Fast>,
    send_lock: Mutex<()>,
    recv_state: Mutex<RecvState>,
    broken: AtomicBool,
    max_len: AtomicU64,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("fd", &self.fd.as_fd().as_raw_fd())
            .field("readable", &self.readable)
            .field("writable", &self.writable)
            .field("shared_memory", &self.fast.is_some())
            .field("framing", &self.framing)
            .finish()
    }
}

/// How messages are delimited on the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Framing {
    /// This crate's frame header (magic, descriptor count, length): ends made by [`Pipe`].
    Native,
    /// CPython's: a 4-byte big-endian signed length, or -1 and an 8-byte one for messages
    /// over 2 GiB. Ends made by [`Listener`] and [`Client`], which Python processes may hold.
    /// A message longer than the limit is refused at its header (nothing of it is read) and
    /// the end stops receiving, as Python's `recv_bytes(maxlength)` does.
    Python,
}

#[derive(Default)]
struct RecvState {
    header: [u8; HEADER],
    header_got: usize,
    fds: Vec<OwnedFd>,
    /// Set once the header is complete: the payload length.
    len: Option<u64>,
    payload: Vec<u8>,
    payload_got: usize,
    /// The shared ring announced a frame on the socket, not fully read yet.
    socket_pending: bool,
    /// The kernel dropped descriptors of the frame being read (`MSG_CTRUNC`).
    fds_truncated: bool,
    /// The frame being read lost its descriptors: (announced, arrived). Its payload is read
    /// and dropped, and the message reported as lost.
    handles_lost: Option<(usize, usize)>,
    /// Whether the socket can carry descriptors (Unix), found on the first header read of a
    /// connection in CPython's framing: a TCP one reads headers with plain `read`.
    carries_fds: Option<bool>,
}

impl RecvState {
    /// Forgets the frame being read, and gives its buffer back (after end of file or an
    /// error, nothing of a large announced frame stays allocated).
    fn reset(&mut self) {
        self.socket_pending = false;
        self.header_got = 0;
        self.len = None;
        self.payload_got = 0;
        self.payload = Vec::new();
        self.fds.clear();
        self.fds_truncated = false;
        self.handles_lost = None;
    }
}

/// The first allocation for a frame's payload, at most: later ones double what has arrived,
/// so a header announcing gigabytes costs nothing until the bytes come.
const FIRST_CHUNK: usize = 1 << 20;

/// A received frame.
struct Frame {
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
}

/// Where a blocking step stands against its deadline.
#[derive(Clone, Copy)]
enum Wait {
    Forever,
    Until(Instant),
}

impl Wait {
    fn after(timeout: Duration) -> Wait {
        // A timeout too large to add is no limit.
        Instant::now()
            .checked_add(timeout)
            .map_or(Wait::Forever, Wait::Until)
    }

    fn expired(self) -> bool {
        matches!(self, Wait::Until(d) if Instant::now() >= d)
    }

    fn deadline(self) -> Option<Instant> {
        match self {
            Wait::Forever => None,
            Wait::Until(d) => Some(d),
        }
    }
}

/// What a receive call makes of the next message: it comes either as bytes borrowed from the
/// shared ring, or as a frame still to be read from the socket.
trait Sink {
    type Out;
    fn inline(self, bytes: &[u8]) -> Result<Self::Out, ConnectionError>;
    fn frame(
        self,
        conn: &Connection,
        st: &mut RecvState,
        wait: Wait,
    ) -> Result<Self::Out, ConnectionError>;
}

/// Decodes a `T` (with its handles).
struct AsValue<T>(PhantomData<fn() -> T>);

impl<T> Clone for AsValue<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for AsValue<T> {}

impl<T: DeserializeOwned> Sink for AsValue<T> {
    type Out = T;
    fn inline(self, bytes: &[u8]) -> Result<T, ConnectionError> {
        handle::decode(bytes, Vec::new()).map_err(|e| ConnectionError::Decode(e.0))
    }
    fn frame(
        self,
        conn: &Connection,
        st: &mut RecvState,
        wait: Wait,
    ) -> Result<T, ConnectionError> {
        let frame = conn.recv_frame(st, wait)?;
        handle::decode(&frame.payload, frame.fds).map_err(|e| ConnectionError::Decode(e.0))
    }
}

/// The raw payload and the descriptors that came with it.
#[derive(Clone, Copy)]
struct AsFrame;

impl Sink for AsFrame {
    type Out = (Vec<u8>, Vec<OwnedFd>);
    fn inline(self, bytes: &[u8]) -> Result<Self::Out, ConnectionError> {
        Ok((bytes.to_vec(), Vec::new()))
    }
    fn frame(
        self,
        conn: &Connection,
        st: &mut RecvState,
        wait: Wait,
    ) -> Result<Self::Out, ConnectionError> {
        let frame = conn.recv_frame(st, wait)?;
        Ok((frame.payload, frame.fds))
    }
}

/// Into the caller's buffer (`recv_bytes_into`).
struct IntoBuf<'a>(&'a mut [u8]);

impl Sink for IntoBuf<'_> {
    type Out = usize;
    fn inline(self, bytes: &[u8]) -> Result<usize, ConnectionError> {
        match self.0.get_mut(..bytes.len()) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                Ok(bytes.len())
            }
            None => Err(ConnectionError::BufferTooShort(bytes.to_vec())),
        }
    }
    fn frame(
        self,
        conn: &Connection,
        st: &mut RecvState,
        wait: Wait,
    ) -> Result<usize, ConnectionError> {
        conn.recv_frame_into(st, wait, self.0)
    }
}

impl Connection {
    /// A connection over a socket only (frames, no shared-memory path).
    pub(crate) fn from_fd(fd: OwnedFd, readable: bool, writable: bool) -> Connection {
        Connection::with_fast(fd, readable, writable, None)
    }

    /// A connection over a socket with CPython's framing (Listener and Client ends).
    pub(crate) fn python_framed(fd: OwnedFd) -> Connection {
        let mut c = Connection::with_fast(fd, true, true, None);
        c.framing = Framing::Python;
        c
    }

    /// The largest message this end accepts now.
    pub(crate) fn max_message_len(&self) -> u64 {
        self.max_len.load(Ordering::Relaxed)
    }

    fn with_fast(fd: OwnedFd, readable: bool, writable: bool, fast: Option<Fast>) -> Connection {
        Connection {
            fd: handle::TrackedFd::new(fd),
            readable,
            writable,
            framing: Framing::Native,
            fast,
            send_lock: Mutex::new(()),
            recv_state: Mutex::new(RecvState::default()),
            broken: AtomicBool::new(false),
            max_len: AtomicU64::new(DEFAULT_MAX_MESSAGE_LEN),
        }
    }

    /// Whether this end can receive (Python's `readable`).
    pub fn readable(&self) -> bool {
        self.readable
    }

    /// Whether this end can send (Python's `writable`).
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// Sets the largest message this end accepts (default [`DEFAULT_MAX_MESSAGE_LEN`]).
    /// A longer message is skipped and reported as [`ConnectionError::TooLarge`].
    pub fn set_max_message_len(&self, max: u64) {
        self.max_len.store(max, Ordering::Relaxed);
    }

    /// Raises the kernel's socket buffers of this end to `bytes` (best effort; the system's
    /// `net.core.wmem_max`/`rmem_max` cap it). Larger buffers raise bulk throughput.
    pub fn set_buffer_size(&self, bytes: usize) {
        socket::set_buffer_sizes(self.fd.as_fd(), bytes);
    }

    /// Sends a serde value, with any handles inside it.
    ///
    /// # Errors
    /// [`ConnectionError::Encode`] when the value does not serialize (nothing is sent);
    /// [`ConnectionError::BrokenPipe`] when the other end is closed.
    ///
    /// # Examples
    /// ```
    /// let (a, b) = multiprocess::Pipe::new()?;
    /// a.send(&vec![1, 2, 3])?;
    /// assert_eq!(b.recv::<Vec<i32>>()?, [1, 2, 3]);
    /// # Ok::<(), multiprocess::ConnectionError>(())
    /// ```
    pub fn send<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), ConnectionError> {
        let handle::Encoded { bytes, fds: raw } =
            handle::encode(value).map_err(|e| ConnectionError::Encode(e.0))?;
        // SAFETY: `value` is borrowed for this whole call, so its descriptors stay open.
        #[allow(unsafe_code)]
        let fds = unsafe { handle::borrow_all(&raw) };
        self.send_encoded_parts(&[&bytes], &fds)
    }

    /// Sends an already encoded message with its descriptors.
    pub(crate) fn send_encoded(
        &self,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ConnectionError> {
        self.send_encoded_parts(&[payload], fds)
    }

    /// Sends one message whose payload is the concatenation of `parts` (no copy into one
    /// buffer), with its descriptors: through the shared ring when it is small and carries
    /// none, else as a frame on the socket (announced in the ring, which keeps the order).
    pub(crate) fn send_encoded_parts(
        &self,
        parts: &[&[u8]],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ConnectionError> {
        if !self.writable {
            return Err(ConnectionError::WrongDirection(
                "this end of a one-way pipe only receives",
            ));
        }
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if let Some(fast) = &self.fast {
            if fds.is_empty() && len <= fast.max_inline() {
                return fast.lock_writer().push_data(parts, self.fd.as_fd());
            }
        }
        if self.framing == Framing::Python && !fds.is_empty() && !socket::is_unix(self.fd.as_fd()) {
            return Err(ConnectionError::Encode(
                "this value holds handles (descriptors), which cannot travel over a TCP \
                 connection; send them through a Pipe or a Unix-socket Listener"
                    .into(),
            ));
        }
        let (h, hlen) = match self.framing {
            Framing::Native => (header(fds.len(), len as u64), HEADER),
            Framing::Python => python_header(len as u64),
        };
        let mut all: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
        all.push(&h[..hlen]);
        all.extend_from_slice(parts);
        socket::check_fd_count(fds.len())?;
        match &self.fast {
            Some(fast) => fast.lock_writer().send_frame(&all, fds, self.fd.as_fd()),
            None => {
                let _guard = self.send_lock.lock().unwrap_or_else(|p| p.into_inner());
                socket::send_all(self.fd.as_fd(), &all, fds).map_err(ConnectionError::from)
            }
        }
    }

    /// Sends raw bytes as one message (Python's `send_bytes`).
    ///
    /// # Errors
    /// [`ConnectionError::BrokenPipe`] when the other end is closed.
    ///
    /// # Examples
    /// ```
    /// let (a, b) = multiprocess::Pipe::new()?;
    /// a.send_bytes(b"raw")?;
    /// assert_eq!(b.recv_bytes()?, b"raw");
    /// let mut buf = [0u8; 16];
    /// a.send_bytes(b"into")?;
    /// let n = b.recv_bytes_into(&mut buf)?;
    /// assert_eq!(&buf[..n], b"into");
    /// # Ok::<(), multiprocess::ConnectionError>(())
    /// ```
    pub fn send_bytes(&self, bytes: &[u8]) -> Result<(), ConnectionError> {
        self.send_encoded(bytes, &[])
    }

    /// Receives a serde value, blocking until one arrives.
    ///
    /// # Errors
    /// [`ConnectionError::Eof`] when the other end closed and nothing is left;
    /// [`ConnectionError::Decode`] when the message is not a `T` (it is consumed); see
    /// [`ConnectionError`] for the rest.
    pub fn recv<T: DeserializeOwned>(&self) -> Result<T, ConnectionError> {
        self.receive(Wait::Forever, AsValue(PhantomData))
    }

    /// Receives a serde value, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`ConnectionError::Timeout`] when nothing complete arrived in time, or as [`recv`](Self::recv).
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// let (a, b) = multiprocess::Pipe::new()?;
    /// assert!(b.recv_timeout::<u32>(Duration::from_millis(10)).unwrap_err().is_timeout());
    /// a.send(&5u32)?;
    /// assert_eq!(b.recv_timeout::<u32>(Duration::from_secs(1))?, 5);
    /// # Ok::<(), multiprocess::ConnectionError>(())
    /// ```
    pub fn recv_timeout<T: DeserializeOwned>(
        &self,
        timeout: Duration,
    ) -> Result<T, ConnectionError> {
        self.receive(Wait::after(timeout), AsValue(PhantomData))
    }

    /// Receives one message as bytes plus the descriptors that came with it.
    pub(crate) fn recv_raw_timeout(
        &self,
        timeout: Duration,
    ) -> Result<(Vec<u8>, Vec<OwnedFd>), ConnectionError> {
        self.receive(Wait::after(timeout), AsFrame)
    }

    /// Receives a serde value without blocking a thread: the future completes when a message
    /// is in. It works under any executor (tokio, smol, `block_on`): a reactor thread of the
    /// crate waits on the socket and on the shared ring's doorbell.
    ///
    /// Cancellation: dropping the future before it completes loses nothing. A message is
    /// taken only in the poll that returns it; a large frame read in part stays in this end,
    /// and the next receive (async or not) continues it.
    ///
    /// # Errors
    /// As [`recv`](Self::recv).
    ///
    /// # Examples
    /// ```
    /// use multiprocess::{Connection, Pipe, Process};
    ///
    /// fn child(conn: Connection) { conn.send(&"from the child").unwrap(); }
    ///
    /// let (parent, child_end) = Pipe::new()?;
    /// let mut p = Process::new(child, child_end);
    /// p.start()?;
    /// # let block_on = |f| multiprocess::__block_on(f);
    /// let got: String = block_on(parent.recv_async())?;
    /// assert_eq!(got, "from the child");
    /// p.join()?;
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub async fn recv_async<T: DeserializeOwned>(&self) -> Result<T, ConnectionError> {
        self.receive_async(AsValue(PhantomData)).await
    }

    /// Receives one message as raw bytes without blocking a thread (see
    /// [`recv_async`](Self::recv_async)).
    ///
    /// # Errors
    /// As [`recv_bytes`](Self::recv_bytes).
    pub async fn recv_bytes_async(&self) -> Result<Vec<u8>, ConnectionError> {
        Ok(self.receive_async(AsFrame).await?.0)
    }

    /// Sends a serde value from async code.
    ///
    /// A send does not wait for the receiver unless the way is full. A message that goes
    /// through a `Pipe`'s shared ring (a small one without handles, the common case) waits
    /// for room without blocking a thread: the crate's futex watcher waits on the ring's room
    /// word (as [`Event::wait_async`](crate::Event::wait_async) does) and looks every 50 ms
    /// whether the peer still lives ([`BrokenPipe`](ConnectionError::BrokenPipe) if not). A
    /// frame on the socket (a large message, one holding handles, or any message of a
    /// `Listener`/`Client` connection) is written as [`send`](Self::send) writes it: while
    /// the socket's buffer is full and the peer does not read, this call blocks its thread.
    ///
    /// Cancellation: a message is sent whole or not at all. Dropping the future while it
    /// waits for room sends nothing; once it is written, the future is complete.
    ///
    /// # Errors
    /// As [`send`](Self::send).
    ///
    /// # Examples
    /// ```
    /// use multiprocess::{Connection, Pipe, Process};
    ///
    /// fn echo(conn: Connection) {
    ///     let s: String = conn.recv().unwrap();
    ///     conn.send(&s.to_uppercase()).unwrap();
    /// }
    ///
    /// let (parent, child) = Pipe::new()?;
    /// let mut p = Process::new(echo, child);
    /// p.start()?;
    /// # let block_on = |f| multiprocess::__block_on(f);
    /// let reply: String = block_on(async {
    ///     parent.send_async("quiet").await?;
    ///     parent.recv_async().await
    /// })?;
    /// assert_eq!(reply, "QUIET");
    /// p.join()?;
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub async fn send_async<T: Serialize + ?Sized>(
        &self,
        value: &T,
    ) -> Result<(), ConnectionError> {
        let handle::Encoded { bytes, fds: raw } =
            handle::encode(value).map_err(|e| ConnectionError::Encode(e.0))?;
        if raw.is_empty() {
            return self.send_bytes_async(&bytes).await;
        }
        // SAFETY: `value` is borrowed for this whole call, so its descriptors stay open.
        #[allow(unsafe_code)]
        let fds = unsafe { handle::borrow_all(&raw) };
        self.send_encoded_parts(&[&bytes], &fds)
    }

    /// Sends raw bytes from async code (see [`send_async`](Self::send_async)).
    ///
    /// # Errors
    /// As [`send_bytes`](Self::send_bytes).
    pub async fn send_bytes_async(&self, bytes: &[u8]) -> Result<(), ConnectionError> {
        let fast = match &self.fast {
            Some(fast) if self.writable && bytes.len() <= fast.max_inline() => fast,
            _ => return self.send_bytes(bytes),
        };
        let mut watch = crate::sys::reactor::FutexWatch::new();
        std::future::poll_fn(|cx| {
            let pushed = fast.lock_writer().try_push_data(&[bytes], self.fd.as_fd());
            let epoch = match pushed {
                Ok(fast::Pushed::Done) => return std::task::Poll::Ready(Ok(())),
                Ok(fast::Pushed::Full { epoch }) => epoch,
                Err(e) => return std::task::Poll::Ready(Err(e)),
            };
            // Woken when the reader frees room, and at the end of each slice to look at the
            // peer again (the next try does, first thing).
            let (space, owner) = fast.space_word();
            let slice = Instant::now().checked_add(fast::ROOM_SLICE);
            match watch.watch(owner, space, epoch, slice, cx.waker()) {
                Ok(()) => std::task::Poll::Pending,
                // No futex_waitv (Linux before 5.16): wait for room in this thread.
                Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                    std::task::Poll::Ready(self.send_bytes(bytes))
                }
                Err(e) => std::task::Poll::Ready(Err(e.into())),
            }
        })
        .await
    }

    async fn receive_async<S: Sink + Copy>(&self, sink: S) -> Result<S::Out, ConnectionError> {
        /// Ends a doorbell registration when the future is polled again or dropped.
        struct Armed<'a>(Option<&'a Fast>);
        impl Drop for Armed<'_> {
            fn drop(&mut self) {
                if let Some(f) = self.0.take() {
                    f.disarm(true);
                }
            }
        }
        let mut interest = crate::sys::reactor::Interest::new();
        let mut armed = Armed(None);
        std::future::poll_fn(|cx| loop {
            if let Some(f) = armed.0.take() {
                f.disarm(true);
            }
            match self.receive(Wait::after(Duration::ZERO), sink) {
                Err(ConnectionError::Timeout) => {}
                other => return std::task::Poll::Ready(other),
            }
            let mut fds = vec![self.fd.as_fd()];
            if let Some(fast) = &self.fast {
                if fast.arm() {
                    continue;
                }
                armed.0 = Some(fast);
                fds.push(fast.inbound_bell());
            }
            if let Err(e) = interest.arm(&fds, cx.waker()) {
                return std::task::Poll::Ready(Err(e.into()));
            }
            return std::task::Poll::Pending;
        })
        .await
    }

    /// Receives one message as raw bytes (Python's `recv_bytes`). Descriptors that came with
    /// it are closed.
    ///
    /// # Errors
    /// As [`recv`](Self::recv).
    pub fn recv_bytes(&self) -> Result<Vec<u8>, ConnectionError> {
        Ok(self.receive(Wait::Forever, AsFrame)?.0)
    }

    /// Receives one message as raw bytes, waiting at most `timeout`.
    ///
    /// # Errors
    /// As [`recv_timeout`](Self::recv_timeout).
    pub fn recv_bytes_timeout(&self, timeout: Duration) -> Result<Vec<u8>, ConnectionError> {
        Ok(self.receive(Wait::after(timeout), AsFrame)?.0)
    }

    /// Receives one message into `buf` and returns its length (Python's `recv_bytes_into`).
    ///
    /// # Errors
    /// [`ConnectionError::BufferTooShort`] carrying the whole message when it does not fit;
    /// otherwise as [`recv_bytes`](Self::recv_bytes).
    pub fn recv_bytes_into(&self, buf: &mut [u8]) -> Result<usize, ConnectionError> {
        self.receive(Wait::Forever, IntoBuf(buf))
    }

    /// Whether a message (or end of file) is ready to be read, waiting at most `timeout`
    /// (Python's `poll`; `Duration::ZERO` asks without waiting).
    ///
    /// # Errors
    /// An operating-system error.
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// let (a, b) = multiprocess::Pipe::new()?;
    /// assert!(!b.poll(Duration::ZERO)?);
    /// a.send(&1)?;
    /// assert!(b.poll(Duration::from_secs(1))?);
    /// # Ok::<(), multiprocess::ConnectionError>(())
    /// ```
    pub fn poll(&self, timeout: Duration) -> Result<bool, ConnectionError> {
        if !self.readable {
            return Err(ConnectionError::WrongDirection(
                "this end of a one-way pipe only sends",
            ));
        }
        Ok(!wait(&[self], Some(timeout))?.is_empty())
    }

    /// Whether a message is ready without looking at the socket: one waits in the shared ring,
    /// or a frame is partly received. `try_lock`: a thread blocked in `recv` holds the state,
    /// and this must not wait for it (the socket and the ring answer then).
    fn ready_now(&self) -> bool {
        self.fast.as_ref().is_some_and(Fast::inbound_ready)
            || self
                .recv_state
                .try_lock()
                .is_ok_and(|s| s.header_got > 0 || s.socket_pending)
    }

    /// Another handle on the same end, for another thread or to pass to a second process (as
    /// `std`'s `UnixStream::try_clone`). Messages sent through either are whole and in each
    /// sender's order; each message is received by exactly one of them.
    ///
    /// # Errors
    /// When the system is out of descriptors.
    ///
    /// # Examples
    /// ```
    /// let (a, b) = multiprocess::Pipe::new()?;
    /// let a2 = a.try_clone()?;
    /// a2.send(&"from the clone")?;
    /// assert_eq!(b.recv::<String>()?, "from the clone");
    /// # drop(a); Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_clone(&self) -> io::Result<Connection> {
        let _birth = handle::birth();
        let fd = socket::dup(self.fd.as_fd())?;
        let mut c = Connection::with_fast(
            fd,
            self.readable,
            self.writable,
            self.fast.as_ref().map(Fast::clone_end),
        );
        c.framing = self.framing;
        c.set_max_message_len(self.max_message_len());
        Ok(c)
    }

    /// Writes `value` into the pipe's shared memory at `offset` as a hostile peer could (tests
    /// only; not part of the API). Returns whether this end has a shared ring.
    #[doc(hidden)]
    pub fn __poke_ring(&self, offset: usize, value: u64) -> bool {
        match &self.fast {
            Some(f) => {
                f.poke(offset, value);
                true
            }
            None => false,
        }
    }

    /// Closes this end (Python's `close`). Dropping it does the same.
    pub fn close(self) {}

    fn lock_recv(&self) -> Result<std::sync::MutexGuard<'_, RecvState>, ConnectionError> {
        if !self.readable {
            return Err(ConnectionError::WrongDirection(
                "this end of a one-way pipe only sends",
            ));
        }
        if self.broken.load(Ordering::Relaxed) {
            return Err(ConnectionError::Malformed(
                "an earlier frame was malformed (or too large, on a Listener or Client \
                 connection); this connection no longer receives"
                    .into(),
            ));
        }
        Ok(self.recv_state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Receives the next message, from the shared ring or the socket, into `sink`.
    fn receive<S: Sink>(&self, wait: Wait, sink: S) -> Result<S::Out, ConnectionError> {
        let mut st = self.lock_recv()?;
        let Some(fast) = &self.fast else {
            return sink.frame(self, &mut st, wait);
        };
        let deadline = wait.deadline();
        let reader = fast.lock_reader(deadline).ok_or(ConnectionError::Timeout)?;
        if reader.frame_in_progress() && !st.socket_pending {
            self.broken.store(true, Ordering::Relaxed);
            return Err(ConnectionError::Malformed(
                "another holder of this end stopped in the middle of a message (it died, or \
                 gave up on a timeout); the next message's start cannot be found, so this end \
                 no longer receives"
                    .into(),
            ));
        }
        loop {
            if st.socket_pending || st.header_got > 0 {
                let out = sink.frame(self, &mut st, wait);
                let done = !matches!(out, Err(ConnectionError::Timeout));
                if done {
                    reader.set_frame_in_progress(false);
                }
                if done && fast.inbound_poisoned() {
                    self.broken.store(true, Ordering::Relaxed);
                    return Err(ConnectionError::Malformed(
                        "a sender on this pipe died in the middle of a message; the messages \
                         after it cannot be told apart, so this end no longer receives"
                            .into(),
                    ));
                }
                return out;
            }
            match reader.next() {
                Err(why) => {
                    self.broken.store(true, Ordering::Relaxed);
                    return Err(ConnectionError::Malformed(why));
                }
                Ok(Next::Data(bytes)) => {
                    let (len, max) = (bytes.len() as u64, self.max_len.load(Ordering::Relaxed));
                    let out = if len > max {
                        Err(ConnectionError::TooLarge { len, max })
                    } else {
                        sink.inline(bytes)
                    };
                    reader.consume();
                    return out;
                }
                Ok(Next::Socket) => {
                    reader.set_frame_in_progress(true);
                    reader.consume();
                    st.socket_pending = true;
                }
                Ok(Next::Empty) => self.wait_inbound(fast, deadline)?,
            }
        }
    }

    /// Waits until the inbound ring has a record: spins briefly, then sleeps on the doorbell
    /// and the socket (which tells that the peer is gone).
    fn wait_inbound(&self, fast: &Fast, deadline: Option<Instant>) -> Result<(), ConnectionError> {
        if fast.spin_for_inbound(deadline) {
            return Ok(());
        }
        loop {
            // The doorbell and the socket, as `wait` watches them; ready with an empty ring
            // means the socket has something: end of file, or bytes nobody announced.
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let ready = !wait(&[self], left)?.is_empty();
            if fast.inbound_ready() {
                return Ok(());
            }
            if ready {
                match socket::peek_eof(self.fd.as_fd())? {
                    Some(true) => return Err(ConnectionError::Eof),
                    Some(false) => {
                        self.broken.store(true, Ordering::Relaxed);
                        return Err(ConnectionError::Malformed(
                            "a frame arrived on the socket without its marker in the shared ring \
                             (is this end shared with a process that gave up in the middle of a \
                             message?)"
                                .into(),
                        ));
                    }
                    None => {}
                }
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(ConnectionError::Timeout);
            }
        }
    }

    /// Reads one whole frame from the socket (resuming a partly read one).
    fn recv_frame(&self, st: &mut RecvState, wait: Wait) -> Result<Frame, ConnectionError> {
        if st.len.is_none() {
            self.read_header(st, wait)?;
        }
        self.read_payload(st, wait)
    }

    /// Reads one frame from the socket into `buf` (straight in when it fits).
    fn recv_frame_into(
        &self,
        st: &mut RecvState,
        wait: Wait,
        buf: &mut [u8],
    ) -> Result<usize, ConnectionError> {
        if st.len.is_none() {
            self.read_header(st, wait)?;
        }
        let len = st.len.unwrap_or(0);
        if st.payload_got == 0 && len <= buf.len() as u64 && st.handles_lost.is_none() {
            // Straight into the caller's buffer.
            let len = len as usize;
            let mut got = 0;
            while got < len {
                match socket::read_some(self.fd.as_fd(), &mut buf[got..len]) {
                    Ok(0) => {
                        st.reset();
                        return Err(ConnectionError::Eof);
                    }
                    Ok(n) => got += n,
                    Err(e) => {
                        // The frame is lost part-way; resync is impossible.
                        self.broken.store(true, Ordering::Relaxed);
                        st.reset();
                        return Err(e.into());
                    }
                }
            }
            st.reset();
            return Ok(len);
        }
        let frame = self.read_payload(st, wait)?;
        if frame.payload.len() > buf.len() {
            return Err(ConnectionError::BufferTooShort(frame.payload));
        }
        buf[..frame.payload.len()].copy_from_slice(&frame.payload);
        Ok(frame.payload.len())
    }

    /// Waits until the socket is readable, or the deadline passes.
    fn wait_readable(&self, wait: Wait) -> Result<(), ConnectionError> {
        if let Wait::Until(deadline) = wait {
            let left = deadline.saturating_duration_since(Instant::now());
            if !socket::poll_readable(&[self.fd.as_fd()], Some(left))?[0] {
                return Err(ConnectionError::Timeout);
            }
        }
        Ok(())
    }

    fn read_header(&self, st: &mut RecvState, wait: Wait) -> Result<(), ConnectionError> {
        if self.framing == Framing::Python {
            return self.read_python_header(st, wait);
        }
        self.read_header_bytes(st, wait, HEADER)?;
        self.check_native_header(st)
    }

    /// CPython's header: `!i` length, or -1 then `!Q` length. A length over the limit is
    /// refused here, before any of the message is read (a peer announcing 2^62 bytes costs
    /// nothing), and the end stops receiving: what follows cannot be trusted to be in step.
    fn read_python_header(&self, st: &mut RecvState, wait: Wait) -> Result<(), ConnectionError> {
        self.read_header_bytes(st, wait, 4)?;
        let short = i32::from_be_bytes([st.header[0], st.header[1], st.header[2], st.header[3]]);
        let len = match short {
            -1 => {
                self.read_header_bytes(st, wait, 12)?;
                let mut long = [0u8; 8];
                long.copy_from_slice(&st.header[4..12]);
                u64::from_be_bytes(long)
            }
            n if n >= 0 => n as u64,
            n => {
                self.broken.store(true, Ordering::Relaxed);
                st.reset();
                return Err(ConnectionError::Malformed(format!(
                    "negative message length {n} in a header (is the peer speaking \
                     multiprocessing's protocol?)"
                )));
            }
        };
        let max = self.max_len.load(Ordering::Relaxed);
        if len > max {
            self.broken.store(true, Ordering::Relaxed);
            st.reset();
            return Err(ConnectionError::TooLarge { len, max });
        }
        if st.fds_truncated {
            // Descriptors are not announced in this framing: at least one more was sent.
            st.handles_lost = Some((st.fds.len() + 1, st.fds.len()));
            st.fds.clear();
        }
        st.len = Some(len);
        st.payload_got = 0;
        Ok(())
    }

    /// Reads the header buffer up to `need` bytes (resuming a partial read).
    fn read_header_bytes(
        &self,
        st: &mut RecvState,
        wait: Wait,
        need: usize,
    ) -> Result<(), ConnectionError> {
        while st.header_got < need {
            self.wait_readable(wait)?;
            let RecvState {
                header,
                header_got,
                fds,
                fds_truncated,
                carries_fds: st_carries,
                ..
            } = st;
            let plain = self.framing == Framing::Python
                && !*st_carries.get_or_insert_with(|| socket::is_unix(self.fd.as_fd()));
            let n = match if plain {
                socket::recv_plain(
                    self.fd.as_fd(),
                    &mut header[*header_got..need],
                    matches!(wait, Wait::Until(_)),
                )
            } else {
                socket::recv_some(
                    self.fd.as_fd(),
                    &mut header[*header_got..need],
                    fds,
                    matches!(wait, Wait::Until(_)),
                    fds_truncated,
                )
            } {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                st.reset();
                return Err(ConnectionError::Eof);
            }
            st.header_got += n;
        }
        Ok(())
    }

    fn check_native_header(&self, st: &mut RecvState) -> Result<(), ConnectionError> {
        let magic = u32::from_le_bytes(st.header[0..4].try_into().unwrap_or_default());
        let nfds = u32::from_le_bytes(st.header[4..8].try_into().unwrap_or_default()) as usize;
        let len = u64::from_le_bytes(st.header[8..16].try_into().unwrap_or_default());
        if magic == MAGIC && st.fds_truncated && st.fds.len() < nfds {
            // The kernel could not give this process the message's descriptors: that message
            // is lost, the stream is not. Its payload is read and dropped.
            st.handles_lost = Some((nfds, st.fds.len()));
            st.fds.clear();
            st.len = Some(len);
            st.payload_got = 0;
            return Ok(());
        }
        if magic != MAGIC || nfds != st.fds.len() {
            self.broken.store(true, Ordering::Relaxed);
            let why = if magic != MAGIC {
                format!("bad magic {magic:#010x} (is something else writing to this socket?)")
            } else {
                format!(
                    "header announces {nfds} descriptors, {} arrived",
                    st.fds.len()
                )
            };
            st.reset();
            return Err(ConnectionError::Malformed(why));
        }
        st.len = Some(len);
        st.payload_got = 0;
        Ok(())
    }

    fn read_payload(&self, st: &mut RecvState, wait: Wait) -> Result<Frame, ConnectionError> {
        let len = st.len.unwrap_or(0);
        let max = self.max_len.load(Ordering::Relaxed);
        if len > max || st.handles_lost.is_some() {
            return self.skip_payload(st, wait, len, max);
        }
        let Ok(len) = usize::try_from(len) else {
            return self.skip_payload(st, wait, len, max);
        };
        let mut progressed = false;
        while st.payload_got < len {
            // Honour the deadline even while data keeps coming; the next call resumes.
            if progressed && wait.expired() {
                return Err(ConnectionError::Timeout);
            }
            progressed = true;
            let got = st.payload_got;
            if got == st.payload.len() {
                // Room for what comes next, never for what is only announced: the first
                // chunk, then as much again as has arrived. An allocation that fails is an
                // error for this message, not an abort.
                let more = FIRST_CHUNK.max(got).min(len - got);
                if st.payload.try_reserve_exact(more).is_err() {
                    st.handles_lost = None;
                    st.len = Some(len as u64);
                    let _ = self.skip_payload(st, wait, len as u64, max);
                    return Err(ConnectionError::Io(io::Error::new(
                        io::ErrorKind::OutOfMemory,
                        format!("no memory for a message of {len} bytes; it was skipped"),
                    )));
                }
                st.payload.resize(got + more, 0);
            }
            let end = st.payload.len();
            let n = self.read_more(&mut st.payload[got..end], wait)?;
            if n == 0 {
                st.reset();
                return Err(ConnectionError::Eof);
            }
            st.payload_got += n;
        }
        let frame = Frame {
            payload: std::mem::take(&mut st.payload),
            fds: std::mem::take(&mut st.fds),
        };
        st.reset();
        Ok(frame)
    }

    /// Waits (as `wait` allows) for more of the payload and reads it into `buf`; `Ok(0)` is end
    /// of stream.
    fn read_more(&self, buf: &mut [u8], wait: Wait) -> Result<usize, ConnectionError> {
        loop {
            self.wait_readable(wait)?;
            let read = match wait {
                Wait::Forever => socket::read_some(self.fd.as_fd(), buf),
                // One read goes on while the sender keeps the socket fed, so a read with a
                // deadline takes at most a slice: the deadline is looked at between slices.
                Wait::Until(_) => {
                    let slice = buf.len().min(TIMED_READ_SLICE);
                    socket::recv_some(
                        self.fd.as_fd(),
                        &mut buf[..slice],
                        &mut Vec::new(),
                        true,
                        &mut false,
                    )
                }
            };
            match read {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return other.map_err(ConnectionError::from),
            }
        }
    }

    fn skip_payload(
        &self,
        st: &mut RecvState,
        wait: Wait,
        len: u64,
        max: u64,
    ) -> Result<Frame, ConnectionError> {
        let mut scratch = vec![0u8; 64 * 1024];
        let mut progressed = false;
        while (st.payload_got as u64) < len {
            if progressed && wait.expired() {
                return Err(ConnectionError::Timeout);
            }
            progressed = true;
            let want = ((len - st.payload_got as u64) as usize).min(scratch.len());
            let n = self.read_more(&mut scratch[..want], wait)?;
            if n == 0 {
                st.reset();
                return Err(ConnectionError::Eof);
            }
            st.payload_got += n;
        }
        let lost = st.handles_lost;
        st.reset();
        match lost {
            Some((announced, arrived)) => Err(ConnectionError::HandlesLost { announced, arrived }),
            None => Err(ConnectionError::TooLarge { len, max }),
        }
    }
}

fn header(nfds: usize, len: u64) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&(nfds as u32).to_le_bytes());
    h[8..16].copy_from_slice(&len.to_le_bytes());
    h
}

/// CPython's header for a message of `len` bytes (`_send_bytes` in `connection.py`): the
/// length as a big-endian `i32`, or for more than `i32::MAX` bytes, -1 then the length as a
/// big-endian `u64`. Returns the buffer and how much of it is the header.
pub(crate) fn python_header(len: u64) -> ([u8; HEADER], usize) {
    let mut h = [0u8; HEADER];
    if len > i32::MAX as u64 {
        h[0..4].copy_from_slice(&(-1i32).to_be_bytes());
        h[4..12].copy_from_slice(&len.to_be_bytes());
        (h, 12)
    } else {
        h[0..4].copy_from_slice(&(len as i32).to_be_bytes());
        (h, 4)
    }
}

impl AsFd for Connection {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Connection {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_fd().as_raw_fd()
    }
}

impl Serialize for Connection {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        struct Fd<'a>(BorrowedFd<'a>);
        impl Serialize for Fd<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                handle::serialize_borrowed(self.0, serializer)
            }
        }
        #[derive(Serialize)]
        struct FastWire<'a>(u8, &'a Region, Fd<'a>, Fd<'a>);
        let fast = self.fast.as_ref().map(|f| {
            let (end, region, bell0, bell1) = f.parts();
            FastWire(end, region, Fd(bell0), Fd(bell1))
        });
        let mut t = serializer.serialize_tuple(5)?;
        t.serialize_element(&self.readable)?;
        t.serialize_element(&self.writable)?;
        t.serialize_element(&Fd(self.fd.as_fd()))?;
        t.serialize_element(&fast)?;
        t.serialize_element(&self.framing)?;
        t.end()
    }
}

impl<'de> Deserialize<'de> for Connection {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct FastWire(
            u8,
            Region,
            #[serde(with = "handle::fd")] OwnedFd,
            #[serde(with = "handle::fd")] OwnedFd,
        );
        #[derive(Deserialize)]
        struct Wire(
            bool,
            bool,
            #[serde(with = "handle::fd")] OwnedFd,
            Option<FastWire>,
            Framing,
        );
        let Wire(readable, writable, fd, fast, framing) = Wire::deserialize(deserializer)?;
        let fast = match fast {
            None => None,
            Some(FastWire(end, region, bell0, bell1)) => Some(
                Fast::from_parts(end, region, bell0, bell1).map_err(serde::de::Error::custom)?,
            ),
        };
        let mut c = Connection::with_fast(fd, readable, writable, fast);
        c.framing = framing;
        Ok(c)
    }
}

/// Something [`wait`] can wait on: a [`Connection`] (ready when a message or end of file can
/// be read), a [`Process`](crate::Process) (ready when it has ended), or a type of yours that
/// has a descriptor which becomes readable when it is ready (Python's objects with a
/// `fileno()`).
pub trait Waitable {
    /// The descriptor that becomes readable when the object is ready. For a [`Connection`]
    /// made by [`Pipe`] this is its socket, which becomes readable at end of file; messages
    /// in its shared memory are seen by [`wait`] itself.
    fn ready_fd(&self) -> Option<BorrowedFd<'_>>;

    /// The connection behind this object, for [`wait`]'s look at its shared memory.
    #[doc(hidden)]
    fn as_connection(&self) -> Option<&Connection> {
        None
    }
}

impl Waitable for Connection {
    fn ready_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.fd.as_fd())
    }

    fn as_connection(&self) -> Option<&Connection> {
        Some(self)
    }
}

/// Waits until at least one of `objects` is ready, or `timeout` passes (`None`: no limit), and
/// returns the indices of the ready ones (empty on timeout), like Python's
/// `multiprocessing.connection.wait`.
///
/// # Errors
/// An operating-system error.
///
/// # Examples
/// ```
/// use multiprocess::{connection::wait, Pipe};
/// use std::time::Duration;
///
/// let (a1, b1) = Pipe::new()?;
/// let (a2, b2) = Pipe::new()?;
/// b2.send(&7)?;
/// let ready = wait(&[&a1, &a2], Some(Duration::from_secs(5)))?;
/// assert_eq!(ready, [1]);
/// # drop((b1, a2)); Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn wait(objects: &[&dyn Waitable], timeout: Option<Duration>) -> io::Result<Vec<usize>> {
    /// Why a polled descriptor is in the list.
    enum Watch<'a> {
        /// Readable means ready.
        Plain,
        /// A shared ring's doorbell: ready only if the ring has a record after it rang.
        Bell(&'a Fast),
    }
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    loop {
        let mut ready = Vec::new();
        let mut watched: Vec<(usize, Watch<'_>)> = Vec::new();
        let mut fds: Vec<BorrowedFd<'_>> = Vec::new();
        for (i, o) in objects.iter().enumerate() {
            let conn = o.as_connection();
            if conn.is_some_and(Connection::ready_now) {
                ready.push(i);
                continue;
            }
            if let Some(fast) = conn.and_then(|c| c.fast.as_ref()) {
                if fast.arm() {
                    ready.push(i);
                    continue;
                }
                watched.push((i, Watch::Bell(fast)));
                fds.push(fast.inbound_bell());
            }
            match o.ready_fd() {
                Some(fd) => {
                    watched.push((i, Watch::Plain));
                    fds.push(fd);
                }
                None => ready.push(i),
            }
        }
        // Something is ready already: only look at the rest, do not wait.
        let left = if ready.is_empty() {
            deadline.map(|d| d.saturating_duration_since(Instant::now()))
        } else {
            Some(Duration::ZERO)
        };
        let polled = socket::poll_readable(&fds, left);
        for (k, (_, watch)) in watched.iter().enumerate() {
            if let Watch::Bell(fast) = watch {
                fast.disarm(polled.as_ref().map_or(true, |r| r[k]));
            }
        }
        let polled = polled?;
        for ((i, watch), fired) in watched.iter().zip(polled) {
            let is_ready = match watch {
                Watch::Plain => fired,
                Watch::Bell(fast) => fast.inbound_ready(),
            };
            if is_ready {
                ready.push(*i);
            }
        }
        ready.sort_unstable();
        ready.dedup();
        if !ready.is_empty() || deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(ready);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn python_header_forms() {
        let (h, n) = super::python_header(5);
        assert_eq!(&h[..n], [0, 0, 0, 5]);
        let (h, n) = super::python_header(i32::MAX as u64);
        assert_eq!(&h[..n], [0x7f, 0xff, 0xff, 0xff]);
        // Past 2 GiB: -1, then the length as 8 bytes (CPython's `_send_bytes`).
        let (h, n) = super::python_header(3 << 30);
        assert_eq!(&h[..n], [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0xc0, 0, 0, 0]);
    }
}
