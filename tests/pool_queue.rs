//! The seed's limit lifted: a Queue made by the parent, given to pool tasks, used there.

mod common;
use common::*;
use multiprocess::{Pool, Queue};

/// Puts `(item, worker pid)` into the queue and returns the item squared.
fn report((q, item): (Queue<(u32, u32)>, u32)) -> u32 {
    q.put((item, std::process::id())).unwrap();
    item * item
}

#[test]
fn pool_tasks_use_a_queue_made_by_the_parent() {
    deadline(90, || {
        for m in METHODS {
            let pool = Pool::builder()
                .processes(2)
                .start_method(m)
                .build()
                .unwrap();
            let q: Queue<(u32, u32)> = Queue::new(0).unwrap();
            let squares = pool
                .map(report, (0..20).map(|i| (q.clone(), i)))
                .unwrap_or_else(|e| panic!("{m}: {e}"));
            assert_eq!(squares, (0..20).map(|i| i * i).collect::<Vec<_>>(), "{m}");
            let mut seen: Vec<(u32, u32)> = Vec::new();
            while !q.is_empty() {
                seen.push(q.get().unwrap());
            }
            let mut items: Vec<u32> = seen.iter().map(|(i, _)| *i).collect();
            items.sort_unstable();
            assert_eq!(
                items,
                (0..20).collect::<Vec<_>>(),
                "{m}: every task put exactly once"
            );
            let pids = pool.pids();
            assert!(
                seen.iter().all(|(_, pid)| pids.contains(&(*pid as i32))),
                "{m}: put by the workers"
            );
            // apply_async with the queue too.
            let mut r = pool.apply_async(report, (q.clone(), 7));
            assert_eq!(r.get().unwrap(), 49);
            assert_eq!(q.get().unwrap().0, 7);
        }
    });
}
