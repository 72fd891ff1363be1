//! The core's data-quality decisions: what a receiving node finds in a data batch (the
//! category's audit rules, `protocol::audit`, over the batch and the origin's other held
//! batches of the period), and what the findings change in the feedback items. Pure: reads
//! the store through the [`Kv`] seam.
//!
//! Every level above the origin audits every data batch it stores and keeps its own items
//! (so a province sees the open items and time to fix of its whole subtree); the first
//! receiver also sends its findings to the origin, which keeps them as its feedback.

use protocol::audit::{self, Finding};
use protocol::ids::{BatchId, NodeId};
use protocol::record::{Problem, Severity};
use protocol::{Batch, Registry};

use crate::store::{Kv, QualityUpdate, Store, StoreError};

/// A batch's findings and what they change.
pub(super) struct Assessed {
    pub findings: Vec<Finding>,
    pub update: QualityUpdate,
}

impl Assessed {
    /// The findings of error severity, as problems for a refusal (each message names its
    /// record); empty when the batch may be kept.
    pub fn errors(&self) -> Vec<Problem> {
        self.findings
            .iter()
            .filter(|f| f.problem.severity == Severity::Error)
            .map(|f| f.problem.clone())
            .collect()
    }
}

/// Audits data batch `id` as `reporter` would: against the origin's other held batches of
/// the same category and period. `findings` given (the parent's, for an own batch) are
/// taken as they are instead.
pub(super) fn assess<K: Kv>(
    store: &Store<K>,
    registry: &Registry,
    reporter: NodeId,
    id: BatchId,
    batch: &Batch,
    findings: Option<Vec<Finding>>,
) -> Result<Assessed, StoreError> {
    let header = &batch.header;
    let held = store.data_batches(header.origin, header.period, &header.category)?;
    let others: Vec<(BatchId, &Batch)> = held
        .iter()
        .filter(|(other, _)| *other != id)
        .map(|(other, batch)| (*other, batch))
        .collect();
    let audited = match (&findings, registry.get(&header.category)) {
        (None, Some(schema)) => audit::audit(schema, id, batch, &others),
        _ => Vec::new(),
    };
    // A batch that supersedes another can join a chain whose middle link arrived last:
    // records of other batches then change their current version too (to a withdrawal, say).
    let before = match header.supersedes {
        Some(_) => audit::current(&others)
            .into_iter()
            .map(|(key, version)| (key.clone(), version.batch))
            .collect(),
        None => std::collections::BTreeMap::new(),
    };
    let mut all = others;
    all.push((id, batch));
    let view = audit::current(&all);
    let withdrawn =
        |version: &audit::Current<'_>| matches!(version.state, audit::State::Withdrawn(_));
    // The keys this batch now holds the current version of, and those it made another
    // batch's withdrawal current (whose items close too).
    let current: Vec<(protocol::RecordKey, bool)> = view
        .iter()
        .filter(|(key, version)| {
            version.batch == id
                || (withdrawn(version) && before.get(*key).is_some_and(|b| *b != version.batch))
        })
        .map(|(key, version)| ((*key).clone(), withdrawn(version)))
        .collect();
    // Findings made elsewhere (the parent's, on an own batch) open items only on records
    // whose current version is this batch's here: an item opens on a current version.
    let findings = match findings {
        Some(given) => given
            .into_iter()
            .filter(|f| {
                view.get(&f.key)
                    .is_some_and(|v| v.batch == id && !withdrawn(v))
            })
            .collect(),
        None => audited,
    };
    Ok(Assessed {
        update: QualityUpdate {
            origin: header.origin,
            category: header.category.clone(),
            period: header.period,
            batch: id,
            reporter,
            current,
            findings: findings.clone(),
        },
        findings,
    })
}
