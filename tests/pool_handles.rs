//! Handles in pool tasks: a `Connection` made by the parent, passed as a task argument (alone,
//! in a chunk of a map, to the initializer), works in the worker; handles come back in results.

mod common;
use common::*;
use multiprocess::{Connection, Pipe, Pool};

/// Receives a number on `conn`, sends back its double; returns the worker's pid.
fn doubler(conn: Connection) -> i32 {
    let x: i64 = conn.recv().unwrap();
    conn.send(&(x * 2)).unwrap();
    std::process::id() as i32
}

fn tag((id, conn): (u32, Connection)) -> u32 {
    conn.send(&id).unwrap();
    id
}

/// Makes a pipe in the worker and returns one end to the parent.
fn make_pipe(greeting: String) -> Connection {
    let (a, b) = Pipe::new().unwrap();
    a.send(&greeting).unwrap();
    // `a` is dropped here: the parent reads the greeting, then end of file.
    b
}

#[test]
fn a_connection_passed_to_a_task_works_in_the_worker() {
    deadline(60, || {
        for m in METHODS {
            let p = pool(m, 2);
            let (a, b) = Pipe::new().unwrap();
            let mut r = p.apply_async(doubler, b);
            a.send(&21i64).unwrap();
            assert_eq!(a.recv::<i64>().unwrap(), 42, "{m}");
            assert!(p.pids().contains(&r.get().unwrap()));
        }
    });
}

#[test]
fn connections_in_the_items_of_a_map() {
    deadline(60, || {
        for m in METHODS {
            let p = pool(m, 2);
            let (rx, tx) = Pipe::new().unwrap();
            // Each item carries a copy of the same sending end (received separately).
            let items: Vec<(u32, Connection)> = (0..40)
                .map(|i| {
                    let (x, y) = Pipe::new().unwrap();
                    x.send(&tx).unwrap();
                    (i, y.recv::<Connection>().unwrap())
                })
                .collect();
            drop(tx);
            assert_eq!(
                p.map_chunked(tag, items, 7).unwrap(),
                (0..40).collect::<Vec<_>>()
            );
            let mut got: Vec<u32> = (0..40).map(|_| rx.recv().unwrap()).collect();
            got.sort_unstable();
            assert_eq!(got, (0..40).collect::<Vec<_>>(), "{m}");
        }
    });
}

fn announce(conn: Connection) {
    conn.send(&(std::process::id() as i32)).unwrap();
}

#[test]
fn the_initializer_gets_a_connection() {
    deadline(60, || {
        for m in METHODS {
            let (a, b) = Pipe::new().unwrap();
            let p = Pool::builder()
                .processes(2)
                .start_method(m)
                .initializer(announce, b)
                .build()
                .unwrap();
            let mut pids = vec![a.recv::<i32>().unwrap(), a.recv::<i32>().unwrap()];
            pids.sort_unstable();
            let mut now = p.pids();
            now.sort_unstable();
            assert_eq!(pids, now, "{m}");
        }
    });
}

#[test]
fn a_connection_returned_by_a_task() {
    deadline(60, || {
        for m in METHODS {
            let p = pool(m, 2);
            let conn = p.apply(make_pipe, "from the worker".to_string()).unwrap();
            assert_eq!(conn.recv::<String>().unwrap(), "from the worker", "{m}");
            assert!(conn.recv::<String>().unwrap_err().is_eof());
        }
    });
}

/// Inside a task, another serde format cannot serialize a handle, nor deserialize one out of
/// the descriptors that came with the task's chunk (they belong to the other items).
fn foreign_formats_fail(c: Connection) -> bool {
    let stolen = postcard::from_bytes::<Connection>(&[1]).is_ok();
    let leaked = postcard::to_allocvec(&c).is_ok();
    let sent = c.send(&7u8).is_ok();
    !stolen && !leaked && sent
}

#[test]
fn a_task_sees_no_descriptors_of_its_chunk() {
    deadline(60, || {
        for m in METHODS {
            let p = pool(m, 2);
            let (ours, theirs): (Vec<Connection>, Vec<Connection>) =
                (0..4).map(|_| Pipe::new().unwrap()).unzip();
            let ok = p.map_chunked(foreign_formats_fail, theirs, 4).unwrap();
            assert_eq!(ok, [true; 4], "{m}");
            for c in &ours {
                assert_eq!(c.recv::<u8>().unwrap(), 7, "{m}");
            }
        }
    });
}
