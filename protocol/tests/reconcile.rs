//! Set reconciliation sessions (`protocol::reconcile`): the differences found are exactly the
//! set differences for arbitrary sets, edge cases settle in the expected round trips, every
//! message respects the frame limit, and hostile messages (random, truncated, oversized,
//! well-formed but lying, never-ending) give errors, never panics.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use protocol::reconcile::{
    self, FRAME_LIMIT, Initiator, Item, MESSAGE_BYTES_MAX, Malformation, Outcome, PROTOCOL_VERSION,
    ROUNDS_MAX, ReconcileError, Responder, Step,
};

/// A seeded SplitMix64, for large deterministic sets.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn items(&mut self, count: usize, timestamps: u64) -> Vec<Item> {
        (0..count)
            .map(|_| {
                let mut id = [0u8; 32];
                for chunk in id.chunks_exact_mut(8) {
                    chunk.copy_from_slice(&self.next().to_le_bytes());
                }
                (self.next() % timestamps, id)
            })
            .collect()
    }
}

/// Runs a session like `run_local`, checking every message against the frame limit and
/// against `validate`; returns the outcome and the longest message.
fn drive(a: Vec<Item>, b: Vec<Item>) -> (Outcome, usize) {
    let mut initiator = Initiator::new(a);
    let mut responder = Responder::new(b);
    let mut message = initiator.start().unwrap();
    let mut longest = 0;
    loop {
        longest = longest.max(message.len());
        assert!(
            message.len() <= FRAME_LIMIT,
            "initiator sent {} bytes",
            message.len()
        );
        reconcile::validate(&message).unwrap();
        let reply = responder.handle(&message).unwrap();
        longest = longest.max(reply.len());
        assert!(
            reply.len() <= FRAME_LIMIT,
            "responder sent {} bytes",
            reply.len()
        );
        reconcile::validate(&reply).unwrap();
        match initiator.handle(&reply).unwrap() {
            Step::Send(next) => message = next,
            Step::Done => break,
        }
    }
    assert!(initiator.is_done());
    let outcome = initiator.finish();
    assert!(outcome.complete);
    (outcome, longest)
}

fn ids(items: &[Item]) -> BTreeSet<[u8; 32]> {
    items.iter().map(|&(_, id)| id).collect()
}

/// `left \ right`, ascending.
fn difference(left: &[Item], right: &[Item]) -> Vec<[u8; 32]> {
    ids(left).difference(&ids(right)).copied().collect()
}

fn assert_exact(outcome: &Outcome, a: &[Item], b: &[Item]) {
    assert_eq!(outcome.have, difference(a, b), "have is not a \\ b");
    assert_eq!(outcome.need, difference(b, a), "need is not b \\ a");
}

/// Ids: either uniformly random, or 24 zero bytes and 8 random ones, so that many share long
/// prefixes and range bounds need long id prefixes.
fn id_strategy() -> impl Strategy<Value = [u8; 32]> {
    prop_oneof![
        any::<[u8; 32]>(),
        any::<u64>().prop_map(|low| {
            let mut id = [0u8; 32];
            id[24..].copy_from_slice(&low.to_be_bytes());
            id
        }),
    ]
}

/// Two sets drawn from one pool of ids, each id with one timestamp from 0..4 (so ties are
/// common): a pool entry is in both sets if its draw is under `overlap`, else in one of them.
/// The initiator's list repeats its first `repeats` items and is in draw order (unsorted).
fn two_sets() -> impl Strategy<Value = (Vec<Item>, Vec<Item>)> {
    (
        prop::collection::vec(
            (id_strategy(), 0u64..4, any::<u8>(), any::<bool>()),
            0..2000,
        ),
        any::<u8>(),
        0usize..50,
    )
        .prop_map(|(pool, overlap, repeats)| {
            // One timestamp per id, as callers guarantee.
            let pool: BTreeMap<[u8; 32], (u64, u8, bool)> = pool
                .into_iter()
                .map(|(id, timestamp, draw, side)| (id, (timestamp, draw, side)))
                .collect();
            let mut a = Vec::new();
            let mut b = Vec::new();
            for (id, (timestamp, draw, in_a)) in pool {
                if draw < overlap {
                    a.push((timestamp, id));
                    b.push((timestamp, id));
                } else if in_a {
                    a.push((timestamp, id));
                } else {
                    b.push((timestamp, id));
                }
            }
            // Draw order is the map's (id) order; reverse the initiator's to unsort it.
            a.reverse();
            let repeated: Vec<Item> = a.iter().take(repeats).copied().collect();
            a.extend(repeated);
            (a, b)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..Default::default() })]

    /// The initiator learns exactly `a \ b` as `have` and `b \ a` as `need`.
    #[test]
    fn differences_are_exactly_the_set_differences((a, b) in two_sets()) {
        let (outcome, _) = drive(a.clone(), b.clone());
        assert_exact(&outcome, &a, &b);
        prop_assert_eq!(outcome.clone(), reconcile::run_local(a, b).unwrap());
        prop_assert!(outcome.rounds >= 1 && outcome.rounds <= ROUNDS_MAX);
    }

    /// Arbitrary bytes never panic either side. A responder's reply to them is a valid message
    /// within the frame limit.
    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..8192),
        force_version in any::<bool>(),
    ) {
        let mut bytes = bytes;
        if force_version && !bytes.is_empty() {
            bytes[0] = PROTOCOL_VERSION;
        }
        let items = SplitMix64(7).items(300, 4);
        let mut responder = Responder::new(items.clone());
        if let Ok(reply) = responder.handle(&bytes) {
            prop_assert!(reply.len() <= FRAME_LIMIT);
            reconcile::validate(&reply).unwrap();
        }
        let mut initiator = Initiator::new(items);
        initiator.start().unwrap();
        if let Ok(Step::Send(next)) = initiator.handle(&bytes) {
            prop_assert!(next.len() <= FRAME_LIMIT);
        }
    }

    /// Well-formed messages with arbitrary bounds, fingerprints and id lists (some ids real, so
    /// that ranges partly match) pass validation and go deep into negentropy: no panic, and
    /// every reply is valid and within the frame limit.
    #[test]
    fn well_formed_lies_never_panic(ranges in prop::collection::vec(range_strategy(), 0..60)) {
        let items = SplitMix64(11).items(2_000, 4);
        let mut message = vec![PROTOCOL_VERSION];
        for range in &ranges {
            range.encode(&items, &mut message);
        }
        prop_assume!(message.len() <= MESSAGE_BYTES_MAX);
        reconcile::validate(&message).unwrap();

        let mut responder = Responder::new(items.clone());
        let reply = responder.handle(&message).unwrap();
        prop_assert!(reply.len() <= FRAME_LIMIT);
        reconcile::validate(&reply).unwrap();

        let mut initiator = Initiator::new(items.clone());
        initiator.start().unwrap();
        match initiator.handle(&message).unwrap() {
            Step::Send(next) => prop_assert!(next.len() <= FRAME_LIMIT),
            Step::Done => {}
        }
        // A liar can make the initiator believe the responder lacks its items, or holds ids it
        // made up, but `have` never exceeds the initiator's own set.
        prop_assert!(initiator.have().is_subset(&ids(&items)));
    }
}

/// One range of a hand-made message.
#[derive(Debug, Clone)]
struct Range {
    timestamp_delta: u64,
    bound_prefix: Vec<u8>,
    payload: Payload,
}

#[derive(Debug, Clone)]
enum Payload {
    Skip,
    Fingerprint([u8; 16]),
    /// Random ids, and indexes of the victim's own items to list.
    Ids(Vec<[u8; 32]>, Vec<usize>),
}

fn range_strategy() -> impl Strategy<Value = Range> {
    let payload = prop_oneof![
        Just(Payload::Skip),
        any::<[u8; 16]>().prop_map(Payload::Fingerprint),
        (
            prop::collection::vec(any::<[u8; 32]>(), 0..8),
            prop::collection::vec(any::<usize>(), 0..40)
        )
            .prop_map(|(random, real)| Payload::Ids(random, real)),
    ];
    (
        prop_oneof![0u64..3, any::<u64>()],
        prop::collection::vec(any::<u8>(), 0..=32),
        payload,
    )
        .prop_map(|(timestamp_delta, bound_prefix, payload)| Range {
            timestamp_delta,
            bound_prefix,
            payload,
        })
}

/// Negentropy's varint: big-endian groups of 7 bits, the high bit on all but the last.
fn varint(mut value: u64, out: &mut Vec<u8>) {
    let mut groups = vec![(value & 0x7f) as u8];
    value >>= 7;
    while value > 0 {
        groups.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.extend(groups.iter().rev());
}

impl Range {
    fn encode(&self, items: &[Item], out: &mut Vec<u8>) {
        varint(self.timestamp_delta, out);
        varint(self.bound_prefix.len() as u64, out);
        out.extend(&self.bound_prefix);
        match &self.payload {
            Payload::Skip => varint(0, out),
            Payload::Fingerprint(fingerprint) => {
                varint(1, out);
                out.extend(fingerprint);
            }
            Payload::Ids(random, real) => {
                varint(2, out);
                varint((random.len() + real.len()) as u64, out);
                for id in random {
                    out.extend(id);
                }
                for &index in real {
                    out.extend(items[index % items.len()].1);
                }
            }
        }
    }
}

#[test]
fn both_empty() {
    let (outcome, _) = drive(Vec::new(), Vec::new());
    assert_eq!(
        outcome,
        Outcome {
            have: Vec::new(),
            need: Vec::new(),
            rounds: 1,
            // Version, an unbounded range, id-list mode and a count of 0.
            bytes_sent: 5,
            // An id list answers an id list: the responder's own, as empty.
            bytes_received: 5,
            complete: true,
        }
    );
}

#[test]
fn identical_large_sets_settle_in_one_round_trip() {
    let items = SplitMix64(1).items(100_000, 16);
    let mut shuffled = items.clone();
    shuffled.reverse();
    let (outcome, longest) = drive(items, shuffled);
    assert!(outcome.have.is_empty() && outcome.need.is_empty());
    // Sixteen matching fingerprints, answered by the bare version byte.
    assert_eq!(outcome.rounds, 1);
    assert_eq!(outcome.bytes_received, 1);
    assert!(longest < 1024, "first message of {longest} bytes");
}

#[test]
fn one_side_empty_lists_the_other_in_frame_sized_rounds() {
    // 20,000 ids are 640 KB: about ten full frames.
    let items = SplitMix64(2).items(20_000, 4);

    let (outcome, longest) = drive(Vec::new(), items.clone());
    assert_exact(&outcome, &[], &items);
    assert!(
        longest > FRAME_LIMIT / 2,
        "replies were not cut at the frame limit"
    );
    assert!(
        (10..=20).contains(&outcome.rounds),
        "{} round trips",
        outcome.rounds
    );

    let (outcome, _) = drive(items.clone(), Vec::new());
    assert_exact(&outcome, &items, &[]);
    assert!(outcome.rounds <= 20, "{} round trips", outcome.rounds);
}

#[test]
fn many_differences_both_ways_survive_frame_cuts() {
    let mut rng = SplitMix64(3);
    let shared = rng.items(30_000, 8);
    let a_only = rng.items(4_000, 8);
    let b_only = rng.items(4_000, 8);
    let a: Vec<Item> = shared.iter().chain(&a_only).copied().collect();
    let b: Vec<Item> = b_only.iter().chain(&shared).copied().collect();
    let (outcome, longest) = drive(a.clone(), b.clone());
    assert_exact(&outcome, &a, &b);
    assert_eq!(outcome.have.len(), 4_000);
    assert_eq!(outcome.need.len(), 4_000);
    assert!(
        longest > FRAME_LIMIT / 2,
        "messages were not cut at the frame limit"
    );
    assert!(outcome.rounds > 2);
}

#[test]
fn one_difference_in_a_large_set_is_found() {
    let mut rng = SplitMix64(4);
    let shared = rng.items(100_000, 16);
    let extra = rng.items(1, 16);
    let mut b = shared.clone();
    b.extend(&extra);
    let (outcome, _) = drive(shared, b);
    assert_eq!(outcome.have, Vec::<[u8; 32]>::new());
    assert_eq!(outcome.need, vec![extra[0].1]);
    assert!(outcome.rounds <= 5, "{} round trips", outcome.rounds);
    assert!(outcome.bytes_sent + outcome.bytes_received < 16 * 1024);
}

/// A first message with differences in it, so that it holds fingerprints and id lists.
fn sample_message() -> Vec<u8> {
    let mut initiator = Initiator::new(SplitMix64(5).items(500, 4));
    let first = initiator.start().unwrap();
    let mut responder = Responder::new(SplitMix64(6).items(500, 4));
    let reply = responder.handle(&first).unwrap();
    match initiator.handle(&reply).unwrap() {
        Step::Send(next) => next,
        Step::Done => panic!("disjoint sets settled in one round trip"),
    }
}

#[test]
fn truncated_messages_are_refused_by_both_sides() {
    let message = sample_message();
    assert!(message.len() > 64);
    for cut in 1..=16 {
        let truncated = &message[..message.len() - cut];
        // The last range is a 16-byte fingerprint or an id list: any cut inside it leaves it
        // short.
        let error = Responder::new(SplitMix64(6).items(500, 4))
            .handle(truncated)
            .unwrap_err();
        assert!(
            matches!(error, ReconcileError::Malformed { .. }),
            "cut {cut}: {error}"
        );
        let mut initiator = Initiator::new(Vec::new());
        initiator.start().unwrap();
        assert!(matches!(
            initiator.handle(truncated),
            Err(ReconcileError::Malformed { .. })
        ));
    }
    // Every other prefix: an error or a reply, never a panic.
    for end in 0..message.len() {
        let _ = Responder::new(SplitMix64(6).items(500, 4)).handle(&message[..end]);
    }
    assert_eq!(
        Responder::new(Vec::new()).handle(&[]),
        Err(ReconcileError::EmptyMessage)
    );
}

#[test]
fn oversized_messages_are_refused_before_parsing() {
    let mut message = vec![PROTOCOL_VERSION];
    message.resize(MESSAGE_BYTES_MAX + 1, 0);
    let expected = ReconcileError::MessageTooLarge {
        bytes: MESSAGE_BYTES_MAX + 1,
        max: MESSAGE_BYTES_MAX,
    };
    assert_eq!(Responder::new(Vec::new()).handle(&message), Err(expected));
    let mut initiator = Initiator::new(Vec::new());
    initiator.start().unwrap();
    assert!(matches!(
        initiator.handle(&message),
        Err(ReconcileError::MessageTooLarge { .. })
    ));
    // One byte less is not refused for its size: it is (MESSAGE_BYTES_MAX - 1) / 3 skip ranges
    // of zero bytes, and a trailing partial one.
    message.pop();
    assert!(!matches!(
        reconcile::validate(&message),
        Err(ReconcileError::MessageTooLarge { .. })
    ));
}

#[test]
fn each_malformation_is_named() {
    fn problem(message: &[u8]) -> Malformation {
        match reconcile::validate(message) {
            Err(ReconcileError::Malformed { problem, .. }) => problem,
            other => panic!("{message:02x?}: {other:?}"),
        }
    }
    let v = PROTOCOL_VERSION;
    assert_eq!(
        problem(&[v, 0x00, 0x00, 0x03]),
        Malformation::UnknownMode { mode: 3 }
    );
    assert_eq!(
        problem(&[v, 0x00, 0x21]),
        Malformation::BoundIdTooLong { len: 33 }
    );
    assert_eq!(problem(&[v, 0x80]), Malformation::VarintNotMinimal);
    assert_eq!(problem(&[v, 0x81]), Malformation::TruncatedVarint);
    let mut overflow = vec![v, 0x82];
    overflow.extend([0xff; 8]);
    overflow.push(0x7f);
    assert_eq!(problem(&overflow), Malformation::VarintOverflow);
    // A fingerprint of 15 bytes.
    let mut short = vec![v, 0x00, 0x00, 0x01];
    short.extend([0; 15]);
    assert!(matches!(
        problem(&short),
        Malformation::Truncated { needed: 16, .. }
    ));
    // An id list claiming 2^34 ids with none following: refused before anything is reserved.
    let huge = [v, 0x00, 0x00, 0x02, 0xc0, 0x80, 0x80, 0x80, 0x00];
    assert!(matches!(
        problem(&huge),
        Malformation::Truncated {
            what: "an id list",
            needed: 549_755_813_888,
            remaining: 0
        }
    ));
    // A count of u64::MAX ids: the byte count saturates rather than wrapping to a small one.
    let mut wrap = vec![v, 0x00, 0x00, 0x02, 0x81];
    wrap.extend([0xff; 8]);
    wrap.push(0x7f);
    assert!(matches!(
        problem(&wrap),
        Malformation::Truncated {
            needed: u64::MAX,
            ..
        }
    ));
    // The same on the responder: an error, not an abort.
    assert!(Responder::new(Vec::new()).handle(&huge).is_err());
    // A bare version byte and a complete skip range are fine.
    assert_eq!(reconcile::validate(&[v]), Ok(()));
    assert_eq!(reconcile::validate(&[v, 0x00, 0x00, 0x00]), Ok(()));
}

#[test]
fn versions_are_checked() {
    assert_eq!(
        Responder::new(Vec::new()).handle(&[0x00, 0x00]),
        Err(ReconcileError::NotNegentropy { found: 0x00 })
    );
    // Another negentropy version: the responder answers with the version it speaks.
    assert_eq!(
        Responder::new(Vec::new()).handle(&[0x62, 0x01, 0x02]),
        Ok(vec![PROTOCOL_VERSION])
    );
    // The initiator refuses a reply in another version.
    let mut initiator = Initiator::new(Vec::new());
    initiator.start().unwrap();
    assert_eq!(
        initiator.handle(&[0x62]),
        Err(ReconcileError::UnsupportedVersion { found: 0x62 })
    );
}

#[test]
fn a_peer_cannot_keep_a_session_going_forever() {
    // A reply claiming a different fingerprint for the whole set: the initiator splits it
    // into sixteen ranges and asks again, every time.
    let mut disagree = vec![PROTOCOL_VERSION, 0x00, 0x00, 0x01];
    disagree.extend([0xee; 16]);
    let mut initiator = Initiator::new(SplitMix64(8).items(1_000, 4));
    initiator.start().unwrap();
    for round in 1..ROUNDS_MAX {
        assert!(
            matches!(initiator.handle(&disagree), Ok(Step::Send(_))),
            "round {round}"
        );
    }
    assert_eq!(initiator.rounds(), ROUNDS_MAX);
    assert_eq!(
        initiator.handle(&disagree),
        Err(ReconcileError::TooManyRounds { max: ROUNDS_MAX })
    );
    let outcome = initiator.finish();
    assert!(!outcome.complete);

    // A responder answers at most ROUNDS_MAX messages.
    let first = Initiator::new(SplitMix64(9).items(1_000, 4))
        .start()
        .unwrap();
    let mut responder = Responder::new(SplitMix64(10).items(1_000, 4));
    for round in 0..ROUNDS_MAX {
        assert!(responder.handle(&first).is_ok(), "round {round}");
    }
    assert_eq!(
        responder.handle(&first),
        Err(ReconcileError::TooManyRounds { max: ROUNDS_MAX })
    );
}

#[test]
fn calls_out_of_order_are_errors_and_a_failed_session_stays_failed() {
    let mut initiator = Initiator::new(Vec::new());
    assert!(matches!(
        initiator.handle(&[PROTOCOL_VERSION]),
        Err(ReconcileError::OutOfOrder { call: "handle", .. })
    ));
    initiator.start().unwrap();
    assert!(matches!(
        initiator.start(),
        Err(ReconcileError::OutOfOrder { call: "start", .. })
    ));
    assert_eq!(initiator.handle(&[PROTOCOL_VERSION]), Ok(Step::Done));
    assert!(matches!(
        initiator.handle(&[PROTOCOL_VERSION]),
        Err(ReconcileError::OutOfOrder { state: "done", .. })
    ));

    let mut initiator = Initiator::new(Vec::new());
    initiator.start().unwrap();
    assert!(initiator.handle(&[0x00]).is_err());
    assert!(matches!(
        initiator.handle(&[PROTOCOL_VERSION]),
        Err(ReconcileError::OutOfOrder {
            state: "failed",
            ..
        })
    ));

    let mut responder = Responder::new(Vec::new());
    assert!(responder.handle(&[]).is_err());
    assert!(matches!(
        responder.handle(&[PROTOCOL_VERSION]),
        Err(ReconcileError::OutOfOrder {
            state: "failed",
            ..
        })
    ));
}
