//! Runs the embedded Python `multiprocessing` scripts and reads their results.
//!
//! A script is written to a temporary file (deleted afterwards) rather than
//! passed with `python3 -c`: the spawn and forkserver start methods re-import
//! the main module in the child, which needs a real file. Every script prints
//! one JSON object as its last line of stdout, in one of two shapes:
//! `{"samples_ns": [..]}` (per-operation times) or
//! `{"bytes": N, "elapsed_ns": N}` (a timed transfer). Statistics are computed
//! on the Rust side with the same helpers as every other system.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

use crate::Result;

const PYTHON: &str = "python3";

/// Whether `python3` runs; prints a note (once) when it does not, so the
/// workloads can leave out their `python/*` systems.
pub(crate) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let ok = Command::new(PYTHON)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("note: {PYTHON} not found: skipping the python/* systems");
        }
        ok
    })
}

/// Whether `python3` can import `module` (an optional peer such as `aiomultiprocess`).
pub(crate) fn imports(module: &str) -> bool {
    Command::new(PYTHON)
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs a `{"samples_ns": [..]}` script; returns the samples in microseconds.
pub(crate) fn samples_us(script: &str, args: &[String]) -> Result<Vec<f64>> {
    samples_us_with(&[PYTHON], &[], script, args)
}

/// As [`samples_us`], the script run by `launcher` (its first word the program, e.g.
/// `mpirun -n 3 python3 -m mpi4py.futures`).
pub(crate) fn samples_us_with(
    launcher: &[&str],
    env: &[(&str, &str)],
    script: &str,
    args: &[String],
) -> Result<Vec<f64>> {
    let out = run(launcher, env, script, args)?;
    let samples = out["samples_ns"]
        .as_array()
        .ok_or("python output has no samples_ns array")?;
    samples
        .iter()
        .map(|v| v.as_f64().map(|ns| ns / 1e3))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| "python samples_ns holds a non-number".into())
}

/// Runs a `{"bytes": N, "elapsed_ns": N}` script.
pub(crate) fn transfer(script: &str, args: &[String]) -> Result<(u64, Duration)> {
    transfer_with(&[PYTHON], &[], script, args)
}

/// As [`transfer`], the script run by `launcher`.
pub(crate) fn transfer_with(
    launcher: &[&str],
    env: &[(&str, &str)],
    script: &str,
    args: &[String],
) -> Result<(u64, Duration)> {
    let out = run(launcher, env, script, args)?;
    let field = |name: &str| {
        out[name]
            .as_u64()
            .ok_or_else(|| format!("python output has no integer {name}"))
    };
    Ok((field("bytes")?, Duration::from_nanos(field("elapsed_ns")?)))
}

/// A temporary script file, removed on drop.
struct TempScript(PathBuf);

impl Drop for TempScript {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs `script` with `args`; its stderr goes to ours, its last stdout line
/// is parsed as JSON.
fn run(launcher: &[&str], env: &[(&str, &str)], script: &str, args: &[String]) -> Result<Value> {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let file = TempScript(std::env::temp_dir().join(format!(
        "multiprocess-bench-{}-{}.py",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )));
    std::fs::write(&file.0, script)?;
    let (program, rest) = launcher.split_first().ok_or("no launcher")?;
    let output = Command::new(program)
        .args(rest)
        .envs(env.iter().copied())
        .arg(&file.0)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()?;
    if !output.status.success() {
        return Err(format!("{} script failed: {}", launcher.join(" "), output.status).into());
    }
    let stdout = String::from_utf8(output.stdout)?;
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .ok_or("python script printed nothing")?;
    Ok(serde_json::from_str(line)?)
}
