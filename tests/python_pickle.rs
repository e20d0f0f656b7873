//! Values to and from a Python process through pickle (feature `pickle`).
#![cfg(feature = "pickle")]

mod common;
use common::*;
use multiprocess::connection::{Address, Listener};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u64,
    item: String,
    qty: Vec<i32>,
    note: Option<String>,
    rush: bool,
    price: f64,
    #[serde(with = "serde_bytes_compat")]
    blob: Vec<u8>,
}

/// `Vec<u8>` as pickle bytes (what `serde_bytes` does), without the dependency.
mod serde_bytes_compat {
    use serde::{Deserializer, Serializer};
    pub(crate) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        d.deserialize_byte_buf(V)
    }
}

const PY: &str = r#"
import sys
from multiprocessing.connection import Client
c = Client(('127.0.0.1', int(sys.argv[1])), authkey=b'sesame')
order = c.recv()
print(sorted(order.items()), flush=True)
assert order['id'] == 7 and order['qty'] == [1, 2, 3] and order['note'] is None
c.send({'id': order['id'] + 1, 'item': order['item'].upper(), 'qty': [4, 5],
        'note': 'from python', 'rush': True, 'price': 2.5, 'blob': b'\x00\xff'})
c.send({'a': 1, 'b': 2})
c.send([(1, 'one'), (2, 'two')])
c.send(None)
print('OK', flush=True)
"#;

#[test]
fn structs_and_dicts_cross_to_python_and_back() {
    deadline(60, || {
        if !Command::new("python3")
            .args(["-c", "import multiprocessing.connection"])
            .status()
            .is_ok_and(|s| s.success())
        {
            eprintln!("SKIPPED: no python3 on this machine");
            return;
        }
        let l = Listener::builder()
            .address("127.0.0.1:0")
            .authkey(b"sesame")
            .bind()
            .unwrap();
        let Address::Tcp(at) = l.address().clone() else {
            unreachable!()
        };
        let mut py = Command::new("python3")
            .args(["-c", PY, &at.port().to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let conn = l.accept_timeout(Duration::from_secs(20)).unwrap();
        conn.send_pickle(&Order {
            id: 7,
            item: "widget".into(),
            qty: vec![1, 2, 3],
            note: None,
            rush: false,
            price: 9.75,
            blob: vec![1, 2],
        })
        .unwrap();
        let t = Duration::from_secs(20);
        let back: Order = conn.recv_pickle_timeout(t).unwrap();
        assert_eq!(
            back,
            Order {
                id: 8,
                item: "WIDGET".into(),
                qty: vec![4, 5],
                note: Some("from python".into()),
                rush: true,
                price: 2.5,
                blob: vec![0, 255],
            }
        );
        let map: BTreeMap<String, i64> = conn.recv_pickle_timeout(t).unwrap();
        assert_eq!(map, BTreeMap::from([("a".into(), 1), ("b".into(), 2)]));
        let pairs: Vec<(i32, String)> = conn.recv_pickle_timeout(t).unwrap();
        assert_eq!(pairs, [(1, "one".into()), (2, "two".into())]);
        let none: Option<u8> = conn.recv_pickle_timeout(t).unwrap();
        assert_eq!(none, None);
        let status = py.wait().unwrap();
        let mut out = String::new();
        py.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        let mut err = String::new();
        py.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        assert!(status.success(), "{err}");
        assert!(
            out.contains("('item', 'widget')") && out.contains("('blob', b'\\x01\\x02')"),
            "{out}"
        );
        assert!(out.contains("OK"));
        // A message that is not a pickle of the type asked for is an error, not a panic.
        let (a, b) = multiprocess::Pipe::new().unwrap();
        a.send_bytes(b"\x80\x04garbage").unwrap();
        assert!(b.recv_pickle::<Order>().is_err());
    });
}
