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

use std::collections::{BTreeMap, BTreeSet};

use bincode::{Decode, Encode};
use protocol::audit::{self, Contribution, Finding, Histogram, Version, View};
use protocol::ids::{BatchId, NodeId};
use protocol::record::{Problem, Severity};
use protocol::{Batch, RecordKey, Registry, Schema};

use crate::store::{FastMap, Kv, QualityUpdate, Store, StoreError, period_prefix};

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

fn encode<T: Encode>(value: &T) -> Vec<u8> {
    bincode::encode_to_vec(value, config()).expect("index values encode")
}

fn decode<T: Decode<()>>(bytes: &[u8]) -> Result<T, StoreError> {
    bincode::decode_from_slice(bytes, config())
        .map(|(value, _)| value)
        .map_err(|e| StoreError::Decode {
            tree: "index",
            message: e.to_string(),
        })
}

/// The index of one origin, period and category with one batch taken in: the entries and
/// aggregates read from the store and changed in memory, written back as one group.
struct Overlay<'s, K: Kv> {
    store: &'s Store<K>,
    prefix: Vec<u8>,
    /// Entries read from the store (a key read and found absent has no value here): read in
    /// bulk by [`Overlay::read`], one at a time only for what that did not foresee.
    read: FastMap<Vec<u8>, Option<Vec<u8>>>,
    /// The number of the run this batch's writes make.
    run: u64,
    keys: FastMap<RecordKey, KeyEntry>,
    /// Every holder set and name count here was changed (only [`Overlay::apply`] loads them).
    holders: FastMap<(u16, String), BTreeSet<RecordKey>>,
    names: FastMap<(u16, String), BTreeMap<String, u64>>,
    histograms: FastMap<u16, Histogram>,
    /// The histograms changed (the others are read for the audit only).
    dirty: BTreeSet<u16>,
}

impl<'s, K: Kv> Overlay<'s, K> {
    /// An entry's key under the period's prefix.
    fn key_of(&self, kind: u8, rule: Option<u16>, text: &str) -> Vec<u8> {
        let mut key = Vec::with_capacity(3 + text.len());
        key.push(kind);
        if let Some(rule) = rule {
            key.extend(rule.to_be_bytes());
        }
        key.extend(text.as_bytes());
        key
    }

    /// Reads `keys` from the store in one read of the period's runs (`Store::index_read`).
    fn read(&mut self, keys: impl IntoIterator<Item = Vec<u8>>) -> Result<(), StoreError> {
        let mut wanted: Vec<Vec<u8>> = keys
            .into_iter()
            .filter(|key| !self.read.contains_key(key))
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        wanted.sort_unstable();
        wanted.dedup();
        let found = self.store.index_read(&self.prefix, &wanted)?;
        self.run = self.run.max(found.next_run);
        self.read.extend(wanted.into_iter().zip(found.values));
        Ok(())
    }

    fn load<T: Decode<()> + Default>(&mut self, key: &[u8]) -> Result<T, StoreError> {
        if !self.read.contains_key(key) {
            self.read(std::iter::once(key.to_vec()))?;
        }
        match &self.read[key] {
            Some(bytes) => decode(bytes),
            None => Ok(T::default()),
        }
    }

    /// The index keys of what `contributions` add to.
    fn aggregate_keys(&self, contributions: &[Contribution]) -> Vec<Vec<u8>> {
        contributions
            .iter()
            .map(|contribution| match contribution {
                Contribution::Unique { rule, values } => self.key_of(b'u', Some(*rule), values),
                Contribution::Name { rule, code, .. } => self.key_of(b'n', Some(*rule), code),
                Contribution::Value { rule, .. } => self.key_of(b'h', Some(*rule), ""),
            })
            .collect()
    }

    fn entry(&mut self, key: &RecordKey) -> Result<&mut KeyEntry, StoreError> {
        if !self.keys.contains_key(key) {
            let at = self.key_of(b'k', None, &key.0);
            let loaded = self.load(&at)?;
            self.keys.insert(key.clone(), loaded);
        }
        Ok(self.keys.get_mut(key).expect("just loaded"))
    }

    fn histogram_mut(&mut self, rule: u16) -> Result<&mut Histogram, StoreError> {
        if !self.histograms.contains_key(&rule) {
            let at = self.key_of(b'h', Some(rule), "");
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
        for contribution in contributions {
            match contribution {
                Contribution::Unique { rule, values } => {
                    let at = (*rule, values.clone());
                    if !self.holders.contains_key(&at) {
                        let at_key = self.key_of(b'u', Some(*rule), values);
                        let loaded: Vec<RecordKey> = self.load(&at_key)?;
                        self.holders
                            .insert(at.clone(), loaded.into_iter().collect());
                    }
                    let set = self.holders.get_mut(&at).expect("just loaded");
                    if sign > 0 {
                        set.insert(key.clone());
                    } else {
                        set.remove(key);
                    }
                }
                Contribution::Name { rule, code, name } => {
                    let at = (*rule, code.clone());
                    if !self.names.contains_key(&at) {
                        let at_key = self.key_of(b'n', Some(*rule), code);
                        let loaded = self.load(&at_key)?;
                        self.names.insert(at.clone(), loaded);
                    }
                    let names = self.names.get_mut(&at).expect("just loaded");
                    let count = names.entry(name.clone()).or_default();
                    *count = count.saturating_add_signed(sign);
                    if *count == 0 {
                        names.remove(name);
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

    /// The writes that store the overlay: the entries whose bytes changed.
    fn writes(&self) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        let mut out = Vec::new();
        for (key, entry) in &self.keys {
            out.push((self.key_of(b'k', None, &key.0), Some(encode(entry))));
        }
        for ((rule, values), set) in &self.holders {
            let key = self.key_of(b'u', Some(*rule), values);
            let list: Vec<&RecordKey> = set.iter().collect();
            out.push((key, (!list.is_empty()).then(|| encode(&list))));
        }
        for ((rule, code), names) in &self.names {
            let key = self.key_of(b'n', Some(*rule), code);
            out.push((key, (!names.is_empty()).then(|| encode(names))));
        }
        for rule in &self.dirty {
            let key = self.key_of(b'h', Some(*rule), "");
            out.push((key, Some(encode(&self.histograms[rule]))));
        }
        // What the store holds already is not written again (an own batch assessed once more
        // with the parent's findings, a key whose entry this batch does not change).
        out.retain(|(key, value)| {
            self.read
                .get(key)
                .is_none_or(|held| held.as_deref() != value.as_deref())
        });
        out
    }
}

impl<K: Kv> View for Overlay<'_, K> {
    fn current_batch(&self, key: &RecordKey) -> Option<BatchId> {
        self.keys.get(key).and_then(|e| e.current)
    }

    fn unrelated(&self, key: &RecordKey, id: BatchId) -> Option<BatchId> {
        let versions: Vec<Version> = self
            .keys
            .get(key)?
            .versions
            .iter()
            .map(|(v, _)| *v)
            .collect();
        audit::unrelated_version(&versions, id)
    }

    fn holders(&self, rule: u16, values: &str) -> Vec<RecordKey> {
        self.holders
            .get(&(rule, values.to_owned()))
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn names(&self, rule: u16, code: &str) -> BTreeMap<String, u64> {
        self.names
            .get(&(rule, code.to_owned()))
            .cloned()
            .unwrap_or_default()
    }

    fn histogram(&self, rule: u16) -> Histogram {
        self.histograms.get(&rule).cloned().unwrap_or_default()
    }
}

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

/// Takes data batch `id` into the record index of its origin, period and category and audits
/// it as `audit` says. Idempotent: a batch already indexed changes nothing in the index.
pub(super) fn assess<K: Kv>(
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
        store,
        prefix: period_prefix(header.origin, header.period, &header.category),
        keys: FastMap::default(),
        holders: FastMap::default(),
        names: FastMap::default(),
        histograms: FastMap::default(),
        dirty: BTreeSet::new(),
        read: FastMap::default(),
        run: 1,
    };
    let version = Version {
        batch: id,
        supersedes: header.supersedes,
    };
    let keys: Vec<(&RecordKey, bool)> = batch
        .records
        .iter()
        .map(|r| (&r.key, false))
        .chain(header.withdrawals.iter().map(|w| (&w.key, true)))
        .collect();
    // What this batch's records contribute to the aggregates, if they become current.
    let mut fresh: FastMap<&RecordKey, Vec<Contribution>> =
        schema.map_or_else(FastMap::default, |schema| {
            batch
                .records
                .iter()
                .map(|r| (&r.key, audit::contributions(schema, r)))
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
    let first: Vec<Vec<u8>> = keys
        .iter()
        .map(|(key, _)| overlay.key_of(b'k', None, &key.0))
        .chain(
            usual_range
                .iter()
                .map(|rule| overlay.key_of(b'h', Some(*rule), "")),
        )
        .collect();
    overlay.read(first)?;
    for (key, _) in &keys {
        overlay.entry(key)?;
    }
    let second: Vec<Vec<u8>> = keys
        .iter()
        .flat_map(|(key, _)| overlay.aggregate_keys(&overlay.keys[*key].contributions))
        .chain(fresh.values().flat_map(|c| overlay.aggregate_keys(c)))
        .collect();
    overlay.read(second)?;
    let mut current = Vec::new();
    for (key, withdrawn) in keys {
        let entry = overlay.entry(key)?;
        if !entry.versions.iter().any(|(v, _)| v.batch == id) {
            entry.versions.push((version, withdrawn));
        }
        let plain: Vec<Version> = entry.versions.iter().map(|(v, _)| *v).collect();
        let (_, winner) = audit::order_versions(&plain);
        let (winner, winner_withdrawn) = entry.versions[winner];
        let changed = entry.current != Some(winner.batch);
        if changed {
            let old = std::mem::take(&mut entry.contributions);
            entry.current = Some(winner.batch);
            let new = match (schema, winner_withdrawn) {
                (None, _) | (_, true) => Vec::new(),
                (Some(_), false) if winner.batch == id => {
                    // Taken: a key comes here once (a second time, it is current already).
                    fresh.remove(key).unwrap_or_default()
                }
                // A version between arrived late and another version became current: read
                // that version's record from its batch (rare).
                (Some(schema), false) => store
                    .held_data_batch(&winner.batch)?
                    .and_then(|b| b.records.into_iter().find(|r| &r.key == key))
                    .map(|r| audit::contributions(schema, &r))
                    .unwrap_or_default(),
            };
            overlay.apply(key, &old, -1)?;
            overlay.apply(key, &new, 1)?;
            overlay.entry(key)?.contributions = new;
        }
        if winner.batch == id {
            current.push((key.clone(), winner_withdrawn));
        } else if winner_withdrawn && changed {
            // This batch completed a chain that makes another batch's withdrawal current (a
            // correction arriving after the withdrawal that supersedes it): the record is
            // gone, and so are its items (found by the simulator at jieyang seed 19).
            current.push((key.clone(), true));
        }
    }
    for rule in usual_range {
        overlay.histogram_mut(rule)?;
    }
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
    Ok(Assessed {
        update: QualityUpdate {
            origin: header.origin,
            category: header.category.clone(),
            period: header.period,
            batch: id,
            reporter,
            current,
            findings: findings.clone(),
            index: overlay.writes(),
            index_run: overlay.run,
        },
        findings,
    })
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

    fn schema() -> &'static Schema {
        Registry::builtin().by_name("water_fee").unwrap()
    }

    fn record(rng: &mut Rng, key: u64) -> Record {
        let schema = schema();
        let mut values = vec![Value::Absent; schema.fields.len()];
        let codes = [
            "91445281MA4UM1GX0E",
            "91445281MA4UM1GX1C",
            "92445281MA4UM1GX2A",
        ];
        let names = ["甲公司", "乙公司", "丙公司"];
        let billed = match rng.below(10) {
            0 => 9_000_000,
            1 => 1,
            _ => 100 + rng.below(900),
        };
        for (field, value) in [
            ("subject_uscc", codes[rng.below(3) as usize].to_owned()),
            ("subject_name", names[rng.below(3) as usize].to_owned()),
            ("billed_amount", billed.to_string()),
            ("paid_amount", (billed + rng.below(3)).to_string()),
        ] {
            values[schema.field_index(field).unwrap()] = Value::Text(value);
        }
        Record {
            key: RecordKey(format!("K{key:02}")),
            subject: Subject::Organization(protocol::Uscc::parse(codes[0]).unwrap()),
            values,
        }
    }

    /// A random history of one origin's period: first publications, corrections and
    /// withdrawals naming the batch they change (sometimes a wrong one), republications.
    fn history(seed: u64) -> Vec<(BatchId, Batch)> {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut batches: Vec<(BatchId, Batch)> = Vec::new();
        for _ in 0..(3 + rng.below(6)) {
            let supersedes = (!batches.is_empty() && rng.below(3) > 0)
                .then(|| batches[rng.below(batches.len() as u64) as usize].0);
            let mut keys = BTreeSet::new();
            for _ in 0..(1 + rng.below(25)) {
                keys.insert(rng.below(30));
            }
            let mut records = Vec::new();
            let mut withdrawals = Vec::new();
            for key in keys {
                if supersedes.is_some() && rng.below(4) == 0 {
                    withdrawals.push(Withdrawal {
                        key: RecordKey(format!("K{key:02}")),
                        reason: WithdrawalReason::Error,
                    });
                } else {
                    records.push(record(&mut rng, key));
                }
            }
            let batch = Batch::new(
                BatchHeader {
                    format: BATCH_FORMAT,
                    origin: NodeId::parse("445281").unwrap(),
                    category: Category::parse("water_fee").unwrap(),
                    schema_version: schema().version,
                    period: Period::parse("2026-05").unwrap(),
                    supersedes,
                    withdrawals,
                },
                records,
            )
            .unwrap();
            let id = BatchId::of(&batch.encode().unwrap());
            batches.push((id, batch));
        }
        // Arrival in a random order.
        for i in (1..batches.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            batches.swap(i, j);
        }
        batches
    }

    /// The incremental index gives exactly the findings of the reference audit over the held
    /// batches, at every arrival, and the same current version of every key at the end.
    #[test]
    fn the_index_agrees_with_the_audit_over_held_batches_on_random_histories() {
        let key = NodeKey::from_seed([9; 32]);
        let city = NodeId::parse("445200").unwrap();
        let (mut findings_seen, mut withdrawn_seen) = (0, 0);
        for seed in 0..300 {
            let store = Store::new(MemKv::new());
            let arrived = history(seed);
            for (n, (id, batch)) in arrived.iter().enumerate() {
                let others: Vec<(BatchId, &Batch)> =
                    arrived[..n].iter().map(|(i, b)| (*i, b)).collect();
                let expected = audit::audit(schema(), *id, batch, &others);
                let assessed = assess(
                    &store,
                    Registry::builtin(),
                    city,
                    *id,
                    batch,
                    Audit::Receiver,
                )
                .unwrap();
                assert_eq!(assessed.findings, expected, "seed {seed}, arrival {n}");
                findings_seen += expected.len();
                let signed = SignedBatch::seal(batch, &key).unwrap();
                assert_eq!(signed.id, *id);
                let receipt = Receipt {
                    receiver: city,
                    batch: *id,
                    origin: batch.header.origin,
                    received_at_ms: 1,
                    verdict: Verdict::Accepted { warnings: 0 },
                }
                .sign(&key);
                store
                    .insert_batch(
                        &signed,
                        &Content::Data(batch.clone()),
                        batch.header.origin,
                        &receipt,
                        None,
                        &[],
                        Some(&assessed.update),
                        n as u64,
                    )
                    .unwrap();
            }
            let all: Vec<(BatchId, &Batch)> = arrived.iter().map(|(i, b)| (*i, b)).collect();
            let prefix = period_prefix(
                NodeId::parse("445281").unwrap(),
                Period::parse("2026-05").unwrap(),
                &Category::parse("water_fee").unwrap(),
            );
            let current = audit::current(&all);
            // `current` is in key order, so these are sorted as `index_read` takes them.
            let wanted: Vec<Vec<u8>> = current
                .keys()
                .map(|record_key| [b"k", record_key.0.as_bytes()].concat())
                .collect();
            let held = store.index_read(&prefix, &wanted).unwrap();
            for ((record_key, version), value) in current.into_iter().zip(&held.values) {
                let entry: KeyEntry = decode(value.as_ref().expect("indexed")).unwrap();
                assert_eq!(
                    entry.current,
                    Some(version.batch),
                    "seed {seed} key {record_key}"
                );
                withdrawn_seen += usize::from(version.record().is_none());
            }
        }
        // The histories exercise what they are meant to.
        assert!(findings_seen > 300, "{findings_seen}");
        assert!(withdrawn_seen > 50, "{withdrawn_seen}");
    }
}
