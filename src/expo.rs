//! Prometheus text exposition primitives (stub, being written).
