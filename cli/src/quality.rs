//! The data-quality commands: `feedback`, `records`, `correct` and `withdraw`. A correction or
//! withdrawal is a batch like any other (signed by this node, sent up, receipted at every
//! hop) that names the batch it supersedes; this file only works out which batch that is for
//! each record (the node's own current version, asked over the operator API) and builds the
//! batches.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use node::api::{ApiRequest, call};
use node::identity::Identity;
use protocol::batch::{
    BATCH_FORMAT, BATCH_RECORDS_MAX, BatchHeader, WITHDRAWALS_MAX, Withdrawal, WithdrawalReason,
};
use protocol::{Batch, BatchId, Period, Record, RecordKey, SignedBatch};

use crate::{BatchArgs, ingest_with_progress, schema};

/// Where each key's current version is, as the node answers `Current`.
struct Holder {
    period: Period,
    batch: BatchId,
    withdrawn: bool,
}

fn holders(
    dir: &Path,
    category: &str,
    period: Option<Period>,
    keys: &[String],
) -> anyhow::Result<BTreeMap<String, Holder>> {
    let answer = call(
        dir,
        &ApiRequest::Current {
            category: category.to_owned(),
            period: period.map(|p| p.to_string()),
            keys: keys.to_vec(),
        },
    )?;
    let mut out = BTreeMap::new();
    for (key, holder) in answer["keys"].as_object().into_iter().flatten() {
        let period = Period::parse(holder["period"].as_str().unwrap_or_default())
            .context("the node answered an unreadable period")?;
        let batch = BatchId::parse_hex(holder["batch"].as_str().unwrap_or_default())
            .context("the node answered an unreadable batch id")?;
        out.insert(
            key.clone(),
            Holder {
                period,
                batch,
                withdrawn: holder["withdrawn"].as_bool().unwrap_or(false),
            },
        );
    }
    Ok(out)
}

/// Seals and submits `batches` in order; says which were stored if one fails.
fn submit_all(
    dir: &Path,
    identity: &Identity,
    batches: Vec<Batch>,
) -> anyhow::Result<Vec<SignedBatch>> {
    let mut done: Vec<SignedBatch> = Vec::new();
    for batch in batches {
        let signed = SignedBatch::seal(&batch, &identity.key)?;
        if let Err(e) = call(dir, &ApiRequest::Submit(signed.clone())) {
            let stored: Vec<String> = done.iter().map(|b| b.id.to_hex()).collect();
            bail!(
                "batch {} was not accepted: {e:#}\n  stored before it: {}\n  fix the cause and run the command again: what is stored is not stored twice",
                signed.id,
                if stored.is_empty() {
                    "none".to_owned()
                } else {
                    stored.join(", ")
                }
            );
        }
        done.push(signed);
    }
    Ok(done)
}

fn header(
    identity: &Identity,
    category: &protocol::Category,
    period: Period,
    supersedes: BatchId,
    withdrawals: Vec<Withdrawal>,
) -> anyhow::Result<BatchHeader> {
    let schema = schema(category.as_str())?;
    Ok(BatchHeader {
        format: BATCH_FORMAT,
        origin: identity.id,
        category: category.clone(),
        schema_version: schema.version,
        period,
        supersedes: Some(supersedes),
        withdrawals,
    })
}

fn print_batches(
    out: &mut impl Write,
    json: bool,
    what: &str,
    batches: &[(SignedBatch, BatchId, usize, usize)],
    identity: &Identity,
) -> anyhow::Result<()> {
    if json {
        let list: Vec<serde_json::Value> = batches
            .iter()
            .map(|(signed, supersedes, records, withdrawals)| {
                serde_json::json!({
                    "batch": signed.id.to_hex(),
                    "supersedes": supersedes.to_hex(),
                    "records": records,
                    "withdrawals": withdrawals,
                })
            })
            .collect();
        serde_json::to_writer_pretty(&mut *out, &serde_json::json!({ what: list }))?;
        writeln!(out)?;
    } else {
        for (signed, supersedes, records, withdrawals) in batches {
            writeln!(
                out,
                "{what} batch {}  supersedes {}  {records} record(s), {withdrawals} withdrawal(s)",
                signed.id,
                supersedes.short()
            )?;
        }
        writeln!(
            out,
            "submitted {} batch(es) to node {}; the open feedback items they answer close when the parent has checked them (`credit-node feedback --dir DIR`)",
            batches.len(),
            identity.id
        )?;
    }
    Ok(())
}

/// `credit-node correct`: the file's records replace the current versions with the same keys;
/// with `--batch`, the records of that batch the file leaves out are withdrawn (reason
/// `error`), so the file replaces the whole batch.
pub fn correct(
    out: &mut impl Write,
    file: &Path,
    args: &BatchArgs,
    dir: &Path,
    whole: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let schema = schema(&args.category)?;
    let identity = Identity::load(dir)?;
    let profile = call(
        dir,
        &ApiRequest::Profile {
            category: args.category.clone(),
        },
    )?;
    let left_out: Vec<String> = profile["left_out"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|name| name.as_str().map(str::to_owned))
        .collect();
    // A correction is usually a few rows: its records are held until every one is known to
    // correct a published record, then the corrections are built.
    let mut records: Vec<Record> = Vec::new();
    let report = ingest_with_progress(
        file,
        schema,
        args,
        &identity,
        &left_out,
        "collecting the corrected records",
        |signed| {
            records.extend(Batch::decode(&signed.bytes)?.records);
            Ok(())
        },
    )??;
    if !report.rejected.is_empty() {
        node::report::write_ingest(out, &file.display().to_string(), &report)?;
        bail!(
            "{}: {} row(s) refused (listed above): a correction is sent whole or not at all; fix them and run correct again",
            file.display(),
            report.rejected.len()
        );
    }
    let keys: Vec<String> = records.iter().map(|r| r.key.0.clone()).collect();
    let found = holders(dir, &args.category, Some(args.period), &keys)?;
    let never: Vec<&str> = keys
        .iter()
        .filter(|k| !found.contains_key(*k))
        .map(String::as_str)
        .collect();
    if !never.is_empty() {
        bail!(
            "{}: {} record(s) were never published by this node for {} {}, so there is nothing to correct: {}{}\n  submit new records with `credit-node submit`",
            file.display(),
            never.len(),
            args.category,
            args.period,
            never[..never.len().min(10)].join(", "),
            if never.len() > 10 { ", …" } else { "" }
        );
    }
    // One correction per batch holding current versions (a record's chain of versions must
    // go through the version it replaces).
    let mut groups: BTreeMap<BatchId, (Vec<Record>, Vec<Withdrawal>)> = BTreeMap::new();
    for record in records {
        let holder = &found[&record.key.0];
        groups.entry(holder.batch).or_default().0.push(record);
    }
    if let Some(whole) = whole {
        let id = BatchId::parse_hex(whole).with_context(|| format!("--batch {whole}"))?;
        let answer = call(dir, &ApiRequest::BatchKeys { batch: id.to_hex() })?;
        if answer["held"] != serde_json::Value::Bool(true) {
            bail!(
                "--batch {whole}: this node does not hold that batch: see `credit-node batches --dir DIR`"
            );
        }
        if answer["origin"].as_str() != Some(&identity.id.to_string())
            || answer["category"].as_str() != Some(&args.category)
            || answer["period"].as_str() != Some(&args.period.to_string())
        {
            bail!(
                "--batch {whole} is a batch of {} {} {}, not this node's {} {}",
                answer["origin"].as_str().unwrap_or("?"),
                answer["category"].as_str().unwrap_or("?"),
                answer["period"].as_str().unwrap_or("?"),
                args.category,
                args.period
            );
        }
        let in_file: std::collections::BTreeSet<&str> = keys.iter().map(String::as_str).collect();
        for key in answer["keys"].as_array().into_iter().flatten() {
            let key = key.as_str().unwrap_or_default();
            if !in_file.contains(key) {
                groups.entry(id).or_default().1.push(Withdrawal {
                    key: RecordKey(key.to_owned()),
                    reason: WithdrawalReason::Error,
                });
            }
        }
    }
    let category = schema.category.clone();
    let mut batches = Vec::new();
    let mut shown = Vec::new();
    for (supersedes, (records, withdrawals)) in groups {
        let mut records = records;
        let mut withdrawals = withdrawals;
        while !records.is_empty() || !withdrawals.is_empty() {
            let take_records = records.len().min(BATCH_RECORDS_MAX);
            let take_withdrawals = withdrawals.len().min(WITHDRAWALS_MAX);
            let part: Vec<Record> = records.drain(..take_records).collect();
            let gone: Vec<Withdrawal> = withdrawals.drain(..take_withdrawals).collect();
            let counts = (part.len(), gone.len());
            let batch = Batch::new(
                header(&identity, &category, args.period, supersedes, gone)?,
                part,
            )?;
            shown.push((supersedes, counts));
            batches.push(batch);
        }
    }
    let signed = submit_all(dir, &identity, batches)?;
    let listed: Vec<_> = signed
        .into_iter()
        .zip(shown)
        .map(|(s, (sup, (r, w)))| (s, sup, r, w))
        .collect();
    print_batches(out, json, "correction", &listed, &identity)
}

/// `credit-node withdraw`: signed withdrawals of records this node published, one batch per
/// batch holding their current versions.
/// What `withdraw` was asked.
pub struct WithdrawArgs<'a> {
    pub dir: &'a Path,
    pub category: &'a str,
    pub period: Option<Period>,
    pub keys: Vec<String>,
    pub keys_file: Option<&'a PathBuf>,
    pub reason: &'a str,
}

pub fn withdraw(out: &mut impl Write, args: WithdrawArgs<'_>, json: bool) -> anyhow::Result<()> {
    let WithdrawArgs {
        dir,
        category,
        period,
        mut keys,
        keys_file,
        reason,
    } = args;
    let schema = schema(category)?;
    let identity = Identity::load(dir)?;
    let reason = node::quality_view::parse_reason(reason).with_context(|| {
        format!("--reason {reason}: give expired (公示期满), repaired (信用修复) or error")
    })?;
    if let Some(path) = keys_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the keys file {}", path.display()))?;
        keys.extend(
            text.lines()
                .map(str::trim)
                .filter(|line| !line.is_empty() && !line.starts_with('#'))
                .map(str::to_owned),
        );
    }
    if keys.is_empty() {
        bail!(
            "no record keys given: name them with --key K (repeatable) or --keys-file FILE (one per line)"
        );
    }
    keys.sort();
    keys.dedup();
    let found = holders(dir, category, period, &keys)?;
    let mut problems = Vec::new();
    let mut groups: BTreeMap<(Period, BatchId), Vec<Withdrawal>> = BTreeMap::new();
    for key in &keys {
        match found.get(key) {
            None => problems.push(format!(
                "{key}: never published by node {} in {category}{}",
                identity.id,
                period.map_or_else(String::new, |p| format!(" {p}"))
            )),
            Some(holder) if holder.withdrawn => problems.push(format!(
                "{key}: already withdrawn (batch {})",
                holder.batch.short()
            )),
            Some(holder) => groups
                .entry((holder.period, holder.batch))
                .or_default()
                .push(Withdrawal {
                    key: RecordKey(key.clone()),
                    reason: reason.clone(),
                }),
        }
    }
    if !problems.is_empty() {
        bail!(
            "nothing withdrawn: {} key(s) cannot be withdrawn:\n  {}\n  check the keys with `credit-node records --dir DIR --category {category} --period P`",
            problems.len(),
            problems.join("\n  ")
        );
    }
    let mut batches = Vec::new();
    let mut shown = Vec::new();
    for ((period, supersedes), withdrawals) in groups {
        for chunk in withdrawals.chunks(WITHDRAWALS_MAX) {
            batches.push(Batch::new(
                header(
                    &identity,
                    &schema.category,
                    period,
                    supersedes,
                    chunk.to_vec(),
                )?,
                Vec::new(),
            )?);
            shown.push((supersedes, chunk.len()));
        }
    }
    let signed = submit_all(dir, &identity, batches)?;
    let listed: Vec<_> = signed
        .into_iter()
        .zip(shown)
        .map(|(s, (sup, w))| (s, sup, 0, w))
        .collect();
    print_batches(out, json, "withdrawal", &listed, &identity)
}
