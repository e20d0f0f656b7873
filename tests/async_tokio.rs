//! Awaiting processes, pool results, messages and queue items under tokio's multi-thread
//! runtime (and one plain executor): many at once, cancellation, killed workers.

mod common;
use common::*;
use multiprocess::{Connection, Pipe, Pool, PoolErrorKind, Process, Queue};
use std::time::Duration;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

fn square(x: u64) -> u64 {
    x * x
}

fn slow(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn die(_: ()) -> u64 {
    std::process::abort()
}

#[test]
fn many_concurrent_awaits_of_pool_results() {
    deadline(120, || {
        let pool = Pool::new(2).unwrap();
        rt().block_on(async {
            let mut tasks = Vec::new();
            for i in 0..2000u64 {
                let r = pool.apply_async(square, i);
                tasks.push(tokio::spawn(r));
            }
            for (i, t) in tasks.into_iter().enumerate() {
                let v = tokio::time::timeout(Duration::from_secs(60), t)
                    .await
                    .expect("an await hung")
                    .unwrap()
                    .unwrap();
                assert_eq!(v, (i * i) as u64);
            }
            let all = pool.map_async(square, 0..1000u64).await.unwrap();
            assert_eq!(all[999], 998_001);
        });
    });
}

#[test]
fn cancelled_awaits_lose_nothing() {
    deadline(60, || {
        let pool = Pool::new(2).unwrap();
        rt().block_on(async {
            let mut r = pool.apply_async(slow, 300);
            // A select that the timer wins: the result is still to come.
            tokio::select! {
                v = &mut r => panic!("the slow task finished first: {v:?}"),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            assert!(tokio::time::timeout(Duration::from_millis(10), &mut r)
                .await
                .is_err());
            assert_eq!(r.await.unwrap(), 300);
        });
    });
}

#[test]
fn a_worker_killed_while_awaited_gives_the_error() {
    deadline(60, || {
        let pool = Pool::new(2).unwrap();
        rt().block_on(async {
            let e = tokio::time::timeout(Duration::from_secs(30), pool.apply_async(die, ()))
                .await
                .expect("the await hung")
                .unwrap_err();
            assert_eq!(e.kind(), PoolErrorKind::WorkerLost, "{e}");
            // The pool goes on.
            assert_eq!(pool.apply_async(square, 3).await.unwrap(), 9);
        });
    });
}

#[test]
fn join_async_sees_the_exit_under_every_method() {
    deadline(60, || {
        rt().block_on(async {
            for m in METHODS {
                let mut p = Process::builder().start_method(m).target(slow, 100);
                p.start().unwrap();
                tokio::time::timeout(Duration::from_secs(20), p.join_async())
                    .await
                    .expect("join_async hung")
                    .unwrap();
                assert_eq!(p.exitcode(), Some(0), "{m}");
                assert_eq!(p.join_result().unwrap(), 100);
                // A killed child.
                let mut p = Process::builder().start_method(m).target(slow, 60_000);
                p.start().unwrap();
                let joined = tokio::time::timeout(Duration::from_millis(300), p.join_async()).await;
                assert!(
                    joined.is_err(),
                    "{m}: the child should still run: {joined:?}"
                );
                p.kill().unwrap();
                tokio::time::timeout(Duration::from_secs(20), p.join_async())
                    .await
                    .expect("join_async hung after kill")
                    .unwrap();
                assert_eq!(p.exitcode(), Some(-9));
            }
        });
    });
}

fn send_later((conn, ms, n): (Connection, u64, u32)) {
    for i in 0..n {
        std::thread::sleep(Duration::from_millis(ms));
        conn.send(&i).unwrap();
    }
    let big = vec![7u8; 1 << 20];
    conn.send_bytes(&big).unwrap();
}

#[test]
fn recv_async_and_cancellation() {
    deadline(60, || {
        rt().block_on(async {
            let (a, b) = Pipe::new().unwrap();
            let mut p = Process::new(send_later, (b, 30, 5));
            p.start().unwrap();
            // Timeouts that give up before a message: nothing is lost.
            let mut got = Vec::new();
            while got.len() < 5 {
                match tokio::time::timeout(Duration::from_millis(7), a.recv_async::<u32>()).await {
                    Ok(v) => got.push(v.unwrap()),
                    Err(_) => continue,
                }
            }
            assert_eq!(got, [0, 1, 2, 3, 4]);
            // A large frame through the socket, awaited.
            let big = tokio::time::timeout(Duration::from_secs(20), a.recv_bytes_async())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(big.len(), 1 << 20);
            p.join_async().await.unwrap();
            // End of file is an error, not a hang.
            let e = tokio::time::timeout(Duration::from_secs(10), a.recv_async::<u32>())
                .await
                .unwrap()
                .unwrap_err();
            assert!(e.is_eof(), "{e}");

            // Many connections awaited at once, each by its own task.
            let mut pairs = Vec::new();
            let mut children = Vec::new();
            for _ in 0..8 {
                let (a, b) = Pipe::new().unwrap();
                let mut p = Process::new(send_later, (b, 10, 3));
                p.start().unwrap();
                children.push(p);
                pairs.push(a);
            }
            let mut tasks = Vec::new();
            for a in pairs {
                tasks.push(tokio::spawn(async move {
                    let mut s = 0;
                    for _ in 0..3 {
                        s += a.recv_async::<u32>().await.unwrap();
                    }
                    a.recv_bytes_async().await.unwrap();
                    s
                }));
            }
            for t in tasks {
                assert_eq!(t.await.unwrap(), 3);
            }
            for mut p in children {
                p.join_async().await.unwrap();
            }
        });
    });
}

fn produce((q, n, ms): (Queue<u64>, u64, u64)) {
    for i in 0..n {
        if ms > 0 {
            std::thread::sleep(Duration::from_millis(ms));
        }
        q.put(i).unwrap();
    }
}

fn consume((q, n): (Queue<u64>, u64)) -> u64 {
    (0..n).map(|_| q.get().unwrap()).sum()
}

#[test]
fn queue_get_async_and_put_async() {
    deadline(90, || {
        rt().block_on(async {
            // Async consumers, producers in children under every start method.
            let q: Queue<u64> = Queue::new(0).unwrap();
            let mut producers = Vec::new();
            for m in METHODS {
                let mut p = Process::builder()
                    .start_method(m)
                    .target(produce, (q.clone(), 200, 0));
                p.start().unwrap();
                producers.push(p);
            }
            let mut tasks = Vec::new();
            for _ in 0..6 {
                let q = q.clone();
                tasks.push(tokio::spawn(async move {
                    let mut sum = 0;
                    for _ in 0..100 {
                        sum += q.get_async().await.unwrap();
                    }
                    sum
                }));
            }
            let mut total = 0;
            for t in tasks {
                total += tokio::time::timeout(Duration::from_secs(60), t)
                    .await
                    .expect("an async get hung")
                    .unwrap();
            }
            assert_eq!(total, 3 * (0..200).sum::<u64>());
            for mut p in producers {
                p.join_async().await.unwrap();
            }

            // A cancelled get takes nothing.
            assert!(
                tokio::time::timeout(Duration::from_millis(30), q.get_async())
                    .await
                    .is_err()
            );
            let mut p = Process::new(produce, (q.clone(), 1, 50));
            p.start().unwrap();
            assert_eq!(q.get_async().await.unwrap(), 0);
            p.join_async().await.unwrap();

            // put_async waits for room, which a consumer child makes.
            let small: Queue<u64> = Queue::new(2).unwrap();
            small.put(100).unwrap();
            small.put(100).unwrap();
            assert!(
                tokio::time::timeout(Duration::from_millis(30), small.put_async(1))
                    .await
                    .is_err()
            );
            let mut c = Process::new(consume, (small.clone(), 12));
            c.start().unwrap();
            for i in 0..10 {
                tokio::time::timeout(Duration::from_secs(20), small.put_async(i))
                    .await
                    .expect("put_async hung")
                    .unwrap();
            }
            c.join_async().await.unwrap();
            assert_eq!(c.join_result().unwrap(), 200 + 45);
        });
    });
}

#[test]
fn imap_next_async() {
    deadline(60, || {
        let pool = Pool::new(2).unwrap();
        rt().block_on(async {
            let mut it = pool.imap(square, 0..100u64);
            let mut got = Vec::new();
            while let Some(v) = it.next_async().await {
                got.push(v.unwrap());
            }
            assert_eq!(got, (0..100).map(|x| x * x).collect::<Vec<_>>());
        });
    });
}

#[test]
fn works_without_tokio() {
    deadline(60, || {
        let pool = Pool::new(2).unwrap();
        let q: Queue<u64> = Queue::new(0).unwrap();
        let mut p = Process::new(produce, (q.clone(), 3, 20));
        p.start().unwrap();
        let (a, b) = multiprocess::__block_on(async {
            (pool.apply_async(square, 12).await, q.get_async().await)
        });
        assert_eq!(a.unwrap(), 144);
        assert_eq!(b.unwrap(), 0);
        multiprocess::__block_on(p.join_async()).unwrap();
    });
}

fn set_later((e, ms): (multiprocess::Event, u64)) {
    std::thread::sleep(Duration::from_millis(ms));
    e.set();
}

fn pulse_later((e, ms): (multiprocess::Event, u64)) {
    std::thread::sleep(Duration::from_millis(ms));
    e.set();
    e.clear();
}

/// How many threads of this process have this name (as the kernel keeps it: 15 bytes).
fn threads_named(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.trim_end() == name)
        .count()
}

/// The event's sleepers count (the word after its state), as any process could read it.
fn sleepers(e: &multiprocess::Event) -> u32 {
    e.__shared_word(12)
        .unwrap()
        .load(std::sync::atomic::Ordering::SeqCst)
}

#[test]
fn event_wait_async_under_every_method_with_many_waiters_and_cancellation() {
    deadline(120, || {
        rt().block_on(async {
            for m in METHODS {
                // Three events, 100 waiters each (more than one futex_waitv takes at once),
                // set by children; one is a pulse (set then clear at once).
                let events: Vec<_> = (0..3)
                    .map(|_| multiprocess::Event::new().unwrap())
                    .collect();
                let mut waiters = Vec::new();
                for e in &events {
                    for _ in 0..100 {
                        let e = e.clone();
                        waiters.push(tokio::spawn(async move { e.wait_async().await }));
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                // 300 words: three futex watchers, and no thread per waiter (this kernel has
                // futex_waitv).
                assert!(threads_named("multiprocess-fu") >= 3, "{m}");
                assert_eq!(threads_named("multiprocess-ev"), 0, "{m}");
                let mut kids = Vec::new();
                for (k, e) in events.iter().enumerate() {
                    let b = Process::builder().start_method(m);
                    let arg = (e.clone(), 20);
                    let p = if k == 2 {
                        b.start(pulse_later, arg)
                    } else {
                        b.start(set_later, arg)
                    };
                    kids.push(p.unwrap());
                }
                for w in waiters {
                    tokio::time::timeout(Duration::from_secs(30), w)
                        .await
                        .unwrap_or_else(|_| panic!("{m}: a waiter hung"))
                        .unwrap()
                        .unwrap();
                }
                for mut k in kids {
                    k.join_async().await.unwrap();
                }
                assert!(events[0].is_set() && !events[2].is_set(), "{m}");
                for e in &events {
                    assert_eq!(sleepers(e), 0, "{m}: every waiter left");
                }
            }

            // Cancelled by a timeout: nothing is left behind, and the event works on.
            let e = multiprocess::Event::new().unwrap();
            assert!(
                tokio::time::timeout(Duration::from_millis(30), e.wait_async())
                    .await
                    .is_err()
            );
            assert_eq!(sleepers(&e), 0);
            let mut p = Process::new(set_later, (e.clone(), 30));
            p.start().unwrap();
            tokio::select! {
                r = e.wait_async() => r.unwrap(),
                _ = tokio::time::sleep(Duration::from_secs(30)) => panic!("the wait hung"),
            }
            p.join_async().await.unwrap();
            // Set already: at once.
            e.wait_async().await.unwrap();
        });
    });
}

/// Waits `ms`, then reads messages until the `u64::MAX` sentinel and sends back how many and
/// their sum.
fn slow_reader((conn, ms): (Connection, u64)) {
    std::thread::sleep(Duration::from_millis(ms));
    let (mut n, mut sum) = (0u64, 0u64);
    loop {
        let (k, _pad): (u64, Vec<u8>) = conn.recv().unwrap();
        if k == u64::MAX {
            break;
        }
        n += 1;
        sum += k;
    }
    conn.send(&(n, sum)).unwrap();
}

fn reads_nothing(conn: Connection) {
    std::thread::sleep(Duration::from_millis(200));
    drop(conn);
}

#[test]
fn send_async_waits_for_room_without_blocking_the_runtime() {
    deadline(120, || {
        // One thread: a send that blocked its thread would stop the heartbeat too.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            for m in METHODS {
                let (ours, theirs) = Pipe::new().unwrap();
                let mut p = Process::builder()
                    .start_method(m)
                    .start(slow_reader, (theirs, 300))
                    .unwrap();
                let ticks = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
                let t = ticks.clone();
                let heartbeat = tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        t.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                });
                // 1,000 messages of about 1 KiB: many times the 64 KiB ring. The first send
                // that finds the ring full (the reader sleeps) is dropped while it waits for
                // room: nothing of it may arrive. The next one waits for room with the
                // runtime going on (one thread: a blocked thread would stop the heartbeat).
                let pad = vec![7u8; 1000];
                let (mut sent, mut cancelled, mut waited) = (0u64, None, false);
                for k in 0..1000u64 {
                    if cancelled.is_none() {
                        let msg = (k, &pad);
                        let send = ours.send_async(&msg);
                        match tokio::time::timeout(Duration::from_millis(20), send).await {
                            Ok(r) => {
                                r.unwrap();
                                sent += k;
                            }
                            Err(_) => cancelled = Some(k),
                        }
                        continue;
                    }
                    let before = ticks.load(std::sync::atomic::Ordering::Relaxed);
                    let start = std::time::Instant::now();
                    ours.send_async(&(k, &pad)).await.unwrap();
                    sent += k;
                    if start.elapsed() > Duration::from_millis(100) {
                        waited = true;
                        let during = ticks.load(std::sync::atomic::Ordering::Relaxed) - before;
                        assert!(during >= 3, "{m}: the runtime was blocked ({during} ticks)");
                    }
                }
                assert!(cancelled.is_some(), "{m}: the ring never filled");
                assert!(waited, "{m}: no send waited for the sleeping reader");
                ours.send_async(&(u64::MAX, Vec::<u8>::new()))
                    .await
                    .unwrap();
                let (n, sum): (u64, u64) = ours.recv_async().await.unwrap();
                assert_eq!((n, sum), (999, sent), "{m}: cancelled at {cancelled:?}");
                heartbeat.abort();
                p.join_async().await.unwrap();
            }

            // A reader that dies: the waiting send ends with BrokenPipe, not a hang.
            let (ours, theirs) = Pipe::new().unwrap();
            let mut p = Process::new(reads_nothing, theirs);
            p.start().unwrap();
            let pad = vec![1u8; 1000];
            let mut result = Ok(());
            for k in 0..1000u64 {
                result = tokio::time::timeout(Duration::from_secs(20), ours.send_async(&(k, &pad)))
                    .await
                    .expect("a send to a dead reader hung");
                if result.is_err() {
                    break;
                }
            }
            assert!(
                matches!(result, Err(multiprocess::ConnectionError::BrokenPipe)),
                "{result:?}"
            );
            p.join_async().await.unwrap();
        });
    });
}
