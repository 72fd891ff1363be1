//! Our sync beside an rsync daemon on loopback, for the same signed batches: a first copy, a
//! re-check with a few batches changed and a re-check with nothing changed; wall time and
//! bytes on the wire each way.
//!
//! 1. **Batches**: `RSYNC_BENCH_BATCHES` (200) water-fee batches of `RSYNC_BENCH_BATCH_RECORDS`
//!    (1,000) sample records for one month, ingested and signed by the county (as
//!    `credit-node ingest` makes them), plus `RSYNC_BENCH_CHANGED` (10) **corrections**: a
//!    batch is immutable, so a change is a new batch that supersedes an existing one. Each
//!    correction re-sends all of the superseded batch's records with one record's name changed
//!    (a re-exported month), so it is as large as a batch. All built outside every timing.
//! 2. **Ours**: the county and the city started in-process (`node::runtime::start_with` with
//!    the production seams, as `runtime::start` does) over real QUIC on 127.0.0.1; the
//!    province is in the topology but never started (the city's uplink stays down; one hop is
//!    measured). The county's UDP socket is wrapped to count the bytes of every datagram it
//!    sends and receives (UDP payloads: QUIC headers, TLS and ACKs included, IP/UDP headers
//!    not): every byte the county exchanges is with the city. Measured:
//!    - first copy: from the first `county.submit` (each verified, stored and fsynced at the
//!      county) until the city holds every batch and the county holds the city's receipt for
//!      each (the batch is durable at the city);
//!    - 10 changed: the corrections submitted at the county, until the city holds them and the
//!      county holds their receipts (a child pushes what it has; nothing is rescanned);
//!    - none changed: `Node::reconcile` of the county with the city (batches and receipts,
//!      every year it holds), until the county's uplink has finished every session.
//! 3. **rsync**: one file per batch named by its id in a source directory; `rsync --daemon
//!    --no-detach` on 127.0.0.1 (a free port) with modules pointing at empty destination
//!    directories; `rsync -a --stats SRC/ rsync://127.0.0.1:PORT/MODULE/` timed, the bytes from
//!    `--stats` ("Total bytes sent/received": rsync's protocol bytes over TCP, TCP/IP headers
//!    not counted). First copy; the corrections written as new files (named by their ids, as
//!    ours keeps them) and a re-run; a re-run with nothing changed. The same three with `-c`
//!    (compare by checksum, since ours verifies content) into a second module. And, as a
//!    reference ours cannot match by design, the corrections written over the files they
//!    supersede (same names: rsync's delta transfer sends only the changed blocks).
//!
//! rsync is installed (`apt-get install -y rsync`, through `sudo -n` when not root) when
//! missing; if that fails the bench says how to install it and exits without figures. The
//! daemon is killed at the end, also on a panic (a guard). rsync writes without fsync, and
//! neither encrypts nor authenticates; ours verifies every batch (hash, signature, records)
//! and fsyncs before its receipt.
//!
//! Run: `cargo bench -p credit-node --bench rsync`. Under `cargo test` (no `--bench`
//! argument) it does nothing. `RUST_LOG` turns on the nodes' logs (stderr).

#![allow(clippy::print_stdout)]

mod common;

use common::{
    CITY, COUNTY, Chain, PROVINCE, env_usize, free_udp_port, grouped, init_logs, node_id,
    status_kib, udp_drops, water_fee_batches,
};

use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use node::core::{CoreConfig, reconcile};
use node::identity::Identity;
use node::runtime::{self, Blocking, Node, Seams, Socket, SystemClock};
use node::store::Store;
use node::transport::TransportSeams;
use protocol::batch::BATCH_RECORDS_MAX;
use protocol::sync::SyncConfig;
use protocol::wire::Verdict;
use protocol::{
    Batch, BatchId, DesensitizeKey, NodeId, NodeKey, Period, Registry, SignedBatch, Value,
};
use topology::{Node as TopologyNode, Topology};

const DEFAULT_BATCHES: usize = 200;
const DEFAULT_BATCH_RECORDS: usize = 1_000;
const DEFAULT_CHANGED: usize = 10;
const PERIOD: &str = "2022-05";
const SEED: u64 = 20_220_501;
/// How often the stores are checked while waiting.
const POLL: Duration = Duration::from_millis(2);
/// A phase that takes longer than this is stuck.
const PHASE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the rsync daemon may take to listen.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(10);
const MB: f64 = 1e6;
/// The nodes' longest wait between dials (production: 5 s).
const BACKOFF_MAX_MS: u64 = 200;

fn mem(kib: Option<u64>) -> String {
    kib.map_or_else(
        || "?".to_owned(),
        |k| format!("{:.0} MB", k as f64 * 1024.0 / MB),
    )
}

fn ms(time: Duration) -> f64 {
    time.as_secs_f64() * 1e3
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free TCP port on 127.0.0.1")
        .port()
}

// ---------------------------------------------------------------------------------------------
// Batches

/// Water-fee batches of `rows` sample records from `origin`, signed by `key`, as ingestion
/// makes them.
fn build_batches(
    origin: NodeId,
    rows: usize,
    per_batch: usize,
    key: &NodeKey,
    network_key: &DesensitizeKey,
) -> Vec<SignedBatch> {
    let period = Period::parse(PERIOD).expect("valid period");
    water_fee_batches(origin, period, rows, per_batch, SEED, key, network_key)
}

/// A correction of `original`: every record again, the first one's name changed, superseding
/// `original`, signed by the origin.
fn correction(original: &SignedBatch, key: &NodeKey) -> SignedBatch {
    let schema = Registry::builtin()
        .by_name("water_fee")
        .expect("water_fee schema is built in");
    let name = schema
        .field_index("subject_name")
        .expect("water_fee has subject_name");
    let mut batch = Batch::decode(&original.bytes).expect("a batch we made decodes");
    batch.header.supersedes = Some(original.id);
    let first = batch.records.first_mut().expect("a batch has records");
    let corrected = match &first.values[name] {
        Value::Text(text) => format!("{text}（更正）"),
        _ => "更正后名称".to_owned(),
    };
    first.values[name] = Value::Text(corrected.into());
    let batch = Batch::new(batch.header, batch.records).expect("the correction is a valid batch");
    SignedBatch::seal(&batch, key).expect("the correction seals")
}

// ---------------------------------------------------------------------------------------------
// Identities and nodes

struct Identities {
    root: tempfile::TempDir,
    topology_path: PathBuf,
    county_key: NodeKey,
    network_key: DesensitizeKey,
}

/// Identities for province, city and county sharing one network key, and the topology file
/// (with a national platform and a province that are never started).
fn make_identities() -> Identities {
    let chain = Chain::create();
    let topology_path = chain.write_topology("topology.toml");
    let Chain { root, county, .. } = chain;
    Identities {
        topology_path,
        county_key: county.key,
        network_key: county.network_key,
        root,
    }
}

impl Identities {
    /// The same identities (keys, network key) in a new directory with empty stores, and a
    /// topology with fresh addresses.
    fn fresh_copy(&self) -> Identities {
        let root = tempfile::tempdir().expect("temp dir");
        for id in [PROVINCE, CITY, COUNTY] {
            let (from, to) = (self.root.path().join(id), root.path().join(id));
            std::fs::create_dir_all(&to).expect("create an identity directory");
            for entry in std::fs::read_dir(&from).expect("read an identity directory") {
                let entry = entry.expect("an identity directory entry");
                if entry.file_type().expect("file type").is_file() {
                    std::fs::copy(entry.path(), to.join(entry.file_name()))
                        .expect("copy an identity file");
                }
            }
        }
        let topology = runtime::read_topology(&self.topology_path).expect("read topology");
        let nodes = topology
            .nodes()
            .cloned()
            .map(|node| TopologyNode {
                address: free_udp_port(),
                ..node
            })
            .collect();
        let topology = Topology::from_nodes(topology.version, nodes).expect("same topology");
        let topology_path = root.path().join("topology.toml");
        std::fs::write(&topology_path, topology.render()).expect("write topology");
        Identities {
            root,
            topology_path,
            county_key: self.county_key.clone(),
            network_key: self.network_key.clone(),
        }
    }
}

/// A UDP socket that counts the bytes of the datagrams it sends and receives.
#[derive(Debug)]
struct CountingSocket {
    inner: Arc<dyn quinn::AsyncUdpSocket>,
    sent: AtomicU64,
    received: AtomicU64,
    datagrams_sent: AtomicU64,
}

impl CountingSocket {
    /// What was counted since `before` (a leg of zero time).
    fn since(&self, before: Leg) -> Leg {
        Leg {
            time: Duration::ZERO,
            sent: self.sent.load(Ordering::Relaxed) - before.sent,
            received: self.received.load(Ordering::Relaxed) - before.received,
            datagrams_sent: self.datagrams_sent.load(Ordering::Relaxed) - before.datagrams_sent,
        }
    }

    fn now(&self) -> Leg {
        self.since(Leg::default())
    }
}

impl quinn::AsyncUdpSocket for CountingSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn quinn::UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &quinn::udp::Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)?;
        // With segmentation offload `contents` holds every datagram of the transmit.
        self.sent
            .fetch_add(transmit.contents.len() as u64, Ordering::Relaxed);
        let datagrams = transmit
            .segment_size
            .map_or(1, |size| transmit.contents.len().div_ceil(size.max(1)));
        self.datagrams_sent
            .fetch_add(datagrams as u64, Ordering::Relaxed);
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let polled = self.inner.poll_recv(cx, bufs, meta);
        if let Poll::Ready(Ok(count)) = &polled {
            let bytes: usize = meta[..*count].iter().map(|m| m.len).sum();
            self.received.fetch_add(bytes as u64, Ordering::Relaxed);
        }
        polled
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// What `runtime::start` does, with the UDP socket wrapped in a [`CountingSocket`].
async fn start_counted(dir: &Path, topology_path: &Path) -> (Arc<Node>, Arc<CountingSocket>) {
    let identity = Identity::load(dir).expect("load identity");
    let topology = runtime::read_topology(topology_path).expect("read topology");
    let address = topology
        .node(identity.id)
        .expect("the node is in the topology")
        .address;
    let store = Store::open(&dir.join("store")).expect("open store");
    let udp = UdpSocket::bind(address).expect("bind the node's UDP address");
    let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
    let socket = Arc::new(CountingSocket {
        inner: runtime.wrap_udp_socket(udp).expect("wrap the UDP socket"),
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
        datagrams_sent: AtomicU64::new(0),
    });
    let node = runtime::start_with(Seams {
        key: identity.key,
        topology,
        topology_path: Some(topology_path.to_owned()),
        store,
        clock: Arc::new(SystemClock::new()),
        socket: Socket::Given {
            socket: socket.clone(),
            runtime,
        },
        transport: TransportSeams::os(),
        blocking: Blocking::Threads,
        config: CoreConfig {
            sync: SyncConfig::default(),
            // The pre-loaded run starts the county before the city: redial soon.
            backoff_max_ms: BACKOFF_MAX_MS,
            ..CoreConfig::default()
        },
    })
    .await
    .unwrap_or_else(|e| panic!("start {}: {e:#}", dir.display()));
    (node, socket)
}

/// One measured leg: wall time and bytes each way (sent: from the county or rsync client).
#[derive(Clone, Copy, Default)]
struct Leg {
    time: Duration,
    sent: u64,
    received: u64,
    /// UDP datagrams sent (ours only).
    datagrams_sent: u64,
}

impl Leg {
    fn timed(self, time: Duration) -> Leg {
        Leg { time, ..self }
    }
}

struct Ours {
    first: Leg,
    changed: Leg,
    none: Leg,
    /// How long each submit of the first copy took (verified, stored and fsynced at the county).
    first_submits: Vec<Duration>,
    /// UDP datagrams dropped machine-wide for full receive buffers during the first copy.
    first_drops: Option<u64>,
    /// Batch arrivals the city counted during the first copy (a batch sent twice counts twice).
    first_arrivals: u64,
    /// Batch bytes the county's uplink counts as sent (payload only), per leg.
    payload: [u64; 3],
    /// Sessions and message rounds of the nothing-changed reconciliation.
    sessions: u64,
    rounds: u64,
    peak_kib: Option<u64>,
}

fn up_link(node: &Node) -> Option<node::core::LinkStatus> {
    node.links().into_iter().find(|l| l.direction == "up")
}

/// Batches that arrived at `node` from its child (duplicates included).
fn arrivals(node: &Node) -> u64 {
    node.links()
        .into_iter()
        .filter(|l| l.direction == "down")
        .map(|l| l.batches_received)
        .sum()
}

/// Waits until `done` holds, checking every [`POLL`]; panics after [`PHASE_TIMEOUT`].
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if done() {
            return;
        }
        assert!(
            start.elapsed() < PHASE_TIMEOUT,
            "{what}: not done after {PHASE_TIMEOUT:?}"
        );
    }
}

/// Submits `batches` at the county and waits until the city holds each and the county holds
/// the city's receipt for each (accepted).
async fn push(
    county: &Arc<Node>,
    city: &Node,
    socket: &CountingSocket,
    batches: &[SignedBatch],
) -> (Leg, Vec<Duration>) {
    let ids: Vec<BatchId> = batches.iter().map(|b| b.id).collect();
    let before = socket.now();
    let start = Instant::now();
    let mut submitted = Vec::new();
    for batch in batches {
        let submit = Instant::now();
        assert!(
            county.submit(batch.clone()).await.expect("submit").new,
            "every batch is new"
        );
        submitted.push(submit.elapsed());
    }
    let mut left: Vec<BatchId> = ids;
    wait_until(
        "the city holds every batch and the county its receipts",
        || {
            left.retain(|id| {
                let held = city.store.holds(id).expect("city store");
                let receipt = county.store.receipt(id, city.me).expect("county store");
                match receipt {
                    Some(receipt) if held => {
                        assert!(
                            matches!(receipt.receipt.verdict, Verdict::Accepted { .. }),
                            "the city accepts batch {id}: {:?}",
                            receipt.receipt.verdict
                        );
                        false
                    }
                    _ => true,
                }
            });
            left.is_empty()
        },
    )
    .await;
    (socket.since(before).timed(start.elapsed()), submitted)
}

/// How many reconciliation sessions `Node::reconcile` starts on the county's uplink: one per
/// kind (batches, receipts) and year.
fn sessions_expected(county: &Node, kinds: usize) -> u64 {
    let this_year = reconcile::year_at(county.wall_ms());
    let years = reconcile::years(&county.store, this_year).expect("county store");
    (years.len() * kinds) as u64
}

async fn ours(
    identities: &Identities,
    batches: &[SignedBatch],
    corrections: &[SignedBatch],
) -> Ours {
    let dir = |id: &str| identities.root.path().join(id);
    let (city, _) = start_counted(&dir(CITY), &identities.topology_path).await;
    // Before the county holds anything, the link that comes up reconciles batches only.
    let (county, socket) = start_counted(&dir(COUNTY), &identities.topology_path).await;
    let link_up_sessions = sessions_expected(&county, 1);
    wait_until("the county's uplink is up and reconciled", || {
        up_link(&county).is_some_and(|l| l.connected && l.reconcile_sessions >= link_up_sessions)
    })
    .await;
    let payload_sent = || up_link(&county).map_or(0, |l| l.bytes_sent);

    let payload_0 = payload_sent();
    let drops_before = udp_drops();
    let arrived_before = arrivals(&city);
    let (first, first_submits) = push(&county, &city, &socket, batches).await;
    let payload_1 = payload_sent();
    let first_drops = udp_drops().zip(drops_before).map(|(a, b)| a - b);
    let first_arrivals = arrivals(&city) - arrived_before;
    let (changed, _) = push(&county, &city, &socket, corrections).await;
    let payload_2 = payload_sent();

    // Nothing changed: the county reconciles with the city, every kind and year.
    let link = up_link(&county).expect("the county has an uplink");
    assert!(
        link.pending == 0 && link.in_flight == 0,
        "nothing left to send before the reconciliation: {link:?}"
    );
    let expected = sessions_expected(&county, 2);
    let before = socket.now();
    let start = Instant::now();
    assert_eq!(
        county.reconcile(Some(city.me)).expect("start reconciling"),
        1,
        "one link reconciles"
    );
    wait_until("the reconciliation with the city finishes", || {
        up_link(&county).is_some_and(|l| l.reconcile_sessions >= link.reconcile_sessions + expected)
    })
    .await;
    let none = socket.since(before).timed(start.elapsed());
    let after = up_link(&county).expect("the county has an uplink");
    assert_eq!(
        after.reconcile_differences, link.reconcile_differences,
        "nothing differs after both pushes"
    );
    let payload_3 = payload_sent();
    let peak_kib = status_kib("VmHWM:");
    for node in [&county, &city] {
        let _ = tokio::time::timeout(Duration::from_secs(3), runtime::shutdown(node)).await;
    }
    Ours {
        first,
        changed,
        none,
        first_submits,
        first_drops,
        first_arrivals,
        payload: [
            payload_1 - payload_0,
            payload_2 - payload_1,
            payload_3 - payload_2,
        ],
        sessions: after.reconcile_sessions - link.reconcile_sessions,
        rounds: after.reconcile_rounds - link.reconcile_rounds,
        peak_kib,
    }
}

/// The first copy from a county that already holds every batch (as rsync's source directory
/// holds its files): the county is started alone and stores them, then the city starts; timed
/// from the county's uplink coming up (the handshake done) until the city holds every batch
/// and the county holds the city's receipts. Bytes from when the city starts.
async fn preloaded(identities: &Identities, batches: &[SignedBatch]) -> (Leg, Duration, u64) {
    let dir = |id: &str| identities.root.path().join(id);
    let (county, socket) = start_counted(&dir(COUNTY), &identities.topology_path).await;
    let stored = Instant::now();
    for batch in batches {
        assert!(
            county.submit(batch.clone()).await.expect("submit").new,
            "every batch is new"
        );
    }
    let stored = stored.elapsed();
    let before = socket.now();
    let (city, _) = start_counted(&dir(CITY), &identities.topology_path).await;
    wait_until("the county's uplink comes up", || {
        up_link(&county).is_some_and(|l| l.connected)
    })
    .await;
    let start = Instant::now();
    let mut left: Vec<BatchId> = batches.iter().map(|b| b.id).collect();
    wait_until(
        "the city holds every batch and the county its receipts",
        || {
            left.retain(|id| {
                !(city.store.holds(id).expect("city store")
                    && county
                        .store
                        .receipt(id, city.me)
                        .expect("county store")
                        .is_some())
            });
            left.is_empty()
        },
    )
    .await;
    let leg = socket.since(before).timed(start.elapsed());
    let arrived = arrivals(&city);
    for node in [&county, &city] {
        let _ = tokio::time::timeout(Duration::from_secs(3), runtime::shutdown(node)).await;
    }
    (leg, stored, arrived)
}

// ---------------------------------------------------------------------------------------------
// rsync

/// `rsync --version`'s first line, if rsync runs.
fn rsync_version() -> Option<String> {
    let output = Command::new("rsync").arg("--version").output().ok()?;
    output.status.success().then(|| {
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .next()
            .unwrap_or("rsync")
            .trim()
            .to_owned()
    })
}

/// rsync's version, installing it with apt-get when missing; `None` if that failed.
fn ensure_rsync() -> Option<String> {
    if let Some(version) = rsync_version() {
        return Some(version);
    }
    let root = rustix::process::geteuid().is_root();
    println!(
        "rsync is not installed: installing it with `{}apt-get install -y rsync`",
        if root { "" } else { "sudo -n " }
    );
    let apt = |args: &[&str]| {
        let mut command = if root {
            Command::new("apt-get")
        } else {
            let mut sudo = Command::new("sudo");
            sudo.args(["-n", "apt-get"]);
            sudo
        };
        command
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !apt(&["install", "-y", "-q", "rsync"]) {
        // The package lists may be missing or stale.
        apt(&["update", "-q"]);
        apt(&["install", "-y", "-q", "rsync"]);
    }
    rsync_version()
}

/// The rsync daemon, killed when dropped (also when the bench panics).
struct Daemon {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `rsync --daemon` on 127.0.0.1 with a writable module per `(name, path)`; returns
/// once it accepts connections.
fn start_daemon(dir: &Path, modules: &[(&str, &Path)]) -> Daemon {
    let (uid, gid) = (
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    );
    let log = dir.join("rsyncd.log");
    let mut config = format!(
        "use chroot = no\nlog file = {}\npid file = {}\n",
        log.display(),
        dir.join("rsyncd.pid").display()
    );
    for (name, path) in modules {
        config.push_str(&format!(
            "[{name}]\n    path = {}\n    read only = no\n    uid = {uid}\n    gid = {gid}\n",
            path.display()
        ));
    }
    let config_path = dir.join("rsyncd.conf");
    std::fs::write(&config_path, config).expect("write rsyncd.conf");
    let port = free_tcp_port();
    let child = Command::new("rsync")
        .arg("--daemon")
        .arg("--no-detach")
        .arg(format!("--config={}", config_path.display()))
        .arg("--address=127.0.0.1")
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .spawn()
        .expect("start the rsync daemon");
    let mut daemon = Daemon { child, port, log };
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = daemon.child.try_wait() {
            panic!(
                "the rsync daemon exited ({status}); its log:\n{}",
                std::fs::read_to_string(&daemon.log).unwrap_or_default()
            );
        }
        assert!(
            start.elapsed() < DAEMON_TIMEOUT,
            "the rsync daemon does not listen on port {port} after {DAEMON_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    daemon
}

struct RsyncRun {
    leg: Leg,
    /// "Number of regular files transferred".
    files: u64,
}

/// One `rsync -a --stats [extra] SRC/ rsync://127.0.0.1:PORT/MODULE/`, timed.
fn rsync(daemon: &Daemon, extra: &[&str], source: &Path, module: &str) -> RsyncRun {
    let start = Instant::now();
    let output = Command::new("rsync")
        .args(["-a", "--stats"])
        .args(extra)
        .arg(format!("{}/", source.display()))
        .arg(format!("rsync://127.0.0.1:{}/{module}/", daemon.port))
        .stdin(Stdio::null())
        .output()
        .expect("run rsync");
    let time = start.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "rsync {extra:?} to {module} failed ({}): {}{}\ndaemon log:\n{}",
        output.status,
        stdout,
        String::from_utf8_lossy(&output.stderr),
        std::fs::read_to_string(&daemon.log).unwrap_or_default()
    );
    let stat = |label: &str| -> u64 {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(label))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.replace(',', "").parse().ok())
            .unwrap_or_else(|| panic!("rsync --stats printed no {label:?}:\n{stdout}"))
    };
    RsyncRun {
        leg: Leg {
            time,
            sent: stat("Total bytes sent:"),
            received: stat("Total bytes received:"),
            datagrams_sent: 0,
        },
        files: stat("Number of regular files transferred:"),
    }
}

fn write_files(dir: &Path, batches: &[SignedBatch], name_of: impl Fn(&SignedBatch) -> String) {
    for batch in batches {
        std::fs::write(dir.join(name_of(batch)), &batch.bytes).expect("write a batch file");
    }
}

struct Rsync {
    /// Default quick check (size and modification time).
    quick: [RsyncRun; 3],
    /// `-c`: compare by checksum.
    checksum: [RsyncRun; 3],
    /// The corrections written over the files they supersede (delta transfer).
    in_place: RsyncRun,
}

fn rsync_phase(dir: &Path, batches: &[SignedBatch], corrections: &[SignedBatch]) -> Rsync {
    let path = |name: &str| {
        let path = dir.join(name);
        std::fs::create_dir_all(&path).expect("create a directory");
        path
    };
    let (source, overwritten) = (path("source"), path("source-overwritten"));
    let (quick_dest, checksum_dest, in_place_dest) =
        (path("quick"), path("checksum"), path("in-place"));
    let by_id = |b: &SignedBatch| b.id.to_string();
    write_files(&source, batches, by_id);
    write_files(&overwritten, batches, by_id);
    let daemon = start_daemon(
        dir,
        &[
            ("quick", &quick_dest),
            ("checksum", &checksum_dest),
            ("in-place", &in_place_dest),
        ],
    );
    let n = batches.len() as u64;
    let changed = corrections.len() as u64;
    let expect = |run: RsyncRun, files: u64, what: &str| {
        assert_eq!(run.files, files, "rsync {what}: files transferred");
        run
    };
    let quick_first = expect(rsync(&daemon, &[], &source, "quick"), n, "first copy");
    let checksum_first = expect(
        rsync(&daemon, &["-c"], &source, "checksum"),
        n,
        "-c first copy",
    );
    let in_place_first = rsync(&daemon, &[], &overwritten, "in-place");
    assert_eq!(in_place_first.files, n);

    write_files(&source, corrections, by_id);
    let quick_changed = expect(rsync(&daemon, &[], &source, "quick"), changed, "10 changed");
    let checksum_changed = expect(
        rsync(&daemon, &["-c"], &source, "checksum"),
        changed,
        "-c 10 changed",
    );
    let quick_none = expect(rsync(&daemon, &[], &source, "quick"), 0, "none changed");
    let checksum_none = expect(
        rsync(&daemon, &["-c"], &source, "checksum"),
        0,
        "-c none changed",
    );

    // The same corrections under the names of the batches they supersede.
    for correction in corrections {
        let superseded = correction_of(correction);
        std::fs::write(overwritten.join(superseded.to_string()), &correction.bytes)
            .expect("overwrite a batch file");
    }
    let in_place = expect(
        rsync(&daemon, &[], &overwritten, "in-place"),
        changed,
        "overwritten in place",
    );
    drop(daemon);
    Rsync {
        quick: [quick_first, quick_changed, quick_none],
        checksum: [checksum_first, checksum_changed, checksum_none],
        in_place,
    }
}

fn correction_of(correction: &SignedBatch) -> BatchId {
    correction
        .header()
        .expect("a correction's header decodes")
        .supersedes
        .expect("a correction supersedes a batch")
}

// ---------------------------------------------------------------------------------------------

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("rsync: run it with `cargo bench -p credit-node --bench rsync`");
        return;
    }
    init_logs();
    let count = env_usize("RSYNC_BENCH_BATCHES", DEFAULT_BATCHES);
    let per_batch =
        env_usize("RSYNC_BENCH_BATCH_RECORDS", DEFAULT_BATCH_RECORDS).min(BATCH_RECORDS_MAX);
    let changed = env_usize("RSYNC_BENCH_CHANGED", DEFAULT_CHANGED).min(count);

    let Some(version) = ensure_rsync() else {
        println!(
            "rsync could not be installed, so there is nothing to compare with: install it \
             (`sudo apt-get install -y rsync` on Debian/Ubuntu) and run the bench again"
        );
        return;
    };

    // Batches and corrections, outside every timing.
    let identities = make_identities();
    let built = Instant::now();
    let batches = build_batches(
        node_id(COUNTY),
        count * per_batch,
        per_batch,
        &identities.county_key,
        &identities.network_key,
    );
    assert_eq!(batches.len(), count, "one batch per {per_batch} records");
    // Spread over the month: every (count / changed)-th batch is corrected.
    let corrections: Vec<SignedBatch> = (0..changed)
        .map(|i| correction(&batches[i * count / changed], &identities.county_key))
        .collect();
    let built = built.elapsed();
    let bytes: u64 = batches.iter().map(|b| b.bytes.len() as u64).sum();
    let correction_bytes: u64 = corrections.iter().map(|b| b.bytes.len() as u64).sum();

    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let ours = tokio.block_on(ours(&identities, &batches, &corrections));
    // Fresh nodes (empty stores, new ports) for the pre-loaded first copy.
    let (preloaded, preload_stored, preload_arrivals) =
        tokio.block_on(preloaded(&identities.fresh_copy(), &batches));
    drop(tokio);

    let rsync_dir = tempfile::tempdir().expect("temp dir");
    let rsync = rsync_phase(rsync_dir.path(), &batches, &corrections);

    println!();
    println!(
        "rsync bench: {count} water_fee batches of {} records ({:.1} MB, built in {:.1} s), {changed} corrections ({:.2} MB, each a whole batch again with one record changed, superseding one batch); {version}",
        grouped(per_batch as f64),
        bytes as f64 / MB,
        built.as_secs_f64(),
        correction_bytes as f64 / MB,
    );
    println!(
        "ours: county → city over QUIC on 127.0.0.1, bytes = UDP payloads at the county's socket; rsync: daemon on 127.0.0.1, bytes from --stats (TCP payload); sent = from the county / rsync client; ratio = ours / rsync"
    );
    println!();
    println!(
        "{:<34} {:>9} {:>9} {:>6}  {:>13} {:>13} {:>6}  {:>11} {:>11} {:>6}",
        "",
        "ours ms",
        "rsync ms",
        "ratio",
        "ours sent",
        "rsync sent",
        "ratio",
        "ours recv",
        "rsync recv",
        "ratio"
    );
    let row = |name: &str, ours: Leg, rsync: Leg| {
        let ratio = |a: f64, b: f64| {
            if b > 0.0 {
                format!("{:.2}", a / b)
            } else {
                "-".to_owned()
            }
        };
        println!(
            "{:<34} {:>9.1} {:>9.1} {:>6}  {:>13} {:>13} {:>6}  {:>11} {:>11} {:>6}",
            name,
            ms(ours.time),
            ms(rsync.time),
            ratio(ms(ours.time), ms(rsync.time)),
            grouped(ours.sent as f64),
            grouped(rsync.sent as f64),
            ratio(ours.sent as f64, rsync.sent as f64),
            grouped(ours.received as f64),
            grouped(rsync.received as f64),
            ratio(ours.received as f64, rsync.received as f64),
        );
    };
    let changed_name = format!("re-check, {changed} changed");
    row(
        "first copy (county submits incl.)",
        ours.first,
        rsync.quick[0].leg,
    );
    row(
        "first copy, county pre-loaded",
        preloaded,
        rsync.quick[0].leg,
    );
    row(&changed_name, ours.changed, rsync.quick[1].leg);
    row("re-check, none changed", ours.none, rsync.quick[2].leg);
    row("first copy (rsync -c)", ours.first, rsync.checksum[0].leg);
    row(
        &format!("{changed_name} (rsync -c)"),
        ours.changed,
        rsync.checksum[1].leg,
    );
    row(
        "re-check, none changed (rsync -c)",
        ours.none,
        rsync.checksum[2].leg,
    );
    row(
        &format!("{changed} overwritten (rsync delta)"),
        ours.changed,
        rsync.in_place.leg,
    );
    println!();
    let submits = &ours.first_submits;
    let median_of = |times: &[Duration]| {
        let mut times = times.to_vec();
        times.sort_unstable();
        times.get(times.len() / 2).copied().unwrap_or_default()
    };
    let tenth = submits.len().div_ceil(10);
    println!(
        "ours, first copy: county submits (verify, store, fsync) took {:.0} ms in all: median {:.1} ms per batch, {:.1} ms over the first tenth, {:.1} ms over the last tenth, max {:.1} ms; {} datagrams sent, {:.0} bytes each on average; UDP receive-buffer drops (machine-wide) meanwhile: {}; batch arrivals at the city: {} for {count} batches",
        ms(submits.iter().sum()),
        ms(median_of(submits)),
        ms(median_of(&submits[..tenth])),
        ms(median_of(&submits[submits.len() - tenth..])),
        ms(submits.iter().copied().max().unwrap_or_default()),
        grouped(ours.first.datagrams_sent as f64),
        ours.first.sent as f64 / ours.first.datagrams_sent.max(1) as f64,
        ours.first_drops
            .map_or_else(|| "?".to_owned(), |d| grouped(d as f64)),
        ours.first_arrivals,
    );
    println!(
        "ours: batch payload the uplink counts sent: {} / {} / {} bytes (first / changed / none); the none-changed reconciliation: {} sessions (batches + receipts per year), {} rounds",
        grouped(ours.payload[0] as f64),
        grouped(ours.payload[1] as f64),
        grouped(ours.payload[2] as f64),
        ours.sessions,
        ours.rounds,
    );
    println!(
        "ours, pre-loaded: the county stored every batch alone in {:.0} ms; timed from its uplink coming up (bytes from the city's start: handshake and the link-up reconciliation included); {} datagrams sent, batch arrivals at the city: {preload_arrivals} for {count} batches",
        ms(preload_stored),
        grouped(preloaded.datagrams_sent as f64),
    );
    println!(
        "rsync: files transferred {} / {} / {} (quick check), {} / {} / {} (-c), {} overwritten in place",
        rsync.quick[0].files,
        rsync.quick[1].files,
        rsync.quick[2].files,
        rsync.checksum[0].files,
        rsync.checksum[1].files,
        rsync.checksum[2].files,
        rsync.in_place.files,
    );
    println!(
        "peak RSS (VmHWM) of this process: {} after our first sync (both nodes and the batches in memory), {} at the end (rsync runs in its own processes)",
        mem(ours.peak_kib),
        mem(status_kib("VmHWM:")),
    );
}
