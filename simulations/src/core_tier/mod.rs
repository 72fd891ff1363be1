//! The core tier: node cores (the same `node::core` the runtime executes) wired by a
//! simulated message network, fast enough for all of Guangdong over a year and for all of
//! China. Signatures go through the [`keys`] seam (a keyed hash), stores are `MemKv`.
//!
//! A run is a [`Plan`] (scenario and seed: topology, submissions, a later topology for a
//! migration) plus [`Faults`] chosen from the seed ("swarm": each kind of fault is on or off
//! per seed, with its own intensity). Invariants are checked at every step; after the last
//! submission every fault is healed and the network must converge within a bound.

pub mod keys;
pub mod workload;
pub mod world;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use protocol::ids::days_in_month;
use protocol::schema::Cadence;
use protocol::{NodeId, Period, PublicKey};
use topology::{LegacyLink, Node as TopologyNode, Role, Schedule, Topology};

pub use world::{Stats, World};

const DAY_MS: u64 = 86_400_000;

/// Every choice of a run comes from one [`Rng`] (SplitMix64, shared with the sample data):
/// [`rng_for`] salts the seed, so a run's stream is not the sample data's of the same seed.
pub use sample::Rng;

/// The run's generator for `seed`.
pub fn rng_for(seed: u64) -> Rng {
    Rng::new(seed ^ 0x005E_ED0F_C0DE)
}

/// What an origin's operator does at a planned time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Submits one batch of records; `salt` makes two batches of the same origin, category
    /// and period differ.
    Data { salt: u32 },
    /// Closes the period (`credit-node close-period`): a signed manifest naming the data
    /// batches submitted for it, with the data source's declared total if given. Done once
    /// every data batch of the report is acknowledged, as an operator would.
    Close { declared: Option<u64> },
    /// A province's progress report (工作通报) for the period, to the national platform.
    Progress,
    /// Corrects the chain of versions that data submission `of` began: new versions of 1–3
    /// of its current records (an amount changed), superseding the chain's last version.
    /// Made once every earlier version is acknowledged; `pick` makes the choices.
    Correct { of: usize, pick: u64 },
    /// Withdraws 1–3 current records of that chain (a penalty's display period ended or its
    /// subject repaired; a fee published in error), superseding its last version.
    Withdraw { of: usize, pick: u64 },
}

/// One thing an origin's operator submits.
#[derive(Debug, Clone)]
pub struct Submission {
    pub at_ms: u64,
    pub origin: NodeId,
    pub category: String,
    pub period: Period,
    pub action: Action,
    /// The planned report (index into [`Plan::reports`]) it belongs to, if any.
    pub report: Option<usize>,
}

/// What the workload does with one monthly report a schedule expects. The ledger's ground
/// truth is not this plan but what happened (the simulator watches the first parent's
/// receipts); the fate says what was planted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fate {
    /// Data, then the manifest, days before the due date.
    OnTime,
    /// Data and manifest days after the due date.
    Late,
    /// Nothing at all.
    Missing,
    /// On time, but the manifest declares more records than were delivered (瞒报).
    Short,
    /// A nil manifest (零报告) on time, and no data.
    Nil,
}

/// One (reporter, category, month) a schedule expects, and what the workload does with it.
#[derive(Debug, Clone)]
pub struct PlannedReport {
    pub reporter: NodeId,
    pub category: String,
    pub period: Period,
    pub fate: Fate,
    /// The submissions making it (indices into [`Plan::submissions`]): data first.
    pub submissions: Vec<usize>,
}

/// What a scenario and a seed fix before faults are chosen.
#[derive(Clone)]
pub struct Plan {
    pub scenario: String,
    pub seed: u64,
    pub topology: Arc<Topology>,
    /// Later versions, applied by a [`Fault::Topology`].
    pub topologies: BTreeMap<u64, Arc<Topology>>,
    pub secrets: HashMap<NodeId, [u8; 32]>,
    pub submissions: Vec<Submission>,
    /// The monthly reports the schedules expect, with their planted fates.
    pub reports: Vec<PlannedReport>,
    /// When the last submission is made and every fault is healed.
    pub workload_end_ms: u64,
    /// How long after healing the network has to converge.
    pub heal_bound_ms: u64,
}

/// A fault of the swarm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    Partition {
        child: NodeId,
        parent: NodeId,
    },
    Crash {
        node: NodeId,
    },
    DiskFull {
        node: NodeId,
    },
    /// The link from `child` to its parent flips a byte of some batch streams.
    Corrupt {
        child: NodeId,
    },
    /// The link from `child` to its parent alters some batches and re-hashes them, keeping
    /// the origin's signature.
    Tamper {
        child: NodeId,
    },
    /// The node's wall clock steps (windows run on monotonic time and must not care).
    ClockStep {
        node: NodeId,
        step_ms: i64,
    },
    /// Every node loads this topology version (a migration starts).
    Topology {
        version: u64,
    },
    /// A key the topology does not pin (a revoked or unknown node) keeps trying to connect.
    Intruder {
        parent: NodeId,
        key: PublicKey,
    },
    /// The node crashes and its durable store loses some batches it relayed (a restored
    /// backup, a lost disk sector); reconciliation with its children must bring them back.
    Lose {
        node: NodeId,
        count: u64,
    },
    /// The link from `child` to its parent drops or forges (back-dates, keeping the
    /// signature) the proof of first arrival that travels with relayed batches.
    Proof {
        child: NodeId,
    },
    /// The node is given a new key: it stops, every node loads a topology version with its
    /// new key and the old one retired (a rotation) or `revoked` (a compromise), and it
    /// starts again with the new key. Its batches signed with the old key and first received
    /// before the end must still arrive and verify everywhere; a revoked key's receipts no
    /// longer prove when anything arrived.
    Rekey {
        node: NodeId,
        revoked: bool,
    },
    /// Security assessments become required and the node's lapses: its parent refuses it at
    /// the handshake and closes its live session within a minute; its data waits in its
    /// outbox. At the end every node loads a version with the assessment renewed.
    Assessment {
        node: NodeId,
    },
    /// Someone at the node's operator API submits a batch the node must refuse, as `how`
    /// says; the core answers with an error and stores nothing of it.
    Forge {
        node: NodeId,
        how: Forgery,
    },
}

/// What a forged submission ([`Fault::Forge`]) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forgery {
    /// The node's own origin, signed with another node's key (one stolen key).
    StolenKey,
    /// Another node's batch, as that node made and signed it.
    OthersBatch,
    /// The node's own batch, one byte changed after signing.
    Damaged,
    /// The node's own batch, signed with its key, with a record that fails its checks (every
    /// value of the first record absent).
    BadRecord,
    /// The node's own batch in a non-canonical encoding (the first record's key length
    /// written as a three-byte varint: the same batch once decoded), hashed and signed with
    /// its key: only the canonical-form check can refuse it.
    NonCanonical,
    /// The node's own batch, signed with its key, with one value of the first record written
    /// in another form of the same value (an amount `12.5` as `12.50`, a date without its
    /// dashes): only the receiver's normal-form check of each value can refuse it.
    NotNormal,
}

#[derive(Debug, Clone)]
pub struct PlannedFault {
    pub at_ms: u64,
    pub duration_ms: u64,
    pub fault: Fault,
}

/// The faults of one seed.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    pub latency_ms: u64,
    pub jitter_ms: u64,
    /// Chance per control frame that the link breaks (QUIC: delivered, or the link dies).
    pub break_per_million: u64,
    /// Chance per batch stream that it arrives twice.
    pub duplicate_percent: u64,
    /// Chance per batch sent that the sender crashes with it in flight.
    pub crash_on_send_per_mille: u64,
    pub list: Vec<PlannedFault>,
}

impl Faults {
    /// The swarm: each kind of fault is on or off for this seed, with its own intensity.
    pub fn choose(plan: &Plan, rng: &mut Rng) -> Faults {
        let end = plan.workload_end_ms;
        let nodes: Vec<&TopologyNode> = plan.topology.nodes().collect();
        let children: Vec<&TopologyNode> = nodes
            .iter()
            .copied()
            .filter(|n| n.parent.is_some())
            .collect();
        // Nodes that relay others' batches (and hold them): a lost batch can come back from
        // below. Relaying children: a proof of first arrival travels only on their uplinks.
        let relays: Vec<NodeId> = nodes
            .iter()
            .filter(|n| n.role != Role::County)
            .map(|n| n.id)
            .collect();
        let relaying: Vec<NodeId> = children
            .iter()
            .filter(|n| n.role == Role::City)
            .map(|n| n.id)
            .collect();
        let mut faults = Faults {
            latency_ms: rng.between(1, 50),
            jitter_ms: rng.below(150),
            break_per_million: if rng.coin() { rng.below(3_000) } else { 0 },
            duplicate_percent: if rng.coin() { rng.below(10) } else { 0 },
            crash_on_send_per_mille: if rng.coin() { rng.between(1, 5) } else { 0 },
            list: Vec::new(),
        };
        let add = |rng: &mut Rng, kind: u8, list: &mut Vec<PlannedFault>| {
            let count = rng.between(1, 12);
            for _ in 0..count {
                let at_ms = rng.below(end);
                let child = children[rng.below(children.len() as u64) as usize];
                let any = nodes[rng.below(nodes.len() as u64) as usize].id;
                let (fault, duration_ms) = match kind {
                    0 => (
                        Fault::Partition {
                            child: child.id,
                            parent: child.parent.expect("a child"),
                        },
                        rng.between(60_000, 2 * DAY_MS),
                    ),
                    1 => (
                        Fault::Crash { node: any },
                        rng.between(1_000, 2 * 3_600_000),
                    ),
                    2 => (
                        Fault::DiskFull { node: any },
                        rng.between(60_000, DAY_MS / 2),
                    ),
                    3 => (
                        Fault::Corrupt { child: child.id },
                        rng.between(3_600_000, 3 * DAY_MS),
                    ),
                    4 => (
                        Fault::Tamper { child: child.id },
                        rng.between(3_600_000, 3 * DAY_MS),
                    ),
                    5 => (
                        Fault::ClockStep {
                            node: any,
                            step_ms: rng.between(0, 2 * DAY_MS) as i64 - DAY_MS as i64,
                        },
                        1,
                    ),
                    7 => (
                        Fault::Lose {
                            node: relays[rng.below(relays.len() as u64) as usize],
                            count: rng.between(1, 30),
                        },
                        rng.between(1_000, 3_600_000),
                    ),
                    8 if !relaying.is_empty() => (
                        Fault::Proof {
                            child: relaying[rng.below(relaying.len() as u64) as usize],
                        },
                        rng.between(3_600_000, 5 * DAY_MS),
                    ),
                    _ => {
                        let parent = child.parent.expect("a child");
                        let mut seed = [0u8; 32];
                        seed[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
                        let key = protocol::NodeKey::from_seed(seed).public();
                        (Fault::Intruder { parent, key }, 1)
                    }
                };
                list.push(PlannedFault {
                    at_ms,
                    duration_ms,
                    fault,
                });
            }
        };
        for kind in 0..9u8 {
            if rng.coin() {
                add(rng, kind, &mut faults.list);
            }
        }
        for version in plan.topologies.keys() {
            faults.list.push(PlannedFault {
                at_ms: rng.below(end / 2),
                duration_ms: 1,
                fault: Fault::Topology { version: *version },
            });
        }
        // Re-keys come after every planned topology version (each builds the next version on
        // the one the network runs).
        if rng.coin() {
            for _ in 0..rng.between(1, 4) {
                faults.list.push(PlannedFault {
                    at_ms: end / 2 + rng.below(end / 2),
                    duration_ms: rng.between(1_000, 3_600_000),
                    fault: Fault::Rekey {
                        node: nodes[rng.below(nodes.len() as u64) as usize].id,
                        revoked: rng.coin(),
                    },
                });
            }
        }
        // So do lapsed assessments (each version builds on the one the network runs).
        if rng.coin() {
            for _ in 0..rng.between(1, 3) {
                let node = nodes[rng.below(nodes.len() as u64) as usize].id;
                if node.is_national() {
                    continue;
                }
                faults.list.push(PlannedFault {
                    at_ms: end / 2 + rng.below(end / 2),
                    duration_ms: rng.between(3_600_000, 86_400_000),
                    fault: Fault::Assessment { node },
                });
            }
        }
        // Forged submissions draw on randomness of their own, so that a seed's other faults and
        // events stay what they were before this kind of fault existed.
        let mut forging = Rng::new(plan.seed ^ 0x00F0_26ED_5B17);
        if forging.coin() {
            let origins: Vec<NodeId> = nodes
                .iter()
                .map(|n| n.id)
                .filter(|id| !id.is_national())
                .collect();
            for _ in 0..forging.between(1, 8) {
                let node = origins[forging.below(origins.len() as u64) as usize];
                let how = [
                    Forgery::StolenKey,
                    Forgery::OthersBatch,
                    Forgery::Damaged,
                    Forgery::BadRecord,
                    Forgery::NonCanonical,
                    Forgery::NotNormal,
                ][forging.below(6) as usize];
                faults.list.push(PlannedFault {
                    at_ms: forging.below(end),
                    duration_ms: 1,
                    fault: Fault::Forge { node, how },
                });
            }
        }
        faults
    }

    /// The fault kinds this seed turned on, for the report.
    pub fn summary(&self) -> String {
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        for f in &self.list {
            let name = match f.fault {
                Fault::Partition { .. } => "partition",
                Fault::Crash { .. } => "crash",
                Fault::DiskFull { .. } => "disk-full",
                Fault::Corrupt { .. } => "corrupt",
                Fault::Tamper { .. } => "tamper",
                Fault::ClockStep { .. } => "clock-step",
                Fault::Topology { .. } => "migration",
                Fault::Intruder { .. } => "intruder",
                Fault::Lose { .. } => "store-loss",
                Fault::Proof { .. } => "proof",
                Fault::Rekey { revoked: false, .. } => "rekey",
                Fault::Rekey { revoked: true, .. } => "revoke",
                Fault::Assessment { .. } => "assessment-lapse",
                Fault::Forge { .. } => "forged-submit",
            };
            *kinds.entry(name).or_default() += 1;
        }
        let mut parts = vec![format!("latency {}+{} ms", self.latency_ms, self.jitter_ms)];
        if self.break_per_million > 0 {
            parts.push(format!("breaks {}/M frames", self.break_per_million));
        }
        if self.duplicate_percent > 0 {
            parts.push(format!("dup {}%", self.duplicate_percent));
        }
        if self.crash_on_send_per_mille > 0 {
            parts.push(format!("crash-on-send {}‰", self.crash_on_send_per_mille));
        }
        parts.extend(kinds.into_iter().map(|(k, n)| format!("{k}×{n}")));
        parts.join(", ")
    }
}

/// An invariant broken: when, at which step, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub at_ms: u64,
    pub step: u64,
    pub message: String,
}

/// The scenarios of the core tier.
pub const SCENARIOS: [&str; 3] = ["guangdong-year", "china-year", "jieyang-year"];

/// Builds a scenario's plan for a seed.
pub fn plan(scenario: &str, seed: u64) -> Result<Plan, String> {
    let (divisions, days, daily): (Vec<topology::Division>, u64, bool) = match scenario {
        "guangdong-year" => (province_divisions(440000), 365, true),
        "jieyang-year" => (
            province_divisions(440000)
                .into_iter()
                .filter(|d| d.role == Role::Province || d.id.code() / 100 == 4452)
                .collect(),
            365,
            true,
        ),
        // The nation: monthly fees, and 双公示 data weekly (a daily year of 2,800 counties is
        // a million batches; weekly keeps the run within its budget).
        "china-year" => (china_divisions(), 365, false),
        other => {
            return Err(format!(
                "unknown scenario {other:?}; known: {}",
                SCENARIOS.join(", ")
            ));
        }
    };
    let mut rng = rng_for(seed ^ 0xD1CE);
    let mut secrets = HashMap::new();
    let mut nodes = Vec::new();
    let national = NodeId::NATIONAL;
    let mut add = |id: NodeId, name: &str, role: Role, parent: Option<NodeId>, index: usize| {
        let secret = keys::secret(seed, id, 0);
        secrets.insert(id, secret);
        nodes.push(TopologyNode {
            id,
            name: name.to_owned(),
            role,
            parent,
            address: std::net::SocketAddr::from(([127, 0, 0, 1], 10_000 + index as u16)),
            public_key: keys::public_of(&secret),
        });
    };
    add(national, topology::NATIONAL_NAME, Role::National, None, 0);
    for (i, d) in divisions.iter().enumerate() {
        let parent = d.parent.or(Some(national));
        add(d.id, &d.name, d.role, parent, i + 1);
    }
    let counties: Vec<NodeId> = nodes
        .iter()
        .filter(|n| n.role == Role::County)
        .map(|n| n.id)
        .collect();
    let cities: Vec<NodeId> = nodes
        .iter()
        .filter(|n| n.role == Role::City)
        .map(|n| n.id)
        .collect();
    // A few counties start on legacy direct links; a later version asks them to migrate.
    let legacy: Vec<NodeId> = (0..rng.between(1, 3))
        .map(|_| counties[rng.below(counties.len() as u64) as usize])
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let links = |migrate: bool| -> Vec<LegacyLink> {
        legacy
            .iter()
            .map(|id| LegacyLink {
                migrate,
                ..LegacyLink::new(*id)
            })
            .collect()
    };
    let schedules = schedules(&nodes, &cities);
    let build = |version: u64, migrate: bool| {
        Topology::from_parts(
            version,
            nodes.clone(),
            links(migrate),
            Vec::new(),
            schedules.clone(),
        )
        .map(Arc::new)
        .map_err(|errors| format!("{scenario}: topology does not validate: {errors:?}"))
    };
    let topology = build(1, false)?;
    let topologies = [(2, build(2, true)?)].into_iter().collect();
    let mut submissions = Vec::new();
    let mut reports = Vec::new();
    let day_period = |day: u64| {
        let (mut month, mut left) = (1u8, day);
        while left >= u64::from(days_in_month(2026, month)) {
            left -= u64::from(days_in_month(2026, month));
            month += 1;
        }
        (month, left as u8 + 1)
    };
    // Events (双公示 data) as they happen: every day, or weekly for the nation.
    let penalties = topology.reporters(&schedules[0]);
    for day in 0..days {
        let (month, dom) = day_period(day);
        if daily || day % 7 == 0 {
            let period = Period::Day {
                year: 2026,
                month,
                day: dom,
            };
            for reporter in &penalties {
                submissions.push(Submission {
                    at_ms: day * DAY_MS + rng.below(DAY_MS),
                    origin: *reporter,
                    category: schedules[0].category.to_string(),
                    period,
                    action: Action::Data { salt: 0 },
                    report: None,
                });
            }
        }
    }
    // Each province's progress report (工作通报) for a month, on the 15th of the next.
    for province in nodes.iter().filter(|n| n.role == Role::Province) {
        for month in 1..=11u8 {
            let next = (1..=month)
                .map(|m| u64::from(days_in_month(2026, m)))
                .sum::<u64>();
            submissions.push(Submission {
                at_ms: (next + 14) * DAY_MS + rng.below(DAY_MS / 2),
                origin: province.id,
                category: "progress_report".into(),
                period: Period::Month { year: 2026, month },
                action: Action::Progress,
                report: None,
            });
        }
    }
    // Monthly fees, each report with its fate. A month's reports are made in the next month:
    // January to November within the year; December's are not due before the run ends.
    for schedule in &schedules[1..] {
        for reporter in topology.reporters(schedule) {
            for month in 1..=11u8 {
                let period = Period::Month { year: 2026, month };
                let due_day = u64::from(schedule.due_day);
                // Day index of the first of the next month.
                let next = (1..=month)
                    .map(|m| u64::from(days_in_month(2026, m)))
                    .sum::<u64>();
                let fate = match rng.below(100) {
                    0..=84 => Fate::OnTime,
                    85..=89 => Fate::Late,
                    90..=92 => Fate::Missing,
                    93..=96 => Fate::Short,
                    _ => Fate::Nil,
                };
                // Days after the first of the next month.
                let day = match fate {
                    Fate::Late => due_day + rng.between(1, 15),
                    _ => rng.below(6),
                };
                let at = (next + day) * DAY_MS + rng.below(DAY_MS / 2);
                let index = reports.len();
                let mut made = Vec::new();
                let mut push = |at_ms: u64, action: Action| {
                    made.push(submissions.len());
                    submissions.push(Submission {
                        at_ms,
                        origin: reporter,
                        category: schedule.category.to_string(),
                        period,
                        action,
                        report: Some(index),
                    });
                };
                let records = workload::RECORDS_PER_BATCH as u64;
                let close_at = at + rng.between(3_600_000, 6 * 3_600_000);
                match fate {
                    Fate::Missing => {}
                    Fate::Nil => push(at, Action::Close { declared: None }),
                    Fate::OnTime | Fate::Late => {
                        push(at, Action::Data { salt: 0 });
                        let declared = rng.coin().then_some(records);
                        push(close_at, Action::Close { declared });
                    }
                    Fate::Short => {
                        push(at, Action::Data { salt: 0 });
                        let declared = Some(records + rng.between(1, 20));
                        push(close_at, Action::Close { declared });
                    }
                }
                reports.push(PlannedReport {
                    reporter,
                    category: schedule.category.to_string(),
                    period,
                    fate,
                    submissions: made,
                });
            }
        }
    }
    corrections(seed, &mut submissions, days * DAY_MS);
    Ok(Plan {
        scenario: scenario.to_owned(),
        seed,
        topology,
        topologies,
        secrets,
        submissions,
        reports,
        workload_end_ms: days * DAY_MS,
        heal_bound_ms: 30 * 60_000,
    })
}

/// Corrections and withdrawals (the data-quality loop): a few of the data batches (1–3 % of
/// the penalties, 8–20 % of the fee reports, per seed) begin a chain: a correction, sometimes
/// a second one (a correction of the correction), sometimes a withdrawal at the end; or a
/// withdrawal alone. Each comes minutes after the version before (the original may not have
/// reached the parent yet, or its link is down) or up to a month later, and two days before
/// the end at the latest. Drawn from a generator of their own, so the rest of the workload is
/// what it would be without them.
fn corrections(seed: u64, submissions: &mut Vec<Submission>, end_ms: u64) {
    let mut rng = rng_for(seed ^ 0xF1C5);
    let (penalty_percent, fee_percent) = (rng.between(1, 3), rng.between(8, 20));
    let last_ms = end_ms - 2 * DAY_MS;
    for of in 0..submissions.len() {
        if !matches!(submissions[of].action, Action::Data { .. }) {
            continue;
        }
        let percent = if submissions[of].category == "admin_penalty" {
            penalty_percent
        } else {
            fee_percent
        };
        if rng.below(100) >= percent {
            continue;
        }
        // true: a correction; false: a withdrawal.
        let steps = if rng.below(4) == 0 {
            vec![false]
        } else {
            let mut steps = vec![true];
            if rng.below(10) < 3 {
                steps.push(true);
            }
            if rng.below(10) < 3 {
                steps.push(false);
            }
            steps
        };
        let mut at_ms = submissions[of].at_ms;
        for correct in steps {
            at_ms += if rng.below(10) < 4 {
                rng.between(60_000, 3_600_000)
            } else {
                rng.between(3_600_000, 30 * DAY_MS)
            };
            if at_ms >= last_ms {
                break;
            }
            let pick = rng.next_u64();
            submissions.push(Submission {
                at_ms,
                action: if correct {
                    Action::Correct { of, pick }
                } else {
                    Action::Withdraw { of, pick }
                },
                report: None,
                ..submissions[of].clone()
            });
        }
    }
}

/// The schedules every scenario runs: penalties as events (due 7 days after each), water fees
/// monthly from every county-level node, gas fees monthly from each city's platform, both due
/// on the 10th. As the policy's task allocation table (分工表) has it, Jieyang's city water
/// group reports the water fees of 榕城 and 揭东 through the city platform: those districts
/// owe none themselves (where the scenario has them).
fn schedules(nodes: &[TopologyNode], cities: &[NodeId]) -> Vec<Schedule> {
    let schedule = |category: &str, cadence, due_day, reporters: Vec<NodeId>| {
        Schedule::new(
            protocol::Category::parse(category).expect("a built-in category"),
            cadence,
            due_day,
            reporters,
        )
    };
    let mut water = schedule("water_fee", Cadence::Monthly, 10, Vec::new());
    let id = |code: &str| NodeId::parse(code).expect("a valid code");
    let (jieyang, covered) = (id("445200"), [id("445202"), id("445203")]);
    if [jieyang, covered[0], covered[1]]
        .iter()
        .all(|code| nodes.iter().any(|n| n.id == *code))
    {
        water.allocation.push(topology::Allocation {
            reporter: jieyang,
            covers: covered.to_vec(),
            data_source: "揭阳市水务集团有限公司".into(),
            responsible: "揭阳市发展改革局".into(),
            contact: None,
        });
    }
    vec![
        schedule("admin_penalty", Cadence::Event, 7, Vec::new()),
        water,
        schedule("gas_fee", Cadence::Monthly, 10, cities.to_vec()),
    ]
}

fn china_divisions() -> Vec<topology::Division> {
    topology::divisions(topology::CHINA_DIVISIONS_CSV)
        .expect("the compiled-in division list is checked by the topology crate's tests")
}

fn province_divisions(province: u32) -> Vec<topology::Division> {
    china_divisions()
        .into_iter()
        .filter(|d| d.id.code() / 10_000 == province / 10_000)
        .collect()
}

/// What one run reports.
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    pub nodes: usize,
    pub faults: String,
    pub stats: Stats,
    pub trace_hash: String,
    pub violation: Option<Violation>,
    pub wall_ms: u64,
}

/// Runs a scenario with a seed, under `config` (which may plant a bug).
pub fn run(scenario: &str, seed: u64, config: node::core::CoreConfig) -> Result<Report, String> {
    let started = std::time::Instant::now();
    let plan = plan(scenario, seed)?;
    let mut world = World::new(plan, config);
    world.run();
    Ok(Report {
        scenario: scenario.to_owned(),
        seed,
        nodes: world.node_count(),
        faults: world.faults().summary(),
        trace_hash: world.trace_hash(),
        violation: world.violation.clone(),
        stats: world.stats.clone(),
        wall_ms: started.elapsed().as_millis() as u64,
    })
}
