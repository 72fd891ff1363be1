//! Human and JSON renderings of ingestion results, shared by `ingest`, `submit` and the demo.

use std::io::{self, Write};

use crate::ingest::{IngestReport, RowProblems};

/// Prints the batches, then every refused row with its line, field and reason.
pub fn write_ingest(out: &mut impl Write, name: &str, report: &IngestReport) -> io::Result<()> {
    writeln!(
        out,
        "{name}: {} rows, {} records in {} batch(es), {} rows refused, {} with warnings",
        report.rows,
        report.records,
        report.batches.len(),
        report.rejected.len(),
        report.warnings.len()
    )?;
    for batch in &report.batches {
        writeln!(
            out,
            "  batch {}  {} records  {} bytes",
            batch.id, batch.records, batch.bytes
        )?;
    }
    if !report.ignored_columns.is_empty() {
        writeln!(
            out,
            "  ignored columns (not fields of this category): {}",
            report.ignored_columns.join(", ")
        )?;
    }
    if !report.left_out_columns.is_empty() {
        writeln!(
            out,
            "  left out (the topology's minimum-necessary profile keeps them from travelling upstream): {}",
            report.left_out_columns.join(", ")
        )?;
    }
    write_rows(out, "refused", &report.rejected)?;
    write_rows(out, "warning", &report.warnings)
}

fn write_rows(out: &mut impl Write, what: &str, rows: &[RowProblems]) -> io::Result<()> {
    for row in rows {
        for problem in &row.problems {
            writeln!(
                out,
                "  {what} line {}: {} ({}) = {:?}: {} [{}]",
                row.line,
                problem.field,
                problem.label,
                problem.value,
                problem.message,
                problem.rule
            )?;
        }
    }
    Ok(())
}

pub fn rows_json(rows: &[RowProblems]) -> serde_json::Value {
    serde_json::Value::Array(
        rows.iter()
            .flat_map(|row| {
                row.problems.iter().map(move |p| {
                    serde_json::json!({
                        "line": row.line,
                        "field": p.field,
                        "label": p.label,
                        "value": p.value,
                        "rule": p.rule.as_str(),
                        "message": p.message,
                    })
                })
            })
            .collect(),
    )
}

pub fn ingest_json(report: &IngestReport) -> serde_json::Value {
    serde_json::json!({
        "rows": report.rows,
        "records": report.records,
        "batches": report.batches.iter().map(|b| serde_json::json!({
            "id": b.id.to_hex(),
            "bytes": b.bytes,
        })).collect::<Vec<_>>(),
        "refused": rows_json(&report.rejected),
        "warnings": rows_json(&report.warnings),
        "ignored_columns": report.ignored_columns,
        "left_out_columns": report.left_out_columns,
    })
}

/// The human form of `status`.
pub fn write_status(out: &mut impl Write, status: &serde_json::Value) -> io::Result<()> {
    writeln!(
        out,
        "node {} {} ({}), topology version {}",
        status["node"].as_str().unwrap_or("?"),
        status["name"].as_str().unwrap_or(""),
        status["role"].as_str().unwrap_or("?"),
        status["topology_version"]
    )?;
    writeln!(out, "links:")?;
    for link in status["links"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "  {:>4} {}  {}  outbox {}  in flight {}  sent {}  received {}{}",
            link["direction"].as_str().unwrap_or("?"),
            link["peer"].as_str().unwrap_or("?"),
            if link["connected"] == true {
                "connected"
            } else {
                "down"
            },
            link["outbox"],
            link["in_flight"],
            link["batches_sent"],
            link["batches_received"],
            link["last_error"]
                .as_str()
                .map(|e| format!("  last error: {e}"))
                .unwrap_or_default()
        )?;
    }
    writeln!(out, "held (origin, category, period: batches, records):")?;
    for held in status["held"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "  {} {:<28} {}: {} batch(es), {} records",
            held["origin"].as_str().unwrap_or("?"),
            held["category"].as_str().unwrap_or("?"),
            held["period"].as_str().unwrap_or("?"),
            held["batches"],
            held["records"]
        )?;
    }
    for refused in status["refused"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "refused by {}: batch {}: {}",
            refused["receiver"].as_str().unwrap_or("?"),
            refused["batch"].as_str().unwrap_or("?"),
            refused["reason"].as_str().unwrap_or("?")
        )?;
    }
    Ok(())
}

/// The human form of `batches`.
pub fn write_batches(out: &mut impl Write, batches: &serde_json::Value) -> io::Result<()> {
    for batch in batches["batches"].as_array().into_iter().flatten() {
        let chain: Vec<&str> = batch["receipts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["receiver"].as_str())
            .collect();
        writeln!(
            out,
            "{}  {} {} {}  {} records  signature {}  receipts: {}",
            &batch["id"].as_str().unwrap_or("?")
                [..16.min(batch["id"].as_str().unwrap_or("?").len())],
            batch["origin"].as_str().unwrap_or("?"),
            batch["category"].as_str().unwrap_or("?"),
            batch["period"].as_str().unwrap_or("?"),
            batch["records"],
            if batch["signature_valid"] == true {
                "valid"
            } else {
                "INVALID"
            },
            chain.join(" → ")
        )?;
    }
    Ok(())
}
