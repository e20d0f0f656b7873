//! A shared-memory region that travels as a handle: the common base of queues, locks and
//! shared values.
//!
//! A `Region` is a memfd mapped read-write and shared. Serializing it sends the memfd (see
//! [`handle`](crate::handle)); deserializing maps it again, taking the length from the file
//! itself, not from the message. Anonymous memfds vanish with the last descriptor and mapping,
//! so nothing is ever left in `/dev/shm`, whoever dies.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::{fmt, io};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::handle::{self, TrackedFd};
use crate::sys::shm;

/// A shared mapping of a memfd.
pub(crate) struct Region {
    fd: TrackedFd,
    map: shm::Mapping,
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Region")
            .field("len", &self.map.len())
            .finish()
    }
}

impl Region {
    /// A new zero-filled region of `len` bytes; `name` shows in `/proc/<pid>/fd` listings.
    pub(crate) fn new(name: &str, len: usize) -> io::Result<Region> {
        let _birth = crate::handle::birth();
        let fd = shm::memfd(name, len)?;
        Region::from_fd(fd)
    }

    /// A second mapping of the same memory, through a descriptor of its own.
    pub(crate) fn try_clone(&self) -> io::Result<Region> {
        let _birth = crate::handle::birth();
        Region::from_fd(self.fd.as_fd().try_clone_to_owned()?)
    }

    /// Maps an existing memfd (its whole length), after checking that it is sealed against
    /// shrinking, so no peer can truncate it under the mapping (see [`shm::memfd`]).
    pub(crate) fn from_fd(fd: OwnedFd) -> io::Result<Region> {
        shm::check_sealed(fd.as_fd())?;
        Region::from_unsealed_fd(fd)
    }

    /// Maps a file that cannot be sealed (a named block in `/dev/shm`): a process that can
    /// open it can also truncate it, and then accesses past the new end raise SIGBUS, as with
    /// Python's `SharedMemory` (documented on [`SharedMemory`](crate::SharedMemory)).
    pub(crate) fn from_unsealed_fd(fd: OwnedFd) -> io::Result<Region> {
        let len = shm::file_len(fd.as_fd())?;
        let map = shm::Mapping::new(&fd, len)?;
        Ok(Region {
            fd: TrackedFd::new(fd),
            map,
        })
    }

    /// The first byte (page-aligned).
    #[inline]
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.map.as_ptr()
    }

    /// The length in bytes.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// The `AtomicU32` at byte `offset`.
    ///
    /// # Panics
    /// When `offset` is not 4-aligned or out of bounds (a bug in the layout code, not caller
    /// input).
    pub(crate) fn atomic_u32(&self, offset: usize) -> &AtomicU32 {
        assert!(
            offset % 4 == 0 && offset + 4 <= self.len(),
            "bad atomic offset {offset}"
        );
        // SAFETY: in bounds and aligned (checked); the region is shared memory that lives as
        // long as `self`, and is only ever accessed atomically at this offset by the layouts
        // built on it.
        #[allow(unsafe_code)]
        unsafe {
            &*(self.as_ptr().add(offset) as *const AtomicU32)
        }
    }
}

/// A type that can live in a [`Region`] at a fixed offset and be used through `&T` by every
/// process mapping it at once.
///
/// # Safety
/// Every bit pattern (all zeros included: a new region is zero-filled) must be a valid `T`, and
/// `T` may only be changed through atomics (interior mutability that is sound across
/// processes), so that any number of `&T` in any number of processes are sound.
#[allow(unsafe_code)]
pub(crate) unsafe trait Shared: Sync {}

// SAFETY: atomics: any bits are a valid value, and mutation is atomic.
#[allow(unsafe_code)]
unsafe impl Shared for AtomicU32 {}
// SAFETY: as above.
#[allow(unsafe_code)]
unsafe impl Shared for AtomicU64 {}

impl Region {
    /// The `T` at byte `offset`.
    ///
    /// # Panics
    /// When `offset` is not aligned for `T` or out of bounds (a bug in the layout code, not
    /// caller input).
    #[inline]
    pub(crate) fn get<T: Shared>(&self, offset: usize) -> &T {
        assert!(
            offset % std::mem::align_of::<T>() == 0
                && offset + std::mem::size_of::<T>() <= self.len(),
            "bad offset {offset} for a {}",
            std::any::type_name::<T>()
        );
        // SAFETY: in bounds and aligned (checked; the mapping is page-aligned); `T: Shared`
        // makes any contents valid and any number of shared references sound; the mapping
        // lives as long as `self`.
        #[allow(unsafe_code)]
        unsafe {
            &*(self.as_ptr().add(offset) as *const T)
        }
    }
}

impl AsFd for Region {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Serialize for Region {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        handle::serialize_borrowed(self.fd.as_fd(), serializer)
    }
}

impl<'de> Deserialize<'de> for Region {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let fd = handle::fd::deserialize(deserializer)?;
        Region::from_fd(fd)
            .map_err(|e| serde::de::Error::custom(format!("cannot map shared memory: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn a_region_travels_and_shares_memory() {
        let r = Region::new("test", 4096).unwrap();
        r.atomic_u32(8).store(42, Ordering::SeqCst);
        let enc = handle::encode(&r).unwrap();
        let dup = r.as_fd().try_clone_to_owned().unwrap();
        let back: Region = handle::decode(&enc.bytes, vec![dup]).unwrap();
        assert_eq!(back.len(), 4096);
        assert_eq!(back.atomic_u32(8).load(Ordering::SeqCst), 42);
        back.atomic_u32(8).store(7, Ordering::SeqCst);
        assert_eq!(r.atomic_u32(8).load(Ordering::SeqCst), 7);
    }
}
