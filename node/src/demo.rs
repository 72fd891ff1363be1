//! `credit-node demo`: the Jieyang example. For now it generates a month of water and gas fee
//! exports for each Jieyang county and shows the batches and refused rows ingestion makes.

use std::io::Write;
use std::path::Path;

use protocol::{DesensitizeKey, NodeId, NodeKey, Period, Registry};

use crate::ingest::{Encoding, IngestOptions, ingest_bytes};

/// Jieyang's counties, from shared/data/guangdong-divisions.csv.
pub const JIEYANG_COUNTIES: &[(&str, &str)] = &[
    ("445202", "榕城区"),
    ("445203", "揭东区"),
    ("445222", "揭西县"),
    ("445224", "惠来县"),
    ("445281", "普宁市"),
];

pub fn ingest_demo(out: &mut impl Write) -> anyhow::Result<()> {
    let period = Period::parse("2022-05")?;
    let network_key = DesensitizeKey(crate::identity::random32()?);
    for (code, name) in JIEYANG_COUNTIES {
        let origin = NodeId::parse(code)?;
        let key = NodeKey::from_seed(crate::identity::random32()?);
        for category in ["water_fee", "gas_fee"] {
            let schema = Registry::builtin()
                .by_name(category)
                .expect("built-in category");
            let file = crate::sample::sample_csv(
                schema,
                origin,
                period,
                2000,
                3,
                u64::from(origin.code()),
            );
            let options = IngestOptions {
                schema,
                origin,
                period,
                encoding: Encoding::Utf8,
                desensitize_key: &network_key,
                node_key: &key,
                batch_records_max: 50_000,
            };
            let label = format!("{code} {name} {category} {period}");
            let report = ingest_bytes(Path::new(&label), file.text.as_bytes(), &options, |_| {})?;
            crate::report::write_ingest(out, &label, &report)?;
        }
    }
    Ok(())
}
