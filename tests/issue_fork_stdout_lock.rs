//! Regression: a Fork child started while another thread held stdout's lock inherited the lock
//! held by a thread that does not exist in the child, and deadlocked in its exit flush (seen as a
//! `children_start_children` timeout). The crate now holds stdout and stderr across `fork`.

mod common;
use common::*;
use multiprocess::{Process, StartMethod};
use std::sync::mpsc;
use std::time::Duration;

fn prints(n: u32) -> u32 {
    println!("child says {n}");
    eprintln!("child warns {n}");
    n + 1
}

#[test]
fn a_fork_while_another_thread_holds_stdout_does_not_deadlock_the_child() {
    deadline(60, || {
        for round in 0..3 {
            let (held, is_held) = mpsc::channel();
            let holder = std::thread::spawn(move || {
                let _out = std::io::stdout().lock();
                let _err = std::io::stderr().lock();
                held.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(200));
            });
            is_held.recv().unwrap();
            let mut p = Process::builder()
                .start_method(StartMethod::Fork)
                .start(prints, round)
                .unwrap();
            assert_eq!(p.join_result().unwrap(), round + 1);
            holder.join().unwrap();
        }
    });
}
