//! A program for the integration tests that need a parent process of their own (to kill it, to
//! watch it exit, or to run without the crate's constructor). Not part of the library.
//!
//! Usage: `mp-test-helper <role> <start method>`; it prints what the test needs on stdout.

use multiprocess::{Process, StartMethod};
use std::io::Write;
use std::time::Duration;

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

fn panic_now(_: ()) {
    panic!("on purpose");
}

fn write_file_after((ms, path): (u64, String)) {
    std::thread::sleep(Duration::from_millis(ms));
    std::fs::write(path, b"done").unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--multiprocess-child") {
        // A re-executed child whose constructor was disabled and which never called init():
        // this is the program's own main running again. Show that it cannot start processes,
        // then behave like a long-running program.
        let mut p = Process::new(sleep_ms, 1);
        let refused = p.start().is_err();
        println!("undiverted-child refused={refused}");
        std::thread::sleep(Duration::from_secs(30));
        return;
    }
    let role = args.get(1).cloned().unwrap_or_default();
    if role != "no-init-spawn" {
        multiprocess::init();
    }
    let method: StartMethod = args
        .get(2)
        .map_or(Ok(StartMethod::Fork), |m| m.parse())
        .unwrap();
    let out = &mut std::io::stdout();
    match role.as_str() {
        // Start a daemon child, print its pid, then wait to be killed.
        "daemon-then-wait" => {
            let p = Process::builder()
                .start_method(method)
                .daemon(true)
                .start(sleep_ms, 60_000)
                .unwrap();
            writeln!(out, "{}", p.pid().unwrap()).unwrap();
            out.flush().unwrap();
            std::thread::sleep(Duration::from_secs(60));
        }
        // A single-threaded program's Fork pool: no warning about threads (the pool's own
        // thread forks the workers). With "threaded", a thread of the program's own runs too.
        "fork-pool" | "fork-pool-threaded" => {
            let _t = (role == "fork-pool-threaded")
                .then(|| std::thread::spawn(|| std::thread::sleep(Duration::from_secs(3))));
            let pool = multiprocess::Pool::builder()
                .processes(2)
                .start_method(StartMethod::Fork)
                .build()
                .unwrap();
            pool.map(sleep_ms, vec![1, 1]).unwrap();
            let mut p = Process::builder()
                .start_method(StartMethod::Fork)
                .start(sleep_ms, 1)
                .unwrap();
            p.join().unwrap();
        }
        // Start a child named "cruncher" that panics, and join it: its panic message goes
        // to this process's stderr.
        "panicking-child" => {
            let mut p = Process::builder()
                .start_method(method)
                .name("cruncher")
                .start(panic_now, ())
                .unwrap();
            let _ = p.join();
        }
        // Start a daemon child from a thread that then exits, print its pid, wait to be
        // killed: the child must outlive the thread and die with this process.
        "daemon-from-thread-then-wait" => {
            let pid = std::thread::spawn(move || {
                let p = Process::builder()
                    .start_method(method)
                    .daemon(true)
                    .start(sleep_ms, 60_000)
                    .unwrap();
                let pid = p.pid().unwrap();
                std::mem::forget(p);
                pid
            })
            .join()
            .unwrap();
            std::thread::sleep(Duration::from_millis(300));
            writeln!(out, "{pid}").unwrap();
            out.flush().unwrap();
            std::thread::sleep(Duration::from_secs(60));
        }
        // Start a non-daemon child that writes a file after a while, and return from main at
        // once: the exit handler must join it.
        "exit-joins" => {
            let path = args[3].clone();
            let p = Process::builder()
                .start_method(method)
                .start(write_file_after, (300, path))
                .unwrap();
            writeln!(out, "{}", p.pid().unwrap()).unwrap();
            std::mem::forget(p);
        }
        // Start a daemon child and return from main: the exit handler terminates it.
        "exit-terminates-daemon" => {
            let p = Process::builder()
                .start_method(method)
                .daemon(true)
                .start(sleep_ms, 60_000)
                .unwrap();
            writeln!(out, "{}", p.pid().unwrap()).unwrap();
            std::mem::forget(p);
        }
        // Spawn with the constructor disabled in the child (the variable is inherited).
        "undiverted-spawn" => {
            std::env::set_var("MULTIPROCESS_NO_CONSTRUCTOR", "1");
            std::env::set_var("MULTIPROCESS_HANDSHAKE_TIMEOUT_MS", "1500");
            let mut p = Process::builder().start_method(method).target(sleep_ms, 1);
            match p.start() {
                Ok(()) => writeln!(out, "started").unwrap(),
                Err(e) => writeln!(out, "error init_missing={} {e}", e.is_init_missing()).unwrap(),
            }
            writeln!(out, "children={}", multiprocess::active_children().len()).unwrap();
        }
        // The child runs "another build": it must refuse with a clear error.
        "mismatched-build" => {
            // Fix this process's own build id first, then make children compute another one.
            let mut warm = Process::builder()
                .start_method(StartMethod::Spawn)
                .start(sleep_ms, 1)
                .unwrap();
            warm.join().unwrap();
            std::env::set_var("MULTIPROCESS_BUILD_ID_SALT", "another build");
            let mut p = Process::builder().start_method(method).target(sleep_ms, 1);
            match p.start() {
                Ok(()) => writeln!(out, "started").unwrap(),
                Err(e) => writeln!(out, "error {e}").unwrap(),
            }
        }
        // Neither constructor nor init(): spawn must refuse up front.
        "no-init-spawn" => {
            let mut p = Process::builder().start_method(method).target(sleep_ms, 1);
            match p.start() {
                Ok(()) => writeln!(out, "started").unwrap(),
                Err(e) => writeln!(out, "error init_missing={} {e}", e.is_init_missing()).unwrap(),
            }
        }
        "" => {
            eprintln!(
                "mp-test-helper is a helper of multiprocess's integration tests, not a tool. \
                 The tour of the crate: cargo run --example tour"
            );
            std::process::exit(2);
        }
        other => panic!("unknown role {other:?}"),
    }
}
