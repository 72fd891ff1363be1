//! Progress reports (工作通报): what a provincial node tells the national platform each period —
//! which local platforms are connected and by which path, sharing progress per platform and
//! category with the counts behind the three rates, and the figures only its operators know
//! (registered enterprises, financial institutions, financing supported).
//!
//! A progress report travels exactly like a batch or a manifest: the same envelope
//! ([`SignedBatch`]: id = BLAKE3 of the canonical bytes, the origin's signature over the id),
//! offers, streams, receipts, durability and reconciliation. Its first field is the format
//! number [`PROGRESS_FORMAT`], distinct from data ([`crate::batch::BATCH_FORMAT`]) and
//! manifests ([`crate::manifest::MANIFEST_FORMAT`]), so one id is never two kinds. It is
//! offered and indexed under the reserved category [`Category::progress_report`], which no
//! schema may take.
//!
//! Rates are carried as counts, never as floats, so that a reader recomputes them and two
//! encodings of one report cannot differ. Only a province may originate one: the node core
//! checks the origin's role in its topology when it makes one and when it receives one.
//!
//! Decoding is bounded and canonical: a size limit before anything is allocated, every byte
//! consumed, platforms and categories in strict order, lengths of names and notes checked,
//! counts consistent, and a re-encoding that gives the same bytes.

use bincode::{Decode, Encode};

use crate::batch::{DecodeError, SignedBatch, Signer, bincode_config};
use crate::ids::{Category, NodeId, Period};

/// Layout version of a progress report, sharing the first field with batches and manifests.
pub const PROGRESS_FORMAT: u16 = 3;
/// Largest encoded progress report (a province of 200 platforms × 14 categories is ~60 KiB).
pub const PROGRESS_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Most local platforms one report lists (China's largest province has under 250).
pub const PROGRESS_PLATFORMS_MAX: usize = 4_096;
/// Most categories one platform's progress lists.
pub const PROGRESS_CATEGORIES_MAX: usize = 256;
/// Longest platform name, in bytes of UTF-8.
pub const PROGRESS_NAME_BYTES_MAX: usize = 256;
/// Longest operator notes, in bytes of UTF-8.
pub const PROGRESS_NOTES_BYTES_MAX: usize = 4_096;

/// A local platform's place in the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Encode, Decode)]
pub enum PlatformRole {
    City,
    County,
}

impl PlatformRole {
    pub fn as_str(self) -> &'static str {
        match self {
            PlatformRole::City => "city",
            PlatformRole::County => "county",
        }
    }
}

/// Where a legacy link stands, as the province can see it. The migration machine runs at the
/// migrating node; the province sees only the topology and what reaches it through the
/// hierarchy, so it cannot tell establish, verify and cut-over apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum LegacyPhase {
    /// The legacy link alone: the topology does not ask the platform to migrate.
    Direct,
    /// The topology asks it to migrate; nothing it originated has reached the province
    /// through the hierarchy yet (establishing the new path).
    Establishing,
    /// Migrating, and its data already reaches the province through the hierarchy
    /// (establish, verify or cut-over; the legacy link may already be dismantled).
    NewPathCarrying,
}

impl LegacyPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            LegacyPhase::Direct => "direct (not migrating)",
            LegacyPhase::Establishing => "migrating: new path not yet carrying",
            LegacyPhase::NewPathCarrying => "migrating: new path carrying",
        }
    }
}

/// By which path a local platform's data reaches the national platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum PlatformPath {
    /// Through the hierarchy, by way of the province.
    Hierarchy,
    /// A legacy direct link to the national platform, held by `via` (the platform itself, or
    /// the city above it).
    Legacy { via: NodeId, phase: LegacyPhase },
}

/// Sharing progress of one category at one platform in the period: counts of reports (a late
/// and short report counts in both `late` and `concealed`), and records.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct CategoryProgress {
    pub category: Category,
    /// Reports due or arrived (pending ones are not expected yet).
    pub expected: u32,
    pub on_time: u32,
    pub late: u32,
    pub missing: u32,
    pub incomplete: u32,
    /// Reports with concealment suspected (瞒报).
    pub concealed: u32,
    /// Reports not yet due and not yet arrived (listed, not counted).
    pub pending: u32,
    pub records_delivered: u64,
    /// Records declared, over the reports that declared a total.
    pub records_declared: u64,
    /// Records delivered by the reports that declared a total.
    pub records_delivered_of_declared: u64,
}

/// One local platform (city or county) of the province.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct LocalPlatform {
    pub node: NodeId,
    pub name: String,
    pub role: PlatformRole,
    /// Its parent in the hierarchy, if the topology gives one.
    pub parent: Option<NodeId>,
    pub path: PlatformPath,
    /// Its data reaches the province: the province holds something it originated, or holds a
    /// live link to it.
    pub connected: bool,
    /// Per category, in category order; empty for a platform that owes no reports.
    pub categories: Vec<CategoryProgress>,
}

/// The figures the policy asks for that only the provincial operators know, from their
/// figures file.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, serde::Serialize)]
pub struct OperatorFigures {
    /// Enterprises registered on the platform.
    pub registered_enterprises: u64,
    /// Financial institutions connected to the platform.
    pub financial_institutions: u64,
    /// Loans made with the platform's support.
    pub financing_loans: u64,
    /// Their amount, in 万元 (ten thousand yuan).
    pub financing_amount_wan_yuan: u64,
    pub notes: Option<String>,
}

/// A province's progress report for one period.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ProgressReport {
    pub format: u16,
    /// The province.
    pub origin: NodeId,
    pub period: Period,
    /// 1 for the first report of the period; each re-issue counts up; the highest counts.
    pub revision: u32,
    /// When the province made it, by its own clock: informational only.
    pub made_at_ms: u64,
    /// The province's local platforms, in id order.
    pub platforms: Vec<LocalPlatform>,
    pub figures: OperatorFigures,
}

/// Why a progress report could not be built or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProgressError {
    #[error("progress report revision 0 is not valid: revisions start at 1")]
    RevisionZero,
    #[error("progress reports come from provincial nodes; {0} is not a province's code")]
    NotProvinceCode(NodeId),
    #[error("progress report lists {0} platforms, more than the limit of {PROGRESS_PLATFORMS_MAX}")]
    TooManyPlatforms(usize),
    #[error("progress report lists platform {0} twice")]
    DuplicatePlatform(NodeId),
    #[error("platform {platform} is not a local platform of province {province}")]
    ForeignPlatform { platform: NodeId, province: NodeId },
    #[error("platform {0} lists more than {PROGRESS_CATEGORIES_MAX} categories, or one twice")]
    Categories(NodeId),
    #[error("platform {platform}, {category}: {problem}")]
    Counts {
        platform: NodeId,
        category: Category,
        problem: &'static str,
    },
    #[error("{what} is {bytes} bytes, more than the limit of {limit}")]
    TooLong {
        what: &'static str,
        bytes: usize,
        limit: usize,
    },
    #[error("progress report bytes: {0}")]
    Decode(#[from] DecodeError),
}

impl ProgressReport {
    /// A report with platforms and categories put in canonical order, checked as a receiver
    /// checks it.
    pub fn new(
        origin: NodeId,
        period: Period,
        revision: u32,
        mut platforms: Vec<LocalPlatform>,
        figures: OperatorFigures,
        made_at_ms: u64,
    ) -> Result<ProgressReport, ProgressError> {
        platforms.sort_by_key(|p| p.node);
        for platform in &mut platforms {
            platform
                .categories
                .sort_by(|a, b| a.category.cmp(&b.category));
        }
        let report = ProgressReport {
            format: PROGRESS_FORMAT,
            origin,
            period,
            revision,
            made_at_ms,
            platforms,
            figures,
        };
        report.check()?;
        Ok(report)
    }

    /// Every rule but the byte form: revision, a province's code, limits, strict order,
    /// platforms of this province, counts that fit together.
    fn check(&self) -> Result<(), ProgressError> {
        if self.revision == 0 {
            return Err(ProgressError::RevisionZero);
        }
        let province = self.origin.code();
        if self.origin.level() != crate::ids::DivisionLevel::Province {
            return Err(ProgressError::NotProvinceCode(self.origin));
        }
        if self.platforms.len() > PROGRESS_PLATFORMS_MAX {
            return Err(ProgressError::TooManyPlatforms(self.platforms.len()));
        }
        if let Some(pair) = self.platforms.windows(2).find(|w| w[0].node >= w[1].node) {
            return Err(if pair[0].node == pair[1].node {
                ProgressError::DuplicatePlatform(pair[0].node)
            } else {
                DecodeError::NotCanonical("platforms not in strict id order").into()
            });
        }
        if let Some(notes) = &self.figures.notes {
            too_long("the notes", notes, PROGRESS_NOTES_BYTES_MAX)?;
        }
        for platform in &self.platforms {
            let code = platform.node.code();
            if code / 10_000 != province / 10_000 || code == province {
                return Err(ProgressError::ForeignPlatform {
                    platform: platform.node,
                    province: self.origin,
                });
            }
            too_long("a platform name", &platform.name, PROGRESS_NAME_BYTES_MAX)?;
            if platform.categories.len() > PROGRESS_CATEGORIES_MAX
                || !platform
                    .categories
                    .windows(2)
                    .all(|w| w[0].category < w[1].category)
            {
                return Err(ProgressError::Categories(platform.node));
            }
            for c in &platform.categories {
                let problem = c.inconsistency();
                if let Some(problem) = problem {
                    return Err(ProgressError::Counts {
                        platform: platform.node,
                        category: c.category.clone(),
                        problem,
                    });
                }
            }
        }
        Ok(())
    }

    pub fn encode(&self) -> Vec<u8> {
        bincode::encode_to_vec(self, bincode_config::<PROGRESS_BYTES_MAX>())
            .expect("a progress report built by ProgressReport::new encodes")
    }

    /// Encodes, hashes and signs: the report in the envelope batches travel in.
    pub fn seal_with(&self, key: &dyn Signer) -> SignedBatch {
        SignedBatch::seal_bytes(self.encode(), key)
    }

    /// Decodes canonical bytes only (limit before allocation, every byte consumed, the rules
    /// of [`ProgressReport::new`], re-encoding gives the same bytes).
    pub fn decode(bytes: &[u8]) -> Result<ProgressReport, ProgressError> {
        if bytes.len() > PROGRESS_BYTES_MAX {
            return Err(DecodeError::TooLarge(bytes.len()).into());
        }
        let (report, used): (ProgressReport, usize) =
            bincode::decode_from_slice(bytes, bincode_config::<PROGRESS_BYTES_MAX>())
                .map_err(|e| DecodeError::Malformed(e.to_string()))?;
        if report.format != PROGRESS_FORMAT {
            return Err(DecodeError::Format(report.format).into());
        }
        if used != bytes.len() {
            return Err(DecodeError::TrailingBytes(bytes.len() - used).into());
        }
        report.check()?;
        if report.encode() != bytes {
            return Err(DecodeError::NotCanonical(
                "re-encoding gives other bytes (non-minimal integers)",
            )
            .into());
        }
        Ok(report)
    }

    /// The province's counts over every platform and category.
    pub fn total(&self) -> CategoryProgress {
        let mut total = CategoryProgress::empty(Category::progress_report());
        for platform in &self.platforms {
            for c in &platform.categories {
                total.add(c);
            }
        }
        total
    }
}

fn too_long(what: &'static str, text: &str, limit: usize) -> Result<(), ProgressError> {
    if text.len() > limit {
        return Err(ProgressError::TooLong {
            what,
            bytes: text.len(),
            limit,
        });
    }
    Ok(())
}

impl CategoryProgress {
    /// No reports yet, for `category`.
    pub fn empty(category: Category) -> CategoryProgress {
        CategoryProgress {
            category,
            expected: 0,
            on_time: 0,
            late: 0,
            missing: 0,
            incomplete: 0,
            concealed: 0,
            pending: 0,
            records_delivered: 0,
            records_declared: 0,
            records_delivered_of_declared: 0,
        }
    }

    /// Adds another's counts (saturating: a sum is never allowed to wrap).
    pub fn add(&mut self, other: &CategoryProgress) {
        self.expected = self.expected.saturating_add(other.expected);
        self.on_time = self.on_time.saturating_add(other.on_time);
        self.late = self.late.saturating_add(other.late);
        self.missing = self.missing.saturating_add(other.missing);
        self.incomplete = self.incomplete.saturating_add(other.incomplete);
        self.concealed = self.concealed.saturating_add(other.concealed);
        self.pending = self.pending.saturating_add(other.pending);
        self.records_delivered = self
            .records_delivered
            .saturating_add(other.records_delivered);
        self.records_declared = self.records_declared.saturating_add(other.records_declared);
        self.records_delivered_of_declared = self
            .records_delivered_of_declared
            .saturating_add(other.records_delivered_of_declared);
    }

    /// What does not fit together, if anything.
    fn inconsistency(&self) -> Option<&'static str> {
        let over = [
            self.on_time,
            self.late,
            self.missing,
            self.incomplete,
            self.concealed,
        ]
        .iter()
        .any(|n| *n > self.expected);
        if over {
            return Some("a count of reports is above the reports expected");
        }
        if u64::from(self.on_time) + u64::from(self.missing) > u64::from(self.expected) {
            return Some("reports on time and missing are more than the reports expected");
        }
        if self.records_delivered_of_declared > self.records_delivered {
            return Some("records delivered against a declared total exceed records delivered");
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::NodeKey;
    use crate::manifest::{Content, ContentKind};

    fn id(text: &str) -> NodeId {
        NodeId::parse(text).unwrap()
    }

    fn progress(category: &str, expected: u32, late: u32, missing: u32) -> CategoryProgress {
        CategoryProgress {
            expected,
            on_time: expected - late - missing,
            late,
            missing,
            records_delivered: 120,
            records_declared: 130,
            records_delivered_of_declared: 120,
            concealed: 1,
            ..CategoryProgress::empty(Category::parse(category).unwrap())
        }
    }

    fn figures() -> OperatorFigures {
        OperatorFigures {
            registered_enterprises: 1_234_567,
            financial_institutions: 321,
            financing_loans: 45_678,
            financing_amount_wan_yuan: 9_876_543,
            notes: Some("含揭阳市新接入的三家农商行".into()),
        }
    }

    fn report() -> ProgressReport {
        ProgressReport::new(
            id("440000"),
            Period::parse("2026-03").unwrap(),
            2,
            vec![
                LocalPlatform {
                    node: id("445281"),
                    name: "普宁市".into(),
                    role: PlatformRole::County,
                    parent: None,
                    path: PlatformPath::Legacy {
                        via: id("445281"),
                        phase: LegacyPhase::Direct,
                    },
                    connected: false,
                    categories: Vec::new(),
                },
                LocalPlatform {
                    node: id("445200"),
                    name: "揭阳市".into(),
                    role: PlatformRole::City,
                    parent: Some(id("440000")),
                    path: PlatformPath::Hierarchy,
                    connected: true,
                    categories: vec![progress("water_fee", 3, 1, 1), progress("gas_fee", 2, 0, 0)],
                },
            ],
            figures(),
            1_800_000_000_000,
        )
        .unwrap()
    }

    #[test]
    fn a_progress_report_round_trips_in_canonical_order_and_summarises() {
        let r = report();
        assert_eq!(r.platforms[0].node, id("445200"), "sorted by node");
        assert_eq!(
            r.platforms[0].categories[0].category.as_str(),
            "gas_fee",
            "sorted by category"
        );
        let total = r.total();
        assert_eq!((total.expected, total.late, total.missing), (5, 1, 1));
        let key = NodeKey::from_seed([4; 32]);
        let sealed = r.seal_with(&key);
        sealed.verify_hash_and_signature(&key.public()).unwrap();
        assert_eq!(ProgressReport::decode(&sealed.bytes).unwrap(), r);
        assert_eq!(
            Content::decode(&sealed.bytes).unwrap(),
            Content::Progress(r.clone())
        );
        let summary = sealed.summary().unwrap();
        assert_eq!(summary.kind, ContentKind::Progress);
        assert_eq!(summary.origin, r.origin);
        assert_eq!(summary.period, r.period);
        assert_eq!(summary.category, Category::progress_report());
        // Neither a data batch nor a manifest.
        assert!(crate::Batch::decode(&sealed.bytes).is_err());
        assert!(crate::Manifest::decode(&sealed.bytes).is_err());
    }

    #[test]
    fn reports_that_break_a_rule_are_refused_when_built_and_when_read() {
        let r = report();
        let again = |f: &dyn Fn(&mut ProgressReport)| {
            let mut bad = r.clone();
            f(&mut bad);
            let bytes =
                bincode::encode_to_vec(&bad, bincode_config::<PROGRESS_BYTES_MAX>()).unwrap();
            ProgressReport::decode(&bytes).unwrap_err()
        };
        assert_eq!(again(&|r| r.revision = 0), ProgressError::RevisionZero);
        assert_eq!(
            again(&|r| r.origin = id("445200")),
            ProgressError::NotProvinceCode(id("445200"))
        );
        assert!(matches!(
            again(&|r| r.platforms.swap(0, 1)),
            ProgressError::Decode(DecodeError::NotCanonical(_))
        ));
        assert_eq!(
            again(&|r| r.platforms[1].node = id("445200")),
            ProgressError::DuplicatePlatform(id("445200"))
        );
        assert_eq!(
            again(&|r| r.platforms[1].node = id("460100")),
            ProgressError::ForeignPlatform {
                platform: id("460100"),
                province: id("440000")
            }
        );
        assert_eq!(
            again(&|r| r.platforms[0].categories.swap(0, 1)),
            ProgressError::Categories(id("445200"))
        );
        assert!(matches!(
            again(&|r| r.platforms[0].categories[0].late = 9),
            ProgressError::Counts { .. }
        ));
        assert!(matches!(
            again(&|r| r.figures.notes = Some("注".repeat(2_000))),
            ProgressError::TooLong { .. }
        ));
        assert!(matches!(
            again(&|r| r.format = 9),
            ProgressError::Decode(DecodeError::Format(9))
        ));
        let mut bytes = r.encode();
        bytes.push(0);
        assert_eq!(
            ProgressReport::decode(&bytes),
            Err(ProgressError::Decode(DecodeError::TrailingBytes(1)))
        );
        // The builder refuses what the reader refuses.
        assert_eq!(
            ProgressReport::new(r.origin, r.period, 0, Vec::new(), figures(), 0),
            Err(ProgressError::RevisionZero)
        );
    }

    #[test]
    fn no_schema_takes_the_reserved_category() {
        let registry = crate::Registry::builtin();
        assert!(registry.get(&Category::progress_report()).is_none());
        assert!(!registry.names().contains(&Category::PROGRESS_REPORT));
    }

    #[test]
    fn truncated_flipped_and_random_bytes_error_and_never_panic() {
        let bytes = report().encode();
        for end in 0..bytes.len() {
            assert!(
                ProgressReport::decode(&bytes[..end]).is_err(),
                "truncated at {end}"
            );
            let _ = Content::decode(&bytes[..end]);
        }
        for at in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut flipped = bytes.clone();
                flipped[at] ^= bit;
                // Either refused or a valid report that re-encodes to exactly these bytes.
                if let Ok(decoded) = ProgressReport::decode(&flipped) {
                    assert_eq!(decoded.encode(), flipped);
                }
                let _ = Content::decode(&flipped);
            }
        }
        for n in 0..3000u32 {
            let mut random: Vec<u8> = vec![PROGRESS_FORMAT as u8];
            random.extend((0..(n % 211)).map(|i| (i.wrapping_mul(2_654_435_761) ^ n) as u8));
            assert!(ProgressReport::decode(&random).is_err(), "random bytes {n}");
            let _ = Content::decode(&random);
        }
        // A platform count that claims far more than the bytes hold is refused before any
        // allocation (bincode claims the length against the limit first).
        let mut empty = report();
        empty.platforms.clear();
        let bytes = empty.encode();
        let figures = bincode::encode_to_vec(&empty.figures, bincode_config::<1024>()).unwrap();
        let at = bytes.len() - figures.len() - 1;
        assert_eq!(bytes[at], 0, "the platform count");
        let mut huge = bytes[..at].to_vec();
        huge.extend([0xfc, 0xff, 0xff, 0xff, 0x0f]);
        huge.extend(&bytes[at + 1..]);
        assert!(matches!(
            ProgressReport::decode(&huge),
            Err(ProgressError::Decode(DecodeError::Malformed(_)))
        ));
    }
}
