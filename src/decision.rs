//! What the rules decided for a trace, why it was decided when it was, and the cache of past
//! decisions that late spans follow.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use moka::notification::RemovalCause;

use crate::otlp::TraceId;

/// The outcome of the rules for one trace. The rule name travels with it: it feeds the
/// metrics, the output headers and the late spans that follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Forward the trace; it stands for `sample_rate` traces like it (1 in N kept).
    Keep { rule: Arc<str>, sample_rate: u32 },
    /// Do not forward.
    Drop { rule: Arc<str> },
    /// Shadow mode: forward the trace whatever the rules said; `keep` and `sample_rate` are
    /// what they said (counted and marked as such).
    Shadow {
        rule: Arc<str>,
        keep: bool,
        sample_rate: u32,
    },
}

impl Decision {
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
    /// Decided early, oldest first, because the buffer reached its memory budget.
    Memory,
    /// Decided at once because stress relief began (the buffer empties in degraded mode).
    Stress,
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
        Trigger::ByteLimit,
        Trigger::MaxAge,
        Trigger::Memory,
        Trigger::Stress,
        Trigger::Rebalance,
    ];

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
        }
    }
}

/// Bytes one remembered decision is counted at: its key and value, plus moka's per-entry
/// bookkeeping (the entry's `Arc`s, access-order and write-order deque nodes, the hash table
/// slot). Measured with `cargo bench --bench memory` (see the README's memory model).
pub const CACHE_ENTRY_BYTES: u64 = 368;

/// Lookups and evictions of the decision cache, counted with relaxed atomics on the hot path
/// and published in bulk (see [`DecisionCache::counts`]).
#[derive(Debug, Default)]
struct CacheCounts {
    hits: AtomicU64,
    misses: AtomicU64,
    evicted_size: AtomicU64,
    evicted_expired: AtomicU64,
}

/// A snapshot of the decision cache's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    /// Pushed out to stay within the byte bound.
    pub evicted_size: u64,
    /// Older than the ttl.
    pub evicted_expired: u64,
    pub entries: u64,
    /// Bytes counted against the bound.
    pub bytes: u64,
}

/// Recent decisions by trace id, so that a span arriving after its trace was decided gets the
/// same outcome. Bounded in bytes (every entry weighs [`CACHE_ENTRY_BYTES`]) and in time.
#[derive(Clone)]
pub struct DecisionCache {
    cache: moka::sync::Cache<TraceId, Decision>,
    counts: Arc<CacheCounts>,
}

impl DecisionCache {
    /// A cache of at most `max_entries` decisions (`max_entries * CACHE_ENTRY_BYTES` bytes).
    pub fn new(max_entries: u64, ttl: Duration) -> Self {
        Self::with_max_bytes(max_entries.saturating_mul(CACHE_ENTRY_BYTES), ttl)
    }

    /// A cache whose entries weigh at most `max_bytes` in all.
    pub fn with_max_bytes(max_bytes: u64, ttl: Duration) -> Self {
        let counts = Arc::new(CacheCounts::default());
        let listener = counts.clone();
        DecisionCache {
            cache: moka::sync::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|_, _| CACHE_ENTRY_BYTES as u32)
                .time_to_live(ttl)
                .eviction_listener(move |_, _, cause| {
                    let c = match cause {
                        RemovalCause::Size => &listener.evicted_size,
                        RemovalCause::Expired => &listener.evicted_expired,
                        RemovalCause::Explicit | RemovalCause::Replaced => return,
                    };
                    c.fetch_add(1, Ordering::Relaxed);
                })
                .build(),
            counts,
        }
    }

    pub fn get(&self, id: &TraceId) -> Option<Decision> {
        let d = self.cache.get(id);
        let c = if d.is_some() {
            &self.counts.hits
        } else {
            &self.counts.misses
        };
        c.fetch_add(1, Ordering::Relaxed);
        d
    }

    pub fn insert(&self, id: TraceId, decision: Decision) {
        self.cache.insert(id, decision);
    }

    /// Counters and sizes so far. Runs pending maintenance first, so that evictions are
    /// counted and sizes are current.
    pub fn stats(&self) -> CacheStats {
        self.cache.run_pending_tasks();
        let c = &self.counts;
        CacheStats {
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            evicted_size: c.evicted_size.load(Ordering::Relaxed),
            evicted_expired: c.evicted_expired.load(Ordering::Relaxed),
            entries: self.cache.entry_count(),
            bytes: self.cache.weighted_size(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> TraceId {
        TraceId(crate::otlp::build::trace_id(n))
    }

    #[test]
    fn the_cache_stays_within_its_bytes_and_counts_hits_misses_and_evictions() {
        let cache = DecisionCache::with_max_bytes(100 * CACHE_ENTRY_BYTES, Duration::from_secs(60));
        let drop = Decision::Drop { rule: "r".into() };
        for n in 0..1000 {
            cache.insert(id(n), drop.clone());
        }
        let s = cache.stats();
        assert!(s.bytes <= 100 * CACHE_ENTRY_BYTES, "{s:?}");
        assert!(s.entries <= 100, "{s:?}");
        assert_eq!(s.evicted_size, 1000 - s.entries, "{s:?}");
        let found = (0..1000).filter(|n| cache.get(&id(*n)).is_some()).count() as u64;
        let s = cache.stats();
        assert_eq!((s.hits, s.misses), (found, 1000 - found));
        assert_eq!(found, s.entries);
    }
}
