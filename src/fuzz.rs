//! Entry points for the fuzz targets in `fuzz/` and their stable runs in `tests/fuzz_*.rs`.
//!
//! Not part of the API: hidden from the docs, no stability promise. Each function takes bytes
//! as a hostile peer could write them (a socket's stream, a shared region, a ledger file),
//! runs the crate's own parser or reader over them, and must return (an error is fine) without
//! a panic, an abort, an out-of-bounds access, a hang or an allocation larger than the input
//! justifies. The fuzzers and the stable tests call exactly these functions.

/// The ledger parser: the names a ledger file's bytes would make
/// [`remove_orphans`](crate::shared_memory::remove_orphans) remove. Each must be one path
/// component that `SharedMemory::create` would accept (no `/`, no control character, not a
/// ledger); the function panics if the parser lets another through.
pub fn ledger(data: &[u8]) {
    for name in crate::shared_memory::parse_ledger(data) {
        assert!(
            !name.is_empty()
                && name.len() <= 255
                && !name.contains('/')
                && name != "."
                && name != ".."
                && !name.chars().any(char::is_control)
                && !name.starts_with("multiprocess-ledger."),
            "the ledger parser let {name:?} through"
        );
    }
}

/// The header check of a received `Value`/`Array`/raw/atomic value (magic, element size and
/// alignment, length against the region's size), over the 40 header bytes of the layout
/// followed by the region's length (8 bytes, little-endian).
pub fn value_header(data: &[u8]) {
    crate::shared_memory::value::fuzz_header(data);
}

/// A queue's shared memory as a hostile peer could leave it: a real ring, filled by the crate,
/// then words of its header and records overwritten from `data`, then non-blocking puts and
/// gets (see the input layout in `queue/ring.rs`, `fuzz_records`).
pub fn ring_records(data: &[u8]) {
    crate::queue::fuzz_ring_records(data);
}

/// A value as the crate decodes it from another process (Process arguments and results,
/// Connection and Queue messages through `handle::decode`, Pool arguments and results through
/// the pool's wire format), for a handful of shapes. Errors are fine; a panic, an abort or an
/// allocation far beyond the input is not (sequence lengths come from the input, so a decoder
/// that trusted them would try to reserve exabytes).
pub fn value_decoder(data: &[u8]) {
    use std::collections::HashMap;

    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    enum Shape {
        Unit,
        Pair(u32, String),
        Record {
            id: u64,
            tags: Vec<String>,
            blob: crate::Bytes,
        },
        Nested(Option<Box<Shape>>),
    }

    macro_rules! shapes {
        ($($m:ident)::+) => {{
            let _ = $($m)::+::decode::<u64>(data, Vec::new());
            let _ = $($m)::+::decode::<String>(data, Vec::new());
            let _ = $($m)::+::decode::<Vec<u8>>(data, Vec::new());
            let _ = $($m)::+::decode::<Vec<String>>(data, Vec::new());
            let _ = $($m)::+::decode::<Option<Vec<u64>>>(data, Vec::new());
            let _ = $($m)::+::decode::<HashMap<String, Vec<u8>>>(data, Vec::new());
            let _ = $($m)::+::decode::<(char, i128, f32, bool)>(data, Vec::new());
            let _ = $($m)::+::decode::<Vec<Shape>>(data, Vec::new());
        }};
    }
    shapes!(crate::handle);
    shapes!(crate::pool::wire);
}
