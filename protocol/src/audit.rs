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

use std::collections::{BTreeMap, BTreeSet, HashMap};

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

/// The current version of every record carried by `batches` (data batches of one origin,
/// category and period), by key.
pub fn current<'a>(batches: &[(BatchId, &'a Batch)]) -> BTreeMap<&'a RecordKey, Current<'a>> {
    let ancestry = ancestry(batches);
    let mut versions: BTreeMap<&'a RecordKey, Vec<(BatchId, State<'a>)>> = BTreeMap::new();
    for (id, batch) in batches {
        for record in &batch.records {
            versions
                .entry(&record.key)
                .or_default()
                .push((*id, State::Record(record)));
        }
        for withdrawal in &batch.header.withdrawals {
            versions
                .entry(&withdrawal.key)
                .or_default()
                .push((*id, State::Withdrawn(&withdrawal.reason)));
        }
    }
    versions
        .into_iter()
        .map(|(key, mut held)| {
            // Older first: a batch that supersedes another has a strictly longer chain of
            // held ancestors (it holds the other's chain and the other), so this order puts
            // every version before the versions that supersede it.
            held.sort_by_key(|(id, _)| (ancestry[id].len(), *id));
            let winner = held
                .iter()
                .enumerate()
                .filter(|(_, (id, _))| {
                    !held
                        .iter()
                        .any(|(other, _)| other != id && ancestry[other].contains(id))
                })
                .max_by_key(|(_, (id, _))| *id)
                .map(|(index, _)| index)
                .expect("a key has at least one version");
            let history = held.iter().map(|(id, _)| *id).collect();
            let (batch, state) = held.swap_remove(winner);
            (
                key,
                Current {
                    batch,
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

/// Audits the current records of `batch` (id `id`) against the category's rules, seeing the
/// current records of `others`: the other held data batches of the same origin, category
/// and period. A key this batch publishes that another held batch publishes too, neither
/// superseding the other, is reported as well (rule `republished`).
pub fn audit(
    schema: &Schema,
    id: BatchId,
    batch: &Batch,
    others: &[(BatchId, &Batch)],
) -> Vec<Finding> {
    let mut all: Vec<(BatchId, &Batch)> =
        others.iter().filter(|(o, _)| *o != id).copied().collect();
    all.push((id, batch));
    let view = current(&all);
    let mine: Vec<&Record> = batch
        .records
        .iter()
        .filter(|record| view.get(&record.key).is_some_and(|c| c.batch == id))
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
    // A key published again without superseding the version held.
    let chain = ancestry(&all);
    for record in &mine {
        let unrelated = view[&record.key]
            .history
            .iter()
            .filter(|other| **other != id)
            .find(|other| !chain[&id].contains(other) && !chain[*other].contains(&id));
        if let Some(other) = unrelated {
            let key_field = schema.key[0];
            findings.push(Finding {
                key: record.key.clone(),
                problem: problem(
                    Rule::Republished,
                    Severity::Warning,
                    key_field,
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
    let current_records: Vec<&Record> = view.values().filter_map(|c| c.record()).collect();
    for rule in &schema.audit {
        match &rule.check {
            Check::Unique { fields } => {
                let mut holders: BTreeMap<Vec<&str>, Vec<&RecordKey>> = BTreeMap::new();
                for record in &current_records {
                    let values: Option<Vec<&str>> =
                        fields.iter().map(|&f| text(record, f)).collect();
                    if let Some(values) = values {
                        holders.entry(values).or_default().push(&record.key);
                    }
                }
                for record in &mine {
                    let Some(values) = fields
                        .iter()
                        .map(|&f| text(record, f))
                        .collect::<Option<Vec<_>>>()
                    else {
                        continue;
                    };
                    let Some(other) = holders[&values].iter().find(|k| **k != &record.key) else {
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
                            &values.join(" / "),
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
                let mut values: Vec<f64> = current_records
                    .iter()
                    .filter_map(|r| text(r, *field).and_then(number))
                    .filter(|v| *v > 0.0)
                    .collect();
                if values.len() < *min_records {
                    continue;
                }
                values.sort_by(f64::total_cmp);
                let median = values[values.len() / 2];
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
                                "record {}: {} {} is more than {factor}× away from this origin's usual {median} (median of {} records this period): check it with the data source",
                                record.key,
                                schema.fields[*field].label,
                                text(record, *field).unwrap_or_default(),
                                values.len()
                            ),
                        ),
                    });
                }
            }
            Check::SameName { code, name } => {
                // Per code, how many current records carry each name and one of them; the
                // name most records carry is taken as right (on a tie, the first in order).
                let mut names: BTreeMap<&str, BTreeMap<&str, (usize, &RecordKey)>> =
                    BTreeMap::new();
                for record in &current_records {
                    if let (Some(c), Some(n)) = (text(record, *code), text(record, *name)) {
                        names
                            .entry(c)
                            .or_default()
                            .entry(n)
                            .or_insert((0, &record.key))
                            .0 += 1;
                    }
                }
                for record in &mine {
                    let (Some(c), Some(n)) = (text(record, *code), text(record, *name)) else {
                        continue;
                    };
                    let Some((usual, (count, other_key))) =
                        names[c].iter().rev().max_by_key(|(_, (count, _))| *count)
                    else {
                        continue;
                    };
                    if *usual == n {
                        continue;
                    }
                    findings.push(Finding {
                        key: record.key.clone(),
                        problem: problem(
                            Rule::SameName,
                            rule.severity,
                            *name,
                            n,
                            format!(
                                "record {}: {} {c} is named {n:?} here but {usual:?} in {count} record(s) such as {other_key}: one of the names is wrong, or the code",
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

/// The ancestors of each batch along its supersedes chain: the batch it names, and on
/// through the held batches (a cycle, which only a hash collision could make, ends the walk).
fn ancestry(batches: &[(BatchId, &Batch)]) -> HashMap<BatchId, BTreeSet<BatchId>> {
    let supersedes: HashMap<BatchId, BatchId> = batches
        .iter()
        .filter_map(|(id, batch)| batch.header.supersedes.map(|s| (*id, s)))
        .collect();
    batches
        .iter()
        .map(|(id, _)| {
            let mut seen = BTreeSet::new();
            let mut at = *id;
            while let Some(&earlier) = supersedes.get(&at) {
                if earlier == *id || !seen.insert(earlier) {
                    break;
                }
                at = earlier;
            }
            (*id, seen)
        })
        .collect()
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
    text.parse::<f64>().ok().filter(|v| v.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{BATCH_FORMAT, BatchHeader, Withdrawal};
    use crate::ids::{Category, NodeId, Period};
    use crate::record::Subject;
    use crate::schema::Registry;

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
            Some(fix),
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
