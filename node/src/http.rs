//! The operator's view over HTTP: a dashboard page, the paged JSON behind it, and
//! `/metrics` for Prometheus.
//!
//! Served with axum from the node's own process, on loopback unless `credit-node run --http
//! ADDR` says otherwise. **Read-only**: every route reads the store, the topology and the
//! core's link table; nothing here writes. Nothing leaves that the operator API does not
//! already show — but the operator API answers only the node's own user, while this answers
//! whoever reaches its address: keep it on loopback or a management network.
//!
//! **Staying fast for a whole province** (145 nodes × 12 periods × 14 categories). Nothing
//! here re-hashes or re-verifies a batch (`credit-node batches` does; the page never calls it).
//! The heat map shows one category and year at a time and judges only the reporters of the
//! page it shows ([`HEAT_ROWS`] by default), each month through
//! [`crate::core::ledger::ledger_of`] read straight from the store — outside the core's lock,
//! so the node goes on syncing while a page renders. Every list is paged (`offset`, `limit`,
//! at most [`PAGE_MAX`]). Page work runs on the blocking pool, never on the runtime's threads.
//!
//! Routes (`GET` only): `/` the page (query `category`, `year`, `offset`, `limit`);
//! `/report` one report's batches and manifests (`reporter`, `category`, `period`); JSON:
//! `/api/status`, `/api/tree`, `/api/heatmap`, `/api/feedback`, `/api/audit`,
//! `/api/progress`, `/api/report`; `/metrics` (Prometheus text format).
//!
//! The page is server-rendered HTML with no script at all: a form picks the category and
//! year, links page through reporters and open to a report. Each heat-map cell carries its
//! state as a colour *and* a letter (readable in black and white) and as `data-state`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use protocol::ids::{Category, NodeId, Period};
use protocol::{Content, ContentKind};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::info;

use crate::core::ledger::{self, Entry, LedgerConfig};
use crate::progress_view::china_time;
use crate::runtime::Node;
use crate::store::StoreError;
use crate::transport::current;

/// Reporters per heat-map page unless the request says otherwise.
pub const HEAT_ROWS: usize = 50;
/// The longest page of any list.
pub const PAGE_MAX: usize = 500;
/// Audit events and open items the page shows.
const PAGE_EVENTS: usize = 20;

/// Why the dashboard did not start ([`bind`], [`serve`]).
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(
        "cannot listen for the dashboard on {addr}: {io}: pick another address with `credit-node run --http ADDR`, or `--http off`"
    )]
    Bind {
        addr: SocketAddr,
        io: std::io::Error,
    },
    #[error("the dashboard on {addr} stopped: {io}")]
    Serve {
        addr: SocketAddr,
        io: std::io::Error,
    },
}

/// Why one request was answered with an error (the body says it in words).
#[derive(Debug, thiserror::Error)]
enum RequestError {
    /// A category, period or node id in the query that does not parse.
    #[error(transparent)]
    Id(#[from] protocol::ids::IdError),
    #[error(
        "no schedule for category {0} in the topology: a heat map shows a category its [[schedule]] lists"
    )]
    NoSchedule(Category),
    #[error("no report is owed here: the topology has no schedule at all")]
    NothingOwed,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the request's work did not finish: {0}")]
    Interrupted(String),
}

impl IntoResponse for RequestError {
    fn into_response(self) -> Response {
        let status = match self {
            RequestError::Id(_) | RequestError::NoSchedule(_) | RequestError::NothingOwed => {
                StatusCode::BAD_REQUEST
            }
            RequestError::Store(_) | RequestError::Interrupted(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        (status, format!("{self}\n")).into_response()
    }
}

/// Binds the dashboard's address (port 0: any free port).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, HttpError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|io| HttpError::Bind { addr, io })
}

/// Serves the dashboard on `listener` until the process ends; records its address in
/// [`Node::http`] (the operator API's `status` shows it) first.
pub async fn serve(node: Arc<Node>, listener: tokio::net::TcpListener) -> Result<(), HttpError> {
    let addr = listener.local_addr().map_err(|io| HttpError::Serve {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        io,
    })?;
    let _ = node.http.set(addr);
    info!(%addr, "dashboard listening: http://{addr}/ (metrics at /metrics)");
    axum::serve(listener, router(node))
        .await
        .map_err(|io| HttpError::Serve { addr, io })
}

/// Every route of the dashboard.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/report", get(report_page))
        .route("/api/status", get(api_status))
        .route("/api/tree", get(api_tree))
        .route("/api/heatmap", get(api_heatmap))
        .route("/api/feedback", get(api_feedback))
        .route("/api/audit", get(api_audit))
        .route("/api/progress", get(api_progress))
        .route("/api/report", get(api_report))
        .route("/metrics", get(metrics))
        .with_state(node)
}

/// Runs `work` on the blocking pool (store reads can take a while on a big store).
async fn blocking<T: Send + 'static>(
    node: &Arc<Node>,
    work: impl FnOnce(&Node) -> Result<T, RequestError> + Send + 'static,
) -> Result<T, RequestError> {
    let node = node.clone();
    tokio::task::spawn_blocking(move || work(&node))
        .await
        .map_err(|e| RequestError::Interrupted(e.to_string()))?
}

// ---- the data behind the page ----

/// One node of the tree.
#[derive(Debug, Clone, Serialize)]
pub struct TreeNode {
    pub id: String,
    pub name: String,
    pub role: &'static str,
    /// Levels below this node (0: this node; the parent row has none).
    pub depth: usize,
    /// `this node`, `up` or `down` (a direct link: its state now), or `indirect` (a node
    /// further down: its link is to its own parent, seen on that parent's dashboard).
    pub link: &'static str,
    /// When the link last changed state (wall ms).
    pub link_since_ms: Option<u64>,
    pub last_error: Option<String>,
    /// The parent's last receipt (the parent row), or the last batch received on the link
    /// (a child), wall ms.
    pub last_receipt_ms: Option<u64>,
    /// Batches waiting to go up (this node's row: over every uplink).
    pub outbox: Option<usize>,
    /// Migration of a legacy direct link: this node's phase, or what the topology says of
    /// another's (its phase is known at that node).
    pub migration: Option<String>,
}

/// The parent (if any) and this node's subtree, depth first.
#[derive(Debug, Clone, Serialize)]
pub struct Tree {
    pub node: String,
    pub parent: Option<TreeNode>,
    pub subtree: Vec<TreeNode>,
}

pub fn tree(node: &Node) -> Result<Tree, StoreError> {
    let topology = current(&node.topology);
    let links = node.links();
    let link_of = |peer: NodeId, direction: &str| {
        links
            .iter()
            .find(|l| l.direction == direction && l.peer == peer.to_string())
    };
    let blank = |n: &topology::Node, depth: usize, link: &'static str| TreeNode {
        id: n.id.to_string(),
        name: n.name.clone(),
        role: n.role.as_str(),
        depth,
        link,
        link_since_ms: None,
        last_error: None,
        last_receipt_ms: None,
        outbox: None,
        migration: topology.legacy_link(n.id).map(|l| {
            if l.migrate {
                "legacy link, migrating (phase at the node)".to_owned()
            } else {
                "legacy link, not migrating".to_owned()
            }
        }),
    };
    let parent = match topology.parent_of(node.me) {
        Some(p) => {
            let mut row = blank(p, 0, "down");
            if let Some(link) = link_of(p.id, "up") {
                row.link = if link.connected { "up" } else { "down" };
                row.link_since_ms = Some(link.since_ms);
                row.last_error = link.last_error.clone();
            }
            row.last_receipt_ms = node.store.last_receipt_ms(p.id)?;
            row.outbox = Some(node.store.outbox_len(p.id));
            row.migration = None;
            Some(row)
        }
        None => None,
    };
    let mut subtree = Vec::new();
    let Some(me) = topology.node(node.me) else {
        return Ok(Tree {
            node: node.me.to_string(),
            parent,
            subtree,
        });
    };
    let mut row = blank(me, 0, "this node");
    let uplinks: BTreeSet<NodeId> = links
        .iter()
        .filter(|l| l.direction == "up")
        .filter_map(|l| NodeId::parse(&l.peer).ok())
        .collect();
    row.outbox = Some(uplinks.iter().map(|p| node.store.outbox_len(*p)).sum());
    let migration = node.migration_status()?;
    if migration["legacy_link"] == json!(true) {
        row.migration = migration["phase"].as_str().map(str::to_owned);
    }
    subtree.push(row);
    // Depth first, children in topology order.
    let mut stack: Vec<(NodeId, usize)> = topology
        .children_of(node.me)
        .map(|c| (c.id, 1))
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    while let Some((id, depth)) = stack.pop() {
        let Some(n) = topology.node(id) else { continue };
        let mut row = blank(n, depth, "indirect");
        if depth == 1 {
            row.link = "down";
            if let Some(link) = link_of(id, "down") {
                row.link = if link.connected { "up" } else { "down" };
                row.link_since_ms = Some(link.since_ms);
                row.last_error = link.last_error.clone();
                row.last_receipt_ms = link.last_batch_ms;
            }
        }
        subtree.push(row);
        let children: Vec<NodeId> = topology.children_of(id).map(|c| c.id).collect();
        stack.extend(children.into_iter().rev().map(|c| (c, depth + 1)));
    }
    Ok(Tree {
        node: node.me.to_string(),
        parent,
        subtree,
    })
}

/// A cell of the heat map: one reporter's reports of one month (one for a monthly or event
/// category, one per day for a daily one), shown by the worst state among them.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub period: String,
    /// `on_time`, `late`, `missing`, `incomplete`, `concealment_suspected`, `pending`, or
    /// `none` (nothing owed).
    pub state: &'static str,
    pub letter: &'static str,
    /// How many of the month's reports are in each state.
    pub counts: BTreeMap<&'static str, usize>,
    /// The longest delay among them, in days.
    pub late_days: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HeatRow {
    pub reporter: String,
    pub name: String,
    pub parent: Option<String>,
    pub cells: Vec<Cell>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Heat {
    pub category: String,
    pub year: u16,
    /// Categories with a schedule (what the page's form offers).
    pub categories: Vec<String>,
    /// Reporters of the category in this subtree, over every page.
    pub reporters: usize,
    pub offset: usize,
    pub limit: usize,
    pub rows: Vec<HeatRow>,
}

/// State words in the order a cell shows the worst: missing first.
const WORST_FIRST: [ledger::State; 6] = [
    ledger::State::Missing,
    ledger::State::Incomplete,
    ledger::State::ConcealmentSuspected,
    ledger::State::Late,
    ledger::State::OnTime,
    ledger::State::Pending,
];

fn state_key(state: ledger::State) -> &'static str {
    match state {
        ledger::State::Pending => "pending",
        ledger::State::OnTime => "on_time",
        ledger::State::Late => "late",
        ledger::State::Missing => "missing",
        ledger::State::Incomplete => "incomplete",
        ledger::State::ConcealmentSuspected => "concealment_suspected",
    }
}

fn state_letter(state: &str) -> &'static str {
    match state {
        "on_time" => "O",
        "late" => "L",
        "missing" => "M",
        "incomplete" => "I",
        "concealment_suspected" => "C",
        "pending" => "P",
        _ => "·",
    }
}

fn cell(period: Period, entries: &[&Entry]) -> Cell {
    let mut counts = BTreeMap::new();
    for entry in entries {
        *counts.entry(state_key(entry.state)).or_insert(0) += 1;
    }
    let state = WORST_FIRST
        .iter()
        .map(|s| state_key(*s))
        .find(|s| counts.contains_key(s))
        .unwrap_or("none");
    Cell {
        period: period.to_string(),
        state,
        letter: state_letter(state),
        counts,
        late_days: entries.iter().filter_map(|e| e.late_days).max(),
    }
}

/// The year a node's clock is in, in China Standard Time.
fn this_year(node: &Node) -> u16 {
    topology::admission::Date::of_ms(node.wall_ms()).year
}

/// The heat map of `category` (default: the first scheduled) for `year` (default: this
/// one), reporters `offset..offset + limit`.
fn heat(node: &Node, query: &PageQuery) -> Result<Heat, RequestError> {
    let topology = current(&node.topology);
    let categories: Vec<String> = topology
        .schedules()
        .iter()
        .map(|s| s.category.to_string())
        .collect();
    let schedule = match &query.category {
        Some(text) => {
            let category = Category::parse(text)?;
            topology
                .schedule(&category)
                .ok_or(RequestError::NoSchedule(category))?
        }
        None => topology
            .schedules()
            .first()
            .ok_or(RequestError::NothingOwed)?,
    };
    let year = query.year.unwrap_or_else(|| this_year(node));
    let (offset, limit) = page_bounds(query.offset, query.limit, HEAT_ROWS);
    let reporters: Vec<NodeId> = topology
        .reporters(schedule)
        .into_iter()
        .filter(|r| topology.is_within(*r, node.me))
        .collect();
    let shown: Vec<NodeId> = reporters.iter().skip(offset).take(limit).copied().collect();
    let only: BTreeSet<NodeId> = shown.iter().copied().collect();
    let now = node.wall_ms();
    let mut by_reporter: BTreeMap<NodeId, Vec<Cell>> = BTreeMap::new();
    for month in 1..=12u8 {
        let period = Period::Month { year, month };
        let entries = if only.is_empty() {
            Vec::new()
        } else {
            ledger::ledger_of(
                &node.store,
                &topology,
                node.me,
                period,
                Some(&schedule.category),
                Some(&only),
                now,
                LedgerConfig::default(),
            )?
        };
        for reporter in &shown {
            let mine: Vec<&Entry> = entries.iter().filter(|e| e.reporter == *reporter).collect();
            by_reporter
                .entry(*reporter)
                .or_default()
                .push(cell(period, &mine));
        }
    }
    let rows = shown
        .iter()
        .map(|r| HeatRow {
            reporter: r.to_string(),
            name: topology
                .node(*r)
                .map_or_else(String::new, |n| n.name.clone()),
            parent: topology.parent_of(*r).map(|p| p.id.to_string()),
            cells: by_reporter.remove(r).unwrap_or_default(),
        })
        .collect();
    Ok(Heat {
        category: schedule.category.to_string(),
        year,
        categories,
        reporters: reporters.len(),
        offset,
        limit,
        rows,
    })
}

fn page_bounds(offset: Option<usize>, limit: Option<usize>, default: usize) -> (usize, usize) {
    (
        offset.unwrap_or(0),
        limit.unwrap_or(default).clamp(1, PAGE_MAX),
    )
}

/// Open feedback items (a page of them) and the time to fix per reporter.
fn feedback(node: &Node, offset: usize, limit: usize) -> Result<Value, RequestError> {
    let topology = current(&node.topology);
    let all = crate::quality_view::items(
        &node.store,
        &crate::quality_view::Filter {
            all: true,
            ..Default::default()
        },
    )?;
    let fix = crate::quality_view::fix_times(&all, &topology);
    let open: Vec<_> = all.into_iter().filter(|i| i.closed.is_none()).collect();
    let page: Vec<_> = open.iter().skip(offset).take(limit).cloned().collect();
    let mut items = crate::quality_view::items_json(&page);
    items["open"] = json!(open.len());
    items["offset"] = json!(offset);
    items["limit"] = json!(limit);
    items["fix_times"] = crate::quality_view::fix_times_json(&fix);
    Ok(items)
}

/// The newest `limit` audit events, newest first (read back from the log's head).
fn audit(node: &Node, limit: usize) -> Result<Vec<Value>, RequestError> {
    Ok(node
        .store
        .audit_tail(limit as u64)?
        .iter()
        .map(crate::api::audit_json)
        .collect())
}

/// One report's held batches and manifests, and its ledger entries.
fn report(node: &Node, query: &ReportQuery) -> Result<Value, RequestError> {
    let topology = current(&node.topology);
    let reporter = NodeId::parse(&query.reporter)?;
    let category = Category::parse(&query.category)?;
    let period = Period::parse(&query.period)?;
    let month = period.month();
    let mut batches = Vec::new();
    for entry in node.store.held_of(reporter) {
        let (id, meta) = entry?;
        if meta.category != category || meta.period.month() != month {
            continue;
        }
        let arrived = match meta.first {
            Some(first) => node
                .store
                .receipt(&id, first)?
                .map(|r| r.receipt.received_at_ms),
            None => None,
        };
        let mut value = json!({
            "id": id.to_hex(),
            "kind": match meta.kind {
                ContentKind::Data => "data",
                ContentKind::Manifest => "manifest",
                ContentKind::Progress => "progress",
            },
            "period": meta.period.to_string(),
            "records": meta.records,
            "bytes": meta.bytes,
            "from": meta.from.to_string(),
            "received_at_ms": meta.received_at_ms,
            "arrived_ms": arrived,
        });
        if meta.kind == ContentKind::Manifest
            && let Some(signed) = node.store.batch(&id)?
            && let Ok(Content::Manifest(manifest)) = Content::decode(&signed.bytes)
        {
            value["revision"] = json!(manifest.revision);
            value["declared"] = json!(manifest.declared);
            value["names"] = json!(manifest.batches.len());
        }
        batches.push(value);
    }
    let only = BTreeSet::from([reporter]);
    let entries = ledger::ledger_of(
        &node.store,
        &topology,
        node.me,
        month,
        Some(&category),
        Some(&only),
        node.wall_ms(),
        LedgerConfig::default(),
    )?;
    Ok(json!({
        "reporter": reporter.to_string(),
        "name": topology.node(reporter).map(|n| n.name.clone()),
        "category": category.to_string(),
        "period": month.to_string(),
        "entries": entries,
        "batches": batches,
    }))
}

// ---- routes ----

#[derive(Debug, Default, Deserialize)]
struct PageQuery {
    category: Option<String>,
    year: Option<u16>,
    offset: Option<usize>,
    limit: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
struct ListQuery {
    offset: Option<usize>,
    limit: Option<usize>,
}

#[derive(Debug, Deserialize)]
struct ReportQuery {
    reporter: String,
    category: String,
    period: String,
}

fn json_response(value: Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

async fn api_status(State(node): State<Arc<Node>>) -> Result<Response, RequestError> {
    let value = blocking(&node, |node| Ok(crate::api::status(node)?)).await?;
    Ok(json_response(value))
}

/// `/metrics`: [`crate::metrics::render`] (it reads the ledger and the outboxes: on the
/// blocking pool).
async fn metrics(State(node): State<Arc<Node>>) -> Result<Response, RequestError> {
    let text = blocking(&node, |node| Ok(crate::metrics::render(node))).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

async fn api_tree(State(node): State<Arc<Node>>) -> Result<Response, RequestError> {
    let tree = blocking(&node, |node| Ok(tree(node)?)).await?;
    Ok(json_response(json!(tree)))
}

async fn api_heatmap(
    State(node): State<Arc<Node>>,
    Query(query): Query<PageQuery>,
) -> Result<Response, RequestError> {
    let heat = blocking(&node, move |node| heat(node, &query)).await?;
    Ok(json_response(json!(heat)))
}

async fn api_feedback(
    State(node): State<Arc<Node>>,
    Query(query): Query<ListQuery>,
) -> Result<Response, RequestError> {
    let (offset, limit) = page_bounds(query.offset, query.limit, PAGE_EVENTS);
    let value = blocking(&node, move |node| feedback(node, offset, limit)).await?;
    Ok(json_response(value))
}

async fn api_audit(
    State(node): State<Arc<Node>>,
    Query(query): Query<ListQuery>,
) -> Result<Response, RequestError> {
    let (_, limit) = page_bounds(None, query.limit, PAGE_EVENTS);
    let events = blocking(&node, move |node| audit(node, limit)).await?;
    Ok(json_response(json!({"events": events})))
}

async fn api_progress(State(node): State<Arc<Node>>) -> Result<Response, RequestError> {
    let value = blocking(&node, |node| {
        let held = node.progress_reports(None)?;
        Ok(crate::progress_view::json(
            &held,
            &current(&node.topology),
            node.me,
        ))
    })
    .await?;
    Ok(json_response(value))
}

async fn api_report(
    State(node): State<Arc<Node>>,
    Query(query): Query<ReportQuery>,
) -> Result<Response, RequestError> {
    let value = blocking(&node, move |node| report(node, &query)).await?;
    Ok(json_response(value))
}

async fn page(
    State(node): State<Arc<Node>>,
    Query(query): Query<PageQuery>,
) -> Result<Html<String>, RequestError> {
    blocking(&node, move |node| {
        let tree = tree(node)?;
        let heat = match heat(node, &query) {
            Ok(heat) => Some(heat),
            Err(RequestError::NothingOwed) => None,
            Err(e) => return Err(e),
        };
        let feedback = feedback(node, 0, PAGE_EVENTS)?;
        let audit = audit(node, PAGE_EVENTS)?;
        let progress = crate::progress_view::json(
            &node.progress_reports(None)?,
            &current(&node.topology),
            node.me,
        );
        Ok(Html(render_page(
            node.wall_ms(),
            &tree,
            heat.as_ref(),
            &feedback,
            &audit,
            &progress,
        )))
    })
    .await
}

async fn report_page(
    State(node): State<Arc<Node>>,
    Query(query): Query<ReportQuery>,
) -> Result<Html<String>, RequestError> {
    blocking(&node, move |node| {
        let value = report(node, &query)?;
        Ok(Html(render_report(node.wall_ms(), &value)))
    })
    .await
}

// ---- HTML ----

/// Text made safe for HTML content and attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// "3 min ago" (or "in 2 h" for a clock ahead of ours).
fn age(now_ms: u64, at_ms: Option<u64>) -> String {
    let Some(at) = at_ms else {
        return "—".to_owned();
    };
    let (ms, ago) = if now_ms >= at {
        (now_ms - at, true)
    } else {
        (at - now_ms, false)
    };
    let s = ms / 1000;
    let text = match s {
        0..60 => format!("{s} s"),
        60..3_600 => format!("{} min", s / 60),
        3_600..172_800 => format!("{} h", s / 3_600),
        _ => format!("{} d", s / 86_400),
    };
    if ago {
        format!("{text} ago")
    } else {
        format!("in {text}")
    }
}

const STYLE: &str = "body{font-family:sans-serif;margin:1em 2em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}
.heat td{text-align:center;width:2.2em;font-weight:bold}.heat td a{color:inherit;text-decoration:none;display:block}
.on_time{background:#b7e1b0}.late{background:#ffd966}.missing{background:#e06666;color:#fff}
.incomplete{background:#f6b26b}.concealment_suspected{background:#8e7cc3;color:#fff}
.pending{background:#eee;color:#888}.none{background:#fff;color:#bbb}
.link-up{color:#1a7f37;font-weight:bold}.link-down{color:#c00;font-weight:bold}
.legend span{display:inline-block;padding:1px 6px;margin-right:4px;border:1px solid #ccc}
.muted{color:#777}";

fn render_page(
    now_ms: u64,
    tree: &Tree,
    heat: Option<&Heat>,
    feedback: &Value,
    audit: &[Value],
    progress: &Value,
) -> String {
    let me = tree.subtree.first();
    let title = me.map_or_else(
        || tree.node.clone(),
        |n| format!("{} {} ({})", n.name, n.id, n.role),
    );
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html><html lang=\"zh-CN\"><head><meta charset=\"utf-8\"><title>{t}</title><style>{STYLE}</style></head><body>\
         <h1 id=\"title\">{t}</h1><p class=\"muted\">as of {now} (China Standard Time) · JSON: \
         <a href=\"/api/tree\">tree</a> · <a href=\"/api/heatmap\">heat map</a> · <a href=\"/api/feedback\">feedback</a> · \
         <a href=\"/api/audit\">audit</a> · <a href=\"/api/progress\">progress</a> · <a href=\"/metrics\">metrics</a></p>",
        t = esc(&title),
        now = china_time(now_ms),
    );
    render_tree(&mut out, now_ms, tree);
    match heat {
        Some(heat) => render_heat(&mut out, heat),
        None => out.push_str(
            "<h2>Completeness</h2><p id=\"heat\" class=\"muted\">The topology owes no report: add a [[schedule]] to it to see who reports on time.</p>",
        ),
    }
    render_feedback(&mut out, feedback);
    render_audit(&mut out, audit);
    render_progress(&mut out, progress);
    out.push_str("</body></html>");
    out
}

fn link_cell(row: &TreeNode, now_ms: u64) -> String {
    match row.link {
        "up" | "down" => format!(
            "<span class=\"link-{l}\">{l}</span> <span class=\"muted\">{since}</span>{err}",
            l = row.link,
            since = row
                .link_since_ms
                .map_or_else(String::new, |s| format!("since {}", age(now_ms, Some(s)))),
            err = row
                .last_error
                .as_deref()
                .map_or_else(String::new, |e| format!(
                    " <span class=\"muted\">({})</span>",
                    esc(e)
                )),
        ),
        other => format!("<span class=\"muted\">{other}</span>"),
    }
}

fn render_tree(out: &mut String, now_ms: u64, tree: &Tree) {
    out.push_str(
        "<h2>Nodes</h2><table id=\"tree\"><tr><th>node</th><th>role</th><th>link</th>\
         <th>last receipt</th><th>outbox</th><th>migration</th></tr>",
    );
    let mut row = |r: &TreeNode, label: &str| {
        let _ = write!(
            out,
            "<tr class=\"node\" data-node=\"{id}\" data-link=\"{link}\"><td>{pad}{label}{name} <span class=\"muted\">{id}</span></td>\
             <td>{role}</td><td>{linkc}</td><td>{receipt}</td><td>{outbox}</td><td>{migration}</td></tr>",
            id = esc(&r.id),
            link = r.link,
            pad = "&nbsp;&nbsp;&nbsp;&nbsp;".repeat(r.depth),
            name = esc(&r.name),
            role = r.role,
            linkc = link_cell(r, now_ms),
            receipt = age(now_ms, r.last_receipt_ms),
            outbox = r.outbox.map_or_else(|| "—".to_owned(), |n| n.to_string()),
            migration = r.migration.as_deref().map_or_else(|| "—".to_owned(), esc),
        );
    };
    if let Some(parent) = &tree.parent {
        row(parent, "parent: ");
    }
    for r in &tree.subtree {
        row(r, "");
    }
    out.push_str("</table>");
}

fn render_heat(out: &mut String, heat: &Heat) {
    let _ = write!(
        out,
        "<h2>Completeness: {c}, {y}</h2><form method=\"get\" action=\"/\">category <select name=\"category\">",
        c = esc(&heat.category),
        y = heat.year
    );
    for c in &heat.categories {
        let _ = write!(
            out,
            "<option{sel}>{c}</option>",
            sel = if *c == heat.category { " selected" } else { "" },
            c = esc(c)
        );
    }
    let _ = write!(
        out,
        "</select> year <input name=\"year\" size=\"5\" value=\"{y}\"> <button>show</button></form>\
         <p class=\"legend\"><span class=\"on_time\">O on time</span><span class=\"late\">L late</span>\
         <span class=\"missing\">M missing</span><span class=\"incomplete\">I incomplete</span>\
         <span class=\"concealment_suspected\">C concealment suspected</span><span class=\"pending\">P pending</span> \
         (a month shows its worst report)</p><table class=\"heat\" id=\"heat\"><tr><th>reporter</th>",
        y = heat.year
    );
    for month in 1..=12 {
        let _ = write!(out, "<th>{month:02}</th>");
    }
    out.push_str("</tr>");
    for row in &heat.rows {
        let _ = write!(
            out,
            "<tr data-reporter=\"{r}\"><th>{n} <span class=\"muted\">{r}</span></th>",
            r = esc(&row.reporter),
            n = esc(&row.name)
        );
        for cell in &row.cells {
            let title: Vec<String> = cell
                .counts
                .iter()
                .map(|(state, n)| format!("{state}: {n}"))
                .chain(cell.late_days.map(|d| format!("up to {d} days late")))
                .collect();
            let _ = write!(
                out,
                "<td class=\"{s}\" data-period=\"{p}\" data-state=\"{s}\" title=\"{p}: {t}\">\
                 <a href=\"/report?reporter={r}&amp;category={c}&amp;period={p}\">{l}</a></td>",
                s = cell.state,
                p = esc(&cell.period),
                t = esc(&title.join(", ")),
                r = esc(&row.reporter),
                c = esc(&heat.category),
                l = cell.letter,
            );
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
    let shown_to = heat.offset + heat.rows.len();
    let _ = write!(
        out,
        "<p class=\"muted\">reporters {from}–{shown_to} of {total}",
        from = if heat.rows.is_empty() {
            0
        } else {
            heat.offset + 1
        },
        total = heat.reporters
    );
    let link = |offset: usize, text: &str| {
        format!(
            " · <a href=\"/?category={c}&amp;year={y}&amp;offset={offset}&amp;limit={l}\">{text}</a>",
            c = esc(&heat.category),
            y = heat.year,
            l = heat.limit
        )
    };
    if heat.offset > 0 {
        out.push_str(&link(heat.offset.saturating_sub(heat.limit), "previous"));
    }
    if shown_to < heat.reporters {
        out.push_str(&link(shown_to, "next"));
    }
    out.push_str("</p>");
}

fn hours(ms: &Value) -> String {
    ms.as_u64().map_or_else(
        || "—".to_owned(),
        |ms| format!("{:.1} h", ms as f64 / 3_600_000.0),
    )
}

fn render_feedback(out: &mut String, feedback: &Value) {
    let _ = write!(
        out,
        "<h2>Data quality</h2><p id=\"open-items\">{} open feedback items</p>\
         <table id=\"fix-times\"><tr><th>reporter / roll-up</th><th>open</th><th>fixed</th>\
         <th>time to fix, median</th><th>90th percentile</th></tr>",
        feedback["open"]
    );
    for row in feedback["fix_times"].as_array().into_iter().flatten() {
        let _ = write!(
            out,
            "<tr><td>{level} {node}</td><td>{open}</td><td>{fixed}</td><td>{median}</td><td>{p90}</td></tr>",
            level = esc(row["level"].as_str().unwrap_or("")),
            node = esc(row["node"].as_str().unwrap_or("")),
            open = row["open"],
            fixed = row["fixed"],
            median = hours(&row["time_to_fix_median_ms"]),
            p90 = hours(&row["time_to_fix_p90_ms"]),
        );
    }
    out.push_str("</table>");
    let items = feedback["items"].as_array().map_or(&[][..], Vec::as_slice);
    if !items.is_empty() {
        out.push_str(
            "<table id=\"items\"><tr><th>origin</th><th>category</th><th>period</th><th>record</th>\
             <th>field</th><th>rule</th><th>message</th></tr>",
        );
        for item in items {
            let text = |k: &str| esc(item[k].as_str().unwrap_or(""));
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                text("origin"),
                text("category"),
                text("period"),
                text("record_key"),
                text("field"),
                text("rule"),
                text("message"),
            );
        }
        out.push_str("</table>");
    }
}

fn render_audit(out: &mut String, audit: &[Value]) {
    out.push_str(
        "<h2>Last audit events</h2><table id=\"audit\"><tr><th>#</th><th>at</th><th>event</th><th>detail</th></tr>",
    );
    for event in audit {
        // The event's fields as `name value`, batch ids shortened as the CLI shows them.
        let detail: Vec<String> = event
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| !matches!(k.as_str(), "seq" | "at_ms" | "kind"))
            .map(|(k, v)| {
                let v = match v {
                    Value::String(text) if k == "batch" => text.chars().take(12).collect(),
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                format!("{k} {v}")
            })
            .collect();
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            event["seq"],
            event["at_ms"].as_u64().map_or_else(String::new, china_time),
            esc(event["kind"].as_str().unwrap_or("")),
            esc(&detail.join(", ")),
        );
    }
    out.push_str("</table>");
}

fn render_progress(out: &mut String, progress: &Value) {
    out.push_str(
        "<h2>Progress reports (工作通报)</h2><table id=\"progress\"><tr><th>province</th><th>period</th>\
         <th>revision</th><th>made</th><th>national receipt</th><th>expected</th><th>on time</th>\
         <th>late</th><th>missing</th><th>concealment suspected</th></tr>",
    );
    let reports = progress["reports"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    for r in reports {
        let total = &r["total"];
        let _ = write!(
            out,
            "<tr><td>{} {}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(r["name"].as_str().unwrap_or("")),
            esc(r["province"].as_str().unwrap_or("")),
            esc(r["period"].as_str().unwrap_or("")),
            r["revision"],
            r["made_at_ms"]
                .as_u64()
                .map_or_else(String::new, china_time),
            r["national_receipt_ms"]
                .as_u64()
                .map_or_else(|| "not yet".to_owned(), china_time),
            total["expected"],
            total["on_time"],
            total["late"],
            total["missing"],
            total["concealed"],
        );
    }
    if reports.is_empty() {
        out.push_str("<tr><td colspan=\"10\" class=\"muted\">none held</td></tr>");
    }
    out.push_str("</table>");
}

fn render_report(now_ms: u64, report: &Value) -> String {
    let text = |v: &Value| esc(v.as_str().unwrap_or(""));
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html><html lang=\"zh-CN\"><head><meta charset=\"utf-8\"><title>{name} {r}</title><style>{STYLE}</style></head><body>\
         <p><a href=\"/?category={c}\">← dashboard</a></p><h1>{name} {r}: {c}, {p}</h1><p class=\"muted\">as of {now}</p>\
         <h2>Reports</h2><table id=\"entries\"><tr><th>period</th><th>state</th><th>due</th><th>arrived</th>\
         <th>days late</th><th>records delivered</th><th>declared</th><th>manifest revision</th><th>flags</th></tr>",
        name = text(&report["name"]),
        r = text(&report["reporter"]),
        c = text(&report["category"]),
        p = text(&report["period"]),
        now = china_time(now_ms),
    );
    for e in report["entries"].as_array().into_iter().flatten() {
        let mut flags = Vec::new();
        if let Some(c) = e["concealment"].as_str() {
            flags.push(format!("concealment suspected: {c}"));
        }
        if let Some(missing) = e["incomplete"].as_array().filter(|a| !a.is_empty()) {
            flags.push(format!("{} named batches not held", missing.len()));
        }
        if e["nil"] == json!(true) {
            flags.push("nil report".to_owned());
        }
        let state = e["state"].as_str().unwrap_or("");
        let _ = write!(
            out,
            "<tr><td>{}</td><td class=\"{s}\" data-state=\"{s}\">{l} {s}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            text(&e["period"]),
            e["due_ms"].as_u64().map_or_else(String::new, china_time),
            e["arrived_ms"]
                .as_u64()
                .map_or_else(|| "—".to_owned(), china_time),
            e["late_days"]
                .as_u64()
                .map_or_else(String::new, |d| d.to_string()),
            e["records_delivered"],
            e["records_declared"]
                .as_u64()
                .map_or_else(|| "—".to_owned(), |d| d.to_string()),
            e["manifest_revision"]
                .as_u64()
                .map_or_else(|| "—".to_owned(), |d| d.to_string()),
            esc(&flags.join("; ")),
            s = esc(state),
            l = state_letter(state),
        );
    }
    out.push_str(
        "</table><h2>Batches and manifests held</h2><table id=\"batches\"><tr><th>id</th><th>kind</th>\
         <th>period</th><th>records</th><th>bytes</th><th>from</th><th>arrived (first receipt)</th><th>manifest</th></tr>",
    );
    for b in report["batches"].as_array().into_iter().flatten() {
        let manifest = if b["kind"] == json!("manifest") {
            format!(
                "revision {}, names {}, declared {}",
                b["revision"],
                b["names"],
                b["declared"]
                    .as_u64()
                    .map_or_else(|| "—".to_owned(), |d| d.to_string())
            )
        } else {
            String::new()
        };
        let _ = write!(
            out,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            text(&b["id"]),
            text(&b["kind"]),
            text(&b["period"]),
            b["records"],
            b["bytes"],
            text(&b["from"]),
            b["arrived_ms"]
                .as_u64()
                .or_else(|| b["received_at_ms"].as_u64())
                .map_or_else(String::new, china_time),
            esc(&manifest),
        );
    }
    out.push_str("</table></body></html>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_text_is_escaped() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn a_cell_shows_the_worst_of_its_reports() {
        let entry = |state| Entry {
            reporter: NodeId::parse("445202").unwrap(),
            category: "admin_penalty".into(),
            period: "2026-11-01".into(),
            due_ms: 0,
            arrived_ms: None,
            state,
            late_days: (state == ledger::State::Late).then_some(3),
            missing: state == ledger::State::Missing,
            incomplete: Vec::new(),
            concealment: None,
            manifest_revision: None,
            nil: false,
            records_delivered: 0,
            records_declared: None,
            allocation: None,
        };
        let month = Period::parse("2026-11").unwrap();
        let (on_time, late, missing) = (
            entry(ledger::State::OnTime),
            entry(ledger::State::Late),
            entry(ledger::State::Missing),
        );
        let c = cell(month, &[&on_time, &late, &on_time]);
        assert_eq!((c.state, c.letter, c.late_days), ("late", "L", Some(3)));
        assert_eq!(c.counts["on_time"], 2);
        let c = cell(month, &[&late, &missing]);
        assert_eq!((c.state, c.letter), ("missing", "M"));
        let c = cell(month, &[]);
        assert_eq!((c.state, c.letter), ("none", "·"));
    }

    #[test]
    fn ages_read_as_people_say_them() {
        assert_eq!(age(10_000, Some(5_000)), "5 s ago");
        assert_eq!(age(0, Some(7_200_000)), "in 2 h");
        assert_eq!(age(3 * 86_400_000, Some(0)), "3 d ago");
        assert_eq!(age(0, None), "—");
    }
}
