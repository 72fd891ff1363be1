//! The core's guarantees, one input at a time: acknowledgements wait for durability, the path
//! is up only when the parent answers, migration windows run on monotonic time, and the core
//! does no IO.

use std::sync::Arc;

use protocol::wire::{Message, Receipt, SignedReceipt, Verdict};
use protocol::{Ed25519, NodeId, NodeKey, Period, SignedBatch};
use topology::{LegacyLink, Node as TopologyNode, Role, Topology};

use super::*;
use crate::store::{AuditEvent, FeedbackItem, MemKv, Store};

fn id(text: &str) -> NodeId {
    NodeId::parse(text).unwrap()
}

fn key(node: NodeId) -> NodeKey {
    NodeKey::from_seed(blake3::derive_key("core test key", &node.to_be_bytes()))
}

const NATIONAL: &str = "000000";
const PROVINCE: &str = "440000";
const CITY: &str = "445200";
const COUNTY: &str = "445281";

fn topology(version: u64, legacy: Option<LegacyLink>) -> Arc<Topology> {
    let node = |text: &str, role, parent: Option<&str>, port| TopologyNode {
        id: id(text),
        name: text.into(),
        role,
        parent: parent.map(id),
        address: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        public_key: key(id(text)).public(),
    };
    let nodes = vec![
        node(NATIONAL, Role::National, None, 1),
        node(PROVINCE, Role::Province, Some(NATIONAL), 2),
        node(CITY, Role::City, Some(PROVINCE), 3),
        node(COUNTY, Role::County, Some(CITY), 4),
    ];
    Arc::new(
        Topology::from_parts(
            version,
            nodes,
            legacy.into_iter().collect(),
            Vec::new(),
            Vec::new(),
        )
        .unwrap(),
    )
}

fn core(node: &str, topology: Arc<Topology>, kv: MemKv) -> Core<MemKv> {
    Core::new(
        Box::new(key(id(node))),
        Box::new(Ed25519),
        topology,
        Store::new(kv),
        CoreConfig::default(),
        now(0),
    )
    .unwrap()
}

fn now(mono_ms: u64) -> Now {
    Now {
        mono_ms,
        wall_ms: 1_800_000_000_000 + mono_ms,
    }
}

fn county_batch() -> SignedBatch {
    county_batch_of("2026-05")
}

fn county_batch_of(period: &str) -> SignedBatch {
    batch_of(COUNTY, period)
}

/// Three water-fee records of `origin` for `period`, signed by `origin`.
fn batch_of(origin: &str, period: &str) -> SignedBatch {
    batch_leaving_out(origin, period, &[])
}

/// [`batch_of`], its origin leaving out the fields `left_out`.
fn batch_leaving_out(origin: &str, period: &str, left_out: &[String]) -> SignedBatch {
    let schema = protocol::Registry::builtin().by_name("water_fee").unwrap();
    let origin = id(origin);
    let period = Period::parse(period).unwrap();
    let file = sample::sample_csv(schema, origin, period, 3, 0, 1);
    let options = crate::ingest::IngestOptions {
        schema,
        origin,
        period,
        encoding: crate::ingest::Encoding::Utf8,
        desensitize_key: &protocol::DesensitizeKey([1; 32]),
        node_key: &key(origin),
        batch_records_max: 100,
        left_out,
    };
    crate::ingest::ingest_bytes(
        std::path::Path::new("t.csv"),
        file.text.as_bytes(),
        &options,
        |_| {},
    )
    .unwrap()
    .batches
    .remove(0)
}

/// `child`'s link to `core` comes up (it dialled in with its pinned key).
fn link_from(core: &mut Core<MemKv>, link: LinkId, child: &str, at: Now) {
    core.handle_link_up(
        link,
        LinkKind::Down {
            key: key(id(child)).public(),
        },
        at,
    )
    .unwrap();
}

/// The uplink to `parent` comes up and the parent's Hello arrives: the path is up.
fn path_up(
    core: &mut Core<MemKv>,
    link: LinkId,
    parent: &str,
    topology_version: u64,
    up_at: Now,
    hello_at: Now,
) {
    core.handle_link_up(link, LinkKind::Up(Route::Parent), up_at)
        .unwrap();
    let hello = Message::Hello {
        node: id(parent),
        wire_version: protocol::wire::WIRE_VERSION,
        topology_version,
    };
    core.handle_message(link, hello, hello_at).unwrap();
}

fn drain(core: &mut Core<MemKv>) -> Vec<Output> {
    std::iter::from_fn(|| core.poll_output()).collect()
}

fn receipts_in(outputs: &[Output]) -> Vec<SignedReceipt> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Transmit {
                message: Message::Receipts { receipts },
                ..
            } => Some(receipts.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

fn sync_upto(outputs: &[Output]) -> Option<u64> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Sync { upto } => Some(*upto),
            _ => None,
        })
        .max()
}

/// A city core with the county's link up.
fn city_with_county() -> (Core<MemKv>, MemKv, LinkId) {
    let kv = MemKv::new();
    let mut city = core(CITY, topology(1, None), kv.clone());
    let link = LinkId(7);
    link_from(&mut city, link, COUNTY, now(1));
    drain(&mut city);
    (city, kv, link)
}

#[test]
fn a_receipt_waits_until_the_batch_is_durable_even_for_a_duplicate_or_a_reoffer() {
    let (mut city, kv, link) = city_with_county();
    let batch = county_batch();
    city.handle_batch(link, batch.clone(), None, now(2))
        .unwrap();
    let outputs = drain(&mut city);
    assert!(
        receipts_in(&outputs).is_empty(),
        "no receipt before the write is durable"
    );
    let upto = sync_upto(&outputs).expect("the core asks for a sync");
    // The same batch again on a second stream, and a re-offer, while the write is in flight.
    city.handle_batch(link, batch.clone(), None, now(3))
        .unwrap();
    let offer = Message::Offer {
        offers: vec![protocol::wire::Offer {
            id: batch.id,
            origin: id(COUNTY),
            category: protocol::Category::parse("water_fee").unwrap(),
            period: Period::parse("2026-05").unwrap(),
            bytes: batch.bytes.len() as u32,
        }],
    };
    city.handle_message(link, offer.clone(), now(4)).unwrap();
    let outputs = drain(&mut city);
    assert!(
        receipts_in(&outputs).is_empty(),
        "a held but not yet durable batch is not receipted: {outputs:?}"
    );
    assert!(
        outputs.iter().any(|o| matches!(
            o,
            Output::Transmit {
                message: Message::Want { .. },
                ..
            }
        )),
        "the re-offer is answered with a want, not a receipt"
    );
    kv.sync().unwrap();
    city.handle_durable(upto, now(5));
    let receipts = receipts_in(&drain(&mut city));
    assert_eq!(
        receipts.len(),
        2,
        "both deliveries are receipted once durable"
    );
    assert!(
        receipts
            .iter()
            .all(|r| r.receipt.batch == batch.id && r.verify(&key(id(CITY)).public()))
    );
    // Now durable: a re-offer gets the stored receipt at once.
    city.handle_message(link, offer, now(6)).unwrap();
    assert_eq!(receipts_in(&drain(&mut city)).len(), 1);
}

#[test]
fn relayed_receipts_are_acknowledged_upstream_only_once_durable() {
    // The city holds the county's batch; the province relays the national receipt for it.
    let (mut city, kv, down) = city_with_county();
    let batch = county_batch();
    city.handle_batch(down, batch.clone(), None, now(2))
        .unwrap();
    let upto = sync_upto(&drain(&mut city)).unwrap();
    kv.sync().unwrap();
    city.handle_durable(upto, now(3));
    drain(&mut city);
    // The city dialed its parent when it started; the dial succeeds now.
    let up = LinkId(8);
    path_up(&mut city, up, PROVINCE, 1, now(201), now(202));
    drain(&mut city);
    let national = Receipt {
        receiver: NodeId::NATIONAL,
        batch: batch.id,
        origin: id(COUNTY),
        received_at_ms: 1,
        verdict: Verdict::Accepted { warnings: 0 },
    }
    .sign(&key(NodeId::NATIONAL));
    city.handle_message(
        up,
        Message::UpstreamReceipts {
            receipts: vec![national],
        },
        now(203),
    )
    .unwrap();
    let outputs = drain(&mut city);
    let stored = |outputs: &[Output]| {
        outputs.iter().any(|o| {
            matches!(
                o,
                Output::Transmit {
                    message: Message::UpstreamStored { .. },
                    ..
                }
            )
        })
    };
    assert!(
        !stored(&outputs),
        "UpstreamStored before the relayed receipt is durable: {outputs:?}"
    );
    let upto = sync_upto(&outputs).unwrap();
    kv.sync().unwrap();
    city.handle_durable(upto, now(204));
    assert!(stored(&drain(&mut city)), "acknowledged once durable");
}

#[test]
fn a_path_is_up_only_when_the_parent_answers() {
    let kv = MemKv::new();
    let mut county = core(COUNTY, topology(1, None), kv.clone());
    let route = drain(&mut county)
        .into_iter()
        .find_map(|o| match o {
            Output::Dial { route, .. } => Some(route),
            _ => None,
        })
        .expect("dials at once");
    // The dial "succeeds" but the parent refuses the certificate: the link drops unanswered.
    county
        .handle_link_up(LinkId(1), LinkKind::Up(route), now(1))
        .unwrap();
    county
        .handle_link_down(LinkId(1), "refused", now(2))
        .unwrap();
    let paths = |kv: &MemKv| {
        Store::new(kv.clone())
            .audit_entries()
            .filter_map(Result::ok)
            .filter(|e| matches!(e.event, AuditEvent::Path { .. }))
            .count()
    };
    assert_eq!(paths(&kv), 0, "a refused handshake is no path");
    assert!(county.links().iter().all(|l| !l.connected));
    county.handle_timeout(now(5_000)).unwrap();
    drain(&mut county);
    county
        .handle_link_up(LinkId(2), LinkKind::Up(route), now(5_001))
        .unwrap();
    county
        .handle_message(
            LinkId(2),
            Message::Hello {
                node: id(CITY),
                wire_version: protocol::wire::WIRE_VERSION,
                topology_version: 1,
            },
            now(5_002),
        )
        .unwrap();
    assert_eq!(paths(&kv), 1, "the parent's Hello makes the path up");
    assert!(county.links().iter().any(|l| l.connected));
}

#[test]
fn migration_windows_run_on_monotonic_time_not_the_wall_clock() {
    let legacy = LegacyLink {
        migrate: true,
        verify_window_s: 60,
        rollback_window_s: 300,
        ..LegacyLink::new(id(COUNTY))
    };
    let kv = MemKv::new();
    let mut county = core(COUNTY, topology(2, Some(legacy)), kv);
    assert_eq!(county.migration_phase(), Some(Phase::Establish));
    let dials: Vec<Route> = drain(&mut county)
        .into_iter()
        .filter_map(|o| match o {
            Output::Dial { route, .. } => Some(route),
            _ => None,
        })
        .collect();
    assert_eq!(
        dials,
        [Route::Parent, Route::Legacy],
        "establish: both paths"
    );
    path_up(&mut county, LinkId(1), CITY, 2, now(101), now(102));
    assert_eq!(county.migration_phase(), Some(Phase::Verify));
    // The wall clock jumps a day ahead; monotonic time moves 1 s. Nothing may cut over.
    let jumped = Now {
        mono_ms: 1_102,
        wall_ms: now(1_102).wall_ms + 86_400_000,
    };
    county.handle_timeout(jumped).unwrap();
    assert_eq!(
        county.migration_phase(),
        Some(Phase::Verify),
        "a wall-clock step is not time passing"
    );
    // The window passes in monotonic time: cut over (nothing was delivered, so coverage holds).
    let deadline = county.poll_timeout().unwrap();
    assert!(
        deadline <= 102 + 60_000,
        "the verify window is armed as a timer: {deadline}"
    );
    county.handle_timeout(now(102 + 60_000)).unwrap();
    assert_eq!(county.migration_phase(), Some(Phase::CutOver));
}

#[test]
fn the_core_does_no_io() {
    // Every file of the core, read as text: none may name a runtime, a socket, a file, a
    // clock or OS randomness.
    let forbidden = [
        "tokio",
        "quinn",
        "sled",
        "std::fs",
        "std::net::Udp",
        "std::net::Tcp",
        "SystemTime",
        "Instant",
        "getrandom",
        "rand::",
        "std::thread",
        "std::io::",
        "File::",
    ];
    // The core's directory and its modules' directories (`quality/`), every file in them.
    let mut dirs = vec![std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/core")];
    let mut files = Vec::new();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    let mut checked = 0;
    for path in files {
        if path.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for word in forbidden {
            let uses: Vec<&str> = text
                .lines()
                .filter(|l| !l.trim_start().starts_with("//") && l.contains(word))
                .collect();
            assert!(uses.is_empty(), "{} uses {word}: {uses:?}", path.display());
        }
        checked += 1;
    }
    assert!(
        checked >= 8,
        "read the core's files, in its modules' directories too (found {checked})"
    );
}

/// The city dates a county's batch by its own receipt and sends that receipt up with the
/// batch; the province keeps it as the proof of first arrival, and ignores a forged one.
#[test]
fn the_first_parents_receipt_travels_up_with_the_batch_and_a_forged_one_is_ignored() {
    let (mut city, city_kv, down) = city_with_county();
    let batch = county_batch();
    city.handle_batch(down, batch.clone(), None, now(2))
        .unwrap();
    let meta = Store::new(city_kv.clone())
        .meta(&batch.id)
        .unwrap()
        .unwrap();
    assert_eq!(
        meta.first,
        Some(id(CITY)),
        "the city received it from its origin"
    );

    // The city's uplink: the province answers, wants the batch, and the city sends it with
    // its own receipt as the proof.
    let up = LinkId(9);
    drain(&mut city);
    path_up(&mut city, up, PROVINCE, 1, now(3), now(4));
    city.handle_message(
        up,
        Message::Want {
            ids: vec![batch.id],
        },
        now(5),
    )
    .unwrap();
    let sent: Vec<Option<SignedReceipt>> = drain(&mut city)
        .into_iter()
        .filter_map(|o| match o {
            Output::SendBatch {
                id, first_receipt, ..
            } if id == batch.id => Some(first_receipt),
            _ => None,
        })
        .collect();
    assert_eq!(sent.len(), 1, "the wanted batch is sent once");
    let first = sent[0]
        .clone()
        .expect("sent with the proof of first arrival");
    assert_eq!(first.receipt.receiver, id(CITY));
    assert_eq!(first.receipt.received_at_ms, now(2).wall_ms);

    // The province keeps the proof.
    let province_kv = MemKv::new();
    let mut province = core(PROVINCE, topology(1, None), province_kv.clone());
    let from_city = LinkId(11);
    link_from(&mut province, from_city, CITY, now(6));
    province
        .handle_batch(from_city, batch.clone(), Some(first.clone()), now(7))
        .unwrap();
    let store = Store::new(province_kv.clone());
    assert_eq!(
        store.meta(&batch.id).unwrap().unwrap().first,
        Some(id(CITY))
    );
    assert_eq!(
        store.receipt(&batch.id, id(CITY)).unwrap(),
        Some(first.clone())
    );
    assert_eq!(
        store.first_receipt(&batch.id, id(PROVINCE)).unwrap(),
        Some(first.clone()),
        "and sends it on to the national platform"
    );

    // A proof back-dated by anyone but the city (here the county signs it) is ignored.
    let other = county_batch_of("2026-06");
    let mut forged = first.clone();
    forged.receipt.batch = other.id;
    forged.receipt.received_at_ms = 1;
    let forged = forged.receipt.sign_with(&key(id(COUNTY)));
    province
        .handle_batch(from_city, other.clone(), Some(forged), now(8))
        .unwrap();
    assert_eq!(store.meta(&other.id).unwrap().unwrap().first, None);
    assert_eq!(store.receipt(&other.id, id(CITY)).unwrap(), None);
}

fn schedule_topology() -> Arc<Topology> {
    let plain = topology(1, None);
    let schedules = vec![topology::Schedule::new(
        protocol::Category::parse("water_fee").unwrap(),
        protocol::schema::Cadence::Monthly,
        10,
        Vec::new(),
    )];
    Arc::new(
        Topology::from_parts(
            1,
            plain.nodes().cloned().collect(),
            Vec::new(),
            Vec::new(),
            schedules,
        )
        .unwrap(),
    )
}

fn at_wall(wall_ms: u64) -> Now {
    Now {
        mono_ms: 10,
        wall_ms,
    }
}

/// The city's ledger judges the county's reports by the city's own receipts: on time but
/// short of the declared total, late by the days after the deadline, and missing.
#[test]
fn the_ledger_dates_reports_by_the_first_parents_receipt() {
    let water = protocol::Category::parse("water_fee").unwrap();
    let day = 86_400_000;
    let may = Period::parse("2026-05").unwrap();
    let june = Period::parse("2026-06").unwrap();
    let july = Period::parse("2026-07").unwrap();
    let cadence = protocol::schema::Cadence::Monthly;
    let due_may = ledger::due_ms(may, cadence, 10);
    let due_june = ledger::due_ms(june, cadence, 10);

    // The county's clock says everything was early: the ledger must not care.
    let mut county = core(COUNTY, schedule_topology(), MemKv::new());
    let data = county_batch_of("2026-05");
    county.submit(data.clone(), at_wall(0)).unwrap();
    let (may_manifest, _) = county
        .close_period(&water, may, Some(10), at_wall(0))
        .unwrap();
    let (june_manifest, _) = county.close_period(&water, june, None, at_wall(0)).unwrap();
    let stored = |id| county.store().batch(&id).unwrap().unwrap();
    let (may_manifest, june_manifest) = (stored(may_manifest), stored(june_manifest));
    let summary = may_manifest.summary().unwrap();
    assert!(summary.is_manifest());

    let city_kv = MemKv::new();
    let mut city = core(CITY, schedule_topology(), city_kv);
    let down = LinkId(3);
    link_from(&mut city, down, COUNTY, at_wall(1));
    city.handle_batch(down, data, None, at_wall(due_may - 2 * day))
        .unwrap();
    city.handle_batch(down, may_manifest, None, at_wall(due_may - day))
        .unwrap();
    city.handle_batch(down, june_manifest, None, at_wall(due_june + 2 * day + 5))
        .unwrap();

    let judged_at = at_wall(ledger::due_ms(july, cadence, 10) + 1);
    let entry = |period| {
        let mut entries = city.ledger(period, None, judged_at).unwrap();
        assert_eq!(entries.len(), 1, "one county owes water fees");
        entries.remove(0)
    };
    let may_entry = entry(may);
    assert_eq!(may_entry.state, ledger::State::ConcealmentSuspected);
    assert_eq!(
        may_entry.late_days, None,
        "arrived a day before the deadline"
    );
    assert_eq!(may_entry.arrived_ms, Some(due_may - day));
    assert_eq!(
        (may_entry.records_delivered, may_entry.records_declared),
        (3, Some(10))
    );

    let june_entry = entry(june);
    assert_eq!(
        june_entry.late_days,
        Some(3),
        "two days and a bit: the third day started"
    );
    assert!(june_entry.nil, "a nil report");
    // Nothing after a month of three records: a drop below half the trailing average.
    assert_eq!(june_entry.state, ledger::State::ConcealmentSuspected);
    assert!(
        june_entry
            .concealment
            .as_deref()
            .unwrap()
            .contains("average 3"),
        "{june_entry:?}"
    );

    let july_entry = entry(july);
    assert_eq!(july_entry.state, ledger::State::Missing);
    assert!(july_entry.missing);

    // Before July's deadline, July is pending, not missing.
    let early = city
        .ledger(july, None, at_wall(ledger::due_ms(july, cadence, 10) - 1))
        .unwrap();
    assert_eq!(early[0].state, ledger::State::Pending);
}

/// The ledger counts the records a report delivered (each key once, over a republication and
/// a correction) from what the store recorded with each batch, reading none of them back; a
/// batch lost and received again leaves its period's counts unknown, and the ledger reads
/// the batches' keys, with the same result.
#[test]
fn the_ledger_counts_a_reports_records_without_reading_its_batches() {
    let may = Period::parse("2026-05").unwrap();
    let cadence = protocol::schema::Cadence::Monthly;
    let city_kv = MemKv::new();
    let mut city = core(CITY, schedule_topology(), city_kv.clone());
    let down = LinkId(3);
    link_from(&mut city, down, COUNTY, at_wall(1));
    let first = county_batch_of("2026-05");
    // Two of the first's records published again, beside one of a new account.
    let again = county_variant(&first, |batch| {
        batch.records.truncate(2);
        let mut other = batch.records[0].clone();
        set(&mut other, "account_no", "AC99999999");
        other.key = protocol::RecordKey("AC99999999|2026-05".into());
        batch.records.push(other);
    });
    // A correction of the first's first record.
    let correction = county_variant(&first, |batch| {
        batch.header.supersedes = Some(first.id);
        batch.records.truncate(1);
    });
    let at = at_wall(ledger::due_ms(may, cadence, 10) - 1);
    for batch in [&first, &again, &correction] {
        city.handle_batch(down, batch.clone(), None, at).unwrap();
    }
    for batch in [&first, &again, &correction] {
        assert!(city.store().holds(&batch.id).unwrap(), "held");
    }
    let judged = ledger::due_ms(may, cadence, 10) + 1;
    let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counting = Store::new(crate::store::CountingKv(city_kv.clone(), reads.clone()));
    let judge = || {
        let before = reads.load(std::sync::atomic::Ordering::Relaxed);
        let entries = ledger::ledger(
            &counting,
            &schedule_topology(),
            id(CITY),
            may,
            None,
            judged,
            ledger::LedgerConfig::default(),
        )
        .unwrap();
        let read = reads.load(std::sync::atomic::Ordering::Relaxed) - before;
        assert_eq!(entries.len(), 1, "one county owes water fees");
        (entries[0].records_delivered, entries[0].state, read)
    };
    assert_eq!(judge(), (4, ledger::State::OnTime, 0));

    assert!(city.store().forget_batch(&first.id).unwrap());
    city.handle_batch(down, first.clone(), None, at).unwrap();
    assert_eq!(
        judge(),
        (4, ledger::State::OnTime, 3),
        "the keys of all three read"
    );
}

/// Jieyang's task allocation table: the city reports water fees for 榕城 and 揭东 (the city
/// water group's data), so the province expects them from the city with the city's contact,
/// and not from either district; 普宁 reports its own, without a line in the table.
#[test]
fn a_city_covering_two_districts_owes_their_reports_and_carries_the_contact() {
    let water = protocol::Category::parse("water_fee").unwrap();
    let may = Period::parse("2026-05").unwrap();
    let cadence = protocol::schema::Cadence::Monthly;
    let due = ledger::due_ms(may, cadence, 10);
    let plain = topology(1, None);
    let mut nodes: Vec<TopologyNode> = plain.nodes().cloned().collect();
    for (code, port) in [("445202", 5), ("445203", 6)] {
        nodes.push(TopologyNode {
            id: id(code),
            name: code.into(),
            role: Role::County,
            parent: Some(id(CITY)),
            address: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            public_key: key(id(code)).public(),
        });
    }
    let mut schedule = topology::Schedule::new(water.clone(), cadence, 10, Vec::new());
    schedule.allocation = vec![topology::Allocation {
        reporter: id(CITY),
        covers: vec![id("445202"), id("445203")],
        data_source: "揭阳市水务集团有限公司".into(),
        responsible: "揭阳市发展改革局".into(),
        contact: Some("0663-8xxxxxx".into()),
    }];
    let allocated =
        Arc::new(Topology::from_parts(1, nodes, Vec::new(), Vec::new(), vec![schedule]).unwrap());

    // The city's own batch reaches the province a day before the deadline.
    let mut province = core(PROVINCE, allocated.clone(), MemKv::new());
    let down = LinkId(4);
    link_from(&mut province, down, CITY, at_wall(1));
    province
        .handle_batch(
            down,
            batch_of(CITY, "2026-05"),
            None,
            at_wall(due - 86_400_000),
        )
        .unwrap();

    let entries = province.ledger(may, None, at_wall(due + 1)).unwrap();
    let who: Vec<(NodeId, ledger::State)> = entries.iter().map(|e| (e.reporter, e.state)).collect();
    assert_eq!(
        who,
        [
            (id(CITY), ledger::State::OnTime),
            (id(COUNTY), ledger::State::Missing)
        ],
        "the city is expected, the districts it covers are not"
    );
    let city = entries[0].allocation.as_ref().expect("the city's line");
    assert_eq!(city.contact.as_deref(), Some("0663-8xxxxxx"));
    assert_eq!(city.data_source, "揭阳市水务集团有限公司");
    assert_eq!(city.responsible, "揭阳市发展改革局");
    assert_eq!(city.covers, [id("445202"), id("445203")]);
    assert_eq!(entries[0].records_delivered, 3);
    assert_eq!(entries[1].allocation, None, "普宁 has no line in the table");

    // Without the table every district owes its own report again.
    let province = core(
        PROVINCE,
        {
            let mut schedules = allocated.schedules().to_vec();
            schedules[0].allocation.clear();
            Arc::new(
                Topology::from_parts(
                    1,
                    allocated.nodes().cloned().collect(),
                    Vec::new(),
                    Vec::new(),
                    schedules,
                )
                .unwrap(),
            )
        },
        MemKv::new(),
    );
    let reporters: Vec<NodeId> = province
        .ledger(may, None, at_wall(due + 1))
        .unwrap()
        .iter()
        .map(|e| e.reporter)
        .collect();
    assert_eq!(reporters, [id("445202"), id("445203"), id(COUNTY)]);
}

/// Carries outputs between a county core and a city core until both are quiet: frames each
/// way, batch streams up, syncs made durable. Returns what the county's uplink transmitted.
fn pump(
    county: (&mut Core<MemKv>, &MemKv, LinkId),
    city: (&mut Core<MemKv>, &MemKv, LinkId),
    t: u64,
) -> Vec<Message> {
    let (county, county_kv, up) = county;
    let (city, city_kv, down) = city;
    let mut sent_up = Vec::new();
    for round in 0..200 {
        let now = now(t + round);
        let from_county = drain(county);
        let from_city = drain(city);
        if from_county.is_empty() && from_city.is_empty() {
            return sent_up;
        }
        for output in from_county {
            match output {
                Output::Transmit { link, message } if link == up => {
                    sent_up.push(message.clone());
                    city.handle_message(down, message, now).unwrap();
                }
                Output::SendBatch {
                    link,
                    id,
                    first_receipt,
                } if link == up => {
                    let signed = county.store().batch(&id).unwrap().unwrap();
                    city.handle_batch(down, signed, first_receipt, now).unwrap();
                    county.handle_batch_sent(up, id, true, now).unwrap();
                }
                Output::Sync { upto } => {
                    county_kv.sync().unwrap();
                    county.handle_durable(upto, now);
                }
                _ => {}
            }
        }
        for output in from_city {
            match output {
                Output::Transmit { link, message } if link == down => {
                    county.handle_message(up, message, now).unwrap();
                }
                Output::Sync { upto } => {
                    city_kv.sync().unwrap();
                    city.handle_durable(upto, now);
                }
                _ => {}
            }
        }
    }
    panic!("the two cores did not settle in 200 rounds");
}

/// When the link comes up, reconciliation finds a batch the city lost (the county re-offers
/// it and the city stores it again), a batch the city holds that the county never had (an
/// anomaly, audited on both sides), and a receipt the county lacks (the city relays it).
#[test]
fn reconciliation_restores_a_lost_batch_reports_an_anomaly_and_repairs_a_receipt() {
    let topology = topology(1, None);
    let county_kv = MemKv::new();
    let city_kv = MemKv::new();
    let mut county = core(COUNTY, topology.clone(), county_kv.clone());
    let mut city = core(CITY, topology, city_kv.clone());
    let held_by_both = county_batch_of("2026-03");
    let lost_by_city = county_batch_of("2026-04");
    let never_at_county = county_batch_of("2026-05");
    county.submit(held_by_both.clone(), now(1)).unwrap();
    county.submit(lost_by_city.clone(), now(1)).unwrap();
    // The county holds the city's receipt for the batch the city then lost: it will not offer
    // it again by itself.
    let receipt = Receipt {
        receiver: id(CITY),
        batch: lost_by_city.id,
        origin: id(COUNTY),
        received_at_ms: now(1).wall_ms,
        verdict: Verdict::Accepted { warnings: 0 },
    }
    .sign_with(&key(id(CITY)));
    county
        .store()
        .insert_receipt(id(COUNTY), id(CITY), &receipt, &[], None, 1)
        .unwrap();
    assert_eq!(
        county.store().outbox_len(id(CITY)),
        1,
        "only the first is queued"
    );

    // The city holds the first batch (its receipt never reached the county) and one the county
    // never had.
    let down = LinkId(21);
    link_from(&mut city, down, COUNTY, now(2));
    city.handle_batch(down, held_by_both.clone(), None, now(2))
        .unwrap();
    city.handle_batch(down, never_at_county.clone(), None, now(2))
        .unwrap();
    city_kv.sync().unwrap();
    city.handle_durable(u64::MAX / 2, now(2));
    drain(&mut city);
    // The county's outbox still holds the first batch: take it out as if the receipt had
    // arrived and then been lost, so only reconciliation can bring the receipt back.
    county
        .store()
        .drop_outbox_entry(id(CITY), &held_by_both.id)
        .unwrap();

    let up = LinkId(22);
    drain(&mut county);
    // The city's Hello (sent when the county connected): the path is up.
    path_up(&mut county, up, CITY, 1, now(3), now(3));
    // The link coming up compares batches; the operator's `reconcile` compares receipts too.
    let mut sent = pump(
        (&mut county, &county_kv, up),
        (&mut city, &city_kv, down),
        4,
    );
    assert!(
        county
            .store()
            .receipt(&held_by_both.id, id(CITY))
            .unwrap()
            .is_none(),
        "receipts are not compared when a link comes up"
    );
    assert_eq!(county.reconcile(Some(id(CITY)), now(300)).unwrap(), 1);
    sent.extend(pump(
        (&mut county, &county_kv, up),
        (&mut city, &city_kv, down),
        301,
    ));
    let sessions = |kind| {
        sent.iter()
            .filter(|m| matches!(m, Message::ReconcileDone { scope, .. } if scope.kind == kind))
            .count()
    };
    assert!(
        sessions(ReconcileKind::Batches) >= 2,
        "batches reconciled twice"
    );
    assert!(
        sessions(ReconcileKind::Receipts) >= 1,
        "receipts reconciled on demand"
    );

    let city_store = Store::new(city_kv.clone());
    assert!(
        city_store.holds(&lost_by_city.id).unwrap(),
        "the batch the city lost is back"
    );
    assert!(
        county
            .store()
            .receipt(&held_by_both.id, id(CITY))
            .unwrap()
            .is_some(),
        "the county's missing receipt was relayed again"
    );
    // Each round that finds it reports it again: once per batches session here.
    let anomalies = |store: &Store<MemKv>| -> std::collections::BTreeSet<BatchId> {
        store
            .audit_entries()
            .filter_map(|e| match e.unwrap().event {
                AuditEvent::Reconciled { anomalies, .. } => Some(anomalies),
                _ => None,
            })
            .flatten()
            .collect()
    };
    assert_eq!(anomalies(county.store()), [never_at_county.id].into());
    assert_eq!(anomalies(&city_store), [never_at_county.id].into());

    // The links count the sessions on both sides, and the differences found.
    let done = sent
        .iter()
        .filter(|m| matches!(m, Message::ReconcileDone { .. }))
        .count() as u64;
    let up_status = link_of(&county, CITY, "up");
    let down_status = link_of(&city, COUNTY, "down");
    assert_eq!(up_status.reconcile_sessions, done);
    assert_eq!(down_status.reconcile_sessions, done);
    assert!(up_status.reconcile_rounds >= done, "{up_status:?}");
    assert!(down_status.reconcile_rounds >= done, "{down_status:?}");
    // At least: the lost batch (the county's only) and the anomaly (the city's only).
    assert!(up_status.reconcile_differences >= 2, "{up_status:?}");
    assert!(down_status.reconcile_differences >= 1, "{down_status:?}");
}

fn link_of(core: &Core<MemKv>, peer: &str, direction: &str) -> LinkStatus {
    core.links()
        .into_iter()
        .find(|l| l.peer == peer && l.direction == direction)
        .unwrap_or_else(|| panic!("no {direction} link to {peer}: {:?}", core.links()))
}

/// What a link counts for the metrics: batches and bytes each way (sent: receipted; received:
/// every arrival), refusals by reason, and no send time left once receipts came.
#[test]
fn links_count_batches_bytes_and_refusals_by_reason() {
    let topology = topology(1, None);
    let county_kv = MemKv::new();
    let city_kv = MemKv::new();
    let mut county = core(COUNTY, topology.clone(), county_kv.clone());
    let mut city = core(CITY, topology, city_kv.clone());
    let first = county_batch_of("2026-03");
    let second = county_batch_of("2026-04");
    county.submit(first.clone(), now(1)).unwrap();
    county.submit(second.clone(), now(1)).unwrap();
    let down = LinkId(31);
    link_from(&mut city, down, COUNTY, now(2));
    drain(&mut city);
    let up = LinkId(32);
    drain(&mut county);
    path_up(&mut county, up, CITY, 1, now(3), now(3));
    pump(
        (&mut county, &county_kv, up),
        (&mut city, &city_kv, down),
        4,
    );
    let both = (first.bytes.len() + second.bytes.len()) as u64;
    let up_status = link_of(&county, CITY, "up");
    assert_eq!(
        (up_status.batches_sent, up_status.bytes_sent),
        (2, both),
        "{up_status:?}"
    );
    assert!(
        county.uplinks[Route::Parent.index()].sent_at_ms.is_empty(),
        "a receipt ends the wait it times"
    );

    // Two batches the city refuses: one signed for another batch, one whose bytes are not
    // the batch its id names.
    let third = county_batch_of("2026-05");
    let bad_signature = SignedBatch {
        signature: first.signature,
        ..third.clone()
    };
    let damaged = SignedBatch {
        bytes: second.bytes.clone(),
        ..third.clone()
    };
    city.handle_batch(down, bad_signature, None, now(300))
        .unwrap();
    city.handle_batch(down, damaged, None, now(300)).unwrap();
    make_durable(&mut city, &city_kv, now(301));
    let down_status = link_of(&city, COUNTY, "down");
    assert_eq!(down_status.batches_received, 4, "{down_status:?}");
    assert_eq!(
        down_status.bytes_received,
        both + third.bytes.len() as u64 + second.bytes.len() as u64
    );
    assert_eq!(
        down_status.refused,
        BTreeMap::from([("bad_signature", 1), ("hash_mismatch", 1)])
    );
    for reason in down_status.refused.keys() {
        assert!(REFUSAL_REASONS.contains(reason), "{reason} is not listed");
    }
}

/// A county migrating off its legacy link re-sends its history through its parent: the proof
/// of when each batch first arrived is the national platform's receipt from the legacy link,
/// and the city dates the batch by it. Without a legacy link in the topology such a proof is
/// refused, and the city's own receipt dates the batch.
#[test]
fn history_resent_off_a_legacy_link_is_dated_by_the_national_receipt() {
    let legacy = LegacyLink {
        migrate: true,
        ..LegacyLink::new(id(COUNTY))
    };
    let migrating = topology(2, Some(legacy));
    let county_kv = MemKv::new();
    let mut county = core(COUNTY, migrating.clone(), county_kv.clone());
    let batch = county_batch();
    county.submit(batch.clone(), now(1)).unwrap();
    let upto = sync_upto(&drain(&mut county)).expect("a submission is made durable");
    county.handle_durable(upto, now(2));
    // Months ago, the national platform signed for it over the legacy link.
    let delivered_at = now(0).wall_ms - 90 * 86_400_000;
    let national = Receipt {
        receiver: id(NATIONAL),
        batch: batch.id,
        origin: id(COUNTY),
        received_at_ms: delivered_at,
        verdict: Verdict::Accepted { warnings: 0 },
    }
    .sign_with(&key(id(NATIONAL)));
    Store::new(county_kv.clone())
        .insert_receipt(
            id(COUNTY),
            id(NATIONAL),
            &national,
            &[],
            None,
            now(3).wall_ms,
        )
        .unwrap();

    // The parent path comes up and the city wants the batch.
    drain(&mut county);
    let up = LinkId(21);
    path_up(&mut county, up, CITY, 2, now(4), now(5));
    county
        .handle_message(
            up,
            Message::Want {
                ids: vec![batch.id],
            },
            now(6),
        )
        .unwrap();
    let proof = drain(&mut county)
        .into_iter()
        .find_map(|o| match o {
            Output::SendBatch {
                id, first_receipt, ..
            } if id == batch.id => Some(first_receipt),
            _ => None,
        })
        .expect("the wanted batch is sent");
    assert_eq!(
        proof.as_ref(),
        Some(&national),
        "sent with the legacy receipt as the proof"
    );

    // The city keeps the national receipt as the proof and forwards it.
    let city_kv = MemKv::new();
    let mut city = core(CITY, migrating, city_kv.clone());
    let down = LinkId(22);
    link_from(&mut city, down, COUNTY, now(7));
    city.handle_batch(down, batch.clone(), proof.clone(), now(8))
        .unwrap();
    let store = Store::new(city_kv);
    assert_eq!(
        store.meta(&batch.id).unwrap().unwrap().first,
        Some(id(NATIONAL))
    );
    assert_eq!(
        store.first_receipt(&batch.id, id(CITY)).unwrap(),
        Some(national.clone()),
        "and sends it on"
    );

    // Where the topology has no legacy link, the same proof is refused.
    let (mut plain_city, plain_kv, plain_down) = city_with_county();
    plain_city
        .handle_batch(plain_down, batch.clone(), proof, now(9))
        .unwrap();
    let store = Store::new(plain_kv);
    assert_eq!(
        store.meta(&batch.id).unwrap().unwrap().first,
        Some(id(CITY))
    );
    assert_eq!(store.receipt(&batch.id, id(NATIONAL)).unwrap(), None);
}

/// A verify window that runs out before the parent's receipts cover what the legacy link
/// delivered waits for those receipts: the timer is not re-armed at the passed deadline (a
/// runtime would spin on it).
#[test]
fn a_verify_window_run_out_before_coverage_does_not_spin_the_timer() {
    let legacy = LegacyLink {
        migrate: true,
        verify_window_s: 60,
        ..LegacyLink::new(id(COUNTY))
    };
    let kv = MemKv::new();
    let mut county = core(COUNTY, topology(2, Some(legacy)), kv.clone());
    // One batch the legacy link delivered: the national platform's receipt came back over it,
    // not through the hierarchy.
    let batch = county_batch();
    county.submit(batch.clone(), now(1)).unwrap();
    let upto = sync_upto(&drain(&mut county)).unwrap();
    county.handle_durable(upto, now(2));
    let national = Receipt {
        receiver: id(NATIONAL),
        batch: batch.id,
        origin: id(COUNTY),
        received_at_ms: now(3).wall_ms,
        verdict: Verdict::Accepted { warnings: 0 },
    }
    .sign_with(&key(id(NATIONAL)));
    Store::new(kv)
        .insert_receipt(
            id(COUNTY),
            id(NATIONAL),
            &national,
            &[],
            None,
            now(3).wall_ms,
        )
        .unwrap();
    path_up(&mut county, LinkId(1), CITY, 2, now(101), now(102));
    assert_eq!(county.migration_phase(), Some(Phase::Verify));
    let deadline = county.poll_timeout().unwrap();
    assert!(deadline <= 102 + 60_000, "the window is armed: {deadline}");
    let after = now(102 + 60_000);
    county.handle_timeout(after).unwrap();
    assert_eq!(
        county.migration_phase(),
        Some(Phase::Verify),
        "not covered: no cut-over"
    );
    assert!(
        county
            .poll_timeout()
            .is_none_or(|next| next > after.mono_ms),
        "the passed deadline is not armed again: {:?}",
        county.poll_timeout()
    );
}

/// The province, the city, a county that reports, a county on a legacy direct link and a
/// water-fee schedule.
fn progress_topology() -> Arc<Topology> {
    let node = |text: &str, name: &str, role, parent: Option<&str>, port| TopologyNode {
        id: id(text),
        name: name.into(),
        role,
        parent: parent.map(id),
        address: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        public_key: key(id(text)).public(),
    };
    let nodes = vec![
        node(NATIONAL, "全国平台", Role::National, None, 1),
        node(PROVINCE, "广东省", Role::Province, Some(NATIONAL), 2),
        node(CITY, "揭阳市", Role::City, Some(PROVINCE), 3),
        node(COUNTY, "普宁市", Role::County, Some(CITY), 4),
        node(LEGACY_COUNTY, "惠来县", Role::County, None, 5),
    ];
    let schedules = vec![topology::Schedule::new(
        protocol::Category::parse("water_fee").unwrap(),
        protocol::schema::Cadence::Monthly,
        10,
        vec![id(COUNTY), id(LEGACY_COUNTY)],
    )];
    Arc::new(
        Topology::from_parts(
            1,
            nodes,
            vec![LegacyLink::new(id(LEGACY_COUNTY))],
            Vec::new(),
            schedules,
        )
        .unwrap(),
    )
}

const LEGACY_COUNTY: &str = "445224";

fn figures() -> protocol::OperatorFigures {
    protocol::OperatorFigures {
        registered_enterprises: 120_345,
        financial_institutions: 87,
        financing_loans: 4_321,
        financing_amount_wan_yuan: 765_432,
        notes: Some("含新接入的三家农商行".into()),
    }
}

/// Makes every write so far durable and returns the outputs after it.
fn make_durable(core: &mut Core<MemKv>, kv: &MemKv, t: Now) -> Vec<Output> {
    let outputs = drain(core);
    if let Some(upto) = sync_upto(&outputs) {
        kv.sync().unwrap();
        core.handle_durable(upto, t);
    }
    let mut after = outputs;
    after.extend(drain(core));
    after
}

/// A province makes a signed progress report of its local platforms (paths, connection,
/// per-category counts from the ledger) and the operators' figures; it is queued for the
/// national platform, which verifies it, stores it and lists the newest revision.
#[test]
fn a_province_makes_a_progress_report_and_the_national_platform_lists_it() {
    let water = protocol::Category::parse("water_fee").unwrap();
    let may = Period::parse("2026-05").unwrap();
    let due = ledger::due_ms(may, protocol::schema::Cadence::Monthly, 10);
    let topology = progress_topology();

    // The county's data and manifest reach the province through the city before the deadline.
    let mut county = core(COUNTY, topology.clone(), MemKv::new());
    let data = county_batch_of("2026-05");
    county.submit(data.clone(), at_wall(0)).unwrap();
    let (manifest, _) = county
        .close_period(&water, may, Some(3), at_wall(0))
        .unwrap();
    let manifest = county.store().batch(&manifest).unwrap().unwrap();

    let province_kv = MemKv::new();
    let mut province = core(PROVINCE, topology.clone(), province_kv.clone());
    let from_city = LinkId(4);
    link_from(&mut province, from_city, CITY, at_wall(due - 3_600_000));
    for signed in [data, manifest] {
        province
            .handle_batch(from_city, signed, None, at_wall(due - 3_600_000))
            .unwrap();
    }
    make_durable(&mut province, &province_kv, at_wall(due - 3_600_000));

    let made_at = at_wall(due + 86_400_000);
    let (first, submitted) = province.progress_report(may, figures(), made_at).unwrap();
    assert!(submitted.new);
    assert!(
        province.durable_seq() < submitted.durable_at,
        "not durable until the store says so"
    );
    make_durable(&mut province, &province_kv, made_at);
    assert!(province.durable_seq() >= submitted.durable_at);
    let queued = province
        .store()
        .outbox_page(id(NATIONAL), None, 10)
        .unwrap();
    let offer = queued
        .iter()
        .find(|o| o.id == first)
        .expect("queued for the national platform");
    assert_eq!(
        (offer.origin, offer.category.clone(), offer.period),
        (id(PROVINCE), protocol::Category::progress_report(), may)
    );
    let signed = province.store().batch(&first).unwrap().unwrap();
    signed
        .verify_hash_and_signature(&key(id(PROVINCE)).public())
        .unwrap();
    let Ok(Content::Progress(report)) = Content::decode(&signed.bytes) else {
        panic!("a progress report")
    };
    assert_eq!(
        (report.origin, report.period, report.revision),
        (id(PROVINCE), may, 1)
    );
    assert_eq!(report.figures, figures());
    use protocol::progress::{LegacyPhase, PlatformPath};
    let platform = |node: &str| {
        report
            .platforms
            .iter()
            .find(|p| p.node == id(node))
            .unwrap_or_else(|| panic!("{node} listed: {report:?}"))
    };
    assert_eq!(report.platforms.len(), 3, "the city and both counties");
    let city = platform(CITY);
    assert!(city.connected && city.path == PlatformPath::Hierarchy);
    assert!(city.categories.is_empty(), "the city owes no reports");
    let reporting = platform(COUNTY);
    assert_eq!(reporting.name, "普宁市");
    assert!(reporting.connected, "its data reached the province");
    assert_eq!(reporting.path, PlatformPath::Hierarchy);
    let counts = &reporting.categories[0];
    assert_eq!(counts.category, water);
    assert_eq!(
        (counts.expected, counts.on_time, counts.late, counts.missing),
        (1, 1, 0, 0)
    );
    assert_eq!((counts.records_delivered, counts.records_declared), (3, 3));
    let legacy = platform(LEGACY_COUNTY);
    assert!(!legacy.connected, "nothing of it reaches the province");
    assert_eq!(
        legacy.path,
        PlatformPath::Legacy {
            via: id(LEGACY_COUNTY),
            phase: LegacyPhase::Direct
        }
    );
    assert!(
        legacy.categories.is_empty(),
        "its reports go straight to the national platform, not through this province"
    );

    // Sending again makes the next revision.
    let (second, _) = province
        .progress_report(may, figures(), at_wall(due + 2 * 86_400_000))
        .unwrap();
    make_durable(&mut province, &province_kv, at_wall(due + 2 * 86_400_000));
    assert_ne!(first, second);
    let held = province.progress_reports(None).unwrap();
    assert_eq!(held.len(), 1, "newest revision per period");
    assert_eq!((held[0].id, held[0].report.revision), (second, 2));
    assert_eq!(
        held[0].national_receipt_ms, None,
        "not yet at the national platform"
    );

    // The national platform verifies both, stores them, and lists the newest.
    let national_kv = MemKv::new();
    let mut national = core(NATIONAL, topology, national_kv.clone());
    let from_province = LinkId(9);
    link_from(
        &mut national,
        from_province,
        PROVINCE,
        at_wall(due + 3 * 86_400_000),
    );
    for report in [first, second] {
        let signed = province.store().batch(&report).unwrap().unwrap();
        national
            .handle_batch(from_province, signed, None, at_wall(due + 3 * 86_400_000))
            .unwrap();
    }
    let outputs = make_durable(&mut national, &national_kv, at_wall(due + 3 * 86_400_000));
    let receipts = receipts_in(&outputs);
    assert_eq!(receipts.len(), 2);
    assert!(
        receipts
            .iter()
            .all(|r| matches!(r.receipt.verdict, Verdict::Accepted { .. }))
    );
    assert_eq!(
        national
            .progress_reports(Some(Period::parse("2026-06").unwrap()))
            .unwrap(),
        vec![]
    );
    let listed = national.progress_reports(Some(may)).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].id, listed[0].report.revision), (second, 2));
    assert_eq!(listed[0].national_receipt_ms, Some(due + 3 * 86_400_000));
    let meta = national.store().meta(&second).unwrap().unwrap();
    assert_eq!(meta.kind, protocol::ContentKind::Progress);
    assert_eq!(meta.category, protocol::Category::progress_report());
    // Not a report the ledger judges.
    assert!(
        national
            .ledger(may, None, at_wall(due + 4 * 86_400_000))
            .unwrap()
            .iter()
            .all(|e| e.category == "water_fee")
    );
}

/// Only a province makes a progress report; one that names a county as its origin is refused
/// where it is submitted and where it is received.
#[test]
fn only_a_province_makes_or_passes_on_a_progress_report() {
    let topology = progress_topology();
    let may = Period::parse("2026-05").unwrap();
    let mut county = core(COUNTY, topology.clone(), MemKv::new());
    let error = county.progress_report(may, figures(), now(1)).unwrap_err();
    assert!(matches!(error, CoreError::NotProvince { .. }), "{error}");
    assert!(
        error.to_string().contains("only a provincial node"),
        "{error}"
    );
    let city_kv = MemKv::new();
    let mut city = core(CITY, topology.clone(), city_kv.clone());
    assert!(matches!(
        city.progress_report(may, figures(), now(1)),
        Err(CoreError::NotProvince { .. })
    ));

    // A report the county made by hand, with itself as origin.
    let forged = protocol::ProgressReport {
        format: protocol::progress::PROGRESS_FORMAT,
        origin: id(COUNTY),
        period: may,
        revision: 1,
        made_at_ms: 0,
        platforms: Vec::new(),
        figures: figures(),
    };
    let signed = forged.seal_with(&key(id(COUNTY)));
    let refused = county.submit(signed.clone(), now(2)).unwrap_err();
    assert!(refused.to_string().contains("not a province"), "{refused}");
    assert!(county.store().batch(&signed.id).unwrap().is_none());

    let link = LinkId(5);
    link_from(&mut city, link, COUNTY, now(3));
    city.handle_batch(link, signed.clone(), None, now(4))
        .unwrap();
    let receipts = receipts_in(&make_durable(&mut city, &city_kv, now(5)));
    assert_eq!(receipts.len(), 1);
    let Verdict::Rejected { reason } = &receipts[0].receipt.verdict else {
        panic!("refused: {receipts:?}")
    };
    assert!(reason.contains("not a province"), "{reason}");
    assert!(
        city.store().batch(&signed.id).unwrap().is_none(),
        "not stored"
    );
}

// ---- keys over time ----

/// The county's new key after a rotation or a compromise.
fn new_county_key() -> NodeKey {
    NodeKey::from_seed([42; 32])
}

/// `topology(1, None)` as version 2, the county holding its new key and its old one ended
/// (`end`) at `at`.
fn rekeyed(end: topology::KeyEnd, at: Now) -> Arc<Topology> {
    rekeyed_node(COUNTY, new_county_key(), end, at)
}

/// `topology(1, None)` as version 2, `node` holding `new_key` and its old one ended (`end`)
/// at `at`.
fn rekeyed_node(node: &str, new_key: NodeKey, end: topology::KeyEnd, at: Now) -> Arc<Topology> {
    let old = topology(1, None);
    let nodes = old
        .nodes()
        .cloned()
        .map(|mut each| {
            if each.id == id(node) {
                each.public_key = new_key.public();
            }
            each
        })
        .collect();
    let admissions = topology::Admissions {
        old_keys: vec![topology::OldKey {
            node: id(node),
            public_key: key(id(node)).public(),
            end,
            at_ms: at.wall_ms,
        }],
        ..Default::default()
    };
    Arc::new(old.edited(2, nodes, admissions).unwrap())
}

/// Found by the simulator (jieyang-year seed 5): a child kept checking receipts against its
/// re-keyed parent's old key and closed the link over every one, and a re-keyed parent
/// answered re-offers with receipts signed by its retired key. A child pins a re-keyed
/// parent anew, and a parent answers under its current key.
#[test]
fn a_rekeyed_parent_is_pinned_anew_and_answers_under_its_current_key() {
    let new_city_key = || NodeKey::from_seed([43; 32]);
    // The city receipts a batch under its old key.
    let city_kv = MemKv::new();
    let mut city = core(CITY, topology(1, None), city_kv.clone());
    link_from(&mut city, LinkId(7), COUNTY, now(1));
    drain(&mut city);
    let batch = county_batch();
    city.handle_batch(LinkId(7), batch.clone(), None, now(2))
        .unwrap();
    let first = durable_receipts(&mut city, &city_kv, now(3));
    assert!(first[0].verify_with(&key(id(CITY)).public(), &Ed25519));
    drop(city);

    // The city is re-keyed; the county, its batch still in the outbox, is connected.
    let v2 = rekeyed_node(CITY, new_city_key(), topology::KeyEnd::Retired, now(4));
    let kv = MemKv::new();
    let mut county = core(COUNTY, topology(1, None), kv.clone());
    county.submit(batch.clone(), now(1)).unwrap();
    make_durable(&mut county, &kv, now(2));
    path_up(&mut county, LinkId(1), CITY, 1, now(3), now(3));
    drain(&mut county);
    county.handle_topology(v2.clone(), now(5)).unwrap();
    assert!(
        drain(&mut county)
            .iter()
            .any(|o| matches!(o, Output::Close { link, .. } if *link == LinkId(1))),
        "the link pinned to the city's old key is closed"
    );
    county
        .handle_link_down(LinkId(1), "closed", now(6))
        .unwrap();
    let later = now(60_000);
    county.handle_timeout(later).unwrap();
    let dialed = drain(&mut county);
    assert!(
        dialed
            .iter()
            .any(|o| matches!(o, Output::Dial { key, .. } if *key == new_city_key().public())),
        "redialed with the new key: {dialed:?}"
    );

    // The re-keyed city answers the re-sent batch with its receipt, signed by the new key,
    // dated as before.
    let mut city = Core::new(
        Box::new(new_city_key()),
        Box::new(Ed25519),
        v2,
        Store::new(city_kv.clone()),
        CoreConfig::default(),
        later,
    )
    .unwrap();
    make_durable(&mut city, &city_kv, later);
    city.handle_link_up(
        LinkId(8),
        LinkKind::Down {
            key: key(id(COUNTY)).public(),
        },
        later,
    )
    .unwrap();
    drain(&mut city);
    city.handle_batch(LinkId(8), batch.clone(), None, later)
        .unwrap();
    let answer = durable_receipts(&mut city, &city_kv, later);
    assert!(
        answer[0].verify_with(&new_city_key().public(), &Ed25519),
        "{answer:?}"
    );
    assert_eq!(answer[0].receipt, first[0].receipt);

    // The county takes it: the batch leaves its outbox and the link stays up.
    path_up(&mut county, LinkId(2), CITY, 2, later, later);
    drain(&mut county);
    county
        .handle_message(LinkId(2), Message::Receipts { receipts: answer }, later)
        .unwrap();
    let outputs = make_durable(&mut county, &kv, later);
    assert!(
        !outputs.iter().any(|o| matches!(o, Output::Close { .. })),
        "{outputs:?}"
    );
    assert!(
        Store::new(kv.clone())
            .receipt(&batch.id, id(CITY))
            .unwrap()
            .is_some()
    );
}

/// The receipts a core sends once its writes are durable.
fn durable_receipts(core: &mut Core<MemKv>, kv: &MemKv, at: Now) -> Vec<SignedReceipt> {
    receipts_in(&make_durable(core, kv, at))
}

#[test]
fn a_rotated_key_loses_nothing_and_a_revoked_one_quarantines_only_later_batches() {
    for end in [topology::KeyEnd::Retired, topology::KeyEnd::Revoked] {
        // Before the key ends, the city takes batches A and D from the county and receipts
        // them.
        let (mut city, city_kv, down) = city_with_county();
        let a = county_batch_of("2026-05");
        let d = county_batch_of("2026-04");
        city.handle_batch(down, a.clone(), None, now(2)).unwrap();
        city.handle_batch(down, d.clone(), None, now(2)).unwrap();
        let proofs = durable_receipts(&mut city, &city_kv, now(3));
        let proof_of = |batch: &SignedBatch| {
            proofs
                .iter()
                .find(|r| r.receipt.batch == batch.id)
                .unwrap()
                .clone()
        };
        let proof = proof_of(&a);
        assert!(matches!(proof.receipt.verdict, Verdict::Accepted { .. }));

        // The county's key ends at now(10); every node gets the new file.
        let v2 = rekeyed(end, now(10));
        city.handle_topology(v2.clone(), now(11)).unwrap();
        let audit: Vec<AuditEvent> = Store::new(city_kv.clone())
            .audit_entries()
            .map(|e| e.unwrap().event)
            .collect();
        assert!(
            audit.iter().any(|e| matches!(e, AuditEvent::KeyChanged { node, state, .. } if *node == id(COUNTY) && state == end.as_str())),
            "the key change is audited: {audit:?}"
        );

        // A reaches the province long after the end, with the city's proof: still valid.
        let province_kv = MemKv::new();
        let mut province = core(PROVINCE, v2.clone(), province_kv.clone());
        let from_city = LinkId(11);
        link_from(&mut province, from_city, CITY, now(20));
        province
            .handle_batch(from_city, a.clone(), Some(proof.clone()), now(21))
            .unwrap();
        let answer = durable_receipts(&mut province, &province_kv, now(22));
        assert!(
            matches!(answer[0].receipt.verdict, Verdict::Accepted { .. }),
            "{end:?}: a batch that arrived before the key ended stays valid: {answer:?}"
        );
        assert!(Store::new(province_kv.clone()).holds(&a.id).unwrap());

        // Without the proof the same old key is not enough: quarantined, and not receipted
        // (the relay may have lost the proof: it keeps the batch and sends it again).
        let b = county_batch_of("2026-06");
        let store = Store::new(province_kv.clone());
        for attempt in [23, 25] {
            province
                .handle_batch(from_city, b.clone(), None, now(attempt))
                .unwrap();
            let answer = durable_receipts(&mut province, &province_kv, now(attempt + 1));
            assert!(
                answer.is_empty(),
                "{end:?}: accepted or refused for good without proof: {answer:?}"
            );
            assert!(
                !store.holds(&b.id).unwrap(),
                "a quarantined batch is not held"
            );
        }
        let quarantined: Vec<_> = store.quarantined().map(Result::unwrap).collect();
        assert_eq!(quarantined.len(), 1);
        assert_eq!(quarantined[0].0, b.id);
        assert_eq!(quarantined[0].1.key, key(id(COUNTY)).public());
        let audited = |kind: fn(&AuditEvent) -> bool| {
            store
                .audit_entries()
                .filter(|e| kind(&e.as_ref().unwrap().event))
                .count()
        };
        assert_eq!(
            audited(|e| matches!(e, AuditEvent::BatchQuarantined { .. })),
            1,
            "a re-send without proof is not audited again"
        );

        // With a proof dated after the end, the refusal is final and says why.
        let late = Receipt {
            receiver: id(CITY),
            batch: b.id,
            origin: id(COUNTY),
            received_at_ms: now(12).wall_ms,
            verdict: Verdict::Accepted { warnings: 0 },
        }
        .sign_with(&key(id(CITY)));
        province
            .handle_batch(from_city, b.clone(), Some(late), now(27))
            .unwrap();
        let answer = durable_receipts(&mut province, &province_kv, now(28));
        let Verdict::Rejected { reason } = &answer[0].receipt.verdict else {
            panic!("{end:?}: accepted with a proof after the end: {answer:?}");
        };
        assert!(
            reason.contains("quarantined") && reason.contains(end.as_str()),
            "{reason}"
        );
        assert_eq!(store.outbox_len(id(NATIONAL)), 1, "only A goes on up");

        // D comes first without its proof, then with it: released from the quarantine.
        province
            .handle_batch(from_city, d.clone(), None, now(29))
            .unwrap();
        assert!(durable_receipts(&mut province, &province_kv, now(29)).is_empty());
        assert_eq!(store.quarantined().count(), 2);
        province
            .handle_batch(from_city, d.clone(), Some(proof_of(&d)), now(30))
            .unwrap();
        let answer = durable_receipts(&mut province, &province_kv, now(30));
        assert!(
            matches!(answer[0].receipt.verdict, Verdict::Accepted { .. }),
            "{end:?}: {answer:?}"
        );
        assert!(store.holds(&d.id).unwrap());
        assert_eq!(store.quarantined().count(), 1, "only B stays");
        assert_eq!(
            audited(|e| matches!(e, AuditEvent::QuarantineReleased { .. })),
            1
        );
        assert_eq!(store.outbox_len(id(NATIONAL)), 2, "A and D go on up");

        // The city itself, as first receiver, quarantines a batch the old key signs now.
        let c = county_batch_of("2026-07");
        link_from(&mut city, LinkId(8), COUNTY, now(30));
        drain(&mut city);
        city.handle_batch(down, c.clone(), None, now(31)).unwrap();
        let answer = durable_receipts(&mut city, &city_kv, now(32));
        assert!(
            answer.iter().any(|r| r.receipt.batch == c.id
                && matches!(r.receipt.verdict, Verdict::Rejected { .. })),
            "{end:?}: {answer:?}"
        );
        assert!(!Store::new(city_kv.clone()).holds(&c.id).unwrap());
    }
}

#[test]
fn a_rekeyed_origin_resigns_what_its_parent_has_not_acknowledged() {
    // The county submits a batch with its old key; its parent never answers.
    let kv = MemKv::new();
    let mut county = core(COUNTY, topology(1, None), kv.clone());
    let batch = county_batch();
    county.submit(batch.clone(), now(1)).unwrap();
    make_durable(&mut county, &kv, now(2));
    drop(county);

    // It restarts with its new key and the new file.
    let v2 = rekeyed(topology::KeyEnd::Retired, now(5));
    let mut county = Core::new(
        Box::new(new_county_key()),
        Box::new(Ed25519),
        v2.clone(),
        Store::new(kv.clone()),
        CoreConfig::default(),
        now(6),
    )
    .unwrap();
    make_durable(&mut county, &kv, now(7));
    let store = Store::new(kv.clone());
    let signature = store.signature(&batch.id).unwrap().unwrap();
    assert!(
        SignedBatch::id_signed_by(&batch.id, &signature, &new_county_key().public(), &Ed25519),
        "the unacknowledged batch is re-signed with the new key (same id)"
    );

    // The city, on the new file, accepts it at once.
    let city_kv = MemKv::new();
    let mut city = core(CITY, v2, city_kv.clone());
    let down = LinkId(7);
    city.handle_link_up(
        down,
        LinkKind::Down {
            key: new_county_key().public(),
        },
        now(8),
    )
    .unwrap();
    drain(&mut city);
    let resent = store.batch(&batch.id).unwrap().unwrap();
    city.handle_batch(down, resent, None, now(9)).unwrap();
    let answer = durable_receipts(&mut city, &city_kv, now(10));
    assert!(
        matches!(answer[0].receipt.verdict, Verdict::Accepted { .. }),
        "{answer:?}"
    );
    // And a session with the old key is refused: only the current key connects.
    city.handle_link_up(
        LinkId(12),
        LinkKind::Down {
            key: key(id(COUNTY)).public(),
        },
        now(11),
    )
    .unwrap();
    assert!(
        drain(&mut city)
            .iter()
            .any(|o| matches!(o, Output::Close { link, .. } if *link == LinkId(12)))
    );
}

/// Found by the simulator (jieyang-year seed 515). The city receipted the county's batch
/// under a key revoked since, and the province receipted it too; the county's key was then
/// retired. The city lost the batch: the county sent it again with the province's receipt
/// (its only believable proof), and the city took it, receipting it anew — dated after the
/// county's key ended. The city lost it again: the county sent that newer receipt, and the
/// city, judging the ended key by it, quarantined for good a batch the province held. The
/// county sends instead the earliest receipt it holds that dates the batch before the end.
#[test]
fn a_batch_lost_twice_comes_back_on_the_earliest_proof_when_its_key_has_ended() {
    let new_city_key = || NodeKey::from_seed([43; 32]);
    // The county submits the batch under its first key; the city receipts it at now(2) and
    // the province at now(3), and both receipts reach the county.
    let county_kv = MemKv::new();
    let mut county = core(COUNTY, topology(1, None), county_kv.clone());
    let batch = county_batch();
    county.submit(batch.clone(), now(1)).unwrap();
    make_durable(&mut county, &county_kv, now(1));
    let receipt = |receiver: &str, signer: &NodeKey, t: u64| {
        Receipt {
            receiver: id(receiver),
            batch: batch.id,
            origin: id(COUNTY),
            received_at_ms: now(t).wall_ms,
            verdict: Verdict::Accepted { warnings: 0 },
        }
        .sign_with(signer)
    };
    for (receiver, signer, t) in [(CITY, key(id(CITY)), 2), (PROVINCE, key(id(PROVINCE)), 3)] {
        county
            .store()
            .insert_receipt(
                id(COUNTY),
                id(CITY),
                &receipt(receiver, &signer, t),
                &[],
                None,
                now(t).wall_ms,
            )
            .unwrap();
    }
    county.store().sync().unwrap();
    drop(county);

    // The city's key is revoked at now(10) (its receipt at now(2) proves nothing since), the
    // county's retired at now(20); both restart with their new keys.
    let old = topology(1, None);
    let nodes = old
        .nodes()
        .cloned()
        .map(|mut each| {
            if each.id == id(CITY) {
                each.public_key = new_city_key().public();
            } else if each.id == id(COUNTY) {
                each.public_key = new_county_key().public();
            }
            each
        })
        .collect();
    let old_key = |node: &str, end, t: u64| topology::OldKey {
        node: id(node),
        public_key: key(id(node)).public(),
        end,
        at_ms: now(t).wall_ms,
    };
    let admissions = topology::Admissions {
        old_keys: vec![
            old_key(CITY, topology::KeyEnd::Revoked, 10),
            old_key(COUNTY, topology::KeyEnd::Retired, 20),
        ],
        ..Default::default()
    };
    let v2 = Arc::new(old.edited(2, nodes, admissions).unwrap());
    let restart = |signer: NodeKey, kv: &MemKv| {
        Core::new(
            Box::new(signer),
            Box::new(Ed25519),
            v2.clone(),
            Store::new(kv.clone()),
            CoreConfig::default(),
            now(30),
        )
        .unwrap()
    };
    let mut county = restart(new_county_key(), &county_kv);
    make_durable(&mut county, &county_kv, now(30));
    // The city lost the batch (its store holds nothing of it).
    let city_kv = MemKv::new();
    let mut city = restart(new_city_key(), &city_kv);
    let (up, down) = (LinkId(1), LinkId(2));
    city.handle_link_up(
        down,
        LinkKind::Down {
            key: new_county_key().public(),
        },
        now(31),
    )
    .unwrap();
    path_up(&mut county, up, CITY, 2, now(31), now(31));

    // The link coming up reconciles: the county sends the batch again and the city takes it
    // on the province's receipt, receipting it anew after the county's key ended.
    pump(
        (&mut county, &county_kv, up),
        (&mut city, &city_kv, down),
        32,
    );
    let city_store = Store::new(city_kv.clone());
    assert!(city_store.holds(&batch.id).unwrap(), "taken back once");
    let anew = county
        .store()
        .receipt(&batch.id, id(CITY))
        .unwrap()
        .expect("the city's new receipt reached the county");
    assert!(anew.receipt.received_at_ms > now(20).wall_ms, "{anew:?}");

    // The city loses it again; reconciliation finds it missing, and the county sends it with
    // the province's receipt (earlier than the city's newer one): the city takes it again.
    assert!(city_store.forget_batch(&batch.id).unwrap());
    assert_eq!(county.reconcile(Some(id(CITY)), now(400)).unwrap(), 1);
    pump(
        (&mut county, &county_kv, up),
        (&mut city, &city_kv, down),
        401,
    );
    assert!(
        !city_store.is_quarantined(&batch.id).unwrap(),
        "quarantined though the province's receipt dates it before the county's key ended"
    );
    assert!(city_store.holds(&batch.id).unwrap(), "taken back twice");
    assert_eq!(county.store().refusal(&batch.id).unwrap(), None);
}

#[test]
fn a_child_without_a_valid_assessment_is_refused_and_closed_when_it_expires() {
    let today = topology::Date::of_ms(now(0).wall_ms);
    let assessed = |valid_until: topology::Date| topology::Assessment {
        node: id(COUNTY),
        assessor: "广东省网络安全等级保护测评中心".into(),
        reference: None,
        assessed_on: topology::Date::new(2026, 1, 15).unwrap(),
        valid_until,
    };
    let with = |version, assessments: Vec<topology::Assessment>| {
        let base = topology(1, None);
        Arc::new(
            base.edited(
                version,
                base.nodes().cloned().collect(),
                topology::Admissions {
                    require_assessment: true,
                    assessments,
                    ..Default::default()
                },
            )
            .unwrap(),
        )
    };
    let kv = MemKv::new();
    // Required and missing: refused with the reason, audited once however often it dials.
    let mut city = core(CITY, with(1, Vec::new()), kv.clone());
    for (n, link) in [LinkId(1), LinkId(2)].into_iter().enumerate() {
        link_from(&mut city, link, COUNTY, now(1 + n as u64));
        let outputs = drain(&mut city);
        let reason = outputs
            .iter()
            .find_map(|o| match o {
                Output::Close { link: l, reason } if *l == link => Some(reason.clone()),
                _ => None,
            })
            .expect("refused");
        assert!(
            reason.contains("no security assessment") && reason.contains("[[assessment]]"),
            "{reason}"
        );
    }
    let refusals = Store::new(kv.clone())
        .audit_entries()
        .filter(|e| {
            matches!(
                e.as_ref().unwrap().event,
                AuditEvent::AdmissionRefused { .. }
            )
        })
        .count();
    assert_eq!(refusals, 1);

    // Valid until today: admitted; the end of today closes the live session.
    city.handle_topology(with(2, vec![assessed(today)]), now(10))
        .unwrap();
    drain(&mut city);
    link_from(&mut city, LinkId(3), COUNTY, now(11));
    assert!(
        !drain(&mut city)
            .iter()
            .any(|o| matches!(o, Output::Close { link, .. } if *link == LinkId(3))),
        "a valid assessment admits the child"
    );
    let end_of_day = today.end_ms() - now(0).wall_ms;
    let later = Now {
        mono_ms: end_of_day + ADMISSION_CHECK_MS,
        wall_ms: today.end_ms() + ADMISSION_CHECK_MS,
    };
    assert!(city.poll_timeout().is_some_and(|t| t <= later.mono_ms));
    city.handle_timeout(later).unwrap();
    let closed = drain(&mut city).into_iter().find_map(|o| match o {
        Output::Close {
            link: LinkId(3),
            reason,
        } => Some(reason),
        _ => None,
    });
    assert!(
        closed
            .as_deref()
            .is_some_and(|r| r.contains("expired at the end of")),
        "{closed:?}"
    );
}

#[test]
fn a_child_link_is_up_only_for_a_child_key_and_a_newer_connection_replaces_the_older() {
    let kv = MemKv::new();
    let mut city = core(CITY, topology(1, None), kv.clone());
    drain(&mut city);
    let audited = |kv: &MemKv| Store::new(kv.clone()).audit_entries().count();
    let before = audited(&kv);
    let hello_on = |outputs: &[Output], on: LinkId| {
        outputs.iter().any(|o| {
            matches!(o, Output::Transmit { link, message: Message::Hello { .. } } if *link == on)
        })
    };
    let closes = |outputs: &[Output], on: LinkId| {
        outputs
            .iter()
            .any(|o| matches!(o, Output::Close { link, .. } if *link == on))
    };
    // A key pinned for no node, and the province's key (pinned, but not a child of the
    // city): closed at once, never answered, never shown connected, nothing audited.
    for (link, key) in [
        (LinkId(1), NodeKey::from_seed([0x5a; 32]).public()),
        (LinkId(2), key(id(PROVINCE)).public()),
    ] {
        city.handle_link_up(link, LinkKind::Down { key }, now(1))
            .unwrap();
        let outputs = drain(&mut city);
        assert!(closes(&outputs, link), "{outputs:?}");
        assert!(
            !hello_on(&outputs, link),
            "no Hello to a key that is not a child's"
        );
        assert!(city.links().iter().all(|l| !l.connected));
        assert_eq!(audited(&kv), before);
    }
    // The county's key: the link is up and answered.
    link_from(&mut city, LinkId(3), COUNTY, now(2));
    let outputs = drain(&mut city);
    assert!(hello_on(&outputs, LinkId(3)) && !closes(&outputs, LinkId(3)));
    assert!(
        city.links()
            .iter()
            .any(|l| l.connected && l.direction == "down")
    );
    // The county connects again: the newer connection replaces the older one, which is
    // closed; the county stays connected on the newer.
    link_from(&mut city, LinkId(4), COUNTY, now(3));
    let outputs = drain(&mut city);
    assert!(
        closes(&outputs, LinkId(3)),
        "the older connection is closed: {outputs:?}"
    );
    assert!(hello_on(&outputs, LinkId(4)) && !closes(&outputs, LinkId(4)));
    city.handle_link_down(LinkId(3), "replaced", now(4))
        .unwrap();
    assert!(
        city.links()
            .iter()
            .any(|l| l.connected && l.direction == "down")
    );
    city.handle_link_down(LinkId(4), "gone", now(5)).unwrap();
    assert!(city.links().iter().all(|l| !l.connected));
}

/// The topology keeps `contact_phone` and `premises` of water fees from travelling upstream
/// (最小必要): an origin that leaves them out is taken, a batch that carries them is refused
/// by its receiver with feedback naming each field, and the origin's own node refuses to
/// submit it.
#[test]
fn a_field_outside_the_minimum_necessary_profile_is_refused_by_name() {
    let water = protocol::Category::parse("water_fee").unwrap();
    let schema = protocol::Registry::builtin().get(&water).unwrap();
    let allowed: Vec<String> = schema
        .fields
        .iter()
        .map(|f| f.name.clone())
        .filter(|name| name != "contact_phone" && name != "premises")
        .collect();
    let base = topology(1, None);
    let profiled = Arc::new(
        base.edited(
            2,
            base.nodes().cloned().collect(),
            topology::Admissions {
                profiles: vec![topology::Profile {
                    category: water.clone(),
                    fields: allowed,
                }],
                ..Default::default()
            },
        )
        .unwrap(),
    );
    let left_out = ["contact_phone".to_owned(), "premises".to_owned()];
    let carrying = county_batch();
    let lean = batch_leaving_out(COUNTY, "2026-05", &left_out);
    assert_ne!(carrying.id, lean.id);

    let kv = MemKv::new();
    let mut city = core(CITY, profiled.clone(), kv.clone());
    link_from(&mut city, LinkId(7), COUNTY, now(1));
    drain(&mut city);
    city.handle_batch(LinkId(7), carrying.clone(), None, now(2))
        .unwrap();
    city.handle_batch(LinkId(7), lean.clone(), None, now(2))
        .unwrap();
    let outputs = make_durable(&mut city, &kv, now(3));
    let receipts = receipts_in(&outputs);
    let verdict_of = |id: BatchId| {
        receipts
            .iter()
            .find(|r| r.receipt.batch == id)
            .map(|r| r.receipt.verdict.clone())
            .unwrap()
    };
    let Verdict::Rejected { reason } = verdict_of(carrying.id) else {
        panic!("a batch carrying fields outside the profile was taken: {receipts:?}");
    };
    assert!(
        reason.contains("contact_phone")
            && reason.contains("premises")
            && reason.contains("最小必要"),
        "{reason}"
    );
    let feedback: Vec<&Problem> = outputs
        .iter()
        .filter_map(|o| match o {
            Output::Transmit {
                message: Message::Feedback { batch, problems },
                ..
            } if *batch == carrying.id => Some(problems),
            _ => None,
        })
        .flatten()
        .collect();
    assert!(
        feedback
            .iter()
            .any(|p| p.field == "contact_phone" && p.rule == protocol::record::Rule::NotInProfile),
        "{feedback:?}"
    );
    assert!(
        feedback.iter().all(|p| p.value.is_empty()),
        "the value is not echoed"
    );
    assert!(matches!(verdict_of(lean.id), Verdict::Accepted { .. }));
    let store = Store::new(kv.clone());
    assert!(!store.holds(&carrying.id).unwrap());
    assert!(store.holds(&lean.id).unwrap());

    // The county's own node refuses to submit what its parent would refuse.
    let county_kv = MemKv::new();
    let mut county = core(COUNTY, profiled, county_kv);
    let refused = county.submit(carrying, now(4)).unwrap_err().to_string();
    assert!(refused.contains("contact_phone"), "{refused}");
    county.submit(lean, now(4)).unwrap();
}

/// `signed` rebuilt with `edit` applied to its batch, signed by the county.
fn county_variant(signed: &SignedBatch, edit: impl FnOnce(&mut protocol::Batch)) -> SignedBatch {
    let mut batch = protocol::Batch::decode(&signed.bytes).unwrap();
    edit(&mut batch);
    let batch = protocol::Batch::new(batch.header, batch.records).unwrap();
    SignedBatch::seal(&batch, &key(id(COUNTY))).unwrap()
}

fn set(record: &mut protocol::Record, field: &str, value: &str) {
    let schema = protocol::Registry::builtin().by_name("water_fee").unwrap();
    record.values[schema.field_index(field).unwrap()] = protocol::Value::Text(value.into());
}

fn open_items(store: &Store<MemKv>) -> Vec<(String, String, &'static str)> {
    store
        .feedback(None)
        .map(Result::unwrap)
        .filter(|item| item.closed.is_none())
        .map(|item| (item.key.0, item.problem.field, item.problem.rule.as_str()))
        .collect()
}

/// An accepted batch's audit finding travels to the origin (and stays with the city); the
/// origin's correction closes it on both sides; a withdrawal closes the items of the record
/// it withdraws, and every side then agrees on each record's current version.
#[test]
fn an_audit_finding_reaches_the_origin_and_a_correction_closes_it() {
    let topology = topology(1, None);
    let county_kv = MemKv::new();
    let city_kv = MemKv::new();
    let mut county = core(COUNTY, topology.clone(), county_kv.clone());
    let mut city = core(CITY, topology, city_kv.clone());
    let (up, down) = (LinkId(31), LinkId(32));
    link_from(&mut city, down, COUNTY, now(1));
    path_up(&mut county, up, CITY, 1, now(1), now(1));
    drain(&mut city);

    let mut keys = Vec::new();
    let original = county_variant(&county_batch(), |batch| {
        keys = batch.records.iter().map(|r| r.key.0.clone()).collect();
        set(&mut batch.records[0], "billed_amount", "100");
        set(&mut batch.records[0], "paid_amount", "150");
    });
    county.submit(original.clone(), now(2)).unwrap();
    pump(
        (&mut county, &county_kv, up),
        (&mut city, &city_kv, down),
        3,
    );
    let expected = vec![(keys[0].clone(), "paid_amount".to_owned(), "not_greater")];
    assert_eq!(
        open_items(county.store()),
        expected,
        "the origin holds the finding"
    );
    assert_eq!(
        open_items(city.store()),
        expected,
        "the city keeps its own item"
    );
    let item = county.store().feedback(None).next().unwrap().unwrap();
    assert_eq!(item.reporter, id(CITY));
    assert_eq!(item.batch, original.id);

    // The correction supersedes the original; its record no longer breaks the rule.
    let correction = county_variant(&original, |batch| {
        batch.header.supersedes = Some(original.id);
        batch.records.truncate(1);
        set(&mut batch.records[0], "paid_amount", "100");
    });
    county.submit(correction.clone(), now(100)).unwrap();
    pump(
        (&mut county, &county_kv, up),
        (&mut city, &city_kv, down),
        101,
    );
    for store in [county.store(), city.store()] {
        assert_eq!(open_items(store), Vec::new());
        let item = store.feedback(None).next().unwrap().unwrap();
        let closed = item.closed.expect("closed by the correction");
        assert_eq!((closed.by, closed.withdrawn), (correction.id, false));
    }

    // A withdrawal of the second record, superseding the batch that holds it.
    let withdrawal = county_variant(&correction, |batch| {
        batch.header.supersedes = Some(original.id);
        batch.records.clear();
        batch.header.withdrawals = vec![protocol::batch::Withdrawal {
            key: protocol::RecordKey(keys[1].clone()),
            reason: protocol::batch::WithdrawalReason::CreditRepair,
        }];
    });
    county.submit(withdrawal.clone(), now(200)).unwrap();
    pump(
        (&mut county, &county_kv, up),
        (&mut city, &city_kv, down),
        201,
    );
    let current = |store: &Store<MemKv>| {
        let held = store
            .data_batches(
                id(COUNTY),
                Period::parse("2026-05").unwrap(),
                &protocol::Category::parse("water_fee").unwrap(),
            )
            .unwrap();
        let refs: Vec<(BatchId, &protocol::Batch)> = held.iter().map(|(i, b)| (*i, b)).collect();
        protocol::audit::current(&refs)
            .into_iter()
            .map(|(key, version)| {
                let withdrawn = matches!(version.state, protocol::audit::State::Withdrawn(_));
                (key.0.clone(), version.batch, withdrawn)
            })
            .collect::<Vec<_>>()
    };
    let at_city = current(city.store());
    assert_eq!(at_city, current(county.store()));
    assert_eq!(
        at_city,
        vec![
            (keys[0].clone(), correction.id, false),
            (keys[1].clone(), withdrawal.id, true),
            (keys[2].clone(), original.id, false),
        ]
    );
}

/// A correction chain whose middle link arrives last (original ← middle ← latest, received
/// latest, original, middle): once the middle link makes the latest version current again,
/// the receiver's items are those of the chain received in order — the latest version's
/// finding open on its batch, the `republished` item the original raised closed (found by
/// the simulator at jieyang-year seed 4209).
#[test]
fn a_correction_chain_arriving_out_of_order_leaves_the_items_of_its_current_version() {
    let (mut city, kv, link) = city_with_county();
    let mut key0 = String::new();
    let original = county_variant(&county_batch(), |batch| {
        key0 = batch.records[0].key.0.clone();
        batch.records.truncate(1);
        set(&mut batch.records[0], "billed_amount", "100");
        set(&mut batch.records[0], "paid_amount", "100");
    });
    let middle = county_variant(&original, |batch| {
        batch.header.supersedes = Some(original.id);
        set(&mut batch.records[0], "paid_amount", "90");
    });
    let latest = county_variant(&middle, |batch| {
        batch.header.supersedes = Some(middle.id);
        set(&mut batch.records[0], "paid_amount", "150");
    });
    let not_greater = (key0.clone(), "paid_amount".to_owned(), "not_greater");
    let mut receive = |batch: &SignedBatch, at: u64| {
        city.handle_batch(link, batch.clone(), None, now(at))
            .unwrap();
        let outputs = make_durable(&mut city, &kv, now(at + 1));
        assert_eq!(receipts_in(&outputs).len(), 1, "{outputs:?}");
        open_items(city.store())
    };
    assert_eq!(receive(&latest, 2), vec![not_greater.clone()]);
    // The original looks unrelated to the latest version (the link between is missing) and
    // is taken as current: the finding is gone, and the record is reported as published twice.
    let republished = |items: &[(String, String, &str)]| {
        items
            .iter()
            .any(|(key, _, rule)| *key == key0 && *rule == "republished")
    };
    assert!(republished(&receive(&original, 4)));
    assert_eq!(receive(&middle, 6), vec![not_greater]);
    let items: Vec<FeedbackItem> = city.store().feedback(None).map(Result::unwrap).collect();
    let open = items.iter().find(|item| item.closed.is_none()).unwrap();
    assert_eq!(open.batch, latest.id, "the finding is the latest version's");
    let closed = items
        .iter()
        .find(|item| item.problem.rule.as_str() == "republished")
        .and_then(|item| item.closed.clone())
        .expect("the republished item is closed");
    assert_eq!((closed.by, closed.withdrawn), (latest.id, false));
}

/// A county that sends records again in a new batch instead of as a correction is told at
/// once: how many of the batch's records it had published already, how many keep the earlier
/// version as the current one (the higher batch id wins), and the first with its batch. A
/// correction of them is not a republication, nor is the same batch submitted again.
#[test]
fn records_published_again_without_a_correction_are_reported_to_the_operator() {
    let kv = MemKv::new();
    let mut county = core(COUNTY, topology(1, None), kv);
    let original = county_batch();
    let first = county.submit(original.clone(), now(2)).unwrap();
    assert_eq!(first.republished, Republished::default());
    let records = protocol::Batch::decode(&original.bytes).unwrap().records;
    // The first two records sent again with a changed amount, a few times: the current
    // version is the one in the batch with the highest id so far.
    let mut ids = vec![original.id];
    let mut seen = std::collections::BTreeSet::new();
    for amount in 1..=6 {
        let again = county_variant(&original, |batch| {
            batch.records.truncate(2);
            for record in &mut batch.records {
                set(record, "paid_amount", &amount.to_string());
            }
        });
        let submitted = county.submit(again.clone(), now(2 + amount)).unwrap();
        ids.push(again.id);
        let not_current = if ids.iter().max() == Some(&again.id) {
            0
        } else {
            2
        };
        seen.insert(not_current);
        assert_eq!(
            submitted.republished,
            Republished {
                records: 2,
                not_current,
                first: Some((records[0].key.clone(), original.id)),
            }
        );
        assert_eq!(
            county.submit(again, now(10)).unwrap().republished,
            submitted.republished,
            "the same batch again says the same"
        );
    }
    assert_eq!(seen.len(), 2, "a republication both wins and loses");
    // A correction of the third record, which only the original published.
    let correction = county_variant(&original, |batch| {
        batch.header.supersedes = Some(original.id);
        batch.records = vec![records[2].clone()];
        set(&mut batch.records[0], "paid_amount", "2");
    });
    let corrected = county.submit(correction, now(5)).unwrap();
    assert_eq!(corrected.republished, Republished::default());
}

/// Each kind of refusal has its own label, and every label is in the exported list.
#[test]
fn every_refusal_reason_is_a_listed_label() {
    let none = BatchId([0; 32]);
    let all = [
        Rejection::UnknownOrigin(id(COUNTY)),
        Rejection::Verify(VerifyError::HashMismatch {
            claimed: none,
            actual: none,
        }),
        Rejection::Verify(VerifyError::BadSignature(none)),
        Rejection::Verify(VerifyError::Decode(
            protocol::batch::DecodeError::TrailingBytes(1),
        )),
        Rejection::UnknownCategory("x".into()),
        Rejection::SchemaVersion {
            category: "x".into(),
            got: 2,
            have: 1,
        },
        Rejection::Records {
            category: "x".into(),
            count: 1,
        },
        Rejection::Audit {
            category: "x".into(),
            count: 1,
        },
        Rejection::Manifest("x".into()),
        Rejection::Progress("x".into()),
        Rejection::NotProvince(id(CITY)),
        Rejection::NotData,
        Rejection::NotInProfile {
            category: "x".into(),
            fields: "x".into(),
            count: 1,
        },
    ];
    let labels: std::collections::BTreeSet<&str> = all.iter().map(refusal_reason).collect();
    let listed: std::collections::BTreeSet<&str> = REFUSAL_REASONS.into_iter().collect();
    let mut expected = listed.clone();
    expected.remove("key_ended");
    assert_eq!(labels, expected);
    assert_eq!(listed.len(), REFUSAL_REASONS.len(), "no label twice");
}

/// The county's batches both ways in are decided on: a good one, one with a bad record, one
/// signed for another batch (its records are fine: the signature still refuses it), one whose
/// bytes are another batch's, one of another node (the city), and a second good one.
fn prechecked_cases() -> Vec<SignedBatch> {
    let third = county_batch_of("2026-05");
    let bad_record = county_variant(&county_batch_of("2026-04"), |batch| {
        set(&mut batch.records[0], "billed_amount", "one hundred");
    });
    vec![
        county_batch_of("2026-03"),
        bad_record,
        SignedBatch {
            signature: county_batch_of("2026-03").signature,
            ..third.clone()
        },
        SignedBatch {
            bytes: county_batch_of("2026-04").bytes,
            ..third.clone()
        },
        batch_of(CITY, "2026-03"),
        third,
    ]
}

/// A submission checked before the core's lock (`Prechecked`, as the runtime submits) is
/// decided exactly as the bare one: the same results and messages for each case of
/// [`prechecked_cases`], and a repeat of a stored batch is not new either way.
#[test]
fn a_prechecked_submission_is_decided_as_the_bare_one() {
    let mut batches = prechecked_cases();
    batches.push(batches[5].clone());
    let run = |prechecked: bool| {
        let kv = MemKv::new();
        let mut county = core(COUNTY, topology(1, None), kv.clone());
        let mut decided = Vec::new();
        for (n, batch) in batches.iter().enumerate() {
            let at = now(2 + n as u64);
            let result = if prechecked {
                county
                    .submit_prechecked(Prechecked::new(batch.clone()), at)
                    .map(|(submitted, spent)| {
                        // A stored submission's records come back whole.
                        let held = protocol::Batch::decode(&batch.bytes).unwrap().records.len();
                        assert_eq!(spent.records() as usize, held);
                        submitted
                    })
            } else {
                county.submit(batch.clone(), at)
            };
            decided.push(result.map(|s| s.new).map_err(|e| e.to_string()));
            make_durable(&mut county, &kv, at);
        }
        decided
    };
    let bare = run(false);
    // The cases are what they say: two new, refusals for a bad record, a bad signature,
    // damaged bytes and another node's batch, and the same batch again is not new.
    assert_eq!(
        bare.iter().map(Result::is_ok).collect::<Vec<_>>(),
        [true, false, false, false, false, true, true]
    );
    assert_eq!(
        (bare[0].clone(), bare[5].clone(), bare[6].clone()),
        (Ok(true), Ok(true), Ok(false))
    );
    // Another node's batch is refused in an operator's words, naming both nodes.
    let others = bare[4].clone().unwrap_err();
    assert!(
        others.contains("not this node (445281)") && others.contains("submit it at node"),
        "{others}"
    );
    assert_eq!(run(true), bare);
}

/// The record index's part is prepared before the core's lock only for a data batch of at
/// most so many records (`PREPARED_RECORDS_MAX`); a larger one is prepared by the core, and
/// stored and indexed the same.
#[test]
fn only_a_batch_of_at_most_so_many_records_is_prepared_before_the_lock() {
    let batch = county_batch();
    let records = protocol::Batch::decode(&batch.bytes).unwrap().records.len();
    assert_eq!(records, 3);
    let prepared = |up_to: usize| {
        Prechecked::preparing_up_to(batch.clone(), up_to)
            .checked
            .prepared
            .is_some()
    };
    assert!(prepared(3) && !prepared(2));
    assert!(Prechecked::new(batch.clone()).checked.prepared.is_some());
    // Either way the city stores the batch with the same index entries.
    let index = |up_to: usize| {
        let kv = MemKv::new();
        let mut city = core(CITY, topology(1, None), kv.clone());
        let down = LinkId(7);
        link_from(&mut city, down, COUNTY, now(1));
        let checked = Prechecked::preparing_up_to(batch.clone(), up_to);
        city.handle_prechecked(down, checked, None, now(2)).unwrap();
        make_durable(&mut city, &kv, now(2));
        crate::store::Kv::scan(&kv, crate::store::Tree::Index, &[], None, usize::MAX).unwrap()
    };
    let prepared_before = index(3);
    assert!(!prepared_before.is_empty());
    assert_eq!(prepared_before, index(2));
}

/// A batch checked before the core's lock (`Prechecked`, as the runtime receives) is decided
/// exactly as the bare batch: the same receipts, feedback and refusals, in the same order,
/// for a good batch, one with a bad record, one signed for another batch (its records are
/// fine: the signature still refuses it), one whose bytes are another batch's, and one from
/// a node that is not this child's subtree.
#[test]
fn a_prechecked_batch_is_decided_as_the_bare_batch() {
    let batches = prechecked_cases();
    let run = |prechecked: bool| {
        let kv = MemKv::new();
        let mut city = core(CITY, topology(1, None), kv.clone());
        let down = LinkId(7);
        link_from(&mut city, down, COUNTY, now(1));
        drain(&mut city);
        let mut outputs = Vec::new();
        // The records and index keys each prechecked batch's `Spent` hands back to be freed
        // outside the core's lock.
        let mut spent = Vec::new();
        for (n, batch) in batches.iter().enumerate() {
            let at = now(2 + n as u64);
            if prechecked {
                let handed = city
                    .handle_prechecked(down, Prechecked::new(batch.clone()), None, at)
                    .unwrap();
                spent.push((handed.records(), handed.current_keys()));
            } else {
                city.handle_batch(down, batch.clone(), None, at).unwrap();
            }
            outputs.extend(make_durable(&mut city, &kv, at));
        }
        (outputs, link_of(&city, COUNTY, "down").refused, spent)
    };
    let (bare, bare_refused, _) = run(false);
    let (prechecked, prechecked_refused, spent) = run(true);
    // A stored batch's records come back whole; nothing comes back from a refused one.
    let records = |n: usize| {
        protocol::Batch::decode(&batches[n].bytes)
            .unwrap()
            .records
            .len() as u32
    };
    assert!(records(0) > 0 && records(5) > 0);
    // With them, the index update that made each of its records current.
    let whole = |n: usize| (records(n), records(n) as usize);
    assert_eq!(spent, [whole(0), (0, 0), (0, 0), (0, 0), (0, 0), whole(5)]);
    // The cases are what they say.
    assert_eq!(
        bare_refused,
        BTreeMap::from([
            ("bad_signature", 1),
            ("hash_mismatch", 1),
            ("records", 1),
            ("unknown_origin", 1),
        ])
    );
    assert_eq!(
        receipts_in(&bare)
            .iter()
            .filter(|r| matches!(r.receipt.verdict, Verdict::Accepted { .. }))
            .count(),
        2
    );
    assert_eq!(prechecked_refused, bare_refused);
    assert_eq!(prechecked, bare);
}
