//! Builds a region from the input (families, series, label values, cell bit
//! patterns, deletes, resets, foreign slots) through the Rust API and the C ABI,
//! then renders it in every format with arbitrary chunk hints and filters and
//! checks the output against a model (see `testkit::fuzz::render_target`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| testkit::fuzz::render_target(data));
