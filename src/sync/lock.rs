//! `Lock` and `RLock`.
//!
//! # Layouts (one memfd each, zero-filled, then the magic number written)
//! `Lock`: offset 0 the magic `"mLk1"` (`u32`), offset 8 a [`RawLock`] (16 bytes).
//! `RLock`: offset 0 the magic `"mRl1"`, offset 8 a [`RawLock`], offset 24 the recursion count
//! (`AtomicU32`), read and written only by the holder (`Relaxed`: the lock orders it), and reset
//! to 1 by a locker that takes the lock over from a dead holder. Another process may write it:
//! re-entry saturates instead of overflowing, and leaving stops at 0.

use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::raw::{Acquired, RawLock};
use super::{
    deadline, handle_serde, magic, LockResult, OwnerDied, Tagged, TryLockError, TryLockResult, BODY,
};

const LOCK_MAGIC: u32 = magic(b"mLk1");
const RLOCK_MAGIC: u32 = magic(b"mRl1");
const COUNT: usize = BODY + RawLock::SIZE;

/// A lock shared by processes (Python's `multiprocessing.Lock`): [`lock`](Lock::lock) returns
/// a guard that unlocks when dropped.
///
/// A `Lock` is a handle: clone it for threads, pass it to children or send it through a
/// [`Connection`](crate::Connection); every copy is the same lock. If its holder dies (the
/// process is killed, or the thread ends without unlocking), the next locker gets the lock
/// within about 100 ms and an [`OwnerDied`] saying so.
///
/// # Examples
/// ```
/// use multiprocess::{Lock, Process};
///
/// fn work(lock: Lock) {
///     let _guard = lock.lock().unwrap();
///     // ... only one process at a time here ...
/// }
///
/// let lock = Lock::new()?;
/// let mut p = Process::builder().start(work, lock.clone())?;
/// drop(lock.lock().unwrap());
/// p.join()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Lock {
    tagged: Tagged,
}

handle_serde!(Lock, LOCK_MAGIC, BODY + RawLock::SIZE, "lock");

impl Lock {
    /// A new, unlocked lock.
    ///
    /// # Errors
    /// When the shared memory cannot be created (out of memory or descriptors).
    ///
    /// # Examples
    /// ```
    /// let lock = multiprocess::Lock::new()?;
    /// assert!(!lock.is_locked());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn new() -> io::Result<Lock> {
        Ok(Lock {
            tagged: Tagged::new("multiprocess-lock", LOCK_MAGIC, COUNT)?,
        })
    }

    fn from_tagged(tagged: Tagged) -> Result<Lock, String> {
        Ok(Lock { tagged })
    }

    #[inline]
    pub(crate) fn raw(&self) -> &RawLock {
        self.tagged.region.get(BODY)
    }

    /// Locks, waiting as long as it takes (Python's `acquire()`).
    ///
    /// # Errors
    /// [`OwnerDied`] (holding the guard) when the previous holder died holding the lock.
    ///
    /// # Examples
    /// ```
    /// let lock = multiprocess::Lock::new()?;
    /// let guard = lock.lock().unwrap();
    /// assert!(lock.is_locked());
    /// drop(guard);
    /// assert!(!lock.is_locked());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "acquire")]
    #[inline]
    pub fn lock(&self) -> LockResult<LockGuard<'_>> {
        match self.raw().lock(None) {
            Some(how) => wrap(LockGuard::new(self.raw()), how),
            None => unreachable!("a lock without a deadline always ends locked"),
        }
    }

    /// Locks if the lock is free, without waiting (Python's `acquire(block=False)`). A lock
    /// whose holder died is taken over, as [`lock`](Lock::lock) does.
    ///
    /// # Errors
    /// [`TryLockError::WouldBlock`] when a live holder has it, [`TryLockError::OwnerDied`]
    /// (with the guard) when the previous holder died holding it.
    ///
    /// # Examples
    /// ```
    /// let lock = multiprocess::Lock::new()?;
    /// let guard = lock.try_lock().unwrap();
    /// assert!(lock.try_lock().unwrap_err().is_would_block());
    /// # drop(guard);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn try_lock(&self) -> TryLockResult<LockGuard<'_>> {
        match self.raw().try_lock() {
            Some(how) => wrap(LockGuard::new(self.raw()), how).map_err(TryLockError::from),
            None => Err(TryLockError::WouldBlock),
        }
    }

    /// Locks, waiting at most `timeout` (Python's `acquire(timeout=t)`).
    ///
    /// # Errors
    /// [`TryLockError::WouldBlock`] when the timeout passed, [`TryLockError::OwnerDied`] (with
    /// the guard) when the previous holder died holding it.
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// let lock = multiprocess::Lock::new()?;
    /// let _guard = lock.lock().unwrap();
    /// assert!(lock.lock_timeout(Duration::from_millis(10)).is_err());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn lock_timeout(&self, timeout: Duration) -> TryLockResult<LockGuard<'_>> {
        match self.raw().lock(deadline(timeout)) {
            Some(how) => wrap(LockGuard::new(self.raw()), how).map_err(TryLockError::from),
            None => Err(TryLockError::WouldBlock),
        }
    }

    /// Whether someone holds the lock (Python's `locked()`). A holder that died holding it
    /// does not count: its lock is free for the next locker, which takes it over.
    ///
    /// # Examples
    /// ```
    /// let lock = multiprocess::Lock::new()?;
    /// assert!(!lock.is_locked());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "locked")]
    pub fn is_locked(&self) -> bool {
        self.raw().is_held()
    }

    /// Test support: the `u32` word at byte `offset` of the shared region (layout in the
    /// sources), as any process holding the region could write it; `None` past its end.
    #[doc(hidden)]
    pub fn __shared_word(&self, offset: usize) -> Option<&AtomicU32> {
        self.tagged.word_at(offset)
    }
}

pub(crate) fn wrap<G>(guard: G, how: Acquired) -> LockResult<G> {
    match how {
        Acquired::Clean => Ok(guard),
        Acquired::OwnerDied(tid) => Err(OwnerDied::new(guard, tid)),
    }
}

/// Holds a [`Lock`]; unlocks it when dropped (Python's `release()`).
///
/// Not `Send`: the lock records the thread that holds it, so that it can tell when that thread
/// is gone.
///
/// ```compile_fail
/// fn send<T: Send>(_: T) {}
/// let lock = multiprocess::Lock::new().unwrap();
/// send(lock.lock().unwrap());
/// ```
#[doc(alias = "release")]
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard<'a> {
    raw: &'a RawLock,
    _not_send: PhantomData<*const ()>,
}

impl<'a> LockGuard<'a> {
    pub(crate) fn new(raw: &'a RawLock) -> Self {
        LockGuard {
            raw,
            _not_send: PhantomData,
        }
    }

    pub(crate) fn raw(&self) -> &'a RawLock {
        self.raw
    }
}

impl Drop for LockGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        self.raw.unlock();
    }
}

impl fmt::Debug for LockGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard").finish_non_exhaustive()
    }
}

/// A re-entrant lock shared by processes (Python's `multiprocessing.RLock`): the thread that
/// holds it may lock it again, and must unlock it as many times.
///
/// Guards ([`lock`](RLock::lock)) are the Rust way; [`acquire`](RLock::acquire) and
/// [`release`](RLock::release) are Python's, where releasing a lock the caller does not hold
/// is an error value. A holder that dies is handled as for [`Lock`].
///
/// # Examples
/// ```
/// let rlock = multiprocess::RLock::new()?;
/// let outer = rlock.lock().unwrap();
/// let inner = rlock.lock().unwrap(); // the same thread: no deadlock
/// assert_eq!(rlock.count(), 2);
/// drop(inner);
/// drop(outer);
/// assert!(!rlock.is_owned());
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct RLock {
    tagged: Tagged,
}

handle_serde!(RLock, RLOCK_MAGIC, COUNT + 4, "re-entrant lock");

impl RLock {
    /// A new, unlocked re-entrant lock.
    ///
    /// # Errors
    /// When the shared memory cannot be created.
    ///
    /// # Examples
    /// ```
    /// let rlock = multiprocess::RLock::new()?;
    /// assert_eq!(rlock.count(), 0);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn new() -> io::Result<RLock> {
        Ok(RLock {
            tagged: Tagged::new("multiprocess-rlock", RLOCK_MAGIC, COUNT + 4)?,
        })
    }

    fn from_tagged(tagged: Tagged) -> Result<RLock, String> {
        Ok(RLock { tagged })
    }

    /// Test support: the `u32` word at byte `offset` of the shared region (layout in the
    /// sources), as any process holding the region could write it; `None` past its end.
    #[doc(hidden)]
    pub fn __shared_word(&self, offset: usize) -> Option<&AtomicU32> {
        self.tagged.word_at(offset)
    }

    fn raw(&self) -> &RawLock {
        self.tagged.region.get(BODY)
    }

    fn count_word(&self) -> &AtomicU32 {
        self.tagged.region.get(COUNT)
    }

    /// Enters once; `None` when the deadline passed.
    fn enter(&self, deadline: Option<Option<Instant>>) -> Option<Acquired> {
        let raw = self.raw();
        if raw.held_by_me() {
            let c = self.count_word();
            // Saturating: the word is shared, and another process may have written anything.
            c.store(
                c.load(Ordering::Relaxed).saturating_add(1),
                Ordering::Relaxed,
            );
            return Some(Acquired::Clean);
        }
        let how = match deadline {
            None => raw.try_lock()?,
            Some(d) => raw.lock(d)?,
        };
        self.count_word().store(1, Ordering::Relaxed);
        Some(how)
    }

    /// Locks (again, if this thread holds it), waiting as long as it takes.
    ///
    /// # Errors
    /// [`OwnerDied`] (holding the guard) when the previous holder died holding the lock.
    ///
    /// # Examples
    /// ```
    /// let rlock = multiprocess::RLock::new()?;
    /// let _g = rlock.lock().unwrap();
    /// assert!(rlock.is_owned());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn lock(&self) -> LockResult<RLockGuard<'_>> {
        let how = self
            .enter(Some(None))
            .expect("a lock without a deadline always ends locked");
        wrap(RLockGuard::new(self), how)
    }

    /// Locks if it is free or already held by this thread, without waiting. A lock whose
    /// holder died is taken over, as [`lock`](RLock::lock) does.
    ///
    /// # Errors
    /// [`TryLockError::WouldBlock`] when another live thread holds it,
    /// [`TryLockError::OwnerDied`] (with the guard) when the previous holder died holding it.
    ///
    /// # Examples
    /// ```
    /// let rlock = multiprocess::RLock::new()?;
    /// let _a = rlock.try_lock().unwrap();
    /// let _b = rlock.try_lock().unwrap();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn try_lock(&self) -> TryLockResult<RLockGuard<'_>> {
        match self.enter(None) {
            Some(how) => wrap(RLockGuard::new(self), how).map_err(TryLockError::from),
            None => Err(TryLockError::WouldBlock),
        }
    }

    /// Locks, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`TryLockError::WouldBlock`] when the timeout passed, [`TryLockError::OwnerDied`] (with
    /// the guard) when the previous holder died holding it.
    ///
    /// # Examples
    /// ```
    /// let rlock = multiprocess::RLock::new()?;
    /// let _g = rlock.lock_timeout(std::time::Duration::from_millis(10)).unwrap();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn lock_timeout(&self, timeout: Duration) -> TryLockResult<RLockGuard<'_>> {
        match self.enter(Some(deadline(timeout))) {
            Some(how) => wrap(RLockGuard::new(self), how).map_err(TryLockError::from),
            None => Err(TryLockError::WouldBlock),
        }
    }

    /// Python's `acquire()`: enters once, without a guard; pair it with
    /// [`release`](RLock::release).
    ///
    /// # Errors
    /// [`OwnerDied`] when the previous holder died holding the lock (the lock is acquired).
    ///
    /// # Examples
    /// ```
    /// let rlock = multiprocess::RLock::new()?;
    /// rlock.acquire().unwrap();
    /// rlock.acquire().unwrap();
    /// rlock.release().unwrap();
    /// rlock.release().unwrap();
    /// assert!(rlock.release().is_err()); // not held any more
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn acquire(&self) -> LockResult<()> {
        self.lock()
            .map(std::mem::forget)
            .map_err(|d| d.map(std::mem::forget))
    }

    /// Python's `release()`: leaves once.
    ///
    /// # Errors
    /// [`ReleaseError`] when the calling thread does not hold the lock.
    ///
    /// # Examples
    /// ```
    /// let rlock = multiprocess::RLock::new()?;
    /// assert!(rlock.release().is_err());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn release(&self) -> Result<(), ReleaseError> {
        if !self.raw().held_by_me() {
            return Err(ReleaseError(()));
        }
        self.leave();
        Ok(())
    }

    fn leave(&self) {
        let c = self.count_word();
        let n = c.load(Ordering::Relaxed).saturating_sub(1);
        c.store(n, Ordering::Relaxed);
        if n == 0 {
            self.raw().unlock();
        }
    }

    /// Whether the calling thread holds the lock.
    ///
    /// # Examples
    /// ```
    /// let rlock = multiprocess::RLock::new()?;
    /// assert!(!rlock.is_owned());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn is_owned(&self) -> bool {
        self.raw().held_by_me()
    }

    /// How many times the calling thread holds the lock (0 when it does not).
    ///
    /// # Examples
    /// ```
    /// let rlock = multiprocess::RLock::new()?;
    /// let _g = rlock.lock().unwrap();
    /// assert_eq!(rlock.count(), 1);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn count(&self) -> u32 {
        if self.is_owned() {
            self.count_word().load(Ordering::Relaxed)
        } else {
            0
        }
    }
}

/// Holds an [`RLock`] once; leaves it once when dropped. Not `Send` (the lock belongs to a
/// thread).
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct RLockGuard<'a> {
    lock: &'a RLock,
    _not_send: PhantomData<*const ()>,
}

impl<'a> RLockGuard<'a> {
    fn new(lock: &'a RLock) -> Self {
        RLockGuard {
            lock,
            _not_send: PhantomData,
        }
    }
}

impl Drop for RLockGuard<'_> {
    fn drop(&mut self) {
        // Mixed with `release()` the guard may no longer hold the lock: then it does nothing.
        if self.lock.raw().held_by_me() {
            self.lock.leave();
        }
    }
}

impl fmt::Debug for RLockGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RLockGuard").finish_non_exhaustive()
    }
}

/// [`RLock::release`] by a thread that does not hold the lock (Python's `RuntimeError`).
///
/// # Examples
/// ```
/// let rlock = multiprocess::RLock::new()?;
/// let err = rlock.release().unwrap_err();
/// assert_eq!(err.to_string(), "cannot release un-acquired lock");
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseError(());

impl fmt::Display for ReleaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("cannot release un-acquired lock")
    }
}

impl std::error::Error for ReleaseError {}
