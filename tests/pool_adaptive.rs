//! `imap`/`imap_unordered` with no chunksize: the chunks adapt to the tasks' length. Short
//! tasks are batched (the speed is measured by the harness's W10, not here); what is tested
//! is that order, completeness and laziness hold while the chunks change size, and that long
//! tasks stay one to a chunk, so they still spread over the workers.

mod common;
use common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn plus_one(x: u64) -> u64 {
    x + 1
}

fn slow_pid(x: u64) -> (u64, u32) {
    std::thread::sleep(Duration::from_millis(20));
    (x, std::process::id())
}

/// An endless input that counts how much of it was read.
fn counted() -> (Arc<AtomicUsize>, impl Iterator<Item = u64>) {
    let reads = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&reads);
    let input = (0u64..).inspect(move |_| {
        counter.fetch_add(1, Ordering::Relaxed);
    });
    (reads, input)
}

#[test]
fn many_short_tasks_keep_order_and_completeness() {
    deadline(120, || {
        for m in METHODS {
            let pool = pool(m, 2);
            let n = 20_000u64;
            let got: Vec<u64> = pool
                .imap(plus_one, 0..n)
                .collect::<Result<_, _>>()
                .unwrap_or_else(|e| panic!("{m}: {e}"));
            assert_eq!(got, (1..=n).collect::<Vec<_>>(), "{m}: imap order");
            let mut got: Vec<u64> = pool
                .imap_unordered(plus_one, 0..n)
                .collect::<Result<_, _>>()
                .unwrap_or_else(|e| panic!("{m}: {e}"));
            got.sort_unstable();
            assert_eq!(
                got,
                (1..=n).collect::<Vec<_>>(),
                "{m}: imap_unordered items"
            );
        }
    });
}

#[test]
fn an_endless_input_is_read_lazily_while_chunks_grow() {
    deadline(120, || {
        for m in METHODS {
            let pool = pool(m, 2);
            let (reads, input) = counted();
            let mut it = pool.imap(plus_one, input);
            for want in 1..=50_000u64 {
                assert_eq!(it.next().unwrap().unwrap(), want, "{m}");
            }
            let read = reads.load(Ordering::Relaxed);
            // A window of 16 * processes chunks of at most 4096 items ahead of the consumer,
            // plus the chunk that crosses it.
            assert!(
                read <= 50_000 + 33 * 4096,
                "{m}: read {read} items to yield 50,000"
            );
            drop(it);
        }
    });
}

#[test]
fn long_tasks_stay_one_to_a_chunk_and_spread_over_workers() {
    deadline(120, || {
        for m in METHODS {
            let pool = pool(m, 2);
            let (reads, input) = counted();
            let mut it = pool.imap_unordered(slow_pid, input);
            let mut pids = std::collections::HashSet::new();
            for _ in 0..40 {
                let (_, pid) = it.next().unwrap().unwrap();
                pids.insert(pid);
            }
            // 20 ms tasks: an estimate of ~10 ms per item per worker keeps chunks at one
            // item, so the read-ahead stays within the window of 32 single-item chunks
            // (a little more while the estimate starts).
            let read = reads.load(Ordering::Relaxed);
            assert!(read <= 40 + 32 * 2, "{m}: read {read} items to yield 40");
            assert_eq!(pids.len(), 2, "{m}: both workers ran tasks");
            drop(it);
        }
    });
}
