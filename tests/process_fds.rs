//! Descriptors the parent left inheritable (not close-on-exec) do not reach spawn and
//! fork-server children: they hold only the standard streams and what the crate passes.
//! Under fork a child inherits everything, as in Python (documented). One test in its own
//! binary, so that the fork server starts after the inheritable descriptor exists.

mod common;
use common::*;
use std::ffi::CString;

/// The targets of this process's descriptors above the standard streams.
fn open_files(_: ()) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc/self/fd").unwrap() {
        let e = e.unwrap();
        let n: i32 = e.file_name().to_str().unwrap().parse().unwrap();
        if n > 2 {
            if let Ok(t) = std::fs::read_link(e.path()) {
                out.push(t.display().to_string());
            }
        }
    }
    out
}

#[test]
fn inheritable_descriptors_do_not_leak_into_spawn_and_forkserver_children() {
    deadline(60, || {
        let path = std::env::temp_dir().join(format!("mp-inheritable-{}", std::process::id()));
        std::fs::write(&path, b"x").unwrap();
        let c = CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: open with a valid C string, no O_CLOEXEC on purpose.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY) };
        assert!(fd > 2);
        let needle = path.display().to_string();
        for m in METHODS {
            let mut p = multiprocess::Process::builder()
                .start_method(m)
                .start(open_files, ())
                .unwrap();
            let files = p.join_result().unwrap();
            let leaked = files.contains(&needle);
            match m {
                multiprocess::StartMethod::Fork => {
                    assert!(leaked, "fork inherits everything, as in Python: {files:?}")
                }
                _ => assert!(!leaked, "{m}: the inheritable descriptor leaked: {files:?}"),
            }
        }
        // SAFETY: closing the descriptor opened above.
        unsafe { libc::close(fd) };
        let _ = std::fs::remove_file(&path);
    });
}
