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
            let _ = $($m)::+::decode::<crate::Dynamic<Vec<Shape>>>(data, Vec::new());
            let _ = $($m)::+::decode::<crate::Dynamic<serde::de::IgnoredAny>>(data, Vec::new());
        }};
    }
    shapes!(crate::handle);
    shapes!(crate::wire);
}

/// The frame reader, fed bytes as a peer's socket would carry them: `data` is written to a
/// socket-only connection (at most 64 KiB, then end of file) and read back as messages until
/// an error. Every header field (magic, descriptor count, length) comes from the input.
pub fn frame_reader(data: &[u8]) {
    let Ok((a, b)) = crate::connection::__socket_only_pair() else {
        return;
    };
    b.set_max_message_len(1 << 20);
    let data = &data[..data.len().min(64 << 10)];
    let mut written = 0;
    while written < data.len() {
        match rustix::io::write(&a, &data[written..]) {
            Ok(n) if n > 0 => written += n,
            _ => break,
        }
    }
    drop(a);
    for _ in 0..1024 {
        match b.recv_bytes_timeout(std::time::Duration::from_millis(100)) {
            Ok(_) | Err(crate::ConnectionError::TooLarge { .. }) => {}
            Err(_) => break,
        }
    }
}

/// The handle decoder: `data` decoded as values holding handles, with a few real descriptors
/// beside it (`/dev/null`, and a sealed memfd of the wrong layout), as a peer could send them.
/// Every handle type must refuse what is not its own, and unclaimed descriptors are closed.
pub fn handle_decoder(data: &[u8]) {
    use std::os::fd::{AsFd, OwnedFd};
    let Some((&n, data)) = data.split_first() else {
        return;
    };
    let null = std::fs::File::open("/dev/null").ok().map(OwnedFd::from);
    let region = crate::region::Region::new("fuzz", 4096).ok();
    let fds = || -> Vec<OwnedFd> {
        (0..n % 4)
            .filter_map(|i| match (i % 2, &null, &region) {
                (0, Some(f), _) => f.try_clone().ok(),
                (_, _, Some(r)) => r.as_fd().try_clone_to_owned().ok(),
                _ => None,
            })
            .collect()
    };
    use crate::handle::decode;
    let _ = decode::<(crate::handle::SharedFd, String)>(data, fds());
    let _ = decode::<Vec<crate::handle::SharedFd>>(data, fds());
    let _ = decode::<crate::Queue<u64>>(data, fds());
    let _ = decode::<crate::Connection>(data, fds());
    let _ = decode::<crate::Event>(data, fds());
    let _ = decode::<crate::Lock>(data, fds());
    let _ = decode::<crate::Value<u64>>(data, fds());
    let _ = decode::<crate::Array<u32>>(data, fds());
    let _ = decode::<crate::SharedMemory>(data, fds());
    let _ = decode::<crate::Barrier>(data, fds());
}
