//! Sampling rules: files of YAML, compiled once, evaluated per trace; first match wins.
//!
//! # Layout
//! - `yaml`: a YAML tree that keeps line numbers, for error messages.
//! - `expr`: condition expressions (`FIELD OPERATOR VALUE`, groups), type-checked at load.
//! - `file`: rule files and directories: rules, outcomes, every error located.
//! - `condition`: compiled conditions and their evaluation.
//! - `dynamic`: the stateful outcomes (rate limit, throughput target).
//! - `explain`: which conditions held, rule by rule (`tailsift rules explain`, test failures).
//! - `cases`: trace cases with expected outcomes (`tailsift rules test`).
//! - `reload`: watch the rules directory (and SIGHUP), swap valid changes in atomically.
//!
//! A rule is a name, optional conditions and an outcome: `keep` (with a sample rate), `drop`,
//! `rate_limit` or `throughput`. The last rule must have no conditions: it is the default.
//! Sampling is deterministic on the trace id, so every instance (and late span) agrees.

pub mod cases;
mod condition;
mod dynamic;
pub mod explain;
mod expr;
mod file;
pub mod reload;
pub(crate) mod yaml;

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

pub use condition::{Cond, KeyField, SpanCond};
pub use dynamic::{RateLimiter, Throughput};
pub(crate) use expr::did_you_mean;
pub use file::{
    check_set, load_dir, parse_file, parse_files, read_dir, rule_files, skipped_files, version,
    ReadFile,
};

use crate::buffer::TraceEntry;
use crate::decision::Decision;
use crate::otlp::mark::Marking;
use crate::otlp::view::{ContextView, SpanView};
use crate::otlp::wire::Fields;
use crate::otlp::TraceId;
use crate::telemetry as m;

/// A rule-file mistake, located by file, line, rule and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct RuleError {
    pub file: String,
    /// 1-based; 0 when the mistake has no line (a missing file, an empty directory).
    pub line: usize,
    pub rule: String,
    pub field: String,
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
    /// Target traces per second per key (per instance).
    pub per_second: f64,
    /// The fields whose values make a trace's key.
    pub keys: Vec<KeyField>,
    /// How often each key's rate is recomputed from its recent traffic.
    pub window: Duration,
    /// Distinct keys tracked; keys past the bound share one rate.
    pub max_keys: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Keep 1 in `sample_rate` of the matching traces, chosen by trace id.
    Keep {
        sample_rate: u32,
    },
    Drop,
    /// Keep at most `per_second` matching traces per second on this instance; the rest fall
    /// through to the next rule.
    RateLimit {
        per_second: f64,
    },
    /// Keep about `per_second` traces per second per key, each key at its own sample rate.
    Throughput(ThroughputSpec),
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
        }
    }
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: Arc<str>,
    pub description: Option<String>,
    /// `None` matches every trace (the default rule).
    pub condition: Option<Cond>,
    pub outcome: Outcome,
    /// The file the rule came from and the line it starts on, for messages.
    pub file: String,
    pub line: usize,
}

/// A trace as the rules see it: every span parsed once, with its resource and scope.
pub struct TraceView<'a> {
    pub id: TraceId,
    pub spans: Vec<(SpanView<'a>, ContextView<'a>)>,
    /// Index into `spans` of the root span, if it arrived.
    pub root: Option<usize>,
    pub duration_nanos: u64,
    pub span_count: u32,
    pub has_error: bool,
}

/// A view's spans; each decider thread keeps one such vector to reuse from trace to trace.
type Spans<'a> = Vec<(SpanView<'a>, ContextView<'a>)>;

/// Spans kept for reuse at most: a giant trace's vector is not held on to.
const REUSED_SPANS_MAX: usize = 4096;

thread_local! {
    /// The vector the last view on this thread gave back (empty), so that building a view
    /// allocates nothing in the steady state.
    static REUSED_SPANS: std::cell::Cell<Spans<'static>> = const { std::cell::Cell::new(Vec::new()) };
}

impl<'a> TraceView<'a> {
    pub fn new(id: TraceId, entry: &'a TraceEntry) -> Self {
        // An empty vector of any lifetime coerces to a shorter one.
        let mut spans: Spans<'a> = REUSED_SPANS.try_with(|r| r.take()).unwrap_or_default();
        spans.reserve(entry.span_count as usize);
        for g in &entry.groups {
            let ctx = ContextView::new(&g.ctx);
            for f in Fields::new(&g.spans) {
                let Some(bytes) = f.ok().and_then(|f| f.value.as_bytes()) else {
                    break;
                };
                // Spans were walked once when they arrived; one that fails here is skipped.
                if let Ok(span) = SpanView::parse(bytes) {
                    spans.push((span, ctx));
                }
            }
        }
        let root = spans.iter().position(|(s, _)| s.is_root());
        TraceView {
            id,
            spans,
            root,
            duration_nanos: entry.duration_nanos(),
            span_count: entry.span_count,
            has_error: entry.has_error,
        }
    }
}

impl Drop for TraceView<'_> {
    fn drop(&mut self) {
        let mut spans = std::mem::take(&mut self.spans);
        if spans.capacity() > REUSED_SPANS_MAX {
            return;
        }
        spans.clear();
        // Forget the lifetime of the (now empty) vector, keeping its allocation: collecting
        // an emptied vector's iterator into one of the same layout reuses its buffer.
        let spans: Spans<'static> = spans.into_iter().map(|_| unreachable!()).collect();
        let _ = REUSED_SPANS.try_with(|r| r.set(spans));
    }
}

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
    pub mode: Mode,
    /// How kept spans are marked; `None` forwards them byte for byte.
    pub marking: Option<Marking>,
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
}

impl RuleState {
    fn new(rule: &Rule) -> Self {
        RuleState {
            counts: Counts::default(),
            limiter: match rule.outcome {
                Outcome::RateLimit { per_second } => Some(RateLimiter::new(per_second)),
                _ => None,
            },
            throughput: match &rule.outcome {
                Outcome::Throughput(spec) => Some(Throughput::new(spec)),
                _ => None,
            },
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
    /// `redaction.yaml` of the same directory: loaded, swapped and versioned with the rules.
    redaction: Option<Arc<crate::redact::Redaction>>,
}

/// A rule's verdict on a trace, before the mode applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Index of the deciding rule.
    pub rule: usize,
    pub keep: bool,
    /// The sample rate the trace was (or would have been) kept at: it stands for this many.
    pub sample_rate: u32,
}

impl Clone for RuleSet {
    /// The same rules with fresh state (counters, rate limits, throughput tables).
    fn clone(&self) -> Self {
        RuleSet {
            rules: self.rules.clone(),
            state: self.rules.iter().map(RuleState::new).collect(),
            salt: self.salt,
            options: self.options.clone(),
            version: self.version.clone(),
            redaction: self.redaction.as_deref().map(|r| Arc::new(r.clone())),
        }
    }
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

    fn checked(rules: Vec<Rule>, options: RuleOptions, version: String) -> Self {
        RuleSet {
            state: rules.iter().map(RuleState::new).collect(),
            rules,
            salt: options
                .salt
                .as_deref()
                .map(|s| xxhash_rust::xxh3::xxh3_64(s.as_bytes())),
            options,
            version,
            redaction: None,
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn options(&self) -> &RuleOptions {
        &self.options
    }

    /// A hash of the rule files' names and contents.
    pub fn version(&self) -> &str {
        &self.version
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

    /// The first rule whose conditions hold (the stateful outcomes are not consulted).
    pub fn matching(&self, trace: &TraceView<'_>) -> &Rule {
        self.rules
            .iter()
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
    pub fn decide_at(&self, trace: &TraceView<'_>, now: Instant) -> Decision {
        let v = self.verdict(trace, now);
        let counts = &self.state[v.rule].counts;
        let spans = u64::from(trace.span_count);
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
    /// traces that fall through) but not the outcome.
    pub fn verdict(&self, trace: &TraceView<'_>, now: Instant) -> Verdict {
        let spans = u64::from(trace.span_count);
        for (i, rule) in self.rules.iter().enumerate() {
            if !rule.condition.as_ref().is_none_or(|c| c.eval(trace)) {
                continue;
            }
            let state = &self.state[i];
            state.counts.traces[MATCHED].fetch_add(1, Ordering::Relaxed);
            state.counts.spans[MATCHED].fetch_add(spans, Ordering::Relaxed);
            let (keep, sample_rate) = match &rule.outcome {
                Outcome::Keep { sample_rate } => {
                    (self.sampled(&trace.id, *sample_rate), *sample_rate)
                }
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
                    let mut h = xxhash_rust::xxh3::Xxh3::new();
                    for k in &spec.keys {
                        k.hash_into(trace, &mut h);
                    }
                    let rate = state
                        .throughput
                        .as_ref()
                        .map_or(1, |t| t.rate(h.digest(), now));
                    (self.sampled(&trace.id, rate), rate)
                }
            };
            return Verdict {
                rule: i,
                keep,
                sample_rate,
            };
        }
        // Unreachable for a checked set (its default rule matches everything and is never
        // a rate limit); drop rather than panic.
        Verdict {
            rule: self.rules.len() - 1,
            keep: false,
            sample_rate: 1,
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
        for (rule, state) in self.rules.iter().zip(&self.state) {
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
    match (file::parse_files(dir, files), crate::redact::load(files)) {
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
mod tests;
