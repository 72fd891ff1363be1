//! What the operator API shows of the data-quality loop: feedback items (open, or all) as a
//! table, JSON or CSV for the data-source unit; time to fix per reporter, rolled up by city
//! and over the subtree, for the report; each record's current version with its history and
//! withdrawal; and which own batch holds a key's current version (for `correct` and
//! `withdraw`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use protocol::audit::{self, State};
use protocol::batch::WithdrawalReason;
use protocol::ids::{BatchId, Category, NodeId, Period};
use protocol::{Batch, RecordKey, Registry, Value as FieldValue};
use serde_json::{Value, json};
use topology::{Role, Topology};

use crate::progress_view::china_time;
use crate::store::{FeedbackItem, Kv, Store, StoreError};

/// Which items to show.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub origin: Option<NodeId>,
    pub category: Option<Category>,
    pub period: Option<Period>,
    /// Closed items too.
    pub all: bool,
}

impl Filter {
    fn keeps(&self, item: &FeedbackItem) -> bool {
        self.category.as_ref().is_none_or(|c| *c == item.category)
            && self.period.is_none_or(|p| p == item.period)
            && (self.all || item.closed.is_none())
    }
}

pub fn items<K: Kv>(store: &Store<K>, filter: &Filter) -> Result<Vec<FeedbackItem>, StoreError> {
    store
        .feedback(filter.origin)
        .filter(|item| item.as_ref().map_or(true, |i| filter.keeps(i)))
        .collect()
}

pub fn reason_str(reason: &WithdrawalReason) -> &'static str {
    match reason {
        WithdrawalReason::DisplayExpired => "expired",
        WithdrawalReason::CreditRepair => "repaired",
        WithdrawalReason::Error => "error",
    }
}

pub fn parse_reason(text: &str) -> Option<WithdrawalReason> {
    match text {
        "expired" => Some(WithdrawalReason::DisplayExpired),
        "repaired" => Some(WithdrawalReason::CreditRepair),
        "error" => Some(WithdrawalReason::Error),
        _ => None,
    }
}

fn item_json(item: &FeedbackItem) -> Value {
    json!({
        "origin": item.origin.to_string(),
        "category": item.category.to_string(),
        "period": item.period.to_string(),
        "batch": item.batch.to_hex(),
        "record_key": item.key.0,
        "field": item.problem.field,
        "label": item.problem.label,
        "value": item.problem.value,
        "rule": item.problem.rule.as_str(),
        "severity": format!("{:?}", item.problem.severity).to_lowercase(),
        "message": item.problem.message,
        "reporter": item.reporter.to_string(),
        "opened_ms": item.opened_ms,
        "closed_ms": item.closed.as_ref().map(|c| c.at_ms),
        "closed_by": item.closed.as_ref().map(|c| c.by.to_hex()),
        "closed_how": item.closed.as_ref().map(|c| if c.withdrawn { "withdrawn" } else { "corrected" }),
    })
}

pub fn items_json(items: &[FeedbackItem]) -> Value {
    let open = items.iter().filter(|i| i.closed.is_none()).count();
    json!({
        "open": open,
        "closed": items.len() - open,
        "items": items.iter().map(item_json).collect::<Vec<_>>(),
    })
}

fn quoted(text: &str) -> String {
    format!("\"{}\"", text.replace('"', "\"\""))
}

/// One line per item, for handing back to the data-source unit (UTF-8 with a byte-order mark,
/// so spreadsheet programs read the Chinese labels).
pub fn items_csv(items: &[FeedbackItem]) -> String {
    let mut out = String::from(
        "\u{feff}origin,category,period,batch,record_key,field,label,value,rule,severity,message,opened,closed,closed_how\n",
    );
    for item in items {
        let severity = format!("{:?}", item.problem.severity).to_lowercase();
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            item.origin,
            item.category,
            item.period,
            item.batch.to_hex(),
            quoted(&item.key.0),
            item.problem.field,
            quoted(&item.problem.label),
            quoted(&item.problem.value),
            item.problem.rule.as_str(),
            severity,
            quoted(&item.problem.message),
            china_time(item.opened_ms),
            item.closed
                .as_ref()
                .map_or_else(String::new, |c| china_time(c.at_ms)),
            item.closed.as_ref().map_or("", |c| if c.withdrawn {
                "withdrawn"
            } else {
                "corrected"
            }),
        );
    }
    out
}

pub fn items_table(items: &[FeedbackItem], title: &str) -> String {
    let mut out = String::new();
    let open = items.iter().filter(|i| i.closed.is_none()).count();
    let _ = writeln!(out, "{title}: {open} open, {} closed", items.len() - open);
    for item in items {
        let state = match &item.closed {
            None => "OPEN".to_owned(),
            Some(c) => format!(
                "{} {}",
                if c.withdrawn {
                    "withdrawn"
                } else {
                    "corrected"
                },
                china_time(c.at_ms)
            ),
        };
        let _ = writeln!(
            out,
            "  {state:<27} {} {} {} record {}  {} ({}) [{}]  batch {}  since {}\n      {}",
            item.origin,
            item.category,
            item.period,
            item.key,
            item.problem.field,
            item.problem.label,
            item.problem.rule,
            item.batch.short(),
            china_time(item.opened_ms),
            item.problem.message
        );
    }
    if items.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    out
}

/// Open and fixed items and the time to fix (median and 90th percentile, in hours) of one
/// reporter or one roll-up.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FixTimes {
    pub open: u64,
    pub fixed: u64,
    durations_ms: Vec<u64>,
}

impl FixTimes {
    fn add(&mut self, item: &FeedbackItem) {
        match &item.closed {
            None => self.open += 1,
            Some(closed) => {
                self.fixed += 1;
                self.durations_ms
                    .push(closed.at_ms.saturating_sub(item.opened_ms));
            }
        }
    }

    fn merge(&mut self, other: &FixTimes) {
        self.open += other.open;
        self.fixed += other.fixed;
        self.durations_ms.extend(&other.durations_ms);
    }

    /// The `q`-quantile (nearest rank) of the times to fix, in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> Option<u64> {
        let mut sorted = self.durations_ms.clone();
        sorted.sort_unstable();
        let n = sorted.len();
        if n == 0 {
            return None;
        }
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        Some(sorted[rank - 1])
    }

    fn json(&self) -> Value {
        json!({
            "open": self.open,
            "fixed": self.fixed,
            "time_to_fix_median_ms": self.quantile_ms(0.5),
            "time_to_fix_p90_ms": self.quantile_ms(0.9),
        })
    }
}

/// Time to fix per reporter (the origin), then per city, then over everything, of the items
/// `filter` keeps (closed ones included whatever `filter.all` says).
pub fn fix_times(
    items: &[FeedbackItem],
    topology: &Topology,
) -> Vec<(&'static str, Option<NodeId>, FixTimes)> {
    let mut by_city: BTreeMap<Option<NodeId>, BTreeMap<NodeId, FixTimes>> = BTreeMap::new();
    for item in items {
        let city = topology
            .path_to_national(item.origin)
            .into_iter()
            .find(|n| topology.node(*n).is_some_and(|n| n.role == Role::City));
        by_city
            .entry(city)
            .or_default()
            .entry(item.origin)
            .or_default()
            .add(item);
    }
    let mut rows = Vec::new();
    let mut total = FixTimes::default();
    for (city, reporters) in by_city {
        let mut subtotal = FixTimes::default();
        for (reporter, times) in reporters {
            subtotal.merge(&times);
            rows.push(("reporter", Some(reporter), times));
        }
        total.merge(&subtotal);
        rows.push(("city", city, subtotal));
    }
    rows.push(("total", None, total));
    rows
}

fn hours(ms: Option<u64>) -> String {
    ms.map_or_else(
        || "-".to_owned(),
        |ms| format!("{:.1} h", ms as f64 / 3_600_000.0),
    )
}

pub fn fix_times_json(rows: &[(&'static str, Option<NodeId>, FixTimes)]) -> Value {
    Value::Array(
        rows.iter()
            .map(|(level, node, times)| {
                let mut value = times.json();
                value["level"] = json!(level);
                value["node"] = json!(node.map(|n| n.to_string()));
                value
            })
            .collect(),
    )
}

pub fn fix_times_table(
    rows: &[(&'static str, Option<NodeId>, FixTimes)],
    topology: &Topology,
) -> String {
    let mut out = String::from(
        "data quality (audit findings; time to fix = from the finding to the correction or withdrawal that cleared it)\n",
    );
    let _ = writeln!(
        out,
        "{:<9} {:<8} {:<16} {:>6} {:>6} {:>12} {:>12}",
        "level", "node", "name", "open", "fixed", "median fix", "p90 fix"
    );
    for (level, node, times) in rows {
        let name = node
            .and_then(|n| topology.node(n).map(|n| n.name.clone()))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<9} {:<8} {:<16} {:>6} {:>6} {:>12} {:>12}",
            level,
            node.map_or_else(String::new, |n| n.to_string()),
            name,
            times.open,
            times.fixed,
            hours(times.quantile_ms(0.5)),
            hours(times.quantile_ms(0.9)),
        );
    }
    out
}

/// The origins whose data batches of `(category, period)` this node holds.
fn origins_of<K: Kv>(
    store: &Store<K>,
    category: &Category,
    period: Period,
) -> Result<BTreeSet<NodeId>, StoreError> {
    let mut origins = BTreeSet::new();
    for entry in store.held() {
        let (_, meta) = entry?;
        if meta.category == *category && meta.period == period {
            origins.insert(meta.origin);
        }
    }
    Ok(origins)
}

/// Each record's current version (and its history) of `(category, period)`, of one origin
/// or of every origin held, optionally only `key`.
pub fn records_json<K: Kv>(
    store: &Store<K>,
    category: &Category,
    period: Period,
    origin: Option<NodeId>,
    key: Option<&str>,
) -> Result<Value, StoreError> {
    let origins = match origin {
        Some(origin) => BTreeSet::from([origin]),
        None => origins_of(store, category, period)?,
    };
    let schema = Registry::builtin().get(category);
    let mut out = Vec::new();
    let (mut current_count, mut withdrawn_count) = (0, 0);
    for origin in origins {
        let held = store.data_batches(origin, period, category)?;
        let refs: Vec<(BatchId, &Batch)> = held.iter().map(|(id, b)| (*id, b)).collect();
        for (record_key, version) in audit::current(&refs) {
            if key.is_some_and(|k| k != record_key.0) {
                continue;
            }
            let received = store.meta(&version.batch)?.map(|m| m.received_at_ms);
            let mut value = json!({
                "origin": origin.to_string(),
                "key": record_key.0,
                "batch": version.batch.to_hex(),
                "received_at_ms": received,
                "history": version.history.iter().map(|b| b.to_hex()).collect::<Vec<_>>(),
            });
            match version.state {
                State::Record(record) => {
                    current_count += 1;
                    value["state"] = json!("current");
                    if let Some(schema) = schema {
                        let fields: serde_json::Map<String, Value> = schema
                            .fields
                            .iter()
                            .zip(&record.values)
                            .filter_map(|(field, v)| match v {
                                FieldValue::Absent => None,
                                FieldValue::Text(text) => Some((field.name.clone(), json!(text))),
                                FieldValue::Token { masked, .. } => {
                                    Some((field.name.clone(), json!(masked)))
                                }
                            })
                            .collect();
                        value["fields"] = Value::Object(fields);
                    }
                }
                State::Withdrawn(reason) => {
                    withdrawn_count += 1;
                    value["state"] = json!("withdrawn");
                    value["reason"] = json!(reason_str(reason));
                    value["withdrawn_at_ms"] = json!(received);
                }
            }
            out.push(value);
        }
    }
    Ok(json!({
        "category": category.to_string(),
        "period": period.to_string(),
        "current": current_count,
        "withdrawn": withdrawn_count,
        "records": out,
    }))
}

pub fn records_table(value: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {}: {} current record(s), {} withdrawn",
        value["category"].as_str().unwrap_or(""),
        value["period"].as_str().unwrap_or(""),
        value["current"],
        value["withdrawn"]
    );
    for record in value["records"].as_array().into_iter().flatten() {
        let batch = record["batch"].as_str().unwrap_or("");
        let versions = record["history"].as_array().map_or(0, Vec::len);
        let received = record["received_at_ms"]
            .as_u64()
            .map(china_time)
            .unwrap_or_default();
        let state = match record["state"].as_str() {
            Some("withdrawn") => format!(
                "WITHDRAWN ({}) {received}",
                record["reason"].as_str().unwrap_or("")
            ),
            _ => "current".to_owned(),
        };
        let _ = writeln!(
            out,
            "  {} {:<28} {state:<30} batch {}  {} version(s)",
            record["origin"].as_str().unwrap_or(""),
            record["key"].as_str().unwrap_or(""),
            &batch[..batch.len().min(12)],
            versions
        );
        if let Some(fields) = record["fields"].as_object() {
            let text: Vec<String> = fields
                .iter()
                .map(|(name, v)| format!("{name}={}", v.as_str().unwrap_or("")))
                .collect();
            let _ = writeln!(out, "      {}", text.join("  "));
        }
    }
    out
}

/// For each of `keys`, which of this node's own batches holds its current version: its
/// period, batch id and whether it is withdrawn (absent: never published). Searches every
/// held period of `category` when `period` is `None`.
pub fn current_holders<K: Kv>(
    store: &Store<K>,
    me: NodeId,
    category: &Category,
    period: Option<Period>,
    keys: &[String],
) -> Result<Value, StoreError> {
    let periods: BTreeSet<Period> = match period {
        Some(period) => BTreeSet::from([period]),
        None => store
            .held_of(me)
            .filter_map(|entry| match entry {
                Ok((_, meta)) if meta.category == *category => Some(Ok(meta.period)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<_, _>>()?,
    };
    let wanted: BTreeSet<&str> = keys.iter().map(String::as_str).collect();
    let mut found = serde_json::Map::new();
    for period in periods {
        let held = store.data_batches(me, period, category)?;
        let refs: Vec<(BatchId, &Batch)> = held.iter().map(|(id, b)| (*id, b)).collect();
        for (key, version) in audit::current(&refs) {
            if !wanted.contains(key.0.as_str()) {
                continue;
            }
            found.insert(
                key.0.clone(),
                json!({
                    "period": period.to_string(),
                    "batch": version.batch.to_hex(),
                    "withdrawn": matches!(version.state, State::Withdrawn(_)),
                }),
            );
        }
    }
    Ok(Value::Object(found))
}

/// The keys of the records whose current version batch `id` holds (for `correct --batch`).
pub fn keys_held_by<K: Kv>(store: &Store<K>, id: &BatchId) -> Result<Vec<RecordKey>, StoreError> {
    let Some(batch) = store.held_data_batch(id)? else {
        return Ok(Vec::new());
    };
    let held = store.data_batches(
        batch.header.origin,
        batch.header.period,
        &batch.header.category,
    )?;
    let refs: Vec<(BatchId, &Batch)> = held.iter().map(|(i, b)| (*i, b)).collect();
    Ok(audit::current(&refs)
        .into_iter()
        .filter(|(_, version)| version.batch == *id && version.record().is_some())
        .map(|(key, _)| key.clone())
        .collect())
}
