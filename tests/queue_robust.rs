//! A process SIGKILLed in the middle of a queue operation does not wedge the others: a producer
//! killed mid-way through a message larger than the ring, a producer killed holding the lock,
//! a consumer killed holding the lock half-way through a message, a consumer killed while
//! waiting. The survivors go on, nothing half-written is delivered, the loss is counted.
//! Windows are hit deterministically: a message larger than the ring blocks its producer
//! mid-message while nobody reads, and test hooks stop a process while it holds a lock.

mod common;
use common::*;
use multiprocess::{Connection, Pipe, Process, Queue};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Serialize, Deserialize, PartialEq)]
enum Msg {
    Big(Vec<u8>),
    Small(u32),
}

const RING: usize = 4096;

/// Sends a signal by name with kill(1) (the test has no libc of its own).
fn signal(pid: u32, name: &str) {
    let ok = std::process::Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{name} {pid}");
}

fn put_big_message(q: Queue<Msg>) {
    q.put(Msg::Big(vec![0xee; 100_000])).unwrap();
}

fn put_smalls((q, n): (Queue<Msg>, u32)) {
    for i in 0..n {
        q.put(Msg::Small(i)).unwrap();
    }
}

fn check_smalls(q: &Queue<Msg>, n: u32, m: StartMethod) {
    for i in 0..n {
        let got = q.get_timeout(Duration::from_secs(20)).unwrap();
        assert!(got == Msg::Small(i), "{m}: expected Small({i})");
    }
}

#[test]
fn producer_killed_mid_large_message() {
    deadline(120, || {
        for m in METHODS {
            let q: Queue<Msg> = Queue::with_capacity(0, RING).unwrap();
            let mut p = Process::builder()
                .start_method(m)
                .start(put_big_message, q.clone())
                .unwrap();
            let pid = p.pid().unwrap() as u32;
            // The 100 KB message streams through a 4 KiB ring that nobody reads: the producer
            // stops mid-message, holding the producer lock, the ring full of its chunks.
            assert!(eventually(20, || q.__lock_owner(false) == Some(pid)
                && q.__ring_used() >= RING / 2));
            p.kill().unwrap();
            let _ = p.join();
            // Another producer carries on (it takes the lock over from the dead one).
            let mut p2 = Process::builder()
                .start_method(m)
                .start(put_smalls, (q.clone(), 50))
                .unwrap();
            // The half message is discarded as a whole; the next messages arrive intact.
            check_smalls(&q, 50, m);
            p2.join().unwrap();
            assert_eq!(q.dropped(), 1, "{m}");
            assert!(q.recoveries() >= 1, "{m}");
            assert!(q.is_empty(), "{m}");
            assert!(!is_unreaped_child(pid as i32));
        }
    });
}

#[test]
fn consumer_reading_when_the_producer_dies_discards_the_partial_message() {
    deadline(120, || {
        for m in METHODS {
            let q: Queue<Msg> = Queue::with_capacity(0, RING).unwrap();
            let mut p = Process::builder()
                .start_method(m)
                .start(put_big_message, q.clone())
                .unwrap();
            let pid = p.pid().unwrap() as u32;
            assert!(eventually(20, || q.__lock_owner(false) == Some(pid)
                && q.__ring_used() >= RING / 2));
            // Stop the producer mid-message, start reading its message here, then kill it.
            signal(pid, "STOP");
            let reader = {
                let q = q.clone();
                std::thread::spawn(move || q.get_timeout(Duration::from_secs(30)))
            };
            // The reader has taken the published chunks and waits for the rest.
            assert!(eventually(20, || q.__ring_used() == 0));
            p.kill().unwrap();
            let _ = p.join();
            // Nothing else comes: the reader must not deliver the half message and must not
            // hang past its deadline once something arrives.
            q.put(Msg::Small(7)).unwrap();
            let got = reader.join().unwrap().unwrap();
            assert!(got == Msg::Small(7), "{m}: the half message was delivered");
            assert_eq!(q.dropped(), 1, "{m}");
        }
    });
}

fn hold_producer_lock((q, c): (Queue<Msg>, Connection)) {
    q.__hold_producer_lock(|| c.send(&()).unwrap())
}

#[test]
fn producer_killed_holding_the_lock() {
    deadline(60, || {
        for m in METHODS {
            let q: Queue<Msg> = Queue::new(0).unwrap();
            let (a, b) = Pipe::new().unwrap();
            let mut p = Process::builder()
                .start_method(m)
                .start(hold_producer_lock, (q.clone(), b))
                .unwrap();
            a.recv::<()>().unwrap();
            assert_eq!(q.__lock_owner(false), Some(p.pid().unwrap() as u32));
            // While the owner lives, a put cannot get in.
            assert!(q
                .put_timeout(Msg::Small(0), Duration::from_millis(250))
                .unwrap_err()
                .is_timeout());
            p.kill().unwrap();
            let _ = p.join();
            q.put(Msg::Small(1)).unwrap();
            assert_eq!(q.get().unwrap(), Msg::Small(1), "{m}");
            assert_eq!(q.dropped(), 0);
            assert_eq!(q.recoveries(), 1, "{m}");
        }
    });
}

fn hold_consumer_lock_mid_message((q, c): (Queue<Msg>, Connection)) {
    q.__hold_consumer_lock_mid_message(|| c.send(&()).unwrap())
}

fn put_big_then_smalls(q: Queue<Msg>) {
    q.put(Msg::Big(vec![0xcd; 30_000])).unwrap();
    for i in 0..20 {
        q.put(Msg::Small(i)).unwrap();
    }
}

#[test]
fn consumer_killed_holding_the_lock_mid_message() {
    deadline(120, || {
        for m in METHODS {
            let q: Queue<Msg> = Queue::with_capacity(0, RING).unwrap();
            let mut producer = Process::builder()
                .start_method(m)
                .start(put_big_then_smalls, q.clone())
                .unwrap();
            let (a, b) = Pipe::new().unwrap();
            let mut consumer = Process::builder()
                .start_method(m)
                .start(hold_consumer_lock_mid_message, (q.clone(), b))
                .unwrap();
            // The consumer has taken the first chunk of the big message and holds the lock.
            a.recv::<()>().unwrap();
            assert_eq!(q.__lock_owner(true), Some(consumer.pid().unwrap() as u32));
            assert!(q
                .get_timeout(Duration::from_millis(250))
                .unwrap_err()
                .is_timeout());
            consumer.kill().unwrap();
            let _ = consumer.join();
            // The rest of the big message is skipped; the small ones follow, in order.
            check_smalls(&q, 20, m);
            producer.join().unwrap();
            assert_eq!(q.dropped(), 1, "{m}");
            assert_eq!(q.qsize(), 0, "{m}");
            assert!(q.recoveries() >= 1);
        }
    });
}

fn block_in_get(q: Queue<Msg>) {
    let _ = q.get();
}

#[test]
fn consumer_killed_while_waiting() {
    deadline(60, || {
        for m in METHODS {
            let q: Queue<Msg> = Queue::new(0).unwrap();
            let mut p = Process::builder()
                .start_method(m)
                .start(block_in_get, q.clone())
                .unwrap();
            std::thread::sleep(Duration::from_millis(100));
            p.kill().unwrap();
            let _ = p.join();
            q.put(Msg::Small(3)).unwrap();
            assert_eq!(q.get().unwrap(), Msg::Small(3), "{m}");
            assert_eq!(q.dropped(), 0);
        }
    });
}
