//! The shipped example files are exactly what the generator produces, and parse cleanly, so
//! they cannot drift from the code. `UPDATE_EXPECT=1` rewrites them.
//!
//! * `examples/guangdong.toml`: `generate(440000, 20000)`, the whole province (145 nodes).
//! * `examples/jieyang.toml`: the national platform, Guangdong, Jieyang and its five counties,
//!   with Puning (445281) still on a legacy link and two schedules, water fees with the
//!   city's task allocation table (分工表).

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;

use protocol::{Category, NodeId};
use topology::{
    Allocation, Cadence, GENERATED_HEADER, LegacyLink, Role, Schedule, Topology, generate,
    placeholder_key,
};

fn id(text: &str) -> NodeId {
    NodeId::parse(text).unwrap()
}

fn guangdong() -> Topology {
    generate(id("440000"), 20_000).unwrap()
}

fn jieyang() -> Topology {
    let keep = [
        "000000", "440000", "445200", "445202", "445203", "445222", "445224", "445281",
    ]
    .map(id);
    let nodes = generate(id("440000"), 7000)
        .unwrap()
        .nodes()
        .filter(|node| keep.contains(&node.id))
        .cloned()
        .enumerate()
        .map(|(index, mut node)| {
            node.address = SocketAddr::from(([127, 0, 0, 1], 7000 + index as u16));
            node
        })
        .collect();
    // The task allocation table of water fees, as the city's notice sets it: the city water
    // group reports the urban districts through the city platform; in the other counties the
    // county's 发展改革局 collects the data-source units' data and reports it.
    let county = |code: &str, name: &str| Allocation {
        reporter: id(code),
        covers: Vec::new(),
        data_source: format!("{name}各供水单位"),
        responsible: format!("{name}发展改革局"),
        contact: None,
    };
    let mut water = Schedule::new(
        Category::parse("water_fee").unwrap(),
        Cadence::Monthly,
        10,
        Vec::new(),
    );
    water.allocation = vec![
        Allocation {
            reporter: id("445200"),
            covers: vec![id("445202"), id("445203")],
            data_source: "揭阳市水务集团有限公司".into(),
            responsible: "揭阳市发展改革局".into(),
            contact: None,
        },
        county("445222", "揭西县"),
        county("445224", "惠来县"),
        county("445281", "普宁市"),
    ];
    let schedules = vec![
        water,
        Schedule::new(
            Category::parse("admin_penalty").unwrap(),
            Cadence::Event,
            7,
            vec![id("445202"), id("445281")],
        ),
    ];
    Topology::from_parts(
        1,
        nodes,
        vec![LegacyLink::new(id("445281"))],
        Vec::new(),
        schedules,
    )
    .unwrap()
}

/// Compares the shipped file with the generated text, or rewrites it with UPDATE_EXPECT=1.
fn check_file(name: &str, topology: &Topology) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name);
    let text = topology.render_with_header(GENERATED_HEADER);
    let shipped = std::fs::read_to_string(&path).ok();
    if shipped.as_deref() != Some(text.as_str()) {
        if std::env::var("UPDATE_EXPECT").is_ok_and(|v| v == "1") {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &text).unwrap();
            let _ = writeln!(std::io::stderr(), "updated {}", path.display());
        } else {
            panic!(
                "{} is not what the generator produces: run `UPDATE_EXPECT=1 cargo test -p credit-topology --test examples` and review the diff",
                path.display()
            );
        }
    }
    let parsed = Topology::parse(&text).unwrap_or_else(|errors| panic!("{name}: {errors:#?}"));
    assert_eq!(
        &parsed, topology,
        "{name} parses back to what was generated"
    );
}

#[test]
fn guangdong_example_is_generated() {
    let topology = guangdong();
    check_file("guangdong.toml", &topology);

    assert_eq!(topology.len(), 1 + 1 + 21 + 122);
    let count = |role| topology.nodes().filter(|node| node.role == role).count();
    assert_eq!(
        (
            count(Role::National),
            count(Role::Province),
            count(Role::City),
            count(Role::County)
        ),
        (1, 1, 21, 122)
    );
    for city in ["441900", "442000"] {
        let node = topology.node(id(city)).unwrap();
        assert_eq!(node.role, Role::City);
        assert_eq!(node.parent, Some(id("440000")));
        assert!(topology.children_of(id(city)).next().is_none(), "{city}");
    }
    assert_eq!(topology.node(id("441900")).unwrap().name, "东莞市");
    assert_eq!(topology.node(id("442000")).unwrap().name, "中山市");
    assert_eq!(
        topology.path_to_national(id("445281")),
        [id("445281"), id("445200"), id("440000"), NodeId::NATIONAL]
    );
    let national = topology.national();
    assert_eq!(national.address, "127.0.0.1:20000".parse().unwrap());
    assert_eq!(national.public_key, placeholder_key(NodeId::NATIONAL));
    assert_eq!(
        topology.nodes().last().unwrap().address,
        "127.0.0.1:20144".parse().unwrap()
    );
    // The default schedules, owed by every county and by the two cities without counties.
    let schedules: Vec<(&str, Cadence, u16)> = topology
        .schedules()
        .iter()
        .map(|s| (s.category.as_str(), s.cadence, s.due_day))
        .collect();
    assert_eq!(
        schedules,
        [
            ("water_fee", Cadence::Monthly, 10),
            ("electricity_fee", Cadence::Monthly, 10),
            ("gas_fee", Cadence::Monthly, 10),
            ("admin_license", Cadence::Event, 7),
            ("admin_penalty", Cadence::Event, 7),
        ]
    );
    let reporters = topology.reporters(&topology.schedules()[0]);
    assert_eq!(reporters.len(), 122 + 2);
    assert!(reporters.contains(&id("441900")) && reporters.contains(&id("442000")));
    assert!(!reporters.contains(&id("445200")));

    let text = topology.render_with_header(GENERATED_HEADER);
    assert!(text.starts_with(
        "# Generated by topology::generate. The public keys and addresses below are PLACEHOLDERS.\n"
    ));
}

#[test]
fn jieyang_example_is_generated() {
    let topology = jieyang();
    check_file("jieyang.toml", &topology);

    assert_eq!(topology.len(), 8);
    assert_eq!(
        topology
            .children_of(id("445200"))
            .map(|node| node.name.as_str())
            .collect::<Vec<_>>(),
        ["榕城区", "揭东区", "揭西县", "惠来县", "普宁市"]
    );
    let link = topology.legacy_link(id("445281")).unwrap();
    assert!(!link.migrate);
    assert_eq!((link.verify_window_s, link.rollback_window_s), (60, 300));
    assert_eq!(
        topology.paths_to_national(id("445281")),
        [
            vec![id("445281"), id("445200"), id("440000"), NodeId::NATIONAL],
            vec![id("445281"), NodeId::NATIONAL],
        ]
    );
    assert_eq!(
        topology.reporters(&topology.schedules()[1]),
        [id("445202"), id("445281")]
    );
    // Water fees: the city reports for 榕城 and 揭东, which owe nothing themselves.
    let water = &topology.schedules()[0];
    assert_eq!(
        topology.reporters(water),
        [id("445222"), id("445224"), id("445281"), id("445200")]
    );
    let city = topology.allocation(&water.category, id("445200")).unwrap();
    assert_eq!(city.data_source, "揭阳市水务集团有限公司");
    assert_eq!(water.covered_by(id("445203")), Some(id("445200")));
    assert_eq!(water.covered_by(id("445281")), None);
    assert!(topology.allocation(&water.category, id("445202")).is_none());
}

/// The whole migration of Puning from the shipped Jieyang file, version by version.
#[test]
fn puning_migrates_from_the_jieyang_example() {
    let v1 = jieyang();
    let mut links = v1.legacy_links().to_vec();
    links[0].migrate = true;
    let nodes: Vec<_> = v1.nodes().cloned().collect();
    let parts = |version, links| {
        Topology::from_parts(
            version,
            nodes.clone(),
            links,
            Vec::new(),
            v1.schedules().to_vec(),
        )
        .unwrap()
    };
    let v2 = parts(2, links);
    let plan = topology::plan(&v1, &v2).unwrap();
    assert_eq!(
        plan.steps
            .iter()
            .map(|step| step.action.split(':').next().unwrap())
            .collect::<Vec<_>>(),
        [
            "445281 establishes its new path through 445200",
            "445281 verifies the new path through 445200",
            "445281 cuts over",
            "445281 dismantles its legacy link to 000000",
        ]
    );
    let v3 = parts(3, Vec::new());
    assert_eq!(topology::plan(&v2, &v3).unwrap().steps.len(), 1);
    let refused = topology::plan(&v1, &v3).unwrap_err();
    assert_eq!(refused.node, id("445281"));
    assert_eq!(
        refused.message,
        "445281's legacy link is removed before any migration: add migrate = true first and let the node finish"
    );
}
