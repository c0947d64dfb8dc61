//! Attaches to an arbitrary or corrupted region file (raw bytes, a valid region
//! with bytes overwritten, truncated or extended, a valid header over garbage)
//! and runs every operation on it (see `testkit::fuzz::attach_target`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| testkit::fuzz::attach_target(data));
