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
use std::os::fd::OwnedFd;
use std::panic::{catch_unwind, AssertUnwindSafe};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::connection::Connection;
use crate::handle;
use crate::pool::wire;

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
        "a multiprocess target must be a function item or a closure that captures nothing: \
         pass the data it needs as the argument instead"
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

/// The seed's "subclass `Process` and override `run`" style: a serde value that knows what to
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

/// The results of one unit, as the worker encodes them for `R`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum UnitOut<R> {
    /// Every item returned: the values, in order (the fast path).
    All(Vec<R>),
    /// Some item panicked: per item, the value or the panic message.
    Mixed(Vec<Result<R, String>>),
    /// The unit could not run at all (its argument did not decode, say).
    Failed(String),
}

impl<R> UnitOut<R> {
    /// When `bytes` (in the pool's wire format) hold `UnitOut::All`, the bytes of its
    /// `Vec<R>`: the variant index is a `u32`, and `All` is variant 0.
    pub(crate) fn all_values(bytes: &[u8]) -> Option<&[u8]> {
        match bytes.split_first_chunk::<4>() {
            Some(([0, 0, 0, 0], rest)) => Some(rest),
            _ => None,
        }
    }
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
    let items: Vec<A> = match wire::decode(args, fds) {
        Ok(a) => a,
        Err(e) => {
            return encode_unit::<R>(
                &UnitOut::Failed(format!("cannot decode the task's argument: {e}")),
                out,
            )
        }
    };
    // SAFETY: as in `entry`: `F` is zero-sized (asserted in `pool_entry_offset`, the only way
    // this function is named), inhabited, `Copy`, and has no validity requirements.
    let f: F = unsafe { std::ptr::NonNull::<F>::dangling().as_ptr().read() };
    let mut all: Vec<R> = Vec::with_capacity(items.len());
    // Only once an item panicked: per item, the value or the panic message.
    let mut mixed: Option<Vec<Result<R, String>>> = None;
    for item in items {
        let r =
            catch_unwind(AssertUnwindSafe(|| f(item))).map_err(|payload| panic_message(&*payload));
        match (&mut mixed, r) {
            (None, Ok(v)) => all.push(v),
            (None, Err(msg)) => {
                let mut m: Vec<Result<R, String>> = all.drain(..).map(Ok).collect();
                m.push(Err(msg));
                mixed = Some(m);
            }
            (Some(m), r) => m.push(r),
        }
    }
    match mixed {
        Some(m) => encode_unit(&UnitOut::Mixed(m), out),
        None => encode_unit(&UnitOut::All(all), out),
    }
}

/// Appends `unit` to `out`; a failure to encode it (or to keep its handles) is encoded as
/// [`UnitOut::Failed`] instead.
fn encode_unit<R: Serialize>(unit: &UnitOut<R>, out: &mut Vec<u8>) -> Vec<OwnedFd> {
    let at = out.len();
    let why = match wire::encode_into_vec(unit, out) {
        Ok(raw) => {
            // The values are dropped after this call: keep their descriptors open by
            // duplicates.
            // SAFETY: `unit` is borrowed for this whole call, so its descriptors are open.
            let borrowed = unsafe { handle::borrow_all(&raw) };
            match borrowed
                .iter()
                .map(|fd| fd.try_clone_to_owned())
                .collect::<std::io::Result<Vec<OwnedFd>>>()
            {
                Ok(fds) => return fds,
                Err(e) => format!("cannot pass a handle in the result: {e}"),
            }
        }
        Err(e) => format!("cannot serialize the task's return value: {e}"),
    };
    out.truncate(at);
    let _ = wire::encode_into_vec(&UnitOut::<R>::Failed(why), out);
    Vec::new()
}
