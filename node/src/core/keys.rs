//! Keys over time, as a receiver judges them: which of a node's keys (current, retired,
//! revoked) made a signature, and whether that key could still sign at the moment that
//! matters — a batch's first arrival (proven by the first receiver's signed receipt), a
//! receipt's own date.
//!
//! Pure functions of the topology and the [`Verifier`] seam: the core, the operator API and
//! the simulator judge the same way.

use protocol::ids::{BatchId, NodeId};
use protocol::wire::SignedReceipt;
use protocol::{PublicKey, Signature, SignedBatch, Verifier};
use topology::{KeyState, Topology, admission::beijing_time};

/// Which key of `node` made `signature` over batch `id`: the current key is tried first.
/// `None` if no key the topology knows for `node` did.
pub fn batch_signer(
    topology: &Topology,
    node: NodeId,
    id: &BatchId,
    signature: &Signature,
    verifier: &dyn Verifier,
) -> Option<(PublicKey, KeyState)> {
    topology
        .keys_of(node)
        .into_iter()
        .find(|(key, _)| SignedBatch::id_signed_by(id, signature, key, verifier))
}

/// Whether `receipt` is signed by its receiver with a key that could sign it: the current
/// key, or a retired key for a receipt dated before the retirement. A revoked key proves
/// nothing new: whoever stole it can date a receipt as they like.
pub fn receipt_signed_validly(
    topology: &Topology,
    receipt: &SignedReceipt,
    verifier: &dyn Verifier,
) -> bool {
    let at = receipt.receipt.received_at_ms;
    topology
        .keys_of(receipt.receipt.receiver)
        .into_iter()
        .filter(|(_, state)| !matches!(state, KeyState::Revoked { .. }))
        .any(|(key, state)| state.signs_validly(Some(at)) && receipt.verify_with(&key, verifier))
}

/// How a batch's signature stands, for the operator and for the receive decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signed {
    /// By the origin's key `key` in state `state`, valid at the batch's first arrival.
    Valid { key: PublicKey, state: KeyState },
    /// By an ended key, and the first arrival is not proven before its end.
    Ended {
        key: PublicKey,
        state: KeyState,
        first_arrival_ms: Option<u64>,
    },
    /// By no key the topology knows for the origin.
    Unknown,
}

impl Signed {
    /// Judges `signature` over batch `id` of `origin`, first received at `first_arrival_ms`
    /// (`None`: not proven).
    pub fn judge(
        topology: &Topology,
        origin: NodeId,
        id: &BatchId,
        signature: &Signature,
        first_arrival_ms: Option<u64>,
        verifier: &dyn Verifier,
    ) -> Signed {
        match batch_signer(topology, origin, id, signature, verifier) {
            None => Signed::Unknown,
            Some((key, state)) if state.signs_validly(first_arrival_ms) => {
                Signed::Valid { key, state }
            }
            Some((key, state)) => Signed::Ended {
                key,
                state,
                first_arrival_ms,
            },
        }
    }

    pub fn is_valid(&self) -> bool {
        matches!(self, Signed::Valid { .. })
    }

    /// The key that signed, if the topology knows it.
    pub fn key(&self) -> Option<PublicKey> {
        match self {
            Signed::Valid { key, .. } | Signed::Ended { key, .. } => Some(*key),
            Signed::Unknown => None,
        }
    }

    /// `current`, `retired`, `revoked`, or `unknown`.
    pub fn key_state(&self) -> &'static str {
        match self {
            Signed::Valid { state, .. } | Signed::Ended { state, .. } => state.as_str(),
            Signed::Unknown => "unknown",
        }
    }

    /// Why a batch signed with an ended key is quarantined: what happened and what to do.
    pub fn quarantine_reason(&self, origin: NodeId) -> Option<String> {
        let Signed::Ended {
            key,
            state,
            first_arrival_ms,
        } = self
        else {
            return None;
        };
        let end = beijing_time(state.ended_at_ms().unwrap_or_default());
        let arrival = match first_arrival_ms {
            Some(at) => format!("first received {}", beijing_time(*at)),
            None => "no proof that it arrived anywhere earlier".to_owned(),
        };
        let key = &key.to_hex()[..16];
        Some(match state {
            KeyState::Revoked { .. } => format!(
                "signed with key {key}… of {origin}, revoked at {end} (compromised), and {arrival}: quarantined — kept for the operator, never forwarded; if {origin} really sent it, submit it again from {origin} with its current key"
            ),
            _ if first_arrival_ms.is_none() => format!(
                "signed with key {key}… of {origin}, retired at {end}, and {arrival}: quarantined, not receipted — the sender keeps it and sends it again with the receipt of its first receiver, which releases it"
            ),
            _ => format!(
                "signed with key {key}… of {origin}, retired at {end}, and {arrival}: quarantined — kept, never forwarded; restart {origin} with its current key: it re-signs what its parent has not acknowledged"
            ),
        })
    }
}
