//! The node's real QUIC + pinned mutual TLS over turmoil's simulated network, replayed from a
//! seed.
//!
//! A city node ("parent") listens with the production `ChildrenPolicy` over a real topology;
//! a county node ("child") dials it with `transport::client_config_with`, opens a
//! bidirectional stream, sends 2 MiB and gets them echoed. Guarantees checked: the bytes come
//! back intact; the same seed gives the same trace digest (every UDP datagram's bytes and
//! every application event, each with its virtual time) and the same virtual duration; a
//! child whose key is not pinned gets through `connect` (CRATES.md trap 4) but fails on its
//! first stream operation (the read: open, write and finish only buffer locally), with the
//! parent's TLS alert, and the parent never hands it to the application; the transfer
//! survives random link failures, a 3 s partition (shorter than the 10 s idle timeout) and
//! reordering, and those runs replay from their seed too.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use credit_simulations::net::node_endpoint;
use credit_simulations::trace::Trace;
use credit_simulations::{node_seed, sim_builder};
use node::transport::{self, ChildrenPolicy, SharedTopology};
use protocol::{NodeId, NodeKey};
use topology::{Node, Role, Topology};

const PORT: u16 = 7000;
const PAYLOAD_BYTES: usize = 2 * 1024 * 1024;

const NATIONAL: &str = "000000";
const PROVINCE: &str = "440000";
const CITY: &str = "445200";
const COUNTY: &str = "445281";

fn id(text: &str) -> NodeId {
    text.parse().expect("a valid node id")
}

fn key(text: &str) -> NodeKey {
    NodeKey::from_seed(blake3::derive_key(
        "quic_over_turmoil test key",
        text.as_bytes(),
    ))
}

/// national ← province ← city ("parent") ← county ("child"), each with its pinned key.
fn topology() -> SharedTopology {
    let chain = [
        (NATIONAL, None),
        (PROVINCE, Some(NATIONAL)),
        (CITY, Some(PROVINCE)),
        (COUNTY, Some(CITY)),
    ];
    let nodes = chain
        .iter()
        .enumerate()
        .map(|(i, (node, parent))| Node {
            id: id(node),
            name: format!("node {node}"),
            role: Role::of_id(id(node)),
            parent: parent.map(id),
            address: SocketAddr::from(([10, 0, 0, i as u8 + 1], PORT)),
            public_key: key(node).public(),
        })
        .collect();
    let topology = Topology::from_nodes(1, nodes).expect("a valid topology");
    Arc::new(RwLock::new(Arc::new(topology)))
}

/// How the network misbehaves during a run.
#[derive(Clone, Copy)]
enum Network {
    Clean,
    /// turmoil's random link failure: each message may break the link (dropping everything
    /// in flight on it) until a later message repairs it.
    Flaky {
        fail_rate: f64,
        repair_rate: f64,
    },
    /// The link is cut for `for_ticks` steps, starting at step `at_tick`.
    Partition {
        at_tick: u64,
        for_ticks: u64,
    },
    /// Each message's latency is drawn from this range, so packets arrive out of order.
    Jittery {
        min: Duration,
        max: Duration,
    },
}

/// What the child saw.
#[derive(Debug, PartialEq)]
struct ChildView {
    /// The echoed bytes, or the error and the step that gave it.
    result: Result<Vec<u8>, String>,
    /// Whether `connect` itself succeeded.
    connected: bool,
    /// Why the connection was closed, if it was before the child closed it.
    close_reason: Option<String>,
    /// Packets QUIC declared lost on the child's side.
    lost_packets: u64,
}

#[derive(Debug)]
struct Outcome {
    child: ChildView,
    /// Connections the parent handed to the application.
    accepted: u64,
    digest: blake3::Hash,
    events: u64,
    elapsed: Duration,
}

fn payload(seed: u64) -> Vec<u8> {
    let mut bytes = vec![0; PAYLOAD_BYTES];
    let mut hasher = blake3::Hasher::new_derive_key("quic_over_turmoil payload");
    hasher.update(&seed.to_le_bytes());
    hasher.finalize_xof().fill(&mut bytes);
    bytes
}

/// One simulation: the parent echoes every stream; the child sends the payload once. With
/// `pin_child` false the child presents a key the topology does not pin.
fn run(seed: u64, pin_child: bool, network: Network) -> Outcome {
    let mut builder = sim_builder(seed);
    match network {
        Network::Flaky {
            fail_rate,
            repair_rate,
        } => {
            builder.fail_rate(fail_rate).repair_rate(repair_rate);
        }
        Network::Jittery { min, max } => {
            builder.min_message_latency(min).max_message_latency(max);
        }
        Network::Clean | Network::Partition { .. } => {}
    }
    let mut sim = builder.build();
    let trace = Trace::new();
    let topology = topology();
    let accepted = Arc::new(Mutex::new(0u64));

    let (parent_trace, parent_topology, parent_accepted) =
        (trace.clone(), topology.clone(), accepted.clone());
    sim.host("parent", move || {
        let (trace, topology, accepted) = (
            parent_trace.clone(),
            parent_topology.clone(),
            parent_accepted.clone(),
        );
        async move {
            let policy = Arc::new(ChildrenPolicy {
                me: id(CITY),
                topology,
            });
            let parent = node_endpoint(
                PORT,
                &key(CITY),
                policy,
                node_seed(seed, "parent"),
                Some(trace.clone()),
            )
            .await?;
            while let Some(incoming) = parent.endpoint.accept().await {
                let connection = match incoming.await {
                    Ok(connection) => connection,
                    Err(error) => {
                        trace.record("parent: handshake failed", error.to_string().as_bytes());
                        continue;
                    }
                };
                let peer = transport::peer_key(&connection)
                    .map(|k| k.to_string())
                    .unwrap_or_default();
                trace.record("parent: accepted", peer.as_bytes());
                *accepted.lock().unwrap() += 1;
                while let Ok((mut send, mut recv)) = connection.accept_bi().await {
                    let data = recv.read_to_end(PAYLOAD_BYTES).await?;
                    trace.record("parent: received", &(data.len() as u64).to_le_bytes());
                    send.write_all(&data).await?;
                    send.finish()?;
                    trace.record("parent: echoed", &[]);
                }
            }
            Ok(())
        }
    });

    let outcome = Arc::new(Mutex::new(None));
    let (child_trace, child_topology, child_outcome) =
        (trace.clone(), topology.clone(), outcome.clone());
    sim.client("child", async move {
        let trace = child_trace;
        let me = if pin_child {
            key(COUNTY)
        } else {
            key("a county key nobody pinned")
        };
        let policy = Arc::new(ChildrenPolicy {
            me: id(COUNTY),
            topology: child_topology,
        });
        let child = node_endpoint(
            PORT,
            &me,
            policy,
            node_seed(seed, "child"),
            Some(trace.clone()),
        )
        .await?;
        let parent_addr = SocketAddr::new(turmoil::lookup("parent"), PORT);
        let connection = transport::connect_with(
            &child.endpoint,
            &me,
            id(CITY),
            parent_addr,
            key(CITY).public(),
            &child.seams,
        )
        .await;
        let result = match &connection {
            Err(error) => Err(format!("connect: {error}")),
            Ok(connection) => {
                trace.record("child: connected", &[]);
                exchange(connection, &payload(seed), &trace).await
            }
        };
        let close_reason = connection
            .as_ref()
            .ok()
            .and_then(|c| c.close_reason())
            .map(|reason| format!("{reason:?}"));
        let lost_packets = connection
            .as_ref()
            .map_or(0, |c| c.stats().path.lost_packets);
        trace.record(
            "child: done",
            format!("{:?}", result.as_ref().map(Vec::len)).as_bytes(),
        );
        if let Ok(connection) = &connection {
            connection.close(0u32.into(), b"done");
        }
        child.endpoint.wait_idle().await;
        *child_outcome.lock().unwrap() = Some(ChildView {
            result,
            connected: connection.is_ok(),
            close_reason,
            lost_packets,
        });
        Ok(())
    });

    let mut steps = 0u64;
    loop {
        if let Network::Partition { at_tick, for_ticks } = network {
            if steps == at_tick {
                sim.partition("parent", "child");
            }
            if steps == at_tick + for_ticks {
                sim.repair("parent", "child");
            }
        }
        steps += 1;
        if sim.step().expect("the simulation runs to its end") {
            break;
        }
    }
    let child = outcome.lock().unwrap().take().expect("the child finished");
    let accepted = *accepted.lock().unwrap();
    Outcome {
        child,
        accepted,
        digest: trace.digest(),
        events: trace.events(),
        elapsed: sim.elapsed(),
    }
}

/// The child's stream exchange; each step's error says which step failed.
async fn exchange(
    connection: &quinn::Connection,
    data: &[u8],
    trace: &Trace,
) -> Result<Vec<u8>, String> {
    let (mut send, mut recv) = connection
        .open_bi()
        .await
        .map_err(|e| format!("open: {e}"))?;
    send.write_all(data)
        .await
        .map_err(|e| format!("write: {e}"))?;
    send.finish().map_err(|e| format!("finish: {e}"))?;
    trace.record("child: sent", &(data.len() as u64).to_le_bytes());
    let echoed = recv
        .read_to_end(PAYLOAD_BYTES)
        .await
        .map_err(|e| format!("read: {e}"))?;
    trace.record("child: received", &(echoed.len() as u64).to_le_bytes());
    Ok(echoed)
}

#[test]
fn two_mib_echo_replays_from_its_seed() {
    let first = run(42, true, Network::Clean);
    let echoed = first.child.result.as_ref().expect("the echo completes");
    assert!(first.child.connected);
    assert_eq!(first.child.close_reason, None);
    assert_eq!(first.accepted, 1);
    assert_eq!(echoed.len(), PAYLOAD_BYTES);
    assert!(
        echoed == &payload(42),
        "echoed bytes differ from those sent"
    );
    // Every datagram is in the trace: 2 × 2 MiB is well over 2,000 of them.
    assert!(first.events > 2_000, "only {} events traced", first.events);

    let second = run(42, true, Network::Clean);
    assert_eq!(second.child, first.child);
    assert_eq!(second.elapsed, first.elapsed, "virtual duration differs");
    assert_eq!(
        second.events, first.events,
        "number of traced events differs"
    );
    assert_eq!(second.digest, first.digest, "same seed, different run");

    // The digest does depend on the seed (keys, connection ids, latencies all change).
    let other = run(43, true, Network::Clean);
    assert!(other.child.result.is_ok());
    assert_ne!(other.digest, first.digest);
}

#[test]
fn unpinned_child_fails_on_its_first_stream_operation() {
    let outcome = run(7, false, Network::Clean);
    // CRATES.md trap 4: the client's handshake completes before the server refuses it.
    assert!(
        outcome.child.connected,
        "connect should succeed: {:?}",
        outcome.child
    );
    let error = outcome
        .child
        .result
        .as_ref()
        .expect_err("an unpinned child must be refused");
    // Opening is local; the write waits on the parent once it has used the stream's window
    // (1 MiB, `transport::STREAM_RECEIVE_WINDOW`), so the write reports the refusal (with a
    // payload inside the window it would be the read).
    assert!(error.starts_with("write: "), "failed elsewhere: {error}");
    // The parent closed with TLS alert 40 (handshake_failure) and its verifier's reason.
    let reason = outcome.child.close_reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains("Code::crypto(28)") && reason.contains("is not pinned in the topology"),
        "refused for another reason: {reason}"
    );
    assert_eq!(
        outcome.accepted, 0,
        "the parent handed an unpinned child to the application"
    );

    let again = run(7, false, Network::Clean);
    assert_eq!(again.child, outcome.child);
    assert_eq!(again.digest, outcome.digest);
}

#[test]
fn echo_completes_over_a_flaky_link() {
    let flaky = Network::Flaky {
        fail_rate: 0.005,
        repair_rate: 0.5,
    };
    let outcome = run(11, true, flaky);
    let echoed = outcome
        .child
        .result
        .as_ref()
        .expect("the echo completes despite loss");
    assert!(
        echoed == &payload(11),
        "echoed bytes differ from those sent"
    );
    assert!(
        outcome.child.lost_packets > 0,
        "no loss happened: {:?}",
        outcome.child.lost_packets
    );

    let again = run(11, true, flaky);
    assert_eq!(again.child, outcome.child);
    assert_eq!(again.digest, outcome.digest);
}

#[test]
fn echo_completes_across_a_partition() {
    // Cut the link 150 ms in, for 3 s: mid-transfer, and less than the 10 s idle timeout.
    let partition = Network::Partition {
        at_tick: 15,
        for_ticks: 300,
    };
    let outcome = run(5, true, partition);
    let echoed = outcome
        .child
        .result
        .as_ref()
        .expect("the echo completes after the partition");
    assert!(echoed == &payload(5), "echoed bytes differ from those sent");
    assert!(
        outcome.child.lost_packets > 0,
        "the partition cut nothing in flight"
    );
    assert!(
        outcome.elapsed > Duration::from_secs(3),
        "finished before the partition healed: {:?}",
        outcome.elapsed
    );
}

#[test]
fn echo_completes_with_reordering() {
    let jittery = Network::Jittery {
        min: Duration::from_millis(5),
        max: Duration::from_millis(25),
    };
    let outcome = run(9, true, jittery);
    let echoed = outcome
        .child
        .result
        .as_ref()
        .expect("the echo completes despite reordering");
    assert!(echoed == &payload(9), "echoed bytes differ from those sent");
    let again = run(9, true, jittery);
    assert_eq!(again.child, outcome.child);
    assert_eq!(again.digest, outcome.digest);
}
