//! The core's data-quality decisions: what a receiving node finds in a data batch (the
//! category's audit rules, `protocol::audit`), what the findings change in the feedback
//! items, and the **record index** that lets the rules see the origin's other records of the
//! period without reading its other batches. Pure: reads the store through the [`Kv`] seam.
//!
//! Every level above the origin audits every data batch it stores and keeps its own items
//! (so a province sees the open items and time to fix of its whole subtree); the first
//! receiver also sends its findings to the origin, which keeps them as its feedback.
//!
//! The index (tree `index`, under the prefix of `(origin, period, category)`):
//! - `k` ‖ record key → [`KeyEntry`]: the key's versions, which is current, and what the
//!   current version contributes to the rules' aggregates;
//! - `u` ‖ rule ‖ values → the record keys holding those values (a `unique` rule);
//! - `n` ‖ rule ‖ credit code → how many current records carry each name (`same_name`);
//! - `h` ‖ rule → the histogram of the values (`usual_range`).
//!
//! Storing a batch touches only its own keys' entries and the aggregates they change: the
//! cost is linear in the batch, however many batches the period already holds. The result
//! is the same as `protocol::audit::audit` over the held batches (a test checks it on random
//! histories, in random arrival orders).

use std::cell::Cell;
use std::collections::BTreeSet;

use bincode::{Decode, Encode};
use protocol::audit::{self, Contribution, Finding, Histogram, Version, View};
use protocol::ids::{BatchId, NodeId};
use protocol::record::{Problem, Severity};
use protocol::{Batch, RecordKey, Registry, Schema};

mod fresh;

pub use fresh::Prepared;

use crate::store::{
    FastMap, IndexReader, IndexWrite, IndexWrites, Kv, QualityUpdate, Reassessed, Store,
    StoreError, period_prefix,
};

/// One record key's versions at this node.
#[derive(Debug, Clone, Default, PartialEq, Encode, Decode)]
pub struct KeyEntry {
    /// Each version and whether it withdraws the record.
    pub versions: Vec<(Version, bool)>,
    pub current: Option<BatchId>,
    /// What the current version contributes to the aggregates (none when withdrawn).
    pub contributions: Vec<Contribution>,
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// bincode's writer onto the end of a `Vec`, in one pass (`encode_to_vec` encodes everything
/// twice, once only to size its buffer; `encode_into_std_write` goes through `io::Write`).
struct Out<'a>(&'a mut Vec<u8>);

impl bincode::enc::write::Writer for Out<'_> {
    #[inline(always)]
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

/// Appends `value`'s encoding to `out`.
fn encode_into<T: Encode>(value: &T, out: &mut Vec<u8>) {
    bincode::encode_into_writer(value, Out(out), config()).expect("index values encode");
}

/// The names of one credit code under a `same_name` rule and how many current records carry
/// each, in ascending order of name: encoded as the `BTreeMap<String, u64>` it stands for
/// (bincode writes both as a length and the pairs in order), without a tree's node for the
/// one or two names a code usually has.
type Names = Vec<(String, u64)>;

fn decode<T: Decode<()>>(bytes: &[u8]) -> Result<T, StoreError> {
    bincode::decode_from_slice(bytes, config())
        .map(|(value, _)| value)
        .map_err(|e| StoreError::Decode {
            tree: "index",
            message: e.to_string(),
        })
}

/// An entry's key under the period's prefix, written into `out`: kind byte, rule (for an
/// aggregate), text.
fn index_key(out: &mut Vec<u8>, kind: u8, rule: Option<u16>, text: &str) {
    out.clear();
    push_index_key(out, kind, rule, text);
}

/// [`index_key`], appended to what `out` holds.
fn push_index_key(out: &mut Vec<u8>, kind: u8, rule: Option<u16>, text: &str) {
    out.push(kind);
    if let Some(rule) = rule {
        out.extend(rule.to_be_bytes());
    }
    out.extend(text.as_bytes());
}

/// The index key of what `contribution` adds to.
fn aggregate_key(out: &mut Vec<u8>, contribution: &Contribution) {
    match contribution {
        Contribution::Unique { rule, values } => index_key(out, b'u', Some(*rule), values),
        Contribution::Name { rule, code, .. } => index_key(out, b'n', Some(*rule), code),
        Contribution::Value { rule, .. } => index_key(out, b'h', Some(*rule), ""),
    }
}

/// The index of one origin, period and category with one batch taken in: the entries and
/// aggregates read from the store and changed in memory, written back as one group.
///
/// The batch's keys' entries are kept by slot (a key's place among the batch's distinct
/// keys), the aggregates by their index key (kind, rule, text), built in a scratch buffer
/// for each lookup: a record's lookups allocate nothing unless they load.
struct Overlay<'s, 'b, K: Kv> {
    /// The period's index as the store holds it (read twice, and more only for what the
    /// two reads did not foresee: what it scans for the first is kept for the others).
    index: IndexReader<'s, K>,
    /// Aggregates read from the store (a key read and found absent has no value here): read
    /// in bulk by [`Overlay::read`], one at a time only for what that did not foresee.
    read: FastMap<Vec<u8>, Option<Vec<u8>>>,
    /// The number of the run this batch's writes make.
    run: u64,
    /// Each of the batch's distinct keys' slot.
    slots: FastMap<&'b RecordKey, usize>,
    /// By slot: the key's index key (`k` ‖ record key, built once for the read and kept for
    /// the write), its entry, and the bytes the store held for it (only an entry whose bytes
    /// change is written).
    entries: Vec<(Vec<u8>, KeyEntry, Option<Vec<u8>>)>,
    /// Every holder set and name count here was changed (only [`Overlay::apply`] loads them),
    /// by index key.
    holders: FastMap<Vec<u8>, BTreeSet<RecordKey>>,
    names: FastMap<Vec<u8>, Names>,
    histograms: FastMap<u16, Histogram>,
    /// The histograms changed (the others are read for the audit only).
    dirty: BTreeSet<u16>,
    /// Where index keys are built for lookups (taken and put back: the [`View`] methods
    /// borrow the overlay shared).
    scratch: Cell<Vec<u8>>,
}

impl<'s, 'b, K: Kv> Overlay<'s, 'b, K> {
    /// Reads the keys of `wanted` (none read yet: its callers leave those out) from the
    /// store, in one read of the period's runs (`IndexReader::read`).
    fn read(&mut self, mut wanted: Vec<Vec<u8>>) -> Result<(), StoreError> {
        debug_assert!(wanted.iter().all(|key| !self.read.contains_key(key)));
        if wanted.is_empty() {
            return Ok(());
        }
        if !wanted.is_sorted() {
            wanted.sort_unstable();
        }
        wanted.dedup();
        let found = self.index.read(&wanted)?;
        self.run = self.run.max(found.next_run);
        self.read.extend(wanted.into_iter().zip(found.values));
        Ok(())
    }

    /// Adds to `wanted` the index keys of what `contributions` add to, unless read already.
    fn want_aggregates(&self, contributions: &[Contribution], wanted: &mut Vec<Vec<u8>>) {
        let mut at = self.scratch.take();
        for contribution in contributions {
            aggregate_key(&mut at, contribution);
            if !self.read.contains_key(at.as_slice()) {
                wanted.push(at.clone());
            }
        }
        self.scratch.set(at);
    }

    /// The value of index key `at` as the store holds it (default if absent).
    fn load<T: Decode<()> + Default>(&mut self, at: &[u8]) -> Result<T, StoreError> {
        if !self.read.contains_key(at) {
            self.read(vec![at.to_vec()])?;
        }
        match &self.read[at] {
            Some(bytes) => decode(bytes),
            None => Ok(T::default()),
        }
    }

    /// Reads the entries of the batch's distinct keys (`keys`, by slot) and the aggregates
    /// `aggregates` (sorted, and so before every `k` key), in one read of the period's runs.
    fn read_entries(
        &mut self,
        keys: Vec<&'b RecordKey>,
        mut aggregates: Vec<Vec<u8>>,
    ) -> Result<(), StoreError> {
        let mut wanted: Vec<(Vec<u8>, usize)> = keys
            .iter()
            .enumerate()
            .map(|(slot, key)| {
                let mut at = Vec::with_capacity(1 + key.0.len());
                index_key(&mut at, b'k', None, &key.0);
                (at, slot)
            })
            .collect();
        // In order already when the batch has no withdrawals (its records are in key order).
        if !wanted.is_sorted() {
            wanted.sort_unstable();
        }
        let count = aggregates.len();
        let mut slots = Vec::with_capacity(wanted.len());
        for (at, slot) in wanted {
            aggregates.push(at);
            slots.push(slot);
        }
        let found = self.index.read(&aggregates)?;
        self.run = self.run.max(found.next_run);
        let mut values = found.values;
        let held = values.split_off(count);
        let entry_keys = aggregates.split_off(count);
        self.read.extend(aggregates.into_iter().zip(values));
        self.entries = keys
            .iter()
            .map(|_| (Vec::new(), KeyEntry::default(), None))
            .collect();
        for ((slot, at), held) in slots.into_iter().zip(entry_keys).zip(held) {
            let entry = &mut self.entries[slot];
            if let Some(bytes) = &held {
                entry.1 = decode(bytes)?;
            }
            entry.0 = at;
            entry.2 = held;
        }
        Ok(())
    }

    fn histogram_mut(&mut self, rule: u16) -> Result<&mut Histogram, StoreError> {
        if !self.histograms.contains_key(&rule) {
            let mut at = Vec::new();
            index_key(&mut at, b'h', Some(rule), "");
            let loaded = self.load(&at)?;
            self.histograms.insert(rule, loaded);
        }
        Ok(self.histograms.get_mut(&rule).expect("just loaded"))
    }

    /// Adds (`sign` 1) or removes (-1) one record's contributions.
    fn apply(
        &mut self,
        key: &RecordKey,
        contributions: &[Contribution],
        sign: i64,
    ) -> Result<(), StoreError> {
        let mut at = self.scratch.take();
        let applied = self.apply_with(key, contributions, sign, &mut at);
        self.scratch.set(at);
        applied
    }

    fn apply_with(
        &mut self,
        key: &RecordKey,
        contributions: &[Contribution],
        sign: i64,
        at: &mut Vec<u8>,
    ) -> Result<(), StoreError> {
        for contribution in contributions {
            aggregate_key(at, contribution);
            match contribution {
                Contribution::Unique { .. } => {
                    if !self.holders.contains_key(at.as_slice()) {
                        let loaded: Vec<RecordKey> = self.load(at)?;
                        self.holders
                            .insert(at.clone(), loaded.into_iter().collect());
                    }
                    let set = self.holders.get_mut(at.as_slice()).expect("just loaded");
                    if sign > 0 {
                        set.insert(key.clone());
                    } else {
                        set.remove(key);
                    }
                }
                Contribution::Name { name, .. } => {
                    if !self.names.contains_key(at.as_slice()) {
                        let loaded = self.load(at)?;
                        self.names.insert(at.clone(), loaded);
                    }
                    let names: &mut Names = self.names.get_mut(at.as_slice()).expect("just loaded");
                    match names.binary_search_by(|(held, _)| held.as_str().cmp(name)) {
                        Ok(at) => {
                            let count = &mut names[at].1;
                            *count = count.saturating_add_signed(sign);
                            if *count == 0 {
                                names.remove(at);
                            }
                        }
                        Err(at) if sign > 0 => {
                            names.insert(at, (name.clone(), sign.unsigned_abs()))
                        }
                        Err(_) => {}
                    }
                }
                Contribution::Value { rule, value } => {
                    self.histogram_mut(*rule)?.add(*value, sign);
                    self.dirty.insert(*rule);
                }
            }
        }
        Ok(())
    }

    /// The writes that store the overlay: the entries whose bytes changed, in key order
    /// (each kind's in order, and the kinds `h` < `k` < `n` < `u`), so that the store's
    /// sort of them only checks.
    fn writes(self) -> IndexWrites {
        let Overlay {
            read,
            mut entries,
            holders,
            names,
            histograms,
            dirty,
            ..
        } = self;
        // What the store holds already is not written again (an own batch assessed once more
        // with the parent's findings, a key whose entry this batch does not change).
        let unchanged =
            |(at, value): IndexWrite<'_>| read.get(at).is_some_and(|held| held.as_deref() == value);
        // About 160 bytes a key's entry with its key, 48 an aggregate's.
        let mut out = IndexWrites::with_capacity(
            dirty.len() + entries.len() + names.len() + holders.len(),
            160 * entries.len() + 48 * (names.len() + holders.len()),
        );
        for rule in &dirty {
            let mut at = Vec::new();
            index_key(&mut at, b'h', Some(*rule), "");
            out.push_with(&at, |value| encode_into(&histograms[rule], value));
            if out.last().is_some_and(unchanged) {
                out.pop();
            }
        }
        // In slot order: key order unless the batch withdraws records too.
        if !entries.is_sorted_by(|a, b| a.0 <= b.0) {
            entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        }
        for (at, entry, held) in &entries {
            out.push_with(at, |value| encode_into(entry, value));
            if out
                .last()
                .is_some_and(|(_, value)| value == held.as_deref())
            {
                out.pop();
            }
        }
        enum Aggregate<'a> {
            Names(&'a Names),
            Holders(&'a BTreeSet<RecordKey>),
        }
        let mut aggregates: Vec<(&Vec<u8>, Aggregate<'_>)> = names
            .iter()
            .map(|(at, names)| (at, Aggregate::Names(names)))
            .chain(
                holders
                    .iter()
                    .map(|(at, set)| (at, Aggregate::Holders(set))),
            )
            .collect();
        aggregates.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for (at, aggregate) in aggregates {
            match aggregate {
                Aggregate::Names(names) if !names.is_empty() => {
                    out.push_with(at, |value| encode_into(names, value));
                }
                Aggregate::Holders(set) if !set.is_empty() => {
                    let list: Vec<&RecordKey> = set.iter().collect();
                    out.push_with(at, |value| encode_into(&list, value));
                }
                Aggregate::Names(_) | Aggregate::Holders(_) => out.push(at, None),
            }
            if out.last().is_some_and(unchanged) {
                out.pop();
            }
        }
        debug_assert!(
            out.iter().is_sorted_by(|a, b| a.0 < b.0),
            "writes in key order"
        );
        out
    }
}

impl<K: Kv> Overlay<'_, '_, K> {
    /// The entry of one of the batch's keys.
    fn entry_of(&self, key: &RecordKey) -> Option<&KeyEntry> {
        self.slots.get(key).map(|slot| &self.entries[*slot].1)
    }
}

impl<K: Kv> View for Overlay<'_, '_, K> {
    fn current_batch(&self, key: &RecordKey) -> Option<BatchId> {
        self.entry_of(key).and_then(|e| e.current)
    }

    fn unrelated(&self, key: &RecordKey, id: BatchId) -> Option<BatchId> {
        match self.entry_of(key)?.versions.as_slice() {
            [(only, _)] if only.batch == id => None,
            versions => {
                let versions: Vec<Version> = versions.iter().map(|(v, _)| *v).collect();
                audit::unrelated_version(&versions, id)
            }
        }
    }

    fn other_holder(&self, rule: u16, values: &str, key: &RecordKey) -> Option<RecordKey> {
        let mut at = self.scratch.take();
        index_key(&mut at, b'u', Some(rule), values);
        let other = self
            .holders
            .get(at.as_slice())
            .and_then(|set| set.iter().find(|holder| *holder != key).cloned());
        self.scratch.set(at);
        other
    }

    fn other_usual_name(&self, rule: u16, code: &str, name: &str) -> Option<(String, u64)> {
        let mut at = self.scratch.take();
        index_key(&mut at, b'n', Some(rule), code);
        let usual = self
            .names
            .get(at.as_slice())
            .and_then(|names| {
                audit::usual_name(names.iter().map(|(name, count)| (name.as_str(), *count)))
            })
            .filter(|(usual, _)| *usual != name)
            .map(|(usual, count)| (usual.to_owned(), count));
        self.scratch.set(at);
        usual
    }

    fn histogram(&self, rule: u16) -> Histogram {
        self.histograms.get(&rule).cloned().unwrap_or_default()
    }
}

/// What the record index holds as the current version of each of `keys` (in key order, each
/// once) of `origin`'s `category` in `period`: the batch, and whether it withdraws the record;
/// `None` for a key it does not index.
pub(super) fn indexed_current<K: Kv>(
    store: &Store<K>,
    (origin, category, period): (NodeId, &protocol::Category, protocol::Period),
    keys: &[&RecordKey],
) -> Result<Vec<Option<(BatchId, bool)>>, StoreError> {
    let wanted: Vec<Vec<u8>> = keys
        .iter()
        .map(|key| {
            let mut at = Vec::new();
            index_key(&mut at, b'k', None, &key.0);
            at
        })
        .collect();
    let read = store.index_read(&period_prefix(origin, period, category), &wanted)?;
    read.values
        .iter()
        .map(|held| {
            let Some(bytes) = held else {
                return Ok(None);
            };
            let entry: KeyEntry = decode(bytes)?;
            Ok(entry.current.map(|batch| {
                let withdrawn = entry
                    .versions
                    .iter()
                    .any(|(version, withdrawn)| version.batch == batch && *withdrawn);
                (batch, withdrawn)
            }))
        })
        .collect()
}

/// A batch's findings and what they change.
pub(super) struct Assessed {
    pub findings: Vec<Finding>,
    pub update: QualityUpdate,
    /// For the origin's own submission: its records published already in a batch it does
    /// not correct.
    pub republished: super::Republished,
}

impl Assessed {
    /// What storing data batch `id` (of `header`) changes, as `reporter` found it.
    fn new(
        header: &protocol::batch::BatchHeader,
        id: BatchId,
        reporter: NodeId,
        current: Vec<(RecordKey, bool)>,
        (findings, others): (Vec<Finding>, Vec<Reassessed>),
        (index_run, index): (u64, IndexWrites),
        new_keys: usize,
    ) -> Assessed {
        Assessed {
            update: QualityUpdate {
                origin: header.origin,
                category: header.category.clone(),
                period: header.period,
                batch: id,
                reporter,
                current,
                findings: findings.clone(),
                others,
                index_run,
                index,
                new_keys: u32::try_from(new_keys).ok(),
            },
            findings,
            republished: super::Republished::default(),
        }
    }

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

/// What the audit does with a batch.
#[derive(Debug, Clone)]
pub(super) enum Audit {
    /// Audit it as `reporter` (a receiver) and update the feedback items.
    Receiver,
    /// The origin's own submission: index it; its findings come from the parent, but a
    /// withdrawal closes the items of the records it withdraws.
    Submission,
    /// The parent's findings on an own batch: update the feedback items with them.
    Parent(Vec<Finding>),
}

/// What [`assess`] can take from data batch `id` (`batch`) before the store is read, where it may
/// take the common case's path (it withdraws nothing; see `fresh`): made outside the core's
/// lock ([`super::Prechecked`]). `None` where that path is not open to it.
pub(crate) fn prepare(registry: &Registry, id: BatchId, batch: &Batch) -> Option<Prepared> {
    let schema = registry.get(&batch.header.category)?;
    (batch.header.withdrawals.is_empty() && !batch.records.is_empty())
        .then(|| fresh::prepare(schema, id, batch))
}

/// Takes data batch `id` into the record index of its origin, period and category and audits
/// it as `audit` says. Idempotent: a batch already indexed changes nothing in the index.
/// `prepared`: [`prepare`] of the same batch, if it was made beforehand.
pub(super) fn assess<K: Kv>(
    store: &Store<K>,
    registry: &Registry,
    reporter: NodeId,
    id: BatchId,
    batch: &Batch,
    audit: Audit,
    prepared: Option<Prepared>,
) -> Result<Assessed, StoreError> {
    // A batch that withdraws nothing, none of whose keys the period holds: the common case,
    // without the general path's overlay (the same result; see `fresh`).
    if let (Some(schema), Audit::Receiver | Audit::Submission) =
        (registry.get(&batch.header.category), &audit)
        && batch.header.withdrawals.is_empty()
        && !batch.records.is_empty()
    {
        let receiver = matches!(audit, Audit::Receiver);
        if let Some(assessed) =
            fresh::assess(store, schema, reporter, id, batch, receiver, prepared)?
        {
            return Ok(assessed);
        }
    }
    assess_general(store, registry, reporter, id, batch, audit)
}

/// [`assess`] through the overlay: any batch (withdrawals, keys the period holds already,
/// the parent's findings).
fn assess_general<K: Kv>(
    store: &Store<K>,
    registry: &Registry,
    reporter: NodeId,
    id: BatchId,
    batch: &Batch,
    audit: Audit,
) -> Result<Assessed, StoreError> {
    let header = &batch.header;
    let schema: Option<&Schema> = registry.get(&header.category);
    let mut overlay = Overlay {
        index: store.index_reader(period_prefix(
            header.origin,
            header.period,
            &header.category,
        )),
        holders: FastMap::default(),
        names: FastMap::default(),
        histograms: FastMap::default(),
        dirty: BTreeSet::new(),
        read: FastMap::default(),
        run: 1,
        slots: FastMap::with_capacity_and_hasher(
            batch.records.len() + header.withdrawals.len(),
            Default::default(),
        ),
        entries: Vec::new(),
        scratch: Cell::default(),
    };
    let version = Version {
        batch: id,
        supersedes: header.supersedes,
    };
    // The batch's keys: its records' (in key order), then its withdrawals'.
    let keys: Vec<(&RecordKey, bool)> = batch
        .records
        .iter()
        .map(|r| (&r.key, false))
        .chain(header.withdrawals.iter().map(|w| (&w.key, true)))
        .collect();
    // What each of this batch's records contributes to the aggregates, if it becomes
    // current, by the record's place in `keys`.
    let mut fresh: Vec<Vec<Contribution>> = schema.map_or_else(Vec::new, |schema| {
        batch
            .records
            .iter()
            .map(|r| audit::contributions(schema, r))
            .collect()
    });
    // Everything the batch can touch, read in two reads of the period's runs: its keys'
    // entries (and the histograms), then the aggregates their current versions and this
    // batch's records add to. Only a version that becomes current from another batch (rare)
    // reads more.
    let usual_range: Vec<u16> = schema.map_or_else(Vec::new, |schema| {
        schema
            .audit
            .iter()
            .enumerate()
            .filter(|(_, rule)| matches!(rule.check, protocol::audit::Check::UsualRange { .. }))
            .map(|(n, _)| n as u16)
            .collect()
    });
    // Each of the batch's keys' slot (a key both published and withdrawn in the batch has
    // one entry).
    let mut distinct = Vec::with_capacity(keys.len());
    let slot_of: Vec<usize> = keys
        .iter()
        .map(|(key, _)| {
            let next = overlay.slots.len();
            let slot = *overlay.slots.entry(*key).or_insert(next);
            if slot == next {
                distinct.push(*key);
            }
            slot
        })
        .collect();
    let histograms: Vec<Vec<u8>> = usual_range
        .iter()
        .map(|rule| {
            let mut at = Vec::new();
            index_key(&mut at, b'h', Some(*rule), "");
            at
        })
        .collect();
    overlay.read_entries(distinct, histograms)?;
    let mut second = Vec::new();
    for (_, entry, _) in &overlay.entries {
        overlay.want_aggregates(&entry.contributions, &mut second);
    }
    for contributions in &fresh {
        overlay.want_aggregates(contributions, &mut second);
    }
    overlay.read(second)?;
    let receiver = matches!(audit, Audit::Receiver);
    // Each key's current version with this batch taken in, and whether that changes it.
    let mut winners = Vec::with_capacity(keys.len());
    // The keys whose current version is another batch's, each once, by their place in
    // `keys`, that need that version's record: for its contributions if it became current,
    // and for a receiver to audit it again (rare: a version that loses, or one between that
    // arrived late).
    let mut wanted: Vec<(BatchId, usize)> = Vec::new();
    let mut reassessed = vec![false; overlay.entries.len()];
    // The batch's records whose key no other batch this node holds carries a record of
    // (the index may name a batch no longer held: one lost and not yet sent again).
    let mut new_keys = 0;
    let mut holds: FastMap<BatchId, bool> = FastMap::default();
    for (n, (_, withdrawn)) in keys.iter().enumerate() {
        let entry = &mut overlay.entries[slot_of[n]].1;
        if !withdrawn {
            let mut carried = false;
            for (other, withdraws) in &entry.versions {
                if *withdraws || other.batch == id {
                    continue;
                }
                carried = match holds.get(&other.batch) {
                    Some(held) => *held,
                    None => {
                        let held = store.holds(&other.batch)?;
                        holds.insert(other.batch, held);
                        held
                    }
                };
                if carried {
                    break;
                }
            }
            new_keys += usize::from(!carried);
        }
        if !entry.versions.iter().any(|(v, _)| v.batch == id) {
            entry.versions.push((version, *withdrawn));
        }
        let winner = match entry.versions.as_slice() {
            [_] => 0,
            versions => {
                let plain: Vec<Version> = versions.iter().map(|(v, _)| *v).collect();
                audit::order_versions(&plain).1
            }
        };
        let (winner, winner_withdrawn) = entry.versions[winner];
        // A key both published and withdrawn in the batch comes here twice: changed once.
        let changed = entry.current.replace(winner.batch) != Some(winner.batch);
        let other = winner.batch != id
            && (changed || receiver)
            && !std::mem::replace(&mut reassessed[slot_of[n]], true);
        if other && !winner_withdrawn && schema.is_some() {
            wanted.push((winner.batch, n));
        }
        winners.push((winner.batch, winner_withdrawn, changed, other));
    }
    let mut records = held_records(store, wanted, &keys)?;
    let mut current = Vec::with_capacity(keys.len());
    let mut others: Vec<(Reassessed, Option<protocol::Record>)> = Vec::new();
    for (n, (key, _)) in keys.into_iter().enumerate() {
        let (winner, winner_withdrawn, changed, other) = winners[n];
        let record = records.remove(&n);
        let mut contributions = None;
        if winner == id {
            current.push((key.clone(), winner_withdrawn));
        } else if other {
            contributions = schema
                .zip(record.as_ref())
                .map(|(s, r)| audit::contributions(s, r));
            others.push((reassess(key, winner, winner_withdrawn), record));
        }
        if changed {
            let slot = slot_of[n];
            let old = std::mem::take(&mut overlay.entries[slot].1.contributions);
            let new = match (schema, winner_withdrawn) {
                (None, _) | (_, true) => Vec::new(),
                (Some(_), false) if winner == id => {
                    // Taken: a key comes here once (a second time, it is current already).
                    fresh.get_mut(n).map(std::mem::take).unwrap_or_default()
                }
                (Some(_), false) => contributions.unwrap_or_default(),
            };
            overlay.apply(key, &old, -1)?;
            overlay.apply(key, &new, 1)?;
            overlay.entries[slot].1.contributions = new;
        }
    }
    for rule in usual_range {
        overlay.histogram_mut(rule)?;
    }
    // A key whose current version is another batch's is audited again, as that batch's,
    // against the period with this batch taken in: a receiver's items are then what they
    // would be had the versions arrived in order — a version between arriving late and
    // making an earlier one current again (found by the simulator at jieyang-year seed 4209),
    // a version that loses telling the current one it was published twice, or that it no
    // longer is. The origin keeps only the parent's findings: there only a withdrawal
    // closes items (found at jieyang seed 19 for every node).
    let others: Vec<Reassessed> = others
        .into_iter()
        .filter(|(other, _)| receiver || other.withdrawn)
        .map(|(mut other, record)| {
            if let (Some(schema), Some(record)) = (schema.filter(|_| receiver), record) {
                other.findings = audit::audit_records(schema, other.batch, &[record], &overlay);
            }
            other
        })
        .collect();
    let mut republished = super::Republished::default();
    let findings = match audit {
        Audit::Receiver => schema.map_or_else(Vec::new, |schema| {
            audit::audit_with(schema, id, batch, &overlay)
        }),
        // The origin's own withdrawal closes its items on the records it withdraws at once:
        // the parent's findings on it may never come back (its receipt can arrive by
        // reconciliation; found at guangdong seed 3). Items on corrected records wait for
        // the parent's audit.
        Audit::Submission => {
            current.retain(|(_, withdrawn)| *withdrawn);
            for (n, record) in batch.records.iter().enumerate() {
                if let Some(other) = overlay.unrelated(&record.key, id) {
                    republished.records += 1;
                    republished.not_current += u64::from(winners[n].0 != id);
                    republished.first.get_or_insert((record.key.clone(), other));
                }
            }
            Vec::new()
        }
        // The parent's findings open items only on records whose current version is this
        // batch's here.
        Audit::Parent(findings) => {
            let kept: BTreeSet<&RecordKey> = current
                .iter()
                .filter(|(_, withdrawn)| !withdrawn)
                .map(|(key, _)| key)
                .collect();
            findings
                .into_iter()
                .filter(|f| kept.contains(&f.key))
                .collect()
        }
    };
    let run = overlay.run;
    let mut assessed = Assessed::new(
        header,
        id,
        reporter,
        current,
        (findings, others),
        (run, overlay.writes()),
        new_keys,
    );
    assessed.republished = republished;
    Ok(assessed)
}

/// Key `key`'s current version, in batch `batch`, its findings not yet made.
fn reassess(key: &RecordKey, batch: BatchId, withdrawn: bool) -> Reassessed {
    Reassessed {
        key: key.clone(),
        batch,
        withdrawn,
        findings: Vec::new(),
    }
}

/// The records `wanted` (the held batch, and the key's place) asks for, by place: each
/// batch read and decoded once, and let go before the next.
fn held_records<K: Kv>(
    store: &Store<K>,
    mut wanted: Vec<(BatchId, usize)>,
    keys: &[(&RecordKey, bool)],
) -> Result<FastMap<usize, protocol::Record>, StoreError> {
    let mut found = FastMap::default();
    wanted.sort_unstable();
    for group in wanted.chunk_by(|a, b| a.0 == b.0) {
        let Some(batch) = store.held_data_batch(&group[0].0)? else {
            continue;
        };
        for (_, n) in group {
            // A held batch's records are in strict key order (checked when it was decoded).
            let key = keys[*n].0;
            if let Ok(at) = batch.records.binary_search_by(|r| r.key.cmp(key)) {
                found.insert(*n, batch.records[at].clone());
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use protocol::batch::{BATCH_FORMAT, BatchHeader, Withdrawal, WithdrawalReason};
    use protocol::record::Subject;
    use protocol::wire::{Receipt, Verdict};
    use protocol::{Category, Content, NodeKey, Period, Record, SignedBatch, Value};

    use super::*;
    use crate::store::MemKv;

    /// xorshift64*: a few lines of deterministic randomness for the histories.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
        }
    }

    /// The categories the histories are drawn from: between them every kind of audit rule
    /// (`water_fee`: not_greater, usual_range, same_name; `admin_penalty`: unique,
    /// same_name).
    const CATEGORIES: [&str; 2] = ["water_fee", "admin_penalty"];

    fn schema(category: &str) -> &'static Schema {
        Registry::builtin().by_name(category).unwrap()
    }

    fn record(rng: &mut Rng, category: &str, key: u64) -> Record {
        let schema = schema(category);
        let mut values = vec![Value::Absent; schema.fields.len()];
        // Codes alike in their first 16 bytes, unlike in two places in opposite orders, and
        // one the start of others: how the aggregates are ordered shows in their writes.
        let codes = [
            "91445281MA4UM1GX0E",
            "91445281MA4UM1GX1C",
            "92445281MA4UM1GX2A",
            "91445281MB4UM1GX3X",
            "9144528",
        ];
        let names = ["甲公司", "乙公司", "丙公司"];
        let code = codes[rng.below(codes.len() as u64) as usize].to_owned();
        let name = names[rng.below(3) as usize].to_owned();
        let cells: Vec<(&str, String)> = if category == "water_fee" {
            let billed = match rng.below(10) {
                0 => 9_000_000,
                1 => 1,
                _ => 100 + rng.below(900),
            };
            vec![
                ("subject_uscc", code),
                ("subject_name", name),
                ("billed_amount", billed.to_string()),
                ("paid_amount", (billed + rng.below(3)).to_string()),
            ]
        } else {
            // Few dates and acts, so that records repeat one another (the unique rule).
            vec![
                ("CF_XDR_SHXYM", code),
                ("CF_XDR_MC", name),
                ("CF_JDRQ", format!("2026-05-0{}", 1 + rng.below(3))),
                (
                    "CF_WFXW",
                    ["超标排放", "无证经营"][rng.below(2) as usize].to_owned(),
                ),
            ]
        };
        for (field, value) in cells {
            values[schema.field_index(field).unwrap()] = Value::Text(value.into());
        }
        Record {
            key: RecordKey(format!("K{key:04}")),
            subject: Subject::Organization(protocol::Uscc::parse(codes[0]).unwrap()),
            values,
        }
    }

    /// A random history of one origin's period: first publications, corrections and
    /// withdrawals naming the batch they change (sometimes a wrong one), republications.
    fn history(category: &str, seed: u64) -> Vec<(BatchId, Batch)> {
        history_of(category, seed, 30)
    }

    /// [`history`] over `keys` record keys (few: batches repeat one another's keys; many:
    /// most batches are first publications).
    fn history_of(category: &str, seed: u64, keys: u64) -> Vec<(BatchId, Batch)> {
        let key_space = keys;
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut batches: Vec<(BatchId, Batch)> = Vec::new();
        for _ in 0..(3 + rng.below(6)) {
            let supersedes = (!batches.is_empty() && rng.below(3) > 0)
                .then(|| batches[rng.below(batches.len() as u64) as usize].0);
            let mut keys = BTreeSet::new();
            for _ in 0..(1 + rng.below(25)) {
                keys.insert(rng.below(key_space));
            }
            let mut records = Vec::new();
            let mut withdrawals = Vec::new();
            for key in keys {
                if supersedes.is_some() && rng.below(4) == 0 {
                    withdrawals.push(Withdrawal {
                        key: RecordKey(format!("K{key:04}")),
                        reason: WithdrawalReason::Error,
                    });
                } else {
                    records.push(record(&mut rng, category, key));
                }
            }
            batches.push(batch_of(category, supersedes, withdrawals, records));
        }
        // Arrival in a random order.
        for i in (1..batches.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            batches.swap(i, j);
        }
        batches
    }

    /// A batch of the histories' origin and period, with its id.
    fn batch_of(
        category: &str,
        supersedes: Option<BatchId>,
        withdrawals: Vec<Withdrawal>,
        records: Vec<Record>,
    ) -> (BatchId, Batch) {
        let batch = Batch::new(
            BatchHeader {
                format: BATCH_FORMAT,
                origin: NodeId::parse("445281").unwrap(),
                category: Category::parse(category).unwrap(),
                schema_version: schema(category).version,
                period: Period::parse("2026-05").unwrap(),
                supersedes,
                withdrawals,
            },
            records,
        )
        .unwrap();
        (BatchId::of(&batch.encode().unwrap()), batch)
    }

    /// What `city` makes of `batch` as a receiver.
    fn received<K: Kv>(store: &Store<K>, city: NodeId, (id, batch): (BatchId, &Batch)) -> Assessed {
        assess(
            store,
            Registry::builtin(),
            city,
            id,
            batch,
            Audit::Receiver,
            None,
        )
        .unwrap()
    }

    /// Stores `batch` as `city` stores a child's batch, with its index and audit `assessed`.
    fn store_as_receiver<K: Kv>(
        store: &Store<K>,
        key: &NodeKey,
        city: NodeId,
        (id, batch): (BatchId, &Batch),
        assessed: &Assessed,
        now_ms: u64,
    ) {
        let signed = SignedBatch::seal(batch, key).unwrap();
        let receipt = Receipt {
            receiver: city,
            batch: id,
            origin: batch.header.origin,
            received_at_ms: 1,
            verdict: Verdict::Accepted { warnings: 0 },
        }
        .sign(key);
        store
            .insert_batch(
                &signed,
                &Content::Data(batch.clone()),
                batch.header.origin,
                &receipt,
                None,
                &[],
                Some(&assessed.update),
                now_ms,
            )
            .unwrap();
    }

    /// The rules whose findings on a record depend only on the record and its own versions.
    const PER_RECORD: [protocol::record::Rule; 2] = [
        protocol::record::Rule::NotGreater,
        protocol::record::Rule::Republished,
    ];

    /// The incremental index gives exactly the findings of the reference audit over the held
    /// batches, at every arrival, and the same current version of every key at the end; the
    /// receiver's open `not_greater` items are then the current versions' findings, and no
    /// withdrawn record has an item open, in any arrival order (planted: a version made
    /// current again by another batch left unaudited fails water_fee seed 8; its withdrawal
    /// not closing the record's items, admin_penalty seed 15).
    #[test]
    fn the_index_agrees_with_the_audit_over_held_batches_on_random_histories() {
        let key = NodeKey::from_seed([9; 32]);
        let city = NodeId::parse("445200").unwrap();
        let (mut findings_seen, mut withdrawn_seen, mut per_record_items) = (0, 0, 0);
        let mut rules_seen = BTreeSet::new();
        for (seed, category) in (0..400).zip(CATEGORIES.iter().cycle()) {
            let store = Store::new(MemKv::new());
            let arrived = history(category, seed);
            for (n, (id, batch)) in arrived.iter().enumerate() {
                let others: Vec<(BatchId, &Batch)> =
                    arrived[..n].iter().map(|(i, b)| (*i, b)).collect();
                let expected = audit::audit(schema(category), *id, batch, &others);
                let assessed = received(&store, city, (*id, batch));
                assert_eq!(
                    assessed.findings, expected,
                    "{category} seed {seed}, arrival {n}"
                );
                findings_seen += expected.len();
                rules_seen.extend(expected.iter().map(|f| f.problem.rule.as_str()));
                assert_eq!(SignedBatch::seal(batch, &key).unwrap().id, *id);
                store_as_receiver(&store, &key, city, (*id, batch), &assessed, n as u64);
            }
            let all: Vec<(BatchId, &Batch)> = arrived.iter().map(|(i, b)| (*i, b)).collect();
            let prefix = period_prefix(
                NodeId::parse("445281").unwrap(),
                Period::parse("2026-05").unwrap(),
                &Category::parse(category).unwrap(),
            );
            let current = audit::current(&all);
            // `current` is in key order, so these are sorted as `index_read` takes them.
            let wanted: Vec<Vec<u8>> = current
                .keys()
                .map(|record_key| [b"k", record_key.0.as_bytes()].concat())
                .collect();
            let held = store.index_read(&prefix, &wanted).unwrap();
            // The open items of the rule that reads a record alone (`not_greater`) are,
            // whatever the arrival order, the findings of each current version (an item keeps
            // the batch it was opened on while later versions still raise it); a withdrawn
            // record has none open.
            let mut expected_items = BTreeSet::new();
            for ((record_key, version), value) in current.iter().zip(&held.values) {
                let entry: KeyEntry = decode(value.as_ref().expect("indexed")).unwrap();
                assert_eq!(
                    entry.current,
                    Some(version.batch),
                    "seed {seed} key {record_key}"
                );
                withdrawn_seen += usize::from(version.record().is_none());
                if let Some(record) = version.record() {
                    let batch = &all.iter().find(|(id, _)| *id == version.batch).unwrap().1;
                    let alone = Batch {
                        header: batch.header.clone(),
                        records: vec![record.clone()],
                    };
                    expected_items.extend(
                        audit::audit(schema(category), version.batch, &alone, &all)
                            .into_iter()
                            .filter(|f| PER_RECORD.contains(&f.problem.rule))
                            .map(|f| (f.key, f.problem.field)),
                    );
                }
            }
            let items: Vec<_> = store.feedback(None).map(Result::unwrap).collect();
            let open_items: BTreeSet<_> = items
                .iter()
                .filter(|item| item.closed.is_none() && PER_RECORD.contains(&item.problem.rule))
                .map(|item| (item.key.clone(), item.problem.field.clone()))
                .collect();
            assert_eq!(open_items, expected_items, "{category} seed {seed}");
            per_record_items += expected_items.len();
            for item in items.iter().filter(|item| item.closed.is_none()) {
                assert!(
                    current[&item.key].record().is_some(),
                    "{category} seed {seed}: an item open on withdrawn record {}",
                    item.key
                );
            }
        }
        // The histories exercise what they are meant to.
        assert!(findings_seen > 300, "{findings_seen}");
        assert!(withdrawn_seen > 50, "{withdrawn_seen}");
        assert!(per_record_items > 30, "{per_record_items}");
        let every = [
            "not_greater",
            "republished",
            "same_name",
            "unique",
            "usual_range",
        ];
        assert_eq!(rules_seen, BTreeSet::from(every), "the rules found on");
    }

    /// A correction chain of whole batches whose middle link arrives last (newest, original,
    /// middle): the middle link makes the newest version current again for every record, and
    /// its assessment reads the newest batch back once, not once a record (it read and decoded
    /// it for each: 43.5 s for 10,000 records in a release build, 54 ms now; planted, 300
    /// reads for 300 records); the receiver's `not_greater` items are then the newest
    /// version's findings.
    #[test]
    fn a_late_middle_link_reads_each_held_batch_once() {
        let key = NodeKey::from_seed([9; 32]);
        let city = NodeId::parse("445200").unwrap();
        let mut losing = BTreeSet::new();
        for seed in 1..=8 {
            let reads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let store = Store::new(crate::store::CountingKv(MemKv::new(), reads.clone()));
            let mut rng = Rng(seed);
            let mut make = |supersedes: Option<BatchId>| {
                let records: Vec<Record> =
                    (0..300).map(|k| record(&mut rng, "water_fee", k)).collect();
                batch_of("water_fee", supersedes, Vec::new(), records)
            };
            let original = make(None);
            let middle = make(Some(original.0));
            let newest = make(Some(middle.0));
            let mut read_back = Vec::new();
            for (at, (id, batch)) in [&newest, &original, &middle].into_iter().enumerate() {
                let before = reads.load(std::sync::atomic::Ordering::Relaxed);
                let assessed = received(&store, city, (*id, batch));
                read_back.push(reads.load(std::sync::atomic::Ordering::Relaxed) - before);
                store_as_receiver(&store, &key, city, (*id, batch), &assessed, at as u64);
            }
            // While the middle link is missing, the original wins over the newest (the higher id
            // wins: nothing read back) or loses to it (the newest read back once to audit it
            // again); the middle link makes the newest current again, read back once.
            let loses = usize::from(original.0 < newest.0);
            losing.insert(loses);
            assert_eq!(
                read_back,
                vec![0, loses, 1],
                "batches read back at each arrival (seed {seed})"
            );
            let expected: BTreeSet<(RecordKey, String)> =
                audit::audit(schema("water_fee"), newest.0, &newest.1, &[])
                    .into_iter()
                    .filter(|f| f.problem.rule == protocol::record::Rule::NotGreater)
                    .map(|f| (f.key, f.problem.field))
                    .collect();
            assert!(expected.len() > 10, "{}", expected.len());
            let open: BTreeSet<(RecordKey, String)> = store
                .feedback(None)
                .map(Result::unwrap)
                .filter(|item| {
                    item.closed.is_none() && item.problem.rule == protocol::record::Rule::NotGreater
                })
                .map(|item| (item.key, item.problem.field))
                .collect();
            assert_eq!(open, expected, "seed {seed}");
        }
        assert_eq!(
            losing.len(),
            2,
            "the original both wins and loses on some seed"
        );
    }

    /// What `prepare` keeps of a batch — made before the core's lock while another batch is
    /// in the core, so held beside it — is a few hundred bytes a record, whatever the
    /// records: here at most 512 bytes a record and the batch's own bytes, for 10,000
    /// records of either category (a decoded batch takes ~1,600 bytes a water-fee record;
    /// see the memory budgets in ARCHITECTURE.md).
    #[test]
    fn what_is_prepared_of_a_batch_is_a_few_hundred_bytes_a_record() {
        for category in CATEGORIES {
            let mut rng = Rng(7);
            let records = (0..10_000)
                .map(|key| record(&mut rng, category, key))
                .collect();
            let (id, batch) = batch_of(category, None, Vec::new(), records);
            let bytes = batch.encode().unwrap().len();
            let held = fresh::prepare(schema(category), id, &batch).heap_bytes();
            eprintln!("{category}: {held} bytes prepared for 10,000 records, {bytes} bytes");
            assert!(
                held <= 512 * 10_000 + bytes,
                "{category}: {held} bytes prepared for 10,000 records, {bytes} bytes"
            );
        }
    }

    /// The path for a batch none of whose keys the period holds (`fresh`) makes what the
    /// general path makes of it — the same findings, keys and writes, byte for byte — as a
    /// receiver and as the origin, whether what it takes from the batch alone was prepared
    /// beforehand or not, on random histories where most batches are first
    /// publications adding to aggregates the period holds already; and it declines every
    /// batch one of whose keys the period holds.
    #[test]
    fn a_fresh_batch_is_assessed_as_the_general_path_assesses_it() {
        let key = NodeKey::from_seed([9; 32]);
        let city = NodeId::parse("445200").unwrap();
        let (mut taken, mut declined, mut with_findings) = (0, 0, 0);
        let mut writes_seen = BTreeSet::new();
        for (seed, category) in (0..600).zip(CATEGORIES.iter().cycle()) {
            let store = Store::new(MemKv::new());
            let schema = schema(category);
            let key_space = [40, 400, 4000][seed as usize % 3];
            let arrived = history_of(category, seed, key_space);
            for (n, (id, batch)) in arrived.iter().enumerate() {
                // The general path's alone: a batch that withdraws records.
                let withdraws = !batch.header.withdrawals.is_empty();
                for receiver in [true, false].into_iter().filter(|_| !withdraws) {
                    let fast =
                        fresh::assess(&store, schema, city, *id, batch, receiver, None).unwrap();
                    // Made beforehand (as outside the core's lock), the same; and the same
                    // where every code's place must be searched for (as when its hash was
                    // taken by another code's).
                    for (collide, way) in
                        [(false, "prepared beforehand"), (true, "codes searched for")]
                    {
                        let mut prepared = fresh::prepare(schema, *id, batch);
                        if collide {
                            prepared.collide_every_code();
                        }
                        let ahead = fresh::assess(
                            &store,
                            schema,
                            city,
                            *id,
                            batch,
                            receiver,
                            Some(prepared),
                        )
                        .unwrap();
                        assert_eq!(
                            fast.as_ref().map(|a| (&a.findings, &a.update)),
                            ahead.as_ref().map(|a| (&a.findings, &a.update)),
                            "{category} seed {seed}, arrival {n}: {way}"
                        );
                    }
                    let holds_a_key = batch.records.iter().any(|r| {
                        arrived[..n].iter().any(|(_, earlier)| {
                            earlier.records.iter().any(|e| e.key == r.key)
                                || earlier.header.withdrawals.iter().any(|w| w.key == r.key)
                        })
                    });
                    let Some(fast) = fast else {
                        assert!(holds_a_key, "{category} seed {seed}, arrival {n}: declined");
                        declined += 1;
                        continue;
                    };
                    assert!(!holds_a_key, "{category} seed {seed}, arrival {n}: taken");
                    let audit = if receiver {
                        Audit::Receiver
                    } else {
                        Audit::Submission
                    };
                    let general =
                        assess_general(&store, Registry::builtin(), city, *id, batch, audit)
                            .unwrap();
                    let at = format!("{category} seed {seed}, arrival {n}, receiver {receiver}");
                    assert_eq!(fast.findings, general.findings, "{at}");
                    assert_eq!(fast.update, general.update, "{at}");
                    taken += 1;
                    with_findings += usize::from(!fast.findings.is_empty());
                    writes_seen.extend(fast.update.index.iter().map(|(key, _)| key[0]));
                }
                // Stored as a receiver stores it (the general path's update, for the next).
                let assessed = assess_general(
                    &store,
                    Registry::builtin(),
                    city,
                    *id,
                    batch,
                    Audit::Receiver,
                )
                .unwrap();
                store_as_receiver(&store, &key, city, (*id, batch), &assessed, n as u64);
            }
        }
        // Both sides of the choice, findings among them, and every kind of write.
        assert!(taken > 1500, "{taken}");
        assert!(declined > 1000, "{declined}");
        assert!(with_findings > 700, "{with_findings}");
        assert_eq!(writes_seen, BTreeSet::from([b'h', b'k', b'n', b'u']));
    }
}
