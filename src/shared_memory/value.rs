//! Typed shared values: `Value`, `Array` (with a lock), `RawValue`, `RawArray` (without),
//! `AtomicValue`, `AtomicArray` (shared atomics).
//!
//! # Layout (one memfd per value, zero-filled, then initialized by the creator before it is
//! shared)
//! | offset | type | contents |
//! |---|---|---|
//! | 0 | `u32` | magic: `"mVa1"` (locked), `"mRv1"` (raw), `"mAt1"` (atomic) |
//! | 8 | [`RawLock`] | the value's lock (unused by the raw and atomic kinds) |
//! | 24 | `u32` | `size_of::<T>()` |
//! | 28 | `u32` | `align_of::<T>()` |
//! | 32 | `u64` | the number of elements |
//! | 64, or the next multiple of `align_of::<T>()` | `[T; len]` | the data |
//!
//! A receiver checks the magic, size, alignment and (for a `Value`) the length against its own
//! `T`, so a value received as the wrong type is an error, not a reinterpretation.
//!
//! # Access
//! Locked kinds hand out `&T`/`&mut T` only through a guard of the lock: the lock's
//! `Acquire`/`Release` order the data, and no other code of the crate touches it. Raw kinds
//! copy in and out with relaxed atomic loads and stores (of the largest width that the
//! alignment of `T` allows), so concurrent access is never undefined behaviour; a value read
//! while another process writes it may mix old and new parts (a valid `T`, since `T: Pod`).

use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::atomic::{self, AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use bytemuck::Pod;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::region::Region;
use crate::sync::lock::{wrap, LockGuard};
use crate::sync::raw::RawLock;
use crate::sync::{deadline, magic, LockResult, Tagged, TryLockError, TryLockResult, BODY};

const LOCKED: u32 = magic(b"mVa1");
const RAW: u32 = magic(b"mRv1");
const ATOMIC: u32 = magic(b"mAt1");
const SIZE: usize = BODY + RawLock::SIZE;
const ALIGN: usize = SIZE + 4;
const LEN: usize = ALIGN + 4;

fn data_offset(align: usize) -> usize {
    64usize.next_multiple_of(align.max(1))
}

fn what(kind: u32) -> &'static str {
    match kind {
        LOCKED => "shared value",
        RAW => "raw shared value",
        _ => "shared atomic",
    }
}

/// The header of a received value's region, as read once from the shared words (any
/// process holding the region may have written them).
#[derive(Debug, Clone, Copy)]
struct Header {
    magic: u32,
    size: u32,
    align: u32,
    len: u64,
}

impl Header {
    /// Checks the header against the kind and the receiver's `T` (`name`, `size`, `align`),
    /// and that the data fits a region of `region_len` bytes; the number of elements.
    fn check(
        &self,
        kind: u32,
        region_len: usize,
        name: &str,
        size: usize,
        align: usize,
        exact_len: Option<usize>,
    ) -> Result<usize, String> {
        let what = what(kind);
        if self.magic != kind {
            return Err(format!(
                "the received shared memory is not a {what} of this version of multiprocess"
            ));
        }
        let (got_size, got_align) = (self.size as usize, self.align as usize);
        if got_size != size || got_align != align {
            return Err(format!(
                "the received {what} does not hold `{name}` (element size {got_size}, \
                 alignment {got_align})"
            ));
        }
        let len = usize::try_from(self.len).ok();
        let fits = len
            .and_then(|n| size.checked_mul(n))
            .and_then(|b| b.checked_add(data_offset(align)))
            .is_some_and(|end| end <= region_len);
        let (Some(len), true) = (len, fits) else {
            return Err(format!(
                "the received {what} is malformed: its length ({} elements of {size} bytes) \
                 does not fit its shared memory ({region_len} bytes)",
                self.len
            ));
        };
        if exact_len.is_some_and(|l| l != len) {
            return Err(format!("the received {what} holds {len} elements, not 1"));
        }
        Ok(len)
    }
}

/// Fuzz entry (`multiprocess::fuzz::value_header`): the header check of a received value
/// over arbitrary bytes: the 40 header bytes of the layout, then the region's length (8
/// bytes, little-endian; 4096 when absent). Never panics.
pub(crate) fn fuzz_header(data: &[u8]) {
    let word = |at: usize| {
        data.get(at..at + 4)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let header = Header {
        magic: word(0),
        size: word(SIZE),
        align: word(ALIGN),
        len: u64::from(word(LEN)) | (u64::from(word(LEN + 4)) << 32),
    };
    let region_len = data.get(40..48).map_or(4096, |b| {
        let mut w = [0; 8];
        w.copy_from_slice(b);
        u64::from_le_bytes(w) as usize
    });
    for kind in [LOCKED, RAW, ATOMIC] {
        for (size, align) in [(1, 1), (4, 4), (8, 8), (3, 1), (16, 16), (0, 1)] {
            for exact in [None, Some(1)] {
                if let Ok(len) = header.check(kind, region_len, "T", size, align, exact) {
                    // What the receiver then maps: within the region.
                    assert!(data_offset(align) + size * len <= region_len);
                }
            }
        }
    }
}

/// The region of a typed value, and where its data is.
struct Cells<T> {
    tagged: Tagged,
    len: usize,
    _t: PhantomData<T>,
}

impl<T> Clone for Cells<T> {
    fn clone(&self) -> Self {
        Cells {
            tagged: self.tagged.clone(),
            len: self.len,
            _t: PhantomData,
        }
    }
}

impl<T> Cells<T> {
    fn new(kind: u32, len: usize) -> io::Result<Cells<T>> {
        let bytes = std::mem::size_of::<T>()
            .checked_mul(len)
            .and_then(|b| b.checked_add(data_offset(std::mem::align_of::<T>())))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "shared array too large"))?;
        let tagged = Tagged::new("multiprocess-value", kind, bytes)?;
        let r = &tagged.region;
        r.get::<AtomicU32>(SIZE)
            .store(std::mem::size_of::<T>() as u32, Ordering::Relaxed);
        r.get::<AtomicU32>(ALIGN)
            .store(std::mem::align_of::<T>() as u32, Ordering::Relaxed);
        r.get::<AtomicU64>(LEN).store(len as u64, Ordering::Release);
        Ok(Cells {
            tagged,
            len,
            _t: PhantomData,
        })
    }

    fn check(region: Region, kind: u32, exact_len: Option<usize>) -> Result<Cells<T>, String> {
        let tagged = Tagged::check(region, kind, 64, what(kind))?;
        let r = &tagged.region;
        let header = Header {
            magic: r.get::<AtomicU32>(0).load(Ordering::Acquire),
            size: r.get::<AtomicU32>(SIZE).load(Ordering::Relaxed),
            align: r.get::<AtomicU32>(ALIGN).load(Ordering::Relaxed),
            len: r.get::<AtomicU64>(LEN).load(Ordering::Acquire),
        };
        let len = header.check(
            kind,
            r.len(),
            std::any::type_name::<T>(),
            std::mem::size_of::<T>(),
            std::mem::align_of::<T>(),
            exact_len,
        )?;
        Ok(Cells {
            tagged,
            len,
            _t: PhantomData,
        })
    }

    fn data(&self) -> NonNull<T> {
        let offset = data_offset(std::mem::align_of::<T>());
        // SAFETY: `offset` is within the region (checked at creation or reception), which
        // is page-aligned, so the pointer is aligned for `T` and not null.
        #[allow(unsafe_code)]
        unsafe {
            NonNull::new_unchecked(self.tagged.region.as_ptr().add(offset).cast())
        }
    }

    fn raw_lock(&self) -> &RawLock {
        self.tagged.region.get(BODY)
    }

    fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
        kind: u32,
        exact_len: Option<usize>,
    ) -> Result<Cells<T>, D::Error> {
        let region = Region::deserialize(d)?;
        Cells::check(region, kind, exact_len).map_err(serde::de::Error::custom)
    }
}

/// Copies `count` elements of `T` out of shared memory at `src` into `dst`, with relaxed
/// atomic loads.
///
/// # Safety
/// `src` must point to `count` elements in a live shared mapping, aligned for `T`; `dst` must
/// be valid for writes of `count` elements.
#[allow(unsafe_code)]
unsafe fn copy_out<T: Pod>(src: *const T, dst: *mut T, count: usize) {
    let bytes = std::mem::size_of::<T>() * count;
    let (s, d) = (src.cast::<u8>(), dst.cast::<u8>());
    macro_rules! by {
        ($a:ty, $int:ty) => {{
            let w = std::mem::size_of::<$int>();
            for i in (0..bytes).step_by(w) {
                // SAFETY: in bounds of both buffers; `s + i` is aligned for `$a` since `T`'s
                // alignment is at least `w` and `i` is a multiple of `w`.
                unsafe {
                    let v = (*(s.add(i) as *const $a)).load(Ordering::Relaxed);
                    std::ptr::write_unaligned(d.add(i) as *mut $int, v);
                }
            }
        }};
    }
    match std::mem::align_of::<T>() {
        1 => by!(AtomicU8, u8),
        2 => by!(AtomicU16, u16),
        4 => by!(AtomicU32, u32),
        _ => by!(AtomicU64, u64),
    }
}

/// Copies `count` elements of `T` from `src` into shared memory at `dst`, with relaxed atomic
/// stores.
///
/// # Safety
/// `dst` must point to `count` elements in a live shared mapping, aligned for `T`; `src` must
/// be valid for reads of `count` elements.
#[allow(unsafe_code)]
unsafe fn copy_in<T: Pod>(src: *const T, dst: *mut T, count: usize) {
    let bytes = std::mem::size_of::<T>() * count;
    let (s, d) = (src.cast::<u8>(), dst.cast::<u8>());
    macro_rules! by {
        ($a:ty, $int:ty) => {{
            let w = std::mem::size_of::<$int>();
            for i in (0..bytes).step_by(w) {
                // SAFETY: as in `copy_out`, with the roles swapped.
                unsafe {
                    let v = std::ptr::read_unaligned(s.add(i) as *const $int);
                    (*(d.add(i) as *const $a)).store(v, Ordering::Relaxed);
                }
            }
        }};
    }
    match std::mem::align_of::<T>() {
        1 => by!(AtomicU8, u8),
        2 => by!(AtomicU16, u16),
        4 => by!(AtomicU32, u32),
        _ => by!(AtomicU64, u64),
    }
}

macro_rules! serde_impls {
    ($t:ident, $bound:path, $kind:expr, $exact:expr) => {
        impl<T> Serialize for $t<T> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.cells.tagged.serialize(s)
            }
        }
        impl<'de, T: $bound> Deserialize<'de> for $t<T> {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                Ok($t {
                    cells: Cells::deserialize(d, $kind, $exact)?,
                })
            }
        }
        impl<T> Clone for $t<T> {
            fn clone(&self) -> Self {
                $t {
                    cells: self.cells.clone(),
                }
            }
        }
        impl<T> fmt::Debug for $t<T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($t))
                    .field("type", &std::any::type_name::<T>())
                    .field("len", &self.cells.len)
                    .finish()
            }
        }
    };
}

/// A `T` in shared memory with a lock (Python's `multiprocessing.Value`): read and change it
/// under [`lock`](Value::lock), or copy it in and out with [`get`](Value::get) and
/// [`set`](Value::set).
///
/// A handle: clones, and copies received by other processes, are the same value. A holder of
/// the lock that dies is handled as for [`Lock`](crate::Lock): the next locker is told by an
/// [`OwnerDied`](crate::OwnerDied).
///
/// `T` is plain data ([`Pod`](crate::Pod)): integers, floats, arrays of them, your
/// `#[repr(C)]` structs. `bool` and `char` are not (a peer could write a byte that is no
/// `bool`): for a shared flag use [`AtomicValue<AtomicBool>`](crate::AtomicValue) (or an
/// [`Event`](crate::Event)), or a `u8`.
///
/// # Examples
/// ```
/// use multiprocess::{Process, Value};
///
/// fn add(v: Value<u64>) {
///     for _ in 0..1000 {
///         *v.lock().unwrap() += 1;
///     }
/// }
///
/// let counter = Value::new(0u64)?;
/// let mut a = Process::builder().start(add, counter.clone())?;
/// let mut b = Process::builder().start(add, counter.clone())?;
/// a.join()?;
/// b.join()?;
/// assert_eq!(counter.get(), 2000);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Value<T> {
    cells: Cells<T>,
}

serde_impls!(Value, Pod, LOCKED, Some(1));

impl<T: Pod> Value<T> {
    /// Test support: the `u32` word at byte `offset` of the shared region (layout in the
    /// sources), as any process holding the region could write it; `None` past its end.
    #[doc(hidden)]
    pub fn __shared_word(&self, offset: usize) -> Option<&AtomicU32> {
        self.cells.tagged.word_at(offset)
    }

    /// A new shared value holding `value`.
    ///
    /// # Errors
    /// When the shared memory cannot be created.
    ///
    /// # Examples
    /// ```
    /// let v = multiprocess::Value::new(1.5f64)?;
    /// assert_eq!(v.get(), 1.5);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn new(value: T) -> io::Result<Value<T>> {
        let cells = Cells::new(LOCKED, 1)?;
        // SAFETY: the data slot of a region nobody else has yet.
        #[allow(unsafe_code)]
        unsafe {
            copy_in(&value, cells.data().as_ptr(), 1)
        };
        Ok(Value { cells })
    }

    fn guard(&self) -> ValueGuard<'_, T> {
        ValueGuard {
            _lock: LockGuard::new(self.cells.raw_lock()),
            data: self.cells.data(),
            _t: PhantomData,
        }
    }

    /// Locks the value (Python's `get_lock()` + `acquire()`); the guard derefs to the `T`.
    ///
    /// # Errors
    /// [`OwnerDied`](crate::OwnerDied) (holding the guard) when the previous holder died
    /// holding the lock: the value may be half-updated.
    ///
    /// # Panics
    /// When this thread already holds the lock (a guard is alive): Python's `Value` lock is
    /// re-entrant, this one is not, and waiting for oneself would never end. The same holds
    /// for [`get`](Value::get) and [`set`](Value::set) under a guard: update through the
    /// guard.
    ///
    /// # Examples
    /// Python's `with v.get_lock(): v.value += 1` is:
    /// ```
    /// let v = multiprocess::Value::new(1i32)?;
    /// {
    ///     let mut g = v.lock().unwrap();
    ///     *g += 1; // not v.set(v.get() + 1): that would panic, the guard holds the lock
    /// }
    /// assert_eq!(v.get(), 2);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "get_lock")]
    pub fn lock(&self) -> LockResult<ValueGuard<'_, T>> {
        self.not_mine("lock");
        let how = self
            .cells
            .raw_lock()
            .lock(None)
            .expect("a lock without a deadline always ends locked");
        wrap(self.guard(), how)
    }

    /// Locks if the lock is free, without waiting. A lock whose holder died is taken over,
    /// as `lock` does.
    ///
    /// # Errors
    /// [`TryLockError::WouldBlock`] when a live holder has it, [`TryLockError::OwnerDied`]
    /// (with the guard) when the previous holder died holding it.
    ///
    /// # Examples
    /// ```
    /// let v = multiprocess::Value::new(1u8)?;
    /// let g = v.try_lock().unwrap();
    /// assert!(v.try_lock().is_err());
    /// # drop(g);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn try_lock(&self) -> TryLockResult<ValueGuard<'_, T>> {
        match self.cells.raw_lock().try_lock() {
            Some(how) => wrap(self.guard(), how).map_err(TryLockError::from),
            None => Err(TryLockError::WouldBlock),
        }
    }

    /// Locks, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`TryLockError::WouldBlock`] when the timeout passed, [`TryLockError::OwnerDied`] when
    /// the previous holder died holding the lock.
    ///
    /// # Examples
    /// ```
    /// let v = multiprocess::Value::new(1u8)?;
    /// let g = v.lock_timeout(std::time::Duration::from_millis(10)).unwrap();
    /// # drop(g);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn lock_timeout(&self, timeout: Duration) -> TryLockResult<ValueGuard<'_, T>> {
        match self.cells.raw_lock().lock(deadline(timeout)) {
            Some(how) => wrap(self.guard(), how).map_err(TryLockError::from),
            None => Err(TryLockError::WouldBlock),
        }
    }

    /// A copy of the value, read under the lock (Python's `value`). A dead previous holder is
    /// not reported here: use [`lock`](Value::lock) to learn about it.
    ///
    /// # Examples
    /// ```
    /// let v = multiprocess::Value::new([1u16, 2, 3])?;
    /// assert_eq!(v.get(), [1, 2, 3]);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "value")]
    pub fn get(&self) -> T {
        self.not_mine("get");
        *self.lock().unwrap_or_else(crate::OwnerDied::into_inner)
    }

    /// Python's `Value` lock is re-entrant, so `with v.get_lock(): v.value += 1` works there;
    /// here the guard *is* the access, and a `get`, `set` or `lock` while this thread holds the
    /// guard would wait for itself forever. Say so instead of hanging.
    #[track_caller]
    fn not_mine(&self, what: &str) {
        if self.cells.raw_lock().held_by_me() {
            panic!(
                "Value::{what} called while this thread holds the value's lock (a guard from \
                 `lock()` is alive), which would wait for itself forever: read and write \
                 through the guard instead (`let mut g = v.lock()?; *g += 1;`)"
            );
        }
    }

    /// Replaces the value, under the lock (Python's `value = x`). A dead previous holder is
    /// not reported here: use [`lock`](Value::lock) to learn about it.
    ///
    /// # Examples
    /// ```
    /// let v = multiprocess::Value::new(0u32)?;
    /// v.set(7);
    /// assert_eq!(v.get(), 7);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set(&self, value: T) {
        self.not_mine("set");
        *self.lock().unwrap_or_else(crate::OwnerDied::into_inner) = value;
    }
}

/// The locked `T` of a [`Value`]; unlocks when dropped. Not `Send`.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ValueGuard<'a, T> {
    _lock: LockGuard<'a>,
    data: NonNull<T>,
    _t: PhantomData<&'a mut T>,
}

impl<T> Deref for ValueGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the lock is held, and every access of the crate to this data is made under
        // it; the data is aligned and lives as long as the value's region.
        #[allow(unsafe_code)]
        unsafe {
            self.data.as_ref()
        }
    }
}

impl<T> DerefMut for ValueGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; the guard is borrowed mutably, so this is the only reference.
        #[allow(unsafe_code)]
        unsafe {
            self.data.as_mut()
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for ValueGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

/// An array of `T` in shared memory with one lock (Python's `multiprocessing.Array`).
///
/// # Examples
/// ```
/// use multiprocess::{Array, Process};
///
/// fn fill(a: Array<i32>) {
///     for (i, x) in a.lock().unwrap().iter_mut().enumerate() {
///         *x = i as i32 * 10;
///     }
/// }
///
/// let a = Array::<i32>::new(4)?;
/// Process::builder().start(fill, a.clone())?.join()?;
/// assert_eq!(a.to_vec(), [0, 10, 20, 30]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Array<T> {
    cells: Cells<T>,
}

serde_impls!(Array, Pod, LOCKED, None);

impl<T: Pod> Array<T> {
    /// Test support: the `u32` word at byte `offset` of the shared region (layout in the
    /// sources), as any process holding the region could write it; `None` past its end.
    #[doc(hidden)]
    pub fn __shared_word(&self, offset: usize) -> Option<&AtomicU32> {
        self.cells.tagged.word_at(offset)
    }

    /// A new array of `len` zeros.
    ///
    /// # Errors
    /// When the shared memory cannot be created (or `len` overflows).
    ///
    /// # Examples
    /// ```
    /// let a = multiprocess::Array::<f64>::new(3)?;
    /// assert_eq!(a.to_vec(), [0.0; 3]);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn new(len: usize) -> io::Result<Array<T>> {
        Ok(Array {
            cells: Cells::new(LOCKED, len)?,
        })
    }

    /// A new array holding a copy of `items`.
    ///
    /// # Errors
    /// When the shared memory cannot be created.
    ///
    /// # Examples
    /// ```
    /// let a = multiprocess::Array::from_slice(&[1u8, 2, 3])?;
    /// assert_eq!(a.len(), 3);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn from_slice(items: &[T]) -> io::Result<Array<T>> {
        let cells = Cells::new(LOCKED, items.len())?;
        // SAFETY: the data of a region nobody else has yet, `items.len()` elements long.
        #[allow(unsafe_code)]
        unsafe {
            copy_in(items.as_ptr(), cells.data().as_ptr(), items.len())
        };
        Ok(Array { cells })
    }

    /// The number of elements.
    ///
    /// # Examples
    /// ```
    /// assert_eq!(multiprocess::Array::<u8>::new(5)?.len(), 5);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn len(&self) -> usize {
        self.cells.len
    }

    /// Whether the array has no elements.
    ///
    /// # Examples
    /// ```
    /// assert!(multiprocess::Array::<u8>::new(0)?.is_empty());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.cells.len == 0
    }

    fn guard(&self) -> ArrayGuard<'_, T> {
        ArrayGuard {
            _lock: LockGuard::new(self.cells.raw_lock()),
            data: self.cells.data(),
            len: self.cells.len,
            _t: PhantomData,
        }
    }

    /// Locks the array; the guard derefs to `[T]`.
    ///
    /// # Errors
    /// [`OwnerDied`](crate::OwnerDied) (holding the guard) when the previous holder died
    /// holding the lock.
    ///
    /// # Examples
    /// ```
    /// let a = multiprocess::Array::from_slice(&[3, 1, 2])?;
    /// a.lock().unwrap().sort();
    /// assert_eq!(a.to_vec(), [1, 2, 3]);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "get_lock")]
    pub fn lock(&self) -> LockResult<ArrayGuard<'_, T>> {
        let how = self
            .cells
            .raw_lock()
            .lock(None)
            .expect("a lock without a deadline always ends locked");
        wrap(self.guard(), how)
    }

    /// Locks if the lock is free, without waiting. A lock whose holder died is taken over,
    /// as `lock` does.
    ///
    /// # Errors
    /// [`TryLockError::WouldBlock`] when a live holder has it, [`TryLockError::OwnerDied`]
    /// (with the guard) when the previous holder died holding it.
    ///
    /// # Examples
    /// ```
    /// let a = multiprocess::Array::<u8>::new(1)?;
    /// assert!(a.try_lock().is_ok());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn try_lock(&self) -> TryLockResult<ArrayGuard<'_, T>> {
        match self.cells.raw_lock().try_lock() {
            Some(how) => wrap(self.guard(), how).map_err(TryLockError::from),
            None => Err(TryLockError::WouldBlock),
        }
    }

    /// Locks, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`TryLockError::WouldBlock`] when the timeout passed, [`TryLockError::OwnerDied`] when
    /// the previous holder died holding the lock.
    ///
    /// # Examples
    /// ```
    /// let a = multiprocess::Array::<u8>::new(1)?;
    /// assert!(a.lock_timeout(std::time::Duration::from_millis(5)).is_ok());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn lock_timeout(&self, timeout: Duration) -> TryLockResult<ArrayGuard<'_, T>> {
        match self.cells.raw_lock().lock(deadline(timeout)) {
            Some(how) => wrap(self.guard(), how).map_err(TryLockError::from),
            None => Err(TryLockError::WouldBlock),
        }
    }

    /// The element at `index`, read under the lock (`None` past the end).
    ///
    /// # Examples
    /// ```
    /// let a = multiprocess::Array::from_slice(&[5u8])?;
    /// assert_eq!(a.get(0), Some(5));
    /// assert_eq!(a.get(1), None);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn get(&self, index: usize) -> Option<T> {
        self.lock()
            .unwrap_or_else(crate::OwnerDied::into_inner)
            .get(index)
            .copied()
    }

    /// A copy of every element, read under the lock (Python's `a[:]`).
    ///
    /// # Examples
    /// ```
    /// let a = multiprocess::Array::from_slice(&[1u8, 2])?;
    /// assert_eq!(a.to_vec(), vec![1, 2]);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn to_vec(&self) -> Vec<T> {
        self.lock()
            .unwrap_or_else(crate::OwnerDied::into_inner)
            .to_vec()
    }
}

/// The locked elements of an [`Array`]; unlocks when dropped. Not `Send`.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ArrayGuard<'a, T> {
    _lock: LockGuard<'a>,
    data: NonNull<T>,
    len: usize,
    _t: PhantomData<&'a mut [T]>,
}

impl<T> Deref for ArrayGuard<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: as for `ValueGuard`: the lock is held and the `len` elements are in the
        // region.
        #[allow(unsafe_code)]
        unsafe {
            std::slice::from_raw_parts(self.data.as_ptr(), self.len)
        }
    }
}

impl<T> DerefMut for ArrayGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`; the guard is borrowed mutably.
        #[allow(unsafe_code)]
        unsafe {
            std::slice::from_raw_parts_mut(self.data.as_ptr(), self.len)
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for ArrayGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

/// A `T` in shared memory without a lock (Python's `multiprocessing.RawValue`): each
/// [`get`](RawValue::get) and [`set`](RawValue::set) is a copy made of atomic loads or stores,
/// so a `T` wider than 8 bytes read during a write may mix old and new parts.
///
/// # Examples
/// ```
/// let v = multiprocess::RawValue::new(3u64)?;
/// v.set(v.get() + 1);
/// assert_eq!(v.get(), 4);
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct RawValue<T> {
    cells: Cells<T>,
}

serde_impls!(RawValue, Pod, RAW, Some(1));

impl<T: Pod> RawValue<T> {
    /// A new shared value holding `value`.
    ///
    /// # Errors
    /// When the shared memory cannot be created.
    ///
    /// # Examples
    /// ```
    /// let v = multiprocess::RawValue::new(0i8)?;
    /// assert_eq!(v.get(), 0);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn new(value: T) -> io::Result<RawValue<T>> {
        let v = RawValue {
            cells: Cells::new(RAW, 1)?,
        };
        v.set(value);
        Ok(v)
    }

    /// A copy of the value.
    ///
    /// # Examples
    /// ```
    /// assert_eq!(multiprocess::RawValue::new(2u16)?.get(), 2);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "value")]
    pub fn get(&self) -> T {
        let mut out = T::zeroed();
        // SAFETY: one aligned `T` in the live region; `out` is a local `T`.
        #[allow(unsafe_code)]
        unsafe {
            copy_out(self.cells.data().as_ptr(), &mut out, 1)
        };
        atomic::fence(Ordering::Acquire);
        out
    }

    /// Replaces the value.
    ///
    /// # Examples
    /// ```
    /// let v = multiprocess::RawValue::new(2u16)?;
    /// v.set(9);
    /// assert_eq!(v.get(), 9);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set(&self, value: T) {
        atomic::fence(Ordering::Release);
        // SAFETY: one aligned `T` in the live region.
        #[allow(unsafe_code)]
        unsafe {
            copy_in(&value, self.cells.data().as_ptr(), 1)
        };
    }
}

/// An index past the end of a [`RawArray`] (Python's `IndexError`).
///
/// # Examples
/// ```
/// let a = multiprocess::RawArray::<u8>::new(2)?;
/// let e = a.set(2, 1).unwrap_err();
/// assert_eq!(e.to_string(), "index 2 is out of range for an array of 2 elements");
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexError {
    index: usize,
    len: usize,
}

impl fmt::Display for IndexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "index {} is out of range for an array of {} elements",
            self.index, self.len
        )
    }
}

impl std::error::Error for IndexError {}

/// An array of `T` in shared memory without a lock (Python's `multiprocessing.RawArray`).
/// Every access copies elements with atomic loads or stores.
///
/// # Examples
/// ```
/// let a = multiprocess::RawArray::from_slice(&[1.0f32, 2.0])?;
/// a.set(1, 5.0).unwrap();
/// assert_eq!(a.to_vec(), [1.0, 5.0]);
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct RawArray<T> {
    cells: Cells<T>,
}

serde_impls!(RawArray, Pod, RAW, None);

impl<T: Pod> RawArray<T> {
    /// A new array of `len` zeros.
    ///
    /// # Errors
    /// When the shared memory cannot be created (or `len` overflows).
    ///
    /// # Examples
    /// ```
    /// assert_eq!(multiprocess::RawArray::<u32>::new(2)?.to_vec(), [0, 0]);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn new(len: usize) -> io::Result<RawArray<T>> {
        Ok(RawArray {
            cells: Cells::new(RAW, len)?,
        })
    }

    /// A new array holding a copy of `items`.
    ///
    /// # Errors
    /// When the shared memory cannot be created.
    ///
    /// # Examples
    /// ```
    /// assert_eq!(multiprocess::RawArray::from_slice(&[7u8])?.get(0), Some(7));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn from_slice(items: &[T]) -> io::Result<RawArray<T>> {
        let a = RawArray::new(items.len())?;
        a.write(0, items)
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(a)
    }

    /// The number of elements.
    ///
    /// # Examples
    /// ```
    /// assert_eq!(multiprocess::RawArray::<u8>::new(3)?.len(), 3);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn len(&self) -> usize {
        self.cells.len
    }

    /// Whether the array has no elements.
    ///
    /// # Examples
    /// ```
    /// assert!(!multiprocess::RawArray::<u8>::new(3)?.is_empty());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.cells.len == 0
    }

    /// The element at `index` (`None` past the end).
    ///
    /// # Examples
    /// ```
    /// assert_eq!(multiprocess::RawArray::<u8>::new(1)?.get(1), None);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn get(&self, index: usize) -> Option<T> {
        let mut out = [T::zeroed()];
        self.read(index, &mut out).ok()?;
        Some(out[0])
    }

    /// Replaces the element at `index`.
    ///
    /// # Errors
    /// [`IndexError`] past the end.
    ///
    /// # Examples
    /// ```
    /// let a = multiprocess::RawArray::<u8>::new(1)?;
    /// a.set(0, 3).unwrap();
    /// assert!(a.set(1, 3).is_err());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set(&self, index: usize, value: T) -> Result<(), IndexError> {
        self.write(index, &[value])
    }

    fn range(&self, start: usize, n: usize) -> Result<(), IndexError> {
        match start.checked_add(n) {
            Some(end) if end <= self.cells.len => Ok(()),
            _ => Err(IndexError {
                index: start.saturating_add(n).saturating_sub(1).max(start),
                len: self.cells.len,
            }),
        }
    }

    /// Copies elements from `start` on into `out`.
    ///
    /// # Errors
    /// [`IndexError`] when the range passes the end.
    ///
    /// # Examples
    /// ```
    /// let a = multiprocess::RawArray::from_slice(&[1u8, 2, 3])?;
    /// let mut out = [0u8; 2];
    /// a.read(1, &mut out).unwrap();
    /// assert_eq!(out, [2, 3]);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn read(&self, start: usize, out: &mut [T]) -> Result<(), IndexError> {
        self.range(start, out.len())?;
        // SAFETY: the range is inside the array (checked); `out` is a local buffer.
        #[allow(unsafe_code)]
        unsafe {
            copy_out(
                self.cells.data().as_ptr().add(start),
                out.as_mut_ptr(),
                out.len(),
            )
        };
        atomic::fence(Ordering::Acquire);
        Ok(())
    }

    /// Copies `items` into the array from `start` on.
    ///
    /// # Errors
    /// [`IndexError`] when the range passes the end.
    ///
    /// # Examples
    /// ```
    /// let a = multiprocess::RawArray::<u8>::new(3)?;
    /// a.write(1, &[8, 9]).unwrap();
    /// assert_eq!(a.to_vec(), [0, 8, 9]);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn write(&self, start: usize, items: &[T]) -> Result<(), IndexError> {
        self.range(start, items.len())?;
        atomic::fence(Ordering::Release);
        // SAFETY: the range is inside the array (checked).
        #[allow(unsafe_code)]
        unsafe {
            copy_in(
                items.as_ptr(),
                self.cells.data().as_ptr().add(start),
                items.len(),
            )
        };
        Ok(())
    }

    /// A copy of every element.
    ///
    /// # Examples
    /// ```
    /// assert_eq!(multiprocess::RawArray::<i8>::new(2)?.to_vec(), [0, 0]);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn to_vec(&self) -> Vec<T> {
        let mut out = vec![T::zeroed(); self.cells.len];
        let _ = self.read(0, &mut out);
        out
    }
}

mod sealed {
    pub trait Sealed {}
}

/// The std atomic types, which can live in shared memory: [`AtomicValue`] and
/// [`AtomicArray`] hold them. Sealed.
pub trait SharedAtomic: sealed::Sealed + Send + Sync + 'static {}

macro_rules! shared_atomic {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl SharedAtomic for $t {}
    )*};
}
shared_atomic!(
    atomic::AtomicBool,
    atomic::AtomicI8,
    atomic::AtomicI16,
    atomic::AtomicI32,
    atomic::AtomicI64,
    atomic::AtomicIsize,
    AtomicU8,
    AtomicU16,
    AtomicU32,
    AtomicU64,
    atomic::AtomicUsize
);

/// A std atomic in shared memory, e.g. `AtomicValue<AtomicU64>`: it derefs to the atomic, and
/// every operation works across processes (lock-free, no lock).
///
/// # Examples
/// ```
/// use multiprocess::{AtomicValue, Process};
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// fn bump(c: AtomicValue<AtomicU64>) {
///     c.fetch_add(1, Ordering::Relaxed);
/// }
///
/// let c = AtomicValue::new(AtomicU64::new(10))?;
/// Process::builder().start(bump, c.clone())?.join()?;
/// assert_eq!(c.load(Ordering::Relaxed), 11);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct AtomicValue<A> {
    cells: Cells<A>,
}

serde_impls!(AtomicValue, SharedAtomic, ATOMIC, Some(1));

impl<A: SharedAtomic> AtomicValue<A> {
    /// A new shared atomic holding `init`'s value.
    ///
    /// # Errors
    /// When the shared memory cannot be created.
    ///
    /// # Examples
    /// ```
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// let flag = multiprocess::AtomicValue::new(AtomicBool::new(true))?;
    /// assert!(flag.load(Ordering::Relaxed));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn new(init: A) -> io::Result<AtomicValue<A>> {
        let cells = Cells::<A>::new(ATOMIC, 1)?;
        // SAFETY: the aligned data slot of a region nobody else has yet; no reference to it
        // exists yet.
        #[allow(unsafe_code)]
        unsafe {
            cells.data().as_ptr().write(init)
        };
        Ok(AtomicValue { cells })
    }
}

impl<A: SharedAtomic> Deref for AtomicValue<A> {
    type Target = A;
    fn deref(&self) -> &A {
        // SAFETY: an aligned `A` in the live region; atomics are sound to share.
        #[allow(unsafe_code)]
        unsafe {
            self.cells.data().as_ref()
        }
    }
}

/// An array of std atomics in shared memory, zero-initialized; it derefs to `[A]`.
///
/// # Examples
/// ```
/// use std::sync::atomic::{AtomicU32, Ordering};
/// let a = multiprocess::AtomicArray::<AtomicU32>::new(4)?;
/// a[2].fetch_add(5, Ordering::Relaxed);
/// assert_eq!(a[2].load(Ordering::Relaxed), 5);
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct AtomicArray<A> {
    cells: Cells<A>,
}

serde_impls!(AtomicArray, SharedAtomic, ATOMIC, None);

impl<A: SharedAtomic> AtomicArray<A> {
    /// A new array of `len` zeroed atomics.
    ///
    /// # Errors
    /// When the shared memory cannot be created (or `len` overflows).
    ///
    /// # Examples
    /// ```
    /// use std::sync::atomic::AtomicI64;
    /// assert_eq!(multiprocess::AtomicArray::<AtomicI64>::new(8)?.len(), 8);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn new(len: usize) -> io::Result<AtomicArray<A>> {
        Ok(AtomicArray {
            cells: Cells::new(ATOMIC, len)?,
        })
    }
}

impl<A: SharedAtomic> Deref for AtomicArray<A> {
    type Target = [A];
    fn deref(&self) -> &[A] {
        // SAFETY: `len` aligned `A`s in the live region (zero is a valid atomic); atomics are
        // sound to share.
        #[allow(unsafe_code)]
        unsafe {
            std::slice::from_raw_parts(self.cells.data().as_ptr(), self.cells.len)
        }
    }
}
