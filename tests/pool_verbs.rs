//! Pool verbs under every start method: results checked against a sequential computation,
//! ordering, chunksize edge cases, timeouts, callbacks, progress counts.

mod common;
use common::*;
use multiprocess::PoolError;
use std::collections::HashSet;
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn square(x: u64) -> u64 {
    x * x
}

fn add((a, b): (i64, i64)) -> i64 {
    a + b
}

fn describe(s: String) -> (usize, String) {
    (s.len(), s.to_uppercase())
}

fn sleep_then(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[test]
fn every_verb_matches_sequential_under_every_method() {
    deadline(120, || {
        for m in METHODS {
            let p = pool(m, 3);
            let xs: Vec<u64> = (0..1000).collect();
            let want: Vec<u64> = xs.iter().map(|x| square(*x)).collect();

            assert_eq!(p.apply(square, 12).unwrap(), 144, "{m}");
            assert_eq!(p.apply_async(square, 13).get().unwrap(), 169, "{m}");
            assert_eq!(p.map(square, xs.clone()).unwrap(), want, "{m}: map");
            assert_eq!(p.map_async(square, xs.clone()).get().unwrap(), want, "{m}");
            let got: Vec<u64> = p.imap(square, xs.clone()).map(Result::unwrap).collect();
            assert_eq!(got, want, "{m}: imap order");
            let got: Vec<u64> = p
                .imap_chunked(square, xs.clone(), 7)
                .map(Result::unwrap)
                .collect();
            assert_eq!(got, want, "{m}: imap chunked order");
            let mut got: Vec<u64> = p
                .imap_unordered(square, xs.clone())
                .map(Result::unwrap)
                .collect();
            got.sort_unstable();
            assert_eq!(got, want, "{m}: imap_unordered yields each once");
            let pairs: Vec<(i64, i64)> = (0..100).map(|i| (i, -2 * i)).collect();
            let sums: Vec<i64> = pairs.iter().map(|p| add(*p)).collect();
            assert_eq!(p.starmap(add, pairs.clone()).unwrap(), sums, "{m}");
            assert_eq!(p.starmap_async(add, pairs.clone()).get().unwrap(), sums);
            assert_eq!(p.starmap_chunked(add, pairs.clone(), 3).unwrap(), sums);
            assert_eq!(
                p.starmap_async_chunked(add, pairs, 1000).get().unwrap(),
                sums
            );
            let words = vec!["ab".to_string(), "".into(), "héllo".into()];
            let want: Vec<_> = words.iter().cloned().map(describe).collect();
            assert_eq!(p.map(describe, words).unwrap(), want, "{m}");
        }
    });
}

#[test]
fn many_async_tasks_all_come_back() {
    deadline(120, || {
        for m in METHODS {
            let p = pool(m, 2);
            let mut results: Vec<_> = (0..3000u64).map(|i| p.apply_async(square, i)).collect();
            for (i, r) in results.iter_mut().enumerate() {
                assert_eq!(r.get().unwrap(), (i * i) as u64, "{m}");
            }
        }
    });
}

#[test]
fn chunksize_edge_cases() {
    deadline(120, || {
        for m in METHODS {
            let p = pool(m, 2);
            let xs: Vec<u64> = (0..50).collect();
            let want: Vec<u64> = xs.iter().map(|x| x * x).collect();
            let e = p.map_chunked(square, xs.clone(), 0).unwrap_err();
            assert!(e.is_misuse(), "{m}: {e}");
            let e = p
                .map_async_chunked(square, xs.clone(), 0)
                .get()
                .unwrap_err();
            assert!(e.is_misuse(), "{e}");
            let mut it = p.imap_chunked(square, xs.clone(), 0);
            assert!(it.next().unwrap().unwrap_err().is_misuse());
            assert!(it.next().is_none());
            assert_eq!(p.map_chunked(square, xs.clone(), 1).unwrap(), want, "{m}");
            assert_eq!(p.map_chunked(square, xs.clone(), 1000).unwrap(), want);
            assert_eq!(p.map_chunked(square, xs.clone(), 49).unwrap(), want);
            let empty: Vec<u64> = Vec::new();
            assert_eq!(p.map(square, empty.clone()).unwrap(), Vec::<u64>::new());
            assert_eq!(
                p.map_chunked(square, empty.clone(), 5).unwrap(),
                Vec::<u64>::new()
            );
            let mut r = p.map_async(square, empty.clone());
            assert!(r.ready());
            assert_eq!((r.completed(), r.total()), (0, 0));
            assert_eq!(r.get().unwrap(), Vec::<u64>::new());
            assert_eq!(p.imap(square, empty.clone()).count(), 0);
            assert_eq!(p.imap_unordered(square, empty).count(), 0);
        }
    });
}

#[test]
fn imap_is_lazy_on_endless_input() {
    deadline(60, || {
        for m in METHODS {
            let p = pool(m, 2);
            // Fixed chunks of one: the window is exactly 16 * processes items (the adaptive
            // default's bound is in pool_adaptive.rs).
            let mut it = p.imap_chunked(square, 0u64.., 1);
            let first: Vec<u64> = it.by_ref().take(100).map(Result::unwrap).collect();
            assert_eq!(first[99], 99 * 99, "{m}");
            assert!(
                it.submitted() < 100 + 16 * 2 + 1,
                "{m}: read {}",
                it.submitted()
            );
            assert!(it.completed() >= 100);
        }
    });
}

#[test]
fn get_timeout_on_a_slow_task() {
    deadline(60, || {
        for m in METHODS {
            let p = pool(m, 1);
            let mut r = p.apply_async(sleep_then, 500);
            let t = Instant::now();
            let e = r.get_timeout(Duration::from_millis(50)).unwrap_err();
            assert!(e.is_timeout(), "{m}: {e}");
            assert!(t.elapsed() < Duration::from_millis(400));
            assert!(!r.ready());
            assert_eq!(r.successful(), None);
            assert!(!r.wait_timeout(Duration::from_millis(10)));
            assert_eq!(r.get_timeout(Duration::from_secs(10)).unwrap(), 500, "{m}");
            assert_eq!(r.successful(), Some(true));
            let again = r.get().unwrap_err();
            assert!(again.is_misuse(), "{again}");

            let mut it = p.imap(sleep_then, [300u64]);
            let e = it
                .next_timeout(Duration::from_millis(20))
                .unwrap()
                .unwrap_err();
            assert!(e.is_timeout());
            assert_eq!(it.next().unwrap().unwrap(), 300);
            assert!(it.next().is_none());
        }
    });
}

fn maybe_panic(x: u32) -> u32 {
    if x == 3 {
        panic!("no threes");
    }
    x
}

#[test]
fn callbacks_run_and_a_panicking_one_harms_nothing() {
    deadline(60, || {
        for m in METHODS {
            let p = pool(m, 2);
            let (tx, rx) = mpsc::channel::<Result<u32, String>>();
            let (t1, t2) = (tx.clone(), tx.clone());
            let mut r = p.apply_async_with(
                maybe_panic,
                1,
                move |v: &u32| t1.send(Ok(*v)).unwrap(),
                move |e: &PoolError| t2.send(Err(e.to_string())).unwrap(),
            );
            assert_eq!(r.get().unwrap(), 1);
            assert_eq!(rx.recv().unwrap(), Ok(1));

            let (t1, t2) = (tx.clone(), tx.clone());
            let mut r = p.apply_async_with(
                maybe_panic,
                3,
                move |v: &u32| t1.send(Ok(*v)).unwrap(),
                move |e: &PoolError| t2.send(Err(e.to_string())).unwrap(),
            );
            assert!(r.get().unwrap_err().is_panic());
            assert!(rx.recv().unwrap().unwrap_err().contains("no threes"));

            // A callback that panics: the result is still delivered, the pool goes on.
            let mut r = p.apply_async_with(
                square,
                4,
                |_: &u64| panic!("callback bug"),
                |_: &PoolError| {},
            );
            assert_eq!(r.get().unwrap(), 16, "{m}");
            let mut r = p.map_async_with(
                maybe_panic,
                0..10,
                Some(2),
                |_: &[u32]| {},
                |_: &PoolError| panic!("error callback bug"),
            );
            let e = r.get().unwrap_err();
            assert_eq!(e.item(), Some(3), "{m}: {e}");

            let t1 = tx.clone();
            let mut r = p.map_async_with(
                square,
                0..10,
                None,
                move |v: &[u64]| t1.send(Ok(v.iter().sum::<u64>() as u32)).unwrap(),
                |_: &PoolError| {},
            );
            assert_eq!(r.get().unwrap().len(), 10);
            assert_eq!(rx.recv().unwrap(), Ok(285));
            assert_eq!(
                p.map(square, 0..4).unwrap(),
                [0, 1, 4, 9],
                "{m}: pool still works"
            );
        }
    });
}

#[test]
fn progress_counts_reach_the_total() {
    deadline(60, || {
        for m in METHODS {
            let p = pool(m, 2);
            let mut r = p.map_async_chunked(sleep_then, vec![2u64; 60], 1);
            assert_eq!(r.total(), 60);
            let mut seen = HashSet::new();
            while !r.wait_timeout(Duration::from_millis(5)) {
                seen.insert(r.completed());
            }
            assert_eq!(r.completed(), 60, "{m}");
            assert!(seen.len() > 1, "{m}: progress moved: {seen:?}");
            assert_eq!(r.get().unwrap().len(), 60);
        }
    });
}

#[test]
fn closed_pool_refuses_new_work() {
    deadline(60, || {
        for m in METHODS {
            let p = pool(m, 1);
            let e = p.join().unwrap_err();
            assert!(e.is_misuse(), "{e}");
            let mut pending = p.apply_async(sleep_then, 50);
            p.close();
            assert!(p.apply(square, 2).unwrap_err().is_closed(), "{m}");
            assert!(p.map(square, [1, 2]).unwrap_err().is_closed());
            assert!(p
                .imap(square, [1u64])
                .next()
                .unwrap()
                .unwrap_err()
                .is_closed());
            p.join().unwrap();
            assert_eq!(
                pending.get().unwrap(),
                50,
                "{m}: work before close finished"
            );
            assert!(p.pids().is_empty());
        }
    });
}

/// An `imap` begun before `close` reads its whole input, however slowly it is consumed: the
/// closed pool stays up for it (it used to retire as soon as it was idle, and the rest of the
/// input was silently never read). `join` meanwhile is refused, since it would wait for items
/// that only consuming submits; once the imap is done, `join` ends the pool.
#[test]
fn an_imap_begun_before_close_reads_all_its_input() {
    deadline(120, || {
        for m in METHODS {
            let p = pool(m, 1);
            // Chunks of one item, so the input is still being read after four results (the
            // adaptive default would have read all 100 by then).
            let mut it = p.imap_chunked(square, 0..100u64, 1);
            p.close();
            let mut got = Vec::new();
            for (k, r) in it.by_ref().enumerate() {
                got.push(r.unwrap_or_else(|e| panic!("{m}: item {k}: {e}")));
                if k == 3 {
                    // Idle and closed: the pool must not retire under the imap.
                    std::thread::sleep(Duration::from_millis(200));
                    let e = p.join().unwrap_err();
                    assert!(e.is_misuse(), "{m}: {e}");
                }
            }
            let want: Vec<u64> = (0..100).map(square).collect();
            assert_eq!(got, want, "{m}");
            drop(it);
            p.join().unwrap();
            assert!(p.pids().is_empty(), "{m}");

            // Dropped part-way: the pool still winds down.
            let p = pool(m, 1);
            let mut it = p.imap(square, 0..1000u64);
            assert_eq!(it.next().unwrap().unwrap(), 0, "{m}");
            p.close();
            drop(it);
            p.join().unwrap();
            assert!(p.pids().is_empty(), "{m}");
        }
    });
}

#[test]
fn a_result_can_be_read_again_with_get_ref_and_get_says_how() {
    deadline(60, || {
        for m in METHODS {
            let p = pool(m, 1);
            let mut r = p.apply_async(square, 7);
            assert_eq!(*r.get_ref().unwrap(), 49, "{m}");
            assert_eq!(*r.get_ref().unwrap(), 49, "{m}");
            assert_eq!(r.get().unwrap(), 49, "{m}");
            let e = r.get().unwrap_err();
            assert!(
                e.is_misuse() && e.to_string().contains("get_ref"),
                "{m}: {e}"
            );
            // An error is kept too.
            let mut r = p.map_async(square, Vec::<u64>::new());
            assert!(r.get_ref().unwrap().is_empty(), "{m}");
        }
    });
}
