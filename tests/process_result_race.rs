//! A child's return value reaches `join_result` even while other threads poll every child
//! (`active_children()`, and the clean-up that each `start` does): a poll that takes the value
//! off the status channel stores it before the joining thread can see the channel's end and
//! conclude that the child sent nothing (this lost about one result in a few hundred).

mod common;
use common::*;
use multiprocess::Process;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A value of some 20 KB, so that reading it takes a while.
fn big_value(seed: u32) -> Vec<(u32, u32)> {
    (0..3000).map(|i| (seed, i)).collect()
}

#[test]
fn results_survive_concurrent_polls() {
    deadline(120, || {
        let stop = Arc::new(AtomicBool::new(false));
        let pollers: Vec<_> = (0..2)
            .map(|_| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let _ = multiprocess::active_children();
                    }
                })
            })
            .collect();
        for m in METHODS {
            for round in 0..40u32 {
                let mut children: Vec<_> = (0..3u32)
                    .map(|k| {
                        Process::builder()
                            .start_method(m)
                            .start(big_value, round * 3 + k)
                            .unwrap()
                    })
                    .collect();
                for (k, c) in children.iter_mut().enumerate() {
                    let got = c
                        .join_result()
                        .unwrap_or_else(|e| panic!("{m}, round {round}: {e}"));
                    assert_eq!(got, big_value(round * 3 + k as u32), "{m}");
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        for p in pollers {
            p.join().unwrap();
        }
    });
}
