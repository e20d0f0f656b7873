//! Barrier across processes under every start method: rounds, timeout, abort and reset, and
//! a party SIGKILLed while waiting.

mod common;
use common::*;
use multiprocess::{Barrier, BarrierError, Process};
use std::time::Duration;

fn rounds((b, n): (Barrier, u32)) -> Vec<u32> {
    (0..n).map(|_| b.wait().unwrap()).collect()
}

#[test]
fn n_processes_meet_round_after_round() {
    deadline(120, || {
        for m in METHODS {
            let b = Barrier::new(4).unwrap();
            let mut ps: Vec<_> = (0..3)
                .map(|_| {
                    Process::builder()
                        .start_method(m)
                        .start(rounds, (b.clone(), 5))
                        .unwrap()
                })
                .collect();
            let mut all = vec![rounds((b.clone(), 5))];
            for p in &mut ps {
                all.push(p.join_result().unwrap());
            }
            for round in 0..5 {
                let mut idx: Vec<u32> = all.iter().map(|r| r[round]).collect();
                idx.sort();
                assert_eq!(idx, [0, 1, 2, 3], "{m}: round {round}");
            }
            assert!(!b.is_broken());
        }
    });
}

fn wait_once(b: Barrier) -> Result<u32, String> {
    b.wait_timeout(Duration::from_secs(30))
        .map_err(|e| format!("{}|{:?}|{}", e.is_timeout(), e.dead_party(), e.is_aborted()))
}

#[test]
fn a_timeout_breaks_the_barrier_for_everyone() {
    deadline(60, || {
        for m in METHODS {
            let b = Barrier::new(3).unwrap();
            let mut p = Process::builder()
                .start_method(m)
                .start(wait_once, b.clone())
                .unwrap();
            assert!(eventually(20, || b.n_waiting() == 1));
            let e = b.wait_timeout(Duration::from_millis(50)).unwrap_err();
            assert!(e.is_timeout(), "{m}: {e}");
            assert!(b.is_broken());
            assert_eq!(
                p.join_result().unwrap(),
                Err("true|None|false".into()),
                "{m}"
            );
            assert!(b.wait().is_err());
            b.reset();
            assert!(!b.is_broken());
        }
    });
}

#[test]
fn abort_and_reset() {
    deadline(60, || {
        for m in METHODS {
            let b = Barrier::new(2).unwrap();
            let mut p = Process::builder()
                .start_method(m)
                .start(wait_once, b.clone())
                .unwrap();
            assert!(eventually(20, || b.n_waiting() == 1));
            b.abort();
            assert_eq!(
                p.join_result().unwrap(),
                Err("false|None|true".into()),
                "{m}"
            );
            b.reset();
            // Whole again: a new round works.
            let mut p = Process::builder()
                .start_method(m)
                .start(wait_once, b.clone())
                .unwrap();
            let mine = b.wait().unwrap();
            assert_eq!(mine + p.join_result().unwrap().unwrap(), 1);
        }
    });
}

fn wait_forever(b: Barrier) {
    let _ = b.wait();
}

#[test]
fn a_party_killed_while_waiting_breaks_the_barrier_and_survivors_are_told() {
    deadline(120, || {
        for m in METHODS {
            let b = Barrier::new(3).unwrap();
            let mut victim = Process::builder()
                .start_method(m)
                .start(wait_forever, b.clone())
                .unwrap();
            assert!(eventually(20, || b.n_waiting() == 1));
            let mut survivor = Process::builder()
                .start_method(m)
                .start(wait_once, b.clone())
                .unwrap();
            assert!(eventually(20, || b.n_waiting() == 2));
            victim.kill().unwrap();
            victim.join().unwrap();
            let dead = victim.pid().unwrap();
            // The last party arrives after the death (or the survivor noticed it first): the
            // round breaks rather than releasing anyone.
            let e: BarrierError = b.wait().unwrap_err();
            assert_eq!(e.dead_party(), Some(dead), "{m}: {e}");
            assert!(e.to_string().contains("died"), "{e}");
            assert_eq!(
                survivor.join_result().unwrap(),
                Err(format!("false|Some({dead})|false")),
                "{m}"
            );
            // Broken until reset.
            assert!(b.wait_timeout(Duration::from_millis(10)).is_err());
            b.reset();
            assert_eq!(b.n_waiting(), 0);
        }
    });
}

fn wait_and_tell(b: Barrier) -> Result<u32, (bool, bool, bool)> {
    b.wait_timeout(Duration::from_secs(30))
        .map_err(|e| (e.is_reset(), e.is_timeout(), e.is_aborted()))
}

/// Regression: `is_reset` was never true, because `reset` cleared the reason before the
/// waiters it released could read it.
#[test]
fn waiters_released_by_reset_are_told_it_was_a_reset() {
    deadline(60, || {
        for m in METHODS {
            let b = Barrier::new(3).unwrap();
            let mut ps: Vec<_> = (0..2)
                .map(|_| {
                    Process::builder()
                        .start_method(m)
                        .start(wait_and_tell, b.clone())
                        .unwrap()
                })
                .collect();
            assert!(eventually(20, || b.n_waiting() == 2), "{m}");
            b.reset();
            for p in &mut ps {
                assert_eq!(p.join_result().unwrap(), Err((true, false, false)), "{m}");
            }
            assert!(!b.is_broken(), "{m}");
            // Whole again: a timeout now says timeout, not reset.
            let e = b.wait_timeout(Duration::from_millis(20)).unwrap_err();
            assert!(e.is_timeout() && !e.is_reset(), "{m}: {e}");
            b.reset();
        }
    });
}
