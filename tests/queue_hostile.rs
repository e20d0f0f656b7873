//! Another process is a peer, not a part of us: a process that holds a queue can write any value
//! into its shared memory. A child (every start method) writes values no correct process
//! writes into every field the other side reads; the parent's calls return errors or time out
//! on time, never crash or hang. Also: a consumer whose producer dies in the middle of a large
//! message returns on time (`get_timeout`) or goes on to the next message (`get`), and a lock
//! word naming a thread that is gone (or a reused thread id) is taken over.

mod common;
use common::*;
use multiprocess::queue::{GetError, PutError};
use multiprocess::{Process, Queue};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

#[derive(Debug, Serialize, Deserialize, PartialEq)]
enum Msg {
    Big(Vec<u8>),
    Small(u32),
}

const RING: usize = 4096;

// Byte offsets in the queue's memory (the layout in `src/queue/ring.rs`).
const CLOSED: usize = 16;
const PROD_LOCK: usize = 128;
const PROD_STREAMING: usize = 152;
const TAIL_PUTS: usize = 256;
const CONS_LOCK: usize = 384;
const CONS_STATE: usize = 400;
const HEAD_GETS: usize = 512;
const RING_START: usize = 4096;

const WHOLE: u64 = 1;
const FIRST: u64 = 2;
const FDS: u64 = 1;

/// A record header word: `len: u32, kind: u8, flags: u8, 0: u16`, little-endian.
fn record(len: u32, kind: u64, flags: u64) -> u64 {
    len as u64 | kind << 32 | flags << 40
}

/// A position word: the position (low half) and a message count (high half).
fn position(pos: u32, count: u32) -> u64 {
    pos as u64 | (count as u64) << 32
}

/// Sends a signal by name with kill(1) (the test has no libc of its own).
fn signal(pid: u32, name: &str) {
    let ok = std::process::Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{name} {pid}");
}

/// The hostile peer: writes `words` (offset, value) into the queue's memory.
fn poke((q, words): (Queue<Msg>, Vec<(usize, u64)>)) {
    for (offset, value) in words {
        assert!(q.__poke(offset, value), "no word at {offset}");
    }
}

fn poke_from_child(m: StartMethod, q: &Queue<Msg>, words: Vec<(usize, u64)>) {
    Process::builder()
        .start_method(m)
        .start(poke, (q.clone(), words))
        .unwrap()
        .join()
        .unwrap();
}

fn is_corrupt_get(e: &GetError) -> bool {
    matches!(e, GetError::Corrupt(_))
}

fn is_corrupt_put<T>(e: &PutError<T>) -> bool {
    matches!(e, PutError::Corrupt(..))
}

/// Every call on `q` returns within its limit (plus slack for a loaded machine).
fn every_call_returns(q: &Queue<Msg>, what: &str) -> (Option<GetError>, Option<PutError<Msg>>) {
    let t = Instant::now();
    let g = q.get_timeout(Duration::from_millis(300)).err();
    assert!(t.elapsed() < Duration::from_secs(5), "{what}: get_timeout");
    let t = Instant::now();
    let _ = q.get_nowait();
    assert!(t.elapsed() < Duration::from_secs(5), "{what}: get_nowait");
    let t = Instant::now();
    let p = q
        .put_timeout(Msg::Small(1), Duration::from_millis(300))
        .err();
    assert!(t.elapsed() < Duration::from_secs(5), "{what}: put_timeout");
    let _ = q.put_nowait(Msg::Small(2));
    let _ = q.qsize();
    let _ = q.is_full();
    let _ = q.is_empty();
    (g, p)
}

/// What a case does, the words the peer writes, and whether a get must report corruption.
type Case = (&'static str, Vec<(usize, u64)>, bool);

#[test]
fn hostile_positions_and_records_are_errors() {
    deadline(240, || {
        let cap = RING as u32;
        // (what, words, whether a get must report corruption)
        let cases: Vec<Case> = vec![
            // A record with the descriptor flag and a length of 4 (was a 4 GiB read).
            (
                "fds record of length 4",
                vec![
                    (RING_START, record(4, WHOLE, FDS)),
                    (TAIL_PUTS, position(16, 1)),
                ],
                true,
            ),
            (
                "record longer than the ring",
                vec![
                    (RING_START, record(u32::MAX, WHOLE, 0)),
                    (TAIL_PUTS, position(16, 1)),
                ],
                true,
            ),
            (
                "record longer than what is published",
                vec![
                    (RING_START, record(512, WHOLE, 0)),
                    (TAIL_PUTS, position(16, 1)),
                ],
                true,
            ),
            (
                "unknown record kind",
                vec![(RING_START, record(8, 77, 0)), (TAIL_PUTS, position(16, 1))],
                true,
            ),
            (
                "unknown record flags",
                vec![
                    (RING_START, record(8, WHOLE, 0xfe)),
                    (TAIL_PUTS, position(16, 1)),
                ],
                true,
            ),
            (
                "tail more than the ring past head",
                vec![(TAIL_PUTS, position(cap + 8, 1))],
                true,
            ),
            (
                "head and tail near the end of the positions",
                vec![
                    (HEAD_GETS, position(u32::MAX - 3, 0)),
                    (TAIL_PUTS, position((u32::MAX - 3).wrapping_add(16), 1)),
                ],
                true,
            ),
            (
                "unaligned tail near the ring's end",
                vec![(TAIL_PUTS, position(cap - 4, 1))],
                true,
            ),
            ("head past tail", vec![(HEAD_GETS, position(64, 0))], false),
            (
                "lock words of nobody, streaming and reading flags, counters",
                vec![
                    (PROD_LOCK, u64::MAX),
                    (CONS_LOCK, 1),
                    (PROD_STREAMING, u64::MAX),
                    (CONS_STATE, 7),
                    (CLOSED + 8, u64::MAX),
                ],
                false,
            ),
            ("the corrupt flag", vec![(CLOSED, 2)], true),
        ];
        for m in METHODS {
            for (what, words, must_fail) in &cases {
                let q: Queue<Msg> = Queue::with_capacity(0, RING).unwrap();
                poke_from_child(m, &q, words.clone());
                let (g, _) = every_call_returns(&q, what);
                if *must_fail {
                    let g = g.unwrap_or_else(|| panic!("{m}: {what}: a get succeeded"));
                    assert!(is_corrupt_get(&g), "{m}: {what}: {g:?}");
                    // Failed for good, in every process (and for puts too).
                    assert!(is_corrupt_get(&q.get_nowait().unwrap_err()), "{m}: {what}");
                    let p = q.put_nowait(Msg::Small(3)).unwrap_err();
                    assert!(is_corrupt_put(&p), "{m}: {what}: {p:?}");
                    assert!(format!("{p:?}").contains("Corrupt"), "{m}: {what}");
                }
            }
        }
    });
}

#[test]
fn hostile_ring_bytes_are_errors_or_messages() {
    deadline(120, || {
        for m in METHODS {
            let q: Queue<Msg> = Queue::with_capacity(0, RING).unwrap();
            for i in 0..20 {
                q.put(Msg::Small(i)).unwrap();
            }
            // Every ring word overwritten with a pattern.
            let words = (0..RING / 8)
                .map(|i| {
                    (
                        RING_START + i * 8,
                        0x0101_0101_0101_0101u64.wrapping_mul(i as u64),
                    )
                })
                .collect();
            poke_from_child(m, &q, words);
            for _ in 0..25 {
                every_call_returns(&q, "ring bytes");
            }
        }
    });
}

fn put_big_message(q: Queue<Msg>) {
    q.put(Msg::Big(vec![0xee; 100_000])).unwrap();
}

/// Starts a producer of a 100 KB message through a 4 KiB ring, stops it mid-message, lets
/// `reader` start taking it here, then kills the producer once the reader has taken what was
/// published. Returns the reader's handle.
fn reader_of_a_dead_producers_message<R: Send + 'static>(
    m: StartMethod,
    q: &Queue<Msg>,
    reader: impl FnOnce(Queue<Msg>) -> R + Send + 'static,
) -> std::thread::JoinHandle<R> {
    let mut p = Process::builder()
        .start_method(m)
        .start(put_big_message, q.clone())
        .unwrap();
    let pid = p.pid().unwrap() as u32;
    assert!(eventually(20, || q.__lock_owner(false) == Some(pid)
        && q.__ring_used() >= RING / 2));
    signal(pid, "STOP");
    let handle = {
        let q = q.clone();
        std::thread::spawn(move || reader(q))
    };
    assert!(eventually(20, || q.__ring_used() == 0), "{m}");
    p.kill().unwrap();
    let _ = p.join();
    handle
}

#[test]
fn get_timeout_returns_on_time_when_the_producer_dies_mid_message() {
    deadline(120, || {
        for m in METHODS {
            let q: Queue<Msg> = Queue::with_capacity(0, RING).unwrap();
            let reader = reader_of_a_dead_producers_message(m, &q, |q| {
                let t = Instant::now();
                let r = q.get_timeout(Duration::from_secs(3));
                (r, t.elapsed())
            });
            let (r, took) = reader.join().unwrap();
            assert!(r.unwrap_err().is_timeout(), "{m}");
            assert!(
                took < Duration::from_secs(3 + 3),
                "{m}: returned after {took:?}"
            );
            assert_eq!(q.dropped(), 1, "{m}");
            // The queue goes on.
            q.put(Msg::Small(5)).unwrap();
            assert_eq!(q.get().unwrap(), Msg::Small(5), "{m}");
        }
    });
}

#[test]
fn get_drops_the_message_of_a_dead_producer_and_takes_the_next() {
    deadline(120, || {
        for m in METHODS {
            let q: Queue<Msg> = Queue::with_capacity(0, RING).unwrap();
            let reader = reader_of_a_dead_producers_message(m, &q, |q| q.get());
            // The reader notices by itself (nobody else touches the queue meanwhile).
            assert!(eventually(20, || q.dropped() == 1), "{m}: not dropped");
            q.put(Msg::Small(7)).unwrap();
            assert_eq!(reader.join().unwrap().unwrap(), Msg::Small(7), "{m}");
            assert!(q.is_empty(), "{m}");
        }
    });
}

#[test]
fn stale_streaming_flag_does_not_hang_get_timeout() {
    deadline(120, || {
        for m in METHODS {
            let q: Queue<Msg> = Queue::with_capacity(0, RING).unwrap();
            // The first chunk of a streamed message, "being streamed" by nobody.
            poke_from_child(
                m,
                &q,
                vec![
                    (RING_START, record(8, FIRST, 0)),
                    (TAIL_PUTS, position(16, 0)),
                    (PROD_STREAMING, 1),
                ],
            );
            let t = Instant::now();
            let e = q.get_timeout(Duration::from_millis(500)).unwrap_err();
            assert!(e.is_timeout(), "{m}: {e:?}");
            assert!(
                t.elapsed() < Duration::from_secs(4),
                "{m}: {:?}",
                t.elapsed()
            );
            assert_eq!(q.dropped(), 1, "{m}");
            q.put(Msg::Small(9)).unwrap();
            assert_eq!(q.get().unwrap(), Msg::Small(9), "{m}");
        }
    });
}

/// This test process's main thread: alive, with a start time that is not 1.
fn live_tid_wrong_start() -> u64 {
    position(std::process::id(), 1)
}

#[test]
fn lock_word_of_a_reused_or_dead_thread_is_taken_over() {
    deadline(120, || {
        for m in METHODS {
            for (what, word) in [
                (
                    "a live thread id with another start time",
                    live_tid_wrong_start(),
                ),
                ("a thread id nobody has", position(0x3fff_fff0, 5)),
            ] {
                let q: Queue<Msg> = Queue::new(0).unwrap();
                poke_from_child(m, &q, vec![(PROD_LOCK, word), (CONS_LOCK, word)]);
                let t = Instant::now();
                q.put_timeout(Msg::Small(1), Duration::from_secs(5))
                    .unwrap_or_else(|e| panic!("{m}: {what}: {e:?}"));
                assert_eq!(
                    q.get_timeout(Duration::from_secs(5)).unwrap(),
                    Msg::Small(1),
                    "{m}: {what}"
                );
                assert!(t.elapsed() < Duration::from_secs(5), "{m}: {what}");
                assert!(q.recoveries() >= 2, "{m}: {what}");
            }
        }
    });
}
