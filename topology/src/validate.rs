//! The rules a topology must obey, checked on a [`Draft`] — the nodes as far as they could be
//! read, each value with its position — whether the draft came from a file or from code.
//!
//! Every rule reports every violation; a value that could not be read is left out of the
//! rules that need it, so one typo does not bury the file under follow-on errors.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use protocol::{Category, NodeId, PublicKey, Registry};

use crate::admission::{Assessment, Date, KeyEnd, OldKey, beijing_time};
use crate::{
    Admissions, Allocation, Cadence, LegacyLink, NAME_CHARS_MAX, NODES_MAX, Node, Profile, Role,
    Schedule, Topology, TopologyError, cadence_name,
};

/// A 1-based position in the file; `Pos::NONE` (0, 0) for values made in code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    pub const NONE: Pos = Pos { line: 0, column: 0 };
    pub const START: Pos = Pos { line: 1, column: 1 };

    /// " (line N)" to point the operator at a related place, or nothing without a file.
    fn on_line(self) -> String {
        self.on_line_as("line")
    }

    /// " (WORDS N)", or nothing without a file.
    fn on_line_as(self, words: &str) -> String {
        if self.line == 0 {
            String::new()
        } else {
            format!(" ({words} {})", self.line)
        }
    }
}

/// A value and where it was written.
#[derive(Debug, Clone)]
pub(crate) struct At<T> {
    pub value: T,
    pub pos: Pos,
}

#[derive(Debug, Clone)]
pub(crate) enum ParentField {
    Absent,
    /// Written but not a node id; already reported.
    Invalid(Pos),
    Given(At<NodeId>),
}

/// An optional value: absent (the default applies), written but unreadable (already
/// reported), or given.
#[derive(Debug, Clone)]
pub(crate) enum Field<T> {
    Absent,
    Invalid,
    Given(At<T>),
}

impl<T> Field<T> {
    pub(crate) fn given(&self) -> Option<&At<T>> {
        match self {
            Field::Given(at) => Some(at),
            Field::Absent | Field::Invalid => None,
        }
    }
}

/// One `[[legacy_link]]` as far as it could be read.
#[derive(Debug, Clone)]
pub(crate) struct LinkEntry {
    pub node: Option<At<NodeId>>,
    pub migrate: Field<bool>,
    /// Whole numbers as written, range-checked by [`validate`].
    pub verify_window_s: Field<i128>,
    pub rollback_window_s: Field<i128>,
}

/// One `[[schedule]]` as far as it could be read.
#[derive(Debug, Clone)]
pub(crate) struct ScheduleEntry {
    /// The `[[schedule]]` header.
    pub table: Pos,
    pub category: Option<At<Category>>,
    pub cadence: Option<At<Cadence>>,
    pub due_day: Field<i128>,
    /// The ids that could be read; the position is the array's.
    pub reporters: Field<Vec<At<NodeId>>>,
    /// The lines of the allocation table that could be read.
    pub allocation: Vec<AllocationEntry>,
}

/// One `[[schedule.allocation]]` as far as it could be read. `None` means missing or invalid,
/// and already reported.
#[derive(Debug, Clone)]
pub(crate) struct AllocationEntry {
    pub reporter: Option<At<NodeId>>,
    /// The ids that could be read; the position is the array's.
    pub covers: Field<Vec<At<NodeId>>>,
    pub data_source: Option<At<String>>,
    pub responsible: Option<At<String>>,
    pub contact: Field<String>,
}

/// One `[[old_key]]` as far as it could be read. `None` means missing or invalid, and
/// already reported.
#[derive(Debug, Clone)]
pub(crate) struct OldKeyEntry {
    pub node: Option<At<NodeId>>,
    pub public_key: Option<At<PublicKey>>,
    /// How and when (Unix milliseconds) it ended.
    pub end: Option<(KeyEnd, At<u64>)>,
}

/// One `[[assessment]]` as far as it could be read.
#[derive(Debug, Clone)]
pub(crate) struct AssessmentEntry {
    pub node: Option<At<NodeId>>,
    pub assessor: Field<String>,
    pub reference: Field<String>,
    pub assessed_on: Option<At<Date>>,
    pub valid_until: Option<At<Date>>,
}

/// One `[[profile]]` as far as it could be read. `None` means missing or invalid, and
/// already reported.
#[derive(Debug, Clone)]
pub(crate) struct ProfileEntry {
    pub category: Option<At<Category>>,
    /// The names that could be read, as written; the position is the array's.
    pub fields: Option<At<Vec<At<String>>>>,
}

/// One `[[node]]` as far as it could be read. `None` means missing or invalid, and already
/// reported.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// The `[[node]]` header: where a missing key belongs.
    pub table: Pos,
    pub id: Option<At<NodeId>>,
    pub name: Option<At<String>>,
    pub role: Option<At<Role>>,
    pub parent: ParentField,
    pub address: Option<At<SocketAddr>>,
    pub public_key: Option<At<PublicKey>>,
}

impl Entry {
    fn id(&self) -> Option<NodeId> {
        self.id.as_ref().map(|id| id.value)
    }

    fn role(&self) -> Option<Role> {
        self.role.as_ref().map(|role| role.value)
    }

    /// The declared role, or the one the code implies when the role could not be read.
    fn effective_role(&self) -> Option<Role> {
        self.role().or_else(|| self.id().map(Role::of_id))
    }

    /// "node 445281" when the id is known, for messages.
    fn label(&self) -> String {
        match self.id() {
            Some(id) => format!("node {id}"),
            None => "this node".to_owned(),
        }
    }
}

/// A topology as far as it could be read.
#[derive(Debug)]
pub(crate) struct Draft {
    /// Where whole-file problems are reported.
    pub file: Pos,
    /// `None` when missing or not a number; already reported.
    pub version: Option<At<u64>>,
    pub require_assessment: Field<bool>,
    /// The keys that could be read.
    pub revoked_keys: Vec<At<PublicKey>>,
    pub entries: Vec<Entry>,
    pub old_keys: Vec<OldKeyEntry>,
    pub links: Vec<LinkEntry>,
    pub assessments: Vec<AssessmentEntry>,
    pub schedules: Vec<ScheduleEntry>,
    pub profiles: Vec<ProfileEntry>,
}

pub(crate) fn error(pos: Pos, message: impl Into<String>) -> TopologyError {
    TopologyError {
        line: pos.line,
        column: pos.column,
        message: message.into(),
    }
}

/// A name is shown to operators and in reports: it must say something and stay on one line.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("name must not be empty: write the division's name, such as \"揭阳市\"".into());
    }
    let chars = name.chars().count();
    if chars > NAME_CHARS_MAX {
        return Err(format!(
            "name has {chars} characters, more than {NAME_CHARS_MAX}: shorten it"
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("name must not contain control characters such as line breaks or tabs".into());
    }
    Ok(())
}

/// A text of the allocation table (`data_source`, `responsible`, `contact`) is shown beside
/// late and missing reports: it must say something and stay on one line.
pub(crate) fn check_text(key: &str, text: &str) -> Result<(), String> {
    let what = match key {
        "data_source" => "the unit that provides the data, such as \"揭阳市水务集团有限公司\"",
        "responsible" => "the unit that answers for the report, such as \"揭阳市发展改革局\"",
        "assessor" => "who carried out the assessment, such as \"广东省网络安全等级保护测评中心\"",
        "reference" => "the assessment report's number, or remove `reference`",
        _ => "whom to call, such as a name and a telephone number, or remove `contact`",
    };
    if text.trim().is_empty() {
        return Err(format!("{key} must not be empty: write {what}"));
    }
    let chars = text.chars().count();
    if chars > crate::TEXT_CHARS_MAX {
        return Err(format!(
            "{key} has {chars} characters, more than {}: shorten it",
            crate::TEXT_CHARS_MAX
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(format!(
            "{key} must not contain control characters such as line breaks or tabs"
        ));
    }
    Ok(())
}

/// The address is where peers connect, so it needs a real port.
pub(crate) fn check_address(address: SocketAddr) -> Result<(), String> {
    if address.port() == 0 {
        return Err(format!(
            "address {address} has port 0: give the port the node listens on, such as {}",
            SocketAddr::new(address.ip(), 7000)
        ));
    }
    Ok(())
}

fn at<T>(value: T) -> At<T> {
    At {
        value,
        pos: Pos::NONE,
    }
}

/// A draft of a topology made in code. Checks what the types cannot: names, ports and whether
/// the key bytes are an Ed25519 point; [`validate`] checks the rest.
pub(crate) fn draft_from_parts(
    version: u64,
    nodes: Vec<Node>,
    legacy_links: Vec<LegacyLink>,
    revoked_keys: Vec<PublicKey>,
    schedules: Vec<Schedule>,
    admissions: Admissions,
) -> (Draft, Vec<TopologyError>) {
    let mut errors = Vec::new();
    let entries = nodes
        .into_iter()
        .map(|node| {
            let mut report = |message: String| {
                errors.push(error(Pos::NONE, format!("node {}: {message}", node.id)));
            };
            let name = match check_name(&node.name) {
                Ok(()) => Some(at(node.name)),
                Err(message) => {
                    report(message);
                    None
                }
            };
            let address = match check_address(node.address) {
                Ok(()) => Some(at(node.address)),
                Err(message) => {
                    report(message);
                    None
                }
            };
            let public_key = match PublicKey::parse_hex(&node.public_key.to_hex()) {
                Ok(key) => Some(at(key)),
                Err(problem) => {
                    report(problem.to_string());
                    None
                }
            };
            Entry {
                table: Pos::NONE,
                id: Some(at(node.id)),
                name,
                role: Some(at(node.role)),
                parent: match node.parent {
                    Some(parent) => ParentField::Given(at(parent)),
                    None => ParentField::Absent,
                },
                address,
                public_key,
            }
        })
        .collect();
    let revoked_keys = revoked_keys
        .into_iter()
        .filter_map(|key| match PublicKey::parse_hex(&key.to_hex()) {
            Ok(key) => Some(at(key)),
            Err(problem) => {
                errors.push(error(Pos::NONE, format!("revoked_keys: {problem}")));
                None
            }
        })
        .collect();
    let links = legacy_links
        .into_iter()
        .map(|link| LinkEntry {
            node: Some(at(link.node)),
            migrate: Field::Given(at(link.migrate)),
            verify_window_s: Field::Given(at(i128::from(link.verify_window_s))),
            rollback_window_s: Field::Given(at(i128::from(link.rollback_window_s))),
        })
        .collect();
    let schedules = schedules
        .into_iter()
        .map(|schedule| {
            let category = schedule.category.clone();
            let allocation = schedule
                .allocation
                .into_iter()
                .map(|line| {
                    let mut text = |key: &str, value: String| match check_text(key, &value) {
                        Ok(()) => Some(at(value)),
                        Err(message) => {
                            errors.push(error(
                                Pos::NONE,
                                format!(
                                    "allocation of {} for {category}: {message}",
                                    line.reporter
                                ),
                            ));
                            None
                        }
                    };
                    let data_source = text("data_source", line.data_source);
                    let responsible = text("responsible", line.responsible);
                    let contact = match line.contact {
                        None => Field::Absent,
                        Some(contact) => match text("contact", contact) {
                            Some(contact) => Field::Given(contact),
                            None => Field::Invalid,
                        },
                    };
                    AllocationEntry {
                        reporter: Some(at(line.reporter)),
                        covers: if line.covers.is_empty() {
                            Field::Absent
                        } else {
                            Field::Given(at(line.covers.into_iter().map(at).collect()))
                        },
                        data_source,
                        responsible,
                        contact,
                    }
                })
                .collect();
            ScheduleEntry {
                table: Pos::NONE,
                category: Some(at(schedule.category)),
                cadence: Some(at(schedule.cadence)),
                due_day: Field::Given(at(i128::from(schedule.due_day))),
                reporters: if schedule.reporters.is_empty() {
                    Field::Absent
                } else {
                    Field::Given(at(schedule.reporters.into_iter().map(at).collect()))
                },
                allocation,
            }
        })
        .collect();
    let old_keys = admissions
        .old_keys
        .into_iter()
        .map(|old| OldKeyEntry {
            node: Some(at(old.node)),
            public_key: Some(at(old.public_key)),
            end: Some((old.end, at(old.at_ms))),
        })
        .collect();
    let assessments = admissions
        .assessments
        .into_iter()
        .map(|a| {
            let mut text = |key: &str, value: String| match check_text(key, &value) {
                Ok(()) => Field::Given(at(value)),
                Err(message) => {
                    errors.push(error(
                        Pos::NONE,
                        format!("assessment of {}: {message}", a.node),
                    ));
                    Field::Invalid
                }
            };
            AssessmentEntry {
                node: Some(at(a.node)),
                assessor: text("assessor", a.assessor),
                reference: match a.reference {
                    None => Field::Absent,
                    Some(reference) => text("reference", reference),
                },
                assessed_on: Some(at(a.assessed_on)),
                valid_until: Some(at(a.valid_until)),
            }
        })
        .collect();
    let profiles = admissions
        .profiles
        .into_iter()
        .map(|profile| ProfileEntry {
            category: Some(at(profile.category)),
            fields: Some(at(profile.fields.into_iter().map(at).collect())),
        })
        .collect();
    let draft = Draft {
        file: Pos::NONE,
        version: Some(at(version)),
        require_assessment: Field::Given(at(admissions.require_assessment)),
        revoked_keys,
        entries,
        old_keys,
        links,
        assessments,
        schedules,
        profiles,
    };
    (draft, errors)
}

/// Checks every rule and builds the topology if neither reading nor the rules found a problem.
pub(crate) fn validate(
    draft: Draft,
    mut errors: Vec<TopologyError>,
) -> Result<Topology, Vec<TopologyError>> {
    let entries = &draft.entries;
    if let Some(version) = &draft.version
        && version.value == 0
    {
        errors.push(error(
            version.pos,
            "version must be 1 or more: start at 1 and raise it on every edit",
        ));
    }
    if entries.len() > NODES_MAX {
        errors.push(error(
            draft.file,
            format!(
                "the file has {} nodes, more than the limit of {NODES_MAX}",
                entries.len()
            ),
        ));
    }
    check_roles_fit_codes(entries, &mut errors);
    let first_by_id = check_unique_ids(entries, &mut errors);
    check_unique_keys(entries, &mut errors);
    check_revoked_keys(&draft, &mut errors);
    check_unique_addresses(entries, &mut errors);
    check_one_national(&draft, &mut errors);
    let linked = check_legacy_links(&draft, &first_by_id, &mut errors);
    check_parents(entries, &first_by_id, &linked, &mut errors);
    check_paths(entries, &first_by_id, &linked, &mut errors);
    check_schedules(&draft, &first_by_id, &mut errors);
    check_old_keys(&draft, &first_by_id, &mut errors);
    check_assessments(&draft, &first_by_id, &mut errors);
    check_profiles(&draft, &mut errors);

    if !errors.is_empty() {
        // Stable: problems at one position keep the order in which the rules found them.
        errors.sort_by_key(|e| (e.line, e.column));
        return Err(errors);
    }
    let missing = "no error, so every value was read";
    let version = draft.version.expect(missing).value;
    let nodes = draft
        .entries
        .into_iter()
        .map(|entry| Node {
            id: entry.id.expect(missing).value,
            name: entry.name.expect(missing).value,
            role: entry.role.expect(missing).value,
            parent: match entry.parent {
                ParentField::Given(parent) => Some(parent.value),
                ParentField::Absent => None,
                ParentField::Invalid(_) => unreachable!("{missing}"),
            },
            address: entry.address.expect(missing).value,
            public_key: entry.public_key.expect(missing).value,
        })
        .collect();
    let window = |field: Field<i128>, default: u64| match field {
        Field::Absent => default,
        Field::Given(at) => u64::try_from(at.value).expect("validated window"),
        Field::Invalid => unreachable!("{missing}"),
    };
    let links = draft
        .links
        .into_iter()
        .map(|link| LegacyLink {
            node: link.node.expect(missing).value,
            migrate: match link.migrate {
                Field::Absent => false,
                Field::Given(at) => at.value,
                Field::Invalid => unreachable!("{missing}"),
            },
            verify_window_s: window(link.verify_window_s, LegacyLink::VERIFY_WINDOW_S_DEFAULT),
            rollback_window_s: window(
                link.rollback_window_s,
                LegacyLink::ROLLBACK_WINDOW_S_DEFAULT,
            ),
        })
        .collect();
    let revoked_keys = draft
        .revoked_keys
        .into_iter()
        .map(|key| key.value)
        .collect();
    let schedules = draft
        .schedules
        .into_iter()
        .map(|schedule| Schedule {
            category: schedule.category.expect(missing).value,
            cadence: schedule.cadence.expect(missing).value,
            due_day: match schedule.due_day {
                Field::Absent => 1,
                Field::Given(at) => u16::try_from(at.value).expect("validated due day"),
                Field::Invalid => unreachable!("{missing}"),
            },
            reporters: match schedule.reporters {
                Field::Absent => Vec::new(),
                Field::Given(at) => at.value.into_iter().map(|id| id.value).collect(),
                Field::Invalid => unreachable!("{missing}"),
            },
            allocation: schedule
                .allocation
                .into_iter()
                .map(|line| Allocation {
                    reporter: line.reporter.expect(missing).value,
                    covers: match line.covers {
                        Field::Absent => Vec::new(),
                        Field::Given(at) => at.value.into_iter().map(|id| id.value).collect(),
                        Field::Invalid => unreachable!("{missing}"),
                    },
                    data_source: line.data_source.expect(missing).value,
                    responsible: line.responsible.expect(missing).value,
                    contact: match line.contact {
                        Field::Absent => None,
                        Field::Given(at) => Some(at.value),
                        Field::Invalid => unreachable!("{missing}"),
                    },
                })
                .collect(),
        })
        .collect();
    let admissions = Admissions {
        require_assessment: match draft.require_assessment {
            Field::Absent => false,
            Field::Given(at) => at.value,
            Field::Invalid => unreachable!("{missing}"),
        },
        old_keys: draft
            .old_keys
            .into_iter()
            .map(|entry| {
                let (end, at) = entry.end.expect(missing);
                OldKey {
                    node: entry.node.expect(missing).value,
                    public_key: entry.public_key.expect(missing).value,
                    end,
                    at_ms: at.value,
                }
            })
            .collect(),
        assessments: draft
            .assessments
            .into_iter()
            .map(|entry| Assessment {
                node: entry.node.expect(missing).value,
                assessor: match entry.assessor {
                    Field::Given(at) => at.value,
                    Field::Absent | Field::Invalid => unreachable!("{missing}"),
                },
                reference: match entry.reference {
                    Field::Absent => None,
                    Field::Given(at) => Some(at.value),
                    Field::Invalid => unreachable!("{missing}"),
                },
                assessed_on: entry.assessed_on.expect(missing).value,
                valid_until: entry.valid_until.expect(missing).value,
            })
            .collect(),
        profiles: draft
            .profiles
            .into_iter()
            .map(|entry| {
                let category = entry.category.expect(missing).value;
                let schema = Registry::builtin()
                    .get(&category)
                    .expect("validated category");
                let listed: HashSet<String> = entry
                    .fields
                    .expect(missing)
                    .value
                    .into_iter()
                    .map(|name| name.value)
                    .collect();
                // In the schema's field order, whatever the file's.
                let fields = schema
                    .fields
                    .iter()
                    .filter(|field| listed.contains(&field.name))
                    .map(|field| field.name.clone())
                    .collect();
                Profile { category, fields }
            })
            .collect(),
    };
    Ok(Topology::assemble(
        version,
        nodes,
        links,
        revoked_keys,
        schedules,
        admissions,
    ))
}

fn check_roles_fit_codes(entries: &[Entry], errors: &mut Vec<TopologyError>) {
    for entry in entries {
        let (Some(id), Some(role)) = (entry.id(), &entry.role) else {
            continue;
        };
        let implied = Role::of_id(id);
        if implied != role.value {
            errors.push(error(
                role.pos,
                format!(
                    "node {id} has role \"{}\" but its code is shaped like a {implied}: national is 000000, a province XX0000, a city XXXX00, a county any other code; fix the role or the id",
                    role.value
                ),
            ));
        }
    }
}

/// Reports repeated ids at the repetition and returns the first entry of each id: the one the
/// graph rules use.
fn check_unique_ids(entries: &[Entry], errors: &mut Vec<TopologyError>) -> HashMap<NodeId, usize> {
    let mut first_by_id: HashMap<NodeId, usize> = HashMap::new();
    for (index, entry) in entries.iter().enumerate() {
        let Some(id) = &entry.id else { continue };
        if let Some(&first) = first_by_id.get(&id.value) {
            errors.push(error(
                id.pos,
                format!(
                    "node id {} is declared twice{}: each node appears once; remove one [[node]] or correct its id",
                    id.value,
                    entries[first]
                        .id
                        .as_ref()
                        .map_or(Pos::NONE, |first| first.pos)
                        .on_line_as("first on line")
                ),
            ));
        } else {
            first_by_id.insert(id.value, index);
        }
    }
    first_by_id
}

fn check_unique_keys(entries: &[Entry], errors: &mut Vec<TopologyError>) {
    let mut first: HashMap<PublicKey, usize> = HashMap::new();
    for (index, entry) in entries.iter().enumerate() {
        let Some(key) = &entry.public_key else {
            continue;
        };
        if let Some(&owner) = first.get(&key.value) {
            let owner = &entries[owner];
            errors.push(error(
                key.pos,
                format!(
                    "public key of {} is already the key of {}{}: every node has its own key; paste the key `credit-node init` printed on this node",
                    entry.label(),
                    owner.label(),
                    owner.public_key.as_ref().map_or(Pos::NONE, |key| key.pos).on_line()
                ),
            ));
        } else {
            first.insert(key.value, index);
        }
    }
}

fn check_unique_addresses(entries: &[Entry], errors: &mut Vec<TopologyError>) {
    let mut first: HashMap<SocketAddr, usize> = HashMap::new();
    for (index, entry) in entries.iter().enumerate() {
        let Some(address) = &entry.address else {
            continue;
        };
        if let Some(&owner) = first.get(&address.value) {
            let owner = &entries[owner];
            errors.push(error(
                address.pos,
                format!(
                    "address {} of {} is already the address of {}{}: every node listens on its own address",
                    address.value,
                    entry.label(),
                    owner.label(),
                    owner.address.as_ref().map_or(Pos::NONE, |address| address.pos).on_line()
                ),
            ));
        } else {
            first.insert(address.value, index);
        }
    }
}

fn check_one_national(draft: &Draft, errors: &mut Vec<TopologyError>) {
    let entries = &draft.entries;
    if entries.is_empty() {
        errors.push(error(
            draft.file,
            "the file declares no nodes: add a [[node]] for the national platform 000000 and one for each node of the network",
        ));
        return;
    }
    let mut nationals = entries
        .iter()
        .filter(|entry| entry.role() == Some(Role::National));
    match nationals.next() {
        None => {
            // With an unreadable role the national platform may be there; that role is reported.
            if entries.iter().all(|entry| entry.role.is_some()) {
                errors.push(error(
                    draft.file,
                    "no national node: add the national platform as a [[node]] with id = \"000000\" and role = \"national\"",
                ));
            }
        }
        Some(first) => {
            for extra in nationals {
                let pos = extra.role.as_ref().expect("filtered on the role").pos;
                errors.push(error(
                    pos,
                    format!(
                        "{} is a second national node (the first is {}{}): the network has exactly one national platform, 000000",
                        extra.label(),
                        first.label(),
                        first.role.as_ref().map_or(Pos::NONE, |role| role.pos).on_line()
                    ),
                ));
            }
        }
    }
}

/// The parent a node of this code most likely has, for a hint in "has no parent".
fn likely_parent(id: NodeId, first_by_id: &HashMap<NodeId, usize>) -> NodeId {
    let code = id.code();
    let province = NodeId::from_code(code / 10_000 * 10_000).unwrap_or(NodeId::NATIONAL);
    match Role::of_id(id) {
        Role::County => NodeId::from_code(code / 100 * 100)
            .filter(|city| first_by_id.contains_key(city))
            .unwrap_or(province),
        Role::City => province,
        Role::Province | Role::National => NodeId::NATIONAL,
    }
}

fn check_parents(
    entries: &[Entry],
    first_by_id: &HashMap<NodeId, usize>,
    linked: &HashSet<usize>,
    errors: &mut Vec<TopologyError>,
) {
    for (index, entry) in entries.iter().enumerate() {
        let Some(id) = entry.id() else { continue };
        if first_by_id.get(&id) != Some(&index) {
            continue; // a repeated id, already reported
        }
        let Some(role) = entry.effective_role() else {
            continue;
        };
        match &entry.parent {
            ParentField::Invalid(_) => {}
            ParentField::Absent => {
                if role != Role::National && !linked.contains(&index) {
                    let legacy = if matches!(role, Role::City | Role::County) {
                        format!(
                            "; or, if it sends straight to the national platform today, add a [[legacy_link]] with node = \"{id}\""
                        )
                    } else {
                        String::new()
                    };
                    errors.push(error(
                        entry.table,
                        format!(
                            "node {id} ({role}) has no parent: add parent = \"{}\"; {}{legacy}",
                            likely_parent(id, first_by_id),
                            role.parent_rule()
                        ),
                    ));
                }
            }
            ParentField::Given(parent) => {
                if role == Role::National {
                    errors.push(error(
                        parent.pos,
                        format!(
                            "the national platform {id} has no parent: remove parent = \"{}\"",
                            parent.value
                        ),
                    ));
                    continue;
                }
                if parent.value == id {
                    continue; // a cycle of one, reported with the cycles
                }
                let Some(&parent_index) = first_by_id.get(&parent.value) else {
                    errors.push(error(
                        parent.pos,
                        format!(
                            "parent {} of node {id} is not in the topology: add a [[node]] with id = \"{}\" or correct the parent",
                            parent.value, parent.value
                        ),
                    ));
                    continue;
                };
                if let Some(parent_role) = entries[parent_index].effective_role()
                    && !role.may_have_parent(parent_role)
                {
                    errors.push(error(
                        parent.pos,
                        format!(
                            "node {id} ({role}) cannot have parent {} ({parent_role}): {}",
                            parent.value,
                            role.parent_rule()
                        ),
                    ));
                }
                let province = |node: NodeId| node.code() / 10_000;
                if matches!(role, Role::City | Role::County)
                    && !parent.value.is_national()
                    && province(parent.value) != province(id)
                {
                    errors.push(error(
                        parent.pos,
                        format!(
                            "node {id} (province {:02}) has parent {} in another province: a city or county hangs under a node of its own province; fix the parent or the id",
                            province(id),
                            parent.value
                        ),
                    ));
                }
            }
        }
    }
}

/// Where a node's parent chain ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    Unvisited,
    OnPath,
    National,
    /// Stops at this entry: no parent, an unknown or unreadable parent, or (for the first
    /// entry of a cycle) a cycle.
    BrokenAt(usize),
}

/// Follows every parent chain: reports each cycle once, and for each place where chains break,
/// the nodes below it that are cut off from the national platform. A node with a legacy link
/// reaches the national platform through it, and so does every node below it.
fn check_paths(
    entries: &[Entry],
    first_by_id: &HashMap<NodeId, usize>,
    linked: &HashSet<usize>,
    errors: &mut Vec<TopologyError>,
) {
    let parent_of = |index: usize| match &entries[index].parent {
        ParentField::Given(parent) => first_by_id.get(&parent.value).copied(),
        _ => None,
    };
    let mut reach = vec![Reach::Unvisited; entries.len()];
    let mut in_cycle: HashSet<usize> = HashSet::new();
    let mut graph: Vec<usize> = first_by_id.values().copied().collect();
    graph.sort_unstable();
    for &start in &graph {
        let mut path = Vec::new();
        let mut current = start;
        let outcome = loop {
            match reach[current] {
                Reach::National => break Reach::National,
                Reach::BrokenAt(at) => break Reach::BrokenAt(at),
                Reach::OnPath => {
                    let from = path
                        .iter()
                        .position(|&index| index == current)
                        .expect("a node on the path is in the path");
                    let cycle = &path[from..];
                    let anchor = *cycle.iter().min().expect("a cycle has a node");
                    in_cycle.extend(cycle.iter().copied());
                    errors.push(cycle_error(entries, cycle, anchor));
                    break Reach::BrokenAt(anchor);
                }
                Reach::Unvisited => {
                    reach[current] = Reach::OnPath;
                    path.push(current);
                    if entries[current].id() == Some(NodeId::NATIONAL) || linked.contains(&current)
                    {
                        break Reach::National;
                    }
                    match parent_of(current) {
                        Some(parent) => current = parent,
                        None => break Reach::BrokenAt(current),
                    }
                }
            }
        };
        for index in path {
            reach[index] = outcome;
        }
    }

    let mut cut_off: HashMap<usize, Vec<usize>> = HashMap::new();
    for &index in &graph {
        if let Reach::BrokenAt(at) = reach[index]
            && at != index
            && !in_cycle.contains(&index)
        {
            cut_off.entry(at).or_default().push(index);
        }
    }
    let mut breaks: Vec<(usize, Vec<usize>)> = cut_off.into_iter().collect();
    breaks.sort_unstable();
    for (at, below) in breaks {
        let entry = &entries[at];
        let pos = match &entry.parent {
            ParentField::Given(parent) => parent.pos,
            ParentField::Invalid(pos) => *pos,
            ParentField::Absent => entry.table,
        };
        let name = entry.id().map(|id| id.to_string()).unwrap_or_default();
        let (through, fix) = if in_cycle.contains(&at) {
            (format!("the cycle through {name}"), "the cycle".to_owned())
        } else {
            (name.clone(), format!("the parent of {name}"))
        };
        errors.push(error(
            pos,
            format!(
                "{} below {through} {} no path to the national platform 000000: {}; fix {fix} first",
                count(below.len(), "node", "nodes"),
                if below.len() == 1 { "has" } else { "have" },
                list_ids(entries, &below)
            ),
        ));
    }
}

fn cycle_error(entries: &[Entry], cycle: &[usize], anchor: usize) -> TopologyError {
    let start = cycle
        .iter()
        .position(|&index| index == anchor)
        .expect("the anchor is in the cycle");
    let names: Vec<String> = cycle[start..]
        .iter()
        .chain(&cycle[..start])
        .chain(std::iter::once(&anchor))
        .map(|&index| {
            entries[index]
                .id()
                .map(|id| id.to_string())
                .unwrap_or_default()
        })
        .collect();
    let pos = match &entries[anchor].parent {
        ParentField::Given(parent) => parent.pos,
        _ => entries[anchor].table,
    };
    error(
        pos,
        format!(
            "cycle in parent links: {}: a chain of parents must end at the national platform 000000; fix one of these parents",
            names.join(" → ")
        ),
    )
}

/// Reports old keys of unknown nodes, old keys that are some node's current key or listed
/// twice (or also in `revoked_keys`), and times before 2000.
fn check_old_keys(
    draft: &Draft,
    first_by_id: &HashMap<NodeId, usize>,
    errors: &mut Vec<TopologyError>,
) {
    let current: HashMap<PublicKey, Option<NodeId>> = draft
        .entries
        .iter()
        .filter_map(|entry| Some((entry.public_key.as_ref()?.value, entry.id())))
        .collect();
    let revoked: HashSet<PublicKey> = draft.revoked_keys.iter().map(|key| key.value).collect();
    let mut seen: HashMap<PublicKey, Pos> = HashMap::new();
    // 2000-01-01T00:00:00+08:00: earlier times are typing mistakes.
    const EARLIEST_MS: u64 = 946_656_000_000;
    for old in &draft.old_keys {
        if let Some(node) = &old.node
            && !first_by_id.contains_key(&node.value)
        {
            errors.push(error(
                node.pos,
                format!(
                    "old_key of node {}, which is not in the file: an old key belongs to a node listed with [[node]]",
                    node.value
                ),
            ));
        }
        let Some(key) = &old.public_key else {
            continue;
        };
        if let Some(holder) = current.get(&key.value) {
            let who = holder.map_or_else(|| "a node".to_owned(), |id| format!("node {id}"));
            errors.push(error(
                key.pos,
                format!(
                    "key {} is listed as an old key but is still the public_key of {who}: a key is either current or old; give the node its new key (`credit-node rekey` prints it) or remove this [[old_key]]",
                    short_hex(&key.value)
                ),
            ));
        }
        if revoked.contains(&key.value) {
            errors.push(error(
                key.pos,
                format!(
                    "key {} is both in revoked_keys and an [[old_key]]: keep the [[old_key]] with revoked_at (it keeps the batches received before the compromise valid) and drop it from revoked_keys",
                    short_hex(&key.value)
                ),
            ));
        }
        if let Some(&pos) = seen.get(&key.value) {
            errors.push(error(
                key.pos,
                format!(
                    "old key {} is listed twice{}: list each old key once",
                    short_hex(&key.value),
                    pos.on_line_as("first on line")
                ),
            ));
        } else {
            seen.insert(key.value, key.pos);
        }
        if let Some((_, at)) = &old.end
            && at.value < EARLIEST_MS
        {
            errors.push(error(
                at.pos,
                format!(
                    "{} is before 2000: write when the key stopped being used",
                    beijing_time(at.value)
                ),
            ));
        }
    }
}

/// Reports assessments of unknown nodes, nodes assessed twice, and validity that ends
/// before it starts.
fn check_assessments(
    draft: &Draft,
    first_by_id: &HashMap<NodeId, usize>,
    errors: &mut Vec<TopologyError>,
) {
    let mut seen: HashMap<NodeId, Pos> = HashMap::new();
    for entry in &draft.assessments {
        if let Some(node) = &entry.node {
            if !first_by_id.contains_key(&node.value) {
                errors.push(error(
                    node.pos,
                    format!(
                        "assessment of node {}, which is not in the file: assess nodes listed with [[node]]",
                        node.value
                    ),
                ));
            }
            if let Some(&pos) = seen.get(&node.value) {
                errors.push(error(
                    node.pos,
                    format!(
                        "node {} has a second [[assessment]]{}: keep only the latest assessment",
                        node.value,
                        pos.on_line_as("after the one on line")
                    ),
                ));
            } else {
                seen.insert(node.value, node.pos);
            }
        }
        if let (Some(from), Some(until)) = (&entry.assessed_on, &entry.valid_until)
            && until.value < from.value
        {
            errors.push(error(
                until.pos,
                format!(
                    "valid_until {} is before assessed_on {}: write the last day the assessment is valid",
                    until.value, from.value
                ),
            ));
        }
    }
}

/// The schema of a section's category (an unknown category reported at its position), and
/// the category's name for messages.
fn category_schema(
    category: Option<&At<Category>>,
    errors: &mut Vec<TopologyError>,
) -> (Option<&'static protocol::Schema>, String) {
    let Some(category) = category else {
        return (None, "this category".to_owned());
    };
    let schema = Registry::builtin().get(&category.value);
    if schema.is_none() {
        errors.push(error(
            category.pos,
            unknown_category(category.value.as_str()),
        ));
    }
    (schema, category.value.to_string())
}

/// Checks every `[[profile]]`: one per category; each field a field of the category's schema,
/// listed once; no field the schema needs left out (see `Schema::why_needed`).
fn check_profiles(draft: &Draft, errors: &mut Vec<TopologyError>) {
    let mut first: HashMap<Category, Pos> = HashMap::new();
    for profile in &draft.profiles {
        let (schema, name) = category_schema(profile.category.as_ref(), errors);
        if let Some(category) = &profile.category {
            if let Some(&pos) = first.get(&category.value) {
                errors.push(error(
                    category.pos,
                    format!(
                        "second [[profile]] for {name}{}: a category has one profile; merge their fields into one",
                        pos.on_line_as("the first is on line")
                    ),
                ));
                // Its fields are checked once merged: one problem is enough here.
                continue;
            } else {
                first.insert(category.value.clone(), category.pos);
            }
        }
        let (Some(schema), Some(fields)) = (schema, &profile.fields) else {
            continue;
        };
        let known: Vec<&str> = schema.fields.iter().map(|f| f.name.as_str()).collect();
        let mut seen: HashMap<&str, Pos> = HashMap::new();
        for field in &fields.value {
            let text = field.value.as_str();
            if schema.field_index(text).is_none() {
                let hint = match crate::read::closest(text, &known) {
                    Some(suggestion) => format!("did you mean `{suggestion}`?"),
                    None => format!("its fields are {}", known.join(", ")),
                };
                errors.push(error(
                    field.pos,
                    format!("{name} has no field `{text}`: {hint}"),
                ));
            } else if let Some(&pos) = seen.get(text) {
                errors.push(error(
                    field.pos,
                    format!(
                        "field `{text}` is listed twice in the profile of {name}{}: list each field once",
                        pos.on_line_as("first on line")
                    ),
                ));
            } else {
                seen.insert(text, field.pos);
            }
        }
        for (index, field) in schema.fields.iter().enumerate() {
            if seen.contains_key(field.name.as_str()) {
                continue;
            }
            if let Some(why) = schema.why_needed(index) {
                errors.push(error(
                    fields.pos,
                    format!(
                        "the profile of {name} leaves out `{}` ({}), which cannot be left out: {why}; add it to fields",
                        field.name, field.label
                    ),
                ));
            }
        }
    }
}

fn short_hex(key: &PublicKey) -> String {
    key.to_hex()[..16].to_owned()
}

/// Reports nodes that hold a revoked key and keys revoked twice.
fn check_revoked_keys(draft: &Draft, errors: &mut Vec<TopologyError>) {
    let mut first: HashMap<PublicKey, Pos> = HashMap::new();
    for key in &draft.revoked_keys {
        if let Some(&pos) = first.get(&key.value) {
            errors.push(error(
                key.pos,
                format!(
                    "revoked key {} is listed twice{}: list each revoked key once",
                    key.value.to_hex(),
                    pos.on_line_as("first on line")
                ),
            ));
        } else {
            first.insert(key.value, key.pos);
        }
    }
    for entry in &draft.entries {
        let Some(key) = &entry.public_key else {
            continue;
        };
        if let Some(&revoked_at) = first.get(&key.value) {
            let who = match entry.id() {
                Some(id) => id.to_string(),
                None => "this node".to_owned(),
            };
            errors.push(error(
                key.pos,
                format!(
                    "key of {who} is revoked{}: run `credit-node init` for a new key and paste the public_key it prints",
                    revoked_at.on_line_as("in revoked_keys on line")
                ),
            ));
        }
    }
}

/// Checks each legacy link and returns the entries (first of each id) that have one: they
/// reach the national platform through it.
fn check_legacy_links(
    draft: &Draft,
    first_by_id: &HashMap<NodeId, usize>,
    errors: &mut Vec<TopologyError>,
) -> HashSet<usize> {
    let entries = &draft.entries;
    let mut linked = HashSet::new();
    let mut first_link: HashMap<NodeId, Pos> = HashMap::new();
    for link in &draft.links {
        for (name, field) in [
            ("verify_window_s", &link.verify_window_s),
            ("rollback_window_s", &link.rollback_window_s),
        ] {
            if let Some(window) = field.given()
                && !(1..=i128::from(LegacyLink::WINDOW_S_MAX)).contains(&window.value)
            {
                let of = link
                    .node
                    .as_ref()
                    .map(|node| format!(" of the legacy link of {}", node.value))
                    .unwrap_or_default();
                errors.push(error(
                    window.pos,
                    format!(
                        "{name} = {}{of} is out of range: write a number of seconds from 1 to {} (30 days)",
                        window.value,
                        LegacyLink::WINDOW_S_MAX
                    ),
                ));
            }
        }
        let Some(node) = &link.node else { continue };
        let id = node.value;
        if let Some(&pos) = first_link.get(&id) {
            errors.push(error(
                node.pos,
                format!(
                    "second [[legacy_link]] for {id}{}: a node has at most one legacy link; remove one",
                    pos.on_line_as("the first is on line")
                ),
            ));
            continue;
        }
        first_link.insert(id, node.pos);
        if id.is_national() {
            errors.push(error(
                node.pos,
                "the national platform 000000 has no legacy link to itself: remove this [[legacy_link]]",
            ));
            continue;
        }
        let Some(&index) = first_by_id.get(&id) else {
            errors.push(error(
                node.pos,
                format!(
                    "legacy link for {id}, which is not a node: add a [[node]] with id = \"{id}\" or correct `node`"
                ),
            ));
            continue;
        };
        linked.insert(index);
        let entry = &entries[index];
        if entry.effective_role() == Some(Role::Province) {
            errors.push(error(
                node.pos,
                format!(
                    "province {id} cannot have a legacy link: its parent already is the national platform 000000; remove this [[legacy_link]]"
                ),
            ));
        }
        if let Some(migrate) = link.migrate.given()
            && migrate.value
            && matches!(entry.parent, ParentField::Absent)
        {
            errors.push(error(
                migrate.pos,
                format!(
                    "{id} has migrate = true but no parent to move onto: add parent = \"{}\" to its [[node]]{} or set migrate = false",
                    likely_parent(id, first_by_id),
                    entry.table.on_line()
                ),
            ));
        }
    }
    linked
}

/// Checks each schedule against the compiled-in category schemas and the nodes.
fn check_schedules(
    draft: &Draft,
    first_by_id: &HashMap<NodeId, usize>,
    errors: &mut Vec<TopologyError>,
) {
    let mut first: HashMap<Category, Pos> = HashMap::new();
    for schedule in &draft.schedules {
        let (schema, name) = category_schema(schedule.category.as_ref(), errors);
        if let Some(category) = &schedule.category {
            if let Some(&pos) = first.get(&category.value) {
                errors.push(error(
                    category.pos,
                    format!(
                        "second [[schedule]] for {name}{}: a category has one schedule; merge them",
                        pos.on_line_as("the first is on line")
                    ),
                ));
            } else {
                first.insert(category.value.clone(), category.pos);
            }
        }
        if let (Some(schema), Some(cadence)) = (schema, &schedule.cadence)
            && schema.cadence != cadence.value
        {
            errors.push(error(
                cadence.pos,
                format!(
                    "{name} is reported {} (its schema says so), not {}: write cadence = \"{}\"",
                    cadence_adverb(schema.cadence),
                    cadence_adverb(cadence.value),
                    cadence_name(schema.cadence)
                ),
            ));
        }
        if let Some(cadence) = &schedule.cadence {
            let suggested = schema
                .filter(|schema| schema.cadence == cadence.value)
                .map(|schema| schema.due_day);
            check_due_day(schedule, &name, cadence.value, suggested, errors);
        }
        if let Some(reporters) = schedule.reporters.given() {
            let mut seen: HashSet<NodeId> = HashSet::new();
            for reporter in &reporters.value {
                let id = reporter.value;
                if !seen.insert(id) {
                    errors.push(error(
                        reporter.pos,
                        format!("reporter {id} of {name} is listed twice: list each reporter once"),
                    ));
                } else if id.is_national() {
                    errors.push(error(
                        reporter.pos,
                        format!(
                            "the national platform 000000 receives {name}, it does not owe it: remove it from reporters"
                        ),
                    ));
                } else if !first_by_id.contains_key(&id) {
                    errors.push(error(
                        reporter.pos,
                        format!(
                            "reporter {id} of {name} is not a node: add a [[node]] with id = \"{id}\" or remove it from reporters"
                        ),
                    ));
                }
            }
        }
        check_allocation(schedule, &name, &draft.entries, first_by_id, errors);
    }
}

/// Checks the allocation table of one schedule: its reporters are nodes, listed once; each
/// covered node is a node below its reporter, covered once, not by itself, not also listed
/// in `reporters` and without an allocation line of its own.
fn check_allocation(
    schedule: &ScheduleEntry,
    name: &str,
    entries: &[Entry],
    first_by_id: &HashMap<NodeId, usize>,
    errors: &mut Vec<TopologyError>,
) {
    let mut lines: HashMap<NodeId, Pos> = HashMap::new();
    for line in &schedule.allocation {
        let Some(reporter) = &line.reporter else {
            continue;
        };
        let id = reporter.value;
        if let Some(&pos) = lines.get(&id) {
            errors.push(error(
                reporter.pos,
                format!(
                    "{id} has a second line in the allocation table of {name}{}: one [[schedule.allocation]] per reporter; merge them",
                    pos.on_line_as("the first is on line")
                ),
            ));
            continue;
        }
        lines.insert(id, reporter.pos);
        if id.is_national() {
            errors.push(error(
                reporter.pos,
                format!(
                    "the national platform 000000 receives {name}, it does not report it: remove this [[schedule.allocation]]"
                ),
            ));
        } else if !first_by_id.contains_key(&id) {
            errors.push(error(
                reporter.pos,
                format!(
                    "the allocation table of {name} names {id}, which is not a node: add a [[node]] with id = \"{id}\" or correct `reporter`"
                ),
            ));
        }
    }
    let listed: HashMap<NodeId, Pos> = schedule
        .reporters
        .given()
        .map(|reporters| {
            reporters
                .value
                .iter()
                .map(|reporter| (reporter.value, reporter.pos))
                .collect()
        })
        .unwrap_or_default();
    let mut covered: HashMap<NodeId, (NodeId, Pos)> = HashMap::new();
    for line in &schedule.allocation {
        let (Some(reporter), Some(covers)) = (&line.reporter, line.covers.given()) else {
            continue;
        };
        let by = reporter.value;
        for node in &covers.value {
            let id = node.value;
            if let Some(&(first, pos)) = covered.get(&id) {
                let whom = if first == by {
                    "twice by the same reporter".to_owned()
                } else {
                    format!("by {first} and by {by}")
                };
                errors.push(error(
                    node.pos,
                    format!(
                        "{id} is covered {whom} in the allocation table of {name}{}: one reporter reports a node's data; remove one",
                        pos.on_line_as("first on line")
                    ),
                ));
                continue;
            }
            covered.insert(id, (by, node.pos));
            if id == by {
                errors.push(error(
                    node.pos,
                    format!(
                        "{by} covers itself in the allocation table of {name}: a reporter reports its own data anyway; list only the nodes below it in covers"
                    ),
                ));
            } else if !first_by_id.contains_key(&id) {
                errors.push(error(
                    node.pos,
                    format!(
                        "{by} covers {id} for {name}, which is not a node: add a [[node]] with id = \"{id}\" or remove it from covers"
                    ),
                ));
            } else if first_by_id.contains_key(&by) && !is_below(entries, first_by_id, id, by) {
                errors.push(error(
                    node.pos,
                    format!(
                        "{by} covers {id} for {name}, but {id} is not below {by}: a reporter reports only for nodes in its own subtree; remove {id} from covers or give it its own [[schedule.allocation]]"
                    ),
                ));
            } else if let Some(&pos) = listed.get(&id) {
                errors.push(error(
                    node.pos,
                    format!(
                        "{id} is covered by {by} for {name} but also listed in reporters{}: a covered node does not report itself; remove it from one of the two",
                        pos.on_line()
                    ),
                ));
            } else if let Some(&pos) = lines.get(&id) {
                errors.push(error(
                    node.pos,
                    format!(
                        "{id} is covered by {by} for {name} but has its own line in the allocation table{}: a covered node does not report itself; remove it from covers or remove its line",
                        pos.on_line()
                    ),
                ));
            }
        }
    }
}

/// Whether `node` lies strictly below `ancestor` by parent links (the first entry of each id;
/// a cycle, reported elsewhere, ends the walk).
fn is_below(
    entries: &[Entry],
    first_by_id: &HashMap<NodeId, usize>,
    node: NodeId,
    ancestor: NodeId,
) -> bool {
    let mut current = node;
    for _ in 0..entries.len() {
        let Some(&index) = first_by_id.get(&current) else {
            return false;
        };
        match &entries[index].parent {
            ParentField::Given(parent) if parent.value == ancestor => return true,
            ParentField::Given(parent) => current = parent.value,
            ParentField::Absent | ParentField::Invalid(_) => return false,
        }
    }
    false
}

fn check_due_day(
    schedule: &ScheduleEntry,
    name: &str,
    cadence: Cadence,
    suggested: Option<u8>,
    errors: &mut Vec<TopologyError>,
) {
    let (range, a_schedule, meaning, default) = match cadence {
        Cadence::Monthly => (
            1..=28,
            "a monthly schedule",
            "the day of the following month by which a month is due, 1 to 28",
            10,
        ),
        Cadence::Event => (
            1..=365,
            "an event schedule",
            "the number of days after the event by which it is due, 1 to 365",
            7,
        ),
        Cadence::Daily => {
            if let Some(due_day) = schedule.due_day.given()
                && due_day.value != 1
            {
                errors.push(error(
                    due_day.pos,
                    format!(
                        "due_day = {} does not apply to daily {name}: a day is due the next day; remove due_day",
                        due_day.value
                    ),
                ));
            }
            return;
        }
    };
    match &schedule.due_day {
        Field::Invalid => {}
        Field::Absent => errors.push(error(
            schedule.table,
            format!(
                "the {} schedule of {name} has no due_day: add due_day = {} ({meaning})",
                cadence_name(cadence),
                suggested.unwrap_or(default)
            ),
        )),
        Field::Given(due_day) => {
            if !range.contains(&due_day.value) {
                errors.push(error(
                    due_day.pos,
                    format!(
                        "due_day = {} is out of range for {a_schedule}: write {meaning}",
                        due_day.value
                    ),
                ));
            }
        }
    }
}

fn cadence_adverb(cadence: Cadence) -> &'static str {
    match cadence {
        Cadence::Monthly => "monthly",
        Cadence::Daily => "daily",
        Cadence::Event => "per event",
    }
}

/// "unknown category …: did you mean …? the known categories are …".
pub(crate) fn unknown_category(name: &str) -> String {
    let names = Registry::builtin().names();
    let prefixed = || {
        let lower = name.to_lowercase();
        names
            .iter()
            .find(|known| !lower.is_empty() && known.starts_with(&lower))
            .copied()
    };
    let hint = match crate::read::closest(name, &names).or_else(prefixed) {
        Some(suggestion) => format!("did you mean `{suggestion}`? "),
        None => String::new(),
    };
    format!(
        "unknown category {name:?}: {hint}the known categories are {}",
        names.join(", ")
    )
}

fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The ids of `indexes`, at most ten, then how many more.
fn list_ids(entries: &[Entry], indexes: &[usize]) -> String {
    const SHOWN: usize = 10;
    let mut text = indexes
        .iter()
        .take(SHOWN)
        .filter_map(|&index| entries[index].id())
        .map(|id| id.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if indexes.len() > SHOWN {
        text.push_str(&format!(" and {} more", indexes.len() - SHOWN));
    }
    text
}
