//! The dashboard end to end, in a real headless Chromium: a province, two cities and three
//! counties as real processes on 127.0.0.1. One county reports water fees on time, one late,
//! one never; the province's page, rendered by Chromium, names every node, shows the late and
//! the missing county in the heat map, and shows a city's link down once the test stops that
//! city (and up before). A screenshot is saved as a test artifact
//! (`target/test-artifacts/dashboard.png`).
//!
//! Needs Debian's `chromium`. Without it the test says what is missing and passes, unless
//! `CREDIT_TEST_REQUIRE_CHROMIUM=1` (set by `.ci/run`, which installs it), when it fails.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cluster::{Cluster, wait_until};
use credit_e2e::http_get;
use node::api::{ApiRequest, call};
use node::core::ledger::due_ms;
use protocol::schema::Cadence;
use protocol::{NodeId, Period, Registry};

const TIMEOUT: Duration = Duration::from_secs(90);
const DAY_MS: i64 = 86_400_000;
const PERIOD: &str = "2026-11";
const REQUIRE: &str = "CREDIT_TEST_REQUIRE_CHROMIUM";

fn id(text: &str) -> NodeId {
    NodeId::parse(text).unwrap()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Whether `chromium` runs here; without it, fails under [`REQUIRE`] and otherwise says how to
/// install it.
fn chromium_present() -> bool {
    let found = Command::new("chromium")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        let message = "chromium not found: this test renders the dashboard in a real browser; \
                       install it with `apt-get install -y chromium` (Debian) to run it";
        assert!(
            std::env::var(REQUIRE).is_err(),
            "{message} ({REQUIRE} is set)"
        );
        eprintln!("SKIPPED: {message}");
    }
    found
}

/// Chromium, headless, with a profile of its own.
fn chromium(profile: &Path) -> Command {
    let mut command = Command::new("chromium");
    command.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-dev-shm-usage",
        "--virtual-time-budget=3000",
        "--window-size=1400,1800",
    ]);
    command.arg(format!("--user-data-dir={}", profile.display()));
    command
}

/// The page's DOM as Chromium rendered it.
fn dump_dom(profile: &Path, url: &str) -> String {
    let output = chromium(profile)
        .arg("--dump-dom")
        .arg(url)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The opening tag of the element of `dom` that carries `marker`, and what follows it up to
/// the end of its table row.
fn row<'a>(dom: &'a str, marker: &str) -> &'a str {
    let start = dom
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker} in the rendered page:\n{dom}"));
    let rest = &dom[start..];
    &rest[..rest.find("</tr>").unwrap_or(rest.len())]
}

/// The heat-map state the page shows for `reporter` in `period`.
fn heat_state(dom: &str, reporter: NodeId, period: &str) -> String {
    let row = row(dom, &format!("data-reporter=\"{reporter}\""));
    let cell = row
        .find(&format!("data-period=\"{period}\""))
        .map(|at| &row[at..])
        .unwrap_or_else(|| panic!("no cell for {period} in the row of {reporter}: {row}"));
    let state = cell
        .split("data-state=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or_else(|| panic!("cell without a state: {cell}"));
    state.to_owned()
}

/// The link state the tree shows for `node`.
fn link_state(dom: &str, node: NodeId) -> String {
    let row = row(dom, &format!("data-node=\"{node}\""));
    row.split("data-link=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or_else(|| panic!("tree row without a link state: {row}"))
        .to_owned()
}

fn submit(cluster: &Cluster, county: NodeId, rows: usize) -> Vec<String> {
    let schema = Registry::builtin().by_name("water_fee").unwrap();
    let period = Period::parse(PERIOD).unwrap();
    let file = sample::sample_csv(schema, county, period, rows, 0, u64::from(county.code()));
    let path = cluster.root().join(format!("{county}.csv"));
    std::fs::write(&path, &file.text).unwrap();
    let report = cluster
        .submit(county, &path, "water_fee", PERIOD, 50)
        .unwrap();
    let mut ids: Vec<String> = report["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect();
    let manifest = call(
        &cluster.member(county).dir,
        &ApiRequest::ClosePeriod {
            category: "water_fee".into(),
            period: PERIOD.into(),
            declared: Some(rows as u64),
        },
    )
    .unwrap();
    ids.push(manifest["manifest"].as_str().unwrap().to_owned());
    ids
}

fn wait_held(cluster: &Cluster, node: NodeId, ids: &BTreeSet<String>, what: &str) {
    wait_until(what, TIMEOUT, || {
        let held: BTreeSet<String> = cluster.batches(node)?["batches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["id"].as_str().unwrap().to_owned())
            .collect();
        Ok(held.is_superset(ids))
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.log(node)));
}

fn artifacts() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("test-artifacts")
}

#[test]
fn the_provinces_page_in_chromium_shows_every_node_late_and_missing_counties_and_a_link_down() {
    if !chromium_present() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let (province, jieyang, chaozhou) = (id("440000"), id("445200"), id("445100"));
    let (on_time, late, missing) = (id("445202"), id("445222"), id("445224"));
    let nodes = [
        ("000000", "全国中小企业融资综合信用服务平台", None),
        ("440000", "广东省", Some("000000")),
        ("445200", "揭阳市", Some("440000")),
        ("445100", "潮州市", Some("440000")),
        ("445102", "湘桥区", Some("445100")),
        ("445202", "榕城区", Some("445200")),
        ("445222", "揭西县", Some("445200")),
        ("445224", "惠来县", Some("445200")),
    ];
    let mut cluster = Cluster::init(&credit_e2e::binary(), root.path(), &nodes).unwrap();
    cluster.schedules.push(topology::Schedule::new(
        protocol::Category::parse("water_fee").unwrap(),
        topology::Cadence::Monthly,
        10,
        Vec::new(),
    ));
    cluster.write_topology().unwrap();

    // Arrival is dated by the city's clock: three days before the deadline for the county on
    // time, two days after it for the late one. The province's clock is past the deadline,
    // so a report never sent is missing.
    let due = due_ms(Period::parse(PERIOD).unwrap(), Cadence::Monthly, 10) as i64;
    let offset = |at: i64| at - now_ms();
    cluster.members.get_mut(&province).unwrap().clock_offset_ms = Some(offset(due + 5 * DAY_MS));
    cluster.members.get_mut(&jieyang).unwrap().clock_offset_ms = Some(offset(due - 3 * DAY_MS));
    // The national platform stays down: the province's uplink shows down, nothing needs it.
    for node in [province, jieyang, chaozhou, on_time, late, missing] {
        cluster.start(node).unwrap();
    }
    let mut expected: BTreeSet<String> = submit(&cluster, on_time, 40).into_iter().collect();
    wait_held(
        &cluster,
        jieyang,
        &expected,
        "the city to hold the on-time report",
    );
    cluster.stop(jieyang).unwrap();
    cluster.members.get_mut(&jieyang).unwrap().clock_offset_ms = Some(offset(due + 2 * DAY_MS));
    cluster.start(jieyang).unwrap();
    expected.extend(submit(&cluster, late, 30));
    wait_held(
        &cluster,
        province,
        &expected,
        "the province to hold both reports",
    );

    let address = cluster.http_address(province).unwrap();
    let url = format!("http://{address}/?category=water_fee&year=2026");
    let profile = tempfile::tempdir().unwrap();
    // Both cities are connected before one is stopped.
    wait_until(
        "both cities to be connected to the province",
        TIMEOUT,
        || {
            let status = cluster.status(province)?;
            Ok([jieyang, chaozhou].iter().all(|city| {
                status["links"].as_array().unwrap().iter().any(|l| {
                    l["peer"] == city.to_string()
                        && l["direction"] == "down"
                        && l["connected"] == true
                })
            }))
        },
    )
    .unwrap();
    let dom = dump_dom(profile.path(), &url);
    assert_eq!(link_state(&dom, chaozhou), "up", "{dom}");

    cluster.stop(chaozhou).unwrap();
    wait_until("the province to see 潮州市's link down", TIMEOUT, || {
        let status = cluster.status(province)?;
        Ok(status["links"].as_array().unwrap().iter().any(|l| {
            l["peer"] == chaozhou.to_string() && l["direction"] == "down" && l["connected"] == false
        }))
    })
    .unwrap();
    let dom = dump_dom(profile.path(), &url);
    for (node, name, _) in nodes {
        assert!(dom.contains(name), "the page does not name {node} {name}");
    }
    assert_eq!(link_state(&dom, chaozhou), "down", "{dom}");
    assert_eq!(link_state(&dom, jieyang), "up");
    assert_eq!(heat_state(&dom, on_time, PERIOD), "on_time");
    assert_eq!(heat_state(&dom, late, PERIOD), "late");
    assert_eq!(heat_state(&dom, missing, PERIOD), "missing");
    // A month whose deadline has not come (by the province's clock) is pending.
    assert_eq!(heat_state(&dom, missing, "2026-12"), "pending");

    // A cell opens the report: its batches and manifest, and the late days.
    let report = dump_dom(
        profile.path(),
        &format!("http://{address}/report?reporter={late}&category=water_fee&period={PERIOD}"),
    );
    assert!(report.contains("data-state=\"late\""), "{report}");
    assert!(report.contains("revision 1, names"), "{report}");

    // The JSON behind it is paged, and a bad query is refused with the reason.
    let response = http_get(
        &address,
        "/api/heatmap?category=water_fee&year=2026&offset=1&limit=2",
    )
    .unwrap();
    assert_eq!(response.status, 200, "{}", response.body);
    let heat: serde_json::Value = serde_json::from_str(&response.body).unwrap();
    assert_eq!(heat["reporters"], 4, "{heat}");
    assert_eq!(heat["rows"].as_array().unwrap().len(), 2, "{heat}");
    assert_eq!(heat["rows"][0]["cells"].as_array().unwrap().len(), 12);
    let refused = http_get(&address, "/api/heatmap?category=gas_fee").unwrap();
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(
        refused.body.contains("no schedule for category gas_fee"),
        "{}",
        refused.body
    );

    let artifacts = artifacts();
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let output = chromium(profile.path())
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        output.status.success() && shot.exists(),
        "no screenshot: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("screenshot: {}", shot.display());
}
