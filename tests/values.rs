//! Every serde value crosses a process: the compact format's shapes, `Dynamic` for the shapes
//! that need a self-describing encoding, and errors that name the field and the fix.

mod common;
use common::*;
use multiprocess::{Dynamic, Pipe, Process, Queue};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
enum Internal {
    Started { pid: i32 },
    Named { name: String, tags: Vec<String> },
    Idle,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", content = "c")]
enum Adjacent {
    Num(u32),
    Text { s: String },
    Nothing,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum Untagged {
    Num(u64),
    Text(String),
    Pair(u8, String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Extra {
    colour: String,
    size: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Flattened {
    id: u32,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Skips {
    a: u32,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    b: Option<u32>,
    c: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Outer {
    Leaf(Inner),
    Pair(Box<Outer>, Box<Outer>),
    Empty,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Inner {
    A { x: i8 },
    B(char),
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Zst;

/// A sequence whose length serde does not know up front (a filtered iterator).
#[derive(Debug, Clone, PartialEq)]
struct Evens(Vec<u32>);

impl Serialize for Evens {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().filter(|x| *x % 2 == 0))
    }
}

impl<'de> Deserialize<'de> for Evens {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::deserialize(d).map(Evens)
    }
}

/// Through a pipe in this process (the encoding is the same as between processes).
fn pipe_round_trip<T: Serialize + serde::de::DeserializeOwned>(v: &T) -> T {
    let (a, b) = Pipe::new().unwrap();
    a.send(v).unwrap();
    b.recv().unwrap()
}

fn recv_error<T: Serialize, U: serde::de::DeserializeOwned>(v: &T) -> String {
    let (a, b) = Pipe::new().unwrap();
    a.send(v).unwrap();
    match b.recv::<U>() {
        Ok(_) => panic!("decoded as {}", std::any::type_name::<U>()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_compact_format_carries_the_common_shapes() {
    let mut hm: HashMap<String, Vec<u32>> = HashMap::new();
    hm.insert("a".into(), vec![1, 2]);
    hm.insert(String::new(), vec![]);
    assert_eq!(pipe_round_trip(&hm), hm);
    let bt: BTreeMap<i32, Option<String>> = [(-1, None), (2, Some(String::new()))].into();
    assert_eq!(pipe_round_trip(&bt), bt);
    let opt: Vec<Option<Option<u8>>> = vec![None, Some(None), Some(Some(7))];
    assert_eq!(pipe_round_trip(&opt), opt);
    let nested = Outer::Pair(
        Box::new(Outer::Leaf(Inner::A { x: -3 })),
        Box::new(Outer::Pair(
            Box::new(Outer::Empty),
            Box::new(Outer::Leaf(Inner::B('√'))),
        )),
    );
    assert_eq!(pipe_round_trip(&nested), nested);
    assert_eq!(pipe_round_trip(&'🦀'), '🦀');
    assert_eq!(pipe_round_trip(&i128::MIN), i128::MIN);
    assert_eq!(pipe_round_trip(&u128::MAX), u128::MAX);
    assert!(pipe_round_trip(&f32::NAN).is_nan());
    assert_eq!(
        pipe_round_trip(&f64::NEG_INFINITY).to_bits(),
        f64::NEG_INFINITY.to_bits()
    );
    // NaN payload bits are kept, not just "a NaN".
    let odd_nan = f32::from_bits(0x7fc0_1234);
    assert_eq!(pipe_round_trip(&odd_nan).to_bits(), 0x7fc0_1234);
    assert_eq!(pipe_round_trip(&String::new()), "");
    assert_eq!(pipe_round_trip(&()), ());
    assert_eq!(pipe_round_trip(&Zst), Zst);
    assert_eq!(pipe_round_trip(&vec![Zst; 1000]).len(), 1000);
    assert_eq!(pipe_round_trip(&[0u8; 0]), [0u8; 0]);
    assert_eq!(
        pipe_round_trip(&std::marker::PhantomData::<String>),
        std::marker::PhantomData
    );
    assert_eq!(
        pipe_round_trip(&Evens(vec![1, 2, 3, 4, 6])),
        Evens(vec![2, 4, 6])
    );
}

#[test]
fn dynamic_carries_the_self_describing_shapes() {
    let internal = vec![
        Internal::Started { pid: 4 },
        Internal::Named {
            name: "n".into(),
            tags: vec!["a".into(), String::new()],
        },
        Internal::Idle,
    ];
    assert_eq!(pipe_round_trip(&Dynamic(internal.clone())).0, internal);
    let untagged = vec![
        Untagged::Num(1),
        Untagged::Text("two".into()),
        Untagged::Pair(3, "three".into()),
    ];
    assert_eq!(pipe_round_trip(&Dynamic(untagged.clone())).0, untagged);
    let adjacent = vec![
        Adjacent::Num(5),
        Adjacent::Text { s: "x".into() },
        Adjacent::Nothing,
        Adjacent::Num(6),
    ];
    assert_eq!(pipe_round_trip(&Dynamic(adjacent.clone())).0, adjacent);
    let flat = Flattened {
        id: 9,
        extra: Extra {
            colour: "red".into(),
            size: None,
        },
    };
    assert_eq!(pipe_round_trip(&Dynamic(flat.clone())).0, flat);
    let skips = vec![
        Skips {
            a: 1,
            b: None,
            c: "c".into(),
        },
        Skips {
            a: 2,
            b: Some(3),
            c: String::new(),
        },
    ];
    assert_eq!(pipe_round_trip(&Dynamic(skips.clone())).0, skips);
    let json = serde_json::json!({
        "name": "x", "n": [1, -2, 3.5, null, true], "nested": {"empty": ""}
    });
    assert_eq!(pipe_round_trip(&Dynamic(json.clone())).0, json);
    // Only the field that needs it is wrapped; the rest stays compact.
    let mixed = (7u64, Dynamic(Internal::Idle), vec![1u8, 2]);
    assert_eq!(pipe_round_trip(&mixed), mixed);
    // Everything the compact format carries, Dynamic carries too.
    let nested = Outer::Pair(
        Box::new(Outer::Leaf(Inner::A { x: -3 })),
        Box::new(Outer::Leaf(Inner::B('√'))),
    );
    assert_eq!(pipe_round_trip(&Dynamic(nested.clone())).0, nested);
    let all = (
        i128::MIN,
        u128::MAX,
        '🦀',
        String::new(),
        Zst,
        (),
        Some(None::<u8>),
    );
    assert_eq!(pipe_round_trip(&Dynamic(all.clone())).0, all);
    assert!(pipe_round_trip(&Dynamic(f32::NAN)).0.is_nan());
    let mut hm: HashMap<String, Vec<Option<u32>>> = HashMap::new();
    hm.insert("k".into(), vec![None, Some(1)]);
    assert_eq!(pipe_round_trip(&Dynamic(hm.clone())).0, hm);
}

#[test]
fn a_shape_that_needs_dynamic_says_so_and_names_the_field() {
    #[derive(Serialize, Deserialize)]
    struct Batch {
        id: u32,
        events: Vec<Internal>,
    }
    let msg = recv_error::<_, Batch>(&Batch {
        id: 1,
        events: vec![Internal::Idle],
    });
    assert!(msg.contains("multiprocess::Dynamic"), "{msg}");
    assert!(msg.contains("Batch"), "{msg}");
    assert!(msg.contains("field `events`"), "{msg}");
    assert!(msg.contains("element 0"), "{msg}");
    assert!(msg.contains("internally tagged enum Internal"), "{msg}");

    let msg = recv_error::<_, Adjacent>(&Adjacent::Text { s: "s".into() });
    assert!(msg.contains("multiprocess::Dynamic"), "{msg}");
    let msg = recv_error::<_, Untagged>(&Untagged::Num(1));
    assert!(msg.contains("multiprocess::Dynamic"), "{msg}");
    let msg = recv_error::<_, serde_json::Value>(&1u8);
    assert!(msg.contains("multiprocess::Dynamic"), "{msg}");
    let msg = recv_error::<_, Flattened>(&Flattened {
        id: 1,
        extra: Extra {
            colour: String::new(),
            size: None,
        },
    });
    assert!(msg.contains("multiprocess::Dynamic"), "{msg}");

    // A skipped field is refused when sending: never silently lossy.
    let (a, _b) = Pipe::new().unwrap();
    let e = a
        .send(&Skips {
            a: 1,
            b: None,
            c: String::new(),
        })
        .unwrap_err()
        .to_string();
    assert!(e.contains("field `b` of `Skips`"), "{e}");
    assert!(e.contains("multiprocess::Dynamic"), "{e}");
    // Sent in full, the same type crosses.
    let full = Skips {
        a: 1,
        b: Some(2),
        c: "c".into(),
    };
    assert_eq!(pipe_round_trip(&full), full);
}

#[test]
fn a_wrong_type_names_the_type_and_the_path() {
    #[derive(Serialize)]
    struct Sent {
        a: u8,
        b: Vec<u32>,
    }
    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    struct Expected {
        a: u8,
        b: Vec<char>,
    }
    let msg = recv_error::<_, Expected>(&Sent {
        a: 1,
        b: vec![u32::MAX],
    });
    assert!(msg.contains("element 0"), "{msg}");
    assert!(msg.contains("Expected"), "{msg}");
    assert!(msg.contains("field `b`"), "{msg}");
}

#[test]
fn dynamic_refuses_hostile_bytes() {
    deadline(30, || {
        // Deep nesting is refused, not a stack overflow.
        let mut bytes = Vec::new();
        for _ in 0..1000 {
            bytes.push(20u8); // SEQ
            bytes.extend_from_slice(&1u64.to_le_bytes());
        }
        bytes.push(0);
        let (a, b) = Pipe::new().unwrap();
        let mut frame = Vec::new();
        frame.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        frame.extend_from_slice(&bytes);
        a.send_bytes(&frame).unwrap();
        // The frame is a compact `Dynamic` (a byte string): decoding it as `Dynamic<Value>`
        // must fail cleanly.
        let _ = b.recv::<Dynamic<serde_json::Value>>().unwrap_err();
        // A count larger than the bytes left is refused before any allocation.
        let mut huge = vec![20u8];
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        let mut frame = (huge.len() as u64).to_le_bytes().to_vec();
        frame.extend_from_slice(&huge);
        a.send_bytes(&frame).unwrap();
        let e = b.recv::<Dynamic<Vec<u8>>>().unwrap_err().to_string();
        assert!(e.contains("count"), "{e}");
    });
}

fn echo_internal(events: Dynamic<Vec<Internal>>) -> Dynamic<Vec<Internal>> {
    let mut v = events.0;
    v.push(Internal::Started {
        pid: std::process::id() as i32,
    });
    Dynamic(v)
}

fn count_json(v: Dynamic<serde_json::Value>) -> (usize, Dynamic<serde_json::Value>) {
    let n = v.as_object().map_or(0, |o| o.len());
    (n, Dynamic(serde_json::json!({"seen": n})))
}

fn shapes(x: (HashMap<String, i128>, char, f32, String, Zst)) -> (usize, char, bool, usize, Zst) {
    (x.0.len(), x.1, x.2.is_nan(), x.3.len(), x.4)
}

#[test]
fn every_shape_crosses_real_processes_under_every_method() {
    deadline(120, || {
        for m in METHODS {
            // Process arguments and results.
            let mut p = Process::builder()
                .start_method(m)
                .target(echo_internal, Dynamic(vec![Internal::Idle]));
            p.start().unwrap();
            let got = p.join_result().unwrap().0;
            assert_eq!(got.len(), 2, "{m}");
            assert!(matches!(got[1], Internal::Started { pid } if pid == p.pid().unwrap()));

            let hm: HashMap<String, i128> = [("x".to_string(), i128::MIN)].into();
            let mut p = Process::builder()
                .start_method(m)
                .target(shapes, (hm, 'ß', f32::NAN, String::new(), Zst));
            p.start().unwrap();
            assert_eq!(p.join_result().unwrap(), (1, 'ß', true, 0, Zst), "{m}");

            // A queue passed to a child.
            let q: Queue<Dynamic<serde_json::Value>> = Queue::new(0).unwrap();
            let mut p = Process::builder().start_method(m).target(
                |q: Queue<Dynamic<serde_json::Value>>| {
                    q.put(Dynamic(serde_json::json!({"from": "child", "n": [1, 2]})))
                        .unwrap();
                },
                q.clone(),
            );
            p.start().unwrap();
            let v = q.get_timeout(std::time::Duration::from_secs(20)).unwrap();
            assert_eq!(v.0["n"][1], 2, "{m}");
            p.join_timeout(std::time::Duration::from_secs(20)).unwrap();

            // The pool.
            let pool = pool(m, 2);
            let inputs: Vec<Dynamic<serde_json::Value>> = (0..20)
                .map(|i| Dynamic(serde_json::json!({"i": i, "k": "v"})))
                .collect();
            let out = pool.map(count_json, inputs).unwrap();
            assert_eq!(out.len(), 20);
            assert!(out.iter().all(|(n, v)| *n == 2 && v.0["seen"] == 2), "{m}");
            let r = pool
                .apply(echo_internal, Dynamic(vec![Internal::Idle]))
                .unwrap();
            assert_eq!(r.0.len(), 2, "{m}");
            pool.close();
            pool.join().unwrap();
        }
    });
}

fn tagged_result(_: u32) -> Internal {
    Internal::Idle
}

#[test]
fn a_pool_result_that_needs_dynamic_names_its_type() {
    deadline(60, || {
        let pool = pool(StartMethod::Fork, 1);
        let e = pool.map(tagged_result, vec![1, 2]).unwrap_err();
        assert_eq!(e.kind(), multiprocess::PoolErrorKind::Decode);
        let e = e.to_string();
        assert!(e.contains("Internal"), "{e}");
        assert!(e.contains("multiprocess::Dynamic"), "{e}");
        assert!(!e.contains("`()`"), "{e}");
        pool.terminate();
    });
}
