//! The cluster pool under a real `mpirun -n 3 --oversubscribe` (rank 0 and two worker ranks),
//! every step bounded in time. Runs with `--features mpi`; without `mpirun` on the machine it
//! says so and passes.
#![cfg(feature = "mpi")]

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const HELPER: &str = env!("CARGO_BIN_EXE_mp-mpi-helper");
const OTHER: &str = env!("CARGO_BIN_EXE_mp-mpi-other");

fn have_mpirun() -> bool {
    let ok = Command::new("mpirun")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("mpirun not found: the MPI tests are skipped (install with .ci/install-mpi)");
    }
    ok
}

fn mpirun(scenario: &str) -> std::process::Child {
    mpirun_with(&["-n", "3", "--oversubscribe", HELPER, scenario])
}

/// `mpirun` with these arguments, killed after 60 s at most.
fn mpirun_with(args: &[&str]) -> std::process::Child {
    Command::new("timeout")
        .args(["--kill-after=5", "60", "mpirun"])
        .args(args)
        // As root in a container, on loopback only (the facts of the issue).
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_btl_tcp_if_include", "lo")
        .env("OMPI_MCA_oob_tcp_if_include", "lo")
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mpirun")
}

fn run(scenario: &str) -> (Output, String) {
    output(mpirun(scenario))
}

fn output(child: std::process::Child) -> (Output, String) {
    let out = child.wait_with_output().expect("mpirun");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

#[test]
fn every_verb_on_worker_ranks_and_a_clean_exit() {
    if !have_mpirun() {
        return;
    }
    let (out, text) = run("verbs");
    assert!(out.status.success(), "{text}");
    for line in [
        "processes 2",
        "map ok 332833500",
        "apply ok",
        "starmap ok",
        "async ok",
        "imap ok",
        "map_pod ok",
        "ran on 2 worker ranks",
        "verbs done",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
}

#[test]
fn a_panic_in_a_task_is_that_tasks_error() {
    if !have_mpirun() {
        return;
    }
    let (out, text) = run("panic");
    assert!(out.status.success(), "{text}");
    assert!(text.contains("panic -> item 3: task panicked"), "{text}");
    assert!(text.contains("three is not allowed"), "{text}");
    assert!(text.contains("pool goes on"), "{text}");
}

#[test]
fn a_failing_initializer_is_a_pool_error_naming_the_rank() {
    if !have_mpirun() {
        return;
    }
    let (out, text) = run("init-fails");
    assert!(out.status.success(), "{text}");
    assert!(text.contains("initializer ->"), "{text}");
    assert!(text.contains("the initializer refuses"), "{text}");
    assert!(text.contains("on rank "), "{text}");
}

#[test]
fn what_cannot_cross_hosts_is_refused() {
    if !have_mpirun() {
        return;
    }
    let (out, text) = run("handle");
    assert!(out.status.success(), "{text}");
    assert!(text.contains("handle -> "), "{text}");
    assert!(text.contains("handle result -> "), "{text}");
    assert!(
        text.contains("a task result holds a local handle"),
        "{text}"
    );
    let (out, text) = run("maxtasks");
    assert!(out.status.success(), "{text}");
    assert!(text.contains("maxtasksperchild is not available"), "{text}");
}

#[test]
fn a_killed_worker_rank_ends_the_job_naming_the_rank() {
    if !have_mpirun() {
        return;
    }
    let mut child = mpirun("slow");
    // The helper prints the worker pids first.
    let mut stdout = child.stdout.take().expect("stdout");
    let mut seen = String::new();
    let start = Instant::now();
    let pid = loop {
        let mut buf = [0u8; 256];
        let n = std::io::Read::read(&mut stdout, &mut buf).unwrap_or(0);
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        if let Some(p) = seen
            .split("pids [")
            .nth(1)
            .and_then(|r| r.split([',', ']']).next())
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            break p;
        }
        assert!(n > 0 && start.elapsed() < Duration::from_secs(30), "{seen}");
    };
    // SAFETY: a plain kill(2) of a process this test started (through mpirun).
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let killed = Instant::now();
    let out = child.wait_with_output().expect("mpirun");
    let took = killed.elapsed();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        took < Duration::from_secs(10),
        "the job took {took:?} to end"
    );
    assert!(
        text.contains("rank 1") && text.contains("signal 9"),
        "{text}"
    );
}

#[test]
fn a_rank_running_another_build_is_named() {
    if !have_mpirun() {
        return;
    }
    let (out, text) = output(mpirun_with(&[
        "--oversubscribe",
        "-n",
        "1",
        HELPER,
        "mismatch",
        ":",
        "-n",
        "2",
        OTHER,
    ]));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("mismatch -> "), "{text}");
    assert!(text.contains("rank 1 on host"), "{text}");
    assert!(text.contains("rank 2 on host"), "{text}");
    assert!(text.contains("another build"), "{text}");
    assert!(
        !text.contains("another build's main"),
        "a worker rank ran main:\n{text}"
    );
}

#[test]
fn a_panic_in_main_ends_the_job_instead_of_hanging_it() {
    if !have_mpirun() {
        return;
    }
    let start = Instant::now();
    let (out, text) = run("main-panics");
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("outside any task"), "{text}");
    assert!(start.elapsed() < Duration::from_secs(30), "{text}");
}

/// A second "host" for the two-host test: a network namespace with its own host name, joined
/// to this one by a veth pair, and an rsh agent through which `mpirun` starts its daemon
/// there. Removed when dropped.
struct SecondHost {
    netns: String,
    veth: String,
    agent: std::path::PathBuf,
}

impl SecondHost {
    fn new() -> Result<SecondHost, String> {
        let id = std::process::id() % 100_000;
        let host = SecondHost {
            netns: format!("mph{id}"),
            veth: format!("mpv{id}"),
            agent: std::env::temp_dir().join(format!("mp-rsh-agent-{id}.sh")),
        };
        let peer = format!("{}p", host.veth);
        let ip = |args: &[&str]| -> Result<(), String> {
            let out = Command::new("ip")
                .args(args)
                .output()
                .map_err(|e| format!("ip: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "ip {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        };
        ip(&["netns", "add", &host.netns])?;
        ip(&[
            "link", "add", &host.veth, "type", "veth", "peer", "name", &peer,
        ])?;
        ip(&["link", "set", &peer, "netns", &host.netns])?;
        ip(&["addr", "add", "10.77.0.1/24", "dev", &host.veth])?;
        ip(&["link", "set", &host.veth, "up"])?;
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &host.netns, "ip"];
            all.extend_from_slice(args);
            ip(&all)
        };
        inside(&["addr", "add", "10.77.0.2/24", "dev", &peer])?;
        inside(&["link", "set", &peer, "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        // ssh's interface: the host, then the command line as one string.
        let script = format!(
            "#!/bin/sh\nshift\nexec ip netns exec {} unshare --uts sh -c \"hostname {} && exec $*\"\n",
            host.netns, host.netns
        );
        std::fs::write(&host.agent, script).map_err(|e| e.to_string())?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&host.agent, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
        Ok(host)
    }
}

impl Drop for SecondHost {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
        let _ = std::fs::remove_file(&self.agent);
    }
}

#[test]
fn two_hosts_over_tcp() {
    if !have_mpirun() {
        return;
    }
    let host = match SecondHost::new() {
        Ok(h) => h,
        Err(why) => {
            eprintln!("cannot make a second host here ({why}): the two-host test is skipped");
            return;
        }
    };
    let agent = host.agent.display().to_string();
    let child = Command::new("timeout")
        .args(["--kill-after=5", "60", "mpirun", "--oversubscribe"])
        .args(["-mca", "plm_rsh_agent", &agent])
        .args(["--host", "10.77.0.1:2,10.77.0.2:1", "-n", "3"])
        .arg(HELPER)
        .arg("hosts")
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        // Between the hosts, TCP over the veth pair only.
        .env("OMPI_MCA_btl_tcp_if_include", "10.77.0.0/24")
        .env("OMPI_MCA_oob_tcp_if_include", "10.77.0.0/24")
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mpirun");
    let (out, text) = output(child);
    drop(host);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("workers in another namespace: true"),
        "{text}"
    );
    assert!(text.contains("map over hosts ok 100000"), "{text}");
}
