//! How long the national platform's operator waits for `topology plan`, and every node for a
//! reload, on a national-size topology (every division of mainland China: 3,210 nodes).
//!
//! `cargo bench -p credit-topology --bench plan`. Prints, for each edit, the time of one
//! `plan` (median of several) beside the time to validate the new file's nodes, the limit a
//! reload pays anyway.

#![allow(clippy::print_stdout)]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use protocol::{NodeId, NodeKey, PublicKey};
use topology::{
    Admissions, Assessment, CHINA_DIVISIONS_CSV, Date, KeyEnd, LegacyLink, NATIONAL_NAME, Node,
    OldKey, Role, Topology, divisions, placeholder_key,
};

fn national(version: u64) -> (Vec<Node>, Topology) {
    let mut nodes = vec![node(
        0,
        NodeId::NATIONAL,
        NATIONAL_NAME,
        Role::National,
        None,
    )];
    for (index, row) in divisions(CHINA_DIVISIONS_CSV)
        .expect("the compiled-in list")
        .iter()
        .enumerate()
    {
        let parent = row.parent.unwrap_or(NodeId::NATIONAL);
        nodes.push(node(index + 1, row.id, &row.name, row.role, Some(parent)));
    }
    let topology = Topology::from_nodes(version, nodes.clone()).expect("a valid topology");
    (nodes, topology)
}

fn node(index: usize, id: NodeId, name: &str, role: Role, parent: Option<NodeId>) -> Node {
    Node {
        id,
        name: name.to_owned(),
        role,
        parent,
        address: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 10_000 + index as u16),
        public_key: placeholder_key(id),
    }
}

fn key(id: NodeId, generation: u32) -> PublicKey {
    let seed = protocol::BatchId::of(format!("bench key {generation} of {id}").as_bytes()).0;
    NodeKey::from_seed(seed).public()
}

/// The median of `runs` timings of `f`, with what it returned the last time.
fn median<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut times = Vec::with_capacity(runs);
    let mut last = None;
    for _ in 0..runs {
        let started = Instant::now();
        last = Some(std::hint::black_box(f()));
        times.push(started.elapsed());
    }
    times.sort();
    (times[runs / 2], last.expect("at least one run"))
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

fn main() {
    if std::env::args().any(|arg| arg == "--list") {
        println!("plan: bench");
        return;
    }
    let runs: usize = std::env::var("PLAN_BENCH_RUNS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(5);
    let (nodes, old) = national(1);
    println!(
        "national topology: {} nodes; each figure the median of {runs} runs",
        old.len()
    );
    let (validate, _) = median(runs, || Topology::from_nodes(2, nodes.clone()).unwrap());
    println!(
        "  validate the new version's nodes (the limit):      {:>9.2} ms",
        ms(validate)
    );

    // Edits a national operator makes, each from version 1 to 2.
    let mut edits: Vec<(&str, Topology)> = Vec::new();
    let mut rekeyed = nodes.clone();
    let county = NodeId::parse("445281").expect("an id");
    let at = rekeyed
        .iter()
        .position(|n| n.id == county)
        .expect("in the list");
    rekeyed[at].public_key = key(county, 1);
    let admissions = Admissions {
        old_keys: vec![OldKey {
            node: county,
            public_key: placeholder_key(county),
            end: KeyEnd::Retired,
            at_ms: 1_780_000_000_000,
        }],
        ..Admissions::default()
    };
    edits.push((
        "one county re-keyed",
        old.edited(2, rekeyed, admissions).unwrap(),
    ));

    let valid = Date::new(2099, 12, 31).expect("a date");
    let assessed = Admissions {
        require_assessment: true,
        assessments: nodes
            .iter()
            .filter(|n| !n.id.is_national())
            .map(|n| Assessment {
                node: n.id,
                assessor: "国家网络安全等级保护测评中心".into(),
                reference: None,
                assessed_on: Date::new(2025, 1, 1).expect("a date"),
                valid_until: valid,
            })
            .collect(),
        ..Admissions::default()
    };
    edits.push((
        "assessments required of every node",
        old.edited(2, nodes.clone(), assessed).unwrap(),
    ));

    // Every node re-keyed once a year: the second year's file lists 3,209 old keys and
    // re-keys every node again.
    let year = |generation: u32| -> (Vec<Node>, Admissions) {
        let mut nodes = nodes.clone();
        let mut old_keys = Vec::new();
        for node in nodes.iter_mut().filter(|n| !n.id.is_national()) {
            for earlier in 0..generation {
                old_keys.push(OldKey {
                    node: node.id,
                    public_key: if earlier == 0 {
                        placeholder_key(node.id)
                    } else {
                        key(node.id, earlier)
                    },
                    end: KeyEnd::Retired,
                    at_ms: 1_780_000_000_000 + u64::from(earlier) * 86_400_000,
                });
            }
            node.public_key = key(node.id, generation);
        }
        (
            nodes,
            Admissions {
                old_keys,
                ..Admissions::default()
            },
        )
    };
    let (first_nodes, first_admissions) = year(1);
    let first = old.edited(2, first_nodes, first_admissions).unwrap();
    let (second_nodes, second_admissions) = year(2);
    let second = first.edited(3, second_nodes, second_admissions).unwrap();

    let migrating = nodes.clone();
    let legacy = |migrate| -> Vec<LegacyLink> {
        migrating
            .iter()
            .filter(|n| n.role == Role::County)
            .step_by(10)
            .map(|n| LegacyLink {
                migrate,
                ..LegacyLink::new(n.id)
            })
            .collect()
    };
    let (links_before, links_after) = (legacy(false), legacy(true));
    let before =
        Topology::from_parts(1, migrating.clone(), links_before, Vec::new(), Vec::new()).unwrap();
    let after = Topology::from_parts(2, migrating, links_after, Vec::new(), Vec::new()).unwrap();

    let text = second.render();
    let (parse, _) = median(runs, || Topology::parse(&text).unwrap());
    println!(
        "  parse and validate the second year's file ({:.1} MB, {} old keys): {:>6.2} ms",
        text.len() as f64 / 1e6,
        second.admissions().old_keys.len(),
        ms(parse)
    );
    for (what, new) in &edits {
        report(what, runs, &old, new);
    }
    report("every node re-keyed (first year)", runs, &old, &first);
    report(
        "every node re-keyed again (second year)",
        runs,
        &first,
        &second,
    );
    report(
        "a tenth of the counties migrate off legacy links",
        runs,
        &before,
        &after,
    );
}

fn report(what: &str, runs: usize, old: &Topology, new: &Topology) {
    let (took, plan) = median(runs, || topology::plan(old, new).expect("a valid edit"));
    println!(
        "  plan: {what:<48} {:>9.2} ms ({} steps)",
        ms(took),
        plan.steps.len()
    );
}
