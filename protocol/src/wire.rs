//! Wire frames of the sync protocol and the signed receipts they carry.
//!
//! A frame is `[version: u8][length: u32 big-endian][payload: bincode Message]`. The length is
//! checked against the caller's limit *before* any buffer is allocated, the payload is decoded
//! with a bincode size limit, every byte must be consumed, and the payload must be in
//! canonical form (it re-encodes to exactly its bytes). Arbitrary bytes give an error,
//! never a panic or a large allocation (a property test feeds random bytes).
//!
//! Streams: the control stream of a link carries small frames (at most [`FRAME_BYTES_MAX`]);
//! each batch travels on its own stream as one frame of at most [`BATCH_FRAME_BYTES_MAX`].

use bincode::{Decode, Encode};

use crate::batch::{
    BATCH_BYTES_MAX, Ed25519, NodeKey, PublicKey, Signature, SignedBatch, Signer, Verifier,
    bincode_config,
};
use crate::ids::{BatchId, Category, Digest, NodeId, Period};
use crate::record::Problem;

/// Version of the frame layout and message set.
pub const WIRE_VERSION: u8 = 1;
pub const FRAME_HEADER_BYTES: usize = 5;
/// Largest control frame.
pub const FRAME_BYTES_MAX: usize = 1024 * 1024;
/// Largest batch frame: a whole batch and its id and signature.
pub const BATCH_FRAME_BYTES_MAX: usize = BATCH_BYTES_MAX + 4096;
/// Most batch offers, wants or receipts in one frame.
pub const IDS_PER_FRAME_MAX: usize = 1024;
/// Most problems reported back for one batch.
pub const FEEDBACK_PROBLEMS_MAX: usize = 10_000;

const RECEIPT_SIGNING_CONTEXT: &[u8] = b"credit-network/receipt/v1";

/// A batch a node holds and offers to its parent.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Offer {
    pub id: BatchId,
    pub origin: NodeId,
    pub category: Category,
    pub period: Period,
    pub bytes: u32,
}

/// The receiver's decision on a batch.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Verdict {
    /// Stored durably; `warnings` records carried warnings (see the feedback).
    Accepted { warnings: u32 },
    /// Refused whole (bad hash, bad signature, a record its schema refuses); not stored.
    /// Re-sending will not help; the origin must correct and send a new batch.
    Rejected { reason: String },
}

/// "Node `receiver` holds batch `batch` durably since `received_at_ms`", signed by the receiver.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Receipt {
    pub receiver: NodeId,
    pub batch: BatchId,
    pub origin: NodeId,
    /// Unix time in milliseconds, from the receiver's clock.
    pub received_at_ms: u64,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct SignedReceipt {
    pub receipt: Receipt,
    pub signature: Signature,
}

impl Receipt {
    fn digest(&self) -> Digest {
        let bytes = bincode::encode_to_vec(self, bincode_config::<FRAME_BYTES_MAX>())
            .expect("a receipt encodes within the frame limit");
        Digest(*blake3::hash(&bytes).as_bytes())
    }

    pub fn sign(self, key: &NodeKey) -> SignedReceipt {
        self.sign_with(key)
    }

    /// [`Receipt::sign`] through a [`Signer`] seam.
    pub fn sign_with(self, key: &dyn Signer) -> SignedReceipt {
        let signature = key.sign(RECEIPT_SIGNING_CONTEXT, self.digest().as_bytes());
        SignedReceipt {
            receipt: self,
            signature,
        }
    }
}

impl SignedReceipt {
    /// Whether the receipt was signed by the holder of `receiver_key`.
    pub fn verify(&self, receiver_key: &PublicKey) -> bool {
        self.verify_with(receiver_key, &Ed25519)
    }

    /// [`SignedReceipt::verify`] through a [`Verifier`] seam.
    pub fn verify_with(&self, receiver_key: &PublicKey, verifier: &dyn Verifier) -> bool {
        verifier.verify(
            receiver_key,
            RECEIPT_SIGNING_CONTEXT,
            self.receipt.digest().as_bytes(),
            &self.signature,
        )
    }
}

/// What one reconciliation session compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum ReconcileKind {
    /// Ids of the batches and manifests of the child's subtree.
    Batches,
    /// The receipts of those batches signed by the nodes above the child.
    Receipts,
}

/// One session's scope: a kind, over the periods of one year.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct ReconcileScope {
    pub kind: ReconcileKind,
    pub year: u16,
}

/// A message of the sync protocol.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Message {
    /// First frame on a link's control stream, both ways.
    Hello {
        node: NodeId,
        wire_version: u8,
        topology_version: u64,
    },
    /// Child → parent: batches the child holds for this link.
    Offer {
        offers: Vec<Offer>,
    },
    /// Parent → child: which of the offered batches the parent lacks.
    Want {
        ids: Vec<BatchId>,
    },
    /// One batch (or manifest) its sender originated, alone on its own stream.
    Batch(SignedBatch),
    /// One batch (or manifest) the sender did not originate, alone on its own stream, with
    /// the signed receipt of the node that first received it from its origin: the proof of
    /// when it arrived, which the ledger dates reports by (never the origin's own clock).
    Forwarded {
        batch: SignedBatch,
        first_receipt: Box<SignedReceipt>,
    },
    /// Parent → child: receipts for batches the parent stored or refused.
    Receipts {
        receipts: Vec<SignedReceipt>,
    },
    /// Parent → child: receipts from further up (grandparent and beyond) for batches the
    /// child sent, so each origin holds the chain of where its batch got to.
    UpstreamReceipts {
        receipts: Vec<SignedReceipt>,
    },
    /// Child → parent: these relayed receipts (batch, receiver) are stored; stop relaying them.
    UpstreamStored {
        done: Vec<(BatchId, NodeId)>,
    },
    /// Receiver → origin (relayed down): per-record problems found in a batch.
    Feedback {
        batch: BatchId,
        problems: Vec<Problem>,
    },
    /// Child → parent: one round of a reconciliation session (negentropy v1 bytes, see
    /// `protocol::reconcile`); a new `session` number starts a new session.
    Reconcile {
        session: u64,
        scope: ReconcileScope,
        message: Vec<u8>,
    },
    /// Parent → child: the answer to one round.
    ReconcileReply {
        session: u64,
        message: Vec<u8>,
    },
    /// Child → parent: the session is over; the items the parent holds that the child lacks
    /// (batch ids, or receipt items), at most [`IDS_PER_FRAME_MAX`].
    ReconcileDone {
        session: u64,
        scope: ReconcileScope,
        parent_only: Vec<[u8; 32]>,
    },
    /// Parent → child: reconcile with me now (the parent's operator asked).
    ReconcileAsk,
    Ping {
        nonce: u64,
    },
    Pong {
        nonce: u64,
    },
    /// The sender is closing the link, and why.
    Goodbye {
        reason: String,
    },
    /// Parent → child (the batch's origin): the audit findings on an accepted batch's records
    /// (see `protocol::audit`), sent before its receipt; an empty list says none.
    Findings {
        batch: BatchId,
        findings: Vec<crate::audit::Finding>,
    },
}

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error(
        "frame version {0} is not supported (this node speaks {WIRE_VERSION}): upgrade the older node"
    )]
    Version(u8),
    #[error(
        "frame claims {claimed} bytes, more than the limit of {limit}: the peer is misbehaving"
    )]
    TooLarge { claimed: usize, limit: usize },
    #[error("frame payload does not decode: {0}")]
    Malformed(String),
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    #[error(
        "frame payload of {given} bytes is not in canonical form (its canonical encoding is {canonical} bytes: an integer is written longer than it needs): the peer does not encode as this protocol does"
    )]
    NotCanonical { given: usize, canonical: usize },
    #[error("frame carries {count} items, more than the limit of {limit}")]
    TooManyItems { count: usize, limit: usize },
}

impl Message {
    /// The frame bytes: header and payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![WIRE_VERSION, 0, 0, 0, 0];
        bincode::encode_into_std_write(self, &mut out, bincode_config::<BATCH_FRAME_BYTES_MAX>())
            .expect("writing to a Vec cannot fail and messages are built within limits");
        let length = u32::try_from(out.len() - FRAME_HEADER_BYTES).expect("frame below 4 GiB");
        out[1..5].copy_from_slice(&length.to_be_bytes());
        out
    }

    fn check_counts(&self) -> Result<(), FrameError> {
        let (count, limit) = match self {
            Message::Offer { offers } => (offers.len(), IDS_PER_FRAME_MAX),
            Message::Want { ids } => (ids.len(), IDS_PER_FRAME_MAX),
            Message::ReconcileDone { parent_only, .. } => (parent_only.len(), IDS_PER_FRAME_MAX),
            Message::Reconcile { message, .. } | Message::ReconcileReply { message, .. } => {
                (message.len(), crate::reconcile::MESSAGE_BYTES_MAX)
            }
            Message::UpstreamStored { done } => (done.len(), IDS_PER_FRAME_MAX),
            Message::Receipts { receipts } | Message::UpstreamReceipts { receipts } => {
                (receipts.len(), IDS_PER_FRAME_MAX)
            }
            Message::Feedback { problems, .. } => (problems.len(), FEEDBACK_PROBLEMS_MAX),
            Message::Findings { findings, .. } => (findings.len(), FEEDBACK_PROBLEMS_MAX),
            _ => (0, 0),
        };
        if count > limit {
            return Err(FrameError::TooManyItems { count, limit });
        }
        Ok(())
    }
}

/// Reads a frame header: the payload length, checked against `limit` before anything is
/// allocated.
pub fn payload_length(header: [u8; FRAME_HEADER_BYTES], limit: usize) -> Result<usize, FrameError> {
    if header[0] != WIRE_VERSION {
        return Err(FrameError::Version(header[0]));
    }
    let claimed = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if claimed > limit {
        return Err(FrameError::TooLarge { claimed, limit });
    }
    Ok(claimed)
}

/// Decodes one payload (without its header).
pub fn decode_payload(payload: &[u8]) -> Result<Message, FrameError> {
    if payload.len() > BATCH_FRAME_BYTES_MAX {
        return Err(FrameError::TooLarge {
            claimed: payload.len(),
            limit: BATCH_FRAME_BYTES_MAX,
        });
    }
    let (message, used): (Message, usize) =
        bincode::decode_from_slice(payload, bincode_config::<BATCH_FRAME_BYTES_MAX>())
            .map_err(|e| FrameError::Malformed(e.to_string()))?;
    if used != payload.len() {
        return Err(FrameError::TrailingBytes(payload.len() - used));
    }
    // Only the canonical form: bincode also reads integers written longer than they need, and
    // such an encoding is longer than the canonical one (nothing else in a message has two
    // forms), so comparing lengths is enough, and cheap (a batch's bytes are counted, not
    // copied).
    let mut size = bincode::enc::write::SizeWriter::default();
    bincode::encode_into_writer(
        &message,
        &mut size,
        bincode_config::<BATCH_FRAME_BYTES_MAX>(),
    )
    .map_err(|e| FrameError::Malformed(e.to_string()))?;
    if size.bytes_written != payload.len() {
        return Err(FrameError::NotCanonical {
            given: payload.len(),
            canonical: size.bytes_written,
        });
    }
    message.check_counts()?;
    Ok(message)
}

/// `Message`'s variant indices of the two batch frames, as bincode writes them (a test holds
/// [`batch_frame_parts`] to [`Message::encode`]).
const BATCH_VARIANT: u8 = 3;
const FORWARDED_VARIANT: u8 = 4;
/// Where a batch frame's payload holds the batch's id, its signature, and the length of its
/// bytes: after the variant (one byte), the id (32) and the signature (64).
const BATCH_ID_AT: usize = 1;
const BATCH_SIGNATURE_AT: usize = BATCH_ID_AT + 32;
const BATCH_LENGTH_AT: usize = BATCH_SIGNATURE_AT + 64;

/// The frame of `batch` (`Message::Batch`, or `Message::Forwarded` with `first_receipt`) in
/// three parts whose concatenation is what [`Message::encode`] makes of it: the header and
/// everything before the batch's bytes, the bytes themselves (moved, not copied), and what
/// follows them (a forwarded batch's receipt). A sender hands the three to QUIC as they are:
/// encoding the frame whole copied each batch's bytes into a new buffer (2.9 MB a batch of
/// 10,000 records), which quinn then copied again.
pub fn batch_frame_parts(batch: SignedBatch, first_receipt: Option<SignedReceipt>) -> [Vec<u8>; 3] {
    let config = bincode_config::<BATCH_FRAME_BYTES_MAX>();
    let variant = match first_receipt {
        Some(_) => FORWARDED_VARIANT,
        None => BATCH_VARIANT,
    };
    let mut head = vec![WIRE_VERSION, 0, 0, 0, 0];
    let length = batch.bytes.len() as u64;
    bincode::encode_into_std_write(
        (u32::from(variant), &batch.id, &batch.signature, length),
        &mut head,
        config,
    )
    .expect("writing to a Vec cannot fail");
    let tail = first_receipt.map_or_else(Vec::new, |receipt| {
        bincode::encode_to_vec(&receipt, config).expect("a receipt encodes")
    });
    let payload = head.len() - FRAME_HEADER_BYTES + batch.bytes.len() + tail.len();
    let payload = u32::try_from(payload).expect("frame below 4 GiB");
    head[1..5].copy_from_slice(&payload.to_be_bytes());
    [head, batch.bytes, tail]
}

/// [`decode_payload`] of a batch stream's payload, which it takes: a `Batch` or `Forwarded`
/// frame's batch bytes are moved to the front of the payload's own buffer and kept there,
/// not copied into a new one. The result is [`decode_payload`]'s for any bytes: whatever is
/// not a well-formed batch frame in canonical form is decoded by it (a property test
/// compares the two on valid and mutated frames).
pub fn decode_batch_payload(mut payload: Vec<u8>) -> Result<Message, FrameError> {
    let Some((range, first_receipt)) = batch_in_payload(&payload) else {
        return decode_payload(&payload);
    };
    let id = BatchId(
        payload[BATCH_ID_AT..BATCH_SIGNATURE_AT]
            .try_into()
            .expect("32 bytes"),
    );
    let signature = Signature(
        payload[BATCH_SIGNATURE_AT..BATCH_LENGTH_AT]
            .try_into()
            .expect("64 bytes"),
    );
    let length = range.len();
    payload.copy_within(range, 0);
    payload.truncate(length);
    let batch = SignedBatch {
        id,
        signature,
        bytes: payload,
    };
    Ok(match first_receipt {
        Some(first_receipt) => Message::Forwarded {
            batch,
            first_receipt: Box::new(first_receipt),
        },
        None => Message::Batch(batch),
    })
}

/// Where a batch frame's payload holds the batch's bytes, and a forwarded batch's receipt:
/// `None` unless the payload is a `Batch` or `Forwarded` frame in canonical form, every byte
/// used.
fn batch_in_payload(payload: &[u8]) -> Option<(std::ops::Range<usize>, Option<SignedReceipt>)> {
    if payload.len() > BATCH_FRAME_BYTES_MAX {
        return None;
    }
    let variant = *payload.first()?;
    if variant != BATCH_VARIANT && variant != FORWARDED_VARIANT {
        return None;
    }
    // The length, a varint in its least form (bincode's standard configuration): its value,
    // where the bytes start, and the least value its width may hold.
    let after = payload.get(BATCH_LENGTH_AT + 1..)?;
    let (length, start, least) = match *payload.get(BATCH_LENGTH_AT)? {
        n @ 0..=250 => (u64::from(n), BATCH_LENGTH_AT + 1, 0),
        251 => (
            u64::from(u16::from_le_bytes(*after.first_chunk()?)),
            BATCH_LENGTH_AT + 3,
            251,
        ),
        252 => (
            u64::from(u32::from_le_bytes(*after.first_chunk()?)),
            BATCH_LENGTH_AT + 5,
            1 << 16,
        ),
        253 => (
            u64::from_le_bytes(*after.first_chunk()?),
            BATCH_LENGTH_AT + 9,
            1 << 32,
        ),
        _ => return None,
    };
    if length < least {
        return None;
    }
    let end = start.checked_add(usize::try_from(length).ok()?)?;
    let tail = payload.get(end..)?;
    let first_receipt = if variant == FORWARDED_VARIANT {
        let config = bincode_config::<BATCH_FRAME_BYTES_MAX>();
        let (receipt, used): (SignedReceipt, usize) =
            bincode::decode_from_slice(tail, config).ok()?;
        let mut size = bincode::enc::write::SizeWriter::default();
        bincode::encode_into_writer(&receipt, &mut size, config).ok()?;
        if used != tail.len() || size.bytes_written != tail.len() {
            return None;
        }
        Some(receipt)
    } else if tail.is_empty() {
        None
    } else {
        return None;
    };
    Some((start..end, first_receipt))
}

/// Decodes the first frame in `buffer`: `Ok(None)` if more bytes are needed, otherwise the
/// message and how many bytes it took.
pub fn decode_frame(buffer: &[u8], limit: usize) -> Result<Option<(Message, usize)>, FrameError> {
    let Some(header) = buffer.first_chunk::<FRAME_HEADER_BYTES>() else {
        return Ok(None);
    };
    let length = payload_length(*header, limit)?;
    let Some(payload) = buffer.get(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + length) else {
        return Ok(None);
    };
    Ok(Some((
        decode_payload(payload)?,
        FRAME_HEADER_BYTES + length,
    )))
}
