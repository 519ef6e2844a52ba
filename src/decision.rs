//! What the rules decided for a trace, why it was decided when it was, and the cache of past
//! decisions that late spans follow.

use std::sync::Arc;
use std::time::Duration;

use crate::otlp::TraceId;

/// The outcome of the rules for one trace. The rule name travels with it: it feeds the
/// metrics, the output headers and the late spans that follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Forward the trace; it stands for `sample_rate` traces like it (1 in N kept).
    Keep { rule: Arc<str>, sample_rate: u32 },
    /// Do not forward.
    Drop { rule: Arc<str> },
}

impl Decision {
    pub fn rule(&self) -> &str {
        match self {
            Decision::Keep { rule, .. } | Decision::Drop { rule } => rule,
        }
    }

    pub fn is_keep(&self) -> bool {
        matches!(self, Decision::Keep { .. })
    }

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
    /// Decided early because its partition left this instance while it also held spans of
    /// a partition that stayed.
    Rebalance,
}

impl Trigger {
    /// Every trigger, for registering each metric series at start.
    pub const ALL: &'static [Trigger] = &[
        Trigger::Idle,
        Trigger::Root,
        Trigger::SpanLimit,
        Trigger::MaxAge,
        Trigger::Rebalance,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Idle => "idle",
            Trigger::Root => "root",
            Trigger::SpanLimit => "span_limit",
            Trigger::MaxAge => "max_age",
            Trigger::Rebalance => "rebalance",
        }
    }
}

/// Recent decisions by trace id, so that a span arriving after its trace was decided gets the
/// same outcome. Bounded in entries and in time.
#[derive(Clone)]
pub struct DecisionCache {
    cache: moka::sync::Cache<TraceId, Decision>,
}

impl DecisionCache {
    pub fn new(max_entries: u64, ttl: Duration) -> Self {
        DecisionCache {
            cache: moka::sync::Cache::builder()
                .max_capacity(max_entries)
                .time_to_live(ttl)
                .build(),
        }
    }

    pub fn get(&self, id: &TraceId) -> Option<Decision> {
        self.cache.get(id)
    }

    pub fn insert(&self, id: TraceId, decision: Decision) {
        self.cache.insert(id, decision);
    }
}
