//! Managers: shared objects in a server process, reached through proxies from children, pool
//! tasks and other programs; shutdown, crashes and hostile clients.

mod common;
use common::*;
use multiprocess::connection::{Address, Client};
use multiprocess::managers::{
    DictProxy, EventProxy, ListProxy, LockProxy, Manager, ManagerError, QueueProxy, Shared,
    ValueProxy,
};
use multiprocess::{Pipe, Process};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

fn start(m: StartMethod) -> Manager {
    Manager::builder()
        .start_method(m)
        .start()
        .unwrap_or_else(|e| panic!("{m}: {e}"))
}

#[test]
fn every_shared_type() {
    deadline(60, || {
        let manager = Manager::start().unwrap();
        let d = manager.dict::<String, i64>().unwrap();
        d.set("a", &1).unwrap();
        d.set("b", &2).unwrap();
        d.set("a", &3).unwrap();
        assert_eq!(d.get("a").unwrap(), Some(3));
        assert_eq!(d.get("zz").unwrap(), None);
        assert_eq!(d.keys().unwrap(), ["a", "b"], "insertion order");
        assert_eq!(d.items().unwrap(), [("a".into(), 3), ("b".into(), 2)]);
        assert!(d.contains_key("b").unwrap());
        assert_eq!(d.remove("b").unwrap(), Some(2));
        assert_eq!(d.setdefault("c", &9).unwrap(), 9);
        assert_eq!(d.setdefault("c", &10).unwrap(), 9);
        assert_eq!(d.len().unwrap(), 2);
        d.set_many((0..100).map(|i| (format!("k{i}"), i))).unwrap();
        let got = d.get_many((0..101).map(|i| format!("k{i}"))).unwrap();
        assert_eq!(got[42], Some(42));
        assert_eq!(got[100], None);
        d.clear().unwrap();
        assert!(d.is_empty().unwrap());

        let l = manager.list::<String>().unwrap();
        l.append(&"x".into()).unwrap();
        l.extend(["y".to_string(), "z".to_string()]).unwrap();
        assert_eq!(l.get(-1).unwrap(), "z");
        l.set(0, &"X".into()).unwrap();
        l.insert(1, &"w".into()).unwrap();
        assert_eq!(l.to_vec().unwrap(), ["X", "w", "y", "z"]);
        assert_eq!(l.pop().unwrap(), "z");
        assert_eq!(l.pop_at(0).unwrap(), "X");
        assert!(matches!(l.get(5), Err(ManagerError::Index(_))));
        assert_eq!(l.update(0, |s| s.push('!')).unwrap(), "w!");
        assert_eq!(l.len().unwrap(), 2);

        let ns = manager.namespace().unwrap();
        ns.set("n", &5u8).unwrap();
        assert_eq!(ns.get::<u8>("n").unwrap(), 5);
        assert!(matches!(
            ns.get::<u8>("m"),
            Err(ManagerError::NoAttribute(_))
        ));
        assert_eq!(ns.update::<u8>("n", |n| *n += 1).unwrap(), 6);
        assert!(ns.remove("n").unwrap());
        assert!(ns.names().unwrap().is_empty());

        let v = manager.value(1.5f64).unwrap();
        v.set(&2.5).unwrap();
        assert_eq!(v.update(|x| *x *= 2.0).unwrap(), 5.0);
        assert_eq!(v.get().unwrap(), 5.0);

        let q = manager.queue::<(u32, String)>(2).unwrap();
        q.put(&(1, "a".into())).unwrap();
        q.put_nowait(&(2, "b".into())).unwrap();
        assert!(q.is_full().unwrap());
        assert!(matches!(
            q.put_nowait(&(3, "c".into())),
            Err(ManagerError::Full)
        ));
        assert!(matches!(
            q.put_timeout(&(3, "c".into()), Duration::from_millis(50)),
            Err(ManagerError::Full)
        ));
        assert_eq!(q.qsize().unwrap(), 2);
        assert_eq!(q.get().unwrap().0, 1);
        assert_eq!(q.get_nowait().unwrap().0, 2);
        assert!(matches!(q.get_nowait(), Err(ManagerError::Empty)));
        let t0 = Instant::now();
        assert!(matches!(
            q.get_timeout(Duration::from_millis(100)),
            Err(ManagerError::Empty)
        ));
        assert!(t0.elapsed() >= Duration::from_millis(100));

        let lock = manager.lock().unwrap();
        {
            let _g = lock.lock().unwrap();
            assert!(lock.locked().unwrap());
            assert!(!lock.acquire_timeout(Duration::from_millis(20)).unwrap());
        }
        assert!(!lock.locked().unwrap());
        assert!(matches!(lock.release(), Err(ManagerError::NotLocked)));

        let e = manager.event().unwrap();
        assert!(!e.wait_timeout(Duration::from_millis(20)).unwrap());
        e.set().unwrap();
        assert!(e.is_set().unwrap());
        e.wait().unwrap();
        e.clear().unwrap();
        assert!(!e.is_set().unwrap());
        manager.shutdown().unwrap();
    });
}

fn add_many((d, who): (DictProxy<String, Vec<u32>>, u32)) {
    for i in 0..50 {
        d.update("log", |v| v.push(who * 1000 + i)).unwrap();
    }
}

fn bump(v: ValueProxy<u64>) {
    for _ in 0..50 {
        v.update(|x| *x += 1).unwrap();
    }
}

#[test]
fn proxies_travel_and_updates_are_never_lost() {
    deadline(180, || {
        for m in METHODS {
            let manager = start(m);
            let d = manager.dict::<String, Vec<u32>>().unwrap();
            let v = manager.value(0u64).unwrap();
            let mut ps: Vec<Process> = (0..3)
                .map(|w| {
                    Process::builder()
                        .start_method(m)
                        .target(add_many, (d.clone(), w))
                })
                .collect();
            ps.extend((0..2).map(|_| Process::builder().start_method(m).target(bump, v.clone())));
            for p in &mut ps {
                p.start().unwrap();
            }
            for p in &mut ps {
                assert!(p.join_timeout(Duration::from_secs(60)).unwrap(), "{m}");
                assert_eq!(p.exitcode(), Some(0), "{m}");
            }
            let log = d.get("log").unwrap().unwrap();
            assert_eq!(log.len(), 150, "{m}: an update was lost");
            assert_eq!(v.get().unwrap(), 100, "{m}");
            // A proxy through a pipe.
            let (a, b) = Pipe::new().unwrap();
            a.send(&d).unwrap();
            let d2: DictProxy<String, Vec<u32>> = b.recv().unwrap();
            assert_eq!(d2.get("log").unwrap().unwrap().len(), 150);
            manager.shutdown().unwrap();
        }
    });
}

fn task_square(args: (ListProxy<u64>, u64)) -> u64 {
    args.0.append(&(args.1 * args.1)).unwrap();
    args.1
}

#[test]
fn proxies_in_pool_tasks() {
    deadline(60, || {
        let manager = Manager::start().unwrap();
        let l = manager.list::<u64>().unwrap();
        let pool = pool(StartMethod::ForkServer, 2);
        let out = pool
            .map(task_square, (0..20).map(|i| (l.clone(), i)))
            .unwrap();
        assert_eq!(out.len(), 20);
        let mut got = l.to_vec().unwrap();
        got.sort();
        assert_eq!(got, (0..20).map(|i| i * i).collect::<Vec<u64>>());
    });
}

#[derive(Serialize, Deserialize)]
struct Account {
    balance: i64,
}

#[derive(Serialize, Deserialize)]
enum AccountOp {
    Deposit(i64),
    Withdraw(i64),
    Balance,
    Explode,
}

impl Shared for Account {
    type Request = AccountOp;
    type Response = Result<i64, String>;
    fn handle(&mut self, op: AccountOp) -> Result<i64, String> {
        match op {
            AccountOp::Deposit(n) => self.balance += n,
            AccountOp::Withdraw(n) if n > self.balance => return Err("insufficient funds".into()),
            AccountOp::Withdraw(n) => self.balance -= n,
            AccountOp::Balance => {}
            AccountOp::Explode => panic!("the handler blew up"),
        }
        Ok(self.balance)
    }
}

#[derive(Serialize, Deserialize)]
struct NotRegistered;

impl Shared for NotRegistered {
    type Request = ();
    type Response = ();
    fn handle(&mut self, _: ()) {}
}

fn deposit(p: multiprocess::managers::Proxy<Account>) {
    for _ in 0..10 {
        p.call(AccountOp::Deposit(1)).unwrap().unwrap();
    }
}

#[test]
fn registered_types() {
    deadline(90, || {
        for m in METHODS {
            let manager = Manager::builder()
                .start_method(m)
                .register::<Account>()
                .start()
                .unwrap();
            let acct = manager.create(Account { balance: 10 }).unwrap();
            assert_eq!(acct.call(AccountOp::Deposit(5)).unwrap(), Ok(15));
            assert_eq!(
                acct.call(AccountOp::Withdraw(100)).unwrap(),
                Err("insufficient funds".to_string())
            );
            let e = acct.call(AccountOp::Explode).unwrap_err();
            assert!(e.to_string().contains("the handler blew up"), "{e}");
            // The manager (and the object) go on.
            assert_eq!(acct.call(AccountOp::Balance).unwrap(), Ok(15));
            let mut p = Process::builder()
                .start_method(m)
                .target(deposit, acct.clone());
            p.start().unwrap();
            p.join_timeout(Duration::from_secs(30)).unwrap();
            assert_eq!(p.exitcode(), Some(0));
            assert_eq!(acct.call(AccountOp::Balance).unwrap(), Ok(25));
            let e = manager.create(NotRegistered).unwrap_err();
            assert!(e.to_string().contains("is registered"), "{e}");
        }
    });
}

/// A manager served from this process on TCP, reached by address and key (as from another
/// machine).
#[test]
fn serve_forever_and_connect_over_tcp() {
    deadline(60, || {
        let server = Manager::builder()
            .address("127.0.0.1:0")
            .authkey(b"remote key")
            .register::<Account>()
            .get_server()
            .unwrap();
        let Address::Tcp(at) = server.address().clone() else {
            unreachable!()
        };
        let server = std::sync::Arc::new(server);
        let s2 = server.clone();
        let serving = std::thread::spawn(move || s2.serve_forever());

        let remote = Manager::builder()
            .address(at)
            .authkey(b"remote key")
            .connect()
            .unwrap();
        let q = remote.queue::<String>(0).unwrap();
        q.put(&"across the network".into()).unwrap();
        let acct = remote.create(Account { balance: 1 }).unwrap();
        assert_eq!(acct.call(AccountOp::Deposit(1)).unwrap(), Ok(2));
        // A second client sees the same objects.
        let other = Manager::builder()
            .address(at)
            .authkey(b"remote key")
            .connect()
            .unwrap();
        let q2: QueueProxy<String> = {
            let (a, b) = Pipe::new().unwrap();
            a.send(&q).unwrap();
            b.recv().unwrap()
        };
        assert_eq!(q2.get().unwrap(), "across the network");
        drop(other);
        // A wrong key is refused.
        let e = Manager::builder()
            .address(at)
            .authkey(b"wrong")
            .connect()
            .unwrap_err();
        assert!(matches!(e, ManagerError::Connect(_)), "{e}");
        // A client asks the server to stop.
        remote.shutdown().unwrap();
        serving.join().unwrap().unwrap();
        assert!(q.qsize().unwrap_err().is_gone() || q.qsize().is_err());
    });
}

fn take_forever(q: QueueProxy<u32>) {
    let _ = q.get();
}

fn hold_lock(args: (LockProxy, multiprocess::Connection)) {
    let (lock, ready) = args;
    lock.acquire().unwrap();
    ready.send(&()).unwrap();
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn clients_killed_mid_request_leave_the_server_serving() {
    deadline(90, || {
        let manager = Manager::start().unwrap();
        let q = manager.queue::<u32>(0).unwrap();
        let mut p = Process::new(take_forever, q.clone());
        p.start().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        p.kill().unwrap();
        p.join().unwrap();
        // The killed client's pending get takes nothing: the item is there for us.
        std::thread::sleep(Duration::from_millis(300));
        q.put(&7).unwrap();
        assert_eq!(q.get_timeout(Duration::from_secs(5)).unwrap(), 7);

        // A client killed while holding a lock releases it.
        let lock = manager.lock().unwrap();
        let (r, w) = Pipe::new().unwrap();
        let mut p = Process::new(hold_lock, (lock.clone(), w));
        p.start().unwrap();
        r.recv_timeout::<()>(Duration::from_secs(20)).unwrap();
        assert!(lock.locked().unwrap());
        p.kill().unwrap();
        p.join().unwrap();
        assert!(lock.acquire_timeout(Duration::from_secs(5)).unwrap());
        lock.release().unwrap();

        // Other clients were served throughout.
        let d = manager.dict::<u8, u8>().unwrap();
        d.set(&1, &2).unwrap();
        assert_eq!(d.get(&1).unwrap(), Some(2));
    });
}

fn wait_event(e: EventProxy) -> bool {
    e.wait_timeout(Duration::from_secs(30)).is_err()
}

#[test]
fn a_killed_manager_gives_errors_not_hangs() {
    deadline(60, || {
        let manager = Manager::start().unwrap();
        let e = manager.event().unwrap();
        let d = manager.dict::<u8, u8>().unwrap();
        // A client blocked in a request when the manager dies gets an error.
        let mut p = Process::new(wait_event, e.clone());
        p.start().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let pid = manager.pid().unwrap();
        unsafe_kill(pid);
        assert!(
            p.join_timeout(Duration::from_secs(20)).unwrap(),
            "the waiter hung"
        );
        assert_eq!(p.exitcode(), Some(0));
        let err = d.get(&1).unwrap_err();
        assert!(
            err.is_gone() || matches!(err, ManagerError::Connect(_)),
            "{err:?}"
        );
        manager.shutdown().unwrap();
    });
}

fn unsafe_kill(pid: i32) {
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn shutdown_then_proxies_say_gone() {
    deadline(60, || {
        for m in METHODS {
            let manager = start(m);
            let d = manager.dict::<String, u8>().unwrap();
            d.set("k", &1).unwrap();
            let pid = manager.pid().unwrap();
            manager.shutdown().unwrap();
            manager.shutdown().unwrap();
            assert!(!exists(pid) || !is_unreaped_child(pid));
            let e = d.get("k").unwrap_err();
            assert!(
                e.is_gone() || matches!(e, ManagerError::Connect(_)),
                "{m}: {e:?}"
            );
            drop(manager);
        }
    });
}

#[test]
fn hostile_clients_do_not_stop_the_manager() {
    deadline(60, || {
        let manager = Manager::start().unwrap();
        let d = manager.dict::<u8, u8>().unwrap();
        d.set(&1, &1).unwrap();
        // Authenticated garbage: a request that does not decode.
        let conn = Client::connect(manager.address()).unwrap();
        conn.send_bytes(b"\xff\xff\xff\xffnot a request").unwrap();
        assert!(conn.recv_bytes_timeout(Duration::from_secs(5)).is_ok());
        // An oversized frame after authentication.
        conn.send_bytes(&vec![0u8; 1 << 20]).unwrap();
        drop(conn);
        // A wrong key.
        assert!(multiprocess::connection::Client::builder()
            .authkey(b"not the key")
            .connect(manager.address())
            .is_err());
        // Calls on a missing object.
        assert_eq!(d.get(&1).unwrap(), Some(1));
    });
}

fn start_manager_and_report(report: multiprocess::Connection) {
    let manager = Manager::start().unwrap();
    report
        .send(&(manager.pid().unwrap(), manager.address().clone()))
        .unwrap();
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn a_manager_dies_with_its_parent() {
    deadline(60, || {
        let (r, w) = Pipe::new().unwrap();
        let mut p = Process::new(start_manager_and_report, w);
        p.start().unwrap();
        let (manager_pid, address): (i32, Address) =
            r.recv_timeout(Duration::from_secs(20)).unwrap();
        assert!(exists(manager_pid));
        p.kill().unwrap();
        p.join().unwrap();
        assert!(
            eventually(10, || !exists(manager_pid)),
            "the manager outlived its parent"
        );
        // Nobody was left to remove its socket: the test does.
        if let Address::Unix(path) = address {
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_dir(path.parent().unwrap());
        }
    });
}

fn blocking_get(q: QueueProxy<u32>) -> u32 {
    q.get().unwrap()
}

#[test]
fn a_blocked_get_does_not_block_other_threads() {
    deadline(30, || {
        let manager = Manager::start().unwrap();
        let q = manager.queue::<u32>(0).unwrap();
        let d = manager.dict::<u8, u8>().unwrap();
        let q2 = q.clone();
        let t = std::thread::spawn(move || blocking_get(q2));
        std::thread::sleep(Duration::from_millis(100));
        for i in 0..50 {
            d.set(&i, &i).unwrap();
        }
        q.put(&9).unwrap();
        assert_eq!(t.join().unwrap(), 9);
    });
}
