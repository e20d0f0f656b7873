//! W4 queues: W4 (1 producer -> 1 consumer, `u64` messages), W4b (2 -> 2, same total), both in
//! messages per second; W4c (1 MiB messages, 1 -> 1) in GB/s.
//!
//! Producers and consumers are child processes; the parent only orchestrates. Start-up is not
//! timed: every child reports "ready" on a side queue, then the parent starts the clock and
//! tells the producers how many messages to put. Consumers take messages until they get a stop
//! marker (one per consumer, put by the parent once the producers are done) and report their
//! count and checksum; the clock stops when all reports are in.

use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use multiprocess::{Process, Queue};

use crate::stats::gb_per_s;
use crate::{python, w3_bulk, Config, Counts, Metric, Result, System, Workload};

pub(crate) const WORKLOAD: Workload = Workload {
    name: "W4",
    title: "queue 1P1C: 1,000,000 (quick: 100,000) u64 messages, producer -> consumer processes; \
            median of 5 runs (python: 1)",
    metric: Metric::MsgsPerS,
    reference: "raw/ring",
    systems: systems_w4,
};

pub(crate) const WORKLOAD_B: Workload = Workload {
    name: "W4b",
    title: "queue 2P2C: 1,000,000 (quick: 100,000) u64 messages in total; median of 5 runs \
            (python: 1)",
    metric: Metric::MsgsPerS,
    reference: "python/default",
    systems: systems_w4b,
};

pub(crate) const WORKLOAD_C: Workload = Workload {
    name: "W4c",
    title: "queue bulk: 10,000 (quick: 64) messages of 1 MiB, 1P1C; GB = 10^9 bytes",
    metric: Metric::GbPerS,
    reference: "raw/socketpair",
    systems: systems_w4c,
};

/// Runs of each Rust system in W4 and W4b (its median is reported): one run of the raw ring
/// lasts a few milliseconds and swings by 2-5x between runs on this VM. Python runs once (a
/// run takes seconds).
const RUNS: Counts = Counts { full: 5, quick: 1 };

/// The median of `runs` runs of `f`.
fn median_run(runs: usize, f: impl Fn() -> Result<f64>) -> Result<f64> {
    crate::stats::median((0..runs).map(|_| f()).collect::<Result<Vec<f64>>>()?)
}

const MESSAGES: Counts = Counts {
    full: 1_000_000,
    quick: 100_000,
};

const BULK: Counts = Counts {
    full: 10_000,
    quick: 64,
};

const MIB: usize = 1 << 20;

fn systems_w4(config: Config) -> Vec<System> {
    let n = config.pick(MESSAGES);
    let runs = config.pick(RUNS);
    let mut systems = vec![
        System::new("raw/ring", move || median_run(runs, || raw_ring(n))),
        System::new("multiprocess/default", move || {
            median_run(runs, || ours_u64(1, 1, n))
        }),
    ];
    if python::available() {
        systems.push(System::new("python/default", move || {
            py_u64("queue", 1, 1, n)
        }));
        systems.push(System::new("python/simplequeue", move || {
            py_u64("simple", 1, 1, n)
        }));
    }
    systems
}

fn systems_w4b(config: Config) -> Vec<System> {
    let n = config.pick(MESSAGES);
    let runs = config.pick(RUNS);
    let mut systems = vec![System::new("multiprocess/default", move || {
        median_run(runs, || ours_u64(2, 2, n))
    })];
    if python::available() {
        systems.push(System::new("python/default", move || {
            py_u64("queue", 2, 2, n)
        }));
        systems.push(System::new("python/simplequeue", move || {
            py_u64("simple", 2, 2, n)
        }));
    }
    systems
}

fn systems_w4c(config: Config) -> Vec<System> {
    let n = config.pick(BULK);
    let mut systems = vec![
        System::new("raw/socketpair", move || w3_bulk::raw_socketpair(n)),
        System::new("multiprocess/default", move || ours_bulk(n)),
    ];
    if python::available() {
        systems.push(System::new("python/default", move || {
            let (bytes, elapsed) = python::transfer(
                PYTHON_SCRIPT,
                &["bulk".into(), "1".into(), "1".into(), n.to_string()],
            )?;
            if bytes != (n * MIB) as u64 {
                return Err(format!("python moved {bytes} bytes, expected {}", n * MIB).into());
            }
            gb_per_s(bytes, elapsed)
        }));
    }
    systems
}

fn msgs_per_s(n: usize, elapsed: Duration) -> Result<f64> {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return Err("zero elapsed time".into());
    }
    Ok(n as f64 / secs)
}

// ------------------------------------------------------------------------------------------
// multiprocess

/// Side channels shared by every child: "ready" tokens, "go" counts, consumer reports.
#[derive(Serialize, Deserialize)]
struct Control {
    ready: Queue<u8>,
    go: Queue<u64>,
    report: Queue<(u64, u64)>,
}

impl Control {
    fn new() -> Result<Control> {
        Ok(Control {
            ready: Queue::new(0)?,
            go: Queue::new(0)?,
            report: Queue::new(0)?,
        })
    }

    fn clone_all(&self) -> Control {
        Control {
            ready: self.ready.clone(),
            go: self.go.clone(),
            report: self.report.clone(),
        }
    }
}

/// Stop marker of the u64 workloads (producers put 1..=n).
const STOP: u64 = 0;

fn u64_producer((q, c, first): (Queue<u64>, Control, u64)) {
    let _ = c.ready.put(1);
    let Ok(count) = c.go.get() else { return };
    for i in first..first + count {
        if q.put(i).is_err() {
            return;
        }
    }
}

fn u64_consumer((q, c): (Queue<u64>, Control)) {
    let _ = c.ready.put(1);
    let (mut count, mut sum) = (0u64, 0u64);
    while let Ok(v) = q.get() {
        if v == STOP {
            break;
        }
        count += 1;
        sum = sum.wrapping_add(v);
    }
    let _ = c.report.put((count, sum));
}

fn ours_u64(producers: usize, consumers: usize, n: usize) -> Result<f64> {
    let q: Queue<u64> = Queue::new(0)?;
    let c = Control::new()?;
    let per = (n / producers) as u64;
    let mut children = Vec::new();
    for _ in 0..consumers {
        children.push(Process::builder().start(u64_consumer, (q.clone(), c.clone_all()))?);
    }
    for p in 0..producers {
        let first = 1 + p as u64 * per;
        children.push(Process::builder().start(u64_producer, (q.clone(), c.clone_all(), first))?);
    }
    for _ in 0..producers + consumers {
        c.ready.get()?;
    }
    let start = Instant::now();
    for _ in 0..producers {
        c.go.put(per).map_err(|e| e.to_string())?;
    }
    // The stop markers go after every message: wait for the producers first.
    for p in &mut children[consumers..] {
        p.join()?;
    }
    for _ in 0..consumers {
        q.put(STOP).map_err(|e| e.to_string())?;
    }
    let (mut count, mut sum) = (0u64, 0u64);
    for _ in 0..consumers {
        let (c, s) = c.report.get()?;
        count += c;
        sum = sum.wrapping_add(s);
    }
    let elapsed = start.elapsed();
    for p in &mut children[..consumers] {
        p.join()?;
    }
    let total = per * producers as u64;
    if count != total || sum != total * (total + 1) / 2 {
        return Err(format!("consumers got {count} messages (sum {sum}), expected {total}").into());
    }
    msgs_per_s(total as usize, elapsed)
}

/// A shared byte buffer that serializes as bytes (one copy), not as a sequence of `u8`; the
/// producer puts clones of one `Arc` (as Python puts the same `bytes` object), so it does not
/// copy the payload before `put`.
struct Bytes(std::sync::Arc<Vec<u8>>);

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> std::result::Result<Bytes, E> {
                Ok(Bytes(std::sync::Arc::new(v.to_vec())))
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> std::result::Result<Bytes, E> {
                Ok(Bytes(std::sync::Arc::new(v)))
            }
        }
        d.deserialize_bytes(V)
    }
}

fn bulk_producer((q, c): (Queue<Bytes>, Control)) {
    let _ = c.ready.put(1);
    let Ok(count) = c.go.get() else { return };
    let payload = std::sync::Arc::new(vec![0xab; MIB]);
    for _ in 0..count {
        if q.put(Bytes(payload.clone())).is_err() {
            return;
        }
    }
    let _ = q.put(Bytes(std::sync::Arc::new(Vec::new())));
}

fn ours_bulk(n: usize) -> Result<f64> {
    let q: Queue<Bytes> = Queue::new(0)?;
    let c = Control::new()?;
    let mut p = Process::builder().start(bulk_producer, (q.clone(), c.clone_all()))?;
    c.ready.get()?;
    let start = Instant::now();
    c.go.put(n as u64).map_err(|e| e.to_string())?;
    let mut bytes = 0u64;
    loop {
        let m = q.get()?;
        if m.0.is_empty() {
            break;
        }
        if m.0[MIB - 1] != 0xab {
            return Err("corrupted payload".into());
        }
        bytes += m.0.len() as u64;
    }
    let elapsed = start.elapsed();
    p.join()?;
    if bytes != (n * MIB) as u64 {
        return Err(format!("received {bytes} bytes, expected {}", n * MIB).into());
    }
    gb_per_s(bytes, elapsed)
}

// ------------------------------------------------------------------------------------------
// raw/ring: SPSC ring of 8-byte slots in shared memory, forked producer, spinning both sides

const SLOTS: usize = 4096;

#[repr(C)]
struct RawRing {
    ready: std::sync::atomic::AtomicU64,
    _p0: [u64; 15],
    tail: std::sync::atomic::AtomicU64,
    _p1: [u64; 15],
    head: std::sync::atomic::AtomicU64,
    _p2: [u64; 15],
    slots: [std::cell::UnsafeCell<u64>; SLOTS],
}

fn raw_ring(n: usize) -> Result<f64> {
    use std::sync::atomic::Ordering::{Acquire, Release};
    let len = std::mem::size_of::<RawRing>();
    let shm = crate::raw::Shm::new(len)?;
    // SAFETY: the mapping is zeroed, large enough and page-aligned; all-zero is a valid
    // RawRing (atomics and plain integers), and it stays mapped while `shm` lives.
    let ring: &RawRing = unsafe { &*(shm.ptr(0, len) as *const RawRing) };
    let total = n as u64;
    let produce = || {
        ring.ready.store(1, Release);
        while ring.ready.load(Acquire) != 2 {
            std::hint::spin_loop();
        }
        let mut head = 0;
        for i in 1..=total {
            let tail = i - 1;
            while tail - head == SLOTS as u64 {
                head = ring.head.load(Acquire);
                std::hint::spin_loop();
            }
            // SAFETY: slot `tail % SLOTS` is free (the consumer is past it) and only this
            // process writes it until `tail` is published.
            unsafe { *ring.slots[tail as usize % SLOTS].get() = i };
            ring.tail.store(i, Release);
        }
        0
    };
    // SAFETY: the child only touches the shared mapping, then _exits.
    let child = unsafe { crate::raw::fork(produce) }?;
    while ring.ready.load(Acquire) != 1 {
        std::hint::spin_loop();
    }
    let start = Instant::now();
    ring.ready.store(2, Release);
    let (mut head, mut tail, mut sum) = (0u64, 0u64, 0u64);
    while head < total {
        while tail == head {
            tail = ring.tail.load(Acquire);
            std::hint::spin_loop();
        }
        while head < tail {
            // SAFETY: slots between head and an acquired tail are published and not
            // rewritten until `head` moves past them.
            sum = sum.wrapping_add(unsafe { *ring.slots[head as usize % SLOTS].get() });
            head += 1;
        }
        ring.head.store(head, Release);
    }
    let elapsed = start.elapsed();
    let waited = child.wait();
    waited?;
    if sum != total * (total + 1) / 2 {
        return Err("raw ring lost messages".into());
    }
    msgs_per_s(n, elapsed)
}

// ------------------------------------------------------------------------------------------
// Python

fn py_u64(kind: &str, producers: usize, consumers: usize, n: usize) -> Result<f64> {
    let args = [
        kind.to_string(),
        producers.to_string(),
        consumers.to_string(),
        n.to_string(),
    ];
    let (count, elapsed) = python::transfer(PYTHON_SCRIPT, &args)?;
    let per = n / producers;
    if count != (per * producers) as u64 {
        return Err(format!("python consumers got {count} messages").into());
    }
    msgs_per_s(count as usize, elapsed)
}

/// argv: kind (queue | simple | bulk), producers, consumers, count. Prints
/// `{"bytes": <messages, or bytes for bulk>, "elapsed_ns": N}`.
const PYTHON_SCRIPT: &str = r#"
import json
import multiprocessing as mp
import sys
import time

MIB = 1 << 20


def producer(q, ready, go, first, bulk):
    ready.put(1)
    count = go.get()
    if bulk:
        payload = b"\xab" * MIB
        for _ in range(count):
            q.put(payload)
        q.put(b"")
    else:
        for i in range(first, first + count):
            q.put(i)


def consumer(q, ready, report, bulk):
    ready.put(1)
    count = 0
    while True:
        v = q.get()
        if bulk:
            if not v:
                break
            count += len(v)
        else:
            if v == 0:
                break
            count += 1
    report.put(count)


def main():
    kind, producers, consumers, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    bulk = kind == "bulk"
    q = mp.SimpleQueue() if kind == "simple" else mp.Queue()
    ready, go, report = mp.Queue(), mp.Queue(), mp.Queue()
    per = n // producers
    cons = [mp.Process(target=consumer, args=(q, ready, report, bulk)) for _ in range(consumers)]
    prods = [mp.Process(target=producer, args=(q, ready, go, 1 + p * per, bulk)) for p in range(producers)]
    for p in cons + prods:
        p.start()
    for _ in range(producers + consumers):
        ready.get()
    t0 = time.perf_counter_ns()
    for _ in range(producers):
        go.put(per)
    if not bulk:
        for p in prods:
            p.join()
        for _ in range(consumers):
            q.put(0)
    total = sum(report.get() for _ in range(consumers))
    elapsed = time.perf_counter_ns() - t0
    for p in cons + prods:
        p.join()
    print(json.dumps({"bytes": total, "elapsed_ns": elapsed}))


if __name__ == "__main__":
    main()
"#;
