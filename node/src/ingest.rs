//! Ingestion: a CSV export from a data-source unit becomes validated, desensitized, signed
//! batches.
//!
//! Real exports come from Excel and government systems: UTF-8 with or without a BOM, CRLF line
//! endings, quoted fields with commas and newlines, full-width spaces around values, or GBK.
//! One bad row never loses the good ones: each bad row is reported with its line, field and
//! reason, and the rest are batched. Problems of the file as a whole (unreadable, wrong
//! encoding, a header that lacks a required column) are errors that name the file and say
//! what to do.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError, mpsc};

use protocol::batch::{BATCH_FORMAT, BATCH_RECORDS_MAX, BatchHeader, BuildError};
use protocol::record::{Problem, Rule, Severity};
use protocol::schema::{Required, Schema};
use protocol::{Batch, DesensitizeKey, NodeId, NodeKey, Period, Record, SignedBatch};

/// Largest file `ingest_file` reads, in bytes.
pub const FILE_BYTES_MAX: u64 = 4 * 1024 * 1024 * 1024;
/// How often, in rows, progress is reported.
pub const PROGRESS_EVERY_ROWS: u64 = 10_000;

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

/// What ingestion made of a file.
#[derive(Debug)]
pub struct IngestReport {
    pub batches: Vec<SignedBatch>,
    /// Data rows read (not counting the header and blank lines).
    pub rows: u64,
    pub records: u64,
    /// Rows refused, each with every problem found.
    pub rejected: Vec<RowProblems>,
    /// Accepted rows that carry warnings.
    pub warnings: Vec<RowProblems>,
    /// Header columns that match no field and were ignored.
    pub ignored_columns: Vec<String>,
    /// Columns of fields the minimum-necessary profile leaves out, not read.
    pub left_out_columns: Vec<String>,
}

/// Why a file could not be ingested at all.
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
}

/// Reads and ingests a file. `progress` is called with the number of rows read so far.
pub fn ingest_file(
    path: &Path,
    options: &IngestOptions<'_>,
    progress: impl FnMut(u64),
) -> Result<IngestReport, IngestError> {
    let read = |source| IngestError::Read {
        path: path.to_owned(),
        source,
    };
    let bytes_len = std::fs::metadata(path).map_err(read)?.len();
    if bytes_len > FILE_BYTES_MAX {
        return Err(IngestError::TooLarge {
            path: path.to_owned(),
            bytes: bytes_len,
        });
    }
    let bytes = std::fs::read(path).map_err(read)?;
    ingest_bytes(path, &bytes, options, progress)
}

/// Ingests file contents already in memory; `path` is used in messages only.
///
/// The calling thread parses the CSV and hands rows, in chunks, to validation workers (one
/// per core): validation, normalization and desensitization are most of the work. Results
/// are merged in file order, so the report is the same as from one thread.
pub fn ingest_bytes(
    path: &Path,
    bytes: &[u8],
    options: &IngestOptions<'_>,
    mut progress: impl FnMut(u64),
) -> Result<IngestReport, IngestError> {
    let (text, damaged) = decode_text(path, bytes, options.encoding)?;
    let schema = options.schema;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(&text[..]);
    // One reused ByteRecord: `records()` allocates a StringRecord per row.
    let mut row = csv::ByteRecord::new();
    let read_row = |reader: &mut csv::Reader<&[u8]>, row: &mut csv::ByteRecord| {
        reader
            .read_byte_record(row)
            .map_err(|e| csv_error(path, &e))
    };
    if !read_row(&mut reader, &mut row)? {
        return Err(IngestError::Empty {
            path: path.to_owned(),
            category: schema.category.to_string(),
        });
    }
    let header = csv::StringRecord::from_byte_record(row.clone())
        .map_err(|e| not_utf8(path, row.position(), e.utf8_error().field()))?;
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

    let mut report = IngestReport {
        batches: Vec::new(),
        rows: 0,
        records: 0,
        rejected: Vec::new(),
        warnings: Vec::new(),
        ignored_columns,
        left_out_columns,
    };
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(WORKERS_MAX));
    // Bounded, so parsing runs at most a few chunks ahead of checking.
    let (chunk_sender, chunk_receiver) = mpsc::sync_channel::<(usize, Chunk)>(2 * workers);
    let chunk_receiver = Mutex::new(chunk_receiver);
    let (checked_sender, checked_receiver) = mpsc::channel();
    // If a worker panics, the scope re-raises the panic once every thread has ended, so
    // nothing below has to deal with chunks that never come back.
    let checked = std::thread::scope(|scope| -> Result<Vec<Checked>, IngestError> {
        for _ in 0..workers {
            let (chunk_receiver, checked_sender) = (&chunk_receiver, checked_sender.clone());
            let columns = &columns;
            scope.spawn(move || {
                loop {
                    // A worker that panicked holding the lock leaves nothing half-done in it.
                    let next = chunk_receiver
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .recv();
                    let Ok((index, chunk)) = next else { break };
                    let checked = check_chunk(path, &chunk, columns, options);
                    if checked_sender.send((index, checked)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(checked_sender);

        let mut chunks_sent = 0;
        let mut chunk = Chunk::default();
        let mut lines = LineCounter::default();
        while read_row(&mut reader, &mut row)? {
            let line = lines.line_at(&text, row.position().map_or(0, |p| p.byte() as usize));
            // A row with bytes its encoding does not allow is refused alone, at its line.
            if let Some(message) = damaged.row_problem(&row, options.encoding) {
                report.rows += 1;
                report.rejected.push(RowProblems {
                    line,
                    problems: vec![file_problem(Rule::Format, message)],
                });
                continue;
            }
            if is_blank(&row).map_err(|field| not_utf8(path, row.position(), field))? {
                continue; // blank lines and rows of empty cells, as Excel leaves at the end
            }
            report.rows += 1;
            if report.rows.is_multiple_of(PROGRESS_EVERY_ROWS) {
                progress(report.rows);
            }
            if row.len() != column_count {
                report.rejected.push(RowProblems {
                    line,
                    problems: vec![file_problem(
                        Rule::Format,
                        format!(
                            "the row has {} columns, the header has {column_count}: check for an unquoted comma or a missing cell",
                            row.len()
                        ),
                    )],
                });
                continue;
            }
            chunk.push(line, &row);
            if chunk.rows.len() == CHUNK_ROWS {
                let full = std::mem::take(&mut chunk);
                if chunk_sender.send((chunks_sent, full)).is_err() {
                    break; // every worker panicked
                }
                chunks_sent += 1;
            }
        }
        if !chunk.rows.is_empty() && chunk_sender.send((chunks_sent, chunk)).is_ok() {
            chunks_sent += 1;
        }
        drop(chunk_sender);
        // Back in file order.
        let mut checked: Vec<Option<Result<Checked, IngestError>>> = Vec::new();
        checked.resize_with(chunks_sent, || None);
        for (index, result) in checked_receiver {
            checked[index] = Some(result);
        }
        checked.into_iter().flatten().collect()
    })?;
    progress(report.rows);

    let mut accepted: Vec<(Record, u64)> =
        Vec::with_capacity(checked.iter().map(|c| c.accepted.len()).sum());
    for chunk in checked {
        accepted.extend(chunk.accepted);
        report.rejected.extend(chunk.rejected);
        report.warnings.extend(chunk.warnings);
    }
    let records = drop_duplicate_keys(accepted, &mut report);
    // Rows of the wrong width were rejected as read, the others as checked and duplicate
    // keys last: merge by line.
    report.rejected.sort_by_key(|r| r.line);
    report.records = records.len() as u64;
    report.batches = seal_batches(records, options).map_err(|source| IngestError::Build {
        path: path.to_owned(),
        source,
    })?;
    Ok(report)
}

/// Most validation workers: one parsing thread cannot keep more busy.
const WORKERS_MAX: usize = 8;
/// Rows handed to a worker at a time: enough that passing them costs nothing next to
/// checking them, few enough to spread a small file over the workers.
const CHUNK_ROWS: usize = 256;

/// Rows read and waiting to be checked, the cells of all of them in one buffer.
#[derive(Default)]
struct Chunk {
    /// The cells of every row, back to back.
    cells: Vec<u8>,
    /// Where each cell ends in `cells` (it starts where the one before ends).
    cell_ends: Vec<usize>,
    /// Each row's line, and where its cells end in `cell_ends`.
    rows: Vec<(u64, usize)>,
}

impl Chunk {
    fn push(&mut self, line: u64, row: &csv::ByteRecord) {
        let base = self.cells.len();
        self.cells.extend_from_slice(row.as_slice());
        self.cell_ends.extend(
            (0..row.len())
                .filter_map(|i| row.range(i))
                .map(|r| base + r.end),
        );
        self.rows.push((line, self.cell_ends.len()));
    }
}

/// What the checking of one chunk gave, its rows in file order.
struct Checked {
    accepted: Vec<(Record, u64)>,
    rejected: Vec<RowProblems>,
    warnings: Vec<RowProblems>,
}

/// Validates, normalizes and desensitizes the rows of a chunk (each as wide as the header).
fn check_chunk(
    path: &Path,
    chunk: &Chunk,
    columns: &[Option<usize>],
    options: &IngestOptions<'_>,
) -> Result<Checked, IngestError> {
    let mut checked = Checked {
        accepted: Vec::with_capacity(chunk.rows.len()),
        rejected: Vec::new(),
        warnings: Vec::new(),
    };
    let mut raw: Vec<Option<&str>> = Vec::with_capacity(columns.len());
    // Where the row's bytes and its cell ends start.
    let (mut row_start, mut ends_start) = (0, 0);
    for &(line, ends_end) in &chunk.rows {
        let ends = &chunk.cell_ends[ends_start..ends_end];
        ends_start = ends_end;
        let row_end = ends.last().copied().unwrap_or(row_start);
        // One UTF-8 check per row rather than per cell. It cannot fail (the whole text was
        // checked and the csv parser splits it at ASCII bytes only), but skipping it would
        // take unsafe code.
        let not_utf8 = |field| IngestError::Csv {
            path: path.to_owned(),
            line,
            message: format!("field {} is not valid UTF-8", field + 1),
        };
        let text =
            std::str::from_utf8(&chunk.cells[row_start..row_end]).map_err(|_| not_utf8(0))?;
        raw.clear();
        for column in columns {
            raw.push(match *column {
                None => None,
                Some(c) => {
                    let start = if c == 0 { row_start } else { ends[c - 1] };
                    let cell = text.get(start - row_start..ends[c] - row_start);
                    Some(cell.ok_or_else(|| not_utf8(c))?)
                }
            });
        }
        row_start = row_end;
        match options
            .schema
            .validate(&raw, options.period, options.desensitize_key)
        {
            Err(problems) => checked.rejected.push(RowProblems { line, problems }),
            Ok(validated) => {
                if !validated.warnings.is_empty() {
                    checked.warnings.push(RowProblems {
                        line,
                        problems: validated.warnings,
                    });
                }
                checked.accepted.push((validated.record, line));
            }
        }
    }
    Ok(checked)
}

/// Whether every cell of a row is empty after trimming; `Err(field)` if a cell is not UTF-8.
fn is_blank(row: &csv::ByteRecord) -> Result<bool, usize> {
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

/// Keeps the first row (by line) of each record key and rejects every later one, naming
/// the first line; a rejected row's warnings are not reported. Returns the records kept, in
/// key order.
fn drop_duplicate_keys(mut accepted: Vec<(Record, u64)>, report: &mut IngestReport) -> Vec<Record> {
    // Lines are unique, so this unstable sort puts each key's rows in line order.
    accepted
        .sort_unstable_by(|(a, a_line), (b, b_line)| a.key.cmp(&b.key).then(a_line.cmp(b_line)));
    let mut duplicate_lines = Vec::new();
    // In place: `later` is removed when it has the key of `first`, the row kept before it.
    accepted.dedup_by(|(later, later_line), (first, first_line)| {
        if later.key != first.key {
            return false;
        }
        report.rejected.push(RowProblems {
            line: *later_line,
            problems: vec![file_problem(
                Rule::DuplicateKey,
                format!(
                    "record key {} was already given on line {first_line}: keep one row per key",
                    later.key
                ),
            )],
        });
        duplicate_lines.push(*later_line);
        true
    });
    if !duplicate_lines.is_empty() {
        duplicate_lines.sort_unstable();
        report
            .warnings
            .retain(|w| duplicate_lines.binary_search(&w.line).is_err());
    }
    accepted.into_iter().map(|(record, _)| record).collect()
}

/// Sorts records by key and cuts them into batches of at most `batch_records_max`, so the
/// same records always give the same batches.
pub fn seal_batches(
    mut records: Vec<Record>,
    options: &IngestOptions<'_>,
) -> Result<Vec<SignedBatch>, BuildError> {
    records.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    let per_batch = options.batch_records_max.clamp(1, BATCH_RECORDS_MAX);
    let mut batches = Vec::with_capacity(records.len().div_ceil(per_batch));
    let mut sealed = Vec::with_capacity(batches.capacity());
    let mut rest = records;
    while !rest.is_empty() {
        let tail = rest.split_off(rest.len().min(per_batch));
        let header = BatchHeader {
            format: BATCH_FORMAT,
            origin: options.origin,
            category: options.schema.category.clone(),
            schema_version: options.schema.version,
            period: options.period,
            supersedes: None,
            withdrawals: Vec::new(),
        };
        let batch = Batch::new(header, rest)?;
        batches.push(SignedBatch::seal(&batch, options.node_key)?);
        sealed.push(batch);
        rest = tail;
    }
    drop_in_background(sealed);
    Ok(batches)
}

/// Drops `value` on a thread of its own: freeing the millions of strings of a large file's
/// records takes a while, and nothing needs to wait for it.
fn drop_in_background<T: Send + 'static>(value: T) {
    // If no thread can be started, `spawn` drops the closure, and `value` with it, here.
    let _ = std::thread::Builder::new()
        .name("ingest-drop".to_owned())
        .spawn(move || drop(value));
}

/// File line numbers from byte offsets. (The csv crate's own line count is one short after
/// CRLF line endings, which every Excel export has.)
#[derive(Default)]
struct LineCounter {
    offset: usize,
    line: u64,
}

impl LineCounter {
    /// The line of the record starting at `offset` (offsets must not decrease).
    fn line_at(&mut self, text: &[u8], offset: usize) -> u64 {
        // A record may be reported as starting on the terminator of the line before it.
        let mut start = offset.min(text.len());
        while start < text.len() && matches!(text[start], b'\r' | b'\n') {
            start += 1;
        }
        debug_assert!(start >= self.offset, "records arrive in file order");
        self.line += count_newlines(&text[self.offset..start]);
        self.offset = start;
        self.line + 1
    }
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

/// A field that is not UTF-8 (which decoding the whole text first rules out).
fn not_utf8(path: &Path, position: Option<&csv::Position>, field: usize) -> IngestError {
    IngestError::Csv {
        path: path.to_owned(),
        line: position.map_or(0, |p| p.line()),
        message: format!("field {} is not valid UTF-8", field + 1),
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

/// Whether rows may hold bytes their encoding does not allow (checked row by row).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Damage {
    /// The whole text is valid.
    None,
    /// UTF-8 with some invalid bytes: rows that are not UTF-8 are refused.
    Utf8,
    /// GBK decoded with replacement characters where bytes were not GBK (GBK cannot encode
    /// U+FFFD, so each one marks damage): rows holding one are refused.
    Gbk,
}

impl Damage {
    /// Why `row` is refused, if its bytes are not valid in the file's encoding.
    fn row_problem(self, row: &csv::ByteRecord, encoding: Encoding) -> Option<String> {
        let bad_field = match self {
            Damage::None => return None,
            Damage::Utf8 => row
                .iter()
                .position(|cell| std::str::from_utf8(cell).is_err()),
            Damage::Gbk => row
                .iter()
                .position(|cell| cell.windows(3).any(|w| w == "\u{fffd}".as_bytes())),
        }?;
        let name = match encoding {
            Encoding::Utf8 => "UTF-8",
            Encoding::Gbk => "GBK",
        };
        Some(format!(
            "column {} holds bytes that are not valid {name}: the row is refused (the rest of the file is read); correct the cell in the source and submit the row again",
            bad_field + 1
        ))
    }
}

/// The file as UTF-8 bytes: UTF-8 (BOM stripped) or GBK decoded. A file that is not UTF-8
/// but decodes as GBK is refused whole with a hint (the wrong encoding, not damage); a UTF-8
/// file with a few damaged rows is read, those rows refused one by one ([`Damage`]).
fn decode_text<'a>(
    path: &Path,
    bytes: &'a [u8],
    encoding: Encoding,
) -> Result<(std::borrow::Cow<'a, [u8]>, Damage), IngestError> {
    let line_of =
        |offset: usize| 1 + bytes[..offset].iter().filter(|b| **b == b'\n').count() as u64;
    match encoding {
        Encoding::Utf8 => {
            let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
            let Err(e) = std::str::from_utf8(body) else {
                return Ok((std::borrow::Cow::Borrowed(body), Damage::None));
            };
            let offset = e.valid_up_to() + (bytes.len() - body.len());
            // Mostly UTF-8 (more lines with valid non-ASCII text than lines that are not
            // UTF-8): damage in a UTF-8 file, refused row by row.
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
                return Ok((std::borrow::Cow::Borrowed(body), Damage::Utf8));
            }
            let (_, had_errors) = encoding_rs::GBK.decode_without_bom_handling(body);
            if had_errors {
                Err(IngestError::UnknownEncoding {
                    path: path.to_owned(),
                    line: line_of(offset),
                })
            } else {
                Err(IngestError::LooksLikeGbk {
                    path: path.to_owned(),
                    line: line_of(offset),
                })
            }
        }
        Encoding::Gbk => {
            let (text, had_errors) = encoding_rs::GBK.decode_without_bom_handling(bytes);
            let damage = if had_errors {
                Damage::Gbk
            } else {
                Damage::None
            };
            Ok((
                std::borrow::Cow::Owned(text.into_owned().into_bytes()),
                damage,
            ))
        }
    }
}
