//! W3 bulk: 1 GiB sent child -> parent as 1 MiB messages; throughput in GB/s.
//!
//! Child start-up is not timed: the child first sends a one-byte "ready"
//! message; on it the parent starts the clock, sends the number of messages
//! (8 bytes, little endian) and stops the clock when it has received them
//! all. Payloads are filled with
//! a non-zero byte so no side is reading lazily mapped zero pages.

use std::time::{Duration, Instant};

use multiprocess::{Connection, Pipe, Process};

use crate::stats::gb_per_s;
use crate::{python, raw, Config, Counts, Metric, Result, System, Workload};

pub(crate) const WORKLOAD: Workload = Workload {
    name: "W3",
    title: "bulk: 1 GiB (quick: 64 MiB) as 1 MiB messages child -> parent; GB = 10^9 bytes",
    metric: Metric::GbPerS,
    reference: "raw/socketpair",
    systems,
};

const MIB: usize = 1 << 20;

/// The child's "ready" message.
const READY: &[u8] = b"r";

/// Number of 1 MiB messages: 1 GiB (quick: 64 MiB).
const MESSAGES: Counts = Counts {
    full: 1024,
    quick: 64,
};

fn systems(config: Config) -> Vec<System> {
    let messages = config.pick(MESSAGES);
    let mut systems = vec![
        System::new("raw/socketpair", move || raw_socketpair(messages)),
        System::new("multiprocess/default", move || ours(messages)),
    ];
    if python::available() {
        let args = [MIB.to_string(), messages.to_string()];
        systems.push(System::new("python/default", move || {
            let (bytes, elapsed) = python::transfer(PYTHON_SCRIPT, &args)?;
            throughput(messages, bytes, elapsed)
        }));
    }
    systems
}

/// GB/s, after checking that every byte arrived.
fn throughput(messages: usize, bytes: u64, elapsed: Duration) -> Result<f64> {
    let expected = (messages * MIB) as u64;
    if bytes != expected {
        return Err(format!("received {bytes} bytes, expected {expected}").into());
    }
    gb_per_s(bytes, elapsed)
}

/// The child: says it is ready, reads the message count, then sends that
/// many 1 MiB messages.
fn sender(c: Connection) {
    let payload = vec![0xab_u8; MIB];
    if c.send_bytes(READY).is_err() {
        return;
    }
    let Ok(count) = c.recv_bytes() else { return };
    let Ok(count) = <[u8; 8]>::try_from(count.as_slice()) else {
        return;
    };
    for _ in 0..u64::from_le_bytes(count) {
        if c.send_bytes(&payload).is_err() {
            return;
        }
    }
}

fn ours(messages: usize) -> Result<f64> {
    let (a, b) = Pipe::new()?;
    let mut p = Process::builder().start(sender, b)?;
    let result = ours_receive(&a, messages);
    drop(a);
    p.join()?;
    let (bytes, elapsed) = result?;
    throughput(messages, bytes, elapsed)
}

/// Waits for "ready", then times sending the count and receiving everything.
fn ours_receive(a: &Connection, messages: usize) -> Result<(u64, Duration)> {
    let mut buf = vec![0_u8; MIB];
    a.recv_bytes()?;
    let start = Instant::now();
    a.send_bytes(&(messages as u64).to_le_bytes())?;
    let mut bytes = 0;
    for _ in 0..messages {
        // Into a reused buffer: the way to receive bulk data with this API.
        bytes += a.recv_bytes_into(&mut buf)? as u64;
    }
    Ok((bytes, start.elapsed()))
}

/// A forked child write(2)s 1 MiB buffers to a default-buffer socketpair;
/// the parent read(2)s everything into a 1 MiB buffer.
pub(crate) fn raw_socketpair(messages: usize) -> Result<f64> {
    // Allocated before the fork: the child must not call malloc.
    let payload = vec![0xab_u8; MIB];
    let child_send = |fd: &raw::Fd| {
        let mut count = [0_u8; 8];
        if fd.write_all(READY).is_err() || !matches!(fd.read_full(&mut count), Ok(true)) {
            return 1;
        }
        for _ in 0..u64::from_le_bytes(count) {
            if fd.write_all(&payload).is_err() {
                return 1;
            }
        }
        0
    };
    // SAFETY: the child only reads and writes.
    let (child, fd) = unsafe { raw::fork_socketpair(child_send) }?;
    let result = raw_receive(&fd, messages);
    drop(fd);
    child.wait()?;
    let (bytes, elapsed) = result?;
    throughput(messages, bytes, elapsed)
}

/// Waits for "ready", then times sending the count and reading everything.
fn raw_receive(fd: &raw::Fd, messages: usize) -> Result<(u64, Duration)> {
    let mut buf = vec![0_u8; MIB];
    let total = (messages * MIB) as u64;
    if !fd.read_full(&mut [0_u8; READY.len()])? {
        return Err("raw sender closed early".into());
    }
    let start = Instant::now();
    fd.write_all(&(messages as u64).to_le_bytes())?;
    let mut bytes = 0;
    while bytes < total {
        match fd.read(&mut buf)? {
            0 => break,
            n => bytes += n as u64,
        }
    }
    Ok((bytes, start.elapsed()))
}

/// argv: message size, message count. The parent uses recv_bytes (a new
/// bytes object per message), the ordinary way in Python.
const PYTHON_SCRIPT: &str = r#"
import json
import multiprocessing
import sys
import time


def sender(conn, size):
    payload = b"\xab" * size
    conn.send_bytes(b"r")
    count = int.from_bytes(conn.recv_bytes(), "little")
    for _ in range(count):
        conn.send_bytes(payload)
    conn.close()


def main():
    size, count = int(sys.argv[1]), int(sys.argv[2])
    a, b = multiprocessing.Pipe()
    p = multiprocessing.Process(target=sender, args=(b, size))
    p.start()
    b.close()
    a.recv_bytes()
    t0 = time.perf_counter_ns()
    a.send_bytes(count.to_bytes(8, "little"))
    received = 0
    for _ in range(count):
        received += len(a.recv_bytes())
    elapsed = time.perf_counter_ns() - t0
    a.close()
    p.join()
    print(json.dumps({"bytes": received, "elapsed_ns": elapsed}))


if __name__ == "__main__":
    main()
"#;
