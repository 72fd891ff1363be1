//! The credit-node library: a node's decisions (`core`), its store, the runtime that executes
//! the core over QUIC, ingestion of source-unit exports, node identity, the operator API, and
//! the renderings the CLI prints. The binary (`cli/`, package `credit-cli`) is a thin CLI over
//! it. Nothing here exists only for the demo or the tests: the sample data generator
//! (`sample/`) and the cluster of real processes (`cluster/`) are crates of their own.

pub mod api;
pub mod core;
pub mod figures;
pub mod http;
pub mod identity;
pub mod ingest;
pub mod ledger_view;
pub mod metrics;
pub mod progress;
pub mod progress_view;
pub mod quality_view;
pub mod report;
pub mod runtime;
pub mod store;
pub mod transport;
