//! Benchmark harness for `multiprocess`.
//!
//! ```text
//! cargo run --release -p bench -- [--json] [--quick] [W1 W2 ...]
//! ```
//!
//! Each workload measures several *systems* (our crate, Python's
//! `multiprocessing`, raw-syscall references) and prints a table with the
//! ratio of every system to the workload's reference system. With `--json`
//! the table goes to stderr and stdout carries one JSON object per result:
//! `{"workload":"W1","system":"raw/fork","metric":"median_us","value":98.1,"unit":"us"}`.
//!
//! A new workload is one module exporting a [`Workload`] constant, added to
//! [`WORKLOADS`].

mod python;
mod raw;
mod stats;
mod w10_imap;
mod w11_async;
mod w1_spawn;
mod w2_pingpong;
mod w3_bulk;
mod w4_queue;
mod w5_pool;
mod w7_sync;
mod w8_mpi;
mod w9_listener;

use std::io::Write;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Argument that makes the binary exit immediately: the child of `raw/exec`.
pub(crate) const RAW_EXEC_CHILD: &str = "--raw-exec-child";

/// Every workload, in the order they run when none is named.
const WORKLOADS: &[Workload] = &[
    w1_spawn::WORKLOAD,
    w2_pingpong::WORKLOAD,
    w3_bulk::WORKLOAD,
    w4_queue::WORKLOAD,
    w4_queue::WORKLOAD_B,
    w4_queue::WORKLOAD_C,
    w5_pool::W5,
    w5_pool::W5B,
    w5_pool::W6,
    w7_sync::W7A,
    w7_sync::W7B,
    w7_sync::W7C,
    w10_imap::W10,
    w9_listener::W9A,
    w9_listener::W9A_UNIX,
    w9_listener::W9B,
    w11_async::W11,
    w8_mpi::W8,
    w8_mpi::W8B,
];

/// Error type of the harness: any error, with its message.
pub(crate) type Error = Box<dyn std::error::Error>;
/// Result type of the harness.
pub(crate) type Result<T> = std::result::Result<T, Error>;

/// Run-wide settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    /// Small counts for CI's smoke pass.
    pub(crate) quick: bool,
}

impl Config {
    /// The count to use for this run.
    pub(crate) fn pick(self, counts: Counts) -> usize {
        if self.quick {
            counts.quick
        } else {
            counts.full
        }
    }
}

/// A repetition count (runs, round trips, bytes...) for a full and a quick run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Counts {
    pub(crate) full: usize,
    pub(crate) quick: usize,
}

/// What a workload reports; every system of a workload reports the same metric.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Metric {
    /// Median latency in microseconds (lower is better).
    MedianUs,
    /// Throughput in GB/s, GB = 10^9 bytes (higher is better).
    GbPerS,
    /// Mean time of one operation in nanoseconds (lower is better).
    NsPerOp,
    /// Wall time of the whole run in seconds (lower is better).
    Seconds,
    /// Tasks completed per second (higher is better).
    TasksPerS,
    /// Throughput in messages per second (higher is better).
    MsgsPerS,
}

impl Metric {
    fn name(self) -> &'static str {
        match self {
            Metric::MedianUs => "median_us",
            Metric::GbPerS => "gb_per_s",
            Metric::NsPerOp => "ns_per_op",
            Metric::Seconds => "seconds",
            Metric::TasksPerS => "tasks_per_s",
            Metric::MsgsPerS => "msgs_per_s",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Metric::MedianUs => "us",
            Metric::GbPerS => "GB/s",
            Metric::NsPerOp => "ns",
            Metric::Seconds => "s",
            Metric::TasksPerS => "tasks/s",
            Metric::MsgsPerS => "msg/s",
        }
    }
}

/// One benchmark: a set of systems measured with the same metric.
#[derive(Debug)]
pub(crate) struct Workload {
    /// Short name used on the command line and in JSON ("W1").
    pub(crate) name: &'static str,
    /// One-line description for the table header.
    pub(crate) title: &'static str,
    pub(crate) metric: Metric,
    /// The system every ratio is relative to.
    pub(crate) reference: &'static str,
    /// Builds the systems to measure, in run order.
    pub(crate) systems: fn(Config) -> Vec<System>,
}

/// One measured implementation: a name and a closure returning the metric's value.
pub(crate) struct System {
    pub(crate) name: &'static str,
    run: Box<dyn FnOnce() -> Result<f64>>,
}

impl System {
    pub(crate) fn new(name: &'static str, run: impl FnOnce() -> Result<f64> + 'static) -> Self {
        System {
            name,
            run: Box::new(run),
        }
    }
}

/// One result line, serialized as-is for `--json`.
#[derive(Debug, serde::Serialize)]
struct Row {
    workload: &'static str,
    system: &'static str,
    metric: &'static str,
    value: f64,
    unit: &'static str,
}

/// Parsed command line.
struct Args {
    json: bool,
    config: Config,
    workloads: Vec<&'static Workload>,
}

const USAGE: &str = "usage: bench [--json] [--quick] [W1 W2 ...]";

/// `Ok(None)` for `--help`.
fn parse_args() -> std::result::Result<Option<Args>, String> {
    let mut json = false;
    let mut quick = false;
    let mut workloads: Vec<&'static Workload> = Vec::new();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--json" => json = true,
            "--quick" => quick = true,
            "-h" | "--help" => return Ok(None),
            name => {
                let w = WORKLOADS
                    .iter()
                    .find(|w| w.name.eq_ignore_ascii_case(name))
                    .ok_or_else(|| {
                        let known: Vec<_> = WORKLOADS.iter().map(|w| w.name).collect();
                        format!(
                            "unknown workload or option {name:?} (workloads: {})\n{USAGE}",
                            known.join(" ")
                        )
                    })?;
                if !workloads.iter().any(|x| x.name == w.name) {
                    workloads.push(w);
                }
            }
        }
    }
    if workloads.is_empty() {
        workloads = WORKLOADS.iter().collect();
    }
    Ok(Some(Args {
        json,
        config: Config { quick },
        workloads,
    }))
}

fn main() -> ExitCode {
    // The `raw/exec` child: return before doing anything else, so that
    // reference measures exec + process start-up only.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == RAW_EXEC_CHILD)
    {
        return ExitCode::SUCCESS;
    }
    // Spawn/forkserver children re-execute this binary; init() diverts them.
    multiprocess::init();
    // Rank 0 of the harness re-run under mpirun by W8/W8b (worker ranks never get here).
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(w8_mpi::RANK_ARG) {
        return match w8_mpi::rank_main(&argv[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("W8 rank 0: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // procspawn (a W5b/W6 peer) re-executes this binary for its workers too.
    procspawn::init();

    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    start_watchdog(args.config);
    let mut failures = 0;
    for workload in &args.workloads {
        failures += run_workload(workload, &args);
    }
    if failures > 0 {
        eprintln!("{failures} system(s) failed");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Measures every system of `workload`, prints its table (and JSON lines);
/// returns the number of systems that failed.
fn run_workload(workload: &Workload, args: &Args) -> usize {
    let mut rows = Vec::new();
    let mut failures = 0;
    for system in (workload.systems)(args.config) {
        eprint!("{} {} ...", workload.name, system.name);
        let start = Instant::now();
        watch(Some((format!("{} {}", workload.name, system.name), start)));
        let outcome = (system.run)();
        watch(None);
        match outcome {
            Ok(value) => {
                eprintln!(" {:.1} s", start.elapsed().as_secs_f64());
                rows.push(Row {
                    workload: workload.name,
                    system: system.name,
                    metric: workload.metric.name(),
                    value,
                    unit: workload.metric.unit(),
                });
            }
            Err(e) => {
                eprintln!(" FAILED: {e}");
                failures += 1;
            }
        }
    }
    print_table(workload, &rows, args);
    if args.json {
        let mut out = std::io::stdout().lock();
        for row in &rows {
            let row = Row {
                value: round_significant(row.value),
                ..*row
            };
            let line = serde_json::to_string(&row).expect("a Row always serializes");
            writeln!(out, "{line}").expect("write to stdout");
        }
    }
    failures
}

/// The system being measured and when it started, for the watchdog.
static RUNNING: Mutex<Option<(String, Instant)>> = Mutex::new(None);

fn watch(running: Option<(String, Instant)>) {
    *RUNNING.lock().unwrap_or_else(|p| p.into_inner()) = running;
}

/// A hang must not pass for a slow run: a system that gives no result within the limit
/// (2 minutes in a quick run, 20 in a full one, far above any system's time) is reported by
/// name, our children are killed, and the harness exits with status 3.
fn start_watchdog(config: Config) {
    let limit = Duration::from_secs(if config.quick { 120 } else { 1200 });
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_secs(1));
        let stuck = RUNNING
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|(_, start)| start.elapsed() > limit)
            .map(|(name, _)| name.clone());
        if let Some(name) = stuck {
            eprintln!(
                " FAILED: {name} gave no result within {} s (a hang); stopping",
                limit.as_secs()
            );
            for child in multiprocess::active_children() {
                let _ = child.kill();
            }
            std::process::exit(3);
        }
    });
}

/// Six significant digits: enough for every ratio, whatever the magnitude (a pool map of a
/// few milliseconds in seconds, or millions of messages per second).
fn round_significant(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let scale = 10f64.powi(5 - x.abs().log10().floor() as i32);
    (x * scale).round() / scale
}

/// The table's value column: at least four significant digits below 1, three decimals above.
fn show(x: f64) -> String {
    if x != 0.0 && x.abs() < 1.0 {
        let decimals = (3 - x.abs().log10().floor() as i32).clamp(3, 9) as usize;
        format!("{x:.decimals$}")
    } else {
        format!("{x:.3}")
    }
}

/// The human table: on stdout, or on stderr when stdout carries JSON.
fn print_table(workload: &Workload, rows: &[Row], args: &Args) {
    let reference = rows
        .iter()
        .find(|r| r.system == workload.reference)
        .map(|r| r.value);
    let ratio_head = format!("x {}", workload.reference);
    let mode = if args.config.quick { " [quick]" } else { "" };
    let mut table = format!("{}: {}{mode}\n", workload.name, workload.title);
    table += &format!(
        "  {:<26} {:<10} {:>12} {:<5} {:>17}\n",
        "system", "metric", "value", "unit", ratio_head
    );
    for row in rows {
        let ratio = match reference {
            Some(r) if r > 0.0 => format!("{:.2}", row.value / r),
            _ => "-".to_string(),
        };
        table += &format!(
            "  {:<26} {:<10} {:>12} {:<5} {:>17}\n",
            row.system,
            row.metric,
            show(row.value),
            row.unit,
            ratio
        );
    }
    if args.json {
        eprintln!("{table}");
    } else {
        println!("{table}");
    }
}

impl std::fmt::Debug for System {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("System")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}
