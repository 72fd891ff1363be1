//! The timeliness ledger: for every report a node's subtree owes (from the topology's
//! `[[schedule]]`), whether it arrived on time, late, not at all, incomplete, or short of
//! what its data source declared — and the three rates (瞒报率, 漏报率, 迟报率) over them.
//!
//! A report is `(reporter, category, period)`. What arrived is read from this node's store:
//! the reporter's signed manifests (the highest revision counts for completeness) and its data
//! batches. **"Arrived" is the time in the signed receipt of the node that first received the
//! item from its origin** (see `BatchMeta::first`), never the origin's own clock; without that
//! proof this node's own receipt time is used, which can only be later.
//!
//! Deadlines are at the end of the due day in China Standard Time (UTC+8):
//! - monthly: day `due_day` of the following month;
//! - daily: the following day;
//! - event: the month's manifest `due_day` days after the month ends, and each event's batch
//!   `due_day` days after its event day.
//!
//! Records are counted by key: a correction carries new versions of records already
//! delivered and adds none, a withdrawal takes none back.
//!
//! Pure: reads the store through the [`Kv`] seam and takes the time as an argument.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use protocol::ids::{BatchId, Category, NodeId, Period};
use protocol::record::RecordKey;
use protocol::schema::Cadence;
use protocol::{Content, ContentKind, Manifest};
use serde::Serialize;
use topology::Topology;

use crate::store::{BatchMeta, Counted, Kv, Store, StoreError};

const DAY_MS: u64 = 86_400_000;
/// China Standard Time is UTC+8.
const CST_OFFSET_MS: u64 = 8 * 3_600_000;

/// How the ledger judges a report short.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LedgerConfig {
    /// A delivered record count below this fraction of the reporter's average over the
    /// previous [`LedgerConfig::trailing_periods`] periods is flagged (concealment suspected).
    pub drop_fraction: f64,
    pub trailing_periods: u32,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            drop_fraction: 0.5,
            trailing_periods: 3,
        }
    }
}

/// One expected report, judged.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    #[serde(serialize_with = "as_text")]
    pub reporter: NodeId,
    pub category: String,
    pub period: String,
    /// End of the due day (Unix ms).
    pub due_ms: u64,
    /// When the report arrived (first parent's receipt), if it has.
    pub arrived_ms: Option<u64>,
    pub state: State,
    /// Days late (whole days started after the deadline), when late.
    pub late_days: Option<u32>,
    pub missing: bool,
    /// Batches the latest manifest names that this node does not hold.
    pub incomplete: Vec<String>,
    /// Why concealment is suspected, if it is.
    pub concealment: Option<String>,
    pub manifest_revision: Option<u32>,
    pub nil: bool,
    /// Records in the data batches held for the report.
    pub records_delivered: u64,
    /// Records the data source declared (from the latest manifest), if it declared.
    pub records_declared: Option<u64>,
    /// Whom to call about this report: the reporter's line of the schedule's task allocation
    /// table (分工表), if it has one.
    pub allocation: Option<Allocation>,
}

/// A reporter's line of the task allocation table, as the report shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Allocation {
    /// The unit that provides the data (数据源单位).
    pub data_source: String,
    /// The unit that answers for the report (责任单位).
    pub responsible: String,
    /// Whom to call, as the topology gives it.
    pub contact: Option<String>,
    /// The districts whose data this reporter reports (they owe no report of their own).
    #[serde(serialize_with = "ids_as_text")]
    pub covers: Vec<NodeId>,
}

impl From<&topology::Allocation> for Allocation {
    fn from(line: &topology::Allocation) -> Allocation {
        Allocation {
            data_source: line.data_source.clone(),
            responsible: line.responsible.clone(),
            contact: line.contact.clone(),
            covers: line.covers.clone(),
        }
    }
}

fn ids_as_text<S: serde::Serializer>(ids: &[NodeId], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(ids.iter().map(ToString::to_string))
}

pub(crate) fn as_text<S: serde::Serializer>(id: &NodeId, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(id)
}

/// The one word an operator reads first; the flags say the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Not due yet and nothing arrived.
    Pending,
    OnTime,
    Late,
    Missing,
    Incomplete,
    ConcealmentSuspected,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::OnTime => "on time",
            State::Late => "late",
            State::Missing => "missing",
            State::Incomplete => "incomplete",
            State::ConcealmentSuspected => "concealment suspected",
        }
    }
}

/// Counts over the expected (due or arrived) reports, and the rates they make.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Rates {
    pub expected: u64,
    pub on_time: u64,
    pub late: u64,
    pub missing: u64,
    pub incomplete: u64,
    pub concealed: u64,
    pub pending: u64,
    pub records_delivered: u64,
    /// Records declared, over the reports that declared a total.
    pub records_declared: u64,
    /// Records delivered by the reports that declared a total.
    pub records_delivered_of_declared: u64,
}

impl Rates {
    pub fn add(&mut self, entry: &Entry) {
        if entry.state == State::Pending {
            self.pending += 1;
            return;
        }
        self.expected += 1;
        self.on_time += u64::from(entry.state == State::OnTime);
        self.late += u64::from(entry.late_days.is_some());
        self.missing += u64::from(entry.missing);
        self.incomplete += u64::from(!entry.incomplete.is_empty());
        self.concealed += u64::from(entry.concealment.is_some());
        self.records_delivered += entry.records_delivered;
        if let Some(declared) = entry.records_declared {
            self.records_declared += declared;
            self.records_delivered_of_declared += entry.records_delivered;
        }
    }

    fn rate(count: u64, of: u64) -> f64 {
        if of == 0 {
            0.0
        } else {
            count as f64 / of as f64
        }
    }

    /// 瞒报率: reports with concealment suspected, over expected reports.
    pub fn concealment_rate(&self) -> f64 {
        Rates::rate(self.concealed, self.expected)
    }

    /// 漏报率: missing reports, over expected reports.
    pub fn missing_rate(&self) -> f64 {
        Rates::rate(self.missing, self.expected)
    }

    /// 迟报率: late reports, over expected reports.
    pub fn late_rate(&self) -> f64 {
        Rates::rate(self.late, self.expected)
    }

    /// Records delivered over records declared (1 when nothing was declared).
    pub fn completeness(&self) -> f64 {
        if self.records_declared == 0 {
            1.0
        } else {
            Rates::rate(self.records_delivered_of_declared, self.records_declared)
        }
    }
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian): one implementation for the
/// topology's dates and the ledger's.
pub(crate) use topology::admission::days_from_civil;

/// Unix ms of midnight at the start of `days` (since 1970-01-01) in China Standard Time.
fn cst_midnight_ms(days: i64) -> u64 {
    (days as u64 * DAY_MS).saturating_sub(CST_OFFSET_MS)
}

fn next_month(year: u16, month: u8) -> (i64, u32) {
    if month == 12 {
        (i64::from(year) + 1, 1)
    } else {
        (i64::from(year), u32::from(month) + 1)
    }
}

/// The end of the day a report of `period` is due, by `cadence` and `due_day`.
pub fn due_ms(period: Period, cadence: Cadence, due_day: u16) -> u64 {
    let days = match (period, cadence) {
        (Period::Month { year, month }, Cadence::Monthly) => {
            let (y, m) = next_month(year, month);
            days_from_civil(y, m, u32::from(due_day)) + 1
        }
        (Period::Month { year, month }, Cadence::Event) => {
            let (y, m) = next_month(year, month);
            days_from_civil(y, m, 1) + i64::from(due_day)
        }
        (Period::Month { year, month }, Cadence::Daily) => {
            // A month of daily data: due the day after its last day.
            let (y, m) = next_month(year, month);
            days_from_civil(y, m, 1) + 1
        }
        (Period::Day { year, month, day }, Cadence::Event) => {
            days_from_civil(i64::from(year), u32::from(month), u32::from(day))
                + i64::from(due_day)
                + 1
        }
        (Period::Day { year, month, day }, _) => {
            days_from_civil(i64::from(year), u32::from(month), u32::from(day)) + 2
        }
    };
    cst_midnight_ms(days)
}

/// The months before `period`, newest first.
fn previous_months(period: Period, count: u32) -> Vec<Period> {
    let (mut year, mut month) = match period {
        Period::Month { year, month } | Period::Day { year, month, .. } => (year, month),
    };
    (0..count)
        .map(|_| {
            if month == 1 {
                year -= 1;
                month = 12;
            } else {
                month -= 1;
            }
            Period::Month { year, month }
        })
        .collect()
}

/// Whether the ledger holds every sum of stored counts to the batches' keys, read for it
/// ([`check_counts`]).
#[cfg(feature = "test-hooks")]
static CHECK_COUNTS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes the ledger read the keys of every report it counts from the store's counts too, and
/// panic where they disagree: the simulator turns it on for its runs (a test of the ledger's
/// reads leaves it off).
#[cfg(feature = "test-hooks")]
pub fn check_counts(on: bool) {
    CHECK_COUNTS.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// What this node holds of one reporter's category in one period.
struct Held {
    data: Vec<(BatchId, BatchMeta)>,
    manifests: Vec<(BatchId, BatchMeta, Manifest)>,
    /// What the store recorded of each data batch when it stored it (its records new to the
    /// period, what it supersedes), when it did for every one and more than one is held.
    counted: Option<HashMap<BatchId, Counted>>,
    /// Each data batch's record keys (with its period) and the batch it supersedes: read
    /// only when more than one data batch is held (a lone batch carries each key once and
    /// corrects nothing held) and the store's counts do not answer (not recorded for every
    /// batch, or some of the batches asked about).
    versions: HashMap<BatchId, Version>,
}

/// What a data batch supersedes, and the records (period, key) it carries.
type Version = (Option<BatchId>, Vec<(Period, RecordKey)>);

impl Held {
    /// The records the held data batches `ids` deliver: each record once, however many
    /// versions of it they carry (a correction replaces records and adds none; a
    /// withdrawal carries none, and takes nothing back from what was delivered). All the
    /// held batches together from the store's counts, without reading them; some of them
    /// from their keys.
    fn records<K: Kv>(&mut self, store: &Store<K>, ids: &[BatchId]) -> Result<u64, StoreError> {
        if let Some(counted) = &self.counted {
            let asked: BTreeSet<&BatchId> = ids.iter().collect();
            if asked.len() == self.data.len() && self.data.iter().all(|(id, _)| asked.contains(id))
            {
                let sum = asked
                    .iter()
                    .map(|id| u64::from(counted[*id].new_keys))
                    .sum();
                // The simulator holds the counts to the keys on every judgement.
                #[cfg(feature = "test-hooks")]
                if CHECK_COUNTS.load(std::sync::atomic::Ordering::Relaxed) {
                    let versions = versions_of(store, &self.data)?;
                    let keys: BTreeSet<&(Period, RecordKey)> =
                        versions.values().flat_map(|(_, keys)| keys).collect();
                    assert_eq!(
                        sum,
                        keys.len() as u64,
                        "the counts stored with {:?} disagree with their keys",
                        self.data
                            .iter()
                            .map(|(id, _)| id.short())
                            .collect::<Vec<_>>()
                    );
                }
                return Ok(sum);
            }
            if self.versions.is_empty() {
                self.versions = versions_of(store, &self.data)?;
            }
        }
        let mut keys: BTreeSet<&(Period, RecordKey)> = BTreeSet::new();
        let mut counted = 0u64;
        for id in ids {
            match self.versions.get(id) {
                Some((_, carried)) => keys.extend(carried),
                None => {
                    counted += self
                        .data
                        .iter()
                        .find(|(held, _)| held == id)
                        .map_or(0, |(_, meta)| u64::from(meta.records));
                }
            }
        }
        Ok(counted + keys.len() as u64)
    }

    /// Every held data batch's id.
    fn data_ids(&self) -> Vec<BatchId> {
        self.data.iter().map(|(id, _)| *id).collect()
    }

    /// Whether data batch `id` supersedes another held data batch: a change to a filing (a
    /// correction or a withdrawal), not a filing, so not what its timeliness is judged by.
    fn corrects_held(&self, id: &BatchId) -> bool {
        let supersedes = match &self.counted {
            Some(counted) => counted.get(id).and_then(|c| c.supersedes),
            None => self
                .versions
                .get(id)
                .and_then(|(supersedes, _)| *supersedes),
        };
        // Versions or counts are known only when more than one data batch is held.
        supersedes.is_some_and(|earlier| {
            self.data.len() > 1 && self.data.iter().any(|(held, _)| *held == earlier)
        })
    }
}

/// Each of `data`'s batches' keys (with its period) and what it supersedes. The keys
/// alone: a province's month holds thousands of batches.
fn versions_of<K: Kv>(
    store: &Store<K>,
    data: &[(BatchId, BatchMeta)],
) -> Result<HashMap<BatchId, Version>, StoreError> {
    let mut versions = HashMap::new();
    for (id, meta) in data {
        if let Some((header, keys)) = store.held_data_batch_keys(id)? {
            let keys = keys.into_iter().map(|key| (meta.period, key)).collect();
            versions.insert(*id, (header.supersedes, keys));
        }
    }
    Ok(versions)
}

fn held_for<K: Kv>(
    store: &Store<K>,
    reporter: NodeId,
    category: &Category,
    period: Period,
) -> Result<Held, StoreError> {
    let mut held = Held {
        data: Vec::new(),
        manifests: Vec::new(),
        counted: None,
        versions: HashMap::new(),
    };
    let mut counted = HashMap::new();
    let mut uncounted = false;
    for entry in store.held_in_period_counted(reporter, category, period) {
        let (id, meta, count) = entry?;
        if meta.kind == ContentKind::Manifest {
            let Some(signed) = store.batch(&id)? else {
                continue;
            };
            if let Ok(Content::Manifest(manifest)) = Content::decode(&signed.bytes) {
                held.manifests.push((id, meta, manifest));
            }
        } else if meta.kind == ContentKind::Data {
            match count {
                Some(count) => {
                    counted.insert(id, count);
                }
                None => uncounted = true,
            }
            held.data.push((id, meta));
        }
    }
    held.manifests.sort_by_key(|(_, _, m)| m.revision);
    if held.data.len() > 1 {
        // The store's counts, when it recorded them for every batch (a province's month
        // holds thousands of batches, judged again for every report and every scrape of
        // the metrics); else the batches' keys.
        if uncounted {
            held.versions = versions_of(store, &held.data)?;
        } else {
            held.counted = Some(counted);
        }
    }
    Ok(held)
}

/// When an item arrived, as proven to this node.
fn arrival<K: Kv>(
    store: &Store<K>,
    me: NodeId,
    id: &BatchId,
    meta: &BatchMeta,
) -> Result<Option<u64>, StoreError> {
    if let Some(first) = meta.first
        && let Some(receipt) = store.receipt(id, first)?
    {
        return Ok(Some(receipt.receipt.received_at_ms));
    }
    if meta.origin == me {
        // At the origin: the earliest receipt of a node above it that answered.
        let receipts = store.receipts_for(id)?;
        return Ok(receipts
            .iter()
            .filter(|r| r.receipt.receiver != me)
            .map(|r| r.receipt.received_at_ms)
            .min());
    }
    Ok(Some(meta.received_at_ms))
}

/// The ledger of every report this node's subtree owes for `period` (a month: monthly and
/// event categories are judged for the month, daily ones day by day), optionally of one
/// category, judged at `now_ms`.
pub fn ledger<K: Kv>(
    store: &Store<K>,
    topology: &Topology,
    me: NodeId,
    period: Period,
    category: Option<&Category>,
    now_ms: u64,
    config: LedgerConfig,
) -> Result<Vec<Entry>, StoreError> {
    ledger_of(store, topology, me, period, category, None, now_ms, config)
}

/// [`ledger`], of the reporters in `reporters` only (every reporter without it): a page of
/// the dashboard's heat map judges only the rows it shows.
#[allow(clippy::too_many_arguments)]
pub fn ledger_of<K: Kv>(
    store: &Store<K>,
    topology: &Topology,
    me: NodeId,
    period: Period,
    category: Option<&Category>,
    reporters: Option<&BTreeSet<NodeId>>,
    now_ms: u64,
    config: LedgerConfig,
) -> Result<Vec<Entry>, StoreError> {
    let only = reporters;
    let registry = protocol::Registry::builtin();
    let mut entries = Vec::new();
    for schedule in topology.schedules() {
        if category.is_some_and(|c| *c != schedule.category) {
            continue;
        }
        let Some(schema) = registry.get(&schedule.category) else {
            continue;
        };
        let cadence = schema.cadence;
        // Covered districts are not among the reporters: their reporter owes it for them.
        let reporters = topology.reporters(schedule);
        for reporter in reporters {
            let allocation = schedule.allocation_of(reporter).map(Allocation::from);
            if !topology.is_within(reporter, me)
                || only.is_some_and(|only| !only.contains(&reporter))
            {
                continue;
            }
            let periods: Vec<Period> = match (cadence, period) {
                (Cadence::Daily, Period::Month { year, month }) => {
                    let (ny, nm) = next_month(year, month);
                    let days = days_from_civil(ny, nm, 1)
                        - days_from_civil(i64::from(year), u32::from(month), 1);
                    (1..=days as u8)
                        .map(|day| Period::Day { year, month, day })
                        .collect()
                }
                _ => vec![period],
            };
            for p in periods {
                let mut entry = judge(
                    store,
                    me,
                    reporter,
                    &schedule.category,
                    p,
                    cadence,
                    schedule.due_day,
                    now_ms,
                    config,
                )?;
                entry.allocation = allocation.clone();
                entries.push(entry);
            }
        }
    }
    entries.sort_by(|a, b| {
        (a.reporter, &a.category, &a.period).cmp(&(b.reporter, &b.category, &b.period))
    });
    Ok(entries)
}

#[allow(clippy::too_many_arguments)]
fn judge<K: Kv>(
    store: &Store<K>,
    me: NodeId,
    reporter: NodeId,
    category: &Category,
    period: Period,
    cadence: Cadence,
    due_day: u16,
    now_ms: u64,
    config: LedgerConfig,
) -> Result<Entry, StoreError> {
    let due = due_ms(period, cadence, due_day);
    let mut held = held_for(store, reporter, category, period)?;

    // Completeness against the latest manifest.
    let held_ids: BTreeSet<BatchId> = held.data.iter().map(|(id, _)| *id).collect();
    let (incomplete, named): (Vec<String>, Vec<BatchId>) = match held.manifests.last() {
        Some((_, _, manifest)) => {
            let (named, missing): (Vec<BatchId>, Vec<BatchId>) = manifest
                .batches
                .iter()
                .map(|e| e.batch)
                .partition(|id| held_ids.contains(id));
            (missing.iter().map(BatchId::to_hex).collect(), named)
        }
        None => (Vec::new(), held_ids.iter().copied().collect()),
    };
    let delivered = held.records(store, &named)?;
    let latest = held.manifests.last().map(|(_, _, m)| m);
    let first_manifest = held.manifests.first();
    let data_ids: BTreeMap<BatchId, &BatchMeta> = held.data.iter().map(|(i, m)| (*i, m)).collect();

    // Timeliness: the first filing (its first manifest and the data it named), or the data
    // alone when no manifest came (less the batches correcting or withdrawing from another
    // held one: a change made later is not a late filing); for event data, every event
    // against its own deadline.
    let mut arrived: Option<u64> = None;
    let mut late_ms: u64 = 0;
    let mut note = |at: Option<u64>, deadline: u64, arrived: &mut Option<u64>| {
        if let Some(at) = at {
            *arrived = Some(arrived.map_or(at, |a| a.max(at)));
            late_ms = late_ms.max(at.saturating_sub(deadline));
        }
    };
    match first_manifest {
        Some((id, meta, manifest)) => {
            note(arrival(store, me, id, meta)?, due, &mut arrived);
            for named in &manifest.batches {
                if let Some(meta) = data_ids.get(&named.batch) {
                    let deadline = if cadence == Cadence::Event {
                        due_ms(meta.period, cadence, due_day).min(due)
                    } else {
                        due
                    };
                    note(
                        arrival(store, me, &named.batch, meta)?,
                        deadline,
                        &mut arrived,
                    );
                }
            }
        }
        None => {
            for (id, meta) in held.data.iter().filter(|(id, _)| !held.corrects_held(id)) {
                let deadline = if cadence == Cadence::Event {
                    due_ms(meta.period, cadence, due_day).min(due)
                } else {
                    due
                };
                note(arrival(store, me, id, meta)?, deadline, &mut arrived);
            }
        }
    }
    let missing = arrived.is_none() && now_ms > due;
    let late_days = (late_ms > 0).then(|| late_ms.div_ceil(DAY_MS) as u32);

    // Concealment: less than declared, or a sharp drop below the reporter's usual count.
    let declared = latest.and_then(|m| m.declared);
    let mut concealment = declared
        .filter(|d| *d > delivered)
        .map(|d| format!("declared {d} records, delivered {delivered}"));
    if concealment.is_none() && arrived.is_some() && cadence == Cadence::Monthly {
        let mut counts = Vec::new();
        for p in previous_months(period, config.trailing_periods) {
            let mut before = held_for(store, reporter, category, p)?;
            let all = before.data_ids();
            let n = before.records(store, &all)?;
            if n > 0 {
                counts.push(n);
            }
        }
        if !counts.is_empty() {
            let average = counts.iter().sum::<u64>() as f64 / counts.len() as f64;
            if (delivered as f64) < average * config.drop_fraction {
                concealment = Some(format!(
                    "delivered {delivered} records, below {:.0}% of the average {average:.0} of the previous {} period(s)",
                    config.drop_fraction * 100.0,
                    counts.len()
                ));
            }
        }
    }

    let state = if missing {
        State::Missing
    } else if arrived.is_none() {
        State::Pending
    } else if !incomplete.is_empty() {
        State::Incomplete
    } else if concealment.is_some() {
        State::ConcealmentSuspected
    } else if late_days.is_some() {
        State::Late
    } else {
        State::OnTime
    };
    Ok(Entry {
        reporter,
        category: category.to_string(),
        period: period.to_string(),
        due_ms: due,
        arrived_ms: arrived,
        state,
        late_days,
        missing,
        incomplete,
        concealment,
        manifest_revision: latest.map(|m| m.revision),
        nil: latest.is_some_and(Manifest::is_nil),
        records_delivered: delivered,
        records_declared: declared,
        allocation: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_days_match_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2026, 12, 2), 20_789);
    }

    #[test]
    fn deadlines_end_at_midnight_china_time() {
        // March 2026 water fees, due on the 10th of April: until 2026-04-11 00:00 CST,
        // which is 2026-04-10 16:00 UTC.
        let due = due_ms(Period::parse("2026-03").unwrap(), Cadence::Monthly, 10);
        assert_eq!(due, 1_775_836_800_000);
        // December rolls into the next year.
        let due = due_ms(Period::parse("2026-12").unwrap(), Cadence::Monthly, 1);
        assert_eq!(
            due,
            cst_midnight_ms(days_from_civil(2027, 1, 2)),
            "due at the end of 2027-01-01"
        );
        // An event on 2026-03-05 with 7 days to report: until the end of 2026-03-12.
        let due = due_ms(Period::parse("2026-03-05").unwrap(), Cadence::Event, 7);
        assert_eq!(due, cst_midnight_ms(days_from_civil(2026, 3, 13)));
    }

    #[test]
    fn rates_count_over_expected_reports() {
        let mut rates = Rates::default();
        let entry = |state, late: Option<u32>, missing, concealment: Option<&str>| Entry {
            reporter: NodeId::parse("445281").unwrap(),
            category: "water_fee".into(),
            period: "2026-03".into(),
            due_ms: 0,
            arrived_ms: None,
            state,
            late_days: late,
            missing,
            incomplete: Vec::new(),
            concealment: concealment.map(str::to_owned),
            manifest_revision: None,
            nil: false,
            records_delivered: 10,
            records_declared: concealment.map(|_| 20),
            allocation: None,
        };
        rates.add(&entry(State::OnTime, None, false, None));
        rates.add(&entry(State::Late, Some(2), false, None));
        rates.add(&entry(State::Missing, None, true, None));
        rates.add(&entry(
            State::ConcealmentSuspected,
            Some(1),
            false,
            Some("short"),
        ));
        rates.add(&entry(State::Pending, None, false, None));
        assert_eq!(rates.expected, 4, "pending reports are not yet expected");
        assert_eq!(rates.late_rate(), 0.5, "late counts every late report");
        assert_eq!(rates.missing_rate(), 0.25);
        assert_eq!(rates.concealment_rate(), 0.25);
        assert_eq!(rates.completeness(), 0.5);
    }
}
