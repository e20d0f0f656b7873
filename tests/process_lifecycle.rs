//! Process lifecycle under every start method: start, join, results, exit codes, misuse.

mod common;
use common::*;
use multiprocess::{Process, ProcessError};
use std::time::{Duration, Instant};

fn square(x: u64) -> u64 {
    x * x
}

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

fn exit_with(code: i32) {
    std::process::exit(code);
}

fn panics(msg: String) {
    panic!("{msg}");
}

fn abort(_: ()) {
    std::process::abort();
}

fn whoami(_: ()) -> (String, i32, Option<i32>, bool) {
    let me = multiprocess::current_process();
    let parent = multiprocess::parent_process().map(|p| p.pid());
    (me.name().to_string(), me.pid(), parent, me.daemon())
}

#[test]
fn result_comes_back_under_every_method() {
    deadline(60, || {
        for m in METHODS {
            let mut p = Process::builder()
                .start_method(m)
                .start(square, 12)
                .unwrap();
            assert_eq!(p.join_result().unwrap(), 144, "{m}");
            assert_eq!(p.exitcode(), Some(0), "{m}");
            assert!(!p.is_alive());
            assert!(!is_unreaped_child(p.pid().unwrap()), "{m}: zombie left");
        }
    });
}

#[test]
fn exit_codes_follow_python() {
    deadline(60, || {
        for m in METHODS {
            let mut p = Process::builder()
                .start_method(m)
                .start(exit_with, 7)
                .unwrap();
            let e = p.join_result().unwrap_err();
            assert_eq!(p.exitcode(), Some(7), "{m}");
            assert_eq!(e.exit_code(), Some(7), "{m}: {e}");

            let mut p = Process::builder()
                .start_method(m)
                .start(exit_with, 0)
                .unwrap();
            p.join().unwrap();
            assert_eq!(p.exitcode(), Some(0), "{m}");

            let mut p = Process::builder()
                .start_method(m)
                .start(panics, "kaputt".to_string())
                .unwrap();
            let e = p.join_result().unwrap_err();
            assert_eq!(p.exitcode(), Some(1), "{m}");
            assert!(e.is_panic(), "{m}: {e}");
            assert_eq!(e.panic_message(), Some("kaputt"));

            let mut p = Process::builder().start_method(m).start(abort, ()).unwrap();
            let e = p.join_result().unwrap_err();
            assert_eq!(p.exitcode(), Some(-6), "{m}: SIGABRT");
            assert_eq!(e.signal(), Some(6), "{m}: {e}");
        }
    });
}

#[test]
fn terminate_and_kill() {
    deadline(60, || {
        for m in METHODS {
            let mut p = Process::builder()
                .start_method(m)
                .start(sleep_ms, 60_000)
                .unwrap();
            assert!(p.is_alive());
            p.terminate().unwrap();
            p.join().unwrap();
            assert_eq!(p.exitcode(), Some(-15), "{m}");

            let mut p = Process::builder()
                .start_method(m)
                .start(sleep_ms, 60_000)
                .unwrap();
            p.kill().unwrap();
            p.join().unwrap();
            assert_eq!(p.exitcode(), Some(-9), "{m}");
            // Signalling an ended process is not an error (Python's behaviour).
            p.terminate().unwrap();
        }
    });
}

#[test]
fn join_timeout_on_a_sleeping_child() {
    deadline(60, || {
        for m in METHODS {
            let mut p = Process::builder()
                .start_method(m)
                .start(sleep_ms, 60_000)
                .unwrap();
            let t = Instant::now();
            assert!(!p.join_timeout(Duration::from_millis(200)).unwrap());
            let waited = t.elapsed();
            assert!(
                waited >= Duration::from_millis(190) && waited < Duration::from_secs(3),
                "{m}: {waited:?}"
            );
            assert!(p.is_alive());
            assert_eq!(p.exitcode(), None);
            p.kill().unwrap();
            assert!(p.join_timeout(Duration::from_secs(10)).unwrap());
            assert!(!p.is_alive());
        }
    });
}

#[test]
fn misuse_is_an_error_not_a_panic() {
    deadline(60, || {
        for m in METHODS {
            let mut p = Process::builder().start_method(m).target(sleep_ms, 100);
            assert!(!p.is_alive(), "not alive before start");
            assert_eq!(p.exitcode(), None);
            let e = p.join().unwrap_err();
            assert!(e.is_misuse(), "join before start: {e}");
            assert!(p.terminate().unwrap_err().is_misuse());
            p.set_daemon(true).unwrap();
            p.start().unwrap();
            assert!(p.start().unwrap_err().is_misuse(), "start twice");
            assert!(
                p.set_daemon(false).unwrap_err().is_misuse(),
                "daemon after start"
            );
            let e = p.close().unwrap_err();
            assert!(e.is_misuse(), "close while running: {e}");
            assert!(e.to_string().contains("still running"));
            p.join().unwrap();
            p.close().unwrap();
            assert!(p.join().unwrap_err().is_misuse(), "join after close");
            assert!(p.start().unwrap_err().is_misuse(), "start after close");
        }
    });
}

#[test]
fn names_and_identity() {
    deadline(60, || {
        for m in METHODS {
            let mut p = Process::builder()
                .start_method(m)
                .name("worker-a")
                .start(whoami, ())
                .unwrap();
            let (name, pid, parent, daemon) = p.join_result().unwrap();
            assert_eq!(name, "worker-a");
            assert_eq!(Some(pid), p.pid());
            assert_eq!(parent, Some(std::process::id() as i32), "{m}");
            assert!(!daemon);
            let mut p = Process::builder()
                .start_method(m)
                .daemon(true)
                .start(whoami, ())
                .unwrap();
            let (name, _, _, daemon) = p.join_result().unwrap();
            assert!(name.starts_with("Process-"), "{name}");
            assert!(daemon);
        }
        assert_eq!(multiprocess::current_process().name(), "MainProcess");
        assert!(multiprocess::parent_process().is_none());
    });
}

#[test]
fn active_children_is_exact() {
    deadline(60, || {
        for m in METHODS {
            let mut p = Process::builder()
                .start_method(m)
                .start(sleep_ms, 60_000)
                .unwrap();
            let pid = p.pid().unwrap();
            assert!(
                multiprocess::active_children()
                    .iter()
                    .any(|c| c.pid() == pid),
                "{m}"
            );
            p.kill().unwrap();
            // Once it has ended, it is not active any more, even before join.
            assert!(eventually(10, || !multiprocess::active_children()
                .iter()
                .any(|c| c.pid() == pid)));
            p.join().unwrap();
        }
    });
}

#[test]
fn a_dropped_process_is_reaped() {
    deadline(60, || {
        for m in [
            multiprocess::StartMethod::Fork,
            multiprocess::StartMethod::Spawn,
        ] {
            let p = Process::builder()
                .start_method(m)
                .start(sleep_ms, 300)
                .unwrap();
            let pid = p.pid().unwrap();
            drop(p);
            assert!(
                eventually(20, || !exists(pid)
                    || !is_unreaped_child(pid) && !exists(pid)),
                "{m}: {pid} not reaped"
            );
        }
    });
}

#[test]
fn errors_display_lowercase_and_helpful() {
    let e: ProcessError = Process::new(square, 1).join().unwrap_err();
    let s = e.to_string();
    assert!(
        s.chars().next().unwrap().is_lowercase() && !s.ends_with('.'),
        "{s}"
    );
}
