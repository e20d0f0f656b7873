//! `Pipe` and `Connection`: two connected ends that carry serde values, raw bytes and handles.
//!
//! # Wire format
//! Every message is one *frame* on a Unix stream socket:
//!
//! ```text
//! offset  size  field
//! 0       4     magic  "MPC1" (0x3143_504d little-endian): catches a stream that lost sync
//! 4       4     nfds   number of descriptors attached to the frame (SCM_RIGHTS, first byte)
//! 8       8     len    payload length in bytes, little-endian
//! 16      len   payload: postcard-encoded value, or the raw bytes of send_bytes
//! ```
//!
//! A frame is written by one `sendmsg` (header and payload as two slices, descriptors as
//! ancillary data), under a send lock, so frames from several threads never interleave. The
//! receiver keeps a partly read frame across calls, so `recv_timeout` can give up in the middle
//! of a frame and a later call resumes where it stopped.
//!
//! Bad input never hangs or panics: a peer that closed gives [`ConnectionError::Eof`]; a frame
//! longer than the receiver's limit is skipped and reported as
//! [`ConnectionError::TooLarge`] (the connection stays usable); a payload that does not decode
//! as the requested type is consumed and reported as [`ConnectionError::Decode`] (usable); a
//! header that is not a header ([`ConnectionError::Malformed`]) means the stream lost its
//! framing, so the connection is closed for receiving and says so on every later call.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::handle;
use crate::sys::socket;

const MAGIC: u32 = u32::from_le_bytes(*b"MPC1");
const HEADER: usize = 16;
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
    /// The ends are a Unix `socketpair`.
    ///
    /// # Errors
    /// When the system is out of descriptors or memory.
    #[allow(clippy::new_ret_no_self)]
    pub fn new() -> io::Result<(Connection, Connection)> {
        let (a, b) = socket::socketpair()?;
        Ok((
            Connection::from_fd(a, true, true),
            Connection::from_fd(b, true, true),
        ))
    }

    /// A one-way pair `(receiver, sender)`, in Python's order for `Pipe(duplex=False)`.
    ///
    /// It is a socketpair shut down in the other direction (not a `pipe(2)`), so that handles
    /// can travel through it too.
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
        let (r, w) = socket::socketpair()?;
        socket::shutdown(r.as_fd(), false)?;
        socket::shutdown(w.as_fd(), true)?;
        Ok((
            Connection::from_fd(r, true, false),
            Connection::from_fd(w, false, true),
        ))
    }
}

/// Why a [`Connection`] operation failed.
#[derive(Debug)]
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
    /// Sending on the receiving end of a one-way pipe, or receiving on the sending end.
    WrongDirection(&'static str),
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
            ConnectionError::WrongDirection(why) => f.write_str(why),
            ConnectionError::Io(e) => write!(f, "connection i/o error: {e}"),
        }
    }
}

impl std::error::Error for ConnectionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConnectionError::Io(e) => Some(e),
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
            .finish()
    }
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
}

impl RecvState {
    fn reset(&mut self) {
        self.header_got = 0;
        self.len = None;
        self.payload_got = 0;
        self.fds.clear();
    }
}

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

impl Connection {
    pub(crate) fn from_fd(fd: OwnedFd, readable: bool, writable: bool) -> Connection {
        Connection {
            fd: handle::TrackedFd::new(fd),
            readable,
            writable,
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
        let enc = handle::encode_into(value, vec![0u8; HEADER])
            .map_err(|e| ConnectionError::Encode(e.0))?;
        let handle::Encoded {
            mut bytes,
            fds: raw,
        } = enc;
        // SAFETY: `value` is borrowed for this whole call, so its descriptors stay open.
        #[allow(unsafe_code)]
        let fds = unsafe { handle::borrow_all(&raw) };
        let len = (bytes.len() - HEADER) as u64;
        bytes[..HEADER].copy_from_slice(&header(fds.len(), len));
        self.send_parts(&[&bytes], &fds)
    }

    /// Sends an already encoded message with its descriptors.
    pub(crate) fn send_encoded(
        &self,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ConnectionError> {
        let h = header(fds.len(), payload.len() as u64);
        self.send_parts(&[&h, payload], fds)
    }

    /// Sends one message whose payload is the concatenation of `parts` (no copy into one
    /// buffer), with its descriptors.
    pub(crate) fn send_encoded_parts(
        &self,
        parts: &[&[u8]],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ConnectionError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let h = header(fds.len(), len as u64);
        let mut all: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
        all.push(&h);
        all.extend_from_slice(parts);
        self.send_parts(&all, fds)
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

    fn send_parts(&self, parts: &[&[u8]], fds: &[BorrowedFd<'_>]) -> Result<(), ConnectionError> {
        if !self.writable {
            return Err(ConnectionError::WrongDirection(
                "this end of a one-way pipe only receives",
            ));
        }
        let _guard = self.send_lock.lock().unwrap_or_else(|p| p.into_inner());
        socket::send_all(self.fd.as_fd(), parts, fds).map_err(ConnectionError::from)
    }

    /// Receives a serde value, blocking until one arrives.
    ///
    /// # Errors
    /// [`ConnectionError::Eof`] when the other end closed and nothing is left;
    /// [`ConnectionError::Decode`] when the message is not a `T` (it is consumed); see
    /// [`ConnectionError`] for the rest.
    pub fn recv<T: DeserializeOwned>(&self) -> Result<T, ConnectionError> {
        let frame = self.recv_frame(Wait::Forever)?;
        handle::decode(&frame.payload, frame.fds).map_err(|e| ConnectionError::Decode(e.0))
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
        let frame = self.recv_frame(Wait::Until(Instant::now() + timeout))?;
        handle::decode(&frame.payload, frame.fds).map_err(|e| ConnectionError::Decode(e.0))
    }

    /// Receives one frame as bytes plus the descriptors that came with it.
    pub(crate) fn recv_raw_timeout(
        &self,
        timeout: Duration,
    ) -> Result<(Vec<u8>, Vec<OwnedFd>), ConnectionError> {
        let frame = self.recv_frame(Wait::Until(Instant::now() + timeout))?;
        Ok((frame.payload, frame.fds))
    }

    /// Receives one message as raw bytes (Python's `recv_bytes`). Descriptors that came with
    /// it are closed.
    ///
    /// # Errors
    /// As [`recv`](Self::recv).
    pub fn recv_bytes(&self) -> Result<Vec<u8>, ConnectionError> {
        Ok(self.recv_frame(Wait::Forever)?.payload)
    }

    /// Receives one message as raw bytes, waiting at most `timeout`.
    ///
    /// # Errors
    /// As [`recv_timeout`](Self::recv_timeout).
    pub fn recv_bytes_timeout(&self, timeout: Duration) -> Result<Vec<u8>, ConnectionError> {
        Ok(self
            .recv_frame(Wait::Until(Instant::now() + timeout))?
            .payload)
    }

    /// Receives one message into `buf` and returns its length (Python's `recv_bytes_into`).
    ///
    /// # Errors
    /// [`ConnectionError::BufferTooShort`] carrying the whole message when it does not fit;
    /// otherwise as [`recv_bytes`](Self::recv_bytes).
    pub fn recv_bytes_into(&self, buf: &mut [u8]) -> Result<usize, ConnectionError> {
        let mut st = self.lock_recv()?;
        if st.len.is_none() {
            self.read_header(&mut st, Wait::Forever)?;
        }
        let len = st.len.unwrap_or(0);
        if st.payload_got == 0 && len <= buf.len() as u64 {
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
        let frame = self.read_payload(&mut st, Wait::Forever)?;
        if frame.payload.len() > buf.len() {
            return Err(ConnectionError::BufferTooShort(frame.payload));
        }
        buf[..frame.payload.len()].copy_from_slice(&frame.payload);
        Ok(frame.payload.len())
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
        // A partly received frame counts as ready. `try_lock`: a thread blocked in `recv` holds
        // the state, and `poll` must not wait for it; the socket answers then.
        if self.recv_state.try_lock().is_ok_and(|s| s.header_got > 0) {
            return Ok(true);
        }
        Ok(socket::poll_readable(&[self.fd.as_fd()], Some(timeout))?[0])
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
                "an earlier frame was malformed; this connection no longer receives".into(),
            ));
        }
        Ok(self.recv_state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn recv_frame(&self, wait: Wait) -> Result<Frame, ConnectionError> {
        let mut st = self.lock_recv()?;
        if st.len.is_none() {
            self.read_header(&mut st, wait)?;
        }
        self.read_payload(&mut st, wait)
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
        while st.header_got < HEADER {
            self.wait_readable(wait)?;
            let RecvState {
                header,
                header_got,
                fds,
                ..
            } = st;
            let n = match socket::recv_some(
                self.fd.as_fd(),
                &mut header[*header_got..],
                fds,
                matches!(wait, Wait::Until(_)),
            ) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    self.broken.store(true, Ordering::Relaxed);
                    st.reset();
                    return Err(ConnectionError::Malformed(e.to_string()));
                }
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                st.reset();
                return Err(ConnectionError::Eof);
            }
            st.header_got += n;
        }
        let magic = u32::from_le_bytes(st.header[0..4].try_into().unwrap_or_default());
        let nfds = u32::from_le_bytes(st.header[4..8].try_into().unwrap_or_default()) as usize;
        let len = u64::from_le_bytes(st.header[8..16].try_into().unwrap_or_default());
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
        if len > max {
            return self.skip_payload(st, wait, len, max);
        }
        let len = len as usize;
        if st.payload_got == 0 {
            st.payload = vec![0u8; len];
        }
        while st.payload_got < len {
            let got = st.payload_got;
            let n = self.read_more(&mut st.payload[got..len], wait)?;
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
                Wait::Until(_) => socket::recv_some(self.fd.as_fd(), buf, &mut Vec::new(), true),
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
        while (st.payload_got as u64) < len {
            let want = ((len - st.payload_got as u64) as usize).min(scratch.len());
            let n = self.read_more(&mut scratch[..want], wait)?;
            if n == 0 {
                st.reset();
                return Err(ConnectionError::Eof);
            }
            st.payload_got += n;
        }
        st.reset();
        Err(ConnectionError::TooLarge { len, max })
    }
}

fn header(nfds: usize, len: u64) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&(nfds as u32).to_le_bytes());
    h[8..16].copy_from_slice(&len.to_le_bytes());
    h
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
        let mut t = serializer.serialize_tuple(3)?;
        t.serialize_element(&self.readable)?;
        t.serialize_element(&self.writable)?;
        t.serialize_element(&Fd(self.fd.as_fd()))?;
        t.end()
    }
}

impl<'de> Deserialize<'de> for Connection {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Wire(bool, bool, #[serde(with = "handle::fd")] OwnedFd);
        let Wire(readable, writable, fd) = Wire::deserialize(deserializer)?;
        Ok(Connection::from_fd(fd, readable, writable))
    }
}

/// Something [`wait`] can wait on: a [`Connection`] (ready when a message or end of file can
/// be read) or a [`Process`](crate::Process) (ready when it has ended).
pub trait Waitable {
    /// The descriptor that becomes readable when the object is ready.
    fn ready_fd(&self) -> Option<BorrowedFd<'_>>;
}

impl Waitable for Connection {
    fn ready_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.fd.as_fd())
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
    let mut already = Vec::new();
    let mut fds: Vec<(usize, BorrowedFd<'_>)> = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        match o.ready_fd() {
            Some(fd) => fds.push((i, fd)),
            None => already.push(i),
        }
    }
    // Something is ready already: only look, do not wait.
    let timeout = if already.is_empty() {
        timeout
    } else {
        Some(Duration::ZERO)
    };
    let only_fds: Vec<BorrowedFd<'_>> = fds.iter().map(|(_, fd)| *fd).collect();
    let ready = socket::poll_readable(&only_fds, timeout)?;
    already.extend(
        fds.iter()
            .zip(ready)
            .filter(|(_, r)| *r)
            .map(|((i, _), _)| *i),
    );
    already.sort_unstable();
    Ok(already)
}
