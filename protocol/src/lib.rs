//! The credit network's data model and wire: identifiers, category schemas and validation,
//! canonical hash-verified batches, signatures, wire frames and set reconciliation.
//!
//! Invariant: this crate does no IO. It knows nothing of sockets, files, tokio, quinn, sled,
//! clocks or randomness; time and key material arrive as arguments. That is what lets the same
//! code run in production and in deterministic simulation.

pub mod audit;
pub mod batch;
pub mod ids;
pub mod manifest;
pub mod progress;
pub mod reconcile;
pub mod record;
pub mod schema;
pub mod sync;
pub mod wire;

pub use batch::{
    Batch, BatchHeader, Ed25519, NodeKey, PublicKey, Signature, SignedBatch, Signer, Verifier,
};
pub use ids::{BatchId, Category, NodeId, Period, Uscc};
pub use manifest::{Content, ContentKind, Manifest, ManifestEntry, Summary};
pub use progress::{OperatorFigures, ProgressReport};
pub use record::{DesensitizeKey, Problem, Record, RecordKey, RecordRef, Text, Value, ValueRef};
pub use schema::{Registry, Schema};
