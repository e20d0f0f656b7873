//! The shared-memory ring under every queue, and its wake-up and recovery protocols.
//!
//! # Layout (version 3)
//! One memfd [`Region`]: a 4096-byte header, then the ring of `capacity` bytes (a power of
//! two). Fields that different roles write sit in different 128-byte slots, so a producer and
//! a consumer do not steal each other's cache lines:
//!
//! ```text
//! offset  field                       written by
//! 0       magic "MPQ1", version 3     creator (checked when a copy is mapped)
//! 8       capacity (bytes), maxsize   creator (maxsize in items, 0 = unbounded)
//! 16      closed, dropped, recovered  anyone (flags and statistics; closed: bit 0 closed,
//!                                     bit 1 corrupt)
//! 28      done                        consumers (task_done count; futex word of join)
//! 128     prod_lock (u64),            the producer holding prod_lock (lock_waiters:
//!         cached_head_gets, fd_seq,   producers waiting for the lock)
//!         prod_streaming, lock_waiters
//! 256     tail_puts (u64)             the producer holding prod_lock
//! 384     cons_lock (u64),            the consumer holding cons_lock (lock_waiters:
//!         cached_tail_puts,           consumers waiting for the lock)
//!         cons_state, lock_waiters
//! 512     head_gets (u64)             the consumer holding cons_lock
//! 640     not_empty                   event count: consumers waiting for messages
//! 768     not_full                    event count: producers waiting for room
//! 896     join_waiters                JoinableQueue::join
//! 4096    ring bytes
//! ```
//!
//! Positions are `u32` byte counters that wrap; `tail - head` (wrapping) is the bytes in use.
//! `tail_puts` packs the tail with the count of complete messages ever put (high half), and
//! `head_gets` the head with the count of complete messages ever taken, so one atomic store
//! publishes both and `qsize = puts - gets` is exact whenever the queue is quiet, whoever dies.
//!
//! # Records
//! Each record starts 8-aligned with an 8-byte header `len: u32, kind: u8, flags: u8, 0: u16`,
//! followed by `len` bytes padded to 8; records wrap around the ring end. Kinds: `WHOLE` (a
//! complete message), `FIRST`/`MIDDLE`/`LAST` (a message larger than a quarter of the ring,
//! streamed in chunks), `ABORT` (the stream that was open is abandoned). With flag `FDS` the
//! body of `WHOLE`/`FIRST` starts with a `u64` sequence number: the message's descriptors
//! travel as one datagram, carrying that number, over the queue's Unix datagram socket, sent
//! before the record is published; consumers skip older datagrams (their producer died) and
//! drop a message whose datagram is gone (its consumer died after taking it).
//!
//! # Locks and roles
//! Two locks: producers serialize on `prod_lock` (one producer writes at a time; a streamed
//! message holds it to its end, so chunks of two messages never interleave), consumers on
//! `cons_lock`. With one producer and one consumer each lock stays in its owner's cache. A lock
//! word holds the owner's identity, thread id (low half) and start time (high half), as the
//! crate's other robust locks (0: free; version 2 held a bare pid, which a reused pid kept
//! "alive"). A waiter registers on the lock's `lock_waiters` event count, re-reads the word,
//! and sleeps on the event count with a futex for at most 100 ms at a time; when a whole sleep
//! passes without any release, it checks whether the owner is alive (`sys::sync::thread_alive`:
//! the thread exists, is no zombie, and started at that time; a word naming the waiter itself is
//! stale) and, if not, takes the lock over with a compare-and-swap and repairs: a producer clears `prod_streaming` (bytes the dead producer
//! wrote beyond `tail` were never published, so they do not exist); a consumer that finds
//! `cons_state == READING` sets `SKIPPING`, so the rest of the dead consumer's half-read message
//! is skipped up to its `LAST` record. A lock is only released after `tail` / `head` are
//! published, so whatever a dead holder left published is whole.
//!
//! A consumer that is reading a streamed message and finds the ring empty checks
//! `prod_streaming` then `tail` (both acquire): if the stream is no longer open and nothing
//! new arrived, its producer died (or was taken over) mid-message, and the partial message is
//! discarded. When a whole tick passes without a chunk, it looks at the producer lock itself:
//! free (a streaming flag that no correct process leaves behind) or held by a dead owner, it
//! takes the lock, clears `prod_streaming` and releases, and discards the partial message; the
//! consumer then waits for the next message as long as its caller allows. With
//! a live producer that stalls, a consumer whose caller's time is up (`get_timeout`,
//! `get_nowait`) returns and sets `SKIPPING`: the rest of that message is lost. A consumer that
//! takes the lock and finds `READING` treats it as `SKIPPING` (nobody reads a stream without
//! holding the lock to its end). Every discarded message counts in `dropped` (see
//! `Queue::dropped`).
//!
//! # Trust
//! Every process that holds the queue can write all of it. Each shared word is read once into
//! a local and the local is checked before it is used: `head` and `tail` 8-aligned and
//! `tail - head <= capacity`; a record's kind and flags known, its length at most a quarter of
//! the ring and within the bytes published, the descriptor flag only on `WHOLE`/`FIRST` with
//! room for its sequence number. Offsets into the ring are masked (and record headers aligned)
//! by construction, and copies clamped to the ring, so no value of a shared word makes an access
//! outside the mapping. A violation sets the `corrupt` bit of `closed` and fails the operation
//! with `Fail::Corrupt` naming the field and values; every later operation of every process
//! fails the same way (a peer may clear the bit; the checks still hold). Lock words, states,
//! flags, counters and hints (`cached_*`) of any value cost at most a wrong message, a
//! take-over, or a wait that ends with its deadline. The capacity is read once, when a copy is
//! mapped, and checked against the mapping.
//!
//! # Wake-up protocol and orderings
//! Every sleeper sleeps on an event count (`not_empty`, `not_full`, `join` and the two
//! `lock_waiters`): bit 0 "someone may sleep", the rest an epoch. A consumer that finds the ring
//! empty spins briefly, then registers (`fetch_or(1)`, SeqCst), re-reads `tail_puts` and
//! `closed` (SeqCst), and sleeps on the word's value only if nothing changed. A producer stores
//! the new `tail_puts` (release), and later a `SeqCst` fence and a load of `not_empty`; if bit 0
//! is set it bumps the epoch and wakes all sleepers. By the fence rules of the SeqCst order,
//! either the consumer's re-read sees the new tail, or the producer's load sees the
//! registration and its bump makes the futex wait return at once. The same holds, mirrored,
//! for producers waiting for room (`not_full`, `head_gets`), for lock waiters (the lock word),
//! and `close` bumps both queue words.
//!
//! A put therefore costs two full barriers: the lock's compare-and-swap, and one fence after
//! it has stored the tail and freed the lock (both plain release stores), which serves the
//! wake-up of consumers and of producers waiting for the lock at once; a get likewise (head,
//! then lock). A producer or consumer that keeps its lock (a streamed message) publishes with
//! a store and a fence of its own. Record bytes are written before the tail's release store,
//! so they are visible to whoever acquires the new tail; consumers read record bytes only
//! after an acquire load of `tail_puts` (or of `cons_lock`, after a consumer that made that
//! load released it). While nobody waits, a message costs no syscall.
//!
//! # Batching while one side is slower
//! The side that waits looks at the other side's position only every [`POLL_PAUSES`] pauses,
//! so that it does not pull that position's cache line away at every message. A producer facing
//! a full ring also waits, while it spins, until [`ROOM_BATCH`] bytes (or an eighth of
//! `maxsize` items) are free rather than its own record's, and then puts from its cached view of
//! the head: while consumers are the slower side, it reads their position once per batch, not
//! once per message. It goes on with less when the spin ends, and every deadline is checked
//! against the exact need.
//!
//! # Keeping off the producers' heels
//! A consumer that has caught up reads the very cache lines a producer is writing (the record
//! and `tail_puts`); each message then moves both lines between the cores and stalls the
//! producer at its barriers, so a consumer faster than its producers slows them down. A
//! consumer that finds fewer than [`SLIP`] bytes published after its head therefore lets the
//! producers get ahead for at most [`SLIP_LOOKS`] looks before it takes what is there (without
//! holding its lock meanwhile): a stream is taken in batches. A consumer that found the ring
//! empty takes a message as soon as one comes (waiting for a batch there too cost a queue
//! round trip twice its time and gained no throughput).
//!
//! # Small messages
//! Messages of at most [`SMALL`] bytes without descriptors take a short path on both sides
//! ([`Ring::put_small`], [`Ring::get_small`]): a [`Small`] buffer on the caller's stack, copied
//! to and from the ring a word at a time; anything unusual (a busy lock, no room, a stream, a
//! record with descriptors) falls to the general path. A consumer decodes after the release,
//! so no `Deserialize` code runs while the queue is locked (puts, likewise, serialize before
//! they lock).

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::small::{Small, SMALL};
use crate::region::Region;
use crate::sys::shm::{futex_wait, futex_wake, Woken};
use crate::sys::sync::{current_thread, thread_alive};

const MAGIC: u32 = u32::from_le_bytes(*b"MPQ1");
const VERSION: u32 = 3;
const HEADER_LEN: usize = 4096;
/// The smallest and largest ring, in bytes.
pub(crate) const MIN_CAPACITY: usize = 4096;
pub(crate) const MAX_CAPACITY: usize = 1 << 30;

const REC: u32 = 8;
const WHOLE: u8 = 1;
const FIRST: u8 = 2;
const MIDDLE: u8 = 3;
const LAST: u8 = 4;
const ABORT: u8 = 5;
const FLAG_FDS: u8 = 1;

/// Bit of `closed`: the queue's memory was found corrupted (the queue has failed for every
/// process; bit 0 is the ordinary close).
const CORRUPT: u32 = 2;

const IDLE: u32 = 0;
const READING: u32 = 1;
const SKIPPING: u32 = 2;

/// How long a waiter sleeps before it checks that the lock's owner is alive.
const TICK: Duration = Duration::from_millis(100);
/// Busy checks before a futex sleep.
const SPIN: u32 = 200;
/// Bytes a producer facing a full ring would like freed before it goes on (see
/// `wait_for_consumers`); it goes on with less when its spin ends.
const ROOM_BATCH: u32 = 4096;
/// Pauses between two looks at the other side's position while spinning.
const POLL_PAUSES: u32 = 32;
/// Bytes a consumer that caught up with the producers lets them get ahead before it goes on
/// (at most an eighth of the ring), and how many looks it waits for them at most: see
/// "Keeping off the producers' heels" in the module docs.
const SLIP: u32 = 4096;
const SLIP_LOOKS: u32 = 2;

#[repr(C, align(128))]
struct Meta {
    magic: AtomicU32,
    version: AtomicU32,
    capacity: AtomicU32,
    maxsize: AtomicU32,
    closed: AtomicU32,
    dropped: AtomicU32,
    recovered: AtomicU32,
    done: AtomicU32,
}

#[repr(C, align(128))]
struct Prod {
    /// The owner's identity ([`owner`]), 0 when free.
    lock: AtomicU64,
    cached_head_gets: AtomicU64,
    fd_seq: AtomicU64,
    streaming: AtomicU32,
    /// Event count of the producers waiting for `lock` (see [`Waiters`]).
    lock_waiters: AtomicU32,
}

#[repr(C, align(128))]
struct Cons {
    /// The owner's identity ([`owner`]), 0 when free.
    lock: AtomicU64,
    cached_tail_puts: AtomicU64,
    state: AtomicU32,
    /// Event count of the consumers waiting for `lock`.
    lock_waiters: AtomicU32,
}

#[repr(C, align(128))]
struct Word64(AtomicU64);

/// An event count: bit 0 "someone may sleep", bits 1.. an epoch (see the module docs).
#[repr(C, align(128))]
struct Waiters {
    word: AtomicU32,
}

/// No doorbell to ring (the lock waiters' event counts: only threads sleep on them).
const NO_BELL: RawFd = -1;

/// Wakes the sleepers of `word`, if any: clears bit 0 and bumps the epoch in one step, so a
/// waiter that registered before this and has not slept yet finds the word changed. Async
/// waiters register on `not_empty` and `not_full` too: they sleep in `epoll` on the queue's
/// doorbell (an eventfd, this process's descriptor `bell`), which is rung with the wake. With
/// nobody registered (bit 0 clear), a put or get pays one load, as before doorbells.
#[inline]
fn notify(word: &AtomicU32, bell: RawFd) {
    let v = word.load(Ordering::SeqCst);
    if v & 1 != 0 && wake_all(word, v) && bell >= 0 {
        ring_bell(bell);
    }
}

#[cold]
fn wake_all(word: &AtomicU32, v: u32) -> bool {
    if word
        .compare_exchange(v, v.wrapping_add(1), Ordering::SeqCst, Ordering::SeqCst)
        .is_ok()
    {
        futex_wake(word, i32::MAX as u32);
        return true;
    }
    false
}

#[cold]
fn ring_bell(bell: RawFd) {
    // SAFETY: `bell` is the descriptor of the queue's doorbell held by the `Queue` handle that
    // owns this ring (set by `set_bell`, open as long as the handle, which outlives every
    // operation on its ring).
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(bell) };
    crate::sys::doorbell::ring(fd);
}

/// Spins `looks` times [`POLL_PAUSES`] pauses, looking whether `done` after each (the caller
/// has just looked: it pauses before the first look); `true` as soon as it is.
fn spin_looks(looks: u32, mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..looks {
        for _ in 0..POLL_PAUSES {
            std::hint::spin_loop();
        }
        if done() {
            return true;
        }
    }
    false
}

/// Registers on `word`, re-checks `changed`, and sleeps at most `slice` unless it changed.
fn sleep(word: &AtomicU32, changed: impl Fn() -> bool, slice: Duration) -> Result<(), Fail> {
    let key = word.fetch_or(1, Ordering::SeqCst) | 1;
    if !changed() {
        futex_wait(word, key, Some(slice))?;
    }
    Ok(())
}

#[repr(C)]
struct Header {
    meta: Meta,
    prod: Prod,
    tail_puts: Word64,
    cons: Cons,
    head_gets: Word64,
    not_empty: Waiters,
    not_full: Waiters,
    join: Waiters,
}

const _: () = {
    assert!(std::mem::size_of::<Header>() <= HEADER_LEN);
    assert!(std::mem::offset_of!(Header, prod) == 128);
    assert!(std::mem::offset_of!(Header, tail_puts) == 256);
    assert!(std::mem::offset_of!(Header, cons) == 384);
    assert!(std::mem::offset_of!(Header, head_gets) == 512);
    assert!(std::mem::offset_of!(Header, not_empty) == 640);
    assert!(std::mem::offset_of!(Header, not_full) == 768);
    assert!(std::mem::offset_of!(Header, join) == 896);
    // The words a hostile-peer test writes (tests/queue_hostile.rs).
    assert!(std::mem::offset_of!(Header, meta.closed) == 16);
    assert!(std::mem::offset_of!(Header, prod.lock) == 128);
    assert!(std::mem::offset_of!(Header, prod.streaming) == 152);
    assert!(std::mem::offset_of!(Header, cons.lock) == 384);
    assert!(std::mem::offset_of!(Header, cons.state) == 400);
};

fn split(x: u64) -> (u32, u32) {
    (x as u32, (x >> 32) as u32)
}

fn pack(pos: u32, count: u32) -> u64 {
    (pos as u64) | ((count as u64) << 32)
}

fn pad8(n: u32) -> u32 {
    n.wrapping_add(7) & !7
}

/// The calling thread's identity as a lock word: thread id (low half, never 0) and start time
/// (high half), the owner identity of every robust lock of the crate (see `sys::sync`).
#[inline]
fn owner() -> u64 {
    let (tid, start) = current_thread();
    pack(tid, start)
}

/// Whether the owner `word` of a lock (see [`owner`]) still runs; a word this thread would
/// write itself, found while this thread does not hold the lock, is stale (or forged).
fn owner_alive(word: u64, me: u64) -> bool {
    let (tid, start) = split(word);
    word != me && tid != 0 && thread_alive(tid, start)
}

/// A corrupted-memory failure naming what was wrong.
#[cold]
fn corrupt(what: String) -> Fail {
    Fail::Corrupt(what)
}

/// How long an operation may wait.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Wait {
    Now,
    Forever,
    Until(Instant),
}

impl Wait {
    /// The next sleep: at most [`TICK`], `None` when the time is up.
    pub(crate) fn slice(&self) -> Option<Duration> {
        match self {
            Wait::Now => None,
            Wait::Forever => Some(TICK),
            Wait::Until(d) => {
                let left = d.saturating_duration_since(Instant::now());
                (!left.is_zero()).then(|| left.min(TICK))
            }
        }
    }
}

/// Why a ring operation did not complete.
#[derive(Debug)]
pub(crate) enum Fail {
    /// Would have to wait, and the caller did not want to (`Full` / `Empty`).
    WouldBlock,
    Timeout,
    Closed,
    /// The queue's shared memory holds values no correct process writes: the queue has failed.
    Corrupt(String),
    Io(io::Error),
}

impl From<io::Error> for Fail {
    fn from(e: io::Error) -> Self {
        Fail::Io(e)
    }
}

/// How a message was taken by [`Ring::get`].
pub(crate) enum Got {
    /// Copied into the caller's buffer (with its descriptors).
    Copied,
    /// A small message without descriptors: copied into the caller's [`Small`].
    Small,
}

/// What one try of the small-message path gave.
enum SmallGet {
    Taken,
    /// Nothing to take this way: take the general path.
    No,
    /// The producers are only just ahead of this head: let them get ahead first.
    AtHeels(u32),
}

/// What taking one record gave.
enum Taken {
    /// Part of a message, or nothing to deliver (a dropped or abandoned message): go on.
    Partial,
    Whole(Got),
}

/// A mapped queue ring.
#[derive(Debug)]
pub(crate) struct Ring {
    region: Region,
    cap: u32,
    maxsize: u32,
    /// This process's descriptor of the queue's doorbell, for async waiters (-1: none yet).
    bell: std::sync::atomic::AtomicI32,
}

/// A lock word (the owner's identity, see [`owner`]; 0 when free) and the event count its
/// waiters sleep on.
#[derive(Clone, Copy)]
struct LockRef<'a> {
    word: &'a AtomicU64,
    waiters: &'a AtomicU32,
}

/// A held lock, released when dropped: see [`release`].
struct Held<'a> {
    lock: LockRef<'a>,
    /// The other side's wake word, notified after the release.
    wake: &'a AtomicU32,
    /// This process's descriptor of the queue's doorbell (-1: none).
    bell: RawFd,
}

impl Drop for Held<'_> {
    #[inline]
    fn drop(&mut self) {
        release(self.lock, self.wake, self.bell);
    }
}

/// Frees `lock`, then wakes whoever sleeps on `wake` (the other side, which may wait for a
/// position the holder just published with a plain release store) and on the lock.
///
/// The release is a plain store, and one `SeqCst` fence orders it, and the position published
/// just before it, before the two loads of the wake words: a waiter registers on its word
/// (`SeqCst` RMW) and then re-reads the lock or the position (`SeqCst`), so either it sees the
/// release or the fence's load sees its registration. A put or get thus costs two full
/// barriers (the lock's compare-and-swap and this fence) instead of three.
#[inline]
fn release(lock: LockRef, wake: &AtomicU32, bell: RawFd) {
    lock.word.store(0, Ordering::Release);
    fence(Ordering::SeqCst);
    notify(wake, bell);
    notify(lock.waiters, NO_BELL);
}

/// Takes an owner-identity lock if it is free.
#[inline]
fn try_lock(lock: LockRef, me: u64) -> bool {
    lock.word
        .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
        .is_ok()
}

/// Takes an owner-identity lock; `Ok(true)` when it was taken over from a dead owner.
#[inline]
fn lock(lock: LockRef, me: u64, wait: Wait) -> Result<bool, Fail> {
    if try_lock(lock, me) {
        return Ok(false);
    }
    lock_slow(lock, me, wait)
}

#[cold]
fn lock_slow(lock: LockRef, me: u64, wait: Wait) -> Result<bool, Fail> {
    let word = lock.word;
    let cas = |from: u64| {
        word.compare_exchange(from, me, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    };
    for _ in 0..SPIN {
        std::hint::spin_loop();
        if word.load(Ordering::Relaxed) == 0 && cas(0) {
            return Ok(false);
        }
    }
    loop {
        let v = word.load(Ordering::Relaxed);
        if v == 0 {
            if cas(0) {
                return Ok(false);
            }
            continue;
        }
        let Some(slice) = wait.slice() else {
            return Err(match wait {
                Wait::Now => Fail::WouldBlock,
                _ => Fail::Timeout,
            });
        };
        // Register, then look again: a release after this look notifies us (see `release`).
        let key = lock.waiters.fetch_or(1, Ordering::SeqCst) | 1;
        if word.load(Ordering::SeqCst) != v {
            continue;
        }
        // Only a full slice without any release means the owner may be dead.
        if futex_wait(lock.waiters, key, Some(slice))? == Woken::TimedOut
            && !owner_alive(v, me)
            && cas(v)
        {
            return Ok(true);
        }
    }
}

impl Ring {
    /// A new ring of `capacity` bytes (a power of two within bounds), at most `maxsize` items
    /// (0: no item limit).
    pub(crate) fn create(capacity: usize, maxsize: u32) -> io::Result<Ring> {
        let cap = capacity
            .clamp(MIN_CAPACITY, MAX_CAPACITY)
            .next_power_of_two();
        let region = Region::new("multiprocess-queue", HEADER_LEN + cap)?;
        let ring = Ring {
            region,
            cap: cap as u32,
            maxsize,
            bell: std::sync::atomic::AtomicI32::new(-1),
        };
        let m = &ring.hdr().meta;
        m.capacity.store(cap as u32, Ordering::Relaxed);
        m.maxsize.store(maxsize, Ordering::Relaxed);
        m.version.store(VERSION, Ordering::Relaxed);
        m.magic.store(MAGIC, Ordering::Release);
        Ok(ring)
    }

    /// Checks and adopts a region that arrived as part of a queue handle.
    pub(crate) fn open(region: Region) -> Result<Ring, String> {
        if region.len() < HEADER_LEN + MIN_CAPACITY {
            return Err("the shared memory is too small to be a queue".into());
        }
        // SAFETY: as in `hdr`; the length was checked.
        let h = unsafe { &*(region.as_ptr() as *const Header) };
        let magic = h.meta.magic.load(Ordering::Acquire);
        let version = h.meta.version.load(Ordering::Relaxed);
        let cap = h.meta.capacity.load(Ordering::Relaxed);
        if magic != MAGIC {
            return Err(format!(
                "the shared memory is not a queue (magic {magic:#010x})"
            ));
        }
        if version != VERSION {
            return Err(format!(
                "queue layout version {version}, this build knows {VERSION}"
            ));
        }
        if !cap.is_power_of_two() || HEADER_LEN + cap as usize != region.len() {
            return Err(format!("queue capacity {cap} does not match its memory"));
        }
        let maxsize = h.meta.maxsize.load(Ordering::Relaxed);
        Ok(Ring {
            region,
            cap,
            maxsize,
            bell: std::sync::atomic::AtomicI32::new(-1),
        })
    }

    pub(crate) fn region(&self) -> &Region {
        &self.region
    }

    fn prod_lock(&self) -> LockRef<'_> {
        let p = &self.hdr().prod;
        LockRef {
            word: &p.lock,
            waiters: &p.lock_waiters,
        }
    }

    fn cons_lock(&self) -> LockRef<'_> {
        let c = &self.hdr().cons;
        LockRef {
            word: &c.lock,
            waiters: &c.lock_waiters,
        }
    }

    /// This process's doorbell descriptor (-1: none).
    #[inline]
    fn bell(&self) -> RawFd {
        self.bell.load(Ordering::Relaxed)
    }

    /// Gives the ring this process's descriptor of the queue's doorbell (kept open by the
    /// caller as long as the ring).
    pub(crate) fn set_bell(&self, fd: RawFd) {
        self.bell.store(fd, Ordering::Relaxed);
    }

    /// Registers an async waiter for items (`items`) or for room: the next put (or get)
    /// wakes the event count and rings the doorbell. The caller then looks again before
    /// waiting (see the module docs' wake protocol).
    pub(crate) fn register_async(&self, items: bool) {
        let h = self.hdr();
        let word = if items {
            &h.not_empty.word
        } else {
            &h.not_full.word
        };
        word.fetch_or(1, Ordering::SeqCst);
    }

    fn hdr(&self) -> &Header {
        // SAFETY: the region is at least HEADER_LEN bytes, page-aligned (≥ 128), shared memory
        // that lives as long as `self`; every field is an atomic (valid for any bit pattern,
        // including the zeroes of a fresh memfd) and is only accessed atomically.
        unsafe { &*(self.region.as_ptr() as *const Header) }
    }

    /// The ring's size in bytes.
    pub(crate) fn capacity(&self) -> usize {
        self.cap as usize
    }

    /// The item limit (0: none).
    pub(crate) fn maxsize(&self) -> u32 {
        self.maxsize
    }

    /// Largest record written whole; larger messages are streamed in chunks of this size.
    fn max_record(&self) -> u32 {
        self.cap / 4
    }

    fn write_bytes(&self, pos: u32, data: &[u8]) {
        // Callers write at most a record (a quarter of the ring); the clamp keeps both copies
        // inside the ring whatever they pass.
        let data = &data[..data.len().min(self.cap as usize)];
        let off = (pos & (self.cap - 1)) as usize;
        let first = data.len().min(self.cap as usize - off);
        // SAFETY: `off + first <= cap` and `data.len() - first <= cap` (records are never
        // larger than the ring), so both copies stay inside the ring; the bytes lie between
        // tail and head + capacity, which only the producer holding `prod_lock` touches.
        unsafe {
            let base = self.region.as_ptr().add(HEADER_LEN);
            std::ptr::copy_nonoverlapping(data.as_ptr(), base.add(off), first);
            if first < data.len() {
                std::ptr::copy_nonoverlapping(data.as_ptr().add(first), base, data.len() - first);
            }
        }
    }

    fn read_bytes(&self, pos: u32, len: usize, out: &mut Vec<u8>) {
        // Callers validated `len` (a record's length is at most a quarter of the ring); the
        // clamp keeps both copies inside the ring whatever it is.
        let len = len.min(self.cap as usize);
        let off = (pos & (self.cap - 1)) as usize;
        let first = len.min(self.cap as usize - off);
        out.reserve(len);
        // SAFETY: `off < cap`, `first <= cap - off` and `len - first <= cap` (`len <= cap`), so
        // both copies stay inside the ring; the bytes lie between head and an
        // acquired tail, which no producer writes until the consumer holding `cons_lock`
        // moves head past them. `out` has room for `len` more bytes (reserved).
        unsafe {
            let base = self.region.as_ptr().add(HEADER_LEN);
            let dst = out.as_mut_ptr().add(out.len());
            std::ptr::copy_nonoverlapping(base.add(off), dst, first);
            if first < len {
                std::ptr::copy_nonoverlapping(base, dst.add(first), len - first);
            }
            out.set_len(out.len() + len);
        }
    }

    fn read_u64(&self, pos: u32) -> u64 {
        let mut b = Vec::with_capacity(8);
        self.read_bytes(pos, 8, &mut b);
        u64::from_le_bytes(b.try_into().unwrap_or_default())
    }

    /// The record header at `pos`: 8-aligned, so it never wraps and is one aligned word.
    fn header_ptr(&self, pos: u32) -> *mut u64 {
        // Callers check that positions are 8-aligned (shared words that are not are reported
        // as corruption); the mask makes the offset 8-aligned and inside the ring whatever
        // `pos` is.
        let off = (pos & (self.cap - 1) & !7) as usize;
        // SAFETY: `off + 8 <= cap` (8-aligned offset in a ring whose size is a multiple of 8),
        // and the region starts page-aligned, so the pointer is in bounds and 8-aligned.
        unsafe { self.region.as_ptr().add(HEADER_LEN + off) as *mut u64 }
    }

    fn write_header(&self, pos: u32, len: u32, kind: u8, flags: u8) {
        // Little-endian bytes: len (4), kind, flags, 0, 0.
        let word = (len as u64 | (kind as u64) << 32 | (flags as u64) << 40).to_le();
        // SAFETY: in bounds and aligned (`header_ptr`); the producer holding `prod_lock` is
        // the only writer of bytes beyond `tail` (see `write_bytes`).
        unsafe { self.header_ptr(pos).write(word) }
    }

    fn read_header(&self, pos: u32) -> (u32, u8, u8) {
        // SAFETY: in bounds and aligned (`header_ptr`); published (see `read_bytes`).
        let word = u64::from_le(unsafe { self.header_ptr(pos).read() });
        (word as u32, (word >> 32) as u8, (word >> 40) as u8)
    }

    /// Copies `small`, padded to whole words, to the ring at `pos` (8-aligned; the words wrap
    /// around the ring end one by one).
    fn write_small(&self, pos: u32, small: &Small) {
        let mask = (self.cap / 8 - 1) as usize;
        let mut at = (pos & (self.cap - 1)) as usize / 8;
        // SAFETY: the region is page-aligned and the ring's size a multiple of 8.
        let ring = unsafe { self.region.as_ptr().add(HEADER_LEN) as *mut u64 };
        for w in small.padded_words() {
            // SAFETY: `at <= mask` indexes a word of the ring; the words lie beyond `tail`,
            // which only the producer holding `prod_lock` writes (see `write_bytes`).
            unsafe { ring.add(at).write(*w) };
            at = (at + 1) & mask;
        }
    }

    /// Copies the `len <= SMALL` bytes at ring position `pos` (8-aligned) into `small`, a word
    /// at a time.
    fn read_small(&self, pos: u32, len: u32, small: &mut Small) {
        let mask = (self.cap / 8 - 1) as usize;
        let first = (pos & (self.cap - 1)) as usize / 8;
        // SAFETY: as in `write_small`.
        let ring = unsafe { self.region.as_ptr().add(HEADER_LEN) as *const u64 };
        // SAFETY: `(first + i) & mask` indexes a word of the ring; the words lie between head
        // and an acquired tail (see `read_bytes`).
        small.fill_words(len as usize, |i| unsafe {
            ring.add((first + i) & mask).read()
        });
    }

    // --------------------------------------------------------------------------------------
    // Producer side

    /// Puts a message of `len <= SMALL` bytes without descriptors, held in `small`: the common
    /// case, kept short. When the producer lock is busy or the ring (or `maxsize`) has no room
    /// by what this producer knows, it takes the general path ([`put`](Self::put)), which
    /// waits.
    #[inline]
    pub(crate) fn put_small(&self, small: &Small, wait: Wait) -> Result<(), Fail> {
        let h = self.hdr();
        let len = small.len() as u32;
        let rec = REC + pad8(len);
        if try_lock(self.prod_lock(), owner()) {
            let held = Held {
                lock: self.prod_lock(),
                wake: &h.not_empty.word,
                bell: self.bell(),
            };
            let (tail, puts) = split(h.tail_puts.0.load(Ordering::Relaxed));
            if h.meta.closed.load(Ordering::Acquire) == 0
                && tail & 7 == 0
                && self.has_item_room(puts)
                && self.has_room(tail, rec)
            {
                self.write_small(tail.wrapping_add(REC), small);
                self.write_header(tail, len, WHOLE, 0);
                self.publish_quiet(tail.wrapping_add(rec), puts.wrapping_add(1));
                return Ok(());
            }
            drop(held);
        }
        self.put(small.as_bytes(), None, wait)
    }

    /// Whether `need` bytes are free after `tail`, by the cached head or, failing that, by a
    /// fresh look at it.
    #[inline]
    fn has_room(&self, tail: u32, need: u32) -> bool {
        let h = self.hdr();
        let free = |hg: u64| self.cap.checked_sub(tail.wrapping_sub(split(hg).0));
        if free(h.prod.cached_head_gets.load(Ordering::Relaxed)).is_some_and(|f| f >= need) {
            return true;
        }
        free(self.fresh_head()).is_some_and(|f| f >= need)
    }

    /// The consumers' position, read now (acquire) and cached for the producers.
    fn fresh_head(&self) -> u64 {
        let h = self.hdr();
        let hg = h.head_gets.0.load(Ordering::Acquire);
        h.prod.cached_head_gets.store(hg, Ordering::Relaxed);
        hg
    }

    /// Whether one more message is within `maxsize`, by the cached head or a fresh look.
    #[inline]
    fn has_item_room(&self, puts: u32) -> bool {
        if self.maxsize == 0 {
            return true;
        }
        let h = self.hdr();
        let room = |hg: u64| puts.wrapping_sub(split(hg).1) < self.maxsize;
        if room(h.prod.cached_head_gets.load(Ordering::Relaxed)) {
            return true;
        }
        room(self.fresh_head())
    }

    /// Publishes a new tail and wakes waiting consumers; for a producer that keeps the lock.
    fn publish(&self, tail: u32, puts: u32) {
        self.publish_quiet(tail, puts);
        fence(Ordering::SeqCst);
        notify(&self.hdr().not_empty.word, self.bell());
    }

    /// Publishes a new tail without waking anyone: the release of the lock that follows does
    /// (see [`release`]).
    fn publish_quiet(&self, tail: u32, puts: u32) {
        self.hdr()
            .tail_puts
            .0
            .store(pack(tail, puts), Ordering::Release);
    }

    /// Waits (holding `prod_lock`) until consumers moved past `seen` or the queue closed.
    ///
    /// While spinning it waits for `enough(head_gets)`, so that a producer facing a full ring
    /// resumes with room for a batch of messages rather than one: otherwise, while consumers
    /// are the slower side, it would read their position once per message, pulling away the
    /// cache line they write at every get (measured: a third of the 1P1C throughput).
    fn wait_for_consumers(
        &self,
        seen: u64,
        enough: &dyn Fn(u64) -> bool,
        wait: Wait,
    ) -> Result<(), Fail> {
        let h = self.hdr();
        self.wait_for_move(&h.head_gets.0, &h.not_full.word, seen, enough, wait)
    }

    /// Waits until `position` moved past `seen` or the queue closed, at most `wait`: a bounded
    /// spin, which ends early when `enough(position)`, then sleeps on `event` (the other
    /// side's wake word) unless the position moved meanwhile.
    fn wait_for_move(
        &self,
        position: &AtomicU64,
        event: &AtomicU32,
        seen: u64,
        enough: &dyn Fn(u64) -> bool,
        wait: Wait,
    ) -> Result<(), Fail> {
        let h = self.hdr();
        let changed =
            || position.load(Ordering::SeqCst) != seen || h.meta.closed.load(Ordering::SeqCst) != 0;
        if !matches!(wait, Wait::Now) {
            // A side that polls the other's position in a tight loop pulls its cache line away
            // for every message: look every POLL_PAUSES pauses instead (measured on a 1P1C loop
            // of u64: every 32 pauses instead of every pause raised it by about a third; a
            // pause is ~35 ns here, so a message that comes during the spin is seen within
            // about a microsecond).
            let done = || {
                enough(position.load(Ordering::SeqCst)) || h.meta.closed.load(Ordering::SeqCst) != 0
            };
            if spin_looks(SPIN / POLL_PAUSES, done) || changed() {
                return Ok(());
            }
        }
        let Some(slice) = wait.slice() else {
            return Err(match wait {
                Wait::Now => Fail::WouldBlock,
                _ => Fail::Timeout,
            });
        };
        sleep(event, changed, slice)
    }

    /// Waits until `need` bytes are free after `tail`. `check_closed`: fail with `Closed` when
    /// the queue closes meanwhile.
    fn room(&self, tail: u32, need: u32, wait: Wait, check_closed: bool) -> Result<(), Fail> {
        let h = self.hdr();
        let free = |hg: u64| self.cap.checked_sub(tail.wrapping_sub(split(hg).0));
        while !self.has_room(tail, need) {
            // `has_room` has just refreshed the cached head.
            let hg = h.prod.cached_head_gets.load(Ordering::Relaxed);
            if free(hg).is_none() || split(hg).0 & 7 != 0 {
                return Err(self.positions_corrupt(split(hg).0, tail));
            }
            if h.meta.closed.load(Ordering::Acquire) & CORRUPT != 0
                || (check_closed && h.meta.closed.load(Ordering::Acquire) != 0)
            {
                return Err(self.closed_fail());
            }
            let want = need.saturating_add(ROOM_BATCH).min(self.cap);
            let enough = |p: u64| free(p).is_some_and(|f| f >= want);
            self.wait_for_consumers(hg, &enough, wait)?;
        }
        Ok(())
    }

    /// Waits for item room (`maxsize`).
    fn item_room(&self, puts: u32, wait: Wait) -> Result<(), Fail> {
        let h = self.hdr();
        while !self.has_item_room(puts) {
            // `has_item_room` has just refreshed the cached head.
            let hg = h.prod.cached_head_gets.load(Ordering::Relaxed);
            if h.meta.closed.load(Ordering::Acquire) != 0 {
                return Err(self.closed_fail());
            }
            let batch = (self.maxsize / 8).max(1);
            // Like `room`: wait for a batch of free items while spinning.
            let enough = |p: u64| puts.wrapping_sub(split(p).1) <= self.maxsize - batch;
            self.wait_for_consumers(hg, &enough, wait)?;
        }
        Ok(())
    }

    /// Puts one message. When `send_fds` is given, the message has descriptors: it is called
    /// under the producer lock with the message's sequence number, before the record is
    /// published, and must send the descriptors.
    pub(crate) fn put(
        &self,
        payload: &[u8],
        send_fds: Option<&mut dyn FnMut(u64, Wait) -> Result<(), Fail>>,
        wait: Wait,
    ) -> Result<(), Fail> {
        let h = self.hdr();
        let me = owner();
        if lock(self.prod_lock(), me, wait)? {
            h.meta.recovered.fetch_add(1, Ordering::Relaxed);
            h.prod.streaming.store(0, Ordering::Release);
        }
        let _held = Held {
            lock: self.prod_lock(),
            wake: &h.not_empty.word,
            bell: self.bell(),
        };
        if h.meta.closed.load(Ordering::Acquire) != 0 {
            return Err(self.closed_fail());
        }
        let (tail, puts) = split(h.tail_puts.0.load(Ordering::Relaxed));
        if tail & 7 != 0 {
            return Err(self.fail_corrupt(format!("tail {tail} is not 8-aligned")));
        }
        self.item_room(puts, wait)?;
        let has_fds = send_fds.is_some();
        let flags = if has_fds { FLAG_FDS } else { 0 };
        let prefix: u32 = if has_fds { 8 } else { 0 };
        let Ok(len) = u32::try_from(payload.len() as u64 + prefix as u64) else {
            return Err(Fail::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a queue message must be smaller than 4 GiB",
            )));
        };
        if len <= u32::MAX - 16 && REC + pad8(len) <= self.max_record() {
            let rec = REC + pad8(len);
            self.room(tail, rec, wait, true)?;
            let mut at = tail.wrapping_add(REC);
            if let Some(send) = send_fds {
                let seq = h.prod.fd_seq.fetch_add(1, Ordering::Relaxed);
                send(seq, wait)?;
                self.write_bytes(at, &seq.to_le_bytes());
                at = at.wrapping_add(8);
            }
            self.write_bytes(at, payload);
            self.write_header(tail, len, WHOLE, flags);
            self.publish_quiet(tail.wrapping_add(rec), puts.wrapping_add(1));
            return Ok(());
        }
        self.put_stream(payload, send_fds, tail, puts, wait)
    }

    fn put_stream(
        &self,
        payload: &[u8],
        send_fds: Option<&mut dyn FnMut(u64, Wait) -> Result<(), Fail>>,
        mut tail: u32,
        puts: u32,
        mut wait: Wait,
    ) -> Result<(), Fail> {
        let h = self.hdr();
        let max_body = self.max_record() - REC;
        let mut rest = payload;
        let mut first = true;
        let mut send_fds = send_fds;
        loop {
            let prefix = if first && send_fds.is_some() { 8 } else { 0 };
            let body = (rest.len() as u64 + prefix as u64).min(max_body as u64) as u32;
            let last = !first && body as usize == rest.len();
            // Room for the chunk plus an ABORT record.
            if let Err(e) = self.room(tail, REC + pad8(body) + REC, wait, first) {
                if !first {
                    self.write_header(tail, 0, ABORT, 0);
                    tail = tail.wrapping_add(REC);
                    self.publish(tail, puts);
                    h.prod.streaming.store(0, Ordering::Release);
                }
                return Err(e);
            }
            let mut at = tail.wrapping_add(REC);
            let mut flags = 0;
            if first {
                if let Some(send) = send_fds.take() {
                    let seq = h.prod.fd_seq.fetch_add(1, Ordering::Relaxed);
                    send(seq, wait)?;
                    self.write_bytes(at, &seq.to_le_bytes());
                    at = at.wrapping_add(8);
                    flags = FLAG_FDS;
                }
            }
            let data = body - prefix;
            self.write_bytes(at, &rest[..data as usize]);
            rest = &rest[data as usize..];
            let kind = if first {
                FIRST
            } else if last {
                LAST
            } else {
                MIDDLE
            };
            self.write_header(tail, body, kind, flags);
            tail = tail.wrapping_add(REC + pad8(body));
            if first {
                h.prod.streaming.store(1, Ordering::Relaxed);
                // A started message is finished: `put_nowait` only fails before it starts.
                if matches!(wait, Wait::Now) {
                    wait = Wait::Forever;
                }
            }
            self.publish(tail, puts.wrapping_add(last as u32));
            if last {
                h.prod.streaming.store(0, Ordering::Release);
                return Ok(());
            }
            first = false;
        }
    }

    // --------------------------------------------------------------------------------------
    // Consumer side

    /// Moves the head and wakes waiting producers; for a consumer that keeps the lock.
    fn advance(&self, head: u32, gets: u32) {
        self.advance_quiet(head, gets);
        fence(Ordering::SeqCst);
        notify(&self.hdr().not_full.word, self.bell());
    }

    /// Moves the head without waking anyone: the release of the lock that follows does.
    fn advance_quiet(&self, head: u32, gets: u32) {
        self.hdr()
            .head_gets
            .0
            .store(pack(head, gets), Ordering::Release);
    }

    /// Waits until producers moved past `seen` (or the queue closed), at most `wait`.
    fn wait_for_producers(&self, seen: u64, wait: Wait) -> Result<(), Fail> {
        let h = self.hdr();
        let moved = |p: u64| p != seen;
        self.wait_for_move(&h.tail_puts.0, &h.not_empty.word, seen, &moved, wait)
    }

    /// See [`SLIP`].
    fn slip(&self) -> u32 {
        SLIP.min(self.cap / 8)
    }

    /// A consumer at `head` that has just found fewer than [`SLIP`] bytes after it waits (not
    /// holding the lock) a few looks for the producers to get that far ahead.
    fn let_producers_ahead(&self, head: u32) {
        let tail = &self.hdr().tail_puts.0;
        spin_looks(SLIP_LOOKS, || {
            split(tail.load(Ordering::Acquire)).0.wrapping_sub(head) >= self.slip()
        });
    }

    fn count_dropped(&self) {
        let m = &self.hdr().meta;
        m.dropped.fetch_add(1, Ordering::Relaxed);
        // Nobody will call task_done for it.
        self.task_done_unchecked();
    }

    /// The position of the producers' tail as this consumer (holding `cons_lock`) knows it,
    /// for a consumer at `head`: the cached tail while it is ahead of `head`, else a fresh
    /// look (acquire), which is cached; `true` with a fresh look.
    #[inline]
    fn known_tail(&self, head: u32) -> (u64, bool) {
        let h = self.hdr();
        let tp = h.cons.cached_tail_puts.load(Ordering::Relaxed);
        // The cached tail is only a hint: stale (behind head) after another consumer moved
        // on without refreshing it, or equal to head when nothing is known.
        let known = split(tp).0.wrapping_sub(head);
        if known == 0 || known > self.cap {
            let tp = h.tail_puts.0.load(Ordering::Acquire);
            h.cons.cached_tail_puts.store(tp, Ordering::Relaxed);
            return (tp, true);
        }
        (tp, false)
    }

    /// Takes a whole message of at most [`SMALL`] bytes without descriptors into `small`, if
    /// one is at the head and the consumer lock is free: the common case, kept short.
    /// `false`: take the general path ([`get`](Self::get)), which waits. `patient`: the
    /// caller may wait, so it may let the producers get ahead first (see [`SLIP`]).
    #[inline]
    pub(crate) fn get_small(&self, small: &mut Small, patient: bool) -> bool {
        match self.take_small(small, patient) {
            SmallGet::Taken => true,
            SmallGet::No => false,
            SmallGet::AtHeels(head) => {
                self.let_producers_ahead(head);
                matches!(self.take_small(small, false), SmallGet::Taken)
            }
        }
    }

    /// One try of [`get_small`](Self::get_small); `patient`: when the producers are only just
    /// ahead, say so instead of taking (see [`SLIP`]).
    #[inline]
    fn take_small(&self, small: &mut Small, patient: bool) -> SmallGet {
        let h = self.hdr();
        if !try_lock(self.cons_lock(), owner()) {
            return SmallGet::No;
        }
        let _held = Held {
            lock: self.cons_lock(),
            wake: &h.not_full.word,
            bell: self.bell(),
        };
        let (head, gets) = split(h.head_gets.0.load(Ordering::Relaxed));
        let (tp, fresh) = self.known_tail(head);
        let ahead = split(tp).0.wrapping_sub(head);
        // Anything unusual (including positions or flags no correct process writes: the
        // general path reports them) takes the general path.
        if ahead == 0
            || ahead > self.cap
            || head & 7 != 0
            || h.cons.state.load(Ordering::Relaxed) != IDLE
            || h.meta.closed.load(Ordering::Relaxed) & CORRUPT != 0
        {
            return SmallGet::No;
        }
        if patient && fresh && ahead < self.slip() {
            return SmallGet::AtHeels(head);
        }
        let (len, kind, flags) = self.read_header(head);
        if kind != WHOLE || flags != 0 || len as usize > SMALL || REC + pad8(len) > ahead {
            return SmallGet::No;
        }
        self.read_small(head.wrapping_add(REC), len, small);
        self.advance_quiet(head.wrapping_add(REC + pad8(len)), gets.wrapping_add(1));
        SmallGet::Taken
    }

    /// Takes one message. A whole message without descriptors that fits in `small` is copied
    /// there; any other goes into `out` (cleared first), its descriptors into `fds`.
    /// `recv_fds` fetches the descriptors of sequence number `seq` into the vector, under the
    /// consumer lock; `Ok(false)` when they are gone (the message is then dropped).
    pub(crate) fn get(
        &self,
        out: &mut Vec<u8>,
        fds: &mut Vec<OwnedFd>,
        recv_fds: &mut dyn FnMut(u64, &mut Vec<OwnedFd>) -> io::Result<bool>,
        small: &mut Small,
        wait: Wait,
    ) -> Result<Got, Fail> {
        let h = self.hdr();
        let me = owner();
        out.clear();
        fds.clear();
        loop {
            if lock(self.cons_lock(), me, wait)? {
                h.meta.recovered.fetch_add(1, Ordering::Relaxed);
            }
            let held = Held {
                lock: self.cons_lock(),
                wake: &h.not_full.word,
                bell: self.bell(),
            };
            // A consumer reads a streamed message holding the lock to its end, so a `READING`
            // found on taking the lock was left by a consumer that died (or written by another
            // process): the rest of that message is skipped (and counted as dropped where the
            // skipping ends).
            if h.cons.state.load(Ordering::Relaxed) == READING {
                h.cons.state.store(SKIPPING, Ordering::Relaxed);
            }
            // When the last chunk of a streamed message that this call is reading arrived.
            let mut progress = Instant::now();
            loop {
                if h.meta.closed.load(Ordering::Relaxed) & CORRUPT != 0 {
                    return Err(self.closed_fail());
                }
                let (head, gets) = split(h.head_gets.0.load(Ordering::Relaxed));
                let (tp, _) = self.known_tail(head);
                let avail = self.published(head, split(tp).0)?;
                let state = h.cons.state.load(Ordering::Relaxed);
                if avail != 0 {
                    progress = Instant::now();
                    match self.take_record(head, avail, gets, state, out, fds, recv_fds, small)? {
                        Taken::Whole(got) => return Ok(got),
                        Taken::Partial => continue,
                    }
                }
                if state == READING {
                    // A stream is half read: its producer is writing the rest, or died.
                    if h.prod.streaming.load(Ordering::Acquire) == 0
                        && split(h.tail_puts.0.load(Ordering::Acquire)).0 == head
                    {
                        out.clear();
                        fds.clear();
                        h.cons.state.store(IDLE, Ordering::Relaxed);
                        h.meta.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    match self.wait_for_producers(tp, Wait::Until(Instant::now() + TICK)) {
                        Ok(()) | Err(Fail::Timeout) => {}
                        Err(e) => return Err(e),
                    }
                    if h.tail_puts.0.load(Ordering::Acquire) != tp || progress.elapsed() < TICK {
                        continue;
                    }
                    // A whole tick without a chunk. A dead (or absent) streaming producer:
                    // close its stream and drop the partial message; then wait for the next
                    // message as long as the caller allows.
                    if self.recover_stalled_stream(me) {
                        out.clear();
                        fds.clear();
                        h.cons.state.store(IDLE, Ordering::Relaxed);
                        h.meta.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    // Its producer lives but stalls. A caller whose time is up gets it back: the
                    // rest of the message is skipped (and counted as dropped where it ends).
                    if wait.slice().is_none() {
                        out.clear();
                        fds.clear();
                        h.cons.state.store(SKIPPING, Ordering::Relaxed);
                        return Err(match wait {
                            Wait::Now => Fail::WouldBlock,
                            _ => Fail::Timeout,
                        });
                    }
                    continue;
                }
                if h.meta.closed.load(Ordering::Acquire) != 0 {
                    return Err(self.closed_fail());
                }
                drop(held);
                self.wait_for_producers(tp, wait)?;
                break;
            }
        }
    }

    /// A dropped message that was never counted in `puts` (its LAST was never published).
    fn count_dropped_uncounted(&self) {
        self.hdr().meta.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Called by a consumer that waited a whole tick in the middle of a stream: if the producer
    /// lock is free (the streaming flag is stale: no correct process leaves it so) or its
    /// owner is dead, take the lock, close the stream, release; `true` when the stream is
    /// closed that way.
    fn recover_stalled_stream(&self, me: u64) -> bool {
        let h = self.hdr();
        let owner = h.prod.lock.load(Ordering::Acquire);
        if owner_alive(owner, me)
            || h.prod
                .lock
                .compare_exchange(owner, me, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            return false;
        }
        if owner != 0 {
            h.meta.recovered.fetch_add(1, Ordering::Relaxed);
        }
        h.prod.streaming.store(0, Ordering::Release);
        release(self.prod_lock(), &h.not_empty.word, self.bell());
        true
    }

    /// Consumes the record at `head`.
    #[allow(clippy::too_many_arguments)]
    fn take_record(
        &self,
        head: u32,
        avail: u32,
        gets: u32,
        state: u32,
        out: &mut Vec<u8>,
        fds: &mut Vec<OwnedFd>,
        recv_fds: &mut dyn FnMut(u64, &mut Vec<OwnedFd>) -> io::Result<bool>,
        small: &mut Small,
    ) -> Result<Taken, Fail> {
        let h = self.hdr();
        let (len, kind, flags) = self.read_header(head);
        // Every field is checked before it is used: the length against the largest record and
        // the bytes published (so `REC + pad8(len)` cannot overflow), the flags against the
        // kinds that carry descriptors and the sequence number's room.
        if len > self.max_record()
            || !(WHOLE..=ABORT).contains(&kind)
            || REC + pad8(len) > avail
            || flags & !FLAG_FDS != 0
            || (flags & FLAG_FDS != 0 && (len < 8 || !matches!(kind, WHOLE | FIRST)))
        {
            return Err(self.fail_corrupt(format!(
                "record at {head}: kind {kind}, flags {flags:#x}, length {len} \
                 ({avail} bytes published, records at most {})",
                self.max_record()
            )));
        }
        let next = head.wrapping_add(REC + pad8(len));
        if kind == WHOLE && flags == 0 && state == IDLE && len as usize <= SMALL {
            self.read_small(head.wrapping_add(REC), len, small);
            // The caller returns at once, releasing the lock.
            self.advance_quiet(next, gets.wrapping_add(1));
            return Ok(Taken::Whole(Got::Small));
        }
        let set_state = |s: u32| h.cons.state.store(s, Ordering::Relaxed);
        match kind {
            WHOLE | FIRST => {
                if state != IDLE {
                    // The stream we were reading (or skipping) was abandoned by its producer.
                    self.count_dropped_uncounted();
                }
                out.clear();
                fds.clear();
                let mut at = head.wrapping_add(REC);
                let mut body = len;
                let mut lost = false;
                if flags & FLAG_FDS != 0 {
                    let seq = self.read_u64(at);
                    at = at.wrapping_add(8);
                    body -= 8; // len >= 8 with FLAG_FDS (checked above)
                    lost = !recv_fds(seq, fds)?;
                }
                if kind == WHOLE {
                    set_state(IDLE);
                    if lost {
                        self.advance(next, gets.wrapping_add(1));
                        self.count_dropped();
                        fds.clear();
                        return Ok(Taken::Partial);
                    }
                    self.read_bytes(at, body as usize, out);
                    // The caller returns at once, releasing the lock.
                    self.advance_quiet(next, gets.wrapping_add(1));
                    return Ok(Taken::Whole(Got::Copied));
                }
                if lost {
                    fds.clear();
                    set_state(SKIPPING);
                    // Counted when its LAST is skipped.
                } else {
                    self.read_bytes(at, body as usize, out);
                    set_state(READING);
                }
                self.advance(next, gets);
                Ok(Taken::Partial)
            }
            MIDDLE => {
                match state {
                    READING => self.read_bytes(head.wrapping_add(REC), len as usize, out),
                    IDLE => set_state(SKIPPING),
                    _ => {}
                }
                self.advance(next, gets);
                Ok(Taken::Partial)
            }
            LAST => {
                if state == READING {
                    self.read_bytes(head.wrapping_add(REC), len as usize, out);
                    set_state(IDLE);
                    self.advance(next, gets.wrapping_add(1));
                    return Ok(Taken::Whole(Got::Copied));
                }
                // The tail of a message whose start was taken by a consumer that died, or
                // whose descriptors were lost.
                set_state(IDLE);
                self.advance(next, gets.wrapping_add(1));
                self.count_dropped();
                Ok(Taken::Partial)
            }
            _ => {
                // ABORT: the producer gave the value back (timeout) or closed the stream.
                if state == READING {
                    out.clear();
                    fds.clear();
                }
                set_state(IDLE);
                self.advance(next, gets);
                Ok(Taken::Partial)
            }
        }
    }

    // --------------------------------------------------------------------------------------
    // State

    /// Complete messages in the queue (exact when no operation is in flight).
    pub(crate) fn qsize(&self) -> usize {
        let h = self.hdr();
        let gets = split(h.head_gets.0.load(Ordering::SeqCst)).1;
        let puts = split(h.tail_puts.0.load(Ordering::SeqCst)).1;
        (puts.wrapping_sub(gets) as i32).max(0) as usize
    }

    /// Bytes published and not yet consumed.
    pub(crate) fn used(&self) -> usize {
        let h = self.hdr();
        let head = split(h.head_gets.0.load(Ordering::SeqCst)).0;
        let tail = split(h.tail_puts.0.load(Ordering::SeqCst)).0;
        tail.wrapping_sub(head) as usize
    }

    pub(crate) fn close(&self) {
        let h = self.hdr();
        h.meta.closed.fetch_or(1, Ordering::SeqCst);
        self.wake_everyone();
    }

    fn wake_everyone(&self) {
        let h = self.hdr();
        for w in [&h.not_empty, &h.not_full] {
            w.word.fetch_add(2, Ordering::SeqCst);
            futex_wake(&w.word, i32::MAX as u32);
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.hdr().meta.closed.load(Ordering::Acquire) & 1 != 0
    }

    /// Whether the queue was found corrupted (by any process).
    pub(crate) fn is_corrupt(&self) -> bool {
        self.hdr().meta.closed.load(Ordering::Acquire) & CORRUPT != 0
    }

    /// The failure of an operation that found `closed` set: `Corrupt` when the queue was
    /// found corrupted, `Closed` otherwise.
    #[cold]
    fn closed_fail(&self) -> Fail {
        if self.is_corrupt() {
            corrupt("the queue was found corrupted earlier (the corrupt flag is set)".into())
        } else {
            Fail::Closed
        }
    }

    /// Marks the queue corrupted for every process (they fail from their next operation on),
    /// wakes every sleeper, and returns the failure naming `what`.
    #[cold]
    fn fail_corrupt(&self, what: String) -> Fail {
        self.hdr().meta.closed.fetch_or(CORRUPT, Ordering::SeqCst);
        self.wake_everyone();
        corrupt(format!("queue memory is corrupted: {what}"))
    }

    /// Head and tail that no correct process writes.
    #[cold]
    fn positions_corrupt(&self, head: u32, tail: u32) -> Fail {
        self.fail_corrupt(format!(
            "head {head} and tail {tail} (each must be 8-aligned, tail at most {} bytes past head)",
            self.cap
        ))
    }

    /// Bytes published after `head` up to `tail`, checked: both 8-aligned, at most the ring.
    #[inline]
    fn published(&self, head: u32, tail: u32) -> Result<u32, Fail> {
        let avail = tail.wrapping_sub(head);
        if (head | tail) & 7 != 0 || avail > self.cap {
            return Err(self.positions_corrupt(head, tail));
        }
        Ok(avail)
    }

    pub(crate) fn dropped(&self) -> u32 {
        self.hdr().meta.dropped.load(Ordering::Relaxed)
    }

    pub(crate) fn recovered(&self) -> u32 {
        self.hdr().meta.recovered.load(Ordering::Relaxed)
    }

    pub(crate) fn task_done_unchecked(&self) {
        let h = self.hdr();
        h.meta.done.fetch_add(1, Ordering::SeqCst);
        if h.join.word.load(Ordering::SeqCst) != 0 {
            futex_wake(&h.meta.done, i32::MAX as u32);
        }
    }

    /// One more message processed; `false` (nothing changed) when every message put so far was
    /// already marked done.
    pub(crate) fn task_done(&self) -> bool {
        let h = self.hdr();
        let mut done = h.meta.done.load(Ordering::SeqCst);
        loop {
            let puts = split(h.tail_puts.0.load(Ordering::SeqCst)).1;
            if puts.wrapping_sub(done) as i32 <= 0 {
                return false;
            }
            match h.meta.done.compare_exchange(
                done,
                done.wrapping_add(1),
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => break,
                Err(d) => done = d,
            }
        }
        if h.join.word.load(Ordering::SeqCst) != 0 {
            futex_wake(&h.meta.done, i32::MAX as u32);
        }
        true
    }

    /// Waits until every message put so far is done; `false` when `deadline` passed first.
    pub(crate) fn join(&self, deadline: Option<Instant>) -> bool {
        let h = self.hdr();
        let wait = deadline.map_or(Wait::Forever, Wait::Until);
        loop {
            let done = h.meta.done.load(Ordering::SeqCst);
            let puts = split(h.tail_puts.0.load(Ordering::SeqCst)).1;
            if puts.wrapping_sub(done) as i32 <= 0 {
                return true;
            }
            let Some(slice) = wait.slice() else {
                return false;
            };
            h.join.word.fetch_add(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if h.meta.done.load(Ordering::SeqCst) == done {
                let _ = futex_wait(&h.meta.done, done, Some(slice));
            }
            h.join.word.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Test support: the thread id holding the producer (`false`) or consumer (`true`) lock.
    pub(crate) fn lock_owner(&self, consumer: bool) -> Option<u32> {
        let h = self.hdr();
        let w = if consumer { &h.cons.lock } else { &h.prod.lock };
        let owner = w.load(Ordering::Acquire);
        (owner != 0).then_some(split(owner).0)
    }

    /// Test support (hostile peers): stores `value` in the 8-aligned word at byte `offset` of
    /// the queue's memory (header, then ring); `false` when there is no such word.
    pub(crate) fn poke(&self, offset: usize, value: u64) -> bool {
        if offset % 8 != 0 || offset + 8 > self.region.len() {
            return false;
        }
        // SAFETY: in bounds and 8-aligned (the region is page-aligned); shared memory that
        // every process only accesses atomically or as plain bytes that are validated.
        let w = unsafe { &*(self.region.as_ptr().add(offset) as *const AtomicU64) };
        w.store(value, Ordering::SeqCst);
        true
    }

    /// Test support: takes the producer lock and returns with it held, never to release it.
    pub(crate) fn hold_producer_lock(&self) -> Result<(), Fail> {
        lock(self.prod_lock(), owner(), Wait::Forever).map(|_| ())
    }

    /// Test support: takes the consumer lock, reads the first chunk of a streamed message (or a
    /// whole message) and returns with the lock still held, never to release it: the caller
    /// then hangs until it is killed.
    pub(crate) fn hold_consumer_lock_mid_message(&self) -> Result<(), Fail> {
        let h = self.hdr();
        let me = owner();
        lock(self.cons_lock(), me, Wait::Forever)?;
        loop {
            let (head, gets) = split(h.head_gets.0.load(Ordering::Relaxed));
            let tp = h.tail_puts.0.load(Ordering::Acquire);
            if split(tp).0 != head {
                let state = h.cons.state.load(Ordering::Relaxed);
                let mut out = Vec::new();
                let mut fds = Vec::new();
                let avail = self.published(head, split(tp).0)?;
                self.take_record(
                    head,
                    avail,
                    gets,
                    state,
                    &mut out,
                    &mut fds,
                    &mut |_, _| Ok(false),
                    &mut Small::new(),
                )?;
                fence(Ordering::SeqCst);
                notify(&h.not_full.word, self.bell());
                return Ok(());
            }
            let _ = self.wait_for_producers(tp, Wait::Until(Instant::now() + TICK));
        }
    }
}

/// The `ring_records` fuzz target (see `crate::fuzz`): a real ring of [`MIN_CAPACITY`] bytes,
/// a prelude of puts (and a get) by the crate itself, then words of its memory overwritten as a
/// hostile peer would, then a few non-blocking puts and gets. Input: `maxsize`, the prelude
/// byte (bits 0-2: small puts; 3: a put with descriptors; 4: a put of 600 bytes; 5: a get
/// first; 6: positions near the end of the ring first), 8 operation bytes, then entries of 10
/// bytes: a word index (`u16`, modulo the words of the memory) and its new value (`u64`), at
/// most 64. Every operation must return; errors are fine.
pub(crate) fn fuzz_records(data: &[u8]) {
    let Some((&maxsize, rest)) = data.split_first() else {
        return;
    };
    let Some((&prelude, rest)) = rest.split_first() else {
        return;
    };
    let (ops, words) = rest.split_at(rest.len().min(8));
    let Ok(ring) = Ring::create(MIN_CAPACITY, maxsize as u32) else {
        return;
    };
    let h = ring.hdr();
    let payload = [0xa5u8; 900];
    let mut send = |_: u64, _: Wait| -> Result<(), Fail> { Ok(()) };
    let mut recv = |seq: u64, _: &mut Vec<OwnedFd>| -> io::Result<bool> { Ok(seq % 2 == 0) };
    let (mut out, mut fds, mut small) = (Vec::new(), Vec::new(), Small::new());
    if prelude & 64 != 0 {
        let pos = MIN_CAPACITY as u32 - 16;
        h.tail_puts.0.store(pack(pos, 0), Ordering::Relaxed);
        h.head_gets.0.store(pack(pos, 0), Ordering::Relaxed);
    }
    for i in 0..prelude & 7 {
        let mut s = Small::new();
        s.extend(&payload[..(i as usize * 13) % SMALL]);
        let _ = ring.put_small(&s, Wait::Now);
    }
    if prelude & 8 != 0 {
        let _ = ring.put(&payload[..40], Some(&mut send), Wait::Now);
    }
    if prelude & 16 != 0 {
        let _ = ring.put(&payload[..600], None, Wait::Now);
    }
    if prelude & 32 != 0 {
        let _ = ring.get(&mut out, &mut fds, &mut recv, &mut small, Wait::Now);
    }
    let n_words = (HEADER_LEN + MIN_CAPACITY) / 8;
    for w in words.chunks_exact(10).take(64) {
        let index = u16::from_le_bytes([w[0], w[1]]) as usize % n_words;
        let mut v = [0u8; 8];
        v.copy_from_slice(&w[2..]);
        ring.poke(index * 8, u64::from_le_bytes(v));
    }
    // A stream "in progress" makes a consumer wait a tick for its producer; that wait (and
    // the recovery after it) is tested in tests/queue_hostile.rs, not here: no blocking calls.
    h.prod.streaming.store(0, Ordering::Relaxed);
    for &op in ops {
        let len = (op >> 3) as usize;
        let _ = match op % 6 {
            0 => ring
                .get_small(&mut small, false)
                .then_some(())
                .ok_or(Fail::WouldBlock),
            1 => {
                let mut s = Small::new();
                s.extend(&payload[..len * 8 % (SMALL + 1)]);
                ring.put_small(&s, Wait::Now)
            }
            2 => ring.put(&payload[..len * 28], None, Wait::Now),
            3 => ring.put(&payload[..len], Some(&mut send), Wait::Now),
            4 => {
                let _ = (
                    ring.qsize(),
                    ring.used(),
                    ring.is_closed(),
                    ring.task_done(),
                );
                Ok(())
            }
            _ => ring
                .get(&mut out, &mut fds, &mut recv, &mut small, Wait::Now)
                .map(|_| ()),
        };
        h.prod.streaming.store(0, Ordering::Relaxed);
    }
}
