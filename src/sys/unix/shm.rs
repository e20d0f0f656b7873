//! Shared memory (memfd + mmap) and futexes on it.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};
use rustix::thread::futex;

/// The seals every memfd of the crate carries before it is shared: its size can change no
/// more (a peer that shrank it would make every other process's access past the new end a
/// SIGBUS), and no other seal can be added (a peer could forbid writing).
const SIZE_SEALS: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);

/// An anonymous shared-memory file of `len` bytes (zero-filled), close-on-exec, sealed
/// against any change of size (see [`SIZE_SEALS`]).
pub(crate) fn memfd(name: &str, len: usize) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    rustix::fs::ftruncate(&fd, len as u64)?;
    rustix::fs::fcntl_add_seals(&fd, SIZE_SEALS)?;
    Ok(fd)
}

/// Checks that a received descriptor is a memfd that cannot shrink (sealed as [`memfd`]
/// seals), so mapping its current length is safe for as long as the mapping lives.
pub(crate) fn check_sealed(fd: BorrowedFd<'_>) -> io::Result<()> {
    let seals = rustix::fs::fcntl_get_seals(fd).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a received shared-memory descriptor is not a sealable memfd ({e})"),
        )
    })?;
    if !seals.contains(SealFlags::SHRINK) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a received shared-memory descriptor is not sealed against shrinking: a peer \
             could truncate it under our mapping",
        ));
    }
    Ok(())
}

/// The size of the file behind `fd`.
pub(crate) fn file_len(fd: BorrowedFd<'_>) -> io::Result<usize> {
    Ok(rustix::fs::fstat(fd)?.st_size as usize)
}

/// A shared, read-write mapping of a whole file; unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory; what is stored in it decides thread safety, and the
// types built on it (atomics, locks) take care of that.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` shared and read-write.
    pub(crate) fn new(fd: impl AsFd, len: usize) -> io::Result<Mapping> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot map zero bytes",
            ));
        }
        // SAFETY: a fresh mapping at an address the kernel chooses aliases no Rust object.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                0,
            )?
        };
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Mapping { ptr, len })
    }

    /// The first byte; page-aligned.
    #[inline]
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The length in bytes.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` is exactly the mapping made in `new`, and nothing borrows it past
        // the owner's lifetime.
        unsafe {
            let _ = rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// How a futex wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Woken {
    /// Woken, or the value had already changed, or a signal interrupted: check again.
    Maybe,
    /// The timeout passed.
    TimedOut,
}

/// Sleeps while `word` holds `expected` (a shared futex: works across processes), at most
/// `timeout` (`None`: no limit).
pub(crate) fn futex_wait(
    word: &AtomicU32,
    expected: u32,
    timeout: Option<Duration>,
) -> io::Result<Woken> {
    let ts = timeout.map(|t| rustix::thread::futex::Timespec {
        tv_sec: t.as_secs() as _,
        tv_nsec: t.subsec_nanos() as _,
    });
    match futex::wait(word, futex::Flags::empty(), expected, ts.as_ref()) {
        Ok(()) | Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => Ok(Woken::Maybe),
        Err(rustix::io::Errno::TIMEDOUT) => Ok(Woken::TimedOut),
        Err(e) => Err(e.into()),
    }
}

/// Wakes up to `n` waiters of a word private to this process (waited on as private).
pub(crate) fn futex_wake_private(word: &AtomicU32, n: u32) -> usize {
    let n = n.min(i32::MAX as u32);
    futex::wake(word, futex::Flags::PRIVATE, n).unwrap_or(0)
}

/// Wakes up to `n` waiters of `word` in any process; returns how many were woken.
pub(crate) fn futex_wake(word: &AtomicU32, n: u32) -> usize {
    // The kernel reads the count as a signed int: `u32::MAX` would be -1 and wake one waiter.
    let n = n.min(i32::MAX as u32);
    futex::wake(word, futex::Flags::empty(), n).unwrap_or(0)
}
