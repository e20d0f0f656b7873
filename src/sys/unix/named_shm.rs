//! Named shared memory: files in `/dev/shm` (what `shm_open(3)` does, without libc's wrapper:
//! an `open` in that directory, close-on-exec, never following a symbolic link).

use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use rustix::fs::{Mode, OFlags};

/// Where named blocks live.
pub(crate) const SHM_DIR: &str = "/dev/shm";

fn path(name: &str) -> PathBuf {
    PathBuf::from(SHM_DIR).join(name)
}

/// Creates the block `name` of `len` bytes (zero-filled); fails with `AlreadyExists` when the
/// name is taken.
pub(crate) fn create(name: &str, len: usize) -> io::Result<OwnedFd> {
    let fd = super::retry(|| {
        rustix::fs::open(
            path(name),
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(0o600),
        )
    })?;
    if let Err(e) = rustix::fs::ftruncate(&fd, len as u64) {
        let _ = unlink(name);
        return Err(e.into());
    }
    Ok(fd)
}

/// Opens the existing block `name`.
pub(crate) fn open(name: &str) -> io::Result<OwnedFd> {
    super::retry(|| {
        rustix::fs::open(
            path(name),
            OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        )
    })
}

/// Removes the name `name` (mappings and descriptors stay valid).
pub(crate) fn unlink(name: &str) -> io::Result<()> {
    Ok(rustix::fs::unlink(path(name))?)
}

/// The names of every block.
pub(crate) fn names() -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(SHM_DIR)? {
        if let Ok(name) = entry?.file_name().into_string() {
            out.push(name);
        }
    }
    Ok(out)
}

/// Reads the small text file `name` in the directory.
pub(crate) fn read_text(name: &str) -> io::Result<String> {
    std::fs::read_to_string(path(name))
}

/// Writes the small text file `name` in the directory (mode 0600), replacing its contents.
pub(crate) fn write_text(name: &str, text: &str) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path(name))?;
    f.write_all(text.as_bytes())
}
