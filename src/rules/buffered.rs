//! The rule set and the buffer: the probes the set hands the buffer to run on each arriving
//! span, and deciding a buffered trace from what they saw, when it completes or, for an
//! `early` rule, as soon as the decision is settled.

use tokio::time::Instant;

use super::{Buffered, Outcome, Phase, Probes, RuleSet, TraceView};
use crate::buffer::TraceEntry;
use crate::decision::Decision;
use crate::otlp::TraceId;

impl RuleSet {
    /// Decides a buffered trace at `now` from what its spans showed the probes as they
    /// arrived; a trace buffered under other rules (a reload since) is walked in full. The
    /// result is the same either way (`seen_tests.rs` holds both to it).
    pub fn decide_buffered(&self, id: TraceId, entry: &TraceEntry, now: Instant) -> Decision {
        if self.probes.current(&entry.seen) {
            self.decide_at(&Buffered::new(id, entry), now)
        } else {
            self.decide_at(&TraceView::new(id, entry), now)
        }
    }

    /// The probes the buffer runs on each arriving span for this set.
    pub fn probes(&self) -> &Probes {
        &self.probes
    }

    /// Whether an `early` rule can decide the buffered trace now: the first rule (active at
    /// `now`) whose conditions are not settled not to hold is settled to hold and is early,
    /// and every factor rule before it is settled. Always false for a trace seen under other
    /// rules.
    pub fn decides_early(&self, id: TraceId, entry: &TraceEntry, now: Instant) -> bool {
        if !self.early || !self.probes.current(&entry.seen) {
            return false;
        }
        let t = Buffered::new(id, entry);
        for rule in &self.rules {
            if rule
                .active
                .is_some_and(|a| a.phase(self.clock.wall(now)) != Phase::Active)
            {
                continue;
            }
            let (holds, settled) = rule
                .condition
                .as_ref()
                .map_or((true, true), |c| t.settle(c));
            if !settled {
                return false;
            }
            if holds && !matches!(rule.outcome, Outcome::Factor { .. }) {
                return rule.early;
            }
        }
        false
    }

    /// Whether some rule of the set is `early`.
    pub fn has_early(&self) -> bool {
        self.early
    }

    /// Whether [`RuleSet::decides_early`] can change its answer for a trace only when the
    /// trace's [`TraceEntry::early_state`] changes.
    pub fn early_steady(&self) -> bool {
        self.early_steady
    }
}
