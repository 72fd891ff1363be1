//! Property tests of batch encoding and wire frames: round trip, order independence of the id,
//! single-bit corruption always detected, and arbitrary bytes never panic a decoder.

use proptest::prelude::*;
use protocol::batch::{
    BATCH_FORMAT, Batch, BatchHeader, DecodeError, EncodedRecords, Withdrawal, WithdrawalReason,
};
use protocol::ids::{BatchId, Category, NodeId, Period, PersonToken, Uscc};
use protocol::record::{Record, RecordKey, Subject, Value};
use protocol::wire::{self, FRAME_BYTES_MAX, Message, Offer, Receipt, Verdict};
use protocol::{NodeKey, Signature, SignedBatch};

fn header(withdrawals: Vec<Withdrawal>) -> BatchHeader {
    BatchHeader {
        format: BATCH_FORMAT,
        origin: NodeId::parse("445281").unwrap(),
        category: Category::parse("water_fee").unwrap(),
        schema_version: 1,
        period: Period::parse("2022-05").unwrap(),
        supersedes: None,
        withdrawals,
    }
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Absent),
        ".{0,12}".prop_map(|text| Value::Text(text.into())),
        (".{0,8}", any::<[u8; 16]>()).prop_map(|(masked, t)| Value::Token {
            masked: masked.into(),
            token: PersonToken(t)
        }),
    ]
}

fn subject() -> impl Strategy<Value = Subject> {
    prop_oneof![
        Just(Subject::Organization(
            Uscc::parse("914403001922038216").unwrap()
        )),
        any::<[u8; 16]>().prop_map(|t| Subject::Person(PersonToken(t))),
    ]
}

/// Records with distinct keys drawn from `keys` and values from `value`, in key order.
fn records_of(
    keys: impl Strategy<Value = String>,
    value: impl Strategy<Value = Value>,
    count: std::ops::Range<usize>,
) -> impl Strategy<Value = Vec<Record>> {
    prop::collection::btree_map(keys, (subject(), prop::collection::vec(value, 0..6)), count)
        .prop_map(|m| {
            m.into_iter()
                .map(|(key, (subject, values))| Record {
                    key: RecordKey(key),
                    subject,
                    values,
                })
                .collect()
        })
}

/// Records with distinct keys, in arbitrary order.
fn records() -> impl Strategy<Value = Vec<Record>> {
    records_of("[a-z0-9|]{1,10}", value(), 1..30).prop_shuffle()
}

fn key() -> NodeKey {
    NodeKey::from_seed([42; 32])
}

/// Records as [`records`], some with texts long enough for a wider length varint (251 bytes
/// and more).
fn records_with_long_texts() -> impl Strategy<Value = Vec<Record>> {
    let value = prop_oneof![
        3 => value(),
        1 => "[a-z]{245,300}".prop_map(|text| Value::Text(text.into())),
        1 => ("[a-z]{245,300}", any::<[u8; 16]>()).prop_map(|(masked, t)| Value::Token {
            masked: masked.into(),
            token: PersonToken(t)
        }),
    ];
    let keys = prop_oneof![3 => "[a-z0-9|]{1,10}", 1 => "[a-z0-9|]{250,260}"];
    records_of(keys, value, 1..12)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// `Batch::decode` checks the canonical form by counting the encoding's length, not by
    /// encoding: whatever it lets through is exactly the batch's encoding (checked by
    /// encoding), with any byte changed; and a one-byte varint anywhere widened to the
    /// three-byte form (the same value, bincode decodes it) is always refused.
    #[test]
    fn what_decodes_is_the_canonical_encoding(
        records in records_with_long_texts(),
        at in any::<prop::sample::Index>(),
        widen in any::<bool>(),
        byte in any::<u8>(),
    ) {
        let batch = Batch::new(header(vec![]), records).unwrap();
        let bytes = batch.encode().unwrap();
        prop_assert_eq!(batch.canonical_len(), bytes.len());
        let i = at.index(bytes.len());
        let mut changed = bytes.clone();
        if widen && bytes[i] < 251 {
            changed.splice(i..=i, [0xFB, bytes[i], 0]);
            prop_assert!(Batch::decode(&changed).is_err(), "widened at {}", i);
        } else {
            changed[i] = byte;
            if let Ok(decoded) = Batch::decode(&changed) {
                prop_assert!(decoded.encodes_to(&changed), "changed at {}", i);
            }
        }
    }

    /// `Batch::decode` reads the records by hand: it accepts exactly what bincode's decoding
    /// of the whole batch followed by the check by encoding accepts, and gives the same
    /// batch, on a valid batch changed anywhere (a byte replaced, inserted or removed, a
    /// varint widened, the bytes cut short).
    #[test]
    fn the_record_reader_agrees_with_bincode_and_the_check_by_encoding(
        records in records_with_long_texts(),
        subject_person in any::<bool>(),
        at in any::<prop::sample::Index>(),
        how in 0..5u8,
        byte in any::<u8>(),
    ) {
        let mut records = records;
        if subject_person {
            records[0].subject = Subject::Person(PersonToken([byte; 16]));
        }
        let bytes = Batch::new(header(vec![]), records).unwrap().encode().unwrap();
        let i = at.index(bytes.len());
        let changed = changed(&bytes, i, how, byte);
        prop_assert_eq!(Batch::decode(&changed).ok(), decode_by_bincode(&changed), "{} at {}", how, i);
    }

    /// `Batch::read_each` reads in place what bincode's decoding followed by the check by
    /// encoding accepts, and nothing else: the same header, and each record handed out, in
    /// order, is that decoding's record; on a valid batch (with or without withdrawals)
    /// changed anywhere. Where it refuses, `decode` refuses with the same error.
    #[test]
    fn records_read_in_place_are_the_records_decoded(
        records in records_with_long_texts(),
        withdrawn in any::<bool>(),
        at in any::<prop::sample::Index>(),
        how in 0..5u8,
        byte in any::<u8>(),
    ) {
        let withdrawals = withdrawal_if(withdrawn);
        let bytes = Batch::new(header(withdrawals), records).unwrap().encode().unwrap();
        let i = at.index(bytes.len());
        for bytes in [bytes.clone(), changed(&bytes, i, how, byte)] {
            let mut read = Vec::new();
            let result = Batch::read_each(&bytes, |_, record| read.push(Record::from(record)));
            match (result, decode_by_bincode(&bytes)) {
                (Ok((header, count)), Some(decoded)) => {
                    prop_assert_eq!(header, decoded.header, "{} at {}", how, i);
                    prop_assert_eq!(count, decoded.records.len(), "{} at {}", how, i);
                    prop_assert_eq!(&read, &decoded.records, "{} at {}", how, i);
                }
                (Err(refused), None) => {
                    prop_assert_eq!(Some(refused), Batch::decode(&bytes).err(), "{} at {}", how, i);
                }
                (result, decoded) => prop_assert!(
                    false,
                    "{} at {}: read in place {:?}, bincode {:?}", how, i, result.map(|(_, n)| n), decoded.is_some()
                ),
            }
        }
    }

    #[test]
    fn encoding_round_trips(records in records()) {
        let batch = Batch::new(header(vec![]), records).unwrap();
        let bytes = batch.encode().unwrap();
        prop_assert_eq!(Batch::decode(&bytes).unwrap(), batch);
    }

    /// Sealing records already encoded (the ingestion path) gives exactly the batch that
    /// building and encoding `Record`s gives, whatever the input order.
    #[test]
    fn sealing_encoded_records_gives_the_same_batch(records in records()) {
        let mut encoded = EncodedRecords::new();
        for record in &records {
            encoded.push(record);
        }
        let ours = SignedBatch::seal_encoded(header(vec![]), &mut encoded, &key()).unwrap();
        let theirs =
            SignedBatch::seal(&Batch::new(header(vec![]), records).unwrap(), &key()).unwrap();
        prop_assert_eq!(ours, theirs);
    }

    /// The ingest collector's path: records copied one by one (`push_from`) into room left
    /// for the header seal into exactly the batch that building and encoding `Record`s gives,
    /// or fail as it does — in key order or not, with a key given twice, with room for the
    /// batch's count or for another (a wider or narrower count). Sealing leaves them empty.
    #[test]
    fn records_copied_into_room_for_the_header_seal_as_batches_do(
        records in records_with_long_texts(),
        order in prop_oneof![Just(None), any::<u64>().prop_map(Some)],
        repeat in any::<bool>(),
        room_for in prop_oneof![Just(None), (0usize..400).prop_map(Some)],
    ) {
        let mut records = records;
        if let Some(seed) = order {
            let mut state = seed | 1;
            for i in (1..records.len()).rev() {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                records.swap(i, (state >> 33) as usize % (i + 1));
            }
        }
        if repeat {
            let again = records[records.len() / 2].clone();
            records.push(again);
        }
        let mut source = EncodedRecords::new();
        for record in &records {
            source.push(record);
        }
        let mut copied = EncodedRecords::new();
        copied.room_for_header(&header(vec![]), room_for.unwrap_or(records.len()));
        for index in 0..source.len() {
            copied.push_from(&source, index);
        }
        prop_assert_eq!(copied.bytes_len(), source.bytes_len());
        let ours = SignedBatch::seal_encoded(header(vec![]), &mut copied, &key());
        let theirs = Batch::new(header(vec![]), records)
            .and_then(|batch| SignedBatch::seal(&batch, &key()));
        prop_assert_eq!(&ours, &theirs);
        if ours.is_ok() {
            prop_assert!(copied.is_empty() && copied.bytes_len() == 0);
        }
    }

    /// Sealing sorts by the keys' first 16 bytes first: keys that share them, or differ only
    /// past them, or end early (a shorter key, a key with NUL bytes), still come out in key
    /// order, as `Batch::new` puts them, and a key given twice is still refused.
    #[test]
    fn keys_sharing_their_first_sixteen_bytes_seal_in_key_order(
        records in records_of(
            prop_oneof![
                "k{13,18}[ab]{0,3}",
                "[ab]{0,2}\\x00{0,2}[ab]{0,2}",
                "[ab]{14,16}\\x00?[ab]?",
            ],
            value(),
            1..40,
        ).prop_shuffle(),
        repeat in any::<bool>(),
    ) {
        let mut records = records;
        if repeat {
            let again = records[0].clone();
            records.push(again);
        }
        let mut encoded = EncodedRecords::new();
        for record in &records {
            encoded.push(record);
        }
        let ours = SignedBatch::seal_encoded(header(vec![]), &mut encoded, &key());
        let theirs = Batch::new(header(vec![]), records)
            .and_then(|batch| SignedBatch::seal(&batch, &key()));
        prop_assert_eq!(ours, theirs);
    }

    #[test]
    fn any_input_order_gives_the_same_id(records in records(), seed in any::<u64>()) {
        let mut shuffled = records.clone();
        // A deterministic permutation from the seed (Fisher–Yates with an LCG).
        let mut state = seed | 1;
        for i in (1..shuffled.len()).rev() {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (state >> 33) as usize % (i + 1));
        }
        let a = SignedBatch::seal(&Batch::new(header(vec![]), records).unwrap(), &key()).unwrap();
        let b = SignedBatch::seal(&Batch::new(header(vec![]), shuffled).unwrap(), &key()).unwrap();
        prop_assert_eq!(a.id, b.id);
        prop_assert_eq!(a.bytes, b.bytes);
    }

    #[test]
    fn any_single_flipped_bit_fails_verification(records in records(), bit in any::<prop::sample::Index>()) {
        let signed = SignedBatch::seal(&Batch::new(header(vec![]), records).unwrap(), &key()).unwrap();
        prop_assert!(signed.verify(&key().public()).is_ok());
        let total_bits = (signed.bytes.len() + 32 + 64) * 8;
        let flip = bit.index(total_bits);
        let mut tampered = signed.clone();
        let byte = flip / 8;
        let mask = 1u8 << (flip % 8);
        if byte < tampered.bytes.len() {
            tampered.bytes[byte] ^= mask;
        } else if byte < tampered.bytes.len() + 32 {
            tampered.id.0[byte - tampered.bytes.len()] ^= mask;
        } else {
            tampered.signature.0[byte - tampered.bytes.len() - 32] ^= mask;
        }
        prop_assert!(tampered.verify(&key().public()).is_err());
    }

    /// `Batch::decode_keys` (the ledger's read of held batches) takes whatever
    /// `Batch::decode` takes, with the same header and keys, on a valid batch changed
    /// anywhere; what only it takes has the same header and keys, and `decode` refused it for
    /// a value's bytes alone (a text that is not UTF-8, a credit code out of form), never for
    /// the keys, the layout or an integer's form. (A byte removed inside the values may leave
    /// bytes that still read as a layout with the same keys, one byte shorter, whose texts
    /// are cut elsewhere: `decode` refuses them for their UTF-8; the bytes of a stored batch
    /// are checked against its id before either reads them.)
    #[test]
    fn the_keys_alone_are_read_as_decode_reads_them(
        records in records_with_long_texts(),
        withdrawn in any::<bool>(),
        at in any::<prop::sample::Index>(),
        how in 0..5u8,
        byte in any::<u8>(),
    ) {
        let withdrawals = withdrawal_if(withdrawn);
        let batch = Batch::new(header(withdrawals), records).unwrap();
        let bytes = batch.encode().unwrap();
        let keys = |batch: &Batch| batch.records.iter().map(|r| r.key.clone()).collect::<Vec<_>>();
        prop_assert_eq!(Batch::decode_keys(&bytes).unwrap(), (batch.header.clone(), keys(&batch)));
        let i = at.index(bytes.len());
        let changed = changed(&bytes, i, how, byte);
        match (Batch::decode(&changed), Batch::decode_keys(&changed)) {
            (Ok(decoded), read) => prop_assert_eq!(read.ok(), Some((decoded.header.clone(), keys(&decoded)))),
            (Err(refused), Ok((header, read))) => {
                // Only a value's bytes can be what decode refused: the same keys and header.
                prop_assert_eq!(header, batch.header.clone(), "{} at {}", how, i);
                prop_assert_eq!(read, keys(&batch), "{} at {}", how, i);
                let why = refused.to_string();
                prop_assert!(
                    why.contains("is not UTF-8") || why.contains("unified social credit code"),
                    "{} at {}: decode refused for {}", how, i, why
                );
            }
            (Err(_), Err(_)) => {}
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_a_decoder(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Batch::decode(&bytes);
        let _ = Batch::decode_keys(&bytes);
        let _ = wire::decode_payload(&bytes);
        let _ = wire::decode_frame(&bytes, FRAME_BYTES_MAX);
        let _ = SignedBatch { id: BatchId([0; 32]), signature: protocol::Signature([0; 64]), bytes }.header();
    }

    #[test]
    fn mutated_valid_batches_never_panic_and_never_decode_to_other_canonical_bytes(
        records in records(), position in any::<prop::sample::Index>(), byte in any::<u8>()
    ) {
        let bytes = Batch::new(header(vec![]), records).unwrap().encode().unwrap();
        let mut mutated = bytes.clone();
        let i = position.index(mutated.len());
        mutated[i] = byte;
        if let Ok(batch) = Batch::decode(&mutated) {
            // Whatever decodes must re-encode to exactly the bytes given: canonical.
            prop_assert_eq!(batch.encode().unwrap(), mutated);
        }
    }

    #[test]
    fn frames_round_trip(ids in prop::collection::vec(any::<[u8; 32]>(), 0..50), nonce in any::<u64>()) {
        let messages = vec![
            Message::Want { ids: ids.iter().map(|b| BatchId(*b)).collect() },
            Message::Ping { nonce },
            Message::Offer { offers: ids.iter().map(|b| Offer {
                id: BatchId(*b),
                origin: NodeId::parse("445200").unwrap(),
                category: Category::parse("gas_fee").unwrap(),
                period: Period::parse("2022-06").unwrap(),
                bytes: nonce as u32,
            }).collect() },
        ];
        let mut stream = Vec::new();
        for m in &messages {
            stream.extend(m.encode());
        }
        let mut decoded = Vec::new();
        let mut rest = &stream[..];
        while let Some((message, used)) = wire::decode_frame(rest, FRAME_BYTES_MAX).unwrap() {
            decoded.push(message);
            rest = &rest[used..];
        }
        prop_assert!(rest.is_empty());
        prop_assert_eq!(decoded, messages);
    }
}

/// A signed batch's fields with bytes of many lengths: around each wider form of the
/// length's varint (251 and 65,536 bytes) and short.
fn signed_batch() -> impl Strategy<Value = SignedBatch> {
    let length = prop_oneof![
        4 => 0..300usize,
        1 => 65_530..65_545usize,
        1 => Just(250usize),
        1 => Just(251usize),
    ];
    (
        any::<[u8; 32]>(),
        any::<[[u8; 32]; 2]>(),
        length,
        any::<u8>(),
    )
        .prop_map(|(id, [a, b], length, fill)| {
            let mut signature = [0u8; 64];
            signature[..32].copy_from_slice(&a);
            signature[32..].copy_from_slice(&b);
            SignedBatch {
                id: BatchId(id),
                signature: Signature(signature),
                bytes: (0..length).map(|n| fill.wrapping_add(n as u8)).collect(),
            }
        })
}

/// A forwarded batch's proof of first arrival, or none.
fn first_receipt() -> impl Strategy<Value = Option<wire::SignedReceipt>> {
    prop::option::of((any::<u64>(), any::<u32>()).prop_map(|(at, warnings)| {
        Receipt {
            receiver: NodeId::parse("445200").unwrap(),
            batch: BatchId([9; 32]),
            origin: NodeId::parse("445281").unwrap(),
            received_at_ms: at,
            verdict: Verdict::Accepted { warnings },
        }
        .sign(&key())
    }))
}

fn batch_message(batch: SignedBatch, first_receipt: Option<wire::SignedReceipt>) -> Message {
    match first_receipt {
        Some(first_receipt) => Message::Forwarded {
            batch,
            first_receipt: Box::new(first_receipt),
        },
        None => Message::Batch(batch),
    }
}

/// A change to a batch frame's payload.
#[derive(Debug, Clone)]
enum Mutation {
    None,
    Set(prop::sample::Index, u8),
    Truncate(prop::sample::Index),
    Append(u8),
    /// The batch's length written in a wider varint than it needs.
    WideLength,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        2 => Just(Mutation::None),
        4 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        1 => any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        1 => any::<u8>().prop_map(Mutation::Append),
        1 => Just(Mutation::WideLength),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_batch_frame_in_parts_is_the_frame_encoded_whole(
        batch in signed_batch(), first_receipt in first_receipt()
    ) {
        let whole = batch_message(batch.clone(), first_receipt.clone()).encode();
        let parts = wire::batch_frame_parts(batch, first_receipt);
        prop_assert_eq!(parts.concat(), whole);
    }

    #[test]
    fn a_batch_payload_decodes_in_place_as_decode_payload_decodes_it(
        batch in signed_batch(), first_receipt in first_receipt(), mutation in mutation()
    ) {
        let message = batch_message(batch.clone(), first_receipt);
        let mut payload = message.encode()[wire::FRAME_HEADER_BYTES..].to_vec();
        match &mutation {
            Mutation::None => {}
            Mutation::Set(at, byte) => {
                let at = at.index(payload.len());
                payload[at] = *byte;
            }
            Mutation::Truncate(at) => payload.truncate(at.index(payload.len())),
            Mutation::Append(byte) => payload.push(*byte),
            Mutation::WideLength => {
                // The length at its place (after variant, id and signature) as 251 and a
                // u16, or 252 and a u32: longer than it needs.
                let length = batch.bytes.len();
                let (old, new): (usize, Vec<u8>) = if length < 251 {
                    (1, [vec![251], (length as u16).to_le_bytes().to_vec()].concat())
                } else {
                    (3, [vec![252], (length as u32).to_le_bytes().to_vec()].concat())
                };
                payload.splice(97..97 + old, new);
            }
        }
        let reference = wire::decode_payload(&payload);
        if matches!(mutation, Mutation::None | Mutation::Append(_) | Mutation::WideLength) {
            prop_assert_eq!(reference.is_ok(), matches!(mutation, Mutation::None));
        }
        if matches!(mutation, Mutation::None) {
            prop_assert_eq!(reference.as_ref().ok(), Some(&message));
        }
        prop_assert_eq!(wire::decode_batch_payload(payload), reference);
    }
}

/// What `Batch::decode` accepted before it read the records by hand: bincode's decoding of
/// the whole batch, every byte used, at least one record or withdrawal, keys in strict order,
/// and the bytes exactly the batch's encoding.
/// One withdrawal if `withdrawn`, else none.
fn withdrawal_if(withdrawn: bool) -> Vec<Withdrawal> {
    if withdrawn {
        vec![Withdrawal {
            key: RecordKey("W".into()),
            reason: WithdrawalReason::Error,
        }]
    } else {
        vec![]
    }
}

/// `bytes` changed at `i`: `byte` written there (`how` 0), inserted (1), the byte removed
/// (2), a one-byte varint widened to three bytes (3), or the bytes cut short there.
fn changed(bytes: &[u8], i: usize, how: u8, byte: u8) -> Vec<u8> {
    let mut changed = bytes.to_vec();
    match how {
        0 => changed[i] = byte,
        1 => changed.insert(i, byte),
        2 => {
            changed.remove(i);
        }
        3 if bytes[i] < 251 => {
            changed.splice(i..=i, [0xFB, bytes[i], 0]);
        }
        _ => changed.truncate(i),
    }
    changed
}

fn decode_by_bincode(bytes: &[u8]) -> Option<Batch> {
    let config = bincode::config::standard().with_limit::<{ protocol::batch::BATCH_BYTES_MAX }>();
    let (batch, used): (Batch, usize) = bincode::decode_from_slice(bytes, config).ok()?;
    let ordered = batch.records.windows(2).all(|w| w[0].key < w[1].key)
        && batch
            .header
            .withdrawals
            .windows(2)
            .all(|w| w[0].key < w[1].key);
    let some = !batch.records.is_empty() || !batch.header.withdrawals.is_empty();
    (used == bytes.len()
        && batch.header.format == BATCH_FORMAT
        && ordered
        && some
        && batch.encodes_to(bytes))
    .then_some(batch)
}

#[test]
fn non_minimal_varint_is_refused() {
    let batch = Batch::new(
        header(vec![]),
        vec![Record {
            key: RecordKey("k".into()),
            subject: Subject::Organization(Uscc::parse("914403001922038216").unwrap()),
            values: vec![Value::Text("x".into())],
        }],
    )
    .unwrap();
    let bytes = batch.encode().unwrap();
    // schema_version (=1) is encoded as one byte after format, origin and category. Rewrite it
    // as the 3-byte form 0xFB 0x01 0x00 (u16 marker), which bincode decodes to the same value.
    let format_len = 1;
    let origin_len = 5; // 445281 needs the 0xFC u32 marker and 4 bytes
    let category_len = 1 + "water_fee".len();
    let at = format_len + origin_len + category_len;
    assert_eq!(bytes[at], 1, "layout assumption");
    let mut padded = bytes[..at].to_vec();
    padded.extend([0xFB, 0x01, 0x00]);
    padded.extend(&bytes[at + 1..]);
    assert!(
        matches!(Batch::decode(&padded), Err(DecodeError::NotCanonical(_))),
        "{:?}",
        Batch::decode(&padded)
    );
}

/// The counted length agrees with the encoding where the records' count needs a wider
/// varint too.
#[test]
fn the_counted_length_is_the_encoded_length_for_many_records() {
    let records = (0..300)
        .map(|n| Record {
            key: RecordKey(format!("k{n:04}")),
            subject: Subject::Organization(Uscc::parse("914403001922038216").unwrap()),
            values: vec![Value::Text("x".repeat(n).into()), Value::Absent],
        })
        .collect();
    let batch = Batch::new(header(vec![]), records).unwrap();
    let bytes = batch.encode().unwrap();
    assert_eq!(batch.canonical_len(), bytes.len());
    assert_eq!(Batch::decode(&bytes).unwrap(), batch);
}

#[test]
fn trailing_bytes_are_refused() {
    let batch = Batch::new(
        header(vec![Withdrawal {
            key: RecordKey("gone".into()),
            reason: WithdrawalReason::CreditRepair,
        }]),
        vec![],
    )
    .unwrap();
    let mut bytes = batch.encode().unwrap();
    assert_eq!(Batch::decode(&bytes).unwrap(), batch);
    bytes.push(0);
    assert_eq!(Batch::decode(&bytes), Err(DecodeError::TrailingBytes(1)));
}

#[test]
fn encoded_records_with_a_duplicate_key_or_none_are_refused_as_batches_are() {
    let record = |key: &str| Record {
        key: RecordKey(key.to_owned()),
        subject: Subject::Person(PersonToken([1; 16])),
        values: vec![Value::Text("x".into())],
    };
    // Out of order, and in order (where sealing skips the sort).
    for keys in [["b", "a", "b"], ["a", "b", "b"]] {
        let mut encoded = EncodedRecords::new();
        for key in keys {
            encoded.push(&record(key));
        }
        assert_eq!(
            SignedBatch::seal_encoded(header(vec![]), &mut encoded, &key()).unwrap_err(),
            Batch::new(header(vec![]), keys.map(record).to_vec()).unwrap_err()
        );
    }
    assert_eq!(
        SignedBatch::seal_encoded(header(vec![]), &mut EncodedRecords::new(), &key()).unwrap_err(),
        Batch::new(header(vec![]), vec![]).unwrap_err()
    );
}

#[test]
fn duplicate_keys_and_empty_batches_are_refused() {
    let record = Record {
        key: RecordKey("same".into()),
        subject: Subject::Organization(Uscc::parse("914403001922038216").unwrap()),
        values: vec![],
    };
    assert!(Batch::new(header(vec![]), vec![record.clone(), record]).is_err());
    assert!(Batch::new(header(vec![]), vec![]).is_err());
}

/// Bytes with a key repeated or out of order (encoded by bincode, which `Batch::encode` would
/// not do) are refused by `read_each` and `decode` alike, for their order, after every record
/// was read.
#[test]
fn keys_repeated_or_out_of_order_are_refused_in_place() {
    let record = |key: &str| Record {
        key: RecordKey(key.into()),
        subject: Subject::Organization(Uscc::parse("914403001922038216").unwrap()),
        values: vec![Value::Text("1".into())],
    };
    let config = bincode::config::standard();
    for keys in [["a", "a"], ["b", "a"], ["a", "b"]] {
        let batch = Batch {
            header: header(vec![]),
            records: keys.map(record).to_vec(),
        };
        let bytes = bincode::encode_to_vec(&batch, config).unwrap();
        let mut read = 0;
        let result = Batch::read_each(&bytes, |_, _| read += 1);
        assert_eq!(read, 2, "{keys:?}: every record is read first");
        if keys[0] < keys[1] {
            assert_eq!(result.unwrap().1, 2);
            assert_eq!(Batch::decode(&bytes).unwrap(), batch);
        } else {
            let refused =
                DecodeError::NotCanonical("records or withdrawals not in strict key order");
            assert_eq!(result.unwrap_err(), refused, "{keys:?}");
            assert_eq!(Batch::decode(&bytes).unwrap_err(), refused, "{keys:?}");
        }
    }
}

#[test]
fn a_huge_length_prefix_is_refused_before_allocating() {
    // A frame header claiming 4 GiB, and a batch whose record count claims 2^40.
    let frame = [wire::WIRE_VERSION, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0, 0];
    assert!(matches!(
        wire::decode_frame(&frame, FRAME_BYTES_MAX),
        Err(wire::FrameError::TooLarge { .. })
    ));
    let mut bytes = Batch::new(
        header(vec![]),
        vec![Record {
            key: RecordKey("k".into()),
            subject: Subject::Organization(Uscc::parse("914403001922038216").unwrap()),
            values: vec![],
        }],
    )
    .unwrap()
    .encode()
    .unwrap();
    let records_at = bytes.len() - (1 + 1 + 1 + 1 + 18 + 1); // count, key len, key, subject tag, uscc, values len
    assert_eq!(bytes[records_at], 1, "layout assumption");
    bytes.truncate(records_at);
    bytes.extend([0xFD, 0, 0, 0, 0, 0, 1, 0, 0]); // u64 2^40
    assert!(Batch::decode(&bytes).is_err());
}

#[test]
fn receipts_verify_only_under_the_receivers_key() {
    let receipt = Receipt {
        receiver: NodeId::parse("445200").unwrap(),
        batch: BatchId([9; 32]),
        origin: NodeId::parse("445281").unwrap(),
        received_at_ms: 1_653_000_000_000,
        verdict: Verdict::Accepted { warnings: 0 },
    };
    let signed = receipt.sign(&key());
    assert!(signed.verify(&key().public()));
    assert!(!signed.verify(&NodeKey::from_seed([1; 32]).public()));
    let mut forged = signed;
    forged.receipt.received_at_ms += 1;
    assert!(!forged.verify(&key().public()));
}

#[test]
fn a_newer_batch_format_is_named_as_such() {
    let mut h = header(vec![]);
    h.format = 2;
    let batch = Batch {
        header: h,
        records: vec![],
    };
    let bytes = bincode::encode_to_vec(&batch, bincode::config::standard()).unwrap();
    assert_eq!(Batch::decode(&bytes), Err(DecodeError::Format(2)));
}

/// Found by the `wire_frame` fuzz target (`fuzz/regressions/wire_frame/`): bincode reads an
/// integer written longer than it needs, so a frame had several encodings; only the canonical
/// one is accepted now.
#[test]
fn a_frame_with_an_integer_written_longer_than_it_needs_is_refused() {
    // Ping (variant 13) with its nonce 0x00ff22ff as a full u64 (marker 0xFD and 8 bytes),
    // where the canonical form writes a u32 (marker 0xFC and 4 bytes).
    let frame = [1, 0, 0, 0, 10, 13, 0xFD, 0xFF, 0x22, 0xFF, 0, 0, 0, 0, 0];
    let canonical = Message::Ping { nonce: 0x00ff_22ff }.encode();
    assert_eq!(canonical.len(), 5 + 6);
    assert_eq!(
        wire::decode_frame(&frame, FRAME_BYTES_MAX),
        Err(wire::FrameError::NotCanonical {
            given: 10,
            canonical: 6
        })
    );
    assert_eq!(
        wire::decode_frame(&canonical, FRAME_BYTES_MAX),
        Ok(Some((
            Message::Ping { nonce: 0x00ff_22ff },
            canonical.len()
        )))
    );
}
