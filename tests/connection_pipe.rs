//! Pipe and Connection with real child processes under every start method.

mod common;
use common::*;
use multiprocess::connection::wait;
use multiprocess::{Connection, ConnectionError, Pipe, Process};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u64,
    item: String,
    qty: Vec<u16>,
    note: Option<String>,
}

fn order() -> Order {
    Order {
        id: 7,
        item: "widget".into(),
        qty: vec![1, 2, 3],
        note: Some("rush".into()),
    }
}

/// Echoes strings and structs back, then reports how many messages it saw.
fn echo(conn: Connection) -> u32 {
    let mut n = 0;
    loop {
        match conn.recv::<(String, Order)>() {
            Ok((s, o)) => {
                conn.send(&(format!("{s}!"), Order { id: o.id + 1, ..o }))
                    .unwrap();
                n += 1;
            }
            Err(e) if e.is_eof() => return n,
            Err(e) => panic!("child: {e}"),
        }
    }
}

#[test]
fn both_directions_with_strings_and_structs() {
    deadline(60, || {
        for m in METHODS {
            let (parent, child) = Pipe::new().unwrap();
            let mut p = Process::builder()
                .start_method(m)
                .start(echo, child)
                .unwrap();
            for i in 0..10 {
                parent.send(&(format!("hi {i}"), order())).unwrap();
                let (s, o): (String, Order) = parent.recv().unwrap();
                assert_eq!(s, format!("hi {i}!"));
                assert_eq!(o.id, 8);
            }
            drop(parent);
            assert_eq!(p.join_result().unwrap(), 10, "{m}");
        }
    });
}

fn send_big(conn: Connection) {
    let v: Vec<u8> = (0..64 * 1024 * 1024 + 3).map(|i| (i % 251) as u8).collect();
    conn.send_bytes(&v).unwrap();
    conn.send(&v).unwrap();
}

#[test]
fn large_values_of_64_mib() {
    deadline(120, || {
        for m in METHODS {
            let (parent, child) = Pipe::new().unwrap();
            let mut p = Process::builder()
                .start_method(m)
                .start(send_big, child)
                .unwrap();
            let raw = parent.recv_bytes().unwrap();
            let serde: Vec<u8> = parent.recv().unwrap();
            assert_eq!(raw.len(), 64 * 1024 * 1024 + 3);
            assert!(
                raw.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8),
                "{m}"
            );
            assert_eq!(raw, serde);
            p.join().unwrap();
            assert_eq!(p.exitcode(), Some(0));
        }
    });
}

fn close_after_one(conn: Connection) {
    conn.send(&1u8).unwrap();
}

fn die_after_one(conn: Connection) {
    conn.send(&1u8).unwrap();
    std::process::abort();
}

#[test]
fn eof_when_the_peer_closes_or_dies() {
    deadline(60, || {
        fn check<F: Fn(Connection) + Copy + Send + Sync + 'static>(
            m: multiprocess::StartMethod,
            target: F,
        ) {
            let (parent, child) = Pipe::new().unwrap();
            let mut p = Process::builder()
                .start_method(m)
                .start(target, child)
                .unwrap();
            assert_eq!(parent.recv::<u8>().unwrap(), 1);
            let e = parent.recv::<u8>().unwrap_err();
            assert!(e.is_eof(), "{m}: {e}");
            // Still EOF, never a hang.
            assert!(parent.recv_bytes().unwrap_err().is_eof());
            assert!(parent.poll(Duration::ZERO).unwrap(), "EOF is readable");
            p.join().unwrap();
        }
        for m in METHODS {
            check(m, close_after_one);
            check(m, die_after_one);
        }
    });
}

#[test]
fn sending_to_a_closed_peer_is_broken_pipe() {
    let (a, b) = Pipe::new().unwrap();
    drop(b);
    let e = a.send(&"x").unwrap_err();
    assert!(matches!(e, ConnectionError::BrokenPipe), "{e}");
}

fn reply_later(conn: Connection) {
    let ms: u64 = conn.recv().unwrap();
    std::thread::sleep(Duration::from_millis(ms));
    conn.send(&"late").unwrap();
}

#[test]
fn poll_and_recv_timeout() {
    deadline(60, || {
        for m in METHODS {
            let (parent, child) = Pipe::new().unwrap();
            let mut p = Process::builder()
                .start_method(m)
                .start(reply_later, child)
                .unwrap();
            assert!(!parent.poll(Duration::ZERO).unwrap(), "nothing yet");
            parent.send(&300u64).unwrap();
            let t = Instant::now();
            assert!(!parent.poll(Duration::from_millis(50)).unwrap());
            assert!(t.elapsed() >= Duration::from_millis(45));
            let e = parent
                .recv_timeout::<String>(Duration::from_millis(20))
                .unwrap_err();
            assert!(e.is_timeout(), "{e}");
            assert!(
                parent.poll(Duration::from_secs(10)).unwrap(),
                "{m}: data arrives"
            );
            assert_eq!(
                parent
                    .recv_timeout::<String>(Duration::from_secs(5))
                    .unwrap(),
                "late"
            );
            p.join().unwrap();
        }
    });
}

#[test]
fn recv_timeout_resumes_a_partial_frame() {
    deadline(60, || {
        let (a, b) = Pipe::new().unwrap();
        // 64 MiB goes over the socket (too big for the shared ring) and cannot arrive within
        // one millisecond, so the receiver gives up in the middle of the frame, many times.
        let big: Vec<u8> = (0..64 << 20).map(|i: u32| (i % 251) as u8).collect();
        let expected = big.clone();
        let sender = std::thread::spawn(move || a.send_bytes(&big).map(|()| a));
        assert!(
            b.poll(Duration::from_secs(10)).unwrap(),
            "the message starts"
        );
        let mut timeouts = 0;
        let got = loop {
            match b.recv_bytes_timeout(Duration::from_millis(1)) {
                Ok(v) => break v,
                Err(e) if e.is_timeout() => timeouts += 1,
                Err(e) => panic!("{e}"),
            }
        };
        assert!(timeouts > 0, "the frame was never interrupted");
        assert!(got == expected, "the resumed message differs");
        let a = sender.join().unwrap().unwrap();
        a.send(&"after").unwrap();
        assert_eq!(b.recv::<String>().unwrap(), "after");
    });
}

#[test]
fn malformed_frame_is_an_error_and_closes_receiving() {
    let (a, b) = Pipe::new().unwrap();
    // SAFETY: the descriptor stays owned by `a`; ManuallyDrop keeps the File from closing it.
    let mut raw = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(a.as_raw_fd()) });
    // Bytes on the socket that no marker in the shared ring announced.
    raw.write_all(b"GARBAGE-GARBAGE-GARBAGE").unwrap();
    let e = b.recv_bytes().unwrap_err();
    assert!(matches!(e, ConnectionError::Malformed(_)), "{e}");
    // Cleanly closed for receiving: every later call says so, none hangs.
    assert!(matches!(
        b.recv::<u8>().unwrap_err(),
        ConnectionError::Malformed(_)
    ));
    // Sending still works.
    b.send(&1u8).unwrap();
}

#[test]
fn too_large_is_skipped_and_the_connection_stays_usable() {
    let (a, b) = Pipe::new().unwrap();
    b.set_max_message_len(1024);
    a.send_bytes(&vec![1u8; 4096]).unwrap();
    a.send_bytes(b"small").unwrap();
    let e = b.recv_bytes().unwrap_err();
    assert!(
        matches!(
            e,
            ConnectionError::TooLarge {
                len: 4096,
                max: 1024
            }
        ),
        "{e}"
    );
    assert_eq!(b.recv_bytes().unwrap(), b"small");
}

#[test]
fn wrong_type_is_a_decode_error_and_the_connection_stays_usable() {
    let (a, b) = Pipe::new().unwrap();
    a.send(&(1u64, 2u64, "three")).unwrap();
    a.send(&5u8).unwrap();
    let e = b.recv::<u8>().unwrap_err();
    assert!(matches!(e, ConnectionError::Decode(_)), "{e}");
    assert_eq!(b.recv::<u8>().unwrap(), 5);
}

#[test]
fn recv_bytes_into_and_buffer_too_short() {
    let (a, b) = Pipe::new().unwrap();
    a.send_bytes(b"0123456789").unwrap();
    a.send_bytes(b"abc").unwrap();
    let mut small = [0u8; 4];
    match b.recv_bytes_into(&mut small).unwrap_err() {
        ConnectionError::BufferTooShort(msg) => {
            assert_eq!(msg, b"0123456789", "the message is not lost")
        }
        e => panic!("{e}"),
    }
    assert_eq!(b.recv_bytes_into(&mut small).unwrap(), 3);
    assert_eq!(&small[..3], b"abc");
}

#[test]
fn oneway_pipe_has_directions() {
    let (r, w) = Pipe::oneway().unwrap();
    assert!(r.readable() && !r.writable());
    assert!(w.writable() && !w.readable());
    w.send(&"one way").unwrap();
    assert_eq!(r.recv::<String>().unwrap(), "one way");
    assert!(matches!(
        r.send(&1).unwrap_err(),
        ConnectionError::WrongDirection(_)
    ));
    assert!(matches!(
        w.recv::<u8>().unwrap_err(),
        ConnectionError::WrongDirection(_)
    ));
}

/// Receives a connection through a connection and talks over it.
fn relay(conn: Connection) {
    let inner: Connection = conn.recv().unwrap();
    let n: u32 = inner.recv().unwrap();
    inner.send(&(n * 2)).unwrap();
}

#[test]
fn a_connection_travels_through_a_connection() {
    deadline(60, || {
        for m in METHODS {
            let (ctl_parent, ctl_child) = Pipe::new().unwrap();
            let mut p = Process::builder()
                .start_method(m)
                .start(relay, ctl_child)
                .unwrap();
            let (mine, theirs) = Pipe::new().unwrap();
            ctl_parent.send(&theirs).unwrap();
            drop(theirs);
            mine.send(&21u32).unwrap();
            assert_eq!(mine.recv::<u32>().unwrap(), 42, "{m}");
            p.join().unwrap();
            // The child was the last holder of `theirs`: now EOF.
            assert!(mine.recv::<u32>().unwrap_err().is_eof());
        }
    });
}

fn sleeper(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

#[test]
fn wait_selects_over_connections_and_processes() {
    deadline(60, || {
        for m in METHODS {
            let (a1, b1) = Pipe::new().unwrap();
            let (a2, _b2) = Pipe::new().unwrap();
            let mut p = Process::builder()
                .start_method(m)
                .start(sleeper, 200)
                .unwrap();
            assert!(wait(&[&a1, &a2, &p], Some(Duration::from_millis(20)))
                .unwrap()
                .is_empty());
            let ready = wait(&[&a1, &a2, &p], Some(Duration::from_secs(10))).unwrap();
            assert_eq!(ready, [2], "{m}: the process ended first");
            b1.send(&1).unwrap();
            p.join().unwrap();
            let ready = wait(&[&a1, &a2, &p], Some(Duration::from_secs(10))).unwrap();
            assert!(ready.contains(&0) && ready.contains(&2), "{m}: {ready:?}");
        }
    });
}

#[test]
fn a_handle_does_not_serialize_outside_the_crate() {
    let (a, _b) = Pipe::new().unwrap();
    let e = postcard::to_allocvec(&a).unwrap_err();
    let _ = e;
}

#[test]
fn poll_does_not_wait_for_a_receiver_blocked_in_another_thread() {
    deadline(30, || {
        let (a, b) = Pipe::new().unwrap();
        let b = std::sync::Arc::new(b);
        let receiver = {
            let b = std::sync::Arc::clone(&b);
            std::thread::spawn(move || b.recv::<u32>())
        };
        // Whether or not the receiver is blocked yet, poll answers within its timeout.
        std::thread::sleep(Duration::from_millis(20));
        let t = Instant::now();
        assert!(!b.poll(Duration::from_millis(50)).unwrap());
        assert!(t.elapsed() < Duration::from_secs(5));
        a.send(&1u32).unwrap();
        assert_eq!(receiver.join().unwrap().unwrap(), 1);
    });
}

fn nap(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// Pipes made and closed in one thread while another thread forks children (Fork start
/// method): no child may keep an end it was not given, so the peer of a closed end always sees
/// end of file at once. A descriptor made but not yet tracked (or untracked but not yet closed)
/// when another thread forked stayed open in that child for its whole life.
#[test]
fn pipes_made_while_another_thread_forks_close_for_real() {
    deadline(120, || {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let forked = std::sync::Arc::new(AtomicUsize::new(0));
        let forker = {
            let (stop, forked) = (std::sync::Arc::clone(&stop), std::sync::Arc::clone(&forked));
            std::thread::spawn(move || {
                // Long-lived children: a copy of an end kept by one outlives the check below.
                let mut children = Vec::new();
                while !stop.load(Relaxed) && children.len() < 64 {
                    let p = Process::builder()
                        .start_method(StartMethod::Fork)
                        .start(nap, 30_000)
                        .unwrap();
                    children.push(p);
                    forked.fetch_add(1, Relaxed);
                }
                while !stop.load(Relaxed) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                for mut p in children {
                    p.kill().unwrap();
                    p.join().unwrap();
                }
            })
        };
        let mut held = Vec::new();
        // Pipes are made and closed for as long as the children are being forked.
        let mut round = 0;
        while round < 200 || (forked.load(Relaxed) < 64 && !forker.is_finished()) {
            round += 1;
            let (a, b) = Pipe::new().unwrap();
            drop(b);
            match a.recv_timeout::<u8>(Duration::from_millis(500)) {
                Err(e) if e.is_eof() => {}
                other => held.push((round, format!("{other:?}"))),
            }
        }
        stop.store(true, Relaxed);
        forker.join().unwrap();
        assert!(
            held.is_empty(),
            "closed ends still open somewhere: {held:?}"
        );
    });
}
