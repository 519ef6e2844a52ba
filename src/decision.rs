//! What the rules decided for a trace, why it was decided when it was, and the cache of past
//! decisions that late spans follow.

use std::sync::Arc;

use crate::otlp::mark::Mark;

mod cache;
pub mod record;

pub use cache::{unix_ms, CacheStats, DecisionCache, Logged, Remembered, CACHE_ENTRY_BYTES};

/// The outcome of the rules for one trace. The rule name travels with it: it feeds the
/// metrics, the output headers and the late spans that follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Forward the trace; it stands for `sample_rate` traces like it (1 in N kept).
    Keep {
        /// The rule that kept it.
        rule: Arc<str>,
        /// N of 1-in-N.
        sample_rate: u32,
    },
    /// Do not forward.
    Drop {
        /// The rule that dropped it.
        rule: Arc<str>,
    },
    /// Shadow mode: forward the trace whatever the rules said; `keep` and `sample_rate` are
    /// what they said (counted and marked as such).
    Shadow {
        /// The rule that decided.
        rule: Arc<str>,
        /// Whether the rules kept it.
        keep: bool,
        /// The rules' N of 1-in-N.
        sample_rate: u32,
    },
}

impl Decision {
    /// The name of the rule that decided.
    pub fn rule(&self) -> &str {
        match self {
            Decision::Keep { rule, .. }
            | Decision::Drop { rule }
            | Decision::Shadow { rule, .. } => rule,
        }
    }

    /// The rule's name, shared.
    pub fn rule_arc(&self) -> &Arc<str> {
        match self {
            Decision::Keep { rule, .. }
            | Decision::Drop { rule }
            | Decision::Shadow { rule, .. } => rule,
        }
    }

    /// Whether the rules kept the trace (in shadow mode: whether they would have).
    pub fn is_keep(&self) -> bool {
        matches!(
            self,
            Decision::Keep { .. } | Decision::Shadow { keep: true, .. }
        )
    }

    /// Whether the trace is forwarded: kept, or decided in shadow mode.
    pub fn forwards(&self) -> bool {
        matches!(self, Decision::Keep { .. } | Decision::Shadow { .. })
    }

    /// The sample rate the output carries: the kept rate, or 1 for a shadow decision (every
    /// trace is forwarded, so each stands for itself).
    pub fn forwarded_rate(&self) -> u32 {
        match self {
            Decision::Keep { sample_rate, .. } => *sample_rate,
            _ => 1,
        }
    }

    /// What a forwarded trace is marked with: the rule, the sample rate, and in shadow mode
    /// the rules' verdict. `None` for a dropped trace (nothing forwarded, nothing marked).
    pub fn mark(&self) -> Option<Mark<'_>> {
        match self {
            Decision::Keep { rule, sample_rate } => Some(Mark {
                rule,
                sample_rate: *sample_rate,
                shadow: None,
            }),
            Decision::Shadow {
                rule,
                keep,
                sample_rate,
            } => Some(Mark {
                rule,
                sample_rate: *sample_rate,
                shadow: Some(*keep),
            }),
            Decision::Drop { .. } => None,
        }
    }

    /// The outcome label of the metrics: `kept` or `dropped` (what the rules said).
    pub fn outcome(&self) -> &'static str {
        if self.is_keep() {
            "kept"
        } else {
            "dropped"
        }
    }
}

/// What made a trace complete. Each is counted by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// `decision_wait` passed since the trace's last span.
    Idle,
    /// `root_grace` passed since the root span arrived.
    Root,
    /// The trace reached `max_spans_per_trace`.
    SpanLimit,
    /// `max_trace_age` passed since the trace's first span.
    MaxAge,
    /// The trace's buffered bytes reached `max_trace_bytes`.
    ByteLimit,
    /// Decided early because the buffer reached its memory budget: traces with their root
    /// first, oldest first (see `Buffer::oldest`).
    Memory,
    /// Decided at once because stress relief began (the buffer empties in degraded mode).
    Stress,
    /// Decided early because its partition left this instance while it also held spans of
    /// a partition that stayed.
    Rebalance,
    /// Decided as its spans arrived, by an `early` rule sure of the outcome.
    Early,
}

impl Trigger {
    /// Every trigger, for registering each metric series at start.
    pub const ALL: &'static [Trigger] = &[
        Trigger::Idle,
        Trigger::Root,
        Trigger::SpanLimit,
        Trigger::ByteLimit,
        Trigger::MaxAge,
        Trigger::Memory,
        Trigger::Stress,
        Trigger::Rebalance,
        Trigger::Early,
    ];

    /// The trigger label of the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Idle => "idle",
            Trigger::Root => "root",
            Trigger::SpanLimit => "span_limit",
            Trigger::MaxAge => "max_age",
            Trigger::ByteLimit => "byte_limit",
            Trigger::Memory => "memory",
            Trigger::Stress => "stress",
            Trigger::Rebalance => "rebalance",
            Trigger::Early => "early",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_decisions_are_marked_with_their_rule_and_rate_and_dropped_ones_not() {
        let keep = Decision::Keep {
            rule: "slow".into(),
            sample_rate: 10,
        };
        let shadow = Decision::Shadow {
            rule: "baseline".into(),
            keep: false,
            sample_rate: 4,
        };
        let drop = Decision::Drop { rule: "x".into() };
        let cases: [(&Decision, Option<Mark<'_>>); 3] = [
            (
                &keep,
                Some(Mark {
                    rule: "slow",
                    sample_rate: 10,
                    shadow: None,
                }),
            ),
            (
                &shadow,
                Some(Mark {
                    rule: "baseline",
                    sample_rate: 4,
                    shadow: Some(false),
                }),
            ),
            (&drop, None),
        ];
        for (decision, want) in cases {
            assert_eq!(decision.mark(), want, "{decision:?}");
        }
    }
}
