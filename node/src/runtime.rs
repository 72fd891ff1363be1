//! The running node: drives the sans-IO sync state machines of `protocol` over QUIC, with the
//! sled store underneath. One task per link, each inside a tracing span naming the peer.
//!
//! - The **uplink** task dials the parent (backoff 100 ms → 5 s), drives an [`Uplink`] fed
//!   from the store's outbox for that link, sends each wanted batch on its own stream, and
//!   stores each receipt before the batch leaves the outbox.
//! - A **downlink** task per connected child drives a [`Downlink`]: each batch arriving on a
//!   stream is read with a length cap, verified (hash, origin signature, every record),
//!   stored with this node's receipt and queued for the parent in one transaction, made
//!   durable ([`Store::sync_async`]), and only then receipted.
//! - Receipts from further up are relayed down to the child a batch came from, until the
//!   child confirms it stored them, so every origin holds the chain of where its batch got.
//!
//! Invariant: no receipt leaves this node for a batch that is not durable here.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use protocol::ids::{BatchId, NodeId};
use protocol::record::Problem;
use protocol::sync::{Downlink, DownlinkEvent, SyncConfig, Uplink, UplinkEvent, verify_incoming};
use protocol::wire::{self, Message, Receipt, SignedReceipt, Verdict};
use protocol::{PublicKey, Registry, SignedBatch};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::identity::Identity;
use crate::migration::{Migration, Observed, Phase};
use crate::store::{AuditEvent, Store};
use crate::transport::{self, ChildrenPolicy, SharedTopology, current};

/// Control frames buffered from a peer before the reader waits.
const CONTROL_QUEUE: usize = 64;
/// Batch streams read at once per link. Each may hold up to a whole batch (64 MiB) in memory;
/// further streams wait unread inside QUIC's flow-control window.
const RECEIVES_PER_LINK: usize = 4;
/// Outbox entries read from the store per page.
const OUTBOX_PAGE: usize = 1024;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the operator sees of one link.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LinkStatus {
    pub peer: String,
    pub direction: &'static str,
    pub connected: bool,
    pub since_ms: u64,
    pub last_error: Option<String>,
    pub pending: usize,
    pub in_flight: usize,
    pub batches_sent: u64,
    pub batches_received: u64,
}

/// Shared state of a running node.
pub struct Node {
    pub me: NodeId,
    pub identity: Identity,
    pub store: Store,
    pub topology: SharedTopology,
    pub topology_path: PathBuf,
    pub endpoint: quinn::Endpoint,
    pub config: SyncConfig,
    started: Instant,
    /// Wakes the uplink of each route when its outbox grew.
    outbox_changed: [Notify; 2],
    /// Bumped when the topology or the migration phase changes what links should exist.
    topology_changed: tokio::sync::watch::Sender<u64>,
    migration: Mutex<Option<Migration>>,
    links: Mutex<BTreeMap<(NodeId, &'static str), LinkStatus>>,
    relay_wakers: Mutex<HashMap<NodeId, Arc<Notify>>>,
}

impl Node {
    /// Monotonic milliseconds since start, the time the state machines see.
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn link(&self, peer: NodeId, direction: &'static str, update: impl FnOnce(&mut LinkStatus)) {
        let mut links = self.links.lock().expect("links lock");
        let status = links
            .entry((peer, direction))
            .or_insert_with(|| LinkStatus {
                peer: peer.to_string(),
                direction,
                connected: false,
                since_ms: wall_ms(),
                last_error: None,
                pending: 0,
                in_flight: 0,
                batches_sent: 0,
                batches_received: 0,
            });
        update(status);
    }

    pub fn links(&self) -> Vec<LinkStatus> {
        self.links
            .lock()
            .expect("links lock")
            .values()
            .cloned()
            .collect()
    }

    fn relay_waker(&self, child: NodeId) -> Arc<Notify> {
        self.relay_wakers
            .lock()
            .expect("relay lock")
            .entry(child)
            .or_default()
            .clone()
    }

    /// The key pinned for `origin`, if `origin` is `via` itself or below it (a child may only
    /// send batches of its own subtree).
    fn origin_key(&self, via: NodeId, origin: NodeId) -> Option<PublicKey> {
        let topology = current(&self.topology);
        let path = topology.path_to_national(origin);
        if !path.contains(&via) {
            return None;
        }
        topology.node(origin).map(|n| n.public_key)
    }

    /// Which links this node keeps open and sends new batches on, from the topology and, for a
    /// node with a legacy direct link, its migration phase.
    fn routes(&self, topology: &topology::Topology) -> ActiveRoutes {
        let has_parent = topology.parent_of(self.me).is_some();
        if topology.legacy_link(self.me).is_none() {
            return ActiveRoutes {
                parent_open: has_parent,
                parent_sends: has_parent,
                legacy_open: false,
                legacy_sends: false,
            };
        }
        let routes = self
            .migration
            .lock()
            .expect("migration lock")
            .as_ref()
            .map_or_else(
                || Migration::new(Phase::Direct, 0).routes(),
                Migration::routes,
            );
        ActiveRoutes {
            parent_open: has_parent && routes.parent_sends,
            parent_sends: has_parent && routes.parent_sends,
            legacy_open: routes.legacy_open,
            legacy_sends: routes.legacy_sends,
        }
    }

    /// The links a newly stored batch is queued for.
    fn forward_targets(&self) -> Vec<NodeId> {
        let topology = current(&self.topology);
        let routes = self.routes(&topology);
        let mut targets = Vec::with_capacity(2);
        if routes.parent_sends
            && let Some(parent) = topology.parent_of(self.me)
        {
            targets.push(parent.id);
        }
        if routes.legacy_sends {
            targets.push(NodeId::NATIONAL);
        }
        targets
    }

    /// The peer a route dials now, if the route is open.
    fn uplink_target(&self, route: Route) -> Option<(NodeId, SocketAddr, PublicKey)> {
        let topology = current(&self.topology);
        let routes = self.routes(&topology);
        let peer = match route {
            Route::Parent if routes.parent_open => topology.parent_of(self.me)?,
            Route::Legacy if routes.legacy_open => topology.node(NodeId::NATIONAL)?,
            _ => return None,
        };
        Some((peer.id, peer.address, peer.public_key))
    }

    fn notify_outboxes(&self) {
        for notify in &self.outbox_changed {
            notify.notify_one();
        }
    }

    /// Accepts a batch submitted by this node's operator: checks it as a receiver would,
    /// stores it with this node's own receipt, queues it for the parent, makes it durable.
    /// Returns whether it was new.
    pub async fn submit(&self, signed: SignedBatch) -> anyhow::Result<bool> {
        let me = self.me;
        let key = self.identity.public();
        let checked = {
            let signed = signed.clone();
            tokio::task::spawn_blocking(move || {
                verify_incoming(&signed, |o| (o == me).then_some(key), Registry::builtin())
            })
            .await?
        };
        let batch = match checked {
            Ok(batch) => batch,
            Err((rejection, _)) => bail!("batch {} refused: {rejection}", signed.id),
        };
        let receipt = self.own_receipt(&signed, Verdict::Accepted { warnings: 0 });
        let new = self
            .store
            .insert_batch_durable(
                signed,
                batch,
                me,
                receipt,
                self.forward_targets(),
                wall_ms(),
            )
            .await?;
        if new {
            self.notify_outboxes();
        }
        Ok(new)
    }

    fn own_receipt(&self, signed: &SignedBatch, verdict: Verdict) -> SignedReceipt {
        let origin = signed.header().map_or(NodeId::NATIONAL, |h| h.origin);
        Receipt {
            receiver: self.me,
            batch: signed.id,
            origin,
            received_at_ms: wall_ms(),
            verdict,
        }
        .sign(&self.identity.key)
    }

    /// Re-reads the topology file; a file that does not validate is refused, with every error
    /// logged, and the node keeps the topology it had.
    pub fn reload_topology(&self) -> anyhow::Result<u64> {
        let next = read_topology(&self.topology_path)?;
        let Some(me) = next.node(self.me) else {
            bail!(
                "{}: node {} is not in the new topology; keeping the old one",
                self.topology_path.display(),
                self.me
            );
        };
        if me.public_key != self.identity.public() {
            bail!(
                "{}: the key pinned for {} is not this node's key; keeping the old one",
                self.topology_path.display(),
                self.me
            );
        }
        let old = current(&self.topology);
        if *old == next {
            info!(version = next.version, "topology file unchanged");
            return Ok(next.version);
        }
        // The same planner operators run: a change that would leave some node without a path
        // to the national platform at some step (or that goes back a version) is refused here
        // too, and links are only closed as the plan allows.
        if let Err(refusal) = topology::plan(&old, &next) {
            bail!(
                "{}: refused by the planner: {refusal}; keeping version {}",
                self.topology_path.display(),
                old.version
            );
        }
        let version = next.version;
        *self.topology.write().expect("topology lock") = Arc::new(next);
        self.store
            .audit(AuditEvent::TopologyApplied { version }, wall_ms())?;
        self.topology_changed.send_replace(version);
        info!(version, "topology reloaded");
        Ok(version)
    }
}

/// Reads and validates a topology file, with every error in the message.
pub fn read_topology(path: &Path) -> anyhow::Result<topology::Topology> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read topology file {}", path.display()))?;
    topology::Topology::parse(&text).map_err(|errors| {
        let lines: Vec<String> = errors
            .iter()
            .map(|e| format!("  {}: {e}", path.display()))
            .collect();
        anyhow::anyhow!(
            "topology file {} is not valid:\n{}",
            path.display(),
            lines.join("\n")
        )
    })
}

/// Starts a node from its directory and topology file; returns once it is listening.
pub async fn start(
    dir: &Path,
    topology_path: &Path,
    config: SyncConfig,
) -> anyhow::Result<Arc<Node>> {
    let identity = Identity::load(dir)?;
    let me = identity.id;
    let topology = read_topology(topology_path)?;
    let entry = topology.node(me).with_context(|| {
        format!(
            "node {me} is not in {}: add it (run `credit-node init` for the line to paste)",
            topology_path.display()
        )
    })?;
    if entry.public_key != identity.public() {
        bail!(
            "{}: the key pinned for {me} is {}, but this node's key is {}: paste the line printed by `credit-node init`",
            topology_path.display(),
            entry.public_key,
            identity.public()
        );
    }
    let address = entry.address;
    let version = topology.version;
    let store = Store::open(&dir.join("store"))?;
    store.audit(
        AuditEvent::Started {
            topology_version: version,
        },
        wall_ms(),
    )?;
    let shared: SharedTopology = Arc::new(std::sync::RwLock::new(Arc::new(topology)));
    let policy = Arc::new(ChildrenPolicy {
        me,
        topology: shared.clone(),
    });
    let endpoint = transport::endpoint(address, &identity.key, policy)?;
    let node = Arc::new(Node {
        me,
        identity,
        store,
        topology: shared,
        topology_path: topology_path.to_owned(),
        endpoint,
        config,
        started: Instant::now(),
        outbox_changed: [Notify::new(), Notify::new()],
        migration: Mutex::new(None),
        topology_changed: tokio::sync::watch::channel(version).0,
        links: Mutex::new(BTreeMap::new()),
        relay_wakers: Mutex::new(HashMap::new()),
    });
    info!(node = %me, %address, topology_version = version, "node listening");
    // Restore the migration phase before any link is dialed, so a restart resumes it.
    node.migration_tick()?;
    tokio::spawn(accept_loop(node.clone()));
    tokio::spawn(uplink_loop(node.clone(), Route::Parent));
    tokio::spawn(uplink_loop(node.clone(), Route::Legacy));
    tokio::spawn(migration_loop(node.clone()));
    Ok(node)
}

async fn accept_loop(node: Arc<Node>) {
    while let Some(incoming) = node.endpoint.accept().await {
        let node = node.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(connection) => serve_child(node, connection).await,
                // Refused handshakes (unknown keys) are logged by the verifier with the key.
                Err(e) => debug!(%remote, error = %e, "incoming connection failed"),
            }
        });
    }
}

async fn write_frame(send: &mut quinn::SendStream, message: &Message) -> anyhow::Result<()> {
    send.write_all(&message.encode()).await?;
    Ok(())
}

/// Reads control frames into a bounded channel; ends on error or end of stream.
fn spawn_reader(mut recv: quinn::RecvStream, tx: mpsc::Sender<Result<Message, String>>) {
    tokio::spawn(async move {
        let mut header = [0u8; wire::FRAME_HEADER_BYTES];
        loop {
            if recv.read_exact(&mut header).await.is_err() {
                return;
            }
            let result = match wire::payload_length(header, wire::FRAME_BYTES_MAX) {
                Err(e) => Err(e.to_string()),
                Ok(length) => {
                    let mut payload = vec![0u8; length];
                    match recv.read_exact(&mut payload).await {
                        Err(_) => return,
                        Ok(()) => wire::decode_payload(&payload).map_err(|e| e.to_string()),
                    }
                }
            };
            let fatal = result.is_err();
            if tx.send(result).await.is_err() || fatal {
                return;
            }
        }
    });
}

/// An uplink: to the parent in the hierarchy, or the legacy direct link to the national
/// platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Parent,
    Legacy,
}

impl Route {
    fn index(self) -> usize {
        match self {
            Route::Parent => 0,
            Route::Legacy => 1,
        }
    }

    /// The direction name in link status.
    fn direction(self) -> &'static str {
        match self {
            Route::Parent => "up",
            Route::Legacy => "legacy",
        }
    }
}

/// What links a node keeps and sends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ActiveRoutes {
    parent_open: bool,
    parent_sends: bool,
    legacy_open: bool,
    legacy_sends: bool,
}

async fn uplink_loop(node: Arc<Node>, route: Route) {
    let mut machine: Option<Uplink> = None;
    let mut backoff = BACKOFF_MIN;
    let mut topology_changes = node.topology_changed.subscribe();
    loop {
        let Some((peer, address, peer_key)) = node.uplink_target(route) else {
            // No such link now (the national platform, a node without a legacy link, a
            // migration phase that closes it): wait for the topology or the phase to change.
            if topology_changes.changed().await.is_err() {
                return;
            }
            continue;
        };
        if machine.as_ref().is_none_or(|m| m.parent() != peer) {
            machine = Some(Uplink::new(node.me, peer, peer_key, node.config));
        }
        let uplink = machine.as_mut().expect("just set");
        let span = info_span!("uplink", peer = %peer, route = route.direction());
        let mut connected = false;
        let result = async {
            let connection =
                transport::connect(&node.endpoint, &node.identity.key, peer, address, peer_key)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot connect to {peer} at {address}: {e}"))?;
            drive_uplink(
                &node,
                route,
                uplink,
                connection,
                &mut topology_changes,
                &mut connected,
            )
            .await
        }
        .instrument(span.clone())
        .await;
        uplink.handle_disconnected();
        node.link(peer, route.direction(), |s| s.connected = false);
        if connected {
            let _ = node
                .store
                .audit(AuditEvent::Path { peer, up: false }, wall_ms());
        }
        match result {
            Ok(()) => backoff = BACKOFF_MIN,
            Err(e) => {
                span.in_scope(|| warn!(error = %format!("{e:#}"), retry_ms = backoff.as_millis() as u64, "uplink down"));
                node.link(peer, route.direction(), |s| {
                    s.last_error = Some(format!("{e:#}"))
                });
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = topology_changes.changed() => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

fn fill_from_outbox(node: &Node, uplink: &mut Uplink) -> anyhow::Result<()> {
    let mut after: Option<BatchId> = None;
    while uplink.capacity() > 0 {
        let page = node
            .store
            .outbox_page(uplink.parent(), after.as_ref(), OUTBOX_PAGE)?;
        let Some(last) = page.last().map(|o| o.id) else {
            break;
        };
        uplink.handle_outbox(page, node.now_ms());
        after = Some(last);
    }
    Ok(())
}

async fn send_batch(
    connection: quinn::Connection,
    store: Store,
    id: BatchId,
) -> (BatchId, anyhow::Result<()>) {
    let result = async {
        let signed = store
            .batch(&id)?
            .with_context(|| format!("batch {id} is in the outbox but not in the store"))?;
        let mut stream = connection.open_uni().await?;
        stream.write_all(&Message::Batch(signed).encode()).await?;
        stream.finish()?;
        Ok(())
    }
    .instrument(info_span!("batch", batch = %id.short()))
    .await;
    (id, result)
}

async fn drive_uplink(
    node: &Arc<Node>,
    route: Route,
    uplink: &mut Uplink,
    connection: quinn::Connection,
    topology_changes: &mut tokio::sync::watch::Receiver<u64>,
    connected: &mut bool,
) -> anyhow::Result<()> {
    let parent = uplink.parent();
    let direction = route.direction();
    // A refused client certificate shows here, on the first stream operation.
    let (mut send, recv) = connection
        .open_bi()
        .await
        .context("opening the control stream")?;
    let (tx, mut rx) = mpsc::channel(CONTROL_QUEUE);
    spawn_reader(recv, tx);
    let version = current(&node.topology).version;
    uplink.handle_connected(version, node.now_ms());
    fill_from_outbox(node, uplink)?;
    // The first frame opens the stream on the wire; the peer accepts it only then.
    while let Some(message) = uplink.poll_transmit() {
        write_frame(&mut send, &message).await?;
    }
    info!("uplink connected");
    *connected = true;
    node.store.audit(
        AuditEvent::Path {
            peer: parent,
            up: true,
        },
        wall_ms(),
    )?;
    node.link(parent, direction, |s| {
        s.connected = true;
        s.since_ms = wall_ms();
        s.last_error = None;
    });
    let mut sending: JoinSet<(BatchId, anyhow::Result<()>)> = JoinSet::new();
    let mut feedback: HashMap<BatchId, Vec<Problem>> = HashMap::new();
    let pinned_key = |n: NodeId| current(&node.topology).node(n).map(|n| n.public_key);
    loop {
        while let Some(message) = uplink.poll_transmit() {
            write_frame(&mut send, &message).await?;
        }
        while let Some(id) = uplink.poll_send() {
            sending.spawn(send_batch(connection.clone(), node.store.clone(), id));
        }
        while let Some(event) = uplink.poll_event() {
            match event {
                UplinkEvent::Receipt(receipt) => {
                    let problems = feedback.remove(&receipt.receipt.batch).unwrap_or_default();
                    if let Verdict::Rejected { reason } = &receipt.receipt.verdict {
                        error!(batch = %receipt.receipt.batch, %reason, problems = problems.len(), "batch refused by parent: correct the data and submit again");
                    }
                    let relay = node.store.insert_receipt(
                        node.me,
                        parent,
                        &receipt,
                        &problems,
                        wall_ms(),
                    )?;
                    if let Some(child) = relay {
                        node.relay_waker(child).notify_one();
                    }
                }
                UplinkEvent::UpstreamReceipts(receipts) => {
                    let path = current(&node.topology).path_to_national(node.me);
                    let mut done = Vec::new();
                    for receipt in receipts {
                        let receiver = receipt.receipt.receiver;
                        let trusted = path.contains(&receiver)
                            && pinned_key(receiver).is_some_and(|k| receipt.verify(&k));
                        if !trusted {
                            warn!(%receiver, batch = %receipt.receipt.batch, "relayed receipt does not verify under a pinned key above this node; ignored");
                            continue;
                        }
                        if let Some(child) =
                            node.store
                                .insert_receipt(node.me, parent, &receipt, &[], wall_ms())?
                        {
                            node.relay_waker(child).notify_one();
                        }
                        if receiver == NodeId::NATIONAL {
                            node.store.mark_via_hierarchy(&receipt.receipt.batch)?;
                        }
                        done.push((receipt.receipt.batch, receiver));
                    }
                    uplink.handle_upstream_stored(done);
                }
                UplinkEvent::Feedback { batch, problems } => {
                    warn!(batch = %batch, problems = problems.len(), "feedback from parent");
                    feedback.insert(batch, problems);
                }
            }
        }
        node.link(parent, direction, |s| {
            s.pending = uplink.pending_len();
            s.in_flight = uplink.in_flight_len();
        });
        let deadline = uplink
            .poll_timeout()
            .map(|at| tokio::time::Instant::from_std(node.started + Duration::from_millis(at)));
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            message = rx.recv() => match message {
                Some(Ok(message)) => uplink.handle_message(message, node.now_ms())?,
                Some(Err(e)) => bail!("parent sent a bad frame: {e}"),
                None => bail!("control stream closed by {parent}"),
            },
            Some(joined) = sending.join_next() => {
                let (id, result) = joined.context("send task")?;
                match result {
                    Ok(()) => {
                        uplink.handle_batch_sent(id, node.now_ms());
                        node.link(parent, direction, |s| s.batches_sent += 1);
                    }
                    Err(e) => {
                        warn!(batch = %id, error = %format!("{e:#}"), "sending failed; will offer again");
                        uplink.handle_send_failed(id, node.now_ms());
                    }
                }
            }
            _ = node.outbox_changed[route.index()].notified() => fill_from_outbox(node, uplink)?,
            _ = sleep => uplink.handle_timeout(node.now_ms()),
            _ = topology_changes.changed() => {
                // Close the link if the route is gone or now points at another peer or key.
                let pinned = transport::peer_key(&connection);
                if node.uplink_target(route).map(|t| (t.0, Some(t.2))) != Some((parent, pinned)) {
                    info!("link no longer in the topology or the migration phase: closing it");
                    connection.close(0u32.into(), b"topology changed");
                    return Ok(());
                }
            }
            reason = connection.closed() => bail!("connection to {parent} closed: {reason}"),
        }
    }
}

/// A batch received on a stream, and what was decided about it.
struct Decision {
    id: BatchId,
    receipt: SignedReceipt,
    problems: Vec<Problem>,
}

async fn receive_batch(
    node: Arc<Node>,
    child: NodeId,
    mut stream: quinn::RecvStream,
) -> anyhow::Result<Decision> {
    let bytes = stream
        .read_to_end(wire::FRAME_HEADER_BYTES + wire::BATCH_FRAME_BYTES_MAX)
        .await
        .context("reading a batch stream")?;
    let signed = match wire::decode_frame(&bytes, wire::BATCH_FRAME_BYTES_MAX)? {
        Some((Message::Batch(signed), used)) if used == bytes.len() => signed,
        Some(_) => bail!("a batch stream must carry exactly one Batch frame"),
        None => bail!("batch stream ended inside a frame"),
    };
    let id = signed.id;
    let span = info_span!("batch", batch = %id.short());
    async {
        if let Some(receipt) = node.store.receipt(&id, node.me)? {
            debug!("already held; answering with the stored receipt");
            return Ok(Decision {
                id,
                receipt,
                problems: Vec::new(),
            });
        }
        let checked = {
            let node = node.clone();
            let signed = signed.clone();
            tokio::task::spawn_blocking(move || {
                verify_incoming(
                    &signed,
                    |origin| node.origin_key(child, origin),
                    Registry::builtin(),
                )
            })
            .await?
        };
        match checked {
            Ok(batch) => {
                let receipt = node.own_receipt(&signed, Verdict::Accepted { warnings: 0 });
                let targets = node.forward_targets();
                let (origin, category, period, records) = (
                    batch.header.origin,
                    batch.header.category.clone(),
                    batch.header.period,
                    batch.records.len(),
                );
                let new = node
                    .store
                    .insert_batch_durable(signed, batch, child, receipt.clone(), targets, wall_ms())
                    .await?;
                if new {
                    node.notify_outboxes();
                    info!(%origin, %category, %period, records, "batch stored");
                }
                // A batch stored by a concurrent stream keeps the receipt stored with it.
                let receipt = node.store.receipt(&id, node.me)?.unwrap_or(receipt);
                Ok(Decision {
                    id,
                    receipt,
                    problems: Vec::new(),
                })
            }
            Err((rejection, problems)) => {
                error!(reason = %rejection, problems = problems.len(), "batch refused");
                node.store.audit(
                    AuditEvent::BatchRefused {
                        batch: id,
                        from: child,
                        reason: rejection.to_string(),
                    },
                    wall_ms(),
                )?;
                node.store.sync_async().await?;
                Ok(Decision {
                    id,
                    receipt: node.own_receipt(&signed, rejection.verdict()),
                    problems,
                })
            }
        }
    }
    .instrument(span)
    .await
}

async fn serve_child(node: Arc<Node>, connection: quinn::Connection) {
    let child = transport::peer_key(&connection).and_then(|key| {
        let topology = current(&node.topology);
        topology
            .node_by_key(&key)
            .filter(|n| transport::may_connect(&topology, node.me, n.id))
            .map(|n| n.id)
    });
    let Some(child) = child else {
        connection.close(1u32.into(), b"not a child of this node");
        return;
    };
    let span = info_span!("downlink", peer = %child);
    let result = drive_downlink(&node, child, &connection)
        .instrument(span.clone())
        .await;
    node.link(child, "down", |s| s.connected = false);
    if let Err(e) = result {
        span.in_scope(|| info!(reason = %format!("{e:#}"), "downlink ended"));
        node.link(child, "down", |s| s.last_error = Some(format!("{e:#}")));
    }
}

async fn drive_downlink(
    node: &Arc<Node>,
    child: NodeId,
    connection: &quinn::Connection,
) -> anyhow::Result<()> {
    let (mut send, recv) = connection
        .accept_bi()
        .await
        .context("waiting for the control stream")?;
    let (tx, mut rx) = mpsc::channel(CONTROL_QUEUE);
    spawn_reader(recv, tx);
    info!("child connected");
    node.link(child, "down", |s| {
        s.connected = true;
        s.since_ms = wall_ms();
        s.last_error = None;
    });
    let mut downlink = Downlink::new(child);
    send.write_all(
        &Message::Hello {
            node: node.me,
            wire_version: wire::WIRE_VERSION,
            topology_version: current(&node.topology).version,
        }
        .encode(),
    )
    .await?;
    let relay = node.relay_waker(child);
    let mut relayed: HashSet<(BatchId, NodeId)> = HashSet::new();
    relay.notify_one();
    let mut receiving: JoinSet<anyhow::Result<Decision>> = JoinSet::new();
    let receive_slots = Arc::new(tokio::sync::Semaphore::new(RECEIVES_PER_LINK));
    let mut topology_changes = node.topology_changed.subscribe();
    let store = node.store.clone();
    let me = node.me;
    loop {
        while let Some(message) = downlink.poll_transmit() {
            send.write_all(&message.encode()).await?;
        }
        while let Some(DownlinkEvent::RelayStored(done)) = downlink.poll_event() {
            store.relay_done(child, &done)?;
        }
        tokio::select! {
            message = rx.recv() => match message {
                Some(Ok(message)) => downlink.handle_message(message, |id| store.receipt(id, me).ok().flatten())?,
                Some(Err(e)) => bail!("child sent a bad frame: {e}"),
                None => bail!("control stream closed by {child}"),
            },
            stream = connection.accept_uni() => {
                let stream = stream.context("accepting a batch stream")?;
                let permit = receive_slots.clone();
                let node = node.clone();
                receiving.spawn(async move {
                    let _slot = permit.acquire_owned().await.expect("the semaphore is never closed");
                    receive_batch(node, child, stream).await
                });
            }
            Some(joined) = receiving.join_next() => match joined.context("receive task")? {
                Ok(decision) => {
                    downlink.handle_batch_arrived(&decision.id);
                    downlink.handle_decided(decision.receipt, decision.problems);
                    node.link(child, "down", |s| s.batches_received += 1);
                }
                Err(e) => warn!(error = %format!("{e:#}"), "batch stream failed; the child will offer it again"),
            },
            _ = relay.notified() => {
                let pending: Vec<SignedReceipt> = store
                    .relay_pending(child)?
                    .into_iter()
                    .filter(|r| relayed.insert((r.receipt.batch, r.receipt.receiver)))
                    .collect();
                if !pending.is_empty() {
                    downlink.handle_upstream_receipts(pending);
                }
            }
            _ = topology_changes.changed() => {
                let topology = current(&node.topology);
                let still = transport::peer_key(connection)
                    .and_then(|k| topology.node_by_key(&k).map(|n| n.id));
                if still != Some(child) || !transport::may_connect(&topology, node.me, child) {
                    connection.close(0u32.into(), b"no longer pinned in the topology");
                    bail!("{child} is no longer a pinned child in the topology: link closed");
                }
            }
            reason = connection.closed() => bail!("connection closed: {reason}"),
        }
    }
}

const MIGRATION_STATE: &str = "migration_phase";
/// How often a migrating node re-checks its phase.
const MIGRATION_TICK: Duration = Duration::from_millis(250);

impl Node {
    /// What the migration machine observes now; `None` if this node has no legacy link.
    fn observe(&self) -> anyhow::Result<Option<Observed>> {
        let topology = current(&self.topology);
        let Some(link) = topology.legacy_link(self.me) else {
            return Ok(None);
        };
        let parent = topology.parent_of(self.me).map(|p| p.id);
        let up_since = parent.and_then(|p| {
            self.links
                .lock()
                .expect("links lock")
                .get(&(p, Route::Parent.direction()))
                .filter(|s| s.connected)
                .map(|s| s.since_ms)
        });
        let (delivered, covered) = self.store.coverage(self.me)?;
        Ok(Some(Observed {
            migrate: link.migrate && parent.is_some(),
            new_path_up_since_ms: up_since,
            delivered,
            covered,
            verify_window_ms: link.verify_window_s * 1000,
            rollback_window_ms: link.rollback_window_s * 1000,
            now_ms: wall_ms(),
        }))
    }

    /// Advances this node's migration by what it observes; logs, audits and persists every
    /// phase change, and re-queues held batches for the links the new phase sends on.
    pub fn migration_tick(&self) -> anyhow::Result<()> {
        let Some(observed) = self.observe()? else {
            *self.migration.lock().expect("migration lock") = None;
            return Ok(());
        };
        let transition = {
            let mut guard = self.migration.lock().expect("migration lock");
            if guard.is_none() {
                let (phase, since) = self
                    .store
                    .state_get::<(Phase, u64)>(MIGRATION_STATE)?
                    .unwrap_or((Phase::Direct, observed.now_ms));
                // A restart in verify starts the health window again: conservative.
                let since = if phase == Phase::Verify {
                    observed.now_ms
                } else {
                    since
                };
                *guard = Some(Migration::new(phase, since));
            }
            let migration = guard.as_mut().expect("just set");
            migration.step(&observed).map(|t| (t, migration.since_ms))
        };
        let Some((transition, since)) = transition else {
            return Ok(());
        };
        self.store
            .state_put(MIGRATION_STATE, &(transition.to, since))?;
        self.store.audit(
            AuditEvent::Migration {
                node: self.me,
                phase: transition.to.to_string(),
                detail: transition.reason.clone(),
            },
            observed.now_ms,
        )?;
        if transition.fallback {
            warn!(from = %transition.from, to = %transition.to, reason = %transition.reason, "migration: falling back to the legacy link");
        } else {
            info!(from = %transition.from, to = %transition.to, reason = %transition.reason, "migration phase");
        }
        for target in self.forward_targets() {
            let added = self.store.requeue_unreceipted(target)?;
            if added > 0 {
                info!(peer = %target, batches = added, "queued held batches for a link of the new phase");
            }
        }
        self.store.sync()?;
        self.topology_changed.send_modify(|_| {});
        self.notify_outboxes();
        Ok(())
    }

    /// The migration as `topology status` shows it.
    pub fn migration_status(&self) -> anyhow::Result<serde_json::Value> {
        let Some(observed) = self.observe()? else {
            return Ok(
                serde_json::json!({"legacy_link": false, "phase": null, "waiting_for": "nothing: no legacy link"}),
            );
        };
        let migration = self
            .migration
            .lock()
            .expect("migration lock")
            .clone()
            .unwrap_or_else(|| Migration::new(Phase::Direct, observed.now_ms));
        let routes = migration.routes();
        Ok(serde_json::json!({
            "legacy_link": true,
            "phase": migration.phase.to_string(),
            "since_ms": migration.since_ms,
            "waiting_for": migration.waiting_for(&observed),
            "delivered": observed.delivered,
            "covered": observed.covered,
            "new_path_up": observed.new_path_up_since_ms.is_some(),
            "legacy_open": routes.legacy_open,
            "sends_on_legacy": routes.legacy_sends,
            "sends_on_new_path": routes.parent_sends,
        }))
    }
}

async fn migration_loop(node: Arc<Node>) {
    let mut tick = tokio::time::interval(MIGRATION_TICK);
    loop {
        tick.tick().await;
        if let Err(e) = node.migration_tick() {
            error!(error = %format!("{e:#}"), "migration check failed");
        }
    }
}

/// Waits for SIGHUP and reloads the topology each time.
pub async fn reload_on_sighup(node: Arc<Node>) {
    #[cfg(unix)]
    {
        let Ok(mut hangups) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hangups.recv().await.is_some() {
            if let Err(e) = node.reload_topology() {
                error!(error = %format!("{e:#}"), "topology reload refused; still running on the previous topology");
                let _ = node.store.audit(
                    AuditEvent::TopologyRefused {
                        reason: format!("{e:#}"),
                    },
                    wall_ms(),
                );
            }
        }
    }
    #[cfg(not(unix))]
    std::future::pending::<()>().await;
}

/// Stops accepting and dialing, and makes the store durable.
pub async fn shutdown(node: &Node) {
    node.endpoint.close(0u32.into(), b"node stopping");
    if let Err(e) = node.store.sync_async().await {
        error!(error = %e, "final store sync failed");
    }
    node.endpoint.wait_idle().await;
}
