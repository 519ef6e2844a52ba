use std::time::Duration;

use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::time::Instant;

use super::*;
use crate::buffer::{Buffer, Completion};
use crate::decision::Decision;
use crate::decision::DecisionCache;
use crate::offsets::OffsetHold;
use crate::otlp::build::*;
use crate::otlp::decode::Decoder;

/// Buffers the given (service, spans) messages as one trace and returns its entry's view
/// evaluated by `f`.
pub(super) fn with_trace<R>(
    messages: Vec<(&str, Vec<Span>)>,
    f: impl FnOnce(&TraceView<'_>) -> R,
) -> R {
    let b = Buffer::new(Completion::default());
    let c = DecisionCache::new(10, Duration::from_secs(1));
    let hold = std::sync::Arc::new(OffsetHold {
        partition: 0,
        offset: 0,
    });
    let mut d = Decoder::new();
    let mut id = None;
    for (svc, spans) in messages {
        let p = request(svc, spans);
        d.decode(&p).unwrap();
        for g in d.groups(&p) {
            id = Some(g.trace_id);
            b.ingest(&g, &hold, false, Instant::now(), &c);
        }
    }
    let id = id.unwrap();
    let mut out = None;
    b.take(&id, |id, e| {
        out = Some(f(&TraceView::new(*id, e)));
        crate::decision::Decision::Drop { rule: "-".into() }
    });
    out.unwrap()
}

pub(super) const MS: u64 = 1_000_000;

/// A checkout: gateway root (route, tier), orders child with an int status, payment child.
pub(super) fn checkout(
    t: [u8; 16],
    payment_ms: u64,
    error: bool,
    tier: &str,
) -> Vec<(&'static str, Vec<Span>)> {
    let root = with_attrs(
        span(t, 1, None, "POST /api/checkout", 0, (payment_ms + 20) * MS),
        vec![
            attr_str("http.route", "/api/checkout"),
            attr_str("customer.tier", tier),
        ],
    );
    let orders = with_attrs(
        span(
            t,
            2,
            Some(1),
            "POST /orders",
            5 * MS,
            (payment_ms + 15) * MS,
        ),
        vec![attr_int(
            "http.response.status_code",
            if error { 502 } else { 200 },
        )],
    );
    let mut payment = span(
        t,
        3,
        Some(2),
        "POST /payments",
        10 * MS,
        (payment_ms + 10) * MS,
    );
    payment.kind = SpanKind::Client as i32;
    if error {
        payment = with_error(payment);
    }
    vec![
        ("payment", vec![payment]),
        ("orders", vec![orders]),
        ("gateway", vec![root]),
    ]
}

pub(super) fn cond(expr: &str) -> Cond {
    let text = format!("rules:\n  - name: r\n    conditions: {expr}\n    outcome: keep\n");
    let mut rules = parse_file("t.yaml", &text).unwrap_or_else(|e| panic!("{expr}: {e:?}"));
    rules.remove(0).condition.unwrap()
}

#[test]
fn conditions_match_trace_span_root_resource_and_scope_fields() {
    let t = trace_id(42);
    let cases: &[(&str, bool)] = &[
        ("trace.error = true", true),
        ("trace.error = false", false),
        ("trace.duration > 2s", true),
        ("trace.duration > 3s", false),
        ("trace.span_count = 3", true),
        ("trace.span_count >= 4", false),
        ("trace.root = true", true),
        ("trace.service_count = 3", true),
        ("trace.service_count > 3", false),
        ("span.status = error", true),
        ("span.kind = client", true),
        ("span.kind = producer", false),
        ("span.duration >= 2500ms", true),
        ("span.name starts-with 'POST /pay'", true),
        ("span.name ends-with /orders", true),
        ("span.name contains checkout", true),
        ("span.name matches '^POST /(orders|payments)$'", true),
        ("span.service = payment", true),
        ("span.service in [auth, inventory]", false),
        ("span.attr.http.response.status_code >= 500", true),
        ("span.attr.http.response.status_code = 502", true),
        ("span.attr.http.response.status_code = 502.0", true),
        ("span.attr.http.response.status_code = '502'", false),
        ("span.attr.customer.tier exists", true),
        ("span.attr.nope exists", false),
        ("span.attr.nope not-exists", true),
        ("resource.attr.service.name = gateway", true),
        ("scope.name = orders-instrumentation", true),
        ("scope.version != 1.0.0", false),
        ("root.attr.customer.tier = enterprise", true),
        ("root.attr.customer.tier in [free, pro]", false),
        ("root.name not-contains health", true),
        ("root.kind = server", true),
    ];
    with_trace(checkout(t, 2500, true, "enterprise"), |view| {
        for (expr, want) in cases {
            assert_eq!(cond(expr).eval(view), *want, "{expr}");
        }
    });
}

#[test]
fn a_span_group_needs_one_span_to_satisfy_every_condition() {
    let t = trace_id(7);
    with_trace(checkout(t, 100, true, "free"), |view| {
        // Some span is an error and some span is in `orders`, but not the same one.
        assert!(cond("[span.status = error, span.service = orders]").eval(view));
        assert!(!cond("{span: [span.status = error, span.service = orders]}").eval(view));
        assert!(cond("{span: [span.status = error, span.service = payment]}").eval(view));
        assert!(cond("{any: [trace.duration > 1h, span.service = orders]}").eval(view));
        assert!(!cond("{not: span.service = orders}").eval(view));
        assert!(cond("{root: [span.name = 'POST /api/checkout', {not: span.attr.customer.tier = enterprise}]}").eval(view));
    });
}

#[test]
fn root_conditions_are_false_while_the_root_is_missing() {
    let t = trace_id(8);
    let mut msgs = checkout(t, 100, false, "enterprise");
    msgs.pop(); // the gateway's root span never arrives
    with_trace(msgs, |view| {
        assert!(!cond("root.attr.customer.tier = enterprise").eval(view));
        assert!(cond("{not: root.attr.customer.tier = enterprise}").eval(view));
        assert!(cond("trace.root = false").eval(view));
    });
}

#[test]
fn load_errors_name_file_line_rule_field_and_what_is_accepted() {
    // (rule body, expected message part, line of the mistake: line 1 is `rules:`).
    let cases: &[(&str, &str, usize)] = &[
        (
            "  - name: a\n    outcome: keep\n    sample_rte: 2\n",
            "unknown key `sample_rte`, did you mean `sample_rate`?",
            4,
        ),
        (
            "  - name: a\n    conditions: span.nmae = x\n    outcome: keep\n",
            "unknown field `span.nmae`, did you mean `span.name`?",
            3,
        ),
        (
            "  - name: a\n    conditions:\n      - trace.error = true\n      - span.name > 5\n    outcome: keep\n",
            "`>` compares numbers or durations; this field is a string",
            5,
        ),
        (
            "  - name: a\n    conditions: trace.duration > 5\n    outcome: keep\n",
            "takes a duration such as 250ms",
            3,
        ),
        (
            "  - name: a\n    conditions: span.kind = sever\n    outcome: keep\n",
            "expected one of unspecified, internal, server",
            3,
        ),
        (
            "  - name: a\n    conditions: span.kind = consumr\n    outcome: keep\n",
            "got the string `consumr`, did you mean `consumer`?",
            3,
        ),
        (
            "  - name: a\n    conditions: root.status in [ok, eror]\n    outcome: keep\n",
            "did you mean `error`?",
            3,
        ),
        (
            "  - name: a\n    conditions: span.name matches '(unclosed'\n    outcome: keep\n",
            "invalid regex",
            3,
        ),
        (
            "  - name: a\n    conditions: span.name =~ x\n    outcome: keep\n",
            "unknown operator `=~`",
            3,
        ),
        ("  - name: a\n    outcome: maybe\n", "unknown outcome `maybe`", 3),
        (
            "  - name: a\n    outcome: drop\n    sample_rate: 3\n",
            "`sample_rate` applies to `outcome: keep` only; this rule's outcome is `drop`",
            4,
        ),
        (
            "  - name: a\n    outcome: keep\n    sample_rate: 0\n",
            "expected a whole number >= 1",
            4,
        ),
        ("  - outcome: keep\n", "every rule needs a non-empty `name`", 2),
        (
            "  - name: a\n    conditions: {span: [trace.error = true]}\n    outcome: keep\n",
            "trace field",
            3,
        ),
        (
            "  - name: a\n    outcome: rate_limit\n",
            "needs `traces_per_second: N`",
            2,
        ),
        (
            "  - name: a\n    outcome: rate_limit\n    traces_per_second: -1\n",
            "greater than 0",
            4,
        ),
        (
            "  - name: a\n    outcome: throughput\n    traces_per_second: 5\n",
            "needs `keys: [...]`",
            2,
        ),
        (
            "  - name: a\n    outcome: throughput\n    traces_per_second: 5\n    keys: [span.name]\n",
            "a key needs one value per trace: use a `trace.` field, a `resource.attr.` or the root span's (`root.name`)",
            5,
        ),
        (
            "  - name: a\n    outcome: throughput\n    traces_per_second: 5\n    keys: [root.service]\n    window: 10ms\n",
            "at least 1s",
            6,
        ),
        (
            "  - name: a\n    outcome: keep\n    keys: [root.service]\n",
            "`keys` applies to `outcome: throughput` or `outcome: dynamic` only",
            4,
        ),
        (
            "  - name: a\n    conditions: {every: [trace.error = true]}\n    outcome: keep\n",
            "is a trace field and cannot be tested on one span inside a span/root/every group",
            3,
        ),
        // Conditions that would silently match everything (or nothing).
        (
            "  - name: a\n    conditions:\n    outcome: keep\n",
            "conditions: `conditions:` is empty; to make this the default rule",
            3,
        ),
        (
            "  - name: a\n    conditions: ~\n    outcome: keep\n",
            "`conditions:` is empty",
            3,
        ),
        (
            "  - name: a\n    conditions: []\n    outcome: keep\n",
            "an empty list of conditions",
            3,
        ),
        (
            "  - name: a\n    conditions: {any: []}\n    outcome: keep\n",
            "an empty list of conditions: `[]` and `all: []` would hold for every trace and `any: []` for none",
            3,
        ),
        (
            "  - name: a\n    conditions:\n      - span:\n          all: []\n    outcome: keep\n",
            "an empty list of conditions",
            5,
        ),
        (
            "  - name: a\n    conditions: span.attr.region in []\n    outcome: keep\n",
            "`in []` is an empty list",
            3,
        ),
        (
            "  - name: a\n    conditions: span.attr.region not-in [ ]\n    outcome: keep\n",
            "`not-in []` is an empty list",
            3,
        ),
        // Repeated keys: YAML would keep one of them without a word.
        (
            "  - name: a\n    outcome: keep\n    outcome: drop\n",
            "outcome: `outcome` is given twice (first on line 3)",
            4,
        ),
        (
            "  - name: a\n    conditions:\n      span: [span.kind = server]\n      span: [span.kind = client]\n    outcome: keep\n",
            "`span` is given twice (first on line 4)",
            5,
        ),
        // Numbers that are not numbers, and a field where a value belongs.
        (
            "  - name: a\n    conditions: span.attr.ratio = nan\n    outcome: keep\n",
            "`nan` is not a finite number; quote it ('nan')",
            3,
        ),
        (
            "  - name: a\n    conditions: trace.span_count > 1e400\n    outcome: keep\n",
            "`1e400` is not a finite number",
            3,
        ),
        (
            "  - name: a\n    conditions: span.attr.ratio in [1, inf]\n    outcome: keep\n",
            "`inf` is not a finite number",
            3,
        ),
        (
            "  - name: a\n    outcome: rate_limit\n    traces_per_second: .nan\n",
            "is not a finite number",
            4,
        ),
        (
            "  - name: a\n    conditions: span.attr.a = span.attr.b\n    outcome: keep\n",
            "`span.attr.b` is a field name, but a condition compares a field with a value, not with another field; quote it ('span.attr.b')",
            3,
        ),
    ];
    assert_refused(cases);
}

#[test]
fn yaml_syntax_errors_have_a_line() {
    let errs = parse_file("f.yaml", "rules:\n  - name: a\n    outcome: [keep\n").unwrap_err();
    assert_eq!(errs.len(), 1);
    assert!(errs[0].line >= 3, "{errs:?}");
    assert!(errs[0].message.starts_with("invalid YAML"), "{errs:?}");
}

#[test]
fn every_error_of_a_file_is_reported() {
    let text = "rules:\n  - name: a\n    conditions: [span.nmae = x, trace.duration > soon]\n    outcome: keep\n  - name: b\n    outcome: nope\n    limit: 3\n";
    let errs = parse_file("f.yaml", text).unwrap_err();
    assert_eq!(errs.len(), 4, "{errs:?}");
    assert_eq!((errs[0].rule.as_str(), errs[0].line), ("`a`", 3));
    assert!(
        errs[1].message.contains("trace.duration > soon"),
        "{errs:?}"
    );
    assert_eq!(errs[2].rule, "`b`");
    assert_eq!(errs[2].field, "limit");
    assert_eq!(errs[3].field, "outcome");
}

#[test]
fn a_repeated_rules_list_and_a_second_document_are_refused_not_ignored() {
    let twice = "rules:\n  - name: a\n    outcome: keep\nrules:\n  - name: b\n    outcome: drop\n";
    let errs = parse_file("f.yaml", twice).unwrap_err();
    assert_eq!(
        (errs[0].line, errs[0].field.as_str()),
        (4, "rules"),
        "{errs:?}"
    );
    assert!(errs[0].message.contains("given twice"), "{errs:?}");
    let two_docs =
        "rules:\n  - name: a\n    outcome: keep\n---\nrules:\n  - name: b\n    outcome: drop\n";
    let errs = parse_file("f.yaml", two_docs).unwrap_err();
    assert_eq!(errs[0].line, 4, "{errs:?}");
    assert!(
        errs[0].message.contains("a second YAML document"),
        "{errs:?}"
    );
}

#[test]
fn an_alias_bomb_is_refused_in_milliseconds_and_small_aliases_still_work() {
    let started = std::time::Instant::now();
    let errs = parse_file("bomb.yaml", &crate::yaml::tests::alias_bomb()).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(errs[0].message.contains("aliases"), "{errs:?}");
    assert!(errs[0].line > 1, "{errs:?}");
    let shared = "rules:\n  - name: a\n    conditions: &errs [trace.error = true]\n    outcome: keep\n  - name: b\n    conditions: {not: *errs}\n    outcome: drop\n";
    assert_eq!(parse_file("f.yaml", shared).expect("aliases").len(), 2);
}

#[test]
fn the_repository_rules_load_and_decide_the_demo_traffic_as_documented() {
    let set = RuleSet::load(std::path::Path::new("rules"), None).unwrap();
    let names: Vec<&str> = set.rules().iter().map(|r| &*r.name).collect();
    assert_eq!(names.last(), Some(&"baseline"));
    let decide = |msgs| with_trace(msgs, |v| set.decide(v));
    let err = decide(checkout(trace_id(1), 100, true, "free"));
    assert_eq!(
        err,
        crate::decision::Decision::Keep {
            rule: "errors".into(),
            sample_rate: 1
        }
    );
    let slow = decide(checkout(trace_id(2), 2500, false, "free"));
    assert_eq!(slow.rule(), "slow-checkout");
    let ent = decide(checkout(trace_id(3), 100, false, "enterprise"));
    assert_eq!(ent.rule(), "enterprise-customers");
    let t = trace_id(4);
    let health = with_attrs(
        span(t, 1, None, "GET /healthz", 0, MS),
        vec![attr_str("http.route", "/healthz")],
    );
    assert_eq!(
        decide(vec![("gateway", vec![health])]),
        crate::decision::Decision::Drop {
            rule: "drop-health-checks".into()
        }
    );
    assert_eq!(
        decide(checkout(trace_id(5), 100, false, "free")).rule(),
        "baseline"
    );
    // The embedded copy the demo uses is the same set.
    let embedded = crate::demo::embedded_rules().unwrap();
    let embedded_names: Vec<&str> = embedded.rules().iter().map(|r| &*r.name).collect();
    assert_eq!(embedded_names, names);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]

    /// Two instances (two rule sets loaded separately) decide every trace id the same way,
    /// and 1-in-N lands within tolerance of 1/N.
    #[test]
    fn sampling_is_deterministic_across_instances_and_near_its_rate(
        rate in 2u32..50,
        salt in proptest::option::of("[a-z]{1,8}"),
        start in 0u64..1_000_000,
    ) {
        let rule = |n: &str| parse_file("f.yaml", &format!("rules:\n  - name: {n}\n    outcome: keep\n    sample_rate: {rate}\n")).unwrap();
        let a = RuleSet::new(rule("base"), salt.as_deref()).unwrap();
        let b = RuleSet::new(rule("base"), salt.as_deref()).unwrap();
        let n = 20_000u64;
        let mut kept = 0u64;
        for i in start..start + n {
            let id = crate::otlp::TraceId(trace_id(i));
            let ka = a.sampled(&id, rate);
            proptest::prop_assert_eq!(ka, b.sampled(&id, rate));
            kept += u64::from(ka);
        }
        let expected = n as f64 / f64::from(rate);
        let tolerance = 5.0 * expected.sqrt() + 1.0; // ~5 sigma
        proptest::prop_assert!((kept as f64 - expected).abs() < tolerance,
            "kept {} of {}, expected {:.0} ± {:.0}", kept, n, expected, tolerance);
    }
}

/// Parses each `(rules body, expected error, line)` case as the file `rules/x.yaml` and asserts
/// that it is refused with that error, at that line, for the rule named `a` (or the first rule,
/// `#1`, when it has no name).
pub(super) fn assert_refused(cases: &[(&str, &str, usize)]) {
    for &(body, want, line) in cases {
        let text = format!("rules:\n{body}");
        let errs = parse_file("rules/x.yaml", &text).expect_err(body);
        let msg = RulesError(errs.clone()).to_string();
        assert!(msg.contains(want), "{msg:?} should contain {want:?}");
        assert!(errs[0].rule == "`a`" || errs[0].rule == "#1", "{errs:?}");
        assert!(
            msg.starts_with(&format!("rules/x.yaml:{line}: rule {}: ", errs[0].rule)),
            "{msg} should be at line {line}"
        );
    }
}

pub(super) fn set(text: &str, options: RuleOptions) -> RuleSet {
    let rules = parse_file("t.yaml", text).unwrap_or_else(|e| panic!("{e:?}"));
    RuleSet::with_options(rules, options, "test".into()).unwrap()
}

#[test]
fn a_rate_limit_keeps_its_rate_and_the_excess_falls_through() {
    let rules = set(
        "rules:\n  - name: errors-limited\n    conditions: trace.error = true\n    outcome: rate_limit\n    traces_per_second: 3\n  - name: rest\n    outcome: drop\n",
        RuleOptions::default(),
    );
    let t0 = Instant::now();
    let decisions: Vec<Decision> = (0..5)
        .map(|i| {
            with_trace(checkout(trace_id(100 + i), 100, true, "free"), |v| {
                rules.decide_at(v, t0)
            })
        })
        .collect();
    let kept: Vec<&str> = decisions.iter().map(|d| d.rule()).collect();
    assert_eq!(
        kept,
        [
            "errors-limited",
            "errors-limited",
            "errors-limited",
            "rest",
            "rest"
        ]
    );
    assert_eq!(
        decisions[0],
        Decision::Keep {
            rule: "errors-limited".into(),
            sample_rate: 1
        }
    );
    // A second later the bucket holds 3 again.
    let later = with_trace(checkout(trace_id(200), 100, true, "free"), |v| {
        rules.decide_at(v, t0 + Duration::from_secs(1))
    });
    assert!(later.is_keep());
}

#[test]
fn a_throughput_rule_thins_hot_keys_and_its_decisions_carry_the_key_rate() {
    let rules = set(
        "rules:\n  - name: per-route\n    outcome: throughput\n    traces_per_second: 1\n    keys: [root.attr.http.route, trace.error]\n    window: 10s\n",
        RuleOptions::default(),
    );
    let t0 = Instant::now();
    let mut rates = Vec::new();
    // 20 traces/s of the same route for 20 s.
    for i in 0..400u64 {
        let now = t0 + Duration::from_millis(i * 50);
        let d = with_trace(checkout(trace_id(i), 100, false, "free"), |v| {
            rules.decide_at(v, now)
        });
        let rate = match d {
            Decision::Keep { sample_rate, .. } => sample_rate,
            Decision::Drop { .. } => 0,
            Decision::Shadow { .. } => unreachable!(),
        };
        rates.push(rate);
    }
    let last_kept = rates[300..].iter().find(|r| **r > 0).copied();
    assert_eq!(last_kept, Some(20), "20 traces/s to 1/s: 1 in 20");
    // A different key (an error trace) is rare: kept at rate 1.
    let rare = with_trace(checkout(trace_id(9999), 100, true, "free"), |v| {
        rules.decide_at(v, t0 + Duration::from_secs(20))
    });
    assert_eq!(
        rare,
        Decision::Keep {
            rule: "per-route".into(),
            sample_rate: 1
        }
    );
}

#[test]
fn shadow_mode_decides_as_enforce_would_but_forwards_everything() {
    let text = "rules:\n  - name: errors\n    conditions: trace.error = true\n    outcome: keep\n  - name: rest\n    outcome: drop\n";
    let shadow = set(
        text,
        RuleOptions {
            mode: Mode::Shadow,
            ..RuleOptions::default()
        },
    );
    let d = with_trace(checkout(trace_id(1), 100, false, "free"), |v| {
        shadow.decide(v)
    });
    assert_eq!(
        d,
        Decision::Shadow {
            rule: "rest".into(),
            keep: false,
            sample_rate: 1
        }
    );
    assert!(d.forwards() && !d.is_keep());
    let d = with_trace(checkout(trace_id(2), 100, true, "free"), |v| {
        shadow.decide(v)
    });
    assert!(d.forwards() && d.is_keep());
}

#[test]
fn explain_and_test_agree_on_a_spent_rate_limit() {
    let rules = set(
        "rules:\n  - name: limited\n    conditions: trace.error = true\n    outcome: rate_limit\n    traces_per_second: 2\n  - name: rest\n    outcome: drop\n",
        RuleOptions::default(),
    );
    for (after, decider) in [(0, "limited"), (1, "limited"), (2, "rest"), (5, "rest")] {
        with_trace(checkout(trace_id(7), 100, true, "free"), |v| {
            let verdict = explain::case_verdict(&rules, v, after);
            assert_eq!(&*rules.rules()[verdict.rule].name, decider, "after {after}");
            let text = explain::explain(&rules, v, after);
            let over = text.contains("=> conditions held, but over the rate limit: next rule");
            assert_eq!(over, decider == "rest", "after {after}: {text}");
            let last_rule = text
                .lines()
                .rfind(|l| l.starts_with("rule `"))
                .expect("a rule");
            assert!(
                last_rule.starts_with(&format!("rule `{decider}`")),
                "after {after}: {text}"
            );
            if after > 0 {
                assert!(text.contains(&format!("`after: {after}`")), "{text}");
            }
        });
    }
}

#[test]
fn explain_shows_each_rule_and_which_conditions_held() {
    let rules = RuleSet::load(std::path::Path::new("rules"), None).unwrap();
    let text = with_trace(checkout(trace_id(3), 2500, false, "free"), |v| {
        explain::explain(&rules, v, 0)
    });
    assert!(text.contains("rule `errors`"), "{text}");
    assert!(text.contains("✗ trace.error = true   (is false)"), "{text}");
    assert!(
        text.contains("✓ trace.duration > 2s   (is 2.520s)"),
        "{text}"
    );
    assert!(text.contains("=> matched: KEEP"), "{text}");
    assert!(
        !text.contains("rule `baseline`"),
        "later rules are not shown: {text}"
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(16))]

    /// Two instances deciding the same traces in different orders, each with its own rule set
    /// loaded from the same text, agree on every trace: sampling depends on the trace id (and
    /// salt) only, never on what an instance saw before.
    #[test]
    fn instances_agree_whatever_order_they_see_traces_in(
        rate in 2u32..20,
        salt in proptest::option::of("[a-z]{1,8}"),
        seed in 0u64..1_000_000,
    ) {
        let text = format!(
            "rules:\n  - name: errors\n    conditions: trace.error = true\n    outcome: keep\n    sample_rate: 2\n  - name: base\n    outcome: keep\n    sample_rate: {rate}\n"
        );
        let options = RuleOptions { salt: salt.clone(), ..RuleOptions::default() };
        let a = set(&text, options.clone());
        let b = set(&text, options);
        let ids: Vec<u64> = (0..60).map(|i| seed + i * 7919).collect();
        let decide = |s: &RuleSet, i: u64| {
            with_trace(checkout(trace_id(i), 50, i.is_multiple_of(3), "free"), |v| s.decide(v))
        };
        let first: Vec<Decision> = ids.iter().map(|i| decide(&a, *i)).collect();
        let mut second: Vec<(u64, Decision)> = ids.iter().rev().map(|i| (*i, decide(&b, *i))).collect();
        second.reverse();
        for ((i, d), want) in second.iter().zip(&first) {
            proptest::prop_assert_eq!(d, want, "trace {}", i);
        }
    }
}

#[test]
fn a_view_built_after_another_sees_only_its_own_spans() {
    // Views reuse one vector per thread: the second trace must not see the first one's spans.
    let big: Vec<Span> = (1..=40)
        .map(|i| span(trace_id(71), i, Some(1), &format!("op-{i}"), 0, MS))
        .collect();
    let names = |t: &TraceView<'_>| -> Vec<String> {
        t.spans
            .iter()
            .map(|(s, _)| String::from_utf8_lossy(s.name).into_owned())
            .collect()
    };
    let first = with_trace(vec![("orders", big)], |t| (t.spans.len(), names(t)));
    assert_eq!(first.0, 40);
    let small = vec![
        span(trace_id(72), 1, None, "root", 0, MS),
        span(trace_id(72), 2, Some(1), "child", 0, MS),
    ];
    let second = with_trace(vec![("gateway", small)], |t| {
        (t.spans.len(), names(t), t.root)
    });
    assert_eq!(
        second,
        (2, vec!["root".to_string(), "child".into()], Some(0))
    );
}

#[test]
fn a_bad_reload_an_alias_bomb_included_keeps_the_rules_in_use() {
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.yaml"),
        "rules:\n  - name: keep-all\n    outcome: keep\n",
    )
    .unwrap();
    let first = RuleSet::load(dir.path(), None).unwrap();
    let v1 = first.version().to_string();
    let in_use = Arc::new(Mutex::new(Arc::new(first)));
    let slot = in_use.clone();
    let swap: reload::Swap =
        Arc::new(move |new| std::mem::replace(&mut *slot.lock().unwrap(), new));
    let mut loader = reload::Loader::new(dir.path(), RuleOptions::default(), &v1, swap);

    std::fs::write(dir.path().join("b.yaml"), crate::yaml::tests::alias_bomb()).unwrap();
    let started = std::time::Instant::now();
    let got = loader.reload(false);
    assert!(started.elapsed() < Duration::from_secs(1));
    match got {
        reload::Reloaded::Failed(e) => {
            assert!(e.contains("b.yaml:") && e.contains("aliases"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(in_use.lock().unwrap().version(), v1, "the old rules stay");
    assert_eq!(
        loader.reload(false),
        reload::Reloaded::Unchanged,
        "not re-read until changed"
    );

    std::fs::remove_file(dir.path().join("b.yaml")).unwrap();
    std::fs::write(
        dir.path().join("a.yaml"),
        "rules:\n  - name: drop-all\n    outcome: drop\n",
    )
    .unwrap();
    assert!(matches!(loader.reload(false), reload::Reloaded::Swapped(_)));
    assert_eq!(&*in_use.lock().unwrap().rules()[0].name, "drop-all");
}

#[test]
fn a_rule_a_reload_removes_shows_as_inactive() {
    use std::sync::{Arc, Mutex};
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let dir = tempfile::tempdir().unwrap();
    let write = |rules: &str| std::fs::write(dir.path().join("a.yaml"), rules).unwrap();
    write("rules:\n  - name: slow\n    conditions: trace.duration > 1s\n    outcome: keep\n  - name: rest\n    outcome: drop\n");
    let first = RuleSet::load(dir.path(), None).unwrap();
    let v1 = first.version().to_string();
    let slot = Arc::new(Mutex::new(Arc::new(first)));
    let swap: reload::Swap =
        Arc::new(move |new| std::mem::replace(&mut *slot.lock().unwrap(), new));
    let mut loader = reload::Loader::new(dir.path(), RuleOptions::default(), &v1, swap);
    let reload = |loader: &mut reload::Loader| {
        metrics::with_local_recorder(&recorder, || loader.reload(false));
        handle.render()
    };
    write("rules:\n  - name: slower\n    conditions: trace.duration > 2s\n    outcome: keep\n  - name: rest\n    outcome: drop\n");
    let text = reload(&mut loader);
    for (rule, active) in [("slow", 0), ("slower", 1), ("rest", 1)] {
        let line = format!("tailsift_rule_active{{rule=\"{rule}\"}} {active}\n");
        assert!(text.contains(&line), "{line} in:\n{text}");
    }
    // Back again: active again.
    write("rules:\n  - name: slow\n    conditions: trace.duration > 1s\n    outcome: keep\n  - name: rest\n    outcome: drop\n");
    let text = reload(&mut loader);
    for (rule, active) in [("slow", 1), ("slower", 0), ("rest", 1)] {
        let line = format!("tailsift_rule_active{{rule=\"{rule}\"}} {active}\n");
        assert!(text.contains(&line), "{line} in:\n{text}");
    }
}
