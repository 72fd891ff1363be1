//! A link counts as up — in the log and in the audit trail — only once its peer is
//! authenticated. Real processes: a city and its county connect (one "child connected" at the
//! city, one path up in the county's audit trail); then a stranger's key dials the city, and
//! the county is re-keyed in the city's topology only, so its redials are refused by the
//! city's TLS. Neither shows as a connected child at the city, and the county's refused
//! redials add no path up to its audit trail nor a connected link to its status.

use std::time::Duration;

use cluster::{Cluster, wait_until};
use protocol::{NodeId, NodeKey};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(60);

fn id(text: &str) -> NodeId {
    NodeId::parse(text).unwrap()
}

fn paths_up(audit: &Value) -> usize {
    audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "path" && e["up"] == true)
        .count()
}

/// How many times a node's log says `text`.
fn count(cluster: &Cluster, node: NodeId, text: &str) -> usize {
    cluster.log(node).matches(text).count()
}

fn connected_links(status: &Value) -> usize {
    status["links"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["connected"] == true)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_is_up_in_logs_and_audit_only_once_the_peer_is_authenticated() {
    let root = tempfile::tempdir().unwrap();
    let (city, county) = (id("445200"), id("445281"));
    let mut cluster =
        Cluster::create(&credit_e2e::binary(), root.path(), cluster::PUNING_CHAIN).unwrap();
    tokio::task::block_in_place(|| {
        cluster.start(city).unwrap();
        cluster.start(county).unwrap();
        wait_until("the county's path to the city", TIMEOUT, || {
            Ok(paths_up(&cluster.audit_log(county)?) == 1
                && connected_links(&cluster.status(city)?) == 1)
        })
        .unwrap();
    });
    assert_eq!(
        count(&cluster, city, "child connected"),
        1,
        "{}",
        cluster.log(city)
    );

    // A stranger's key: the client's handshake "succeeds", the city refuses it.
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let stranger = NodeKey::from_seed([0x5a; 32]);
    let member = cluster.member(city);
    let connection = node::transport::connect(
        &endpoint,
        &stranger,
        city,
        member.address,
        member.public_key,
    )
    .await
    .expect("the client side of the handshake completes");
    let refused = async {
        let (mut send, mut recv) = connection.open_bi().await?;
        send.write_all(&[1, 0, 0, 0, 0]).await?;
        let mut byte = [0u8; 1];
        recv.read_exact(&mut byte).await?;
        anyhow::Ok(())
    }
    .await;
    // The refusal shows on the stream (CRATES.md trap 4).
    assert!(refused.is_err(), "the stranger got an answer");
    tokio::task::block_in_place(|| {
        wait_until("the city to refuse the stranger", TIMEOUT, || {
            Ok(count(&cluster, city, "refused client") >= 1)
        })
    })
    .unwrap();

    // The county is re-keyed in the topology and only the city reloads it: the city closes the
    // county's link and refuses its redials at the handshake.
    let old_key = std::mem::replace(
        &mut cluster.members.get_mut(&county).unwrap().public_key,
        NodeKey::from_seed([0x77; 32]).public(),
    );
    // A key changes only with its old one listed (the planner refuses otherwise).
    cluster.admissions.old_keys.push(topology::OldKey {
        node: county,
        public_key: old_key,
        end: topology::KeyEnd::Retired,
        at_ms: node::runtime::wall_ms(),
    });
    cluster.write_topology().unwrap();
    cluster.signal(city, "HUP").unwrap();
    tokio::task::block_in_place(|| {
        wait_until("the city to refuse the county's redials", TIMEOUT, || {
            Ok(count(&cluster, city, "refused client") >= 3)
        })
        .unwrap_or_else(|e| panic!("{e}\ncity log:\n{}", cluster.log(city)));
        wait_until("the county to see its link down", TIMEOUT, || {
            Ok(connected_links(&cluster.status(county)?) == 0)
        })
        .unwrap();
    });
    let county_log = cluster.log(county);
    assert_eq!(
        count(&cluster, city, "child connected"),
        1,
        "a refused peer was logged as a connected child:\n{}",
        cluster.log(city)
    );
    assert_eq!(connected_links(&cluster.status(city).unwrap()), 0);
    let audit = cluster.audit_log(county).unwrap();
    assert_eq!(
        paths_up(&audit),
        1,
        "a refused dial was audited as a path up: {audit}\ncounty log:\n{county_log}"
    );
    assert_eq!(
        county_log.matches("uplink connected").count(),
        1,
        "a refused dial was logged as connected:\n{county_log}"
    );
    tokio::task::block_in_place(|| cluster.stop_all());
}
