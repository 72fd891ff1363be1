//! Keys over time and admission, end to end with real processes on 127.0.0.1 (national,
//! province, city, two counties):
//!
//! - **Rotation loses nothing.** County 445281 gets a new key (`credit-node rekey`) while one
//!   of its batches waits at the city (receipted before the rotation) and another waits in its
//!   own outbox (never acknowledged). Both reach the national platform; every batch of that
//!   county verifies everywhere, the early ones under the retired key.
//! - **Revocation quarantines only later batches.** County 445202's key is revoked from a
//!   moment T (`rekey --compromised --since T`). A batch the city took before T stays valid;
//!   one the city (still on the old file) took after T is quarantined at the province: kept,
//!   listed, never forwarded, and the county is told why.
//! - **Admission by assessment.** With `require_assessment = true`, county 445281's expired
//!   assessment gets it refused by the city with a message that says what to do; its new batch
//!   waits in its outbox and arrives once the assessment is renewed.

use std::collections::BTreeSet;
use std::time::Duration;

use cluster::{Cluster, wait_until};
use protocol::{NodeId, Period, Registry};
use serde_json::Value;
use topology::{Assessment, Date};

const TIMEOUT: Duration = Duration::from_secs(60);
const PERIOD: &str = "2026-11";

fn id(text: &str) -> NodeId {
    NodeId::parse(text).unwrap()
}

/// Submits a small water-fee export at `county` (seeded by `seed`); returns the batch ids.
fn submit(cluster: &Cluster, county: NodeId, seed: u64) -> Vec<String> {
    let schema = Registry::builtin().by_name("water_fee").unwrap();
    let period = Period::parse(PERIOD).unwrap();
    let file = sample::sample_csv(schema, county, period, 12, 0, seed);
    let path = cluster.root().join(format!("{county}-{seed}.csv"));
    std::fs::write(&path, &file.text).unwrap();
    let report = cluster
        .submit(county, &path, "water_fee", PERIOD, 12)
        .unwrap();
    let ids: Vec<String> = report["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(!ids.is_empty(), "{report}");
    ids
}

/// The held batches of `node`, by id.
fn held(cluster: &Cluster, node: NodeId) -> std::collections::BTreeMap<String, Value> {
    cluster.batches(node).unwrap()["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["id"].as_str().unwrap().to_owned(), b.clone()))
        .collect()
}

fn wait_held(cluster: &Cluster, node: NodeId, ids: &[String], what: &str) {
    wait_until(what, TIMEOUT, || {
        let held = held(cluster, node);
        Ok(ids.iter().all(|id| held.contains_key(id)))
    })
    .unwrap_or_else(|e| panic!("{e}\n--- log of {node}:\n{}", cluster.log(node)));
}

fn topology_version(cluster: &Cluster, node: NodeId) -> u64 {
    cluster.status(node).unwrap()["topology_version"]
        .as_u64()
        .unwrap()
}

/// Writes the next topology version and has the running `nodes` reload it.
fn reload(cluster: &mut Cluster, nodes: &[NodeId]) {
    cluster.write_topology().unwrap();
    let version = cluster.version;
    for node in nodes {
        cluster.signal(*node, "HUP").unwrap();
    }
    for node in nodes {
        wait_until(
            &format!("{node} to apply topology version {version}"),
            TIMEOUT,
            || Ok(topology_version(cluster, *node) == version),
        )
        .unwrap_or_else(|e| panic!("{e}\n--- log of {node}:\n{}", cluster.log(*node)));
    }
}

#[test]
fn a_rotation_loses_nothing_a_revocation_quarantines_later_batches_and_an_expired_assessment_is_refused()
 {
    let root = tempfile::tempdir().unwrap();
    let (national, province, city) = (id("000000"), id("440000"), id("445200"));
    let (puning, rongcheng) = (id("445281"), id("445202"));
    let mut cluster = Cluster::create(
        &credit_e2e::binary(),
        root.path(),
        &[
            ("000000", "全国中小企业融资综合信用服务平台", None),
            ("440000", "广东省", Some("000000")),
            ("445200", "揭阳市", Some("440000")),
            ("445281", "普宁市", Some("445200")),
            ("445202", "榕城区", Some("445200")),
        ],
    )
    .unwrap();
    let started = std::time::Instant::now();
    let phase = |name: &str| eprintln!("{:>6.1}s {name}", started.elapsed().as_secs_f64());
    cluster.start_all().unwrap();
    phase("started");

    // ---- rotation, mid-stream ----
    let early = submit(&cluster, puning, 1);
    wait_held(
        &cluster,
        national,
        &early,
        "the first batch to reach the national platform",
    );
    // One batch receipted by the city before the rotation, stuck there (province down) ...
    cluster.stop(province).unwrap();
    let at_city = submit(&cluster, puning, 2);
    wait_held(
        &cluster,
        city,
        &at_city,
        "the city to hold the second batch",
    );
    // ... and one never acknowledged (city down), in the county's outbox.
    phase("at city");
    cluster.stop(city).unwrap();
    let in_outbox = submit(&cluster, puning, 3);
    cluster.stop(puning).unwrap();
    let old_key = cluster.rekey(puning, None).unwrap();
    reload(&mut cluster, &[national, rongcheng]);
    phase("rekeyed");
    cluster.start(province).unwrap();
    cluster.start(city).unwrap();
    cluster.start(puning).unwrap();
    let all: Vec<String> = [&early, &at_city, &in_outbox]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    wait_held(
        &cluster,
        national,
        &all,
        "every batch of the re-keyed county to arrive",
    );
    phase("all arrived");
    for node in [national, province, city] {
        let held = held(&cluster, node);
        for batch in &all {
            let b = &held[batch];
            assert_eq!(b["signature_valid"], true, "{node}: {b}");
            let expected = if in_outbox.contains(batch) {
                "current"
            } else {
                "retired"
            };
            assert_eq!(b["key_state"], expected, "{node}: {b}");
        }
        let signed_by: BTreeSet<&str> = all
            .iter()
            .map(|b| held[b]["signed_by"].as_str().unwrap())
            .collect();
        assert!(
            signed_by.contains(old_key.to_hex().as_str()),
            "{signed_by:?}"
        );
    }
    let audit = cluster.audit_log(national).unwrap();
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "key" && e["node"] == "445281" && e["state"] == "retired"),
        "the key change is in the audit log: {audit}"
    );

    // ---- revocation from a moment T ----
    phase("rotation checked");
    let before = submit(&cluster, rongcheng, 4);
    wait_held(
        &cluster,
        national,
        &before,
        "the county's batch from before T",
    );
    let t = node::runtime::wall_ms() + 1;
    wait_until("the wall clock to pass T", TIMEOUT, || {
        Ok(node::runtime::wall_ms() > t)
    })
    .unwrap();
    cluster.stop(province).unwrap();
    // The city, still on the old file, takes a batch after T under the stolen key.
    let after = submit(&cluster, rongcheng, 5);
    wait_held(
        &cluster,
        city,
        &after,
        "the city to take the batch signed after T",
    );
    phase("after at city");
    cluster.rekey(rongcheng, Some(t)).unwrap();
    cluster.write_topology().unwrap();
    cluster.start(province).unwrap();
    wait_until(
        "the province to quarantine the later batch",
        TIMEOUT,
        || {
            let answer = cluster.batches(province)?;
            let quarantined: BTreeSet<String> = answer["quarantined"]
                .as_array()
                .unwrap()
                .iter()
                .map(|q| q["id"].as_str().unwrap().to_owned())
                .collect();
            Ok(after.iter().all(|id| quarantined.contains(id)))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n--- province log:\n{}", cluster.log(province)));
    phase("quarantined");
    let answer = cluster.batches(province).unwrap();
    let q = &answer["quarantined"][0];
    assert_eq!(q["origin"], "445202");
    assert!(q["reason"].as_str().unwrap().contains("revoked"), "{q}");
    let province_held = held(&cluster, province);
    for batch in &before {
        assert_eq!(province_held[batch]["signature_valid"], true);
        assert_eq!(province_held[batch]["key_state"], "revoked");
    }
    assert!(after.iter().all(|b| !province_held.contains_key(b)));
    // The county hears why (the refusal is relayed down to it).
    wait_until("the county to be told of the quarantine", TIMEOUT, || {
        let status = cluster.status(rongcheng)?;
        Ok(status["refused"].as_array().unwrap().iter().any(|r| {
            after.iter().any(|b| r["batch"] == *b)
                && r["reason"].as_str().unwrap().contains("quarantined")
        }))
    })
    .unwrap_or_else(|e| panic!("{e}\n--- county log:\n{}", cluster.log(rongcheng)));
    assert!(
        after
            .iter()
            .all(|b| !held(&cluster, national).contains_key(b))
    );
    phase("county told");
    cluster.stop(rongcheng).unwrap();
    reload(&mut cluster, &[national, city, puning]);
    cluster.start(rongcheng).unwrap();

    // ---- admission by security assessment ----
    phase("reloaded");
    let today = Date::of_ms(node::runtime::wall_ms());
    let yesterday = Date::of_ms(node::runtime::wall_ms() - 86_400_000);
    let assessment = |node: NodeId, valid_until: Date| Assessment {
        node,
        assessor: "广东省网络安全等级保护测评中心".into(),
        reference: Some(format!("GD-2026-{node}")),
        assessed_on: Date::new(2025, 1, 15).unwrap(),
        valid_until,
    };
    let far = Date::new(2099, 12, 31).unwrap();
    cluster.admissions.require_assessment = true;
    cluster.admissions.assessments = vec![
        assessment(province, far),
        assessment(city, far),
        assessment(rongcheng, far),
        assessment(puning, yesterday),
    ];
    assert!(yesterday < today);
    reload(&mut cluster, &[national, province, city, puning, rongcheng]);
    let city_log = cluster.member(city).dir.join("node.log");
    wait_until("the city to refuse the expired county", TIMEOUT, || {
        let audit = cluster.audit_log(city)?;
        Ok(audit["entries"].as_array().unwrap().iter().any(|e| {
            e["kind"] == "admission_refused"
                && e["peer"] == "445281"
                && e["reason"]
                    .as_str()
                    .unwrap()
                    .contains("expired at the end of")
        }))
    })
    .unwrap_or_else(|e| panic!("{e}\n--- city log:\n{}", cluster.log(city)));
    phase("refused");
    let log = std::fs::read_to_string(&city_log).unwrap();
    assert!(
        log.contains("re-assessed") && log.contains("valid_until"),
        "the log says what to do:\n{log}"
    );
    // Its new batch waits in its outbox, and arrives once the assessment is renewed.
    let waiting = submit(&cluster, puning, 6);
    wait_until("the county to see its link refused", TIMEOUT, || {
        let status = cluster.status(puning)?;
        Ok(status["links"].as_array().unwrap().iter().any(|l| {
            l["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("security assessment"))
        }))
    })
    .unwrap_or_else(|e| panic!("{e}\n--- county log:\n{}", cluster.log(puning)));
    phase("county saw refusal");
    assert!(
        waiting
            .iter()
            .all(|b| !held(&cluster, city).contains_key(b))
    );
    cluster.admissions.assessments[3] = assessment(puning, far);
    reload(&mut cluster, &[national, province, city, puning, rongcheng]);
    wait_held(
        &cluster,
        national,
        &waiting,
        "the waiting batch to arrive after renewal",
    );
    phase("done");
    cluster.stop_all();
}
