//! A peer that shares a pipe's shared memory and writes garbage into the words the other end
//! reads (ring positions, record headers): the other end gets an error, never a crash, an
//! access outside the mapping, or a hang past its timeout.
//!
//! Layout (see `connection/fast.rs`): direction `d`'s control words at `512 + 1024 * d` (tail
//! at +0, head at +256), its 64 KiB ring at `4096 + 65536 * d`. End `e` writes direction `e`.

mod common;
use common::*;
use multiprocess::{Connection, ConnectionError, Pipe, Process};
use std::time::{Duration, Instant};

const RING: u64 = 64 * 1024;

fn ctl(d: usize) -> usize {
    512 + 1024 * d
}

/// In the child: pokes the (offset, value) pairs through its own end of the same memory.
fn poke((end, words): (Connection, Vec<(usize, u64)>)) -> bool {
    words.iter().all(|(o, v)| end.__poke_ring(*o, *v))
}

fn hostile(m: multiprocess::StartMethod, words: Vec<(usize, u64)>) -> (Connection, Connection) {
    let (a, b) = Pipe::new().unwrap();
    let mut p = Process::builder()
        .start_method(m)
        .start(poke, (a.try_clone().unwrap(), words))
        .unwrap();
    assert!(p.join_result().unwrap(), "{m}: no shared ring");
    (a, b)
}

#[test]
fn a_misaligned_tail_is_an_error_for_the_sender_not_a_write_past_the_mapping() {
    deadline(60, || {
        for m in METHODS {
            // End 1 writes the last ring of the mapping: a tail 4 bytes short of a ring's end
            // would have laid an 8-byte padding header across the mapping's end.
            let (_a, b) = hostile(m, vec![(ctl(1), RING - 4), (ctl(1) + 256, RING - 4)]);
            let e = b.send(&"hello").unwrap_err();
            assert!(matches!(e, ConnectionError::Malformed(_)), "{m}: {e}");
        }
    });
}

#[test]
fn a_head_ahead_of_the_tail_is_an_error_for_the_sender_not_a_wait_forever() {
    deadline(60, || {
        for m in METHODS {
            for (head, tail) in [(4096u64, 0u64), (u64::MAX - 7, 8), (8, u64::MAX - 7)] {
                let (_a, b) = hostile(m, vec![(ctl(1) + 256, head), (ctl(1), tail)]);
                // Returns (the deadline catches a wait forever): sent over the damage (the
                // writer's cached head said there was room; the peer only hurt itself), or
                // refused as Malformed.
                match b.send(&"hello") {
                    Ok(()) | Err(ConnectionError::Malformed(_)) => {}
                    Err(e) => panic!("{m}: head {head} tail {tail}: {e}"),
                }
            }
        }
    });
}

#[test]
fn damaged_positions_and_records_are_errors_for_the_receiver() {
    deadline(60, || {
        for m in METHODS {
            for words in [
                // tail far beyond head
                vec![(ctl(0), u64::MAX - 7)],
                // misaligned
                vec![(ctl(0), 12)],
                // a record claiming 4 GiB
                vec![(4096, u64::from(u32::MAX) | (1u64 << 32)), (ctl(0), 8)],
                // an unknown kind
                vec![(4096, 8 | (77u64 << 32)), (ctl(0), 16)],
                // padding that runs past the written data
                vec![
                    (4096 + 65520, 3u64 << 32),
                    (ctl(0) + 256, 65520),
                    (ctl(0), 65528),
                ],
            ] {
                let (_a, b) = hostile(m, words.clone());
                let t = Instant::now();
                let r = b.recv_timeout::<String>(Duration::from_secs(2));
                assert!(
                    t.elapsed() < Duration::from_secs(5),
                    "{m}: {words:?}: overran"
                );
                match r {
                    Err(ConnectionError::Malformed(_)) => {}
                    other => panic!("{m}: {words:?}: {other:?}"),
                }
            }
        }
    });
}
