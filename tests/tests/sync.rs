//! Real `credit-node` processes on 127.0.0.1 — province, city, two counties — move batches up
//! over QUIC; the city is killed with SIGKILL while batches are in flight and restarted.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use cluster::{Cluster, wait_until};
use protocol::{NodeId, Period, Registry};
use serde_json::Value;

const SYNC_TIMEOUT: Duration = Duration::from_secs(90);

fn id(text: &str) -> NodeId {
    NodeId::parse(text).unwrap()
}

/// Writes a sample export and submits it at `county`; returns (batch ids, records).
fn submit(
    cluster: &Cluster,
    county: NodeId,
    category: &str,
    rows: usize,
    bad: usize,
    batch_records: usize,
) -> (Vec<String>, u64) {
    let period = Period::parse("2022-05").unwrap();
    let schema = Registry::builtin().by_name(category).unwrap();
    let file = sample::sample_csv(
        schema,
        county,
        period,
        rows,
        bad,
        u64::from(county.code()) + rows as u64,
    );
    let path = cluster
        .root()
        .join(format!("{county}-{category}-{rows}.csv"));
    std::fs::write(&path, &file.text).unwrap();
    let report = cluster
        .submit(county, &path, category, "2022-05", batch_records)
        .unwrap();
    assert_eq!(report["refused"].as_array().unwrap().len(), bad, "{report}");
    let ids: Vec<String> = report["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(report["submitted"].as_array().unwrap().len(), ids.len());
    (ids, report["records"].as_u64().unwrap())
}

fn held_ids(batches: &Value) -> Vec<String> {
    batches["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Batches of `category` a node holds, from its status (cheap: no signature checks).
fn held_count(cluster: &Cluster, node: NodeId, category: &str) -> anyhow::Result<u64> {
    let status = cluster.status(node)?;
    Ok(status["held"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["category"] == category)
        .map(|h| h["batches"].as_u64().unwrap())
        .sum())
}

fn holds_all(cluster: &Cluster, node: NodeId, expected: &BTreeSet<String>) -> anyhow::Result<bool> {
    let held: BTreeSet<String> = held_ids(&cluster.batches(node)?).into_iter().collect();
    Ok(expected.is_subset(&held))
}

#[test]
fn batches_reach_the_province_verified_and_survive_a_city_sigkill() {
    let root = tempfile::tempdir().unwrap();
    let (national, province, city, rongcheng, puning) = (
        id("000000"),
        id("440000"),
        id("445200"),
        id("445202"),
        id("445281"),
    );
    let mut cluster = Cluster::create(
        &credit_e2e::binary(),
        root.path(),
        &[
            ("000000", "全国中小企业融资综合信用服务平台", None),
            ("440000", "广东省", Some("000000")),
            ("445200", "揭阳市", Some("440000")),
            ("445202", "榕城区", Some("445200")),
            ("445281", "普宁市", Some("445200")),
        ],
    )
    .unwrap();
    // The national platform stays down: the province keeps its outbox and retries.
    for node in [province, city, rongcheng, puning] {
        cluster.start(node).unwrap();
    }

    // Phase 1: a water-fee export at each county reaches the province unchanged.
    let mut expected: BTreeSet<String> = BTreeSet::new();
    let mut records: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut own: BTreeMap<NodeId, Vec<String>> = BTreeMap::new();
    for county in [rongcheng, puning] {
        let (ids, count) = submit(&cluster, county, "water_fee", 1000, 3, 250);
        assert_eq!((ids.len(), count), (4, 997));
        *records
            .entry((county.to_string(), "water_fee".into()))
            .or_default() += count;
        expected.extend(ids.iter().cloned());
        own.entry(county).or_default().extend(ids);
    }
    wait_until(
        "the province to hold every county batch",
        SYNC_TIMEOUT,
        || holds_all(&cluster, province, &expected),
    )
    .unwrap_or_else(|e| panic!("{e}\ncity log:\n{}", cluster.log(city)));
    let at_province = cluster.batches(province).unwrap();
    for batch in at_province["batches"].as_array().unwrap() {
        assert_eq!(
            batch["signature_valid"], true,
            "origin signature verifies at the province: {batch}"
        );
        assert_eq!(batch["from"], "445200", "came through the city");
        assert!(expected.contains(batch["id"].as_str().unwrap()));
    }
    // Each county holds the receipt chain: its own, the city's and the province's, all valid.
    for (county, ids) in &own {
        wait_until(
            &format!("{county} to hold the receipt chain to the province"),
            SYNC_TIMEOUT,
            || {
                let batches = cluster.batches(*county)?;
                Ok(batches["batches"].as_array().unwrap().iter().all(|b| {
                    let receivers: BTreeSet<&str> = b["receipts"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter(|r| r["signature_valid"] == true && r["accepted"] == true)
                        .filter_map(|r| r["receiver"].as_str())
                        .collect();
                    receivers.is_superset(&BTreeSet::from([
                        county.to_string().as_str(),
                        "445200",
                        "440000",
                    ]))
                }) && batches["batches"].as_array().unwrap().len() == ids.len())
            },
        )
        .unwrap();
    }

    // Phase 2: the counties queue larger batches while the city is down; the city comes up
    // and is killed with SIGKILL as soon as the first of them reaches it, then restarted.
    cluster.stop(city).unwrap();
    let mut second: BTreeSet<String> = BTreeSet::new();
    for county in [rongcheng, puning] {
        let (ids, count) = submit(&cluster, county, "gas_fee", 20_000, 0, 500);
        assert_eq!(ids.len(), 40);
        *records
            .entry((county.to_string(), "gas_fee".into()))
            .or_default() += count;
        second.extend(ids);
    }
    cluster.start(city).unwrap();
    wait_until(
        "the city to receive the first queued batch",
        SYNC_TIMEOUT,
        || Ok(held_count(&cluster, city, "gas_fee")? >= 1),
    )
    .unwrap();
    cluster.kill(city).unwrap();
    let arrived = held_count(&cluster, province, "gas_fee").unwrap();
    eprintln!(
        "at the kill, {arrived} of {} queued batches had reached the province",
        second.len()
    );
    assert!(
        arrived < second.len() as u64,
        "the kill must happen while batches are in flight ({arrived} of {} had arrived)",
        second.len()
    );
    cluster.start(city).unwrap();
    expected.extend(second);
    wait_until(
        "the province to hold every batch after the city's restart",
        SYNC_TIMEOUT,
        || holds_all(&cluster, province, &expected),
    )
    .unwrap_or_else(|e| panic!("{e}\ncity log:\n{}", cluster.log(city)));

    // Nothing lost, nothing duplicated: exactly the submitted batches and records.
    let at_province = cluster.batches(province).unwrap();
    let ids = held_ids(&at_province);
    let unique: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), unique.len(), "a batch is held once");
    assert_eq!(
        unique, expected,
        "the province holds exactly what the counties submitted"
    );
    let mut tally: BTreeMap<(String, String), u64> = BTreeMap::new();
    for batch in at_province["batches"].as_array().unwrap() {
        assert_eq!(batch["signature_valid"], true);
        *tally
            .entry((
                batch["origin"].as_str().unwrap().to_owned(),
                batch["category"].as_str().unwrap().to_owned(),
            ))
            .or_default() += batch["records"].as_u64().unwrap();
    }
    assert_eq!(tally, records, "records per county and category");
    for node in [province, city] {
        let audit = node::api::call(
            &cluster.member(node).dir,
            &node::api::ApiRequest::VerifyAudit,
        )
        .unwrap();
        assert!(audit["entries"].as_u64().unwrap() > 0);
    }
    let _ = national;
    cluster.stop_all();
}

/// A batch near the 64 MiB cap travels and is stored at every level: 90,000 `admin_penalty`
/// records (the widest category) in one batch of ~55 MiB. Batches from 85,000 such records
/// (52 MiB) up were once made and then refused by every receiver, their own node's included
/// (bincode's decoder counted decoded sizes against the cap); records are read by hand since.
#[test]
fn a_batch_near_the_byte_cap_reaches_the_province() {
    let root = tempfile::tempdir().unwrap();
    let (province, city, county) = (id("440000"), id("445200"), id("445281"));
    let mut cluster =
        Cluster::create(&credit_e2e::binary(), root.path(), cluster::PUNING_CHAIN).unwrap();
    cluster.start_all().unwrap();
    let (ids, records) = submit(&cluster, county, "admin_penalty", 90_000, 0, 100_000);
    assert_eq!((ids.len(), records), (1, 90_000), "one batch of every row");
    let at_county = cluster.batches(county).unwrap();
    let bytes = at_county["batches"][0]["bytes"].as_u64().unwrap();
    assert!(
        bytes > 52 * 1024 * 1024 && bytes <= protocol::batch::BATCH_BYTES_MAX as u64,
        "{bytes} bytes: above where receivers once refused, within the cap"
    );
    let expected: BTreeSet<String> = ids.into_iter().collect();
    wait_until("the batch at the province", SYNC_TIMEOUT, || {
        holds_all(&cluster, province, &expected)
    })
    .unwrap_or_else(|e| panic!("{e}\ncity log:\n{}", cluster.log(city)));
    let at_province = cluster.batches(province).unwrap();
    let batch = &at_province["batches"][0];
    assert_eq!(batch["signature_valid"], true, "{batch}");
    assert_eq!(batch["records"], 90_000, "{batch}");
    assert_eq!(batch["from"], "445200", "came through the city: {batch}");
}
