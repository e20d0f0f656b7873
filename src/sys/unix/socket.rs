//! Stream sockets that carry file descriptors, and `poll`.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

use super::retry;

/// The most descriptors one message may carry.
pub(crate) const MAX_FDS: usize = 64;

/// A connected pair of `AF_UNIX` stream sockets, close-on-exec.
pub(crate) fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Shuts one direction of a socket down (`read`: no more receiving; else no more sending).
pub(crate) fn shutdown(fd: BorrowedFd<'_>, read: bool) -> io::Result<()> {
    let how = if read {
        rustix::net::Shutdown::Read
    } else {
        rustix::net::Shutdown::Write
    };
    Ok(rustix::net::shutdown(fd, how)?)
}

/// Shuts both directions of a socket down: its peer sees end of file, and a thread of this
/// process blocked on it wakes (used to end a manager's clients at shutdown).
pub(crate) fn shutdown_both(fd: BorrowedFd<'_>) -> io::Result<()> {
    Ok(rustix::net::shutdown(fd, rustix::net::Shutdown::Both)?)
}

/// Refuses a message with more descriptors than one `sendmsg` may carry.
pub(crate) fn check_fd_count(n: usize) -> io::Result<()> {
    if n > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a message can carry at most {MAX_FDS} handles, this one has {n}"),
        ));
    }
    Ok(())
}

/// Writes all of `parts` (in order) to a stream socket; `fds` travel with the first byte.
/// `EPIPE` is reported as an error, never as `SIGPIPE`.
pub(crate) fn send_all(
    fd: BorrowedFd<'_>,
    parts: &[&[u8]],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    check_fd_count(fds.len())?;
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut sent = 0usize;
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut first = !fds.is_empty();
    while sent < total || first {
        // Build the slices of what is left.
        let mut skip = sent;
        let mut iov: Vec<IoSlice<'_>> = Vec::with_capacity(parts.len());
        for p in parts {
            if skip >= p.len() {
                skip -= p.len();
                continue;
            }
            iov.push(IoSlice::new(&p[skip..]));
            skip = 0;
        }
        let n = if first {
            let mut control = SendAncillaryBuffer::new(&mut space);
            control.push(SendAncillaryMessage::ScmRights(fds));
            retry(|| rustix::net::sendmsg(fd, &iov, &mut control, SendFlags::NOSIGNAL))?
        } else {
            retry(|| {
                rustix::net::sendmsg(
                    fd,
                    &iov,
                    &mut SendAncillaryBuffer::default(),
                    SendFlags::NOSIGNAL,
                )
            })?
        };
        first = false;
        sent += n;
    }
    Ok(())
}

/// Reads up to `buf.len()` bytes; descriptors that arrive are pushed to `fds`.
/// `Ok(0)` is end of stream. With `nonblocking`, `WouldBlock` when nothing is there.
///
/// When the kernel had to drop descriptors (`MSG_CTRUNC`: this process is at its descriptor
/// limit, or more than [`MAX_FDS`] came), the bytes still count and `truncated` is set, so
/// the caller keeps the stream in step and reports the loss for that message alone.
pub(crate) fn recv_some(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    nonblocking: bool,
    truncated: &mut bool,
) -> io::Result<usize> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut flags = RecvFlags::CMSG_CLOEXEC;
    if nonblocking {
        flags |= RecvFlags::DONTWAIT;
    }
    let msg = retry(|| rustix::net::recvmsg(fd, &mut [IoSliceMut::new(buf)], &mut control, flags))?;
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = m {
            fds.extend(received);
        }
    }
    if msg.flags.contains(ReturnFlags::CTRUNC) {
        *truncated = true;
    }
    Ok(msg.bytes)
}

/// `recv` into `buf` from a socket that carries no descriptors (TCP); `Ok(0)` is end of
/// stream. With `nonblocking`, `WouldBlock` when nothing is there.
pub(crate) fn recv_plain(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    nonblocking: bool,
) -> io::Result<usize> {
    let flags = if nonblocking {
        RecvFlags::DONTWAIT
    } else {
        RecvFlags::empty()
    };
    Ok(retry(|| rustix::net::recv(fd, &mut *buf, flags))?.0)
}

/// Plain `read` into `buf` (no descriptors expected). `Ok(0)` is end of stream.
pub(crate) fn read_some(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    retry(|| rustix::io::read(fd, &mut *buf))
}

/// Which of `fds` are readable (or at end of stream, or in error), waiting at most `timeout`
/// (`None`: forever). Returns one flag per descriptor; all false on timeout.
pub(crate) fn poll_readable(
    fds: &[BorrowedFd<'_>],
    timeout: Option<Duration>,
) -> io::Result<Vec<bool>> {
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    loop {
        let mut pfds: Vec<PollFd<'_>> = fds
            .iter()
            .map(|fd| PollFd::new(fd, PollFlags::IN))
            .collect();
        let ts = deadline.map(|d| {
            let left = d.saturating_duration_since(std::time::Instant::now());
            rustix::event::Timespec {
                tv_sec: left.as_secs() as _,
                tv_nsec: left.subsec_nanos() as _,
            }
        });
        match rustix::event::poll(&mut pfds, ts.as_ref()) {
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(_) => return Ok(pfds.iter().map(|p| !p.revents().is_empty()).collect()),
        }
    }
}

/// Whether the peer of a stream socket is gone (closed, or its process ended), without
/// waiting: the kernel reports `POLLHUP` once both directions are shut down, which happens
/// when the peer's last descriptor is closed.
pub(crate) fn peer_closed(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut pfd = [PollFd::new(&fd, PollFlags::empty())];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    retry(|| rustix::event::poll(&mut pfd, Some(&zero)))?;
    Ok(pfd[0].revents().intersects(PollFlags::HUP | PollFlags::ERR))
}

/// Without waiting or consuming: `Some(true)` at end of stream, `Some(false)` when bytes are
/// waiting, `None` when nothing is there yet.
pub(crate) fn peek_eof(fd: BorrowedFd<'_>) -> io::Result<Option<bool>> {
    let mut byte = [0u8; 1];
    match retry(|| rustix::net::recv(fd, &mut byte, RecvFlags::PEEK | RecvFlags::DONTWAIT)) {
        Ok((0, _)) => Ok(Some(true)),
        Ok(_) => Ok(Some(false)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether `fd` is a Unix-domain socket (descriptors can travel through it).
pub(crate) fn is_unix(fd: BorrowedFd<'_>) -> bool {
    rustix::net::sockopt::socket_domain(fd).is_ok_and(|d| d == AddressFamily::UNIX)
}

/// Raises the kernel's send and receive buffers of a socket (best effort).
pub(crate) fn set_buffer_sizes(fd: BorrowedFd<'_>, bytes: usize) {
    let _ = rustix::net::sockopt::set_socket_send_buffer_size(fd, bytes);
    let _ = rustix::net::sockopt::set_socket_recv_buffer_size(fd, bytes);
}

/// Duplicates a descriptor (close-on-exec) into a new owned one.
pub(crate) fn dup(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    fd.try_clone_to_owned()
}

/// `/dev/null`, opened once per process (kept open: `neutralize` needs it in forked children).
pub(crate) fn dev_null() -> Option<&'static std::fs::File> {
    static DEV_NULL: std::sync::OnceLock<Option<std::fs::File>> = std::sync::OnceLock::new();
    DEV_NULL
        .get_or_init(|| std::fs::File::open("/dev/null").ok())
        .as_ref()
}

/// Points descriptor number `fd` at `/dev/null`, dropping whatever it referred to while keeping
/// the number taken (in a forked child, for descriptors that belong to the parent's objects).
pub(crate) fn neutralize(fd: std::os::fd::RawFd) {
    use std::os::fd::AsRawFd;
    if let Some(null) = dev_null() {
        // SAFETY: dup3 on two descriptor numbers; `fd` is owned by an object that this forked
        // child will never use or drop, so replacing what the number refers to is invisible
        // to safe code.
        #[allow(unsafe_code)]
        unsafe {
            libc::dup3(null.as_raw_fd(), fd, libc::O_CLOEXEC)
        };
    }
}

/// Makes a descriptor survive `exec` (used between fork and exec only).
pub(crate) fn clear_cloexec(fd: impl AsFd) -> io::Result<()> {
    Ok(rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?)
}

/// Takes the descriptor number `fd` as the bootstrap socket a parent left open across exec
/// for this process, after checking what a stray or forged number cannot fake: above the
/// standard streams, open, and a Unix stream socket. A number that fails is not touched.
pub(crate) fn adopt_inherited_socket(fd: i32) -> Result<OwnedFd, String> {
    if fd <= 2 {
        return Err(format!(
            "descriptor {fd} is not a bootstrap socket (it must be above the standard streams)"
        ));
    }
    // SAFETY: fcntl(F_GETFD) and fstat on any number are harmless: a closed one is EBADF.
    let open = unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1;
    if !open {
        return Err(format!("descriptor {fd} is not open"));
    }
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is valid for writes of one stat.
    if unsafe { libc::fstat(fd, st.as_mut_ptr()) } != 0 {
        return Err(format!("descriptor {fd} cannot be examined"));
    }
    // SAFETY: fstat succeeded, so it wrote `st`.
    let st = unsafe { st.assume_init() };
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(format!("descriptor {fd} is not a socket"));
    }
    let mut ty: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `ty` and `len` are valid for writes; the option's value is a c_int.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut ty as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r != 0 || ty != libc::SOCK_STREAM {
        return Err(format!("descriptor {fd} is not a stream socket"));
    }
    // SAFETY: the descriptor is open, and this process takes it over: the bootstrap
    // protocol leaves it to the child alone, and nothing else in the process names it.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// The pid of the process that made the other end of the Unix socket `fd` (for a socketpair,
/// the process that called `socketpair`), from `SO_PEERCRED`.
pub(crate) fn peer_pid(fd: BorrowedFd<'_>) -> Option<i32> {
    let cred = rustix::net::sockopt::socket_peercred(fd).ok()?;
    Some(cred.pid.as_raw_nonzero().get())
}
