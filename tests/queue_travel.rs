//! A queue is a handle: passed to a child as its argument, sent through a `Connection`, sent
//! through another queue, and carrying handles (a `Connection`) in its messages, under every
//! start method.

mod common;
use common::*;
use multiprocess::{Connection, Pipe, Process, Queue};

fn receive_queue_then_put(c: Connection) {
    let q: Queue<String> = c.recv().unwrap();
    q.put("through a connection".into()).unwrap();
}

#[test]
fn a_queue_travels_through_a_connection() {
    deadline(60, || {
        for m in METHODS {
            let (a, b) = Pipe::new().unwrap();
            let mut p = Process::builder()
                .start_method(m)
                .start(receive_queue_then_put, b)
                .unwrap();
            let q: Queue<String> = Queue::new(0).unwrap();
            a.send(&q).unwrap();
            assert_eq!(q.get().unwrap(), "through a connection", "{m}");
            p.join().unwrap();
        }
    });
}

fn inner_from_outer(outer: Queue<Queue<String>>) {
    let inner = outer.get().unwrap();
    inner.put("through a queue".into()).unwrap();
    // And back: a fresh queue made by the child, sent to the parent.
    let mine: Queue<String> = Queue::new(0).unwrap();
    mine.put("made by the child".into()).unwrap();
    let back: Queue<Queue<String>> = outer.clone();
    // The parent is waiting on `outer` for it.
    back.put(mine).unwrap();
}

#[test]
fn a_queue_travels_through_another_queue() {
    deadline(60, || {
        for m in METHODS {
            let outer: Queue<Queue<String>> = Queue::new(0).unwrap();
            let mut p = Process::builder()
                .start_method(m)
                .start(inner_from_outer, outer.clone())
                .unwrap();
            let inner: Queue<String> = Queue::new(0).unwrap();
            outer.put(inner.clone()).unwrap();
            assert_eq!(inner.get().unwrap(), "through a queue", "{m}");
            let theirs = outer.get().unwrap();
            assert_eq!(theirs.get().unwrap(), "made by the child", "{m}");
            p.join().unwrap();
        }
    });
}

fn answer_on_connection(q: Queue<(u32, Connection)>) {
    for _ in 0..2 {
        let (n, c) = q.get().unwrap();
        c.send(&(n * 10)).unwrap();
    }
}

#[test]
fn messages_carry_handles() {
    deadline(60, || {
        for m in METHODS {
            // A small ring so that the second message streams in chunks.
            let q: Queue<(u32, Connection)> = Queue::with_capacity(0, 4096).unwrap();
            let mut p = Process::builder()
                .start_method(m)
                .start(answer_on_connection, q.clone())
                .unwrap();
            let (a1, b1) = Pipe::new().unwrap();
            let (a2, b2) = Pipe::new().unwrap();
            q.put((1, b1)).unwrap();
            q.put((2, b2)).unwrap();
            assert_eq!(a1.recv::<u32>().unwrap(), 10, "{m}");
            assert_eq!(a2.recv::<u32>().unwrap(), 20, "{m}");
            p.join().unwrap();
        }
    });
}

fn put_big(q: Queue<(Vec<u8>, Connection)>) {
    let (a, b) = Pipe::new().unwrap();
    q.put((vec![3u8; 50_000], b)).unwrap();
    a.send(&"over the handle").unwrap();
}

#[test]
fn a_streamed_message_carries_handles_too() {
    deadline(60, || {
        for m in METHODS {
            let q: Queue<(Vec<u8>, Connection)> = Queue::with_capacity(0, 4096).unwrap();
            let mut p = Process::builder()
                .start_method(m)
                .start(put_big, q.clone())
                .unwrap();
            let (bytes, c) = q.get().unwrap();
            assert!(
                bytes.len() == 50_000 && bytes.iter().all(|b| *b == 3),
                "{m}"
            );
            assert_eq!(c.recv::<String>().unwrap(), "over the handle");
            p.join().unwrap();
        }
    });
}
