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
use protocol::{NodeId, Period, PublicKey};
use topology::{LegacyLink, Node as TopologyNode, Role, Topology};

pub use world::{Stats, World};

const DAY_MS: u64 = 86_400_000;

/// Every choice of a run comes from one [`Rng`] (SplitMix64, shared with the sample data):
/// [`rng_for`] salts the seed, so a run's stream is not the sample data's of the same seed.
pub use sample::Rng;

/// The run's generator for `seed`.
pub fn rng_for(seed: u64) -> Rng {
    Rng::new(seed ^ 0x005E_ED0F_C0DE)
}

/// One batch an origin's operator submits.
#[derive(Debug, Clone)]
pub struct Submission {
    pub at_ms: u64,
    pub origin: NodeId,
    pub category: String,
    pub period: Period,
    pub salt: u32,
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
        for kind in 0..7u8 {
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
    let build = |version: u64, migrate: bool| {
        Topology::from_parts(
            version,
            nodes.clone(),
            links(migrate),
            Vec::new(),
            Vec::new(),
        )
        .map(Arc::new)
        .map_err(|errors| format!("{scenario}: topology does not validate: {errors:?}"))
    };
    let topology = build(1, false)?;
    let topologies = [(2, build(2, true)?)].into_iter().collect();
    let mut submissions = Vec::new();
    let day_period = |day: u64| {
        let (mut month, mut left) = (1u8, day);
        while left >= u64::from(days_in_month(2026, month)) {
            left -= u64::from(days_in_month(2026, month));
            month += 1;
        }
        (month, left as u8 + 1)
    };
    for day in 0..days {
        let (month, dom) = day_period(day);
        let at = |rng: &mut Rng| day * DAY_MS + rng.below(DAY_MS);
        if daily || day % 7 == 0 {
            let period = Period::Day {
                year: 2026,
                month,
                day: dom,
            };
            for county in &counties {
                submissions.push(Submission {
                    at_ms: at(&mut rng),
                    origin: *county,
                    category: "admin_penalty".into(),
                    period,
                    salt: 0,
                });
            }
        }
        if dom == 5 && month > 1 {
            let period = Period::Month {
                year: 2026,
                month: month - 1,
            };
            for county in &counties {
                submissions.push(Submission {
                    at_ms: at(&mut rng),
                    origin: *county,
                    category: "water_fee".into(),
                    period,
                    salt: 0,
                });
            }
            for city in &cities {
                submissions.push(Submission {
                    at_ms: at(&mut rng),
                    origin: *city,
                    category: "gas_fee".into(),
                    period,
                    salt: 0,
                });
            }
        }
    }
    Ok(Plan {
        scenario: scenario.to_owned(),
        seed,
        topology,
        topologies,
        secrets,
        submissions,
        workload_end_ms: days * DAY_MS,
        heal_bound_ms: 30 * 60_000,
    })
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
