//! `Pool::map_pod`: plain data through the pool with no encoding, under every start method;
//! values of every shape (wider, narrower, zero-sized, structs), panics and dead workers at
//! the right item, batches written straight into the workers' shared memory and the ones
//! that fall back to the buffer, and the awaitable form.

mod common;
use bytemuck::{Pod, Zeroable};
use common::*;

fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

fn widen(x: u8) -> u64 {
    u64::from(x) << 40
}

fn narrow(x: u64) -> u8 {
    (x % 251) as u8
}

fn unit_to_index(_: ()) -> u32 {
    7
}

fn to_unit(_: u32) {}

#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
struct Particle {
    pos: [f32; 3],
    mass: f32,
}

fn step(p: Particle) -> Particle {
    Particle {
        pos: [p.pos[0] + 1.0, p.pos[1] * 2.0, -p.pos[2]],
        mass: p.mass,
    }
}

/// Panics at a zero with a message longer than the space of a unit's values.
fn long_panic(x: u8) -> u8 {
    if x == 0 {
        panic!("{}", "x".repeat(100_000));
    }
    x
}

fn item(k: u64) -> u64 {
    if k == 77_777 {
        panic!("item 77777 refuses");
    }
    k + 1
}

fn abort_at(k: u64) -> u64 {
    if k == 31_000 {
        std::process::abort();
    }
    k * 3
}

#[test]
fn values_of_every_shape_come_back_in_order_under_every_start_method() {
    deadline(120, || {
        for m in METHODS {
            let p = pool(m, 2);
            let xs: Vec<u64> = (0..300_000).collect();
            let ys = p.map_pod(square, xs.clone()).unwrap();
            assert_eq!(ys.len(), xs.len(), "{m}");
            assert!(ys.iter().zip(&xs).all(|(y, x)| *y == square(*x)), "{m}");

            let bytes: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
            let wide: Vec<u64> = p.map_pod(widen, bytes.as_slice()).unwrap();
            assert!(wide.iter().zip(&bytes).all(|(w, b)| *w == widen(*b)), "{m}");
            let back: Vec<u8> = p.map_pod(narrow, wide.clone()).unwrap();
            assert!(back.iter().zip(&wide).all(|(n, w)| *n == narrow(*w)), "{m}");

            let units: Vec<u32> = p.map_pod(unit_to_index, vec![(); 10_000]).unwrap();
            assert_eq!(units, vec![7; 10_000], "{m}");
            let nothing: Vec<()> = p.map_pod(to_unit, vec![1u32; 1000]).unwrap();
            assert_eq!(nothing.len(), 1000, "{m}");

            let ps: Vec<Particle> = (0..50_000)
                .map(|i| Particle {
                    pos: [i as f32, 1.0, 2.0],
                    mass: 0.5,
                })
                .collect();
            let moved = p.map_pod(step, ps.clone()).unwrap();
            assert_eq!(moved.len(), ps.len(), "{m}");
            assert!(moved.iter().zip(&ps).all(|(a, b)| *a == step(*b)), "{m}");

            assert!(p.map_pod(square, Vec::new()).unwrap().is_empty(), "{m}");
        }
    });
}

#[test]
fn every_chunking_gives_the_same_values() {
    deadline(60, || {
        let p = pool(multiprocess::StartMethod::Fork, 2);
        let xs: Vec<u64> = (0..20_000).collect();
        let want: Vec<u64> = xs.iter().map(|x| square(*x)).collect();
        // One item per unit (small batches through the socket), a few hundred (batches of
        // many units written straight into the outbox), one unit for everything.
        for chunk in [1, 7, 300, 5_000, 20_000, 1_000_000] {
            assert_eq!(
                p.map_pod_chunked(square, xs.clone(), chunk).unwrap(),
                want,
                "chunksize {chunk}"
            );
        }
        let e = p.map_pod_chunked(square, xs, 0).unwrap_err();
        assert!(e.is_misuse(), "{e}");
    });
}

#[test]
fn a_panic_is_the_error_of_its_item_and_the_pool_goes_on() {
    deadline(120, || {
        for m in METHODS {
            let p = pool(m, 2);
            let before = p.pids();
            let xs: Vec<u64> = (0..200_000).collect();
            let e = p.map_pod(item, xs.clone()).unwrap_err();
            assert!(e.is_panic(), "{m}: {e}");
            assert_eq!(e.item(), Some(77_777), "{m}");
            assert_eq!(e.panic_message(), Some("item 77777 refuses"), "{m}");
            assert_eq!(p.pids(), before, "{m}: no worker was replaced");
            let ok: Vec<u64> = p.map_pod(item, (0..77_777).collect::<Vec<u64>>()).unwrap();
            assert_eq!(ok.last(), Some(&77_777), "{m}");
        }
    });
}

#[test]
fn a_failure_message_too_long_for_its_place_in_shared_memory_is_kept_whole() {
    deadline(60, || {
        let p = pool(multiprocess::StartMethod::Fork, 2);
        // Units of 65,536 one-byte items: each batch goes straight into the outbox, with
        // 65,548 bytes for each unit's values; the panic's 100,000 bytes of message do not
        // fit there and go on in the buffer: in the middle of the input, then in its last
        // unit.
        const UNIT: usize = 65_536;
        let mut xs: Vec<u8> = vec![1; 4 * UNIT];
        for at in [UNIT + 10, 4 * UNIT - 1] {
            xs[at] = 0;
            let e = p.map_pod_chunked(long_panic, xs.clone(), UNIT).unwrap_err();
            assert_eq!(e.item(), Some(at), "{e}");
            assert_eq!(e.panic_message().map(str::len), Some(100_000));
            xs[at] = 1;
        }
        assert_eq!(
            p.map_pod_chunked(long_panic, xs, UNIT).unwrap().len(),
            4 * UNIT
        );
    });
}

#[test]
fn a_worker_that_dies_fails_its_item_and_is_replaced() {
    deadline(120, || {
        for m in METHODS {
            let p = pool(m, 2);
            let xs: Vec<u64> = (0..100_000).collect();
            let e = p.map_pod(abort_at, xs.clone()).unwrap_err();
            assert!(e.is_worker_lost(), "{m}: {e}");
            assert_eq!(e.signal(), Some(6), "{m}: {e}");
            // A dead worker fails the unit it was running, which holds item 31,000 (the
            // default chunks here are 12,500 items).
            assert_eq!(e.item(), Some(25_000), "{m}: {e}");
            assert!(e.to_string().contains("items 25000..37500"), "{m}: {e}");
            let ys = p.map_pod(square, xs.clone()).unwrap();
            assert_eq!(ys[99_999], square(99_999), "{m}");
        }
    });
}

#[test]
fn the_async_form_can_be_awaited_and_dropped() {
    deadline(60, || {
        let p = pool(multiprocess::StartMethod::Fork, 2);
        let xs: Vec<u64> = (0..100_000).collect();
        let r = p.map_pod_async(square, xs.clone());
        let ys = multiprocess::__block_on(r).unwrap();
        assert_eq!(ys[12_345], square(12_345));
        // Dropped before its values come: the pool and the next map are unaffected.
        drop(p.map_pod_async(square, xs.clone()));
        assert_eq!(p.map_pod(square, xs).unwrap()[99_999], square(99_999));
    });
}

fn plus(x: u64) -> u64 {
    x + 1
}

#[test]
fn maps_from_several_threads_mixed_with_serde_tasks_keep_their_values() {
    deadline(120, || {
        let p = std::sync::Arc::new(pool(multiprocess::StartMethod::Fork, 2));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let p = std::sync::Arc::clone(&p);
                std::thread::spawn(move || {
                    for round in 0..5u64 {
                        let base = (t * 10 + round) << 32;
                        let xs: Vec<u64> = (base..base + 50_000).collect();
                        // Small chunks, so that batches mix plain-data units of several maps
                        // with the serde tasks of the other threads.
                        let ys = p.map_pod_chunked(plus, xs.clone(), 997).unwrap();
                        assert!(ys.iter().zip(&xs).all(|(y, x)| *y == x + 1), "thread {t}");
                        let rs: Vec<_> = (0..200).map(|i| p.apply_async(square, i)).collect();
                        for (i, mut r) in rs.into_iter().enumerate() {
                            assert_eq!(r.get().unwrap(), square(i as u64));
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    });
}
