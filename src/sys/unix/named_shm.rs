//! Named shared memory: files in `/dev/shm` (what `shm_open(3)` does, without libc's wrapper).
//!
//! Every access goes through a descriptor of the directory (`openat`, `unlinkat`), with names
//! that the caller has checked to be one path component; no path is ever joined, no symbolic
//! link is ever followed, and every descriptor is close-on-exec. `/dev/shm` is writable by
//! every user of the machine, so the files the crate reads there (ledgers) are trusted only
//! when they are regular files owned by this process's user, and are read up to a bound.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::OnceLock;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

/// Where named blocks live.
pub(crate) const SHM_DIR: &str = "/dev/shm";

/// The directory, opened once per process image (a forked child shares it, which is fine:
/// it is only ever a base for `*at` calls).
fn dir() -> io::Result<BorrowedFd<'static>> {
    static DIR: OnceLock<OwnedFd> = OnceLock::new();
    if let Some(fd) = DIR.get() {
        return Ok(fd.as_fd());
    }
    let fd = super::retry(|| {
        rustix::fs::open(
            SHM_DIR,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
    })?;
    // Another thread may have won; its descriptor is kept and ours is closed.
    let _ = DIR.set(fd);
    Ok(DIR.get().expect("set above").as_fd())
}

/// Creates the block `name` of `len` bytes (zero-filled); fails with `AlreadyExists` when the
/// name is taken.
pub(crate) fn create(name: &str, len: usize) -> io::Result<OwnedFd> {
    let fd = create_file(name)?;
    if let Err(e) = rustix::fs::ftruncate(&fd, len as u64) {
        let _ = unlink(name);
        return Err(e.into());
    }
    Ok(fd)
}

/// Creates the empty file `name`, mode 0600, failing if anything (a file, a link) has the
/// name already.
fn create_file(name: &str) -> io::Result<OwnedFd> {
    let dir = dir()?;
    super::retry(|| {
        rustix::fs::openat(
            dir,
            name,
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(0o600),
        )
    })
}

/// Opens the existing block `name`.
pub(crate) fn open(name: &str) -> io::Result<OwnedFd> {
    let dir = dir()?;
    super::retry(|| {
        rustix::fs::openat(
            dir,
            name,
            OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        )
    })
}

/// Removes the name `name` from the directory (mappings and descriptors stay valid). A
/// symbolic link of that name is removed itself, never followed.
pub(crate) fn unlink(name: &str) -> io::Result<()> {
    let dir = dir()?;
    Ok(rustix::fs::unlinkat(dir, name, AtFlags::empty())?)
}

/// The names of every entry of the directory.
pub(crate) fn names() -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(SHM_DIR)? {
        if let Ok(name) = entry?.file_name().into_string() {
            out.push(name);
        }
    }
    Ok(out)
}

/// A ledger larger than this is not one of ours (one holds at most a few thousand names).
pub(crate) const LEDGER_MAX: u64 = 1 << 20;

/// The contents of the file `name`, if it can be trusted as a ledger: a regular file (not a
/// link, a FIFO or a device: opened with `O_NOFOLLOW | O_NONBLOCK`, then `fstat`), owned by
/// this process's effective user, at most [`LEDGER_MAX`] bytes. `Ok(None)` for a file that
/// is not to be trusted.
pub(crate) fn read_trusted(name: &str) -> io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let dir = dir()?;
    let fd = match super::retry(|| {
        rustix::fs::openat(
            dir,
            name,
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK,
            Mode::empty(),
        )
    }) {
        Ok(fd) => fd,
        // A symbolic link (ELOOP with O_NOFOLLOW) or a name gone meanwhile.
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(None),
        Err(e) => return Err(e),
    };
    let st = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile
        || st.st_uid != rustix::process::geteuid().as_raw()
        || st.st_size as u64 > LEDGER_MAX
    {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    std::fs::File::from(fd)
        .take(LEDGER_MAX + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > LEDGER_MAX {
        return Ok(None);
    }
    Ok(Some(bytes))
}

/// A ledger file this process made: created exclusively (so a file or link planted under its
/// name beforehand is an error, never written through), mode 0600, and rewritten in place
/// through its own descriptor.
#[derive(Debug)]
pub(crate) struct LedgerFile {
    fd: OwnedFd,
}

impl LedgerFile {
    /// Creates the ledger `name`.
    pub(crate) fn create(name: &str) -> io::Result<LedgerFile> {
        Ok(LedgerFile {
            fd: create_file(name)?,
        })
    }

    /// Replaces the contents with `text`.
    pub(crate) fn write(&self, text: &str) -> io::Result<()> {
        rustix::fs::ftruncate(&self.fd, 0)?;
        let mut done = 0;
        while done < text.len() {
            let n = super::retry(|| {
                rustix::io::pwrite(&self.fd, &text.as_bytes()[done..], done as u64)
            })?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "the shared-memory ledger could not be written",
                ));
            }
            done += n;
        }
        Ok(())
    }
}
