//! A hostile peer: a child process (every start method) holding a sync primitive's region
//! writes garbage into its shared words (lock state and owner, semaphore count and bound,
//! event state, condition sequence and sleepers, barrier count, parties and reason, the
//! headers of Value and Array). The parent's operations must end with an error or a takeover
//! for that object, on time: never a panic, an out-of-bounds access or a hang.

mod common;
use common::*;
use multiprocess::sync::TryLockError;
use multiprocess::{
    Array, Barrier, BoundedSemaphore, Condition, Event, Lock, Process, RLock, Semaphore,
    StartMethod, Value,
};
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The objects a peer scribbles on.
#[derive(Serialize, Deserialize)]
enum Target {
    Lock(Lock),
    RLock(RLock),
    Semaphore(Semaphore),
    Bounded(BoundedSemaphore),
    Event(Event),
    Condition(Condition),
    Barrier(Barrier),
    Value(Value<u64>),
    Array(Array<u32>),
}

impl Target {
    fn word(&self, offset: usize) -> Option<&std::sync::atomic::AtomicU32> {
        match self {
            Target::Lock(x) => x.__shared_word(offset),
            Target::RLock(x) => x.__shared_word(offset),
            Target::Semaphore(x) => x.__shared_word(offset),
            Target::Bounded(x) => x.__shared_word(offset),
            Target::Event(x) => x.__shared_word(offset),
            Target::Condition(x) => x.__shared_word(offset),
            Target::Barrier(x) => x.__shared_word(offset),
            Target::Value(x) => x.__shared_word(offset),
            Target::Array(x) => x.__shared_word(offset),
        }
    }
}

/// A value to write: a literal, or the writer's own pid (a live thread id).
#[derive(Serialize, Deserialize, Clone, Copy)]
enum W {
    Lit(u32),
    MyPid,
}

/// The words every lock has at offset 8 (see `src/sync/raw.rs`): state, then the owner's
/// start time and thread id.
const STATE: usize = 8;
const OWNER_START: usize = 16;
const OWNER_TID: usize = 20;
const WAITERS: u32 = 1 << 31;

/// What the peer does: writes, then (if given) says so and stays alive until told to go.
#[derive(Serialize, Deserialize)]
struct Scribble {
    target: Target,
    writes: Vec<(usize, W)>,
    stay: Option<(Event, Event)>,
    give_back: bool,
}

/// The peer: applies the writes; returns the target itself when asked (so the parent
/// receives a handle whose header was written over), else nothing.
fn scribble(s: Scribble) -> Option<Target> {
    for (offset, w) in &s.writes {
        let v = match w {
            W::Lit(v) => *v,
            W::MyPid => std::process::id(),
        };
        s.target
            .word(*offset)
            .expect("the test writes inside the region")
            .store(v, Ordering::SeqCst);
    }
    if let Some((written, go)) = &s.stay {
        written.set();
        go.wait_timeout(Duration::from_secs(60));
    }
    s.give_back.then_some(s.target)
}

/// Runs the peer under `m` and waits until it wrote; the process (still alive if `stay`) and
/// the event that lets it go.
fn peer(
    m: StartMethod,
    target: Target,
    writes: Vec<(usize, W)>,
    stay: bool,
) -> (Process<Option<Target>>, Option<Event>) {
    let events = stay.then(|| (Event::new().unwrap(), Event::new().unwrap()));
    let mut p = Process::builder()
        .start_method(m)
        .start(
            scribble,
            Scribble {
                target,
                writes,
                stay: events.clone(),
                give_back: false,
            },
        )
        .unwrap();
    match &events {
        Some((written, _)) => assert!(written.wait_timeout(Duration::from_secs(20)), "{m}"),
        None => assert!(p.join_result().unwrap().is_none(), "{m}"),
    }
    (p, events.map(|(_, go)| go))
}

fn release(p: (Process<Option<Target>>, Option<Event>)) {
    let (mut p, go) = p;
    if let Some(go) = go {
        go.set();
    }
    p.join().unwrap();
}

/// Runs `f`, asserting it returns within `limit` (generous: the machine may be loaded).
fn on_time<T>(what: &str, limit: Duration, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let r = f();
    assert!(
        t.elapsed() < limit,
        "{what} took {:?}, more than {limit:?}",
        t.elapsed()
    );
    r
}

fn owner_died<G: std::fmt::Debug>(what: &str, r: Result<G, TryLockError<G>>) -> i32 {
    match r {
        Err(TryLockError::OwnerDied(d)) => d.previous_owner(),
        other => panic!("{what}: expected OwnerDied, got {other:?}"),
    }
}

#[test]
fn lock_words_written_by_a_peer_end_in_a_takeover_or_on_time() {
    deadline(180, || {
        for m in METHODS {
            let lock = Lock::new().unwrap();
            // A live thread of another process, with a start time that is not its own.
            let p = peer(
                m,
                Target::Lock(lock.clone()),
                vec![
                    (STATE, W::MyPid),
                    (OWNER_TID, W::MyPid),
                    (OWNER_START, W::Lit(0xFFFF_FFFE)),
                ],
                true,
            );
            let pid = p.0.pid().unwrap();
            assert!(!lock.is_locked(), "{m}: a reused id is not the holder");
            let r = on_time("try_lock", Duration::from_secs(5), || lock.try_lock());
            assert_eq!(owner_died(&m.to_string(), r), pid, "{m}");
            release(p);

            // WAITERS and no thread id: never written by the protocol.
            release(peer(
                m,
                Target::Lock(lock.clone()),
                vec![(STATE, W::Lit(WAITERS))],
                false,
            ));
            assert!(!lock.is_locked(), "{m}");
            let r = on_time("lock_timeout", Duration::from_secs(5), || {
                lock.lock_timeout(Duration::from_secs(30))
            });
            assert_eq!(owner_died(&m.to_string(), r), 0, "{m}");
            // The same from a blocking lock, whose first slice ends the wait.
            release(peer(
                m,
                Target::Lock(lock.clone()),
                vec![(STATE, W::Lit(WAITERS))],
                false,
            ));
            let r = on_time("lock", Duration::from_secs(5), || lock.lock().map(drop));
            assert_eq!(r.unwrap_err().previous_owner(), 0, "{m}");

            // A thread id no thread has.
            release(peer(
                m,
                Target::Lock(lock.clone()),
                vec![(STATE, W::Lit(0x7FFF_FFFF))],
                false,
            ));
            let r = on_time("try_lock", Duration::from_secs(5), || lock.try_lock());
            assert_eq!(owner_died(&m.to_string(), r), 0x7FFF_FFFF, "{m}");

            // A live holder that never wrote its owner word: a live holder, so the bound is
            // the caller's timeout.
            let p = peer(
                m,
                Target::Lock(lock.clone()),
                vec![(STATE, W::MyPid), (OWNER_TID, W::Lit(0))],
                true,
            );
            assert!(lock.is_locked(), "{m}");
            let r = on_time("lock_timeout", Duration::from_secs(5), || {
                lock.lock_timeout(Duration::from_millis(300))
            });
            assert!(matches!(r, Err(TryLockError::WouldBlock)), "{m}");
            drop(r);
            release(p);
            // The holder is gone now: taken over.
            let r = on_time("lock_timeout", Duration::from_secs(5), || {
                lock.lock_timeout(Duration::from_secs(30))
            });
            owner_died(&m.to_string(), r);
            assert!(lock.try_lock().is_ok(), "{m}");

            // An RLock: a huge recursion count written while this thread holds it.
            let r = RLock::new().unwrap();
            let g = r.lock().unwrap();
            release(peer(
                m,
                Target::RLock(r.clone()),
                vec![(24, W::Lit(u32::MAX))],
                false,
            ));
            let again = r.lock();
            assert!(again.is_ok(), "{m}: re-entry with a count at its maximum");
            drop(again);
            drop(g);
            // Garbage state: taken over, with a count of 1.
            release(peer(
                m,
                Target::RLock(r.clone()),
                vec![(STATE, W::Lit(WAITERS | 0x7FFF_FFFE)), (24, W::Lit(77))],
                false,
            ));
            let g = r.try_lock();
            assert!(matches!(g, Err(TryLockError::OwnerDied(_))), "{m}");
            assert_eq!(r.count(), 1, "{m}");
        }
    });
}

#[test]
fn semaphore_and_event_words_written_by_a_peer() {
    deadline(120, || {
        for m in METHODS {
            // A count above the bound, a huge sleeper count, a changed bound.
            let s = BoundedSemaphore::new(1).unwrap();
            release(peer(
                m,
                Target::Bounded(s.clone()),
                vec![(8, W::Lit(1000)), (12, W::Lit(u32::MAX)), (16, W::Lit(5))],
                false,
            ));
            assert!(s.release().is_err(), "{m}: above its bound");
            assert!(s.try_acquire(), "{m}");
            // No count at all: a timed acquire ends on time.
            release(peer(
                m,
                Target::Bounded(s.clone()),
                vec![(8, W::Lit(0))],
                false,
            ));
            let got = on_time("acquire_timeout", Duration::from_secs(5), || {
                s.acquire_timeout(Duration::from_millis(200))
            });
            assert!(!got, "{m}");
            assert!(s.release().is_ok(), "{m}");

            let s = Semaphore::new(0).unwrap();
            release(peer(
                m,
                Target::Semaphore(s.clone()),
                vec![(8, W::Lit(u32::MAX)), (12, W::Lit(0x8000_0000))],
                false,
            ));
            assert!(s.release().is_err(), "{m}: at u32::MAX");
            assert!(s.acquire_timeout(Duration::from_millis(10)), "{m}");
            assert!(s.release().is_ok(), "{m}");

            let e = Event::new().unwrap();
            release(peer(
                m,
                Target::Event(e.clone()),
                vec![(8, W::Lit(0xFFFF_FFFE)), (12, W::Lit(u32::MAX))],
                false,
            ));
            assert!(!e.is_set(), "{m}");
            let set = on_time("wait_timeout", Duration::from_secs(5), || {
                e.wait_timeout(Duration::from_millis(200))
            });
            assert!(!set, "{m}");
            e.set();
            assert!(e.is_set() && e.wait_timeout(Duration::ZERO), "{m}");
            e.clear();
            assert!(!e.is_set(), "{m}");
        }
    });
}

#[test]
fn condition_words_written_by_a_peer() {
    deadline(120, || {
        for m in METHODS {
            let c = Condition::new().unwrap();
            release(peer(
                m,
                Target::Condition(c.clone()),
                vec![
                    (STATE, W::Lit(WAITERS)),
                    (24, W::Lit(u32::MAX)),
                    (28, W::Lit(u32::MAX)),
                ],
                false,
            ));
            let g = on_time("lock_timeout", Duration::from_secs(5), || {
                c.lock_timeout(Duration::from_secs(30))
            });
            let mut g = match g {
                Err(TryLockError::OwnerDied(d)) => d.into_inner(),
                other => panic!("{m}: expected OwnerDied, got {other:?}"),
            };
            let r = on_time("wait_timeout", Duration::from_secs(5), || {
                g.wait_timeout(Duration::from_millis(200))
            });
            assert!(r.unwrap().timed_out(), "{m}");
            c.notify_all();
            drop(g);
            assert!(c.try_lock().is_ok(), "{m}");
        }
    });
}

const B_STATE: usize = STATE;
const B_COUNT: usize = 28;
const B_PARTIES: usize = 32;
const B_BROKEN: usize = 36;

#[test]
fn barrier_words_written_by_a_peer() {
    deadline(180, || {
        for m in METHODS {
            let b = Barrier::new(3).unwrap();
            let bad = [
                // More parties arrived than there are.
                vec![(B_COUNT, W::Lit(1000))],
                vec![(B_COUNT, W::Lit(3))],
                // A changed or zero number of parties.
                vec![(B_PARTIES, W::Lit(0))],
                vec![(B_PARTIES, W::Lit(u32::MAX))],
                // A reason no version of the crate writes.
                vec![(B_BROKEN, W::Lit(77))],
                // The barrier's lock: garbage.
                vec![(B_STATE, W::Lit(WAITERS))],
            ];
            for writes in bad {
                release(peer(m, Target::Barrier(b.clone()), writes, false));
                let r = on_time("wait_timeout", Duration::from_secs(5), || {
                    b.wait_timeout(Duration::from_millis(300))
                });
                assert!(r.is_err(), "{m}: {r:?}");
                assert!(b.n_waiting() <= b.parties(), "{m}");
                b.reset();
                assert!(!b.is_broken(), "{m}");
                assert_eq!(b.parties(), 3, "{m}");
            }
            // Whole again after the reset: a round of one party here and two children.
            let mut ps: Vec<_> = (0..2)
                .map(|_| {
                    Process::builder()
                        .start_method(m)
                        .start(wait_barrier, b.clone())
                        .unwrap()
                })
                .collect();
            let mine = b.wait_timeout(Duration::from_secs(30)).unwrap();
            let mut all = vec![mine];
            for p in &mut ps {
                all.push(p.join_result().unwrap().unwrap());
            }
            all.sort();
            assert_eq!(all, [0, 1, 2], "{m}");

            // Written over while a party waits: its next liveness check breaks the round,
            // long before its own timeout.
            let waiter = {
                let b = b.clone();
                std::thread::spawn(move || {
                    let t = Instant::now();
                    let r = b.wait_timeout(Duration::from_secs(60));
                    (r, t.elapsed())
                })
            };
            assert!(eventually(20, || b.n_waiting() == 1), "{m}");
            release(peer(
                m,
                Target::Barrier(b.clone()),
                vec![(B_COUNT, W::Lit(1000))],
                false,
            ));
            let (r, took) = waiter.join().unwrap();
            assert!(r.is_err(), "{m}: {r:?}");
            assert!(took < Duration::from_secs(20), "{m}: took {took:?}");
            assert!(r.unwrap_err().to_string().contains("written over"), "{m}");
            b.reset();

            // The barrier's lock held by a live thread that never wrote its owner word: a
            // timed wait ends on time all the same.
            let p = peer(
                m,
                Target::Barrier(b.clone()),
                vec![(B_STATE, W::MyPid), (OWNER_TID, W::Lit(0))],
                true,
            );
            let r = on_time("wait_timeout", Duration::from_secs(5), || {
                b.wait_timeout(Duration::from_millis(300))
            });
            assert!(r.unwrap_err().is_timeout(), "{m}");
            release(p);
            // Its holder is gone: the next wait takes the lock over.
            let r = b.wait_timeout(Duration::from_millis(300));
            assert!(r.is_err(), "{m}");
            b.reset();
        }
    });
}

fn wait_barrier(b: Barrier) -> Result<u32, String> {
    b.wait_timeout(Duration::from_secs(30))
        .map_err(|e| e.to_string())
}

/// A handle whose header was written over is refused when received, with an error; the
/// handles that were checked before keep working.
#[test]
fn value_and_array_headers_written_by_a_peer_are_refused_on_receipt() {
    deadline(120, || {
        for m in METHODS {
            let a = Array::<u32>::from_slice(&[1, 2, 3, 4]).unwrap();
            let v = Value::new(5u64).unwrap();
            let bad: Vec<(Target, Vec<(usize, W)>)> = vec![
                // A length far larger than the mapping.
                (
                    Target::Array(a.clone()),
                    vec![(32, W::Lit(u32::MAX)), (36, W::Lit(0xFFFF))],
                ),
                (Target::Array(a.clone()), vec![(32, W::Lit(1 << 20))]),
                // Element size, alignment, magic.
                (Target::Value(v.clone()), vec![(24, W::Lit(1 << 30))]),
                (Target::Value(v.clone()), vec![(28, W::Lit(4096))]),
                (Target::Value(v.clone()), vec![(0, W::Lit(0xDEAD_BEEF))]),
                // Two elements in a Value.
                (Target::Value(v.clone()), vec![(32, W::Lit(2))]),
            ];
            for (target, writes) in bad {
                let mut p = Process::builder()
                    .start_method(m)
                    .start(
                        scribble,
                        Scribble {
                            target,
                            writes,
                            stay: None,
                            give_back: true,
                        },
                    )
                    .unwrap();
                let r = p.join_result();
                assert!(r.is_err(), "{m}: a forged header was accepted");
            }
            // The parent's own handles were checked when made: they still work.
            assert_eq!(a.to_vec(), [1, 2, 3, 4], "{m}");
            assert_eq!(a.len(), 4, "{m}");
            // (The magic and lengths were written over; the data and the lock were not.)
            assert_eq!(v.get(), 5, "{m}");

            // A Value's lock word: garbage, taken over.
            let v = Value::new(9u64).unwrap();
            release(peer(
                m,
                Target::Value(v.clone()),
                vec![(STATE, W::Lit(WAITERS))],
                false,
            ));
            let r = on_time("lock_timeout", Duration::from_secs(5), || {
                v.lock_timeout(Duration::from_secs(30))
            });
            match r {
                Err(TryLockError::OwnerDied(d)) => {
                    assert_eq!(d.previous_owner(), 0, "{m}");
                    assert_eq!(**d.get_ref(), 9, "{m}");
                }
                other => panic!("{m}: expected OwnerDied, got {other:?}"),
            }
        }
    });
}
