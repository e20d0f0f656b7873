//! Another build of a program using the crate (another executable, so another build id), for
//! the MPI test of a job whose ranks run different builds. As a worker rank it never reaches
//! `main`.

fn main() {
    multiprocess::init();
    println!("another build's main");
}
