//! The `ring_records` fuzz target on stable: a queue ring filled by the crate, then words of
//! its memory overwritten as a hostile peer would, then non-blocking puts and gets; every call
//! returns (errors are fine), without a panic, a crash or a hang.

mod common;

#[test]
fn ring_records() {
    common::deadline(120, || {
        common::fuzz::run("ring_records", 3000, multiprocess::fuzz::ring_records)
    });
}
