//! What a manager's clients and server say to each other. Every message is this crate's wire
//! format inside a frame of the connection (CPython's framing on the Listener's socket, or
//! the shared-memory pipe a local client upgrades to).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::connection::Connection;

/// Encoded bytes of a key or a value (the server never decodes them).
pub(crate) type Blob = Vec<u8>;

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    /// Go on over this pipe end (a client on the same machine: its messages then travel
    /// through shared memory). Only over a Unix socket, where the end can travel.
    Upgrade(Connection),
    /// Make a shared object; answered with [`Reply::Id`].
    Create(Kind),
    /// One operation on object `id`.
    Call(u64, Op),
    /// Several operations on object `id`, in order, in one round trip; answered with
    /// [`Reply::Batch`].
    Batch(u64, Vec<Op>),
    /// Stop the server (answered first).
    Shutdown,
    /// Is the server there?
    Ping,
}

/// The kinds of shared object.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Kind {
    Dict,
    List,
    Value(Blob),
    Queue(Option<u64>),
    Lock,
    Event,
    /// A registered type: its name and its encoded initial value.
    User(String, Blob),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Op {
    // A map (dict, Namespace).
    Get(Blob),
    Set(Blob, Blob),
    Remove(Blob),
    Contains(Blob),
    SetDefault(Blob, Blob),
    /// Framed keys and values, alternating (see `managers::Framer`).
    SetMany(Blob),
    /// Framed keys; answered with [`Reply::Framed`]: per key, 0 (absent) or 1 and the
    /// framed value.
    GetMany(Blob),
    Keys,
    Values,
    Items,
    // A map entry, a list item or a value with its version, and a write that only happens
    // if the version is still the same (updates in place that lose nothing).
    GetVersioned(Blob),
    SetIfVersion(Blob, Blob, u64),
    // A list (indices may be negative, from the end, as in Python).
    Append(Blob),
    Extend(Vec<Blob>),
    At(i64),
    SetAt(i64, Blob),
    Insert(i64, Blob),
    PopAt(Option<i64>),
    AtVersioned(i64),
    SetAtIfVersion(i64, Blob, u64),
    All,
    // Both.
    Len,
    Clear,
    // A value.
    Load,
    Store(Blob),
    LoadVersioned,
    StoreIfVersion(Blob, u64),
    // A queue.
    Put(Blob, Option<Duration>),
    Take(Option<Duration>),
    QSize,
    IsFull,
    // A lock.
    Acquire(Option<Duration>),
    Release,
    Locked,
    // An event.
    SetFlag,
    ClearFlag,
    IsSet,
    Wait(Option<Duration>),
    // A registered type's own request.
    User(Blob),
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Reply {
    Unit,
    Bool(bool),
    Len(u64),
    Bytes(Blob),
    Maybe(Option<Blob>),
    List(Vec<Blob>),
    Pairs(Vec<(Blob, Blob)>),
    Framed(Blob),
    Versioned(Option<Blob>, u64),
    /// A conditional write found another version.
    Conflict,
    Id(u64),
    Batch(Vec<Reply>),
    Err(Fault, String),
}

/// Why the server refused an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Fault {
    Empty,
    Full,
    Timeout,
    Index,
    NotLocked,
    /// The operation does not apply to this object, or a malformed request.
    Usage,
    NoSuchObject,
    /// A registered type's handler panicked.
    Panicked,
    /// The server is shutting down.
    Closing,
}
