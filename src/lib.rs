//! shmetrics: lock-free per-worker Prometheus metrics in shared memory for nginx/OpenResty.
//!
//! The C ABI is in [`ffi`]; `docs/layout.md` has the shared-memory layout and the
//! reader protocol; `lua/resty/shmetrics.lua` is the module nginx users call.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod check;
pub mod error;
pub mod expo;
pub mod ffi;
pub mod hash;
pub mod json;
pub mod layout;
pub mod offload;
pub mod region;
pub mod render;
pub mod store;
