//! Ingestion throughput: how close batch building gets to the raw limits of its input.
//!
//! One run measures, on the same in-memory water-fee export (100,000 rows by default):
//! 1. bare CSV parse: the csv crate reading every record as bytes (the parsing limit);
//! 2. BLAKE3 over the file (the hashing limit);
//! 3. full batch building: `ingest_bytes` (parse, validate, desensitize, encode, hash, sign);
//!
//! and, to show where the difference between 1 and 3 goes, a breakdown of 3 into its stages:
//! the `StringRecord` parse `ingest_bytes` does, `Schema::validate_encoded` on every row (what
//! a worker does), and sealing alone (`SignedBatch::seal_encoded` over batches of the same size).
//!
//! A plain `main` (harness = false): each measurement is one warm-up and `BENCH_ITERS` (5)
//! timed runs, reported as the median. `BENCH_ROWS` sets the row count (e.g. a smaller run
//! under callgrind); `BENCH_ONLY=build` runs batch building alone (for a profiler), once
//! plus `BENCH_ITERS` times. Arguments cargo passes (`--bench`, filters) are ignored.
//!
//! Run: `cargo bench -p credit-node --bench ingest`.

#![allow(clippy::print_stdout)]

mod common;

use common::{env_usize, fresh_header, grouped};

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use node::ingest::{Encoding, IngestOptions, ingest_bytes};
use protocol::batch::{BATCH_RECORDS_MAX, EncodedRecords};
use protocol::record::Staging;
use protocol::{DesensitizeKey, NodeId, NodeKey, Period, Registry, SignedBatch};

const DEFAULT_ROWS: usize = 100_000;
const DEFAULT_ITERS: usize = 5;
const SEED: u64 = 202_205;

/// One warm-up, then `iters` timed runs of `run`; returns the median time. What a run
/// returns is dropped after its clock stops.
fn measure<T>(iters: usize, mut run: impl FnMut() -> T) -> Duration {
    drop(run());
    let mut times: Vec<Duration> = (0..iters)
        .map(|_| {
            let start = Instant::now();
            let output = black_box(run());
            let time = start.elapsed();
            drop(output);
            time
        })
        .collect();
    times.sort_unstable();
    times[times.len() / 2]
}

/// Like [`measure`], for runs that need fresh input made outside the timed part.
fn measure_with<I, T>(
    iters: usize,
    mut setup: impl FnMut() -> I,
    mut run: impl FnMut(I) -> T,
) -> Duration {
    drop(run(setup()));
    let mut times: Vec<Duration> = (0..iters)
        .map(|_| {
            let input = setup();
            let start = Instant::now();
            let output = black_box(run(input));
            let time = start.elapsed();
            drop(output);
            time
        })
        .collect();
    times.sort_unstable();
    times[times.len() / 2]
}

/// Peak resident memory of this process in KiB (Linux), if known.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

struct Row {
    name: &'static str,
    time: Duration,
}

fn main() {
    // cargo passes `--bench` and maybe a filter: every argument is ignored.
    let _ = std::env::args().skip(1).count();
    let rows = env_usize("BENCH_ROWS", DEFAULT_ROWS);
    let iters = env_usize("BENCH_ITERS", DEFAULT_ITERS);

    let schema = Registry::builtin()
        .by_name("water_fee")
        .expect("water_fee schema is built in");
    let origin = NodeId::parse("445281").expect("valid node id");
    let period = Period::parse("2022-05").expect("valid period");
    let sample = sample::sample_csv(schema, origin, period, rows, 0, SEED);
    let bytes: Vec<u8> = sample.text.into_bytes();
    let desensitize_key = DesensitizeKey([7; 32]);
    let node_key = NodeKey::from_seed([1; 32]);
    let options = IngestOptions {
        schema,
        origin,
        period,
        encoding: Encoding::Utf8,
        desensitize_key: &desensitize_key,
        node_key: &node_key,
        batch_records_max: BATCH_RECORDS_MAX,
        left_out: &[],
    };
    let path = Path::new("bench/water_fee.csv");
    let batch_header = fresh_header(origin, schema, period);
    let fields_per_row = schema.fields.len();

    if std::env::var("BENCH_ONLY").is_ok_and(|only| only == "build") {
        for _ in 0..=iters {
            let report =
                ingest_bytes(path, black_box(&bytes), &options, |_| {}).expect("sample ingests");
            assert_eq!(report.records, rows as u64, "every row becomes a record");
            assert!(report.rejected.is_empty(), "no row rejected");
            black_box(report);
        }
        println!("batch building only: {rows} rows x {}", iters + 1);
        return;
    }

    // 1. Bare parse: csv over the bytes, one reused ByteRecord, no UTF-8 check.
    let bare_parse = measure(iters, || {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(black_box(bytes.as_slice()));
        let mut record = csv::ByteRecord::new();
        let mut records = 0usize;
        let mut fields = 0usize;
        while reader
            .read_byte_record(&mut record)
            .expect("sample CSV parses")
        {
            records += 1;
            fields += record.len();
        }
        assert_eq!(records, rows + 1, "header and every row read");
        assert_eq!(fields, (rows + 1) * fields_per_row, "every field read");
        fields
    });

    // 2. Plain BLAKE3 over the file.
    let hash = measure(iters, || blake3::hash(black_box(bytes.as_slice())));

    // 3. Full batch building.
    let mut batches = 0;
    let mut batch_bytes = 0;
    let full = measure(iters, || {
        let report =
            ingest_bytes(path, black_box(&bytes), &options, |_| {}).expect("sample ingests");
        assert_eq!(report.records, rows as u64, "every row becomes a record");
        assert!(
            report.rejected.is_empty(),
            "no row rejected: {:?}",
            report.rejected.first()
        );
        batches = report.batches.len();
        batch_bytes = report.batches.iter().map(|b| b.bytes.len()).sum::<usize>();
        report
    });

    let peak_after_build = peak_rss_kib();

    // Breakdown of 3. (0) The UTF-8 check `decode_text` does on the whole file.
    let utf8_check = measure(iters, || {
        std::str::from_utf8(black_box(&bytes)).expect("UTF-8").len()
    });

    // (a) The parse ingest_bytes does: UTF-8 check, then an allocating
    // StringRecord per row from the `records()` iterator.
    let string_records = measure(iters, || {
        let text = std::str::from_utf8(black_box(&bytes)).expect("UTF-8");
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(text.as_bytes());
        let mut fields = 0usize;
        for row in reader.records() {
            fields += row.expect("sample CSV parses").len();
        }
        fields
    });

    // (a') The same with one reused StringRecord (still a UTF-8 check per record).
    let reused_string_record = measure(iters, || {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(black_box(bytes.as_slice()));
        let mut record = csv::StringRecord::new();
        let mut fields = 0usize;
        while reader.read_record(&mut record).expect("sample CSV parses") {
            fields += record.len();
        }
        fields
    });

    // (b) Parse and validate every row (no duplicate-key map, no batches): a reused
    // StringRecord, so only the validation's own cost is added to the parse.
    let header: Vec<String> = {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(bytes.as_slice());
        let mut record = csv::StringRecord::new();
        reader.read_record(&mut record).expect("header parses");
        record.iter().map(str::to_owned).collect()
    };
    let columns: Vec<Option<usize>> = {
        let mut columns = vec![None; fields_per_row];
        for (column, name) in header.iter().enumerate() {
            if let Some(field) = schema.field_by_header(name) {
                columns[field] = Some(column);
            }
        }
        columns
    };
    // What each worker does per row: validate and write the record's encoding.
    let validate_rows = || -> EncodedRecords {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(true)
            .from_reader(bytes.as_slice());
        let mut row = csv::StringRecord::new();
        let mut records = EncodedRecords::new();
        let mut staging = Staging::new();
        while reader.read_record(&mut row).expect("sample CSV parses") {
            let raw: Vec<Option<&str>> = columns.iter().map(|c| c.map(|c| &row[c])).collect();
            schema
                .validate_encoded(&raw, period, &desensitize_key, &mut staging, &mut records)
                .expect("sample row validates");
        }
        records
    };
    let parse_validate = measure(iters, validate_rows);

    // (c) Sealing alone: sort, concatenate, hash, sign (input cloned outside the timing).
    let records = validate_rows();
    assert_eq!(records.len(), rows);
    let per_batch = options.batch_records_max;
    let seal = measure_with(
        iters,
        || {
            // The batches as the collector cuts them.
            let mut batches = vec![EncodedRecords::new()];
            for index in 0..records.len() {
                if batches.last().expect("one").len() == per_batch {
                    batches.push(EncodedRecords::new());
                }
                batches.last_mut().expect("one").push_from(&records, index);
            }
            batches
        },
        |batches| {
            batches
                .into_iter()
                .map(|mut batch| {
                    SignedBatch::seal_encoded(batch_header.clone(), &mut batch, &node_key)
                        .expect("records seal")
                })
                .collect::<Vec<_>>()
        },
    );
    drop(records);

    // Report.
    let mb = bytes.len() as f64 / 1e6;
    let rate = |time: Duration| (rows as f64 / time.as_secs_f64(), mb / time.as_secs_f64());
    println!();
    println!(
        "water-fee {} rows, {:.1} MB ({} bytes/row), {} fields/row; median of {iters} after 1 warm-up",
        grouped(rows as f64),
        mb,
        bytes.len() / rows.max(1),
        fields_per_row
    );
    println!("{:<32} {:>10} {:>14} {:>10}", "", "ms", "rec/s", "MB/s");
    let print = |rows: &[Row], note: &dyn Fn(&Row) -> String| {
        for row in rows {
            let (recs, mbs) = rate(row.time);
            println!(
                "{:<32} {:>10.1} {:>14} {:>10.1}  {}",
                row.name,
                row.time.as_secs_f64() * 1e3,
                grouped(recs),
                mbs,
                note(row)
            );
        }
    };
    let of_bare = |time: Duration| 100.0 * bare_parse.as_secs_f64() / time.as_secs_f64();
    print(
        &[
            Row {
                name: "bare csv parse (ByteRecord)",
                time: bare_parse,
            },
            Row {
                name: "blake3 over file",
                time: hash,
            },
            Row {
                name: "batch building (ingest_bytes)",
                time: full,
            },
        ],
        &|row| {
            if row.name.starts_with("batch") {
                format!("({:.1} % of bare parse)", of_bare(row.time))
            } else {
                String::new()
            }
        },
    );
    println!("breakdown of batch building:");
    print(
        &[
            Row {
                name: "  utf8 check of whole file",
                time: utf8_check,
            },
            Row {
                name: "  utf8 + csv StringRecord iter",
                time: string_records,
            },
            Row {
                name: "  csv reused StringRecord",
                time: reused_string_record,
            },
            Row {
                name: "  csv + validate_encoded",
                time: parse_validate,
            },
            Row {
                name: "  seal_encoded (sort+cat+sign)",
                time: seal,
            },
        ],
        &|row| {
            format!(
                "({:.0} % of batch building)",
                100.0 * row.time.as_secs_f64() / full.as_secs_f64()
            )
        },
    );
    println!(
        "batch building / bare parse: {:.1} % (target >= 50 %); {batches} batch(es), {:.1} MB encoded",
        of_bare(full),
        batch_bytes as f64 / 1e6
    );
    if let (Some(build), Some(end)) = (peak_after_build, peak_rss_kib()) {
        println!(
            "peak memory (VmHWM): {:.1} MB through batch building, {:.1} MB whole run",
            build as f64 * 1024.0 / 1e6,
            end as f64 * 1024.0 / 1e6
        );
    }
}
