//! One rule, compiled: its outcome and options, and the mistakes a rule file can hold.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::window;
use super::{Active, Cond, KeyField, MinimumSpec, RuleMarks};

/// A rule-file mistake, located by file, line, rule and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct RuleError {
    /// The file the mistake is in (or the directory, for a mistake of the whole set).
    pub file: String,
    /// 1-based; 0 when the mistake has no line (a missing file, an empty directory).
    pub line: usize,
    /// The rule, as `` `name` `` or `#N` (its position in the file) when it has no name; `-` outside a rule.
    pub rule: String,
    /// The key or part of the rule (`conditions`, `sample_rate`...); `-` for the file as a whole.
    pub field: String,
    /// What is wrong, and what would be accepted.
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        write!(f, ": rule {}: {}: {}", self.rule, self.field, self.message)
    }
}

/// Every mistake found in a rules directory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct RulesError(pub Vec<RuleError>);

impl fmt::Display for RulesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// A throughput rule's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ThroughputSpec {
    /// Target traces per second per key, for the whole fleet (see [`Share`](super::Share)).
    pub per_second: f64,
    /// The fields whose values make a trace's key.
    pub keys: Vec<KeyField>,
    /// How often each key's rate is recomputed from its recent traffic.
    pub window: Duration,
    /// Distinct keys tracked; keys past the bound share one rate.
    pub max_keys: usize,
}

/// A goal-rate dynamic sampler's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DynamicSpec {
    /// The sample rate to average over all keys (keep 1 in N).
    pub goal_rate: f64,
    /// The fields whose values make a trace's key.
    pub keys: Vec<KeyField>,
    /// How often the keys' rates are recomputed from their smoothed traffic.
    pub window: Duration,
    /// Distinct keys tracked; keys past the bound share one rate.
    pub max_keys: usize,
}

/// What a rule does with the traces its conditions match.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Keep 1 in `sample_rate` of the matching traces, chosen by trace id.
    Keep {
        /// Keep 1 in this many (1: every trace).
        sample_rate: u32,
    },
    /// Drop the trace.
    Drop,
    /// Keep at most `per_second` matching traces per second across the fleet (this instance
    /// takes its [`Share`](super::Share)); the rest fall through to the next rule.
    RateLimit {
        /// Traces kept per second by the whole fleet.
        per_second: f64,
    },
    /// Keep about `per_second` traces per second per key, each key at its own sample rate.
    Throughput(ThroughputSpec),
    /// Keep 1 in `goal_rate` on average, rare keys at lower rates and common keys at higher.
    Dynamic(DynamicSpec),
    /// Decide nothing: the rule that decides next keeps `factor` times as many of the traces
    /// this rule matched (its 1 in N becomes 1 in N/`factor`; factors multiply).
    Factor {
        /// The multiplier: the deciding rule keeps this many times as many (below 1: fewer).
        factor: f64,
    },
}

impl Outcome {
    /// How `rules explain` and test failures name the outcome.
    pub fn describe(&self) -> String {
        match self {
            Outcome::Keep { sample_rate: 1 } => "keep".into(),
            Outcome::Keep { sample_rate } => format!("keep 1 in {sample_rate}"),
            Outcome::Drop => "drop".into(),
            Outcome::RateLimit { per_second } => format!("rate_limit {per_second}/s"),
            Outcome::Throughput(t) => format!("throughput {}/s per key", t.per_second),
            Outcome::Dynamic(d) => format!("dynamic, 1 in {} on average", d.goal_rate),
            Outcome::Factor { factor } => format!("factor ×{factor} on the rule that decides"),
        }
    }
}

/// One rule, compiled: conditions ready to evaluate, outcome and options checked.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Unique across the rule set; names the rule in decisions, marks and metrics.
    pub name: Arc<str>,
    /// `description`: for people; not used in decisions.
    pub description: Option<String>,
    /// `None` matches every trace (the default rule).
    pub condition: Option<Cond>,
    /// What the rule does with the traces it matches.
    pub outcome: Outcome,
    /// The file the rule came from, for messages.
    pub file: String,
    /// The 1-based line the rule starts on, for messages.
    pub line: usize,
    /// What `rules check` warns about in this rule alone (see
    /// [`RuleSet::warnings`](super::RuleSet::warnings) for the whole set).
    pub warnings: Vec<RuleError>,
    /// `max_traces_per_second`: at most this many of the traces the outcome keeps, per
    /// second; the ones over it fall through to the next rule, as a rate limit's do.
    pub max_per_second: Option<f64>,
    /// `marks`: attributes added to the spans of the traces this rule keeps.
    pub marks: RuleMarks,
    /// `active_from`/`active_until`: outside this window the rule matches no trace.
    pub active: Option<Active>,
    /// `decay_to_sample_rate`: a keep rule's rate moves from `sample_rate` at `active_from`
    /// to this at `active_until`.
    pub decay_to: Option<u32>,
    /// `min_traces`: at least this many matching traces kept per window, fleet-wide.
    pub minimum: Option<MinimumSpec>,
    /// `early: true`: the rule decides a trace as soon as its conditions are sure to hold and
    /// every rule before it is sure not to match, without waiting for the trace to complete.
    pub early: bool,
}

impl Rule {
    /// Whether the rule decides every trace its conditions match (no trace falls through to
    /// the next rule): what makes the rules after it that it covers unreachable.
    pub fn always_decides(&self) -> bool {
        !matches!(
            self.outcome,
            Outcome::RateLimit { .. } | Outcome::Factor { .. }
        ) && self.max_per_second.is_none()
            && self.active.is_none()
    }

    /// How `rules explain` and test failures name what the rule does.
    pub fn describe(&self) -> String {
        let mut out = self.outcome.describe();
        if let Some(m) = self.max_per_second {
            out += &format!(", at most {m}/s");
        }
        if let Some(to) = self.decay_to {
            out += &format!(" decaying to 1 in {to}");
        }
        if let Some(m) = self.minimum {
            out += &format!(
                ", at least {} per {}",
                m.traces,
                humantime_serde::re::humantime::format_duration(m.window)
            );
        }
        if let Some(a) = &self.active {
            if let Some(f) = a.from {
                out += &format!(", active from {}", window::show(f));
            }
            if let Some(u) = a.until {
                out += &format!(", until {}", window::show(u));
            }
        }
        if !self.marks.is_empty() {
            let marks: Vec<String> = self
                .marks
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            out += &format!(", marks {{{}}}", marks.join(", "));
        }
        out
    }
}
