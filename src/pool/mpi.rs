//! The cluster pool: the same `Pool`, its workers MPI ranks on any number of machines.
//!
//! **World mode.** `mpirun -n N ./prog` runs the program N times. Rank 0 runs `main`; every
//! other rank becomes a worker before `main` ([`divert_world`], called from the crate's
//! constructor, after a re-executed child's own diversion) and serves tasks until rank 0
//! exits, then finalizes MPI and exits 0.
//!
//! **Protocol** (tags on `MPI_COMM_WORLD`, rank 0 the master; every message is bytes):
//! - `CHECK` master → worker: the master's build id (u64 LE). The worker answers `HELLO`: its
//!   build id, its pid (i32 LE) and its host name. A worker whose build differs refuses all
//!   work; the master refuses to build the pool, naming the rank and host.
//! - `WORK` master → worker: a batch of units, each `entry (i64) | len (u64) | args`. The
//!   worker runs them through the same pool entries as a local worker (so a panic is that
//!   task's error) and answers `DONE` with each unit's encoded `UnitOut`, `len (u64) | bytes`.
//!   Dispatch is pull-based: each worker has at most two batches in flight, and gets the next
//!   one when it answers, so slow hosts do not hold up fast ones.
//! - `STOP` master → worker, when rank 0 exits: the worker finalizes MPI and exits 0.
//!
//! What cannot cross hosts is refused with a clear error: a task argument or result holding a
//! local handle (any descriptor), and `maxtasksperchild`. A rank that dies is Open MPI's to
//! report: `mpirun` ends the whole job and names the rank and host.

#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use mpi::point_to_point::{Destination, MatchedReceiveVec, Source};
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::Threading;

use super::error::{Kind, PoolError};
use super::supervisor::{Config, Payload, Shared, Unit, UnitKind};
use crate::connection::Connection;
use crate::sys::build_id::build_id;
use crate::task::{self, UnitOut};

const CHECK: i32 = 1;
const HELLO: i32 = 2;
const WORK: i32 = 3;
const DONE: i32 = 4;
const STOP: i32 = 5;

/// Batches in flight per worker rank.
const IN_FLIGHT: usize = 2;
/// Most units in one batch, and the bytes a batch stops growing at.
const MAX_BATCH_UNITS: usize = 128;
const BATCH_BYTES: usize = 1 << 20;

/// This process's rank under an MPI launcher (-1: not launched by one, or MPI not set up).
static RANK: AtomicI32 = AtomicI32::new(-1);
static WORLD_SIZE: AtomicI32 = AtomicI32::new(0);
static DIVERTED: Once = Once::new();
/// A cluster pool is running (one at a time: its thread is the only one using MPI).
static BUSY: AtomicBool = AtomicBool::new(false);

/// The rank the launcher gave this process, from its environment (Open MPI, PMIx, MPICH).
fn launcher_rank() -> Option<i32> {
    ["OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"]
        .iter()
        .find_map(|k| std::env::var(k).ok())
        .and_then(|v| v.trim().parse::<i32>().ok())
        .filter(|r| *r >= 0)
}

/// Called by the crate's constructor (and `init`) in a process that is not a re-executed
/// child: under an MPI launcher, initializes MPI; a rank above 0 then serves as a worker
/// and never returns.
pub(crate) fn divert_world() {
    DIVERTED.call_once(|| {
        let Some(rank) = launcher_rank() else { return };
        let Some((universe, _)) = mpi::initialize_with_threading(Threading::Multiple) else {
            return;
        };
        // Finalized explicitly at exit (rank 0) or after STOP (workers).
        std::mem::forget(universe);
        let world = SimpleCommunicator::world();
        let me = world.rank();
        if me != rank {
            eprintln!("multiprocess: MPI rank {me} differs from the launcher's {rank}");
        }
        RANK.store(me, Ordering::Release);
        WORLD_SIZE.store(world.size(), Ordering::Release);
        if me == 0 {
            crate::sys::process::at_exit(stop_workers_c);
        } else {
            serve(&world);
        }
    });
}

/// Whether this process is rank 0 of an MPI job with at least one worker rank.
pub(crate) fn world_workers() -> Result<usize, PoolError> {
    let rank = RANK.load(Ordering::Acquire);
    let size = WORLD_SIZE.load(Ordering::Acquire);
    if rank == 0 && size >= 2 {
        Ok(size as usize - 1)
    } else if rank == 0 {
        Err(PoolError::new(Kind::Start(
            "a cluster pool needs worker ranks: run the program under `mpirun -n N` with N >= 2 \
             (rank 0 runs main, ranks 1..N are the workers)"
                .into(),
        )))
    } else {
        Err(PoolError::new(Kind::Start(
            "a cluster pool needs an MPI launcher: run the program as `mpirun -n N ./program` \
             (or `srun`), with N >= 2; outside one, use a local pool"
                .into(),
        )))
    }
}

extern "C" fn stop_workers_c() {
    let _ = std::panic::catch_unwind(|| {
        let world = SimpleCommunicator::world();
        for r in 1..world.size() {
            world.process_at_rank(r).send_with_tag(&[0u8][..], STOP);
        }
        // SAFETY: MPI was initialized in this process and is finalized once, here.
        unsafe { mpi::ffi::MPI_Finalize() };
    });
}

/// A send in progress, owning its bytes until MPI is done with them. Every send of a batch or
/// an answer is non-blocking: a blocking one could wait forever for a peer that is itself
/// blocked sending to us (two large messages crossing, each waiting for the other's receive).
struct Sending {
    request: mpi::ffi::MPI_Request,
    /// Read by MPI through the pointer given to `MPI_Isend`; a `Vec`'s heap buffer does not
    /// move when the `Vec` does.
    _bytes: Vec<u8>,
}

// SAFETY: the request is an opaque handle MPI lets any thread use (MPI_THREAD_MULTIPLE), and
// the bytes are owned.
unsafe impl Send for Sending {}

impl Sending {
    /// Starts sending `bytes` to `rank` with `tag`.
    fn start(rank: i32, tag: i32, bytes: Vec<u8>) -> Result<Sending, String> {
        let len = i32::try_from(bytes.len())
            .map_err(|_| format!("a message of {} bytes is too large for MPI", bytes.len()))?;
        // SAFETY: a zeroed `MPI_Request` is overwritten by `MPI_Isend` before any use.
        let mut request: mpi::ffi::MPI_Request = unsafe { std::mem::zeroed() };
        // SAFETY: the buffer is `len` valid bytes owned by the returned value until the
        // request completes (`done`/`wait`), and the communicator and datatype are MPI's own.
        let rc = unsafe {
            mpi::ffi::MPI_Isend(
                bytes.as_ptr().cast(),
                len,
                mpi::ffi::RSMPI_UINT8_T,
                rank,
                tag,
                mpi::ffi::RSMPI_COMM_WORLD,
                &mut request,
            )
        };
        if rc != 0 {
            return Err(format!("MPI_Isend to rank {rank} failed ({rc})"));
        }
        Ok(Sending {
            request,
            _bytes: bytes,
        })
    }

    /// Whether the send has completed (its bytes may then be dropped).
    fn done(&mut self) -> bool {
        let mut flag = 0;
        // SAFETY: `request` came from `MPI_Isend` and is tested until it completes.
        unsafe { mpi::ffi::MPI_Test(&mut self.request, &mut flag, mpi::ffi::RSMPI_STATUS_IGNORE) };
        flag != 0
    }

    /// Waits for the send to complete.
    fn wait(self) {
        drop(self);
    }
}

/// The bytes are freed only after MPI is done with them: dropping waits for the send (a peer
/// always receives in the end: it is computing, or blocked receiving; a dead one ends the job).
impl Drop for Sending {
    fn drop(&mut self) {
        // SAFETY: `request` came from `MPI_Isend`; after completion it is `MPI_REQUEST_NULL`,
        // for which `MPI_Wait` returns at once.
        unsafe { mpi::ffi::MPI_Wait(&mut self.request, mpi::ffi::RSMPI_STATUS_IGNORE) };
    }
}

/// Drops the sends that have completed.
fn reap(sending: &mut Vec<Sending>) {
    sending.retain_mut(|s| !s.done());
}

fn host() -> String {
    mpi::environment::processor_name().unwrap_or_else(|_| "?".into())
}

/// Aborts the whole job (a fatal error outside a task): the other ranks would wait forever.
fn abort(world: &SimpleCommunicator, why: &str) -> ! {
    eprintln!(
        "multiprocess: MPI rank {} on {}: {why}; aborting the job",
        world.rank(),
        host()
    );
    world.abort(70)
}

// ---------------------------------------------------------------------------------------------
// Worker ranks

fn serve(world: &SimpleCommunicator) -> ! {
    crate::lifecycle::ensure_panic_hook();
    let master = world.process_at_rank(0);
    let mine = build_id();
    let mut verified = false;
    let mut sending: Vec<Sending> = Vec::new();
    loop {
        reap(&mut sending);
        let (msg, status) = master.receive_vec::<u8>();
        match status.tag() {
            CHECK => {
                let theirs = msg
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_le_bytes);
                verified = theirs == Some(mine);
                let mut hello = mine.to_le_bytes().to_vec();
                hello.extend_from_slice(&(std::process::id() as i32).to_le_bytes());
                hello.extend_from_slice(host().as_bytes());
                master.send_with_tag(&hello[..], HELLO);
            }
            WORK if verified => {
                let mut out = Vec::new();
                if let Err(why) = run_batch(&msg, &mut out) {
                    abort(world, &why);
                }
                match Sending::start(0, DONE, out) {
                    Ok(s) => sending.push(s),
                    Err(why) => abort(world, &why),
                }
            }
            WORK => abort(world, "work from a master running another build"),
            STOP => {
                for s in sending.drain(..) {
                    s.wait();
                }
                // SAFETY: MPI was initialized in this process and is finalized once, here.
                unsafe { mpi::ffi::MPI_Finalize() };
                crate::sys::process::exit_now(0)
            }
            t => abort(world, &format!("unknown message tag {t} from rank 0")),
        }
    }
}

/// Runs the units of a `WORK` message; appends each one's `len | UnitOut` to `out`.
fn run_batch(msg: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let mut rest = msg;
    let mut take = |n: usize| -> Result<&[u8], String> {
        if rest.len() < n {
            return Err("a batch from rank 0 ended early".into());
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    let id = take(8)?;
    out.extend_from_slice(id);
    let count = u32::from_le_bytes(take(4)?.try_into().unwrap_or_default());
    for _ in 0..count {
        let entry = i64::from_le_bytes(take(8)?.try_into().unwrap_or_default());
        let len = u64::from_le_bytes(take(8)?.try_into().unwrap_or_default());
        let len = usize::try_from(len).map_err(|_| "a unit length overflows".to_string())?;
        let args = take(len)?;
        let at = out.len();
        out.extend_from_slice(&0u64.to_le_bytes());
        // SAFETY: `entry` comes from rank 0, whose build id equals ours (checked by CHECK
        // before any WORK is accepted): the same executable, so the same offsets.
        let run = unsafe { task::pool_entry_at(entry) };
        let fds = run(args, Vec::new(), out);
        if !fds.is_empty() {
            out.truncate(at + 8);
            task::encode_failed(
                "a task result holds a local handle (a Queue, Connection, Lock, SharedMemory \
                 or descriptor), which cannot cross to another host"
                    .into(),
                out,
            );
        }
        let n = (out.len() - at - 8) as u64;
        out[at..at + 8].copy_from_slice(&n.to_le_bytes());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Rank 0: the pool's handler thread

struct Rank {
    rank: i32,
    pid: i32,
    host: String,
    /// Batches sent and not answered: their ids and units.
    batches: VecDeque<(u64, Vec<Unit>)>,
    initialized: bool,
}

/// The result handler of a cluster pool (the `mpi` pool's counterpart of
/// `supervisor::run`).
pub(crate) fn run(shared: Arc<Shared>, config: Config, wake_rx: Connection) {
    if BUSY.swap(true, Ordering::AcqRel) {
        shared.break_with(PoolError::new(Kind::Start(
            "another cluster pool is running in this process: one at a time".into(),
        )));
        shared.finish();
        return;
    }
    let world = SimpleCommunicator::world();
    let mut ranks = Vec::new();
    if let Err(e) = serve_pool(&world, &shared, &config, &wake_rx, &mut ranks) {
        shared.break_with(e);
    }
    // What is still queued or out on a rank fails; a rank still running an old batch
    // answers later, and the next pool ignores the answer (its id is unknown there).
    let err = shared.fail_pending();
    for r in ranks {
        for (_, units) in r.batches {
            for u in units {
                u.fail(err.clone());
            }
        }
    }
    shared.finish();
    BUSY.store(false, Ordering::Release);
}

fn serve_pool(
    world: &SimpleCommunicator,
    shared: &Shared,
    config: &Config,
    wake_rx: &Connection,
    ranks: &mut Vec<Rank>,
) -> Result<(), PoolError> {
    *ranks = hello(world)?;
    let mut sending: Vec<Sending> = Vec::new();
    shared.set_pids(ranks.iter().map(|r| r.pid).collect());
    // The initializer, on every worker rank, before any task.
    if let Some(init) = &config.init {
        if !init.fds.is_empty() {
            return Err(local_handle_error());
        }
        for r in ranks.iter_mut() {
            let unit = Unit {
                id: shared.next_id(),
                entry: init.entry,
                len: init.payload.len(),
                nfds: 0,
                payload: Payload::Ready {
                    bytes: init.payload.clone(),
                    fds: Vec::new(),
                    keep: None,
                },
                kind: UnitKind::Init,
                start: 0,
                count: 1,
                pod: None,
            };
            send_batch(shared, r, vec![unit], &mut sending)?;
        }
    } else {
        for r in ranks.iter_mut() {
            r.initialized = true;
        }
        shared.set_ready();
    }
    let mut idle_since = Instant::now();
    loop {
        reap(&mut sending);
        // Answers first: they free room for more batches.
        let mut got = false;
        while let Some(probed) = world.any_process().immediate_matched_probe_with_tag(DONE) {
            answered(probed, ranks, shared)?;
            got = true;
        }
        if shared.terminating() {
            return Ok(());
        }
        // Then new batches for the ranks with room, initialized ones only.
        let mut sent = false;
        let ranks_len = ranks.len();
        for r in ranks.iter_mut() {
            if !r.initialized || r.batches.len() >= IN_FLIGHT {
                continue;
            }
            let units = shared.take_batch(MAX_BATCH_UNITS, BATCH_BYTES, ranks_len);
            if units.is_empty() {
                break;
            }
            send_batch(shared, r, units, &mut sending)?;
            sent = true;
        }
        let outstanding: usize = ranks.iter().map(|r| r.batches.len()).sum();
        if outstanding == 0 && shared.done_when_idle() {
            return Ok(());
        }
        if got || sent {
            idle_since = Instant::now();
            continue;
        }
        // Nothing moved. When every rank has a batch out, the next event is an answer: wait
        // for it inside MPI (its progress engine, which yields the core when the job
        // oversubscribes it); new work then goes out with the next batch. Otherwise (a rank
        // idle, waiting for work), sleep on the wake-up pipe in short slices, looking for
        // answers in between (MPI has no descriptor to wait on).
        let all_busy = ranks.iter().all(|r| r.initialized && !r.batches.is_empty());
        if all_busy {
            answered(
                world.any_process().matched_probe_with_tag(DONE),
                ranks,
                shared,
            )?;
            idle_since = Instant::now();
        } else if idle_since.elapsed() < Duration::from_micros(50) || !sending.is_empty() {
            // A large send moves only while this process calls into MPI (its progress
            // engine): with one in flight, keep calling (the loop tests it) instead of
            // sleeping. Sleeping here left megabyte batches crawling and a map 3x slower.
            std::thread::yield_now();
        } else {
            let slice = if outstanding > 0 {
                Duration::from_micros(200)
            } else {
                Duration::from_millis(20)
            };
            // Marked asleep, a submission, close or terminate wakes us at once.
            if shared.mark_sleeping() {
                // `Connection::poll`, not a poll of its descriptor: a pipe's small messages
                // travel through shared memory, and its descriptor may never turn readable
                // (that wait slept out its whole slice: 20 ms added to the start of each map).
                let _ = wake_rx.poll(slice);
                shared.clear_sleeping();
            }
            while wake_rx.poll(Duration::ZERO).unwrap_or(false) {
                let _ = wake_rx.recv_bytes();
            }
        }
    }
}

/// Receives a probed `DONE`, hands its results to their callers, and marks the pool ready
/// once every rank has run the initializer.
fn answered(
    probed: (mpi::point_to_point::Message, mpi::point_to_point::Status),
    ranks: &mut [Rank],
    shared: &Shared,
) -> Result<(), PoolError> {
    let (bytes, status) = probed.matched_receive_vec::<u8>();
    let from = status.source_rank();
    if let Some(r) = ranks.iter_mut().find(|r| r.rank == from) {
        deliver(r, &bytes)?;
    }
    if ranks.iter().all(|r| r.initialized) {
        shared.set_ready();
    }
    Ok(())
}

fn local_handle_error() -> PoolError {
    PoolError::new(Kind::Invalid(
        "a task argument holds a local handle (a Queue, Connection, Lock, SharedMemory or \
         descriptor), which cannot cross to another host: a cluster pool takes plain values"
            .into(),
    ))
}

/// CHECK every worker rank, gather their HELLO; another build is an error naming the rank and
/// its host.
fn hello(world: &SimpleCommunicator) -> Result<Vec<Rank>, PoolError> {
    let mine = build_id();
    for r in 1..world.size() {
        world
            .process_at_rank(r)
            .send_with_tag(&mine.to_le_bytes()[..], CHECK);
    }
    let mut ranks = Vec::new();
    let mut wrong = Vec::new();
    for _ in 1..world.size() {
        let (msg, status) = world.any_process().receive_vec_with_tag::<u8>(HELLO);
        let rank = status.source_rank();
        let id = msg
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes);
        let pid = msg
            .get(8..12)
            .and_then(|b| b.try_into().ok())
            .map_or(0, i32::from_le_bytes);
        let host = String::from_utf8_lossy(msg.get(12..).unwrap_or_default()).into_owned();
        if id != Some(mine) {
            wrong.push((rank, host.clone()));
        }
        ranks.push(Rank {
            rank,
            pid,
            host,
            batches: VecDeque::new(),
            initialized: false,
        });
    }
    if !wrong.is_empty() {
        wrong.sort();
        let who: Vec<String> = wrong
            .iter()
            .map(|(rank, host)| format!("rank {rank} on host {host}"))
            .collect();
        return Err(PoolError::new(Kind::Start(format!(
            "{} {} another build of the program than rank 0 (every rank must run the same \
             executable)",
            who.join(", "),
            if who.len() == 1 { "runs" } else { "run" }
        ))));
    }
    ranks.sort_by_key(|r| r.rank);
    Ok(ranks)
}

fn send_batch(
    shared: &Shared,
    r: &mut Rank,
    units: Vec<Unit>,
    sending: &mut Vec<Sending>,
) -> Result<(), PoolError> {
    let id = shared.next_id();
    let mut buf = Vec::with_capacity(12 + units.iter().map(|u| 16 + u.len).sum::<usize>());
    buf.extend_from_slice(&id.to_le_bytes());
    buf.extend_from_slice(&(units.len() as u32).to_le_bytes());
    let mut kept = Vec::with_capacity(units.len());
    for u in units {
        if u.nfds > 0 {
            u.fail(local_handle_error());
            continue;
        }
        buf.extend_from_slice(&u.entry.to_le_bytes());
        buf.extend_from_slice(&(u.len as u64).to_le_bytes());
        let at = buf.len();
        match &u.payload {
            Payload::Ready { bytes, .. } => buf.extend_from_slice(bytes),
            Payload::Lazy(args) => {
                buf.resize(at + u.len, 0);
                match args.encode(&mut buf[at..]) {
                    Ok(fds) if fds.is_empty() => {}
                    Ok(_) => {
                        buf.truncate(at - 16);
                        u.fail(local_handle_error());
                        continue;
                    }
                    Err(e) => {
                        buf.truncate(at - 16);
                        u.fail(PoolError::new(Kind::Encode(e)));
                        continue;
                    }
                }
            }
        }
        kept.push(u);
    }
    if kept.is_empty() {
        return Ok(());
    }
    buf[8..12].copy_from_slice(&(kept.len() as u32).to_le_bytes());
    match Sending::start(r.rank, WORK, buf) {
        Ok(s) => sending.push(s),
        Err(why) => {
            let e = PoolError::new(Kind::Encode(why));
            for u in kept {
                u.fail(e.clone());
            }
            return Ok(());
        }
    }
    r.batches.push_back((id, kept));
    Ok(())
}

/// Hands each unit of the batch `bytes` answers its result. An answer to a batch of an
/// earlier pool (terminated while the rank ran it) is ignored.
fn deliver(r: &mut Rank, bytes: &[u8]) -> Result<(), PoolError> {
    let Some((id, mut rest)) = bytes
        .split_first_chunk::<8>()
        .map(|(id, rest)| (u64::from_le_bytes(*id), rest))
    else {
        return Err(PoolError::new(Kind::Start(format!(
            "rank {} on {} sent a malformed answer",
            r.rank, r.host
        ))));
    };
    let Some(at) = r.batches.iter().position(|(b, _)| *b == id) else {
        return Ok(());
    };
    let Some((_, units)) = r.batches.remove(at) else {
        return Ok(());
    };
    for unit in units {
        let body = match rest.split_first_chunk::<8>().and_then(|(n, tail)| {
            let n = usize::try_from(u64::from_le_bytes(*n)).ok()?;
            (n <= tail.len()).then(|| tail.split_at(n))
        }) {
            Some((body, tail)) => {
                rest = tail;
                body
            }
            None => {
                let e = PoolError::new(Kind::Start(format!(
                    "rank {} on {} sent a malformed answer",
                    r.rank, r.host
                )));
                unit.fail(e.clone());
                return Err(e);
            }
        };
        match unit.kind {
            UnitKind::Task(sink) => sink.deliver(unit.start, unit.count, body, Vec::new(), r.pid),
            UnitKind::Init => {
                let failed = match UnitOut::<()>::decode(body, Vec::new()) {
                    Ok(UnitOut::All(_)) => None,
                    Ok(UnitOut::Mixed(v)) => Some(
                        v.into_iter()
                            .find_map(Result::err)
                            .unwrap_or_else(|| "the initializer failed".into()),
                    ),
                    Ok(UnitOut::Failed(m)) | Err(m) => Some(m),
                };
                match failed {
                    None => r.initialized = true,
                    Some(message) => {
                        return Err(PoolError::new(Kind::Initializer {
                            pid: r.pid,
                            message: format!("on rank {} ({}): {message}", r.rank, r.host),
                        }))
                    }
                }
            }
        }
    }
    Ok(())
}
