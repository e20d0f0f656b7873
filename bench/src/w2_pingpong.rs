//! W2 ping-pong: 64-byte round trips between the parent and a child echoing
//! over a duplex pipe; the median time of one round trip.
//!
//! Every round trip is timed on its own (not in batches): the clock read
//! costs ~25 ns in Rust and ~100 ns in CPython, small against round trips of
//! several microseconds, and the median of individual round trips is not
//! smeared by the occasional scheduler hiccup the way batch means are.

use multiprocess::{Connection, Pipe, Process};

use crate::stats::{median, time_each};
use crate::{python, raw, Config, Counts, Metric, Result, System, Workload};

pub(crate) const WORKLOAD: Workload = Workload {
    name: "W2",
    title: "ping-pong: 64-byte round trips with an echoing child (100k; quick: 2k)",
    metric: Metric::MedianUs,
    reference: "raw/socketpair",
    systems,
};

/// Timed round trips per system.
const ROUND_TRIPS: Counts = Counts {
    full: 100_000,
    quick: 2_000,
};

/// Untimed round trips before timing (both sides' first-touch costs).
const WARMUP: usize = 100;

/// Message size in bytes.
const MSG: usize = 64;

/// Tells the `multiprocess` and Python echo children to stop. They are not
/// left to wait for end of file: a fork child can hold an inherited copy of
/// the parent's end, and then never sees it. (The raw child closes its copy.)
const STOP: &[u8] = b"";

fn systems(config: Config) -> Vec<System> {
    let n = config.pick(ROUND_TRIPS);
    let mut systems = vec![
        System::new("raw/socketpair", move || raw_socketpair(n)),
        System::new("multiprocess/default", move || ours(n)),
    ];
    if python::available() {
        let args = [MSG.to_string(), WARMUP.to_string(), n.to_string()];
        systems.push(System::new("python/default", move || {
            median(python::samples_us(PYTHON_SCRIPT, &args)?)
        }));
    }
    systems
}

fn expect_len(got: usize) -> Result<()> {
    if got == MSG {
        Ok(())
    } else {
        Err(format!("echo of {got} bytes, expected {MSG}").into())
    }
}

/// The child: echoes every message until an empty one (or end of file).
fn echo(c: Connection) {
    while let Ok(v) = c.recv_bytes() {
        if v.is_empty() || c.send_bytes(&v).is_err() {
            break;
        }
    }
}

fn ours(n: usize) -> Result<f64> {
    let (a, b) = Pipe::new()?;
    let mut p = Process::builder().start(echo, b)?;
    let msg = [0xab_u8; MSG];
    let samples = time_each(WARMUP, n, || {
        a.send_bytes(&msg)?;
        expect_len(a.recv_bytes()?.len())
    });
    let _ = a.send_bytes(STOP);
    drop(a);
    p.join()?;
    median(samples?)
}

/// A forked child echoing over an `AF_UNIX` `SOCK_STREAM` socketpair with
/// read(2)/write(2) of exactly 64 bytes.
fn raw_socketpair(n: usize) -> Result<f64> {
    let child_echo = |fd: &raw::Fd| {
        let mut buf = [0_u8; MSG];
        loop {
            match fd.read_full(&mut buf) {
                Ok(true) if fd.write_all(&buf).is_ok() => {}
                Ok(false) => return 0,
                _ => return 1,
            }
        }
    };
    // SAFETY: the child only reads and writes.
    let (child, fd) = unsafe { raw::fork_socketpair(child_echo) }?;
    let msg = [0xab_u8; MSG];
    let mut buf = [0_u8; MSG];
    let samples = time_each(WARMUP, n, || {
        fd.write_all(&msg)?;
        if fd.read_full(&mut buf)? {
            Ok(())
        } else {
            Err("raw echo child closed early".into())
        }
    });
    drop(fd);
    child.wait()?;
    median(samples?)
}

/// argv: message size, warm-up round trips, timed round trips.
const PYTHON_SCRIPT: &str = r#"
import json
import multiprocessing
import sys
import time


def echo(conn):
    while True:
        try:
            msg = conn.recv_bytes()
        except EOFError:
            break
        if not msg:
            break
        conn.send_bytes(msg)


def main():
    size, warmup, n = (int(a) for a in sys.argv[1:4])
    a, b = multiprocessing.Pipe()
    p = multiprocessing.Process(target=echo, args=(b,))
    p.start()
    b.close()
    msg = b"\xab" * size
    for _ in range(warmup):
        a.send_bytes(msg)
        a.recv_bytes()
    clock = time.perf_counter_ns
    samples = [0] * n
    for i in range(n):
        t0 = clock()
        a.send_bytes(msg)
        reply = a.recv_bytes()
        samples[i] = clock() - t0
        if len(reply) != size:
            sys.exit(f"echo of {len(reply)} bytes")
    a.send_bytes(b"")
    a.close()
    p.join()
    print(json.dumps({"samples_ns": samples}))


if __name__ == "__main__":
    main()
"#;
