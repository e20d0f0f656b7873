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
        systems.push(python_system(
            "python/run_in_executor",
            "run_in_executor",
            tasks,
        ));
        if python::imports("aiomultiprocess") {
            systems.push(python_system(
                "python/aiomultiprocess",
                "aiomultiprocess",
                tasks,
            ));
        } else {
            eprintln!("note: aiomultiprocess is not installed: skipping python/aiomultiprocess");
        }
    }
    systems
}

/// Python's `tasks` awaits gathered, through the pool `kind` names (see [`PY_GATHER`]).
fn python_system(name: &'static str, kind: &'static str, tasks: usize) -> System {
    let args = [tasks.to_string(), kind.to_string()];
    System::new(name, move || {
        let (done, elapsed) = python::transfer(PY_GATHER, &args)?;
        Ok(done as f64 / elapsed.as_secs_f64())
    })
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

/// argv: tasks, pool (`run_in_executor`: `loop.run_in_executor` on a
/// `ProcessPoolExecutor` of 2 fork workers; `aiomultiprocess`: its `Pool(2)`). Prints
/// {"bytes": tasks, "elapsed_ns": ...} of the second of two rounds of `asyncio.gather`.
const PY_GATHER: &str = r#"
import asyncio
import json
import multiprocessing
import sys
import time


def trivial(x):
    return x + 1


async def trivial_async(x):
    return x + 1


async def gather_rounds(tasks, submit):
    for _ in range(2):
        t0 = time.perf_counter_ns()
        results = await asyncio.gather(*(submit(i) for i in range(tasks)))
        elapsed = time.perf_counter_ns() - t0
        assert sum(results) == tasks * (tasks + 1) // 2
    return elapsed


async def rounds(tasks, kind):
    if kind == "run_in_executor":
        from concurrent.futures import ProcessPoolExecutor

        loop = asyncio.get_running_loop()
        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(2, mp_context=ctx) as ex:
            return await gather_rounds(
                tasks, lambda i: loop.run_in_executor(ex, trivial, i)
            )
    import aiomultiprocess

    async with aiomultiprocess.Pool(2) as pool:
        return await gather_rounds(tasks, lambda i: pool.apply(trivial_async, (i,)))


def main():
    tasks, kind = int(sys.argv[1]), sys.argv[2]
    elapsed = asyncio.run(rounds(tasks, kind))
    print(json.dumps({"bytes": tasks, "elapsed_ns": elapsed}))


if __name__ == "__main__":
    main()
"#;
