//! Range-based set reconciliation of two sets of 32-byte ids, as sans-IO sessions over the
//! `negentropy` crate (protocol v1, the version byte `0x61`): the child runs an [`Initiator`],
//! the parent a [`Responder`], and the driver carries their messages over a link.
//!
//! An item is `(timestamp, id)`: the timestamp orders the set (callers use a period ordinal)
//! and the id is what is compared (a batch id, or a hash of a batch id and its receiver). An id
//! must carry the same timestamp on both sides: negentropy compares ids within ranges of
//! `(timestamp, id)`, so one id under two timestamps may be reported on both sides.
//!
//! The exchange, as negentropy v1 defines it:
//! 1. The initiator sends the first message ([`Initiator::start`]).
//! 2. The responder answers **every** message with a reply ([`Responder::handle`]). A reply is
//!    never empty: it holds at least the version byte, and a reply that is only the version byte
//!    means "every range you sent matched" (or, to a message of another protocol version, "I
//!    speak v1").
//! 3. The initiator reads the reply ([`Initiator::handle`]), learns the ids it holds that the
//!    responder lacks (`have`) and those the responder holds that it lacks (`need`), and either
//!    has a next message ([`Step::Send`]) or is done ([`Step::Done`]).
//!
//! So the responder always sends the last message and the initiator alone decides that the
//! session is over; the responder is not told. Its driver ends the session when the link says
//! so (the child finishes the stream after `Step::Done`).
//!
//! Guarantees:
//! - Hostile input gives a [`ReconcileError`], never a panic: a message is checked against
//!   [`MESSAGE_BYTES_MAX`] and then parsed in full by [`validate`] (every varint terminated and
//!   in range, every bound id at most 32 bytes, every mode known, every fingerprint and id list
//!   complete, nothing left over) before negentropy sees it.
//! - Bounded: a session lasts at most [`ROUNDS_MAX`] round trips on either side, every message
//!   this module sends is at most [`FRAME_LIMIT`] bytes, and the initiator keeps `have` and
//!   `need` as sets, so a peer repeating itself cannot grow them: `have` is at most the
//!   initiator's own set, `need` at most the ids the peer's messages carried.
//! - No IO, no clock: a session is a value that is fed bytes.

use std::collections::BTreeSet;

use negentropy::{Id, Negentropy, NegentropyStorageVector};

/// An item to reconcile: `(timestamp, id)`. Items sort by timestamp, then id.
pub type Item = (u64, [u8; 32]);

/// Frame limit handed to negentropy: no message either side sends is longer.
///
/// Negentropy needs 0 (unlimited) or at least 4096. Unlimited would let one reply carry a whole
/// set (32 MB for a million ids), which a receiver cannot bound; 4 KiB frames need hundreds of
/// round trips once a few hundred ids differ, each a network round trip. 64 KiB holds about
/// 2,000 ids, keeps a message well inside one QUIC flow-control window, and a million-id set
/// differing by 100 ids still settles in 3 round trips. The price is paid at large gaps: two
/// million-id sets differing by 10,000 ids take 128 round trips and 4.2 s of CPU here, against
/// 10 round trips and 1.1 s with 1 MiB frames (the `reconcile` bench); raise the limit if such
/// gaps turn out to be common.
pub const FRAME_LIMIT: usize = 64 * 1024;
const _: () = assert!(
    FRAME_LIMIT >= 4096,
    "negentropy refuses frame limits under 4096"
);

/// Longest message accepted from a peer: [`FRAME_LIMIT`] and a margin. Negentropy stops filling
/// a message 200 bytes short of the limit and then appends at most one closing range, so an
/// honest message never exceeds the limit; the margin only keeps a small miscount of ours or of
/// a later negentropy from failing honest sessions.
pub const MESSAGE_BYTES_MAX: usize = FRAME_LIMIT + 4096;

/// Most round trips (an initiator message and the reply to it) in one session, on either side.
///
/// A session needs about `log16(n)` round trips to find the differences and then one more for
/// every ~128 KiB (a full frame each way) of ids the two sides must list to each other: each
/// differing id costs a leaf range of up to 32 ids a side, about 1.1 KB on the wire for
/// million-id sets. Two million-id sets differing by 10,000 ids take 128 round trips (measured
/// by the `reconcile` bench), so 64 would cut such a session short; 256 carries 16 MiB each way.
/// Larger gaps must be reconciled in smaller ranges (one period at a time). A peer that keeps a
/// session going longer is misbehaving.
///
/// The cap also bounds the work a hostile peer can cause: each round may cost the other side
/// O(n) (negentropy's vector storage sums a range's ids to fingerprint it, and a frame cut
/// fingerprints the rest of the set), about 35 ms at a million items in release builds.
pub const ROUNDS_MAX: u32 = 256;

/// The negentropy protocol version spoken here (v1).
pub const PROTOCOL_VERSION: u8 = 0x61;
const _: () = assert!(PROTOCOL_VERSION as u64 == negentropy::PROTOCOL_VERSION);

/// What an [`Initiator`] does after a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send this message to the responder and hand its reply to [`Initiator::handle`].
    Send(Vec<u8>),
    /// The sets are reconciled: `have` and `need` are complete. Send nothing more.
    Done,
}

/// The result of a session, from the initiator's side.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    /// Ids the initiator holds and the responder lacks, ascending.
    pub have: Vec<[u8; 32]>,
    /// Ids the responder holds and the initiator lacks, ascending.
    pub need: Vec<[u8; 32]>,
    /// Round trips: messages the initiator sent, each answered by one reply.
    pub rounds: u32,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Whether the session reached [`Step::Done`]. If not, `have` and `need` hold only what was
    /// learnt so far.
    pub complete: bool,
}

/// What is structurally wrong with a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformation {
    #[error("a varint runs past the end of the message")]
    TruncatedVarint,
    #[error("a varint does not fit in 64 bits")]
    VarintOverflow,
    #[error("a varint has a leading zero group (not minimally encoded)")]
    VarintNotMinimal,
    #[error("a bound's id prefix is {len} bytes, more than 32")]
    BoundIdTooLong { len: u64 },
    #[error("unknown range mode {mode} (0 skip, 1 fingerprint, 2 id list)")]
    UnknownMode { mode: u64 },
    #[error("{what} needs {needed} bytes, {remaining} remain")]
    Truncated {
        what: &'static str,
        needed: u64,
        remaining: usize,
    },
}

/// Why a reconciliation session could not go on. The session is over after any of these: start
/// a new one (on a new stream) to try again.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReconcileError {
    #[error(
        "reconciliation message of {bytes} bytes exceeds the limit of {max}: the peer ignores the \
         frame limit; drop the session"
    )]
    MessageTooLarge { bytes: usize, max: usize },
    #[error("empty reconciliation message: a message starts with the protocol version byte")]
    EmptyMessage,
    #[error(
        "byte {found:#04x} is not a negentropy protocol version (0x60 to 0x6f): not a reconciliation message"
    )]
    NotNegentropy { found: u8 },
    #[error(
        "the peer speaks negentropy protocol version {found:#04x}, this node speaks {:#04x}: \
         upgrade the older node",
        PROTOCOL_VERSION
    )]
    UnsupportedVersion { found: u8 },
    #[error("malformed reconciliation message at byte {offset}: {problem}")]
    Malformed {
        offset: usize,
        problem: Malformation,
    },
    #[error(
        "reconciliation went past {max} round trips: the peer is misbehaving, or the sets differ \
         by more than one session carries; reconcile a smaller range (one period)"
    )]
    TooManyRounds { max: u32 },
    #[error("reconciliation session is {state}: {call} is out of order (a driver bug)")]
    OutOfOrder {
        state: &'static str,
        call: &'static str,
    },
    #[error("negentropy refused a message that passed validation: {0} (a bug here; report it)")]
    Negentropy(negentropy::Error),
    #[error(
        "negentropy produced a {bytes}-byte message, over the frame limit (a bug in negentropy; \
         report it)"
    )]
    OutgoingTooLarge { bytes: usize },
}

/// Checks that `message` is one well-formed negentropy v1 message, parsing it as negentropy
/// will: the version byte `0x61`, then ranges to the end, each `[timestamp varint][id length
/// varint ≤ 32][id prefix][mode varint]` followed by nothing (skip), a 16-byte fingerprint, or
/// `[count varint][count × 32-byte ids]` (id list).
///
/// Negentropy itself reads a varint cut off by the end of the message as complete and a
/// missing mode as "skip", so a truncated message could pass as a shorter one; this check
/// refuses that, and any length or count that would overrun the message, before anything is
/// allocated for it. It cannot see a message cut exactly between two ranges: the link must
/// deliver messages whole.
pub fn validate(message: &[u8]) -> Result<(), ReconcileError> {
    check_envelope(message)?;
    let version = message[0];
    if version != PROTOCOL_VERSION {
        return Err(ReconcileError::UnsupportedVersion { found: version });
    }
    let mut reader = Reader { message, offset: 1 };
    while reader.offset < message.len() {
        reader.range()?;
    }
    Ok(())
}

/// The checks every message passes before its body is read: its length and its version byte.
fn check_envelope(message: &[u8]) -> Result<(), ReconcileError> {
    if message.len() > MESSAGE_BYTES_MAX {
        return Err(ReconcileError::MessageTooLarge {
            bytes: message.len(),
            max: MESSAGE_BYTES_MAX,
        });
    }
    let &version = message.first().ok_or(ReconcileError::EmptyMessage)?;
    if !(0x60..=0x6f).contains(&version) {
        return Err(ReconcileError::NotNegentropy { found: version });
    }
    Ok(())
}

/// A cursor over a message for [`validate`].
struct Reader<'m> {
    message: &'m [u8],
    offset: usize,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.message.len() - self.offset
    }

    fn malformed(&self, offset: usize, problem: Malformation) -> ReconcileError {
        ReconcileError::Malformed { offset, problem }
    }

    /// Negentropy's varint: big-endian groups of 7 bits, the high bit set on all but the last.
    fn varint(&mut self) -> Result<u64, ReconcileError> {
        let start = self.offset;
        let mut value: u64 = 0;
        loop {
            let Some(&byte) = self.message.get(self.offset) else {
                return Err(self.malformed(start, Malformation::TruncatedVarint));
            };
            if self.offset == start && byte == 0x80 {
                return Err(self.malformed(start, Malformation::VarintNotMinimal));
            }
            self.offset += 1;
            if value >> 57 != 0 {
                return Err(self.malformed(start, Malformation::VarintOverflow));
            }
            value = (value << 7) | u64::from(byte & 0x7f);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
    }

    fn skip(&mut self, what: &'static str, needed: u64) -> Result<(), ReconcileError> {
        let remaining = self.remaining();
        if needed > remaining as u64 {
            return Err(self.malformed(
                self.offset,
                Malformation::Truncated {
                    what,
                    needed,
                    remaining,
                },
            ));
        }
        // `needed <= remaining`, a usize.
        self.offset += needed as usize;
        Ok(())
    }

    fn range(&mut self) -> Result<(), ReconcileError> {
        let _timestamp = self.varint()?;
        let id_offset = self.offset;
        let id_len = self.varint()?;
        if id_len > negentropy::ID_SIZE as u64 {
            return Err(self.malformed(id_offset, Malformation::BoundIdTooLong { len: id_len }));
        }
        self.skip("a bound's id prefix", id_len)?;
        let mode_offset = self.offset;
        match self.varint()? {
            0 => Ok(()),
            1 => self.skip("a fingerprint", negentropy::FINGERPRINT_SIZE as u64),
            2 => {
                let count = self.varint()?;
                let needed = count.saturating_mul(negentropy::ID_SIZE as u64);
                self.skip("an id list", needed)
            }
            mode => Err(self.malformed(mode_offset, Malformation::UnknownMode { mode })),
        }
    }
}

/// Sorted, deduplicated, sealed negentropy storage of `items`.
fn storage(items: Vec<Item>) -> NegentropyStorageVector {
    let mut storage = NegentropyStorageVector::with_capacity(items.len());
    for (timestamp, id) in items {
        storage
            .insert(timestamp, Id::from_byte_array(id))
            .expect("a new storage is not sealed");
    }
    // Sorts by (timestamp, id) and drops exact duplicates. Negentropy's range splitting relies
    // on no two stored items being equal.
    storage.seal().expect("a new storage is not sealed");
    storage
}

/// A negentropy instance owning its storage, so that a session is one self-contained value.
fn session(items: Vec<Item>) -> Negentropy<'static, NegentropyStorageVector> {
    Negentropy::owned(storage(items), FRAME_LIMIT as u64)
        .expect("FRAME_LIMIT is at least 4096, checked at compile time")
}

fn check_outgoing(message: &[u8]) -> Result<(), ReconcileError> {
    if message.len() > FRAME_LIMIT {
        return Err(ReconcileError::OutgoingTooLarge {
            bytes: message.len(),
        });
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    New,
    AwaitingReply,
    Done,
    Failed,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::New => "not started",
            State::AwaitingReply => "awaiting a reply",
            State::Done => "done",
            State::Failed => "failed",
        }
    }
}

/// The child's side of a session: sends the first message, reads every reply, and collects
/// the differences.
pub struct Initiator {
    negentropy: Negentropy<'static, NegentropyStorageVector>,
    state: State,
    have: BTreeSet<[u8; 32]>,
    need: BTreeSet<[u8; 32]>,
    rounds: u32,
    bytes_sent: u64,
    bytes_received: u64,
}

impl std::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Initiator")
            .field("state", &self.state)
            .field("have", &self.have.len())
            .field("need", &self.need.len())
            .field("rounds", &self.rounds)
            .finish_non_exhaustive()
    }
}

impl Initiator {
    /// A session over `items`, in any order; duplicates are dropped.
    pub fn new(items: Vec<Item>) -> Self {
        Initiator {
            negentropy: session(items),
            state: State::New,
            have: BTreeSet::new(),
            need: BTreeSet::new(),
            rounds: 0,
            bytes_sent: 0,
            bytes_received: 0,
        }
    }

    /// The first message, for the responder. Call once.
    pub fn start(&mut self) -> Result<Vec<u8>, ReconcileError> {
        self.expect_state(State::New, "start")?;
        let message = match self.negentropy.initiate() {
            Ok(message) => message,
            Err(error) => return Err(self.fail(ReconcileError::Negentropy(error))),
        };
        self.send(message)
    }

    /// Reads the responder's reply to the last message sent: the next message to send, or
    /// [`Step::Done`]. After an error the session is over.
    pub fn handle(&mut self, reply: &[u8]) -> Result<Step, ReconcileError> {
        self.expect_state(State::AwaitingReply, "handle")?;
        self.bytes_received += reply.len() as u64;
        if let Err(error) = validate(reply) {
            return Err(self.fail(error));
        }
        // Collected per reply and merged only if the reply is read whole.
        let mut have = Vec::new();
        let mut need = Vec::new();
        let next = match self
            .negentropy
            .reconcile_with_ids(reply, &mut have, &mut need)
        {
            Ok(next) => next,
            Err(error) => return Err(self.fail(ReconcileError::Negentropy(error))),
        };
        self.have.extend(have.into_iter().map(Id::to_bytes));
        self.need.extend(need.into_iter().map(Id::to_bytes));
        match next {
            None => {
                self.state = State::Done;
                Ok(Step::Done)
            }
            Some(_) if self.rounds >= ROUNDS_MAX => {
                Err(self.fail(ReconcileError::TooManyRounds { max: ROUNDS_MAX }))
            }
            Some(message) => self.send(message).map(Step::Send),
        }
    }

    /// Ids this side holds and the responder lacks, learnt so far.
    pub fn have(&self) -> &BTreeSet<[u8; 32]> {
        &self.have
    }

    /// Ids the responder holds and this side lacks, learnt so far.
    pub fn need(&self) -> &BTreeSet<[u8; 32]> {
        &self.need
    }

    /// Whether the session reached [`Step::Done`].
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Round trips so far (messages sent).
    pub fn rounds(&self) -> u32 {
        self.rounds
    }

    /// The session's result; [`Outcome::complete`] says whether it reached [`Step::Done`].
    pub fn finish(self) -> Outcome {
        Outcome {
            have: self.have.into_iter().collect(),
            need: self.need.into_iter().collect(),
            rounds: self.rounds,
            bytes_sent: self.bytes_sent,
            bytes_received: self.bytes_received,
            complete: self.state == State::Done,
        }
    }

    fn send(&mut self, message: Vec<u8>) -> Result<Vec<u8>, ReconcileError> {
        if let Err(error) = check_outgoing(&message) {
            return Err(self.fail(error));
        }
        self.rounds += 1;
        self.bytes_sent += message.len() as u64;
        self.state = State::AwaitingReply;
        Ok(message)
    }

    fn expect_state(&self, expected: State, call: &'static str) -> Result<(), ReconcileError> {
        if self.state == expected {
            Ok(())
        } else {
            Err(ReconcileError::OutOfOrder {
                state: self.state.name(),
                call,
            })
        }
    }

    fn fail(&mut self, error: ReconcileError) -> ReconcileError {
        self.state = State::Failed;
        error
    }
}

/// The parent's side of a session: answers each of the initiator's messages. It learns nothing
/// itself (negentropy tells only the initiator what differs) and is not told when the session
/// ends.
pub struct Responder {
    negentropy: Negentropy<'static, NegentropyStorageVector>,
    rounds: u32,
    failed: bool,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("rounds", &self.rounds)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl Responder {
    /// A session over `items`, in any order; duplicates are dropped.
    pub fn new(items: Vec<Item>) -> Self {
        Responder {
            negentropy: session(items),
            rounds: 0,
            failed: false,
        }
    }

    /// The reply to one of the initiator's messages: always a message to send back, never
    /// nothing, because the initiator waits for it. A reply of only the version byte means every
    /// range matched, and the initiator will finish on it; a longer reply may still be the last
    /// (the initiator decides). To a message of another protocol version (`0x60` to `0x6f`) the
    /// reply is the bare `0x61`: negentropy's version negotiation. After an error the session is
    /// over.
    pub fn handle(&mut self, message: &[u8]) -> Result<Vec<u8>, ReconcileError> {
        if self.failed {
            return Err(ReconcileError::OutOfOrder {
                state: State::Failed.name(),
                call: "handle",
            });
        }
        let reply = self.reply(message);
        self.failed = reply.is_err();
        reply
    }

    /// Messages answered so far.
    pub fn rounds(&self) -> u32 {
        self.rounds
    }

    fn reply(&mut self, message: &[u8]) -> Result<Vec<u8>, ReconcileError> {
        if self.rounds >= ROUNDS_MAX {
            return Err(ReconcileError::TooManyRounds { max: ROUNDS_MAX });
        }
        self.rounds += 1;
        check_envelope(message)?;
        if message[0] != PROTOCOL_VERSION {
            return Ok(vec![PROTOCOL_VERSION]);
        }
        validate(message)?;
        let reply = self
            .negentropy
            .reconcile(message)
            .map_err(ReconcileError::Negentropy)?;
        check_outgoing(&reply)?;
        Ok(reply)
    }
}

/// Runs a whole session in memory, `a` initiating and `b` responding: the differences, from
/// `a`'s side.
pub fn run_local(a: Vec<Item>, b: Vec<Item>) -> Result<Outcome, ReconcileError> {
    let mut initiator = Initiator::new(a);
    let mut responder = Responder::new(b);
    let mut message = initiator.start()?;
    loop {
        let reply = responder.handle(&message)?;
        match initiator.handle(&reply)? {
            Step::Send(next) => message = next,
            Step::Done => return Ok(initiator.finish()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_decode_as_negentropy_encodes_them() {
        let mut reader = Reader {
            message: &[0x00, 0x7f, 0x81, 0x00, 0x82, 0x80, 0x01],
            offset: 0,
        };
        assert_eq!(reader.varint(), Ok(0));
        assert_eq!(reader.varint(), Ok(127));
        assert_eq!(reader.varint(), Ok(128));
        assert_eq!(reader.varint(), Ok((2 << 14) | 1));
        assert_eq!(reader.remaining(), 0);
    }

    #[test]
    fn varint_past_64_bits_is_refused() {
        // u64::MAX is 0x81, eight 0xff groups and a last group 0x7f without the high bit.
        let mut max = vec![0x81];
        max.extend([0xff; 8]);
        max.push(0x7f);
        let mut reader = Reader {
            message: &max,
            offset: 0,
        };
        assert_eq!(reader.varint(), Ok(u64::MAX));

        let mut over = vec![0x82];
        over.extend([0xff; 8]);
        over.push(0x7f);
        let mut reader = Reader {
            message: &over,
            offset: 0,
        };
        assert_eq!(
            reader.varint(),
            Err(ReconcileError::Malformed {
                offset: 0,
                problem: Malformation::VarintOverflow
            })
        );
    }

    #[test]
    fn first_message_of_an_empty_set_is_valid_and_answered() {
        let mut initiator = Initiator::new(Vec::new());
        let first = initiator.start().unwrap();
        validate(&first).unwrap();
        let mut responder = Responder::new(vec![(1, [7; 32])]);
        let reply = responder.handle(&first).unwrap();
        validate(&reply).unwrap();
        assert_eq!(initiator.handle(&reply), Ok(Step::Done));
        assert_eq!(initiator.need().iter().collect::<Vec<_>>(), vec![&[7; 32]]);
        assert!(initiator.have().is_empty());
    }
}
