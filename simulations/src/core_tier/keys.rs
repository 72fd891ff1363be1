//! The core tier's signature seam: a keyed BLAKE3 "signature" stands in for Ed25519, so a
//! simulated year of a province (millions of signatures) costs seconds, not minutes.
//!
//! Each node has a secret; its topology key is a real Ed25519 public key (the generator's
//! placeholder), mapped to that secret in a table only the verifier holds. A signature is
//! BLAKE3 keyed with the secret over `context ‖ 0 ‖ message`. A simulated forger never holds
//! another node's secret, so a forgery fails verification exactly as it would with Ed25519.

use std::collections::HashMap;
use std::sync::Arc;

use protocol::{NodeId, PublicKey, Signature, Signer, Verifier};

/// A node's secret in the simulation, derived from the run's seed and the node.
pub fn secret(seed: u64, node: NodeId, generation: u32) -> [u8; 32] {
    let mut material = seed.to_le_bytes().to_vec();
    material.extend(node.to_be_bytes());
    material.extend(generation.to_le_bytes());
    blake3::derive_key("credit-network/sim/secret/v1", &material)
}

/// The public key that stands for a secret: a valid Ed25519 key (from the secret as seed),
/// so the topology accepts it.
pub fn public_of(secret: &[u8; 32]) -> PublicKey {
    protocol::NodeKey::from_seed(*secret).public()
}

fn sign(secret: &[u8; 32], context: &[u8], message: &[u8]) -> Signature {
    let mut hasher = blake3::Hasher::new_keyed(secret);
    hasher.update(context);
    hasher.update(&[0]);
    hasher.update(message);
    let mut signature = [0u8; 64];
    hasher.finalize_xof().fill(&mut signature);
    Signature(signature)
}

/// A node's signer in the simulation.
#[derive(Clone)]
pub struct SimSigner {
    secret: [u8; 32],
    public: PublicKey,
}

impl SimSigner {
    pub fn new(secret: [u8; 32], public: PublicKey) -> SimSigner {
        SimSigner { secret, public }
    }
}

impl Signer for SimSigner {
    fn public(&self) -> PublicKey {
        self.public
    }

    fn sign(&self, context: &[u8], message: &[u8]) -> Signature {
        sign(&self.secret, context, message)
    }
}

/// Every pinned key's secret: what lets the simulated verifier check keyed-hash signatures.
#[derive(Clone, Default)]
pub struct SimVerifier {
    secrets: Arc<HashMap<PublicKey, [u8; 32]>>,
}

impl SimVerifier {
    pub fn new(secrets: HashMap<PublicKey, [u8; 32]>) -> SimVerifier {
        SimVerifier {
            secrets: Arc::new(secrets),
        }
    }
}

impl Verifier for SimVerifier {
    fn verify(
        &self,
        key: &PublicKey,
        context: &[u8],
        message: &[u8],
        signature: &Signature,
    ) -> bool {
        self.secrets
            .get(key)
            .is_some_and(|secret| sign(secret, context, message) == *signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_under_its_own_key() {
        let a = secret(1, NodeId::parse("445281").unwrap(), 0);
        let b = secret(1, NodeId::parse("445202").unwrap(), 0);
        let (pa, pb) = (public_of(&a), public_of(&b));
        let verifier = SimVerifier::new([(pa, a), (pb, b)].into_iter().collect());
        let signature = SimSigner::new(a, pa).sign(b"ctx", b"message");
        assert!(verifier.verify(&pa, b"ctx", b"message", &signature));
        assert!(!verifier.verify(&pb, b"ctx", b"message", &signature));
        assert!(!verifier.verify(&pa, b"ctx", b"massage", &signature));
        assert!(!verifier.verify(&pa, b"other", b"message", &signature));
    }
}
