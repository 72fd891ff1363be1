//! The credit-node library: ingestion of source-unit exports, node identity, reports, and the
//! demo. The binary in `main.rs` is a thin CLI over it.

pub mod api;
pub mod cluster;
pub mod core;
pub mod demo;
pub mod identity;
pub mod ingest;
pub mod ledger_view;
pub mod progress;
pub mod report;
pub mod runtime;
pub mod sample;
pub mod store;
pub mod transport;
