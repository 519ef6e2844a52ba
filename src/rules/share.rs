//! This instance's share of the fleet's budgets.
//!
//! `rate_limit`, `max_traces_per_second` and `throughput` targets are written for the whole
//! fleet. Traces are spread over the input partitions by trace id, so an instance owning
//! `owned` of `total` partitions sees about `owned / total` of the traffic and takes that
//! share of each budget: the fleet's total stays what the rule says whatever its size.
//!
//! The share is a handle in [`RuleOptions`](super::RuleOptions), cloned into every rule set
//! the options build, reloads included: setting it once (on each rebalance) reaches the rules
//! in use and every later reload. Until it is set, an instance takes the whole budget (a
//! single instance owning every partition).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A shared, settable fraction in [0, 1] (one atomic load to read).
#[derive(Debug, Clone)]
pub struct Share(Arc<AtomicU64>);

impl Default for Share {
    /// The whole budget.
    fn default() -> Self {
        Share(Arc::new(AtomicU64::new(1.0f64.to_bits())))
    }
}

impl Share {
    /// Sets the share to `owned` of `total` input partitions. An instance that owns none (a
    /// standby, or between a revoke and an assign) keeps nothing by budget; a `total` of 0
    /// (the topic's size is not known) gives the whole budget.
    pub fn set(&self, owned: usize, total: usize) {
        let f = if total == 0 {
            1.0
        } else {
            (owned as f64 / total as f64).min(1.0)
        };
        self.0.store(f.to_bits(), Ordering::Relaxed);
    }

    /// The fraction of the fleet's budgets this instance takes.
    #[inline]
    pub fn fraction(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}
