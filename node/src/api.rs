//! The operator API of a running node, on a Unix domain socket in the node directory (sled
//! allows one process per store, so operator commands talk to the node that holds it).
//!
//! **Who may call.** The node listens on `<dir>/api.sock`, mode 0600, and on each connection
//! checks the caller's user id (`SO_PEERCRED`): only the user the node runs as (and root) may
//! talk to it; anyone else is answered with a refusal and closed before anything is read. The
//! file mode already keeps other users from connecting; the check holds even when the mode
//! was changed. There is no token: over TCP a token in a 0600 file stood in for exactly these
//! file permissions, so whoever could read it could use the socket anyway.
//!
//! **No caller can stop it.** An accept error (out of file descriptors, say) is logged and
//! retried after a short pause, never the end of the server. At most [`CONNECTIONS_MAX`]
//! connections are open at once; over the cap, the oldest connection still waiting for its
//! request is closed to make room (so a flood of idle connections never locks out the
//! operator's next command), and when every slot is busy answering, the new one is answered
//! "busy" and closed (the client retries for a while). The length of a request must arrive
//! within [`HEADER_DEADLINE`] of connecting and the whole request within
//! [`REQUEST_DEADLINE`]; an answer must be taken within [`ANSWER_DEADLINE`].
//!
//! A request is `[u32 big-endian length][bincode ApiRequest]` (capped at one batch frame);
//! the answer is `[u32 length][JSON]`. One request per connection.

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bincode::{Decode, Encode};
use protocol::{NodeId, SignedBatch};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::runtime::{Node, SubmitError};
use crate::store::{AuditError, StoreError};
use crate::transport::current;

/// Largest request: one batch frame and its envelope.
const REQUEST_BYTES_MAX: usize = protocol::wire::BATCH_FRAME_BYTES_MAX + 1024;
/// The socket's file name in the node directory.
pub const SOCKET_FILE: &str = "api.sock";
/// What older versions wrote instead (a TCP address and a token); removed at start.
const OLD_API_FILE: &str = "api.toml";
/// Connections open at once.
pub const CONNECTIONS_MAX: usize = 64;
/// From connecting to the request's length.
pub const HEADER_DEADLINE: Duration = Duration::from_secs(2);
/// From connecting to the last byte of the request (a batch of 64 MiB takes well under a
/// second on a local socket).
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// For the caller to take the whole answer.
pub const ANSWER_DEADLINE: Duration = Duration::from_secs(10);
/// Longest pause after a failed accept (it doubles from 10 ms).
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long [`call`] retries while the node answers "busy", and how long it waits for an
/// answer (a submit returns once the batch is durable).
const CALL_BUSY_RETRY: Duration = Duration::from_secs(10);
const CALL_ANSWER_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest socket path Linux takes (`sun_path` is 108 bytes with its terminating zero).
const SOCKET_PATH_BYTES_MAX: usize = 107;

#[derive(Debug, Encode, Decode)]
pub enum ApiRequest {
    Submit(SignedBatch),
    Status,
    /// Every held batch, its signature re-verified, and the receipts stored for it.
    Batches,
    VerifyAudit,
    /// The migration phase of a node with a legacy direct link, and what it waits for.
    Migration,
    /// The audit entries, oldest first.
    AuditLog,
    /// Sign and submit this node's manifest for a period (a nil manifest if it sent nothing).
    ClosePeriod {
        category: String,
        period: String,
        declared: Option<u64>,
    },
    /// Reconcile now with one peer (a parent; a child is asked to start), or every uplink.
    Reconcile {
        peer: Option<String>,
    },
    /// The ledger of the node's subtree for a period, as `format` (table, json or csv).
    Report {
        period: String,
        category: Option<String>,
        format: String,
    },
    /// Make, sign and send up this province's progress report (工作通报) for a period.
    ProgressSend {
        period: String,
        figures: protocol::OperatorFigures,
    },
    /// The progress reports the node holds (newest revision per province and period), as
    /// `format` (table or json).
    Progress {
        period: Option<String>,
        format: String,
    },
    /// The fields of `category` the topology's minimum-necessary profile keeps from travelling
    /// upstream (none if it sets no profile): `submit` does not read their columns.
    Profile {
        category: String,
    },
    /// Feedback items (audit findings per record and field): open ones, or all with `all`;
    /// as `format` (table, json or csv).
    Feedback {
        origin: Option<String>,
        category: Option<String>,
        period: Option<String>,
        all: bool,
        format: String,
    },
    /// The current version of each record of a category and period (one origin's, or every
    /// origin held), with its history and withdrawal; as `format` (table or json).
    Records {
        category: String,
        period: String,
        origin: Option<String>,
        key: Option<String>,
        format: String,
    },
    /// Which of this node's own batches holds the current version of each key (for `correct`
    /// and `withdraw`).
    Current {
        category: String,
        period: Option<String>,
        keys: Vec<String>,
    },
    /// The keys whose current version own batch `batch` holds (for `correct --batch`).
    BatchKeys {
        batch: String,
    },
}

/// Why the operator API did not start ([`serve`]). Once listening it does not stop. As in
/// `runtime`, each message carries its cause's; the cause is not also returned as `source()`.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "the operator API socket path {path} is {bytes} bytes, over the {SOCKET_PATH_BYTES_MAX} a Unix socket allows: run the node with a shorter --dir"
    )]
    PathTooLong { path: PathBuf, bytes: usize },
    #[error(
        "{path} exists and is not a socket: move it away, the node puts its operator API there"
    )]
    NotASocket { path: PathBuf },
    #[error(
        "cannot listen for the operator API on {path}: {io}: check that the node directory is writable"
    )]
    Listen { path: PathBuf, io: std::io::Error },
}

/// Why an operator command got no answer from its node ([`call`]).
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("cannot reach the node at {path}: {io}: is `credit-node run --dir {}` running?", .dir.display())]
    Unreachable {
        path: PathBuf,
        dir: PathBuf,
        io: std::io::Error,
    },
    #[error("the node at {path} broke off the request: {io}: is it stopping?")]
    Exchange { path: PathBuf, io: std::io::Error },
    #[error(
        "the node at {path} gave no answer within {timeout:?}: see its log (`credit-node status` shows whether it answers)"
    )]
    Timeout { path: PathBuf, timeout: Duration },
    #[error("the node at {path} answered with {bytes} bytes, over the limit")]
    AnswerTooLarge { path: PathBuf, bytes: usize },
    #[error("the node at {path} answered with something other than JSON: {json}")]
    AnswerNotJson {
        path: PathBuf,
        json: serde_json::Error,
    },
    /// The node answered, refusing the request; the message is its reason.
    #[error("{0}")]
    Refused(String),
}

/// Why one connection to the API was dropped without an answer (logged).
#[derive(Debug, thiserror::Error)]
enum HandleError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("request of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("no request length within {HEADER_DEADLINE:?} of connecting")]
    NoHeader,
    #[error("the request did not arrive within {REQUEST_DEADLINE:?} of connecting")]
    SlowRequest,
    #[error("the caller did not take the answer within {ANSWER_DEADLINE:?}")]
    SlowReader,
    #[error("closed to make room for a newer connection (over {CONNECTIONS_MAX} open)")]
    Evicted,
    #[error("cannot encode the answer: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Why a request was answered with `"ok": false`; the message is the answer's `error`.
#[derive(Debug, thiserror::Error)]
enum AnswerError {
    #[error(transparent)]
    Submit(#[from] SubmitError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// A category or period in the request that does not parse.
    #[error(transparent)]
    Id(#[from] protocol::ids::IdError),
    #[error("no connected link to {0} to reconcile with: check `credit-node status`")]
    NothingToReconcile(String),
}

/// The open connections: those still waiting for their request (idle, oldest first, each with
/// the means to close it) and those being answered (busy).
#[derive(Default)]
struct Slots {
    inner: Mutex<SlotsInner>,
}

#[derive(Default)]
struct SlotsInner {
    next: u64,
    idle: std::collections::BTreeMap<u64, oneshot::Sender<()>>,
    busy: usize,
}

/// What the accept loop does with a new connection.
enum Admit {
    /// It has a slot; `evict` fires when it must make room.
    Open {
        slot: u64,
        evict: oneshot::Receiver<()>,
    },
    /// Every slot is busy answering.
    Busy,
}

impl Slots {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotsInner> {
        self.inner.lock().expect("the slots lock is never poisoned")
    }

    fn admit(&self) -> Admit {
        let mut inner = self.lock();
        if inner.idle.len() + inner.busy >= CONNECTIONS_MAX {
            match inner.idle.pop_first() {
                // Dropped or fired, the sender wakes the oldest idle connection: it closes.
                Some((_, evict)) => {
                    let _ = evict.send(());
                }
                None => return Admit::Busy,
            }
        }
        let (tx, evict) = oneshot::channel();
        let slot = inner.next;
        inner.next += 1;
        inner.idle.insert(slot, tx);
        Admit::Open { slot, evict }
    }

    /// The connection's request has arrived: it may no longer be evicted. `false` if it was
    /// evicted meanwhile.
    fn busy(&self, slot: u64) -> bool {
        let mut inner = self.lock();
        if inner.idle.remove(&slot).is_some() {
            inner.busy += 1;
            true
        } else {
            false
        }
    }

    /// The connection is closed.
    fn release(&self, slot: u64, busy: bool) {
        let mut inner = self.lock();
        if busy {
            inner.busy -= 1;
        } else {
            inner.idle.remove(&slot);
        }
    }
}

/// The socket path of the node running in `dir`.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(SOCKET_FILE)
}

/// Serves the API until the process ends. Returns only if it cannot start listening.
///
/// A socket file left by a node that stopped is removed: the caller holds the store's lock
/// (the store is opened before the API starts), so no other node runs in `dir`.
pub async fn serve(node: Arc<Node>, dir: &Path) -> Result<(), ServeError> {
    let path = socket_path(dir);
    let bytes = path.as_os_str().len();
    if bytes > SOCKET_PATH_BYTES_MAX {
        return Err(ServeError::PathTooLong { path, bytes });
    }
    let listen = |io| ServeError::Listen {
        path: path.clone(),
        io,
    };
    match std::fs::symlink_metadata(&path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(&path).map_err(listen)?,
        Ok(_) => return Err(ServeError::NotASocket { path }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(listen(e)),
    }
    let _ = std::fs::remove_file(dir.join(OLD_API_FILE));
    let listener = tokio::net::UnixListener::bind(&path).map_err(listen)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(listen)?;
    let owner = rustix::process::geteuid().as_raw();
    info!(socket = %path.display(), "operator API listening");
    let slots = Arc::new(Slots::default());
    let mut backoff = Duration::ZERO;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                backoff = Duration::ZERO;
                stream
            }
            Err(e) => {
                // Out of file descriptors (EMFILE), say: the waiting connection stays in the
                // backlog; pause so the loop does not spin, then go on.
                backoff = (backoff * 2).clamp(Duration::from_millis(10), ACCEPT_BACKOFF_MAX);
                warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "operator API: accepting a connection failed; retrying");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        match stream.peer_cred().map(|c| c.uid()) {
            Ok(uid) if uid == owner || uid == 0 => {}
            Ok(uid) => {
                warn!(
                    uid,
                    owner, "operator API: refused a connection from another user"
                );
                refuse(
                    stream,
                    &format!(
                        "the operator API of this node is for its own user (uid {owner}); you are uid {uid}"
                    ),
                    false,
                );
                continue;
            }
            Err(e) => {
                warn!(error = %e, "operator API: cannot tell who connected; closing");
                continue;
            }
        }
        match slots.admit() {
            Admit::Busy => {
                debug!("operator API: every slot busy; refusing a connection");
                refuse(
                    stream,
                    &format!("the node is busy answering {CONNECTIONS_MAX} requests; try again"),
                    true,
                );
            }
            Admit::Open { slot, evict } => {
                let node = node.clone();
                let slots = slots.clone();
                tokio::spawn(async move {
                    let mut busy = false;
                    if let Err(e) = handle(node, stream, &slots, slot, evict, &mut busy).await {
                        debug!(error = %e, "operator API connection closed without an answer");
                    }
                    slots.release(slot, busy);
                });
            }
        }
    }
}

/// Answers `error` without reading the request, if the socket takes it at once, and closes.
fn refuse(stream: tokio::net::UnixStream, error: &str, busy: bool) {
    let answer = serde_json::to_vec(&json!({"ok": false, "error": error, "busy": busy}))
        .expect("plain fields serialize");
    let mut frame = (answer.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&answer);
    let _ = stream.try_write(&frame);
}

async fn handle(
    node: Arc<Node>,
    mut stream: tokio::net::UnixStream,
    slots: &Slots,
    slot: u64,
    evict: oneshot::Receiver<()>,
    busy: &mut bool,
) -> Result<(), HandleError> {
    let started = tokio::time::Instant::now();
    let read = async {
        let length = tokio::time::timeout_at(started + HEADER_DEADLINE, stream.read_u32())
            .await
            .map_err(|_| HandleError::NoHeader)?? as usize;
        if length > REQUEST_BYTES_MAX {
            return Err(HandleError::TooLarge(length));
        }
        let mut body = vec![0u8; length];
        tokio::time::timeout_at(started + REQUEST_DEADLINE, stream.read_exact(&mut body))
            .await
            .map_err(|_| HandleError::SlowRequest)??;
        Ok(body)
    };
    let body = tokio::select! {
        body = read => body?,
        _ = evict => return Err(HandleError::Evicted),
    };
    if !slots.busy(slot) {
        return Err(HandleError::Evicted);
    }
    *busy = true;
    let answer = match bincode::decode_from_slice::<ApiRequest, _>(
        &body,
        bincode::config::standard().with_limit::<REQUEST_BYTES_MAX>(),
    ) {
        Err(e) => json!({"ok": false, "error": format!("malformed request: {e}")}),
        Ok((request, _)) => match answer(&node, request).await {
            Ok(value) => value,
            Err(e) => json!({"ok": false, "error": e.to_string()}),
        },
    };
    let bytes = serde_json::to_vec(&answer)?;
    let write = async {
        stream.write_u32(bytes.len() as u32).await?;
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    };
    tokio::time::timeout(ANSWER_DEADLINE, write)
        .await
        .map_err(|_| HandleError::SlowReader)??;
    Ok(())
}

async fn answer(node: &Arc<Node>, request: ApiRequest) -> Result<Value, AnswerError> {
    Ok(match request {
        ApiRequest::Submit(signed) => {
            let id = signed.id;
            let submitted = node.submit(signed).await?;
            let republished = &submitted.republished;
            let mut value = json!({"ok": true, "batch": id.to_hex(), "new": submitted.new});
            if let Some((key, other)) = &republished.first {
                value["republished"] = json!({
                    "records": republished.records,
                    "not_current": republished.not_current,
                    "first": {"key": key.0, "batch": other.to_hex()},
                });
            }
            value
        }
        ApiRequest::Status => status(node)?,
        ApiRequest::Batches => batches(node)?,
        ApiRequest::VerifyAudit => {
            let entries = node.store.verify_audit()?;
            json!({"ok": true, "entries": entries})
        }
        ApiRequest::Migration => {
            let mut value = node.migration_status()?;
            value["ok"] = json!(true);
            value["node"] = json!(node.me.to_string());
            value
        }
        ApiRequest::ClosePeriod {
            category,
            period,
            declared,
        } => {
            let category = protocol::Category::parse(&category)?;
            let period = protocol::Period::parse(&period)?;
            let (id, new) = node.close_period(category, period, declared).await?;
            json!({"ok": true, "manifest": id.to_hex(), "new": new})
        }
        ApiRequest::Reconcile { peer } => {
            let peer = peer.map(|p| NodeId::parse(&p)).transpose()?;
            let links = node.reconcile(peer)?;
            if links == 0 {
                return Err(AnswerError::NothingToReconcile(
                    peer.map_or_else(|| "a parent".to_owned(), |p| p.to_string()),
                ));
            }
            json!({"ok": true, "links": links, "last": node.reconciled()})
        }
        ApiRequest::Report {
            period,
            category,
            format,
        } => {
            let period = protocol::Period::parse(&period)?;
            let category = category
                .map(|c| protocol::Category::parse(&c))
                .transpose()?;
            let entries = node.ledger(period, category.as_ref())?;
            let topology = current(&node.topology);
            // Data quality of the same reports: open items and time to fix per reporter.
            let items = crate::quality_view::items(
                &node.store,
                &crate::quality_view::Filter {
                    origin: None,
                    category: category.clone(),
                    period: Some(period),
                    all: true,
                },
            )?;
            let quality = crate::quality_view::fix_times(&items, &topology);
            match format.as_str() {
                "json" => {
                    let mut value = crate::ledger_view::json(&entries, &topology);
                    value["ok"] = json!(true);
                    value["quality"] = crate::quality_view::fix_times_json(&quality);
                    value
                }
                "csv" => json!({"ok": true, "text": crate::ledger_view::csv(&entries)}),
                _ => {
                    let title = format!(
                        "report of {} for {period}{}",
                        node.me,
                        category.map_or_else(String::new, |c| format!(", {c}"))
                    );
                    let text = format!(
                        "{}\n{}",
                        crate::ledger_view::table(&entries, &topology, &title),
                        crate::quality_view::fix_times_table(&quality, &topology)
                    );
                    json!({"ok": true, "text": text})
                }
            }
        }
        ApiRequest::ProgressSend { period, figures } => {
            let period = protocol::Period::parse(&period)?;
            let (id, new) = node.progress_report(period, figures).await?;
            json!({"ok": true, "report": id.to_hex(), "new": new, "durable": true})
        }
        ApiRequest::Profile { category } => {
            let category = protocol::Category::parse(&category)?;
            let topology = current(&node.topology);
            let left_out: Vec<&str> = match (
                topology.profile(&category),
                protocol::Registry::builtin().get(&category),
            ) {
                (Some(profile), Some(schema)) => schema
                    .fields
                    .iter()
                    .filter(|field| !profile.allows(&field.name))
                    .map(|field| field.name.as_str())
                    .collect(),
                _ => Vec::new(),
            };
            json!({
                "ok": true,
                "category": category.to_string(),
                "topology_version": topology.version,
                "left_out": left_out,
            })
        }
        ApiRequest::Progress { period, format } => {
            let period = period.map(|p| protocol::Period::parse(&p)).transpose()?;
            let held = node.progress_reports(period)?;
            let topology = current(&node.topology);
            match format.as_str() {
                "json" => {
                    let mut value = crate::progress_view::json(&held, &topology, node.me);
                    value["ok"] = json!(true);
                    value
                }
                _ => {
                    json!({"ok": true, "text": crate::progress_view::table(&held, &topology, node.me)})
                }
            }
        }
        ApiRequest::Feedback {
            origin,
            category,
            period,
            all,
            format,
        } => {
            let filter = crate::quality_view::Filter {
                origin: origin.map(|o| NodeId::parse(&o)).transpose()?,
                category: category
                    .map(|c| protocol::Category::parse(&c))
                    .transpose()?,
                period: period.map(|p| protocol::Period::parse(&p)).transpose()?,
                all,
            };
            let items = crate::quality_view::items(&node.store, &filter)?;
            match format.as_str() {
                "json" => {
                    let mut value = crate::quality_view::items_json(&items);
                    value["ok"] = json!(true);
                    value
                }
                "csv" => json!({"ok": true, "text": crate::quality_view::items_csv(&items)}),
                _ => {
                    let title = format!(
                        "feedback at {}{}",
                        node.me,
                        if all { " (open and closed)" } else { " (open)" }
                    );
                    json!({"ok": true, "text": crate::quality_view::items_table(&items, &title)})
                }
            }
        }
        ApiRequest::Records {
            category,
            period,
            origin,
            key,
            format,
        } => {
            let category = protocol::Category::parse(&category)?;
            let period = protocol::Period::parse(&period)?;
            let origin = origin.map(|o| NodeId::parse(&o)).transpose()?;
            let mut value = crate::quality_view::records_json(
                &node.store,
                &category,
                period,
                origin,
                key.as_deref(),
            )?;
            if format == "json" {
                value["ok"] = json!(true);
                value
            } else {
                json!({"ok": true, "text": crate::quality_view::records_table(&value)})
            }
        }
        ApiRequest::Current {
            category,
            period,
            keys,
        } => {
            let category = protocol::Category::parse(&category)?;
            let period = period.map(|p| protocol::Period::parse(&p)).transpose()?;
            let found = crate::quality_view::current_holders(
                &node.store,
                node.me,
                &category,
                period,
                &keys,
            )?;
            json!({"ok": true, "keys": found})
        }
        ApiRequest::BatchKeys { batch } => {
            let id = protocol::BatchId::parse_hex(&batch)?;
            let keys = crate::quality_view::keys_held_by(&node.store, &id)?;
            let meta = node.store.meta(&id)?;
            json!({
                "ok": true,
                "held": meta.is_some(),
                "origin": meta.as_ref().map(|m| m.origin.to_string()),
                "category": meta.as_ref().map(|m| m.category.to_string()),
                "period": meta.as_ref().map(|m| m.period.to_string()),
                "keys": keys.into_iter().map(|k| k.0).collect::<Vec<_>>(),
            })
        }
        ApiRequest::AuditLog => {
            let entries: Vec<Value> = node
                .store
                .audit_entries()
                .map(|entry| entry.map(|e| audit_json(&e)))
                .collect::<Result<_, _>>()?;
            json!({"ok": true, "entries": entries})
        }
    })
}

pub(crate) fn status(node: &Node) -> Result<Value, StoreError> {
    let topology = current(&node.topology);
    let me = topology.node(node.me);
    let mut tally: std::collections::BTreeMap<(NodeId, String, String), (u64, u64)> =
        Default::default();
    for entry in node.store.held() {
        let (_, meta) = entry?;
        let slot = tally
            .entry((
                meta.origin,
                meta.category.to_string(),
                meta.period.to_string(),
            ))
            .or_default();
        slot.0 += 1;
        slot.1 += u64::from(meta.records);
    }
    let mut links = Vec::new();
    for link in node.links() {
        let peer = NodeId::parse(&link.peer).expect("the core names a link's peer by its id");
        let mut value = serde_json::to_value(&link).expect("plain fields serialize");
        value["outbox"] = json!(if link.direction == "up" {
            node.store.outbox_len(peer)
        } else {
            0
        });
        value["last_receipt_ms"] = json!(node.store.last_receipt_ms(peer)?);
        links.push(value);
    }
    let refused: Vec<Value> = node
        .store
        .refused()
        .map(|r| {
            r.map(|(id, refusal)| {
                json!({
                    "batch": id.to_hex(),
                    "receiver": refusal.receiver.to_string(),
                    "reason": refusal.reason,
                    "problems": refusal.problems.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
                })
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(json!({
        "ok": true,
        "node": node.me.to_string(),
        "name": me.map(|n| n.name.clone()),
        "role": me.map(|n| n.role.to_string()),
        "topology_version": topology.version,
        "http": node.http.get().map(ToString::to_string),
        "links": links,
        "held": tally.into_iter().map(|((origin, category, period), (batches, records))| json!({
            "origin": origin.to_string(),
            "category": category,
            "period": period,
            "batches": batches,
            "records": records,
        })).collect::<Vec<_>>(),
        "refused": refused,
        "reconciled": node.reconciled(),
    }))
}

pub(crate) fn audit_json(entry: &crate::store::AuditEntry) -> Value {
    use crate::store::AuditEvent;
    let mut value = json!({"seq": entry.seq, "at_ms": entry.at_ms});
    match &entry.event {
        AuditEvent::Started { topology_version } => {
            value["kind"] = json!("started");
            value["topology_version"] = json!(topology_version);
        }
        AuditEvent::BatchSubmitted {
            batch,
            category,
            period,
            records,
        } => {
            value["kind"] = json!("submitted");
            value["batch"] = json!(batch.to_hex());
            value["category"] = json!(category.to_string());
            value["period"] = json!(period.to_string());
            value["records"] = json!(records);
        }
        AuditEvent::BatchAccepted {
            batch,
            origin,
            from,
        } => {
            value["kind"] = json!("accepted");
            value["batch"] = json!(batch.to_hex());
            value["origin"] = json!(origin.to_string());
            value["from"] = json!(from.to_string());
        }
        AuditEvent::BatchRefused {
            batch,
            from,
            reason,
        } => {
            value["kind"] = json!("refused");
            value["batch"] = json!(batch.to_hex());
            value["from"] = json!(from.to_string());
            value["reason"] = json!(reason);
        }
        AuditEvent::ReceiptStored {
            batch,
            receiver,
            accepted,
        } => {
            value["kind"] = json!("receipt");
            value["batch"] = json!(batch.to_hex());
            value["receiver"] = json!(receiver.to_string());
            value["accepted"] = json!(accepted);
        }
        AuditEvent::TopologyApplied { version } => {
            value["kind"] = json!("topology_applied");
            value["version"] = json!(version);
        }
        AuditEvent::TopologyRefused { reason } => {
            value["kind"] = json!("topology_refused");
            value["reason"] = json!(reason);
        }
        AuditEvent::Path { peer, up } => {
            value["kind"] = json!("path");
            value["peer"] = json!(peer.to_string());
            value["up"] = json!(up);
        }
        AuditEvent::Migration {
            node,
            phase,
            detail,
        } => {
            value["kind"] = json!("migration");
            value["node"] = json!(node.to_string());
            value["phase"] = json!(phase);
            value["detail"] = json!(detail);
        }
        AuditEvent::Reconciled {
            peer,
            year,
            receipts,
            reoffered,
            anomalies,
        } => {
            value["kind"] = json!("reconciled");
            value["peer"] = json!(peer.to_string());
            value["year"] = json!(year);
            value["receipts"] = json!(receipts);
            value["reoffered"] = json!(reoffered);
            value["anomalies"] = json!(anomalies.iter().map(|a| a.to_hex()).collect::<Vec<_>>());
        }
        AuditEvent::KeyChanged {
            node,
            key,
            state,
            at_ms,
        } => {
            value["kind"] = json!("key");
            value["node"] = json!(node.to_string());
            value["key"] = json!(key.to_hex());
            value["state"] = json!(state);
            value["from_ms"] = json!(at_ms);
        }
        AuditEvent::BatchQuarantined {
            batch,
            origin,
            from,
            reason,
        } => {
            value["kind"] = json!("quarantined");
            value["batch"] = json!(batch.to_hex());
            value["origin"] = json!(origin.to_string());
            value["from"] = json!(from.to_string());
            value["reason"] = json!(reason);
        }
        AuditEvent::AdmissionRefused { peer, reason } => {
            value["kind"] = json!("admission_refused");
            value["peer"] = json!(peer.to_string());
            value["reason"] = json!(reason);
        }
        AuditEvent::QuarantineReleased { batch, from } => {
            value["kind"] = json!("quarantine_released");
            value["batch"] = json!(batch.to_hex());
            value["from"] = json!(from.to_string());
        }
        other => {
            value["kind"] = json!("other");
            value["detail"] = json!(format!("{other:?}"));
        }
    }
    value
}

fn batches(node: &Node) -> Result<Value, StoreError> {
    use crate::core::keys::{Signed, receipt_signed_validly};
    let topology = current(&node.topology);
    let verifier = protocol::Ed25519;
    let mut out = Vec::new();
    for entry in node.store.held() {
        let (id, meta) = entry?;
        // The first arrival dates the signature: a retired or revoked key signs validly only
        // for batches that had arrived before its end.
        let first_arrival = match meta.first {
            Some(first) => node
                .store
                .receipt(&id, first)?
                .map(|r| r.receipt.received_at_ms),
            None => None,
        };
        let signed = match node.store.batch(&id)? {
            Some(batch) if batch.verify_hash().is_ok() => Signed::judge(
                &topology,
                meta.origin,
                &id,
                &batch.signature,
                first_arrival,
                &verifier,
            ),
            _ => Signed::Unknown,
        };
        let receipts: Vec<Value> = node
            .store
            .receipts_for(&id)?
            .into_iter()
            .map(|r| {
                let valid = receipt_signed_validly(&topology, &r, &verifier);
                json!({
                    "receiver": r.receipt.receiver.to_string(),
                    "at_ms": r.receipt.received_at_ms,
                    "accepted": matches!(r.receipt.verdict, protocol::wire::Verdict::Accepted { .. }),
                    "signature_valid": valid,
                })
            })
            .collect();
        out.push(json!({
            "id": id.to_hex(),
            "origin": meta.origin.to_string(),
            "category": meta.category.to_string(),
            "period": meta.period.to_string(),
            "records": meta.records,
            "bytes": meta.bytes,
            "from": meta.from.to_string(),
            "state": "held",
            "signature_valid": signed.is_valid(),
            "signed_by": signed.key().map(|k| k.to_hex()),
            "key_state": signed.key_state(),
            "receipts": receipts,
        }));
    }
    let quarantined: Vec<Value> = node
        .store
        .quarantined()
        .map(|entry| {
            entry.map(|(id, q)| {
                json!({
                    "id": id.to_hex(),
                    "origin": q.origin.to_string(),
                    "from": q.from.to_string(),
                    "bytes": q.bytes,
                    "received_at_ms": q.received_at_ms,
                    "state": "quarantined",
                    "signed_by": q.key.to_hex(),
                    "reason": q.reason,
                })
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(json!({
        "ok": true,
        "node": node.me.to_string(),
        "batches": out,
        "quarantined": quarantined,
    }))
}

/// Sends one request to the node running in `dir` and returns its JSON answer; an answer with
/// `"ok": false` becomes an error. While the node answers "busy" (every slot answering), tries
/// again for a while.
pub fn call(dir: &Path, request: &ApiRequest) -> Result<Value, CallError> {
    let path = socket_path(dir);
    let body =
        bincode::encode_to_vec(request, bincode::config::standard()).expect("encoding to memory");
    let give_up = Instant::now() + CALL_BUSY_RETRY;
    let mut pause = Duration::from_millis(10);
    loop {
        let value = exchange(dir, &path, &body)?;
        if value["ok"] == json!(true) {
            return Ok(value);
        }
        if value["busy"] == json!(true) && Instant::now() < give_up {
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(500));
            continue;
        }
        return Err(CallError::Refused(
            value["error"]
                .as_str()
                .unwrap_or("the node refused the request")
                .to_owned(),
        ));
    }
}

/// One connection: the request out, the answer in.
fn exchange(dir: &Path, path: &Path, body: &[u8]) -> Result<Value, CallError> {
    let mut stream = UnixStream::connect(path).map_err(|io| CallError::Unreachable {
        path: path.to_owned(),
        dir: dir.to_owned(),
        io,
    })?;
    let exchange = |io: std::io::Error| {
        if matches!(
            io.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            CallError::Timeout {
                path: path.to_owned(),
                timeout: CALL_ANSWER_TIMEOUT,
            }
        } else {
            CallError::Exchange {
                path: path.to_owned(),
                io,
            }
        }
    };
    stream
        .set_read_timeout(Some(CALL_ANSWER_TIMEOUT))
        .map_err(exchange)?;
    stream
        .set_write_timeout(Some(CALL_ANSWER_TIMEOUT))
        .map_err(exchange)?;
    let mut request = (body.len() as u32).to_be_bytes().to_vec();
    request.extend_from_slice(body);
    // A node that refuses at once (busy, another user) answers without reading: its answer
    // counts, not the broken pipe of our write.
    let written = stream.write_all(&request);
    let mut length = [0u8; 4];
    if let Err(io) = stream.read_exact(&mut length) {
        return Err(exchange(written.err().unwrap_or(io)));
    }
    let length = u32::from_be_bytes(length) as usize;
    if length > REQUEST_BYTES_MAX {
        return Err(CallError::AnswerTooLarge {
            path: path.to_owned(),
            bytes: length,
        });
    }
    let mut answer = vec![0u8; length];
    stream.read_exact(&mut answer).map_err(exchange)?;
    serde_json::from_slice(&answer).map_err(|json| CallError::AnswerNotJson {
        path: path.to_owned(),
        json,
    })
}
