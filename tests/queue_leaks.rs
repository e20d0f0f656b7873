//! Queues leave nothing behind: no descriptor in the parent once every copy is dropped, no file
//! in /dev/shm, no zombie, under every start method. (One test in its own binary, so that no
//! other test opens descriptors meanwhile.)

mod common;
use common::*;
use multiprocess::{Pipe, Process, Queue};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn shm_files() -> usize {
    std::fs::read_dir("/dev/shm")
        .map(|d| d.count())
        .unwrap_or(0)
}

fn echo(q: Queue<Queue<u32>>) {
    let inner = q.get().unwrap();
    inner.put(1).unwrap();
}

#[test]
fn nothing_is_left_behind() {
    deadline(120, || {
        // Warm up the crate's own long-lived descriptors (fork server, ...).
        for m in METHODS {
            let mut p = Process::builder()
                .start_method(m)
                .start(echo, Queue::new(0).unwrap())
                .unwrap();
            let _ = p.kill();
            let _ = p.join();
        }
        let fds = open_fds();
        let shm = shm_files();
        let mut pids = Vec::new();
        for m in METHODS {
            for _ in 0..3 {
                let outer: Queue<Queue<u32>> = Queue::new(0).unwrap();
                let inner: Queue<u32> = Queue::with_capacity(0, 4096).unwrap();
                let mut p = Process::builder()
                    .start_method(m)
                    .start(echo, outer.clone())
                    .unwrap();
                outer.put(inner.clone()).unwrap();
                assert_eq!(inner.get().unwrap(), 1);
                p.join().unwrap();
                pids.push(p.pid().unwrap());
                let (a, b) = Pipe::new().unwrap();
                a.send(&inner).unwrap();
                let _copy: Queue<u32> = b.recv().unwrap();
            }
        }
        assert!(
            eventually(10, || open_fds() == fds),
            "descriptors left: {} -> {}",
            fds,
            open_fds()
        );
        assert_eq!(shm_files(), shm, "files left in /dev/shm");
        assert!(pids.iter().all(|p| !is_unreaped_child(*p)));
    });
}
