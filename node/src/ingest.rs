//! Ingestion: a CSV export from a data-source unit becomes validated, desensitized, signed
//! batches.
//!
//! Real exports come from Excel and government systems: UTF-8 with or without a BOM, CRLF line
//! endings, quoted fields with commas and newlines, full-width spaces around values, or GBK.
//! One bad row never loses the good ones: each bad row is reported with its line, field and
//! reason, and the rest are batched. Problems of the file as a whole (unreadable, wrong
//! encoding, a header that lacks a required column) are errors that name the file and say
//! what to do.
//!
//! Ingestion streams: the file is read a buffer at a time, rows are validated in chunks by
//! worker threads, and a batch is cut and sealed whenever `batch_records_max` records have
//! been accepted, then handed to a sink and dropped. Neither the file nor its records are
//! ever all in memory; what grows with the file is the duplicate-key index ([`KeyIndex`],
//! about 9 bytes a record) and the list of refused and warned rows.

mod rows;

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, mpsc};

use protocol::batch::{BATCH_FORMAT, BATCH_RECORDS_MAX, BatchHeader, BuildError, EncodedRecords};
use protocol::record::{Problem, Rule, Severity, Staging};
use protocol::schema::{Required, Schema};
use protocol::{Batch, BatchId, DesensitizeKey, NodeId, NodeKey, Period, Record, SignedBatch};

use rows::{Row, Rows};

use crate::store::file::DirectAppend;

/// Largest file `ingest_file` reads, in bytes: it bounds the duplicate-key index (about 9
/// bytes a record, see [`KeyIndex`]), the one structure that grows with the file.
pub const FILE_BYTES_MAX: u64 = 4 * 1024 * 1024 * 1024;
/// How often, in rows, the row callback of [`ingest_bytes`] is called.
pub const PROGRESS_EVERY_ROWS: u64 = 10_000;
/// Bytes at the start of a UTF-8 file that decide whether it is UTF-8 at all (or GBK, or
/// neither): the whole file is never read first.
pub const ENCODING_PREFIX_BYTES: usize = 1 << 20;

/// The text encoding of an input file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Encoding {
    /// UTF-8, with or without a byte-order mark.
    Utf8,
    /// GBK / GB18030, as written by Excel and many government systems on Chinese Windows.
    Gbk,
}

/// What to make batches of.
#[derive(Debug, Clone)]
pub struct IngestOptions<'a> {
    pub schema: &'a Schema,
    pub origin: NodeId,
    pub period: Period,
    pub encoding: Encoding,
    pub desensitize_key: &'a DesensitizeKey,
    pub node_key: &'a NodeKey,
    /// Records per batch; larger files become several batches.
    pub batch_records_max: usize,
    /// Fields the topology's minimum-necessary profile keeps from travelling upstream: their
    /// columns are not read (the records carry nothing there). Empty: every field travels.
    pub left_out: &'a [String],
}

/// The problems of one input row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowProblems {
    /// Line in the file where the row starts (1 is the header).
    pub line: u64,
    pub problems: Vec<Problem>,
}

/// A batch that was sealed and handed to the sink (the batch itself is not kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchSummary {
    pub id: BatchId,
    pub records: u64,
    /// Encoded size.
    pub bytes: u64,
}

/// What ingestion made of a file.
#[derive(Debug, Default)]
pub struct IngestReport {
    /// The batches handed to the sink, in the order they were sealed.
    pub batches: Vec<BatchSummary>,
    /// Data rows read (not counting the header and blank lines).
    pub rows: u64,
    pub records: u64,
    /// Rows refused, each with every problem found, in line order.
    pub rejected: Vec<RowProblems>,
    /// Accepted rows that carry warnings, in line order.
    pub warnings: Vec<RowProblems>,
    /// Header columns that match no field and were ignored.
    pub ignored_columns: Vec<String>,
    /// Columns of fields the minimum-necessary profile leaves out, not read.
    pub left_out_columns: Vec<String>,
}

/// What a sink may fail with; ingestion stops at the first failure.
pub type SinkError = Box<dyn std::error::Error + Send + Sync>;

/// Why a file could not be ingested (or, for [`IngestError::Sink`], not to its end).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: file is {bytes} bytes, more than {FILE_BYTES_MAX}: split it")]
    TooLarge { path: PathBuf, bytes: u64 },
    #[error(
        "{path}: line {line}: the file is not UTF-8; it looks like GBK (as saved by Excel on Chinese Windows): pass --encoding gbk"
    )]
    LooksLikeGbk { path: PathBuf, line: u64 },
    #[error(
        "{path}: line {line}: the file is neither UTF-8 nor GBK: save it as UTF-8 (Excel: Save As → CSV UTF-8)"
    )]
    UnknownEncoding { path: PathBuf, line: u64 },
    #[error("{path}: the file is empty: expected a header row naming the fields of {category}")]
    Empty { path: PathBuf, category: String },
    #[error("{path}: line 1: {message}")]
    Header { path: PathBuf, message: String },
    #[error("{path}: line {line}: {message}")]
    Csv {
        path: PathBuf,
        line: u64,
        message: String,
    },
    #[error("{path}: {source}")]
    Build { path: PathBuf, source: BuildError },
    #[error(
        "{path}: cannot write the duplicate-key index to a temporary file: {source}: set TMPDIR to a writable directory with free space (about 50 bytes a row)"
    )]
    Scratch {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The sink refused batch `batch`: ingestion stopped there. `report` holds what was done
    /// up to then (its `batches` were all taken by the sink).
    #[error("{path}: batch {batch} was not taken: {source}")]
    Sink {
        path: PathBuf,
        batch: BatchId,
        source: SinkError,
        report: Box<IngestReport>,
    },
}

/// What ingestion is doing now (see [`IngestProgress`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading and validating rows.
    Reading,
    /// Sealing a batch (sort, encode, hash, sign).
    Sealing,
    /// Handing a sealed batch to the sink (for `submit`: waiting for the node's durable
    /// acknowledgement).
    Handing,
    /// Done.
    Done,
}

/// Counters ingestion keeps up to date as it goes, for a progress display on another thread.
#[derive(Debug, Default)]
pub struct IngestProgress {
    bytes_total: AtomicU64,
    bytes_read: AtomicU64,
    rows_read: AtomicU64,
    rows_checked: AtomicU64,
    records: AtomicU64,
    batches_sealed: AtomicU64,
    batches_handed: AtomicU64,
    phase: AtomicU8,
}

/// One reading of [`IngestProgress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgressSnapshot {
    pub phase: Phase,
    /// The file's size, if known (0: unknown).
    pub bytes_total: u64,
    /// Bytes read from the file so far.
    pub bytes_read: u64,
    /// Data rows parsed so far.
    pub rows_read: u64,
    /// Data rows validated and checked for duplicate keys so far.
    pub rows_checked: u64,
    /// Records accepted so far.
    pub records: u64,
    pub batches_sealed: u64,
    /// Batches the sink has taken.
    pub batches_handed: u64,
}

impl IngestProgress {
    pub fn new() -> IngestProgress {
        IngestProgress::default()
    }

    pub fn snapshot(&self) -> ProgressSnapshot {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ProgressSnapshot {
            phase: match self.phase.load(Ordering::Relaxed) {
                0 => Phase::Reading,
                1 => Phase::Sealing,
                2 => Phase::Handing,
                _ => Phase::Done,
            },
            bytes_total: load(&self.bytes_total),
            bytes_read: load(&self.bytes_read),
            rows_read: load(&self.rows_read),
            rows_checked: load(&self.rows_checked),
            records: load(&self.records),
            batches_sealed: load(&self.batches_sealed),
            batches_handed: load(&self.batches_handed),
        }
    }

    fn set_phase(&self, phase: Phase) {
        let value = match phase {
            Phase::Reading => 0,
            Phase::Sealing => 1,
            Phase::Handing => 2,
            Phase::Done => 3,
        };
        self.phase.store(value, Ordering::Relaxed);
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Reads and ingests a file, handing each batch to `sink` as soon as it is sealed (in file
/// order) and dropping it after. Memory stays bounded whatever the file's size (see the
/// module documentation). If `sink` fails, ingestion stops and returns
/// [`IngestError::Sink`] with the report so far.
///
/// A file that is not read to its end (an error past the header) may have had batches
/// handed to the sink already.
pub fn ingest_file(
    path: &Path,
    options: &IngestOptions<'_>,
    progress: &IngestProgress,
    sink: impl FnMut(SignedBatch) -> Result<(), SinkError>,
) -> Result<IngestReport, IngestError> {
    let read = |source| IngestError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let bytes_len = file.metadata().map_err(read)?.len();
    if bytes_len > FILE_BYTES_MAX {
        return Err(IngestError::TooLarge {
            path: path.to_owned(),
            bytes: bytes_len,
        });
    }
    progress.bytes_total.store(bytes_len, Ordering::Relaxed);
    ingest_reader(path, file, options, progress, sink)
}

/// Batches made from bytes in memory, all kept (for tests, the simulator and other small
/// inputs): the report, and every batch in the order it was sealed. It dereferences to the
/// report.
#[derive(Debug)]
pub struct Ingested {
    pub batches: Vec<SignedBatch>,
    pub report: IngestReport,
}

impl std::ops::Deref for Ingested {
    type Target = IngestReport;

    fn deref(&self) -> &IngestReport {
        &self.report
    }
}

/// Ingests file contents already in memory, keeping every batch; `path` is used in messages
/// only. `progress` is called with the number of rows read, at the end.
pub fn ingest_bytes(
    path: &Path,
    bytes: &[u8],
    options: &IngestOptions<'_>,
    mut progress: impl FnMut(u64),
) -> Result<Ingested, IngestError> {
    let counters = IngestProgress::new();
    counters
        .bytes_total
        .store(bytes.len() as u64, Ordering::Relaxed);
    let mut batches = Vec::new();
    let report = ingest_reader(path, bytes, options, &counters, |batch| {
        batches.push(batch);
        Ok(())
    })?;
    progress(report.rows);
    Ok(Ingested { batches, report })
}

/// Ingests what `input` yields (the raw bytes of a file; `path` is used in messages only),
/// handing each batch to `sink` as it is sealed.
///
/// One thread parses the CSV and hands rows, in chunks, to validation workers (one per
/// core): validation, normalization and desensitization are most of the work. The calling
/// thread takes the checked chunks back in file order, refuses duplicate keys and cuts
/// batches, which a thread of their own seals, and hands them on in order, so the report is
/// the same as from one thread. At most
/// [`CHUNKS_IN_FLIGHT_PER_WORKER`] chunks a worker are between the parser and the calling
/// thread at any time.
pub fn ingest_reader(
    path: &Path,
    input: impl Read + Send,
    options: &IngestOptions<'_>,
    progress: &IngestProgress,
    mut sink: impl FnMut(SignedBatch) -> Result<(), SinkError>,
) -> Result<IngestReport, IngestError> {
    progress.set_phase(Phase::Reading);
    let counted = Counted {
        inner: input,
        progress,
    };
    let text = open_text(path, counted, options.encoding)?;
    let schema = options.schema;
    let mut reader = Rows::new(text);
    let mut row = Row::default();
    if !read_row(path, &mut reader, &mut row)? {
        return Err(IngestError::Empty {
            path: path.to_owned(),
            category: schema.category.to_string(),
        });
    }
    let header = csv::StringRecord::from_byte_record(row.to_byte_record())
        .map_err(|e| not_utf8(path, row.line(), e.utf8_error().field()))?;
    let (mut columns, ignored_columns) = map_header(path, schema, &header)?;
    let column_count = header.len();
    // What the profile leaves out is never read, so it cannot reach a batch.
    let mut left_out_columns = Vec::new();
    for (field, column) in schema.fields.iter().zip(columns.iter_mut()) {
        if options.left_out.contains(&field.name)
            && let Some(c) = column.take()
        {
            left_out_columns.push(header.get(c).unwrap_or(&field.name).to_owned());
        }
    }
    let fingerprinter = Fingerprinter::default();
    let report = IngestReport {
        ignored_columns,
        left_out_columns,
        ..IngestReport::default()
    };
    let keys = KeyIndex::new({
        let fingerprinter = fingerprinter.clone();
        Box::new(move |key| fingerprinter.of(key))
    });

    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(WORKERS_MAX));
    let (chunk_sender, chunk_receiver) = mpsc::channel::<(usize, Chunk)>();
    let chunk_receiver = Mutex::new(chunk_receiver);
    let (checked_sender, checked_receiver) = mpsc::channel();
    // Credits: the parser takes one per chunk it sends, the calling thread gives it back once
    // the chunk is merged, so only so many chunks are ever in flight.
    let in_flight = CHUNKS_IN_FLIGHT_PER_WORKER * workers;
    // A credit is a chunk's buffers, emptied: they go round parser → worker → calling
    // thread → parser, so that ingestion allocates nothing per chunk once they have grown.
    let (credit_sender, credit_receiver) = mpsc::sync_channel::<Chunk>(in_flight);
    for _ in 0..in_flight {
        credit_sender
            .send(Chunk::default())
            .expect("the receiver is alive");
    }
    // If a thread panics, the scope re-raises the panic once every thread has ended.
    std::thread::scope(|scope| -> Result<IngestReport, IngestError> {
        // Made here, so that on an early return it is dropped here and the sealing thread,
        // whose batches it sends, ends before the scope waits for it.
        let header = batch_header(options);
        let mut collector = Collector {
            path,
            progress,
            report,
            keys,
            sealer: Sealer::spawn(scope, &header, options.node_key),
            header,
            batch: EncodedRecords::new(),
            spare: EncodedRecords::new(),
            per_batch: options.batch_records_max.clamp(1, BATCH_RECORDS_MAX),
            sink: &mut sink,
        };
        for _ in 0..workers {
            let (chunk_receiver, checked_sender) = (&chunk_receiver, checked_sender.clone());
            let (columns, fingerprinter) = (&columns, &fingerprinter);
            scope.spawn(move || {
                loop {
                    // A worker that panicked holding the lock leaves nothing half-done in it.
                    let next = chunk_receiver
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .recv();
                    let Ok((index, mut chunk)) = next else { break };
                    let checked = check_chunk(path, &mut chunk, columns, options, fingerprinter)
                        .map(|()| chunk);
                    if checked_sender.send((index, checked)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(checked_sender);
        let encoding = options.encoding;
        let parser = scope.spawn(move || {
            parse_rows(
                path,
                reader,
                column_count,
                encoding,
                progress,
                &credit_receiver,
                &chunk_sender,
            )
        });
        // Back in file order; `merged` stops at the first error, dropping the receiver and
        // the credits so the other threads end.
        let merged = (|| -> Result<(), IngestError> {
            let mut waiting: BTreeMap<usize, Result<Chunk, IngestError>> = BTreeMap::new();
            let mut next = 0;
            for (index, checked) in checked_receiver {
                waiting.insert(index, checked);
                while let Some(checked) = waiting.remove(&next) {
                    let mut chunk = checked?;
                    collector.merge(&mut chunk)?;
                    next += 1;
                    chunk.clear();
                    // The parser may have ended: nobody needs the credit then.
                    let _ = credit_sender.send(chunk);
                }
            }
            Ok(())
        })();
        drop(credit_sender);
        let parsed = parser
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        merged?;
        parsed?;
        collector.finish()
    })
}

/// Most validation workers: one parsing thread cannot keep more busy.
const WORKERS_MAX: usize = 8;
/// Rows handed to a worker at a time: enough that passing them costs nothing next to
/// checking them, few enough to spread a small file over the workers.
const CHUNK_ROWS: usize = 1024;
/// Chunks read but not yet merged, at most, per worker (each is about 250 KB of rows and as
/// much of records). Chunks are merged in file order: when the worker holding the next one
/// waits for a core, the other goes on with later chunks only while credits last, and once
/// they run out the parser and that worker wait too, leaving a core idle. With two workers
/// on two cores, a 2 GB export (three alternating runs each): 6 a worker 4.53–4.86 s, 12
/// 3.71–4.09 s, 16 3.75–3.94 s, 24 3.66–3.89 s; peak memory 73–101, 84–97, 91–118 and
/// 106–133 MiB.
pub const CHUNKS_IN_FLIGHT_PER_WORKER: usize = 16;

fn read_row<R: Read>(
    path: &Path,
    reader: &mut Rows<R>,
    row: &mut Row,
) -> Result<bool, IngestError> {
    reader
        .read(row)
        .map_err(|e| csv_error(path, &csv::Error::from(e)))
}

/// The parsing thread: reads rows, refuses those of the wrong width or with bytes their
/// encoding does not allow, and sends the rest to the workers in chunks, one credit each.
fn parse_rows<R: Read>(
    path: &Path,
    mut reader: Rows<R>,
    column_count: usize,
    encoding: Encoding,
    progress: &IngestProgress,
    credits: &mpsc::Receiver<Chunk>,
    chunks: &mpsc::Sender<(usize, Chunk)>,
) -> Result<(), IngestError> {
    let mut row = Row::default();
    let mut chunk = Chunk::default();
    let mut sent = 0;
    // Sends `chunk`, leaving an empty one from the credit in its place.
    let mut send = |chunk: &mut Chunk| -> bool {
        // No credit: the calling thread stopped (an error); so does parsing.
        let Ok(empty) = credits.recv() else {
            return false;
        };
        if chunks
            .send((sent, std::mem::replace(chunk, empty)))
            .is_err()
        {
            return false;
        }
        sent += 1;
        true
    };
    loop {
        if !read_row(path, &mut reader, &mut row)? {
            break;
        }
        let line = row.line();
        // A row with bytes its encoding does not allow is refused alone, at its line.
        match row_text(&row, encoding) {
            Err(message) => {
                chunk.rows_read += 1;
                chunk.refused.push(RowProblems {
                    line,
                    problems: vec![file_problem(Rule::Format, message)],
                });
            }
            Ok(_) if is_blank(&row).map_err(|field| not_utf8(path, line, field))? => {
                continue; // blank lines and rows of empty cells, as Excel leaves at the end
            }
            Ok(_) if row.len() != column_count => {
                chunk.rows_read += 1;
                chunk.refused.push(RowProblems {
                    line,
                    problems: vec![file_problem(
                        Rule::Format,
                        format!(
                            "the row has {} columns, the header has {column_count}: check for an unquoted comma or a missing cell",
                            row.len()
                        ),
                    )],
                });
            }
            Ok(text) => {
                chunk.rows_read += 1;
                chunk.push(line, &row, text);
            }
        }
        if chunk.rows_read as usize >= CHUNK_ROWS {
            IngestProgress::add(&progress.rows_read, chunk.rows_read);
            if !send(&mut chunk) {
                return Ok(());
            }
        }
    }
    IngestProgress::add(&progress.rows_read, chunk.rows_read);
    if chunk.rows_read > 0 {
        send(&mut chunk);
    }
    Ok(())
}

/// Takes checked chunks in file order: refuses duplicate keys, cuts, seals and hands on
/// batches.
struct Collector<'a, S> {
    path: &'a Path,
    progress: &'a IngestProgress,
    report: IngestReport,
    keys: KeyIndex,
    /// The header of every batch.
    header: BatchHeader,
    /// Records of the batch being filled.
    batch: EncodedRecords,
    /// Memory of a batch sealed before, for the next.
    spare: EncodedRecords,
    per_batch: usize,
    /// Seals full batches while the next fills.
    sealer: Sealer,
    sink: &'a mut S,
}

/// A thread that seals batches (encodes, hashes, signs) one at a time, so that the collector
/// goes on merging while a batch is sealed: merging stopped for each seal, and the workers
/// and the parser with it once the chunks in flight were used up.
struct Sealer {
    batches: mpsc::SyncSender<EncodedRecords>,
    sealed: mpsc::Receiver<(Result<SignedBatch, BuildError>, EncodedRecords)>,
    /// The records of the batch being sealed, if one is: it is handed to the sink before the
    /// next is sent, so batches reach the sink in order and at most one waits.
    sealing: Option<u64>,
}

impl Sealer {
    fn spawn<'scope>(
        scope: &'scope std::thread::Scope<'scope, '_>,
        header: &BatchHeader,
        key: &'scope NodeKey,
    ) -> Sealer {
        // One batch each way at most: neither side ever blocks on a send.
        let (batches, to_seal) = mpsc::sync_channel::<EncodedRecords>(1);
        let (done, sealed) = mpsc::sync_channel(1);
        let header = header.clone();
        scope.spawn(move || {
            for mut records in to_seal {
                let signed = SignedBatch::seal_encoded(header.clone(), &mut records, key);
                records.clear();
                if done.send((signed, records)).is_err() {
                    break;
                }
            }
        });
        Sealer {
            batches,
            sealed,
            sealing: None,
        }
    }
}

impl<S: FnMut(SignedBatch) -> Result<(), SinkError>> Collector<'_, S> {
    fn merge(&mut self, checked: &mut Chunk) -> Result<(), IngestError> {
        let self_rows = checked.rows_read;
        self.report.rows += checked.rows_read;
        self.report.rejected.append(&mut checked.refused);
        let mut warned = checked.warned.drain(..).peekable();
        for (index, &line) in checked.lines.iter().enumerate() {
            let warnings = warned
                .next_if(|(at, _)| *at == index)
                .map(|(_, warnings)| warnings);
            if index % KeyIndex::WARM_GROUP == 0 {
                let group = &checked.fingerprints[index..];
                self.keys
                    .warm(&group[..group.len().min(KeyIndex::WARM_GROUP)]);
            }
            let key = checked.records.key(index);
            let first_line = self
                .keys
                .insert_fingerprinted(key, checked.fingerprints[index], line)
                .map_err(|source| IngestError::Scratch {
                    path: self.path.to_owned(),
                    source,
                })?;
            if let Some(first_line) = first_line {
                // Refused: its warnings are not reported.
                self.report.rejected.push(RowProblems {
                    line,
                    problems: vec![file_problem(
                        Rule::DuplicateKey,
                        format!(
                            "record key {} was already given on line {first_line}: keep one row per key",
                            String::from_utf8_lossy(key)
                        ),
                    )],
                });
                continue;
            }
            if let Some(problems) = warnings {
                self.report.warnings.push(RowProblems { line, problems });
            }
            self.report.records += 1;
            if self.batch.is_empty() {
                // A full batch's header is written in front of its records when sealed, so
                // that its records become the batch's bytes without a copy.
                self.batch.room_for_header(&self.header, self.per_batch);
                // Room for the whole batch at once, by the size of these records: growing
                // it a doubling at a time would copy it and touch fresh pages each time.
                let per_record = checked.records.bytes_len() / checked.records.len().max(1);
                // At most a batch's limit: a batch beyond it is refused when sealed.
                let bytes = self
                    .per_batch
                    .saturating_mul(per_record + per_record / 8)
                    .min(protocol::batch::BATCH_BYTES_MAX);
                self.batch.reserve(self.per_batch, bytes);
            }
            self.batch.push_from(&checked.records, index);
            if self.batch.len() >= self.per_batch {
                self.seal()?;
            }
        }
        IngestProgress::add(&self.progress.rows_checked, self_rows);
        self.progress
            .records
            .store(self.report.records, Ordering::Relaxed);
        Ok(())
    }

    /// Gives the batch filled to the sealing thread, once the one sealed before is handed on.
    fn seal(&mut self) -> Result<(), IngestError> {
        self.hand_sealed()?;
        let full = std::mem::replace(&mut self.batch, std::mem::take(&mut self.spare));
        self.sealer.sealing = Some(full.len() as u64);
        self.sealer
            .batches
            .send(full)
            .expect("the sealing thread takes batches until the collector ends");
        Ok(())
    }

    /// Waits for the batch being sealed, if any, and hands it to the sink.
    fn hand_sealed(&mut self) -> Result<(), IngestError> {
        let Some(count) = self.sealer.sealing.take() else {
            return Ok(());
        };
        self.progress.set_phase(Phase::Sealing);
        // It ends only by panicking while this waits; the scope then raises the panic.
        let (signed, spare) = self
            .sealer
            .sealed
            .recv()
            .expect("the sealing thread answers every batch");
        self.spare = spare;
        let signed = signed.map_err(|source| IngestError::Build {
            path: self.path.to_owned(),
            source,
        })?;
        IngestProgress::add(&self.progress.batches_sealed, 1);
        let summary = BatchSummary {
            id: signed.id,
            records: count,
            bytes: signed.bytes.len() as u64,
        };
        self.progress.set_phase(Phase::Handing);
        if let Err(source) = (self.sink)(signed) {
            self.report.rejected.sort_by_key(|r| r.line);
            return Err(IngestError::Sink {
                path: self.path.to_owned(),
                batch: summary.id,
                source,
                report: Box::new(std::mem::take(&mut self.report)),
            });
        }
        self.report.batches.push(summary);
        IngestProgress::add(&self.progress.batches_handed, 1);
        self.progress.set_phase(Phase::Reading);
        Ok(())
    }

    fn finish(mut self) -> Result<IngestReport, IngestError> {
        if !self.batch.is_empty() {
            self.seal()?;
        }
        self.hand_sealed()?;
        // Rows of the wrong width were refused as read, the others as checked and
        // duplicate keys as merged: merge by line.
        self.report.rejected.sort_by_key(|r| r.line);
        self.progress.set_phase(Phase::Done);
        Ok(self.report)
    }
}

/// Seals `records` (at most [`BATCH_RECORDS_MAX`], keys unique) into one batch; the batch
/// sorts them by key, so the same records always give the same batch.
pub fn seal_batch(
    records: Vec<Record>,
    options: &IngestOptions<'_>,
) -> Result<SignedBatch, BuildError> {
    let batch = Batch::new(batch_header(options), records)?;
    SignedBatch::seal(&batch, options.node_key)
}

/// The header of every batch ingestion makes with `options`.
fn batch_header(options: &IngestOptions<'_>) -> BatchHeader {
    BatchHeader {
        format: BATCH_FORMAT,
        origin: options.origin,
        category: options.schema.category.clone(),
        schema_version: options.schema.version,
        period: options.period,
        supersedes: None,
        withdrawals: Vec::new(),
    }
}

/// Rows read and waiting to be checked, the cells of all of them in one buffer.
#[derive(Default)]
struct Chunk {
    /// The bytes of every row ([`Row::as_slice`]), back to back (checked as UTF-8 once, as
    /// read).
    cells: String,
    /// Where each cell starts and ends in its row's bytes ([`Row::ranges`], as they are).
    cell_ranges: Vec<(usize, usize)>,
    /// Each row's line, where its bytes start in `cells`, and where its cells end in
    /// `cell_ranges`.
    rows: Vec<(u64, usize, usize)>,
    /// Data rows read into this chunk, refused ones included.
    rows_read: u64,
    /// Rows refused as read (wrong width, bytes not valid in the encoding), then as
    /// validated.
    refused: Vec<RowProblems>,
    /// What checking gives ([`check_chunk`]): the accepted rows' records, in file order.
    records: EncodedRecords,
    /// The [`KeyIndex`] fingerprint of each record's key.
    fingerprints: Vec<u64>,
    /// The line of each record of `records`.
    lines: Vec<u64>,
    /// The warnings of the records that have any, by their place in `records`, in order (most
    /// have none: a line each is all that most records carry to the merge).
    warned: Vec<(usize, Vec<Problem>)>,
}

impl Chunk {
    /// Empties it, keeping its memory.
    fn clear(&mut self) {
        self.cells.clear();
        self.cell_ranges.clear();
        self.rows.clear();
        self.rows_read = 0;
        self.refused.clear();
        self.records.clear();
        self.fingerprints.clear();
        self.lines.clear();
        self.warned.clear();
    }

    /// Adds `row`, whose bytes are `text`.
    fn push(&mut self, line: u64, row: &Row, text: &str) {
        let base = self.cells.len();
        self.cells.push_str(text);
        self.cell_ranges.extend_from_slice(row.ranges());
        self.rows.push((line, base, self.cell_ranges.len()));
    }
}

/// Validates, normalizes and desensitizes the rows of a chunk (each as wide as the header),
/// writing the records in their encoding.
fn check_chunk(
    path: &Path,
    chunk: &mut Chunk,
    columns: &[Option<usize>],
    options: &IngestOptions<'_>,
    fingerprinter: &Fingerprinter,
) -> Result<(), IngestError> {
    let Chunk {
        cells,
        cell_ranges,
        rows,
        refused,
        records,
        fingerprints,
        lines,
        warned,
        ..
    } = chunk;
    let mut raw: Vec<Option<&str>> = Vec::with_capacity(columns.len());
    let mut staging = Staging::new();
    let text = cells.as_str();
    // Where the row's cell ranges start.
    let mut ranges_start = 0;
    for &(line, base, ranges_end) in rows.iter() {
        let ranges = &cell_ranges[ranges_start..ranges_end];
        ranges_start = ranges_end;
        raw.clear();
        for column in columns {
            raw.push(match *column {
                None => None,
                Some(c) => {
                    let (start, end) = ranges[c];
                    // Cells start and end on character boundaries (checked as read).
                    let cell =
                        text.get(base + start..base + end)
                            .ok_or_else(|| IngestError::Csv {
                                path: path.to_owned(),
                                line,
                                message: format!("field {} is not valid UTF-8", c + 1),
                            })?;
                    Some(cell)
                }
            });
        }
        match options.schema.validate_encoded(
            &raw,
            options.period,
            options.desensitize_key,
            &mut staging,
            records,
        ) {
            Err(problems) => refused.push(RowProblems { line, problems }),
            Ok(warnings) => {
                let key = records.key(records.len() - 1);
                fingerprints.push(fingerprinter.of(key));
                if !warnings.is_empty() {
                    warned.push((lines.len(), warnings));
                }
                lines.push(line);
            }
        }
    }
    Ok(())
}

/// Record keys already accepted from this file, to refuse a later row with the same key
/// naming the line of the first, exactly and in bounded memory.
///
/// Each key is appended to a log (`line` as 4 bytes, length as 2, key bytes, padded to 4
/// bytes: 24 bytes for an 18-byte key; in memory
/// up to [`KEY_LOG_MEMORY_BYTES`], then in an unlinked temporary file) and indexed by a
/// 32-bit fingerprint (foldhash of the key under a seed drawn per run, so no file can be made
/// to collide on purpose): 65,536 buckets, by 16 bits of the fingerprint,
/// each a sorted `Vec<[u16; 3]>` of (16 more fingerprint bits, log offset / 4) — 6 bytes a
/// key, plus at most an eighth spare (eight entries in a small bucket). A fingerprint match
/// is only a candidate: the key is read back from the log and compared, so two keys that
/// share a fingerprint are never taken for duplicates (the fingerprint's width only decides how often the log is read: at 10
/// million keys, for about one row in 400).
///
/// Exports are usually sorted by key (by account number): while every key has come in
/// strictly increasing order, a new key greater than the last cannot repeat any earlier one,
/// so it is only logged, and the buckets (two cache misses a key) are left empty. The first
/// key out of order builds them from the log, once, and from then on every key goes
/// through them.
struct KeyIndex {
    buckets: Vec<Vec<[u16; 3]>>,
    log: KeyLog,
    /// The last key, while every key so far came in strictly increasing order; `None` once
    /// the buckets are built.
    sorted_last: Option<Vec<u8>>,
    /// The fingerprint the keys are given by (the buckets are built from the log with it).
    fingerprint: FingerprintFn,
}

/// How a [`KeyIndex`] fingerprints a key: [`Fingerprinter::of`] (a fixed function in tests).
type FingerprintFn = Box<dyn Fn(&[u8]) -> u64 + Send>;

/// The fingerprint of a record key in the [`KeyIndex`]: foldhash (its `quality` variant,
/// whose last mixing spreads every bit) under a seed drawn per run. A cryptographic hash would
/// cost more than the rest of the row's merge, and SipHash cost a fifth of it: the
/// fingerprint only has to spread keys, and the random seed keeps a file from choosing
/// collisions (which would cost time, never correctness). The workers compute it, off the
/// merging thread.
#[derive(Clone, Default)]
struct Fingerprinter(foldhash::quality::RandomState);

impl Fingerprinter {
    fn of(&self, key: &[u8]) -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = self.0.build_hasher();
        hasher.write(key);
        hasher.finish()
    }
}

/// Keys held in memory before the log moves to a temporary file.
pub const KEY_LOG_MEMORY_BYTES: usize = 4 * 1024 * 1024;
/// Largest key log: offsets are kept in units of 4 bytes in 32 bits.
const KEY_LOG_BYTES_MAX: u64 = 4 << 32;

impl KeyIndex {
    /// An empty index; `fingerprint` is the function the keys' fingerprints given to
    /// [`KeyIndex::insert_fingerprinted`] come from.
    fn new(fingerprint: FingerprintFn) -> KeyIndex {
        KeyIndex {
            buckets: Vec::new(),
            log: KeyLog {
                memory_max: KEY_LOG_MEMORY_BYTES,
                ..KeyLog::default()
            },
            // Every key is longer than this (an empty record key is refused).
            sorted_last: Some(Vec::new()),
            fingerprint,
        }
    }

    /// Keys [`KeyIndex::warm`] takes at a time: enough memory reads in flight to hide
    /// their latency, few enough that what they bring stays cached until it is used.
    const WARM_GROUP: usize = 32;

    /// Reads, and so brings into the cache, what inserting keys of these `fingerprints`
    /// will read: each one's bucket, then the bucket's entries. An insert otherwise waits on
    /// two cache misses in turn (the buckets are spread over memory; measured: 86 % of an
    /// insert's time), while these reads do not depend on each other, so the processor
    /// overlaps them: the index's share of a 200 MB ingest fell from 520 profile samples
    /// to 234 (warming included). Correctness does not depend on it; only speed.
    fn warm(&self, fingerprints: &[u64]) {
        // No buckets while the keys are in order (they are built when order is given up).
        if self.sorted_last.is_some() {
            return;
        }
        let bucket = |fingerprint: &u64| &self.buckets[(fingerprint >> 48) as usize];
        let mut seen = 0usize;
        for fingerprint in fingerprints {
            seen ^= bucket(fingerprint).len();
        }
        for fingerprint in fingerprints {
            let entries = bucket(fingerprint);
            for entry in [
                entries.first(),
                entries.get(entries.len() / 2),
                entries.last(),
            ]
            .into_iter()
            .flatten()
            {
                seen ^= usize::from(entry[0]);
            }
        }
        std::hint::black_box(seen);
    }

    /// Adds `key`, of [`Fingerprinter::of`] `fingerprint`, first given on `line`; if it
    /// was given before, adds nothing and returns that earlier line.
    fn insert_fingerprinted(
        &mut self,
        key: &[u8],
        fingerprint: u64,
        line: u64,
    ) -> io::Result<Option<u64>> {
        if let Some(last) = &mut self.sorted_last {
            if key > last.as_slice() {
                self.log.append(key, line)?;
                last.clear();
                last.extend_from_slice(key);
                return Ok(None);
            }
            // Built before the order is given up, so a failed read leaves the index as it was.
            self.build_buckets()?;
            self.sorted_last = None;
        }
        let bucket = &mut self.buckets[(fingerprint >> 48) as usize];
        let tag = (fingerprint >> 32) as u16;
        let mut at = bucket.partition_point(|e| e[0] < tag);
        while let Some(&[entry_tag, high, low]) = bucket.get(at) {
            if entry_tag != tag {
                break;
            }
            let offset = 4 * (u64::from(high) << 16 | u64::from(low));
            let (earlier_line, earlier_key) = self.log.read(offset)?;
            if earlier_key == key {
                return Ok(Some(earlier_line));
            }
            at += 1;
        }
        let offset = self.log.append(key, line)?;
        if bucket.len() == bucket.capacity() {
            bucket.reserve_exact((bucket.len() / 8).max(8));
        }
        // After the entries of the same tag, which have smaller offsets: still sorted.
        bucket.insert(at, entry(fingerprint, offset));
        Ok(None)
    }

    /// The buckets of every key logged so far (all distinct: they came in increasing order).
    fn build_buckets(&mut self) -> io::Result<()> {
        let mut buckets = vec![Vec::new(); 1 << 16];
        self.log.for_each(|offset, key| {
            let fingerprint = (self.fingerprint)(key);
            let bucket: &mut Vec<[u16; 3]> = &mut buckets[(fingerprint >> 48) as usize];
            bucket.push(entry(fingerprint, offset));
        })?;
        // Pushed in log order: a stable sort by tag keeps a tag's entries by offset.
        for bucket in &mut buckets {
            bucket.sort_by_key(|entry| entry[0]);
        }
        self.buckets = buckets;
        Ok(())
    }
}

/// A bucket's entry for a key of `fingerprint` logged at `offset`: 16 bits of the
/// fingerprint (the tag), the offset in units of 4 bytes.
fn entry(fingerprint: u64, offset: u64) -> [u16; 3] {
    let unit = offset / 4;
    [(fingerprint >> 32) as u16, (unit >> 16) as u16, unit as u16]
}

/// Append-only (line, key) entries, the newest in memory, the older ones in a temporary
/// file made on the first spill (unlinked at once, so nothing is left behind). An entry is
/// the line (`u32`, little-endian), the key's length (`u16`), the key, zeros to a multiple of
/// 4 bytes. A sorted export logs every key though it never reads them back, and the spill's
/// writes cost system time: the entry is as small as it can be and stay aligned.
///
/// The file takes whole 4 KiB blocks of the log with direct IO where its filesystem allows
/// (`store::file::DirectAppend`; the rest of a block stays in memory for the next spill):
/// written through the page cache, a 2 GB export's 200 MB of keys cost a tenth of its CPU
/// here, most of it filling fresh pages. Direct IO is turned off before the file is first
/// read (reads are not aligned).
#[derive(Default)]
struct KeyLog {
    file: Option<std::fs::File>,
    /// Bytes in the file; `memory` continues from there.
    file_len: u64,
    memory: Vec<u8>,
    /// Bytes kept in `memory` before it moves to the file.
    memory_max: usize,
    direct: Mutex<DirectAppend>,
}

impl KeyLog {
    fn append(&mut self, key: &[u8], line: u64) -> io::Result<u64> {
        if self.memory.len() + ENTRY_HEAD + 3 + key.len() > self.memory_max {
            self.spill()?;
        }
        let offset = self.file_len + self.memory.len() as u64;
        if offset >= KEY_LOG_BYTES_MAX {
            return Err(io::Error::other(
                "more than 16 GiB of record keys: split the file",
            ));
        }
        // Keys are at most `RECORD_KEY_BYTES_MAX` (512) bytes, and no line of a file of at most
        // `FILE_BYTES_MAX` (4 GiB) that starts a record is past `u32::MAX`.
        let len = u16::try_from(key.len()).map_err(|_| io::Error::other("key too long"))?;
        let line = u32::try_from(line).map_err(|_| {
            io::Error::other(format!(
                "a record on line {line}: lines past {} are not indexed, split the file",
                u32::MAX
            ))
        })?;
        self.memory.extend_from_slice(&line.to_le_bytes());
        self.memory.extend_from_slice(&len.to_le_bytes());
        self.memory.extend_from_slice(key);
        // Entries start at multiples of 4 (the index keeps offsets / 4).
        self.memory.resize(self.memory.len().next_multiple_of(4), 0);
        Ok(offset)
    }

    /// Moves `memory` to the file: its whole blocks with direct IO where the file takes it
    /// (the rest stays), else all of it through the page cache.
    fn spill(&mut self) -> io::Result<()> {
        let direct = self.direct.get_mut().expect("never poisoned");
        let file = match &mut self.file {
            Some(file) => file,
            None => {
                let file = self.file.insert(tempfile::tempfile()?);
                *direct = DirectAppend::start(file);
                file
            }
        };
        match direct.write_at(file, &self.memory, self.file_len)? {
            Some(written) => {
                self.file_len += written as u64;
                self.memory.drain(..written);
            }
            None => {
                write_all_at(file, &self.memory, self.file_len)?;
                self.file_len += self.memory.len() as u64;
                self.memory.clear();
            }
        }
        Ok(())
    }

    /// The file, to be read at any place: direct IO is turned off first.
    fn readable(&self) -> Option<&std::fs::File> {
        let file = self.file.as_ref()?;
        self.direct.lock().expect("never poisoned").stop(file);
        Some(file)
    }

    /// Calls `f` with the offset and key of every entry, in log order: the file's, read
    /// through once, then memory's.
    fn for_each(&self, mut f: impl FnMut(u64, &[u8])) -> io::Result<()> {
        let mut each_in = |bytes: &[u8], base: u64| -> usize {
            // Whole entries in `bytes`; returns the bytes they take.
            let mut at = 0;
            while let Some(head) = bytes.get(at..at + ENTRY_HEAD) {
                let (_, len) = entry_head(head);
                let Some(key) = bytes.get(at + ENTRY_HEAD..at + ENTRY_HEAD + len) else {
                    break;
                };
                f(base + at as u64, key);
                at = (at + ENTRY_HEAD + len).next_multiple_of(4);
            }
            at
        };
        // The file's last bytes may begin an entry that ends in memory (the file holds whole
        // blocks): they are carried over, ahead of memory's.
        let mut carried = Vec::new();
        let mut memory_from = self.file_len;
        if let Some(file) = self.readable() {
            // Read in blocks; an entry cut by a block's end is read again with the next.
            let mut block = vec![0u8; 1 << 20];
            let mut offset = 0;
            while offset < self.file_len {
                let n = block.len().min((self.file_len - offset) as usize);
                read_exact_at(file, &mut block[..n], offset)?;
                let used = each_in(&block[..n], offset);
                if offset + n as u64 == self.file_len {
                    carried.extend_from_slice(&block[used..n]);
                    memory_from = offset + used as u64;
                    break;
                }
                if used == 0 {
                    // An entry longer than the block: a key is at most a few hundred bytes.
                    return Err(io::Error::other("a key log entry longer than its block"));
                }
                offset += used as u64;
            }
        }
        if carried.is_empty() {
            each_in(&self.memory, self.file_len);
        } else {
            carried.extend_from_slice(&self.memory);
            each_in(&carried, memory_from);
        }
        Ok(())
    }

    fn read(&self, offset: u64) -> io::Result<(u64, Vec<u8>)> {
        let mut head = [0u8; ENTRY_HEAD];
        self.read_at(&mut head, offset)?;
        let (line, len) = entry_head(&head);
        let mut key = vec![0; len];
        self.read_at(&mut key, offset + ENTRY_HEAD as u64)?;
        Ok((line, key))
    }

    /// The log's bytes at `offset`: from the file, from memory, or both (the file holds whole
    /// blocks, so an entry may begin in it and end in memory).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let in_file = usize::try_from(self.file_len.saturating_sub(offset))
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let (head, rest) = buf.split_at_mut(in_file);
        if !head.is_empty() {
            let file = self
                .readable()
                .expect("offsets below file_len are in the file");
            read_exact_at(file, head, offset)?;
        }
        if !rest.is_empty() {
            let at = (offset + in_file as u64 - self.file_len) as usize;
            rest.copy_from_slice(&self.memory[at..at + rest.len()]);
        }
        Ok(())
    }
}

/// Bytes of a [`KeyLog`] entry before its key: the line (4), the key's length (2).
const ENTRY_HEAD: usize = 6;

/// The line and the key's length an entry's head holds.
fn entry_head(head: &[u8]) -> (u64, usize) {
    let line = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
    let len = u16::from_le_bytes(head[4..6].try_into().expect("2 bytes"));
    (u64::from(line), usize::from(len))
}

#[cfg(unix)]
fn read_exact_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(unix)]
fn write_all_at(file: &std::fs::File, buf: &[u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
}

#[cfg(not(unix))]
fn write_all_at(file: &std::fs::File, buf: &[u8], offset: u64) -> io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let mut file = file;
    file.seek(SeekFrom::Start(offset))?;
    file.write_all(buf)
}

#[cfg(not(unix))]
fn read_exact_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    use std::io::{Seek, SeekFrom};
    let mut file = file;
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(buf)?;
    file.seek(SeekFrom::End(0))?;
    Ok(())
}

/// The raw input, counting the bytes read into the progress.
struct Counted<'p, R> {
    inner: R,
    progress: &'p IngestProgress,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        IngestProgress::add(&self.progress.bytes_read, n as u64);
        Ok(n)
    }
}

/// The file as a stream of UTF-8 bytes: UTF-8 (BOM stripped) or GBK decoded as read.
///
/// A UTF-8 file is judged by its first [`ENCODING_PREFIX_BYTES`]: one whose lines there are
/// mostly not UTF-8 is refused whole with a hint (the wrong encoding, not damage); otherwise
/// any row whose bytes are not UTF-8 is refused alone ([`row_text`]). Under GBK, bytes that
/// are not GBK decode to U+FFFD (which GBK cannot encode), and rows holding one are refused.
fn open_text<'r, R: Read + Send + 'r>(
    path: &Path,
    mut input: R,
    encoding: Encoding,
) -> Result<Box<dyn Read + Send + 'r>, IngestError> {
    let mut prefix = Vec::new();
    (&mut input)
        .take(ENCODING_PREFIX_BYTES as u64)
        .read_to_end(&mut prefix)
        .map_err(|source| IngestError::Read {
            path: path.to_owned(),
            source,
        })?;
    match encoding {
        Encoding::Utf8 => {
            let bom = if prefix.starts_with(b"\xEF\xBB\xBF") {
                3
            } else {
                0
            };
            check_utf8_prefix(path, &prefix, bom, prefix.len() == ENCODING_PREFIX_BYTES)?;
            prefix.drain(..bom);
            Ok(Box::new(io::Cursor::new(prefix).chain(input)))
        }
        Encoding::Gbk => Ok(Box::new(GbkReader::new(
            io::Cursor::new(prefix).chain(input),
        ))),
    }
}

/// Refuses a file whose start is mostly not UTF-8: [`IngestError::LooksLikeGbk`] if it decodes
/// as GBK, else [`IngestError::UnknownEncoding`], at the line of the first bad byte. `cut`:
/// the prefix stops inside the file (its last, maybe partial, line is not judged).
fn check_utf8_prefix(path: &Path, prefix: &[u8], bom: usize, cut: bool) -> Result<(), IngestError> {
    let mut body = &prefix[bom..];
    if cut && let Some(end) = body.iter().rposition(|b| *b == b'\n') {
        body = &body[..=end];
    }
    // The fast check first (a megabyte, before any row is read); the standard one only to
    // say where the first bad byte is.
    if simdutf8::basic::from_utf8(body).is_ok() {
        return Ok(());
    }
    let Err(e) = std::str::from_utf8(body) else {
        return Ok(());
    };
    // Mostly UTF-8 (more lines with valid non-ASCII text than lines that are not UTF-8):
    // damage in a UTF-8 file, refused row by row.
    let (mut valid, mut invalid) = (0u64, 0u64);
    for line in body.split(|b| *b == b'\n') {
        if line.is_ascii() {
            continue;
        }
        match std::str::from_utf8(line) {
            Ok(_) => valid += 1,
            Err(_) => invalid += 1,
        }
    }
    if valid > invalid {
        return Ok(());
    }
    let offset = bom + e.valid_up_to();
    let line = 1 + count_newlines(&prefix[..offset]);
    let (_, had_errors) = encoding_rs::GBK.decode_without_bom_handling(body);
    Err(if had_errors {
        IngestError::UnknownEncoding {
            path: path.to_owned(),
            line,
        }
    } else {
        IngestError::LooksLikeGbk {
            path: path.to_owned(),
            line,
        }
    })
}

/// GBK bytes decoded to UTF-8 as they are read.
struct GbkReader<R> {
    inner: R,
    decoder: encoding_rs::Decoder,
    input: Vec<u8>,
    /// Unread input is `input[start..end]`.
    start: usize,
    end: usize,
    input_done: bool,
    /// The decoder has had its last call.
    finished: bool,
    decoded: Vec<u8>,
    /// Undelivered output is `decoded[out_start..out_end]`.
    out_start: usize,
    out_end: usize,
}

impl<R: Read> GbkReader<R> {
    fn new(inner: R) -> GbkReader<R> {
        GbkReader {
            inner,
            decoder: encoding_rs::GBK.new_decoder_without_bom_handling(),
            input: vec![0; 64 * 1024],
            start: 0,
            end: 0,
            input_done: false,
            finished: false,
            decoded: vec![0; 128 * 1024],
            out_start: 0,
            out_end: 0,
        }
    }
}

impl<R: Read> Read for GbkReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.out_start < self.out_end {
                let n = buf.len().min(self.out_end - self.out_start);
                buf[..n].copy_from_slice(&self.decoded[self.out_start..self.out_start + n]);
                self.out_start += n;
                return Ok(n);
            }
            if self.finished {
                return Ok(0);
            }
            if self.start == self.end && !self.input_done {
                let n = self.inner.read(&mut self.input)?;
                (self.start, self.end) = (0, n);
                self.input_done = n == 0;
            }
            let last = self.input_done;
            let (result, read, written, _) = self.decoder.decode_to_utf8(
                &self.input[self.start..self.end],
                &mut self.decoded,
                last,
            );
            self.start += read;
            (self.out_start, self.out_end) = (0, written);
            if last && result == encoding_rs::CoderResult::InputEmpty {
                self.finished = true;
            }
        }
    }
}

/// The text of `row`'s cells, back to back, if its bytes are valid in the file's encoding
/// (and no cell starts inside a character); else why the row is refused.
fn row_text(row: &Row, encoding: Encoding) -> Result<&str, String> {
    // Fast path: the whole row is UTF-8 and no cell starts inside a character (none can
    // when each follows an ASCII byte). Nor ends in one, then: a cell ends where the next
    // starts, or at an ASCII byte, or at the end.
    let all = row.as_slice();
    let text = simdutf8::basic::from_utf8(all).ok();
    let bad_field = match (encoding, text) {
        (Encoding::Utf8, Some(text))
            if row.cells_follow_ascii()
                || row
                    .ranges()
                    .iter()
                    .all(|&(start, _)| text.is_char_boundary(start)) =>
        {
            return Ok(text);
        }
        (Encoding::Utf8, _) => row
            .iter()
            .position(|cell| std::str::from_utf8(cell).is_err())
            // Each cell UTF-8 but the row not: cannot be (the bytes between cells are
            // ASCII).
            .unwrap_or(0),
        // Decoded from GBK: always UTF-8; what was not GBK became U+FFFD.
        (Encoding::Gbk, text) => match row
            .iter()
            .position(|cell| cell.windows(3).any(|w| w == "\u{fffd}".as_bytes()))
        {
            None => {
                return text.ok_or_else(|| "the row is not valid UTF-8 after decoding".to_owned());
            }
            Some(field) => field,
        },
    };
    let name = match encoding {
        Encoding::Utf8 => "UTF-8",
        Encoding::Gbk => "GBK",
    };
    Err(format!(
        "column {} holds bytes that are not valid {name}: the row is refused (the rest of the file is read); correct the cell in the source and submit the row again",
        bad_field + 1
    ))
}

/// Whether every cell of a row is empty after trimming; `Err(field)` if a cell is not UTF-8.
fn is_blank(row: &Row) -> Result<bool, usize> {
    // Trimming keeps a visible ASCII character, and nearly every row has a cell starting
    // with one: look for that before decoding any cell.
    if row
        .iter()
        .any(|cell| cell.first().is_some_and(u8::is_ascii_graphic))
    {
        return Ok(false);
    }
    for (index, cell) in row.iter().enumerate() {
        let text = std::str::from_utf8(cell).map_err(|_| index)?;
        if !protocol::schema::trim_value(text).is_empty() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The number of `\n` bytes, counted 32 at a time into a byte (which compiles to vector
/// code): this runs over the whole file.
fn count_newlines(bytes: &[u8]) -> u64 {
    let mut chunks = bytes.chunks_exact(32);
    let mut count = 0;
    for chunk in &mut chunks {
        count += u64::from(chunk.iter().map(|&b| u8::from(b == b'\n')).sum::<u8>());
    }
    count + chunks.remainder().iter().filter(|&&b| b == b'\n').count() as u64
}

fn file_problem(rule: Rule, message: String) -> Problem {
    Problem {
        field: "(row)".to_owned(),
        label: String::new(),
        value: String::new(),
        rule,
        severity: Severity::Error,
        message,
    }
}

fn csv_error(path: &Path, error: &csv::Error) -> IngestError {
    IngestError::Csv {
        path: path.to_owned(),
        line: error.position().map_or(0, |p| p.line()),
        message: error.to_string(),
    }
}

/// For each schema field, the column holding it; and the header cells that name no field.
fn map_header(
    path: &Path,
    schema: &Schema,
    header: &csv::StringRecord,
) -> Result<(Vec<Option<usize>>, Vec<String>), IngestError> {
    let header_error = |message: String| IngestError::Header {
        path: path.to_owned(),
        message,
    };
    let mut columns: Vec<Option<usize>> = vec![None; schema.fields.len()];
    let mut ignored = Vec::new();
    for (column, name) in header.iter().enumerate() {
        match schema.field_by_header(name) {
            None => ignored.push(name.to_owned()),
            Some(field) => {
                if let Some(earlier) = columns[field] {
                    return Err(header_error(format!(
                        "columns {} and {} both give field {} ({}): remove one",
                        earlier + 1,
                        column + 1,
                        schema.fields[field].name,
                        schema.fields[field].label
                    )));
                }
                columns[field] = Some(column);
            }
        }
    }
    let missing: Vec<String> = schema
        .fields
        .iter()
        .zip(&columns)
        .filter(|(f, c)| c.is_none() && f.required == Required::Always)
        .map(|(f, _)| format!("{} ({})", f.label, f.name))
        .collect();
    if !missing.is_empty() {
        return Err(header_error(format!(
            "the header lacks required columns of {}: {}. The header has: {}",
            schema.category,
            missing.join(", "),
            header.iter().collect::<Vec<_>>().join(", ")
        )));
    }
    Ok((columns, ignored))
}

/// A field that is not UTF-8 (which decoding the whole text first rules out).
fn not_utf8(path: &Path, line: u64, field: usize) -> IngestError {
    IngestError::Csv {
        path: path.to_owned(),
        line,
        message: format!("field {} is not valid UTF-8", field + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The log keeps a line as 4 bytes: the largest it can hold reads back as written, the
    /// next is refused with what to do, and the log is left as it was.
    #[test]
    fn key_log_refuses_a_line_it_cannot_hold() {
        let mut log = KeyLog {
            memory_max: 1024,
            ..KeyLog::default()
        };
        let last = u64::from(u32::MAX);
        assert_eq!(log.append(b"first", last).unwrap(), 0);
        let error = log.append(b"second", last + 1).unwrap_err();
        assert!(error.to_string().contains("split the file"), "{error}");
        assert_eq!(log.read(0).unwrap(), (last, b"first".to_vec()));
        let mut keys = Vec::new();
        log.for_each(|offset, key| keys.push((offset, key.to_vec())))
            .unwrap();
        assert_eq!(keys, [(0, b"first".to_vec())]);
    }

    /// The log's file takes whole blocks with direct IO (where the filesystem allows; the
    /// rest waits in memory), and every entry reads back at its offset, from the file and
    /// from memory, before and after the first read turns direct IO off and later entries go
    /// through the page cache.
    #[test]
    fn key_log_spills_whole_blocks_and_reads_back_every_entry() {
        let mut log = KeyLog {
            memory_max: 64,
            ..KeyLog::default()
        };
        let key = |n: u64| format!("ACCOUNT-{n:06}|2022-05").into_bytes();
        let mut offsets = Vec::new();
        for n in 0..1000 {
            offsets.push(log.append(&key(n), n + 2).unwrap());
        }
        let direct = log.direct.lock().unwrap().on();
        if direct {
            // 1,000 entries of 28 bytes (6 of head, 22 of key): six whole blocks in the
            // file, entry 877 (bytes 24,556..24,584) cut by the last one's end, the rest in
            // memory.
            assert_eq!(log.file_len, 6 * 4096);
            assert_eq!(log.memory.len(), 28_000 - 6 * 4096);
        }
        let check = |log: &KeyLog, offsets: &[u64]| {
            for (n, &offset) in offsets.iter().enumerate() {
                let n = n as u64;
                assert_eq!(log.read(offset).unwrap(), (n + 2, key(n)), "entry {n}");
            }
            let mut seen = Vec::new();
            log.for_each(|offset, key| seen.push((offset, key.to_vec())))
                .unwrap();
            let expected: Vec<(u64, Vec<u8>)> = offsets
                .iter()
                .enumerate()
                .map(|(n, &offset)| (offset, key(n as u64)))
                .collect();
            assert!(seen == expected, "for_each gives every entry in order");
        };
        check(&log, &offsets);
        assert!(!log.direct.lock().unwrap().on(), "read: direct IO is off");
        for n in 1000..1500 {
            offsets.push(log.append(&key(n), n + 2).unwrap());
        }
        assert!(!direct || log.file_len > 6 * 4096 && !log.file_len.is_multiple_of(4096));
        check(&log, &offsets);
    }

    /// Keys that share a fingerprint are told apart by the keys themselves, whether the
    /// earlier one is still in memory or already in the temporary file; and whether the keys
    /// came in increasing order (only logged until the first out of order, which builds the
    /// buckets from the log), decreasing, or shuffled.
    #[test]
    fn key_index_is_exact_under_fingerprint_collisions_and_after_spilling() {
        let fingerprints: [fn(&[u8]) -> u64; 3] = [
            |_| 42,
            |key| key.len() as u64,
            // Spread as the real one (SipHash, under fixed keys here).
            |key| {
                use std::hash::Hasher;
                let mut hasher = std::hash::DefaultHasher::new();
                hasher.write(key);
                hasher.finish()
            },
        ];
        let orders: [fn(&mut Vec<u64>); 3] = [
            |_| {},
            |lines| lines.reverse(),
            // A fixed shuffle: stride 7 over 398 lines (coprime).
            |lines| {
                *lines = (0..lines.len())
                    .map(|i| lines[i * 7 % lines.len()])
                    .collect()
            },
        ];
        for fingerprint in fingerprints {
            for (order_index, order) in orders.iter().enumerate() {
                let mut index = KeyIndex::new(Box::new(fingerprint));
                let insert = |index: &mut KeyIndex, key: &[u8], line| {
                    index.insert_fingerprinted(key, fingerprint(key), line)
                };
                index.log.memory_max = 64;
                let mut lines: Vec<u64> = (2..400).collect();
                order(&mut lines);
                for &line in &lines {
                    let key = format!("AC{line:05}|2022-05");
                    assert_eq!(
                        insert(&mut index, key.as_bytes(), line).unwrap(),
                        None,
                        "{key} is new (order {order_index})"
                    );
                }
                assert!(index.log.file.is_some(), "the log spilled to its file");
                assert_eq!(
                    index.sorted_last.is_some(),
                    order_index == 0,
                    "only increasing keys leave the buckets unbuilt"
                );
                // The last key again, at once: not greater than the last, so it is looked up.
                let last = format!("AC{:05}|2022-05", lines[lines.len() - 1]);
                assert_eq!(
                    insert(&mut index, last.as_bytes(), 999).unwrap(),
                    Some(lines[lines.len() - 1]),
                    "{last} again at once (order {order_index})"
                );
                for line in [2u64, 150, 399] {
                    let key = format!("AC{line:05}|2022-05");
                    assert_eq!(
                        insert(&mut index, key.as_bytes(), 1000 + line).unwrap(),
                        Some(line),
                        "{key} again (order {order_index})"
                    );
                }
                assert_eq!(insert(&mut index, b"AC00400|2022-05", 500).unwrap(), None);
                assert_eq!(insert(&mut index, b"AC00001|2022-05", 501).unwrap(), None);
                assert_eq!(
                    insert(&mut index, b"AC00400|2022-05", 502).unwrap(),
                    Some(500)
                );
            }
        }
    }

    #[test]
    fn gbk_reader_decodes_across_reads() {
        let text = "企业名称,金额\n揭阳市榕江纺织有限公司,12.5\n".repeat(5000);
        let (gbk, _, _) = encoding_rs::GBK.encode(&text);
        let mut decoded = String::new();
        GbkReader::new(&gbk[..])
            .read_to_string(&mut decoded)
            .unwrap();
        assert_eq!(decoded, text);
    }
}
