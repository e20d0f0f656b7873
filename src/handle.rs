//! How handles travel between processes.
//!
//! A *handle* is a value that owns an operating-system object: a [`Connection`], and (in later
//! modules) queues, locks and shared memory. Such values are serialized like any other serde
//! value, except that the file descriptors they own cannot be written as bytes. Instead, while
//! the crate encodes a message, a thread-local collector is active: a handle's `Serialize`
//! writes the *index* of its descriptor in the message's descriptor list and pushes the
//! descriptor to that list. The list travels out of band — as `SCM_RIGHTS` over a Unix socket,
//! or by inheritance across `fork` — and on the receiving side `Deserialize` takes the
//! descriptor at that index from the received list.
//!
//! This gives one mechanism for every handle type and every path (process arguments under each
//! start method, [`Connection::send`], queue messages, pool tasks and results). Your own types
//! can own descriptors that travel too: mark an [`OwnedFd`] field with
//! `#[serde(with = "multiprocess::handle::fd")]`, or wrap it in [`SharedFd`].
//!
//! Serializing a handle with any other serializer (say `serde_json`) fails with an error that
//! says why: a descriptor number means nothing in another process.
//!
//! [`Connection`]: crate::Connection
//! [`Connection::send`]: crate::Connection::send

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::fmt;
use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

thread_local! {
    /// How many encodings (`.0`) and decodings (`.1`) are running on this thread, nested ones
    /// included: a value without handles costs its encoding or decoding no more than this.
    static DEPTH: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
    /// Encodings and decodings at or below these depths are hidden (see [`hide`]).
    static HIDDEN: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
    /// The depth of the top frame of `OUTGOING` and of `INCOMING` (0: no frame), so that a
    /// scope without a frame does not touch them.
    static TOP: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
    /// The descriptors of the running encodings that met a handle, tagged with their depth;
    /// a frame is created when the first handle is serialized.
    static OUTGOING: RefCell<Vec<(usize, Vec<RawFd>)>> = const { RefCell::new(Vec::new()) };
    /// The descriptors of the running decodings that received any, tagged with their depth.
    static INCOMING: RefCell<Vec<(usize, Vec<Option<OwnedFd>>)>> =
        const { RefCell::new(Vec::new()) };
}

/// One running encoding (`OUT`) or decoding (`!OUT`): entered on creation, left when dropped,
/// also when a panic unwinds through it (its descriptor frame, if any, goes with it).
struct Scope<const OUT: bool> {
    depth: usize,
}

impl<const OUT: bool> Scope<OUT> {
    #[inline]
    fn enter() -> Self {
        let depth = pick::<OUT>(DEPTH.get()) + 1;
        DEPTH.set(with::<OUT>(DEPTH.get(), depth));
        Scope { depth }
    }

    /// Whether a handle met in this scope made it a descriptor frame.
    #[inline]
    fn has_frame(&self) -> bool {
        pick::<OUT>(TOP.get()) >= self.depth
    }
}

impl<const OUT: bool> Drop for Scope<OUT> {
    #[inline]
    fn drop(&mut self) {
        DEPTH.set(with::<OUT>(DEPTH.get(), self.depth - 1));
        if self.has_frame() {
            drop_frames::<OUT>(self.depth);
        }
    }
}

/// Drops the descriptor frames at `depth` or deeper (those of a scope that ends).
#[cold]
fn drop_frames<const OUT: bool>(depth: usize) {
    if OUT {
        let _ = OUTGOING.try_with(|s| pop_frame::<OUT, _>(&mut s.borrow_mut(), depth));
    } else {
        let _ = INCOMING.try_with(|s| pop_frame::<OUT, _>(&mut s.borrow_mut(), depth));
    }
}

/// The outgoing (`OUT`) or incoming half of a pair.
#[inline]
fn pick<const OUT: bool>(pair: (usize, usize)) -> usize {
    if OUT {
        pair.0
    } else {
        pair.1
    }
}

/// `pair` with its outgoing (`OUT`) or incoming half replaced by `v`.
#[inline]
fn with<const OUT: bool>(pair: (usize, usize), v: usize) -> (usize, usize) {
    if OUT {
        (v, pair.1)
    } else {
        (pair.0, v)
    }
}

/// Takes the frames at `depth` or deeper off `stack` (outgoing or incoming) and returns the
/// one at `depth`.
fn pop_frame<const OUT: bool, T>(stack: &mut Vec<(usize, Vec<T>)>, depth: usize) -> Vec<T> {
    let mut frame = Vec::new();
    while stack.last().is_some_and(|(d, _)| *d >= depth) {
        if let Some((d, fds)) = stack.pop() {
            if d == depth {
                frame = fds;
            }
        }
    }
    let top = stack.last().map_or(0, |(d, _)| *d);
    TOP.set(with::<OUT>(TOP.get(), top));
    frame
}

/// Pushes a frame at `depth` on `stack` (outgoing or incoming).
fn push_frame<const OUT: bool, T>(stack: &mut Vec<(usize, Vec<T>)>, depth: usize, frame: Vec<T>) {
    stack.push((depth, frame));
    TOP.set(with::<OUT>(TOP.get(), depth));
}

/// The current depth of encodings (`OUT`) or decodings, when it is visible (not hidden).
fn visible_depth<const OUT: bool>() -> Option<usize> {
    let depth = pick::<OUT>(DEPTH.get());
    (depth > pick::<OUT>(HIDDEN.get())).then_some(depth)
}

/// A value turned into bytes plus the descriptors that must travel beside them.
///
/// The descriptors are borrowed from the value that was encoded: use an `Encoded` only while
/// that value is alive and unchanged.
#[derive(Debug, Default)]
pub(crate) struct Encoded {
    pub(crate) bytes: Vec<u8>,
    pub(crate) fds: Vec<RawFd>,
}

impl Encoded {
    /// The descriptors as borrowed descriptors.
    ///
    /// # Safety
    /// The value that was encoded into `self` must still be alive, so that its descriptors are
    /// open.
    #[allow(unsafe_code)]
    pub(crate) unsafe fn borrowed_fds(&self) -> Vec<BorrowedFd<'_>> {
        // SAFETY: forwarded to the caller.
        unsafe { borrow_all(&self.fds) }
    }
}

/// Borrows raw descriptors.
///
/// # Safety
/// Each descriptor must stay open for the returned lifetime (its owner alive).
#[allow(unsafe_code)]
pub(crate) unsafe fn borrow_all(fds: &[RawFd]) -> Vec<BorrowedFd<'_>> {
    fds.iter()
        // SAFETY: the caller guarantees the owner of each descriptor is alive.
        .map(|fd| unsafe { BorrowedFd::borrow_raw(*fd) })
        .collect()
}

/// Why a value could not be encoded.
#[derive(Debug, Clone)]
pub(crate) struct EncodeError(pub(crate) String);

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why bytes could not be decoded into the requested type.
#[derive(Debug, Clone)]
pub(crate) struct DecodeError(pub(crate) String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Encodes `value`, appending its bytes to `out` (so a caller can reserve a header first).
/// Returns the descriptors to send with it.
pub(crate) fn encode_into<T: Serialize + ?Sized>(
    value: &T,
    out: Vec<u8>,
) -> Result<Encoded, EncodeError> {
    let mut bytes = out;
    match crate::wire::encode_into_vec(value, &mut bytes) {
        Ok(fds) => Ok(Encoded { bytes, fds }),
        Err(e) => Err(EncodeError(format!("cannot serialize the value: {e}"))),
    }
}

/// Encodes `value` into `output` in one pass, which it returns with the descriptors to send.
#[inline]
pub(crate) fn encode_to<T: Serialize + ?Sized, O: crate::wire::Out>(
    value: &T,
    output: O,
) -> Result<(O, Vec<RawFd>), EncodeError> {
    let mut ser = crate::wire::Ser { out: output };
    let (result, fds) = collecting(|| value.serialize(&mut ser));
    match result {
        Ok(()) => Ok((ser.out, fds)),
        Err(e) => Err(EncodeError(format!("cannot serialize the value: {e}"))),
    }
}

/// Encodes `value` into a fresh buffer.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Encoded, EncodeError> {
    encode_into(value, Vec::new())
}

/// Decodes a `T` from `bytes`, handing it the descriptors that arrived with the message.
/// Descriptors that the value does not claim are closed.
pub(crate) fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    fds: Vec<OwnedFd>,
) -> Result<T, DecodeError> {
    crate::wire::decode(bytes, fds).map_err(|e| DecodeError(e.into_message()))
}

/// Runs `f` (an encoding with any serde format) while collecting the descriptors of the
/// handles it serializes; returns its result and those descriptors, borrowed from the value
/// being encoded.
#[inline]
pub(crate) fn collecting<R>(f: impl FnOnce() -> R) -> (R, Vec<RawFd>) {
    let scope = Scope::<true>::enter();
    let r = f();
    let fds = if scope.has_frame() {
        OUTGOING
            .try_with(|s| pop_frame::<true, _>(&mut s.borrow_mut(), scope.depth))
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    (r, fds)
}

/// Runs `f` (a decoding with any serde format) with `fds` available to the handles it
/// deserializes; descriptors that no handle claims are closed.
#[inline]
pub(crate) fn receiving<R>(fds: Vec<OwnedFd>, f: impl FnOnce() -> R) -> R {
    let scope = Scope::<false>::enter();
    if !fds.is_empty() {
        let frame = fds.into_iter().map(Some).collect();
        let _ =
            INCOMING.try_with(|s| push_frame::<false, _>(&mut s.borrow_mut(), scope.depth, frame));
    }
    f()
}

/// Hides the encodings and decodings running at `depths` (from [`depths`]) and below until
/// [`unhide`]: handles serialized or deserialized outside an encoding or decoding of their own
/// then fail as if none were running, instead of landing in (or taking from) the hidden ones'
/// message. A pool worker runs each task so, between the decoding of its argument and the
/// encoding of its value. Returns what to pass to `unhide`.
#[inline]
pub(crate) fn hide(depths: (usize, usize)) -> (usize, usize) {
    HIDDEN.replace(depths)
}

/// Undoes [`hide`].
#[inline]
pub(crate) fn unhide(previous: (usize, usize)) {
    HIDDEN.set(previous);
}

/// The depths of this thread's running encodings and decodings.
pub(crate) fn depths() -> (usize, usize) {
    DEPTH.get()
}

/// The descriptors owned by the crate's handles in this process.
static TRACKED: Mutex<BTreeSet<RawFd>> = Mutex::new(BTreeSet::new());

/// A descriptor owned by one of the crate's handles (a `Connection`, a queue, ...).
///
/// The crate keeps a list of them so that a child started with [`StartMethod::Fork`] does not
/// keep the parent's handles open behind its back: there, every tracked descriptor that was not
/// passed to the child is replaced by `/dev/null` (the number stays taken, so nothing else can
/// reuse it). Without this, a pipe end that the parent closes would stay open in every forked
/// child, and its peer would never see end of file; the spawn and fork-server methods never
/// inherit them in the first place.
///
/// [`StartMethod::Fork`]: crate::StartMethod::Fork
///
/// A descriptor must be tracked from the moment it exists to the moment it is closed, or a
/// fork in another thread in between gives its child a copy that is never neutralized (found
/// as a peer that still saw its killed reader's end open, 5 runs in 60 of a test binary whose
/// other tests forked meanwhile). So code that makes descriptors for handles holds a [`birth`]
/// guard from the first syscall until they are tracked, and a tracked descriptor is closed
/// under the lock of the list.
#[derive(Debug)]
pub(crate) struct TrackedFd(ManuallyDrop<OwnedFd>);

impl TrackedFd {
    pub(crate) fn new(fd: OwnedFd) -> Self {
        lock_tracked().insert(fd.as_raw_fd());
        TrackedFd(ManuallyDrop::new(fd))
    }
}

impl Drop for TrackedFd {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // Forgotten and closed under the list's lock, which a fork holds: a child forked now
        // has the descriptor tracked (and neutralizes it) or does not have it at all.
        let mut tracked = lock_tracked();
        tracked.remove(&self.0.as_raw_fd());
        // SAFETY: the descriptor is dropped once, here, and never used after.
        unsafe { ManuallyDrop::drop(&mut self.0) };
    }
}

/// Held (shared) by a thread that makes descriptors for handles, from before the first syscall
/// until they are [`TrackedFd`]s; taken exclusively by the Fork start method across `fork`.
static BIRTHS: RwLock<()> = RwLock::new(());

thread_local! {
    /// How many [`Birth`] guards this thread holds (only the outermost takes the lock: a
    /// second shared acquisition could wait behind a waiting fork, which waits for the first).
    static BIRTH_DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// See [`birth`].
pub(crate) struct Birth(
    /// Held for its drop only.
    #[allow(dead_code)]
    Option<RwLockReadGuard<'static, ()>>,
);

/// Keeps forks out while this thread makes descriptors that will be tracked: a child forked
/// between a descriptor's creation and its tracking would keep an untracked copy.
pub(crate) fn birth() -> Birth {
    let depth = BIRTH_DEPTH.get();
    BIRTH_DEPTH.set(depth + 1);
    Birth((depth == 0).then(|| BIRTHS.read().unwrap_or_else(|p| p.into_inner())))
}

impl Drop for Birth {
    fn drop(&mut self) {
        BIRTH_DEPTH.set(BIRTH_DEPTH.get().saturating_sub(1));
    }
}

/// Waits for every descriptor being made to be tracked, and keeps new ones from being made
/// (held across `fork` by the Fork start method, before its other locks).
pub(crate) fn lock_births_for_fork() -> RwLockWriteGuard<'static, ()> {
    BIRTHS.write().unwrap_or_else(|p| p.into_inner())
}

impl AsFd for TrackedFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// Locks the list of tracked descriptors (held across `fork` by the Fork start method).
pub(crate) fn lock_tracked() -> MutexGuard<'static, BTreeSet<RawFd>> {
    TRACKED.lock().unwrap_or_else(|p| p.into_inner())
}

/// In a forked child: replaces every tracked descriptor by `/dev/null` and forgets them.
pub(crate) fn neutralize_tracked_after_fork(tracked: &mut BTreeSet<RawFd>) {
    for fd in std::mem::take(tracked) {
        crate::sys::socket::neutralize(fd);
    }
}

/// Serde helpers for an [`OwnedFd`] field that travels with its value:
/// `#[serde(with = "multiprocess::handle::fd")]`.
pub mod fd {
    use super::*;

    /// Serializes the descriptor's index in the message's descriptor list.
    ///
    /// # Errors
    /// Fails when the serializer is not one of this crate's (a descriptor cannot be written as
    /// bytes).
    pub fn serialize<S: Serializer>(fd: &OwnedFd, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_borrowed(fd.as_fd(), serializer)
    }

    /// Takes the descriptor at the serialized index from the message's descriptor list.
    ///
    /// # Errors
    /// Fails outside this crate's decoding, or when the message did not carry that descriptor.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<OwnedFd, D::Error> {
        let index = u32::deserialize(deserializer)? as usize;
        let Some(depth) = visible_depth::<false>() else {
            return Err(serde::de::Error::custom(
                "a handle can only be deserialized by multiprocess (it arrives with a message)",
            ));
        };
        let taken = INCOMING.try_with(|s| {
            let mut stack = s.borrow_mut();
            let frame = stack.last_mut().filter(|(d, _)| *d == depth);
            frame.and_then(|(_, fds)| fds.get_mut(index).and_then(Option::take))
        });
        match taken {
            Ok(Some(fd)) => Ok(fd),
            Ok(None) => Err(serde::de::Error::custom(format!(
                "the message did not carry the descriptor of handle #{index}"
            ))),
            Err(_) => Err(serde::de::Error::custom(
                "handles cannot be received during thread teardown",
            )),
        }
    }
}

/// Serializes a borrowed descriptor (the owner must outlive the encoded message).
pub(crate) fn serialize_borrowed<S: Serializer>(
    fd: BorrowedFd<'_>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let index = visible_depth::<true>().and_then(|depth| {
        OUTGOING
            .try_with(|s| {
                let mut stack = s.borrow_mut();
                if stack.last().is_none_or(|(d, _)| *d != depth) {
                    push_frame::<true, _>(&mut stack, depth, Vec::new());
                }
                let (_, fds) = stack.last_mut()?;
                fds.push(fd.as_raw_fd());
                Some(fds.len() - 1)
            })
            .ok()
            .flatten()
    });
    match index {
        Some(i) => serializer.serialize_u32(i as u32),
        None => Err(serde::ser::Error::custom(
            "a handle can only be serialized by multiprocess: send it through a Connection or \
             Queue, or pass it as a process or task argument",
        )),
    }
}

/// A file descriptor that travels between processes: pass it as an argument or send it
/// through a [`Connection`](crate::Connection), and the receiver gets its own descriptor for
/// the same open file, socket or pipe.
///
/// # Examples
/// ```
/// use multiprocess::handle::SharedFd;
/// use std::os::fd::OwnedFd;
///
/// let file = std::fs::File::open("/dev/null").unwrap();
/// let shared = SharedFd::from(OwnedFd::from(file));
/// let (a, b) = multiprocess::Pipe::new().unwrap();
/// a.send(&shared).unwrap();
/// let received: SharedFd = b.recv().unwrap();
/// let _file = std::fs::File::from(received.into_inner());
/// ```
#[derive(Debug, Serialize, Deserialize)]
pub struct SharedFd(#[serde(with = "fd")] OwnedFd);

impl SharedFd {
    /// The descriptor.
    pub fn into_inner(self) -> OwnedFd {
        self.0
    }
}

impl From<OwnedFd> for SharedFd {
    fn from(fd: OwnedFd) -> Self {
        SharedFd(fd)
    }
}

impl AsFd for SharedFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_values_round_trip() {
        let enc = encode(&(1u32, String::from("x"), vec![1.5f64])).unwrap();
        assert!(enc.fds.is_empty());
        let v: (u32, String, Vec<f64>) = decode(&enc.bytes, Vec::new()).unwrap();
        assert_eq!(v, (1, "x".into(), vec![1.5]));
    }

    #[test]
    fn wrong_type_is_an_error() {
        let enc = encode(&(1u8, 2u8, 3u8)).unwrap();
        let e = decode::<u8>(&enc.bytes, Vec::new()).unwrap_err();
        assert!(e.0.contains("left over"), "{e}");
    }

    #[test]
    fn a_descriptor_travels_by_index() {
        let file = std::fs::File::open("/dev/null").unwrap();
        let shared = SharedFd::from(OwnedFd::from(file));
        let enc = encode(&shared).unwrap();
        assert_eq!(enc.fds, vec![shared.as_fd().as_raw_fd()]);
        let dup = shared.as_fd().try_clone_to_owned().unwrap();
        let back: SharedFd = decode(&enc.bytes, vec![dup]).unwrap();
        assert_ne!(back.as_fd().as_raw_fd(), shared.as_fd().as_raw_fd());
    }

    /// A value whose serialization serializes a handle, then panics.
    struct PanicsAfterHandle(SharedFd);

    impl Serialize for PanicsAfterHandle {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let _ = self.0.serialize(s);
            panic!("serialization panics after a handle");
        }
    }

    fn dev_null() -> SharedFd {
        SharedFd::from(OwnedFd::from(std::fs::File::open("/dev/null").unwrap()))
    }

    #[test]
    fn a_panic_inside_an_encoding_leaves_no_scope_behind() {
        let before = depths();
        let v = PanicsAfterHandle(dev_null());
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| encode(&v)));
        assert!(r.is_err());
        assert_eq!(depths(), before);
        assert_eq!(TOP.get(), (0, 0), "the panicking encoding's frame is gone");
        // The next encoding starts clean: its descriptor is its first.
        let shared = dev_null();
        let enc = encode(&shared).unwrap();
        assert_eq!(enc.fds, vec![shared.as_fd().as_raw_fd()]);
        // And outside any encoding a handle still does not serialize.
        assert!(postcard::to_allocvec(&shared).is_err());
    }

    #[test]
    fn nested_encodings_keep_their_own_descriptors() {
        struct Nested(SharedFd, SharedFd);
        impl Serialize for Nested {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                // An inner encoding (a send inside a Serialize) between two handles.
                let inner = encode(&self.1).map_err(serde::ser::Error::custom)?;
                assert_eq!(inner.fds, vec![self.1.as_fd().as_raw_fd()]);
                (&self.0, inner.bytes).serialize(s)
            }
        }
        let v = Nested(dev_null(), dev_null());
        let enc = encode(&v).unwrap();
        assert_eq!(enc.fds, vec![v.0.as_fd().as_raw_fd()]);
        assert_eq!(TOP.get(), (0, 0));
    }

    #[test]
    fn a_message_without_descriptors_cannot_claim_one() {
        let enc = encode(&dev_null()).unwrap();
        // (postcard keeps no custom message: the error says the value did not decode.)
        assert!(decode::<SharedFd>(&enc.bytes, Vec::new()).is_err());
        assert_eq!(depths(), (0, 0));
        assert_eq!(TOP.get(), (0, 0));
    }

    #[test]
    fn outside_the_crate_a_handle_does_not_serialize() {
        let file = std::fs::File::open("/dev/null").unwrap();
        let shared = SharedFd::from(OwnedFd::from(file));
        assert!(postcard::to_allocvec(&shared).is_err());
    }
}
