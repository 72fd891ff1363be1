//! Streaming ingestion of a large export, as an operator runs it: peak memory and rows/s of
//! the real `credit-node ingest`, beside a bare csv parse of the same file.
//!
//! 1. Writes a water-fee export of about `INGEST_BENCH_BYTES` bytes (default 2 GB) into a
//!    temporary directory (under `INGEST_BENCH_DIR`, default the system's), streaming the
//!    sample generator's output to the file; it is deleted at the end.
//! 2. Runs `credit-node ingest FILE --category water_fee --period 2022-05 --json` (the
//!    release binary beside this benchmark; build it first) as a child process, at the
//!    default batch size, polling its `/proc/<pid>/status` `VmHWM` for the peak resident
//!    memory, and times it.
//! 3. Runs this benchmark again as a child doing only a bare csv parse of the file (one
//!    reused `ByteRecord`), measured the same way.
//!
//! Prints both with rows/s and the checks the issue asks for: peak ≤ 256 MiB, and ingest
//! rows/s ≥ 50 % of the bare parse's.
//!
//! `INGEST_BENCH_RUNS=N` runs both N times, alternating, and reports the fastest of each
//! (the machine's speed can swing more between minutes than a change moves it) beside the
//! range of the runs' own ratios.
//!
//! Run: `cargo build --release -p credit-cli && cargo bench -p credit-node --bench ingest_2gb`
//! (`INGEST_BENCH_BYTES=200000000 INGEST_BENCH_RUNS=5` for a quicker, steadier run). Under `cargo test` (no `--bench`
//! argument) it does nothing.

#![allow(clippy::print_stdout)]

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use protocol::{NodeId, Period, Registry};

const DEFAULT_BYTES: u64 = 2_000_000_000;
const PEAK_LIMIT_MIB: u64 = 256;
/// Issue 12: ingestion at half the rows/s of a bare csv parse of the same file, at least.
const RATIO_TARGET_PERCENT: f64 = 50.0;
const BARE_PARSE_ARG: &str = "--bare-parse";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == BARE_PARSE_ARG) {
        let rows = bare_parse(Path::new(&args[at + 1]));
        println!("{rows}");
        return;
    }
    if !args.iter().any(|a| a == "--bench") {
        println!("ingest_2gb: run it with `cargo bench -p credit-node --bench ingest_2gb`");
        return;
    }
    let target_bytes = std::env::var("INGEST_BENCH_BYTES")
        .ok()
        .map(|text| {
            text.trim()
                .replace('_', "")
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("INGEST_BENCH_BYTES={text:?}: expected a byte count"))
        })
        .unwrap_or(DEFAULT_BYTES);
    let exe = std::env::current_exe().expect("the benchmark's own path");
    // target/release/deps/ingest_2gb-… → target/release/credit-node
    let binary = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("credit-node"))
        .filter(|path| path.exists())
        .unwrap_or_else(|| {
            panic!(
                "no credit-node binary beside {}: build it first with `cargo build --release -p credit-cli`",
                exe.display()
            )
        });

    let dir = match std::env::var_os("INGEST_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .expect("a temporary directory");
    let file = dir.path().join("water-2022-05.csv");
    let started = Instant::now();
    let (rows, bytes) = write_export(&file, target_bytes);
    println!(
        "wrote {} rows, {:.2} GB to {} in {:.0} s",
        grouped(rows),
        bytes as f64 / 1e9,
        file.display(),
        started.elapsed().as_secs_f64()
    );

    // Each run: the ingest, then the bare parse, so that both see the machine alike.
    let runs = env_runs();
    let (mut ours_runs, mut bare_runs) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let mut ingest = Command::new(&binary);
        ingest.arg("ingest").arg(&file).args([
            "--category",
            "water_fee",
            "--period",
            "2022-05",
            "--json",
        ]);
        ours_runs.push(measure(&mut ingest));
        let mut parse = Command::new(&exe);
        parse.arg(BARE_PARSE_ARG).arg(&file);
        bare_runs.push(measure(&mut parse));
    }
    let report: serde_json::Value =
        serde_json::from_slice(&ours_runs[0].stdout).expect("credit-node ingest prints JSON");
    assert_eq!(report["rows"], rows, "every row read");
    assert_eq!(report["records"], rows, "every row a record");
    for bare in &bare_runs {
        let parsed: u64 = String::from_utf8_lossy(&bare.stdout)
            .trim()
            .parse()
            .expect("the bare parse prints its row count");
        assert_eq!(parsed, rows + 1, "header and every row parsed");
    }
    // The fastest of each (the run least disturbed), with the highest peak.
    let best = |runs: &[Run]| Run {
        time: runs.iter().map(|r| r.time).min().expect("one run at least"),
        peak_kib: runs.iter().map(|r| r.peak_kib).max().unwrap_or(0),
        stdout: Vec::new(),
    };
    let (ours, bare) = (best(&ours_runs), best(&bare_runs));

    println!();
    println!(
        "water-fee export: {} rows, {:.2} GB ({} bytes/row), {} batch(es) at the default batch size",
        grouped(rows),
        bytes as f64 / 1e9,
        bytes / rows.max(1),
        report["batches"].as_array().map_or(0, Vec::len)
    );
    println!(
        "{:<34} {:>9} {:>12} {:>9} {:>14}",
        "", "seconds", "rows/s", "MB/s", "peak RSS (MiB)"
    );
    for (name, run) in [
        ("credit-node ingest (streaming)", &ours),
        ("bare csv parse (ByteRecord)", &bare),
    ] {
        let seconds = run.time.as_secs_f64();
        println!(
            "{name:<34} {seconds:>9.1} {:>12} {:>9.1} {:>14.1}",
            grouped((rows as f64 / seconds) as u64),
            bytes as f64 / 1e6 / seconds,
            run.peak_kib as f64 / 1024.0
        );
    }
    let peak_mib = ours.peak_kib / 1024;
    println!(
        "ingest peak RSS {peak_mib} MiB: {} the {PEAK_LIMIT_MIB} MiB bound",
        if peak_mib <= PEAK_LIMIT_MIB {
            "within"
        } else {
            "OVER"
        },
    );
    let ratio = 100.0 * bare.time.as_secs_f64() / ours.time.as_secs_f64();
    let seen = if runs > 1 {
        let pairs: Vec<f64> = ours_runs
            .iter()
            .zip(&bare_runs)
            .map(|(o, b)| 100.0 * b.time.as_secs_f64() / o.time.as_secs_f64())
            .collect();
        let low = pairs.iter().copied().fold(f64::INFINITY, f64::min);
        let high = pairs.iter().copied().fold(0.0, f64::max);
        format!("best of {runs} runs each; the runs' own ratios {low:.1}–{high:.1} %")
    } else {
        "same run".to_owned()
    };
    println!(
        "ingest rows/s = {ratio:.1} % of the bare parse's ({seen}): {} the target of {RATIO_TARGET_PERCENT} %",
        if ratio >= RATIO_TARGET_PERCENT {
            "meets"
        } else {
            "MISSES"
        }
    );
}

/// `INGEST_BENCH_RUNS`: how many times to run the ingest and the bare parse, alternating
/// (default 1); the figures are the fastest of each.
fn env_runs() -> usize {
    std::env::var("INGEST_BENCH_RUNS").map_or(1, |text| {
        text.trim()
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .unwrap_or_else(|| {
                panic!("INGEST_BENCH_RUNS={text:?}: expected a positive whole number")
            })
    })
}

/// Writes a sample export of about `target` bytes; returns its data rows and bytes.
fn write_export(path: &Path, target: u64) -> (u64, u64) {
    let schema = Registry::builtin()
        .by_name("water_fee")
        .expect("water_fee schema is built in");
    let origin = NodeId::parse("445281").expect("valid node id");
    let period = Period::parse("2022-05").expect("valid period");
    // Bytes a row, from a small sample of the same generator.
    let probe = sample::sample_csv(schema, origin, period, 10_000, 0, 1);
    let per_row = probe.text.len() as u64 / 10_000;
    let rows = (target / per_row.max(1)).max(1);
    let out = std::fs::File::create(path).expect("create the export");
    let mut out = BufWriter::with_capacity(1 << 20, out);
    sample::write_sample_csv(&mut out, schema, origin, period, rows as usize, 0, 2022)
        .expect("write the export");
    out.flush().expect("write the export");
    let bytes = std::fs::metadata(path).expect("the export").len();
    (rows, bytes)
}

struct Run {
    time: Duration,
    peak_kib: u64,
    stdout: Vec<u8>,
}

/// Runs `command` to its end (stderr shown), timing it and polling its peak resident memory.
fn measure(command: &mut Command) -> Run {
    let started = Instant::now();
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the child");
    let pid = child.id();
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut bytes).expect("read the child's output");
        bytes
    });
    let status_path = PathBuf::from(format!("/proc/{pid}/status"));
    let mut peak_kib = 0;
    loop {
        // VmHWM is the kernel's own high-water mark: polling only has to read it last
        // before the process exits (a zombie no longer shows it).
        if let Some(kib) = vm_hwm_kib(&status_path) {
            peak_kib = peak_kib.max(kib);
        }
        if let Some(status) = child.try_wait().expect("poll the child") {
            assert!(status.success(), "{command:?} failed: {status}");
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let time = started.elapsed();
    let stdout = reader.join().expect("the reader thread");
    Run {
        time,
        peak_kib,
        stdout,
    }
}

fn vm_hwm_kib(status: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(status).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The csv crate reading every record of the file as bytes, one reused record: the parsing
/// limit. Returns the records read (the header included).
fn bare_parse(path: &Path) -> u64 {
    let file = std::fs::File::open(path).expect("open the export");
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(file);
    let mut record = csv::ByteRecord::new();
    let mut records = 0;
    while reader
        .read_byte_record(&mut record)
        .expect("the export parses")
    {
        records += 1;
    }
    records
}

/// `1234567` → `1,234,567`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
