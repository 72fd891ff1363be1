//! Topology files in, expected problems out: every validation rule with the exact text and
//! position the operator sees, the valid Jieyang topology, and the round trip of `render`.
//!
//! `KEYn` in a text stands for the hex public key of `NodeKey::from_seed([n; 32])`.

use protocol::{NodeId, NodeKey, PublicKey};
use topology::{Node, Role, Topology};

fn key(n: u8) -> PublicKey {
    NodeKey::from_seed([n; 32]).public()
}

/// Replaces `KEY1` … `KEY20` with real public keys.
fn with_keys(text: &str) -> String {
    let mut text = text.to_owned();
    for n in (1..=20).rev() {
        text = text.replace(&format!("KEY{n}"), &key(n).to_hex());
    }
    text
}

fn parse(text: &str) -> Topology {
    match Topology::parse(&with_keys(text)) {
        Ok(topology) => topology,
        Err(errors) => panic!("expected a valid topology, got {errors:#?}"),
    }
}

fn errors_as_strings(text: &str) -> Vec<String> {
    match Topology::parse(&with_keys(text)) {
        Ok(_) => panic!("expected errors, the topology was accepted"),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

fn id(text: &str) -> NodeId {
    NodeId::parse(text).unwrap()
}

fn ids<'a>(nodes: impl Iterator<Item = &'a Node>) -> Vec<String> {
    nodes.map(|node| node.id.to_string()).collect()
}

/// The national platform and Guangdong: 16 lines, so a node appended after a blank line has
/// its `[[node]]` on line 18, `id` on 19, `name` 20, `role` 21, `parent` 22, `address` 23,
/// `public_key` 24.
macro_rules! base {
    () => {
        r#"version = 1

[[node]]
id = "000000"
name = "全国中小企业融资综合信用服务平台"
role = "national"
address = "127.0.0.1:7000"
public_key = "KEY1"

[[node]]
id = "440000"
name = "广东省"
role = "province"
parent = "000000"
address = "127.0.0.1:7001"
public_key = "KEY2"
"#
    };
}

const JIEYANG: &str = concat!(
    base!(),
    r#"
[[node]]
id = "445200"
name = "揭阳市"
role = "city"
parent = "440000"
address = "127.0.0.1:7002"
public_key = "KEY3"

[[node]]
id = "445202"
name = "榕城区"
role = "county"
parent = "445200"
address = "127.0.0.1:7003"
public_key = "KEY4"

[[node]]
id = "445203"
name = "揭东区"
role = "county"
parent = "445200"
address = "127.0.0.1:7004"
public_key = "KEY5"

[[node]]
id = "445222"
name = "揭西县"
role = "county"
parent = "445200"
address = "127.0.0.1:7005"
public_key = "KEY6"

[[node]]
id = "445224"
name = "惠来县"
role = "county"
parent = "445200"
address = "[::1]:7006"
public_key = "KEY7"

[[node]]
id = "445281"
name = "普宁市"
role = "county"
parent = "445200"
address = "127.0.0.1:7007"
public_key = "KEY8"
"#
);

#[test]
fn jieyang_is_valid() {
    let topology = parse(JIEYANG);
    assert_eq!(topology.version, 1);
    assert_eq!(topology.len(), 8);
    assert_eq!(
        ids(topology.nodes()),
        [
            "000000", "440000", "445200", "445202", "445203", "445222", "445224", "445281"
        ]
    );
    let puning = topology.node(id("445281")).unwrap();
    assert_eq!(puning.name, "普宁市");
    assert_eq!(puning.role, Role::County);
    assert_eq!(puning.parent, Some(id("445200")));
    assert_eq!(puning.address, "127.0.0.1:7007".parse().unwrap());
    assert_eq!(puning.public_key, key(8));
    assert_eq!(
        topology.node(id("445224")).unwrap().address,
        "[::1]:7006".parse().unwrap()
    );

    assert_eq!(topology.national().name, "全国中小企业融资综合信用服务平台");
    assert_eq!(topology.parent_of(id("445281")).unwrap().name, "揭阳市");
    assert_eq!(
        topology.parent_of(id("440000")).unwrap().id,
        NodeId::NATIONAL
    );
    assert!(topology.parent_of(NodeId::NATIONAL).is_none());
    assert!(topology.parent_of(id("445300")).is_none());
    assert_eq!(
        ids(topology.children_of(id("445200"))),
        ["445202", "445203", "445222", "445224", "445281"]
    );
    assert_eq!(ids(topology.children_of(NodeId::NATIONAL)), ["440000"]);
    assert!(topology.children_of(id("445281")).next().is_none());
    assert!(topology.children_of(id("445300")).next().is_none());
    assert_eq!(topology.node_by_key(&key(3)).unwrap().id, id("445200"));
    assert!(topology.node_by_key(&key(9)).is_none());
    assert_eq!(
        topology.path_to_national(id("445281")),
        [id("445281"), id("445200"), id("440000"), NodeId::NATIONAL]
    );
    assert_eq!(
        topology.path_to_national(NodeId::NATIONAL),
        [NodeId::NATIONAL]
    );
    assert!(topology.path_to_national(id("445300")).is_empty());
}

#[test]
fn render_round_trips() {
    let topology = parse(JIEYANG);
    let text = topology.render();
    let again = Topology::parse(&text).unwrap();
    assert_eq!(again, topology);
    assert_eq!(again.render(), text, "render is canonical");
    assert!(text.starts_with("version = 1\n\n[[node]]\nid = \"000000\"\n"));
    assert!(text.contains("name = \"普宁市\"\n"), "{text}");

    let from_nodes = Topology::from_nodes(1, topology.nodes().cloned().collect()).unwrap();
    assert_eq!(from_nodes, topology);
}

#[test]
fn render_escapes_names() {
    let mut nodes: Vec<Node> = parse(base!()).nodes().cloned().collect();
    nodes[1].name = r#"广东省 "粤" \ 'Guǎngdōng' ＃1"#.to_owned();
    let topology = Topology::from_nodes(7, nodes).unwrap();
    let again = Topology::parse(&topology.render()).unwrap();
    assert_eq!(again, topology);
    assert_eq!(again.version, 7);
}

#[test]
fn inline_tables_and_columns_in_characters() {
    // Columns count characters, so the role after a Chinese name is where an editor shows it.
    let text = r#"version = 1
node = [
  { id = "000000", name = "全国平台", role = "nation", address = "127.0.0.1:7000", public_key = "KEY1" },
]
"#;
    assert_eq!(
        errors_as_strings(text),
        [r#"line 3, column 42: role "nation" must be one of county, city, province, national"#]
    );
}

#[test]
fn syntax_errors_are_all_reported_alone() {
    let text = r#"version = 1
version = 2

[[node]]
id = "000000
name = 全国
"#;
    assert_eq!(
        errors_as_strings(text),
        [
            "line 2, column 1: TOML syntax: duplicate key `version`: a key appears once in each table",
            "line 5, column 13: TOML syntax: invalid basic string, expected `\"`",
            "line 6, column 8: TOML syntax: string values must be quoted, expected literal string",
        ]
    );
}

#[test]
fn unknown_missing_and_mistyped_keys() {
    let text = r#"version = 1
versoin = 2

[[node]]
id = "000000"
name = "全国平台"
rol = "national"
adress = "127.0.0.1:7000"
public_key = "KEY1"
colour = "red"

[[node]]
id = 440000
name = "广东省"
role = "province"
parent = 0
address = "127.0.0.1:7001"
public_key = ["KEY2"]
"#;
    assert_eq!(
        errors_as_strings(text),
        [
            "line 2, column 1: unknown key `versoin` at the top level of the file: did you mean `version`? the keys here are `version`, `require_assessment`, `revoked_keys`, `node`, `old_key`, `legacy_link`, `assessment`, `schedule`, `profile`",
            "line 4, column 1: this [[node]] has no `role`: add role = \"county\" (county, city, province or national)",
            "line 4, column 1: this [[node]] has no `address`: add address = \"127.0.0.1:7000\" (the IP address and port the node listens on)",
            "line 7, column 1: unknown key `rol` in [[node]]: did you mean `role`? the keys here are `id`, `name`, `role`, `parent`, `address`, `public_key`",
            "line 8, column 1: unknown key `adress` in [[node]]: did you mean `address`? the keys here are `id`, `name`, `role`, `parent`, `address`, `public_key`",
            "line 10, column 1: unknown key `colour` in [[node]]: the keys here are `id`, `name`, `role`, `parent`, `address`, `public_key`",
            "line 13, column 6: `id` must be a string in quotes, found an integer: write id = \"445281\" (the six-digit division code; \"000000\" for the national platform)",
            "line 16, column 10: `parent` must be a string in quotes, found an integer: write parent = \"445200\" (the id of the node above this one)",
            "line 18, column 14: `public_key` must be a string in quotes, found an array: write public_key = \"...\" (the 64 hexadecimal characters `credit-node init` printed on that node)",
        ]
    );
}

#[test]
fn version_must_be_a_positive_whole_number() {
    let without = base!().replacen("version = 1\n", "\n", 1);
    assert_eq!(
        errors_as_strings(&without),
        [
            "line 1, column 1: the file has no version: add `version = 1` as its first line, and raise it on every edit"
        ]
    );
    let zero = base!().replacen("version = 1", "version = 0", 1);
    assert_eq!(
        errors_as_strings(&zero),
        ["line 1, column 11: version must be 1 or more: start at 1 and raise it on every edit"]
    );
    for bad in ["-1", "\"1\"", "1.5"] {
        let text = base!().replacen("version = 1", &format!("version = {bad}"), 1);
        assert_eq!(
            errors_as_strings(&text),
            [
                "line 1, column 11: version must be a whole number of 1 or more, such as `version = 1`, raised on every edit"
            ],
            "{bad}"
        );
    }
    assert_eq!(
        parse(&base!().replacen("version = 1", "version = 0x10", 1)).version,
        16
    );
}

#[test]
fn empty_file() {
    assert_eq!(
        errors_as_strings(""),
        [
            "line 1, column 1: the file has no version: add `version = 1` as its first line, and raise it on every edit",
            "line 1, column 1: the file declares no nodes: add a [[node]] for the national platform 000000 and one for each node of the network",
        ]
    );
}

#[test]
fn node_must_be_an_array_of_tables() {
    let text = r#"version = 1

[node]
id = "000000"
"#;
    assert_eq!(
        errors_as_strings(text),
        [
            "line 1, column 1: the file declares no nodes: add a [[node]] for the national platform 000000 and one for each node of the network",
            "line 3, column 1: `node` must be an array of tables, found a table: write each node under its own [[node]] header (two brackets)",
        ]
    );
    let text = "version = 1\nnode = [1]\n";
    assert_eq!(
        errors_as_strings(text),
        [
            "line 1, column 1: the file declares no nodes: add a [[node]] for the national platform 000000 and one for each node of the network",
            "line 2, column 9: each node must be a table, found an integer: write each node as a [[node]] table",
        ]
    );
}

#[test]
fn ids_must_be_division_codes_and_unique() {
    let text = concat!(
        base!(),
        r#"
[[node]]
id = "44520"
name = "揭阳市"
role = "city"
parent = "440000"
address = "127.0.0.1:7002"
public_key = "KEY3"

[[node]]
id = "440000"
name = "广东省（重复）"
role = "province"
parent = "000000"
address = "127.0.0.1:7003"
public_key = "KEY4"
"#
    );
    assert_eq!(
        errors_as_strings(text),
        [
            r#"line 19, column 6: node id "44520" must be six digits (a GB/T 2260 division code such as 445281, or 000000 for the national platform)"#,
            "line 27, column 6: node id 440000 is declared twice (first on line 11): each node appears once; remove one [[node]] or correct its id",
        ]
    );
}

#[test]
fn roles_must_be_known_and_fit_the_code() {
    let text = concat!(
        base!(),
        r#"
[[node]]
id = "445200"
name = "揭阳市"
role = "prefecture"
parent = "440000"
address = "127.0.0.1:7002"
public_key = "KEY3"

[[node]]
id = "445281"
name = "普宁市"
role = "city"
parent = "440000"
address = "127.0.0.1:7003"
public_key = "KEY4"
"#
    );
    assert_eq!(
        errors_as_strings(text),
        [
            r#"line 21, column 8: role "prefecture" must be one of county, city, province, national"#,
            r#"line 29, column 8: node 445281 has role "city" but its code is shaped like a county: national is 000000, a province XX0000, a city XXXX00, a county any other code; fix the role or the id"#,
        ]
    );
}

#[test]
fn parents_must_exist_and_sit_higher() {
    let text = concat!(
        base!(),
        r#"
[[node]]
id = "445200"
name = "揭阳市"
role = "city"
parent = "000000"
address = "127.0.0.1:7002"
public_key = "KEY3"

[[node]]
id = "445202"
name = "榕城区"
role = "county"
parent = "445203"
address = "127.0.0.1:7003"
public_key = "KEY4"

[[node]]
id = "445203"
name = "揭东区"
role = "county"
parent = "445300"
address = "127.0.0.1:7004"
public_key = "KEY5"

[[node]]
id = "445222"
name = "揭西县"
role = "county"
address = "127.0.0.1:7005"
public_key = "KEY6"

[[node]]
id = "445224"
name = "惠来县"
role = "county"
parent = "4452"
address = "127.0.0.1:7006"
public_key = "KEY7"
"#
    );
    assert_eq!(
        errors_as_strings(text),
        [
            "line 22, column 10: node 445200 (city) cannot have parent 000000 (national): a city's parent is its province",
            "line 30, column 10: node 445202 (county) cannot have parent 445203 (county): a county's parent is its city, or its province for a county-level unit directly under a province",
            "line 38, column 10: parent 445300 of node 445203 is not in the topology: add a [[node]] with id = \"445300\" or correct the parent",
            "line 38, column 10: 1 node below 445203 has no path to the national platform 000000: 445202; fix the parent of 445203 first",
            "line 42, column 1: node 445222 (county) has no parent: add parent = \"445200\"; a county's parent is its city, or its province for a county-level unit directly under a province; or, if it sends straight to the national platform today, add a [[legacy_link]] with node = \"445222\"",
            r#"line 53, column 10: parent: node id "4452" must be six digits (a GB/T 2260 division code such as 445281, or 000000 for the national platform)"#,
        ]
    );
}

#[test]
fn counties_may_hang_directly_under_a_province() {
    // Chongqing's districts and Hainan's county-level cities have no city above them.
    let text = r#"version = 1

[[node]]
id = "000000"
name = "全国平台"
role = "national"
address = "127.0.0.1:7000"
public_key = "KEY1"

[[node]]
id = "460000"
name = "海南省"
role = "province"
parent = "000000"
address = "127.0.0.1:7001"
public_key = "KEY2"

[[node]]
id = "469001"
name = "五指山市"
role = "county"
parent = "460000"
address = "127.0.0.1:7002"
public_key = "KEY3"
"#;
    let topology = parse(text);
    assert_eq!(
        topology.path_to_national(id("469001")),
        [id("469001"), id("460000"), NodeId::NATIONAL]
    );
}

#[test]
fn the_national_platform_has_no_parent_and_others_need_one() {
    let text = r#"version = 1

[[node]]
id = "000000"
name = "全国平台"
role = "national"
parent = "440000"
address = "127.0.0.1:7000"
public_key = "KEY1"

[[node]]
id = "440000"
name = "广东省"
role = "province"
address = "127.0.0.1:7001"
public_key = "KEY2"
"#;
    assert_eq!(
        errors_as_strings(text),
        [
            r#"line 7, column 10: the national platform 000000 has no parent: remove parent = "440000""#,
            r#"line 11, column 1: node 440000 (province) has no parent: add parent = "000000"; a province's parent is the national platform 000000"#,
        ]
    );
}

#[test]
fn parents_stay_in_their_province() {
    let text = concat!(
        base!(),
        r#"
[[node]]
id = "450000"
name = "广西壮族自治区"
role = "province"
parent = "000000"
address = "127.0.0.1:7002"
public_key = "KEY3"

[[node]]
id = "445200"
name = "揭阳市"
role = "city"
parent = "450000"
address = "127.0.0.1:7003"
public_key = "KEY4"

[[node]]
id = "450102"
name = "兴宁区"
role = "county"
parent = "445200"
address = "127.0.0.1:7004"
public_key = "KEY5"
"#
    );
    assert_eq!(
        errors_as_strings(text),
        [
            "line 30, column 10: node 445200 (province 44) has parent 450000 in another province: a city or county hangs under a node of its own province; fix the parent or the id",
            "line 38, column 10: node 450102 (province 45) has parent 445200 in another province: a city or county hangs under a node of its own province; fix the parent or the id",
        ]
    );
}

#[test]
fn cycles_are_reported_once_with_what_they_cut_off() {
    let text = concat!(
        base!(),
        r#"
[[node]]
id = "445200"
name = "揭阳市"
role = "city"
parent = "445281"
address = "127.0.0.1:7002"
public_key = "KEY3"

[[node]]
id = "445281"
name = "普宁市"
role = "county"
parent = "445200"
address = "127.0.0.1:7003"
public_key = "KEY4"

[[node]]
id = "445202"
name = "榕城区"
role = "county"
parent = "445200"
address = "127.0.0.1:7004"
public_key = "KEY5"

[[node]]
id = "445100"
name = "潮州市"
role = "city"
parent = "445100"
address = "127.0.0.1:7005"
public_key = "KEY6"
"#
    );
    assert_eq!(
        errors_as_strings(text),
        [
            "line 22, column 10: node 445200 (city) cannot have parent 445281 (county): a city's parent is its province",
            "line 22, column 10: cycle in parent links: 445200 → 445281 → 445200: a chain of parents must end at the national platform 000000; fix one of these parents",
            "line 22, column 10: 1 node below the cycle through 445200 has no path to the national platform 000000: 445202; fix the cycle first",
            "line 46, column 10: cycle in parent links: 445100 → 445100: a chain of parents must end at the national platform 000000; fix one of these parents",
        ]
    );
}

#[test]
fn exactly_one_national_node() {
    let none = r#"version = 1

[[node]]
id = "440000"
name = "广东省"
role = "province"
parent = "000000"
address = "127.0.0.1:7001"
public_key = "KEY2"

[[node]]
id = "445200"
name = "揭阳市"
role = "city"
parent = "440000"
address = "127.0.0.1:7002"
public_key = "KEY3"
"#;
    assert_eq!(
        errors_as_strings(none),
        [
            r#"line 1, column 1: no national node: add the national platform as a [[node]] with id = "000000" and role = "national""#,
            r#"line 7, column 10: parent 000000 of node 440000 is not in the topology: add a [[node]] with id = "000000" or correct the parent"#,
            "line 7, column 10: 1 node below 440000 has no path to the national platform 000000: 445200; fix the parent of 440000 first",
        ]
    );

    let two = concat!(
        base!(),
        r#"
[[node]]
id = "110000"
name = "北京市"
role = "national"
address = "127.0.0.1:7002"
public_key = "KEY3"
"#
    );
    assert_eq!(
        errors_as_strings(two),
        [
            r#"line 21, column 8: node 110000 has role "national" but its code is shaped like a province: national is 000000, a province XX0000, a city XXXX00, a county any other code; fix the role or the id"#,
            "line 21, column 8: node 110000 is a second national node (the first is node 000000 (line 6)): the network has exactly one national platform, 000000",
        ]
    );
}

#[test]
fn public_keys_must_be_ed25519_and_unique() {
    let text = concat!(
        base!(),
        r#"
[[node]]
id = "445200"
name = "揭阳市"
role = "city"
parent = "440000"
address = "127.0.0.1:7002"
public_key = "KEY2"

[[node]]
id = "445202"
name = "榕城区"
role = "county"
parent = "445200"
address = "127.0.0.1:7003"
public_key = "0202020202020202020202020202020202020202020202020202020202020202"

[[node]]
id = "445203"
name = "揭东区"
role = "county"
parent = "445200"
address = "127.0.0.1:7004"
public_key = "not hex"
"#
    );
    assert_eq!(
        errors_as_strings(text),
        [
            "line 24, column 14: public key of node 445200 is already the key of node 440000 (line 16): every node has its own key; paste the key `credit-node init` printed on this node",
            r#"line 32, column 14: public key "0202020202020202020202020202020202020202020202020202020202020202" is not a valid Ed25519 point"#,
            r#"line 40, column 14: public key "not hex" must be 64 hexadecimal characters (an Ed25519 key, as printed by `credit-node init`)"#,
        ]
    );
}

#[test]
fn addresses_must_be_socket_addresses_and_unique() {
    let text = concat!(
        base!(),
        r#"
[[node]]
id = "445200"
name = "揭阳市"
role = "city"
parent = "440000"
address = "127.0.0.1:7001"
public_key = "KEY3"

[[node]]
id = "445202"
name = "榕城区"
role = "county"
parent = "445200"
address = "jieyang.example:7003"
public_key = "KEY4"

[[node]]
id = "445203"
name = "揭东区"
role = "county"
parent = "445200"
address = "127.0.0.1"
public_key = "KEY5"

[[node]]
id = "445222"
name = "揭西县"
role = "county"
parent = "445200"
address = "[::1]:0"
public_key = "KEY6"
"#
    );
    assert_eq!(
        errors_as_strings(text),
        [
            "line 23, column 11: address 127.0.0.1:7001 of node 445200 is already the address of node 440000 (line 15): every node listens on its own address",
            r#"line 31, column 11: address "jieyang.example:7003" must be an IP address and port, such as 127.0.0.1:7000 or [::1]:7000 (host names are not looked up)"#,
            r#"line 39, column 11: address "127.0.0.1" must be an IP address and port, such as 127.0.0.1:7000 or [::1]:7000 (host names are not looked up)"#,
            "line 47, column 11: address [::1]:0 has port 0: give the port the node listens on, such as [::1]:7000",
        ]
    );
}

#[test]
fn names_must_be_present_and_on_one_line() {
    let text = base!()
        .replacen("name = \"广东省\"", "name = \"  \"", 1)
        .replacen(
            "name = \"全国中小企业融资综合信用服务平台\"",
            "name = \"全国\\n平台\"",
            1,
        );
    assert_eq!(
        errors_as_strings(&text),
        [
            "line 5, column 8: name must not contain control characters such as line breaks or tabs",
            "line 12, column 8: name must not be empty: write the division's name, such as \"揭阳市\"",
        ]
    );
}

#[test]
fn from_nodes_validates_without_positions() {
    let node = |code: &str, role, parent: Option<&str>, port: u16, seed: u8| Node {
        id: id(code),
        name: format!("节点{code}"),
        role,
        parent: parent.map(id),
        address: format!("127.0.0.1:{port}").parse().unwrap(),
        public_key: key(seed),
    };
    let nodes = vec![
        node("000000", Role::National, None, 7000, 1),
        node("440000", Role::Province, Some("000000"), 7001, 2),
        node("445200", Role::City, Some("440000"), 7001, 2),
        node("445281", Role::County, Some("445300"), 7003, 4),
        Node {
            public_key: PublicKey([2; 32]),
            name: String::new(),
            ..node("445202", Role::County, Some("445200"), 7004, 5)
        },
    ];
    let errors: Vec<String> = Topology::from_nodes(0, nodes)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        errors,
        [
            "line 0, column 0: node 445202: name must not be empty: write the division's name, such as \"揭阳市\"",
            "line 0, column 0: node 445202: public key \"0202020202020202020202020202020202020202020202020202020202020202\" is not a valid Ed25519 point",
            "line 0, column 0: version must be 1 or more: start at 1 and raise it on every edit",
            "line 0, column 0: public key of node 445200 is already the key of node 440000: every node has its own key; paste the key `credit-node init` printed on this node",
            "line 0, column 0: address 127.0.0.1:7001 of node 445200 is already the address of node 440000: every node listens on its own address",
            "line 0, column 0: parent 445300 of node 445281 is not in the topology: add a [[node]] with id = \"445300\" or correct the parent",
        ]
    );
}

#[test]
fn windows_line_endings_and_byte_order_mark() {
    let text = format!("\u{feff}{}", JIEYANG.replace('\n', "\r\n"));
    assert_eq!(parse(&text), parse(JIEYANG));
    let bad =
        format!("\u{feff}{}", base!().replace('\n', "\r\n")).replacen("\"广东省\"", "\"\"", 1);
    assert_eq!(
        errors_as_strings(&bad),
        [
            "line 12, column 8: name must not be empty: write the division's name, such as \"揭阳市\""
        ]
    );
    let zero = format!("\u{feff}{}", base!()).replacen("version = 1", "version = 0", 1);
    assert_eq!(
        errors_as_strings(&zero),
        ["line 1, column 11: version must be 1 or more: start at 1 and raise it on every edit"]
    );
}

#[test]
fn a_nation_sized_topology_round_trips() {
    let mut nodes = Vec::new();
    let mut port = 10_000u16;
    let mut add = |code: u32, role, parent: Option<u32>| {
        let mut seed = [7u8; 32];
        seed[..4].copy_from_slice(&code.to_be_bytes());
        port += 1;
        nodes.push(Node {
            id: NodeId::from_code(code).unwrap(),
            name: format!("区划{code:06}"),
            role,
            parent: parent.map(|parent| NodeId::from_code(parent).unwrap()),
            address: format!("10.0.{}.{}:{port}", code % 250, code % 7)
                .parse()
                .unwrap(),
            public_key: NodeKey::from_seed(seed).public(),
        });
    };
    add(0, Role::National, None);
    for province in 11..42 {
        let province = province * 10_000;
        add(province, Role::Province, Some(0));
        for city in 1..=10 {
            let city = province + city * 100;
            add(city, Role::City, Some(province));
            for county in 1..=10 {
                add(city + county, Role::County, Some(city));
            }
        }
    }
    let topology = Topology::from_nodes(3, nodes).unwrap();
    assert_eq!(topology.len(), 1 + 31 * (1 + 10 * 11));
    let again = Topology::parse(&topology.render()).unwrap();
    assert_eq!(again, topology);
    assert_eq!(
        topology.path_to_national(id("410910")),
        [id("410910"), id("410900"), id("410000"), NodeId::NATIONAL]
    );
}
