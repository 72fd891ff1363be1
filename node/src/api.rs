//! The loopback-only operator API of a running node (sled allows one process per store, so
//! operator commands talk to the node that holds it).
//!
//! The node listens on 127.0.0.1 on a free port and writes `api.toml` (address and a random
//! token, mode 0600) into its directory; a command presents the token with every request, so
//! only users who can read the node directory can drive the node. A request is
//! `[token: 32 bytes][u32 big-endian length][bincode ApiRequest]`; the token is checked before
//! the body (capped at one batch frame) is read. The answer is `[u32 length][JSON]`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bincode::{Decode, Encode};
use protocol::{NodeId, SignedBatch};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

use crate::identity::IdentityError;
use crate::runtime::{Node, SubmitError};
use crate::store::{AuditError, StoreError};
use crate::transport::current;

/// Largest request: one batch frame and the token.
const REQUEST_BYTES_MAX: usize = protocol::wire::BATCH_FRAME_BYTES_MAX + 1024;
const API_FILE: &str = "api.toml";

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
}

/// Why the operator API did not start or stopped ([`serve`]). As in `runtime`, each message
/// carries its cause's; the cause is not also returned as `source()`.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen for the operator API on 127.0.0.1: {0}")]
    Listen(std::io::Error),
    /// No random token could be drawn.
    #[error(transparent)]
    Token(#[from] IdentityError),
    #[error("cannot write {path}: {io}: check that the node directory is writable")]
    WriteFile { path: PathBuf, io: std::io::Error },
    #[error("the operator API stopped accepting connections: {0}: restart the node")]
    Accept(std::io::Error),
}

/// Why an operator command got no answer from its node ([`call`]).
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("cannot read {path}: {io}: is `credit-node run --dir {}` running?", .dir.display())]
    NoApiFile {
        path: PathBuf,
        dir: PathBuf,
        io: std::io::Error,
    },
    #[error("{path} is malformed (restart the node to write it again): {message}")]
    Malformed { path: PathBuf, message: String },
    #[error("cannot reach the node at {address} ({path}): {io}: is it running?")]
    Unreachable {
        address: SocketAddr,
        path: PathBuf,
        io: std::io::Error,
    },
    #[error("the node at {address} broke off the request: {io}: is it stopping?")]
    Exchange {
        address: SocketAddr,
        io: std::io::Error,
    },
    #[error("the node at {address} answered with {bytes} bytes, over the limit")]
    AnswerTooLarge { address: SocketAddr, bytes: usize },
    #[error("the node at {address} answered with something other than JSON: {json}")]
    AnswerNotJson {
        address: SocketAddr,
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

#[derive(serde::Serialize, serde::Deserialize)]
struct ApiFile {
    address: SocketAddr,
    token: String,
}

/// Serves the API until the process ends.
pub async fn serve(node: Arc<Node>, dir: &Path) -> Result<(), ServeError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(ServeError::Listen)?;
    let token = crate::identity::random32()?;
    let file = ApiFile {
        address: listener.local_addr().map_err(ServeError::Listen)?,
        token: protocol::ids::hex(&token),
    };
    let path = dir.join(API_FILE);
    let text = toml::to_string(&file).expect("plain fields serialize");
    let tmp = dir.join("api.toml.tmp");
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut f = options.open(&tmp).map_err(|io| write_error(&tmp, io))?;
        f.write_all(text.as_bytes())
            .map_err(|io| write_error(&tmp, io))?;
        f.sync_all().map_err(|io| write_error(&tmp, io))?;
    }
    std::fs::rename(&tmp, &path).map_err(|io| write_error(&path, io))?;
    info!(address = %file.address, "operator API listening");
    loop {
        let (stream, peer) = listener.accept().await.map_err(ServeError::Accept)?;
        if !peer.ip().is_loopback() {
            continue;
        }
        let node = node.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(node, stream, token).await {
                warn!(error = %e, "operator API request failed");
            }
        });
    }
}

/// The API file at `path` could not be written.
fn write_error(path: &Path, io: std::io::Error) -> ServeError {
    ServeError::WriteFile {
        path: path.to_owned(),
        io,
    }
}

async fn handle(
    node: Arc<Node>,
    mut stream: tokio::net::TcpStream,
    token: [u8; 32],
) -> Result<(), HandleError> {
    // The token comes first and is checked before the body is read into memory, so nobody
    // without it can make the node allocate.
    let mut given = [0u8; 32];
    stream.read_exact(&mut given).await?;
    let length = stream.read_u32().await? as usize;
    if length > REQUEST_BYTES_MAX {
        return Err(HandleError::TooLarge(length));
    }
    let answer = if given != token {
        // Discard the body without keeping it, so the caller reads our answer instead of a
        // connection reset.
        tokio::io::copy(
            &mut (&mut stream).take(length as u64),
            &mut tokio::io::sink(),
        )
        .await?;
        json!({"ok": false, "error": "wrong API token: the node was restarted, or this is another node's directory"})
    } else {
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body).await?;
        match bincode::decode_from_slice::<ApiRequest, _>(
            &body,
            bincode::config::standard().with_limit::<REQUEST_BYTES_MAX>(),
        ) {
            Err(e) => json!({"ok": false, "error": format!("malformed request: {e}")}),
            Ok((request, _)) => match answer(&node, request).await {
                Ok(value) => value,
                Err(e) => json!({"ok": false, "error": e.to_string()}),
            },
        }
    };
    let bytes = serde_json::to_vec(&answer)?;
    stream.write_u32(bytes.len() as u32).await?;
    stream.write_all(&bytes).await?;
    Ok(())
}

async fn answer(node: &Arc<Node>, request: ApiRequest) -> Result<Value, AnswerError> {
    Ok(match request {
        ApiRequest::Submit(signed) => {
            let id = signed.id;
            let new = node.submit(signed).await?;
            json!({"ok": true, "batch": id.to_hex(), "new": new})
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
            match format.as_str() {
                "json" => {
                    let mut value = crate::ledger_view::json(&entries, &topology);
                    value["ok"] = json!(true);
                    value
                }
                "csv" => json!({"ok": true, "text": crate::ledger_view::csv(&entries)}),
                _ => {
                    let title = format!(
                        "report of {} for {period}{}",
                        node.me,
                        category.map_or_else(String::new, |c| format!(", {c}"))
                    );
                    json!({"ok": true, "text": crate::ledger_view::table(&entries, &topology, &title)})
                }
            }
        }
        ApiRequest::ProgressSend { period, figures } => {
            let period = protocol::Period::parse(&period)?;
            let (id, new) = node.progress_report(period, figures).await?;
            json!({"ok": true, "report": id.to_hex(), "new": new, "durable": true})
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

fn status(node: &Node) -> Result<Value, StoreError> {
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

fn audit_json(entry: &crate::store::AuditEntry) -> Value {
    use crate::store::AuditEvent;
    let mut value = json!({"seq": entry.seq, "at_ms": entry.at_ms});
    match &entry.event {
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
/// `"ok": false` becomes an error.
pub fn call(dir: &Path, request: &ApiRequest) -> Result<Value, CallError> {
    let path = dir.join(API_FILE);
    let text = std::fs::read_to_string(&path).map_err(|io| CallError::NoApiFile {
        path: path.clone(),
        dir: dir.to_owned(),
        io,
    })?;
    let file: ApiFile = toml::from_str(&text).map_err(|e| CallError::Malformed {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let token = protocol::ids::parse_hex32(&file.token).ok_or_else(|| CallError::Malformed {
        path: path.clone(),
        message: "bad token".into(),
    })?;
    let address = file.address;
    let mut stream =
        TcpStream::connect(address).map_err(|io| CallError::Unreachable { address, path, io })?;
    let body =
        bincode::encode_to_vec(request, bincode::config::standard()).expect("encoding to memory");
    let exchange = |io| CallError::Exchange { address, io };
    stream.write_all(&token).map_err(exchange)?;
    stream
        .write_all(&(body.len() as u32).to_be_bytes())
        .map_err(exchange)?;
    stream.write_all(&body).map_err(exchange)?;
    let mut length = [0u8; 4];
    stream.read_exact(&mut length).map_err(exchange)?;
    let length = u32::from_be_bytes(length) as usize;
    if length > REQUEST_BYTES_MAX {
        return Err(CallError::AnswerTooLarge {
            address,
            bytes: length,
        });
    }
    let mut answer = vec![0u8; length];
    stream.read_exact(&mut answer).map_err(exchange)?;
    let value: Value = serde_json::from_slice(&answer)
        .map_err(|json| CallError::AnswerNotJson { address, json })?;
    if value["ok"] != json!(true) {
        return Err(CallError::Refused(
            value["error"]
                .as_str()
                .unwrap_or("the node refused the request")
                .to_owned(),
        ));
    }
    Ok(value)
}
