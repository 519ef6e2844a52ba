//! Reservoir minimums: `min_traces: N` keeps at least N of the traces a rule matches in each
//! window (`min_traces_window`, default 1m), whatever its sample rate, so that a rare kind of
//! trace sampled at 1 in 1000 still shows up in a quiet minute.
//!
//! The first N matching traces of each window are kept at sample rate 1 and stand for
//! themselves; the rest get the rule's outcome, each at its own rate. The estimate of the
//! traffic from the kept traces stays unbiased (N, plus the sampled rest times its rate).
//! tailsift decides each trace when it completes and holds none back for a window, so the
//! minimum is the window's *first* N, not a uniform pick among them.
//!
//! Like the budgets, N is the fleet's: each instance keeps its [`Share`] of it, rounded up,
//! so the fleet keeps at least N per window when the traffic is spread over its partitions.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::file::Errors;
use super::yaml::Node;
use super::{expr, Share};

/// Default window of a minimum.
pub const DEFAULT_MIN_WINDOW: Duration = Duration::from_secs(60);

/// A rule's `min_traces` and `min_traces_window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinimumSpec {
    /// Traces kept at least per window, by the whole fleet.
    pub traces: u32,
    /// The window the minimum is counted over.
    pub window: Duration,
}

/// Reads a rule's `min_traces` and `min_traces_window`, reporting each mistake into `err`.
pub(super) fn parse(v: &Node, err: &mut Errors<'_>) -> Option<MinimumSpec> {
    let window = match v.get("min_traces_window") {
        None => Some(DEFAULT_MIN_WINDOW),
        Some(w) => match w.as_str().and_then(expr::parse_duration) {
            Some(ns) if ns >= 1_000_000_000 => Some(Duration::from_nanos(ns)),
            _ => {
                err.push(
                    w.line,
                    "min_traces_window",
                    format!(
                        "expected a duration of at least 1s, e.g. 1m, got {}",
                        w.describe()
                    ),
                );
                None
            }
        },
    };
    let traces = match v.get("min_traces") {
        None => {
            if let Some(w) = v.get("min_traces_window") {
                err.push(
                    w.line,
                    "min_traces_window",
                    "`min_traces_window` is the window of `min_traces`: give `min_traces: N` \
                     (traces kept at least per window by the fleet)",
                );
            }
            return None;
        }
        Some(n) => match n
            .as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .filter(|x| *x >= 1)
        {
            Some(x) => Some(x),
            None => {
                err.push(
                    n.line,
                    "min_traces",
                    format!(
                        "expected a whole number >= 1 (traces kept at least per window), got {}",
                        n.describe()
                    ),
                );
                None
            }
        },
    };
    Some(MinimumSpec {
        traces: traces?,
        window: window?,
    })
}

/// A minimum's count in the current window. Windows follow each other from the first trace
/// the rule matched; a quiet stretch skips the windows it covers.
#[derive(Debug)]
pub struct Minimum {
    spec: MinimumSpec,
    share: Share,
    /// (start of the current window, traces kept in it by the minimum).
    state: Mutex<(Option<Instant>, u64)>,
}

impl Minimum {
    /// A minimum of this instance's `share` of the fleet's `spec.traces`, read at each trace.
    pub fn shared(spec: MinimumSpec, share: Share) -> Self {
        Minimum {
            spec,
            share,
            state: Mutex::new((None, 0)),
        }
    }

    /// This instance's part of the fleet's minimum: its share, rounded up (so the parts add
    /// up to at least the minimum), and none for an instance that owns no partition.
    pub fn quota(&self) -> u64 {
        let q = f64::from(self.spec.traces) * self.share.fraction();
        // A share of 2/6 times 6 is 2.0000000000000004: not a third trace.
        (q - 1e-9).ceil().max(0.0) as u64
    }

    /// Whether the minimum takes this trace (kept at rate 1): the window has room left.
    pub fn try_take(&self, now: Instant) -> bool {
        let quota = self.quota();
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match s.0 {
            None => *s = (Some(now), 0),
            Some(start) => {
                let since = now.saturating_duration_since(start);
                if since >= self.spec.window {
                    // Whole windows passed: the current one starts at a multiple of the
                    // window from the first (after 136 years of 1s windows, now).
                    let windows = since.as_nanos() / self.spec.window.as_nanos();
                    let by = self
                        .spec
                        .window
                        .saturating_mul(u32::try_from(windows).unwrap_or(u32::MAX));
                    *s = (Some(start.checked_add(by).unwrap_or(now)), 0);
                }
            }
        }
        if s.1 < quota {
            s.1 += 1;
            true
        } else {
            false
        }
    }
}
