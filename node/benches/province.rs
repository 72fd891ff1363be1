//! A provincial node at scale, in a process of its own: its memory holding a year of a
//! province, reconciling with its parent, and its throughput receiving a month of
//! Guangdong's fee data from its 21 cities.
//!
//! Each node measured runs in a **child process** (this benchmark re-executed with
//! [`CHILD_ARG`]): the real runtime (`runtime::start_with`: QUIC on 127.0.0.1, the core,
//! the syncer, the timer) on a real sled store, driven by one-line commands on its stdin.
//! Its memory is read from `/proc/<pid>/status` (VmRSS; VmHWM, reset by the child through
//! `/proc/self/clear_refs` at the start of each phase), so the builder's memory stays out of
//! the figures.
//!
//! **A. A node holding a year** (`BENCH_RECORDS`, default [`DEFAULT_RECORDS`]; the issue's
//! figure is 10,000,000 ≈ 200 batches a day for a year of a province). The store of the
//! province 440000 is built first: `BENCH_RECORDS / BENCH_BATCH_RECORDS` (137) real signed
//! data batches of 2025, spread evenly over the 124 Guangdong reporters (122 counties and
//! the two cities without counties, under their cities), the three fee categories and the
//! 12 months. Records are the sample generator's (through `ingest`, a few per category and
//! month) cloned with an account number of their own and the record key that gives, so
//! every batch passes `verify_incoming` (checked on the first batch of each category).
//! Each batch is stored as the province stores what a city forwarded:
//! `core::assess_received` (the record index and the audit's feedback items, as a receiver
//! makes them) and `Store::insert_batch` with it, the city's first receipt and the province's own, queued
//! for the national platform; then the national platform's receipt (`Store::insert_receipt`,
//! which empties the outbox). This is what `Core` does on a batch from a child, without the
//! link, the signature check and the checks of the first arrival. No manifests.
//!
//! The parent's store is a copy of the province's taken before [`LOST`] batches (spread over
//! the year) were stored: the national platform "lost" them, while the province holds its
//! receipts for them. Run: the province starts alone (its parent down); its RSS is polled
//! until stable (**at rest**). Then the national platform starts on the copy: the
//! province's uplink comes up and reconciles the batches of every year held (the core does
//! that on every link-up), finds the lost batches and sends them again until they are
//! receipted (**link-up reconciliation**). Then `Node::reconcile` (batches and receipts,
//! every year) runs on demand (**full reconciliation**). Each phase: its time, the
//! province's RSS sampled every 50 ms and its peak (VmHWM), beside the 256 MiB target.
//!
//! **B. A month of fee data** (`BENCH_MONTH_RECORDS`, default 1/20 of 24,000,000): the
//! month's records split evenly over the 124 reporters × 3 fee categories, each report in
//! batches of at most `BENCH_MONTH_BATCH_RECORDS` (10,000). Each batch is signed by its
//! reporter and stored beforehand in its city's store as the city stores a county's batch
//! (first receipt the city's, queued for the province; no record index at the city — it
//! plays no part in forwarding). The province starts on an empty store in a child process;
//! then the 21 city nodes start in this process: each dials the province and offers its
//! outbox. Timed from the cities' start until the province's store holds every batch (the
//! child polls `Store::holds` every 10 ms): wall time, records/s, the province's peak RSS
//! and CPU; and, labelled as such, the full month extrapolated at the measured rate.
//!
//! Stores go under `/dev/shm` (each batch file costs two `fsync`s: on a disk that, not the
//! node, would be timed) unless `BENCH_DIR` names another directory; part A's parent's
//! copy goes under `BENCH_PARENT_DIR` (default the system's temporary directory, a disk:
//! it is written once, and at full scale the province's store alone takes ~9 GiB of
//! memory under `/dev/shm`). `BENCH_STORE=DIR` keeps part A's stores in `DIR` and a later
//! run with the same `DIR` (and scale) reuses them (the parent's is copied afresh each
//! run, as the run gives it the lost batches). `BENCH_PARTS=a`, `b` or `a,b` (default).
//! `RUST_LOG` turns on the nodes' logs (stderr). `BENCH_CHILD_WRAP="heaptrack -o FILE"` runs
//! each node's process under that command (its figures are then the wrapped node's).
//!
//! Run: `cargo bench -p credit-node --bench province`. Under `cargo test` (no `--bench`
//! argument) it does nothing.

#![allow(clippy::print_stdout)]

mod common;

use common::{du, env_usize, fresh_header, grouped, init_logs};

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use node::core::CoreConfig;
use node::core::reconcile;
use node::ingest::{Encoding, IngestOptions, ingest_bytes};
use node::runtime::{self, Blocking, Seams, Socket, SystemClock};
use node::store::{SledKv, Store};
use node::transport::TransportSeams;
use protocol::record::Value;
use protocol::sync::verify_incoming;
use protocol::wire::{Receipt, SignedReceipt, Verdict};
use protocol::{
    Batch, BatchId, Category, Content, DesensitizeKey, NodeId, NodeKey, Period, Record, RecordKey,
    Registry, Schema, SignedBatch,
};
use topology::admission::days_from_civil;
use topology::{Role, Topology};

/// The argument that makes this binary a node: `CHILD_ARG store-dir topology-file node-id`.
const CHILD_ARG: &str = "--province-bench-node";
/// A command line to run each node's process under (e.g. `heaptrack -o /tmp/province`): the
/// node runs as `WRAPPER... <this binary> CHILD_ARG ...`.
const WRAP_ENV: &str = "BENCH_CHILD_WRAP";
/// The issue's figures: a year of a province, a month of Guangdong's fee data.
const FULL_RECORDS: usize = 10_000_000;
const FULL_MONTH_RECORDS: usize = 24_000_000;
/// The scale run by default (see the report for why).
const DEFAULT_RECORDS: usize = 2_000_000;
const DEFAULT_MONTH_RECORDS: usize = FULL_MONTH_RECORDS / 20;
/// Records per batch of the year: 10M records in ~73,000 batches (200 a day).
const BATCH_RECORDS: usize = 137;
const MONTH_BATCH_RECORDS: usize = 10_000;
/// Batches the parent lacks.
const LOST: usize = 10;
const YEAR: u16 = 2025;
/// The month of part B.
const MONTH: u8 = 6;
const CATEGORIES: [&str; 3] = ["water_fee", "gas_fee", "electricity_fee"];
/// Sample records per category and month, cloned into every batch.
const TEMPLATES: usize = 64;
const RSS_LIMIT_MIB: f64 = 256.0;
/// Items signed ahead of the store's writer.
const QUEUE: usize = 1024;
/// Batches stored between two syncs of the builder's store.
const SYNC_EVERY: usize = 2048;
/// How often the child's RSS is sampled during a phase.
const SAMPLE: Duration = Duration::from_millis(50);
/// At rest: RSS is stable when it moved by at most [`SETTLE_KIB`] over [`SETTLE_WINDOW`].
const SETTLE_WINDOW: Duration = Duration::from_secs(3);
const SETTLE_KIB: u64 = 1024;
const SETTLE_MAX: Duration = Duration::from_secs(120);
/// A phase slower than this is stuck.
const PHASE_TIMEOUT: Duration = Duration::from_secs(1800);
const DAY_MS: u64 = 86_400_000;

fn id(code: u32) -> NodeId {
    NodeId::parse(&format!("{code:06}")).expect("a node id")
}

/// The private key behind `topology::placeholder_key` (checked against it).
fn key_of(node: NodeId) -> NodeKey {
    NodeKey::from_seed(BatchId::of(format!("placeholder key for {node}").as_bytes()).0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// `123.4 MiB (48 % of the 256 MiB target)`.
fn against_limit(kib: u64) -> String {
    let m = mib(kib);
    format!(
        "{m:.1} MiB ({:.0} % of the {RSS_LIMIT_MIB:.0} MiB target: {})",
        100.0 * m / RSS_LIMIT_MIB,
        if m < RSS_LIMIT_MIB { "met" } else { "MISSED" }
    )
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Guangdong from the division list (national platform, province, 21 cities, 122 counties,
/// the placeholder keys, the default fee schedules), with free loopback ports for the nodes
/// that run.
fn guangdong(running: &[NodeId]) -> Topology {
    let generated = topology::generate(id(440_000), 20_000).expect("Guangdong");
    // The sockets stay bound until every port is chosen, so no two nodes get the same one.
    let mut held = Vec::new();
    let nodes: Vec<topology::Node> = generated
        .nodes()
        .cloned()
        .map(|mut node| {
            if running.contains(&node.id) {
                let socket = UdpSocket::bind("127.0.0.1:0").expect("a free UDP port");
                node.address = socket.local_addr().expect("a bound address");
                held.push(socket);
            }
            node
        })
        .collect();
    drop(held);
    Topology::from_parts(
        1,
        nodes,
        Vec::new(),
        Vec::new(),
        generated.schedules().to_vec(),
    )
    .unwrap_or_else(|errors| panic!("the bench's topology: {errors:?}"))
}

/// The 124 reporters under the province (counties, and the cities without counties).
fn reporters(topology: &Topology) -> Vec<NodeId> {
    let province = id(440_000);
    topology
        .reporters(&topology.schedules()[0])
        .into_iter()
        .filter(|r| topology.path_to_national(*r).contains(&province))
        .collect()
}

fn schemas() -> Vec<&'static Schema> {
    CATEGORIES
        .iter()
        .map(|c| Registry::builtin().by_name(c).expect("a built-in category"))
        .collect()
}

/// Unix ms at midnight China time of the civil date.
fn cst_midnight(year: u16, month: u8, day: u32) -> u64 {
    (days_from_civil(i64::from(year), u32::from(month), day) as u64) * DAY_MS - 8 * 3_600_000
}

// ---------------------------------------------------------------------------------------------
// Records and batches

/// Real records of each category and month (sample generator → `ingest`), and where the
/// account number sits in them.
struct Templates {
    records: BTreeMap<(Category, u8), Vec<Record>>,
    account: BTreeMap<Category, usize>,
}

impl Templates {
    fn new(months: &[u8]) -> Templates {
        let origin = id(445_281);
        let key = key_of(origin);
        let mut records = BTreeMap::new();
        let mut account = BTreeMap::new();
        for schema in schemas() {
            let at = schema
                .fields
                .iter()
                .position(|f| f.name == "account_no")
                .expect("fee schemas key on account_no");
            assert_eq!(
                schema.key.len(),
                2,
                "{}: keyed on account and period",
                schema.category
            );
            account.insert(schema.category.clone(), at);
            for &month in months {
                let period = Period::Month { year: YEAR, month };
                let file =
                    sample::sample_csv(schema, origin, period, TEMPLATES, 0, u64::from(month));
                let options = IngestOptions {
                    schema,
                    origin,
                    period,
                    encoding: Encoding::Utf8,
                    desensitize_key: &DesensitizeKey([1; 32]),
                    node_key: &key,
                    batch_records_max: TEMPLATES,
                    left_out: &[],
                };
                let ingested =
                    ingest_bytes(Path::new("t.csv"), file.text.as_bytes(), &options, |_| {})
                        .unwrap_or_else(|e| panic!("sample {}: {e}", schema.category));
                let batch = Batch::decode(&ingested.batches[0].bytes).expect("a batch just made");
                records.insert((schema.category.clone(), month), batch.records);
            }
        }
        Templates { records, account }
    }

    /// A signed data batch of `count` records of `origin` with account numbers
    /// `{origin}-{first + i}`.
    fn batch(
        &self,
        origin: NodeId,
        key: &NodeKey,
        schema: &Schema,
        month: u8,
        first: usize,
        count: usize,
    ) -> (SignedBatch, Batch) {
        let templates = &self.records[&(schema.category.clone(), month)];
        let at = self.account[&schema.category];
        let period = Period::Month { year: YEAR, month };
        let period_text = format!("{YEAR}-{month:02}");
        let records: Vec<Record> = (0..count)
            .map(|i| {
                let mut record = templates[i % templates.len()].clone();
                let account = format!("{origin}-{:07}", first + i);
                record.key = RecordKey(format!("{account}|{period_text}"));
                record.values[at] = Value::Text(account.into());
                record
            })
            .collect();
        let batch =
            Batch::new(fresh_header(origin, schema, period), records).expect("a valid batch");
        let signed = SignedBatch::seal(&batch, key).expect("seals");
        (signed, batch)
    }
}

fn receipt(key: &NodeKey, receiver: NodeId, signed: &SignedBatch, at: u64) -> SignedReceipt {
    Receipt {
        receiver,
        batch: signed.id,
        origin: signed_origin(signed),
        received_at_ms: at,
        verdict: Verdict::Accepted { warnings: 0 },
    }
    .sign(key)
}

fn signed_origin(signed: &SignedBatch) -> NodeId {
    Content::decode(&signed.bytes)
        .expect("a batch just made")
        .summary()
        .origin
}

/// Checks a batch the way a receiving node does (hash, signature, every record).
fn check_verifies(signed: &SignedBatch, origin: NodeId) {
    let public = key_of(origin).public();
    verify_incoming(
        signed,
        |o| (o == origin).then_some(public),
        Registry::builtin(),
    )
    .unwrap_or_else(|(rejection, problems)| {
        panic!(
            "a generated batch does not verify: {rejection}; {:?}",
            problems.first()
        )
    });
}

// ---------------------------------------------------------------------------------------------
// A node in a child process

/// The child: the node on `store`, answering one line per command on stdout.
fn child_main(args: &[String]) {
    let [store_dir, topology_path, me] = args else {
        panic!("{CHILD_ARG} STORE TOPOLOGY NODE-ID");
    };
    init_logs();
    let me = NodeId::parse(me).expect("a node id");
    let topology_path = PathBuf::from(topology_path);
    let topology = runtime::read_topology(&topology_path).expect("the topology file");
    let parent = topology.parent_of(me).map(|n| n.id);
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let started = Instant::now();
    let store = Store::open(Path::new(store_dir)).expect("the store opens");
    let opened = started.elapsed();
    // What opening sled alone costs (its recovery reads the log and builds its page table).
    let self_kib = |field: &str| {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with(field))?
                    .split_whitespace()
                    .nth(1)?
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
    };
    let (open_rss, open_peak) = (self_kib("VmRSS:"), self_kib("VmHWM:"));
    let node = tokio
        .block_on(runtime::start_with(Seams {
            key: key_of(me),
            topology,
            topology_path: Some(topology_path),
            store,
            clock: Arc::new(SystemClock::new()),
            socket: Socket::Bind,
            transport: TransportSeams::os(),
            blocking: Blocking::Threads,
            config: CoreConfig::default(),
        }))
        .expect("the node starts");
    let _entered = tokio.enter();
    let years = reconcile::years(&node.store, reconcile::year_at(runtime::wall_ms()))
        .expect("the store's years")
        .len();
    println!(
        "ready pid={} open_ms={} open_rss_kib={open_rss} open_peak_kib={open_peak} start_ms={} years={years}",
        std::process::id(),
        opened.as_millis(),
        started.elapsed().as_millis()
    );
    for line in std::io::stdin().lock().lines() {
        let line = line.expect("stdin");
        let mut words = line.split_whitespace();
        match words.next() {
            Some("reset-peak") => {
                let ok = std::fs::write("/proc/self/clear_refs", "5").is_ok();
                println!("reset {ok}");
            }
            Some("reconcile") => {
                let links = node.reconcile(None).expect("reconcile");
                println!("reconciling {links}");
            }
            Some("state") => {
                let up = node
                    .links()
                    .iter()
                    .any(|l| l.direction == "up" && l.connected);
                let outbox = parent.map_or(0, |p| node.store.outbox_len(p));
                let sessions: Vec<String> = node
                    .reconciled()
                    .iter()
                    .map(|s| {
                        format!(
                            "{}:{}:{}:{}:{}",
                            s.year,
                            if s.receipts { "r" } else { "b" },
                            s.reoffered,
                            s.parent_only,
                            s.rounds
                        )
                    })
                    .collect();
                println!(
                    "state up={} outbox={outbox} {}",
                    u8::from(up),
                    sessions.join(" ")
                );
            }
            Some("watch") => {
                let file = words.next().expect("watch FILE");
                let bytes = std::fs::read(file).expect("the ids file");
                let mut missing: Vec<BatchId> = bytes
                    .chunks_exact(32)
                    .map(|c| BatchId(c.try_into().expect("32 bytes")))
                    .collect();
                let total = missing.len();
                let start = Instant::now();
                while !missing.is_empty() {
                    std::thread::sleep(Duration::from_millis(10));
                    missing.retain(|id| !node.store.holds(id).expect("the store"));
                    assert!(
                        start.elapsed() < PHASE_TIMEOUT,
                        "still missing {} of {total}",
                        missing.len()
                    );
                }
                println!("held {total} ms={}", start.elapsed().as_millis());
            }
            Some("receiving") => {
                // Where the batches received so far spent their time (microseconds), once
                // there are at least as many as asked: a batch's times are counted just after
                // the core lets it go, a moment after the store holds it.
                let at_least: u64 = words.next().map_or(0, |n| n.parse().expect("a count"));
                let start = Instant::now();
                while node.receive_times().batches < at_least {
                    std::thread::sleep(Duration::from_millis(1));
                    assert!(
                        start.elapsed() < PHASE_TIMEOUT,
                        "the node counted fewer than {at_least} batches received"
                    );
                }
                let times = node.receive_times();
                println!(
                    "receiving batches={} check_us={} wait_us={} core_us={} core_max_us={}",
                    times.batches,
                    times.check.as_micros(),
                    times.wait.as_micros(),
                    times.core.as_micros(),
                    times.core_max.as_micros()
                );
            }
            Some("quit") => {
                tokio.block_on(async {
                    let _ = tokio::time::timeout(Duration::from_secs(10), runtime::shutdown(&node))
                        .await;
                });
                println!("bye");
                break;
            }
            other => panic!("unknown command {other:?}"),
        }
    }
}

/// A node running in a child process.
struct ChildNode {
    name: String,
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    started: Instant,
    /// The node's own process id, from its `ready` line: under [`WRAP_ENV`] the process
    /// spawned is the wrapper's, not the node's.
    node_pid: Option<u32>,
}

impl ChildNode {
    fn spawn(name: &str, store: &Path, topology: &Path, me: NodeId) -> ChildNode {
        let exe = std::env::current_exe().expect("the benchmark's own path");
        let wrap = std::env::var(WRAP_ENV).unwrap_or_default();
        let mut wrap = wrap.split_whitespace();
        let wrapper = wrap.next();
        let wrapped = wrapper.is_some();
        let mut command = match wrapper {
            Some(wrapper) => {
                let mut command = Command::new(wrapper);
                command.args(wrap).arg(exe);
                command
            }
            None => Command::new(exe),
        };
        let mut child = command
            .arg(CHILD_ARG)
            .arg(store)
            .arg(topology)
            .arg(me.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the node's process starts");
        let stdout = child.stdout.take().expect("piped");
        let stdin = child.stdin.take().expect("piped");
        let (tx, lines) = sync_channel(16);
        std::thread::spawn(move || {
            // A wrapper's own lines before the node's first go to stderr.
            let mut wrapper_speaks = wrapped;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                wrapper_speaks &= !line.starts_with("ready ");
                if wrapper_speaks {
                    eprintln!("{line}");
                    continue;
                }
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        ChildNode {
            name: name.to_owned(),
            child,
            stdin,
            lines,
            started: Instant::now(),
            node_pid: None,
        }
    }

    fn pid(&self) -> u32 {
        self.node_pid.unwrap_or_else(|| self.child.id())
    }

    /// The next line the child prints, calling `tick` every [`SAMPLE`] meanwhile.
    fn reply(&mut self, timeout: Duration, tick: &mut dyn FnMut(&ChildNode)) -> String {
        let start = Instant::now();
        loop {
            match self.lines.recv_timeout(SAMPLE) {
                Ok(line) => {
                    if line.starts_with("ready ") {
                        self.node_pid = Some(field(&line, "pid") as u32);
                    }
                    return line;
                }
                Err(RecvTimeoutError::Timeout) => {
                    tick(self);
                    assert!(
                        start.elapsed() < timeout,
                        "{}: no answer in {timeout:?}",
                        self.name
                    );
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("{}: the node's process ended", self.name)
                }
            }
        }
    }

    fn ask(&mut self, command: &str, tick: &mut dyn FnMut(&ChildNode)) -> String {
        writeln!(self.stdin, "{command}").expect("the node's stdin");
        self.stdin.flush().expect("the node's stdin");
        self.reply(PHASE_TIMEOUT, tick)
    }

    /// A field of the child's `/proc/<pid>/status`, in KiB.
    fn status_kib(&self, field: &str) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    }

    fn rss(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    fn peak(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    /// The child's CPU time (user + system).
    fn cpu(&self) -> Duration {
        cpu_of(&format!("/proc/{}/stat", self.pid()))
    }

    fn quit(mut self) {
        let _ = self.ask("quit", &mut |_| {});
        let _ = self.child.wait();
    }
}

fn cpu_of(stat: &str) -> Duration {
    let ticks = std::fs::read_to_string(stat).ok().and_then(|stat| {
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    });
    Duration::from_millis(ticks.unwrap_or(0) * 10)
}

/// The largest RSS seen by a sampler.
#[derive(Default)]
struct Sampled {
    max_kib: u64,
    samples: usize,
}

impl Sampled {
    fn tick(&mut self, node: &ChildNode) {
        self.max_kib = self.max_kib.max(node.rss());
        self.samples += 1;
    }
}

/// A value of `key=value` in a child's line.
fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

// ---------------------------------------------------------------------------------------------
// A. A node holding a year

/// One batch as the province stores it.
struct Item {
    index: usize,
    signed: SignedBatch,
    batch: Batch,
    from: NodeId,
    own: SignedReceipt,
    first: Option<SignedReceipt>,
    national: SignedReceipt,
}

#[derive(Default)]
struct Built {
    batches: u64,
    records: u64,
    /// Feedback findings the audit made (warnings).
    findings: u64,
    time: Duration,
}

/// The timeliness ledger of one month at the province, as `credit-node report` reads it
/// (and `/metrics` twice a scrape: this month and the last), from the store as built: every
/// reporter and category, with the three previous months read for the concealment check.
fn ledger_of_a_month(province: &Path, topology: &Topology) {
    let store: Store<SledKv> = Store::open(province).expect("the province's store");
    let period = Period::Month {
        year: YEAR,
        month: 6,
    };
    let now_ms = days_from_civil(i64::from(YEAR) + 1, 1, 1) as u64 * DAY_MS;
    let started = Instant::now();
    let entries = node::core::ledger::ledger(
        &store,
        topology,
        id(440_000),
        period,
        None,
        now_ms,
        node::core::ledger::LedgerConfig::default(),
    )
    .expect("the ledger");
    let took = started.elapsed();
    let records: u64 = entries.iter().map(|e| e.records_delivered).sum();
    println!(
        "   the ledger of {period} (credit-node report; /metrics reads two a scrape): {} reports, {} records delivered, {}",
        entries.len(),
        grouped(records as f64),
        secs(took),
    );
}

/// Builds the province's store in `province` and its parent's copy (without the lost
/// batches) in `national`.
fn build_year(province: &Path, national: &Path, topology: &Topology, records: usize) -> Built {
    let started = Instant::now();
    let province_id = id(440_000);
    let national_id = NodeId::NATIONAL;
    let reporters = reporters(topology);
    let schemas = schemas();
    let months: Vec<u8> = (1..=12).collect();
    let templates = Templates::new(&months);
    let keys: BTreeMap<NodeId, NodeKey> = topology.nodes().map(|n| (n.id, key_of(n.id))).collect();
    let batches = records.div_ceil(BATCH_RECORDS);
    let reports = reporters.len() * schemas.len() * months.len();
    let lost: BTreeSet<usize> = (0..LOST)
        .map(|i| i * batches / LOST + batches / (2 * LOST))
        .collect();
    let (tx, rx): (SyncSender<Item>, Receiver<Item>) = sync_channel(QUEUE);
    let store = Store::open(province).expect("a new store");
    let registry = Registry::builtin();
    let mut built = Built::default();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            // Report r of month m gets batches base (+1 for the first `extra` reports).
            let per_month = batches / months.len();
            let mut index = 0;
            for (m, &month) in months.iter().enumerate() {
                let in_month = per_month + usize::from(m < batches % months.len());
                let month_reports = reports / months.len();
                let arrive = cst_midnight(
                    if month == 12 { YEAR + 1 } else { YEAR },
                    if month == 12 { 1 } else { month + 1 },
                    1,
                );
                for r in 0..month_reports {
                    let reporter = reporters[r / schemas.len()];
                    let schema = schemas[r % schemas.len()];
                    let count =
                        in_month / month_reports + usize::from(r < in_month % month_reports);
                    let parent = topology.parent_of(reporter).expect("a parent").id;
                    for serial in 0..count {
                        let (signed, batch) = templates.batch(
                            reporter,
                            &keys[&reporter],
                            schema,
                            month,
                            serial * BATCH_RECORDS,
                            BATCH_RECORDS,
                        );
                        if index < schemas.len() {
                            check_verifies(&signed, reporter);
                        }
                        // Over the first nine days of the next month.
                        let at = arrive
                            + (serial * month_reports + r) as u64 * 9 * DAY_MS
                                / (count.max(1) * month_reports) as u64;
                        let (from, first) = if parent == province_id {
                            (reporter, None)
                        } else {
                            (parent, Some(receipt(&keys[&parent], parent, &signed, at)))
                        };
                        let item = Item {
                            index,
                            own: receipt(&keys[&province_id], province_id, &signed, at + 30_000),
                            national: receipt(
                                &keys[&national_id],
                                national_id,
                                &signed,
                                at + 60_000,
                            ),
                            first,
                            from,
                            signed,
                            batch,
                        };
                        index += 1;
                        if tx.send(item).is_err() {
                            return;
                        }
                    }
                }
            }
            drop(tx);
        });
        let insert = |item: &Item, built: &mut Built| {
            let update = node::core::assess_received(
                &store,
                registry,
                province_id,
                item.signed.id,
                &item.batch,
                None,
            )
            .expect("assess");
            let errors: Vec<_> = update
                .findings
                .iter()
                .filter(|f| f.problem.severity == protocol::record::Severity::Error)
                .collect();
            assert!(
                errors.is_empty(),
                "the audit refuses a generated batch: {errors:?}"
            );
            built.findings += update.findings.len() as u64;
            let content = Content::Data(item.batch.clone());
            let at = item.own.receipt.received_at_ms;
            let new = store
                .insert_batch(
                    &item.signed,
                    &content,
                    item.from,
                    &item.own,
                    item.first.as_ref(),
                    &[national_id],
                    Some(&update),
                    at,
                )
                .expect("insert batch");
            assert!(new, "each batch is new");
            let child = store
                .insert_receipt(
                    province_id,
                    national_id,
                    &item.national,
                    &[],
                    None,
                    item.national.receipt.received_at_ms,
                )
                .expect("insert receipt");
            if let Some(child) = child {
                store
                    .relay_done(child, &[(item.signed.id, national_id)])
                    .expect("relay done");
            }
            built.batches += 1;
            built.records += item.batch.records.len() as u64;
        };
        let mut held_back = Vec::new();
        let mut since_sync = 0;
        let mut last_report = Instant::now();
        for item in rx {
            if lost.contains(&item.index) {
                held_back.push(item);
                continue;
            }
            insert(&item, &mut built);
            since_sync += 1;
            if since_sync == SYNC_EVERY {
                store.sync().expect("sync");
                since_sync = 0;
            }
            if last_report.elapsed() > Duration::from_secs(30) {
                last_report = Instant::now();
                println!(
                    "   building: {} of {batches} batches, {:.0} records/s",
                    built.batches,
                    built.records as f64 / started.elapsed().as_secs_f64()
                );
            }
        }
        store.sync().expect("sync");
        // The parent's copy: everything but the lost batches.
        copy_store(province, national);
        for item in &held_back {
            insert(item, &mut built);
        }
        store.sync().expect("sync");
    });
    drop(store);
    built.time = started.elapsed();
    built
}

/// Copies a store (synced; sled's files are consistent once `sync` returned) with `cp -a`.
fn copy_store(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp runs");
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

/// Every reconciliation summary in a `state` line: (year, receipts, reoffered, parent_only,
/// rounds).
fn sessions(line: &str) -> Vec<(u16, bool, u64, u64, u64)> {
    line.split_whitespace()
        .skip(3)
        .map(|s| {
            let p: Vec<&str> = s.split(':').collect();
            (
                p[0].parse().expect("year"),
                p[1] == "r",
                p[2].parse().expect("reoffered"),
                p[3].parse().expect("parent only"),
                p[4].parse().expect("rounds"),
            )
        })
        .collect()
}

fn part_a(base: &Path) {
    let records = env_usize("BENCH_RECORDS", DEFAULT_RECORDS);
    let kept = std::env::var_os("BENCH_STORE").map(PathBuf::from);
    let temp = kept.is_none().then(|| {
        tempfile::Builder::new()
            .prefix("province-bench-a-")
            .tempdir_in(base)
            .expect("a temporary directory")
    });
    let root = kept
        .clone()
        .unwrap_or_else(|| temp.as_ref().expect("one of them").path().to_owned());
    std::fs::create_dir_all(&root).expect("the store directory");
    // The parent's copy goes on another file system by default (a disk: it is written
    // once, and the province's store alone fills much of the memory at full scale).
    let parent_root = match std::env::var_os("BENCH_PARENT_DIR") {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .expect("a temporary directory for the parent");
    let province_dir = root.join("province");
    let national_dir = parent_root.path().join("national");
    // With BENCH_STORE, the parent's copy as built is kept beside the province's and copied
    // for each run (the run gives it the lost batches); without, the run uses it as built.
    let national_base = if kept.is_some() {
        root.join("national-base")
    } else {
        national_dir.clone()
    };
    let province_id = id(440_000);
    let topology = guangdong(&[NodeId::NATIONAL, province_id]);
    let marker = root.join("built.txt");
    println!(
        "A. a provincial node holding a year: {} records ({:.0} % of the issue's {}) in batches of {BATCH_RECORDS}, 124 reporters x 3 fee categories x 12 months of {YEAR}; the parent lacks {LOST} of them",
        grouped(records as f64),
        100.0 * records as f64 / FULL_RECORDS as f64,
        grouped(FULL_RECORDS as f64),
    );
    let reused = std::fs::read_to_string(&marker).ok();
    match reused.as_deref().map(str::trim) {
        Some(text) if text == records.to_string() => {
            println!("   stores reused from {}", root.display());
        }
        _ => {
            let _ = std::fs::remove_dir_all(&province_dir);
            let built = build_year(&province_dir, &national_base, &topology, records);
            std::fs::write(&marker, records.to_string()).expect("the marker");
            println!(
                "   built in {}: {} batches, {} records ({:.0} records/s, {:.0} batches/s; assess + insert_batch + insert_receipt on one thread, signing on another); {} audit warnings",
                secs(built.time),
                grouped(built.batches as f64),
                grouped(built.records as f64),
                built.records as f64 / built.time.as_secs_f64(),
                built.batches as f64 / built.time.as_secs_f64(),
                grouped(built.findings as f64),
            );
        }
    }
    let (files, _, bytes) = du(&province_dir);
    let (_, _, sled_bytes) = du(&province_dir.join("sled"));
    let (_, _, parent_bytes) = du(&national_base);
    println!(
        "   the parent's copy (without the lost batches): {:.2} GiB in {}",
        parent_bytes as f64 / (1u64 << 30) as f64,
        national_base.display()
    );
    println!(
        "   the province's store: {:.2} GiB ({files} files; sled {:.2} GiB), in {}",
        bytes as f64 / (1u64 << 30) as f64,
        sled_bytes as f64 / (1u64 << 30) as f64,
        root.display()
    );
    ledger_of_a_month(&province_dir, &topology);
    if national_base != national_dir {
        copy_store(&national_base, &national_dir);
    }
    let topology_path = root.join("topology.toml");
    std::fs::write(&topology_path, topology.render()).expect("the topology file");

    // At rest.
    let mut province = ChildNode::spawn("province", &province_dir, &topology_path, province_id);
    let ready = province.reply(Duration::from_secs(600), &mut |_| {});
    let years = field(&ready, "years") as usize;
    println!(
        "   the province started in {} ms (of which Store::open {} ms, after which RSS was {:.1} MiB, peak {:.1} MiB: sled's recovery; {} ms from spawn), peak RSS while starting {:.1} MiB",
        field(&ready, "start_ms"),
        field(&ready, "open_ms"),
        mib(field(&ready, "open_rss_kib")),
        mib(field(&ready, "open_peak_kib")),
        province.started.elapsed().as_millis(),
        mib(province.peak())
    );
    let settle_start = Instant::now();
    let mut window: Vec<(Instant, u64)> = Vec::new();
    let rest = loop {
        std::thread::sleep(Duration::from_millis(250));
        let now = Instant::now();
        window.push((now, province.rss()));
        window.retain(|(at, _)| now - *at <= SETTLE_WINDOW);
        let (lo, hi) = window
            .iter()
            .fold((u64::MAX, 0), |(lo, hi), (_, r)| (lo.min(*r), hi.max(*r)));
        let full = settle_start.elapsed() >= SETTLE_WINDOW;
        if full && hi - lo <= SETTLE_KIB {
            break Some(hi);
        }
        if settle_start.elapsed() > SETTLE_MAX {
            break None;
        }
    };
    match rest {
        Some(kib) => println!(
            "   at rest (RSS within {SETTLE_KIB} KiB over {} s, after {}): RSS {}",
            SETTLE_WINDOW.as_secs(),
            secs(settle_start.elapsed()),
            against_limit(kib)
        ),
        None => println!(
            "   at rest: RSS did not settle in {} s; now {}",
            SETTLE_MAX.as_secs(),
            against_limit(province.rss())
        ),
    }
    let mut sampled = Sampled::default();
    let mut tick = |node: &ChildNode| sampled.tick(node);
    let reset = province.ask("reset-peak", &mut tick);

    // Link-up reconciliation: the parent comes up.
    let link_start = Instant::now();
    let mut national =
        ChildNode::spawn("national", &national_dir, &topology_path, NodeId::NATIONAL);
    let national_ready = national.reply(Duration::from_secs(600), &mut |_| {});
    let national_started = link_start.elapsed();
    let mut up_at = None;
    let link_state = loop {
        let state = province.ask("state", &mut tick);
        if up_at.is_none() && field(&state, "up") == 1 {
            up_at = Some(link_start.elapsed());
        }
        let done = sessions(&state).iter().filter(|s| !s.1).count();
        if done >= years && field(&state, "outbox") == 0 {
            break state;
        }
        assert!(
            link_start.elapsed() < PHASE_TIMEOUT,
            "link-up reconciliation stuck: {state}"
        );
        std::thread::sleep(Duration::from_millis(100));
        tick(&province);
    };
    let link_time = link_start.elapsed();
    let link_peak = province.peak();
    let reoffered: u64 = sessions(&link_state).iter().map(|s| s.2).sum();
    println!(
        "   link-up reconciliation ({years} years of batches, then the re-offered batches sent and receipted): {} from the parent's spawn (it started in {}, {} ms into its process; the link was up at {}); re-offered {reoffered} (the parent lacked {LOST}); sessions {}",
        secs(link_time),
        secs(national_started),
        field(&national_ready, "start_ms"),
        up_at.map_or_else(|| "?".to_owned(), secs),
        link_state
            .split_whitespace()
            .skip(3)
            .collect::<Vec<_>>()
            .join(" "),
    );
    println!(
        "     the province's RSS: peak {} (VmHWM since reset: {reset}), largest sample {:.1} MiB over {} samples, now {:.1} MiB",
        against_limit(link_peak),
        mib(sampled.max_kib),
        sampled.samples,
        mib(province.rss())
    );

    // Full reconciliation on demand.
    let mut sampled = Sampled::default();
    let mut tick = |node: &ChildNode| sampled.tick(node);
    province.ask("reset-peak", &mut tick);
    let before = sessions(&province.ask("state", &mut tick)).len();
    let full_start = Instant::now();
    let links = province.ask("reconcile", &mut tick);
    let full_state = loop {
        let state = province.ask("state", &mut tick);
        if sessions(&state).len() >= (before + 2 * years).min(64) {
            break state;
        }
        assert!(
            full_start.elapsed() < PHASE_TIMEOUT,
            "full reconciliation stuck: {state}"
        );
        std::thread::sleep(Duration::from_millis(20));
        tick(&province);
    };
    let full_time = full_start.elapsed();
    let full_peak = province.peak();
    let new: Vec<String> = full_state
        .split_whitespace()
        .skip(3 + before)
        .map(str::to_owned)
        .collect();
    println!(
        "   full reconciliation on demand (Node::reconcile: {links}; batches and receipts of {years} years): {} (to within 20 ms); sessions year:kind:reoffered:parent_only:rounds {}",
        secs(full_time),
        new.join(" ")
    );
    println!(
        "     the province's RSS: peak {}, largest sample {:.1} MiB over {} samples, now {:.1} MiB; the parent's peak {:.1} MiB",
        against_limit(full_peak),
        mib(sampled.max_kib),
        sampled.samples,
        mib(province.rss()),
        mib(national.peak())
    );
    province.quit();
    national.quit();
    drop(parent_root);
    if kept.is_some() {
        println!("   stores kept in {}", root.display());
    }
}

// ---------------------------------------------------------------------------------------------
// B. A month through the province

fn part_b(base: &Path) {
    let records = env_usize("BENCH_MONTH_RECORDS", DEFAULT_MONTH_RECORDS);
    let per_batch = env_usize("BENCH_MONTH_BATCH_RECORDS", MONTH_BATCH_RECORDS)
        .min(protocol::batch::BATCH_RECORDS_MAX);
    let root = tempfile::Builder::new()
        .prefix("province-bench-b-")
        .tempdir_in(base)
        .expect("a temporary directory");
    let province_id = id(440_000);
    let generated = topology::generate(province_id, 20_000).expect("Guangdong");
    let cities: Vec<NodeId> = generated
        .nodes()
        .filter(|n| n.role == Role::City)
        .map(|n| n.id)
        .collect();
    let mut running = vec![NodeId::NATIONAL, province_id];
    running.extend(&cities);
    let topology = guangdong(&running);
    let reporters = reporters(&topology);
    let schemas = schemas();
    let reports = reporters.len() * schemas.len();
    println!(
        "B. a month of fee data through the province: {} records ({:.1} % of the issue's {}), {} reports (124 reporters x 3 fee categories) in batches of <= {}, from {} city nodes over QUIC on 127.0.0.1",
        grouped(records as f64),
        100.0 * records as f64 / FULL_MONTH_RECORDS as f64,
        grouped(FULL_MONTH_RECORDS as f64),
        reports,
        grouped(per_batch as f64),
        cities.len()
    );

    // The cities' stores, each holding its counties' batches queued for the province.
    let started = Instant::now();
    let templates = Templates::new(&[MONTH]);
    let stores: BTreeMap<NodeId, Store<SledKv>> = cities
        .iter()
        .map(|c| {
            let store = Store::open(&root.path().join(c.to_string())).expect("a city store");
            (*c, store)
        })
        .collect();
    let keys: BTreeMap<NodeId, NodeKey> = topology.nodes().map(|n| (n.id, key_of(n.id))).collect();
    let arrive = cst_midnight(YEAR, MONTH + 1, 3);
    let (tx, rx): (SyncSender<(NodeId, SignedBatch, Batch)>, Receiver<_>) = sync_channel(64);
    let mut ids: Vec<BatchId> = Vec::new();
    let mut bytes = 0u64;
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for r in 0..reports {
                let reporter = reporters[r / schemas.len()];
                let schema = schemas[r % schemas.len()];
                let count = records / reports + usize::from(r < records % reports);
                let mut first = 0;
                while first < count {
                    let n = per_batch.min(count - first);
                    let (signed, batch) =
                        templates.batch(reporter, &keys[&reporter], schema, MONTH, first, n);
                    if r < schemas.len() && first == 0 {
                        check_verifies(&signed, reporter);
                    }
                    first += n;
                    if tx.send((reporter, signed, batch)).is_err() {
                        return;
                    }
                }
            }
            drop(tx);
        });
        for (reporter, signed, batch) in rx {
            let parent = topology.parent_of(reporter).expect("a parent").id;
            let city = if parent == province_id {
                reporter
            } else {
                parent
            };
            let own = receipt(&keys[&city], city, &signed, arrive);
            stores[&city]
                .insert_batch(
                    &signed,
                    &Content::Data(batch),
                    reporter,
                    &own,
                    None,
                    &[province_id],
                    None,
                    arrive,
                )
                .expect("insert at the city");
            ids.push(signed.id);
            bytes += signed.bytes.len() as u64;
        }
    });
    for store in stores.values() {
        store.sync().expect("sync");
    }
    println!(
        "   the cities' stores built in {}: {} batches, {:.1} MB of batches",
        secs(started.elapsed()),
        grouped(ids.len() as f64),
        bytes as f64 / 1e6
    );
    let topology_path = root.path().join("topology.toml");
    std::fs::write(&topology_path, topology.render()).expect("the topology file");
    let ids_path = root.path().join("ids");
    std::fs::write(&ids_path, ids.iter().flat_map(|i| i.0).collect::<Vec<u8>>())
        .expect("the ids file");

    let province_dir = root.path().join("province");
    let mut province = ChildNode::spawn("province", &province_dir, &topology_path, province_id);
    let ready = province.reply(Duration::from_secs(120), &mut |_| {});
    let mut sampled = Sampled::default();
    let mut tick = |node: &ChildNode| sampled.tick(node);
    province.ask("reset-peak", &mut tick);
    let rss_before = province.rss();
    let cpu_before = (province.cpu(), cpu_of("/proc/self/stat"));

    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    writeln!(province.stdin, "watch {}", ids_path.display()).expect("the node's stdin");
    province.stdin.flush().expect("the node's stdin");
    let start = Instant::now();
    let nodes: Vec<Arc<runtime::Node>> = tokio.block_on(async {
        let mut nodes = Vec::new();
        for city in &cities {
            nodes.push(
                runtime::start_with(Seams {
                    key: key_of(*city),
                    topology: topology.clone(),
                    topology_path: None,
                    store: stores[city].clone(),
                    clock: Arc::new(SystemClock::new()),
                    socket: Socket::Bind,
                    transport: TransportSeams::os(),
                    blocking: Blocking::Threads,
                    config: CoreConfig::default(),
                })
                .await
                .expect("a city starts"),
            );
        }
        nodes
    });
    let cities_started = start.elapsed();
    let held = province.reply(PHASE_TIMEOUT, &mut tick);
    let time = start.elapsed();
    let peak = province.peak();
    let cpu = (
        province.cpu() - cpu_before.0,
        cpu_of("/proc/self/stat") - cpu_before.1,
    );
    assert!(held.starts_with("held "), "{held}");
    let receiving = province.ask(&format!("receiving {}", ids.len()), &mut tick);
    let rate = records as f64 / time.as_secs_f64();
    println!(
        "   the province (started in {} ms on an empty store, RSS {:.1} MiB) held all {} batches {} after the cities started (starting the 21 took {}): {} records/s, {:.1} MB/s of batches",
        field(&ready, "start_ms"),
        mib(rss_before),
        grouped(ids.len() as f64),
        secs(time),
        secs(cities_started),
        grouped(rate),
        bytes as f64 / 1e6 / time.as_secs_f64()
    );
    println!(
        "   the province's peak RSS {:.1} MiB (largest sample {:.1} MiB; the issue sets no limit here: A's 256 MiB is for a node at rest and reconciling); CPU meanwhile: province {:.0} %, the cities (this process) {:.0} % of one core",
        mib(peak),
        mib(sampled.max_kib),
        100.0 * cpu.0.as_secs_f64() / time.as_secs_f64(),
        100.0 * cpu.1.as_secs_f64() / time.as_secs_f64(),
    );
    let received = field(&receiving, "batches").max(1);
    let per = |key: &str| field(&receiving, key) as f64 / 1000.0 / received as f64;
    println!(
        "   the province's {} batches received, each on average: checked {:.1} ms before its core's lock, waited {:.1} ms (a turn, the lock), held by the core {:.1} ms (longest {:.1}): the core held them {:.0} % of the time, one at a time",
        grouped(received as f64),
        per("check_us"),
        per("wait_us"),
        per("core_us"),
        field(&receiving, "core_max_us") as f64 / 1000.0,
        100.0 * field(&receiving, "core_us") as f64 / 1e6 / time.as_secs_f64(),
    );
    if records < FULL_MONTH_RECORDS {
        println!(
            "   EXTRAPOLATED, not measured: the full month ({} records) at this rate would take {:.0} s ({:.1} min)",
            grouped(FULL_MONTH_RECORDS as f64),
            FULL_MONTH_RECORDS as f64 / rate,
            FULL_MONTH_RECORDS as f64 / rate / 60.0
        );
    }
    tokio.block_on(async {
        for node in &nodes {
            let _ = tokio::time::timeout(Duration::from_secs(5), runtime::shutdown(node)).await;
        }
    });
    drop(nodes);
    province.quit();
    drop(tokio);
    drop(stores);
}

// ---------------------------------------------------------------------------------------------

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(CHILD_ARG) {
        child_main(&args[2..]);
        return;
    }
    if !args.iter().any(|a| a == "--bench") {
        println!("province: run it with `cargo bench -p credit-node --bench province`");
        return;
    }
    init_logs();
    for node in guangdong(&[]).nodes() {
        assert_eq!(
            key_of(node.id).public(),
            node.public_key,
            "placeholder key of {}",
            node.id
        );
    }
    let base = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let shm = PathBuf::from("/dev/shm");
            if shm.is_dir() {
                shm
            } else {
                std::env::temp_dir()
            }
        });
    let parts = std::env::var("BENCH_PARTS").unwrap_or_else(|_| "a,b".to_owned());
    println!(
        "province bench: {} CPU(s), load average {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    if parts.contains('a') {
        part_a(&base);
    }
    if parts.contains('b') {
        part_b(&base);
    }
}
