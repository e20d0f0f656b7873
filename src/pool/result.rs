//! Where results land: `AsyncResult` (apply_async, map_async) and the shared state of the
//! lazy iterators (imap, imap_unordered).

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::os::fd::OwnedFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytemuck::Pod;
use serde::de::DeserializeOwned;

use super::error::{Kind, PoolError};
use crate::task::{self, UnitOut};
use crate::wire;

/// The receiving end of a unit of work, type-erased for the pool's result handler.
pub(crate) trait Sink: Send + Sync {
    /// The encoded `UnitOut<R>` of items `start..start + count`, from worker `pid`.
    fn deliver(&self, start: usize, count: usize, bytes: &[u8], fds: Vec<OwnedFd>, pid: i32);
    /// Items `start..start + count` failed with `err`.
    fn fail(&self, start: usize, count: usize, err: PoolError);
}

/// The outcome of one unit, decoded.
enum Chunk<R> {
    Values(Vec<R>),
    Mixed(Vec<Result<R, PoolError>>),
    Failed(PoolError),
}

fn decode_chunk<R: DeserializeOwned>(
    start: usize,
    count: usize,
    bytes: &[u8],
    fds: Vec<OwnedFd>,
    pid: i32,
) -> Chunk<R> {
    // The result's `Deserialize` runs on the pool's result handler thread: a panic in it is
    // this chunk's decoding error, not the end of the thread (and of every wait on it).
    match task::unless_panic("decoding the result", || UnitOut::<R>::decode(bytes, fds)) {
        Ok(UnitOut::All(v)) if v.len() == count => Chunk::Values(v),
        Ok(UnitOut::Mixed(v)) if v.len() == count => Chunk::Mixed(
            v.into_iter()
                .enumerate()
                .map(|(i, r)| {
                    r.map_err(|message| {
                        PoolError::new(Kind::Panicked { pid, message }).at(start + i, 1)
                    })
                })
                .collect(),
        ),
        Ok(UnitOut::Failed(message)) => {
            Chunk::Failed(PoolError::new(Kind::Failed { pid, message }).at(start, count))
        }
        Ok(_) => Chunk::Failed(wrong_count(pid).at(start, count)),
        Err(e) => Chunk::Failed(PoolError::new(Kind::Decode(e)).at(start, count)),
    }
}

fn wrong_count(pid: i32) -> PoolError {
    PoolError::new(Kind::Decode(format!(
        "worker {pid} returned the wrong number of results"
    )))
}

/// A success callback of a map (an `apply_async` one is wrapped to take the one value).
pub(crate) type OnSuccess<R> = Box<dyn FnOnce(&[R]) + Send>;
/// An error callback.
pub(crate) type OnError = Box<dyn FnOnce(&PoolError) + Send>;

/// Runs a user callback; a panic in it is reported on stderr and goes no further.
fn run_callback(f: impl FnOnce()) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(f)) {
        eprintln!(
            "multiprocess: a pool callback panicked (ignored): {}",
            task::panic_message(&*payload)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// map_async / apply_async

struct MapState<R> {
    /// The values of items `0..next`, in order: each chunk that arrives in order (the usual
    /// case) is decoded straight onto the end, so no chunk is held or copied apart.
    out: Vec<R>,
    next: usize,
    /// Chunks that arrived out of order (or failed), by first item.
    chunks: BTreeMap<usize, Chunk<R>>,
    done: usize,
    outcome: Option<Result<Vec<R>, PoolError>>,
    finished: bool,
    taken: bool,
    on_success: Option<OnSuccess<R>>,
    on_error: Option<OnError>,
    /// Tasks awaiting this result, woken by the result handler when it finishes.
    wakers: Vec<Waker>,
}

/// Keeps `waker` in `wakers` (once: a task polled again with the same waker is not added
/// twice).
fn remember(wakers: &mut Vec<Waker>, waker: &Waker) {
    if !wakers.iter().any(|w| w.will_wake(waker)) {
        wakers.push(waker.clone());
    }
}

/// The shared state of one `map_async` (or `apply_async`: a map of one item).
pub(crate) struct MapShared<R> {
    st: Mutex<MapState<R>>,
    cv: Condvar,
    total: usize,
    completed: AtomicUsize,
    codec: Codec<R>,
}

/// How a map's units of results are decoded: from the wire format (any serde value), or as
/// the values' own bytes (`Pool::map_pod`, see `task::pod_entry`).
struct Codec<R> {
    /// Appends the values of an `ALL` unit (its bytes after the kind) onto the output.
    append: AppendFn<R>,
    /// Decodes a unit of any kind (`start, count, bytes, fds, pid`), for when it cannot go
    /// straight onto the output.
    chunk: ChunkFn<R>,
}

/// `(output, bytes, descriptors, count)`: `count` is the number of values the unit holds.
type AppendFn<R> = fn(&mut Vec<R>, &[u8], Vec<OwnedFd>, usize) -> Result<(), String>;
type ChunkFn<R> = fn(usize, usize, &[u8], Vec<OwnedFd>, i32) -> Chunk<R>;

/// (The count is checked after decoding, by the caller.)
fn wire_append<R: DeserializeOwned>(
    out: &mut Vec<R>,
    values: &[u8],
    fds: Vec<OwnedFd>,
    _count: usize,
) -> Result<(), String> {
    wire::decode_seed(
        values,
        fds,
        wire::Append(out),
        std::any::type_name::<Vec<R>>,
    )
    .map_err(|e| e.into_message())
}

/// Appends the values of a plain-data unit (`u64 n`, then `n` values as their bytes) onto
/// `out`, after checking that they are the unit's `count` values and the bytes exactly that
/// many (a worker's count is checked before it can make this process loop or allocate).
fn pod_append<R: Pod>(
    out: &mut Vec<R>,
    values: &[u8],
    fds: Vec<OwnedFd>,
    count: usize,
) -> Result<(), String> {
    let bad = || "malformed plain-data results".to_string();
    let (n, bytes) = values.split_first_chunk::<8>().ok_or_else(bad)?;
    let n = usize::try_from(u64::from_le_bytes(*n)).map_err(|_| bad())?;
    if n != count {
        return Err(format!("a worker returned {n} values for {count} items"));
    }
    if !fds.is_empty() || n.checked_mul(std::mem::size_of::<R>()) != Some(bytes.len()) {
        return Err(bad());
    }
    if std::mem::size_of::<R>() == 0 {
        out.extend(std::iter::repeat_with(R::zeroed).take(n));
        return Ok(());
    }
    out.reserve(n);
    let spare = &mut out.spare_capacity_mut()[..n];
    // SAFETY: `spare` is `n` values of `R` (`size_of::<R>() * n == bytes.len()`, checked),
    // which `MaybeUninit<R>` lays out as `R`; the source is a separate borrowed buffer.
    #[allow(unsafe_code)]
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), spare.as_mut_ptr().cast::<u8>(), bytes.len());
    }
    // SAFETY: the `n` values after the length were all written above, and any bytes are a
    // valid `R` (`R: Pod`).
    #[allow(unsafe_code)]
    unsafe {
        out.set_len(out.len() + n);
    }
    Ok(())
}

/// Decodes a plain-data unit of any kind: `ALL` as in `pod_append`, `FAILED` with its
/// message, `PANICKED` with the item that panicked and its message.
fn pod_chunk<R: Pod>(
    start: usize,
    count: usize,
    bytes: &[u8],
    fds: Vec<OwnedFd>,
    pid: i32,
) -> Chunk<R> {
    let bad = |e: String| Chunk::Failed(PoolError::new(Kind::Decode(e)).at(start, count));
    let Some((kind, rest)) = bytes.split_first_chunk::<4>() else {
        return bad("empty unit results".into());
    };
    match u32::from_le_bytes(*kind) {
        task::ALL => {
            let mut values = Vec::new();
            match pod_append(&mut values, rest, fds, count) {
                Ok(()) if values.len() == count => Chunk::Values(values),
                Ok(()) => Chunk::Failed(wrong_count(pid).at(start, count)),
                Err(e) => bad(e),
            }
        }
        task::FAILED => match wire::decode::<String>(rest, fds) {
            Ok(message) => {
                Chunk::Failed(PoolError::new(Kind::Failed { pid, message }).at(start, count))
            }
            Err(e) => bad(e.into_message()),
        },
        task::PANICKED => match wire::decode::<(u64, String)>(rest, fds) {
            Ok((k, message)) if k < count as u64 => Chunk::Failed(
                PoolError::new(Kind::Panicked { pid, message }).at(start + k as usize, 1),
            ),
            Ok(_) => bad("bad unit results".into()),
            Err(e) => bad(e.into_message()),
        },
        other => bad(format!("unknown unit results kind {other}")),
    }
}

impl<R: DeserializeOwned + Send + 'static> MapShared<R> {
    pub(crate) fn new(
        total: usize,
        on_success: Option<OnSuccess<R>>,
        on_error: Option<OnError>,
    ) -> Arc<Self> {
        let codec = Codec {
            append: wire_append::<R>,
            chunk: decode_chunk::<R>,
        };
        MapShared::with_codec(total, codec, on_success, on_error)
    }

    /// A result that failed before any work started (a bad argument, say).
    pub(crate) fn failed(total: usize, err: PoolError) -> Arc<Self> {
        MapShared::new(total.max(1), None, None).fail_now(err)
    }
}

impl<R: Pod + Send + 'static> MapShared<R> {
    /// The shared state of a `map_pod`: its units' results are the values' bytes.
    pub(crate) fn new_pod(total: usize) -> Arc<Self> {
        let codec = Codec {
            append: pod_append::<R>,
            chunk: pod_chunk::<R>,
        };
        MapShared::with_codec(total, codec, None, None)
    }

    /// As `failed`, for a `map_pod`.
    pub(crate) fn failed_pod(total: usize, err: PoolError) -> Arc<Self> {
        MapShared::new_pod(total.max(1)).fail_now(err)
    }
}

impl<R: Send + 'static> MapShared<R> {
    fn with_codec(
        total: usize,
        codec: Codec<R>,
        on_success: Option<OnSuccess<R>>,
        on_error: Option<OnError>,
    ) -> Arc<Self> {
        let shared = Arc::new(MapShared {
            st: Mutex::new(MapState {
                out: Vec::new(),
                next: 0,
                chunks: BTreeMap::new(),
                done: 0,
                outcome: None,
                finished: false,
                taken: false,
                on_success,
                on_error,
                wakers: Vec::new(),
            }),
            cv: Condvar::new(),
            total,
            completed: AtomicUsize::new(0),
            codec,
        });
        if total == 0 {
            shared.finish(shared.lock());
        }
        shared
    }

    /// Ends this result with `err` at once.
    fn fail_now(self: Arc<Self>, err: PoolError) -> Arc<Self> {
        let mut st = self.lock();
        st.outcome = Some(Err(err));
        st.finished = true;
        drop(st);
        self
    }

    fn lock(&self) -> MutexGuard<'_, MapState<R>> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, start: usize, count: usize, chunk: Chunk<R>) {
        let mut st = self.lock();
        if st.finished || start < st.next || st.chunks.contains_key(&start) {
            return;
        }
        st.chunks.insert(start, chunk);
        self.absorb(&mut st);
        self.count_done(st, count);
    }

    /// Decodes the encoded results of items `start..start + count` straight onto the end of
    /// the output when they are the next ones in order and all succeeded; otherwise as `add`.
    fn deliver_bytes(&self, start: usize, count: usize, bytes: &[u8], fds: Vec<OwnedFd>, pid: i32) {
        let mut st = self.lock();
        if st.finished || start < st.next || st.chunks.contains_key(&start) {
            return;
        }
        let values = match (start == st.next, UnitOut::<R>::all_values(bytes)) {
            (true, Some(values)) => values,
            _ => {
                drop(st);
                self.add(
                    start,
                    count,
                    (self.codec.chunk)(start, count, bytes, fds, pid),
                );
                return;
            }
        };
        if st.out.capacity() == 0 {
            st.out.reserve_exact(self.total);
        }
        let before = st.out.len();
        let append = self.codec.append;
        let decoded = task::unless_panic("decoding the result", || {
            append(&mut st.out, values, fds, count)
        });
        let chunk = match decoded {
            Ok(()) if st.out.len() - before == count => {
                st.next += count;
                self.absorb(&mut st);
                self.count_done(st, count);
                return;
            }
            Ok(()) => wrong_count(pid),
            Err(e) => PoolError::new(Kind::Decode(e)),
        };
        st.out.truncate(before);
        st.chunks
            .insert(start, Chunk::Failed(chunk.at(start, count)));
        self.count_done(st, count);
    }

    /// Moves the chunks of values that now follow the output in order onto its end.
    fn absorb(&self, st: &mut MapState<R>) {
        while let Some(Chunk::Values(_)) = st.chunks.get(&st.next) {
            if let Some(Chunk::Values(v)) = st.chunks.remove(&st.next) {
                if st.out.capacity() == 0 {
                    st.out.reserve_exact(self.total);
                }
                st.next += v.len();
                st.out.extend(v);
            }
        }
    }

    fn count_done(&self, mut st: MutexGuard<'_, MapState<R>>, count: usize) {
        st.done += count;
        self.completed.fetch_add(count, Ordering::Relaxed);
        if st.done >= self.total {
            self.finish(st);
        }
    }

    /// All items are in: build the outcome, run the callbacks (outside the lock, so that a
    /// callback may look at this result), then publish.
    fn finish(&self, mut st: MutexGuard<'_, MapState<R>>) {
        let chunks = std::mem::take(&mut st.chunks);
        // Every value in `out` succeeded, and the chunks all come after it.
        let mut all = std::mem::take(&mut st.out);
        let on_success = st.on_success.take();
        let on_error = st.on_error.take();
        drop(st);
        let mut first_err: Option<PoolError> = None;
        for chunk in chunks.values() {
            match chunk {
                Chunk::Values(_) => {}
                Chunk::Mixed(v) => {
                    if let Some(Err(e)) = v.iter().find(|r| r.is_err()) {
                        first_err = Some(e.clone());
                        break;
                    }
                }
                Chunk::Failed(e) => {
                    first_err = Some(e.clone());
                    break;
                }
            }
        }
        let outcome = match first_err {
            Some(e) => Err(e),
            None => {
                all.reserve_exact(self.total.saturating_sub(all.len()));
                for chunk in chunks.into_values() {
                    match chunk {
                        Chunk::Values(v) => all.extend(v),
                        Chunk::Mixed(v) => all.extend(v.into_iter().flatten()),
                        Chunk::Failed(_) => {}
                    }
                }
                Ok(all)
            }
        };
        match &outcome {
            Ok(values) => {
                if let Some(cb) = on_success {
                    run_callback(|| cb(values));
                }
            }
            Err(e) => {
                if let Some(cb) = on_error {
                    run_callback(|| cb(e));
                }
            }
        }
        let mut st = self.lock();
        st.outcome = Some(outcome);
        st.finished = true;
        let wakers = std::mem::take(&mut st.wakers);
        drop(st);
        self.cv.notify_all();
        for w in wakers {
            w.wake();
        }
    }

    /// Whether the result is in; if not, `cx`'s waker is woken when it is.
    fn poll_finished(&self, cx: &mut Context<'_>) -> bool {
        let mut st = self.lock();
        if st.finished {
            return true;
        }
        remember(&mut st.wakers, cx.waker());
        false
    }

    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        let mut st = self.lock();
        while !st.finished {
            match deadline {
                None => st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return false;
                    }
                    st = self
                        .cv
                        .wait_timeout(st, d - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
        true
    }

    fn take(&self, deadline: Option<Instant>) -> Result<Vec<R>, PoolError> {
        if !self.wait_until(deadline) {
            return Err(PoolError::new(Kind::Timeout));
        }
        let mut st = self.lock();
        if st.taken {
            return Err(PoolError::new(Kind::Taken));
        }
        st.taken = true;
        st.outcome
            .take()
            .unwrap_or_else(|| Err(PoolError::new(Kind::Taken)))
    }

    fn successful(&self) -> Option<bool> {
        let st = self.lock();
        if !st.finished {
            return None;
        }
        match &st.outcome {
            Some(o) => Some(o.is_ok()),
            None => Some(true),
        }
    }
}

impl<R: Send + 'static> Sink for MapShared<R> {
    fn deliver(&self, start: usize, count: usize, bytes: &[u8], fds: Vec<OwnedFd>, pid: i32) {
        self.deliver_bytes(start, count, bytes, fds, pid);
    }

    fn fail(&self, start: usize, count: usize, err: PoolError) {
        self.add(start, count, Chunk::Failed(err.at(start, count)));
    }
}

/// How an `AsyncResult` reads its shared state.
trait Outcome<T>: Send + Sync {
    fn poll_finished(&self, cx: &mut Context<'_>) -> bool;
    fn wait_until(&self, deadline: Option<Instant>) -> bool;
    fn take(&self, deadline: Option<Instant>) -> Result<T, PoolError>;
    fn successful(&self) -> Option<bool>;
    fn completed(&self) -> usize;
    fn total(&self) -> usize;
}

impl<R: Send + 'static> Outcome<Vec<R>> for MapShared<R> {
    fn poll_finished(&self, cx: &mut Context<'_>) -> bool {
        MapShared::poll_finished(self, cx)
    }
    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        MapShared::wait_until(self, deadline)
    }
    fn take(&self, deadline: Option<Instant>) -> Result<Vec<R>, PoolError> {
        MapShared::take(self, deadline)
    }
    fn successful(&self) -> Option<bool> {
        MapShared::successful(self)
    }
    fn completed(&self) -> usize {
        self.completed.load(Ordering::Relaxed)
    }
    fn total(&self) -> usize {
        self.total
    }
}

/// `apply_async`'s view of a one-item map.
struct One<R>(Arc<MapShared<R>>);

impl<R: Send + 'static> Outcome<R> for One<R> {
    fn poll_finished(&self, cx: &mut Context<'_>) -> bool {
        self.0.poll_finished(cx)
    }
    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        self.0.wait_until(deadline)
    }
    fn take(&self, deadline: Option<Instant>) -> Result<R, PoolError> {
        // One task: "item 0" says nothing.
        let mut v = self.0.take(deadline).map_err(PoolError::without_item)?;
        v.pop()
            .ok_or_else(|| PoolError::new(Kind::Decode("the task returned no result".into())))
    }
    fn successful(&self) -> Option<bool> {
        self.0.successful()
    }
    fn completed(&self) -> usize {
        self.0.completed.load(Ordering::Relaxed)
    }
    fn total(&self) -> usize {
        1
    }
}

/// The result of [`apply_async`](super::Pool::apply_async) (`T` is the task's return type)
/// or of [`map_async`](super::Pool::map_async) (`T` is `Vec` of it), as Python's
/// `AsyncResult`.
///
/// The value is [`get`](Self::get) once; [`wait`](Self::wait), [`ready`](Self::ready) and
/// [`successful`](Self::successful) only look. [`completed`](Self::completed) and
/// [`total`](Self::total) count the items done, enough for a progress bar. Dropping an
/// `AsyncResult` does not cancel the work.
///
/// # Examples
/// ```
/// use multiprocess::Pool;
/// use std::time::Duration;
///
/// fn cube(x: u64) -> u64 { x * x * x }
///
/// let pool = Pool::new(2)?;
/// let mut one = pool.apply_async(cube, 3);
/// let mut all = pool.map_async(cube, 0..100);
/// assert_eq!(one.get()?, 27);
/// all.wait();
/// assert!(all.ready());
/// assert_eq!(all.successful(), Some(true));
/// assert_eq!((all.completed(), all.total()), (100, 100));
/// assert_eq!(all.get_timeout(Duration::from_secs(5))?[99], 970_299);
/// # Ok::<(), multiprocess::PoolError>(())
/// ```
pub struct AsyncResult<T> {
    inner: Arc<dyn Outcome<T>>,
    /// The outcome, once [`get_ref`](AsyncResult::get_ref) took it: kept for further reads.
    kept: Option<Result<T, PoolError>>,
}

/// Awaiting an `AsyncResult` gives what [`get`](AsyncResult::get) gives, without a thread
/// waiting: the pool's result handler wakes the task when the last item is in. It works
/// under any executor (tokio, smol, `block_on`).
///
/// Cancellation: dropping the future (the `AsyncResult`, or a `select!` branch holding it)
/// loses nothing that was not already lost by dropping an `AsyncResult`: the work goes on
/// and its result is dropped. Awaiting `&mut result` and giving up leaves the result to a
/// later `get` or await.
///
/// # Examples
/// ```
/// use multiprocess::Pool;
///
/// fn cube(x: u64) -> u64 { x * x * x }
///
/// let pool = Pool::new(2)?;
/// let (a, b) = (pool.apply_async(cube, 2), pool.map_async(cube, 0..4));
/// // Any executor; here the simplest one, made from std alone.
/// # let block_on = |f| multiprocess::__block_on(f);
/// let both = block_on(async { (a.await, b.await) });
/// assert_eq!(both.0?, 8);
/// assert_eq!(both.1?, [0, 1, 8, 27]);
/// # Ok::<(), multiprocess::PoolError>(())
/// ```
impl<T> std::future::Future for AsyncResult<T> {
    type Output = Result<T, PoolError>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.inner.poll_finished(cx) {
            Poll::Ready(self.inner.take(None))
        } else {
            Poll::Pending
        }
    }
}

impl<T> fmt::Debug for AsyncResult<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncResult")
            .field("completed", &self.inner.completed())
            .field("total", &self.inner.total())
            .finish()
    }
}

impl<R: Send + 'static> AsyncResult<Vec<R>> {
    pub(crate) fn for_map(shared: Arc<MapShared<R>>) -> Self {
        AsyncResult {
            inner: shared,
            kept: None,
        }
    }
}

impl<R: Send + 'static> AsyncResult<R> {
    pub(crate) fn for_one(shared: Arc<MapShared<R>>) -> Self {
        AsyncResult {
            inner: Arc::new(One(shared)),
            kept: None,
        }
    }
}

impl<T> AsyncResult<T> {
    /// Waits for the result and returns it (Python's `get()`).
    ///
    /// # Errors
    /// The task's error (a panic, its worker's death, a terminated pool...; for a map, the
    /// first failing item by input order, see [`PoolError::item`]); a result already taken by
    /// an earlier `get` ([`PoolError::is_misuse`]).
    pub fn get(&mut self) -> Result<T, PoolError> {
        match self.kept.take() {
            Some(kept) => kept,
            None => self.inner.take(None),
        }
    }

    /// Waits for the result and lends it; unlike [`get`](Self::get), it can be called any
    /// number of times (Python's `get()` can): the value stays in the `AsyncResult`, and a
    /// later `get` still moves it out.
    ///
    /// # Errors
    /// As [`get`](Self::get), each time.
    ///
    /// # Examples
    /// ```
    /// use multiprocess::Pool;
    ///
    /// fn square(x: u64) -> u64 { x * x }
    ///
    /// let pool = Pool::new(1)?;
    /// let mut r = pool.apply_async(square, 9);
    /// assert_eq!(*r.get_ref()?, 81);
    /// assert_eq!(*r.get_ref()?, 81);
    /// assert_eq!(r.get()?, 81);
    /// # Ok::<(), multiprocess::PoolError>(())
    /// ```
    pub fn get_ref(&mut self) -> Result<&T, PoolError> {
        let inner = &self.inner;
        match self.kept.get_or_insert_with(|| inner.take(None)) {
            Ok(v) => Ok(v),
            Err(e) => Err(e.clone()),
        }
    }

    /// Waits at most `timeout` for the result (Python's `get(timeout)`).
    ///
    /// # Errors
    /// [`PoolError::is_timeout`] when the result is not there in time (the task goes on and a
    /// later call can still get it); otherwise as [`get`](Self::get).
    pub fn get_timeout(&mut self, timeout: Duration) -> Result<T, PoolError> {
        match self.kept.take() {
            Some(kept) => kept,
            None => self.inner.take(Some(Instant::now() + timeout)),
        }
    }

    /// Waits until the result is ready (Python's `wait()`).
    pub fn wait(&self) {
        self.inner.wait_until(None);
    }

    /// Waits at most `timeout` until the result is ready; returns whether it is.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.inner.wait_until(Some(Instant::now() + timeout))
    }

    /// Whether the result is ready (Python's `ready()`).
    pub fn ready(&self) -> bool {
        self.inner.wait_until(Some(Instant::now()))
    }

    /// Whether the call succeeded: `None` while not ready (Python raises `ValueError` there).
    pub fn successful(&self) -> Option<bool> {
        self.inner.successful()
    }

    /// The number of items done so far (ended with a value or an error).
    pub fn completed(&self) -> usize {
        self.inner.completed()
    }

    /// The number of items of the call (1 for `apply_async`).
    pub fn total(&self) -> usize {
        self.inner.total()
    }
}

// ---------------------------------------------------------------------------------------------
// imap / imap_unordered

struct StreamState<R> {
    /// Ordered: chunks by their first index. Unordered: everything under key 0.
    chunks: BTreeMap<usize, VecDeque<Result<R, PoolError>>>,
    /// Tasks awaiting the next item.
    wakers: Vec<Waker>,
}

/// The shared state of one `imap` or `imap_unordered`.
pub(crate) struct StreamShared<R> {
    st: Mutex<StreamState<R>>,
    cv: Condvar,
    ordered: bool,
    completed: AtomicUsize,
}

impl<R: DeserializeOwned + Send + 'static> StreamShared<R> {
    pub(crate) fn new(ordered: bool) -> Arc<Self> {
        Arc::new(StreamShared {
            st: Mutex::new(StreamState {
                chunks: BTreeMap::new(),
                wakers: Vec::new(),
            }),
            cv: Condvar::new(),
            ordered,
            completed: AtomicUsize::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, StreamState<R>> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, start: usize, count: usize, items: VecDeque<Result<R, PoolError>>) {
        let mut st = self.lock();
        if self.ordered {
            st.chunks.insert(start, items);
        } else {
            st.chunks.entry(0).or_default().extend(items);
        }
        self.completed.fetch_add(count, Ordering::Relaxed);
        let wakers = std::mem::take(&mut st.wakers);
        drop(st);
        self.cv.notify_all();
        for w in wakers {
            w.wake();
        }
    }

    /// The next result if it is in; if not, `cx`'s waker is woken when something arrives.
    pub(crate) fn poll_next(
        &self,
        next: usize,
        cx: &mut Context<'_>,
    ) -> Poll<Result<R, PoolError>> {
        let mut st = self.lock();
        match self.pop(&mut st, next) {
            Some(v) => Poll::Ready(v),
            None => {
                remember(&mut st.wakers, cx.waker());
                Poll::Pending
            }
        }
    }

    /// The next result: item `next` (ordered) or any (unordered). `None` on timeout.
    pub(crate) fn next_until(
        &self,
        next: usize,
        deadline: Option<Instant>,
    ) -> Option<Result<R, PoolError>> {
        let mut st = self.lock();
        loop {
            if let Some(v) = self.pop(&mut st, next) {
                return Some(v);
            }
            match deadline {
                None => st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return None;
                    }
                    st = self
                        .cv
                        .wait_timeout(st, d - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
    }

    fn pop(&self, st: &mut StreamState<R>, next: usize) -> Option<Result<R, PoolError>> {
        let mut entry = st.chunks.first_entry()?;
        if self.ordered && *entry.key() != next {
            return None;
        }
        let v = entry.get_mut().pop_front();
        if entry.get().is_empty() {
            entry.remove();
        } else if self.ordered {
            // Re-key the rest of the chunk by its new first index.
            let rest = entry.remove();
            st.chunks.insert(next + 1, rest);
        }
        v
    }

    pub(crate) fn completed(&self) -> usize {
        self.completed.load(Ordering::Relaxed)
    }
}

impl<R: DeserializeOwned + Send + 'static> Sink for StreamShared<R> {
    fn deliver(&self, start: usize, count: usize, bytes: &[u8], fds: Vec<OwnedFd>, pid: i32) {
        let items: VecDeque<_> = match decode_chunk::<R>(start, count, bytes, fds, pid) {
            Chunk::Values(v) => v.into_iter().map(Ok).collect(),
            Chunk::Mixed(v) => v.into(),
            Chunk::Failed(e) => (0..count)
                .map(|i| Err(e.clone().at(start + i, 1)))
                .collect(),
        };
        self.add(start, count, items);
    }

    fn fail(&self, start: usize, count: usize, err: PoolError) {
        let items = (0..count)
            .map(|i| Err(err.clone().at(start + i, 1)))
            .collect();
        self.add(start, count, items);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(kind: u32, body: &[u8]) -> Vec<u8> {
        let mut b = kind.to_le_bytes().to_vec();
        b.extend_from_slice(body);
        b
    }

    /// What a worker (or anything that can write its outbox) sends is checked before it is
    /// believed: counts, lengths, item indices, kinds.
    #[test]
    fn hostile_plain_data_results_are_refused() {
        // A count far past the unit's, for a zero-sized type: refused at once, not looped on.
        let mut units: Vec<()> = Vec::new();
        let e = pod_append(&mut units, &u64::MAX.to_le_bytes(), Vec::new(), 5).unwrap_err();
        assert!(e.contains("values for 5 items"), "{e}");
        assert!(units.is_empty());
        // The right count with too few bytes, or too many.
        let mut v: Vec<u64> = Vec::new();
        let mut b = 2u64.to_le_bytes().to_vec();
        b.extend_from_slice(&[0; 15]);
        assert!(pod_append(&mut v, &b, Vec::new(), 2).is_err());
        b.extend_from_slice(&[0; 2]);
        assert!(pod_append(&mut v, &b, Vec::new(), 2).is_err());
        assert!(v.is_empty());
        b.pop();
        pod_append(&mut v, &b, Vec::new(), 2).unwrap();
        assert_eq!(v, [0, 0]);
        // A panic said to be at an item outside the unit, an unknown kind, nothing at all.
        let mut panicked = Vec::new();
        wire::encode_into_vec(&(9u64, "boom".to_string()), &mut panicked).unwrap();
        for bytes in [unit(task::PANICKED, &panicked), unit(77, &[]), Vec::new()] {
            match pod_chunk::<u64>(10, 3, &bytes, Vec::new(), 1) {
                Chunk::Failed(e) => assert!(e.to_string().contains("result"), "{e}"),
                _ => panic!("accepted"),
            }
        }
        // A panic inside the unit names its item.
        let mut panicked = Vec::new();
        wire::encode_into_vec(&(2u64, "boom".to_string()), &mut panicked).unwrap();
        match pod_chunk::<u64>(10, 3, &unit(task::PANICKED, &panicked), Vec::new(), 1) {
            Chunk::Failed(e) => {
                assert_eq!(e.item(), Some(12));
                assert_eq!(e.panic_message(), Some("boom"));
            }
            _ => panic!("not a failure"),
        }
    }
}
