//! What the simulated nodes submit: real batches of real records (made by the node's own
//! sample generator and ingestion, so every hop's validation passes), re-dated per period
//! and sealed with the simulation's signer.
//!
//! Ingestion is slow next to the simulation, so records are made once per (category, period)
//! and reused across origins: a batch's bytes differ by origin anyway, and so do their ids.

use std::collections::HashMap;
use std::path::Path;

use node::ingest::{Encoding, IngestOptions, ingest_bytes};
use node::sample::sample_csv;
use protocol::batch::{BATCH_FORMAT, Batch, BatchHeader};
use protocol::{
    Category, DesensitizeKey, NodeId, NodeKey, Period, Record, Registry, SignedBatch, Signer,
};

/// Records per simulated batch.
pub const RECORDS_PER_BATCH: usize = 3;

/// Makes batches, caching a template batch (its records) for each (category, period, salt).
#[derive(Default)]
pub struct Workload {
    templates: HashMap<(String, Period, u32), Batch>,
}

impl Workload {
    /// A sealed batch of `category` for `period` from `origin`; `salt` makes two batches of
    /// the same origin, category and period differ (a second submission the same day).
    pub fn batch(
        &mut self,
        category: &str,
        period: Period,
        origin: NodeId,
        salt: u32,
        signer: &dyn Signer,
    ) -> SignedBatch {
        let template = self
            .templates
            .entry((category.to_owned(), period, salt))
            .or_insert_with(|| {
                let (schema_version, records) = make_records(category, period, salt);
                let header = BatchHeader {
                    format: BATCH_FORMAT,
                    origin,
                    category: Category::parse(category).expect("a built-in category"),
                    schema_version,
                    period,
                    supersedes: None,
                    withdrawals: Vec::new(),
                };
                Batch::new(header, records).expect("records valid by construction")
            });
        // Only the origin differs between the batches of a template: the records stay in
        // canonical order, as `Batch::new` left them.
        template.header.origin = origin;
        SignedBatch::seal_with(template, signer).expect("a small batch seals")
    }
}

fn make_records(category: &str, period: Period, salt: u32) -> (u32, Vec<Record>) {
    let registry = Registry::builtin();
    let schema = registry.by_name(category).expect("a built-in category");
    let origin = NodeId::parse("445281").expect("a valid id");
    let file = sample_csv(
        schema,
        origin,
        period,
        RECORDS_PER_BATCH,
        0,
        7 + u64::from(salt),
    );
    let key = NodeKey::from_seed([7; 32]);
    let options = IngestOptions {
        schema,
        origin,
        period,
        encoding: Encoding::Utf8,
        desensitize_key: &DesensitizeKey([3; 32]),
        node_key: &key,
        batch_records_max: RECORDS_PER_BATCH,
    };
    let report = ingest_bytes(Path::new("sim.csv"), file.text.as_bytes(), &options, |_| {})
        .expect("sample data ingests");
    let signed = report.batches.into_iter().next().expect("one batch");
    let batch = Batch::decode(&signed.bytes).expect("a batch we just made");
    (batch.header.schema_version, batch.records)
}
