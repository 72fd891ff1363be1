//! The topology file: which nodes make up the credit network, how they hang together
//! (county → city → province → national) and how to reach and authenticate each of them.
//!
//! [`Topology::parse`] turns the operator's TOML into a [`Topology`] or into *every* problem
//! it has, each with the 1-based line and column of the offending value and a message that says
//! what to change. A `Topology` that exists is valid: exactly one national platform `000000`,
//! every other node with a known parent of a strictly higher role in its own province, no
//! cycles, so every node has a path to the national platform; ids, public keys and addresses
//! are unique.
//!
//! **Invariant:** pure — no IO, no files, no clock. The node reads the file and hands the text
//! in; a rejected file changes nothing.
//!
//! # File format
//!
//! ```toml
//! version = 1          # raise it on every edit; a node refuses to go back to a lower version
//!
//! [[node]]
//! id = "000000"                        # GB/T 2260 division code; 000000 is the national platform
//! name = "全国中小企业融资综合信用服务平台"
//! role = "national"                    # county | city | province | national
//! address = "127.0.0.1:7000"           # IP address and port the node listens on ([::1]:7000 for IPv6)
//! public_key = "<64 hex characters>"   # Ed25519, as printed by `credit-node init`
//!
//! [[node]]
//! id = "440000"
//! name = "广东省"
//! role = "province"
//! parent = "000000"                    # every node but the national platform has one
//! address = "127.0.0.1:7001"
//! public_key = "..."
//! ```
//!
//! The role must fit the code's shape: national is `000000`, a province `XX0000`, a city
//! `XXXX00`, a county anything else. A county's parent is its city, or its province for a
//! county-level unit directly under a province (Chongqing, Hainan); a city's parent is its
//! province; a province's parent is the national platform. Parent and child share the first
//! two digits (the province). Legacy direct links to the national platform are not parents;
//! they get their own section in a later version of the format.
//!
//! # Why the file is walked, not derived with serde
//!
//! `#[derive(Deserialize)]` with `deny_unknown_fields` stops at the first unknown key, missing
//! key or wrong type, and the operator would fix one typo per reload. The reader instead walks
//! the spanned document (`toml::de::DeTable`, every key and value a `toml::Spanned`) against a
//! list of known keys per table, so it reports every unknown key (with a "did you mean"),
//! every missing key and every wrong type in one pass. Unknown keys are refused exactly as
//! `deny_unknown_fields` would. A new section (`[[legacy_link]]`, `revoked_keys`,
//! `[[schedule]]`) is one more name in the reader's list of top-level keys and one more reader
//! function; files without it stay valid.

mod read;
mod validate;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;

use protocol::NodeId;
use protocol::PublicKey;
use protocol::ids::DivisionLevel;

/// At most this many nodes in one file. The whole nation is about 3,200 divisions (31
/// provinces, some 330 cities, some 2,850 counties); the bound leaves room and keeps a
/// malformed or hostile file from growing the indexes without end.
pub const NODES_MAX: usize = 10_000;

/// At most this many characters in a node's name.
pub const NAME_CHARS_MAX: usize = 100;

/// What a node is in the hierarchy. Ordered by level: `County < City < Province < National`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    County,
    City,
    Province,
    National,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::County, Role::City, Role::Province, Role::National];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::County => "county",
            Role::City => "city",
            Role::Province => "province",
            Role::National => "national",
        }
    }

    /// The role a division code implies by its shape (`000000`, `XX0000`, `XXXX00`, else county).
    pub fn of_id(id: NodeId) -> Role {
        match id.level() {
            DivisionLevel::National => Role::National,
            DivisionLevel::Province => Role::Province,
            DivisionLevel::City => Role::City,
            DivisionLevel::County => Role::County,
        }
    }

    /// Whether a node of this role may hang under a node of role `parent`.
    pub fn may_have_parent(self, parent: Role) -> bool {
        matches!(
            (self, parent),
            (Role::County, Role::City | Role::Province)
                | (Role::City, Role::Province)
                | (Role::Province, Role::National)
        )
    }

    /// The rule [`Role::may_have_parent`] applies, in words, for error messages.
    pub fn parent_rule(self) -> &'static str {
        match self {
            Role::County => {
                "a county's parent is its city, or its province for a county-level unit directly under a province"
            }
            Role::City => "a city's parent is its province",
            Role::Province => "a province's parent is the national platform 000000",
            Role::National => "the national platform has no parent",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not one of `county`, `city`, `province`, `national`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("role {0:?} must be one of county, city, province, national")]
pub struct UnknownRole(pub String);

impl std::str::FromStr for Role {
    type Err = UnknownRole;
    fn from_str(text: &str) -> Result<Role, UnknownRole> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == text)
            .ok_or_else(|| UnknownRole(text.to_owned()))
    }
}

/// One node of the network as the topology file declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: NodeId,
    pub name: String,
    pub role: Role,
    /// `None` only for the national platform.
    pub parent: Option<NodeId>,
    /// Where the node listens; peers connect here.
    pub address: SocketAddr,
    /// The node's Ed25519 identity key; its TLS certificate and signatures must match it.
    pub public_key: PublicKey,
}

/// One problem of a topology, at the 1-based line and column of the offending value (line 0
/// when the topology did not come from a file, see [`Topology::from_nodes`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct TopologyError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// A validated topology: nodes in file order, indexed by id, by key and by parent.
#[derive(Clone)]
pub struct Topology {
    /// Raised by the operator on every edit; a node refuses to go back to a lower version.
    pub version: u64,
    nodes: Vec<Node>,
    by_id: HashMap<NodeId, usize>,
    by_key: HashMap<PublicKey, usize>,
    /// Children of each node, in file order.
    children: HashMap<NodeId, Vec<usize>>,
}

impl Topology {
    /// Parses and validates a topology file. On failure returns every problem found, ordered by
    /// position. TOML syntax errors are reported alone: what follows a syntax error cannot be
    /// trusted enough to validate.
    pub fn parse(text: &str) -> Result<Topology, Vec<TopologyError>> {
        let (draft, errors) = read::read(text)?;
        validate::validate(draft, errors)
    }

    /// Builds a topology from nodes made in code (generators, tests), under the same rules as
    /// [`Topology::parse`]. Errors have line and column 0 and name the node instead.
    pub fn from_nodes(version: u64, nodes: Vec<Node>) -> Result<Topology, Vec<TopologyError>> {
        let (draft, errors) = validate::draft_from_nodes(version, nodes);
        validate::validate(draft, errors)
    }

    /// Assembles the indexes. The caller has validated `nodes`.
    fn assemble(version: u64, nodes: Vec<Node>) -> Topology {
        let by_id: HashMap<NodeId, usize> = nodes
            .iter()
            .enumerate()
            .map(|(index, node)| (node.id, index))
            .collect();
        let by_key: HashMap<PublicKey, usize> = nodes
            .iter()
            .enumerate()
            .map(|(index, node)| (node.public_key, index))
            .collect();
        let mut children: HashMap<NodeId, Vec<usize>> = HashMap::new();
        for (index, node) in nodes.iter().enumerate() {
            if let Some(parent) = node.parent {
                children.entry(parent).or_default().push(index);
            }
        }
        assert_eq!(by_id.len(), nodes.len(), "validated ids are unique");
        assert_eq!(by_key.len(), nodes.len(), "validated keys are unique");
        Topology {
            version,
            nodes,
            by_id,
            by_key,
            children,
        }
    }

    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.by_id.get(&id).map(|&index| &self.nodes[index])
    }

    /// All nodes, in file order.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: a valid topology holds at least the national platform.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.by_id.contains_key(&id)
    }

    /// The national platform.
    pub fn national(&self) -> &Node {
        self.node(NodeId::NATIONAL)
            .expect("a valid topology has the national platform")
    }

    /// The parent of `id`; `None` for the national platform and for unknown ids.
    pub fn parent_of(&self, id: NodeId) -> Option<&Node> {
        self.node(id)?.parent.and_then(|parent| self.node(parent))
    }

    /// The nodes whose parent is `id`, in file order.
    pub fn children_of(&self, id: NodeId) -> impl Iterator<Item = &Node> {
        self.children
            .get(&id)
            .into_iter()
            .flatten()
            .map(|&index| &self.nodes[index])
    }

    /// The node that owns this identity key.
    pub fn node_by_key(&self, key: &PublicKey) -> Option<&Node> {
        self.by_key.get(key).map(|&index| &self.nodes[index])
    }

    /// `id`, its parent, its parent's parent, …, ending with `000000`. Empty if `id` is not in
    /// the topology.
    pub fn path_to_national(&self, id: NodeId) -> Vec<NodeId> {
        let mut path = Vec::new();
        let mut current = self.node(id);
        while let Some(node) = current {
            path.push(node.id);
            assert!(
                path.len() <= self.nodes.len(),
                "a validated topology has no cycles"
            );
            current = node.parent.and_then(|parent| self.node(parent));
        }
        assert!(
            path.is_empty() || path.last() == Some(&NodeId::NATIONAL),
            "a validated topology leads every node to the national platform"
        );
        path
    }

    /// The canonical text of this topology: `version`, then one `[[node]]` table per node in
    /// order, keys in the documented order. Parses back to an equal topology.
    pub fn render(&self) -> String {
        let mut out = format!("version = {}\n", self.version);
        for node in &self.nodes {
            out.push_str("\n[[node]]\n");
            out.push_str(&format!("id = \"{}\"\n", node.id));
            out.push_str(&format!("name = {}\n", toml_string(&node.name)));
            out.push_str(&format!("role = \"{}\"\n", node.role));
            if let Some(parent) = node.parent {
                out.push_str(&format!("parent = \"{parent}\"\n"));
            }
            out.push_str(&format!("address = \"{}\"\n", node.address));
            out.push_str(&format!("public_key = \"{}\"\n", node.public_key.to_hex()));
        }
        out
    }
}

/// A TOML string literal for `text`, escaped as the TOML writer escapes it.
fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// Equal when the version and the nodes (in order) are equal; the indexes follow from them.
impl PartialEq for Topology {
    fn eq(&self, other: &Topology) -> bool {
        self.version == other.version && self.nodes == other.nodes
    }
}

impl Eq for Topology {}

impl fmt::Debug for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Topology")
            .field("version", &self.version)
            .field("nodes", &self.nodes)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_order_by_level_and_print_lower_case() {
        assert!(Role::County < Role::City);
        assert!(Role::City < Role::Province);
        assert!(Role::Province < Role::National);
        for role in Role::ALL {
            assert_eq!(role.to_string().parse::<Role>(), Ok(role));
        }
        assert!("County".parse::<Role>().is_err());
    }

    #[test]
    fn parent_rules() {
        use Role::*;
        let allowed: Vec<(Role, Role)> = Role::ALL
            .into_iter()
            .flat_map(|child| Role::ALL.into_iter().map(move |parent| (child, parent)))
            .filter(|(child, parent)| child.may_have_parent(*parent))
            .collect();
        assert_eq!(
            allowed,
            [
                (County, City),
                (County, Province),
                (City, Province),
                (Province, National)
            ]
        );
    }

    #[test]
    fn role_of_id() {
        let role = |text| Role::of_id(NodeId::parse(text).unwrap());
        assert_eq!(role("000000"), Role::National);
        assert_eq!(role("440000"), Role::Province);
        assert_eq!(role("445200"), Role::City);
        assert_eq!(role("445281"), Role::County);
    }
}
