//! `Event`.
//!
//! # Layout (one memfd, zero-filled)
//! | offset | type | contents |
//! |---|---|---|
//! | 0 | `u32` | magic `"mEv1"` |
//! | 8 | `AtomicU32` | the flag (0 or 1); the futex word |
//! | 12 | `AtomicU32` | `sleepers`: how many may sleep on the flag (a hint, see below) |
//!
//! # Protocol
//! `set` swaps the flag to 1 and, if it was 0 and `sleepers` is not 0, wakes every sleeper.
//! `wait` spins for at most [`SPIN_TIME`](super::SPIN_TIME) (a few microseconds) reading the
//! flag (adaptively: not after a spin that failed, see `spin_briefly`), then returns when it reads 1 (`Acquire`, pairing with the `SeqCst` swap, so what the
//! setter wrote before `set` is visible); else it increments `sleepers`, re-reads the flag and
//! sleeps while it is 0. Both sides write then read the other's word with `SeqCst`, so either
//! the setter sees the sleeper or the sleeper sees the flag: no lost wake-up. A waiter that
//! dies leaves `sleepers` one too high, which only costs `set` a wake-up call.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::{deadline, handle_serde, magic, Tagged, BODY, WAKE_ALL};
use crate::sys::shm::{futex_wait, futex_wake};

const MAGIC: u32 = magic(b"mEv1");
const FLAG: usize = BODY;
const SLEEPERS: usize = BODY + 4;
const LEN: usize = BODY + 8;

/// A flag that processes can wait for (Python's `multiprocessing.Event`).
///
/// A handle, like every primitive of [`sync`](crate::sync).
///
/// # Examples
/// ```
/// use multiprocess::{Event, Process};
///
/// fn child(ready: Event) {
///     ready.set();
/// }
///
/// let ready = Event::new()?;
/// let mut p = Process::builder().start(child, ready.clone())?;
/// ready.wait();
/// assert!(ready.is_set());
/// p.join()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Event {
    tagged: Tagged,
}

handle_serde!(Event, MAGIC, LEN, "event");

impl Event {
    /// A new event, not set.
    ///
    /// # Errors
    /// When the shared memory cannot be created.
    ///
    /// # Examples
    /// ```
    /// let e = multiprocess::Event::new()?;
    /// assert!(!e.is_set());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn new() -> io::Result<Event> {
        Ok(Event {
            tagged: Tagged::new("multiprocess-event", MAGIC, LEN)?,
        })
    }

    fn from_tagged(tagged: Tagged) -> Result<Event, String> {
        Ok(Event { tagged })
    }

    fn word(&self, offset: usize) -> &AtomicU32 {
        self.tagged.region.get(offset)
    }

    /// Sets the flag and wakes every waiter.
    ///
    /// # Examples
    /// ```
    /// let e = multiprocess::Event::new()?;
    /// e.set();
    /// assert!(e.is_set());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set(&self) {
        let flag = self.word(FLAG);
        if flag.swap(1, Ordering::SeqCst) == 0 && self.word(SLEEPERS).load(Ordering::SeqCst) != 0 {
            futex_wake(flag, WAKE_ALL);
        }
    }

    /// Clears the flag.
    ///
    /// # Examples
    /// ```
    /// let e = multiprocess::Event::new()?;
    /// e.set();
    /// e.clear();
    /// assert!(!e.is_set());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn clear(&self) {
        self.word(FLAG).store(0, Ordering::Release);
    }

    /// Whether the flag is set.
    ///
    /// # Examples
    /// ```
    /// let e = multiprocess::Event::new()?;
    /// assert!(!e.is_set());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn is_set(&self) -> bool {
        self.word(FLAG).load(Ordering::Acquire) == 1
    }

    /// Waits until the flag is set.
    ///
    /// # Examples
    /// ```
    /// let e = multiprocess::Event::new()?;
    /// e.set();
    /// e.wait(); // returns at once
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn wait(&self) {
        self.wait_until(None);
    }

    /// Waits at most `timeout` for the flag; whether it is set (Python's `wait(timeout)`).
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// let e = multiprocess::Event::new()?;
    /// assert!(!e.wait_timeout(Duration::from_millis(10)));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_until(deadline(timeout))
    }

    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        let flag = self.word(FLAG);
        let sleepers = self.word(SLEEPERS);
        // A setter running right now on another core usually sets the flag within a few
        // microseconds: look for a bounded time before sleeping.
        if super::spin_briefly(|| flag.load(Ordering::Acquire) == 1) {
            return true;
        }
        loop {
            if flag.load(Ordering::Acquire) == 1 {
                return true;
            }
            let Some(timeout) = super::time_left(deadline) else {
                return false;
            };
            sleepers.fetch_add(1, Ordering::SeqCst);
            if flag.load(Ordering::SeqCst) == 0 {
                let _ = futex_wait(flag, 0, timeout);
            }
            sleepers.fetch_sub(1, Ordering::SeqCst);
        }
    }
}
