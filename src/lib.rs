//! shmetrics: lock-free per-worker Prometheus metrics in shared memory for nginx/OpenResty.
//!
//! The C ABI is in [`ffi`]; `docs/architecture.md` has the module graph (the
//! order imports run in, checked by `tests/architecture.rs`); `docs/layout.md` has the
//! shared-memory layout and the reader protocol; `lua/resty/shmetrics.lua` is
//! the module nginx users call.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod cells;
pub mod corrupt;
pub mod error;
pub mod expo;
pub mod ffi;
pub mod hash;
pub mod json;
pub mod layout;
pub mod offload;
pub mod owner;
pub mod records;
pub mod region;
pub mod registry;
pub mod scrape;
pub mod slots;
