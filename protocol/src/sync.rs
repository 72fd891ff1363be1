//! The sync protocol of one link, as sans-IO state machines: [`Uplink`] runs on the child
//! (sending batches up), [`Downlink`] on the parent. No sockets, no clock: the driver passes
//! messages and the time (`now_ms`) in through `handle_*` and takes what to send out through
//! `poll_*`, in the manner of quinn-proto.
//!
//! Driver contract, after any `handle_*` call: drain `poll_transmit` (control-stream frames),
//! `poll_send` (batches to send, each on its own stream; report the end with
//! `handle_batch_sent` or `handle_send_failed`), `poll_event`; then arm a timer for
//! `poll_timeout` and call `handle_timeout` when it fires.
//!
//! Guarantees:
//! - A batch leaves the child's pending set only on a receipt signed by the parent's pinned
//!   key ([`UplinkEvent::Receipt`]); the driver drops it from the outbox only after storing
//!   that receipt.
//! - Loss, duplication and reordering of any message are harmless: offers are re-sent after
//!   `retry_ms` without an answer, batches are content-addressed so a duplicate is a no-op,
//!   and a late receipt for a batch no longer pending is ignored.
//! - Bounded: at most `window` batches in flight per link, at most [`PENDING_MAX`] batches
//!   pending in memory (the driver pages the rest from its outbox), at most
//!   [`IDS_PER_FRAME_MAX`] ids per frame, at most [`WANTED_MAX`] outstanding wants.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::batch::{Batch, BatchHeader, Ed25519, PublicKey, SignedBatch, Verifier, VerifyError};
use crate::ids::{BatchId, NodeId};
use crate::manifest::{Content, ContentKind, Manifest};
use crate::progress::ProgressReport;
use crate::record::Problem;
use crate::schema::{Registry, Schema};
use crate::wire::{IDS_PER_FRAME_MAX, Message, Offer, SignedReceipt, Verdict};

/// Most batches an uplink holds in memory; the driver feeds more as these are receipted.
pub const PENDING_MAX: usize = 65_536;
/// Most batch ids a downlink has asked for and not yet received.
pub const WANTED_MAX: usize = 8_192;
/// Refusal receipts a downlink remembers, to answer late re-offers of refused batches.
pub const RECENT_REFUSALS_MAX: usize = 64;
/// Most record problems kept for one refused batch.
pub const REJECTION_PROBLEMS_MAX: usize = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncConfig {
    /// Batches sent and not yet receipted, per link.
    pub window: usize,
    /// How long an offer or a sent batch waits for an answer before it is offered again.
    pub retry_ms: u64,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            window: 8,
            retry_ms: 15_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// To be offered when connected.
    Queued,
    Offered {
        at_ms: u64,
    },
    /// The parent asked for it; waiting for a slot in the window.
    Wanted,
    /// On its way on its own stream.
    Sending,
    AwaitingReceipt {
        at_ms: u64,
    },
}

/// Something the uplink's driver must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UplinkEvent {
    /// The parent's verified receipt: store it, then drop the batch from the outbox. A
    /// `Rejected` verdict is final too: the origin must correct and send a new batch.
    Receipt(SignedReceipt),
    /// Receipts from further up, relayed by the parent; the driver checks each against the
    /// receiver's pinned key before storing it.
    UpstreamReceipts(Vec<SignedReceipt>),
    /// Per-record problems the parent found in a batch.
    Feedback {
        batch: BatchId,
        problems: Vec<Problem>,
    },
    /// The parent's audit findings on an accepted batch of this node's own.
    Findings {
        batch: BatchId,
        findings: Vec<crate::audit::Finding>,
    },
}

/// Why a link must be closed: the peer broke the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("receipt for batch {batch} is not signed by {peer}'s pinned key: closing the link")]
    BadReceiptSignature { peer: NodeId, batch: BatchId },
    #[error("receipt for batch {batch} names receiver {named}, but the link's peer is {peer}")]
    WrongReceiver {
        peer: NodeId,
        named: NodeId,
        batch: BatchId,
    },
    #[error("peer sent {0} on this link, which is not a message it may send here")]
    Unexpected(&'static str),
    #[error("peer introduced itself as {claimed}, but its certificate is {peer}'s")]
    WrongHello { peer: NodeId, claimed: NodeId },
}

/// The child's side of a link to its parent.
#[derive(Debug)]
pub struct Uplink {
    me: NodeId,
    parent: NodeId,
    parent_key: PublicKey,
    config: SyncConfig,
    connected: bool,
    pending: BTreeMap<BatchId, (Offer, Stage)>,
    wanted: VecDeque<BatchId>,
    in_flight: BTreeSet<BatchId>,
    transmit: VecDeque<Message>,
    sends: VecDeque<BatchId>,
    events: VecDeque<UplinkEvent>,
}

impl Uplink {
    pub fn new(me: NodeId, parent: NodeId, parent_key: PublicKey, config: SyncConfig) -> Uplink {
        assert!(config.window > 0, "a window of zero would never send");
        Uplink {
            me,
            parent,
            parent_key,
            config,
            connected: false,
            pending: BTreeMap::new(),
            wanted: VecDeque::new(),
            in_flight: BTreeSet::new(),
            transmit: VecDeque::new(),
            sends: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    pub fn parent(&self) -> NodeId {
        self.parent
    }

    /// The key receipts must be signed with: the parent's key pinned when this uplink was
    /// made. A re-keyed parent needs a new uplink.
    pub fn parent_key(&self) -> PublicKey {
        self.parent_key
    }

    /// How many more batches [`Uplink::handle_outbox`] will take now.
    pub fn capacity(&self) -> usize {
        PENDING_MAX - self.pending.len()
    }

    /// Batches pending on this link (not yet receipted).
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    pub fn in_flight_len(&self) -> usize {
        self.in_flight.len()
    }

    pub fn is_pending(&self, id: &BatchId) -> bool {
        self.pending.contains_key(id)
    }

    /// Batches that entered the outbox for this link. Ones already pending are ignored; at
    /// most [`Uplink::capacity`] are taken, and the number taken is returned.
    pub fn handle_outbox(&mut self, offers: impl IntoIterator<Item = Offer>, now_ms: u64) -> usize {
        let mut taken = 0;
        let mut fresh = Vec::new();
        for offer in offers {
            if self.pending.len() >= PENDING_MAX {
                break;
            }
            if self.pending.contains_key(&offer.id) {
                continue;
            }
            taken += 1;
            fresh.push(offer.id);
            self.pending.insert(offer.id, (offer, Stage::Queued));
        }
        if self.connected {
            self.offer(fresh, now_ms);
        }
        taken
    }

    /// The link's control stream is up. Everything pending is offered afresh.
    pub fn handle_connected(&mut self, topology_version: u64, now_ms: u64) {
        self.reset();
        self.connected = true;
        self.transmit.push_back(Message::Hello {
            node: self.me,
            wire_version: crate::wire::WIRE_VERSION,
            topology_version,
        });
        let all: Vec<BatchId> = self.pending.keys().copied().collect();
        self.offer(all, now_ms);
    }

    /// The link is down: nothing is in flight any more; all pending batches wait to be offered.
    pub fn handle_disconnected(&mut self) {
        self.reset();
        self.connected = false;
    }

    fn reset(&mut self) {
        for (_, stage) in self.pending.values_mut() {
            *stage = Stage::Queued;
        }
        self.wanted.clear();
        self.in_flight.clear();
        self.transmit.clear();
        self.sends.clear();
    }

    fn offer(&mut self, ids: Vec<BatchId>, now_ms: u64) {
        let mut offers = Vec::new();
        for id in ids {
            if let Some((offer, stage)) = self.pending.get_mut(&id)
                && *stage == Stage::Queued
            {
                *stage = Stage::Offered { at_ms: now_ms };
                offers.push(offer.clone());
            }
        }
        for chunk in offers.chunks(IDS_PER_FRAME_MAX) {
            self.transmit.push_back(Message::Offer {
                offers: chunk.to_vec(),
            });
        }
    }

    /// A message from the parent on the control stream.
    pub fn handle_message(&mut self, message: Message, now_ms: u64) -> Result<(), ProtocolError> {
        self.handle_message_with(message, now_ms, &Ed25519)
    }

    /// [`Uplink::handle_message`], checking receipt signatures through `verifier`.
    pub fn handle_message_with(
        &mut self,
        message: Message,
        now_ms: u64,
        verifier: &dyn Verifier,
    ) -> Result<(), ProtocolError> {
        match message {
            Message::Hello { node, .. } => {
                if node != self.parent {
                    return Err(ProtocolError::WrongHello {
                        peer: self.parent,
                        claimed: node,
                    });
                }
            }
            Message::Want { ids } => {
                for id in ids {
                    if let Some((_, stage)) = self.pending.get_mut(&id)
                        && matches!(stage, Stage::Queued | Stage::Offered { .. })
                    {
                        *stage = Stage::Wanted;
                        self.wanted.push_back(id);
                    }
                }
                self.fill_window();
            }
            Message::Receipts { receipts } => {
                for receipt in receipts {
                    self.handle_receipt(receipt, verifier)?;
                }
                self.fill_window();
            }
            Message::UpstreamReceipts { receipts } => {
                self.events
                    .push_back(UplinkEvent::UpstreamReceipts(receipts));
            }
            Message::Feedback { batch, problems } => {
                self.events
                    .push_back(UplinkEvent::Feedback { batch, problems });
            }
            Message::Findings { batch, findings } => {
                self.events
                    .push_back(UplinkEvent::Findings { batch, findings });
            }
            Message::Ping { nonce } => self.transmit.push_back(Message::Pong { nonce }),
            Message::Pong { .. } => {}
            Message::Goodbye { .. } => self.handle_disconnected(),
            Message::Offer { .. } => return Err(ProtocolError::Unexpected("Offer")),
            Message::UpstreamStored { .. } => {
                return Err(ProtocolError::Unexpected("UpstreamStored"));
            }
            Message::Batch(_) => return Err(ProtocolError::Unexpected("Batch")),
            Message::Forwarded { .. } => return Err(ProtocolError::Unexpected("Forwarded")),
            Message::Reconcile { .. }
            | Message::ReconcileReply { .. }
            | Message::ReconcileDone { .. }
            | Message::ReconcileAsk => {}
        }
        let _ = now_ms;
        Ok(())
    }

    fn handle_receipt(
        &mut self,
        receipt: SignedReceipt,
        verifier: &dyn Verifier,
    ) -> Result<(), ProtocolError> {
        let batch = receipt.receipt.batch;
        if receipt.receipt.receiver != self.parent {
            return Err(ProtocolError::WrongReceiver {
                peer: self.parent,
                named: receipt.receipt.receiver,
                batch,
            });
        }
        if !receipt.verify_with(&self.parent_key, verifier) {
            return Err(ProtocolError::BadReceiptSignature {
                peer: self.parent,
                batch,
            });
        }
        if self.pending.remove(&batch).is_some() {
            self.in_flight.remove(&batch);
            self.wanted.retain(|id| *id != batch);
            self.sends.retain(|id| *id != batch);
            self.events.push_back(UplinkEvent::Receipt(receipt));
        }
        Ok(())
    }

    fn fill_window(&mut self) {
        while self.in_flight.len() < self.config.window {
            let Some(id) = self.wanted.pop_front() else {
                break;
            };
            if let Some((_, stage)) = self.pending.get_mut(&id)
                && *stage == Stage::Wanted
            {
                *stage = Stage::Sending;
                self.in_flight.insert(id);
                self.sends.push_back(id);
            }
        }
    }

    /// The driver stored relayed receipts: tell the parent so it stops relaying them.
    pub fn handle_upstream_stored(&mut self, done: Vec<(BatchId, NodeId)>) {
        for chunk in done.chunks(IDS_PER_FRAME_MAX) {
            self.transmit.push_back(Message::UpstreamStored {
                done: chunk.to_vec(),
            });
        }
    }

    /// The batch's stream was written and finished.
    pub fn handle_batch_sent(&mut self, id: BatchId, now_ms: u64) {
        if let Some((_, stage)) = self.pending.get_mut(&id)
            && *stage == Stage::Sending
        {
            *stage = Stage::AwaitingReceipt { at_ms: now_ms };
        }
    }

    /// The batch could not be sent (stream error, or the batch could not be read back from the
    /// store); it is offered again after `retry_ms`. Waiting, rather than offering at once,
    /// keeps a batch that fails every time (say, corrupt on disk) from spinning.
    pub fn handle_send_failed(&mut self, id: BatchId, now_ms: u64) {
        if let Some((_, stage)) = self.pending.get_mut(&id) {
            *stage = Stage::Offered { at_ms: now_ms };
        }
        self.in_flight.remove(&id);
        self.fill_window();
    }

    pub fn handle_timeout(&mut self, now_ms: u64) {
        let mut expired = Vec::new();
        for (id, (_, stage)) in &mut self.pending {
            let since = match *stage {
                Stage::Offered { at_ms } | Stage::AwaitingReceipt { at_ms } => at_ms,
                _ => continue,
            };
            if now_ms.saturating_sub(since) >= self.config.retry_ms {
                *stage = Stage::Queued;
                self.in_flight.remove(id);
                expired.push(*id);
            }
        }
        if self.connected {
            self.offer(expired, now_ms);
            self.fill_window();
        }
    }

    /// When [`Uplink::handle_timeout`] should next be called, if ever.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.pending
            .values()
            .filter_map(|(_, stage)| match stage {
                Stage::Offered { at_ms } | Stage::AwaitingReceipt { at_ms } => {
                    Some(at_ms + self.config.retry_ms)
                }
                _ => None,
            })
            .min()
    }

    pub fn poll_transmit(&mut self) -> Option<Message> {
        self.transmit.pop_front()
    }

    /// The next batch to send on a stream of its own.
    pub fn poll_send(&mut self) -> Option<BatchId> {
        self.sends.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<UplinkEvent> {
        self.events.pop_front()
    }
}

/// The parent's side of a link to one child.
#[derive(Debug)]
pub struct Downlink {
    child: NodeId,
    wanted: BTreeSet<BatchId>,
    receipts: VecDeque<SignedReceipt>,
    transmit: VecDeque<Message>,
    events: VecDeque<DownlinkEvent>,
    /// Receipts of recently refused batches: refused batches are not stored, so without these
    /// a late duplicate offer would be wanted again, and never sent, forever.
    recent_refusals: VecDeque<SignedReceipt>,
}

/// Something the downlink's driver must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownlinkEvent {
    /// The child stored these relayed receipts: forget them.
    RelayStored(Vec<(BatchId, NodeId)>),
}

impl Downlink {
    pub fn new(child: NodeId) -> Downlink {
        Downlink {
            child,
            wanted: BTreeSet::new(),
            receipts: VecDeque::new(),
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            recent_refusals: VecDeque::new(),
        }
    }

    pub fn poll_event(&mut self) -> Option<DownlinkEvent> {
        self.events.pop_front()
    }

    pub fn child(&self) -> NodeId {
        self.child
    }

    /// A control message from the child. `held` answers, from the store, the receipt this
    /// node gave for a batch it already holds.
    pub fn handle_message(
        &mut self,
        message: Message,
        held: impl Fn(&BatchId) -> Option<SignedReceipt>,
    ) -> Result<(), ProtocolError> {
        match message {
            Message::Hello { node, .. } => {
                if node != self.child {
                    return Err(ProtocolError::WrongHello {
                        peer: self.child,
                        claimed: node,
                    });
                }
            }
            Message::Offer { offers } => {
                let mut want = Vec::new();
                for offer in offers {
                    let refused = || {
                        self.recent_refusals
                            .iter()
                            .find(|r| r.receipt.batch == offer.id)
                            .cloned()
                    };
                    if let Some(receipt) = held(&offer.id).or_else(refused) {
                        // Already held: the receipt is the answer; re-sending would be a no-op.
                        self.receipts.push_back(receipt);
                    } else if self.wanted.contains(&offer.id) {
                        // Asked for already; the child re-offers after a loss: ask again.
                        want.push(offer.id);
                    } else if self.wanted.len() < WANTED_MAX {
                        self.wanted.insert(offer.id);
                        want.push(offer.id);
                    }
                    // Beyond WANTED_MAX the child offers again after its retry interval.
                }
                for chunk in want.chunks(IDS_PER_FRAME_MAX) {
                    self.transmit.push_back(Message::Want {
                        ids: chunk.to_vec(),
                    });
                }
            }
            Message::UpstreamStored { done } => {
                self.events.push_back(DownlinkEvent::RelayStored(done))
            }
            Message::Ping { nonce } => self.transmit.push_back(Message::Pong { nonce }),
            Message::Pong { .. } | Message::Goodbye { .. } => {}
            Message::Reconcile { .. }
            | Message::ReconcileReply { .. }
            | Message::ReconcileDone { .. }
            | Message::ReconcileAsk => {}
            Message::Want { .. } => return Err(ProtocolError::Unexpected("Want")),
            Message::Receipts { .. } | Message::UpstreamReceipts { .. } => {
                return Err(ProtocolError::Unexpected("Receipts"));
            }
            Message::Feedback { .. } => return Err(ProtocolError::Unexpected("Feedback")),
            Message::Findings { .. } => return Err(ProtocolError::Unexpected("Findings")),
            Message::Batch(_) | Message::Forwarded { .. } => {
                return Err(ProtocolError::Unexpected("Batch on the control stream"));
            }
        }
        Ok(())
    }

    /// A batch arrived on its own stream (wanted or not: re-sending is always safe).
    pub fn handle_batch_arrived(&mut self, id: &BatchId) {
        self.wanted.remove(id);
    }

    /// The driver stored the batch durably (or refused it) and signed this receipt; for an
    /// accepted batch of the child's own, `findings` are its audit findings (sent before the
    /// receipt, so the child holds them when the receipt comes).
    pub fn handle_decided(
        &mut self,
        receipt: SignedReceipt,
        problems: Vec<Problem>,
        findings: Option<Vec<crate::audit::Finding>>,
    ) {
        if let Some(findings) = findings {
            self.transmit.push_back(Message::Findings {
                batch: receipt.receipt.batch,
                findings,
            });
        }
        if matches!(receipt.receipt.verdict, Verdict::Rejected { .. }) {
            if self.recent_refusals.len() == RECENT_REFUSALS_MAX {
                self.recent_refusals.pop_front();
            }
            self.recent_refusals.push_back(receipt.clone());
        }
        if !problems.is_empty() {
            self.transmit.push_back(Message::Feedback {
                batch: receipt.receipt.batch,
                problems,
            });
        }
        self.receipts.push_back(receipt);
    }

    /// Receipts from further up for batches this child sent, to relay down.
    pub fn handle_upstream_receipts(&mut self, receipts: Vec<SignedReceipt>) {
        for chunk in receipts.chunks(IDS_PER_FRAME_MAX) {
            self.transmit.push_back(Message::UpstreamReceipts {
                receipts: chunk.to_vec(),
            });
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Message> {
        if let Some(message) = self.transmit.pop_front() {
            return Some(message);
        }
        if self.receipts.is_empty() {
            return None;
        }
        let take = self.receipts.len().min(IDS_PER_FRAME_MAX);
        Some(Message::Receipts {
            receipts: self.receipts.drain(..take).collect(),
        })
    }
}

/// Why a received batch was refused (the verdict's reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("origin {0} is not in this node's topology or not below the sending child")]
    UnknownOrigin(NodeId),
    /// An operator submitted a batch another node made.
    #[error(
        "this batch's origin is {origin}, not this node ({me}): a node submits only the batches it makes (its own origin, signed with its own key); submit it at node {origin}"
    )]
    NotOwnOrigin { origin: NodeId, me: NodeId },
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error("category {0} is not known to this node: upgrade it")]
    UnknownCategory(String),
    #[error("schema version {got} of {category} is not this node's version {have}")]
    SchemaVersion {
        category: String,
        got: u32,
        have: u32,
    },
    #[error("{count} record(s) fail the {category} schema (see the feedback)")]
    Records { category: String, count: usize },
    #[error(
        "{count} record(s) of {category} break an audit rule of error severity (see the feedback): correct them and submit again"
    )]
    Audit { category: String, count: usize },
    #[error("manifest refused: {0}")]
    Manifest(String),
    #[error("progress report refused: {0}")]
    Progress(String),
    #[error(
        "progress report from {0}, which is not a provincial node here: only a province sends progress reports (工作通报)"
    )]
    NotProvince(NodeId),
    #[error("a manifest or progress report was given where a data batch was expected")]
    NotData,
    #[error(
        "{count} record(s) of {category} carry {fields}, outside the topology's minimum-necessary profile (最小必要) for {category}: the origin must leave them out — bring it to this topology version and submit the data again"
    )]
    NotInProfile {
        category: String,
        fields: String,
        count: usize,
    },
}

impl Rejection {
    pub fn verdict(&self) -> Verdict {
        Verdict::Rejected {
            reason: self.to_string(),
        }
    }
}

/// Checks that no record of `batch` carries a value in a field `allows` keeps from travelling
/// upstream (the topology's minimum-necessary profile for its category). On failure, a
/// problem per record and field (at most [`REJECTION_PROBLEMS_MAX`]) names the field.
pub fn check_profile(
    batch: &Batch,
    schema: &crate::schema::Schema,
    allows: impl Fn(&str) -> bool,
) -> Result<(), (Rejection, Vec<Problem>)> {
    let outside: Vec<usize> = (0..schema.fields.len())
        .filter(|&i| !allows(&schema.fields[i].name))
        .collect();
    if outside.is_empty() {
        return Ok(());
    }
    let mut problems = Vec::new();
    let mut fields = BTreeSet::new();
    let mut count = 0;
    for record in &batch.records {
        let mut carries = false;
        for &i in &outside {
            if matches!(
                record.values.get(i),
                None | Some(crate::record::Value::Absent)
            ) {
                continue;
            }
            carries = true;
            let field = &schema.fields[i];
            fields.insert(field.name.as_str());
            if problems.len() < REJECTION_PROBLEMS_MAX {
                problems.push(Problem {
                    field: field.name.clone(),
                    label: field.label.clone(),
                    // The value itself is what must not travel: it is not echoed.
                    value: String::new(),
                    rule: crate::record::Rule::NotInProfile,
                    severity: crate::record::Severity::Error,
                    message: format!(
                        "record {}: {} ({}) is outside the minimum-necessary profile of {}: leave it out",
                        record.key, field.label, field.name, schema.category
                    ),
                });
            }
        }
        count += usize::from(carries);
    }
    if count == 0 {
        return Ok(());
    }
    Err((
        Rejection::NotInProfile {
            category: schema.category.to_string(),
            fields: fields.into_iter().collect::<Vec<_>>().join(", "),
            count,
        },
        problems,
    ))
}

/// What a receiver checks before it stores a batch: hash against id, the origin's signature
/// under its pinned key, canonical form, and every record against its schema. On a record
/// failure, the problems (at most [`REJECTION_PROBLEMS_MAX`]) are returned for feedback.
pub fn verify_incoming(
    signed: &SignedBatch,
    origin_key: impl Fn(NodeId) -> Option<PublicKey>,
    registry: &Registry,
) -> Result<Batch, (Rejection, Vec<Problem>)> {
    verify_incoming_with(signed, origin_key, registry, &Ed25519)
}

/// [`verify_incoming`], checking the origin's signature through `verifier`. Data batches
/// only: a manifest is refused (see [`verify_content_with`]).
pub fn verify_incoming_with(
    signed: &SignedBatch,
    origin_key: impl Fn(NodeId) -> Option<PublicKey>,
    registry: &Registry,
    verifier: &dyn Verifier,
) -> Result<Batch, (Rejection, Vec<Problem>)> {
    match verify_content_with(signed, origin_key, registry, verifier)? {
        Content::Data(batch) => Ok(batch),
        Content::Manifest(_) | Content::Progress(_) => Err((Rejection::NotData, Vec::new())),
    }
}

/// What a receiver checks before it stores a batch, a manifest or a progress report: hash
/// against id, the origin's signature under its pinned key, canonical form, a known category,
/// and for data every record against its schema. (That a progress report's origin is a
/// province is the node core's check: it needs the topology.)
pub fn verify_content_with(
    signed: &SignedBatch,
    origin_key: impl Fn(NodeId) -> Option<PublicKey>,
    registry: &Registry,
    verifier: &dyn Verifier,
) -> Result<Content, (Rejection, Vec<Problem>)> {
    verify_decoded_with(signed, origin_key, verifier, || {
        decode_content(signed, registry)
    })
}

/// [`verify_content_with`] with the content's checks given as `decoded`, the result of
/// [`decode_content`] over the same batch (computed beforehand, or on demand): hash, origin
/// and signature are checked first, in the same order, so the outcome is the same.
pub fn verify_decoded_with(
    signed: &SignedBatch,
    origin_key: impl Fn(NodeId) -> Option<PublicKey>,
    verifier: &dyn Verifier,
    decoded: impl FnOnce() -> Result<Content, (Rejection, Vec<Problem>)>,
) -> Result<Content, (Rejection, Vec<Problem>)> {
    // The hash first: bytes that are not the batch the id names say nothing about that batch
    // (they were damaged on the way), and the caller must be able to tell that apart.
    signed
        .verify_hash()
        .map_err(|e| (Rejection::Verify(e), Vec::new()))?;
    let summary = signed
        .summary()
        .map_err(|e| (Rejection::Verify(VerifyError::Decode(e)), Vec::new()))?;
    let key =
        origin_key(summary.origin).ok_or((Rejection::UnknownOrigin(summary.origin), Vec::new()))?;
    signed
        .verify_signature_with(&key, verifier)
        .map_err(|e| (Rejection::Verify(e), Vec::new()))?;
    decoded()
}

/// The checks of [`verify_content_with`] that need no key and no state: the content decoded
/// (canonical form), a known category and schema version, and for data every record against
/// its schema. Most of a receiver's verification (all but the hash and the signature), and
/// pure: a receiver may run it before it takes its core's lock, beside other batches. Says
/// nothing about who signed: only [`verify_decoded_with`] makes its result a verdict.
pub fn decode_content(
    signed: &SignedBatch,
    registry: &Registry,
) -> Result<Content, (Rejection, Vec<Problem>)> {
    let summary = signed
        .summary()
        .map_err(|e| (Rejection::Verify(VerifyError::Decode(e)), Vec::new()))?;
    if summary.kind == ContentKind::Progress {
        let report = ProgressReport::decode(&signed.bytes)
            .map_err(|e| (Rejection::Progress(e.to_string()), Vec::new()))?;
        return Ok(Content::Progress(report));
    }
    if summary.is_manifest() {
        let manifest = Manifest::decode(&signed.bytes)
            .map_err(|e| (Rejection::Manifest(e.to_string()), Vec::new()))?;
        if registry.get(&manifest.category).is_none() {
            return Err((
                Rejection::UnknownCategory(manifest.category.to_string()),
                Vec::new(),
            ));
        }
        return Ok(Content::Manifest(manifest));
    }
    // Each record is checked as soon as it is decoded, while it is in the cache; the header
    // (decoded before any record) gives the schema.
    let mut schema: Option<Result<&Schema, Rejection>> = None;
    let mut problems = Vec::new();
    let mut count = 0;
    let decoded = Batch::decode_each(&signed.bytes, |header, record| {
        let schema = schema.get_or_insert_with(|| schema_of(registry, header));
        let Ok(schema) = schema else {
            return;
        };
        let found = schema.check_read(record, header.period);
        if !found.is_empty() {
            count += 1;
            for mut problem in found {
                if problems.len() < REJECTION_PROBLEMS_MAX {
                    problem.message = format!("record {}: {}", record.key, problem.message);
                    problems.push(problem);
                }
            }
        }
    });
    let batch = decoded.map_err(|e| (Rejection::Verify(VerifyError::Decode(e)), Vec::new()))?;
    // A batch of withdrawals alone has no record to have asked for its schema.
    if let Err(rejection) = schema.unwrap_or_else(|| schema_of(registry, &batch.header)) {
        return Err((rejection, Vec::new()));
    }
    if count > 0 {
        let category = batch.header.category.to_string();
        return Err((Rejection::Records { category, count }, problems));
    }
    Ok(Content::Data(batch))
}

/// The schema a data batch's header names, if this registry has it at that version.
fn schema_of<'r>(registry: &'r Registry, header: &BatchHeader) -> Result<&'r Schema, Rejection> {
    let schema = registry
        .get(&header.category)
        .ok_or_else(|| Rejection::UnknownCategory(header.category.to_string()))?;
    if schema.version != header.schema_version {
        return Err(Rejection::SchemaVersion {
            category: header.category.to_string(),
            got: header.schema_version,
            have: schema.version,
        });
    }
    Ok(schema)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{BATCH_FORMAT, NodeKey};
    use crate::ids::{Category, Period, PersonToken};
    use crate::record::{Record, RecordKey, Subject, Value};

    /// A water-fee batch of `bad` records with one value each (the schema has many), under
    /// schema version `version`.
    fn signed(category: &str, version: u32, bad: usize) -> SignedBatch {
        let header = BatchHeader {
            format: BATCH_FORMAT,
            origin: NodeId::parse("445281").unwrap(),
            category: Category::parse(category).unwrap(),
            schema_version: version,
            period: Period::parse("2022-05").unwrap(),
            supersedes: None,
            withdrawals: Vec::new(),
        };
        let records = (0..bad)
            .map(|i| Record {
                key: RecordKey(format!("K{i}")),
                subject: Subject::Person(PersonToken([1; 16])),
                values: vec![Value::Absent],
            })
            .collect();
        let batch = Batch::new(header, records).unwrap();
        SignedBatch::seal(&batch, &NodeKey::from_seed([3; 32])).unwrap()
    }

    /// Records are checked as they are decoded, and the header's schema is judged first: an
    /// unknown category or schema version is the reason (with no record problems), whatever
    /// the records; then every bad record counts, its problems named by its key.
    #[test]
    fn the_schema_is_judged_before_the_records_checked_as_they_are_decoded() {
        let registry = Registry::builtin();
        let version = registry.by_name("water_fee").unwrap().version;
        assert_eq!(
            decode_content(&signed("water_fee", version + 1, 3), registry),
            Err((
                Rejection::SchemaVersion {
                    category: "water_fee".into(),
                    got: version + 1,
                    have: version
                },
                Vec::new()
            ))
        );
        assert_eq!(
            decode_content(&signed("no_such_fee", 1, 3), registry),
            Err((Rejection::UnknownCategory("no_such_fee".into()), Vec::new()))
        );
        let (rejection, problems) = decode_content(&signed("water_fee", version, 3), registry)
            .expect_err("records with one value each");
        assert_eq!(
            rejection,
            Rejection::Records {
                category: "water_fee".into(),
                count: 3
            }
        );
        let named: Vec<&str> = problems
            .iter()
            .map(|p| p.message.split(':').next().unwrap())
            .collect();
        assert_eq!(named, ["record K0", "record K1", "record K2"]);
    }
}
