//! W9: Listener/Client and managers.
//!
//! - W9a (TCP) and W9a-unix: 64-byte round trips between a listener and a client child that
//!   echoes; median of individually timed round trips. References: raw sockets of the same
//!   family (read/write of exactly 64 bytes, `TCP_NODELAY`).
//! - W9b: a manager's shared dict, one write and one read of the same key per operation;
//!   mean time per operation. Ours one request at a time, ours batched (1000 writes in one
//!   round trip, then 1000 reads), and Python's `Manager().dict()`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Instant;

use multiprocess::connection::{Address, Client, Listener};
use multiprocess::managers::Manager;
use multiprocess::Process;

use crate::stats::{median, time_each};
use crate::{python, raw, Config, Counts, Metric, Result, System, Workload};

pub(crate) const W9A: Workload = Workload {
    name: "W9a",
    title: "Listener/Client over loopback TCP: 64-byte round trips with an echoing client (20k; quick: 1k)",
    metric: Metric::MedianUs,
    reference: "raw/tcp",
    systems: systems_tcp,
};

pub(crate) const W9A_UNIX: Workload = Workload {
    name: "W9a-unix",
    title: "Listener/Client over a Unix socket: 64-byte round trips with an echoing client (20k; quick: 1k)",
    metric: Metric::MedianUs,
    reference: "raw/unix",
    systems: systems_unix,
};

pub(crate) const W9B: Workload = Workload {
    name: "W9b",
    title: "manager dict: one write and one read per operation (ours 20k, batched 200k, python 3k; quick: a tenth)",
    metric: Metric::NsPerOp,
    reference: "python/manager",
    systems: systems_manager,
};

const ROUND_TRIPS: Counts = Counts {
    full: 20_000,
    quick: 1_000,
};
const WARMUP: usize = 200;
const MSG: usize = 64;

fn systems_tcp(config: Config) -> Vec<System> {
    let n = config.pick(ROUND_TRIPS);
    let mut systems = vec![
        System::new("raw/tcp", move || raw_echo(true, n)),
        System::new("multiprocess/tcp", move || ours(true, n)),
    ];
    if python::available() {
        let args = ["tcp".to_string(), WARMUP.to_string(), n.to_string()];
        systems.push(System::new("python/listener", move || {
            median(python::samples_us(PY_LISTENER, &args)?)
        }));
    }
    systems
}

fn systems_unix(config: Config) -> Vec<System> {
    let n = config.pick(ROUND_TRIPS);
    let mut systems = vec![
        System::new("raw/unix", move || raw_echo(false, n)),
        System::new("multiprocess/unix", move || ours(false, n)),
    ];
    if python::available() {
        let args = ["unix".to_string(), WARMUP.to_string(), n.to_string()];
        systems.push(System::new("python/listener", move || {
            median(python::samples_us(PY_LISTENER, &args)?)
        }));
    }
    systems
}

/// The client child: connects (with the inherited authkey) and echoes until an empty message.
fn echo_client(address: Address) {
    let Ok(c) = Client::connect(&address) else {
        return;
    };
    while let Ok(v) = c.recv_bytes() {
        if v.is_empty() || c.send_bytes(&v).is_err() {
            break;
        }
    }
}

fn ours(tcp: bool, n: usize) -> Result<f64> {
    let listener = if tcp {
        Listener::bind("127.0.0.1:0")?
    } else {
        Listener::new()?
    };
    let mut p = Process::builder().start(echo_client, listener.address().clone())?;
    let conn = listener.accept()?;
    let msg = [0xab_u8; MSG];
    let samples = time_each(WARMUP, n, || {
        conn.send_bytes(&msg)?;
        let got = conn.recv_bytes()?.len();
        if got == MSG {
            Ok(())
        } else {
            Err(format!("echo of {got} bytes").into())
        }
    });
    let _ = conn.send_bytes(b"");
    p.join()?;
    median(samples?)
}

/// A stream that both raw families share.
trait Stream: Read + Write {}
impl Stream for TcpStream {}
impl Stream for UnixStream {}

fn raw_echo(tcp: bool, n: usize) -> Result<f64> {
    let dir = std::env::temp_dir().join(format!("mp-bench-w9-{}", std::process::id()));
    let (tcp_l, unix_l) = if tcp {
        (Some(TcpListener::bind("127.0.0.1:0")?), None)
    } else {
        let _ = std::fs::remove_file(&dir);
        (None, Some(UnixListener::bind(&dir)?))
    };
    let tcp_at = tcp_l.as_ref().map(|l| l.local_addr()).transpose()?;
    let child_echo = || {
        let mut s: Box<dyn Stream> = match tcp_at {
            Some(a) => match TcpStream::connect(a) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    Box::new(s)
                }
                Err(_) => return 1,
            },
            None => match UnixStream::connect(&dir) {
                Ok(s) => Box::new(s),
                Err(_) => return 1,
            },
        };
        let mut buf = [0_u8; MSG];
        while s.read_exact(&mut buf).is_ok() {
            if s.write_all(&buf).is_err() {
                return 1;
            }
        }
        0
    };
    // SAFETY: the child only connects, reads and writes.
    let child = unsafe { raw::fork(child_echo) }?;
    let mut s: Box<dyn Stream> = match (&tcp_l, &unix_l) {
        (Some(l), _) => {
            let (s, _) = l.accept()?;
            s.set_nodelay(true)?;
            Box::new(s)
        }
        (_, Some(l)) => Box::new(l.accept()?.0),
        _ => unreachable!(),
    };
    let msg = [0xab_u8; MSG];
    let mut buf = [0_u8; MSG];
    let samples = time_each(WARMUP, n, || {
        s.write_all(&msg)?;
        s.read_exact(&mut buf)?;
        Ok(())
    });
    drop(s);
    child.wait()?;
    let _ = std::fs::remove_file(&dir);
    median(samples?)
}

/// argv: family, warm-up round trips, timed round trips.
const PY_LISTENER: &str = r#"
import json
import multiprocessing
import sys
import time
from multiprocessing.connection import Client, Listener


def echo(address, key):
    c = Client(address, authkey=key)
    while True:
        m = c.recv_bytes()
        if not m:
            break
        c.send_bytes(m)


def main():
    family, warmup, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    key = b"bench key"
    if family == "tcp":
        listener = Listener(("127.0.0.1", 0), authkey=key)
    else:
        listener = Listener(family="AF_UNIX", authkey=key)
    with listener:
        p = multiprocessing.Process(target=echo, args=(listener.address, key))
        p.start()
        c = listener.accept()
        msg = b"\xab" * 64
        for _ in range(warmup):
            c.send_bytes(msg)
            c.recv_bytes()
        clock = time.perf_counter_ns
        samples = [0] * n
        for i in range(n):
            t0 = clock()
            c.send_bytes(msg)
            c.recv_bytes()
            samples[i] = clock() - t0
        c.send_bytes(b"")
        p.join()
    print(json.dumps({"samples_ns": samples}))


if __name__ == "__main__":
    main()
"#;

// ---------------------------------------------------------------------------------------------

const OPS: Counts = Counts {
    full: 20_000,
    quick: 2_000,
};
const BATCHED_OPS: Counts = Counts {
    full: 200_000,
    quick: 20_000,
};
const PY_OPS: Counts = Counts {
    full: 3_000,
    quick: 300,
};
const BATCH: usize = 1_000;

fn systems_manager(config: Config) -> Vec<System> {
    let (n, nb) = (config.pick(OPS), config.pick(BATCHED_OPS));
    let mut systems = vec![
        System::new("multiprocess/unbatched", move || manager_unbatched(n)),
        System::new("multiprocess/batched", move || manager_batched(nb)),
    ];
    if python::available() {
        let args = [config.pick(PY_OPS).to_string()];
        systems.push(System::new("python/manager", move || {
            let (ops, elapsed) = python::transfer(PY_MANAGER, &args)?;
            Ok(elapsed.as_nanos() as f64 / ops as f64)
        }));
    }
    systems
}

fn manager_unbatched(n: usize) -> Result<f64> {
    let manager = Manager::start()?;
    let d = manager.dict::<String, u64>()?;
    let keys: Vec<String> = (0..1000).map(|i| format!("key{i}")).collect();
    for (i, k) in keys.iter().enumerate().take(WARMUP) {
        d.set(k, &(i as u64))?;
    }
    let start = Instant::now();
    for i in 0..n {
        let k = &keys[i % keys.len()];
        d.set(k, &(i as u64))?;
        if d.get(k)? != Some(i as u64) {
            return Err("the manager's dict read back another value".into());
        }
    }
    let ns = start.elapsed().as_nanos() as f64 / n as f64;
    manager.shutdown()?;
    Ok(ns)
}

fn manager_batched(n: usize) -> Result<f64> {
    let manager = Manager::start()?;
    let d = manager.dict::<String, u64>()?;
    let keys: Vec<String> = (0..BATCH).map(|i| format!("key{i}")).collect();
    let start = Instant::now();
    let mut done = 0;
    while done < n {
        d.set_many(keys.iter().enumerate().map(|(i, k)| (k, (done + i) as u64)))?;
        let got = d.get_many(&keys)?;
        if got.last().copied().flatten() != Some((done + BATCH - 1) as u64) {
            return Err("the manager's dict read back another value".into());
        }
        done += BATCH;
    }
    let ns = start.elapsed().as_nanos() as f64 / done as f64;
    manager.shutdown()?;
    Ok(ns)
}

/// argv: operations. Prints {"bytes": operations, "elapsed_ns": ...}.
const PY_MANAGER: &str = r#"
import json
import multiprocessing
import sys
import time


def main():
    n = int(sys.argv[1])
    with multiprocessing.Manager() as manager:
        d = manager.dict()
        keys = ["key%d" % i for i in range(1000)]
        for i in range(200):
            d[keys[i]] = i
        t0 = time.perf_counter_ns()
        for i in range(n):
            k = keys[i % 1000]
            d[k] = i
            if d[k] != i:
                sys.exit("read back another value")
        elapsed = time.perf_counter_ns() - t0
    print(json.dumps({"bytes": n, "elapsed_ns": elapsed}))


if __name__ == "__main__":
    main()
"#;
