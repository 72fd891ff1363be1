//! `credit-node`: the one binary every level of the credit network runs. This file is the CLI
//! edge: argument parsing, human and JSON output, exit codes. The work is in the library
//! (`node`); `demo` (the live demo) drives a `cluster` of this binary's own processes.
//!
//! The binary is a package of its own (`credit-cli`) because of the demo: `cluster` drives
//! nodes through the library's operator API, so it depends on `node`, and a binary inside the
//! `node` package could not depend on it (a cycle).

mod demo;
mod quality;

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use node::identity::Identity;
use node::ingest::{
    Encoding, IngestError, IngestOptions, IngestProgress, IngestReport, SinkError, ingest_file,
};
use protocol::SignedBatch;
use protocol::batch::BATCH_RECORDS_MAX;
use protocol::{DesensitizeKey, NodeId, NodeKey, Period, Registry, Schema};

#[derive(Parser)]
#[command(
    name = "credit-node",
    version,
    about = "A node of the federated credit information network (county, city, province or national).",
    after_help = "Examples:\n  credit-node demo\n  credit-node init --id 445281 --dir ./puning\n  credit-node ingest water.csv --category water_fee --period 2022-05 --dir ./puning"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a node's identity (Ed25519 key and network key) in a directory and print the
    /// line to paste into the topology file.
    #[command(
        after_help = "Example:\n  credit-node init --id 445281 --dir ./puning\n  credit-node init --id 445200 --dir ./jieyang --network-key ./province/network.key"
    )]
    Init {
        /// The node's GB/T 2260 division code (000000 for the national platform).
        #[arg(long)]
        id: NodeId,
        #[arg(long)]
        dir: PathBuf,
        /// The network's desensitization key file, as handed out by the provincial operator.
        /// Without it a new network key is drawn (for the first node of a network).
        #[arg(long)]
        network_key: Option<PathBuf>,
    },
    /// Give a node a new key: on schedule (rotation), or because the old one was stolen or
    /// lost (--compromised). Prints the topology lines to paste: the new public_key and an
    /// [[old_key]] that keeps what the old key signed verifiable. Then raise the version,
    /// reload the file on every node (SIGHUP), and restart this node: it re-signs what its
    /// parent has not acknowledged, so nothing is lost.
    #[command(
        after_help = "Example:\n  credit-node rekey --dir ./puning\n  credit-node rekey --dir ./puning --compromised --since 2026-06-01T09:30:00+08:00"
    )]
    Rekey {
        #[arg(long)]
        dir: PathBuf,
        /// The old key was stolen or lost: it is revoked, and batches first received after
        /// --since (default: now) are quarantined everywhere.
        #[arg(long)]
        compromised: bool,
        /// When the compromise happened (a TOML date-time), if earlier than now.
        #[arg(long, requires = "compromised")]
        since: Option<String>,
    },
    /// Validate, desensitize and batch a CSV export, and print the batches and every bad row.
    /// Nothing is sent: this is the check an operator runs before submitting.
    #[command(
        after_help = "Example:\n  credit-node ingest water-2022-05.csv --category water_fee --period 2022-05 --dir ./puning\n  credit-node ingest gbk-export.csv --category gas_fee --period 2022-05 --encoding gbk --json"
    )]
    Ingest {
        file: PathBuf,
        #[command(flatten)]
        batch: BatchArgs,
        /// The node directory whose keys sign the batches. Without it, throwaway keys are used
        /// and the batch ids are a preview only.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The origin node id when no --dir is given.
        #[arg(long, default_value = "445281")]
        origin: NodeId,
        #[arg(long)]
        json: bool,
    },
    /// Write a realistic sample export for a category (valid credit codes, chosen bad rows).
    #[command(
        after_help = "Example:\n  credit-node sample --category water_fee --origin 445281 --period 2022-05 --rows 1000 --bad 3 > water.csv"
    )]
    Sample {
        #[arg(long)]
        category: String,
        #[arg(long)]
        origin: NodeId,
        #[arg(long)]
        period: Period,
        #[arg(long, default_value_t = 1000)]
        rows: usize,
        #[arg(long, default_value_t = 0)]
        bad: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Run the node: listen for children, dial the parent, move batches up.
    #[command(
        after_help = "Example:\n  credit-node run --dir ./puning --topology ./jieyang.toml\n  credit-node run --dir ./guangdong --topology ./guangdong.toml --http 127.0.0.1:9464\n\nSend SIGHUP to reload the topology file; a file that does not validate is refused and the node keeps the topology it has.\nThe dashboard and Prometheus metrics (/metrics) are served on --http: loopback on a free port by default (`credit-node status` shows it); `--http off` serves nothing."
    )]
    Run {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        topology: PathBuf,
        /// Where the dashboard and /metrics listen (ADDR:PORT; port 0 picks a free one), or `off`.
        #[arg(long, default_value = "127.0.0.1:0", value_parser = parse_http)]
        http: HttpListen,
    },
    /// Ingest a CSV export and hand its batches to the running node, which sends them up.
    #[command(
        after_help = "Example:\n  credit-node submit water-2022-05.csv --category water_fee --period 2022-05 --dir ./puning"
    )]
    Submit {
        file: PathBuf,
        #[command(flatten)]
        batch: BatchArgs,
        /// The running node's directory.
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Show a running node's links, outboxes, last receipts and the batches it holds.
    #[command(
        after_help = "Example:\n  credit-node status --dir ./jieyang\n  credit-node status --dir ./jieyang --json"
    )]
    Status {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// List every batch a running node holds, with its origin signature re-verified and the
    /// receipts of every hop it reached.
    #[command(after_help = "Example:\n  credit-node batches --dir ./puning --json")]
    Batches {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Close a period: the running node signs a manifest (control totals) of the batches it
    /// submitted for a category and period, and sends it up like a batch. With nothing
    /// submitted it is a nil report (零报告): "nothing to report this period".
    #[command(
        after_help = "Examples:\n  credit-node close-period --dir ./puning --category water_fee --period 2026-03 --declared 1200\n  credit-node close-period --dir ./puning --category admin_penalty --period 2026-03   (a nil report if nothing was sent)"
    )]
    ClosePeriod {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        category: String,
        /// The month (YYYY-MM) or day (YYYY-MM-DD) being closed.
        #[arg(long)]
        period: String,
        /// Records the data-source unit declared for the period (e.g. the water company's
        /// count of billed accounts); fewer delivered is flagged upstream as concealment.
        #[arg(long)]
        declared: Option<u64>,
    },
    /// The timeliness ledger of a running node's subtree for a period: every expected report
    /// on time, late, missing, incomplete or short, rolled up by city with 瞒报率, 漏报率, 迟报率,
    /// and whom to call about each one behind a rate (the schedule's allocation table, 分工表).
    #[command(
        after_help = "Examples:\n  credit-node report --dir ./guangdong --period 2026-03\n  credit-node report --dir ./jieyang --period 2026-03 --category water_fee --format csv > march.csv"
    )]
    Report {
        #[arg(long)]
        dir: PathBuf,
        /// The month (YYYY-MM) to report on.
        #[arg(long)]
        period: String,
        #[arg(long)]
        category: Option<String>,
        /// table, json or csv.
        #[arg(long, default_value = "table", value_parser = ["table", "json", "csv"])]
        format: String,
    },
    /// Reconcile (对账) now: compare the batches and receipts this node and a peer hold for
    /// the child's subtree, re-offer what the parent lacks, report what the child lacks.
    /// Nodes also reconcile when a link comes up and every hour.
    #[command(
        after_help = "Examples:\n  credit-node reconcile --dir ./puning                  (with its parent)\n  credit-node reconcile --dir ./jieyang --peer 445281   (ask a child to reconcile)\nDifferences found are in the audit log (`credit-node audit --dir DIR`)."
    )]
    Reconcile {
        #[arg(long)]
        dir: PathBuf,
        /// The peer's node id; default: every uplink.
        #[arg(long)]
        peer: Option<String>,
    },
    /// Progress reports (工作通报): list those a running node holds (at the national platform,
    /// every province's), or, with `send`, make and send the province's report for a period.
    #[command(
        args_conflicts_with_subcommands = true,
        after_help = "Examples:\n  credit-node progress --dir ./national --period 2026-03\n  credit-node progress --dir ./national --format json\n  credit-node progress send --dir ./guangdong --period 2026-03 --figures ./figures-2026-03.toml"
    )]
    Progress {
        #[command(subcommand)]
        send: Option<ProgressCommand>,
        /// The running node's directory.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Only this period (YYYY-MM); default: every period held.
        #[arg(long)]
        period: Option<String>,
        /// table or json.
        #[arg(long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
    },
    /// Feedback (数据质量反馈): the audit findings on records, per record and field, with
    /// the rule broken and what to do. At the origin: what its parent found in its batches;
    /// at any level: what it found in its subtree's data. Open items by default.
    #[command(
        after_help = "Examples:\n  credit-node feedback --dir ./puning\n  credit-node feedback --dir ./puning --category water_fee --period 2026-03 --csv > to-the-water-company.csv\n  credit-node feedback --dir ./guangdong --origin 445281 --all --json"
    )]
    Feedback {
        #[arg(long)]
        dir: PathBuf,
        /// Only the items of this origin (default: every origin held).
        #[arg(long)]
        origin: Option<String>,
        #[arg(long)]
        category: Option<String>,
        /// Only this period (YYYY-MM).
        #[arg(long)]
        period: Option<String>,
        /// Closed items too (corrected or withdrawn), with when.
        #[arg(long)]
        all: bool,
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        /// CSV (UTF-8 with BOM) to hand back to the data-source unit.
        #[arg(long)]
        csv: bool,
    },
    /// The records a running node holds for a category and period: each record's current
    /// version (after corrections), its earlier versions, and withdrawals with their reason.
    #[command(
        after_help = "Examples:\n  credit-node records --dir ./guangdong --category water_fee --period 2026-03 --origin 445281\n  credit-node records --dir ./national --category water_fee --period 2026-03 --key 'WS-001|2026-03' --json"
    )]
    Records {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        category: String,
        #[arg(long)]
        period: String,
        #[arg(long)]
        origin: Option<String>,
        /// Only this record key.
        #[arg(long)]
        key: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Correct published records (数据修正): the file's rows replace the current versions of
    /// the records with the same keys, in a signed batch that names the batch it supersedes;
    /// every level then shows the corrected record and keeps the old one as history, and the
    /// feedback items the correction answers close.
    #[command(
        after_help = "Examples:\n  credit-node correct fixed-rows.csv --category water_fee --period 2026-03 --dir ./puning\n  credit-node correct whole-month.csv --category water_fee --period 2026-03 --dir ./puning --batch 3fa2…   (replaces the whole batch: its records missing from the file are withdrawn)"
    )]
    Correct {
        file: PathBuf,
        #[command(flatten)]
        batch: BatchArgs,
        /// The running node's directory.
        #[arg(long)]
        dir: PathBuf,
        /// Replace this whole earlier batch (its id): its records the file leaves out are
        /// withdrawn with reason `error`.
        #[arg(long = "batch")]
        whole: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Withdraw published records (撤回): a signed withdrawal travels up and every level marks
    /// each record withdrawn with its reason and date; it no longer counts as current.
    #[command(
        after_help = "Examples:\n  credit-node withdraw --dir ./puning --category admin_penalty --key 'JY-2024-0031' --reason expired\n  credit-node withdraw --dir ./puning --category water_fee --period 2026-03 --keys-file keys.txt --reason error\nReasons: expired (公示期满), repaired (信用修复), error (published in error)."
    )]
    Withdraw {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        category: String,
        /// The period of the records; default: found among every period this node published.
        #[arg(long)]
        period: Option<Period>,
        /// A record key (repeatable).
        #[arg(long = "key")]
        keys: Vec<String>,
        /// A file of record keys, one per line (# comments allowed).
        #[arg(long)]
        keys_file: Option<PathBuf>,
        #[arg(long, value_parser = ["expired", "repaired", "error"])]
        reason: String,
        #[arg(long)]
        json: bool,
    },
    /// Verify the hash chain of a running node's audit log.
    #[command(after_help = "Example:\n  credit-node audit --dir ./guangdong")]
    Audit {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Check, plan, generate topology files, and show a node's migration.
    #[command(subcommand)]
    Topology(TopologyCommand),
    /// The live demo: a Jieyang-shaped network on loopback (province, city, five counties),
    /// real QUIC and sled stores in a temporary folder; a month of water and gas fees moves up.
    #[command(
        after_help = "Example:\n  credit-node demo\n  credit-node demo --keep    # then open the province's dashboard it prints"
    )]
    Demo {
        /// Keep the network running after the demo, until Ctrl-C, to look at its dashboards.
        #[arg(long)]
        keep: bool,
    },
}

#[derive(Subcommand)]
enum ProgressCommand {
    /// At a provincial node: make, sign and send up the progress report (工作通报) for a
    /// period — every local platform with its path and connection, sharing progress per
    /// category with the counts behind 瞒报率, 漏报率 and 迟报率 — and the operators' figures
    /// from a TOML file. It travels to the national platform like a batch; sending again
    /// makes the next revision.
    #[command(
        after_help = "Example:\n  credit-node progress send --dir ./guangdong --period 2026-03 --figures ./figures-2026-03.toml\n\nThe figures file (every key required but notes; whole numbers; unknown keys refused):\n  registered_enterprises = 1234567     # enterprises registered on the platform\n  financial_institutions = 321         # financial institutions connected to it\n  financing_loans = 45678              # loans made with the platform's support\n  financing_amount_wan_yuan = 9876543  # their amount, in 万元\n  notes = \"optional free text\""
    )]
    Send {
        /// The running provincial node's directory.
        #[arg(long)]
        dir: PathBuf,
        /// The month (YYYY-MM) reported on.
        #[arg(long)]
        period: String,
        /// The operators' figures file (TOML).
        #[arg(long)]
        figures: PathBuf,
    },
}

#[derive(Subcommand)]
enum TopologyCommand {
    /// Validate a topology file and list every problem with its line and column.
    #[command(
        after_help = "Example:\n  credit-node topology check topology/examples/guangdong.toml"
    )]
    Check { file: PathBuf },
    /// Show the ordered steps that take the network from OLD to NEW, each with the condition
    /// that must hold before it runs; refuse a change under which some node would, at some
    /// step, have no path to the national platform.
    #[command(after_help = "Example:\n  credit-node topology plan jieyang-v1.toml jieyang-v2.toml")]
    Plan { old: PathBuf, new: PathBuf },
    /// Write a full topology for a province from the GB/T 2260 division list (keys and
    /// addresses are placeholders to replace with the lines `credit-node init` prints).
    #[command(
        after_help = "Example:\n  credit-node topology generate --province 440000 > guangdong.toml"
    )]
    Generate {
        #[arg(long)]
        province: NodeId,
        /// First port of the placeholder addresses.
        #[arg(long, default_value_t = 20000)]
        base_port: u16,
    },
    /// Show a running node's migration: its phase, and what it is waiting for.
    #[command(after_help = "Example:\n  credit-node topology status --dir ./puning")]
    Status {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct BatchArgs {
    /// The category's machine name, e.g. water_fee, gas_fee, admin_penalty.
    #[arg(long)]
    category: String,
    /// The period the file covers: YYYY-MM for monthly data, YYYY-MM-DD for daily data.
    #[arg(long)]
    period: Period,
    #[arg(long, value_enum, default_value = "utf8")]
    encoding: Encoding,
    /// Records per batch.
    #[arg(long, default_value_t = 50_000)]
    batch_records: usize,
}

/// Ingests a file as `identity`, streaming: each batch goes to `sink` as soon as it is
/// sealed, with progress on stderr (a bar on a terminal, log lines otherwise). `handing`
/// says what the sink does, for the display.
fn ingest_with_progress(
    file: &std::path::Path,
    schema: &'static Schema,
    batch: &BatchArgs,
    identity: &Identity,
    left_out: &[String],
    handing: &str,
    sink: impl FnMut(SignedBatch) -> Result<(), SinkError>,
) -> anyhow::Result<Result<IngestReport, IngestError>> {
    // Validation is pure and bounds birth dates by the period's last day; a period that has
    // not begun is refused here, where the clock is, so no birth date after this month passes.
    let today = today_in_china()?;
    if batch.period.first_day().key_bytes() > today.key_bytes() {
        bail!(
            "--period {} has not begun (today is {today} in China Standard Time): data for it cannot exist yet; check --period",
            batch.period
        );
    }
    let options = IngestOptions {
        schema,
        origin: identity.id,
        period: batch.period,
        encoding: batch.encoding,
        desensitize_key: &identity.network_key,
        node_key: &identity.key,
        batch_records_max: batch.batch_records.clamp(1, BATCH_RECORDS_MAX),
        left_out,
    };
    let progress = IngestProgress::new();
    Ok(node::progress::watch_ingest(
        file,
        &progress,
        handing,
        || ingest_file(file, &options, &progress, sink),
    ))
}

/// Today's date in China Standard Time (UTC+8), from the system clock.
fn today_in_china() -> anyhow::Result<Period> {
    const DAY_MS: i64 = 86_400_000;
    const CST_OFFSET_MS: i64 = 8 * 3_600_000;
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the system clock is before 1970: set the clock")?;
    let ms = i64::try_from(since_epoch.as_millis()).context("the system clock is far off")?;
    Period::from_days_since_epoch((ms + CST_OFFSET_MS).div_euclid(DAY_MS))
        .context("the system clock is outside 1949-2199: set the clock")
}

fn schema(name: &str) -> anyhow::Result<&'static Schema> {
    let registry = Registry::builtin();
    registry.by_name(name).with_context(|| {
        format!(
            "unknown category {name:?}; known categories: {}",
            registry.names().join(", ")
        )
    })
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Init {
            id,
            dir,
            network_key,
        } => {
            let network = network_key
                .map(|path| node::identity::read_secret(&path))
                .transpose()?;
            let identity = Identity::create(&dir, id, network)?;
            writeln!(out, "created node {id} in {}", dir.display())?;
            writeln!(out, "paste into the topology file:")?;
            writeln!(
                out,
                "  id = \"{id}\"\n  public_key = \"{}\"",
                identity.public()
            )?;
        }
        Command::Rekey {
            dir,
            compromised,
            since,
        } => {
            let now_ms = node::runtime::wall_ms();
            let at_ms = match &since {
                None => now_ms - now_ms % 1000,
                Some(text) => topology::admission::parse_instant(text).ok_or_else(|| {
                    anyhow::anyhow!(
                        "--since {text:?} is not a date-time: write it like 2026-06-01T09:30:00+08:00"
                    )
                })?,
            };
            let at = topology::admission::rfc3339_ms(at_ms);
            let (old, identity) = Identity::rekey(&dir, now_ms)?;
            let id = identity.id;
            let end = if compromised {
                "revoked_at"
            } else {
                "retired_at"
            };
            writeln!(out, "node {id} in {} has a new key", dir.display())?;
            writeln!(
                out,
                "in the topology file, raise the version, set {id}'s public_key and add the [[old_key]]:"
            )?;
            writeln!(out, "  public_key = \"{}\"", identity.public())?;
            writeln!(
                out,
                "\n[[old_key]]\nnode = \"{id}\"\npublic_key = \"{old}\"\n{end} = {at}\n"
            )?;
            writeln!(
                out,
                "then reload the file on every node (SIGHUP) and restart {id}: it re-signs the batches its parent has not acknowledged"
            )?;
            if compromised {
                writeln!(
                    out,
                    "batches first received after {at} under the old key are quarantined everywhere (see `credit-node batches --json`)"
                )?;
            }
        }
        Command::Ingest {
            file,
            batch,
            dir,
            origin,
            json,
        } => {
            let schema = schema(&batch.category)?;
            let identity = match &dir {
                Some(dir) => Identity::load(dir)?,
                None => Identity {
                    id: origin,
                    key: NodeKey::from_seed(node::identity::random32()?),
                    network_key: DesensitizeKey(node::identity::random32()?),
                },
            };
            // Nothing is sent: each batch is only summed up in the report, then dropped.
            let report =
                ingest_with_progress(&file, schema, &batch, &identity, &[], "sealed", |_| Ok(()))??;
            if json {
                serde_json::to_writer_pretty(&mut out, &node::report::ingest_json(&report))?;
                writeln!(out)?;
            } else {
                node::report::write_ingest(&mut out, &file.display().to_string(), &report)?;
                if dir.is_none() {
                    writeln!(
                        out,
                        "(preview: signed with a throwaway key; pass --dir to sign as your node)"
                    )?;
                }
            }
            return Ok(exit_for(&report));
        }
        Command::Sample {
            category,
            origin,
            period,
            rows,
            bad,
            seed,
        } => {
            let schema = schema(&category)?;
            if bad > rows {
                bail!("--bad {bad} is more than --rows {rows}");
            }
            let file = sample::sample_csv(schema, origin, period, rows, bad, seed);
            out.write_all(file.text.as_bytes())?;
        }
        Command::Run {
            dir,
            topology,
            http,
        } => {
            raise_open_files_limit();
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(run_node(dir, topology, http))?;
        }
        Command::Submit {
            file,
            batch,
            dir,
            json,
        } => {
            let schema = schema(&batch.category)?;
            let identity = Identity::load(&dir)?;
            // The node's topology may keep fields from travelling upstream (最小必要): those
            // columns are not read. Asked first, so a node that is not running is said before
            // the file is read.
            let profile = node::api::call(
                &dir,
                &node::api::ApiRequest::Profile {
                    category: batch.category.clone(),
                },
            )?;
            let left_out: Vec<String> = profile["left_out"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|name| name.as_str().map(str::to_owned))
                .collect();
            // Each batch goes to the node as soon as it is sealed; the next is read only once
            // the node holds this one durably.
            let mut submitted = Vec::new();
            let ingested = ingest_with_progress(
                &file,
                schema,
                &batch,
                &identity,
                &left_out,
                "handing it to the node (waiting for its durable acknowledgement)",
                |signed| {
                    let answer = node::api::call(&dir, &node::api::ApiRequest::Submit(signed))?;
                    submitted.push(answer);
                    Ok(())
                },
            )?;
            let report = match ingested {
                Ok(report) => report,
                Err(IngestError::Sink {
                    batch: failed,
                    source: error,
                    report,
                    ..
                }) => {
                    // Say exactly which batches the node holds durably and which it does not,
                    // so the operator knows what a second submit adds (nothing is stored
                    // twice). The rest of the file was not read.
                    let stored: Vec<String> =
                        report.batches.iter().map(|b| b.id.to_hex()).collect();
                    if json {
                        let mut value = node::report::ingest_json(&report);
                        value["submitted"] = serde_json::Value::Array(submitted);
                        value["failed"] = serde_json::json!({
                            "batch": failed.to_hex(),
                            "error": format!("{error:#}"),
                        });
                        value["not_sent"] = serde_json::json!([]);
                        serde_json::to_writer_pretty(&mut out, &value)?;
                        writeln!(out)?;
                    } else {
                        node::report::write_ingest(&mut out, &file.display().to_string(), &report)?;
                    }
                    let list = |ids: &[String]| {
                        if ids.is_empty() {
                            "none".to_owned()
                        } else {
                            ids.join(", ")
                        }
                    };
                    bail!(
                        "{file}: {} batch(es) stored durably at node {}; batch {failed} was not accepted: {error:#}\n  stored: {}\n  not stored: {failed} (refused); the rest of the file was not read\n  fix the cause and submit the file again: the stored batches are not stored twice",
                        stored.len(),
                        identity.id,
                        list(&stored),
                        file = file.display(),
                    );
                }
                Err(other) => return Err(other.into()),
            };
            if json {
                let mut value = node::report::ingest_json(&report);
                value["submitted"] = serde_json::Value::Array(submitted);
                serde_json::to_writer_pretty(&mut out, &value)?;
                writeln!(out)?;
            } else {
                node::report::write_ingest(&mut out, &file.display().to_string(), &report)?;
                writeln!(
                    out,
                    "submitted {} batch(es) to node {}; `credit-node status --dir {}` shows them moving up",
                    submitted.len(),
                    identity.id,
                    dir.display()
                )?;
                write_republished(&mut out, &submitted, &file, &batch)?;
            }
            return Ok(exit_for(&report));
        }
        Command::Status { dir, json } => {
            let value = node::api::call(&dir, &node::api::ApiRequest::Status)?;
            if json {
                serde_json::to_writer_pretty(&mut out, &value)?;
                writeln!(out)?;
            } else {
                node::report::write_status(&mut out, &value)?;
            }
        }
        Command::Batches { dir, json } => {
            let value = node::api::call(&dir, &node::api::ApiRequest::Batches)?;
            if json {
                serde_json::to_writer_pretty(&mut out, &value)?;
                writeln!(out)?;
            } else {
                node::report::write_batches(&mut out, &value)?;
            }
        }
        Command::ClosePeriod {
            dir,
            category,
            period,
            declared,
        } => {
            let value = node::api::call(
                &dir,
                &node::api::ApiRequest::ClosePeriod {
                    category: category.clone(),
                    period: period.clone(),
                    declared,
                },
            )?;
            writeln!(
                out,
                "period {period} of {category} closed: manifest {} {}",
                value["manifest"].as_str().unwrap_or("?"),
                if value["new"] == true {
                    "stored and queued up"
                } else {
                    "was already stored"
                }
            )?;
        }
        Command::Reconcile { dir, peer } => {
            let value = node::api::call(&dir, &node::api::ApiRequest::Reconcile { peer })?;
            writeln!(
                out,
                "reconciliation started on {} link(s); results in the audit log and `credit-node status`",
                value["links"]
            )?;
        }
        Command::Report {
            dir,
            period,
            category,
            format,
        } => {
            let request = node::api::ApiRequest::Report {
                period,
                category,
                format: format.clone(),
            };
            write_rendered(&mut out, &node::api::call(&dir, &request)?, &format)?;
        }
        Command::Progress {
            send:
                Some(ProgressCommand::Send {
                    dir,
                    period,
                    figures,
                }),
            ..
        } => {
            let figures = node::figures::read(&figures)?;
            let value = node::api::call(
                &dir,
                &node::api::ApiRequest::ProgressSend {
                    period: period.clone(),
                    figures,
                },
            )?;
            writeln!(
                out,
                "progress report for {period}: {} {}; it travels to the national platform like a batch (`credit-node progress --dir {}` lists it)",
                value["report"].as_str().unwrap_or("?"),
                if value["new"] == true {
                    "signed, durable and queued up"
                } else {
                    "was already stored"
                },
                dir.display()
            )?;
        }
        Command::Progress {
            send: None,
            dir,
            period,
            format,
        } => {
            let request = node::api::ApiRequest::Progress {
                period,
                format: format.clone(),
            };
            write_rendered(&mut out, &node::api::call(&dir, &request)?, &format)?;
        }
        Command::Feedback {
            dir,
            origin,
            category,
            period,
            all,
            json,
            csv,
        } => {
            let format = if json {
                "json"
            } else if csv {
                "csv"
            } else {
                "table"
            };
            let request = node::api::ApiRequest::Feedback {
                origin,
                category,
                period,
                all,
                format: format.to_owned(),
            };
            write_rendered(&mut out, &node::api::call(&dir, &request)?, format)?;
        }
        Command::Records {
            dir,
            category,
            period,
            origin,
            key,
            json,
        } => {
            let format = if json { "json" } else { "table" };
            let request = node::api::ApiRequest::Records {
                category,
                period,
                origin,
                key,
                format: format.to_owned(),
            };
            write_rendered(&mut out, &node::api::call(&dir, &request)?, format)?;
        }
        Command::Correct {
            file,
            batch,
            dir,
            whole,
            json,
        } => quality::correct(&mut out, &file, &batch, &dir, whole.as_deref(), json)?,
        Command::Withdraw {
            dir,
            category,
            period,
            keys,
            keys_file,
            reason,
            json,
        } => quality::withdraw(
            &mut out,
            quality::WithdrawArgs {
                dir: &dir,
                category: &category,
                period,
                keys,
                keys_file: keys_file.as_ref(),
                reason: &reason,
            },
            json,
        )?,
        Command::Audit { dir } => {
            let value = node::api::call(&dir, &node::api::ApiRequest::VerifyAudit)?;
            writeln!(
                out,
                "audit log verified: {} entries, hash chain intact",
                value["entries"]
            )?;
        }
        Command::Topology(command) => return topology_command(&mut out, command),
        Command::Demo { keep } => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(demo::live_demo(&mut out, keep))?;
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Reads a topology file; its problems, one per line with file, line and column, are the error.
/// A view the node rendered: the JSON itself for `json`, else the text it made.
fn write_rendered(
    out: &mut impl Write,
    value: &serde_json::Value,
    format: &str,
) -> anyhow::Result<()> {
    if format == "json" {
        serde_json::to_writer_pretty(&mut *out, value)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", value["text"].as_str().unwrap_or(""))?;
    }
    Ok(())
}

fn read_topology_file(path: &std::path::Path) -> anyhow::Result<topology::Topology> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    topology::Topology::parse(&text).map_err(|errors| {
        let lines: Vec<String> = errors
            .iter()
            .map(|e| format!("{}:{}:{}: {}", path.display(), e.line, e.column, e.message))
            .collect();
        anyhow::anyhow!("{} problem(s):\n{}", errors.len(), lines.join("\n"))
    })
}

fn topology_command(
    out: &mut impl Write,
    command: TopologyCommand,
) -> anyhow::Result<std::process::ExitCode> {
    match command {
        TopologyCommand::Check { file } => {
            let topology = read_topology_file(&file)?;
            let mut roles = std::collections::BTreeMap::new();
            for node in topology.nodes() {
                *roles.entry(node.role.to_string()).or_insert(0) += 1;
            }
            let roles: Vec<String> = roles
                .into_iter()
                .map(|(role, n)| format!("{n} {role}"))
                .collect();
            writeln!(
                out,
                "{}: ok — version {}, {} nodes ({}), {} legacy link(s), {} schedule(s)",
                file.display(),
                topology.version,
                topology.len(),
                roles.join(", "),
                topology.legacy_links().len(),
                topology.schedules().len()
            )?;
        }
        TopologyCommand::Plan { old, new } => {
            let old = read_topology_file(&old)?;
            let new = read_topology_file(&new)?;
            match topology::plan(&old, &new) {
                Ok(plan) => write!(out, "{plan}")?,
                Err(refusal) => {
                    writeln!(out, "{refusal}")?;
                    return Ok(std::process::ExitCode::from(1));
                }
            }
        }
        TopologyCommand::Generate {
            province,
            base_port,
        } => {
            let topology = topology::generate(province, base_port)?;
            out.write_all(
                topology
                    .render_with_header(topology::GENERATED_HEADER)
                    .as_bytes(),
            )?;
        }
        TopologyCommand::Status { dir, json } => {
            let value = node::api::call(&dir, &node::api::ApiRequest::Migration)?;
            if json {
                serde_json::to_writer_pretty(&mut *out, &value)?;
                writeln!(out)?;
            } else if value["legacy_link"] == true {
                writeln!(
                    out,
                    "node {}: migration phase {} — waiting for {}\n  legacy link {}, new batches go by {}",
                    value["node"].as_str().unwrap_or("?"),
                    value["phase"].as_str().unwrap_or("?"),
                    value["waiting_for"].as_str().unwrap_or("?"),
                    if value["legacy_open"] == true {
                        "open"
                    } else {
                        "closed"
                    },
                    match (
                        value["sends_on_legacy"] == true,
                        value["sends_on_new_path"] == true
                    ) {
                        (true, true) => "both paths",
                        (true, false) => "the legacy link",
                        (false, true) => "the new path",
                        (false, false) => "no path (check the topology)",
                    }
                )?;
            } else {
                writeln!(
                    out,
                    "node {}: no legacy link, nothing to migrate",
                    value["node"].as_str().unwrap_or("?")
                )?;
            }
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// `run --http`: where the dashboard listens, or nowhere.
#[derive(Debug, Clone, Copy)]
enum HttpListen {
    At(std::net::SocketAddr),
    Off,
}

fn parse_http(text: &str) -> Result<HttpListen, String> {
    if text == "off" {
        return Ok(HttpListen::Off);
    }
    text.parse().map(HttpListen::At).map_err(|e| {
        format!(
            "{e}: give an address and port such as 127.0.0.1:9464 (port 0: any free port), or `off`"
        )
    })
}

async fn run_node(dir: PathBuf, topology: PathBuf, http: HttpListen) -> anyhow::Result<()> {
    // The dashboard's address is taken before the node starts: an address in use stops the
    // start with the reason, not a node running without the view its operator asked for.
    let listener = match http {
        HttpListen::At(addr) => Some(node::http::bind(addr).await?),
        HttpListen::Off => None,
    };
    // One node per process: the recorder's values are this node's. Only for a node that
    // serves /metrics.
    if listener.is_some()
        && let Err(e) = node::metrics::install()
    {
        tracing::warn!(error = %e, "Prometheus metrics are off");
    }
    let node = node::runtime::start(&dir, &topology, protocol::sync::SyncConfig::default()).await?;
    if let Some(listener) = listener {
        // Known before the operator API answers: `status` shows it from the first request.
        let _ = node.http.set(listener.local_addr()?);
        let http_node = node.clone();
        tokio::spawn(async move {
            if let Err(e) = node::http::serve(http_node, listener).await {
                tracing::error!(error = %e, "the dashboard stopped; the node goes on syncing");
            }
        });
    }
    let api_node = node.clone();
    let api_dir = dir.clone();
    tokio::spawn(async move {
        if let Err(e) = node::api::serve(api_node, &api_dir).await {
            tracing::error!(error = %format!("{e:#}"), "operator API did not start; the node syncs, but no command reaches it");
        }
    });
    tokio::spawn(node::runtime::reload_on_sighup(node.clone()));
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await?;
    tracing::info!("stopping");
    node::runtime::shutdown(&node).await;
    Ok(())
}

/// Raises the soft limit of open files to the hard one: a node holds a connection per link and
/// per operator command, and the usual soft limit (1,024) is far below the usual hard one.
fn raise_open_files_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let (Some(current), Some(maximum)) = (limit.current, limit.maximum) else {
        return;
    };
    if current < maximum {
        let raised = Rlimit {
            current: Some(maximum),
            maximum: Some(maximum),
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => tracing::debug!(from = current, to = maximum, "raised the open-files limit"),
            Err(e) => {
                tracing::warn!(error = %e, current, maximum, "cannot raise the open-files limit")
            }
        }
    }
}

/// 0 when every row was accepted, 1 when some rows were refused (the good ones are batched).
fn exit_for(report: &IngestReport) -> std::process::ExitCode {
    if report.rejected.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    }
}

/// Warns when submitted batches (the node's answers, `submitted`) publish records this node
/// had published already in batches they do not correct: whichever batch has the higher id
/// holds the current version, so changed rows sent again this way may change nothing.
fn write_republished(
    out: &mut impl Write,
    submitted: &[serde_json::Value],
    file: &std::path::Path,
    batch: &BatchArgs,
) -> anyhow::Result<()> {
    let mut found = submitted
        .iter()
        .filter_map(|answer| answer.get("republished"));
    let Some(first) = found.next() else {
        return Ok(());
    };
    let (mut records, mut not_current) = (0, 0);
    for republished in std::iter::once(first).chain(found) {
        records += republished["records"].as_u64().unwrap_or(0);
        not_current += republished["not_current"].as_u64().unwrap_or(0);
    }
    writeln!(
        out,
        "warning: {records} record(s) of {file} were published already by this node in batches these do not correct (first: record {} in batch {}); each is now published twice, and for {not_current} of them the earlier version stays current. To change published records, send them as a correction: credit-node correct {file} --category {} --period {} --dir <node>",
        first["first"]["key"].as_str().unwrap_or("?"),
        first["first"]["batch"].as_str().unwrap_or("?"),
        batch.category,
        batch.period,
        file = file.display(),
    )?;
    Ok(())
}
