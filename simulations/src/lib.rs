//! Deterministic simulations of the credit network: the nodes' real code, QUIC and pinned
//! mutual TLS included, over turmoil's simulated network and virtual time, replayable from
//! one seed.
//!
//! [`full_stack`] runs the real node runtime (core and executor, QUIC, TLS, Ed25519) of a
//! whole city's network over turmoil, under faults.
//! [`net`] runs quinn over turmoil's UDP and makes node endpoints on simulated hosts;
//! [`trace`] digests what happened, so a test can check that a seed replays exactly;
//! [`sim_builder`] sets turmoil up as CRATES.md (trap 8) says: explicit epoch and fixed latency, a
//! 10 ms tick, a seeded rng and a UDP queue large enough for QUIC's bursts.

use std::time::{Duration, UNIX_EPOCH};

pub mod core_tier;
pub mod full_stack;
pub mod net;
pub mod trace;

/// Simulated time per turmoil step.
pub const TICK: Duration = Duration::from_millis(10);
/// The simulations' wall-clock start: 2026-12-01T00:00:00Z.
pub const EPOCH_SECS: u64 = 1_796_083_200;
/// One-way latency of every simulated link. Fixed: turmoil draws a latency per message, so a
/// range reorders packets, and QUIC then declares many of them lost (measured: 2 MiB took
/// 10 s one way with 5–25 ms, 160 ms with 10 ms). Widen it with
/// `min_message_latency`/`max_message_latency` to test reordering.
pub const LATENCY: Duration = Duration::from_millis(10);
/// Datagrams a simulated socket queues before turmoil drops more (its default is 64; one
/// QUIC flight over a fast link is thousands).
pub const UDP_CAPACITY: usize = 16_384;

/// A turmoil builder with every source of variation fixed: the rng from `seed`, the epoch,
/// the tick, the latency range; and a UDP queue large enough for QUIC. Loss and the run's
/// length are the caller's to set.
pub fn sim_builder(seed: u64) -> turmoil::Builder {
    let mut builder = turmoil::Builder::new();
    builder
        .rng_seed(seed)
        .epoch(UNIX_EPOCH + Duration::from_secs(EPOCH_SECS))
        .tick_duration(TICK)
        .min_message_latency(LATENCY)
        .max_message_latency(LATENCY)
        .udp_capacity(UDP_CAPACITY)
        .simulation_duration(Duration::from_secs(60));
    builder
}

/// The seed of one node in a simulation: each host gets its own stream, all fixed by the
/// simulation's seed.
pub fn node_seed(sim_seed: u64, host: &str) -> [u8; 32] {
    let mut material = sim_seed.to_le_bytes().to_vec();
    material.extend_from_slice(host.as_bytes());
    blake3::derive_key("credit-network/sim/node-seed/v1", &material)
}
