//! Period manifests (control totals): what an origin meant to send for one category and
//! period, signed by the origin.
//!
//! A manifest names the batches the origin submitted for `(category, period)` with their
//! record counts and what they supersede, and optionally the total that the data-source unit
//! declared (e.g. the water company's count of billed enterprise accounts). A manifest with no
//! batches is a **nil manifest** (零报告): "nothing to report this period".
//!
//! Manifests travel exactly like batches: the same envelope ([`SignedBatch`]: id = BLAKE3 of
//! the canonical bytes, the origin's signature over the id), the same offers, streams,
//! receipts, durability and reconciliation. The bytes say which kind they are: the first
//! field of both layouts is the format number ([`BATCH_FORMAT`] for data, [`MANIFEST_FORMAT`]
//! here), so one id can never be read as both, and a signature over a manifest's id can never
//! pass for a data batch.
//!
//! A later manifest for the same `(origin, category, period)` (a correction added batches, or
//! the declared total changed) carries a higher `revision`; the highest revision counts.

use bincode::{Decode, Encode};

use crate::batch::{
    BATCH_FORMAT, Batch, BatchHeader, DecodeError, SignedBatch, Signer, bincode_config,
};
use crate::ids::{BatchId, Category, NodeId, Period};
use crate::progress::{PROGRESS_BYTES_MAX, PROGRESS_FORMAT, ProgressReport};

/// Layout version of a manifest, sharing the first field with [`BATCH_FORMAT`].
pub const MANIFEST_FORMAT: u16 = 2;
/// Most batches one manifest names (a month of a busy category fits many times over).
pub const MANIFEST_BATCHES_MAX: usize = 100_000;
/// Largest encoded manifest.
pub const MANIFEST_BYTES_MAX: usize = 8 * 1024 * 1024;

/// One batch a manifest names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Encode, Decode)]
pub struct ManifestEntry {
    pub batch: BatchId,
    pub records: u32,
    /// The earlier batch this one corrects, if any.
    pub supersedes: Option<BatchId>,
}

/// What an origin submitted for one category and period.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Manifest {
    pub format: u16,
    pub origin: NodeId,
    pub category: Category,
    pub period: Period,
    /// 1 for the first manifest of the period; each re-issue counts up.
    pub revision: u32,
    /// The batches, in id order; empty for a nil manifest.
    pub batches: Vec<ManifestEntry>,
    /// Records the data-source unit declared for the period, if it declared a total.
    pub declared: Option<u64>,
    /// When the origin closed the period, by its own clock: informational only (arrival is
    /// dated by the first parent's receipt, never by the origin).
    pub closed_at_ms: u64,
}

/// Why a manifest could not be built or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest names batch {0} twice")]
    DuplicateBatch(BatchId),
    #[error("manifest names {0} batches, more than the limit of {MANIFEST_BATCHES_MAX}")]
    TooManyBatches(usize),
    #[error("manifest revision 0 is not valid: revisions start at 1")]
    RevisionZero,
    #[error("manifest bytes: {0}")]
    Decode(#[from] DecodeError),
    #[error("progress report: {0}")]
    Progress(crate::progress::ProgressError),
}

impl Manifest {
    /// A manifest with its batches put in canonical (id) order.
    pub fn new(
        origin: NodeId,
        category: Category,
        period: Period,
        revision: u32,
        mut batches: Vec<ManifestEntry>,
        declared: Option<u64>,
        closed_at_ms: u64,
    ) -> Result<Manifest, ManifestError> {
        if revision == 0 {
            return Err(ManifestError::RevisionZero);
        }
        if batches.len() > MANIFEST_BATCHES_MAX {
            return Err(ManifestError::TooManyBatches(batches.len()));
        }
        batches.sort_unstable();
        if let Some(pair) = batches.windows(2).find(|w| w[0].batch == w[1].batch) {
            return Err(ManifestError::DuplicateBatch(pair[0].batch));
        }
        Ok(Manifest {
            format: MANIFEST_FORMAT,
            origin,
            category,
            period,
            revision,
            batches,
            declared,
            closed_at_ms,
        })
    }

    /// A nil manifest (零报告): nothing to report for the period.
    pub fn nil(origin: NodeId, category: Category, period: Period, closed_at_ms: u64) -> Manifest {
        Manifest::new(origin, category, period, 1, Vec::new(), None, closed_at_ms)
            .expect("an empty first revision is valid")
    }

    pub fn is_nil(&self) -> bool {
        self.batches.is_empty()
    }

    /// Records the origin says it sent for the period.
    pub fn records(&self) -> u64 {
        self.batches.iter().map(|e| u64::from(e.records)).sum()
    }

    pub fn encode(&self) -> Vec<u8> {
        bincode::encode_to_vec(self, bincode_config::<MANIFEST_BYTES_MAX>())
            .expect("a manifest built by Manifest::new encodes")
    }

    /// Encodes, hashes and signs: the manifest in the envelope batches travel in.
    pub fn seal_with(&self, key: &dyn Signer) -> SignedBatch {
        SignedBatch::seal_bytes(self.encode(), key)
    }

    /// Decodes canonical bytes only (limit before allocation, every byte consumed, entries in
    /// strict id order, re-encoding gives the same bytes).
    pub fn decode(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        if bytes.len() > MANIFEST_BYTES_MAX {
            return Err(DecodeError::TooLarge(bytes.len()).into());
        }
        let (manifest, used): (Manifest, usize) =
            bincode::decode_from_slice(bytes, bincode_config::<MANIFEST_BYTES_MAX>())
                .map_err(|e| DecodeError::Malformed(e.to_string()))?;
        if manifest.format != MANIFEST_FORMAT {
            return Err(DecodeError::Format(manifest.format).into());
        }
        if used != bytes.len() {
            return Err(DecodeError::TrailingBytes(bytes.len() - used).into());
        }
        if manifest.revision == 0 {
            return Err(ManifestError::RevisionZero);
        }
        if manifest.batches.len() > MANIFEST_BATCHES_MAX {
            return Err(ManifestError::TooManyBatches(manifest.batches.len()));
        }
        if !manifest.batches.windows(2).all(|w| w[0] < w[1]) {
            return Err(
                DecodeError::NotCanonical("manifest entries not in strict id order").into(),
            );
        }
        if manifest.encode() != bytes {
            return Err(DecodeError::NotCanonical(
                "re-encoding gives other bytes (non-minimal integers)",
            )
            .into());
        }
        Ok(manifest)
    }
}

/// What a signed envelope holds, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Data(Batch),
    Manifest(Manifest),
    Progress(ProgressReport),
}

/// Which kind of content an envelope holds.
///
/// Stored in the node's batch metadata. Its encoding keeps older stores readable: bincode
/// writes a variant as its index (one byte here), the same byte the earlier `manifest: bool`
/// field was (`false` = 0 = data, `true` = 1 = manifest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub enum ContentKind {
    Data,
    Manifest,
    Progress,
}

impl ContentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ContentKind::Data => "data",
            ContentKind::Manifest => "manifest",
            ContentKind::Progress => "progress report",
        }
    }
}

/// The fields every kind of content has, read cheaply from the front of the bytes. A progress
/// report has no record category: its category is [`Category::progress_report`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub origin: NodeId,
    pub category: Category,
    pub period: Period,
    pub kind: ContentKind,
}

impl Summary {
    pub fn is_manifest(&self) -> bool {
        self.kind == ContentKind::Manifest
    }
}

/// The front of a progress report's bytes, decoded without the platforms.
#[derive(Decode)]
struct ProgressFront {
    format: u16,
    origin: NodeId,
    period: Period,
}

/// The front of a manifest's bytes, decoded without the entries.
#[derive(Decode)]
struct ManifestFront {
    format: u16,
    origin: NodeId,
    category: Category,
    period: Period,
}

impl Content {
    /// Decodes bytes of either kind, by their format.
    pub fn decode(bytes: &[u8]) -> Result<Content, ManifestError> {
        match format_of(bytes)? {
            MANIFEST_FORMAT => Ok(Content::Manifest(Manifest::decode(bytes)?)),
            PROGRESS_FORMAT => Ok(Content::Progress(
                ProgressReport::decode(bytes).map_err(ManifestError::Progress)?,
            )),
            _ => Ok(Content::Data(Batch::decode(bytes)?)),
        }
    }

    pub fn kind(&self) -> ContentKind {
        match self {
            Content::Data(_) => ContentKind::Data,
            Content::Manifest(_) => ContentKind::Manifest,
            Content::Progress(_) => ContentKind::Progress,
        }
    }

    pub fn summary(&self) -> Summary {
        match self {
            Content::Data(batch) => Summary {
                origin: batch.header.origin,
                category: batch.header.category.clone(),
                period: batch.header.period,
                kind: ContentKind::Data,
            },
            Content::Manifest(m) => Summary {
                origin: m.origin,
                category: m.category.clone(),
                period: m.period,
                kind: ContentKind::Manifest,
            },
            Content::Progress(p) => Summary {
                origin: p.origin,
                category: Category::progress_report(),
                period: p.period,
                kind: ContentKind::Progress,
            },
        }
    }

    /// Records carried (a manifest carries none: it only names them; a progress report
    /// carries counts, not records).
    pub fn records(&self) -> u32 {
        match self {
            Content::Data(batch) => batch.records.len() as u32,
            Content::Manifest(_) | Content::Progress(_) => 0,
        }
    }
}

fn format_of(bytes: &[u8]) -> Result<u16, DecodeError> {
    let (format, _): (u16, usize) = bincode::decode_from_slice(bytes, bincode_config::<16>())
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    Ok(format)
}

impl SignedBatch {
    /// Origin, category and period of either kind, from the front of the bytes.
    pub fn summary(&self) -> Result<Summary, DecodeError> {
        if self.bytes.len() > crate::batch::BATCH_BYTES_MAX {
            return Err(DecodeError::TooLarge(self.bytes.len()));
        }
        match format_of(&self.bytes)? {
            MANIFEST_FORMAT => {
                let (front, _): (ManifestFront, usize) =
                    bincode::decode_from_slice(&self.bytes, bincode_config::<MANIFEST_BYTES_MAX>())
                        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
                debug_assert_eq!(front.format, MANIFEST_FORMAT);
                Ok(Summary {
                    origin: front.origin,
                    category: front.category,
                    period: front.period,
                    kind: ContentKind::Manifest,
                })
            }
            PROGRESS_FORMAT => {
                let (front, _): (ProgressFront, usize) =
                    bincode::decode_from_slice(&self.bytes, bincode_config::<PROGRESS_BYTES_MAX>())
                        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
                debug_assert_eq!(front.format, PROGRESS_FORMAT);
                Ok(Summary {
                    origin: front.origin,
                    category: Category::progress_report(),
                    period: front.period,
                    kind: ContentKind::Progress,
                })
            }
            BATCH_FORMAT => {
                let header: BatchHeader = self.header()?;
                Ok(Summary {
                    origin: header.origin,
                    category: header.category,
                    period: header.period,
                    kind: ContentKind::Data,
                })
            }
            other => Err(DecodeError::Format(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::NodeKey;

    fn entry(n: u8, records: u32) -> ManifestEntry {
        ManifestEntry {
            batch: BatchId([n; 32]),
            records,
            supersedes: None,
        }
    }

    fn manifest() -> Manifest {
        Manifest::new(
            NodeId::parse("445281").unwrap(),
            Category::parse("water_fee").unwrap(),
            Period::parse("2026-03").unwrap(),
            2,
            vec![entry(9, 40), entry(3, 2)],
            Some(45),
            1_000,
        )
        .unwrap()
    }

    #[test]
    fn a_manifest_round_trips_in_canonical_order_and_summarises() {
        let m = manifest();
        assert_eq!(m.batches[0].batch, BatchId([3; 32]), "sorted by id");
        assert_eq!(m.records(), 42);
        let key = NodeKey::from_seed([1; 32]);
        let sealed = m.seal_with(&key);
        sealed.verify_hash_and_signature(&key.public()).unwrap();
        assert_eq!(
            Content::decode(&sealed.bytes).unwrap(),
            Content::Manifest(m.clone())
        );
        let summary = sealed.summary().unwrap();
        assert!(summary.is_manifest());
        assert_eq!(summary.origin, m.origin);
        assert_eq!(summary.period, m.period);
        // A manifest is not a data batch.
        assert!(Batch::decode(&sealed.bytes).is_err());
        assert!(sealed.header().is_err());
    }

    #[test]
    fn non_canonical_manifests_are_refused() {
        let mut m = manifest();
        m.batches.swap(0, 1);
        let bytes = bincode::encode_to_vec(&m, bincode_config::<MANIFEST_BYTES_MAX>()).unwrap();
        assert!(matches!(
            Manifest::decode(&bytes),
            Err(ManifestError::Decode(DecodeError::NotCanonical(_)))
        ));
        let mut bytes = manifest().encode();
        bytes.push(0);
        assert!(matches!(
            Manifest::decode(&bytes),
            Err(ManifestError::Decode(DecodeError::TrailingBytes(1)))
        ));
        assert_eq!(
            Manifest::new(
                m.origin,
                m.category.clone(),
                m.period,
                1,
                vec![entry(1, 1), entry(1, 2)],
                None,
                0
            ),
            Err(ManifestError::DuplicateBatch(BatchId([1; 32])))
        );
    }

    #[test]
    fn a_nil_manifest_names_nothing() {
        let m = Manifest::nil(
            NodeId::parse("445281").unwrap(),
            Category::parse("gas_fee").unwrap(),
            Period::parse("2026-03").unwrap(),
            5,
        );
        assert!(m.is_nil());
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        for n in 0..2000u32 {
            let bytes: Vec<u8> = (0..(n % 97))
                .map(|i| (i.wrapping_mul(2_654_435_761) ^ n) as u8)
                .collect();
            let _ = Content::decode(&bytes);
            let mut framed = vec![MANIFEST_FORMAT as u8];
            framed.extend(&bytes);
            let _ = Content::decode(&framed);
        }
    }
}
