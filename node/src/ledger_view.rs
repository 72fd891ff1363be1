//! The `report` command's view of a ledger: reporter rows, city subtotals and the total, with
//! 瞒报率, 漏报率, 迟报率 and completeness, each a count over expected reports so an operator
//! can check it by hand, and the reporters behind every non-zero rate.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use protocol::NodeId;
use serde_json::{Value, json};
use topology::{Role, Topology};

use crate::core::ledger::{Entry, Rates, State};

/// One row of the roll-up.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// `reporter`, `city` or `total`.
    pub level: &'static str,
    pub node: Option<NodeId>,
    pub name: String,
    pub rates: Rates,
}

/// The rows: every reporter, then each city's subtotal after its reporters, then the total.
pub fn roll_up(entries: &[Entry], topology: &Topology) -> Vec<Row> {
    let mut by_city: BTreeMap<Option<NodeId>, BTreeMap<NodeId, Rates>> = BTreeMap::new();
    for entry in entries {
        let city = topology
            .path_to_national(entry.reporter)
            .into_iter()
            .find(|n| topology.node(*n).is_some_and(|n| n.role == Role::City));
        by_city
            .entry(city)
            .or_default()
            .entry(entry.reporter)
            .or_default()
            .add(entry);
    }
    let name = |id: NodeId| {
        topology
            .node(id)
            .map_or_else(|| id.to_string(), |n| n.name.clone())
    };
    let mut rows = Vec::new();
    let mut total = Rates::default();
    for (city, reporters) in by_city {
        let mut subtotal = Rates::default();
        for (reporter, rates) in reporters {
            merge(&mut subtotal, &rates);
            rows.push(Row {
                level: "reporter",
                node: Some(reporter),
                name: name(reporter),
                rates,
            });
        }
        merge(&mut total, &subtotal);
        rows.push(Row {
            level: "city",
            node: city,
            name: city.map_or_else(|| "(no city)".to_owned(), name),
            rates: subtotal,
        });
    }
    rows.push(Row {
        level: "total",
        node: None,
        name: "total".into(),
        rates: total,
    });
    rows
}

fn merge(into: &mut Rates, from: &Rates) {
    into.expected += from.expected;
    into.on_time += from.on_time;
    into.late += from.late;
    into.missing += from.missing;
    into.incomplete += from.incomplete;
    into.concealed += from.concealed;
    into.pending += from.pending;
    into.records_delivered += from.records_delivered;
    into.records_declared += from.records_declared;
    into.records_delivered_of_declared += from.records_delivered_of_declared;
}

fn percent(rate: f64) -> String {
    format!("{:.1}%", rate * 100.0)
}

/// The reporters behind each non-zero rate: (rate name, reporter, what).
fn behind(entries: &[Entry]) -> Vec<(&'static str, String, String)> {
    let mut lines = Vec::new();
    for e in entries {
        let at = format!("{} {} {}", e.reporter, e.category, e.period);
        if let Some(why) = &e.concealment {
            lines.push(("瞒报 concealment", at.clone(), why.clone()));
        }
        if e.missing {
            lines.push((
                "漏报 missing",
                at.clone(),
                "nothing arrived by the deadline".into(),
            ));
        }
        if let Some(days) = e.late_days {
            lines.push((
                "迟报 late",
                at.clone(),
                format!("{days} day(s) after the deadline"),
            ));
        }
        if !e.incomplete.is_empty() {
            lines.push((
                "incomplete",
                at.clone(),
                format!("{} batch(es) named but not held", e.incomplete.len()),
            ));
        }
    }
    lines
}

/// The report as a table for a terminal.
pub fn table(entries: &[Entry], topology: &Topology, title: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{title}");
    let _ = writeln!(
        out,
        "{:<9} {:<8} {:<16} {:>8} {:>7} {:>5} {:>7} {:>9} {:>14} {:>14} {:>14} {:>12}",
        "level",
        "node",
        "name",
        "expected",
        "on time",
        "late",
        "missing",
        "concealed",
        "瞒报率",
        "漏报率",
        "迟报率",
        "completeness"
    );
    for row in roll_up(entries, topology) {
        let r = &row.rates;
        let _ = writeln!(
            out,
            "{:<9} {:<8} {:<16} {:>8} {:>7} {:>5} {:>7} {:>9} {:>14} {:>14} {:>14} {:>12}",
            row.level,
            row.node.map_or_else(String::new, |n| n.to_string()),
            row.name,
            r.expected,
            r.on_time,
            r.late,
            r.missing,
            r.concealed,
            format!(
                "{}/{} {}",
                r.concealed,
                r.expected,
                percent(r.concealment_rate())
            ),
            format!("{}/{} {}", r.missing, r.expected, percent(r.missing_rate())),
            format!("{}/{} {}", r.late, r.expected, percent(r.late_rate())),
            percent(r.completeness()),
        );
    }
    let lines = behind(entries);
    if !lines.is_empty() {
        let _ = writeln!(out, "\nbehind the rates:");
        for (rate, at, why) in lines {
            let _ = writeln!(out, "  {rate:<17} {at:<32} {why}");
        }
    }
    let pending = entries.iter().filter(|e| e.state == State::Pending).count();
    if pending > 0 {
        let _ = writeln!(
            out,
            "\n{pending} report(s) not yet due and not yet arrived are not counted."
        );
    }
    out
}

/// The report as JSON: entries, rows and the lines behind the rates.
pub fn json(entries: &[Entry], topology: &Topology) -> Value {
    let rows: Vec<Value> = roll_up(entries, topology)
        .into_iter()
        .map(|row| {
            let r = &row.rates;
            json!({
                "level": row.level,
                "node": row.node.map(|n| n.to_string()),
                "name": row.name,
                "counts": r,
                "concealment_rate": r.concealment_rate(),
                "missing_rate": r.missing_rate(),
                "late_rate": r.late_rate(),
                "completeness": r.completeness(),
            })
        })
        .collect();
    let behind: Vec<Value> = behind(entries)
        .into_iter()
        .map(|(rate, at, why)| json!({"rate": rate, "report": at, "why": why}))
        .collect();
    json!({"entries": entries, "rows": rows, "behind": behind})
}

/// The report's entries as CSV, one line per expected report.
pub fn csv(entries: &[Entry]) -> String {
    let mut out = String::from(
        "reporter,category,period,state,due_ms,arrived_ms,late_days,missing,incomplete,concealment,records_delivered,records_declared\n",
    );
    for e in entries {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},\"{}\",{},{}",
            e.reporter,
            e.category,
            e.period,
            e.state.as_str(),
            e.due_ms,
            e.arrived_ms.map_or_else(String::new, |t| t.to_string()),
            e.late_days.map_or_else(String::new, |d| d.to_string()),
            e.missing,
            e.incomplete.len(),
            e.concealment.as_deref().unwrap_or("").replace('"', "'"),
            e.records_delivered,
            e.records_declared
                .map_or_else(String::new, |d| d.to_string()),
        );
    }
    out
}
