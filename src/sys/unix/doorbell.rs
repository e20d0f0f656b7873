//! Doorbells: an `eventfd` that a writer rings to wake a reader sleeping in `poll` (so a
//! shared-memory channel can be waited on together with sockets and pidfds).

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::event::EventfdFlags;

/// A new doorbell: a non-blocking, close-on-exec eventfd at zero.
pub(crate) fn new() -> io::Result<OwnedFd> {
    Ok(rustix::event::eventfd(
        0,
        EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK,
    )?)
}

/// Rings: makes the doorbell readable (adds one to its count).
pub(crate) fn ring(fd: BorrowedFd<'_>) {
    // Fails only when the count would overflow (2^64 - 2 rings unread): it is readable then.
    let _ = super::retry(|| rustix::io::write(fd, &1u64.to_ne_bytes()));
}

/// Resets the count to zero; whether it had been rung.
pub(crate) fn drain(fd: BorrowedFd<'_>) -> bool {
    let mut buf = [0u8; 8];
    matches!(super::retry(|| rustix::io::read(fd, &mut buf)), Ok(8))
}
