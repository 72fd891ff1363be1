//! Plans the move from one topology to the next as ordered steps, each with the precondition
//! that must hold before it, and refuses an edit that would leave a node without a path to the
//! national platform at any step ("establish before dismantling", 先立后破).
//!
//! The steps come in a fixed order of phases:
//!
//! 1. revocations of compromised keys (nothing waits for them);
//! 2. nodes added, top-down (a parent before its children), each with its legacy link if it
//!    has one;
//! 3. legacy links added to existing nodes;
//! 4. re-parenting: connect to the new parent, then close the link to the old one;
//! 5. legacy links: migrations (establish, verify, cut over, dismantle), roll-backs and
//!    window changes;
//! 6. legacy links removed (only after a migration a previous version asked for);
//! 7. re-keys; 8. address changes and renames; 9. schedules and their allocation tables;
//! 10. minimum-necessary profiles (fields no longer or again sent upstream);
//! 11. nodes removed, bottom-up.
//!
//! Then the steps are applied in order to a model of the network's links that starts from the
//! old topology. After every step each node present must reach `000000` through parent links
//! between present nodes, or through a legacy link still in use (its own or an ancestor's).
//! A legacy link that had `migrate = true` in the old topology is *not* counted as in use: the
//! node may already have dismantled it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

use protocol::{Category, NodeId, PublicKey, Registry};

use crate::{
    Allocation, Cadence, KeyEnd, LegacyLink, Node, OldKey, Role, Schedule, Topology, cadence_name,
};

/// The ordered steps from one topology version to the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub from_version: u64,
    pub to_version: u64,
    pub steps: Vec<Step>,
}

/// One step of a [`Plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// 1-based.
    pub number: usize,
    /// What happens, such as "add node 445200 揭阳市 (city) at 127.0.0.1:7002".
    pub action: String,
    /// What the node or the operator checks before the step, such as "445200's parent
    /// 440000 is running with the new file".
    pub before: String,
}

/// Why a plan was refused. Nothing has changed: the operator fixes the new file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The step that would break a rule, or 0 for a problem of the whole edit (the version,
    /// a revoked key given back).
    pub step: usize,
    /// That step's action, or a description of the whole edit.
    pub action: String,
    /// The node left without a path (or whose link is at fault); `000000` for whole-edit
    /// problems.
    pub node: NodeId,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "plan from version {} to version {}: ",
            self.from_version, self.to_version
        )?;
        match self.steps.len() {
            0 => return write!(f, "no steps (nothing but the version changes)"),
            1 => writeln!(f, "1 step")?,
            n => writeln!(f, "{n} steps")?,
        }
        for step in &self.steps {
            write!(
                f,
                "\n{}. {}\n   before: {}",
                step.number, step.action, step.before
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.step == 0 {
            write!(f, "refused ({}): {}", self.action, self.message)
        } else {
            write!(
                f,
                "refused at step {} ({}): {}",
                self.step, self.action, self.message
            )
        }
    }
}

impl std::error::Error for Refusal {}

/// Plans the move from `old` (the topology the network runs) to `new`.
///
/// Refused outright: a `new.version` not above `old.version`, and a key revoked in `old` that
/// `new` no longer revokes. Otherwise the steps come in this order of phases:
///
/// 1. revocations of compromised keys (nothing waits for them);
/// 2. nodes added, top-down (a parent before its children), each with its legacy link if it
///    has one;
/// 3. legacy links added to existing nodes;
/// 4. re-parenting, establish before dismantle: connect to the new parent (once it holds a
///    verified path), then close the link to the old one (once its outbox is empty and the new
///    parent has receipted everything the old one acknowledged);
/// 5. legacy links: each migration asked for in this version as four steps (establish,
///    verify, cut over, dismantle), roll-backs (`migrate` back to false) and window changes;
/// 6. legacy links removed — only if `old` already had `migrate = true` (the node reports the
///    migration complete); removing one that never migrated is refused;
/// 7. re-keys; 8. address changes and renames; 9. schedules and their allocation tables;
/// 10. minimum-necessary profiles added, narrowed, widened or removed — a narrowing needs the
///     origins on the new version first, a widening the receivers; neither is refused;
/// 11. nodes removed, bottom-up (once their outbox is empty and no node names them as parent).
///
/// Then the steps are applied in order to a model of the network's links that starts from
/// `old`. After every step each node present must reach `000000` through parent links between
/// present nodes, or through a legacy link still in use (its own or an ancestor's); the first
/// step after which one does not is refused, naming that node. A legacy link that had
/// `migrate = true` in `old` does not count as in use: the node may already have dismantled it.
pub fn plan(old: &Topology, new: &Topology) -> Result<Plan, Refusal> {
    if new.version <= old.version {
        return Err(Refusal {
            step: 0,
            action: format!("go from version {} to version {}", old.version, new.version),
            node: NodeId::NATIONAL,
            message: format!(
                "the new version {} does not raise the running version {}: set version = {} or more (nodes refuse a version that is not higher than theirs)",
                new.version,
                old.version,
                old.version + 1
            ),
        });
    }
    for key in old.revoked_keys() {
        if !new.is_revoked(key) {
            return Err(Refusal {
                step: 0,
                action: format!("drop key {} from revoked_keys", short(key)),
                node: NodeId::NATIONAL,
                message: format!(
                    "key {} is revoked in version {} and missing from revoked_keys in version {}: a revoked key is never accepted again; put it back in revoked_keys",
                    key.to_hex(),
                    old.version,
                    new.version
                ),
            });
        }
    }
    check_key_history(old, new)?;
    let mut planner = Planner {
        old,
        new,
        steps: Vec::new(),
    };
    planner.revocations();
    planner.additions();
    planner.legacy_additions();
    planner.reparenting();
    planner.migrations();
    planner.legacy_removals()?;
    planner.rekeys();
    planner.assessments();
    planner.addresses_and_names();
    planner.schedules();
    planner.profiles();
    planner.removals();
    planner.simulate()
}

/// Refuses an edit that would make signed history unverifiable or forgive a compromise: an
/// old key dropped, a revocation moved later (or turned into a retirement), a key retired at
/// another moment, or a node's key changed without its old key listed.
fn check_key_history(old: &Topology, new: &Topology) -> Result<(), Refusal> {
    let refuse = |node: NodeId, action: String, message: String| Refusal {
        step: 0,
        action,
        node,
        message,
    };
    let listed = old_keys(new);
    for was in &old.admissions().old_keys {
        let key = short(&was.public_key);
        let Some(&is) = listed.get(&was.public_key) else {
            return Err(refuse(
                was.node,
                format!("drop old key {key} of {}", was.node),
                format!(
                    "the [[old_key]] {key} of {} is in version {} and missing from version {}: an old key keeps the batches it signed verifiable (and a revoked one refused); put it back",
                    was.node, old.version, new.version
                ),
            ));
        };
        // A compromise is never forgiven: not turned into a retirement, not moved later.
        let later =
            was.end == KeyEnd::Revoked && (is.end == KeyEnd::Retired || is.at_ms > was.at_ms);
        if later || is.node != was.node || (was.end == KeyEnd::Retired && is != was) {
            return Err(refuse(
                was.node,
                format!("change old key {key} of {}", was.node),
                format!(
                    "old key {key} of {} was {} at {} in version {}: a retirement is not changed, and a revocation may only move earlier (a compromise is never forgiven); put the [[old_key]] back as it was, or move revoked_at earlier",
                    was.node,
                    was.end.as_str(),
                    crate::admission::beijing_time(was.at_ms),
                    old.version
                ),
            ));
        }
    }
    for (was, is) in kept(old, new) {
        if was.public_key == is.public_key {
            continue;
        }
        let listed = listed.get(&was.public_key).is_some_and(|k| k.node == is.id)
            || new.is_revoked(&was.public_key);
        if !listed {
            let id = is.id;
            return Err(refuse(
                id,
                format!("give {id} its new key {}", short(&is.public_key)),
                format!(
                    "{id}'s key changes from {} to {} but the old key is not listed: add an [[old_key]] with node = \"{id}\", public_key = \"{}\" and retired_at = <now> (a key replaced on schedule: what it signed stays valid) or revoked_at = <when it was compromised>",
                    short(&was.public_key),
                    short(&is.public_key),
                    was.public_key.to_hex()
                ),
            ));
        }
    }
    Ok(())
}

/// A topology's `[[old_key]]`s by key (a valid file lists each key once; after years of
/// re-keys a national file lists thousands, so the plan looks them up rather than scanning).
fn old_keys(topology: &Topology) -> HashMap<&PublicKey, &OldKey> {
    topology
        .admissions()
        .old_keys
        .iter()
        .map(|key| (&key.public_key, key))
        .collect()
}

/// The first 16 hexadecimal characters of a key, for step texts.
fn short(key: &PublicKey) -> String {
    format!("{}…", &key.to_hex()[..16])
}

/// What a step does to the links, for the path check.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Effect {
    None,
    AddNode {
        id: NodeId,
        parent: Option<NodeId>,
        legacy: bool,
    },
    /// The node's legacy link is (or is no longer) a path in use.
    Legacy {
        id: NodeId,
        in_use: bool,
    },
    Connect {
        id: NodeId,
        parent: NodeId,
    },
    Close {
        id: NodeId,
        parent: NodeId,
    },
    /// The declared parent changes while the node sends only over its legacy link.
    SetParent {
        id: NodeId,
        parent: Option<NodeId>,
    },
    RemoveNode {
        id: NodeId,
    },
}

#[derive(Debug)]
struct Planned {
    action: String,
    before: String,
    effect: Effect,
}

struct Planner<'t> {
    old: &'t Topology,
    new: &'t Topology,
    steps: Vec<Planned>,
}

/// Nodes in both versions, in the new file's order: (old, new).
fn kept<'t>(old: &'t Topology, new: &'t Topology) -> Vec<(&'t Node, &'t Node)> {
    new.nodes()
        .filter_map(|node| old.node(node.id).map(|was| (was, node)))
        .collect()
}

/// A node's name and role for step texts: "445200 揭阳市 (city)".
fn describe(node: &Node) -> String {
    format!("{} {} ({})", node.id, node.name, node.role)
}

/// Nodes sorted top-down (national, provinces, cities, counties), file order within a role.
fn top_down<'a>(nodes: impl Iterator<Item = &'a Node>) -> Vec<&'a Node> {
    let mut nodes: Vec<&Node> = nodes.collect();
    nodes.sort_by_key(|node| Reverse(node.role));
    nodes
}

/// Whether a node with this link sends only over the legacy link (no migration asked for).
fn direct(link: Option<&LegacyLink>) -> bool {
    link.is_some_and(|link| !link.migrate)
}

/// Whether a migration starts in this edit: `migrate = true` now, and not before.
fn migration_starts(old: Option<&LegacyLink>, new: Option<&LegacyLink>) -> bool {
    new.is_some_and(|link| link.migrate) && !old.is_some_and(|link| link.migrate)
}

fn describe_schedule(schedule: &Schedule) -> String {
    let when = match schedule.cadence {
        Cadence::Monthly => format!(
            "monthly, due on day {} of the following month",
            schedule.due_day
        ),
        Cadence::Event => format!("within {} days of each event", schedule.due_day),
        Cadence::Daily => "daily, due the next day".to_owned(),
    };
    let who = if schedule.reporters.is_empty() {
        "every county-level node".to_owned()
    } else {
        schedule
            .reporters
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!("{when}, reported by {who}")
}

/// One line of an allocation table for step texts: "445200 reports for 445202, 445203; data
/// source 揭阳市水务集团有限公司; responsible 揭阳市发展改革局; contact 0663-8xxxxxx".
fn describe_allocation(line: &Allocation) -> String {
    let mut text = line.reporter.to_string();
    if !line.covers.is_empty() {
        text.push_str(&format!(
            " reports for {}",
            line.covers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    text.push_str(&format!(
        "; data source {}; responsible {}",
        line.data_source, line.responsible
    ));
    if let Some(contact) = &line.contact {
        text.push_str(&format!("; contact {contact}"));
    }
    text
}

/// Whether two schedules differ in anything but their allocation tables.
fn timing_or_reporters_differ(a: &Schedule, b: &Schedule) -> bool {
    (a.cadence, a.due_day, &a.reporters) != (b.cadence, b.due_day, &b.reporters)
}

impl Planner<'_> {
    fn push(&mut self, action: String, before: String, effect: Effect) {
        self.steps.push(Planned {
            action,
            before,
            effect,
        });
    }

    fn revocations(&mut self) {
        let (old, new) = (self.old, self.new);
        for key in new.revoked_keys() {
            if old.is_revoked(key) {
                continue;
            }
            let holder = match old.node_by_key(key) {
                Some(node) => format!(" (until now the key of {})", node.id),
                None => String::new(),
            };
            self.push(
                format!("revoke key {}{holder}", short(key)),
                "nothing: a compromised key is refused at once by every node that has the new file"
                    .to_owned(),
                Effect::None,
            );
        }
    }

    fn additions(&mut self) {
        let (old, new) = (self.old, self.new);
        for node in top_down(new.nodes().filter(|node| !old.contains(node.id))) {
            let link = new.legacy_link(node.id);
            let mut action = format!("add node {} at {}", describe(node), node.address);
            if link.is_some() {
                action.push_str(", with a legacy link straight to 000000");
            }
            let before = match (link, node.parent) {
                (None, Some(parent)) => {
                    format!("{}'s parent {parent} is running with the new file", node.id)
                }
                _ => "000000 is running with the new file".to_owned(),
            };
            self.push(
                action,
                before,
                Effect::AddNode {
                    id: node.id,
                    parent: node.parent,
                    legacy: link.is_some(),
                },
            );
        }
    }

    fn legacy_additions(&mut self) {
        let (old, new) = (self.old, self.new);
        for (was, is) in kept(self.old, self.new) {
            let (Some(link), None) = (new.legacy_link(is.id), old.legacy_link(was.id)) else {
                continue;
            };
            let id = is.id;
            self.push(
                format!("add the legacy link of {id} straight to 000000"),
                "000000 is running with the new file".to_owned(),
                Effect::Legacy { id, in_use: true },
            );
            if let (false, Some(parent)) = (link.migrate, was.parent) {
                self.push(
                    format!(
                        "{id} stops sending through its parent {parent}: it sends only over its legacy link"
                    ),
                    format!(
                        "{id}'s legacy link to 000000 is up and its outbox for {parent} is empty"
                    ),
                    Effect::None,
                );
            }
        }
    }

    fn reparenting(&mut self) {
        let (old, new) = (self.old, self.new);
        let kept = kept(self.old, self.new);
        for (was, is) in top_down(kept.iter().map(|(_, is)| *is))
            .into_iter()
            .map(|is| (old.node(is.id).expect("kept"), is))
        {
            if was.parent == is.parent {
                continue;
            }
            let id = is.id;
            let (old_link, new_link) = (old.legacy_link(id), new.legacy_link(id));
            // Sending only over the legacy link before and after: the parent is only declared.
            if direct(new_link) && !old_link.is_some_and(|link| link.migrate) {
                let action = match is.parent {
                    Some(parent) => format!(
                        "{id} names {parent} as the parent it will move onto (it keeps sending only over its legacy link)"
                    ),
                    None => format!(
                        "{id} no longer names a parent (it keeps sending only over its legacy link)"
                    ),
                };
                self.push(
                    action,
                    format!("nothing: {id} sends only over its legacy link"),
                    Effect::SetParent {
                        id,
                        parent: is.parent,
                    },
                );
                continue;
            }
            if migration_starts(old_link, new_link) && direct(old_link) {
                continue; // the migration's establish step moves it
            }
            if let Some(parent) = is.parent {
                self.push(
                    format!("{id} connects to new parent {parent}"),
                    format!("{parent} holds a verified path to 000000"),
                    Effect::Connect { id, parent },
                );
            }
            if let Some(previous) = was.parent {
                let before = match is.parent {
                    Some(parent) => format!(
                        "{id}'s outbox for {previous} is empty and it has receipts from {parent} for everything {previous} acknowledged"
                    ),
                    None => format!(
                        "{id}'s outbox for {previous} is empty and its legacy link to 000000 carries its batches"
                    ),
                };
                self.push(
                    format!("{id} closes its link to old parent {previous}"),
                    before,
                    Effect::Close {
                        id,
                        parent: previous,
                    },
                );
            }
        }
    }

    fn migrations(&mut self) {
        let (old, new) = (self.old, self.new);
        for node in top_down(new.nodes()) {
            let id = node.id;
            let Some(link) = new.legacy_link(id) else {
                continue;
            };
            let previous = old.node(id).and_then(|_| old.legacy_link(id));
            if migration_starts(previous, Some(link)) {
                let parent = node.parent.expect("validated: migrate = true has a parent");
                let effect = if direct(previous) {
                    Effect::SetParent {
                        id,
                        parent: Some(parent),
                    }
                } else {
                    Effect::Connect { id, parent }
                };
                self.push(
                    format!(
                        "{id} establishes its new path through {parent}: it sends every batch over both {parent} and its legacy link (receivers dedupe by batch id)"
                    ),
                    format!("{parent} holds a verified path to 000000"),
                    effect,
                );
                self.push(
                    format!("{id} verifies the new path through {parent}"),
                    format!(
                        "the receipts that came back through {parent} cover every batch the legacy link delivered, and the new path stayed healthy for {} s",
                        link.verify_window_s
                    ),
                    Effect::None,
                );
                self.push(
                    format!(
                        "{id} cuts over: new batches go only through {parent}; the legacy link stays open and idle for {} s for rollback",
                        link.rollback_window_s
                    ),
                    format!("{id} reports the new path through {parent} verified"),
                    Effect::None,
                );
                self.push(
                    format!("{id} dismantles its legacy link to 000000"),
                    format!(
                        "the new path through {parent} stayed up for the whole rollback window of {} s after cut-over",
                        link.rollback_window_s
                    ),
                    Effect::Legacy { id, in_use: false },
                );
                continue;
            }
            let Some(previous) = previous else { continue };
            if previous.migrate && !link.migrate {
                self.push(
                    format!(
                        "{id} rolls back onto its legacy link: it sends every batch over the legacy link alone again"
                    ),
                    format!(
                        "{id} has not dismantled its legacy link (it has not reported the migration complete)"
                    ),
                    Effect::Legacy { id, in_use: true },
                );
            }
            let mut changes = Vec::new();
            if previous.verify_window_s != link.verify_window_s {
                changes.push(format!(
                    "verify window {} s → {} s",
                    previous.verify_window_s, link.verify_window_s
                ));
            }
            if previous.rollback_window_s != link.rollback_window_s {
                changes.push(format!(
                    "rollback window {} s → {} s",
                    previous.rollback_window_s, link.rollback_window_s
                ));
            }
            if !changes.is_empty() {
                self.push(
                    format!("{id}'s legacy link: {}", changes.join(", ")),
                    format!(
                        "nothing: {id} applies the new {} to the phase it is in",
                        if changes.len() == 1 {
                            "window"
                        } else {
                            "windows"
                        }
                    ),
                    Effect::None,
                );
            }
        }
    }

    fn legacy_removals(&mut self) -> Result<(), Refusal> {
        let (old, new) = (self.old, self.new);
        for (was, _) in kept(self.old, self.new) {
            let id = was.id;
            let (Some(link), None) = (old.legacy_link(id), new.legacy_link(id)) else {
                continue;
            };
            let action = format!("remove the legacy link of {id} from the file");
            if !link.migrate {
                return Err(Refusal {
                    step: self.steps.len() + 1,
                    action,
                    node: id,
                    message: format!(
                        "{id}'s legacy link is removed before any migration: add migrate = true first and let the node finish"
                    ),
                });
            }
            self.push(
                action,
                format!("{id} reports the migration complete (its legacy link is dismantled)"),
                Effect::Legacy { id, in_use: false },
            );
        }
        Ok(())
    }

    fn rekeys(&mut self) {
        let (listed, known) = (old_keys(self.new), old_keys(self.old));
        for (was, is) in kept(self.old, self.new) {
            if was.public_key != is.public_key {
                let id = is.id;
                let fate = match listed.get(&was.public_key) {
                    Some(k) if k.end == KeyEnd::Retired => format!(
                        "; batches its old key {} signed stay valid where they arrived before {}",
                        short(&was.public_key),
                        crate::admission::beijing_time(k.at_ms)
                    ),
                    Some(k) => format!(
                        "; its old key {} is revoked: batches first received after {} are quarantined, live sessions with it close",
                        short(&was.public_key),
                        crate::admission::beijing_time(k.at_ms)
                    ),
                    None => String::new(),
                };
                self.push(
                    format!("{id} takes its new key {}{fate}", short(&is.public_key)),
                    format!(
                        "{id} restarted with its new key (it re-signs what its parent has not acknowledged)"
                    ),
                    Effect::None,
                );
            }
        }
        for key in &self.new.admissions().old_keys {
            let still_current = self
                .old
                .node(key.node)
                .is_some_and(|n| n.public_key == key.public_key);
            let known = known.get(&key.public_key) == Some(&key);
            if known || still_current {
                continue;
            }
            self.push(
                format!(
                    "{} key {} of {} from {}",
                    if key.end == KeyEnd::Retired {
                        "retire"
                    } else {
                        "revoke"
                    },
                    short(&key.public_key),
                    key.node,
                    crate::admission::beijing_time(key.at_ms)
                ),
                "nothing: every node judges signatures by the new file".to_owned(),
                Effect::None,
            );
        }
    }

    fn assessments(&mut self) {
        let (old, new) = (self.old, self.new);
        for a in &new.admissions().assessments {
            if old.assessment(a.node) == Some(a) {
                continue;
            }
            self.push(
                format!(
                    "assessment of {} by {}: valid {} to {}",
                    a.node, a.assessor, a.assessed_on, a.valid_until
                ),
                "nothing: its parent admits it while the assessment is valid".to_owned(),
                Effect::None,
            );
        }
        if new.admissions().require_assessment && !old.admissions().require_assessment {
            let missing: Vec<String> = new
                .nodes()
                .filter(|n| n.id != NodeId::NATIONAL && new.assessment(n.id).is_none())
                .map(|n| n.id.to_string())
                .collect();
            let who = if missing.is_empty() {
                "every node has an assessment".to_owned()
            } else {
                format!(
                    "refused from now on for want of an assessment: {}",
                    missing.join(", ")
                )
            };
            self.push(
                format!("require security assessments (接入前安全评估); {who}"),
                "each parent checks its children's assessments with the new file".to_owned(),
                Effect::None,
            );
        }
    }

    fn addresses_and_names(&mut self) {
        for (was, is) in kept(self.old, self.new) {
            let id = is.id;
            if was.address != is.address {
                self.push(
                    format!("{id} moves from {} to {}", was.address, is.address),
                    format!("{id} is listening on {}", is.address),
                    Effect::None,
                );
            }
            if was.name != is.name {
                self.push(
                    format!("{id} is renamed {} → {}", was.name, is.name),
                    "nothing: names are only shown to operators".to_owned(),
                    Effect::None,
                );
            }
        }
    }

    fn schedules(&mut self) {
        let (old, new) = (self.old, self.new);
        for schedule in new.schedules() {
            let category = &schedule.category;
            match old.schedule(category) {
                None => self.push(
                    format!(
                        "add the schedule of {category}: {}",
                        describe_schedule(schedule)
                    ),
                    "nothing: the timeliness ledger expects it from the next period".to_owned(),
                    Effect::None,
                ),
                Some(previous) if timing_or_reporters_differ(previous, schedule) => self.push(
                    format!(
                        "change the schedule of {category}: {} → {}",
                        describe_schedule(previous),
                        describe_schedule(schedule)
                    ),
                    "nothing: the timeliness ledger applies it from the next period".to_owned(),
                    Effect::None,
                ),
                Some(_) => {}
            }
            self.allocation(old.schedule(category), schedule);
        }
        for schedule in old.schedules() {
            if new.schedule(&schedule.category).is_none() {
                self.push(
                    format!(
                        "remove the schedule of {} ({})",
                        schedule.category,
                        cadence_name(schedule.cadence)
                    ),
                    "nothing: the timeliness ledger stops expecting it from the next period"
                        .to_owned(),
                    Effect::None,
                );
            }
        }
    }

    /// The lines of `schedule`'s allocation table added or changed since `previous` (in the
    /// new table's order), then the lines removed.
    fn allocation(&mut self, previous: Option<&Schedule>, schedule: &Schedule) {
        let category = &schedule.category;
        // What the operator should know before: a change of `covers` changes who owes the
        // category; the rest only changes what the report shows.
        let before = |was: Option<&Allocation>, line: Option<&Allocation>| {
            let covers_of = |line: Option<&Allocation>| line.map(|l| l.covers.clone());
            if covers_of(was).unwrap_or_default() != covers_of(line).unwrap_or_default() {
                "nothing: the timeliness ledger expects the covered nodes' reports from their new reporter"
                    .to_owned()
            } else if line.is_none() {
                "nothing: the report no longer shows it".to_owned()
            } else {
                "nothing: the report shows the allocation beside the reporter's reports".to_owned()
            }
        };
        for line in &schedule.allocation {
            match previous.and_then(|p| p.allocation_of(line.reporter)) {
                None => self.push(
                    format!(
                        "add to the allocation table of {category}: {}",
                        describe_allocation(line)
                    ),
                    before(None, Some(line)),
                    Effect::None,
                ),
                Some(was) if was != line => self.push(
                    format!(
                        "change the allocation table of {category}: {} → {}",
                        describe_allocation(was),
                        describe_allocation(line)
                    ),
                    before(Some(was), Some(line)),
                    Effect::None,
                ),
                Some(_) => {}
            }
        }
        for was in previous.map_or(&[][..], |p| &p.allocation) {
            if schedule.allocation_of(was.reporter).is_none() {
                self.push(
                    format!(
                        "remove from the allocation table of {category}: {}",
                        describe_allocation(was)
                    ),
                    before(Some(was), None),
                    Effect::None,
                );
            }
        }
    }

    /// Profiles added, narrowed, widened or removed: in the new file's order, then the ones
    /// removed. A field no longer sent is one step (origins first: receivers on the new version
    /// refuse batches that carry it); a field now sent is another (receivers first: a
    /// receiver on the old version refuses batches that carry it).
    fn profiles(&mut self) {
        let (old, new) = (self.old, self.new);
        let mut categories: Vec<&Category> = new
            .admissions()
            .profiles
            .iter()
            .map(|profile| &profile.category)
            .collect();
        categories.extend(
            old.admissions()
                .profiles
                .iter()
                .map(|profile| &profile.category)
                .filter(|category| new.profile(category).is_none()),
        );
        for category in categories {
            let Some(schema) = Registry::builtin().get(category) else {
                continue;
            };
            let (was, is) = (old.profile(category), new.profile(category));
            if was == is {
                continue;
            }
            // What is sent upstream: the profile's fields, or every field without one.
            let sent = |profile: Option<&crate::Profile>, name: &str| {
                profile.is_none_or(|profile| profile.allows(name))
            };
            let names = |keep: &dyn Fn(&str) -> bool| -> Vec<&str> {
                schema
                    .fields
                    .iter()
                    .map(|field| field.name.as_str())
                    .filter(|name| keep(name))
                    .collect()
            };
            let dropped = names(&|name| sent(was, name) && !sent(is, name));
            let again = names(&|name| !sent(was, name) && sent(is, name));
            let verb = match (was, is) {
                (None, _) => "add",
                (_, None) => "remove",
                _ if again.is_empty() => "narrow",
                _ if dropped.is_empty() => "widen",
                _ => "change",
            };
            if dropped.is_empty() && again.is_empty() {
                self.push(
                    format!(
                        "{verb} the profile of {category} (最小必要): it lists every field of the schema, so nothing changes upstream"
                    ),
                    "nothing".to_owned(),
                    Effect::None,
                );
            }
            if !dropped.is_empty() {
                let list = dropped.join(", ");
                self.push(
                    format!(
                        "{verb} the profile of {category} (最小必要): fields no longer sent upstream: {list}"
                    ),
                    format!(
                        "every node that originates {category} runs this version first: receivers on this version refuse batches that carry {list}, including batches already in flight"
                    ),
                    Effect::None,
                );
            }
            if !again.is_empty() {
                let list = again.join(", ");
                self.push(
                    format!(
                        "{verb} the profile of {category} (最小必要): fields now sent upstream too: {list}"
                    ),
                    format!(
                        "every node that receives {category} runs this version first: a receiver on the old version refuses batches that carry {list}"
                    ),
                    Effect::None,
                );
            }
        }
    }

    fn removals(&mut self) {
        let new = self.new;
        let mut gone: Vec<&Node> = self
            .old
            .nodes()
            .filter(|node| !new.contains(node.id))
            .collect();
        gone.sort_by_key(|node| node.role);
        for node in gone {
            let id = node.id;
            self.push(
                format!("remove node {}", describe(node)),
                format!("{id}'s outbox is empty and no node names {id} as parent"),
                Effect::RemoveNode { id },
            );
        }
    }

    /// Applies the steps in order to the old topology's links and refuses at the first step
    /// after which some node has no path to the national platform.
    fn simulate(self) -> Result<Plan, Refusal> {
        let mut links = Links::of(self.old);
        let mut steps = Vec::with_capacity(self.steps.len());
        // Whether every node had a path after the last step checked. From then on a step
        // can strand only the node it changes and the nodes below it: a node's path runs
        // through its ancestors alone. So a step that changes no link is not checked again,
        // and one that changes a node nothing hangs under checks that node alone. A plan of
        // the whole nation (3,210 nodes, a step each) took 0.6-1.4 s when every step walked
        // every node's path, 8-12 ms now (`benches/plan.rs`).
        let mut clean = false;
        for (index, planned) in self.steps.into_iter().enumerate() {
            let number = index + 1;
            links.apply(&planned.effect);
            let stranded = if clean {
                links.stranded_by(&planned.effect, self.old.version)
            } else {
                links.stranded(self.old.version)
            };
            debug_assert_eq!(
                stranded,
                links.stranded(self.old.version),
                "the step's own check agrees with the whole network's"
            );
            clean = true;
            if let Some((node, message)) = stranded {
                return Err(Refusal {
                    step: number,
                    action: planned.action,
                    node,
                    message,
                });
            }
            steps.push(Step {
                number,
                action: planned.action,
                before: planned.before,
            });
        }
        Ok(Plan {
            from_version: self.old.version,
            to_version: self.new.version,
            steps,
        })
    }
}

/// How a node's legacy link counts for the path check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LegacyState {
    Absent,
    InUse,
    /// `migrate = true` in the old topology: the node may already have dismantled it.
    MaybeDismantled,
    /// Dismantled or removed by a step of this plan.
    Closed,
}

#[derive(Debug, Clone)]
struct LinkState {
    role: Role,
    parents: Vec<NodeId>,
    legacy: LegacyState,
}

/// The links of the network between two steps.
#[derive(Debug, Clone)]
struct Links {
    nodes: BTreeMap<NodeId, LinkState>,
}

impl Links {
    fn of(topology: &Topology) -> Links {
        let nodes = topology
            .nodes()
            .map(|node| {
                let legacy = match topology.legacy_link(node.id) {
                    None => LegacyState::Absent,
                    Some(link) if link.migrate => LegacyState::MaybeDismantled,
                    Some(_) => LegacyState::InUse,
                };
                let state = LinkState {
                    role: node.role,
                    parents: node.parent.into_iter().collect(),
                    legacy,
                };
                (node.id, state)
            })
            .collect();
        Links { nodes }
    }

    fn apply(&mut self, effect: &Effect) {
        match effect {
            Effect::None => {}
            Effect::AddNode { id, parent, legacy } => {
                let state = LinkState {
                    role: Role::of_id(*id),
                    parents: parent.iter().copied().collect(),
                    legacy: if *legacy {
                        LegacyState::InUse
                    } else {
                        LegacyState::Absent
                    },
                };
                self.nodes.insert(*id, state);
            }
            Effect::Legacy { id, in_use } => {
                if let Some(state) = self.nodes.get_mut(id) {
                    state.legacy = if *in_use {
                        LegacyState::InUse
                    } else {
                        LegacyState::Closed
                    };
                }
            }
            Effect::Connect { id, parent } => {
                if let Some(state) = self.nodes.get_mut(id)
                    && !state.parents.contains(parent)
                {
                    state.parents.push(*parent);
                }
            }
            Effect::Close { id, parent } => {
                if let Some(state) = self.nodes.get_mut(id) {
                    state.parents.retain(|p| p != parent);
                }
            }
            Effect::SetParent { id, parent } => {
                if let Some(state) = self.nodes.get_mut(id) {
                    state.parents = parent.iter().copied().collect();
                }
            }
            Effect::RemoveNode { id } => {
                self.nodes.remove(id);
            }
        }
    }

    /// Which nodes reach `000000`: parents are higher in the hierarchy, so resolving from the
    /// top down needs no recursion, but cycles in a hand-made effect list must not loop.
    fn reaching(&self) -> HashMap<NodeId, bool> {
        let mut reach: HashMap<NodeId, bool> = HashMap::new();
        // Repeat until nothing changes: at most the depth of the hierarchy (4) plus one.
        loop {
            let mut changed = false;
            for (id, state) in &self.nodes {
                if reach.get(id) == Some(&true) {
                    continue;
                }
                let reaches = id.is_national()
                    || state.legacy == LegacyState::InUse
                    || state
                        .parents
                        .iter()
                        .any(|parent| reach.get(parent) == Some(&true));
                if reaches {
                    reach.insert(*id, true);
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        reach
    }

    /// [`Links::stranded`] after `effect`, when every node had a path before it: only the
    /// node the effect changes, and what hangs under it, can have lost theirs. A node nothing
    /// hangs under is checked alone (its parents still have their paths); for any other the
    /// whole network is.
    fn stranded_by(&self, effect: &Effect, old_version: u64) -> Option<(NodeId, String)> {
        let id = match effect {
            Effect::None => return None,
            Effect::AddNode { id, .. }
            | Effect::Legacy { id, .. }
            | Effect::Connect { id, .. }
            | Effect::Close { id, .. }
            | Effect::SetParent { id, .. }
            | Effect::RemoveNode { id } => *id,
        };
        if self.nodes.values().any(|state| state.parents.contains(&id)) {
            return self.stranded(old_version);
        }
        let state = self.nodes.get(&id)?;
        let reaches = id.is_national()
            || state.legacy == LegacyState::InUse
            || state
                .parents
                .iter()
                .any(|parent| *parent != id && self.nodes.contains_key(parent));
        if reaches {
            return None;
        }
        Some(self.why_stranded(id, state, 0, old_version))
    }

    /// The highest node without a path, and why, in words.
    fn stranded(&self, old_version: u64) -> Option<(NodeId, String)> {
        let reach = self.reaching();
        let mut stranded: Vec<(&NodeId, &LinkState)> = self
            .nodes
            .iter()
            .filter(|(id, _)| reach.get(id) != Some(&true))
            .collect();
        stranded.sort_by_key(|(id, state)| (Reverse(state.role), **id));
        let (&id, state) = *stranded.first()?;
        Some(self.why_stranded(id, state, stranded.len() - 1, old_version))
    }

    /// Why node `id` has no path, in words, with how many `others` lose theirs with it.
    fn why_stranded(
        &self,
        id: NodeId,
        state: &LinkState,
        others: usize,
        old_version: u64,
    ) -> (NodeId, String) {
        let parents = match state.parents.as_slice() {
            [] => "it has no parent link".to_owned(),
            parents => parents
                .iter()
                .map(|parent| {
                    if self.nodes.contains_key(parent) {
                        format!("its parent {parent} has no path")
                    } else {
                        format!("its parent {parent} is removed")
                    }
                })
                .collect::<Vec<_>>()
                .join(", "),
        };
        let legacy = match state.legacy {
            LegacyState::Absent => "no legacy link".to_owned(),
            LegacyState::Closed => "its legacy link is dismantled".to_owned(),
            LegacyState::MaybeDismantled => format!(
                "its legacy link may already be dismantled (it has migrate = true in version {old_version})"
            ),
            LegacyState::InUse => unreachable!("a legacy link in use is a path"),
        };
        let below = match others {
            0 => String::new(),
            1 => " (nor would 1 other node)".to_owned(),
            n => format!(" (nor would {n} other nodes)"),
        };
        (
            id,
            format!(
                "{id} would have no path to 000000 after this step{below}: {parents}, and {legacy}; keep a path it uses in this version and take the old one away in a later version, once it has moved"
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> NodeId {
        NodeId::parse(text).unwrap()
    }

    /// The path check itself, on effects no valid pair of files produces: a city removed
    /// while its county still names it.
    #[test]
    fn removing_a_parent_before_its_child_moves_is_refused() {
        let topology = crate::generate(id("440000"), 20_000).unwrap();
        let mut links = Links::of(&topology);
        assert_eq!(links.stranded(1), None);
        links.apply(&Effect::RemoveNode { id: id("445200") });
        let (node, message) = links.stranded(1).unwrap();
        assert_eq!(node, id("445202"));
        assert_eq!(
            message,
            "445202 would have no path to 000000 after this step (nor would 4 other nodes): its parent 445200 is removed, and no legacy link; keep a path it uses in this version and take the old one away in a later version, once it has moved"
        );
        links.apply(&Effect::AddNode {
            id: id("445200"),
            parent: Some(id("440000")),
            legacy: false,
        });
        assert_eq!(links.stranded(1), None);
        links.apply(&Effect::Close {
            id: id("445200"),
            parent: id("440000"),
        });
        assert_eq!(links.stranded(1).unwrap().0, id("445200"));
        links.apply(&Effect::Legacy {
            id: id("445200"),
            in_use: true,
        });
        assert_eq!(
            links.stranded(1),
            None,
            "a legacy link carries the city and its counties"
        );
    }
}
