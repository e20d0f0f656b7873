//! The shared-memory path under `Pipe`: order across the ring and the socket, wrap-around, a
//! full ring, a dead peer on either side, an end shared by two processes.
mod common;

use common::*;
use multiprocess::handle::SharedFd;
use multiprocess::{Connection, ConnectionError, Pipe, Process};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

/// The size just below, at and above the ring's limit for one message (a quarter of 64 KiB)
/// and far above it, so messages alternate between the ring and the socket.
const SIZES: [usize; 7] = [0, 1, 100, 16 * 1024 - 1, 16 * 1024, 16 * 1024 + 1, 300_000];

fn pattern(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|k| (k * 31 + i * 7) as u8).collect()
}

/// The child: sends messages of every size, some with a descriptor (which go by the socket),
/// then returns how many it sent.
fn mixed_sender(conn: Connection) -> usize {
    let devnull = std::fs::File::open("/dev/null").unwrap();
    let mut n = 0;
    for round in 0..20 {
        for (k, &len) in SIZES.iter().enumerate() {
            let i = round * SIZES.len() + k;
            if i % 5 == 0 {
                let fd = SharedFd::from(devnull.as_fd().try_clone_to_owned().unwrap());
                conn.send(&(i, pattern(i, len), Some(fd))).unwrap();
            } else {
                conn.send(&(i, pattern(i, len), None::<SharedFd>)).unwrap();
            }
            n += 1;
        }
    }
    n
}

#[test]
fn order_is_kept_across_ring_and_socket() {
    deadline(120, || {
        for m in METHODS {
            let (rx, tx) = Pipe::new().unwrap();
            let mut p = Process::builder()
                .start_method(m)
                .start(mixed_sender, tx)
                .unwrap();
            let mut got = 0;
            loop {
                match rx.recv::<(usize, Vec<u8>, Option<SharedFd>)>() {
                    Ok((i, bytes, fd)) => {
                        assert_eq!(i, got, "{m}: message out of order");
                        let len = SIZES[i % SIZES.len()];
                        assert!(bytes == pattern(i, len), "{m}: message {i} damaged");
                        assert_eq!(fd.is_some(), i % 5 == 0, "{m}: descriptor of {i}");
                        got += 1;
                    }
                    Err(ConnectionError::Eof) => break,
                    Err(e) => panic!("{m}: {e}"),
                }
            }
            assert_eq!(p.join_result().unwrap(), got, "{m}");
        }
    });
}

/// Echoes every message until end of file; returns how many.
fn echo_bytes(conn: Connection) -> usize {
    let mut n = 0;
    while let Ok(v) = conn.recv_bytes() {
        conn.send_bytes(&v).unwrap();
        n += 1;
    }
    n
}

#[test]
fn the_ring_wraps_around_many_times() {
    deadline(120, || {
        for m in METHODS {
            let (a, b) = Pipe::new().unwrap();
            let mut p = Process::builder()
                .start_method(m)
                .start(echo_bytes, b)
                .unwrap();
            // Odd sizes and a window of messages in flight: records land at every offset of
            // the ring and padding is written at its end over and over.
            let sizes = [1usize, 7, 64, 1000, 4095, 9000, 16 * 1024];
            let total = 3000;
            let window = 4;
            let mut received = 0;
            for i in 0..total {
                a.send_bytes(&pattern(i, sizes[i % sizes.len()])).unwrap();
                if i >= window {
                    let j = received;
                    let back = a.recv_bytes().unwrap();
                    assert!(back == pattern(j, sizes[j % sizes.len()]), "{m}: echo {j}");
                    received += 1;
                }
            }
            while received < total {
                let j = received;
                assert!(a.recv_bytes().unwrap() == pattern(j, sizes[j % sizes.len()]));
                received += 1;
            }
            drop(a);
            assert_eq!(p.join_result().unwrap(), total, "{m}");
        }
    });
}

/// Reads slowly: sleeps first, so the sender fills the ring and waits for room.
fn slow_reader(conn: Connection) -> u64 {
    std::thread::sleep(Duration::from_millis(200));
    let mut sum = 0u64;
    while let Ok(v) = conn.recv::<Vec<u64>>() {
        sum += v.iter().sum::<u64>();
    }
    sum
}

#[test]
fn a_full_ring_makes_the_writer_wait_and_loses_nothing() {
    deadline(120, || {
        for m in METHODS {
            let (a, b) = Pipe::new().unwrap();
            let mut p = Process::builder()
                .start_method(m)
                .start(slow_reader, b)
                .unwrap();
            let mut want = 0u64;
            // 2,000 messages of ~800 bytes: 25 times the ring.
            for i in 0..2000u64 {
                let v: Vec<u64> = (i..i + 100).collect();
                want += v.iter().sum::<u64>();
                a.send(&v).unwrap();
            }
            drop(a);
            assert_eq!(p.join_result().unwrap(), want, "{m}");
        }
    });
}

/// Sends `n` messages, then returns: they are all in the ring when the parent reads.
fn send_then_exit((conn, n): (Connection, u32)) {
    for i in 0..n {
        conn.send(&i).unwrap();
    }
}

#[test]
fn messages_left_by_a_peer_that_exited_are_delivered_then_eof() {
    deadline(60, || {
        for m in METHODS {
            let (a, b) = Pipe::new().unwrap();
            let mut p = Process::builder()
                .start_method(m)
                .start(send_then_exit, (b, 500))
                .unwrap();
            p.join().unwrap();
            for i in 0..500u32 {
                assert_eq!(a.recv::<u32>().unwrap(), i, "{m}");
            }
            assert!(a.recv::<u32>().unwrap_err().is_eof(), "{m}");
            assert!(a.poll(Duration::ZERO).unwrap(), "{m}: end of file is ready");
        }
    });
}

fn never_reads(conn: Connection) {
    let _keep = conn;
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn a_writer_waiting_for_room_sees_the_reader_die() {
    deadline(60, || {
        for m in METHODS {
            let (a, b) = Pipe::new().unwrap();
            let mut p = Process::builder()
                .start_method(m)
                .start(never_reads, b)
                .unwrap();
            // The first send asks the socket whether the reader is there; the reader never
            // reads, so the ring fills and the writer sleeps waiting for room.
            let writer = std::thread::spawn(move || {
                let msg = vec![7u8; 4000];
                loop {
                    if let Err(e) = a.send_bytes(&msg) {
                        return e;
                    }
                }
            });
            std::thread::sleep(Duration::from_millis(100));
            assert!(
                !writer.is_finished(),
                "{m}: the writer should be waiting for room"
            );
            let t = Instant::now();
            p.kill().unwrap();
            let e = writer.join().unwrap();
            assert!(matches!(e, ConnectionError::BrokenPipe), "{m}: {e}");
            assert!(t.elapsed() < Duration::from_secs(5), "{m}: noticed late");
            p.join().unwrap();
        }
    });
}

fn recv_one(conn: Connection) -> String {
    conn.recv().unwrap()
}

#[test]
fn sending_to_a_dead_reader_is_broken_pipe() {
    deadline(60, || {
        for m in METHODS {
            let (a, b) = Pipe::new().unwrap();
            let mut p = Process::builder()
                .start_method(m)
                .start(recv_one, b)
                .unwrap();
            a.send(&"one").unwrap();
            assert_eq!(p.join_result().unwrap(), "one");
            // The reader read, so its progress vouches for it; its end closed with it, and a
            // send now sees that.
            let e = a.send(&"two").unwrap_err();
            assert!(matches!(e, ConnectionError::BrokenPipe), "{m}: {e}");
            assert!(a.recv::<String>().unwrap_err().is_eof(), "{m}");
        }
    });
}

/// Holds its end without reading until it is killed; says when it holds it. (Killed before
/// it had received its arguments, the end would still be in flight in a socket's queue, whose
/// release the kernel may finish a little after the process is reaped.)
fn killed_reader((conn, ready): (Connection, multiprocess::Event)) {
    let _keep = conn;
    ready.set();
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn a_reader_killed_without_closing_is_noticed_by_the_second_send() {
    deadline(60, || {
        for m in METHODS {
            let (a, b) = Pipe::new().unwrap();
            let ready = multiprocess::Event::new().unwrap();
            let mut p = Process::builder()
                .start_method(m)
                .start(killed_reader, (b, ready.clone()))
                .unwrap();
            assert!(ready.wait_timeout(Duration::from_secs(20)), "{m}");
            a.send(&1u8).unwrap();
            p.kill().unwrap();
            p.join().unwrap();
            // SIGKILL runs no destructor. The message in flight when the reader died is lost
            // with it (as in a socket's buffer); the reader never read, so nothing vouches for
            // it and the next send asks the socket.
            match a.send(&2u8) {
                Err(ConnectionError::BrokenPipe) => {}
                other => panic!("{m}: the second send gave {other:?}, not BrokenPipe"),
            }
        }
    });
}

/// Sends `n` tagged messages through a shared sending end.
fn tagged_sender((conn, tag, n): (Connection, u32, u32)) {
    for i in 0..n {
        conn.send(&(tag, i, vec![tag as u8; (i % 50) as usize * 100]))
            .unwrap();
    }
}

#[test]
fn two_processes_share_one_sending_end() {
    deadline(120, || {
        for m in METHODS {
            let (rx, tx) = Pipe::oneway().unwrap();
            let n = 2000;
            let mut ps: Vec<_> = (0..2)
                .map(|tag| {
                    Process::builder()
                        .start_method(m)
                        .start(tagged_sender, (tx.try_clone().unwrap(), tag, n))
                        .unwrap()
                })
                .collect();
            drop(tx);
            let mut next = [0u32; 2];
            loop {
                match rx.recv::<(u32, u32, Vec<u8>)>() {
                    Ok((tag, i, body)) => {
                        let t = tag as usize;
                        assert_eq!(i, next[t], "{m}: sender {tag} out of order");
                        assert_eq!(body.len(), (i % 50) as usize * 100);
                        assert!(body.iter().all(|&b| b == tag as u8), "{m}: damaged");
                        next[t] += 1;
                    }
                    Err(ConnectionError::Eof) => break,
                    Err(e) => panic!("{m}: {e}"),
                }
            }
            assert_eq!(next, [n, n], "{m}");
            for p in &mut ps {
                p.join().unwrap();
            }
        }
    });
}

/// A receiver blocked in `recv` in one thread and `wait` in another both wake for messages.
#[test]
fn recv_and_wait_in_two_threads_both_wake() {
    deadline(60, || {
        let (a, b) = Pipe::new().unwrap();
        let b = std::sync::Arc::new(b);
        let b2 = b.clone();
        let waiter = std::thread::spawn(move || {
            let mut woke = 0;
            while woke < 50 {
                if !multiprocess::connection::wait(&[&*b2], Some(Duration::from_secs(10)))
                    .unwrap()
                    .is_empty()
                {
                    woke += 1;
                    std::thread::sleep(Duration::from_micros(200));
                } else {
                    panic!("wait missed a message");
                }
            }
        });
        let receiver = {
            let b = b.clone();
            std::thread::spawn(move || (0..100).map(|_| b.recv::<u32>().unwrap()).sum::<u32>())
        };
        for i in 0..100u32 {
            a.send(&i).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(receiver.join().unwrap(), (0..100).sum::<u32>());
        // The waiter may still be waiting for its 50th wake-up: keep messages coming.
        while !waiter.is_finished() {
            a.send(&0u32).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        waiter.join().unwrap();
    });
}

/// Sends one message of `len` bytes (over the socket: far bigger than the ring).
fn send_big((conn, len): (Connection, usize)) {
    let _ = conn.send_bytes(&vec![0x5a; len]);
}

#[test]
fn a_sender_killed_mid_message_on_a_shared_end_never_delivers_a_spliced_message() {
    deadline(120, || {
        for m in METHODS {
            let (rx, tx) = Pipe::oneway().unwrap();
            let len = 64 << 20;
            let mut a = Process::builder()
                .start_method(m)
                .start(send_big, (tx.try_clone().unwrap(), len))
                .unwrap();
            // The marker is in the ring; the frame fills the socket's buffer and the sender
            // blocks in the middle of it, holding the writer lock.
            assert!(rx.poll(Duration::from_secs(10)).unwrap(), "{m}");
            std::thread::sleep(Duration::from_millis(200));
            a.kill().unwrap();
            a.join().unwrap();
            // A second holder of the end sends: it takes the dead sender's lock over, and its
            // bytes would complete the dead sender's frame.
            let mut b = Process::builder()
                .start_method(m)
                .start(send_big, (tx, len))
                .unwrap();
            match rx.recv_bytes() {
                Err(ConnectionError::Malformed(why)) => assert!(why.contains("died"), "{m}: {why}"),
                Err(e) => panic!("{m}: {e}"),
                Ok(v) => panic!("{m}: a spliced message of {} bytes was delivered", v.len()),
            }
            assert!(matches!(
                rx.recv_bytes().unwrap_err(),
                ConnectionError::Malformed(_)
            ));
            drop(rx);
            b.join().unwrap();
        }
    });
}

#[test]
fn a_sender_killed_mid_message_gives_eof_not_half_a_message() {
    deadline(60, || {
        for m in METHODS {
            let (rx, tx) = Pipe::oneway().unwrap();
            let mut a = Process::builder()
                .start_method(m)
                .start(send_big, (tx, 64 << 20))
                .unwrap();
            assert!(rx.poll(Duration::from_secs(10)).unwrap(), "{m}");
            std::thread::sleep(Duration::from_millis(100));
            a.kill().unwrap();
            a.join().unwrap();
            assert!(rx.recv_bytes().unwrap_err().is_eof(), "{m}");
        }
    });
}

/// Receives one message; says what happened.
fn recv_report(conn: Connection) -> String {
    match conn.recv_bytes() {
        Ok(v) => format!("ok {}", v.len()),
        Err(ConnectionError::Malformed(why)) => format!("malformed: {why}"),
        Err(e) => format!("error: {e}"),
    }
}

/// Starts receiving a message, gives up in its middle (1 ms cannot carry 64 MiB), then
/// waits to be killed.
fn give_up_mid_message(conn: Connection) {
    assert!(conn.poll(Duration::from_secs(10)).unwrap());
    let e = conn
        .recv_bytes_timeout(Duration::from_millis(1))
        .unwrap_err();
    assert!(e.is_timeout(), "{e}");
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn a_receiver_killed_mid_message_on_a_shared_end_leaves_no_half_read_stream() {
    deadline(120, || {
        for m in METHODS {
            let (rx, tx) = Pipe::oneway().unwrap();
            let sender = std::thread::spawn(move || tx.send_bytes(&vec![1u8; 64 << 20]));
            let mut r1 = Process::builder()
                .start_method(m)
                .start(give_up_mid_message, rx.try_clone().unwrap())
                .unwrap();
            // r1 takes the marker and reads part of the frame, then dies in the middle.
            std::thread::sleep(Duration::from_millis(500));
            assert!(r1.is_alive(), "{m}");
            r1.kill().unwrap();
            r1.join().unwrap();
            let mut r2 = Process::builder()
                .start_method(m)
                .start(recv_report, rx)
                .unwrap();
            let report = r2.join_result().unwrap();
            let sent = sender.join().unwrap();
            assert!(
                report.starts_with("malformed"),
                "{m}: {report} (sender: {sent:?})"
            );
            assert!(sent.is_err(), "{m}: no reader is left");
        }
    });
}

/// Three threads on one receiving end: one sleeps in `poll`, one sleeps in `wait` on this end
/// and another pipe, one receives. A doorbell ring meant for both sleepers was drained by the
/// `wait`, which then returned for the other pipe without arming again, so the next message
/// rang nobody and the `poll` slept on to its timeout (12-24% of rounds). Every round, the
/// `poll` must see the second message at once.
#[test]
fn a_sleeper_is_woken_when_another_sleeper_drained_the_doorbell() {
    deadline(120, || {
        let mut late = Vec::new();
        for round in 0..40 {
            let (a, b) = Pipe::new().unwrap();
            let (xa, xb) = Pipe::new().unwrap();
            let (b1, b2) = (b.try_clone().unwrap(), b.try_clone().unwrap());
            let poller = std::thread::spawn(move || {
                let ready = b2.poll(Duration::from_secs(5)).unwrap();
                (ready, Instant::now())
            });
            let waiter = std::thread::spawn(move || {
                multiprocess::connection::wait(&[&b1, &xb], None).unwrap();
                xb
            });
            std::thread::sleep(Duration::from_millis(15));
            a.send(&1u8).unwrap();
            xa.send(&0u8).unwrap();
            let _: u8 = b.recv().unwrap();
            let xb = waiter.join().unwrap();
            let _: u8 = xb.recv().unwrap();
            std::thread::sleep(Duration::from_millis(15));
            let sent = Instant::now();
            a.send(&2u8).unwrap();
            let (ready, at) = poller.join().unwrap();
            // A poller woken by the first message already saw a record: nothing to test.
            if at >= sent && (!ready || at - sent > Duration::from_secs(1)) {
                late.push((round, ready, at - sent));
            }
            let _: u8 = b.recv().unwrap();
        }
        assert!(
            late.is_empty(),
            "rounds whose poll missed the message: {late:?}"
        );
    });
}
