//! shmetrics: lock-free per-worker Prometheus metrics in shared memory for nginx/OpenResty.
//!
//! See `docs/design.md` for the shared-memory layout and the reader protocol.

pub mod expo;
