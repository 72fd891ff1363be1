//! The record index's common case: a data batch that withdraws nothing and none of whose keys
//! the period holds yet (a first publication, nearly every batch a node stores). Each key then
//! has one version, this batch's, and is current; what remains is the aggregates the batch's
//! records add to, the audit, and the writes. Taken here without the general path's overlay:
//! no entry, owned contributions or map of aggregates by index key per record, the keys of
//! a read in one buffer, the aggregates' contributions sorted once into their index keys'
//! order, every key's entry written from one encoding of its version.
//!
//! In two parts: [`prepare`] takes from the batch alone everything that needs no store (made
//! before the core's lock where the runtime checks a batch, `core::Prechecked`), and
//! [`assess`] reads the store, merges, audits and writes under it.
//!
//! The result is exactly what the general path (`super::assess_general`) makes of the same
//! batch — the same findings, the same writes byte for byte — and a test holds it to that on
//! random histories. A batch one of whose keys the period holds is left to the general path
//! (the read that found it is its only cost).

use std::borrow::Cow;
use std::collections::BTreeSet;

use protocol::audit::{self, ContributionRef, Histogram, Version, View};
use protocol::batch::key_prefix;
use protocol::ids::{BatchId, NodeId};
use protocol::{Batch, RecordKey, Schema};

use super::{Assessed, Names, decode, encode_into, index_key, push_index_key};
use crate::store::{FastMap, IndexWrites, Kv, Store, StoreError, period_prefix};

/// Index keys one after another in one buffer, for one read of the index.
#[derive(Debug, Default)]
struct Keys {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Keys {
    /// Adds the index key of kind `kind`, rule `rule` (an aggregate's) and text `text`.
    fn push(&mut self, kind: u8, rule: Option<u16>, text: &str) {
        push_index_key(&mut self.bytes, kind, rule, text);
        self.ends.push(self.bytes.len());
    }

    fn slices(&self) -> Vec<&[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(&self.ends)
            .map(|(start, end)| &self.bytes[start..*end])
            .collect()
    }
}

/// A `same_name` aggregate the batch adds to: a credit code's names with the batch taken in,
/// in order of name (encoded as [`Names`] is: a `str` and a `String` alike) — the batch's
/// alone as prepared, or merged with the store's.
struct NameAggregate<'b> {
    rule: u16,
    code: &'b str,
    /// The batch's names for the code (spans of `prepared`'s texts) and how many records
    /// carry each, in order of name.
    batch: &'b [(Span, u64)],
    prepared: &'b Prepared,
    /// With the store's names, where it held any.
    merged: Option<Vec<(Cow<'b, str>, u64)>>,
    held: Option<Vec<u8>>,
}

impl NameAggregate<'_> {
    /// The names and how many records carry each, in order of name.
    fn names(&self) -> impl DoubleEndedIterator<Item = (&str, u64)> + '_ {
        let (merged, batch) = match &self.merged {
            Some(merged) => (&merged[..], &[][..]),
            None => (&[][..], self.batch),
        };
        let merged = merged.iter().map(|(name, count)| (name.as_ref(), *count));
        let batch = batch
            .iter()
            .map(|(name, count)| (self.prepared.text(*name), *count));
        merged.chain(batch)
    }

    /// Appends the names as [`Names`] encodes them (a length, then each name and count).
    fn encode(&self, out: &mut Vec<u8>) {
        let len = self.merged.as_ref().map_or(self.batch.len(), Vec::len);
        encode_into(&(len as u64), out);
        for name in self.names() {
            encode_into(&name, out);
        }
    }
}

/// A `unique` aggregate the batch adds to: the keys holding some values, with the batch's.
struct UniqueAggregate<'b> {
    rule: u16,
    values: &'b str,
    holders: BTreeSet<RecordKey>,
    held: Option<Vec<u8>>,
}

/// The period as it stands with the batch taken in, as the rules see it.
struct Fresh<'b> {
    id: BatchId,
    batch: &'b Batch,
    /// In the order of their index keys: by rule, then the code's first 16 bytes as one
    /// number, then the whole code (see [`name_order`]).
    names: Vec<NameAggregate<'b>>,
    /// Where in `names` a rule and code's hash is ([`Prepared::name_at`]).
    name_at: &'b FastMap<(u16, u64), u32>,
    /// In the order of their index keys (rule, values).
    uniques: Vec<UniqueAggregate<'b>>,
    /// By `usual_range` rule: the histogram, the bytes the store held for it, and whether
    /// the batch added to it.
    histograms: Vec<(u16, Histogram, Option<Vec<u8>>, bool)>,
}

/// The order of the `same_name` aggregates' index keys (kind, rule, code) without comparing
/// the codes' bytes in memory where their first 16 bytes, as one number, differ.
fn name_order(a: (u16, &str), b: (u16, &str)) -> std::cmp::Ordering {
    (a.0, key_prefix(a.1.as_bytes()))
        .cmp(&(b.0, key_prefix(b.1.as_bytes())))
        .then_with(|| a.1.cmp(b.1))
}

impl View for Fresh<'_> {
    /// Asked for the batch's own keys only (each has this batch's version alone).
    fn current_batch(&self, key: &RecordKey) -> Option<BatchId> {
        debug_assert!(
            self.batch
                .records
                .binary_search_by(|r| r.key.cmp(key))
                .is_ok()
        );
        Some(self.id)
    }

    /// None: the batch's keys have one version each, its own.
    fn unrelated(&self, _key: &RecordKey, _id: BatchId) -> Option<BatchId> {
        None
    }

    fn other_holder(&self, rule: u16, values: &str, key: &RecordKey) -> Option<RecordKey> {
        let at = self
            .uniques
            .binary_search_by(|u| (u.rule, u.values).cmp(&(rule, values)))
            .ok()?;
        self.uniques[at]
            .holders
            .iter()
            .find(|holder| *holder != key)
            .cloned()
    }

    fn other_usual_name(&self, rule: u16, code: &str, name: &str) -> Option<(String, u64)> {
        let at = match self.name_at.get(&(rule, code_hash(code))) {
            Some(at) if self.names[*at as usize].code == code => *at as usize,
            _ => self
                .names
                .binary_search_by(|n| name_order((n.rule, n.code), (rule, code)))
                .ok()?,
        };
        audit::usual_name(self.names[at].names())
            .filter(|(usual, _)| *usual != name)
            .map(|(usual, count)| (usual.to_owned(), count))
    }

    fn histogram(&self, rule: u16) -> Histogram {
        self.histograms
            .iter()
            .find(|(r, ..)| *r == rule)
            .map(|(_, histogram, ..)| histogram.clone())
            .unwrap_or_default()
    }
}

/// A credit code's hash for [`Prepared::name_at`] (the same in every process).
fn code_hash(code: &str) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0).hash_one(code)
}

/// A text of [`Prepared::texts`]: its start and end.
type Span = (u32, u32);

/// A `same_name` aggregate of [`Prepared`]: rule, code, and where in
/// [`Prepared::name_list`] its names are.
type PreparedName = (u16, Span, (u32, u32));

/// What [`assess`] takes from batch `id` alone, before anything is read from the store: the
/// keys of its two reads, what its records add to the histograms and to the `same_name` and
/// `unique` aggregates (grouped and in their index keys' order, texts copied into one
/// buffer), each record's index entry, and the keys it makes current. Made outside the core's
/// lock where the runtime checks a batch before handing it to the core (`core::Prechecked`),
/// so a node's second core does this share of the index's work while the core stores
/// another batch; made by [`assess`] itself otherwise. Nothing in it depends on the store or
/// on whether the batch is audited.
#[derive(Debug)]
pub struct Prepared {
    /// The batch it was made from, and how many records it has (a check that it is that
    /// batch's).
    id: BatchId,
    records: usize,
    /// The first read: the histograms' keys, then each record's (`h` < `k`; the records are
    /// in key order, each key once).
    first: Keys,
    /// The `usual_range` rules, and what the batch's records add to each one's histogram
    /// (`None`: nothing).
    usual_range: Vec<(u16, Option<Histogram>)>,
    /// The `same_name` aggregates the records add to, in their index keys' order: rule,
    /// code, and where its names are in `name_list`.
    names: Vec<PreparedName>,
    /// Each aggregate's names, in order of name, and how many records carry each.
    name_list: Vec<(Span, u64)>,
    /// Where in `names` each rule and code's hash ([`code_hash`]) is, for codes whose hash no
    /// other's took first.
    name_at: FastMap<(u16, u64), u32>,
    /// The `unique` aggregates, in their index keys' order: rule, values, and the records
    /// (by position in the batch) holding them.
    uniques: Vec<(u16, Span, Vec<u32>)>,
    /// The second read: `names`' keys, then `uniques`' (`n` < `u`).
    second: Keys,
    texts: String,
    /// Each record's `k` entry: its one version (this batch's) current, and what it
    /// contributes.
    entries: IndexWrites,
    /// Each record's key, made current by the batch (none withdrawn).
    current: Vec<(RecordKey, bool)>,
}

impl Prepared {
    fn text(&self, (start, end): Span) -> &str {
        &self.texts[start as usize..end as usize]
    }

    /// Points every code's hash at another aggregate's place, as if each code's hash had
    /// been taken by another code's: every question of the audit then takes the search.
    #[cfg(test)]
    pub(super) fn collide_every_code(&mut self) {
        let places = self.names.len() as u32;
        for at in self.name_at.values_mut() {
            *at = (*at + 1) % places.max(1);
        }
    }

    /// The bytes it holds on the heap (its buffers' capacities; the map's by its entries).
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of_val;
        let keys = |k: &Keys| k.bytes.capacity() + k.ends.capacity() * size_of::<usize>();
        keys(&self.first)
            + keys(&self.second)
            + self.texts.capacity()
            + self.entries.heap_bytes()
            + self.names.capacity() * size_of::<PreparedName>()
            + self.name_list.capacity() * size_of::<(Span, u64)>()
            + self.name_at.capacity() * (size_of::<((u16, u64), u32)>() + 1)
            + self
                .uniques
                .iter()
                .map(|(.., holders)| size_of_val(&holders[..]))
                .sum::<usize>()
            + self.uniques.capacity() * size_of::<(u16, Span, Vec<u32>)>()
            + self
                .current
                .iter()
                .map(|(key, _)| key.0.capacity())
                .sum::<usize>()
            + self.current.capacity() * size_of::<(RecordKey, bool)>()
            + self.usual_range.len() * 4096
    }
}

/// [`Prepared`] for data batch `id` (`batch`) under `schema`.
pub(crate) fn prepare(schema: &Schema, id: BatchId, batch: &Batch) -> Prepared {
    let records = &batch.records;
    let mut usual_range: Vec<(u16, Option<Histogram>)> = schema
        .audit
        .iter()
        .enumerate()
        .filter(|(_, rule)| matches!(rule.check, audit::Check::UsualRange { .. }))
        .map(|(n, _)| (n as u16, None))
        .collect();
    let key_bytes: usize = records.iter().map(|r| r.key.0.len() + 1).sum();
    let mut first = Keys {
        bytes: Vec::with_capacity(key_bytes + 3 * usual_range.len()),
        ends: Vec::with_capacity(records.len() + usual_range.len()),
    };
    for (rule, _) in &usual_range {
        first.push(b'h', Some(*rule), "");
    }
    for record in records {
        first.push(b'k', None, &record.key.0);
    }
    // A key's entry as `super::KeyEntry` encodes it: its versions (this batch's alone), the
    // current one, then the current version's contributions. The first two are the same
    // bytes for every key: encoded once.
    let version = [(
        Version {
            batch: id,
            supersedes: batch.header.supersedes,
        },
        false,
    )];
    let mut head = Vec::new();
    encode_into(&(&version[..], Some(id)), &mut head);
    // Room for each key's entry with its contributions (more if they need it).
    let mut entries =
        IndexWrites::with_capacity(records.len(), key_bytes + records.len() * (head.len() + 96));
    let mut at = Vec::new();
    // Each record's `same_name` contribution: rule, the code's first 16 bytes as one number,
    // code, name — sorted, they are the aggregates in their index keys' order (see
    // [`name_order`]), each aggregate's names in order, one after another.
    let mut named: Vec<(u16, u128, &str, &str)> = Vec::with_capacity(records.len());
    let mut uniques: Vec<(u16, Cow<'_, str>, u32)> = Vec::new();
    let mut all = Vec::with_capacity(schema.audit.len());
    let mut text_bytes = 0;
    for (n, record) in records.iter().enumerate() {
        all.clear();
        audit::contributions_ref(schema, record, |contribution| all.push(contribution));
        for contribution in &all {
            match contribution {
                ContributionRef::Name { rule, code, name } => {
                    named.push((*rule, key_prefix(code.as_bytes()), code, name));
                    text_bytes += code.len() + name.len();
                }
                ContributionRef::Unique { rule, values } => {
                    uniques.push((*rule, values.clone(), n as u32));
                    text_bytes += values.len();
                }
                ContributionRef::Value { rule, value } => {
                    if let Some((_, added)) = usual_range.iter_mut().find(|(r, _)| r == rule) {
                        added.get_or_insert_with(Histogram::default).add(*value, 1);
                    }
                }
            }
        }
        index_key(&mut at, b'k', None, &record.key.0);
        out_entry(&mut entries, &at, &head, &all);
    }
    named.sort_unstable();
    uniques.sort_unstable();
    let mut texts = String::with_capacity(text_bytes);
    let span = |texts: &mut String, text: &str| -> Span {
        let start = texts.len() as u32;
        texts.push_str(text);
        (start, texts.len() as u32)
    };
    let mut second = Keys::default();
    let mut names: Vec<PreparedName> = Vec::new();
    let mut name_list: Vec<(Span, u64)> = Vec::with_capacity(named.len());
    // Each aggregate's place by rule and the code's hash, for the audit's questions under the
    // lock (a code whose hash another's took is found by searching).
    let mut name_at: FastMap<(u16, u64), u32> =
        FastMap::with_capacity_and_hasher(named.len(), Default::default());
    let mut last: Option<(u16, &str, &str)> = None;
    for (rule, _, code, name) in named {
        match last {
            Some((r, c, n)) if (r, c) == (rule, code) => {
                if n == name {
                    name_list.last_mut().expect("the aggregate's names").1 += 1;
                } else {
                    name_list.push((span(&mut texts, name), 1));
                }
                let (.., list) = names.last_mut().expect("the aggregate");
                list.1 = name_list.len() as u32;
            }
            _ => {
                second.push(b'n', Some(rule), code);
                name_at
                    .entry((rule, code_hash(code)))
                    .or_insert(names.len() as u32);
                let code_span = span(&mut texts, code);
                let start = name_list.len() as u32;
                name_list.push((span(&mut texts, name), 1));
                names.push((rule, code_span, (start, start + 1)));
            }
        }
        last = Some((rule, code, name));
    }
    let mut grouped: Vec<(u16, Span, Vec<u32>)> = Vec::new();
    for (rule, values, holder) in uniques {
        match grouped.last_mut() {
            Some((last_rule, last, holders))
                if (*last_rule, &texts[last.0 as usize..last.1 as usize])
                    == (rule, values.as_ref()) =>
            {
                holders.push(holder);
            }
            _ => {
                second.push(b'u', Some(rule), &values);
                grouped.push((rule, span(&mut texts, &values), vec![holder]));
            }
        }
    }
    // Room for the writes `writes` adds around the entries, in their buffer, and no more
    // (the entries' may have grown by doubling).
    let aggregates = names.len() + grouped.len() + usual_range.len();
    entries.shrink_to_fit();
    entries.reserve_exact(aggregates, 64 * aggregates + 4096 * usual_range.len());
    texts.shrink_to_fit();
    name_at.shrink_to_fit();
    second.bytes.shrink_to_fit();
    Prepared {
        id,
        records: records.len(),
        first,
        usual_range,
        names,
        name_list,
        name_at,
        uniques: grouped,
        second,
        texts,
        entries,
        current: records.iter().map(|r| (r.key.clone(), false)).collect(),
    }
}

/// Adds the `k` entry `at` of a record whose one version is current (`head`, see
/// [`prepare`]) and contributes `contributions`.
fn out_entry(out: &mut IndexWrites, at: &[u8], head: &[u8], contributions: &[ContributionRef<'_>]) {
    out.push_with(at, |value| {
        value.extend_from_slice(head);
        encode_into(&contributions, value);
    });
}

/// [`super::assess`] of data batch `id` when the period holds none of its keys and it
/// withdraws nothing: `None` when the period holds one of its keys (the general path's
/// case). `audit`: audit it (a receiver) or only index it (the origin's own submission).
/// `prepared`: what was taken from the batch beforehand ([`prepare`]), if it was.
pub(super) fn assess<K: Kv>(
    store: &Store<K>,
    schema: &Schema,
    reporter: NodeId,
    id: BatchId,
    batch: &Batch,
    audit: bool,
    prepared: Option<Prepared>,
) -> Result<Option<Assessed>, StoreError> {
    let header = &batch.header;
    debug_assert!(header.withdrawals.is_empty());
    let mut prepared = match prepared {
        Some(prepared) if prepared.id == id && prepared.records == batch.records.len() => prepared,
        _ => prepare(schema, id, batch),
    };
    let entries = std::mem::take(&mut prepared.entries);
    let current = std::mem::take(&mut prepared.current);
    let prepared = &prepared;
    let mut index = store.index_reader(period_prefix(
        header.origin,
        header.period,
        &header.category,
    ));
    let found = index.read(&prepared.first.slices())?;
    let mut run = found.next_run.max(1);
    let (held_histograms, held_keys) = found.values.split_at(prepared.usual_range.len());
    if held_keys.iter().any(Option::is_some) {
        return Ok(None);
    }
    let mut histograms = Vec::with_capacity(prepared.usual_range.len());
    for ((rule, added), held) in prepared.usual_range.iter().zip(held_histograms) {
        let mut histogram: Histogram = match held {
            Some(bytes) => decode(bytes)?,
            None => Histogram::default(),
        };
        if let Some(added) = added {
            histogram.absorb(added);
        }
        histograms.push((*rule, histogram, held.clone(), added.is_some()));
    }
    let mut names: Vec<NameAggregate<'_>> = prepared
        .names
        .iter()
        .map(|(rule, code, (start, end))| NameAggregate {
            rule: *rule,
            code: prepared.text(*code),
            batch: &prepared.name_list[*start as usize..*end as usize],
            prepared,
            merged: None,
            held: None,
        })
        .collect();
    let mut uniques: Vec<UniqueAggregate<'_>> = prepared
        .uniques
        .iter()
        .map(|(rule, values, holders)| UniqueAggregate {
            rule: *rule,
            values: prepared.text(*values),
            holders: holders
                .iter()
                .map(|n| batch.records[*n as usize].key.clone())
                .collect(),
            held: None,
        })
        .collect();
    // The second read: what the store holds of those aggregates (`n` < `u`).
    if !prepared.second.ends.is_empty() {
        let found = index.read(&prepared.second.slices())?;
        run = run.max(found.next_run);
        let (held_names, held_uniques) = found.values.split_at(names.len());
        for (aggregate, held) in names.iter_mut().zip(held_names) {
            if let Some(bytes) = held {
                // The store's names, the batch's added (both in order of name).
                let held: Names = decode(bytes)?;
                let mut all: Vec<(Cow<'_, str>, u64)> = held
                    .into_iter()
                    .map(|(name, count)| (Cow::Owned(name), count))
                    .collect();
                for (name, count) in aggregate.batch {
                    let name = prepared.text(*name);
                    match all.binary_search_by(|(held, _)| held.as_ref().cmp(name)) {
                        Ok(at) => all[at].1 = all[at].1.saturating_add(*count),
                        Err(at) => all.insert(at, (Cow::Borrowed(name), *count)),
                    }
                }
                aggregate.merged = Some(all);
            }
            aggregate.held = held.clone();
        }
        for (aggregate, held) in uniques.iter_mut().zip(held_uniques) {
            if let Some(bytes) = held {
                let stored: Vec<RecordKey> = decode(bytes)?;
                aggregate.holders.extend(stored);
            }
            aggregate.held = held.clone();
        }
    }
    let fresh = Fresh {
        id,
        batch,
        names,
        name_at: &prepared.name_at,
        uniques,
        histograms,
    };
    let findings = if audit {
        audit::audit_with(schema, id, batch, &fresh)
    } else {
        Vec::new()
    };
    let index = writes(&fresh, entries);
    // The origin's own submission: only withdrawals close its items (it has none).
    let current = if audit { current } else { Vec::new() };
    Ok(Some(Assessed::new(
        header,
        id,
        reporter,
        current,
        (findings, Vec::new()),
        (run, index),
        // None of the batch's keys is held: each is new.
        batch.records.len(),
    )))
}

/// The writes of the batch taken in, in key order (`h` < `k` < `n` < `u`): what changed of
/// the histograms, each key's entry (`entries`: its one version, current, and what it
/// contributes; the writes are made in its buffer), the aggregates added to.
fn writes(fresh: &Fresh<'_>, mut out: IndexWrites) -> IndexWrites {
    let mut at = Vec::new();
    // A write of what `value` appends, unless the store holds those bytes already.
    let push =
        |out: &mut IndexWrites, at: &[u8], held: &Option<Vec<u8>>, value: &dyn Fn(&mut Vec<u8>)| {
            out.push_with(at, value);
            if out
                .last()
                .is_some_and(|(_, value)| value == held.as_deref())
            {
                out.pop();
            }
        };
    let mut front = IndexWrites::default();
    for (rule, histogram, held, added) in &fresh.histograms {
        if *added {
            index_key(&mut at, b'h', Some(*rule), "");
            push(&mut front, &at, held, &|value| {
                encode_into(histogram, value)
            });
        }
    }
    // The keys' entries: held by the store, none (or this path would not have been taken).
    out.prepend(&front);
    out.reserve_exact(
        fresh.names.len() + fresh.uniques.len(),
        48 * (fresh.names.len() + fresh.uniques.len()),
    );
    for aggregate in &fresh.names {
        index_key(&mut at, b'n', Some(aggregate.rule), aggregate.code);
        push(&mut out, &at, &aggregate.held, &|value| {
            aggregate.encode(value)
        });
    }
    for aggregate in &fresh.uniques {
        let list: Vec<&RecordKey> = aggregate.holders.iter().collect();
        index_key(&mut at, b'u', Some(aggregate.rule), aggregate.values);
        push(&mut out, &at, &aggregate.held, &|value| {
            encode_into(&list, value)
        });
    }
    debug_assert!(
        out.iter().is_sorted_by(|a, b| a.0 < b.0),
        "writes in key order"
    );
    out
}
