//! `Event`.
//!
//! # Layout (one memfd, zero-filled)
//! | offset | type | contents |
//! |---|---|---|
//! | 0 | `u32` | magic `"mEv1"` |
//! | 8 | `AtomicU32` | the state, the futex word: bit 0 the flag, bits 1.. count the sets (wrapping) |
//! | 12 | `AtomicU32` | `sleepers`: how many may sleep on the state (a hint, see below) |
//!
//! # Protocol
//! `set`, if the flag is clear, sets it and counts one more set in a single CAS, then, if
//! `sleepers` is not 0, wakes every sleeper. `clear` clears bit 0 only. `wait` remembers the
//! state it started with and returns when the flag is set *or the count moved*: a `set` that
//! was undone by a `clear` before the waiter looked again (a pulse) still ends the wait, as in
//! Python, where such a waiter is woken too. It spins for at most
//! [`SPIN_TIME`](super::SPIN_TIME) (a few microseconds) reading the state (adaptively: not
//! after a spin that failed, see `spin_briefly`), `Acquire`, pairing with the `SeqCst` CAS, so
//! what the setter wrote before `set` is visible; else it increments `sleepers`, re-reads the
//! state and sleeps while it is the one it read. Both sides write then read the other's word
//! with `SeqCst`, so either the setter sees the sleeper or the sleeper sees the new state: no
//! lost wake-up. A waiter that dies leaves `sleepers` one too high, which only costs `set` a
//! wake-up call. Another process may write either word: any state is a valid one (a flag and
//! a count), and `sleepers` is a hint (wrapping).

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{deadline, handle_serde, magic, Tagged, BODY, WAKE_ALL};
use crate::sys::shm::{futex_wait, futex_wake};

const MAGIC: u32 = magic(b"mEv1");
const FLAG: usize = BODY;
const SLEEPERS: usize = BODY + 4;
const LEN: usize = BODY + 8;
/// Bit 0 of the state: the flag. The bits above count the sets.
const SET: u32 = 1;
/// One more set in the count.
const ONE_SET: u32 = 2;

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

    /// Test support: the `u32` word at byte `offset` of the shared region (layout in the
    /// sources), as any process holding the region could write it; `None` past its end.
    #[doc(hidden)]
    pub fn __shared_word(&self, offset: usize) -> Option<&AtomicU32> {
        self.tagged.word_at(offset)
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
        let state = self.word(FLAG);
        let was = state.fetch_update(Ordering::SeqCst, Ordering::Relaxed, |s| {
            (s & SET == 0).then(|| s.wrapping_add(ONE_SET) | SET)
        });
        if was.is_ok() && self.word(SLEEPERS).load(Ordering::SeqCst) != 0 {
            futex_wake(state, WAKE_ALL);
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
        self.word(FLAG).fetch_and(!SET, Ordering::Release);
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
        self.word(FLAG).load(Ordering::Acquire) & SET != 0
    }

    /// Waits until the flag is set. A `set` that another process undoes at once with
    /// [`clear`](Self::clear) (a pulse) also ends the wait, as in Python.
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

    /// Waits at most `timeout` for the flag (Python's `wait(timeout)`): `true` when it was
    /// set during the wait (even if cleared again since, a pulse), `false` on timeout. (After
    /// a pulse, Python's `multiprocessing.Event` returns the flag, `False`, and its
    /// `threading.Event` returns `True`, as here: a `false` here always means a timeout.)
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

    /// Waits until the flag is set without blocking a thread (a pulse also ends the wait, as
    /// for [`wait`](Self::wait)). It works under any executor: the crate's futex watcher, one
    /// thread per process, waits in one `futex_waitv` call on the events of every pending
    /// future and wakes their tasks; [`set`](Self::set) wakes it with the same futex wake
    /// that wakes waiting threads, so neither side pays more than a waiting thread costs.
    /// Before Linux 5.16 (no `futex_waitv`), each pending future has a helper thread instead,
    /// which lingers until the event is set if the future is dropped first.
    ///
    /// Cancellation: dropping the future before it completes leaves the event as it was.
    /// Put a deadline on it with your runtime's timeout (`tokio::time::timeout`).
    ///
    /// # Errors
    /// Only before Linux 5.16, when no helper thread can be started.
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
    /// # let block_on = |f| multiprocess::__block_on(f);
    /// block_on(ready.wait_async())?;
    /// assert!(ready.is_set());
    /// p.join()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn wait_async(&self) -> io::Result<()> {
        let state = self.word(FLAG);
        let start = state.load(Ordering::Acquire);
        let done = |s: u32| s & SET != 0 || s != start;
        let mut parked = Parked {
            event: self,
            counted: false,
            watch: crate::sys::reactor::FutexWatch::new(),
            helper: false,
        };
        std::future::poll_fn(|cx| {
            if done(state.load(Ordering::Acquire)) {
                return std::task::Poll::Ready(Ok(()));
            }
            // Counted as a sleeper first, so that a `set` from now on wakes the word.
            if !parked.counted {
                self.word(SLEEPERS).fetch_add(1, Ordering::SeqCst);
                parked.counted = true;
            }
            if done(state.load(Ordering::SeqCst)) {
                return std::task::Poll::Ready(Ok(()));
            }
            if parked.helper {
                return std::task::Poll::Pending;
            }
            let owner = Arc::clone(&self.tagged.region) as Arc<dyn Send + Sync>;
            match parked.watch.watch(owner, state, start, None, cx.waker()) {
                Ok(()) => std::task::Poll::Pending,
                Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                    let (event, waker) = (self.clone(), cx.waker().clone());
                    let spawned = std::thread::Builder::new()
                        .name("multiprocess-event-wait".into())
                        .spawn(move || {
                            event.wait_from(start, None);
                            waker.wake();
                        });
                    match spawned {
                        Ok(_) => {
                            parked.helper = true;
                            std::task::Poll::Pending
                        }
                        Err(e) => std::task::Poll::Ready(Err(e)),
                    }
                }
                Err(e) => std::task::Poll::Ready(Err(e)),
            }
        })
        .await
    }

    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        let start = self.word(FLAG).load(Ordering::Acquire);
        self.wait_from(start, deadline)
    }

    /// Waits until the flag is set or the state moved from `start`.
    fn wait_from(&self, start: u32, deadline: Option<Instant>) -> bool {
        let state = self.word(FLAG);
        let sleepers = self.word(SLEEPERS);
        // Set now, or set since the wait began (the count moved).
        let done = |s: u32| s & SET != 0 || s != start;
        if done(start) {
            return true;
        }
        // A setter running right now on another core usually sets the flag within a few
        // microseconds: look for a bounded time before sleeping.
        if super::spin_briefly(|| done(state.load(Ordering::Acquire))) {
            return true;
        }
        loop {
            if done(state.load(Ordering::Acquire)) {
                return true;
            }
            let Some(timeout) = super::time_left(deadline) else {
                return false;
            };
            sleepers.fetch_add(1, Ordering::SeqCst);
            if !done(state.load(Ordering::SeqCst)) {
                let _ = futex_wait(state, start, timeout);
            }
            sleepers.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// An async waiter's place among an event's sleepers, left when its future ends or is
/// dropped.
struct Parked<'a> {
    event: &'a Event,
    counted: bool,
    watch: crate::sys::reactor::FutexWatch,
    helper: bool,
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        if self.counted {
            self.event.word(SLEEPERS).fetch_sub(1, Ordering::SeqCst);
        }
    }
}
