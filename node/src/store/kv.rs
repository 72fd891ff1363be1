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
use std::sync::{Arc, Mutex};

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
}

impl Tree {
    pub const ALL: [Tree; 9] = [
        Tree::Batches,
        Tree::Meta,
        Tree::Held,
        Tree::Outbox,
        Tree::Receipts,
        Tree::Relay,
        Tree::Refused,
        Tree::Audit,
        Tree::State,
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
        matches!(self, KvError::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull)
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

/// sled for the trees, one fsynced file per batch for the bytes.
#[derive(Clone)]
pub struct SledKv {
    db: sled::Db,
    trees: Vec<sled::Tree>,
    /// sled's directory.
    path: PathBuf,
    /// Batch files, `xx/<id hex>` by the id's first byte.
    files: PathBuf,
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
        let open = || -> Result<(sled::Db, Vec<sled::Tree>), sled::Error> {
            let db = sled::Config::new()
                .path(&sled_path)
                .cache_capacity(CACHE_BYTES)
                .flush_every_ms(Some(1000))
                .open()?;
            let trees = Tree::ALL
                .iter()
                .map(|t| db.open_tree(t.name()))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((db, trees))
        };
        let (db, trees) = open().map_err(|source| super::StoreError::Open {
            path: sled_path.clone(),
            source,
        })?;
        Ok(SledKv {
            db,
            trees,
            path: sled_path,
            files,
        })
    }

    fn tree(&self, tree: Tree) -> &sled::Tree {
        &self.trees[tree.index()]
    }

    fn blob_path(&self, id: &BatchId) -> PathBuf {
        let hex = id.to_hex();
        self.files.join(&hex[..2]).join(hex)
    }
}

impl Kv for SledKv {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.tree(tree).get(key)?.map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        tree: Tree,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, KvError> {
        let tree = self.tree(tree);
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
    }

    fn count_prefix(&self, tree: Tree, prefix: &[u8]) -> Result<usize, KvError> {
        let mut count = 0;
        for key in self.tree(tree).scan_prefix(prefix).keys() {
            key?;
            count += 1;
        }
        Ok(count)
    }

    fn apply(&self, ops: Vec<Op>) -> Result<(), KvError> {
        use sled::Transactional;
        use sled::transaction::TransactionError;
        let trees: &[sled::Tree] = &self.trees;
        // The closure may run more than once; it only writes.
        let result: Result<(), TransactionError<()>> = trees.transaction(|tx| {
            for op in &ops {
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

    /// Temporary file, `fsync`, rename, `fsync` of the directory: a batch file is durable
    /// before the group that records it is applied, so a recorded batch always has its bytes
    /// (sled 0.34 would keep values this large as blob files it never fsyncs).
    fn write_blob(&self, id: &BatchId, bytes: &[u8]) -> Result<(), KvError> {
        use std::io::Write;
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
            std::fs::File::open(&self.files)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        let tmp = dir.join(format!(".{}.tmp", id.to_hex()));
        let mut file = std::fs::File::create(&tmp).map_err(io)?;
        file.write_all(bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        std::fs::rename(&tmp, &path).map_err(io)?;
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
    /// by us, so the writes survive a power cut, not only a process kill.
    fn sync(&self) -> Result<(), KvError> {
        self.db.flush()?;
        let file = self.path.join("db");
        std::fs::File::open(&file)
            .and_then(|f| f.sync_data())
            .map_err(|source| KvError::Io { path: file, source })
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

#[derive(Debug, Default)]
struct MemState {
    trees: [BTreeMap<Vec<u8>, Vec<u8>>; 9],
    blobs: HashMap<BatchId, Arc<[u8]>>,
    /// The value each key had at the last sync, for every key written since (first write
    /// wins): what a crash restores.
    undo: HashMap<(Tree, Vec<u8>), Option<Vec<u8>>>,
    /// Batch files written since the last sync.
    pending_blobs: HashSet<BatchId>,
    fault: WriteFault,
    syncs: u64,
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
        let undo = std::mem::take(&mut state.undo);
        for ((tree, key), old) in undo {
            match old {
                Some(value) => state.trees[tree.index()].insert(key, value),
                None => state.trees[tree.index()].remove(&key),
            };
        }
        let blobs = std::mem::take(&mut state.pending_blobs);
        for id in blobs {
            state.blobs.remove(&id);
        }
    }

    pub fn set_fault(&self, fault: WriteFault) {
        self.lock().fault = fault;
    }

    /// Whether `key` in `tree` holds a value that would survive a crash now.
    pub fn durable_contains(&self, tree: Tree, key: &[u8]) -> bool {
        let state = self.lock();
        match state.undo.get(&(tree, key.to_vec())) {
            Some(old) => old.is_some(),
            None => state.trees[tree.index()].contains_key(key),
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
        Ok(self.lock().trees[tree.index()].get(key).cloned())
    }

    fn scan(
        &self,
        tree: Tree,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, KvError> {
        let state = self.lock();
        let map = &state.trees[tree.index()];
        let range: Box<dyn Iterator<Item = (&Vec<u8>, &Vec<u8>)>> = match end {
            Some(end) if end <= start => Box::new(std::iter::empty()),
            Some(end) => Box::new(map.range(start.to_vec()..end.to_vec())),
            None => Box::new(map.range(start.to_vec()..)),
        };
        Ok(range
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn count_prefix(&self, tree: Tree, prefix: &[u8]) -> Result<usize, KvError> {
        let state = self.lock();
        Ok(state.trees[tree.index()]
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .count())
    }

    fn apply(&self, ops: Vec<Op>) -> Result<(), KvError> {
        let mut state = self.lock();
        if state.fault == WriteFault::DiskFull {
            return Err(MemKv::full());
        }
        for op in ops {
            let (tree, key, value) = match op {
                Op::Insert(tree, key, value) => (tree, key, Some(value)),
                Op::Remove(tree, key) => (tree, key, None),
            };
            let old = match value {
                Some(value) => state.trees[tree.index()].insert(key.clone(), value),
                None => state.trees[tree.index()].remove(&key),
            };
            state.undo.entry((tree, key)).or_insert(old);
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
        state.blobs.insert(*id, Arc::from(bytes));
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
        state.undo.clear();
        state.pending_blobs.clear();
        state.syncs += 1;
        Ok(())
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
}
