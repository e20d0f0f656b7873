//! Syscalls of the queue: the datagram socket that carries a queue message's descriptors. (The
//! queue's lock owners use the crate's one owner identity, `sys::sync`.)

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

use super::retry;
use super::socket::MAX_FDS;

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
