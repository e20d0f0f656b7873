//! Shared memory: raw blocks ([`SharedMemory`]), typed values with a lock ([`Value`],
//! [`Array`]), without one ([`RawValue`], [`RawArray`]), and shared atomics ([`AtomicValue`],
//! [`AtomicArray`]).
//!
//! Every type here is a *handle*: pass it to a child or send it through a
//! [`Connection`](crate::Connection), and the other side maps the same memory.
//!
//! # Plain data
//! Values and arrays hold `T: `[`Pod`] (from the `bytemuck` crate, re-exported here): plain
//! data with no pointers, no padding, and every bit pattern valid, so that what another
//! process wrote (even one killed halfway through a write) is always a valid `T`. Derive it
//! for your own `#[repr(C)]` structs with `bytemuck`'s `derive` feature.
//!
//! # Named blocks and what is left in `/dev/shm`
//! [`SharedMemory::new`] and every value type use anonymous memory (a memfd): it has no name,
//! and vanishes with the last process that maps it, whoever dies how. A *named* block
//! ([`SharedMemory::create`]) is a file in `/dev/shm` that unrelated processes
//! [`open`](SharedMemory::open) by name. The process that created it owns the name: it
//! removes it when its handle is dropped (or at [`unlink`](SharedMemory::unlink)); a process
//! that attaches never removes it on its own (unlike Python before 3.13, gh-82300).
//!
//! A creator that is killed cannot remove anything, so each creating process also keeps a
//! *ledger*, `/dev/shm/multiprocess-ledger.<pid>.<start time>`, listing the names it owns.
//! Every [`SharedMemory::create`] first removes the names listed in the ledgers of processes
//! that no longer exist, and the ledgers themselves; [`remove_orphans`] does the same on
//! demand. A ledger disappears when its process has unlinked everything it created.

use std::fmt;
use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::region::Region;
use crate::sys::named_shm;
use crate::sys::sync::{current_process, thread_alive};

pub(crate) mod value;

pub use bytemuck::{Pod, Zeroable};
pub use value::{
    Array, ArrayGuard, AtomicArray, AtomicValue, IndexError, RawArray, RawValue, SharedAtomic,
    Value, ValueGuard,
};

/// A block of shared memory: anonymous ([`new`](SharedMemory::new)) or named in `/dev/shm`
/// ([`create`](SharedMemory::create), [`open`](SharedMemory::open)); Python's
/// `multiprocessing.shared_memory.SharedMemory`.
///
/// Read and write it safely with [`read`](SharedMemory::read) and
/// [`write`](SharedMemory::write) (atomic copies, sound whatever other processes do) or
/// through [`atomic_slice`](SharedMemory::atomic_slice) (a slice of std atomics); or, with
/// your own synchronization, as a plain slice ([`as_slice`](SharedMemory::as_slice),
/// [`as_mut_slice`](SharedMemory::as_mut_slice), `unsafe`: their docs explain the rules).
/// Clones share one mapping.
///
/// # Who can change its size
/// An anonymous block is a memfd sealed against any change of size before it is shared, and a
/// process that receives one checks the seal before mapping it: no process can truncate it
/// under another's mapping. A **named** block is a file in `/dev/shm` and cannot be sealed:
/// any process of your user that opens it can also shrink it (`ftruncate`), and then every
/// process that touches its mapping past the new end is killed by SIGBUS, in this crate as in
/// Python's `SharedMemory` and in C. Share names only with processes you trust; blocks are
/// created with mode 0600, so other users cannot open them.
///
/// # Examples
/// ```
/// use multiprocess::{Process, SharedMemory};
///
/// fn child(block: SharedMemory) {
///     block.write(0, b"hello").unwrap();
/// }
///
/// let block = SharedMemory::new(4096)?;
/// let mut p = Process::builder().start(child, block.clone())?;
/// p.join()?;
/// let mut buf = [0u8; 5];
/// block.read(0, &mut buf)?;
/// assert_eq!(&buf, b"hello");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct SharedMemory {
    block: Arc<Block>,
}

struct Block {
    region: Region,
    name: Option<String>,
    /// The pid of the process that created the name, when this is that process's handle.
    creator: Option<u32>,
    unlinked: AtomicBool,
}

impl Drop for Block {
    fn drop(&mut self) {
        if let (Some(name), Some(pid)) = (&self.name, self.creator) {
            if pid == current_process_id() && !self.unlinked.swap(true, Ordering::AcqRel) {
                let _ = named_shm::unlink(name);
                ledger_remove(name);
            }
        }
    }
}

fn current_process_id() -> u32 {
    crate::sys::process::getpid() as u32
}

impl fmt::Debug for SharedMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedMemory")
            .field("name", &self.block.name)
            .field("len", &self.len())
            .field("creator", &self.is_creator())
            .finish()
    }
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.into())
}

fn check_name(name: &str) -> io::Result<&str> {
    let name = name.strip_prefix('/').unwrap_or(name);
    if name.is_empty() || name.len() > 255 || name.contains('/') || name == "." || name == ".." {
        return Err(invalid(format!(
            "{name:?} is not a valid shared-memory name: use 1 to 255 characters without '/'"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid(format!(
            "{name:?} is not a valid shared-memory name: control characters (such as a \
             newline) are refused"
        )));
    }
    if name.starts_with(LEDGER_PREFIX) {
        return Err(invalid(format!(
            "{name:?} is reserved: names starting with {LEDGER_PREFIX:?} are multiprocess's own"
        )));
    }
    Ok(name)
}

impl SharedMemory {
    /// An anonymous block of `size` zero bytes, which other processes get by receiving the
    /// handle.
    ///
    /// # Errors
    /// `InvalidInput` when `size` is 0; an error when the memory cannot be created.
    ///
    /// # Examples
    /// ```
    /// let block = multiprocess::SharedMemory::new(100)?;
    /// assert_eq!(block.len(), 100);
    /// assert_eq!(block.name(), None);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn new(size: usize) -> io::Result<SharedMemory> {
        if size == 0 {
            return Err(invalid("a shared-memory block needs a size above 0"));
        }
        Ok(SharedMemory::from_parts(
            Region::new("multiprocess-shared-memory", size)?,
            None,
            None,
        ))
    }

    fn from_parts(region: Region, name: Option<String>, creator: Option<u32>) -> SharedMemory {
        SharedMemory {
            block: Arc::new(Block {
                region,
                name,
                creator,
                unlinked: AtomicBool::new(false),
            }),
        }
    }

    /// Creates the named block `name` (in `/dev/shm`) of `size` zero bytes. This process owns
    /// the name: it is removed when the last clone of this handle in this process is dropped,
    /// or at [`unlink`](SharedMemory::unlink). A leading `/` is ignored, as in Python.
    ///
    /// # Errors
    /// `AlreadyExists` when the name is taken; `InvalidInput` for an empty name, one with a
    /// `/`, or a size of 0.
    ///
    /// # Examples
    /// ```
    /// use multiprocess::SharedMemory;
    ///
    /// let name = format!("doc-create-{}", std::process::id());
    /// let block = SharedMemory::create(&name, 64)?;
    /// let other = SharedMemory::open(&name)?; // as an unrelated process would
    /// other.write(0, &[7])?;
    /// let mut b = [0u8];
    /// block.read(0, &mut b)?;
    /// assert_eq!(b, [7]);
    /// drop(other); // an attacher leaves the name alone
    /// assert!(SharedMemory::open(&name).is_ok());
    /// drop(block); // the creator removes it
    /// assert!(SharedMemory::open(&name).is_err());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn create(name: &str, size: usize) -> io::Result<SharedMemory> {
        let name = check_name(name)?;
        if size == 0 {
            return Err(invalid("a shared-memory block needs a size above 0"));
        }
        let _ = remove_orphans();
        ledger_add(name)?;
        let fd = match named_shm::create(name, size) {
            Ok(fd) => fd,
            Err(e) => {
                ledger_remove(name);
                return Err(e);
            }
        };
        match Region::from_unsealed_fd(fd) {
            Ok(region) => Ok(SharedMemory::from_parts(
                region,
                Some(name.to_string()),
                Some(current_process_id()),
            )),
            Err(e) => {
                let _ = named_shm::unlink(name);
                ledger_remove(name);
                Err(e)
            }
        }
    }

    /// Creates a named block under a fresh name (Python's `SharedMemory(create=True)` without
    /// a name); [`name`](SharedMemory::name) tells it.
    ///
    /// # Errors
    /// As [`create`](SharedMemory::create).
    ///
    /// # Examples
    /// ```
    /// let block = multiprocess::SharedMemory::create_unique(64)?;
    /// assert!(block.name().unwrap().starts_with("mp-"));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn create_unique(size: usize) -> io::Result<SharedMemory> {
        use std::sync::atomic::AtomicU64;
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        loop {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let name = format!(
                "mp-{}-{}-{nanos:08x}",
                current_process_id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            );
            match SharedMemory::create(&name, size) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                other => return other,
            }
        }
    }

    /// Attaches to the existing named block `name` (Python's `SharedMemory(name)`). Dropping
    /// the handle never removes the name.
    ///
    /// # Errors
    /// `NotFound` when there is no such block.
    ///
    /// # Examples
    /// ```
    /// let err = multiprocess::SharedMemory::open("no-such-block-here").unwrap_err();
    /// assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    /// ```
    #[doc(alias = "attach")]
    pub fn open(name: &str) -> io::Result<SharedMemory> {
        let name = check_name(name)?;
        let fd = named_shm::open(name)?;
        Ok(SharedMemory::from_parts(
            Region::from_unsealed_fd(fd)?,
            Some(name.to_string()),
            None,
        ))
    }

    /// The block's name (`None` for an anonymous block).
    ///
    /// # Examples
    /// ```
    /// assert_eq!(multiprocess::SharedMemory::new(1)?.name(), None);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn name(&self) -> Option<&str> {
        self.block.name.as_deref()
    }

    /// The size in bytes (Python's `size`).
    ///
    /// # Examples
    /// ```
    /// assert_eq!(multiprocess::SharedMemory::new(10)?.len(), 10);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "size")]
    pub fn len(&self) -> usize {
        self.block.region.len()
    }

    /// Never true: a block has at least one byte.
    ///
    /// # Examples
    /// ```
    /// assert!(!multiprocess::SharedMemory::new(1)?.is_empty());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether this handle created the name (and so removes it when dropped).
    ///
    /// # Examples
    /// ```
    /// let block = multiprocess::SharedMemory::create_unique(8)?;
    /// assert!(block.is_creator());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn is_creator(&self) -> bool {
        self.block.creator == Some(current_process_id())
    }

    /// Removes the name now (Python's `unlink()`): processes that have the block keep it;
    /// nobody can open it by name any more. Any process may call it.
    ///
    /// # Errors
    /// `InvalidInput` for an anonymous block; `NotFound` when the name is already gone.
    ///
    /// # Examples
    /// ```
    /// let block = multiprocess::SharedMemory::create_unique(8)?;
    /// block.unlink()?;
    /// assert!(multiprocess::SharedMemory::open(block.name().unwrap()).is_err());
    /// block.write(0, &[1])?; // still mapped
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn unlink(&self) -> io::Result<()> {
        let Some(name) = &self.block.name else {
            return Err(invalid(
                "an anonymous shared-memory block has no name to unlink",
            ));
        };
        if self.is_creator() {
            if self.block.unlinked.swap(true, Ordering::AcqRel) {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("shared-memory block {name:?} was already unlinked"),
                ));
            }
            let r = named_shm::unlink(name);
            ledger_remove(name);
            r
        } else {
            named_shm::unlink(name)
        }
    }

    /// The first byte of the mapping. Accessing it is up to you: other processes may write
    /// at any time, so use atomics or your own locking.
    ///
    /// # Examples
    /// ```
    /// let block = multiprocess::SharedMemory::new(8)?;
    /// assert!(!block.as_ptr().is_null());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn as_ptr(&self) -> *mut u8 {
        self.block.region.as_ptr()
    }

    fn check_range(&self, offset: usize, len: usize) -> io::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len() => Ok(()),
            _ => Err(invalid(format!(
                "bytes {offset}..{} are outside the block of {} bytes",
                offset.saturating_add(len),
                self.len()
            ))),
        }
    }

    /// Copies bytes from the block at `offset` into `buf`, with atomic loads (whole aligned
    /// words where it can, bytes at the edges): sound whatever other processes write at the
    /// same time, at the price that a concurrent write may be seen in part. For a consistent
    /// snapshot, agree on a [`Lock`](crate::Lock) with the writers.
    ///
    /// # Errors
    /// `InvalidInput` when the range is outside the block.
    ///
    /// # Examples
    /// ```
    /// let block = multiprocess::SharedMemory::new(8)?;
    /// let mut buf = [1u8; 4];
    /// block.read(4, &mut buf)?;
    /// assert_eq!(buf, [0; 4]);
    /// assert!(block.read(6, &mut buf).is_err());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> io::Result<()> {
        self.check_range(offset, buf.len())?;
        let bytes = &self.atomic_bytes()[offset..offset + buf.len()];
        let (head, words, _) = self.split_words(offset, buf.len());
        let (b_head, rest) = buf.split_at_mut(head);
        let (b_words, b_tail) = rest.split_at_mut(words.len() * 8);
        for (b, a) in b_head.iter_mut().zip(&bytes[..head]) {
            *b = a.load(Ordering::Relaxed);
        }
        for (chunk, w) in b_words.chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&w.load(Ordering::Relaxed).to_ne_bytes());
        }
        for (b, a) in b_tail.iter_mut().zip(&bytes[head + words.len() * 8..]) {
            *b = a.load(Ordering::Relaxed);
        }
        Ok(())
    }

    /// Copies `data` into the block at `offset`, with atomic stores (whole aligned words
    /// where it can, bytes at the edges).
    ///
    /// # Errors
    /// `InvalidInput` when the range is outside the block.
    ///
    /// # Examples
    /// ```
    /// let block = multiprocess::SharedMemory::new(8)?;
    /// block.write(0, b"abc")?;
    /// assert!(block.write(7, b"abc").is_err());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn write(&self, offset: usize, data: &[u8]) -> io::Result<()> {
        self.check_range(offset, data.len())?;
        let bytes = &self.atomic_bytes()[offset..offset + data.len()];
        let (head, words, tail) = self.split_words(offset, data.len());
        let (d_head, rest) = data.split_at(head);
        let (d_words, d_tail) = rest.split_at(words.len() * 8);
        for (a, b) in bytes[..head].iter().zip(d_head) {
            a.store(*b, Ordering::Relaxed);
        }
        for (w, chunk) in words.iter().zip(d_words.chunks_exact(8)) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            w.store(u64::from_ne_bytes(word), Ordering::Relaxed);
        }
        for (a, b) in bytes[head + words.len() * 8..].iter().zip(d_tail) {
            a.store(*b, Ordering::Relaxed);
        }
        debug_assert_eq!(tail, d_tail.len());
        Ok(())
    }

    /// Splits `offset..offset + len` (inside the block) into unaligned head bytes, whole
    /// aligned words, and tail bytes.
    fn split_words(&self, offset: usize, len: usize) -> (usize, &[AtomicU64], usize) {
        let words = self.atomic_slice::<AtomicU64>();
        let first = offset.div_ceil(8);
        let end_word = (offset + len) / 8;
        if first >= end_word {
            return (len, &[], 0);
        }
        let head = first * 8 - offset;
        let tail = offset + len - end_word * 8;
        (head, &words[first..end_word], tail)
    }

    /// The block as atomic bytes.
    pub fn atomic_bytes(&self) -> &[AtomicU8] {
        self.atomic_slice::<AtomicU8>()
    }

    /// The block as a slice of std atomics (`AtomicU32`, `AtomicU64`, `AtomicBool`, ...): the
    /// safe view of shared memory. Every access through it is atomic, so it is sound whatever
    /// other processes do with the same memory, and `Relaxed` loads and stores compile to
    /// plain moves. The slice covers the whole elements that fit in the block (the mapping is
    /// page-aligned, so every element is aligned).
    ///
    /// For plain slices (`&[u8]`, `&mut [f64]`, with `memcpy` speed and SIMD), see
    /// [`as_slice`](Self::as_slice): they are `unsafe`, because Rust's rules for references
    /// must then be kept by every process.
    ///
    /// # Examples
    /// ```
    /// use multiprocess::{Process, SharedMemory};
    /// use std::sync::atomic::{AtomicU64, Ordering};
    ///
    /// fn fill(block: SharedMemory) {
    ///     for (i, w) in block.atomic_slice::<AtomicU64>().iter().enumerate() {
    ///         w.store(i as u64 * 10, Ordering::Relaxed);
    ///     }
    /// }
    ///
    /// let block = SharedMemory::new(32)?;
    /// Process::builder().start(fill, block.clone())?.join()?;
    /// let words = block.atomic_slice::<AtomicU64>();
    /// assert_eq!(words[3].load(Ordering::Relaxed), 30);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn atomic_slice<A: SharedAtomic>(&self) -> &[A] {
        let n = self.len() / std::mem::size_of::<A>();
        debug_assert_eq!(self.as_ptr() as usize % std::mem::align_of::<A>(), 0);
        // SAFETY: the mapping is `len` bytes (covering `n` elements), page-aligned (so aligned
        // for any atomic), and lives as long as `self`. The std atomics have no invalid bit
        // patterns for their storage (`AtomicBool` keeps a `u8` and reads it as `!= 0`), and
        // every access through them is atomic, which is sound whatever other processes do
        // with the same memory.
        #[allow(unsafe_code)]
        unsafe {
            std::slice::from_raw_parts(self.as_ptr() as *const A, n)
        }
    }

    /// The block as a plain byte slice, for `memcpy`-speed reads.
    ///
    /// # Safety
    /// A `&[u8]` promises the compiler that the bytes do not change while it lives (it may
    /// read a byte twice and rely on seeing the same value). So no process, and no thread of
    /// this one, may write to the block while the slice is alive: for example, every writer
    /// takes a [`Lock`](crate::Lock) that you hold for as long as you use the slice, or the
    /// writers are done (a [`Barrier`](crate::Barrier), a joined child). For access without
    /// such an agreement use [`atomic_slice`](Self::atomic_slice), [`read`](Self::read) and
    /// [`write`](Self::write), which are safe. A named block truncated by another process
    /// makes any access to the lost pages fail with `SIGBUS` (see the type's notes).
    ///
    /// # Examples
    /// ```
    /// use multiprocess::{Process, SharedMemory};
    ///
    /// fn fill(block: SharedMemory) {
    ///     block.write(0, b"hello").unwrap();
    /// }
    ///
    /// let block = SharedMemory::new(5)?;
    /// Process::builder().start(fill, block.clone())?.join()?;
    /// // SAFETY: the only writer has exited.
    /// let bytes = unsafe { block.as_slice() };
    /// assert_eq!(bytes, b"hello");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[allow(unsafe_code)]
    pub unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is `len` bytes and lives as long as `self`; the caller promises
        // that nothing writes to it while the slice lives.
        unsafe { std::slice::from_raw_parts(self.as_ptr(), self.len()) }
    }

    /// The block as a plain mutable byte slice, for `memcpy`-speed writes.
    ///
    /// # Safety
    /// A `&mut [u8]` promises that nothing else reads or writes the bytes while it lives: no
    /// other process, no other thread, and no other slice or view of this block (including
    /// clones of this handle). Hold a [`Lock`](crate::Lock) that every other user of the block
    /// takes too, or make sure the others are not running.
    ///
    /// # Examples
    /// ```
    /// let block = multiprocess::SharedMemory::new(4)?;
    /// // SAFETY: no other process or thread has the block yet.
    /// unsafe { block.as_mut_slice() }.copy_from_slice(b"abcd");
    /// let mut buf = [0u8; 4];
    /// block.read(0, &mut buf)?;
    /// assert_eq!(&buf, b"abcd");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[allow(unsafe_code, clippy::mut_from_ref)]
    pub unsafe fn as_mut_slice(&self) -> &mut [u8] {
        // SAFETY: the mapping is `len` bytes and lives as long as `self`; the caller promises
        // that nothing else accesses it while the slice lives.
        unsafe { std::slice::from_raw_parts_mut(self.as_ptr(), self.len()) }
    }
}

impl Serialize for SharedMemory {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (&self.block.name, &self.block.region).serialize(s)
    }
}

/// A received descriptor, before it is known how to map it.
struct ReceivedFd(std::os::fd::OwnedFd);

impl<'de> Deserialize<'de> for ReceivedFd {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::handle::fd::deserialize(d).map(ReceivedFd)
    }
}

impl<'de> Deserialize<'de> for SharedMemory {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (name, ReceivedFd(fd)) = <(Option<String>, ReceivedFd)>::deserialize(d)?;
        // An anonymous block is a sealed memfd, and must prove it; a named one cannot be
        // sealed (see the type's notes on truncation).
        let region = match &name {
            None => Region::from_fd(fd),
            Some(_) => Region::from_unsealed_fd(fd),
        }
        .map_err(|e| serde::de::Error::custom(format!("cannot map shared memory: {e}")))?;
        // The receiver attaches: it never owns the name.
        Ok(SharedMemory::from_parts(region, name, None))
    }
}

impl AsFd for SharedMemory {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.block.region.as_fd()
    }
}

const LEDGER_PREFIX: &str = "multiprocess-ledger.";

/// This process's ledger: its pid (a forked child makes its own), its file, the names it
/// lists.
#[derive(Debug)]
pub(crate) struct Ledger {
    pid: u32,
    name: String,
    file: named_shm::LedgerFile,
    names: Vec<String>,
}

/// The names this process created and still owns, and the ledger that lists them.
static LEDGER: Mutex<Option<Ledger>> = Mutex::new(None);

/// Held across `fork` by the Fork start method, so a forked child never finds it locked.
pub(crate) fn lock_ledger_for_fork() -> std::sync::MutexGuard<'static, Option<Ledger>> {
    LEDGER.lock().unwrap_or_else(|p| p.into_inner())
}

fn ledger_add(name: &str) -> io::Result<()> {
    let mut g = LEDGER.lock().unwrap_or_else(|p| p.into_inner());
    let (pid, start) = current_process();
    if g.as_ref().is_none_or(|l| l.pid != pid) {
        // First use, or a forked child: its own ledger (the parent's descriptor, inherited,
        // is closed here). Created exclusively: a file planted under the name is an error.
        let file = format!("{LEDGER_PREFIX}{pid}.{start}");
        *g = None;
        *g = Some(Ledger {
            pid,
            // Never `AlreadyExists`: that would read as "the block's name is taken".
            file: named_shm::LedgerFile::create(&file).map_err(|e| {
                io::Error::other(format!(
                    "cannot create this process's shared-memory ledger /dev/shm/{file} \
                     (something else has its name?): {e}"
                ))
            })?,
            name: file,
            names: Vec::new(),
        });
    }
    let l = g.as_mut().expect("set above");
    l.names.push(name.to_string());
    let r = l.file.write(&l.names.join("\n"));
    if r.is_err() {
        l.names.pop();
    }
    r
}

fn ledger_remove(name: &str) {
    let mut g = LEDGER.lock().unwrap_or_else(|p| p.into_inner());
    let pid = current_process_id();
    let Some(l) = g.as_mut() else {
        return;
    };
    if l.pid != pid {
        return;
    }
    if let Some(i) = l.names.iter().position(|n| n == name) {
        l.names.remove(i);
    }
    if l.names.is_empty() {
        let _ = named_shm::unlink(&l.name);
        *g = None;
    } else {
        let _ = l.file.write(&l.names.join("\n"));
    }
}

/// The names a ledger's bytes list that the crate may remove: each line that is UTF-8 and
/// passes the same check as [`SharedMemory::create`] (one path component, no control
/// characters, not a ledger). Anything else is skipped, so a forged or damaged ledger can
/// never name a file outside `/dev/shm` or another ledger.
pub(crate) fn parse_ledger(bytes: &[u8]) -> Vec<&str> {
    bytes
        .split(|b| *b == b'\n')
        .filter_map(|line| std::str::from_utf8(line).ok())
        .filter(|line| !line.is_empty() && !line.starts_with('/'))
        .filter(|line| check_name(line).is_ok())
        .collect()
}

/// The (pid, start time) a ledger's file name names, if it is one.
fn ledger_owner(file: &str) -> Option<(u32, u32)> {
    let rest = file.strip_prefix(LEDGER_PREFIX)?;
    let (p, s) = rest.split_once('.')?;
    Some((p.parse().ok()?, s.parse().ok()?))
}

/// Removes the named blocks of creators that died without removing them (killed, or ended
/// by `_exit`), as recorded in their ledgers (see the [module notes](self)); returns how many
/// names were removed. [`SharedMemory::create`] calls it first.
///
/// A ledger is trusted only when it is a regular file owned by this user (never a link, a
/// FIFO or another user's file), at most 1 MiB, and each name in it must pass the check of
/// [`SharedMemory::create`]: a ledger that someone else planted in `/dev/shm`, which every
/// user can write to, cannot make this function remove anything outside the names the crate
/// could have created. Removal is relative to the directory (`unlinkat`).
///
/// # Errors
/// When `/dev/shm` cannot be listed.
///
/// # Examples
/// ```
/// let removed = multiprocess::shared_memory::remove_orphans()?;
/// # let _ = removed;
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn remove_orphans() -> io::Result<usize> {
    let mut removed = 0;
    for file in named_shm::names()? {
        let Some((pid, start)) = ledger_owner(&file) else {
            continue;
        };
        if thread_alive(pid, start) {
            continue;
        }
        let Ok(Some(bytes)) = named_shm::read_trusted(&file) else {
            // Not ours to trust (or gone meanwhile): leave it alone.
            continue;
        };
        for name in parse_ledger(&bytes) {
            if named_shm::unlink(name).is_ok() {
                removed += 1;
            }
        }
        let _ = named_shm::unlink(&file);
    }
    Ok(removed)
}
