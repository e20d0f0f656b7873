//! What a process is started with is input too: a `MULTIPROCESS_BOOTSTRAP` that the crate did
//! not write gets a clear message and a known exit status, never an abort; the variable is
//! gone from the environment of the child once read, so programs it starts do not inherit it.

mod common;
use common::*;
use std::process::Command;

const HELPER: &str = env!("CARGO_BIN_EXE_mp-test-helper");

fn env_has_bootstrap(_: ()) -> (bool, bool) {
    let in_self = std::env::var_os("MULTIPROCESS_BOOTSTRAP").is_some();
    let out = Command::new("env").output().expect("env runs");
    let in_grandchild = String::from_utf8_lossy(&out.stdout).contains("MULTIPROCESS_BOOTSTRAP");
    (in_self, in_grandchild)
}

#[test]
fn a_forged_bootstrap_is_a_clear_error_not_an_abort() {
    deadline(60, || {
        for value in [
            "spawn:-1",
            "spawn:abc",
            "spawn:99999",
            "spawn:",
            "spawn:+5",
            "spawn:2147483648",
            "forkserver:1",
            "forkserver:0",
            "garbage",
            "",
            "nosuchrole:5",
            // A descriptor that is open but is a file, not a socket.
            "spawn:3",
        ] {
            let file = std::fs::File::open("/proc/self/exe").unwrap();
            let mut cmd = Command::new(HELPER);
            cmd.arg("exit-status")
                .arg("fork")
                .env("MULTIPROCESS_BOOTSTRAP", value);
            // For "spawn:3": make descriptor 3 of the helper a plain file.
            let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
            // SAFETY: only dup2 (async-signal-safe) runs between fork and exec.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                    if libc::dup2(fd, 3) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let out = cmd.output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(multiprocess::context::BAD_BOOTSTRAP_EXIT),
                "{value:?}: {:?}, stderr: {stderr}",
                out.status
            );
            assert!(
                stderr.contains("MULTIPROCESS_BOOTSTRAP"),
                "{value:?}: the message names the variable: {stderr}"
            );
            assert!(!stderr.contains("panicked"), "{value:?}: {stderr}");
        }
    });
}

#[test]
fn the_bootstrap_variable_is_not_inherited_by_the_childs_own_children() {
    deadline(60, || {
        for m in METHODS {
            let mut p = multiprocess::Process::builder()
                .start_method(m)
                .start(env_has_bootstrap, ())
                .unwrap();
            let (in_self, in_grandchild) = p.join_result().unwrap();
            assert!(!in_self, "{m}: the child still has MULTIPROCESS_BOOTSTRAP");
            assert!(
                !in_grandchild,
                "{m}: a program the child started inherited it"
            );
        }
    });
}

#[test]
fn the_default_start_method_comes_first() {
    let all = multiprocess::get_all_start_methods();
    assert_eq!(all[0], multiprocess::get_start_method());
    let mut sorted = all.clone();
    sorted.sort_by_key(|m| m.to_string());
    sorted.dedup();
    assert_eq!(sorted.len(), 3, "{all:?}");
}

fn parent_pid(_: ()) -> i32 {
    // SAFETY: getppid has no preconditions.
    unsafe { libc::getppid() }
}

fn sleep_long(_: ()) {
    std::thread::sleep(std::time::Duration::from_secs(30));
}

#[test]
fn the_fork_server_ignores_sigint_and_its_children_do_not() {
    use multiprocess::StartMethod::ForkServer;
    deadline(60, || {
        let mut p = multiprocess::Process::builder()
            .start_method(ForkServer)
            .start(parent_pid, ())
            .unwrap();
        let server = p.join_result().unwrap();
        // Ctrl-C in a terminal reaches the whole process group, the fork server included.
        // SAFETY: kill with a pid and a signal number.
        assert_eq!(unsafe { libc::kill(server, libc::SIGINT) }, 0);
        std::thread::sleep(std::time::Duration::from_millis(100));
        // SAFETY: as above, signal 0 only checks.
        let alive = unsafe { libc::kill(server, 0) } == 0;
        assert!(alive, "SIGINT ended the fork server");
        let mut p = multiprocess::Process::builder()
            .start_method(ForkServer)
            .start(parent_pid, ())
            .unwrap();
        assert_eq!(
            p.join_result().unwrap(),
            server,
            "a new fork server was started"
        );
        // Its children have SIGINT's default action again.
        let mut c = multiprocess::Process::builder()
            .start_method(ForkServer)
            .start(sleep_long, ())
            .unwrap();
        // SAFETY: as above.
        assert_eq!(unsafe { libc::kill(c.pid().unwrap(), libc::SIGINT) }, 0);
        c.join_timeout(std::time::Duration::from_secs(10)).unwrap();
        assert_eq!(c.exitcode(), Some(-libc::SIGINT));
    });
}

#[test]
fn a_childs_panic_names_its_process() {
    deadline(60, || {
        for m in METHODS {
            let out = Command::new(HELPER)
                .args(["panicking-child", m.name()])
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.contains("panic in process \"cruncher\""),
                "{m}: {stderr}"
            );
            assert!(stderr.contains("on purpose"), "{m}: {stderr}");
        }
    });
}

#[test]
fn running_the_test_helper_by_hand_points_to_the_tour() {
    let out = Command::new(HELPER).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cargo run --example tour"));
}

#[test]
fn the_fork_warning_counts_only_the_programs_own_threads() {
    deadline(60, || {
        let out = Command::new(HELPER)
            .args(["fork-pool", "fork"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(
            !stderr.contains("warning"),
            "single-threaded program warned: {stderr}"
        );
        let out = Command::new(HELPER)
            .args(["fork-pool-threaded", "fork"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("set_fork_warning(false)"),
            "no warning: {stderr}"
        );
    });
}
