//! 工作通报 end to end, with real processes on 127.0.0.1 (national platform, province, one city,
//! a county that reports late, a county that never reports, a county on a legacy direct
//! link): `credit-node progress send` at the province signs the progress report with the
//! operators' figures, it travels to the national platform like a batch, and `credit-node
//! progress` there shows every local platform with its path, the counts behind the three
//! rates and the figures. A county cannot send one, and a bad figures file is refused with its
//! line and field.
//!
//! The period is long past, so whatever day the test runs the reporting county is late and
//! the silent one missing.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use cluster::{Cluster, wait_until};
use protocol::{NodeId, Period, Registry};
use serde_json::Value;
use topology::LegacyLink;

const TIMEOUT: Duration = Duration::from_secs(90);
const PERIOD: &str = "2025-01";

fn id(text: &str) -> NodeId {
    NodeId::parse(text).unwrap()
}

/// Runs the binary with `args`.
fn credit_node(args: &[&str]) -> Output {
    Command::new(credit_e2e::binary())
        .args(args)
        .output()
        .expect("run credit-node")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn dir(cluster: &Cluster, node: NodeId) -> String {
    cluster.member(node).dir.display().to_string()
}

/// `credit-node progress --format json` at `node`.
fn progress_json(cluster: &Cluster, node: NodeId) -> anyhow::Result<Value> {
    let output = credit_node(&[
        "progress",
        "--dir",
        &dir(cluster, node),
        "--period",
        PERIOD,
        "--format",
        "json",
    ]);
    anyhow::ensure!(output.status.success(), "{}", text(&output.stderr));
    Ok(serde_json::from_slice(&output.stdout)?)
}

fn write(path: &Path, contents: &str) -> String {
    std::fs::write(path, contents).unwrap();
    path.display().to_string()
}

#[test]
fn a_provinces_progress_report_travels_to_the_national_platform_and_reads_there() {
    let root = tempfile::tempdir().unwrap();
    let (national, province, city) = (id("000000"), id("440000"), id("445200"));
    let (late, silent, legacy) = (id("445202"), id("445222"), id("445281"));
    let mut cluster = Cluster::init(
        &credit_e2e::binary(),
        root.path(),
        &[
            ("000000", "全国中小企业融资综合信用服务平台", None),
            ("440000", "广东省", Some("000000")),
            ("445200", "揭阳市", Some("440000")),
            ("445202", "榕城区", Some("445200")),
            ("445222", "揭西县", Some("445200")),
            ("445281", "普宁市", None),
        ],
    )
    .unwrap();
    cluster.legacy_links.insert(legacy, LegacyLink::new(legacy));
    cluster.schedules.push(topology::Schedule::new(
        protocol::Category::parse("water_fee").unwrap(),
        topology::Cadence::Monthly,
        10,
        Vec::new(),
    ));
    cluster.write_topology().unwrap();
    // The silent county and the legacy county stay down: neither sends anything here.
    for node in [national, province, city, late] {
        cluster.start(node).unwrap();
    }

    // One county reports its water fees (long after the deadline) and closes the period.
    let schema = Registry::builtin().by_name("water_fee").unwrap();
    let file = sample::sample_csv(schema, late, Period::parse(PERIOD).unwrap(), 40, 0, 7);
    let csv = root.path().join("water.csv");
    std::fs::write(&csv, &file.text).unwrap();
    let submitted = cluster.submit(late, &csv, "water_fee", PERIOD, 50).unwrap();
    let mut expected: Vec<String> = submitted["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect();
    let closed = credit_node(&[
        "close-period",
        "--dir",
        &dir(&cluster, late),
        "--category",
        "water_fee",
        "--period",
        PERIOD,
        "--declared",
        "40",
    ]);
    assert!(closed.status.success(), "{}", text(&closed.stderr));
    let manifest = text(&closed.stdout)
        .split_whitespace()
        .find(|w| w.len() == 64)
        .expect("the manifest id")
        .to_owned();
    expected.push(manifest);
    wait_until("the province to hold the county's report", TIMEOUT, || {
        let held = cluster.batches(province)?;
        let ids: Vec<&str> = held["batches"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|b| b["id"].as_str())
            .collect();
        Ok(expected.iter().all(|e| ids.contains(&e.as_str())))
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.log(province)));

    // A bad figures file is refused with its file, line and field; nothing is sent.
    let bad = write(
        &root.path().join("bad-figures.toml"),
        "registered_enterprises = 120345\nfinancial_institution = 87\nfinancing_loans = 4321\nfinancing_amount_wan_yuan = 76.5\n",
    );
    let refused = credit_node(&[
        "progress",
        "send",
        "--dir",
        &dir(&cluster, province),
        "--period",
        PERIOD,
        "--figures",
        &bad,
    ]);
    assert_eq!(refused.status.code(), Some(2));
    let error = text(&refused.stderr);
    assert!(
        error.contains(&format!("{bad}:2:1: financial_institution: unknown key")),
        "{error}"
    );
    assert!(
        error.contains(&format!("{bad}:4:29: financing_amount_wan_yuan")),
        "{error}"
    );

    // A county may not send one.
    let figures = write(
        &root.path().join("figures.toml"),
        "registered_enterprises = 120345\nfinancial_institutions = 87\nfinancing_loans = 4321\nfinancing_amount_wan_yuan = 765432\nnotes = \"揭阳市新接入三家农商行\"\n",
    );
    let refused = credit_node(&[
        "progress",
        "send",
        "--dir",
        &dir(&cluster, late),
        "--period",
        PERIOD,
        "--figures",
        &figures,
    ]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        text(&refused.stderr).contains("only a provincial node makes progress reports"),
        "{}",
        text(&refused.stderr)
    );

    // The province sends it; the command returns once it is durable.
    let sent = credit_node(&[
        "progress",
        "send",
        "--dir",
        &dir(&cluster, province),
        "--period",
        PERIOD,
        "--figures",
        &figures,
    ]);
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    let said = text(&sent.stdout);
    assert!(said.contains("signed, durable and queued up"), "{said}");
    let report_id = said
        .split_whitespace()
        .find(|w| w.len() == 64)
        .expect("the report id")
        .trim_end_matches(':')
        .to_owned();

    // It reaches the national platform, which lists it.
    let mut listed = Value::Null;
    wait_until(
        "the national platform to list the progress report",
        TIMEOUT,
        || {
            listed = progress_json(&cluster, national)?;
            Ok(listed["reports"].as_array().is_some_and(|r| r.len() == 1))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.log(national)));
    let report = &listed["reports"][0];
    assert_eq!(report["id"], report_id.as_str(), "{report}");
    assert_eq!(report["province"], "440000");
    assert_eq!(report["name"], "广东省");
    assert_eq!(report["period"], PERIOD);
    assert_eq!(report["revision"], 1);
    assert!(report["national_receipt_ms"].is_u64(), "{report}");
    assert_eq!(report["figures"]["registered_enterprises"], 120_345);
    assert_eq!(report["figures"]["financial_institutions"], 87);
    assert_eq!(report["figures"]["financing_loans"], 4_321);
    assert_eq!(report["figures"]["financing_amount_wan_yuan"], 765_432);
    assert_eq!(report["figures"]["notes"], "揭阳市新接入三家农商行");
    let platform = |node: NodeId| -> &Value {
        report["platforms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["node"] == node.to_string())
            .unwrap_or_else(|| panic!("{node} not listed: {report}"))
    };
    assert_eq!(report["platforms"].as_array().unwrap().len(), 4);
    assert_eq!(
        platform(city)["connected"],
        true,
        "its link to the province is up"
    );
    assert_eq!(platform(city)["path"]["kind"], "hierarchy");
    let reporting = platform(late);
    assert_eq!(reporting["connected"], true);
    assert_eq!(reporting["categories"][0]["category"], "water_fee");
    assert_eq!(reporting["categories"][0]["expected"], 1);
    assert_eq!(reporting["categories"][0]["late"], 1);
    assert_eq!(reporting["categories"][0]["records_delivered"], 40);
    assert_eq!(platform(silent)["connected"], false);
    assert_eq!(platform(silent)["categories"][0]["missing"], 1);
    assert_eq!(platform(legacy)["path"]["kind"], "legacy");
    assert_eq!(platform(legacy)["path"]["phase"], "direct");
    assert_eq!(report["total"]["expected"], 2);
    assert_eq!(report["total"]["late"], 1);
    assert_eq!(report["total"]["missing"], 1);
    assert_eq!(report["total"]["concealed"], 0);

    // The table an operator reads at the national platform.
    let table = credit_node(&["progress", "--dir", &dir(&cluster, national)]);
    assert!(table.status.success(), "{}", text(&table.stderr));
    let table = text(&table.stdout);
    for expected in [
        "440000 广东省 — period 2025-01, revision 1",
        "registered enterprises 120345 · financial institutions 87 · financing supported: 4321 loans, 765432 万元",
        "legacy link, direct (not migrating)",
        "1/2 50.0%",
    ] {
        assert!(table.contains(expected), "{expected:?} not in:\n{table}");
    }

    // The province sees the national platform's receipt come back.
    wait_until(
        "the province to hold the national receipt of its report",
        TIMEOUT,
        || Ok(progress_json(&cluster, province)?["reports"][0]["national_receipt_ms"].is_u64()),
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.log(province)));
}
