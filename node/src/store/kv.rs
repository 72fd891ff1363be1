//! The storage seam under [`super::Store`]: a few ordered key-value trees written in atomic
//! groups, content-addressed batch files, and a `sync` that makes everything written so far
//! durable. Two real implementations: [`SledKv`] (sled plus fsynced batch files, what a node
//! runs on) and [`MemKv`] (in memory, for simulation), which keeps what was written apart from
//! what is durable, loses the former on a simulated crash, and can be told to fail writes.
//!
//! Guarantees every implementation gives:
//! - [`Kv::apply`] is atomic: all of a group's writes are seen, or none.
//! - After [`Kv::sync`] returns, everything applied before it survives a crash.
//! - A batch file is written before the group that records it is applied; its bytes are
//!   re-hashed by the store on read.
//!
//! Shape: nothing here is sled-specific beyond [`SledKv`], so a networked database can
//! implement [`Kv`] for the national tier (trees become tables, `sync` a commit).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use protocol::BatchId;

/// The trees of a store. Keys within a tree are ordered bytewise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tree {
    Batches,
    Meta,
    Held,
    Outbox,
    Receipts,
    Relay,
    Refused,
    Audit,
    State,
    Feedback,
    Index,
}

impl Tree {
    pub const ALL: [Tree; 11] = [
        Tree::Batches,
        Tree::Meta,
        Tree::Held,
        Tree::Outbox,
        Tree::Receipts,
        Tree::Relay,
        Tree::Refused,
        Tree::Audit,
        Tree::State,
        Tree::Feedback,
        Tree::Index,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Tree::Batches => "batches",
            Tree::Meta => "meta",
            Tree::Held => "held",
            Tree::Outbox => "outbox",
            Tree::Receipts => "receipts",
            Tree::Relay => "relay",
            Tree::Refused => "refused",
            Tree::Audit => "audit",
            Tree::State => "state",
            Tree::Feedback => "feedback",
            Tree::Index => "index",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One write of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Insert(Tree, Vec<u8>, Vec<u8>),
    Remove(Tree, Vec<u8>),
}

/// Why the storage could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
}

impl KvError {
    /// Whether the error is the disk (or the simulated disk) being full.
    pub fn is_disk_full(&self) -> bool {
        match self {
            KvError::Io { source, .. } | KvError::Sled(sled::Error::Io(source)) => {
                source.kind() == std::io::ErrorKind::StorageFull
            }
            KvError::Sled(_) => false,
        }
    }
}

/// A key and its value, as scans return them.
pub type Entry = (Vec<u8>, Vec<u8>);

/// The narrow interface the store is written against.
pub trait Kv: Clone + Send + Sync + 'static {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, KvError>;
    /// Up to `limit` entries with `start <= key` (and `key < end` when given), in order.
    fn scan(
        &self,
        tree: Tree,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, KvError>;
    fn count_prefix(&self, tree: Tree, prefix: &[u8]) -> Result<usize, KvError>;
    /// Applies a group of writes atomically. Not durable until [`Kv::sync`].
    fn apply(&self, ops: Vec<Op>) -> Result<(), KvError>;
    /// Writes a batch's bytes. A file already there is kept (content-addressed).
    fn write_blob(&self, id: &BatchId, bytes: &[u8]) -> Result<(), KvError>;
    fn read_blob(&self, id: &BatchId) -> Result<Option<Vec<u8>>, KvError>;
    /// Makes everything applied so far durable.
    fn sync(&self) -> Result<(), KvError>;
}

/// Page cache per store; sled's default is 1 GiB, and tests run several nodes per machine.
pub const CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// Bytes of groups kept for replay ([`SledKv`]) before `apply` syncs by itself. The node
/// syncs after every burst of writes, so this is reached only if nothing asks for a sync.
const REDO_BYTES_MAX: usize = 64 * 1024 * 1024;

/// sled for the trees, one fsynced file per batch for the bytes.
///
/// **Recovery from a failed write (a full disk).** sled 0.34 keeps the first IO error of its
/// log as a "global error": every later write and flush fails with it until the database is
/// opened again, and the writes sitting in the log buffer that failed never reach the disk
/// although sled applied them in memory (a group may even be applied in part). So this keeps
/// every group applied since the last sync that succeeded (the redo log). After sled reported
/// an error, the next `apply` or `sync` reopens sled — which recovers what reached the disk, a
/// prefix of the groups in order — and applies the redo log again: each op sets or removes a
/// key, so replaying the whole log over any prefix of it gives exactly the state the node
/// believes it wrote. While the disk is still full this fails and is tried again at the next
/// write or sync; once space returns the store goes on by itself, nothing acknowledged lost.
/// A failed `fdatasync` counts the same (after one, Linux may have dropped the dirty pages).
#[derive(Clone)]
pub struct SledKv {
    shared: Arc<SledShared>,
}

struct SledShared {
    /// The open database; `None` only between dropping a broken one and opening it again.
    open: RwLock<Option<SledOpen>>,
    redo: Mutex<Redo>,
    /// sled's directory.
    path: PathBuf,
    /// Batch files, `xx/<id hex>` by the id's first byte.
    files: PathBuf,
    /// Writes them (direct IO where the filesystem takes it).
    writer: super::file::FileWriter,
}

struct SledOpen {
    db: sled::Db,
    trees: Vec<sled::Tree>,
}

/// The groups applied since the last sync that succeeded, in order, each with its number.
#[derive(Default)]
struct Redo {
    groups: std::collections::VecDeque<(u64, Vec<Op>)>,
    /// The number of the last group applied.
    last: u64,
    bytes: usize,
    /// sled reported an error on a write or a sync: reopen and replay before the next one.
    broken: bool,
    /// Times sled was reopened after an error.
    reopened: u64,
    /// When reopening last failed, and why: it is not tried again before
    /// [`REOPEN_INTERVAL`] (reopening a large store reads its whole log).
    failed: Option<(Instant, std::io::ErrorKind, String)>,
}

/// Least time between two attempts to reopen sled after a failed one.
const REOPEN_INTERVAL: Duration = Duration::from_secs(1);

fn open_sled(path: &Path) -> Result<SledOpen, sled::Error> {
    let db = sled::Config::new()
        .path(path)
        .cache_capacity(CACHE_BYTES)
        .flush_every_ms(Some(1000))
        .open()?;
    let trees = Tree::ALL
        .iter()
        .map(|t| db.open_tree(t.name()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SledOpen { db, trees })
}

/// [`open_sled`] right after the previous handle was dropped: sled's background flusher may
/// hold the file lock a moment longer (seen once, under load, in
/// `sled_is_reopened_and_the_unsynced_groups_replayed_after_a_failure`), so a lock refusal
/// is retried for up to a second.
fn open_sled_again(path: &Path) -> Result<SledOpen, sled::Error> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match open_sled(path) {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            result => return result,
        }
    }
}

fn apply_to(open: &SledOpen, ops: &[Op]) -> Result<(), KvError> {
    use sled::Transactional;
    use sled::transaction::TransactionError;
    let trees: &[sled::Tree] = &open.trees;
    // The closure may run more than once; it only writes.
    let result: Result<(), TransactionError<()>> = trees.transaction(|tx| {
        for op in ops {
            match op {
                Op::Insert(tree, key, value) => {
                    tx[tree.index()].insert(key.as_slice(), value.as_slice())?;
                }
                Op::Remove(tree, key) => {
                    tx[tree.index()].remove(key.as_slice())?;
                }
            }
        }
        Ok(())
    });
    match result {
        Ok(()) => Ok(()),
        Err(TransactionError::Storage(e)) => Err(KvError::Sled(e)),
        Err(TransactionError::Abort(())) => unreachable!("the group never aborts"),
    }
}

fn op_bytes(op: &Op) -> usize {
    match op {
        Op::Insert(_, key, value) => key.len() + value.len(),
        Op::Remove(_, key) => key.len(),
    }
}

impl SledKv {
    /// Opens (or creates) sled in `path/sled` and batch files in `path/batches`.
    pub fn open(path: &Path) -> Result<SledKv, super::StoreError> {
        let files = path.join("batches");
        std::fs::create_dir_all(&files).map_err(|source| super::StoreError::Sync {
            path: files.clone(),
            source,
        })?;
        let sled_path = path.join("sled");
        let open = open_sled(&sled_path).map_err(|source| super::StoreError::Open {
            path: sled_path.clone(),
            source,
        })?;
        Ok(SledKv {
            shared: Arc::new(SledShared {
                open: RwLock::new(Some(open)),
                redo: Mutex::new(Redo::default()),
                path: sled_path,
                files,
                writer: super::file::FileWriter::default(),
            }),
        })
    }

    /// How many times sled was reopened after a failed write (for tests and the log).
    pub fn reopened(&self) -> u64 {
        self.redo().reopened
    }

    fn redo(&self) -> std::sync::MutexGuard<'_, Redo> {
        self.shared
            .redo
            .lock()
            .expect("the redo lock is never poisoned")
    }

    /// Runs `f` on the open database (reopening it first if a reopen failed). Not to be
    /// called with the redo lock held.
    fn with_open<R>(&self, f: impl Fn(&SledOpen) -> Result<R, KvError>) -> Result<R, KvError> {
        if let Some(result) = self.if_open(&f) {
            return result;
        }
        self.usable(&mut self.redo())?;
        self.if_open(&f).unwrap_or_else(|| Err(closed()))
    }

    /// Runs `f` on the open database, `None` if it is not open.
    fn if_open<R>(
        &self,
        f: impl FnOnce(&SledOpen) -> Result<R, KvError>,
    ) -> Option<Result<R, KvError>> {
        let open = self
            .shared
            .open
            .read()
            .expect("the sled lock is never poisoned");
        open.as_ref().map(f)
    }

    fn blob_path(&self, id: &BatchId) -> PathBuf {
        let hex = id.to_hex();
        self.shared.files.join(&hex[..2]).join(hex)
    }

    /// Makes sure sled is open and not broken, reopening and replaying if needed. Called with
    /// the redo lock held.
    fn usable(&self, redo: &mut Redo) -> Result<(), KvError> {
        let closed = self
            .shared
            .open
            .read()
            .expect("the sled lock is never poisoned")
            .is_none();
        if redo.broken || closed {
            self.recover(redo)?;
        }
        Ok(())
    }

    /// Reopens sled and applies the redo log again. Called with the redo lock held.
    fn recover(&self, redo: &mut Redo) -> Result<(), KvError> {
        if let Some((at, kind, reason)) = &redo.failed
            && at.elapsed() < REOPEN_INTERVAL
        {
            return Err(KvError::Io {
                path: self.shared.path.clone(),
                source: std::io::Error::new(
                    *kind,
                    format!("waiting to reopen the store after a failed write: {reason}"),
                ),
            });
        }
        let result = self.reopen(redo);
        redo.failed = match &result {
            Ok(()) => None,
            Err(e) => {
                let kind = match e {
                    KvError::Io { source, .. } | KvError::Sled(sled::Error::Io(source)) => {
                        source.kind()
                    }
                    KvError::Sled(_) => std::io::ErrorKind::Other,
                };
                Some((Instant::now(), kind, e.to_string()))
            }
        };
        result
    }

    fn reopen(&self, redo: &mut Redo) -> Result<(), KvError> {
        let mut open = self
            .shared
            .open
            .write()
            .expect("the sled lock is never poisoned");
        // Drop the broken database first: sled holds an exclusive lock on its files.
        drop(open.take());
        redo.broken = true;
        let reopened = open_sled_again(&self.shared.path)?;
        let replayed = redo
            .groups
            .iter()
            .try_for_each(|(_, group)| apply_to(&reopened, group));
        *open = Some(reopened);
        replayed?;
        redo.broken = false;
        redo.reopened += 1;
        tracing::warn!(
            path = %self.shared.path.display(),
            replayed = redo.groups.len(),
            "store reopened after a failed write; the writes not yet durable were applied again"
        );
        Ok(())
    }

    /// Forgets the groups up to `upto`: they are durable.
    fn durable(redo: &mut Redo, upto: u64) {
        while redo.groups.front().is_some_and(|(seq, _)| *seq <= upto) {
            let (_, group) = redo.groups.pop_front().expect("just checked");
            redo.bytes -= group.iter().map(op_bytes).sum::<usize>();
        }
    }
}

/// sled's flush and our `fdatasync` of its log file.
fn flush(open: &SledOpen, path: &Path) -> Result<(), KvError> {
    open.db.flush()?;
    let file = path.join("db");
    std::fs::File::open(&file)
        .and_then(|f| f.sync_data())
        .map_err(|source| KvError::Io { path: file, source })
}

/// The database could not be opened again after a failure.
fn closed() -> KvError {
    KvError::Io {
        path: PathBuf::from("sled"),
        source: std::io::Error::other("the store could not be reopened after a failed write"),
    }
}

impl Kv for SledKv {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        self.with_open(|open| Ok(open.trees[tree.index()].get(key)?.map(|v| v.to_vec())))
    }

    fn scan(
        &self,
        tree: Tree,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, KvError> {
        self.with_open(|open| {
            let tree = &open.trees[tree.index()];
            let iter = match end {
                Some(end) => tree.range(start..end),
                None => tree.range(start..),
            };
            iter.take(limit)
                .map(|e| {
                    e.map(|(k, v)| (k.to_vec(), v.to_vec()))
                        .map_err(KvError::from)
                })
                .collect()
        })
    }

    fn count_prefix(&self, tree: Tree, prefix: &[u8]) -> Result<usize, KvError> {
        self.with_open(|open| {
            let mut count = 0;
            for key in open.trees[tree.index()].scan_prefix(prefix).keys() {
                key?;
                count += 1;
            }
            Ok(count)
        })
    }

    fn apply(&self, ops: Vec<Op>) -> Result<(), KvError> {
        let mut redo = self.redo();
        self.usable(&mut redo)?;
        let applied = self
            .if_open(|open| apply_to(open, &ops))
            .unwrap_or_else(|| Err(closed()));
        if let Err(e) = applied {
            redo.broken = true;
            return Err(e);
        }
        redo.bytes += ops.iter().map(op_bytes).sum::<usize>();
        redo.last += 1;
        let seq = redo.last;
        redo.groups.push_back((seq, ops));
        if redo.bytes > REDO_BYTES_MAX {
            // Nothing asked for a sync for a long while: make the log short again. A failure
            // shows at the next write or sync.
            match self.if_open(|open| flush(open, &self.shared.path)) {
                Some(Ok(())) => SledKv::durable(&mut redo, seq),
                _ => redo.broken = true,
            }
        }
        Ok(())
    }

    /// Temporary file (written with direct IO where the filesystem takes it:
    /// [`super::file`]), `fsync`, rename, `fsync` of the directory: a batch file is durable
    /// before the group that records it is applied, so a recorded batch always has its bytes
    /// (sled 0.34 would keep values this large as blob files it never fsyncs). A temporary
    /// file that could not be completed (a full disk) is removed, so it holds no space.
    fn write_blob(&self, id: &BatchId, bytes: &[u8]) -> Result<(), KvError> {
        let path = self.blob_path(id);
        if std::fs::read(&path).is_ok_and(|existing| BatchId::of(&existing) == *id) {
            return Ok(());
        }
        let dir = path.parent().expect("batch files sit in a subdirectory");
        let io = |source| KvError::Io {
            path: path.clone(),
            source,
        };
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io)?;
            std::fs::File::open(&self.shared.files)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        let tmp = dir.join(format!(".{}.tmp", id.to_hex()));
        let written = self
            .shared
            .writer
            .write_synced(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(e));
        }
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)
    }

    fn read_blob(&self, id: &BatchId) -> Result<Option<Vec<u8>>, KvError> {
        let path = self.blob_path(id);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(KvError::Io { path, source }),
        }
    }

    /// sled's flush (on Linux 0.34.7 a `sync_file_range`), then `fdatasync` of sled's log file
    /// by us, so the writes survive a power cut, not only a process kill. After a failure,
    /// reopens and replays first (see [`SledKv`]). Writes go on while it flushes.
    fn sync(&self) -> Result<(), KvError> {
        let upto = {
            let mut redo = self.redo();
            self.usable(&mut redo)?;
            redo.last
        };
        let flushed = self
            .if_open(|open| flush(open, &self.shared.path))
            .unwrap_or_else(|| Err(closed()));
        let mut redo = self.redo();
        match flushed {
            Ok(()) => {
                SledKv::durable(&mut redo, upto);
                Ok(())
            }
            Err(e) => {
                redo.broken = true;
                Err(e)
            }
        }
    }
}

/// How a [`MemKv`] is told to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteFault {
    #[default]
    None,
    /// Every write and sync fails with "no space left on device" until cleared.
    DiskFull,
}

/// Keys up to this long (every key the store makes but held keys of long category names) are
/// kept inline, where a key is kept at all: in the ordered trees' nodes and in the undo log.
const INLINE_KEY: usize = 62;

/// A key, ordered, compared and hashed exactly as its bytes are, so maps keyed by it are
/// searched with a plain `&[u8]`.
#[derive(Clone)]
enum Key {
    Inline { len: u8, bytes: [u8; INLINE_KEY] },
    Heap(Box<[u8]>),
}

impl Key {
    fn new(key: &[u8]) -> Key {
        if key.len() <= INLINE_KEY {
            let mut bytes = [0; INLINE_KEY];
            bytes[..key.len()].copy_from_slice(key);
            Key::Inline {
                len: key.len() as u8,
                bytes,
            }
        } else {
            Key::Heap(key.into())
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Key::Heap(bytes) => bytes,
        }
    }
}

impl std::borrow::Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Key) -> std::cmp::Ordering {
        self.as_slice().cmp(other.as_slice())
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_slice().fmt(f)
    }
}

/// Where a record sits in its tree's [`Values`]: the key (for hashed trees; ordered trees keep
/// their keys in the index), then the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    page: u32,
    start: u32,
    key_len: u32,
    len: u32,
}

impl Slot {
    const EMPTY: Slot = Slot {
        page: 0,
        start: 0,
        key_len: 0,
        len: 0,
    };

    fn bytes(self) -> usize {
        self.key_len as usize + self.len as usize
    }
}

/// Records are packed into pages of up to this size (a larger one gets a page of its own).
const PAGE: usize = 64 * 1024;
/// The first page of a tree.
const FIRST_PAGE: usize = 512;

/// The records of one tree, packed into pages rather than allocated one by one: a province's
/// store holds millions of small values, and as separate allocations they would cost a header
/// each, take long to free, and leave the allocator's free lists full of small holes between
/// long-lived values (which slows every later small allocation of the process: glibc's
/// `calloc`, which bincode uses for every string it decodes, then walks cold free lists).
/// Space of records overwritten or removed is reclaimed by compaction once it outweighs the
/// live ones.
#[derive(Debug, Default)]
struct Values {
    /// Full pages; `current` is the page after them.
    full: Vec<Vec<u8>>,
    current: Vec<u8>,
    /// Bytes referenced (by the index, or by the undo log).
    live: usize,
    /// Bytes no longer referenced, until the next compaction.
    dead: usize,
}

impl Values {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Slot {
        let n = key.len() + value.len();
        if n == 0 {
            return Slot::EMPTY;
        }
        // Pages are never grown in place (no copying): each new page is twice the last, from
        // small (most stores stay small) up to [`PAGE`].
        if self.current.len() + n > self.current.capacity() {
            let capacity = match self.current.capacity() {
                0 => FIRST_PAGE,
                last => (2 * last).min(PAGE),
            };
            let next = Vec::with_capacity(capacity.max(n));
            let full = std::mem::replace(&mut self.current, next);
            if full.capacity() > 0 {
                self.full.push(full);
            }
        }
        let start = self.current.len();
        self.current.extend_from_slice(key);
        self.current.extend_from_slice(value);
        self.live += n;
        Slot {
            page: self.full.len() as u32,
            start: start as u32,
            key_len: key.len() as u32,
            len: value.len() as u32,
        }
    }

    fn record(&self, slot: Slot) -> &[u8] {
        if slot.bytes() == 0 {
            return &[];
        }
        let page = match self.full.get(slot.page as usize) {
            Some(page) => page,
            None => &self.current,
        };
        let start = slot.start as usize;
        &page[start..start + slot.bytes()]
    }

    fn key(&self, slot: Slot) -> &[u8] {
        &self.record(slot)[..slot.key_len as usize]
    }

    fn value(&self, slot: Slot) -> &[u8] {
        &self.record(slot)[slot.key_len as usize..]
    }

    /// The record at `slot` is no longer referenced.
    fn release(&mut self, slot: Slot) {
        self.live -= slot.bytes();
        self.dead += slot.bytes();
    }

    fn wants_compaction(&self) -> bool {
        self.dead > PAGE && self.dead > self.live
    }
}

/// A fast hash of the store's own keys, in the manner of rustc's FxHasher, folded to 32 bits
/// (never 0, which marks an empty entry).
fn hash_key(key: &[u8]) -> u32 {
    let mut hash: u64 = key.len() as u64;
    let mut add = |word: u64| {
        hash = (hash.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    };
    let mut chunks = key.chunks_exact(8);
    for chunk in &mut chunks {
        add(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut last = [0; 8];
        last[..rest.len()].copy_from_slice(rest);
        add(u64::from_le_bytes(last));
    }
    ((hash >> 32) as u32 ^ hash as u32) | 1
}

/// One bucket of a [`Hashed`] index: a key's hash and where its record is (hash 0: empty).
#[derive(Debug, Clone, Copy)]
struct Bucket {
    hash: u32,
    slot: Slot,
}

const EMPTY_BUCKET: Bucket = Bucket {
    hash: 0,
    slot: Slot::EMPTY,
};

/// A hashed index: open addressing with linear probing over buckets of 20 bytes; keys live in
/// the records, before their values. A lookup is one probe into a compact table and one read
/// of the record, not a walk down a tree of cold nodes. A scan sorts the keys once and reuses
/// the order until the tree is written.
#[derive(Debug, Default)]
struct Hashed {
    /// A power of two long (or empty).
    entries: Vec<Bucket>,
    len: usize,
    /// The records in key order, until the next write.
    sorted: Option<Vec<Slot>>,
}

impl Hashed {
    fn home(&self, hash: u32) -> usize {
        // Fibonacci hashing: the top bits of the product, as many as the table needs.
        let bits = self.entries.len().trailing_zeros();
        (hash.wrapping_mul(0x9E37_79B9) as u64 >> (32 - bits)) as usize
    }

    /// The position of `key`'s entry, if it has one.
    fn find(&self, values: &Values, key: &[u8], hash: u32) -> Option<usize> {
        if self.entries.is_empty() {
            return None;
        }
        let mask = self.entries.len() - 1;
        let mut at = self.home(hash);
        loop {
            let entry = self.entries[at];
            if entry.hash == 0 {
                return None;
            }
            if entry.hash == hash && values.key(entry.slot) == key {
                return Some(at);
            }
            at = (at + 1) & mask;
        }
    }

    fn get(&self, values: &Values, key: &[u8]) -> Option<Slot> {
        self.find(values, key, hash_key(key))
            .map(|at| self.entries[at].slot)
    }

    /// Points `key` (whose record is at `slot`) there; returns where it was.
    fn insert(&mut self, values: &Values, key: &[u8], slot: Slot) -> Option<Slot> {
        self.sorted = None;
        let hash = hash_key(key);
        if let Some(at) = self.find(values, key, hash) {
            return Some(std::mem::replace(&mut self.entries[at].slot, slot));
        }
        // At most 3/4 full: linear probing stays short.
        if (self.len + 1) * 4 > self.entries.len() * 3 {
            self.grow();
        }
        let mask = self.entries.len() - 1;
        let mut at = self.home(hash);
        while self.entries[at].hash != 0 {
            at = (at + 1) & mask;
        }
        self.entries[at] = Bucket { hash, slot };
        self.len += 1;
        None
    }

    fn grow(&mut self) {
        let capacity = (2 * self.entries.len()).max(16);
        let old = std::mem::replace(&mut self.entries, vec![EMPTY_BUCKET; capacity]);
        let mask = capacity - 1;
        for entry in old.into_iter().filter(|e| e.hash != 0) {
            let mut at = self.home(entry.hash);
            while self.entries[at].hash != 0 {
                at = (at + 1) & mask;
            }
            self.entries[at] = entry;
        }
    }

    fn remove(&mut self, values: &Values, key: &[u8]) -> Option<Slot> {
        self.sorted = None;
        let mut hole = self.find(values, key, hash_key(key))?;
        let removed = self.entries[hole].slot;
        self.len -= 1;
        // Backward shift: later entries of the run move up, so no probe stops early.
        let mask = self.entries.len() - 1;
        let mut at = (hole + 1) & mask;
        loop {
            let entry = self.entries[at];
            if entry.hash == 0 {
                break;
            }
            let home = self.home(entry.hash);
            if (at.wrapping_sub(home) & mask) >= (at.wrapping_sub(hole) & mask) {
                self.entries[hole] = entry;
                hole = at;
            }
            at = (at + 1) & mask;
        }
        self.entries[hole] = EMPTY_BUCKET;
        Some(removed)
    }

    fn sorted(&mut self, values: &Values) -> &[Slot] {
        self.sorted.get_or_insert_with(|| {
            let mut slots: Vec<Slot> = self
                .entries
                .iter()
                .filter(|e| e.hash != 0)
                .map(|e| e.slot)
                .collect();
            slots.sort_unstable_by(|a, b| values.key(*a).cmp(values.key(*b)));
            slots
        })
    }
}

/// How a tree finds its keys.
#[derive(Debug)]
enum Index {
    /// In order: for the small trees the store scans by range as often as it writes them.
    Ordered(BTreeMap<Key, Slot>),
    /// Hashed: for the large trees the store reads and writes by key, and scans rarely.
    Hashed(Hashed),
}

/// One tree of a [`MemKv`].
#[derive(Debug)]
struct MemTree {
    index: Index,
    values: Values,
}

impl MemTree {
    fn new(tree: Tree) -> MemTree {
        let index = match tree {
            // Held is scanned by origin at every reconciliation and report; the record
            // index's runs by period at every data batch.
            Tree::Outbox
            | Tree::Relay
            | Tree::Refused
            | Tree::Held
            | Tree::Feedback
            | Tree::Index => Index::Ordered(BTreeMap::new()),
            Tree::Batches | Tree::Meta | Tree::Receipts | Tree::Audit | Tree::State => {
                Index::Hashed(Hashed::default())
            }
        };
        MemTree {
            index,
            values: Values::default(),
        }
    }

    fn len(&self) -> usize {
        match &self.index {
            Index::Ordered(map) => map.len(),
            Index::Hashed(hashed) => hashed.len,
        }
    }

    fn slot(&self, key: &[u8]) -> Option<Slot> {
        match &self.index {
            Index::Ordered(map) => map.get(key).copied(),
            Index::Hashed(hashed) => hashed.get(&self.values, key),
        }
    }

    fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.slot(key).map(|slot| self.values.value(slot))
    }

    /// Writes `value` under `key` (removes it for `None`); returns where the key's record
    /// was, which stays live (the undo log holds it).
    fn write(&mut self, key: &[u8], value: Option<&[u8]>) -> Option<Slot> {
        match (&mut self.index, value) {
            (Index::Ordered(map), Some(value)) => {
                let slot = self.values.put(&[], value);
                map.insert(Key::new(key), slot)
            }
            (Index::Ordered(map), None) => map.remove(key),
            (Index::Hashed(hashed), Some(value)) => {
                let slot = self.values.put(key, value);
                hashed.insert(&self.values, key, slot)
            }
            (Index::Hashed(hashed), None) => hashed.remove(&self.values, key),
        }
    }

    /// Puts back the record a key had (`None`: absent), releasing the one it has.
    fn restore(&mut self, key: &[u8], old: Option<Slot>) {
        let current = match (&mut self.index, old) {
            (Index::Ordered(map), Some(old)) => map.insert(Key::new(key), old),
            (Index::Ordered(map), None) => map.remove(key),
            (Index::Hashed(hashed), Some(old)) => hashed.insert(&self.values, key, old),
            (Index::Hashed(hashed), None) => hashed.remove(&self.values, key),
        };
        if let Some(current) = current {
            self.values.release(current);
        }
    }

    /// Calls `visit` with each key and value from `start` on (before `end`, if given), in
    /// order, until it returns `false`.
    fn visit(
        &mut self,
        start: &[u8],
        end: Option<&[u8]>,
        mut visit: impl FnMut(&[u8], &[u8]) -> bool,
    ) {
        use std::ops::Bound;
        let before_end = |key: &[u8]| end.is_none_or(|end| key < end);
        match &mut self.index {
            Index::Ordered(map) => {
                let range = map.range::<[u8], _>((Bound::Included(start), Bound::Unbounded));
                for (key, slot) in range {
                    let key = key.as_slice();
                    if !before_end(key) || !visit(key, self.values.value(*slot)) {
                        break;
                    }
                }
            }
            Index::Hashed(hashed) => {
                let values = &self.values;
                let sorted = hashed.sorted(values);
                let first = sorted.partition_point(|slot| values.key(*slot) < start);
                for slot in &sorted[first..] {
                    let key = values.key(*slot);
                    if !before_end(key) || !visit(key, values.value(*slot)) {
                        break;
                    }
                }
            }
        }
    }

    /// Copies the live records into fresh pages once the dead ones outweigh them. Only when
    /// nothing but the index refers to records (the undo log is empty).
    fn compact_if_worth_it(&mut self) {
        if !self.values.wants_compaction() {
            return;
        }
        let old = std::mem::take(&mut self.values);
        let mut copy = |slot: &mut Slot| {
            let record = old.record(*slot);
            let (key, value) = record.split_at(slot.key_len as usize);
            *slot = self.values.put(key, value);
        };
        match &mut self.index {
            Index::Ordered(map) => map.values_mut().for_each(copy),
            Index::Hashed(hashed) => {
                hashed.sorted = None;
                for entry in hashed.entries.iter_mut().filter(|e| e.hash != 0) {
                    copy(&mut entry.slot);
                }
            }
        }
    }
}

/// A fast hasher for batch ids (already uniformly random): nothing iterates the maps keyed by
/// them in an order that shows.
#[derive(Default)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word))
                .wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type IdMap<V> = HashMap<BatchId, V, std::hash::BuildHasherDefault<IdHasher>>;
type IdSet = HashSet<BatchId, std::hash::BuildHasherDefault<IdHasher>>;

/// Batch files shared by every [`MemKv`] made with the same pool: files are content-addressed,
/// so a simulated network of many nodes keeps one copy of each batch's bytes, not one per
/// node that holds it. Each store still decides on its own which files it has.
#[derive(Debug, Clone, Default)]
pub struct BlobPool {
    blobs: Arc<Mutex<IdMap<Arc<[u8]>>>>,
}

impl BlobPool {
    pub fn new() -> BlobPool {
        BlobPool::default()
    }

    /// The pool's copy of these bytes under `id`, if it has the same bytes; else a new copy
    /// (kept for the next store when the pool has none under `id`).
    fn share(&self, id: &BatchId, bytes: &[u8]) -> Arc<[u8]> {
        let mut blobs = self.blobs.lock().expect("the pool lock is never poisoned");
        match blobs.get(id) {
            Some(shared) if **shared == *bytes => shared.clone(),
            Some(_) => Arc::from(bytes),
            None => {
                let shared: Arc<[u8]> = Arc::from(bytes);
                blobs.insert(*id, shared.clone());
                shared
            }
        }
    }
}

#[derive(Debug)]
struct MemState {
    trees: [MemTree; 11],
    /// Every write since the last sync, in order, with the slot its key had before it
    /// (`None`: absent): undone from the last, they restore the store as it was at the last
    /// sync. The values they name stay live until the next sync.
    undo: Vec<(Tree, Key, Option<Slot>)>,
    blobs: IdMap<Arc<[u8]>>,
    /// Batch files written since the last sync.
    pending_blobs: IdSet,
    fault: WriteFault,
    syncs: u64,
    pool: Option<BlobPool>,
}

impl Default for MemState {
    fn default() -> MemState {
        MemState {
            trees: Tree::ALL.map(MemTree::new),
            undo: Vec::new(),
            blobs: IdMap::default(),
            pending_blobs: IdSet::default(),
            fault: WriteFault::None,
            syncs: 0,
            pool: None,
        }
    }
}

/// An in-memory store for simulation: written is kept apart from durable, a crash loses what
/// is not durable, and writes can be made to fail. Clones share the same state, so the
/// simulator keeps a handle to crash it and to check what is durable.
#[derive(Debug, Clone, Default)]
pub struct MemKv {
    state: Arc<Mutex<MemState>>,
}

impl MemKv {
    pub fn new() -> MemKv {
        MemKv::default()
    }

    /// A store whose batch files share their bytes with every other store of `pool`.
    pub fn with_pool(pool: BlobPool) -> MemKv {
        let kv = MemKv::default();
        kv.lock().pool = Some(pool);
        kv
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemState> {
        self.state.lock().expect("the store lock is never poisoned")
    }

    fn full() -> KvError {
        KvError::Io {
            path: PathBuf::from("<simulated disk>"),
            source: std::io::Error::from(std::io::ErrorKind::StorageFull),
        }
    }

    /// A crash: everything written since the last sync is lost.
    pub fn crash(&self) {
        let mut state = self.lock();
        let state = &mut *state;
        for (tree, key, old) in state.undo.drain(..).rev() {
            state.trees[tree.index()].restore(key.as_slice(), old);
        }
        for tree in &mut state.trees {
            tree.compact_if_worth_it();
        }
        for id in state.pending_blobs.drain() {
            state.blobs.remove(&id);
        }
    }

    pub fn set_fault(&self, fault: WriteFault) {
        self.lock().fault = fault;
    }

    /// Whether `key` in `tree` holds a value that would survive a crash now.
    pub fn durable_contains(&self, tree: Tree, key: &[u8]) -> bool {
        let state = self.lock();
        let written = state
            .undo
            .iter()
            .find(|(t, k, _)| *t == tree && k.as_slice() == key);
        match written {
            Some((_, _, old)) => old.is_some(),
            None => state.trees[tree.index()].slot(key).is_some(),
        }
    }

    /// Whether a batch's bytes would survive a crash now.
    pub fn durable_blob(&self, id: &BatchId) -> bool {
        let state = self.lock();
        state.blobs.contains_key(id) && !state.pending_blobs.contains(id)
    }

    /// How many times the store was synced.
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    /// Entries of a tree now (written, durable or not), for checkers.
    pub fn entries(&self, tree: Tree) -> usize {
        self.lock().trees[tree.index()].len()
    }
}

impl Kv for MemKv {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.lock().trees[tree.index()].get(key).map(<[u8]>::to_vec))
    }

    fn scan(
        &self,
        tree: Tree,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, KvError> {
        let mut state = self.lock();
        let tree = &mut state.trees[tree.index()];
        let mut entries = Vec::new();
        if limit == 0 || end.is_some_and(|end| end <= start) {
            return Ok(entries);
        }
        tree.visit(start, end, |key, value| {
            entries.push((key.to_vec(), value.to_vec()));
            entries.len() < limit
        });
        Ok(entries)
    }

    fn count_prefix(&self, tree: Tree, prefix: &[u8]) -> Result<usize, KvError> {
        let mut state = self.lock();
        let mut count = 0;
        state.trees[tree.index()].visit(prefix, None, |key, _| {
            let inside = key.starts_with(prefix);
            count += usize::from(inside);
            inside
        });
        Ok(count)
    }

    fn apply(&self, ops: Vec<Op>) -> Result<(), KvError> {
        let mut state = self.lock();
        if state.fault == WriteFault::DiskFull {
            return Err(MemKv::full());
        }
        let state = &mut *state;
        for op in &ops {
            let (tree, key, value) = match op {
                Op::Insert(tree, key, value) => (*tree, key, Some(value.as_slice())),
                Op::Remove(tree, key) => (*tree, key, None),
            };
            let old = state.trees[tree.index()].write(key, value);
            state.undo.push((tree, Key::new(key), old));
        }
        Ok(())
    }

    fn write_blob(&self, id: &BatchId, bytes: &[u8]) -> Result<(), KvError> {
        let mut state = self.lock();
        if state.blobs.contains_key(id) {
            return Ok(());
        }
        if state.fault == WriteFault::DiskFull {
            return Err(MemKv::full());
        }
        let blob = match &state.pool {
            Some(pool) => pool.share(id, bytes),
            None => Arc::from(bytes),
        };
        state.blobs.insert(*id, blob);
        state.pending_blobs.insert(*id);
        Ok(())
    }

    fn read_blob(&self, id: &BatchId) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.lock().blobs.get(id).map(|b| b.to_vec()))
    }

    fn sync(&self) -> Result<(), KvError> {
        let mut state = self.lock();
        if state.fault == WriteFault::DiskFull {
            return Err(MemKv::full());
        }
        let state = &mut *state;
        if !state.undo.is_empty() {
            for (tree, _, old) in state.undo.drain(..) {
                if let Some(old) = old {
                    state.trees[tree.index()].values.release(old);
                }
            }
            for tree in &mut state.trees {
                tree.compact_if_worth_it();
            }
        }
        state.pending_blobs.clear();
        state.syncs += 1;
        Ok(())
    }
}

/// [`MemKv`] counting the batches read back.
#[cfg(test)]
#[derive(Clone)]
pub(crate) struct CountingKv(
    pub MemKv,
    pub std::sync::Arc<std::sync::atomic::AtomicUsize>,
);

#[cfg(test)]
impl Kv for CountingKv {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        self.0.get(tree, key)
    }
    fn scan(
        &self,
        tree: Tree,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, KvError> {
        self.0.scan(tree, start, end, limit)
    }
    fn count_prefix(&self, tree: Tree, prefix: &[u8]) -> Result<usize, KvError> {
        self.0.count_prefix(tree, prefix)
    }
    fn apply(&self, ops: Vec<Op>) -> Result<(), KvError> {
        self.0.apply(ops)
    }
    fn write_blob(&self, id: &BatchId, bytes: &[u8]) -> Result<(), KvError> {
        self.0.write_blob(id, bytes)
    }
    fn read_blob(&self, id: &BatchId) -> Result<Option<Vec<u8>>, KvError> {
        self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.0.read_blob(id)
    }
    fn sync(&self) -> Result<(), KvError> {
        self.0.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_loses_what_was_not_synced_and_keeps_what_was() {
        let kv = MemKv::new();
        kv.apply(vec![Op::Insert(Tree::Meta, b"a".to_vec(), b"1".to_vec())])
            .unwrap();
        kv.sync().unwrap();
        kv.apply(vec![
            Op::Insert(Tree::Meta, b"a".to_vec(), b"2".to_vec()),
            Op::Insert(Tree::Meta, b"b".to_vec(), b"3".to_vec()),
        ])
        .unwrap();
        kv.apply(vec![Op::Remove(Tree::Meta, b"a".to_vec())])
            .unwrap();
        assert!(kv.durable_contains(Tree::Meta, b"a"));
        assert!(!kv.durable_contains(Tree::Meta, b"b"));
        kv.write_blob(&BatchId([7; 32]), b"x").unwrap();
        assert!(!kv.durable_blob(&BatchId([7; 32])));
        kv.crash();
        assert_eq!(kv.get(Tree::Meta, b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(kv.get(Tree::Meta, b"b").unwrap(), None);
        assert_eq!(kv.read_blob(&BatchId([7; 32])).unwrap(), None);
    }

    /// After sled reported an error (here: marked so by hand, as a failed log write does),
    /// the next write reopens sled and applies again every group not yet synced: nothing the
    /// caller wrote is lost, and it is durable after the next sync.
    #[test]
    fn sled_is_reopened_and_the_unsynced_groups_replayed_after_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let kv = SledKv::open(dir.path()).unwrap();
        let put = |key: &[u8], value: &[u8]| Op::Insert(Tree::Meta, key.to_vec(), value.to_vec());
        kv.apply(vec![put(b"a", b"1")]).unwrap();
        kv.sync().unwrap();
        kv.apply(vec![put(b"b", b"2"), put(b"a", b"3")]).unwrap();
        kv.apply(vec![Op::Remove(Tree::Meta, b"b".to_vec())])
            .unwrap();
        kv.redo().broken = true;
        kv.apply(vec![put(b"c", b"4")]).unwrap();
        assert_eq!(kv.reopened(), 1);
        let read = |kv: &SledKv, key: &[u8]| kv.get(Tree::Meta, key).unwrap();
        assert_eq!(read(&kv, b"a"), Some(b"3".to_vec()));
        assert_eq!(read(&kv, b"b"), None);
        assert_eq!(read(&kv, b"c"), Some(b"4".to_vec()));
        kv.sync().unwrap();
        assert!(kv.redo().groups.is_empty());
        // A failed sync is recovered the same way.
        kv.apply(vec![put(b"d", b"5")]).unwrap();
        kv.redo().broken = true;
        kv.sync().unwrap();
        assert_eq!(kv.reopened(), 2);
        drop(kv);
        let kv = SledKv::open(dir.path()).unwrap();
        assert_eq!(read(&kv, b"a"), Some(b"3".to_vec()));
        assert_eq!(read(&kv, b"c"), Some(b"4".to_vec()));
        assert_eq!(read(&kv, b"d"), Some(b"5".to_vec()));
    }

    #[test]
    fn disk_full_refuses_writes_until_cleared() {
        let kv = MemKv::new();
        kv.set_fault(WriteFault::DiskFull);
        let error = kv
            .apply(vec![Op::Insert(Tree::Meta, b"a".to_vec(), b"1".to_vec())])
            .unwrap_err();
        assert!(error.is_disk_full(), "{error}");
        assert!(kv.sync().unwrap_err().is_disk_full());
        kv.set_fault(WriteFault::None);
        kv.apply(vec![Op::Insert(Tree::Meta, b"a".to_vec(), b"1".to_vec())])
            .unwrap();
        kv.sync().unwrap();
        assert!(kv.durable_contains(Tree::Meta, b"a"));
    }

    #[test]
    fn scans_are_ordered_and_bounded() {
        let kv = MemKv::new();
        let ops = (0u8..10)
            .map(|i| Op::Insert(Tree::Outbox, vec![1, i], vec![i]))
            .chain([Op::Insert(Tree::Outbox, vec![2, 0], vec![])])
            .collect();
        kv.apply(ops).unwrap();
        let page = kv.scan(Tree::Outbox, &[1, 3], Some(&[2]), 4).unwrap();
        let keys: Vec<u8> = page.iter().map(|(k, _)| k[1]).collect();
        assert_eq!(keys, [3, 4, 5, 6]);
        assert_eq!(kv.count_prefix(Tree::Outbox, &[1]).unwrap(), 10);
    }

    /// Hashed and ordered trees, inline and long keys, keys that are prefixes of others:
    /// every tree scans in byte order, as sled does.
    #[test]
    fn every_tree_scans_in_byte_order() {
        let mut keys: Vec<Vec<u8>> = vec![
            vec![],
            vec![0],
            vec![0, 0],
            vec![1],
            vec![1, 0xff],
            vec![0xff; 3],
        ];
        for len in [31, 32, 33, 61, 62, 63, 64, 100] {
            keys.push(vec![7; len]);
            let mut key = vec![7; len];
            key[len - 1] = 8;
            keys.push(key);
        }
        for tree in Tree::ALL {
            let kv = MemKv::new();
            let ops = keys
                .iter()
                .rev()
                .map(|k| Op::Insert(tree, k.clone(), k.iter().rev().copied().collect()))
                .collect();
            kv.apply(ops).unwrap();
            let mut sorted = keys.clone();
            sorted.sort();
            let all = kv.scan(tree, &[], None, usize::MAX).unwrap();
            let scanned: Vec<Vec<u8>> = all.iter().map(|(k, _)| k.clone()).collect();
            assert_eq!(scanned, sorted, "{}", tree.name());
            for (k, v) in &all {
                assert_eq!(*v, k.iter().rev().copied().collect::<Vec<u8>>());
                assert_eq!(kv.get(tree, k).unwrap().as_ref(), Some(v));
            }
            let page = kv.scan(tree, &[7; 32], Some(&[7; 63]), 3).unwrap();
            let expected: Vec<&Vec<u8>> = sorted
                .iter()
                .filter(|k| k.as_slice() >= &[7; 32][..] && k.as_slice() < &[7; 63][..])
                .take(3)
                .collect();
            let page: Vec<&Vec<u8>> = page.iter().map(|(k, _)| k).collect();
            assert_eq!(page, expected, "{}", tree.name());
            let prefixed = sorted.iter().filter(|k| k.starts_with(&[7; 62])).count();
            assert_eq!(prefixed, 7);
            assert_eq!(
                kv.count_prefix(tree, &[7; 62]).unwrap(),
                7,
                "{}",
                tree.name()
            );
            // A removal shows in the next scan.
            kv.apply(vec![Op::Remove(tree, vec![7; 62])]).unwrap();
            assert_eq!(
                kv.count_prefix(tree, &[7; 62]).unwrap(),
                6,
                "{}",
                tree.name()
            );
        }
    }

    /// Many writes of the same keys between syncs, a crash, and enough overwrites that the
    /// values are compacted: what survives is what was synced.
    #[test]
    fn crashes_and_compaction_keep_exactly_what_was_synced() {
        let kv = MemKv::new();
        let value =
            |round: u32, key: u32| format!("{round}:{key}:{}", "x".repeat(200)).into_bytes();
        for round in 0..400u32 {
            let ops = (0..50u32)
                .map(|key| Op::Insert(Tree::State, key.to_be_bytes().to_vec(), value(round, key)))
                .collect();
            kv.apply(ops).unwrap();
            kv.apply(vec![Op::Remove(Tree::State, 7u32.to_be_bytes().to_vec())])
                .unwrap();
            kv.sync().unwrap();
        }
        kv.apply(
            (0..60u32)
                .map(|key| Op::Insert(Tree::State, key.to_be_bytes().to_vec(), value(999, key)))
                .collect(),
        )
        .unwrap();
        kv.apply(vec![Op::Remove(Tree::State, 3u32.to_be_bytes().to_vec())])
            .unwrap();
        assert!(kv.durable_contains(Tree::State, &3u32.to_be_bytes()));
        assert!(!kv.durable_contains(Tree::State, &7u32.to_be_bytes()));
        assert!(!kv.durable_contains(Tree::State, &55u32.to_be_bytes()));
        kv.crash();
        for key in 0..60u32 {
            let expected = (key < 50 && key != 7).then(|| value(399, key));
            assert_eq!(kv.get(Tree::State, &key.to_be_bytes()).unwrap(), expected);
        }
        let state = kv.lock();
        let values = &state.trees[Tree::State.index()].values;
        assert!(
            values.dead <= PAGE.max(values.live),
            "compacted: {values:?}"
        );
    }

    #[test]
    fn stores_of_a_pool_share_the_bytes_of_a_batch() {
        let pool = BlobPool::new();
        let (a, b) = (MemKv::with_pool(pool.clone()), MemKv::with_pool(pool));
        let id = BatchId([1; 32]);
        a.write_blob(&id, b"bytes").unwrap();
        b.write_blob(&id, b"bytes").unwrap();
        let shared = |kv: &MemKv| kv.lock().blobs[&id].clone();
        assert!(Arc::ptr_eq(&shared(&a), &shared(&b)));
        // Other bytes under the same id are kept as they are, not replaced by the pool's.
        let c = MemKv::with_pool(a.lock().pool.clone().unwrap());
        c.write_blob(&id, b"other").unwrap();
        assert_eq!(c.read_blob(&id).unwrap(), Some(b"other".to_vec()));
        assert_eq!(a.read_blob(&id).unwrap(), Some(b"bytes".to_vec()));
        // A crash of one store loses its unsynced file, not the others'.
        b.crash();
        assert_eq!(b.read_blob(&id).unwrap(), None);
        assert_eq!(a.read_blob(&id).unwrap(), Some(b"bytes".to_vec()));
    }
}
