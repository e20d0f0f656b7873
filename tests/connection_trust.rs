//! What a peer writes on a connection's socket is input: a frame header announcing gigabytes
//! costs nothing until the bytes come (and no abort when memory is limited), and a receiver at
//! its descriptor limit loses the one message whose handles it could not take, with an error
//! saying why, and goes on receiving.

mod common;
use common::*;
use multiprocess::connection::__socket_only_pair;
use multiprocess::handle::SharedFd;
use multiprocess::{Connection, ConnectionError, Process};
use std::os::fd::{AsRawFd, OwnedFd};

const MAGIC: u32 = u32::from_le_bytes(*b"MPC1");

fn set_limit(resource: libc::__rlimit_resource_t, soft: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit.
    unsafe {
        libc::getrlimit(resource, &mut lim);
        let old = lim.rlim_cur;
        lim.rlim_cur = soft.min(lim.rlim_max);
        assert_eq!(libc::setrlimit(resource, &lim), 0);
        old
    }
}

/// In a child with 1 GiB of address space: a header announcing 4 GiB, a few bytes, then end
/// of file. The receiver must say end of file, not abort on a 4 GiB allocation.
fn announce_four_gib(_: ()) -> String {
    set_limit(libc::RLIMIT_AS, 1 << 30);
    let (a, b) = __socket_only_pair().unwrap();
    let mut frame = Vec::new();
    frame.extend_from_slice(&MAGIC.to_le_bytes());
    frame.extend_from_slice(&0u32.to_le_bytes());
    frame.extend_from_slice(&(4u64 << 30).to_le_bytes());
    frame.extend_from_slice(&[7u8; 100]);
    // SAFETY: write of a valid buffer to an open descriptor.
    let n = unsafe { libc::write(a.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
    assert_eq!(n as usize, frame.len());
    drop(a);
    match b.recv_bytes() {
        Err(ConnectionError::Eof) => "eof".into(),
        other => format!("{other:?}"),
    }
}

#[test]
fn a_header_announcing_gigabytes_allocates_nothing_up_front() {
    deadline(60, || {
        for m in METHODS {
            let mut p = Process::builder()
                .start_method(m)
                .start(announce_four_gib, ())
                .unwrap();
            let out = p.join_result().unwrap_or_else(|e| panic!("{m}: {e}"));
            assert_eq!(out, "eof", "{m}");
        }
    });
}

#[test]
fn the_message_size_limit_skips_and_keeps_the_connection() {
    deadline(30, || {
        let (a, b) = __socket_only_pair().unwrap();
        b.set_max_message_len(1000);
        a.send_bytes(&[1u8; 5000]).unwrap();
        a.send_bytes(b"small").unwrap();
        match b.recv_bytes() {
            Err(ConnectionError::TooLarge { len, max }) => assert_eq!((len, max), (5000, 1000)),
            other => panic!("{other:?}"),
        }
        assert_eq!(b.recv_bytes().unwrap(), b"small");
    });
}

/// Lowers its descriptor limit to the lowest free number (no new descriptor fits), says it is
/// ready, and receives a message with handles, then (limit restored) the next one.
fn receive_at_the_limit(c: Connection) -> (String, String) {
    // SAFETY: open/close of /dev/null: the number is the lowest free one.
    let lowest = unsafe {
        let fd = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        libc::close(fd);
        fd
    };
    let old = set_limit(libc::RLIMIT_NOFILE, lowest as u64);
    c.send(&"ready").unwrap();
    let first = match c.recv::<(SharedFd, SharedFd, String)>() {
        Err(e @ ConnectionError::HandlesLost { .. }) => e.to_string(),
        other => format!("unexpected: {other:?}"),
    };
    set_limit(libc::RLIMIT_NOFILE, old);
    let second = c
        .recv::<String>()
        .unwrap_or_else(|e| format!("unexpected: {e}"));
    (first, second)
}

fn devnull() -> SharedFd {
    SharedFd::from(OwnedFd::from(std::fs::File::open("/dev/null").unwrap()))
}

#[test]
fn a_receiver_at_its_descriptor_limit_loses_one_message_not_the_connection() {
    deadline(60, || {
        for m in METHODS {
            let (a, b) = multiprocess::Pipe::new().unwrap();
            let mut p = Process::builder()
                .start_method(m)
                .start(receive_at_the_limit, b)
                .unwrap();
            assert_eq!(a.recv::<String>().unwrap(), "ready", "{m}");
            a.send(&(devnull(), devnull(), "lost".to_string())).unwrap();
            a.send(&"next".to_string()).unwrap();
            let (first, second) = p.join_result().unwrap_or_else(|e| panic!("{m}: {e}"));
            assert!(first.contains("too many open files"), "{m}: {first}");
            assert_eq!(second, "next", "{m}");
        }
    });
}
