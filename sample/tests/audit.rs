//! The audit rules must not cry wolf: a clean sample export of every category, as the demo,
//! the simulator and the tests send it, raises no audit finding. (A rule that flagged
//! ordinary data would bury the real findings in feedback nobody reads.)

use credit_sample::sample_csv;
use protocol::audit::audit;
use protocol::batch::{BATCH_FORMAT, BatchHeader};
use protocol::{Batch, BatchId, DesensitizeKey, NodeId, Period, Registry};

#[test]
fn a_clean_sample_export_of_every_category_raises_no_finding() {
    let origin = NodeId::parse("445281").unwrap();
    let period = Period::parse("2022-05").unwrap();
    let key = DesensitizeKey([7; 32]);
    let mut audited = 0;
    for schema in Registry::builtin().iter() {
        for seed in 1..=3 {
            let file = sample_csv(schema, origin, period, 500, 0, seed);
            let mut reader = csv::Reader::from_reader(file.text.as_bytes());
            let records: Vec<_> = reader
                .records()
                .map(|row| {
                    let row = row.unwrap();
                    let raw: Vec<Option<&str>> = row.iter().map(Some).collect();
                    schema.validate(&raw, period, &key).unwrap().record
                })
                .collect();
            let batch = Batch::new(
                BatchHeader {
                    format: BATCH_FORMAT,
                    origin,
                    category: schema.category.clone(),
                    schema_version: schema.version,
                    period,
                    supersedes: None,
                    withdrawals: Vec::new(),
                },
                records,
            )
            .unwrap();
            let id = BatchId::of(&batch.encode().unwrap());
            let findings = audit(schema, id, &batch, &[]);
            assert!(
                findings.is_empty(),
                "{} seed {seed}: {} finding(s), first: {}",
                schema.category,
                findings.len(),
                findings[0].problem
            );
            audited += 1;
        }
    }
    assert_eq!(audited, 3 * Registry::builtin().iter().count());
}
