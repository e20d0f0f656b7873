//! Value, Array, their raw forms and shared atomics across processes under every start
//! method.

mod common;
use bytemuck::{Pod, Zeroable};
use common::*;
use multiprocess::{Array, AtomicArray, AtomicValue, Pipe, Process, RawArray, RawValue, Value};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
struct Point {
    x: f64,
    y: f64,
    hits: u64,
}

fn add_to_value((v, p): (Value<u64>, Value<Point>)) {
    for _ in 0..1000 {
        *v.lock().unwrap() += 1;
        let mut g = p.lock().unwrap();
        g.x += 0.5;
        g.hits += 1;
    }
}

#[test]
fn value_arithmetic_across_processes_is_exact() {
    deadline(120, || {
        for m in METHODS {
            let v = Value::new(0u64).unwrap();
            let p = Value::new(Point {
                x: 0.0,
                y: 2.0,
                hits: 0,
            })
            .unwrap();
            let mut ps: Vec<_> = (0..3)
                .map(|_| {
                    Process::builder()
                        .start_method(m)
                        .start(add_to_value, (v.clone(), p.clone()))
                        .unwrap()
                })
                .collect();
            add_to_value((v.clone(), p.clone()));
            for c in &mut ps {
                c.join_result().unwrap();
            }
            assert_eq!(v.get(), 4000, "{m}");
            assert_eq!(
                p.get(),
                Point {
                    x: 2000.0,
                    y: 2.0,
                    hits: 4000
                },
                "{m}"
            );
        }
    });
}

fn fill_part((a, raw, part): (Array<f64>, RawArray<u32>, usize)) {
    let mut g = a.lock().unwrap();
    for i in (part * 4)..(part * 4 + 4) {
        g[i] = i as f64 * 1.5;
    }
    drop(g);
    for i in (part * 4)..(part * 4 + 4) {
        raw.set(i, i as u32 + 100).unwrap();
    }
}

#[test]
fn arrays_are_shared_and_bounds_are_errors() {
    deadline(120, || {
        for m in METHODS {
            let a = Array::<f64>::new(16).unwrap();
            let raw = RawArray::<u32>::new(16).unwrap();
            let mut ps: Vec<_> = (0..4)
                .map(|part| {
                    Process::builder()
                        .start_method(m)
                        .start(fill_part, (a.clone(), raw.clone(), part))
                        .unwrap()
                })
                .collect();
            for c in &mut ps {
                c.join_result().unwrap();
            }
            let want: Vec<f64> = (0..16).map(|i| i as f64 * 1.5).collect();
            assert_eq!(a.to_vec(), want, "{m}");
            assert_eq!(raw.to_vec(), (100..116).collect::<Vec<u32>>(), "{m}");
            assert_eq!(a.get(16), None);
            assert!(raw.set(16, 0).is_err());
            assert_eq!(raw.get(16), None);
        }
    });
}

fn bump_atomics(
    (c, arr, raw): (
        AtomicValue<AtomicU64>,
        AtomicArray<AtomicI64>,
        RawValue<u64>,
    ),
) {
    for i in 0..1000 {
        c.fetch_add(1, Ordering::Relaxed);
        arr[i % 4].fetch_sub(1, Ordering::Relaxed);
    }
    raw.set(7);
}

#[test]
fn shared_atomics_and_raw_values() {
    deadline(120, || {
        for m in METHODS {
            let c = AtomicValue::new(AtomicU64::new(5)).unwrap();
            let arr = AtomicArray::<AtomicI64>::new(4).unwrap();
            let raw = RawValue::new(0u64).unwrap();
            let mut ps: Vec<_> = (0..3)
                .map(|_| {
                    Process::builder()
                        .start_method(m)
                        .start(bump_atomics, (c.clone(), arr.clone(), raw.clone()))
                        .unwrap()
                })
                .collect();
            for p in &mut ps {
                p.join_result().unwrap();
            }
            assert_eq!(c.load(Ordering::Relaxed), 3005, "{m}");
            let sums: Vec<i64> = arr.iter().map(|a| a.load(Ordering::Relaxed)).collect();
            assert_eq!(sums, [-750; 4], "{m}");
            assert_eq!(raw.get(), 7);
        }
    });
}

#[test]
fn a_value_received_as_another_type_is_an_error() {
    deadline(30, || {
        let (a, b) = Pipe::new().unwrap();
        let v = Value::new(1u64).unwrap();
        a.send(&v).unwrap();
        // (postcard reduces the reason to "Serde Deserialization Error").
        assert!(
            b.recv::<Value<u32>>().is_err(),
            "a value of u64 is not one of u32"
        );
        a.send(&v).unwrap();
        assert!(
            b.recv::<RawValue<u64>>().is_err(),
            "a locked value is not a raw one"
        );
        a.send(&Array::<u64>::new(3).unwrap()).unwrap();
        assert!(
            b.recv::<Value<u64>>().is_err(),
            "an array of 3 is not a value"
        );
        a.send(&v).unwrap();
        let back: Value<u64> = b.recv().unwrap();
        back.set(9);
        assert_eq!(v.get(), 9);
    });
}

#[test]
fn block_copies_at_every_alignment_match_a_plain_buffer() {
    let block = multiprocess::SharedMemory::new(64).unwrap();
    let mut model = [0u8; 64];
    let mut n = 1u8;
    for offset in 0..20 {
        for len in [0usize, 1, 3, 7, 8, 9, 16, 17, 30] {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    n = n.wrapping_mul(31).wrapping_add(7);
                    n
                })
                .collect();
            block.write(offset, &data).unwrap();
            model[offset..offset + len].copy_from_slice(&data);
            let mut all = [0u8; 64];
            block.read(0, &mut all).unwrap();
            assert_eq!(all, model, "offset {offset} len {len}");
            let mut part = vec![0u8; len];
            block.read(offset, &mut part).unwrap();
            assert_eq!(part, data);
        }
    }
    assert!(block.write(60, &[0; 5]).is_err());
    assert!(block.read(usize::MAX, &mut [0; 2]).is_err());
    use std::sync::atomic::{AtomicU32, Ordering};
    let words = block.atomic_slice::<AtomicU32>();
    assert_eq!(words.len(), 16);
    assert_eq!(words[1].load(Ordering::Relaxed).to_ne_bytes(), model[4..8]);
}

#[test]
fn value_get_or_set_under_its_own_guard_says_what_to_do() {
    let v = multiprocess::Value::new(1u32).unwrap();
    let g = v.lock().unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| v.set(v.get() + 1)));
    let msg = r.unwrap_err();
    let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("through the guard"), "{msg}");
    drop(g);
    // Through the guard, Python's `with v.get_lock(): v.value += 1`:
    *v.lock().unwrap() += 1;
    assert_eq!(v.get(), 2);
    // Another thread still waits for the lock as before (not a panic).
    let g = v.lock().unwrap();
    let v2 = v.clone();
    let t = std::thread::spawn(move || v2.get());
    std::thread::sleep(std::time::Duration::from_millis(50));
    drop(g);
    assert_eq!(t.join().unwrap(), 2);
}
