//! The node's store, written against the [`Kv`] seam (sled and batch files in production, an
//! in-memory store under simulation): batch bytes, their signatures, metadata and indexes, per-link outboxes, receipts, receipts to relay down, refused batches
//! with their feedback, and the hash-chained audit log.
//!
//! Guarantees:
//! - Everything that must change together changes in one atomic group (a batch, its
//!   metadata, its index entry, its outbox entry, this node's receipt for it, and its audit
//!   entry).
//! - A batch's bytes are written to `<store>/batches/xx/<id>` (temporary file, `fsync`,
//!   rename, `fsync` of the directory) *before* the sled transaction that records the batch,
//!   so a recorded batch always has its bytes on disk. sled is not trusted with them: values
//!   over ~128 KiB become sled "blob" files that sled 0.34 never fsyncs.
//! - Nothing is durable until [`Store::sync`]. [`Store::sync`] makes every applied change durable: sled's flush, then `fdatasync`
//!   of sled's log file (sled 0.34's own flush is `sync_file_range` on Linux, which survives a
//!   process kill but not a power cut). The node core sends receipts only after it returns.
//! - Every batch read back is re-hashed against its id ([`StoreError::Corrupt`] otherwise),
//!   so on-disk corruption is found, not forwarded.
//! - Keys are big-endian so byte order is numeric order.
//!
//! Tree layout (keys → values, values bincode unless said):
//! - `batches`: id → StoredBatch (origin signature, byte length; the bytes are in the file)
//! - `meta`: id → BatchMeta
//! - `held`: origin u32 ‖ period [4] ‖ category ‖ 0x00 ‖ id → ()   (tallies, reconciliation)
//! - `outbox`: peer u32 ‖ id → Offer                               (to send up a link)
//! - `receipts`: id ‖ receiver u32 → SignedReceipt                  (every hop's receipt)
//! - `relay`: child u32 ‖ id ‖ receiver u32 → SignedReceipt         (to relay down a link)
//! - `refused`: id → Refusal                                       (own batches refused upstream)
//! - `audit`: seq u64 → AuditEntry, hash-chained
//! - `feedback`: origin u32 ‖ period [4] ‖ category ‖ 0x00 ‖ record key ‖ 0x00 ‖ field ‖ 0x00
//!   ‖ rule → FeedbackItem                                         (data-quality items)
//! - `state`: name → value (audit head, last receipt per link; `quarantine/` ‖ id →
//!   Quarantined, a batch signed with an ended key, its bytes in its file like a held batch's)

pub mod file;
pub mod kv;
mod quality;

use std::path::{Path, PathBuf};

use bincode::{Decode, Encode};
use protocol::ids::{BatchId, Digest, NodeId};
use protocol::record::Problem;
use protocol::wire::{Offer, SignedReceipt, Verdict};
use protocol::{Category, Content, ContentKind, Period, SignedBatch};

#[cfg(test)]
pub(crate) use kv::CountingKv;
pub use kv::{BlobPool, CACHE_BYTES, Kv, KvError, MemKv, Op, SledKv, Tree, WriteFault};
pub use quality::{
    Closed, FastMap, FeedbackItem, IndexReader, IndexWrite, IndexWrites, QualityUpdate, Reassessed,
    period_prefix,
};

/// Largest value this store decodes (a batch frame).
const VALUE_BYTES_MAX: usize = protocol::wire::BATCH_FRAME_BYTES_MAX;
/// Entries read per page when a scan walks a whole tree.
const SCAN_PAGE: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}; if another credit-node holds this directory, stop it first")]
    Open { path: PathBuf, source: sled::Error },
    #[error("store: {}{}", .0, sled_advice(.0))]
    Sled(#[from] sled::Error),
    #[error("store: cannot write or make writes durable ({path}): {source}{}", disk_full_advice(.source))]
    Sync {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "store: batch {id} is corrupt or missing on disk: it must be fetched again from a neighbour"
    )]
    Corrupt { id: BatchId },
    #[error("store: value under {tree} does not decode: {message}")]
    Decode { tree: &'static str, message: String },
}

/// What to do about a full disk, for the error message.
fn disk_full_advice(source: &std::io::Error) -> &'static str {
    if source.kind() == std::io::ErrorKind::StorageFull {
        ": the disk is full: free space on it; the node goes on by itself once there is room (no restart needed)"
    } else {
        ""
    }
}

fn sled_advice(error: &sled::Error) -> &'static str {
    match error {
        sled::Error::Io(io) => disk_full_advice(io),
        _ => "",
    }
}

impl From<KvError> for StoreError {
    fn from(error: KvError) -> StoreError {
        match error {
            KvError::Io { path, source } => StoreError::Sync { path, source },
            KvError::Sled(e) => StoreError::Sled(e),
        }
    }
}

impl StoreError {
    /// Whether the disk is full: the operator must free space; nothing accepted is lost.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::Sync { source, .. } | StoreError::Sled(sled::Error::Io(source)) => {
                source.kind() == std::io::ErrorKind::StorageFull
            }
            _ => false,
        }
    }
}

/// What this node knows about a batch it holds.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct BatchMeta {
    pub origin: NodeId,
    pub category: Category,
    pub period: Period,
    pub records: u32,
    pub bytes: u32,
    pub received_at_ms: u64,
    /// The neighbour it came from (this node itself for a local submission).
    pub from: NodeId,
    /// Data, a period manifest or a progress report. (Stores written before progress reports
    /// existed held a `manifest: bool` here; it decodes as `Data` or `Manifest`.)
    pub kind: ContentKind,
    /// The node that first received it from its origin, whose signed receipt (stored beside
    /// this node's own) dates its arrival; `None` at the origin until its parent answers, or
    /// when the sender gave no valid proof.
    pub first: Option<NodeId>,
}

impl BatchMeta {
    /// What an uplink offers its parent for this batch.
    pub fn offer(&self, id: BatchId) -> Offer {
        Offer {
            id,
            origin: self.origin,
            category: self.category.clone(),
            period: self.period,
            bytes: self.bytes,
        }
    }
}

/// What the store keeps of a batch beside its file.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
struct StoredBatch {
    signature: protocol::Signature,
    bytes: u64,
}

/// One of this node's batches that a receiver refused, with what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Refusal {
    pub receiver: NodeId,
    pub reason: String,
    pub problems: Vec<Problem>,
}

/// A batch signed with a key that had ended (retired or revoked) before its first arrival:
/// kept for the operator, never forwarded, not counted as held.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Quarantined {
    pub origin: NodeId,
    /// The neighbour it came from.
    pub from: NodeId,
    /// The ended key that signed it.
    pub key: protocol::PublicKey,
    pub signature: protocol::Signature,
    pub bytes: u64,
    pub received_at_ms: u64,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum AuditEvent {
    Started {
        topology_version: u64,
    },
    BatchSubmitted {
        batch: BatchId,
        category: Category,
        period: Period,
        records: u32,
    },
    BatchAccepted {
        batch: BatchId,
        origin: NodeId,
        from: NodeId,
    },
    BatchRefused {
        batch: BatchId,
        from: NodeId,
        reason: String,
    },
    ReceiptStored {
        batch: BatchId,
        receiver: NodeId,
        accepted: bool,
    },
    /// An uplink (to the parent, or the legacy link to the national platform) came up or
    /// went down: the record from which "never without a path" is checked. "Up" means the
    /// peer accepted this node and answered on the link, not merely that a dial returned.
    Path {
        peer: NodeId,
        up: bool,
    },
    TopologyApplied {
        version: u64,
    },
    TopologyRefused {
        reason: String,
    },
    Migration {
        node: NodeId,
        phase: String,
        detail: String,
    },
    /// A reconciliation session with `peer` found differences: batches this node offered
    /// again, and batches of the child's subtree that the parent holds and the child does not
    /// (anomalies: never had, or lost).
    Reconciled {
        peer: NodeId,
        year: u16,
        receipts: bool,
        reoffered: u32,
        anomalies: Vec<BatchId>,
    },
    /// A batch signed with an ended key, quarantined (see [`Quarantined`]).
    BatchQuarantined {
        batch: BatchId,
        origin: NodeId,
        from: NodeId,
        reason: String,
    },
    /// The topology changed a node's keys: `key` is now `state` (current, retired or revoked)
    /// from `at_ms`.
    KeyChanged {
        node: NodeId,
        key: protocol::PublicKey,
        state: String,
        at_ms: u64,
    },
    /// This node, given a new key, re-signed batches no parent had acknowledged.
    Resigned {
        batches: u32,
    },
    /// A peer was refused a session by its security assessment, or a live one was closed.
    AdmissionRefused {
        peer: NodeId,
        reason: String,
    },
    /// A batch quarantined for want of a proof of first arrival came again with one that
    /// holds: it left the quarantine and was taken.
    QuarantineReleased {
        batch: BatchId,
        from: NodeId,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct AuditEntry {
    pub seq: u64,
    pub at_ms: u64,
    /// BLAKE3 of the previous entry's bytes (zeros for the first).
    pub prev: Digest,
    pub event: AuditEvent,
}

/// Why the audit log does not verify.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit entry {seq}: {message}")]
    Broken { seq: u64, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

const AUDIT_HEAD: &[u8] = b"audit_head";

fn config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<VALUE_BYTES_MAX>,
> {
    bincode::config::standard().with_limit::<VALUE_BYTES_MAX>()
}

fn encode<T: Encode>(value: &T) -> Vec<u8> {
    bincode::encode_to_vec(value, config()).expect("values are built within the limit")
}

fn decode<T: Decode<()>>(tree: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    let (value, used) =
        bincode::decode_from_slice(bytes, config()).map_err(|e| StoreError::Decode {
            tree,
            message: e.to_string(),
        })?;
    if used != bytes.len() {
        return Err(StoreError::Decode {
            tree,
            message: "trailing bytes".into(),
        });
    }
    Ok(value)
}

/// A node's store over a [`Kv`]. Cheap to clone; clones share the storage.
///
/// One writer: every write goes through one owner at a time (the node core), so a group's
/// reads and its writes see the same state. Readers (the operator API) may run beside it.
#[derive(Clone)]
pub struct Store<K: Kv = SledKv> {
    kv: K,
    /// Runs of the record index read before, kept between batches (shared by clones, as
    /// the storage is; a store opened again starts without).
    index_cache: std::sync::Arc<std::sync::Mutex<quality::IndexCache>>,
}

impl Store<SledKv> {
    /// Opens (or creates) the store in `path`: sled in `path/sled`, batch files in
    /// `path/batches`.
    pub fn open(path: &Path) -> Result<Store<SledKv>, StoreError> {
        Ok(Store::new(SledKv::open(path)?))
    }
}

/// Writes that are applied together, with the audit head they extend.
struct Group<'a, K: Kv> {
    store: &'a Store<K>,
    ops: Vec<Op>,
    audit_head: Option<(u64, Digest)>,
}

impl<K: Kv> Group<'_, K> {
    fn insert(&mut self, tree: Tree, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(Op::Insert(tree, key, value));
    }

    fn remove(&mut self, tree: Tree, key: Vec<u8>) {
        self.ops.push(Op::Remove(tree, key));
    }

    fn audit(&mut self, now_ms: u64, event: AuditEvent) -> Result<(), StoreError> {
        let (seq, prev) = match self.audit_head {
            Some(head) => head,
            None => match self.store.kv.get(Tree::State, AUDIT_HEAD)? {
                Some(head) => decode::<(u64, Digest)>("state", &head)?,
                None => (0, Digest([0; 32])),
            },
        };
        let entry = AuditEntry {
            seq,
            at_ms: now_ms,
            prev,
            event,
        };
        let bytes = encode(&entry);
        let digest = Digest(*blake3::hash(&bytes).as_bytes());
        self.insert(Tree::Audit, seq.to_be_bytes().to_vec(), bytes);
        self.insert(Tree::State, AUDIT_HEAD.to_vec(), encode(&(seq + 1, digest)));
        self.audit_head = Some((seq + 1, digest));
        Ok(())
    }

    fn commit(self) -> Result<(), StoreError> {
        if self.ops.is_empty() {
            return Ok(());
        }
        Ok(self.store.kv.apply(self.ops)?)
    }
}

impl<K: Kv> Store<K> {
    pub fn new(kv: K) -> Store<K> {
        Store {
            kv,
            index_cache: Default::default(),
        }
    }

    pub fn kv(&self) -> &K {
        &self.kv
    }

    fn group(&self) -> Group<'_, K> {
        Group {
            store: self,
            ops: Vec::new(),
            audit_head: None,
        }
    }

    /// Every entry of `tree` under `prefix`, read a page at a time.
    fn scan_prefix(
        &self,
        tree: Tree,
        prefix: Vec<u8>,
    ) -> impl Iterator<Item = Result<kv::Entry, StoreError>> + '_ {
        let end = prefix_end(&prefix);
        let mut next = Some(prefix);
        let mut page: std::vec::IntoIter<kv::Entry> = Vec::new().into_iter();
        std::iter::from_fn(move || {
            loop {
                if let Some(entry) = page.next() {
                    return Some(Ok(entry));
                }
                let start = next.take()?;
                match self.kv.scan(tree, &start, end.as_deref(), SCAN_PAGE) {
                    Err(e) => return Some(Err(e.into())),
                    Ok(entries) => {
                        if entries.len() == SCAN_PAGE {
                            let mut after = entries.last().expect("a full page").0.clone();
                            after.push(0);
                            next = Some(after);
                        }
                        if entries.is_empty() {
                            return None;
                        }
                        page = entries.into_iter();
                    }
                }
            }
        })
    }

    /// Makes every applied change durable. Blocking: call it from a blocking context (see
    /// [`Store::sync_async`]).
    pub fn sync(&self) -> Result<(), StoreError> {
        Ok(self.kv.sync()?)
    }

    pub async fn sync_async(&self) -> Result<(), StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.sync())
            .await
            .expect("sync task does not panic")
    }

    /// Stores a batch this node accepted (from a child, or submitted locally when `from` is
    /// this node), with this node's receipt for it, queued for `forward_to` (the parent),
    /// in one group. Returns `false` if the batch was already held (nothing changes).
    /// Not durable until [`Store::sync`].
    #[allow(clippy::too_many_arguments)] // one group: each argument is a part of it
    pub fn insert_batch(
        &self,
        signed: &SignedBatch,
        content: &Content,
        from: NodeId,
        own_receipt: &SignedReceipt,
        first_receipt: Option<&SignedReceipt>,
        forward_to: &[NodeId],
        quality: Option<&QualityUpdate>,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let id = signed.id;
        if self.kv.get(Tree::Batches, id.as_bytes())?.is_some() {
            return Ok(false);
        }
        let summary = content.summary();
        let receiver = own_receipt.receipt.receiver;
        // The proof's receiver (the national platform, for an origin re-sending what its
        // legacy link delivered), else this node when the origin sent it here itself.
        let first = first_receipt
            .map(|r| r.receipt.receiver)
            .or((from == summary.origin && from != receiver).then_some(receiver));
        let meta = BatchMeta {
            origin: summary.origin,
            category: summary.category,
            period: summary.period,
            records: content.records(),
            bytes: signed.bytes.len() as u32,
            received_at_ms: now_ms,
            from,
            kind: summary.kind,
            first,
        };
        // The bytes first: a batch the trees record must have its file.
        self.kv.write_blob(&id, &signed.bytes)?;
        let event = if from == meta.origin && from == receiver {
            AuditEvent::BatchSubmitted {
                batch: id,
                category: meta.category.clone(),
                period: meta.period,
                records: meta.records,
            }
        } else {
            AuditEvent::BatchAccepted {
                batch: id,
                origin: meta.origin,
                from,
            }
        };
        let mut group = self.group();
        group.insert(
            Tree::Batches,
            id.as_bytes().to_vec(),
            encode(&StoredBatch {
                signature: signed.signature,
                bytes: signed.bytes.len() as u64,
            }),
        );
        group.insert(
            Tree::Held,
            held_key(&meta, &id),
            held_value(content, id, quality),
        );
        group.insert(
            Tree::Receipts,
            receipt_key(&id, receiver),
            encode(own_receipt),
        );
        if let Some(first) = first_receipt.filter(|r| r.receipt.receiver != receiver) {
            group.insert(
                Tree::Receipts,
                receipt_key(&id, first.receipt.receiver),
                encode(first),
            );
        }
        let offer = encode(&meta.offer(id));
        for peer in forward_to {
            group.insert(Tree::Outbox, outbox_key(*peer, &id), offer.clone());
        }
        group.insert(Tree::Meta, id.as_bytes().to_vec(), encode(&meta));
        group.audit(now_ms, event)?;
        if let Some(update) = quality {
            self.quality_ops(&mut group, update, now_ms)?;
        }
        group.commit()?;
        Ok(true)
    }

    /// Appends an event to the audit log.
    pub fn audit(&self, event: AuditEvent, now_ms: u64) -> Result<(), StoreError> {
        let mut group = self.group();
        group.audit(now_ms, event)?;
        group.commit()
    }

    /// Stores a receipt from the parent on link `peer` (or relayed from further up), drops the
    /// batch from that link's outbox if the receipt is the peer's, and queues the receipt to be
    /// relayed to the child the batch came from. Returns the child it is to be relayed to.
    pub fn insert_receipt(
        &self,
        me: NodeId,
        peer: NodeId,
        receipt: &SignedReceipt,
        problems: &[Problem],
        quality: Option<&QualityUpdate>,
        now_ms: u64,
    ) -> Result<Option<NodeId>, StoreError> {
        let id = receipt.receipt.batch;
        let receiver = receipt.receipt.receiver;
        let bytes = encode(receipt);
        let key = receipt_key(&id, receiver);
        let new = self.kv.get(Tree::Receipts, &key)?.is_none();
        let mut group = self.group();
        group.insert(Tree::Receipts, key, bytes.clone());
        if receiver == peer {
            group.remove(Tree::Outbox, outbox_key(peer, &id));
            group.insert(
                Tree::State,
                last_receipt_key(peer),
                now_ms.to_be_bytes().to_vec(),
            );
        }
        let accepted = match &receipt.receipt.verdict {
            Verdict::Rejected { reason } => {
                let refusal = Refusal {
                    receiver,
                    reason: reason.clone(),
                    problems: problems.to_vec(),
                };
                group.insert(Tree::Refused, id.as_bytes().to_vec(), encode(&refusal));
                false
            }
            Verdict::Accepted { .. } => true,
        };
        let relay_to = self
            .meta(&id)?
            .and_then(|meta| (meta.from != me).then_some(meta.from));
        if let Some(child) = relay_to {
            group.insert(Tree::Relay, relay_key(child, &id, receiver), bytes);
        }
        if new {
            group.audit(
                now_ms,
                AuditEvent::ReceiptStored {
                    batch: id,
                    receiver,
                    accepted,
                },
            )?;
        }
        if let Some(update) = quality {
            self.quality_ops(&mut group, update, now_ms)?;
        }
        group.commit()?;
        Ok(relay_to)
    }

    /// Drops a batch from a link's outbox without a receipt: only planted bug (c) and tests
    /// do this.
    #[cfg(any(test, feature = "planted-bugs"))]
    pub fn drop_outbox_entry(&self, peer: NodeId, id: &BatchId) -> Result<(), StoreError> {
        self.kv
            .apply(vec![Op::Remove(Tree::Outbox, outbox_key(peer, id))])?;
        Ok(())
    }

    /// Up to `limit` receipts waiting to be relayed down to `child`.
    pub fn relay_pending(
        &self,
        child: NodeId,
        limit: usize,
    ) -> Result<Vec<SignedReceipt>, StoreError> {
        self.scan_prefix(Tree::Relay, child.to_be_bytes().to_vec())
            .take(limit)
            .map(|entry| decode("relay", &entry?.1))
            .collect()
    }

    /// The child stored these relayed receipts: forget them.
    pub fn relay_done(&self, child: NodeId, done: &[(BatchId, NodeId)]) -> Result<(), StoreError> {
        let mut group = self.group();
        for (id, receiver) in done {
            group.remove(Tree::Relay, relay_key(child, id, *receiver));
        }
        group.commit()
    }

    /// A batch, read from its file and re-verified against its id.
    pub fn batch(&self, id: &BatchId) -> Result<Option<SignedBatch>, StoreError> {
        let Some(stored) = self.kv.get(Tree::Batches, id.as_bytes())? else {
            return Ok(None);
        };
        let stored: StoredBatch = decode("batches", &stored)?;
        let Some(bytes) = self.kv.read_blob(id)? else {
            return Err(StoreError::Corrupt { id: *id });
        };
        if bytes.len() as u64 != stored.bytes || BatchId::of(&bytes) != *id {
            return Err(StoreError::Corrupt { id: *id });
        }
        Ok(Some(SignedBatch {
            id: *id,
            signature: stored.signature,
            bytes,
        }))
    }

    pub fn holds(&self, id: &BatchId) -> Result<bool, StoreError> {
        Ok(self.kv.get(Tree::Meta, id.as_bytes())?.is_some())
    }

    pub fn meta(&self, id: &BatchId) -> Result<Option<BatchMeta>, StoreError> {
        self.kv
            .get(Tree::Meta, id.as_bytes())?
            .map(|v| decode("meta", &v))
            .transpose()
    }

    /// The receipt `receiver` gave for a batch, if stored.
    pub fn receipt(
        &self,
        id: &BatchId,
        receiver: NodeId,
    ) -> Result<Option<SignedReceipt>, StoreError> {
        self.kv
            .get(Tree::Receipts, &receipt_key(id, receiver))?
            .map(|v| decode("receipts", &v))
            .transpose()
    }

    /// Whether `receiver`'s receipt for a batch is stored (without decoding it).
    pub fn has_receipt(&self, id: &BatchId, receiver: NodeId) -> Result<bool, StoreError> {
        Ok(self
            .kv
            .get(Tree::Receipts, &receipt_key(id, receiver))?
            .is_some())
    }

    /// Every receipt stored for a batch, in receiver order.
    pub fn receipts_for(&self, id: &BatchId) -> Result<Vec<SignedReceipt>, StoreError> {
        self.scan_prefix(Tree::Receipts, id.as_bytes().to_vec())
            .map(|entry| decode("receipts", &entry?.1))
            .collect()
    }

    /// For a batch that `me` did not originate, the signed receipt of the node that first
    /// received it from its origin (this node's own when it is that node), if held.
    pub fn first_receipt(
        &self,
        id: &BatchId,
        me: NodeId,
    ) -> Result<Option<SignedReceipt>, StoreError> {
        let Some(meta) = self.meta(id)? else {
            return Ok(None);
        };
        match meta.first {
            Some(first) if meta.origin != me => self.receipt(id, first),
            _ => Ok(None),
        }
    }

    /// Up to `limit` outbox entries for the link to `peer`, after `after`.
    pub fn outbox_page(
        &self,
        peer: NodeId,
        after: Option<&BatchId>,
        limit: usize,
    ) -> Result<Vec<Offer>, StoreError> {
        let start = match after {
            Some(id) => {
                let mut key = outbox_key(peer, id);
                key.push(0);
                key
            }
            None => peer.to_be_bytes().to_vec(),
        };
        let end = prefix_end(&peer.to_be_bytes());
        self.kv
            .scan(Tree::Outbox, &start, end.as_deref(), limit)?
            .into_iter()
            .map(|(_, v)| decode("outbox", &v))
            .collect()
    }

    pub fn outbox_len(&self, peer: NodeId) -> usize {
        self.kv
            .count_prefix(Tree::Outbox, &peer.to_be_bytes())
            .unwrap_or(0)
    }

    pub fn last_receipt_ms(&self, peer: NodeId) -> Result<Option<u64>, StoreError> {
        Ok(self
            .kv
            .get(Tree::State, &last_receipt_key(peer))?
            .and_then(|v| v.as_slice().try_into().ok().map(u64::from_be_bytes)))
    }

    /// Every held batch with its metadata, in (origin, period, category) order.
    pub fn held(&self) -> impl Iterator<Item = Result<(BatchId, BatchMeta), StoreError>> + '_ {
        self.held_under(Vec::new())
    }

    /// The batches and manifests `origin` originated that this node holds, in (period,
    /// category) order.
    pub fn held_of(
        &self,
        origin: NodeId,
    ) -> impl Iterator<Item = Result<(BatchId, BatchMeta), StoreError>> + '_ {
        self.held_under(origin.to_be_bytes().to_vec())
    }

    fn held_under(
        &self,
        prefix: Vec<u8>,
    ) -> impl Iterator<Item = Result<(BatchId, BatchMeta), StoreError>> + '_ {
        self.scan_prefix(Tree::Held, prefix)
            .map(move |entry| self.indexed_meta(held_key_id(&entry?.0)))
    }

    /// The metadata of a batch the held index names (an error if none is stored).
    fn indexed_meta(&self, id: BatchId) -> Result<(BatchId, BatchMeta), StoreError> {
        let meta = self.meta(&id)?.ok_or_else(|| StoreError::Decode {
            tree: "held",
            message: format!("index names {id} but no metadata is stored"),
        })?;
        Ok((id, meta))
    }

    /// The batches and manifests of `category` that `origin` originated for `period` (a
    /// month: its days too), read from the index range of the period alone: metadata is
    /// decoded only for those of the category. What the ledger judges a report by.
    pub fn held_in_period<'a>(
        &'a self,
        origin: NodeId,
        category: &'a Category,
        period: Period,
    ) -> impl Iterator<Item = Result<(BatchId, BatchMeta), StoreError>> + 'a {
        self.held_in_period_counted(origin, category, period)
            .map(|entry| entry.map(|(id, meta, _)| (id, meta)))
    }

    /// [`Store::held_in_period`], with what the store recorded of each data batch when it
    /// stored it ([`Counted`]; `None` when not known).
    pub fn held_in_period_counted<'a>(
        &'a self,
        origin: NodeId,
        category: &'a Category,
        period: Period,
    ) -> impl Iterator<Item = Result<(BatchId, BatchMeta, Option<Counted>), StoreError>> + 'a {
        let mut prefix = origin.to_be_bytes().to_vec();
        let period_bytes = period.key_bytes();
        match period {
            Period::Month { .. } => prefix.extend(&period_bytes[..3]),
            Period::Day { .. } => prefix.extend(period_bytes),
        }
        self.scan_prefix(Tree::Held, prefix)
            .filter_map(move |entry| {
                let (key, value) = match entry {
                    Ok(entry) => entry,
                    Err(e) => return Some(Err(e)),
                };
                // origin (4) | period (4) | category | 0 | id (32)
                let named = key.get(8..key.len().saturating_sub(33))?;
                (named == category.as_str().as_bytes())
                    .then(|| Ok((held_key_id(&key), Counted::parse(&value))))
            })
            .map(move |entry| {
                let (id, counted) = entry?;
                let (id, meta) = self.indexed_meta(id)?;
                Ok((id, meta, counted))
            })
    }

    /// The ids of the batches and manifests `origin` originated for periods of `year`, each
    /// with its period's key bytes (`[year hi, year lo, month, day]`), read from the index
    /// keys alone (no metadata is decoded).
    pub fn held_in_year(
        &self,
        origin: NodeId,
        year: u16,
    ) -> impl Iterator<Item = Result<(BatchId, [u8; 4]), StoreError>> + '_ {
        let mut prefix = origin.to_be_bytes().to_vec();
        prefix.extend(year.to_be_bytes());
        self.scan_prefix(Tree::Held, prefix).map(|entry| {
            let (key, _) = entry?;
            let period: [u8; 4] = key[4..8].try_into().expect("held keys hold a period");
            Ok((held_key_id(&key), period))
        })
    }

    /// The years of the periods this node holds anything for, from the index keys alone.
    pub fn held_years(&self) -> Result<std::collections::BTreeSet<u16>, StoreError> {
        let mut years = std::collections::BTreeSet::new();
        for entry in self.scan_prefix(Tree::Held, Vec::new()) {
            let (key, _) = entry?;
            years.insert(u16::from_be_bytes([key[4], key[5]]));
        }
        Ok(years)
    }

    pub fn refused(&self) -> impl Iterator<Item = Result<(BatchId, Refusal), StoreError>> + '_ {
        self.scan_prefix(Tree::Refused, Vec::new()).map(|entry| {
            let (key, value) = entry?;
            let id = BatchId(key.as_slice().try_into().map_err(|_| StoreError::Decode {
                tree: "refused",
                message: "key is not a batch id".into(),
            })?);
            Ok((id, decode("refused", &value)?))
        })
    }

    /// Queues for `peer` every held batch that `peer` has not receipted and did not send us.
    /// Returns how many entries were added. Used when a migration changes where batches go.
    pub fn requeue_unreceipted(&self, peer: NodeId) -> Result<usize, StoreError> {
        let mut group = self.group();
        let mut added = 0;
        for entry in self.held() {
            let (id, meta) = entry?;
            if meta.from == peer || self.receipt(&id, peer)?.is_some() {
                continue;
            }
            let key = outbox_key(peer, &id);
            if self.kv.get(Tree::Outbox, &key)?.is_some() {
                continue;
            }
            group.insert(Tree::Outbox, key, encode(&meta.offer(id)));
            added += 1;
        }
        group.commit()?;
        Ok(added)
    }

    /// Queues for `peer` the held batches among `ids` that are not queued already and were
    /// not refused (reconciliation found the peer lacks them). Returns how many were queued.
    pub fn requeue(&self, peer: NodeId, ids: &[BatchId]) -> Result<usize, StoreError> {
        let mut group = self.group();
        let mut added = 0;
        for id in ids {
            let Some(meta) = self.meta(id)? else {
                continue;
            };
            let key = outbox_key(peer, id);
            if meta.from == peer
                || self.kv.get(Tree::Outbox, &key)?.is_some()
                || self.refusal(id)?.is_some()
            {
                continue;
            }
            group.insert(Tree::Outbox, key, encode(&meta.offer(*id)));
            added += 1;
        }
        group.commit()?;
        Ok(added)
    }

    /// Why a receiver refused one of this node's batches, if one did.
    pub fn refusal(&self, id: &BatchId) -> Result<Option<Refusal>, StoreError> {
        self.kv
            .get(Tree::Refused, id.as_bytes())?
            .map(|v| decode("refused", &v))
            .transpose()
    }

    /// Keeps a batch signed with an ended key apart from the held batches, with why, and
    /// audits it, in one group. Not durable until [`Store::sync`].
    pub fn quarantine(
        &self,
        signed: &SignedBatch,
        record: &Quarantined,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.kv.write_blob(&signed.id, &signed.bytes)?;
        let mut group = self.group();
        group.insert(Tree::State, quarantine_key(&signed.id), encode(record));
        group.audit(
            now_ms,
            AuditEvent::BatchQuarantined {
                batch: signed.id,
                origin: record.origin,
                from: record.from,
                reason: record.reason.clone(),
            },
        )?;
        group.commit()
    }

    /// Whether `id` is quarantined.
    pub fn is_quarantined(&self, id: &BatchId) -> Result<bool, StoreError> {
        Ok(self.kv.get(Tree::State, &quarantine_key(id))?.is_some())
    }

    /// Takes `id` out of the quarantine (it came again with the proof it lacked), with an
    /// audit entry. `false` if it was not quarantined.
    pub fn release(&self, id: &BatchId, from: NodeId, now_ms: u64) -> Result<bool, StoreError> {
        if !self.is_quarantined(id)? {
            return Ok(false);
        }
        let key = quarantine_key(id);
        let mut group = self.group();
        group.remove(Tree::State, key);
        group.audit(now_ms, AuditEvent::QuarantineReleased { batch: *id, from })?;
        group.commit()?;
        Ok(true)
    }

    /// The quarantined batches, in id order.
    pub fn quarantined(
        &self,
    ) -> impl Iterator<Item = Result<(BatchId, Quarantined), StoreError>> + '_ {
        self.scan_prefix(Tree::State, QUARANTINE_PREFIX.to_vec())
            .map(|entry| {
                let (key, value) = entry?;
                let id = key[QUARANTINE_PREFIX.len()..]
                    .try_into()
                    .map(BatchId)
                    .map_err(|_| StoreError::Decode {
                        tree: "state",
                        message: "quarantine key is not a batch id".into(),
                    })?;
                Ok((id, decode("state", &value)?))
            })
    }

    /// The origin signature stored for a held batch.
    pub fn signature(&self, id: &BatchId) -> Result<Option<protocol::Signature>, StoreError> {
        Ok(self
            .kv
            .get(Tree::Batches, id.as_bytes())?
            .map(|v| decode::<StoredBatch>("batches", &v))
            .transpose()?
            .map(|stored| stored.signature))
    }

    /// Replaces the origin signatures of held batches (this node's own, re-signed with its
    /// new key), audited, in one group. Not durable until [`Store::sync`].
    pub fn resign(
        &self,
        signatures: &[(BatchId, protocol::Signature)],
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let mut group = self.group();
        for (id, signature) in signatures {
            let Some(stored) = self.kv.get(Tree::Batches, id.as_bytes())? else {
                continue;
            };
            let mut stored: StoredBatch = decode("batches", &stored)?;
            stored.signature = *signature;
            group.insert(Tree::Batches, id.as_bytes().to_vec(), encode(&stored));
        }
        group.audit(
            now_ms,
            AuditEvent::Resigned {
                batches: signatures.len() as u32,
            },
        )?;
        group.commit()
    }

    /// Queues receipts to be relayed (again) to `child`.
    pub fn queue_relay(&self, child: NodeId, receipts: &[SignedReceipt]) -> Result<(), StoreError> {
        let mut group = self.group();
        for receipt in receipts {
            group.insert(
                Tree::Relay,
                relay_key(child, &receipt.receipt.batch, receipt.receipt.receiver),
                encode(receipt),
            );
        }
        group.commit()
    }

    /// Deletes a batch, its file and its index entries, as if a write had been lost: only
    /// tests do this (unit tests, and feature `test-hooks`), to show reconciliation repairs
    /// it. Returns whether the batch was held.
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn forget_batch(&self, id: &BatchId) -> Result<bool, StoreError> {
        let Some(meta) = self.meta(id)? else {
            return Ok(false);
        };
        let mut ops = vec![
            Op::Remove(Tree::Batches, id.as_bytes().to_vec()),
            Op::Remove(Tree::Meta, id.as_bytes().to_vec()),
            Op::Remove(Tree::Held, held_key(&meta, id)),
        ];
        // The record index keeps the batch's versions, so the counts its period's other
        // batches were stored with no longer add up to what is held: forgotten too (the
        // ledger then reads those batches' keys).
        let mut group = held_key(&meta, id);
        group.truncate(group.len() - 32);
        for entry in self.scan_prefix(Tree::Held, group) {
            let (key, value) = entry?;
            if !value.is_empty() && held_key_id(&key) != *id {
                ops.push(Op::Insert(Tree::Held, key, Vec::new()));
            }
        }
        for receipt in self.receipts_for(id)? {
            ops.push(Op::Remove(
                Tree::Receipts,
                receipt_key(id, receipt.receipt.receiver),
            ));
        }
        self.kv.apply(ops)?;
        self.sync()?;
        Ok(true)
    }

    /// Deletes one stored receipt: only tests do this (feature `test-hooks`).
    #[cfg(feature = "test-hooks")]
    pub fn forget_receipt(&self, id: &BatchId, receiver: NodeId) -> Result<bool, StoreError> {
        if self.receipt(id, receiver)?.is_none() {
            return Ok(false);
        }
        self.kv
            .apply(vec![Op::Remove(Tree::Receipts, receipt_key(id, receiver))])?;
        self.sync()?;
        Ok(true)
    }

    /// Notes that the national platform's receipt for `id` came back through the hierarchy
    /// (relayed by the parent), not by the legacy link.
    pub fn mark_via_hierarchy(&self, id: &BatchId) -> Result<(), StoreError> {
        self.kv
            .apply(vec![Op::Insert(Tree::State, via_key(id), Vec::new())])?;
        Ok(())
    }

    /// Of the batches `origin` originated that the national platform acknowledged, how many
    /// (delivered, covered): covered ones were also acknowledged through the hierarchy.
    pub fn coverage(&self, origin: NodeId) -> Result<(u64, u64), StoreError> {
        let (mut delivered, mut covered) = (0, 0);
        for entry in self.scan_prefix(Tree::Held, origin.to_be_bytes().to_vec()) {
            let id = held_key_id(&entry?.0);
            if self
                .kv
                .get(Tree::Receipts, &receipt_key(&id, NodeId::NATIONAL))?
                .is_some()
            {
                delivered += 1;
                if self.kv.get(Tree::State, &via_key(&id))?.is_some() {
                    covered += 1;
                }
            }
        }
        Ok((delivered, covered))
    }

    pub fn state_get<T: Decode<()>>(&self, name: &str) -> Result<Option<T>, StoreError> {
        self.kv
            .get(Tree::State, name.as_bytes())?
            .map(|v| decode("state", &v))
            .transpose()
    }

    pub fn state_put<T: Encode>(&self, name: &str, value: &T) -> Result<(), StoreError> {
        self.kv.apply(vec![Op::Insert(
            Tree::State,
            name.as_bytes().to_vec(),
            encode(value),
        )])?;
        Ok(())
    }

    /// Walks the audit log from the start and checks every link of the hash chain.
    pub fn verify_audit(&self) -> Result<u64, AuditError> {
        let mut prev = Digest([0; 32]);
        let mut count = 0u64;
        for entry in self.scan_prefix(Tree::Audit, Vec::new()) {
            let (key, value) = entry?;
            let entry: AuditEntry = decode("audit", &value)?;
            let seq = u64::from_be_bytes(key.as_slice().try_into().unwrap_or([0xff; 8]));
            if entry.seq != seq || seq != count {
                return Err(AuditError::Broken {
                    seq,
                    message: format!("expected entry {count}; entries are missing or reordered"),
                });
            }
            if entry.prev != prev {
                return Err(AuditError::Broken {
                    seq,
                    message: "does not chain to the previous entry: the log was altered".into(),
                });
            }
            prev = Digest(*blake3::hash(&value).as_bytes());
            count += 1;
        }
        if let Some(head) = self
            .kv
            .get(Tree::State, AUDIT_HEAD)
            .map_err(StoreError::from)?
        {
            let (seq, digest): (u64, Digest) = decode("state", &head)?;
            if seq != count || digest != prev {
                return Err(AuditError::Broken {
                    seq,
                    message:
                        "the recorded head does not match the last entry: entries were removed"
                            .into(),
                });
            }
        }
        Ok(count)
    }

    /// The newest `count` audit entries, newest first, read by key back from the audit head
    /// (not a scan of the log: the dashboard shows the last few of a log that only grows).
    pub fn audit_tail(&self, count: u64) -> Result<Vec<AuditEntry>, StoreError> {
        let Some(head) = self.kv.get(Tree::State, AUDIT_HEAD)? else {
            return Ok(Vec::new());
        };
        let (next, _): (u64, Digest) = decode("state", &head)?;
        let mut entries = Vec::new();
        for seq in (next.saturating_sub(count)..next).rev() {
            if let Some(bytes) = self.kv.get(Tree::Audit, &seq.to_be_bytes())? {
                entries.push(decode("audit", &bytes)?);
            }
        }
        Ok(entries)
    }

    pub fn audit_entries(&self) -> impl Iterator<Item = Result<AuditEntry, StoreError>> + '_ {
        self.scan_prefix(Tree::Audit, Vec::new())
            .map(|entry| decode("audit", &entry?.1))
    }

    #[cfg(test)]
    fn tamper_audit(&self, seq: u64, event: AuditEvent) {
        let key = seq.to_be_bytes();
        let mut entry: AuditEntry =
            decode("audit", &self.kv.get(Tree::Audit, &key).unwrap().unwrap()).unwrap();
        entry.event = event;
        self.kv
            .apply(vec![Op::Insert(Tree::Audit, key.to_vec(), encode(&entry))])
            .unwrap();
    }
}

/// The first key after every key that starts with `prefix` (`None`: no such key).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn held_key(meta: &BatchMeta, id: &BatchId) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + 4 + meta.category.as_str().len() + 1 + 32);
    key.extend(meta.origin.to_be_bytes());
    key.extend(meta.period.key_bytes());
    key.extend(meta.category.as_str().as_bytes());
    key.push(0);
    key.extend(id.as_bytes());
    key
}

/// What a `held` entry says of a data batch, for the ledger ([`Counted`]): its records whose
/// key no other held batch carried a record of (u32 BE), then the batch it supersedes, if
/// any (32 bytes). Empty when not known: not a data batch, or stored without the record
/// index's update (or by a version before 2026-12-05).
fn held_value(content: &Content, id: BatchId, quality: Option<&QualityUpdate>) -> Vec<u8> {
    let Content::Data(batch) = content else {
        return Vec::new();
    };
    let Some(new_keys) = quality.filter(|q| q.batch == id).and_then(|q| q.new_keys) else {
        return Vec::new();
    };
    let mut value = new_keys.to_be_bytes().to_vec();
    if let Some(supersedes) = batch.header.supersedes {
        value.extend(supersedes.as_bytes());
    }
    value
}

/// What the store recorded of a held data batch when it stored it (`held_value`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    /// Its records whose key no other batch held when it was stored carried a record of:
    /// summed over every data batch of a period held, the records they deliver, each key
    /// once (while no batch of the period was lost: `forget_batch` empties the others).
    pub new_keys: u32,
    pub supersedes: Option<BatchId>,
}

impl Counted {
    fn parse(value: &[u8]) -> Option<Counted> {
        let (new_keys, rest) = value.split_first_chunk::<4>()?;
        let supersedes = match rest.len() {
            0 => None,
            32 => Some(BatchId(rest.try_into().ok()?)),
            _ => return None,
        };
        Some(Counted {
            new_keys: u32::from_be_bytes(*new_keys),
            supersedes,
        })
    }
}

fn held_key_id(key: &[u8]) -> BatchId {
    BatchId(
        key[key.len() - 32..]
            .try_into()
            .expect("held keys end with an id"),
    )
}

fn outbox_key(peer: NodeId, id: &BatchId) -> Vec<u8> {
    let mut key = peer.to_be_bytes().to_vec();
    key.extend(id.as_bytes());
    key
}

/// The key of `receiver`'s receipt for `id` in [`Tree::Receipts`] (checkers read it).
pub fn receipt_key(id: &BatchId, receiver: NodeId) -> Vec<u8> {
    let mut key = id.as_bytes().to_vec();
    key.extend(receiver.to_be_bytes());
    key
}

fn relay_key(child: NodeId, id: &BatchId, receiver: NodeId) -> Vec<u8> {
    let mut key = child.to_be_bytes().to_vec();
    key.extend(id.as_bytes());
    key.extend(receiver.to_be_bytes());
    key
}

const QUARANTINE_PREFIX: &[u8] = b"quarantine/";

fn quarantine_key(id: &BatchId) -> Vec<u8> {
    let mut key = QUARANTINE_PREFIX.to_vec();
    key.extend(id.as_bytes());
    key
}

fn via_key(id: &BatchId) -> Vec<u8> {
    let mut key = b"via_hierarchy/".to_vec();
    key.extend(id.as_bytes());
    key
}

fn last_receipt_key(peer: NodeId) -> Vec<u8> {
    let mut key = b"last_receipt/".to_vec();
    key.extend(peer.to_be_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::NodeKey;
    use protocol::wire::Receipt;

    fn sample_batch(n: usize) -> (SignedBatch, Content, NodeKey) {
        let key = NodeKey::from_seed([9; 32]);
        let (signed, batch) = batch_of("water_fee", "2022-05", n, &key);
        (signed, batch, key)
    }

    /// A batch of `n` records of `category` for `period` from the county, signed by `key`.
    fn batch_of(category: &str, period: &str, n: usize, key: &NodeKey) -> (SignedBatch, Content) {
        let schema = protocol::Registry::builtin().by_name(category).unwrap();
        let origin = NodeId::parse("445281").unwrap();
        let period = Period::parse(period).unwrap();
        let file = sample::sample_csv(schema, origin, period, n, 0, 1);
        let options = crate::ingest::IngestOptions {
            schema,
            origin,
            period,
            encoding: crate::ingest::Encoding::Utf8,
            desensitize_key: &protocol::DesensitizeKey([1; 32]),
            node_key: key,
            batch_records_max: 10_000,
            left_out: &[],
        };
        let report =
            crate::ingest::ingest_bytes(Path::new("t"), file.text.as_bytes(), &options, |_| {})
                .unwrap();
        let signed = report.batches.into_iter().next().unwrap();
        let content = Content::decode(&signed.bytes).unwrap();
        (signed, content)
    }

    /// `held_in_period` finds exactly what filtering all of an origin's batches finds: the
    /// category named, the month with its days, the day alone.
    #[test]
    fn held_in_period_reads_one_category_of_one_month() {
        let store = Store::new(MemKv::new());
        let key = NodeKey::from_seed([9; 32]);
        let county = NodeId::parse("445281").unwrap();
        let held = [
            ("water_fee", "2022-05"),
            ("water_fee", "2022-06"),
            ("water_fee", "2022-04"),
            ("gas_fee", "2022-05"),
            ("admin_penalty", "2022-05"),
            ("admin_penalty", "2022-05-03"),
            ("admin_penalty", "2022-06-01"),
        ];
        for (category, period) in held {
            let (signed, content) = batch_of(category, period, 3, &key);
            let own = receipt(&key, "445281", signed.id);
            store
                .insert_batch(&signed, &content, county, &own, None, &[], None, 1)
                .unwrap();
        }
        for (category, period) in held.iter().chain(&[("electricity_fee", "2022-05")]) {
            let category = Category::parse(category).unwrap();
            let period = Period::parse(period).unwrap();
            let ids = |metas: Vec<(BatchId, BatchMeta)>| -> Vec<BatchId> {
                metas.into_iter().map(|(id, _)| id).collect()
            };
            let expected: Vec<(BatchId, BatchMeta)> = store
                .held_of(county)
                .map(Result::unwrap)
                .filter(|(_, meta)| {
                    meta.category == category
                        && (meta.period == period
                            || matches!(
                                (meta.period, period),
                                (Period::Day { year, month, .. }, Period::Month { year: y, month: m })
                                    if year == y && month == m
                            ))
                })
                .collect();
            let found: Vec<(BatchId, BatchMeta)> = store
                .held_in_period(county, &category, period)
                .map(Result::unwrap)
                .collect();
            assert_eq!(ids(found), ids(expected), "{category} {period}");
        }
        let may = |category: &str| {
            store
                .held_in_period(
                    county,
                    &Category::parse(category).unwrap(),
                    Period::parse("2022-05").unwrap(),
                )
                .count()
        };
        assert_eq!((may("water_fee"), may("admin_penalty")), (1, 2));
    }

    /// Metadata written before progress reports existed (`manifest: bool` where `kind` is now)
    /// still decodes, as the same kind.
    #[test]
    fn metadata_of_older_stores_still_decodes() {
        #[derive(Encode)]
        struct OldMeta {
            origin: NodeId,
            category: Category,
            period: Period,
            records: u32,
            bytes: u32,
            received_at_ms: u64,
            from: NodeId,
            manifest: bool,
            first: Option<NodeId>,
        }
        let county = NodeId::parse("445281").unwrap();
        for (manifest, kind) in [(false, ContentKind::Data), (true, ContentKind::Manifest)] {
            let old = OldMeta {
                origin: county,
                category: Category::parse("water_fee").unwrap(),
                period: Period::parse("2026-03").unwrap(),
                records: 7,
                bytes: 900,
                received_at_ms: 1_800_000_000_000,
                from: county,
                manifest,
                first: Some(NodeId::parse("445200").unwrap()),
            };
            let meta: BatchMeta = decode("meta", &encode(&old)).unwrap();
            assert_eq!(meta.kind, kind);
            assert_eq!((meta.records, meta.first), (7, old.first));
            assert_eq!(
                encode(&meta),
                encode(&old),
                "and it is written the same way"
            );
        }
    }

    fn reopen(path: &Path) -> Store {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Store::open(path) {
                Ok(store) => return store,
                Err(e) if std::time::Instant::now() < deadline => {
                    assert!(e.to_string().contains("lock"), "{e}");
                    std::thread::yield_now();
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn receipt(key: &NodeKey, receiver: &str, id: BatchId) -> SignedReceipt {
        Receipt {
            receiver: NodeId::parse(receiver).unwrap(),
            batch: id,
            origin: NodeId::parse("445281").unwrap(),
            received_at_ms: 1,
            verdict: Verdict::Accepted { warnings: 0 },
        }
        .sign(key)
    }

    #[test]
    fn a_batch_survives_reopen_with_outbox_and_receipt_chain() {
        let dir = tempfile::tempdir().unwrap();
        let (signed, batch, key) = sample_batch(20);
        let county = NodeId::parse("445281").unwrap();
        let city = NodeId::parse("445200").unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let own = receipt(&key, "445281", signed.id);
            assert!(
                store
                    .insert_batch(&signed, &batch, county, &own, None, &[city], None, 5)
                    .unwrap()
            );
            assert!(
                !store
                    .insert_batch(&signed, &batch, county, &own, None, &[city], None, 6)
                    .unwrap(),
                "second insert is a no-op"
            );
            store.sync().unwrap();
        }
        // sled releases its file lock from a background thread after the last handle drops.
        let store = reopen(dir.path());
        assert_eq!(store.batch(&signed.id).unwrap().unwrap(), signed);
        let file = dir
            .path()
            .join("batches")
            .join(&signed.id.to_hex()[..2])
            .join(signed.id.to_hex());
        assert_eq!(
            std::fs::read(&file).unwrap(),
            signed.bytes,
            "the bytes live in the batch file"
        );
        let page = store.outbox_page(city, None, 10).unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].id, signed.id);
        assert!(
            store
                .outbox_page(NodeId::parse("445201").unwrap(), None, 10)
                .unwrap()
                .is_empty()
        );
        let relay = store
            .insert_receipt(
                county,
                city,
                &receipt(&key, "445200", signed.id),
                &[],
                None,
                7,
            )
            .unwrap();
        assert_eq!(relay, None, "own batch: nothing to relay");
        assert_eq!(
            store.outbox_len(city),
            0,
            "receipt drops the batch from the outbox"
        );
        let chain: Vec<NodeId> = store
            .receipts_for(&signed.id)
            .unwrap()
            .iter()
            .map(|r| r.receipt.receiver)
            .collect();
        assert_eq!(chain, [city, county]);
        assert_eq!(store.verify_audit().unwrap(), 2);
    }

    #[test]
    fn receipts_for_a_childs_batch_are_queued_for_relay() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (signed, batch, key) = sample_batch(5);
        let city = NodeId::parse("445200").unwrap();
        let county = NodeId::parse("445281").unwrap();
        let province = NodeId::parse("440000").unwrap();
        store
            .insert_batch(
                &signed,
                &batch,
                county,
                &receipt(&key, "445200", signed.id),
                None,
                &[province],
                None,
                1,
            )
            .unwrap();
        let relay = store
            .insert_receipt(
                city,
                province,
                &receipt(&key, "440000", signed.id),
                &[],
                None,
                2,
            )
            .unwrap();
        assert_eq!(relay, Some(county));
        let pending = store.relay_pending(county, 1024).unwrap();
        assert_eq!(pending.len(), 1);
        store.relay_done(county, &[(signed.id, province)]).unwrap();
        assert!(store.relay_pending(county, 1024).unwrap().is_empty());
    }

    #[test]
    fn the_audit_tail_is_the_end_of_the_log_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.audit_tail(5).unwrap().is_empty());
        for version in 0..12 {
            store
                .audit(AuditEvent::TopologyApplied { version }, version)
                .unwrap();
        }
        let all: Vec<AuditEntry> = store.audit_entries().collect::<Result<_, _>>().unwrap();
        let mut tail = store.audit_tail(5).unwrap();
        assert_eq!(tail.len(), 5);
        tail.reverse();
        assert_eq!(tail, all[all.len() - 5..]);
        assert_eq!(store.audit_tail(100).unwrap().len(), all.len());
    }

    #[test]
    fn tampering_with_the_audit_log_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for version in 1..=3 {
            store
                .audit(AuditEvent::TopologyApplied { version }, version)
                .unwrap();
        }
        assert_eq!(store.verify_audit().unwrap(), 3);
        store.tamper_audit(1, AuditEvent::TopologyApplied { version: 99 });
        let error = store.verify_audit().unwrap_err().to_string();
        assert!(error.contains("audit entry 2"), "{error}");
    }

    #[test]
    fn a_corrupted_batch_is_found_on_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (mut signed, batch, key) = sample_batch(3);
        let id = signed.id;
        let last = signed.bytes.len() - 1;
        signed.bytes[last] ^= 1;
        store
            .insert_batch(
                &signed,
                &batch,
                batch.summary().origin,
                &receipt(&key, "445281", id),
                None,
                &[],
                None,
                1,
            )
            .unwrap();
        assert!(matches!(store.batch(&id), Err(StoreError::Corrupt { .. })));
    }
}
