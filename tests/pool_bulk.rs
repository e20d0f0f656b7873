//! Large arguments and results: the batches and reports that go through the shared-memory
//! arenas instead of the socket (from 64 KiB), arenas that grow, a report that goes inline
//! because the pool has not consumed the previous one yet, handles beside arena data, and a
//! worker that dies while it holds an arena batch.

mod common;
use common::*;
use multiprocess::{Bytes, Connection, Pipe};

fn blob(tag: u64, len: usize) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| (i as u64).wrapping_mul(31).wrapping_add(tag) as u8)
            .collect::<Vec<u8>>(),
    )
}

/// Echoes its input, reversed (so a stale buffer would show).
fn reverse((tag, b): (u64, Bytes)) -> (u64, Bytes) {
    let mut v = b.into_vec();
    v.reverse();
    (tag, Bytes::from(v))
}

/// A small argument, a large result.
fn inflate((tag, len): (u64, usize)) -> Bytes {
    blob(tag, len)
}

fn reversed(b: &Bytes) -> Vec<u8> {
    let mut v = b.to_vec();
    v.reverse();
    v
}

#[test]
fn large_arguments_and_results_of_growing_sizes() {
    deadline(120, || {
        for m in METHODS {
            let p = pool(m, 2);
            // From below the arena threshold to several MiB: the arenas are made, then
            // replaced by larger ones.
            for len in [1000, 70 << 10, 300 << 10, 3 << 20, 100 << 10, 5 << 20] {
                let items: Vec<(u64, Bytes)> = (0..6).map(|t| (t, blob(t, len))).collect();
                let want: Vec<(u64, Vec<u8>)> =
                    items.iter().map(|(t, b)| (*t, reversed(b))).collect();
                for chunk in [1, 4] {
                    let got = p.map_chunked(reverse, items.clone(), chunk).unwrap();
                    let got: Vec<(u64, Vec<u8>)> =
                        got.into_iter().map(|(t, b)| (t, b.into_vec())).collect();
                    assert!(got == want, "{m}: len {len}, chunk {chunk}");
                }
            }
        }
    });
}

#[test]
fn many_large_reports_in_a_row() {
    deadline(120, || {
        for m in METHODS {
            let p = pool(m, 2);
            // Small arguments, so workers get a second batch ahead; large results, so a report
            // often finds the outbox still unread and goes inline.
            let items: Vec<(u64, usize)> = (0..200).map(|t| (t, 100 << 10)).collect();
            let got = p.map_chunked(inflate, items.clone(), 1).unwrap();
            for ((t, len), b) in items.iter().zip(&got) {
                assert!(b.as_slice() == blob(*t, *len).as_slice(), "{m}: item {t}");
            }
            let mut unordered: Vec<u64> = p
                .imap_unordered(inflate, items.clone())
                .map(|b| b.unwrap()[0] as u64)
                .collect();
            unordered.sort_unstable();
            let mut want: Vec<u64> = items.iter().map(|(t, l)| blob(*t, *l)[0] as u64).collect();
            want.sort_unstable();
            assert_eq!(unordered, want, "{m}");
        }
    });
}

fn send_len((b, conn): (Bytes, Connection)) -> usize {
    conn.send(&b.len()).unwrap();
    b.len()
}

#[test]
fn handles_beside_large_arguments() {
    deadline(120, || {
        for m in METHODS {
            let p = pool(m, 2);
            let mut ends = Vec::new();
            let items: Vec<(Bytes, Connection)> = (0..8)
                .map(|i| {
                    let (a, b) = Pipe::new().unwrap();
                    ends.push(a);
                    (blob(i, (200 << 10) + i as usize), b)
                })
                .collect();
            let lens = p.map_chunked(send_len, items, 3).unwrap();
            for (i, (len, end)) in lens.iter().zip(&ends).enumerate() {
                assert_eq!(*len, (200 << 10) + i, "{m}");
                assert_eq!(end.recv::<usize>().unwrap(), *len, "{m}");
            }
        }
    });
}

/// Kills its own worker on item 3.
fn fragile_len((i, b): (u64, Bytes)) -> usize {
    if i == 3 {
        let me = std::process::id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &me])
            .status();
        std::thread::sleep(std::time::Duration::from_secs(60));
    }
    b.len()
}

#[test]
fn a_worker_killed_during_a_large_batch() {
    deadline(120, || {
        for m in METHODS {
            let p = pool(m, 2);
            let items: Vec<(u64, Bytes)> = (0..12).map(|i| (i, blob(i, 256 << 10))).collect();
            let e = p.map_chunked(fragile_len, items.clone(), 2).unwrap_err();
            // The whole chunk the worker was running (items 2 and 3) fails.
            assert!(e.is_worker_lost(), "{m}: {e}");
            assert_eq!(e.item(), Some(2), "{m}: {e}");
            // The other items were all computed, and the pool still works with large data.
            let mut it = p.imap_chunked(fragile_len, items.clone(), 2);
            for i in 0..12 {
                match it.next().unwrap() {
                    Ok(len) => assert_eq!((i, len), (i, 256 << 10), "{m}"),
                    Err(e) => {
                        assert!(e.is_worker_lost() && (i == 2 || i == 3), "{m}: {i}: {e}")
                    }
                }
            }
            drop(it);
            let ok: Vec<(u64, Bytes)> = items.into_iter().filter(|(i, _)| *i != 3).collect();
            assert_eq!(p.map(fragile_len, ok).unwrap(), vec![256 << 10; 11], "{m}");
        }
    });
}
