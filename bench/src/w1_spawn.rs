//! W1 spawn: start a child running a trivial function and join it; the
//! median wall time of one start + join, per start method.

use multiprocess::{Process, StartMethod};

use crate::stats::{median, time_each};
use crate::{python, raw, Config, Counts, Metric, Result, System, Workload, RAW_EXEC_CHILD};

pub(crate) const WORKLOAD: Workload = Workload {
    name: "W1",
    title: "spawn: start + join a child running a trivial function (200 runs, python/spawn 30; quick: 20, 5)",
    metric: Metric::MedianUs,
    reference: "raw/fork",
    systems,
};

/// Timed start + join runs per system.
const RUNS: Counts = Counts {
    full: 200,
    quick: 20,
};

/// Python's spawn method starts a fresh interpreter per process (~60 ms), so
/// it gets fewer runs to keep the whole benchmark short.
const PYTHON_SPAWN_RUNS: Counts = Counts { full: 30, quick: 5 };

/// One untimed start + join before timing, for every system. For the
/// forkserver methods (ours and Python's) it starts the fork server, a
/// one-off cost that is not part of starting a process.
const WARMUP: usize = 1;

fn systems(config: Config) -> Vec<System> {
    let runs = config.pick(RUNS);
    let mut systems = vec![
        System::new("raw/fork", move || raw_fork(runs)),
        System::new("raw/exec", move || raw_exec(runs)),
        System::new("multiprocess/fork", move || ours(StartMethod::Fork, runs)),
        System::new("multiprocess/spawn", move || ours(StartMethod::Spawn, runs)),
        System::new("multiprocess/forkserver", move || {
            ours(StartMethod::ForkServer, runs)
        }),
    ];
    if python::available() {
        let python_spawn_runs = config.pick(PYTHON_SPAWN_RUNS);
        for (name, method, runs) in [
            ("python/fork", "fork", runs),
            ("python/spawn", "spawn", python_spawn_runs),
            ("python/forkserver", "forkserver", runs),
        ] {
            let args = [method.to_string(), WARMUP.to_string(), runs.to_string()];
            systems.push(System::new(name, move || {
                median(python::samples_us(PYTHON_SCRIPT, &args)?)
            }));
        }
    }
    systems
}

/// The child's whole job.
fn trivial(_: ()) {}

fn ours(method: StartMethod, runs: usize) -> Result<f64> {
    median(time_each(WARMUP, runs, || {
        let mut p = Process::builder().start_method(method).start(trivial, ())?;
        p.join()?;
        Ok(())
    })?)
}

/// fork(2), the child `_exit(0)`s at once, waitpid(2).
fn raw_fork(runs: usize) -> Result<f64> {
    median(time_each(WARMUP, runs, || {
        // SAFETY: the child does nothing.
        let child = unsafe { raw::fork(|| 0) }?;
        child.wait()
    })?)
}

/// fork(2) + execv(2) of this very binary, which returns from `main` at
/// once when given `--raw-exec-child`, + waitpid(2).
fn raw_exec(runs: usize) -> Result<f64> {
    let command = raw::Command::new(&std::env::current_exe()?, &[RAW_EXEC_CHILD])?;
    median(time_each(WARMUP, runs, || command.spawn()?.wait())?)
}

/// argv: start method, warm-up runs, timed runs.
const PYTHON_SCRIPT: &str = r#"
import json
import multiprocessing
import sys
import time


def trivial():
    pass


def start_join(ctx):
    p = ctx.Process(target=trivial)
    p.start()
    p.join()
    if p.exitcode != 0:
        sys.exit(f"child exited with {p.exitcode}")


def main():
    method, warmup, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    ctx = multiprocessing.get_context(method)
    # Untimed warm-up: for forkserver this starts the fork server.
    for _ in range(warmup):
        start_join(ctx)
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        start_join(ctx)
        samples.append(time.perf_counter_ns() - t0)
    print(json.dumps({"samples_ns": samples}))


if __name__ == "__main__":
    main()
"#;
