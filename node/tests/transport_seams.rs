//! The transport's seams for simulation (`node::transport::TransportSeams`).
//!
//! Checks that the production seams carry no seed and read the system clock; that the seeded
//! seams replay the same bytes for the same seed, differ between seeds, and keep drawing
//! fresh bytes across configs made from clones; that the seeded X25519 (ring's key exchange
//! draws its keys from the OS, so the seams bring their own) agrees with ring's; and that
//! seeded server and client configs build. The end-to-end check, a TLS exchange over a
//! simulated network replayed from a seed, is `simulations/tests/quic_over_turmoil.rs`.

use std::sync::Arc;
use std::time::Duration;

use node::transport::{
    PeerPolicy, TransportSeams, client_config_with, endpoint_config, server_config_with,
};
use protocol::{NodeId, NodeKey, PublicKey};
use rustls::pki_types::UnixTime;

/// 2026-12-01T00:00:00Z, as a simulation's clock would say.
fn clock() -> Option<Duration> {
    Some(Duration::from_secs(1_796_083_200))
}

#[test]
fn seeded_x25519_agrees_with_ring() {
    let seams = TransportSeams::seeded([7; 32], clock);
    let provider = seams.crypto_provider();
    assert_eq!(provider.kx_groups.len(), 1);
    let seeded = provider.kx_groups[0];
    let ring = rustls::crypto::ring::kx_group::X25519;
    assert_eq!(seeded.name(), ring.name());
    for _ in 0..8 {
        let ours = seeded.start().unwrap();
        let theirs = ring.start().unwrap();
        let our_pub = ours.pub_key().to_vec();
        let their_pub = theirs.pub_key().to_vec();
        let a = ours.complete(&their_pub).unwrap();
        let b = theirs.complete(&our_pub).unwrap();
        assert_eq!(a.secret_bytes(), b.secret_bytes());
    }
    // A low-order point (here 0) and a key of the wrong length are refused, as by ring.
    assert!(seeded.start().unwrap().complete(&[0; 32]).is_err());
    assert!(seeded.start().unwrap().complete(&[9; 31]).is_err());
}

#[test]
fn seeded_streams_replay_and_differ_by_seed() {
    let draw = |seed: [u8; 32]| {
        let provider = TransportSeams::seeded(seed, clock).crypto_provider();
        let mut random = [0u8; 64];
        provider.secure_random.fill(&mut random).unwrap();
        let kx = provider.kx_groups[0].start().unwrap().pub_key().to_vec();
        (random, kx)
    };
    assert_eq!(draw([1; 32]), draw([1; 32]));
    assert_ne!(draw([1; 32]), draw([2; 32]));

    // Clones share one stream: a second config does not repeat the first one's bytes.
    let seams = TransportSeams::seeded([1; 32], clock);
    let again = seams.clone();
    let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
    seams.crypto_provider().secure_random.fill(&mut a).unwrap();
    again.crypto_provider().secure_random.fill(&mut b).unwrap();
    assert_ne!(a, b);

    let (one, two) = (
        TransportSeams::seeded([1; 32], clock),
        TransportSeams::seeded([2; 32], clock),
    );
    assert_eq!(one.seed(), Some([1; 32]));
    assert!(one.rng_seed().is_some() && one.rng_seed() != two.rng_seed());
    assert_ne!(
        one.rng_seed(),
        one.seed(),
        "the quinn rng seed is derived, not the seed"
    );
}

#[test]
fn production_seams_are_not_seeded() {
    let os = TransportSeams::os();
    assert!(os.seed().is_none() && os.rng_seed().is_none());
    assert_eq!(format!("{os:?}"), "TransportSeams::os");
    assert_eq!(endpoint_config(&os).get_max_udp_payload_size(), 1472);
    let ring = rustls::crypto::ring::default_provider();
    assert_eq!(
        os.crypto_provider().kx_groups.len(),
        ring.kx_groups.len(),
        "production keeps ring's key exchange groups"
    );
    let now = os.time_provider().current_time().unwrap();
    assert!(
        now.as_secs() > 1_700_000_000,
        "production reads the system clock"
    );

    let seeded = TransportSeams::seeded([3; 32], clock);
    assert_eq!(
        seeded.time_provider().current_time(),
        Some(UnixTime::since_unix_epoch(clock().unwrap()))
    );
}

#[test]
fn seeded_configs_build() {
    #[derive(Debug)]
    struct Nobody;
    impl PeerPolicy for Nobody {
        fn allowed_client(&self, _: &PublicKey) -> Option<NodeId> {
            None
        }
    }
    let key = NodeKey::from_seed([5; 32]);
    let seams = TransportSeams::seeded([4; 32], clock);
    server_config_with(&key, Arc::new(Nobody), &seams).unwrap();
    let peer = NodeKey::from_seed([6; 32]);
    let node: NodeId = "110000".parse().unwrap();
    client_config_with(&key, node, peer.public(), &seams).unwrap();
}
