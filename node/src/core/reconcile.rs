//! Reconciliation (对账) on a link: the child and its parent compare what they hold for the
//! child's subtree, one year at a time, with range-based set reconciliation
//! ([`protocol::reconcile`], negentropy v1) so the cost grows with the difference, not the
//! total.
//!
//! Two kinds of session, both started by the child (the initiator):
//! - **batches**: the ids of batches and manifests whose origin is in the child's subtree.
//!   What the child holds and the parent lacks is queued again for the parent (re-offered);
//!   what the parent holds and the child lacks is an anomaly (the child never had it, or lost
//!   it): audited on both sides and listed by `report`.
//! - **receipts**: the receipts of those batches signed by the nodes above the child (its
//!   parent and beyond), each as `BLAKE3(batch id ‖ receiver)`. Receipts the parent holds and
//!   the child lacks are relayed down again, which repairs the child's receipt chain.
//!
//! A session's items are built when it starts and dropped when it ends: memory is bounded by
//! one year of one subtree, not by the store.

use protocol::ids::{BatchId, NodeId, Period};
use protocol::reconcile::Item;
use protocol::wire::{ReconcileKind, ReconcileScope, SignedReceipt};
use topology::Topology;

use crate::store::{Kv, Store, StoreError};

/// The timestamp of an item: its period, as a number that orders periods.
pub fn period_stamp(period: Period) -> u64 {
    match period {
        Period::Month { year, month } => (u64::from(year) * 13 + u64::from(month)) * 32,
        Period::Day { year, month, day } => {
            (u64::from(year) * 13 + u64::from(month)) * 32 + u64::from(day)
        }
    }
}

/// The key receipt items are hashed under (`blake3::derive_key` of the context, computed
/// once: deriving it costs as much as the hash itself).
fn receipt_item_key() -> &'static [u8; 32] {
    static KEY: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    KEY.get_or_init(|| blake3::derive_key("credit-network reconcile receipt v1", b""))
}

/// The id under which a receipt is reconciled.
pub fn receipt_item(batch: &BatchId, receiver: NodeId) -> [u8; 32] {
    let mut input = [0u8; 36];
    input[..32].copy_from_slice(batch.as_bytes());
    input[32..].copy_from_slice(&receiver.to_be_bytes());
    *blake3::keyed_hash(receipt_item_key(), &input).as_bytes()
}

/// Whether `origin` is `child` or below it.
pub fn in_subtree(topology: &Topology, child: NodeId, origin: NodeId) -> bool {
    topology.is_within(origin, child)
}

/// The batches this node holds for `child`'s subtree in `year` (at the child: everything it
/// holds of its own subtree), with their items' timestamps, from the index keys alone.
fn held_in_scope<K: Kv>(
    store: &Store<K>,
    topology: &Topology,
    child: NodeId,
    year: u16,
) -> Result<Vec<(BatchId, u64)>, StoreError> {
    let mut held = Vec::new();
    for origin in topology.subtree(child) {
        for entry in store.held_in_year(origin, year) {
            let (id, [hi, lo, month, day]) = entry?;
            let year = u64::from(u16::from_be_bytes([hi, lo]));
            held.push((id, (year * 13 + u64::from(month)) * 32 + u64::from(day)));
        }
    }
    Ok(held)
}

/// The items of one session, seen from a node holding `store` for `child`'s subtree.
/// `above` are the nodes whose receipts count (the child's strict ancestors); refused batches
/// are left out (the parent never holds them).
pub fn items<K: Kv>(
    store: &Store<K>,
    topology: &Topology,
    child: NodeId,
    scope: ReconcileScope,
) -> Result<Vec<Item>, StoreError> {
    let held = held_in_scope(store, topology, child, scope.year)?;
    let mut items = Vec::with_capacity(held.len());
    match scope.kind {
        ReconcileKind::Batches => {
            for (id, stamp) in held {
                if store.refusal(&id)?.is_some() {
                    continue;
                }
                items.push((stamp, id.0));
            }
        }
        ReconcileKind::Receipts => {
            // Point lookups, one per ancestor: no scan of the receipts tree.
            let above = ancestors(topology, child);
            for (id, stamp) in held {
                for receiver in &above {
                    if store.has_receipt(&id, *receiver)? {
                        items.push((stamp, receipt_item(&id, *receiver)));
                    }
                }
            }
        }
    }
    Ok(items)
}

/// The receipts in a receipts session's scope whose items are in `wanted`.
pub fn receipts_wanted<K: Kv>(
    store: &Store<K>,
    topology: &Topology,
    child: NodeId,
    scope: ReconcileScope,
    wanted: &std::collections::BTreeSet<[u8; 32]>,
) -> Result<Vec<SignedReceipt>, StoreError> {
    let above = ancestors(topology, child);
    let mut found = Vec::new();
    for (id, _) in held_in_scope(store, topology, child, scope.year)? {
        for receiver in &above {
            if wanted.contains(&receipt_item(&id, *receiver))
                && let Some(receipt) = store.receipt(&id, *receiver)?
            {
                found.push(receipt);
            }
        }
    }
    Ok(found)
}

/// The nodes above `child` on its paths to the national platform (legacy link included).
fn ancestors(topology: &Topology, child: NodeId) -> Vec<NodeId> {
    let mut above: Vec<NodeId> = topology
        .paths_to_national(child)
        .into_iter()
        .flatten()
        .filter(|n| *n != child)
        .collect();
    above.sort_unstable();
    above.dedup();
    above
}

/// The years a child reconciles: from the oldest period it holds (or last year) to this one.
pub fn years<K: Kv>(store: &Store<K>, this_year: u16) -> Result<Vec<u16>, StoreError> {
    let mut years = store.held_years()?;
    years.insert(this_year);
    years.insert(this_year.saturating_sub(1));
    Ok(years.into_iter().collect())
}

/// The civil year of a Unix time in China Standard Time.
pub fn year_at(wall_ms: u64) -> u16 {
    let days = ((wall_ms + 8 * 3_600_000) / 86_400_000) as i64;
    // Inverse of days_from_civil, for the year only.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    year.clamp(0, i64::from(u16::MAX)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn years_are_read_in_china_time() {
        // 2026-12-31 16:00 UTC is 2027-01-01 00:00 in China.
        let new_year_cst =
            crate::core::ledger::days_from_civil(2027, 1, 1) as u64 * 86_400_000 - 8 * 3_600_000;
        assert_eq!(year_at(new_year_cst - 1), 2026);
        assert_eq!(year_at(new_year_cst), 2027);
        assert_eq!(year_at(0), 1970);
    }

    #[test]
    fn period_stamps_order_periods() {
        let p = |t| period_stamp(Period::parse(t).unwrap());
        assert!(p("2026-01") < p("2026-01-01"));
        assert!(p("2026-01-31") < p("2026-02"));
        assert!(p("2025-12-31") < p("2026-01"));
    }
}
