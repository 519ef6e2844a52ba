//! The outcomes that keep state: a rate limit, a throughput-target sampler that adapts one
//! sample rate per key, and a goal-rate sampler that spreads an average rate over the keys.
//!
//! Both take the time as an argument (tokio's clock in the pipeline, so paused-time tests
//! work) and hold their state under a mutex: rules are evaluated by the deciders, a handful of
//! threads at most, once per trace.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::{DynamicSpec, Share, ThroughputSpec};

/// A token bucket: at most `per_second` traces per second (the fleet's, times this instance's
/// [`Share`]), with a burst of one second's worth (at least one trace).
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    share: Share,
    /// (tokens left, when last refilled; `None` before the first trace).
    state: Mutex<(f64, Option<Instant>)>,
}

impl RateLimiter {
    /// A limiter of the whole `per_second` (a share of 1).
    pub fn new(per_second: f64) -> Self {
        Self::shared(per_second, Share::default())
    }

    /// A limiter of this instance's `share` of a fleet-wide `per_second`, read at each trace.
    pub fn shared(per_second: f64, share: Share) -> Self {
        RateLimiter {
            per_second,
            share,
            state: Mutex::new((0.0, None)),
        }
    }

    /// Takes one trace's token if there is one.
    pub fn try_take(&self, now: Instant) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let per_second = self.per_second * self.share.fraction();
        let burst = per_second.max(1.0);
        s.0 = match s.1 {
            // The first trace finds a full bucket.
            None => burst,
            Some(last) => {
                let dt = now.saturating_duration_since(last).as_secs_f64();
                (s.0 + dt * per_second).min(burst)
            }
        };
        s.1 = Some(now);
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct KeyState {
    /// Traces seen in the current window.
    count: u64,
    /// Smoothed traces per window over the past windows (exponential moving average);
    /// `None` until the key has lived through one window.
    ema: Option<f64>,
}

impl KeyState {
    /// Folds `windows` closed windows into the key's average (the current one with its count,
    /// the rest empty) and starts a new one; `false` once the key has gone quiet enough to be
    /// forgotten, which keeps the table small.
    fn close(&mut self, windows: u32) -> bool {
        let mut ema = match self.ema {
            None => self.count as f64,
            Some(e) => EMA_WEIGHT * self.count as f64 + (1.0 - EMA_WEIGHT) * e,
        };
        for _ in 1..windows.min(64) {
            ema *= 1.0 - EMA_WEIGHT;
        }
        self.ema = Some(ema);
        self.count = 0;
        ema >= 0.5
    }
}

#[derive(Debug)]
struct Table {
    window_start: Option<Instant>,
    keys: HashMap<u64, KeyState, foldhash::fast::FixedState>,
}

/// Keys past the table's bound share this one entry (and so one sample rate).
pub const OVERFLOW_KEY: u64 = u64::MAX;

/// About `per_second` traces per second per key: each key's sample rate is its recent traffic
/// divided by the target, so rare keys are kept whole and hot keys thinned.
#[derive(Debug)]
pub struct Throughput {
    per_second: f64,
    share: Share,
    window: Duration,
    max_keys: usize,
    table: Mutex<Table>,
}

/// Weight of the newest window in a key's moving average.
const EMA_WEIGHT: f64 = 0.5;

impl Throughput {
    /// A sampler aiming at the whole `spec.per_second` per key (a share of 1).
    pub fn new(spec: &ThroughputSpec) -> Self {
        Self::shared(spec, Share::default())
    }

    /// A sampler aiming at this instance's `share` of a fleet-wide target per key.
    pub fn shared(spec: &ThroughputSpec, share: Share) -> Self {
        Throughput {
            per_second: spec.per_second,
            share,
            window: spec.window,
            max_keys: spec.max_keys,
            table: Mutex::new(Table {
                window_start: None,
                keys: HashMap::with_hasher(foldhash::fast::FixedState::default()),
            }),
        }
    }

    /// Counts one trace of `key` and returns the sample rate (keep 1 in N) for it.
    pub fn rate(&self, key: u64, now: Instant) -> u32 {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let start = *t.window_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= self.window {
            // Close the windows that passed: fold each key's count into its average; a key
            // that stays quiet decays and is forgotten, which keeps the table small.
            let windows = (elapsed.as_secs_f64() / self.window.as_secs_f64()).floor() as u32;
            t.keys.retain(|_, k| k.close(windows));
            t.window_start = Some(start + self.window * windows);
        }
        let since = now.saturating_duration_since(t.window_start.unwrap_or(now));
        let key = if t.keys.len() >= self.max_keys && !t.keys.contains_key(&key) {
            OVERFLOW_KEY
        } else {
            key
        };
        let k = t.keys.entry(key).or_default();
        k.count += 1;
        let window = self.window.as_secs_f64();
        // Traces per window: the average of past windows, or, for a key new in this window,
        // the current window's count so far, extrapolated (at least one second of it).
        let per_window = match k.ema {
            Some(e) => e.max(k.count as f64),
            None => k.count as f64 * window / since.as_secs_f64().clamp(1.0, window),
        };
        // An instance that owns no partition sees no traffic; a floor keeps the rate finite.
        let target = (self.per_second * self.share.fraction()).max(1e-9);
        let rate = (per_window / (target * window)).round();
        rate.clamp(1.0, f64::from(u32::MAX)) as u32
    }

    /// Distinct keys tracked (for tests and the bound).
    pub fn keys(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys
            .len()
    }
}

#[derive(Debug)]
struct Goals {
    window_start: Option<Instant>,
    /// Per key: traces in the current window, and the smoothed traces per window.
    keys: HashMap<u64, KeyState, foldhash::fast::FixedState>,
    /// Each key's sample rate, computed when a window closes.
    rates: HashMap<u64, u32, foldhash::fast::FixedState>,
    /// Whether a window closed yet (before, every key gets the goal rate).
    warm: bool,
}

/// Keep 1 in `goal` on average over every key, rare keys at a lower rate and common ones at
/// a higher: at the close of each window, each key's smoothed traffic `c` (an exponential
/// moving average of its traces per window) gets a share of the window's budget of kept
/// traces (`Σc / goal`) in proportion to `ln(1 + c)`, and its rate is `c / share`, at least 1.
/// The traffic of keys kept whole (rate 1) is taken from the budget first and the rest shared
/// again among the others, so the average stays near the goal. A key unseen in the last
/// window is rare: it is kept whole until the next. As the rates are ratios, they need no
/// share of the fleet: every instance sees about the same mix of keys.
#[derive(Debug)]
pub struct GoalRate {
    goal: f64,
    window: Duration,
    max_keys: usize,
    state: Mutex<Goals>,
}

impl GoalRate {
    /// A sampler with the spec's goal rate, window and key bound, knowing no traffic yet.
    pub fn new(spec: &DynamicSpec) -> Self {
        GoalRate {
            goal: spec.goal_rate,
            window: spec.window,
            max_keys: spec.max_keys,
            state: Mutex::new(Goals {
                window_start: None,
                keys: HashMap::with_hasher(foldhash::fast::FixedState::default()),
                rates: HashMap::with_hasher(foldhash::fast::FixedState::default()),
                warm: false,
            }),
        }
    }

    /// Counts one trace of `key` and returns its sample rate (keep 1 in N).
    pub fn rate(&self, key: u64, now: Instant) -> u32 {
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let start = *g.window_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= self.window {
            let windows = (elapsed.as_secs_f64() / self.window.as_secs_f64()).floor() as u32;
            close_window(&mut g, windows, self.goal);
            g.window_start = Some(start + self.window * windows);
        }
        let key = if g.keys.len() >= self.max_keys && !g.keys.contains_key(&key) {
            OVERFLOW_KEY
        } else {
            key
        };
        g.keys.entry(key).or_default().count += 1;
        if !g.warm {
            return self.goal.round().max(1.0) as u32;
        }
        g.rates.get(&key).copied().unwrap_or(1)
    }

    /// Distinct keys tracked (for tests and the bound).
    pub fn keys(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys
            .len()
    }
}

/// Folds the closed windows into each key's average and recomputes the rates.
fn close_window(g: &mut Goals, windows: u32, goal: f64) {
    g.keys.retain(|_, k| k.close(windows));
    g.warm = true;
    g.rates.clear();
    let traffic: Vec<(u64, f64)> = g
        .keys
        .iter()
        .filter_map(|(k, s)| Some((*k, s.ema?)))
        .collect();
    let mut budget = traffic.iter().map(|(_, c)| c).sum::<f64>() / goal;
    let mut open: Vec<(u64, f64)> = traffic;
    // Each pass settles the keys whose share covers their whole traffic (rate 1); the
    // others share what is left. A few passes suffice: each settles at least one key or ends.
    loop {
        let weight: f64 = open.iter().map(|(_, c)| (1.0 + c).ln()).sum();
        let (whole, rest): (Vec<_>, Vec<_>) = open
            .iter()
            .partition(|(_, c)| weight <= 0.0 || budget * (1.0 + c).ln() / weight >= *c);
        if whole.is_empty() || rest.is_empty() {
            for (k, c) in &open {
                let share = budget * (1.0 + c).ln() / weight;
                let rate = if share > 0.0 {
                    (c / share).round()
                } else {
                    f64::from(u32::MAX)
                };
                g.rates
                    .insert(*k, rate.clamp(1.0, f64::from(u32::MAX)) as u32);
            }
            return;
        }
        for (k, c) in &whole {
            g.rates.insert(*k, 1);
            budget -= c;
        }
        budget = budget.max(0.0);
        open = rest;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(per_second: f64, max_keys: usize) -> ThroughputSpec {
        ThroughputSpec {
            per_second,
            keys: Vec::new(),
            window: Duration::from_secs(10),
            max_keys,
        }
    }

    #[test]
    fn rate_limit_allows_its_rate_and_refills() {
        let t0 = Instant::now();
        let l = RateLimiter::new(5.0);
        let first: usize = (0..20).map(|_| usize::from(l.try_take(t0))).sum();
        assert_eq!(first, 5, "a burst of one second");
        assert!(!l.try_take(t0 + Duration::from_millis(100)));
        assert!(
            l.try_take(t0 + Duration::from_millis(200)),
            "refilled 1 token in 200ms"
        );
        // Over 10 more seconds at 100 tries per second: about 5 per second.
        let mut kept = 0;
        for i in 0..1000u64 {
            kept += usize::from(l.try_take(t0 + Duration::from_millis(200 + 10 * (i + 1))));
        }
        assert!((49..=51).contains(&kept), "kept {kept}");
    }

    #[test]
    fn throughput_keeps_rare_keys_and_thins_hot_ones() {
        let t0 = Instant::now();
        let s = Throughput::new(&spec(1.0, 100));
        let (mut hot_kept, mut rare_kept) = (0.0, 0.0);
        // 30 s: the hot key sends 100 traces/s, the rare key one every 2 s.
        for ms in (0..30_000u64).step_by(10) {
            let now = t0 + Duration::from_millis(ms);
            let r = s.rate(1, now);
            if ms >= 10_000 {
                hot_kept += 1.0 / f64::from(r);
            }
            if ms % 2000 == 0 {
                let r = s.rate(2, now);
                assert_eq!(r, 1, "a rare key is never thinned");
                rare_kept += 1.0;
            }
        }
        // After the first window the hot key is thinned to about 1 trace/s: ~20 in 20 s.
        assert!((15.0..=25.0).contains(&hot_kept), "hot key kept {hot_kept}");
        assert_eq!(rare_kept, 15.0);
    }

    #[test]
    fn throughput_bounds_its_key_table_and_forgets_quiet_keys() {
        let t0 = Instant::now();
        let s = Throughput::new(&spec(1.0, 50));
        for k in 0..1000 {
            s.rate(k, t0);
        }
        assert_eq!(s.keys(), 51, "50 keys and the shared overflow entry");
        // Quiet for many windows: everything decays away.
        s.rate(7, t0 + Duration::from_secs(600));
        assert_eq!(s.keys(), 1);
    }

    fn goal(goal_rate: f64, max_keys: usize) -> GoalRate {
        GoalRate::new(&DynamicSpec {
            goal_rate,
            keys: Vec::new(),
            window: Duration::from_secs(10),
            max_keys,
        })
    }

    #[test]
    fn goal_rate_keeps_rare_keys_more_and_averages_the_goal() {
        let t0 = Instant::now();
        let g = goal(10.0, 100);
        // Per 10 s window: key 1 sends 1000 traces, key 2 100, key 3 10, key 4 one.
        let per_window = [(1u64, 1000u64), (2, 100), (3, 10), (4, 1)];
        let (mut seen, mut kept) = (0.0, 0.0);
        let mut last = [0u32; 5];
        for w in 0..6u64 {
            for (key, n) in per_window {
                for i in 0..n {
                    let now = t0 + Duration::from_millis(w * 10_000 + i * 10_000 / n);
                    let r = g.rate(key, now);
                    if w == 0 {
                        assert_eq!(r, 10, "the first window: the goal for every key");
                    } else {
                        seen += 1.0;
                        kept += 1.0 / f64::from(r);
                    }
                    last[key as usize] = r;
                }
            }
        }
        let average = seen / kept;
        assert!(
            (8.0..=12.0).contains(&average),
            "average rate {average}, rates {last:?}"
        );
        assert!(
            last[1] > last[2] && last[2] >= last[3] && last[3] >= last[4],
            "rarer keys get lower rates: {last:?}"
        );
        assert_eq!(last[4], 1, "the rarest key is kept whole");
        // A key new since the last window is kept whole.
        assert_eq!(g.rate(99, t0 + Duration::from_secs(61)), 1);
    }

    #[test]
    fn goal_rate_bounds_its_key_table() {
        let t0 = Instant::now();
        let g = goal(10.0, 50);
        for k in 0..1000 {
            g.rate(k, t0);
        }
        assert_eq!(g.keys(), 51, "50 keys and the shared overflow entry");
        g.rate(7, t0 + Duration::from_secs(600));
        assert_eq!(g.keys(), 1, "quiet keys decay away");
    }
}
