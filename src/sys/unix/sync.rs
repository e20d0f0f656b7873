//! What the robust locks need from the system: a cheap identity of the calling thread that a
//! waiter in another process can check for liveness, and that check.
//!
//! A thread's identity is its kernel thread id (`gettid`, unique system-wide among live
//! threads) plus its start time (field 22 of `/proc/<tid>/stat`, in clock ticks since boot),
//! so that a thread id reused after its owner died is told apart. Both are read once per
//! thread and cached; a fork (any fork: `pthread_atfork` bumps a generation) invalidates the
//! cache, since the child's only thread has a new id.

use std::cell::Cell;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

/// Bumped in every forked child, before it returns from `fork`.
static FORK_GENERATION: AtomicU64 = AtomicU64::new(1);
static AT_FORK: Once = Once::new();

extern "C" fn after_fork_in_child() {
    FORK_GENERATION.fetch_add(1, Ordering::Relaxed);
}

thread_local! {
    /// (fork generation when cached, tid, start time); generation 0: not cached yet.
    static ME: Cell<(u64, u32, u32)> = const { Cell::new((0, 0, 0)) };
}

/// The calling thread's identity: `(tid, start time truncated to 32 bits)`.
#[inline]
pub(crate) fn current_thread() -> (u32, u32) {
    let generation = FORK_GENERATION.load(Ordering::Relaxed);
    let (g, tid, start) = ME.with(Cell::get);
    if g == generation {
        return (tid, start);
    }
    current_thread_slow()
}

/// Registers the fork handler that invalidates cached thread identities (once per process).
pub(crate) fn register_at_fork() {
    AT_FORK.call_once(|| {
        // SAFETY: registers a plain function that only touches an atomic (async-signal-safe),
        // valid for the life of the process.
        unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
    });
}

#[cold]
fn current_thread_slow() -> (u32, u32) {
    register_at_fork();
    let generation = FORK_GENERATION.load(Ordering::Relaxed);
    let tid = rustix::thread::gettid().as_raw_nonzero().get() as u32;
    let start = read_stat(tid).map_or(0, |s| s.start);
    ME.with(|c| c.set((generation, tid, start)));
    (tid, start)
}

struct Stat {
    state: u8,
    start: u32,
}

/// State and start time of a thread, from `/proc/<tid>/stat`.
fn read_stat(tid: u32) -> io::Result<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{tid}/stat"))?;
    // The command name is in parentheses and may contain anything; fields follow the last ')'.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| io::Error::other("malformed /proc stat"))?;
    let mut fields = rest.split_whitespace();
    let state = fields.next().and_then(|s| s.bytes().next()).unwrap_or(b'?');
    // Field 3 is the state; the start time is field 22.
    let start: u64 = fields
        .nth(22 - 4)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other("malformed /proc stat"))?;
    Ok(Stat {
        state,
        start: start as u32,
    })
}

/// Whether the thread `tid`, which had start time `start` (0: unknown), still runs.
///
/// A thread that is gone, a zombie (a killed process not yet reaped by its parent), or a
/// thread id now used by a thread that started at another time, is dead. When `/proc` cannot
/// be read, falls back to `kill(tid, 0)`.
pub(crate) fn thread_alive(tid: u32, start: u32) -> bool {
    match read_stat(tid) {
        Ok(s) => !(s.state == b'Z' || s.state == b'X' || (start != 0 && s.start != start)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(_) => {
            // SAFETY: plain syscall on integers; signal 0 only checks existence.
            let r = unsafe { libc::kill(tid as libc::pid_t, 0) };
            r == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
        }
    }
}

/// The calling process's id and start time (its main thread's).
pub(crate) fn current_process() -> (u32, u32) {
    let pid = super::process::getpid() as u32;
    (pid, read_stat(pid).map_or(0, |s| s.start))
}

/// The CPU the calling thread runs on now (it may move right after): `sched_getcpu`, a vDSO
/// call, no syscall. `None` when the system cannot tell.
pub(crate) fn current_cpu() -> Option<u32> {
    // SAFETY: no arguments, no memory; returns -1 on failure.
    let cpu = unsafe { libc::sched_getcpu() };
    u32::try_from(cpu).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn me_is_alive_and_stable() {
        let (tid, start) = current_thread();
        assert_ne!(tid, 0);
        assert_eq!(current_thread(), (tid, start));
        assert!(thread_alive(tid, start));
        assert!(!thread_alive(tid, start.wrapping_add(1)) || start == 0);
    }

    #[test]
    fn an_ended_thread_is_dead() {
        let (tid, start) = std::thread::spawn(current_thread).join().unwrap();
        // `join` returns when the kernel clears the thread's tid word, a moment before the
        // thread is gone from /proc (failed once in a full test run): allow it that moment.
        let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while thread_alive(tid, start) {
            assert!(
                std::time::Instant::now() < until,
                "the thread still looks alive"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}
