//! Sampling rules: files of YAML, compiled once, evaluated per trace; first match wins.
//!
//! # Layout
//! - `rule`: one compiled rule (outcome, options) and the located rule-file errors.
//! - `yaml`: a YAML tree that keeps line numbers, for error messages.
//! - `field`: the fields conditions and sampler keys name, and their types.
//! - `expr`: condition expressions (`FIELD OPERATOR VALUE`, groups), type-checked at load.
//! - `file`: one rule file: rules, outcomes, every error located.
//! - `dir`: a rules directory: which files are read, parsed together, the set-wide checks
//!   and the version.
//! - `lint`: what `rules check` warns about (shadowed rules, trace-scope negations).
//! - `condition`: compiled conditions and their evaluation.
//! - `marks`: the attributes a rule adds to the spans it keeps, encoded once.
//! - `dynamic`: the stateful outcomes (rate limit, throughput target).
//! - `explain`: which conditions held, rule by rule (`tailsift rules explain`, test failures).
//! - `cases`: trace cases with expected outcomes (`tailsift rules test`).
//! - `reload`: watch the rules directory (and SIGHUP), swap valid changes in atomically.
//! - `share`: this instance's share of the fleet's budgets, set on every rebalance.
//! - `window`: time-boxed rules (active between two instants) and decaying sample rates.
//! - `minimum`: reservoir minimums (at least N matching traces per window, fleet-wide).
//! - `trace`: a trace as the rules read it, and the full walk over its spans.
//! - `seen`: span conditions evaluated as spans arrive (one walk per span), and what is
//!   settled early.
//! - `buffered`: the set's probes handed to the buffer, and deciding buffered traces (early
//!   ones included) from what the probes saw.
//!
//! A rule is a name, optional conditions and an outcome: `keep` (with a sample rate), `drop`,
//! `rate_limit`, `throughput`, `dynamic`, or `factor` (which decides nothing: it multiplies
//! the rate of the rule that decides next). The last rule must have no conditions: it is the
//! default.
//! Sampling is deterministic on the trace id, so every instance (and late span) agrees.

mod buffered;
pub mod cases;
mod condition;
mod dir;
mod dynamic;
mod early;
pub mod explain;
mod expr;
mod field;
mod file;
mod lint;
mod marks;
mod minimum;
pub mod reload;
mod rule;
mod seen;
mod share;
mod trace;
mod window;
pub(crate) mod yaml;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::time::Instant;

pub use condition::{Cond, KeyField, Probe, SpanCond};
pub use dir::{
    check_set, load_dir, parse_files, read_dir, rule_files, skipped_files, version, ReadFile,
};
pub use dynamic::{GoalRate, RateLimiter, Throughput};
pub use early::{early_notes, knowable, Known};
pub(crate) use expr::{did_you_mean, unknown};
pub use file::parse_file;
pub use marks::{MarkValue, RuleMarks};
pub use minimum::{Minimum, MinimumSpec, DEFAULT_MIN_WINDOW};
pub use rule::{DynamicSpec, Outcome, Rule, RuleError, RulesError, ThroughputSpec};
pub use seen::{Buffered, Probes, Seen, MAX_PROBES};
pub use share::Share;
pub use trace::{Evaluate, TraceView};
pub use window::{schedule, Active, Clock, Phase};

use crate::decision::Decision;
use crate::otlp::mark::{Marking, Marks};
use crate::otlp::TraceId;
use crate::telemetry as m;

/// Whether decisions are applied or only computed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// Kept traces are forwarded, dropped ones are not.
    #[default]
    Enforce,
    /// Dry run: decisions are computed, counted and marked, and every trace is forwarded.
    Shadow,
}

/// What a rule set needs besides its rules; the same for every reload.
#[derive(Debug, Clone, Default)]
pub struct RuleOptions {
    /// Salt for sample-rate decisions (the same on every instance).
    pub salt: Option<String>,
    /// Whether decisions are applied (`enforce`) or only computed and marked (`shadow`).
    pub mode: Mode,
    /// How kept spans are marked; `None` forwards them byte for byte.
    pub marking: Option<Marking>,
    /// This instance's share of the fleet's budgets: one handle for every set built from
    /// these options (reloads included), set on each rebalance.
    pub share: Share,
}

/// A sample rate divided by the product of the factors that apply to it: keep `factor` times
/// as many. Whole, at least 1 (keep all).
fn boost(rate: u32, factor: f64) -> u32 {
    if factor == 1.0 {
        return rate;
    }
    (f64::from(rate) / factor)
        .round()
        .clamp(1.0, f64::from(u32::MAX)) as u32
}

/// Per-rule counts since the last flush, added per decision and flushed per decider tick.
#[derive(Debug, Default)]
struct Counts {
    /// [matched, kept, dropped] traces and spans.
    traces: [AtomicU64; 3],
    spans: [AtomicU64; 3],
}

const RESULTS: [m::RuleResult; 3] = [
    m::RuleResult::Matched,
    m::RuleResult::Kept,
    m::RuleResult::Dropped,
];
const MATCHED: usize = 0;
const KEPT: usize = 1;
const DROPPED: usize = 2;

#[derive(Debug)]
struct RuleState {
    counts: Counts,
    limiter: Option<RateLimiter>,
    throughput: Option<Throughput>,
    goal: Option<GoalRate>,
    /// The rule's marks, encoded.
    marks: Option<Marks>,
    minimum: Option<Minimum>,
}

impl RuleState {
    fn new(rule: &Rule, share: &Share) -> Self {
        RuleState {
            counts: Counts::default(),
            limiter: match (&rule.outcome, rule.max_per_second) {
                (Outcome::RateLimit { per_second }, _) => {
                    Some(RateLimiter::shared(*per_second, share.clone()))
                }
                (_, Some(max)) => Some(RateLimiter::shared(max, share.clone())),
                _ => None,
            },
            throughput: match &rule.outcome {
                Outcome::Throughput(spec) => Some(Throughput::shared(spec, share.clone())),
                _ => None,
            },
            goal: match &rule.outcome {
                Outcome::Dynamic(spec) => Some(GoalRate::new(spec)),
                _ => None,
            },
            marks: marks::encode(&rule.marks),
            minimum: rule.minimum.map(|m| Minimum::shared(m, share.clone())),
        }
    }
}

/// The loaded rules, immutable but for the counters and the stateful outcomes; a reload
/// builds a new set and swaps it in whole.
#[derive(Debug)]
pub struct RuleSet {
    rules: Vec<Rule>,
    state: Vec<RuleState>,
    salt: Option<u64>,
    options: RuleOptions,
    version: String,
    /// The wall clock of time-boxed rules, read through tokio's.
    clock: Clock,
    /// `redaction.yaml` of the same directory: loaded, swapped and versioned with the rules.
    redaction: Option<Arc<crate::redact::Redaction>>,
    /// The span conditions the buffer evaluates as spans arrive.
    probes: Probes,
    /// Whether some rule is `early`.
    early: bool,
    /// Whether an early rule's verdict on a trace can change only when a probe's bit, the
    /// trace's error flag or its root's arrival does (see [`early_steady`]).
    early_steady: bool,
}

/// A rule's verdict on a trace, before the mode applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Index of the deciding rule.
    pub rule: usize,
    /// Whether the trace is kept (in shadow mode: would be).
    pub keep: bool,
    /// The sample rate the trace was (or would have been) kept at: it stands for this many.
    pub sample_rate: u32,
    /// The deciding rule's own rate, when factor rules changed it into `sample_rate`.
    pub unboosted: Option<u32>,
    /// Kept by the rule's `min_traces` (at rate 1), not by its outcome.
    pub minimum: bool,
}

impl Clone for RuleSet {
    /// The same rules with fresh state (counters, rate limits, throughput tables).
    fn clone(&self) -> Self {
        let mut rules = self.rules.clone();
        let probes = Probes::assign(&mut rules);
        RuleSet {
            rules,
            probes,
            early: self.early,
            early_steady: self.early_steady,
            state: self
                .rules
                .iter()
                .map(|r| RuleState::new(r, &self.options.share))
                .collect(),
            salt: self.salt,
            options: self.options.clone(),
            version: self.version.clone(),
            clock: self.clock,
            redaction: self.redaction.as_deref().map(|r| Arc::new(r.clone())),
        }
    }
}

/// Whether an early decision can change only when a probe's bit, a trace's error flag or its
/// root's arrival does: no rule up to the last early one is time-boxed (its phase changes with
/// the clock) or reads a number that grows with every span (`Cond::reads_growing`). Then spans
/// that changed none of those cannot make a trace decidable early that was not before them,
/// and the buffer need not ask again (`Buffer::ingest_with`).
fn early_steady(rules: &[Rule]) -> bool {
    let Some(last) = rules.iter().rposition(|r| r.early) else {
        return false;
    };
    rules[..=last]
        .iter()
        .all(|r| r.active.is_none() && !r.condition.as_ref().is_some_and(Cond::reads_growing))
}

impl RuleSet {
    /// Builds a set, checking what the files alone cannot (unique names, a closing default).
    pub fn new(rules: Vec<Rule>, salt: Option<&str>) -> Result<Self, RulesError> {
        let options = RuleOptions {
            salt: salt.map(str::to_string),
            ..RuleOptions::default()
        };
        Self::with_options(rules, options, "-".into())
    }

    /// Like [`RuleSet::new`], with every option and a version name.
    pub fn with_options(
        rules: Vec<Rule>,
        options: RuleOptions,
        version: String,
    ) -> Result<Self, RulesError> {
        let errors = check_set(&rules, Path::new("(rule set)"));
        if !errors.is_empty() {
            return Err(RulesError(errors));
        }
        Ok(Self::checked(rules, options, version))
    }

    /// Loads and validates every rule file of `dir` (the set checks included).
    pub fn load(dir: &Path, salt: Option<&str>) -> Result<Self, RulesError> {
        let options = RuleOptions {
            salt: salt.map(str::to_string),
            ..RuleOptions::default()
        };
        Self::load_with(dir, &options)
    }

    /// Loads `dir` with the given options.
    pub fn load_with(dir: &Path, options: &RuleOptions) -> Result<Self, RulesError> {
        let files = read_dir(dir).map_err(RulesError)?;
        let (rules, redaction) = parse_all(dir, &files).map_err(RulesError)?;
        Ok(Self::checked(rules, options.clone(), version(&files)).with_redaction(redaction))
    }

    /// The same set, redacting forwarded spans with `redaction`.
    pub fn with_redaction(mut self, redaction: Option<crate::redact::Redaction>) -> Self {
        self.redaction = redaction.map(Arc::new);
        self
    }

    /// The redaction of forwarded spans, if the directory has a `redaction.yaml`.
    pub fn redaction(&self) -> Option<&crate::redact::Redaction> {
        self.redaction.as_deref()
    }

    fn checked(mut rules: Vec<Rule>, options: RuleOptions, version: String) -> Self {
        let probes = Probes::assign(&mut rules);
        RuleSet {
            probes,
            early: rules.iter().any(|r| r.early),
            early_steady: early_steady(&rules),
            state: rules
                .iter()
                .map(|r| RuleState::new(r, &options.share))
                .collect(),
            rules,
            salt: options
                .salt
                .as_deref()
                .map(|s| xxhash_rust::xxh3::xxh3_64(s.as_bytes())),
            options,
            version,
            clock: Clock::now(),
            redaction: None,
        }
    }

    /// Where a rule stands at tokio's `now` on this set's wall clock (`None`: not time-boxed).
    pub fn phase(&self, rule: &Rule, now: Instant) -> Option<Phase> {
        rule.active.map(|a| a.phase(self.clock.wall(now)))
    }

    /// The rules, in evaluation order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The options the set was built with (the same for every reload).
    pub fn options(&self) -> &RuleOptions {
        &self.options
    }

    /// A hash of the rule files' names and contents.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// This instance's share of the fleet's budgets (the handle of the options: setting it
    /// reaches this set and every set reloaded from the same options).
    pub fn share(&self) -> &Share {
        &self.options.share
    }

    /// Sets this instance's share of the fleet's budgets to `owned` of `total` input
    /// partitions (see [`Share::set`]); every set built from the same options sees it.
    pub fn set_share(&self, owned: usize, total: usize) {
        self.options.share.set(owned, total);
    }

    /// The marks of the rule that kept a forwarded trace (`marks:`), to append after the
    /// configured marking; `None` for a dropped trace (in shadow mode too) or a rule without
    /// marks. A late span finds its rule by the name its decision logged.
    pub fn rule_marks(&self, decision: &Decision) -> Option<&Marks> {
        let rule = match decision {
            Decision::Keep { rule, .. }
            | Decision::Shadow {
                rule, keep: true, ..
            } => rule,
            _ => return None,
        };
        let i = self.rules.iter().position(|r| r.name == *rule)?;
        self.state[i].marks.as_ref()
    }

    /// The marking of kept spans, if configured.
    pub fn marking(&self) -> Option<&Marking> {
        self.options.marking.as_ref()
    }

    /// Whether sample rates are computed on a salted hash of the trace id rather than on its
    /// own randomness.
    pub fn salted(&self) -> bool {
        self.salt.is_some()
    }

    /// What `rules check` warns about: rules that load but cannot do what they say.
    pub fn warnings(&self) -> Vec<RuleError> {
        lint::lint(&self.rules)
    }

    /// The first rule whose conditions hold and that decides (not a factor); neither the
    /// stateful outcomes nor the rules' time boxes are consulted.
    pub fn matching(&self, trace: &TraceView<'_>) -> &Rule {
        self.rules
            .iter()
            .filter(|r| !matches!(r.outcome, Outcome::Factor { .. }))
            .find(|r| r.condition.as_ref().is_none_or(|c| c.eval(trace)))
            // `new` guarantees a final rule without conditions.
            .unwrap_or_else(|| &self.rules[self.rules.len() - 1])
    }

    /// Decides a trace now (tokio's clock).
    pub fn decide(&self, trace: &TraceView<'_>) -> Decision {
        self.decide_at(trace, Instant::now())
    }

    /// Decides a trace at `now`: the first matching rule's outcome, with the mode applied,
    /// and counts it for the per-rule metrics.
    pub fn decide_at(&self, trace: &impl Evaluate, now: Instant) -> Decision {
        let v = self.verdict(trace, now);
        let counts = &self.state[v.rule].counts;
        let spans = u64::from(trace.span_count());
        let result = if v.keep { KEPT } else { DROPPED };
        counts.traces[result].fetch_add(1, Ordering::Relaxed);
        counts.spans[result].fetch_add(spans, Ordering::Relaxed);
        let rule = self.rules[v.rule].name.clone();
        match (self.options.mode, v.keep) {
            (Mode::Shadow, keep) => Decision::Shadow {
                rule,
                keep,
                sample_rate: v.sample_rate,
            },
            (Mode::Enforce, true) => Decision::Keep {
                rule,
                sample_rate: v.sample_rate,
            },
            (Mode::Enforce, false) => Decision::Drop { rule },
        }
    }

    /// Which rule decides the trace, and how. Counts the matches (including rate-limited
    /// traces that fall through, and factors) but not the outcome.
    pub fn verdict(&self, trace: &impl Evaluate, now: Instant) -> Verdict {
        let spans = u64::from(trace.span_count());
        // The product of the factors of the factor rules matched so far.
        let mut factor = 1.0f64;
        for (i, rule) in self.rules.iter().enumerate() {
            if rule
                .active
                .is_some_and(|a| a.phase(self.clock.wall(now)) != Phase::Active)
            {
                continue; // not yet, or retired
            }
            if !rule.condition.as_ref().is_none_or(|c| trace.holds(c)) {
                continue;
            }
            let state = &self.state[i];
            state.counts.traces[MATCHED].fetch_add(1, Ordering::Relaxed);
            state.counts.spans[MATCHED].fetch_add(spans, Ordering::Relaxed);
            if let Outcome::Factor { factor: f } = rule.outcome {
                factor *= f;
                continue;
            }
            if state.minimum.as_ref().is_some_and(|m| m.try_take(now)) {
                // Within the window's minimum: kept whole, standing for itself.
                return Verdict {
                    rule: i,
                    keep: true,
                    sample_rate: 1,
                    unboosted: None,
                    minimum: true,
                };
            }
            // The outcome's own rate, before the factors.
            let (keep, sample_rate) = match &rule.outcome {
                Outcome::Keep { sample_rate } => match (rule.decay_to, rule.active) {
                    (Some(to), Some(a)) => {
                        (true, a.decayed(*sample_rate, to, self.clock.wall(now)))
                    }
                    _ => (true, *sample_rate),
                },
                Outcome::Drop => (false, 1),
                Outcome::RateLimit { .. } => {
                    let allowed = state.limiter.as_ref().is_some_and(|l| l.try_take(now));
                    if !allowed {
                        continue; // over the limit: the next rule decides
                    }
                    // Traces over the limit are decided by the later rules, each counted
                    // there: the ones kept here stand for themselves only.
                    (true, 1)
                }
                Outcome::Throughput(spec) => {
                    let key = trace.key(&spec.keys);
                    (
                        true,
                        state.throughput.as_ref().map_or(1, |t| t.rate(key, now)),
                    )
                }
                Outcome::Dynamic(spec) => {
                    let key = trace.key(&spec.keys);
                    (true, state.goal.as_ref().map_or(1, |g| g.rate(key, now)))
                }
                Outcome::Factor { .. } => continue, // taken above
            };
            // A sampled outcome (keep, throughput, dynamic) keeps 1 in its rate divided by
            // the factors; a rate limit keeps whole and a drop drops, whatever the factors.
            let sampled = keep && !matches!(rule.outcome, Outcome::RateLimit { .. });
            let (keep, sample_rate, unboosted) = if sampled {
                let boosted = boost(sample_rate, factor);
                (
                    self.sampled(&trace.id(), boosted),
                    boosted,
                    (boosted != sample_rate).then_some(sample_rate),
                )
            } else {
                (keep, sample_rate, None)
            };
            if keep && rule.max_per_second.is_some() {
                let allowed = state.limiter.as_ref().is_some_and(|l| l.try_take(now));
                if !allowed {
                    // Over `max_traces_per_second`: the next rule decides, as for a rate
                    // limit. The traces the sample left out are dropped here.
                    continue;
                }
            }
            return Verdict {
                rule: i,
                keep,
                sample_rate,
                unboosted,
                minimum: false,
            };
        }
        // Unreachable for a checked set (its default rule matches everything and is never
        // a rate limit); drop rather than panic.
        Verdict {
            rule: self.rules.len() - 1,
            keep: false,
            sample_rate: 1,
            unboosted: None,
            minimum: false,
        }
    }

    /// Whether a trace falls in the kept 1-in-`rate`: the trace id's 56 random bits (or their
    /// salted hash) against the threshold, as in OpenTelemetry's consistent probability
    /// sampling. Every instance computes the same answer.
    pub fn sampled(&self, id: &TraceId, rate: u32) -> bool {
        if rate <= 1 {
            return true;
        }
        let r = match self.salt {
            None => id.randomness(),
            Some(salt) => xxhash_rust::xxh3::xxh3_64_with_seed(&id.0, salt) >> 8,
        };
        r >= crate::otlp::mark::threshold(rate)
    }

    /// Adds the per-rule counts gathered since the last flush to the metrics, in bulk.
    pub fn flush_metrics(&self) {
        if let Some(r) = &self.redaction {
            r.flush_metrics();
        }
        let wall = self.clock.wall(Instant::now());
        for (rule, state) in self.rules.iter().zip(&self.state) {
            let active = rule.active.is_none_or(|a| a.phase(wall) == Phase::Active);
            metrics::gauge!(m::RULE_ACTIVE, "rule" => rule.name.to_string())
                .set(f64::from(u8::from(active)));
            for (i, result) in RESULTS.iter().enumerate() {
                let traces = state.counts.traces[i].swap(0, Ordering::Relaxed);
                if traces > 0 {
                    metrics::counter!(m::RULE_TRACES, "rule" => rule.name.to_string(), "result" => *result)
                        .increment(traces);
                }
                let spans = state.counts.spans[i].swap(0, Ordering::Relaxed);
                if spans > 0 {
                    metrics::counter!(m::RULE_SPANS, "rule" => rule.name.to_string(), "result" => *result)
                        .increment(spans);
                }
            }
        }
    }
}

/// The rules and the redaction of a directory's files, every error of both reported.
fn parse_all(
    dir: &Path,
    files: &[ReadFile],
) -> Result<(Vec<Rule>, Option<crate::redact::Redaction>), Vec<RuleError>> {
    match (dir::parse_files(dir, files), crate::redact::load(files)) {
        (Ok(rules), Ok(redaction)) => Ok((rules, redaction)),
        (rules, redaction) => Err(rules
            .err()
            .unwrap_or_default()
            .into_iter()
            .chain(redaction.err().unwrap_or_default())
            .collect()),
    }
}

#[cfg(test)]
mod boost_tests;
#[cfg(test)]
mod dir_tests;
#[cfg(test)]
mod early_tests;
#[cfg(test)]
mod language_tests;
#[cfg(test)]
mod seen_tests;
#[cfg(test)]
mod tests;
