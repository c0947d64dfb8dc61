//! The fuzz targets' bodies: [`render_target`] and [`attach_target`] are what
//! `fuzz/fuzz_targets/*.rs` run under libFuzzer and what
//! `tests/fuzz_regressions.rs` runs under plain `cargo test` (kept crashers, the
//! seed corpus and deterministic pseudo-random inputs).
//!
//! - `input`: the input read through `arbitrary::Unstructured`
//! - `abi`: fresh regions, the Rust API and C ABI calls, the chunked render, Lua's writes
//! - `gen`: definitions, names and label values from the input
//! - `oracle`: the model of the registry and the checks of every body against it
//! - `render`, `attach`: the two targets
//!
//! Every input gets fresh region files (`/dev/shm/shmetrics-fuzz-*-<pid>-<n>`),
//! unlinked right after they are opened. The library never unmaps a region in
//! nginx (Lua holds raw pointers into it), so [`Mapped`] hands it back with
//! `region::forget` when the input is done: unmapped, and out of the list of
//! paths `open` searches (otherwise a fuzzing process would slow down as that
//! list grows, and run out of mappings after ~65,000 inputs).

pub mod abi;
pub mod attach;
pub mod gen;
pub mod input;
pub mod oracle;
pub mod render;

pub use abi::{define, fresh_path, open_region, series, Def, Mapped};
pub use attach::{attach_target, template, Template, ATTACH_PARAMS};
pub use render::{render_target, RENDER_PARAMS};
