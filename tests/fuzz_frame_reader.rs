//! The frame reader over the seed corpus and seeded mutations (the stable form of the
//! `frame_reader` fuzz target).
mod common;

#[test]
fn frame_reader_never_panics_or_hangs() {
    common::fuzz::run("frame_reader", 3000, multiprocess::fuzz::frame_reader);
}
