//! The fuzz targets. Each takes arbitrary bytes, must never panic, and checks what can be
//! checked of its result: a decoder that accepts bytes accepts only canonical ones (they
//! re-encode to exactly the input, so `decode(encode(x)) == x` for every value reached), the
//! kinds of content agree with each other, what an origin makes every receiver accepts, and
//! errors point inside the input. A property that does not hold panics, like a crash.
//!
//! These functions are the targets of both fuzzers: the stable one (`tests/fuzz.rs`, under
//! `cargo test`) and cargo-fuzz (`cargo-fuzz/`, nightly).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::OnceLock;

use node::ingest::{Encoding, IngestError, IngestOptions, ingest_bytes};
use protocol::batch::{BATCH_BYTES_MAX, Batch, Signature, Verifier};
use protocol::ids::BatchId;
use protocol::manifest::{Content, ContentKind, Manifest};
use protocol::progress::ProgressReport;
use protocol::reconcile::{
    FRAME_LIMIT, Initiator, Item, ReconcileError, Responder, Step, run_local, validate,
};
use protocol::sync::{Rejection, verify_content_with};
use protocol::wire::{
    BATCH_FRAME_BYTES_MAX, FRAME_BYTES_MAX, FRAME_HEADER_BYTES, Message, decode_frame,
};
use protocol::{PublicKey, Record, Registry, SignedBatch};
use topology::Topology;

use crate::runner::{Target, Verdict};
use crate::seeds;

/// Accepts every signature: the targets reach what a receiver does after the signature.
struct AnySignature;

impl Verifier for AnySignature {
    fn verify(&self, _: &PublicKey, _: &[u8], _: &[u8], _: &Signature) -> bool {
        true
    }
}

/// `bytes` in the envelope they travel in, with the id they hash to.
fn envelope(bytes: &[u8]) -> SignedBatch {
    SignedBatch {
        id: BatchId::of(bytes),
        signature: Signature([0; 64]),
        bytes: bytes.to_vec(),
    }
}

/// What a receiver decides about `bytes` (hash and signature pass), checked against what the
/// decoders say on their own. Returns the content if the receiver accepts it.
fn receive(bytes: &[u8]) -> Option<Content> {
    let signed = envelope(bytes);
    let key = seeds::node_key().public();
    let summary = signed.summary();
    let content = Content::decode(bytes);
    if let Ok(content) = &content {
        let summary = summary
            .as_ref()
            .unwrap_or_else(|e| panic!("content decodes but its summary does not: {e}"));
        assert_eq!(summary, &content.summary(), "summary and content disagree");
    }
    let verdict = verify_content_with(&signed, |_| Some(key), Registry::builtin(), &AnySignature);
    match verdict {
        Ok(received) => {
            let content = content.expect("a receiver accepted content that does not decode");
            assert_eq!(received, content, "receiver and decoder disagree");
            Some(received)
        }
        Err((Rejection::Verify(_), _)) | Err((Rejection::Manifest(_), _)) => {
            assert!(
                content.is_err() || summary.is_err(),
                "refused content that decodes"
            );
            None
        }
        Err(_) => None,
    }
}

/// Wire frames as a stream delivers them: frames back to back, each header checked against
/// the limit before its payload is read. A decoded frame re-encodes to exactly its bytes.
pub fn wire_frame(data: &[u8]) -> Verdict {
    let mut verdict = Verdict::Refused;
    for limit in [FRAME_BYTES_MAX, BATCH_FRAME_BYTES_MAX] {
        let mut rest = data;
        while let Ok(Some((message, used))) = decode_frame(rest, limit) {
            assert!(
                (FRAME_HEADER_BYTES..=rest.len()).contains(&used),
                "frame of {used} bytes from {} available",
                rest.len()
            );
            assert!(used - FRAME_HEADER_BYTES <= limit, "frame over the limit");
            let encoded = message.encode();
            assert!(
                encoded == rest[..used],
                "a decoded frame re-encodes to other bytes ({} from {used}): the decoder accepts a non-canonical form of {message:?}",
                encoded.len()
            );
            if let Message::Batch(batch) | Message::Forwarded { batch, .. } = &message {
                let _ = batch.summary();
            }
            verdict = Verdict::Accepted;
            rest = &rest[used..];
        }
    }
    verdict
}

/// Data batches: `Batch::decode` accepts only canonical bytes, and agrees with the envelope's
/// header, the summary and a receiver's decision.
pub fn batch(data: &[u8]) -> Verdict {
    let decoded = Batch::decode(data);
    let header = envelope(data).header();
    if let Ok(batch) = &decoded {
        assert_eq!(
            batch.encode().expect("a decoded batch encodes"),
            data,
            "Batch::decode accepted bytes that are not canonical"
        );
        assert_eq!(
            header.as_ref().ok(),
            Some(&batch.header),
            "header disagrees"
        );
    }
    // Read in place, the same verdict and the same records (or the same error).
    let mut read = Vec::new();
    let in_place = Batch::read_each(data, |_, record| read.push(Record::from(record)));
    match (&decoded, in_place) {
        (Ok(batch), Ok((header, count))) => {
            assert_eq!(header, batch.header, "read in place: another header");
            assert_eq!(count, batch.records.len(), "read in place: another count");
            assert_eq!(read, batch.records, "read in place: other records");
        }
        (Err(refused), Err(error)) => assert_eq!(&error, refused, "read in place: another error"),
        (decoded, in_place) => panic!(
            "decode and read_each disagree: {:?} against {:?}",
            decoded.as_ref().map(|b| b.records.len()),
            in_place.map(|(_, n)| n)
        ),
    }
    receive(data);
    if decoded.is_ok() {
        Verdict::Accepted
    } else {
        Verdict::Refused
    }
}

/// Period manifests: canonical only, and the same through `Content` and a receiver.
pub fn manifest(data: &[u8]) -> Verdict {
    let decoded = Manifest::decode(data);
    if let Ok(manifest) = &decoded {
        assert_eq!(
            manifest.encode(),
            data,
            "Manifest::decode accepted a non-canonical form"
        );
        assert_eq!(
            Content::decode(data)
                .expect("a manifest decodes as content")
                .kind(),
            ContentKind::Manifest
        );
    }
    receive(data);
    if decoded.is_ok() {
        Verdict::Accepted
    } else {
        Verdict::Refused
    }
}

/// Progress reports: canonical only, and the same through `Content` and a receiver.
pub fn progress(data: &[u8]) -> Verdict {
    let decoded = ProgressReport::decode(data);
    if let Ok(report) = &decoded {
        assert_eq!(
            report.encode(),
            data,
            "ProgressReport::decode accepted a non-canonical form"
        );
        let _ = report.total();
    }
    receive(data);
    if decoded.is_ok() {
        Verdict::Accepted
    } else {
        Verdict::Refused
    }
}

/// Splits the reconcile target's input into messages: each a u16 little-endian length and
/// that many bytes (the last may be short).
fn messages(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while data.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([data[0], data[1]]));
        let end = (2 + len).min(data.len());
        out.push(&data[2..end]);
        data = &data[end..];
    }
    out
}

/// A message that passed [`validate`] must never make negentropy fail, and what a session
/// sends must itself pass [`validate`] and the frame limit.
fn no_internal_error(result: &Result<impl Sized, ReconcileError>, message: &[u8]) {
    if let Err(error @ (ReconcileError::Negentropy(_) | ReconcileError::OutgoingTooLarge { .. })) =
        result
    {
        panic!(
            "{error} after a message of {} bytes that passed validation",
            message.len()
        );
    }
}

fn check_outgoing(message: &[u8]) {
    assert!(message.len() <= FRAME_LIMIT, "sent {} bytes", message.len());
    validate(message).unwrap_or_else(|e| panic!("a session sent an invalid message: {e}"));
}

/// Reconciliation messages read by a session: the first byte says which side reads (even:
/// the responder, the initiator's messages; odd: the initiator, the replies), the rest is a
/// sequence of messages.
pub fn reconcile(data: &[u8]) -> Verdict {
    let Some((&role, rest)) = data.split_first() else {
        return Verdict::Refused;
    };
    let _ = validate(rest);
    let (initiator_items, responder_items) = seeds::reconcile_sets();
    let messages = messages(rest);
    let mut all_read = !messages.is_empty();
    if role % 2 == 0 {
        let mut responder = Responder::new(responder_items);
        for message in &messages {
            let result = responder.handle(message);
            no_internal_error(&result, message);
            match result {
                Ok(reply) => check_outgoing(&reply),
                Err(_) => {
                    all_read = false;
                    break;
                }
            }
        }
    } else {
        let mut initiator = Initiator::new(initiator_items);
        check_outgoing(&initiator.start().expect("a session starts"));
        for message in &messages {
            let result = initiator.handle(message);
            no_internal_error(&result, message);
            match result {
                Ok(Step::Send(next)) => check_outgoing(&next),
                Ok(Step::Done) => break,
                Err(_) => {
                    all_read = false;
                    break;
                }
            }
        }
        let need = initiator.need().len();
        assert!(
            need <= messages.iter().map(|m| m.len() / 32).sum::<usize>(),
            "the initiator needs {need} ids, more than the replies could carry"
        );
    }
    if all_read {
        Verdict::Accepted
    } else {
        Verdict::Refused
    }
}

/// Two sets from the input, reconciled in memory: the outcome is exactly their differences.
/// The first byte adds `scale × 2,000` items to both sets (large sets take several rounds);
/// then each 3 bytes are an item (a 16-bit number) and whether each side holds it.
pub fn reconcile_sets(data: &[u8]) -> Verdict {
    let Some((&scale, rest)) = data.split_first() else {
        return Verdict::Refused;
    };
    // Items 0..65536 from the input, 65536.. shared; made once (hashing is most of a case).
    static ITEMS: OnceLock<Vec<Item>> = OnceLock::new();
    let items = ITEMS.get_or_init(|| {
        (0..(1u32 << 16) + 6_000)
            .map(|n| {
                let id = *blake3::hash(&n.to_le_bytes()).as_bytes();
                // The same id always has the same timestamp, as callers must ensure.
                (u64::from(id[0] % 16), id)
            })
            .collect()
    });
    let mut a = BTreeSet::new();
    let mut b = BTreeSet::new();
    let shared = usize::from(scale % 4) * 2_000;
    for &item in &items[1 << 16..(1 << 16) + shared] {
        a.insert(item);
        b.insert(item);
    }
    for chunk in rest.chunks_exact(3) {
        let item = items[usize::from(u16::from_le_bytes([chunk[1], chunk[2]]))];
        if chunk[0] & 1 != 0 {
            a.insert(item);
        }
        if chunk[0] & 2 != 0 {
            b.insert(item);
        }
    }
    let outcome = run_local(a.iter().copied().collect(), b.iter().copied().collect())
        .unwrap_or_else(|e| {
            panic!(
                "a local session of {} and {} items failed: {e}",
                a.len(),
                b.len()
            )
        });
    assert!(outcome.complete);
    let ids = |set: &BTreeSet<Item>, other: &BTreeSet<Item>| -> Vec<[u8; 32]> {
        let mut ids: Vec<[u8; 32]> = set.difference(other).map(|(_, id)| *id).collect();
        ids.sort_unstable();
        ids
    };
    assert_eq!(outcome.have, ids(&a, &b), "have is not a minus b");
    assert_eq!(outcome.need, ids(&b, &a), "need is not b minus a");
    Verdict::Accepted
}

/// A CSV export as a file: the first byte chooses the category, the second the encoding, the
/// third the records per batch. What ingestion makes, every receiver must accept; every row
/// read is either a record or a refused row.
pub fn ingest(data: &[u8]) -> Verdict {
    let [category, encoding, per_batch, file @ ..] = data else {
        return Verdict::Refused;
    };
    let names = seeds::category_names();
    let schema = Registry::builtin()
        .by_name(names[usize::from(*category) % names.len()])
        .expect("a built-in category");
    let node_key = seeds::node_key();
    let options = IngestOptions {
        schema,
        origin: seeds::origin(),
        period: seeds::period(),
        encoding: if encoding % 2 == 0 {
            Encoding::Utf8
        } else {
            Encoding::Gbk
        },
        desensitize_key: &seeds::NETWORK_KEY,
        node_key: &node_key,
        batch_records_max: 1 + usize::from(per_batch % 8),
        left_out: &[],
    };
    let report = match ingest_bytes(Path::new("fuzz.csv"), file, &options, |_| {}) {
        Ok(report) => report,
        Err(IngestError::Build { source, .. }) => {
            panic!("ingestion read the file but could not build its batches: {source}")
        }
        Err(_) => return Verdict::Refused,
    };
    assert_eq!(
        report.rows,
        report.records + report.rejected.len() as u64,
        "every row is a record or a refused row"
    );
    let mut records = 0;
    let key = node_key.public();
    for signed in &report.batches {
        assert!(signed.bytes.len() <= BATCH_BYTES_MAX);
        let batch = protocol::sync::verify_incoming(signed, |_| Some(key), Registry::builtin())
            .unwrap_or_else(|(rejection, problems)| {
                panic!("a receiver refuses what ingestion made: {rejection}: {problems:#?}")
            });
        assert!(batch.records.len() <= options.batch_records_max);
        records += batch.records.len() as u64;
    }
    assert_eq!(records, report.records, "records in batches");
    if report.records > 0 {
        Verdict::Accepted
    } else {
        Verdict::Refused
    }
}

/// A topology file: a parsed topology renders to text that parses back to it (and renders
/// the same again); every problem of a refused file is at a line and column inside it.
pub fn topology(data: &[u8]) -> Verdict {
    let text = String::from_utf8_lossy(data);
    match Topology::parse(&text) {
        Ok(parsed) => {
            let rendered = parsed.render();
            let again = Topology::parse(&rendered).unwrap_or_else(|e| {
                panic!("a rendered topology does not parse: {e:?}\n{rendered}")
            });
            assert!(
                again == parsed,
                "render and parse do not round trip:\n{rendered}"
            );
            assert_eq!(again.render(), rendered, "render is not stable");
            Verdict::Accepted
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "refused without a reason");
            let lines = text.bytes().filter(|b| *b == b'\n').count() + 1;
            for error in &errors {
                assert!(
                    (1..=lines).contains(&error.line) && error.column >= 1,
                    "{error} is outside the file's {lines} lines"
                );
            }
            Verdict::Refused
        }
    }
}

/// Bytes one case of a decoding target may allocate at once: the limit its decoders check
/// before allocating (bincode allocates up to that from a length it has checked against it,
/// zeroed and untouched until read), and room proportional to the input.
fn decoder_bound(len: usize) -> usize {
    BATCH_FRAME_BYTES_MAX + 512 * len + (4 << 20)
}

pub const WIRE_DICTIONARY: &[&[u8]] =
    &[&[1, 0, 0, 0, 0], &[1, 0, 0, 0x10, 0], &[0; 32], &[0xff; 4]];

pub const TEXT_DICTIONARY: &[&[u8]] = &[
    b",",
    b"\"",
    b"\"\"",
    b"\r\n",
    b"\n",
    b"\xEF\xBB\xBF",
    "\u{3000}".as_bytes(),
    "，".as_bytes(),
    "９１４４".as_bytes(),
    b"000000000000000000",
    b"91445281MA00000000",
    b"11010519491231002X",
    b"2022-05",
    b"2022-05-31",
    b"-0.00",
    b"1,234.5",
    "自然人".as_bytes(),
    "法人及非法人组织".as_bytes(),
    b"\x81\x30",
    b"\xa1\xa1",
    b"\x00",
    b"\x7f",
];

pub const TOML_DICTIONARY: &[&[u8]] = &[
    b"[[node]]\n",
    b"[[legacy_link]]\n",
    b"[[schedule]]\n",
    b"[[schedule.allocation]]\n",
    b"id = \"445281\"\n",
    b"parent = \"000000\"\n",
    b"role = \"county\"\n",
    b"migrate = true\n",
    b"version = 2\n",
    b"revoked_keys = []\n",
    b"cadence = \"monthly\"\n",
    b"due_day = 31\n",
    b"reporters = [\"445200\"]\n",
    b"\"",
    b"'''",
    b"\"\"\"",
    b" = ",
    b"[",
    b"]",
    b"{",
    b"}",
    b"#",
    b"\\u0000",
    b"9223372036854775807",
    b"1e400",
    b"127.0.0.1:0",
    b"[::1]:7000",
];

/// Every target, as the fuzzers run them.
pub fn all() -> Vec<Target> {
    vec![
        Target {
            name: "wire_frame",
            run: wire_frame,
            seeds: seeds::wire_seeds,
            dictionary: WIRE_DICTIONARY,
            max_len: 64 * 1024,
            memory_bound: decoder_bound,
            default_cases: 20_000,
        },
        Target {
            name: "batch",
            run: batch,
            seeds: seeds::batch_seeds,
            dictionary: WIRE_DICTIONARY,
            max_len: 64 * 1024,
            memory_bound: decoder_bound,
            default_cases: 20_000,
        },
        Target {
            name: "manifest",
            run: manifest,
            seeds: seeds::manifest_seeds,
            dictionary: WIRE_DICTIONARY,
            max_len: 16 * 1024,
            memory_bound: decoder_bound,
            default_cases: 20_000,
        },
        Target {
            name: "progress",
            run: progress,
            seeds: seeds::progress_seeds,
            dictionary: WIRE_DICTIONARY,
            max_len: 16 * 1024,
            memory_bound: decoder_bound,
            default_cases: 20_000,
        },
        Target {
            name: "reconcile",
            run: reconcile,
            seeds: seeds::reconcile_seeds,
            dictionary: &[
                &[0x61],
                &[0x61, 0, 0, 0],
                &[2, 0x7f],
                &[0x80],
                &[0xff, 0xff],
            ],
            max_len: 64 * 1024,
            memory_bound: |len| (16 << 20) + 512 * len,
            default_cases: 3_000,
        },
        Target {
            name: "reconcile_sets",
            run: reconcile_sets,
            seeds: seeds::reconcile_sets_seeds,
            dictionary: &[&[3, 0, 0], &[1, 0xff, 0xff], &[2, 0, 1]],
            max_len: 4 * 1024,
            memory_bound: |len| (32 << 20) + 512 * len,
            default_cases: 1_000,
        },
        Target {
            name: "ingest",
            run: ingest,
            seeds: seeds::ingest_seeds,
            dictionary: TEXT_DICTIONARY,
            max_len: 16 * 1024,
            memory_bound: |len| (16 << 20) + 256 * len,
            default_cases: 3_000,
        },
        Target {
            name: "topology",
            run: topology,
            seeds: seeds::topology_seeds,
            dictionary: TOML_DICTIONARY,
            max_len: 32 * 1024,
            memory_bound: |len| (16 << 20) + 1024 * len,
            default_cases: 3_000,
        },
    ]
}

/// The target called `name`.
pub fn by_name(name: &str) -> Target {
    all()
        .into_iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no fuzz target {name}"))
}
