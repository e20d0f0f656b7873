//! Shared helpers of the integration tests: deadlines, start methods, reaping checks.
#![allow(dead_code, unreachable_pub)]

use std::sync::mpsc;
use std::time::Duration;

pub use multiprocess::StartMethod;

/// Many tests make children panic on purpose (a task that fails, an initializer that
/// panics). In a child, a panic prints one line saying so, with its message and place, instead
/// of the standard report and a backtrace: `cargo test` stays readable, and a child's
/// unexpected panic still shows where it was (the test that expects its result fails with
/// it). Panics of the test process itself keep the standard report.
#[ctor::ctor(unsafe)]
fn quiet_panics_in_children() {
    let standard = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if multiprocess::parent_process().is_some() {
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let place = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            eprintln!(
                "(a test child panicked, as tests intend: {message:?} at {place}; no backtrace)"
            );
        } else {
            standard(info);
        }
    }));
}

/// Every start method; each behaviour test runs under all of them.
pub const METHODS: [StartMethod; 3] = StartMethod::ALL;

/// A pool of `n` workers started with `m` (the pool tests' common setup).
pub fn pool(m: StartMethod, n: usize) -> multiprocess::Pool {
    multiprocess::Pool::builder()
        .processes(n)
        .start_method(m)
        .build()
        .unwrap_or_else(|e| panic!("{m}: {e}"))
}

/// Runs `f` on its own thread and fails the test if it has not finished within `secs`
/// seconds. On a timeout, the children of this test process that are still running are
/// killed (so nothing is left behind) and the test fails, naming the deadline.
pub fn deadline<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(v) => {
            let _ = handle.join();
            v
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the test thread ended without a value"),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => {
            let stuck: Vec<_> = multiprocess::active_children();
            for c in &stuck {
                // Where it was stuck, for the report (root can read kernel stacks).
                let state = std::fs::read_to_string(format!("/proc/{}/status", c.pid()))
                    .unwrap_or_default()
                    .lines()
                    .find(|l| l.starts_with("State:"))
                    .unwrap_or("")
                    .to_string();
                let wchan =
                    std::fs::read_to_string(format!("/proc/{}/wchan", c.pid())).unwrap_or_default();
                let stack =
                    std::fs::read_to_string(format!("/proc/{}/stack", c.pid())).unwrap_or_default();
                eprintln!(
                    "stuck child {} ({}): {state} wchan={wchan}\n{stack}",
                    c.pid(),
                    c.name()
                );
                let _ = c.kill();
            }
            panic!(
                "test did not finish within {secs} s; killed {} stuck children: {:?}",
                stuck.len(),
                stuck
                    .iter()
                    .map(|c| (c.pid(), c.name().to_string()))
                    .collect::<Vec<_>>()
            );
        }
    }
}

/// Whether `pid` is a zombie child of this process (started, ended, not reaped).
pub fn is_unreaped_child(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // Fields after the command name, which is in parentheses and may contain spaces.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return false;
    };
    let mut fields = rest.split_whitespace();
    let state = fields.next().unwrap_or("");
    let ppid: i32 = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    state == "Z" && ppid == std::process::id() as i32
}

/// Whether a process with this pid exists (in any state but gone).
pub fn exists(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Waits up to `secs` for `cond` to hold, polling.
pub fn eventually(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}
pub mod fuzz;
