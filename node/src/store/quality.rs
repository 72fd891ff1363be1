//! The store's side of the data-quality loop: feedback items (audit findings on one record's
//! field, by rule) with when they were opened and closed, and the held data batches of one
//! origin, category and period from which the current version of each record is read.
//!
//! Tree layout: `index`: origin u32 ‖ period [4] ‖ category ‖ 0x00 ‖ … (the record index kept
//! by `core::quality`: each key's versions and current contributions, and the aggregates of
//! the cross-record audit rules), written as **runs**: each stored batch writes the entries it
//! changes as one run, `R` ‖ run u64 ‖ chunk u32 → entries (see [`RUN_CHUNK_BYTES`]), and an
//! entry's value is the one of the newest run that holds it. A batch reads the index of its
//! period in two scans of the period's runs, however many keys it asks for, and writes it with
//! one sled insert per ~6 KiB of changed entries: with a sled operation per entry, storing a
//! batch with its index took ~10× as long as decoding, verifying and storing it without
//! (issue 12). Entries written one per key by earlier versions (kind byte `k`, `u`, `n`, `h`
//! right after the prefix) are read as run 0.
//! `feedback`: origin u32 ‖ period [4] ‖ category ‖ 0x00 ‖ record key ‖ 0x00 ‖
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
    /// Writes to the record index (`index` tree): key under the period's prefix (without
    /// it) → value, `None` to remove; stored as run `index_run` of the period.
    pub index: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    pub index_run: u64,
}

/// Kind byte of a run's chunk in the `index` tree, right after the period's prefix.
const RUN: u8 = b'R';
/// A run's entries are cut into chunks of about this many bytes: sled 0.34 writes a tree node
/// larger than a quarter of its 512 KiB segment as a separate blob file, which it does not
/// fsync, and a leaf holds up to 17 entries before it splits: 17 chunks of ~6 KiB stay below
/// 128 KiB. (An entry larger than that alone — the holders of a `unique` value shared by
/// thousands of records — would still make a blob, as it did in the one-entry-per-key layout.)
pub const RUN_CHUNK_BYTES: usize = 6 * 1024;

/// Entries of the record index read for one period ([`Store::index_read`]).
#[derive(Debug, Default)]
pub struct IndexRead {
    /// Each wanted key that has a value (a key removed or never written is absent).
    pub values: std::collections::HashMap<Vec<u8>, Vec<u8>>,
    /// The number the next run of the period takes.
    pub next_run: u64,
}

/// One entry of a run: key, and value or `None` for a removal.
type IndexWrite<'a> = (&'a [u8], Option<&'a [u8]>);

/// The entries of one chunk: `u32 key length ‖ key ‖ u32 value length + 1 (0: removed) ‖
/// value`, big-endian, keys after the period's prefix and increasing. `None` if damaged.
fn chunk_entries(mut bytes: &[u8]) -> Option<Vec<IndexWrite<'_>>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (len, rest) = bytes.split_first_chunk::<4>()?;
        let len = u32::from_be_bytes(*len) as usize;
        let (key, rest) = rest.split_at_checked(len)?;
        let (value_len, rest) = rest.split_first_chunk::<4>()?;
        let value_len = u32::from_be_bytes(*value_len) as usize;
        let (value, rest) = match value_len.checked_sub(1) {
            None => (None, rest),
            Some(len) => {
                let (value, rest) = rest.split_at_checked(len)?;
                (Some(value), rest)
            }
        };
        out.push((key, value));
        bytes = rest;
    }
    Some(out)
}

fn push_chunk_entry(chunk: &mut Vec<u8>, key: &[u8], value: Option<&[u8]>) {
    // Keys are bounded by the values they hold (16 KiB each), values by a batch.
    let key_len = u32::try_from(key.len()).expect("index keys are far below 4 GiB");
    chunk.extend(key_len.to_be_bytes());
    chunk.extend(key);
    match value {
        None => chunk.extend(0u32.to_be_bytes()),
        Some(value) => {
            let len = u32::try_from(value.len() + 1).expect("index values are small");
            chunk.extend(len.to_be_bytes());
            chunk.extend(value);
        }
    }
}

fn run_chunk_key(prefix: &[u8], run: u64, chunk: u32) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.push(RUN);
    key.extend(run.to_be_bytes());
    key.extend(chunk.to_be_bytes());
    key
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
        let base = period_prefix(update.origin, update.period, &update.category);
        let mut entries: Vec<IndexWrite<'_>> = update
            .index
            .iter()
            .map(|(key, value)| (key.as_slice(), value.as_deref()))
            .collect();
        entries.sort_unstable_by_key(|(key, _)| *key);
        let mut chunk = Vec::new();
        let mut chunks = 0u32;
        for (n, (key, value)) in entries.iter().enumerate() {
            push_chunk_entry(&mut chunk, key, *value);
            if chunk.len() >= RUN_CHUNK_BYTES || n + 1 == entries.len() {
                group.insert(
                    Tree::Index,
                    run_chunk_key(&base, update.index_run, chunks),
                    std::mem::take(&mut chunk),
                );
                chunks += 1;
            }
        }
        let any = self.has_feedback(update.origin, update.period, &update.category)?;
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

    /// The entries `wanted` (keys under `prefix`, a period's, without it) of the record
    /// index, read in one scan of the period's runs: each key's value in the newest run
    /// holding it.
    pub fn index_read(
        &self,
        prefix: &[u8],
        wanted: &std::collections::HashSet<Vec<u8>>,
    ) -> Result<IndexRead, StoreError> {
        let damaged = |key: &[u8]| StoreError::Decode {
            tree: "index",
            message: format!("run chunk {} does not parse", protocol::ids::hex(key)),
        };
        // (run, value) of each wanted key seen so far; run 0 is the one-entry-per-key layout.
        let mut found: std::collections::HashMap<&[u8], (u64, Option<Vec<u8>>)> =
            std::collections::HashMap::new();
        let mut last_run = 0;
        for entry in self.scan_prefix(Tree::Index, prefix.to_vec()) {
            let (key, value) = entry?;
            let rest = &key[prefix.len()..];
            let mut see = |sub: &[u8], run: u64, value: Option<&[u8]>| {
                if let Some(wanted) = wanted.get(sub)
                    && found
                        .get(wanted.as_slice())
                        .is_none_or(|(seen, _)| *seen <= run)
                {
                    found.insert(wanted.as_slice(), (run, value.map(<[u8]>::to_vec)));
                }
            };
            match rest.split_first() {
                Some((&RUN, after)) => {
                    let run = after
                        .first_chunk::<8>()
                        .map(|b| u64::from_be_bytes(*b))
                        .ok_or_else(|| damaged(&key))?;
                    last_run = last_run.max(run);
                    for (sub, value) in chunk_entries(&value).ok_or_else(|| damaged(&key))? {
                        see(sub, run, value);
                    }
                }
                _ => see(rest, 0, Some(&value)),
            }
        }
        Ok(IndexRead {
            values: found
                .into_iter()
                .filter_map(|(key, (_, value))| Some((key.to_vec(), value?)))
                .collect(),
            next_run: last_run + 1,
        })
    }

    /// Whether this node holds any feedback item, open or closed, of `origin`'s `category`
    /// for `period`.
    pub fn has_feedback(
        &self,
        origin: NodeId,
        period: Period,
        category: &Category,
    ) -> Result<bool, StoreError> {
        self.scan_prefix(Tree::Feedback, period_prefix(origin, period, category))
            .next()
            .transpose()
            .map(|first| first.is_some())
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

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::store::MemKv;

    fn prefix(period: &str) -> Vec<u8> {
        period_prefix(
            NodeId::parse("445281").unwrap(),
            Period::parse(period).unwrap(),
            &Category::parse("water_fee").unwrap(),
        )
    }

    fn update(period: &str, run: u64, writes: &[(&str, Option<&str>)]) -> QualityUpdate {
        QualityUpdate {
            origin: NodeId::parse("445281").unwrap(),
            category: Category::parse("water_fee").unwrap(),
            period: Period::parse(period).unwrap(),
            batch: BatchId::of(b"batch"),
            reporter: NodeId::parse("445200").unwrap(),
            current: Vec::new(),
            findings: Vec::new(),
            index: writes
                .iter()
                .map(|(key, value)| {
                    (
                        key.as_bytes().to_vec(),
                        value.map(|v| v.as_bytes().to_vec()),
                    )
                })
                .collect(),
            index_run: run,
        }
    }

    /// Runs: the newest run holding a key gives its value, a removal hides older values,
    /// entries of the one-entry-per-key layout read as the oldest run, a run larger than a
    /// chunk is cut into several, and a scan reads only the period asked for.
    #[test]
    fn the_newest_run_holding_a_key_gives_its_value() {
        let store = Store::new(MemKv::new());
        let prefix = prefix("2026-05");
        // The earlier layout: one entry per key.
        let mut group = store.group();
        group.insert(
            Tree::Index,
            [prefix.as_slice(), b"klegacy"].concat(),
            b"old".to_vec(),
        );
        group.insert(
            Tree::Index,
            [prefix.as_slice(), b"kboth"].concat(),
            b"old".to_vec(),
        );
        group.commit().unwrap();
        // Run 1: many entries (several chunks), and one key of another period.
        let many: Vec<(String, Option<String>)> = (0..2_000)
            .map(|n| {
                (
                    format!("k{n:05}"),
                    Some(format!("value of {n} {}", "x".repeat(20))),
                )
            })
            .collect();
        let borrowed: Vec<(&str, Option<&str>)> = many
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref()))
            .chain([("kboth", Some("run 1")), ("kgone", Some("run 1"))])
            .collect();
        let apply = |update: &QualityUpdate| {
            let mut group = store.group();
            store.quality_ops(&mut group, update, 1).unwrap();
            group.commit().unwrap();
        };
        apply(&update("2026-05", 1, &borrowed));
        apply(&update("2026-06", 1, &[("kboth", Some("other period"))]));
        let chunks = store
            .scan_prefix(Tree::Index, [prefix.as_slice(), b"R"].concat())
            .count();
        assert!(
            chunks > 2,
            "a run of ~80 KB is cut into chunks, got {chunks}"
        );
        // Run 2 changes one key and removes another.
        apply(&update(
            "2026-05",
            2,
            &[("k00007", Some("run 2")), ("kgone", None)],
        ));
        let wanted: HashSet<Vec<u8>> = ["klegacy", "kboth", "kgone", "k00007", "k01999", "knever"]
            .iter()
            .map(|k| k.as_bytes().to_vec())
            .collect();
        let read = store.index_read(&prefix, &wanted).unwrap();
        let value = |k: &str| {
            read.values
                .get(k.as_bytes())
                .map(|v| String::from_utf8(v.clone()).unwrap())
        };
        assert_eq!(value("klegacy").as_deref(), Some("old"));
        assert_eq!(value("kboth").as_deref(), Some("run 1"));
        assert_eq!(value("k00007").as_deref(), Some("run 2"));
        assert_eq!(
            value("k01999"),
            Some(format!("value of 1999 {}", "x".repeat(20)))
        );
        assert_eq!(value("kgone"), None, "removed by run 2");
        assert_eq!(value("knever"), None);
        assert_eq!(read.values.len(), 4);
        assert_eq!(read.next_run, 3);
        // A damaged chunk is an error naming the tree, not a panic or a silent miss.
        let mut group = store.group();
        group.insert(Tree::Index, run_chunk_key(&prefix, 3, 0), vec![0, 9, b'k']);
        group.commit().unwrap();
        let error = store.index_read(&prefix, &wanted).unwrap_err();
        assert!(error.to_string().contains("does not parse"), "{error}");
    }
}
