//! Event across processes under every start method.

mod common;
use common::*;
use multiprocess::{AtomicValue, Event, Process};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

fn waiter((e, waiting): (Event, AtomicValue<AtomicU32>)) -> bool {
    waiting.fetch_add(1, Ordering::SeqCst);
    e.wait_timeout(Duration::from_secs(30))
}

/// `n` processes started with `m`, each waiting on `e`; returns once all are waiting.
fn start_waiters(m: StartMethod, e: &Event, n: u32) -> Vec<Process<bool>> {
    let waiting = AtomicValue::new(AtomicU32::new(0)).unwrap();
    let ps = (0..n)
        .map(|_| {
            Process::builder()
                .start_method(m)
                .start(waiter, (e.clone(), waiting.clone()))
                .unwrap()
        })
        .collect();
    assert!(
        eventually(30, || waiting.load(Ordering::SeqCst) == n),
        "{m}"
    );
    ps
}

#[test]
fn set_wakes_every_waiter() {
    deadline(120, || {
        for m in METHODS {
            let e = Event::new().unwrap();
            let mut ps = start_waiters(m, &e, 4);
            assert!(!e.is_set());
            e.set();
            for p in &mut ps {
                assert!(p.join_result().unwrap(), "{m}");
            }
        }
    });
}

fn ping_pong((ping, pong, n): (Event, Event, u32)) {
    for _ in 0..n {
        ping.wait();
        ping.clear();
        pong.set();
    }
}

#[test]
fn events_ping_pong_between_processes() {
    deadline(60, || {
        for m in METHODS {
            let (ping, pong) = (Event::new().unwrap(), Event::new().unwrap());
            let mut p = Process::builder()
                .start_method(m)
                .start(ping_pong, (ping.clone(), pong.clone(), 200))
                .unwrap();
            for _ in 0..200 {
                ping.set();
                pong.wait();
                pong.clear();
            }
            p.join_result().unwrap();
        }
    });
}

#[test]
fn wait_timeout_and_clear() {
    deadline(30, || {
        let e = Event::new().unwrap();
        let t = Instant::now();
        assert!(!e.wait_timeout(Duration::from_millis(50)));
        assert!(t.elapsed() >= Duration::from_millis(50));
        e.set();
        assert!(e.wait_timeout(Duration::from_millis(50)));
        e.clear();
        assert!(!e.is_set());
    });
}

/// A `set` undone at once by `clear` (a pulse) still wakes every process waiting at that
/// moment, and their `wait_timeout` says the event was set. Waiters used to sleep on until
/// their timeout (or forever in `wait`).
#[test]
fn a_pulse_wakes_every_waiter() {
    deadline(120, || {
        for m in METHODS {
            let e = Event::new().unwrap();
            let mut ps = start_waiters(m, &e, 3);
            // Let them get past their spin into the futex sleep.
            std::thread::sleep(Duration::from_millis(100));
            let pulsed = Instant::now();
            e.set();
            e.clear();
            for p in &mut ps {
                assert!(p.join_result().unwrap(), "{m}: the waiter saw the pulse");
            }
            assert!(
                pulsed.elapsed() < Duration::from_secs(10),
                "{m}: waiters slept {:?} after the pulse",
                pulsed.elapsed()
            );
            assert!(!e.is_set(), "{m}");
        }
    });
}
