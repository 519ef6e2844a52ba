//! The incremental evaluation (`seen.rs`) against the full walk ([`TraceView`]): the same
//! answer for every condition of the example and language rule sets on generated traces, and
//! every settled answer final.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::span::{Event, Link};
use opentelemetry_proto::tonic::trace::v1::Span;
use proptest::prelude::*;
use tokio::time::Instant;

use super::*;
use crate::buffer::{Buffer, Completion, Ingested, TraceEntry};
use crate::decision::{DecisionCache, Trigger};
use crate::offsets::OffsetHold;
use crate::otlp::build::*;
use crate::otlp::decode::Decoder;

const MS: u64 = 1_000_000;
const SERVICES: [&str; 4] = ["gateway", "payment", "inventory", "batch"];

/// One generated span: (service, parent index or root, kind, error, start ms, duration ms,
/// http status, route, event names, links).
#[derive(Debug, Clone)]
struct Gen {
    service: usize,
    parent: Option<usize>,
    kind: i32,
    error: bool,
    start: u64,
    duration: u64,
    status: Option<i64>,
    route: usize,
    events: Vec<&'static str>,
    links: usize,
}

const ROUTES: [&str; 4] = ["/api/checkout", "/healthz", "/inventory/{sku}", "/api/cart"];
const EVENTS: [&str; 3] = ["exception", "retry", "cache-miss"];

fn gen_span() -> impl Strategy<Value = Gen> {
    (
        0..SERVICES.len(),
        proptest::option::weighted(0.8, 0usize..8),
        0i32..6,
        proptest::bool::weighted(0.15),
        0u64..3_000,
        0u64..6_000,
        proptest::option::of(prop_oneof![Just(200i64), Just(404), Just(503)]),
        0..ROUTES.len(),
        proptest::collection::vec(proptest::sample::select(EVENTS.to_vec()), 0..3),
        0usize..13,
    )
        .prop_map(
            |(service, parent, kind, error, start, duration, status, route, events, links)| Gen {
                service,
                parent,
                kind,
                error,
                start,
                duration,
                status,
                route,
                events,
                links,
            },
        )
}

/// The spans of trace `t`, in arrival order, each with its service.
fn build(t: [u8; 16], spans: &[Gen]) -> Vec<(&'static str, Span)> {
    spans
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let id = i as u64 + 1;
            // A parent index past the spans makes an orphan; `None` a root.
            let parent = g.parent.map(|p| p as u64 + 1).filter(|p| *p != id);
            let mut s = span(
                t,
                id,
                parent,
                &format!("op-{}", g.route),
                g.start * MS,
                (g.start + g.duration) * MS,
            );
            s.kind = g.kind;
            let mut attrs: Vec<KeyValue> = vec![attr_str("http.route", ROUTES[g.route])];
            if let Some(code) = g.status {
                attrs.push(attr_int("http.response.status_code", code));
            }
            if g.service == 2 {
                attrs.push(attr_str("db.system", "postgresql"));
            }
            s = with_attrs(s, attrs);
            s.events = g
                .events
                .iter()
                .map(|name| Event {
                    name: name.to_string(),
                    attributes: vec![attr_str("exception.type", "io.Timeout")],
                    ..Event::default()
                })
                .collect();
            s.links = (0..g.links)
                .map(|l| Link {
                    trace_id: t.to_vec(),
                    span_id: (l as u64 + 100).to_be_bytes().to_vec(),
                    ..Link::default()
                })
                .collect();
            if g.error {
                s = with_error(s);
            }
            (SERVICES[g.service], s)
        })
        .collect()
}

fn hold() -> Arc<OffsetHold> {
    Arc::new(OffsetHold {
        partition: 0,
        offset: 0,
    })
}

/// Buffers `spans` under `ingest_rules`, one message per `per_message` spans, calling
/// `after` with the entry after each message; then hands the entry to `f`.
fn buffered<R>(
    t: [u8; 16],
    spans: &[(&'static str, Span)],
    per_message: usize,
    ingest_rules: &RuleSet,
    mut after: impl FnMut(&TraceEntry, &Ingested),
    f: impl FnOnce(&TraceEntry) -> R,
) -> R {
    let b = Buffer::new(Completion {
        max_spans_per_trace: u32::MAX,
        max_trace_bytes: u32::MAX,
        ..Completion::default()
    });
    let c = DecisionCache::new(10, Duration::from_secs(1));
    let h = hold();
    let mut d = Decoder::new();
    let id = crate::otlp::TraceId(t);
    for chunk in spans.chunks(per_message.max(1)) {
        let mut by_service: Vec<(&str, Vec<Span>)> = Vec::new();
        for (svc, s) in chunk {
            match by_service.iter_mut().find(|(x, _)| x == svc) {
                Some((_, v)) => v.push(s.clone()),
                None => by_service.push((svc, vec![s.clone()])),
            }
        }
        let p = encode(
            by_service
                .into_iter()
                .map(|(svc, v)| resource_spans(svc, v))
                .collect(),
        );
        d.decode(&p).unwrap();
        for g in d.groups(&p) {
            let r = b.ingest_with(&g, &h, false, Instant::now(), &c, Some(ingest_rules));
            b.with_entry(&id, |e| after(e, &r));
        }
    }
    let mut out = None;
    b.take(&id, |_, e| {
        out = Some(f(e));
        crate::decision::Decision::Drop { rule: "-".into() }
    });
    out.unwrap()
}

fn example_sets() -> Vec<RuleSet> {
    ["rules", "rules/language"]
        .iter()
        .map(|d| {
            RuleSet::load(
                Path::new(env!("CARGO_MANIFEST_DIR")).join(d).as_path(),
                None,
            )
        })
        .map(|r| r.unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

/// Every condition of every rule, and every key of the keyed samplers.
fn each_condition(set: &RuleSet, mut f: impl FnMut(&Rule, &Cond)) {
    for r in set.rules() {
        if let Some(c) = &r.condition {
            f(r, c);
        }
    }
}

fn keys(set: &RuleSet) -> Vec<&[KeyField]> {
    set.rules()
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::Throughput(t) => Some(t.keys.as_slice()),
            Outcome::Dynamic(d) => Some(d.keys.as_slice()),
            _ => None,
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// What the spans showed the probes as they arrived gives every condition and key the
    /// answer the full walk gives, however the spans are split into messages.
    #[test]
    fn the_incremental_evaluation_agrees_with_the_full_walk(
        spans in proptest::collection::vec(gen_span(), 1..14),
        per_message in 1usize..5,
        n in any::<u64>(),
    ) {
        let t = trace_id(n);
        let spans = build(t, &spans);
        for set in example_sets() {
            prop_assert!(set.probes().enabled());
            buffered(t, &spans, per_message, &set, |_, _| {}, |e| {
                prop_assert!(set.probes().current(&e.seen));
                let id = crate::otlp::TraceId(t);
                let view = TraceView::new(id, e);
                let known = Buffered::new(id, e);
                let mut result = Ok(());
                each_condition(&set, |r, c| {
                    if result.is_ok() && known.holds(c) != c.eval(&view) {
                        result = Err(TestCaseError::fail(format!(
                            "rule `{}`: incremental {} but the full walk {}",
                            r.name, known.holds(c), c.eval(&view)
                        )));
                    }
                });
                result?;
                for k in keys(&set) {
                    prop_assert_eq!(known.key(k), view.key(k));
                }
                Ok(())
            })?;
        }
    }

    /// The buffer asks whether an early rule can decide a trace only when spans changed what
    /// that reads (with a steady set): it answers as asking after every message would.
    #[test]
    fn an_early_look_skipped_for_unchanged_spans_answers_as_looking_every_time(
        spans in proptest::collection::vec(gen_span(), 1..14),
        per_message in 1usize..5,
        n in any::<u64>(),
    ) {
        let t = trace_id(n);
        let spans = build(t, &spans);
        let sets = example_sets();
        prop_assert!(sets.iter().any(RuleSet::early_steady), "some example set is steady");
        for set in &sets {
            let mut result = Ok(());
            buffered(t, &spans, per_message, set, |e, r| {
                let looked = set.decides_early(crate::otlp::TraceId(t), e, Instant::now());
                let early = *r == Ingested::Full(Trigger::Early);
                if result.is_ok() && early != looked {
                    result = Err(TestCaseError::fail(format!(
                        "the buffer said early: {early}, a look says {looked}"
                    )));
                }
            }, |_| ());
            result?;
        }
    }

    /// A condition settled at some point of a trace's arrival has its final value then: what
    /// early rules rely on.
    #[test]
    fn a_settled_condition_never_changes(
        spans in proptest::collection::vec(gen_span(), 1..14),
        per_message in 1usize..4,
        n in any::<u64>(),
    ) {
        let t = trace_id(n);
        let spans = build(t, &spans);
        let id = crate::otlp::TraceId(t);
        for set in example_sets() {
            let mut settled: Vec<(Arc<str>, usize, bool)> = Vec::new();
            let mut at_end = None;
            buffered(
                t,
                &spans,
                per_message,
                &set,
                |e, _| {
                    let known = Buffered::new(id, e);
                    for (i, r) in set.rules().iter().enumerate() {
                        if let Some(c) = &r.condition {
                            if let (v, true) = known.settle(c) {
                                settled.push((r.name.clone(), i, v));
                            }
                        }
                    }
                },
                |e| {
                    let view = TraceView::new(id, e);
                    at_end = Some(
                        set.rules()
                            .iter()
                            .map(|r| r.condition.as_ref().is_none_or(|c| c.eval(&view)))
                            .collect::<Vec<bool>>(),
                    );
                },
            );
            let at_end = at_end.unwrap();
            for (name, i, v) in &settled {
                prop_assert_eq!(at_end[*i], *v, "rule `{}` was settled to {}", name, v);
            }
        }
    }
}

pub(super) fn set_of(text: &str) -> RuleSet {
    super::tests::set(text, RuleOptions::default())
}

#[test]
fn a_trace_buffered_under_other_rules_is_decided_by_the_full_walk() {
    let before = set_of(
        "rules:\n  - name: slow-payment\n    conditions: { span: [span.service = payment, span.duration > 1s] }\n    outcome: keep\n  - name: rest\n    outcome: drop\n",
    );
    // The reloaded set asks about something the old probes never looked at.
    let after = set_of(
        "rules:\n  - name: inventory\n    conditions: span.service = inventory\n    outcome: keep\n  - name: rest\n    outcome: drop\n",
    );
    let t = trace_id(7);
    let spans = vec![
        ("gateway", span(t, 1, None, "GET /", 0, 50 * MS)),
        ("inventory", span(t, 2, Some(1), "lookup", MS, 20 * MS)),
    ];
    buffered(
        t,
        &spans,
        1,
        &before,
        |_, _| {},
        |e| {
            assert!(!after.probes().current(&e.seen));
            let d = after.decide_buffered(crate::otlp::TraceId(t), e, Instant::now());
            assert_eq!(d.rule(), "inventory");
            assert!(d.is_keep());
            // Under the old rules, the same entry is read from its probes.
            assert!(before.probes().current(&e.seen));
            assert_eq!(
                before
                    .decide_buffered(crate::otlp::TraceId(t), e, Instant::now())
                    .rule(),
                "rest"
            );
        },
    );
}

#[test]
fn a_context_skips_the_probes_its_service_cannot_pass_under_each_rule_set_it_meets() {
    // Both sets' first probe requires a service; a context is asked under one, then the other
    // (a reload), and must not answer the second with what it worked out for the first.
    let payment = set_of(
        "rules:\n  - name: slow\n    conditions: { span: [span.service = payment, span.duration > 1s] }\n    outcome: keep\n  - name: rest\n    outcome: drop\n",
    );
    let gateway = set_of(
        "rules:\n  - name: slow\n    conditions: { span: [span.service = gateway, span.duration > 1s] }\n    outcome: keep\n  - name: rest\n    outcome: drop\n",
    );
    let b = Buffer::new(Completion::default());
    let c = DecisionCache::new(10, Duration::from_secs(1));
    let h = hold();
    let mut d = Decoder::new();
    let mut rule = |n: u64, set: &RuleSet| {
        let t = trace_id(n);
        // The slow span is the gateway's; the payment call is quick.
        let p = encode(vec![
            resource_spans("gateway", vec![span(t, 1, None, "GET /", 0, 3_000 * MS)]),
            resource_spans("payment", vec![span(t, 2, Some(1), "charge", MS, 20 * MS)]),
        ]);
        d.decode(&p).unwrap();
        for g in d.groups(&p) {
            b.ingest_with(&g, &h, false, Instant::now(), &c, Some(set));
        }
        let mut rule = String::new();
        b.take(&crate::otlp::TraceId(t), |id, e| {
            assert!(set.probes().current(&e.seen), "decided from the probes");
            let d = set.decide_buffered(*id, e, Instant::now());
            rule = d.rule().to_string();
            d
        });
        rule
    };
    for round in 0..2 {
        assert_eq!(rule(10 + round, &payment), "rest", "round {round}");
        assert_eq!(rule(20 + round, &gateway), "slow", "round {round}");
    }
}

pub(super) const EARLY: &str = "rules:
  - name: health
    conditions: { root: span.attr.http.route = /healthz }
    outcome: drop
  - name: errors
    conditions: trace.error = true
    outcome: keep
    early: true
  - name: rest
    outcome: keep
    sample_rate: 10
";

/// The arrivals of a checkout whose payment call fails: root last, as in real traffic.
fn failing_checkout(t: [u8; 16]) -> Vec<(&'static str, Span)> {
    vec![
        ("inventory", span(t, 3, Some(1), "lookup", MS, 20 * MS)),
        (
            "payment",
            with_error(span(t, 2, Some(1), "charge", 30 * MS, 90 * MS)),
        ),
        ("payment", span(t, 4, Some(2), "retry", 95 * MS, 99 * MS)),
        (
            "gateway",
            with_attrs(
                span(t, 1, None, "POST /api/checkout", 0, 100 * MS),
                vec![attr_str("http.route", "/api/checkout")],
            ),
        ),
    ]
}

/// The trigger each arrival got, in order.
fn triggers(rules: &str, spans: &[(&'static str, Span)], t: [u8; 16]) -> Vec<Option<Trigger>> {
    let set = set_of(rules);
    let mut out = Vec::new();
    buffered(
        t,
        spans,
        1,
        &set,
        |_, r| {
            out.push(match r {
                Ingested::Full(t) => Some(*t),
                _ => None,
            })
        },
        |_| (),
    );
    out
}

#[test]
fn an_early_rule_decides_once_every_rule_before_it_is_settled() {
    let t = trace_id(11);
    // The error arrives second, but `health` reads the root, which comes last: only then is
    // it sure not to match.
    assert_eq!(
        triggers(EARLY, &failing_checkout(t), t),
        [None, None, None, Some(Trigger::Early)]
    );
    // Without the root rule before it, the error span decides the trace.
    let without = EARLY.replace(
        "  - name: health\n    conditions: { root: span.attr.http.route = /healthz }\n    outcome: drop\n",
        "",
    );
    assert_eq!(
        triggers(&without, &failing_checkout(t), t),
        [
            None,
            Some(Trigger::Early),
            Some(Trigger::Early),
            Some(Trigger::Early)
        ]
    );
}

#[test]
fn a_rule_that_can_still_match_holds_an_early_rule_back_to_completion() {
    let t = trace_id(12);
    // `some span of inventory is slow` can become true with any later span: it is never
    // settled false before the trace completes.
    let rules = "rules:
  - name: slow-inventory
    conditions: { span: [span.service = inventory, span.duration > 500ms] }
    outcome: keep
  - name: errors
    conditions: trace.error = true
    outcome: keep
    early: true
  - name: rest
    outcome: drop
";
    assert_eq!(triggers(rules, &failing_checkout(t), t), [None; 4]);
    // Once it matches, it is settled true and decides; it is not early, so nothing is.
    let mut spans = failing_checkout(t);
    spans.insert(0, ("inventory", span(t, 9, Some(1), "scan", 0, 900 * MS)));
    assert_eq!(triggers(rules, &spans, t), [None; 5]);
}

#[test]
fn counts_durations_and_every_settle_in_the_direction_they_grow() {
    let t = trace_id(13);
    let spans = failing_checkout(t);
    // `trace.span_count < 3` is sure to be false from the third span on; `every:` from the
    // first span that fails it.
    let rules = "rules:
  - name: small
    conditions: trace.span_count < 3
    outcome: drop
  - name: all-inventory
    conditions: { every: span.service = inventory }
    outcome: drop
  - name: errors
    conditions: trace.error = true
    outcome: keep
    early: true
  - name: rest
    outcome: drop
";
    assert_eq!(
        triggers(rules, &spans, t),
        [None, None, Some(Trigger::Early), Some(Trigger::Early)]
    );
}

#[test]
fn early_is_refused_where_the_outcome_could_still_move() {
    for (rule, what) in [
        ("    outcome: keep\n    early: true\n", "needs `conditions`"),
        (
            "    conditions: trace.error = true\n    outcome: keep\n    max_traces_per_second: 5\n    early: true\n",
            "cannot have `max_traces_per_second`",
        ),
        (
            "    conditions: trace.error = true\n    outcome: rate_limit\n    traces_per_second: 5\n    early: true\n",
            "`early` applies to `outcome: keep` or `outcome: drop` only",
        ),
        (
            "    conditions: trace.error = true\n    outcome: keep\n    early: yes\n",
            "`early` is true or false",
        ),
    ] {
        let text = format!("rules:\n  - name: e\n{rule}  - name: rest\n    outcome: drop\n");
        let errs = parse_file("t.yaml", &text).expect_err(&text);
        assert!(
            errs.iter().any(|e| e.field == "early" && e.message.contains(what)),
            "{text}: {errs:?}"
        );
    }
}

#[test]
fn an_early_verdict_is_steady_only_without_clocks_or_growing_numbers_up_to_the_last_early_rule() {
    assert!(set_of(EARLY).early_steady(), "root, error flag: steady");
    let growing = EARLY.replace(
        "conditions: { root: span.attr.http.route = /healthz }",
        "conditions: trace.span_count > 2000",
    );
    assert!(!set_of(&growing).early_steady(), "a span count before it");
    let counted = EARLY.replace(
        "conditions: { root: span.attr.http.route = /healthz }",
        "conditions: count(span.kind = client) > 3",
    );
    assert!(
        !set_of(&counted).early_steady(),
        "a count of spans before it"
    );
    let timed = EARLY.replace(
        "    outcome: drop\n",
        "    outcome: drop\n    active_from: 2030-01-01T00:00:00Z\n",
    );
    assert!(
        !set_of(&timed).early_steady(),
        "a time-boxed rule before it"
    );
    let after =
        format!("{EARLY}  - name: long\n    conditions: trace.duration > 5s\n    outcome: keep\n");
    let after = after.replace(
        "  - name: rest\n    outcome: keep\n    sample_rate: 10\n",
        "",
    ) + "  - name: rest\n    outcome: keep\n    sample_rate: 10\n";
    assert!(
        set_of(&after).early_steady(),
        "what comes after the last early rule does not count"
    );
    let none = EARLY.replace("    early: true\n", "");
    assert!(!set_of(&none).early_steady(), "no early rule");
}
