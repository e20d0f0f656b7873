//! Many producer and many consumer processes on one queue, under every start method: every
//! message is delivered exactly once and each producer's order is kept, for small messages,
//! messages near the ring's size and messages larger than the ring.

mod common;
use common::*;
use multiprocess::{Process, Queue};

/// (producer id, sequence number, payload)
type Msg = (u32, u32, Vec<u8>);

/// Puts `count` messages whose payload sizes cycle through `sizes` (inclusive).
fn producer((q, id, count, sizes): (Queue<Msg>, u32, u32, (usize, usize))) {
    for i in 0..count {
        let size = sizes.0 + i as usize % (sizes.1 - sizes.0 + 1);
        let payload = vec![(id as u8).wrapping_add(i as u8); size];
        q.put((id, i, payload)).unwrap();
    }
}

/// Takes messages until it gets the stop marker (producer id u32::MAX); returns what it got,
/// checking each payload.
fn consumer(q: Queue<Msg>) -> Vec<(u32, u32)> {
    let mut got = Vec::new();
    loop {
        let (id, i, payload) = q.get().unwrap();
        if id == u32::MAX {
            return got;
        }
        let want = (id as u8).wrapping_add(i as u8);
        assert!(payload.iter().all(|b| *b == want), "corrupted payload");
        got.push((id, i));
    }
}

fn run(method: StartMethod, producers: u32, consumers: u32, count: u32, size: usize, ring: usize) {
    run_sizes(method, producers, consumers, count, (size, size), ring)
}

fn run_sizes(
    method: StartMethod,
    producers: u32,
    consumers: u32,
    count: u32,
    sizes: (usize, usize),
    ring: usize,
) {
    let q: Queue<Msg> = Queue::with_capacity(0, ring).unwrap();
    let mut cons = Vec::new();
    for _ in 0..consumers {
        cons.push(
            Process::builder()
                .start_method(method)
                .start(consumer, q.clone())
                .unwrap(),
        );
    }
    let mut prods = Vec::new();
    for id in 0..producers {
        prods.push(
            Process::builder()
                .start_method(method)
                .start(producer, (q.clone(), id, count, sizes))
                .unwrap(),
        );
    }
    for p in &mut prods {
        p.join_result().unwrap();
    }
    for _ in 0..consumers {
        q.put((u32::MAX, 0, Vec::new())).unwrap();
    }
    let mut all = Vec::new();
    for c in &mut cons {
        let got = c.join_result().unwrap();
        // Per-producer order within one consumer.
        for id in 0..producers {
            let seq: Vec<u32> = got.iter().filter(|m| m.0 == id).map(|m| m.1).collect();
            assert!(
                seq.windows(2).all(|w| w[0] < w[1]),
                "{method}: order broken"
            );
        }
        all.extend(got);
    }
    all.sort();
    let want: Vec<(u32, u32)> = (0..producers)
        .flat_map(|id| (0..count).map(move |i| (id, i)))
        .collect();
    assert_eq!(
        all.len(),
        want.len(),
        "{method}: lost or duplicated messages"
    );
    assert_eq!(all, want, "{method}");
    assert!(q.is_empty());
    assert_eq!(q.dropped(), 0);
}

#[test]
fn small_messages_3x2() {
    deadline(120, || {
        for m in METHODS {
            run(m, 3, 2, 3000, 8, 64 * 1024);
        }
    });
}

#[test]
fn one_producer_one_consumer_keeps_order() {
    deadline(120, || {
        for m in METHODS {
            run(m, 1, 1, 5000, 100, 4096);
        }
    });
}

#[test]
fn messages_around_the_small_message_size() {
    // Messages of about 230 to 290 bytes (the small-message path takes up to 256) through a
    // 4 KiB ring, so that both kinds wrap around its end at every offset.
    deadline(120, || {
        for m in METHODS {
            run_sizes(m, 2, 2, 1500, (220, 280), 4096);
        }
    });
}

#[test]
fn messages_near_and_above_the_ring_size() {
    deadline(180, || {
        for m in METHODS {
            // 4 KiB ring: 900-byte records are whole (< 1/4 ring), 3000 and 20000 stream.
            for size in [900, 3000, 20_000] {
                run(m, 2, 2, 60, size, 4096);
            }
        }
    });
}

#[test]
fn qsize_is_exact_once_quiet() {
    deadline(60, || {
        for m in METHODS {
            let q: Queue<Msg> = Queue::with_capacity(0, 1 << 20).unwrap();
            let mut prods: Vec<_> = (0..3)
                .map(|id| {
                    Process::builder()
                        .start_method(m)
                        .start(producer, (q.clone(), id, 200, (16, 16)))
                        .unwrap()
                })
                .collect();
            for p in &mut prods {
                p.join_result().unwrap();
            }
            assert_eq!(q.qsize(), 600, "{m}");
            for _ in 0..250 {
                q.get().unwrap();
            }
            assert_eq!(q.qsize(), 350, "{m}");
            assert_eq!(q.drain().count(), 350, "{m}");
            assert_eq!(q.qsize(), 0);
        }
    });
}
