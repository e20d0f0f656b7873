//! # multiprocess
//!
//! Python's `multiprocessing`, in Rust: real child processes (isolation from crashes, no shared
//! bottleneck, native code that is not thread-safe, a memory limit per worker) with the names
//! a Python programmer knows and the shape a Rust programmer expects.
//!
//! **Platform:** Linux only (x86_64 and aarch64 are built and tested). The crate uses memfds,
//! futexes, pidfds and `/proc`; other platforms are not supported yet.
//!
//! ## Hello, child
//! ```
//! use multiprocess::Process;
//!
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! fn main() -> Result<(), multiprocess::ProcessError> {
//!     multiprocess::init(); // first in main: see "Start methods"
//!     let mut p = Process::new(square, 12);
//!     p.start()?;
//!     assert_eq!(p.join_result()?, 144);
//!     Ok(())
//! }
//! ```
//!
//! A *target* is "the function itself", as in Python: a function item or a closure that
//! captures nothing, taking one argument (a tuple or struct for several) that implements
//! serde's `Serialize` and `Deserialize`, and returning such a value. The child finds the
//! function by its position in the executable, so the same binary must run on both sides
//! (it does, under every start method).
//!
//! What cannot be a target, and why:
//! - **A closure that captures** (a `move` closure, or one that uses a local variable): its
//!   captures live in this process's memory and could not be rebuilt in the child. Pass them
//!   as the argument. rustc's hint for a closure that borrows a local, "add `move`", leads here
//!   too: the data belongs in the argument instead.
//! - **A `fn` pointer** (`let f: fn(u32) -> u32 = square;`, or one picked at run time): a
//!   pointer is a value, not a type, so the child could not tell which function it is. Pass
//!   the function item itself (`square`), or a non-capturing closure that matches on an
//!   argument to choose.
//!
//!   Both are refused when the program is compiled ("a multiprocess target must be a function
//!   item..."). The check needs the target's size, which the compiler knows only when it
//!   generates code: `cargo build`, `cargo test` and `cargo run` report it (with the call it
//!   comes from in the notes), `cargo check` and an IDE's checker do not.
//!
//!   ```compile_fail
//!   # fn main() -> Result<(), multiprocess::ProcessError> {
//!   let factor = 3u64;
//!   let mut p = multiprocess::Process::new(move |x: u64| x * factor, 2); // captures `factor`
//!   # p.start()?; Ok(()) }
//!   ```
//!   ```compile_fail
//!   # fn main() -> Result<(), multiprocess::ProcessError> {
//!   fn square(x: u64) -> u64 { x * x }
//!   let f: fn(u64) -> u64 = square; // a pointer: refused
//!   let mut p = multiprocess::Process::new(f, 2);
//!   # p.start()?; Ok(()) }
//!   ```
//! - **A target whose argument borrows** (`fn f(s: &str)`, `fn f(v: &[u8])`): the argument is
//!   decoded in the child into a value it owns, so it must be an owned type (`String`,
//!   `Vec<u8>`); with a borrowed one the compiler says that "implementation of `Deserialize` is
//!   not general enough".
//!
//! ## On a cluster
//! With the `mpi` feature, `Pool::builder().mpi()` is a pool whose workers are the other ranks
//! of the MPI job the program runs in (`mpirun -n N ./program`): the same verbs and errors,
//! on as many machines as the job has. See the README, "Running on a cluster".
//!
//! ## Process
//! [`Process::new`]`(target, args)` or [`Process::builder`] (name, daemon, start method);
//! [`start`](Process::start), [`join`](Process::join), [`join_timeout`](Process::join_timeout),
//! [`join_result`](Process::join_result) (the return value, which Python drops),
//! [`is_alive`](Process::is_alive), [`exitcode`](Process::exitcode),
//! [`terminate`](Process::terminate), [`kill`](Process::kill), [`close`](Process::close).
//! Python's "subclass `Process` and override `run`" is the [`Run`] trait. Misuse (starting
//! twice, joining before start, `close` on a running child) is an error value, never a panic.
//!
//! ## Pipe
//! [`Pipe::new`] gives two connected [`Connection`]s that [`send`](Connection::send) and
//! [`recv`](Connection::recv) any serde value, or raw bytes. A `Connection` is itself a
//! *handle*: pass it as a target's argument or send it through another connection, and it
//! works on the other side. See [`handle`] for how descriptors travel.
//!
//! ## Pool
//! [`Pool::new`]`(n)` or [`Pool::builder`] (processes, initializer, `maxtasksperchild`, start
//! method); [`apply`](Pool::apply), [`map`](Pool::map) (values in input order),
//! [`apply_async`](Pool::apply_async) and [`map_async`](Pool::map_async) (an [`AsyncResult`]
//! with `get`, `wait`, `ready`, and a progress count), [`imap`](Pool::imap) (lazy),
//! [`imap_unordered`](Pool::imap_unordered), [`starmap`](Pool::starmap); `close`,
//! `terminate`, `join`. A task's panic, or the death of its worker, is that task's
//! [`PoolError`]; the pool replaces the worker and goes on. Handles (a `Connection`) can be
//! task arguments. For large slices of plain data ([`Pod`]: numbers, arrays of them, your
//! `#[repr(C)]` structs), [`map_pod`](Pool::map_pod) skips encoding: the items are copied
//! once into the workers' shared memory and read there, the values made in place and copied
//! once into the returned `Vec`.
//! ## Queue
//! [`Queue::new`]`(maxsize)` makes a FIFO queue that many processes [`put`](Queue::put) into
//! and [`get`](Queue::get) from; pass it (or a clone) to children as an argument, send it
//! through a [`Connection`] or through another queue. It is a ring in shared memory with
//! futex waits, so a message costs no system call while nobody has to wait; `put` serializes
//! in the caller's thread (errors come back with the value) and there is no feeder thread.
//! A process killed in the middle of `put` or `get` does not wedge the others. The Python idiom
//! `while not q.empty(): q.get()`:
//! ```
//! use multiprocess::{Process, Queue};
//!
//! fn child(q: Queue<String>) {
//!     for word in ["a", "b", "c"] {
//!         q.put(word.to_string()).unwrap();
//!     }
//! }
//!
//! let q = Queue::new(10)?;
//! let mut p = Process::new(child, q.clone());
//! p.start()?;
//! p.join()?;
//! let mut words = Vec::new();
//! while !q.is_empty() {
//!     words.push(q.get()?);
//! }
//! assert_eq!(words, ["a", "b", "c"]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//! [`SimpleQueue`] and [`JoinableQueue`] (`task_done`, `join`) are there too.
//!
//! ## Start methods
//! [`StartMethod::Fork`], [`StartMethod::Spawn`], [`StartMethod::ForkServer`], chosen per
//! process ([`Builder::start_method`]), per [`Context`] ([`get_context`]) or for the program
//! ([`set_start_method`]). Spawn and the fork server run a fresh copy of the program which
//! must not run `main`: the crate's constructor diverts it before `main`, and [`init`] (or
//! [`#[multiprocess::main]`](main)) does the same first thing in `main` where constructors do not run.
//! The default is the fork server where that diversion works, else fork.
//!
//! ## Locks and shared values
//! [`Lock`], [`RLock`], [`Semaphore`], [`BoundedSemaphore`], [`Event`], [`Condition`] and
//! [`Barrier`] ([`sync`]) and [`Value`], [`Array`], [`RawValue`], [`RawArray`],
//! [`AtomicValue`] and [`SharedMemory`] ([`shared_memory`]) are handles too: pass them to
//! children. A process killed while holding a lock does not wedge the others: the next locker
//! gets the lock and an [`OwnerDied`] that says so; a barrier whose party died breaks.
//!
//! ## Listener, Client and managers
//! [`connection::Listener`] and [`connection::Client`] connect processes that did not start
//! one another, on this machine or across the network (Unix paths, abstract names, TCP), with
//! CPython's framing and HMAC authkey handshake: the other end may be a Python program
//! (pickles for plain data with the `pickle` feature). [`managers::Manager`] runs a server
//! process that owns shared dicts, lists, namespaces, values, queues, locks, events and your
//! own types, reached through proxies that travel like any handle. The authkey authenticates;
//! it does not encrypt: across an untrusted network, use a tunnel.
//!
//! ## Async
//! A tokio (or smol, or any) service can run CPU-heavy or crash-prone code in processes
//! without parking a thread per wait:
//! - an [`AsyncResult`] is a future (`pool.apply_async(f, x).await`): the pool's result thread
//!   wakes the task; [`pool::IMap::next_async`] awaits the next `imap` item (and with the
//!   `stream` feature, `imap`s are `futures_core::Stream`s);
//! - [`Process::join_async`] completes when the child's pidfd is readable;
//! - [`Connection::recv_async`] and [`Queue::get_async`] / [`Queue::put_async`] wait on the
//!   socket and on doorbells (eventfds) that a sender rings only when an async receiver waits,
//!   so synchronous users pay nothing for them; [`Connection::send_async`] waits for room in
//!   a full pipe without blocking its thread;
//! - [`Event::wait_async`] waits for an event that another process sets: a watcher thread
//!   waits on the futex words of every pending future at once (`futex_waitv`).
//!
//! The futures need no particular runtime and no cargo feature: a reactor thread of the crate
//! (one per process, started by the first future that waits) polls the descriptors with
//! `epoll` and calls the wakers. Every one is cancellation-safe: dropping it (a `select!`
//! branch that lost, a `timeout`) loses no message, item or result; each method's docs state
//! its contract. `examples/async_service.rs` is a tokio service that offloads work to a pool
//! per request.
//!
//! ## Which one do I need?
//! | you want | use |
//! |---|---|
//! | run a function in another process and get its value | [`Process`] + [`join_result`](Process::join_result) |
//! | talk both ways with one child | [`Pipe`] (small messages go through shared memory) |
//! | many producers and consumers, fast | [`Queue`] |
//! | know when every queued task is processed | [`JoinableQueue`] |
//! | wait for whichever of several children or pipes is ready | [`connection::wait`] |
//! | a process that dies with its parent | [`Builder::daemon`] |
//! | pass an open file or socket to a child | [`handle::SharedFd`] |
//! | send bulk bytes inside a message, fast | [`Bytes`] (not `Vec<u8>`, which serde writes byte by byte) |
//! | one process at a time in a section | [`Lock`] (re-entrant: [`RLock`]) |
//! | at most N processes at a time | [`Semaphore`], [`BoundedSemaphore`] |
//! | wake processes when something happened | [`Event`], or [`Condition`] with a predicate |
//! | N processes meet before going on | [`Barrier`] |
//! | a number or struct every process updates | [`Value`] (lock-free: [`AtomicValue`]) |
//! | a shared buffer | [`Array`], [`RawArray`], [`SharedMemory`] |
//! | memory that unrelated processes find by name | [`SharedMemory::create`] / [`SharedMemory::open`] |
//! | run many tasks on a few processes | [`Pool`] |
//! | await results, processes, messages, queue items or events from async code | [`AsyncResult`] (a future), [`Process::join_async`], [`Connection::recv_async`], [`Queue::get_async`], [`Event::wait_async`] |
//! | map a large slice of numbers through processes, fast | [`Pool::map_pod`] |
//! | talk to a process you did not start, or to a Python program | [`connection::Listener`], [`connection::Client`] |
//! | a dict or queue shared across machines, or objects a server owns | [`managers::Manager`] |
//!
//! ## From Python
//! | Python | multiprocess |
//! |---|---|
//! | `Process(target=f, args=(x,), name=n, daemon=d)` | `Process::builder().name(n).daemon(d).target(f, x)` |
//! | `class P(Process): def run(self)` | `impl Run for P` + [`Process::from_run`] |
//! | `p.start()`, `p.join()`, `p.join(t)` | `start()`, `join()`, `join_timeout(t)` |
//! | `p.is_alive()`, `p.exitcode`, `p.pid`, `p.name`, `p.daemon = True` | `is_alive()`, `exitcode()`, `pid()`, `name()`, `set_daemon(true)` |
//! | `p.terminate()`, `p.kill()`, `p.close()` | `terminate()`, `kill()`, `close()` |
//! | `a, b = Pipe()`, `Pipe(duplex=False)` | `Pipe::new()`, `Pipe::oneway()` |
//! | `c.send(x)`, `c.recv()`, `c.poll(t)` | `send(&x)`, `recv::<T>()`, `poll(t)` |
//! | `c.send_bytes(b)`, `c.recv_bytes()`, `c.recv_bytes_into(buf)` | the same names |
//! | `c.fileno()`, `c.close()`, an end shared by two processes | `as_raw_fd()`, `close()`, [`Connection::try_clone`] |
//! | `multiprocessing.connection.wait(objs, t)` | [`connection::wait`] |
//! | `Pool(n, initializer, initargs, maxtasksperchild)` | [`Pool::new`], [`Pool::builder`] |
//! | `pool.apply`, `apply_async`, `map`, `map_async`, `imap`, `imap_unordered`, `starmap`, `starmap_async` | the same names (`chunksize`: the `_chunked` forms) |
//! | `AsyncResult.get(t)`, `wait(t)`, `ready()`, `successful()` | [`AsyncResult`]: `get`, `get_timeout`, `wait`, `wait_timeout`, `ready`, `successful` |
//! | `EOFError` | [`ConnectionError::Eof`] |
//! | `Lock()`, `with lock:`, `lock.acquire(timeout=t)` | `Lock::new()?`, `let _g = lock.lock()`, `lock_timeout(t)` |
//! | `RLock()`, `Semaphore(n)`, `BoundedSemaphore(n)` | `RLock::new()`, `Semaphore::new(n)`, `BoundedSemaphore::new(n)` |
//! | `Event()`, `e.set()`, `e.wait(t)` | `Event::new()`, `set()`, `wait_timeout(t)`; from async code `wait_async().await` |
//! | `Condition()`, `c.wait_for(p)`, `c.notify_all()` | `Condition::new()`, `guard.wait_while(\|\| !p())`, `notify_all()` |
//! | `Barrier(n)`, `b.wait()`, `BrokenBarrierError` | `Barrier::new(n)`, `wait()`, [`BarrierError`] |
//! | `Value('q', 0)`, `v.get_lock()`, `v.value` | `Value::new(0i64)`, `v.lock()`, `get()`/`set()` |
//! | `Array('d', n)`, `RawValue`, `RawArray` | `Array::<f64>::new(n)`, [`RawValue`], [`RawArray`] |
//! | `shared_memory.SharedMemory(name, create=True, size=n)` | [`SharedMemory::create`]`(name, n)`; attach: [`SharedMemory::open`] |
//! | `Queue(n)`, `Queue()`, `SimpleQueue()`, `JoinableQueue()` | `Queue::new(n)`, `Queue::unbounded()`, `SimpleQueue::new()`, `JoinableQueue::new(0)` |
//! | `q.put(x)`, `q.put(x, timeout=t)`, `q.put_nowait(x)` | `put(x)`, `put_timeout(x, t)`, `put_nowait(x)` |
//! | `q.get()`, `q.get(timeout=t)`, `q.get_nowait()` | `get()`, `get_timeout(t)`, `get_nowait()` |
//! | `q.qsize()`, `q.empty()`, `q.full()`, `q.close()` | `qsize()`, `is_empty()`, `is_full()`, `close()` |
//! | `queue.Full`, `queue.Empty` | [`PutError::Full`] (the value inside), [`GetError::Empty`] |
//! | `q.task_done()`, `q.join()` | the same names on [`JoinableQueue`] |
//! | `get_context("spawn")`, `set_start_method("fork")` | `get_context(StartMethod::Spawn)`, `set_start_method(StartMethod::Fork)` |
//! | `current_process()`, `parent_process()`, `active_children()`, `cpu_count()` | the same names |
//! | `current_process().authkey`, `current_process().authkey = k` | [`CurrentProcess::authkey`], [`CurrentProcess::set_authkey`] |
//! | `connection.Listener(address, authkey=k)`, `Listener()` | [`connection::Listener::bind`]`(address)` (with the process's authkey), [`Listener::builder`](connection::Listener::builder)`().authkey(k)`, [`Listener::new`](connection::Listener::new)`()` |
//! | `l.accept()`, `l.close()`, `l.address`, `l.last_accepted` | `accept()`, `accept_timeout(t)`, `close()`, `address()`, `last_accepted()` |
//! | `connection.Client(address, authkey=k)` | [`connection::Client::connect`]`(address)`, `Client::builder().authkey(k).connect(address)` |
//! | `authkey=None` on a `Listener`/`Client` (no handshake) | `.no_authentication()` (our default is the process's key, never none) |
//! | `('host', port)`, `'/path'`, `'\0name'` addresses | `("host", port)`, `"host:port"`, `"/path"`, `"\0name"` ([`connection::Address`]) |
//! | `AuthenticationError` | [`ConnectionError::Authentication`] ([`connection::AuthenticationError`]) |
//! | `conn.send(obj)` / `conn.recv()` with a Python peer (pickle) | `send_pickle(&v)` / `recv_pickle::<T>()` (feature `pickle`) |
//! | `Manager()`, `with Manager() as m:` | [`managers::Manager::start`]`()` (shut down on drop) |
//! | `m.dict()`, `m.list()`, `m.Namespace()`, `m.Value(t, v)` | `dict::<K, V>()`, `list::<T>()`, `namespace()`, `value(v)` |
//! | `m.Queue(n)`, `m.Lock()`, `m.Event()` | `queue::<T>(n)`, `lock()`, `event()` |
//! | `d[k] = v`, `d[k]`, `del d[k]`, `k in d`, `d.update(pairs)` | `set(k, &v)`, `get(k)`, `remove(k)`, `contains_key(k)`, `set_many(pairs)` |
//! | `d[k].append(x)` (silently lost in Python) | `d.update(k, \|v\| v.push(x))` (never lost) |
//! | `BaseManager.register('T', T)`, `m.T(...)` | [`ManagerBuilder::register`](managers::ManagerBuilder::register)`::<T>()` + [`managers::Shared`], `m.create(value)` |
//! | `BaseManager(address, authkey).get_server().serve_forever()` | `Manager::builder().address(a).authkey(k).get_server()?.serve_forever()` |
//! | `BaseManager(address, authkey).connect()`, `m.shutdown()` | `Manager::builder().address(a).authkey(k).connect()`, `shutdown()` |
//! | `await loop.run_in_executor(ProcessPoolExecutor(), f, x)` | `pool.apply_async(f, x).await` |
//! | `asyncio.gather(*(loop.run_in_executor(ex, f, x) for x in xs))` | `pool.map_async(f, xs).await`, or the `AsyncResult`s in a `FuturesUnordered` |
//! | `pool.map(f, numpy_array)` (pickled both ways) | `pool.map_pod(f, xs)` (plain bytes, no encoding) |
//! | `if __name__ == "__main__":` | [`init()`](init) first in `main` (optional on Linux) |

#![deny(unsafe_code)]
#![warn(missing_docs)]

mod bytes;
pub mod connection;
pub mod context;
mod error;
#[doc(hidden)]
pub mod fuzz;
pub mod handle;
mod lifecycle;
pub mod managers;
pub mod pool;
pub mod process;
pub mod queue;
#[allow(dead_code)]
mod region;
pub mod shared_memory;
pub mod sync;
mod sys;
mod task;
mod wire;

pub use bytes::Bytes;
pub use connection::{Connection, ConnectionError, Pipe};
pub use context::{
    get_all_start_methods, get_context, get_start_method, init, set_start_method, Context,
    ContextError, StartMethod,
};
pub use error::{Error, ProcessError};
pub use pool::{AsyncResult, Pool, PoolError, PoolErrorKind};
pub use process::{
    active_children, cpu_count, current_process, parent_process, ActiveChild, Builder,
    CurrentProcess, ParentProcess, Process,
};
pub use queue::{GetError, JoinableQueue, PutError, Queue, SimpleQueue, TaskDoneError};
pub use shared_memory::{
    Array, ArrayGuard, AtomicArray, AtomicValue, Pod, RawArray, RawValue, SharedMemory, Value,
    ValueGuard, Zeroable,
};
pub use sync::{
    Barrier, BarrierError, BoundedSemaphore, Condition, Event, Lock, OwnerDied, RLock, Semaphore,
};
pub use task::Run;
pub use wire::Dynamic;

/// Marks `main` so that it calls [`init`] first: `#[multiprocess::main] fn main() { ... }`.
///
/// # Examples
/// ```
/// #[multiprocess::main]
/// fn main() {
///     println!("{}", multiprocess::current_process().name());
/// }
/// ```
pub use multiprocess_macros::main;

/// The README's examples, compiled and run as doctests, so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExamples;

/// Runs a future to completion on this thread (for the docs' examples, which need an executor
/// and must not depend on one; not part of the API).
#[doc(hidden)]
pub fn __block_on<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::sync::Arc::new(Unpark(std::thread::current())).into();
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}
