//! The `report` command's view of a ledger: reporter rows, city subtotals and the total, with
//! 瞒报率, 漏报率, 迟报率 and completeness, each a count over expected reports so an operator
//! can check it by hand, and the reporters behind every non-zero rate with whom to call about
//! each (the reporter's line of the schedule's task allocation table, 分工表).

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

/// Whom to call about a report, in one line: the responsible unit and its contact, the data
/// source, and the districts the reporter covers; without a line in the schedule's allocation
/// table, the reporter's platform.
pub fn whom_to_call(entry: &Entry, topology: &Topology) -> String {
    let name = |id: NodeId| {
        topology
            .node(id)
            .map_or_else(|| id.to_string(), |n| format!("{id} {}", n.name))
    };
    match &entry.allocation {
        None => format!(
            "the platform of {} (no line in the allocation table of {})",
            name(entry.reporter),
            entry.category
        ),
        Some(line) => {
            let mut text = line.responsible.clone();
            if let Some(contact) = &line.contact {
                let _ = write!(text, " {contact}");
            }
            let _ = write!(text, "; data source {}", line.data_source);
            if !line.covers.is_empty() {
                let covers: Vec<String> = line.covers.iter().map(|id| name(*id)).collect();
                let _ = write!(text, "; reports for {}", covers.join(", "));
            }
            text
        }
    }
}

/// Whether a report is behind a non-zero rate (late, missing, incomplete or short).
fn flagged(entry: &Entry) -> bool {
    entry.concealment.is_some()
        || entry.missing
        || entry.late_days.is_some()
        || !entry.incomplete.is_empty()
}

/// What puts one report behind the rates: (rate name, report, what).
fn flags(e: &Entry) -> Vec<(&'static str, String, String)> {
    let at = format!("{} {} {}", e.reporter, e.category, e.period);
    let mut lines = Vec::new();
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
            at,
            format!("{} batch(es) named but not held", e.incomplete.len()),
        ));
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
    if entries.iter().any(flagged) {
        let _ = writeln!(out, "\nbehind the rates:");
        for entry in entries.iter().filter(|e| flagged(e)) {
            for (rate, at, why) in flags(entry) {
                let _ = writeln!(out, "  {rate:<17} {at:<32} {why}");
            }
            let _ = writeln!(
                out,
                "  {:<17} whom to call: {}",
                "",
                whom_to_call(entry, topology)
            );
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
    let behind: Vec<Value> = entries
        .iter()
        .flat_map(|entry| {
            let call = whom_to_call(entry, topology);
            flags(entry).into_iter().map(move |(rate, at, why)| {
                json!({"rate": rate, "report": at, "why": why, "whom_to_call": call})
            })
        })
        .collect();
    json!({"entries": entries, "rows": rows, "behind": behind})
}

/// A CSV field in quotes, inner quotes doubled (RFC 4180).
fn quoted(text: &str) -> String {
    format!("\"{}\"", text.replace('"', "\"\""))
}

/// The report's entries as CSV, one line per expected report, with the reporter's line of
/// the allocation table (empty fields without one; `covers` separated by spaces).
pub fn csv(entries: &[Entry]) -> String {
    let mut out = String::from(
        "reporter,category,period,state,due_ms,arrived_ms,late_days,missing,incomplete,concealment,records_delivered,records_declared,data_source,responsible,contact,covers\n",
    );
    for e in entries {
        let line = e.allocation.as_ref();
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},\"{}\",{},{},{},{},{},{}",
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
            quoted(line.map_or("", |l| &l.data_source)),
            quoted(line.map_or("", |l| &l.responsible)),
            quoted(line.and_then(|l| l.contact.as_deref()).unwrap_or("")),
            line.map_or_else(String::new, |l| l
                .covers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" ")),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use protocol::NodeKey;
    use topology::Node;

    use super::*;
    use crate::core::ledger::Allocation;

    fn id(text: &str) -> NodeId {
        NodeId::parse(text).unwrap()
    }

    fn jieyang() -> Topology {
        let node = |code: &str, name: &str, parent: Option<&str>, n: u8| Node {
            id: id(code),
            name: name.into(),
            role: Role::of_id(id(code)),
            parent: parent.map(id),
            address: std::net::SocketAddr::from(([127, 0, 0, 1], 7000 + u16::from(n))),
            public_key: NodeKey::from_seed([n; 32]).public(),
        };
        Topology::from_nodes(
            1,
            vec![
                node("000000", "全国", None, 1),
                node("440000", "广东省", Some("000000"), 2),
                node("445200", "揭阳市", Some("440000"), 3),
                node("445202", "榕城区", Some("445200"), 4),
                node("445203", "揭东区", Some("445200"), 5),
                node("445222", "揭西县", Some("445200"), 6),
                node("445281", "普宁市", Some("445200"), 7),
            ],
        )
        .unwrap()
    }

    fn entry(reporter: &str, state: State) -> Entry {
        Entry {
            reporter: id(reporter),
            category: "water_fee".into(),
            period: "2026-05".into(),
            due_ms: 100,
            arrived_ms: (state != State::Missing).then_some(50),
            state,
            late_days: (state == State::Late).then_some(2),
            missing: state == State::Missing,
            incomplete: Vec::new(),
            concealment: None,
            manifest_revision: None,
            nil: false,
            records_delivered: 0,
            records_declared: None,
            allocation: None,
        }
    }

    /// The city covering 榕城 and 揭东 is missing, 普宁 (no line) is late, 揭西 is on time.
    fn entries() -> Vec<Entry> {
        let mut city = entry("445200", State::Missing);
        city.allocation = Some(Allocation {
            data_source: "揭阳市水务集团有限公司".into(),
            responsible: "揭阳市发展改革局".into(),
            contact: Some("信用科 0663-8xxxxxx, \"王工\"".into()),
            covers: vec![id("445202"), id("445203")],
        });
        let mut on_time = entry("445222", State::OnTime);
        on_time.allocation = Some(Allocation {
            data_source: "揭西县各供水单位".into(),
            responsible: "揭西县发展改革局".into(),
            contact: None,
            covers: Vec::new(),
        });
        vec![city, on_time, entry("445281", State::Late)]
    }

    #[test]
    fn the_table_says_whom_to_call_beside_every_flagged_report() {
        let text = table(&entries(), &jieyang(), "report");
        let behind = text.split("behind the rates:\n").nth(1).expect(&text);
        // Words only: the columns' padding is not the point here.
        let lines: Vec<String> = behind
            .lines()
            .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(
            lines,
            [
                "漏报 missing 445200 water_fee 2026-05 nothing arrived by the deadline",
                "whom to call: 揭阳市发展改革局 信用科 0663-8xxxxxx, \"王工\"; data source 揭阳市水务集团有限公司; reports for 445202 榕城区, 445203 揭东区",
                "迟报 late 445281 water_fee 2026-05 2 day(s) after the deadline",
                "whom to call: the platform of 445281 普宁市 (no line in the allocation table of water_fee)",
            ],
            "{text}"
        );
        assert!(
            !text.contains("揭西县发展改革局"),
            "on time: nobody to call"
        );
    }

    #[test]
    fn json_and_csv_carry_the_allocation() {
        let entries = entries();
        let value = json(&entries, &jieyang());
        let city = &value["entries"][0]["allocation"];
        assert_eq!(city["responsible"], "揭阳市发展改革局");
        assert_eq!(city["data_source"], "揭阳市水务集团有限公司");
        assert_eq!(city["contact"], "信用科 0663-8xxxxxx, \"王工\"");
        assert_eq!(city["covers"], json!(["445202", "445203"]));
        assert_eq!(value["entries"][2]["allocation"], Value::Null);
        let behind = value["behind"].as_array().unwrap();
        assert_eq!(behind.len(), 2);
        assert!(
            behind[0]["whom_to_call"]
                .as_str()
                .unwrap()
                .starts_with("揭阳市发展改革局 信用科 0663-8xxxxxx"),
            "{value}"
        );

        let text = csv(&entries);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].ends_with(",data_source,responsible,contact,covers"),
            "{text}"
        );
        assert!(
            lines[1].ends_with(
                ",\"揭阳市水务集团有限公司\",\"揭阳市发展改革局\",\"信用科 0663-8xxxxxx, \"\"王工\"\"\",445202 445203"
            ),
            "{text}"
        );
        assert!(lines[3].ends_with(",\"\",\"\",\"\","), "{text}");
    }
}
