//! The ledger parser over the seed corpus and seeded mutations (the stable form of the
//! `ledger` fuzz target).
mod common;

#[test]
fn ledger_parser_never_lets_a_bad_name_through() {
    common::fuzz::run("ledger", 5000, multiprocess::fuzz::ledger);
}
