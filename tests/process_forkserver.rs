//! Fork-server children: their exit code and `join` come from one source, also when the fork
//! server dies first; dropped children give back their descriptors promptly. Its own binary:
//! one test kills the fork server, the other counts this process's descriptors.

mod common;
use common::*;
use multiprocess::{Process, StartMethod::ForkServer};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn parent_pid(_: ()) -> i32 {
    // SAFETY: getppid has no preconditions.
    unsafe { libc::getppid() }
}

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn a_child_outliving_its_killed_fork_server_has_one_end() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    deadline(60, || {
        let mut c = Process::builder()
            .start_method(ForkServer)
            .start(sleep_ms, 1500)
            .unwrap();
        let mut p = Process::builder()
            .start_method(ForkServer)
            .start(parent_pid, ())
            .unwrap();
        let server = p.join_result().unwrap();
        // SAFETY: kill with a pid and a signal number.
        assert_eq!(unsafe { libc::kill(server, libc::SIGKILL) }, 0);
        std::thread::sleep(Duration::from_millis(200));
        // The server is gone, the child is not: it is not ended.
        assert!(
            c.is_alive(),
            "the child counts as ended when only its server died"
        );
        assert_eq!(c.exitcode(), None);
        let t = Instant::now();
        c.join().unwrap();
        assert!(
            t.elapsed() > Duration::from_millis(500),
            "join returned before the child ended"
        );
        // Ended, and the code says it is unknown (only its dead server could have told).
        assert_eq!(c.exitcode(), Some(multiprocess::process::EXITCODE_UNKNOWN));
        assert!(!c.is_alive());
        // A new fork server serves the next child.
        let mut p = Process::builder()
            .start_method(ForkServer)
            .start(parent_pid, ())
            .unwrap();
        assert_ne!(p.join_result().unwrap(), server);
    });
}

#[test]
fn dropped_fork_server_children_give_back_their_descriptors() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    deadline(60, || {
        // The fork server is up before the count.
        Process::builder()
            .start_method(ForkServer)
            .start(sleep_ms, 0)
            .unwrap()
            .join()
            .unwrap();
        let before = fds();
        for _ in 0..64 {
            let p = Process::builder()
                .start_method(ForkServer)
                .start(sleep_ms, 20)
                .unwrap();
            drop(p);
        }
        let t = Instant::now();
        while fds() > before && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            fds() <= before,
            "64 dropped children still hold {} descriptors",
            fds() - before
        );
    });
}
