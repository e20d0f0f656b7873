//! W5, W5b, W6: the process pool.
//!
//! - W5: a pool of 2, `map` of `x * x` over 1,000,000 integers with the default chunking
//!   (CPython's: `len / (4 * processes)`, rounded up); median seconds per map. Ours twice:
//!   `map` (serde values) and `map_pod` (plain bytes, no encoding).
//! - W5b: 10,000 separate `apply_async` of a trivial task, then every result; tasks per
//!   second. procspawn keeps at most 256 in flight (10,000 at once exhausts its descriptors);
//!   in W6, one per worker (more large arguments in flight than workers deadlock its `spawn`).
//! - W6: a pool of 2, `map` over 256 inputs of 4 MiB each, each task returning the input's
//!   length; GB/s of input. `raw/socketpair` (W3's reference: 1 GiB as 1 MiB messages to
//!   one child) is the physical limit of one stream.
//!
//! Pool start-up is not timed for any system: each builds its pool, runs one untimed
//! warm-up round, then times the runs. Bytes travel as a serde byte string (`Blob`, which
//! serializes with `serialize_bytes`), the way to pass bulk bytes through serde.

use std::sync::mpsc;
use std::time::Instant;

use multiprocess::Pool;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::stats::{gb_per_s, median};
use crate::{python, w3_bulk, Config, Counts, Metric, Result, System, Workload};

pub(crate) const W5: Workload = Workload {
    name: "W5",
    title: "pool map: pool of 2, x*x over 1,000,000 integers, default chunking (median of 5 maps; quick: 100,000, 1 map)",
    metric: Metric::Seconds,
    reference: "python/fork",
    systems: w5_systems,
};

pub(crate) const W5B: Workload = Workload {
    name: "W5b",
    title:
        "pool tasks: 10,000 separate apply_async of a trivial task, then all results (quick: 1,000)",
    metric: Metric::TasksPerS,
    reference: "python/fork",
    systems: w5b_systems,
};

pub(crate) const W6: Workload = Workload {
    name: "W6",
    title: "pool bulk: pool of 2, map over 256 inputs of 4 MiB, each returns the length (quick: 16 inputs)",
    metric: Metric::GbPerS,
    reference: "raw/socketpair",
    systems: w6_systems,
};

pub(crate) const PROCESSES: usize = 2;
const MIB: usize = 1 << 20;

pub(crate) const W5_ITEMS: Counts = Counts {
    full: 1_000_000,
    quick: 100_000,
};
pub(crate) const W5_RUNS: Counts = Counts { full: 5, quick: 1 };
pub(crate) const W5B_TASKS: Counts = Counts {
    full: 10_000,
    quick: 1_000,
};
const W6_INPUTS: Counts = Counts {
    full: 256,
    quick: 16,
};
/// procspawn's in-flight limit in W5b (10,000 at once exhausts its descriptors).
const PROCSPAWN_IN_FLIGHT: usize = 256;
/// procspawn's in-flight limit in W6: one per worker. `spawn` sends the argument at once
/// through a channel that no worker reads until one is free, so a third 4 MiB task blocks
/// `spawn` forever (seen here with 3 or more in flight on a pool of 2).
const PROCSPAWN_W6_IN_FLIGHT: usize = PROCESSES;

fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

pub(crate) fn trivial(x: u64) -> u64 {
    x + 1
}

fn blob_len(b: Blob) -> u64 {
    b.0.len() as u64
}

/// Bytes that serialize as one serde byte string (a copy, not a sequence of `u8`s).
#[derive(Debug, Clone)]
pub(crate) struct Blob(pub(crate) Vec<u8>);

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Blob;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> std::result::Result<Blob, E> {
                Ok(Blob(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(
                self,
                v: Vec<u8>,
            ) -> std::result::Result<Blob, E> {
                Ok(Blob(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Blob, A::Error> {
                let mut v = Vec::new();
                while let Some(b) = seq.next_element()? {
                    v.push(b);
                }
                Ok(Blob(v))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

/// An error naming `what` unless `ok` (a system's results were wrong).
pub(crate) fn check(what: &str, ok: bool) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(format!("{what}: wrong results").into())
    }
}

// ---------------------------------------------------------------------------------------------
// W5

fn w5_systems(config: Config) -> Vec<System> {
    let items = config.pick(W5_ITEMS);
    let runs = config.pick(W5_RUNS);
    let mut systems = vec![
        System::new("multiprocess/default", move || w5_ours(items, runs)),
        System::new("multiprocess/map_pod", move || w5_pod(items, runs)),
        System::new("rayon/threads", move || w5_rayon(items, runs)),
    ];
    if python::available() {
        let args = [items.to_string(), runs.to_string()];
        systems.push(System::new("python/fork", move || {
            let samples = python::samples_us(W5_PYTHON, &args)?;
            Ok(median(samples)? / 1e6)
        }));
    }
    systems
}

fn w5_ours(items: usize, runs: usize) -> Result<f64> {
    w5_map(&Pool::new(PROCESSES)?, items, runs)
}

/// W5's measure on any pool: the median time of `runs` maps of `x * x` over `items` integers,
/// after an untimed one.
pub(crate) fn w5_map(pool: &Pool, items: usize, runs: usize) -> Result<f64> {
    w5_measure("W5", items, runs, |data| Ok(pool.map(square, data)?))
}

/// W5 through `map_pod`: the same map, the items and values crossing as plain bytes.
fn w5_pod(items: usize, runs: usize) -> Result<f64> {
    let pool = Pool::new(PROCESSES)?;
    w5_measure("W5 map_pod", items, runs, |data| {
        Ok(pool.map_pod(square, data)?)
    })
}

/// The median time of `runs` calls of `map` on `items` integers (a fresh copy each time,
/// made before the clock starts), after an untimed one; each call's values are checked.
fn w5_measure(
    what: &str,
    items: usize,
    runs: usize,
    map: impl Fn(Vec<u64>) -> Result<Vec<u64>>,
) -> Result<f64> {
    let input: Vec<u64> = (0..items as u64).collect();
    let want: u64 = input.iter().fold(0u64, |a, x| a.wrapping_add(square(*x)));
    let mut samples = Vec::new();
    for run in 0..=runs {
        let data = input.clone();
        let start = Instant::now();
        let out = map(data)?;
        let elapsed = start.elapsed().as_secs_f64();
        check(
            what,
            out.iter().fold(0u64, |a, x| a.wrapping_add(*x)) == want,
        )?;
        if run > 0 {
            samples.push(elapsed);
        }
    }
    median(samples)
}

fn w5_rayon(items: usize, runs: usize) -> Result<f64> {
    use rayon::prelude::*;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(PROCESSES)
        .build()?;
    let input: Vec<u64> = (0..items as u64).collect();
    let mut samples = Vec::new();
    for run in 0..=runs {
        let start = Instant::now();
        let out: Vec<u64> = pool.install(|| input.par_iter().map(|x| square(*x)).collect());
        let elapsed = start.elapsed().as_secs_f64();
        check("W5 rayon", out.len() == items)?;
        if run > 0 {
            samples.push(elapsed);
        }
    }
    median(samples)
}

/// argv: items, timed runs. One untimed warm-up map.
const W5_PYTHON: &str = r#"
import json
import multiprocessing
import sys
import time


def square(x):
    return x * x


def main():
    items, runs = int(sys.argv[1]), int(sys.argv[2])
    data = list(range(items))
    samples = []
    with multiprocessing.get_context("fork").Pool(2) as pool:
        pool.map(square, data)
        for _ in range(runs):
            t0 = time.perf_counter_ns()
            out = pool.map(square, data)
            samples.append(time.perf_counter_ns() - t0)
            assert len(out) == items
    print(json.dumps({"samples_ns": samples}))


if __name__ == "__main__":
    main()
"#;

// ---------------------------------------------------------------------------------------------
// W5b

fn w5b_systems(config: Config) -> Vec<System> {
    let tasks = config.pick(W5B_TASKS);
    let mut systems = vec![
        System::new("multiprocess/default", move || w5b_ours(tasks)),
        System::new("procspawn/default", move || w5b_procspawn(tasks)),
        System::new("rayon/threads", move || w5b_rayon(tasks)),
    ];
    if python::available() {
        let args = [tasks.to_string()];
        systems.push(System::new("python/fork", move || {
            let (done, elapsed) = python::transfer(W5B_PYTHON, &args)?;
            check("W5b python", done == tasks as u64)?;
            Ok(tasks as f64 / elapsed.as_secs_f64())
        }));
    }
    systems
}

fn w5b_ours(tasks: usize) -> Result<f64> {
    w5b_apply(&Pool::new(PROCESSES)?, tasks)
}

/// W5b's measure on any pool: `tasks` `apply_async` then every result, tasks per second (the
/// second of two rounds).
pub(crate) fn w5b_apply(pool: &Pool, tasks: usize) -> Result<f64> {
    let mut elapsed = 0.0;
    for run in 0..2 {
        let start = Instant::now();
        let mut results: Vec<_> = (0..tasks as u64)
            .map(|i| pool.apply_async(trivial, i))
            .collect();
        let mut sum = 0u64;
        for r in &mut results {
            sum += r.get()?;
        }
        elapsed = start.elapsed().as_secs_f64();
        let n = tasks as u64;
        check("W5b", sum == n * (n + 1) / 2)?;
        let _ = run;
    }
    Ok(tasks as f64 / elapsed)
}

fn w5b_procspawn(tasks: usize) -> Result<f64> {
    let pool = procspawn::Pool::new(PROCESSES)?;
    let mut elapsed = 0.0;
    for _run in 0..2 {
        let start = Instant::now();
        let mut in_flight = std::collections::VecDeque::new();
        let mut sum = 0u64;
        for i in 0..tasks as u64 {
            if in_flight.len() == PROCSPAWN_IN_FLIGHT {
                let h: procspawn::JoinHandle<u64> = in_flight.pop_front().ok_or("empty")?;
                sum += h.join()?;
            }
            in_flight.push_back(pool.spawn(i, trivial));
        }
        for h in in_flight {
            sum += h.join()?;
        }
        elapsed = start.elapsed().as_secs_f64();
        let n = tasks as u64;
        check("W5b procspawn", sum == n * (n + 1) / 2)?;
    }
    pool.shutdown();
    Ok(tasks as f64 / elapsed)
}

fn w5b_rayon(tasks: usize) -> Result<f64> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(PROCESSES)
        .build()?;
    let mut elapsed = 0.0;
    for _run in 0..2 {
        let start = Instant::now();
        let (tx, rx) = mpsc::channel();
        for i in 0..tasks as u64 {
            let tx = tx.clone();
            pool.spawn(move || {
                let _ = tx.send(trivial(i));
            });
        }
        drop(tx);
        let sum: u64 = rx.iter().sum();
        elapsed = start.elapsed().as_secs_f64();
        let n = tasks as u64;
        check("W5b rayon", sum == n * (n + 1) / 2)?;
    }
    Ok(tasks as f64 / elapsed)
}

/// argv: tasks. One untimed warm-up round; prints the timed round as a "transfer" whose
/// bytes are the number of tasks done.
const W5B_PYTHON: &str = r#"
import json
import multiprocessing
import sys
import time


def trivial(x):
    return x + 1


def main():
    tasks = int(sys.argv[1])
    with multiprocessing.get_context("fork").Pool(2) as pool:
        for _ in range(2):
            t0 = time.perf_counter_ns()
            results = [pool.apply_async(trivial, (i,)) for i in range(tasks)]
            total = sum(r.get() for r in results)
            elapsed = time.perf_counter_ns() - t0
            assert total == tasks * (tasks + 1) // 2
    print(json.dumps({"bytes": tasks, "elapsed_ns": elapsed}))


if __name__ == "__main__":
    main()
"#;

// ---------------------------------------------------------------------------------------------
// W6

fn w6_systems(config: Config) -> Vec<System> {
    let inputs = config.pick(W6_INPUTS);
    let mut systems = vec![
        System::new("raw/socketpair", move || {
            w3_bulk::raw_socketpair(inputs * 4)
        }),
        System::new("multiprocess/default", move || w6_ours(inputs)),
        System::new("procspawn/default", move || w6_procspawn(inputs)),
    ];
    if python::available() {
        let args = [inputs.to_string()];
        systems.push(System::new("python/fork", move || {
            let (bytes, elapsed) = python::transfer(W6_PYTHON, &args)?;
            check("W6 python", bytes == (inputs * 4 * MIB) as u64)?;
            gb_per_s(bytes, elapsed)
        }));
    }
    systems
}

fn w6_inputs(inputs: usize) -> Vec<Blob> {
    (0..inputs)
        .map(|i| Blob(vec![(i % 251) as u8 + 1; 4 * MIB]))
        .collect()
}

fn w6_ours(inputs: usize) -> Result<f64> {
    let pool = Pool::new(PROCESSES)?;
    let mut elapsed = std::time::Duration::ZERO;
    for _run in 0..2 {
        let data = w6_inputs(inputs);
        let start = Instant::now();
        let lens = pool.map(blob_len, data)?;
        elapsed = start.elapsed();
        check("W6", lens.iter().all(|l| *l == (4 * MIB) as u64))?;
    }
    gb_per_s((inputs * 4 * MIB) as u64, elapsed)
}

fn w6_procspawn(inputs: usize) -> Result<f64> {
    let pool = procspawn::Pool::new(PROCESSES)?;
    let mut elapsed = std::time::Duration::ZERO;
    for _run in 0..2 {
        let data = w6_inputs(inputs);
        let start = Instant::now();
        let mut in_flight = std::collections::VecDeque::new();
        let mut total = 0u64;
        for blob in data {
            if in_flight.len() == PROCSPAWN_W6_IN_FLIGHT {
                let h: procspawn::JoinHandle<u64> = in_flight.pop_front().ok_or("empty")?;
                total += h.join()?;
            }
            in_flight.push_back(pool.spawn(blob, blob_len));
        }
        for h in in_flight {
            total += h.join()?;
        }
        elapsed = start.elapsed();
        check("W6 procspawn", total == (inputs * 4 * MIB) as u64)?;
    }
    pool.shutdown();
    gb_per_s((inputs * 4 * MIB) as u64, elapsed)
}

/// argv: inputs. Times the second of two maps.
const W6_PYTHON: &str = r#"
import json
import multiprocessing
import sys
import time


def main():
    inputs = int(sys.argv[1])
    size = 4 << 20
    with multiprocessing.get_context("fork").Pool(2) as pool:
        for _ in range(2):
            data = [bytes([i % 251 + 1]) * size for i in range(inputs)]
            t0 = time.perf_counter_ns()
            lens = pool.map(len, data)
            elapsed = time.perf_counter_ns() - t0
            assert all(n == size for n in lens)
    print(json.dumps({"bytes": inputs * size, "elapsed_ns": elapsed}))


if __name__ == "__main__":
    main()
"#;
