//! Replays the fuzzers' saved inputs through the fuzz target functions, and
//! runs a few hundred deterministic pseudo-random inputs through each, so
//! that `make test` keeps every bug the fuzzers found fixed without
//! needing libFuzzer (see docs/fuzzing.md).
//!
//! The target functions are `fuzz/src/lib.rs`, the library of the
//! cargo-fuzz crate, compiled here as the module `harness`: the broker's own
//! library does not carry them.
//!
//! - `fuzz/seeds/<target>/`: valid inputs the fuzzers start from, generated
//!   by `harness::seeds()` (regenerate with
//!   `HUTONG_BLESS_SEEDS=1 cargo test --release --test fuzz_regressions`).
//! - `fuzz/regressions/<target>/`: every crashing input a fuzzer found,
//!   minimised, kept after the fix.

#[path = "../fuzz/src/lib.rs"]
mod harness;

use harness::{seeds, Target, TARGETS};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The target function registered under `name`.
fn target(name: &str) -> Target {
    TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no fuzz target named {name}"))
        .1
}

/// The files of `fuzz/<kind>/<target>/`, sorted; none when it is missing.
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join(kind).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("read a fuzz input directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs one input, naming it if the target panics.
fn replay(name: &str, f: Target, input: &[u8], what: &dyn std::fmt::Display) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| f(input))) {
        let msg = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("(non-string panic)");
        panic!("fuzz target {name} failed on {what}: {msg}");
    }
}

#[test]
fn seed_files_match_the_generated_seeds() {
    let bless = std::env::var_os("HUTONG_BLESS_SEEDS").is_some();
    for (target, name, bytes) in seeds() {
        let path = fuzz_dir().join("seeds").join(target).join(name);
        if bless {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
            continue;
        }
        let on_disk = std::fs::read(&path).unwrap_or_default();
        assert!(
            on_disk == bytes,
            "{} is missing or stale; regenerate the seeds with \
             HUTONG_BLESS_SEEDS=1 cargo test --release --test fuzz_regressions",
            path.display()
        );
    }
}

#[test]
fn every_seed_and_saved_crash_replays_cleanly() {
    for (name, f) in TARGETS {
        let seed_files = inputs("seeds", name);
        assert!(!seed_files.is_empty(), "fuzz/seeds/{name}/ has no inputs");
        for path in seed_files.iter().chain(&inputs("regressions", name)) {
            let bytes = std::fs::read(path).unwrap();
            replay(name, f, &bytes, &path.display());
        }
    }
}

#[test]
fn saved_crashes_belong_to_a_target() {
    let Ok(entries) = std::fs::read_dir(fuzz_dir().join("regressions")) else {
        return;
    };
    for entry in entries {
        let name = entry.unwrap().file_name();
        let name = name.to_string_lossy();
        assert!(
            TARGETS.iter().any(|(t, _)| *t == name),
            "fuzz/regressions/{name} is not the name of a fuzz target"
        );
    }
}

/// xorshift64*: a fixed seed gives the same inputs on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A pseudo-random input: random bytes, or a seed of the target with a
/// few bytes changed, cut, or a run of random bytes spliced in, which
/// keeps most of the structure and so reaches deeper than noise.
fn random_input(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    if seeds.is_empty() || rng.below(4) == 0 {
        let len = rng.below(600);
        return (0..len).map(|_| rng.next() as u8).collect();
    }
    let mut input = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(4) {
        match rng.below(4) {
            0 | 1 if !input.is_empty() => {
                let at = rng.below(input.len());
                input[at] = rng.next() as u8;
            }
            2 if !input.is_empty() => {
                let cut = rng.below(input.len());
                input.truncate(cut);
            }
            _ => {
                let at = rng.below(input.len() + 1);
                let run: Vec<u8> = (0..1 + rng.below(16)).map(|_| rng.next() as u8).collect();
                input.splice(at..at, run);
            }
        }
    }
    input
}

fn fuzz_randomly(name: &str, cases: usize) {
    let f = target(name);
    let seeds: Vec<Vec<u8>> = seeds()
        .into_iter()
        .filter(|(t, _, _)| *t == name)
        .map(|(_, _, bytes)| bytes)
        .collect();
    let mut rng = Rng(0x6875_746f_6e67_u64 ^ name.len() as u64);
    for case in 0..cases {
        let input = random_input(&mut rng, &seeds);
        replay(
            name,
            f,
            &input,
            &format_args!("random case {case} ({input:02x?})"),
        );
    }
}

#[test]
fn random_frames_keep_the_decoder_invariants() {
    fuzz_randomly("frame_decoder", 500);
}

#[test]
fn random_batches_keep_the_validator_invariants() {
    fuzz_randomly("batch_validator", 500);
}

#[test]
fn random_segments_keep_the_recovery_invariants() {
    fuzz_randomly("journal_recovery", 500);
}

#[test]
fn random_segments_open_or_fail_cleanly() {
    fuzz_randomly("journal_open", 300);
}

#[test]
fn random_segment_indexes_open_or_fail_cleanly() {
    fuzz_randomly("segment_index", 500);
}

#[test]
fn random_catalog_snapshots_decode_or_fail_cleanly() {
    fuzz_randomly("catalog_snapshot", 500);
}

#[test]
fn seeds_are_valid_inputs_that_reach_past_the_checks() {
    use hutong::journal::checkpoint;
    use hutong::journal::scan::{scan, ScanStop};
    use hutong::journal::seg_index::{index_file_name, SegmentIndex};
    use hutong::wire::batch::{check_producer_batch, check_stored_batch, split_batches};
    use hutong::wire::frame::{check_frame, RESPONSE_HEADER_LEN};

    let batches_in = |bytes: &[u8]| {
        let mut n = 0;
        let r = scan(bytes, 0, 0, |_, _| {
            n += 1;
            Ok(())
        });
        (n, r.stop)
    };
    for (target, name, bytes) in seeds() {
        let ok = match (target, name) {
            ("frame_decoder", _) => {
                matches!(
                    check_frame(&bytes, RESPONSE_HEADER_LEN, 1 << 24),
                    Ok(Some(_))
                )
            }
            ("batch_validator", _) => {
                split_batches(&bytes).count() > 0
                    && split_batches(&bytes)
                        .all(|b| check_stored_batch(b).is_ok() || check_producer_batch(b).is_ok())
            }
            ("journal_recovery", "checkpoint") => checkpoint::decode(&bytes).is_ok(),
            ("journal_recovery", _) => batches_in(&bytes) == (3, ScanStop::End),
            ("journal_open", _) => batches_in(&bytes).0 >= 2,
            ("segment_index", name) => {
                let dir = tempfile::tempdir().unwrap();
                let start = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
                std::fs::write(dir.path().join(index_file_name(start)), &bytes).unwrap();
                let idx = SegmentIndex::open(dir.path(), start).unwrap().unwrap();
                idx.verify().is_ok()
                    && (idx.sections().len() >= 3 || name.ends_with("without_sections"))
            }
            ("catalog_snapshot", name) => {
                let mut r = hutong::wire::codec::Reader::new(&bytes);
                hutong::journal::snapshot::decode(&mut r).is_ok_and(|s| {
                    r.remaining() == 0
                        && s.topics.len() == 2
                        && (s.producers.states.len() >= 3 || name.ends_with("without_producers"))
                })
            }
            _ => false,
        };
        assert!(
            ok,
            "seed {target}/{name} is not the valid input it should be"
        );
    }
}
