//! How a process of the crate comes to life and how it ends: who this process is (name,
//! identity, parent), what a freshly started child records, the reset after a fork, the
//! panic hook that names a child, and the exit handler (Python's `util._exit_function`).
//!
//! Below both `context.rs` (which starts children) and `process.rs` (which tracks them): the
//! registry holds children as [`Registered`] trait objects and the exit handler ends with a
//! finisher that `context.rs` installs (stopping the fork server), so neither upper module is
//! named here.

use std::any::Any;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use serde::{Deserialize, Serialize};

use crate::sys::process as sysproc;

/// What the exit handler needs of a started child (implemented by `process.rs`).
pub(crate) trait Registered: Send + Sync + std::fmt::Debug + 'static {
    /// Stops waiting for the child's result, and terminates it if it is a daemon.
    fn release_at_exit(&self);
    /// Waits for the child to end, reporting nothing.
    fn wait_at_exit(&self);
    /// The concrete child, for `process.rs`.
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
}

/// Runs at the end of the exit handler, after every child was waited for (the fork server's
/// stop, installed by `context.rs`).
static EXIT_FINISHER: OnceLock<fn()> = OnceLock::new();

/// Installs the exit handler's last step (once; later calls are ignored).
pub(crate) fn set_exit_finisher(finish: fn()) {
    let _ = EXIT_FINISHER.set(finish);
}

/// Who a child is, as its parent named it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ChildInfo {
    pub(crate) name: String,
    pub(crate) identity: String,
    pub(crate) daemon: bool,
    pub(crate) parent_name: String,
    /// The parent's authentication key, which a child inherits (Python's `authkey`).
    pub(crate) authkey: Vec<u8>,
}

/// The crate's per-process global state.
#[derive(Debug)]
pub(crate) struct Global {
    /// The process this state describes (a forked child inherits a copy meant for its parent).
    pub(crate) pid: i32,
    pub(crate) name: String,
    pub(crate) identity: String,
    pub(crate) daemon: bool,
    pub(crate) parent: Option<(i32, String)>,
    pub(crate) counter: u32,
    /// The started children (the registry of `process.rs`), for the exit handler and
    /// `active_children`.
    pub(crate) children: Vec<Arc<dyn Registered>>,
    pub(crate) atexit: bool,
    /// This process's authentication key (empty until first asked for in the main process).
    pub(crate) authkey: Vec<u8>,
}

static STATE: Mutex<Global> = Mutex::new(Global {
    pid: 0,
    name: String::new(),
    identity: String::new(),
    daemon: false,
    parent: None,
    counter: 0,
    children: Vec::new(),
    atexit: false,
    authkey: Vec::new(),
});

/// Locks the global state, (re)initializing it for this process if it describes another one.
pub(crate) fn lock_state() -> MutexGuard<'static, Global> {
    let mut g = STATE.lock().unwrap_or_else(|p| p.into_inner());
    let me = sysproc::getpid();
    if g.pid != me {
        if g.pid == 0 {
            g.name = "MainProcess".into();
        }
        g.pid = me;
    }
    g
}

/// This process's authentication key (Python's `current_process().authkey`): 32 random bytes
/// made on first use in the main process, inherited by every child it starts.
pub(crate) fn authkey() -> Vec<u8> {
    let mut g = lock_state();
    if g.authkey.is_empty() {
        g.authkey = random_bytes(32);
    }
    g.authkey.clone()
}

/// Replaces this process's authentication key; children started later inherit the new one.
pub(crate) fn set_authkey(key: &[u8]) {
    lock_state().authkey = key.to_vec();
}

/// `n` bytes from the kernel's random source.
pub(crate) fn random_bytes(n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match rustix::rand::getrandom(&mut out[got..], rustix::rand::GetRandomFlags::empty()) {
            Ok(k) => got += k,
            Err(rustix::io::Errno::INTR) => {}
            // getrandom(2) exists since Linux 3.17; before, the device gives the same bytes.
            Err(e) => {
                use std::io::Read;
                let read = std::fs::File::open("/dev/urandom")
                    .and_then(|mut f| f.read_exact(&mut out[got..]));
                if let Err(e2) = read {
                    panic!("no source of random bytes: getrandom: {e}, /dev/urandom: {e2}");
                }
                got = n;
            }
        }
    }
    out
}

/// In a forked child, under the lock held across the fork: the parent's children are not ours.
pub(crate) fn reset_after_fork(g: &mut Global) {
    g.pid = sysproc::getpid();
    g.counter = 0;
    g.atexit = false;
    // Dropping closes this copy's descriptors of the parent's children; nothing else runs.
    g.children.clear();
}

/// Records who this process is, in a freshly started child.
pub(crate) fn become_child(info: ChildInfo, parent_pid: i32) {
    let mut g = lock_state();
    g.pid = sysproc::getpid();
    g.name = info.name;
    g.identity = info.identity;
    g.daemon = info.daemon;
    g.parent = Some((parent_pid, info.parent_name));
    g.authkey = info.authkey;
    g.counter = 0;
    g.children.clear();
    let label = format!("{:?} (pid {})", g.name, g.pid);
    drop(g);
    name_panics(label);
}

/// The process a panic message names, in a child ("Process-1" (pid 1234)): a leaked string,
/// swapped in with one atomic store, so that a forked child never waits on a lock that
/// another thread of its parent held at the fork.
static PANIC_LABEL: std::sync::atomic::AtomicPtr<String> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());
static PANIC_HOOK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Installs (once per process image) the hook that makes a panic in a child name its process
/// first, as Python prints "Process Process-1:" above a child's traceback (the standard
/// message names only the thread, often `<unnamed>`); the previous hook (the standard one,
/// or the program's) still runs after it. In a process that is not a child it adds nothing.
/// Installing takes std's hook lock, so it happens in the parent before a fork (never in a
/// forked child of a threaded parent), or in a child made by exec or by the single-threaded
/// fork server.
pub(crate) fn ensure_panic_hook() {
    use std::sync::atomic::Ordering;
    if PANIC_HOOK.swap(true, Ordering::AcqRel) {
        return;
    }
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let label = PANIC_LABEL.load(Ordering::Acquire);
        if !label.is_null() {
            // SAFETY: a non-null label is a leaked `Box<String>`, never freed.
            #[allow(unsafe_code)]
            let label = unsafe { &*label };
            eprintln!("multiprocess: panic in process {label}:");
        }
        previous(info);
    }));
}

fn name_panics(label: String) {
    PANIC_LABEL.store(
        Box::into_raw(Box::new(label)),
        std::sync::atomic::Ordering::Release,
    );
    ensure_panic_hook();
}

/// Ends a child process after its target: joins its own children as at any normal exit,
/// flushes standard streams, and exits with `code`. A forked child ends with `_exit`, so the
/// parent's `atexit` handlers and buffers are not run twice.
pub(crate) fn exit_child(code: i32, forked: bool) -> ! {
    if forked {
        at_exit_handler();
        flush_stdio();
        sysproc::exit_now(code)
    }
    std::process::exit(code)
}

fn flush_stdio() {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
}

/// Registers the exit handler (once per process).
pub(crate) fn ensure_atexit() {
    let mut g = lock_state();
    if !g.atexit {
        g.atexit = true;
        drop(g);
        sysproc::at_exit(at_exit_handler_c);
    }
}

extern "C" fn at_exit_handler_c() {
    // Never unwind into libc.
    let _ = std::panic::catch_unwind(at_exit_handler);
}

/// At normal exit, as Python does: terminate daemon children, join the others, stop the fork
/// server. Uses no thread-locals (they are gone by now) and reads no results.
fn at_exit_handler() {
    let children = {
        let g = STATE.lock().unwrap_or_else(|p| p.into_inner());
        if g.pid != sysproc::getpid() {
            return;
        }
        g.children.clone()
    };
    for c in &children {
        c.release_at_exit();
    }
    for c in &children {
        c.wait_at_exit();
    }
    if let Some(finish) = EXIT_FINISHER.get() {
        finish();
    }
}
