//! SharedMemory: anonymous blocks that travel, named blocks attached by name from another
//! process, who unlinks what, and a creator SIGKILLed before it could unlink.

mod common;
use common::*;
use multiprocess::shared_memory::remove_orphans;
use multiprocess::{Event, Process, SharedMemory};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "mptest-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Held by the tests that create names in this process: the ledger is one per process, so a
/// test that checks it is gone must not overlap another test's creations.
static CREATES_HERE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn in_dev_shm(name: &str) -> bool {
    std::path::Path::new("/dev/shm").join(name).exists()
}

fn ledgers_of(pid: i32) -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&format!("multiprocess-ledger.{pid}.")))
        .collect()
}

/// Attaches by name only (like an unrelated process), reads, writes, exits.
fn attach_by_name(name: String) -> Vec<u8> {
    let block = SharedMemory::open(&name).unwrap();
    assert!(!block.is_creator());
    let mut buf = vec![0u8; 5];
    block.read(0, &mut buf).unwrap();
    block.write(5, b"world").unwrap();
    buf
}

fn read_handle(block: SharedMemory) -> Vec<u8> {
    let mut buf = vec![0u8; 3];
    block.read(0, &mut buf).unwrap();
    buf
}

#[test]
fn a_child_attaches_by_name_and_never_unlinks() {
    deadline(60, || {
        let _only_creator = CREATES_HERE.lock().unwrap_or_else(|e| e.into_inner());
        for m in METHODS {
            let name = unique("attach");
            let block = SharedMemory::create(&name, 4096).unwrap();
            assert!(block.is_creator());
            assert!(in_dev_shm(&name));
            block.write(0, b"hello").unwrap();
            let mut p = Process::builder()
                .start_method(m)
                .start(attach_by_name, name.clone())
                .unwrap();
            assert_eq!(p.join_result().unwrap(), b"hello", "{m}");
            let mut buf = [0u8; 5];
            block.read(5, &mut buf).unwrap();
            assert_eq!(&buf, b"world");
            assert!(in_dev_shm(&name), "{m}: the attacher removed the name");
            // The creator's handle passed to a child arrives as an attacher's.
            let mut p = Process::builder()
                .start_method(m)
                .start(read_handle, block.clone())
                .unwrap();
            assert_eq!(p.join_result().unwrap(), b"hel", "{m}");
            assert!(in_dev_shm(&name), "{m}: a received handle removed the name");
            let attached = SharedMemory::open(&name).unwrap();
            drop(attached);
            assert!(in_dev_shm(&name));
            drop(block);
            assert!(!in_dev_shm(&name), "{m}: the creator did not unlink");
        }
        assert!(ledgers_of(std::process::id() as i32).is_empty());
    });
}

#[test]
fn explicit_unlink_by_the_creator() {
    deadline(30, || {
        let _only_creator = CREATES_HERE.lock().unwrap_or_else(|e| e.into_inner());
        let name = unique("unlink");
        let block = SharedMemory::create(&name, 100).unwrap();
        assert_eq!(
            SharedMemory::create(&name, 100).unwrap_err().kind(),
            std::io::ErrorKind::AlreadyExists
        );
        block.unlink().unwrap();
        assert!(!in_dev_shm(&name));
        assert_eq!(
            SharedMemory::open(&name).unwrap_err().kind(),
            std::io::ErrorKind::NotFound
        );
        block.write(99, &[1]).unwrap();
        assert!(block.unlink().is_err());
        assert!(SharedMemory::create("a/b", 1).is_err());
        assert!(SharedMemory::create("", 1).is_err());
        assert!(SharedMemory::new(0).is_err());
        let unique = SharedMemory::create_unique(10).unwrap();
        let n = unique.name().unwrap().to_string();
        assert!(in_dev_shm(&n));
        drop(unique);
        assert!(!in_dev_shm(&n));
    });
}

fn create_and_hang((name, ready): (String, Event)) {
    let _block = SharedMemory::create(&name, 4096).unwrap();
    ready.set();
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

#[test]
fn a_killed_creator_leaves_nothing_after_cleanup() {
    deadline(60, || {
        for m in METHODS {
            let name = unique("killed");
            let ready = Event::new().unwrap();
            let mut p = Process::builder()
                .start_method(m)
                .start(create_and_hang, (name.clone(), ready.clone()))
                .unwrap();
            assert!(ready.wait_timeout(Duration::from_secs(20)), "{m}");
            let pid = p.pid().unwrap();
            assert!(in_dev_shm(&name));
            assert_eq!(ledgers_of(pid).len(), 1, "{m}");
            p.kill().unwrap();
            p.join().unwrap();
            // The name outlives its killed creator until the next cleanup, which any create
            // runs (another test may have run one already), or remove_orphans() on demand.
            assert!(remove_orphans().unwrap() >= 1 || !in_dev_shm(&name));
            assert!(!in_dev_shm(&name), "{m}: the orphan is still there");
            assert!(ledgers_of(pid).is_empty(), "{m}: the ledger is still there");
        }
    });
}

#[test]
fn anonymous_blocks_travel_and_have_no_name() {
    deadline(60, || {
        for m in METHODS {
            let block = SharedMemory::new(64).unwrap();
            block.write(0, b"abc").unwrap();
            assert_eq!(block.name(), None);
            assert!(block.unlink().is_err());
            let mut p = Process::builder()
                .start_method(m)
                .start(read_handle, block.clone())
                .unwrap();
            assert_eq!(p.join_result().unwrap(), b"abc", "{m}");
            assert!(block.read(62, &mut [0u8; 3]).is_err());
        }
    });
}
