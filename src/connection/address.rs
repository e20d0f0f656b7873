//! Where a [`Listener`](super::Listener) listens and a [`Client`](super::Client) connects:
//! Python's address families `AF_UNIX` (paths and Linux abstract names) and `AF_INET` /
//! `AF_INET6`.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A socket address, as Python's `multiprocessing.connection` takes them.
///
/// Made from a string with [`ToAddress`]: `"\0name"` is a Linux abstract name, a string that
/// parses as `host:port` (`"127.0.0.1:6000"`, `"[::1]:6000"`, `"localhost:6000"`) is TCP, and
/// anything else (`"/tmp/my.sock"`, `"relative.sock"`) is a Unix socket path. Python's tuple
/// `('localhost', 6000)` is the Rust tuple `("localhost", 6000)`.
///
/// # Examples
/// ```
/// use multiprocess::connection::{Address, ToAddress};
///
/// assert!(matches!("127.0.0.1:6000".to_address()?, Address::Tcp(_)));
/// assert!(matches!("/tmp/app.sock".to_address()?, Address::Unix(_)));
/// assert_eq!("\0app".to_address()?, Address::Abstract(b"app".to_vec()));
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Address {
    /// A Unix socket at a path in the file system. The empty path is an unnamed socket (the
    /// address a connecting Unix client has).
    Unix(PathBuf),
    /// A Linux abstract Unix socket name (Python's `"\0name"`): no file, gone with its socket.
    Abstract(Vec<u8>),
    /// TCP, over IPv4 or IPv6.
    Tcp(SocketAddr),
}

impl Address {
    /// Whether this is a Unix-domain address (a path, unnamed, or abstract), through which
    /// handles can travel.
    pub fn is_unix(&self) -> bool {
        !matches!(self, Address::Tcp(_))
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(p) if p.as_os_str().is_empty() => f.write_str("(unnamed unix socket)"),
            Address::Unix(p) => write!(f, "{}", p.display()),
            Address::Abstract(name) => write!(f, "\\0{}", String::from_utf8_lossy(name)),
            Address::Tcp(a) => write!(f, "{a}"),
        }
    }
}

/// What [`Listener`](super::Listener) and [`Client`](super::Client) accept as an address.
pub trait ToAddress {
    /// The address (a host name is resolved here; the first address found is used).
    ///
    /// # Errors
    /// A host name that does not resolve.
    fn to_address(&self) -> io::Result<Address>;
}

impl ToAddress for Address {
    fn to_address(&self) -> io::Result<Address> {
        Ok(self.clone())
    }
}

impl<T: ToAddress + ?Sized> ToAddress for &T {
    fn to_address(&self) -> io::Result<Address> {
        (**self).to_address()
    }
}

impl ToAddress for str {
    fn to_address(&self) -> io::Result<Address> {
        if let Some(name) = self.strip_prefix('\0') {
            return Ok(Address::Abstract(name.as_bytes().to_vec()));
        }
        if self.contains('/') {
            return Ok(Address::Unix(PathBuf::from(self)));
        }
        if let Ok(a) = self.parse::<SocketAddr>() {
            return Ok(Address::Tcp(a));
        }
        if let Some((host, port)) = self.rsplit_once(':') {
            if let (false, Ok(port)) = (host.is_empty(), port.parse::<u16>()) {
                return (host, port).to_address();
            }
        }
        Ok(Address::Unix(PathBuf::from(self)))
    }
}

impl ToAddress for String {
    fn to_address(&self) -> io::Result<Address> {
        self.as_str().to_address()
    }
}

impl ToAddress for Path {
    fn to_address(&self) -> io::Result<Address> {
        Ok(Address::Unix(self.to_path_buf()))
    }
}

impl ToAddress for PathBuf {
    fn to_address(&self) -> io::Result<Address> {
        Ok(Address::Unix(self.clone()))
    }
}

impl ToAddress for SocketAddr {
    fn to_address(&self) -> io::Result<Address> {
        Ok(Address::Tcp(*self))
    }
}

impl ToAddress for (&str, u16) {
    fn to_address(&self) -> io::Result<Address> {
        let (host, port) = *self;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        (host, port)
            .to_socket_addrs()?
            .next()
            .map(Address::Tcp)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("host name {host:?} has no address"),
                )
            })
    }
}

impl ToAddress for (String, u16) {
    fn to_address(&self) -> io::Result<Address> {
        (self.0.as_str(), self.1).to_address()
    }
}

impl ToAddress for (IpAddr, u16) {
    fn to_address(&self) -> io::Result<Address> {
        Ok(Address::Tcp(SocketAddr::new(self.0, self.1)))
    }
}

impl ToAddress for (Ipv4Addr, u16) {
    fn to_address(&self) -> io::Result<Address> {
        Ok(Address::Tcp(SocketAddr::new(self.0.into(), self.1)))
    }
}

impl ToAddress for (Ipv6Addr, u16) {
    fn to_address(&self) -> io::Result<Address> {
        Ok(Address::Tcp(SocketAddr::new(self.0.into(), self.1)))
    }
}
