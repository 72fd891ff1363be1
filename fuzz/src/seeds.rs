//! Seed inputs: valid encodings made by the code under test, so that mutation starts deep
//! inside each format. `FUZZ_WRITE_CORPUS=1 cargo test -p credit-fuzz --test fuzz corpus`
//! writes them to `corpus/<target>/` (the committed corpus); the fuzzer also makes them
//! afresh on every run, so a format change never leaves it with stale seeds only.

use std::path::Path;

use node::ingest::{Encoding, IngestOptions, ingest_bytes};
use protocol::batch::{BATCH_FORMAT, Batch, BatchHeader, Withdrawal, WithdrawalReason};
use protocol::ids::{BatchId, Category, NodeId, Period, PersonToken};
use protocol::manifest::{Manifest, ManifestEntry};
use protocol::progress::{
    CategoryProgress, LegacyPhase, LocalPlatform, OperatorFigures, PlatformPath, PlatformRole,
    ProgressReport,
};
use protocol::reconcile::{Initiator, Item, Responder, Step};
use protocol::record::{Record, RecordKey, Subject, Value};
use protocol::wire::{Message, Offer, Receipt, ReconcileKind, ReconcileScope, Verdict};
use protocol::{DesensitizeKey, NodeKey, Registry, SignedBatch};

pub const NETWORK_KEY: DesensitizeKey = DesensitizeKey([7; 32]);

pub fn node_key() -> NodeKey {
    NodeKey::from_seed([5; 32])
}

pub fn origin() -> NodeId {
    NodeId::parse("445281").expect("a county code")
}

pub fn period() -> Period {
    Period::parse("2022-05").expect("a month")
}

/// The categories the ingest target chooses from by its first byte, in name order.
pub fn category_names() -> Vec<&'static str> {
    let mut names = Registry::builtin().names();
    names.sort_unstable();
    names
}

/// The ingest target's input: a byte choosing the category, one the encoding, one the
/// records per batch, then the file.
pub fn ingest_input(category: &str, encoding: Encoding, per_batch: u8, file: &[u8]) -> Vec<u8> {
    let index = category_names()
        .iter()
        .position(|n| *n == category)
        .expect("a built-in category");
    let mut input = vec![index as u8, u8::from(encoding == Encoding::Gbk), per_batch];
    input.extend_from_slice(file);
    input
}

/// Signed batches of a few records of several categories, from sample exports.
pub fn sample_batches() -> Vec<SignedBatch> {
    let key = node_key();
    let mut batches = Vec::new();
    for (index, category) in ["water_fee", "admin_penalty", "admin_license", "gas_fee"]
        .iter()
        .enumerate()
    {
        let schema = Registry::builtin().by_name(category).expect("built in");
        let file = sample::sample_csv(schema, origin(), period(), 3, 0, index as u64);
        let options = IngestOptions {
            schema,
            origin: origin(),
            period: period(),
            encoding: Encoding::Utf8,
            desensitize_key: &NETWORK_KEY,
            node_key: &key,
            batch_records_max: 3,
            left_out: &[],
        };
        let report = ingest_bytes(
            Path::new("seed.csv"),
            file.text.as_bytes(),
            &options,
            |_| {},
        )
        .expect("a sample ingests");
        batches.extend(report.batches);
    }
    // A correction with withdrawals and a person's token.
    let header = BatchHeader {
        format: BATCH_FORMAT,
        origin: origin(),
        category: Category::parse("water_fee").expect("a category"),
        schema_version: 1,
        period: period(),
        supersedes: Some(batches[0].id),
        withdrawals: vec![
            Withdrawal {
                key: RecordKey("AC00000001".into()),
                reason: WithdrawalReason::CreditRepair,
            },
            Withdrawal {
                key: RecordKey("AC00000002".into()),
                reason: WithdrawalReason::DisplayExpired,
            },
        ],
    };
    let record = Record {
        key: RecordKey("AC00000009|2022-05".into()),
        subject: Subject::Person(PersonToken([9; 16])),
        values: vec![
            Value::Absent,
            Value::Text("自然人".into()),
            Value::Token {
                masked: "445281***********X".into(),
                token: PersonToken([9; 16]),
            },
        ],
    };
    let batch = Batch::new(header, vec![record]).expect("a valid batch");
    batches.push(SignedBatch::seal(&batch, &key).expect("encodes"));
    batches
}

pub fn batch_seeds() -> Vec<Vec<u8>> {
    sample_batches().into_iter().map(|b| b.bytes).collect()
}

fn manifests() -> Vec<Manifest> {
    let water = Category::parse("water_fee").expect("a category");
    let batches = sample_batches();
    vec![
        Manifest::nil(origin(), water.clone(), period(), 1_650_000_000_000),
        Manifest::new(
            origin(),
            water.clone(),
            period(),
            2,
            batches
                .iter()
                .take(3)
                .enumerate()
                .map(|(i, b)| ManifestEntry {
                    batch: b.id,
                    records: 3 + i as u32,
                    supersedes: (i == 1).then(|| batches[0].id),
                })
                .collect(),
            Some(1_234),
            1_650_000_000_000,
        )
        .expect("a valid manifest"),
        Manifest::new(
            NodeId::parse("445200").expect("a city"),
            Category::parse("gas_fee").expect("a category"),
            Period::parse("2026-11-30").expect("a day"),
            u32::MAX,
            vec![ManifestEntry {
                batch: BatchId([0xfe; 32]),
                records: u32::MAX,
                supersedes: None,
            }],
            Some(u64::MAX),
            u64::MAX,
        )
        .expect("a valid manifest"),
    ]
}

pub fn manifest_seeds() -> Vec<Vec<u8>> {
    manifests().iter().map(Manifest::encode).collect()
}

fn progress(category: &str, expected: u32, late: u32, missing: u32) -> CategoryProgress {
    CategoryProgress {
        expected,
        on_time: expected - late - missing,
        late,
        missing,
        records_delivered: 120,
        records_declared: 130,
        records_delivered_of_declared: 120,
        concealed: 1,
        ..CategoryProgress::empty(Category::parse(category).expect("a category"))
    }
}

fn progress_reports() -> Vec<ProgressReport> {
    let id = |text: &str| NodeId::parse(text).expect("a division");
    let figures = OperatorFigures {
        registered_enterprises: 1_234_567,
        financial_institutions: 321,
        financing_loans: 45_678,
        financing_amount_wan_yuan: 9_876_543,
        notes: Some("含揭阳市新接入的三家农商行".into()),
    };
    let platforms = vec![
        LocalPlatform {
            node: id("445281"),
            name: "普宁市".into(),
            role: PlatformRole::County,
            parent: None,
            path: PlatformPath::Legacy {
                via: id("445281"),
                phase: LegacyPhase::NewPathCarrying,
            },
            connected: false,
            categories: vec![progress("water_fee", 1, 0, 1)],
        },
        LocalPlatform {
            node: id("445200"),
            name: "揭阳市".into(),
            role: PlatformRole::City,
            parent: Some(id("440000")),
            path: PlatformPath::Hierarchy,
            connected: true,
            categories: vec![progress("water_fee", 3, 1, 1), progress("gas_fee", 2, 0, 0)],
        },
    ];
    vec![
        ProgressReport::new(
            id("440000"),
            Period::parse("2026-03").expect("a month"),
            2,
            platforms,
            figures.clone(),
            1_800_000_000_000,
        )
        .expect("a valid report"),
        ProgressReport::new(
            id("110000"),
            Period::parse("2026-04").expect("a month"),
            1,
            Vec::new(),
            OperatorFigures {
                notes: None,
                ..figures
            },
            0,
        )
        .expect("a valid report"),
    ]
}

pub fn progress_seeds() -> Vec<Vec<u8>> {
    progress_reports()
        .iter()
        .map(ProgressReport::encode)
        .collect()
}

/// The two sets the reconcile target's sessions run over: the initiator's and the
/// responder's, sharing most items.
pub fn reconcile_sets() -> (Vec<Item>, Vec<Item>) {
    let item = |n: u32| {
        let id = *blake3::hash(&n.to_le_bytes()).as_bytes();
        (u64::from(n % 12), id)
    };
    let initiator = (0..400).filter(|n| n % 7 != 3).map(item).collect();
    let responder = (0..400)
        .filter(|n| n % 11 != 5)
        .chain(400..440)
        .map(item)
        .collect();
    (initiator, responder)
}

/// `messages`, each preceded by its length (u16, little-endian): how the reconcile target
/// reads a session from one input.
pub fn frame_messages(messages: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for message in messages {
        let len = u16::try_from(message.len()).expect("seed messages are short");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(message);
    }
    out
}

/// A whole session over [`reconcile_sets`]: what the initiator sent and what the responder
/// answered.
pub fn reconcile_session() -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let (a, b) = reconcile_sets();
    let mut initiator = Initiator::new(a);
    let mut responder = Responder::new(b);
    let mut sent = vec![initiator.start().expect("starts")];
    let mut replies = Vec::new();
    loop {
        let reply = responder
            .handle(sent.last().expect("sent"))
            .expect("answers");
        replies.push(reply.clone());
        match initiator.handle(&reply).expect("reads") {
            Step::Send(next) => sent.push(next),
            Step::Done => return (sent, replies),
        }
    }
}

/// Inputs of the reconcile target: its first byte says which side reads (even: the
/// responder reads the initiator's messages; odd: the initiator reads the replies).
pub fn reconcile_seeds() -> Vec<Vec<u8>> {
    let (sent, replies) = reconcile_session();
    let mut seeds = Vec::new();
    for (role, messages) in [(0u8, &sent), (1u8, &replies)] {
        let mut input = vec![role];
        input.extend(frame_messages(messages));
        seeds.push(input);
        // Each message alone, too.
        for message in messages.iter().take(4) {
            let mut input = vec![role];
            input.extend(frame_messages(std::slice::from_ref(message)));
            seeds.push(input);
        }
    }
    seeds
}

/// Inputs of the reconcile-sets target: a scale byte, then 3-byte items (membership flags and
/// a 16-bit item number).
pub fn reconcile_sets_seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for (scale, count) in [(0u8, 40u16), (1, 300), (3, 30)] {
        let mut input = vec![scale];
        for n in 0..count {
            let flags = match n % 5 {
                0 => 1,
                1 => 2,
                _ => 3,
            };
            input.push(flags);
            input.extend_from_slice(&n.to_le_bytes());
        }
        seeds.push(input);
    }
    seeds
}

/// Frames of every message kind, with real contents.
pub fn wire_seeds() -> Vec<Vec<u8>> {
    let key = node_key();
    let batches = sample_batches();
    let receipt = |batch: &SignedBatch, verdict: Verdict| {
        Receipt {
            receiver: NodeId::parse("445200").expect("a city"),
            batch: batch.id,
            origin: origin(),
            received_at_ms: 1_650_000_000_000,
            verdict,
        }
        .sign(&key)
    };
    let accepted = receipt(&batches[0], Verdict::Accepted { warnings: 2 });
    let rejected = receipt(
        &batches[1],
        Verdict::Rejected {
            reason: "1 record(s) fail the water_fee schema (see the feedback)".into(),
        },
    );
    let schema = Registry::builtin().by_name("water_fee").expect("built in");
    let bad_row: Vec<Option<&str>> = schema.fields.iter().map(|_| Some("？x")).collect();
    let problems = schema
        .validate(&bad_row, period(), &NETWORK_KEY)
        .expect_err("a row of junk is refused");
    let (sent, replies) = reconcile_session();
    let scope = ReconcileScope {
        kind: ReconcileKind::Batches,
        year: 2022,
    };
    let messages = vec![
        Message::Hello {
            node: origin(),
            wire_version: protocol::wire::WIRE_VERSION,
            topology_version: 3,
        },
        Message::Offer {
            offers: batches
                .iter()
                .map(|b| Offer {
                    id: b.id,
                    origin: origin(),
                    category: Category::parse("water_fee").expect("a category"),
                    period: period(),
                    bytes: b.bytes.len() as u32,
                })
                .collect(),
        },
        Message::Want {
            ids: batches.iter().map(|b| b.id).collect(),
        },
        Message::Batch(batches[0].clone()),
        Message::Forwarded {
            batch: batches[2].clone(),
            first_receipt: Box::new(accepted.clone()),
        },
        Message::Receipts {
            receipts: vec![accepted.clone(), rejected.clone()],
        },
        Message::UpstreamReceipts {
            receipts: vec![rejected],
        },
        Message::UpstreamStored {
            done: vec![(batches[0].id, NodeId::NATIONAL)],
        },
        Message::Feedback {
            batch: batches[1].id,
            problems: problems.clone(),
        },
        Message::Reconcile {
            session: 7,
            scope,
            message: sent[0].clone(),
        },
        Message::ReconcileReply {
            session: 7,
            message: replies[0].clone(),
        },
        Message::ReconcileDone {
            session: 7,
            scope: ReconcileScope {
                kind: ReconcileKind::Receipts,
                year: 2026,
            },
            parent_only: vec![[3; 32], [4; 32]],
        },
        Message::ReconcileAsk,
        Message::Ping { nonce: u64::MAX },
        Message::Pong { nonce: 1 },
        Message::Goodbye {
            reason: "topology reloaded: this link is no longer allowed".into(),
        },
        Message::Findings {
            batch: batches[1].id,
            findings: problems
                .into_iter()
                .map(|problem| protocol::audit::Finding {
                    key: protocol::RecordKey("WS-0001|2022-05".into()),
                    problem,
                })
                .collect(),
        },
    ];
    let mut seeds: Vec<Vec<u8>> = messages.iter().map(Message::encode).collect();
    // Two frames back to back, as a stream carries them.
    seeds.push([seeds[0].clone(), seeds[13].clone()].concat());
    seeds
}

/// Sample exports as the ingest target reads them: several categories, with bad rows, in
/// UTF-8 with and without a byte-order mark and in GBK.
pub fn ingest_seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for (index, category) in [
        "water_fee",
        "admin_penalty",
        "admin_license",
        "real_estate_mortgage",
    ]
    .iter()
    .enumerate()
    {
        let schema = Registry::builtin().by_name(category).expect("built in");
        let file = sample::sample_csv(schema, origin(), period(), 6, 2, index as u64);
        seeds.push(ingest_input(
            category,
            Encoding::Utf8,
            4,
            file.text.as_bytes(),
        ));
    }
    let water = Registry::builtin().by_name("water_fee").expect("built in");
    let file = sample::sample_csv(water, origin(), period(), 4, 1, 9);
    let (gbk, _, unmappable) = encoding_rs::GBK.encode(&file.text);
    assert!(!unmappable, "the sample is GBK-encodable");
    seeds.push(ingest_input("water_fee", Encoding::Gbk, 2, &gbk));
    let with_bom = [b"\xEF\xBB\xBF".as_slice(), file.text.as_bytes()].concat();
    seeds.push(ingest_input("water_fee", Encoding::Utf8, 1, &with_bom));
    seeds
}

/// Topology files: the shipped Jieyang example and some of the checker's test files (the
/// valid ones with every section, and refused ones of several kinds).
pub fn topology_seeds() -> Vec<Vec<u8>> {
    let mut seeds = vec![include_bytes!("../../topology/examples/jieyang.toml").to_vec()];
    let check = Path::new(env!("CARGO_MANIFEST_DIR")).join("../topology/tests/data/check");
    for name in [
        "ok-all-sections",
        "ok-allocation",
        "ok-minimal",
        "syntax",
        "node-cycles",
        "legacy-link-keys",
        "schedule-keys",
        "allocation-rules",
    ] {
        // A file renamed or removed in the checker's tests leaves one seed fewer, not a failure.
        if let Ok(bytes) = std::fs::read(check.join(name).with_extension("toml")) {
            seeds.push(bytes);
        }
    }
    seeds
}
