//! What `tailsift rules check` warns about: rules that load but cannot do what they say.
//!
//! Warnings never stop a rule set from loading (a reload must not fail on them); they are
//! printed by `rules check`, each located like an error.
//! - A rule that can never decide a trace: an earlier rule that always decides (keep, drop,
//!   throughput, dynamic; not a rate limit, a factor or a time-boxed rule, which let traces
//!   through) matches every trace it matches. Implication is decided on the conditions' form,
//!   so it finds the common mistakes (the same condition twice, a narrower rule after a broader
//!   one, `> 2s` after `> 1s`) and never warns wrongly, but does not find every shadowed rule.
//! - A negative operator on a span field at trace scope (`span.service != payment`): it holds
//!   when *some* span differs, which is nearly always (found while parsing, see `expr`).
//! - A time-boxed rule past its `active_until`: it retired and matches no trace.
//! - An early rule after a rule that can be known not to match only when the trace completes:
//!   it decides no trace early (see `early::knowable`).

use super::condition::{Cond, Literal, Op, SpanCond};
use super::{Rule, RuleError};

/// Every warning of a rule set now, in rule order: each rule's own, then whether it retired
/// or is shadowed.
pub fn lint(rules: &[Rule]) -> Vec<RuleError> {
    lint_at(rules, std::time::SystemTime::now())
}

/// [`lint`] at the wall-clock instant `now`.
pub fn lint_at(rules: &[Rule], now: std::time::SystemTime) -> Vec<RuleError> {
    let mut out = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        out.extend(r.warnings.iter().cloned());
        if let Some(until) = r.active.and_then(|a| a.until).filter(|u| now >= *u) {
            out.push(RuleError {
                file: r.file.clone(),
                line: r.line,
                rule: format!("`{}`", r.name),
                field: "active_until".into(),
                message: format!(
                    "this rule retired at {}: it matches no trace any more; remove it",
                    super::window::show(until)
                ),
            });
        }
        if r.early {
            let blockers = super::early::early_blockers(rules, i);
            if let Some(b) = blockers.first() {
                let names: Vec<String> = blockers.iter().map(|b| format!("`{}`", b.name)).collect();
                out.push(RuleError {
                    file: r.file.clone(),
                    line: r.line,
                    rule: format!("`{}`", r.name),
                    field: "early".into(),
                    message: format!(
                        "this early rule decides no trace early: {} before it can be known not \
                         to match only when the trace completes (`span:` conditions, growing \
                         durations and counts compared with `>`), and until then it may still \
                         decide the trace; move this rule above {}, or drop `early`",
                        names.join(", "),
                        if blockers.len() == 1 {
                            format!("`{}` ({}:{})", b.name, b.file, b.line)
                        } else {
                            "them".into()
                        }
                    ),
                });
            }
        }
        let shadow = rules[..i]
            .iter()
            .find(|a| a.always_decides() && rule_implies(r, a));
        if let Some(a) = shadow {
            let why = match &a.condition {
                None => format!("`{}` has no conditions", a.name),
                Some(_) => format!(
                    "every trace this rule matches also matches `{}`, which decides it",
                    a.name
                ),
            };
            out.push(RuleError {
                file: r.file.clone(),
                line: r.line,
                rule: format!("`{}`", r.name),
                field: "conditions".into(),
                message: format!(
                    "this rule never decides a trace: rule `{}` ({}:{}) comes first and {why}; \
                     move this rule above it, or remove it",
                    a.name, a.file, a.line
                ),
            });
        }
    }
    out
}

/// Whether every trace `b` matches is matched by `a` (judged on the conditions' form).
fn rule_implies(b: &Rule, a: &Rule) -> bool {
    match (&b.condition, &a.condition) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(b), Some(a)) => implies(b, a),
    }
}

/// `b ⇒ a` for trace conditions, when the form shows it.
pub(crate) fn implies(b: &Cond, a: &Cond) -> bool {
    if same(b, a) {
        return true;
    }
    // Break up `a` first where that cannot lose a proof: `b ⇒ all(as)` iff `b ⇒` each.
    if let Cond::All(as_) = a {
        return as_.iter().all(|a| implies(b, a));
    }
    match b {
        // A conjunction implies `a` when one of its parts does.
        Cond::All(bs) if bs.iter().any(|b| implies(b, a)) => return true,
        // A disjunction implies `a` when each of its parts does.
        Cond::Any(bs) => return bs.iter().all(|b| implies(b, a)),
        _ => {}
    }
    match a {
        Cond::Any(as_) => as_.iter().any(|a| implies(b, a)),
        Cond::Not(a_inner) => matches!(b, Cond::Not(b_inner) if implies(a_inner, b_inner)),
        Cond::Trace(fa, oa, _) => {
            matches!(b, Cond::Trace(fb, ob, _) if fa == fb && op_implies(ob, oa))
        }
        Cond::AnySpan(sa) => match b {
            Cond::AnySpan(sb) | Cond::Root(sb) | Cond::EverySpan(sb) => span_implies(sb, sa),
            _ => false,
        },
        Cond::Root(sa) => matches!(b, Cond::Root(sb) if span_implies(sb, sa)),
        Cond::EverySpan(sa) => matches!(b, Cond::EverySpan(sb) if span_implies(sb, sa)),
        _ => false,
    }
}

/// `b ⇒ a` for span conditions on one span.
fn span_implies(b: &SpanCond, a: &SpanCond) -> bool {
    if span_same(b, a) {
        return true;
    }
    if let SpanCond::All(as_) = a {
        return as_.iter().all(|a| span_implies(b, a));
    }
    match b {
        SpanCond::All(bs) if bs.iter().any(|b| span_implies(b, a)) => return true,
        SpanCond::Any(bs) => return bs.iter().all(|b| span_implies(b, a)),
        _ => {}
    }
    match a {
        SpanCond::Any(as_) => as_.iter().any(|a| span_implies(b, a)),
        SpanCond::Not(a_inner) => {
            matches!(b, SpanCond::Not(b_inner) if span_implies(a_inner, b_inner))
        }
        SpanCond::Field(fa, oa, _) => {
            matches!(b, SpanCond::Field(fb, ob, _) if fa == fb && op_implies(ob, oa))
        }
        SpanCond::All(_) => false, // handled above
    }
}

/// Conditions written the same way (up to spacing).
fn same(b: &Cond, a: &Cond) -> bool {
    match (b, a) {
        (Cond::Trace(_, _, lb), Cond::Trace(_, _, la)) => same_text(lb, la),
        (Cond::AnySpan(sb), Cond::AnySpan(sa))
        | (Cond::Root(sb), Cond::Root(sa))
        | (Cond::EverySpan(sb), Cond::EverySpan(sa)) => span_same(sb, sa),
        (Cond::Count(_, _, lb), Cond::Count(_, _, la)) => same_text(lb, la),
        (Cond::Not(b), Cond::Not(a)) => same(b, a),
        (Cond::All(bs), Cond::All(as_)) | (Cond::Any(bs), Cond::Any(as_)) => {
            bs.len() == as_.len() && bs.iter().zip(as_).all(|(b, a)| same(b, a))
        }
        _ => false,
    }
}

fn span_same(b: &SpanCond, a: &SpanCond) -> bool {
    match (b, a) {
        (SpanCond::Field(_, _, lb), SpanCond::Field(_, _, la)) => same_text(lb, la),
        (SpanCond::Not(b), SpanCond::Not(a)) => span_same(b, a),
        (SpanCond::All(bs), SpanCond::All(as_)) | (SpanCond::Any(bs), SpanCond::Any(as_)) => {
            bs.len() == as_.len() && bs.iter().zip(as_).all(|(b, a)| span_same(b, a))
        }
        _ => false,
    }
}

fn same_text(b: &str, a: &str) -> bool {
    b.split_whitespace().eq(a.split_whitespace())
}

/// `b ⇒ a` for two tests of the same field.
fn op_implies(b: &Op, a: &Op) -> bool {
    match (b, a) {
        (Op::Gt(x), Op::Gt(y)) | (Op::Ge(x), Op::Ge(y)) | (Op::Gt(x), Op::Ge(y)) => x >= y,
        (Op::Ge(x), Op::Gt(y)) => x > y,
        (Op::Lt(x), Op::Lt(y)) | (Op::Le(x), Op::Le(y)) | (Op::Lt(x), Op::Le(y)) => x <= y,
        (Op::Le(x), Op::Lt(y)) => x < y,
        (Op::Eq(l), Op::Eq(m)) => l == m,
        (Op::Eq(l), Op::In(ms)) => ms.contains(l),
        (Op::In(ls), Op::In(ms)) => ls.iter().all(|l| ms.contains(l)),
        (Op::Eq(_) | Op::In(_), Op::Exists) => true,
        (Op::Eq(Literal::Num(n)), Op::Gt(y)) => n > y,
        (Op::Eq(Literal::Num(n)), Op::Ge(y)) => n >= y,
        (Op::Eq(Literal::Num(n)), Op::Lt(y)) => n < y,
        (Op::Eq(Literal::Num(n)), Op::Le(y)) => n <= y,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::parse_file;

    fn warnings(body: &str) -> Vec<RuleError> {
        let rules = parse_file("w.yaml", &format!("rules:\n{body}"))
            .unwrap_or_else(|e| panic!("{body}: {e:?}"));
        lint(&rules)
    }

    #[test]
    fn warns_about_shadowed_rules_and_trace_scope_negations_with_their_location() {
        // (rules, expected part of the one warning, its line and rule); line 1 is `rules:`.
        let cases: &[(&str, &str, usize, &str)] = &[
            (
                "  - name: a\n    conditions: trace.error = true\n    outcome: keep\n  - name: b\n    conditions: trace.error = true\n    outcome: drop\n",
                "never decides a trace: rule `a` (w.yaml:2) comes first",
                5,
                "`b`",
            ),
            (
                "  - name: slow\n    conditions: trace.duration > 1s\n    outcome: keep\n  - name: slower\n    conditions: [trace.duration > 5s, span.service = db]\n    outcome: drop\n",
                "every trace this rule matches also matches `slow`",
                5,
                "`slower`",
            ),
            (
                "  - name: all\n    outcome: keep\n    sample_rate: 2\n  - name: errors\n    conditions: trace.error = true\n    outcome: keep\n",
                "`all` has no conditions",
                5,
                "`errors`",
            ),
            (
                "  - name: pay\n    conditions: {any: [span.service = payment, span.service = billing]}\n    outcome: keep\n  - name: pay-client\n    conditions: {span: [span.service = payment, span.kind = client]}\n    outcome: drop\n",
                "rule `pay` (w.yaml:2)",
                5,
                "`pay-client`",
            ),
            (
                "  - name: tiers\n    conditions: root.attr.tier in [gold, silver]\n    outcome: keep\n  - name: gold\n    conditions: root.attr.tier = gold\n    outcome: drop\n",
                "rule `tiers` (w.yaml:2)",
                5,
                "`gold`",
            ),
            (
                "  - name: not-pay\n    conditions: span.service != payment\n    outcome: keep\n",
                "holds when *some* span passes it (here: some span is not like that), which is nearly every trace; to say that no span is, write `not: span.service = payment`",
                3,
                "`not-pay`",
            ),
            (
                "  - name: no-region\n    conditions: [trace.error = true, span.attr.region not-exists]\n    outcome: keep\n",
                "write `not: span.attr.region exists`",
                3,
                "`no-region`",
            ),
        ];
        for (body, want, line, rule) in cases {
            let w = warnings(body);
            assert_eq!(w.len(), 1, "{body}: {w:?}");
            assert!(
                w[0].message.contains(want),
                "{:?} should contain {want:?}",
                w[0].message
            );
            assert_eq!((w[0].line, w[0].rule.as_str()), (*line, *rule), "{w:?}");
        }
    }

    #[test]
    fn rules_that_let_traces_through_or_differ_are_not_warned_about() {
        let quiet = [
            // A rate limit passes its excess on: the next rule is reachable.
            "  - name: a\n    conditions: trace.span_count > 2000\n    outcome: rate_limit\n    traces_per_second: 1\n  - name: b\n    conditions: trace.span_count > 2000\n    outcome: drop\n",
            // Broader after narrower is fine.
            "  - name: a\n    conditions: [trace.duration > 5s, span.service = db]\n    outcome: keep\n  - name: b\n    conditions: trace.duration > 1s\n    outcome: drop\n",
            // Not implied: `> 1s` does not imply `> 2s`.
            "  - name: a\n    conditions: trace.duration > 2s\n    outcome: keep\n  - name: b\n    conditions: trace.duration > 1s\n    outcome: drop\n",
            // Inside a span group or on the root, `!=` says what it means.
            "  - name: a\n    conditions: [{span: [span.service != payment, span.kind = client]}, root.service != gateway]\n    outcome: keep\n",
        ];
        for body in quiet {
            assert_eq!(warnings(body), [], "{body}");
        }
        let examples = crate::rules::RuleSet::load(std::path::Path::new("rules"), None).unwrap();
        assert_eq!(examples.warnings(), [], "the example rules are clean");
    }
}
