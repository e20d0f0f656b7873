//! W11: 10,000 `apply_async` awaited concurrently from a tokio runtime, tasks per second (the
//! second of two rounds, as W5b).
//!
//! Systems: ours awaited (the `AsyncResult`s gathered in one task with `FuturesUnordered`, as
//! Python's `asyncio.gather`: the pool's result handler wakes the task); ours awaited with a
//! tokio task per result (`tokio::spawn`); ours with the blocking `get` inside `spawn_blocking` (what a
//! service had to do before); ours synchronous (W5b's measure, repeated here so the ratio is in
//! one table); Python's `loop.run_in_executor(ProcessPoolExecutor(2))`, and `aiomultiprocess`
//! when it is installed.

use std::time::Instant;

use multiprocess::Pool;

use crate::w5_pool::{trivial, w5b_apply, PROCESSES, W5B_TASKS};
use crate::{python, Config, Metric, Result, System, Workload};

pub(crate) const W11: Workload = Workload {
    name: "W11",
    title: "async: 10,000 apply_async awaited concurrently from tokio (quick: 1,000)",
    metric: Metric::TasksPerS,
    reference: "python/run_in_executor",
    systems,
};

fn systems(config: Config) -> Vec<System> {
    let tasks = config.pick(W5B_TASKS);
    let mut systems = vec![
        System::new("multiprocess/awaited", move || awaited(tasks)),
        System::new("multiprocess/awaited-spawned", move || {
            awaited_spawned(tasks)
        }),
        System::new("multiprocess/spawn_blocking", move || spawn_blocking(tasks)),
        System::new("multiprocess/sync", move || {
            w5b_apply(&Pool::new(PROCESSES)?, tasks)
        }),
    ];
    if python::available() {
        let args = [tasks.to_string()];
        systems.push(System::new("python/run_in_executor", move || {
            let (done, elapsed) = python::transfer(PY_EXECUTOR, &args)?;
            Ok(done as f64 / elapsed.as_secs_f64())
        }));
        if python::imports("aiomultiprocess") {
            let args = [tasks.to_string()];
            systems.push(System::new("python/aiomultiprocess", move || {
                let (done, elapsed) = python::transfer(PY_AIOMP, &args)?;
                Ok(done as f64 / elapsed.as_secs_f64())
            }));
        } else {
            eprintln!("note: aiomultiprocess is not installed: skipping python/aiomultiprocess");
        }
    }
    systems
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()?)
}

/// Two rounds of `round` (which returns the sum of the results); tasks per second of the
/// second.
fn rounds(tasks: usize, mut round: impl FnMut() -> Result<u64>) -> Result<f64> {
    let mut elapsed = 0.0;
    for _ in 0..2 {
        let start = Instant::now();
        let sum = round()?;
        elapsed = start.elapsed().as_secs_f64();
        let n = tasks as u64;
        if sum != n * (n + 1) / 2 {
            return Err("W11: wrong sum".into());
        }
    }
    Ok(tasks as f64 / elapsed)
}

/// Sums what `handles` (tokio join handles of results) give.
async fn sum_joined<E: Into<crate::Error>>(
    handles: Vec<tokio::task::JoinHandle<std::result::Result<u64, E>>>,
) -> Result<u64> {
    let mut sum = 0u64;
    for h in handles {
        sum += h.await.map_err(|e| e.to_string())?.map_err(Into::into)?;
    }
    Ok(sum)
}

/// The awaits gathered in one task (`FuturesUnordered`), as Python's `asyncio.gather` does.
fn awaited(tasks: usize) -> Result<f64> {
    use futures_util::StreamExt;
    let pool = Pool::new(PROCESSES)?;
    let rt = runtime()?;
    rounds(tasks, || {
        rt.block_on(async {
            let mut all: futures_util::stream::FuturesUnordered<_> = (0..tasks as u64)
                .map(|i| pool.apply_async(trivial, i))
                .collect();
            let mut sum = 0u64;
            while let Some(r) = all.next().await {
                sum += r?;
            }
            Ok(sum)
        })
    })
}

/// A tokio task per result (`tokio::spawn` of each `AsyncResult`): tokio's cost of scheduling
/// each task from the pool's result thread is in this one.
fn awaited_spawned(tasks: usize) -> Result<f64> {
    let pool = Pool::new(PROCESSES)?;
    let rt = runtime()?;
    rounds(tasks, || {
        let _in_runtime = rt.enter();
        rt.block_on(sum_joined(
            (0..tasks as u64)
                .map(|i| tokio::spawn(pool.apply_async(trivial, i)))
                .collect(),
        ))
    })
}

fn spawn_blocking(tasks: usize) -> Result<f64> {
    let pool = Pool::new(PROCESSES)?;
    let rt = runtime()?;
    rounds(tasks, || {
        let _in_runtime = rt.enter();
        rt.block_on(sum_joined(
            (0..tasks as u64)
                .map(|i| {
                    let mut r = pool.apply_async(trivial, i);
                    tokio::task::spawn_blocking(move || r.get())
                })
                .collect(),
        ))
    })
}

/// argv: tasks. Prints {"bytes": tasks, "elapsed_ns": ...} of the second round.
const PY_EXECUTOR: &str = r#"
import asyncio
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor


def trivial(x):
    return x + 1


async def rounds(tasks):
    loop = asyncio.get_running_loop()
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(2, mp_context=ctx) as ex:
        for _ in range(2):
            t0 = time.perf_counter_ns()
            results = await asyncio.gather(
                *(loop.run_in_executor(ex, trivial, i) for i in range(tasks))
            )
            elapsed = time.perf_counter_ns() - t0
            assert sum(results) == tasks * (tasks + 1) // 2
    return elapsed


def main():
    tasks = int(sys.argv[1])
    elapsed = asyncio.run(rounds(tasks))
    print(json.dumps({"bytes": tasks, "elapsed_ns": elapsed}))


if __name__ == "__main__":
    main()
"#;

const PY_AIOMP: &str = r#"
import asyncio
import json
import sys
import time

import aiomultiprocess


async def trivial(x):
    return x + 1


async def rounds(tasks):
    async with aiomultiprocess.Pool(2) as pool:
        for _ in range(2):
            t0 = time.perf_counter_ns()
            results = await asyncio.gather(*(pool.apply(trivial, (i,)) for i in range(tasks)))
            elapsed = time.perf_counter_ns() - t0
            assert sum(results) == tasks * (tasks + 1) // 2
    return elapsed


def main():
    tasks = int(sys.argv[1])
    elapsed = asyncio.run(rounds(tasks))
    print(json.dumps({"bytes": tasks, "elapsed_ns": elapsed}))


if __name__ == "__main__":
    main()
"#;
