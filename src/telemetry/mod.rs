//! The process's own telemetry: every metric tailsift exposes, in one catalog, and the parts
//! that compute the less simple ones.
//!
//! - [`catalog`]: one row per metric (name, kind, unit, help, labels, histogram buckets). The
//!   descriptions given to the recorder ([`describe`]), the series registered at zero at start
//!   ([`init_series`], [`init_rules`]), the histogram buckets ([`install`]), the `# HELP` of the
//!   series rendered at scrape time ([`render`]) and the table in docs/metrics.md all derive
//!   from it; callers use its name constants (`telemetry::TRACES_DECIDED`).
//! - [`labels`]: the fixed label values as enums (`Outcome::Kept`), never string literals.
//! - [`red`]: rate, errors and duration per service and operation from every span.
//! - [`exemplars`]: the RED metrics' exemplars, taken only from kept traces.
//! - [`openmetrics`]: `/metrics` in OpenMetrics text, with those exemplars, when asked for.
//! - [`broken`]: broken traces at decision time: orphan spans per service, missing roots.
//! - [`process`]: the standard `process_*` metrics, read from `/proc` at scrape time.
//!
//! Labels come from small fixed sets (topic names from the config, rule names from the rule
//! files, the words of [`labels`]; services and operations capped), never from trace data.
//! Counting happens in bulk: per message, per decider tick, per produced message; never per
//! span.

use std::fmt::Write;
use std::sync::OnceLock;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub mod broken;
pub mod catalog;
pub mod exemplars;
pub mod labels;
pub mod openmetrics;
pub mod process;
pub mod red;

pub use catalog::*;
pub use labels::*;

/// The Prometheus type of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (`_total`).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations in buckets.
    Histogram,
}

impl Kind {
    /// The name in a `# TYPE` line.
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// How a metric reaches `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposed {
    /// Recorded through the `metrics` recorder.
    Recorder,
    /// Written into the text at each scrape by [`render`]: a value the recorder cannot hold
    /// (fractional CPU seconds) or a series it cannot retire (the rules' version on reload).
    Scrape,
}

/// The values a label takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Values {
    /// A fixed set of words: every one is registered at zero at start.
    Fixed(&'static [&'static str]),
    /// The input topics of the configuration (registered at start).
    Topics,
    /// The names of the loaded rules (registered at start and on reload).
    Rules,
    /// Values met at run time (partitions, services, operations, versions): the series
    /// appears when first recorded. The note says what they are, for the docs.
    Seen(&'static str),
}

/// One label of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label {
    /// The label's name.
    pub name: &'static str,
    /// The values it takes.
    pub values: Values,
}

impl Label {
    /// A label whose values are the given words.
    pub const fn fixed(name: &'static str, words: &'static [&'static str]) -> Self {
        Label {
            name,
            values: Values::Fixed(words),
        }
    }

    /// A label whose values are the input topics.
    pub const fn topics(name: &'static str) -> Self {
        Label {
            name,
            values: Values::Topics,
        }
    }

    /// A label whose values are the rule names.
    pub const fn rules(name: &'static str) -> Self {
        Label {
            name,
            values: Values::Rules,
        }
    }

    /// A label whose values are met at run time; `note` says what they are.
    pub const fn seen(name: &'static str, note: &'static str) -> Self {
        Label {
            name,
            values: Values::Seen(note),
        }
    }
}

/// A metric: one row of [`CATALOG`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricDef {
    /// The full name, `tailsift_` prefixed (`process_` for the standard process metrics).
    pub name: &'static str,
    /// Its Prometheus type.
    pub kind: Kind,
    /// Its unit.
    pub unit: Unit,
    /// Its labels, in the order of the docs.
    pub labels: &'static [Label],
    /// The bucket bounds of a histogram (the exporter's defaults if `None`).
    pub buckets: Option<&'static [f64]>,
    /// How it reaches `/metrics`.
    pub exposed: Exposed,
    /// Its description: the `# HELP` line and the docs.
    pub help: &'static str,
}

/// The catalog row of `name`.
pub fn def(name: &str) -> Option<&'static MetricDef> {
    CATALOG.iter().find(|d| d.name == name)
}

/// Registers descriptions and units with the installed recorder.
pub fn describe() {
    for d in CATALOG.iter().filter(|d| d.exposed == Exposed::Recorder) {
        match d.kind {
            Kind::Counter => describe_counter!(d.name, d.unit, d.help),
            Kind::Gauge => describe_gauge!(d.name, d.unit, d.help),
            Kind::Histogram => describe_histogram!(d.name, d.unit, d.help),
        }
    }
}

/// Registers every series whose labels are known at start, at zero, so that `/metrics` shows
/// the whole catalog from the first scrape and `rate()` has a starting point (a counter that
/// appears at its first increment hides that increment from `rate()`). Series labelled by
/// partition, service or operation appear when those are first seen; the per-rule series are
/// [`init_rules`]'.
pub fn init_series(topics: &[String], rules: &[crate::rules::Rule]) {
    for d in CATALOG.iter().filter(|d| d.exposed == Exposed::Recorder) {
        let mut sets: Vec<Vec<(&'static str, String)>> = vec![Vec::new()];
        for l in d.labels {
            let values: Vec<String> = match l.values {
                Values::Fixed(words) => words.iter().map(|w| w.to_string()).collect(),
                Values::Topics => topics.to_vec(),
                Values::Rules | Values::Seen(_) => Vec::new(),
            };
            sets = sets
                .iter()
                .flat_map(|set| {
                    values.iter().map(move |v| {
                        let mut s = set.clone();
                        s.push((l.name, v.clone()));
                        s
                    })
                })
                .collect();
        }
        for labels in &sets {
            register(d, labels);
        }
    }
    init_rules(rules);
}

/// Registers one series at zero.
fn register(d: &MetricDef, labels: &[(&'static str, String)]) {
    match d.kind {
        Kind::Counter => metrics::counter!(d.name, labels).increment(0),
        Kind::Gauge => metrics::gauge!(d.name, labels).set(0.0),
        Kind::Histogram => {
            let _ = metrics::histogram!(d.name, labels);
        }
    }
}

/// The outcomes a rule can give, hence its only `outcome` (and `result`) series: a drop rule
/// never keeps; a rule keeping every trace (sample rate 1) or a rate limit (whose traces over
/// the limit fall through to the next rule, counted there) never drops. In shadow mode the
/// outcome counted is still the rule's verdict.
pub fn outcomes(rule: &crate::rules::Rule) -> &'static [Outcome] {
    use crate::rules::Outcome as Rule;
    match rule.outcome {
        Rule::Drop => &[Outcome::Dropped],
        Rule::Keep { sample_rate } if sample_rate <= 1 => &[Outcome::Kept],
        Rule::RateLimit { .. } => &[Outcome::Kept],
        Rule::Keep { .. } | Rule::Throughput(_) => &[Outcome::Kept, Outcome::Dropped],
    }
}

/// Registers the per-rule series of a (re)loaded rule set at zero: for each rule, the
/// outcomes it can give ([`outcomes`]) by every trigger, and its matches.
pub fn init_rules(rules: &[crate::rules::Rule]) {
    for rule in rules {
        let name = rule.name.to_string();
        for &outcome in outcomes(rule) {
            for trigger in crate::decision::Trigger::ALL {
                metrics::counter!(TRACES_DECIDED,
                    "rule" => name.clone(), "outcome" => outcome, "trigger" => trigger.as_str())
                .increment(0);
            }
        }
        let results =
            std::iter::once(RuleResult::Matched).chain(outcomes(rule).iter().map(|o| match o {
                Outcome::Kept => RuleResult::Kept,
                Outcome::Dropped => RuleResult::Dropped,
            }));
        for result in results {
            metrics::counter!(RULE_TRACES, "rule" => name.clone(), "result" => result).increment(0);
            metrics::counter!(RULE_SPANS, "rule" => name.clone(), "result" => result).increment(0);
        }
    }
}

/// The recorder's builder, with the catalog's histogram buckets.
pub(crate) fn builder() -> PrometheusBuilder {
    let mut b = PrometheusBuilder::new();
    for d in CATALOG {
        if let Some(le) = d.buckets {
            // Fails only on an empty bucket list, which a unit test rules out.
            b = match b.set_buckets_for_metric(Matcher::Full(d.name.into()), le) {
                Ok(next) => next,
                Err(_) => PrometheusBuilder::new(),
            };
        }
    }
    b
}

static RULES_INFO_VALUE: std::sync::Mutex<Option<(String, &'static str)>> =
    std::sync::Mutex::new(None);

/// Records the loaded rules' version and mode for [`RULES_INFO`].
pub fn set_rules_info(version: &str, mode: &'static str) {
    *RULES_INFO_VALUE.lock().unwrap_or_else(|e| e.into_inner()) = Some((version.to_string(), mode));
}

/// Writes the `# HELP` and `# TYPE` lines of a catalogued metric.
fn write_header(out: &mut String, name: &str) {
    if let Some(d) = def(name) {
        let _ = write!(
            out,
            "# HELP {name} {}\n# TYPE {name} {}\n",
            d.help,
            d.kind.as_str()
        );
    }
}

/// Appends the [`RULES_INFO`] series: rendered here, not through the recorder, because it has
/// one series at a time whose `version` label changes on reload, and the recorder cannot
/// retire a series.
fn render_rules_info(out: &mut String) {
    let v = RULES_INFO_VALUE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((version, mode)) = v.as_ref() {
        write_header(out, RULES_INFO);
        let _ = writeln!(
            out,
            "{RULES_INFO}{{version=\"{version}\",mode=\"{mode}\"}} 1"
        );
    }
}

/// The `/metrics` body: what the recorder holds, then the series rendered at scrape time.
pub fn render(handle: &PrometheusHandle) -> String {
    let mut body = handle.render();
    render_rules_info(&mut body);
    process::render(&mut body);
    body
}

/// The git commit of this build: `TAILSIFT_GIT_COMMIT` in the environment of the build (the
/// Dockerfile's build argument of that name), else `unknown`.
pub const GIT_COMMIT: &str = match option_env!("TAILSIFT_GIT_COMMIT") {
    Some(c) if !c.is_empty() => c,
    _ => "unknown",
};

/// Installs the Prometheus recorder once per process and returns its handle.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = builder().build_recorder();
            let handle = recorder.handle();
            // Histogram samples wait in the recorder until drained; drain them even when
            // nothing scrapes, so memory stays bounded.
            let upkeep = handle.clone();
            let _ = std::thread::Builder::new()
                .name("tailsift-metrics".into())
                .spawn(move || loop {
                    std::thread::sleep(std::time::Duration::from_secs(5));
                    upkeep.run_upkeep();
                });
            // Fails only if another recorder is installed (a test harness); our handle then
            // renders nothing, which the tests would show.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            metrics::gauge!(BUILD_INFO,
                "version" => env!("CARGO_PKG_VERSION"), "commit" => GIT_COMMIT)
            .set(1.0);
            handle.run_upkeep(); // publishes the descriptions
            handle
        })
        .clone()
}

#[cfg(test)]
mod tests;
