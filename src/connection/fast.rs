//! The shared-memory path of a [`Pipe`](crate::Pipe): what makes a round trip between two busy
//! processes cost well under a microsecond instead of two kernel wake-ups.
//!
//! # Layout (one memfd per pipe, zero-filled, shared by both ends)
//! | offset | type | contents |
//! |---|---|---|
//! | 0 | `u32` | magic `"MPR1"` |
//! | 4 | `u32` | layout version (1) |
//! | 8 | `u32` | ring capacity per direction in bytes (a power of two) |
//! | 16 + 4e | `AtomicU32` | `holders[e]`: how many `Connection` objects hold end `e` (a hint) |
//! | 128 + 64e | `AtomicU32` | `cpu[e]`: 1 + the CPU end `e` last received or waited on (0: unknown), a hint |
//! | 512 + 1024d | | direction `d`, each group on its own cache line: |
//! | +0 | `AtomicU64` | `tail`: bytes ever written (the next record's position) |
//! | +64 | [`RawLock`] | the writer lock (16 bytes) |
//! | +128 | `AtomicU32` | `space`: futex word, moved on when room appears for a waiting writer |
//! | +132 | `AtomicU32` | `writer_waits`: the writer sleeps for room |
//! | +136 | `AtomicU32` | `frame_open`: a writer is sending a frame on the socket |
//! | +140 | `AtomicU32` | `poisoned`: a writer died in the middle of a socket frame |
//! | +256 | `AtomicU64` | `head`: bytes ever read |
//! | +320 | [`RawLock`] | the reader lock |
//! | +336 | `AtomicU32` | `reading_frame`: a reader took a `SOCKET` marker and has not read all of its frame |
//! | +384 | `AtomicU32` | `armed`: a reader may be asleep on the doorbell |
//! | +388 | `AtomicU32` | `sleepers`: how many readers are between arming and waking |
//! | 4096 + d × cap | bytes | the ring of direction `d` |
//!
//! The groups are apart so that, in the common case, each message moves only the lines it
//! must: `tail` and the record from writer to reader. Locks stay in their holder's cache, and
//! the writer reads `head` only when its cached copy says the ring may be full, or when it
//! looks for evidence that the peer lives (see [`Fast::peer_gone`]).
//!
//! End `e` writes direction `e` and reads direction `1 - e`. Each direction also has a
//! *doorbell*, an eventfd that its writer rings to wake a sleeping reader; both ends hold both.
//!
//! # Records
//! 8-aligned, never split by the ring's end: `len: u32`, `kind: u32`, then `len` payload bytes
//! padded to 8. Kinds: `DATA` (a message, at most a quarter of the ring), `SOCKET` (the next
//! message is a frame on the socket: it carries descriptors, or is too big for the ring), `PAD`
//! (the rest of the ring is unused; the next record is at its start). Every message goes
//! through the ring, as data or as a marker, so the order of messages is the order of the ring
//! even though two transports carry them.
//!
//! # Protocol and memory order
//! - **Write** (under the writer lock, which spans processes): wait for room, write the record,
//!   then `tail.store(SeqCst)`, which publishes it (a reader's `Acquire` load of `tail` sees
//!   the bytes). A writer that dies before that store leaves nothing visible; the next writer
//!   takes the lock over and writes at the same place.
//! - **Read** (under the reader lock): `tail.load(Acquire)`, validate the record (a damaged
//!   ring is reported, never trusted), use it, then `head.store(SeqCst)`, which gives its room
//!   back. A reader that dies before that store leaves the message for the next reader.
//! - **A sleeping reader** spins first (bounded, adaptive, and only when the peer is neither
//!   closed nor itself asleep waiting for us; when the peer last ran on this very CPU, spinning
//!   would only keep it from running, so the reader yields the CPU instead, for the same
//!   bounded time), then increments `sleepers`, stores
//!   `armed = 1` and re-reads `tail` (all `SeqCst`) before it `poll`s the doorbell and the
//!   socket. The writer, after its `SeqCst` store of `tail`, reads `armed` (`SeqCst`) and, if
//!   set, swaps it to 0 and rings. Store-then-load on both sides in one total order: either
//!   the reader sees the record or the writer sees `armed`, so no wake-up is lost; an idle
//!   pipe makes no syscall. A woken reader drains the doorbell and, if other readers are
//!   registered, stores `armed = 1` again for them (the writer that rang cleared it, and they
//!   sleep on without arming again) and, if records remain, rings it again for them.
//! - **A writer waiting for room** reads `space`, stores `writer_waits = 1`, re-reads `head`,
//!   and futex-waits on `space` in slices of [`ROOM_SLICE`], checking between slices that the
//!   peer still exists. A reader that frees room swaps `writer_waits` to 0 and, if it was set,
//!   moves `space` on and wakes.
//! - **The socket** stays: descriptors and big messages travel on it (announced by a `SOCKET`
//!   record written before the frame, so a reader is never blocked by a frame it has not been
//!   told about while the writer is blocked by it), and it tells both sides that the peer is
//!   gone (end of file for a sleeping reader; `POLLHUP` for a writer, see [`Fast::peer_gone`]).
//! - **A writer that dies in the middle of a socket frame** leaves the byte stream without
//!   framing. If it was the only holder of its end, the reader gets end of file. If another
//!   process holds the end too, the next writer takes the lock over, finds `frame_open` set,
//!   and stores `poisoned` before it sends a byte; the reader checks `poisoned` after every
//!   socket frame, so the frame made of the dead writer's half and the next writer's bytes is
//!   never delivered: the connection reports [`Malformed`](super::ConnectionError::Malformed)
//!   and stops receiving. Ring messages need none of this: they are published whole.
//!   Likewise a reader that took a `SOCKET` marker sets `reading_frame` until it has read the
//!   whole frame; a reader that gets the lock and finds it set while it is not itself in the
//!   middle of that frame (its holder died, or gave up on a timeout) cannot find the next
//!   frame's start, and reports `Malformed` instead of reading from the middle of a message.

use std::cell::Cell;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ConnectionError;
use crate::handle::TrackedFd;
use crate::region::Region;
use crate::sync::raw::{Acquired, RawLock};
use crate::sys::shm::{futex_wait, futex_wake, Woken};
use crate::sys::{doorbell, socket};

const MAGIC: u32 = u32::from_le_bytes(*b"MPR1");
const VERSION: u32 = 1;
/// Bytes of ring per direction.
pub(crate) const RING: usize = 64 * 1024;
/// Where the rings start.
const DATA: usize = 4096;
/// Record header size.
const REC: usize = 8;

const KIND_DATA: u32 = 1;
const KIND_SOCKET: u32 = 2;
const KIND_PAD: u32 = 3;

const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = 4;
const OFF_RING: usize = 8;
const OFF_HOLDERS: usize = 16;
const OFF_CPU: usize = 128;

const W_TAIL: usize = 0;
const W_LOCK: usize = 64;
const W_SPACE: usize = 128;
const W_WAITS: usize = 132;
const W_FRAME_OPEN: usize = 136;
const W_POISONED: usize = 140;
const R_HEAD: usize = 256;
const R_LOCK: usize = 320;
const R_FRAME: usize = 336;
const R_ARMED: usize = 384;
const R_SLEEPERS: usize = 388;

/// How long a writer waiting for room sleeps before it checks that the peer still exists.
pub(crate) const ROOM_SLICE: Duration = Duration::from_millis(50);

/// The longest a reader (or a writer waiting for room) spins before it sleeps.
const SPIN: Duration = Duration::from_micros(20);

thread_local! {
    /// Failed spins of pipe readers and writers (see [`crate::sync::spin_until`]).
    static SKIP_SPINS: Cell<u32> = const { Cell::new(0) };
}

/// Spins until `done`, for at most [`SPIN`] and not past `deadline` (adaptive, see
/// [`crate::sync::spin_until`]); whether `done` became true.
fn spin(deadline: Option<Instant>, done: impl Fn() -> bool) -> bool {
    crate::sync::spin_until(SPIN, deadline, &SKIP_SPINS, done)
}

/// Yields the CPU until `done`, for at most [`SPIN`] and not past `deadline`: the wait of a
/// reader whose peer is runnable on the same CPU (spinning would hold the CPU it needs).
fn yield_until(deadline: Option<Instant>, done: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    let end = deadline.map_or(start + SPIN, |d| d.min(start + SPIN));
    loop {
        if done() {
            return true;
        }
        std::thread::yield_now();
        if Instant::now() >= end {
            return done();
        }
    }
}

/// What both ends of one pipe share in a process.
struct Shared {
    region: Region,
    /// `doorbells[d]` wakes the reader of direction `d`.
    doorbells: [TrackedFd; 2],
    ring: usize,
}

/// One end's view of the shared-memory path.
pub(crate) struct Fast {
    shared: Arc<Shared>,
    /// This end writes direction `end` and reads direction `1 - end`.
    end: usize,
    /// The outbound `head` seen at the last look: the peer's reading since is evidence that
    /// it is alive (see [`Fast::peer_gone`]), and room up to it is free for sure.
    last_head: AtomicU64,
    /// The inbound `tail` seen at the last send: the peer's writing since is evidence too.
    last_in: AtomicU64,
}

/// One direction's control words.
#[derive(Clone, Copy)]
struct Dir<'a> {
    region: &'a Region,
    base: usize,
    ring: *mut u8,
    cap: usize,
}

impl<'a> Dir<'a> {
    fn tail(&self) -> &'a AtomicU64 {
        self.region.get(self.base + W_TAIL)
    }
    fn head(&self) -> &'a AtomicU64 {
        self.region.get(self.base + R_HEAD)
    }
    fn writer_lock(&self) -> &'a RawLock {
        self.region.get(self.base + W_LOCK)
    }
    fn reader_lock(&self) -> &'a RawLock {
        self.region.get(self.base + R_LOCK)
    }
    fn space(&self) -> &'a AtomicU32 {
        self.region.get(self.base + W_SPACE)
    }
    fn writer_waits(&self) -> &'a AtomicU32 {
        self.region.get(self.base + W_WAITS)
    }
    fn frame_open(&self) -> &'a AtomicU32 {
        self.region.get(self.base + W_FRAME_OPEN)
    }
    fn poisoned(&self) -> &'a AtomicU32 {
        self.region.get(self.base + W_POISONED)
    }
    fn reading_frame(&self) -> &'a AtomicU32 {
        self.region.get(self.base + R_FRAME)
    }
    fn armed(&self) -> &'a AtomicU32 {
        self.region.get(self.base + R_ARMED)
    }
    fn sleepers(&self) -> &'a AtomicU32 {
        self.region.get(self.base + R_SLEEPERS)
    }

    /// Whether a record is waiting (any thread may ask).
    fn nonempty(&self, order: Ordering) -> bool {
        self.head().load(order) != self.tail().load(order)
    }

    /// Writes `bytes` at ring offset `pos` (the caller checked the bounds and owns the room).
    fn write(&self, pos: usize, bytes: &[u8]) {
        // The callers keep `pos + len <= cap` from an 8-aligned tail (checked in `push`,
        // whatever a peer wrote there); the clip makes an access past the ring impossible
        // even so, in release builds.
        let n = bytes.len().min(self.cap.saturating_sub(pos));
        // SAFETY: `pos + n <= cap`, so the range is inside this direction's ring, which the
        // mapping keeps alive; the writer lock and the protocol give this writer sole use of
        // the room between tail and head + cap, so no reader looks at these bytes until
        // `tail` publishes them.
        #[allow(unsafe_code)]
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ring.add(pos), n);
        }
    }

    fn write_header(&self, pos: usize, len: u32, kind: u32) {
        let mut h = [0u8; REC];
        h[..4].copy_from_slice(&len.to_le_bytes());
        h[4..].copy_from_slice(&kind.to_le_bytes());
        self.write(pos, &h);
    }

    /// The bytes at ring offset `pos` (the caller checked the bounds, and holds the reader
    /// lock on a published record).
    fn bytes(&self, pos: usize, len: usize) -> &'a [u8] {
        assert!(pos + len <= self.cap, "ring read out of bounds");
        // SAFETY: in bounds (checked); the record was published by the writer's `SeqCst`
        // store of `tail`, read with `Acquire`, and its room is not given back (so not
        // rewritten) until the reader stores `head`, after its last use of this slice.
        #[allow(unsafe_code)]
        unsafe {
            std::slice::from_raw_parts(self.ring.add(pos), len)
        }
    }

    /// Gives room back up to `head`, waking a writer that waits for it.
    fn release(&self, head: u64) {
        self.head().store(head, Ordering::SeqCst);
        if self.writer_waits().load(Ordering::SeqCst) != 0
            && self.writer_waits().swap(0, Ordering::SeqCst) != 0
        {
            self.space().fetch_add(1, Ordering::SeqCst);
            // Every waiter: a thread holding the writer lock, and a pending `send_async` that
            // holds no lock (its watcher waits on this word too).
            futex_wake(self.space(), u32::MAX);
        }
    }
}

fn round8(n: usize) -> usize {
    (n + 7) & !7
}

impl Fast {
    /// Both ends of a new pipe's shared-memory path.
    pub(crate) fn pair() -> io::Result<(Fast, Fast)> {
        let _birth = crate::handle::birth();
        let region = Region::new("multiprocess-pipe", DATA + 2 * RING)?;
        region
            .get::<AtomicU32>(OFF_VERSION)
            .store(VERSION, Ordering::Relaxed);
        region
            .get::<AtomicU32>(OFF_RING)
            .store(RING as u32, Ordering::Relaxed);
        region
            .get::<AtomicU32>(OFF_MAGIC)
            .store(MAGIC, Ordering::Release);
        for e in 0..2 {
            region
                .get::<AtomicU32>(OFF_HOLDERS + 4 * e)
                .store(1, Ordering::Relaxed);
        }
        let doorbells = [
            TrackedFd::new(doorbell::new()?),
            TrackedFd::new(doorbell::new()?),
        ];
        let shared = Arc::new(Shared {
            region,
            doorbells,
            ring: RING,
        });
        Ok((Fast::with(shared.clone(), 0), Fast::with(shared, 1)))
    }

    fn with(shared: Arc<Shared>, end: usize) -> Fast {
        let fast = Fast {
            shared,
            end,
            last_head: AtomicU64::new(0),
            last_in: AtomicU64::new(0),
        };
        // No evidence yet: the first send asks the socket whether the peer is there.
        let head = fast.outbound().head().load(Ordering::Acquire);
        fast.last_head.store(head, Ordering::Relaxed);
        let tail = fast.inbound().tail().load(Ordering::Acquire);
        fast.last_in.store(tail, Ordering::Relaxed);
        fast
    }

    /// An end received from another process (or another thread): checks the region.
    pub(crate) fn from_parts(
        end: u8,
        region: Region,
        bell0: OwnedFd,
        bell1: OwnedFd,
    ) -> Result<Fast, String> {
        let bell0 = doorbell::adopt(bell0)?;
        let bell1 = doorbell::adopt(bell1)?;
        let len = region.len();
        if end > 1 || len < DATA {
            return Err("not a pipe's shared memory".into());
        }
        let word = |off| region.get::<AtomicU32>(off).load(Ordering::Acquire);
        if word(OFF_MAGIC) != MAGIC {
            return Err("not a pipe's shared memory (bad magic)".into());
        }
        if word(OFF_VERSION) != VERSION {
            return Err(format!(
                "pipe shared memory of layout version {}, this build speaks {VERSION}",
                word(OFF_VERSION)
            ));
        }
        let ring = word(OFF_RING) as usize;
        if !ring.is_power_of_two() || ring < 4096 || len != DATA + 2 * ring {
            return Err(format!(
                "pipe shared memory of {len} bytes does not fit its ring size {ring}"
            ));
        }
        let end = usize::from(end);
        region
            .get::<AtomicU32>(OFF_HOLDERS + 4 * end)
            .fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(Shared {
            region,
            doorbells: [TrackedFd::new(bell0), TrackedFd::new(bell1)],
            ring,
        });
        Ok(Fast::with(shared, end))
    }

    /// Another handle on the same end (for [`Connection::try_clone`](super::Connection::try_clone)).
    pub(crate) fn clone_end(&self) -> Fast {
        self.holders(self.end).fetch_add(1, Ordering::Relaxed);
        Fast::with(self.shared.clone(), self.end)
    }

    /// What travels: this end's number, the region, and both doorbells.
    pub(crate) fn parts(&self) -> (u8, &Region, BorrowedFd<'_>, BorrowedFd<'_>) {
        (
            self.end as u8,
            &self.shared.region,
            self.shared.doorbells[0].as_fd(),
            self.shared.doorbells[1].as_fd(),
        )
    }

    /// Writes `value` at the 8-aligned `offset` of the shared memory (a hostile peer's view,
    /// for tests): direction `d`'s control words are at `512 + 1024 * d` (tail at +0, head at
    /// +256), its ring at `4096 + d * ring`. Out-of-range or unaligned offsets do nothing.
    pub(crate) fn poke(&self, offset: usize, value: u64) {
        if offset % 8 == 0 && offset + 8 <= self.shared.region.len() {
            self.shared
                .region
                .get::<AtomicU64>(offset)
                .store(value, Ordering::SeqCst);
        }
    }

    /// The largest message that travels through the ring.
    pub(crate) fn max_inline(&self) -> usize {
        self.shared.ring / 4
    }

    fn dir(&self, d: usize) -> Dir<'_> {
        let region = &self.shared.region;
        let cap = self.shared.ring;
        // In bounds: `len == DATA + 2 * cap` was checked when the region was made or received.
        let ring = region.as_ptr().wrapping_add(DATA + d * cap);
        Dir {
            region,
            base: 512 + 1024 * d,
            ring,
            cap,
        }
    }

    fn outbound(&self) -> Dir<'_> {
        self.dir(self.end)
    }

    fn inbound(&self) -> Dir<'_> {
        self.dir(1 - self.end)
    }

    fn holders(&self, end: usize) -> &AtomicU32 {
        self.shared.region.get(OFF_HOLDERS + 4 * end)
    }

    /// The doorbell that wakes this end's reader.
    pub(crate) fn inbound_bell(&self) -> BorrowedFd<'_> {
        self.shared.doorbells[1 - self.end].as_fd()
    }

    /// Whether a record (a message or a socket marker) waits in the inbound ring.
    pub(crate) fn inbound_ready(&self) -> bool {
        self.inbound().nonempty(Ordering::Acquire)
    }

    /// Whether a reader waiting for the peer should spin: the peer's end is held somewhere
    /// and the peer is not itself asleep waiting for this end with nothing to read (then
    /// nothing comes soon). A peer that sleeps but has a message from us to read is waking
    /// up to handle it, and may answer soon.
    fn peer_may_send(&self) -> bool {
        let out = self.outbound();
        self.holders(1 - self.end).load(Ordering::Relaxed) != 0
            && (out.sleepers().load(Ordering::Relaxed) == 0 || out.nonempty(Ordering::Relaxed))
    }

    /// The `cpu` hint word of end `e`.
    fn cpu_word(&self, e: usize) -> &AtomicU32 {
        self.shared.region.get(OFF_CPU + 64 * e)
    }

    /// Records the CPU this end runs on (a store only when it changed: the word stays in
    /// this end's cache). Returns the recorded value (1 + CPU, or 0 when unknown).
    pub(crate) fn note_cpu(&self) -> u32 {
        let cpu = crate::sys::sync::current_cpu().map_or(0, |c| c.wrapping_add(1));
        let word = self.cpu_word(self.end);
        if word.load(Ordering::Relaxed) != cpu {
            word.store(cpu, Ordering::Relaxed);
        }
        cpu
    }

    /// Waits briefly for an inbound record before sleeping, only while the peer may send:
    /// spins (bounded, adaptive), or, when the peer last ran on this CPU (where it now waits
    /// for this thread to let it run), yields the CPU for the same bounded time.
    pub(crate) fn spin_for_inbound(&self, deadline: Option<Instant>) -> bool {
        if self.inbound_ready() {
            return true;
        }
        if !self.peer_may_send() {
            return false;
        }
        let me = self.note_cpu();
        if me != 0 && self.cpu_word(1 - self.end).load(Ordering::Relaxed) == me {
            return yield_until(deadline, || self.inbound_ready());
        }
        spin(deadline, || self.inbound_ready())
    }

    /// Registers as a sleeper on the inbound doorbell. `true` when a record arrived meanwhile
    /// (then not registered: do not sleep, do not call [`disarm`](Self::disarm)).
    pub(crate) fn arm(&self) -> bool {
        let d = self.inbound();
        d.sleepers().fetch_add(1, Ordering::SeqCst);
        d.armed().store(1, Ordering::SeqCst);
        if d.nonempty(Ordering::SeqCst) {
            d.sleepers().fetch_sub(1, Ordering::SeqCst);
            return true;
        }
        false
    }

    /// Ends a sleep started by [`arm`](Self::arm); `rung`: the doorbell was seen readable.
    pub(crate) fn disarm(&self, rung: bool) {
        let d = self.inbound();
        let others = d
            .sleepers()
            .fetch_sub(1, Ordering::SeqCst)
            .saturating_sub(1);
        if rung && doorbell::drain(self.inbound_bell()) && others > 0 {
            // The ring we drained may have been meant for other sleepers too, and the writer
            // that rang cleared `armed`: they sleep on without arming again (a `poll` woken
            // by the ring finds the doorbell drained and goes back to sleep). Arm for them,
            // then look at the ring (`SeqCst` store then load, as in `arm`): a record
            // published before that store rang nobody, so pass it on.
            d.armed().store(1, Ordering::SeqCst);
            if d.nonempty(Ordering::SeqCst) {
                doorbell::ring(self.inbound_bell());
            }
        }
    }

    /// Whether the peer is gone, answered without a syscall when the peer wrote to us or read
    /// from us since this end's last send (it was alive then) and its end is still held; else
    /// asks the socket.
    ///
    /// So a send never succeeds into a ring that nobody will read once the peer's end is
    /// known closed; a message sent just as the peer dies is lost with it, as it would be in
    /// the socket's buffer.
    fn peer_gone(&self, sock: BorrowedFd<'_>) -> io::Result<bool> {
        if self.holders(1 - self.end).load(Ordering::Relaxed) != 0 {
            // The inbound tail first: a reply just read is in this cache already.
            let tail = self.inbound().tail().load(Ordering::Relaxed);
            if self.last_in.swap(tail, Ordering::Relaxed) != tail {
                return Ok(false);
            }
            let head = self.outbound().head().load(Ordering::Acquire);
            if self.last_head.fetch_max(head, Ordering::Relaxed) < head {
                return Ok(false);
            }
        }
        socket::peer_closed(sock)
    }

    /// The word the reader moves on when it frees room in this end's outbound ring, and what
    /// keeps it mapped (for a `send_async` waiting for room, see `Pushed::Full`).
    pub(crate) fn space_word(&self) -> (&AtomicU32, Arc<dyn Send + Sync>) {
        (
            self.outbound().space(),
            Arc::clone(&self.shared) as Arc<dyn Send + Sync>,
        )
    }

    /// Takes the writer lock (shared by every thread and process holding this end).
    pub(crate) fn lock_writer(&self) -> Writer<'_> {
        let d = self.outbound();
        // A writer that died holding it published nothing in the ring (tail is stored last);
        // but if it was sending a frame, the socket's stream lost its framing.
        if let Some(Acquired::OwnerDied(_)) = d.writer_lock().lock(None) {
            if d.frame_open().swap(0, Ordering::SeqCst) != 0 {
                d.poisoned().store(1, Ordering::SeqCst);
            }
        }
        Writer { fast: self }
    }

    /// Whether a writer died in the middle of a socket frame of the inbound direction (see
    /// the module notes): checked after each frame read, before delivering it.
    pub(crate) fn inbound_poisoned(&self) -> bool {
        self.inbound().poisoned().load(Ordering::SeqCst) != 0
    }

    /// Takes the reader lock, waiting at most until `deadline`.
    pub(crate) fn lock_reader(&self, deadline: Option<Instant>) -> Option<Reader<'_>> {
        // A reader that died holding it gave back no room it had not finished with.
        self.inbound().reader_lock().lock(deadline)?;
        Some(Reader {
            fast: self,
            pending: Cell::new(0),
        })
    }
}

impl Drop for Fast {
    fn drop(&mut self) {
        let _ = self
            .holders(self.end)
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }
}

/// The writer lock, held.
pub(crate) struct Writer<'a> {
    fast: &'a Fast,
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        self.fast.outbound().writer_lock().unlock();
    }
}

impl Writer<'_> {
    /// Appends a message (`parts` concatenated, at most [`Fast::max_inline`] bytes).
    pub(crate) fn push_data(
        &self,
        parts: &[&[u8]],
        sock: BorrowedFd<'_>,
    ) -> Result<(), ConnectionError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        debug_assert!(len <= self.fast.max_inline());
        self.push(KIND_DATA, parts, len, sock, true).map(|_| ())
    }

    /// As [`push_data`](Self::push_data) without waiting for room: [`Pushed::Full`] (nothing
    /// written) when the ring has none now. The reader moves the `space` word on from the
    /// epoch given when it frees some (see the module notes).
    pub(crate) fn try_push_data(
        &self,
        parts: &[&[u8]],
        sock: BorrowedFd<'_>,
    ) -> Result<Pushed, ConnectionError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        self.push(KIND_DATA, parts, len, sock, false)
    }

    /// Appends the marker of a frame, then sends the frame (`parts`, header included) on the
    /// socket, keeping `frame_open` set while it does.
    pub(crate) fn send_frame(
        &self,
        parts: &[&[u8]],
        fds: &[BorrowedFd<'_>],
        sock: BorrowedFd<'_>,
    ) -> Result<(), ConnectionError> {
        self.push(KIND_SOCKET, &[], 0, sock, true)?;
        let d = self.fast.outbound();
        d.frame_open().store(1, Ordering::SeqCst);
        let sent = socket::send_all(sock, parts, fds);
        if sent.is_err() {
            // Part of the frame may be out: no later frame could be told apart from it.
            d.poisoned().store(1, Ordering::SeqCst);
        }
        d.frame_open().store(0, Ordering::SeqCst);
        sent.map_err(ConnectionError::from)
    }

    /// Appends a record, waiting for room if `wait`; otherwise `Pushed::Full` when there is
    /// none (and nothing is written).
    fn push(
        &self,
        kind: u32,
        parts: &[&[u8]],
        len: usize,
        sock: BorrowedFd<'_>,
        wait: bool,
    ) -> Result<Pushed, ConnectionError> {
        let fast = self.fast;
        if fast.peer_gone(sock)? {
            return Err(ConnectionError::BrokenPipe);
        }
        let d = fast.outbound();
        let need = REC + round8(len);
        // Only writers move `tail`, and this one holds the lock. `Acquire`: a writer that died
        // holding the lock (taken over, not released) may have published last.
        let mut tail = d.tail().load(Ordering::Acquire);
        if tail % 8 != 0 {
            // Only a peer writing the shared memory makes this: records could not be laid
            // down in bounds from here.
            return Err(ConnectionError::Malformed(format!(
                "the pipe's shared ring is damaged (tail {tail} is not 8-aligned); this end no \
                 longer sends through it"
            )));
        }
        let pos = (tail as usize) & (d.cap - 1);
        let to_end = d.cap - pos;
        let pad = if need > to_end { to_end } else { 0 };
        if let Some(epoch) = self.room(d, tail, pad + need, sock, wait)? {
            return Ok(Pushed::Full { epoch });
        }
        if pad > 0 {
            d.write_header(pos, 0, KIND_PAD);
            tail = tail.wrapping_add(pad as u64);
        }
        let mut at = (tail as usize) & (d.cap - 1);
        d.write_header(at, len as u32, kind);
        at += REC;
        for p in parts {
            d.write(at, p);
            at += p.len();
        }
        d.tail()
            .store(tail.wrapping_add(need as u64), Ordering::SeqCst);
        if d.armed().load(Ordering::SeqCst) != 0 && d.armed().swap(0, Ordering::SeqCst) != 0 {
            doorbell::ring(fast.shared.doorbells[fast.end].as_fd());
        }
        Ok(Pushed::Done)
    }

    /// `None` once `need` bytes are free after `tail`, waiting for them if `wait` (then
    /// `BrokenPipe` if the peer goes away meanwhile); without `wait`, `Some(epoch)` when they
    /// are not free now, after registering as a writer waiting for room.
    fn room(
        &self,
        d: Dir<'_>,
        tail: u64,
        need: usize,
        sock: BorrowedFd<'_>,
        wait: bool,
    ) -> Result<Option<u32>, ConnectionError> {
        let fits =
            |head: u64| (d.cap as u64).saturating_sub(tail.wrapping_sub(head)) >= need as u64;
        // `head` only grows, so room seen free once stays free: look at the shared word (in
        // the reader's cache) only when the copy says the ring may be full.
        if fits(self.fast.last_head.load(Ordering::Relaxed)) {
            return Ok(None);
        }
        let fresh = || {
            let head = d.head().load(Ordering::Acquire);
            self.fast.last_head.fetch_max(head, Ordering::Relaxed);
            fits(head)
        };
        if fresh() || (wait && spin(None, fresh)) {
            return Ok(None);
        }
        loop {
            let epoch = d.space().load(Ordering::SeqCst);
            d.writer_waits().store(1, Ordering::SeqCst);
            let head = d.head().load(Ordering::SeqCst);
            if fits(head) {
                return Ok(None);
            }
            // A head ahead of the tail, or more than a ring behind it, is no position the
            // reader can have left: waiting for room would wait forever.
            if tail.wrapping_sub(head) > d.cap as u64 {
                return Err(ConnectionError::Malformed(format!(
                    "the pipe's shared ring is damaged (head {head}, tail {tail}); this end no \
                     longer sends through it"
                )));
            }
            if !wait {
                return Ok(Some(epoch));
            }
            if futex_wait(d.space(), epoch, Some(ROOM_SLICE))? == Woken::TimedOut
                && socket::peer_closed(sock)?
            {
                return Err(ConnectionError::BrokenPipe);
            }
        }
    }
}

/// How a push without waiting ended.
pub(crate) enum Pushed {
    /// The record is in the ring.
    Done,
    /// No room now; the reader moves the `space` word on from `epoch` when it frees some.
    Full { epoch: u32 },
}

/// The next inbound record.
pub(crate) enum Next<'a> {
    /// A message; valid until [`Reader::consume`].
    Data(&'a [u8]),
    /// The next message is a frame on the socket.
    Socket,
    /// Nothing yet.
    Empty,
}

/// The reader lock, held.
pub(crate) struct Reader<'a> {
    fast: &'a Fast,
    /// The size of the record returned by the last `next`.
    pending: Cell<usize>,
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        self.fast.inbound().reader_lock().unlock();
    }
}

impl<'a> Reader<'a> {
    /// The next record, or why the ring cannot be trusted.
    pub(crate) fn next(&self) -> Result<Next<'a>, String> {
        let d = self.fast.inbound();
        loop {
            // Only readers move `head`, under the lock; `Acquire` as for `tail` in `push`.
            let head = d.head().load(Ordering::Acquire);
            let tail = d.tail().load(Ordering::Acquire);
            if head == tail {
                return Ok(Next::Empty);
            }
            let avail = tail.wrapping_sub(head);
            if avail > d.cap as u64 || avail % 8 != 0 || head % 8 != 0 {
                return Err(format!(
                    "pipe ring positions are damaged (head {head}, tail {tail})"
                ));
            }
            let pos = (head as usize) & (d.cap - 1);
            let h = d.bytes(pos, REC);
            let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
            let kind = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
            match kind {
                KIND_PAD => {
                    let to_end = (d.cap - pos) as u64;
                    if to_end > avail {
                        return Err("pipe ring padding runs past the written data".into());
                    }
                    d.release(head.wrapping_add(to_end));
                }
                KIND_DATA | KIND_SOCKET => {
                    let size = REC + round8(len);
                    if len > self.fast.max_inline()
                        || size as u64 > avail
                        || pos + size > d.cap
                        || (kind == KIND_SOCKET && len != 0)
                    {
                        return Err(format!(
                            "pipe ring record of {len} bytes does not fit the written data"
                        ));
                    }
                    self.pending.set(size);
                    return Ok(if kind == KIND_DATA {
                        Next::Data(d.bytes(pos + REC, len))
                    } else {
                        Next::Socket
                    });
                }
                other => return Err(format!("unknown pipe ring record kind {other}")),
            }
        }
    }

    /// Whether some reader is in the middle of a socket frame (see the module notes).
    pub(crate) fn frame_in_progress(&self) -> bool {
        self.fast.inbound().reading_frame().load(Ordering::Acquire) != 0
    }

    /// Marks the start or the end of reading a socket frame.
    pub(crate) fn set_frame_in_progress(&self, reading: bool) {
        self.fast
            .inbound()
            .reading_frame()
            .store(u32::from(reading), Ordering::Release);
    }

    /// Gives back the room of the record returned by the last [`next`](Self::next); its
    /// bytes must not be used after this.
    pub(crate) fn consume(&self) {
        let d = self.fast.inbound();
        let head = d.head().load(Ordering::Acquire);
        d.release(head.wrapping_add(self.pending.replace(0) as u64));
        // Where the user's code runs next, and the reply comes from: the peer's hint.
        self.fast.note_cpu();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock() -> (OwnedFd, OwnedFd) {
        socket::socketpair().unwrap()
    }

    #[test]
    fn records_wrap_around_the_ring_intact() {
        let (a, b) = Fast::pair().unwrap();
        let (sa, _sb) = sock();
        let mut expected = std::collections::VecDeque::new();
        let mut n = 0u32;
        for round in 0..2000usize {
            let len = (round * 37) % (a.max_inline() + 1);
            let msg: Vec<u8> = (0..len).map(|k| (k + round) as u8).collect();
            a.lock_writer().push_data(&[&msg], sa.as_fd()).unwrap();
            expected.push_back(msg);
            n += 1;
            // Keep two in flight (they always fit) so records end at every offset.
            while expected.len() > 1 {
                let r = b.lock_reader(None).unwrap();
                match r.next().unwrap() {
                    Next::Data(bytes) => assert!(bytes == expected.pop_front().unwrap()),
                    _ => panic!("expected data"),
                }
                r.consume();
            }
        }
        assert!(n > 0);
        assert!(a.outbound().tail().load(Ordering::Relaxed) > 10 * RING as u64);
    }

    #[test]
    fn a_damaged_ring_is_reported_not_trusted() {
        let (a, b) = Fast::pair().unwrap();
        let (sa, _sb) = sock();
        a.lock_writer().push_data(&[b"hello"], sa.as_fd()).unwrap();
        let d = a.outbound();
        // A record longer than the data written.
        d.write_header(0, 4000, KIND_DATA);
        assert!(b.lock_reader(None).unwrap().next().is_err());
        // An unknown kind.
        d.write_header(0, 5, 99);
        assert!(b.lock_reader(None).unwrap().next().is_err());
        // Positions further apart than the ring.
        d.write_header(0, 5, KIND_DATA);
        d.tail().store(3 * RING as u64, Ordering::SeqCst);
        assert!(b.lock_reader(None).unwrap().next().is_err());
    }

    #[test]
    fn a_region_that_is_not_a_pipe_is_refused() {
        let r = Region::new("test", DATA + 2 * RING).unwrap();
        let (x, y) = sock();
        assert!(Fast::from_parts(0, r, x, y).is_err());
        let (a, _b) = Fast::pair().unwrap();
        let (_, region, b0, b1) = a.parts();
        let copy = Region::from_fd(region.as_fd().try_clone_to_owned().unwrap()).unwrap();
        let bells = (
            b0.try_clone_to_owned().unwrap(),
            b1.try_clone_to_owned().unwrap(),
        );
        assert!(Fast::from_parts(2, copy, bells.0, bells.1).is_err());
    }
}
