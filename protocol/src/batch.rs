//! Batches: the unit of sync. One origin, one category, one period; records in canonical
//! order (by record key), encoded canonically with bincode; `BatchId = BLAKE3(bytes)`.
//!
//! Guarantees:
//! - [`Batch::encode`] of the same records in any input order gives the same bytes, so the
//!   same [`BatchId`].
//! - [`Batch::decode`] accepts only canonical bytes: a size limit is checked before any
//!   allocation, every byte must be consumed, records must be strictly ordered by key, and
//!   re-encoding must give back the same bytes (bincode accepts non-minimal varints).
//! - A batch is immutable. A correction is a new batch that names the batch it supersedes;
//!   a withdrawal (expired display period, credit repair) is a batch entry too.
//! - The origin signs the id with its Ed25519 key ([`NodeKey`]); anyone with its public key
//!   verifies it ([`SignedBatch::verify`]).

use std::fmt;

use bincode::{Decode, Encode};

use crate::ids::{BatchId, Category, NodeId, Period, PersonToken, Uscc};
use crate::record::{Record, RecordKey, RecordRef, Subject, Value, ValueRef, varint_len};

/// Version of the batch layout; decoders refuse others.
pub const BATCH_FORMAT: u16 = 1;
/// Largest encoded batch. Checked before decoding; bounds memory per batch.
pub const BATCH_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Most records one batch holds; ingestion splits larger files into several batches.
pub const BATCH_RECORDS_MAX: usize = 100_000;
/// Most withdrawals one batch carries.
pub const WITHDRAWALS_MAX: usize = 100_000;

/// Domain separation for what a node key signs, so a signature over one kind of message can
/// never be replayed as another.
const BATCH_SIGNING_CONTEXT: &[u8] = b"credit-network/batch-id/v1";

pub(crate) fn bincode_config<const LIMIT: usize>() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<LIMIT>,
> {
    bincode::config::standard().with_limit::<LIMIT>()
}

/// Why a batch removes a record that an earlier batch published.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Encode, Decode)]
pub enum WithdrawalReason {
    /// The public-display period (公示期) ended.
    DisplayExpired,
    /// Credit repair (信用修复) removed the record.
    CreditRepair,
    /// The record was published in error.
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Encode, Decode)]
pub struct Withdrawal {
    pub key: RecordKey,
    pub reason: WithdrawalReason,
}

/// Everything about a batch but its records.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct BatchHeader {
    pub format: u16,
    pub origin: NodeId,
    pub category: Category,
    pub schema_version: u32,
    pub period: Period,
    /// The batch this one corrects: its records replace the superseded batch's records with
    /// the same keys.
    pub supersedes: Option<BatchId>,
    /// Records of earlier batches to remove, in key order.
    pub withdrawals: Vec<Withdrawal>,
}

/// A batch of records in canonical order.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Batch {
    pub header: BatchHeader,
    pub records: Vec<Record>,
}

/// Why a batch could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error(
        "record key {0} appears twice in one batch: keep one row per key, or send a correction batch"
    )]
    DuplicateKey(RecordKey),
    #[error("withdrawal of {0} appears twice")]
    DuplicateWithdrawal(RecordKey),
    #[error(
        "a batch holds at most {BATCH_RECORDS_MAX} records and {WITHDRAWALS_MAX} withdrawals; this one has {records} and {withdrawals}"
    )]
    TooLarge { records: usize, withdrawals: usize },
    #[error("a batch must hold at least one record or withdrawal")]
    Empty,
    #[error("batch encodes to {0} bytes, more than {BATCH_BYTES_MAX}")]
    TooManyBytes(usize),
}

/// Why bytes are not a valid batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("batch is {0} bytes, more than the limit of {BATCH_BYTES_MAX}")]
    TooLarge(usize),
    #[error("batch bytes do not decode: {0}")]
    Malformed(String),
    #[error("{0} trailing bytes after the batch")]
    TrailingBytes(usize),
    #[error(
        "batch format {0} is not supported (this node reads format {BATCH_FORMAT}): upgrade the node"
    )]
    Format(u16),
    #[error("batch is not in canonical form: {0}")]
    NotCanonical(&'static str),
}

/// What every batch build refuses by count: too many records or withdrawals, or none at all.
fn check_counts(records: usize, header: &BatchHeader) -> Result<(), BuildError> {
    if records > BATCH_RECORDS_MAX || header.withdrawals.len() > WITHDRAWALS_MAX {
        return Err(BuildError::TooLarge {
            records,
            withdrawals: header.withdrawals.len(),
        });
    }
    if records == 0 && header.withdrawals.is_empty() {
        return Err(BuildError::Empty);
    }
    Ok(())
}

/// Puts the withdrawals in canonical (key) order; refuses a key withdrawn twice.
fn sort_withdrawals(header: &mut BatchHeader) -> Result<(), BuildError> {
    header.withdrawals.sort_unstable();
    if let Some(pair) = header.withdrawals.windows(2).find(|w| w[0].key == w[1].key) {
        return Err(BuildError::DuplicateWithdrawal(pair[0].key.clone()));
    }
    Ok(())
}

impl Batch {
    /// Builds a batch: sorts records by key and withdrawals by key, refuses duplicates.
    pub fn new(header: BatchHeader, mut records: Vec<Record>) -> Result<Batch, BuildError> {
        let mut header = header;
        check_counts(records.len(), &header)?;
        records.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        if let Some(pair) = records.windows(2).find(|w| w[0].key == w[1].key) {
            return Err(BuildError::DuplicateKey(pair[0].key.clone()));
        }
        sort_withdrawals(&mut header)?;
        Ok(Batch { header, records })
    }

    /// The canonical bytes. Only a batch made by [`Batch::new`] or [`Batch::decode`] is
    /// canonical; both keep records ordered.
    pub fn encode(&self) -> Result<Vec<u8>, BuildError> {
        debug_assert!(self.is_ordered(), "records out of canonical order");
        // One pass into a buffer sized by estimate: bincode's `encode_to_vec` encodes
        // everything twice, once only to size its buffer. Bincode checks a configured limit
        // when decoding only, so the writer enforces it here.
        let mut writer = LimitedWriter {
            bytes: Vec::with_capacity(self.encoded_len_estimate().min(BATCH_BYTES_MAX)),
            dropped: 0,
        };
        bincode::encode_into_writer(self, &mut writer, bincode_config::<BATCH_BYTES_MAX>())
            .map_err(|_| BuildError::TooManyBytes(BATCH_BYTES_MAX + 1))?;
        if writer.dropped > 0 {
            return Err(BuildError::TooManyBytes(writer.len()));
        }
        Ok(writer.bytes)
    }

    /// About the encoded size, from the text lengths of the first records: a buffer this
    /// size rarely has to grow.
    fn encoded_len_estimate(&self) -> usize {
        const SAMPLE: usize = 64;
        let sample = &self.records[..self.records.len().min(SAMPLE)];
        let sample_len: usize = sample
            .iter()
            .map(|record| {
                // Lengths, tags and the subject: at most about 24 bytes beyond the texts.
                let texts: usize = record
                    .values
                    .iter()
                    .map(|value| match value {
                        Value::Absent => 1,
                        Value::Text(text) => 3 + text.len(),
                        Value::Token { masked, token } => 3 + masked.len() + token.0.len(),
                    })
                    .sum();
                24 + record.key.0.len() + texts
            })
            .sum();
        let per_record = sample_len.div_ceil(sample.len().max(1));
        // Header and withdrawals: small next to the records; 1/8 spare for what the sample
        // does not show.
        let records = self.records.len().saturating_mul(per_record);
        1024 + 64 * self.header.withdrawals.len() + records.saturating_add(records / 8)
    }

    /// Decodes canonical bytes; anything else is an error, never a panic or a large
    /// allocation.
    pub fn decode(bytes: &[u8]) -> Result<Batch, DecodeError> {
        // Each record's values straight into its own vector: no record read in place first.
        let mut records = Vec::new();
        let (header, _) =
            read_in_place(bytes, &mut Vec::new(), |_, room, key, subject, values| {
                if records.capacity() == 0 {
                    records.reserve_exact(room);
                }
                records.push(Record {
                    key: RecordKey(key.to_owned()),
                    subject,
                    values: std::mem::take(values),
                });
            })?;
        Ok(Batch::read(header, records, bytes))
    }

    /// [`Batch::decode`], handing each record to `each` as soon as it is read, with the
    /// header, while its memory is still in the cache (a receiver checks each record there
    /// instead of in a second pass over the whole batch): read in place, before the owned
    /// record is built from it. The records come in the order of the bytes; whether they are
    /// in key order is checked only at the end.
    pub fn decode_each(
        bytes: &[u8],
        mut each: impl FnMut(&BatchHeader, RecordRef<'_, '_>),
    ) -> Result<Batch, DecodeError> {
        let mut records = Vec::new();
        let (header, _) = read_in_place(
            bytes,
            &mut Vec::new(),
            |header, room, key, subject, values| {
                if records.capacity() == 0 {
                    records.reserve_exact(room);
                }
                let record = RecordRef {
                    key,
                    subject,
                    values,
                };
                each(header, record);
                records.push(Record::from(record));
            },
        )?;
        Ok(Batch::read(header, records, bytes))
    }

    /// The batch `read_in_place` read from `bytes`.
    fn read(header: BatchHeader, records: Vec<Record>, bytes: &[u8]) -> Batch {
        let batch = Batch { header, records };
        debug_assert!(batch.is_ordered());
        debug_assert_eq!(batch.canonical_len(), bytes.len());
        batch
    }

    /// [`Batch::decode`]'s checks, every one and in the same order, without building its
    /// records: each record is handed to `each` read in place (its key and texts borrowed
    /// from `bytes`, its values in a buffer reused for the next record), as soon as it is
    /// read. Returns the header and the number of records, or the error `decode` returns for
    /// the same bytes. What a receiver needs to check a batch it does not keep decoded.
    pub fn read_each<'b>(
        bytes: &'b [u8],
        mut each: impl FnMut(&BatchHeader, RecordRef<'b, '_>),
    ) -> Result<(BatchHeader, usize), DecodeError> {
        read_in_place(bytes, &mut Vec::new(), |header, _, key, subject, values| {
            each(
                header,
                RecordRef {
                    key,
                    subject,
                    values,
                },
            );
        })
    }

    /// The header and the record keys of a batch, its values passed over: what a node reads
    /// of the batches it holds to count the records they deliver (the ledger), ~3× faster
    /// than [`Batch::decode`]. For bytes that were verified when they arrived and are checked
    /// against their id as they are read (a store's): the header, the layout, the keys (UTF-8,
    /// strict order) and every integer's canonical form are checked as `decode` checks them,
    /// not the values' texts (their UTF-8) or credit codes. Anything `decode` accepts, this
    /// accepts with the same keys.
    pub fn decode_keys(bytes: &[u8]) -> Result<(BatchHeader, Vec<RecordKey>), DecodeError> {
        let (header, used) = decode_header(bytes)?;
        let mut reader = RecordReader::new(bytes, used);
        let count = reader.len()?;
        if count > BATCH_RECORDS_MAX {
            return Err(DecodeError::NotCanonical("too many records or withdrawals"));
        }
        let mut keys = Vec::with_capacity(count.min(reader.left() / RECORD_BYTES_MIN));
        for _ in 0..count {
            keys.push(reader.key_passing_over()?);
        }
        if reader.at != bytes.len() {
            return Err(DecodeError::TrailingBytes(bytes.len() - reader.at));
        }
        if keys.is_empty() && header.withdrawals.is_empty() {
            return Err(DecodeError::NotCanonical("empty batch"));
        }
        let ordered = keys.windows(2).all(|w| w[0] < w[1])
            && header.withdrawals.windows(2).all(|w| w[0].key < w[1].key);
        if !ordered {
            return Err(DecodeError::NotCanonical(
                "records or withdrawals not in strict key order",
            ));
        }
        Ok((header, keys))
    }

    /// The length of this batch's canonical encoding, counted: the header's by bincode, the
    /// records' from their texts' lengths.
    pub fn canonical_len(&self) -> usize {
        let records: usize = self.records.iter().map(Record::canonical_len).sum();
        header_len(&self.header) + varint_len(self.records.len()) + records
    }

    fn is_ordered(&self) -> bool {
        self.records.windows(2).all(|w| w[0].key < w[1].key)
            && self
                .header
                .withdrawals
                .windows(2)
                .all(|w| w[0].key < w[1].key)
    }
}

/// Where the reader puts a record's values: read in place, into a buffer reused for every
/// record ([`Batch::read_each`]), or owned, into a vector of the record's own
/// ([`Batch::decode`], which takes it).
trait Values<'b> {
    /// Before a record's `count` values, every one of them read.
    fn start(&mut self, count: usize);
    fn push(&mut self, value: ValueRef<'b>);
}

impl<'b> Values<'b> for Vec<ValueRef<'b>> {
    fn start(&mut self, _: usize) {
        self.clear();
    }

    fn push(&mut self, value: ValueRef<'b>) {
        Vec::push(self, value);
    }
}

impl<'b> Values<'b> for Vec<Value> {
    fn start(&mut self, count: usize) {
        *self = Vec::with_capacity(count);
    }

    // Inlined into the reader's loop, so that a value is built straight from the bytes as
    // before the borrowed reader existed (~5 % of `decode`'s instructions otherwise).
    #[inline(always)]
    fn push(&mut self, value: ValueRef<'b>) {
        Vec::push(self, Value::from(value));
    }
}

/// Reads a batch as [`Batch::decode`] does, every check in the same order, handing each
/// record to `each` as it is read: the header, how many records the bytes could hold (room
/// to reserve for them: a hostile count never makes a large allocation), the record's key and
/// subject, and its values in `values`. The header and the number of records.
fn read_in_place<'b, V: Values<'b>>(
    bytes: &'b [u8],
    values: &mut V,
    mut each: impl FnMut(&BatchHeader, usize, &'b str, Subject, &mut V),
) -> Result<(BatchHeader, usize), DecodeError> {
    let (header, used) = decode_header(bytes)?;
    let mut reader = RecordReader::new(bytes, used);
    let count = reader.len()?;
    if count > BATCH_RECORDS_MAX {
        return Err(DecodeError::NotCanonical("too many records or withdrawals"));
    }
    let room = count.min(reader.left() / RECORD_BYTES_MIN);
    let mut previous: Option<&str> = None;
    let mut ordered = true;
    for _ in 0..count {
        let (key, subject) = reader.record_in_place(values)?;
        ordered &= previous.is_none_or(|previous| previous < key);
        previous = Some(key);
        each(&header, room, key, subject, values);
    }
    // Refused in `decode`'s order: bytes after the records, then no content, then the order.
    if reader.at != bytes.len() {
        return Err(DecodeError::TrailingBytes(bytes.len() - reader.at));
    }
    if count == 0 && header.withdrawals.is_empty() {
        return Err(DecodeError::NotCanonical("empty batch"));
    }
    if !ordered || !header.withdrawals.windows(2).all(|w| w[0].key < w[1].key) {
        return Err(DecodeError::NotCanonical(
            "records or withdrawals not in strict key order",
        ));
    }
    Ok((header, count))
}

/// A batch's header, checked (the format first, then canonical form), and where its records
/// start.
fn decode_header(bytes: &[u8]) -> Result<(BatchHeader, usize), DecodeError> {
    if bytes.len() > BATCH_BYTES_MAX {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    // The format is the first field: check it before decoding the rest, so a newer
    // format is reported as such and not as garbage.
    let (format, _): (u16, usize) = bincode::decode_from_slice(bytes, bincode_config::<16>())
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if format != BATCH_FORMAT {
        return Err(DecodeError::Format(format));
    }
    // The header by bincode; the records, nearly all of the bytes, by `RecordReader`,
    // which reads them straight from the slice and takes only minimal varints.
    let (header, used): (BatchHeader, usize) =
        bincode::decode_from_slice(bytes, bincode_config::<BATCH_BYTES_MAX>())
            .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if header.withdrawals.len() > WITHDRAWALS_MAX {
        return Err(DecodeError::NotCanonical("too many records or withdrawals"));
    }
    // Every value this format holds has exactly one encoding of the least length
    // (integers, lengths and variants as minimal varints, texts and ids as their bytes),
    // and bincode's other accepted forms (a varint with a wider marker) are longer: the
    // header is canonical exactly when it is as long as its canonical encoding, which is
    // counted rather than encoded (`Batch::encodes_to` is the check by encoding), and the
    // records are, since their reader refuses every other form. A field type without one
    // least-length encoding (a float, a map) would need the check by encoding again.
    if header_len(&header) != used {
        return Err(DecodeError::NotCanonical(
            "re-encoding gives other bytes (non-minimal integers)",
        ));
    }
    Ok((header, used))
}

/// The length of `header`'s canonical encoding, counted by bincode's size writer.
fn header_len(header: &BatchHeader) -> usize {
    let mut size = bincode::enc::write::SizeWriter::default();
    bincode::encode_into_writer(header, &mut size, bincode_config::<BATCH_BYTES_MAX>())
        .expect("a size writer takes any header");
    size.bytes_written
}

/// Reads a batch's records from its bytes, as bincode decodes `Vec<Record>` but taking only
/// the canonical forms: every varint minimal (bincode also takes wider ones, which the
/// canonical check then refused), a credit code in normal form (as `Uscc`'s `Decode`). It
/// reads straight from the slice, without bincode's reader, limit and per-field dispatch;
/// `tests/batch_properties.rs` checks that it accepts exactly what bincode's decoding
/// followed by the check by encoding accepts, with the same result, on changed batches.
struct RecordReader<'b> {
    bytes: &'b [u8],
    at: usize,
    /// The values of the record being read, laid out before their texts are checked, and
    /// their texts once checked (`""` for an absent value): kept for the next record.
    laid: Vec<Laid>,
    texts: Vec<&'b str>,
}

/// Where a value is in a batch's bytes, read before its text is checked.
#[derive(Clone, Copy)]
enum Laid {
    Absent,
    Text(Span),
    Token(Span, PersonToken),
}

/// A text's bytes, `bytes[start..end]`, and whether nothing but ASCII bytes lie between the
/// record's text before it and it (its pass of [`check_texts`] goes on).
#[derive(Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
    joins: bool,
}

impl Laid {
    /// Its text, if it has one.
    fn text(self) -> Option<Span> {
        match self {
            Laid::Absent => None,
            Laid::Text(span) | Laid::Token(span, _) => Some(span),
        }
    }
}

/// The least bytes a record's encoding takes: a one-byte key, a subject (variant and a
/// 16-byte token) and a value count.
const RECORD_BYTES_MIN: usize = 2 + 17 + 1;

impl<'b> RecordReader<'b> {
    /// The next record: its key and subject, read in place, and its values into `values`.
    fn record_in_place(
        &mut self,
        values: &mut impl Values<'b>,
    ) -> Result<(&'b str, Subject), DecodeError> {
        let key = self.text()?;
        let subject = match self.varint()? {
            0 => {
                let code: [u8; 18] = self.array()?;
                Subject::Organization(Uscc::from_encoded(code).ok_or_else(|| {
                    DecodeError::Malformed("malformed unified social credit code".to_owned())
                })?)
            }
            1 => Subject::Person(PersonToken(self.array()?)),
            other => return Err(unknown_variant("Subject", other)),
        };
        let count = self.len()?;
        // The values' layout first, then their texts checked, most of them in one pass
        // (`check_texts`); an error in the layout is reported after any text before it that
        // is not UTF-8, as reading and checking each value in turn reported them.
        let laid_out = self.lay_out(count);
        check_texts(self.bytes, &self.laid, &mut self.texts)?;
        laid_out?;
        values.start(count);
        for (laid, &text) in self.laid.iter().zip(&self.texts) {
            values.push(match *laid {
                Laid::Absent => ValueRef::Absent,
                Laid::Text(_) => ValueRef::Text(text),
                Laid::Token(_, token) => ValueRef::Token {
                    masked: text,
                    token,
                },
            });
        }
        Ok((key, subject))
    }

    /// Reads the layout of a record's `count` values into `self.laid` (variants, lengths,
    /// tokens), their texts passed over. On an error, the values laid before it stay, and the
    /// text of the value it stopped in if that was read: their texts are checked first.
    fn lay_out(&mut self, count: usize) -> Result<(), DecodeError> {
        self.laid.clear();
        // Whether only ASCII bytes were read since the last text's end: a variant (0, 1 or 2)
        // is one, a length one when below 128; a token's bytes are not.
        let mut ascii = false;
        for _ in 0..count {
            let laid = match self.varint()? {
                0 => Laid::Absent,
                1 => {
                    let span = self.span(ascii)?;
                    ascii = true;
                    Laid::Text(span)
                }
                2 => {
                    let span = self.span(ascii)?;
                    self.laid.push(Laid::Text(span));
                    let token = PersonToken(self.array()?);
                    self.laid.pop();
                    ascii = false;
                    Laid::Token(span, token)
                }
                other => return Err(unknown_variant("Value", other)),
            };
            self.laid.push(laid);
        }
        Ok(())
    }

    /// A text's length, then where its bytes are, passed over; `ascii`: whether only ASCII
    /// bytes were read since the text before it (but for its length).
    #[inline(always)]
    fn span(&mut self, ascii: bool) -> Result<Span, DecodeError> {
        let (start, end) = self.text_bytes()?;
        Ok(Span {
            start,
            end,
            joins: ascii && end - start < 128,
        })
    }

    /// A text's length, then where its bytes are, passed over.
    #[inline(always)]
    fn text_bytes(&mut self) -> Result<(usize, usize), DecodeError> {
        let n = self.len()?;
        let start = self.at;
        self.take(n)?;
        Ok((start, self.at))
    }

    /// A record's key, the rest of the record passed over: its subject and values are read
    /// only for their layout (variants, lengths, canonical integers), their bytes skipped.
    fn key_passing_over(&mut self) -> Result<RecordKey, DecodeError> {
        let key = RecordKey(self.text()?.to_owned());
        match self.varint()? {
            0 => self.take(18)?,
            1 => self.take(16)?,
            other => return Err(unknown_variant("Subject", other)),
        };
        for _ in 0..self.len()? {
            match self.varint()? {
                0 => {}
                1 => self.skip_text()?,
                2 => {
                    self.skip_text()?;
                    self.take(16)?;
                }
                other => return Err(unknown_variant("Value", other)),
            }
        }
        Ok(key)
    }

    fn skip_text(&mut self) -> Result<(), DecodeError> {
        let n = self.len()?;
        self.take(n).map(|_| ())
    }

    #[inline]
    fn left(&self) -> usize {
        self.bytes.len() - self.at
    }

    #[inline]
    fn take(&mut self, n: usize) -> Result<&'b [u8], DecodeError> {
        if n > self.left() {
            return Err(DecodeError::Malformed(format!(
                "the bytes end early: {n} more wanted at byte {}, {} left",
                self.at,
                self.left()
            )));
        }
        let bytes: &'b [u8] = self.bytes;
        let taken = &bytes[self.at..self.at + n];
        self.at += n;
        Ok(taken)
    }

    #[inline]
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }

    /// A varint (bincode's standard configuration), refused unless in its least form.
    #[inline(always)]
    fn varint(&mut self) -> Result<u64, DecodeError> {
        let first = self.take(1)?[0];
        let (value, least) = match first {
            0..=250 => return Ok(u64::from(first)),
            251 => (u64::from(u16::from_le_bytes(self.array()?)), 251),
            252 => (u64::from(u32::from_le_bytes(self.array()?)), 0x1_0000),
            253 => (u64::from_le_bytes(self.array()?), 0x1_0000_0000),
            _ => {
                return Err(DecodeError::Malformed(format!(
                    "varint marker {first} at byte {}",
                    self.at - 1
                )));
            }
        };
        if value < least {
            return Err(DecodeError::NotCanonical(
                "re-encoding gives other bytes (non-minimal integers)",
            ));
        }
        Ok(value)
    }

    #[inline]
    fn len(&mut self) -> Result<usize, DecodeError> {
        let at = self.at;
        let n = self.varint()?;
        usize::try_from(n)
            .map_err(|_| DecodeError::Malformed(format!("length {n} at byte {at} is too large")))
    }

    fn text(&mut self) -> Result<&'b str, DecodeError> {
        let (start, end) = self.text_bytes()?;
        utf8_at(self.bytes, start, end)
    }
}

impl<'b> RecordReader<'b> {
    fn new(bytes: &'b [u8], at: usize) -> RecordReader<'b> {
        RecordReader {
            bytes,
            at,
            laid: Vec::new(),
            texts: Vec::new(),
        }
    }
}

/// `bytes[start..end]` as text, or the error that names where it is not UTF-8.
fn utf8_at(bytes: &[u8], start: usize, end: usize) -> Result<&str, DecodeError> {
    let text = &bytes[start..end];
    // simdutf8's check: several times std's on Chinese text (it leaves texts shorter than 64
    // bytes to std's); std's only to say where it fails.
    simdutf8::basic::from_utf8(text).map_err(|_| {
        let detail = std::str::from_utf8(text)
            .err()
            .map_or_else(String::new, |e| format!(": {e}"));
        DecodeError::Malformed(format!("text at byte {start} is not UTF-8{detail}"))
    })
}

/// Checks that the texts of the values `laid` out are UTF-8, into `texts` (one for each value,
/// `""` for an absent one). Texts with nothing but ASCII bytes between them (a variant, a
/// length below 128: a record's short texts) are checked in one pass, from the first one's
/// start to the last one's end: a valid text neither starts nor ends inside a character and
/// ASCII bytes are characters of their own, so the whole is UTF-8 exactly when each text is,
/// and each is a slice of it. Checked one by one, a record's ~17 short texts cost more than
/// the rest of reading it (std's check, a call each). Where a pass fails, its texts are
/// checked one by one, in order, and the first that is not UTF-8 is named as before.
fn check_texts<'b>(
    bytes: &'b [u8],
    laid: &[Laid],
    texts: &mut Vec<&'b str>,
) -> Result<(), DecodeError> {
    texts.clear();
    texts.resize(laid.len(), "");
    // The pass being gathered: its first value, where its bytes start and end.
    let mut pass: Option<(usize, usize)> = None;
    let mut end = 0;
    for (i, value) in laid.iter().enumerate() {
        let Some(span) = value.text() else {
            continue;
        };
        match pass {
            Some(_) if span.joins => {}
            Some((first, from)) => {
                check_pass(bytes, &laid[first..i], from, end, &mut texts[first..i])?;
                pass = Some((i, span.start));
            }
            None => pass = Some((i, span.start)),
        }
        end = span.end;
    }
    if let Some((first, from)) = pass {
        check_pass(bytes, &laid[first..], from, end, &mut texts[first..])?;
    }
    Ok(())
}

/// One pass of [`check_texts`]: `bytes[from..end]`, holding the texts of `laid`.
fn check_pass<'b>(
    bytes: &'b [u8],
    laid: &[Laid],
    from: usize,
    end: usize,
    texts: &mut [&'b str],
) -> Result<(), DecodeError> {
    if let Ok(whole) = simdutf8::basic::from_utf8(&bytes[from..end]) {
        let sliced = laid.iter().zip(texts.iter_mut()).all(|(value, text)| {
            let Some(span) = value.text() else {
                return true;
            };
            // Always on a character's boundary (above); checked, never assumed.
            whole
                .get(span.start - from..span.end - from)
                .map(|t| *text = t)
                .is_some()
        });
        if sliced {
            return Ok(());
        }
    }
    for (value, text) in laid.iter().zip(texts.iter_mut()) {
        if let Some(span) = value.text() {
            *text = utf8_at(bytes, span.start, span.end)?;
        }
    }
    Ok(())
}

fn unknown_variant(what: &str, variant: u64) -> DecodeError {
    DecodeError::Malformed(format!("unknown {what} variant {variant}"))
}

/// A bincode writer into a buffer that stops storing bytes beyond `BATCH_BYTES_MAX` but
/// keeps counting them, so an oversized batch is refused with its true size without holding
/// more than the limit in memory.
struct LimitedWriter {
    bytes: Vec<u8>,
    /// Bytes not stored because they would have passed the limit.
    dropped: usize,
}

impl LimitedWriter {
    fn len(&self) -> usize {
        self.bytes.len().saturating_add(self.dropped)
    }
}

impl bincode::enc::write::Writer for LimitedWriter {
    // Called for every tag, length and text: inlined like bincode's own Vec writer.
    #[inline(always)]
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        if self.dropped == 0 && bytes.len() <= BATCH_BYTES_MAX - self.bytes.len() {
            self.bytes.extend_from_slice(bytes);
        } else {
            self.dropped = self.dropped.saturating_add(bytes.len());
        }
        Ok(())
    }
}

/// Records already in their canonical encoding, each with its key: a batch is sealed from
/// them ([`SignedBatch::seal_encoded`]) without building a [`Record`] a value at a time and
/// encoding it again. Only this crate writes them (from a [`Record`], or from a row as
/// [`crate::Schema::validate_encoded`] validates it), so each is the bincode encoding of a
/// record validation produced: sealing them gives exactly the bytes [`Batch::new`] and
/// [`Batch::encode`] give for those records.
#[derive(Debug, Clone, Default)]
pub struct EncodedRecords {
    /// `room` bytes left for a batch's header ([`EncodedRecords::room_for_header`]), then the
    /// records' encodings, back to back.
    bytes: Vec<u8>,
    /// Bytes at the start of `bytes` that hold no record.
    room: usize,
    /// False while every record was added by [`EncodedRecords::push_from`] with a key
    /// greater than the one added before it: sealing then need not check the order, which
    /// would read every key again long after it left the cache.
    maybe_unordered: bool,
    /// Where each record lies in `bytes`, in the order they were added.
    spans: Vec<RecordSpan>,
}

/// One record in [`EncodedRecords::bytes`]: its encoding is `start..end`, its key's bytes
/// `key_start..key_end` (just after the key's length, which starts the encoding).
#[derive(Debug, Clone, Copy)]
struct RecordSpan {
    start: usize,
    key_start: usize,
    key_end: usize,
    end: usize,
}

impl Batch {
    /// Whether encoding this batch gives exactly `bytes`: the canonical-form check of
    /// [`Batch::decode`], comparing as it encodes (no copy of the batch is built, and the
    /// first difference ends it).
    pub fn encodes_to(&self, bytes: &[u8]) -> bool {
        /// A bincode writer that compares what is written with what is expected next.
        struct Compare<'e> {
            expected: &'e [u8],
        }
        impl bincode::enc::write::Writer for Compare<'_> {
            fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
                match self.expected.strip_prefix(bytes) {
                    Some(rest) => {
                        self.expected = rest;
                        Ok(())
                    }
                    None => Err(bincode::error::EncodeError::Other("other bytes")),
                }
            }
        }
        let mut compare = Compare { expected: bytes };
        bincode::encode_into_writer(self, &mut compare, bincode_config::<BATCH_BYTES_MAX>()).is_ok()
            && compare.expected.is_empty()
    }
}

/// A bincode writer appending to a `Vec` (bincode's own is private).
pub(crate) struct VecWriter<'v>(pub &'v mut Vec<u8>);

impl bincode::enc::write::Writer for VecWriter<'_> {
    #[inline(always)]
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

/// A bincode encoder appending to `bytes`, in the batch's configuration.
pub(crate) type VecEncoder<'v> = bincode::enc::EncoderImpl<
    VecWriter<'v>,
    bincode::config::Configuration<
        bincode::config::LittleEndian,
        bincode::config::Varint,
        bincode::config::Limit<BATCH_BYTES_MAX>,
    >,
>;

impl EncodedRecords {
    pub fn new() -> EncodedRecords {
        EncodedRecords::default()
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Bytes of the records' encodings.
    pub fn bytes_len(&self) -> usize {
        self.bytes.len() - self.room
    }

    /// Leaves room before the records (only while there are none) for the start of a batch
    /// of `header` and `records` records: sealing them then writes it there and takes the
    /// bytes as they are, with no copy, when they were added in key order and the batch's
    /// start takes exactly that room ([`EncodedRecords::encode_batch`]: a count of the same
    /// varint width does). Otherwise they are sealed by a copy, as without the room.
    pub fn room_for_header(&mut self, header: &BatchHeader, records: usize) {
        assert!(self.is_empty(), "room is left before the first record only");
        let room = batch_head(header, records).len();
        self.bytes.clear();
        self.bytes.resize(room, 0);
        self.room = room;
    }

    /// Makes room for `records` more records of `bytes` bytes in all.
    pub fn reserve(&mut self, records: usize, bytes: usize) {
        self.spans.reserve(records);
        self.bytes.reserve(bytes);
    }

    /// Removes every record (and the room for a header), keeping the memory for the next ones.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.spans.clear();
        self.room = 0;
        self.maybe_unordered = false;
    }

    /// Adds `record`, encoded.
    pub fn push(&mut self, record: &Record) {
        self.push_with(&record.key.0, |encoder| {
            use bincode::enc::Encode;
            record
                .subject
                .encode(encoder)
                .and_then(|()| record.values.encode(encoder))
                .expect("encoding into memory cannot fail");
        });
    }

    /// Adds a record whose key is `key`: writes the key, then `rest` writes its subject and
    /// values through bincode's encoder.
    pub(crate) fn push_with(&mut self, key: &str, rest: impl FnOnce(&mut VecEncoder<'_>)) {
        self.push_bytes(key, |bytes| {
            let mut encoder = bincode::enc::EncoderImpl::new(
                VecWriter(bytes),
                bincode_config::<BATCH_BYTES_MAX>(),
            );
            rest(&mut encoder);
        });
    }

    /// Adds a record whose key is `key`: writes the key (its length, then its bytes), then
    /// `rest` appends the encoding of its subject and values.
    pub(crate) fn push_bytes(&mut self, key: &str, rest: impl FnOnce(&mut Vec<u8>)) {
        let start = self.bytes.len();
        crate::record::put_len(&mut self.bytes, key.len());
        self.bytes.extend_from_slice(key.as_bytes());
        let key_end = self.bytes.len();
        rest(&mut self.bytes);
        // Not compared: the order is checked when sealed.
        self.maybe_unordered |= !self.spans.is_empty();
        self.spans.push(RecordSpan {
            start,
            key_start: key_end - key.len(),
            key_end,
            end: self.bytes.len(),
        });
    }

    /// The key of record `index` (in the order added), as bytes (it is UTF-8).
    pub fn key(&self, index: usize) -> &[u8] {
        let span = self.spans[index];
        &self.bytes[span.key_start..span.key_end]
    }

    /// Adds a copy of record `index` of `other`.
    pub fn push_from(&mut self, other: &EncodedRecords, index: usize) {
        let span = other.spans[index];
        if let Some(last) = self.spans.last() {
            // Both keys are in the cache now, unlike when the batch is sealed.
            self.maybe_unordered |= other.bytes[span.key_start..span.key_end]
                <= self.bytes[last.key_start..last.key_end];
        }
        let start = self.bytes.len();
        self.bytes
            .extend_from_slice(&other.bytes[span.start..span.end]);
        self.spans.push(RecordSpan {
            start,
            key_start: start + (span.key_start - span.start),
            key_end: start + (span.key_end - span.start),
            end: start + (span.end - span.start),
        });
    }

    /// The canonical bytes of a batch of `header` and these records: the records in key
    /// order (duplicate keys refused), withdrawals sorted, as [`Batch::new`] then
    /// [`Batch::encode`] give them. Takes the records, leaving this empty: when they came in
    /// key order into room left for this header, their own bytes become the batch's (the
    /// next records get new memory); otherwise they are copied and the memory is kept.
    /// On an error the records are left as they were (perhaps sorted).
    pub fn encode_batch(&mut self, header: BatchHeader) -> Result<Vec<u8>, BuildError> {
        let mut header = header;
        check_counts(self.len(), &header)?;
        let bytes = &self.bytes;
        let key = |span: &RecordSpan| &bytes[span.key_start..span.key_end];
        // A `String`'s order is its bytes' order. Records often come in key order already
        // (exports are sorted by account): one pass then tells both that no sort is needed
        // and that no key repeats — or none, when each was compared as it was added.
        if self.maybe_unordered && !self.spans.windows(2).all(|w| key(&w[0]) < key(&w[1])) {
            // Sorted by each key's first 16 bytes, held beside it, and by the whole key only
            // where those are equal: comparing keys where they lie read the batch's memory
            // at random, a cache miss or two a comparison (a shuffled export's sealing
            // spent more than half of its time there).
            let mut order: Vec<(u128, RecordSpan)> = self
                .spans
                .iter()
                .map(|span| (key_prefix(key(span)), *span))
                .collect();
            order.sort_unstable_by(|(a_prefix, a), (b_prefix, b)| {
                a_prefix.cmp(b_prefix).then_with(|| key(a).cmp(key(b)))
            });
            if let Some(pair) = order
                .windows(2)
                .find(|w| w[0].0 == w[1].0 && key(&w[0].1) == key(&w[1].1))
            {
                return Err(BuildError::DuplicateKey(RecordKey(
                    String::from_utf8_lossy(key(&pair[0].1)).into_owned(),
                )));
            }
            for (span, (_, sorted)) in self.spans.iter_mut().zip(order) {
                *span = sorted;
            }
        }
        sort_withdrawals(&mut header)?;
        // `Batch` is its header, then its records as a `Vec`: a length, then each.
        let head = batch_head(&header, self.spans.len());
        let total = head.len().saturating_add(self.bytes_len());
        if total > BATCH_BYTES_MAX {
            return Err(BuildError::TooManyBytes(total));
        }
        // Records added in key order lie back to back in that order.
        let mut next = self.room;
        let contiguous = self.spans.iter().all(|span| {
            let follows = span.start == next;
            next = span.end;
            follows
        }) && next == self.bytes.len();
        if contiguous && head.len() == self.room {
            self.bytes[..self.room].copy_from_slice(&head);
            let bytes = std::mem::take(&mut self.bytes);
            self.clear();
            return Ok(bytes);
        }
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(&head);
        if contiguous {
            out.extend_from_slice(&self.bytes[self.room..]);
        } else {
            for span in &self.spans {
                out.extend_from_slice(&self.bytes[span.start..span.end]);
            }
        }
        self.clear();
        Ok(out)
    }
}

/// A key's first 16 bytes as a number (zeros after a shorter key's end): two keys whose
/// prefixes differ are in the order of their prefixes. (Where they first differ, either both
/// have a byte there, or the shorter one ended before it with only zeros after in the
/// longer, of which it is then a prefix, and so the smaller.) For sorting many byte strings
/// by integers, comparing the whole strings only where these are equal.
pub fn key_prefix(key: &[u8]) -> u128 {
    let mut bytes = [0u8; 16];
    let n = key.len().min(16);
    bytes[..n].copy_from_slice(&key[..n]);
    u128::from_be_bytes(bytes)
}

/// The start of a batch's encoding: `header`, then the length of its records' `Vec`.
fn batch_head(header: &BatchHeader, records: usize) -> Vec<u8> {
    use bincode::enc::Encode;
    let mut head = Vec::with_capacity(256);
    let mut encoder =
        bincode::enc::EncoderImpl::new(VecWriter(&mut head), bincode_config::<BATCH_BYTES_MAX>());
    header
        .encode(&mut encoder)
        .and_then(|()| (records as u64).encode(&mut encoder))
        .expect("encoding into memory cannot fail");
    head
}

impl BatchId {
    pub fn of(bytes: &[u8]) -> BatchId {
        BatchId(*blake3::hash(bytes).as_bytes())
    }
}

/// An Ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct Signature(pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}..)", crate::ids::hex(&self.0[..8]))
    }
}

/// A node's public identity key, as pinned in the topology file.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub struct PublicKey(pub [u8; 32]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(
        "public key {0:?} must be 64 hexadecimal characters (an Ed25519 key, as printed by `credit-node init`)"
    )]
    Malformed(String),
    #[error("public key {0:?} is not a valid Ed25519 point")]
    NotAPoint(String),
}

impl PublicKey {
    pub fn parse_hex(text: &str) -> Result<PublicKey, KeyError> {
        let bytes =
            crate::ids::parse_hex32(text).ok_or_else(|| KeyError::Malformed(text.to_owned()))?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map_err(|_| KeyError::NotAPoint(text.to_owned()))?;
        Ok(PublicKey(bytes))
    }

    pub fn to_hex(&self) -> String {
        crate::ids::hex(&self.0)
    }

    /// Verifies `signature` over `message` under this key with domain separation `context`.
    pub fn verify(&self, context: &[u8], message: &[u8], signature: &Signature) -> bool {
        let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(&self.0) else {
            return false;
        };
        let signed = signing_input(context, message);
        key.verify_strict(&signed, &ed25519_dalek::Signature::from_bytes(&signature.0))
            .is_ok()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({}..)", crate::ids::hex(&self.0[..8]))
    }
}

fn signing_input(context: &[u8], message: &[u8]) -> Vec<u8> {
    let mut input = Vec::with_capacity(context.len() + 1 + message.len());
    input.extend_from_slice(context);
    input.push(0);
    input.extend_from_slice(message);
    input
}

/// A node's Ed25519 identity key. Made from 32 secret bytes the caller supplies (the node
/// draws them from the OS), so this crate needs no randomness.
#[derive(Clone)]
pub struct NodeKey(ed25519_dalek::SigningKey);

impl NodeKey {
    pub fn from_seed(seed: [u8; 32]) -> NodeKey {
        NodeKey(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    pub fn seed(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    pub fn sign(&self, context: &[u8], message: &[u8]) -> Signature {
        use ed25519_dalek::Signer;
        Signature(self.0.sign(&signing_input(context, message)).to_bytes())
    }
}

/// Makes signatures: the seam through which a node signs. [`NodeKey`] signs with Ed25519; a
/// simulation may stand in a keyed hash (see [`Verifier`]).
pub trait Signer {
    fn public(&self) -> PublicKey;
    fn sign(&self, context: &[u8], message: &[u8]) -> Signature;
}

/// Checks signatures: the seam through which a node verifies. [`Ed25519`] is the real one.
/// A simulation may use a keyed hash instead, as long as a simulated forger cannot produce a
/// signature that verifies without the signer's secret.
pub trait Verifier {
    fn verify(
        &self,
        key: &PublicKey,
        context: &[u8],
        message: &[u8],
        signature: &Signature,
    ) -> bool;
}

/// Ed25519 verification (strict), as used in production.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ed25519;

impl Verifier for Ed25519 {
    fn verify(
        &self,
        key: &PublicKey,
        context: &[u8],
        message: &[u8],
        signature: &Signature,
    ) -> bool {
        key.verify(context, message, signature)
    }
}

impl Signer for NodeKey {
    fn public(&self) -> PublicKey {
        NodeKey::public(self)
    }

    fn sign(&self, context: &[u8], message: &[u8]) -> Signature {
        NodeKey::sign(self, context, message)
    }
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeKey(public {:?})", self.public())
    }
}

/// A batch's canonical bytes with its id and its origin's signature: what travels and what
/// is stored. The bytes never change on the way up.
#[derive(Clone, PartialEq, Eq, Encode, Decode)]
pub struct SignedBatch {
    pub id: BatchId,
    pub signature: Signature,
    pub bytes: Vec<u8>,
}

impl fmt::Debug for SignedBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SignedBatch({}, {} bytes)",
            self.id.short(),
            self.bytes.len()
        )
    }
}

/// Why a signed batch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error(
        "batch bytes hash to {actual}, not to the claimed id {claimed}: the batch was corrupted or tampered with"
    )]
    HashMismatch { claimed: BatchId, actual: BatchId },
    #[error(
        "signature on batch {0} does not verify under the origin's pinned key: refuse it and check the origin's key in the topology"
    )]
    BadSignature(BatchId),
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

impl SignedBatch {
    /// Encodes, hashes and signs a batch.
    pub fn seal(batch: &Batch, key: &NodeKey) -> Result<SignedBatch, BuildError> {
        SignedBatch::seal_with(batch, key)
    }

    /// Sorts, encodes, hashes and signs a batch of `header` and `records`: the same
    /// [`SignedBatch`] as [`SignedBatch::seal`] of [`Batch::new`] of the same records gives.
    pub fn seal_encoded(
        header: BatchHeader,
        records: &mut EncodedRecords,
        key: &dyn Signer,
    ) -> Result<SignedBatch, BuildError> {
        Ok(SignedBatch::seal_bytes(records.encode_batch(header)?, key))
    }

    /// [`SignedBatch::seal`] through a [`Signer`] seam.
    pub fn seal_with(batch: &Batch, key: &dyn Signer) -> Result<SignedBatch, BuildError> {
        Ok(SignedBatch::seal_bytes(batch.encode()?, key))
    }

    /// Hashes and signs canonical bytes of any kind (a data batch, a manifest).
    pub(crate) fn seal_bytes(bytes: Vec<u8>, key: &dyn Signer) -> SignedBatch {
        let id = BatchId::of(&bytes);
        let signature = key.sign(BATCH_SIGNING_CONTEXT, id.as_bytes());
        SignedBatch {
            id,
            signature,
            bytes,
        }
    }

    /// Checks the hash and the origin's signature, then decodes. `origin_key` must be the
    /// key pinned for the batch's origin; use [`SignedBatch::origin`] to find which node that is.
    pub fn verify(&self, origin_key: &PublicKey) -> Result<Batch, VerifyError> {
        self.verify_with(origin_key, &Ed25519)
    }

    /// [`SignedBatch::verify`] through a [`Verifier`] seam.
    pub fn verify_with(
        &self,
        origin_key: &PublicKey,
        verifier: &dyn Verifier,
    ) -> Result<Batch, VerifyError> {
        self.verify_hash_and_signature_with(origin_key, verifier)?;
        Ok(Batch::decode(&self.bytes)?)
    }

    /// Checks the hash and the signature without decoding the records.
    pub fn verify_hash_and_signature(&self, origin_key: &PublicKey) -> Result<(), VerifyError> {
        self.verify_hash_and_signature_with(origin_key, &Ed25519)
    }

    /// [`SignedBatch::verify_hash_and_signature`] through a [`Verifier`] seam.
    pub fn verify_hash_and_signature_with(
        &self,
        origin_key: &PublicKey,
        verifier: &dyn Verifier,
    ) -> Result<(), VerifyError> {
        self.verify_hash()?;
        self.verify_signature_with(origin_key, verifier)
    }

    /// Checks that the bytes hash to the claimed id.
    pub fn verify_hash(&self) -> Result<(), VerifyError> {
        let actual = BatchId::of(&self.bytes);
        if actual != self.id {
            return Err(VerifyError::HashMismatch {
                claimed: self.id,
                actual,
            });
        }
        Ok(())
    }

    /// `key`'s signature of batch `id`: an origin given a new key re-signs what no parent
    /// has acknowledged yet (the bytes, and so the id, stay the same).
    pub fn sign_id(id: &BatchId, key: &dyn Signer) -> Signature {
        key.sign(BATCH_SIGNING_CONTEXT, id.as_bytes())
    }

    /// Whether `signature` is `key`'s signature of batch `id` (the hash is not checked).
    pub fn id_signed_by(
        id: &BatchId,
        signature: &Signature,
        key: &PublicKey,
        verifier: &dyn Verifier,
    ) -> bool {
        verifier.verify(key, BATCH_SIGNING_CONTEXT, id.as_bytes(), signature)
    }

    /// Checks the origin's signature over the id alone (the caller has checked the hash).
    pub fn verify_signature_with(
        &self,
        origin_key: &PublicKey,
        verifier: &dyn Verifier,
    ) -> Result<(), VerifyError> {
        if !verifier.verify(
            origin_key,
            BATCH_SIGNING_CONTEXT,
            self.id.as_bytes(),
            &self.signature,
        ) {
            return Err(VerifyError::BadSignature(self.id));
        }
        Ok(())
    }

    /// The header alone, decoded from the front of the bytes (cheap: records are not read), to
    /// find the origin whose key verifies the batch.
    pub fn header(&self) -> Result<BatchHeader, DecodeError> {
        if self.bytes.len() > BATCH_BYTES_MAX {
            return Err(DecodeError::TooLarge(self.bytes.len()));
        }
        let (header, _): (BatchHeader, usize) =
            bincode::decode_from_slice(&self.bytes, bincode_config::<BATCH_BYTES_MAX>())
                .map_err(|e| DecodeError::Malformed(e.to_string()))?;
        if header.format != BATCH_FORMAT {
            return Err(DecodeError::Format(header.format));
        }
        Ok(header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::PersonToken;
    use crate::record::Subject;

    /// Records copied in key order into room left for a batch of their count become the
    /// batch's bytes (no copy); with room for a count of another width, or out of order,
    /// they are copied and the memory is kept.
    #[test]
    fn sealing_in_key_order_into_room_for_the_header_takes_the_records_bytes() {
        let batch = batch_of_texts(&[3, 300, 7, 0, 12]);
        let mut source = EncodedRecords::new();
        for record in &batch.records {
            source.push(record);
        }
        let expected = batch.encode().unwrap();
        let copy_all = |records: &mut EncodedRecords, order: &[usize]| {
            for &index in order {
                records.push_from(&source, index);
            }
        };
        let mut records = EncodedRecords::new();
        records.room_for_header(&batch.header, 5);
        copy_all(&mut records, &[0, 1, 2, 3, 4]);
        assert!(!records.maybe_unordered);
        let at = records.bytes.as_ptr();
        let sealed = records.encode_batch(batch.header.clone()).unwrap();
        assert_eq!(sealed, expected);
        assert_eq!(sealed.as_ptr(), at, "the records' own bytes");
        assert!(records.is_empty() && records.bytes.capacity() == 0);

        for (room, order) in [(300, [0, 1, 2, 3, 4]), (5, [1, 0, 2, 3, 4])] {
            let mut records = EncodedRecords::new();
            records.room_for_header(&batch.header, room);
            copy_all(&mut records, &order);
            let at = records.bytes.as_ptr();
            let sealed = records.encode_batch(batch.header.clone()).unwrap();
            assert_eq!(sealed, expected);
            assert_ne!(sealed.as_ptr(), at, "copied");
            assert!(
                records.is_empty() && records.bytes.capacity() > 0,
                "memory kept"
            );
        }
    }

    /// Texts (held inline up to 24 bytes, on the heap beyond) around a person token, a length
    /// above 127 and multi-byte characters decode as they were encoded; a text that is not
    /// UTF-8 is named by where it starts, and it is the fault reported when the record
    /// breaks after it too.
    #[test]
    fn texts_decode_as_encoded_and_the_first_fault_in_the_bytes_is_reported() {
        let mut batch = batch_of_texts(&[3, 200]);
        for record in &mut batch.records {
            record.values.extend([
                Value::Text("揭阳市榕城区".into()),
                Value::Text("é".repeat(70).into()),
                Value::Text("TAIL".into()),
            ]);
        }
        let bytes = batch.encode().unwrap();
        assert_eq!(Batch::decode(&bytes).unwrap(), batch);
        let find = |needle: &[u8]| {
            bytes
                .windows(needle.len())
                .position(|w| w == needle)
                .unwrap()
        };
        let key = find(b"K0000");
        let name = find("揭阳市榕城区".as_bytes());
        let tail = find(b"TAIL");
        let fault = |changes: &[(usize, u8)]| {
            let mut changed = bytes.clone();
            for &(at, byte) in changes {
                changed[at] = byte;
            }
            Batch::decode(&changed).unwrap_err().to_string()
        };
        let not_utf8 = |at: usize| format!("text at byte {at} is not UTF-8");
        assert!(fault(&[(name + 1, 0xFF)]).contains(&not_utf8(name)));
        assert!(fault(&[(tail + 1, 0xC3)]).contains(&not_utf8(tail)));
        // The last value's variant tag made unknown: reported alone, and after a bad key.
        assert!(fault(&[(tail - 2, 9)]).contains("unknown Value variant 9"));
        let both = fault(&[(key + 1, 0xFF), (tail - 2, 9)]);
        assert!(both.contains(&not_utf8(key)), "{both}");
        // A value's text before it too: the values are laid out before their texts are
        // checked, and the text is still the fault reported.
        let both = fault(&[(name + 1, 0xFF), (tail - 2, 9)]);
        assert!(both.contains(&not_utf8(name)), "{both}");
        // The bytes cut inside the last value (its text read, not its end): the same.
        let mut cut = bytes.clone();
        cut[name + 1] = 0xFF;
        cut.truncate(tail + 2);
        let why = Batch::decode(&cut).unwrap_err().to_string();
        assert!(why.contains(&not_utf8(name)), "{why}");
    }

    /// A batch of one record per text length, each holding a text that long.
    fn batch_of_texts(lengths: &[usize]) -> Batch {
        let header = BatchHeader {
            format: BATCH_FORMAT,
            origin: NodeId::parse("445281").unwrap(),
            category: Category::parse("water_fee").unwrap(),
            schema_version: 1,
            period: Period::parse("2022-05").unwrap(),
            supersedes: None,
            withdrawals: Vec::new(),
        };
        let records = lengths
            .iter()
            .enumerate()
            .map(|(i, &len)| Record {
                key: RecordKey(format!("K{i:04}")),
                subject: Subject::Person(PersonToken([i as u8; 16])),
                values: vec![
                    Value::Text("x".repeat(len).into()),
                    Value::Absent,
                    Value::Token {
                        masked: "110105***********X".into(),
                        token: PersonToken([7; 16]),
                    },
                ],
            })
            .collect();
        Batch::new(header, records).unwrap()
    }

    fn encoded_len(batch: &Batch) -> usize {
        let mut size = bincode::enc::write::SizeWriter::default();
        bincode::encode_into_writer(batch, &mut size, bincode_config::<BATCH_BYTES_MAX>()).unwrap();
        size.bytes_written
    }

    #[test]
    fn encode_gives_the_bytes_of_bincode_encode_to_vec() {
        let batch = batch_of_texts(&[0, 1, 127, 128, 300, 70_000, 5]);
        let bytes = batch.encode().unwrap();
        assert_eq!(
            bytes,
            bincode::encode_to_vec(&batch, bincode_config::<BATCH_BYTES_MAX>()).unwrap()
        );
        assert_eq!(Batch::decode(&bytes).unwrap(), batch);
    }

    /// Every batch that encodes within the byte cap decodes, however much memory its
    /// records take decoded: 100,000 records of short texts (~60 MiB encoded, some 300
    /// bytes of memory a record more than encoded). bincode's decoding counted decoded
    /// sizes against the cap and refused such batches (85,000 `admin_penalty` records,
    /// 52 MiB, failed with `LimitExceeded`) until records were read by hand.
    #[test]
    fn a_batch_just_under_the_byte_cap_decodes() {
        let mut batch = batch_of_texts(&[0]);
        batch.records = (0..100_000u32)
            .map(|i| Record {
                key: RecordKey(format!("K{i:06}")),
                subject: Subject::Person(PersonToken([1; 16])),
                values: (0..27)
                    .map(|_| Value::Text("x".repeat(20).into()))
                    .collect(),
            })
            .collect();
        let bytes = batch.encode().unwrap();
        assert!(bytes.len() > BATCH_BYTES_MAX * 9 / 10, "{}", bytes.len());
        assert!(bytes.len() <= BATCH_BYTES_MAX);
        assert_eq!(Batch::decode(&bytes).unwrap(), batch);
    }

    /// A text that is not UTF-8 is refused, naming where it starts and what is wrong; the
    /// same bytes made valid again decode.
    #[test]
    fn a_text_that_is_not_utf8_is_refused_with_its_place() {
        let batch = batch_of_texts(&[40]);
        let mut bytes = batch.encode().unwrap();
        let at = bytes
            .windows(40)
            .position(|w| w.iter().all(|&b| b == b'x'))
            .unwrap();
        // A lone continuation byte, then a Chinese character cut short.
        bytes[at + 3] = 0x80;
        bytes[at + 10..at + 12].copy_from_slice(&[0xE4, 0xB8]);
        match Batch::decode(&bytes) {
            Err(DecodeError::Malformed(message)) => assert_eq!(
                message,
                format!(
                    "text at byte {at} is not UTF-8: invalid utf-8 sequence of 1 bytes from index 3"
                )
            ),
            other => panic!("{other:?}"),
        }
        bytes[at + 3] = b'x';
        bytes[at + 10..at + 12].copy_from_slice(b"xx");
        assert_eq!(Batch::decode(&bytes).unwrap(), batch);
    }

    #[test]
    fn a_batch_over_the_byte_limit_is_refused_with_its_size() {
        let batch = batch_of_texts(&[BATCH_BYTES_MAX / 2, BATCH_BYTES_MAX / 2]);
        let len = encoded_len(&batch);
        assert!(len > BATCH_BYTES_MAX);
        assert_eq!(batch.encode(), Err(BuildError::TooManyBytes(len)));
    }
}
