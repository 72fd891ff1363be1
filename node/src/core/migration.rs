//! "Establish before dismantling" (先立后破): how a node with a legacy direct link to the
//! national platform moves onto its place in the hierarchy, as a pure state machine the
//! runtime feeds with what it observes.
//!
//! Phases (DESIGN.md): **establish** — the new path is configured and the node sends over both
//! paths (the national node keeps one copy per batch id); **verify** — the new path is up, and
//! the receipts that came back through it cover every batch the legacy link delivered, for a
//! whole `verify_window`; **cut over** — new batches go only by the new path, the legacy link
//! stays open and idle for `rollback_window`; **dismantled** — the legacy link is closed.
//!
//! Invariant: a node is never without a path it can send on. The new path failing during
//! verify or cut-over sends the node back to *establish*, where the legacy link carries every
//! batch again; only a new path that stayed up through the whole rollback window dismantles
//! the legacy link.

use std::fmt;

/// Where a migrating node stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum Phase {
    /// The legacy link alone (no migration asked for).
    Direct,
    Establish,
    Verify,
    CutOver,
    Dismantled,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Direct => "direct",
            Phase::Establish => "establish",
            Phase::Verify => "verify",
            Phase::CutOver => "cut-over",
            Phase::Dismantled => "dismantled",
        })
    }
}

/// What the runtime observes, each time it asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// The topology asks this node to migrate, and names its new parent.
    pub migrate: bool,
    /// Since when the uplink to the new parent has been up, if it is.
    pub new_path_up_since_ms: Option<u64>,
    /// Batches the legacy link delivered (national receipts held).
    pub delivered: u64,
    /// Of those, how many the national platform also acknowledged through the new path.
    pub covered: u64,
    pub verify_window_ms: u64,
    pub rollback_window_ms: u64,
    pub now_ms: u64,
}

/// Which links carry what, in a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routes {
    /// New batches are queued for the legacy link.
    pub legacy_sends: bool,
    /// The legacy link is kept connected.
    pub legacy_open: bool,
    /// New batches are queued for the new parent.
    pub parent_sends: bool,
}

/// A phase change and why it happened, for the log and the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: Phase,
    pub to: Phase,
    pub reason: String,
    /// The new path failed and the node went back to the legacy link.
    pub fallback: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    pub phase: Phase,
    pub since_ms: u64,
}

impl Migration {
    pub fn new(phase: Phase, now_ms: u64) -> Migration {
        Migration {
            phase,
            since_ms: now_ms,
        }
    }

    pub fn routes(&self) -> Routes {
        match self.phase {
            Phase::Direct => Routes {
                legacy_sends: true,
                legacy_open: true,
                parent_sends: false,
            },
            Phase::Establish | Phase::Verify => Routes {
                legacy_sends: true,
                legacy_open: true,
                parent_sends: true,
            },
            Phase::CutOver => Routes {
                legacy_sends: false,
                legacy_open: true,
                parent_sends: true,
            },
            Phase::Dismantled => Routes {
                legacy_sends: false,
                legacy_open: false,
                parent_sends: true,
            },
        }
    }

    fn go(&mut self, to: Phase, now_ms: u64, reason: String, fallback: bool) -> Option<Transition> {
        let from = self.phase;
        self.phase = to;
        self.since_ms = now_ms;
        Some(Transition {
            from,
            to,
            reason,
            fallback,
        })
    }

    /// Advances at most one phase from what is observed now.
    pub fn step(&mut self, o: &Observed) -> Option<Transition> {
        let in_phase_ms = o.now_ms.saturating_sub(self.since_ms);
        match self.phase {
            Phase::Direct if o.migrate => self.go(Phase::Establish, o.now_ms, "the topology asks to migrate: sending on both paths".into(), false),
            Phase::Direct | Phase::Dismantled => None,
            Phase::Establish | Phase::Verify | Phase::CutOver if !o.migrate => {
                self.go(Phase::Direct, o.now_ms, "migration withdrawn from the topology: back on the legacy link alone".into(), true)
            }
            Phase::Establish => match o.new_path_up_since_ms {
                Some(_) => self.go(Phase::Verify, o.now_ms, "the new path is up: verifying it delivers what the legacy link delivered".into(), false),
                None => None,
            },
            Phase::Verify => match o.new_path_up_since_ms {
                None => self.go(Phase::Establish, o.now_ms, "the new path failed during verify: the legacy link carries every batch".into(), true),
                Some(up_since) => {
                    let healthy_ms = o.now_ms.saturating_sub(up_since.max(self.since_ms));
                    if o.covered < o.delivered || healthy_ms < o.verify_window_ms {
                        return None;
                    }
                    self.go(
                        Phase::CutOver,
                        o.now_ms,
                        format!("the new path covered all {} batches the legacy link delivered and stayed up {} s: new batches go only by the new path", o.delivered, healthy_ms / 1000),
                        false,
                    )
                }
            },
            Phase::CutOver => match o.new_path_up_since_ms {
                None => self.go(Phase::Establish, o.now_ms, "the new path failed within the rollback window: back on the legacy link".into(), true),
                Some(_) if in_phase_ms >= o.rollback_window_ms => {
                    self.go(Phase::Dismantled, o.now_ms, "the rollback window passed with the new path up: legacy link closed, migration complete".into(), false)
                }
                Some(_) => None,
            },
        }
    }

    /// What the current phase waits for, in words for `topology status`.
    pub fn waiting_for(&self, o: &Observed) -> String {
        match self.phase {
            Phase::Direct if o.migrate => "starting".into(),
            Phase::Direct => "nothing: no migration in the topology".into(),
            Phase::Establish => "the new path to come up".into(),
            Phase::Verify => {
                let healthy_ms = o
                    .new_path_up_since_ms
                    .map_or(0, |up| o.now_ms.saturating_sub(up.max(self.since_ms)));
                format!(
                    "coverage {}/{} batches through the new path; healthy {} of {} s",
                    o.covered,
                    o.delivered,
                    healthy_ms / 1000,
                    o.verify_window_ms / 1000
                )
            }
            Phase::CutOver => format!(
                "rollback window: {} of {} s with the new path up",
                o.now_ms.saturating_sub(self.since_ms) / 1000,
                o.rollback_window_ms / 1000
            ),
            Phase::Dismantled => "nothing: migration complete".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(now_ms: u64, up_since: Option<u64>, delivered: u64, covered: u64) -> Observed {
        Observed {
            migrate: true,
            new_path_up_since_ms: up_since,
            delivered,
            covered,
            verify_window_ms: 10_000,
            rollback_window_ms: 20_000,
            now_ms,
        }
    }

    #[test]
    fn the_four_phases_in_order() {
        let mut m = Migration::new(Phase::Direct, 0);
        assert_eq!(
            m.step(&observed(0, None, 5, 0)).unwrap().to,
            Phase::Establish
        );
        assert!(m.routes().legacy_sends && m.routes().parent_sends);
        assert_eq!(
            m.step(&observed(1_000, None, 5, 0)),
            None,
            "waits for the new path"
        );
        assert_eq!(
            m.step(&observed(2_000, Some(1_500), 5, 0)).unwrap().to,
            Phase::Verify
        );
        assert_eq!(
            m.step(&observed(20_000, Some(1_500), 5, 4)),
            None,
            "not yet covered"
        );
        assert_eq!(
            m.step(&observed(5_000, Some(1_500), 5, 5)),
            None,
            "covered but not healthy long enough"
        );
        let cut = m.step(&observed(12_000, Some(1_500), 5, 5)).unwrap();
        assert_eq!(cut.to, Phase::CutOver);
        assert_eq!(
            m.routes(),
            Routes {
                legacy_sends: false,
                legacy_open: true,
                parent_sends: true
            }
        );
        assert_eq!(
            m.step(&observed(31_000, Some(1_500), 6, 6)),
            None,
            "rollback window not over"
        );
        assert_eq!(
            m.step(&observed(32_000, Some(1_500), 6, 6)).unwrap().to,
            Phase::Dismantled
        );
        assert!(!m.routes().legacy_open);
        assert_eq!(
            m.step(&observed(99_000, None, 6, 6)),
            None,
            "dismantled is final"
        );
    }

    #[test]
    fn a_failing_new_path_falls_back_to_the_legacy_link() {
        let mut m = Migration::new(Phase::Verify, 0);
        let back = m.step(&observed(1_000, None, 3, 3)).unwrap();
        assert_eq!((back.to, back.fallback), (Phase::Establish, true));
        assert!(m.routes().legacy_sends);
        let mut m = Migration::new(Phase::CutOver, 0);
        let back = m.step(&observed(5_000, None, 3, 3)).unwrap();
        assert_eq!((back.to, back.fallback), (Phase::Establish, true));
        assert!(
            m.routes().legacy_sends,
            "batches go by the legacy link again"
        );
    }

    #[test]
    fn the_health_window_restarts_after_a_reconnect() {
        let mut m = Migration::new(Phase::Verify, 0);
        // Up since 9 s into verify: at 12 s only 3 s healthy.
        assert_eq!(m.step(&observed(12_000, Some(9_000), 1, 1)), None);
        assert_eq!(
            m.step(&observed(19_000, Some(9_000), 1, 1)).unwrap().to,
            Phase::CutOver
        );
    }

    #[test]
    fn withdrawing_the_migration_returns_to_direct() {
        let mut m = Migration::new(Phase::Verify, 0);
        let mut o = observed(1_000, Some(0), 0, 0);
        o.migrate = false;
        assert_eq!(m.step(&o).unwrap().to, Phase::Direct);
    }
}
