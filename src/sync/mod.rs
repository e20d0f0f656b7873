//! Synchronization between processes: [`Lock`], [`RLock`], [`Semaphore`],
//! [`BoundedSemaphore`], [`Event`], [`Condition`], [`Barrier`].
//!
//! Each primitive lives in its own shared-memory region (an anonymous memfd) and is a
//! *handle*: pass it as a process's argument, send it through a [`Connection`], or clone it
//! for threads of the same process; every copy is the same primitive. Blocking sleeps on a
//! futex in that memory, so an idle waiter costs nothing.
//!
//! # When a process dies
//! A process (or thread) that ends while holding a [`Lock`], an [`RLock`], a [`Condition`]'s
//! lock or a [`Value`](crate::Value)'s lock does not wedge the others: a waiter notices within
//! about 100 ms, takes the lock over, and is told through
//! [`OwnerDied`], much like std's poisoning: the data it protects may be half-updated.
//! `try_lock` and timed locks (whatever their timeout) check the holder the same way and take
//! such a lock over at once, and `is_locked` does not count a dead holder. A
//! [`Barrier`] whose party dies while waiting breaks, and the others get
//! [`BarrierError::dead_party`]. A [`Semaphore`] counts, it does not own: a count taken by a
//! process that dies is lost (as in Python), so size a semaphore for the survivors or
//! [`release`](Semaphore::release) on the dead one's behalf.
//!
//! The mechanism (the holder's thread id in the lock word, checked for liveness each time a
//! waiter's futex wait of 100 ms ends) and every layout are described beside their code, in
//! the sources of this module.
//!
//! [`Connection`]: crate::Connection

use std::fmt;
use std::io;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::region::Region;

mod barrier;
mod condition;
mod event;
pub(crate) mod lock;
pub(crate) mod raw;
mod semaphore;

pub use barrier::{Barrier, BarrierError};
pub use condition::{Condition, ConditionGuard, WaitTimeoutResult};
pub use event::Event;
pub use lock::{Lock, LockGuard, RLock, RLockGuard, ReleaseError};
pub use semaphore::{BoundedSemaphore, Semaphore, SemaphoreError};

/// The lock was acquired, but its previous holder died while holding it.
///
/// The guard is inside: the lock is yours, and whatever it protects may be in the state the
/// dead holder left it in. Only the one locker that took the lock over is told; the lock is
/// then an ordinary lock again. Python has no such signal (its locks simply stay locked).
///
/// # Examples
/// ```
/// use multiprocess::sync::{Lock, OwnerDied};
///
/// let lock = Lock::new()?;
/// // Whoever held the lock before, carry on; look at `OwnerDied` to repair shared state.
/// let guard = lock.lock().unwrap_or_else(OwnerDied::into_inner);
/// drop(guard);
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct OwnerDied<G> {
    guard: G,
    previous: u32,
}

impl<G> OwnerDied<G> {
    pub(crate) fn new(guard: G, previous: u32) -> Self {
        OwnerDied { guard, previous }
    }

    /// The guard: the lock is held.
    pub fn into_inner(self) -> G {
        self.guard
    }

    /// The guard, borrowed.
    pub fn get_ref(&self) -> &G {
        &self.guard
    }

    /// The guard, mutably borrowed.
    pub fn get_mut(&mut self) -> &mut G {
        &mut self.guard
    }

    /// The thread id of the holder that died (its process id if it was a main thread), of
    /// the crate's one pid type, `i32` (as [`Process::pid`](crate::Process::pid)); 0 when
    /// the lock's shared word named no thread at all (another process wrote over it).
    pub fn previous_owner(&self) -> i32 {
        self.previous as i32
    }

    pub(crate) fn map<H>(self, f: impl FnOnce(G) -> H) -> OwnerDied<H> {
        OwnerDied {
            guard: f(self.guard),
            previous: self.previous,
        }
    }
}

impl<G> fmt::Debug for OwnerDied<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnerDied")
            .field("previous_owner", &self.previous)
            .finish_non_exhaustive()
    }
}

impl<G> fmt::Display for OwnerDied<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the previous holder of the lock (thread {}) died holding it; the data it protects \
             may be inconsistent",
            self.previous
        )
    }
}

impl<G> std::error::Error for OwnerDied<G> {}

/// The result of a blocking lock: the guard, or the guard inside [`OwnerDied`].
pub type LockResult<G> = Result<G, OwnerDied<G>>;

/// Why [`try_lock`](Lock::try_lock) or [`lock_timeout`](Lock::lock_timeout) gave no plain
/// guard.
#[derive(Debug)]
pub enum TryLockError<G> {
    /// Acquired, but the previous holder died holding it.
    OwnerDied(OwnerDied<G>),
    /// Not acquired: held by someone else (for `lock_timeout`: until the timeout passed).
    WouldBlock,
}

impl<G> TryLockError<G> {
    /// Whether the lock was not acquired.
    pub fn is_would_block(&self) -> bool {
        matches!(self, TryLockError::WouldBlock)
    }
}

impl<G> From<OwnerDied<G>> for TryLockError<G> {
    fn from(d: OwnerDied<G>) -> Self {
        TryLockError::OwnerDied(d)
    }
}

impl<G> fmt::Display for TryLockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryLockError::OwnerDied(d) => d.fmt(f),
            TryLockError::WouldBlock => f.write_str("the lock is held by someone else"),
        }
    }
}

impl<G: fmt::Debug> std::error::Error for TryLockError<G> {}

/// The result of a non-blocking or bounded lock.
pub type TryLockResult<G> = Result<G, TryLockError<G>>;

/// "Wake every sleeper": the kernel reads the count as a signed int, so `u32::MAX` (-1)
/// would wake only one.
pub(crate) const WAKE_ALL: u32 = i32::MAX as u32;

/// How long a waiter that expects a quick answer spins before it sleeps on a futex.
pub(crate) const SPIN_TIME: std::time::Duration = std::time::Duration::from_micros(5);

/// Waits skipped without spinning after a spin that failed.
const SPIN_BACKOFF: u32 = 8;

/// How many coming waits of a thread sleep at once: spinning failed recently (the machine is
/// busy, or the other side is slow), so it would only burn a core. One counter per kind of
/// wait, so that a failed spin of one kind does not stop the spins of another.
pub(crate) type SpinSkips = std::thread::LocalKey<std::cell::Cell<u32>>;

thread_local! {
    /// The skips of the waits of [`spin_briefly`].
    static SKIP_SPINS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Spins while `done` is false, for at most [`SPIN_TIME`]; whether `done` became true.
///
/// Adaptive: after a spin that fails, the calling thread's next [`SPIN_BACKOFF`] waits do not
/// spin. On an idle machine with the other side running, a wait ends within the spin (a round
/// trip of well under a microsecond instead of two futex wake-ups); on a loaded one, spinning
/// stops and the waiter sleeps at once.
pub(crate) fn spin_briefly(done: impl Fn() -> bool) -> bool {
    spin_until(SPIN_TIME, None, &SKIP_SPINS, done)
}

/// Spins while `done` is false, for at most `limit` and not past `deadline`; whether `done`
/// became true. Adaptive as [`spin_briefly`], counting failed spins in `skips`.
pub(crate) fn spin_until(
    limit: std::time::Duration,
    deadline: Option<std::time::Instant>,
    skips: &'static SpinSkips,
    done: impl Fn() -> bool,
) -> bool {
    let skip = skips.with(std::cell::Cell::get);
    if skip > 0 {
        skips.with(|s| s.set(skip - 1));
        return done();
    }
    let start = std::time::Instant::now();
    let end = deadline.map_or(start + limit, |d| d.min(start + limit));
    loop {
        for _ in 0..32 {
            if done() {
                return true;
            }
            std::hint::spin_loop();
        }
        if std::time::Instant::now() >= end {
            skips.with(|s| s.set(SPIN_BACKOFF));
            return done();
        }
    }
}

/// What is left of the wait until `deadline`: `Some(None)` without a deadline,
/// `Some(Some(left))` before it, `None` once it has passed.
pub(crate) fn time_left(
    deadline: Option<std::time::Instant>,
) -> Option<Option<std::time::Duration>> {
    match deadline {
        None => Some(None),
        Some(d) => {
            let now = std::time::Instant::now();
            (now < d).then(|| Some(d - now))
        }
    }
}

/// Byte offset of the body of every sync region (after the magic number and a spare word).
pub(crate) const BODY: usize = 8;

/// A primitive's region: a memfd whose first word names what it holds and the layout's
/// version. Shared by the clones of one handle in a process.
#[derive(Debug, Clone)]
pub(crate) struct Tagged {
    pub(crate) region: Arc<Region>,
}

impl Tagged {
    /// A new zero-filled region of at least `len` bytes, marked with `magic`.
    pub(crate) fn new(name: &str, magic: u32, len: usize) -> io::Result<Tagged> {
        let region = Region::new(name, len.max(64))?;
        region
            .get::<std::sync::atomic::AtomicU32>(0)
            .store(magic, std::sync::atomic::Ordering::Release);
        Ok(Tagged {
            region: Arc::new(region),
        })
    }

    /// Checks a received region: its magic and a minimum length.
    pub(crate) fn check(
        region: Region,
        magic: u32,
        min_len: usize,
        what: &str,
    ) -> Result<Tagged, String> {
        if region.len() < min_len.max(64)
            || region
                .get::<std::sync::atomic::AtomicU32>(0)
                .load(std::sync::atomic::Ordering::Acquire)
                != magic
        {
            return Err(format!(
                "the received shared memory is not a {what} of this version of multiprocess"
            ));
        }
        Ok(Tagged {
            region: Arc::new(region),
        })
    }

    /// Test support: the aligned `u32` at `offset` of the region, `None` past its end.
    pub(crate) fn word_at(&self, offset: usize) -> Option<&std::sync::atomic::AtomicU32> {
        let fits = offset % 4 == 0
            && offset
                .checked_add(4)
                .is_some_and(|e| e <= self.region.len());
        fits.then(|| self.region.get(offset))
    }

    pub(crate) fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.region.serialize(serializer)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
        magic: u32,
        min_len: usize,
        what: &str,
    ) -> Result<Tagged, D::Error> {
        let region = Region::deserialize(deserializer)?;
        Tagged::check(region, magic, min_len, what).map_err(serde::de::Error::custom)
    }
}

/// A magic number: four ASCII bytes naming the object and its layout version.
pub(crate) const fn magic(tag: &[u8; 4]) -> u32 {
    u32::from_le_bytes(*tag)
}

/// Implements `Serialize`/`Deserialize` for a handle type `$t { tagged: Tagged, .. }` whose
/// other fields are computed from the region by `$t::from_tagged`.
macro_rules! handle_serde {
    ($t:ty, $magic:expr, $min_len:expr, $what:expr) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.tagged.serialize(s)
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let tagged = $crate::sync::Tagged::deserialize(d, $magic, $min_len, $what)?;
                <$t>::from_tagged(tagged).map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use handle_serde;

/// A deadline `timeout` from now (`None` if it overflows: wait without limit).
pub(crate) fn deadline(timeout: std::time::Duration) -> Option<std::time::Instant> {
    std::time::Instant::now().checked_add(timeout)
}
