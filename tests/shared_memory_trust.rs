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
        let ledger = Forged(Path::new(SHM).join(dead_ledger(1)));
        std::fs::write(
            &ledger.0,
            format!(
                "{}\n{rel_name}\n/{}\n..\n.\n{}\n",
                abs.0.display(),
                rel.0.display(),
                orphan.0.file_name().unwrap().to_str().unwrap()
            ),
        )
        .unwrap();
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
        let ledger = Forged(Path::new(SHM).join(dead_ledger(2)));
        std::fs::write(&ledger.0, format!("{}\n{rel_name}\n", abs.0.display())).unwrap();
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
        let link = Forged(Path::new(SHM).join(dead_ledger(3)));
        std::os::unix::fs::symlink(&text, &link.0).unwrap();

        // A FIFO named like a ledger: opening it for reading must not block.
        let fifo = Forged(Path::new(SHM).join(dead_ledger(4)));
        let ok = std::process::Command::new("mkfifo")
            .arg(&fifo.0)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mkfifo");

        // Another user's ledger listing v2 (the tests run as root, which can chown).
        let other = Forged(Path::new(SHM).join(dead_ledger(5)));
        std::fs::write(&other.0, name(&v2)).unwrap();
        let chowned = std::process::Command::new("chown")
            .args(["65534:65534"])
            .arg(&other.0)
            .status()
            .is_ok_and(|s| s.success());

        // A ledger larger than any the crate writes, listing v3 first.
        let huge = Forged(Path::new(SHM).join(dead_ledger(6)));
        let mut big = name(&v3).into_bytes();
        big.resize(2 << 20, b'\n');
        std::fs::write(&huge.0, big).unwrap();

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
