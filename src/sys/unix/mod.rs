//! The Unix (Linux) backend. Every raw syscall of the crate is in this folder.
#![allow(unsafe_code)]

pub(crate) mod build_id;
pub(crate) mod doorbell;
pub(crate) mod ipc;
pub(crate) mod named_shm;
pub(crate) mod net;
pub(crate) mod process;
pub(crate) mod reactor;
#[allow(dead_code)] // used by the queue and sync modules
pub(crate) mod shm;
pub(crate) mod socket;
pub(crate) mod sync;

use std::io;

/// Completes, in the parent, every one-time initialization that a forked child may need.
///
/// A `Once` that another thread is running when `fork` happens stays "running" forever in the
/// child, where no thread will finish it, and the child's first use of it blocks for good.
/// (Found as Fork children stuck in the `call_once` of `sync::current_thread` while a test
/// thread of the parent was taking its first lock; it hung about one run in six of a test
/// binary whose tests start Fork children from parallel threads.) After this call each of them
/// is complete, whatever other threads do, and the forking thread waits here for one that
/// another thread is in the middle of.
pub(crate) fn before_fork() {
    sync::register_at_fork();
    let _ = socket::dev_null();
    let _ = build_id::build_id();
}

/// Turns a `-1` return into the thread's `errno` as an `io::Error`.
pub(crate) fn cvt<T: Copy + PartialEq + From<i8>>(ret: T) -> io::Result<T> {
    if ret == T::from(-1) {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Like [`cvt`], retrying the call while it fails with `EINTR`.
pub(crate) fn cvt_r<T: Copy + PartialEq + From<i8>>(mut f: impl FnMut() -> T) -> io::Result<T> {
    loop {
        match cvt(f()) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Retries a rustix call while it fails with `EINTR`.
pub(crate) fn retry<T>(mut f: impl FnMut() -> rustix::io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(rustix::io::Errno::INTR) => continue,
            other => return other.map_err(io::Error::from),
        }
    }
}
