//! Arenas: shared memory that carries the bytes of large batches and reports, so that they
//! cross between the pool and a worker without going through the socket.
//!
//! # Design note
//! Each worker has up to two arenas, both plain memfd mappings with no header of their own:
//! - its *inbox*, written by the pool (the batch's unit headers and arguments) and read by the
//!   worker;
//! - its *outbox*, written by the worker (the report's result headers and results) and read by
//!   the pool.
//!
//! An arena has one writer and one reader, and is never written while its reader may read
//! it. The message that says "the batch (or report) is in your arena, `len` bytes" is what
//! hands it to the reader (sending and receiving a message order the memory accesses around
//! them: through the pipe's shared ring by a release store and an acquire load, through the
//! socket by the kernel). Handing it back:
//! - the inbox: the worker reads it only while running the batch it came with, and sends that
//!   batch's report afterwards; the pool writes the inbox again only after that whole report
//!   arrived (it tracks which outstanding batch used the inbox);
//! - the outbox: the pool finishes with a report before it stores the number of outbox
//!   reports it consumed (a `u32`, wrapping) at offset 4 of the worker's one-page slot (offset
//!   0 is the started counter, see `worker.rs`), with `Release`; the worker writes its outbox
//!   only when that number, loaded with `Acquire`, equals the number of outbox reports it sent
//!   (otherwise its report goes inline in the socket frame). The `Release`/`Acquire` pair
//!   orders the pool's reads before the worker's next writes.
//!
//! An arena only grows: a writer that needs more makes a new memfd of the next power of two
//! (at least [`MIN_LEN`]) and sends its descriptor in a frame of its own before the frame that
//! uses it; the reader maps it and drops the old one. A worker that dies takes its arenas with
//! it: the pool drops its mappings with the rest of the worker's state. Memfds are anonymous,
//! so nothing is left in `/dev/shm`.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::region::Region;

/// The smallest arena (smaller frames go through the socket anyway).
pub(crate) const MIN_LEN: usize = 1 << 20;
/// Frames of at least this many bytes go through an arena when one is free.
pub(crate) const THRESHOLD: usize = 64 << 10;
/// The largest arena; larger frames go through the socket.
pub(crate) const MAX_LEN: usize = 1 << 30;

/// One arena (an inbox or an outbox), as mapped by one of its two sides.
#[derive(Debug)]
pub(crate) struct Arena {
    region: Region,
}

impl Arena {
    /// A new arena of at least `len` bytes.
    pub(crate) fn new(len: usize) -> io::Result<Arena> {
        let len = len.max(MIN_LEN).next_power_of_two();
        Ok(Arena {
            region: Region::new("multiprocess-pool-arena", len)?,
        })
    }

    /// Maps the arena the other side made.
    pub(crate) fn from_fd(fd: OwnedFd) -> io::Result<Arena> {
        Ok(Arena {
            region: Region::from_fd(fd)?,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.region.len()
    }

    /// The first `len` bytes, to read. `None` if the arena is shorter.
    ///
    /// # Safety
    /// The other side must not write the arena while the slice lives (the hand-over protocol
    /// in the module notes).
    pub(crate) unsafe fn bytes(&self, len: usize) -> Option<&[u8]> {
        if len > self.len() {
            return None;
        }
        // SAFETY: in bounds (checked); the mapping lives as long as `self`; by the caller's
        // guarantee nothing writes these bytes meanwhile (this process only writes through
        // `bytes_mut`, which needs `&mut self`).
        Some(unsafe { std::slice::from_raw_parts(self.region.as_ptr(), len) })
    }

    /// The first `len` bytes, to write. `None` if the arena is shorter.
    ///
    /// # Safety
    /// The other side must not read or write the arena while the slice lives (the hand-over
    /// protocol in the module notes).
    pub(crate) unsafe fn bytes_mut(&mut self, len: usize) -> Option<&mut [u8]> {
        if len > self.len() {
            return None;
        }
        // SAFETY: in bounds (checked); the mapping lives as long as `self`, which is borrowed
        // mutably, so this process has no other view of it; by the caller's guarantee the
        // other process does not touch it meanwhile.
        Some(unsafe { std::slice::from_raw_parts_mut(self.region.as_ptr(), len) })
    }
}

impl AsFd for Arena {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.region.as_fd()
    }
}
