//! `Condition`.
//!
//! # Layout (one memfd, zero-filled)
//! | offset | type | contents |
//! |---|---|---|
//! | 0 | `u32` | magic `"mCv1"` |
//! | 8 | [`RawLock`] | the condition's own lock (unused when built on a [`Lock`]) |
//! | 24 | `AtomicU32` | `seq`, bumped by every notify; the futex word |
//! | 28 | `AtomicU32` | `sleepers` (a hint: a waiter that dies leaves it one too high, which only costs a wake-up call) |
//!
//! # Protocol
//! `wait`, holding the lock: read `seq`, increment `sleepers` (`SeqCst`), unlock, sleep while
//! `seq` is unchanged, decrement `sleepers`, lock again. `notify(n)`: increment `seq`
//! (`SeqCst`), then if `sleepers` is not 0 wake `n` sleepers. Whichever of the two `SeqCst`
//! accesses comes second sees the other, and the futex call re-checks `seq`: a notify that
//! follows the waiter's read of `seq` always ends its wait. As with std's `Condvar`, a waiter
//! may also wake without a notify (and a notify may end the wait of a waiter that had not yet
//! gone to sleep), so wait for a predicate: [`ConditionGuard::wait_while`].
//!
//! Another process holding the region may write any word: `seq` and `sleepers` only decide
//! whether to sleep and whom to wake (wrapping arithmetic, no index), so garbage there costs
//! spurious wake-ups or wake-up calls; the lock word is handled as every [`RawLock`] is.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::lock::{Lock, LockGuard};
use super::raw::{Acquired, RawLock};
use super::{
    deadline, magic, LockResult, OwnerDied, Tagged, TryLockError, TryLockResult, BODY, WAKE_ALL,
};
use crate::region::Region;
use crate::sys::shm::{futex_wait, futex_wake};

const MAGIC: u32 = magic(b"mCv1");
const SEQ: usize = BODY + RawLock::SIZE;
const SLEEPERS: usize = SEQ + 4;
const LEN: usize = SLEEPERS + 4;

/// A condition variable with its lock, shared by processes (Python's
/// `multiprocessing.Condition`).
///
/// [`lock`](Condition::lock) returns a [`ConditionGuard`], whose
/// [`wait`](ConditionGuard::wait) releases the lock while waiting for a
/// [`notify`](Condition::notify). Waits may end without a notify; loop on a predicate with
/// [`wait_while`](ConditionGuard::wait_while). The lock is robust to a dying holder as
/// [`Lock`] is. A handle, like every primitive of [`sync`](crate::sync).
///
/// # Examples
/// ```
/// use multiprocess::{Condition, Process, RawValue};
///
/// fn producer((cond, ready): (Condition, RawValue<u32>)) {
///     let _g = cond.lock().unwrap();
///     ready.set(1);
///     cond.notify_all();
/// }
///
/// let cond = Condition::new()?;
/// let ready = RawValue::new(0u32)?;
/// let mut p = multiprocess::Process::builder().start(producer, (cond.clone(), ready.clone()))?;
/// let mut g = cond.lock().unwrap();
/// g.wait_while(|| ready.get() == 0).unwrap();
/// drop(g);
/// p.join()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Condition {
    tagged: Tagged,
    lock: Option<Lock>,
}

impl Serialize for Condition {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (&*self.tagged.region, &self.lock).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Condition {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (region, lock) = <(Region, Option<Lock>)>::deserialize(d)?;
        let tagged =
            Tagged::check(region, MAGIC, LEN, "condition").map_err(serde::de::Error::custom)?;
        Ok(Condition { tagged, lock })
    }
}

/// Whether a timed wait ended by its timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitTimeoutResult(bool);

impl WaitTimeoutResult {
    /// Whether the timeout passed (rather than a notify, or the predicate becoming false).
    pub fn timed_out(&self) -> bool {
        self.0
    }
}

impl Condition {
    /// A condition with its own lock.
    ///
    /// # Errors
    /// When the shared memory cannot be created.
    ///
    /// # Examples
    /// ```
    /// let cond = multiprocess::Condition::new()?;
    /// drop(cond.lock().unwrap());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn new() -> io::Result<Condition> {
        Ok(Condition {
            tagged: Tagged::new("multiprocess-condition", MAGIC, LEN)?,
            lock: None,
        })
    }

    /// A condition on an existing lock (Python's `Condition(lock)`): locking either locks
    /// both.
    ///
    /// # Errors
    /// When the shared memory cannot be created.
    ///
    /// # Examples
    /// ```
    /// let lock = multiprocess::Lock::new()?;
    /// let cond = multiprocess::Condition::with_lock(lock.clone())?;
    /// let _g = cond.lock().unwrap();
    /// assert!(lock.is_locked());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn with_lock(lock: Lock) -> io::Result<Condition> {
        Ok(Condition {
            tagged: Tagged::new("multiprocess-condition", MAGIC, LEN)?,
            lock: Some(lock),
        })
    }

    /// Test support: the `u32` word at byte `offset` of the shared region (layout in the
    /// sources), as any process holding the region could write it; `None` past its end.
    #[doc(hidden)]
    pub fn __shared_word(&self, offset: usize) -> Option<&AtomicU32> {
        self.tagged.word_at(offset)
    }

    fn raw(&self) -> &RawLock {
        match &self.lock {
            Some(l) => l.raw(),
            None => self.tagged.region.get(BODY),
        }
    }

    fn word(&self, offset: usize) -> &AtomicU32 {
        self.tagged.region.get(offset)
    }

    fn guard(&self, how: Acquired) -> LockResult<ConditionGuard<'_>> {
        let g = ConditionGuard {
            cond: self,
            guard: LockGuard::new(self.raw()),
        };
        super::lock::wrap(g, how)
    }

    /// Locks the condition's lock (Python's `acquire()`, or `with cond:`).
    ///
    /// # Errors
    /// [`OwnerDied`] (holding the guard) when the previous holder died holding the lock.
    ///
    /// # Examples
    /// ```
    /// let cond = multiprocess::Condition::new()?;
    /// let g = cond.lock().unwrap();
    /// drop(g);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "acquire")]
    pub fn lock(&self) -> LockResult<ConditionGuard<'_>> {
        let how = self
            .raw()
            .lock(None)
            .expect("a lock without a deadline always ends locked");
        self.guard(how)
    }

    /// Locks if the lock is free, without waiting. A lock whose holder died is taken over, as
    /// [`lock`](Condition::lock) does.
    ///
    /// # Errors
    /// [`TryLockError::WouldBlock`] when a live holder has it, [`TryLockError::OwnerDied`]
    /// (with the guard) when the previous holder died holding it.
    ///
    /// # Examples
    /// ```
    /// let cond = multiprocess::Condition::new()?;
    /// let _g = cond.try_lock().unwrap();
    /// assert!(cond.try_lock().is_err());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn try_lock(&self) -> TryLockResult<ConditionGuard<'_>> {
        match self.raw().try_lock() {
            Some(how) => self.guard(how).map_err(TryLockError::from),
            None => Err(TryLockError::WouldBlock),
        }
    }

    /// Locks, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`TryLockError::WouldBlock`] when the timeout passed, [`TryLockError::OwnerDied`] when
    /// the previous holder died holding the lock.
    ///
    /// # Examples
    /// ```
    /// let cond = multiprocess::Condition::new()?;
    /// let _g = cond.lock_timeout(std::time::Duration::from_millis(10)).unwrap();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn lock_timeout(&self, timeout: Duration) -> TryLockResult<ConditionGuard<'_>> {
        match self.raw().lock(deadline(timeout)) {
            Some(how) => self.guard(how).map_err(TryLockError::from),
            None => Err(TryLockError::WouldBlock),
        }
    }

    /// Wakes one waiter, if any. Call it holding the lock, after changing what waiters test.
    ///
    /// # Examples
    /// ```
    /// let cond = multiprocess::Condition::new()?;
    /// cond.notify(); // nobody waits: nothing happens
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn notify(&self) {
        self.notify_n(1);
    }

    /// Wakes up to `n` waiters (Python's `notify(n)`).
    ///
    /// # Examples
    /// ```
    /// let cond = multiprocess::Condition::new()?;
    /// cond.notify_n(3);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn notify_n(&self, n: u32) {
        let n = n.min(WAKE_ALL);
        let seq = self.word(SEQ);
        seq.fetch_add(1, Ordering::SeqCst);
        if n > 0 && self.word(SLEEPERS).load(Ordering::SeqCst) != 0 {
            futex_wake(seq, n);
        }
    }

    /// Wakes every waiter.
    ///
    /// # Examples
    /// ```
    /// let cond = multiprocess::Condition::new()?;
    /// cond.notify_all();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn notify_all(&self) {
        self.notify_n(WAKE_ALL);
    }
}

/// Holds a [`Condition`]'s lock; unlocks it when dropped. Its `wait` methods release the
/// lock while they sleep and hold it again when they return.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ConditionGuard<'a> {
    cond: &'a Condition,
    guard: LockGuard<'a>,
}

impl ConditionGuard<'_> {
    /// Sleeps until `deadline`; returns whether it passed, and a dead holder met relocking.
    fn wait_until(&mut self, deadline: Option<Instant>) -> (bool, Option<u32>) {
        let cond = self.cond;
        let raw = self.guard.raw();
        let seq = cond.word(SEQ);
        let sleepers = cond.word(SLEEPERS);
        let seen = seq.load(Ordering::Relaxed);
        sleepers.fetch_add(1, Ordering::SeqCst);
        raw.unlock();
        let mut timed_out = false;
        match deadline {
            None => {
                let _ = futex_wait(seq, seen, None);
            }
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    timed_out = true;
                } else if let Ok(crate::sys::shm::Woken::TimedOut) =
                    futex_wait(seq, seen, Some(d - now))
                {
                    timed_out = true;
                }
            }
        }
        sleepers.fetch_sub(1, Ordering::SeqCst);
        let died = match raw.lock(None) {
            Some(Acquired::OwnerDied(tid)) => Some(tid),
            _ => None,
        };
        (timed_out, died)
    }

    /// Releases the lock, sleeps until notified (or woken spuriously), and locks again.
    ///
    /// # Errors
    /// [`OwnerDied`] when, relocking, the previous holder had died holding the lock (the lock
    /// is held again all the same).
    ///
    /// # Examples
    /// ```
    /// use multiprocess::Condition;
    /// fn notifier(c: Condition) { let _g = c.lock().unwrap(); c.notify_all(); }
    ///
    /// let cond = Condition::new()?;
    /// let mut g = cond.lock().unwrap();
    /// let mut p = multiprocess::Process::builder().start(notifier, cond.clone())?;
    /// g.wait().unwrap(); // the child cannot notify before we wait: we hold the lock
    /// drop(g);
    /// p.join()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn wait(&mut self) -> LockResult<()> {
        match self.wait_until(None) {
            (_, Some(tid)) => Err(OwnerDied::new((), tid)),
            _ => Ok(()),
        }
    }

    /// Like [`wait`](Self::wait), for at most `timeout`. The timeout bounds the wait for a
    /// notify; taking the lock back afterwards waits as long as a live holder keeps it (as
    /// with std's `Condvar` and Python's `Condition`), since the guard must hold it again.
    ///
    /// # Errors
    /// As [`wait`](Self::wait).
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// let cond = multiprocess::Condition::new()?;
    /// let mut g = cond.lock().unwrap();
    /// assert!(g.wait_timeout(Duration::from_millis(10)).unwrap().timed_out());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn wait_timeout(&mut self, timeout: Duration) -> LockResult<WaitTimeoutResult> {
        match self.wait_until(deadline(timeout)) {
            (t, Some(tid)) => Err(OwnerDied::new(WaitTimeoutResult(t), tid)),
            (t, None) => Ok(WaitTimeoutResult(t)),
        }
    }

    /// Waits as long as `condition` returns true (checked first, and after each wake-up,
    /// holding the lock). Python's `wait_for(predicate)` waits for the opposite: pass
    /// `|| !predicate()`.
    ///
    /// # Errors
    /// [`OwnerDied`] when a previous holder died holding the lock during one of the waits.
    ///
    /// # Examples
    /// ```
    /// let cond = multiprocess::Condition::new()?;
    /// let mut g = cond.lock().unwrap();
    /// g.wait_while(|| false).unwrap(); // nothing to wait for
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "wait_for")]
    pub fn wait_while(&mut self, mut condition: impl FnMut() -> bool) -> LockResult<()> {
        let mut died = None;
        while condition() {
            if let (_, Some(tid)) = self.wait_until(None) {
                died = Some(tid);
            }
        }
        match died {
            Some(tid) => Err(OwnerDied::new((), tid)),
            None => Ok(()),
        }
    }

    /// Like [`wait_while`](Self::wait_while), for at most `timeout` in all.
    ///
    /// # Errors
    /// As [`wait_while`](Self::wait_while).
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// let cond = multiprocess::Condition::new()?;
    /// let mut g = cond.lock().unwrap();
    /// let r = g.wait_timeout_while(Duration::from_millis(10), || true).unwrap();
    /// assert!(r.timed_out());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn wait_timeout_while(
        &mut self,
        timeout: Duration,
        mut condition: impl FnMut() -> bool,
    ) -> LockResult<WaitTimeoutResult> {
        let end = deadline(timeout);
        let mut died = None;
        let mut timed_out = false;
        let still = loop {
            if !condition() {
                break false;
            }
            if timed_out {
                break true;
            }
            let (t, d) = self.wait_until(end);
            timed_out = t;
            died = died.or(d);
        };
        let r = WaitTimeoutResult(still);
        match died {
            Some(tid) => Err(OwnerDied::new(r, tid)),
            None => Ok(r),
        }
    }
}

impl fmt::Debug for ConditionGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConditionGuard").finish_non_exhaustive()
    }
}
