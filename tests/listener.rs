//! Listener and Client: address families, the authkey handshake, ends passed to children,
//! hostile clients, and wire compatibility with CPython's `multiprocessing.connection`.

mod common;
use common::*;
use multiprocess::connection::{wait, Address, AuthenticationError, Client, Listener, ToAddress};
use multiprocess::{Connection, ConnectionError, Process};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Which key a test client presents.
#[derive(Clone, Copy)]
enum Key {
    Process,
    Given(&'static [u8]),
    None,
}

fn pair_over(listener: &Listener, key: Key) -> (Connection, Connection) {
    let address = listener.address().clone();
    let t = std::thread::spawn(move || {
        let b = Client::builder();
        let b = match key {
            Key::Given(k) => b.authkey(k),
            Key::Process => b,
            Key::None => b.no_authentication(),
        };
        b.connect(&address)
    });
    let server = listener.accept_timeout(Duration::from_secs(10)).unwrap();
    let client = t.join().unwrap().unwrap();
    (server, client)
}

fn exchange(a: &Connection, b: &Connection) {
    a.send(&("hello", 1u32)).unwrap();
    assert_eq!(b.recv::<(String, u32)>().unwrap(), ("hello".into(), 1));
    b.send_bytes(b"bytes back").unwrap();
    assert_eq!(a.recv_bytes().unwrap(), b"bytes back");
    let big = vec![7u8; 3 << 20];
    std::thread::scope(|sc| {
        sc.spawn(|| a.send_bytes(&big).unwrap());
        assert_eq!(b.recv_bytes().unwrap(), big);
    });
    assert!(!a.poll(Duration::ZERO).unwrap());
    b.send(&5u8).unwrap();
    assert_eq!(wait(&[a], Some(Duration::from_secs(5))).unwrap(), [0]);
    assert_eq!(a.recv::<u8>().unwrap(), 5);
}

#[test]
fn every_address_family() {
    deadline(60, || {
        let tmp = std::env::temp_dir().join(format!("mp-test-{}.sock", std::process::id()));
        let abstract_name = format!("\0mp-test-{}", std::process::id());
        let addresses: Vec<Address> = vec![
            "127.0.0.1:0".to_address().unwrap(),
            "[::1]:0".to_address().unwrap(),
            tmp.to_address().unwrap(),
            abstract_name.to_address().unwrap(),
        ];
        for a in addresses {
            let l = Listener::bind(&a).unwrap_or_else(|e| panic!("{a}: {e}"));
            if let Address::Tcp(t) = l.address() {
                assert_ne!(t.port(), 0, "the bound port is reported");
            }
            let (s, c) = pair_over(&l, Key::Process);
            exchange(&s, &c);
            exchange(&c, &s);
            assert!(l.last_accepted().is_some());
            // Binding an address that is listened on is an error.
            assert!(Listener::bind(l.address()).is_err(), "{a}: bound twice");
            drop((s, c));
            l.close();
            l.close();
        }
        assert!(!tmp.exists(), "close removes the socket file");
    });
}

#[test]
fn default_address_is_private_and_removed() {
    deadline(30, || {
        let l = Listener::new().unwrap();
        let Address::Unix(path) = l.address().clone() else {
            panic!("default is a Unix socket")
        };
        let dir = path.parent().unwrap().to_path_buf();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let (s, c) = pair_over(&l, Key::Process);
        exchange(&s, &c);
        drop(l);
        assert!(!path.exists() && !dir.exists());
    });
}

#[test]
fn wrong_key_is_refused_at_both_ends_with_distinct_errors() {
    deadline(30, || {
        let l = Listener::builder()
            .address("127.0.0.1:0")
            .authkey(b"right")
            .bind()
            .unwrap();
        let address = l.address().clone();
        let t = std::thread::spawn(move || Client::builder().authkey(b"wrong").connect(&address));
        let server = l.accept_timeout(Duration::from_secs(10)).unwrap_err();
        let client = t.join().unwrap().unwrap_err();
        assert!(
            matches!(
                server,
                ConnectionError::Authentication(AuthenticationError::DigestReceivedWrong)
            ),
            "{server}"
        );
        assert!(
            matches!(
                client,
                ConnectionError::Authentication(AuthenticationError::DigestSentRejected)
            ),
            "{client}"
        );
        assert!(server.to_string().contains("digest received was wrong"));
        assert!(client.to_string().contains("digest sent was rejected"));
        // The listener goes on serving.
        let (s, c) = pair_over(&l, Key::Given(b"right"));
        exchange(&s, &c);
    });
}

/// A child connects with the authkey it inherited, under every start method.
fn child_client(address: Address) -> String {
    let conn = Client::connect(&address).unwrap();
    conn.send(&multiprocess::current_process().name().to_string())
        .unwrap();
    conn.recv::<String>().unwrap()
}

/// An accepted end passed to a child as an argument.
fn child_serves(conn: Connection) {
    let n: u64 = conn.recv().unwrap();
    conn.send(&(n * 2)).unwrap();
}

#[test]
fn children_inherit_the_authkey_and_take_accepted_ends() {
    deadline(90, || {
        let parent_key = multiprocess::current_process().authkey();
        for m in METHODS {
            let l = Listener::new().unwrap();
            let mut p = Process::builder()
                .start_method(m)
                .target(child_client, l.address().clone());
            p.start().unwrap();
            let conn = l.accept_timeout(Duration::from_secs(20)).unwrap();
            let name: String = conn.recv().unwrap();
            conn.send(&format!("welcome {name}")).unwrap();
            assert!(p.join_timeout(Duration::from_secs(20)).unwrap());
            assert_eq!(p.exitcode(), Some(0), "{m}");
            assert_eq!(multiprocess::current_process().authkey(), parent_key);

            // An accepted end travels to a child, which answers on it.
            let (s, c) = pair_over(&l, Key::Process);
            let mut p = Process::builder().start_method(m).target(child_serves, s);
            p.start().unwrap();
            c.send(&21u64).unwrap();
            assert_eq!(c.recv_timeout::<u64>(Duration::from_secs(20)).unwrap(), 42);
            p.join_timeout(Duration::from_secs(20)).unwrap();
            assert_eq!(p.exitcode(), Some(0), "{m}");
        }
    });
}

/// Writes a CPython frame (4-byte big-endian length) by hand.
fn raw_frame(payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as i32).to_be_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

fn read_raw_frame(s: &mut impl Read) -> Vec<u8> {
    let mut h = [0u8; 4];
    s.read_exact(&mut h).unwrap();
    let mut p = vec![0u8; i32::from_be_bytes(h) as usize];
    s.read_exact(&mut p).unwrap();
    p
}

#[test]
fn hostile_clients_get_errors_and_others_are_served() {
    deadline(60, || {
        let l = Listener::builder()
            .address("127.0.0.1:0")
            .authkey(b"key")
            .handshake_timeout(Duration::from_millis(700))
            .bind()
            .unwrap();
        let Address::Tcp(at) = l.address().clone() else {
            unreachable!()
        };
        let good = |l: &Listener| {
            let (s, c) = pair_over(l, Key::Given(b"key"));
            exchange(&s, &c);
        };

        // 1. A 2^62 length prefix instead of the answer: refused at the header.
        let t = std::thread::spawn(move || {
            let mut s = TcpStream::connect(at).unwrap();
            let challenge = read_raw_frame(&mut s);
            assert!(challenge.starts_with(b"#CHALLENGE#{sha256}"));
            assert_eq!(challenge.len(), 11 + 8 + 40);
            s.write_all(&(-1i32).to_be_bytes()).unwrap();
            s.write_all(&(1u64 << 62).to_be_bytes()).unwrap();
            s
        });
        let e = l.accept_timeout(Duration::from_secs(5)).unwrap_err();
        assert!(matches!(e, ConnectionError::TooLarge { .. }), "{e}");
        drop(t.join().unwrap());
        good(&l);

        // 2. Garbage of a valid length.
        let t = std::thread::spawn(move || {
            let mut s = TcpStream::connect(at).unwrap();
            read_raw_frame(&mut s);
            s.write_all(&raw_frame(b"this is not a digest at all"))
                .unwrap();
            s
        });
        let e = l.accept_timeout(Duration::from_secs(5)).unwrap_err();
        assert!(matches!(e, ConnectionError::Authentication(_)), "{e}");
        drop(t.join().unwrap());
        good(&l);

        // 3. A truncated handshake: half a header, then gone.
        let t = std::thread::spawn(move || {
            let mut s = TcpStream::connect(at).unwrap();
            read_raw_frame(&mut s);
            s.write_all(&[0, 0]).unwrap();
        });
        let e = l.accept_timeout(Duration::from_secs(5)).unwrap_err();
        assert!(e.is_eof(), "{e}");
        t.join().unwrap();
        good(&l);

        // 4. A client that never answers does not hold up the next one, and is dropped at
        // the handshake timeout.
        let mut slow = TcpStream::connect(at).unwrap();
        let started = Instant::now();
        good(&l);
        assert!(started.elapsed() < Duration::from_millis(600));
        let e = l.accept_timeout(Duration::from_secs(5)).unwrap_err();
        assert!(
            matches!(
                e,
                ConnectionError::Authentication(AuthenticationError::Timeout(_))
            ),
            "{e}"
        );
        let mut rest = Vec::new();
        read_raw_frame(&mut slow);
        let _ = slow.read_to_end(&mut rest);
        assert!(rest.is_empty(), "the stalled client's socket was closed");
        good(&l);

        // 5. A client that sends a challenge-shaped garbage frame to our client.
        let fake = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fake_at = fake.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = fake.accept().unwrap();
            s.write_all(&raw_frame(b"#NOT-A-CHALLENGE#")).unwrap();
            std::thread::sleep(Duration::from_millis(200));
        });
        let e = Client::builder()
            .authkey(b"key")
            .connect(fake_at)
            .unwrap_err();
        assert!(matches!(e, ConnectionError::Authentication(_)), "{e}");
        t.join().unwrap();
    });
}

#[test]
fn oversized_frame_after_authentication() {
    deadline(30, || {
        let l = Listener::builder()
            .address("127.0.0.1:0")
            .no_authentication()
            .bind()
            .unwrap();
        let Address::Tcp(at) = l.address().clone() else {
            unreachable!()
        };
        let mut raw = TcpStream::connect(at).unwrap();
        let server = l.accept_timeout(Duration::from_secs(5)).unwrap();
        server.set_max_message_len(1 << 20);
        raw.write_all(&(-1i32).to_be_bytes()).unwrap();
        raw.write_all(&(1u64 << 62).to_be_bytes()).unwrap();
        let e = server
            .recv_bytes_timeout(Duration::from_secs(5))
            .unwrap_err();
        assert!(matches!(e, ConnectionError::TooLarge { .. }), "{e}");
        let e = server
            .recv_bytes_timeout(Duration::from_secs(5))
            .unwrap_err();
        assert!(matches!(e, ConnectionError::Malformed(_)), "{e}");
        // A negative length that is not -1.
        let mut raw = TcpStream::connect(at).unwrap();
        let server = l.accept_timeout(Duration::from_secs(5)).unwrap();
        raw.write_all(&(-7i32).to_be_bytes()).unwrap();
        let e = server
            .recv_bytes_timeout(Duration::from_secs(5))
            .unwrap_err();
        assert!(matches!(e, ConnectionError::Malformed(_)), "{e}");
        // The listener still serves.
        let (s, c) = pair_over(&l, Key::None);
        exchange(&s, &c);
    });
}

#[test]
fn close_wakes_a_waiting_accept() {
    deadline(30, || {
        let l = std::sync::Arc::new(Listener::new().unwrap());
        let l2 = l.clone();
        let t = std::thread::spawn(move || l2.accept());
        std::thread::sleep(Duration::from_millis(100));
        l.close();
        assert!(t.join().unwrap().is_err());
        assert!(l.accept_timeout(Duration::from_millis(10)).is_err());
    });
}

#[test]
fn handles_cross_unix_ends_but_not_tcp() {
    deadline(30, || {
        let l = Listener::new().unwrap();
        let (s, c) = pair_over(&l, Key::Process);
        let (a, b) = multiprocess::Pipe::new().unwrap();
        s.send(&a).unwrap();
        let a2: Connection = c.recv().unwrap();
        a2.send(&"through a passed pipe").unwrap();
        assert_eq!(b.recv::<String>().unwrap(), "through a passed pipe");
        let l = Listener::bind("127.0.0.1:0").unwrap();
        let (s, _c) = pair_over(&l, Key::Process);
        let e = s.send(&b).unwrap_err();
        assert!(matches!(e, ConnectionError::Encode(_)), "{e}");
        assert!(e.to_string().contains("TCP"));
    });
}

// ---------------------------------------------------------------------------------------------
// CPython interoperability.

fn python() -> Option<&'static str> {
    let ok = Command::new("python3")
        .args(["-c", "import multiprocessing.connection"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIPPED: no python3 with multiprocessing on this machine");
        return None;
    }
    Some("python3")
}

/// A Python process running `script`, killed if it outlives the test's wait.
struct Py(std::process::Child);

impl Py {
    fn start(script: &str, args: &[&str]) -> Py {
        let child = Command::new("python3")
            .arg("-c")
            .arg(script)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Py(child)
    }

    fn first_line(&mut self) -> String {
        let out = self.0.stdout.as_mut().unwrap();
        let mut line = Vec::new();
        let mut b = [0u8];
        while out.read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {
            line.push(b[0]);
        }
        String::from_utf8(line).unwrap()
    }

    /// Waits up to 20 s; returns (success, stdout, stderr).
    fn finish(mut self) -> (bool, String, String) {
        let end = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = self.0.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > end {
                let _ = self.0.kill();
                break self.0.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut out = String::new();
        let mut err = String::new();
        let _ = self.0.stdout.take().unwrap().read_to_string(&mut out);
        let _ = self.0.stderr.take().unwrap().read_to_string(&mut err);
        (status.success(), out, err)
    }
}

impl Drop for Py {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const PY_LISTENER: &str = r#"
import sys
from multiprocessing.connection import Listener
family, key = sys.argv[1], sys.argv[2].encode()
address = ('127.0.0.1', 0) if family == 'tcp' else sys.argv[3]
with Listener(address, authkey=key) as l:
    print(l.address[1] if family == 'tcp' else 'ready', flush=True)
    try:
        c = l.accept()
    except Exception as e:
        print('REFUSED', type(e).__name__, e, flush=True)
        sys.exit(0)
    b = c.recv_bytes()
    c.send_bytes(b[::-1])
    n = len(c.recv_bytes())
    c.send_bytes(str(n).encode())
    print('OK', flush=True)
"#;

const PY_CLIENT: &str = r#"
import sys
from multiprocessing.connection import Client
family, key = sys.argv[1], sys.argv[2].encode()
address = ('127.0.0.1', int(sys.argv[3])) if family == 'tcp' else sys.argv[3]
try:
    c = Client(address, authkey=key)
except Exception as e:
    print('REFUSED', type(e).__name__, e, flush=True)
    sys.exit(0)
c.send_bytes(b'from python')
print(c.recv_bytes().decode(), flush=True)
c.send_bytes(b'x' * 100000)
print(c.recv_bytes().decode(), flush=True)
"#;

/// A Python listener on `family` ("tcp": a free port; "unix": `path`), and its address.
fn python_listener(family: &str, path: &std::path::Path) -> (Py, Address) {
    let mut py = Py::start(PY_LISTENER, &[family, "sesame", path.to_str().unwrap()]);
    let first = py.first_line();
    let address = if family == "tcp" {
        ("127.0.0.1", first.parse::<u16>().unwrap())
            .to_address()
            .unwrap()
    } else {
        path.to_address().unwrap()
    };
    (py, address)
}

#[test]
fn rust_client_against_python_listener() {
    deadline(60, || {
        if python().is_none() {
            return;
        }
        for family in ["tcp", "unix"] {
            let path = std::env::temp_dir().join(format!("mp-py-{}-{family}", std::process::id()));
            let _ = std::fs::remove_file(&path);
            let (py, address) = python_listener(family, &path);
            let conn = Client::builder()
                .authkey(b"sesame")
                .connect(&address)
                .unwrap();
            conn.send_bytes(b"abc").unwrap();
            assert_eq!(conn.recv_bytes().unwrap(), b"cba");
            conn.send_bytes(&vec![1u8; 200_000]).unwrap();
            assert_eq!(conn.recv_bytes().unwrap(), b"200000");
            let (ok, out, err) = py.finish();
            assert!(ok && out.contains("OK"), "{family}: {out} {err}");

            // A wrong key: refused at both ends, with Python's words on its side.
            let (py, address) = python_listener(family, &path);
            let e = Client::builder()
                .authkey(b"wrong")
                .connect(&address)
                .unwrap_err();
            assert!(
                matches!(
                    e,
                    ConnectionError::Authentication(AuthenticationError::DigestSentRejected)
                ),
                "{e}"
            );
            let (_, out, err) = py.finish();
            assert!(
                out.contains("REFUSED AuthenticationError digest received was wrong"),
                "{out} {err}"
            );
            let _ = std::fs::remove_file(&path);
        }
    });
}

#[test]
fn python_client_against_rust_listener() {
    deadline(60, || {
        if python().is_none() {
            return;
        }
        for family in ["tcp", "unix"] {
            let l = if family == "tcp" {
                Listener::builder().address("127.0.0.1:0")
            } else {
                Listener::builder()
            }
            .authkey(b"sesame")
            .bind()
            .unwrap();
            let arg = match l.address() {
                Address::Tcp(a) => a.port().to_string(),
                Address::Unix(p) => p.to_str().unwrap().to_string(),
                _ => unreachable!(),
            };
            let py = Py::start(PY_CLIENT, &[family, "sesame", &arg]);
            let conn = l.accept_timeout(Duration::from_secs(20)).unwrap();
            assert_eq!(conn.recv_bytes().unwrap(), b"from python");
            conn.send_bytes(b"from rust").unwrap();
            let n = conn.recv_bytes().unwrap().len();
            conn.send_bytes(n.to_string().as_bytes()).unwrap();
            let (ok, out, err) = py.finish();
            assert!(ok, "{err}");
            assert_eq!(out, "from rust\n100000\n", "{err}");

            let py = Py::start(PY_CLIENT, &[family, "wrong", &arg]);
            let e = l.accept_timeout(Duration::from_secs(20)).unwrap_err();
            assert!(
                matches!(
                    e,
                    ConnectionError::Authentication(AuthenticationError::DigestReceivedWrong)
                ),
                "{e}"
            );
            let (_, out, err) = py.finish();
            assert!(
                out.contains("REFUSED AuthenticationError digest sent was rejected"),
                "{out} {err}"
            );
        }
    });
}

/// The `{sha256}` form of CPython >= 3.12, checked against digests computed by Python's own
/// `hmac` module (this machine's Python may be older and speak only the legacy form; its
/// `hmac` computes every digest).
#[test]
fn sha256_form_matches_pythons_hmac() {
    deadline(60, || {
        if python().is_none() {
            return;
        }
        // A Python peer that follows CPython 3.12's answer_challenge and deliver_challenge
        // step by step, whatever its own version.
        const PY312: &str = r#"
import sys, hmac, os, socket, struct
s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))
key = b'sesame'
def send(b): s.sendall(struct.pack('!i', len(b)) + b)
def recv():
    n, = struct.unpack('!i', s.recv(4, socket.MSG_WAITALL))
    return s.recv(n, socket.MSG_WAITALL)
m = recv()
assert m.startswith(b'#CHALLENGE#{sha256}'), m
m = m[len(b'#CHALLENGE#'):]
send(b'{sha256}' + hmac.new(key, m, 'sha256').digest())
assert recv() == b'#WELCOME#'
m = b'{sha256}' + os.urandom(40)
send(b'#CHALLENGE#' + m)
r = recv()
assert r == b'{sha256}' + hmac.new(key, m, 'sha256').digest(), r
send(b'#WELCOME#')
send(b'done')
print('OK', flush=True)
"#;
        let l = Listener::builder()
            .address("127.0.0.1:0")
            .authkey(b"sesame")
            .bind()
            .unwrap();
        let Address::Tcp(at) = l.address().clone() else {
            unreachable!()
        };
        let py = Py::start(PY312, &[&at.port().to_string()]);
        let conn = l.accept_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(conn.recv_bytes().unwrap(), b"done");
        let (ok, out, err) = py.finish();
        assert!(ok && out.contains("OK"), "{out} {err}");
    });
}

#[test]
fn large_frame_header_form() {
    // Over 2 GiB, CPython writes -1 then an 8-byte length; a header of that form for a small
    // payload is read as a normal message.
    let l = Listener::builder()
        .address("127.0.0.1:0")
        .no_authentication()
        .bind()
        .unwrap();
    let Address::Tcp(at) = l.address().clone() else {
        unreachable!()
    };
    let mut raw = TcpStream::connect(at).unwrap();
    let server = l.accept_timeout(Duration::from_secs(5)).unwrap();
    raw.write_all(&(-1i32).to_be_bytes()).unwrap();
    raw.write_all(&5u64.to_be_bytes()).unwrap();
    raw.write_all(b"hello").unwrap();
    assert_eq!(
        server.recv_bytes_timeout(Duration::from_secs(5)).unwrap(),
        b"hello"
    );
    // And our sender's header for a short message is the 4-byte form.
    server.send_bytes(b"hi").unwrap();
    let mut h = [0u8; 6];
    raw.read_exact(&mut h).unwrap();
    assert_eq!(h, [0, 0, 0, 2, b'h', b'i']);
}
