//! `credit-node demo`: a Jieyang-shaped network on loopback, as real processes of this very
//! binary, with real QUIC and real sled stores in a temporary folder. It generates a month of
//! water and gas fee exports for each county (valid credit codes, a few bad rows), submits
//! them, shows batches moving up, and ends with the provincial node's verified tally per county
//! and category, and the rows refused at the counties. Nothing is left running afterwards.
//!
//! A module of the binary, not of the node library: no node runs it. Like `main.rs`, it is the
//! binary's edge and reports errors with `anyhow`.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context;
use cluster::{Cluster, wait_until};
use protocol::{NodeId, Period, Registry};

/// Jieyang's counties, from shared/data/guangdong-divisions.csv.
pub const JIEYANG_COUNTIES: &[(&str, &str)] = &[
    ("445202", "榕城区"),
    ("445203", "揭东区"),
    ("445222", "揭西县"),
    ("445224", "惠来县"),
    ("445281", "普宁市"),
];
pub const CATEGORIES: &[&str] = &["water_fee", "gas_fee"];
const ROWS_PER_FILE: usize = 3000;
const BAD_ROWS_PER_FILE: usize = 3;
const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// The Jieyang network: national, province, city, five counties.
pub fn jieyang_nodes() -> Vec<(&'static str, &'static str, Option<&'static str>)> {
    let mut nodes = vec![
        ("000000", "全国中小企业融资综合信用服务平台", None),
        ("440000", "广东省", Some("000000")),
        ("445200", "揭阳市", Some("440000")),
    ];
    nodes.extend(
        JIEYANG_COUNTIES
            .iter()
            .map(|(id, name)| (*id, *name, Some("445200"))),
    );
    nodes
}

/// Runs the demo; with `keep`, leaves the network running until Ctrl-C so its dashboards can
/// be opened.
pub async fn live_demo(out: &mut impl Write, keep: bool) -> anyhow::Result<()> {
    let binary = std::env::current_exe().context("finding this binary")?;
    let root = tempfile::Builder::new().prefix("credit-demo-").tempdir()?;
    tokio::task::block_in_place(|| run(out, &binary, root.path(), keep))
}

fn run(
    out: &mut impl Write,
    binary: &std::path::Path,
    root: &std::path::Path,
    keep: bool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let period = Period::parse("2022-05")?;
    writeln!(
        out,
        "credit network demo: Jieyang (揭阳市), period {period}, in {}",
        root.display()
    )?;
    let mut cluster = Cluster::init(binary, root, &jieyang_nodes())?;
    // Both categories are owed monthly by the 10th: the dashboard's heat map shows them.
    for category in CATEGORIES {
        cluster.schedules.push(topology::Schedule::new(
            protocol::Category::parse(category)?,
            topology::Cadence::Monthly,
            10,
            Vec::new(),
        ));
    }
    cluster.write_topology()?;
    for member in cluster.members.values() {
        writeln!(
            out,
            "  node {} {:<10} {:<8} {}  key {}…",
            member.id,
            member.name,
            member.role,
            member.address,
            &member.public_key.to_hex()[..16]
        )?;
    }
    cluster.start_all()?;
    writeln!(
        out,
        "all {} nodes running (real QUIC with pinned keys, sled stores)",
        cluster.members.len()
    )?;

    let province = NodeId::parse("440000")?;
    let dashboard = format!(
        "http://{}/?category={}&year={}",
        cluster.http_address(province)?,
        CATEGORIES[0],
        &period.to_string()[..4]
    );
    writeln!(
        out,
        "the province's dashboard: {dashboard}{}",
        if keep {
            ""
        } else {
            "  (open it while the demo runs, or run `credit-node demo --keep`)"
        }
    )?;
    let mut expected: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut batch_ids = Vec::new();
    let mut refused_rows = Vec::new();
    for (code, name) in JIEYANG_COUNTIES {
        let county = NodeId::parse(code)?;
        for category in CATEGORIES {
            let schema = Registry::builtin()
                .by_name(category)
                .expect("built-in category");
            let file = sample::sample_csv(
                schema,
                county,
                period,
                ROWS_PER_FILE,
                BAD_ROWS_PER_FILE,
                u64::from(county.code()),
            );
            let path = root.join(format!("{code}-{category}-{period}.csv"));
            std::fs::write(&path, &file.text)?;
            let report = cluster.submit(county, &path, category, &period.to_string(), 1000)?;
            let records = report["records"].as_u64().unwrap_or(0);
            *expected
                .entry((code.to_string(), category.to_string()))
                .or_default() += records;
            for batch in report["batches"].as_array().into_iter().flatten() {
                batch_ids.push(batch["id"].as_str().unwrap_or_default().to_owned());
            }
            for row in report["refused"].as_array().into_iter().flatten() {
                refused_rows.push(format!(
                    "{code} {name} {category} line {}: {} ({}) = {:?}: {}",
                    row["line"],
                    row["field"].as_str().unwrap_or("?"),
                    row["label"].as_str().unwrap_or(""),
                    row["value"].as_str().unwrap_or(""),
                    row["message"].as_str().unwrap_or("")
                ));
            }
            writeln!(
                out,
                "  {code} {name} submitted {category}: {records} records in {} batches, {} rows refused",
                report["batches"].as_array().map_or(0, Vec::len),
                report["refused"].as_array().map_or(0, Vec::len)
            )?;
        }
    }

    let total = batch_ids.len();
    let mut last_line = String::new();
    wait_until(
        "every batch to reach the province and the national platform",
        SYNC_TIMEOUT,
        || {
            let at = |id: &str| -> anyhow::Result<usize> {
                let status = cluster.status(NodeId::parse(id)?)?;
                Ok(status["held"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|h| h["batches"].as_u64().unwrap_or(0) as usize)
                    .sum())
            };
            let (city, province_count, national) = (at("445200")?, at("440000")?, at("000000")?);
            // The city and province also hold only batches from below, so counts compare directly.
            let line = format!(
                "  moving up: city {city}/{total}  province {province_count}/{total}  national {national}/{total}"
            );
            if line != last_line {
                let _ = writeln!(out, "{line}");
                last_line = line;
            }
            Ok(province_count >= total && national >= total)
        },
    )?;

    let batches = cluster.batches(province)?;
    let mut tally: BTreeMap<(String, String), (u64, u64, bool)> = BTreeMap::new();
    for batch in batches["batches"].as_array().into_iter().flatten() {
        let key = (
            batch["origin"].as_str().unwrap_or("?").to_owned(),
            batch["category"].as_str().unwrap_or("?").to_owned(),
        );
        let slot = tally.entry(key).or_insert((0, 0, true));
        slot.0 += 1;
        slot.1 += batch["records"].as_u64().unwrap_or(0);
        slot.2 &= batch["signature_valid"] == true;
    }
    writeln!(
        out,
        "\nprovince 440000 广东省, verified tally (origin signatures re-checked at the province):"
    )?;
    writeln!(
        out,
        "  {:<16} {:<10} {:>8} {:>9}  check",
        "county", "category", "batches", "records"
    )?;
    let mut all_good = true;
    for ((origin, category), (count, records, valid)) in &tally {
        let name = JIEYANG_COUNTIES
            .iter()
            .find(|(c, _)| c == origin)
            .map_or("", |(_, n)| n);
        let want = expected
            .get(&(origin.clone(), category.clone()))
            .copied()
            .unwrap_or(0);
        let ok = *valid && *records == want;
        all_good &= ok;
        writeln!(
            out,
            "  {origin} {name:<9} {category:<10} {count:>8} {records:>9}  {}",
            if ok {
                "signatures valid, all records present"
            } else {
                "MISMATCH"
            }
        )?;
    }
    writeln!(
        out,
        "\nrows refused at the counties (never sent; each names its line, field and reason):"
    )?;
    for row in &refused_rows {
        writeln!(out, "  {row}")?;
    }
    if keep {
        writeln!(
            out,
            "\nthe network keeps running: open {dashboard}\n(every node serves its own dashboard: `credit-node status --dir {}/<id>` shows its address). Ctrl-C stops it.",
            root.display()
        )?;
        out.flush()?;
        tokio::runtime::Handle::current()
            .block_on(tokio::signal::ctrl_c())
            .context("waiting for Ctrl-C")?;
    }
    cluster.stop_all();
    writeln!(
        out,
        "\ndone in {:.1} s; all nodes stopped.",
        started.elapsed().as_secs_f64()
    )?;
    if !all_good {
        anyhow::bail!("the province's tally does not match what the counties submitted");
    }
    Ok(())
}
