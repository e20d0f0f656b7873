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

/// This process's reactor, and the pid it was made in (a forked child makes its own: the
/// thread does not exist there).
static REACTOR: Mutex<Option<(i32, Arc<Reactor>)>> = Mutex::new(None);

fn reactor() -> io::Result<Arc<Reactor>> {
    let mut r = REACTOR.lock().unwrap_or_else(|p| p.into_inner());
    let pid = super::process::getpid();
    if let Some((p, reactor)) = r.as_ref() {
        if *p == pid {
            return Ok(reactor.clone());
        }
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
    *r = Some((pid, reactor.clone()));
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
