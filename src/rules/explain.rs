//! Rule by rule, which conditions held for a trace: for `tailsift rules explain` and for the
//! failures of `tailsift rules test`.

use std::fmt::Write;

use tokio::time::Instant;

use super::condition::{Cond, SpanCond, SpanField, TraceField, Val};
use super::{Outcome, Rule, RuleSet, TraceView, Verdict};
use crate::otlp::view::{ContextView, SpanView};

fn mark(held: bool) -> &'static str {
    if held {
        "✓"
    } else {
        "✗"
    }
}

fn pad(out: &mut String, depth: usize) {
    for _ in 0..depth {
        out.push_str("  ");
    }
}

fn duration(nanos: f64) -> String {
    let ms = nanos / 1e6;
    if ms >= 1000.0 {
        format!("{:.3}s", ms / 1000.0)
    } else {
        format!("{ms:.3}ms")
    }
}

fn show(v: Option<Val<'_>>, is_duration: bool) -> String {
    match v {
        None => "missing".into(),
        Some(Val::Str(s)) => format!("{:?}", String::from_utf8_lossy(s)),
        Some(Val::Num(n)) if is_duration => duration(n),
        Some(Val::Num(n)) => format!("{n}"),
        Some(Val::Bool(b)) => b.to_string(),
        Some(Val::Opaque) => "an array, map or bytes".into(),
    }
}

/// A one-line summary of a trace's facts.
pub fn summary(t: &TraceView<'_>) -> String {
    let root = match t.root.and_then(|i| t.spans.get(i)) {
        Some((s, ctx)) => format!(
            "root `{}` ({})",
            String::from_utf8_lossy(s.name),
            ctx.service_name()
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .unwrap_or_else(|| "no service".into())
        ),
        None => "no root span".into(),
    };
    format!(
        "trace {}: {} spans, {}, {}{}",
        t.id,
        t.span_count,
        duration(t.duration_nanos as f64),
        root,
        if t.has_error { ", has an error" } else { "" }
    )
}

/// A span field's value on one span as explain shows it: every value of a multi-valued field.
fn show_field(f: &SpanField, s: &SpanView<'_>, ctx: &ContextView<'_>) -> String {
    if !f.is_multi() {
        return show(f.value(s, ctx), *f == SpanField::Duration);
    }
    let values = f.values(s);
    if values.is_empty() {
        return "missing: no event or link has it".into();
    }
    let shown: Vec<String> = values.iter().map(|v| show(Some(*v), false)).collect();
    format!("each of [{}]", shown.join(", "))
}

fn span_leaf(c: &SpanCond) -> Option<(&SpanField, &str)> {
    match c {
        SpanCond::Field(f, _, label) => Some((f, label)),
        _ => None,
    }
}

/// Prints a span condition as evaluated on one span.
fn on_span(c: &SpanCond, s: &SpanView<'_>, ctx: &ContextView<'_>, depth: usize, out: &mut String) {
    let held = c.eval(s, ctx);
    pad(out, depth);
    match c {
        SpanCond::Field(f, _, label) => {
            let _ = writeln!(
                out,
                "{} {label}   (is {})",
                mark(held),
                show_field(f, s, ctx)
            );
        }
        SpanCond::All(cs) | SpanCond::Any(cs) => {
            let kind = if matches!(c, SpanCond::All(_)) {
                "all"
            } else {
                "any"
            };
            let _ = writeln!(out, "{} {kind}:", mark(held));
            for c in cs {
                on_span(c, s, ctx, depth + 1, out);
            }
        }
        SpanCond::Not(inner) => {
            let _ = writeln!(out, "{} not:", mark(held));
            on_span(inner, s, ctx, depth + 1, out);
        }
    }
}

/// Prints each part of a span condition with how many spans satisfy it.
fn counts(c: &SpanCond, t: &TraceView<'_>, depth: usize, out: &mut String) {
    let n = t.spans.iter().filter(|(s, ctx)| c.eval(s, ctx)).count();
    pad(out, depth);
    let what = match c {
        SpanCond::Field(_, _, label) => label.to_string(),
        SpanCond::All(_) => "all:".into(),
        SpanCond::Any(_) => "any:".into(),
        SpanCond::Not(_) => "not:".into(),
    };
    let _ = writeln!(
        out,
        "{} {what}   (on {n} of {} spans)",
        mark(n > 0),
        t.spans.len()
    );
    match c {
        SpanCond::All(cs) | SpanCond::Any(cs) => {
            for c in cs {
                counts(c, t, depth + 1, out);
            }
        }
        SpanCond::Not(inner) => counts(inner, t, depth + 1, out),
        SpanCond::Field(..) => {}
    }
}

fn cond(c: &Cond, t: &TraceView<'_>, depth: usize, out: &mut String) {
    let held = c.eval(t);
    pad(out, depth);
    match c {
        Cond::All(cs) | Cond::Any(cs) => {
            let kind = if matches!(c, Cond::All(_)) {
                "all"
            } else {
                "any"
            };
            let _ = writeln!(out, "{} {kind}:", mark(held));
            for c in cs {
                cond(c, t, depth + 1, out);
            }
        }
        Cond::Not(inner) => {
            let _ = writeln!(out, "{} not:", mark(held));
            cond(inner, t, depth + 1, out);
        }
        Cond::Trace(f, _, label) => {
            let _ = writeln!(
                out,
                "{} {label}   (is {})",
                mark(held),
                show(Some(f.value(t)), *f == TraceField::Duration)
            );
        }
        Cond::AnySpan(inner) => match span_leaf(inner) {
            Some((_, label)) => {
                let n = t.spans.iter().filter(|(s, ctx)| inner.eval(s, ctx)).count();
                let _ = writeln!(
                    out,
                    "{} {label}   (on {n} of {} spans)",
                    mark(held),
                    t.spans.len()
                );
            }
            None => {
                let found = t.spans.iter().find(|(s, ctx)| inner.eval(s, ctx));
                match found {
                    Some((s, ctx)) => {
                        let _ = writeln!(
                            out,
                            "{} span: one span satisfies every condition: `{}`",
                            mark(true),
                            String::from_utf8_lossy(s.name)
                        );
                        on_span(inner, s, ctx, depth + 1, out);
                    }
                    None => {
                        let _ = writeln!(out, "{} span: no single span satisfies it", mark(false));
                        counts(inner, t, depth + 1, out);
                    }
                }
            }
        },
        Cond::EverySpan(inner) => every(inner, t, depth, out),
        Cond::Count(inner, _, label) => {
            let n = super::condition::count(inner, t);
            let _ = writeln!(
                out,
                "{} {label}   (is {n}, of {} spans)",
                mark(held),
                t.spans.len()
            );
            counts(inner, t, depth + 1, out);
        }
        Cond::Root(inner) => match t.root.and_then(|i| t.spans.get(i)) {
            None => {
                let what = span_leaf(inner).map_or("root:", |(_, l)| l);
                let _ = writeln!(
                    out,
                    "{} {what}   (the root span has not arrived)",
                    mark(false)
                );
            }
            Some((s, ctx)) => match span_leaf(inner) {
                Some((f, label)) => {
                    let _ = writeln!(
                        out,
                        "{} {label}   (is {})",
                        mark(held),
                        show_field(f, s, ctx)
                    );
                }
                None => {
                    let _ = writeln!(out, "{} root:", mark(held));
                    on_span(inner, s, ctx, depth + 1, out);
                }
            },
        },
    }
}

/// `every:`: all spans pass, or the first that does not, shown condition by condition.
fn every(inner: &SpanCond, t: &TraceView<'_>, depth: usize, out: &mut String) {
    let failing = t
        .spans
        .iter()
        .filter(|(s, ctx)| !inner.eval(s, ctx))
        .count();
    match t.spans.iter().find(|(s, ctx)| !inner.eval(s, ctx)) {
        None => {
            let _ = writeln!(out, "✓ every: all {} spans satisfy it", t.spans.len());
            counts(inner, t, depth + 1, out);
        }
        Some((s, ctx)) => {
            let _ = writeln!(
                out,
                "✗ every: {failing} of {} spans do not; the first, `{}`:",
                t.spans.len(),
                String::from_utf8_lossy(s.name)
            );
            on_span(inner, s, ctx, depth + 1, out);
        }
    }
}

/// Explains one rule's conditions for a trace. Returns whether they hold.
pub fn rule(r: &Rule, t: &TraceView<'_>, depth: usize, out: &mut String) -> bool {
    match &r.condition {
        None => {
            pad(out, depth);
            out.push_str("✓ (no conditions: the default rule)\n");
            true
        }
        Some(c) => {
            cond(c, t, depth, out);
            c.eval(t)
        }
    }
}

/// The verdict a case gets: on a fresh copy of the set's state (a rate limit has its budget,
/// throughput keys are new), after `after` copies of the trace were decided at the same
/// instant. `rules test` and `rules explain` both decide through this, so they agree.
pub fn case_verdict(set: &RuleSet, t: &TraceView<'_>, after: u32) -> Verdict {
    case_verdict_at(set, t, after, None)
}

/// [`case_verdict`] with the wall clock at `at` (a case's `at:`), for time-boxed rules.
pub fn case_verdict_at(
    set: &RuleSet,
    t: &TraceView<'_>,
    after: u32,
    at: Option<std::time::SystemTime>,
) -> Verdict {
    let fresh = fresh_at(set, at);
    let now = Instant::now();
    for _ in 0..after {
        fresh.verdict(t, now);
    }
    fresh.verdict(t, now)
}

/// The factor rules that multiplied the deciding rule's rate in `verdict` (active at the
/// set's clock, or at `at`, with their conditions holding, before the deciding rule).
pub fn factors<'s>(
    set: &'s RuleSet,
    t: &TraceView<'_>,
    verdict: &Verdict,
    at: Option<std::time::SystemTime>,
) -> Vec<&'s Rule> {
    let clock = fresh_at(set, at);
    let now = Instant::now();
    set.rules()[..verdict.rule]
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Factor { .. }))
        .filter(|r| {
            clock
                .phase(r, now)
                .is_none_or(|p| p == super::Phase::Active)
        })
        .filter(|r| r.condition.as_ref().is_none_or(|c| c.eval(t)))
        .collect()
}

/// Explains the whole rule set for a trace, rule by rule, up to the deciding rule, as
/// [`case_verdict`] decides it (`after` copies first).
pub fn explain(set: &RuleSet, t: &TraceView<'_>, after: u32) -> String {
    explain_at(set, t, after, None)
}

/// A fresh copy of the set's state, its wall clock at `at` if given.
fn fresh_at(set: &RuleSet, at: Option<std::time::SystemTime>) -> RuleSet {
    let mut fresh = set.clone();
    if let Some(at) = at {
        fresh.clock = super::Clock::at(at);
    }
    fresh
}

/// [`explain`] with the wall clock at `at` (a case's `at:`).
pub fn explain_at(
    set: &RuleSet,
    t: &TraceView<'_>,
    after: u32,
    at: Option<std::time::SystemTime>,
) -> String {
    let verdict = case_verdict_at(set, t, after, at);
    let clock = fresh_at(set, at);
    let now = Instant::now();
    let mut out = summary(t);
    out.push('\n');
    if after > 0 {
        let _ = writeln!(
            out,
            "(decided after {after} copies of this trace at the same instant: `after: {after}`)"
        );
    }
    for (i, r) in set.rules().iter().enumerate() {
        let _ = writeln!(
            out,
            "rule `{}` ({}:{}) -> {}",
            r.name,
            r.file,
            r.line,
            r.describe()
        );
        if let Some(phase) = clock.phase(r, now).filter(|p| *p != super::Phase::Active) {
            let wall = super::window::show(clock.clock.wall(now));
            let what = if phase == super::Phase::Pending {
                "not active yet"
            } else {
                "retired"
            };
            let _ = writeln!(out, "  => {what} at {wall}: next rule");
            continue;
        }
        let held = rule(r, t, 1, &mut out);
        if let (Some(to), Some(a), true) = (r.decay_to, r.active, held) {
            if let Outcome::Keep { sample_rate } = r.outcome {
                let wall = clock.clock.wall(now);
                let _ = writeln!(
                    out,
                    "  rate at {}: 1 in {} (1 in {sample_rate} at {} decaying to 1 in {to} at {})",
                    super::window::show(wall),
                    a.decayed(sample_rate, to, wall),
                    a.from.map(super::window::show).unwrap_or_default(),
                    a.until.map(super::window::show).unwrap_or_default(),
                );
            }
        }
        if i == verdict.rule {
            let boosted = match verdict.unboosted {
                Some(own) => {
                    format!(": its own 1 in {own}, times the factors of the factor rules above")
                }
                None => String::new(),
            };
            let what = if verdict.minimum {
                let m = r.minimum.map_or(0, |m| m.traces);
                format!(
                    "KEEP (sample rate 1: one of the first traces of its window, within \
                     `min_traces: {m}`)"
                )
            } else if verdict.keep {
                format!("KEEP (sample rate {}{boosted})", verdict.sample_rate)
            } else if matches!(r.outcome, Outcome::Drop) {
                "DROP".into()
            } else {
                format!(
                    "DROP (not in the sampled 1 in {} of this trace id{boosted})",
                    verdict.sample_rate
                )
            };
            if let (Some(m), false) = (r.minimum, verdict.minimum) {
                let _ = writeln!(
                    out,
                    "  (this window's `min_traces: {}` already kept: the rule's own outcome applies)",
                    m.traces
                );
            }
            let _ = writeln!(
                out,
                "  => matched: {what}; first match wins, later rules not consulted"
            );
            break;
        }
        if let (true, Outcome::Factor { factor }) = (held, &r.outcome) {
            let _ = writeln!(
                out,
                "  => conditions held: the rule that decides keeps ×{factor} as many; next rule"
            );
        } else if held && r.max_per_second.is_some() {
            let _ = writeln!(
                out,
                "  => conditions held and the sample picked it, but over max_traces_per_second: next rule"
            );
        } else if held {
            let _ = writeln!(
                out,
                "  => conditions held, but over the rate limit: next rule"
            );
        } else {
            let _ = writeln!(out, "  => no match");
        }
    }
    out
}
