//! Lock and RLock across processes under every start method: mutual exclusion, re-entry,
//! ownership errors, timeouts, handles sent through a Connection, and a holder that is
//! SIGKILLed.

mod common;
use common::*;
use multiprocess::sync::TryLockError;
use multiprocess::{Event, Lock, OwnerDied, Pipe, Process, RLock, RawValue, Value};
use std::time::{Duration, Instant};

const ROUNDS: u64 = 2_000;

/// A read-modify-write of an unlocked value, made exclusive by the lock only.
fn add_under_lock((lock, counter): (Lock, RawValue<u64>)) {
    for _ in 0..ROUNDS {
        let _g = lock.lock().unwrap();
        let v = counter.get();
        std::hint::spin_loop();
        counter.set(v + 1);
    }
}

#[test]
fn a_lock_excludes_other_processes() {
    deadline(120, || {
        for m in METHODS {
            let lock = Lock::new().unwrap();
            let counter = RawValue::new(0u64).unwrap();
            let mut children: Vec<_> = (0..3)
                .map(|_| {
                    Process::builder()
                        .start_method(m)
                        .start(add_under_lock, (lock.clone(), counter.clone()))
                        .unwrap()
                })
                .collect();
            add_under_lock((lock.clone(), counter.clone()));
            for c in &mut children {
                c.join_result().unwrap();
            }
            assert_eq!(counter.get(), 4 * ROUNDS, "{m}");
            assert!(!lock.is_locked(), "{m}");
        }
    });
}

fn try_twice(lock: Lock) -> (bool, bool) {
    let first = lock.try_lock().is_ok();
    let t = Instant::now();
    let second = lock.lock_timeout(Duration::from_millis(50));
    if second.is_err() {
        assert!(t.elapsed() >= Duration::from_millis(50));
    }
    (first, second.is_ok())
}

#[test]
fn try_lock_and_timeout_see_a_lock_held_elsewhere() {
    deadline(60, || {
        for m in METHODS {
            let lock = Lock::new().unwrap();
            let g = lock.lock().unwrap();
            let mut p = Process::builder()
                .start_method(m)
                .start(try_twice, lock.clone())
                .unwrap();
            assert_eq!(p.join_result().unwrap(), (false, false), "{m}");
            drop(g);
            let mut p = Process::builder()
                .start_method(m)
                .start(try_twice, lock.clone())
                .unwrap();
            // The child's first guard is dropped before its second try: both succeed.
            assert_eq!(p.join_result().unwrap(), (true, true), "{m}");
        }
    });
}

fn recv_lock_and_take(c: multiprocess::Connection) -> bool {
    let lock: Lock = c.recv().unwrap();
    let ok = lock.try_lock().is_ok();
    c.send(&ok).unwrap();
    ok
}

#[test]
fn a_lock_sent_through_a_connection_is_the_same_lock() {
    deadline(60, || {
        for m in METHODS {
            let (a, b) = Pipe::new().unwrap();
            let mut p = Process::builder()
                .start_method(m)
                .start(recv_lock_and_take, b)
                .unwrap();
            let lock = Lock::new().unwrap();
            let g = lock.lock().unwrap();
            a.send(&lock).unwrap();
            assert!(!a.recv::<bool>().unwrap(), "{m}: the child got a held lock");
            drop(g);
            p.join().unwrap();
        }
    });
}

fn rlock_child(r: RLock) -> (bool, bool, u32) {
    // Not the owner: cannot release, cannot take.
    let release_err = r.release().is_err();
    let blocked = r.try_lock().is_err();
    (release_err, blocked, r.count())
}

#[test]
fn rlock_reenters_and_reports_ownership_errors() {
    deadline(60, || {
        for m in METHODS {
            let r = RLock::new().unwrap();
            assert_eq!(
                r.release().unwrap_err().to_string(),
                "cannot release un-acquired lock"
            );
            let a = r.lock().unwrap();
            let b = r.lock().unwrap();
            r.acquire().unwrap();
            assert_eq!(r.count(), 3);
            let mut p = Process::builder()
                .start_method(m)
                .start(rlock_child, r.clone())
                .unwrap();
            assert_eq!(p.join_result().unwrap(), (true, true, 0), "{m}");
            r.release().unwrap();
            drop(b);
            assert!(r.is_owned());
            drop(a);
            assert!(!r.is_owned());
            assert!(r.release().is_err());
            // Free now: a child takes it.
            let mut p = Process::builder()
                .start_method(m)
                .start(rlock_child, r.clone())
                .unwrap();
            assert_eq!(p.join_result().unwrap(), (true, false, 0), "{m}");
        }
    });
}

fn hold_lock_forever((lock, held): (Lock, Event)) {
    let _g = lock.lock().unwrap_or_else(OwnerDied::into_inner);
    held.set();
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

fn hold_rlock_forever((lock, held): (RLock, Event)) {
    let _a = lock.lock().unwrap_or_else(OwnerDied::into_inner);
    let _b = lock.lock().unwrap_or_else(OwnerDied::into_inner);
    held.set();
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

fn hold_value_forever((v, held): (Value<u64>, Event)) {
    let mut g = v.lock().unwrap_or_else(OwnerDied::into_inner);
    *g = 99;
    held.set();
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// Waits for the lock in a child while the holder is killed: the waiter is told.
fn wait_for_lock(lock: Lock) -> Option<i32> {
    match lock.lock() {
        Ok(_) => None,
        Err(died) => Some(died.previous_owner()),
    }
}

#[test]
fn a_killed_lock_holder_does_not_wedge_the_others() {
    deadline(120, || {
        for m in METHODS {
            // A waiter blocked before the kill, in another process.
            let lock = Lock::new().unwrap();
            let held = Event::new().unwrap();
            let mut holder = Process::builder()
                .start_method(m)
                .start(hold_lock_forever, (lock.clone(), held.clone()))
                .unwrap();
            assert!(held.wait_timeout(Duration::from_secs(20)), "{m}");
            let mut waiter = Process::builder()
                .start_method(m)
                .start(wait_for_lock, lock.clone())
                .unwrap();
            assert!(!waiter.join_timeout(Duration::from_millis(200)).unwrap());
            holder.kill().unwrap();
            let told = waiter.join_result().unwrap();
            assert_eq!(told, Some(holder.pid().unwrap()), "{m}");
            holder.join().unwrap();
            // Released by the waiter: plain from now on.
            assert!(lock.lock().is_ok(), "{m}");

            // A locker arriving after the kill, before the holder is joined (under fork and
            // spawn it may still be an unreaped zombie: that counts as dead).
            held.clear();
            let mut holder = Process::builder()
                .start_method(m)
                .start(hold_lock_forever, (lock.clone(), held.clone()))
                .unwrap();
            assert!(held.wait_timeout(Duration::from_secs(20)), "{m}");
            holder.kill().unwrap();
            let t = Instant::now();
            let err = lock.lock().unwrap_err();
            assert!(t.elapsed() < Duration::from_secs(5));
            assert_eq!(err.previous_owner(), holder.pid().unwrap());
            drop(err.into_inner());
            holder.join().unwrap();
            assert!(lock.try_lock().is_ok());
        }
    });
}

#[test]
fn killed_holders_of_an_rlock_and_a_value_lock_are_reported() {
    deadline(120, || {
        for m in METHODS {
            let r = RLock::new().unwrap();
            let held = Event::new().unwrap();
            let mut holder = Process::builder()
                .start_method(m)
                .start(hold_rlock_forever, (r.clone(), held.clone()))
                .unwrap();
            assert!(held.wait_timeout(Duration::from_secs(20)), "{m}");
            assert!(r.try_lock().is_err());
            holder.kill().unwrap();
            let err = r.lock().unwrap_err();
            assert_eq!(err.previous_owner(), holder.pid().unwrap());
            let g = err.into_inner();
            assert_eq!(
                r.count(),
                1,
                "{m}: the dead holder's count is not inherited"
            );
            drop(g);
            assert!(!r.is_owned());
            holder.join().unwrap();

            let v = Value::new(0u64).unwrap();
            held.clear();
            let mut holder = Process::builder()
                .start_method(m)
                .start(hold_value_forever, (v.clone(), held.clone()))
                .unwrap();
            assert!(held.wait_timeout(Duration::from_secs(20)), "{m}");
            assert!(matches!(v.try_lock(), Err(TryLockError::WouldBlock)));
            holder.kill().unwrap();
            match v.lock_timeout(Duration::from_secs(10)) {
                Err(TryLockError::OwnerDied(d)) => assert_eq!(**d.get_ref(), 99, "{m}"),
                other => panic!("{m}: expected OwnerDied, got {other:?}"),
            }
            holder.join().unwrap();
        }
    });
}

#[test]
fn a_thread_that_ends_holding_a_lock_releases_it_to_the_next_locker() {
    deadline(30, || {
        let lock = Lock::new().unwrap();
        let l2 = lock.clone();
        std::thread::spawn(move || std::mem::forget(l2.lock().unwrap()))
            .join()
            .unwrap();
        assert!(lock.lock().is_err());
        assert!(lock.lock().is_ok());
    });
}

/// Starts `hold` on `object` in a child, waits until it holds the lock, kills and reaps it;
/// the dead holder's pid.
fn killed_holder_then<T, F>(m: multiprocess::StartMethod, object: T, hold: F) -> i32
where
    T: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
    F: Fn((T, Event)) + Copy + Send + Sync + 'static,
{
    let held = Event::new().unwrap();
    let mut holder = Process::builder()
        .start_method(m)
        .start(hold, (object, held.clone()))
        .unwrap();
    assert!(held.wait_timeout(Duration::from_secs(20)), "{m}");
    holder.kill().unwrap();
    holder.join().unwrap();
    holder.pid().unwrap()
}

fn hold_array_forever((a, held): (multiprocess::Array<u32>, Event)) {
    let mut g = a.lock().unwrap_or_else(OwnerDied::into_inner);
    g[0] = 7;
    held.set();
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

fn hold_condition_forever((c, held): (multiprocess::Condition, Event)) {
    let _g = c.lock().unwrap_or_else(OwnerDied::into_inner);
    held.set();
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// Regression: `try_lock` and `is_locked` used to ignore a dead holder (a killed holder's
/// lock stayed locked for every `try_lock`, and `is_locked` stayed true, forever).
#[test]
fn try_lock_and_is_locked_recover_a_killed_holder_of_every_lock() {
    deadline(180, || {
        for m in METHODS {
            let lock = Lock::new().unwrap();
            let dead = killed_holder_then(m, lock.clone(), hold_lock_forever);
            assert!(
                !lock.is_locked(),
                "{m}: a dead holder does not hold the lock"
            );
            match lock.try_lock() {
                Err(TryLockError::OwnerDied(d)) => assert_eq!(d.previous_owner(), dead, "{m}"),
                other => panic!("{m}: expected OwnerDied, got {other:?}"),
            };
            assert!(lock.try_lock().is_ok(), "{m}: released, then plain");

            let r = RLock::new().unwrap();
            let dead = killed_holder_then(m, r.clone(), hold_rlock_forever);
            match r.try_lock() {
                Err(TryLockError::OwnerDied(d)) => {
                    assert_eq!(d.previous_owner(), dead, "{m}");
                    assert_eq!(r.count(), 1, "{m}");
                }
                other => panic!("{m}: expected OwnerDied, got {other:?}"),
            };
            assert!(!r.is_owned());

            let v = Value::new(0u64).unwrap();
            let dead = killed_holder_then(m, v.clone(), hold_value_forever);
            match v.try_lock() {
                Err(TryLockError::OwnerDied(d)) => {
                    assert_eq!(d.previous_owner(), dead, "{m}");
                    assert_eq!(**d.get_ref(), 99, "{m}");
                }
                other => panic!("{m}: expected OwnerDied, got {other:?}"),
            };

            let a = multiprocess::Array::<u32>::new(2).unwrap();
            let dead = killed_holder_then(m, a.clone(), hold_array_forever);
            match a.try_lock() {
                Err(TryLockError::OwnerDied(d)) => {
                    assert_eq!(d.previous_owner(), dead, "{m}");
                    assert_eq!(d.get_ref()[0], 7, "{m}");
                }
                other => panic!("{m}: expected OwnerDied, got {other:?}"),
            };

            let c = multiprocess::Condition::new().unwrap();
            let dead = killed_holder_then(m, c.clone(), hold_condition_forever);
            match c.try_lock() {
                Err(TryLockError::OwnerDied(d)) => assert_eq!(d.previous_owner(), dead, "{m}"),
                other => panic!("{m}: expected OwnerDied, got {other:?}"),
            };
        }
    });
}

/// Regression: a timed lock whose timeout is shorter than the liveness slice (here zero)
/// used to give up without looking at the holder.
#[test]
fn a_short_timed_lock_recovers_a_killed_holder() {
    deadline(120, || {
        for m in METHODS {
            let lock = Lock::new().unwrap();
            let dead = killed_holder_then(m, lock.clone(), hold_lock_forever);
            match lock.lock_timeout(Duration::ZERO) {
                Err(TryLockError::OwnerDied(d)) => assert_eq!(d.previous_owner(), dead, "{m}"),
                other => panic!("{m}: expected OwnerDied, got {other:?}"),
            };
            let v = Value::new(0u64).unwrap();
            let dead = killed_holder_then(m, v.clone(), hold_value_forever);
            match v.lock_timeout(Duration::from_millis(1)) {
                Err(TryLockError::OwnerDied(d)) => assert_eq!(d.previous_owner(), dead, "{m}"),
                other => panic!("{m}: expected OwnerDied, got {other:?}"),
            };
            let c = multiprocess::Condition::new().unwrap();
            let dead = killed_holder_then(m, c.clone(), hold_condition_forever);
            match c.lock_timeout(Duration::ZERO) {
                Err(TryLockError::OwnerDied(d)) => assert_eq!(d.previous_owner(), dead, "{m}"),
                other => panic!("{m}: expected OwnerDied, got {other:?}"),
            };
        }
    });
}
