//! `Barrier`.
//!
//! # Layout (one memfd, zero-filled, then initialized)
//! | offset | type | contents |
//! |---|---|---|
//! | 0 | `u32` | magic `"mBa1"` |
//! | 8 | [`RawLock`] | guards every field below but `generation` reads |
//! | 24 | `AtomicU32` | `generation`: bumped when a round ends (all arrived, broken, or reset); the futex word |
//! | 28 | `AtomicU32` | `count`: parties arrived in this round |
//! | 32 | `AtomicU32` | `parties` |
//! | 36 | `AtomicU32` | `broken`: why the barrier is broken (0: it is not) |
//! | 40 | `AtomicU32` | `history`: bit `g % 32` set when round `g` ended broken |
//! | 44 | `AtomicU32` | `dead`: thread id of the party found dead, if any |
//! | 48 | `AtomicU32` | `round`: the generation of the last round that ended broken |
//! | 52 | `AtomicU32` | `round_why`: why that round broke (kept when `reset` clears `broken`) |
//! | 56 | `AtomicU32` | `round_dead`: the dead party that broke it, if any |
//! | 64 | `[AtomicU64; parties]` | the identity (thread id, start time) of each party waiting in this round, in arrival order |
//!
//! # Protocol
//! A party locks, records itself in the next slot and increments `count`. The last one ends
//! the round: clears the round's `history` bit, resets `count`, bumps `generation`
//! (`Release`) and wakes everyone. The others unlock and sleep on `generation`; when it moves
//! (`Acquire`), the round's `history` bit tells them whether it ended broken (a party cannot
//! be left behind by more than one later round, which cannot end without it; rounds that only
//! break and reset can, and 32 of them must pass while it sleeps for the bit to be reused).
//! A sleeper whose slice of [`LIVENESS_SLICE`] ends checks, under the lock, that every party
//! recorded in the round is alive; if one is dead it breaks the round. A timeout breaks the
//! round too, as in Python. The last party checks the recorded parties the same way before
//! it ends the round (one `/proc` read per party per round), and breaks it instead if one is
//! dead. Breaking sets `broken`, the round's `history` bit, `dead` when a
//! party died, `round`/`round_why`/`round_dead`, bumps `generation` and wakes everyone. A
//! released waiter of a broken round reports `round_why` when `round` is its round (so the
//! waiters released by `reset`, which clears `broken` at once, are told it was a reset), else
//! the current `broken`.
//!
//! # Trust
//! Any process holding the region can write any word. `parties` is read once, when a handle
//! is made or received (and checked against the region's length); every slot index comes from
//! that copy. Under the lock, a shared `parties` that differs from it, a `count` not below it,
//! or a `broken` reason no version writes, breaks the round as corrupt (`reset` restores
//! `parties`). A timed wait bounds every acquisition of the barrier's lock by its deadline
//! (plus [`BREAK_GRACE`] to break the round for the others), so a process that holds the lock
//! forever cannot keep a `wait_timeout` past its timeout. A process that bumps `generation`
//! releases the waiters early; that is a wrong answer for this barrier, not a crash.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::raw::{Acquired, RawLock, LIVENESS_SLICE};
use super::{deadline, handle_serde, magic, Tagged, BODY, WAKE_ALL};
use crate::sys::shm::{futex_wait, futex_wake};
use crate::sys::sync::{current_thread, thread_alive};

const MAGIC: u32 = magic(b"mBa1");
const GENERATION: usize = BODY + RawLock::SIZE;
const COUNT: usize = GENERATION + 4;
const PARTIES: usize = COUNT + 4;
const BROKEN: usize = PARTIES + 4;
const HISTORY: usize = BROKEN + 4;
const DEAD: usize = HISTORY + 4;
const ROUND: usize = DEAD + 4;
const ROUND_WHY: usize = ROUND + 4;
const ROUND_DEAD: usize = ROUND_WHY + 4;
const SLOTS: usize = 64;

const ABORTED: u32 = 1;
const TIMED_OUT: u32 = 2;
const DIED: u32 = 3;
const RESET: u32 = 4;
/// A shared word held a value the protocol never writes (another process wrote over it).
const CORRUPT: u32 = 5;
/// How long a party whose timeout passed may wait for the barrier's lock to break the round:
/// the lock is held for microseconds by a party that follows the protocol.
const BREAK_GRACE: Duration = LIVENESS_SLICE;

/// A meeting point for a fixed number of parties (Python's `multiprocessing.Barrier`).
///
/// Each party calls [`wait`](Barrier::wait); all return together once `parties` have arrived,
/// and the barrier is ready for the next round. A timeout, an [`abort`](Barrier::abort), or a
/// party that dies while waiting *breaks* it: every waiter, and every later `wait` until
/// [`reset`](Barrier::reset), gets a [`BarrierError`]. Python's `action` argument has no
/// equivalent: let the party whose `wait` returned 0 do the work.
///
/// A party that dies *while waiting* is noticed within about 100 ms by the other waiters,
/// and by the last party to arrive (which checks the others before it releases them). A
/// party that dies between rounds, before it reaches the barrier, cannot be told apart from
/// a slow one: use [`wait_timeout`](Barrier::wait_timeout) where that matters.
///
/// # Examples
/// ```
/// use multiprocess::{Barrier, Process};
///
/// fn party(b: Barrier) -> u32 {
///     b.wait().unwrap()
/// }
///
/// let barrier = Barrier::new(2)?;
/// let mut p = Process::builder().start(party, barrier.clone())?;
/// let mine = barrier.wait()?;
/// let theirs = p.join_result()?;
/// assert_eq!(mine + theirs, 1); // one got 0, the other 1
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Barrier {
    tagged: Tagged,
    /// `parties`, read once when the handle was made or received and checked against the
    /// region's length; the shared word is only compared with it.
    parties: u32,
}

handle_serde!(Barrier, MAGIC, SLOTS + 8, "barrier");

impl Barrier {
    /// A barrier for `parties` parties.
    ///
    /// # Errors
    /// `InvalidInput` when `parties` is 0; or when the shared memory cannot be created.
    ///
    /// # Examples
    /// ```
    /// let b = multiprocess::Barrier::new(3)?;
    /// assert_eq!(b.parties(), 3);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn new(parties: u32) -> io::Result<Barrier> {
        if parties == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a barrier needs at least one party",
            ));
        }
        let len = SLOTS + 8 * parties as usize;
        let tagged = Tagged::new("multiprocess-barrier", MAGIC, len)?;
        let b = Barrier { tagged, parties };
        b.word(PARTIES).store(parties, Ordering::Release);
        Ok(b)
    }

    fn from_tagged(tagged: Tagged) -> Result<Barrier, String> {
        let parties = tagged
            .region
            .get::<AtomicU32>(PARTIES)
            .load(Ordering::Acquire);
        let fits = (parties as usize)
            .checked_mul(8)
            .and_then(|n| n.checked_add(SLOTS))
            .is_some_and(|end| end <= tagged.region.len());
        if parties == 0 || !fits {
            return Err(format!(
                "the received barrier is malformed: its `parties` word ({parties}) does not fit \
                 its shared memory"
            ));
        }
        Ok(Barrier { tagged, parties })
    }

    fn word(&self, offset: usize) -> &AtomicU32 {
        self.tagged.region.get(offset)
    }

    /// Test support: the `u32` word at byte `offset` of the shared region (layout in the
    /// sources), as any process holding the region could write it; `None` past its end.
    #[doc(hidden)]
    pub fn __shared_word(&self, offset: usize) -> Option<&AtomicU32> {
        self.tagged.word_at(offset)
    }

    fn slot(&self, i: u32) -> &AtomicU64 {
        self.tagged.region.get(SLOTS + 8 * i as usize)
    }

    fn raw(&self) -> &RawLock {
        self.tagged.region.get(BODY)
    }

    /// Locks the barrier's state, waiting at most until `deadline`; whether it did. A party
    /// that died holding it breaks the round (a lock word that named no party, written by
    /// another process, breaks it as corrupt).
    fn lock(&self, deadline: Option<Instant>) -> bool {
        match self.raw().lock(deadline) {
            None => false,
            Some(Acquired::Clean) => true,
            Some(Acquired::OwnerDied(0)) => {
                self.break_round(CORRUPT, 0);
                true
            }
            Some(Acquired::OwnerDied(tid)) => {
                self.break_round(DIED, tid);
                true
            }
        }
    }

    /// Whether the shared words this process relies on are ones the protocol can write: the
    /// number of parties is the one checked on receipt, and fewer than that have arrived (the
    /// lock is held). Another process may have written anything.
    fn consistent(&self) -> bool {
        self.word(PARTIES).load(Ordering::Relaxed) == self.parties
            && self.word(COUNT).load(Ordering::Relaxed) < self.parties
            && self.word(BROKEN).load(Ordering::Relaxed) <= CORRUPT
    }

    /// Ends the current round as broken (the lock is held).
    fn break_round(&self, why: u32, dead: u32) {
        let generation = self.word(GENERATION);
        let g = generation.load(Ordering::Relaxed);
        self.word(BROKEN).store(why, Ordering::Relaxed);
        if dead != 0 {
            self.word(DEAD).store(dead, Ordering::Relaxed);
        }
        self.word(HISTORY)
            .fetch_or(1 << (g % 32), Ordering::Relaxed);
        self.word(ROUND).store(g, Ordering::Relaxed);
        self.word(ROUND_WHY).store(why, Ordering::Relaxed);
        self.word(ROUND_DEAD).store(dead, Ordering::Relaxed);
        self.word(COUNT).store(0, Ordering::Relaxed);
        generation.store(g.wrapping_add(1), Ordering::Release);
        futex_wake(generation, WAKE_ALL);
    }

    fn error(&self) -> BarrierError {
        BarrierError::new(
            self.word(BROKEN).load(Ordering::Relaxed),
            self.word(DEAD).load(Ordering::Relaxed),
        )
    }

    /// Why round `g` ended broken (the lock is held).
    fn round_error(&self, g: u32) -> BarrierError {
        if self.word(ROUND).load(Ordering::Relaxed) == g {
            BarrierError::new(
                self.word(ROUND_WHY).load(Ordering::Relaxed),
                self.word(ROUND_DEAD).load(Ordering::Relaxed),
            )
        } else {
            self.error()
        }
    }

    /// Waits for every party; returns this party's arrival index, from 0 to `parties - 1`.
    ///
    /// # Errors
    /// [`BarrierError`] when the barrier is, or gets, broken.
    ///
    /// # Examples
    /// ```
    /// let b = multiprocess::Barrier::new(1)?;
    /// assert_eq!(b.wait()?, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn wait(&self) -> Result<u32, BarrierError> {
        self.wait_until(None)
    }

    /// Like [`wait`](Barrier::wait), for at most `timeout`; a timeout breaks the barrier
    /// (Python's `wait(timeout)`).
    ///
    /// # Errors
    /// [`BarrierError`] when the barrier is or gets broken; [`BarrierError::is_timeout`] when
    /// this timeout broke it.
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// let b = multiprocess::Barrier::new(2)?;
    /// let err = b.wait_timeout(Duration::from_millis(10)).unwrap_err();
    /// assert!(err.is_timeout());
    /// assert!(b.is_broken());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> Result<u32, BarrierError> {
        self.wait_until(deadline(timeout))
    }

    fn wait_until(&self, deadline: Option<Instant>) -> Result<u32, BarrierError> {
        let (tid, start) = current_thread();
        let generation = self.word(GENERATION);
        let timed_out = BarrierError {
            why: TIMED_OUT,
            dead: 0,
        };
        if !self.lock(deadline) {
            // Held by a live party past the deadline: this party never arrived.
            return Err(timed_out);
        }
        if !self.consistent() {
            self.break_round(CORRUPT, 0);
        }
        if self.word(BROKEN).load(Ordering::Relaxed) != 0 {
            let e = self.error();
            self.raw().unlock();
            return Err(e);
        }
        let g = generation.load(Ordering::Relaxed);
        let parties = self.parties;
        let index = self.word(COUNT).load(Ordering::Relaxed);
        self.slot(index)
            .store((u64::from(tid) << 32) | u64::from(start), Ordering::Relaxed);
        if index + 1 >= parties {
            // A party that died while waiting cannot go on: break rather than trip, so that
            // the survivors learn about it now instead of missing it in the next round.
            if let Some(dead) = self.first_dead(index) {
                self.break_round(DIED, dead);
                let e = self.error();
                self.raw().unlock();
                return Err(e);
            }
            self.word(HISTORY)
                .fetch_and(!(1 << (g % 32)), Ordering::Relaxed);
            self.word(COUNT).store(0, Ordering::Relaxed);
            generation.store(g.wrapping_add(1), Ordering::Release);
            futex_wake(generation, WAKE_ALL);
            self.raw().unlock();
            return Ok(index);
        }
        self.word(COUNT).store(index + 1, Ordering::Relaxed);
        self.raw().unlock();
        loop {
            let mut slice = LIVENESS_SLICE;
            let mut last = false;
            if let Some(d) = deadline {
                let now = Instant::now();
                if now >= d {
                    // Break the round for everyone; if a live process holds the lock past
                    // the grace, give up alone (the others keep their own timeouts).
                    if !self.lock(now.checked_add(BREAK_GRACE)) {
                        return Err(timed_out);
                    }
                    if generation.load(Ordering::Relaxed) == g {
                        self.break_round(TIMED_OUT, 0);
                    }
                    self.raw().unlock();
                    last = true;
                } else if d - now < slice {
                    slice = d - now;
                }
            }
            if !last {
                let _ = futex_wait(generation, g, Some(slice));
            }
            if generation.load(Ordering::Acquire) != g {
                // The round ended: its `history` bit and reason were written before the
                // `Release` of `generation` (no lock needed to read them).
                let broken = self.word(HISTORY).load(Ordering::Relaxed) & (1 << (g % 32)) != 0;
                return if broken {
                    Err(self.round_error(g))
                } else {
                    Ok(index)
                };
            }
            // Still waiting: is every party of this round alive? (Not past the deadline: the
            // next turn handles that.)
            if !self.lock(deadline) {
                continue;
            }
            if generation.load(Ordering::Relaxed) == g {
                if !self.consistent() {
                    self.break_round(CORRUPT, 0);
                } else {
                    let count = self.word(COUNT).load(Ordering::Relaxed);
                    if let Some(dead) = self.first_dead(count) {
                        self.break_round(DIED, dead);
                    }
                }
            }
            self.raw().unlock();
        }
    }

    /// The first of the first `count` parties of this round that is dead (the lock is held).
    fn first_dead(&self, count: u32) -> Option<u32> {
        (0..count).find_map(|i| {
            let token = self.slot(i).load(Ordering::Relaxed);
            let (t, s) = ((token >> 32) as u32, token as u32);
            (t != 0 && !thread_alive(t, s)).then_some(t)
        })
    }

    /// Breaks the barrier: every waiter and every later `wait` gets an error until
    /// [`reset`](Barrier::reset).
    ///
    /// # Examples
    /// ```
    /// let b = multiprocess::Barrier::new(2)?;
    /// b.abort();
    /// assert!(b.is_broken());
    /// assert!(b.wait().is_err());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn abort(&self) {
        self.lock(None);
        self.break_round(ABORTED, 0);
        self.raw().unlock();
    }

    /// Makes the barrier whole again; parties waiting now get an error whose
    /// [`is_reset`](BarrierError::is_reset) is true (Python's `BrokenBarrierError`).
    ///
    /// # Examples
    /// ```
    /// let b = multiprocess::Barrier::new(1)?;
    /// b.abort();
    /// b.reset();
    /// assert!(!b.is_broken());
    /// assert_eq!(b.wait().unwrap(), 0);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn reset(&self) {
        self.lock(None);
        if self.word(COUNT).load(Ordering::Relaxed) > 0 {
            self.break_round(RESET, 0);
        }
        // Whole again: the number of parties this handle was checked with.
        self.word(PARTIES).store(self.parties, Ordering::Relaxed);
        self.word(BROKEN).store(0, Ordering::Relaxed);
        self.word(DEAD).store(0, Ordering::Relaxed);
        self.raw().unlock();
    }

    /// The number of parties.
    ///
    /// # Examples
    /// ```
    /// assert_eq!(multiprocess::Barrier::new(4)?.parties(), 4);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn parties(&self) -> u32 {
        self.parties
    }

    /// How many parties wait now (Python's `n_waiting`).
    ///
    /// # Examples
    /// ```
    /// assert_eq!(multiprocess::Barrier::new(4)?.n_waiting(), 0);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn n_waiting(&self) -> u32 {
        self.word(COUNT).load(Ordering::Relaxed).min(self.parties)
    }

    /// Whether the barrier is broken.
    ///
    /// # Examples
    /// ```
    /// assert!(!multiprocess::Barrier::new(4)?.is_broken());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "broken")]
    pub fn is_broken(&self) -> bool {
        self.word(BROKEN).load(Ordering::Relaxed) != 0
    }
}

/// The barrier is broken (Python's `BrokenBarrierError`); the accessors say why.
///
/// # Examples
/// ```
/// let b = multiprocess::Barrier::new(2)?;
/// b.abort();
/// let e = b.wait().unwrap_err();
/// assert!(e.is_aborted());
/// assert_eq!(e.dead_party(), None);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BarrierError {
    why: u32,
    dead: u32,
}

impl BarrierError {
    /// From shared words: a reason no version of the crate writes is `CORRUPT`.
    fn new(why: u32, dead: u32) -> BarrierError {
        BarrierError {
            why: if why > CORRUPT { CORRUPT } else { why },
            dead,
        }
    }

    /// A party's timeout broke the barrier.
    pub fn is_timeout(&self) -> bool {
        self.why == TIMED_OUT
    }

    /// [`Barrier::abort`] broke it.
    pub fn is_aborted(&self) -> bool {
        self.why == ABORTED
    }

    /// [`Barrier::reset`] was called while this party waited.
    pub fn is_reset(&self) -> bool {
        self.why == RESET
    }

    /// The thread id (the process id, for a main thread) of the party that died while
    /// waiting, when that is what broke it.
    pub fn dead_party(&self) -> Option<i32> {
        (self.why == DIED && self.dead != 0).then_some(self.dead as i32)
    }
}

impl fmt::Display for BarrierError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the barrier is broken")?;
        match self.why {
            ABORTED => f.write_str(": aborted"),
            TIMED_OUT => f.write_str(": a party timed out"),
            RESET => f.write_str(": reset while waiting"),
            DIED => write!(f, ": a party (thread {}) died while waiting", self.dead),
            CORRUPT => f.write_str(": its shared state was written over by another process"),
            _ => Ok(()),
        }
    }
}

impl std::error::Error for BarrierError {}
