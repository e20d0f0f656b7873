//! W2 ping-pong: 64-byte round trips between the parent and a child echoing
//! over a duplex pipe; the median time of one round trip.
//!
//! Every round trip is timed on its own (not in batches): the clock read
//! costs ~25 ns in Rust and ~100 ns in CPython, small against round trips of
//! several microseconds, and the median of individual round trips is not
//! smeared by the occasional scheduler hiccup the way batch means are.

use multiprocess::{Connection, Pipe, Process};

use std::sync::atomic::Ordering;

use crate::raw::{futex_wait, futex_wake, Shm};
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
        System::new("raw/shm-spin", move || raw_shm_spin(n)),
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

/// How long a raw/shm-spin waiter spins before it sleeps on the futex.
const RAW_SPIN: std::time::Duration = std::time::Duration::from_micros(20);

/// One direction of raw/shm-spin: a sequence number (the futex word), a
/// "sleeping" flag and a 64-byte slot, on their own cache lines.
#[derive(Clone, Copy)]
struct Lane(usize);

impl Lane {
    fn send(self, shm: &Shm, msg: &[u8; MSG]) {
        // SAFETY: the slot is in bounds; strict alternation means the other
        // side is not reading it (it read the previous message already).
        unsafe { std::ptr::copy_nonoverlapping(msg.as_ptr(), shm.ptr(self.0 + 64, MSG), MSG) };
        let seq = shm.atomic_u32(self.0);
        seq.fetch_add(1, Ordering::SeqCst);
        if shm.atomic_u32(self.0 + 4).load(Ordering::SeqCst) != 0 {
            futex_wake(seq, 1);
        }
    }

    /// Waits for message number `seen + 1`: spin, then futex.
    fn recv(self, shm: &Shm, seen: u32, out: &mut [u8; MSG]) {
        let seq = shm.atomic_u32(self.0);
        let start = std::time::Instant::now();
        while seq.load(Ordering::Acquire) == seen {
            if start.elapsed() > RAW_SPIN {
                let sleeping = shm.atomic_u32(self.0 + 4);
                sleeping.store(1, Ordering::SeqCst);
                while seq.load(Ordering::SeqCst) == seen {
                    futex_wait(seq, seen);
                }
                sleeping.store(0, Ordering::SeqCst);
                break;
            }
            std::hint::spin_loop();
        }
        // SAFETY: in bounds; published by the sender's SeqCst increment.
        unsafe { std::ptr::copy_nonoverlapping(shm.ptr(self.0 + 64, MSG), out.as_mut_ptr(), MSG) };
    }
}

/// A forked child echoing over shared memory: per direction a 64-byte slot
/// and a sequence number; a waiter spins up to 20 µs, then sleeps on a futex.
/// A message of zeros stops the child.
fn raw_shm_spin(n: usize) -> Result<f64> {
    let shm = Shm::new(4096)?;
    let (ping, pong) = (Lane(0), Lane(256));
    let child_echo = || {
        let mut buf = [0_u8; MSG];
        for seen in 0.. {
            ping.recv(&shm, seen, &mut buf);
            if buf[0] == 0 {
                return 0;
            }
            pong.send(&shm, &buf);
        }
        0
    };
    // SAFETY: the child only touches the shared mapping and futexes.
    let child = unsafe { raw::fork(child_echo) }?;
    let msg = [0xab_u8; MSG];
    let mut buf = [0_u8; MSG];
    let mut seen = 0;
    let samples = time_each(WARMUP, n, || {
        ping.send(&shm, &msg);
        pong.recv(&shm, seen, &mut buf);
        seen += 1;
        if buf == msg {
            Ok(())
        } else {
            Err("raw shm echo differs".into())
        }
    });
    ping.send(&shm, &[0; MSG]);
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
