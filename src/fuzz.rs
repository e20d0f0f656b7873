//! Entry points for the fuzz targets in `fuzz/` and their stable runs in `tests/fuzz_*.rs`.
//!
//! Not part of the API: hidden from the docs, no stability promise. Each function takes bytes
//! as a hostile peer could write them (a socket's stream, a shared region, a ledger file),
//! runs the crate's own parser or reader over them, and must return (an error is fine) without
//! a panic, an abort, an out-of-bounds access, a hang or an allocation larger than the input
//! justifies. The fuzzers and the stable tests call exactly these functions.

/// The header check of a received `Value`/`Array`/raw/atomic value (magic, element size and
/// alignment, length against the region's size), over the 40 header bytes of the layout
/// followed by the region's length (8 bytes, little-endian).
pub fn value_header(data: &[u8]) {
    crate::shared_memory::value::fuzz_header(data);
}
