//! Every decoder of input from the network or the disk ([`fuzz`]'s entry points), fed
//! garbage: random bytes, and valid encodings with bytes flipped, cut or appended. None
//! may panic; each refuses with its error. A seeded quick run for the test suite; the
//! coverage-guided runs are `fuzz/`'s (see its README).

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use crate::http::fuzz;

const ROUNDS: usize = 3_000;

/// Random bytes, and mutations of `seeds`: a flipped byte, a cut, junk appended.
fn inputs(seeds: &[Vec<u8>], rng: &mut StdRng) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(ROUNDS);
    for i in 0..ROUNDS {
        let mut v = if seeds.is_empty() || i % 3 == 0 {
            let mut v = vec![0u8; rng.gen_range(0..256)];
            rng.fill_bytes(&mut v);
            v
        } else {
            seeds[i % seeds.len()].clone()
        };
        if !v.is_empty() {
            match rng.gen_range(0..4) {
                0 => {
                    let at = rng.gen_range(0..v.len());
                    v[at] ^= 1 << rng.gen_range(0..8);
                }
                1 => v.truncate(rng.gen_range(0..v.len())),
                2 => v.extend((0..rng.gen_range(1..16)).map(|_| rng.gen::<u8>())),
                _ => {}
            }
        }
        out.push(v);
    }
    out
}

/// Each fuzzing entry point on its seeds and mutations of them, and on random bytes.
#[test]
fn every_decoder_refuses_garbage_without_panicking() {
    let seeds = fuzz::seeds();
    for (i, target) in fuzz::TARGETS.iter().enumerate() {
        let mut rng = StdRng::seed_from_u64(0xC0FFE + i as u64);
        let mine: Vec<Vec<u8>> = seeds.iter().filter(|(t, _)| t == target).map(|(_, s)| s.clone()).collect();
        assert!(!mine.is_empty(), "no seed for {target}");
        for s in &mine {
            fuzz::run(target, s);
        }
        for input in inputs(&mine, &mut rng) {
            fuzz::run(target, &input);
        }
    }
}

/// The checked-in corpus of `fuzz/` (inputs the fuzzer found interesting, and any that
/// once crashed a target): every one must still pass.
#[test]
fn the_fuzz_corpus_passes() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for target in fuzz::TARGETS {
        let Ok(entries) = std::fs::read_dir(root.join(target)) else { continue };
        for e in entries.flatten() {
            let data = std::fs::read(e.path()).unwrap_or_default();
            fuzz::run(target, &data);
        }
    }
}
