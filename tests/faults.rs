//! The fault suite: victims SIGKILLed at random points (seeded, reproducible) while they use
//! each primitive, and what must hold afterwards.
//!
//! For every primitive a victim process loops over operations until it is killed after a
//! random delay (none, microseconds, or milliseconds); then the survivors (this process, and
//! a new process where that matters) check:
//! - no hang: every blocking step has a deadline, and the whole suite runs under one;
//! - nothing lost or duplicated beyond the documented semantics (a queue loses at most the
//!   message a killed producer or consumer had in hand; a pipe delivers every message sent
//!   before the kill, in order, then an error; a lock's data is whole unless the survivor was
//!   told `OwnerDied`; a pool task either returns its value or fails as worker lost);
//! - no corruption: payloads carry checksums;
//! - no zombie, no leaked descriptor, no leaked `/dev/shm` file (counted between primitives).
//!
//! Short form (the default, for `cargo test` and CI): a few trials per primitive, rotating
//! the start methods. Long form: `MULTIPROCESS_FAULT_TRIALS=1000 cargo test --release --test
//! faults -- --nocapture`, which prints a line of figures per primitive. A failure names its
//! seed and trial; `MULTIPROCESS_FAULT_SEED=<seed>` replays the same delays and sizes.

mod common;
use common::fuzz::Rng;
use common::*;
use multiprocess::{
    AtomicValue, Barrier, Condition, Connection, Event, Lock, Pipe, Pool, Process, Queue, RLock,
    RawArray, Semaphore, SharedMemory, Value,
};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const STEP: Duration = Duration::from_secs(20);

fn trials() -> usize {
    std::env::var("MULTIPROCESS_FAULT_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6)
}

fn seed() -> u64 {
    std::env::var("MULTIPROCESS_FAULT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_fa17)
}

/// A random moment to kill at: at once, within microseconds, or within milliseconds.
fn delay(rng: &mut Rng) -> Duration {
    match rng.below(4) {
        0 => Duration::ZERO,
        1 => Duration::from_micros(rng.below(300) as u64),
        2 => Duration::from_micros(rng.below(5_000) as u64),
        _ => Duration::from_millis(5 + rng.below(40) as u64),
    }
}

/// Waits `d`, SIGKILLs the victim and reaps it (bounded).
fn kill_after(d: Duration, p: &mut Process) {
    std::thread::sleep(d);
    p.kill().unwrap();
    assert!(
        p.join_timeout(STEP).unwrap(),
        "the killed victim was not reaped"
    );
}

fn start<F, A>(trial: usize, f: F, arg: A) -> Process
where
    F: Fn(A) + Copy + Send + Sync + 'static,
    A: Serialize + for<'de> Deserialize<'de> + Send + 'static,
{
    Process::builder()
        .start_method(METHODS[trial % METHODS.len()])
        .start(f, arg)
        .unwrap()
}

/// What this process holds that a trial could leak.
#[derive(Debug, PartialEq)]
struct Holdings {
    fds: Vec<String>,
    shm: usize,
    zombies: usize,
}

fn holdings() -> Holdings {
    let mut fds: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .map(|e| {
            let target = std::fs::read_link(e.path()).unwrap_or_default();
            format!("{}->{}", e.file_name().to_string_lossy(), target.display())
        })
        // The listing's own descriptor.
        .filter(|f| !f.contains("/fd"))
        .collect();
    fds.sort();
    // This suite's blocks, and ledgers of processes that are gone (other processes' live
    // ledgers are theirs; a dead one is an orphan that clean-up missed).
    let mine = format!("mp-fault-{}-", std::process::id());
    let shm = std::fs::read_dir("/dev/shm")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| {
            n.starts_with(&mine)
                || n.strip_prefix("multiprocess-ledger.")
                    .and_then(|r| r.split('.').next())
                    .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
        })
        .count();
    let me = std::process::id().to_string();
    let zombies = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let Some((_, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let mut f = rest.split_whitespace();
            let state = f.next();
            let ppid = f.next();
            state == Some("Z") && ppid == Some(me.as_str())
        })
        .count();
    Holdings { fds, shm, zombies }
}

/// A payload whose last 8 bytes are a checksum of the rest.
fn payload(rng: &mut Rng, big: bool) -> Vec<u8> {
    let n = if big {
        20_000 + rng.below(60_000)
    } else {
        rng.below(300)
    };
    let mut v: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
    let sum = checksum(&v);
    v.extend_from_slice(&sum.to_le_bytes());
    v
}

fn checksum(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, x| {
        (h ^ *x as u64).wrapping_mul(0x100_0000_01b3)
    })
}

fn intact(v: &[u8]) -> bool {
    v.len() >= 8 && checksum(&v[..v.len() - 8]).to_le_bytes() == v[v.len() - 8..]
}

#[derive(Debug, Serialize, Deserialize)]
struct Msg {
    seq: u64,
    data: Vec<u8>,
}

/// Figures of one primitive's trials, printed in the long form.
#[derive(Default)]
struct Figures {
    kills: usize,
    checked: u64,
    recoveries: usize,
}

// ---------------------------------------------------------------------------------------------
// Queue

fn queue_producer((q, done, seed): (Queue<Msg>, AtomicValue<AtomicU64>, u64)) {
    let mut rng = Rng::new(seed);
    for seq in 0.. {
        let big = rng.below(8) == 0;
        q.put(Msg {
            seq,
            data: payload(&mut rng, big),
        })
        .unwrap();
        done.store(seq + 1, Ordering::SeqCst);
    }
}

fn queue_consumer((q, done): (Queue<Msg>, AtomicValue<AtomicU64>)) {
    loop {
        let m = q.get().unwrap();
        done.store(m.seq + 1, Ordering::SeqCst);
    }
}

fn queue(seed: u64, trial: usize, f: &mut Figures) {
    let mut rng = Rng::new(seed ^ trial as u64);
    // A killed producer: every message it finished putting arrives, once, whole, in order.
    let q: Queue<Msg> = Queue::with_capacity(0, 1 << 16).unwrap();
    let done = AtomicValue::new(AtomicU64::new(0)).unwrap();
    let mut p = start(trial, queue_producer, (q.clone(), done.clone(), rng.next()));
    // Read while it writes, so it is killed in all kinds of states.
    let mut next = 0u64;
    let deadline = Instant::now() + delay(&mut rng);
    while Instant::now() < deadline {
        if let Ok(m) = q.get_timeout(Duration::from_millis(1)) {
            assert_eq!(m.seq, next, "trial {trial}: out of order");
            assert!(
                intact(&m.data),
                "trial {trial}: corrupted message {}",
                m.seq
            );
            next += 1;
        }
    }
    kill_after(Duration::ZERO, &mut p);
    f.kills += 1;
    let finished = done.load(Ordering::SeqCst);
    q.put(Msg {
        seq: u64::MAX,
        data: vec![],
    })
    .unwrap();
    loop {
        let m = q
            .get_timeout(STEP)
            .unwrap_or_else(|e| panic!("trial {trial}: {e}"));
        if m.seq == u64::MAX {
            break;
        }
        assert_eq!(m.seq, next, "trial {trial}: lost or duplicated");
        assert!(
            intact(&m.data),
            "trial {trial}: corrupted message {}",
            m.seq
        );
        next += 1;
    }
    assert!(
        next == finished || next == finished + 1,
        "trial {trial}: {finished} puts finished, {next} messages arrived"
    );
    f.checked += next;

    // A killed consumer: it loses at most the message in its hands.
    let q: Queue<Msg> = Queue::with_capacity(0, 1 << 16).unwrap();
    let done = AtomicValue::new(AtomicU64::new(0)).unwrap();
    let total = 200u64;
    let mut c = start(trial, queue_consumer, (q.clone(), done.clone()));
    for seq in 0..total {
        let big = rng.below(8) == 0;
        q.put(Msg {
            seq,
            data: payload(&mut rng, big),
        })
        .unwrap();
    }
    kill_after(delay(&mut rng), &mut c);
    f.kills += 1;
    let taken = done.load(Ordering::SeqCst);
    let mut first = None;
    let mut count = 0u64;
    // Everything is in the queue already: a short wait tells that the rest is gone.
    while let Ok(m) = q.get_timeout(Duration::from_millis(50)) {
        assert!(
            intact(&m.data),
            "trial {trial}: corrupted message {}",
            m.seq
        );
        let want = *first.get_or_insert(m.seq) + count;
        assert_eq!(
            m.seq, want,
            "trial {trial}: a gap after the killed consumer"
        );
        count += 1;
    }
    if let Some(first) = first {
        assert!(
            first == taken || first == taken + 1,
            "trial {trial}: consumer acknowledged {taken}, the rest began at {first}"
        );
        assert_eq!(first + count, total, "trial {trial}: the tail was lost");
    } else {
        assert!(
            taken + 1 >= total,
            "trial {trial}: nothing left but {taken} taken"
        );
    }
    f.checked += count;
}

// ---------------------------------------------------------------------------------------------
// Pipe

fn pipe_sender((c, done, seed): (Connection, AtomicValue<AtomicU64>, u64)) {
    let mut rng = Rng::new(seed);
    for seq in 0.. {
        let big = rng.below(8) == 0;
        c.send(&Msg {
            seq,
            data: payload(&mut rng, big),
        })
        .unwrap();
        done.store(seq + 1, Ordering::SeqCst);
    }
}

fn pipe(seed: u64, trial: usize, f: &mut Figures) {
    let mut rng = Rng::new(seed ^ trial as u64);
    let (a, b) = Pipe::new().unwrap();
    let done = AtomicValue::new(AtomicU64::new(0)).unwrap();
    let mut p = start(trial, pipe_sender, (b, done.clone(), rng.next()));
    let mut next = 0u64;
    let until = Instant::now() + delay(&mut rng);
    while Instant::now() < until {
        if let Ok(m) = a.recv_timeout::<Msg>(Duration::from_millis(1)) {
            assert_eq!(m.seq, next, "trial {trial}: out of order");
            assert!(intact(&m.data), "trial {trial}: corrupted");
            next += 1;
        }
    }
    kill_after(Duration::ZERO, &mut p);
    f.kills += 1;
    let finished = done.load(Ordering::SeqCst);
    loop {
        match a.recv_timeout::<Msg>(STEP) {
            Ok(m) => {
                assert_eq!(m.seq, next, "trial {trial}: out of order");
                assert!(intact(&m.data), "trial {trial}: corrupted");
                next += 1;
            }
            Err(e) => {
                assert!(!e.is_timeout(), "trial {trial}: no end after the kill: {e}");
                break;
            }
        }
    }
    assert!(
        next >= finished,
        "trial {trial}: {finished} sends finished, {next} arrived"
    );
    f.checked += next;
}

// ---------------------------------------------------------------------------------------------
// Locks and shared values

fn value_locker(v: Value<[u64; 2]>) {
    loop {
        let mut g = v.lock().unwrap_or_else(|d| d.into_inner());
        g[0] += 1;
        std::hint::black_box(&mut *g);
        g[1] += 1;
    }
}

fn lock_locker((l, a): (Lock, RawArray<u64>)) {
    loop {
        let _g = l.lock().unwrap_or_else(|d| d.into_inner());
        let x = a.get(0).unwrap();
        a.set(0, x + 1).unwrap();
        a.set(1, x + 1).unwrap();
    }
}

fn rlock_locker((l, a): (RLock, RawArray<u64>)) {
    loop {
        let _g = l.lock().unwrap_or_else(|d| d.into_inner());
        let _g2 = l.lock().unwrap_or_else(|d| d.into_inner());
        let x = a.get(0).unwrap();
        a.set(0, x + 1).unwrap();
        a.set(1, x + 1).unwrap();
    }
}

/// The survivor's view: whole unless it was told the holder died.
fn check_pair(trial: usize, what: &str, pair: [u64; 2], owner_died: bool) {
    if owner_died {
        assert!(
            pair[0] == pair[1] || pair[0] == pair[1] + 1,
            "trial {trial}: {what}: torn beyond one step: {pair:?}"
        );
    } else {
        assert_eq!(
            pair[0], pair[1],
            "trial {trial}: {what}: torn without OwnerDied"
        );
    }
}

fn locks(seed: u64, trial: usize, f: &mut Figures) {
    let mut rng = Rng::new(seed ^ trial as u64);
    // Value's own lock.
    let v = Value::new([0u64; 2]).unwrap();
    let mut p = start(trial, value_locker, v.clone());
    kill_after(delay(&mut rng), &mut p);
    f.kills += 1;
    let (mut g, died) = match v.lock() {
        Ok(g) => (g, false),
        Err(d) => (d.into_inner(), true),
    };
    check_pair(trial, "Value", *g, died);
    f.recoveries += usize::from(died);
    g[1] = g[0];
    drop(g);
    assert!(v.try_lock().is_ok(), "trial {trial}: Value lock stuck");

    // Lock and RLock guarding a raw array.
    for rlock in [false, true] {
        let a = RawArray::<u64>::new(2).unwrap();
        let (mut p, relock): (Process, Box<dyn Fn() -> bool>) = if rlock {
            let l = RLock::new().unwrap();
            let p = start(trial, rlock_locker, (l.clone(), a.clone()));
            (p, Box::new(move || l.lock().is_err()))
        } else {
            let l = Lock::new().unwrap();
            let p = start(trial, lock_locker, (l.clone(), a.clone()));
            (p, Box::new(move || l.lock().is_err()))
        };
        kill_after(delay(&mut rng), &mut p);
        f.kills += 1;
        let died = relock();
        f.recoveries += usize::from(died);
        let pair = [a.get(0).unwrap(), a.get(1).unwrap()];
        check_pair(trial, if rlock { "RLock" } else { "Lock" }, pair, died);
    }
}

fn sem_user(s: Semaphore) {
    loop {
        s.acquire();
        std::hint::spin_loop();
        s.release().unwrap();
    }
}

fn event_user(e: Event) {
    loop {
        e.set();
        e.clear();
    }
}

fn condition_user(c: Condition) {
    loop {
        let mut g = c.lock().unwrap_or_else(|d| d.into_inner());
        let _ = g.wait_timeout(Duration::from_micros(100));
    }
}

fn barrier_user(b: Barrier) {
    loop {
        let _ = b.wait_timeout(Duration::from_secs(5));
    }
}

fn sync(seed: u64, trial: usize, f: &mut Figures) {
    let mut rng = Rng::new(seed ^ trial as u64);
    // Semaphore: a unit held by the killed process is lost (as in Python), no more.
    let s = Semaphore::new(2).unwrap();
    let mut p = start(trial, sem_user, s.clone());
    kill_after(delay(&mut rng), &mut p);
    f.kills += 1;
    assert!(
        s.acquire_timeout(STEP),
        "trial {trial}: the semaphore lost more than the killed holder's unit"
    );
    s.release().unwrap();

    // Event: waits keep their timeouts, set and wait work after the kill.
    let e = Event::new().unwrap();
    let mut p = start(trial, event_user, e.clone());
    kill_after(delay(&mut rng), &mut p);
    f.kills += 1;
    e.clear();
    let t = Instant::now();
    assert!(!e.wait_timeout(Duration::from_millis(20)), "trial {trial}");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "trial {trial}: wait overran"
    );
    e.set();
    assert!(e.wait_timeout(Duration::from_secs(1)), "trial {trial}");

    // Condition: its lock is recovered, notify and wait work.
    let c = Condition::new().unwrap();
    let mut p = start(trial, condition_user, c.clone());
    kill_after(delay(&mut rng), &mut p);
    f.kills += 1;
    let mut g = match c.lock() {
        Ok(g) => g,
        Err(d) => {
            f.recoveries += 1;
            d.into_inner()
        }
    };
    c.notify_all();
    let _ = g.wait_timeout(Duration::from_millis(1));
    drop(g);

    // Barrier: the survivor's wait ends promptly after the kill: broken with the dead party
    // named when the victim died waiting, or at its own timeout when it died between waits
    // (then it is only a party that never comes, as a slow one would be).
    let b = Barrier::new(2).unwrap();
    let mut p = start(trial, barrier_user, b.clone());
    let waiter = {
        let b = b.clone();
        std::thread::spawn(move || loop {
            if let Err(e) = b.wait_timeout(Duration::from_millis(300)) {
                return e;
            }
        })
    };
    kill_after(delay(&mut rng), &mut p);
    f.kills += 1;
    let t = Instant::now();
    let e = waiter.join().unwrap();
    assert!(
        e.is_timeout() || e.dead_party().is_some(),
        "trial {trial}: the barrier broke for another reason: {e}"
    );
    f.recoveries += usize::from(e.dead_party().is_some());
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "trial {trial}: slow: {e}"
    );
    b.reset();
}

// ---------------------------------------------------------------------------------------------
// Pool

fn double(x: u64) -> u64 {
    std::thread::sleep(Duration::from_micros(x % 300));
    x * 2
}

fn pool(seed: u64, trial: usize, f: &mut Figures) {
    let mut rng = Rng::new(seed ^ trial as u64);
    let m = METHODS[trial % METHODS.len()];
    let pool = Pool::builder()
        .processes(2)
        .start_method(m)
        .build()
        .unwrap();
    let pids = pool.pids();
    let victim = pids[rng.below(pids.len())];
    let killer = {
        let d = delay(&mut rng);
        std::thread::spawn(move || {
            std::thread::sleep(d);
            // SAFETY: kill with a pid and a signal number.
            unsafe { libc::kill(victim, libc::SIGKILL) };
        })
    };
    let mut lost = 0;
    for (i, r) in pool.imap(double, 0..300u64).enumerate() {
        match r {
            Ok(v) => assert_eq!(v, 2 * i as u64, "trial {trial}: wrong value"),
            Err(e) => {
                assert!(e.is_worker_lost(), "trial {trial}: {e}");
                lost += 1;
            }
        }
    }
    killer.join().unwrap();
    f.kills += 1;
    f.checked += 300 - lost;
    f.recoveries += usize::from(lost > 0);
    // The pool goes on with a replacement.
    assert_eq!(
        pool.map(double, vec![1, 2, 3]).unwrap(),
        [2, 4, 6],
        "trial {trial}"
    );
    drop(pool);
}

// ---------------------------------------------------------------------------------------------
// SharedMemory

fn shm_creator((c, tag): (Connection, String)) {
    let block = SharedMemory::create(&tag, 4096).unwrap();
    c.send(&()).unwrap();
    let mut i = 0u8;
    loop {
        block.write(0, &[i; 64]).unwrap();
        i = i.wrapping_add(1);
    }
}

fn shm(seed: u64, trial: usize, f: &mut Figures) {
    let mut rng = Rng::new(seed ^ trial as u64);
    let (a, b) = Pipe::new().unwrap();
    let tag = format!("mp-fault-{}-{trial}", std::process::id());
    let mut p = start(trial, shm_creator, (b, tag.clone()));
    a.recv_timeout::<()>(STEP).unwrap();
    kill_after(delay(&mut rng), &mut p);
    f.kills += 1;
    // The block outlives its killed creator, readable, until the orphans are removed.
    let block = SharedMemory::open(&tag).unwrap();
    let mut buf = [0u8; 64];
    block.read(0, &mut buf).unwrap();
    drop(block);
    multiprocess::shared_memory::remove_orphans().unwrap();
    assert!(
        SharedMemory::open(&tag).is_err(),
        "trial {trial}: the killed creator's block was not removed as an orphan"
    );
    f.recoveries += 1;
}

// ---------------------------------------------------------------------------------------------

#[test]
fn fault_suite() {
    deadline(300 + 10 * trials() as u64, || {
        let seed = seed();
        let n = trials();
        // Warm up: the fork server and the crate's lazily made descriptors exist before the
        // baseline.
        for m in METHODS {
            let mut p = Process::builder().start_method(m).start(double, 1).unwrap();
            p.join().unwrap();
        }
        // (The /dev/shm directory's descriptor is opened once, at first use.)
        drop(SharedMemory::create_unique(64).unwrap());
        type Primitive = fn(u64, usize, &mut Figures);
        let primitives: [(&str, Primitive); 6] = [
            ("Queue", queue),
            ("Pipe", pipe),
            ("Lock/RLock/Value", locks),
            ("Semaphore/Event/Condition/Barrier", sync),
            ("Pool", pool),
            ("SharedMemory", shm),
        ];
        for (name, run) in primitives {
            let before = holdings();
            let t = Instant::now();
            let mut figures = Figures::default();
            for trial in 0..n {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run(seed, trial, &mut figures)
                }));
                if let Err(e) = r {
                    eprintln!(
                        "fault suite: {name} failed at seed {seed} trial {trial} \
                         (replay with MULTIPROCESS_FAULT_SEED={seed})"
                    );
                    std::panic::resume_unwind(e);
                }
            }
            // Reaping and closing are prompt but not instant (a dropped child's reaper, a
            // pool's winding down): give them a moment.
            let settle = Instant::now() + Duration::from_secs(5);
            let mut after = holdings();
            while after != before && Instant::now() < settle {
                std::thread::sleep(Duration::from_millis(20));
                after = holdings();
            }
            assert_eq!(after, before, "{name}: something was left behind");
            println!(
                "fault suite: {name}: {n} trials, {} kills, {} messages or items checked, \
                 {} recoveries, {:.1} s",
                figures.kills,
                figures.checked,
                figures.recoveries,
                t.elapsed().as_secs_f64()
            );
        }
    });
}
