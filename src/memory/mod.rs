//! The memory budget: how many bytes the trace buffer may hold, where that number comes from
//! when the operator does not set it, and the watermarks that pause and resume fetching.
//!
//! The budget counts buffered span bytes plus a fixed per-trace overhead
//! ([`crate::buffer::TRACE_OVERHEAD`]). Above the high watermark every assigned partition is
//! paused (Kafka holds the backlog); below the low watermark fetching resumes. If the buffer
//! still reaches the budget itself (a burst fetched before the pause took effect), the deciders
//! decide the oldest traces early, with trigger `memory`, until it is back under the high
//! watermark. Nothing is ever dropped undecided.

use std::path::Path;

/// Fraction of the container's memory limit given to the trace buffer when `buffer.max_bytes`
/// is unset. The rest covers what the budget does not count: the allocator's slack on top of
/// the counted bytes, librdkafka's fetch and produce queues, the decision cache, the runtime.
pub const CONTAINER_FRACTION: f64 = 0.5;

/// The budget when `buffer.max_bytes` is unset and no container limit is found.
pub const FALLBACK_BUDGET: u64 = 512 << 20;

/// cgroup memory limits at or above this mean "no limit" (cgroup v1 reports unlimited as a
/// page-rounded `i64::MAX`).
const UNLIMITED: u64 = 1 << 50;

/// Where the budget came from (logged at start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetSource {
    /// `buffer.max_bytes` in the config.
    Configured,
    /// A fraction of the cgroup v2 `memory.max`.
    CgroupV2 {
        /// The container's limit, in bytes.
        limit: u64,
    },
    /// A fraction of the cgroup v1 `memory.limit_in_bytes`.
    CgroupV1 {
        /// The container's limit, in bytes.
        limit: u64,
    },
    /// No limit found: [`FALLBACK_BUDGET`].
    Fallback,
}

/// The container's memory limit, read from the cgroup filesystem mounted at `root`
/// (normally `/sys/fs/cgroup`): cgroup v2 `memory.max` first, then cgroup v1
/// `memory/memory.limit_in_bytes`. `None` when neither gives a limit.
pub fn container_limit(root: &Path) -> Option<BudgetSource> {
    let read = |rel: &str| -> Option<u64> {
        let text = std::fs::read_to_string(root.join(rel)).ok()?;
        let v: u64 = text.trim().parse().ok()?; // "max" (v2 unlimited) does not parse
        (v > 0 && v < UNLIMITED).then_some(v)
    };
    if root.join("memory.max").exists() {
        // cgroup v2: a "max" here means no limit; v1 files are not consulted then.
        return read("memory.max").map(|limit| BudgetSource::CgroupV2 { limit });
    }
    read("memory/memory.limit_in_bytes").map(|limit| BudgetSource::CgroupV1 { limit })
}

/// The budget to use: the configured one, else [`CONTAINER_FRACTION`] of the container limit
/// found under `cgroup_root`, else [`FALLBACK_BUDGET`].
pub fn resolve_budget(configured: Option<u64>, cgroup_root: &Path) -> (u64, BudgetSource) {
    if let Some(b) = configured {
        return (b, BudgetSource::Configured);
    }
    match container_limit(cgroup_root) {
        Some(src @ (BudgetSource::CgroupV2 { limit } | BudgetSource::CgroupV1 { limit })) => {
            ((limit as f64 * CONTAINER_FRACTION) as u64, src)
        }
        _ => (FALLBACK_BUDGET, BudgetSource::Fallback),
    }
}

/// The budget and its watermarks, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Reaching this decides the oldest traces early (trigger `memory`).
    pub max_bytes: u64,
    /// Above this, fetching pauses.
    pub pause_above: u64,
    /// Below this, paused fetching resumes.
    pub resume_below: u64,
}

impl Budget {
    /// A budget with watermarks given as fractions of it (`0 < low < high <= 1`).
    pub fn new(max_bytes: u64, high: f64, low: f64) -> Self {
        Budget {
            max_bytes,
            pause_above: (max_bytes as f64 * high) as u64,
            resume_below: (max_bytes as f64 * low) as u64,
        }
    }
}

impl Default for Budget {
    fn default() -> Self {
        Budget::new(FALLBACK_BUDGET, 0.9, 0.8)
    }
}

#[cfg(test)]
mod tests;
