//! Sync throughput: county → city → province over real QUIC on loopback, beside raw quinn
//! between two endpoints of this process, in the same run.
//!
//! One run measures:
//! 1. **raw quinn**: two endpoints on 127.0.0.1 with the nodes' own TLS (self-signed Ed25519
//!    certificates, pinned keys, `node::transport` configs), one connection, `BENCH_MB` MiB
//!    (256) sent as uni streams of 16 MiB (at most `BENCH_WINDOW` open at once, like batch
//!    streams), each read with `read_to_end`. Run before and after the sync run; the faster
//!    of the two is the reference (the raw limit).
//! 2. **real sync**: three nodes started in-process with `node::runtime::start` (province
//!    440000, city 445200, county 445281; the national platform 000000 is in the topology but
//!    never started). `BENCH_RECORDS` (100,000) water-fee records signed by the county are
//!    built into batches of `BENCH_BATCH_RECORDS` (10,000) outside the timing. Timed:
//!    `county.submit` of every batch (verify, store, fsync at the county), until the city and
//!    then the province hold every batch id (polled every 5 ms), and until the county holds
//!    the province's receipt for each (relayed down: durable at the province).
//! 3. **memory**: RSS at each stage and the peak (VmHWM) of each network phase (the peak is
//!    reset between phases through `/proc/self/clear_refs` where the kernel allows it).
//! 4. **where the time goes**: on one thread, outside the network, over all batches: what the
//!    sender does per batch (`Store::batch`, frame encoding), what the receiver does
//!    (frame decoding, `verify_incoming` and its parts, `Store::insert_batch`, `Store::sync`),
//!    and durable writes with one fsync per batch against one for all (group commit).
//!
//! Process CPU time (user + system, all threads) is read from `/proc/self/stat` around each
//! network phase, to tell a CPU-bound run from one that waits.
//!
//! A plain `main` (harness = false); arguments cargo passes are ignored. `BENCH_WINDOW` sets
//! `SyncConfig::window` (default 8). `RUST_LOG` turns on the nodes' logs (stderr).
//!
//! Run: `cargo bench -p credit-node --bench sync`.

#![allow(clippy::print_stdout)]

use std::hint::black_box;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use node::identity::{Identity, random32};
use node::ingest::{Encoding, IngestOptions, ingest_bytes};
use node::runtime::{self, Node};
use node::store::Store;
use node::transport::{self, PeerPolicy};
use protocol::batch::BATCH_RECORDS_MAX;
use protocol::sync::{SyncConfig, verify_incoming};
use protocol::wire::{self, Message, Receipt, Verdict};
use protocol::{Batch, BatchId, NodeId, NodeKey, Period, PublicKey, Registry, SignedBatch};
use tokio::task::JoinSet;
use topology::{Node as TopologyNode, Role, Topology};

const DEFAULT_RAW_MIB: usize = 256;
const DEFAULT_RECORDS: usize = 100_000;
const DEFAULT_BATCH_RECORDS: usize = 10_000;
/// Bytes per raw stream: a large batch.
const STREAM_BYTES: usize = 16 * 1024 * 1024;
const SEED: u64 = 202_205;
/// How often the sync run checks the stores.
const POLL: Duration = Duration::from_millis(5);
/// A sync run that takes longer than this is stuck.
const SYNC_TIMEOUT: Duration = Duration::from_secs(120);
/// Repetitions of each offline CPU measurement (median reported).
const OFFLINE_ITERS: usize = 3;
const MB: f64 = 1e6;

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Err(_) => default,
        Ok(text) => text
            .trim()
            .replace('_', "")
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .unwrap_or_else(|| panic!("{name}={text:?}: expected a positive whole number")),
    }
}

/// A field of `/proc/self/status` in KiB (Linux), if known.
fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn rss() -> Option<u64> {
    status_kib("VmRSS:")
}

fn peak() -> Option<u64> {
    status_kib("VmHWM:")
}

/// Resets VmHWM to the current RSS (Linux ≥ 4.0); false if the kernel refused.
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn mem(kib: Option<u64>) -> String {
    kib.map_or_else(
        || "?".to_owned(),
        |k| format!("{:.1} MB", k as f64 * 1024.0 / MB),
    )
}

/// UDP datagrams the kernel dropped for a full socket receive buffer, machine-wide
/// (`RcvbufErrors` in `/proc/net/snmp`): loss QUIC's congestion control reacts to.
fn udp_drops() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next()?, udp.next()?);
    let column = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    values.split_whitespace().nth(column)?.parse().ok()
}

fn drops(before: Option<u64>, after: Option<u64>) -> String {
    match (before, after) {
        (Some(b), Some(a)) => (a - b).to_string(),
        _ => "?".to_owned(),
    }
}

/// CPU time of this process so far, all threads, user + system (`/proc/self/stat`, in
/// clock ticks of 1/100 s, the USER_HZ of every Linux port).
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After the command name: state is field 3; utime 14 and stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// CPU use over a phase, in % of one core.
fn cpu_percent(before: Option<Duration>, after: Option<Duration>, wall: Duration) -> String {
    match (before, after) {
        (Some(b), Some(a)) => format!(
            "{:.0} %",
            100.0 * (a - b).as_secs_f64() / wall.as_secs_f64()
        ),
        _ => "?".to_owned(),
    }
}

/// `1234567` → `1,234,567`.
fn grouped(n: f64) -> String {
    let digits = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ms(time: Duration) -> f64 {
    time.as_secs_f64() * 1e3
}

fn free_udp_port() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port on 127.0.0.1")
}

fn node_id(text: &str) -> NodeId {
    NodeId::parse(text).expect("valid node id")
}

/// Median time of `iters` runs of `run`; what a run returns is dropped after the clock stops.
fn median<T>(iters: usize, mut run: impl FnMut() -> T) -> Duration {
    let mut times: Vec<Duration> = (0..iters)
        .map(|_| {
            let start = Instant::now();
            let output = black_box(run());
            let time = start.elapsed();
            drop(output);
            time
        })
        .collect();
    times.sort_unstable();
    times[times.len() / 2]
}

/// Water-fee batches of `rows` sample records from the county, signed by `key`.
fn build_batches(
    origin: NodeId,
    period: &str,
    rows: usize,
    per_batch: usize,
    seed: u64,
    key: &NodeKey,
    network_key: &protocol::DesensitizeKey,
) -> Vec<SignedBatch> {
    let schema = Registry::builtin()
        .by_name("water_fee")
        .expect("water_fee schema is built in");
    let period = Period::parse(period).expect("valid period");
    let sample = node::sample::sample_csv(schema, origin, period, rows, 0, seed);
    let options = IngestOptions {
        schema,
        origin,
        period,
        encoding: Encoding::Utf8,
        desensitize_key: network_key,
        node_key: key,
        batch_records_max: per_batch,
    };
    let report = ingest_bytes(
        Path::new("bench/water_fee.csv"),
        sample.text.as_bytes(),
        &options,
        |_| {},
    )
    .expect("sample ingests");
    assert_eq!(report.records, rows as u64, "every sample row is a record");
    report.batches
}

// ---------------------------------------------------------------------------------------------
// 1. Raw quinn

/// Accepts exactly one client key.
#[derive(Debug)]
struct OnlyKey(Option<(PublicKey, NodeId)>);

impl PeerPolicy for OnlyKey {
    fn allowed_client(&self, key: &PublicKey) -> Option<NodeId> {
        self.0.filter(|(k, _)| k == key).map(|(_, id)| id)
    }
}

struct Raw {
    bytes: usize,
    time: Duration,
    cpu_before: Option<Duration>,
    cpu_after: Option<Duration>,
    drops: String,
}

impl Raw {
    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / MB / self.time.as_secs_f64()
    }

    /// Process CPU seconds per MB moved (both ends).
    fn cpu_s_per_mb(&self) -> Option<f64> {
        Some((self.cpu_after? - self.cpu_before?).as_secs_f64() / (self.bytes as f64 / MB))
    }
}

/// Two endpoints with the nodes' TLS, connected: (client side, server side, endpoints to keep).
async fn raw_pair() -> (quinn::Connection, quinn::Connection, [quinn::Endpoint; 2]) {
    let server_key = NodeKey::from_seed(random32().expect("random"));
    let client_key = NodeKey::from_seed(random32().expect("random"));
    let (server_id, client_id) = (node_id("445200"), node_id("445281"));
    let loopback: SocketAddr = "127.0.0.1:0".parse().expect("address");
    let server = transport::endpoint(
        loopback,
        &server_key,
        Arc::new(OnlyKey(Some((client_key.public(), client_id)))),
    )
    .expect("server endpoint");
    let client =
        transport::endpoint(loopback, &client_key, Arc::new(OnlyKey(None))).expect("client");
    let server_addr = server.local_addr().expect("server address");
    let accepting = {
        let server = server.clone();
        tokio::spawn(async move {
            server
                .accept()
                .await
                .expect("an incoming connection")
                .await
                .expect("server handshake")
        })
    };
    let client_side = transport::connect(
        &client,
        &client_key,
        server_id,
        server_addr,
        server_key.public(),
    )
    .await
    .expect("client handshake");
    let server_side = accepting.await.expect("accept task");
    (client_side, server_side, [server, client])
}

/// Sends `streams` uni streams of `payload`, at most `window` being written at once; returns
/// once the receiver has read every byte (`read_to_end`, as a node reads a batch).
async fn raw_transfer(
    client: &quinn::Connection,
    server: &quinn::Connection,
    streams: usize,
    payload: Arc<Vec<u8>>,
    window: usize,
) -> Raw {
    let receiver = {
        let server = server.clone();
        tokio::spawn(async move {
            let mut reads = JoinSet::new();
            for _ in 0..streams {
                let mut stream = server.accept_uni().await.expect("accept a uni stream");
                reads.spawn(async move {
                    stream
                        .read_to_end(STREAM_BYTES)
                        .await
                        .expect("read a stream")
                        .len()
                });
            }
            let mut total = 0;
            while let Some(read) = reads.join_next().await {
                total += read.expect("read task");
            }
            total
        })
    };
    let drops_before = udp_drops();
    let cpu_before = cpu_time();
    let start = Instant::now();
    let slots = Arc::new(tokio::sync::Semaphore::new(window));
    let mut sends = JoinSet::new();
    for _ in 0..streams {
        let slot = slots.clone().acquire_owned().await.expect("semaphore");
        let connection = client.clone();
        let payload = payload.clone();
        sends.spawn(async move {
            let mut stream = connection.open_uni().await.expect("open a uni stream");
            stream.write_all(&payload).await.expect("write a stream");
            stream.finish().expect("finish a stream");
            drop(slot);
        });
    }
    let bytes = receiver.await.expect("receiver task");
    let time = start.elapsed();
    let cpu_after = cpu_time();
    let drops_after = udp_drops();
    while let Some(sent) = sends.join_next().await {
        sent.expect("send task");
    }
    assert_eq!(bytes, streams * payload.len(), "every byte arrived");
    Raw {
        bytes,
        time,
        cpu_before,
        cpu_after,
        drops: drops(drops_before, drops_after),
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Real sync

struct Cluster {
    _root: tempfile::TempDir,
    province: Arc<Node>,
    city: Arc<Node>,
    county: Arc<Node>,
}

struct Identities {
    root: tempfile::TempDir,
    topology_path: PathBuf,
    county_key: NodeKey,
    county_public: PublicKey,
    network_key: protocol::DesensitizeKey,
    city_key: NodeKey,
}

const PROVINCE: &str = "440000";
const CITY: &str = "445200";
const COUNTY: &str = "445281";

/// Identities for province, city and county sharing one network key, and the topology file.
fn make_identities() -> Identities {
    let root = tempfile::tempdir().expect("temp dir");
    let dir = |id: &str| root.path().join(id);
    let province =
        Identity::create(&dir(PROVINCE), node_id(PROVINCE), None).expect("province identity");
    let network = province.network_key.0;
    let city = Identity::create(&dir(CITY), node_id(CITY), Some(network)).expect("city identity");
    let county =
        Identity::create(&dir(COUNTY), node_id(COUNTY), Some(network)).expect("county identity");
    let national_key = NodeKey::from_seed(random32().expect("random")).public();
    let entry = |id: NodeId, name: &str, parent: Option<NodeId>, key: PublicKey| TopologyNode {
        id,
        name: name.to_owned(),
        role: Role::of_id(id),
        parent,
        address: free_udp_port(),
        public_key: key,
    };
    let nodes = vec![
        entry(NodeId::NATIONAL, "全国平台", None, national_key),
        entry(
            province.id,
            "广东省",
            Some(NodeId::NATIONAL),
            province.public(),
        ),
        entry(city.id, "揭阳市", Some(province.id), city.public()),
        entry(county.id, "普宁市", Some(city.id), county.public()),
    ];
    let topology = Topology::from_nodes(1, nodes).unwrap_or_else(|errors| {
        panic!(
            "bench topology invalid: {}",
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        )
    });
    let topology_path = root.path().join("topology.toml");
    std::fs::write(&topology_path, topology.render()).expect("write topology");
    Identities {
        topology_path,
        county_public: county.public(),
        county_key: county.key,
        network_key: county.network_key,
        city_key: city.key,
        root,
    }
}

async fn start_cluster(identities: Identities, config: SyncConfig) -> Cluster {
    let start = |id: &str| {
        let dir = identities.root.path().join(id);
        let topology = identities.topology_path.clone();
        async move {
            runtime::start(&dir, &topology, config)
                .await
                .unwrap_or_else(|e| panic!("start {dir:?}: {e:#}"))
        }
    };
    let province = start(PROVINCE).await;
    let city = start(CITY).await;
    let county = start(COUNTY).await;
    Cluster {
        _root: identities.root,
        province,
        city,
        county,
    }
}

/// When each condition first held, measured from `start`.
#[derive(Default)]
struct Arrivals {
    city_holds: Option<Duration>,
    province_holds: Option<Duration>,
    county_has_province_receipts: Option<Duration>,
}

/// Polls the stores every [`POLL`] until the city and the province hold every id and the
/// county holds the province's receipt for every id.
async fn watch(cluster: &Cluster, ids: &[BatchId], start: Instant) -> Arrivals {
    let province_id = cluster.province.me;
    let mut city_left = ids.to_vec();
    let mut province_left = ids.to_vec();
    let mut receipts_left = ids.to_vec();
    let mut arrivals = Arrivals::default();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        city_left.retain(|id| !cluster.city.store.holds(id).expect("city store"));
        province_left.retain(|id| !cluster.province.store.holds(id).expect("province store"));
        receipts_left.retain(|id| {
            cluster
                .county
                .store
                .receipt(id, province_id)
                .expect("county store")
                .is_none()
        });
        let now = start.elapsed();
        for (left, at) in [
            (&city_left, &mut arrivals.city_holds),
            (&province_left, &mut arrivals.province_holds),
            (&receipts_left, &mut arrivals.county_has_province_receipts),
        ] {
            if left.is_empty() && at.is_none() {
                *at = Some(now);
            }
        }
        if city_left.is_empty() && province_left.is_empty() && receipts_left.is_empty() {
            return arrivals;
        }
        if now > SYNC_TIMEOUT {
            panic!(
                "sync stuck after {now:?}: city lacks {}, province lacks {}, county lacks {} province receipts; links: county {:?}, city {:?}",
                city_left.len(),
                province_left.len(),
                receipts_left.len(),
                cluster.county.links(),
                cluster.city.links()
            );
        }
    }
}

struct SyncRun {
    submitted: Duration,
    drops: String,
    arrivals: Arrivals,
    cpu_before: Option<Duration>,
    cpu_after: Option<Duration>,
    rss_started: Option<u64>,
    rss_after: Option<u64>,
    peak: Option<u64>,
}

async fn sync_run(
    identities: Identities,
    config: SyncConfig,
    warmup: Vec<SignedBatch>,
    batches: Vec<SignedBatch>,
) -> SyncRun {
    let cluster = start_cluster(identities, config).await;
    // Warm-up: connections up, first stores written, blocking threads spawned.
    let warm_ids: Vec<BatchId> = warmup.iter().map(|b| b.id).collect();
    let warm_start = Instant::now();
    for batch in warmup {
        cluster.county.submit(batch).await.expect("warm-up submit");
    }
    watch(&cluster, &warm_ids, warm_start).await;
    let rss_started = rss();

    let ids: Vec<BatchId> = batches.iter().map(|b| b.id).collect();
    let drops_before = udp_drops();
    let cpu_before = cpu_time();
    let start = Instant::now();
    let (submitted, arrivals) = tokio::join!(
        async {
            for batch in batches {
                assert!(
                    cluster.county.submit(batch).await.expect("submit"),
                    "every batch is new"
                );
            }
            start.elapsed()
        },
        watch(&cluster, &ids, start)
    );
    let cpu_after = cpu_time();
    let drops_after = udp_drops();
    let rss_after = rss();
    let peak = peak();
    for node in [&cluster.county, &cluster.city, &cluster.province] {
        let _ = tokio::time::timeout(Duration::from_secs(3), runtime::shutdown(node)).await;
    }
    SyncRun {
        submitted,
        drops: drops(drops_before, drops_after),
        arrivals,
        cpu_before,
        cpu_after,
        rss_started,
        rss_after,
        peak,
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Where the time goes

struct Offline {
    store_read: Duration,
    frame_encode: Duration,
    frame_decode: Duration,
    verify_incoming: Duration,
    hash_signature: Duration,
    decode: Duration,
    reencode: Duration,
    insert: Duration,
    sync_each: Duration,
    insert_and_sync_each: Duration,
    group_commit: Duration,
}

fn offline_costs(
    batches: &[SignedBatch],
    county: PublicKey,
    city_key: &NodeKey,
    dir: &Path,
) -> Offline {
    let (county_id, city_id, province_id) = (node_id(COUNTY), node_id(CITY), node_id(PROVINCE));
    let origin_key = |o: NodeId| (o == county_id).then_some(county);
    let registry = Registry::builtin();

    let verify_incoming_time = median(OFFLINE_ITERS, || {
        batches
            .iter()
            .map(|b| verify_incoming(b, origin_key, registry).expect("batch verifies"))
            .collect::<Vec<Batch>>()
    });
    let hash_signature = median(OFFLINE_ITERS, || {
        for b in batches {
            b.verify_hash_and_signature(&county)
                .expect("hash and signature");
        }
    });
    let decode = median(OFFLINE_ITERS, || {
        batches
            .iter()
            .map(|b| Batch::decode(&b.bytes).expect("decodes"))
            .collect::<Vec<Batch>>()
    });
    let decoded: Vec<Batch> = batches
        .iter()
        .map(|b| verify_incoming(b, origin_key, registry).expect("batch verifies"))
        .collect();
    // Batch::decode re-encodes to check the bytes are canonical: that share alone.
    let reencode = median(OFFLINE_ITERS, || {
        decoded
            .iter()
            .map(|b| b.encode().expect("encodes"))
            .collect::<Vec<Vec<u8>>>()
    });
    let frames: Vec<Vec<u8>> = batches
        .iter()
        .map(|b| Message::Batch(b.clone()).encode())
        .collect();
    // Encoding takes the message by value in production too (the batch read from the store).
    let frame_encode = {
        let mut times = Vec::new();
        for _ in 0..OFFLINE_ITERS {
            let messages: Vec<Message> = batches.iter().cloned().map(Message::Batch).collect();
            let start = Instant::now();
            let encoded: Vec<Vec<u8>> = messages.iter().map(Message::encode).collect();
            times.push(start.elapsed());
            drop(black_box(encoded));
        }
        times.sort_unstable();
        times[times.len() / 2]
    };
    let frame_decode = median(OFFLINE_ITERS, || {
        frames
            .iter()
            .map(|f| {
                wire::decode_frame(f, wire::BATCH_FRAME_BYTES_MAX)
                    .expect("frame decodes")
                    .expect("whole frame")
            })
            .collect::<Vec<_>>()
    });

    let receipts: Vec<_> = batches
        .iter()
        .map(|b| {
            Receipt {
                receiver: city_id,
                batch: b.id,
                origin: county_id,
                received_at_ms: runtime::wall_ms(),
                verdict: Verdict::Accepted { warnings: 0 },
            }
            .sign(city_key)
        })
        .collect();
    let insert = |store: &Store, i: usize| {
        assert!(
            store
                .insert_batch(
                    &batches[i],
                    &decoded[i],
                    county_id,
                    &receipts[i],
                    &[province_id],
                    runtime::wall_ms(),
                )
                .expect("insert"),
            "new batch"
        );
    };

    // As a receiving node does: one transaction and one fsync per batch.
    let store = Store::open(&dir.join("each")).expect("open store");
    store.sync().expect("sync");
    let (mut insert_time, mut sync_time) = (Duration::ZERO, Duration::ZERO);
    for i in 0..batches.len() {
        let start = Instant::now();
        insert(&store, i);
        let inserted = Instant::now();
        store.sync().expect("sync");
        insert_time += inserted - start;
        sync_time += inserted.elapsed();
    }
    let store_read = median(OFFLINE_ITERS, || {
        batches
            .iter()
            .map(|b| store.batch(&b.id).expect("read").expect("held"))
            .collect::<Vec<SignedBatch>>()
    });
    drop(store);

    // Group commit: every batch in, then one fsync.
    let store = Store::open(&dir.join("group")).expect("open store");
    store.sync().expect("sync");
    let start = Instant::now();
    for i in 0..batches.len() {
        insert(&store, i);
    }
    store.sync().expect("sync");
    let group_commit = start.elapsed();
    drop(store);

    Offline {
        store_read,
        frame_encode,
        frame_decode,
        verify_incoming: verify_incoming_time,
        hash_signature,
        decode,
        reencode,
        insert: insert_time,
        sync_each: sync_time,
        insert_and_sync_each: insert_time + sync_time,
        group_commit,
    }
}

// ---------------------------------------------------------------------------------------------

fn main() {
    // cargo passes `--bench` and maybe a filter: every argument is ignored.
    let _ = std::env::args().skip(1).count();
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let raw_mib = env_usize("BENCH_MB", DEFAULT_RAW_MIB);
    let records = env_usize("BENCH_RECORDS", DEFAULT_RECORDS);
    let per_batch = env_usize("BENCH_BATCH_RECORDS", DEFAULT_BATCH_RECORDS).min(BATCH_RECORDS_MAX);
    let config = SyncConfig {
        window: env_usize("BENCH_WINDOW", SyncConfig::default().window),
        ..SyncConfig::default()
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rss_start = rss();

    // Batches, outside every timing.
    let identities = make_identities();
    let county_id = node_id(COUNTY);
    let batches = build_batches(
        county_id,
        "2022-05",
        records,
        per_batch,
        SEED,
        &identities.county_key,
        &identities.network_key,
    );
    let warmup = build_batches(
        county_id,
        "2022-04",
        1_000,
        per_batch,
        SEED + 1,
        &identities.county_key,
        &identities.network_key,
    );
    let batch_count = batches.len();
    let batch_bytes: usize = batches.iter().map(|b| b.bytes.len()).sum();
    let rss_built = rss();

    // 4. Offline costs, one thread, before any node runs.
    let offline_dir = tempfile::tempdir().expect("temp dir");
    let offline = offline_costs(
        &batches,
        identities.county_public,
        &identities.city_key,
        offline_dir.path(),
    );
    drop(offline_dir);

    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let streams = (raw_mib * 1024 * 1024).div_ceil(STREAM_BYTES).max(1);
    let payload: Arc<Vec<u8>> = Arc::new({
        let mut rng = node::sample::Rng::new(SEED);
        (0..STREAM_BYTES / 8)
            .flat_map(|_| rng.next_u64().to_le_bytes())
            .collect()
    });

    // 1. Raw quinn (warm-up stream, then timed), 2. sync, 1'. raw quinn again.
    let peak_resets = reset_peak();
    let (raw_first, raw_peak) = tokio.block_on(async {
        let (client, server, _endpoints) = raw_pair().await;
        raw_transfer(&client, &server, 1, payload.clone(), config.window).await;
        let raw = raw_transfer(&client, &server, streams, payload.clone(), config.window).await;
        client.close(0u32.into(), b"done");
        (raw, peak())
    });
    let rss_after_raw = rss();
    reset_peak();
    let rss_before_sync = rss();
    let sync = tokio.block_on(sync_run(identities, config, warmup, batches));
    let rss_after_sync = rss();
    let raw_second = tokio.block_on(async {
        let (client, server, _endpoints) = raw_pair().await;
        raw_transfer(&client, &server, 1, payload.clone(), config.window).await;
        let raw = raw_transfer(&client, &server, streams, payload.clone(), config.window).await;
        client.close(0u32.into(), b"done");
        raw
    });
    drop(tokio);
    let raw = if raw_first.mb_per_s() >= raw_second.mb_per_s() {
        &raw_first
    } else {
        &raw_second
    };
    let raw_rate = raw.mb_per_s();

    // Report.
    let data_mb = batch_bytes as f64 / MB;
    println!();
    println!(
        "sync bench: {cpus} CPU(s); MB = 10^6 bytes; CPU % = process user+system time over wall time (100 % = one core)"
    );
    println!();
    println!(
        "1. raw quinn, 1 connection, node TLS, {streams} uni streams x 16 MiB, at most {} open, read_to_end",
        config.window
    );
    println!(
        "{:<44} {:>9} {:>9} {:>9} {:>7} {:>10}",
        "", "MB", "ms", "MB/s", "CPU", "UDP drops"
    );
    for (name, run) in [
        ("raw quinn, before sync", &raw_first),
        ("raw quinn, after sync", &raw_second),
    ] {
        println!(
            "{:<44} {:>9.1} {:>9.1} {:>9.1} {:>7} {:>10}",
            name,
            run.bytes as f64 / MB,
            ms(run.time),
            run.mb_per_s(),
            cpu_percent(run.cpu_before, run.cpu_after, run.time),
            run.drops
        );
    }
    println!();
    println!(
        "2. sync county → city → province: {} water_fee records in {batch_count} batches of <= {per_batch} ({data_mb:.1} MB, {} bytes/record), window {}",
        grouped(records as f64),
        batch_bytes / records.max(1),
        config.window
    );
    println!(
        "{:<44} {:>9} {:>11} {:>9} {:>8}",
        "time from first submit until", "ms", "records/s", "MB/s", "of raw"
    );
    let province_time = sync
        .arrivals
        .province_holds
        .expect("watch returns when all are held");
    let receipts_time = sync
        .arrivals
        .county_has_province_receipts
        .expect("watch returns when all are receipted");
    let rows = [
        ("county submitted all (verify+store+fsync)", sync.submitted),
        (
            "city holds all",
            sync.arrivals.city_holds.expect("all held"),
        ),
        ("province holds all  <- sync throughput", province_time),
        (
            "county holds province receipts for all",
            sync.arrivals
                .county_has_province_receipts
                .expect("all receipted"),
        ),
    ];
    for (name, time) in rows {
        let rate = data_mb / time.as_secs_f64();
        println!(
            "{:<44} {:>9.1} {:>11} {:>9.1} {:>7.1}%",
            name,
            ms(time),
            grouped(records as f64 / time.as_secs_f64()),
            rate,
            100.0 * rate / raw_rate
        );
    }
    println!(
        "CPU during the sync run (until the county held every receipt): {}; UDP receive-buffer drops: {}",
        cpu_percent(sync.cpu_before, sync.cpu_after, receipts_time),
        sync.drops
    );
    println!();
    println!(
        "3. memory: RSS {} at start, {} with batches built, {} after raw quinn; sync: {} before nodes, {} nodes warmed up, {} all synced, {} nodes stopped",
        mem(rss_start),
        mem(rss_built),
        mem(rss_after_raw),
        mem(rss_before_sync),
        mem(sync.rss_started),
        mem(sync.rss_after),
        mem(rss_after_sync),
    );
    if peak_resets {
        println!(
            "   peak RSS (VmHWM): raw quinn phase {}, sync phase {}, end of run {}",
            mem(raw_peak),
            mem(sync.peak),
            mem(peak())
        );
    } else {
        println!(
            "   peak RSS (VmHWM) of the whole run (the kernel refused a reset between phases): {}",
            mem(peak())
        );
    }
    println!();
    println!(
        "4. where the time goes: one thread, outside the network, all {batch_count} batches ({data_mb:.1} MB); median of {OFFLINE_ITERS} for CPU rows"
    );
    println!("{:<44} {:>9} {:>11} {:>9}", "", "ms", "records/s", "MB/s");
    let line = |name: &str, time: Duration| {
        println!(
            "{:<44} {:>9.1} {:>11} {:>9.1}",
            name,
            ms(time),
            grouped(records as f64 / time.as_secs_f64()),
            data_mb / time.as_secs_f64()
        );
    };
    line("sender: Store::batch (read + rehash)", offline.store_read);
    line("sender: frame encode", offline.frame_encode);
    line("receiver: frame decode", offline.frame_decode);
    line("receiver: verify_incoming", offline.verify_incoming);
    line("    hash + signature", offline.hash_signature);
    line("    Batch::decode", offline.decode);
    line(
        "      of which re-encode (canonical check)",
        offline.reencode,
    );
    line(
        "    check_record etc. (the rest)",
        offline
            .verify_incoming
            .saturating_sub(offline.hash_signature + offline.decode),
    );
    line("receiver: Store::insert_batch", offline.insert);
    line("receiver: Store::sync after each", offline.sync_each);
    line(
        "receiver: insert + sync each (as nodes do)",
        offline.insert_and_sync_each,
    );
    line(
        "receiver: insert all + one sync (group)",
        offline.group_commit,
    );

    // A rough budget for one hop, each stage alone at full speed.
    let network = Duration::from_secs_f64(batch_bytes as f64 / MB / raw_rate);
    let sender = offline.store_read + offline.frame_encode;
    let receive_cpu = offline.frame_decode + offline.verify_incoming;
    let stages = [
        ("network (raw quinn)", network),
        ("sender read + encode", sender),
        ("receiver decode + verify", receive_cpu),
        ("receiver durable write", offline.insert_and_sync_each),
    ];
    println!();
    println!("one hop, each stage alone (ms): {}", {
        stages
            .iter()
            .map(|(name, time)| format!("{name} {:.1}", ms(*time)))
            .collect::<Vec<_>>()
            .join(", ")
    });
    let slowest = stages.iter().max_by_key(|(_, time)| *time).expect("stages");
    // Work the whole run needs (three stores, two hops) against the CPUs there are.
    let cpu_work = offline.verify_incoming * 3
        + offline.insert * 3
        + (sender + offline.frame_decode) * 2
        + raw.cpu_s_per_mb().map_or(Duration::ZERO, |s| {
            Duration::from_secs_f64(s * data_mb * 2.0)
        });
    println!(
        "slowest stage: {} ({:.1} ms); CPU work of the whole run (3x verify + insert, 2x send/receive + QUIC) ~{:.0} ms on {cpus} CPU(s), fsyncs 3x {:.1} ms",
        slowest.0,
        ms(slowest.1),
        ms(cpu_work),
        ms(offline.sync_each)
    );
    println!(
        "sync / raw quinn: {:.1} % (target >= 60 %)",
        100.0 * data_mb / province_time.as_secs_f64() / raw_rate
    );
}
