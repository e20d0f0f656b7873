//! W8, W8b: the cluster pool on MPI, under `mpirun -n 3 --oversubscribe` (rank 0 and two
//! worker ranks, on this machine).
//!
//! - W8: W5's map (`x * x` over 1,000,000 integers, default chunking), median seconds.
//! - W8b: W5b's 10,000 `apply_async`, tasks per second.
//!
//! Systems: `multiprocess/default` (the local pool of 2, in the same run: the reference),
//! `multiprocess-mpi/world` (this harness re-run under `mpirun`, its rank 0 measuring a
//! `Pool::builder().mpi()` pool; needs the harness's `mpi` feature), and `mpi4py/futures`
//! (`mpirun -n 3 python3 -m mpi4py.futures`, `MPIPoolExecutor` with the same chunking). A
//! system that cannot run here (no `mpirun`, no `mpi` feature, no `mpi4py`) is reported as
//! skipped with the reason.

use std::process::{Command, Stdio};

use crate::w5_pool::{self, PROCESSES, W5B_TASKS, W5_ITEMS, W5_RUNS};
use crate::{python, Config, Metric, Result, System, Workload};

pub(crate) const W8: Workload = Workload {
    name: "W8",
    title: "cluster map: W5 on MPI, mpirun -n 3 (2 worker ranks), x*x over 1,000,000 integers (quick: 100,000)",
    metric: Metric::Seconds,
    reference: "multiprocess/default",
    systems: w8_systems,
};

pub(crate) const W8B: Workload = Workload {
    name: "W8b",
    title: "cluster tasks: W5b on MPI, mpirun -n 3, 10,000 apply_async (quick: 1,000)",
    metric: Metric::TasksPerS,
    reference: "multiprocess/default",
    systems: w8b_systems,
};

/// First argument of the harness run under `mpirun` (rank 0 measures; see [`rank_main`]).
pub(crate) const RANK_ARG: &str = "--w8-rank";

const MPIRUN: [&str; 4] = ["mpirun", "-n", "3", "--oversubscribe"];

/// Environment for `mpirun` here: as root in a container, on loopback.
const MPI_ENV: [(&str, &str); 4] = [
    ("OMPI_ALLOW_RUN_AS_ROOT", "1"),
    ("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"),
    ("OMPI_MCA_btl_tcp_if_include", "lo"),
    ("OMPI_MCA_oob_tcp_if_include", "lo"),
];

fn have_mpirun() -> bool {
    Command::new("mpirun")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Why `multiprocess-mpi/world` cannot run here, if it cannot.
fn ours_skipped() -> Option<&'static str> {
    if !cfg!(feature = "mpi") {
        Some("the harness was built without its `mpi` feature: cargo run --release -p bench --features mpi")
    } else if !have_mpirun() {
        Some("no mpirun on this machine (.ci/install-mpi installs Open MPI)")
    } else {
        None
    }
}

/// Why `mpi4py/futures` cannot run here, if it cannot.
fn mpi4py_skipped() -> Option<&'static str> {
    if !have_mpirun() {
        return Some("no mpirun on this machine");
    }
    let ok = Command::new("python3")
        .args(["-c", "import mpi4py.futures"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    (!ok).then_some("python3 cannot import mpi4py (pip install mpi4py)")
}

fn systems(workload: &'static str, config: Config, local: System) -> Vec<System> {
    let mut systems = vec![local];
    match ours_skipped() {
        None => systems.push(System::new("multiprocess-mpi/world", move || {
            ours_under_mpirun(workload, config)
        })),
        Some(why) => eprintln!("{workload} multiprocess-mpi/world: skipped ({why})"),
    }
    match mpi4py_skipped() {
        None => systems.push(System::new("mpi4py/futures", move || {
            mpi4py(workload, config)
        })),
        Some(why) => eprintln!("{workload} mpi4py/futures: skipped ({why})"),
    }
    systems
}

fn w8_systems(config: Config) -> Vec<System> {
    let (items, runs) = (config.pick(W5_ITEMS), config.pick(W5_RUNS));
    let local = System::new("multiprocess/default", move || {
        w5_pool::w5_map(&multiprocess::Pool::new(PROCESSES)?, items, runs)
    });
    systems("W8", config, local)
}

fn w8b_systems(config: Config) -> Vec<System> {
    let tasks = config.pick(W5B_TASKS);
    let local = System::new("multiprocess/default", move || {
        w5_pool::w5b_apply(&multiprocess::Pool::new(PROCESSES)?, tasks)
    });
    systems("W8b", config, local)
}

/// Runs this harness under `mpirun` and reads rank 0's measure.
fn ours_under_mpirun(workload: &str, config: Config) -> Result<f64> {
    let exe = std::env::current_exe()?;
    let out = Command::new(MPIRUN[0])
        .args(&MPIRUN[1..])
        .arg(exe)
        .arg(RANK_ARG)
        .arg(workload)
        .arg(if config.quick { "quick" } else { "full" })
        .envs(MPI_ENV)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        return Err(format!("mpirun failed: {}", out.status).into());
    }
    let stdout = String::from_utf8(out.stdout)?;
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("w8-value "))
        .ok_or("rank 0 printed no value")?
        .trim()
        .parse::<f64>()
        .map_err(Into::into)
}

/// Rank 0 of `ours_under_mpirun` (worker ranks never reach `main`): measures on a cluster
/// pool and prints `w8-value <v>`.
pub(crate) fn rank_main(args: &[String]) -> Result<()> {
    let config = Config {
        quick: args.get(2).is_some_and(|a| a == "quick"),
    };
    #[cfg(feature = "mpi")]
    {
        let pool = multiprocess::Pool::builder().mpi().build()?;
        let value = match args.get(1).map(String::as_str) {
            Some("W8") => w5_pool::w5_map(&pool, config.pick(W5_ITEMS), config.pick(W5_RUNS))?,
            Some("W8b") => w5_pool::w5b_apply(&pool, config.pick(W5B_TASKS))?,
            other => return Err(format!("unknown workload {other:?}").into()),
        };
        println!("w8-value {value}");
        Ok(())
    }
    #[cfg(not(feature = "mpi"))]
    {
        let _ = config;
        Err("built without the mpi feature".into())
    }
}

fn mpi4py(workload: &str, config: Config) -> Result<f64> {
    let mut launcher: Vec<&str> = MPIRUN.to_vec();
    launcher.extend(["python3", "-m", "mpi4py.futures"]);
    if workload == "W8" {
        let args = [
            config.pick(W5_ITEMS).to_string(),
            config.pick(W5_RUNS).to_string(),
        ];
        let samples = python::samples_us_with(&launcher, &MPI_ENV, W8_MPI4PY, &args)?;
        crate::stats::median(samples).map(|us| us / 1e6)
    } else {
        let tasks = config.pick(W5B_TASKS);
        let (done, elapsed) =
            python::transfer_with(&launcher, &MPI_ENV, W8B_MPI4PY, &[tasks.to_string()])?;
        w5_pool::check("W8b mpi4py", done == tasks as u64)?;
        Ok(tasks as f64 / elapsed.as_secs_f64())
    }
}

/// argv: items, timed runs. The chunking of ours and of `multiprocessing`: len / (4 * 2).
const W8_MPI4PY: &str = r#"
import json
import sys
import time
from mpi4py.futures import MPIPoolExecutor


def square(x):
    return x * x


def main():
    items, runs = int(sys.argv[1]), int(sys.argv[2])
    chunk = max(1, -(-items // 8))
    samples = []
    with MPIPoolExecutor() as ex:
        list(ex.map(square, range(items), chunksize=chunk))
        for _ in range(runs):
            t0 = time.perf_counter_ns()
            out = list(ex.map(square, range(items), chunksize=chunk))
            samples.append(time.perf_counter_ns() - t0)
            assert len(out) == items
    print(json.dumps({"samples_ns": samples}))


if __name__ == "__main__":
    main()
"#;

/// argv: tasks. Two rounds, the second timed (as ours).
const W8B_MPI4PY: &str = r#"
import json
import sys
import time
from mpi4py.futures import MPIPoolExecutor


def trivial(x):
    return x + 1


def main():
    tasks = int(sys.argv[1])
    with MPIPoolExecutor() as ex:
        for _ in range(2):
            t0 = time.perf_counter_ns()
            futs = [ex.submit(trivial, i) for i in range(tasks)]
            total = sum(f.result() for f in futs)
            elapsed = time.perf_counter_ns() - t0
    assert total == tasks * (tasks + 1) // 2
    print(json.dumps({"bytes": tasks, "elapsed_ns": elapsed}))


if __name__ == "__main__":
    main()
"#;
