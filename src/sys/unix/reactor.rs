//! The readiness reactor behind the crate's futures (`join_async`, `recv_async`,
//! `get_async`, ...): one thread per process waits in `epoll` on the descriptors that pending
//! futures registered, and wakes their wakers. It belongs to no async runtime, so the futures
//! work under tokio, smol, async-std or `futures::executor::block_on` alike; the thread starts
//! with the first future that has to wait.
//!
//! Each registration is one-shot (`EPOLLONESHOT`): a future that finds its descriptor not
//! ready stores its waker, then (re)arms; the kernel reports a descriptor that is readable
//! already at the moment of arming, so no wake-up is lost between the check and the arm.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;

use rustix::event::epoll;

pub(crate) struct Reactor {
    epoll: OwnedFd,
    wakers: Mutex<HashMap<u64, Waker>>,
    next: AtomicU64,
}

/// This process's reactor (see [`this_process`]).
static REACTOR: Mutex<Option<(i32, Option<Arc<Reactor>>)>> = Mutex::new(None);

/// The part of a process-wide `slot` that belongs to this process. A slot remembers the pid
/// it was filled in: a forked child finds its parent's there, whose threads it does not have,
/// and starts afresh.
fn this_process<T: Default>(slot: &mut Option<(i32, T)>) -> &mut T {
    let pid = super::process::getpid();
    if slot.as_ref().is_some_and(|(p, _)| *p != pid) {
        *slot = None;
    }
    &mut slot.get_or_insert_with(|| (pid, T::default())).1
}

fn reactor() -> io::Result<Arc<Reactor>> {
    let mut slot = REACTOR.lock().unwrap_or_else(|p| p.into_inner());
    let mine = this_process(&mut slot);
    if let Some(reactor) = mine {
        return Ok(reactor.clone());
    }
    let reactor = Arc::new(Reactor {
        epoll: epoll::create(epoll::CreateFlags::CLOEXEC)?,
        wakers: Mutex::new(HashMap::new()),
        next: AtomicU64::new(1),
    });
    let running = reactor.clone();
    std::thread::Builder::new()
        .name("multiprocess-reactor".into())
        .spawn(move || running.run())?;
    *mine = Some(reactor.clone());
    Ok(reactor)
}

impl Reactor {
    fn run(&self) {
        let mut events: Vec<epoll::Event> = Vec::with_capacity(64);
        loop {
            events.clear();
            match epoll::wait(
                &self.epoll,
                rustix::buffer::spare_capacity(&mut events),
                None,
            ) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                // EBADF or EINVAL cannot happen to a descriptor this thread's reactor owns.
                Err(_) => return,
            }
            let woken: Vec<Waker> = {
                let mut w = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
                events
                    .iter()
                    .filter_map(|e| w.remove(&e.data.u64()))
                    .collect()
            };
            for w in woken {
                w.wake();
            }
        }
    }
}

/// A future's interest in some descriptors becoming readable (or hung up). It registers
/// its own duplicates of them, so that several futures may wait on one descriptor (epoll holds
/// one entry per descriptor number), and leaves nothing behind when dropped.
pub(crate) struct Interest {
    reactor: Option<Arc<Reactor>>,
    token: u64,
    /// (the caller's descriptor number, our duplicate registered in epoll)
    registered: Vec<(RawFd, OwnedFd)>,
}

impl Interest {
    /// No interest yet (nothing is made until [`arm`](Self::arm)).
    pub(crate) fn new() -> Interest {
        Interest {
            reactor: None,
            token: 0,
            registered: Vec::new(),
        }
    }

    /// Wakes `waker` once when any of `fds` is readable.
    pub(crate) fn arm(&mut self, fds: &[BorrowedFd<'_>], waker: &Waker) -> io::Result<()> {
        let reactor = match &self.reactor {
            Some(r) => r.clone(),
            None => {
                let r = reactor()?;
                self.token = r.next.fetch_add(1, Ordering::Relaxed);
                self.reactor = Some(r.clone());
                r
            }
        };
        reactor
            .wakers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(self.token, waker.clone());
        let flags = epoll::EventFlags::IN | epoll::EventFlags::ONESHOT;
        let data = epoll::EventData::new_u64(self.token);
        for fd in fds {
            let raw = fd.as_raw_fd();
            if let Some((_, dup)) = self.registered.iter().find(|(r, _)| *r == raw) {
                epoll::modify(&reactor.epoll, dup, data, flags)?;
                continue;
            }
            let dup = fd.try_clone_to_owned()?;
            epoll::add(&reactor.epoll, &dup, data, flags)?;
            self.registered.push((raw, dup));
        }
        Ok(())
    }
}

impl Drop for Interest {
    fn drop(&mut self) {
        let Some(reactor) = &self.reactor else {
            return;
        };
        for (_, dup) in self.registered.drain(..) {
            let _ = epoll::delete(reactor.epoll.as_fd(), &dup);
        }
        reactor
            .wakers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.token);
    }
}

// ---------------------------------------------------------------------------------------------
// Futex words

/// The most words one `futex_waitv` call takes (the kernel's `FUTEX_WAITV_MAX`); one of them
/// is a watcher's own control word.
const WAITV_MAX: usize = 128;

/// A thread that waits, in one `futex_waitv` (Linux 5.16 or later), on the shared futex words
/// that pending futures watch (`Event::wait_async`), and wakes a future's waker when its word
/// no longer holds the value it saw. The primitives need no change for it: a watched word is
/// woken by the same `FUTEX_WAKE` that wakes threads sleeping on it. A watcher takes up to
/// 127 words; more pending futures start more watchers.
struct Watcher {
    /// Bumped (and woken) whenever `entries` changes, so that the thread waits on the new set.
    control: std::sync::atomic::AtomicU32,
    entries: Mutex<Vec<Watched>>,
    /// The thread ended on an error `futex_waitv` should never give: no more watches.
    broken: std::sync::atomic::AtomicBool,
}

struct Watched {
    token: u64,
    /// Never read: keeps the word's mapping alive while the thread may wait on it.
    #[allow(dead_code)]
    owner: Arc<dyn Send + Sync>,
    word: *const std::sync::atomic::AtomicU32,
    expected: u32,
    /// Woken at this time even if the word did not change (to look at something else, such
    /// as whether a peer still lives).
    deadline: Option<std::time::Instant>,
    waker: Waker,
}

// SAFETY: `word` points into the mapping `owner` keeps alive, and is only read atomically.
#[allow(unsafe_code)]
unsafe impl Send for Watched {}

/// This process's watchers (see [`this_process`]).
static WATCHERS: Mutex<Option<(i32, Vec<Arc<Watcher>>)>> = Mutex::new(None);
static NEXT_WATCH: AtomicU64 = AtomicU64::new(1);

impl Watcher {
    fn run(&self) {
        use rustix::thread::futex;
        loop {
            let control = self.control.load(Ordering::Acquire);
            let mut waits = vec![futex::Wait::new()];
            waits[0].val = u64::from(control);
            waits[0].uaddr = futex::WaitPtr::new(self.control.as_ptr().cast());
            waits[0].flags = futex::WaitFlags::SIZE_U32 | futex::WaitFlags::PRIVATE;
            let mut next_deadline: Option<std::time::Instant> = None;
            let woken: Vec<Waker> = {
                let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
                let mut woken = Vec::new();
                let now = std::time::Instant::now();
                entries.retain(|e| {
                    // SAFETY: `owner` keeps the word mapped while the entry exists.
                    #[allow(unsafe_code)]
                    let value = unsafe { &*e.word }.load(Ordering::Acquire);
                    let due = e.deadline.is_some_and(|d| d <= now);
                    if value == e.expected && !due {
                        if let Some(d) = e.deadline {
                            next_deadline = Some(next_deadline.map_or(d, |n| n.min(d)));
                        }
                        return true;
                    }
                    woken.push(e.waker.clone());
                    false
                });
                for e in entries.iter() {
                    let mut w = futex::Wait::new();
                    w.val = u64::from(e.expected);
                    w.uaddr = futex::WaitPtr::new(e.word.cast_mut().cast());
                    // Shared: the word is in memory other processes map.
                    w.flags = futex::WaitFlags::SIZE_U32;
                    waits.push(w);
                }
                woken
            };
            for w in woken {
                w.wake();
            }
            // Every word is re-read against its expected value by the kernel under its lock,
            // so a change after the scan above makes this return at once (EAGAIN).
            // `futex_waitv` takes an absolute time on the monotonic clock.
            let timeout = next_deadline.map(|d| {
                let left = d.saturating_duration_since(std::time::Instant::now());
                let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
                let nanos = now.tv_nsec as u64 + u64::from(left.subsec_nanos());
                rustix::time::Timespec {
                    tv_sec: now.tv_sec + left.as_secs() as i64 + (nanos / 1_000_000_000) as i64,
                    tv_nsec: (nanos % 1_000_000_000) as _,
                }
            });
            match futex::waitv(
                &waits,
                futex::WaitvFlags::empty(),
                timeout.as_ref(),
                rustix::time::ClockId::Monotonic,
            ) {
                Ok(_)
                | Err(rustix::io::Errno::AGAIN)
                | Err(rustix::io::Errno::INTR)
                | Err(rustix::io::Errno::TIMEDOUT) => {}
                // A word unmapped between the scan and this call: its future was dropped
                // (its entry is gone, so the next scan leaves it out) and the last holder of
                // its mapping let go. The kernel checked the address; nothing was touched.
                Err(rustix::io::Errno::FAULT) => {}
                // The words are mapped and aligned, and at most `WAITV_MAX`: this cannot
                // happen. Should it, every future is woken (to poll again and find the
                // watcher broken) rather than left waiting.
                Err(_) => {
                    self.broken.store(true, Ordering::Release);
                    let all = std::mem::take(
                        &mut *self.entries.lock().unwrap_or_else(|p| p.into_inner()),
                    );
                    for e in all {
                        e.waker.wake();
                    }
                    return;
                }
            }
        }
    }

    fn poke(&self) {
        self.control.fetch_add(1, Ordering::Release);
        super::shm::futex_wake_private(&self.control, 1);
    }
}

/// A future's watch of one futex word: its waker is woken once the word no longer holds the
/// value given to [`watch`](Self::watch). Leaves nothing behind when dropped. (The watcher
/// thread reads a word only under its list's lock, while the entry keeps the mapping alive;
/// the kernel may find a word unmapped meanwhile, which the thread takes as a reason to look
/// again.)
pub(crate) struct FutexWatch {
    at: Option<(Arc<Watcher>, u64)>,
}

impl FutexWatch {
    pub(crate) fn new() -> FutexWatch {
        FutexWatch { at: None }
    }

    /// Wakes `waker` once `word` (inside the mapping `owner` keeps alive) differs from
    /// `expected`, or at `deadline`. `Err(Unsupported)` before Linux 5.16 (no
    /// `futex_waitv`).
    pub(crate) fn watch(
        &mut self,
        owner: Arc<dyn Send + Sync>,
        word: &std::sync::atomic::AtomicU32,
        expected: u32,
        deadline: Option<std::time::Instant>,
        waker: &Waker,
    ) -> io::Result<()> {
        self.unwatch();
        let token = NEXT_WATCH.fetch_add(1, Ordering::Relaxed);
        let watcher = add_watch(Watched {
            token,
            owner,
            word,
            expected,
            deadline,
            waker: waker.clone(),
        })?;
        watcher.poke();
        self.at = Some((watcher, token));
        Ok(())
    }

    fn unwatch(&mut self) {
        if let Some((watcher, token)) = self.at.take() {
            let mut entries = watcher.entries.lock().unwrap_or_else(|p| p.into_inner());
            let before = entries.len();
            entries.retain(|e| e.token != token);
            let removed = entries.len() != before;
            drop(entries);
            if removed {
                watcher.poke();
            }
        }
    }
}

impl Drop for FutexWatch {
    fn drop(&mut self) {
        self.unwatch();
    }
}

/// Whether this kernel has `futex_waitv` (Linux 5.16 or later), asked once.
fn has_waitv() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        use rustix::thread::futex;
        // An empty list is refused with EINVAL where the call exists, ENOSYS where not.
        !matches!(
            futex::waitv(
                &[],
                futex::WaitvFlags::empty(),
                None,
                rustix::time::ClockId::Monotonic
            ),
            Err(rustix::io::Errno::NOSYS)
        )
    })
}

/// Adds `entry` to a watcher of this process with room for it (starting one if none has);
/// returns that watcher.
fn add_watch(entry: Watched) -> io::Result<Arc<Watcher>> {
    if !has_waitv() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "waiting for a futex word without a thread needs futex_waitv (Linux 5.16 or later)",
        ));
    }
    // Held while a watcher is chosen and filled, so that none takes more than it can wait on.
    let mut all = WATCHERS.lock().unwrap_or_else(|p| p.into_inner());
    let list = this_process(&mut all);
    list.retain(|w| !w.broken.load(Ordering::Acquire));
    for w in list.iter() {
        let mut entries = w.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() < WAITV_MAX - 1 {
            entries.push(entry);
            return Ok(w.clone());
        }
    }
    let w = Arc::new(Watcher {
        control: std::sync::atomic::AtomicU32::new(0),
        entries: Mutex::new(vec![entry]),
        broken: std::sync::atomic::AtomicBool::new(false),
    });
    let running = w.clone();
    std::thread::Builder::new()
        .name("multiprocess-futex-watcher".into())
        .spawn(move || running.run())?;
    list.push(w.clone());
    Ok(w)
}
