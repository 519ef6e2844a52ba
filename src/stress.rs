//! Stress relief: when the consumer lag keeps growing past a threshold (this instance cannot
//! keep up, and back-pressure only moves the backlog into Kafka), switch to a degraded mode
//! that decides each span group by its trace id alone, without buffering; switch back once the
//! lag has stayed low for a while.
//!
//! In degraded mode a trace is kept when its trace id falls in the configured sample rate (the
//! same deterministic test the rules' `sample_rate` uses, so every instance and every span of
//! the trace agree), or when a span with status error is seen (that trace's later spans are
//! then kept too, through the decision cache). Traces already buffered when the mode starts
//! are decided at once through the rules (trigger `stress`), so that the buffer empties and
//! paused partitions resume. Nothing is dropped undecided.
//!
//! [`StressRelief`] is the mode's state machine, fed with the total lag (see
//! [`crate::health::LagTracker`]); it is pure logic, driven by the task [`relieve`], which the
//! pipeline starts.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::config::StressConfig;
use crate::decision::Decision;
use crate::health::Health;
use crate::otlp::decode::TraceGroup;
use crate::rules::RuleSet;

/// The rule name degraded mode's decisions carry (metrics, output header).
pub const STRESS_RULE: &str = "stress";
/// The rule name of traces degraded mode keeps because an error span was seen.
pub const STRESS_ERRORS_RULE: &str = "stress-errors";

/// Degraded mode's decision for a group of spans of a trace not seen before: kept when the
/// trace id falls in 1 in `sample_rate` (deterministic, as the rules' `sample_rate`), or when
/// one of its spans has status error; else dropped.
pub fn decide_by_trace_id(rules: &RuleSet, group: &TraceGroup<'_>, sample_rate: u32) -> Decision {
    static NAMES: OnceLock<(Arc<str>, Arc<str>)> = OnceLock::new();
    let (stress, errors) =
        NAMES.get_or_init(|| (Arc::from(STRESS_RULE), Arc::from(STRESS_ERRORS_RULE)));
    if rules.sampled(&group.trace_id, sample_rate) {
        Decision::Keep {
            rule: stress.clone(),
            sample_rate,
        }
    } else if group.spans().any(|s| s.facts.is_error) {
        Decision::Keep {
            rule: errors.clone(),
            sample_rate: 1,
        }
    } else {
        Decision::Drop {
            rule: stress.clone(),
        }
    }
}

/// When to enter and leave degraded mode.
#[derive(Debug, Clone, PartialEq)]
pub struct StressSettings {
    /// Enter when the total lag stayed above this many messages for `enter_after`, and grew
    /// over that time.
    pub enter_lag: i64,
    /// How long the lag must stay above `enter_lag`, and grow, before degraded mode starts.
    pub enter_after: Duration,
    /// Leave when the total lag stayed below this many messages for `exit_after`.
    pub exit_lag: i64,
    /// How long the lag must stay below `exit_lag` before normal mode returns.
    pub exit_after: Duration,
}

/// The mode, and how long its current condition has held.
#[derive(Debug)]
pub struct StressRelief {
    settings: StressSettings,
    degraded: bool,
    /// Since when the lag has been above `enter_lag`, and what it was then.
    above: Option<(Instant, i64)>,
    /// Since when the lag has been below `exit_lag`.
    below: Option<Instant>,
}

impl StressRelief {
    /// Normal mode, with no condition holding yet.
    pub fn new(settings: StressSettings) -> Self {
        StressRelief {
            settings,
            degraded: false,
            above: None,
            below: None,
        }
    }

    /// Whether degraded mode is on.
    pub fn degraded(&self) -> bool {
        self.degraded
    }

    /// Takes a lag measurement (`None`: unknown, which changes nothing). Returns the new mode
    /// when it changes (`true`: degraded).
    pub fn observe(&mut self, lag: Option<i64>, now: Instant) -> Option<bool> {
        let lag = lag?;
        let s = &self.settings;
        if !self.degraded {
            if lag <= s.enter_lag {
                self.above = None;
                return None;
            }
            let (since, at_start) = *self.above.get_or_insert((now, lag));
            if now.duration_since(since) >= s.enter_after && lag > at_start {
                self.degraded = true;
                self.above = None;
                return Some(true);
            }
        } else {
            if lag >= s.exit_lag {
                self.below = None;
                return None;
            }
            let since = *self.below.get_or_insert(now);
            if now.duration_since(since) >= s.exit_after {
                self.degraded = false;
                self.below = None;
                return Some(false);
            }
        }
        None
    }
}

/// Switches the sampler's degraded mode on (`true`) or off at a sample rate, at a time;
/// returns how many buffered traces it decided at once (`Sampler::set_degraded`).
pub type Degrade = Arc<dyn Fn(bool, u32, tokio::time::Instant) -> usize + Send + Sync>;

/// Watches the total consumer lag every `every` and switches degraded mode on and off
/// through `degrade`, until told to stop.
pub async fn relieve(
    degrade: Degrade,
    health: Arc<Health>,
    config: StressConfig,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut relief = StressRelief::new(config.settings());
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    metrics::gauge!(crate::telemetry::STRESS_MODE).set(0.0);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {}
        }
        let lag = health.lag.total();
        let Some(on) = relief.observe(lag, Instant::now()) else {
            continue;
        };
        metrics::gauge!(crate::telemetry::STRESS_MODE).set(if on { 1.0 } else { 0.0 });
        let degrade = degrade.clone();
        let rate = config.sample_rate;
        let decided =
            tokio::task::spawn_blocking(move || degrade(on, rate, tokio::time::Instant::now()))
                .await
                .unwrap_or(0);
        if on {
            tracing::warn!(
                lag,
                enter_lag = config.enter_lag,
                sample_rate = rate,
                buffered_decided = decided,
                "stress relief: consumer lag keeps growing; degraded mode on, new traces decided by trace id alone"
            );
        } else {
            tracing::info!(
                lag,
                exit_lag = config.exit_lag,
                "stress relief: consumer lag is low again; degraded mode off, traces buffered as usual"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enters_on_growing_lag_held_past_the_threshold_and_leaves_with_hysteresis() {
        let mut s = StressRelief::new(StressSettings {
            enter_lag: 100,
            enter_after: Duration::from_secs(10),
            exit_lag: 10,
            exit_after: Duration::from_secs(5),
        });
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        // (second, lag, expected change)
        let steps: &[(u64, Option<i64>, Option<bool>)] = &[
            (0, Some(500), None),  // above, the clock starts
            (5, Some(50), None),   // dipped below: the clock resets
            (6, Some(500), None),  // above again
            (12, None, None),      // unknown lag changes nothing
            (16, Some(500), None), // 10 s above, but not growing
            (17, Some(400), None), // still not growing
            (20, Some(900), Some(true)),
            (21, Some(50), None), // degraded: below exit_lag is not enough
            (22, Some(5), None),  // below exit_lag, the clock starts
            (25, Some(20), None), // back above exit_lag: the clock resets
            (26, Some(5), None),
            (30, Some(0), None),
            (31, Some(0), Some(false)),
            (32, Some(500), None), // normal again: enter needs its full time
        ];
        for (sec, lag, want) in steps {
            assert_eq!(s.observe(*lag, at(*sec)), *want, "at {sec}s lag {lag:?}");
        }
        assert!(!s.degraded());
    }
}
