//! What the benchmarks share. `log` writes a large event log straight through the store's own
//! writer (the same event types, the same hash chain), so a benchmark can start KafFlow on a
//! year of history without sending it a million HTTP calls first.

#![allow(dead_code)]

pub mod log;
