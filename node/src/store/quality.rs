//! The store's side of the data-quality loop: feedback items (audit findings on one record's
//! field, by rule) with when they were opened and closed, and the held data batches of one
//! origin, category and period from which the current version of each record is read.
//!
//! Tree layout: `index`: origin u32 ‖ period [4] ‖ category ‖ 0x00 ‖ kind ‖ … (the record
//! index kept by `core::quality`: each key's versions and current contributions, and the
//! aggregates of the cross-record audit rules). `feedback`: origin u32 ‖ period [4] ‖ category ‖ 0x00 ‖ record key ‖ 0x00 ‖
//! field ‖ 0x00 ‖ rule → FeedbackItem. An item opens when a finding is first made on a
//! record's current version and closes when a later version of the record (a correction or
//! a withdrawal) becomes current without that finding; a finding made again after closing
//! opens the item anew.

use std::collections::BTreeSet;

use bincode::{Decode, Encode};
use protocol::audit::Finding;
use protocol::ids::{BatchId, NodeId};
use protocol::record::Problem;
use protocol::{Batch, Category, ContentKind, Period, RecordKey};

use super::{Group, Kv, Store, StoreError, Tree, decode, encode};

/// What storing one data batch (or the parent's findings on an own batch) changes in the
/// feedback items: computed by the node core, written in the same group as the batch or
/// receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QualityUpdate {
    pub origin: NodeId,
    pub category: Category,
    pub period: Period,
    pub batch: BatchId,
    /// Who made the findings: this node, or the parent for the origin's own batch.
    pub reporter: NodeId,
    /// The keys whose current version this batch now holds, `true` where it withdraws the
    /// record; and, `true`, the keys it made another batch's withdrawal current for (a
    /// correction arriving after the withdrawal that supersedes it).
    pub current: Vec<(RecordKey, bool)>,
    pub findings: Vec<Finding>,
    /// Writes to the record index (`index` tree): key → value, `None` to remove.
    pub index: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// One finding on one field of one record, open or closed.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct FeedbackItem {
    pub origin: NodeId,
    pub category: Category,
    pub period: Period,
    pub key: RecordKey,
    /// The batch whose version of the record the finding was made on.
    pub batch: BatchId,
    pub reporter: NodeId,
    pub problem: Problem,
    /// When this node stored the finding (its own clock).
    pub opened_ms: u64,
    pub closed: Option<Closed>,
}

/// How an item was closed.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Closed {
    pub at_ms: u64,
    /// The batch whose version of the record no longer has the finding.
    pub by: BatchId,
    /// The record was withdrawn rather than corrected.
    pub withdrawn: bool,
}

/// The prefix of `(origin, period, category)`'s entries in the `feedback` and `index` trees.
pub fn period_prefix(origin: NodeId, period: Period, category: &Category) -> Vec<u8> {
    let mut key = origin.to_be_bytes().to_vec();
    key.extend(period.key_bytes());
    key.extend(category.as_str().as_bytes());
    key.push(0);
    key
}

fn record_prefix(origin: NodeId, period: Period, category: &Category, key: &RecordKey) -> Vec<u8> {
    let mut prefix = period_prefix(origin, period, category);
    prefix.extend(key.0.as_bytes());
    prefix.push(0);
    prefix
}

fn item_key(item: &FeedbackItem) -> Vec<u8> {
    let mut key = record_prefix(item.origin, item.period, &item.category, &item.key);
    key.extend(item.problem.field.as_bytes());
    key.push(0);
    key.extend(item.problem.rule.as_str().as_bytes());
    key
}

impl<K: Kv> Store<K> {
    /// Adds to `group` what `update` changes: open items of the batch's current keys that
    /// its findings no longer raise are closed (all of them for a withdrawn record), and
    /// each finding not already open opens an item.
    pub(super) fn quality_ops(
        &self,
        group: &mut Group<'_, K>,
        update: &QualityUpdate,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        for (key, value) in &update.index {
            match value {
                Some(value) => group.insert(Tree::Index, key.clone(), value.clone()),
                None => group.remove(Tree::Index, key.clone()),
            }
        }
        let base = period_prefix(update.origin, update.period, &update.category);
        let any = self.scan_prefix(Tree::Feedback, base).next().is_some();
        if any {
            for (key, withdrawn) in &update.current {
                let raised: BTreeSet<(&str, &str)> = update
                    .findings
                    .iter()
                    .filter(|f| &f.key == key)
                    .map(|f| (f.problem.field.as_str(), f.problem.rule.as_str()))
                    .collect();
                let prefix = record_prefix(update.origin, update.period, &update.category, key);
                for entry in self.scan_prefix(Tree::Feedback, prefix) {
                    let (item_key, bytes) = entry?;
                    let mut item: FeedbackItem = decode("feedback", &bytes)?;
                    let still =
                        raised.contains(&(item.problem.field.as_str(), item.problem.rule.as_str()));
                    if item.closed.is_some() || (still && !withdrawn) {
                        continue;
                    }
                    item.closed = Some(Closed {
                        at_ms: now_ms,
                        by: update.batch,
                        withdrawn: *withdrawn,
                    });
                    group.insert(Tree::Feedback, item_key, encode(&item));
                }
            }
        }
        for finding in &update.findings {
            let item = FeedbackItem {
                origin: update.origin,
                category: update.category.clone(),
                period: update.period,
                key: finding.key.clone(),
                batch: update.batch,
                reporter: update.reporter,
                problem: finding.problem.clone(),
                opened_ms: now_ms,
                closed: None,
            };
            let key = item_key(&item);
            let open = match self.kv.get(Tree::Feedback, &key)? {
                Some(bytes) => decode::<FeedbackItem>("feedback", &bytes)?.closed.is_none(),
                None => false,
            };
            if !open {
                group.insert(Tree::Feedback, key, encode(&item));
            }
        }
        Ok(())
    }

    /// Writes `update` alone (the parent's findings on an own batch that came without a
    /// receipt this node stores at the same time).
    pub fn apply_quality(&self, update: &QualityUpdate, now_ms: u64) -> Result<(), StoreError> {
        let mut group = self.group();
        self.quality_ops(&mut group, update, now_ms)?;
        group.commit()
    }

    /// An entry of the record index (see `core::quality`).
    pub fn index_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.kv.get(Tree::Index, key)?)
    }

    /// Every feedback item this node holds (of `origin` only, if given), in (origin, period,
    /// category, key) order.
    pub fn feedback(
        &self,
        origin: Option<NodeId>,
    ) -> impl Iterator<Item = Result<FeedbackItem, StoreError>> + '_ {
        let prefix = origin.map_or_else(Vec::new, |o| o.to_be_bytes().to_vec());
        self.scan_prefix(Tree::Feedback, prefix)
            .map(|entry| decode("feedback", &entry?.1))
    }

    /// Held data batch `id`, decoded (checked against its id as it is read); `None` if it is
    /// not held or not data.
    pub fn held_data_batch(&self, id: &BatchId) -> Result<Option<Batch>, StoreError> {
        match self.meta(id)? {
            Some(meta) if meta.kind == ContentKind::Data => {}
            _ => return Ok(None),
        }
        let signed = self.batch(id)?.ok_or(StoreError::Corrupt { id: *id })?;
        Batch::decode(&signed.bytes)
            .map(Some)
            .map_err(|e| StoreError::Decode {
                tree: "batches",
                message: format!("held batch {id}: {e}"),
            })
    }

    /// The data batches of `origin` for `(category, period)` this node holds, decoded (not
    /// manifests or progress reports), each checked against its id as it is read.
    pub fn data_batches(
        &self,
        origin: NodeId,
        period: Period,
        category: &Category,
    ) -> Result<Vec<(BatchId, Batch)>, StoreError> {
        let mut out = Vec::new();
        for entry in self.scan_prefix(Tree::Held, period_prefix(origin, period, category)) {
            let (key, _) = entry?;
            let id = super::held_key_id(&key);
            if let Some(batch) = self.held_data_batch(&id)? {
                out.push((id, batch));
            }
        }
        Ok(out)
    }
}
