//! The data-quality loop end to end, with real processes on 127.0.0.1 (national platform,
//! province, city, county): the county submits a month of water fees in which five records
//! break audit rules and one row is refused; the city's findings reach the county as feedback;
//! a `correct` closes every item at the county and at the province, whose report shows the
//! time to fix and whose records show the corrected versions; a `withdraw` reaches the
//! national platform, which shows the record withdrawn with its reason.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cluster::{Cluster, wait_until};
use node::api::{ApiRequest, call};
use protocol::{NodeId, Period, Registry};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(90);
const PERIOD: &str = "2026-11";

fn id(text: &str) -> NodeId {
    NodeId::parse(text).unwrap()
}

fn feedback(cluster: &Cluster, node: NodeId, all: bool) -> anyhow::Result<Value> {
    Ok(call(
        &cluster.member(node).dir,
        &ApiRequest::Feedback {
            origin: None,
            category: Some("water_fee".into()),
            period: Some(PERIOD.into()),
            all,
            format: "json".into(),
        },
    )?)
}

fn items(value: &Value) -> Vec<(String, String)> {
    value["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["record_key"].as_str().unwrap().to_owned(),
                i["rule"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn records(cluster: &Cluster, node: NodeId, key: &str) -> anyhow::Result<Value> {
    Ok(call(
        &cluster.member(node).dir,
        &ApiRequest::Records {
            category: "water_fee".into(),
            period: PERIOD.into(),
            origin: None,
            key: Some(key.into()),
            format: "json".into(),
        },
    )?)
}

/// Runs the binary's `args` at `dir`; returns stdout (fails on a non-zero exit).
fn run(dir: &Path, args: &[&str]) -> String {
    let output = Command::new(credit_e2e::binary())
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "credit-node {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn write_csv(path: &Path, rows: &[Vec<String>]) {
    let mut writer = csv::Writer::from_path(path).unwrap();
    for row in rows {
        writer.write_record(row).unwrap();
    }
    writer.flush().unwrap();
}

#[test]
fn feedback_reaches_the_county_a_correction_closes_it_and_a_withdrawal_reaches_the_top() {
    let root = tempfile::tempdir().unwrap();
    let (national, province, city, county) =
        (id("000000"), id("440000"), id("445200"), id("445281"));
    let mut cluster =
        Cluster::create(&credit_e2e::binary(), root.path(), cluster::PUNING_CHAIN).unwrap();
    cluster.start_all().unwrap();

    // A month of 40 water-fee rows, one of them invalid (refused at its line), five made to
    // break audit rules: paid above billed (three), an amount far outside the usual range,
    // and a credit code that shows under a second name.
    let schema = Registry::builtin().by_name("water_fee").unwrap();
    let column = |name: &str| schema.field_index(name).unwrap();
    let sample = sample::sample_csv(schema, county, Period::parse(PERIOD).unwrap(), 40, 1, 5);
    let bad_line = sample.bad_rows[0].0 as usize;
    let mut rows: Vec<Vec<String>> = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(sample.text.as_bytes())
        .records()
        .map(|r| r.unwrap().iter().map(str::to_owned).collect())
        .collect();
    let good: Vec<usize> = (1..rows.len())
        .filter(|&i| i + 1 != bad_line && !rows[i][column("subject_uscc")].is_empty())
        .collect();
    let original = rows.clone();
    let (paid, billed) = (column("paid_amount"), column("billed_amount"));
    for &i in &good[..3] {
        rows[i][billed] = "100".into();
        rows[i][paid] = "150.5".into();
    }
    rows[good[3]][billed] = "9999999".into();
    rows[good[3]][paid] = "0".into();
    let (uscc, name) = (column("subject_uscc"), column("subject_name"));
    for &i in &good[5..7] {
        rows[i][uscc] = rows[good[4]][uscc].clone();
        rows[i][name] = rows[good[4]][name].clone();
    }
    rows[good[7]][uscc] = rows[good[4]][uscc].clone();
    rows[good[7]][name] = "揭阳市另一个名字有限公司".into();
    let flagged = [good[0], good[1], good[2], good[3], good[7]];
    let file = root.path().join("water.csv");
    write_csv(&file, &rows);
    let report = cluster
        .submit(county, &file, "water_fee", PERIOD, 100)
        .unwrap();
    let refused = report["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{report}");
    assert_eq!(refused[0]["line"], bad_line as u64, "{report}");
    let first_batch = report["batches"][0]["id"].as_str().unwrap().to_owned();

    // The city's findings reach the county: five open items, by record and rule.
    let expected_rules = BTreeSet::from([
        "not_greater".to_owned(),
        "usual_range".to_owned(),
        "same_name".to_owned(),
    ]);
    let mut at_county = Value::Null;
    wait_until("five feedback items at the county", TIMEOUT, || {
        at_county = feedback(&cluster, county, false)?;
        Ok(at_county["open"] == 5)
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.log(county)));
    let found = items(&at_county);
    assert_eq!(
        found
            .iter()
            .map(|(_, r)| r.clone())
            .collect::<BTreeSet<_>>(),
        expected_rules,
        "{at_county}"
    );
    assert!(
        at_county["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["reporter"] == city.to_string() && i["batch"] == first_batch.as_str()),
        "{at_county}"
    );
    // The province audits what it stores too: the same five items for its reporter.
    wait_until("five feedback items at the province", TIMEOUT, || {
        Ok(feedback(&cluster, province, false)?["open"] == 5)
    })
    .unwrap();
    // The CSV for the data-source unit names each record and rule.
    let csv_text = run(
        &cluster.member(county).dir,
        &["feedback", "--category", "water_fee", "--csv"],
    );
    assert_eq!(csv_text.lines().count(), 6, "{csv_text}");
    for (key, _) in &found {
        assert!(csv_text.contains(key.as_str()), "{csv_text}");
    }

    // The correction: the five rows as they should have been.
    let mut fixed = vec![original[0].clone()];
    for &i in &flagged {
        let mut row = rows[i].clone();
        row[billed] = original[i][billed].clone();
        row[paid] = original[i][billed].clone();
        row[name] = rows[good[4]][name].clone();
        fixed.push(row);
    }
    let fix_file = root.path().join("fixed.csv");
    write_csv(&fix_file, &fixed);
    let fix_file_text = fix_file.display().to_string();
    let corrected = run(
        &cluster.member(county).dir,
        &[
            "correct",
            &fix_file_text,
            "--category",
            "water_fee",
            "--period",
            PERIOD,
            "--json",
        ],
    );
    let corrected: Value = serde_json::from_str(&corrected).unwrap();
    let correction = corrected["correction"][0]["batch"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        corrected["correction"][0]["supersedes"],
        first_batch.as_str()
    );
    assert_eq!(corrected["correction"][0]["records"], 5);

    for node in [county, province] {
        wait_until("every item closed by the correction", TIMEOUT, || {
            let value = feedback(&cluster, node, true)?;
            Ok(value["open"] == 0 && value["closed"] == 5)
        })
        .unwrap_or_else(|e| panic!("{e:#} at {node}\n{}", cluster.log(node)));
        let value = feedback(&cluster, node, true).unwrap();
        for item in value["items"].as_array().unwrap() {
            assert_eq!(item["closed_by"], correction.as_str(), "{item}");
            assert_eq!(item["closed_how"], "corrected", "{item}");
        }
    }
    // The province's report: its reporter fixed five items, with a time to fix.
    let report = call(
        &cluster.member(province).dir,
        &ApiRequest::Report {
            period: PERIOD.into(),
            category: Some("water_fee".into()),
            format: "json".into(),
        },
    )
    .unwrap();
    let reporter = report["quality"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["level"] == "reporter" && row["node"] == county.to_string())
        .unwrap_or_else(|| panic!("no quality row for the county: {report}"))
        .clone();
    assert_eq!(reporter["fixed"], 5, "{report}");
    assert_eq!(reporter["open"], 0, "{report}");
    assert!(reporter["time_to_fix_median_ms"].is_u64(), "{report}");
    assert!(reporter["time_to_fix_p90_ms"].is_u64(), "{report}");
    // ... and the corrected record, the original kept as history.
    let key = &found
        .iter()
        .find(|(_, rule)| rule == "not_greater")
        .unwrap()
        .0;
    let shown = records(&cluster, province, key).unwrap();
    let record = &shown["records"][0];
    assert_eq!(record["batch"], correction.as_str(), "{shown}");
    assert_eq!(record["history"].as_array().unwrap().len(), 2, "{shown}");
    assert_eq!(
        record["fields"]["paid_amount"],
        record["fields"]["billed_amount"]
    );

    // A withdrawal (credit repair) of a record nobody flagged reaches the national platform.
    let all = call(
        &cluster.member(county).dir,
        &ApiRequest::Records {
            category: "water_fee".into(),
            period: PERIOD.into(),
            origin: None,
            key: None,
            format: "json".into(),
        },
    )
    .unwrap();
    let flagged_keys: BTreeSet<&str> = found.iter().map(|(k, _)| k.as_str()).collect();
    let withdrawn_key = all["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .find(|k| !flagged_keys.contains(k))
        .unwrap()
        .to_owned();
    run(
        &cluster.member(county).dir,
        &[
            "withdraw",
            "--category",
            "water_fee",
            "--key",
            &withdrawn_key,
            "--reason",
            "repaired",
        ],
    );
    let mut at_national = Value::Null;
    wait_until("the withdrawal at the national platform", TIMEOUT, || {
        at_national = records(&cluster, national, &withdrawn_key)?;
        Ok(at_national["records"][0]["state"] == "withdrawn")
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.log(national)));
    let record = &at_national["records"][0];
    assert_eq!(record["reason"], "repaired", "{at_national}");
    assert!(record["withdrawn_at_ms"].is_u64(), "{at_national}");
    assert_eq!(at_national["current"], 0, "{at_national}");
    // The national platform's table says it too.
    let table = run(
        &cluster.member(national).dir,
        &[
            "records",
            "--category",
            "water_fee",
            "--period",
            PERIOD,
            "--key",
            &withdrawn_key,
        ],
    );
    assert!(table.contains("WITHDRAWN (repaired)"), "{table}");

    // The month's valid rows sent again as a new batch, not as a correction: the operator is
    // told at once that every record was published already, and how to correct instead.
    let again: Vec<Vec<String>> = original
        .iter()
        .enumerate()
        .filter(|(i, _)| i + 1 != bad_line)
        .map(|(_, row)| row.clone())
        .collect();
    let again_file = root.path().join("water-again.csv");
    write_csv(&again_file, &again);
    let said = run(
        &cluster.member(county).dir,
        &[
            "submit",
            again_file.to_str().unwrap(),
            "--category",
            "water_fee",
            "--period",
            PERIOD,
        ],
    );
    let records_again = again.len() - 1;
    assert!(
        said.contains(&format!(
            "warning: {records_again} record(s) of {} were published already",
            again_file.display()
        )) && said.contains("credit-node correct"),
        "{said}"
    );
    cluster.stop_all();
}
