//! Pool workers and their initializer under faults: a worker killed from outside while its
//! initializer runs is a lost worker (replaced), not an initializer failure; no task runs in
//! a worker whose initializer did not succeed; workers that die before finishing anything,
//! again and again, end the pool with an error instead of a fork storm.

mod common;
use common::*;
use multiprocess::{AtomicValue, Pool, Queue};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

static INITIALIZED: AtomicBool = AtomicBool::new(false);

/// Says which worker runs it, then takes its time.
fn slow_init(q: Queue<i32>) {
    q.put(std::process::id() as i32).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    INITIALIZED.store(true, Ordering::SeqCst);
}

/// Succeeds in the first worker only; every later one panics.
fn first_only(count: AtomicValue<AtomicU64>) {
    if count.fetch_add(1, Ordering::SeqCst) > 0 {
        panic!("only the first initializer succeeds");
    }
    INITIALIZED.store(true, Ordering::SeqCst);
}

/// Crashes its worker (a signal, like an outside kill), counting how many workers tried.
fn crash_init(count: AtomicValue<AtomicU64>) {
    count.fetch_add(1, Ordering::SeqCst);
    std::process::abort();
}

fn was_initialized(_: ()) -> bool {
    INITIALIZED.load(Ordering::SeqCst)
}

#[test]
fn a_worker_killed_in_its_initializer_is_replaced() {
    deadline(120, || {
        for m in METHODS {
            let q: Queue<i32> = Queue::new(0).unwrap();
            let q2 = q.clone();
            let build = std::thread::spawn(move || {
                Pool::builder()
                    .processes(1)
                    .start_method(m)
                    .initializer(slow_init, q2)
                    .build()
            });
            let first = q.get_timeout(Duration::from_secs(30)).unwrap();
            // SAFETY: kill with a pid and a signal number.
            unsafe { libc::kill(first, libc::SIGKILL) };
            let pool = build
                .join()
                .unwrap()
                .unwrap_or_else(|e| panic!("{m}: the kill broke the pool: {e}"));
            assert!(pool.apply(was_initialized, ()).unwrap(), "{m}");
            let second = q.get_timeout(Duration::from_secs(30)).unwrap();
            assert_ne!(first, second, "{m}: a replacement ran the initializer");
        }
    });
}

#[test]
fn no_task_runs_where_the_initializer_failed() {
    deadline(120, || {
        for m in METHODS {
            for _round in 0..3 {
                let count = AtomicValue::new(AtomicU64::new(0)).unwrap();
                // One task per worker: the replacement's initializer panics.
                let pool = Pool::builder()
                    .processes(1)
                    .maxtasksperchild(1)
                    .start_method(m)
                    .initializer(first_only, count)
                    .build()
                    .unwrap();
                let results: Vec<_> = (0..8)
                    .map(|_| pool.apply_async(was_initialized, ()))
                    .collect();
                let mut ran = 0;
                for mut r in results {
                    match r.get_timeout(Duration::from_secs(30)) {
                        Ok(initialized) => {
                            assert!(
                                initialized,
                                "{m}: a task ran in a worker whose initializer failed"
                            );
                            ran += 1;
                        }
                        Err(e) => assert!(!e.is_timeout(), "{m}: {e}"),
                    }
                }
                assert!(ran >= 1, "{m}: the first worker ran nothing");
                pool.terminate();
            }
        }
    });
}

#[test]
fn workers_that_keep_dying_at_start_end_the_pool_not_a_fork_storm() {
    deadline(120, || {
        for m in METHODS {
            let count = AtomicValue::new(AtomicU64::new(0)).unwrap();
            let t = Instant::now();
            let e = Pool::builder()
                .processes(2)
                .start_method(m)
                .initializer(crash_init, count.clone())
                .build()
                .unwrap_err();
            let tries = count.load(Ordering::SeqCst);
            assert!(e.to_string().contains("in a row"), "{m}: {e}");
            assert!(tries <= 10, "{m}: {tries} workers started");
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "{m}: {:?}",
                t.elapsed()
            );
        }
    });
}
