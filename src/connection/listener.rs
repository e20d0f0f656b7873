//! `Listener` and `Client`: connections between processes that did not start one another,
//! with CPython's framing and authkey handshake, so that either end may be a Python process.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::address::{Address, ToAddress};
use super::auth::{self, AuthenticationError, ServerStep};
use super::{Connection, ConnectionError, DEFAULT_MAX_MESSAGE_LEN};
use crate::handle;
use crate::sys::{net, process as sysproc, socket};

/// How long a client has to finish the authkey handshake, unless told otherwise.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Which key a handshake uses.
#[derive(Clone)]
enum Key {
    /// This process's [`authkey`](crate::CurrentProcess::authkey), read when the listener is
    /// bound or the client connects.
    Process,
    Given(Vec<u8>),
    /// No handshake (Python's `authkey=None` on a `Listener` or `Client`).
    None,
}

impl Key {
    fn resolve(&self) -> Option<Vec<u8>> {
        match self {
            Key::Process => Some(crate::lifecycle::authkey()),
            Key::Given(k) => Some(k.clone()),
            Key::None => None,
        }
    }
}

/// A socket that accepts connections, like Python's `multiprocessing.connection.Listener`.
///
/// Each accepted end is an ordinary [`Connection`] (send, receive, poll, [`wait`](super::wait),
/// pass it to a child) speaking CPython's framing, so the client may be a Python process.
/// Every client must first pass the authkey handshake: by default with this process's
/// [`authkey`](crate::CurrentProcess::authkey), which children inherit; see
/// [`ListenerBuilder::authkey`]. Handshakes run side by side, one frame at a time, so a
/// client that stalls never holds up the others; one that does not finish within the
/// handshake timeout is dropped.
///
/// **The authkey authenticates; it does not encrypt.** As Python's documentation warns,
/// everything after the handshake crosses the network in the clear, and a peer holding the
/// key is trusted with whatever the protocol on top lets it do. Across an untrusted network,
/// bind to `127.0.0.1` and reach it through a tunnel (SSH, WireGuard, a TLS proxy).
///
/// # Examples
/// ```
/// use multiprocess::connection::{Client, Listener};
/// use multiprocess::Process;
///
/// fn client(address: multiprocess::connection::Address) {
///     let conn = Client::connect(&address).unwrap();
///     conn.send(&"hello from a client").unwrap();
/// }
///
/// let listener = Listener::new()?; // a Unix socket in a private directory
/// let mut p = Process::new(client, listener.address().clone());
/// p.start()?;
/// let conn = listener.accept()?;
/// assert_eq!(conn.recv::<String>()?, "hello from a client");
/// p.join()?;
/// # Ok::<(), multiprocess::Error>(())
/// ```
pub struct Listener {
    fd: handle::TrackedFd,
    address: Address,
    key: Option<Vec<u8>>,
    handshake_timeout: Duration,
    /// The socket file to remove at close (and whether its private directory goes too), by
    /// the process that made it (a forked copy never removes it, as Python's finalizer).
    unlink: Option<(PathBuf, bool)>,
    creator: i32,
    closed: AtomicBool,
    pending: Mutex<Vec<Pending>>,
    last_accepted: Mutex<Option<Address>>,
}

/// A client whose handshake is under way.
struct Pending {
    conn: Connection,
    step: ServerStep,
    deadline: Instant,
    peer: Address,
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("address", &self.address)
            .field("authenticated", &self.key.is_some())
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish()
    }
}

/// Options for a [`Listener`] (Python's `Listener(address, family, backlog, authkey)`).
pub struct ListenerBuilder {
    address: Option<io::Result<Address>>,
    key: Key,
    backlog: i32,
    handshake_timeout: Duration,
}

impl fmt::Debug for ListenerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenerBuilder")
            .field("address", &self.address.as_ref().map(|a| a.as_ref().ok()))
            .field("backlog", &self.backlog)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl ListenerBuilder {
    /// Where to listen (default: a Unix socket in a new private temporary directory).
    pub fn address(mut self, address: impl ToAddress) -> Self {
        self.address = Some(address.to_address());
        self
    }

    /// The key clients must prove they hold (default: this process's
    /// [`authkey`](crate::CurrentProcess::authkey)).
    pub fn authkey(mut self, key: &[u8]) -> Self {
        self.key = Key::Given(key.to_vec());
        self
    }

    /// No authkey handshake: any process that can reach the address is accepted. Python's
    /// `Listener(authkey=None)`; only for peers that do not authenticate, on a socket only
    /// trusted processes can reach.
    pub fn no_authentication(mut self) -> Self {
        self.key = Key::None;
        self
    }

    /// How many connections the kernel queues before `accept` (default 128; Python's default
    /// is 1).
    pub fn backlog(mut self, backlog: i32) -> Self {
        self.backlog = backlog;
        self
    }

    /// How long a client has to complete the authkey handshake (default
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`]).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Binds and listens.
    ///
    /// # Errors
    /// The address is in use (a socket listens there already, or a file exists at the path),
    /// cannot be resolved, or the system refuses the socket.
    pub fn bind(self) -> Result<Listener, ConnectionError> {
        let (address, private) = match self.address {
            Some(a) => (a?, false),
            None => (Address::Unix(net::private_socket_path()?), true),
        };
        let _birth = handle::birth();
        let (fd, bound) = match net::listen(&address, self.backlog) {
            Ok(x) => x,
            Err(e) => {
                if let (true, Address::Unix(p)) = (private, &address) {
                    net::remove_socket(p, true);
                }
                return Err(e.into());
            }
        };
        let unlink = match &bound {
            Address::Unix(p) => Some((p.clone(), private)),
            _ => None,
        };
        Ok(Listener {
            fd: handle::TrackedFd::new(fd),
            address: bound,
            key: self.key.resolve(),
            handshake_timeout: self.handshake_timeout,
            unlink,
            creator: sysproc::getpid(),
            closed: AtomicBool::new(false),
            pending: Mutex::new(Vec::new()),
            last_accepted: Mutex::new(None),
        })
    }
}

impl Listener {
    /// A listener on a fresh Unix socket in a new private directory (mode 0700) under the
    /// temporary directory, authenticating with this process's authkey (Python's
    /// `Listener()`). [`address`](Self::address) says where; [`close`](Self::close) removes
    /// the socket and the directory.
    ///
    /// # Errors
    /// The system refuses the directory or the socket.
    pub fn new() -> Result<Listener, ConnectionError> {
        Listener::builder().bind()
    }

    /// A listener on `address`, authenticating with this process's authkey (Python's
    /// `Listener(address)`; `"127.0.0.1:6000"`, `("::1", 0)`, `"/tmp/app.sock"`, `"\0name"`).
    ///
    /// # Errors
    /// As [`ListenerBuilder::bind`].
    pub fn bind(address: impl ToAddress) -> Result<Listener, ConnectionError> {
        Listener::builder().address(address).bind()
    }

    /// Options: address, authkey, backlog, handshake timeout.
    pub fn builder() -> ListenerBuilder {
        ListenerBuilder {
            address: None,
            key: Key::Process,
            backlog: 128,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    /// The address this listener is bound to (a TCP port 0 shows the port the system chose).
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The address of the last accepted client (Python's `last_accepted`); a Unix client's
    /// is usually unnamed (an empty path).
    pub fn last_accepted(&self) -> Option<Address> {
        self.last_accepted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits for a client and returns its end once it passed the handshake (Python's
    /// `accept`).
    ///
    /// # Errors
    /// An error here concerns one client and the listener stays usable: call `accept` again.
    /// [`ConnectionError::Authentication`] when a client failed the handshake (a wrong key:
    /// [`AuthenticationError::DigestReceivedWrong`] or
    /// [`DigestSentRejected`](AuthenticationError::DigestSentRejected); garbage; a frame over
    /// 256 bytes; no answer within the handshake timeout), [`ConnectionError::Eof`] when one
    /// left in the middle of it. An `Io` error when the listener is closed.
    pub fn accept(&self) -> Result<Connection, ConnectionError> {
        self.accept_until(None)
    }

    /// As [`accept`](Self::accept), giving up with [`ConnectionError::Timeout`] after
    /// `timeout` (handshakes under way continue at the next call).
    ///
    /// # Errors
    /// As [`accept`](Self::accept), and `Timeout`.
    pub fn accept_timeout(&self, timeout: Duration) -> Result<Connection, ConnectionError> {
        self.accept_until(Instant::now().checked_add(timeout))
    }

    fn closed_error() -> ConnectionError {
        ConnectionError::Io(io::Error::new(
            io::ErrorKind::NotConnected,
            "the listener is closed",
        ))
    }

    fn accept_until(&self, deadline: Option<Instant>) -> Result<Connection, ConnectionError> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if self.closed.load(Ordering::Acquire) {
                pending.clear();
                return Err(Listener::closed_error());
            }
            let now = Instant::now();
            if let Some(i) = pending.iter().position(|p| now >= p.deadline) {
                pending.swap_remove(i);
                return Err(ConnectionError::Authentication(
                    AuthenticationError::Timeout(self.handshake_timeout),
                ));
            }
            let wake = pending
                .iter()
                .map(|p| p.deadline)
                .chain(deadline)
                .min()
                .map(|d| d.saturating_duration_since(now));
            let ready = {
                let mut fds: Vec<BorrowedFd<'_>> = vec![self.fd.as_fd()];
                fds.extend(pending.iter().map(|p| p.conn.as_fd()));
                socket::poll_readable(&fds, wake)?
            };
            if self.closed.load(Ordering::Acquire) {
                pending.clear();
                return Err(Listener::closed_error());
            }
            // Clients in the middle of their handshake, newest last.
            for i in (0..pending.len()).rev() {
                if !ready[i + 1] {
                    continue;
                }
                let frame = match pending[i].conn.recv_bytes_timeout(Duration::ZERO) {
                    Err(ConnectionError::Timeout) => continue,
                    Err(e) => {
                        pending.swap_remove(i);
                        return Err(e);
                    }
                    Ok(frame) => frame,
                };
                let p = pending.swap_remove(i);
                let key = self.key.as_deref().unwrap_or_default();
                match p.step.advance(&p.conn, key, &frame) {
                    Err(e) => return Err(e),
                    Ok(Some(step)) => pending.push(Pending { step, ..p }),
                    Ok(None) => {
                        p.conn.set_max_message_len(DEFAULT_MAX_MESSAGE_LEN);
                        return Ok(self.accepted(p.conn, p.peer));
                    }
                }
            }
            if ready[0] {
                if let Some((fd, peer)) = net::accept(self.fd.as_fd()).map_err(|e| {
                    if net::listener_failed(self.fd.as_fd()) || self.closed.load(Ordering::Acquire)
                    {
                        Listener::closed_error()
                    } else {
                        ConnectionError::from(e)
                    }
                })? {
                    let conn = {
                        let _birth = handle::birth();
                        Connection::python_framed(fd)
                    };
                    match &self.key {
                        None => return Ok(self.accepted(conn, peer)),
                        Some(_) => {
                            let step = ServerStep::start(&conn)?;
                            pending.push(Pending {
                                conn,
                                step,
                                deadline: Instant::now() + self.handshake_timeout,
                                peer,
                            });
                        }
                    }
                }
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(ConnectionError::Timeout);
            }
        }
    }

    fn accepted(&self, conn: Connection, peer: Address) -> Connection {
        *self.last_accepted.lock().unwrap_or_else(|p| p.into_inner()) = Some(peer);
        conn
    }

    /// Stops listening, and removes the socket file (and the private directory of a
    /// [`Listener::new`]) in the process that made it (Python's `close`). Threads waiting in
    /// [`accept`](Self::accept) return an error. Calling it again does nothing; dropping the
    /// listener closes it.
    pub fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        net::stop_listening(self.fd.as_fd());
        if let Some((path, private)) = &self.unlink {
            if sysproc::getpid() == self.creator {
                net::remove_socket(path, *private);
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.close();
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_fd().as_raw_fd()
    }
}

/// Connects to a [`Listener`] (Rust or Python), like Python's
/// `multiprocessing.connection.Client`.
///
/// # Examples
/// ```
/// use multiprocess::connection::{Client, Listener};
///
/// let listener = Listener::builder().address("127.0.0.1:0").authkey(b"secret").bind()?;
/// let address = listener.address().clone();
/// let t = std::thread::spawn(move || {
///     let conn = Client::builder().authkey(b"secret").connect(&address)?;
///     conn.send_bytes(b"ping")?;
///     Ok::<_, multiprocess::ConnectionError>(conn.recv_bytes()?)
/// });
/// let conn = listener.accept()?;
/// assert_eq!(conn.recv_bytes()?, b"ping");
/// conn.send_bytes(b"pong")?;
/// assert_eq!(t.join().unwrap()?, b"pong");
/// # Ok::<(), multiprocess::ConnectionError>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Client;

/// Options for [`Client`] (Python's `Client(address, family, authkey)`).
#[derive(Clone)]
pub struct ClientBuilder {
    key: Key,
    timeout: Duration,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to `address` and authenticates with this process's
    /// [`authkey`](crate::CurrentProcess::authkey).
    ///
    /// # Errors
    /// Nothing listens there, the handshake failed ([`ConnectionError::Authentication`]), or
    /// the system refused.
    pub fn connect(address: impl ToAddress) -> Result<Connection, ConnectionError> {
        Client::builder().connect(address)
    }

    /// Options: authkey, timeout.
    pub fn builder() -> ClientBuilder {
        ClientBuilder {
            key: Key::Process,
            timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}

impl ClientBuilder {
    /// The key to prove (default: this process's [`authkey`](crate::CurrentProcess::authkey)).
    pub fn authkey(mut self, key: &[u8]) -> Self {
        self.key = Key::Given(key.to_vec());
        self
    }

    /// No handshake, for a listener made without one (Python's `Client(address,
    /// authkey=None)` against `Listener(authkey=None)`).
    pub fn no_authentication(mut self) -> Self {
        self.key = Key::None;
        self
    }

    /// The longest a TCP connect and the handshake may take (default
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Connects and authenticates.
    ///
    /// # Errors
    /// As [`Client::connect`].
    pub fn connect(&self, address: impl ToAddress) -> Result<Connection, ConnectionError> {
        let address = address.to_address()?;
        let conn = {
            let _birth = handle::birth();
            Connection::python_framed(net::connect(&address, Some(self.timeout))?)
        };
        if let Some(key) = self.key.resolve() {
            auth::client_handshake(&conn, &key, self.timeout)?;
        }
        Ok(conn)
    }
}
