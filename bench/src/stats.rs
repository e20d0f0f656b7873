//! Shared measurement helpers: the one timing loop and the statistics every
//! workload reports.

use std::time::{Duration, Instant};

use crate::Result;

/// Runs `op` `warmup` times untimed, then `runs` times, timing each call
/// individually; returns the samples in microseconds.
///
/// `Instant::now()` is a vDSO `clock_gettime` (~25 ns), under 1% of the
/// fastest operation timed this way (a socketpair round trip, 15-20 us here).
pub(crate) fn time_each(
    warmup: usize,
    runs: usize,
    mut op: impl FnMut() -> Result<()>,
) -> Result<Vec<f64>> {
    for _ in 0..warmup {
        op()?;
    }
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        op()?;
        samples.push(us(start.elapsed()));
    }
    Ok(samples)
}

/// Median of the samples (mean of the two middle ones for an even count).
pub(crate) fn median(mut samples: Vec<f64>) -> Result<f64> {
    if samples.is_empty() {
        return Err("no samples to take a median of".into());
    }
    samples.sort_by(f64::total_cmp);
    let mid = samples.len() / 2;
    Ok(if samples.len() % 2 == 1 {
        samples[mid]
    } else {
        (samples[mid - 1] + samples[mid]) / 2.0
    })
}

/// Throughput in GB/s (10^9 bytes per second).
pub(crate) fn gb_per_s(bytes: u64, elapsed: Duration) -> Result<f64> {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return Err("zero elapsed time".into());
    }
    Ok(bytes as f64 / 1e9 / secs)
}

/// A duration in microseconds.
pub(crate) fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]).unwrap(), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]).unwrap(), 2.5);
        assert!(median(Vec::new()).is_err());
    }

    #[test]
    fn throughput() {
        assert_eq!(
            gb_per_s(2_000_000_000, Duration::from_secs(2)).unwrap(),
            1.0
        );
    }
}
