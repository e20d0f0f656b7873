//! The stable run of the `value_header` fuzz target: the header check of a received
//! Value/Array over its seed corpus and seeded mutations.

mod common;

#[test]
fn value_header() {
    common::deadline(120, || {
        common::fuzz::run("value_header", 3000, multiprocess::fuzz::value_header)
    });
}
