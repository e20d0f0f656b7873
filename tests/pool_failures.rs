//! A pool that never hangs: panics, workers killed (by their task and from outside), `exit`
//! inside a task, failing initializers, maxtasksperchild, terminate, drop with pending work.

mod common;
use common::*;
use multiprocess::{Connection, Pipe, Pool};
use std::time::{Duration, Instant};

fn square(x: u64) -> u64 {
    x * x
}

fn pid(_: ()) -> i32 {
    std::process::id() as i32
}

/// Item 5 ends its own worker in the way `how` names.
fn fragile((x, how): (u64, String)) -> u64 {
    if x == 5 {
        match how.as_str() {
            "kill" => {
                let me = std::process::id().to_string();
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &me])
                    .status();
                std::thread::sleep(Duration::from_secs(60));
            }
            "abort" => std::process::abort(),
            "exit" => std::process::exit(7),
            _ => panic!("item five refuses"),
        }
    }
    x * 10
}

fn inputs(how: &str) -> Vec<(u64, String)> {
    (0..20).map(|i| (i, how.to_string())).collect()
}

fn no_zombies(pids: &[i32]) {
    for p in pids {
        assert!(
            eventually(10, || !is_unreaped_child(*p)),
            "worker {p} left as a zombie"
        );
    }
}

#[test]
fn a_panicking_task_is_its_error_and_the_worker_goes_on() {
    deadline(60, || {
        for m in METHODS {
            let p = pool(m, 2);
            let before = p.pids();
            let e = p.map_chunked(fragile, inputs("panic"), 3).unwrap_err();
            assert!(e.is_panic(), "{m}: {e}");
            assert_eq!(e.item(), Some(5));
            assert_eq!(e.panic_message(), Some("item five refuses"));
            assert!(e.pid().is_some_and(|pid| before.contains(&pid)), "{e}");
            let all: Vec<_> = p.imap(fragile, inputs("panic")).collect();
            for (i, r) in all.iter().enumerate() {
                match r {
                    Ok(v) => assert_eq!(*v, i as u64 * 10),
                    Err(e) => assert_eq!((i, e.is_panic()), (5, true)),
                }
            }
            assert_eq!(p.pids(), before, "{m}: no worker was replaced");
        }
    });
}

#[test]
fn a_panic_inside_a_chunk_keeps_the_values_around_it() {
    deadline(60, || {
        for m in METHODS {
            let p = pool(m, 2);
            for chunk in [2, 4, 7, 20] {
                let all: Vec<_> = p.imap_chunked(fragile, inputs("panic"), chunk).collect();
                assert_eq!(all.len(), 20, "{m}/{chunk}");
                for (i, r) in all.iter().enumerate() {
                    match r {
                        Ok(v) => assert_eq!(*v, i as u64 * 10, "{m}/{chunk}"),
                        Err(e) => {
                            assert_eq!((i, e.is_panic()), (5, true), "{m}/{chunk}: {e}");
                            assert_eq!(e.panic_message(), Some("item five refuses"));
                        }
                    }
                }
            }
        }
    });
}

fn check_lost(m: StartMethod, how: &str, check: impl Fn(&multiprocess::PoolError)) {
    let p = pool(m, 2);
    let before = p.pids();
    // One task per item, submitted at once: item 5 sits in a batch with others.
    let mut results: Vec<_> = inputs(how)
        .into_iter()
        .map(|x| p.apply_async(fragile, x))
        .collect();
    for (i, r) in results.iter_mut().enumerate() {
        match r.get() {
            Ok(v) => assert_eq!(v, i as u64 * 10, "{m}/{how}"),
            Err(e) => {
                assert_eq!(i, 5, "{m}/{how}: only item 5 fails, not {i}: {e}");
                assert!(e.is_worker_lost(), "{m}/{how}: {e}");
                assert!(e.pid().is_some_and(|pid| before.contains(&pid)), "{e}");
                check(&e);
            }
        }
    }
    // map: the first failing item, by input order, is named.
    let e = p.map_chunked(fragile, inputs(how), 1).unwrap_err();
    assert_eq!(e.item(), Some(5), "{m}/{how}: {e}");
    assert!(e.is_worker_lost());
    // The pool replaced its workers and goes on.
    assert_eq!(p.map(square, 0..10).unwrap()[9], 81, "{m}/{how}");
    let after = p.pids();
    assert_eq!(after.len(), 2);
    assert_ne!(after, before, "{m}/{how}: a replacement was started");
    drop(p);
    no_zombies(&before);
    no_zombies(&after);
}

#[test]
fn a_worker_killed_by_its_task_fails_that_task_only() {
    deadline(120, || {
        for m in METHODS {
            check_lost(m, "kill", |e| assert_eq!(e.signal(), Some(9), "{e}"));
        }
    });
}

#[test]
fn abort_and_exit_inside_a_task() {
    deadline(120, || {
        for m in METHODS {
            check_lost(m, "abort", |e| assert_eq!(e.signal(), Some(6), "{e}"));
            check_lost(m, "exit", |e| {
                assert_eq!(e.exit_code(), Some(7), "{e}");
                assert_eq!(e.signal(), None);
            });
        }
    });
}

/// Tells the parent its pid, then waits to be killed.
fn report_and_hang(conn: Connection) -> u32 {
    conn.send(&(std::process::id() as i32)).unwrap();
    std::thread::sleep(Duration::from_secs(60));
    0
}

#[test]
fn a_worker_killed_from_outside_fails_its_task_and_is_replaced() {
    deadline(120, || {
        for m in METHODS {
            let p = pool(m, 2);
            let (a, b) = Pipe::new().unwrap();
            let mut hung = p.apply_async(report_and_hang, b);
            let others: Vec<_> = (0..10u64).map(|i| p.apply_async(square, i)).collect();
            let victim: i32 = a.recv().unwrap();
            let child = multiprocess::active_children()
                .into_iter()
                .find(|c| c.pid() == victim)
                .expect("the worker is our child");
            child.kill().unwrap();
            let e = hung.get().unwrap_err();
            assert!(e.is_worker_lost(), "{m}: {e}");
            assert_eq!((e.pid(), e.signal()), (Some(victim), Some(9)), "{e}");
            for (i, mut r) in others.into_iter().enumerate() {
                assert_eq!(r.get().unwrap(), (i * i) as u64, "{m}");
            }
            assert!(eventually(10, || !p.pids().contains(&victim) && p.pids().len() == 2));
            assert_eq!(p.apply(square, 3).unwrap(), 9);
            drop(p);
            no_zombies(&[victim]);
        }
    });
}

fn failing_init(conn: Connection) {
    conn.send(&(std::process::id() as i32)).unwrap();
    panic!("cannot initialize");
}

fn exiting_init(conn: Connection) {
    conn.send(&(std::process::id() as i32)).unwrap();
    std::process::exit(3);
}

#[test]
fn a_failing_initializer_fails_the_pool_without_respawning() {
    deadline(120, || {
        for m in METHODS {
            for exit in [false, true] {
                let (a, b) = Pipe::new().unwrap();
                let builder = Pool::builder().processes(3).start_method(m);
                let builder = if exit {
                    builder.initializer(exiting_init, b)
                } else {
                    builder.initializer(failing_init, b)
                };
                let e = builder.build().unwrap_err();
                assert!(e.is_initializer_failure(), "{m}: {e}");
                if !exit {
                    assert_eq!(e.panic_message(), Some("cannot initialize"), "{e}");
                }
                // Every copy of `b` is closed now: count the workers that ran the initializer.
                let mut pids = Vec::new();
                while let Ok(pid) = a.recv::<i32>() {
                    pids.push(pid);
                }
                assert!(
                    !pids.is_empty() && pids.len() <= 3,
                    "{m}: {} workers started",
                    pids.len()
                );
                no_zombies(&pids);
            }
        }
    });
}

/// Fails once `marker` exists: the first workers start, replacements do not.
fn init_unless(marker: String) {
    if std::path::Path::new(&marker).exists() {
        panic!("marker present");
    }
}

fn exit_now(code: i32) -> i32 {
    std::process::exit(code)
}

#[test]
fn a_replacement_whose_initializer_fails_breaks_the_pool() {
    deadline(120, || {
        for m in METHODS {
            let marker = std::env::temp_dir().join(format!(
                "multiprocess-pool-marker-{}-{m}",
                std::process::id()
            ));
            let _ = std::fs::remove_file(&marker);
            let p = Pool::builder()
                .processes(1)
                .start_method(m)
                .initializer(init_unless, marker.to_string_lossy().into_owned())
                .build()
                .unwrap();
            assert_eq!(p.apply(square, 2).unwrap(), 4);
            std::fs::write(&marker, b"x").unwrap();
            let e = p.apply(exit_now, 1).unwrap_err();
            assert_eq!(e.exit_code(), Some(1), "{m}: {e}");
            let e = p.apply(square, 2).unwrap_err();
            assert!(
                e.is_initializer_failure() || e.is_closed(),
                "{m}: the broken pool refuses: {e}"
            );
            assert!(eventually(10, || p.pids().is_empty()), "{m}");
            assert!(p.started_processes() <= 2, "{m}: no respawn loop");
            let _ = std::fs::remove_file(&marker);
        }
    });
}

#[test]
fn maxtasksperchild_replaces_workers_and_loses_nothing() {
    deadline(120, || {
        for m in METHODS {
            let p = Pool::builder()
                .processes(2)
                .start_method(m)
                .maxtasksperchild(2)
                .build()
                .unwrap();
            let mut results: Vec<_> = (0..20).map(|_| p.apply_async(pid, ())).collect();
            let pids: Vec<i32> = results.iter_mut().map(|r| r.get().unwrap()).collect();
            let mut distinct = pids.clone();
            distinct.sort_unstable();
            distinct.dedup();
            assert!(
                distinct.len() >= 10,
                "{m}: {} distinct pids",
                distinct.len()
            );
            for d in &distinct {
                assert!(pids.iter().filter(|p| *p == d).count() <= 2, "{m}");
            }
            let xs: Vec<u64> = (0..100).collect();
            let want: Vec<u64> = xs.iter().map(|x| x * x).collect();
            assert_eq!(p.map_chunked(square, xs, 3).unwrap(), want, "{m}");
            drop(p);
            no_zombies(&distinct);
        }
    });
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[test]
fn terminate_during_a_long_map_is_prompt_and_leaves_nothing() {
    deadline(120, || {
        for m in METHODS {
            let p = pool(m, 2);
            let pids = p.pids();
            let mut r = p.map_async_chunked(sleep_ms, vec![30_000u64; 8], 1);
            let t = Instant::now();
            p.terminate();
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "{m}: {:?}",
                t.elapsed()
            );
            let e = r.get().unwrap_err();
            assert!(e.is_terminated(), "{m}: {e}");
            for pid in &pids {
                assert!(!exists(*pid), "{m}: worker {pid} still exists");
            }
            assert!(p.pids().is_empty());
            assert!(p.apply(square, 1).unwrap_err().is_closed());
        }
    });
}

#[test]
fn dropping_a_pool_finishes_its_pending_work() {
    deadline(120, || {
        for m in METHODS {
            let p = pool(m, 2);
            let pids = p.pids();
            let pending: Vec<_> = (0..20u64).map(|i| p.apply_async(sleep_ms, i)).collect();
            let mapped = p.map_async(square, 0..100);
            drop(p);
            for (i, mut r) in pending.into_iter().enumerate() {
                assert_eq!(r.get().unwrap(), i as u64, "{m}");
            }
            let mut mapped = mapped;
            assert_eq!(mapped.get().unwrap()[99], 99 * 99);
            for pid in &pids {
                assert!(!exists(*pid), "{m}: worker {pid} still exists");
            }
        }
    });
}

/// A value whose `Deserialize` panics when it reads 13 (the worker only serializes it).
#[derive(Debug, PartialEq, serde::Serialize)]
struct Touchy(u64);

impl<'de> serde::Deserialize<'de> for Touchy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let x = u64::deserialize(d)?;
        assert!(x != 13, "thirteen cannot be read back");
        Ok(Touchy(x))
    }
}

fn touchy(x: u64) -> Touchy {
    Touchy(x)
}

/// A result whose decoding panics (on the pool's result handler thread) fails its items with a
/// decoding error naming the panic; the pool goes on. It used to end the handler thread, and
/// every later wait on the pool hung.
#[test]
fn a_result_whose_decoding_panics_fails_its_items_only() {
    deadline(120, || {
        for m in METHODS {
            let p = pool(m, 2);
            let e = p.apply(touchy, 13).unwrap_err();
            assert!(
                e.to_string().contains("thirteen cannot be read back"),
                "{m}: {e}"
            );
            let e = p.map(touchy, 0..20u64).unwrap_err();
            assert!(
                e.to_string().contains("decoding the result panicked"),
                "{m}: {e}"
            );
            let got: Vec<_> = p.imap(touchy, 10..16u64).collect();
            assert_eq!(got.len(), 6, "{m}");
            for (x, r) in (10..16u64).zip(got) {
                match r {
                    Ok(v) => assert_eq!(v, Touchy(x), "{m}"),
                    // The chunk holding 13 fails as a whole.
                    Err(e) => assert!(e.to_string().contains("thirteen"), "{m}: {x}: {e}"),
                }
            }
            assert_eq!(
                p.apply(touchy, 7).unwrap(),
                Touchy(7),
                "{m}: the pool goes on"
            );
            assert_eq!(p.map(square, 0..4u64).unwrap(), vec![0, 1, 4, 9], "{m}");
        }
    });
}

#[test]
fn maxtasksperchild_zero_is_refused_before_any_worker_starts() {
    deadline(30, || {
        for m in METHODS {
            let before = multiprocess::active_children().len();
            let e = multiprocess::Pool::builder()
                .processes(2)
                .maxtasksperchild(0)
                .start_method(m)
                .build()
                .unwrap_err();
            assert!(e.is_misuse(), "{m}: {e}");
            assert!(e.to_string().contains("maxtasksperchild"), "{m}: {e}");
            assert_eq!(multiprocess::active_children().len(), before, "{m}");
        }
    });
}
