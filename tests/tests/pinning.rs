//! Only keys pinned in the topology get in: a client with an unknown key is refused (seen on
//! its first stream operation, CRATES.md trap 4), and when the topology re-keys a peer the old
//! key stops working at once — the established connection is closed and no earlier TLS
//! session is resumed — while the new key works. A broken topology file is refused and the
//! node keeps running on the one it had.

use std::path::Path;
use std::time::Duration;

use cluster::{Cluster, wait_until};
use node::identity::Identity;
use protocol::wire::{self, Message};
use protocol::{NodeId, NodeKey, PublicKey};

fn id(text: &str) -> NodeId {
    NodeId::parse(text).unwrap()
}

/// Dials the city as `key`, opens the control stream, says Hello and reads the city's first
/// frame. Returns the open stream pair on success.
async fn handshake(
    endpoint: &quinn::Endpoint,
    key: &NodeKey,
    me: NodeId,
    city: NodeId,
    address: std::net::SocketAddr,
    city_key: PublicKey,
) -> Result<(quinn::Connection, quinn::RecvStream), String> {
    let connection = node::transport::connect(endpoint, key, city, address, city_key).await?;
    let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
    let hello = Message::Hello {
        node: me,
        wire_version: wire::WIRE_VERSION,
        topology_version: 1,
    };
    send.write_all(&hello.encode())
        .await
        .map_err(|e| e.to_string())?;
    let mut header = [0u8; wire::FRAME_HEADER_BYTES];
    recv.read_exact(&mut header)
        .await
        .map_err(|e| e.to_string())?;
    let length = wire::payload_length(header, wire::FRAME_BYTES_MAX).map_err(|e| e.to_string())?;
    let mut payload = vec![0u8; length];
    recv.read_exact(&mut payload)
        .await
        .map_err(|e| e.to_string())?;
    match wire::decode_payload(&payload).map_err(|e| e.to_string())? {
        Message::Hello { node, .. } if node == city => Ok((connection, recv)),
        other => Err(format!("unexpected first frame {other:?}")),
    }
}

fn topology_version(cluster: &Cluster, node: NodeId) -> u64 {
    cluster.status(node).unwrap()["topology_version"]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_pinned_keys_connect_and_a_rekey_takes_effect_without_resumption() {
    let root = tempfile::tempdir().unwrap();
    let (city, county) = (id("445200"), id("445281"));
    let mut cluster =
        Cluster::create(&credit_e2e::binary(), root.path(), cluster::PUNING_CHAIN).unwrap();
    tokio::task::block_in_place(|| cluster.start(city)).unwrap();
    let address = cluster.member(city).address;
    let city_key = cluster.member(city).public_key;
    let old_key = Identity::load(&cluster.member(county).dir).unwrap().key;
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();

    // The pinned county key gets in.
    let (established, mut established_recv) =
        handshake(&endpoint, &old_key, county, city, address, city_key)
            .await
            .expect("the pinned key is accepted");

    // An unknown key: the handshake "succeeds" on the client, the refusal shows on the stream.
    let stranger = NodeKey::from_seed([0x5a; 32]);
    let refused = handshake(&endpoint, &stranger, county, city, address, city_key).await;
    assert!(refused.is_err(), "an unpinned key must not get a stream");

    // A client that pins the wrong server key refuses the city itself.
    let wrong_pin = NodeKey::from_seed([0x11; 32]).public();
    assert!(
        handshake(&endpoint, &old_key, county, city, address, wrong_pin)
            .await
            .is_err()
    );

    // Re-key the county: a new identity, pinned in topology version 2, applied by SIGHUP.
    let new_dir = root.path().join("445281-rekeyed");
    let new_identity = tokio::task::block_in_place(|| {
        let output = std::process::Command::new(credit_e2e::binary())
            .args(["init", "--id", "445281", "--dir"])
            .arg(&new_dir)
            .output()
            .unwrap();
        assert!(output.status.success());
        Identity::load(&new_dir).unwrap()
    });
    cluster.members.get_mut(&county).unwrap().public_key = new_identity.public();
    // A key changes only with its old one listed (the planner refuses otherwise).
    cluster.admissions.old_keys.push(topology::OldKey {
        node: county,
        public_key: old_key.public(),
        end: topology::KeyEnd::Retired,
        at_ms: node::runtime::wall_ms(),
    });
    cluster.write_topology().unwrap();
    cluster.signal(city, "HUP").unwrap();
    tokio::task::block_in_place(|| {
        wait_until(
            "the city to apply topology version 2",
            Duration::from_secs(20),
            || Ok(topology_version(&cluster, city) == 2),
        )
    })
    .unwrap();

    // The connection made with the old key is closed by the city ...
    let mut byte = [0u8; 1];
    let closed =
        tokio::time::timeout(Duration::from_secs(10), established_recv.read(&mut byte)).await;
    assert!(
        matches!(closed, Ok(Err(_)) | Ok(Ok(None))),
        "old-key connection still open: {closed:?}"
    );
    drop(established);
    // ... the old key cannot come back (no resumption of the earlier session) ...
    assert!(
        handshake(&endpoint, &old_key, county, city, address, city_key)
            .await
            .is_err(),
        "the old key must be refused after the re-key"
    );
    // ... and the new key is accepted.
    handshake(
        &endpoint,
        &new_identity.key,
        county,
        city,
        address,
        city_key,
    )
    .await
    .expect("the new key is accepted");

    // A broken topology file is refused; the node keeps version 2 and says why in its log.
    std::fs::write(
        &cluster.topology_path,
        "version = 3\n[[node]]\nid = \"44520\"\n",
    )
    .unwrap();
    cluster.signal(city, "HUP").unwrap();
    let log_path = cluster.member(city).dir.join("node.log");
    tokio::task::block_in_place(|| {
        wait_until("the refusal to be logged", Duration::from_secs(20), || {
            Ok(std::fs::read_to_string(&log_path)?.contains("topology reload refused"))
        })
    })
    .unwrap();
    let log = std::fs::read_to_string(Path::new(&log_path)).unwrap();
    assert!(log.contains("44520"), "the log names the bad value:\n{log}");
    assert_eq!(
        topology_version(&cluster, city),
        2,
        "still on the previous topology"
    );
    tokio::task::block_in_place(|| cluster.stop_all());
}
