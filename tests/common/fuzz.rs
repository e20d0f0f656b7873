//! A stable stand-in for the fuzzers: runs a `multiprocess::fuzz` entry point over the
//! committed seed corpus of its target (`fuzz/corpus/<target>/`), then over seeded mutations
//! of those seeds (bit flips, byte sets to edge values, inserts, deletes, splices, lengths
//! overwritten with large numbers). Deterministic: the same seed gives the same inputs, so a
//! failure is reproducible by its printed case number.

use std::path::PathBuf;

/// A small, fast, seeded generator (xorshift64*); quality is not the point, coverage of odd
/// bytes is.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// The seed inputs of `target`, read from `fuzz/corpus/<target>/` (sorted by file name).
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("seed corpus {}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    names.sort();
    let seeds: Vec<Vec<u8>> = names
        .iter()
        .map(|p| std::fs::read(p).expect("seed file"))
        .collect();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

const EDGES: [u64; 10] = [
    0,
    1,
    0x7f,
    0xff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX,
    u64::MAX - 7,
];

/// One mutation of `input` (possibly several edits).
pub fn mutate(rng: &mut Rng, input: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    let mut v = input.to_vec();
    let edits = 1 + rng.below(4);
    for _ in 0..edits {
        match rng.below(7) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = [0u8, 0xff, 0x7f, 0x80, 1][rng.below(5)];
            }
            2 => {
                let i = rng.below(v.len() + 1);
                let n = 1 + rng.below(16);
                for _ in 0..n {
                    v.insert(i, rng.next() as u8);
                }
            }
            3 if !v.is_empty() => {
                let i = rng.below(v.len());
                let n = 1 + rng.below(v.len() - i);
                v.drain(i..i + n);
            }
            4 if !others.is_empty() => {
                let o = &others[rng.below(others.len())];
                let i = rng.below(v.len() + 1);
                let j = rng.below(o.len() + 1);
                v.truncate(i);
                v.extend_from_slice(&o[j..]);
            }
            5 if v.len() >= 8 => {
                // Overwrite an aligned or unaligned word with an edge value (lengths, positions).
                let width = [1usize, 2, 4, 8][rng.below(4)];
                let i = rng.below(v.len() - width + 1);
                let e = EDGES[rng.below(EDGES.len())].to_le_bytes();
                v[i..i + width].copy_from_slice(&e[..width]);
            }
            _ => {
                let i = rng.below(v.len() + 1);
                v.truncate(i);
            }
        }
    }
    v
}

/// Runs `f` over every seed of `target`, then over `cases` seeded mutations of them.
/// `f` must not panic; a panic fails the test with the case number and input.
pub fn run(target: &str, cases: usize, f: impl Fn(&[u8])) {
    let seeds = seeds(target);
    for s in &seeds {
        f(s);
    }
    let mut rng = Rng::new(0x6d70_6675_7a7a ^ target.len() as u64);
    for case in 0..cases {
        let base = &seeds[rng.below(seeds.len())];
        let input = mutate(&mut rng, base, &seeds);
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&input)));
        if res.is_err() {
            panic!("{target}: case {case} panicked on input {input:02x?}");
        }
    }
}
