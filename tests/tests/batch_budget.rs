//! One pinned child cannot take its parent down with batch streams. The test acts as a county
//! with its real key (the city pins it) and, over the node crate's own transport, keeps every
//! batch stream the city allows busy: frames declared at the largest size and then stalled
//! after all but their last byte, frames declared and never sent, junk headers, and complete
//! frames of junk whose bytes do not hash to their id; it connects a second time, which
//! replaces its first connection. Meanwhile an honest sibling county (a real process) keeps
//! syncing through the same city. The city's peak memory (VmHWM) must stay under
//! [`PEAK_BOUND_MIB`], stalled streams must be stopped by the city's read deadline, and once
//! the attacker is gone the city's memory must come back.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cluster::{Cluster, wait_until};
use node::identity::Identity;
use protocol::wire::{self, Message};
use protocol::{BatchId, NodeId, NodeKey, Period, PublicKey, Registry, Signature, SignedBatch};

/// What the city may reach at its peak, in MiB, with this attack going on (see
/// ARCHITECTURE.md, "Memory and liveness budgets"): its own working set with an honest child
/// (~40 MiB), the attacker's link share filled by one stalled largest frame (64 MiB), or two
/// junk frames of 24 MiB while decoded (each charged twice), QUIC's unread stream data of two
/// connections (≤ 9 MiB each, about twice that in packet buffers), and allocator slack.
/// Before the budget, the same attack held 4 × 64 MiB in frame buffers plus a 64 MiB window.
const PEAK_BOUND_MIB: u64 = 192;
/// How far above its baseline the city's resident memory must come back once the attacker has
/// gone (buffers of the size of frames are returned to the system when freed).
const SETTLED_ABOVE_BASELINE_MIB: u64 = 48;
const SYNC_TIMEOUT: Duration = Duration::from_secs(60);
/// Attacking streams the city must have stopped: more than the streams it reads at once per
/// link (4), so its read deadline has freed the attacker's own link more than once.
const STOPS_WANTED: usize = 6;

fn id(text: &str) -> NodeId {
    NodeId::parse(text).unwrap()
}

/// `VmRSS` and `VmHWM` of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Submits a small water-fee export at the honest county; returns its batch ids.
fn submit(cluster: &Cluster, county: NodeId, round: u64) -> Vec<String> {
    let period = Period::parse("2022-05").unwrap();
    let schema = Registry::builtin().by_name("water_fee").unwrap();
    let file = sample::sample_csv(schema, county, period, 300, 0, round);
    let path = cluster.root().join(format!("honest-{round}.csv"));
    std::fs::write(&path, &file.text).unwrap();
    let report = cluster
        .submit(county, &path, "water_fee", "2022-05", 100)
        .unwrap();
    report["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect()
}

fn holds_all(cluster: &Cluster, node: NodeId, ids: &[String]) -> anyhow::Result<bool> {
    let batches = cluster.batches(node)?;
    let held: BTreeSet<&str> = batches["batches"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["id"].as_str())
        .collect();
    Ok(ids.iter().all(|id| held.contains(id.as_str())))
}

/// Waits (blocking this worker) until the city holds the honest county's batches.
fn wait_for_sync(cluster: &Cluster, city: NodeId, ids: &[String], what: &str) {
    tokio::task::block_in_place(|| {
        wait_until(what, SYNC_TIMEOUT, || holds_all(cluster, city, ids))
            .unwrap_or_else(|e| panic!("{e}\ncity log:\n{}", cluster.log(city)))
    });
}

/// The kinds of batch stream the attacker keeps sending.
#[derive(Debug, Clone, Copy)]
enum Attack {
    /// A header declaring the largest frame, then every byte but the last; never finished.
    Stalled,
    /// A header declaring the largest frame, and nothing after it.
    Silent,
    /// A frame header of the wrong version.
    JunkHeader,
    /// A complete `Batch` frame of 24 MiB of junk that does not hash to its id (decoded, then
    /// refused by the core).
    Forged,
}

/// Frames and counters shared by the attacking tasks.
struct Arsenal {
    stalled: Vec<u8>,
    forged: Vec<u8>,
    /// Streams the city stopped (its read deadline or a refused frame).
    stopped: AtomicUsize,
}

impl Arsenal {
    fn new() -> Arsenal {
        let length = wire::BATCH_FRAME_BYTES_MAX;
        let mut stalled = vec![wire::WIRE_VERSION];
        stalled.extend_from_slice(&(length as u32).to_be_bytes());
        // Every byte of the frame but the last: the city holds a whole frame's worth.
        stalled.resize(wire::FRAME_HEADER_BYTES + length - 1, 0xA5);
        let forged = Message::Batch(SignedBatch {
            id: BatchId::of(b"not these bytes"),
            signature: Signature([7; 64]),
            bytes: vec![0x5A; 24 * 1024 * 1024],
        })
        .encode();
        Arsenal {
            stalled,
            forged,
            stopped: AtomicUsize::new(0),
        }
    }
}

/// Opens batch streams of one kind on `connection`, one after another, until the connection
/// ends or `rounds` streams were sent.
async fn attack(connection: quinn::Connection, kind: Attack, rounds: usize, arsenal: Arc<Arsenal>) {
    for _ in 0..rounds {
        let Ok(mut send) = connection.open_uni().await else {
            return;
        };
        let written = match kind {
            Attack::Stalled => send.write_all(&arsenal.stalled).await,
            Attack::Silent => {
                send.write_all(&arsenal.stalled[..wire::FRAME_HEADER_BYTES])
                    .await
            }
            Attack::JunkHeader => send.write_all(b"\xffjunk, not a frame").await,
            Attack::Forged => send.write_all(&arsenal.forged).await,
        };
        let stopped = match written {
            Err(quinn::WriteError::Stopped(_)) => true,
            Err(_) => return,
            // Never finished (the stream is held open): the city must stop it.
            Ok(()) => matches!(send.stopped().await, Ok(Some(_))),
        };
        if stopped {
            arsenal.stopped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Connects to the city as the pinned county, opens the control stream and says Hello.
async fn connect_as_child(
    endpoint: &quinn::Endpoint,
    key: &NodeKey,
    me: NodeId,
    city: NodeId,
    address: std::net::SocketAddr,
    city_key: PublicKey,
) -> (quinn::Connection, quinn::SendStream, quinn::RecvStream) {
    let connection = node::transport::connect(endpoint, key, city, address, city_key)
        .await
        .expect("the pinned county key connects");
    let (mut send, mut recv) = connection.open_bi().await.expect("a control stream");
    let hello = Message::Hello {
        node: me,
        wire_version: wire::WIRE_VERSION,
        topology_version: 1,
    };
    send.write_all(&hello.encode()).await.unwrap();
    let mut header = [0u8; wire::FRAME_HEADER_BYTES];
    recv.read_exact(&mut header)
        .await
        .expect("the city answers");
    (connection, send, recv)
}

/// Starts every kind of attack on a connection.
fn unleash(connection: &quinn::Connection, arsenal: &Arc<Arsenal>) {
    for (kind, tasks, rounds) in [
        (Attack::Stalled, 8, usize::MAX),
        (Attack::Silent, 1, usize::MAX),
        (Attack::JunkHeader, 1, 200),
        (Attack::Forged, 2, 4),
    ] {
        for _ in 0..tasks {
            tokio::spawn(attack(connection.clone(), kind, rounds, arsenal.clone()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_child_sending_junk_streams_keeps_its_parent_under_a_bound_while_a_sibling_syncs()
{
    let root = tempfile::tempdir().unwrap();
    let (city, honest, attacker) = (id("445200"), id("445202"), id("445281"));
    let mut cluster = Cluster::create(
        &credit_e2e::binary(),
        root.path(),
        &[
            ("000000", "全国中小企业融资综合信用服务平台", None),
            ("440000", "广东省", Some("000000")),
            ("445200", "揭阳市", Some("440000")),
            ("445202", "榕城区", Some("445200")),
            ("445281", "普宁市", Some("445200")),
        ],
    )
    .unwrap();
    tokio::task::block_in_place(|| {
        cluster.start(city).unwrap();
        cluster.start(honest).unwrap();
    });
    let pid = cluster.pid(city).unwrap();
    let address = cluster.member(city).address;
    let city_key = cluster.member(city).public_key;
    let attacker_key = Identity::load(&cluster.member(attacker).dir).unwrap().key;

    // The honest county syncs; the city's memory then is the baseline.
    let first = submit(&cluster, honest, 1);
    wait_for_sync(&cluster, city, &first, "the honest county's first batches");
    let (baseline_kib, _) = memory_kib(pid);
    let started = std::time::Instant::now();
    let phase = |what: &str| eprintln!("{:>6.1} s  {what}", started.elapsed().as_secs_f64());

    // The attack, on a first connection.
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let arsenal = Arc::new(Arsenal::new());
    let (first_connection, _control, _control_recv) =
        connect_as_child(&endpoint, &attacker_key, attacker, city, address, city_key).await;
    unleash(&first_connection, &arsenal);
    // It bites: the city holds the attacker's bytes (so a bound below is no accident).
    tokio::task::block_in_place(|| {
        wait_until(
            "the attack to reach the city's memory",
            SYNC_TIMEOUT,
            || Ok(memory_kib(pid).0 > baseline_kib + 32 * 1024),
        )
    })
    .unwrap();
    phase("attack bites");
    let second = submit(&cluster, honest, 2);
    wait_for_sync(
        &cluster,
        city,
        &second,
        "the honest county's batches under attack",
    );

    phase("honest sync under attack");
    // One connection per child: connecting again replaces the first connection.
    let (connection, _control2, _control_recv2) =
        connect_as_child(&endpoint, &attacker_key, attacker, city, address, city_key).await;
    let replaced = tokio::time::timeout(SYNC_TIMEOUT, first_connection.closed())
        .await
        .expect("the city closes the older connection");
    assert!(
        replaced.to_string().contains("replaced"),
        "the first connection was closed for another reason: {replaced}"
    );
    unleash(&connection, &arsenal);
    phase("replaced");

    // Stalled streams are stopped by the city's read deadline, again and again; the honest
    // county keeps syncing meanwhile.
    tokio::task::block_in_place(|| {
        wait_until(
            "the city to stop stalled streams",
            Duration::from_secs(120),
            || Ok(arsenal.stopped.load(Ordering::Relaxed) >= STOPS_WANTED),
        )
    })
    .unwrap_or_else(|e| panic!("{e}\ncity log:\n{}", cluster.log(city)));
    phase("stops");
    let third = submit(&cluster, honest, 3);
    wait_for_sync(&cluster, city, &third, "the honest county's batches, later");
    phase("honest sync later");
    let (rss_kib, peak_kib) = memory_kib(pid);
    eprintln!(
        "city memory: baseline {} MiB, under attack {} MiB, peak {} MiB (bound {PEAK_BOUND_MIB} MiB); {} attacking streams stopped",
        baseline_kib / 1024,
        rss_kib / 1024,
        peak_kib / 1024,
        arsenal.stopped.load(Ordering::Relaxed),
    );
    assert!(
        peak_kib <= PEAK_BOUND_MIB * 1024,
        "the city peaked at {} MiB, above the bound of {PEAK_BOUND_MIB} MiB",
        peak_kib / 1024
    );

    // The attacker goes; the city's memory comes back.
    connection.close(0u32.into(), b"done");
    tokio::task::block_in_place(|| {
        wait_until(
            "the city's memory to come back",
            Duration::from_secs(30),
            || Ok(memory_kib(pid).0 <= baseline_kib + SETTLED_ABOVE_BASELINE_MIB * 1024),
        )
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: resident {} MiB, baseline {} MiB",
            memory_kib(pid).0 / 1024,
            baseline_kib / 1024
        )
    });
    phase("memory back");
    tokio::task::block_in_place(|| cluster.stop_all());
}
