//! W10: many small tasks with no chunksize given.
//!
//! `imap_unordered` over 100,000 tasks of about 10 µs each (quick: 10,000), with each
//! system's default chunking: ours (`Pool::imap_unordered`, no chunksize), rayon's
//! `par_iter` (work stealing, the in-process bound), and Python's `imap_unordered` (whose
//! default chunksize of 1 is the trap this workload is about). Pools of 2; seconds for the
//! whole run, pool start-up not timed (one untimed warm-up round of a tenth of the tasks).
//!
//! A task spins on the clock for 10 µs, so it costs the same in every language: the workload
//! measures the dispatch, not the work.

use std::time::{Duration, Instant};

use multiprocess::Pool;

use crate::w5_pool::check;
use crate::{python, Config, Counts, Metric, Result, System, Workload};

pub(crate) const W10: Workload = Workload {
    name: "W10",
    title: "small tasks: imap_unordered over 100,000 tasks of 10 us each, default chunking, pool of 2 (quick: 10,000)",
    metric: Metric::Seconds,
    reference: "rayon/threads",
    systems,
};

const PROCESSES: usize = 2;
const TASKS: Counts = Counts {
    full: 100_000,
    quick: 10_000,
};
const TASK_TIME: Duration = Duration::from_micros(10);

/// About 10 µs of work: spins on the clock, returns its input plus one.
fn spin_task(x: u64) -> u64 {
    let start = Instant::now();
    while start.elapsed() < TASK_TIME {
        std::hint::spin_loop();
    }
    x + 1
}

fn expected(tasks: usize) -> u64 {
    let n = tasks as u64;
    n * (n + 1) / 2
}

fn systems(config: Config) -> Vec<System> {
    let tasks = config.pick(TASKS);
    let mut systems = vec![
        System::new("multiprocess/default", move || ours(tasks)),
        System::new("rayon/threads", move || rayon(tasks)),
    ];
    if python::available() {
        let args = [tasks.to_string()];
        systems.push(System::new("python/fork", move || {
            let (done, elapsed) = python::transfer(PYTHON, &args)?;
            check("W10 python", done == tasks as u64)?;
            Ok(elapsed.as_secs_f64())
        }));
    }
    systems
}

fn ours(tasks: usize) -> Result<f64> {
    let pool = Pool::new(PROCESSES)?;
    let warm: u64 = pool
        .imap_unordered(spin_task, 0..(tasks / 10) as u64)
        .collect::<std::result::Result<Vec<u64>, _>>()?
        .iter()
        .sum();
    check("W10 warm-up", warm == expected(tasks / 10))?;
    let start = Instant::now();
    let mut sum = 0u64;
    for r in pool.imap_unordered(spin_task, 0..tasks as u64) {
        sum += r?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    check("W10", sum == expected(tasks))?;
    Ok(elapsed)
}

fn rayon(tasks: usize) -> Result<f64> {
    use rayon::prelude::*;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(PROCESSES)
        .build()?;
    let warm: u64 = pool.install(|| {
        (0..(tasks / 10) as u64)
            .into_par_iter()
            .map(spin_task)
            .sum()
    });
    check("W10 rayon warm-up", warm == expected(tasks / 10))?;
    let start = Instant::now();
    let sum: u64 = pool.install(|| (0..tasks as u64).into_par_iter().map(spin_task).sum());
    let elapsed = start.elapsed().as_secs_f64();
    check("W10 rayon", sum == expected(tasks))?;
    Ok(elapsed)
}

/// argv: tasks. One untimed warm-up of a tenth; prints the timed run as a "transfer" whose
/// bytes are the number of tasks done.
const PYTHON: &str = r#"
import json
import multiprocessing
import sys
import time


def spin_task(x):
    t0 = time.perf_counter_ns()
    while time.perf_counter_ns() - t0 < 10_000:
        pass
    return x + 1


def main():
    tasks = int(sys.argv[1])
    with multiprocessing.get_context("fork").Pool(2) as pool:
        assert sum(pool.imap_unordered(spin_task, range(tasks // 10))) == (tasks // 10) * (tasks // 10 + 1) // 2
        t0 = time.perf_counter_ns()
        total = sum(pool.imap_unordered(spin_task, range(tasks)))
        elapsed = time.perf_counter_ns() - t0
        assert total == tasks * (tasks + 1) // 2
    print(json.dumps({"bytes": tasks, "elapsed_ns": elapsed}))


if __name__ == "__main__":
    main()
"#;
