//! 对账 end to end, with real processes on 127.0.0.1 (province, one city, three counties):
//! the province's `report` shows a county on time, one late, one that never reports gas fees
//! and sends fewer water-fee records than it declared, with the right three rates; a batch
//! deleted from the city's store comes back by reconciliation, and a receipt deleted from a
//! county's store is relayed to it again.
//!
//! Arrival is dated by the city's clock (the counties' first parent). The test moves the
//! city's wall clock with `CREDIT_NODE_CLOCK_OFFSET_MS` so that one county's reports arrive
//! before the deadline and another's after it, whatever day the test runs.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cluster::{Cluster, wait_until};
use node::api::{ApiRequest, call};
use node::core::ledger::due_ms;
use node::store::Store;
use protocol::schema::Cadence;
use protocol::{BatchId, NodeId, Period, Registry};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(90);
const DAY_MS: i64 = 86_400_000;
const PERIOD: &str = "2026-11";

fn id(text: &str) -> NodeId {
    NodeId::parse(text).unwrap()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Submits a sample export; returns the batch ids.
fn submit(
    cluster: &Cluster,
    county: NodeId,
    category: &str,
    rows: usize,
    bad: usize,
) -> Vec<String> {
    let schema = Registry::builtin().by_name(category).unwrap();
    let period = Period::parse(PERIOD).unwrap();
    let file = sample::sample_csv(schema, county, period, rows, bad, u64::from(county.code()));
    let path = cluster.root().join(format!("{county}-{category}.csv"));
    std::fs::write(&path, &file.text).unwrap();
    let report = cluster.submit(county, &path, category, PERIOD, 50).unwrap();
    assert_eq!(report["refused"].as_array().unwrap().len(), bad, "{report}");
    report["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Closes the period at `county`; returns the manifest id.
fn close(cluster: &Cluster, county: NodeId, category: &str, declared: Option<u64>) -> String {
    let value = call(
        &cluster.member(county).dir,
        &ApiRequest::ClosePeriod {
            category: category.into(),
            period: PERIOD.into(),
            declared,
        },
    )
    .unwrap();
    value["manifest"].as_str().unwrap().to_owned()
}

fn held(cluster: &Cluster, node: NodeId) -> anyhow::Result<BTreeSet<String>> {
    let value = cluster.batches(node)?;
    Ok(value["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect())
}

fn wait_held(cluster: &Cluster, node: NodeId, ids: &BTreeSet<String>, what: &str) {
    wait_until(what, TIMEOUT, || Ok(held(cluster, node)?.is_superset(ids)))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.log(node)));
}

fn batch_id(hex: &str) -> BatchId {
    BatchId::parse_hex(hex).unwrap()
}

#[test]
fn the_report_shows_late_missing_and_short_reports_and_reconciliation_repairs_the_rest() {
    let root = tempfile::tempdir().unwrap();
    let (province, city) = (id("440000"), id("445200"));
    let (on_time, late, short) = (id("445202"), id("445222"), id("445224"));
    let mut cluster = Cluster::init(
        &credit_e2e::binary(),
        root.path(),
        &[
            ("000000", "全国中小企业融资综合信用服务平台", None),
            ("440000", "广东省", Some("000000")),
            ("445200", "揭阳市", Some("440000")),
            ("445202", "榕城区", Some("445200")),
            ("445222", "揭西县", Some("445200")),
            ("445224", "惠来县", Some("445200")),
        ],
    )
    .unwrap();
    for category in ["water_fee", "gas_fee"] {
        let mut schedule = topology::Schedule::new(
            protocol::Category::parse(category).unwrap(),
            topology::Cadence::Monthly,
            10,
            Vec::new(),
        );
        // The task allocation table names whom to call about 惠来's reports.
        schedule.allocation.push(topology::Allocation {
            reporter: short,
            covers: Vec::new(),
            data_source: "惠来县各供水、供气单位".into(),
            responsible: "惠来县发展改革局".into(),
            contact: Some("0663-6xxxxxx".into()),
        });
        cluster.schedules.push(schedule);
    }
    cluster.write_topology().unwrap();

    // The city's clock three days before the deadline, then two days after it; the
    // province's after it, so that a report never sent counts as missing.
    let due = due_ms(Period::parse(PERIOD).unwrap(), Cadence::Monthly, 10) as i64;
    let offset = |at: i64| at - now_ms();
    cluster.members.get_mut(&province).unwrap().clock_offset_ms = Some(offset(due + 5 * DAY_MS));
    cluster.members.get_mut(&city).unwrap().clock_offset_ms = Some(offset(due - 3 * DAY_MS));
    // The national platform stays down: nothing here needs it.
    for node in [province, city, on_time, late, short] {
        cluster.start(node).unwrap();
    }

    // Before the deadline: one county reports both categories in full; another sends water
    // fees short of its declared total and never reports gas fees.
    let mut expected = BTreeSet::new();
    let water_on_time = submit(&cluster, on_time, "water_fee", 120, 0);
    expected.extend(water_on_time.iter().cloned());
    expected.extend(submit(&cluster, on_time, "gas_fee", 60, 0));
    expected.insert(close(&cluster, on_time, "water_fee", Some(120)));
    expected.insert(close(&cluster, on_time, "gas_fee", Some(60)));
    expected.extend(submit(&cluster, short, "water_fee", 100, 4));
    expected.insert(close(&cluster, short, "water_fee", Some(100)));
    wait_held(
        &cluster,
        city,
        &expected,
        "the city to hold the on-time reports",
    );

    // After the deadline (by the city's clock): the third county reports both, late.
    cluster.stop(city).unwrap();
    cluster.members.get_mut(&city).unwrap().clock_offset_ms = Some(offset(due + 2 * DAY_MS));
    cluster.start(city).unwrap();
    expected.extend(submit(&cluster, late, "water_fee", 80, 0));
    expected.extend(submit(&cluster, late, "gas_fee", 40, 0));
    expected.insert(close(&cluster, late, "water_fee", None));
    expected.insert(close(&cluster, late, "gas_fee", None));
    wait_held(
        &cluster,
        province,
        &expected,
        "the province to hold every report",
    );

    let report = call(
        &cluster.member(province).dir,
        &ApiRequest::Report {
            period: PERIOD.into(),
            category: None,
            format: "json".into(),
        },
    )
    .unwrap();
    let state = |reporter: NodeId, category: &str| -> String {
        report["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["reporter"] == reporter.to_string() && e["category"] == category)
            .unwrap_or_else(|| panic!("no entry for {reporter} {category}: {report}"))["state"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(state(on_time, "water_fee"), "on_time", "{report}");
    assert_eq!(state(on_time, "gas_fee"), "on_time");
    assert_eq!(state(late, "water_fee"), "late");
    assert_eq!(state(late, "gas_fee"), "late");
    assert_eq!(state(short, "water_fee"), "concealment_suspected");
    assert_eq!(state(short, "gas_fee"), "missing");
    let total: &Value = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["level"] == "total")
        .unwrap();
    assert_eq!(total["counts"]["expected"], 6, "{total}");
    assert_eq!(total["counts"]["late"], 2);
    assert_eq!(total["counts"]["missing"], 1);
    assert_eq!(total["counts"]["concealed"], 1);
    assert!((total["late_rate"].as_f64().unwrap() - 2.0 / 6.0).abs() < 1e-9);
    assert!((total["missing_rate"].as_f64().unwrap() - 1.0 / 6.0).abs() < 1e-9);
    assert!((total["concealment_rate"].as_f64().unwrap() - 1.0 / 6.0).abs() < 1e-9);
    // The table an operator reads names the reporters behind the rates.
    let table = call(
        &cluster.member(province).dir,
        &ApiRequest::Report {
            period: PERIOD.into(),
            category: None,
            format: "table".into(),
        },
    )
    .unwrap();
    let text = table["text"].as_str().unwrap();
    assert!(text.contains("2/6 33.3%"), "{text}");
    assert!(
        text.contains(&format!("{short} gas_fee {PERIOD}")),
        "{text}"
    );
    assert!(
        text.contains(
            "whom to call: 惠来县发展改革局 0663-6xxxxxx; data source 惠来县各供水、供气单位"
        ),
        "{text}"
    );

    // A batch deleted from the city's store comes back: the county re-offers it when
    // reconciliation shows the city lacks it.
    let lost = water_on_time[0].clone();
    cluster.stop(city).unwrap();
    {
        let store = Store::open(&cluster.member(city).dir.join("store")).unwrap();
        assert!(store.forget_batch(&batch_id(&lost)).unwrap());
    }
    cluster.start(city).unwrap();
    let one: BTreeSet<String> = [lost.clone()].into();
    wait_held(
        &cluster,
        city,
        &one,
        "reconciliation to restore the city's lost batch",
    );

    // A receipt deleted from a county's store is relayed to it again. Not the lost batch's:
    // the city, having received that one again, may still be relaying its receipts down.
    let settled = water_on_time[1].clone();
    let province_receipt = |cluster: &Cluster| -> anyhow::Result<bool> {
        let value = cluster.batches(on_time)?;
        Ok(value["batches"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["id"] == settled.as_str())
            .flat_map(|b| b["receipts"].as_array().cloned().unwrap_or_default())
            .any(|r| r["receiver"] == province.to_string()))
    };
    wait_until("the county to hold the province's receipt", TIMEOUT, || {
        province_receipt(&cluster)
    })
    .unwrap();
    cluster.stop(on_time).unwrap();
    {
        let store = Store::open(&cluster.member(on_time).dir.join("store")).unwrap();
        assert!(store.forget_receipt(&batch_id(&settled), province).unwrap());
        assert!(
            store
                .receipt(&batch_id(&settled), province)
                .unwrap()
                .is_none(),
            "the receipt was deleted"
        );
    }
    cluster.start(on_time).unwrap();
    // Receipts are compared on demand (and hourly): the operator asks for it.
    wait_until(
        "the county's uplink to come up and reconcile",
        TIMEOUT,
        || {
            Ok(call(
                &cluster.member(on_time).dir,
                &ApiRequest::Reconcile { peer: None },
            )
            .is_ok())
        },
    )
    .unwrap();
    wait_until(
        "reconciliation to relay the province's receipt again",
        TIMEOUT,
        || province_receipt(&cluster),
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.log(on_time)));
}
