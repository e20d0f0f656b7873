//! The robust lock word every lock of the crate is built on.
//!
//! # Layout (16 bytes, 8-aligned, inside a [`Region`](crate::region::Region))
//! | offset | type | contents |
//! |---|---|---|
//! | 0 | `AtomicU32` | `state`: 0 when free, else the holder's thread id, with bit 31 (`WAITERS`) set when someone may sleep on the word |
//! | 4 | `u32` | unused (zero) |
//! | 8 | `AtomicU64` | `owner`: the holder's thread id (high half) and start time (low half) |
//!
//! The version of this layout is carried by the magic number of whatever object holds it.
//!
//! # Protocol
//! - **Lock**: one compare-and-swap of `state` from 0 to my thread id (`Acquire`), then
//!   `owner` is written (`Relaxed`: it is only a hint for the liveness check below).
//! - **Contention**: spin briefly, then set `WAITERS` and `futex_wait` on `state` for at most
//!   [`LIVENESS_SLICE`]. A waiter that wins a free word after sleeping stores
//!   `me | WAITERS`, conservatively, so that sleepers behind it are not forgotten (Drepper's
//!   three-state mutex, with the holder's id in place of "locked").
//! - **Unlock**: `swap(0, Release)`; if `WAITERS` was set, wake one sleeper.
//! - **A dead holder**: each time a waiter's slice ends with the word unchanged, it checks the
//!   holder (`/proc/<tid>/stat`: gone, a zombie, or a thread id reused by a thread with another
//!   start time all mean dead). If dead, it takes the lock over with a compare-and-swap from
//!   the exact word it saw, so only one waiter wins and a holder that released in between is
//!   not robbed; the winner is told (`Acquired::OwnerDied`).
//! - **The same check everywhere**: a `try_lock` that finds the word held, and a timed lock
//!   whose deadline passes (even one shorter than a slice, even zero), make that check once
//!   before giving up; `is_held` counts a dead holder's lock as free.
//! - **A word no holder wrote**: another process can write anything into `state` and
//!   `owner`. `WAITERS` without a thread id is never written by this protocol; it is taken
//!   over as from a dead holder (reported with thread id 0). A thread id that is not a live
//!   thread, or whose start time differs from the one in `owner`, is a dead holder. A word
//!   naming a live thread is a live holder: a peer can always hold a lock, so the bound on
//!   that is the caller's timeout.
//!
//! The `Acquire` on every successful compare-and-swap and the `Release` of the unlock's swap
//! order the protected data as in any mutex; the futex call re-reads `state` atomically with
//! going to sleep, so a wake-up cannot be lost between the check and the sleep.
//!
//! # Why not the kernel's robust-futex list
//! The kernel can mark a futex `FUTEX_OWNER_DIED` when its holder exits, through a per-thread
//! list registered with `set_robust_list`. glibc registers that list for every thread and owns
//! it (its robust pthread mutexes are on it); a second registration would replace glibc's and
//! break its mutexes. The owner check on a timeout needs no registration, costs nothing when
//! there is no contention, and bounds the delay before a dead holder is noticed by
//! [`LIVENESS_SLICE`].
//!
//! # Thread-id reuse
//! The start time next to the id tells a reused id apart; the only window left is a holder
//! that dies between its compare-and-swap and its store of `owner` (a few instructions) and
//! whose id is then reused before a waiter looks.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::region::Shared;
use crate::sys::shm::{futex_wait, futex_wake, Woken};
use crate::sys::sync::{current_thread, thread_alive};

/// How long a waiter sleeps before it checks that the holder still lives.
pub(crate) const LIVENESS_SLICE: Duration = Duration::from_millis(100);

const WAITERS: u32 = 1 << 31;
const TID: u32 = !WAITERS;
const SPINS: u32 = 100;

/// How a lock was acquired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Acquired {
    /// From a live holder or a free word.
    Clean,
    /// Taken over from this thread id, which died holding it.
    OwnerDied(u32),
}

/// The lock word and its owner hint (see the module notes).
#[repr(C)]
#[derive(Debug)]
pub(crate) struct RawLock {
    state: AtomicU32,
    _unused: AtomicU32,
    owner: AtomicU64,
}

// SAFETY: atomics only; all zeros is a free lock.
#[allow(unsafe_code)]
unsafe impl Shared for RawLock {}

impl RawLock {
    /// Bytes taken in a region.
    pub(crate) const SIZE: usize = 16;

    /// One compare-and-swap from free to mine, without looking at the holder.
    #[inline]
    fn try_fast(&self) -> bool {
        let (tid, start) = current_thread();
        if self
            .state
            .compare_exchange(0, tid, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            self.set_owner(tid, start);
            true
        } else {
            false
        }
    }

    /// Tries once, without waiting: takes a free lock, or takes the lock over from a dead
    /// holder (one liveness check, as a waiter makes at the end of each slice); `None` when a
    /// live holder has it.
    pub(crate) fn try_lock(&self) -> Option<Acquired> {
        if self.try_fast() {
            return Some(Acquired::Clean);
        }
        let seen = self.state.load(Ordering::Relaxed);
        if seen == 0 {
            // Released since the compare-and-swap: one more try, not a loop.
            return self.try_fast().then_some(Acquired::Clean);
        }
        self.take_over_if_dead(seen)
    }

    /// Locks, waiting at most until `deadline` (`None`: no limit); `None` when it passed.
    #[inline]
    pub(crate) fn lock(&self, deadline: Option<Instant>) -> Option<Acquired> {
        if self.try_fast() {
            return Some(Acquired::Clean);
        }
        self.lock_slow(deadline)
    }

    /// Takes the lock over if the word `seen` (not 0) names a dead holder, or no holder at all
    /// (`WAITERS` alone, which this protocol never writes: a peer wrote it); a compare-and-swap
    /// from exactly `seen`, so only one taker wins and a holder that released or changed in
    /// between is not robbed.
    fn take_over_if_dead(&self, seen: u32) -> Option<Acquired> {
        let holder = seen & TID;
        if holder != 0 && self.holder_alive(holder) {
            return None;
        }
        let (me, start) = current_thread();
        self.state
            .compare_exchange(seen, me | WAITERS, Ordering::Acquire, Ordering::Relaxed)
            .ok()?;
        self.set_owner(me, start);
        Some(Acquired::OwnerDied(holder))
    }

    #[inline]
    fn set_owner(&self, tid: u32, start: u32) {
        self.owner
            .store((u64::from(tid) << 32) | u64::from(start), Ordering::Relaxed);
    }

    #[cold]
    fn lock_slow(&self, deadline: Option<Instant>) -> Option<Acquired> {
        let (me, start) = current_thread();
        let mut spins = 0;
        loop {
            let v = self.state.load(Ordering::Relaxed);
            if v == 0 {
                // After spinning only, take it plainly; after sleeping, keep WAITERS.
                let new = if spins < SPINS { me } else { me | WAITERS };
                if self
                    .state
                    .compare_exchange(0, new, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    self.set_owner(me, start);
                    return Some(Acquired::Clean);
                }
                continue;
            }
            if spins < SPINS && v & WAITERS == 0 {
                spins += 1;
                std::hint::spin_loop();
                continue;
            }
            spins = SPINS;
            if v & WAITERS == 0
                && self
                    .state
                    .compare_exchange(v, v | WAITERS, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            let mut slice = LIVENESS_SLICE;
            if let Some(d) = deadline {
                let now = Instant::now();
                if now >= d {
                    // A timeout shorter than a slice still looks at the holder once.
                    let seen = self.state.load(Ordering::Relaxed);
                    return match seen {
                        0 => self.try_fast().then_some(Acquired::Clean),
                        _ => self.take_over_if_dead(seen),
                    };
                }
                slice = slice.min(d - now);
            }
            match futex_wait(&self.state, v | WAITERS, Some(slice)) {
                Ok(Woken::Maybe) => continue,
                Ok(Woken::TimedOut) => {}
                // Cannot happen on a valid shared word; do not spin if it somehow does.
                Err(_) => std::thread::sleep(slice),
            }
            let seen = self.state.load(Ordering::Relaxed);
            if seen != 0 {
                if let Some(how) = self.take_over_if_dead(seen) {
                    return Some(how);
                }
            }
        }
    }

    fn holder_alive(&self, tid: u32) -> bool {
        let hint = self.owner.load(Ordering::Relaxed);
        let start = if (hint >> 32) as u32 == tid {
            hint as u32
        } else {
            0 // not written yet by this holder: only check that the id exists
        };
        thread_alive(tid, start)
    }

    /// Unlocks (the caller holds the lock).
    #[inline]
    pub(crate) fn unlock(&self) {
        if self.state.swap(0, Ordering::Release) & WAITERS != 0 {
            futex_wake(&self.state, 1);
        }
    }

    /// The holder's thread id, 0 when free.
    pub(crate) fn holder(&self) -> u32 {
        self.state.load(Ordering::Relaxed) & TID
    }

    /// Whether a live thread holds the lock: a dead holder's lock counts as free (the next
    /// locker takes it over), and so does a word that names no thread.
    pub(crate) fn is_held(&self) -> bool {
        let h = self.holder();
        h != 0 && self.holder_alive(h)
    }

    /// Whether the calling thread holds the lock.
    pub(crate) fn held_by_me(&self) -> bool {
        let h = self.holder();
        h != 0 && h == current_thread().0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::Region;
    use std::sync::Arc;

    #[test]
    fn lock_unlock_and_contention_between_threads() {
        let r = Arc::new(Region::new("test-lock", 4096).unwrap());
        let counter = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let r = r.clone();
                let c = counter.clone();
                std::thread::spawn(move || {
                    let l = r.get::<RawLock>(8);
                    for _ in 0..10_000 {
                        assert_eq!(l.lock(None), Some(Acquired::Clean));
                        // A non-atomic read-modify-write made safe by the lock.
                        let v = c.load(Ordering::Relaxed);
                        c.store(v + 1, Ordering::Relaxed);
                        l.unlock();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(counter.load(Ordering::Relaxed), 40_000);
        assert_eq!(r.get::<RawLock>(8).holder(), 0);
    }

    #[test]
    fn a_lock_held_by_an_ended_thread_is_taken_over() {
        let r = Arc::new(Region::new("test-lock", 4096).unwrap());
        let r2 = r.clone();
        let tid = std::thread::spawn(move || {
            assert_eq!(r2.get::<RawLock>(8).try_lock(), Some(Acquired::Clean));
            current_thread().0
        })
        .join()
        .unwrap();
        let l = r.get::<RawLock>(8);
        // `join` returns a moment before the thread is gone from /proc (see sys::sync).
        let until = Instant::now() + Duration::from_secs(2);
        while l.is_held() {
            assert!(
                Instant::now() < until,
                "the ended thread still holds the lock"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(l.try_lock(), Some(Acquired::OwnerDied(tid)));
        assert!(l.held_by_me());
        l.unlock();
    }

    #[test]
    fn timeout() {
        let r = Region::new("test-lock", 4096).unwrap();
        let l = r.get::<RawLock>(8);
        assert_eq!(l.try_lock(), Some(Acquired::Clean));
        // Held by this live thread: a deadline ends the wait.
        let t = Instant::now();
        assert_eq!(l.lock(Some(t + Duration::from_millis(30))), None);
        assert!(t.elapsed() >= Duration::from_millis(30));
        l.unlock();
    }
}
