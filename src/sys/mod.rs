//! Operating-system code, chosen once per platform.
//!
//! A backend provides:
//! - `socket`: stream socketpairs, framed writes with file descriptors attached (SCM_RIGHTS),
//!   reads that collect received descriptors, `poll` over several descriptors;
//! - `process`: fork, immediate exit, waitpid, pidfds (open, signal), parent-death signal,
//!   the child-side SIGCHLD descriptor of the fork server, an `atexit` hook, thread counting;
//! - `build_id`: an identity of the running executable, equal in every process that runs the
//!   same binary.
//!
//! Public modules never make syscalls themselves; they call these.

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub(crate) use unix::*;

#[cfg(not(target_os = "linux"))]
compile_error!("multiprocess supports Linux only for now; other Unixes are planned");
