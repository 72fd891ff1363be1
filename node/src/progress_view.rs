//! The `progress` command's view of the progress reports (工作通报) a node holds: per report
//! the operators' figures, every local platform with its path and connection, progress per
//! category, and the three rates, each as a count over expected reports (e.g. `1/4 25.0%`) so
//! a reader can check it by hand. As a table for a terminal, or as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use protocol::progress::{CategoryProgress, LegacyPhase, LocalPlatform, PlatformPath};
use protocol::{Category, NodeId};
use serde_json::{Value, json};
use topology::Topology;

use crate::core::progress::HeldProgress;

const DAY_MS: i64 = 86_400_000;
/// China Standard Time is UTC+8.
const CST_OFFSET_MS: i64 = 8 * 3_600_000;

/// Unix ms as `YYYY-MM-DD HH:MM` in China Standard Time.
pub fn china_time(ms: u64) -> String {
    let local = ms as i64 + CST_OFFSET_MS;
    let (days, in_day) = (local.div_euclid(DAY_MS), local.rem_euclid(DAY_MS));
    let (year, month, day) = civil_from_days(days);
    let minutes = in_day / 60_000;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}",
        minutes / 60,
        minutes % 60
    )
}

use topology::admission::civil_from_days;

fn percent(count: u32, of: u32) -> String {
    let rate = if of == 0 {
        0.0
    } else {
        f64::from(count) / f64::from(of)
    };
    format!("{count}/{of} {:.1}%", rate * 100.0)
}

fn ratio(count: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        count as f64 / of as f64
    }
}

/// Records delivered over declared, over the reports that declared (1 with none declared).
fn completeness(c: &CategoryProgress) -> f64 {
    if c.records_declared == 0 {
        1.0
    } else {
        ratio(c.records_delivered_of_declared, c.records_declared)
    }
}

fn path_text(platform: &LocalPlatform) -> String {
    match platform.path {
        PlatformPath::Hierarchy => match platform.parent {
            Some(parent) => format!("hierarchy (via {parent})"),
            None => "hierarchy".to_owned(),
        },
        PlatformPath::Legacy { via, phase } if via == platform.node => {
            format!("legacy link, {}", phase.as_str())
        }
        PlatformPath::Legacy { via, phase } => {
            format!("legacy link of {via}, {}", phase.as_str())
        }
    }
}

/// Per category over every platform, and the total.
fn by_category(held: &HeldProgress) -> (Vec<CategoryProgress>, CategoryProgress) {
    let mut categories: BTreeMap<Category, CategoryProgress> = BTreeMap::new();
    for platform in &held.report.platforms {
        for c in &platform.categories {
            categories
                .entry(c.category.clone())
                .or_insert_with(|| CategoryProgress::empty(c.category.clone()))
                .add(c);
        }
    }
    (categories.into_values().collect(), held.report.total())
}

fn platform_sum(platform: &LocalPlatform) -> CategoryProgress {
    let mut sum = CategoryProgress::empty(Category::progress_report());
    for c in &platform.categories {
        sum.add(c);
    }
    sum
}

fn province_name(topology: &Topology, province: NodeId) -> String {
    topology
        .node(province)
        .map_or_else(String::new, |n| n.name.clone())
}

const HEADER: [&str; 7] = [
    "expected",
    "on time",
    "late",
    "missing",
    "concealed",
    "pending",
    "records",
];

fn count_cells(c: &CategoryProgress) -> String {
    format!(
        "{:>8} {:>7} {:>5} {:>7} {:>9} {:>7} {:>9}",
        c.expected, c.on_time, c.late, c.missing, c.concealed, c.pending, c.records_delivered
    )
}

/// The reports as text for a terminal.
pub fn table(held: &[HeldProgress], topology: &Topology, me: NodeId) -> String {
    let mut out = String::new();
    if held.is_empty() {
        let _ = writeln!(
            out,
            "node {me} holds no progress reports (工作通报) for this selection. A province sends one with `credit-node progress send`; the national platform holds every province's."
        );
        return out;
    }
    let _ = writeln!(
        out,
        "工作通报 progress reports held by {me}: {} report(s), newest revision of each",
        held.len()
    );
    for h in held {
        let r = &h.report;
        let _ = writeln!(
            out,
            "\n{} {} — period {}, revision {}, report {}",
            r.origin,
            province_name(topology, r.origin),
            r.period,
            r.revision,
            h.id.short()
        );
        let _ = writeln!(
            out,
            "  made {} (China time, by the province's clock); received by the national platform: {}",
            china_time(r.made_at_ms),
            h.national_receipt_ms
                .map_or_else(|| "not yet".to_owned(), china_time)
        );
        let f = &r.figures;
        let _ = writeln!(
            out,
            "  registered enterprises {} · financial institutions {} · financing supported: {} loans, {} 万元",
            f.registered_enterprises,
            f.financial_institutions,
            f.financing_loans,
            f.financing_amount_wan_yuan
        );
        if let Some(notes) = &f.notes {
            let _ = writeln!(out, "  notes: {notes}");
        }
        let connected = r.platforms.iter().filter(|p| p.connected).count();
        let legacy = r
            .platforms
            .iter()
            .filter(|p| matches!(p.path, PlatformPath::Legacy { .. }))
            .count();
        let migrating = r
            .platforms
            .iter()
            .filter(|p| {
                matches!(p.path, PlatformPath::Legacy { phase, .. } if phase != LegacyPhase::Direct)
            })
            .count();
        let _ = writeln!(
            out,
            "  local platforms: {}, connected to the province {connected}, on a legacy link {legacy} (migrating {migrating})",
            r.platforms.len()
        );
        let _ = writeln!(
            out,
            "  {:<7} {:<12} {:<7} {:<52} {:<9} {:>8} {:>7} {:>5} {:>7} {:>9} {:>7} {:>9}",
            "node",
            "name",
            "role",
            "path",
            "connected",
            HEADER[0],
            HEADER[1],
            HEADER[2],
            HEADER[3],
            HEADER[4],
            HEADER[5],
            HEADER[6]
        );
        for p in &r.platforms {
            let _ = writeln!(
                out,
                "  {:<7} {:<12} {:<7} {:<52} {:<9} {}",
                p.node.to_string(),
                p.name,
                p.role.as_str(),
                path_text(p),
                if p.connected { "yes" } else { "no" },
                count_cells(&platform_sum(p))
            );
        }
        let (categories, total) = by_category(h);
        let _ = writeln!(
            out,
            "\n  {:<26} {:>8} {:>7} {:>5} {:>7} {:>9} {:>7} {:>9} {:>14} {:>14} {:>14} {:>12}",
            "category",
            HEADER[0],
            HEADER[1],
            HEADER[2],
            HEADER[3],
            HEADER[4],
            HEADER[5],
            HEADER[6],
            "瞒报率",
            "漏报率",
            "迟报率",
            "completeness"
        );
        for c in categories.iter().chain(std::iter::once(&total)) {
            let name = if c.category == Category::progress_report() {
                "total".to_owned()
            } else {
                c.category.to_string()
            };
            let _ = writeln!(
                out,
                "  {:<26} {} {:>14} {:>14} {:>14} {:>11.1}%",
                name,
                count_cells(c),
                percent(c.concealed, c.expected),
                percent(c.missing, c.expected),
                percent(c.late, c.expected),
                completeness(c) * 100.0
            );
        }
    }
    out
}

fn counts_json(c: &CategoryProgress) -> Value {
    json!({
        "expected": c.expected,
        "on_time": c.on_time,
        "late": c.late,
        "missing": c.missing,
        "incomplete": c.incomplete,
        "concealed": c.concealed,
        "pending": c.pending,
        "records_delivered": c.records_delivered,
        "records_declared": c.records_declared,
        "records_delivered_of_declared": c.records_delivered_of_declared,
    })
}

fn rates_json(c: &CategoryProgress) -> Value {
    let mut value = counts_json(c);
    value["concealment_rate"] = json!(ratio(c.concealed.into(), c.expected.into()));
    value["missing_rate"] = json!(ratio(c.missing.into(), c.expected.into()));
    value["late_rate"] = json!(ratio(c.late.into(), c.expected.into()));
    value["completeness"] = json!(completeness(c));
    value
}

/// The reports as JSON: everything each report holds, the per-category and total counts
/// (the rates beside them are for convenience; the counts are what was signed).
pub fn json(held: &[HeldProgress], topology: &Topology, me: NodeId) -> Value {
    let reports: Vec<Value> = held
        .iter()
        .map(|h| {
            let r = &h.report;
            let platforms: Vec<Value> = r
                .platforms
                .iter()
                .map(|p| {
                    let path = match p.path {
                        PlatformPath::Hierarchy => json!({"kind": "hierarchy"}),
                        PlatformPath::Legacy { via, phase } => json!({
                            "kind": "legacy",
                            "via": via.to_string(),
                            "phase": match phase {
                                LegacyPhase::Direct => "direct",
                                LegacyPhase::Establishing => "establishing",
                                LegacyPhase::NewPathCarrying => "new_path_carrying",
                            },
                        }),
                    };
                    let categories: Vec<Value> = p
                        .categories
                        .iter()
                        .map(|c| {
                            let mut value = counts_json(c);
                            value["category"] = json!(c.category.to_string());
                            value
                        })
                        .collect();
                    json!({
                        "node": p.node.to_string(),
                        "name": p.name,
                        "role": p.role.as_str(),
                        "parent": p.parent.map(|n| n.to_string()),
                        "path": path,
                        "connected": p.connected,
                        "categories": categories,
                    })
                })
                .collect();
            let (categories, total) = by_category(h);
            let categories: Vec<Value> = categories
                .iter()
                .map(|c| {
                    let mut value = rates_json(c);
                    value["category"] = json!(c.category.to_string());
                    value
                })
                .collect();
            json!({
                "id": h.id.to_hex(),
                "province": r.origin.to_string(),
                "name": province_name(topology, r.origin),
                "period": r.period.to_string(),
                "revision": r.revision,
                "made_at_ms": r.made_at_ms,
                "national_receipt_ms": h.national_receipt_ms,
                "figures": r.figures,
                "platforms": platforms,
                "categories": categories,
                "total": rates_json(&total),
            })
        })
        .collect();
    json!({"node": me.to_string(), "reports": reports})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn china_time_is_utc_plus_eight() {
        // 2026-04-10 16:00 UTC is midnight of the 11th in China.
        assert_eq!(china_time(1_775_836_800_000), "2026-04-11 00:00");
        assert_eq!(china_time(0), "1970-01-01 08:00");
        assert_eq!(civil_from_days(20_789), (2026, 12, 2));
        assert_eq!(civil_from_days(11_017), (2000, 3, 1));
    }
}
