//! Sampling rules: files of YAML, compiled once, evaluated per trace; first match wins.
//!
//! A rule is a name, optional conditions and an outcome (`keep` with a sample rate, or `drop`).
//! The last rule must have no conditions: it is the default. Sampling is deterministic on the
//! trace id, so every instance (and every late span) agrees on a trace.

mod condition;
mod parse;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

pub use condition::{Cond, SpanCond};
pub use parse::{load_dir, parse_file};

use crate::buffer::TraceEntry;
use crate::decision::Decision;
use crate::otlp::view::{ContextView, SpanView};
use crate::otlp::wire::Fields;
use crate::otlp::TraceId;

/// A rule-file mistake, located by file, rule and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: rule {rule}: {field}: {message}")]
pub struct RuleError {
    pub file: String,
    pub rule: String,
    pub field: String,
    pub message: String,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Keep 1 in `sample_rate` of the matching traces, chosen by trace id.
    Keep {
        sample_rate: u32,
    },
    Drop,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: Arc<str>,
    pub description: Option<String>,
    /// `None` matches every trace (the default rule).
    pub condition: Option<Cond>,
    pub outcome: Outcome,
    /// The file the rule came from, for messages.
    pub file: String,
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

impl<'a> TraceView<'a> {
    pub fn new(id: TraceId, entry: &'a TraceEntry) -> Self {
        let mut spans = Vec::with_capacity(entry.span_count as usize);
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

/// The loaded rules, immutable; a reload builds a new set and swaps it in whole.
#[derive(Debug, Clone)]
pub struct RuleSet {
    rules: Vec<Rule>,
    salt: Option<u64>,
}

impl RuleSet {
    /// Builds a set, checking what the files alone cannot (unique names, a closing default).
    pub fn new(rules: Vec<Rule>, salt: Option<&str>) -> Result<Self, RulesError> {
        let errors = parse::check_set(&rules, Path::new("(rule set)"));
        if !errors.is_empty() {
            return Err(RulesError(errors));
        }
        Ok(Self::checked(rules, salt))
    }

    /// Loads and validates every rule file of `dir` (the set checks included).
    pub fn load(dir: &Path, salt: Option<&str>) -> Result<Self, RulesError> {
        let rules = load_dir(dir).map_err(RulesError)?;
        Ok(Self::checked(rules, salt))
    }

    fn checked(rules: Vec<Rule>, salt: Option<&str>) -> Self {
        RuleSet {
            rules,
            salt: salt.map(|s| xxhash_rust::xxh3::xxh3_64(s.as_bytes())),
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The first rule whose conditions hold.
    pub fn matching(&self, trace: &TraceView<'_>) -> &Rule {
        self.rules
            .iter()
            .find(|r| r.condition.as_ref().is_none_or(|c| c.eval(trace)))
            // `new` guarantees a final rule without conditions.
            .unwrap_or_else(|| &self.rules[self.rules.len() - 1])
    }

    /// Decides a trace: the first matching rule's outcome, sampled by trace id.
    pub fn decide(&self, trace: &TraceView<'_>) -> Decision {
        let rule = self.matching(trace);
        match rule.outcome {
            Outcome::Keep { sample_rate } if self.sampled(&trace.id, sample_rate) => {
                Decision::Keep {
                    rule: rule.name.clone(),
                    sample_rate,
                }
            }
            _ => Decision::Drop {
                rule: rule.name.clone(),
            },
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
        const MAX: u64 = 1 << 56;
        r >= MAX - MAX / u64::from(rate)
    }
}

#[cfg(test)]
mod tests;
