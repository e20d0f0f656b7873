//! The seed's Queue operations and Python's semantics, with real processes under every start
//! method: put/get/get_nowait/qsize/empty/full, timeouts, `Full` giving the value back, close,
//! SimpleQueue, JoinableQueue.

mod common;
use common::*;
use multiprocess::{JoinableQueue, Pipe, Process, Queue, SimpleQueue};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Item {
    Text(String),
    Point { x: i32, y: i32, label: String },
}

fn put_items(q: Queue<Item>) {
    for word in ["spam", "eggs", "ham"] {
        q.put(Item::Text(word.to_string())).unwrap();
    }
    q.put(Item::Point {
        x: 1,
        y: -2,
        label: "p".into(),
    })
    .unwrap();
}

#[test]
fn seed_child_puts_parent_drains_while_not_empty() {
    deadline(60, || {
        for m in METHODS {
            let q: Queue<Item> = Queue::new(10).unwrap();
            let mut p = Process::builder()
                .start_method(m)
                .start(put_items, q.clone())
                .unwrap();
            p.join().unwrap();
            assert_eq!(q.qsize(), 4, "{m}");
            assert!(!q.is_full());
            let mut got = Vec::new();
            while !q.is_empty() {
                got.push(q.get().unwrap());
            }
            assert_eq!(got.len(), 4, "{m}");
            assert_eq!(got[0], Item::Text("spam".into()));
            assert!(matches!(got[3], Item::Point { x: 1, y: -2, .. }));
            assert!(q.get_nowait().unwrap_err().is_empty(), "{m}");
        }
    });
}

fn fill(q: Queue<u32>) {
    for i in 0..3 {
        q.put(i).unwrap();
    }
}

#[test]
fn full_and_put_nowait_give_the_value_back() {
    deadline(60, || {
        for m in METHODS {
            let q: Queue<u32> = Queue::new(3).unwrap();
            let mut p = Process::builder()
                .start_method(m)
                .start(fill, q.clone())
                .unwrap();
            p.join().unwrap();
            assert!(q.is_full(), "{m}");
            assert_eq!(q.qsize(), 3);
            let e = q.put_nowait(99).unwrap_err();
            assert!(e.is_full(), "{m}: {e}");
            assert_eq!(e.into_inner(), 99);
            assert_eq!(q.get_nowait().unwrap(), 0);
            assert!(!q.is_full());
            q.put_nowait(3).unwrap();
            assert_eq!(q.drain().collect::<Vec<_>>(), [1, 2, 3]);
        }
    });
}

#[test]
fn empty_is_reported_at_once() {
    deadline(30, || {
        let q: Queue<u8> = Queue::new(0).unwrap();
        let t = Instant::now();
        for _ in 0..100 {
            assert!(q.get_nowait().unwrap_err().is_empty());
        }
        assert!(
            t.elapsed() < Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );
    });
}

#[test]
fn timeouts_take_about_as_long_as_asked() {
    deadline(30, || {
        let q: Queue<u8> = Queue::new(1).unwrap();
        let t = Instant::now();
        assert!(q
            .get_timeout(Duration::from_millis(300))
            .unwrap_err()
            .is_timeout());
        let e = t.elapsed();
        assert!(
            e >= Duration::from_millis(300) && e < Duration::from_millis(900),
            "{e:?}"
        );
        q.put(1).unwrap();
        let t = Instant::now();
        let err = q.put_timeout(2, Duration::from_millis(300)).unwrap_err();
        let e = t.elapsed();
        assert!(err.is_timeout());
        assert_eq!(err.into_inner(), 2);
        assert!(
            e >= Duration::from_millis(300) && e < Duration::from_millis(900),
            "{e:?}"
        );
    });
}

fn put_later((q, ms, v): (Queue<u32>, u64, u32)) {
    std::thread::sleep(Duration::from_millis(ms));
    q.put(v).unwrap();
}

fn get_later((q, ms): (Queue<u32>, u64)) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    q.get().unwrap()
}

#[test]
fn blocked_get_and_put_wake_up_across_processes() {
    deadline(60, || {
        for m in METHODS {
            let q: Queue<u32> = Queue::new(1).unwrap();
            let mut p = Process::builder()
                .start_method(m)
                .start(put_later, (q.clone(), 100, 7))
                .unwrap();
            assert_eq!(q.get_timeout(Duration::from_secs(20)).unwrap(), 7, "{m}");
            p.join().unwrap();

            q.put(1).unwrap();
            let mut p = Process::builder()
                .start_method(m)
                .start(get_later, (q.clone(), 100))
                .unwrap();
            // Full until the child takes the 1.
            q.put_timeout(2, Duration::from_secs(20)).unwrap();
            assert_eq!(p.join_result().unwrap(), 1, "{m}");
            assert_eq!(q.get().unwrap(), 2);
        }
    });
}

fn put_and_close(q: Queue<u32>) {
    for i in 0..3 {
        q.put(i).unwrap();
    }
    q.close();
}

fn get_until_closed(q: Queue<u32>) -> (Vec<u32>, bool) {
    let mut got = Vec::new();
    loop {
        match q.get() {
            Ok(v) => got.push(v),
            Err(e) => return (got, e.is_closed()),
        }
    }
}

#[test]
fn close_fails_puts_and_drains_gets() {
    deadline(60, || {
        for m in METHODS {
            let q: Queue<u32> = Queue::new(0).unwrap();
            let mut p = Process::builder()
                .start_method(m)
                .start(put_and_close, q.clone())
                .unwrap();
            p.join().unwrap();
            assert!(q.is_closed());
            let e = q.put(9).unwrap_err();
            assert!(e.is_closed(), "{m}: {e}");
            assert_eq!(e.into_inner(), 9);
            assert_eq!(q.iter().collect::<Vec<_>>(), [0, 1, 2], "{m}");
            assert!(q.get().unwrap_err().is_closed());
            assert!(q.get_nowait().unwrap_err().is_closed());

            // A consumer blocked in get wakes up on close.
            let q: Queue<u32> = Queue::new(0).unwrap();
            let mut p = Process::builder()
                .start_method(m)
                .start(get_until_closed, q.clone())
                .unwrap();
            q.put(5).unwrap();
            std::thread::sleep(Duration::from_millis(100));
            q.close();
            assert_eq!(p.join_result().unwrap(), (vec![5], true), "{m}");
        }
    });
}

fn worker(q: JoinableQueue<u32>) {
    while let Ok(v) = q.get() {
        std::thread::sleep(Duration::from_millis(20 * v as u64));
        q.task_done().unwrap();
    }
}

#[test]
fn joinable_queue_join_waits_for_task_done() {
    deadline(60, || {
        for m in METHODS {
            let q: JoinableQueue<u32> = JoinableQueue::new(0).unwrap();
            for v in [1, 2, 3, 4] {
                q.put(v).unwrap();
            }
            assert!(
                !q.join_timeout(Duration::from_millis(50)),
                "{m}: nothing is done yet"
            );
            let mut p = Process::builder()
                .start_method(m)
                .start(worker, q.clone())
                .unwrap();
            let t = Instant::now();
            q.join();
            // 20+40+60+80 ms of work happened before join returned.
            assert!(
                t.elapsed() >= Duration::from_millis(190),
                "{m}: {:?}",
                t.elapsed()
            );
            assert!(q.is_empty());
            assert!(q.task_done().is_err(), "{m}: more task_done than puts");
            q.close();
            p.join().unwrap();
        }
    });
}

fn simple_child(q: SimpleQueue<String>) {
    let s = q.get().unwrap();
    q.put(s.to_uppercase()).unwrap();
}

#[test]
fn simple_queue_round_trip() {
    deadline(60, || {
        for m in METHODS {
            let q: SimpleQueue<String> = SimpleQueue::new().unwrap();
            let mut p = Process::builder()
                .start_method(m)
                .start(simple_child, q.clone())
                .unwrap();
            q.put("quiet".into()).unwrap();
            p.join().unwrap();
            assert_eq!(q.get().unwrap(), "QUIET", "{m}");
            assert!(q.is_empty());
        }
    });
}

struct Unserializable;

impl Serialize for Unserializable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("nope"))
    }
}

impl<'de> Deserialize<'de> for Unserializable {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Ok(Unserializable)
    }
}

#[test]
fn serialization_errors_reach_the_caller_and_decode_errors_are_values() {
    deadline(30, || {
        let q: Queue<Unserializable> = Queue::new(0).unwrap();
        let e = q.put(Unserializable).unwrap_err();
        assert!(matches!(e, multiprocess::PutError::Encode(..)), "{e}");
        assert!(e.to_string().contains("serializ"), "{e}");
        assert!(q.is_empty());

        // The same queue seen as another type.
        let q: Queue<String> = Queue::new(0).unwrap();
        let (a, b) = Pipe::new().unwrap();
        a.send(&q).unwrap();
        let as_u64: Queue<(u64, u64, u64)> = b.recv().unwrap();
        q.put("x".into()).unwrap();
        let e = as_u64.get().unwrap_err();
        assert!(matches!(e, multiprocess::GetError::Decode(_)), "{e}");
        assert!(q.is_empty(), "a message that does not decode is consumed");
    });
}
