//! `hutong::fuzz_targets::batch` under libFuzzer; see docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hutong::fuzz_targets::batch(data));
