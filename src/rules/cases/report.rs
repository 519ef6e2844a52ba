//! Reporting cases: what a run found, and how an expected and an actual outcome are shown.

use std::collections::BTreeMap;

use super::{AttrValue, Expect, Expected};
use crate::rules::{MarkValue, RuleSet, Verdict};

/// How `rules test` and `rules explain` say when a trace is decided.
pub fn show_when(at: &Option<(usize, usize, String)>) -> String {
    match at {
        Some((k, n, name)) => {
            format!("decided early (trigger early), when span {k} of {n} (`{name}`) arrives")
        }
        None => "decided when the trace completes (no early rule is sure before)".into(),
    }
}

/// The result of running case files.
#[derive(Debug, Default)]
pub struct Report {
    /// Cases whose expectations held.
    pub passed: usize,
    /// Cases that failed, or could not be run (a bad file, a trace that cannot be built).
    pub failed: usize,
    /// What a test runner prints.
    pub text: String,
}

pub(super) fn expectation(e: &Expect) -> String {
    let mut parts = Vec::new();
    if let Some(r) = &e.rule {
        parts.push(format!("rule `{r}`"));
    }
    if let Some(o) = e.outcome {
        parts.push(if o == Expected::Keep { "keep" } else { "drop" }.to_string());
    }
    if let Some(n) = e.sample_rate {
        parts.push(format!("sample rate {n}"));
    }
    if let Some(m) = &e.marks {
        parts.push(format!("marks {}", show_marks(m)));
    }
    if let Some(f) = &e.factors {
        parts.push(format!("factors [{}]", f.join(", ")));
    }
    parts.join(", ")
}

/// The marks a verdict adds to the trace's spans: its rule's, when it keeps.
pub(super) fn marks_of(set: &RuleSet, v: &Verdict) -> BTreeMap<String, AttrValue> {
    if !v.keep {
        return BTreeMap::new();
    }
    set.rules()[v.rule]
        .marks
        .iter()
        .map(|(k, m)| {
            let a = match m {
                MarkValue::Str(s) => AttrValue::Str(s.clone()),
                MarkValue::Int(n) => AttrValue::Int(*n),
                MarkValue::Double(d) => AttrValue::Double(*d),
                MarkValue::Bool(b) => AttrValue::Bool(*b),
            };
            (k.clone(), a)
        })
        .collect()
}

fn show_marks(m: &BTreeMap<String, AttrValue>) -> String {
    let parts: Vec<String> = m
        .iter()
        .map(|(k, v)| match v {
            AttrValue::Str(s) => format!("{k}: {s:?}"),
            AttrValue::Bool(b) => format!("{k}: {b}"),
            AttrValue::Int(n) => format!("{k}: {n}"),
            AttrValue::Double(d) => format!("{k}: {d}"),
        })
        .collect();
    format!("{{{}}}", parts.join(", "))
}

pub(super) fn got(set: &RuleSet, v: &Verdict, factors: &[String]) -> String {
    let mut out = format!(
        "rule `{}`, {}, sample rate {}, marks {}",
        set.rules()[v.rule].name,
        if v.keep { "keep" } else { "drop" },
        v.sample_rate,
        show_marks(&marks_of(set, v))
    );
    if !factors.is_empty() {
        out += &format!(", factors [{}]", factors.join(", "));
    }
    out
}
