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
//! **Seams.** Everything the runtime takes from the outside world arrives in [`Seams`]: the
//! node's key and checked topology, the store (any [`Kv`]), the [`Clock`], the UDP socket
//! under QUIC ([`Socket`]), the transport's randomness and TLS time ([`TransportSeams`], used
//! for every dial too), and how blocking work runs ([`Blocking`]). [`start`] builds the
//! production seams (identity and topology file from disk, sled, the system clock, a bound
//! UDP socket, OS randomness, tokio's blocking pool) and calls [`start_with`]; a simulation
//! calls [`start_with`] with turmoil's socket, virtual time, seeded randomness, an in-memory
//! store and inline blocking work, and runs exactly this code. Under a simulation nothing here
//! reads the OS clock, spawns a thread or picks at random: every `select!` is `biased` (tokio
//! otherwise picks the first branch polled at random), and the topology file is read only by
//! [`Node::reload_topology`] (a simulation applies a topology with [`Node::apply_topology`]).
//!
//! Invariant (by the core's construction): no receipt or other acknowledgement leaves this
//! node before the store has reported the write that holds it durable.
//!
//! **Errors.** One `thiserror` enum per operation: [`StartError`], [`SubmitError`],
//! [`ReloadTopologyError`] (reload and apply), [`TopologyFileError`] (reading the file);
//! [`Node::migration_status`] can only fail in the store. A message stands alone: it says what
//! failed, names the file where there is one, says what to do, and includes the message of
//! its cause. A cause this module adds a message to is kept as a field, not also returned as
//! `source()`, so a caller printing the chain (`{:#}`) does not say it twice; errors of the
//! other modules (identity, store, transport, core) pass through unchanged (`transparent`).

mod framing;
mod links;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use protocol::ids::NodeId;
use protocol::sync::SyncConfig;
use protocol::wire::Message;
use protocol::{Ed25519, NodeKey, PublicKey, SignedBatch};
use tokio::sync::{Notify, mpsc, watch};
use tracing::{error, info};

use crate::core::{
    Clock, Core, CoreConfig, CoreError, LinkId, LinkStatus, Now, Output, Prechecked, ReloadError,
};
use crate::identity::{Identity, IdentityError};
use crate::store::{Kv, SledKv, Store, StoreError};
use crate::transport::{
    self, ChildrenPolicy, SharedTopology, TransportError, TransportSeams, current,
};

pub use crate::core::Route;

/// Why a node did not start ([`start`], [`start_with`]). [`start_with`] is handed its key and
/// topology, so it returns only [`StartError::KeyNotPinned`], [`StartError::Transport`] and
/// [`StartError::Core`].
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The node directory holds no usable identity.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    TopologyFile(#[from] TopologyFileError),
    #[error("node {me} is not in {path}: add it (run `credit-node init` for the line to paste)")]
    NotInTopology { me: NodeId, path: PathBuf },
    #[error(
        "{path}: the key pinned for {me} is {pinned}, but this node's key is {own}: paste the line printed by `credit-node init`"
    )]
    KeyMismatch {
        path: PathBuf,
        me: NodeId,
        pinned: PublicKey,
        own: PublicKey,
    },
    /// The store in the node directory could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "the topology pins this node's key {0} for no node: add the node with the line `credit-node init` printed"
    )]
    KeyNotPinned(PublicKey),
    /// The QUIC endpoint could not be made (e.g. the address is taken).
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The core could not read its state from the store.
    #[error(transparent)]
    Core(#[from] CoreError),
}

/// Why a topology file could not be used ([`read_topology`]).
#[derive(Debug, thiserror::Error)]
pub enum TopologyFileError {
    #[error(
        "cannot read topology file {path}: {io}: check the path given to `credit-node run --topology`"
    )]
    Read { path: PathBuf, io: std::io::Error },
    /// Every problem of the file, each at its line and column.
    #[error(
        "topology file {path} is not valid:\n{}\n  fix these and try again (`credit-node topology check` lists them too)",
        problem_lines(.path, .problems)
    )]
    Invalid {
        path: PathBuf,
        problems: Vec<topology::TopologyError>,
    },
}

/// One line per problem, each naming the file.
fn problem_lines(path: &Path, problems: &[topology::TopologyError]) -> String {
    let lines: Vec<String> = problems
        .iter()
        .map(|e| format!("  {}: {e}", path.display()))
        .collect();
    lines.join("\n")
}

/// Why a batch the operator submitted was not accepted ([`Node::submit`]).
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The batch fails a check a receiver makes ([`CoreError::Refused`], with the reason), or
    /// the store failed.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// The node went away before the store reported the batch durable (submitting it again
    /// is safe: a batch the node already holds is not stored twice).
    #[error("the node stopped before the batch was durable: submit it again once the node runs")]
    Stopping,
    /// Stored, but the store could not make it durable (a full disk, say). The node keeps
    /// trying; once a sync succeeds the batch is durable and goes up by itself.
    #[error(
        "the batch is written but the store cannot make it durable: {reason}: free disk space; the node retries by itself and sends it up once durable (submitting again is safe)"
    )]
    NotDurable { reason: String },
    /// The store work for the batch did not run to its end (it panicked, or the runtime is
    /// shutting down).
    #[error(
        "the store work for the batch did not finish ({0}): see the node's log, then submit it again"
    )]
    Interrupted(tokio::task::JoinError),
}

/// Why a new topology was not applied ([`Node::reload_topology`], [`Node::apply_topology`]);
/// the node keeps the topology it had. Every refusal but [`ReloadTopologyError::NoFile`] is
/// recorded in the audit log with this message.
#[derive(Debug, thiserror::Error)]
pub enum ReloadTopologyError {
    #[error("this node was started without a topology file; nothing to re-read")]
    NoFile,
    #[error(transparent)]
    File(#[from] TopologyFileError),
    /// The core refused it: this node is not in it, its key is not this node's, the planner
    /// refuses the change, or the store failed (the refusal says which). `path` is the file
    /// it came from, if any.
    #[error("{}{refusal}", file_prefix(.path.as_deref()))]
    Refused {
        path: Option<PathBuf>,
        refusal: ReloadError,
    },
    /// Refused, and the refusal could not be written to the audit log either.
    #[error("{refused}; recording this refusal in the audit log failed too: {store}")]
    NotAudited {
        refused: Box<ReloadTopologyError>,
        store: CoreError,
    },
}

/// `"PATH: "` for a refusal of a file, nothing for a topology given in memory.
fn file_prefix(path: Option<&Path>) -> String {
    path.map(|p| format!("{}: ", p.display()))
        .unwrap_or_default()
}

/// Wall-clock milliseconds since the Unix epoch (for stamps shown to people, never for
/// windows or timeouts).
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The environment variable that shifts a node's wall clock by a number of milliseconds
/// (negative: back). For tests and drills that need "after the deadline" today; it gives an
/// operator no power they lack (they set their machine's clock), and it cannot back-date
/// anyone else's reports: arrival is dated by the first parent's clock.
pub const CLOCK_OFFSET_ENV: &str = "CREDIT_NODE_CLOCK_OFFSET_MS";

/// The system clock: monotonic time from [`tokio::time::Instant`] (virtual under a paused
/// or simulated runtime), wall time from the system.
pub struct SystemClock {
    started: Instant,
    /// From [`CLOCK_OFFSET_ENV`], 0 without it.
    offset_ms: i64,
}

impl SystemClock {
    pub fn new() -> SystemClock {
        let offset_ms = std::env::var(CLOCK_OFFSET_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
            .unwrap_or(0);
        if offset_ms != 0 {
            tracing::warn!(offset_ms, "the wall clock is shifted by {CLOCK_OFFSET_ENV}");
        }
        SystemClock {
            started: tokio::time::Instant::now().into_std(),
            offset_ms,
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
            wall_ms: wall_ms().saturating_add_signed(self.offset_ms),
        }
    }
}

/// How the runtime runs work that blocks (store syncs, reading a batch back, the receive
/// decision with its store writes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Blocking {
    /// On tokio's blocking thread pool, so the event loop keeps moving (production).
    #[default]
    Threads,
    /// Inline, on the task that asks, once `after` has passed on the runtime's clock
    /// (simulation: no threads, so a run replays from its seed; the in-memory store does
    /// not block, and `after` stands for the disk's time, so a crash can fall between a
    /// write and the sync that makes it durable).
    Inline { after: Duration },
}

impl Blocking {
    /// Runs `work` under this policy. An error means the work panicked on a blocking thread
    /// (inline, a panic unwinds through the caller as any other would).
    pub async fn run<R, F>(self, work: F) -> Result<R, tokio::task::JoinError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        match self {
            Blocking::Threads => tokio::task::spawn_blocking(work).await,
            Blocking::Inline { after } => {
                if !after.is_zero() {
                    tokio::time::sleep(after).await;
                }
                Ok(work())
            }
        }
    }
}

/// The UDP socket a node's QUIC endpoint runs on.
pub enum Socket {
    /// A real UDP socket bound to the node's address in the topology, through
    /// [`transport::endpoint`] (OS randomness for the endpoint): production.
    Bind,
    /// A socket and async runtime given by the caller (e.g. a simulated network's), through
    /// [`transport::endpoint_with_socket`] with the seams' [`TransportSeams`]. Must be made
    /// inside the runtime the node runs on.
    Given {
        socket: Arc<dyn quinn::AsyncUdpSocket>,
        runtime: Arc<dyn quinn::Runtime>,
    },
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Socket::Bind => f.write_str("Socket::Bind"),
            Socket::Given { socket, .. } => f
                .debug_struct("Socket::Given")
                .field("local", &socket.local_addr().ok())
                .finish_non_exhaustive(),
        }
    }
}

/// Everything a node takes from the world it runs in. [`start`] makes the production ones.
pub struct Seams<K: Kv> {
    /// The node's identity key: signs what it originates and its receipts, and makes its
    /// TLS certificate.
    pub key: NodeKey,
    /// The topology, already parsed and validated; it must pin `key` for some node (that node
    /// is the one started).
    pub topology: topology::Topology,
    /// Where [`Node::reload_topology`] re-reads the topology; `None`: only
    /// [`Node::apply_topology`] changes it.
    pub topology_path: Option<PathBuf>,
    /// The store, new or reopened (after a restart or a crash).
    pub store: Store<K>,
    /// Monotonic time for windows and timeouts, wall time for stamps.
    pub clock: Arc<dyn Clock>,
    /// The UDP socket under QUIC.
    pub socket: Socket,
    /// Randomness and TLS time for the endpoint (with [`Socket::Given`]) and every dial.
    pub transport: TransportSeams,
    /// Where blocking work runs.
    pub blocking: Blocking,
    pub config: CoreConfig,
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
    key: NodeKey,
    topology_path: Option<PathBuf>,
    transport: TransportSeams,
    blocking: Blocking,
    core: Mutex<Core<K>>,
    clock: Arc<dyn Clock>,
    links: Mutex<HashMap<LinkId, LinkHandle>>,
    next_link: AtomicU64,
    durable: watch::Sender<u64>,
    /// The number of failed syncs so far and the last one's reason.
    sync_failed: watch::Sender<(u64, String)>,
    sync_requests: mpsc::UnboundedSender<u64>,
    timer: Notify,
    /// The budget of batch streams being read, over all links (`framing`): bytes and frames.
    batch_budget: framing::BatchBudget,
    /// Turns to hand a received or submitted batch to the core ([`links::BATCHES_TO_CORE`]).
    to_core: Arc<tokio::sync::Semaphore>,
    /// Where received batches' time went, summed.
    receiving: Mutex<ReceiveTimes>,
    /// Where the dashboard listens, once it does (`status` shows it).
    pub http: std::sync::OnceLock<std::net::SocketAddr>,
}

/// Where the batches a node received spent their time once read off the wire, summed since
/// it started: the checks made before the core's lock ([`Prechecked`]), the wait for a turn
/// and for the lock, and the time the core held them (which it does one at a time, so at
/// `core / batches` per batch the node receives at most that many batches a second). Also
/// in `/metrics` as `credit_batch_receive_seconds` by stage.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ReceiveTimes {
    pub batches: u64,
    pub check: Duration,
    pub wait: Duration,
    pub core: Duration,
    /// The longest the core held one batch.
    pub core_max: Duration,
}

impl<K: Kv> Node<K> {
    fn now(&self) -> Now {
        self.clock.now()
    }

    /// Where received batches' time went so far.
    pub fn receive_times(&self) -> ReceiveTimes {
        *self.receiving.lock().expect("never poisoned")
    }

    /// Counts one received batch's times (and records them in `/metrics`).
    fn received(&self, check: Duration, wait: Duration, core: Duration) {
        let mut times = self.receiving.lock().expect("never poisoned");
        times.batches += 1;
        times.check += check;
        times.wait += wait;
        times.core += core;
        times.core_max = times.core_max.max(core);
        drop(times);
        crate::metrics::batch_received(check, wait, core);
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
            Output::SendBatch {
                link,
                id,
                first_receipt,
            } => {
                let connection = self
                    .links
                    .lock()
                    .expect("links lock")
                    .get(&link)
                    .map(|h| h.connection.clone());
                if let Some(connection) = connection {
                    tokio::spawn(links::send_batch(
                        self.clone(),
                        link,
                        connection,
                        id,
                        first_receipt,
                    ));
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

    /// Wall-clock Unix milliseconds by the node's clock (with its offset, if set).
    pub fn wall_ms(&self) -> u64 {
        self.now().wall_ms
    }

    /// The migration as `topology status` shows it.
    pub fn migration_status(&self) -> Result<serde_json::Value, StoreError> {
        let now = self.now();
        self.core.lock().expect("core lock").migration_status(now)
    }

    /// Accepts a batch submitted by this node's operator: the core checks it as a receiver
    /// would, stores it and queues it up; this returns once it is durable. Returns whether
    /// it was new, and its records published already in a batch it does not correct.
    pub async fn submit(
        self: &Arc<Self>,
        signed: SignedBatch,
    ) -> Result<crate::core::Submitted, SubmitError> {
        let node = self.clone();
        // The batch's stateless checks (97 % of verifying it) run before the core's lock, so
        // the core goes on with links and receipts meanwhile; a turn of the budget received
        // batches take too, so that no more than that many are decoded at once.
        let turn = self
            .to_core
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let submitted = self
            .blocking
            .run(move || {
                let _turn = turn;
                let checked = Prechecked::new(signed);
                node.with_core(|core, now| core.submit_prechecked(checked, now))
                    // Its records and index update are freed here, the core released.
                    .map(|(submitted, _spent)| submitted)
            })
            .await
            .map_err(SubmitError::Interrupted)??;
        self.durable_at(submitted.durable_at).await?;
        Ok(submitted)
    }

    /// Waits until the store has made every write up to `seq` durable, or a sync fails.
    async fn durable_at(&self, seq: u64) -> Result<(), SubmitError> {
        let mut durable = self.durable.subscribe();
        let mut failed = self.sync_failed.subscribe();
        failed.borrow_and_update();
        // `biased`: a fixed order, so a simulated run replays.
        tokio::select! {
            biased;
            done = durable.wait_for(|done| *done >= seq) => {
                done.map_err(|_| SubmitError::Stopping)?;
                Ok(())
            }
            changed = failed.changed() => {
                changed.map_err(|_| SubmitError::Stopping)?;
                if *self.durable.borrow() >= seq {
                    return Ok(());
                }
                Err(SubmitError::NotDurable { reason: failed.borrow().1.clone() })
            }
        }
    }

    /// Closes a period: the core signs a manifest of this node's batches for it (a nil
    /// manifest when there are none) and submits it; returns once it is durable.
    pub async fn close_period(
        self: &Arc<Self>,
        category: protocol::Category,
        period: protocol::Period,
        declared: Option<u64>,
    ) -> Result<(protocol::BatchId, bool), SubmitError> {
        let node = self.clone();
        let (id, submitted) = self
            .blocking
            .run(move || {
                node.with_core(|core, now| core.close_period(&category, period, declared, now))
            })
            .await
            .map_err(SubmitError::Interrupted)??;
        self.durable_at(submitted.durable_at).await?;
        Ok((id, submitted.new))
    }

    /// Makes this province's progress report (工作通报) for a period with the operators'
    /// figures and submits it; returns its id and whether it was new, once it is durable.
    pub async fn progress_report(
        self: &Arc<Self>,
        period: protocol::Period,
        figures: protocol::OperatorFigures,
    ) -> Result<(protocol::BatchId, bool), SubmitError> {
        let node = self.clone();
        let (id, submitted) = self
            .blocking
            .run(move || node.with_core(|core, now| core.progress_report(period, figures, now)))
            .await
            .map_err(SubmitError::Interrupted)??;
        self.durable_at(submitted.durable_at).await?;
        Ok((id, submitted.new))
    }

    /// The progress reports this node holds, the newest revision per (province, period).
    pub fn progress_reports(
        &self,
        period: Option<protocol::Period>,
    ) -> Result<Vec<crate::core::progress::HeldProgress>, crate::store::StoreError> {
        self.core
            .lock()
            .expect("core lock")
            .progress_reports(period)
    }

    /// Starts reconciliation with `peer` (a parent, or a child asked to start it), or with
    /// every uplink; returns how many links will reconcile.
    pub fn reconcile(
        self: &Arc<Self>,
        peer: Option<NodeId>,
    ) -> Result<usize, crate::store::StoreError> {
        self.with_core(|core, now| core.reconcile(peer, now))
    }

    /// The last reconciliation sessions this node finished.
    pub fn reconciled(&self) -> Vec<crate::core::ReconcileSummary> {
        self.core.lock().expect("core lock").reconciled()
    }

    /// The timeliness ledger of this node's subtree for a period. Read from the store and
    /// the topology the core last applied, without holding the core: a ledger of a whole
    /// province reads thousands of store entries, and the node keeps syncing meanwhile.
    pub fn ledger(
        &self,
        period: protocol::Period,
        category: Option<&protocol::Category>,
    ) -> Result<Vec<crate::core::ledger::Entry>, crate::store::StoreError> {
        crate::core::ledger::ledger(
            &self.store,
            &current(&self.topology),
            self.me,
            period,
            category,
            self.now().wall_ms,
            crate::core::ledger::LedgerConfig::default(),
        )
    }

    /// Re-reads the topology file; a file that does not validate, or that the core refuses,
    /// is refused with every reason, and the node keeps the topology it had.
    pub fn reload_topology(self: &Arc<Self>) -> Result<u64, ReloadTopologyError> {
        let Some(path) = self.topology_path.clone() else {
            return Err(ReloadTopologyError::NoFile);
        };
        let result = read_topology(&path)
            .map_err(ReloadTopologyError::from)
            .and_then(|next| {
                self.with_core(|core, now| core.handle_topology(next, now))
                    .map_err(|refusal| ReloadTopologyError::Refused {
                        path: Some(path),
                        refusal,
                    })
            });
        self.audit_refusal(result)
    }

    /// Applies a topology already read and validated (as [`Node::reload_topology`] does
    /// after reading the file): refused with the reason if the core refuses it, and the node
    /// keeps the topology it had.
    pub fn apply_topology(
        self: &Arc<Self>,
        next: topology::Topology,
    ) -> Result<u64, ReloadTopologyError> {
        let result = self
            .with_core(|core, now| core.handle_topology(next, now))
            .map_err(|refusal| ReloadTopologyError::Refused {
                path: None,
                refusal,
            });
        self.audit_refusal(result)
    }

    /// Records a refused reload in the audit log.
    fn audit_refusal(
        self: &Arc<Self>,
        result: Result<u64, ReloadTopologyError>,
    ) -> Result<u64, ReloadTopologyError> {
        let Err(refused) = result else {
            return result;
        };
        let reason = refused.to_string();
        match self.with_core(|core, now| core.audit_refused_topology(&reason, now)) {
            Ok(()) => Err(refused),
            Err(store) => Err(ReloadTopologyError::NotAudited {
                refused: Box::new(refused),
                store,
            }),
        }
    }
}

/// Reads and validates a topology file, with every problem in the error.
pub fn read_topology(path: &Path) -> Result<topology::Topology, TopologyFileError> {
    let text = std::fs::read_to_string(path).map_err(|io| TopologyFileError::Read {
        path: path.to_owned(),
        io,
    })?;
    topology::Topology::parse(&text).map_err(|problems| TopologyFileError::Invalid {
        path: path.to_owned(),
        problems,
    })
}

/// Starts a node from its directory and topology file; returns once it is listening. The
/// production seams: the identity in `dir`, sled in `dir/store`, the system clock, a UDP
/// socket bound to the node's address, OS randomness, tokio's blocking pool.
pub async fn start(
    dir: &Path,
    topology_path: &Path,
    config: SyncConfig,
) -> Result<Arc<Node>, StartError> {
    let identity = Identity::load(dir)?;
    let me = identity.id;
    let topology = read_topology(topology_path)?;
    let entry = topology.node(me).ok_or_else(|| StartError::NotInTopology {
        me,
        path: topology_path.to_owned(),
    })?;
    if entry.public_key != identity.public() {
        return Err(StartError::KeyMismatch {
            path: topology_path.to_owned(),
            me,
            pinned: entry.public_key,
            own: identity.public(),
        });
    }
    let store = Store::open(&dir.join("store"))?;
    start_with(Seams {
        key: identity.key,
        topology,
        topology_path: Some(topology_path.to_owned()),
        store,
        clock: Arc::new(SystemClock::new()),
        socket: Socket::Bind,
        transport: TransportSeams::os(),
        blocking: Blocking::Threads,
        config: CoreConfig {
            sync: config,
            ..CoreConfig::default()
        },
    })
    .await
}

/// Starts a node over the given seams; returns once it is listening. Must be called inside
/// the tokio runtime the node is to run on (its tasks are spawned there).
pub async fn start_with<K: Kv>(seams: Seams<K>) -> Result<Arc<Node<K>>, StartError> {
    let Seams {
        key,
        topology,
        topology_path,
        store,
        clock,
        socket,
        transport,
        blocking,
        config,
    } = seams;
    let Some(entry) = topology.node_by_key(&key.public()) else {
        return Err(StartError::KeyNotPinned(key.public()));
    };
    let (me, address) = (entry.id, entry.address);
    let version = topology.version;
    let topology = Arc::new(topology);
    let shared: SharedTopology = Arc::new(std::sync::RwLock::new(topology.clone()));
    let policy = Arc::new(ChildrenPolicy {
        me,
        topology: shared.clone(),
    });
    let endpoint = match socket {
        Socket::Bind => transport::endpoint(address, &key, policy)?,
        Socket::Given { socket, runtime } => {
            transport::endpoint_with_socket(socket, runtime, &key, policy, &transport)?
        }
    };
    let core = Core::new(
        Box::new(key.clone()),
        Box::new(Ed25519),
        topology,
        store.clone(),
        config,
        clock.now(),
    )?;
    let (sync_requests, sync_rx) = mpsc::unbounded_channel();
    let node = Arc::new(Node {
        me,
        store,
        topology: shared,
        endpoint,
        key,
        topology_path,
        transport,
        blocking,
        core: Mutex::new(core),
        clock,
        links: Mutex::new(HashMap::new()),
        next_link: AtomicU64::new(1),
        durable: watch::channel(0).0,
        sync_failed: watch::channel((0, String::new())).0,
        sync_requests,
        timer: Notify::new(),
        batch_budget: framing::BatchBudget::new(),
        to_core: Arc::new(tokio::sync::Semaphore::new(links::BATCHES_TO_CORE)),
        receiving: Mutex::default(),
        http: std::sync::OnceLock::new(),
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
        let result = node
            .blocking
            .run(move || store.sync())
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
                node.sync_failed
                    .send_modify(|(failures, last)| (*failures, *last) = (*failures + 1, reason));
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
        // `biased`: a fixed order, so a simulated run replays (either order is correct).
        tokio::select! {
            biased;
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
                error!(error = %e, "topology reload refused; still running on the previous topology");
            }
        }
    }
    #[cfg(not(unix))]
    std::future::pending::<()>().await;
}

/// Stops accepting and dialing, and makes the store durable.
pub async fn shutdown<K: Kv>(node: &Node<K>) {
    node.endpoint.close(0u32.into(), b"node stopping");
    let store = node.store.clone();
    let result = node
        .blocking
        .run(move || store.sync())
        .await
        .expect("sync task does not panic");
    if let Err(e) = result {
        error!(error = %e, "final store sync failed");
    }
    node.endpoint.wait_idle().await;
}
