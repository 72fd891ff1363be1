//! The store's side of the data-quality loop: feedback items (audit findings on one record's
//! field, by rule) with when they were opened and closed, and the held data batches of one
//! origin, category and period from which the current version of each record is read.
//!
//! Tree layout: `index`: origin u32 ‖ period [4] ‖ category ‖ 0x00 ‖ … (the record index kept
//! by `core::quality`: each key's versions and current contributions, and the aggregates of
//! the cross-record audit rules), written as **runs**: each stored batch writes the entries it
//! changes as one run, sorted by key and cut into chunks, `S` ‖ run u64 ‖ chunk u32 →
//! entries (see [`RUN_CHUNK_BYTES`]), with the run's **directory**, `D` ‖ run u64 ‖ first
//! chunk u32 → per chunk its first key and a Bloom filter of its keys. An entry's value is
//! the one of the newest run that holds it. A batch reads the period's directories (per ~6 KiB
//! chunk a first key and 2 bytes per entry: ~2 % of the index) and then only the chunks they
//! point to, newest run first, and writes its run with one sled insert per ~6 KiB; runs merge
//! as they pile up (`MERGE_FAN_IN`). With a sled operation per entry, storing a batch with
//! its index took ~10× as long as decoding, verifying and storing it without (issue 12); with
//! a scan of the period's runs per batch instead of the directories, a period's batches cost
//! quadratically (`benches/index.rs`, 200 batches of 1,000 records in one period: the index
//! and audit of the last tenth took 9× the first tenth's, 4.5 → 41–42 ms; now 1.7×, 3.0 →
//! 5.2 ms, on a quiet machine; 1.3–2.4× over six runs on a noisy one). Entries written by earlier
//! versions are still read, by a scan: runs without a directory (`R` ‖ run u64 ‖ chunk u32, as
//! the runs they are) and entries one per key (kind byte `k`, `u`, `n`, `h` right after the
//! prefix, as run 0).
//! `feedback`: origin u32 ‖ period [4] ‖ category ‖ 0x00 ‖ record key ‖ 0x00 ‖
//! field ‖ 0x00 ‖ rule → FeedbackItem. An item opens when a finding is first made on a
//! record's current version and closes when a later version of the record (a correction or
//! a withdrawal) becomes current without that finding; a finding made again after closing
//! opens the item anew.

use std::collections::{BTreeMap, BTreeSet};

use bincode::{Decode, Encode};
use protocol::audit::Finding;
use protocol::batch::BatchHeader;
use protocol::ids::{BatchId, NodeId};
use protocol::record::Problem;
use protocol::{Batch, Category, ContentKind, Period, RecordKey};

use super::{Group, Kv, Store, StoreError, Tree, decode, encode, kv};

/// What storing one data batch (or the parent's findings on an own batch) changes in the
/// feedback items: computed by the node core, written in the same group as the batch or
/// receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QualityUpdate {
    pub origin: NodeId,
    pub category: Category,
    pub period: Period,
    pub batch: BatchId,
    /// Who made the findings: this node, or the parent for the origin's own batch.
    pub reporter: NodeId,
    /// The keys whose current version this batch now holds, `true` where it withdraws the
    /// record.
    pub current: Vec<(RecordKey, bool)>,
    pub findings: Vec<Finding>,
    /// The batch's keys whose current version is another batch's, with that version's
    /// findings as this node audits it now.
    pub others: Vec<Reassessed>,
    /// Writes to the record index (`index` tree): key under the period's prefix (without
    /// it) → value, `None` to remove; stored as run `index_run` of the period.
    pub index: IndexWrites,
    pub index_run: u64,
    /// How many of the batch's records have a key of which no other batch this node holds
    /// carries a record (the index may still name a batch lost and not yet received again):
    /// stored with the batch, so that the ledger counts
    /// the records a report delivered without reading its batches. `None` when unknown.
    pub new_keys: Option<u32>,
}

/// A key of a batch whose current version is another batch's: one that was current already
/// (the batch's version loses to it), or one that the batch made current (a correction that
/// arrives after the version it supersedes and before the version that supersedes it
/// completes the chain, and an earlier batch's version or withdrawal is current again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reassessed {
    pub key: RecordKey,
    /// The batch whose version is current.
    pub batch: BatchId,
    /// That version withdraws the record.
    pub withdrawn: bool,
    /// What this node finds on that version now (none for a withdrawal, or where it does not
    /// audit: the origin's own batches).
    pub findings: Vec<Finding>,
}

/// Writes to the record index, their keys and values one after another in one buffer: a
/// batch of 10,000 records makes about 20,000, which as vectors of their own took two
/// allocations each to make and two to free.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexWrites {
    bytes: Vec<u8>,
    /// Each write's key end and value end in `bytes` (`None`: a removal); each starts where
    /// the one before ends.
    ends: Vec<(usize, Option<usize>)>,
}

impl IndexWrites {
    /// Room for `writes` writes of `bytes` bytes in all.
    pub fn with_capacity(writes: usize, bytes: usize) -> IndexWrites {
        IndexWrites {
            bytes: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(writes),
        }
    }

    /// Adds a write of `value` (`None`: a removal) to `key`.
    pub fn push(&mut self, key: &[u8], value: Option<&[u8]>) {
        self.bytes.extend_from_slice(key);
        let key_end = self.bytes.len();
        let value_end = value.map(|value| {
            self.bytes.extend_from_slice(value);
            self.bytes.len()
        });
        self.ends.push((key_end, value_end));
    }

    /// Adds a write to `key` of the value `value` appends to the buffer it is given.
    pub fn push_with(&mut self, key: &[u8], value: impl FnOnce(&mut Vec<u8>)) {
        self.bytes.extend_from_slice(key);
        let key_end = self.bytes.len();
        value(&mut self.bytes);
        self.ends.push((key_end, Some(self.bytes.len())));
    }

    /// Puts every write of `front` before this one's, in its order, moving this one's within
    /// its buffer (no new buffer for the many writes behind a few).
    pub fn prepend(&mut self, front: &IndexWrites) {
        if front.is_empty() {
            return;
        }
        let (n, old) = (front.bytes.len(), self.bytes.len());
        self.bytes.resize(old + n, 0);
        self.bytes.copy_within(0..old, n);
        self.bytes[..n].copy_from_slice(&front.bytes);
        self.ends.splice(0..0, front.ends.iter().copied());
        for (key_end, value_end) in &mut self.ends[front.ends.len()..] {
            *key_end += n;
            if let Some(end) = value_end {
                *end += n;
            }
        }
    }

    /// The bytes it holds on the heap (its buffers' capacities).
    pub fn heap_bytes(&self) -> usize {
        self.bytes.capacity() + self.ends.capacity() * std::mem::size_of::<(usize, Option<usize>)>()
    }

    /// Gives back what its buffers hold beyond its writes.
    pub fn shrink_to_fit(&mut self) {
        self.bytes.shrink_to_fit();
        self.ends.shrink_to_fit();
    }

    /// Room for `writes` more writes of `bytes` more bytes, and no more (not doubled).
    pub fn reserve_exact(&mut self, writes: usize, bytes: usize) {
        self.ends.reserve_exact(writes);
        self.bytes.reserve_exact(bytes);
    }

    /// Takes back the last write.
    pub fn pop(&mut self) {
        self.ends.pop();
        let end = self
            .ends
            .last()
            .map_or(0, |(key_end, value_end)| value_end.unwrap_or(*key_end));
        self.bytes.truncate(end);
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Write `n`.
    fn get(&self, n: usize) -> IndexWrite<'_> {
        let start = match n.checked_sub(1) {
            Some(before) => {
                let (key_end, value_end) = self.ends[before];
                value_end.unwrap_or(key_end)
            }
            None => 0,
        };
        let (key_end, value_end) = self.ends[n];
        (
            &self.bytes[start..key_end],
            value_end.map(|end| &self.bytes[key_end..end]),
        )
    }

    /// The writes, in the order they were added.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = IndexWrite<'_>> + '_ {
        (0..self.ends.len()).map(|n| self.get(n))
    }

    /// The last write, if any.
    pub fn last(&self) -> Option<IndexWrite<'_>> {
        self.ends.len().checked_sub(1).map(|n| self.get(n))
    }
}

impl<'a> FromIterator<IndexWrite<'a>> for IndexWrites {
    fn from_iter<I: IntoIterator<Item = IndexWrite<'a>>>(writes: I) -> IndexWrites {
        let mut out = IndexWrites::default();
        for (key, value) in writes {
            out.push(key, value);
        }
        out
    }
}

/// Kind bytes of the record index's entries, right after the period's prefix: a run's
/// directory piece and chunk, and the chunk of a run of the first runs layout (without a
/// directory, read by scanning). Upper case sorts before the one-entry-per-key layout's kinds
/// (`h`, `k`, `n`, `u`).
const DIRECTORY: u8 = b'D';
const CHUNK: u8 = b'S';
const UNDIRECTED_CHUNK: u8 = b'R';
/// Kind byte of a run's level record: `L` ‖ run u64 → level u8 ‖ bytes u64 (its chunks').
const LEVEL: u8 = b'L';
/// The kind bytes of the one-entry-per-key layout.
const LEGACY_KINDS: [u8; 4] = [b'h', b'k', b'n', b'u'];
/// A run's entries are cut into chunks of about this many bytes (and its directory into
/// pieces of about as many): sled 0.34 writes a tree node larger than a quarter of its 512 KiB
/// segment as a separate blob file, which it does not fsync, and a leaf holds up to 17
/// entries before it splits: 17 chunks of ~6 KiB stay below 128 KiB. (An entry larger than
/// that alone — the holders of a `unique` value shared by thousands of records — would still
/// make a blob, as it did in the one-entry-per-key layout.)
pub const RUN_CHUNK_BYTES: usize = 6 * 1024;
/// Runs are merged as they pile up, so a period holds few: when a batch's new run (level 0)
/// follows `MERGE_FAN_IN - 1` runs of level 0, they all become one run of level 1, then
/// likewise up the levels (a counter in base `MERGE_FAN_IN`). A period of `n` batches holds at
/// most `(MERGE_FAN_IN - 1) × log(n)` runs (a read asks each run for the keys no newer one
/// holds) and each entry is written about `log(n)` times; superseded values go at a merge.
/// Measured one after the other on the shared, loaded machine (`benches/index.rs`, 200
/// batches of 1,000 records in one period, merges up to 16 MiB): fan-in 8 took 2.8 s, 4 took
/// 3.8 s, no merging 3.9 s (with the index and audit of the last tenth of the batches at 4.5×
/// that of the first).
const MERGE_FAN_IN: usize = 8;
/// No merge makes a run larger than this (merged in memory and written in the batch's store
/// group): a period's larger runs stay apart. Measured (`benches/rsync.rs`, county and city in
/// one process, 200 batches of 1,000 records in one period): peak RSS 224 MB without merging,
/// 570 MB with merges up to 16 MiB, 290 MB up to 4 MiB; `benches/index.rs` 1.8 s at 16 MiB,
/// 1.6 s at 4 MiB (the largest batch's store 82 → 15 ms).
const MERGE_BYTES_MAX: u64 = 4 << 20;
/// Bits of a chunk's Bloom filter per entry, and the probes per key: ~0.05 % false
/// positives. A key absent from the period is looked for in every run, so a false positive
/// costs a chunk read per run: at 1 % (10 bits) a batch of new keys read about as much
/// of a period of 30 runs as the scan it replaces did.
const BLOOM_BITS_PER_KEY: usize = 16;
const BLOOM_PROBES: u32 = 11;

/// Kind byte of a run's filter: `F` ‖ run u64 ‖ piece u32 → whole blocks of a split-block
/// Bloom filter of every key the run holds (removals too). A read asks a run's filter first
/// and parses the run's directory only for the keys it lets through: a key new to the period
/// costs one block of each run, not a walk of each run's directory (which made reading the
/// index grow as a period filled). Runs written before it have none; they are read through
/// their directory as before.
const FILTER: u8 = b'F';
/// A run filter's block: eight 32-bit words, one bit set in each per key (the split-block
/// filter of Parquet and Impala): a key's probes touch one cache line.
const FILTER_BLOCK_BYTES: usize = 32;
/// Bits of a run filter per key: ~0.1 % false positives (a false positive costs a walk of
/// one run's directory for that key, and a chunk read only if the chunk's filter lets it
/// through too).
const FILTER_BITS_PER_KEY: usize = 16;
/// A run filter is cut into pieces of this many blocks (4 KiB), each stored as an entry
/// smaller than a chunk (see [`RUN_CHUNK_BYTES`]: sled writes larger tree nodes as unsynced
/// blobs); a power of two, so that finding a block's piece is a shift.
const FILTER_BLOCKS_PER_PIECE: usize = 128;
/// The split-block filter's odd multipliers, one per word (Parquet's).
const FILTER_SALT: [u32; 8] = [
    0x47b6_137b,
    0x4497_4d91,
    0x8824_ad5b,
    0xa2b7_289d,
    0x7054_95c7,
    0x2df1_424b,
    0x9efc_4947,
    0x5c6b_fb31,
];

/// A key's hash for the run filters, from its hash for the chunk filters mixed again (so
/// that the two filters' false positives are not the same keys).
fn filter_hash(hash: u64) -> u64 {
    let mixed = (hash ^ (hash >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    mixed ^ (mixed >> 33)
}

/// The block of a filter of `blocks` blocks (fewer than 2³²) that the key of run-filter hash
/// `hash` falls in, and the 32 bits its bits in the block are taken from ([`filter_bit`]).
fn filter_place(hash: u64, blocks: usize) -> (usize, u32) {
    ((((hash >> 32) * blocks as u64) >> 32) as usize, hash as u32)
}

/// The bit a key sets in word `n` of its block, from its [`filter_place`] bits.
fn filter_bit(bits: u32, n: usize) -> u32 {
    1 << (bits.wrapping_mul(FILTER_SALT[n]) >> 27)
}

/// A run filter of the keys of `hashes`, as its pieces' bytes (little-endian words).
fn run_filter_of(hashes: &[u64]) -> Vec<Vec<u8>> {
    let blocks = (hashes.len() * FILTER_BITS_PER_KEY)
        .div_ceil(FILTER_BLOCK_BYTES * 8)
        .max(1);
    let mut words = vec![0u32; blocks * 8];
    for hash in hashes {
        let (block, bits) = filter_place(filter_hash(*hash), blocks);
        for (n, word) in words[block * 8..block * 8 + 8].iter_mut().enumerate() {
            *word |= filter_bit(bits, n);
        }
    }
    words
        .chunks(FILTER_BLOCKS_PER_PIECE * 8)
        .map(|piece| piece.iter().flat_map(|w| w.to_le_bytes()).collect())
        .collect()
}

/// One run's filter, as read: its pieces in order, each of whole blocks, all but the last
/// [`FILTER_BLOCKS_PER_PIECE`] blocks long.
struct RunFilter {
    pieces: Pieces,
    blocks: usize,
}

impl RunFilter {
    /// Run `run`'s filter from its pieces as scanned (`prefix`: the period's); `None` for a
    /// run written before runs had filters (no pieces), an error if they are not a filter's.
    fn new(prefix: &[u8], run: u64, pieces: Pieces) -> Result<Option<RunFilter>, StoreError> {
        for (n, (key, _)) in pieces.iter().enumerate() {
            let (of, number) = run_and_number(&key[prefix.len() + 1..])
                .ok_or_else(|| damaged(key, "run filter"))?;
            if of != run || number as usize != n {
                return Err(damaged(key, "run filter (a piece is missing before)"));
            }
        }
        let Some(((_, last), full)) = pieces.split_last() else {
            return Ok(None);
        };
        let piece_bytes = FILTER_BLOCKS_PER_PIECE * FILTER_BLOCK_BYTES;
        let whole = full.iter().all(|(_, p)| p.len() == piece_bytes)
            && !last.is_empty()
            && last.len() <= piece_bytes
            && last.len().is_multiple_of(FILTER_BLOCK_BYTES);
        let blocks = (full.len() * piece_bytes + last.len()) / FILTER_BLOCK_BYTES;
        if !whole || u32::try_from(blocks).is_err() {
            return Err(damaged(&run_prefix(prefix, FILTER, run), "run filter"));
        }
        Ok(Some(RunFilter { pieces, blocks }))
    }

    /// The places in `keys` (place in the read, chunk-filter hash, run-filter hash) of the
    /// keys the run may hold.
    fn candidates(&self, keys: &[(usize, u64, u64)]) -> Vec<usize> {
        let mut out = Vec::new();
        for (n, (_, _, hash)) in keys.iter().enumerate() {
            if self.may_hold(*hash) {
                out.push(n);
            }
        }
        out
    }

    /// Whether the run may hold the key of run-filter hash `hash` ([`filter_hash`]).
    #[inline]
    fn may_hold(&self, hash: u64) -> bool {
        let (block, bits) = filter_place(hash, self.blocks);
        let piece = &self.pieces[block / FILTER_BLOCKS_PER_PIECE].1;
        let at = (block % FILTER_BLOCKS_PER_PIECE) * FILTER_BLOCK_BYTES;
        let Some(block) = piece.get(at..at + FILTER_BLOCK_BYTES) else {
            unreachable!("a filter's pieces hold whole blocks");
        };
        // Most keys a run does not hold miss at the first words: asked one at a time.
        block.chunks_exact(4).enumerate().all(|(n, word)| {
            u32::from_le_bytes([word[0], word[1], word[2], word[3]]) & filter_bit(bits, n) != 0
        })
    }
}

/// The hash maps of the record index's per-batch work (`core::quality`): some twenty
/// lookups of 30–60-byte keys per record, where SipHash took a fifth of `assess`. foldhash
/// is several times faster and still seeded at random (per process, and per map), so a
/// child's record keys cannot be chosen to collide without learning the seed; these maps
/// live for one batch and their order is never observed (the writes are sorted before they
/// are stored).
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Entries of the record index read for one period ([`Store::index_read`]).
#[derive(Debug, Default)]
pub struct IndexRead {
    /// The value of each wanted key, in the order asked (`None`: removed or never written).
    pub values: Vec<Option<Vec<u8>>>,
    /// The number the next run of the period takes.
    pub next_run: u64,
    /// How many chunks were read (the directory's filters let the others be skipped).
    pub chunks_read: usize,
    /// How many runs' directories were scanned from the store (the run filters let the
    /// others be skipped; the store's cache holds those read before).
    pub directories_read: usize,
    /// How many runs' filters were scanned from the store (not in its cache): at the first
    /// read of a reader only.
    pub filters_read: usize,
}

/// One entry of a run: key, and value or `None` for a removal.
pub type IndexWrite<'a> = (&'a [u8], Option<&'a [u8]>);
/// An entry of runs being merged: key, age (0: the new run's, 1: the newest run merged, …),
/// value.
type AgedWrite<'a> = (&'a [u8], usize, Option<&'a [u8]>);

/// Splits a field of `u32` big-endian length ‖ bytes off the front of `bytes`.
fn take_len_prefixed(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = bytes.split_first_chunk::<4>()?;
    rest.split_at_checked(u32::from_be_bytes(*len) as usize)
}

fn push_len_prefixed(out: &mut Vec<u8>, bytes: &[u8]) {
    // Keys are bounded by the values they hold (16 KiB each), values and filters by a batch.
    let len = u32::try_from(bytes.len()).expect("index keys and values are far below 4 GiB");
    out.extend(len.to_be_bytes());
    out.extend(bytes);
}

/// The entries of one chunk: `u32 key length ‖ key ‖ u32 value length + 1 (0: removed) ‖
/// value`, big-endian, keys after the period's prefix and increasing. `None` if damaged.
fn chunk_entries(mut bytes: &[u8]) -> Option<Vec<IndexWrite<'_>>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (key, rest) = take_len_prefixed(bytes)?;
        let (value_len, rest) = rest.split_first_chunk::<4>()?;
        let value_len = u32::from_be_bytes(*value_len) as usize;
        let (value, rest) = match value_len.checked_sub(1) {
            None => (None, rest),
            Some(len) => {
                let (value, rest) = rest.split_at_checked(len)?;
                (Some(value), rest)
            }
        };
        out.push((key, value));
        bytes = rest;
    }
    Some(out)
}

fn push_chunk_entry(chunk: &mut Vec<u8>, key: &[u8], value: Option<&[u8]>) {
    push_len_prefixed(chunk, key);
    match value {
        None => chunk.extend(0u32.to_be_bytes()),
        Some(value) => {
            let len = u32::try_from(value.len() + 1).expect("index values are small");
            chunk.extend(len.to_be_bytes());
            chunk.extend(value);
        }
    }
}

/// `prefix ‖ kind ‖ run u64`: run `run`'s level record (kind `L`), or the prefix of its
/// chunks or directory pieces.
fn run_prefix(prefix: &[u8], kind: u8, run: u64) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.push(kind);
    key.extend(run.to_be_bytes());
    key
}

/// `prefix ‖ kind ‖ run u64 ‖ n u32`: a run's chunk `n`, or its directory piece whose first
/// chunk is `n`.
fn run_key(prefix: &[u8], kind: u8, run: u64, n: u32) -> Vec<u8> {
    let mut key = run_prefix(prefix, kind, run);
    key.extend(n.to_be_bytes());
    key
}

/// The run and number of a run's chunk or directory piece key (after the period's prefix and
/// kind byte).
fn run_and_number(after_kind: &[u8]) -> Option<(u64, u32)> {
    let (run, rest) = after_kind.split_first_chunk::<8>()?;
    let number = rest.first_chunk::<4>()?;
    Some((u64::from_be_bytes(*run), u32::from_be_bytes(*number)))
}

/// A key's hash for the chunks' Bloom filters: FNV-1a, finished with SplitMix64's mixer.
/// Stored in the filters' bits, so it never changes.
fn bloom_hash(key: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

/// The bits a key of hash `hash` sets in a filter of `bits` bits (double hashing; each probe's
/// 64 bits mapped onto the filter by a multiply and shift rather than a division).
fn bloom_bits(hash: u64, bits: u64) -> impl Iterator<Item = u64> {
    let step = hash.rotate_left(32) | 1;
    (0..u64::from(BLOOM_PROBES)).map(move |i| {
        let probe = hash.wrapping_add(i.wrapping_mul(step));
        ((u128::from(probe) * u128::from(bits)) >> 64) as u64
    })
}

/// A Bloom filter of the keys of `hashes`.
fn bloom_of(hashes: &[u64]) -> Vec<u8> {
    let mut bloom = vec![0u8; (hashes.len() * BLOOM_BITS_PER_KEY).div_ceil(8).max(8)];
    let bits = bloom.len() as u64 * 8;
    for hash in hashes {
        for bit in bloom_bits(*hash, bits) {
            bloom[(bit / 8) as usize] |= 1 << (bit % 8);
        }
    }
    bloom
}

/// Whether a filter may hold the key of hash `hash` (an empty filter holds nothing).
fn bloom_may_hold(bloom: &[u8], hash: u64) -> bool {
    let bits = bloom.len() as u64 * 8;
    bits > 0 && bloom_bits(hash, bits).all(|bit| bloom[(bit / 8) as usize] & (1 << (bit % 8)) != 0)
}

/// One run's directory: its pieces as read and, per chunk (numbered from 0, in order), where
/// its first key and the Bloom filter of its keys are in them. Parsed once, kept in the
/// store's cache with the pieces.
struct RunDirectory {
    run: u64,
    pieces: Vec<kv::Entry>,
    chunks: Vec<ChunkAt>,
}

/// Where one chunk's first key and filter are: its directory piece, and the byte ranges of
/// each in the piece's value.
#[derive(Clone, Copy)]
struct ChunkAt {
    piece: u32,
    first: (u32, u32),
    bloom: (u32, u32),
}

impl RunDirectory {
    /// Run `run`'s directory from its pieces (in key order; `prefix_len`: the length of the
    /// period's prefix in their keys).
    fn parse(
        prefix_len: usize,
        run: u64,
        pieces: Vec<kv::Entry>,
    ) -> Result<RunDirectory, StoreError> {
        let mut chunks = Vec::new();
        for (n, (key, piece)) in pieces.iter().enumerate() {
            let (of, first) = run_and_number(&key[prefix_len + 1..])
                .ok_or_else(|| damaged(key, "run directory"))?;
            if of != run || chunks.len() != first as usize {
                return Err(damaged(key, "run directory (a piece is missing before)"));
            }
            let at = |part: &[u8]| {
                let start = part.as_ptr() as usize - piece.as_ptr() as usize;
                (start as u32, (start + part.len()) as u32)
            };
            let mut rest = piece.as_slice();
            while !rest.is_empty() {
                let (first_key, after) =
                    take_len_prefixed(rest).ok_or_else(|| damaged(key, "run directory"))?;
                let (bloom, after) =
                    take_len_prefixed(after).ok_or_else(|| damaged(key, "run directory"))?;
                chunks.push(ChunkAt {
                    piece: n as u32,
                    first: at(first_key),
                    bloom: at(bloom),
                });
                rest = after;
            }
        }
        Ok(RunDirectory {
            run,
            pieces,
            chunks,
        })
    }

    fn len(&self) -> usize {
        self.chunks.len()
    }

    fn part(&self, piece: u32, (start, end): (u32, u32)) -> &[u8] {
        &self.pieces[piece as usize].1[start as usize..end as usize]
    }

    /// Chunk `n`'s first key.
    fn first(&self, n: usize) -> &[u8] {
        let chunk = self.chunks[n];
        self.part(chunk.piece, chunk.first)
    }

    /// Chunk `n`'s Bloom filter.
    fn bloom(&self, n: usize) -> &[u8] {
        let chunk = self.chunks[n];
        self.part(chunk.piece, chunk.bloom)
    }

    /// The chunk that would hold `key`: the last whose first key is not after it (`None`
    /// for a key before the run's first).
    fn chunk_of(&self, key: &[u8]) -> Option<usize> {
        let (mut low, mut high) = (0, self.len());
        while low < high {
            let middle = low + (high - low) / 2;
            if self.first(middle) <= key {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        low.checked_sub(1)
    }

    /// What it holds in memory, about.
    fn bytes(&self) -> usize {
        pieces_bytes(&self.pieces) + self.chunks.len() * std::mem::size_of::<ChunkAt>()
    }
}

/// The error for a damaged entry of the record index: `what` at `key`.
fn damaged(key: &[u8], what: &str) -> StoreError {
    StoreError::Decode {
        tree: "index",
        message: format!("{what} {} does not parse", protocol::ids::hex(key)),
    }
}

/// Run `run`'s writes: its chunks, its directory pieces (per chunk: `u32 length ‖ first key
/// ‖ u32 length ‖ Bloom filter of its keys`), its filter's pieces and its level record, each
/// as `(key, value)`. Nothing for no entries.
fn run_writes(
    prefix: &[u8],
    run: u64,
    level: u8,
    entries: &[IndexWrite<'_>],
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    // Sized for a chunk, so that it does not grow entry by entry.
    let chunk_capacity = RUN_CHUNK_BYTES + RUN_CHUNK_BYTES / 2;
    let (mut chunk, mut hashes, mut chunks, mut bytes) =
        (Vec::with_capacity(chunk_capacity), Vec::new(), 0u32, 0u64);
    let (mut piece, mut piece_first) = (Vec::with_capacity(chunk_capacity), 0u32);
    let mut all_hashes = Vec::with_capacity(entries.len());
    for (n, (key, value)) in entries.iter().enumerate() {
        if chunk.is_empty() {
            push_len_prefixed(&mut piece, key);
        }
        push_chunk_entry(&mut chunk, key, *value);
        let hash = bloom_hash(key);
        hashes.push(hash);
        all_hashes.push(hash);
        let last = n + 1 == entries.len();
        if chunk.len() >= RUN_CHUNK_BYTES || last {
            bytes += chunk.len() as u64;
            out.push((
                run_key(prefix, CHUNK, run, chunks),
                std::mem::replace(&mut chunk, Vec::with_capacity(chunk_capacity)),
            ));
            push_len_prefixed(&mut piece, &bloom_of(&hashes));
            hashes.clear();
            chunks += 1;
            if piece.len() >= RUN_CHUNK_BYTES || last {
                out.push((
                    run_key(prefix, DIRECTORY, run, piece_first),
                    std::mem::replace(&mut piece, Vec::with_capacity(chunk_capacity)),
                ));
                piece_first = chunks;
            }
        }
    }
    if !entries.is_empty() {
        for (n, piece) in run_filter_of(&all_hashes).into_iter().enumerate() {
            let n = u32::try_from(n).expect("a run's filter has far fewer pieces");
            out.push((run_key(prefix, FILTER, run, n), piece));
        }
        let mut record = vec![level];
        record.extend(bytes.to_be_bytes());
        out.push((run_prefix(prefix, LEVEL, run), record));
    }
    out
}

/// Closes the open ones of one record's `items` that `raised` (field, rule) no longer holds —
/// all of them if the record is withdrawn — as closed by version `by` (its batch, and whether
/// it withdraws the record).
fn close_items<K: Kv>(
    group: &mut Group<'_, K>,
    items: &[kv::Entry],
    raised: &BTreeSet<(&str, &str)>,
    (by, withdrawn): (BatchId, bool),
    now_ms: u64,
) -> Result<(), StoreError> {
    for (item_key, bytes) in items {
        let mut item: FeedbackItem = decode("feedback", bytes)?;
        let still = raised.contains(&(item.problem.field.as_str(), item.problem.rule.as_str()));
        if item.closed.is_some() || (still && !withdrawn) {
            continue;
        }
        item.closed = Some(Closed {
            at_ms: now_ms,
            by,
            withdrawn,
        });
        group.insert(Tree::Feedback, item_key.clone(), encode(&item));
    }
    Ok(())
}

/// A run with a directory, by its level record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RunLevel {
    run: u64,
    level: u8,
    /// Its chunks' bytes.
    bytes: u64,
}

/// One finding on one field of one record, open or closed.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct FeedbackItem {
    pub origin: NodeId,
    pub category: Category,
    pub period: Period,
    pub key: RecordKey,
    /// The batch whose version of the record the finding was made on.
    pub batch: BatchId,
    pub reporter: NodeId,
    pub problem: Problem,
    /// When this node stored the finding (its own clock).
    pub opened_ms: u64,
    pub closed: Option<Closed>,
}

/// How an item was closed.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Closed {
    pub at_ms: u64,
    /// The batch whose version of the record no longer has the finding.
    pub by: BatchId,
    /// The record was withdrawn rather than corrected.
    pub withdrawn: bool,
}

/// The prefix of `(origin, period, category)`'s entries in the `feedback` and `index` trees.
pub fn period_prefix(origin: NodeId, period: Period, category: &Category) -> Vec<u8> {
    let mut key = origin.to_be_bytes().to_vec();
    key.extend(period.key_bytes());
    key.extend(category.as_str().as_bytes());
    key.push(0);
    key
}

fn record_prefix(origin: NodeId, period: Period, category: &Category, key: &RecordKey) -> Vec<u8> {
    let mut prefix = period_prefix(origin, period, category);
    prefix.extend(key.0.as_bytes());
    prefix.push(0);
    prefix
}

fn item_key(item: &FeedbackItem) -> Vec<u8> {
    let mut key = record_prefix(item.origin, item.period, &item.category, &item.key);
    key.extend(item.problem.field.as_bytes());
    key.push(0);
    key.extend(item.problem.rule.as_str().as_bytes());
    key
}

impl<K: Kv> Store<K> {
    /// Adds to `group` what `update` changes: open items of the batch's current keys that
    /// its findings no longer raise are closed (all of them for a withdrawn record), and
    /// each finding not already open opens an item; the same for the keys whose current
    /// version is another batch's, with that version's findings, on that version's batch.
    pub(super) fn quality_ops(
        &self,
        group: &mut Group<'_, K>,
        update: &QualityUpdate,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let base = period_prefix(update.origin, update.period, &update.category);
        let mut entries: Vec<IndexWrite<'_>> = update.index.iter().collect();
        // A stable sort finds the runs of keys already in order (the overlay writes its kinds
        // each in order) and merges them: near linear for what `core::quality` writes.
        entries.sort_by_key(|(key, _)| *key);
        // The newest runs this one merges with (a counter in base `MERGE_FAN_IN`), and the
        // level it takes.
        let runs = if entries.is_empty() {
            Vec::new()
        } else {
            self.run_levels(&base)?
        };
        let (mut level, mut taken) = (0u8, runs.len());
        let mut bytes: u64 = entries
            .iter()
            .map(|(k, v)| (k.len() + v.map_or(0, <[u8]>::len) + 8) as u64)
            .sum();
        while let Some(from) = taken.checked_sub(MERGE_FAN_IN - 1) {
            let older = &runs[from..taken];
            let older_bytes: u64 = older.iter().map(|r| r.bytes).sum();
            if older.iter().any(|r| r.level != level) || bytes + older_bytes > MERGE_BYTES_MAX {
                break;
            }
            (bytes, level, taken) = (bytes + older_bytes, level + 1, from);
        }
        // Merged: every entry of the runs, newest first for each key, and the newest kept
        // (removals too: an older run not merged may hold the key).
        let mut chunks = Vec::new();
        for older in runs[taken..].iter().rev() {
            let (run_chunks, others) = self.run_parts(&base, older.run)?;
            for key in others {
                group.remove(Tree::Index, key);
            }
            chunks.push(run_chunks);
        }
        let mut all: Vec<AgedWrite<'_>> = Vec::new();
        all.extend(entries.iter().map(|(k, v)| (*k, 0, *v)));
        for (age, run_chunks) in chunks.iter().enumerate() {
            for (key, bytes) in run_chunks {
                let parsed = chunk_entries(bytes).ok_or_else(|| damaged(key, "run chunk"))?;
                all.extend(parsed.into_iter().map(|(k, v)| (k, age + 1, v)));
            }
        }
        if !chunks.is_empty() {
            // `all` is the runs one after the other, newest first, each in key order: a stable
            // sort by key merges them (it finds the runs) and keeps the newest of each key
            // first, which the dedup keeps.
            debug_assert!(all.is_sorted_by_key(|(_, age, _)| *age));
            all.sort_by(|a, b| a.0.cmp(b.0));
            all.dedup_by(|later, kept| later.0 == kept.0);
        }
        let written: Vec<IndexWrite<'_>> = all.into_iter().map(|(k, _, v)| (k, v)).collect();
        for (key, value) in run_writes(&base, update.index_run, level, &written) {
            group.insert(Tree::Index, key, value);
        }
        // The period's items, if it holds no more than the batch has keys: a batch closes
        // items only on its own keys, and with as many keys as the period holds items or
        // more, one read of the period's items (at most keys + 1 entries) costs less than a
        // range read for each key (a descent of sled's tree each, ~3,900 instructions: half
        // of storing a batch of 10,000 records once its period held any item, 2026-12-04).
        // With more items than keys, each key's are read on their own, as before.
        let first: Vec<kv::Entry> = self
            .scan_prefix(Tree::Feedback, base.clone())
            .take(update.current.len() + 1)
            .collect::<Result<_, _>>()?;
        let held = (first.len() <= update.current.len()).then_some(first.as_slice());
        let any = !first.is_empty();
        if any {
            // What the findings raise, by record (grouped once: a batch of bad records has as
            // many findings as records).
            let mut raised: BTreeMap<&RecordKey, BTreeSet<(&str, &str)>> = BTreeMap::new();
            for f in &update.findings {
                raised
                    .entry(&f.key)
                    .or_default()
                    .insert((f.problem.field.as_str(), f.problem.rule.as_str()));
            }
            let none = BTreeSet::new();
            // With the keys in order (a batch without withdrawals), the items held are walked
            // once beside them; else each key's are found by a binary search.
            let in_order = update.current.is_sorted_by(|a, b| a.0 <= b.0);
            let (mut prefix, mut walked) = (Vec::new(), 0);
            for (key, withdrawn) in &update.current {
                prefix.clear();
                prefix.extend(&base);
                prefix.extend(key.0.as_bytes());
                prefix.push(0);
                debug_assert_eq!(
                    prefix,
                    record_prefix(update.origin, update.period, &update.category, key)
                );
                let read;
                let items: &[kv::Entry] = match held {
                    // In key order: the key's items are the ones from where its prefix would
                    // go on that start with it.
                    Some(all) => {
                        let from = if in_order {
                            while all.get(walked).is_some_and(|(at, _)| *at < prefix) {
                                walked += 1;
                            }
                            walked
                        } else {
                            all.partition_point(|(at, _)| *at < prefix)
                        };
                        let count = all[from..]
                            .iter()
                            .take_while(|(at, _)| at.starts_with(&prefix))
                            .count();
                        &all[from..from + count]
                    }
                    None => {
                        read = self
                            .scan_prefix(Tree::Feedback, prefix.clone())
                            .collect::<Result<Vec<_>, _>>()?;
                        &read
                    }
                };
                if items.is_empty() {
                    continue;
                }
                let raised = raised.get(key).unwrap_or(&none);
                close_items(group, items, raised, (update.batch, *withdrawn), now_ms)?;
            }
        }
        self.open_items(group, update, update.batch, &update.findings, now_ms)?;
        // Keys whose current version is another batch's (rare): each key's items read on
        // their own.
        for other in &update.others {
            let prefix = record_prefix(update.origin, update.period, &update.category, &other.key);
            let items = self
                .scan_prefix(Tree::Feedback, prefix)
                .collect::<Result<Vec<_>, _>>()?;
            let raised: BTreeSet<(&str, &str)> = other
                .findings
                .iter()
                .map(|f| (f.problem.field.as_str(), f.problem.rule.as_str()))
                .collect();
            let by = (other.batch, other.withdrawn);
            close_items(group, &items, &raised, by, now_ms)?;
            self.open_items(group, update, other.batch, &other.findings, now_ms)?;
        }
        Ok(())
    }

    /// Opens an item for each of `findings` (made on batch `batch`'s versions, as `update`'s
    /// reporter found them) that is not open already.
    fn open_items(
        &self,
        group: &mut Group<'_, K>,
        update: &QualityUpdate,
        batch: BatchId,
        findings: &[Finding],
        now_ms: u64,
    ) -> Result<(), StoreError> {
        for finding in findings {
            let item = FeedbackItem {
                origin: update.origin,
                category: update.category.clone(),
                period: update.period,
                key: finding.key.clone(),
                batch,
                reporter: update.reporter,
                problem: finding.problem.clone(),
                opened_ms: now_ms,
                closed: None,
            };
            let key = item_key(&item);
            let open = match self.kv.get(Tree::Feedback, &key)? {
                Some(bytes) => decode::<FeedbackItem>("feedback", &bytes)?.closed.is_none(),
                None => false,
            };
            if !open {
                group.insert(Tree::Feedback, key, encode(&item));
            }
        }
        Ok(())
    }

    /// Writes `update` alone (the parent's findings on an own batch that came without a
    /// receipt this node stores at the same time).
    pub fn apply_quality(&self, update: &QualityUpdate, now_ms: u64) -> Result<(), StoreError> {
        let mut group = self.group();
        self.quality_ops(&mut group, update, now_ms)?;
        group.commit()
    }

    /// The period's runs with a directory, oldest first.
    fn run_levels(&self, prefix: &[u8]) -> Result<Vec<RunLevel>, StoreError> {
        self.scan_prefix(Tree::Index, [prefix, &[LEVEL]].concat())
            .map(|entry| {
                let (key, value) = entry?;
                let run = key[prefix.len() + 1..].first_chunk::<8>();
                let record = value.split_first().and_then(|(level, bytes)| {
                    Some((*level, u64::from_be_bytes(*bytes.first_chunk::<8>()?)))
                });
                match (run, record) {
                    (Some(run), Some((level, bytes))) => Ok(RunLevel {
                        run: u64::from_be_bytes(*run),
                        level,
                        bytes,
                    }),
                    _ => Err(damaged(&key, "run level record")),
                }
            })
            .collect()
    }

    /// Run `run`'s chunks (key, bytes), and the keys of everything it has in the store:
    /// its chunks, directory pieces, filter pieces and level record.
    fn run_parts(
        &self,
        prefix: &[u8],
        run: u64,
    ) -> Result<(Vec<kv::Entry>, Vec<Vec<u8>>), StoreError> {
        let chunks: Vec<kv::Entry> = self
            .scan_prefix(Tree::Index, run_prefix(prefix, CHUNK, run))
            .collect::<Result<_, _>>()?;
        let mut keys: Vec<Vec<u8>> = chunks.iter().map(|(key, _)| key.clone()).collect();
        for kind in [DIRECTORY, FILTER] {
            for entry in self.scan_prefix(Tree::Index, run_prefix(prefix, kind, run)) {
                keys.push(entry?.0);
            }
        }
        keys.push(run_prefix(prefix, LEVEL, run));
        Ok((chunks, keys))
    }

    /// The entries `wanted` (keys under `prefix`, a period's, without it; sorted, each once)
    /// of the record index: one read of an [`IndexReader`] of its own.
    pub fn index_read(&self, prefix: &[u8], wanted: &[Vec<u8>]) -> Result<IndexRead, StoreError> {
        self.index_reader(prefix.to_vec()).read(wanted)
    }

    fn index_cache(&self) -> std::sync::MutexGuard<'_, IndexCache> {
        // The cache holds only what was read from the store: a panic while it was held
        // leaves nothing untrue in it.
        self.index_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A reader of the record index of the period `prefix` ([`period_prefix`]).
    pub fn index_reader(&self, prefix: Vec<u8>) -> IndexReader<'_, K> {
        IndexReader {
            store: self,
            prefix,
            period: None,
            directories: BTreeMap::new(),
        }
    }

    /// Whether this node holds any feedback item, open or closed, of `origin`'s `category`
    /// for `period`.
    pub fn has_feedback(
        &self,
        origin: NodeId,
        period: Period,
        category: &Category,
    ) -> Result<bool, StoreError> {
        self.scan_prefix(Tree::Feedback, period_prefix(origin, period, category))
            .next()
            .transpose()
            .map(|first| first.is_some())
    }

    /// Every feedback item this node holds (of `origin` only, if given), in (origin, period,
    /// category, key) order.
    pub fn feedback(
        &self,
        origin: Option<NodeId>,
    ) -> impl Iterator<Item = Result<FeedbackItem, StoreError>> + '_ {
        let prefix = origin.map_or_else(Vec::new, |o| o.to_be_bytes().to_vec());
        self.scan_prefix(Tree::Feedback, prefix)
            .map(|entry| decode("feedback", &entry?.1))
    }

    /// Held data batch `id`, decoded (checked against its id as it is read); `None` if it is
    /// not held or not data.
    pub fn held_data_batch(&self, id: &BatchId) -> Result<Option<Batch>, StoreError> {
        self.decode_held(id, Batch::decode)
    }

    /// Held data batch `id`'s header and record keys, its values passed over
    /// ([`Batch::decode_keys`]; checked against its id as it is read); `None` if it is not
    /// held or not data.
    pub fn held_data_batch_keys(
        &self,
        id: &BatchId,
    ) -> Result<Option<(BatchHeader, Vec<RecordKey>)>, StoreError> {
        self.decode_held(id, Batch::decode_keys)
    }

    /// Held data batch `id` read (checked against its id) and decoded by `decode`.
    fn decode_held<T>(
        &self,
        id: &BatchId,
        decode: impl FnOnce(&[u8]) -> Result<T, protocol::batch::DecodeError>,
    ) -> Result<Option<T>, StoreError> {
        match self.meta(id)? {
            Some(meta) if meta.kind == ContentKind::Data => {}
            _ => return Ok(None),
        }
        let signed = self.batch(id)?.ok_or(StoreError::Corrupt { id: *id })?;
        decode(&signed.bytes)
            .map(Some)
            .map_err(|e| StoreError::Decode {
                tree: "batches",
                message: format!("held batch {id}: {e}"),
            })
    }

    /// The data batches of `origin` for `(category, period)` this node holds, decoded (not
    /// manifests or progress reports), each checked against its id as it is read.
    pub fn data_batches(
        &self,
        origin: NodeId,
        period: Period,
        category: &Category,
    ) -> Result<Vec<(BatchId, Batch)>, StoreError> {
        let mut out = Vec::new();
        for entry in self.scan_prefix(Tree::Held, period_prefix(origin, period, category)) {
            let (key, _) = entry?;
            let id = super::held_key_id(&key);
            if let Some(batch) = self.held_data_batch(&id)? {
                out.push((id, batch));
            }
        }
        Ok(out)
    }
}

/// How many bytes of runs' filter and directory pieces a store keeps between batches (the
/// least recently used go first when more are read).
const INDEX_CACHE_BYTES: usize = 16 << 20;

/// One run's pieces of one kind (filter or directory) as scanned, in key order.
type Pieces = std::sync::Arc<Vec<kv::Entry>>;

/// Runs' filter and directory pieces read before, kept between batches so that a batch
/// does not scan its whole period's again (at 800 batches of 1,000 records in one period,
/// the filters alone are ~5 MB a batch). A run never changes once written: a merge writes a
/// new run and deletes the ones it replaces, and run numbers only grow. So what was read
/// stays true for as long as the store is not opened again (after a crash, a run that was
/// not durable may be written again under its number: the store opened then starts with
/// an empty cache). As a guard, a run's pieces are kept with its level record and taken
/// only while the store holds the same one; runs a period no longer holds are dropped
/// when its runs are next read.
#[derive(Default)]
pub struct IndexCache {
    /// By period prefix, then run.
    periods: BTreeMap<Vec<u8>, BTreeMap<u64, CachedRun>>,
    bytes: usize,
    clock: u64,
}

#[derive(Default)]
struct CachedRun {
    level: Option<RunLevel>,
    filter: Option<Pieces>,
    directory: Option<std::sync::Arc<RunDirectory>>,
    used: u64,
}

impl CachedRun {
    fn bytes(&self) -> usize {
        self.filter.as_deref().map_or(0, |p| pieces_bytes(p))
            + self.directory.as_deref().map_or(0, RunDirectory::bytes)
    }
}

fn pieces_bytes(pieces: &[kv::Entry]) -> usize {
    pieces
        .iter()
        .map(|(k, v)| k.len() + v.len() + 64)
        .sum::<usize>()
        + 64
}

impl IndexCache {
    /// Drops the runs of period `prefix` that are not among `levels` or whose level record
    /// is not the one kept.
    fn keep_only(&mut self, prefix: &[u8], levels: &[RunLevel]) {
        let Some(runs) = self.periods.get_mut(prefix) else {
            return;
        };
        let mut freed = 0;
        runs.retain(|run, cached| {
            let keep = levels
                .binary_search_by_key(run, |level| level.run)
                .is_ok_and(|at| cached.level == Some(levels[at]));
            if !keep {
                freed += cached.bytes();
            }
            keep
        });
        self.bytes -= freed;
        if runs.is_empty() {
            self.periods.remove(prefix);
        }
    }

    /// Run `level` of period `prefix`, if kept with that level record.
    fn run(&mut self, prefix: &[u8], level: RunLevel) -> Option<&CachedRun> {
        self.clock += 1;
        let cached = self.periods.get_mut(prefix)?.get_mut(&level.run)?;
        if cached.level != Some(level) {
            return None;
        }
        cached.used = self.clock;
        Some(cached)
    }

    fn filter(&mut self, prefix: &[u8], level: RunLevel) -> Option<Pieces> {
        self.run(prefix, level)?.filter.clone()
    }

    fn directory(
        &mut self,
        prefix: &[u8],
        level: RunLevel,
    ) -> Option<std::sync::Arc<RunDirectory>> {
        self.run(prefix, level)?.directory.clone()
    }

    /// Keeps what `keep` puts in run `level`'s entry, and drops the least recently used runs
    /// while more than [`INDEX_CACHE_BYTES`] are kept.
    fn put(&mut self, prefix: &[u8], level: RunLevel, keep: impl FnOnce(&mut CachedRun)) {
        self.clock += 1;
        let cached = self
            .periods
            .entry(prefix.to_vec())
            .or_default()
            .entry(level.run)
            .or_default();
        if cached.level != Some(level) {
            self.bytes -= std::mem::take(cached).bytes();
            cached.level = Some(level);
        }
        cached.used = self.clock;
        self.bytes -= cached.bytes();
        keep(cached);
        self.bytes += cached.bytes();
        while self.bytes > INDEX_CACHE_BYTES {
            let Some((period, run)) = self
                .periods
                .iter()
                .flat_map(|(period, runs)| runs.iter().map(move |(run, c)| (c.used, period, *run)))
                .min()
                .map(|(_, period, run)| (period.clone(), run))
            else {
                break;
            };
            let runs = self.periods.get_mut(&period).expect("just found");
            self.bytes -= runs.remove(&run).expect("just found").bytes();
            if runs.is_empty() {
                self.periods.remove(&period);
            }
        }
    }
}

/// Reads of one period's record index against one state of the store, for as long as
/// nothing writes the period (the core assesses a batch before it stores it, under its
/// lock). What every read needs — the period's runs, their filters, the entries of the
/// earlier layouts — is taken once, at the first read, and a run's directory the first
/// time a read needs it: a batch's assessment makes two reads, and scanning sled costs
/// ~2,600 instructions an entry (callgrind, 2026-12-04), more than what is done with it.
/// Runs' filters and directories come from the store's [`IndexCache`] when it holds them.
pub struct IndexReader<'s, K: Kv> {
    store: &'s Store<K>,
    prefix: Vec<u8>,
    period: Option<PeriodParts>,
    /// Each run's directory taken so far, by run.
    directories: BTreeMap<u64, std::sync::Arc<RunDirectory>>,
}

/// What every read of a period needs, as scanned.
struct PeriodParts {
    /// Entries of the one-entry-per-key layout (key after the prefix, value).
    legacy: Vec<kv::Entry>,
    /// Chunks of runs of the first runs layout (without a directory).
    undirected: Vec<kv::Entry>,
    /// The runs with a directory, oldest first, each with its filter (none for a run
    /// written before runs had filters).
    runs: Vec<(RunLevel, Option<RunFilter>)>,
    /// How many runs' pieces were scanned from the store (not found in its cache).
    scanned: usize,
}

impl<K: Kv> IndexReader<'_, K> {
    fn period_parts(&self) -> Result<PeriodParts, StoreError> {
        let (store, prefix) = (self.store, self.prefix.as_slice());
        let at = |kind: u8| [prefix, &[kind]].concat();
        let mut legacy = Vec::new();
        for kind in LEGACY_KINDS {
            for entry in store.scan_prefix(Tree::Index, at(kind)) {
                let (key, value) = entry?;
                legacy.push((key[prefix.len()..].to_vec(), value));
            }
        }
        let levels = store.run_levels(prefix)?;
        store.index_cache().keep_only(prefix, &levels);
        let mut runs = Vec::with_capacity(levels.len());
        let mut scanned = 0;
        for level in levels {
            let filter = store.index_cache().filter(prefix, level);
            let filter = match filter {
                Some(filter) => filter,
                None => {
                    let pieces: Pieces = std::sync::Arc::new(
                        store
                            .scan_prefix(Tree::Index, run_prefix(prefix, FILTER, level.run))
                            .collect::<Result<_, _>>()?,
                    );
                    scanned += 1;
                    store
                        .index_cache()
                        .put(prefix, level, |run| run.filter = Some(pieces.clone()));
                    pieces
                }
            };
            runs.push((level, RunFilter::new(prefix, level.run, filter)?));
        }
        Ok(PeriodParts {
            legacy,
            undirected: store
                .scan_prefix(Tree::Index, at(UNDIRECTED_CHUNK))
                .collect::<Result<_, _>>()?,
            runs,
            scanned,
        })
    }

    /// The entries `wanted` (keys under the period's prefix, without it; sorted, each once)
    /// of the record index: each key's value in the newest run holding it. Asks each run's
    /// filter (newest run first; an older run only for the keys the newer ones do not hold),
    /// reads the directory of a run only if its filter lets a key through, and then only the
    /// chunks the directory's first keys and filters point to, so the cost follows the
    /// batch, not the period. Runs of the first runs layout and entries of the
    /// one-entry-per-key layout, when a period has any, are scanned.
    pub fn read<W: AsRef<[u8]>>(&mut self, wanted: &[W]) -> Result<IndexRead, StoreError> {
        debug_assert!(
            wanted
                .windows(2)
                .all(|pair| pair[0].as_ref() < pair[1].as_ref()),
            "index reads take their keys sorted, each once"
        );
        let mut filters_read = 0;
        if self.period.is_none() {
            let parts = self.period_parts()?;
            filters_read = parts.scanned;
            self.period = Some(parts);
        }
        let IndexReader {
            store,
            prefix,
            period,
            directories,
        } = self;
        let (store, prefix) = (*store, prefix.as_slice());
        let period = period.as_ref().expect("read above");
        // (run, value) of each wanted key seen so far, by its place in `wanted`; run 0 is the
        // one-entry-per-key layout.
        let mut found: Vec<Option<(u64, Option<Vec<u8>>)>> = vec![None; wanted.len()];
        let mut see = |n: usize, run: u64, value: Option<&[u8]>| {
            if found[n].as_ref().is_none_or(|(seen, _)| *seen <= run) {
                found[n] = Some((run, value.map(<[u8]>::to_vec)));
            }
        };
        let place = |sub: &[u8]| wanted.binary_search_by(|key| key.as_ref().cmp(sub)).ok();
        for (sub, value) in &period.legacy {
            if let Some(n) = place(sub) {
                see(n, 0, Some(value));
            }
        }
        let mut last_run = 0;
        for (key, value) in &period.undirected {
            let (run, _) = run_and_number(&key[prefix.len() + 1..])
                .ok_or_else(|| damaged(key, "run chunk"))?;
            last_run = last_run.max(run);
            for (sub, value) in chunk_entries(value).ok_or_else(|| damaged(key, "run chunk"))? {
                if let Some(n) = place(sub) {
                    see(n, run, value);
                }
            }
        }
        last_run = last_run.max(period.runs.last().map_or(0, |(level, _)| level.run));
        // The runs, newest first, each asked for the keys no newer run holds: its filter
        // says which it may hold (a run written before runs had filters: every key); for those, its directory says which chunk (the keys and
        // the chunks are both in order), and the chunk's filter whether to read it (a key
        // the run does not hold is read for only on false positives of both). Each key as
        // (place in `wanted`, hash for the chunk filters, hash for the run filters).
        let mut unresolved: Vec<(usize, u64, u64)> = wanted
            .iter()
            .enumerate()
            .map(|(n, key)| {
                let hash = bloom_hash(key.as_ref());
                (n, hash, filter_hash(hash))
            })
            .collect();
        let (mut chunks_read, mut directories_read) = (0, 0);
        for (level, filter) in period.runs.iter().rev() {
            if unresolved.is_empty() {
                break;
            }
            // The keys the run may hold, by their place in `unresolved`.
            let candidates: Vec<usize> = match filter {
                Some(filter) => filter.candidates(&unresolved),
                None => (0..unresolved.len()).collect(),
            };
            if candidates.is_empty() {
                continue;
            }
            let directory = match directories.entry(level.run) {
                std::collections::btree_map::Entry::Occupied(held) => held.into_mut(),
                std::collections::btree_map::Entry::Vacant(place) => {
                    let cached = store.index_cache().directory(prefix, *level);
                    let directory = match cached {
                        Some(directory) => directory,
                        None => {
                            let pieces: Vec<kv::Entry> = store
                                .scan_prefix(Tree::Index, run_prefix(prefix, DIRECTORY, level.run))
                                .collect::<Result<_, _>>()?;
                            if pieces.is_empty() {
                                let key = run_prefix(prefix, DIRECTORY, level.run);
                                return Err(damaged(&key, "run directory (missing)"));
                            }
                            directories_read += 1;
                            let directory = std::sync::Arc::new(RunDirectory::parse(
                                prefix.len(),
                                level.run,
                                pieces,
                            )?);
                            store.index_cache().put(prefix, *level, |run| {
                                run.directory = Some(directory.clone());
                            });
                            directory
                        }
                    };
                    place.insert(directory)
                }
            };
            // Each candidate's chunk: by one pass over the keys and the chunks together
            // (both in order), or by a binary search for each key when that compares fewer
            // first keys (few keys got through the filter of a run of many chunks).
            let chunks = directory.len();
            let search = candidates
                .len()
                .saturating_mul((usize::BITS - chunks.leading_zeros()) as usize)
                < chunks;
            let mut reads: Vec<(u32, Vec<usize>)> = Vec::new();
            let mut chunk = 0;
            for n in candidates {
                let (place, hash, _) = unresolved[n];
                let key = wanted[place].as_ref();
                if search {
                    match directory.chunk_of(key) {
                        Some(found) => chunk = found,
                        None => continue,
                    }
                } else {
                    while chunk + 1 < chunks && directory.first(chunk + 1) <= key {
                        chunk += 1;
                    }
                    if chunk >= chunks || directory.first(chunk) > key {
                        continue;
                    }
                }
                if bloom_may_hold(directory.bloom(chunk), hash) {
                    match reads.last_mut() {
                        Some((at, keys)) if *at == chunk as u32 => keys.push(n),
                        _ => reads.push((chunk as u32, vec![n])),
                    }
                }
            }
            let mut resolved = vec![false; unresolved.len()];
            for (chunk, keys) in reads {
                let chunk_key = run_key(prefix, CHUNK, directory.run, chunk);
                let bytes = store
                    .kv
                    .get(Tree::Index, &chunk_key)?
                    .ok_or_else(|| damaged(&chunk_key, "run chunk (missing)"))?;
                chunks_read += 1;
                let entries =
                    chunk_entries(&bytes).ok_or_else(|| damaged(&chunk_key, "run chunk"))?;
                for n in keys {
                    let place = unresolved[n].0;
                    let key = wanted[place].as_ref();
                    if let Ok(at) = entries.binary_search_by(|(sub, _)| (*sub).cmp(key)) {
                        see(place, directory.run, entries[at].1);
                        resolved[n] = true;
                    }
                }
            }
            let mut n = 0;
            unresolved.retain(|_| {
                n += 1;
                !resolved[n - 1]
            });
        }
        Ok(IndexRead {
            values: found
                .into_iter()
                .map(|seen| seen.and_then(|(_, value)| value))
                .collect(),
            next_run: last_run + 1,
            chunks_read,
            directories_read,
            filters_read,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemKv;

    fn prefix(period: &str) -> Vec<u8> {
        period_prefix(
            NodeId::parse("445281").unwrap(),
            Period::parse(period).unwrap(),
            &Category::parse("water_fee").unwrap(),
        )
    }

    fn update(period: &str, run: u64, writes: &[(&str, Option<&str>)]) -> QualityUpdate {
        QualityUpdate {
            origin: NodeId::parse("445281").unwrap(),
            category: Category::parse("water_fee").unwrap(),
            period: Period::parse(period).unwrap(),
            batch: BatchId::of(b"batch"),
            reporter: NodeId::parse("445200").unwrap(),
            current: Vec::new(),
            findings: Vec::new(),
            others: Vec::new(),
            index: writes
                .iter()
                .map(|(key, value)| (key.as_bytes(), value.map(str::as_bytes)))
                .collect(),
            index_run: run,
            new_keys: None,
        }
    }

    fn apply(store: &Store<MemKv>, update: &QualityUpdate) {
        let mut group = store.group();
        store.quality_ops(&mut group, update, 1).unwrap();
        group.commit().unwrap();
    }

    /// Keys as `index_read` takes them: sorted, each once.
    fn wanted(keys: &[&str]) -> Vec<Vec<u8>> {
        let set: BTreeSet<Vec<u8>> = keys.iter().map(|k| k.as_bytes().to_vec()).collect();
        set.into_iter().collect()
    }

    /// The keys read that have a value, with it.
    fn held(wanted: &[Vec<u8>], read: &IndexRead) -> BTreeMap<Vec<u8>, Vec<u8>> {
        assert_eq!(read.values.len(), wanted.len());
        wanted
            .iter()
            .zip(&read.values)
            .filter_map(|(key, value)| Some((key.clone(), value.clone()?)))
            .collect()
    }

    fn text(wanted: &[Vec<u8>], read: &IndexRead, key: &str) -> Option<String> {
        held(wanted, read)
            .get(key.as_bytes())
            .map(|v| String::from_utf8(v.clone()).unwrap())
    }

    /// Runs: the newest run holding a key gives its value, a removal hides older values,
    /// entries of the one-entry-per-key layout read as the oldest run and runs of the first
    /// runs layout (no directory) as the runs they are, a run larger than a chunk is cut into
    /// several, and a read reads only the period asked for.
    #[test]
    fn the_newest_run_holding_a_key_gives_its_value() {
        let store = Store::new(MemKv::new());
        let prefix = prefix("2026-05");
        // The earlier layouts: one entry per key; then a run without a directory (run 1).
        let mut group = store.group();
        for (key, value) in [("klegacy", "old"), ("kboth", "old"), ("kundirected", "old")] {
            group.insert(
                Tree::Index,
                [prefix.as_slice(), key.as_bytes()].concat(),
                value.as_bytes().to_vec(),
            );
        }
        let mut undirected = Vec::new();
        push_chunk_entry(&mut undirected, b"kundirected", Some(b"run 1"));
        group.insert(
            Tree::Index,
            run_key(&prefix, UNDIRECTED_CHUNK, 1, 0),
            undirected,
        );
        group.commit().unwrap();
        // Run 2: many entries (several chunks), and one key of another period.
        let many: Vec<(String, Option<String>)> = (0..2_000)
            .map(|n| {
                (
                    format!("k{n:05}"),
                    Some(format!("value of {n} {}", "x".repeat(20))),
                )
            })
            .collect();
        let borrowed: Vec<(&str, Option<&str>)> = many
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref()))
            .chain([("kboth", Some("run 2")), ("kgone", Some("run 2"))])
            .collect();
        apply(&store, &update("2026-05", 2, &borrowed));
        apply(
            &store,
            &update("2026-06", 1, &[("kboth", Some("other period"))]),
        );
        let chunks = store
            .scan_prefix(Tree::Index, [prefix.as_slice(), &[CHUNK]].concat())
            .count();
        assert!(
            chunks > 2,
            "a run of ~80 KB is cut into chunks, got {chunks}"
        );
        // Run 3 changes one key and removes another.
        apply(
            &store,
            &update("2026-05", 3, &[("k00007", Some("run 3")), ("kgone", None)]),
        );
        let wanted = wanted(&[
            "klegacy",
            "kboth",
            "kundirected",
            "kgone",
            "k00007",
            "k00000",
            "k01999",
            "knever",
        ]);
        let read = store.index_read(&prefix, &wanted).unwrap();
        assert_eq!(text(&wanted, &read, "klegacy").as_deref(), Some("old"));
        assert_eq!(
            text(&wanted, &read, "kundirected").as_deref(),
            Some("run 1")
        );
        assert_eq!(text(&wanted, &read, "kboth").as_deref(), Some("run 2"));
        assert_eq!(text(&wanted, &read, "k00007").as_deref(), Some("run 3"));
        for n in [0, 1999] {
            assert_eq!(
                text(&wanted, &read, &format!("k{n:05}")),
                Some(format!("value of {n} {}", "x".repeat(20)))
            );
        }
        assert_eq!(text(&wanted, &read, "kgone"), None, "removed by run 3");
        assert_eq!(text(&wanted, &read, "knever"), None);
        assert_eq!(held(&wanted, &read).len(), 6);
        assert_eq!(read.next_run, 4);
        let other = store.index_read(&self::prefix("2026-06"), &wanted).unwrap();
        assert_eq!(
            text(&wanted, &other, "kboth").as_deref(),
            Some("other period")
        );
        assert_eq!(held(&wanted, &other).len(), 1);
        assert_eq!(other.next_run, 2);
    }

    /// A read's cost follows what it asks for, not what the period holds: among the runs of
    /// 60 batches of 200 keys each, finding 20 keys of one batch and missing 20 more reads a
    /// few chunks, not the period's dozens.
    #[test]
    fn a_read_visits_only_the_chunks_that_may_hold_its_keys() {
        let store = Store::new(MemKv::new());
        let prefix = prefix("2026-05");
        let key = |run: u64, n: u64| format!("k{:06}", n * 100 + run);
        for run in 1..=60 {
            let keys: Vec<String> = (0..200).map(|n| key(run, n)).collect();
            let values: Vec<String> = keys.iter().map(|k| format!("{k} of run {run}")).collect();
            let writes: Vec<(&str, Option<&str>)> = keys
                .iter()
                .zip(&values)
                .map(|(k, v)| (k.as_str(), Some(v.as_str())))
                .collect();
            apply(&store, &update("2026-05", run, &writes));
        }
        let chunks = store
            .scan_prefix(Tree::Index, [prefix.as_slice(), &[CHUNK]].concat())
            .count();
        assert!(chunks >= 60, "{chunks}");
        let hits: Vec<String> = (0..20).map(|n| key(7, n)).collect();
        let misses: Vec<String> = (0..20).map(|n| key(99, n * 10)).collect();
        let all: Vec<&str> = hits.iter().chain(&misses).map(String::as_str).collect();
        let wanted = wanted(&all);
        let read = store.index_read(&prefix, &wanted).unwrap();
        for hit in &hits {
            assert_eq!(text(&wanted, &read, hit), Some(format!("{hit} of run 7")));
        }
        assert_eq!(held(&wanted, &read).len(), hits.len());
        assert_eq!(read.next_run, 61);
        assert!(
            read.chunks_read <= 8,
            "read {} of {chunks} chunks",
            read.chunks_read
        );
        let runs = store.run_levels(&prefix).unwrap().len();
        assert!(
            read.directories_read <= 3,
            "read {} of {runs} runs' directories",
            read.directories_read
        );
        // Keys no run holds are turned away by the runs' filters: no directory is read.
        let misses = self::wanted(&misses.iter().map(String::as_str).collect::<Vec<_>>());
        let read = store.index_read(&prefix, &misses).unwrap();
        assert!(read.values.iter().all(Option::is_none));
        assert_eq!(
            (read.directories_read, read.chunks_read),
            (0, 0),
            "{runs} runs"
        );
    }

    /// A run's filter and directory are scanned from the store once: a reader's second read
    /// and later readers take them from the store's cache, a store opened again over the
    /// same storage scans them again, a run written again under its number (as after a
    /// crash that lost it) is not taken from the cache, and runs merged away leave it.
    #[test]
    fn a_run_is_scanned_once_until_it_changes_or_the_store_is_opened_again() {
        let kv = MemKv::new();
        let store = Store::new(kv.clone());
        let prefix = prefix("2026-05");
        let write = |store: &Store<MemKv>, run: u64, value: &str| {
            let keys: Vec<String> = (0..300).map(|n| format!("k{run}-{n:04}")).collect();
            let writes: Vec<(&str, Option<&str>)> =
                keys.iter().map(|k| (k.as_str(), Some(value))).collect();
            apply(store, &update("2026-05", run, &writes));
        };
        for run in 1..=5u64 {
            write(&store, run, "v");
        }
        let first = wanted(&["k1-0001", "k3-0002", "k5-0299"]);
        let second = wanted(&["k1-0002", "k3-0003", "k4-0000", "knone"]);
        let mut reader = store.index_reader(prefix.clone());
        let read = reader.read(&first).unwrap();
        assert_eq!(read.values, vec![Some(b"v".to_vec()); 3]);
        assert_eq!((read.filters_read, read.directories_read), (5, 3));
        let read = reader.read(&second).unwrap();
        assert_eq!(
            (read.filters_read, read.directories_read),
            (0, 1),
            "run 4's directory is new"
        );
        let values = read.values;
        assert_eq!(values.iter().filter(|v| v.is_some()).count(), 3);
        let again = store.index_read(&prefix, &second).unwrap();
        assert_eq!(again.values, values);
        assert_eq!((again.filters_read, again.directories_read), (0, 0));
        let reopened = Store::new(kv.clone()).index_read(&prefix, &second).unwrap();
        assert_eq!(reopened.values, values);
        assert_eq!((reopened.filters_read, reopened.directories_read), (5, 3));
        // Run 1 written again under its number, with other values (its level record's
        // size changes with them).
        let mut group = store.group();
        for key in store.run_parts(&prefix, 1).unwrap().1 {
            group.remove(Tree::Index, key);
        }
        group.commit().unwrap();
        write(&store, 1, "written again");
        let read = store.index_read(&prefix, &second).unwrap();
        assert_eq!(read.values[0].as_deref(), Some(&b"written again"[..]));
        assert_eq!((read.filters_read, read.directories_read), (1, 1));
        // Runs 6 to 8: the eighth run merges runs 1 to 7 into it; the cache keeps runs the
        // period holds only.
        for run in 6..=8u64 {
            write(&store, run, "v");
        }
        let read = store.index_read(&prefix, &second).unwrap();
        assert_eq!(read.values[1].as_deref(), Some(&b"v"[..]));
        let levels: Vec<u64> = store
            .run_levels(&prefix)
            .unwrap()
            .iter()
            .map(|l| l.run)
            .collect();
        assert_eq!(levels, vec![8]);
        let cache = store.index_cache();
        let cached: Vec<u64> = cache.periods[&prefix].keys().copied().collect();
        assert_eq!(cached, levels);
        let bytes: usize = cache.periods[&prefix].values().map(CachedRun::bytes).sum();
        assert_eq!(cache.bytes, bytes);
    }

    /// The cache keeps at most its bytes, dropping the least recently used run first.
    #[test]
    fn the_index_cache_drops_the_least_recently_used_runs() {
        let mut cache = IndexCache::default();
        let level = |run: u64| RunLevel {
            run,
            level: 0,
            bytes: 1,
        };
        let big = || -> Pieces { std::sync::Arc::new(vec![(vec![0], vec![0; 6 << 20])]) };
        let directory = std::sync::Arc::new(RunDirectory {
            run: 3,
            pieces: big().to_vec(),
            chunks: Vec::new(),
        });
        cache.put(b"p", level(1), |run| run.filter = Some(big()));
        cache.put(b"q", level(2), |run| run.filter = Some(big()));
        assert!(cache.filter(b"p", level(1)).is_some());
        cache.put(b"p", level(3), |run| {
            run.directory = Some(directory.clone())
        });
        assert!(cache.bytes <= INDEX_CACHE_BYTES, "{}", cache.bytes);
        assert!(
            cache.filter(b"q", level(2)).is_none(),
            "the least recently used"
        );
        assert!(cache.filter(b"p", level(1)).is_some());
        assert!(cache.directory(b"p", level(3)).is_some());
        assert!(
            cache.filter(b"p", level(3)).is_none(),
            "only its directory is kept"
        );
        assert!(!cache.periods.contains_key(&b"q"[..]));
        let other = RunLevel {
            bytes: 2,
            ..level(1)
        };
        assert!(cache.filter(b"p", other).is_none(), "another level record");
        cache.keep_only(b"p", &[level(3)]);
        assert_eq!(cache.bytes, directory.bytes());
        cache.keep_only(b"p", &[]);
        assert_eq!(cache.bytes, 0);
        assert!(cache.periods.is_empty());
    }

    /// Runs of random writes and removals over a fixed set of keys, and the map the same
    /// writes make: what the index must read as.
    struct RandomRuns {
        seed: u64,
        keys: Vec<String>,
        wanted: Vec<Vec<u8>>,
        reference: BTreeMap<String, String>,
    }

    impl RandomRuns {
        fn new(seed: u64, keys: usize) -> RandomRuns {
            let keys: Vec<String> = (0..keys).map(|n| format!("k{n:03}")).collect();
            let wanted = wanted(&keys.iter().map(String::as_str).collect::<Vec<_>>());
            RandomRuns {
                seed,
                keys,
                wanted,
                reference: BTreeMap::new(),
            }
        }

        fn below(&mut self, n: u64) -> u64 {
            self.seed ^= self.seed >> 12;
            self.seed ^= self.seed << 25;
            self.seed ^= self.seed >> 27;
            self.seed.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
        }

        /// Writes run `run`: 1 to `most` keys, one in `remove_one_in` of them removed.
        fn write(&mut self, store: &Store<MemKv>, run: u64, most: u64, remove_one_in: u64) {
            let mut writes: BTreeMap<String, Option<String>> = BTreeMap::new();
            for _ in 0..(1 + self.below(most)) {
                let at = self.below(self.keys.len() as u64) as usize;
                let key = self.keys[at].clone();
                let value = (self.below(remove_one_in) > 0)
                    .then(|| format!("{key} at {run} {}", self.below(1000)));
                writes.insert(key, value);
            }
            for (key, value) in &writes {
                match value {
                    Some(value) => self.reference.insert(key.clone(), value.clone()),
                    None => self.reference.remove(key),
                };
            }
            let borrowed: Vec<(&str, Option<&str>)> = writes
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_deref()))
                .collect();
            apply(store, &update("2026-05", run, &borrowed));
        }

        /// Reads every key of the period and checks the index reads as the map.
        fn check(&self, store: &Store<MemKv>, after: u64) -> IndexRead {
            let read = store.index_read(&prefix("2026-05"), &self.wanted).unwrap();
            let got: BTreeMap<String, String> = held(&self.wanted, &read)
                .into_iter()
                .map(|(k, v)| (String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap()))
                .collect();
            assert_eq!(got, self.reference, "after run {after}");
            read
        }
    }

    /// Runs written before runs had filters (a directory only) read as they did, beside
    /// runs with one, and merge into runs with one: 120 runs of random writes and removals
    /// over 300 keys, with the filters of every third run taken away as it is written,
    /// checked after each run against a map written the same way.
    #[test]
    fn runs_without_a_filter_read_and_merge_as_before() {
        let store = Store::new(MemKv::new());
        let prefix = prefix("2026-05");
        let mut runs = RandomRuns::new(0x2545_F491_4F6C_DD1D, 300);
        let mut unfiltered = 0;
        for run in 1..=120u64 {
            runs.write(&store, run, 40, 4);
            if run % 3 == 0 {
                let pieces: Vec<Vec<u8>> = store
                    .scan_prefix(Tree::Index, run_prefix(&prefix, FILTER, run))
                    .map(|e| e.unwrap().0)
                    .collect();
                assert!(!pieces.is_empty(), "run {run} has a filter");
                let mut group = store.group();
                for key in pieces {
                    group.remove(Tree::Index, key);
                }
                group.commit().unwrap();
            }
            let levels = store.run_levels(&prefix).unwrap();
            let filtered = store
                .scan_prefix(Tree::Index, [prefix.as_slice(), &[FILTER]].concat())
                .map(|e| run_and_number(&e.unwrap().0[prefix.len() + 1..]).unwrap().0)
                .collect::<BTreeSet<u64>>()
                .len();
            unfiltered = unfiltered.max(levels.len() - filtered);
            runs.check(&store, run);
        }
        assert!(
            unfiltered >= 2,
            "runs without a filter were read: {unfiltered}"
        );
    }

    /// Runs merge as they pile up, and the index reads the same as a map written the same
    /// way: 300 runs of random writes and removals over 400 keys, checked after each run; the
    /// period never holds more runs than the merging allows, and the merged ones are gone.
    #[test]
    fn merged_runs_read_as_the_runs_they_replace() {
        let store = Store::new(MemKv::new());
        let prefix = prefix("2026-05");
        let mut runs = RandomRuns::new(0x9E37_79B9_7F4A_7C15, 400);
        let mut most_runs = 0;
        let mut digits = Vec::new();
        let mut n = 300;
        while n > 0 {
            digits.push(n % MERGE_FAN_IN);
            n /= MERGE_FAN_IN;
        }
        for run in 1..=300u64 {
            runs.write(&store, run, 60, 5);
            let read = runs.check(&store, run);
            assert_eq!(read.next_run, run + 1);
            let levels = store.run_levels(&prefix).unwrap();
            most_runs = most_runs.max(levels.len());
            // A counter in base MERGE_FAN_IN: at most MERGE_FAN_IN - 1 runs per level.
            assert!(
                levels.len() <= (MERGE_FAN_IN - 1) * digits.len(),
                "after run {run}: {levels:?}"
            );
            let directories: BTreeSet<u64> = store
                .scan_prefix(Tree::Index, [prefix.as_slice(), &[DIRECTORY]].concat())
                .map(|e| run_and_number(&e.unwrap().0[prefix.len() + 1..]).unwrap().0)
                .collect();
            let chunks: BTreeSet<u64> = store
                .scan_prefix(Tree::Index, [prefix.as_slice(), &[CHUNK]].concat())
                .map(|e| run_and_number(&e.unwrap().0[prefix.len() + 1..]).unwrap().0)
                .collect();
            let filters: BTreeSet<u64> = store
                .scan_prefix(Tree::Index, [prefix.as_slice(), &[FILTER]].concat())
                .map(|e| run_and_number(&e.unwrap().0[prefix.len() + 1..]).unwrap().0)
                .collect();
            let runs: BTreeSet<u64> = levels.iter().map(|l| l.run).collect();
            assert_eq!(directories, runs, "after run {run}");
            assert_eq!(chunks, runs, "after run {run}");
            assert_eq!(filters, runs, "after run {run}");
        }
        assert!(most_runs >= MERGE_FAN_IN, "{most_runs}");
        // As many runs of each level as 300's digit in base MERGE_FAN_IN.
        let levels: Vec<u8> = store
            .run_levels(&prefix)
            .unwrap()
            .iter()
            .map(|l| l.level)
            .collect();
        let expected: Vec<u8> = digits
            .iter()
            .enumerate()
            .rev()
            .flat_map(|(level, digit)| std::iter::repeat_n(level as u8, *digit))
            .collect();
        assert_eq!(levels, expected);
        assert!(expected.len() > 1, "{expected:?}");
    }

    /// A chunk's filter holds every key written to it and lets few others through: the
    /// false positives a key absent from a run costs stay near the design's 0.05 %.
    #[test]
    fn the_filters_hold_their_keys_and_few_others() {
        let keys: Vec<String> = (0..50).map(|n| format!("k44528120260512{n:06}")).collect();
        let hashes: Vec<u64> = keys.iter().map(|k| bloom_hash(k.as_bytes())).collect();
        let bloom = bloom_of(&hashes);
        assert_eq!(bloom.len(), 100, "16 bits per key");
        assert!(hashes.iter().all(|h| bloom_may_hold(&bloom, *h)));
        // Absent keys that share long prefixes with the present ones, the usual case.
        let mut passed = 0;
        let tries = 200_000;
        for n in 0..tries {
            let absent = format!("k44528120260512{:06}", 1_000 + n);
            passed += usize::from(bloom_may_hold(&bloom, bloom_hash(absent.as_bytes())));
        }
        let rate = passed as f64 / tries as f64;
        assert!(rate < 0.002, "false positives {passed} of {tries}");
        assert!(
            !bloom_may_hold(&[], bloom_hash(b"k")),
            "an empty filter holds nothing"
        );
    }

    /// A run's filter holds every key of the run and lets few others through (~0.1 %), over
    /// several pieces.
    #[test]
    fn a_run_filter_holds_its_keys_and_few_others() {
        let keys: Vec<String> = (0..50_000)
            .map(|n| format!("k44528120260512{n:06}"))
            .collect();
        let hashes: Vec<u64> = keys.iter().map(|k| bloom_hash(k.as_bytes())).collect();
        let pieces = run_filter_of(&hashes);
        assert_eq!(
            pieces.len(),
            50_000 * 2 / (FILTER_BLOCKS_PER_PIECE * 32) + 1
        );
        let prefix = prefix("2026-05");
        let stored = |pieces: &[Vec<u8>]| -> Pieces {
            std::sync::Arc::new(
                (0..)
                    .zip(pieces)
                    .map(|(n, piece)| (run_key(&prefix, FILTER, 1, n), piece.clone()))
                    .collect(),
            )
        };
        let filter = RunFilter::new(&prefix, 1, stored(&pieces))
            .unwrap()
            .unwrap();
        assert!(hashes.iter().all(|h| filter.may_hold(filter_hash(*h))));
        let mut passed = 0;
        let tries = 200_000;
        for n in 0..tries {
            let absent = format!("k44528120260512{:06}", 100_000 + n);
            passed += usize::from(filter.may_hold(filter_hash(bloom_hash(absent.as_bytes()))));
        }
        assert!(passed < tries / 400, "false positives {passed} of {tries}");
        // Pieces that are not a filter's are refused.
        let mut short = pieces.clone();
        short[0].pop();
        assert!(RunFilter::new(&prefix, 1, stored(&short)).is_err());
        assert!(
            RunFilter::new(&prefix, 2, stored(&pieces)).is_err(),
            "another run's"
        );
        assert!(
            RunFilter::new(&prefix, 1, stored(&[])).unwrap().is_none(),
            "no filter"
        );
    }

    /// A batch closes the open items of its own keys only (none on another key, even one
    /// its key is the start of), unless it raises the same problem again and does not
    /// withdraw the record — read from the period's items at once when it has as many keys
    /// as they are or more, and key by key otherwise.
    #[test]
    fn a_batch_closes_the_items_of_its_own_keys_whichever_way_they_are_read() {
        let finding = |key: &str| Finding {
            key: RecordKey(key.to_owned()),
            problem: Problem {
                field: "billed_amount".into(),
                label: "应缴金额".into(),
                value: "9000000".into(),
                rule: protocol::record::Rule::UsualRange,
                severity: protocol::record::Severity::Warning,
                message: "far above the usual".into(),
            },
        };
        let opened = ["K1", "K10", "K2", "K3"];
        /// The keys of the batch, withdrawn or not; the items it should leave open.
        type Case = (&'static [(&'static str, bool)], &'static [&'static str]);
        let cases: [Case; 2] = [
            // Five keys, four items: the period's items are read at once.
            (
                &[
                    ("K1", false),
                    ("K2", false),
                    ("K3", true),
                    ("K5", false),
                    ("K6", false),
                ],
                &["K10", "K2"],
            ),
            // Two keys, four items: each key's are read on their own.
            (&[("K1", false), ("K2", false)], &["K10", "K2", "K3"]),
        ];
        for (keys, open) in cases {
            let store = Store::new(MemKv::new());
            let mut first = update("2026-05", 1, &[]);
            first.findings = opened.iter().map(|k| finding(k)).collect();
            store.apply_quality(&first, 1).unwrap();
            // Another period's item on the same key stays open.
            let mut other = update("2026-06", 1, &[]);
            other.findings = vec![finding("K1")];
            store.apply_quality(&other, 1).unwrap();
            let mut second = update("2026-05", 2, &[]);
            second.batch = BatchId::of(b"the correction");
            second.current = keys
                .iter()
                .map(|(k, withdrawn)| (RecordKey((*k).to_owned()), *withdrawn))
                .collect();
            // The correction still has K2's and K3's problem (K3 is withdrawn).
            second.findings = vec![finding("K2"), finding("K3")];
            store.apply_quality(&second, 2).unwrap();
            let items: Vec<FeedbackItem> = store.feedback(None).map(Result::unwrap).collect();
            let still_open: BTreeSet<(String, String)> = items
                .iter()
                .filter(|item| item.closed.is_none() && item.batch == BatchId::of(b"batch"))
                .map(|item| (item.period.to_string(), item.key.0.clone()))
                .collect();
            let mut expected: BTreeSet<(String, String)> = open
                .iter()
                .map(|k| ("2026-05".to_owned(), (*k).to_owned()))
                .collect();
            expected.insert(("2026-06".to_owned(), "K1".to_owned()));
            assert_eq!(still_open, expected, "the batch's keys {keys:?}");
            let closed = items.iter().filter(|item| item.closed.is_some()).count();
            assert_eq!(
                closed,
                opened.len() - open.len(),
                "the batch's keys {keys:?}"
            );
        }
    }

    /// Writes put before others (the fresh path's histograms before its keys' entries) read
    /// as the two lists one after the other, and take back as the last write; nothing put
    /// before changes nothing.
    #[test]
    fn writes_put_before_others_read_as_both_in_order() {
        let back: IndexWrites = [
            (&b"k1"[..], Some(&b"one"[..])),
            (b"k2", None),
            (b"k3", Some(b"")),
        ]
        .into_iter()
        .collect();
        let front: IndexWrites = [(&b"h"[..], Some(&b"xy"[..])), (b"i", None)]
            .into_iter()
            .collect();
        let mut joined = back.clone();
        joined.prepend(&front);
        let expected: Vec<IndexWrite<'_>> = front.iter().chain(back.iter()).collect();
        assert_eq!(joined.iter().collect::<Vec<_>>(), expected);
        joined.pop();
        assert_eq!(joined.iter().collect::<Vec<_>>(), expected[..4]);
        joined.push(b"k4", Some(b"four"));
        assert_eq!(joined.last(), Some((&b"k4"[..], Some(&b"four"[..]))));
        let mut same = back.clone();
        same.prepend(&IndexWrites::default());
        assert_eq!(same, back);
    }

    /// A damaged or missing chunk or directory piece is an error naming the tree, not a
    /// panic or a silent miss.
    #[test]
    fn a_damaged_run_is_an_error() {
        let prefix = prefix("2026-05");
        let wanted = wanted(&["ka", "kb"]);
        let damage = |key: Vec<u8>, value: Option<Vec<u8>>, says: &str| {
            let store = Store::new(MemKv::new());
            apply(
                &store,
                &update("2026-05", 1, &[("ka", Some("a")), ("kb", Some("b"))]),
            );
            let mut group = store.group();
            match value {
                Some(value) => group.insert(Tree::Index, key, value),
                None => group.remove(Tree::Index, key),
            }
            group.commit().unwrap();
            let error = store.index_read(&prefix, &wanted).unwrap_err();
            assert!(error.to_string().contains(says), "{error}");
        };
        damage(
            run_key(&prefix, CHUNK, 1, 0),
            Some(vec![0, 9, b'k']),
            "run chunk",
        );
        damage(run_key(&prefix, CHUNK, 1, 0), None, "missing");
        damage(
            run_key(&prefix, DIRECTORY, 1, 0),
            Some(vec![0, 0, 0, 9]),
            "run directory",
        );
        damage(
            run_key(&prefix, UNDIRECTED_CHUNK, 1, 0),
            Some(vec![0, 9, b'k']),
            "run chunk",
        );
        damage(
            run_key(&prefix, FILTER, 1, 0),
            Some(vec![0; 31]),
            "run filter",
        );
        damage(
            run_key(&prefix, FILTER, 1, 2),
            Some(vec![0; 32]),
            "a piece is missing",
        );
        damage(
            run_key(&prefix, DIRECTORY, 1, 0),
            None,
            "run directory (missing)",
        );
    }
}
