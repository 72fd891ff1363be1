//! The full-stack tier: the REAL node runtime (`node::runtime`: the core and its executor),
//! real quinn and pinned mutual TLS with real Ed25519 keys and signatures, over turmoil's
//! simulated network and virtual time, each node on its own in-memory store (`MemKv`), for a
//! Jieyang-sized network: national 000000, province 440000, city 445200 and its five counties
//! (445202, 445203, 445222, 445224, 445281). One turmoil host per node runs
//! `runtime::start_with`; the county hosts also run the operator, who submits real batches
//! (`sample` + `node::ingest`, signed by the county's key) through `Node::submit`.
//!
//! Faults, all chosen from the seed: a fixed latency per parent link and a disk time per node
//! (blocking work runs inline after it, in virtual time, so writes wait for their sync as on a
//! disk); two counties partitioned from the city for a while; the province↔national link
//! held (datagrams kept, then delivered); the city crashed (`Sim::crash`, then `MemKv::crash`
//! so what it had not made durable is lost) at the first moment after a chosen time when it
//! has a write not yet durable, and restarted (`Sim::bounce`: a new runtime and core over the
//! same store, with fresh seeded randomness).
//!
//! Determinism: the node code runs unchanged; what would vary comes through seams (turmoil's
//! socket and paused tokio time, the clock, seeded QUIC/TLS randomness, inline blocking work,
//! `biased` selects in the runtime). The operators submit one batch at a time per county,
//! because tokio's `watch` channel wakes several waiters in a random order.
//!
//! What a run guarantees, or reports as a failure:
//! - **Safety, checked every 100 ms of virtual time:** whenever a county holds a receipt from
//!   a node for a batch, that node durably holds the batch (a crash now would keep it).
//! - **Convergence, within [`CONVERGE_BOUND`] of virtual time after the last fault heals and
//!   the last batch is submitted:** every submitted batch was acknowledged to its operator and
//!   is durably held at the national platform; every outbox is drained; every county holds an
//!   accepting receipt, verified under the pinned key, from every hop on its path (city,
//!   province, national).
//! - **Replay:** the same seed gives the same trace hash, a BLAKE3 over every datagram (its
//!   bytes and virtual time), every operator acknowledgement, fault and node start, and the
//!   national platform's held batches at the end.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use node::core::{Clock, CoreConfig, Now};
use node::ingest::{Encoding, IngestOptions, ingest_bytes};
use node::runtime::{self, Blocking, Seams, Socket};
use node::store::{MemKv, Store, Tree};
use node::transport::TransportSeams;
use protocol::wire::Verdict;
use protocol::{BatchId, DesensitizeKey, Ed25519, NodeId, NodeKey, Period, Registry, SignedBatch};
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use sample::{Rng, sample_csv};
use topology::{Node as TopologyNode, Role, Topology};

use crate::net::TurmoilUdpSocket;
use crate::trace::Trace;
use crate::{node_seed, sim_builder};

/// The scenario's name on the command line.
pub const SCENARIO: &str = "jieyang-full-stack";
/// The port every node listens on.
const PORT: u16 = 7000;
const NATIONAL: &str = "000000";
const PROVINCE: &str = "440000";
const CITY: &str = "445200";
const COUNTIES: [&str; 5] = ["445202", "445203", "445222", "445224", "445281"];
/// Batches each county's operator submits, and records per batch.
pub const BATCHES_PER_COUNTY: usize = 3;
const RECORDS_PER_BATCH: usize = 3;
const CATEGORIES: [&str; 3] = ["water_fee", "electricity_fee", "gas_fee"];
/// Submissions happen within this window of virtual time (ms).
const SUBMIT_WINDOW_MS: (u64, u64) = (500, 25_000);
/// After the last fault heals and the last batch is submitted, the network must converge
/// within this much virtual time. Long enough for the slowest recovery the faults allow: a
/// dead QUIC connection noticed by its 10 s idle timeout, a redial after a backoff of up to
/// 5 s, and an offer lost with the connection retried after `SyncConfig::retry_ms` (15 s).
/// Measured over seeds 1–300: at most 9 s.
pub const CONVERGE_BOUND: Duration = Duration::from_secs(60);
/// The longest the city's crash waits, from the time chosen, for a moment when it has a write
/// not yet durable.
pub const CRASH_WAIT: Duration = Duration::from_secs(5);
/// A run that has not ended by then has stopped making progress (a bug in the driver).
const VIRTUAL_MAX: Duration = Duration::from_secs(600);
/// The safety and convergence checks run every this many simulation steps (100 ms).
const CHECK_EVERY_STEPS: u64 = 10;

fn id(text: &str) -> NodeId {
    text.parse().expect("a valid node id")
}

fn host_name(node: NodeId) -> String {
    let role = match Role::of_id(node) {
        Role::National => "national",
        Role::Province => "province",
        Role::City => "city",
        Role::County => "county",
    };
    format!("{role}-{node}")
}

/// The run's choices, all from the seed: SplitMix64 ([`sample::Rng`]), salted so the stream
/// is not the sample data's of the same seed.
fn rng_for(seed: u64) -> Rng {
    Rng::new(seed ^ 0xF011_57AC_4000)
}

/// The faults of one run, chosen from its seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Faults {
    /// One-way latency of each node's link to its parent, ms.
    pub latency_ms: Vec<(NodeId, u64)>,
    /// How long each node's disk takes for a piece of blocking work (a store write, a sync),
    /// ms of virtual time: the window in which a crash loses what was written.
    pub disk_ms: BTreeMap<NodeId, u64>,
    /// Counties cut off from the city: (county, from ms, for ms). Datagrams are dropped.
    pub partitions: Vec<(NodeId, u64, u64)>,
    /// The province↔national link held (datagrams kept, delivered on release): (from, for) ms.
    pub hold: (u64, u64),
    /// The city crashes, losing what it had not made durable, and restarts: (from, down for)
    /// ms. It crashes at the first step from `from` on at which it has a write not yet
    /// durable (when it hurts), or [`CRASH_WAIT`] after `from` at the latest.
    pub city_crash: (u64, u64),
}

impl Faults {
    fn choose(rng: &mut Rng) -> Faults {
        let latency_ms = std::iter::once(PROVINCE)
            .chain([CITY])
            .chain(COUNTIES)
            .map(|n| (id(n), rng.between(2, 40)))
            .collect();
        let disk_ms = std::iter::once(NATIONAL)
            .chain([PROVINCE, CITY])
            .chain(COUNTIES)
            .map(|n| (id(n), rng.between(1, 15)))
            .collect();
        let first = rng.between(0, COUNTIES.len() as u64 - 1) as usize;
        let second =
            (first + 1 + rng.between(0, COUNTIES.len() as u64 - 2) as usize) % COUNTIES.len();
        let partitions = [first, second]
            .into_iter()
            .map(|c| {
                (
                    id(COUNTIES[c]),
                    rng.between(1_000, 20_000),
                    rng.between(2_000, 15_000),
                )
            })
            .collect();
        Faults {
            latency_ms,
            disk_ms,
            partitions,
            hold: (rng.between(2_000, 20_000), rng.between(1_000, 12_000)),
            city_crash: (rng.between(3_000, 15_000), rng.between(1_000, 8_000)),
        }
    }

    /// When the last partition or hold is healed (ms); the crash's end is known only when it
    /// happens.
    fn links_healed_ms(&self) -> u64 {
        let ends = self
            .partitions
            .iter()
            .map(|(_, at, len)| at + len)
            .chain([self.hold.0 + self.hold.1]);
        ends.max().unwrap_or(0)
    }

    /// One line for the report.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let latencies: Vec<String> = self
            .latency_ms
            .iter()
            .map(|(_, ms)| ms.to_string())
            .collect();
        let disks: Vec<String> = self.disk_ms.values().map(|ms| ms.to_string()).collect();
        let _ = write!(
            out,
            "parent-link latency {} ms; disk {} ms",
            latencies.join("/"),
            disks.join("/")
        );
        for (county, at, len) in &self.partitions {
            let _ = write!(
                out,
                "; {county}–{CITY} partitioned {:.1}–{:.1} s",
                *at as f64 / 1000.0,
                (at + len) as f64 / 1000.0
            );
        }
        let _ = write!(
            out,
            "; {PROVINCE}–{NATIONAL} held {:.1}–{:.1} s; city {CITY} crashed when it hurt from {:.1} s on, down for {:.1} s",
            self.hold.0 as f64 / 1000.0,
            (self.hold.0 + self.hold.1) as f64 / 1000.0,
            self.city_crash.0 as f64 / 1000.0,
            self.city_crash.1 as f64 / 1000.0
        );
        out
    }

    /// The link faults as timed actions, in order (the crash is driven apart).
    fn actions(&self) -> Vec<(u64, Action)> {
        let (city, province, national) = (id(CITY), id(PROVINCE), id(NATIONAL));
        let mut actions = Vec::new();
        for (county, at, len) in &self.partitions {
            actions.push((*at, Action::Partition(*county, city)));
            actions.push((at + len, Action::Repair(*county, city)));
        }
        actions.push((self.hold.0, Action::Hold(province, national)));
        actions.push((
            self.hold.0 + self.hold.1,
            Action::Release(province, national),
        ));
        // Stable: actions at the same time keep the order above.
        actions.sort_by_key(|(at, _)| *at);
        actions
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Partition(NodeId, NodeId),
    Repair(NodeId, NodeId),
    Hold(NodeId, NodeId),
    Release(NodeId, NodeId),
}

/// Where the city's crash stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Crash {
    Armed,
    Down { since_ms: u64 },
    Restarted { at_ms: u64 },
}

/// What one run reports.
#[derive(Debug, Clone)]
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    pub nodes: usize,
    /// Node processes started, restarts included.
    pub node_starts: u32,
    /// When the city crashed and restarted (ms of virtual time).
    pub crashed_at_ms: Option<u64>,
    pub restarted_at_ms: Option<u64>,
    /// Audit entries the city's crash lost: writes applied and not yet durable.
    pub lost_in_crash: usize,
    pub submitted: usize,
    pub acknowledged: usize,
    /// Bytes of the submitted batches.
    pub batch_bytes: u64,
    /// UDP datagrams and bytes sent by all nodes (QUIC and TLS included).
    pub datagrams: u64,
    pub udp_bytes: u64,
    /// Events in the trace (datagrams sent and received, acknowledgements, faults, starts).
    pub events: u64,
    pub faults: String,
    /// Virtual time when the last fault healed and the last batch was submitted (known once
    /// the city has restarted).
    pub healed_ms: Option<u64>,
    /// Virtual time from healing to convergence, if it converged.
    pub converged_after_ms: Option<u64>,
    /// Virtual time at the end of the run.
    pub virtual_ms: u64,
    pub wall_ms: u64,
    pub trace_hash: String,
    /// Why the run failed, if it did: the broken guarantee, with the virtual time.
    pub failure: Option<String>,
}

/// A batch an operator submits: when, where, what.
struct Submission {
    at_ms: u64,
    signed: SignedBatch,
}

/// One node of the simulated network.
struct NodeSpec {
    id: NodeId,
    host: String,
    key: NodeKey,
    /// Shared with the checker, and kept across the node's crash and restart.
    kv: MemKv,
    /// Virtual time each piece of blocking work (store writes, syncs) takes.
    disk: Duration,
    /// How many times the node has started: each start gets fresh seeded randomness, as a
    /// restarted process would draw fresh OS randomness.
    starts: AtomicU32,
    submissions: Vec<Submission>,
}

/// An operator's submission that `Node::submit` confirmed (durable at the county).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ack {
    county: NodeId,
    id: BatchId,
}

/// State every host and the driver share (one thread: turmoil runs hosts in turn).
struct Shared {
    seed: u64,
    config: CoreConfig,
    topology: Topology,
    trace: Trace,
    acks: Mutex<Vec<Ack>>,
    net: Arc<NetStats>,
}

#[derive(Debug, Default)]
struct NetStats {
    datagrams: AtomicU64,
    bytes: AtomicU64,
}

/// Counts what a node's socket sends; otherwise the turmoil socket as it is.
#[derive(Debug)]
struct CountingSocket {
    inner: Arc<TurmoilUdpSocket>,
    stats: Arc<NetStats>,
}

impl AsyncUdpSocket for CountingSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.stats.datagrams.fetch_add(1, Ordering::Relaxed);
        self.stats
            .bytes
            .fetch_add(transmit.contents.len() as u64, Ordering::Relaxed);
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// The node's clock under the simulation: monotonic time from tokio's (paused, virtual)
/// clock, wall time from the simulation's epoch plus elapsed virtual time.
struct SimClock {
    started: tokio::time::Instant,
}

impl Clock for SimClock {
    fn now(&self) -> Now {
        Now {
            mono_ms: self.started.elapsed().as_millis() as u64,
            wall_ms: turmoil::since_epoch().map_or(0, |d| d.as_millis() as u64),
        }
    }
}

/// The real batches an operator submits: sample data ingested and signed by the county's key.
fn submissions(seed: u64, county: NodeId, key: &NodeKey, rng: &mut Rng) -> Vec<Submission> {
    let registry = Registry::builtin();
    let period = Period::parse("2026-11").expect("a valid period");
    let network_key = DesensitizeKey(blake3::derive_key(
        "credit-network/sim/full-stack/network-key/v1",
        &seed.to_le_bytes(),
    ));
    let mut out: Vec<Submission> = (0..BATCHES_PER_COUNTY)
        .map(|i| {
            let schema = registry
                .by_name(CATEGORIES[i % CATEGORIES.len()])
                .expect("a built-in category");
            let file = sample_csv(
                schema,
                county,
                period,
                RECORDS_PER_BATCH,
                0,
                seed.wrapping_mul(31).wrapping_add(i as u64),
            );
            let options = IngestOptions {
                schema,
                origin: county,
                period,
                encoding: Encoding::Utf8,
                desensitize_key: &network_key,
                node_key: key,
                batch_records_max: RECORDS_PER_BATCH,
                left_out: &[],
            };
            let report = ingest_bytes(
                Path::new("export.csv"),
                file.text.as_bytes(),
                &options,
                |_| {},
            )
            .expect("sample data ingests");
            assert!(report.rejected.is_empty(), "sample rows refused");
            let signed = report.batches.into_iter().next().expect("one batch");
            Submission {
                at_ms: rng.between(SUBMIT_WINDOW_MS.0, SUBMIT_WINDOW_MS.1),
                signed,
            }
        })
        .collect();
    out.sort_by_key(|s| s.at_ms);
    out
}

/// What a node's host runs: the real runtime over the simulation's seams, and for a county
/// its operator's submissions, one at a time (each returns once durable at the county).
async fn node_software(
    spec: Arc<NodeSpec>,
    shared: Arc<Shared>,
) -> Result<(), Box<dyn std::error::Error>> {
    let start = spec.starts.fetch_add(1, Ordering::Relaxed);
    let label = format!("{}#{start}", spec.host);
    let socket = TurmoilUdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, PORT)))
        .await?
        .with_trace(shared.trace.clone());
    let socket = CountingSocket {
        inner: Arc::new(socket),
        stats: shared.net.clone(),
    };
    let node = runtime::start_with(Seams {
        key: spec.key.clone(),
        topology: shared.topology.clone(),
        topology_path: None,
        store: Store::new(spec.kv.clone()),
        clock: Arc::new(SimClock {
            started: tokio::time::Instant::now(),
        }),
        socket: Socket::Given {
            socket: Arc::new(socket),
            runtime: Arc::new(quinn::TokioRuntime),
        },
        transport: TransportSeams::seeded(node_seed(shared.seed, &label), turmoil::since_epoch),
        blocking: Blocking::Inline { after: spec.disk },
        config: shared.config,
    })
    .await?;
    shared.trace.record("node started", label.as_bytes());
    for submission in &spec.submissions {
        let now = turmoil::sim_elapsed().unwrap_or_default();
        let at = Duration::from_millis(submission.at_ms);
        if at > now {
            tokio::time::sleep(at - now).await;
        }
        node.submit(submission.signed.clone()).await?;
        shared
            .trace
            .record("acknowledged", submission.signed.id.as_bytes());
        shared
            .acks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Ack {
                county: spec.id,
                id: submission.signed.id,
            });
    }
    // A host whose software returns is no longer run by turmoil: the node runs on.
    std::future::pending::<()>().await;
    Ok(())
}

/// The whole network, for the checks.
struct Network {
    nodes: BTreeMap<NodeId, Arc<NodeSpec>>,
    topology: Topology,
}

impl Network {
    fn store(&self, node: NodeId) -> Store<MemKv> {
        Store::new(self.nodes[&node].kv.clone())
    }

    fn durably_holds(&self, node: NodeId, batch: &BatchId) -> bool {
        let kv = &self.nodes[&node].kv;
        kv.durable_contains(Tree::Batches, batch.as_bytes()) && kv.durable_blob(batch)
    }

    /// Safety: a receipt a county holds names a node that durably holds the batch.
    fn check_safety(&self, acks: &[Ack]) -> Result<(), String> {
        for ack in acks {
            let receipts = self
                .store(ack.county)
                .receipts_for(&ack.id)
                .map_err(|e| format!("county {} store: {e}", ack.county))?;
            for receipt in receipts {
                let receiver = receipt.receipt.receiver;
                if !self.durably_holds(receiver, &ack.id) {
                    return Err(format!(
                        "county {} holds {receiver}'s receipt for batch {}, but {receiver} does not durably hold it",
                        ack.county,
                        ack.id.short()
                    ));
                }
            }
        }
        Ok(())
    }

    /// Convergence; the first condition not met, if any.
    fn check_converged(&self, acks: &[Ack], submitted: usize) -> Result<(), String> {
        if acks.len() < submitted {
            return Err(format!(
                "{} of {submitted} batches acknowledged",
                acks.len()
            ));
        }
        let national = id(NATIONAL);
        for ack in acks {
            if !self.durably_holds(national, &ack.id) {
                return Err(format!(
                    "batch {} of {} not durable at the national platform",
                    ack.id.short(),
                    ack.county
                ));
            }
            let receipts = self
                .store(ack.county)
                .receipts_for(&ack.id)
                .map_err(|e| format!("county {} store: {e}", ack.county))?;
            for hop in self.topology.path_to_national(ack.county) {
                if hop == ack.county {
                    continue;
                }
                let key = self.topology.node(hop).expect("on the path").public_key;
                let good = receipts.iter().any(|r| {
                    r.receipt.receiver == hop
                        && matches!(r.receipt.verdict, Verdict::Accepted { .. })
                        && r.verify_with(&key, &Ed25519)
                });
                if !good {
                    return Err(format!(
                        "county {} holds no verified receipt from {hop} for batch {}",
                        ack.county,
                        ack.id.short()
                    ));
                }
            }
        }
        for (node, spec) in &self.nodes {
            if let Some(parent) = self.topology.parent_of(*node) {
                let left = Store::new(spec.kv.clone()).outbox_len(parent.id);
                if left > 0 {
                    return Err(format!("{node}'s outbox to {} holds {left}", parent.id));
                }
            }
        }
        Ok(())
    }
}

/// Runs the scenario with `seed` under `config` (which may plant a bug).
pub fn run(seed: u64, config: CoreConfig) -> Report {
    // Every ledger judgement holds the counts stored with the batches to their keys.
    node::core::ledger::check_counts(true);
    let started = std::time::Instant::now();
    let mut rng = rng_for(seed);
    let faults = Faults::choose(&mut rng);
    let mut builder = sim_builder(seed);
    // No turmoil client runs (the driver below decides when the run ends), so turmoil never
    // enforces this; set long all the same.
    builder.simulation_duration(VIRTUAL_MAX);
    let mut sim = builder.build();

    // Hosts get their addresses in this order; the topology pins them.
    let chain: Vec<(NodeId, Option<NodeId>)> = [(NATIONAL, None), (PROVINCE, Some(NATIONAL))]
        .into_iter()
        .chain([(CITY, Some(PROVINCE))])
        .chain(COUNTIES.iter().map(|c| (*c, Some(CITY))))
        .map(|(n, p)| (id(n), p.map(id)))
        .collect();
    let keys: BTreeMap<NodeId, NodeKey> = chain
        .iter()
        .map(|(n, _)| {
            let mut material = seed.to_le_bytes().to_vec();
            material.extend(n.to_be_bytes());
            let key = blake3::derive_key("credit-network/sim/full-stack/node-key/v1", &material);
            (*n, NodeKey::from_seed(key))
        })
        .collect();
    let addresses: BTreeMap<NodeId, IpAddr> = chain
        .iter()
        .map(|(n, _)| (*n, sim.lookup(host_name(*n))))
        .collect();
    let topology = Topology::from_nodes(
        1,
        chain
            .iter()
            .map(|(n, parent)| TopologyNode {
                id: *n,
                name: host_name(*n),
                role: Role::of_id(*n),
                parent: *parent,
                address: SocketAddr::new(addresses[n], PORT),
                public_key: keys[n].public(),
            })
            .collect(),
    )
    .expect("a valid topology");

    let trace = Trace::new();
    let shared = Arc::new(Shared {
        seed,
        config,
        topology: topology.clone(),
        trace: trace.clone(),
        acks: Mutex::new(Vec::new()),
        net: Arc::new(NetStats::default()),
    });
    let mut nodes = BTreeMap::new();
    for (n, _) in &chain {
        let key = keys[n].clone();
        let submissions = if Role::of_id(*n) == Role::County {
            submissions(seed, *n, &key, &mut rng)
        } else {
            Vec::new()
        };
        let spec = Arc::new(NodeSpec {
            id: *n,
            host: host_name(*n),
            key,
            kv: MemKv::new(),
            disk: Duration::from_millis(faults.disk_ms[n]),
            starts: AtomicU32::new(0),
            submissions,
        });
        let (host_spec, host_shared) = (spec.clone(), shared.clone());
        sim.host(spec.host.as_str(), move || {
            node_software(host_spec.clone(), host_shared.clone())
        });
        nodes.insert(*n, spec);
    }
    for (node, ms) in &faults.latency_ms {
        let parent = topology.parent_of(*node).expect("not the root").id;
        sim.set_link_latency(
            host_name(*node),
            host_name(parent),
            Duration::from_millis(*ms),
        );
    }
    let network = Network { nodes, topology };
    let submitted: usize = network.nodes.values().map(|s| s.submissions.len()).sum();
    let batch_bytes: u64 = network
        .nodes
        .values()
        .flat_map(|s| &s.submissions)
        .map(|s| s.signed.bytes.len() as u64)
        .sum();
    let last_submission = network
        .nodes
        .values()
        .flat_map(|s| &s.submissions)
        .map(|s| s.at_ms)
        .max()
        .unwrap_or(0);
    let city = id(CITY);
    let (crash_from_ms, crash_down_ms) = faults.city_crash;
    let crash_wait_ms = CRASH_WAIT.as_millis() as u64;

    let mut actions = faults.actions().into_iter().peekable();
    let mut steps = 0u64;
    let mut failure = None;
    let mut converged_after_ms = None;
    let mut crash = Crash::Armed;
    let (mut crashed_at_ms, mut lost_in_crash) = (None, 0);
    let mut healed_ms = None;
    loop {
        let now_ms = sim.elapsed().as_millis() as u64;
        while let Some((_, action)) = actions.next_if(|(at, _)| *at <= now_ms) {
            apply(&sim, action);
            trace.record(&format!("fault {action:?}"), &now_ms.to_le_bytes());
        }
        match crash {
            Crash::Armed
                if now_ms >= crash_from_ms
                    && (now_ms >= crash_from_ms + crash_wait_ms
                        || has_unsynced(&network.nodes[&city].kv)) =>
            {
                sim.crash(host_name(city));
                // The process is gone: what its store had not made durable is lost.
                let kv = &network.nodes[&city].kv;
                let before = kv.entries(Tree::Audit);
                kv.crash();
                lost_in_crash = before - kv.entries(Tree::Audit);
                crashed_at_ms = Some(now_ms);
                crash = Crash::Down { since_ms: now_ms };
                trace.record("fault crash", &now_ms.to_le_bytes());
            }
            Crash::Down { since_ms } if now_ms >= since_ms + crash_down_ms => {
                sim.bounce(host_name(city));
                crash = Crash::Restarted { at_ms: now_ms };
                healed_ms = Some(now_ms.max(faults.links_healed_ms()).max(last_submission));
                trace.record("fault restart", &now_ms.to_le_bytes());
            }
            _ => {}
        }
        if now_ms > VIRTUAL_MAX.as_millis() as u64 {
            failure = Some(format!("still running after {} s", VIRTUAL_MAX.as_secs()));
            break;
        }
        if let Err(e) = sim.step() {
            failure = Some(format!(
                "at {:.2} s: the simulation stopped: {e}",
                now_ms as f64 / 1000.0
            ));
            break;
        }
        steps += 1;
        if !steps.is_multiple_of(CHECK_EVERY_STEPS) {
            continue;
        }
        let now_ms = sim.elapsed().as_millis() as u64;
        let acks = shared
            .acks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Err(e) = network.check_safety(&acks) {
            failure = Some(format!("at {:.2} s: {e}", now_ms as f64 / 1000.0));
            break;
        }
        let Some(healed_ms) = healed_ms.filter(|h| now_ms >= *h) else {
            continue;
        };
        let deadline_ms = healed_ms + CONVERGE_BOUND.as_millis() as u64;
        match network.check_converged(&acks, submitted) {
            Ok(()) => {
                converged_after_ms = Some(now_ms - healed_ms);
                break;
            }
            Err(e) if now_ms >= deadline_ms => {
                failure = Some(format!(
                    "not converged {:.0} s after healing (at {:.2} s): {e}",
                    CONVERGE_BOUND.as_secs_f64(),
                    now_ms as f64 / 1000.0
                ));
                break;
            }
            Err(_) => {}
        }
    }
    let virtual_ms = sim.elapsed().as_millis() as u64;
    // The end state joins the trace: what the national platform holds.
    let mut held = Vec::new();
    for entry in network.store(id(NATIONAL)).held() {
        match entry {
            Ok((batch, _)) => held.extend_from_slice(batch.as_bytes()),
            Err(e) => failure = failure.or(Some(format!("national store: {e}"))),
        }
    }
    trace.record("national holds", &held);
    let acknowledged = shared
        .acks
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .len();
    let node_starts = network
        .nodes
        .values()
        .map(|s| s.starts.load(Ordering::Relaxed))
        .sum();
    // Stop every host (dropping the simulation tears their runtimes down) before reporting.
    drop(sim);
    Report {
        scenario: SCENARIO.to_owned(),
        seed,
        nodes: network.nodes.len(),
        node_starts,
        crashed_at_ms,
        restarted_at_ms: match crash {
            Crash::Restarted { at_ms } => Some(at_ms),
            _ => None,
        },
        lost_in_crash,
        submitted,
        acknowledged,
        batch_bytes,
        datagrams: shared.net.datagrams.load(Ordering::Relaxed),
        udp_bytes: shared.net.bytes.load(Ordering::Relaxed),
        events: trace.events(),
        faults: faults.summary(),
        healed_ms,
        converged_after_ms,
        virtual_ms,
        wall_ms: started.elapsed().as_millis() as u64,
        trace_hash: trace.digest().to_hex().to_string(),
        failure,
    }
}

/// Whether a store has a write not yet durable: its last audit entry (every group that
/// stores a batch or a receipt has one) would not survive a crash now.
fn has_unsynced(kv: &MemKv) -> bool {
    let entries = kv.entries(Tree::Audit) as u64;
    entries > 0 && !kv.durable_contains(Tree::Audit, &(entries - 1).to_be_bytes())
}

/// Carries out one link fault on the simulated network.
fn apply(sim: &turmoil::Sim<'_>, action: Action) {
    let name = |n: NodeId| host_name(n);
    match action {
        Action::Partition(a, b) => sim.partition(name(a), name(b)),
        Action::Repair(a, b) => sim.repair(name(a), name(b)),
        Action::Hold(a, b) => sim.hold(name(a), name(b)),
        Action::Release(a, b) => sim.release(name(a), name(b)),
    }
}
