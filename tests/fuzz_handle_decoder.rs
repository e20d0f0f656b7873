//! The handle decoder over the seed corpus and seeded mutations (the stable form of the
//! `handle_decoder` fuzz target), checking that unclaimed descriptors are closed.
mod common;

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn handle_decoder_never_panics_and_closes_what_it_does_not_use() {
    let before = fds();
    common::fuzz::run("handle_decoder", 3000, multiprocess::fuzz::handle_decoder);
    assert_eq!(fds(), before, "descriptors leaked");
}
