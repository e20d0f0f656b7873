//! Condition across processes under every start method: notify and notify_all with
//! predicates, timeouts, a condition on a shared Lock, and a killed holder of its lock.

mod common;
use common::*;
use multiprocess::sync::TryLockError;
use multiprocess::{Condition, Event, Lock, OwnerDied, Process, RawValue};
use std::time::Duration;

/// Waits until `value` reaches `want`, then adds one and notifies everyone.
fn step((c, value, want): (Condition, RawValue<u32>, u32)) {
    let mut g = c.lock().unwrap();
    g.wait_while(|| value.get() != want).unwrap();
    value.set(want + 1);
    c.notify_all();
}

#[test]
fn notify_all_with_predicates_orders_processes() {
    deadline(120, || {
        for m in METHODS {
            let c = Condition::new().unwrap();
            let value = RawValue::new(0u32).unwrap();
            // Started in reverse order: each waits for its turn.
            let mut ps: Vec<_> = (1..=4)
                .rev()
                .map(|want| {
                    Process::builder()
                        .start_method(m)
                        .start(step, (c.clone(), value.clone(), want))
                        .unwrap()
                })
                .collect();
            {
                let _g = c.lock().unwrap();
                value.set(1);
                c.notify_all();
            }
            for p in &mut ps {
                p.join_result().unwrap();
            }
            assert_eq!(value.get(), 5, "{m}");
        }
    });
}

/// Consumes `n` items, one per notify.
fn consume((c, items, n): (Condition, RawValue<u32>, u32)) -> u32 {
    let mut got = 0;
    while got < n {
        let mut g = c.lock().unwrap();
        g.wait_while(|| items.get() == 0).unwrap();
        items.set(items.get() - 1);
        got += 1;
    }
    got
}

#[test]
fn notify_one_at_a_time_feeds_consumers() {
    deadline(120, || {
        for m in METHODS {
            let c = Condition::new().unwrap();
            let items = RawValue::new(0u32).unwrap();
            let mut ps: Vec<_> = (0..2)
                .map(|_| {
                    Process::builder()
                        .start_method(m)
                        .start(consume, (c.clone(), items.clone(), 50))
                        .unwrap()
                })
                .collect();
            for _ in 0..100 {
                let _g = c.lock().unwrap();
                items.set(items.get() + 1);
                c.notify();
            }
            let total: u32 = ps.iter_mut().map(|p| p.join_result().unwrap()).sum();
            assert_eq!(total, 100, "{m}");
            assert_eq!(items.get(), 0);
        }
    });
}

#[test]
fn wait_timeout_and_a_condition_on_a_shared_lock() {
    deadline(30, || {
        let lock = Lock::new().unwrap();
        let c = Condition::with_lock(lock.clone()).unwrap();
        let mut g = c.lock().unwrap();
        assert!(lock.is_locked());
        assert!(matches!(lock.try_lock(), Err(TryLockError::WouldBlock)));
        assert!(g
            .wait_timeout(Duration::from_millis(30))
            .unwrap()
            .timed_out());
        let r = g
            .wait_timeout_while(Duration::from_millis(30), || true)
            .unwrap();
        assert!(r.timed_out());
        drop(g);
        assert!(!lock.is_locked());
    });
}

fn hold_condition_forever((c, held): (Condition, Event)) {
    let _g = c.lock().unwrap_or_else(OwnerDied::into_inner);
    held.set();
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

#[test]
fn a_killed_holder_of_the_condition_lock_is_reported() {
    deadline(60, || {
        for m in METHODS {
            let c = Condition::new().unwrap();
            let held = Event::new().unwrap();
            let mut p = Process::builder()
                .start_method(m)
                .start(hold_condition_forever, (c.clone(), held.clone()))
                .unwrap();
            assert!(held.wait_timeout(Duration::from_secs(20)));
            p.kill().unwrap();
            let err = c.lock().unwrap_err();
            assert_eq!(err.previous_owner(), p.pid().unwrap(), "{m}");
            p.join().unwrap();
        }
    });
}
