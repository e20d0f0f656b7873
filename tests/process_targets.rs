//! Targets: the Run trait (the seed's subclass style), closures, handles as arguments and
//! results, nested children, contexts.

mod common;
use common::*;
use multiprocess::handle::SharedFd;
use multiprocess::{get_context, Connection, Pipe, Process, Run};
use serde::{Deserialize, Serialize};
use std::io::{Read, Seek, Write};
use std::os::fd::OwnedFd;

#[derive(Serialize, Deserialize)]
struct Worker {
    name: String,
    items: Vec<u32>,
}

impl Run for Worker {
    type Output = (String, u32);
    fn run(self) -> (String, u32) {
        (
            format!(
                "{} in {}",
                self.name,
                multiprocess::current_process().name()
            ),
            self.items.iter().sum(),
        )
    }
}

#[test]
fn the_run_trait_under_every_method() {
    deadline(60, || {
        for m in METHODS {
            let mut p = Process::builder()
                .start_method(m)
                .name("runner")
                .runnable(Worker {
                    name: "w".into(),
                    items: vec![1, 2, 3],
                });
            p.start().unwrap();
            assert_eq!(
                p.join_result().unwrap(),
                ("w in runner".to_string(), 6),
                "{m}"
            );
        }
    });
}

#[test]
fn non_capturing_closures_are_targets() {
    deadline(60, || {
        for m in METHODS {
            let mut p = get_context(m).process(|(a, b): (i64, i64)| a * b, (6, 7));
            p.start().unwrap();
            assert_eq!(p.join_result().unwrap(), 42, "{m}");
        }
    });
}

fn write_to(file: SharedFd) -> u64 {
    let mut f = std::fs::File::from(file.into_inner());
    f.write_all(b"written by the child").unwrap();
    f.stream_position().unwrap()
}

#[test]
fn an_open_file_travels_as_an_argument() {
    deadline(60, || {
        for m in METHODS {
            let path = std::env::temp_dir().join(format!("mp-sharedfd-{}-{m}", std::process::id()));
            let file = std::fs::File::options()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&path)
                .unwrap();
            std::fs::remove_file(&path).unwrap();
            let mine = file.try_clone().unwrap();
            let mut p = Process::builder()
                .start_method(m)
                .start(write_to, SharedFd::from(OwnedFd::from(file)))
                .unwrap();
            assert_eq!(p.join_result().unwrap(), 20, "{m}");
            let mut mine = mine;
            mine.rewind().unwrap();
            let mut s = String::new();
            mine.read_to_string(&mut s).unwrap();
            assert_eq!(s, "written by the child");
        }
    });
}

/// Returns a new pipe end to the parent: a handle as a result.
fn make_pipe(_: ()) -> Connection {
    let (a, b) = Pipe::new().unwrap();
    a.send(&"from the child's pipe").unwrap();
    drop(a);
    b
}

#[test]
fn a_handle_travels_back_as_the_result() {
    deadline(60, || {
        for m in METHODS {
            let mut p = Process::builder()
                .start_method(m)
                .start(make_pipe, ())
                .unwrap();
            let conn = p.join_result().unwrap();
            assert_eq!(
                conn.recv::<String>().unwrap(),
                "from the child's pipe",
                "{m}"
            );
        }
    });
}

fn grandchild(x: u32) -> (u32, String, Option<i32>) {
    (
        x + 1,
        multiprocess::current_process().name().to_string(),
        multiprocess::parent_process().map(|p| p.pid()),
    )
}

fn child_starts_grandchild(m: multiprocess::StartMethod) -> (u32, String, Option<i32>, i32) {
    let mut p = Process::builder()
        .start_method(m)
        .start(grandchild, 1)
        .unwrap();
    let (v, name, parent) = p.join_result().unwrap();
    (v, name, parent, std::process::id() as i32)
}

#[test]
fn children_start_children() {
    deadline(60, || {
        for m in METHODS {
            let mut p = Process::builder()
                .start_method(m)
                .start(child_starts_grandchild, m)
                .unwrap();
            let (v, name, parent, child_pid) = p.join_result().unwrap();
            assert_eq!(v, 2);
            assert!(
                name.starts_with("Process-") && name.contains(':'),
                "{m}: nested name {name}"
            );
            assert_eq!(parent, Some(child_pid), "{m}");
        }
    });
}

#[test]
fn start_method_names_round_trip() {
    for m in multiprocess::get_all_start_methods() {
        assert_eq!(m.name().parse::<multiprocess::StartMethod>().unwrap(), m);
    }
    assert!("threads".parse::<multiprocess::StartMethod>().is_err());
}

#[test]
fn public_types_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Connection>();
    send_sync::<multiprocess::ProcessError>();
    send_sync::<multiprocess::ConnectionError>();
    send_sync::<Process<u32>>();
    send::<multiprocess::ActiveChild>();
    send_sync::<SharedFd>();
}
