//! Every sync and shared-memory handle travels to children under every start method, and
//! nothing is left behind: no descriptor, no process, no /dev/shm entry. (Alone in its test
//! binary, so that the descriptor count is not disturbed by other tests.)

mod common;
use common::*;
use multiprocess::{
    Array, Barrier, BoundedSemaphore, Condition, Event, Lock, Process, RLock, RawValue, Semaphore,
    SharedMemory, Value,
};

type All = (
    (Lock, RLock, Semaphore, BoundedSemaphore),
    (Event, Condition, Barrier),
    (Value<u32>, Array<u8>, RawValue<u8>, SharedMemory),
);

fn touch_all(all: All) -> u32 {
    let ((lock, rlock, sem, bsem), (event, cond, barrier), (value, array, raw, shm)) = all;
    drop(lock.lock().unwrap());
    drop(rlock.lock().unwrap());
    sem.acquire();
    bsem.acquire();
    bsem.release().unwrap();
    event.set();
    cond.notify_all();
    barrier.wait().unwrap();
    *value.lock().unwrap() += 1;
    array.lock().unwrap()[0] = 1;
    raw.set(1);
    shm.write(0, &[1]).unwrap();
    value.get()
}

fn memfds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| t.to_string_lossy().contains("memfd:multiprocess"))
        .count()
}

#[test]
fn every_handle_travels_and_nothing_is_left_behind() {
    deadline(120, || {
        let before = memfds();
        for m in METHODS {
            let name = format!("mptest-handles-{}-{m}", std::process::id());
            let all: All = (
                (
                    Lock::new().unwrap(),
                    RLock::new().unwrap(),
                    Semaphore::new(1).unwrap(),
                    BoundedSemaphore::new(1).unwrap(),
                ),
                (
                    Event::new().unwrap(),
                    Condition::new().unwrap(),
                    Barrier::new(1).unwrap(),
                ),
                (
                    Value::new(0).unwrap(),
                    Array::new(2).unwrap(),
                    RawValue::new(0).unwrap(),
                    SharedMemory::create(&name, 8).unwrap(),
                ),
            );
            let mut p = Process::builder()
                .start_method(m)
                .start(touch_all, all.clone())
                .unwrap();
            assert_eq!(p.join_result().unwrap(), 1, "{m}");
            assert!(all.1 .0.is_set());
            assert_eq!(all.0 .2.value(), 0);
            assert_eq!(all.2 .1.to_vec(), [1, 0]);
            assert!(!is_unreaped_child(p.pid().unwrap()));
            drop(all);
            assert!(!std::path::Path::new("/dev/shm").join(&name).exists());
        }
        assert_eq!(memfds(), before, "a shared-memory descriptor was left open");
        assert!(multiprocess::active_children().is_empty());
    });
}

#[test]
fn handles_are_send_and_sync_and_guards_are_not_send() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Lock>();
    send_sync::<RLock>();
    send_sync::<Semaphore>();
    send_sync::<BoundedSemaphore>();
    send_sync::<Event>();
    send_sync::<Condition>();
    send_sync::<Barrier>();
    send_sync::<Value<u64>>();
    send_sync::<Array<u8>>();
    send_sync::<RawValue<u8>>();
    send_sync::<multiprocess::RawArray<u8>>();
    send_sync::<multiprocess::AtomicValue<std::sync::atomic::AtomicU64>>();
    send_sync::<multiprocess::AtomicArray<std::sync::atomic::AtomicU64>>();
    send_sync::<SharedMemory>();
}
