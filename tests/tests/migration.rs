//! "Establish before dismantling", carried out by real nodes: county 445281 starts with only a
//! legacy direct link to the national platform; the topology then adds city 445200 and
//! province 440000 with a migration entry, and while the county keeps submitting, it
//! establishes, verifies, cuts over and dismantles. A second run breaks the new path during
//! verify: the county returns to the legacy link by itself and loses nothing.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cluster::{Cluster, wait_until};
use protocol::{NodeId, Period, Registry};
use serde_json::Value;
use topology::LegacyLink;

const TIMEOUT: Duration = Duration::from_secs(90);

fn id(text: &str) -> NodeId {
    NodeId::parse(text).unwrap()
}

struct Net {
    cluster: Cluster,
    _root: tempfile::TempDir,
}

/// Version 1: the national platform and the county on its legacy link only; the city and
/// province exist (keys made) but are not in the topology yet.
fn legacy_network() -> Net {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::init(
        &credit_e2e::binary(),
        root.path(),
        &[
            ("000000", "全国中小企业融资综合信用服务平台", None),
            ("440000", "广东省", Some("000000")),
            ("445200", "揭阳市", Some("440000")),
            ("445281", "普宁市", None),
        ],
    )
    .unwrap();
    cluster.members.get_mut(&id("440000")).unwrap().in_topology = false;
    cluster.members.get_mut(&id("445200")).unwrap().in_topology = false;
    cluster.legacy_links.insert(
        id("445281"),
        LegacyLink {
            node: id("445281"),
            migrate: false,
            verify_window_s: 3,
            rollback_window_s: 3,
        },
    );
    cluster.write_topology().unwrap();
    cluster.start(id("000000")).unwrap();
    cluster.start(id("445281")).unwrap();
    Net {
        cluster,
        _root: root,
    }
}

/// Version 2: city and province join; the county gets the city as parent and migrates.
fn add_hierarchy_and_migrate(cluster: &mut Cluster, verify_window_s: u64, rollback_window_s: u64) {
    cluster.members.get_mut(&id("440000")).unwrap().in_topology = true;
    cluster.members.get_mut(&id("445200")).unwrap().in_topology = true;
    cluster.members.get_mut(&id("445281")).unwrap().parent = Some(id("445200"));
    cluster.legacy_links.insert(
        id("445281"),
        LegacyLink {
            node: id("445281"),
            migrate: true,
            verify_window_s,
            rollback_window_s,
        },
    );
    cluster.write_topology().unwrap();
    cluster.start(id("440000")).unwrap();
    cluster.start(id("445200")).unwrap();
    cluster.signal(id("000000"), "HUP").unwrap();
    cluster.signal(id("445281"), "HUP").unwrap();
}

/// Submits one small export at the county; returns (batch ids, records).
fn submit(cluster: &Cluster, n: u64) -> (Vec<String>, u64) {
    let county = id("445281");
    let schema = Registry::builtin().by_name("water_fee").unwrap();
    let file = sample::sample_csv(
        schema,
        county,
        Period::parse("2022-05").unwrap(),
        120,
        0,
        1000 + n,
    );
    let path = cluster.root().join(format!("water-{n}.csv"));
    std::fs::write(&path, &file.text).unwrap();
    let report = cluster
        .submit(county, &path, "water_fee", "2022-05", 60)
        .unwrap();
    let ids = report["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect();
    (ids, report["records"].as_u64().unwrap())
}

fn phase(cluster: &Cluster) -> anyhow::Result<String> {
    Ok(cluster.migration(id("445281"))?["phase"]
        .as_str()
        .unwrap_or("none")
        .to_owned())
}

/// Replays the county's audit trail: once a path was up, some path stayed up at every
/// recorded moment. Returns the migration phases in order.
fn check_never_without_a_path(audit: &Value) -> Vec<String> {
    let mut up: BTreeSet<String> = BTreeSet::new();
    let mut ever_up = false;
    let mut phases = Vec::new();
    for entry in audit["entries"].as_array().unwrap() {
        match entry["kind"].as_str().unwrap() {
            "path" => {
                let peer = entry["peer"].as_str().unwrap().to_owned();
                if entry["up"] == true {
                    up.insert(peer);
                    ever_up = true;
                } else {
                    up.remove(&peer);
                    assert!(
                        !ever_up || !up.is_empty(),
                        "entry {}: the county had no path at all after {peer} went down",
                        entry["seq"]
                    );
                }
            }
            "migration" => phases.push(entry["phase"].as_str().unwrap().to_owned()),
            _ => {}
        }
    }
    assert!(ever_up, "no path was ever recorded");
    phases
}

/// Every submitted batch is at the national platform exactly once, with all its records.
fn assert_national_holds_exactly(cluster: &Cluster, submitted: &BTreeSet<String>, records: u64) {
    wait_until("the national platform to hold every batch", TIMEOUT, || {
        let held: BTreeSet<String> = cluster.batches(id("000000"))?["batches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["id"].as_str().unwrap().to_owned())
            .collect();
        Ok(submitted.is_subset(&held))
    })
    .unwrap_or_else(|e| panic!("{e}\ncounty log:\n{}", cluster.log(id("445281"))));
    let batches = cluster.batches(id("000000")).unwrap();
    let list = batches["batches"].as_array().unwrap();
    let ids: Vec<&str> = list.iter().map(|b| b["id"].as_str().unwrap()).collect();
    let unique: BTreeSet<String> = ids.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(ids.len(), unique.len(), "one copy per batch id");
    assert_eq!(&unique, submitted);
    assert_eq!(
        list.iter()
            .map(|b| b["records"].as_u64().unwrap())
            .sum::<u64>(),
        records
    );
    assert!(list.iter().all(|b| b["signature_valid"] == true));
}

/// Submits a batch about every 400 ms from a second thread until `stop` is set.
fn keep_submitting<'a>(
    scope: &'a std::thread::Scope<'a, '_>,
    cluster: &'a Cluster,
    stop: &'a AtomicBool,
) -> std::thread::ScopedJoinHandle<'a, (Vec<String>, u64)> {
    scope.spawn(move || {
        let (mut ids, mut records) = (Vec::new(), 0);
        let mut n = 100;
        while !stop.load(Ordering::Relaxed) {
            let (more, count) = submit(cluster, n);
            ids.extend(more);
            records += count;
            n += 1;
            std::thread::park_timeout(Duration::from_millis(400));
        }
        (ids, records)
    })
}

#[test]
fn a_legacy_county_migrates_onto_the_hierarchy_without_ever_lacking_a_path() {
    let Net { mut cluster, _root } = legacy_network();
    let mut submitted: BTreeSet<String> = BTreeSet::new();
    let mut records = 0;
    for n in 0..3 {
        let (ids, count) = submit(&cluster, n);
        submitted.extend(ids);
        records += count;
    }
    assert_national_holds_exactly(&cluster, &submitted, records);
    assert_eq!(phase(&cluster).unwrap(), "direct");

    add_hierarchy_and_migrate(&mut cluster, 3, 3);
    let stop = AtomicBool::new(false);
    let (more, more_records) = std::thread::scope(|scope| {
        let submitter = keep_submitting(scope, &cluster, &stop);
        let done = wait_until("the migration to complete", TIMEOUT, || {
            Ok(phase(&cluster)? == "dismantled")
        });
        stop.store(true, Ordering::Relaxed);
        let result = submitter.join().unwrap();
        done.unwrap_or_else(|e| panic!("{e}\ncounty log:\n{}", cluster.log(id("445281"))));
        result
    });
    assert!(
        !more.is_empty(),
        "the county submitted during the migration"
    );
    submitted.extend(more);
    records += more_records;
    // After the migration, one more batch goes by the hierarchy alone.
    let (last, count) = submit(&cluster, 999);
    submitted.extend(last);
    records += count;

    assert_national_holds_exactly(&cluster, &submitted, records);
    let phases = check_never_without_a_path(&cluster.audit_log(id("445281")).unwrap());
    assert_eq!(phases, ["establish", "verify", "cut-over", "dismantled"]);
    // The legacy link is closed: at the county and at the national platform.
    wait_until("the legacy link to be closed at both ends", TIMEOUT, || {
        let county_links = cluster.status(id("445281"))?["links"].clone();
        let legacy_up = county_links
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["direction"] == "legacy" && l["connected"] == true);
        let national_links = cluster.status(id("000000"))?["links"].clone();
        let county_down = national_links
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["peer"] == "445281" && l["connected"] == true);
        Ok(!legacy_up && !county_down)
    })
    .unwrap();
    let migration = cluster.migration(id("445281")).unwrap();
    assert_eq!(migration["legacy_open"], false);
    assert_eq!(migration["sends_on_legacy"], false);
    cluster.stop_all();
}

#[test]
fn a_new_path_that_breaks_during_verify_sends_the_county_back_to_the_legacy_link() {
    let Net { mut cluster, _root } = legacy_network();
    let mut submitted: BTreeSet<String> = BTreeSet::new();
    let mut records = 0;
    let (ids, count) = submit(&cluster, 0);
    submitted.extend(ids);
    records += count;
    // A long verify window, so the break surely lands inside it.
    add_hierarchy_and_migrate(&mut cluster, 600, 600);
    wait_until(
        "the county to start verifying the new path",
        TIMEOUT,
        || Ok(phase(&cluster)? == "verify"),
    )
    .unwrap();
    cluster.kill(id("445200")).unwrap();
    wait_until("the county to fall back", TIMEOUT, || {
        Ok(phase(&cluster)? == "establish")
    })
    .unwrap();
    // On the legacy link alone, the county keeps delivering.
    for n in 1..4 {
        let (ids, count) = submit(&cluster, n);
        submitted.extend(ids);
        records += count;
    }
    assert_national_holds_exactly(&cluster, &submitted, records);
    let audit = cluster.audit_log(id("445281")).unwrap();
    let phases = check_never_without_a_path(&audit);
    assert_eq!(phases, ["establish", "verify", "establish"]);
    let fallback: Vec<&Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "migration" && e["phase"] == "establish")
        .collect();
    assert!(
        fallback[1]["detail"]
            .as_str()
            .unwrap()
            .contains("failed during verify"),
        "{}",
        fallback[1]
    );
    let status = cluster.migration(id("445281")).unwrap();
    assert_eq!(status["sends_on_legacy"], true);
    cluster.stop_all();
}
