//! Sync throughput: county → city → province over real QUIC on loopback, beside raw quinn
//! between two endpoints of this process, in the same run.
//!
//! One run measures:
//! 1. **raw quinn**: two endpoints on 127.0.0.1 with the nodes' own TLS and transport
//!    settings (`node::transport`: self-signed Ed25519 certificates, pinned keys, the same
//!    windows), one connection, `BENCH_MB` MiB (256) sent as uni streams of 16 MiB (at most
//!    `BENCH_WINDOW` being written at once, like batch streams), each read with
//!    `read_to_end` as a node reads a batch. Two runs; the faster is the raw limit of one hop.
//!    1b. **raw quinn relay**: the same streams from this process through a middle process to a
//!    sink process (the bench binary re-run with `--raw-relay`), the middle reading each
//!    stream whole and forwarding it, with no verification or storage: the physical limit of
//!    a three-node chain on this machine. Two runs; the faster counts.
//!    1c. **the floor of a verified, durable hop and chain**: the one hop's batch frames, sent
//!    from memory about as many bytes as in 1, to a receiver that reads each frame as a node
//!    does and then does, in steps, the least a receiver that verifies and makes durable must:
//!    the hash and signature, the bytes written and fsynced (the store's own file writer);
//!    then also every record's key read, every record read in place (`Batch::read_each`),
//!    each checked against its schema there (`Schema::check_read`); and today's verification
//!    (`sync::decode_content`). Nothing is indexed, audited or acknowledged. One hop between
//!    two endpoints as in 1, the chain through the three processes of 1b (the middle and the
//!    sink each doing the step's work). Two runs a step; the faster counts. Where a step's
//!    floor is below 60 %, no receiver doing that much reaches the target on this machine.
//!    2a. **one hop**: a county and a city in-process (fresh stores, on their own ports); the
//!    county stores a run's batches before the city starts; timed from the county's link
//!    coming up until the city holds every batch (verified, indexed, audited, durable).
//! 2. **real sync**: three nodes started in-process with `node::runtime::start` (province
//!    440000, city 445200, county 445281; the national platform 000000 is in the topology but
//!    never started). Each of `BENCH_SYNC_RUNS` (3) runs sends `BENCH_RECORDS` (100,000) fresh
//!    water-fee records signed by the county, in batches of `BENCH_BATCH_RECORDS` (10,000),
//!    built outside the timing. Timed: `county.submit` of every batch, one after another
//!    (verify, store, fsync at the county), until the city and then the province hold every
//!    batch id (polled every 5 ms), and until the county holds the province's receipt for
//!    each (relayed down: the batch is durable at the province). Runs follow each other on
//!    the same nodes; the median run is the result.
//! 3. **memory**: RSS at each stage and the peak (VmHWM) of each network phase (the peak is
//!    reset between phases through `/proc/self/clear_refs` where the kernel allows it).
//! 4. **where the time goes**: on one thread, outside the network, over one run's batches:
//!    what a sender does per batch (`Store::batch`, frame encoding), what a receiver does
//!    (frame decoding, `verify_incoming` and its parts, `Store::insert_batch`, `Store::sync`),
//!    durable writes with one fsync per batch against one for all (group commit), and the
//!    same with the record index and audit a receiving node writes with each batch. Then
//!    the one hop's CPU as it ran (user, system, page faults, a MB) beside the sum of its
//!    stages alone and raw quinn's CPU for the same bytes: what the parts cost together.
//!
//! Around each network phase the bench reads this process's CPU time (user and system) and
//! minor page faults, the machine's (other processes, I/O wait) from `/proc/stat`, UDP
//! receive-buffer drops from `/proc/net/snmp` and bytes written from `/proc/self/io`, to tell
//! a CPU-bound run from a starved or waiting one.
//!
//! A plain `main` (harness = false); arguments cargo passes are ignored. `BENCH_WINDOW` sets
//! `SyncConfig::window` (default 8). `RUST_LOG` turns on the nodes' logs (stderr).
//!
//! Run: `cargo bench -p credit-node --bench sync`.

#![allow(clippy::print_stdout)]

mod common;

use common::{
    CITY, COUNTY, Chain, PROVINCE, du, env_usize, grouped, init_logs, node_id, status_kib,
    udp_drops, water_fee_batches,
};

use std::hint::black_box;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use node::identity::random32;
use node::runtime::{self, Node};
use node::store::Store;
use node::store::file::FileWriter;
use node::transport::{self, PeerPolicy};
use protocol::batch::BATCH_RECORDS_MAX;
use protocol::sync::{SyncConfig, decode_content, verify_incoming};
use protocol::wire::{self, Message, Receipt, Verdict};
use protocol::{
    Batch, BatchId, DesensitizeKey, NodeId, NodeKey, Period, PublicKey, Registry, SignedBatch,
};
use tokio::task::JoinSet;

const DEFAULT_RAW_MIB: usize = 256;
const DEFAULT_RECORDS: usize = 100_000;
const DEFAULT_BATCH_RECORDS: usize = 10_000;
const DEFAULT_SYNC_RUNS: usize = 3;
/// Bytes per raw stream: a large batch.
const STREAM_BYTES: usize = 16 * 1024 * 1024;
const SEED: u64 = 202_205;
/// How often the sync run checks the stores.
const POLL: Duration = Duration::from_millis(5);
/// A sync run that takes longer than this is stuck.
const SYNC_TIMEOUT: Duration = Duration::from_secs(120);
/// Repetitions of each offline measurement (median reported).
const OFFLINE_ITERS: usize = 3;
/// Clock ticks per second in `/proc` (USER_HZ, 100 on every Linux port).
const TICKS_PER_S: f64 = 100.0;
const MB: f64 = 1e6;

// ---------------------------------------------------------------------------------------------
// What the process and the machine did

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
        |k| format!("{:.0} MB", k as f64 * 1024.0 / MB),
    )
}

/// Counters read at one moment; the difference of two is a [`Usage`].
#[derive(Clone, Copy)]
struct Snapshot {
    at: Instant,
    /// This process, all threads, in ticks: user, system; and its minor page faults.
    process: Option<(u64, u64, u64)>,
    /// All CPUs of the machine: (busy, I/O wait, total) ticks.
    machine: Option<(u64, u64, u64)>,
    /// UDP datagrams dropped for a full socket receive buffer, machine-wide.
    udp_drops: Option<u64>,
    /// Bytes this process passed to `write` and friends.
    written: Option<u64>,
}

impl Snapshot {
    fn now() -> Snapshot {
        Snapshot {
            at: Instant::now(),
            process: process_ticks(),
            machine: machine_ticks(),
            udp_drops: udp_drops(),
            written: written(),
        }
    }
}

/// This process's user and system ticks and minor page faults, all threads.
fn process_ticks() -> Option<(u64, u64, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After the command name: state is field 3; minflt is 10, utime 14 and stime 15.
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    Some((field(14)?, field(15)?, field(10)?))
}

fn machine_ticks() -> Option<(u64, u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .map(|t| t.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let total: u64 = ticks.iter().take(8).sum();
    let (idle, iowait) = (*ticks.get(3)?, *ticks.get(4)?);
    Some((total - idle - iowait, iowait, total))
}

fn written() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("wchar:"))?
        .trim()
        .parse()
        .ok()
}

/// What happened between two snapshots.
struct Usage {
    wall: Duration,
    /// CPU in % of one core: this process, other processes, all CPUs waiting on I/O.
    ours: Option<f64>,
    /// This process's CPU time in user and in system mode, and its minor page faults.
    user: Option<Duration>,
    system: Option<Duration>,
    faults: Option<u64>,
    others: Option<f64>,
    iowait: Option<f64>,
    udp_drops: Option<u64>,
    written: Option<u64>,
}

impl Usage {
    fn between(a: Snapshot, b: Snapshot, cpus: usize) -> Usage {
        let wall = b.at - a.at;
        let process = b.process.zip(a.process);
        let ticks = |t: u64| Duration::from_secs_f64(t as f64 / TICKS_PER_S);
        let (user, system) = (
            process.map(|(b, a)| ticks(b.0 - a.0)),
            process.map(|(b, a)| ticks(b.1 - a.1)),
        );
        let ours = user
            .zip(system)
            .map(|(user, system)| 100.0 * (user + system).as_secs_f64() / wall.as_secs_f64());
        let machine = b.machine.zip(a.machine).map(|(b, a)| {
            let total = (b.2 - a.2).max(1) as f64;
            let cores = cpus as f64 * 100.0;
            (
                cores * (b.0 - a.0) as f64 / total,
                cores * (b.1 - a.1) as f64 / total,
            )
        });
        Usage {
            wall,
            ours,
            user,
            system,
            faults: process.map(|(b, a)| b.2 - a.2),
            others: machine
                .zip(ours)
                .map(|((busy, _), ours)| (busy - ours).max(0.0)),
            iowait: machine.map(|(_, iowait)| iowait),
            udp_drops: b.udp_drops.zip(a.udp_drops).map(|(b, a)| b - a),
            written: b.written.zip(a.written).map(|(b, a)| b - a),
        }
    }

    /// `ours/others/iowait` in % of one core.
    fn cpu(&self) -> String {
        let pct = |v: Option<f64>| v.map_or_else(|| "?".to_owned(), |v| format!("{v:.0}"));
        format!(
            "{}/{}/{}",
            pct(self.ours),
            pct(self.others),
            pct(self.iowait)
        )
    }

    fn drops(&self) -> String {
        self.udp_drops
            .map_or_else(|| "?".to_owned(), |d| d.to_string())
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers

fn ms(time: Duration) -> f64 {
    time.as_secs_f64() * 1e3
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

/// Water-fee batches of `rows` sample records from `origin`, signed by `key`.
fn build_batches(
    origin: NodeId,
    period: &str,
    rows: usize,
    per_batch: usize,
    seed: u64,
    key: &NodeKey,
    network_key: &DesensitizeKey,
) -> Vec<SignedBatch> {
    let period = Period::parse(period).expect("valid period");
    water_fee_batches(origin, period, rows, per_batch, seed, key, network_key)
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

struct RawRun {
    bytes: usize,
    usage: Usage,
    /// Process CPU seconds per MB moved (both ends).
    cpu_s_per_mb: Option<f64>,
}

impl RawRun {
    /// `bytes` moved between two snapshots of this process (both ends in it).
    fn between(bytes: usize, before: Snapshot, after: Snapshot, cpus: usize) -> RawRun {
        let usage = Usage::between(before, after, cpus);
        let cpu_s_per_mb = usage
            .user
            .zip(usage.system)
            .map(|(user, system)| (user + system).as_secs_f64() / (bytes as f64 / MB));
        RawRun {
            bytes,
            usage,
            cpu_s_per_mb,
        }
    }

    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / MB / self.usage.wall.as_secs_f64()
    }
}

/// One line per raw run: bytes, time, rate, CPU and drops.
fn print_raw_runs(runs: &[RawRun]) {
    for (i, run) in runs.iter().enumerate() {
        println!(
            "{:<10} {:>9.1} {:>9.1} {:>9.1} {:>14} {:>10}",
            format!("run {}", i + 1),
            run.bytes as f64 / MB,
            ms(run.usage.wall),
            run.mb_per_s(),
            run.usage.cpu(),
            run.usage.drops()
        );
    }
}

/// Two endpoints with the nodes' TLS, connected: (client side, server side, endpoints to keep).
async fn raw_pair() -> (quinn::Connection, quinn::Connection, [quinn::Endpoint; 2]) {
    let server_key = NodeKey::from_seed(random32().expect("random"));
    let client_key = NodeKey::from_seed(random32().expect("random"));
    let (server_id, client_id) = (node_id(CITY), node_id(COUNTY));
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

/// Opens a uni stream on `connection` for each of `payloads`, in order, at most `window`
/// being written at once; returns the tasks still writing the last ones.
async fn send_streams(
    connection: &quinn::Connection,
    payloads: impl IntoIterator<Item = Arc<Vec<u8>>>,
    window: usize,
) -> JoinSet<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(window));
    let mut sends = JoinSet::new();
    for payload in payloads {
        let slot = slots.clone().acquire_owned().await.expect("semaphore");
        let connection = connection.clone();
        sends.spawn(async move {
            let mut stream = connection.open_uni().await.expect("open a uni stream");
            stream.write_all(&payload).await.expect("write a stream");
            stream.finish().expect("finish a stream");
            drop(slot);
        });
    }
    sends
}

/// Sends `streams` uni streams of `payload`, at most `window` being written at once; returns
/// once the receiver has read every byte.
async fn raw_transfer(
    client: &quinn::Connection,
    server: &quinn::Connection,
    streams: usize,
    payload: Arc<Vec<u8>>,
    window: usize,
    cpus: usize,
) -> RawRun {
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
    let before = Snapshot::now();
    let mut sends = send_streams(client, vec![payload.clone(); streams], window).await;
    let bytes = receiver.await.expect("receiver task");
    let after = Snapshot::now();
    while let Some(sent) = sends.join_next().await {
        sent.expect("send task");
    }
    assert_eq!(bytes, streams * payload.len(), "every byte arrived");
    RawRun::between(bytes, before, after, cpus)
}

/// A fresh pair of endpoints, a warm-up stream, then the timed transfer.
async fn raw_run(streams: usize, payload: Arc<Vec<u8>>, window: usize, cpus: usize) -> RawRun {
    let (client, server, _endpoints) = raw_pair().await;
    raw_transfer(&client, &server, 1, payload.clone(), window, cpus).await;
    let run = raw_transfer(&client, &server, streams, payload, window, cpus).await;
    client.close(0u32.into(), b"done");
    run
}

// ---------------------------------------------------------------------------------------------
// 1b. Raw quinn relay through three processes

/// Argument that makes this binary one relay process (`sink` or `middle`) instead of the bench.
const RELAY_ARG: &str = "--raw-relay";
/// Set for a relay process of the floor (1c): the work it does on each batch frame
/// ([`FloorWork::name`]) and, in [`FLOOR_ORIGIN_ENV`], the origin's key in hex.
/// [`FLOOR_DIR_ENV`] names the directory it writes its batch files in (the bench's, removed
/// by the bench once the relay processes are stopped).
const FLOOR_WORK_ENV: &str = "BENCH_FLOOR_WORK";
const FLOOR_ORIGIN_ENV: &str = "BENCH_FLOOR_ORIGIN";
const FLOOR_DIR_ENV: &str = "BENCH_FLOOR_DIR";

/// A process of the raw relay, run as a child of the bench: `sink SEED CLIENT_KEY BYTES` reads
/// uni streams until `BYTES` arrived, then prints `done`; `middle SEED CLIENT_KEY SINK_ADDR
/// SINK_KEY` reads each stream whole (as a node reads a batch) and forwards it to the sink on
/// a stream of its own. Each first prints `listening ADDR PUBLIC_KEY`. In the floor (1c; with
/// [`FLOOR_WORK_ENV`] set) each stream is a batch frame, read as a node reads it, the step's
/// work done on it before it is forwarded (framed again as a node frames it) or counted.
fn relay_process(args: &[String]) {
    use std::io::Write;
    let arg = |n: usize| args.get(n).map(String::as_str).unwrap_or_default();
    let seed = protocol::ids::parse_hex32(arg(1)).expect("relay: seed");
    let key = NodeKey::from_seed(seed);
    let client = PublicKey::parse_hex(arg(2)).expect("relay: client key");
    let floor = std::env::var(FLOOR_WORK_ENV).ok().map(|work| {
        let work = FloorWork::parse(&work).expect("relay: floor work");
        let origin = std::env::var(FLOOR_ORIGIN_ENV).expect("relay: floor origin");
        let origin = PublicKey::parse_hex(&origin).expect("relay: floor origin key");
        let dir = PathBuf::from(std::env::var(FLOOR_DIR_ENV).expect("relay: floor directory"));
        Arc::new(FloorReceiver::new(work, origin, dir))
    });
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    tokio.block_on(async {
        let loopback: SocketAddr = "127.0.0.1:0".parse().expect("address");
        let endpoint = transport::endpoint(
            loopback,
            &key,
            Arc::new(OnlyKey(Some((client, node_id(COUNTY))))),
        )
        .expect("relay endpoint");
        let addr = endpoint.local_addr().expect("relay address");
        println!("listening {addr} {}", key.public().to_hex());
        std::io::stdout().flush().expect("stdout");
        let forward = match arg(0) {
            "middle" => {
                let sink_addr: SocketAddr = arg(3).parse().expect("relay: sink address");
                let sink_key = PublicKey::parse_hex(arg(4)).expect("relay: sink key");
                let connection =
                    transport::connect(&endpoint, &key, node_id(PROVINCE), sink_addr, sink_key)
                        .await
                        .expect("middle → sink handshake");
                Some(connection)
            }
            _ => None,
        };
        let expected: usize = if forward.is_none() {
            arg(3).parse().expect("relay: byte count")
        } else {
            usize::MAX
        };
        let incoming = endpoint
            .accept()
            .await
            .expect("an incoming connection")
            .await
            .expect("relay handshake");
        let total = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let done = Arc::new(tokio::sync::Notify::new());
        loop {
            let mut stream = tokio::select! {
                stream = incoming.accept_uni() => match stream {
                    Ok(stream) => stream,
                    Err(_) => break,
                },
                () = done.notified() => break,
            };
            let (forward, total, done) = (forward.clone(), total.clone(), done.clone());
            let floor = floor.clone();
            tokio::spawn(async move {
                let (parts, len) = match floor {
                    Some(floor) => {
                        let (batch, len) = floor.receive(stream).await;
                        (wire::batch_frame_parts(batch, None).to_vec(), len)
                    }
                    None => {
                        let bytes = stream
                            .read_to_end(STREAM_BYTES)
                            .await
                            .expect("read a relayed stream");
                        let len = bytes.len();
                        (vec![bytes], len)
                    }
                };
                if let Some(connection) = forward {
                    let mut out = connection.open_uni().await.expect("open onward stream");
                    for part in &parts {
                        out.write_all(part).await.expect("write onward");
                    }
                    out.finish().expect("finish onward");
                }
                let sum = total.fetch_add(len, std::sync::atomic::Ordering::SeqCst) + len;
                if sum >= expected {
                    done.notify_one();
                }
            });
        }
        println!("done {}", total.load(std::sync::atomic::Ordering::SeqCst));
        std::io::stdout().flush().expect("stdout");
    });
}

/// A relay child process and its stdout, killed when dropped.
struct RelayChild {
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl RelayChild {
    /// Starts a relay process with `args`, of the floor when `floor` is given (writing its
    /// files in the directory given).
    fn spawn(
        args: &[String],
        floor: Option<(FloorWork, PublicKey, &Path)>,
    ) -> (RelayChild, SocketAddr, PublicKey) {
        use std::io::BufRead;
        let exe = std::env::current_exe().expect("the bench's own path");
        let mut command = std::process::Command::new(exe);
        command
            .arg(RELAY_ARG)
            .args(args)
            .stdout(std::process::Stdio::piped());
        if let Some((work, origin, dir)) = floor {
            std::fs::create_dir_all(dir).expect("a relay's floor directory");
            command
                .env(FLOOR_WORK_ENV, work.name())
                .env(FLOOR_ORIGIN_ENV, origin.to_hex())
                .env(FLOOR_DIR_ENV, dir);
        }
        let mut child = command.spawn().expect("spawn a relay process");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = std::io::BufReader::new(stdout).lines();
        let line = lines
            .next()
            .expect("the relay process says where it listens")
            .expect("read relay stdout");
        let mut words = line.split_whitespace().skip(1);
        let addr = words
            .next()
            .and_then(|a| a.parse().ok())
            .expect("relay address");
        let key = words
            .next()
            .and_then(|k| PublicKey::parse_hex(k).ok())
            .expect("relay key");
        (RelayChild { child, lines }, addr, key)
    }

    /// Waits for the `done BYTES` line.
    fn done(&mut self) -> usize {
        let line = self
            .lines
            .next()
            .expect("the relay process reports")
            .expect("read relay stdout");
        line.strip_prefix("done ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("relay process said {line:?}"))
    }
}

impl Drop for RelayChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// This process → middle process → sink process: a uni stream for each of `payloads`, at
/// most `window` written at once, each forwarded whole by the middle (in the floor, `floor`'s
/// work done on each batch frame at the middle and at the sink). Timed from the first stream
/// opened until the sink has read every byte. CPU is the machine's (three processes).
fn raw_relay(
    payloads: Vec<Arc<Vec<u8>>>,
    floor: Option<(FloorWork, PublicKey)>,
    window: usize,
    cpus: usize,
) -> RawRun {
    let seeds: [[u8; 32]; 3] = std::array::from_fn(|_| random32().expect("random"));
    let keys = seeds.map(NodeKey::from_seed);
    let hex = |seed: &[u8; 32]| protocol::ids::hex(seed);
    let bytes: usize = payloads.iter().map(|p| p.len()).sum();
    // Removed once the processes writing in it are stopped (dropped after them).
    let files = tempfile::tempdir().expect("the relay's floor directory");
    let (sink_dir, middle_dir) = (files.path().join("sink"), files.path().join("middle"));
    let (mut sink, sink_addr, sink_key) = RelayChild::spawn(
        &[
            "sink".into(),
            hex(&seeds[2]),
            keys[1].public().to_hex(),
            bytes.to_string(),
        ],
        floor.map(|(work, origin)| (work, origin, sink_dir.as_path())),
    );
    let (_middle, middle_addr, middle_key) = RelayChild::spawn(
        &[
            "middle".into(),
            hex(&seeds[1]),
            keys[0].public().to_hex(),
            sink_addr.to_string(),
            sink_key.to_hex(),
        ],
        floor.map(|(work, origin)| (work, origin, middle_dir.as_path())),
    );
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    tokio.block_on(async {
        let loopback: SocketAddr = "127.0.0.1:0".parse().expect("address");
        let endpoint =
            transport::endpoint(loopback, &keys[0], Arc::new(OnlyKey(None))).expect("source");
        let connection =
            transport::connect(&endpoint, &keys[0], node_id(CITY), middle_addr, middle_key)
                .await
                .expect("source → middle handshake");
        let before = Snapshot::now();
        let mut sends = send_streams(&connection, payloads, window).await;
        let arrived = tokio::task::spawn_blocking(move || sink.done())
            .await
            .expect("sink reader");
        let after = Snapshot::now();
        while let Some(sent) = sends.join_next().await {
            sent.expect("send task");
        }
        assert_eq!(arrived, bytes, "every byte reached the sink");
        connection.close(0u32.into(), b"done");
        let mut usage = Usage::between(before, after, cpus);
        // Three processes: the machine's busy time is the relay's.
        usage.ours = usage.ours.zip(usage.others).map(|(a, b)| a + b);
        usage.others = Some(0.0);
        RawRun {
            bytes,
            usage,
            cpu_s_per_mb: None,
        }
    })
}

// ---------------------------------------------------------------------------------------------
// 1c. The floor of a verified, durable hop

/// What the floor's receiver does with each batch frame it reads, beyond reading it: the
/// least a receiver that verifies and makes durable can do, in steps. Each is a lower bound
/// of a real receiver's work: nothing is indexed, audited or acknowledged, and the sender
/// sends from memory.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FloorWork {
    /// Read the frame and decode it in place (`wire::decode_batch_payload`), as a node does.
    Read,
    /// The batch's hash against its id and the origin's signature, then its bytes written as
    /// a file with the store's own writer (direct IO where the filesystem takes it) and
    /// fsynced: durable before acknowledged. No record is read.
    Durable,
    /// `Durable`, and every record's layout and key read as `Batch::decode_keys` reads them
    /// (canonical integers, keys in strict order; values passed over): less than any check
    /// of the records.
    Keys,
    /// `Durable`, and every record read in place (`Batch::read_each`: every check `decode`
    /// makes, every text's UTF-8 and every credit code, no owned record built).
    InPlace,
    /// `InPlace`, and every record checked against its schema there (`Schema::check_read`):
    /// a receiver's whole verification of a batch, without building its records.
    Checked,
    /// `Durable`, and the verification a node makes today (`sync::decode_content`: the batch
    /// decoded into owned records, each checked against its schema as it is read).
    Decoded,
}

impl FloorWork {
    const ALL: [FloorWork; 6] = [
        FloorWork::Read,
        FloorWork::Durable,
        FloorWork::Keys,
        FloorWork::InPlace,
        FloorWork::Checked,
        FloorWork::Decoded,
    ];

    fn name(self) -> &'static str {
        match self {
            FloorWork::Read => "read",
            FloorWork::Durable => "durable",
            FloorWork::Keys => "keys",
            FloorWork::InPlace => "in-place",
            FloorWork::Checked => "checked",
            FloorWork::Decoded => "decoded",
        }
    }

    fn parse(name: &str) -> Option<FloorWork> {
        FloorWork::ALL.into_iter().find(|work| work.name() == name)
    }

    fn describe(self) -> &'static str {
        match self {
            FloorWork::Read => "read and decode each frame (no work: the limit at these streams)",
            FloorWork::Durable => {
                "+ hash, signature, the bytes written and fsynced (no record read)"
            }
            FloorWork::Keys => "+ every record's layout and key read (decode_keys)",
            FloorWork::InPlace => "+ every record read in place (Batch::read_each)",
            FloorWork::Checked => "+ each checked against its schema there (check_read)",
            FloorWork::Decoded => "durable + today's verification (decode_content)",
        }
    }
}

/// Every record of a batch read in place (`Batch::read_each`), none built.
fn read_in_place(bytes: &[u8]) {
    black_box(Batch::read_each(bytes, |_, record| {
        black_box(record);
    }))
    .expect("reads");
}

/// Every record of a batch read in place and checked there against its schema (looked up
/// once): a receiver's verification of the records without building them.
fn check_in_place(bytes: &[u8]) {
    let registry = Registry::builtin();
    let mut schema = None;
    Batch::read_each(bytes, |header, record| {
        let schema = schema.get_or_insert_with(|| registry.get(&header.category).expect("schema"));
        assert!(schema.check_read(record, header.period).is_empty());
    })
    .expect("reads");
}

/// The floor's receiving end (1c): reads batch frames as a node does and does a step's work
/// on each.
struct FloorReceiver {
    work: FloorWork,
    origin: PublicKey,
    /// Where the batch files go (the caller removes it).
    dir: PathBuf,
    files: FileWriter,
    /// Frames received so far: names the files.
    received: std::sync::atomic::AtomicUsize,
}

impl FloorReceiver {
    fn new(work: FloorWork, origin: PublicKey, dir: PathBuf) -> FloorReceiver {
        FloorReceiver {
            work,
            origin,
            dir,
            files: FileWriter::default(),
            received: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Reads one batch frame from `stream` (its header, then its payload, decoded in place),
    /// lets the stream go (the sender may open the next: at most
    /// [`transport::STREAMS_MAX`] are open at once) and does the step's work on the batch on
    /// a blocking thread; the batch and the frame's length.
    async fn receive(self: Arc<Self>, mut stream: quinn::RecvStream) -> (SignedBatch, usize) {
        let mut header = [0u8; wire::FRAME_HEADER_BYTES];
        stream.read_exact(&mut header).await.expect("frame header");
        let length =
            wire::payload_length(header, wire::BATCH_FRAME_BYTES_MAX).expect("frame length");
        let mut payload = vec![0u8; length];
        stream
            .read_exact(&mut payload)
            .await
            .expect("frame payload");
        drop(stream);
        let Message::Batch(batch) = wire::decode_batch_payload(payload).expect("a batch frame")
        else {
            panic!("not a batch frame");
        };
        let batch = if self.work == FloorWork::Read {
            batch
        } else {
            tokio::task::spawn_blocking(move || {
                self.work_on(&batch);
                batch
            })
            .await
            .expect("floor work")
        };
        (batch, wire::FRAME_HEADER_BYTES + length)
    }

    fn work_on(&self, batch: &SignedBatch) {
        batch
            .verify_hash_and_signature(&self.origin)
            .expect("the bench's batch verifies");
        match self.work {
            FloorWork::Keys => {
                black_box(Batch::decode_keys(&batch.bytes).expect("keys"));
            }
            FloorWork::InPlace => read_in_place(&batch.bytes),
            FloorWork::Checked => check_in_place(&batch.bytes),
            FloorWork::Decoded => {
                black_box(decode_content(batch, Registry::builtin()).expect("verifies"));
            }
            FloorWork::Read | FloorWork::Durable => {}
        }
        let n = self
            .received
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.files
            .write_synced(&self.dir.join(n.to_string()), &batch.bytes)
            .expect("batch file written");
    }
}

/// The batch frames of `frames`, each on a uni stream of its own from one endpoint to the
/// other (at most `window` written at once); the receiver does `work` on each. Timed until
/// the last frame's work is done.
async fn floor_run(
    frames: Vec<Arc<Vec<u8>>>,
    origin: PublicKey,
    work: FloorWork,
    window: usize,
    cpus: usize,
) -> RawRun {
    let (client, server, _endpoints) = raw_pair().await;
    let dir = tempfile::tempdir().expect("floor directory");
    let floor = Arc::new(FloorReceiver::new(work, origin, dir.path().to_owned()));
    let streams = frames.len();
    let expected: usize = frames.iter().map(|f| f.len()).sum();
    let receiver = tokio::spawn(async move {
        let mut reads = JoinSet::new();
        for _ in 0..streams {
            let stream = server.accept_uni().await.expect("accept a uni stream");
            let floor = floor.clone();
            reads.spawn(async move { floor.receive(stream).await.1 });
        }
        let mut total = 0;
        while let Some(read) = reads.join_next().await {
            total += read.expect("read task");
        }
        total
    });
    let before = Snapshot::now();
    let mut sends = send_streams(&client, frames, window).await;
    let bytes = receiver.await.expect("receiver task");
    let after = Snapshot::now();
    while let Some(sent) = sends.join_next().await {
        sent.expect("send task");
    }
    assert_eq!(bytes, expected, "every frame arrived");
    client.close(0u32.into(), b"done");
    RawRun::between(bytes, before, after, cpus)
}

// ---------------------------------------------------------------------------------------------
// 2. Real sync

struct Identities {
    root: tempfile::TempDir,
    topology_path: PathBuf,
    /// The same nodes on other ports, for the one-hop phase.
    hop_topology_path: PathBuf,
    county_key: NodeKey,
    county_public: PublicKey,
    network_key: DesensitizeKey,
    city_key: NodeKey,
}

/// Identities for province, city and county sharing one network key, and two topology files
/// (with a national platform that is never started): the same nodes and keys on different
/// ports, so the one-hop phase's nodes never compete for the chain's addresses (a stopped
/// in-process node may hold its socket a while).
fn make_identities() -> Identities {
    let chain = Chain::create();
    let topology_path = chain.write_topology("topology.toml");
    let hop_topology_path = chain.write_topology("topology-one-hop.toml");
    let Chain {
        root, city, county, ..
    } = chain;
    Identities {
        topology_path,
        hop_topology_path,
        county_public: county.public(),
        county_key: county.key,
        network_key: county.network_key,
        city_key: city.key,
        root,
    }
}

struct Cluster {
    province: Arc<Node>,
    city: Arc<Node>,
    county: Arc<Node>,
}

/// Starts the node in `dir` with `topology`.
async fn start_node(dir: PathBuf, topology: &Path, config: SyncConfig) -> Arc<Node> {
    runtime::start(&dir, topology, config)
        .await
        .unwrap_or_else(|e| panic!("start {}: {e:#}", dir.display()))
}

async fn start_cluster(identities: &Identities, config: SyncConfig) -> Cluster {
    let start = |id: &str| {
        start_node(
            identities.root.path().join(id),
            &identities.topology_path,
            config,
        )
    };
    // Parents first, so the first dial of each uplink finds its parent listening.
    let province = start(PROVINCE).await;
    let city = start(CITY).await;
    let county = start(COUNTY).await;
    Cluster {
        province,
        city,
        county,
    }
}

/// When each batch was first seen at each stage, measured from the first submit (to within
/// [`POLL`]), per batch in submission order.
struct Arrivals {
    city: Vec<Duration>,
    province: Vec<Duration>,
    /// The county holds the province's receipt (relayed down: durable at the province).
    receipt: Vec<Duration>,
}

fn last(times: &[Duration]) -> Duration {
    times.iter().copied().max().unwrap_or_default()
}

/// Polls the stores every [`POLL`] until the city and the province hold every id and the
/// county holds the province's receipt for every id.
async fn watch(cluster: &Cluster, ids: &[BatchId], start: Instant) -> Arrivals {
    let province_id = cluster.province.me;
    let mut seen: [Vec<Option<Duration>>; 3] = std::array::from_fn(|_| vec![None; ids.len()]);
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = start.elapsed();
        for (i, id) in ids.iter().enumerate() {
            for (stage, seen) in seen.iter_mut().enumerate() {
                let held = || match stage {
                    0 => cluster.city.store.holds(id).expect("city store"),
                    1 => cluster.province.store.holds(id).expect("province store"),
                    _ => cluster
                        .county
                        .store
                        .receipt(id, province_id)
                        .expect("county store")
                        .is_some(),
                };
                if seen[i].is_none() && held() {
                    seen[i] = Some(now);
                }
            }
        }
        if seen.iter().flatten().all(Option::is_some) {
            let [city, province, receipt] = seen.map(|stage| stage.into_iter().flatten().collect());
            return Arrivals {
                city,
                province,
                receipt,
            };
        }
        if now > SYNC_TIMEOUT {
            let left = |stage: &Vec<Option<Duration>>| stage.iter().filter(|s| s.is_none()).count();
            panic!(
                "sync stuck after {now:?}: city lacks {}, province lacks {}, county lacks {} province receipts; links: county {:?}, city {:?}",
                left(&seen[0]),
                left(&seen[1]),
                left(&seen[2]),
                cluster.county.links(),
                cluster.city.links()
            );
        }
    }
}

struct SyncRun {
    /// When each submit returned (durable at the county), from the first submit.
    submitted: Vec<Duration>,
    arrivals: Arrivals,
    /// Until the county held every receipt.
    usage: Usage,
}

impl SyncRun {
    /// The sync time: until the province holds every batch.
    fn province_holds(&self) -> Duration {
        last(&self.arrivals.province)
    }
}

/// Submits every batch at the county, one after another, and waits for the province.
async fn sync_once(cluster: &Cluster, batches: Vec<SignedBatch>, cpus: usize) -> SyncRun {
    let ids: Vec<BatchId> = batches.iter().map(|b| b.id).collect();
    let before = Snapshot::now();
    let start = before.at;
    let (submitted, arrivals) = tokio::join!(
        async {
            let mut done = Vec::new();
            for batch in batches {
                assert!(
                    cluster.county.submit(batch).await.expect("submit").new,
                    "every batch is new"
                );
                done.push(start.elapsed());
            }
            done
        },
        watch(cluster, &ids, start)
    );
    let after = Snapshot::now();
    SyncRun {
        submitted,
        arrivals,
        usage: Usage::between(before, after, cpus),
    }
}

/// One hop: the county holds a month's batches before its parent comes up.
struct HopRun {
    /// From the county's link to the city coming up until the city holds every batch.
    usage: Usage,
    /// From the city's start until the link came up (not timed: redial backoff).
    link_up: Duration,
    /// Where the city's received batches spent their time (`Node::receive_times`).
    receiving: runtime::ReceiveTimes,
}

/// Child → parent alone: fresh county and city stores (the same identities, on the ports of
/// the one-hop topology). The county stores every batch
/// first; then the city starts, and the run is timed from the moment the county's link to it
/// is up until the city holds every batch (verified, stored and fsynced: `holds` reads the
/// city's store, written only after its checks, and the receipt waits for the fsync).
async fn one_hop(
    identities: &Identities,
    config: SyncConfig,
    batches: Vec<SignedBatch>,
    cpus: usize,
) -> HopRun {
    let hop = identities.root.path().join("one-hop");
    for id in [CITY, COUNTY] {
        let (from, to) = (identities.root.path().join(id), hop.join(id));
        std::fs::create_dir_all(&to).expect("one-hop node directory");
        for entry in std::fs::read_dir(&from).expect("identity directory") {
            let entry = entry.expect("identity file");
            if entry.file_type().expect("file type").is_file() {
                std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy identity");
            }
        }
    }
    let start = |id: &str| start_node(hop.join(id), &identities.hop_topology_path, config);
    let county = start(COUNTY).await;
    let ids: Vec<BatchId> = batches.iter().map(|b| b.id).collect();
    for batch in batches {
        assert!(
            county.submit(batch).await.expect("submit").new,
            "a new batch"
        );
    }
    let started = Instant::now();
    let city = start(CITY).await;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !county
        .links()
        .iter()
        .any(|l| l.direction == "up" && l.connected)
    {
        assert!(
            started.elapsed() < SYNC_TIMEOUT,
            "the county never reached the city"
        );
        tick.tick().await;
    }
    let link_up = started.elapsed();
    let before = Snapshot::now();
    loop {
        let held = ids
            .iter()
            .filter(|id| city.store.holds(id).expect("city store"))
            .count();
        if held == ids.len() {
            break;
        }
        assert!(
            before.at.elapsed() < SYNC_TIMEOUT,
            "one hop stuck: the city holds {held} of {} batches",
            ids.len()
        );
        tick.tick().await;
    }
    let after = Snapshot::now();
    // Each batch's times are counted just after the core lets it go: the last one's may
    // come a moment after the store holds it.
    while city.receive_times().batches < ids.len() as u64 {
        assert!(
            after.at.elapsed() < SYNC_TIMEOUT,
            "the city never counted its batches' receive times"
        );
        tick.tick().await;
    }
    let receiving = city.receive_times();
    for node in [&county, &city] {
        let _ = tokio::time::timeout(Duration::from_secs(3), runtime::shutdown(node)).await;
    }
    HopRun {
        usage: Usage::between(before, after, cpus),
        link_up,
        receiving,
    }
}

struct SyncPhase {
    runs: Vec<SyncRun>,
    rss_warm: Option<u64>,
    rss_synced: Option<u64>,
    peak: Option<u64>,
}

async fn sync_phase(
    identities: &Identities,
    config: SyncConfig,
    warmup: Vec<SignedBatch>,
    rounds: Vec<Vec<SignedBatch>>,
    cpus: usize,
) -> SyncPhase {
    let cluster = start_cluster(identities, config).await;
    // Warm-up: connections up, first stores written, blocking threads spawned.
    sync_once(&cluster, warmup, cpus).await;
    let rss_warm = rss();
    let mut runs = Vec::new();
    for batches in rounds {
        runs.push(sync_once(&cluster, batches, cpus).await);
    }
    let rss_synced = rss();
    let peak = peak();
    for node in [&cluster.county, &cluster.city, &cluster.province] {
        let _ = tokio::time::timeout(Duration::from_secs(3), runtime::shutdown(node)).await;
    }
    SyncPhase {
        runs,
        rss_warm,
        rss_synced,
        peak,
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Where the time goes

/// Durable writes of every batch into a fresh store.
struct StoreRun {
    /// The record index and audit (`assess`), included in `insert`.
    index: Duration,
    /// The part of `index` a receiver does before the core's lock (`prepare`).
    prepare: Duration,
    /// The most a batch's prepared part held on the heap.
    prepared_bytes: usize,
    insert: Duration,
    sync: Duration,
    total: Duration,
    /// Each `insert_batch`, in order.
    insert_each: Vec<Duration>,
    written: Option<u64>,
    /// Bytes on disk after, and files under `blobs/`.
    on_disk: (u64, usize),
}

struct Offline {
    store_read: Duration,
    frame_encode: Duration,
    frame_decode: Duration,
    verify_incoming: Duration,
    hash_signature: Duration,
    decode: Duration,
    /// The header and keys alone (`Batch::decode_keys`, the ledger's read of held batches).
    decode_keys: Duration,
    /// Every record read in place (`Batch::read_each`), and checked there (`check_read`).
    read_in_place: Duration,
    checked_in_place: Duration,
    /// The canonical check `Batch::decode` made before it read the records by hand (which
    /// refuses non-minimal forms as it reads): the whole encoding's length counted.
    canonical: Duration,
    /// The same check by encoding and comparing (`Batch::encodes_to`), what it replaced.
    reencode: Duration,
    /// One transaction and one fsync per batch, as a receiving node does.
    each: StoreRun,
    /// Every batch, then one fsync.
    group: StoreRun,
    /// As `each`, with the record index and audit a receiving node writes with the batch.
    indexed: StoreRun,
    /// The disk's limit: the batches' bytes written as fresh files and fsynced one by one,
    /// through the page cache and with direct IO (`node::store::file`).
    files_buffered: Duration,
    files_direct: Duration,
    usage: Usage,
}

/// Total size of the files under `dir` and how many files `dir/blobs` holds.
fn dir_size(dir: &Path) -> (u64, usize) {
    let blobs = std::fs::read_dir(dir.join("blobs")).map_or(0, |d| d.count());
    (du(dir).1, blobs)
}

fn offline_costs(
    batches: &[SignedBatch],
    county: PublicKey,
    city_key: &NodeKey,
    dir: &Path,
    cpus: usize,
) -> Offline {
    let before = Snapshot::now();
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
    // What the ledger reads of each held batch (its keys), for every report and scrape.
    let decode_keys = median(OFFLINE_ITERS, || {
        batches
            .iter()
            .map(|b| Batch::decode_keys(&b.bytes).expect("decodes"))
            .collect::<Vec<_>>()
    });
    let read_in_place = median(OFFLINE_ITERS, || {
        batches.iter().for_each(|b| self::read_in_place(&b.bytes));
    });
    let checked_in_place = median(OFFLINE_ITERS, || {
        batches.iter().for_each(|b| check_in_place(&b.bytes));
    });
    let decoded: Vec<Batch> = batches
        .iter()
        .map(|b| verify_incoming(b, origin_key, registry).expect("batch verifies"))
        .collect();
    // Batch::decode reads the records by hand, refusing any non-minimal form as it reads,
    // and counts only the header's length. The checks it made before, for comparison: the
    // whole encoding's length counted, and before that the check by encoding.
    let canonical = median(OFFLINE_ITERS, || {
        decoded
            .iter()
            .zip(batches)
            .all(|(batch, signed)| batch.canonical_len() == signed.bytes.len())
    });
    let reencode = median(OFFLINE_ITERS, || {
        decoded
            .iter()
            .zip(batches)
            .all(|(batch, signed)| batch.encodes_to(&signed.bytes))
    });
    // The sender makes the frame of the batch it read from its store (its head; the bytes go
    // to QUIC as they are, `wire::batch_frame_parts`).
    let frame_encode = {
        let mut times = Vec::new();
        for _ in 0..OFFLINE_ITERS {
            let read: Vec<SignedBatch> = batches.to_vec();
            let start = Instant::now();
            let parts: Vec<[Vec<u8>; 3]> = read
                .into_iter()
                .map(|b| wire::batch_frame_parts(b, None))
                .collect();
            times.push(start.elapsed());
            drop(black_box(parts));
        }
        times.sort_unstable();
        times[times.len() / 2]
    };
    // The receiver decodes each frame's payload in place (`wire::decode_batch_payload`).
    let payloads: Vec<Vec<u8>> = batches
        .iter()
        .map(|b| Message::Batch(b.clone()).encode()[wire::FRAME_HEADER_BYTES..].to_vec())
        .collect();
    let frame_decode = {
        let mut times = Vec::new();
        for _ in 0..OFFLINE_ITERS {
            let read = payloads.clone();
            let start = Instant::now();
            let decoded: Vec<Message> = read
                .into_iter()
                .map(|p| wire::decode_batch_payload(p).expect("frame decodes"))
                .collect();
            times.push(start.elapsed());
            drop(black_box(decoded));
        }
        times.sort_unstable();
        times[times.len() / 2]
    };
    drop(payloads);

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
    let store_run = |path: PathBuf, sync_each: bool, indexed: bool| -> StoreRun {
        let store = Store::open(&path).expect("open store");
        store.sync().expect("sync");
        let written_before = written();
        let (mut insert, mut sync) = (Duration::ZERO, Duration::ZERO);
        let mut insert_each = Vec::new();
        let (mut index, mut prepare) = (Duration::ZERO, Duration::ZERO);
        let mut prepared_bytes = 0;
        let contents: Vec<protocol::Content> = decoded
            .iter()
            .cloned()
            .map(protocol::Content::Data)
            .collect();
        for i in 0..batches.len() {
            let start = Instant::now();
            let update = indexed.then(|| {
                let prepared = node::core::prepare_received(registry, batches[i].id, &decoded[i]);
                prepare += start.elapsed();
                prepared_bytes = prepared
                    .as_ref()
                    .map_or(0, |p| p.heap_bytes())
                    .max(prepared_bytes);
                node::core::assess_received(
                    &store,
                    registry,
                    city_id,
                    batches[i].id,
                    &decoded[i],
                    prepared,
                )
                .expect("record index and audit")
            });
            index += start.elapsed();
            let new = store
                .insert_batch(
                    &batches[i],
                    &contents[i],
                    county_id,
                    &receipts[i],
                    None,
                    &[province_id],
                    update.as_ref(),
                    runtime::wall_ms(),
                )
                .expect("insert");
            assert!(new, "a fresh store holds no batch");
            let inserted = start.elapsed();
            insert += inserted;
            insert_each.push(inserted);
            if sync_each || i + 1 == batches.len() {
                let start = Instant::now();
                store.sync().expect("sync");
                sync += start.elapsed();
            }
        }
        let written = written().zip(written_before).map(|(a, b)| a - b);
        drop(store);
        StoreRun {
            index,
            prepare,
            prepared_bytes,
            insert,
            sync,
            total: insert + sync,
            insert_each,
            written,
            on_disk: dir_size(&path),
        }
    };
    let median_run = |sync_each: bool, indexed: bool, name: &str| -> StoreRun {
        let mut runs: Vec<StoreRun> = (0..OFFLINE_ITERS)
            .map(|i| store_run(dir.join(format!("{name}-{i}")), sync_each, indexed))
            .collect();
        runs.sort_unstable_by_key(|r| r.total);
        runs.swap_remove(runs.len() / 2)
    };
    // The disk alone: each batch's bytes as a fresh file, fsynced, as the store writes it
    // (without the rename and the directory's fsync).
    let files = |writer: &FileWriter, name: &str| {
        let mut round = 0;
        median(OFFLINE_ITERS, || {
            round += 1;
            let files = dir.join(format!("{name}-{round}"));
            std::fs::create_dir_all(&files).expect("files dir");
            for (n, b) in batches.iter().enumerate() {
                writer
                    .write_synced(&files.join(n.to_string()), &b.bytes)
                    .expect("file written");
            }
        })
    };
    let files_buffered = files(&FileWriter::buffered(), "buffered");
    let direct = FileWriter::default();
    let files_direct = files(&direct, "direct");
    if !direct.direct() {
        println!("(the bench's directory refuses direct IO: its files were written buffered)");
    }
    let each = median_run(true, false, "each");
    let group = median_run(false, false, "group");
    let indexed = median_run(true, true, "indexed");

    // What a sender does first: read the batch back (re-hashed against its id).
    let store = Store::open(&dir.join("each-0")).expect("open store");
    let store_read = median(OFFLINE_ITERS, || {
        batches
            .iter()
            .map(|b| store.batch(&b.id).expect("read").expect("held"))
            .collect::<Vec<SignedBatch>>()
    });
    drop(store);

    Offline {
        store_read,
        frame_encode,
        frame_decode,
        verify_incoming: verify_incoming_time,
        hash_signature,
        decode,
        decode_keys,
        read_in_place,
        checked_in_place,
        canonical,
        reencode,
        each,
        group,
        indexed,
        files_buffered,
        files_direct,
        usage: Usage::between(before, Snapshot::now(), cpus),
    }
}

// ---------------------------------------------------------------------------------------------

/// The floor's summary line for the hop or the chain: each step's rate in % of `limit`, and
/// ours in % of the floor of today's verification.
fn print_floor(
    what: &str,
    runs: &[(FloorWork, RawRun)],
    limit: f64,
    limit_name: &str,
    ours: f64,
    ours_name: &str,
) {
    let of = |step: FloorWork| {
        runs.iter()
            .find(|(work, _)| *work == step)
            .map_or(0.0, |(_, run)| run.mb_per_s())
    };
    let pct = |step: FloorWork| 100.0 * of(step) / limit;
    println!(
        "the floor of a verified, durable {what} (1c), in % of {limit_name}: {:.1} with no record read, {:.1} with every key read, {:.1} with every record checked in place, {:.1} verified as today; the {ours_name} is {:.1} % of the last",
        pct(FloorWork::Durable),
        pct(FloorWork::Keys),
        pct(FloorWork::Checked),
        pct(FloorWork::Decoded),
        100.0 * ours / of(FloorWork::Decoded).max(f64::MIN_POSITIVE),
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == RELAY_ARG) {
        relay_process(&args[at + 1..]);
        return;
    }
    // cargo passes `--bench` and maybe a filter: every other argument is ignored.
    init_logs();
    let raw_mib = env_usize("BENCH_MB", DEFAULT_RAW_MIB);
    let records = env_usize("BENCH_RECORDS", DEFAULT_RECORDS);
    let per_batch = env_usize("BENCH_BATCH_RECORDS", DEFAULT_BATCH_RECORDS).min(BATCH_RECORDS_MAX);
    let sync_runs = env_usize("BENCH_SYNC_RUNS", DEFAULT_SYNC_RUNS).min(12);
    let config = SyncConfig {
        window: env_usize("BENCH_WINDOW", SyncConfig::default().window),
        ..SyncConfig::default()
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rss_start = rss();

    // Batches, outside every timing: a warm-up batch, then one month of records per run.
    let identities = make_identities();
    let county_id = node_id(COUNTY);
    let build = |period: &str, rows: usize, seed: u64| {
        build_batches(
            county_id,
            period,
            rows,
            per_batch,
            seed,
            &identities.county_key,
            &identities.network_key,
        )
    };
    let warmup = build("2021-12", 1_000, SEED - 1);
    let rounds: Vec<Vec<SignedBatch>> = (0..sync_runs)
        .map(|run| build(&format!("2022-{:02}", run + 1), records, SEED + run as u64))
        .collect();
    let batch_count = rounds[0].len();
    let batch_bytes: usize = rounds[0].iter().map(|b| b.bytes.len()).sum();
    let rss_built = rss();

    // 4. Offline costs, one thread, before any node runs.
    let offline_dir = tempfile::tempdir().expect("temp dir");
    let offline = offline_costs(
        &rounds[0],
        identities.county_public,
        &identities.city_key,
        offline_dir.path(),
        cpus,
    );
    drop(offline_dir);

    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    // 2. Sync first, on a heap not yet grown by raw quinn's buffers.
    let peak_resets = reset_peak();
    let rss_before_sync = rss();
    let one_hop_run = tokio.block_on(one_hop(&identities, config, rounds[0].clone(), cpus));
    let sync = tokio.block_on(sync_phase(&identities, config, warmup, rounds, cpus));
    let rss_after_sync = rss();

    // 1. Raw quinn, twice.
    let streams = (raw_mib * 1024 * 1024).div_ceil(STREAM_BYTES).max(1);
    let payload: Arc<Vec<u8>> = Arc::new({
        let mut rng = sample::Rng::new(SEED);
        (0..STREAM_BYTES / 8)
            .flat_map(|_| rng.next_u64().to_le_bytes())
            .collect()
    });
    reset_peak();
    let raw_runs: Vec<RawRun> = (0..2)
        .map(|_| tokio.block_on(raw_run(streams, payload.clone(), config.window, cpus)))
        .collect();
    let raw_peak = peak();
    let rss_after_raw = rss();
    // 1c. The floor: the first run's batches again (built as before: the same bytes), as
    // frames, about as many bytes as raw quinn's; each step twice, the faster counts.
    let floor_frames: Vec<Arc<Vec<u8>>> = build("2022-01", records, SEED)
        .into_iter()
        .map(|b| Arc::new(Message::Batch(b).encode()))
        .collect();
    let floor_repeat = (raw_mib * 1024 * 1024).div_ceil(batch_bytes.max(1)).max(1);
    let floor_streams: Vec<Arc<Vec<u8>>> = (0..floor_repeat)
        .flat_map(|_| floor_frames.iter().cloned())
        .collect();
    let best = |runs: Vec<RawRun>| {
        runs.into_iter()
            .max_by(|a, b| a.mb_per_s().total_cmp(&b.mb_per_s()))
            .expect("two runs")
    };
    let floor_runs: Vec<(FloorWork, RawRun)> = FloorWork::ALL
        .iter()
        .map(|&work| {
            let runs = (0..2)
                .map(|_| {
                    tokio.block_on(floor_run(
                        floor_streams.clone(),
                        identities.county_public,
                        work,
                        config.window,
                        cpus,
                    ))
                })
                .collect();
            (work, best(runs))
        })
        .collect();
    drop(floor_frames);
    drop(tokio);
    let raw = raw_runs
        .iter()
        .max_by(|a, b| a.mb_per_s().total_cmp(&b.mb_per_s()))
        .expect("two raw runs");
    let raw_rate = raw.mb_per_s();
    // 1b. The same bytes through three processes, forwarded whole at the middle, twice.
    let relay_runs: Vec<RawRun> = (0..2)
        .map(|_| raw_relay(vec![payload.clone(); streams], None, config.window, cpus))
        .collect();
    let relay_rate = relay_runs.iter().map(RawRun::mb_per_s).fold(0.0, f64::max);
    // 1c. The floor of the chain: the same frames through the same three processes, each
    // step's work done at the middle and at the sink.
    let floor_relays: Vec<(FloorWork, RawRun)> = FloorWork::ALL
        .iter()
        .map(|&work| {
            let runs = (0..2)
                .map(|_| {
                    raw_relay(
                        floor_streams.clone(),
                        Some((work, identities.county_public)),
                        config.window,
                        cpus,
                    )
                })
                .collect();
            (work, best(runs))
        })
        .collect();
    drop(floor_streams);

    // Report.
    let data_mb = batch_bytes as f64 / MB;
    let rate = |time: Duration| data_mb / time.as_secs_f64();
    println!();
    println!(
        "sync bench: {cpus} CPU(s); MB = 10^6 bytes; CPU = ours/other processes/I/O wait, in % of one core"
    );
    println!();
    println!(
        "1. raw quinn: 1 connection, node TLS and transport config, {streams} uni streams x 16 MiB, <= {} written at once, read_to_end",
        config.window
    );
    println!(
        "{:<10} {:>9} {:>9} {:>9} {:>14} {:>10}",
        "", "MB", "ms", "MB/s", "CPU", "UDP drops"
    );
    print_raw_runs(&raw_runs);

    println!();
    println!(
        "1b. raw quinn relay through 3 processes (this → middle → sink, each a process with the node TLS): {streams} uni streams x 16 MiB, <= {} written at once; the middle reads each stream whole and forwards it on a stream of its own; CPU = all 3 processes",
        config.window
    );
    print_raw_runs(&relay_runs);

    println!();
    println!(
        "1c. the floor of a verified, durable hop: the one hop's {batch_count} batch frames x {floor_repeat} from memory, each on a uni stream (<= {} written at once); one hop between two endpoints as in 1, the chain through three processes as in 1b; each receiver reads each frame as a node does and does the step's work on a blocking thread (the middle then frames it again and forwards it); nothing indexed, audited or acknowledged; the faster of two runs each",
        config.window
    );
    println!(
        "{:<70} {:>8} {:>10} {:>10} {:>9} {:>10} {:>10}",
        "", "hop MB/s", "of raw", "CPU ms/MB", "chain MB/s", "of relay", "CPU ms/MB"
    );
    for ((work, hop), (_, chain)) in floor_runs.iter().zip(&floor_relays) {
        let cpu = |run: &RawRun| {
            run.cpu_s_per_mb
                .map_or_else(|| "?".to_owned(), |s| format!("{:.2}", 1000.0 * s))
        };
        // The relay's CPU is the machine's busy time (three processes), in % of one core.
        let chain_cpu = chain.usage.ours.map_or_else(
            || "?".to_owned(),
            |pct| format!("{:.2}", 10.0 * pct / chain.mb_per_s()),
        );
        println!(
            "{:<70} {:>8.1} {:>9.1}% {:>10} {:>10.1} {:>9.1}% {:>10}",
            work.describe(),
            hop.mb_per_s(),
            100.0 * hop.mb_per_s() / raw_rate,
            cpu(hop),
            chain.mb_per_s(),
            100.0 * chain.mb_per_s() / relay_rate,
            chain_cpu,
        );
    }

    println!();
    let hop_rate = data_mb / one_hop_run.usage.wall.as_secs_f64();
    println!(
        "2a. one hop county → city: {} records in {batch_count} batches ({data_mb:.1} MB) stored at the county before the city starts; the link came up {:.0} ms after the city's start (redial backoff, not timed); from link up until the city holds all: {:.0} ms, {} records/s, {hop_rate:.1} MB/s = {:.1} % of raw quinn; CPU {}, UDP drops {}",
        grouped(records as f64),
        ms(one_hop_run.link_up),
        ms(one_hop_run.usage.wall),
        grouped(records as f64 / one_hop_run.usage.wall.as_secs_f64()),
        100.0 * hop_rate / raw_rate,
        one_hop_run.usage.cpu(),
        one_hop_run.usage.drops()
    );
    let times = one_hop_run.receiving;
    let per = |d: Duration| ms(d) / times.batches.max(1) as f64;
    println!(
        "   the city's {} batches received, each on average: checked {:.1} ms before the core's lock, waited {:.1} ms (a turn, the lock), held by the core {:.1} ms (longest {:.1}); the core held them {:.0} ms of the hop's {:.0} ({:.0} %): it takes one batch at a time",
        times.batches,
        per(times.check),
        per(times.wait),
        per(times.core),
        ms(times.core_max),
        ms(times.core),
        ms(one_hop_run.usage.wall),
        100.0 * times.core.as_secs_f64() / one_hop_run.usage.wall.as_secs_f64(),
    );

    println!();
    println!(
        "2. sync county → city → province: {sync_runs} runs of {} water_fee records in {batch_count} batches of <= {} ({data_mb:.1} MB, {} bytes/record), window {}",
        grouped(records as f64),
        grouped(per_batch as f64),
        batch_bytes / records.max(1),
        config.window
    );
    println!(
        "   ms from the first submit until: the county has stored all (submit returned), the city holds all, the province holds all, the county holds the province's receipts"
    );
    println!(
        "{:<10} {:>8} {:>8} {:>9} {:>9} {:>11} {:>8} {:>7} {:>14} {:>6} {:>9}",
        "",
        "county",
        "city",
        "province",
        "receipts",
        "records/s",
        "MB/s",
        "of relay",
        "CPU",
        "drops",
        "written"
    );
    for (i, run) in sync.runs.iter().enumerate() {
        let province = run.province_holds();
        println!(
            "{:<10} {:>8.0} {:>8.0} {:>9.0} {:>9.0} {:>11} {:>8.1} {:>6.1}% {:>14} {:>6} {:>9}",
            format!("run {}", i + 1),
            ms(last(&run.submitted)),
            ms(last(&run.arrivals.city)),
            ms(province),
            ms(last(&run.arrivals.receipt)),
            grouped(records as f64 / province.as_secs_f64()),
            rate(province),
            100.0 * rate(province) / relay_rate,
            run.usage.cpu(),
            run.usage.drops(),
            run.usage.written.map_or_else(
                || "?".to_owned(),
                |w| format!("{:.1}x", w as f64 / (3.0 * batch_bytes as f64))
            )
        );
    }
    let mut by_time: Vec<&SyncRun> = sync.runs.iter().collect();
    by_time.sort_unstable_by_key(|r| r.province_holds());
    let median_run = by_time[by_time.len() / 2];
    let sync_time = median_run.province_holds();
    println!("   (written: bytes the three stores passed to write(), over 3x the batch bytes)");
    // Per batch in the median run: how long each step took (arrivals to within 5 ms).
    let submit_each: Vec<Duration> = median_run
        .submitted
        .iter()
        .scan(Duration::ZERO, |previous, &at| {
            let took = at - *previous;
            *previous = at;
            Some(took)
        })
        .collect();
    let hop = |from: &[Duration], to: &[Duration]| -> Vec<Duration> {
        from.iter()
            .zip(to)
            .map(|(a, b)| b.saturating_sub(*a))
            .collect()
    };
    let spread = |mut times: Vec<Duration>| {
        times.sort_unstable();
        format!(
            "{:>7.0} {:>7.0} {:>7.0}",
            ms(times[0]),
            ms(times[times.len() / 2]),
            ms(times[times.len() - 1])
        )
    };
    println!("   per batch in the median run (ms)              min  median     max");
    let arrivals = &median_run.arrivals;
    for (name, times) in [
        ("county submit, one after another", submit_each),
        (
            "county stored → city holds",
            hop(&median_run.submitted, &arrivals.city),
        ),
        (
            "city holds → province holds",
            hop(&arrivals.city, &arrivals.province),
        ),
        (
            "province holds → its receipt at the county",
            hop(&arrivals.province, &arrivals.receipt),
        ),
    ] {
        println!("   {name:<44} {}", spread(times));
    }

    println!();
    println!(
        "3. memory (RSS): {} at start, {} with batches built; {} before the nodes, {} nodes up and warm, {} after the sync runs, {} nodes stopped; {} after raw quinn",
        mem(rss_start),
        mem(rss_built),
        mem(rss_before_sync),
        mem(sync.rss_warm),
        mem(sync.rss_synced),
        mem(rss_after_sync),
        mem(rss_after_raw),
    );
    if peak_resets {
        println!(
            "   peak RSS (VmHWM): sync phase {}, raw quinn phase {}",
            mem(sync.peak),
            mem(raw_peak)
        );
    } else {
        println!(
            "   peak RSS (VmHWM) of the whole run (the kernel refused a reset between phases): {}",
            mem(peak())
        );
    }

    println!();
    println!(
        "4. where the time goes: one thread, outside the network, one run's {batch_count} batches ({data_mb:.1} MB), median of {OFFLINE_ITERS}; CPU meanwhile {}",
        offline.usage.cpu()
    );
    println!("{:<46} {:>9} {:>11} {:>9}", "", "ms", "records/s", "MB/s");
    let line = |name: &str, time: Duration| {
        println!(
            "{:<46} {:>9.1} {:>11} {:>9.1}",
            name,
            ms(time),
            grouped(records as f64 / time.as_secs_f64()),
            rate(time)
        );
    };
    line("sender: Store::batch (read + rehash)", offline.store_read);
    line("sender: frame encode", offline.frame_encode);
    line("receiver: frame decode", offline.frame_decode);
    line("receiver: verify_incoming", offline.verify_incoming);
    line("  hash + signature", offline.hash_signature);
    line("  Batch::decode", offline.decode);
    line(
        "    (the check by counting, before 2026-12-03)",
        offline.canonical,
    );
    line("    (the check by encoding, before that)", offline.reencode);
    line(
        "  (keys alone: decode_keys, for the ledger)",
        offline.decode_keys,
    );
    line(
        "  (read in place: Batch::read_each, no record built)",
        offline.read_in_place,
    );
    line(
        "  (read in place and checked: + check_read)",
        offline.checked_in_place,
    );
    line(
        "  check_record etc. (the rest)",
        offline
            .verify_incoming
            .saturating_sub(offline.hash_signature + offline.decode),
    );
    line(
        "disk: the bytes as files, fsync each, buffered",
        offline.files_buffered,
    );
    line("disk: the same with direct IO", offline.files_direct);
    line("receiver: Store::insert_batch", offline.each.insert);
    line("receiver: Store::sync after each", offline.each.sync);
    line(
        "receiver: insert + sync each (no index)",
        offline.each.total,
    );
    line(
        "receiver: insert all + one sync (group)",
        offline.group.total,
    );
    line(
        "receiver: + record index and audit, fsync each",
        offline.indexed.total,
    );
    line(
        "  of which record index and audit (assess)",
        offline.indexed.index,
    );
    line(
        "    of which before the core's lock (prepare)",
        offline.indexed.prepare,
    );
    println!(
        "prepared before the core's lock: at most {:.1} MB a batch (of <= {} records; {:.1} MB of batches in all)",
        offline.indexed.prepared_bytes as f64 / MB,
        grouped(per_batch as f64),
        data_mb,
    );
    println!(
        "insert_batch per batch, in order (ms): {}",
        offline
            .each
            .insert_each
            .iter()
            .map(|t| format!("{:.0}", ms(*t)))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let amplification = |run: &StoreRun| {
        run.written.map_or_else(
            || "?".to_owned(),
            |w| {
                format!(
                    "{:.1} MB written ({:.1}x)",
                    w as f64 / MB,
                    w as f64 / batch_bytes as f64
                )
            },
        )
    };
    println!(
        "store writes: one fsync per batch {}, group commit {}; on disk after: {:.1} MB, {} files under blobs/",
        amplification(&offline.each),
        amplification(&offline.group),
        offline.each.on_disk.0 as f64 / MB,
        offline.each.on_disk.1,
    );

    // A budget for one hop, each stage alone at full speed, against what the run took.
    let network = Duration::from_secs_f64(data_mb / raw_rate);
    let sender = offline.store_read + offline.frame_encode;
    let receive_cpu = offline.frame_decode + offline.verify_incoming;
    let stages = [
        ("network at raw quinn speed", network),
        ("sender read + encode", sender),
        ("receiver decode + verify", receive_cpu),
        ("receiver insert + fsync", offline.each.total),
        (
            "receiver index, audit, insert + fsync",
            offline.indexed.total,
        ),
    ];
    println!();
    println!(
        "one hop, each stage alone (ms): {}",
        stages
            .iter()
            .map(|(name, time)| format!("{name} {:.0}", ms(*time)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    // Work the whole run needs: three stores, two hops, QUIC at both ends of each hop.
    let cpu_work = (offline.verify_incoming + offline.indexed.insert) * 3
        + (sender + offline.frame_decode) * 2
        + raw.cpu_s_per_mb.map_or(Duration::ZERO, |s| {
            Duration::from_secs_f64(s * data_mb * 2.0)
        });
    println!(
        "CPU work of a sync run (3x verify + index, audit and insert, 2x send/receive + QUIC) ~{:.0} ms: >= {:.0} ms on {cpus} idle CPU(s); fsyncs 3x {:.0} ms",
        ms(cpu_work),
        ms(cpu_work) / cpus as f64,
        ms(offline.each.sync)
    );
    // The CPU the one-hop target leaves: quinn's own CPU at 60 % of its rate comes off the
    // machine's cores first; what is left, per MB, is what the rest of a hop may cost.
    if let Some(quinn_s_per_mb) = raw.cpu_s_per_mb {
        let target = 0.6 * raw_rate;
        let quinn_cores = target * quinn_s_per_mb;
        let left_ms_per_mb = 1000.0 * (cpus as f64 - quinn_cores).max(0.0) / target;
        let hop_ms_per_mb =
            ms(sender + offline.frame_decode + offline.verify_incoming + offline.indexed.total)
                / data_mb;
        println!(
            "CPU budget of the one-hop target ({target:.0} MB/s): quinn itself takes {quinn_cores:.2} of the {cpus} cores ({:.2} ms a MB at both ends), leaving {left_ms_per_mb:.2} ms of CPU a MB for the rest; the hop's stages take {hop_ms_per_mb:.2} ms a MB ({:.1}x the budget): verify {:.2}, index and audit {:.2}, the insert with the index's writes + fsync {:.2}, sending {:.2}",
            1000.0 * quinn_s_per_mb,
            hop_ms_per_mb / left_ms_per_mb,
            ms(offline.frame_decode + offline.verify_incoming) / data_mb,
            ms(offline.indexed.index) / data_mb,
            ms(offline.indexed.total.saturating_sub(offline.indexed.index)) / data_mb,
            ms(sender) / data_mb,
        );
        // What the hop took as it ran, beside what its stages and quinn take alone.
        let usage = &one_hop_run.usage;
        if let (Some(user), Some(system), Some(faults)) = (usage.user, usage.system, usage.faults) {
            let ran_ms_per_mb = ms(user + system) / data_mb;
            let alone_ms_per_mb = hop_ms_per_mb + 1000.0 * quinn_s_per_mb;
            println!(
                "CPU of the one hop as it ran: {ran_ms_per_mb:.2} ms a MB (user {:.2}, system {:.2}; {:.0} page faults a MB) against {alone_ms_per_mb:.2} for its stages alone and quinn: {:.2} ms a MB more when they run together (the kernel beyond quinn's share, page faults, threads sharing {cpus} cores)",
                ms(user) / data_mb,
                ms(system) / data_mb,
                faults as f64 / data_mb,
                ran_ms_per_mb - alone_ms_per_mb,
            );
        }
    }
    println!(
        "one hop (county → city, from link up until the city holds all): {} records/s, {hop_rate:.1} MB/s = {:.1} % of raw quinn {raw_rate:.1} MB/s (target >= 60 %)",
        grouped(records as f64 / one_hop_run.usage.wall.as_secs_f64()),
        100.0 * hop_rate / raw_rate,
    );
    print_floor(
        "hop",
        &floor_runs,
        raw_rate,
        "raw quinn",
        hop_rate,
        "one hop",
    );
    println!(
        "sync county → city → province (median run, until the province holds all): {} records/s, {:.1} MB/s = {:.1} % of the raw quinn relay through 3 processes {relay_rate:.1} MB/s (target >= 60 %); {:.1} % of raw quinn over one connection",
        grouped(records as f64 / sync_time.as_secs_f64()),
        rate(sync_time),
        100.0 * rate(sync_time) / relay_rate,
        100.0 * rate(sync_time) / raw_rate,
    );
    print_floor(
        "chain",
        &floor_relays,
        relay_rate,
        "the relay",
        rate(sync_time),
        "chain",
    );
}
