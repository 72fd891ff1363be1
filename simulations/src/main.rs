//! `credit-simulations`: runs a scenario from a seed (or a sweep of seeds) and prints what
//! happened: nodes, batches, bytes, virtual time to converge, wall time, peak memory and the
//! trace hash. A failure prints its seed, the step, and the command that replays it.

// This is CLI output, the one place printing to stdout is the point.
#![allow(clippy::print_stdout)]

use clap::Parser;
use credit_simulations::core_tier::{self, Report, SCENARIOS};
use credit_simulations::full_stack;
use node::core::{CoreConfig, PlantedBug};

#[derive(Parser)]
#[command(
    about = "Deterministic simulations of the credit network, replayable from one seed.",
    after_help = "Examples:\n  cargo run --release -p credit-simulations -- --scenario guangdong-year --seed 7\n  cargo run --release -p credit-simulations -- --scenario guangdong-year --sweep 200\n  cargo run --release -p credit-simulations -- --scenario china-year --seed 1\n  RUST_LOG=info cargo run --release -p credit-simulations -- --scenario jieyang-full-stack --seed 63"
)]
struct Cli {
    /// guangdong-year, china-year or jieyang-year (core tier), or jieyang-full-stack (the real
    /// node runtime, QUIC and TLS over a simulated network).
    #[arg(long, default_value = "guangdong-year")]
    scenario: String,
    /// The seed to run (with --sweep: the first seed).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Runs this many seeds, from --seed on, and stops at the first failure.
    #[arg(long)]
    sweep: Option<u64>,
    /// Plants a bug to see the simulator catch it: receipt-before-durable,
    /// skip-origin-signature, drop-outbox-on-send, trust-first-receipt or
    /// skip-submit-signature.
    #[arg(long)]
    plant: Option<String>,
}

fn peak_rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

fn print(report: &Report) {
    let s = &report.stats;
    println!(
        "{} seed {}: {} nodes, {} batches submitted ({} acknowledged), {} batch sends, {} KB of batches, {} frames, {} events; {} crashes, {} link breaks, {} corrupted, {} tampered, {} overtaken by their corrections, {} forged submissions refused; faults: {}",
        report.scenario,
        report.seed,
        report.nodes,
        s.submitted,
        s.acknowledged,
        s.batches_sent,
        s.batch_bytes_sent / 1000,
        s.frames,
        s.events,
        s.crashes,
        s.link_breaks,
        s.corrupted,
        s.tampered,
        s.overtaken,
        s.forgeries_refused,
        report.faults
    );
    let [pending, on_time, late, missing, incomplete, concealed] = s.ledger_states;
    println!(
        "  ledger at the province(s): {} entries checked ({} exactly): {on_time} on time, {late} late, {missing} missing, {concealed} concealment suspected, {incomplete} incomplete, {pending} pending; {} batches lost from stores, {} proofs of arrival dropped or forged; {} progress reports listed at the national platform; {} corrections and withdrawals submitted, {} current record versions checked, {} feedback items open and {} closed ({} findings on one record and its versions alone matched to open items)",
        s.ledger_checked,
        s.ledger_exact,
        s.lost,
        s.proofs_touched,
        s.progress_listed,
        s.corrections,
        s.versions_checked,
        s.feedback_items[0],
        s.feedback_items[1],
        s.per_record_findings
    );
    println!(
        "  converged {} after healing; virtual time {:.1} days; wall {:.2} s; peak memory {} MiB; trace {}",
        s.converged_after_ms
            .map_or("never".to_owned(), |ms| format!(
                "{:.1} s",
                ms as f64 / 1000.0
            )),
        s.virtual_ms as f64 / 86_400_000.0,
        report.wall_ms as f64 / 1000.0,
        peak_rss_mib().map_or("?".into(), |m| m.to_string()),
        report.trace_hash
    );
}

fn print_full_stack(report: &full_stack::Report) {
    let secs = |ms: Option<u64>| {
        ms.map_or("never".to_owned(), |ms| {
            format!("{:.1} s", ms as f64 / 1000.0)
        })
    };
    println!(
        "{} seed {}: {} nodes ({} starts), {} batches submitted ({} acknowledged), {} KB of batches, {} datagrams, {} KB over UDP, {} events; faults: {}; city crashed at {}, restarted at {}, losing {} unsynced audit entries",
        report.scenario,
        report.seed,
        report.nodes,
        report.node_starts,
        report.submitted,
        report.acknowledged,
        report.batch_bytes / 1000,
        report.datagrams,
        report.udp_bytes / 1000,
        report.events,
        report.faults,
        secs(report.crashed_at_ms),
        secs(report.restarted_at_ms),
        report.lost_in_crash
    );
    println!(
        "  converged {} after healing at {} (bound {} s); virtual time {:.1} s; wall {:.2} s; peak memory {} MiB; trace {}",
        secs(report.converged_after_ms),
        secs(report.healed_ms),
        full_stack::CONVERGE_BOUND.as_secs(),
        report.virtual_ms as f64 / 1000.0,
        report.wall_ms as f64 / 1000.0,
        peak_rss_mib().map_or("?".into(), |m| m.to_string()),
        report.trace_hash
    );
}

/// Log lines stamped with the simulation's virtual time (the host's, inside a host).
struct VirtualTime;

impl tracing_subscriber::fmt::time::FormatTime for VirtualTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        match turmoil::sim_elapsed() {
            Some(t) => write!(w, "{:>9.3}s", t.as_secs_f64()),
            None => write!(w, "{:>10}", "-"),
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // RUST_LOG=info (or debug, or credit_node=debug,...) shows what the nodes did.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_timer(VirtualTime)
            .with_writer(std::io::stderr)
            .init();
    }
    if cli.scenario != full_stack::SCENARIO && !SCENARIOS.contains(&cli.scenario.as_str()) {
        eprintln!(
            "unknown scenario {:?}; known: {}, {}",
            cli.scenario,
            SCENARIOS.join(", "),
            full_stack::SCENARIO
        );
        return std::process::ExitCode::from(2);
    }
    let planted = match cli.plant.as_deref() {
        None => None,
        Some("receipt-before-durable") => Some(PlantedBug::ReceiptBeforeDurable),
        Some("skip-origin-signature") => Some(PlantedBug::SkipOriginSignature),
        Some("drop-outbox-on-send") => Some(PlantedBug::DropOutboxOnSend),
        Some("trust-first-receipt") => Some(PlantedBug::TrustFirstReceipt),
        Some("skip-submit-signature") => Some(PlantedBug::SkipSubmitSignature),
        Some(other) => {
            eprintln!(
                "unknown bug {other:?}: receipt-before-durable, skip-origin-signature, drop-outbox-on-send, trust-first-receipt or skip-submit-signature"
            );
            return std::process::ExitCode::from(2);
        }
    };
    let config = CoreConfig {
        planted,
        ..CoreConfig::default()
    };
    let seeds = cli.seed..cli.seed + cli.sweep.unwrap_or(1);
    let count = seeds.end - seeds.start;
    for seed in seeds {
        if cli.scenario == full_stack::SCENARIO {
            let report = full_stack::run(seed, config);
            print_full_stack(&report);
            if let Some(failure) = &report.failure {
                let plant = cli
                    .plant
                    .as_deref()
                    .map(|p| format!(" --plant {p}"))
                    .unwrap_or_default();
                eprintln!(
                    "FAILED: {} seed {seed}: {failure}\n  replay: cargo run --release -p credit-simulations -- --scenario {} --seed {seed}{plant}",
                    report.scenario, report.scenario
                );
                return std::process::ExitCode::FAILURE;
            }
            continue;
        }
        let report = match core_tier::run(&cli.scenario, seed, config) {
            Ok(report) => report,
            Err(e) => {
                eprintln!("{e}");
                return std::process::ExitCode::from(2);
            }
        };
        print(&report);
        if let Some(v) = &report.violation {
            let plant = cli
                .plant
                .as_deref()
                .map(|p| format!(" --plant {p}"))
                .unwrap_or_default();
            eprintln!(
                "FAILED: {} seed {} at step {} (virtual {:.3} s): {}\n  replay: cargo run --release -p credit-simulations -- --scenario {} --seed {}{plant}",
                report.scenario,
                seed,
                v.step,
                v.at_ms as f64 / 1000.0,
                v.message,
                report.scenario,
                seed
            );
            return std::process::ExitCode::FAILURE;
        }
    }
    if count > 1 {
        println!("{count} seeds passed");
    }
    std::process::ExitCode::SUCCESS
}
