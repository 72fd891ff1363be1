//! The data-quality loop's two pure parts: which version of each record is **current**, and
//! the **audit rules** a receiving node checks beyond per-record validation.
//!
//! **Current versions.** A record is named by `(origin, category, period, key)`. An origin
//! changes a published record only by a later batch that names the batch it supersedes
//! (`BatchHeader::supersedes`): a correction carries the new record, a withdrawal
//! (`BatchHeader::withdrawals`) removes it with a reason. Among the held batches of one
//! origin, category and period that carry a key, the current version is the one no other
//! supersedes (directly or through a chain of held batches); if several remain (the key was
//! published twice without a correction, or a link of the chain is not held yet), the
//! highest batch id wins. The answer depends only on *which* batches are held, never on the
//! order they arrived in, so every level that holds the same batches agrees.
//!
//! **Audit rules** are data, per category (`[[audit]]` tables in the schema files), each with
//! a severity: a warning is fed back and the batch is kept; an error refuses the batch. The
//! rules see the batch and the current records of the same origin, category and period, and
//! judge only the batch's own records that are current (a version already superseded is not
//! audited again). Every finding names the record key, the field, the rule and what to do.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use bincode::{Decode, Encode};
use serde::Deserialize;

use crate::batch::{Batch, WithdrawalReason};
use crate::ids::BatchId;
use crate::record::{Problem, Record, RecordKey, Rule, Severity, Value};
use crate::schema::Schema;

/// One audit finding on one record of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Finding {
    pub key: RecordKey,
    pub problem: Problem,
}

/// What a record's current version is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State<'a> {
    Record(&'a Record),
    Withdrawn(&'a WithdrawalReason),
}

/// The current version of one record and the versions it replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current<'a> {
    /// The batch holding the current version.
    pub batch: BatchId,
    pub state: State<'a>,
    /// Every held batch that carries the key, the current one last, older versions first
    /// (a version before the versions that supersede it; otherwise by batch id).
    pub history: Vec<BatchId>,
}

impl Current<'_> {
    pub fn record(&self) -> Option<&Record> {
        match self.state {
            State::Record(record) => Some(record),
            State::Withdrawn(_) => None,
        }
    }
}

/// One version of a record: the batch carrying it and the batch that batch supersedes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct Version {
    pub batch: BatchId,
    pub supersedes: Option<BatchId>,
}

/// The chain of versions `versions[at]` replaces: the batches it supersedes, directly or
/// through versions of the same key.
fn replaced(versions: &[Version], at: BatchId) -> BTreeSet<BatchId> {
    let mut seen = BTreeSet::new();
    let mut next = versions
        .iter()
        .find(|v| v.batch == at)
        .and_then(|v| v.supersedes);
    while let Some(earlier) = next {
        if earlier == at || !seen.insert(earlier) {
            break;
        }
        next = versions
            .iter()
            .find(|v| v.batch == earlier)
            .and_then(|v| v.supersedes);
    }
    seen
}

/// The versions of one key in order, older first, and the index of the current one.
///
/// A version *replaces* another when its batch supersedes that version's batch, directly or
/// through versions of the same key (a correction or withdrawal names the batch holding the
/// version it changes). The current version is the one no other replaces; if several remain
/// (the key was published twice without a correction, or a version between is not held
/// yet), the highest batch id wins. It depends only on the key's versions, never on the
/// order they arrived in.
pub fn order_versions(versions: &[Version]) -> (Vec<usize>, usize) {
    if versions.len() == 1 {
        return (vec![0], 0);
    }
    let chains: Vec<BTreeSet<BatchId>> = versions
        .iter()
        .map(|v| replaced(versions, v.batch))
        .collect();
    // A version that replaces another holds the other's chain and the other: a strictly
    // longer chain, so this order puts every version before those that replace it.
    let mut order: Vec<usize> = (0..versions.len()).collect();
    order.sort_by_key(|&i| (chains[i].len(), versions[i].batch));
    let winner = (0..versions.len())
        .filter(|&i| !(0..versions.len()).any(|j| j != i && chains[j].contains(&versions[i].batch)))
        .max_by_key(|&i| versions[i].batch)
        .expect("a key has at least one version");
    (order, winner)
}

/// Another version among `versions` that neither replaces nor is replaced by batch `id`'s.
pub fn unrelated_version(versions: &[Version], id: BatchId) -> Option<BatchId> {
    if let [only] = versions
        && only.batch == id
    {
        return None;
    }
    let mine = replaced(versions, id);
    versions
        .iter()
        .map(|v| v.batch)
        .filter(|other| *other != id)
        .find(|other| !mine.contains(other) && !replaced(versions, *other).contains(&id))
}

/// The current version of every record carried by `batches` (data batches of one origin,
/// category and period), by key (see [`order_versions`]).
pub fn current<'a>(batches: &[(BatchId, &'a Batch)]) -> BTreeMap<&'a RecordKey, Current<'a>> {
    let mut versions: BTreeMap<&'a RecordKey, Vec<(Version, State<'a>)>> = BTreeMap::new();
    for (id, batch) in batches {
        let version = Version {
            batch: *id,
            supersedes: batch.header.supersedes,
        };
        for record in &batch.records {
            versions
                .entry(&record.key)
                .or_default()
                .push((version, State::Record(record)));
        }
        for withdrawal in &batch.header.withdrawals {
            versions
                .entry(&withdrawal.key)
                .or_default()
                .push((version, State::Withdrawn(&withdrawal.reason)));
        }
    }
    versions
        .into_iter()
        .map(|(key, mut held)| {
            let plain: Vec<Version> = held.iter().map(|(v, _)| *v).collect();
            let (order, winner) = order_versions(&plain);
            let history = order.iter().map(|&i| plain[i].batch).collect();
            let (version, state) = held.swap_remove(winner);
            (
                key,
                Current {
                    batch: version.batch,
                    state,
                    history,
                },
            )
        })
        .collect()
}

/// One audit rule of a category, as the schema file states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRule {
    pub check: Check,
    pub severity: Severity,
}

/// What an audit rule checks. Field numbers index the schema's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// The values of these fields, together, belong to one current record of an origin and
    /// period (the same subject fined twice on one day under two decision numbers).
    Unique { fields: Vec<usize> },
    /// `field` is not greater than `than` (paid no more than due).
    NotGreater { field: usize, than: usize },
    /// `field` lies within `factor` times the median of the origin's current records of the
    /// period, either way; judged only with at least `min_records` values.
    UsualRange {
        field: usize,
        factor: u32,
        min_records: usize,
    },
    /// One credit code goes with one name among the origin's current records of the period.
    SameName { code: usize, name: usize },
}

/// An `[[audit]]` table of a schema file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditFile {
    check: String,
    severity: String,
    #[serde(default)]
    fields: Vec<String>,
    field: Option<String>,
    than: Option<String>,
    factor: Option<u32>,
    min_records: Option<usize>,
    code: Option<String>,
    name: Option<String>,
}

impl AuditFile {
    /// The rule, with field names looked up; `Err` says what is wrong with the table.
    pub(crate) fn rule(
        &self,
        lookup: &dyn Fn(&str) -> Result<usize, String>,
    ) -> Result<AuditRule, String> {
        let need = |value: &Option<String>, what: &str| -> Result<usize, String> {
            let name = value
                .as_deref()
                .ok_or_else(|| format!("audit check {:?} needs {what}", self.check))?;
            lookup(name)
        };
        let severity = match self.severity.as_str() {
            "warning" => Severity::Warning,
            "error" => Severity::Error,
            other => {
                return Err(format!(
                    "audit severity {other:?} is not \"warning\" or \"error\""
                ));
            }
        };
        let check = match self.check.as_str() {
            "unique" => {
                if self.fields.is_empty() {
                    return Err("audit check \"unique\" needs fields".into());
                }
                Check::Unique {
                    fields: self
                        .fields
                        .iter()
                        .map(|name| lookup(name))
                        .collect::<Result<_, _>>()?,
                }
            }
            "not_greater" => Check::NotGreater {
                field: need(&self.field, "field")?,
                than: need(&self.than, "than")?,
            },
            "usual_range" => {
                let factor = self
                    .factor
                    .ok_or("audit check \"usual_range\" needs factor")?;
                if factor < 2 {
                    return Err(format!("audit factor {factor} must be 2 or more"));
                }
                Check::UsualRange {
                    field: need(&self.field, "field")?,
                    factor,
                    min_records: self.min_records.unwrap_or(20).max(2),
                }
            }
            "same_name" => Check::SameName {
                code: need(&self.code, "code")?,
                name: need(&self.name, "name")?,
            },
            other => {
                return Err(format!(
                    "unknown audit check {other:?} (known: unique, not_greater, usual_range, same_name)"
                ));
            }
        };
        Ok(AuditRule { check, severity })
    }
}

/// What one current record adds to the aggregates the cross-record rules look at.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub enum Contribution {
    /// Rule `rule` (a `unique` rule): the record's values of its fields, joined.
    Unique { rule: u16, values: String },
    /// Rule `rule` (a `same_name` rule): the record's credit code and name.
    Name {
        rule: u16,
        code: String,
        name: String,
    },
    /// Rule `rule` (a `usual_range` rule): the record's positive value.
    Value { rule: u16, value: f64 },
}

/// A [`Contribution`] borrowing its texts from the record: encoded exactly as the
/// contribution it stands for (bincode writes a `str` and a `String` alike).
#[derive(Debug, Clone, PartialEq, Encode)]
pub enum ContributionRef<'a> {
    Unique {
        rule: u16,
        values: Cow<'a, str>,
    },
    Name {
        rule: u16,
        code: &'a str,
        name: &'a str,
    },
    Value {
        rule: u16,
        value: f64,
    },
}

impl ContributionRef<'_> {
    /// The contribution this stands for, its texts copied.
    pub fn to_contribution(&self) -> Contribution {
        match self {
            ContributionRef::Unique { rule, values } => Contribution::Unique {
                rule: *rule,
                values: values.clone().into_owned(),
            },
            ContributionRef::Name { rule, code, name } => Contribution::Name {
                rule: *rule,
                code: (*code).to_owned(),
                name: (*name).to_owned(),
            },
            ContributionRef::Value { rule, value } => Contribution::Value {
                rule: *rule,
                value: *value,
            },
        }
    }
}

/// The contributions of `record` to the cross-record rules of `schema`.
pub fn contributions(schema: &Schema, record: &Record) -> Vec<Contribution> {
    let mut out = Vec::with_capacity(schema.audit.len());
    contributions_ref(schema, record, |contribution| {
        out.push(contribution.to_contribution());
    });
    out
}

/// [`contributions`], each given to `each` as it borrows from `record`, in the rules' order.
pub fn contributions_ref<'a>(
    schema: &Schema,
    record: &'a Record,
    mut each: impl FnMut(ContributionRef<'a>),
) {
    for (n, rule) in schema.audit.iter().enumerate() {
        let rule_n = n as u16;
        match &rule.check {
            Check::Unique { fields } => {
                let values = match fields.as_slice() {
                    [field] => text(record, *field).map(Cow::Borrowed),
                    fields => fields
                        .iter()
                        .map(|&f| text(record, f))
                        .collect::<Option<Vec<_>>>()
                        .map(|values| Cow::Owned(values.join(" / "))),
                };
                if let Some(values) = values {
                    each(ContributionRef::Unique {
                        rule: rule_n,
                        values,
                    });
                }
            }
            Check::SameName { code, name } => {
                if let (Some(code), Some(name)) = (text(record, *code), text(record, *name)) {
                    each(ContributionRef::Name {
                        rule: rule_n,
                        code,
                        name,
                    });
                }
            }
            Check::UsualRange { field, .. } => {
                if let Some(value) = text(record, *field).and_then(number).filter(|v| *v > 0.0) {
                    each(ContributionRef::Value {
                        rule: rule_n,
                        value,
                    });
                }
            }
            Check::NotGreater { .. } => {}
        }
    }
}

/// Positive values in buckets of 1/16 of an octave, from which the usual range's median is
/// read: kept incrementally by a store, computed the same way from batches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
pub struct Histogram {
    pub buckets: BTreeMap<i32, u64>,
}

impl Histogram {
    fn bucket(value: f64) -> i32 {
        (value.log2() * 16.0).floor() as i32
    }

    /// Adds `value` `times` times (negative: removes it).
    pub fn add(&mut self, value: f64, times: i64) {
        let bucket = Self::bucket(value);
        let count = self.buckets.entry(bucket).or_default();
        *count = count.saturating_add_signed(times);
        if *count == 0 {
            self.buckets.remove(&bucket);
        }
    }

    /// Adds every value `other` holds: the same as adding them one by one.
    pub fn absorb(&mut self, other: &Histogram) {
        for (bucket, times) in &other.buckets {
            let count = self.buckets.entry(*bucket).or_default();
            *count = count.saturating_add(*times);
        }
    }

    pub fn count(&self) -> u64 {
        self.buckets.values().sum()
    }

    /// The lower bound of the bucket holding the median value.
    pub fn median(&self) -> Option<f64> {
        let half = self.count().div_ceil(2);
        let mut seen = 0;
        for (bucket, count) in &self.buckets {
            seen += count;
            if seen >= half {
                return Some(2f64.powf(f64::from(*bucket) / 16.0));
            }
        }
        None
    }
}

/// What the rules see of the origin's current records of the period, *with* the batch being
/// audited taken in: from held batches ([`audit`]) or from a store's incremental index.
pub trait View {
    /// The batch holding the current version of `key`.
    fn current_batch(&self, key: &RecordKey) -> Option<BatchId>;
    /// Another version of `key` that neither replaces nor is replaced by batch `id`'s.
    fn unrelated(&self, key: &RecordKey, id: BatchId) -> Option<BatchId>;
    /// The least current record other than `key` whose values for `unique` rule `rule` are
    /// `values`.
    fn other_holder(&self, rule: u16, values: &str, key: &RecordKey) -> Option<RecordKey>;
    /// The name most current records with credit code `code` carry (rule `rule`) and in how
    /// many records (see [`usual_name`]), if it is not `name`.
    fn other_usual_name(&self, rule: u16, code: &str, name: &str) -> Option<(String, u64)>;
    /// The values of `usual_range` rule `rule` over the current records.
    fn histogram(&self, rule: u16) -> Histogram;
}

/// The name carried by most records among `names` (name → how many records), and how many:
/// on a tie, the first in order. The `same_name` rule takes it as right.
///
/// `names` is each name with its count, in ascending order of name (a `BTreeMap`'s order).
pub fn usual_name<'a>(
    names: impl DoubleEndedIterator<Item = (&'a str, u64)>,
) -> Option<(&'a str, u64)> {
    names.rev().max_by_key(|(_, count)| *count)
}

/// [`View`] over held batches.
struct BatchesView<'a> {
    current: BTreeMap<&'a RecordKey, Current<'a>>,
    versions: BTreeMap<&'a RecordKey, Vec<Version>>,
    contributions: Vec<(&'a RecordKey, Contribution)>,
}

impl<'a> BatchesView<'a> {
    fn new(schema: &Schema, batches: &[(BatchId, &'a Batch)]) -> BatchesView<'a> {
        let current = current(batches);
        let mut versions: BTreeMap<&RecordKey, Vec<Version>> = BTreeMap::new();
        for (id, batch) in batches {
            let version = Version {
                batch: *id,
                supersedes: batch.header.supersedes,
            };
            let keys = batch
                .records
                .iter()
                .map(|r| &r.key)
                .chain(batch.header.withdrawals.iter().map(|w| &w.key));
            for key in keys {
                versions.entry(key).or_default().push(version);
            }
        }
        let contributions = current
            .iter()
            .filter_map(|(key, c)| c.record().map(|r| (*key, r)))
            .flat_map(|(key, record)| {
                contributions(schema, record)
                    .into_iter()
                    .map(move |c| (key, c))
            })
            .collect();
        BatchesView {
            current,
            versions,
            contributions,
        }
    }
}

impl View for BatchesView<'_> {
    fn current_batch(&self, key: &RecordKey) -> Option<BatchId> {
        self.current.get(key).map(|c| c.batch)
    }

    fn unrelated(&self, key: &RecordKey, id: BatchId) -> Option<BatchId> {
        unrelated_version(self.versions.get(key)?, id)
    }

    fn other_holder(&self, rule: u16, values: &str, key: &RecordKey) -> Option<RecordKey> {
        self.contributions
            .iter()
            .filter(|(_, c)| {
                matches!(c, Contribution::Unique { rule: r, values: v } if *r == rule && v == values)
            })
            .map(|(holder, _)| *holder)
            .filter(|holder| *holder != key)
            .min()
            .cloned()
    }

    fn other_usual_name(&self, rule: u16, code: &str, name: &str) -> Option<(String, u64)> {
        let mut names = BTreeMap::new();
        for (_, contribution) in &self.contributions {
            if let Contribution::Name {
                rule: r,
                code: c,
                name,
            } = contribution
                && *r == rule
                && c == code
            {
                *names.entry(name.clone()).or_default() += 1;
            }
        }
        usual_name(names.iter().map(|(name, count)| (name.as_str(), *count)))
            .filter(|(usual, _)| *usual != name)
            .map(|(usual, count)| (usual.to_owned(), count))
    }

    fn histogram(&self, rule: u16) -> Histogram {
        let mut histogram = Histogram::default();
        for (_, contribution) in &self.contributions {
            if let Contribution::Value { rule: r, value } = contribution
                && *r == rule
            {
                histogram.add(*value, 1);
            }
        }
        histogram
    }
}

/// Audits the current records of `batch` (id `id`) against the category's rules, seeing the
/// current records of `others`: the other held data batches of the same origin, category
/// and period. A key this batch publishes that another held batch publishes too, neither
/// replacing the other, is reported as well (rule `republished`). The reference for
/// [`audit_with`] over a store's incremental index.
pub fn audit(
    schema: &Schema,
    id: BatchId,
    batch: &Batch,
    others: &[(BatchId, &Batch)],
) -> Vec<Finding> {
    let mut all: Vec<(BatchId, &Batch)> =
        others.iter().filter(|(o, _)| *o != id).copied().collect();
    all.push((id, batch));
    audit_with(schema, id, batch, &BatchesView::new(schema, &all))
}

/// [`audit`] against any [`View`] of the origin's current records with `batch` taken in.
pub fn audit_with(schema: &Schema, id: BatchId, batch: &Batch, view: &dyn View) -> Vec<Finding> {
    audit_records(schema, id, &batch.records, view)
}

/// [`audit_with`] on some of batch `id`'s records: those of `records` whose current version
/// is the batch's. A receiving node audits this way a record whose current version is an
/// earlier batch's when another version of it arrives (one that loses to it, or one between
/// that makes it current again).
pub fn audit_records(
    schema: &Schema,
    id: BatchId,
    records: &[Record],
    view: &dyn View,
) -> Vec<Finding> {
    let mine: Vec<&Record> = records
        .iter()
        .filter(|record| view.current_batch(&record.key) == Some(id))
        .collect();
    let mut findings = Vec::new();
    let problem = |rule: Rule, severity: Severity, field: usize, value: &str, message: String| {
        let field = &schema.fields[field];
        Problem {
            field: field.name.clone(),
            label: field.label.clone(),
            value: value.chars().take(64).collect(),
            rule,
            severity,
            message,
        }
    };
    for record in &mine {
        if let Some(other) = view.unrelated(&record.key, id) {
            findings.push(Finding {
                key: record.key.clone(),
                problem: problem(
                    Rule::Republished,
                    Severity::Warning,
                    schema.key[0],
                    &record.key.0,
                    format!(
                        "record {} was already published in batch {}: to change a published record, send a correction (credit-node correct), which supersedes it",
                        record.key,
                        other.short()
                    ),
                ),
            });
        }
    }
    for (n, rule) in schema.audit.iter().enumerate() {
        let rule_n = n as u16;
        match &rule.check {
            Check::Unique { fields } => {
                for record in &mine {
                    let Some(values) = fields
                        .iter()
                        .map(|&f| text(record, f))
                        .collect::<Option<Vec<_>>>()
                    else {
                        continue;
                    };
                    let values = values.join(" / ");
                    let Some(other) = view.other_holder(rule_n, &values, &record.key) else {
                        continue;
                    };
                    let names: Vec<&str> = fields
                        .iter()
                        .map(|&f| schema.fields[f].name.as_str())
                        .collect();
                    findings.push(Finding {
                        key: record.key.clone(),
                        problem: problem(
                            Rule::Unique,
                            rule.severity,
                            fields[0],
                            &values,
                            format!(
                                "record {} repeats record {other} ({} the same): a duplicate — withdraw one (credit-node withdraw --reason error) or correct it",
                                record.key,
                                names.join(", ")
                            ),
                        ),
                    });
                }
            }
            Check::NotGreater { field, than } => {
                for record in &mine {
                    let (Some(a), Some(b)) = (
                        text(record, *field).and_then(number),
                        text(record, *than).and_then(number),
                    ) else {
                        continue;
                    };
                    if a > b {
                        findings.push(Finding {
                            key: record.key.clone(),
                            problem: problem(
                                Rule::NotGreater,
                                rule.severity,
                                *field,
                                text(record, *field).unwrap_or_default(),
                                format!(
                                    "record {}: {} ({}) is greater than {} ({}): check both amounts with the data source",
                                    record.key,
                                    schema.fields[*field].label,
                                    text(record, *field).unwrap_or_default(),
                                    schema.fields[*than].label,
                                    text(record, *than).unwrap_or_default(),
                                ),
                            ),
                        });
                    }
                }
            }
            Check::UsualRange {
                field,
                factor,
                min_records,
            } => {
                let histogram = view.histogram(rule_n);
                let count = histogram.count();
                let Some(median) = histogram.median().filter(|_| count >= *min_records as u64)
                else {
                    continue;
                };
                let factor = f64::from(*factor);
                for record in &mine {
                    let Some(value) = text(record, *field).and_then(number) else {
                        continue;
                    };
                    if value <= 0.0 || (value <= median * factor && value * factor >= median) {
                        continue;
                    }
                    findings.push(Finding {
                        key: record.key.clone(),
                        problem: problem(
                            Rule::UsualRange,
                            rule.severity,
                            *field,
                            text(record, *field).unwrap_or_default(),
                            format!(
                                "record {}: {} {} is more than {factor}× away from this origin's usual {median:.2} (median of {count} records this period): check it with the data source",
                                record.key,
                                schema.fields[*field].label,
                                text(record, *field).unwrap_or_default(),
                            ),
                        ),
                    });
                }
            }
            Check::SameName { code, name } => {
                for record in &mine {
                    let (Some(c), Some(n)) = (text(record, *code), text(record, *name)) else {
                        continue;
                    };
                    // The name most current records carry is taken as right (on a tie, the
                    // first in order).
                    let Some((usual, count)) = view.other_usual_name(rule_n, c, n) else {
                        continue;
                    };
                    findings.push(Finding {
                        key: record.key.clone(),
                        problem: problem(
                            Rule::SameName,
                            rule.severity,
                            *name,
                            n,
                            format!(
                                "record {}: {} {c} is named {n:?} here but {usual:?} in {count} record(s) of this origin and period: one of the names is wrong, or the code",
                                record.key, schema.fields[*code].label
                            ),
                        ),
                    });
                }
            }
        }
    }
    findings.sort_by(|a, b| {
        (&a.key, &a.problem.field, a.problem.rule.as_str()).cmp(&(
            &b.key,
            &b.problem.field,
            b.problem.rule.as_str(),
        ))
    });
    findings.dedup_by(|a, b| {
        a.key == b.key && a.problem.field == b.problem.field && a.problem.rule == b.problem.rule
    });
    findings
}

/// A field's value as text (an identity number's masked form), if it has one.
fn text(record: &Record, field: usize) -> Option<&str> {
    match record.values.get(field) {
        Some(Value::Text(text)) if !text.is_empty() => Some(text),
        Some(Value::Token { masked, .. }) => Some(masked),
        _ => None,
    }
}

/// A normalized decimal or integer value.
fn number(text: &str) -> Option<f64> {
    plain_decimal(text).or_else(|| text.parse::<f64>().ok().filter(|v| v.is_finite()))
}

/// A decimal without exponent whose digits, read as one integer, are below 2^53, with at
/// most 22 after the point: that integer and the power of ten are exact doubles, so their
/// quotient, rounded once, is exactly what `str::parse` gives (the fast path of
/// decimal-to-float conversion, which `str::parse` reaches for such text after a general
/// scan). Amounts are such decimals, and the rules read a record's several times over.
fn plain_decimal(text: &str) -> Option<f64> {
    const POWERS: [f64; 23] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
        1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
    ];
    let bytes = text.as_bytes();
    let (negative, digits) = match bytes.split_first()? {
        (b'-', rest) => (true, rest),
        _ => (false, bytes),
    };
    // At most 17 characters: the integer cannot overflow a u64.
    if digits.len() > 17 {
        return None;
    }
    let (mut mantissa, mut seen, mut point) = (0u64, 0, None);
    for (i, &byte) in digits.iter().enumerate() {
        match byte {
            b'0'..=b'9' => {
                mantissa = mantissa * 10 + u64::from(byte - b'0');
                seen += 1;
            }
            b'.' if point.is_none() => point = Some(i),
            _ => return None,
        }
    }
    if seen == 0 || mantissa >= 1 << 53 {
        return None;
    }
    let after = point.map_or(0, |at| digits.len() - at - 1);
    let value = mantissa as f64 / POWERS[after];
    Some(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{BATCH_FORMAT, BatchHeader, Withdrawal};
    use crate::ids::{Category, NodeId, Period};
    use crate::record::Subject;
    use crate::schema::Registry;

    proptest::proptest! {
        /// The fast path gives exactly (bit for bit) what `str::parse` gives, or steps aside.
        #[test]
        fn numbers_read_as_str_parse_reads_them(
            text in "-?[0-9]{0,12}(\\.[0-9]{0,8})?|-?[0-9.]{1,18}|[0-9]{15,19}(\\.[0-9]{1,4})?",
        ) {
            let std = text.parse::<f64>().ok().filter(|v| v.is_finite());
            proptest::prop_assert_eq!(number(&text).map(f64::to_bits), std.map(f64::to_bits), "{}", text);
            if let Some(fast) = plain_decimal(&text) {
                proptest::prop_assert_eq!(Some(fast.to_bits()), std.map(f64::to_bits));
            }
        }

        /// A histogram absorbing another holds what adding the other's values one by one
        /// gives.
        #[test]
        fn a_histogram_absorbs_another_as_its_values_one_by_one(
            held in proptest::collection::vec(0.01f64..1e9, 0..40),
            added in proptest::collection::vec(0.01f64..1e9, 0..40),
        ) {
            let mut one_by_one = Histogram::default();
            let mut other = Histogram::default();
            for value in &held {
                one_by_one.add(*value, 1);
            }
            let mut absorbed = one_by_one.clone();
            for value in &added {
                one_by_one.add(*value, 1);
                other.add(*value, 1);
            }
            absorbed.absorb(&other);
            proptest::prop_assert_eq!(absorbed, one_by_one);
        }
    }

    #[test]
    fn the_fast_path_reads_amounts() {
        for (text, value) in [
            ("1621.79", 1621.79),
            ("0.1", 0.1),
            ("-0.30", -0.3),
            ("5.", 5.0),
            (".5", 0.5),
        ] {
            assert_eq!(plain_decimal(text), Some(value), "{text}");
        }
        for text in [
            "",
            "-",
            ".",
            "1.2.3",
            "1e5",
            "+1",
            "12345678901234567890",
            "9007199254740993",
        ] {
            assert_eq!(plain_decimal(text), None, "{text}");
        }
    }

    fn schema() -> &'static Schema {
        Registry::builtin()
            .by_name("water_fee")
            .expect("water_fee is built in")
    }

    fn record(account: &str, uscc: &str, name: &str, billed: &str, paid: &str) -> Record {
        let schema = schema();
        let mut values = vec![Value::Absent; schema.fields.len()];
        for (field, value) in [
            ("account_no", account),
            ("subject_uscc", uscc),
            ("subject_name", name),
            ("billed_amount", billed),
            ("paid_amount", paid),
            ("billing_period", "2022-05"),
        ] {
            values[schema.field_index(field).unwrap()] = Value::Text(value.into());
        }
        Record {
            key: RecordKey(format!("{account}|2022-05")),
            subject: Subject::Organization(crate::Uscc::parse("91445281MA4UM1GX0E").unwrap()),
            values,
        }
    }

    fn batch(
        records: Vec<Record>,
        supersedes: Option<BatchId>,
        withdrawals: Vec<Withdrawal>,
    ) -> (BatchId, Batch) {
        let batch = Batch::new(
            BatchHeader {
                format: BATCH_FORMAT,
                origin: NodeId::parse("445281").unwrap(),
                category: Category::parse("water_fee").unwrap(),
                schema_version: schema().version,
                period: "2022-05".parse::<Period>().unwrap(),
                supersedes,
                withdrawals,
            },
            records,
        )
        .unwrap();
        (BatchId::of(&batch.encode().unwrap()), batch)
    }

    fn normal(n: usize) -> Vec<Record> {
        (0..n)
            .map(|i| {
                record(
                    &format!("A{i:03}"),
                    "91445281MA4UM1GX0E",
                    "揭阳某某公司",
                    "100",
                    "100",
                )
            })
            .collect()
    }

    fn rules(findings: &[Finding]) -> Vec<(String, &'static str)> {
        findings
            .iter()
            .map(|f| (f.key.0.clone(), f.problem.rule.as_str()))
            .collect()
    }

    #[test]
    fn each_rule_names_the_record_and_field_it_finds() {
        let mut records = normal(25);
        records.push(record(
            "B001",
            "91445281MA4UM1GX0E",
            "揭阳某某公司",
            "100",
            "120",
        ));
        records.push(record(
            "B002",
            "91445281MA4UM1GX0E",
            "揭阳某某公司",
            "99999",
            "0",
        ));
        records.push(record(
            "B003",
            "91445281MA4UM1GX0E",
            "别的名字",
            "100",
            "100",
        ));
        let (id, batch) = batch(records, None, Vec::new());
        let findings = audit(schema(), id, &batch, &[]);
        assert_eq!(
            rules(&findings),
            vec![
                ("B001|2022-05".to_owned(), "not_greater"),
                ("B002|2022-05".to_owned(), "usual_range"),
                ("B003|2022-05".to_owned(), "same_name"),
            ]
        );
        let paid = &findings[0].problem;
        assert_eq!(paid.field, "paid_amount");
        assert_eq!(paid.severity, Severity::Warning);
        assert!(paid.message.contains("B001|2022-05"), "{}", paid.message);
    }

    #[test]
    fn too_few_records_judge_no_usual_range() {
        let mut records = normal(5);
        records.push(record(
            "B002",
            "91445281MA4UM1GX0E",
            "揭阳某某公司",
            "99999",
            "0",
        ));
        let (id, batch) = batch(records, None, Vec::new());
        assert!(audit(schema(), id, &batch, &[]).is_empty());
    }

    #[test]
    fn a_correction_is_current_in_any_arrival_order_and_clears_its_finding() {
        let (first, original) = batch(
            vec![
                record("B001", "91445281MA4UM1GX0E", "揭阳某某公司", "100", "120"),
                record("B002", "91445281MA4UM1GX0E", "揭阳某某公司", "100", "100"),
            ],
            None,
            Vec::new(),
        );
        let (fix, correction) = batch(
            vec![record(
                "B001",
                "91445281MA4UM1GX0E",
                "揭阳某某公司",
                "120",
                "120",
            )],
            Some(first),
            Vec::new(),
        );
        let (gone, withdrawal) = batch(
            Vec::new(),
            Some(first),
            vec![Withdrawal {
                key: RecordKey("B002|2022-05".into()),
                reason: WithdrawalReason::CreditRepair,
            }],
        );
        let orders = [
            vec![(first, &original), (fix, &correction), (gone, &withdrawal)],
            vec![(gone, &withdrawal), (fix, &correction), (first, &original)],
            vec![(fix, &correction), (gone, &withdrawal), (first, &original)],
        ];
        for order in orders {
            let view = current(&order);
            let b1 = &view[&RecordKey("B001|2022-05".into())];
            assert_eq!(b1.batch, fix);
            assert_eq!(b1.history, vec![first, fix]);
            let b2 = &view[&RecordKey("B002|2022-05".into())];
            assert_eq!(b2.batch, gone);
            assert_eq!(b2.state, State::Withdrawn(&WithdrawalReason::CreditRepair));
        }
        assert_eq!(
            rules(&audit(schema(), first, &original, &[])),
            vec![("B001|2022-05".to_owned(), "not_greater")]
        );
        assert!(audit(schema(), fix, &correction, &[(first, &original)]).is_empty());
        // The original arriving after its correction is not current: not audited again.
        assert!(audit(schema(), first, &original, &[(fix, &correction)]).is_empty());
    }

    #[test]
    fn a_key_published_again_without_a_correction_is_reported() {
        let (first, original) = batch(normal(2), None, Vec::new());
        let mut again = normal(1);
        again[0] = record("A000", "91445281MA4UM1GX0E", "揭阳某某公司", "100", "90");
        let (second, republished) = batch(again, None, Vec::new());
        let findings = audit(schema(), second, &republished, &[(first, &original)]);
        assert_eq!(
            rules(&findings),
            vec![("A000|2022-05".to_owned(), "republished")]
        );
        // Both versions held, neither superseding: the higher id is current everywhere.
        let view = current(&[(first, &original), (second, &republished)]);
        assert_eq!(
            view[&RecordKey("A000|2022-05".into())].batch,
            first.max(second)
        );
    }

    #[test]
    fn a_rule_that_names_an_unknown_field_is_refused_with_its_number() {
        let text = include_str!("../schemas/water_fee.toml")
            .replace("than = \"billed_amount\"", "than = \"billed\"");
        let error = Schema::parse("water_fee.toml", &text).unwrap_err();
        assert!(
            error.message.contains("[[audit]] number 1") && error.message.contains("\"billed\""),
            "{error}"
        );
    }
}
