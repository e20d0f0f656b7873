//! Targets: how a child finds and runs "the function itself".
//!
//! A target is a function item or a closure that captures nothing: a zero-sized type `F`
//! implementing `Fn(A) -> R`. For each `(F, A, R)` the compiler makes one [`entry`] function;
//! its address, as an offset from [`anchor`], names the target in another process running the
//! same executable: a forked child, a child of the fork server, a re-executed copy of the
//! program, an MPI rank. The offset is position-independent (ASLR moves the whole image, not
//! one function against another). A build id travels beside it, so a child running another
//! binary refuses with a clear error instead of jumping into unrelated code.
//!
//! A capturing closure is refused at compile time by a post-monomorphisation assertion
//! ([`AssertTarget`]); its captures could not be rebuilt in another process.

#![allow(unsafe_code)]

use std::any::Any;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::panic::{catch_unwind, AssertUnwindSafe};

use bytemuck::Pod;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::connection::Connection;
use crate::handle;
use crate::wire;

/// What a child reports on its status channel.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Status {
    /// A spawned child reached the crate (handshake).
    Started {
        /// The child's pid.
        pid: i32,
    },
    /// The target returned; the encoded value follows as bytes, its handles as the frame's fds.
    Value(Vec<u8>),
    /// The target panicked, with this message.
    Panicked(String),
    /// The child could not run the target (bad arguments, binary mismatch, ...).
    Failed(String),
    /// Sent by the fork server after reaping the child: the raw wait status.
    Exited(i32),
}

/// The monomorphised entry of one target type: decodes the argument, runs the target, sends
/// the outcome on `status`, and returns the process exit code.
pub(crate) type Entry = fn(args: &[u8], fds: Vec<OwnedFd>, status: &Connection) -> i32;

/// The fixed point that entry offsets are measured from.
#[inline(never)]
pub(crate) fn anchor() -> u64 {
    std::hint::black_box(0x6d75_6c74_6970_726f)
}

fn anchor_addr() -> i64 {
    let f: fn() -> u64 = anchor;
    f as usize as i64
}

/// Compile-time check that a target captures nothing.
pub(crate) struct AssertTarget<F>(PhantomData<F>);

impl<F> AssertTarget<F> {
    pub(crate) const ZERO_SIZED: () = assert!(
        std::mem::size_of::<F>() == 0,
        "a multiprocess target must be a function item (`my_fn`) or a closure that captures \
         nothing; this one is a `fn` pointer or a closure that captures (a `move` closure, or \
         one using a local variable). Pass the data it needs as the argument instead, and name \
         the function itself rather than a `fn` pointer (the crate docs explain targets)"
    );
}

/// The offset of the entry of target type `F` from the anchor.
pub(crate) fn entry_offset<F, A, R>() -> i64
where
    F: Fn(A) -> R + Copy + Send + Sync + 'static,
    A: DeserializeOwned + 'static,
    R: Serialize + 'static,
{
    #[allow(clippy::let_unit_value)]
    let () = AssertTarget::<F>::ZERO_SIZED;
    let entry: Entry = entry::<F, A, R>;
    offset_of(entry as usize)
}

/// The offset of a code address from the anchor.
fn offset_of(addr: usize) -> i64 {
    (addr as i64).wrapping_sub(anchor_addr())
}

/// The code address at `offset` from the anchor.
fn addr_at(offset: i64) -> usize {
    anchor_addr().wrapping_add(offset) as usize
}

/// The entry at `offset` from the anchor.
///
/// # Safety
/// `offset` must come from [`entry_offset`] in a process running this same executable (checked
/// by the caller through the build id).
pub(crate) unsafe fn entry_at(offset: i64) -> Entry {
    let addr = addr_at(offset);
    // SAFETY: by the caller's guarantee, `addr` is the address of an `Entry` in this image.
    unsafe { std::mem::transmute::<usize, Entry>(addr) }
}

fn entry<F, A, R>(args: &[u8], fds: Vec<OwnedFd>, status: &Connection) -> i32
where
    F: Fn(A) -> R + Copy + Send + Sync + 'static,
    A: DeserializeOwned + 'static,
    R: Serialize + 'static,
{
    let args: A = match handle::decode(args, fds) {
        Ok(a) => a,
        Err(e) => {
            let _ = status.send(&Status::Failed(format!(
                "cannot decode the target's argument: {e}"
            )));
            return 1;
        }
    };
    // SAFETY: `F` is zero-sized (asserted at compile time in `entry_offset`, the only way this
    // function is named), and the parent held a value of it, so it is inhabited; a zero-sized
    // read from a dangling, aligned pointer is valid. Fn items and closures have no other
    // validity requirements, and `F: Copy` means no destructor is skipped or doubled.
    let f: F = unsafe { std::ptr::NonNull::<F>::dangling().as_ptr().read() };
    match catch_unwind(AssertUnwindSafe(move || f(args))) {
        Ok(value) => send_value(status, &value),
        Err(payload) => {
            let _ = status.send(&Status::Panicked(panic_message(&*payload)));
            1
        }
    }
}

/// Sends a target's return value (with its handles) as a `Status::Value`.
pub(crate) fn send_value<R: Serialize + ?Sized>(status: &Connection, value: &R) -> i32 {
    match handle::encode(value) {
        Ok(inner) => {
            let outer = match handle::encode(&Status::Value(inner.bytes.clone())) {
                Ok(o) => o,
                Err(e) => {
                    let _ = status.send(&Status::Failed(e.0));
                    return 1;
                }
            };
            // SAFETY: `value` is borrowed for this call, so its descriptors are open.
            let fds = unsafe { inner.borrowed_fds() };
            // A parent that stopped listening is not the child's failure.
            let _ = status.send_encoded(&outer.bytes, &fds);
            0
        }
        Err(e) => {
            let _ = status.send(&Status::Failed(format!(
                "cannot serialize the target's return value: {e}"
            )));
            1
        }
    }
}

/// Runs `f`, which says why it failed; a panic in it becomes such a failure too, named
/// `"{what} panicked: {message}"`. For user code (a `Serialize` or `Deserialize`) that runs on
/// a thread that must go on, such as the pool's result handler.
pub(crate) fn unless_panic<T>(
    what: &str,
    f: impl FnOnce() -> Result<T, String>,
) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|p| Err(format!("{what} panicked: {}", panic_message(&*p))))
}

/// The message of a panic payload, as the default hook would print it.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "Box<dyn Any>".to_string()
    }
}

/// Python's "subclass `Process` and override `run`" style: a serde value that knows what to
/// do in the child.
///
/// # Examples
/// ```
/// use multiprocess::{Process, Run};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Countdown {
///     from: u32,
/// }
///
/// impl Run for Countdown {
///     type Output = Vec<u32>;
///     fn run(self) -> Vec<u32> {
///         (0..=self.from).rev().collect()
///     }
/// }
///
/// let mut p = Process::from_run(Countdown { from: 3 });
/// p.start()?;
/// assert_eq!(p.join_result()?, [3, 2, 1, 0]);
/// # Ok::<(), multiprocess::ProcessError>(())
/// ```
pub trait Run: Serialize + DeserializeOwned + 'static {
    /// What `run` returns to the parent.
    type Output: Serialize + DeserializeOwned + 'static;
    /// The body of the child process.
    fn run(self) -> Self::Output;
}

/// The target that runs a [`Run`] value.
pub(crate) fn run_target<T: Run>(value: T) -> T::Output {
    value.run()
}

// ---------------------------------------------------------------------------------------------
// Pool tasks

/// The results of one unit, decoded.
///
/// # Layout (the pool's wire format, see `pool/wire.rs`)
/// A `u32` variant, then:
/// - `ALL` (0): a `u64` count `n`, then the `n` values (exactly the wire encoding of a
///   `Vec<R>`: the fast path, decoded straight into a map's output);
/// - `MIXED` (1): a `u64` count `n`, the values of the items that returned (in order), then the
///   list of the items that panicked (`Vec<(u64 item, String message)>`), then a `u64`: the
///   offset of that list from the start of the unit. The worker writes values as they come
///   and only learns at the end that some item panicked, so the list goes last;
/// - `FAILED` (2): a `String`: the unit could not run at all (its argument did not decode,
///   say).
#[derive(Debug)]
pub(crate) enum UnitOut<R> {
    /// Every item returned: the values, in order (the fast path).
    All(Vec<R>),
    /// Some item panicked: per item, the value or the panic message.
    Mixed(Vec<Result<R, String>>),
    /// The unit could not run at all (its argument did not decode, say).
    Failed(String),
}

pub(crate) const ALL: u32 = 0;
const MIXED: u32 = 1;
pub(crate) const FAILED: u32 = 2;
/// Plain-data units only (`pod_entry`): a `(u64 item, String message)`, the item that
/// panicked (the unit stopped there).
pub(crate) const PANICKED: u32 = 3;

impl<R> UnitOut<R> {
    /// When `bytes` hold `UnitOut::All`, the bytes of its `Vec<R>`.
    pub(crate) fn all_values(bytes: &[u8]) -> Option<&[u8]> {
        match bytes.split_first_chunk::<4>() {
            Some((v, rest)) if u32::from_le_bytes(*v) == ALL => Some(rest),
            _ => None,
        }
    }
}

impl<R: DeserializeOwned> UnitOut<R> {
    /// Decodes a unit's results.
    pub(crate) fn decode(bytes: &[u8], fds: Vec<OwnedFd>) -> Result<UnitOut<R>, String> {
        let bad = |e: wire::WireError| e.into_message();
        let Some((v, rest)) = bytes.split_first_chunk::<4>() else {
            return Err("empty unit results".into());
        };
        match u32::from_le_bytes(*v) {
            ALL => wire::decode(rest, fds).map(UnitOut::All).map_err(bad),
            FAILED => wire::decode(rest, fds).map(UnitOut::Failed).map_err(bad),
            MIXED => {
                let short = || "unit results cut short".to_string();
                let (n, values) = rest.split_first_chunk::<8>().ok_or_else(short)?;
                let n = u64::from_le_bytes(*n);
                let (list_at, _) = bytes
                    .len()
                    .checked_sub(8)
                    .map(|e| bytes.split_at(e))
                    .ok_or_else(short)?;
                let offset =
                    u64::from_le_bytes(bytes[list_at.len()..].try_into().map_err(|_| short())?);
                let offset = usize::try_from(offset).map_err(|_| short())?;
                if offset < 12 || offset > list_at.len() {
                    return Err("bad unit results".into());
                }
                let panics: Vec<(u64, String)> =
                    wire::decode(&bytes[offset..list_at.len()], Vec::new()).map_err(bad)?;
                let ok = n
                    .checked_sub(panics.len() as u64)
                    .and_then(|m| usize::try_from(m).ok())
                    .ok_or("bad unit results")?;
                let values = &values[..offset - 12];
                let values: Vec<R> = wire::decode_n(values, fds, ok).map_err(bad)?;
                let mut values = values.into_iter();
                let mut panics = panics.into_iter().peekable();
                let mut all = Vec::with_capacity(values.len() + panics.len());
                for k in 0..n {
                    match panics.next_if(|(i, _)| *i == k) {
                        Some((_, message)) => all.push(Err(message)),
                        None => all.push(Ok(values.next().ok_or("bad unit results")?)),
                    }
                }
                if panics.next().is_some() {
                    return Err("bad unit results".into());
                }
                Ok(UnitOut::Mixed(all))
            }
            other => Err(format!("unknown unit results kind {other}")),
        }
    }
}

/// Appends `UnitOut::Failed(message)` to `out`.
pub(crate) fn encode_failed(message: String, out: &mut Vec<u8>) {
    out.extend_from_slice(&FAILED.to_le_bytes());
    let _ = wire::encode_into_vec(&message, out);
}

/// The monomorphised pool entry of one target type: decodes a chunk of arguments (`Vec<A>`,
/// in the pool's wire format), runs the target on each inside `catch_unwind`, and appends the
/// results, encoded as a [`UnitOut`], to `out`. Returns the descriptors of the handles inside
/// the results (duplicates: the values are dropped on return).
pub(crate) type PoolEntry = fn(args: &[u8], fds: Vec<OwnedFd>, out: &mut Vec<u8>) -> Vec<OwnedFd>;

/// The offset of the pool entry of target type `F` from the anchor.
pub(crate) fn pool_entry_offset<F, A, R>() -> i64
where
    F: Fn(A) -> R + Copy + Send + Sync + 'static,
    A: DeserializeOwned + 'static,
    R: Serialize + 'static,
{
    #[allow(clippy::let_unit_value)]
    let () = AssertTarget::<F>::ZERO_SIZED;
    let entry: PoolEntry = pool_entry::<F, A, R>;
    offset_of(entry as usize)
}

/// The pool entry at `offset` from the anchor.
///
/// # Safety
/// `offset` must come from [`pool_entry_offset`] in a process running this same executable
/// (a pool worker is started from its pool's executable, under any start method).
pub(crate) unsafe fn pool_entry_at(offset: i64) -> PoolEntry {
    let addr = addr_at(offset);
    // SAFETY: by the caller's guarantee, `addr` is the address of a `PoolEntry` in this image.
    unsafe { std::mem::transmute::<usize, PoolEntry>(addr) }
}

fn pool_entry<F, A, R>(args: &[u8], fds: Vec<OwnedFd>, out: &mut Vec<u8>) -> Vec<OwnedFd>
where
    F: Fn(A) -> R + Copy + Send + Sync + 'static,
    A: DeserializeOwned + 'static,
    R: Serialize + 'static,
{
    let at = out.len();
    // Values whose descriptors the encoding borrowed, alive until they are duplicated below.
    // A type without drop glue owns no descriptor, so its values need no keeping.
    let mut keep: Vec<R> = Vec::new();
    let (ran, raw) =
        handle::collecting(|| handle::receiving(fds, || run_unit::<F, A, R>(args, out, &mut keep)));
    let why = match ran {
        // SAFETY: the values whose descriptors were collected are in `keep` (or own none).
        Ok(()) => match unsafe { handle::borrow_all(&raw) }
            .iter()
            .map(|fd| fd.try_clone_to_owned())
            .collect::<std::io::Result<Vec<OwnedFd>>>()
        {
            Ok(fds) => return fds,
            Err(e) => format!("cannot pass a handle in the result: {e}"),
        },
        Err(why) => why,
    };
    out.truncate(at);
    encode_failed(why, out);
    Vec::new()
}

/// Decodes the items one at a time, runs the target on each inside `catch_unwind`, and
/// encodes each value as it comes: the unit's arguments and values are never held as whole
/// vectors (one pass over the memory instead of four).
fn run_unit<F, A, R>(args: &[u8], out: &mut Vec<u8>, keep: &mut Vec<R>) -> Result<(), String>
where
    F: Fn(A) -> R + Copy + Send + Sync + 'static,
    A: DeserializeOwned + 'static,
    R: Serialize + 'static,
{
    // SAFETY: as in `entry`: `F` is zero-sized (asserted in `pool_entry_offset`, the only way
    // this function is named), inhabited, `Copy`, and has no validity requirements.
    let f: F = unsafe { std::ptr::NonNull::<F>::dangling().as_ptr().read() };
    let bad_arg = |e: wire::WireError| format!("cannot decode the task's argument: {e}");
    // Taken inside the unit's handle scopes: the task runs with them hidden.
    let depths = handle::depths();
    let at = out.len();
    let mut de = wire::De::new(args);
    let n = de.seq_len().map_err(bad_arg)?;
    out.extend_from_slice(&ALL.to_le_bytes());
    out.extend_from_slice(&(n as u64).to_le_bytes());
    let mut panics: Vec<(u64, String)> = Vec::new();
    {
        let mut ser = wire::Ser { out: &mut *out };
        for k in 0..n {
            let item = A::deserialize(&mut de).map_err(bad_arg)?;
            let shown = handle::hide(depths);
            let ran = catch_unwind(AssertUnwindSafe(|| f(item)));
            handle::unhide(shown);
            match ran {
                Ok(value) => {
                    value
                        .serialize(&mut ser)
                        .map_err(|e| format!("cannot serialize the task's return value: {e}"))?;
                    if std::mem::needs_drop::<R>() {
                        keep.push(value);
                    }
                }
                Err(payload) => {
                    panics.push((k as u64, panic_message(&*payload)));
                }
            }
        }
    }
    if !de.is_empty() {
        return Err(bad_arg(wire::WireError::new("bytes were left over")));
    }
    if !panics.is_empty() {
        out[at..at + 4].copy_from_slice(&MIXED.to_le_bytes());
        let offset = (out.len() - at) as u64;
        wire::encode_into_vec(&panics, out).map_err(|e| e.into_message())?;
        out.extend_from_slice(&offset.to_le_bytes());
    }
    Ok(())
}

/// The offsets of the two plain-data pool entries of target type `F` (`Pool::map_pod`): the
/// [`PoolEntry`] (which appends its results to a buffer, as every entry does: the cluster
/// pool's ranks run it) and the [`PodEntry`] (which writes its values in place: local workers
/// run it, straight into their outbox).
pub(crate) fn pod_entry_offsets<F, A, R>() -> (i64, i64)
where
    F: Fn(A) -> R + Copy + Send + Sync + 'static,
    A: Pod,
    R: Pod,
{
    #[allow(clippy::let_unit_value)]
    let () = AssertTarget::<F>::ZERO_SIZED;
    let entry: PoolEntry = pod_entry::<F, A, R>;
    let direct: PodEntry = pod_direct::<F, A, R>;
    (offset_of(entry as usize), offset_of(direct as usize))
}

/// A plain-data entry: runs the target on the items of `args` (`u64 n`, then `n` values of
/// `A` as their bytes, read in place), writing each value's bytes in place into `dst`, which
/// must be exactly `n` values of `R` long. A panic stops the unit at that item (as a chunk of
/// Python's `map` stops at its first exception). Nothing runs unless `args` and `dst` are
/// exactly the sizes they should be.
pub(crate) type PodEntry = fn(args: &[u8], dst: &mut [MaybeUninit<u8>]) -> PodRan;

/// How a plain-data unit ran.
#[derive(Debug)]
pub(crate) enum PodRan {
    /// Every value is in `dst`.
    Done,
    /// Item `k` panicked with this message; the unit stopped there.
    Panicked(u64, String),
    /// The unit could not run.
    Failed(String),
}

impl PodRan {
    /// Appends this outcome's results, but for `Done` (whose `ALL, n` header is the caller's to
    /// write next to the values), to `out`.
    pub(crate) fn encode_failure(self, out: &mut Vec<u8>) {
        match self {
            PodRan::Done => {}
            PodRan::Panicked(k, message) => {
                out.extend_from_slice(&PANICKED.to_le_bytes());
                // A `(u64, String)` always encodes.
                let _ = wire::encode_into_vec(&(k, message), out);
            }
            PodRan::Failed(message) => encode_failed(message, out),
        }
    }
}

/// The number of items in plain-data arguments, or `None` if `args` are not `u64 n` then `n`
/// values of `size` bytes.
pub(crate) fn pod_count(args: &[u8], size: usize) -> Option<usize> {
    let (n, body) = args.split_first_chunk::<8>()?;
    let n = usize::try_from(u64::from_le_bytes(*n)).ok()?;
    (n.checked_mul(size) == Some(body.len())).then_some(n)
}

/// The pool entry at `offset` from the anchor, as a plain-data entry.
///
/// # Safety
/// `offset` must be the second offset of [`pod_entry_offsets`] in a process running this same
/// executable.
pub(crate) unsafe fn pod_entry_at(offset: i64) -> PodEntry {
    let addr = addr_at(offset);
    // SAFETY: by the caller's guarantee, `addr` is the address of a `PodEntry` in this image.
    unsafe { std::mem::transmute::<usize, PodEntry>(addr) }
}

/// The [`PoolEntry`] of a plain-data target: as [`run_pod`].
fn pod_entry<F, A, R>(args: &[u8], fds: Vec<OwnedFd>, out: &mut Vec<u8>) -> Vec<OwnedFd>
where
    F: Fn(A) -> R + Copy + Send + Sync + 'static,
    A: Pod,
    R: Pod,
{
    if !fds.is_empty() {
        encode_failed(bad_pod_args(), out);
        return Vec::new();
    }
    let values = pod_count(args, std::mem::size_of::<A>()).map_or(0, |n| {
        (n as u64).saturating_mul(std::mem::size_of::<R>() as u64)
    });
    run_pod(pod_direct::<F, A, R>, values, args, out);
    Vec::new()
}

/// Runs a plain-data unit whose values take `values` bytes, appending its results to `out`:
/// `ALL, u64 n`, then the values, written in place; or `PANICKED` or `FAILED`.
pub(crate) fn run_pod(entry: PodEntry, values: u64, args: &[u8], out: &mut Vec<u8>) {
    let Some((n, _)) = args.split_first_chunk::<8>() else {
        return encode_failed(bad_pod_args(), out);
    };
    let Some(len) = usize::try_from(values)
        .ok()
        .filter(|&len| len <= MAX_POD_RESULTS)
    else {
        return encode_failed(too_many_pod_results(u64::from_le_bytes(*n)), out);
    };
    let at = out.len();
    out.extend_from_slice(&ALL.to_le_bytes());
    out.extend_from_slice(n);
    let base = out.len();
    out.reserve(len);
    match entry(args, &mut out.spare_capacity_mut()[..len]) {
        // SAFETY: `Done` means all `len` bytes after `base` were written.
        PodRan::Done => unsafe { out.set_len(base + len) },
        failed => {
            out.truncate(at);
            failed.encode_failure(out);
        }
    }
}

fn bad_pod_args() -> String {
    "cannot decode the task's argument: the bytes are not the plain-data items they claim to be"
        .into()
}

fn too_many_pod_results(n: u64) -> String {
    format!("the results of {n} items exceed {MAX_POD_RESULTS} bytes: use a smaller chunksize")
}

/// The [`PodEntry`] of target type `F`.
fn pod_direct<F, A, R>(args: &[u8], dst: &mut [MaybeUninit<u8>]) -> PodRan
where
    F: Fn(A) -> R + Copy + Send + Sync + 'static,
    A: Pod,
    R: Pod,
{
    // SAFETY: as in `run_unit`: `F` is zero-sized (asserted in `pod_entry_offsets`, the only
    // way this function is named), inhabited, `Copy`, and has no validity requirements.
    let f: F = unsafe { std::ptr::NonNull::<F>::dangling().as_ptr().read() };
    let (asz, rsz) = (std::mem::size_of::<A>(), std::mem::size_of::<R>());
    let Some(n) = pod_count(args, asz) else {
        return PodRan::Failed(bad_pod_args());
    };
    match n.checked_mul(rsz) {
        Some(len) if len == dst.len() => {}
        Some(len) if len > MAX_POD_RESULTS => {
            return PodRan::Failed(too_many_pod_results(n as u64))
        }
        _ => return PodRan::Failed("the results do not fit the space made for them".into()),
    }
    let body = &args[8..];
    let out = dst.as_mut_ptr().cast::<u8>();
    let mut k = 0;
    let ran = catch_unwind(AssertUnwindSafe(|| {
        while k < n {
            let a = match asz {
                0 => A::zeroed(),
                _ => bytemuck::pod_read_unaligned(&body[k * asz..(k + 1) * asz]),
            };
            let r = f(a);
            // SAFETY: `k < n`, so the `rsz` bytes at `k * rsz` are inside `dst` (`n * rsz`
            // bytes, checked above), which this function borrows mutably.
            unsafe { out.add(k * rsz).cast::<R>().write_unaligned(r) };
            k += 1;
        }
    }));
    match ran {
        Ok(()) => PodRan::Done,
        Err(payload) => PodRan::Panicked(k as u64, panic_message(&*payload)),
    }
}

/// The most bytes of results one plain-data unit may make (the pool keeps its units far
/// smaller; this bounds what a malformed unit could make a worker allocate).
pub(crate) const MAX_POD_RESULTS: usize = 1 << 30;
