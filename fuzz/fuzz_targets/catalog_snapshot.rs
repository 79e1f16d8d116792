//! `hutong_fuzz::catalog_snapshot` under libFuzzer; see docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hutong_fuzz::catalog_snapshot(data));
