//! Children never outlive their parent by accident, and a child that never reaches the crate is
//! reported, not multiplied. Each case runs a parent of its own (the `mp-test-helper` binary).

mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const HELPER: &str = env!("CARGO_BIN_EXE_mp-test-helper");

/// Gone or a zombie (its parent died; whoever adopted it may not reap at once).
fn dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z')),
    }
}

/// Runs the helper in `role`, and reads the pid of the child it started.
fn helper_with_child(role: &str, m: StartMethod) -> (std::process::Child, i32) {
    let mut parent = Command::new(HELPER)
        .args([role, m.name()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(parent.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let child: i32 = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{m}: {line:?}"));
    (parent, child)
}

#[test]
fn daemon_child_dies_when_its_parent_is_sigkilled() {
    deadline(60, || {
        for m in METHODS {
            let (mut parent, child) = helper_with_child("daemon-then-wait", m);
            assert!(!dead(child), "{m}: child runs");
            parent.kill().unwrap();
            parent.wait().unwrap();
            let t = Instant::now();
            assert!(
                eventually(5, || dead(child)),
                "{m}: daemon child {child} outlived its parent"
            );
            assert!(
                t.elapsed() < Duration::from_secs(1),
                "{m}: took {:?}",
                t.elapsed()
            );
        }
    });
}

#[test]
fn a_daemon_child_outlives_the_thread_that_started_it_but_not_the_process() {
    deadline(60, || {
        for m in METHODS {
            let (mut parent, child) = helper_with_child("daemon-from-thread-then-wait", m);
            // The thread that started it ended 300 ms before the pid was printed.
            assert!(
                !dead(child),
                "{m}: the daemon child died with its starting thread"
            );
            parent.kill().unwrap();
            parent.wait().unwrap();
            assert!(
                eventually(5, || dead(child)),
                "{m}: daemon child {child} outlived its parent process"
            );
        }
    });
}

#[test]
fn normal_exit_joins_non_daemon_children() {
    deadline(60, || {
        for m in METHODS {
            let path =
                std::env::temp_dir().join(format!("mp-exit-joins-{}-{m}", std::process::id()));
            let _ = std::fs::remove_file(&path);
            let t = Instant::now();
            let out = Command::new(HELPER)
                .args(["exit-joins", m.name(), path.to_str().unwrap()])
                .output()
                .unwrap();
            assert!(out.status.success(), "{m}: {out:?}");
            assert!(
                t.elapsed() >= Duration::from_millis(300),
                "{m}: exited before its child"
            );
            assert_eq!(std::fs::read(&path).unwrap(), b"done", "{m}");
            std::fs::remove_file(&path).unwrap();
        }
    });
}

#[test]
fn normal_exit_terminates_daemon_children() {
    deadline(60, || {
        for m in METHODS {
            let t = Instant::now();
            let out = Command::new(HELPER)
                .args(["exit-terminates-daemon", m.name()])
                .output()
                .unwrap();
            assert!(out.status.success(), "{m}: {out:?}");
            let child: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{m}: the daemon was waited for"
            );
            assert!(
                eventually(5, || dead(child)),
                "{m}: daemon {child} survived"
            );
        }
    });
}

#[test]
fn a_child_that_never_reaches_the_crate_is_reported_not_multiplied() {
    deadline(60, || {
        for m in [
            multiprocess::StartMethod::Spawn,
            multiprocess::StartMethod::ForkServer,
        ] {
            let t = Instant::now();
            let out = Command::new(HELPER)
                .args(["undiverted-spawn", m.name()])
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(stdout.contains("error init_missing=true"), "{m}: {stdout}");
            assert!(
                stdout.contains("multiprocess::init()"),
                "{m}: the error names the fix: {stdout}"
            );
            assert!(stdout.contains("children=0"), "{m}: {stdout}");
            // The child's main ran, could not start processes, and was killed at the deadline.
            assert!(
                stdout.contains("undiverted-child refused=true"),
                "{m}: {stdout}"
            );
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "{m}: {:?}",
                t.elapsed()
            );
        }
    });
}

#[test]
fn without_init_or_constructor_spawn_refuses_up_front() {
    let out = Command::new(HELPER)
        .args(["no-init-spawn", "spawn"])
        .env("MULTIPROCESS_NO_CONSTRUCTOR", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("error init_missing=true"), "{stdout}");
}

#[test]
fn a_child_running_another_binary_refuses_clearly() {
    deadline(60, || {
        for m in [
            multiprocess::StartMethod::Spawn,
            multiprocess::StartMethod::ForkServer,
        ] {
            let out = Command::new(HELPER)
                .args(["mismatched-build", m.name()])
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                stdout.contains("error") && stdout.contains("different binary"),
                "{m}: {stdout}"
            );
        }
    });
}
