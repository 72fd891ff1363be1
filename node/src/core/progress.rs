//! Progress reports (工作通报): what a provincial node makes and signs for a period, the rule
//! that only a province originates one, and the reports a node holds.
//!
//! A report lists every local platform of the province (each city and county node of the
//! topology with the province's two leading digits): its path (through the hierarchy, or a
//! legacy direct link with the phase the province can see), whether it is connected (the
//! province holds something it originated, or a live link to it), and per category the counts
//! of the timeliness ledger ([`super::ledger`]) for the period; then the operators' figures.
//! It is submitted like a batch ([`Core::submit`]): durable before it is confirmed, queued for
//! the national platform, verified at every hop.

use std::collections::BTreeMap;

use protocol::progress::{
    CategoryProgress, LegacyPhase, LocalPlatform, PlatformPath, PlatformRole,
};
use protocol::sync::Rejection;
use protocol::{
    BatchId, Category, Content, ContentKind, NodeId, OperatorFigures, Period, ProgressReport,
};
use topology::{Role, Topology};
use tracing::info;

use super::ledger::Rates;
use super::{Core, CoreError, Now, Submitted};
use crate::store::{Kv, Store, StoreError};

/// A progress report a node holds, with when the national platform received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldProgress {
    pub id: BatchId,
    pub report: ProgressReport,
    /// The time in the national platform's signed receipt, if this node holds it.
    pub national_receipt_ms: Option<u64>,
}

/// Refuses a progress report whose origin is not a province in `topology` (checked where one
/// is made and at every node that receives one).
pub(super) fn check_origin(topology: &Topology, content: &Content) -> Result<(), Rejection> {
    if let Content::Progress(report) = content
        && topology
            .node(report.origin)
            .is_none_or(|n| n.role != Role::Province)
    {
        return Err(Rejection::NotProvince(report.origin));
    }
    Ok(())
}

fn counts(rates: &Rates, category: Category) -> CategoryProgress {
    let small = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    CategoryProgress {
        category,
        expected: small(rates.expected),
        on_time: small(rates.on_time),
        late: small(rates.late),
        missing: small(rates.missing),
        incomplete: small(rates.incomplete),
        concealed: small(rates.concealed),
        pending: small(rates.pending),
        records_delivered: rates.records_delivered,
        records_declared: rates.records_declared,
        records_delivered_of_declared: rates.records_delivered_of_declared,
    }
}

impl<K: Kv> Core<K> {
    /// Makes, signs and submits this province's progress report for `period` with the
    /// operators' `figures`; a period reported before gets the next revision. Returns the
    /// report's id and when it is durable. Refused at any node that is not a province.
    pub fn progress_report(
        &mut self,
        period: Period,
        figures: OperatorFigures,
        now: Now,
    ) -> Result<(BatchId, Submitted), CoreError> {
        let me = self
            .topology
            .node(self.me)
            .expect("the topology names this node");
        if me.role != Role::Province {
            return Err(CoreError::NotProvince {
                node: self.me,
                role: me.role.to_string(),
            });
        }
        let platforms = self.local_platforms(period, now)?;
        let revision = held_of_kind(&self.store, self.me, Some(period))?
            .iter()
            .map(|h| h.report.revision)
            .max()
            .unwrap_or(0)
            + 1;
        let report =
            ProgressReport::new(self.me, period, revision, platforms, figures, now.wall_ms)
                .map_err(CoreError::Progress)?;
        let signed = report.seal_with(&*self.signer);
        let id = signed.id;
        info!(report = %id.short(), %period, revision, platforms = report.platforms.len(), "progress report made");
        let submitted = self.submit(signed, now)?;
        Ok((id, submitted))
    }

    /// Every city and county of this province, with its path, connection and progress.
    fn local_platforms(&self, period: Period, now: Now) -> Result<Vec<LocalPlatform>, StoreError> {
        let mut progress: BTreeMap<NodeId, BTreeMap<String, Rates>> = BTreeMap::new();
        for entry in self.ledger(period, None, now)? {
            progress
                .entry(entry.reporter)
                .or_default()
                .entry(entry.category.clone())
                .or_default()
                .add(&entry);
        }
        let province = self.me.code() / 10_000;
        let mut platforms = Vec::new();
        for node in self.topology.nodes() {
            let role = match node.role {
                Role::City => PlatformRole::City,
                Role::County => PlatformRole::County,
                Role::Province | Role::National => continue,
            };
            if node.id.code() / 10_000 != province {
                continue;
            }
            let chain = self.topology.path_to_national(node.id);
            let legacy = chain
                .iter()
                .take_while(|n| **n != self.me)
                .find_map(|n| self.topology.legacy_link(*n).map(|link| (*n, link.migrate)));
            let path = match legacy {
                None => PlatformPath::Hierarchy,
                Some((via, false)) => PlatformPath::Legacy {
                    via,
                    phase: LegacyPhase::Direct,
                },
                Some((via, true)) => PlatformPath::Legacy {
                    via,
                    phase: if self.holds_from(via)? {
                        LegacyPhase::NewPathCarrying
                    } else {
                        LegacyPhase::Establishing
                    },
                },
            };
            let link_up = self
                .links
                .get(&(node.id, "down"))
                .is_some_and(|l| l.connected);
            let categories = progress
                .remove(&node.id)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(category, rates)| {
                    Category::parse(&category)
                        .ok()
                        .map(|category| counts(&rates, category))
                })
                .collect();
            platforms.push(LocalPlatform {
                node: node.id,
                name: node.name.clone(),
                role,
                parent: node.parent,
                path,
                connected: link_up || self.holds_from(node.id)?,
                categories,
            });
        }
        Ok(platforms)
    }

    /// Whether this node holds anything `origin` originated.
    fn holds_from(&self, origin: NodeId) -> Result<bool, StoreError> {
        Ok(self.store.held_of(origin).next().transpose()?.is_some())
    }

    /// The progress reports this node holds (at the national platform every province's; at
    /// a province its own), the newest revision per (province, period), optionally of one
    /// period; ordered by province, then period.
    pub fn progress_reports(
        &self,
        period: Option<Period>,
    ) -> Result<Vec<HeldProgress>, StoreError> {
        let mut origins: Vec<NodeId> = self
            .topology
            .nodes()
            .filter(|n| n.role == Role::Province)
            .map(|n| n.id)
            .collect();
        origins.sort();
        let mut newest: BTreeMap<(NodeId, Period), HeldProgress> = BTreeMap::new();
        for origin in origins {
            for held in held_of_kind(&self.store, origin, period)? {
                let key = (held.report.origin, held.report.period);
                if newest
                    .get(&key)
                    .is_none_or(|h| h.report.revision < held.report.revision)
                {
                    newest.insert(key, held);
                }
            }
        }
        Ok(newest.into_values().collect())
    }
}

/// The progress reports `origin` originated that `store` holds, optionally of one period.
/// Bytes that do not decode are skipped (they were verified when stored; the store re-hashes
/// on read).
fn held_of_kind<K: Kv>(
    store: &Store<K>,
    origin: NodeId,
    period: Option<Period>,
) -> Result<Vec<HeldProgress>, StoreError> {
    let mut out = Vec::new();
    for entry in store.held_of(origin) {
        let (id, meta) = entry?;
        if meta.kind != ContentKind::Progress || period.is_some_and(|p| p != meta.period) {
            continue;
        }
        let Some(signed) = store.batch(&id)? else {
            continue;
        };
        let Ok(Content::Progress(report)) = Content::decode(&signed.bytes) else {
            continue;
        };
        let national_receipt_ms = store
            .receipt(&id, NodeId::NATIONAL)?
            .map(|r| r.receipt.received_at_ms);
        out.push(HeldProgress {
            id,
            report,
            national_receipt_ms,
        });
    }
    Ok(out)
}
