//! Raw-syscall building blocks for the `raw/*` reference systems, on the
//! `libc` crate directly: fork, exec, wait, socketpair, read and write.

use std::ffi::{CStr, CString};
use std::io;
use std::os::raw::c_char;
use std::sync::atomic::{AtomicU32, AtomicU64};

use crate::Result;

/// An owned file descriptor, closed on drop.
#[derive(Debug)]
pub(crate) struct Fd(libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: we own this descriptor and close it exactly once.
        unsafe { libc::close(self.0) };
    }
}

/// Returns `Err(last_os_error)` when a syscall returned -1.
fn check(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

impl Fd {
    /// One read(2), retried on EINTR; 0 means end of file.
    pub(crate) fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
            let ret = unsafe { libc::read(self.0, buf.as_mut_ptr().cast(), buf.len()) };
            match check(ret) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }

    /// Fills `buf` completely. Returns `Ok(false)` on end of file before the
    /// first byte, an error on end of file in the middle.
    pub(crate) fn read_full(&self, buf: &mut [u8]) -> io::Result<bool> {
        let mut done = 0;
        while done < buf.len() {
            match self.read(&mut buf[done..])? {
                0 if done == 0 => return Ok(false),
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => done += n,
            }
        }
        Ok(true)
    }

    /// Writes all of `buf` with write(2), retried on EINTR and short writes.
    pub(crate) fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
            let ret = unsafe { libc::write(self.0, buf.as_ptr().cast(), buf.len()) };
            match check(ret) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
                Ok(n) => buf = &buf[n..],
            }
        }
        Ok(())
    }
}

/// An `AF_UNIX` `SOCK_STREAM` socketpair with default buffer sizes.
pub(crate) fn socketpair() -> io::Result<(Fd, Fd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors socketpair(2) writes.
    let ret = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    check(ret as libc::ssize_t)?;
    Ok((Fd(fds[0]), Fd(fds[1])))
}

/// A forked child process, to be waited for.
#[derive(Debug)]
#[must_use = "a child must be waited for"]
pub(crate) struct Child(libc::pid_t);

impl Child {
    /// waitpid(2) for the child; an error unless it exited with status 0.
    pub(crate) fn wait(self) -> Result<()> {
        let mut status = 0;
        loop {
            // SAFETY: `status` is a valid out-pointer; the pid is our child.
            let ret = unsafe { libc::waitpid(self.0, &mut status, 0) };
            match check(ret as libc::ssize_t) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
                Ok(_) => break,
            }
        }
        if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
            Ok(())
        } else {
            Err(format!("raw child {} ended with wait status {status:#x}", self.0).into())
        }
    }
}

/// fork(2); the child runs `body` and `_exit`s with the code it returns
/// (101 if it panics), never returning into the caller.
///
/// # Safety
/// If the process has other threads, `body` must only do async-signal-safe
/// things (the bodies here only read, write, close and exec).
pub(crate) unsafe fn fork(body: impl FnOnce() -> i32) -> io::Result<Child> {
    // SAFETY: the caller upholds fork's contract for the child side.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).unwrap_or(101);
        // SAFETY: _exit ends the child without running the parent's atexit
        // handlers or flushing its inherited stdio buffers.
        unsafe { libc::_exit(code) };
    }
    Ok(Child(pid))
}

/// Forks a child connected to the parent by a fresh [`socketpair`]: the
/// child runs `body` on its end, the parent gets the other end. Each side
/// closes the end it does not use, so each sees end of file when the other
/// closes its own.
///
/// # Safety
/// As for [`fork`].
pub(crate) unsafe fn fork_socketpair(body: impl FnOnce(&Fd) -> i32) -> io::Result<(Child, Fd)> {
    let (parent_end, child_end) = socketpair()?;
    let parent_fd = parent_end.0;
    let child_body = || {
        // SAFETY: closes the child's copy of the parent's end; the `Fd`
        // owning it is never dropped in the child, which `_exit`s.
        unsafe { libc::close(parent_fd) };
        body(&child_end)
    };
    // SAFETY: the caller upholds fork's contract for `body`; close is
    // async-signal-safe.
    let child = unsafe { fork(child_body) }?;
    drop(child_end);
    Ok((child, parent_end))
}

/// A program and its argv, prepared ahead of time so the forked child only
/// has to call execv(2).
#[derive(Debug)]
pub(crate) struct Command {
    path: CString,
    // Keeps the strings that `argv` points into alive.
    _args: Vec<CString>,
    argv: Vec<*const c_char>,
}

impl Command {
    pub(crate) fn new(path: &std::path::Path, args: &[&str]) -> Result<Self> {
        use std::os::unix::ffi::OsStrExt;
        let path = CString::new(path.as_os_str().as_bytes())?;
        let mut all = vec![path.clone()];
        for a in args {
            all.push(CString::new(*a)?);
        }
        let mut argv: Vec<*const c_char> = all.iter().map(|s| s.as_ptr()).collect();
        argv.push(std::ptr::null());
        Ok(Command {
            path,
            _args: all,
            argv,
        })
    }

    /// fork(2) + execv(2): the child exits with 127 if exec fails.
    pub(crate) fn spawn(&self) -> io::Result<Child> {
        let path: &CStr = &self.path;
        let argv = self.argv.as_ptr();
        let exec = || {
            // SAFETY: `path` and `argv` are NUL-terminated and outlive the call.
            unsafe { libc::execv(path.as_ptr(), argv) };
            127
        };
        // SAFETY: the child only calls execv (async-signal-safe) on strings
        // prepared before the fork, then _exit.
        unsafe { fork(exec) }
    }
}

/// A shared anonymous mapping, inherited by forked children.
pub(crate) struct Shm {
    ptr: *mut u8,
    len: usize,
}

impl Shm {
    pub(crate) fn new(len: usize) -> Result<Shm> {
        // SAFETY: a fresh anonymous shared mapping aliases nothing.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(Shm {
            ptr: ptr.cast(),
            len,
        })
    }

    pub(crate) fn atomic_u32(&self, offset: usize) -> &AtomicU32 {
        assert!(offset & 3 == 0 && offset + 4 <= self.len);
        // SAFETY: in bounds, aligned, zero-initialized shared memory used only atomically.
        unsafe { &*(self.ptr.add(offset) as *const AtomicU32) }
    }

    /// The raw bytes at `offset..offset + len` (for plain data next to the atomics).
    pub(crate) fn ptr(&self, offset: usize, len: usize) -> *mut u8 {
        assert!(offset + len <= self.len);
        self.ptr.wrapping_add(offset)
    }

    pub(crate) fn atomic_u64(&self, offset: usize) -> &AtomicU64 {
        assert!(offset & 7 == 0 && offset + 8 <= self.len);
        // SAFETY: as above.
        unsafe { &*(self.ptr.add(offset) as *const AtomicU64) }
    }
}

impl Drop for Shm {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

pub(crate) fn futex_wait(word: &AtomicU32, expected: u32) {
    // SAFETY: a FUTEX_WAIT on a valid, aligned, shared word; no timeout.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word as *const AtomicU32,
            libc::FUTEX_WAIT,
            expected,
            std::ptr::null::<libc::timespec>(),
        )
    };
}

pub(crate) fn futex_wake(word: &AtomicU32, n: i32) {
    // SAFETY: a FUTEX_WAKE on a valid, aligned, shared word.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word as *const AtomicU32,
            libc::FUTEX_WAKE,
            n,
        )
    };
}
