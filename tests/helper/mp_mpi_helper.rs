//! A program for the MPI tests, run under `mpirun -n N`: rank 0 runs the scenario named by its
//! first argument on a cluster pool and prints what the test checks; the other ranks are the
//! pool's workers (they never reach `main`).

use multiprocess::{Pool, PoolErrorKind, Queue};

fn square(x: u64) -> u64 {
    x * x
}

fn add((a, b): (u64, u64)) -> u64 {
    a + b
}

fn where_am_i(_: u32) -> (i32, u32) {
    (std::process::id() as i32, 0)
}

fn boom(x: u32) -> u32 {
    if x == 3 {
        panic!("three is not allowed");
    }
    x
}

fn net_namespace(_: u32) -> String {
    std::fs::read_link("/proc/self/ns/net")
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(std::time::Duration::from_millis(50));
    ms
}

fn bad_init(_: ()) {
    panic!("the initializer refuses");
}

fn good_init(_: ()) {}

fn makes_queue(_: u32) -> Queue<u32> {
    Queue::new(0).unwrap()
}

fn takes_queue(q: Queue<u32>) -> u32 {
    q.put(1).map(|_| 1).unwrap_or(0)
}

fn main() {
    let scenario = std::env::args().nth(1).unwrap_or_default();
    let pool = Pool::builder().mpi();
    match scenario.as_str() {
        "verbs" => {
            let pool = pool
                .initializer(good_init, ())
                .build()
                .expect("cluster pool");
            println!("processes {}", pool.processes());
            let v = pool.map(square, 0..1000u64).unwrap();
            assert_eq!(v, (0..1000u64).map(|x| x * x).collect::<Vec<_>>());
            println!("map ok {}", v.iter().sum::<u64>());
            assert_eq!(pool.apply(square, 12).unwrap(), 144);
            println!("apply ok");
            let s = pool.starmap(add, vec![(1, 2), (3, 4)]).unwrap();
            assert_eq!(s, vec![3, 7]);
            println!("starmap ok");
            let mut r = pool.apply_async(square, 9);
            assert_eq!(r.get().unwrap(), 81);
            let mut m = pool.map_async(square, 0..100u64);
            assert_eq!(m.get().unwrap().len(), 100);
            println!("async ok");
            let ordered: Vec<u64> = pool.imap(square, 0..50u64).map(|r| r.unwrap()).collect();
            assert_eq!(ordered, (0..50u64).map(|x| x * x).collect::<Vec<_>>());
            let mut unordered: Vec<u64> = pool
                .imap_unordered(square, 0..50u64)
                .map(|r| r.unwrap())
                .collect();
            unordered.sort();
            assert_eq!(unordered, ordered);
            println!("imap ok");
            // Plain data: the ranks run the buffer form of the plain-data entry.
            let xs: Vec<u64> = (0..100_000).collect();
            let ys = pool.map_pod(square, xs.clone()).unwrap();
            assert!(ys.iter().zip(&xs).all(|(y, x)| *y == x * x));
            let e = pool
                .map_pod(boom, (0..10u32).collect::<Vec<_>>())
                .unwrap_err();
            assert_eq!(e.item(), Some(3), "{e}");
            println!("map_pod ok");
            let pids: std::collections::BTreeSet<i32> = pool
                .map_chunked(where_am_i, 0..64u32, 1)
                .unwrap()
                .into_iter()
                .map(|(p, _)| p)
                .collect();
            assert!(!pids.contains(&(std::process::id() as i32)));
            println!("ran on {} worker ranks", pids.len());
            pool.close();
            pool.join().unwrap();
            println!("verbs done");
        }
        "panic" => {
            let pool = pool.build().expect("cluster pool");
            let e = pool.map(boom, 0..6u32).unwrap_err();
            assert_eq!(e.kind(), PoolErrorKind::Panicked);
            assert_eq!(e.item(), Some(3));
            println!("panic -> {e}");
            assert_eq!(pool.apply(boom, 4).unwrap(), 4);
            println!("pool goes on");
        }
        "init-fails" => {
            let e = pool.initializer(bad_init, ()).build().unwrap_err();
            assert_eq!(e.kind(), PoolErrorKind::Initializer);
            println!("initializer -> {e}");
        }
        "handle" => {
            let pool = pool.build().expect("cluster pool");
            let q: Queue<u32> = Queue::new(0).unwrap();
            let e = pool.apply(takes_queue, q).unwrap_err();
            println!("handle -> {e}");
            assert!(e.to_string().contains("cannot cross to another host"));
            let e = pool.apply(makes_queue, 1).unwrap_err();
            println!("handle result -> {e}");
            assert!(e.to_string().contains("cannot cross to another host"));
        }
        "maxtasks" => {
            let e = pool.maxtasksperchild(5).build().unwrap_err();
            println!("maxtasks -> {e}");
        }
        "mismatch" => {
            // Run as `mpirun -n 1 mp-mpi-helper mismatch : -n 2 mp-mpi-other`.
            let e = pool.build().unwrap_err();
            println!("mismatch -> {e}");
        }
        "main-panics" => {
            let pool = pool.build().expect("cluster pool");
            assert_eq!(pool.apply(square, 3).unwrap(), 9);
            panic!("rank 0's main panics outside any task");
        }
        "hosts" => {
            // Which network namespace each task ran in ("hosts" of the two-host test).
            let pool = pool.build().expect("cluster pool");
            let spaces: std::collections::BTreeSet<String> = pool
                .map_chunked(net_namespace, 0..32u32, 1)
                .unwrap()
                .into_iter()
                .collect();
            let here = net_namespace(0);
            println!("rank 0 in {here}; workers in {spaces:?}");
            println!(
                "workers in another namespace: {}",
                spaces.iter().any(|s| *s != here)
            );
            let v = pool.map(square, 0..100_000u64).unwrap();
            println!("map over hosts ok {}", v.len());
        }
        "slow" => {
            // Prints the worker pids, then maps slowly: the test kills a worker rank meanwhile.
            let pool = pool.build().expect("cluster pool");
            println!("pids {:?}", pool.pids());
            use std::io::Write;
            let _ = std::io::stdout().flush();
            let r = pool.map_chunked(nap, 0..400u64, 1);
            println!("map ended: {:?}", r.map(|v| v.len()));
        }
        other => {
            eprintln!("unknown scenario {other:?}");
            std::process::exit(2);
        }
    }
}
