//! Forking while another thread of the parent panics (and so holds std's panic-hook lock)
//! never leaves the child stuck: the crate's child-naming panic hook is installed in the
//! parent before forking, never in the forked child. Its own binary: it sets a slow hook.

mod common;
use common::*;
use multiprocess::{Process, StartMethod};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn nothing(x: u32) -> u32 {
    x
}

#[test]
fn forking_while_another_thread_panics_never_hangs_the_child() {
    deadline(120, || {
        // A hook that keeps std's hook lock a while, and says nothing.
        std::panic::set_hook(Box::new(|_| std::thread::sleep(Duration::from_millis(2))));
        let stop = Arc::new(AtomicBool::new(false));
        let panicker = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = std::panic::catch_unwind(|| panic!("on purpose"));
                }
            })
        };
        for i in 0..60 {
            let mut p = Process::builder()
                .start_method(StartMethod::Fork)
                .start(nothing, i)
                .unwrap();
            assert!(
                p.join_timeout(Duration::from_secs(10)).unwrap(),
                "child {i} is stuck"
            );
            assert_eq!(p.join_result().unwrap(), i);
        }
        stop.store(true, Ordering::Relaxed);
        panicker.join().unwrap();
    });
}
