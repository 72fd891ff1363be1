//! Helpers the benchmarks share (each bench includes this module with `mod common;`; not every
//! bench uses every helper).

#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;

use protocol::NodeId;

/// `name` from the environment as a positive whole number (`_` allowed as a separator), or
/// `default` when unset; anything else stops the bench with the reason.
pub fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Err(_) => default,
        Ok(text) => text
            .trim()
            .replace('_', "")
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .unwrap_or_else(|| panic!("{name}={text:?}: expected a positive whole number")),
    }
}

/// A field of `/proc/self/status` in KiB (Linux), if known.
pub fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// UDP datagrams dropped for a full socket receive buffer, machine-wide (`/proc/net/snmp`).
pub fn udp_drops() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next()?, udp.next()?);
    let column = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    values.split_whitespace().nth(column)?.parse().ok()
}

/// A UDP port on 127.0.0.1 free a moment ago.
pub fn free_udp_port() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port on 127.0.0.1")
}

pub fn node_id(text: &str) -> NodeId {
    NodeId::parse(text).expect("valid node id")
}

/// `1234567.4` → `1,234,567`.
pub fn grouped(n: f64) -> String {
    let digits = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Water-fee batches of `rows` sample records (generated from `seed`) from `origin` for
/// `period`, at most `per_batch` records each, signed by `key`, as ingestion makes them.
pub fn water_fee_batches(
    origin: NodeId,
    period: protocol::Period,
    rows: usize,
    per_batch: usize,
    seed: u64,
    key: &protocol::NodeKey,
    network_key: &protocol::DesensitizeKey,
) -> Vec<protocol::SignedBatch> {
    use node::ingest::{Encoding, IngestOptions, ingest_bytes};
    let schema = protocol::Registry::builtin()
        .by_name("water_fee")
        .expect("water_fee schema is built in");
    let sample = sample::sample_csv(schema, origin, period, rows, 0, seed);
    let options = IngestOptions {
        schema,
        origin,
        period,
        encoding: Encoding::Utf8,
        desensitize_key: network_key,
        node_key: key,
        batch_records_max: per_batch,
        left_out: &[],
    };
    let report = ingest_bytes(
        std::path::Path::new("bench/water_fee.csv"),
        sample.text.as_bytes(),
        &options,
        |_| {},
    )
    .expect("sample ingests");
    assert_eq!(report.records, rows as u64, "every sample row is a record");
    report.batches
}

/// The nodes' logs on stderr when `RUST_LOG` is set.
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
}

/// The header of a first data batch (no correction, no withdrawal) of `schema`'s category.
pub fn fresh_header(
    origin: NodeId,
    schema: &protocol::Schema,
    period: protocol::Period,
) -> protocol::batch::BatchHeader {
    protocol::batch::BatchHeader {
        format: protocol::batch::BATCH_FORMAT,
        origin,
        category: schema.category.clone(),
        schema_version: schema.version,
        period,
        supersedes: None,
        withdrawals: Vec::new(),
    }
}

pub const PROVINCE: &str = "440000";
pub const CITY: &str = "445200";
pub const COUNTY: &str = "445281";

/// Identities for a province, a city and a county sharing one network key, in directories
/// under `root`, and a national platform's key (the national platform is never started).
pub struct Chain {
    pub root: tempfile::TempDir,
    pub province: node::identity::Identity,
    pub city: node::identity::Identity,
    pub county: node::identity::Identity,
    national: protocol::PublicKey,
}

impl Chain {
    pub fn create() -> Chain {
        use node::identity::{Identity, random32};
        let root = tempfile::tempdir().expect("temp dir");
        let dir = |id: &str| root.path().join(id);
        let province =
            Identity::create(&dir(PROVINCE), node_id(PROVINCE), None).expect("province identity");
        let network = province.network_key.0;
        let city =
            Identity::create(&dir(CITY), node_id(CITY), Some(network)).expect("city identity");
        let county = Identity::create(&dir(COUNTY), node_id(COUNTY), Some(network))
            .expect("county identity");
        let national = protocol::NodeKey::from_seed(random32().expect("random")).public();
        Chain {
            root,
            province,
            city,
            county,
            national,
        }
    }

    /// Writes `root/file`: the national platform, the province, the city and the county, each
    /// on a UDP port of 127.0.0.1 free a moment ago (each call gives other ports).
    pub fn write_topology(&self, file: &str) -> std::path::PathBuf {
        use topology::{Node as TopologyNode, Role, Topology};
        let entry = |id: NodeId, name: &str, parent: Option<NodeId>, key: protocol::PublicKey| {
            TopologyNode {
                id,
                name: name.to_owned(),
                role: Role::of_id(id),
                parent,
                address: free_udp_port(),
                public_key: key,
            }
        };
        let nodes = vec![
            entry(NodeId::NATIONAL, "全国平台", None, self.national),
            entry(
                self.province.id,
                "广东省",
                Some(NodeId::NATIONAL),
                self.province.public(),
            ),
            entry(
                self.city.id,
                "揭阳市",
                Some(self.province.id),
                self.city.public(),
            ),
            entry(
                self.county.id,
                "普宁市",
                Some(self.city.id),
                self.county.public(),
            ),
        ];
        let topology = Topology::from_nodes(1, nodes).unwrap_or_else(|errors| {
            panic!(
                "bench topology invalid: {}",
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        });
        let path = self.root.path().join(file);
        std::fs::write(&path, topology.render()).expect("write topology");
        path
    }
}

/// (files, apparent bytes, allocated bytes) under `dir`.
pub fn du(dir: &Path) -> (u64, u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut total = (0, 0, 0);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return total;
    };
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            let (f, a, b) = du(&entry.path());
            total = (total.0 + f, total.1 + a, total.2 + b);
        } else {
            total = (
                total.0 + 1,
                total.1 + meta.len(),
                total.2 + meta.blocks() * 512,
            );
        }
    }
    total
}
