//! A tour of Python's `multiprocessing`, point by point, done with `multiprocess`.
//!
//! Run it with `cargo run --example tour`.

use std::time::{Duration, Instant};

use multiprocess::connection::{Address, Client, Listener};
use multiprocess::managers::{DictProxy, Manager};
use multiprocess::{
    Barrier, Connection, Dynamic, Lock, Pipe, Pool, Process, Queue, Run, StartMethod, Value,
};
use serde::{Deserialize, Serialize};

/// An internally tagged enum: serde asks the bytes for its tag, so it crosses in a `Dynamic`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind")]
enum Event {
    Started { pid: i32 },
    Stopped { pid: i32, code: i32 },
}

/// Answers an event with another one.
fn stop_event(event: Dynamic<Event>) -> Dynamic<Event> {
    match event.into_inner() {
        Event::Started { pid } => Dynamic(Event::Stopped { pid, code: 0 }),
        other => Dynamic(other),
    }
}

/// The pool section: a local pool, or (`--cluster`, under `mpirun`) the same code on a
/// cluster pool.
fn pool_section(pool: &Pool) -> Result<(), multiprocess::Error> {
    println!(
        "  pool.apply(square, 7) -> {}  (blocks until done)",
        pool.apply(square, 7)?
    );
    println!(
        "  pool.map(square, 1..=10) -> {:?}  (blocks, input order)",
        pool.map(square, 1..=10)?
    );
    let mut one = pool.apply_async(square, 12);
    let mut many = pool.map_async(slow_square, 0..200);
    println!("  apply_async and map_async returned at once; map_async's progress:");
    while !many.wait_timeout(Duration::from_millis(40)) {
        let (done, total) = (many.completed(), many.total());
        println!(
            "    [{:<20}] {done}/{total}",
            "#".repeat(20 * done / total.max(1))
        );
    }
    println!("  apply_async(square, 12).get() -> {}", one.get()?);
    let squares = many.get()?;
    println!(
        "  map_async(slow_square, 0..200).get() -> {} results, last {}",
        squares.len(),
        squares[199]
    );
    let reports: Queue<String> = Queue::new(0)?;
    match pool.map(report_to, (1..=4).map(|x| (reports.clone(), x))) {
        Ok(squares) => {
            let total: u64 = squares.iter().sum();
            println!(
                "  pool tasks used a Queue made by the parent (Python's pool processes cannot):"
            );
            while !reports.is_empty() {
                println!("    {}", reports.get()?);
            }
            println!("  and returned squares summing to {total}");
        }
        // A cluster pool: a Queue lives in this machine's memory.
        Err(e) => println!("  pool tasks given a Queue -> {e}"),
    }
    Ok(())
}

/// `--cluster`: the pool section on the worker ranks of an MPI job. Run it as
/// `cargo build --example tour --features mpi` then
/// `mpirun -n 3 --oversubscribe target/debug/examples/tour --cluster`.
fn cluster() -> Result<(), multiprocess::Error> {
    #[cfg(feature = "mpi")]
    {
        section("Pool on a cluster: the worker ranks of this MPI job");
        let pool = Pool::builder().mpi().build()?;
        println!(
            "  Pool::builder().mpi(): {} worker ranks, pids {:?}",
            pool.processes(),
            pool.pids()
        );
        pool_section(&pool)?;
        println!("\ncluster tour complete");
        Ok(())
    }
    #[cfg(not(feature = "mpi"))]
    {
        println!(
            "the cluster tour needs the mpi feature: cargo build --example tour --features mpi, \
             then mpirun -n 3 --oversubscribe target/debug/examples/tour --cluster"
        );
        Ok(())
    }
}

/// A target: "the function itself", taking its arguments as one value.
fn greet((who, times): (String, u32)) -> String {
    let me = multiprocess::current_process();
    println!(
        "    [child {} pid {}] hello, {who} x{times}",
        me.name(),
        me.pid()
    );
    format!("greeted {who} {times} times")
}

fn nap(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// Way 2: Python's "subclass Process and override run()".
#[derive(Serialize, Deserialize)]
struct Countdown {
    from: u32,
}

impl Run for Countdown {
    type Output = Vec<u32>;
    fn run(self) -> Vec<u32> {
        println!(
            "    [child {}] counting down from {}",
            multiprocess::current_process().name(),
            self.from
        );
        (0..=self.from).rev().collect()
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Reading {
    sensor: String,
    celsius: f64,
}

/// The child's side of the pipe: answers what the parent sends, then says goodbye.
/// Sends back every number it receives, until the parent closes its end.
fn echo_child(conn: Connection) {
    while let Ok(n) = conn.recv::<u64>() {
        if conn.send(&n).is_err() {
            break;
        }
    }
}

fn pipe_child(conn: Connection) {
    let question: String = conn.recv().unwrap();
    println!("    [child] received {question:?}");
    conn.send(&format!("answer to {question:?}")).unwrap();
    conn.send(&Reading {
        sensor: "t1".into(),
        celsius: 21.5,
    })
    .unwrap();
    let reading: Reading = conn.recv().unwrap();
    println!("    [child] received {reading:?}");
}

/// What the queue section's child puts: strings and structs alike.
#[derive(Debug, Serialize, Deserialize)]
enum Item {
    Text(String),
    Point { x: i32, y: i32 },
}

/// The child's side of the queue: it only puts.
fn queue_child(q: Queue<Item>) {
    for word in ["spam", "eggs"] {
        q.put(Item::Text(word.to_string())).unwrap();
        println!("    [child] put {word:?}");
    }
    q.put(Item::Point { x: 1, y: 2 }).unwrap();
    println!("    [child] put a Point");
}

fn square(x: u64) -> u64 {
    x * x
}

fn slow_square(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(4));
    x * x
}

/// A pool task that reports through a queue made by the parent.
fn report_to((q, x): (Queue<String>, u64)) -> u64 {
    q.put(format!("worker {} squared {x}", std::process::id()))
        .unwrap();
    x * x
}

/// Adds to a shared balance under its lock (Python: `with v.get_lock(): v.value += 1`).
fn deposit((balance, n): (Value<i64>, i64)) {
    for _ in 0..n {
        *balance.lock().unwrap() += 1;
    }
}

/// Dies while holding the lock.
fn die_holding(lock: Lock) {
    let _guard = lock.lock();
    std::process::abort();
}

fn meet(b: Barrier) -> u32 {
    b.wait().unwrap()
}

/// A client in another process: connects to the listener with the authkey it inherited,
/// asks, and prints the answer.
fn listener_client(address: Address) {
    let conn = Client::connect(&address).expect("connect");
    conn.send(&"what is 6 x 7?").expect("send");
    let answer: u32 = conn.recv().expect("recv");
    println!(
        "  [client pid {}] the listener answered {answer}",
        std::process::id()
    );
}

/// A child updating a manager's dict: the key's list grows by one entry per child.
fn log_visit(d: DictProxy<String, Vec<u32>>) {
    d.update("visits", |v| v.push(std::process::id()))
        .expect("update");
}

fn section(title: &str) {
    println!("\n== {title}");
}

fn main() -> Result<(), multiprocess::Error> {
    multiprocess::init();
    if std::env::args().any(|a| a == "--cluster") {
        return cluster();
    }

    section("Multiprocess programming");
    println!(
        "  multiprocess gives Rust Python's two central types for processes: Process and Pool"
    );
    println!(
        "  this machine has {} CPUs; this is {:?}",
        multiprocess::cpu_count(),
        multiprocess::current_process().name()
    );
    println!(
        "  default start method: {} (all: {:?})",
        multiprocess::get_start_method(),
        multiprocess::get_all_start_methods()
    );

    section("Process, way 1: Process(target, args, name)");
    let mut p = Process::builder()
        .name("greeter")
        .target(greet, ("world".to_string(), 2));
    println!(
        "  created: name={:?} pid={:?} alive={}",
        p.name(),
        p.pid(),
        p.is_alive()
    );
    p.start()?;
    println!("  p.start() -> pid {}", p.pid().unwrap_or(0));
    let value = p.join_result()?;
    println!("  p.join() -> exitcode {:?}; the target returned {value:?} (Python drops this value; we keep it)", p.exitcode());

    section("Process, way 2: subclass and override run()  (the Run trait)");
    let mut p = Process::from_run(Countdown { from: 3 });
    p.start()?;
    let steps = p.join_result()?;
    println!("  {} returned {steps:?}", p.name());

    section("Every start method runs the same target");
    for method in StartMethod::ALL {
        let t = Instant::now();
        let mut p = Process::builder()
            .start_method(method)
            .start(greet, (method.name().to_string(), 1))?;
        p.join()?;
        println!(
            "  {method:>10}: start+join in {:?}, exitcode {:?}",
            t.elapsed(),
            p.exitcode()
        );
    }

    section("Daemon: p.daemon = True before start");
    let mut d = Process::new(nap, 10_000);
    d.set_daemon(true)?;
    d.start()?;
    println!(
        "  daemon child {} started; it dies with this program, even if this program is killed",
        d.pid().unwrap_or(0)
    );
    match d.set_daemon(false) {
        Err(e) => println!("  setting daemon after start is an error: {e}"),
        Ok(()) => println!("  unexpected: daemon changed after start"),
    }

    section("join(timeout) and is_alive()");
    let mut p = Process::new(nap, 300);
    println!("  before start: is_alive() = {}", p.is_alive());
    match p.join() {
        Err(e) => println!("  join before start is an error: {e}"),
        Ok(()) => println!("  unexpected: join before start succeeded"),
    }
    p.start()?;
    println!("  after start: is_alive() = {}", p.is_alive());
    let t = Instant::now();
    let ended = p.join_timeout(Duration::from_millis(100))?;
    println!(
        "  join_timeout(100 ms) -> ended={ended} after {:?}; is_alive() = {}",
        t.elapsed(),
        p.is_alive()
    );

    section("close(): an error while the child runs");
    match p.close() {
        Err(e) => println!("  close() on a running process -> error: {e}"),
        Ok(()) => println!("  unexpected: close() succeeded on a running process"),
    }
    p.join()?;
    p.close()?;
    println!("  after join, close() -> ok; the process object is closed");

    section("terminate() and kill(): exitcode is minus the signal");
    let mut p = Process::new(nap, 60_000);
    p.start()?;
    p.terminate()?;
    p.join()?;
    println!("  terminated: exitcode {:?} (SIGTERM = 15)", p.exitcode());
    d.kill()?;
    d.join()?;
    println!(
        "  the daemon, killed: exitcode {:?} (SIGKILL = 9)",
        d.exitcode()
    );

    section("Pipe: parent_conn, child_conn = Pipe(); child_conn goes to the child through args");
    let (parent_conn, child_conn) = Pipe::new()?;
    let mut p = Process::new(pipe_child, child_conn);
    p.start()?;
    parent_conn.send(&"what is six times seven?")?;
    let answer: String = parent_conn.recv()?;
    println!("  [parent] received {answer:?}");
    let reading: Reading = parent_conn.recv()?;
    println!("  [parent] received {reading:?}  (any serde value travels)");
    parent_conn.send(&Reading {
        sensor: "t2".into(),
        celsius: -3.0,
    })?;
    p.join()?;
    match parent_conn.recv::<String>() {
        Err(e) => println!("  after the child ended, recv() -> {e}"),
        Ok(v) => println!("  unexpected message {v:?}"),
    }

    section("Pipe round trips: small messages travel through shared memory");
    let (conn, child_conn) = Pipe::new()?;
    let mut p = Process::new(echo_child, child_conn);
    p.start()?;
    let mut times = Vec::with_capacity(1000);
    for n in 0..1000u64 {
        let t = Instant::now();
        conn.send(&n)?;
        let back: u64 = conn.recv()?;
        times.push(t.elapsed());
        assert_eq!(back, n);
    }
    times.sort();
    println!(
        "  1,000 round trips of a u64 with an echoing child: median {:?}\n  (about a microsecond \
         when the two processes run on different cores; several when the scheduler put them on \
         one, where the waiting side yields the core instead of spinning; a kernel wake-up each \
         way would cost tens of microseconds)",
        times[times.len() / 2]
    );
    drop(conn);
    p.join()?;

    section("Queue: one-way communication between child and parent");
    let q: Queue<Item> = Queue::new(3)?;
    println!(
        "  q = Queue(3): maxsize {}, empty() = {}, full() = {}",
        q.maxsize(),
        q.is_empty(),
        q.is_full()
    );
    let mut p = Process::new(queue_child, q.clone());
    p.start()?;
    p.join()?;
    println!(
        "  after the child: qsize() = {}, full() = {}",
        q.qsize(),
        q.is_full()
    );
    match q.put_nowait(Item::Text("one too many".into())) {
        Err(e) => {
            let why = e.to_string();
            println!(
                "  put_nowait on a full queue -> {why}; the value comes back: {:?}",
                e.into_inner()
            );
        }
        Ok(()) => println!("  unexpected: put_nowait succeeded on a full queue"),
    }
    while !q.is_empty() {
        println!("  [parent] get() -> {:?}", q.get()?);
    }
    match q.get_nowait() {
        Err(e) => println!("  get_nowait on an empty queue -> {e}"),
        Ok(v) => println!("  unexpected: {v:?}"),
    }

    section("Pool: n processes, many tasks, results as return values");
    let pool = Pool::new(2)?;
    println!("  pool = Pool(2): worker pids {:?}", pool.pids());
    pool_section(&pool)?;
    // Python pickles every item of a map both ways; plain numbers need no encoding at all.
    let xs: Vec<u64> = (0..1_000_000).collect();
    let _ = pool.map_pod(square, xs.clone())?; // the first map of a pool makes its buffers
    let t = Instant::now();
    let by_serde = pool.map(square, xs.clone())?;
    let serde_time = t.elapsed();
    let t = Instant::now();
    let by_bytes = pool.map_pod(square, xs)?;
    let pod_time = t.elapsed();
    println!(
        "  1,000,000 squares: map {:.1} ms, map_pod {:.1} ms (plain bytes, no encoding); same values: {}",
        serde_time.as_secs_f64() * 1e3,
        pod_time.as_secs_f64() * 1e3,
        by_serde == by_bytes
    );
    drop(pool);

    section("Beyond the basics: locks and shared values");
    let balance = Value::new(0i64)?;
    let mut workers = Vec::new();
    for _ in 0..4 {
        workers.push(Process::new(deposit, (balance.clone(), 1000)));
    }
    for w in &mut workers {
        w.start()?;
    }
    for w in &mut workers {
        w.join()?;
    }
    println!(
        "  4 processes x 1000 locked increments of one shared Value -> {}",
        balance.get()
    );
    let lock = Lock::new()?;
    let mut p = Process::new(die_holding, lock.clone());
    p.start()?;
    p.join()?;
    println!(
        "  a child took the lock and died (exitcode {:?})",
        p.exitcode()
    );
    match lock.lock() {
        Ok(_guard) => println!("  the lock was free"),
        Err(died) => {
            println!(
                "  the next locker gets the lock and is told: previous holder {} died",
                died.previous_owner()
            );
            let _guard = died.into_inner();
        }
    }
    let barrier = Barrier::new(3)?;
    let mut a = Process::new(meet, barrier.clone());
    let mut b = Process::new(meet, barrier.clone());
    a.start()?;
    b.start()?;
    let mut arrivals = [barrier.wait()?, a.join_result()?, b.join_result()?];
    arrivals.sort();
    println!("  three processes met at a Barrier; arrival indices {arrivals:?}");

    section("Values: what pickle carries, serde carries");
    let (a, b) = Pipe::new()?;
    a.send(&Event::Started { pid: 42 })?;
    match b.recv::<Event>() {
        Err(e) => println!("  a #[serde(tag = \"kind\")] enum, sent plainly -> {e}"),
        Ok(v) => println!("  unexpected: {v:?}"),
    }
    let mut p = Process::new(stop_event, Dynamic(Event::Started { pid: 42 }));
    p.start()?;
    println!(
        "  wrapped in Dynamic, to a child and back -> {:?}",
        p.join_result()?.into_inner()
    );

    section("Listener and Client: processes that did not start one another");
    // Python: Listener(address, authkey) / Client(address, authkey). Any address family:
    // a Unix path, "\0abstract", "127.0.0.1:6000". The peer may be a Python process.
    let listener = Listener::new()?; // a Unix socket in a private directory
    println!("  listener at {}", listener.address());
    let mut p = Process::new(listener_client, listener.address().clone());
    p.start()?;
    let conn = listener.accept()?; // after the HMAC challenge, both ways
    let question: String = conn.recv()?;
    println!("  accepted a client that passed the authkey handshake; it asks {question:?}");
    conn.send(&42u32)?;
    p.join()?;
    let wrong = Client::builder()
        .authkey(b"not the key")
        .timeout(Duration::from_secs(5));
    let address = listener.address().clone();
    let t = std::thread::spawn(move || wrong.connect(&address));
    if let Err(e) = listener.accept() {
        println!("  a client with the wrong key, at the listener -> {e}");
    }
    if let Ok(Err(e)) = t.join() {
        println!("  ... and at the client -> {e}");
    }

    section("Managers: shared objects in a server process, reached through proxies");
    let manager = Manager::start()?; // Python: multiprocessing.Manager()
    let d = manager.dict::<String, Vec<u32>>()?;
    println!(
        "  manager process pid {:?}, listening at {}",
        manager.pid().unwrap_or_default(),
        manager.address()
    );
    let mut visitors: Vec<Process> = (0..3).map(|_| Process::new(log_visit, d.clone())).collect();
    for v in &mut visitors {
        v.start()?;
    }
    for v in &mut visitors {
        v.join()?;
    }
    // In Python, d["visits"].append(pid) changes a copy and is lost; update() is not.
    println!(
        "  3 children did d.update(\"visits\", |v| v.push(pid)) -> {} visits kept",
        d.get("visits")?.unwrap_or_default().len()
    );
    let t = Instant::now();
    for i in 0..1000u32 {
        d.set(&format!("k{i}"), &vec![i])?;
    }
    let one_by_one = t.elapsed();
    let t = Instant::now();
    d.set_many((0..1000u32).map(|i| (format!("k{i}"), vec![i])))?;
    let batched = t.elapsed();
    println!(
        "  1000 writes one request each: {:.1} us/write; in one set_many: {:.2} us/write",
        one_by_one.as_secs_f64() * 1e3,
        batched.as_secs_f64() * 1e3
    );
    manager.shutdown()?;
    match d.len() {
        Err(e) => println!("  after shutdown, a proxy says: {e}"),
        Ok(n) => println!("  unexpected: {n} entries after shutdown"),
    }

    println!("\ntour complete");
    Ok(())
}
