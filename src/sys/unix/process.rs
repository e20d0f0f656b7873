//! Process syscalls: fork, exit, wait, pidfds, signals, the parent-death signal.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use rustix::process::{Pid, PidfdFlags};

use super::{cvt, cvt_r};

/// What `fork` returned in this process.
#[derive(Debug)]
pub(crate) enum Forked {
    /// In the parent, with the child's pid.
    Parent(i32),
    /// In the child.
    Child,
}

/// `fork(2)`.
///
/// # Safety
/// In the child, only the calling thread exists. The caller must make sure that the child only
/// runs code that is sound in that state (see the crate's notes on the `Fork` method) and that
/// it never returns into stack frames whose owners expect to run once.
pub(crate) unsafe fn fork() -> io::Result<Forked> {
    // SAFETY: the caller takes responsibility for the child, as documented above.
    let pid = cvt(unsafe { libc::fork() })?;
    Ok(if pid == 0 {
        Forked::Child
    } else {
        Forked::Parent(pid)
    })
}

/// Ends the process at once: no `atexit` handlers, no destructors (`_exit(2)`).
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is always safe to call; it does not return.
    unsafe { libc::_exit(code) }
}

/// The calling process's id.
pub(crate) fn getpid() -> i32 {
    rustix::process::getpid().as_raw_nonzero().get()
}

/// The parent's process id (0 when the parent is outside our pid namespace).
pub(crate) fn getppid() -> i32 {
    rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get())
}

/// A raw wait status, as `waitpid(2)` reports it.
pub(crate) type RawStatus = i32;

/// The exit code in Python's convention: the code given to `exit`, or minus the signal number.
pub(crate) fn exitcode_of(status: RawStatus) -> i32 {
    if libc::WIFSIGNALED(status) {
        -libc::WTERMSIG(status)
    } else {
        libc::WEXITSTATUS(status)
    }
}

/// `waitpid(pid)`; with `nohang`, `Ok(None)` while the child still runs.
pub(crate) fn waitpid(pid: i32, nohang: bool) -> io::Result<Option<RawStatus>> {
    let mut status = 0;
    let flags = if nohang { libc::WNOHANG } else { 0 };
    // SAFETY: `status` is a valid out pointer.
    let r = cvt_r(|| unsafe { libc::waitpid(pid, &mut status, flags) })?;
    Ok(if r == 0 { None } else { Some(status) })
}

/// `waitpid(-1, WNOHANG)`: one ended child of this process, if any.
pub(crate) fn wait_any_nohang() -> Option<(i32, RawStatus)> {
    let mut status = 0;
    // SAFETY: `status` is a valid out pointer.
    match cvt_r(|| unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) }) {
        Ok(pid) if pid > 0 => Some((pid, status)),
        _ => None,
    }
}

/// `kill(pid, signal)`; a process that no longer exists is not an error.
pub(crate) fn kill(pid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: plain syscall on integers.
    match cvt(unsafe { libc::kill(pid, signal) }) {
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        other => other.map(drop),
    }
}

/// A pidfd for `pid` (Linux 5.3 or later); `Ok(None)` when the process no longer exists.
pub(crate) fn pidfd_open(pid: i32) -> io::Result<Option<OwnedFd>> {
    let Some(pid) = Pid::from_raw(pid) else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "pid 0"));
    };
    match rustix::process::pidfd_open(pid, PidfdFlags::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(rustix::io::Errno::SRCH) => Ok(None),
        Err(rustix::io::Errno::NOSYS) => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this kernel has no pidfd_open (Linux 5.3 or later is needed)",
        )),
        Err(e) => Err(e.into()),
    }
}

/// Sends `signal` (a raw signal number) through a pidfd. A process that has already exited is
/// not an error.
pub(crate) fn pidfd_signal(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    // SAFETY: the raw syscall takes plain integers; a null siginfo means "as kill(2) would".
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    match cvt(r) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        Err(e) => Err(e),
    }
}

/// `SIGTERM`'s number.
pub(crate) const SIGTERM: i32 = libc::SIGTERM;
/// `SIGKILL`'s number.
pub(crate) const SIGKILL: i32 = libc::SIGKILL;

/// The parent process a daemon child dies with (0: none).
static DIE_WITH: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// The signal the kernel sends a daemon child when its parent *thread* exits
/// (`PR_SET_PDEATHSIG` is per thread): the highest real-time signal, which programs seldom
/// use. Its handler ends the child only if the parent *process* is gone.
fn parent_death_signal() -> i32 {
    libc::SIGRTMAX()
}

extern "C" fn on_parent_death(_: libc::c_int) {
    // A thread of the parent exited: the kernel moved this child to another thread of the
    // same process (same pid), or, when the last one exited, to a reaper (another pid).
    let expected = DIE_WITH.load(std::sync::atomic::Ordering::Relaxed);
    // SAFETY: getppid, getpid and kill are async-signal-safe.
    unsafe {
        if expected != 0 && libc::getppid() != expected {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// Makes this process die (SIGKILL) when the process `expected_parent` exits, whichever of
/// its threads started this one: the kernel's parent-death signal fires at each exit of the
/// thread this process hangs from, and a handler checks whether the whole parent process is
/// gone. Returns whether the parent is still `expected_parent` (it may have died before the
/// call). Async-signal-safe: usable in a forked child before it runs anything else.
pub(crate) fn die_with_parent(expected_parent: i32) -> bool {
    DIE_WITH.store(expected_parent, std::sync::atomic::Ordering::Relaxed);
    let mut act: libc::sigaction = unsafe_zeroed_sigaction();
    act.sa_sigaction = on_parent_death as *const () as usize;
    act.sa_flags = libc::SA_RESTART;
    // SAFETY: a valid sigaction with a handler that only makes async-signal-safe calls.
    let installed =
        unsafe { libc::sigaction(parent_death_signal(), &act, std::ptr::null_mut()) } == 0;
    let signal = if installed {
        parent_death_signal()
    } else {
        libc::SIGKILL
    };
    // SAFETY: prctl with PR_SET_PDEATHSIG and a signal number.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong) };
    getppid() == expected_parent
}

fn unsafe_zeroed_sigaction() -> libc::sigaction {
    // SAFETY: sigaction is a plain C struct for which all zeros is a valid value (no handler,
    // empty mask, no flags).
    unsafe { std::mem::zeroed() }
}

/// Closes every descriptor from 3 up except `keep`, so that a program about to be executed
/// holds only the standard streams and the one the crate passes. `close_range(2)` (Linux
/// 5.9+), or a loop up to the descriptor limit where it is missing. Async-signal-safe: for
/// use between fork and exec.
pub(crate) fn close_other_fds(keep: i32) {
    fn close_range(first: u32, last: u32) {
        // SAFETY: close_range takes any numbers; closing descriptors this copy of the process
        // holds, between fork and exec, affects nothing the parent owns.
        let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
        if r != 0 {
            // ENOSYS (an older kernel): close one by one, up to the limit.
            let mut lim = std::mem::MaybeUninit::<libc::rlimit>::uninit();
            // SAFETY: `lim` is valid for writes of one rlimit.
            let max = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, lim.as_mut_ptr()) } == 0 {
                // SAFETY: getrlimit succeeded, so it wrote `lim`.
                unsafe { lim.assume_init() }.rlim_cur.min(1 << 20) as u32
            } else {
                1 << 16
            };
            for fd in first..=last.min(max) {
                // SAFETY: as above.
                unsafe { libc::close(fd as i32) };
            }
        }
    }
    let keep = keep.max(0) as u32;
    if keep > 3 {
        close_range(3, keep - 1);
    }
    close_range(keep.max(2) + 1, u32::MAX);
}

/// Blocks (`block`) or unblocks SIGINT for the calling thread. The fork server blocks it, so
/// that Ctrl-C, which reaches the whole foreground process group, does not end it (Python's
/// fork server ignores SIGINT); its children unblock it once they run, and a SIGINT sent to a
/// child before then stays pending and is delivered at that moment, with its default action
/// (an ignored signal would have been lost instead).
pub(crate) fn block_sigint(block: bool) {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initializes `set`; sigaddset and pthread_sigmask read it.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigaddset(set.as_mut_ptr(), libc::SIGINT);
        let how = if block {
            libc::SIG_BLOCK
        } else {
            libc::SIG_UNBLOCK
        };
        libc::pthread_sigmask(how, set.as_ptr(), std::ptr::null_mut());
    }
}

/// The number of threads of this process that are not the crate's own (threads whose name
/// starts with `multiprocess`: a pool's result handler, a reaper), from `/proc/self/task`.
pub(crate) fn foreign_thread_count() -> Option<usize> {
    let mut n = 0;
    for entry in std::fs::read_dir("/proc/self/task").ok()? {
        let Ok(entry) = entry else { continue };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("multiprocess") {
            n += 1;
        }
    }
    Some(n)
}

/// Registers a function to run at normal process exit (`atexit(3)`).
pub(crate) fn at_exit(f: extern "C" fn()) {
    // SAFETY: `f` is a plain function that stays valid for the life of the process.
    unsafe { libc::atexit(f) };
}

/// A descriptor that becomes readable when a child of this process changes state: SIGCHLD is
/// blocked for the calling thread and read through a signalfd. For the single-threaded fork
/// server only.
#[derive(Debug)]
pub(crate) struct ChildSignals {
    fd: OwnedFd,
    old_mask: libc::sigset_t,
}

impl ChildSignals {
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: plain sigset manipulation on local values; signalfd returns a new descriptor
        // that we own.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGCHLD);
            cvt(libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old))?;
            let fd = cvt(libc::signalfd(
                -1,
                &set,
                libc::SFD_CLOEXEC | libc::SFD_NONBLOCK,
            ))?;
            Ok(ChildSignals {
                fd: OwnedFd::from_raw_fd(fd),
                old_mask: old,
            })
        }
    }

    /// Empties the signalfd after it polled readable.
    pub(crate) fn drain(&self) {
        let mut buf = [0u8; 128 * 8];
        while matches!(rustix::io::read(&self.fd, &mut buf), Ok(n) if n > 0) {}
    }

    /// Restores the signal mask that was in force before `new` (in a forked child).
    pub(crate) fn restore_mask(&self) {
        // SAFETY: `old_mask` was filled by pthread_sigmask.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old_mask, std::ptr::null_mut()) };
    }
}

impl AsFd for ChildSignals {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Lets this process's allocator keep freed memory for reuse instead of handing it back to
/// the kernel at once: large blocks come from the heap instead of fresh mappings (glibc's
/// default is a fresh mapping from 128 KiB until its adaptive threshold catches up), and up
/// to `keep` bytes at the top of the heap are not trimmed. A process that allocates and
/// frees the same large buffers over and over (a pool worker) then stops paying a page fault
/// per 4 KiB for each of them. Not glibc: does nothing.
pub(crate) fn keep_freed_memory(keep: usize) {
    #[cfg(target_env = "gnu")]
    {
        let keep = i32::try_from(keep).unwrap_or(i32::MAX);
        // SAFETY: `mallopt` only changes allocator parameters; any values are accepted (bad
        // ones are refused with a 0 return, which leaves the defaults).
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, keep);
        }
    }
    #[cfg(not(target_env = "gnu"))]
    let _ = keep;
}
