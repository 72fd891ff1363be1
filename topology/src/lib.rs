//! The topology file: which nodes make up the credit network, how they hang together
//! (county → city → province → national), how to reach and authenticate each of them, which
//! platforms are still connected straight to the national platform (legacy links) and how
//! they move into the hierarchy, which keys are revoked, who owes which category by when, and
//! which fields of a category may travel upstream.
//!
//! [`Topology::parse`] turns the operator's TOML into a [`Topology`] or into *every* problem
//! it has, each with the 1-based line and column of the offending value and a message that says
//! what to change. A `Topology` that exists is valid: exactly one national platform `000000`;
//! every other node with a known parent of a strictly higher role in its own province, or a
//! legacy link, or both; no cycles, so every node has a path to the national platform; ids,
//! public keys and addresses unique; no node holding a revoked key; schedules only for known
//! categories, with due days that fit their cadence, reporters that are nodes and allocation
//! tables whose reporters cover only nodes below them; profiles only for known categories,
//! naming fields of the category's schema and leaving none out that the schema needs.
//!
//! [`plan`] compares two topologies and lists the ordered steps (each with the precondition
//! that must hold before it) that take the network from one to the other, establishing every
//! new path before dismantling an old one; it refuses an edit that would leave some node,
//! at some step, without a path to the national platform. [`generate`] writes a province's
//! topology from the compiled-in GB/T 2260 division list.
//!
//! **Invariant:** pure — no IO, no files, no clock. The node reads the file and hands the text
//! in; a rejected file changes nothing.
//!
//! # File format
//!
//! ```toml
//! version = 2          # raise it on every edit; a node refuses to go back to a lower version
//!
//! # Optional: keys never to be accepted again (a stolen or lost node key). No node may hold one.
//! revoked_keys = ["d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"]
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
//! parent = "000000"                    # every node but the national platform has one, unless it
//! address = "127.0.0.1:7001"           # has a [[legacy_link]] (then it is optional)
//! public_key = "..."
//!
//! [[node]]
//! id = "445200"
//! name = "揭阳市"
//! role = "city"
//! parent = "440000"
//! address = "127.0.0.1:7002"
//! public_key = "..."
//!
//! [[node]]
//! id = "445281"
//! name = "普宁市"
//! role = "county"
//! parent = "445200"                    # where it moves to; unused while it is not migrating
//! address = "127.0.0.1:7003"
//! public_key = "..."
//!
//! # A platform connected straight to the national platform today.
//! [[legacy_link]]
//! node = "445281"
//! migrate = true              # optional, default false: move onto `parent` (which must then be
//!                             # set) by establish → verify → cut over → dismantle
//! verify_window_s = 60        # optional, default 60: the new path must stay healthy this long
//!                             # in "verify"
//! rollback_window_s = 300     # optional, default 300: after cut-over the legacy link stays open
//!                             # and idle this long before it is dismantled
//!
//! # The reporting schedule of one category, for the timeliness ledger.
//! [[schedule]]
//! category = "water_fee"      # a category with a compiled-in schema
//! cadence = "monthly"         # monthly | daily | event; must be the cadence of the category's schema
//! due_day = 10                # monthly: day of the following month, 1..=28;
//!                             # event: days after the event, 1..=365; daily: absent or 1
//! reporters = ["445281"]      # optional: default every county-level node (every county, and
//!                             # every city without counties such as 441900 东莞 and 442000 中山)
//!
//! # Optional: the task allocation table (分工表) of the category, one table per reporter.
//! [[schedule.allocation]]
//! reporter = "445200"                   # the node that reports (and owes) the category
//! covers = ["445202", "445203"]         # optional: districts whose data it reports; they then
//!                                       # owe nothing of this category themselves
//! data_source = "揭阳市水务集团有限公司"  # the unit that provides the data
//! responsible = "揭阳市发展改革局"        # the unit that answers for the report
//! contact = "0663-8xxxxxx"              # optional: whom to call, as free text
//!
//! # Optional: a minimum-necessary profile (最小必要): only these fields of the category travel
//! # upstream; receivers refuse batches that carry others. At most one per category.
//! [[profile]]
//! category = "water_fee"
//! fields = ["subject_name", "subject_kind", "subject_uscc", "subject_id_number", "account_no",
//!           "billing_period", "consumption", "billed_amount", "paid_amount", "source_unit",
//!           "source_unit_uscc"]
//! ```
//!
//! Tables may come in any order after the top-level keys; [`Topology::render`] writes
//! `version`, `require_assessment`, `revoked_keys`, then every `[[node]]`, `[[old_key]]`,
//! `[[legacy_link]]`, `[[assessment]]`, `[[schedule]]` (each followed by its
//! `[[schedule.allocation]]` lines) and `[[profile]]` in the order they were given, every key
//! spelt out.
//!
//! ## Nodes and parents
//!
//! The role must fit the code's shape: national is `000000`, a province `XX0000`, a city
//! `XXXX00`, a county anything else. A county's parent is its city, or its province for a
//! county-level unit directly under a province (Chongqing, Hainan); a city's parent is its
//! province; a province's parent is the national platform. Parent and child share the first
//! two digits (the province). Cities without counties (441900 东莞, 442000 中山) are simply
//! cities that no node names as parent.
//!
//! ## Legacy links
//!
//! A `[[legacy_link]]` records that a city or county platform sends straight to the national
//! platform today. It counts as a path to the national platform (`node → 000000`), for the node
//! and for every node below it, so such a node may have no `parent` yet. While `migrate` is
//! false the node sends only over the legacy link; a `parent` it names is where it will go.
//! `migrate = true` asks the node to move onto its parent in four phases, each guarded by a
//! precondition the node checks itself: **establish** (send over both paths; receivers dedupe
//! by batch id), **verify** (the receipts that came back through the parent cover every batch
//! the legacy link delivered, and the new path stayed healthy for `verify_window_s`), **cut
//! over** (new batches use only the new path; the legacy link stays open and idle for
//! `rollback_window_s`) and **dismantle** (the legacy link is closed). Only once the node
//! reports the migration complete may a later version remove the `[[legacy_link]]`; removing
//! one that never had `migrate = true` is refused by [`plan`]. Setting `migrate` back to
//! false before the dismantle rolls the node back onto the legacy link alone.
//!
//! ## Revoked keys
//!
//! `revoked_keys` lists Ed25519 keys (64 hexadecimal characters) that are never to be
//! accepted again. A node whose `public_key` is listed is an error: run `credit-node init` for
//! a new key. [`plan`] refuses a version that drops a key from the list.
//!
//! ## Keys over time
//!
//! A node's key changes for two different reasons, and the file says which. **Rotation**: the
//! node got a new key on schedule (`credit-node rekey`); its `public_key` becomes the new key
//! and the old one is listed as an `[[old_key]]` with `retired_at`. Batches the old key signed
//! stay valid wherever their first arrival (the first parent's signed receipt) is dated before
//! `retired_at`, so rotation loses nothing and history keeps verifying. **Compromise**: the
//! key was stolen or lost; it is listed with `revoked_at`. Batches first received after that
//! moment are quarantined (kept, never forwarded, listed for the operator); earlier ones stay
//! valid. Old keys can never connect. [`plan`] refuses a version that drops an old key,
//! moves a revocation later, or changes a node's key without listing the old one.
//!
//! ```toml
//! [[old_key]]
//! node = "445281"
//! public_key = "<the earlier key, 64 hex characters>"
//! retired_at = 2026-06-01T10:00:00+08:00   # rotation; or revoked_at = … for a compromise
//! ```
//!
//! `revoked_keys` (top level) are keys never to be accepted again whose owner or moment is not
//! known: nothing they signed is accepted.
//!
//! ## Security assessments (接入前安全评估)
//!
//! With `require_assessment = true` at the top level, a node may hold sessions with its parent
//! only while its `[[assessment]]` is valid: from `assessed_on` to the end of `valid_until`
//! (Beijing days). Without one, or once it expires, the parent refuses it at the handshake
//! with a message that says why and what to do, and closes live sessions; nothing is deleted,
//! its data waits in its outbox. Both sides warn from 30 days before expiry.
//!
//! ```toml
//! require_assessment = true
//!
//! [[assessment]]
//! node = "445281"
//! assessor = "广东省网络安全等级保护测评中心"
//! reference = "GD-2026-0113"   # optional
//! assessed_on = 2026-01-15
//! valid_until = 2027-01-14     # the last valid day
//! ```
//!
//! ## Schedules
//!
//! One `[[schedule]]` per category says which nodes owe it and by when; the timeliness ledger
//! compares it with what arrived. See [`Topology::reporters`] for the default reporters.
//!
//! ## The task allocation table (分工表)
//!
//! The policy documents attach to each category a table of who provides the data, who
//! answers for the report and whom to call. Each `[[schedule.allocation]]` under a
//! `[[schedule]]` is one line of that table, for one reporter; the ledger carries it beside
//! every report of that reporter, so the report says whom to call about a late or missing one.
//!
//! Some categories are reported by one city-level unit for several districts: in Jieyang the
//! city water group and the gas company report the water and gas fees of the urban area (榕城
//! 445202, 揭东 445203 and the 空港经济区, a functional zone with no division code of its own,
//! whose data travels with theirs) through the city platform 445200, while in the other
//! counties the data-source units hand their data to the county's 发展改革局, which checks and
//! reports it. `covers` says so: the reporter owes the category (even a city, which is not a
//! default reporter), and each node it covers does not.
//!
//! ```toml
//! [[schedule]]
//! category = "water_fee"
//! cadence = "monthly"
//! due_day = 10
//!
//! [[schedule.allocation]]
//! reporter = "445200"
//! covers = ["445202", "445203"]
//! data_source = "揭阳市水务集团有限公司"
//! responsible = "揭阳市发展改革局"
//!
//! [[schedule.allocation]]
//! reporter = "445281"
//! data_source = "普宁市各供水单位"
//! responsible = "普宁市发展改革局"
//! contact = "信用股 0663-xxxxxxx"
//! ```
//!
//! Every reporter in the table owes the category, in addition to `reporters` (or the default);
//! a reporter without an allocation line is simply shown without one. The rules: the reporter
//! and every covered node are nodes; a covered node lies below its reporter; a reporter appears
//! once in a table; a node is covered once, never by itself, is not listed in `reporters` and
//! has no allocation line of its own; `data_source`, `responsible` and `contact` say something
//! (at most [`TEXT_CHARS_MAX`] characters, on one line).
//!
//! ## Minimum-necessary profiles (最小必要)
//!
//! A `[[profile]]` lists the fields of one category that may travel upstream; the origin
//! leaves every other field out of the batches it sends, and receivers refuse a batch of that
//! category that carries one. Without a profile every field of the schema travels. The rules:
//! the category has a compiled-in schema and at most one profile; each name is a field's
//! machine name in that schema, listed once; no field the schema needs is left out — a key or
//! subject field, a required field (always or under a condition), the period field, or a field
//! a condition looks at (`protocol::Schema::why_needed` says why). [`Topology::profile`] and
//! [`Profile::allows`] answer the node; the fields come back in the schema's order whatever
//! the file's. [`plan`] describes a narrowing (origins on the new version first: receivers on
//! it refuse batches in flight that carry the dropped fields) and a widening (receivers first);
//! it refuses neither.
//!
//! ```toml
//! [[profile]]
//! category = "water_fee"
//! fields = ["subject_name", "subject_kind", "subject_uscc", "subject_id_number", "account_no",
//!           "billing_period", "consumption", "billed_amount", "paid_amount", "source_unit",
//!           "source_unit_uscc"]
//! ```
//!
//! # Why the file is walked, not derived with serde
//!
//! `#[derive(Deserialize)]` with `deny_unknown_fields` stops at the first unknown key, missing
//! key or wrong type, and the operator would fix one typo per reload. The reader instead walks
//! the spanned document (`toml::de::DeTable`, every key and value a `toml::Spanned`) against a
//! list of known keys per table, so it reports every unknown key (with a "did you mean"),
//! every missing key and every wrong type in one pass. Unknown keys are refused exactly as
//! `deny_unknown_fields` would. A new section is one more name in the reader's list of
//! top-level keys and one more reader function; files without it stay valid.

pub mod admission;
mod generate;
mod plan;
mod read;
mod validate;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;

use protocol::ids::DivisionLevel;
use protocol::{Category, NodeId, PublicKey};

pub use admission::{Admission, Assessment, Date, KeyEnd, KeyState, OldKey, Profile};
pub use generate::{
    CHINA_DIVISIONS_CSV, Division, GENERATED_HEADER, GUANGDONG_DIVISIONS_CSV, GenerateError,
    NATIONAL_NAME, divisions, generate, placeholder_key,
};
pub use plan::{Plan, Refusal, Step, plan};
/// How often a category is reported; the same type as the category schemas use.
pub use protocol::schema::Cadence;

/// At most this many nodes in one file. The whole nation is about 3,200 divisions (31
/// provinces, some 330 cities, some 2,850 counties); the bound leaves room and keeps a
/// malformed or hostile file from growing the indexes without end.
pub const NODES_MAX: usize = 10_000;

/// At most this many characters in a node's name.
pub const NAME_CHARS_MAX: usize = 100;

/// At most this many characters in a text of the allocation table (data source, responsible
/// unit, contact).
pub const TEXT_CHARS_MAX: usize = 200;

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

/// A platform connected straight to the national platform today, and whether (and how) it
/// moves onto its parent. See the crate documentation, "Legacy links".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyLink {
    /// The city or county platform with the direct link.
    pub node: NodeId,
    /// When true the node moves onto its `parent`: establish → verify → cut over → dismantle.
    pub migrate: bool,
    /// How long the new path must stay healthy in "verify", in seconds.
    pub verify_window_s: u64,
    /// How long the legacy link stays open and idle after cut-over, in seconds.
    pub rollback_window_s: u64,
}

impl LegacyLink {
    pub const VERIFY_WINDOW_S_DEFAULT: u64 = 60;
    pub const ROLLBACK_WINDOW_S_DEFAULT: u64 = 300;
    /// The windows are 1 second to 30 days.
    pub const WINDOW_S_MAX: u64 = 86_400 * 30;

    /// A legacy link that is not migrating, with the default windows.
    pub fn new(node: NodeId) -> LegacyLink {
        LegacyLink {
            node,
            migrate: false,
            verify_window_s: Self::VERIFY_WINDOW_S_DEFAULT,
            rollback_window_s: Self::ROLLBACK_WINDOW_S_DEFAULT,
        }
    }
}

/// Who owes one category, and by when, for the timeliness ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// A category with a compiled-in schema (`protocol::Registry::builtin()`).
    pub category: Category,
    /// The cadence of the category's schema.
    pub cadence: Cadence,
    /// Monthly: the day of the following month by which a month is due (1..=28). Event: the
    /// number of days after the event (1..=365, hence not a `u8`). Daily: 1 (a day is due the
    /// next day).
    pub due_day: u16,
    /// The nodes that owe this category, in file order. Empty means the default: every
    /// county-level node, see [`Topology::reporters`].
    pub reporters: Vec<NodeId>,
    /// The task allocation table (分工表): at most one line per reporter, in file order.
    pub allocation: Vec<Allocation>,
}

impl Schedule {
    /// A schedule without an allocation table.
    pub fn new(
        category: Category,
        cadence: Cadence,
        due_day: u16,
        reporters: Vec<NodeId>,
    ) -> Schedule {
        Schedule {
            category,
            cadence,
            due_day,
            reporters,
            allocation: Vec::new(),
        }
    }

    /// The allocation line of `reporter`, if the table has one.
    pub fn allocation_of(&self, reporter: NodeId) -> Option<&Allocation> {
        self.allocation
            .iter()
            .find(|line| line.reporter == reporter)
    }

    /// The reporter whose allocation line covers `node`, if one does.
    pub fn covered_by(&self, node: NodeId) -> Option<NodeId> {
        self.allocation
            .iter()
            .find(|line| line.covers.contains(&node))
            .map(|line| line.reporter)
    }
}

/// One line of a schedule's task allocation table (分工表): who reports, for which districts,
/// from which data source, who answers for it and whom to call. See the crate documentation,
/// "The task allocation table".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// The node that reports the category; it owes it even if it is not a default reporter.
    pub reporter: NodeId,
    /// Nodes below the reporter whose data it reports; they do not owe the category
    /// themselves. Empty when the reporter reports only its own data.
    pub covers: Vec<NodeId>,
    /// The unit that provides the data (数据源单位), such as 揭阳市水务集团有限公司.
    pub data_source: String,
    /// The unit that answers for the report (责任单位), such as 揭阳市发展改革局.
    pub responsible: String,
    /// Whom to call, as free text (a name, a telephone number).
    pub contact: Option<String>,
}

/// `monthly`, `daily` or `event`, as written in the file.
pub fn cadence_name(cadence: Cadence) -> &'static str {
    match cadence {
        Cadence::Monthly => "monthly",
        Cadence::Daily => "daily",
        Cadence::Event => "event",
    }
}

/// The cadence named `monthly`, `daily` or `event`.
pub fn parse_cadence(text: &str) -> Option<Cadence> {
    [Cadence::Monthly, Cadence::Daily, Cadence::Event]
        .into_iter()
        .find(|cadence| cadence_name(*cadence) == text)
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

/// A validated topology: nodes, legacy links, revoked keys and schedules in file order,
/// indexed by id, by key and by parent.
#[derive(Clone)]
pub struct Topology {
    /// Raised by the operator on every edit; a node refuses to go back to a lower version.
    pub version: u64,
    nodes: Vec<Node>,
    by_id: HashMap<NodeId, usize>,
    by_key: HashMap<PublicKey, usize>,
    /// Children of each node, in file order.
    children: HashMap<NodeId, Vec<usize>>,
    legacy_links: Vec<LegacyLink>,
    link_by_node: HashMap<NodeId, usize>,
    revoked_keys: Vec<PublicKey>,
    revoked: HashSet<PublicKey>,
    schedules: Vec<Schedule>,
    admissions: Admissions,
    /// Each node's assessment and old keys (in file order), by node: every node looks up its
    /// children's assessments each minute, and every batch its origin's keys, in a file of
    /// thousands (3,209 nodes for the nation, an old key a node for each re-key).
    assessment_by_node: HashMap<NodeId, usize>,
    old_keys_by_node: HashMap<NodeId, Vec<usize>>,
}

/// Who may connect, and with which keys, over time, and what may travel upstream:
/// `require_assessment`, the `[[old_key]]`, `[[assessment]]` and `[[profile]]` tables. See the
/// crate documentation, "Keys over time", "Security assessments" and "Minimum-necessary
/// profiles".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admissions {
    /// Whether a node must hold a valid assessment to connect (`require_assessment`).
    pub require_assessment: bool,
    /// Earlier keys of nodes, in file order.
    pub old_keys: Vec<OldKey>,
    /// At most one per node, in file order.
    pub assessments: Vec<Assessment>,
    /// Minimum-necessary profiles (最小必要): at most one per category, in file order.
    pub profiles: Vec<Profile>,
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
    /// [`Topology::parse`], without legacy links, revoked keys or schedules. Errors have line
    /// and column 0 and name the node instead.
    pub fn from_nodes(version: u64, nodes: Vec<Node>) -> Result<Topology, Vec<TopologyError>> {
        Topology::from_parts(version, nodes, Vec::new(), Vec::new(), Vec::new())
    }

    /// Builds a whole topology made in code, under the same rules as [`Topology::parse`].
    /// Errors have line and column 0 and name the node, link or schedule instead.
    pub fn from_parts(
        version: u64,
        nodes: Vec<Node>,
        legacy_links: Vec<LegacyLink>,
        revoked_keys: Vec<PublicKey>,
        schedules: Vec<Schedule>,
    ) -> Result<Topology, Vec<TopologyError>> {
        Topology::from_parts_with(
            version,
            nodes,
            legacy_links,
            revoked_keys,
            schedules,
            Admissions::default(),
        )
    }

    /// [`Topology::from_parts`] with key history and assessments.
    pub fn from_parts_with(
        version: u64,
        nodes: Vec<Node>,
        legacy_links: Vec<LegacyLink>,
        revoked_keys: Vec<PublicKey>,
        schedules: Vec<Schedule>,
        admissions: Admissions,
    ) -> Result<Topology, Vec<TopologyError>> {
        let (draft, errors) = validate::draft_from_parts(
            version,
            nodes,
            legacy_links,
            revoked_keys,
            schedules,
            admissions,
        );
        validate::validate(draft, errors)
    }

    /// This topology as `version` with `nodes` and `admissions` instead of its own: a re-key,
    /// a revocation or a new assessment made in code (tests, the simulator), validated.
    pub fn edited(
        &self,
        version: u64,
        nodes: Vec<Node>,
        admissions: Admissions,
    ) -> Result<Topology, Vec<TopologyError>> {
        Topology::from_parts_with(
            version,
            nodes,
            self.legacy_links.clone(),
            self.revoked_keys.clone(),
            self.schedules.clone(),
            admissions,
        )
    }

    /// Assembles the indexes. The caller has validated every part.
    fn assemble(
        version: u64,
        nodes: Vec<Node>,
        legacy_links: Vec<LegacyLink>,
        revoked_keys: Vec<PublicKey>,
        schedules: Vec<Schedule>,
        admissions: Admissions,
    ) -> Topology {
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
        let link_by_node: HashMap<NodeId, usize> = legacy_links
            .iter()
            .enumerate()
            .map(|(index, link)| (link.node, index))
            .collect();
        let revoked: HashSet<PublicKey> = revoked_keys.iter().copied().collect();
        let assessment_by_node: HashMap<NodeId, usize> = admissions
            .assessments
            .iter()
            .enumerate()
            .map(|(index, assessment)| (assessment.node, index))
            .collect();
        let mut old_keys_by_node: HashMap<NodeId, Vec<usize>> = HashMap::new();
        for (index, key) in admissions.old_keys.iter().enumerate() {
            old_keys_by_node.entry(key.node).or_default().push(index);
        }
        assert_eq!(
            assessment_by_node.len(),
            admissions.assessments.len(),
            "validated assessments are one per node"
        );
        assert_eq!(by_id.len(), nodes.len(), "validated ids are unique");
        assert_eq!(by_key.len(), nodes.len(), "validated keys are unique");
        assert_eq!(
            link_by_node.len(),
            legacy_links.len(),
            "validated legacy links are one per node"
        );
        assert_eq!(
            revoked.len(),
            revoked_keys.len(),
            "validated revoked keys are unique"
        );
        Topology {
            version,
            nodes,
            by_id,
            by_key,
            children,
            legacy_links,
            link_by_node,
            revoked_keys,
            revoked,
            schedules,
            admissions,
            assessment_by_node,
            old_keys_by_node,
        }
    }

    /// Key history and assessments.
    pub fn admissions(&self) -> &Admissions {
        &self.admissions
    }

    /// Every key `node` has held that still judges signatures: its current key first, then its
    /// old keys in file order. Empty for an unknown node.
    pub fn keys_of(&self, node: NodeId) -> Vec<(PublicKey, KeyState)> {
        let Some(current) = self.node(node) else {
            return Vec::new();
        };
        let mut keys = vec![(current.public_key, KeyState::Current)];
        let old_keys = self
            .old_keys_by_node
            .get(&node)
            .map_or(&[][..], Vec::as_slice);
        keys.extend(
            old_keys
                .iter()
                .map(|&index| &self.admissions.old_keys[index])
                .map(|old| {
                    let state = match old.end {
                        KeyEnd::Retired => KeyState::Retired { at_ms: old.at_ms },
                        KeyEnd::Revoked => KeyState::Revoked { at_ms: old.at_ms },
                    };
                    (old.public_key, state)
                }),
        );
        keys
    }

    /// The assessment of `node`, if the file has one.
    pub fn assessment(&self, node: NodeId) -> Option<&Assessment> {
        self.assessment_by_node
            .get(&node)
            .map(|&index| &self.admissions.assessments[index])
    }

    /// The profile for `category`, if the file restricts it.
    pub fn profile(&self, category: &Category) -> Option<&Profile> {
        self.admissions
            .profiles
            .iter()
            .find(|profile| &profile.category == category)
    }

    /// Whether `node` may hold sessions at `now_ms` (Unix milliseconds), by its assessment.
    pub fn admission(&self, node: NodeId, now_ms: u64) -> Admission {
        if !self.admissions.require_assessment {
            return Admission::NotRequired;
        }
        match self.assessment(node) {
            None => Admission::Missing,
            Some(a) if now_ms < a.assessed_on.start_ms() => Admission::NotYet {
                from: a.assessed_on,
            },
            Some(a) if now_ms >= a.valid_until.end_ms() => Admission::Expired { on: a.valid_until },
            Some(a) => Admission::Valid {
                until: a.valid_until,
                days_left: (a.valid_until.end_ms() - now_ms) / 86_400_000,
            },
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

    /// `id` and every node below it in the hierarchy, in file order; empty for an unknown id.
    /// Walks the subtree alone: a county's is itself, however large the file.
    pub fn subtree(&self, id: NodeId) -> Vec<NodeId> {
        let Some(&root) = self.by_id.get(&id) else {
            return Vec::new();
        };
        let mut found = vec![root];
        let mut next = 0;
        while let Some(&index) = found.get(next) {
            next += 1;
            found.extend(
                self.children
                    .get(&self.nodes[index].id)
                    .into_iter()
                    .flatten(),
            );
            assert!(
                found.len() <= self.nodes.len(),
                "a validated topology has no cycles"
            );
        }
        found.sort_unstable();
        found
            .into_iter()
            .map(|index| self.nodes[index].id)
            .collect()
    }

    /// Whether `id` is `ancestor` or below it in the hierarchy ([`Topology::path_to_national`]
    /// holds `ancestor`), without building the path.
    pub fn is_within(&self, id: NodeId, ancestor: NodeId) -> bool {
        let mut current = self.node(id);
        for _ in 0..=self.nodes.len() {
            let Some(node) = current else {
                return false;
            };
            if node.id == ancestor {
                return true;
            }
            current = node.parent.and_then(|parent| self.node(parent));
        }
        unreachable!("a validated topology has no cycles")
    }

    /// The node that owns this identity key.
    pub fn node_by_key(&self, key: &PublicKey) -> Option<&Node> {
        self.by_key.get(key).map(|&index| &self.nodes[index])
    }

    /// `id`, its parent, its parent's parent, …: the hierarchy path. It ends with `000000`
    /// unless the chain stops at a node without a parent, which then reaches the national
    /// platform through a legacy link (its own or, for a node below it, an ancestor's; see
    /// [`Topology::paths_to_national`]). Empty if `id` is not in the topology.
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
        path
    }

    /// Every path from `id` to the national platform the file declares: first the hierarchy
    /// path if it reaches `000000`, then for each node on the hierarchy path that has a legacy
    /// link (starting with `id` itself) the path up to it followed by `000000`. A valid
    /// topology gives every node at least one. A link with `migrate = true` is listed too,
    /// though the node may already have dismantled it. Empty if `id` is not in the topology.
    pub fn paths_to_national(&self, id: NodeId) -> Vec<Vec<NodeId>> {
        let chain = self.path_to_national(id);
        let mut paths = Vec::new();
        if chain.last() == Some(&NodeId::NATIONAL) {
            paths.push(chain.clone());
        }
        for (index, node) in chain.iter().enumerate() {
            if self.legacy_link(*node).is_some() {
                let mut path = chain[..=index].to_vec();
                path.push(NodeId::NATIONAL);
                paths.push(path);
            }
        }
        paths
    }

    /// The legacy links, in file order.
    pub fn legacy_links(&self) -> &[LegacyLink] {
        &self.legacy_links
    }

    /// The legacy link of `node`, if it has one.
    pub fn legacy_link(&self, node: NodeId) -> Option<&LegacyLink> {
        self.link_by_node
            .get(&node)
            .map(|&index| &self.legacy_links[index])
    }

    /// The keys never to be accepted again, in file order. No node holds one.
    pub fn revoked_keys(&self) -> &[PublicKey] {
        &self.revoked_keys
    }

    pub fn is_revoked(&self, key: &PublicKey) -> bool {
        self.revoked.contains(key)
    }

    /// The reporting schedules, in file order; at most one per category.
    pub fn schedules(&self) -> &[Schedule] {
        &self.schedules
    }

    /// The schedule of `category`, if it has one.
    pub fn schedule(&self, category: &Category) -> Option<&Schedule> {
        self.schedules
            .iter()
            .find(|schedule| &schedule.category == category)
    }

    /// The nodes that owe `schedule`'s category: its `reporters` if it lists them, else every
    /// county-level node — every county, and every city that no node names as parent (441900
    /// 东莞 and 442000 中山 have no counties: the city platform reports for its towns) — in
    /// file order; then every reporter of the allocation table not yet named, in table order;
    /// less every node a line of the table `covers` (its reporter reports for it).
    pub fn reporters(&self, schedule: &Schedule) -> Vec<NodeId> {
        let mut reporters: Vec<NodeId> = if schedule.reporters.is_empty() {
            self.nodes
                .iter()
                .filter(|node| match node.role {
                    Role::County => true,
                    Role::City => !self.children.contains_key(&node.id),
                    Role::Province | Role::National => false,
                })
                .map(|node| node.id)
                .collect()
        } else {
            schedule.reporters.clone()
        };
        for line in &schedule.allocation {
            if !reporters.contains(&line.reporter) {
                reporters.push(line.reporter);
            }
        }
        let covered: HashSet<NodeId> = schedule
            .allocation
            .iter()
            .flat_map(|line| line.covers.iter().copied())
            .collect();
        reporters.retain(|id| !covered.contains(id));
        reporters
    }

    /// The allocation line of `reporter` in the schedule of `category`, if there is one.
    pub fn allocation(&self, category: &Category, reporter: NodeId) -> Option<&Allocation> {
        self.schedule(category)?.allocation_of(reporter)
    }

    /// The canonical text of this topology: `version`, `revoked_keys` (if any), then one
    /// `[[node]]`, `[[legacy_link]]` and `[[schedule]]` table per item in order, keys in the
    /// documented order. Parses back to an equal topology.
    pub fn render(&self) -> String {
        self.render_with_header("")
    }

    /// [`Topology::render`] preceded by `header` as TOML comments (each line prefixed with
    /// `# `) and a blank line; nothing is added for an empty header.
    pub fn render_with_header(&self, header: &str) -> String {
        let mut out = String::new();
        if !header.is_empty() {
            for line in header.lines() {
                if line.is_empty() {
                    out.push_str("#\n");
                } else {
                    out.push_str(&format!("# {line}\n"));
                }
            }
            out.push('\n');
        }
        out.push_str(&format!("version = {}\n", self.version));
        if self.admissions.require_assessment {
            out.push_str("require_assessment = true\n");
        }
        if !self.revoked_keys.is_empty() {
            out.push_str("revoked_keys = [\n");
            for key in &self.revoked_keys {
                out.push_str(&format!("    \"{}\",\n", key.to_hex()));
            }
            out.push_str("]\n");
        }
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
        for old in &self.admissions.old_keys {
            out.push_str("\n[[old_key]]\n");
            out.push_str(&format!("node = \"{}\"\n", old.node));
            out.push_str(&format!("public_key = \"{}\"\n", old.public_key.to_hex()));
            let key = match old.end {
                KeyEnd::Retired => "retired_at",
                KeyEnd::Revoked => "revoked_at",
            };
            out.push_str(&format!("{key} = {}\n", admission::rfc3339_ms(old.at_ms)));
        }
        for link in &self.legacy_links {
            out.push_str("\n[[legacy_link]]\n");
            out.push_str(&format!("node = \"{}\"\n", link.node));
            out.push_str(&format!("migrate = {}\n", link.migrate));
            out.push_str(&format!("verify_window_s = {}\n", link.verify_window_s));
            out.push_str(&format!("rollback_window_s = {}\n", link.rollback_window_s));
        }
        for a in &self.admissions.assessments {
            out.push_str("\n[[assessment]]\n");
            out.push_str(&format!("node = \"{}\"\n", a.node));
            out.push_str(&format!("assessor = {}\n", toml_string(&a.assessor)));
            if let Some(reference) = &a.reference {
                out.push_str(&format!("reference = {}\n", toml_string(reference)));
            }
            out.push_str(&format!("assessed_on = {}\n", a.assessed_on));
            out.push_str(&format!("valid_until = {}\n", a.valid_until));
        }
        for schedule in &self.schedules {
            out.push_str("\n[[schedule]]\n");
            out.push_str(&format!("category = \"{}\"\n", schedule.category));
            out.push_str(&format!(
                "cadence = \"{}\"\n",
                cadence_name(schedule.cadence)
            ));
            if schedule.cadence != Cadence::Daily {
                out.push_str(&format!("due_day = {}\n", schedule.due_day));
            }
            if !schedule.reporters.is_empty() {
                let reporters: Vec<String> = schedule
                    .reporters
                    .iter()
                    .map(|id| format!("\"{id}\""))
                    .collect();
                out.push_str(&format!("reporters = [{}]\n", reporters.join(", ")));
            }
            for line in &schedule.allocation {
                out.push_str("\n[[schedule.allocation]]\n");
                out.push_str(&format!("reporter = \"{}\"\n", line.reporter));
                if !line.covers.is_empty() {
                    let covers: Vec<String> =
                        line.covers.iter().map(|id| format!("\"{id}\"")).collect();
                    out.push_str(&format!("covers = [{}]\n", covers.join(", ")));
                }
                out.push_str(&format!(
                    "data_source = {}\n",
                    toml_string(&line.data_source)
                ));
                out.push_str(&format!(
                    "responsible = {}\n",
                    toml_string(&line.responsible)
                ));
                if let Some(contact) = &line.contact {
                    out.push_str(&format!("contact = {}\n", toml_string(contact)));
                }
            }
        }
        for profile in &self.admissions.profiles {
            out.push_str("\n[[profile]]\n");
            out.push_str(&format!("category = \"{}\"\n", profile.category));
            out.push_str("fields = [\n");
            for field in &profile.fields {
                out.push_str(&format!("    {},\n", toml_string(field)));
            }
            out.push_str("]\n");
        }
        out
    }
}

/// A TOML string literal for `text`, escaped as the TOML writer escapes it.
fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// Equal when the version and every part (in order) are equal; the indexes follow from them.
impl PartialEq for Topology {
    fn eq(&self, other: &Topology) -> bool {
        self.version == other.version
            && self.nodes == other.nodes
            && self.legacy_links == other.legacy_links
            && self.revoked_keys == other.revoked_keys
            && self.schedules == other.schedules
            && self.admissions == other.admissions
    }
}

impl Eq for Topology {}

impl fmt::Debug for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Topology")
            .field("version", &self.version)
            .field("nodes", &self.nodes)
            .field("legacy_links", &self.legacy_links)
            .field("revoked_keys", &self.revoked_keys)
            .field("schedules", &self.schedules)
            .field("admissions", &self.admissions)
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
