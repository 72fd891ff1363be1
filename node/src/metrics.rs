//! Prometheus metrics of a running node: [`install`] puts a Prometheus recorder in the process
//! (once; `credit-node run` does it, one node per process), and [`render`] is what the node's
//! `GET /metrics` answers, in the Prometheus text format.
//!
//! **Where the numbers come from.** Counts are kept where the decision is made, by the core
//! (`LinkStatus`: batches and bytes per link, refusals by reason, reconciliation), and are
//! copied into the recorder at scrape time (`absolute` for counters, `set` for gauges); so the
//! core stays sans-IO and the simulator runs it unchanged. Gauges that describe state (link
//! up, outbox depth, the ledger) are read at scrape time too. The one value known only when it
//! happens, the receipt latency, is recorded by the core through [`receipt_latency`], which
//! does nothing when no recorder was installed (library use, tests, the simulator).
//!
//! **Labels are bounded**: `peer` is a node id of this node's links (its parent, its legacy
//! link, its children), `direction` is `up`, `legacy` or `down`, `reason` one of
//! [`REFUSAL_REASONS`], `state` a ledger state, `period` `current` or `previous`. No free text
//! and no batch id ever becomes a label.
//!
//! Every metric and its labels are listed in ARCHITECTURE.md ("Metrics").

use std::collections::BTreeSet;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use metrics::{Label, counter, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use protocol::ids::NodeId;

use crate::core::REFUSAL_REASONS;
use crate::core::ledger::State;
use crate::runtime::Node;
use crate::store::Kv;
use crate::transport::current;

pub const NODE_INFO: &str = "credit_node_info";
pub const LINK_UP: &str = "credit_link_up";
pub const BATCHES_RECEIVED: &str = "credit_batches_received_total";
pub const BYTES_RECEIVED: &str = "credit_batch_bytes_received_total";
pub const BATCHES_SENT: &str = "credit_batches_sent_total";
pub const BYTES_SENT: &str = "credit_batch_bytes_sent_total";
pub const RECEIPT_LATENCY: &str = "credit_receipt_latency_seconds";
pub const BATCH_RECEIVE: &str = "credit_batch_receive_seconds";
pub const OUTBOX: &str = "credit_outbox_batches";
pub const BATCHES_REFUSED: &str = "credit_batches_refused_total";
pub const RECONCILE_SESSIONS: &str = "credit_reconcile_sessions_total";
pub const RECONCILE_ROUNDS: &str = "credit_reconcile_rounds_total";
pub const RECONCILE_DIFFERENCES: &str = "credit_reconcile_differences_total";
pub const LEDGER_REPORTS: &str = "credit_ledger_reports";

/// Upper bounds of the receipt latency's buckets, in seconds: 1 ms to 60 s (a receipt waits
/// for the parent's checks and its store's sync; a batch is offered again after 15 s).
pub const RECEIPT_LATENCY_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0,
];

/// Upper bounds of the receive stages' buckets, in seconds: 0.5 ms to 10 s (a batch of 10,000
/// records takes tens of milliseconds in the core; waiting grows with the queue).
pub const BATCH_RECEIVE_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How often the recorder's histogram samples are folded in when nobody scrapes (rendering
/// folds them in too), so they do not pile up.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// What `/metrics` says in a process that installed no recorder.
pub const NOT_INSTALLED: &str =
    "# credit-node: metrics are not installed in this process (`credit-node run` installs them)\n";

/// The ledger states, in the order they are exported.
const LEDGER_STATES: [State; 6] = [
    State::Pending,
    State::OnTime,
    State::Late,
    State::Missing,
    State::Incomplete,
    State::ConcealmentSuspected,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
static INSTALLING: Mutex<()> = Mutex::new(());

/// Why [`install`] did not install the recorder; the node runs on without metrics.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(
        "cannot install the Prometheus recorder: {reason}: another metrics recorder is already installed in this process; /metrics will say metrics are not installed"
    )]
    Recorder { reason: String },
}

/// Installs the Prometheus recorder for this process, once (a second call does nothing), and
/// a thread that folds histogram samples in every few seconds.
pub fn install() -> Result<(), InstallError> {
    let _installing = INSTALLING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if HANDLE.get().is_some() {
        return Ok(());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(RECEIPT_LATENCY.to_owned()),
            &RECEIPT_LATENCY_BUCKETS,
        )
        .expect("the buckets are not empty")
        .set_buckets_for_metric(
            Matcher::Full(BATCH_RECEIVE.to_owned()),
            &BATCH_RECEIVE_BUCKETS,
        )
        .expect("the buckets are not empty")
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| InstallError::Recorder {
        reason: e.to_string(),
    })?;
    describe();
    let upkeep = handle.clone();
    let _ = HANDLE.set(handle);
    let started = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                upkeep.run_upkeep();
            }
        });
    if let Err(e) = started {
        // Each scrape folds the samples in as well: only an unscraped node's samples grow.
        tracing::warn!(error = %e, "cannot start the metrics upkeep thread; histogram samples are folded in at each scrape only");
    }
    Ok(())
}

/// Whether [`install`] installed the recorder in this process.
pub fn installed() -> bool {
    HANDLE.get().is_some()
}

/// The node's metrics in the Prometheus text format (version 0.0.4), brought up to date from
/// its state first. Without a recorder: a one-line comment saying so.
///
/// Cost: a copy of each link's status, an outbox count per uplink (a key scan of that
/// outbox), and the ledger of this month and the last (see ARCHITECTURE.md, "Metrics").
pub fn render<K: Kv>(node: &Node<K>) -> String {
    let Some(handle) = HANDLE.get() else {
        return NOT_INSTALLED.to_owned();
    };
    refresh(node);
    handle.render()
}

/// A receipt for a batch this node sent on an uplink came `ms` after the batch's stream was
/// finished. Called by the core where it learns of the receipt; nothing without a recorder.
pub(crate) fn receipt_latency(peer: NodeId, direction: &'static str, ms: u64) {
    if !installed() {
        return;
    }
    metrics::histogram!(RECEIPT_LATENCY, link_labels(peer.to_string(), direction))
        .record(ms as f64 / 1000.0);
}

/// A batch received from a child went through its stages: checked before the core's lock,
/// waiting (for a turn and the lock), held by the core. Nothing without a recorder.
pub(crate) fn batch_received(check: Duration, wait: Duration, core: Duration) {
    if !installed() {
        return;
    }
    for (stage, time) in [("check", check), ("wait", wait), ("core", core)] {
        metrics::histogram!(BATCH_RECEIVE, "stage" => stage).record(time.as_secs_f64());
    }
}

fn link_labels(peer: String, direction: &'static str) -> Vec<Label> {
    vec![Label::new("peer", peer), Label::new("direction", direction)]
}

/// Copies the node's counts and state into the recorder.
fn refresh<K: Kv>(node: &Node<K>) {
    let topology = current(&node.topology);
    if let Some(me) = topology.node(node.me) {
        gauge!(NODE_INFO, "node" => node.me.to_string(), "role" => me.role.to_string()).set(1.0);
    }
    let mut known: BTreeSet<(String, &'static str)> = BTreeSet::new();
    for link in node.links() {
        known.insert((link.peer.clone(), link.direction));
        let labels = link_labels(link.peer.clone(), link.direction);
        gauge!(LINK_UP, labels.clone()).set(if link.connected { 1.0 } else { 0.0 });
        counter!(RECONCILE_SESSIONS, labels.clone()).absolute(link.reconcile_sessions);
        counter!(RECONCILE_ROUNDS, labels.clone()).absolute(link.reconcile_rounds);
        counter!(RECONCILE_DIFFERENCES, labels.clone()).absolute(link.reconcile_differences);
        if link.direction == "down" {
            counter!(BATCHES_RECEIVED, labels.clone()).absolute(link.batches_received);
            counter!(BYTES_RECEIVED, labels).absolute(link.bytes_received);
            for reason in REFUSAL_REASONS {
                let count = link.refused.get(reason).copied().unwrap_or(0);
                counter!(BATCHES_REFUSED, "peer" => link.peer.clone(), "reason" => reason)
                    .absolute(count);
            }
        } else {
            counter!(BATCHES_SENT, labels.clone()).absolute(link.batches_sent);
            counter!(BYTES_SENT, labels.clone()).absolute(link.bytes_sent);
            if let Ok(peer) = NodeId::parse(&link.peer) {
                gauge!(OUTBOX, labels).set(node.store.outbox_len(peer) as f64);
            }
        }
    }
    // A child that has not connected since this node started has no status yet: down.
    for child in topology.children_of(node.me) {
        if !known.contains(&(child.id.to_string(), "down")) {
            gauge!(LINK_UP, link_labels(child.id.to_string(), "down")).set(0.0);
        }
    }
    refresh_ledger(node);
}

/// The reports this node's subtree owes for this month and the last, by state.
fn refresh_ledger<K: Kv>(node: &Node<K>) {
    let today = topology::admission::Date::of_ms(node.wall_ms());
    let this_month = protocol::Period::Month {
        year: today.year,
        month: today.month,
    };
    let last_month = if today.month == 1 {
        protocol::Period::Month {
            year: today.year - 1,
            month: 12,
        }
    } else {
        protocol::Period::Month {
            year: today.year,
            month: today.month - 1,
        }
    };
    for (which, period) in [("current", this_month), ("previous", last_month)] {
        let entries = match node.ledger(period, None) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(%period, error = %e, "metrics: the ledger could not be read; its gauges keep their last values");
                continue;
            }
        };
        for state in LEDGER_STATES {
            let count = entries.iter().filter(|e| e.state == state).count();
            gauge!(LEDGER_REPORTS, "period" => which, "state" => state_label(state))
                .set(count as f64);
        }
    }
}

/// A ledger state as a label value (`State::as_str` has spaces).
fn state_label(state: State) -> &'static str {
    match state {
        State::Pending => "pending",
        State::OnTime => "on_time",
        State::Late => "late",
        State::Missing => "missing",
        State::Incomplete => "incomplete",
        State::ConcealmentSuspected => "concealment_suspected",
    }
}

/// The HELP lines.
fn describe() {
    describe_gauge!(NODE_INFO, "This node: its id and role (always 1).");
    describe_gauge!(
        LINK_UP,
        "1 while the link is up (an uplink once the peer answered Hello; a child's once authenticated), else 0."
    );
    describe_counter!(
        BATCHES_RECEIVED,
        "Batches that arrived from a child on its batch streams, each arrival (duplicates and refused ones included)."
    );
    describe_counter!(
        BYTES_RECEIVED,
        "Bytes of the batches counted in credit_batches_received_total."
    );
    describe_counter!(
        BATCHES_SENT,
        "Batches of this node's outbox for the uplink that the peer receipted (each batch once, whatever the verdict)."
    );
    describe_counter!(
        BYTES_SENT,
        "Bytes of the batches counted in credit_batches_sent_total."
    );
    describe_histogram!(
        RECEIPT_LATENCY,
        metrics::Unit::Seconds,
        "From the end of a batch's stream on an uplink to the peer's receipt for it."
    );
    describe_histogram!(
        BATCH_RECEIVE,
        metrics::Unit::Seconds,
        "A batch received from a child, once read off its stream, by stage: check (decoding and the record checks, before the core's lock), wait (for a turn and for the lock), core (held by the core, which takes batches one at a time: at a mean of m seconds, at most 1/m batches a second)."
    );
    describe_gauge!(
        OUTBOX,
        "Batches in this node's outbox for the uplink (stored here, not yet receipted by the peer)."
    );
    describe_counter!(
        BATCHES_REFUSED,
        "Batches from a child that this node refused, quarantined (key_ended) or found damaged (hash_mismatch, not receipted), by reason."
    );
    describe_counter!(
        RECONCILE_SESSIONS,
        "Reconciliation sessions finished on the link (started here on an uplink, answered here on a child's link)."
    );
    describe_counter!(
        RECONCILE_ROUNDS,
        "Reconciliation message rounds on the link."
    );
    describe_counter!(
        RECONCILE_DIFFERENCES,
        "Items found on one side only by reconciliation (on a child's link: the items the child reported lacking)."
    );
    describe_gauge!(
        LEDGER_REPORTS,
        "Reports this node's subtree owes for the current or previous month, by ledger state."
    );
}
