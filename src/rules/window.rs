//! Time-boxed rules: a rule active only between two instants (`active_from`,
//! `active_until`), retiring by itself, and a keep rule's sample rate decaying over that
//! window (`decay_to_sample_rate`). An SRE debugging a service keeps all its traces for the
//! next hour, and forgets nothing: past `active_until` the rule matches no trace, `rules
//! check` warns that it retired, and `tailsift_rule_active` says so.
//!
//! Instants are wall-clock (RFC 3339). A rule set reads the wall clock through tokio's clock
//! (an anchor taken when the set is built), so paused-time tests and `rules test` cases
//! (`at:`) move it.

use std::time::{Duration, SystemTime};

use humantime_serde::re::humantime;
use tokio::time::Instant;

use super::file::Errors;
use super::yaml::Node;
use super::Rule;

/// When a rule is active: from `from` (inclusive) until `until` (exclusive), each optional.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Active {
    /// `active_from`: the rule matches nothing before this instant.
    pub from: Option<SystemTime>,
    /// `active_until`: the rule matches nothing from this instant on.
    pub until: Option<SystemTime>,
}

/// Where a time-boxed rule stands at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Before `active_from`.
    Pending,
    /// In its window: the rule matches as any other.
    Active,
    /// At or past `active_until`.
    Retired,
}

impl Active {
    /// Where the rule stands at the wall-clock instant `now`.
    pub fn phase(&self, now: SystemTime) -> Phase {
        if self.from.is_some_and(|f| now < f) {
            Phase::Pending
        } else if self.until.is_some_and(|u| now >= u) {
            Phase::Retired
        } else {
            Phase::Active
        }
    }

    /// The sample rate at `now` of a rate decaying from `from_rate` at `active_from` to
    /// `to_rate` at `active_until`: geometric, so each equal stretch of time multiplies the
    /// rate by the same factor (1 -> 100 over an hour: 1, 10 at half past, 100 at the end).
    pub fn decayed(&self, from_rate: u32, to_rate: u32, now: SystemTime) -> u32 {
        let (Some(from), Some(until)) = (self.from, self.until) else {
            return from_rate;
        };
        let span = until.duration_since(from).unwrap_or_default().as_secs_f64();
        let done = now.duration_since(from).unwrap_or_default().as_secs_f64();
        let f = if span > 0.0 {
            (done / span).clamp(0.0, 1.0)
        } else {
            1.0
        };
        let (a, b) = (f64::from(from_rate), f64::from(to_rate));
        (a * (b / a).powf(f))
            .round()
            .clamp(1.0, f64::from(u32::MAX)) as u32
    }
}

/// Reads a rule's `active_from`, `active_until` and `decay_to_sample_rate`, reporting each
/// mistake into `err`.
pub(super) fn parse(v: &Node, err: &mut Errors<'_>) -> (Option<Active>, Option<u32>) {
    let mut at = |key: &str| {
        let n = v.get(key)?;
        match n.as_str().map(instant) {
            Some(Ok(t)) => Some(t),
            Some(Err(e)) => {
                err.push(n.line, key, e);
                None
            }
            None => {
                err.push(
                    n.line,
                    key,
                    format!(
                        "expected an RFC 3339 instant in UTC, e.g. 2026-11-28T22:00:00Z, got {}",
                        n.describe()
                    ),
                );
                None
            }
        }
    };
    let (from, until) = (at("active_from"), at("active_until"));
    let active = (from.is_some() || until.is_some()).then_some(Active { from, until });
    if let (Some(f), Some(u)) = (from, until) {
        if u <= f {
            let line = v.get("active_until").map_or(v.line, |n| n.line);
            err.push(
                line,
                "active_until",
                format!(
                    "`active_until` ({}) must come after `active_from` ({})",
                    show(u),
                    show(f)
                ),
            );
        }
    }
    let decay_to = v.get("decay_to_sample_rate").and_then(|n| {
        match n
            .as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .filter(|x| *x >= 1)
        {
            Some(x) if from.is_some() && until.is_some() => Some(x),
            Some(_) => {
                err.push(
                    n.line,
                    "decay_to_sample_rate",
                    "a rate decays over the rule's window: give both `active_from` and \
                     `active_until`",
                );
                None
            }
            None => {
                err.push(
                    n.line,
                    "decay_to_sample_rate",
                    format!(
                        "expected a whole number >= 1 (keep 1 in N at active_until), got {}",
                        n.describe()
                    ),
                );
                None
            }
        }
    });
    (active, decay_to)
}

/// What `rules check` says of each time-boxed rule at the wall-clock instant `now`: whether
/// it is active, not yet or retired, and its window. One line per time-boxed rule.
pub fn schedule(rules: &[Rule], now: SystemTime) -> Vec<String> {
    let mut out = Vec::new();
    for r in rules {
        let Some(a) = r.active else { continue };
        let phase = match a.phase(now) {
            Phase::Pending => "not active yet",
            Phase::Active => "active now",
            Phase::Retired => "retired",
        };
        let mut window = String::new();
        if let Some(f) = a.from {
            window += &format!(" from {}", show(f));
        }
        if let Some(u) = a.until {
            window += &format!(" until {}", show(u));
        }
        let decay = match (r.decay_to, &r.outcome) {
            (Some(to), super::Outcome::Keep { sample_rate }) => {
                let now_at = if a.phase(now) == Phase::Active {
                    format!(", keeping 1 in {} now", a.decayed(*sample_rate, to, now))
                } else {
                    String::new()
                };
                format!("; 1 in {sample_rate} decaying to 1 in {to}{now_at}")
            }
            _ => String::new(),
        };
        out.push(format!(
            "time-boxed: rule `{}` ({}:{}) is {phase}:{window}{decay}",
            r.name, r.file, r.line
        ));
    }
    out
}

/// Parses an RFC 3339 instant (`2026-11-28T22:00:00Z`).
pub(crate) fn instant(text: &str) -> Result<SystemTime, String> {
    humantime::parse_rfc3339_weak(text.trim()).map_err(|e| {
        format!(
            "expected an RFC 3339 instant in UTC, e.g. 2026-11-28T22:00:00Z, got `{text}` ({e})"
        )
    })
}

/// Shows an instant as RFC 3339, to the second.
pub(crate) fn show(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The wall clock as a rule set reads it: `wall` at tokio's `at`, moving with tokio's clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    at: Instant,
    wall: SystemTime,
}

impl Clock {
    /// The wall clock now.
    pub fn now() -> Self {
        Clock {
            at: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    /// A clock on which tokio's now is `wall` (for `rules test` cases' `at:`).
    pub fn at(wall: SystemTime) -> Self {
        Clock {
            at: Instant::now(),
            wall,
        }
    }

    /// The wall-clock time of tokio's `now`.
    pub fn wall(&self, now: Instant) -> SystemTime {
        if now >= self.at {
            self.wall + now.duration_since(self.at)
        } else {
            self.wall
                .checked_sub(self.at.duration_since(now))
                .unwrap_or(self.wall - Duration::ZERO)
        }
    }
}
