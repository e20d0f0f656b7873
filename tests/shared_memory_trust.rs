//! `/dev/shm` is writable by every user, so the ledgers that `remove_orphans` (and every
//! `SharedMemory::create`) reads there are input from strangers. A forged ledger (absolute
//! names, `../` names, a symbolic link, a FIFO, another user's file) must never make the
//! crate remove a file outside its own names; names with control characters are refused.
//! Each forged ledger names a pid that cannot exist, so it counts as an orphan's.

mod common;
use common::*;
use multiprocess::shared_memory::remove_orphans;
use multiprocess::SharedMemory;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

const SHM: &str = "/dev/shm";

/// A pid above Linux's largest pid_max (2^22), so never alive.
fn dead_ledger(tag: u32) -> String {
    format!("multiprocess-ledger.{}.1", 4_000_000_000u32 + tag)
}

/// A file that must survive, removed at drop.
struct Victim(PathBuf);

impl Victim {
    fn new(path: PathBuf) -> Victim {
        std::fs::write(&path, b"precious").unwrap();
        Victim(path)
    }
    fn alive(&self) -> bool {
        std::fs::symlink_metadata(&self.0).is_ok()
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A forged ledger, removed at drop.
struct Forged(PathBuf);

impl Drop for Forged {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Makes the ledger-named entry `ledger` in /dev/shm with `make` under a staging name first,
/// then renames it into place, so another test's concurrent `remove_orphans` never sees it
/// half set up (as a root-owned regular file before its chown, say).
fn plant(ledger: &str, make: impl FnOnce(&Path)) -> Forged {
    let staging = Path::new(SHM).join(format!("mp-trust-staging-{ledger}"));
    let _ = std::fs::remove_file(&staging);
    make(&staging);
    let dest = Path::new(SHM).join(ledger);
    std::fs::rename(&staging, &dest).unwrap();
    Forged(dest)
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mp-trust-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn a_forged_ledger_cannot_reach_outside_dev_shm() {
    deadline(60, || {
        let dir = tmpdir("paths");
        let abs = Victim::new(dir.join("absolute"));
        let rel = Victim::new(dir.join("relative"));
        let depth = "../".repeat(8);
        let rel_name = format!("{depth}{}", rel.0.display());
        // A name the crate could have made, listed by a dead creator: removed (the control
        // that shows the ledger is read at all).
        let orphan =
            Victim::new(Path::new(SHM).join(format!("mp-trust-orphan-{}", std::process::id())));
        let text = format!(
            "{}\n{rel_name}\n/{}\n..\n.\n{}\n",
            abs.0.display(),
            rel.0.display(),
            orphan.0.file_name().unwrap().to_str().unwrap()
        );
        let ledger = plant(&dead_ledger(1), |p| std::fs::write(p, &text).unwrap());
        remove_orphans().unwrap();
        assert!(
            abs.alive(),
            "an absolute name in a ledger removed {:?}",
            abs.0
        );
        assert!(rel.alive(), "a ../ name in a ledger removed {:?}", rel.0);
        assert!(!orphan.alive(), "the orphan's own name was not removed");
        assert!(!ledger.0.exists(), "the orphan's ledger was not removed");
        // SharedMemory::create runs the same clean-up.
        let text = format!("{}\n{rel_name}\n", abs.0.display());
        let _ledger = plant(&dead_ledger(2), |p| std::fs::write(p, &text).unwrap());
        let block = SharedMemory::create_unique(64).unwrap();
        drop(block);
        assert!(
            abs.alive() && rel.alive(),
            "create followed a forged ledger"
        );
        let _ = std::fs::remove_dir_all(&dir);
    });
}

#[test]
fn a_ledger_that_is_a_link_a_fifo_or_another_users_is_not_trusted() {
    deadline(60, || {
        let dir = tmpdir("kinds");
        let pid = std::process::id();
        let v1 = Victim::new(Path::new(SHM).join(format!("mp-trust-v1-{pid}")));
        let v2 = Victim::new(Path::new(SHM).join(format!("mp-trust-v2-{pid}")));
        let v3 = Victim::new(Path::new(SHM).join(format!("mp-trust-v3-{pid}")));
        let name = |v: &Victim| v.0.file_name().unwrap().to_str().unwrap().to_string();

        // A symbolic link named like a ledger, to a text that lists v1.
        let text = dir.join("listing");
        std::fs::write(&text, name(&v1)).unwrap();
        let link = plant(&dead_ledger(3), |p| {
            std::os::unix::fs::symlink(&text, p).unwrap()
        });

        // A FIFO named like a ledger: opening it for reading must not block.
        let _fifo = plant(&dead_ledger(4), |p| {
            let ok = std::process::Command::new("mkfifo")
                .arg(p)
                .status()
                .unwrap()
                .success();
            assert!(ok, "mkfifo");
        });

        // Another user's ledger listing v2 (the tests run as root, which can chown).
        let mut chowned = false;
        let _other = plant(&dead_ledger(5), |p| {
            std::fs::write(p, name(&v2)).unwrap();
            chowned = std::process::Command::new("chown")
                .args(["65534:65534"])
                .arg(p)
                .status()
                .is_ok_and(|s| s.success());
            if !chowned {
                // Not root: an unowned ledger cannot be made; make it harmless instead.
                std::fs::write(p, "").unwrap();
            }
        });

        // A ledger larger than any the crate writes, listing v3 first.
        let mut big = name(&v3).into_bytes();
        big.resize(2 << 20, b'\n');
        let _huge = plant(&dead_ledger(6), |p| std::fs::write(p, &big).unwrap());

        remove_orphans().unwrap();
        assert!(v1.alive(), "a symbolic-link ledger was followed");
        assert!(
            link.0.symlink_metadata().is_ok(),
            "the link itself is not ours either"
        );
        if chowned {
            assert!(v2.alive(), "another user's ledger was trusted");
        } else {
            eprintln!("note: chown failed (not root?); the other-user case was not checked");
        }
        assert!(v3.alive(), "an over-long ledger was trusted");
        let _ = std::fs::remove_dir_all(&dir);
    });
}

#[test]
fn names_with_control_characters_are_refused() {
    deadline(30, || {
        for bad in ["a\nb", "tab\there", "nul\0x", "esc\x1b[1m", "del\x7f"] {
            let e = SharedMemory::create(bad, 64).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "create({bad:?}): {e}");
            let e = SharedMemory::open(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "open({bad:?}): {e}");
        }
    });
}

#[test]
fn a_file_planted_under_this_process_ledger_name_is_not_written_through() {
    // A link planted in advance where this process's ledger will be (its pid and start time
    // are public) must make create fail, not write the ledger through the link. Run in a
    // child so that the ledger name is fresh.
    fn plant_then_create(target: String) -> String {
        let me = std::fs::read_to_string("/proc/self/stat").unwrap();
        let after = me.rsplit_once(')').unwrap().1;
        let start: u64 = after.split_whitespace().nth(19).unwrap().parse().unwrap();
        let ledger = format!(
            "{SHM}/multiprocess-ledger.{}.{}",
            std::process::id(),
            start as u32
        );
        std::os::unix::fs::symlink(&target, &ledger).unwrap();
        let r = SharedMemory::create_unique(64);
        let _ = std::fs::remove_file(&ledger);
        match r {
            Ok(_) => "created".into(),
            Err(e) => format!("refused: {e}"),
        }
    }
    deadline(60, || {
        let dir = tmpdir("plant");
        for m in METHODS {
            let target = dir.join(format!("target-{m}"));
            std::fs::write(&target, b"precious").unwrap();
            let mut p = multiprocess::Process::builder()
                .start_method(m)
                .start(plant_then_create, target.display().to_string())
                .unwrap();
            let out = p.join_result().unwrap();
            assert!(out.starts_with("refused"), "{m}: {out}");
            assert_eq!(
                std::fs::read(&target).unwrap(),
                b"precious",
                "{m}: written through"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// In a child: tries to shrink the block it was given; returns the error number (0: shrank).
fn try_shrink(block: SharedMemory) -> i32 {
    use std::os::fd::{AsFd, AsRawFd};
    // SAFETY: ftruncate on a descriptor the block owns; the mapping stays valid either way
    // for this test's purpose (it is not touched afterwards).
    let r = unsafe { libc::ftruncate(block.as_fd().as_raw_fd(), 0) };
    if r == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    }
}

#[test]
fn a_peer_cannot_shrink_an_anonymous_block() {
    deadline(60, || {
        for m in METHODS {
            let block = SharedMemory::new(1 << 16).unwrap();
            let mut p = multiprocess::Process::builder()
                .start_method(m)
                .start(try_shrink, block.clone())
                .unwrap();
            let errno = p.join_result().unwrap();
            assert_eq!(
                errno,
                libc::EPERM,
                "{m}: the peer's ftruncate was not refused"
            );
            // The block is whole: its last byte is still there.
            block.write((1 << 16) - 1, &[7]).unwrap();
            let mut b = [0u8];
            block.read((1 << 16) - 1, &mut b).unwrap();
            assert_eq!(b, [7], "{m}");
        }
    });
}

#[test]
fn an_unsealed_memfd_is_not_accepted_as_a_block() {
    use multiprocess::handle::SharedFd;
    use std::os::fd::{FromRawFd, OwnedFd};
    deadline(60, || {
        // A peer sends a plain memfd (no seals) where a block is expected.
        // SAFETY: memfd_create with a valid C string; the result is owned below.
        let raw = unsafe { libc::memfd_create(c"forged".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(raw >= 0);
        // SAFETY: a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: as above, on the descriptor just made.
        assert_eq!(unsafe { libc::ftruncate(raw, 4096) }, 0);
        let (a, b) = multiprocess::Pipe::new().unwrap();
        a.send(&(None::<String>, SharedFd::from(fd))).unwrap();
        // An error, never a mapping of a file the peer can truncate. (The wire format keeps no
        // custom message yet, so the error says only that the message did not decode.)
        let e = b.recv::<SharedMemory>().unwrap_err();
        assert!(e.to_string().contains("SharedMemory"), "{e}");
    });
}
