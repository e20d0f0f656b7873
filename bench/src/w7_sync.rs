//! W7 locks and events across processes.
//!
//! - W7a: an uncontended lock + unlock pair, `ns_per_op` (mean of a 10M-pair loop: a pair is
//!   ~10 ns, far below the clock's cost, so pairs are not timed one by one).
//! - W7b: two processes increment one shared counter under the lock, 1,000,000 increments in
//!   all, `seconds` from "go" until both are done (process start-up excluded: both sides
//!   wait for a start flag, and the parent stops the clock when the child's done flag is up,
//!   before joining it); the median of 5 runs.
//! - W7c: event ping-pong between two processes, `median_us` per round trip.
//!
//! References, written here on `libc`: `raw/futex` is a bare futex word in a shared anonymous
//! mapping (Drepper's three-state mutex for W7a/W7b; two flag words with `FUTEX_WAIT`/
//! `FUTEX_WAKE` for W7c); `raw/futex-spin` (W7c) is the same ping-pong spinning up to 5 us
//! before it sleeps, as `Event::wait` does; `raw/pthread-robust` is a process-shared robust pthread mutex in the
//! same kind of mapping (W7a/W7b).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use multiprocess::{AtomicValue, Event, Lock, Process, Value};

use crate::raw::{futex_wait, futex_wake, Shm};
use crate::stats::{median, time_each};
use crate::{python, raw, Config, Counts, Metric, Result, System, Workload};

pub(crate) const W7A: Workload = Workload {
    name: "W7a",
    title: "uncontended lock + unlock pair (10M; quick: 200k)",
    metric: Metric::NsPerOp,
    reference: "raw/futex",
    systems: systems_a,
};

pub(crate) const W7B: Workload = Workload {
    name: "W7b",
    title: "two processes, one counter under the lock, 1M increments (quick: 20k)",
    metric: Metric::Seconds,
    reference: "raw/pthread-robust",
    systems: systems_b,
};

pub(crate) const W7C: Workload = Workload {
    name: "W7c",
    title: "event ping-pong between two processes (20k round trips; quick: 1k)",
    metric: Metric::MedianUs,
    reference: "raw/futex",
    systems: systems_c,
};

const PAIRS: Counts = Counts {
    full: 10_000_000,
    quick: 200_000,
};
const PY_PAIRS: Counts = Counts {
    full: 1_000_000,
    quick: 50_000,
};
const INCREMENTS: Counts = Counts {
    full: 1_000_000,
    quick: 20_000,
};
const ROUND_TRIPS: Counts = Counts {
    full: 20_000,
    quick: 1_000,
};
const WARMUP: usize = 100;

fn systems_a(config: Config) -> Vec<System> {
    let n = config.pick(PAIRS);
    let mut systems = vec![
        System::new("raw/futex", move || raw_pairs(n, RawKind::Futex)),
        System::new("raw/pthread-robust", move || raw_pairs(n, RawKind::Pthread)),
        System::new("multiprocess/default", move || ours_pairs(n)),
    ];
    if python::available() {
        let args = [config.pick(PY_PAIRS).to_string()];
        systems.push(System::new("python/default", move || {
            let (count, elapsed) = python::transfer(PY_PAIRS_SCRIPT, &args)?;
            Ok(elapsed.as_secs_f64() * 1e9 / count as f64)
        }));
    }
    systems
}

fn systems_b(config: Config) -> Vec<System> {
    let n = config.pick(INCREMENTS);
    let mut systems = vec![
        System::new("raw/futex", move || {
            median_of(REPEATS, || raw_counter(n, RawKind::Futex))
        }),
        System::new("raw/pthread-robust", move || {
            median_of(REPEATS, || raw_counter(n, RawKind::Pthread))
        }),
        System::new("multiprocess/default", move || {
            median_of(REPEATS, || ours_counter(n))
        }),
    ];
    if python::available() {
        let args = [n.to_string()];
        systems.push(System::new("python/default", move || {
            median_of(REPEATS, || {
                let (count, elapsed) = python::transfer(PY_COUNTER_SCRIPT, &args)?;
                if count != n as u64 {
                    return Err(format!("python counted {count}, expected {n}").into());
                }
                Ok(elapsed.as_secs_f64())
            })
        }));
    }
    systems
}

/// Runs of W7b per system: a run is one scheduling pattern on a shared machine, so the
/// median of several is reported.
const REPEATS: usize = 5;

fn median_of(runs: usize, mut run: impl FnMut() -> Result<f64>) -> Result<f64> {
    let samples = (0..runs).map(|_| run()).collect::<Result<Vec<_>>>()?;
    median(samples)
}

fn systems_c(config: Config) -> Vec<System> {
    let n = config.pick(ROUND_TRIPS);
    let mut systems = vec![
        System::new("raw/futex", move || raw_ping_pong(n, false)),
        System::new("raw/futex-spin", move || raw_ping_pong(n, true)),
        System::new("multiprocess/default", move || ours_ping_pong(n)),
    ];
    if python::available() {
        let args = [WARMUP.to_string(), n.to_string()];
        systems.push(System::new("python/default", move || {
            median(python::samples_us(PY_EVENT_SCRIPT, &args)?)
        }));
    }
    systems
}

// ---------------------------------------------------------------- ours

fn ours_pairs(n: usize) -> Result<f64> {
    let lock = Lock::new()?;
    for _ in 0..1000 {
        drop(lock.lock());
    }
    let start = Instant::now();
    for _ in 0..n {
        drop(lock.lock());
    }
    Ok(start.elapsed().as_secs_f64() * 1e9 / n as f64)
}

type CounterArgs = (Value<u64>, AtomicValue<AtomicU32>, u64);

/// Both sides: announce readiness, wait for go (flag 2), count, then add one to `flags`'s done
/// count (bits above 8).
fn count_side((value, flags, n): CounterArgs) {
    flags.fetch_add(1, Ordering::SeqCst);
    while flags.load(Ordering::SeqCst) & 0xff < 2 {
        std::hint::spin_loop();
    }
    for _ in 0..n {
        *value.lock().unwrap() += 1;
    }
    flags.fetch_add(1 << 8, Ordering::SeqCst);
}

fn ours_counter(n: usize) -> Result<f64> {
    let value = Value::new(0u64)?;
    let flags = AtomicValue::new(AtomicU32::new(0))?;
    let half = (n / 2) as u64;
    let mut child = Process::builder().start(count_side, (value.clone(), flags.clone(), half))?;
    while flags.load(Ordering::SeqCst) & 0xff < 1 {
        std::thread::sleep(Duration::from_micros(100));
    }
    let start = Instant::now();
    flags.fetch_add(1, Ordering::SeqCst); // go; the child sees 2
    for _ in 0..(n as u64 - half) {
        *value.lock().unwrap() += 1;
    }
    while flags.load(Ordering::SeqCst) >> 8 < 1 {
        std::hint::spin_loop();
    }
    let elapsed = start.elapsed();
    child.join()?;
    let total = value.get();
    if total != n as u64 {
        return Err(format!("counted {total}, expected {n}").into());
    }
    Ok(elapsed.as_secs_f64())
}

fn echo_events((ping, pong, n): (Event, Event, usize)) {
    for _ in 0..n {
        ping.wait();
        ping.clear();
        pong.set();
    }
}

fn ours_ping_pong(n: usize) -> Result<f64> {
    let (ping, pong) = (Event::new()?, Event::new()?);
    let mut child =
        Process::builder().start(echo_events, (ping.clone(), pong.clone(), WARMUP + n))?;
    let samples = time_each(WARMUP, n, || {
        ping.set();
        pong.wait();
        pong.clear();
        Ok(())
    });
    child.join()?;
    median(samples?)
}

// ---------------------------------------------------------------- raw

#[derive(Clone, Copy)]
enum RawKind {
    Futex,
    Pthread,
}

/// Drepper's three-state futex mutex: 0 free, 1 locked, 2 locked with waiters.
fn futex_lock(w: &AtomicU32) {
    if w.compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
        .is_ok()
    {
        return;
    }
    while w.swap(2, Ordering::Acquire) != 0 {
        futex_wait(w, 2);
    }
}

fn futex_unlock(w: &AtomicU32) {
    if w.swap(0, Ordering::Release) == 2 {
        futex_wake(w, 1);
    }
}

/// A lock at offset 0 of `shm`, of either kind.
struct RawLock<'a> {
    kind: RawKind,
    shm: &'a Shm,
}

impl<'a> RawLock<'a> {
    fn new(kind: RawKind, shm: &'a Shm) -> Result<Self> {
        if let RawKind::Pthread = kind {
            // SAFETY: initializes a pthread mutex in zeroed shared memory large enough for it,
            // with a local attribute object destroyed afterwards.
            unsafe {
                let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
                libc::pthread_mutexattr_init(&mut attr);
                libc::pthread_mutexattr_setpshared(&mut attr, libc::PTHREAD_PROCESS_SHARED);
                libc::pthread_mutexattr_setrobust(&mut attr, libc::PTHREAD_MUTEX_ROBUST);
                let r = libc::pthread_mutex_init(shm.ptr(0, 64).cast(), &attr);
                libc::pthread_mutexattr_destroy(&mut attr);
                if r != 0 {
                    return Err(std::io::Error::from_raw_os_error(r).into());
                }
            }
        }
        Ok(RawLock { kind, shm })
    }

    #[inline]
    fn lock(&self) {
        match self.kind {
            RawKind::Futex => futex_lock(self.shm.atomic_u32(0)),
            // SAFETY: an initialized process-shared mutex.
            RawKind::Pthread => unsafe {
                let m: *mut libc::pthread_mutex_t = self.shm.ptr(0, 64).cast();
                if libc::pthread_mutex_lock(m) == libc::EOWNERDEAD {
                    libc::pthread_mutex_consistent(m);
                }
            },
        }
    }

    #[inline]
    fn unlock(&self) {
        match self.kind {
            RawKind::Futex => futex_unlock(self.shm.atomic_u32(0)),
            // SAFETY: held by this thread.
            RawKind::Pthread => unsafe {
                libc::pthread_mutex_unlock(self.shm.ptr(0, 64).cast());
            },
        }
    }
}

/// Layout of the raw systems' mapping: the lock at 0 (a pthread mutex is 40 bytes), the
/// counter at 64, the start/done flags at 128, the ping and pong words at 192 and 256.
const COUNTER: usize = 64;
const FLAGS: usize = 128;
const PING: usize = 192;
const PONG: usize = 256;

fn raw_pairs(n: usize, kind: RawKind) -> Result<f64> {
    let shm = Shm::new(4096)?;
    let lock = RawLock::new(kind, &shm)?;
    for _ in 0..1000 {
        lock.lock();
        lock.unlock();
    }
    let start = Instant::now();
    for _ in 0..n {
        lock.lock();
        lock.unlock();
    }
    Ok(start.elapsed().as_secs_f64() * 1e9 / n as f64)
}

fn raw_count(lock: &RawLock<'_>, counter: &AtomicU64, n: u64) {
    for _ in 0..n {
        lock.lock();
        // A plain read-modify-write, made exclusive by the lock.
        counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        lock.unlock();
    }
}

fn raw_counter(n: usize, kind: RawKind) -> Result<f64> {
    let shm = Shm::new(4096)?;
    let lock = RawLock::new(kind, &shm)?;
    let counter = shm.atomic_u64(COUNTER);
    let flags = shm.atomic_u32(FLAGS);
    let half = (n / 2) as u64;
    let body = || {
        flags.fetch_add(1, Ordering::SeqCst);
        while flags.load(Ordering::SeqCst) & 0xff < 2 {
            std::hint::spin_loop();
        }
        raw_count(&lock, counter, half);
        flags.fetch_add(1 << 8, Ordering::SeqCst);
        0
    };
    // SAFETY: the child only touches the inherited shared mapping and futexes.
    let child = unsafe { raw::fork(body) }?;
    while flags.load(Ordering::SeqCst) & 0xff < 1 {
        std::thread::sleep(Duration::from_micros(100));
    }
    let start = Instant::now();
    flags.fetch_add(1, Ordering::SeqCst);
    raw_count(&lock, counter, n as u64 - half);
    while flags.load(Ordering::SeqCst) >> 8 < 1 {
        std::hint::spin_loop();
    }
    let elapsed = start.elapsed();
    child.wait()?;
    let total = counter.load(Ordering::SeqCst);
    if total != n as u64 {
        return Err(format!("counted {total}, expected {n}").into());
    }
    Ok(elapsed.as_secs_f64())
}

/// How long `raw/futex-spin` spins before sleeping (as `Event::wait` does).
const SPIN: Duration = Duration::from_micros(5);

/// Waits until `word` is 1, then sets it back to 0; with `spin`, first spins up to [`SPIN`].
fn raw_take(word: &AtomicU32, spin: bool) {
    if spin {
        let start = Instant::now();
        'spin: while start.elapsed() < SPIN {
            for _ in 0..32 {
                if word
                    .compare_exchange(1, 0, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return;
                }
                std::hint::spin_loop();
            }
            if start.elapsed() >= SPIN {
                break 'spin;
            }
        }
    }
    while word
        .compare_exchange(1, 0, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        futex_wait(word, 0);
    }
}

fn raw_give(word: &AtomicU32) {
    word.store(1, Ordering::Release);
    futex_wake(word, 1);
}

fn raw_ping_pong(n: usize, spin: bool) -> Result<f64> {
    let shm = Shm::new(4096)?;
    let (ping, pong) = (shm.atomic_u32(PING), shm.atomic_u32(PONG));
    let total = WARMUP + n;
    let body = || {
        for _ in 0..total {
            raw_take(ping, spin);
            raw_give(pong);
        }
        0
    };
    // SAFETY: the child only touches the inherited shared mapping and futexes.
    let child = unsafe { raw::fork(body) }?;
    let samples = time_each(WARMUP, n, || {
        raw_give(ping);
        raw_take(pong, spin);
        Ok(())
    });
    child.wait()?;
    median(samples?)
}

// ---------------------------------------------------------------- python

/// argv: pairs. Prints the pair count as "bytes" and the loop's time.
const PY_PAIRS_SCRIPT: &str = r#"
import json
import multiprocessing
import sys
import time


def main():
    n = int(sys.argv[1])
    lock = multiprocessing.Lock()
    acquire, release = lock.acquire, lock.release
    for _ in range(1000):
        acquire()
        release()
    t0 = time.perf_counter_ns()
    for _ in range(n):
        acquire()
        release()
    elapsed = time.perf_counter_ns() - t0
    print(json.dumps({"bytes": n, "elapsed_ns": elapsed}))


if __name__ == "__main__":
    main()
"#;

/// argv: increments in all. Prints the final count as "bytes" and the time from go to done.
const PY_COUNTER_SCRIPT: &str = r#"
import json
import multiprocessing
import sys
import time


def count(value, ready, go, done, n):
    ready.set()
    go.wait()
    lock = value.get_lock()
    for _ in range(n):
        with lock:
            value.value += 1
    done.set()


def main():
    n = int(sys.argv[1])
    half = n // 2
    value = multiprocessing.Value("q", 0)
    ready, go, done = (multiprocessing.Event() for _ in range(3))
    p = multiprocessing.Process(target=count, args=(value, ready, go, done, half))
    p.start()
    ready.wait()
    t0 = time.perf_counter_ns()
    go.set()
    lock = value.get_lock()
    for _ in range(n - half):
        with lock:
            value.value += 1
    done.wait()
    elapsed = time.perf_counter_ns() - t0
    p.join()
    print(json.dumps({"bytes": value.value, "elapsed_ns": elapsed}))


if __name__ == "__main__":
    main()
"#;

/// argv: warm-up round trips, timed round trips.
const PY_EVENT_SCRIPT: &str = r#"
import json
import multiprocessing
import sys
import time


def echo(ping, pong, n):
    for _ in range(n):
        ping.wait()
        ping.clear()
        pong.set()


def main():
    warmup, n = int(sys.argv[1]), int(sys.argv[2])
    ping, pong = multiprocessing.Event(), multiprocessing.Event()
    p = multiprocessing.Process(target=echo, args=(ping, pong, warmup + n))
    p.start()

    def round_trip():
        ping.set()
        pong.wait()
        pong.clear()

    for _ in range(warmup):
        round_trip()
    clock = time.perf_counter_ns
    samples = [0] * n
    for i in range(n):
        t0 = clock()
        round_trip()
        samples[i] = clock() - t0
    p.join()
    print(json.dumps({"samples_ns": samples}))


if __name__ == "__main__":
    main()
"#;
