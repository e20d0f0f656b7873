//! The value decoders (the crate's format for processes, connections and queues, and the
//! pool's) over the seed corpus and seeded mutations: the stable form of the `value_decoder`
//! fuzz target.
mod common;
use std::time::{Duration, Instant};

#[test]
fn value_decoders_never_panic() {
    common::fuzz::run("value_decoder", 3000, multiprocess::fuzz::value_decoder);
}

#[test]
fn a_length_of_two_to_the_sixty_is_refused_quickly() {
    // A varint and a fixed-width length both announcing 2^60 elements, with nothing after.
    let varint = [0x80u8, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10];
    let fixed = (1u64 << 60).to_le_bytes();
    for input in [&varint[..], &fixed[..]] {
        let t = Instant::now();
        multiprocess::fuzz::value_decoder(input);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{input:02x?}: {:?}",
            t.elapsed()
        );
    }
}
