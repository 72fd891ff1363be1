//! The record index's common case: a data batch that withdraws nothing and none of whose keys
//! the period holds yet (a first publication, nearly every batch a node stores). Each key then
//! has one version, this batch's, and is current; what remains is the aggregates the batch's
//! records add to, the audit, and the writes. Taken here without the general path's overlay:
//! no entry, owned contributions or map of aggregates by index key per record, the keys of
//! a read in one buffer, the aggregates grouped by hashing and only the groups sorted, every
//! key's entry written from one encoding of its version.
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
/// in order of name (encoded as [`Names`] is: a `str` and a `String` alike), the batch's
/// borrowed from its records.
struct NameAggregate<'b> {
    rule: u16,
    code: &'b str,
    names: Vec<(Cow<'b, str>, u64)>,
    held: Option<Vec<u8>>,
}

/// A `unique` aggregate the batch adds to: the keys holding some values, with the batch's.
struct UniqueAggregate<'b> {
    rule: u16,
    values: Cow<'b, str>,
    holders: BTreeSet<RecordKey>,
    held: Option<Vec<u8>>,
}

/// The period as it stands with the batch taken in, as the rules see it.
struct Fresh<'b> {
    id: BatchId,
    batch: &'b Batch,
    /// In the order the records first name them.
    names: Vec<NameAggregate<'b>>,
    /// Each of `names` by rule and credit code.
    name_of: FastMap<(u16, &'b str), usize>,
    /// `names` in the order of their index keys.
    names_order: Vec<usize>,
    uniques: Vec<UniqueAggregate<'b>>,
    /// By `usual_range` rule: the histogram, the bytes the store held for it, and whether
    /// the batch added to it.
    histograms: Vec<(u16, Histogram, Option<Vec<u8>>, bool)>,
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
            .binary_search_by(|u| (u.rule, u.values.as_ref()).cmp(&(rule, values)))
            .ok()?;
        self.uniques[at]
            .holders
            .iter()
            .find(|holder| *holder != key)
            .cloned()
    }

    fn other_usual_name(&self, rule: u16, code: &str, name: &str) -> Option<(String, u64)> {
        let at = *self.name_of.get(&(rule, code))?;
        let names = self.names[at].names.iter();
        audit::usual_name(names.map(|(name, count)| (name.as_ref(), *count)))
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

/// What [`assess`] takes from a batch alone, before anything is read from the store: the
/// keys of its first read, what its records add to the histograms, each record's
/// contributions to the cross-record rules (texts copied into one buffer) and their
/// encoding in the record's index entry. Made outside the core's lock where the runtime
/// checks a batch before handing it to the core (`core::Prechecked`), so a node's second
/// core does this share of the index's work while the core stores another batch; made by
/// [`assess`] itself otherwise. Nothing in it depends on the store, the batch's id or
/// whether it is audited.
#[derive(Debug)]
pub(crate) struct Prepared {
    /// How many records the batch it was made from has (a check that it is that batch's).
    records: usize,
    /// The first read: the histograms' keys, then each record's (`h` < `k`; the records are
    /// in key order, each key once).
    first: Keys,
    /// The `usual_range` rules, and what the batch's records add to each one's histogram
    /// (`None`: nothing).
    usual_range: Vec<(u16, Option<Histogram>)>,
    /// Each record's contributions, `starts[n]..starts[n + 1]` of them, but for the
    /// `usual_range` rules' (in `usual_range`): their texts are spans of `texts`.
    contributions: Vec<Compact>,
    starts: Vec<usize>,
    texts: String,
    /// Each record's contributions, all of them, as its index entry encodes them: record
    /// `n`'s are `tails[tail_ends[n - 1]..tail_ends[n]]`.
    tails: Vec<u8>,
    tail_ends: Vec<usize>,
}

/// A [`ContributionRef`] whose texts are spans of [`Prepared::texts`].
#[derive(Debug)]
enum Compact {
    Unique {
        rule: u16,
        values: (u32, u32),
    },
    Name {
        rule: u16,
        code: (u32, u32),
        name: (u32, u32),
    },
}

impl Prepared {
    fn text(&self, (start, end): (u32, u32)) -> &str {
        &self.texts[start as usize..end as usize]
    }

    /// Record `n`'s contributions but for the `usual_range` rules'.
    fn contributions(&self, n: usize) -> impl Iterator<Item = ContributionRef<'_>> {
        self.contributions[self.starts[n]..self.starts[n + 1]]
            .iter()
            .map(|c| match c {
                Compact::Unique { rule, values } => ContributionRef::Unique {
                    rule: *rule,
                    values: Cow::Borrowed(self.text(*values)),
                },
                Compact::Name { rule, code, name } => ContributionRef::Name {
                    rule: *rule,
                    code: self.text(*code),
                    name: self.text(*name),
                },
            })
    }

    /// Record `n`'s contributions as its index entry encodes them.
    fn tail(&self, n: usize) -> &[u8] {
        let start = if n == 0 { 0 } else { self.tail_ends[n - 1] };
        &self.tails[start..self.tail_ends[n]]
    }
}

/// [`Prepared`] for `batch` under `schema`.
pub(crate) fn prepare(schema: &Schema, batch: &Batch) -> Prepared {
    let records = &batch.records;
    let mut usual_range: Vec<(u16, Option<Histogram>)> = schema
        .audit
        .iter()
        .enumerate()
        .filter(|(_, rule)| matches!(rule.check, audit::Check::UsualRange { .. }))
        .map(|(n, _)| (n as u16, None))
        .collect();
    let mut first = Keys::default();
    for (rule, _) in &usual_range {
        first.push(b'h', Some(*rule), "");
    }
    for record in records {
        first.push(b'k', None, &record.key.0);
    }
    let mut contributions = Vec::with_capacity(records.len() * schema.audit.len().max(1));
    let mut starts = Vec::with_capacity(records.len() + 1);
    let mut texts = String::new();
    let mut tails = Vec::with_capacity(records.len() * 48);
    let mut tail_ends = Vec::with_capacity(records.len());
    let mut all = Vec::with_capacity(schema.audit.len());
    let span = |texts: &mut String, text: &str| {
        let start = texts.len() as u32;
        texts.push_str(text);
        (start, texts.len() as u32)
    };
    for record in records {
        starts.push(contributions.len());
        all.clear();
        audit::contributions_ref(schema, record, |contribution| all.push(contribution));
        for contribution in &all {
            match contribution {
                ContributionRef::Unique { rule, values } => contributions.push(Compact::Unique {
                    rule: *rule,
                    values: span(&mut texts, values),
                }),
                ContributionRef::Name { rule, code, name } => contributions.push(Compact::Name {
                    rule: *rule,
                    code: span(&mut texts, code),
                    name: span(&mut texts, name),
                }),
                ContributionRef::Value { rule, value } => {
                    if let Some((_, added)) = usual_range.iter_mut().find(|(r, _)| r == rule) {
                        added.get_or_insert_with(Histogram::default).add(*value, 1);
                    }
                }
            }
        }
        encode_into(&all, &mut tails);
        tail_ends.push(tails.len());
    }
    starts.push(contributions.len());
    Prepared {
        records: records.len(),
        first,
        usual_range,
        contributions,
        starts,
        texts,
        tails,
        tail_ends,
    }
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
    prepared: Option<&Prepared>,
) -> Result<Option<Assessed>, StoreError> {
    let header = &batch.header;
    debug_assert!(header.withdrawals.is_empty());
    let made;
    let prepared = match prepared {
        Some(prepared) if prepared.records == batch.records.len() => prepared,
        _ => {
            made = prepare(schema, batch);
            &made
        }
    };
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
    // The `same_name` aggregates as the records come (most credit codes are on one record of
    // a batch: grouped by hashing, and only the groups sorted).
    let mut names: Vec<NameAggregate<'_>> = Vec::new();
    let mut name_of: FastMap<(u16, &str), usize> = FastMap::default();
    let mut uniques_in: Vec<(u16, Cow<'_, str>, &RecordKey)> = Vec::new();
    for (n, record) in batch.records.iter().enumerate() {
        for contribution in prepared.contributions(n) {
            match contribution {
                ContributionRef::Name { rule, code, name } => {
                    let next = names.len();
                    let at = *name_of.entry((rule, code)).or_insert(next);
                    if at == next {
                        names.push(NameAggregate {
                            rule,
                            code,
                            names: vec![(Cow::Borrowed(name), 1)],
                            held: None,
                        });
                    } else {
                        let names = &mut names[at].names;
                        match names.binary_search_by(|(held, _)| held.as_ref().cmp(name)) {
                            Ok(at) => names[at].1 += 1,
                            Err(at) => names.insert(at, (Cow::Borrowed(name), 1)),
                        }
                    }
                }
                ContributionRef::Unique { rule, values } => {
                    uniques_in.push((rule, values, &record.key));
                }
                ContributionRef::Value { .. } => {
                    unreachable!("a usual_range rule's contributions are in the histograms")
                }
            }
        }
    }
    // The aggregates, each once, in their index keys' order (kind, rule, text): the names'
    // by rule, then the code's first 16 bytes as one number (integers compared, not texts in
    // memory), then the whole code.
    let mut names_order: Vec<(u16, u128, usize)> = names
        .iter()
        .enumerate()
        .map(|(at, n)| (n.rule, key_prefix(n.code.as_bytes()), at))
        .collect();
    names_order.sort_unstable_by(|a, b| {
        (a.0, a.1)
            .cmp(&(b.0, b.1))
            .then_with(|| names[a.2].code.cmp(names[b.2].code))
    });
    let names_order: Vec<usize> = names_order.into_iter().map(|(.., at)| at).collect();
    uniques_in.sort_unstable();
    let mut uniques: Vec<UniqueAggregate<'_>> = Vec::new();
    for (rule, values, key) in uniques_in {
        match uniques.last_mut() {
            Some(last) if (last.rule, last.values.as_ref()) == (rule, values.as_ref()) => {
                last.holders.insert(key.clone());
            }
            _ => uniques.push(UniqueAggregate {
                rule,
                values,
                holders: BTreeSet::from([key.clone()]),
                held: None,
            }),
        }
    }
    // The second read: what the store holds of those aggregates (`n` < `u`).
    let mut second = Keys::default();
    for at in &names_order {
        let aggregate = &names[*at];
        second.push(b'n', Some(aggregate.rule), aggregate.code);
    }
    for aggregate in &uniques {
        second.push(b'u', Some(aggregate.rule), &aggregate.values);
    }
    if !second.ends.is_empty() {
        let found = index.read(&second.slices())?;
        run = run.max(found.next_run);
        let (held_names, held_uniques) = found.values.split_at(names.len());
        for (at, held) in names_order.iter().zip(held_names) {
            let aggregate = &mut names[*at];
            if let Some(bytes) = held {
                // The store's names, the batch's added (both in order of name).
                let held: Names = decode(bytes)?;
                let mut all: Vec<(Cow<'_, str>, u64)> = held
                    .into_iter()
                    .map(|(name, count)| (Cow::Owned(name), count))
                    .collect();
                for (name, count) in aggregate.names.drain(..) {
                    match all.binary_search_by(|(held, _)| held.as_ref().cmp(name.as_ref())) {
                        Ok(at) => all[at].1 = all[at].1.saturating_add(count),
                        Err(at) => all.insert(at, (name, count)),
                    }
                }
                aggregate.names = all;
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
        name_of,
        names_order,
        uniques,
        histograms,
    };
    let findings = if audit {
        audit::audit_with(schema, id, batch, &fresh)
    } else {
        Vec::new()
    };
    let index = writes(&fresh, header.supersedes, prepared);
    let current = if audit {
        batch
            .records
            .iter()
            .map(|r| (r.key.clone(), false))
            .collect()
    } else {
        // The origin's own submission: only withdrawals close its items (it has none).
        Vec::new()
    };
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
/// the histograms, each key's entry (its one version, current, and what it contributes), the
/// aggregates added to.
fn writes(fresh: &Fresh<'_>, supersedes: Option<BatchId>, prepared: &Prepared) -> IndexWrites {
    let records = &fresh.batch.records;
    let mut out = IndexWrites::with_capacity(
        fresh.histograms.len() + records.len() + fresh.names.len() + fresh.uniques.len(),
        160 * records.len() + 48 * (fresh.names.len() + fresh.uniques.len()),
    );
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
    for (rule, histogram, held, added) in &fresh.histograms {
        if *added {
            index_key(&mut at, b'h', Some(*rule), "");
            push(&mut out, &at, held, &|value| encode_into(histogram, value));
        }
    }
    // A key's entry as `super::KeyEntry` encodes it: its versions (this batch's alone), the
    // current one, then the current version's contributions. The first two are the same
    // bytes for every key: encoded once.
    let version = [(
        Version {
            batch: fresh.id,
            supersedes,
        },
        false,
    )];
    let mut head = Vec::new();
    encode_into(&(&version[..], Some(fresh.id)), &mut head);
    for (n, record) in records.iter().enumerate() {
        index_key(&mut at, b'k', None, &record.key.0);
        // Held by the store: none (or this path would not have been taken).
        out.push_with(&at, |value| {
            value.extend_from_slice(&head);
            value.extend_from_slice(prepared.tail(n));
        });
    }
    for n in &fresh.names_order {
        let aggregate = &fresh.names[*n];
        index_key(&mut at, b'n', Some(aggregate.rule), aggregate.code);
        push(&mut out, &at, &aggregate.held, &|value| {
            encode_into(&aggregate.names, value);
        });
    }
    for aggregate in &fresh.uniques {
        let list: Vec<&RecordKey> = aggregate.holders.iter().collect();
        index_key(&mut at, b'u', Some(aggregate.rule), &aggregate.values);
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
