//! Fuzzing of every decoder and parser that reads untrusted input: wire frames, data
//! batches, period manifests, progress reports, reconciliation messages, CSV exports and
//! topology files.
//!
//! [`targets`] holds the targets (functions of arbitrary bytes that must not panic and check
//! round-trip and agreement properties); [`runner`] is a mutating fuzzer that runs them on
//! stable Rust under `cargo test` (`tests/fuzz.rs`); [`seeds`] makes the seed corpus;
//! [`alloc`] counts allocations for the memory bound. See ARCHITECTURE.md, "Fuzzing".

pub mod alloc;
pub mod mutate;
pub mod runner;
pub mod seeds;
pub mod targets;
