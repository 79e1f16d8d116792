//! `hutong_fuzz::segment_index` under libFuzzer; see docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hutong_fuzz::segment_index(data));
