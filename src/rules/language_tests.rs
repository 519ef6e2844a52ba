//! The constructs beyond one comparison: `every:`, `count(...)`, span events, links,
//! tracestate, trace flags and trace bytes; outcomes that compose, mark, expire and share.

use opentelemetry_proto::tonic::trace::v1::span::{Event, Link};
use opentelemetry_proto::tonic::trace::v1::Span;

use super::tests::{checkout, cond, with_trace, MS};
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::otlp::build::*;

/// A checkout whose payment span has a retry event and an exception event, a link, a
/// tracestate and the sampled flag; the orders span has no event.
fn eventful(t: [u8; 16]) -> Vec<(&'static str, Vec<Span>)> {
    let mut msgs = checkout(t, 100, true, "free");
    let payment = &mut msgs[0].1[0];
    payment.events = vec![
        Event {
            name: "retry".into(),
            attributes: vec![attr_int("attempt", 2)],
            ..Event::default()
        },
        Event {
            name: "exception".into(),
            attributes: vec![attr_str("exception.type", "TimeoutError")],
            ..Event::default()
        },
    ];
    payment.links = vec![Link {
        trace_id: trace_id(999).to_vec(),
        span_id: vec![1; 8],
        attributes: vec![attr_str("link.kind", "batch")],
        ..Link::default()
    }];
    payment.trace_state = "ot=th:8,vendor=x".into();
    payment.flags = 0x301;
    msgs
}

#[test]
fn new_fields_match_events_links_tracestate_flags_and_bytes() {
    let cases: &[(&str, bool)] = &[
        ("span.event.name = exception", true),
        ("span.event.name = retry", true),
        ("span.event.name = rollback", false),
        ("span.event.name in [rollback, retry]", true),
        ("span.event.attr.exception.type = TimeoutError", true),
        ("span.event.attr.attempt >= 2", true),
        ("span.event.attr.attempt > 2", false),
        ("span.event.attr.nope exists", false),
        ("span.event_count = 2", true),
        ("span.event_count > 2", false),
        ("span.link_count = 1", true),
        ("span.link.attr.link.kind = batch", true),
        ("span.trace_state contains vendor=x", true),
        ("span.trace_state starts-with 'ot=th:8'", true),
        ("span.flags = 1", true),
        ("span.sampled = true", true),
        ("root.sampled = true", false),
        ("trace.bytes > 100", true),
        ("trace.bytes > 100000", false),
        // One span with both events; an exception on a client span.
        (
            "{span: [span.event.name = retry, span.event.name = exception]}",
            true,
        ),
        (
            "{span: [span.event.name = exception, span.kind = client]}",
            true,
        ),
        (
            "{span: [span.event.name = exception, span.kind = server]}",
            false,
        ),
        // Negations on a span's events: `!=` is the exact negation of `=` on that span.
        ("{root: span.event.name != exception}", true),
        (
            "{span: [span.service = payment, span.event.name != exception]}",
            false,
        ),
        (
            "{span: [span.service = payment, \"span.event.name not-in [x, y]\"]}",
            true,
        ),
        (
            "{span: [span.service = payment, span.event.attr.nope not-exists]}",
            true,
        ),
    ];
    with_trace(eventful(trace_id(11)), |view| {
        for (expr, want) in cases {
            assert_eq!(cond(expr).eval(view), *want, "{expr}");
        }
    });
}

#[test]
fn every_holds_when_all_spans_satisfy_and_count_counts_matching_spans() {
    let cases: &[(&str, bool)] = &[
        ("{every: span.duration < 1s}", true),
        ("{every: span.service = payment}", false),
        (
            "{every: [\"span.kind in [server, client]\", span.status != ok]}",
            true,
        ),
        ("{not: {every: span.status = unset}}", true),
        ("count(span.service = payment) = 1", true),
        ("count(span.kind = server) = 2", true),
        ("count(span.kind = server) > 2", false),
        ("count(span.kind = server, span.service = orders) = 1", true),
        (
            "'count(span: [span.kind = server, span.service in [orders, gateway]]) >= 2'",
            true,
        ),
        ("count(span.attr.nope exists) = 0", true),
        (
            "count(span.name matches 'POST /(orders|payments)') != 2",
            false,
        ),
    ];
    with_trace(checkout(trace_id(12), 100, true, "free"), |view| {
        for (expr, want) in cases {
            assert_eq!(cond(expr).eval(view), *want, "{expr}");
        }
    });
}

#[test]
fn new_constructs_get_errors_as_good_as_the_old_ones() {
    // (rule body, expected message part, line of the mistake: line 1 is `rules:`).
    let cases: &[(&str, &str, usize)] = &[
        (
            "  - name: a\n    conditions: span.evnt.name = x\n    outcome: keep\n",
            "unknown field `span.evnt.name`, did you mean `span.event.name`?",
            3,
        ),
        (
            "  - name: a\n    conditions: span.event_count > many\n    outcome: keep\n",
            "`>` takes a number, got the string `many`",
            3,
        ),
        (
            "  - name: a\n    conditions: span.sampled = yes\n    outcome: keep\n",
            "expected true or false",
            3,
        ),
        (
            "  - name: a\n    conditions: count(span.service = db > 3\n    outcome: keep\n",
            "unbalanced parentheses; expected `count(SPAN CONDITIONS) OPERATOR N`",
            3,
        ),
        (
            "  - name: a\n    conditions: count(span.service = db)\n    outcome: keep\n",
            "the count is compared with a number",
            3,
        ),
        (
            "  - name: a\n    conditions: count(span.service = db) > lots\n    outcome: keep\n",
            "`>` takes a number, got the string `lots`",
            3,
        ),
        (
            "  - name: a\n    conditions: count(span.service = db) matches x\n    outcome: keep\n",
            "a count compares with a number: unknown operator `matches`",
            3,
        ),
        (
            "  - name: a\n    conditions: count(span.srvice = db) > 3\n    outcome: keep\n",
            "did you mean `span.service`?",
            3,
        ),
        (
            "  - name: a\n    conditions: count(trace.error = true) > 3\n    outcome: keep\n",
            "is a trace field and cannot be tested on one span",
            3,
        ),
        (
            "  - name: a\n    conditions: count() > 3\n    outcome: keep\n",
            "an empty list of conditions",
            3,
        ),
        (
            "  - name: a\n    conditions:\n      - trace.error = true\n      - every: []\n    outcome: keep\n",
            "an empty list of conditions",
            5,
        ),
        (
            "  - name: a\n    conditions:\n      span:\n        every: [span.kind = client]\n    outcome: keep\n",
            "`every` groups cannot nest inside a span/root/every group",
            5,
        ),
        (
            "  - name: a\n    conditions: {evry: [span.kind = client]}\n    outcome: keep\n",
            "unknown condition group `evry`, did you mean `every`?",
            3,
        ),
        (
            "  - name: a\n    outcome: throughput\n    traces_per_second: 1\n    keys: [root.event.name]\n",
            "has one value per event or link, but a key needs one value per trace",
            5,
        ),
    ];
    super::tests::assert_refused(cases);
}

#[test]
fn explain_shows_every_count_and_the_values_of_events() {
    let rules = super::tests::set(
        "rules:\n  - name: many-servers\n    conditions: count(span.kind = server) > 5\n    outcome: keep\n  - name: all-fast\n    conditions: {every: span.duration < 50ms}\n    outcome: keep\n  - name: exception\n    conditions: {span: [span.event.name = exception, span.kind = client]}\n    outcome: keep\n  - name: rest\n    outcome: drop\n",
        RuleOptions::default(),
    );
    let text = with_trace(eventful(trace_id(13)), |v| explain::explain(&rules, v, 0));
    for want in [
        "✗ count(span.kind = server) > 5   (is 2, of 3 spans)",
        "  ✓ span.kind = server   (on 2 of 3 spans)",
        "✗ every: 3 of 3 spans do not; the first, `POST /payments`:",
        "✗ span.duration < 50ms   (is 100.000ms)",
        "✓ span: one span satisfies every condition: `POST /payments`",
        "✓ span.event.name = exception   (is each of [\"retry\", \"exception\"])",
        "=> matched: KEEP",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
    let _ = MS;
}

const CAPPED: &str = "rules:
  - name: capped
    outcome: keep
    sample_rate: 2
    max_traces_per_second: 5
    conditions: trace.span_count > 0
  - name: rest
    outcome: drop
";

#[test]
fn a_capped_sample_keeps_one_in_n_and_at_most_m_per_second_the_excess_falls_through() {
    let set = super::tests::set(CAPPED, RuleOptions::default());
    let t0 = Instant::now();
    let (mut kept, mut left_out, mut over_cap) = (0, 0, 0);
    // 10 s at 100 traces per second: about 500 picked by the 1-in-2 sample.
    for i in 0..1000u64 {
        let now = t0 + Duration::from_millis(10 * i);
        let v = with_trace(checkout(trace_id(i + 1), 10, false, "free"), |view| {
            (set.verdict(view, now), set.sampled(&view.id, 2))
        });
        match v {
            (
                Verdict {
                    rule: 0,
                    keep: true,
                    sample_rate: 2,
                    ..
                },
                true,
            ) => kept += 1,
            (
                Verdict {
                    rule: 0,
                    keep: false,
                    ..
                },
                false,
            ) => left_out += 1,
            (
                Verdict {
                    rule: 1,
                    keep: false,
                    ..
                },
                true,
            ) => over_cap += 1,
            other => panic!("trace {i}: {other:?}"),
        }
    }
    // 5 per second for 10 s and a burst of one second's worth.
    assert!((50..=56).contains(&kept), "kept {kept}");
    assert!((400..=600).contains(&left_out), "left out {left_out}");
    assert_eq!(kept + left_out + over_cap, 1000);
}

#[test]
fn a_capped_rule_shadows_nothing_and_cannot_be_the_default() {
    let rules = parse_file(
        "t.yaml",
        "rules:
  - name: capped
    conditions: trace.span_count > 2000
    outcome: keep
    max_traces_per_second: 1
  - name: rest-of-them
    conditions: trace.span_count > 2000
    outcome: drop
  - name: default
    outcome: keep
",
    )
    .expect("parses");
    assert!(lint::lint(&rules).is_empty(), "{:?}", lint::lint(&rules));
    let last = parse_file(
        "t.yaml",
        "rules:\n  - name: d\n    outcome: throughput\n    traces_per_second: 1\n    keys: [root.service]\n    max_traces_per_second: 1\n",
    )
    .expect("parses");
    let errs = check_set(&last, std::path::Path::new("t"));
    assert!(
        errs[0].to_string().contains(
            "t.yaml:2: rule `d`: max_traces_per_second: the default rule cannot have `max_traces_per_second`"
        ),
        "{errs:?}"
    );
}

#[test]
fn composition_errors_name_the_key_and_what_is_accepted() {
    let cases: &[(&str, &str, usize)] = &[
        (
            "  - name: a\n    outcome: keep\n    max_traces_per_second: 0\n",
            "max_traces_per_second: expected a number of kept traces per second greater than 0, got `0`",
            4,
        ),
        (
            "  - name: a\n    outcome: keep\n    max_traces_per_second: lots\n",
            "expected a number of kept traces per second greater than 0, got `lots`",
            4,
        ),
        (
            "  - name: a\n    outcome: drop\n    max_traces_per_second: 1\n",
            "`max_traces_per_second` applies to `outcome: keep` or `outcome: throughput` or `outcome: dynamic` only; this rule's outcome is `drop`",
            4,
        ),
        (
            "  - name: a\n    outcome: keep\n    max_trace_per_second: 1\n",
            "unknown key `max_trace_per_second`, did you mean `max_traces_per_second`?",
            4,
        ),
    ];
    super::tests::assert_refused(cases);
}

const FLEET: &str = "rules:
  - name: limited
    conditions: trace.span_count > 0
    outcome: rate_limit
    traces_per_second: 30
  - name: rest
    outcome: drop
";

/// One instance of a fleet: its rule set (and so its share handle).
fn instance(text: &str) -> RuleSet {
    super::tests::set(text, RuleOptions::default())
}

/// Offers the fleet 300 traces per second for `secs` seconds of paused time, each trace to
/// the instance owning its partition (`owners[trace % partitions]`), and returns how many
/// traces per second the fleet kept.
async fn fleet_rate(fleet: &[RuleSet], owners: &[usize], secs: u64) -> f64 {
    let views: Vec<_> = (0..30u64)
        .map(|i| checkout(trace_id(i + 1), 10, false, "free"))
        .collect();
    let mut kept = 0u64;
    for tick in 0..secs * 300 {
        tokio::time::advance(Duration::from_micros(3_333)).await;
        let now = Instant::now();
        let owner = owners[(tick as usize) % owners.len()];
        let msgs = views[(tick % 30) as usize].clone();
        kept += with_trace(msgs, |v| u64::from(fleet[owner].verdict(v, now).keep));
    }
    kept as f64 / secs as f64
}

#[tokio::test(start_paused = true)]
async fn a_fleet_keeps_the_same_total_rate_as_instances_join_and_leave() {
    let fleet: Vec<RuleSet> = (0..3).map(|_| instance(FLEET)).collect();
    // Six partitions. One instance owns them all.
    fleet[0].set_share(6, 6);
    let alone = fleet_rate(&fleet, &[0; 6], 20).await;
    // Two join: two partitions each.
    for f in &fleet {
        f.set_share(2, 6);
    }
    let three = fleet_rate(&fleet, &[0, 0, 1, 1, 2, 2], 20).await;
    // One leaves: its partitions go to the others, three each.
    fleet[0].set_share(3, 6);
    fleet[1].set_share(3, 6);
    fleet[2].set_share(0, 6);
    let two = fleet_rate(&fleet, &[0, 0, 0, 1, 1, 1], 20).await;
    for (what, rate) in [("alone", alone), ("three", three), ("two", two)] {
        // 30/s, and the first second's burst of each instance spread over 20 s.
        assert!((29.0..=33.0).contains(&rate), "{what}: {rate}/s");
    }
}

#[tokio::test(start_paused = true)]
async fn the_share_survives_a_reload_and_scales_caps_and_throughput_targets() {
    let options = RuleOptions::default();
    let rules = parse_file("t.yaml", FLEET).expect("rules");
    let old = RuleSet::with_options(rules.clone(), options.clone(), "1".into()).expect("set");
    old.set_share(1, 3);
    // A reload builds a new set from the same options: it reads the same share.
    let new = RuleSet::with_options(rules, options.clone(), "2".into()).expect("set");
    assert_eq!(new.share().fraction(), 1.0 / 3.0);
    let rate = fleet_rate(std::slice::from_ref(&new), &[0], 20).await;
    assert!((9.5..=11.5).contains(&rate), "a third of 30/s: {rate}/s");
    // A rebalance after the reload reaches the set in use.
    options.share.set(2, 3);
    assert_eq!(new.share().fraction(), 2.0 / 3.0);

    // A cap and a throughput target scale the same way.
    let capped = instance(
        "rules:\n  - name: c\n    conditions: trace.span_count > 0\n    outcome: keep\n    max_traces_per_second: 30\n  - name: rest\n    outcome: drop\n",
    );
    capped.set_share(1, 2);
    let rate = fleet_rate(std::slice::from_ref(&capped), &[0], 20).await;
    assert!((14.5..=16.5).contains(&rate), "half of 30/s: {rate}/s");
    let target = instance(
        "rules:\n  - name: t\n    outcome: throughput\n    traces_per_second: 30\n    keys: [root.service]\n    window: 5s\n",
    );
    target.set_share(1, 3);
    let t0 = Instant::now();
    let spec_rate = with_trace(checkout(trace_id(1), 10, false, "free"), |v| {
        // 300 traces/s of one key for two windows: a third of 30/s is 1 in 30.
        let mut last = 0;
        for i in 0..3000u64 {
            last = target
                .verdict(v, t0 + Duration::from_micros(3_333 * i))
                .sample_rate;
        }
        last
    });
    assert_eq!(spec_rate, 30);
}

#[test]
fn a_share_is_owned_over_total_and_whole_when_the_total_is_unknown() {
    let s = Share::default();
    assert_eq!(s.fraction(), 1.0, "a lone instance takes the whole budget");
    for (owned, total, want) in [
        (2, 6, 1.0 / 3.0),
        (0, 6, 0.0),
        (6, 6, 1.0),
        (7, 6, 1.0),
        (0, 0, 1.0),
    ] {
        s.set(owned, total);
        assert_eq!(s.fraction(), want, "{owned} of {total}");
    }
}

const MARKED: &str = "rules:
  - name: span-explosion
    conditions: trace.span_count > 2
    outcome: keep
    marks: { sampling.reason: span-explosion, sampling.budget: 2, sampling.capped: true, sampling.share: 0.5 }
  - name: rest
    outcome: drop
";

/// The attributes of the spans of `spans` (a run of `ScopeSpans.spans` fields) once marked.
fn marked_attributes(marks: &crate::otlp::mark::Marks) -> Vec<(String, any_value::Value)> {
    use prost::Message;
    let span = Span {
        name: "op".into(),
        attributes: vec![attr_str("sampling.reason", "upstream"), attr_str("k", "v")],
        ..Span::default()
    };
    let mut spans = Vec::new();
    crate::otlp::wire::put_len_prefix(&mut spans, 2, span.encoded_len());
    span.encode(&mut spans).expect("encode");
    let mut out = Vec::new();
    marks.mark_spans(&spans, &mut out);
    let mut fields = crate::otlp::wire::Fields::new(&out);
    let bytes = fields
        .next()
        .and_then(Result::ok)
        .and_then(|f| f.value.as_bytes());
    let span = Span::decode(bytes.expect("one span")).expect("decodes");
    span.attributes
        .into_iter()
        .map(|kv| (kv.key, kv.value.and_then(|v| v.value).expect("value")))
        .collect()
}

use opentelemetry_proto::tonic::common::v1::any_value;

#[test]
fn a_rule_marks_the_spans_it_keeps_after_the_configured_marks() {
    use any_value::Value as V;
    let set = super::tests::set(MARKED, RuleOptions::default());
    let keep = crate::decision::Decision::Keep {
        rule: "span-explosion".into(),
        sample_rate: 1,
    };
    let own = set.rule_marks(&keep).expect("the rule's marks");
    let attrs = marked_attributes(own);
    assert_eq!(
        attrs,
        vec![
            ("k".into(), V::StringValue("v".into())),
            (
                "sampling.reason".into(),
                V::StringValue("span-explosion".into())
            ),
            ("sampling.budget".into(), V::IntValue(2)),
            ("sampling.capped".into(), V::BoolValue(true)),
            ("sampling.share".into(), V::DoubleValue(0.5)),
        ],
        "the span's own sampling.reason is replaced, the others kept"
    );
    // After the configured marking, as the forwarder appends them.
    let marking = crate::otlp::mark::Marking {
        rule_attribute: Some("tailsift.rule".into()),
        sample_rate_attribute: None,
        shadow_attribute: None,
        tracestate: false,
    };
    let configured = marking
        .marks(keep.mark().expect("kept"), false)
        .expect("marks");
    let attrs = marked_attributes(&configured.and(own));
    let keys: Vec<&str> = attrs.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "k",
            "tailsift.rule",
            "sampling.reason",
            "sampling.budget",
            "sampling.capped",
            "sampling.share"
        ]
    );
    // Nothing for a dropped trace, a shadow drop, or a rule without marks.
    for d in [
        crate::decision::Decision::Drop {
            rule: "span-explosion".into(),
        },
        crate::decision::Decision::Shadow {
            rule: "span-explosion".into(),
            keep: false,
            sample_rate: 1,
        },
        crate::decision::Decision::Keep {
            rule: "rest".into(),
            sample_rate: 1,
        },
    ] {
        assert!(set.rule_marks(&d).is_none(), "{d:?}");
    }
    let shadow_keep = crate::decision::Decision::Shadow {
        rule: "span-explosion".into(),
        keep: true,
        sample_rate: 1,
    };
    assert!(set.rule_marks(&shadow_keep).is_some());
    // Explain names them.
    let text = with_trace(checkout(trace_id(5), 10, false, "free"), |v| {
        explain::explain(&set, v, 0)
    });
    assert!(
        text.contains("-> keep, marks {sampling.reason: \"span-explosion\", sampling.budget: 2, sampling.capped: true, sampling.share: 0.5}"),
        "{text}"
    );
}

#[test]
fn marks_errors_name_the_mark_and_what_is_accepted() {
    let cases: &[(&str, &str, usize)] = &[
        (
            "  - name: a\n    outcome: keep\n    marks: span-explosion\n",
            "marks: expected a map of attribute names to values, e.g. `marks: { sampling.reason: span-explosion }`, got `span-explosion`",
            4,
        ),
        (
            "  - name: a\n    outcome: keep\n    marks: {}\n",
            "an empty map marks nothing",
            4,
        ),
        (
            "  - name: a\n    outcome: keep\n    marks:\n      reason: [a, b]\n",
            "`reason`: a mark's value is a string, number or boolean, got a list",
            5,
        ),
        (
            "  - name: a\n    outcome: keep\n    marks:\n      big: .inf\n",
            "`big`: .inf is not a finite number; quote it for a string",
            5,
        ),
        (
            "  - name: a\n    outcome: drop\n    marks: { reason: x }\n",
            "`marks` applies to `outcome: keep` or `outcome: rate_limit` or `outcome: throughput` or `outcome: dynamic` only; this rule's outcome is `drop`",
            4,
        ),
        (
            "  - name: a\n    outcome: keep\n    mark: { reason: x }\n",
            "unknown key `mark`, did you mean `marks`?",
            4,
        ),
    ];
    super::tests::assert_refused(cases);
}

#[test]
fn a_dynamic_rule_parses_with_resource_keys_and_its_errors_say_what_is_accepted() {
    let rules = parse_file(
        "t.yaml",
        "rules:\n  - name: d\n    outcome: dynamic\n    goal_sample_rate: 20\n    keys: [resource.attr.k8s.namespace.name, root.attr.http.route]\n    window: 1m\n",
    )
    .expect("parses");
    match &rules[0].outcome {
        Outcome::Dynamic(d) => {
            assert_eq!(d.goal_rate, 20.0);
            assert_eq!(d.window, Duration::from_secs(60));
            assert_eq!(
                d.keys[0],
                KeyField::Resource(b"k8s.namespace.name".to_vec())
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(rules[0].describe(), "dynamic, 1 in 20 on average");
    let cases: &[(&str, &str, usize)] = &[
        (
            "  - name: a\n    outcome: dynamic\n    keys: [root.service]\n",
            "goal_sample_rate: `outcome: dynamic` needs `goal_sample_rate: N` (keep 1 in N on average)",
            2,
        ),
        (
            "  - name: a\n    outcome: dynamic\n    goal_sample_rate: 0.5\n    keys: [root.service]\n",
            "expected a sample rate of at least 1 (keep 1 in N), got 0.5",
            4,
        ),
        (
            "  - name: a\n    outcome: dynamic\n    goal_sample_rate: 10\n",
            "keys: `outcome: dynamic` needs `keys: [...]`",
            2,
        ),
        (
            "  - name: a\n    outcome: dynamic\n    goal_sample_rate: 10\n    keys: [span.name]\n",
            "use a `trace.` field, a `resource.attr.` or the root span's (`root.name`)",
            5,
        ),
        (
            "  - name: a\n    outcome: dynamic\n    goal_sample_rate: 10\n    keys: [resource.atr.x]\n",
            "unknown field `resource.atr.x`",
            5,
        ),
        (
            "  - name: a\n    outcome: dynamc\n",
            "unknown outcome `dynamc`, did you mean `dynamic`?",
            3,
        ),
        (
            "  - name: a\n    outcome: keep\n    goal_sample_rate: 10\n",
            "`goal_sample_rate` applies to `outcome: dynamic` only",
            4,
        ),
    ];
    super::tests::assert_refused(cases);
}

#[test]
fn a_resource_key_reads_the_root_spans_resource_or_the_first_spans() {
    let keys = [KeyField::Resource(b"service.name".to_vec())];
    let with_root = with_trace(checkout(trace_id(1), 10, false, "free"), |v| {
        condition::key_hash(&keys, v)
    });
    let gateway = with_trace(checkout(trace_id(2), 10, false, "free"), |v| {
        condition::key_hash(&keys, v)
    });
    assert_eq!(with_root, gateway, "the same root service, the same key");
    // Without its root, a trace is keyed by its first span's resource.
    let mut msgs = checkout(trace_id(3), 10, false, "free");
    msgs.retain(|(service, _)| *service != "gateway");
    let rootless = with_trace(msgs, |v| {
        assert!(v.root.is_none());
        condition::key_hash(&keys, v)
    });
    assert_ne!(rootless, gateway);
}
