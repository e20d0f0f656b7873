//! Listening and connecting sockets for `Listener` and `Client`: Unix paths, Linux abstract
//! names, TCP over IPv4 and IPv6.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags};

use crate::connection::Address;

/// A listening socket on `addr` (non-blocking, close-on-exec, `SO_REUSEADDR` for TCP as
/// Python sets it), and the address it got (a TCP port 0 becomes the chosen port).
/// Binding an address that a socket listens on already fails with `AddrInUse`.
pub(crate) fn listen(addr: &Address, backlog: i32) -> io::Result<(OwnedFd, Address)> {
    let (fd, bound): (OwnedFd, Address) = match addr {
        Address::Tcp(a) => {
            // std sets SO_REUSEADDR on Unix before binding.
            let l = TcpListener::bind(a)?;
            let local = l.local_addr()?;
            l.set_nonblocking(true)?;
            (l.into(), Address::Tcp(local))
        }
        Address::Unix(p) => {
            if p.as_os_str().is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "an empty path is not an address to listen on",
                ));
            }
            let l = UnixListener::bind(p)?;
            l.set_nonblocking(true)?;
            (l.into(), addr.clone())
        }
        Address::Abstract(name) => {
            let l = UnixListener::bind_addr(&UnixAddr::from_abstract_name(name)?)?;
            l.set_nonblocking(true)?;
            (l.into(), addr.clone())
        }
    };
    rustix::net::listen(&fd, backlog.max(1))?;
    Ok((fd, bound))
}

/// Accepts one pending connection on a non-blocking listening socket: `None` when there is
/// none. The accepted socket blocks, is close-on-exec, and has `TCP_NODELAY` over TCP
/// (messages are whole writes; Nagle's delay would only add latency).
pub(crate) fn accept(listener: BorrowedFd<'_>) -> io::Result<Option<(OwnedFd, Address)>> {
    let (fd, peer) =
        match super::retry(|| rustix::net::acceptfrom_with(listener, SocketFlags::CLOEXEC)) {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            // The client gave up between the kernel's queue and us: nothing to accept.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::CONNABORTED.raw_os_error()) => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
    let peer = match peer {
        Some(any)
            if matches!(
                any.address_family(),
                AddressFamily::INET | AddressFamily::INET6
            ) =>
        {
            let _ = rustix::net::sockopt::set_tcp_nodelay(&fd, true);
            match SocketAddr::try_from(any) {
                Ok(a) => Address::Tcp(a),
                Err(_) => Address::Unix(PathBuf::new()),
            }
        }
        Some(any) => match SocketAddrUnix::try_from(any) {
            Ok(u) => unix_address(&u),
            Err(_) => Address::Unix(PathBuf::new()),
        },
        None => Address::Unix(PathBuf::new()),
    };
    Ok(Some((fd, peer)))
}

fn unix_address(u: &SocketAddrUnix) -> Address {
    if let Some(name) = u.abstract_name() {
        return Address::Abstract(name.to_vec());
    }
    match u.path_bytes() {
        Some(p) => {
            use std::os::unix::ffi::OsStrExt;
            Address::Unix(PathBuf::from(std::ffi::OsStr::from_bytes(p)))
        }
        None => Address::Unix(PathBuf::new()),
    }
}

/// A connected stream socket to `addr` (close-on-exec; `TCP_NODELAY` over TCP). `timeout`
/// bounds a TCP connect (a host that does not answer).
pub(crate) fn connect(addr: &Address, timeout: Option<Duration>) -> io::Result<OwnedFd> {
    Ok(match addr {
        Address::Tcp(a) => {
            let s = match timeout {
                Some(t) => TcpStream::connect_timeout(a, t)?,
                None => TcpStream::connect(a)?,
            };
            s.set_nodelay(true)?;
            s.into()
        }
        Address::Unix(p) => UnixStream::connect(p)?.into(),
        Address::Abstract(name) => {
            UnixStream::connect_addr(&UnixAddr::from_abstract_name(name)?)?.into()
        }
    })
}

/// Wakes every thread waiting on a listening socket (they see it readable; `accept` then
/// fails), without closing the descriptor, which another thread may be polling.
pub(crate) fn stop_listening(fd: BorrowedFd<'_>) {
    let _ = rustix::net::shutdown(fd, rustix::net::Shutdown::Both);
}

/// Whether a listening socket was stopped by [`stop_listening`] (or failed).
pub(crate) fn listener_failed(fd: BorrowedFd<'_>) -> bool {
    matches!(rustix::net::sockopt::socket_error(fd), Ok(Err(_)) | Err(_))
}

/// A fresh socket path in a new private directory (mode 0700) under the temporary directory,
/// as Python's default `AF_UNIX` address is. `TMPDIR` is used when it is an absolute path
/// short enough for a socket address (`sun_path` holds 107 bytes), else `/tmp`.
pub(crate) fn private_socket_path() -> io::Result<PathBuf> {
    let tmp = std::env::temp_dir();
    let base = if tmp.is_absolute() && tmp.as_os_str().len() <= 64 {
        tmp
    } else {
        PathBuf::from("/tmp")
    };
    for _ in 0..16 {
        let suffix: String = crate::lifecycle::random_bytes(6)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let dir = base.join(format!("mp-listener-{suffix}"));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir.join("socket")),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "could not make a private directory for a listener's socket",
    ))
}

/// Removes a listener's socket file, and its private directory if it made one.
pub(crate) fn remove_socket(path: &Path, private_dir: bool) {
    let _ = std::fs::remove_file(path);
    if private_dir {
        if let Some(dir) = path.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}
