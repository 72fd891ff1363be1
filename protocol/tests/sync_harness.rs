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
use protocol::sync::{self, Downlink, ProtocolError, Rejection, SyncConfig, Uplink, UplinkEvent};
use protocol::wire::{self, Message, Offer, Receipt, SignedReceipt, Verdict};
use protocol::{Batch, BatchHeader, BatchId, Category, DesensitizeKey, NodeId, NodeKey, Period};
use protocol::{Registry, SignedBatch};

const START_MS: u64 = 1_700_000_000_000;
const HOUR_MS: u64 = 3_600_000;
const LATENCY_MS: u64 = 10;
/// Most extra delay of a reordered item.
const JITTER_MS: u64 = 400;
const COUNTY_SEED: [u8; 32] = [81; 32];
const PARENT_SEED: [u8; 32] = [200; 32];

fn node(code: u32) -> NodeId {
    NodeId::from_code(code).unwrap()
}

fn period() -> Period {
    Period::parse("2022-05").unwrap()
}

/// A valid one-record water_fee batch of county 445281, distinct for each `i`.
fn sealed(i: usize, key: &NodeKey) -> SignedBatch {
    let schema = Registry::builtin().by_name("water_fee").unwrap();
    let value = |kind: &FieldKind| match kind {
        FieldKind::Enum { values } => values[0].clone(),
        FieldKind::Text { .. } => "样例".into(),
        FieldKind::Uscc => "914403001922038216".into(),
        FieldKind::Month => "2022-05".into(),
        FieldKind::Decimal { .. } | FieldKind::Integer { .. } => "12".into(),
        _ => String::new(), // optional for an organization: id number, phone, dates
    };
    let mut row: Vec<String> = schema.fields.iter().map(|f| value(&f.kind)).collect();
    row[schema.field_index("account_no").unwrap()] = format!("acct-{i}");
    let raw: Vec<Option<&str>> = row.iter().map(|v| Some(v.as_str())).collect();
    let validated = schema
        .validate(&raw, period(), &DesensitizeKey([7; 32]))
        .unwrap();
    let header = BatchHeader {
        format: BATCH_FORMAT,
        origin: node(445_281),
        category: schema.category.clone(),
        schema_version: schema.version,
        period: period(),
        supersedes: None,
        withdrawals: vec![],
    };
    SignedBatch::seal(&Batch::new(header, vec![validated.record]).unwrap(), key).unwrap()
}

/// The first `n` batches, built once and shared by the tests.
fn batches(n: usize) -> Vec<SignedBatch> {
    static FEW: OnceLock<Vec<SignedBatch>> = OnceLock::new();
    static MANY: OnceLock<Vec<SignedBatch>> = OnceLock::new();
    let key = NodeKey::from_seed(COUNTY_SEED);
    let build = |n| (0..n).map(|i| sealed(i, &key)).collect();
    let all = match n {
        ..=64 => FEW.get_or_init(|| build(64)),
        _ => MANY.get_or_init(|| build(sync::WANTED_MAX + 10)),
    };
    all[..n].to_vec()
}

fn offer(signed: &SignedBatch) -> Offer {
    Offer {
        id: signed.id,
        origin: node(445_281),
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
    /// An extra delay of up to [`JITTER_MS`], so that later items overtake earlier ones.
    reorder: f64,
    /// A batch stream fails before it reaches the network (`handle_send_failed`).
    send_fail: f64,
}

/// Child → parent control stream, child → parent batch stream, parent → child control stream.
#[derive(Debug, Clone, Copy)]
enum Lane {
    Up,
    Stream,
    Down,
}

/// What the harness counts and keeps, besides the two machines.
#[derive(Default)]
struct Books {
    /// In flight, by (delivery time, sequence number): a lane and an encoded frame.
    net: BTreeMap<(u64, u64), (Lane, Vec<u8>)>,
    seq: u64,
    /// The child's outbox and receipts; the parent's store.
    outbox: BTreeMap<BatchId, SignedBatch>,
    receipts: BTreeMap<BatchId, SignedReceipt>,
    store: BTreeMap<BatchId, (SignedBatch, SignedReceipt)>,
    /// Mirror of the downlink's outstanding wants: asked for and not yet arrived.
    wanted: BTreeSet<BatchId>,
    rejections: Vec<Rejection>,
    /// Arrivals verified and stored, arrivals already held, offers sent (re-offers included).
    fresh: usize,
    duplicates: usize,
    offered: usize,
    max_in_flight: usize,
    max_wanted: usize,
}

struct Sim {
    seed: u64,
    faults: Faults,
    rng: SplitMix64,
    now: u64,
    window: usize,
    uplink: Uplink,
    downlink: Downlink,
    key: NodeKey,
    b: Books,
}

impl Sim {
    fn new(seed: u64, faults: Faults, config: SyncConfig) -> Sim {
        let key = NodeKey::from_seed(PARENT_SEED);
        let uplink = Uplink::new(node(445_281), node(445_200), key.public(), config);
        Sim {
            seed,
            faults,
            rng: SplitMix64(seed),
            now: START_MS,
            window: config.window,
            uplink,
            downlink: Downlink::new(node(445_281)),
            key,
            b: Books::default(),
        }
    }

    fn tag(&self) -> String {
        let t = self.now - START_MS;
        format!("seed {:#x}, {:?}, at +{t} ms", self.seed, self.faults)
    }

    fn add(&mut self, batches: &[SignedBatch]) {
        let outbox = batches.iter().map(|b| (b.id, b.clone()));
        self.b.outbox.extend(outbox);
        let offers = batches.iter().map(offer);
        let taken = self.uplink.handle_outbox(offers, self.now);
        assert_eq!(taken, batches.len(), "{}", self.tag());
        self.drain();
    }

    fn connect(&mut self, topology_version: u64) {
        self.uplink.handle_connected(topology_version, self.now);
        self.drain();
    }

    /// The connection drops: everything in flight is lost; the parent starts a new link.
    fn disconnect(&mut self) {
        self.b.net.clear();
        self.uplink.handle_disconnected();
        self.downlink = Downlink::new(node(445_281));
        self.b.wanted.clear();
        self.drain();
    }

    fn send(&mut self, lane: Lane, message: &Message) {
        if let Message::Offer { offers } = message {
            self.b.offered += offers.len();
        }
        let frame = message.encode();
        for _ in 0..1 + u8::from(self.rng.chance(self.faults.dup)) {
            if self.rng.chance(self.faults.loss) {
                continue;
            }
            let mut at = self.now + LATENCY_MS;
            if self.rng.chance(self.faults.reorder) {
                at += self.rng.next() % JITTER_MS;
            }
            self.b.seq += 1;
            self.b.net.insert((at, self.b.seq), (lane, frame.clone()));
        }
    }

    /// The driver contract: after any `handle_*`, drain both machines' outputs. One pass is
    /// enough: only `handle_send_failed` makes more output (more sends, drained in its loop).
    fn drain(&mut self) {
        while let Some(message) = self.uplink.poll_transmit() {
            self.send(Lane::Up, &message);
        }
        while let Some(id) = self.uplink.poll_send() {
            if self.rng.chance(self.faults.send_fail) {
                self.uplink.handle_send_failed(id, self.now);
                continue;
            }
            let signed = self.b.outbox.get(&id).cloned();
            let signed = signed.unwrap_or_else(|| panic!("{}: {id} not in outbox", self.tag()));
            self.send(Lane::Stream, &Message::Batch(signed));
            self.uplink.handle_batch_sent(id, self.now);
        }
        while let Some(event) = self.uplink.poll_event() {
            if let UplinkEvent::Receipt(receipt) = event {
                let id = receipt.receipt.batch;
                let known = self.b.outbox.remove(&id).is_some();
                assert!(known, "{}: {id} not in outbox", self.tag());
                self.b.receipts.insert(id, receipt);
            }
        }
        while let Some(message) = self.downlink.poll_transmit() {
            if let Message::Want { ids } = &message {
                self.b.wanted.extend(ids);
            }
            self.send(Lane::Down, &message);
        }
        let (in_flight, wanted) = (self.uplink.in_flight_len(), self.b.wanted.len());
        assert!(in_flight <= self.window, "{}", self.tag());
        assert!(wanted <= sync::WANTED_MAX, "{}", self.tag());
        self.b.max_in_flight = self.b.max_in_flight.max(in_flight);
        self.b.max_wanted = self.b.max_wanted.max(wanted);
    }

    /// A frame reaches its peer, through the wire codec.
    fn deliver(&mut self, lane: Lane, frame: &[u8]) {
        let limit = match lane {
            Lane::Stream => wire::BATCH_FRAME_BYTES_MAX,
            Lane::Up | Lane::Down => wire::FRAME_BYTES_MAX,
        };
        let (message, used) = wire::decode_frame(frame, limit).unwrap().unwrap();
        assert_eq!(used, frame.len(), "{}", self.tag());
        match (lane, message) {
            (Lane::Stream, Message::Batch(signed)) => self.arrive(signed),
            (Lane::Up, message) => {
                let store = &self.b.store;
                let held = |id: &BatchId| store.get(id).map(|(_, receipt)| receipt.clone());
                let result = self.downlink.handle_message(message, held);
                result.unwrap_or_else(|e| panic!("{}: downlink: {e}", self.tag()));
            }
            (Lane::Down, message) => {
                if let Message::Receipts { receipts } = &message {
                    for r in receipts {
                        let held = self.b.store.get(&r.receipt.batch).map(|(_, held)| held);
                        assert!(held.is_none_or(|h| h == r), "{}: not held", self.tag());
                    }
                }
                let result = self.uplink.handle_message(message, self.now);
                result.unwrap_or_else(|e| panic!("{}: uplink: {e}", self.tag()));
            }
            (lane, message) => panic!("{}: {message:?} on {lane:?}", self.tag()),
        }
        self.drain();
    }

    /// The parent's driver: a held batch is answered with its receipt; a new one is verified,
    /// stored and receipted; a refused one gets a `Rejected` receipt and is not stored.
    fn arrive(&mut self, signed: SignedBatch) {
        self.downlink.handle_batch_arrived(&signed.id);
        self.b.wanted.remove(&signed.id);
        if let Some((_, held)) = self.b.store.get(&signed.id) {
            self.b.duplicates += 1;
            self.downlink.handle_decided(held.clone(), Vec::new(), None);
            return;
        }
        let county = NodeKey::from_seed(COUNTY_SEED).public();
        let origin_key = |origin: NodeId| (origin == node(445_281)).then_some(county);
        let (origin, verdict, problems) =
            match sync::verify_incoming(&signed, origin_key, Registry::builtin()) {
                Ok(batch) => (
                    batch.header.origin,
                    Verdict::Accepted { warnings: 0 },
                    vec![],
                ),
                Err((rejection, problems)) => {
                    let verdict = rejection.verdict();
                    self.b.rejections.push(rejection);
                    let origin = signed.header().map_or(node(445_281), |h| h.origin);
                    (origin, verdict, problems)
                }
            };
        let receipt = Receipt {
            receiver: node(445_200),
            batch: signed.id,
            origin,
            received_at_ms: self.now,
            verdict,
        }
        .sign(&self.key);
        if let Verdict::Accepted { .. } = receipt.receipt.verdict {
            self.b.fresh += 1;
            self.b.store.insert(signed.id, (signed, receipt.clone()));
        }
        self.downlink.handle_decided(receipt, problems, None);
    }

    /// Advances virtual time to each next delivery or timer until `stop` holds or nothing is
    /// left to do; fails on a stall (outbox not empty, nothing in flight, no timer) or when
    /// more than `limit_ms` would pass.
    fn run(&mut self, limit_ms: u64, stop: impl Fn(&Sim) -> bool) {
        let limit = self.now + limit_ms;
        while !stop(self) {
            let arrival = self.b.net.keys().next().map(|(at, _)| *at);
            let Some(next) = arrival.into_iter().chain(self.uplink.poll_timeout()).min() else {
                let (left, pending) = (self.b.outbox.len(), self.uplink.pending_len());
                assert_eq!(left, 0, "{}: stalled, {pending} pending", self.tag());
                return;
            };
            assert!(next <= limit, "{}: not converged", self.tag());
            self.now = self.now.max(next);
            while let Some(item) = self.b.net.first_entry()
                && item.key().0 <= self.now
            {
                let (lane, frame) = item.remove();
                self.deliver(lane, &frame);
            }
            if self.uplink.poll_timeout().is_some_and(|at| at <= self.now) {
                self.uplink.handle_timeout(self.now);
                self.drain();
                let rearmed = self.uplink.poll_timeout().is_none_or(|at| at > self.now);
                assert!(rearmed, "{}: timer not re-armed", self.tag());
            }
        }
    }

    /// Every batch verified and stored once, nothing left, and the child holds the parent's
    /// receipt for each, signed by the parent's key.
    fn assert_converged(&self, sent: &[SignedBatch]) {
        let tag = self.tag();
        assert_eq!(self.b.outbox.len(), 0, "{tag}");
        assert_eq!(self.uplink.pending_len(), 0, "{tag}");
        assert_eq!(self.uplink.in_flight_len(), 0, "{tag}");
        assert_eq!(self.b.store.len(), sent.len(), "{tag}");
        assert_eq!(self.b.fresh, sent.len(), "{tag}: stored twice?");
        for b in sent {
            let (held, receipt) = &self.b.store.get(&b.id).unwrap_or_else(|| panic!("{tag}"));
            assert_eq!(held, b, "{tag}");
            assert_eq!(self.b.receipts.get(&b.id), Some(receipt), "{tag}");
            assert!(receipt.verify(&self.key.public()), "{tag}");
            assert!(matches!(receipt.receipt.verdict, Verdict::Accepted { .. }));
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
    assert_eq!(sim.b.duplicates, 0, "nothing sent twice");
    assert_eq!(sim.b.offered, all.len(), "nothing offered twice");
    assert_eq!(sim.b.max_in_flight, sim.window, "the window filled");
    assert!(sim.now < START_MS + 2_000, "no retry was needed");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..Default::default() })]

    #[test]
    fn loss_duplication_and_reordering_converge(
        seed in any::<u64>(),
        (loss, dup, reorder, send_fail) in (0.0..0.3f64, 0.0..0.3f64, 0.0..1.0f64, 0.0..0.2f64),
        window in 1..=8usize,
        (n, late) in (1..=50usize).prop_flat_map(|n| (Just(n), 0..=n)),
        added_at_ms in 0..60_000u64,
    ) {
        let all = batches(n);
        let faults = Faults { loss, dup, reorder, send_fail };
        let mut sim = Sim::new(seed, faults, SyncConfig { window, retry_ms: 15_000 });
        sim.add(&all[late..]);
        sim.connect(1);
        sim.run(HOUR_MS, |s| s.now >= START_MS + added_at_ms);
        sim.add(&all[..late]); // more batches enter the outbox mid-run
        sim.run(HOUR_MS, |_| false);
        sim.assert_converged(&all);
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
        sim.run(HOUR_MS, |s| s.b.store.len() >= stored);
        assert!(sim.uplink.pending_len() > 0, "disconnected mid-run");
        sim.disconnect();
        assert_eq!(sim.uplink.in_flight_len(), 0);
        assert_eq!(sim.uplink.poll_timeout(), None, "no timer on a dead link");
        sim.now += 60_000;
        if round == 0 {
            sim.add(&all[30..]); // batches enter the outbox while the link is down
        }
        sim.connect(2 + round as u64);
    }
    sim.run(HOUR_MS, |_| false);
    sim.assert_converged(&all);
}

#[test]
fn a_receipt_under_the_wrong_key_is_refused_and_the_batch_stays_pending() {
    let all = batches(3);
    let mut sim = Sim::new(4, Faults::default(), SyncConfig::default());
    sim.add(&all);
    sim.connect(1);
    sim.run(HOUR_MS, |s| s.b.store.len() == all.len()); // the receipts are on their way
    let batch = *sim.b.outbox.keys().next().expect("receipts delivered");
    // The parent's own receipt, signed by another key.
    let forged = sim.b.store[&batch].1.receipt.clone();
    let receipts = vec![forged.sign(&NodeKey::from_seed([66; 32]))];
    let result = sim
        .uplink
        .handle_message(Message::Receipts { receipts }, sim.now);
    let error = ProtocolError::BadReceiptSignature {
        peer: node(445_200),
        batch,
    };
    assert_eq!(result, Err(error));
    assert!(sim.uplink.is_pending(&batch));
    assert_eq!(sim.uplink.poll_event(), None);
    sim.drain();
    assert!(sim.b.outbox.contains_key(&batch));
    sim.run(HOUR_MS, |_| false); // the parent's own receipt still completes it
    sim.assert_converged(&all);
}

#[test]
fn a_tampered_batch_is_rejected_and_the_rejection_is_final() {
    let mut all = batches(5);
    let mut tampered = all.remove(2);
    tampered.bytes[7] ^= 0x10;
    let mut sim = Sim::new(5, Faults::default(), SyncConfig::default());
    sim.add(&all);
    sim.add(std::slice::from_ref(&tampered));
    sim.connect(1);
    sim.run(HOUR_MS, |_| false);
    let [Rejection::Verify(VerifyError::HashMismatch { claimed, .. })] = &sim.b.rejections[..]
    else {
        panic!("{:?}", sim.b.rejections);
    };
    assert_eq!(*claimed, tampered.id);
    let receipt = sim.b.receipts.remove(&tampered.id).expect("an event");
    let verdict = receipt.receipt.verdict;
    assert!(matches!(verdict, Verdict::Rejected { .. }), "{verdict:?}");
    assert_eq!(verdict, sim.b.rejections[0].verdict());
    assert!(!sim.uplink.is_pending(&tampered.id));
    assert!(!sim.b.store.contains_key(&tampered.id));
    sim.assert_converged(&all);
}

/// Offers beyond WANTED_MAX get no want; they are offered again after `retry_ms`, wanted
/// once arrivals free slots, and everything converges.
#[test]
fn wants_stay_bounded_and_the_rest_converge_by_retries() {
    let all = batches(sync::WANTED_MAX + 10);
    let mut sim = Sim::new(6, Faults::default(), SyncConfig::default());
    sim.add(&all);
    sim.connect(1);
    sim.run(HOUR_MS, |_| false);
    sim.assert_converged(&all);
    assert_eq!(sim.b.max_wanted, sync::WANTED_MAX);
    assert!(sim.b.offered > all.len(), "the rest were offered again");
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

#[test]
fn a_late_offer_of_a_refused_batch_leaves_no_want_behind() {
    let mut tampered = batches(1).remove(0);
    tampered.bytes[7] ^= 0x10;
    let mut sim = Sim::new(8, Faults::default(), SyncConfig::default());
    sim.add(std::slice::from_ref(&tampered));
    sim.connect(1);
    sim.run(HOUR_MS, |_| false); // refused; the Rejected receipt is final
    let late = Message::Offer {
        offers: vec![offer(&tampered)],
    }
    .encode();
    sim.deliver(Lane::Up, &late); // a reordered duplicate of the first offer
    sim.run(HOUR_MS, |_| false);
    assert!(
        sim.b.wanted.is_empty(),
        "the parent waits forever for {:?}",
        sim.b.wanted
    );
}
