//! `Semaphore` and `BoundedSemaphore`.
//!
//! # Layout (one memfd, zero-filled, then initialized)
//! | offset | type | contents |
//! |---|---|---|
//! | 0 | `u32` | magic `"mSe1"` |
//! | 8 | `AtomicU32` | `value`, the count; the futex word |
//! | 12 | `AtomicU32` | `sleepers`: how many may sleep on `value` (a hint: a waiter that dies leaves it one too high, which only costs a wake-up call) |
//! | 16 | `AtomicU32` | `max`: the bound (`u32::MAX` for a plain semaphore) |
//!
//! # Protocol
//! Acquire: compare-and-swap `value` from `v > 0` to `v - 1` (`Acquire`). When it is 0:
//! increment `sleepers`, re-read `value`, `futex_wait` while it is 0, decrement `sleepers`.
//! Release: compare-and-swap `value` to `v + 1` (refused at `max`), then wake one sleeper if
//! `sleepers` is not 0. The increment of `sleepers` before the re-read, and of `value` before
//! the read of `sleepers`, are both `SeqCst`: one of the two sides sees the other, so a
//! release never misses a sleeper (the futex call itself re-checks `value`).
//!
//! A count taken by a process that dies is not given back: a semaphore does not know its
//! holders (neither does Python's).
//!
//! Another process holding the region may write any word: a count at or above `max` makes
//! `release` an error (a count above `max` is still taken by `acquire`), `sleepers` is only
//! a hint (wrapping), and a count of 0 makes a timed `acquire` end at its timeout.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::{deadline, magic, Tagged, BODY};
use crate::sys::shm::{futex_wait, futex_wake};

const MAGIC: u32 = magic(b"mSe1");
const VALUE: usize = BODY;
const SLEEPERS: usize = BODY + 4;
const MAX: usize = BODY + 8;
const LEN: usize = BODY + 12;

#[derive(Debug, Clone)]
struct Core {
    tagged: Tagged,
}

impl Core {
    fn new(value: u32, max: u32) -> io::Result<Core> {
        let tagged = Tagged::new("multiprocess-semaphore", MAGIC, LEN)?;
        let core = Core { tagged };
        core.word(MAX).store(max, Ordering::Relaxed);
        core.word(VALUE).store(value, Ordering::Release);
        Ok(core)
    }

    fn word(&self, offset: usize) -> &AtomicU32 {
        self.tagged.region.get(offset)
    }

    fn try_acquire(&self) -> bool {
        let value = self.word(VALUE);
        let mut v = value.load(Ordering::Relaxed);
        while v > 0 {
            match value.compare_exchange_weak(v, v - 1, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(now) => v = now,
            }
        }
        false
    }

    fn acquire(&self, deadline: Option<Instant>) -> bool {
        loop {
            if self.try_acquire() {
                return true;
            }
            let Some(timeout) = super::time_left(deadline) else {
                return false;
            };
            let sleepers = self.word(SLEEPERS);
            sleepers.fetch_add(1, Ordering::SeqCst);
            if self.word(VALUE).load(Ordering::SeqCst) == 0 {
                let _ = futex_wait(self.word(VALUE), 0, timeout);
            }
            sleepers.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn release(&self) -> Result<(), SemaphoreError> {
        let value = self.word(VALUE);
        let max = self.word(MAX).load(Ordering::Relaxed);
        let mut v = value.load(Ordering::Relaxed);
        loop {
            if v >= max {
                return Err(SemaphoreError(()));
            }
            match value.compare_exchange_weak(v, v + 1, Ordering::SeqCst, Ordering::Relaxed) {
                Ok(_) => break,
                Err(now) => v = now,
            }
        }
        if self.word(SLEEPERS).load(Ordering::SeqCst) != 0 {
            futex_wake(value, 1);
        }
        Ok(())
    }

    fn value(&self) -> u32 {
        self.word(VALUE).load(Ordering::Relaxed)
    }
}

macro_rules! handle_serde_core {
    ($t:ident) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.core.tagged.serialize(s)
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let tagged = Tagged::deserialize(d, MAGIC, LEN, "semaphore")?;
                $t::from_tagged(tagged).map_err(serde::de::Error::custom)
            }
        }
    };
}

macro_rules! semaphore_api {
    ($t:ident, $example_new:literal) => {
        impl $t {
            /// Takes one count, waiting while there is none (Python's `acquire()`).
            ///
            /// # Examples
            /// ```
            #[doc = $example_new]
            /// s.acquire();
            /// assert_eq!(s.value(), 1);
            /// # Ok::<(), std::io::Error>(())
            /// ```
            pub fn acquire(&self) {
                self.core.acquire(None);
            }

            /// Takes one count if there is one, without waiting; whether it did
            /// (Python's `acquire(block=False)`).
            ///
            /// # Examples
            /// ```
            #[doc = $example_new]
            /// assert!(s.try_acquire());
            /// assert!(s.try_acquire());
            /// assert!(!s.try_acquire());
            /// # Ok::<(), std::io::Error>(())
            /// ```
            pub fn try_acquire(&self) -> bool {
                self.core.try_acquire()
            }

            /// Takes one count, waiting at most `timeout`; whether it did (Python's
            /// `acquire(timeout=t)`).
            ///
            /// # Examples
            /// ```
            /// use std::time::Duration;
            #[doc = $example_new]
            /// assert!(s.acquire_timeout(Duration::from_millis(10)));
            /// assert!(s.acquire_timeout(Duration::from_millis(10)));
            /// assert!(!s.acquire_timeout(Duration::from_millis(10)));
            /// # Ok::<(), std::io::Error>(())
            /// ```
            pub fn acquire_timeout(&self, timeout: Duration) -> bool {
                self.core.acquire(deadline(timeout))
            }

            /// The current count (Python's `get_value()`).
            ///
            /// # Examples
            /// ```
            #[doc = $example_new]
            /// assert_eq!(s.value(), 2);
            /// # Ok::<(), std::io::Error>(())
            /// ```
            #[doc(alias = "get_value")]
            pub fn value(&self) -> u32 {
                self.core.value()
            }

            /// Test support: the `u32` word at byte `offset` of the shared region (layout in
            /// the sources), as any process holding the region could write it; `None` past
            /// its end.
            #[doc(hidden)]
            pub fn __shared_word(&self, offset: usize) -> Option<&AtomicU32> {
                self.core.tagged.word_at(offset)
            }
        }
    };
}

/// A counting semaphore shared by processes (Python's `multiprocessing.Semaphore`).
///
/// A handle, like every primitive of [`sync`](crate::sync). A count taken by a process that
/// dies is lost (see the [module notes](crate::sync)).
///
/// # Examples
/// ```
/// use multiprocess::{Process, Semaphore};
///
/// fn worker(s: Semaphore) {
///     s.acquire();
///     // ... at most two workers here at a time ...
///     s.release().unwrap();
/// }
///
/// let s = Semaphore::new(2)?;
/// let mut p = Process::builder().start(worker, s.clone())?;
/// p.join()?;
/// assert_eq!(s.value(), 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Semaphore {
    core: Core,
}

impl Semaphore {
    /// A semaphore with `value` counts.
    ///
    /// # Errors
    /// When the shared memory cannot be created.
    ///
    /// # Examples
    /// ```
    /// let s = multiprocess::Semaphore::new(3)?;
    /// assert_eq!(s.value(), 3);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn new(value: u32) -> io::Result<Semaphore> {
        Ok(Semaphore {
            core: Core::new(value, u32::MAX)?,
        })
    }

    fn from_tagged(tagged: Tagged) -> Result<Semaphore, String> {
        Ok(Semaphore {
            core: Core { tagged },
        })
    }

    /// Gives one count back, waking a waiter (Python's `release()`).
    ///
    /// # Errors
    /// [`SemaphoreError`] when the count is already `u32::MAX`.
    ///
    /// # Examples
    /// ```
    /// let s = multiprocess::Semaphore::new(0)?;
    /// s.release().unwrap();
    /// assert_eq!(s.value(), 1);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn release(&self) -> Result<(), SemaphoreError> {
        self.core.release()
    }
}

semaphore_api!(Semaphore, "let s = multiprocess::Semaphore::new(2)?;");

/// A semaphore that refuses to go above its initial value (Python's
/// `multiprocessing.BoundedSemaphore`): releasing more than was acquired is an error.
///
/// # Examples
/// ```
/// let s = multiprocess::BoundedSemaphore::new(1)?;
/// s.acquire();
/// s.release().unwrap();
/// assert!(s.release().is_err()); // over-release
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct BoundedSemaphore {
    core: Core,
}

impl BoundedSemaphore {
    /// A semaphore with `value` counts, never more.
    ///
    /// # Errors
    /// When the shared memory cannot be created.
    ///
    /// # Examples
    /// ```
    /// let s = multiprocess::BoundedSemaphore::new(2)?;
    /// assert_eq!(s.value(), 2);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn new(value: u32) -> io::Result<BoundedSemaphore> {
        Ok(BoundedSemaphore {
            core: Core::new(value, value)?,
        })
    }

    fn from_tagged(tagged: Tagged) -> Result<BoundedSemaphore, String> {
        Ok(BoundedSemaphore {
            core: Core { tagged },
        })
    }

    /// Gives one count back, waking a waiter.
    ///
    /// # Errors
    /// [`SemaphoreError`] when the count is already at its initial value (Python's
    /// `ValueError`).
    ///
    /// # Examples
    /// ```
    /// let s = multiprocess::BoundedSemaphore::new(1)?;
    /// let err = s.release().unwrap_err();
    /// assert_eq!(err.to_string(), "semaphore released too many times");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn release(&self) -> Result<(), SemaphoreError> {
        self.core.release()
    }
}

semaphore_api!(
    BoundedSemaphore,
    "let s = multiprocess::BoundedSemaphore::new(2)?;"
);

handle_serde_core!(Semaphore);
handle_serde_core!(BoundedSemaphore);

/// A release beyond the bound of a [`BoundedSemaphore`] (or past `u32::MAX`).
///
/// # Examples
/// ```
/// let s = multiprocess::BoundedSemaphore::new(0)?;
/// assert!(s.release().is_err());
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SemaphoreError(());

impl fmt::Display for SemaphoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("semaphore released too many times")
    }
}

impl std::error::Error for SemaphoreError {}
