//! The public API beyond parsing: `from_parts` under the same rules, the new accessors,
//! `paths_to_national` through legacy links, and `render` round-tripping every section.

use protocol::{Category, NodeId, NodeKey, PublicKey};
use topology::{Allocation, Cadence, LegacyLink, Node, Role, Schedule, Topology};

fn id(text: &str) -> NodeId {
    NodeId::parse(text).unwrap()
}

fn key(n: u8) -> PublicKey {
    NodeKey::from_seed([n; 32]).public()
}

fn node(code: &str, parent: Option<&str>, n: u8) -> Node {
    Node {
        id: id(code),
        name: format!("节点{code}"),
        role: Role::of_id(id(code)),
        parent: parent.map(id),
        address: format!("127.0.0.1:{}", 7000 + u16::from(n))
            .parse()
            .unwrap(),
        public_key: key(n),
    }
}

/// National, Guangdong, Jieyang (with a legacy link and no parent) and two of its counties.
fn nodes() -> Vec<Node> {
    vec![
        node("000000", None, 1),
        node("440000", Some("000000"), 2),
        node("445200", None, 3),
        node("445202", Some("445200"), 4),
        node("445281", Some("445200"), 5),
    ]
}

fn schedule(category: &str, cadence: Cadence, due_day: u16, reporters: &[&str]) -> Schedule {
    Schedule::new(
        Category::parse(category).unwrap(),
        cadence,
        due_day,
        reporters.iter().map(|r| id(r)).collect(),
    )
}

fn strings(errors: Vec<topology::TopologyError>) -> Vec<String> {
    errors.iter().map(ToString::to_string).collect()
}

#[test]
fn every_part_round_trips_and_is_indexed() {
    let links = vec![
        LegacyLink::new(id("445200")),
        LegacyLink {
            node: id("445281"),
            migrate: false,
            verify_window_s: 1,
            rollback_window_s: LegacyLink::WINDOW_S_MAX,
        },
    ];
    let schedules = vec![
        schedule("water_fee", Cadence::Monthly, 28, &[]),
        schedule("admin_penalty", Cadence::Event, 365, &["445281", "445202"]),
    ];
    let topology =
        Topology::from_parts(9, nodes(), links.clone(), vec![key(30), key(31)], schedules).unwrap();
    assert_eq!(topology.legacy_links(), links.as_slice());
    assert_eq!(topology.legacy_link(id("445281")), Some(&links[1]));
    assert_eq!(topology.legacy_link(id("445202")), None);
    assert_eq!(topology.revoked_keys(), [key(30), key(31)]);
    assert!(topology.is_revoked(&key(31)));
    assert!(!topology.is_revoked(&key(5)));
    assert_eq!(topology.schedules().len(), 2);
    let water = Category::parse("water_fee").unwrap();
    assert_eq!(topology.schedule(&water).unwrap().due_day, 28);
    assert_eq!(
        topology.reporters(topology.schedule(&water).unwrap()),
        [id("445202"), id("445281")]
    );

    let text = topology.render_with_header("first line\n\nthird line");
    assert!(text.starts_with("# first line\n#\n# third line\n\nversion = 9\nrevoked_keys = [\n"));
    let again = Topology::parse(&text).unwrap();
    assert_eq!(again, topology);
    assert_eq!(again.render(), topology.render(), "render is canonical");
}

#[test]
fn a_legacy_link_is_a_path_for_the_node_and_everything_below_it() {
    let topology = Topology::from_parts(
        1,
        nodes(),
        vec![LegacyLink::new(id("445200")), LegacyLink::new(id("445281"))],
        Vec::new(),
        Vec::new(),
    )
    .unwrap();
    // The hierarchy path stops at Jieyang, which has no parent.
    assert_eq!(
        topology.path_to_national(id("445281")),
        [id("445281"), id("445200")]
    );
    assert_eq!(
        topology.paths_to_national(id("445281")),
        [
            vec![id("445281"), NodeId::NATIONAL],
            vec![id("445281"), id("445200"), NodeId::NATIONAL],
        ]
    );
    assert_eq!(
        topology.paths_to_national(id("445202")),
        [vec![id("445202"), id("445200"), NodeId::NATIONAL]]
    );
    assert_eq!(
        topology.paths_to_national(id("440000")),
        [vec![id("440000"), NodeId::NATIONAL]]
    );
    assert!(topology.paths_to_national(id("445300")).is_empty());
}

#[test]
fn from_parts_checks_links_keys_and_schedules_without_positions() {
    let links = vec![
        LegacyLink::new(id("445200")),
        LegacyLink::new(id("445299")),
        LegacyLink {
            verify_window_s: 0,
            ..LegacyLink::new(id("445281"))
        },
        LegacyLink::new(id("445281")),
    ];
    let schedules = vec![
        schedule("water_fee", Cadence::Event, 40, &[]),
        schedule("tax_arrears", Cadence::Monthly, 29, &["445203"]),
        schedule("gas_fee", Cadence::Monthly, 10, &[]),
        schedule("gas_fee", Cadence::Monthly, 10, &[]),
        schedule("no_such_category", Cadence::Daily, 1, &[]),
    ];
    let errors = Topology::from_parts(
        2,
        nodes(),
        links,
        vec![key(4), PublicKey([2; 32])],
        schedules,
    )
    .unwrap_err();
    assert_eq!(
        strings(errors),
        [
            "line 0, column 0: revoked_keys: public key \"0202020202020202020202020202020202020202020202020202020202020202\" is not a valid Ed25519 point",
            "line 0, column 0: key of 445202 is revoked: run `credit-node init` for a new key and paste the public_key it prints",
            "line 0, column 0: legacy link for 445299, which is not a node: add a [[node]] with id = \"445299\" or correct `node`",
            "line 0, column 0: verify_window_s = 0 of the legacy link of 445281 is out of range: write a number of seconds from 1 to 2592000 (30 days)",
            "line 0, column 0: second [[legacy_link]] for 445281: a node has at most one legacy link; remove one",
            "line 0, column 0: water_fee is reported monthly (its schema says so), not per event: write cadence = \"monthly\"",
            "line 0, column 0: due_day = 29 is out of range for a monthly schedule: write the day of the following month by which a month is due, 1 to 28",
            "line 0, column 0: reporter 445203 of tax_arrears is not a node: add a [[node]] with id = \"445203\" or remove it from reporters",
            "line 0, column 0: second [[schedule]] for gas_fee: a category has one schedule; merge them",
            "line 0, column 0: unknown category \"no_such_category\": the known categories are water_fee, electricity_fee, gas_fee, admin_license, admin_penalty, admin_enforcement, tax_abnormal, tax_arrears, env_credit_rating, real_estate_registration, real_estate_mortgage, market_entity_registration, sci_tech_rd, agri_new_entity",
        ]
    );
}

#[test]
fn migrate_needs_a_parent_and_from_nodes_still_needs_parents() {
    let errors = Topology::from_parts(
        1,
        nodes(),
        vec![LegacyLink {
            migrate: true,
            ..LegacyLink::new(id("445200"))
        }],
        Vec::new(),
        Vec::new(),
    )
    .unwrap_err();
    assert_eq!(
        strings(errors),
        [
            "line 0, column 0: 445200 has migrate = true but no parent to move onto: add parent = \"440000\" to its [[node]] or set migrate = false"
        ]
    );
    // Without the legacy link Jieyang has no path, and cuts off its counties.
    let errors = Topology::from_nodes(1, nodes()).unwrap_err();
    assert_eq!(
        strings(errors),
        [
            "line 0, column 0: node 445200 (city) has no parent: add parent = \"440000\"; a city's parent is its province; or, if it sends straight to the national platform today, add a [[legacy_link]] with node = \"445200\"",
            "line 0, column 0: 2 nodes below 445200 have no path to the national platform 000000: 445202, 445281; fix the parent of 445200 first",
        ]
    );
}

#[test]
fn plan_and_refusal_display() {
    let v1 = Topology::from_parts(
        1,
        nodes(),
        vec![LegacyLink::new(id("445200"))],
        Vec::new(),
        Vec::new(),
    )
    .unwrap();
    let mut moved = nodes();
    moved[2].parent = Some(id("440000"));
    let v2 = Topology::from_parts(
        2,
        moved,
        vec![LegacyLink {
            migrate: true,
            ..LegacyLink::new(id("445200"))
        }],
        Vec::new(),
        Vec::new(),
    )
    .unwrap();
    let plan = topology::plan(&v1, &v2).unwrap();
    assert_eq!((plan.from_version, plan.to_version), (1, 2));
    assert_eq!(
        plan.steps.iter().map(|s| s.number).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    let text = plan.to_string();
    assert!(
        text.starts_with("plan from version 1 to version 2: 4 steps\n\n1. 445200 establishes its new path through 440000: "),
        "{text}"
    );
    assert!(text.ends_with("\n   before: the new path through 440000 stayed up for the whole rollback window of 300 s after cut-over"), "{text}");

    let refusal = topology::plan(&v2, &v1).unwrap_err();
    assert_eq!(refusal.step, 0);
    assert_eq!(
        refusal.to_string(),
        "refused (go from version 2 to version 1): the new version 1 does not raise the running version 2: set version = 3 or more (nodes refuse a version that is not higher than theirs)"
    );
}

#[test]
fn too_many_nodes() {
    let mut nodes = vec![node("000000", None, 1)];
    let mut add = |code: u32, parent: u32| {
        let index = nodes.len() as u32;
        let mut seed = [9u8; 32];
        seed[..4].copy_from_slice(&index.to_be_bytes());
        let id = NodeId::from_code(code).unwrap();
        nodes.push(Node {
            id,
            name: format!("区划{code:06}"),
            role: Role::of_id(id),
            parent: NodeId::from_code(parent),
            address: format!("10.0.{}.{}:7000", index / 250, index % 250)
                .parse()
                .unwrap(),
            public_key: NodeKey::from_seed(seed).public(),
        });
    };
    for province in [110_000, 120_000] {
        add(province, 0);
        for city in 1..=99 {
            let city = province + city * 100;
            add(city, province);
            for county in 1..=50 {
                add(city + county, city);
            }
        }
    }
    assert_eq!(nodes.len(), 10_101);
    assert_eq!(
        strings(Topology::from_nodes(1, nodes).unwrap_err()),
        ["line 0, column 0: the file has 10101 nodes, more than the limit of 10000"]
    );
}

fn line(reporter: &str, covers: &[&str], contact: Option<&str>) -> Allocation {
    Allocation {
        reporter: id(reporter),
        covers: covers.iter().map(|c| id(c)).collect(),
        data_source: "揭阳市水务集团有限公司".into(),
        responsible: "揭阳市发展改革局".into(),
        contact: contact.map(str::to_owned),
    }
}

/// A city that covers its districts owes the category in their place; the lookup finds its
/// line; the table renders and parses back.
#[test]
fn an_allocation_table_moves_a_category_to_the_covering_reporter() {
    let mut nodes = nodes();
    nodes[2].parent = Some(id("440000"));
    let water = Category::parse("water_fee").unwrap();
    let mut schedule = schedule("water_fee", Cadence::Monthly, 10, &[]);
    schedule.allocation = vec![
        line("445200", &["445202"], Some("0663-8xxxxxx")),
        line("445281", &[], None),
    ];
    let topology = Topology::from_parts(1, nodes, Vec::new(), Vec::new(), vec![schedule]).unwrap();
    let schedule = topology.schedule(&water).unwrap();
    assert_eq!(
        topology.reporters(schedule),
        [id("445281"), id("445200")],
        "the city reports, the district it covers does not"
    );
    let city = topology.allocation(&water, id("445200")).unwrap();
    assert_eq!(city.covers, [id("445202")]);
    assert_eq!(city.contact.as_deref(), Some("0663-8xxxxxx"));
    assert_eq!(
        topology.allocation(&water, id("445281")).unwrap().contact,
        None
    );
    assert!(topology.allocation(&water, id("445202")).is_none());
    assert_eq!(schedule.covered_by(id("445202")), Some(id("445200")));
    let gas = Category::parse("gas_fee").unwrap();
    assert!(topology.allocation(&gas, id("445200")).is_none());

    let text = topology.render();
    assert!(
        text.contains(
            "\n[[schedule.allocation]]\nreporter = \"445200\"\ncovers = [\"445202\"]\ndata_source = \"揭阳市水务集团有限公司\"\nresponsible = \"揭阳市发展改革局\"\ncontact = \"0663-8xxxxxx\"\n"
        ),
        "{text}"
    );
    assert_eq!(Topology::parse(&text).unwrap(), topology);

    // Explicit reporters: the table's reporters join them.
    let mut listed = topology.schedules()[0].clone();
    listed.reporters = vec![id("445281")];
    listed.allocation = vec![line("445200", &["445202"], None)];
    assert_eq!(topology.reporters(&listed), [id("445281"), id("445200")]);
}

#[test]
fn from_parts_checks_allocation_tables_without_positions() {
    let mut schedule = schedule("water_fee", Cadence::Monthly, 10, &["445202"]);
    schedule.allocation = vec![
        Allocation {
            data_source: " ".into(),
            contact: Some(String::new()),
            ..line("445200", &["445202", "445281"], None)
        },
        line("445281", &["445202"], None),
        line("445299", &[], None),
    ];
    let mut nodes = nodes();
    nodes[2].parent = Some(id("440000"));
    let errors =
        Topology::from_parts(1, nodes, Vec::new(), Vec::new(), vec![schedule]).unwrap_err();
    assert_eq!(
        strings(errors),
        [
            "line 0, column 0: allocation of 445200 for water_fee: data_source must not be empty: write the unit that provides the data, such as \"揭阳市水务集团有限公司\"",
            "line 0, column 0: allocation of 445200 for water_fee: contact must not be empty: write whom to call, such as a name and a telephone number, or remove `contact`",
            "line 0, column 0: the allocation table of water_fee names 445299, which is not a node: add a [[node]] with id = \"445299\" or correct `reporter`",
            "line 0, column 0: 445202 is covered by 445200 for water_fee but also listed in reporters: a covered node does not report itself; remove it from one of the two",
            "line 0, column 0: 445281 is covered by 445200 for water_fee but has its own line in the allocation table: a covered node does not report itself; remove it from covers or remove its line",
            "line 0, column 0: 445202 is covered by 445200 and by 445281 in the allocation table of water_fee: one reporter reports a node's data; remove one",
        ]
    );
}

/// A minimum-necessary profile made in code: fields come back in the schema's order, `profile`
/// finds it by category, `allows` answers per field, `render` writes it and parses back, and
/// `edited` keeps it when handed the admissions.
#[test]
fn profiles_are_indexed_and_round_trip() {
    let water = Category::parse("water_fee").unwrap();
    let gas = Category::parse("gas_fee").unwrap();
    let mut fields: Vec<String> = protocol::Registry::builtin()
        .get(&water)
        .unwrap()
        .needed_fields()
        .into_iter()
        .map(str::to_owned)
        .collect();
    fields.reverse();
    fields.push("late_fee".to_owned());
    let admissions = topology::Admissions {
        profiles: vec![topology::Profile {
            category: water.clone(),
            fields,
        }],
        ..Default::default()
    };
    let topology = Topology::from_parts_with(
        3,
        nodes(),
        vec![LegacyLink::new(id("445200"))],
        Vec::new(),
        Vec::new(),
        admissions,
    )
    .unwrap();
    let profile = topology.profile(&water).unwrap();
    assert_eq!(
        profile.fields.first().map(String::as_str),
        Some("subject_name")
    );
    assert_eq!(
        profile.fields[profile.fields.len() - 3..],
        ["late_fee", "source_unit", "source_unit_uscc"],
        "in the schema's order"
    );
    assert!(profile.allows("account_no"));
    assert!(profile.allows("late_fee"));
    assert!(!profile.allows("premises"));
    assert!(!profile.allows("contact_phone"));
    assert!(!profile.allows(""));
    assert_eq!(topology.profile(&gas), None);

    let text = topology.render();
    assert!(
        text.contains(
            "\n[[profile]]\ncategory = \"water_fee\"\nfields = [\n    \"subject_name\",\n"
        )
    );
    let again = Topology::parse(&text).unwrap();
    assert_eq!(again, topology);
    assert_eq!(again.render(), text, "render is canonical");

    let edited = topology
        .edited(4, nodes(), topology.admissions().clone())
        .unwrap();
    assert_eq!(edited.profile(&water), Some(profile));
}

/// A profile made in code obeys the file's rules: errors name the category and the field.
#[test]
fn profiles_from_code_are_checked() {
    let water = Category::parse("water_fee").unwrap();
    let admissions = topology::Admissions {
        profiles: vec![topology::Profile {
            category: water,
            fields: vec!["subject_name".to_owned(), "colour".to_owned()],
        }],
        ..Default::default()
    };
    let errors = strings(
        Topology::from_parts_with(
            1,
            nodes(),
            vec![LegacyLink::new(id("445200"))],
            Vec::new(),
            Vec::new(),
            admissions,
        )
        .unwrap_err(),
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("water_fee has no field `colour`")),
        "{errors:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("leaves out `account_no`") && e.contains("record key")),
        "{errors:#?}"
    );
}

/// A node's keys come back current first, then its old keys in file order, whoever else's
/// are listed between them; each node's assessment is its own (both looked up by node).
#[test]
fn keys_and_assessments_are_each_nodes_own() {
    use topology::{Admissions, Assessment, Date, KeyEnd, KeyState, OldKey};
    let old = |code: &str, n: u8, end: KeyEnd, at_ms: u64| OldKey {
        node: id(code),
        public_key: key(n),
        end,
        at_ms,
    };
    let assessed = |code: &str, year: u16| Assessment {
        node: id(code),
        assessor: "广东省网络安全等级保护测评中心".into(),
        reference: Some(format!("GD-{code}")),
        assessed_on: Date::new(year, 1, 1).unwrap(),
        valid_until: Date::new(year + 3, 12, 31).unwrap(),
    };
    let mut nodes = nodes();
    nodes[2].parent = Some(id("440000"));
    let admissions = Admissions {
        require_assessment: false,
        old_keys: vec![
            old("445202", 20, KeyEnd::Retired, 1_780_000_001_000),
            old("445281", 21, KeyEnd::Revoked, 1_780_000_002_000),
            old("445202", 22, KeyEnd::Revoked, 1_780_000_003_000),
        ],
        assessments: vec![
            assessed("445281", 2024),
            assessed("445202", 2025),
            assessed("445200", 2023),
        ],
        profiles: Vec::new(),
    };
    let topology =
        Topology::from_parts_with(1, nodes, Vec::new(), Vec::new(), Vec::new(), admissions)
            .unwrap();
    assert_eq!(
        topology.keys_of(id("445202")),
        vec![
            (key(4), KeyState::Current),
            (
                key(20),
                KeyState::Retired {
                    at_ms: 1_780_000_001_000
                }
            ),
            (
                key(22),
                KeyState::Revoked {
                    at_ms: 1_780_000_003_000
                }
            ),
        ]
    );
    assert_eq!(
        topology.keys_of(id("445281")),
        vec![
            (key(5), KeyState::Current),
            (
                key(21),
                KeyState::Revoked {
                    at_ms: 1_780_000_002_000
                }
            ),
        ]
    );
    assert_eq!(
        topology.keys_of(id("440000")),
        vec![(key(2), KeyState::Current)]
    );
    assert_eq!(topology.keys_of(id("445203")), Vec::new());
    for (code, year) in [("445281", 2024), ("445202", 2025), ("445200", 2023)] {
        assert_eq!(topology.assessment(id(code)), Some(&assessed(code, year)));
    }
    assert_eq!(topology.assessment(id("440000")), None);
}

/// `subtree` and `is_within` say what `path_to_national` says, for every pair of a province's
/// nodes and of the smallest file (the national platform alone), without building paths.
#[test]
fn subtrees_agree_with_paths() {
    let national = Topology::from_nodes(1, vec![node("000000", None, 1)]).unwrap();
    let guangdong = topology::generate(id("440000"), 20_000).unwrap();
    for topology in [&national, &guangdong] {
        let ids: Vec<NodeId> = topology.nodes().map(|n| n.id).collect();
        for &ancestor in &ids {
            let below: Vec<NodeId> = ids
                .iter()
                .copied()
                .filter(|&id| topology.path_to_national(id).contains(&ancestor))
                .collect();
            assert_eq!(topology.subtree(ancestor), below, "below {ancestor}");
            for &id in &ids {
                assert_eq!(
                    topology.is_within(id, ancestor),
                    below.contains(&id),
                    "{id} within {ancestor}"
                );
            }
        }
        assert_eq!(
            topology.subtree(id("445203")).len(),
            usize::from(topology.len() > 1)
        );
        assert!(!topology.is_within(id("999999"), NodeId::NATIONAL));
        assert!(!topology.is_within(NodeId::NATIONAL, id("999999")));
    }
    assert_eq!(guangdong.subtree(NodeId::NATIONAL).len(), guangdong.len());
}
