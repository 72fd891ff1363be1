//! The full-stack tier (`credit_simulations::full_stack`): the real node runtime, QUIC,
//! pinned TLS and Ed25519 signatures of a Jieyang-sized network (national, province, city,
//! five counties) over turmoil, with the faults its seed chooses (per-link latency and disk
//! time, two counties partitioned from the city, the province↔national link held, the city
//! crashed at a moment it had a write not yet durable and restarted over the same store).
//!
//! Guarantees checked: a run converges within the scenario's bound after healing — every
//! submitted batch acknowledged and durable at the national platform, every outbox drained,
//! every county holding a verified receipt from every hop — and no county ever holds a
//! receipt for a batch its receiver did not durably hold; the same seed replays to the same
//! trace hash. Seeds are chosen for what they exercise: 63 made the city reconnect to the
//! province before the province found the old connection dead (relayed receipts were once
//! sent on the dead link and never again), 69 crashed the city with a received batch not yet
//! durable.

use credit_simulations::full_stack::{self, BATCHES_PER_COUNTY, CONVERGE_BOUND, Report};
use node::core::CoreConfig;

fn run(seed: u64) -> Report {
    let report = full_stack::run(seed, CoreConfig::default());
    assert_eq!(report.failure, None, "seed {seed} failed: {report:#?}");
    assert_eq!(report.nodes, 8);
    assert_eq!(report.submitted, 5 * BATCHES_PER_COUNTY);
    assert_eq!(report.acknowledged, report.submitted);
    // The city crashed and started again: one start more than nodes.
    assert_eq!(report.node_starts, 9, "{report:#?}");
    assert!(report.crashed_at_ms.is_some() && report.restarted_at_ms.is_some());
    let after = report.converged_after_ms.expect("converged");
    assert!(after <= CONVERGE_BOUND.as_millis() as u64);
    assert!(report.udp_bytes > report.batch_bytes);
    report
}

#[test]
fn jieyang_converges_under_faults_and_replays_from_its_seed() {
    let first = run(63);
    let second = run(63);
    assert_eq!(
        second.trace_hash, first.trace_hash,
        "same seed, different run"
    );
    assert_eq!(second.events, first.events);
    assert_eq!(second.virtual_ms, first.virtual_ms);
    assert_eq!(second.udp_bytes, first.udp_bytes);

    // Another seed is another run.
    let other = run(69);
    assert_ne!(other.trace_hash, first.trace_hash);
}

#[test]
fn a_crash_that_loses_unsynced_writes_heals() {
    let report = run(69);
    assert!(
        report.lost_in_crash > 0,
        "the crash lost nothing: {report:#?}"
    );
}
