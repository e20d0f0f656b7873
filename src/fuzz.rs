//! Entry points for the fuzz targets in `fuzz/` and their stable runs in `tests/fuzz_*.rs`.
//!
//! Not part of the API: hidden from the docs, no stability promise. Each function takes bytes
//! as a hostile peer could write them (a socket's stream, a shared region, a ledger file),
//! runs the crate's own parser or reader over them, and must return (an error is fine) without
//! a panic, an abort, an out-of-bounds access, a hang or an allocation larger than the input
//! justifies. The fuzzers and the stable tests call exactly these functions.

/// A queue's shared memory as a hostile peer could leave it: a real ring, filled by the crate,
/// then words of its header and records overwritten from `data`, then non-blocking puts and
/// gets (see the input layout in `queue/ring.rs`, `fuzz_records`).
pub fn ring_records(data: &[u8]) {
    crate::queue::fuzz_ring_records(data);
}
