//! The sync state machines of one link, driven in memory with virtual time (the quinn-proto
//! test style): the child's `Uplink` and the parent's `Downlink` exchange wire frames through a
//! simulated network that loses, duplicates and delays (reorders) items by a seeded SplitMix64.
//! No sockets, threads, sleeps or clocks; every failure message names the seed and the faults
//! so that a case can be replayed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use proptest::prelude::*;
use protocol::batch::{BATCH_FORMAT, VerifyError};
use protocol::schema::FieldKind;
use protocol::sync::{
    Downlink, ProtocolError, Rejection, SyncConfig, Uplink, UplinkEvent, WANTED_MAX,
    verify_incoming,
};
use protocol::wire::{
    self, BATCH_FRAME_BYTES_MAX, FRAME_BYTES_MAX, IDS_PER_FRAME_MAX, Message, Offer, Receipt,
    SignedReceipt, Verdict,
};
use protocol::{
    Batch, BatchHeader, BatchId, Category, DesensitizeKey, NodeId, NodeKey, Period, PublicKey,
    Registry, SignedBatch,
};

const START_MS: u64 = 1_700_000_000_000;
const HOUR_MS: u64 = 3_600_000;
const LATENCY_MS: u64 = 10;
/// Most extra delay of a reordered item.
const JITTER_MS: u64 = 400;

fn child() -> NodeId {
    NodeId::from_code(445_281).unwrap()
}

fn parent() -> NodeId {
    NodeId::from_code(445_200).unwrap()
}

fn county_key() -> NodeKey {
    NodeKey::from_seed([81; 32])
}

fn parent_key() -> NodeKey {
    NodeKey::from_seed([200; 32])
}

fn period() -> Period {
    Period::parse("2022-05").unwrap()
}

/// A valid value for a field of this kind (as in tests/schemas.rs).
fn sample(kind: &FieldKind) -> String {
    match kind {
        FieldKind::Text { max_chars } => "样例文本".chars().take(*max_chars).collect(),
        FieldKind::Uscc => "914403001922038216".into(),
        FieldKind::ResidentId | FieldKind::IdNumber => "11010519491231002X".into(),
        FieldKind::OrgCode => "192203821".into(),
        FieldKind::RegNo => "440301103448669".into(),
        FieldKind::Phone => "13812345678".into(),
        FieldKind::Date => "2022-05-03".into(),
        FieldKind::Month => "2022-05".into(),
        FieldKind::Decimal { .. } => "12.5".into(),
        FieldKind::Integer { min, max } => min
            .unwrap_or(1)
            .max(1)
            .min(max.unwrap_or(i64::MAX))
            .to_string(),
        FieldKind::Enum { values } => values[0].clone(),
    }
}

/// A valid one-record water_fee batch of the county, distinct for each `i`.
fn sealed(i: usize, key: &NodeKey) -> SignedBatch {
    let schema = Registry::builtin().by_name("water_fee").unwrap();
    let mut row: Vec<String> = schema.fields.iter().map(|f| sample(&f.kind)).collect();
    row[schema.field_index("account_no").unwrap()] = format!("acct-{i}");
    let raw: Vec<Option<&str>> = row.iter().map(|v| Some(v.as_str())).collect();
    let record = schema
        .validate(&raw, period(), &DesensitizeKey([7; 32]))
        .unwrap()
        .record;
    let header = BatchHeader {
        format: BATCH_FORMAT,
        origin: child(),
        category: schema.category.clone(),
        schema_version: schema.version,
        period: period(),
        supersedes: None,
        withdrawals: vec![],
    };
    SignedBatch::seal(&Batch::new(header, vec![record]).unwrap(), key).unwrap()
}

/// The first `n` batches; all are built once and shared by the tests.
fn batches(n: usize) -> Vec<SignedBatch> {
    static ALL: OnceLock<Vec<SignedBatch>> = OnceLock::new();
    let all = ALL.get_or_init(|| {
        let key = county_key();
        (0..WANTED_MAX + 100).map(|i| sealed(i, &key)).collect()
    });
    all[..n].to_vec()
}

fn offer(signed: &SignedBatch) -> Offer {
    Offer {
        id: signed.id,
        origin: child(),
        category: Category::parse("water_fee").unwrap(),
        period: period(),
        bytes: signed.bytes.len() as u32,
    }
}

struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// Per-item fault probabilities.
#[derive(Debug, Clone, Copy, Default)]
struct Faults {
    loss: f64,
    dup: f64,
    /// An extra delay of up to [`JITTER_MS`], so later items overtake earlier ones.
    reorder: f64,
    /// A batch stream fails before it is handed to the network (`handle_send_failed`).
    send_fail: f64,
}

#[derive(Debug, Clone, Copy)]
enum Lane {
    /// Child → parent control stream.
    Up,
    /// Child → parent, one batch on a stream of its own.
    Stream,
    /// Parent → child control stream.
    Down,
}

struct Sim {
    seed: u64,
    faults: Faults,
    rng: SplitMix64,
    now: u64,
    window: usize,
    /// In-flight items by (delivery time, sequence number): encoded frames.
    net: BTreeMap<(u64, u64), (Lane, Vec<u8>)>,
    seq: u64,
    uplink: Uplink,
    outbox: BTreeMap<BatchId, SignedBatch>,
    receipts: BTreeMap<BatchId, SignedReceipt>,
    downlink: Downlink,
    key: NodeKey,
    county: PublicKey,
    store: BTreeMap<BatchId, (SignedBatch, SignedReceipt)>,
    /// Mirror of the downlink's outstanding wants: asked for and not yet arrived.
    wanted: BTreeSet<BatchId>,
    fresh: usize,
    duplicates: usize,
    rejections: Vec<Rejection>,
    offered: usize,
    max_in_flight: usize,
    max_wanted: usize,
}

impl Sim {
    fn new(seed: u64, faults: Faults, config: SyncConfig) -> Sim {
        let key = parent_key();
        Sim {
            seed,
            faults,
            rng: SplitMix64(seed),
            now: START_MS,
            window: config.window,
            net: BTreeMap::new(),
            seq: 0,
            uplink: Uplink::new(child(), parent(), key.public(), config),
            outbox: BTreeMap::new(),
            receipts: BTreeMap::new(),
            downlink: Downlink::new(child()),
            key,
            county: county_key().public(),
            store: BTreeMap::new(),
            wanted: BTreeSet::new(),
            fresh: 0,
            duplicates: 0,
            rejections: Vec::new(),
            offered: 0,
            max_in_flight: 0,
            max_wanted: 0,
        }
    }

    fn tag(&self) -> String {
        let t = self.now - START_MS;
        format!("seed {:#x}, {:?}, at +{t} ms", self.seed, self.faults)
    }

    fn add(&mut self, batches: &[SignedBatch]) {
        for b in batches {
            self.outbox.insert(b.id, b.clone());
        }
        let taken = self
            .uplink
            .handle_outbox(batches.iter().map(offer), self.now);
        assert_eq!(taken, batches.len(), "{}", self.tag());
        self.drain();
    }

    fn connect(&mut self, topology_version: u64) {
        self.uplink.handle_connected(topology_version, self.now);
        self.drain();
    }

    /// The connection drops: everything in flight is lost; the parent starts a new link.
    fn disconnect(&mut self) {
        self.net.clear();
        self.uplink.handle_disconnected();
        self.downlink = Downlink::new(child());
        self.wanted.clear();
        self.drain();
    }

    fn send(&mut self, lane: Lane, message: &Message) {
        if let Message::Offer { offers } = message {
            self.offered += offers.len();
        }
        let frame = message.encode();
        let copies = 1 + u64::from(self.rng.chance(self.faults.dup));
        for _ in 0..copies {
            if self.rng.chance(self.faults.loss) {
                continue;
            }
            let mut at = self.now + LATENCY_MS;
            if self.rng.chance(self.faults.reorder) {
                at += self.rng.next() % JITTER_MS;
            }
            self.seq += 1;
            self.net.insert((at, self.seq), (lane, frame.clone()));
        }
    }

    /// The driver contract: after any `handle_*`, drain both machines' outputs.
    fn drain(&mut self) {
        loop {
            let mut idle = true;
            while let Some(message) = self.uplink.poll_transmit() {
                idle = false;
                self.send(Lane::Up, &message);
            }
            while let Some(id) = self.uplink.poll_send() {
                idle = false;
                if self.rng.chance(self.faults.send_fail) {
                    self.uplink.handle_send_failed(id);
                    continue;
                }
                let signed = self.outbox.get(&id).cloned();
                let signed = signed.unwrap_or_else(|| panic!("{}: {id} not in outbox", self.tag()));
                self.send(Lane::Stream, &Message::Batch(signed));
                self.uplink.handle_batch_sent(id, self.now);
            }
            while let Some(event) = self.uplink.poll_event() {
                idle = false;
                if let UplinkEvent::Receipt(receipt) = event {
                    let id = receipt.receipt.batch;
                    assert!(receipt.verify(&self.key.public()), "{}: {id}", self.tag());
                    assert!(
                        self.outbox.remove(&id).is_some(),
                        "{}: {id} receipted twice",
                        self.tag()
                    );
                    self.receipts.insert(id, receipt);
                }
            }
            while let Some(message) = self.downlink.poll_transmit() {
                idle = false;
                if let Message::Want { ids } = &message {
                    self.wanted.extend(ids);
                }
                self.send(Lane::Down, &message);
            }
            let in_flight = self.uplink.in_flight_len();
            assert!(
                in_flight <= self.window,
                "{}: {in_flight} in flight",
                self.tag()
            );
            assert!(
                self.wanted.len() <= WANTED_MAX,
                "{}: {} wanted",
                self.tag(),
                self.wanted.len()
            );
            self.max_in_flight = self.max_in_flight.max(in_flight);
            self.max_wanted = self.max_wanted.max(self.wanted.len());
            if idle {
                return;
            }
        }
    }

    fn deliver(&mut self, lane: Lane, frame: &[u8]) {
        let limit = match lane {
            Lane::Stream => BATCH_FRAME_BYTES_MAX,
            Lane::Up | Lane::Down => FRAME_BYTES_MAX,
        };
        let (message, used) = wire::decode_frame(frame, limit).unwrap().unwrap();
        assert_eq!(used, frame.len(), "{}", self.tag());
        match (lane, message) {
            (Lane::Stream, Message::Batch(signed)) => self.arrive(signed),
            (Lane::Up, message) => {
                let store = &self.store;
                let held = |id: &BatchId| store.get(id).map(|(_, receipt)| receipt.clone());
                if let Err(e) = self.downlink.handle_message(message, held) {
                    panic!("{}: downlink: {e}", self.tag());
                }
            }
            (Lane::Down, message) => {
                if let Message::Receipts { receipts } = &message {
                    for r in receipts {
                        if let Some((_, held)) = self.store.get(&r.receipt.batch) {
                            assert_eq!(r, held, "{}: not the held receipt", self.tag());
                        }
                    }
                }
                if let Err(e) = self.uplink.handle_message(message, self.now) {
                    panic!("{}: uplink: {e}", self.tag());
                }
            }
            (lane, message) => panic!("{}: {message:?} on {lane:?}", self.tag()),
        }
        self.drain();
    }

    /// The parent's driver: a held batch is answered with its receipt, a new one is verified,
    /// stored and receipted, a refused one gets a `Rejected` receipt.
    fn arrive(&mut self, signed: SignedBatch) {
        self.downlink.handle_batch_arrived(&signed.id);
        self.wanted.remove(&signed.id);
        if let Some((_, held)) = self.store.get(&signed.id) {
            self.duplicates += 1;
            self.downlink.handle_decided(held.clone(), Vec::new());
            return;
        }
        let county = self.county;
        let origin_key = |origin: NodeId| (origin == child()).then_some(county);
        let (origin, verdict, problems) =
            match verify_incoming(&signed, origin_key, Registry::builtin()) {
                Ok(batch) => (
                    batch.header.origin,
                    Verdict::Accepted { warnings: 0 },
                    vec![],
                ),
                Err((rejection, problems)) => {
                    let verdict = rejection.verdict();
                    self.rejections.push(rejection);
                    (
                        signed.header().map_or(child(), |h| h.origin),
                        verdict,
                        problems,
                    )
                }
            };
        let receipt = Receipt {
            receiver: parent(),
            batch: signed.id,
            origin,
            received_at_ms: self.now,
            verdict,
        }
        .sign(&self.key);
        if let Verdict::Accepted { .. } = receipt.receipt.verdict {
            self.fresh += 1;
            self.store.insert(signed.id, (signed, receipt.clone()));
        }
        self.downlink.handle_decided(receipt, problems);
    }

    /// Advances virtual time event by event until `stop` holds or nothing is left to do;
    /// fails on a stall (batches in the outbox, nothing in flight, no timer) or at `limit_ms`.
    fn run(&mut self, limit_ms: u64, stop: impl Fn(&Sim) -> bool) {
        let limit = self.now + limit_ms;
        while !stop(self) {
            let arrival = self.net.keys().next().map(|(at, _)| *at);
            let Some(next) = arrival.into_iter().chain(self.uplink.poll_timeout()).min() else {
                let (left, pending) = (self.outbox.len(), self.uplink.pending_len());
                assert_eq!(left, 0, "{}: stalled, {pending} pending", self.tag());
                return;
            };
            assert!(
                next <= limit,
                "{}: {} left after {limit_ms} ms",
                self.tag(),
                self.outbox.len()
            );
            self.now = self.now.max(next);
            while let Some(item) = self.net.first_entry()
                && item.key().0 <= self.now
            {
                let (lane, frame) = item.remove();
                self.deliver(lane, &frame);
            }
            if self.uplink.poll_timeout().is_some_and(|at| at <= self.now) {
                self.uplink.handle_timeout(self.now);
                self.drain();
            }
        }
    }

    /// Every batch stored exactly once with the child holding the parent's verified receipt.
    fn assert_converged(&self, sent: &[SignedBatch]) {
        let tag = self.tag();
        assert!(
            self.outbox.is_empty(),
            "{tag}: {} left in the outbox",
            self.outbox.len()
        );
        assert_eq!(self.uplink.pending_len(), 0, "{tag}");
        assert_eq!(self.uplink.in_flight_len(), 0, "{tag}");
        assert_eq!(self.store.len(), sent.len(), "{tag}");
        assert_eq!(
            self.fresh,
            sent.len(),
            "{tag}: each batch verified and stored once"
        );
        for b in sent {
            let (held, receipt) = self
                .store
                .get(&b.id)
                .unwrap_or_else(|| panic!("{tag}: {}", b.id));
            assert_eq!(held, b, "{tag}");
            assert_eq!(
                self.receipts.get(&b.id),
                Some(receipt),
                "{tag}: child's receipt"
            );
            assert!(receipt.verify(&parent_key().public()), "{tag}");
            assert_eq!(
                receipt.receipt.verdict,
                Verdict::Accepted { warnings: 0 },
                "{tag}"
            );
        }
    }
}

#[test]
fn a_perfect_network_delivers_each_batch_once() {
    let all = batches(50);
    let mut sim = Sim::new(1, Faults::default(), SyncConfig::default());
    sim.add(&all);
    sim.connect(1);
    sim.run(HOUR_MS, |_| false);
    sim.assert_converged(&all);
    assert_eq!(sim.duplicates, 0, "nothing sent twice");
    assert_eq!(sim.offered, all.len(), "nothing offered twice");
    assert_eq!(
        sim.max_in_flight, sim.window,
        "the window was used, not exceeded"
    );
    assert!(
        sim.now - START_MS < 2_000,
        "no retry was needed: {} ms",
        sim.now - START_MS
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..Default::default() })]

    #[test]
    fn loss_duplication_and_reordering_converge(
        seed in any::<u64>(),
        loss in 0.0..0.3f64,
        dup in 0.0..0.3f64,
        reorder in 0.0..1.0f64,
        late in 0..30usize,
        added_at_ms in 0..60_000u64,
    ) {
        let all = batches(50);
        let faults = Faults { loss, dup, reorder, send_fail: 0.0 };
        let mut sim = Sim::new(seed, faults, SyncConfig { window: 8, retry_ms: 15_000 });
        sim.add(&all[late..]);
        sim.connect(1);
        sim.run(HOUR_MS, |s| s.now >= START_MS + added_at_ms);
        sim.add(&all[..late]);
        sim.run(HOUR_MS, |_| false);
        sim.assert_converged(&all);
        prop_assert!(sim.max_in_flight <= sim.window);
    }
}

#[test]
fn disconnects_mid_run_lose_nothing() {
    let all = batches(40);
    let faults = Faults {
        loss: 0.1,
        dup: 0.1,
        reorder: 0.3,
        send_fail: 0.0,
    };
    let mut sim = Sim::new(3, faults, SyncConfig::default());
    sim.add(&all[..30]);
    sim.connect(1);
    for (round, stored) in [10, 20].into_iter().enumerate() {
        sim.run(HOUR_MS, |s| s.store.len() >= stored);
        sim.disconnect();
        assert_eq!(sim.uplink.in_flight_len(), 0);
        assert_eq!(
            sim.uplink.poll_timeout(),
            None,
            "nothing waits on a dead link"
        );
        assert!(sim.uplink.pending_len() > 0, "disconnected mid-run");
        sim.now += 60_000;
        if round == 0 {
            sim.add(&all[30..]); // new batches while the link is down
        }
        sim.connect(2 + round as u64);
    }
    sim.run(HOUR_MS, |_| false);
    sim.assert_converged(&all);
}

#[test]
fn a_receipt_under_the_wrong_key_closes_the_link_and_keeps_the_batch() {
    let all = batches(3);
    let mut sim = Sim::new(4, Faults::default(), SyncConfig::default());
    sim.add(&all);
    sim.connect(1);
    sim.run(HOUR_MS, |s| s.store.len() == all.len()); // the receipts are on their way
    let id = *sim
        .outbox
        .keys()
        .next()
        .expect("receipts not yet delivered");
    let forged = Receipt {
        receiver: parent(),
        batch: id,
        origin: child(),
        received_at_ms: sim.now,
        verdict: Verdict::Accepted { warnings: 0 },
    }
    .sign(&NodeKey::from_seed([66; 32]));
    let result = sim.uplink.handle_message(
        Message::Receipts {
            receipts: vec![forged],
        },
        sim.now,
    );
    assert_eq!(
        result,
        Err(ProtocolError::BadReceiptSignature {
            peer: parent(),
            batch: id
        })
    );
    assert!(sim.uplink.is_pending(&id));
    assert_eq!(sim.uplink.poll_event(), None);
    sim.drain();
    assert!(sim.outbox.contains_key(&id));
    sim.run(HOUR_MS, |_| false);
    sim.assert_converged(&all);
}

#[test]
fn a_tampered_batch_is_rejected_and_the_rejection_is_final() {
    let mut all = batches(5);
    all[2].bytes[7] ^= 0x10;
    let tampered = all.remove(2);
    let mut sim = Sim::new(5, Faults::default(), SyncConfig::default());
    sim.add(&all);
    sim.add(std::slice::from_ref(&tampered));
    sim.connect(1);
    sim.run(HOUR_MS, |_| false);
    let [Rejection::Verify(VerifyError::HashMismatch { claimed, .. })] = &sim.rejections[..] else {
        panic!("{:?}", sim.rejections);
    };
    assert_eq!(*claimed, tampered.id);
    let receipt = &sim.receipts[&tampered.id].receipt;
    assert_eq!(receipt.verdict, sim.rejections[0].verdict());
    assert!(matches!(receipt.verdict, Verdict::Rejected { .. }));
    assert!(!sim.uplink.is_pending(&tampered.id));
    assert!(!sim.store.contains_key(&tampered.id));
    sim.receipts.remove(&tampered.id);
    sim.assert_converged(&all);
}

#[test]
fn wants_stay_bounded_and_the_rest_converge_by_retries() {
    let all = batches(WANTED_MAX + 100);
    let mut downlink = Downlink::new(child());
    for chunk in all.chunks(IDS_PER_FRAME_MAX) {
        let offers = chunk.iter().map(offer).collect();
        downlink
            .handle_message(Message::Offer { offers }, |_| None)
            .unwrap();
    }
    let mut wanted = BTreeSet::new();
    while let Some(message) = downlink.poll_transmit() {
        if let Message::Want { ids } = message {
            wanted.extend(ids);
        }
    }
    assert_eq!(wanted.len(), WANTED_MAX);

    let mut sim = Sim::new(6, Faults::default(), SyncConfig::default());
    sim.add(&all);
    sim.connect(1);
    sim.run(HOUR_MS, |_| false);
    sim.assert_converged(&all);
    assert_eq!(sim.max_wanted, WANTED_MAX);
    assert!(
        sim.offered > all.len(),
        "the unwanted rest were offered again"
    );
}

#[test]
fn failed_sends_are_offered_again() {
    let all = batches(20);
    let faults = Faults {
        send_fail: 0.3,
        ..Faults::default()
    };
    let mut sim = Sim::new(7, faults, SyncConfig::default());
    sim.add(&all);
    sim.connect(1);
    sim.run(HOUR_MS, |_| false);
    sim.assert_converged(&all);
}
