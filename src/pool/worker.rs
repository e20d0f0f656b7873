//! The worker process: a loop that runs batches of units and sends their results back.
//!
//! # Frames (inside `Connection` frames, parent <-> one worker)
//! A *batch* (parent -> worker) is one frame whose payload is, per unit:
//! `postcard(UnitHeader { id, entry, len, nfds })` then `len` bytes of arguments (the
//! handle-encoded `Vec<A>` of the unit's items). The frame's descriptors are the units'
//! descriptors, concatenated in order (`nfds` each).
//!
//! A *report* (worker -> parent) answers one batch: per unit, in the batch's order,
//! `postcard(ResultHeader { id, len, nfds })` then `len` bytes (the handle-encoded
//! `UnitOut<R>`), descriptors concatenated likewise.
//!
//! # The started counter
//! Reports are sent per batch, so a worker that dies part-way through a batch has not told
//! which unit it was running. Before running each unit it stores the number of units it has
//! started (wrapping `u32`) at offset 0 of its own one-page shared region (a memfd, see
//! `Region`). The parent reads it after the worker's death (which the kernel orders after
//! every store of the dead process, so `Acquire` is more than enough): of the units the dead
//! worker held, the last started one is the one that killed it; the ones before it had
//! finished (their report was lost) and the ones after had not started, and both kinds are
//! run again on another worker.
//!
//! The worker ends when its connection reaches end of file: the pool closed it (retiring the
//! worker after `maxtasksperchild` units, or shutting down).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::connection::{Connection, ConnectionError};
use crate::region::Region;
use crate::task;

/// The argument of a worker process.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WorkerArgs {
    pub(crate) conn: Connection,
    pub(crate) slot: Region,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct UnitHeader {
    pub(crate) id: u64,
    pub(crate) entry: i64,
    pub(crate) len: u64,
    pub(crate) nfds: u32,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ResultHeader {
    pub(crate) id: u64,
    pub(crate) len: u64,
    pub(crate) nfds: u32,
}

/// One unit of a frame: its header, its bytes, its descriptors.
pub(crate) type Part<'a, H> = (H, &'a [u8], Vec<OwnedFd>);

/// Splits a frame into `(header, bytes, descriptors)` parts.
pub(crate) fn split_frame<'a, H: for<'de> Deserialize<'de>>(
    mut bytes: &'a [u8],
    fds: Vec<OwnedFd>,
    nfds_len: impl Fn(&H) -> (u64, u32),
) -> Result<Vec<Part<'a, H>>, String> {
    let mut fds = fds.into_iter();
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (h, rest) =
            postcard::take_from_bytes::<H>(bytes).map_err(|e| format!("bad unit header: {e}"))?;
        let (len, nfds) = nfds_len(&h);
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

/// The worker process's target.
pub(crate) fn worker_main(args: WorkerArgs) {
    let WorkerArgs { conn, slot } = args;
    let started = slot.atomic_u32(0);
    let mut count: u32 = 0;
    loop {
        let (bytes, fds) = match conn.recv_raw_timeout(Duration::from_secs(3600)) {
            Ok(frame) => frame,
            Err(ConnectionError::Timeout) => continue,
            // End of file: the pool retired this worker or shut down.
            Err(_) => return,
        };
        let units = match split_frame::<UnitHeader>(&bytes, fds, |h| (h.len, h.nfds)) {
            Ok(u) => u,
            // The parent broke the protocol: nothing sensible can follow.
            Err(_) => std::process::exit(70),
        };
        let mut outputs = Vec::with_capacity(units.len());
        for (h, args, fds) in units {
            count = count.wrapping_add(1);
            started.store(count, Ordering::Release);
            // SAFETY: the offset was made by `pool_entry_offset` in the parent, which runs
            // this same executable (the worker was started by the crate, which checks the
            // build id under the re-executing start methods).
            #[allow(unsafe_code)]
            let entry = unsafe { task::pool_entry_at(h.entry) };
            outputs.push((h.id, entry(args, fds)));
        }
        if send_report(&conn, outputs).is_err() {
            return;
        }
    }
}

/// Sends the outputs of a batch, in as many frames as the descriptor limit needs.
fn send_report(
    conn: &Connection,
    outputs: Vec<(u64, task::UnitOutput)>,
) -> Result<(), ConnectionError> {
    let max = crate::sys::socket::MAX_FDS;
    let mut outputs: Vec<(u64, task::UnitOutput)> = outputs
        .into_iter()
        .map(|(id, out)| {
            if out.fds.len() <= max {
                return (id, out);
            }
            // The variant does not depend on the result type: this decodes as any UnitOut<R>.
            let msg = format!(
                "a task's results can carry at most {max} handles, these carry {}",
                out.fds.len()
            );
            let bytes =
                postcard::to_allocvec(&task::UnitOut::<()>::Failed(msg)).unwrap_or_default();
            (
                id,
                task::UnitOutput {
                    bytes,
                    fds: Vec::new(),
                },
            )
        })
        .collect();
    while !outputs.is_empty() {
        let mut n = 0;
        let mut nfds = 0;
        while n < outputs.len() && (n == 0 || nfds + outputs[n].1.fds.len() <= max) {
            nfds += outputs[n].1.fds.len();
            n += 1;
        }
        let rest = outputs.split_off(n);
        let group = std::mem::replace(&mut outputs, rest);
        let headers: Vec<Vec<u8>> = group
            .iter()
            .map(|(id, out)| {
                postcard::to_allocvec(&ResultHeader {
                    id: *id,
                    len: out.bytes.len() as u64,
                    nfds: out.fds.len() as u32,
                })
                .unwrap_or_default()
            })
            .collect();
        let mut parts: Vec<&[u8]> = Vec::with_capacity(group.len() * 2);
        for (h, (_, out)) in headers.iter().zip(&group) {
            parts.push(h);
            parts.push(&out.bytes);
        }
        let fds: Vec<_> = group
            .iter()
            .flat_map(|(_, out)| out.fds.iter().map(|f| f.as_fd()))
            .collect();
        conn.send_encoded_parts(&parts, &fds)?;
    }
    Ok(())
}
