//! The worker process: a loop that runs batches of units and sends their results back.
//!
//! # Frames (inside `Connection` frames, parent <-> one worker)
//! A frame's first byte is its kind:
//! - `INLINE`: the body follows in the frame;
//! - `ARENA`: a `u64` length `len` follows; the body is the first `len` bytes of the sender's
//!   arena (the pool's inbox for this worker, or the worker's outbox; see `arena.rs`);
//! - `NEW_ARENA`: the frame's one descriptor is the sender's new arena (larger than the old
//!   one, which the receiver drops); no body.
//!
//! The body of a *batch* (parent -> worker) is, per unit: a fixed [`UnitHeader`] then `len`
//! bytes of arguments (the `Vec<A>` of the unit's items, in the pool's wire format, see
//! `wire.rs`). The frame's descriptors are the units' descriptors, concatenated in order
//! (`nfds` each). Large batches go through the inbox: the pool encodes the arguments straight
//! into it, and the worker decodes them from it, so the bytes cross no socket and no fresh
//! buffer.
//!
//! A *report* (worker -> parent) answers one batch: per unit, in the batch's order, a fixed
//! [`ResultHeader`] then `len` bytes (the `UnitOut<R>`), descriptors concatenated likewise.
//! The worker builds it in one buffer that it reuses; a large report goes through the outbox
//! when the pool is done with the previous one there.
//!
//! # The started counter
//! Reports are sent per batch, so a worker that dies part-way through a batch has not told
//! which unit it was running. Before running each unit it stores the number of units it has
//! started (wrapping `u32`) at offset 0 of its own one-page shared region (a memfd, see
//! `Region`). The parent reads it after the worker's death (which the kernel orders after
//! every store of the dead process, so `Acquire` is more than enough): of the units the dead
//! worker held, the last started one is the one that killed it; the ones before it had
//! finished (their report was lost) and the ones after had not started, and both kinds are
//! run again on another worker. Offset 4 of the same page counts the outbox reports the pool
//! has consumed (see `arena.rs`).
//!
//! The worker ends when its connection reaches end of file: the pool closed it (retiring the
//! worker after `maxtasksperchild` units, or shutting down).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::arena::{self, Arena};
use crate::connection::{Connection, ConnectionError};
use crate::region::Region;
use crate::task;

/// The argument of a worker process.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WorkerArgs {
    pub(crate) conn: Connection,
    pub(crate) slot: Region,
}

/// Frame kinds (the first byte of a frame).
pub(crate) const INLINE: u8 = 0;
pub(crate) const ARENA: u8 = 1;
pub(crate) const NEW_ARENA: u8 = 2;

/// The slot offset of the started counter.
pub(crate) const STARTED: usize = 0;
/// The slot offset of the count of outbox reports the pool has consumed.
pub(crate) const CONSUMED: usize = 4;

/// A fixed-size unit or result header.
pub(crate) trait Header: Sized {
    const SIZE: usize;
    fn read(b: &[u8]) -> Self;
    /// `(len, nfds)`.
    fn body(&self) -> (u64, u32);
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

/// The header of one unit of a batch: `id u64, entry i64, len u64, nfds u32, pod u64`,
/// little-endian. `pod` is 0 for a unit of serde values (`entry` is a `task::PoolEntry`); for
/// a plain-data unit (`Pool::map_pod`) it is 1 plus the bytes of its values, and `entry` is a
/// `task::PodEntry`.
#[derive(Debug)]
pub(crate) struct UnitHeader {
    pub(crate) id: u64,
    pub(crate) entry: i64,
    pub(crate) len: u64,
    pub(crate) nfds: u32,
    pub(crate) pod: u64,
}

impl UnitHeader {
    pub(crate) fn write(&self, b: &mut [u8]) {
        b[0..8].copy_from_slice(&self.id.to_le_bytes());
        b[8..16].copy_from_slice(&self.entry.to_le_bytes());
        b[16..24].copy_from_slice(&self.len.to_le_bytes());
        b[24..28].copy_from_slice(&self.nfds.to_le_bytes());
        b[28..36].copy_from_slice(&self.pod.to_le_bytes());
    }

    /// The bytes of a plain-data unit's values, or `None` for a unit of serde values.
    fn pod_values(&self) -> Option<u64> {
        self.pod.checked_sub(1)
    }
}

impl Header for UnitHeader {
    const SIZE: usize = 36;
    fn read(b: &[u8]) -> Self {
        UnitHeader {
            id: u64_at(b, 0),
            entry: u64_at(b, 8) as i64,
            len: u64_at(b, 16),
            nfds: u32_at(b, 24),
            pod: u64_at(b, 28),
        }
    }
    fn body(&self) -> (u64, u32) {
        (self.len, self.nfds)
    }
}

/// The header of one unit of a report: `id u64, len u64, nfds u32`, little-endian.
#[derive(Debug)]
pub(crate) struct ResultHeader {
    pub(crate) id: u64,
    pub(crate) len: u64,
    pub(crate) nfds: u32,
}

impl ResultHeader {
    fn write(&self, b: &mut [u8]) {
        b[0..8].copy_from_slice(&self.id.to_le_bytes());
        b[8..16].copy_from_slice(&self.len.to_le_bytes());
        b[16..20].copy_from_slice(&self.nfds.to_le_bytes());
    }
}

impl Header for ResultHeader {
    const SIZE: usize = 20;
    fn read(b: &[u8]) -> Self {
        ResultHeader {
            id: u64_at(b, 0),
            len: u64_at(b, 8),
            nfds: u32_at(b, 16),
        }
    }
    fn body(&self) -> (u64, u32) {
        (self.len, self.nfds)
    }
}

/// One unit of a frame: its header, its bytes, its descriptors.
pub(crate) type Part<'a, H> = (H, &'a [u8], Vec<OwnedFd>);

/// Splits a frame body into `(header, bytes, descriptors)` parts.
pub(crate) fn split_frame<H: Header>(
    mut bytes: &[u8],
    fds: Vec<OwnedFd>,
) -> Result<Vec<Part<'_, H>>, String> {
    let mut fds = fds.into_iter();
    let mut out = Vec::new();
    while !bytes.is_empty() {
        if bytes.len() < H::SIZE {
            return Err("bad unit header".into());
        }
        let h = H::read(&bytes[..H::SIZE]);
        let rest = &bytes[H::SIZE..];
        let (len, nfds) = h.body();
        let len = usize::try_from(len).map_err(|_| "unit too long".to_string())?;
        if rest.len() < len {
            return Err("unit shorter than its header says".into());
        }
        let unit_fds: Vec<OwnedFd> = fds.by_ref().take(nfds as usize).collect();
        if unit_fds.len() != nfds as usize {
            return Err("frame carries fewer descriptors than its units say".into());
        }
        out.push((h, &rest[..len], unit_fds));
        bytes = &rest[len..];
    }
    Ok(out)
}

/// What a frame holds, once its kind byte is read.
pub(crate) enum Body<'a> {
    /// The body, in the frame or in an arena.
    Units(&'a [u8]),
    /// The sender's new arena.
    NewArena(Arena),
}

/// Reads a frame's kind. `arena` is the receiver's mapping of the sender's arena.
pub(crate) fn frame_body<'a>(
    frame: &'a [u8],
    fds: &mut Vec<OwnedFd>,
    arena: Option<&'a Arena>,
) -> Result<Body<'a>, String> {
    match frame.first() {
        Some(&INLINE) => Ok(Body::Units(&frame[1..])),
        Some(&ARENA) if frame.len() == 9 => {
            let len = usize::try_from(u64_at(frame, 1)).map_err(|_| "arena frame too long")?;
            // SAFETY: the sender handed the arena over with this frame and does not touch
            // it until we hand it back (see `arena.rs`).
            #[allow(unsafe_code)]
            let body = arena.and_then(|a| unsafe { a.bytes(len) });
            body.map(Body::Units)
                .ok_or_else(|| "arena frame without an arena large enough".into())
        }
        Some(&NEW_ARENA) if frame.len() == 1 && fds.len() == 1 => {
            let fd = fds.pop().ok_or("no arena descriptor")?;
            Arena::from_fd(fd)
                .map(Body::NewArena)
                .map_err(|e| format!("cannot map the arena: {e}"))
        }
        _ => Err("unknown frame kind".into()),
    }
}

/// The worker process's target.
pub(crate) fn worker_main(args: WorkerArgs) {
    let WorkerArgs { conn, slot } = args;
    crate::sys::process::keep_freed_memory(256 << 20);
    let started = slot.atomic_u32(STARTED);
    let consumed = slot.atomic_u32(CONSUMED);
    let mut count: u32 = 0;
    let mut inbox: Option<Arena> = None;
    let mut out = Outbox {
        arena: None,
        sent: 0,
    };
    let mut report: Vec<u8> = Vec::new();
    loop {
        let (frame, mut fds) = match conn.recv_raw_timeout(Duration::from_secs(3600)) {
            Ok(frame) => frame,
            Err(ConnectionError::Timeout) => continue,
            // End of file: the pool retired this worker or shut down.
            Err(_) => return,
        };
        let body = match frame_body(&frame, &mut fds, inbox.as_ref()) {
            Ok(Body::Units(b)) => b,
            Ok(Body::NewArena(a)) => {
                inbox = Some(a);
                continue;
            }
            // The parent broke the protocol: nothing sensible can follow.
            Err(_) => std::process::exit(70),
        };
        let units = match split_frame::<UnitHeader>(body, fds) {
            Ok(u) => u,
            Err(_) => std::process::exit(70),
        };
        report.clear();
        let mut out_fds: Vec<Vec<OwnedFd>> = Vec::with_capacity(units.len());
        let mut bounds: Vec<usize> = Vec::with_capacity(units.len() + 1);
        // A batch of plain-data units only, with large results, is written straight into the
        // outbox when the pool is done with it: the values are made in place, never copied.
        let need = direct_need(&units);
        let mut direct = need.and_then(|need| out.reserve(&conn, consumed, need));
        let mut pos = 0;
        // The bytes kept for the units not run yet.
        let mut reserved: usize = if direct.is_some() {
            need.unwrap_or(0)
        } else {
            0
        };
        for (h, args, fds) in units {
            count = count.wrapping_add(1);
            started.store(count, Ordering::Release);
            if let (Some(values), Some(dst)) = (h.pod_values(), direct.as_deref_mut()) {
                // SAFETY: the offset was made by `pod_entry_offsets` in the parent (as below).
                #[allow(unsafe_code)]
                let entry = unsafe { task::pod_entry_at(h.entry) };
                // `direct_need` checked that every unit's values fit a `usize`.
                let values = values as usize;
                reserved -= ResultHeader::SIZE + 12 + values;
                bounds.push(pos);
                match write_pod_direct(dst, pos, reserved, h.id, entry, values, args) {
                    Ok(end) => pos = end,
                    Err(failed) => {
                        // A failure's message does not fit where the values would have
                        // gone: the report goes on in the buffer.
                        report.extend_from_slice(&dst[..pos]);
                        report.extend_from_slice(&failed);
                        direct = None;
                    }
                }
                out_fds.push(Vec::new());
                continue;
            }
            let at = report.len();
            bounds.push(at);
            report.resize(at + ResultHeader::SIZE, 0);
            let mut unit_fds = match h.pod_values() {
                Some(_) if !fds.is_empty() => {
                    task::encode_failed("plain-data items carry no handles".into(), &mut report);
                    Vec::new()
                }
                Some(values) => {
                    // SAFETY: the offset was made by `pod_entry_offsets` in the parent, which
                    // runs this same executable (as below); `pod` says which entry it is.
                    #[allow(unsafe_code)]
                    let entry = unsafe { task::pod_entry_at(h.entry) };
                    task::run_pod(entry, values, args, &mut report);
                    Vec::new()
                }
                None => {
                    // SAFETY: the offset was made by `pool_entry_offset` in the parent, which
                    // runs this same executable (the worker was started by the crate, which
                    // checks the build id under the re-executing start methods).
                    #[allow(unsafe_code)]
                    let entry = unsafe { task::pool_entry_at(h.entry) };
                    entry(args, fds, &mut report)
                }
            };
            let max = crate::sys::socket::MAX_FDS;
            if unit_fds.len() > max {
                let msg = format!(
                    "a task's results can carry at most {max} handles, these carry {}",
                    unit_fds.len()
                );
                unit_fds.clear();
                report.truncate(at + ResultHeader::SIZE);
                task::encode_failed(msg, &mut report);
            }
            let len = (report.len() - at - ResultHeader::SIZE) as u64;
            ResultHeader {
                id: h.id,
                len,
                nfds: unit_fds.len() as u32,
            }
            .write(&mut report[at..at + ResultHeader::SIZE]);
            out_fds.push(unit_fds);
        }
        let sent = if direct.is_some() {
            out.send_direct(&conn, pos)
        } else {
            bounds.push(report.len());
            out.send(&conn, consumed, &report, &bounds, &out_fds)
        };
        if sent.is_err() {
            return;
        }
    }
}

/// The outbox bytes a batch needs to be written straight into it: `Some` when every unit is
/// plain data and the report is large (every result at most its header, `ALL, n` and its
/// values; a failure's message may need more, see `write_pod_direct`).
fn direct_need(units: &[Part<'_, UnitHeader>]) -> Option<usize> {
    let mut need: usize = 0;
    for (h, _, fds) in units {
        let values = usize::try_from(h.pod_values()?).ok()?;
        if !fds.is_empty() || values > task::MAX_POD_RESULTS {
            return None;
        }
        need = need.checked_add(ResultHeader::SIZE + 12 + values)?;
    }
    (arena::THRESHOLD..=arena::MAX_LEN)
        .contains(&need)
        .then_some(need)
}

/// Runs the plain-data unit `id` straight into the outbox `dst` at `pos`: its result header,
/// then `ALL, n` and the values, made in place. `reserved` bytes after this unit's space are
/// kept for the units after it. Returns where the next unit goes; or, when the unit failed
/// with a message too long for its space, its whole result (header included) to go in the
/// buffer.
fn write_pod_direct(
    dst: &mut [u8],
    pos: usize,
    reserved: usize,
    id: u64,
    entry: task::PodEntry,
    values: usize,
    args: &[u8],
) -> Result<usize, Vec<u8>> {
    let body = pos + ResultHeader::SIZE;
    let n = args.get(..8).unwrap_or(&[0; 8]);
    dst[body..body + 4].copy_from_slice(&task::ALL.to_le_bytes());
    dst[body + 4..body + 12].copy_from_slice(n);
    let place = &mut dst[body + 12..body + 12 + values];
    // SAFETY: `MaybeUninit<u8>` has the layout of `u8`; the entry writes only whole values of
    // a `Pod` type (no padding, so no uninitialized byte), so every byte stays initialized.
    #[allow(unsafe_code)]
    let place = unsafe { &mut *(place as *mut [u8] as *mut [std::mem::MaybeUninit<u8>]) };
    let mut failure = Vec::new();
    match entry(args, place) {
        task::PodRan::Done => {
            let len = 12 + values;
            ResultHeader {
                id,
                len: len as u64,
                nfds: 0,
            }
            .write(&mut dst[pos..body]);
            return Ok(body + len);
        }
        failed => failed.encode_failure(&mut failure),
    }
    let header = ResultHeader {
        id,
        len: failure.len() as u64,
        nfds: 0,
    };
    if body + failure.len() + reserved <= dst.len() {
        header.write(&mut dst[pos..body]);
        dst[body..body + failure.len()].copy_from_slice(&failure);
        return Ok(body + failure.len());
    }
    let mut whole = vec![0; ResultHeader::SIZE];
    header.write(&mut whole);
    whole.extend_from_slice(&failure);
    Err(whole)
}

/// The worker's side of its outbox.
struct Outbox {
    arena: Option<Arena>,
    /// Reports sent through the outbox (wrapping).
    sent: u32,
}

impl Outbox {
    /// The first `need` bytes of the outbox, to write a report straight into, if the pool is
    /// done with it (growing it first if it is too small); `None` otherwise.
    fn reserve(
        &mut self,
        conn: &Connection,
        consumed: &AtomicU32,
        need: usize,
    ) -> Option<&mut [u8]> {
        if consumed.load(Ordering::Acquire) != self.sent {
            return None;
        }
        if self.arena.as_ref().is_none_or(|a| a.len() < need) {
            let a = Arena::new(need).ok()?;
            conn.send_encoded(&[NEW_ARENA], &[a.as_fd()]).ok()?;
            self.arena = Some(a);
        }
        // SAFETY: the pool consumed every report sent through the outbox (checked above: its
        // count, stored with `Release` after its last read, equals ours), so it does not read
        // the outbox until `send_direct` hands it over again.
        #[allow(unsafe_code)]
        self.arena
            .as_mut()
            .and_then(|a| unsafe { a.bytes_mut(need) })
    }

    /// Hands over the report of `len` bytes written into the outbox (after `reserve`).
    fn send_direct(&mut self, conn: &Connection, len: usize) -> Result<(), ConnectionError> {
        self.sent = self.sent.wrapping_add(1);
        let mut frame = [ARENA; 9];
        frame[1..].copy_from_slice(&(len as u64).to_le_bytes());
        conn.send_encoded(&frame, &[])
    }

    /// Sends a report: through the outbox if it is large, free and one frame can carry its
    /// descriptors; else inline, in as many frames as the descriptor limit needs.
    /// `bounds[k]..bounds[k + 1]` are unit `k`'s bytes in `report`.
    fn send(
        &mut self,
        conn: &Connection,
        consumed: &AtomicU32,
        report: &[u8],
        bounds: &[usize],
        fds: &[Vec<OwnedFd>],
    ) -> Result<(), ConnectionError> {
        let max = crate::sys::socket::MAX_FDS;
        let total_fds: usize = fds.iter().map(Vec::len).sum();
        if report.len() >= arena::THRESHOLD
            && report.len() <= arena::MAX_LEN
            && total_fds <= max
            && consumed.load(Ordering::Acquire) == self.sent
        {
            if self.arena.as_ref().is_none_or(|a| a.len() < report.len()) {
                if let Ok(a) = Arena::new(report.len()) {
                    conn.send_encoded(&[NEW_ARENA], &[a.as_fd()])?;
                    self.arena = Some(a);
                }
            }
            // SAFETY: the pool consumed every report sent through the outbox (checked above:
            // its count, stored with `Release` after its last read, equals ours), so it does
            // not read the outbox until the frame below hands it over again.
            #[allow(unsafe_code)]
            let dst = self
                .arena
                .as_mut()
                .and_then(|a| unsafe { a.bytes_mut(report.len()) });
            if let Some(dst) = dst {
                dst.copy_from_slice(report);
                self.sent = self.sent.wrapping_add(1);
                let mut frame = [ARENA; 9];
                frame[1..].copy_from_slice(&(report.len() as u64).to_le_bytes());
                let all: Vec<_> = fds.iter().flatten().map(|f| f.as_fd()).collect();
                return conn.send_encoded(&frame, &all);
            }
        }
        let mut k = 0;
        while k < fds.len() {
            let (first, mut n, mut nfds) = (k, 0, 0);
            while k < fds.len() && (n == 0 || nfds + fds[k].len() <= max) {
                nfds += fds[k].len();
                n += 1;
                k += 1;
            }
            let bytes = &report[bounds[first]..bounds[k]];
            let all: Vec<_> = fds[first..k].iter().flatten().map(|f| f.as_fd()).collect();
            conn.send_encoded_parts(&[&[INLINE], bytes], &all)?;
        }
        Ok(())
    }
}
