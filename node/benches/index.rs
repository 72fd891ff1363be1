//! The record index's cost per batch as a period fills.
//!
//! A receiver stores every data batch with its record index and audit (`core::quality`: the
//! batch's keys, the aggregates of the cross-record rules, its findings). One origin's period
//! of one category may hold hundreds of batches (a county submitting every few hours, an
//! origin resending corrections); what the 200th batch costs is what this measures.
//!
//! `INDEX_BENCH_BATCHES` (200) water-fee batches of `INDEX_BENCH_BATCH_RECORDS` (1,000)
//! sample records, one origin, one period, signed as ingestion signs them, are stored one by
//! one in a fresh sled store as a city stores a county's batch: `core::assess_received`, then
//! `Store::insert_batch` with its update, then `Store::sync` (the node syncs before it
//! acknowledges). The same batches are then stored in another fresh store **without** the
//! index (the limit: insert and fsync alone, measured in the same run). Printed: per batch,
//! the mean over the first and the last tenth of the period and the largest, for both; the
//! index's share; the store's size on disk.
//!
//! Stores go under `BENCH_DIR` (default the system's temporary directory).
//!
//! Run: `cargo bench -p credit-node --bench index`. Under `cargo test` (no `--bench`
//! argument) it does nothing.

#![allow(clippy::print_stdout)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{CITY, COUNTY, PROVINCE, du, env_usize, node_id};
use node::store::Store;
use protocol::wire::{Receipt, Verdict};
use protocol::{Batch, Content, DesensitizeKey, NodeKey, Period, Registry, SignedBatch};

/// Each batch's time to store, in order: the index and audit (`assess_received`), the
/// insert, the fsync.
fn store_all(dir: &Path, batches: &[(SignedBatch, Batch)], indexed: bool) -> Vec<[Duration; 3]> {
    let (county, city, province) = (node_id(COUNTY), node_id(CITY), node_id(PROVINCE));
    let city_key = NodeKey::from_seed([7; 32]);
    let store = Store::open(dir).expect("open store");
    let registry = Registry::builtin();
    batches
        .iter()
        .map(|(signed, batch)| {
            let receipt = Receipt {
                receiver: city,
                batch: signed.id,
                origin: county,
                received_at_ms: 1,
                verdict: Verdict::Accepted { warnings: 0 },
            }
            .sign(&city_key);
            let start = Instant::now();
            let update = indexed.then(|| {
                node::core::assess_received(&store, registry, city, signed.id, batch, None)
                    .expect("record index and audit")
            });
            let assessed = start.elapsed();
            let new = store
                .insert_batch(
                    signed,
                    &Content::Data(batch.clone()),
                    county,
                    &receipt,
                    None,
                    &[province],
                    update.as_ref(),
                    1,
                )
                .expect("insert");
            assert!(new, "each batch is new");
            let inserted = start.elapsed();
            store.sync().expect("sync");
            let synced = start.elapsed();
            [assessed, inserted - assessed, synced - inserted]
        })
        .collect()
}

fn ms(time: Duration) -> f64 {
    time.as_secs_f64() * 1e3
}

fn mean_ms(times: &[Duration]) -> f64 {
    ms(times.iter().sum::<Duration>()) / times.len().max(1) as f64
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    common::init_logs();
    let count = env_usize("INDEX_BENCH_BATCHES", 200).max(10);
    let per_batch = env_usize("INDEX_BENCH_BATCH_RECORDS", 1_000).max(1);
    let key = NodeKey::from_seed([3; 32]);
    let network_key = DesensitizeKey([5; 32]);
    let period = Period::parse("2026-05").expect("period");
    let built = Instant::now();
    let batches: Vec<(SignedBatch, Batch)> = common::water_fee_batches(
        node_id(COUNTY),
        period,
        count * per_batch,
        per_batch,
        11,
        &key,
        &network_key,
    )
    .into_iter()
    .map(|signed| {
        let batch = Batch::decode(&signed.bytes).expect("decodes");
        (signed, batch)
    })
    .collect();
    println!(
        "index bench: {} water_fee batches of {per_batch} records, one origin and period ({:.1} MB, built in {:.1} s)",
        batches.len(),
        batches.iter().map(|(s, _)| s.bytes.len()).sum::<usize>() as f64 / 1e6,
        built.elapsed().as_secs_f64()
    );
    let root = std::env::var_os("BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let dir = tempfile::tempdir_in(root).expect("bench directory");
    let tenth = batches.len().div_ceil(10);
    let mut rows = Vec::new();
    for indexed in [true, false] {
        let at = dir.path().join(if indexed { "indexed" } else { "plain" });
        let times = store_all(&at, &batches, indexed);
        rows.push((indexed, times, du(&at).1));
    }
    println!(
        "{:<44} {:>12} {:>12} {:>8} {:>10} {:>10} {:>10}",
        "per batch (ms)", "first tenth", "last tenth", "ratio", "max", "total s", "on disk MB"
    );
    for (indexed, times, disk) in &rows {
        let phases: &[(&str, &[usize])] = if *indexed {
            &[
                ("with the index and audit", &[0, 1, 2]),
                ("  of which index and audit (assess)", &[0]),
                ("  of which insert", &[1]),
                ("  of which fsync", &[2]),
            ]
        } else {
            &[("without (insert + fsync: the limit)", &[1, 2])]
        };
        for (name, parts) in phases {
            let each: Vec<Duration> = times
                .iter()
                .map(|t| parts.iter().map(|p| t[*p]).sum())
                .collect();
            let (first, last) = (
                mean_ms(&each[..tenth]),
                mean_ms(&each[each.len() - tenth..]),
            );
            println!(
                "{name:<44} {first:>12.1} {last:>12.1} {:>8.2} {:>10.1} {:>10.2} {:>10}",
                last / first,
                ms(each.iter().copied().max().unwrap_or_default()),
                each.iter().sum::<Duration>().as_secs_f64(),
                if parts.len() > 1 {
                    format!("{:.1}", *disk as f64 / 1e6)
                } else {
                    String::new()
                },
            );
        }
    }
    let total = |n: usize| rows[n].1.iter().flatten().sum::<Duration>().as_secs_f64();
    println!(
        "storing with the index and audit: {:.1}x the time of insert + fsync alone, over the whole period",
        total(0) / total(1)
    );
}
