//! Semaphore and BoundedSemaphore across processes under every start method.

mod common;
use common::*;
use multiprocess::{AtomicValue, BoundedSemaphore, Process, Semaphore};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Enters the semaphore, records the peak number inside, leaves.
fn inside((s, now, peak): (Semaphore, AtomicValue<AtomicU32>, AtomicValue<AtomicU32>)) {
    for _ in 0..50 {
        s.acquire();
        let n = now.fetch_add(1, Ordering::SeqCst) + 1;
        peak.fetch_max(n, Ordering::SeqCst);
        std::thread::sleep(Duration::from_micros(200));
        now.fetch_sub(1, Ordering::SeqCst);
        s.release().unwrap();
    }
}

#[test]
fn a_semaphore_counts_across_processes() {
    deadline(120, || {
        for m in METHODS {
            let s = Semaphore::new(2).unwrap();
            let now = AtomicValue::new(AtomicU32::new(0)).unwrap();
            let peak = AtomicValue::new(AtomicU32::new(0)).unwrap();
            let mut ps: Vec<_> = (0..4)
                .map(|_| {
                    Process::builder()
                        .start_method(m)
                        .start(inside, (s.clone(), now.clone(), peak.clone()))
                        .unwrap()
                })
                .collect();
            for p in &mut ps {
                p.join_result().unwrap();
            }
            assert!(peak.load(Ordering::SeqCst) <= 2, "{m}");
            assert_eq!(s.value(), 2, "{m}");
        }
    });
}

fn acquire_one(s: Semaphore) -> bool {
    s.acquire_timeout(Duration::from_secs(20))
}

#[test]
fn release_wakes_a_waiter_in_another_process() {
    deadline(60, || {
        for m in METHODS {
            let s = Semaphore::new(0).unwrap();
            assert!(!s.try_acquire());
            assert!(!s.acquire_timeout(Duration::from_millis(20)));
            let mut p = Process::builder()
                .start_method(m)
                .start(acquire_one, s.clone())
                .unwrap();
            assert!(!p.join_timeout(Duration::from_millis(100)).unwrap());
            s.release().unwrap();
            assert!(p.join_result().unwrap(), "{m}");
            assert_eq!(s.value(), 0);
        }
    });
}

fn over_release(s: BoundedSemaphore) -> (bool, bool) {
    let first = s.release().is_ok();
    let second = s.release().is_ok();
    (first, second)
}

#[test]
fn a_bounded_semaphore_refuses_over_release() {
    deadline(60, || {
        for m in METHODS {
            let s = BoundedSemaphore::new(2).unwrap();
            assert_eq!(
                s.release().unwrap_err().to_string(),
                "semaphore released too many times"
            );
            s.acquire();
            let mut p = Process::builder()
                .start_method(m)
                .start(over_release, s.clone())
                .unwrap();
            assert_eq!(p.join_result().unwrap(), (true, false), "{m}");
            assert_eq!(s.value(), 2);
        }
    });
}
