//! Which rules can decide a trace before it is complete, worked out once when the rules load.
//!
//! For each condition, from its form alone: whether it can be known to hold, and whether known
//! not to hold, from what has arrived of a trace (as its spans arrive, when the root arrives,
//! or only at completion: [`Known`]). From that, for each early rule (`early: true`), which
//! rules before it can hold its decision back and until when: the notes `tailsift rules check`
//! prints about early rules, and the rules that make one decide no trace early (the warning).
//! What a buffered trace actually settles, span by span, is
//! [`Buffered::settle`](super::Buffered::settle).

use super::condition::{Cond, Literal, Op, TraceField};
use super::Rule;

/// The earliest a condition can be known, true or false, as a trace's spans arrive. Ordered:
/// any span can tell, then only the root can, then only the trace's completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Known {
    /// As the spans arrive (a span that passes a `span:` condition, a count past its bound).
    Arrival,
    /// When the root span arrives (`root:` conditions).
    Root,
    /// Only when the trace is complete (no span can rule out `span:`; durations can grow).
    Completion,
}

/// When `c` can be known to hold, and when known not to: what
/// [`Buffered::settle`](super::Buffered::settle) can tell
/// at best, from the condition's form alone.
pub fn knowable(c: &Cond) -> (Known, Known) {
    use Known::*;
    let growing = |op: &Op| match op {
        Op::Gt(_) | Op::Ge(_) => (Arrival, Completion),
        Op::Lt(_) | Op::Le(_) => (Completion, Arrival),
        _ => (Completion, Completion),
    };
    match c {
        Cond::All(cs) => cs
            .iter()
            .map(knowable)
            .fold((Arrival, Completion), |(t, f), (ct, cf)| {
                (t.max(ct), f.min(cf))
            }),
        Cond::Any(cs) => cs
            .iter()
            .map(knowable)
            .fold((Completion, Arrival), |(t, f), (ct, cf)| {
                (t.min(ct), f.max(cf))
            }),
        Cond::Not(c) => {
            let (t, f) = knowable(c);
            (f, t)
        }
        Cond::AnySpan(_) => (Arrival, Completion),
        Cond::EverySpan(_) => (Completion, Arrival),
        Cond::Root(_) => (Root, Root),
        Cond::Count(_, op, _) => growing(op),
        Cond::Trace(TraceField::Error | TraceField::RootPresent, op, _) => {
            let on = |l: &Literal| matches!(l, Literal::Bool(true));
            match op {
                Op::Eq(l) if on(l) => (Arrival, Completion),
                Op::Ne(l) if !on(l) => (Arrival, Completion),
                Op::Eq(_) | Op::Ne(_) => (Completion, Arrival),
                Op::Exists | Op::NotExists => (Arrival, Arrival),
                _ => (Completion, Completion),
            }
        }
        Cond::Trace(_, op, _) => growing(op),
    }
}

/// For each early rule, which rules before it can hold its decision back, and until when
/// (`rules check` prints these). A rule before it that can be known not to match only when
/// the trace completes makes the early rule decide no trace early: `early_blockers` says
/// which, for the warning.
pub fn early_notes(rules: &[Rule]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, r) in rules.iter().enumerate().filter(|(_, r)| r.early) {
        let waits: Vec<String> = holders(&rules[..i])
            .map(|(h, until)| {
                let until = match until {
                    Known::Arrival => "until a span rules it out",
                    Known::Root => "until the root span arrives",
                    Known::Completion => "until the trace completes",
                };
                format!("`{}` ({until})", h.name)
            })
            .collect();
        out.push(match waits.as_slice() {
            [] => format!("early: `{}` decides as soon as its conditions hold", r.name),
            _ => format!(
                "early: `{}` decides once its conditions hold and the rules before it are sure \
                 not to match: {}",
                r.name,
                waits.join(", ")
            ),
        });
    }
    out
}

/// The rules before an early rule that can keep it waiting, and until when: a factor rule
/// until it is known either way, any other until it is known not to match (once known to
/// match, it decides the trace itself).
fn holders(before: &[Rule]) -> impl Iterator<Item = (&Rule, Known)> {
    before.iter().filter_map(|h| {
        let (t, f) = knowable(h.condition.as_ref()?);
        let until = match h.outcome {
            super::Outcome::Factor { .. } => t.min(f),
            _ => f,
        };
        Some((h, until))
    })
}

/// The rules before early rule `rules[i]` that can be known not to match only when the trace
/// completes: while one comes first, the early rule decides no trace early.
pub fn early_blockers(rules: &[Rule], i: usize) -> Vec<&Rule> {
    holders(&rules[..i])
        .filter(|(_, until)| *until == Known::Completion)
        .map(|(h, _)| h)
        .collect()
}
