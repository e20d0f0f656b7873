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

/// Takes a doorbell that arrived in a handle from another process, after checking that it is
/// an eventfd: a forged descriptor (a blocking pipe, a socket) would make `ring` or `drain`
/// block, or read and write another object.
pub(crate) fn adopt(fd: OwnedFd) -> Result<OwnedFd, String> {
    use std::os::fd::AsRawFd;
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    match link {
        Ok(l) if l.as_os_str() == "anon_inode:[eventfd]" => Ok(fd),
        Ok(l) => Err(format!(
            "a doorbell descriptor is not an eventfd ({})",
            l.display()
        )),
        Err(e) => Err(format!("a doorbell descriptor cannot be examined: {e}")),
    }
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

#[cfg(test)]
mod tests {
    #[test]
    fn only_eventfds_are_adopted() {
        assert!(super::adopt(super::new().unwrap()).is_ok());
        let (r, _w) = rustix::pipe::pipe().unwrap();
        let e = super::adopt(r).unwrap_err();
        assert!(e.contains("not an eventfd"), "{e}");
    }
}
