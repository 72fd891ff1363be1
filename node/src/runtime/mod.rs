//! The running node: a thin executor of the [`Core`]. It turns sockets, streams, timers and
//! store syncs into the core's `handle_*` calls and carries out the core's [`Output`]s; it
//! has no branch on protocol state. One task per connection, each inside a tracing span
//! naming the peer.
//!
//! - [`links`]: dialing a route's peer, accepting children, and driving one connection
//!   (control frames in and out, batch streams in and out).
//! - [`framing`]: reading control frames with the length checked before allocation.
//! - Here: the node handle, the output dispatcher, the timer, the store syncer (group
//!   commit: one sync covers every write made before it started), submit, reload, shutdown.
//!
//! Invariant (by the core's construction): no receipt or other acknowledgement leaves this
//! node before the store has reported the write that holds it durable.

mod framing;
mod links;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use protocol::ids::NodeId;
use protocol::sync::SyncConfig;
use protocol::wire::Message;
use protocol::{Ed25519, SignedBatch};
use tokio::sync::{Notify, mpsc, watch};
use tracing::{error, info};

use crate::core::{Clock, Core, CoreConfig, LinkId, LinkStatus, Now, Output};
use crate::identity::Identity;
use crate::store::{Kv, SledKv, Store};
use crate::transport::{self, ChildrenPolicy, SharedTopology, current};

pub use crate::core::Route;

/// Wall-clock milliseconds since the Unix epoch (for stamps shown to people, never for
/// windows or timeouts).
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The system clock: monotonic time from [`tokio::time::Instant`] (virtual under a paused
/// or simulated runtime), wall time from the system.
pub struct SystemClock {
    started: Instant,
}

impl SystemClock {
    pub fn new() -> SystemClock {
        SystemClock {
            started: tokio::time::Instant::now().into_std(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Now {
        Now {
            mono_ms: tokio::time::Instant::now()
                .into_std()
                .saturating_duration_since(self.started)
                .as_millis() as u64,
            wall_ms: wall_ms(),
        }
    }
}

/// A connection the runtime holds for the core.
struct LinkHandle {
    connection: quinn::Connection,
    control: mpsc::UnboundedSender<Message>,
}

/// A running node.
pub struct Node<K: Kv = SledKv> {
    pub me: NodeId,
    /// For reads (the operator API); every write goes through the core.
    pub store: Store<K>,
    /// A mirror of the core's topology, for the TLS accept policy and the operator API.
    pub topology: SharedTopology,
    pub endpoint: quinn::Endpoint,
    identity: Identity,
    topology_path: PathBuf,
    core: Mutex<Core<K>>,
    clock: Arc<dyn Clock>,
    links: Mutex<HashMap<LinkId, LinkHandle>>,
    next_link: AtomicU64,
    durable: watch::Sender<u64>,
    sync_requests: mpsc::UnboundedSender<u64>,
    timer: Notify,
}

impl<K: Kv> Node<K> {
    fn now(&self) -> Now {
        self.clock.now()
    }

    /// Runs one input through the core, then carries out what it asked for.
    fn with_core<R>(self: &Arc<Self>, f: impl FnOnce(&mut Core<K>, Now) -> R) -> R {
        let (result, outputs, topology) = {
            let mut core = self.core.lock().expect("the core lock is never poisoned");
            let result = f(&mut core, self.now());
            let mut outputs = Vec::new();
            while let Some(output) = core.poll_output() {
                outputs.push(output);
            }
            (result, outputs, core.topology().clone())
        };
        if current(&self.topology).version != topology.version
            || *current(&self.topology) != *topology
        {
            *self.topology.write().expect("topology lock") = topology;
        }
        for output in outputs {
            self.dispatch(output);
        }
        self.timer.notify_one();
        result
    }

    fn dispatch(self: &Arc<Self>, output: Output) {
        match output {
            Output::Dial {
                route,
                peer,
                address,
                key,
            } => {
                tokio::spawn(links::dial(self.clone(), route, peer, address, key));
            }
            Output::Transmit { link, message } => {
                if let Some(handle) = self.links.lock().expect("links lock").get(&link) {
                    let _ = handle.control.send(message);
                }
            }
            Output::SendBatch { link, id } => {
                let connection = self
                    .links
                    .lock()
                    .expect("links lock")
                    .get(&link)
                    .map(|h| h.connection.clone());
                if let Some(connection) = connection {
                    tokio::spawn(links::send_batch(self.clone(), link, connection, id));
                }
            }
            Output::Close { link, reason } => {
                if let Some(handle) = self.links.lock().expect("links lock").get(&link) {
                    handle.connection.close(0u32.into(), reason.as_bytes());
                }
            }
            Output::Sync { upto } => {
                let _ = self.sync_requests.send(upto);
            }
        }
    }

    fn register(
        &self,
        connection: quinn::Connection,
        control: mpsc::UnboundedSender<Message>,
    ) -> LinkId {
        let link = LinkId(self.next_link.fetch_add(1, Ordering::Relaxed));
        self.links.lock().expect("links lock").insert(
            link,
            LinkHandle {
                connection,
                control,
            },
        );
        link
    }

    fn unregister(&self, link: LinkId) {
        self.links.lock().expect("links lock").remove(&link);
    }

    /// What the operator sees of each link.
    pub fn links(&self) -> Vec<LinkStatus> {
        self.core.lock().expect("core lock").links()
    }

    /// The migration as `topology status` shows it.
    pub fn migration_status(&self) -> anyhow::Result<serde_json::Value> {
        let now = self.now();
        Ok(self.core.lock().expect("core lock").migration_status(now)?)
    }

    /// Accepts a batch submitted by this node's operator: the core checks it as a receiver
    /// would, stores it and queues it up; this returns once it is durable. Returns whether
    /// it was new.
    pub async fn submit(self: &Arc<Self>, signed: SignedBatch) -> anyhow::Result<bool> {
        let node = self.clone();
        let submitted = tokio::task::spawn_blocking(move || {
            node.with_core(|core, now| core.submit(signed, now))
        })
        .await??;
        let mut durable = self.durable.subscribe();
        durable
            .wait_for(|seq| *seq >= submitted.durable_at)
            .await
            .context("the node is stopping")?;
        Ok(submitted.new)
    }

    /// Re-reads the topology file; a file that does not validate, or that the core refuses,
    /// is refused with every reason, and the node keeps the topology it had.
    pub fn reload_topology(self: &Arc<Self>) -> anyhow::Result<u64> {
        let path = self.topology_path.clone();
        let result = read_topology(&path).and_then(|next| {
            self.with_core(|core, now| core.handle_topology(next, now))
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
        });
        if let Err(e) = &result {
            let reason = format!("{e:#}");
            self.with_core(|core, now| core.audit_refused_topology(&reason, now))?;
        }
        result
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
    let topology = Arc::new(topology);
    let shared: SharedTopology = Arc::new(std::sync::RwLock::new(topology.clone()));
    let policy = Arc::new(ChildrenPolicy {
        me,
        topology: shared.clone(),
    });
    let endpoint = transport::endpoint(address, &identity.key, policy)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    let core = Core::new(
        Box::new(identity.key.clone()),
        Box::new(Ed25519),
        topology,
        store.clone(),
        CoreConfig {
            sync: config,
            ..CoreConfig::default()
        },
        clock.now(),
    )?;
    let (sync_requests, sync_rx) = mpsc::unbounded_channel();
    let node = Arc::new(Node {
        me,
        store,
        topology: shared,
        endpoint,
        identity,
        topology_path: topology_path.to_owned(),
        core: Mutex::new(core),
        clock,
        links: Mutex::new(HashMap::new()),
        next_link: AtomicU64::new(1),
        durable: watch::channel(0).0,
        sync_requests,
        timer: Notify::new(),
    });
    info!(node = %me, %address, topology_version = version, "node listening");
    tokio::spawn(syncer(node.clone(), sync_rx));
    tokio::spawn(timer(node.clone()));
    tokio::spawn(links::accept_loop(node.clone()));
    // The core's first outputs (dials, the first sync) go out now.
    node.with_core(|_, _| ());
    Ok(node)
}

/// Makes the store durable for the core: each round covers every write the core asked for
/// before it started (group commit).
async fn syncer<K: Kv>(node: Arc<Node<K>>, mut requests: mpsc::UnboundedReceiver<u64>) {
    while let Some(mut upto) = requests.recv().await {
        while let Ok(more) = requests.try_recv() {
            upto = upto.max(more);
        }
        let store = node.store.clone();
        let result = tokio::task::spawn_blocking(move || store.sync())
            .await
            .expect("sync task does not panic");
        match result {
            Ok(()) => {
                node.with_core(|core, now| core.handle_durable(upto, now));
                node.durable.send_if_modified(|seq| {
                    let changed = upto > *seq;
                    *seq = (*seq).max(upto);
                    changed
                });
            }
            Err(e) => {
                let reason = e.to_string();
                node.with_core(|core, now| core.handle_sync_failed(&reason, now));
            }
        }
    }
}

/// Calls the core's timeout when it asks.
async fn timer<K: Kv>(node: Arc<Node<K>>) {
    loop {
        let next = node.core.lock().expect("core lock").poll_timeout();
        let now = node.now().mono_ms;
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep(Duration::from_millis(at.saturating_sub(now))).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sleep => {
                if let Err(e) = node.with_core(|core, now| core.handle_timeout(now)) {
                    error!(error = %e, "timer: the store failed; retrying on the next tick");
                }
            }
            _ = node.timer.notified() => {}
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
            }
        }
    }
    #[cfg(not(unix))]
    std::future::pending::<()>().await;
}

/// Stops accepting and dialing, and makes the store durable.
pub async fn shutdown<K: Kv>(node: &Node<K>) {
    node.endpoint.close(0u32.into(), b"node stopping");
    if let Err(e) = node.store.sync_async().await {
        error!(error = %e, "final store sync failed");
    }
    node.endpoint.wait_idle().await;
}
