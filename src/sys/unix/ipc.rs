//! Syscalls of the queue: the calling process's pid (cached, reset in forked children), whether
//! a pid is still running, and the datagram socket that carries a queue message's descriptors.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

use super::retry;
use super::socket::MAX_FDS;

static PID: AtomicU32 = AtomicU32::new(0);
static ATFORK: Once = Once::new();

extern "C" fn forget_pid_in_child() {
    // Async-signal-safe: one atomic store.
    PID.store(0, Ordering::Relaxed);
}

/// The calling process's pid, without a syscall after the first call (`getpid` is a real
/// syscall in current glibc). A `pthread_atfork` child handler clears the cache, so a forked
/// child (by this crate or anyone else) asks the kernel again.
#[inline]
pub(crate) fn cached_pid() -> u32 {
    let pid = PID.load(Ordering::Relaxed);
    if pid != 0 {
        return pid;
    }
    fetch_pid()
}

#[cold]
fn fetch_pid() -> u32 {
    register_at_fork();
    let pid = rustix::process::getpid().as_raw_nonzero().get() as u32;
    PID.store(pid, Ordering::Relaxed);
    pid
}

/// Registers the fork handler that clears the cached pid (once per process).
pub(crate) fn register_at_fork() {
    ATFORK.call_once(|| {
        // SAFETY: registers a handler that only does an atomic store; no pointers are kept.
        unsafe { libc::pthread_atfork(None, None, Some(forget_pid_in_child)) };
    });
}

/// Whether process `pid` is still running: it exists and is not a zombie (a killed child
/// that its parent has not reaped yet is dead for this purpose).
pub(crate) fn pid_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    if r != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X") | Some("x"))
        }
        // /proc not mounted: trust kill().
        Err(e) if e.kind() == io::ErrorKind::NotFound => r == 0,
        Err(_) => true,
    }
}

/// A connected pair of `AF_UNIX` datagram sockets, close-on-exec.
pub(crate) fn dgram_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Sends one datagram with descriptors attached, without blocking: `WouldBlock` when the
/// socket's buffer is full.
pub(crate) fn send_dgram(
    fd: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    super::socket::check_fd_count(fds.len())?;
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    control.push(SendAncillaryMessage::ScmRights(fds));
    retry(|| {
        rustix::net::sendmsg(
            fd,
            &[IoSlice::new(bytes)],
            &mut control,
            SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
        )
    })?;
    Ok(())
}

/// Waits until `fd` is writable, at most `timeout`; whether it is.
pub(crate) fn poll_writable(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    let mut pfds = [PollFd::new(&fd, PollFlags::OUT)];
    let ts = rustix::event::Timespec {
        tv_sec: timeout.as_secs() as _,
        tv_nsec: timeout.subsec_nanos() as _,
    };
    match rustix::event::poll(&mut pfds, Some(&ts)) {
        Err(rustix::io::Errno::INTR) => Ok(false),
        Err(e) => Err(e.into()),
        Ok(_) => Ok(!pfds[0].revents().is_empty()),
    }
}

/// Peeks at the first bytes of the next datagram without taking it (and without receiving its
/// descriptors); `None` when there is none.
pub(crate) fn peek_dgram(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<usize>> {
    match retry(|| rustix::net::recv(fd, &mut *buf, RecvFlags::PEEK | RecvFlags::DONTWAIT)) {
        Ok((n, _)) => Ok(Some(n)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

/// Takes the next datagram with its descriptors; `None` when there is none.
pub(crate) fn recv_dgram(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<Option<usize>> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let flags = RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT;
    let msg = match retry(|| {
        rustix::net::recvmsg(fd, &mut [IoSliceMut::new(&mut *buf)], &mut control, flags)
    }) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
        Err(e) => return Err(e),
    };
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = m {
            fds.extend(received);
        }
    }
    Ok(Some(msg.bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_pid_is_alive_and_cached() {
        let me = cached_pid();
        assert_eq!(me, std::process::id());
        assert!(pid_alive(me));
        assert!(!pid_alive(0x3fff_fff0));
    }
}
