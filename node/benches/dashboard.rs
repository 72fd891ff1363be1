//! The dashboard at the scale of a whole province: does a page stay fast on what a
//! provincial node holds after a year?
//!
//! **The store** (built outside the timing, a real sled [`Store`] in a temporary directory):
//! Guangdong from the compiled-in division list (`topology::generate`: the national
//! platform, the province, 21 cities, 122 counties; 124 reporters — every county and the two
//! cities without counties), with a `[[schedule]]` for each of the 14 categories of
//! `Registry::builtin()` (cadence and due day from the schema), and for one year
//! ([`YEAR`]), per reporter, category and month:
//! - a monthly category: 1–3 data batches sharing [`MONTHLY_RECORDS`] records;
//! - an event category (licences, penalties, …: there is no daily category among the
//!   built-in ones, so these stand for the "daily" load): one data batch per day, of
//!   [`EVENT_RECORDS`] record, its period that day;
//! - one manifest (revision 1, naming the month's batches, declaring a total).
//!
//! Each is a real batch, signed by its county's key, assessed (`core::assess_received`: the
//! record index and the audit, which also give the count of new records the store keeps with
//! a data batch for the ledger) and inserted with `Store::insert_batch` as
//! the province stores what its city forwarded: this node's signed receipt, the city's
//! signed receipt (the first receipt, which dates the arrival), queued for the national
//! platform; then the national platform's signed receipt through `Store::insert_receipt`
//! (which empties the outbox and queues the receipt down, and `Store::relay_done` clears
//! that queue, as the city's answer would). So the audit log holds the two events per batch
//! a real province logs. About 1 report in 25 arrives late, 1 in 100 is missing, 1 in 100 is
//! short of its declared total and 1 in 100 lacks a batch its manifest names.
//!
//! **What is printed** (a timing is the first run and the median of [`RUNS`] runs after it;
//! the first runs on a store just opened: sled's cache cold, the files in the OS page cache):
//! 1. the store: batches, size on disk, build time;
//! 2. `core::ledger::ledger_of` for one heat-map page (50 reporters × 12 months) of a
//!    monthly category and of an event category — what `/api/heatmap` computes — and
//!    `core::ledger::ledger` of one month for every category — what `report` and a progress
//!    report compute;
//! 3. where a page's time goes: the store reads the ledger makes for a page, replayed and
//!    timed by kind (index ranges with metadata, batch files read and decoded, receipts); and
//!    the whole-log reads of the page's other sections (audit log, feedback items);
//! 4. real HTTP GETs (plain `std::net::TcpStream`) of the page and the JSON routes from a
//!    node started in-process on the store (`runtime::start_with`), one route after another
//!    on the same node, as an operator would use it (restarting the node in-process for each
//!    route, to make each first request cold, was tried: a stopped node's memory is not all
//!    given back to the OS — RSS grew by 100–200 MiB a restart, about half of it glibc's
//!    per-thread arenas — so the peak said nothing of one node);
//! 5. `Node::ledger` of a month — what `credit-node report` and a progress report compute,
//!    under the core's lock — and how long a request needing that lock waits meanwhile.
//!
//! Peak RSS (VmHWM, reset between sections where the kernel allows) is printed after each
//! section and route, with the machine's load average (the machine may be shared: `cpu`
//! beside each timing is this process's CPU time over its runs, in % of their wall time).
//!
//! **Where the store goes.** Each batch file is written with two `fsync`s (the file, its
//! directory): ~7.6 ms a batch on this machine's ext4, 50 min for a year. So the store is
//! built under `/dev/shm` (tmpfs: the same code, no device flushes) unless `BENCH_DIR` names
//! another directory. Reads come from memory either way once the OS has the files cached.
//!
//! Knobs: `BENCH_DIR` (where the temporary store goes), `BENCH_REPORTERS` (reporters kept,
//! default all 124), `BENCH_STORE=DIR` (build the store in `DIR` and keep it; a later run
//! with the same `DIR` — and the same `BENCH_REPORTERS` — skips the build and measures it
//! again).
//!
//! Run: `cargo bench -p credit-node --bench dashboard`.

#![allow(clippy::print_stdout)]

mod common;

use common::{du, fresh_header};

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use node::core::CoreConfig;
use node::core::ledger::{self, Entry, LedgerConfig};
use node::ingest::{Encoding, IngestOptions, ingest_bytes};
use node::runtime::{self, Blocking, Seams, Socket, SystemClock};
use node::store::{SledKv, Store};
use node::transport::TransportSeams;
use protocol::manifest::ManifestEntry;
use protocol::record::RecordKey;
use protocol::schema::{Cadence, Schema};
use protocol::wire::{Receipt, SignedReceipt, Verdict};
use protocol::{
    Batch, BatchId, Category, Content, DesensitizeKey, Manifest, NodeId, NodeKey, Period, Record,
    Registry, SignedBatch,
};
use topology::admission::days_from_civil;
use topology::{Role, Schedule, Topology};

/// The year the store holds (wholly past: every report is due).
const YEAR: u16 = 2025;
/// Timed runs after the first (cold) one; the median is reported.
const RUNS: usize = 5;
/// Records of a month of a monthly category (split evenly over its 1–3 batches: a steady
/// count, so the ledger's drop rule flags only the reports made short on purpose), and of
/// each day's batch of an event category.
const MONTHLY_RECORDS: usize = 6;
const EVENT_RECORDS: usize = 1;
/// Items signed ahead of the store's writer.
const QUEUE: usize = 4096;
/// Inserts between two syncs of the store (group commit, as the node does).
const SYNC_EVERY: usize = 16_384;
/// The month whose whole ledger is timed.
const LEDGER_MONTH: u8 = 6;
/// The categories timed page by page.
const MONTHLY_CATEGORY: &str = "water_fee";
const EVENT_CATEGORY: &str = "admin_penalty";
const DAY_MS: u64 = 86_400_000;
const HOUR_MS: u64 = 3_600_000;
/// An HTTP answer slower than this is a failure.
const HTTP_TIMEOUT: Duration = Duration::from_secs(600);

fn env_usize(name: &str) -> Option<usize> {
    let text = std::env::var(name).ok()?;
    Some(
        text.trim()
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .unwrap_or_else(|| panic!("{name}={text:?}: expected a positive whole number")),
    )
}

fn id(code: u32) -> NodeId {
    NodeId::parse(&format!("{code:06}")).expect("a node id")
}

/// The private key behind `topology::placeholder_key` (checked against it in `main`).
fn key_of(node: NodeId) -> NodeKey {
    NodeKey::from_seed(BatchId::of(format!("placeholder key for {node}").as_bytes()).0)
}

// ---------------------------------------------------------------------------------------------
// Memory, sizes, timing

fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(
        || "?".to_owned(),
        |k| format!("{:.1} MiB", k as f64 / 1024.0),
    )
}

/// Resets VmHWM to the current RSS (Linux ≥ 4.0); false if the kernel refused.
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn gb(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

fn secs(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.2} s", d.as_secs_f64())
    } else if d >= Duration::from_millis(1) {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    } else {
        format!("{} µs", d.as_micros())
    }
}

/// The first run, and the median of [`RUNS`] more; with the last run's output.
struct Timed<T> {
    first: Duration,
    median: Duration,
    /// The fastest and slowest of the [`RUNS`] after the first.
    range: (Duration, Duration),
    /// This process's CPU time over all the runs, in % of their wall time (100: one core
    /// busy throughout; well under it for single-threaded work: the machine was busy).
    cpu: Option<f64>,
    output: T,
}

impl<T> Timed<T> {
    fn line(&self) -> String {
        format!(
            "first {}, median {} ({}-{}, cpu {})",
            secs(self.first),
            secs(self.median),
            secs(self.range.0),
            secs(self.range.1),
            self.cpu
                .map_or_else(|| "?".to_owned(), |c| format!("{c:.0}%")),
        )
    }
}

/// This process's CPU time (user + system, all threads), from `/proc/self/stat`.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After the command name, utime and stime are the 12th and 13th fields; USER_HZ is 100.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// The machine's load averages (1, 5, 15 min), from `/proc/loadavg`.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| {
            let parts: Vec<&str> = l.split_whitespace().take(3).collect();
            (parts.len() == 3).then(|| parts.join(" "))
        })
        .unwrap_or_else(|| "?".to_owned())
}

/// The peak RSS since the last mark and the RSS now; starts a new mark.
fn memory_mark() -> String {
    let text = format!(
        "peak RSS {}, RSS now {}",
        mib(status_kib("VmHWM:")),
        mib(status_kib("VmRSS:"))
    );
    if reset_peak() {
        text
    } else {
        format!("{text} (peak not resettable: the whole run's)")
    }
}

fn timed<T>(mut run: impl FnMut() -> T) -> Timed<T> {
    let cpu_before = cpu_time();
    let all = Instant::now();
    let start = Instant::now();
    let mut output = run();
    let first = start.elapsed();
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let start = Instant::now();
        output = std::hint::black_box(run());
        times.push(start.elapsed());
    }
    times.sort_unstable();
    let wall = all.elapsed();
    let cpu = cpu_before
        .zip(cpu_time())
        .map(|(a, b)| (b - a).as_secs_f64() * 100.0 / wall.as_secs_f64());
    Timed {
        first,
        median: times[RUNS / 2],
        range: (times[0], times[RUNS - 1]),
        cpu,
        output,
    }
}

// ---------------------------------------------------------------------------------------------
// The province

/// Guangdong with a schedule for every built-in category; the province listens on
/// `127.0.0.1:province_port`.
fn province_topology(province_port: u16) -> Topology {
    let generated = topology::generate(id(440_000), province_port - 1).expect("Guangdong");
    let nodes: Vec<topology::Node> = generated.nodes().cloned().collect();
    let schedules = Registry::builtin()
        .iter()
        .map(|schema| {
            Schedule::new(
                schema.category.clone(),
                schema.cadence,
                u16::from(schema.due_day),
                Vec::new(),
            )
        })
        .collect();
    Topology::from_parts(1, nodes, Vec::new(), Vec::new(), schedules)
        .unwrap_or_else(|errors| panic!("the bench's topology: {errors:?}"))
}

/// A free UDP port on loopback for the province (others may take it meanwhile: unlikely).
fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free UDP port")
}

/// A few real records of each category, from the sample generator through `ingest`: every
/// batch clones some and gives them keys of its own.
fn templates(registry: &Registry) -> BTreeMap<Category, Vec<Record>> {
    let origin = id(445_281);
    let key = key_of(origin);
    registry
        .iter()
        .map(|schema| {
            let period = Period::Month {
                year: YEAR,
                month: 3,
            };
            let file = sample::sample_csv(schema, origin, period, 4, 0, 7);
            let options = IngestOptions {
                schema,
                origin,
                period,
                encoding: Encoding::Utf8,
                desensitize_key: &DesensitizeKey([1; 32]),
                node_key: &key,
                batch_records_max: 100,
                left_out: &[],
            };
            let ingested = ingest_bytes(Path::new("t.csv"), file.text.as_bytes(), &options, |_| {})
                .unwrap_or_else(|e| panic!("sample {}: {e}", schema.category));
            let batch = Batch::decode(&ingested.batches[0].bytes).expect("a batch just made");
            (schema.category.clone(), batch.records)
        })
        .collect()
}

/// One item as the province stores it.
struct Item {
    signed: SignedBatch,
    content: Content,
    /// The neighbour it came from: the reporter's city, or the reporter.
    from: NodeId,
    own: SignedReceipt,
    first: Option<SignedReceipt>,
    national: SignedReceipt,
}

/// A deterministic roll in 0..2^64 for a report.
fn roll(parts: &[u64]) -> u64 {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for p in parts {
        x ^= p.wrapping_add(0x9e37_79b9_7f4a_7c15);
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
    }
    x
}

/// Unix ms of `hour` o'clock China Standard Time on day number `days` (since 1970-01-01).
fn cst(days: i64, hour: u64) -> u64 {
    days as u64 * DAY_MS - 8 * HOUR_MS + hour * HOUR_MS
}

/// How a report turns out (about 1 in 25 late, 1 in 100 each of the others).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fate {
    OnTime,
    Late,
    Missing,
    Short,
    Incomplete,
}

fn fate(roll: u64) -> Fate {
    match roll % 100 {
        0 => Fate::Missing,
        1 => Fate::Short,
        2 => Fate::Incomplete,
        3..=6 => Fate::Late,
        _ => Fate::OnTime,
    }
}

struct Maker<'a> {
    province: NodeId,
    national: NodeId,
    topology: &'a Topology,
    templates: &'a BTreeMap<Category, Vec<Record>>,
    keys: BTreeMap<NodeId, NodeKey>,
}

impl Maker<'_> {
    fn receipt(
        &self,
        receiver: NodeId,
        signed: &SignedBatch,
        origin: NodeId,
        at: u64,
    ) -> SignedReceipt {
        Receipt {
            receiver,
            batch: signed.id,
            origin,
            received_at_ms: at,
            verdict: Verdict::Accepted { warnings: 0 },
        }
        .sign(&self.keys[&receiver])
    }

    /// The item for `content` arriving (at the reporter's parent) at `at`.
    fn item(&self, reporter: NodeId, signed: SignedBatch, content: Content, at: u64) -> Item {
        let parent = self
            .topology
            .parent_of(reporter)
            .expect("a reporter has a parent")
            .id;
        let (from, first, own_at) = if parent == self.province {
            (reporter, None, at)
        } else {
            (
                parent,
                Some(self.receipt(parent, &signed, reporter, at)),
                at + 30_000,
            )
        };
        Item {
            own: self.receipt(self.province, &signed, reporter, own_at),
            national: self.receipt(self.national, &signed, reporter, own_at + 30_000),
            first,
            from,
            signed,
            content,
        }
    }

    fn data(
        &self,
        reporter: NodeId,
        schema: &Schema,
        period: Period,
        records: usize,
        serial: usize,
    ) -> (SignedBatch, Content) {
        let template = &self.templates[&schema.category];
        let records: Vec<Record> = (0..records)
            .map(|i| {
                let mut record = template[i % template.len()].clone();
                record.key = RecordKey(format!("{reporter}-{period}-{serial}-{i}"));
                record
            })
            .collect();
        let batch =
            Batch::new(fresh_header(reporter, schema, period), records).expect("a valid batch");
        let signed = SignedBatch::seal(&batch, &self.keys[&reporter]).expect("seals");
        (signed, Content::Data(batch))
    }

    /// Everything `reporter` sent of `schema`'s category for `month`, in arrival order.
    fn month(&self, reporter: NodeId, schema: &Schema, month: u8, out: &mut impl FnMut(Item)) {
        let r = roll(&[
            u64::from(reporter.code()),
            category_number(&schema.category),
            u64::from(month),
        ]);
        let fate = fate(r);
        if fate == Fate::Missing {
            return;
        }
        let due_day = i64::from(schema.due_day);
        let month_start = days_from_civil(i64::from(YEAR), u32::from(month), 1);
        let (ny, nm) = if month == 12 {
            (i64::from(YEAR) + 1, 1)
        } else {
            (i64::from(YEAR), u32::from(month) + 1)
        };
        let next_start = days_from_civil(ny, nm, 1);
        let late_by = 1 + (r >> 20) % 5;
        let mut named = Vec::new();
        let mut delivered = 0u64;
        let mut sent = Vec::new();
        match schema.cadence {
            Cadence::Monthly | Cadence::Daily => {
                let period = Period::Month { year: YEAR, month };
                let batches = 1 + (r >> 8) as usize % 3;
                // On time: between the 1st and the due day; late: days after it.
                let arrive = if fate == Fate::Late {
                    cst(next_start + due_day - 1 + late_by as i64, 10)
                } else {
                    cst(
                        next_start + ((r >> 12) % schema.due_day.max(1) as u64) as i64,
                        10,
                    )
                };
                let records = MONTHLY_RECORDS / batches;
                for serial in 0..batches {
                    let (signed, content) = self.data(reporter, schema, period, records, serial);
                    named.push(ManifestEntry {
                        batch: signed.id,
                        records: records as u32,
                        supersedes: None,
                    });
                    delivered += records as u64;
                    sent.push((signed, content, arrive + serial as u64 * 60_000));
                }
            }
            Cadence::Event => {
                let days = (next_start - month_start) as u8;
                let late_day = 1 + ((r >> 12) % u64::from(days)) as u8;
                for day in 1..=days {
                    let period = Period::Day {
                        year: YEAR,
                        month,
                        day,
                    };
                    let event_day = month_start + i64::from(day) - 1;
                    let arrive = if fate == Fate::Late && day == late_day {
                        cst(event_day + due_day + late_by as i64, 10)
                    } else {
                        cst(event_day + 1, 9)
                    };
                    let (signed, content) = self.data(reporter, schema, period, EVENT_RECORDS, 0);
                    named.push(ManifestEntry {
                        batch: signed.id,
                        records: EVENT_RECORDS as u32,
                        supersedes: None,
                    });
                    delivered += EVENT_RECORDS as u64;
                    sent.push((signed, content, arrive));
                }
            }
        }
        if fate == Fate::Incomplete {
            // The manifest names it; it never arrives.
            sent.pop();
        }
        let declared = if fate == Fate::Short {
            delivered + 5
        } else {
            delivered
        };
        let manifest_at = match (schema.cadence, fate) {
            (Cadence::Event, Fate::Late) => cst(next_start + due_day + late_by as i64, 11),
            (Cadence::Event, _) => cst(next_start + 1, 11),
            (_, Fate::Late) => cst(next_start + due_day - 1 + late_by as i64, 11),
            _ => sent
                .last()
                .map_or(cst(next_start, 11), |(_, _, at)| at + HOUR_MS),
        };
        let manifest = Manifest::new(
            reporter,
            schema.category.clone(),
            Period::Month { year: YEAR, month },
            1,
            named,
            Some(declared),
            manifest_at,
        )
        .expect("a valid manifest");
        let signed = manifest.seal_with(&self.keys[&reporter]);
        sent.push((signed, Content::Manifest(manifest), manifest_at));
        sent.sort_by_key(|(_, _, at)| *at);
        for (signed, content, at) in sent {
            out(self.item(reporter, signed, content, at));
        }
    }
}

fn category_number(category: &Category) -> u64 {
    Registry::builtin()
        .iter()
        .position(|s| &s.category == category)
        .expect("a built-in category") as u64
}

#[derive(Default)]
struct Built {
    data: u64,
    manifests: u64,
    records: u64,
    /// How long the store's writer waited for the signer.
    waited: Duration,
}

/// Signs every item of the year on another thread and stores them here, month by month.
fn build(store: &Store<SledKv>, topology: &Topology, reporters: &[NodeId]) -> Built {
    let registry = Registry::builtin();
    let templates = templates(registry);
    let province = id(440_000);
    let national = NodeId::NATIONAL;
    let keys: BTreeMap<NodeId, NodeKey> = topology.nodes().map(|n| (n.id, key_of(n.id))).collect();
    let (tx, rx): (SyncSender<Item>, Receiver<Item>) = sync_channel(QUEUE);
    std::thread::scope(|scope| {
        let maker = Maker {
            province,
            national,
            topology,
            templates: &templates,
            keys,
        };
        scope.spawn(move || {
            for month in 1..=12u8 {
                for reporter in reporters {
                    for schema in registry.iter() {
                        maker.month(*reporter, schema, month, &mut |item| {
                            tx.send(item).expect("the writer runs");
                        });
                    }
                }
            }
        });
        let mut built = Built::default();
        let mut relayed: BTreeMap<NodeId, Vec<(BatchId, NodeId)>> = BTreeMap::new();
        let mut since_sync = 0;
        let flush = |relayed: &mut BTreeMap<NodeId, Vec<(BatchId, NodeId)>>| {
            store.sync().expect("sync");
            for (child, done) in std::mem::take(relayed) {
                store.relay_done(child, &done).expect("relay done");
            }
        };
        let mut waited = Duration::ZERO;
        loop {
            let wait = Instant::now();
            let Ok(item) = rx.recv() else { break };
            waited += wait.elapsed();
            let at = item.own.receipt.received_at_ms;
            // The record index and audit, as a receiving province makes them: with them the
            // store records each data batch's count of new records, which the ledger sums.
            let quality = match &item.content {
                Content::Data(batch) => Some(
                    node::core::assess_received(
                        store,
                        registry,
                        province,
                        item.signed.id,
                        batch,
                        None,
                    )
                    .expect("record index and audit"),
                ),
                _ => None,
            };
            let new = store
                .insert_batch(
                    &item.signed,
                    &item.content,
                    item.from,
                    &item.own,
                    item.first.as_ref(),
                    &[national],
                    quality.as_ref(),
                    at,
                )
                .expect("insert batch");
            assert!(new, "each batch is new");
            let national_at = item.national.receipt.received_at_ms;
            if let Some(child) = store
                .insert_receipt(province, national, &item.national, &[], None, national_at)
                .expect("insert receipt")
            {
                relayed
                    .entry(child)
                    .or_default()
                    .push((item.signed.id, national));
            }
            match &item.content {
                Content::Data(batch) => {
                    built.data += 1;
                    built.records += batch.records.len() as u64;
                }
                _ => built.manifests += 1,
            }
            since_sync += 1;
            if since_sync == SYNC_EVERY {
                flush(&mut relayed);
                since_sync = 0;
            }
        }
        flush(&mut relayed);
        built.waited = waited;
        built
    })
}

/// What a store built earlier holds.
fn count(store: &Store<SledKv>) -> Built {
    let mut built = Built::default();
    for entry in store.held() {
        let (_, meta) = entry.expect("index");
        match meta.kind {
            protocol::ContentKind::Data => {
                built.data += 1;
                built.records += u64::from(meta.records);
            }
            _ => built.manifests += 1,
        }
    }
    built
}

/// Opens the store, waiting out a previous handle's background flusher (it may hold sled's
/// lock a moment after the handle is dropped).
fn open(dir: &Path) -> Store<SledKv> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Store::open(dir) {
            Ok(store) => return store,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("reopen {}: {e}", dir.display()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What a page computes

/// The states of `entries`, as `on_time 540, late 20, …`.
fn states(entries: &[Entry]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for e in entries {
        *counts.entry(e.state.as_str()).or_default() += 1;
    }
    counts
        .iter()
        .map(|(s, n)| format!("{s} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the heat map computes for one page: 12 months of `category` for `page`.
fn heat_page(
    store: &Store<SledKv>,
    topology: &Topology,
    category: &Category,
    page: &BTreeSet<NodeId>,
    now: u64,
) -> Vec<Entry> {
    let mut all = Vec::new();
    for month in 1..=12 {
        all.extend(
            ledger::ledger_of(
                store,
                topology,
                id(440_000),
                Period::Month { year: YEAR, month },
                Some(category),
                Some(page),
                now,
                LedgerConfig::default(),
            )
            .expect("ledger"),
        );
    }
    all
}

/// The store reads the ledger makes for one heat-map page, replayed by kind and timed.
#[derive(Default, Debug)]
struct Reads {
    /// `held_in_period` calls, index keys they walked (every category of the range), the
    /// entries of the category they returned (metadata decoded).
    scans: u64,
    keys_walked: u64,
    entries: u64,
    scan_time: Duration,
    /// Batch files read, re-hashed and decoded (manifests always; the keys of data batches
    /// when more than one is held for the report and the store has no count for one).
    files: u64,
    file_time: Duration,
    receipts: u64,
    receipt_time: Duration,
}

fn replay_reads(
    store: &Store<SledKv>,
    category: &Category,
    cadence: Cadence,
    page: &BTreeSet<NodeId>,
) -> Reads {
    let mut reads = Reads::default();
    let previous = |month: u8, back: u8| {
        let m = i32::from(month) - i32::from(back);
        if m >= 1 {
            Period::Month {
                year: YEAR,
                month: m as u8,
            }
        } else {
            Period::Month {
                year: YEAR - 1,
                month: (m + 12) as u8,
            }
        }
    };
    for reporter in page {
        // Keys per month of the reporter (all categories): what a month's range walks.
        let mut per_month: BTreeMap<(u16, u8), u64> = BTreeMap::new();
        for year in [YEAR - 1, YEAR] {
            for entry in store.held_in_year(*reporter, year) {
                let (_, period) = entry.expect("index");
                *per_month.entry((year, period[2])).or_default() += 1;
            }
        }
        for month in 1..=12u8 {
            let mut periods = vec![Period::Month { year: YEAR, month }];
            if cadence == Cadence::Monthly {
                periods.extend((1..=3).map(|b| previous(month, b)));
            }
            for (n, period) in periods.into_iter().enumerate() {
                let (y, m) = match period {
                    Period::Month { year, month } | Period::Day { year, month, .. } => {
                        (year, month)
                    }
                };
                reads.keys_walked += per_month.get(&(y, m)).copied().unwrap_or(0);
                reads.scans += 1;
                let start = Instant::now();
                let held: Vec<_> = store
                    .held_in_period_counted(*reporter, category, period)
                    .collect::<Result<_, _>>()
                    .expect("index");
                reads.scan_time += start.elapsed();
                reads.entries += held.len() as u64;
                let data: Vec<_> = held
                    .iter()
                    .filter(|(_, m, _)| m.kind == protocol::ContentKind::Data)
                    .collect();
                // The data batches' keys, where more than one is held and a count is unknown.
                let keys_read =
                    data.len() > 1 && data.iter().any(|(.., counted)| counted.is_none());
                let start = Instant::now();
                for (bid, meta, _) in &held {
                    let read = match meta.kind {
                        protocol::ContentKind::Manifest => {
                            store.batch(bid).expect("batch").is_some()
                        }
                        protocol::ContentKind::Data if keys_read => {
                            store.held_data_batch_keys(bid).expect("batch").is_some()
                        }
                        _ => false,
                    };
                    reads.files += u64::from(read);
                }
                reads.file_time += start.elapsed();
                if n == 0 {
                    // Arrival: the first receipt of the manifest and of each data batch.
                    let start = Instant::now();
                    for (bid, meta, _) in &held {
                        if let Some(first) = meta.first {
                            reads.receipts +=
                                u64::from(store.receipt(bid, first).expect("receipt").is_some());
                        }
                    }
                    reads.receipt_time += start.elapsed();
                }
            }
        }
    }
    reads
}

/// The last `count` entries of the audit log, newest first, read by key from the audit
/// head (`state/audit_head`: the next sequence number and the last entry's digest).
fn last_audit_entries(store: &Store<SledKv>, count: u64) -> Vec<node::store::AuditEntry> {
    use node::store::{Kv, Tree};
    let config = bincode::config::standard();
    let Some(head) = store.kv().get(Tree::State, b"audit_head").expect("state") else {
        return Vec::new();
    };
    let ((next, _), _): ((u64, protocol::ids::Digest), usize) =
        bincode::decode_from_slice(&head, config).expect("the audit head");
    (next.saturating_sub(count)..next)
        .rev()
        .filter_map(|seq| {
            let bytes = store
                .kv()
                .get(Tree::Audit, &seq.to_be_bytes())
                .expect("audit")?;
            Some(
                bincode::decode_from_slice(&bytes, config)
                    .expect("an audit entry")
                    .0,
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// `GET path` over plain HTTP/1.1 (the few lines of `tests::http_get`); status and body.
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response");
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(bad)?;
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let mut body = &response[split + 4..];
    let body = if chunked {
        let mut out = Vec::new();
        while let Some(end) = body.windows(2).position(|w| w == b"\r\n") {
            let Some(size) = std::str::from_utf8(&body[..end])
                .ok()
                .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            else {
                break;
            };
            let rest = &body[end + 2..];
            if size == 0 || rest.len() < size {
                break;
            }
            out.extend_from_slice(&rest[..size]);
            body = rest[size..].strip_prefix(b"\r\n").unwrap_or(&rest[size..]);
        }
        out
    } else {
        body.to_vec()
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The province running in-process on the store, with its dashboard.
struct Province {
    runtime: tokio::runtime::Runtime,
    node: Arc<runtime::Node>,
    addr: SocketAddr,
    /// How long the node took to start (the store already open).
    started_in: Duration,
}

impl Province {
    fn start(dir: &Path, topology: &Topology) -> Province {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let store = open(dir);
        let started = Instant::now();
        let (node, addr) = runtime.block_on(async {
            let node = runtime::start_with(Seams {
                key: key_of(id(440_000)),
                topology: topology.clone(),
                topology_path: None,
                store,
                clock: Arc::new(SystemClock::new()),
                socket: Socket::Bind,
                transport: TransportSeams::os(),
                blocking: Blocking::Threads,
                config: CoreConfig::default(),
            })
            .await
            .expect("the province starts");
            let listener = node::http::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("an address");
            tokio::spawn(node::http::serve(node.clone(), listener));
            (node, addr)
        });
        Province {
            runtime,
            node,
            addr,
            started_in: started.elapsed(),
        }
    }

    fn get(&self, path: &str) -> String {
        let (status, body) =
            http_get(self.addr, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// Stops the node: its tasks end with the runtime, and the store with the last of them.
    fn stop(self) {
        drop(self.node);
        self.runtime.shutdown_timeout(Duration::from_secs(10));
    }
}

// ---------------------------------------------------------------------------------------------

fn main() {
    let registry = Registry::builtin();
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
    let kept = std::env::var_os("BENCH_STORE").map(PathBuf::from);
    let temp = match kept {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("dashboard-bench-")
                .tempdir_in(&base)
                .expect("a temporary directory"),
        ),
    };
    let dir = match (&kept, &temp) {
        (Some(dir), _) => dir.clone(),
        (None, Some(temp)) => temp.path().join("store"),
        (None, None) => unreachable!("one of them is set"),
    };
    let reuse = dir.join("sled").is_dir();
    let topology = province_topology(free_udp_port());
    for node in topology.nodes() {
        assert_eq!(
            key_of(node.id).public(),
            node.public_key,
            "placeholder key of {}",
            node.id
        );
    }
    let province = id(440_000);
    let schedule = &topology.schedules()[0];
    let mut reporters: Vec<NodeId> = topology
        .reporters(schedule)
        .into_iter()
        .filter(|r| topology.path_to_national(*r).contains(&province))
        .collect();
    let all_reporters = reporters.len();
    if let Some(n) = env_usize("BENCH_REPORTERS") {
        reporters.truncate(n);
    }
    let cities = topology.nodes().filter(|n| n.role == Role::City).count();
    let counties = topology.nodes().filter(|n| n.role == Role::County).count();
    let (monthly, event): (Vec<&Schema>, Vec<&Schema>) =
        registry.iter().partition(|s| s.cadence != Cadence::Event);
    println!(
        "dashboard bench: {} nodes (1 province, {cities} cities, {counties} counties), {} of {all_reporters} reporters, year {YEAR}, {} categories ({} monthly: {MONTHLY_RECORDS} records a month in 1-3 batches; {} event: one batch a day of {EVENT_RECORDS} record), a manifest per report month",
        topology.len(),
        reporters.len(),
        registry.iter().count(),
        monthly.len(),
        event.len(),
    );
    println!("store: {}", dir.display());

    // 1. The store.
    let started = Instant::now();
    let built = {
        let store = Store::open(&dir).expect("a new store");
        let built = if reuse {
            count(&store)
        } else {
            build(&store, &topology, &reporters)
        };
        store.sync().expect("sync");
        built
    };
    let build_time = started.elapsed();
    let (files, apparent, allocated) = du(&dir.join("batches"));
    let (_, sled_apparent, sled_allocated) = du(&dir.join("sled"));
    println!(
        "1. {} in {}: {} batches ({} data, {} manifests, {} records), {:.0} batches/s",
        if reuse { "reused (counted)" } else { "built" },
        secs(build_time),
        built.data + built.manifests,
        built.data,
        built.manifests,
        built.records,
        (built.data + built.manifests) as f64 / build_time.as_secs_f64(),
    );
    println!(
        "   store size: {} allocated ({} apparent): batch files {} ({files} files, {} apparent), sled {} ({} apparent)",
        gb(allocated + sled_allocated),
        gb(apparent + sled_apparent),
        gb(allocated),
        gb(apparent),
        gb(sled_allocated),
        gb(sled_apparent),
    );
    if !reuse {
        println!(
            "   the writer waited {} for the signing thread",
            secs(built.waited)
        );
    }
    println!("   {} (building), load average {}", memory_mark(), load());

    // 2. The ledger, straight from the store.
    let now = runtime::wall_ms();
    let page: BTreeSet<NodeId> = reporters
        .iter()
        .take(node::http::HEAT_ROWS)
        .copied()
        .collect();
    println!(
        "2. core::ledger on the store (first run on a store just opened, then the median of {RUNS}):"
    );
    let category = |name: &str| Category::parse(name).expect("a category");
    let mut pages = Vec::new();
    for name in [MONTHLY_CATEGORY, EVENT_CATEGORY] {
        let c = category(name);
        let store = open(&dir);
        let t = timed(|| heat_page(&store, &topology, &c, &page, now));
        println!(
            "   heat-map page, {name} ({:?}), {} reporters x 12 months: {} ({} entries: {})",
            registry.get(&c).expect("built in").cadence,
            page.len(),
            t.line(),
            t.output.len(),
            states(&t.output),
        );
        pages.push((name, c));
    }
    let month = Period::Month {
        year: YEAR,
        month: LEDGER_MONTH,
    };
    {
        let store = open(&dir);
        let t = timed(|| {
            ledger::ledger(
                &store,
                &topology,
                province,
                month,
                None,
                now,
                LedgerConfig::default(),
            )
            .expect("ledger")
        });
        println!(
            "   whole ledger of {month}, every category, {} reporters: {} ({} entries: {})",
            reporters.len(),
            t.line(),
            t.output.len(),
            states(&t.output),
        );
    }
    println!("   {}", memory_mark());

    // 3. Where a page's time goes.
    println!(
        "3. where the time goes: the store reads of one heat-map page, replayed by kind (warm):"
    );
    {
        let store = open(&dir);
        for (name, c) in &pages {
            let cadence = registry.get(c).expect("built in").cadence;
            let _ = replay_reads(&store, c, cadence, &page);
            let r = replay_reads(&store, c, cadence, &page);
            println!(
                "   {name}: {} index ranges walking {} keys ({} of the category, metadata decoded): {}; {} batch files read+hashed+decoded (manifests; data keys where uncounted): {}; {} first receipts: {}",
                r.scans,
                r.keys_walked,
                r.entries,
                secs(r.scan_time),
                r.files,
                secs(r.file_time),
                r.receipts,
                secs(r.receipt_time),
            );
        }
        // The page's other sections read whole logs: the audit log (to keep its last 20) and
        // every feedback item.
        let t = timed(|| {
            let (mut entries, mut last) = (0u64, None);
            for entry in store.audit_entries() {
                last = Some(entry.expect("audit entry").seq);
                entries += 1;
            }
            (entries, last)
        });
        println!(
            "   the whole audit log ({} entries) read and decoded, as the page's last-20 section does before making JSON of each: {}",
            t.output.0,
            t.line(),
        );
        // What the section needs: the last 20, read by key back from the audit head.
        let last = t.output.1;
        let t = timed(|| last_audit_entries(&store, 20));
        assert_eq!(
            t.output.first().map(|e| e.seq),
            last,
            "the same newest entry"
        );
        println!(
            "   the last {} audit entries read by key back from the audit head (not what the page does: what it could do): {}",
            t.output.len(),
            t.line(),
        );
        let t = timed(|| {
            node::quality_view::items(
                &store,
                &node::quality_view::Filter {
                    all: true,
                    ..Default::default()
                },
            )
            .expect("feedback")
            .len()
        });
        println!("   every feedback item ({}): {}", t.output, t.line());
    }
    println!("   {}", memory_mark());

    // 4. HTTP.
    println!(
        "4. HTTP GET from the province node started in-process on the store, one route after another (the first request of the first route finds sled's cache cold), load average {}:",
        load()
    );
    let first = reporters[0];
    let routes: Vec<Route> = vec![
        (
            format!("/api/heatmap?category={MONTHLY_CATEGORY}&year={YEAR}"),
            heat_summary,
        ),
        (
            format!("/api/heatmap?category={EVENT_CATEGORY}&year={YEAR}"),
            heat_summary,
        ),
        (
            format!("/?category={MONTHLY_CATEGORY}&year={YEAR}"),
            page_summary,
        ),
        (
            format!("/?category={EVENT_CATEGORY}&year={YEAR}"),
            page_summary,
        ),
        ("/api/audit".to_owned(), bytes_summary),
        ("/api/tree".to_owned(), bytes_summary),
        ("/api/feedback".to_owned(), bytes_summary),
        (
            format!(
                "/report?reporter={first}&category={EVENT_CATEGORY}&period={YEAR}-{LEDGER_MONTH:02}"
            ),
            bytes_summary,
        ),
    ];
    let province = Province::start(&dir, &topology);
    println!("   the node started in {}", secs(province.started_in));
    for (path, check) in routes {
        let t = timed(|| province.get(&path));
        println!(
            "   GET {path}: {} ({}); {}",
            t.line(),
            check(&t.output),
            memory_mark(),
        );
    }
    province.stop();

    // 5. The operator's `report` judges the month under the core's lock.
    {
        let province = Province::start(&dir, &topology);
        let done = std::sync::atomic::AtomicBool::new(false);
        let (ledger_time, tree_times) = std::thread::scope(|scope| {
            let ledger = scope.spawn(|| {
                let start = Instant::now();
                let entries = province.node.ledger(month, None).expect("ledger");
                done.store(true, std::sync::atomic::Ordering::SeqCst);
                (start.elapsed(), entries.len())
            });
            // /api/tree takes the core's lock for the link table, as `status` does.
            let mut times = Vec::new();
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let start = Instant::now();
                province.get("/api/tree");
                times.push(start.elapsed());
            }
            (ledger.join().expect("the ledger thread"), times)
        });
        println!(
            "5. Node::ledger of {month} (what `credit-node report` and a progress report compute, under the core's lock): {} ({} entries); meanwhile {} GET /api/tree (it takes the lock for the link table) took up to {}",
            secs(ledger_time.0),
            ledger_time.1,
            tree_times.len(),
            secs(tree_times.iter().max().copied().unwrap_or_default()),
        );
        province.stop();
    }
    println!("   {}, load average {}", memory_mark(), load());
    if kept.is_some() {
        println!("store kept in {}", dir.display());
    }
}

/// A path to GET and what to say of its answer.
type Route = (String, fn(&str) -> String);

fn bytes_summary(body: &str) -> String {
    format!("{} bytes", body.len())
}

fn heat_summary(body: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(body).expect("JSON");
    let rows = value["rows"].as_array().map_or(0, Vec::len);
    let mut states: BTreeMap<String, usize> = BTreeMap::new();
    for row in value["rows"].as_array().into_iter().flatten() {
        for cell in row["cells"].as_array().into_iter().flatten() {
            *states
                .entry(cell["state"].as_str().unwrap_or("?").to_owned())
                .or_default() += 1;
        }
    }
    format!(
        "{} bytes, {rows} rows of {} reporters, cells {:?}",
        body.len(),
        value["reporters"],
        states
    )
}

fn page_summary(body: &str) -> String {
    assert!(body.contains("id=\"heat\""), "the page has its heat map");
    format!(
        "{} bytes, {} heat cells",
        body.len(),
        body.matches("data-period=").count()
    )
}
