//! Connections: dialing a route's peer, accepting children, and driving one connection for
//! the core — control frames in and out, batch streams in (children's links) and out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::PublicKey;
use protocol::ids::{BatchId, NodeId};
use protocol::wire::{self, SignedReceipt};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tracing::{Instrument, debug, error, info_span, warn};

use super::Node;
use super::framing::{self, CONTROL_QUEUE, LinkShare, ReadBatch};
use crate::core::{LinkId, LinkKind, Prechecked, Route};
use crate::store::Kv;
use crate::transport::{self, current};

/// Batch streams read at once per link (their bytes are bounded by the link's share of the
/// byte budget, see `framing`); further streams wait unread inside QUIC's flow-control
/// windows.
pub(super) const RECEIVES_PER_LINK: usize = 4;
/// Batches read or submitted that may be on their way into the core at once, node-wide (the
/// others wait their turn, still charged): each is checked outside the core's lock
/// ([`Prechecked`]), then handed to the core, which takes one batch at a time. Two, so one
/// batch's checks run on one core while the core handles the other on the second. More
/// would only park more blocking threads on the lock; each such thread keeps an allocator
/// arena sized to a receive's working set (measured: peak RSS 1,216 → 777 MiB going from
/// unbounded to one, 21 cities, 3.3 MB batches).
pub(super) const BATCHES_TO_CORE: usize = 2;
/// How long an accepted child has to open its control stream before its connection is closed.
const CONTROL_STREAM_WAIT: Duration = Duration::from_secs(10);

/// Dials a route's peer for the core; drives the connection until it ends.
pub(super) async fn dial<K: Kv>(
    node: Arc<Node<K>>,
    route: Route,
    peer: NodeId,
    address: SocketAddr,
    key: PublicKey,
) {
    let span = info_span!("uplink", peer = %peer, route = route.direction());
    async move {
        let opened = async {
            let connection = transport::connect_with(
                &node.endpoint,
                &node.key,
                peer,
                address,
                key,
                &node.transport,
            )
            .await
            .map_err(|e| format!("cannot connect to {peer} at {address}: {e}"))?;
            // A refused client certificate shows only later, on the first stream operation:
            // the core counts the path as up only when the peer's Hello arrives.
            let (send, recv) = connection
                .open_bi()
                .await
                .map_err(|e| format!("opening the control stream: {e}"))?;
            Ok::<_, String>((connection, send, recv))
        }
        .await;
        match opened {
            Err(reason) => node.with_core(|core, now| core.handle_dial_failed(route, &reason, now)),
            Ok((connection, send, recv)) => {
                let link = open_link(&node, &connection, send);
                if let Err(e) =
                    node.with_core(|core, now| core.handle_link_up(link, LinkKind::Up(route), now))
                {
                    error!(error = %e, "uplink: the store failed");
                }
                drive(node, link, connection, recv, false).await;
            }
        }
    }
    .instrument(span)
    .await
}

fn open_link<K: Kv>(
    node: &Arc<Node<K>>,
    connection: &quinn::Connection,
    send: quinn::SendStream,
) -> LinkId {
    let (tx, rx) = mpsc::unbounded_channel();
    let link = node.register(connection.clone(), tx);
    tokio::spawn(framing::writer(send, rx, connection.clone()));
    link
}

/// Accepts connections from children. The TLS layer has already checked their keys against
/// the topology when a connection comes out of its handshake; the core is told at once (a
/// link is up only once its peer is authenticated, and as soon as it is: one connection per
/// child, a newer one replacing the older) and decides again on the key it is told.
pub(super) async fn accept_loop<K: Kv>(node: Arc<Node<K>>) {
    while let Some(incoming) = node.endpoint.accept().await {
        let node = node.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let connection = match incoming.await {
                Ok(connection) => connection,
                // Refused handshakes (unknown keys) are logged by the verifier with the key.
                Err(e) => return debug!(%remote, error = %e, "incoming connection failed"),
            };
            let Some(key) = transport::peer_key(&connection) else {
                connection.close(1u32.into(), b"no pinned key");
                return;
            };
            let peer = current(&node.topology)
                .node_by_key(&key)
                .map(|n| n.id.to_string());
            let span = info_span!("downlink", peer = peer.as_deref().unwrap_or("unknown"));
            async move {
                // Frames the core sends before the control stream is open wait in the queue.
                let (tx, rx) = mpsc::unbounded_channel();
                let link = node.register(connection.clone(), tx);
                if let Err(e) = node
                    .with_core(|core, now| core.handle_link_up(link, LinkKind::Down { key }, now))
                {
                    error!(error = %e, "downlink: the store failed");
                }
                let control =
                    tokio::time::timeout(CONTROL_STREAM_WAIT, connection.accept_bi()).await;
                let (send, recv) = match control {
                    Ok(Ok(streams)) => streams,
                    Ok(Err(e)) => {
                        return link_ended(&node, link, &format!("no control stream: {e}"));
                    }
                    Err(_) => {
                        connection.close(1u32.into(), b"no control stream");
                        let reason = format!(
                            "no control stream within {} s of the handshake",
                            CONTROL_STREAM_WAIT.as_secs()
                        );
                        return link_ended(&node, link, &reason);
                    }
                };
                tokio::spawn(framing::writer(send, rx, connection.clone()));
                drive(node, link, connection, recv, true).await;
            }
            .instrument(span)
            .await
        });
    }
}

/// Tells the core a link is gone, once the runtime has forgotten it.
fn link_ended<K: Kv>(node: &Arc<Node<K>>, link: LinkId, reason: &str) {
    node.unregister(link);
    if let Err(e) = node.with_core(|core, now| core.handle_link_down(link, reason, now)) {
        error!(error = %e, "link down: the store failed");
    }
}

/// Feeds one connection's control frames (and, on a child's link, its batch streams) to the
/// core until the connection ends; then tells the core the link is down. Batch streams still
/// being read or handled when it ends are dropped with it (their charges go back to the
/// budget; the child offers those batches again).
async fn drive<K: Kv>(
    node: Arc<Node<K>>,
    link: LinkId,
    connection: quinn::Connection,
    recv: quinn::RecvStream,
    accepts_batches: bool,
) {
    let (tx, mut frames) = mpsc::channel(CONTROL_QUEUE);
    framing::spawn_reader(recv, tx);
    let slots = Arc::new(Semaphore::new(RECEIVES_PER_LINK));
    let share = LinkShare::new();
    let mut receives = JoinSet::new();
    let reason = loop {
        // `biased`: a fixed order, so a simulated run replays. Frames first; a child that
        // floods control frames only delays its own batch streams (the queue is bounded).
        tokio::select! {
            biased;
            frame = frames.recv() => match frame {
                Some(Ok(message)) => {
                    if let Err(e) = node.with_core(|core, now| core.handle_message(link, message, now)) {
                        error!(error = %e, "handling a frame: the store failed");
                    }
                }
                Some(Err(e)) => {
                    connection.close(1u32.into(), b"bad frame");
                    break format!("peer sent a bad frame: {e}");
                }
                None => {
                    connection.close(0u32.into(), b"control stream closed");
                    break "control stream closed".to_owned();
                }
            },
            stream = connection.accept_uni(), if accepts_batches => match stream {
                Ok(stream) => {
                    receives.spawn(receive_batch(node.clone(), link, stream, slots.clone(), share.clone()));
                }
                Err(e) => break e.to_string(),
            },
            Some(done) = receives.join_next(), if !receives.is_empty() => {
                if let Err(e) = done {
                    error!(error = %e, "a batch stream's task failed");
                }
            }
            reason = connection.closed() => break reason.to_string(),
        }
    };
    drop(receives);
    link_ended(&node, link, &reason);
}

/// Reads one batch stream of a child's link (within the link's slots and share and the
/// node's budget) and hands its batch to the core.
async fn receive_batch<K: Kv>(
    node: Arc<Node<K>>,
    link: LinkId,
    stream: quinn::RecvStream,
    slots: Arc<Semaphore>,
    share: LinkShare,
) {
    let _slot = slots
        .acquire_owned()
        .await
        .expect("the semaphore is never closed");
    match framing::read_batch(stream, &share, &node.batch_budget).await {
        Ok(ReadBatch {
            batch,
            first_receipt,
            charge,
        }) => {
            let span = info_span!("batch", batch = %batch.id.short());
            let read = Instant::now();
            // First come, first served; dropped with the task if the link goes (the child
            // offers the batch again).
            let _turn = node
                .to_core
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let blocking = node.blocking;
            let _ = blocking
                .run(move || {
                    // The batch stays charged to the budget until the core has handled it.
                    let _charge = charge;
                    let _entered = span.enter();
                    // Decoded and its records checked before the core's lock is taken.
                    let checking = Instant::now();
                    let batch = Prechecked::new(batch);
                    let checked = Instant::now();
                    let mut held = Duration::ZERO;
                    let handled = node.with_core(|core, now| {
                        let start = Instant::now();
                        let handled = core.handle_prechecked(link, batch, first_receipt, now);
                        held = start.elapsed();
                        handled
                    });
                    let check = checked - checking;
                    let wait = (checking - read) + checked.elapsed().saturating_sub(held);
                    node.received(check, wait, held);
                    match handled {
                        // Its records and index update are freed here, the core released.
                        Ok(spent) => drop(spent),
                        Err(e) => {
                            error!(error = %e, "storing a batch failed; the child will offer it again");
                        }
                    }
                })
                .await;
        }
        Err(e) => {
            let reason = e.to_string();
            node.with_core(|core, _| core.handle_batch_stream_failed(link, &reason));
        }
    }
}

/// Sends one stored batch on a stream of its own and reports the outcome to the core.
pub(super) async fn send_batch<K: Kv>(
    node: Arc<Node<K>>,
    link: LinkId,
    connection: quinn::Connection,
    id: BatchId,
    first_receipt: Option<SignedReceipt>,
) {
    let store = node.store.clone();
    let result = async {
        let signed = node
            .blocking
            .run(move || store.batch(&id))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("batch {id} is in the outbox but not in the store"))?;
        let mut stream = connection.open_uni().await.map_err(|e| e.to_string())?;
        // The batch's bytes go to QUIC as read from the store, with the frame's head and
        // tail beside them: not copied into a frame first.
        let mut parts = wire::batch_frame_parts(signed, first_receipt).map(bytes::Bytes::from);
        stream
            .write_all_chunks(&mut parts)
            .await
            .map_err(|e| e.to_string())?;
        stream.finish().map_err(|e| e.to_string())?;
        Ok::<(), String>(())
    }
    .instrument(info_span!("batch", batch = %id.short()))
    .await;
    if let Err(e) = &result {
        warn!(batch = %id.short(), error = %e, "sending a batch failed");
    }
    if let Err(e) =
        node.with_core(|core, now| core.handle_batch_sent(link, id, result.is_ok(), now))
    {
        error!(error = %e, "after sending a batch: the store failed");
    }
}
