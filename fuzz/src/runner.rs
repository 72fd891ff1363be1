//! The stable fuzzer: runs a [`Target`] over its seeds and committed corpus, then over
//! mutated inputs, each case under `catch_unwind` and under the target's memory bound.
//!
//! Configured by environment variables (all optional):
//! - `FUZZ_CASES`: mutated cases per target (default: the target's, a few seconds' worth);
//! - `FUZZ_SECONDS`: run each target this long instead (cases are then unbounded unless
//!   `FUZZ_CASES` is set too; whichever ends first);
//! - `FUZZ_SEED`: the seed of the case sequence (default fixed, so `cargo test` runs the same
//!   inputs every time; any number gives another sequence);
//! - `FUZZ_REPLAY`: a file or directory of inputs to run instead of fuzzing (a finding).
//!
//! A failing case (a panic, or more memory than the bound) is written, with a smaller input
//! that fails the same way when one is found, to `fuzz/artifacts/<target>/`, and the run
//! ends with a message that names the files and the command that replays them.

use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use sample::Rng;

use crate::alloc;
use crate::mutate::mutate;

/// What a target made of an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted (decoded, parsed, ingested into at least one record): it joins the pool.
    Accepted,
    /// Refused with an error, as hostile input should be.
    Refused,
}

/// One fuzz target: a function that must not panic on any input, and what the fuzzer needs
/// to drive it.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]) -> Verdict,
    /// Valid inputs made by the code under test (written as the committed corpus).
    pub seeds: fn() -> Vec<Vec<u8>>,
    /// Tokens of the format, for insertion.
    pub dictionary: &'static [&'static [u8]],
    /// Longest input the fuzzer makes.
    pub max_len: usize,
    /// Most bytes one case may allocate beyond what was live before it, for an input of this
    /// length.
    pub memory_bound: fn(usize) -> usize,
    /// Mutated cases in a default `cargo test` run.
    pub default_cases: u64,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Report {
    pub target: &'static str,
    pub executions: u64,
    pub accepted: u64,
    pub corpus_inputs: usize,
    pub pool: usize,
    pub elapsed: Duration,
    /// The largest per-case peak allocation seen, and the length of its input.
    pub max_peak: (usize, usize),
    /// The process's peak resident memory over the run (Linux), in bytes: allocation counts
    /// include buffers mapped but never touched, this is what was.
    pub peak_rss: Option<u64>,
    pub failures: Vec<Failure>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let seconds = self.elapsed.as_secs_f64();
        write!(
            f,
            "fuzz {}: {} executions in {:.1} s ({:.0}/s), {} accepted, corpus {}, pool {}, largest case allocation {} bytes (input {} bytes), peak RSS {}, {} failure(s)",
            self.target,
            self.executions,
            seconds,
            self.executions as f64 / seconds.max(1e-9),
            self.accepted,
            self.corpus_inputs,
            self.pool,
            self.max_peak.0,
            self.max_peak.1,
            self.peak_rss
                .map_or_else(|| "unknown".to_owned(), |b| format!("{} MiB", b >> 20)),
            self.failures.len()
        )
    }
}

/// One distinct failure (by panic location, or the memory bound).
#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: String,
    pub message: String,
    pub input: PathBuf,
    pub minimized: Option<PathBuf>,
}

/// Settings, from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    pub cases: Option<u64>,
    pub seconds: Option<f64>,
    pub seed: u64,
    pub replay: Option<PathBuf>,
}

impl Config {
    pub fn from_env() -> Config {
        let number = |name: &str| {
            std::env::var(name).ok().map(|text| {
                text.trim()
                    .parse::<f64>()
                    .unwrap_or_else(|_| panic!("{name}={text:?} is not a number"))
            })
        };
        Config {
            cases: number("FUZZ_CASES").map(|n| n as u64),
            seconds: number("FUZZ_SECONDS"),
            seed: number("FUZZ_SEED").map_or(0x5eed_f022, |n| n as u64),
            replay: std::env::var_os("FUZZ_REPLAY").map(PathBuf::from),
        }
    }
}

/// This crate's directory: where `corpus/` and `artifacts/` are.
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The committed corpus of a target.
pub fn corpus_dir(target: &str) -> PathBuf {
    crate_dir().join("corpus").join(target)
}

/// Inputs that once failed and were fixed: run first, every time.
pub fn regressions_dir(target: &str) -> PathBuf {
    crate_dir().join("regressions").join(target)
}

fn artifacts_dir(target: &str) -> PathBuf {
    crate_dir().join("artifacts").join(target)
}

/// The file name an input is kept under: a prefix of its BLAKE3.
pub fn input_name(input: &[u8]) -> String {
    blake3::hash(input).to_hex()[..16].to_owned()
}

/// Every file in `dir` (none if it does not exist), in name order.
pub fn read_inputs(dir: &Path) -> Vec<Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .collect()
}

/// Writes `seeds` as the target's committed corpus, replacing what is there.
pub fn write_corpus(target: &Target) -> usize {
    let dir = corpus_dir(target.name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let seeds = (target.seeds)();
    for seed in &seeds {
        std::fs::write(dir.join(input_name(seed)), seed).unwrap();
    }
    seeds.len()
}

/// One target runs at a time: the allocation counters are process-wide.
static RUNNING: Mutex<()> = Mutex::new(());
/// The location and message of the last panic, recorded by the fuzzer's panic hook.
static LAST_PANIC: Mutex<Option<(String, String)>> = Mutex::new(None);

/// Runs one input; `Err((kind, message))` if it failed.
fn execute(target: &Target, input: &[u8]) -> (Result<Verdict, (String, String)>, usize) {
    let before = alloc::live();
    alloc::reset_peak();
    let result = catch_unwind(AssertUnwindSafe(|| (target.run)(input)));
    let peak = alloc::peak().saturating_sub(before);
    let result = match result {
        Ok(verdict) => {
            let bound = (target.memory_bound)(input.len());
            if peak > bound {
                Err((
                    "memory".to_owned(),
                    format!(
                        "a {}-byte input made the target allocate {peak} bytes at once, over its bound of {bound}",
                        input.len()
                    ),
                ))
            } else {
                Ok(verdict)
            }
        }
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "a panic".to_owned());
            let (location, hook_message) = LAST_PANIC
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
                .unwrap_or_else(|| ("?".to_owned(), message.clone()));
            Err((format!("panic at {location}"), hook_message))
        }
    };
    (result, peak)
}

/// A smaller input that fails the same way, by removing runs while it still does (at most
/// `attempts` tries).
fn minimize(target: &Target, input: &[u8], kind: &str, attempts: usize) -> Vec<u8> {
    let mut best = input.to_vec();
    let mut tries = 0;
    let mut chunk = best.len().div_ceil(2).max(1);
    while chunk >= 1 && tries < attempts {
        let mut start = 0;
        let mut shrunk = false;
        while start < best.len() && tries < attempts {
            let mut candidate = best.clone();
            candidate.drain(start..(start + chunk).min(best.len()));
            tries += 1;
            match execute(target, &candidate).0 {
                Err((k, _)) if k == kind => {
                    best = candidate;
                    shrunk = true;
                }
                _ => start += chunk,
            }
        }
        if !shrunk {
            if chunk == 1 {
                break;
            }
            chunk /= 2;
        }
    }
    best
}

/// Runs `target` as configured; returns what it did. Failures are in the report, not
/// raised: see [`check`].
pub fn run(target: &Target, config: &Config) -> Report {
    let _running = RUNNING.lock().unwrap_or_else(PoisonError::into_inner);
    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map_or_else(|| "?".to_owned(), |l| format!("{}:{}", l.file(), l.line()));
        let message = info
            .payload()
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| {
                info.payload()
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
            })
            .unwrap_or_default();
        // The first panic of a case: a worker thread's, not the re-raise of its scope.
        LAST_PANIC
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert((location, message));
    }));

    // Linux: "5" resets the peak resident set size (VmHWM) to the current one.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let started = Instant::now();
    let mut report = Report {
        target: target.name,
        executions: 0,
        accepted: 0,
        corpus_inputs: 0,
        pool: 0,
        elapsed: Duration::ZERO,
        max_peak: (0, 0),
        peak_rss: None,
        failures: Vec::new(),
    };
    let mut failed: BTreeSet<String> = BTreeSet::new();
    let mut record = |report: &mut Report,
                      input: &[u8],
                      outcome: Result<Verdict, (String, String)>,
                      peak: usize|
     -> Option<Verdict> {
        report.executions += 1;
        if peak > report.max_peak.0 {
            report.max_peak = (peak, input.len());
        }
        match outcome {
            Ok(verdict) => {
                report.accepted += u64::from(verdict == Verdict::Accepted);
                Some(verdict)
            }
            Err((kind, message)) => {
                if failed.insert(kind.clone()) {
                    let dir = artifacts_dir(target.name);
                    std::fs::create_dir_all(&dir).unwrap();
                    let path = dir.join(format!("crash-{}", input_name(input)));
                    std::fs::write(&path, input).unwrap();
                    let small = minimize(target, input, &kind, 2_000);
                    let minimized = (small.len() < input.len()).then(|| {
                        let path = dir.join(format!("minimized-{}", input_name(&small)));
                        std::fs::write(&path, &small).unwrap();
                        path
                    });
                    report.failures.push(Failure {
                        kind,
                        message,
                        input: path,
                        minimized,
                    });
                }
                None
            }
        }
    };

    // A replay runs the given inputs and nothing else.
    if let Some(replay) = &config.replay {
        let inputs = if replay.is_dir() {
            read_inputs(replay)
        } else {
            vec![std::fs::read(replay).unwrap_or_else(|e| panic!("{}: {e}", replay.display()))]
        };
        for input in &inputs {
            let (outcome, peak) = execute(target, input);
            record(&mut report, input, outcome, peak);
        }
        report.corpus_inputs = inputs.len();
        report.elapsed = started.elapsed();
        std::panic::set_hook(previous_hook);
        return report;
    }

    // Seeds, the committed corpus and the regressions, each run once; the accepted ones
    // start the pool.
    let mut pool: Vec<Vec<u8>> = Vec::new();
    let mut inputs = (target.seeds)();
    inputs.extend(read_inputs(&corpus_dir(target.name)));
    inputs.extend(read_inputs(&regressions_dir(target.name)));
    report.corpus_inputs = inputs.len();
    for input in inputs {
        let (outcome, peak) = execute(target, &input);
        if record(&mut report, &input, outcome, peak) == Some(Verdict::Accepted) {
            pool.push(input);
        }
    }
    if pool.is_empty() {
        pool.push(Vec::new());
    }

    const POOL_MAX: usize = 1_024;
    let cases = match (config.cases, config.seconds) {
        (Some(cases), _) => cases,
        (None, Some(_)) => u64::MAX,
        (None, None) => target.default_cases,
    };
    let deadline = config.seconds.map(|s| started + Duration::from_secs_f64(s));
    let mut rng = Rng::new(config.seed ^ u64::from_le_bytes(*b"fuzzseed") ^ name_salt(target.name));
    let mut case = 0u64;
    while case < cases && deadline.is_none_or(|d| Instant::now() < d) {
        case += 1;
        let input = if rng.below(20) == 0 {
            // Plain noise now and then: the shallow paths.
            let len = rng.below(64) as usize;
            (0..len).map(|_| rng.next_u64() as u8).collect()
        } else {
            let mut input = pool[rng.below(pool.len() as u64) as usize].clone();
            mutate(
                &mut rng,
                &mut input,
                &pool,
                target.dictionary,
                target.max_len,
            );
            input
        };
        let (outcome, peak) = execute(target, &input);
        if record(&mut report, &input, outcome, peak) == Some(Verdict::Accepted) {
            if pool.len() < POOL_MAX {
                pool.push(input);
            } else {
                let slot = rng.below(POOL_MAX as u64) as usize;
                pool[slot] = input;
            }
        }
        if report.failures.len() >= 8 {
            break;
        }
    }
    report.pool = pool.len();
    report.elapsed = started.elapsed();
    report.peak_rss = peak_rss();
    std::panic::set_hook(previous_hook);
    report
}

/// The process's peak resident set size (`VmHWM` in `/proc/self/status`), on Linux.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn name_salt(name: &str) -> u64 {
    let hash = blake3::hash(name.as_bytes());
    u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// Runs `target` and fails (panics) with every finding and how to replay it.
pub fn check(target: &Target) -> Report {
    let config = Config::from_env();
    let report = run(target, &config);
    eprintln!("{report}");
    if !report.failures.is_empty() {
        let mut message = format!("{report}\n");
        for failure in &report.failures {
            message.push_str(&format!(
                "\n{}: {}\n  input: {}\n",
                failure.kind,
                failure.message,
                failure.input.display()
            ));
            if let Some(small) = &failure.minimized {
                message.push_str(&format!(
                    "  smaller input failing the same way: {}\n",
                    small.display()
                ));
            }
            message.push_str(&format!(
                "  replay: FUZZ_REPLAY={} cargo test -p credit-fuzz --test fuzz -- {} --exact\n",
                failure
                    .minimized
                    .as_ref()
                    .unwrap_or(&failure.input)
                    .display(),
                target.name
            ));
        }
        panic!("{message}");
    }
    report
}
