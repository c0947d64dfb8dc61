//! What shmetrics' tests (`tests/`) and fuzz targets (`fuzz/`) share, compiled
//! once as a library:
//!
//! - [`expo`]: the one exposition reader (text 0.0.4 and OpenMetrics)
//! - [`json`]: JSON through serde_json, in order, and the JSON view's shape
//! - [`model`]: the reference model of a series' value, from recorded operations
//! - [`shm`]: region files of tests (unique names, a second mapping), `copy_tree`
//! - [`writer`]: the cell writes of Lua's hot path (counter add, gauge set and inc)
//! - [`fuzz`]: the fuzz target bodies and their oracle
//! - `harness` (feature `harness`, on for `tests/`, off for `fuzz/`): the nginx,
//!   HTTP and Prometheus harness of the integration tests

pub mod expo;
pub mod fuzz;
#[cfg(feature = "harness")]
pub mod harness;
pub mod json;
pub mod model;
pub mod shm;
pub mod writer;

pub use shm::XorShift;
