//! The node core: every decision of one node, as a sans-IO state machine in the manner of
//! `quinn-proto`, one level above `protocol::sync` (which stays the machine of one link).
//!
//! Inputs are `handle_*` calls (a link came up or went down, a control frame or a batch
//! arrived on a link, a batch was sent, the store reported writes durable, a topology was
//! loaded, a timer fired, the operator submitted a batch); outputs are [`Output`]s drained
//! with [`Core::poll_output`] (dial a peer, send a frame, send a batch on a stream of its own,
//! close a link, make the store durable up to a write). Time arrives as [`Now`]: monotonic
//! milliseconds for every window, retry and backoff, wall milliseconds only for stamps.
//!
//! The core owns: routing by migration phase (parent, legacy link), the subtree rule for
//! forwarded batches, the receive decision (held → the stored receipt; else verify → store →
//! receipt), trust checks on relayed receipts, relay and its acknowledgement, feedback
//! matching, reload acceptance, closing links after a re-key, and the migration machine.
//!
//! **Invariant: nothing is acknowledged to a peer before it is durable here.** Every receipt
//! and every `UpstreamStored` is created as a [`Deferred`] tagged with the store write that
//! holds what it acknowledges, and reaches a link only from [`Core::handle_durable`], when the
//! store has reported that write durable. There is no other path to a link.
//!
//! **Invariant: no IO.** No tokio, quinn, sled, files, clocks or OS randomness here: the store
//! is the [`Kv`] seam, signatures the [`Signer`]/[`Verifier`] seams. A test reads this
//! directory's source to keep it so.

pub mod keys;
pub mod ledger;
pub mod migration;
pub mod progress;
mod quality;
pub mod reconcile;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;

use protocol::audit::Finding;
use protocol::batch::VerifyError;
use protocol::ids::{BatchId, NodeId};
use protocol::reconcile::{Initiator, Outcome, Responder, Step};
use protocol::record::{Problem, Severity};
use protocol::sync::{
    Downlink, DownlinkEvent, ProtocolError, Rejection, SyncConfig, Uplink, UplinkEvent,
    decode_content, verify_decoded_with,
};
use protocol::wire::{
    self, Message, Receipt, ReconcileKind, ReconcileScope, SignedReceipt, Verdict,
};
use protocol::{
    Category, Content, ContentKind, Manifest, ManifestEntry, Period, PublicKey, Registry,
    SignedBatch, Signer, Verifier,
};
use topology::{KeyState, Topology};
use tracing::{debug, error, info, warn};

use crate::store::{AuditEvent, Kv, QualityUpdate, Store, StoreError};
use migration::{Migration, Observed, Phase};

/// Outbox entries read from the store per page.
const OUTBOX_PAGE: usize = 1024;
/// Relayed receipts sent down per wake-up.
const RELAY_PAGE: usize = 1024;
/// Most receipts a downlink remembers having relayed on one connection.
const RELAYED_MAX: usize = 65_536;
/// How often assessments are checked against the clock (expiry is a matter of days).
const ADMISSION_CHECK_MS: u64 = 60_000;
/// How long an uplink must stay up for its redial backoff to start again from the minimum.
const STABLE_LINK_MS: u64 = 30_000;
/// How long a failed sync waits before it is tried again.
const SYNC_RETRY_MS: u64 = 1_000;
/// How long a reconciliation session waits for the parent's reply before it is dropped.
const RECONCILE_ROUND_MS: u64 = 30_000;
/// Finished sessions kept per uplink for the operator.
const RECONCILED_KEPT: usize = 64;
/// Send times remembered per uplink for the receipt latency (a batch is remembered from its
/// stream's end until its receipt or the link's end; the window keeps far fewer in flight).
const SENT_TIMES_MAX: usize = 4096;
/// The state name under which the migration phase is kept.
const MIGRATION_STATE: &str = "migration_phase";

/// The time as the core sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Now {
    /// Monotonic milliseconds (since the node started): windows, retries, backoff.
    pub mono_ms: u64,
    /// Unix milliseconds: stamps in receipts and the audit log only.
    pub wall_ms: u64,
}

/// What the stateless checks of a received batch found ([`decode_content`]).
type Decoded = Result<Content, (Rejection, Vec<Problem>)>;

#[doc(hidden)]
pub use quality::Prepared;

/// A received or submitted batch with the checks that need no key and no state already
/// run: its content decoded in canonical form and, for data, every record checked against
/// its schema — all of a receiver's verification but the hash and the signature (measured:
/// 97 % of it). Made outside the core's lock, so a node's cores share its receiving: the
/// runtime makes it on a blocking thread while the core handles another batch. Only [`Core::handle_prechecked`]
/// and [`Core::submit_prechecked`] read it, and they check the hash and the signature first,
/// so holding one proves nothing.
/// The checks now run even for a batch whose signature will fail: a child can make its
/// parent decode that much anyway, with batches it signs itself, and the frame budget and
/// the decoder's limit bound both alike.
///
/// For a data batch that withdraws nothing it also holds what the record index takes from the
/// batch alone ([`quality::prepare`]: the keys to read, what the records add to the audit's
/// aggregates, grouped and ordered, each record's index entry), so that this share of the
/// index's work is done outside the lock too: the city's core held each batch of the sync
/// bench's hop 27–32 ms before, 17–23 ms after (alternating runs, 2026-12-05).
pub struct Prechecked {
    signed: SignedBatch,
    registry: &'static Registry,
    checked: Checked,
}

/// What was found of a batch before the core's lock: its checks' result and, for a data
/// batch that may take the record index's common path, what that path takes from it alone.
struct Checked {
    decoded: Decoded,
    prepared: Option<quality::Prepared>,
}

/// The most records a data batch may have for the record index's part to be prepared
/// before the core's lock ([`Prechecked`]); the core prepares a larger one itself, under the
/// lock. What is prepared takes ~500 bytes a water-fee record beside the ~1,600 the decoded
/// record takes: this bounds it to ~25 MB a batch, ~50 MB for the two a node checks at once,
/// where batches at the 64 MiB cap would take ~110 MB each. 50,000 is `credit-node ingest`'s
/// default batch size.
pub const PREPARED_RECORDS_MAX: usize = 50_000;

impl Prechecked {
    /// Runs the stateless checks on `signed` under the built-in registry (the core's).
    pub fn new(signed: SignedBatch) -> Prechecked {
        Prechecked::preparing_up_to(signed, PREPARED_RECORDS_MAX)
    }

    /// [`Prechecked::new`], preparing the record index's part for a data batch of at most
    /// `records` records.
    fn preparing_up_to(signed: SignedBatch, records: usize) -> Prechecked {
        let registry = Registry::builtin();
        let decoded = decode_content(&signed, registry);
        let prepared = match &decoded {
            Ok(Content::Data(batch)) if batch.records.len() <= records => {
                quality::prepare(registry, signed.id, batch)
            }
            _ => None,
        };
        Prechecked {
            signed,
            registry,
            checked: Checked { decoded, prepared },
        }
    }

    /// The batch, and what was found of it if under `registry` (the core's; checked under
    /// another, which never happens today, the checks run again).
    fn into_parts(self, registry: &Registry) -> (SignedBatch, Option<Checked>) {
        let checked = std::ptr::eq(self.registry, registry).then_some(self.checked);
        (self.signed, checked)
    }
}

/// The checks' result, and what was prepared for the record index, of a batch checked before
/// the core's lock (`None`: checked now, nothing prepared).
fn split(checked: Option<Checked>) -> (Option<Decoded>, Option<quality::Prepared>) {
    match checked {
        Some(Checked { decoded, prepared }) => (Some(decoded), prepared),
        None => (None, None),
    }
}

/// What the core is done with after storing a batch: its decoded records and what it wrote
/// to the record index, for the caller to drop once it has released the core. Freeing a batch
/// of 10,000 records (some 200,000 allocations) took 6–10 ms, about a tenth of the core's
/// time per batch on a receiving node, which takes batches one at a time; its index update
/// (~2 MB of writes and the 10,000 keys it made current) ~0.5 ms more.
#[derive(Debug, Default)]
pub struct Spent {
    content: Option<Content>,
    update: Option<QualityUpdate>,
}

impl Spent {
    fn of(content: Content, update: Option<QualityUpdate>) -> Spent {
        Spent {
            content: Some(content),
            update,
        }
    }

    /// The records it holds (none when the batch was not stored, or holds none).
    pub fn records(&self) -> u32 {
        self.content.as_ref().map_or(0, Content::records)
    }

    /// The keys the stored batch made current in the record index (none when it was not
    /// stored, or is not a data batch).
    pub fn current_keys(&self) -> usize {
        self.update
            .as_ref()
            .map_or(0, |update| update.current.len())
    }
}

/// The stateless checks' result for `signed`: as prechecked, or run now.
fn content_checks(decoded: Option<Decoded>, signed: &SignedBatch, registry: &Registry) -> Decoded {
    decoded.unwrap_or_else(|| decode_content(signed, registry))
}

/// Where the core's time comes from: the system clock in production, virtual time in
/// simulation.
pub trait Clock: Send + Sync {
    fn now(&self) -> Now;
}

/// A connection to a peer, named by the runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkId(pub u64);

/// An uplink: to the parent in the hierarchy, or the legacy direct link to the national
/// platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Route {
    Parent,
    Legacy,
}

impl Route {
    pub const ALL: [Route; 2] = [Route::Parent, Route::Legacy];

    fn index(self) -> usize {
        match self {
            Route::Parent => 0,
            Route::Legacy => 1,
        }
    }

    /// The direction name in link status.
    pub fn direction(self) -> &'static str {
        match self {
            Route::Parent => "up",
            Route::Legacy => "legacy",
        }
    }
}

/// What the runtime must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Dial `peer` at `address`, pinned to `key`; report [`Core::handle_link_up`] with
    /// [`LinkKind::Up`] on success (the control stream open), [`Core::handle_dial_failed`]
    /// otherwise.
    Dial {
        route: Route,
        peer: NodeId,
        address: SocketAddr,
        key: PublicKey,
    },
    /// Send a frame on the link's control stream.
    Transmit { link: LinkId, message: Message },
    /// Send a stored batch on a stream of its own (as [`Message::Forwarded`] with
    /// `first_receipt` when given, else as [`Message::Batch`]); report
    /// [`Core::handle_batch_sent`].
    SendBatch {
        link: LinkId,
        id: BatchId,
        first_receipt: Option<SignedReceipt>,
    },
    /// Close the link; report [`Core::handle_link_down`] when it is gone.
    Close { link: LinkId, reason: String },
    /// Make every store write up to `upto` durable; report [`Core::handle_durable`] (or
    /// [`Core::handle_sync_failed`]).
    Sync { upto: u64 },
}

/// Which side of a link a new connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// This node dialed a route's peer.
    Up(Route),
    /// A peer dialed this node, proving it holds `key`.
    Down { key: PublicKey },
}

/// Something acknowledged to a peer, held until the write it acknowledges is durable.
#[derive(Debug, Clone)]
enum Deferred {
    /// This node's receipt for a batch (accepted: the batch is durable; refused: the refusal
    /// is in the audit log).
    Receipt {
        link: LinkId,
        receipt: SignedReceipt,
        problems: Vec<Problem>,
        /// Audit findings for the batch's origin, when the link is to the origin itself.
        findings: Option<Vec<Finding>>,
    },
    /// Relayed receipts this node stored, acknowledged to the parent.
    UpstreamStored {
        link: LinkId,
        done: Vec<(BatchId, NodeId)>,
    },
}

/// Bugs planted on purpose behind a test-only switch, to show the simulator catches them.
#[cfg(feature = "planted-bugs")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlantedBug {
    /// A receipt leaves before the store write holding its batch is durable.
    ReceiptBeforeDurable,
    /// A forwarded batch is stored without checking its origin's signature.
    SkipOriginSignature,
    /// A batch leaves the outbox when it is sent, before its receipt is stored.
    DropOutboxOnSend,
    /// A relayed proof of first arrival is trusted without checking its signature.
    TrustFirstReceipt,
    /// An operator's submission is taken without checking its signature.
    SkipSubmitSignature,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoreConfig {
    pub sync: SyncConfig,
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
    /// How often an uplink reconciles with its parent (besides when it comes up and on
    /// demand).
    pub reconcile_every_ms: u64,
    #[cfg(feature = "planted-bugs")]
    pub planted: Option<PlantedBug>,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            sync: SyncConfig::default(),
            backoff_min_ms: 100,
            backoff_max_ms: 5_000,
            reconcile_every_ms: 3_600_000,
            #[cfg(feature = "planted-bugs")]
            planted: None,
        }
    }
}

/// What the operator sees of one link. The counts are since this node started (the
/// Prometheus endpoint exports them as counters, which may start again from zero).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LinkStatus {
    pub peer: String,
    /// `up` (the parent), `legacy` (the legacy direct link) or `down` (a child).
    pub direction: &'static str,
    pub connected: bool,
    /// Wall time of the last change.
    pub since_ms: u64,
    pub last_error: Option<String>,
    pub pending: usize,
    pub in_flight: usize,
    /// Batches of this node's outbox the peer receipted (each batch once, whatever its
    /// verdict), and their bytes.
    pub batches_sent: u64,
    pub bytes_sent: u64,
    /// Batches that arrived on the link's batch streams (each arrival, duplicates and batches
    /// refused included), and their bytes.
    pub batches_received: u64,
    pub bytes_received: u64,
    /// Batches from this child that this node refused (or quarantined, or found damaged), by
    /// [`refusal_reason`].
    pub refused: BTreeMap<&'static str, u64>,
    /// Reconciliation sessions finished on the link; message rounds; items found on one side
    /// only (on a child's link: the items the child reported lacking).
    pub reconcile_sessions: u64,
    pub reconcile_rounds: u64,
    pub reconcile_differences: u64,
    /// Wall time the last batch arrived on this link (a link to a child).
    pub last_batch_ms: Option<u64>,
}

/// Why the core could not do what an input asked. The link stays as it was unless said.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("batch {id} refused: {reason}")]
    Refused { id: BatchId, reason: String },
    #[error(
        "this node ({node}) is a {role}: only a provincial node makes progress reports (工作通报); run `credit-node progress send` at the province"
    )]
    NotProvince { node: NodeId, role: String },
    #[error("progress report not made: {0}")]
    Progress(protocol::progress::ProgressError),
}

/// Why a topology was not applied; the node keeps the one it had.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("node {0} is not in the new topology; keeping the old one")]
    NotInTopology(NodeId),
    #[error("the key pinned for {0} is not this node's key; keeping the old one")]
    NotMyKey(NodeId),
    #[error("refused by the planner: {refusal}; keeping version {kept}")]
    Planner { refusal: String, kept: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A submitted batch, accepted: durable once [`Core::durable_seq`] reaches `durable_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    pub new: bool,
    pub durable_at: u64,
    /// Its records this node had published already in a batch it does not correct.
    pub republished: Republished,
}

/// The records of a submitted batch that this node published before in another batch, with
/// neither batch superseding the other: each is then published twice, and the version in the
/// batch with the higher id is current — so a changed record sent again instead of as a
/// correction (`credit-node correct`) may change nothing. The operator is told at once; the
/// parent's audit reports it too (rule `republished`), but only on the version that is
/// current.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Republished {
    pub records: u64,
    /// Of those, how many keep the other batch's version as the current one.
    pub not_current: u64,
    /// The first such record, and the other batch that publishes it.
    pub first: Option<(protocol::RecordKey, BatchId)>,
}

#[derive(Debug, Default)]
struct UplinkSlot {
    machine: Option<Uplink>,
    link: Option<LinkId>,
    /// The peer answered with its Hello: it accepted this node. Only then is the path up.
    established: bool,
    dialing: bool,
    next_dial_ms: u64,
    backoff_ms: u64,
    up_since_ms: Option<u64>,
    feedback: HashMap<BatchId, Vec<Problem>>,
    /// The parent's audit findings on own batches, kept until their receipts come.
    findings: HashMap<BatchId, Vec<Finding>>,
    /// Reconciliation sessions still to run on this link, the one running, when the next
    /// periodic round is due, and the last sessions finished.
    reconcile_queue: VecDeque<ReconcileScope>,
    reconciling: Option<Reconciling>,
    next_reconcile_ms: u64,
    reconciled: Vec<ReconcileSummary>,
    /// When each batch's stream was finished on this connection (monotonic), until its
    /// receipt: the receipt latency.
    sent_at_ms: HashMap<BatchId, u64>,
}

/// A reconciliation session this node started.
struct Reconciling {
    session: u64,
    scope: ReconcileScope,
    initiator: Initiator,
    deadline_ms: u64,
}

impl std::fmt::Debug for Reconciling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciling")
            .field("session", &self.session)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// What one finished reconciliation session found, for the operator.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReconcileSummary {
    #[serde(serialize_with = "ledger::as_text")]
    pub peer: NodeId,
    pub year: u16,
    pub receipts: bool,
    /// Batches queued again for the parent (it lacked them).
    pub reoffered: usize,
    /// Items the parent holds that this node lacks.
    pub parent_only: usize,
    pub rounds: u32,
    pub at_ms: u64,
}

#[derive(Debug)]
struct DownlinkSlot {
    machine: Downlink,
    key: PublicKey,
    relayed: HashSet<(BatchId, NodeId)>,
    /// The child's reconciliation session this node answers.
    responding: Option<(u64, ReconcileScope, Responder)>,
}

/// One node's decisions.
pub struct Core<K: Kv> {
    me: NodeId,
    signer: Box<dyn Signer + Send>,
    verifier: Box<dyn Verifier + Send>,
    registry: &'static Registry,
    topology: Arc<Topology>,
    store: Store<K>,
    config: CoreConfig,
    uplinks: [UplinkSlot; 2],
    downlinks: BTreeMap<LinkId, DownlinkSlot>,
    /// Which route each uplink connection serves.
    uplink_links: BTreeMap<LinkId, Route>,
    migration: Option<Migration>,
    migration_dirty: bool,
    /// The migration deadline last handled: once passed, a window that has run out waits for
    /// the receipts it still needs, not for time (re-arming it would spin the timer).
    migration_deadline_handled: Option<u64>,
    /// Store write groups applied, and how many are known durable.
    written: u64,
    durable: u64,
    sync_requested: u64,
    sync_retry_at_ms: Option<u64>,
    deferred: VecDeque<(u64, Deferred)>,
    /// Batches written and not yet reported durable, with their write.
    unsynced: HashMap<BatchId, u64>,
    outputs: VecDeque<Output>,
    links: BTreeMap<(NodeId, &'static str), LinkStatus>,
    /// The last reconciliation session number this node started.
    session_seq: u64,
    /// The last admission refusal audited per child.
    admission_refused: HashMap<NodeId, String>,
    /// The last warning about this node's own assessment.
    own_admission: Option<String>,
    next_admission_check_ms: u64,
}

impl<K: Kv> std::fmt::Debug for Core<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("me", &self.me)
            .field("written", &self.written)
            .field("durable", &self.durable)
            .finish_non_exhaustive()
    }
}

impl<K: Kv> Core<K> {
    /// A core over a store (new or reopened after a restart or crash). `topology` must
    /// already be checked: it names this node with `signer`'s key.
    pub fn new(
        signer: Box<dyn Signer + Send>,
        verifier: Box<dyn Verifier + Send>,
        topology: Arc<Topology>,
        store: Store<K>,
        config: CoreConfig,
        now: Now,
    ) -> Result<Core<K>, CoreError> {
        let me = topology
            .node_by_key(&signer.public())
            .map(|n| n.id)
            .expect("the topology pins this node's key (checked by the caller)");
        store.audit(
            AuditEvent::Started {
                topology_version: topology.version,
            },
            now.wall_ms,
        )?;
        let mut core = Core {
            me,
            signer,
            verifier,
            registry: Registry::builtin(),
            topology,
            store,
            config,
            uplinks: Default::default(),
            downlinks: BTreeMap::new(),
            uplink_links: BTreeMap::new(),
            migration: None,
            migration_dirty: true,
            migration_deadline_handled: None,
            written: 1,
            durable: 0,
            sync_requested: 0,
            sync_retry_at_ms: None,
            deferred: VecDeque::new(),
            unsynced: HashMap::new(),
            outputs: VecDeque::new(),
            links: BTreeMap::new(),
            session_seq: 0,
            admission_refused: HashMap::new(),
            own_admission: None,
            next_admission_check_ms: 0,
        };
        for slot in &mut core.uplinks {
            slot.backoff_ms = config.backoff_min_ms;
        }
        core.resign_own(now)?;
        core.check_admissions(now)?;
        // Restore the migration phase before any link is dialed, so a restart resumes it.
        core.migration_step(now)?;
        core.request_sync();
        core.plan_dials(now);
        Ok(core)
    }

    pub fn me(&self) -> NodeId {
        self.me
    }

    /// Re-signs, with this node's current key, its own batches still waiting in an outbox
    /// that an earlier key signed (the node was given a new key): no parent has acknowledged
    /// them, so no receipt dates them before the old key's retirement, and a parent would
    /// quarantine them. Same bytes, same id; history stays as it was.
    fn resign_own(&mut self, now: Now) -> Result<(), CoreError> {
        let key = self.signer.public();
        let mut peers: Vec<NodeId> = self
            .topology
            .parent_of(self.me)
            .map(|p| p.id)
            .into_iter()
            .collect();
        if self.me != NodeId::NATIONAL {
            peers.push(NodeId::NATIONAL);
        }
        let mut resigned: Vec<(BatchId, protocol::Signature)> = Vec::new();
        let mut seen: HashSet<BatchId> = HashSet::new();
        for peer in peers {
            let mut after: Option<BatchId> = None;
            loop {
                let page = self.store.outbox_page(peer, after.as_ref(), OUTBOX_PAGE)?;
                for offer in &page {
                    if offer.origin != self.me || !seen.insert(offer.id) {
                        continue;
                    }
                    let Some(signature) = self.store.signature(&offer.id)? else {
                        continue;
                    };
                    if !SignedBatch::id_signed_by(&offer.id, &signature, &key, &*self.verifier) {
                        resigned.push((offer.id, SignedBatch::sign_id(&offer.id, &*self.signer)));
                    }
                }
                match page.last() {
                    Some(last) if page.len() == OUTBOX_PAGE => after = Some(last.id),
                    _ => break,
                }
            }
        }
        if !resigned.is_empty() {
            info!(
                batches = resigned.len(),
                "re-signed this node's unacknowledged batches with its new key"
            );
            self.store.resign(&resigned, now.wall_ms)?;
            self.wrote();
        }
        Ok(())
    }

    pub fn topology(&self) -> &Arc<Topology> {
        &self.topology
    }

    pub fn store(&self) -> &Store<K> {
        &self.store
    }

    /// Store writes known durable: acknowledgements up to here have been released.
    pub fn durable_seq(&self) -> u64 {
        self.durable
    }

    pub fn links(&self) -> Vec<LinkStatus> {
        self.links.values().cloned().collect()
    }

    /// The next thing the runtime must do. Drain after every `handle_*` call.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Core::handle_timeout`] should next be called (monotonic ms), if ever.
    pub fn poll_timeout(&self) -> Option<u64> {
        let mut next: Option<u64> = None;
        let mut at = |t: u64| next = Some(next.map_or(t, |n| n.min(t)));
        for (route, slot) in Route::ALL.iter().zip(&self.uplinks) {
            if let Some(t) = slot.machine.as_ref().and_then(Uplink::poll_timeout)
                && slot.link.is_some()
            {
                at(t);
            }
            if slot.link.is_none() && !slot.dialing && self.route_target(*route).is_some() {
                at(slot.next_dial_ms);
            }
            if slot.established {
                at(slot.next_reconcile_ms);
                if let Some(running) = &slot.reconciling {
                    at(running.deadline_ms);
                }
            }
        }
        if let Some(t) = self.sync_retry_at_ms {
            at(t);
        }
        if self.topology.admissions().require_assessment {
            at(self.next_admission_check_ms);
        }
        if let Some(t) = self.migration_deadline()
            && self.migration_deadline_handled != Some(t)
        {
            at(t);
        }
        next
    }

    fn push(&mut self, output: Output) {
        self.outputs.push_back(output);
    }

    fn link_status(&mut self, peer: NodeId, direction: &'static str, now: Now) -> &mut LinkStatus {
        self.links
            .entry((peer, direction))
            .or_insert_with(|| LinkStatus {
                peer: peer.to_string(),
                direction,
                connected: false,
                since_ms: now.wall_ms,
                last_error: None,
                pending: 0,
                in_flight: 0,
                batches_sent: 0,
                bytes_sent: 0,
                batches_received: 0,
                bytes_received: 0,
                refused: BTreeMap::new(),
                reconcile_sessions: 0,
                reconcile_rounds: 0,
                reconcile_differences: 0,
                last_batch_ms: None,
            })
    }

    // ---- durability ----

    /// Notes that a store write group was applied; returns its number.
    fn wrote(&mut self) -> u64 {
        self.written += 1;
        self.request_sync();
        self.written
    }

    fn request_sync(&mut self) {
        if self.written > self.sync_requested && self.sync_retry_at_ms.is_none() {
            self.sync_requested = self.written;
            self.outputs.push_back(Output::Sync { upto: self.written });
        }
    }

    fn defer(&mut self, seq: u64, item: Deferred) {
        #[cfg(feature = "planted-bugs")]
        if self.config.planted == Some(PlantedBug::ReceiptBeforeDurable) {
            self.release(item);
            return;
        }
        if seq <= self.durable {
            self.release(item);
        } else {
            self.deferred.push_back((seq, item));
        }
    }

    /// The only way an acknowledgement reaches a link.
    fn release(&mut self, item: Deferred) {
        match item {
            Deferred::Receipt {
                link,
                receipt,
                problems,
                findings,
            } => {
                if let Some(slot) = self.downlinks.get_mut(&link) {
                    slot.machine.handle_decided(receipt, problems, findings);
                }
            }
            Deferred::UpstreamStored { link, done } => {
                if let Some(route) = self.uplink_links.get(&link).copied()
                    && let Some(machine) = self.uplinks[route.index()].machine.as_mut()
                {
                    machine.handle_upstream_stored(done);
                }
            }
        }
    }

    /// The store made every write up to `upto` durable: release what waited for it.
    pub fn handle_durable(&mut self, upto: u64, now: Now) {
        if upto <= self.durable {
            return;
        }
        self.durable = upto;
        self.unsynced.retain(|_, seq| *seq > upto);
        while self.deferred.front().is_some_and(|(seq, _)| *seq <= upto) {
            let (_, item) = self.deferred.pop_front().expect("just checked");
            self.release(item);
        }
        self.flush_links(now);
    }

    /// A sync failed (a full disk, say): nothing waiting is released; it is tried again.
    pub fn handle_sync_failed(&mut self, reason: &str, now: Now) {
        error!(%reason, "store sync failed: acknowledgements wait until it succeeds; free disk space if it is full");
        self.sync_requested = self.durable;
        self.sync_retry_at_ms = Some(now.mono_ms + SYNC_RETRY_MS);
    }

    // ---- routing ----

    /// Which links this node keeps open and sends new batches on.
    fn routes(&self) -> migration::Routes {
        let has_parent = self.topology.parent_of(self.me).is_some();
        if self.topology.legacy_link(self.me).is_none() {
            return migration::Routes {
                parent_sends: has_parent,
                legacy_open: false,
                legacy_sends: false,
            };
        }
        let routes = self.migration.as_ref().map_or_else(
            || Migration::new(Phase::Direct, 0).routes(),
            Migration::routes,
        );
        migration::Routes {
            parent_sends: has_parent && routes.parent_sends,
            legacy_open: routes.legacy_open,
            legacy_sends: routes.legacy_sends,
        }
    }

    /// The peer a route connects to now, if the route is open.
    fn route_target(&self, route: Route) -> Option<(NodeId, SocketAddr, PublicKey)> {
        let routes = self.routes();
        let peer = match route {
            Route::Parent if routes.parent_sends => self.topology.parent_of(self.me)?,
            Route::Legacy if routes.legacy_open => self.topology.node(NodeId::NATIONAL)?,
            _ => return None,
        };
        Some((peer.id, peer.address, peer.public_key))
    }

    /// The links a newly stored batch is queued for.
    fn forward_targets(&self) -> Vec<NodeId> {
        let routes = self.routes();
        let mut targets = Vec::with_capacity(2);
        if routes.parent_sends
            && let Some(parent) = self.topology.parent_of(self.me)
        {
            targets.push(parent.id);
        }
        if routes.legacy_sends {
            targets.push(NodeId::NATIONAL);
        }
        targets
    }

    /// The key pinned for `origin`, if `origin` is `via` itself or below it (a child may only
    /// send batches of its own subtree).
    fn origin_key(&self, via: NodeId, origin: NodeId) -> Option<PublicKey> {
        if !self.topology.is_within(origin, via) {
            return None;
        }
        self.topology.node(origin).map(|n| n.public_key)
    }

    fn plan_dials(&mut self, now: Now) {
        for route in Route::ALL {
            let target = self.route_target(route);
            let slot = &mut self.uplinks[route.index()];
            // A link that no longer matches the route (gone, other peer or key): close it.
            if let Some(link) = slot.link
                && target.is_none_or(|(peer, _, key)| {
                    slot.machine
                        .as_ref()
                        .is_none_or(|m| m.parent() != peer || m.parent_key() != key)
                })
            {
                self.outputs.push_back(Output::Close {
                    link,
                    reason: "link no longer in the topology or the migration phase".into(),
                });
                continue;
            }
            let Some((peer, address, key)) = target else {
                continue;
            };
            if slot.link.is_some() || slot.dialing || now.mono_ms < slot.next_dial_ms {
                continue;
            }
            // A new parent, or the same parent re-keyed: receipts are checked against the key
            // pinned now. The outbox feeds the new uplink what the old one held.
            if slot
                .machine
                .as_ref()
                .is_none_or(|m| m.parent() != peer || m.parent_key() != key)
            {
                slot.machine = Some(Uplink::new(self.me, peer, key, self.config.sync));
            }
            slot.dialing = true;
            self.outputs.push_back(Output::Dial {
                route,
                peer,
                address,
                key,
            });
        }
    }

    // ---- links ----

    /// A dial failed (unreachable, or refused): try again after a backoff.
    pub fn handle_dial_failed(&mut self, route: Route, reason: &str, now: Now) {
        let slot = &mut self.uplinks[route.index()];
        slot.dialing = false;
        slot.next_dial_ms = now.mono_ms + slot.backoff_ms;
        slot.backoff_ms = (slot.backoff_ms * 2).min(self.config.backoff_max_ms);
        let retry_ms = slot.next_dial_ms - now.mono_ms;
        if let Some((peer, _, _)) = self.route_target(route) {
            warn!(%peer, route = route.direction(), error = %reason, retry_ms, "uplink down");
            self.link_status(peer, route.direction(), now).last_error = Some(reason.to_owned());
        }
    }

    /// A connection is up with its control stream open. For a child's connection the core
    /// decides whether the key belongs to a child it accepts; if not, it closes the link.
    pub fn handle_link_up(
        &mut self,
        link: LinkId,
        kind: LinkKind,
        now: Now,
    ) -> Result<(), CoreError> {
        match kind {
            LinkKind::Up(route) => {
                let target = self.route_target(route);
                let slot = &mut self.uplinks[route.index()];
                slot.dialing = false;
                let matches = target.is_some_and(|(peer, _, _)| {
                    slot.machine.as_ref().is_some_and(|m| m.parent() == peer)
                });
                if !matches || slot.link.is_some() {
                    self.outputs.push_back(Output::Close {
                        link,
                        reason: "the route changed while dialing".into(),
                    });
                    return Ok(());
                }
                slot.link = Some(link);
                slot.established = false;
                self.uplink_links.insert(link, route);
                let machine = slot.machine.as_mut().expect("matched above");
                machine.handle_connected(self.topology.version, now.mono_ms);
                self.fill_from_outbox(route, now)?;
            }
            LinkKind::Down { key } => {
                let child = self
                    .topology
                    .node_by_key(&key)
                    .filter(|n| may_connect(&self.topology, self.me, n.id))
                    .map(|n| n.id);
                let Some(child) = child else {
                    self.push(Output::Close {
                        link,
                        reason: "not a child of this node".into(),
                    });
                    return Ok(());
                };
                let admission = self.topology.admission(child, now.wall_ms);
                if let Some(reason) = admission.refusal(child) {
                    self.refuse_admission(link, child, reason, now)?;
                    return Ok(());
                }
                if admission.expiring() {
                    warn!(peer = %child, ?admission, "the child's security assessment (接入前安全评估) ends soon: have it renewed before it expires, or the child will be refused");
                }
                self.admission_refused.remove(&child);
                info!(peer = %child, "child connected");
                // One connection per child: a newer authenticated connection replaces the
                // older (a child that reconnected before its old connection was found dead;
                // two processes with one key would take turns).
                let older: Vec<LinkId> = self
                    .downlinks
                    .iter()
                    .filter(|(_, s)| s.machine.child() == child)
                    .map(|(old, _)| *old)
                    .collect();
                for old in older {
                    info!(peer = %child, "a new connection from this child replaces its old one");
                    self.push(Output::Close {
                        link: old,
                        reason: "replaced by a newer connection from the same child".into(),
                    });
                }
                self.downlinks.insert(
                    link,
                    DownlinkSlot {
                        machine: Downlink::new(child),
                        key,
                        relayed: HashSet::new(),
                        responding: None,
                    },
                );
                self.push(Output::Transmit {
                    link,
                    message: Message::Hello {
                        node: self.me,
                        wire_version: wire::WIRE_VERSION,
                        topology_version: self.topology.version,
                    },
                });
                let status = self.link_status(child, "down", now);
                status.connected = true;
                status.since_ms = now.wall_ms;
                status.last_error = None;
                self.relay_to(child)?;
            }
        }
        self.flush_links(now);
        Ok(())
    }

    /// Refuses (or ends) a child's session because of its security assessment: logged, closed
    /// with the reason, audited once per reason (a child that keeps dialing does not fill the
    /// audit log).
    fn refuse_admission(
        &mut self,
        link: LinkId,
        child: NodeId,
        reason: String,
        now: Now,
    ) -> Result<(), StoreError> {
        warn!(peer = %child, %reason, "session refused");
        if self.admission_refused.get(&child) != Some(&reason) {
            self.store.audit(
                AuditEvent::AdmissionRefused {
                    peer: child,
                    reason: reason.clone(),
                },
                now.wall_ms,
            )?;
            self.wrote();
            self.admission_refused.insert(child, reason.clone());
        }
        self.push(Output::Close { link, reason });
        Ok(())
    }

    /// Ends the sessions of children whose assessment is no longer valid, and warns when this
    /// node's own is missing, expired or ending soon (once per state).
    fn check_admissions(&mut self, now: Now) -> Result<(), StoreError> {
        self.next_admission_check_ms = now.mono_ms + ADMISSION_CHECK_MS;
        let refused: Vec<(LinkId, NodeId, String)> = self
            .downlinks
            .iter()
            .filter_map(|(link, slot)| {
                let child = slot.machine.child();
                let reason = self.topology.admission(child, now.wall_ms).refusal(child)?;
                Some((*link, child, reason))
            })
            .collect();
        for (link, child, reason) in refused {
            self.refuse_admission(link, child, reason, now)?;
        }
        let own = self.topology.admission(self.me, now.wall_ms);
        let state = match &own {
            _ if own.expiring() => Some(format!(
                "this node's security assessment (接入前安全评估) ends soon ({own:?}): have it renewed and the topology updated before then, or the parent will refuse this node"
            )),
            _ => own
                .refusal(self.me)
                .map(|reason| format!("the parent will refuse this node: {reason}")),
        };
        if state != self.own_admission {
            if let Some(message) = &state {
                warn!("{message}");
            }
            self.own_admission = state;
        }
        Ok(())
    }

    /// A link is gone (closed by either side, timed out, or the process lost it).
    pub fn handle_link_down(
        &mut self,
        link: LinkId,
        reason: &str,
        now: Now,
    ) -> Result<(), CoreError> {
        if let Some(route) = self.uplink_links.remove(&link) {
            let slot = &mut self.uplinks[route.index()];
            if slot.link != Some(link) {
                return Ok(());
            }
            slot.link = None;
            let was_established = std::mem::take(&mut slot.established);
            // A link that stayed up a while redials soon; one that keeps failing right after
            // its handshake (a peer that breaks the protocol, a key the peer no longer holds)
            // backs off like a failed dial instead of reconnecting ten times a second.
            if slot
                .up_since_ms
                .is_some_and(|since| now.mono_ms.saturating_sub(since) >= STABLE_LINK_MS)
            {
                slot.backoff_ms = self.config.backoff_min_ms;
            }
            slot.up_since_ms = None;
            slot.feedback.clear();
            slot.findings.clear();
            slot.sent_at_ms.clear();
            slot.reconcile_queue.clear();
            slot.reconciling = None;
            slot.next_dial_ms = now.mono_ms + slot.backoff_ms;
            slot.backoff_ms = (slot.backoff_ms * 2).min(self.config.backoff_max_ms);
            let peer = slot.machine.as_mut().map(|m| {
                m.handle_disconnected();
                m.parent()
            });
            if let Some(peer) = peer {
                warn!(%peer, route = route.direction(), %reason, "uplink down");
                let status = self.link_status(peer, route.direction(), now);
                status.connected = false;
                status.since_ms = now.wall_ms;
                status.last_error = Some(reason.to_owned());
                if was_established {
                    self.store
                        .audit(AuditEvent::Path { peer, up: false }, now.wall_ms)?;
                    self.wrote();
                }
            }
            self.migration_dirty = true;
            self.migration_step(now)?;
        } else if let Some(slot) = self.downlinks.remove(&link) {
            let child = slot.machine.child();
            info!(peer = %child, %reason, "downlink ended");
            let reconnected = self.downlinks.values().any(|s| s.machine.child() == child);
            let status = self.link_status(child, "down", now);
            status.connected = reconnected;
            status.last_error = Some(reason.to_owned());
            if reconnected {
                // The child is back on a newer link: what was relayed on this one and not
                // acknowledged goes again there.
                self.relay_to(child)?;
                self.flush_links(now);
            }
        }
        self.plan_dials(now);
        Ok(())
    }

    /// The runtime failed to read a batch stream on a link: the child will offer it again.
    pub fn handle_batch_stream_failed(&mut self, link: LinkId, reason: &str) {
        if let Some(slot) = self.downlinks.get(&link) {
            warn!(peer = %slot.machine.child(), %reason, "batch stream failed; the child will offer it again");
        }
    }

    /// A control frame arrived on a link. A frame that breaks the protocol closes the link.
    pub fn handle_message(
        &mut self,
        link: LinkId,
        message: Message,
        now: Now,
    ) -> Result<(), CoreError> {
        let result = if let Some(route) = self.uplink_links.get(&link).copied() {
            self.uplink_message(route, link, message, now)
        } else if self.downlinks.contains_key(&link) {
            self.downlink_message(link, message, now)
        } else {
            return Ok(());
        };
        match result {
            Ok(()) => {}
            Err(Broken::Protocol(e)) => {
                warn!(error = %e, "peer broke the protocol: closing the link");
                self.push(Output::Close {
                    link,
                    reason: e.to_string(),
                });
            }
            Err(Broken::Store(e)) => {
                // What the link's machine took in is not all stored (a receipt it counts as
                // received, say): start the link over from the store, once it works again
                // (the child redials; the parent is redialed with backoff).
                warn!(error = %e, "the store failed while handling a frame: closing the link to start it over");
                if let Some(route) = self.uplink_links.get(&link).copied() {
                    // Not again at once: the store (a full disk) needs time to come back.
                    let slot = &mut self.uplinks[route.index()];
                    slot.backoff_ms = slot.backoff_ms.max(SYNC_RETRY_MS);
                }
                self.push(Output::Close {
                    link,
                    reason: format!("store failed: {e}"),
                });
                self.flush_links(now);
                return Err(e.into());
            }
        }
        self.flush_links(now);
        Ok(())
    }

    fn uplink_message(
        &mut self,
        route: Route,
        link: LinkId,
        message: Message,
        now: Now,
    ) -> Result<(), Broken> {
        let slot = &mut self.uplinks[route.index()];
        let machine = slot.machine.as_mut().expect("a linked route has a machine");
        let parent = machine.parent();
        if let Message::Hello { node, .. } = &message
            && *node == parent
            && !slot.established
        {
            // The parent accepted this node and answered: only now is the path up.
            slot.established = true;
            slot.up_since_ms = Some(now.mono_ms);
            info!(peer = %parent, route = route.direction(), "uplink connected");
            let status = self.link_status(parent, route.direction(), now);
            status.connected = true;
            status.since_ms = now.wall_ms;
            status.last_error = None;
            self.store.audit(
                AuditEvent::Path {
                    peer: parent,
                    up: true,
                },
                now.wall_ms,
            )?;
            self.wrote();
            self.migration_dirty = true;
        }
        match message {
            Message::ReconcileReply { session, message } => {
                return Ok(self.reconcile_reply(route, link, session, &message, now)?);
            }
            Message::ReconcileAsk => {
                self.reconcile(Some(parent), now)?;
                return Ok(());
            }
            _ => {}
        }
        let slot = &mut self.uplinks[route.index()];
        let machine = slot.machine.as_mut().expect("a linked route has a machine");
        let hello = matches!(message, Message::Hello { .. });
        machine.handle_message_with(message, now.mono_ms, &*self.verifier)?;
        if hello
            && slot.established
            && slot.reconcile_queue.is_empty()
            && slot.reconciling.is_none()
        {
            // The path is up: compare the batches both sides hold.
            self.reconcile_kinds(Some(parent), &[ReconcileKind::Batches], now)?;
        }
        self.uplink_events(route, link, now)?;
        self.migration_step(now)?;
        Ok(())
    }

    fn uplink_events(&mut self, route: Route, link: LinkId, now: Now) -> Result<(), Broken> {
        loop {
            let slot = &mut self.uplinks[route.index()];
            let Some(machine) = slot.machine.as_mut() else {
                return Ok(());
            };
            let parent = machine.parent();
            let Some(event) = machine.poll_event() else {
                break;
            };
            match event {
                UplinkEvent::Receipt(receipt) => {
                    if let Some(sent_ms) = slot.sent_at_ms.remove(&receipt.receipt.batch) {
                        crate::metrics::receipt_latency(
                            parent,
                            route.direction(),
                            now.mono_ms.saturating_sub(sent_ms),
                        );
                    }
                    let problems = slot
                        .feedback
                        .remove(&receipt.receipt.batch)
                        .unwrap_or_default();
                    let findings = slot.findings.remove(&receipt.receipt.batch);
                    if let Verdict::Rejected { reason } = &receipt.receipt.verdict {
                        error!(batch = %receipt.receipt.batch, %reason, problems = problems.len(), "batch refused by parent: correct the data and submit again");
                    }
                    let quality = match findings {
                        Some(findings) => self.own_findings(&receipt, parent, findings)?,
                        None => None,
                    };
                    let relay = self.store.insert_receipt(
                        self.me,
                        parent,
                        &receipt,
                        &problems,
                        quality.as_ref(),
                        now.wall_ms,
                    )?;
                    self.wrote();
                    if receipt.receipt.receiver == NodeId::NATIONAL {
                        self.migration_dirty = true;
                    }
                    if let Some(child) = relay {
                        self.relay_to(child)?;
                    }
                    let bytes = self
                        .store
                        .meta(&receipt.receipt.batch)?
                        .map_or(0, |meta| u64::from(meta.bytes));
                    let status = self.link_status(parent, route.direction(), now);
                    status.batches_sent += 1;
                    status.bytes_sent += bytes;
                }
                UplinkEvent::UpstreamReceipts(receipts) => {
                    let path = self.topology.path_to_national(self.me);
                    let mut done = Vec::new();
                    let mut children = BTreeMap::new();
                    for receipt in receipts {
                        let receiver = receipt.receipt.receiver;
                        let trusted = path.contains(&receiver)
                            && keys::receipt_signed_validly(
                                &self.topology,
                                &receipt,
                                &*self.verifier,
                            );
                        if !trusted {
                            warn!(%receiver, batch = %receipt.receipt.batch, "relayed receipt does not verify under a pinned key above this node; ignored");
                            continue;
                        }
                        if let Some(child) = self.store.insert_receipt(
                            self.me,
                            parent,
                            &receipt,
                            &[],
                            None,
                            now.wall_ms,
                        )? {
                            children.insert(child, ());
                        }
                        if receiver == NodeId::NATIONAL {
                            self.store.mark_via_hierarchy(&receipt.receipt.batch)?;
                            self.migration_dirty = true;
                        }
                        done.push((receipt.receipt.batch, receiver));
                    }
                    let seq = self.wrote();
                    for child in children.into_keys() {
                        self.relay_to(child)?;
                    }
                    if !done.is_empty() {
                        // The parent forgets these once told: only after they are durable here.
                        self.defer(seq, Deferred::UpstreamStored { link, done });
                    }
                }
                UplinkEvent::Feedback { batch, problems } => {
                    warn!(%batch, problems = problems.len(), "feedback from parent");
                    slot.feedback.insert(batch, problems);
                }
                UplinkEvent::Findings { batch, findings } => {
                    if !findings.is_empty() {
                        warn!(%batch, findings = findings.len(), "audit findings from parent: see credit-node feedback");
                    }
                    slot.findings.insert(batch, findings);
                }
            }
        }
        Ok(())
    }

    fn downlink_message(&mut self, link: LinkId, message: Message, now: Now) -> Result<(), Broken> {
        match message {
            Message::Reconcile {
                session,
                scope,
                message,
            } => return self.reconcile_answer(link, session, scope, &message),
            Message::ReconcileDone {
                session,
                scope,
                parent_only,
            } => return self.reconcile_finished(link, session, scope, parent_only, now),
            _ => {}
        }
        let me = self.me;
        let store = &self.store;
        let unsynced = &self.unsynced;
        let signer = &*self.signer;
        let slot = self
            .downlinks
            .get_mut(&link)
            .expect("checked by the caller");
        // Only a durable batch is answered with the stored receipt; one still being made
        // durable is wanted again, and its receipt waits for durability when it arrives.
        slot.machine.handle_message(message, |id| {
            if unsynced.contains_key(id) {
                return None;
            }
            store
                .receipt(id, me)
                .ok()
                .flatten()
                .map(|receipt| current_key(receipt, signer))
        })?;
        let child = slot.machine.child();
        let mut stored = Vec::new();
        while let Some(DownlinkEvent::RelayStored(done)) = slot.machine.poll_event() {
            for item in &done {
                slot.relayed.remove(item);
            }
            stored.extend(done);
        }
        if !stored.is_empty() {
            self.store.relay_done(child, &stored)?;
            self.wrote();
        }
        Ok(())
    }

    /// Queues for `child`'s link (if connected) the receipts waiting to be relayed to it. A
    /// child that reconnected before its old connection was found dead has two links for a
    /// while: the newest (link ids only grow) is the one it uses.
    fn relay_to(&mut self, child: NodeId) -> Result<(), StoreError> {
        let Some((_, slot)) = self
            .downlinks
            .iter_mut()
            .rev()
            .find(|(_, s)| s.machine.child() == child)
        else {
            return Ok(());
        };
        let pending: Vec<SignedReceipt> = self
            .store
            .relay_pending(child, RELAY_PAGE)?
            .into_iter()
            .filter(|r| {
                slot.relayed.len() < RELAYED_MAX
                    && slot.relayed.insert((r.receipt.batch, r.receipt.receiver))
            })
            .collect();
        if !pending.is_empty() {
            slot.machine.handle_upstream_receipts(pending);
        }
        Ok(())
    }

    /// A batch arrived on its own stream on a child's link: the receive decision.
    pub fn handle_batch(
        &mut self,
        link: LinkId,
        signed: SignedBatch,
        first_receipt: Option<SignedReceipt>,
        now: Now,
    ) -> Result<(), CoreError> {
        self.handle_received(link, signed, None, first_receipt, now)
            .map(drop)
    }

    /// [`Core::handle_batch`] for a batch whose stateless checks were run before
    /// ([`Prechecked::new`], outside the core's lock): the same decision, in the same order
    /// (hash, origin, signature, then the checks' result), without decoding it again. The
    /// stored batch's decoded records and index update come back ([`Spent`]) for the caller
    /// to drop once it has released the core.
    pub fn handle_prechecked(
        &mut self,
        link: LinkId,
        batch: Prechecked,
        first_receipt: Option<SignedReceipt>,
        now: Now,
    ) -> Result<Spent, CoreError> {
        let (signed, checked) = batch.into_parts(self.registry);
        self.handle_received(link, signed, checked, first_receipt, now)
            .map(Option::unwrap_or_default)
    }

    /// Receives a batch; returns what the core is done with of one it stored.
    fn handle_received(
        &mut self,
        link: LinkId,
        signed: SignedBatch,
        checked: Option<Checked>,
        first_receipt: Option<SignedReceipt>,
        now: Now,
    ) -> Result<Option<Spent>, CoreError> {
        let Some(slot) = self.downlinks.get_mut(&link) else {
            return Ok(None);
        };
        let child = slot.machine.child();
        let id = signed.id;
        slot.machine.handle_batch_arrived(&id);
        let status = self.link_status(child, "down", now);
        status.batches_received += 1;
        status.bytes_received += signed.bytes.len() as u64;
        status.last_batch_ms = Some(now.wall_ms);
        let result = self.receive(link, child, signed, checked, first_receipt, now);
        self.flush_links(now);
        result
    }

    /// Whether `receipt` proves that batch `signed` of `origin` existed by its date: an
    /// acceptance, believably signed, by a node on the origin's path other than the origin.
    fn existed_by(&self, receipt: &SignedReceipt, signed: &SignedBatch, origin: NodeId) -> bool {
        let r = &receipt.receipt;
        r.batch == signed.id
            && r.origin == origin
            && r.receiver != origin
            && matches!(r.verdict, Verdict::Accepted { .. })
            && self.topology.is_within(origin, r.receiver)
            && keys::receipt_signed_validly(&self.topology, receipt, &*self.verifier)
    }

    /// The proof of first arrival a child sent with a batch, if it holds: signed under the
    /// pinned key of a node on the origin's path, at or below the child, for this batch and
    /// origin, accepted. Anything else is ignored (the batch is still taken; its arrival is
    /// then dated by this node's own receipt, which can only be later).
    fn check_first_receipt(
        &self,
        child: NodeId,
        signed: &SignedBatch,
        origin: NodeId,
        first: Option<SignedReceipt>,
    ) -> Option<SignedReceipt> {
        let first = first?;
        let r = &first.receipt;
        let path = self.topology.path_to_national(origin);
        let at = path.iter().position(|n| *n == r.receiver);
        let child_at = path.iter().position(|n| *n == child);
        // The first receiver is on the path at or below the child; or the national platform,
        // reached straight over the legacy link of a node at or below the child.
        let over_legacy = r.receiver == NodeId::NATIONAL
            && child_at.is_some_and(|child_at| {
                path[..=child_at]
                    .iter()
                    .any(|n| self.topology.legacy_link(*n).is_some())
            });
        // Or this node's own receipt from when it first held the batch (it has lost it since).
        let own = r.receiver == self.me;
        let valid = r.batch == signed.id
            && r.origin == origin
            && matches!(r.verdict, Verdict::Accepted { .. })
            && r.receiver != origin
            && (over_legacy
                || own
                || at
                    .zip(child_at)
                    .is_some_and(|(at, child_at)| at <= child_at))
            && self.topology.node(r.receiver).is_some()
            && {
                #[cfg(feature = "planted-bugs")]
                let trusted = self.config.planted == Some(PlantedBug::TrustFirstReceipt);
                #[cfg(not(feature = "planted-bugs"))]
                let trusted = false;
                trusted || keys::receipt_signed_validly(&self.topology, &first, &*self.verifier)
            };
        if !valid {
            warn!(batch = %signed.id.short(), %child, receiver = %r.receiver, "proof of first arrival does not hold; dating the batch by this node's receipt");
            return None;
        }
        Some(first)
    }

    fn receive(
        &mut self,
        link: LinkId,
        child: NodeId,
        signed: SignedBatch,
        checked: Option<Checked>,
        first_receipt: Option<SignedReceipt>,
        now: Now,
    ) -> Result<Option<Spent>, CoreError> {
        let id = signed.id;
        let (decoded, prepared) = split(checked);
        if let Some(receipt) = self.store.receipt(&id, self.me)? {
            debug!(batch = %id.short(), "already held; answering with the stored receipt once durable");
            let seq = self.unsynced.get(&id).copied().unwrap_or(self.durable);
            // The origin sends a batch again when it lacks the receipt: it may lack the
            // findings too.
            let findings = self.findings_again(&id, child)?;
            self.defer(
                seq,
                Deferred::Receipt {
                    link,
                    receipt: current_key(receipt, &*self.signer),
                    problems: Vec::new(),
                    findings,
                },
            );
            return Ok(None);
        }
        let verifier: &dyn Verifier = &*self.verifier;
        #[cfg(feature = "planted-bugs")]
        let verifier: &dyn Verifier =
            if self.config.planted == Some(PlantedBug::SkipOriginSignature) {
                &AcceptAny
            } else {
                verifier
            };
        // Which of the origin's keys signed (current, retired or revoked): its state is
        // judged against the first arrival once the content checks out.
        let signer = signed
            .summary()
            .ok()
            .map(|summary| summary.origin)
            .filter(|origin| self.origin_key(child, *origin).is_some())
            .and_then(|origin| {
                keys::batch_signer(
                    &self.topology,
                    origin,
                    &signed.id,
                    &signed.signature,
                    verifier,
                )
            });
        let registry = self.registry;
        let checked = verify_decoded_with(
            &signed,
            |origin| {
                self.origin_key(child, origin)
                    .map(|current| signer.map_or(current, |(key, _)| key))
            },
            verifier,
            || content_checks(decoded, &signed, registry),
        )
        .and_then(|content| {
            progress::check_origin(&self.topology, &content)
                .map_err(|rejection| (rejection, Vec::new()))?;
            check_profile(&self.topology, self.registry, &content)?;
            Ok(content)
        });
        match checked {
            Ok(content) => {
                let summary = content.summary();
                // A receipt from further up the origin's path proves the batch existed by its
                // date: not a first arrival (the ledger does not date by it), but enough to
                // judge an ended key (a store lost the batch and the receipts below it are
                // under keys revoked since).
                let above = first_receipt
                    .as_ref()
                    .filter(|r| self.existed_by(r, &signed, summary.origin))
                    .map(|r| r.receipt.received_at_ms);
                let first = self.check_first_receipt(child, &signed, summary.origin, first_receipt);
                if let Some((key, state)) = signer
                    && state != KeyState::Current
                {
                    // First arrival: the first receiver's proof, or now when this node is
                    // the first receiver.
                    let arrival = first
                        .as_ref()
                        .map(|r| r.receipt.received_at_ms)
                        .or((child == summary.origin).then_some(now.wall_ms));
                    let arrival = match (arrival, above) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    if !state.signs_validly(arrival) {
                        let judged = keys::Signed::Ended {
                            key,
                            state,
                            first_arrival_ms: arrival,
                        };
                        let reason = judged
                            .quarantine_reason(summary.origin)
                            .expect("an ended key");
                        // Without a proof (a relay lost or withheld it) the quarantine is not
                        // final: no receipt, so the sender keeps the batch and sends it again,
                        // and a proof that holds then releases it.
                        let answer = arrival.is_some();
                        if !answer && self.store.is_quarantined(&id)? {
                            debug!(batch = %id.short(), "still no proof of first arrival; kept in quarantine");
                            return Ok(None);
                        }
                        return self
                            .quarantine(
                                link,
                                child,
                                &signed,
                                summary.origin,
                                key,
                                reason,
                                answer,
                                now,
                            )
                            .map(|()| None);
                    }
                }
                // The category's audit rules over the batch and the origin's other batches of
                // the period: warnings are kept as feedback items (and sent to the origin);
                // an error refuses the batch.
                let assessed = match &content {
                    Content::Data(batch) => Some(quality::assess(
                        &self.store,
                        self.registry,
                        self.me,
                        id,
                        batch,
                        quality::Audit::Receiver,
                        prepared,
                    )?),
                    _ => None,
                };
                if let Some(errors) = assessed.as_ref().map(quality::Assessed::errors)
                    && !errors.is_empty()
                {
                    let count = assessed
                        .as_ref()
                        .map(|a| {
                            a.findings
                                .iter()
                                .filter(|f| f.problem.severity == Severity::Error)
                                .map(|f| &f.key)
                                .collect::<HashSet<_>>()
                                .len()
                        })
                        .unwrap_or_default();
                    let rejection = Rejection::Audit {
                        category: summary.category.to_string(),
                        count,
                    };
                    return self
                        .refuse(link, child, &signed, rejection, errors, now)
                        .map(|()| None);
                }
                // A batch this node had receipted before (and lost) keeps its first receipt.
                let receipt = match &first {
                    Some(earlier) if earlier.receipt.receiver == self.me => earlier.clone(),
                    _ => self.own_receipt(&signed, Verdict::Accepted { warnings: 0 }, now),
                };
                let targets = self.forward_targets();
                let new = self.store.insert_batch(
                    &signed,
                    &content,
                    child,
                    &receipt,
                    first.as_ref(),
                    &targets,
                    assessed.as_ref().map(|a| &a.update),
                    now.wall_ms,
                )?;
                let mut seq = self.wrote();
                if self.store.release(&id, child, now.wall_ms)? {
                    info!(batch = %id.short(), from = %child, "the proof of first arrival came: released from quarantine");
                    seq = self.wrote();
                }
                if new {
                    self.unsynced.insert(id, seq);
                    info!(batch = %id.short(), origin = %summary.origin, category = %summary.category, period = %summary.period, records = content.records(), kind = summary.kind.as_str(), "batch stored");
                    self.outbox_grew(now)?;
                }
                let (findings, update) = match assessed {
                    Some(a) => (Some(a.findings), Some(a.update)),
                    None => (None, None),
                };
                let findings = findings.filter(|_| child == summary.origin);
                self.defer(
                    seq,
                    Deferred::Receipt {
                        link,
                        receipt,
                        problems: Vec::new(),
                        findings,
                    },
                );
                return Ok(Some(Spent::of(content, update)));
            }
            Err((Rejection::Verify(VerifyError::HashMismatch { .. }), _)) => {
                // The bytes are not the batch the id names (damaged on the way, or a relay
                // altered them): say nothing about the id, which is still wanted, and let the
                // child send it again. A refusal here would make the origin drop a good batch.
                warn!(batch = %id.short(), "batch bytes do not hash to its id: damaged in transit; the child will send it again");
                self.count_refused(child, "hash_mismatch", now);
                self.store.audit(
                    AuditEvent::BatchRefused {
                        batch: id,
                        from: child,
                        reason: "bytes do not hash to the id (damaged in transit); not receipted"
                            .into(),
                    },
                    now.wall_ms,
                )?;
                self.wrote();
            }
            Err((rejection, problems)) => {
                return self
                    .refuse(link, child, &signed, rejection, problems, now)
                    .map(|()| None);
            }
        }
        Ok(None)
    }

    /// Refuses a batch: audited, and answered with a refusal and its problems once the
    /// audit entry is durable. Nothing of the batch is stored.
    fn refuse(
        &mut self,
        link: LinkId,
        child: NodeId,
        signed: &SignedBatch,
        rejection: Rejection,
        problems: Vec<Problem>,
        now: Now,
    ) -> Result<(), CoreError> {
        let id = signed.id;
        error!(batch = %id.short(), reason = %rejection, problems = problems.len(), "batch refused");
        self.count_refused(child, refusal_reason(&rejection), now);
        self.store.audit(
            AuditEvent::BatchRefused {
                batch: id,
                from: child,
                reason: rejection.to_string(),
            },
            now.wall_ms,
        )?;
        let seq = self.wrote();
        let receipt = self.own_receipt(signed, rejection.verdict(), now);
        self.defer(
            seq,
            Deferred::Receipt {
                link,
                receipt,
                problems,
                findings: None,
            },
        );
        Ok(())
    }

    /// The audit findings on held data batch `id`, made again for its origin `child` (which
    /// sent it again, so may lack them); `None` for another sender or kind of batch.
    fn findings_again(
        &self,
        id: &BatchId,
        child: NodeId,
    ) -> Result<Option<Vec<Finding>>, StoreError> {
        let Some(meta) = self.store.meta(id)? else {
            return Ok(None);
        };
        if meta.origin != child || meta.kind != ContentKind::Data {
            return Ok(None);
        }
        let Some(batch) = self.store.held_data_batch(id)? else {
            return Ok(None);
        };
        let assessed = quality::assess(
            &self.store,
            self.registry,
            self.me,
            *id,
            &batch,
            quality::Audit::Receiver,
            None,
        )?;
        Ok(Some(assessed.findings))
    }

    /// What the parent's findings on own data batch `receipt.batch` change here; `None` if
    /// the batch is not this node's own data.
    fn own_findings(
        &self,
        receipt: &SignedReceipt,
        parent: NodeId,
        findings: Vec<Finding>,
    ) -> Result<Option<crate::store::QualityUpdate>, StoreError> {
        let id = receipt.receipt.batch;
        if !matches!(receipt.receipt.verdict, Verdict::Accepted { .. })
            || receipt.receipt.origin != self.me
        {
            return Ok(None);
        }
        // No findings and no item of the batch's period to close: nothing changes (the batch
        // was indexed when it was submitted), so its bytes need not be read and decoded.
        if findings.is_empty()
            && let Some(meta) = self.store.meta(&id)?
            && !self
                .store
                .has_feedback(meta.origin, meta.period, &meta.category)?
        {
            return Ok(None);
        }
        let Some(batch) = self.store.held_data_batch(&id)? else {
            return Ok(None);
        };
        let assessed = quality::assess(
            &self.store,
            self.registry,
            parent,
            id,
            &batch,
            quality::Audit::Parent(findings),
            None,
        )?;
        Ok(Some(assessed.update))
    }

    /// Keeps a batch signed with an ended key apart (never forwarded, not held) and, if
    /// `answer`, answers with a refusal that says why, once the quarantine is durable.
    #[allow(clippy::too_many_arguments)] // the parts of one quarantine record
    fn quarantine(
        &mut self,
        link: LinkId,
        child: NodeId,
        signed: &SignedBatch,
        origin: NodeId,
        key: PublicKey,
        reason: String,
        answer: bool,
        now: Now,
    ) -> Result<(), CoreError> {
        error!(batch = %signed.id.short(), %origin, from = %child, %reason, "batch quarantined");
        self.count_refused(child, "key_ended", now);
        let record = crate::store::Quarantined {
            origin,
            from: child,
            key,
            signature: signed.signature,
            bytes: signed.bytes.len() as u64,
            received_at_ms: now.wall_ms,
            reason: reason.clone(),
        };
        self.store.quarantine(signed, &record, now.wall_ms)?;
        let seq = self.wrote();
        if !answer {
            return Ok(());
        }
        let receipt = self.own_receipt(signed, Verdict::Rejected { reason }, now);
        self.defer(
            seq,
            Deferred::Receipt {
                link,
                receipt,
                problems: Vec::new(),
                findings: None,
            },
        );
        Ok(())
    }

    fn count_refused(&mut self, child: NodeId, reason: &'static str, now: Now) {
        *self
            .link_status(child, "down", now)
            .refused
            .entry(reason)
            .or_default() += 1;
    }

    fn own_receipt(&self, signed: &SignedBatch, verdict: Verdict, now: Now) -> SignedReceipt {
        let origin = signed.summary().map_or(NodeId::NATIONAL, |h| h.origin);
        Receipt {
            receiver: self.me,
            batch: signed.id,
            origin,
            received_at_ms: now.wall_ms,
            verdict,
        }
        .sign_with(&*self.signer)
    }

    /// A batch this node's operator submitted: checked as a receiver would, stored with this
    /// node's own receipt and queued up. Durable (and only then to be confirmed to the
    /// operator) once [`Core::durable_seq`] reaches the returned write.
    pub fn submit(&mut self, signed: SignedBatch, now: Now) -> Result<Submitted, CoreError> {
        self.submit_checked(signed, None, now)
            .map(|(submitted, _)| submitted)
    }

    /// [`Core::submit`] of a batch whose stateless checks ran before (outside the core's
    /// lock, in the runtime): the same checks in the same order, so the same outcome. The
    /// batch's decoded records and index update come back ([`Spent`]) to be dropped once the
    /// core is released.
    pub fn submit_prechecked(
        &mut self,
        batch: Prechecked,
        now: Now,
    ) -> Result<(Submitted, Spent), CoreError> {
        let (signed, checked) = batch.into_parts(self.registry);
        self.submit_checked(signed, checked, now)
    }

    fn submit_checked(
        &mut self,
        signed: SignedBatch,
        checked: Option<Checked>,
        now: Now,
    ) -> Result<(Submitted, Spent), CoreError> {
        let (decoded, prepared) = split(checked);
        let me = self.me;
        let key = self.signer.public();
        let id = signed.id;
        let registry = self.registry;
        let verifier: &dyn Verifier = &*self.verifier;
        #[cfg(feature = "planted-bugs")]
        let verifier: &dyn Verifier =
            if self.config.planted == Some(PlantedBug::SkipSubmitSignature) {
                &AcceptAny
            } else {
                verifier
            };
        let content = verify_decoded_with(
            &signed,
            |o| (o == me).then_some(key),
            verifier,
            || content_checks(decoded, &signed, registry),
        )
        .map_err(|(rejection, _)| match rejection {
            // The receiver's wording ("not below the sending child") does not fit an
            // operator's own submission.
            Rejection::UnknownOrigin(origin) => Rejection::NotOwnOrigin { origin, me },
            other => other,
        })
        .and_then(|content| progress::check_origin(&self.topology, &content).map(|()| content))
        .and_then(|content| {
            check_profile(&self.topology, self.registry, &content)
                .map(|()| content)
                .map_err(|(rejection, _)| rejection)
        })
        .map_err(|rejection| CoreError::Refused {
            id,
            reason: rejection.to_string(),
        })?;
        let receipt = self.own_receipt(&signed, Verdict::Accepted { warnings: 0 }, now);
        let targets = self.forward_targets();
        // Indexed like a receiver's batch, so corrections and the parent's findings find its
        // records; not audited here (the parent's findings come back as feedback).
        let indexed = match &content {
            Content::Data(batch) => Some(quality::assess(
                &self.store,
                self.registry,
                me,
                id,
                batch,
                quality::Audit::Submission,
                prepared,
            )?),
            _ => None,
        };
        let new = self.store.insert_batch(
            &signed,
            &content,
            me,
            &receipt,
            None,
            &targets,
            indexed.as_ref().map(|a| &a.update),
            now.wall_ms,
        )?;
        let seq = if new {
            let seq = self.wrote();
            self.unsynced.insert(id, seq);
            self.outbox_grew(now)?;
            seq
        } else {
            self.unsynced.get(&id).copied().unwrap_or(self.durable)
        };
        self.flush_links(now);
        let (republished, update) = match indexed {
            Some(a) => (a.republished, Some(a.update)),
            None => (Default::default(), None),
        };
        Ok((
            Submitted {
                new,
                durable_at: seq,
                republished,
            },
            Spent::of(content, update),
        ))
    }

    /// Closes a period: signs a manifest naming every data batch this node originated for
    /// `(category, period)` (none: a nil manifest, 零报告), with the data source's declared
    /// total if given, and submits it like a batch. A period closed before gets the next
    /// revision. Returns the manifest's id and when it is durable.
    pub fn close_period(
        &mut self,
        category: &Category,
        period: Period,
        declared: Option<u64>,
        now: Now,
    ) -> Result<(BatchId, Submitted), CoreError> {
        if self.registry.get(category).is_none() {
            return Err(CoreError::Refused {
                id: BatchId([0; 32]),
                reason: format!("category {category} has no schema on this node"),
            });
        }
        let mut entries = Vec::new();
        let mut revision = 0;
        for held in self.store.held_of(self.me) {
            let (id, meta) = held?;
            if meta.category != *category || meta.period != period {
                continue;
            }
            if meta.kind == ContentKind::Manifest {
                let previous = self.store.batch(&id)?.map(|s| Content::decode(&s.bytes));
                if let Some(Ok(Content::Manifest(m))) = previous {
                    revision = revision.max(m.revision);
                }
                continue;
            }
            let supersedes = self
                .store
                .batch(&id)?
                .and_then(|s| s.header().ok())
                .and_then(|h| h.supersedes);
            entries.push(ManifestEntry {
                batch: id,
                records: meta.records,
                supersedes,
            });
        }
        let manifest = Manifest::new(
            self.me,
            category.clone(),
            period,
            revision + 1,
            entries,
            declared,
            now.wall_ms,
        )
        .map_err(|e| CoreError::Refused {
            id: BatchId([0; 32]),
            reason: e.to_string(),
        })?;
        let signed = manifest.seal_with(&*self.signer);
        let id = signed.id;
        info!(manifest = %id.short(), %category, %period, revision = manifest.revision, batches = manifest.batches.len(), declared, "period closed");
        let submitted = self.submit(signed, now)?;
        Ok((id, submitted))
    }

    /// The timeliness ledger of this node's subtree for `period` (see [`ledger`]).
    pub fn ledger(
        &self,
        period: Period,
        category: Option<&Category>,
        now: Now,
    ) -> Result<Vec<ledger::Entry>, StoreError> {
        ledger::ledger(
            &self.store,
            &self.topology,
            self.me,
            period,
            category,
            now.wall_ms,
            ledger::LedgerConfig::default(),
        )
    }

    /// The batch's stream was written and finished (`ok`), or failed.
    pub fn handle_batch_sent(
        &mut self,
        link: LinkId,
        id: BatchId,
        ok: bool,
        now: Now,
    ) -> Result<(), CoreError> {
        let Some(route) = self.uplink_links.get(&link).copied() else {
            return Ok(());
        };
        let slot = &mut self.uplinks[route.index()];
        let Some(machine) = slot.machine.as_mut() else {
            return Ok(());
        };
        if ok {
            machine.handle_batch_sent(id, now.mono_ms);
            if slot.sent_at_ms.len() < SENT_TIMES_MAX || slot.sent_at_ms.contains_key(&id) {
                slot.sent_at_ms.insert(id, now.mono_ms);
            }
            #[cfg(feature = "planted-bugs")]
            if self.config.planted == Some(PlantedBug::DropOutboxOnSend) {
                let peer = machine.parent();
                self.store.drop_outbox_entry(peer, &id)?;
                self.wrote();
            }
        } else {
            warn!(batch = %id.short(), "sending failed; will offer again");
            machine.handle_send_failed(id, now.mono_ms);
        }
        self.flush_links(now);
        Ok(())
    }

    /// A timer fired (or the runtime woke up): retries, dials, migration windows.
    pub fn handle_timeout(&mut self, now: Now) -> Result<(), CoreError> {
        for slot in &mut self.uplinks {
            if slot.link.is_some()
                && let Some(machine) = slot.machine.as_mut()
                && machine.poll_timeout().is_some_and(|t| t <= now.mono_ms)
            {
                machine.handle_timeout(now.mono_ms);
            }
        }
        if self.sync_retry_at_ms.is_some_and(|t| t <= now.mono_ms) {
            self.sync_retry_at_ms = None;
            self.request_sync();
        }
        if self.next_admission_check_ms <= now.mono_ms {
            self.check_admissions(now)?;
        }
        for route in Route::ALL {
            let slot = &mut self.uplinks[route.index()];
            if !slot.established {
                continue;
            }
            if slot
                .reconciling
                .as_ref()
                .is_some_and(|r| r.deadline_ms <= now.mono_ms)
            {
                warn!(
                    route = route.direction(),
                    "reconciliation: the parent did not answer; trying the next scope"
                );
                slot.reconciling = None;
                self.next_session(route, now)?;
            }
            let slot = &self.uplinks[route.index()];
            if slot.next_reconcile_ms <= now.mono_ms
                && let Some(parent) = slot.machine.as_ref().map(Uplink::parent)
            {
                self.reconcile(Some(parent), now)?;
            }
        }
        if let Some(t) = self.migration_deadline()
            && t <= now.mono_ms
        {
            self.migration_dirty = true;
            self.migration_deadline_handled = Some(t);
        }
        self.migration_step(now)?;
        self.plan_dials(now);
        self.flush_links(now);
        Ok(())
    }

    /// A new topology, read and validated by the caller: applied if this node is in it with
    /// its own key and the planner accepts the change; links it no longer allows are closed.
    /// (Given shared, many cores can hold one copy: the simulator's thousands of nodes do.)
    pub fn handle_topology(
        &mut self,
        next: impl Into<Arc<Topology>>,
        now: Now,
    ) -> Result<u64, ReloadError> {
        let next: Arc<Topology> = next.into();
        let Some(entry) = next.node(self.me) else {
            return Err(ReloadError::NotInTopology(self.me));
        };
        if entry.public_key != self.signer.public() {
            return Err(ReloadError::NotMyKey(self.me));
        }
        if *self.topology == *next {
            info!(version = next.version, "topology file unchanged");
            return Ok(next.version);
        }
        // The same planner operators run: a change that would leave some node without a path
        // to the national platform at some step (or that goes back a version) is refused.
        if let Err(refusal) = topology::plan(&self.topology, &next) {
            return Err(ReloadError::Planner {
                refusal: refusal.to_string(),
                kept: self.topology.version,
            });
        }
        let version = next.version;
        let key_changes = key_changes(&self.topology, &next, now.wall_ms);
        self.topology = next;
        self.store
            .audit(AuditEvent::TopologyApplied { version }, now.wall_ms)?;
        for change in key_changes {
            if let AuditEvent::KeyChanged {
                node, key, state, ..
            } = &change
            {
                info!(%node, key = %&key.to_hex()[..16], %state, "key changed");
            }
            self.store.audit(change, now.wall_ms)?;
        }
        self.wrote();
        info!(version, "topology reloaded");
        // Children no longer pinned (removed, re-keyed) lose their links.
        let stale: Vec<LinkId> = self
            .downlinks
            .iter()
            .filter(|(_, slot)| {
                let child = slot.machine.child();
                self.topology.node_by_key(&slot.key).map(|n| n.id) != Some(child)
                    || !may_connect(&self.topology, self.me, child)
            })
            .map(|(link, _)| *link)
            .collect();
        for link in stale {
            self.push(Output::Close {
                link,
                reason: "no longer pinned in the topology".into(),
            });
        }
        self.check_admissions(now)?;
        self.migration_dirty = true;
        self.migration_step(now)?;
        self.plan_dials(now);
        self.flush_links(now);
        Ok(version)
    }

    /// Records a refused reload in the audit log.
    pub fn audit_refused_topology(&mut self, reason: &str, now: Now) -> Result<(), CoreError> {
        self.store.audit(
            AuditEvent::TopologyRefused {
                reason: reason.to_owned(),
            },
            now.wall_ms,
        )?;
        self.wrote();
        Ok(())
    }

    // ---- reconciliation (对账) ----

    /// Queues a reconciliation of every year on the uplinks (or only the one to `peer`):
    /// batches, then receipts, year by year. A connected child named as `peer` is asked to
    /// start one (the child's side always initiates). Returns how many links will reconcile.
    pub fn reconcile(&mut self, peer: Option<NodeId>, now: Now) -> Result<usize, StoreError> {
        self.reconcile_kinds(
            peer,
            &[ReconcileKind::Batches, ReconcileKind::Receipts],
            now,
        )
    }

    /// [`Core::reconcile`] of the given kinds only. A link that comes up compares batches
    /// only (the cheap, urgent kind: what the parent lacks); receipts are compared by the
    /// periodic and on-demand rounds.
    fn reconcile_kinds(
        &mut self,
        peer: Option<NodeId>,
        kinds: &[ReconcileKind],
        now: Now,
    ) -> Result<usize, StoreError> {
        let this_year = reconcile::year_at(now.wall_ms);
        let years = reconcile::years(&self.store, this_year)?;
        let mut links = 0;
        if let Some(child) = peer
            && let Some((link, _)) = self
                .downlinks
                .iter()
                .rev()
                .find(|(_, s)| s.machine.child() == child)
        {
            self.outputs.push_back(Output::Transmit {
                link: *link,
                message: Message::ReconcileAsk,
            });
            links += 1;
        }
        for route in Route::ALL {
            let slot = &mut self.uplinks[route.index()];
            let Some(machine) = slot.machine.as_ref() else {
                continue;
            };
            if peer.is_some_and(|p| p != machine.parent()) || !slot.established {
                continue;
            }
            slot.reconcile_queue.clear();
            for year in &years {
                for kind in kinds {
                    slot.reconcile_queue.push_back(ReconcileScope {
                        kind: *kind,
                        year: *year,
                    });
                }
            }
            slot.next_reconcile_ms = now.mono_ms + self.config.reconcile_every_ms;
            links += 1;
            self.next_session(route, now)?;
        }
        self.flush_links(now);
        Ok(links)
    }

    /// The last reconciliation sessions finished on each uplink, oldest first.
    pub fn reconciled(&self) -> Vec<ReconcileSummary> {
        self.uplinks
            .iter()
            .flat_map(|s| s.reconciled.iter().cloned())
            .collect()
    }

    /// Starts the next queued session on `route`, if none is running.
    fn next_session(&mut self, route: Route, now: Now) -> Result<(), StoreError> {
        let me = self.me;
        let slot = &mut self.uplinks[route.index()];
        if slot.reconciling.is_some() || !slot.established {
            return Ok(());
        }
        let (Some(link), Some(machine)) = (slot.link, slot.machine.as_ref()) else {
            return Ok(());
        };
        let parent = machine.parent();
        let Some(scope) = slot.reconcile_queue.pop_front() else {
            return Ok(());
        };
        let items = reconcile::items(&self.store, &self.topology, me, scope)?;
        let slot = &mut self.uplinks[route.index()];
        let mut initiator = Initiator::new(items);
        let message = match initiator.start() {
            Ok(message) => message,
            Err(e) => {
                warn!(%parent, error = %e, "reconciliation could not start");
                return Ok(());
            }
        };
        self.session_seq += 1;
        // Unique across restarts too (the sequence starts again at 0), so a parent never
        // answers a new session with a responder left from an old one.
        let session = (now.wall_ms << 12) | (self.session_seq & 0xfff);
        slot.reconciling = Some(Reconciling {
            session,
            scope,
            initiator,
            deadline_ms: now.mono_ms + RECONCILE_ROUND_MS,
        });
        self.outputs.push_back(Output::Transmit {
            link,
            message: Message::Reconcile {
                session,
                scope,
                message,
            },
        });
        Ok(())
    }

    /// The parent's reply in a session this node started.
    fn reconcile_reply(
        &mut self,
        route: Route,
        link: LinkId,
        session: u64,
        reply: &[u8],
        now: Now,
    ) -> Result<(), StoreError> {
        let slot = &mut self.uplinks[route.index()];
        let Some(running) = slot.reconciling.as_mut().filter(|r| r.session == session) else {
            return Ok(());
        };
        let parent = slot.machine.as_ref().map(Uplink::parent);
        match running.initiator.handle(reply) {
            Ok(Step::Send(message)) => {
                running.deadline_ms = now.mono_ms + RECONCILE_ROUND_MS;
                let scope = running.scope;
                self.outputs.push_back(Output::Transmit {
                    link,
                    message: Message::Reconcile {
                        session,
                        scope,
                        message,
                    },
                });
                Ok(())
            }
            Ok(Step::Done) => {
                let running = slot.reconciling.take().expect("matched above");
                let scope = running.scope;
                let outcome = running.initiator.finish();
                let parent = parent.expect("a linked route has a machine");
                self.session_done(route, link, parent, session, scope, outcome, now)
            }
            Err(e) => {
                warn!(?parent, error = %e, "reconciliation failed; it runs again later");
                slot.reconciling = None;
                Ok(())
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn session_done(
        &mut self,
        route: Route,
        link: LinkId,
        parent: NodeId,
        session: u64,
        scope: ReconcileScope,
        outcome: Outcome,
        now: Now,
    ) -> Result<(), StoreError> {
        let have: Vec<BatchId> = outcome.have.iter().map(|id| BatchId(*id)).collect();
        let repaired = match scope.kind {
            // Ours and not the parent's: offer them again.
            ReconcileKind::Batches => self.store.requeue(parent, &have)?,
            ReconcileKind::Receipts => 0,
        };
        let parent_only: Vec<[u8; 32]> = outcome
            .need
            .iter()
            .take(wire::IDS_PER_FRAME_MAX)
            .copied()
            .collect();
        let anomalies: Vec<BatchId> = match scope.kind {
            ReconcileKind::Batches => parent_only.iter().map(|id| BatchId(*id)).collect(),
            ReconcileKind::Receipts => Vec::new(),
        };
        if repaired > 0 || !anomalies.is_empty() {
            info!(%parent, year = scope.year, kind = ?scope.kind, repaired, anomalies = anomalies.len(), "reconciled: differences found");
            self.store.audit(
                AuditEvent::Reconciled {
                    peer: parent,
                    year: scope.year,
                    receipts: scope.kind == ReconcileKind::Receipts,
                    reoffered: repaired as u32,
                    anomalies: anomalies.clone(),
                },
                now.wall_ms,
            )?;
            self.wrote();
        }
        let status = self.link_status(parent, route.direction(), now);
        status.reconcile_sessions += 1;
        status.reconcile_rounds += u64::from(outcome.rounds);
        status.reconcile_differences += (outcome.have.len() + outcome.need.len()) as u64;
        let slot = &mut self.uplinks[route.index()];
        slot.reconciled.push(ReconcileSummary {
            peer: parent,
            year: scope.year,
            receipts: scope.kind == ReconcileKind::Receipts,
            reoffered: repaired,
            parent_only: outcome.need.len(),
            rounds: outcome.rounds,
            at_ms: now.wall_ms,
        });
        if slot.reconciled.len() > RECONCILED_KEPT {
            slot.reconciled.remove(0);
        }
        self.outputs.push_back(Output::Transmit {
            link,
            message: Message::ReconcileDone {
                session,
                scope,
                parent_only,
            },
        });
        if repaired > 0 {
            self.fill_from_outbox(route, now)?;
        }
        self.next_session(route, now)
    }

    /// A child's reconciliation message: answer it from what this node holds for the child's
    /// subtree. A new session replaces the child's previous one.
    fn reconcile_answer(
        &mut self,
        link: LinkId,
        session: u64,
        scope: ReconcileScope,
        message: &[u8],
    ) -> Result<(), Broken> {
        let slot = self.downlinks.get(&link).expect("checked by the caller");
        let child = slot.machine.child();
        if slot.responding.as_ref().is_none_or(|r| r.0 != session) {
            let items = reconcile::items(&self.store, &self.topology, child, scope)?;
            let slot = self.downlinks.get_mut(&link).expect("checked above");
            slot.responding = Some((session, scope, Responder::new(items)));
        }
        let slot = self.downlinks.get_mut(&link).expect("checked above");
        let (_, _, responder) = slot.responding.as_mut().expect("just set");
        match responder.handle(message) {
            Ok(reply) => {
                if let Some(status) = self.links.get_mut(&(child, "down")) {
                    status.reconcile_rounds += 1;
                }
                self.outputs.push_back(Output::Transmit {
                    link,
                    message: Message::ReconcileReply {
                        session,
                        message: reply,
                    },
                });
                Ok(())
            }
            Err(e) => {
                slot.responding = None;
                warn!(%child, error = %e, "reconciliation message refused");
                Err(Broken::Protocol(ProtocolError::Unexpected(
                    "a reconciliation message that does not parse",
                )))
            }
        }
    }

    /// The child finished a session: what it lacks that this node holds. Batches are
    /// anomalies (audited); receipts are relayed down again.
    fn reconcile_finished(
        &mut self,
        link: LinkId,
        session: u64,
        scope: ReconcileScope,
        parent_only: Vec<[u8; 32]>,
        now: Now,
    ) -> Result<(), Broken> {
        let slot = self
            .downlinks
            .get_mut(&link)
            .expect("checked by the caller");
        let child = slot.machine.child();
        if slot.responding.as_ref().is_some_and(|r| r.0 == session) {
            slot.responding = None;
        }
        let status = self.link_status(child, "down", now);
        status.reconcile_sessions += 1;
        status.reconcile_differences += parent_only.len() as u64;
        if parent_only.is_empty() {
            return Ok(());
        }
        match scope.kind {
            ReconcileKind::Batches => {
                // Only ids this node holds for the child's subtree count: a child cannot make
                // the parent audit arbitrary ids.
                let mut anomalies = Vec::new();
                for id in parent_only.iter().map(|id| BatchId(*id)) {
                    if let Some(meta) = self.store.meta(&id)?
                        && reconcile::in_subtree(&self.topology, child, meta.origin)
                    {
                        anomalies.push(id);
                    }
                }
                if !anomalies.is_empty() {
                    warn!(%child, year = scope.year, count = anomalies.len(), "reconciliation: this node holds batches of the child's subtree that the child does not");
                    self.store.audit(
                        AuditEvent::Reconciled {
                            peer: child,
                            year: scope.year,
                            receipts: false,
                            reoffered: 0,
                            anomalies,
                        },
                        now.wall_ms,
                    )?;
                    self.wrote();
                }
            }
            ReconcileKind::Receipts => {
                let wanted = parent_only.into_iter().collect();
                let receipts =
                    reconcile::receipts_wanted(&self.store, &self.topology, child, scope, &wanted)?;
                if !receipts.is_empty() {
                    info!(%child, count = receipts.len(), "reconciliation: relaying receipts the child lacks");
                    self.store.queue_relay(child, &receipts)?;
                    self.wrote();
                    if let Some(slot) = self.downlinks.get_mut(&link) {
                        for r in &receipts {
                            slot.relayed.remove(&(r.receipt.batch, r.receipt.receiver));
                        }
                    }
                    self.relay_to(child)?;
                }
            }
        }
        Ok(())
    }

    // ---- outbox ----

    fn outbox_grew(&mut self, now: Now) -> Result<(), StoreError> {
        for route in Route::ALL {
            if self.uplinks[route.index()].link.is_some() {
                self.fill_from_outbox(route, now)?;
            }
        }
        Ok(())
    }

    fn fill_from_outbox(&mut self, route: Route, now: Now) -> Result<(), StoreError> {
        let Some(machine) = self.uplinks[route.index()].machine.as_mut() else {
            return Ok(());
        };
        let mut after: Option<BatchId> = None;
        while machine.capacity() > 0 {
            let page = self
                .store
                .outbox_page(machine.parent(), after.as_ref(), OUTBOX_PAGE)?;
            let Some(last) = page.last().map(|o| o.id) else {
                break;
            };
            let full = page.len() == OUTBOX_PAGE;
            machine.handle_outbox(page, now.mono_ms);
            if !full {
                break;
            }
            after = Some(last);
        }
        Ok(())
    }

    /// Moves every machine's queued frames and sends to outputs.
    fn flush_links(&mut self, now: Now) {
        for route in Route::ALL {
            let slot = &mut self.uplinks[route.index()];
            let (Some(link), Some(machine)) = (slot.link, slot.machine.as_mut()) else {
                continue;
            };
            while let Some(message) = machine.poll_transmit() {
                self.outputs.push_back(Output::Transmit { link, message });
            }
            while let Some(id) = machine.poll_send() {
                let first = proof_to_send(
                    &self.topology,
                    &*self.verifier,
                    &self.store,
                    self.me,
                    machine.parent(),
                    route,
                    &id,
                );
                let first_receipt = match first {
                    Ok(first) => first,
                    Err(e) => {
                        warn!(batch = %id.short(), error = %e, "reading the first receipt failed; sending the batch without it");
                        None
                    }
                };
                self.outputs.push_back(Output::SendBatch {
                    link,
                    id,
                    first_receipt,
                });
            }
            let (peer, pending, in_flight) = (
                machine.parent(),
                machine.pending_len(),
                machine.in_flight_len(),
            );
            let status = self.link_status(peer, route.direction(), now);
            status.pending = pending;
            status.in_flight = in_flight;
        }
        for (link, slot) in &mut self.downlinks {
            while let Some(message) = slot.machine.poll_transmit() {
                self.outputs.push_back(Output::Transmit {
                    link: *link,
                    message,
                });
            }
        }
    }

    // ---- migration ----

    fn migration_deadline(&self) -> Option<u64> {
        let migration = self.migration.as_ref()?;
        let link = self.topology.legacy_link(self.me)?;
        match migration.phase {
            Phase::Verify => {
                let up = self.uplinks[Route::Parent.index()].up_since_ms?;
                Some(up.max(migration.since_ms) + link.verify_window_s * 1000)
            }
            Phase::CutOver => Some(migration.since_ms + link.rollback_window_s * 1000),
            _ => None,
        }
    }

    /// What the migration machine observes now; `None` if this node has no legacy link.
    fn observe(&self, now: Now) -> Result<Option<Observed>, StoreError> {
        let Some(link) = self.topology.legacy_link(self.me) else {
            return Ok(None);
        };
        let parent = self.topology.parent_of(self.me).map(|p| p.id);
        let slot = &self.uplinks[Route::Parent.index()];
        let up_since = slot
            .up_since_ms
            .filter(|_| slot.established && slot.machine.as_ref().map(Uplink::parent) == parent);
        let (delivered, covered) = self.store.coverage(self.me)?;
        Ok(Some(Observed {
            migrate: link.migrate && parent.is_some(),
            new_path_up_since_ms: up_since,
            delivered,
            covered,
            verify_window_ms: link.verify_window_s * 1000,
            rollback_window_ms: link.rollback_window_s * 1000,
            now_ms: now.mono_ms,
        }))
    }

    /// Advances the migration by what is observed, if anything it depends on changed; audits
    /// and persists every phase change, and re-queues held batches for the links the new
    /// phase sends on. Windows run on monotonic time: a restart starts the current phase's
    /// window again (conservative), and a wall-clock step changes nothing.
    fn migration_step(&mut self, now: Now) -> Result<(), StoreError> {
        if !std::mem::take(&mut self.migration_dirty) {
            return Ok(());
        }
        let Some(observed) = self.observe(now)? else {
            self.migration = None;
            return Ok(());
        };
        if self.migration.is_none() {
            // Kept as (phase, since) for stores of earlier versions; `since` was wall time
            // and is ignored: the phase's window starts again now.
            let phase = self
                .store
                .state_get::<(Phase, u64)>(MIGRATION_STATE)
                .ok()
                .flatten()
                .map_or(Phase::Direct, |(phase, _)| phase);
            self.migration = Some(Migration::new(phase, now.mono_ms));
        }
        let migration = self.migration.as_mut().expect("just set");
        let Some(transition) = migration.step(&observed) else {
            return Ok(());
        };
        self.store
            .state_put(MIGRATION_STATE, &(transition.to, 0u64))?;
        self.store.audit(
            AuditEvent::Migration {
                node: self.me,
                phase: transition.to.to_string(),
                detail: transition.reason.clone(),
            },
            now.wall_ms,
        )?;
        if transition.fallback {
            warn!(from = %transition.from, to = %transition.to, reason = %transition.reason, "migration: falling back to the legacy link");
        } else {
            info!(from = %transition.from, to = %transition.to, reason = %transition.reason, "migration phase");
        }
        for target in self.forward_targets() {
            let added = self.store.requeue_unreceipted(target)?;
            if added > 0 {
                info!(peer = %target, batches = added, "queued held batches for a link of the new phase");
            }
        }
        self.wrote();
        // Another step may follow at once (e.g. establish → verify with the path already up).
        self.migration_dirty = true;
        self.plan_dials(now);
        self.outbox_grew(now)?;
        self.migration_step(now)
    }

    /// The migration as `topology status` shows it.
    pub fn migration_status(&self, now: Now) -> Result<serde_json::Value, StoreError> {
        let Some(observed) = self.observe(now)? else {
            return Ok(
                serde_json::json!({"legacy_link": false, "phase": null, "waiting_for": "nothing: no legacy link"}),
            );
        };
        let migration = self
            .migration
            .clone()
            .unwrap_or_else(|| Migration::new(Phase::Direct, now.mono_ms));
        let routes = migration.routes();
        Ok(serde_json::json!({
            "legacy_link": true,
            "phase": migration.phase.to_string(),
            "since_ms": now.wall_ms.saturating_sub(now.mono_ms.saturating_sub(migration.since_ms)),
            "waiting_for": migration.waiting_for(&observed),
            "delivered": observed.delivered,
            "covered": observed.covered,
            "new_path_up": observed.new_path_up_since_ms.is_some(),
            "legacy_open": routes.legacy_open,
            "sends_on_legacy": routes.legacy_sends,
            "sends_on_new_path": routes.parent_sends,
        }))
    }

    /// (new batches go to the parent, the legacy link is kept): at least one must hold for a
    /// node other than the national platform, at every moment.
    pub fn routes_open(&self) -> (bool, bool) {
        let routes = self.routes();
        (routes.parent_sends, routes.legacy_open)
    }

    /// The migration phase now, if this node has a legacy link.
    pub fn migration_phase(&self) -> Option<Phase> {
        self.migration.as_ref().map(|m| m.phase)
    }
}

/// Why handling a frame stopped.
enum Broken {
    Protocol(ProtocolError),
    Store(StoreError),
}

impl From<ProtocolError> for Broken {
    fn from(e: ProtocolError) -> Broken {
        Broken::Protocol(e)
    }
}

impl From<StoreError> for Broken {
    fn from(e: StoreError) -> Broken {
        Broken::Store(e)
    }
}

/// The verifier of planted bug (b): accepts every signature.
#[cfg(feature = "planted-bugs")]
struct AcceptAny;

#[cfg(feature = "planted-bugs")]
impl Verifier for AcceptAny {
    fn verify(&self, _: &PublicKey, _: &[u8], _: &[u8], _: &protocol::Signature) -> bool {
        true
    }
}

/// The proof of first arrival sent with batch `id` to `parent` on `route`. Only a proof the
/// parent will believe is sent (not one signed by a key revoked since): the first receiver's;
/// an origin migrating off a legacy link sends what the national platform signed over it
/// (that history arrived when the legacy link delivered it, not today); sent again to a
/// parent that had receipted it (and lost it), the parent's own receipt; for a batch of
/// another origin, this node's own receipt (it is on the path); last, the earliest receipt
/// from further up the path.
///
/// A batch signed by an origin's key that has ended since is judged by the parent on the
/// proof's date: if the receipt chosen above does not date it before the end, the earliest
/// receipt held from any node on the origin's path is sent instead, when it is earlier. (Found
/// by the simulator, jieyang-year seed 515: a city that lost a batch, and whose own receipt
/// for it was under a key revoked since, took it again on the province's receipt and
/// receipted it anew, dated after the origin's key was retired; when it lost it again, the
/// origin sent that newer receipt rather than the province's older one, and the city
/// quarantined for good a batch its parent and the national platform held.)
fn proof_to_send<K: Kv>(
    topology: &Topology,
    verifier: &dyn Verifier,
    store: &Store<K>,
    me: NodeId,
    parent: NodeId,
    route: Route,
    id: &BatchId,
) -> Result<Option<SignedReceipt>, StoreError> {
    let believable = |r: &SignedReceipt| keys::receipt_signed_validly(topology, r, verifier);
    let origin = store.meta(id)?.map(|m| m.origin);
    let preferred = (|| -> Result<Option<SignedReceipt>, StoreError> {
        if let Some(r) = store.first_receipt(id, me)?.filter(believable) {
            return Ok(Some(r));
        }
        if route == Route::Parent
            && topology.legacy_link(me).is_some()
            && let Some(r) = store.receipt(id, NodeId::NATIONAL)?.filter(believable)
        {
            return Ok(Some(r));
        }
        if let Some(r) = store.receipt(id, parent)?.filter(believable) {
            return Ok(Some(r));
        }
        let Some(origin) = origin else {
            return Ok(None);
        };
        if origin != me
            && let Some(r) = store.receipt(id, me)?.filter(believable)
        {
            return Ok(Some(r));
        }
        earliest_receipt(topology, store, origin, id, &believable, |node| {
            node != me && node != parent
        })
    })()?;
    // Which key signed matters only for an origin with a key that ended (otherwise neither
    // the signature is read nor verified again).
    let Some(origin) = origin.filter(|origin| topology.keys_of(*origin).len() > 1) else {
        return Ok(preferred);
    };
    let Some(signature) = store.signature(id)? else {
        return Ok(preferred);
    };
    let Some((_, state)) = keys::batch_signer(topology, origin, id, &signature, verifier) else {
        return Ok(preferred);
    };
    if state.signs_validly(preferred.as_ref().map(|r| r.receipt.received_at_ms)) {
        return Ok(preferred);
    }
    let earliest = earliest_receipt(topology, store, origin, id, &believable, |_| true)?;
    Ok(match (preferred, earliest) {
        (Some(p), Some(e)) if e.receipt.received_at_ms < p.receipt.received_at_ms => Some(e),
        (Some(p), _) => Some(p),
        (None, e) => e,
    })
}

/// The earliest believable acceptance of batch `id` this node holds from a node on the path
/// of `origin` (the origin aside) that `include` lets through.
fn earliest_receipt<K: Kv>(
    topology: &Topology,
    store: &Store<K>,
    origin: NodeId,
    id: &BatchId,
    believable: &dyn Fn(&SignedReceipt) -> bool,
    include: impl Fn(NodeId) -> bool,
) -> Result<Option<SignedReceipt>, StoreError> {
    let mut earliest = None::<SignedReceipt>;
    for node in topology.path_to_national(origin) {
        if node == origin || !include(node) {
            continue;
        }
        if let Some(r) = store.receipt(id, node)?.filter(|r| believable(r))
            && matches!(r.receipt.verdict, Verdict::Accepted { .. })
            && earliest
                .as_ref()
                .is_none_or(|e| r.receipt.received_at_ms < e.receipt.received_at_ms)
        {
            earliest = Some(r);
        }
    }
    Ok(earliest)
}

/// The audit events for what `next` changes in nodes' keys: a new current key, a key retired
/// or revoked (each from its moment).
fn key_changes(old: &Topology, next: &Topology, now_ms: u64) -> Vec<AuditEvent> {
    let mut events = Vec::new();
    for node in next.nodes() {
        if old
            .node(node.id)
            .is_some_and(|was| was.public_key != node.public_key)
        {
            events.push(AuditEvent::KeyChanged {
                node: node.id,
                key: node.public_key,
                state: "current".into(),
                at_ms: now_ms,
            });
        }
    }
    for key in &next.admissions().old_keys {
        if !old.admissions().old_keys.contains(key) {
            events.push(AuditEvent::KeyChanged {
                node: key.node,
                key: key.public_key,
                state: key.end.as_str().into(),
                at_ms: key.at_ms,
            });
        }
    }
    events
}

/// The label a refusal is counted under: one word per kind of reason, never the reason's
/// text (it names batches and counts), so the set of labels stays small and fixed.
pub fn refusal_reason(rejection: &Rejection) -> &'static str {
    match rejection {
        Rejection::UnknownOrigin(_) | Rejection::NotOwnOrigin { .. } => "unknown_origin",
        Rejection::Verify(VerifyError::HashMismatch { .. }) => "hash_mismatch",
        Rejection::Verify(VerifyError::BadSignature(_)) => "bad_signature",
        Rejection::Verify(VerifyError::Decode(_)) => "undecodable",
        Rejection::UnknownCategory(_) => "unknown_category",
        Rejection::SchemaVersion { .. } => "schema_version",
        Rejection::Records { .. } => "records",
        Rejection::Audit { .. } => "audit",
        Rejection::Manifest(_) => "manifest",
        Rejection::Progress(_) | Rejection::NotProvince(_) => "progress_report",
        Rejection::NotData => "not_data",
        Rejection::NotInProfile { .. } => "profile",
    }
}

/// Every label [`refusal_reason`] gives, and the quarantine's (`key_ended`).
pub const REFUSAL_REASONS: [&str; 13] = [
    "unknown_origin",
    "hash_mismatch",
    "bad_signature",
    "undecodable",
    "unknown_category",
    "schema_version",
    "records",
    "audit",
    "manifest",
    "progress_report",
    "not_data",
    "profile",
    "key_ended",
];

/// What a receiving node's record index and audit make of data batch `id` (the update
/// [`Store::insert_batch`] writes with it), with what [`prepare_received`] took from it
/// beforehand if given: for benchmarks that price a hop's parts.
#[doc(hidden)]
pub fn assess_received<K: Kv>(
    store: &Store<K>,
    registry: &Registry,
    me: NodeId,
    id: BatchId,
    batch: &protocol::Batch,
    prepared: Option<Prepared>,
) -> Result<crate::store::QualityUpdate, StoreError> {
    quality::assess(
        store,
        registry,
        me,
        id,
        batch,
        quality::Audit::Receiver,
        prepared,
    )
    .map(|a| a.update)
}

/// What the record index takes from data batch `batch` alone, as a receiver makes it before
/// the core's lock ([`Prechecked`]): for benchmarks.
#[doc(hidden)]
pub fn prepare_received(
    registry: &Registry,
    id: BatchId,
    batch: &protocol::Batch,
) -> Option<Prepared> {
    quality::prepare(registry, id, batch)
}

/// What a node's record index holds as the current version of each of `keys` (in key order,
/// each once) of `origin`'s `category` in `period`: the batch, and whether it withdraws the
/// record; `None` for a key it does not index. For the simulator, which holds every node's
/// index to the versions read from its held batches.
#[doc(hidden)]
pub fn indexed_current<K: Kv>(
    store: &Store<K>,
    group: (NodeId, &protocol::Category, protocol::Period),
    keys: &[&protocol::RecordKey],
) -> Result<Vec<Option<(BatchId, bool)>>, StoreError> {
    quality::indexed_current(store, group, keys)
}

pub fn may_connect(topology: &Topology, me: NodeId, node: NodeId) -> bool {
    topology.node(node).is_some_and(|n| n.parent == Some(me))
        || (me.is_national() && topology.legacy_link(node).is_some())
}

#[cfg(test)]
mod tests;

/// A data batch carries no field the topology's minimum-necessary profile for its category
/// keeps from travelling upstream.
fn check_profile(
    topology: &Topology,
    registry: &Registry,
    content: &Content,
) -> Result<(), (Rejection, Vec<Problem>)> {
    let Content::Data(batch) = content else {
        return Ok(());
    };
    let (Some(profile), Some(schema)) = (
        topology.profile(&batch.header.category),
        registry.get(&batch.header.category),
    ) else {
        return Ok(());
    };
    protocol::sync::check_profile(batch, schema, |name| profile.allows(name))
}

/// This node's stored receipt as it answers a child on a live link: signed by its current
/// key. A receipt stored before this node was re-keyed carries a retired signature, which
/// the child (holding only the current pinned key for a live peer) would take for a forgery
/// and close the link over, again and again. Signing is deterministic, so a receipt already
/// under the current key comes back unchanged; its content (and so its date) never changes.
fn current_key(receipt: SignedReceipt, signer: &dyn Signer) -> SignedReceipt {
    receipt.receipt.sign_with(signer)
}
