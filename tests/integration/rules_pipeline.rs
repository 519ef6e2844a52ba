//! The rule language end to end through the pipeline on a real broker: one trace per operator
//! family and per outcome (keep, drop, rate_limit, throughput, shadow), with marking.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::fixture::kafka::TestProducer;
use crate::fixture::*;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use tailsift::config::MarkingConfig;
use tailsift::otlp::build::*;
use tailsift::otlp::mark::{encode_threshold, threshold};
use tailsift::otlp::TraceId;

const MS: u64 = 1_000_000;
const BASE: u64 = 1_700_000_000_000 * MS;

fn marking() -> MarkingConfig {
    tailsift::yaml::from_str("{}").expect("default marking")
}

/// A root span named `name` lasting `ms`, with attributes.
fn root(
    t: [u8; 16],
    name: &str,
    ms: u64,
    attrs: Vec<opentelemetry_proto::tonic::common::v1::KeyValue>,
) -> Span {
    with_attrs(span(t, 1, None, name, BASE, BASE + ms * MS), attrs)
}

fn send_spans(p: &TestProducer, topic: &str, t: [u8; 16], msgs: Vec<(&str, Vec<Span>)>) {
    for (svc, spans) in msgs {
        send(p, topic, &TraceId(t).to_hex(), &request(svc, spans));
    }
}

fn attr<'a>(s: &'a Span, key: &str) -> Option<&'a AnyValue> {
    s.attributes
        .iter()
        .rev()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

const RULES: &str = r#"
rules:
  - name: op-compare
    conditions:
      - root.name = cmp
      - span.attr.http.response.status_code >= 500
      - span.attr.retries < 2.5
      - span.duration <= 100ms
      - trace.duration > 50ms
      - trace.span_count != 7
      - trace.service_count = 1
    outcome: keep
  - name: op-string
    conditions:
      - root.name = str
      - root.attr.url.full starts-with https://
      - root.attr.url.full ends-with .json
      - span.name contains tr
      - root.attr.url.full not-contains secret
    outcome: keep
  - name: op-set
    conditions:
      - root.name = set
      - root.attr.region in [eu, us]
      - root.attr.tier not-in [free, trial]
    outcome: keep
  - name: op-exists
    conditions: [root.name = exist, root.attr.user.id exists, root.attr.debug not-exists]
    outcome: keep
  - name: op-regex
    conditions:
      - root.name = regex
      - root.attr.url.full matches '^https://[a-z]+\.example\.com/'
    outcome: keep
  - name: op-groups
    conditions:
      all:
        - root.name = group
        - span: [span.service = db, span.kind = client, scope.name = db-instrumentation]
        - not: {any: [resource.attr.env exists, root.status = error]}
    outcome: keep
  - name: out-drop
    conditions: root.name = drop
    outcome: drop
  - name: out-limited
    conditions: root.name = limited
    outcome: rate_limit
    traces_per_second: 2
  - name: out-limited-rest
    conditions: root.name = limited
    outcome: drop
  - name: out-throughput
    conditions: root.name = tp
    outcome: throughput
    traces_per_second: 1
    keys: [root.attr.route]
    window: 10s
  - name: out-default
    outcome: drop
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operator_family_and_outcome_decides_live_traces_and_marks_kept_spans() {
    let pipe = pipeline(RULES)
        .partitions(2)
        .config(|c| c.rules.marking = Some(marking()))
        .start()
        .await;
    let (p, input) = (producer(), &pipe.input);

    let mut n = 0u64;
    let mut next = || {
        n += 1;
        trace_id(7_000_000 + n)
    };
    // trace id -> the rule expected to keep it (None: expected not forwarded).
    let mut expect: BTreeMap<String, Option<&str>> = BTreeMap::new();
    let mut add = |p: &TestProducer,
                   t: [u8; 16],
                   rule: Option<&'static str>,
                   msgs: Vec<(&str, Vec<Span>)>| {
        send_spans(p, input, t, msgs);
        expect.insert(TraceId(t).to_hex(), rule);
    };

    // Comparisons: ints against numbers (also a double), durations, counts.
    for (rule, status) in [(Some("op-compare"), 503), (None, 404)] {
        let t = next();
        let r = root(
            t,
            "cmp",
            80,
            vec![
                attr_int("http.response.status_code", status),
                attr_int("retries", 2),
            ],
        );
        let child = span(t, 2, Some(1), "work", BASE, BASE + 10 * MS);
        add(&p, t, rule, vec![("gateway", vec![r, child])]);
    }
    // Strings.
    for (rule, url) in [
        (Some("op-string"), "https://shop.example.com/cart.json"),
        (None, "https://shop.example.com/secret.json"),
    ] {
        let t = next();
        add(
            &p,
            t,
            rule,
            vec![(
                "gateway",
                vec![root(t, "str", 5, vec![attr_str("url.full", url)])],
            )],
        );
    }
    // Sets.
    for (rule, tier) in [(Some("op-set"), "pro"), (None, "trial")] {
        let t = next();
        let r = root(
            t,
            "set",
            5,
            vec![attr_str("region", "eu"), attr_str("tier", tier)],
        );
        add(&p, t, rule, vec![("gateway", vec![r])]);
    }
    // Existence.
    for (rule, debug) in [(Some("op-exists"), false), (None, true)] {
        let t = next();
        let mut attrs = vec![attr_str("user.id", "u1")];
        if debug {
            attrs.push(attr_str("debug", "1"));
        }
        add(
            &p,
            t,
            rule,
            vec![("gateway", vec![root(t, "exist", 5, attrs)])],
        );
    }
    // Regex.
    for (rule, url) in [
        (Some("op-regex"), "https://shop.example.com/x"),
        (None, "http://shop.example.com/x"),
    ] {
        let t = next();
        add(
            &p,
            t,
            rule,
            vec![(
                "gateway",
                vec![root(t, "regex", 5, vec![attr_str("url.full", url)])],
            )],
        );
    }
    // Groups and scopes: one db client span (resource, scope), no env, root not failed.
    for (rule, kind) in [
        (Some("op-groups"), SpanKind::Client),
        (None, SpanKind::Server),
    ] {
        let t = next();
        let mut db = span(t, 2, Some(1), "SELECT", BASE, BASE + MS);
        db.kind = kind as i32;
        // A client span in another service does not make the group hold with the db server.
        let mut other = span(t, 3, Some(1), "GET", BASE, BASE + MS);
        other.kind = SpanKind::Client as i32;
        add(
            &p,
            t,
            rule,
            vec![
                ("gateway", vec![root(t, "group", 5, vec![]), other]),
                ("db", vec![db]),
            ],
        );
    }
    // drop.
    let t = next();
    add(
        &p,
        t,
        None,
        vec![("gateway", vec![root(t, "drop", 5, vec![])])],
    );
    // rate_limit: 6 at once, 2 per second allowed; the rest fall through to a drop.
    let limited: Vec<[u8; 16]> = (0..6).map(|_| next()).collect();
    for t in &limited {
        send_spans(
            &p,
            input,
            *t,
            vec![("gateway", vec![root(*t, "limited", 5, vec![])])],
        );
    }
    // throughput: a hot key and a rare one.
    let hot: Vec<[u8; 16]> = (0..30).map(|_| next()).collect();
    for t in &hot {
        send_spans(
            &p,
            input,
            *t,
            vec![(
                "gateway",
                vec![root(*t, "tp", 5, vec![attr_str("route", "/hot")])],
            )],
        );
    }
    let rare = next();
    add(
        &p,
        rare,
        Some("out-throughput"),
        vec![(
            "gateway",
            vec![root(rare, "tp", 5, vec![attr_str("route", "/rare")])],
        )],
    );
    // Matches nothing: the default.
    let t = next();
    add(
        &p,
        t,
        None,
        vec![("gateway", vec![root(t, "other", 5, vec![])])],
    );
    flush(&p);
    let sent = expect.len() + limited.len() + hot.len();

    assert!(
        eventually(Duration::from_secs(30), || pipe.decided() as usize == sent).await,
        "every trace is decided ({} of {sent})",
        pipe.decided()
    );
    let mut reader = pipe.reader();
    let kept_total = pipe.kept() as usize;
    reader.read_until(Duration::from_secs(20), |m| m.len() >= kept_total);
    reader.settle(secs(1));
    let by_key: BTreeMap<&str, &OutMsg> = reader
        .messages
        .iter()
        .map(|m| (m.key.as_str(), m))
        .collect();

    for (key, rule) in &expect {
        match rule {
            Some(r) => {
                let m = by_key
                    .get(key.as_str())
                    .unwrap_or_else(|| panic!("{r}: trace {key} not forwarded"));
                assert_eq!(m.headers["tailsift.rule"], *r);
            }
            None => assert!(
                !by_key.contains_key(key.as_str()),
                "trace {key} should not be forwarded"
            ),
        }
    }
    let limited_kept: Vec<&&OutMsg> = limited
        .iter()
        .filter_map(|t| by_key.get(TraceId(*t).to_hex().as_str()))
        .collect();
    assert!(
        (2..=3).contains(&limited_kept.len()),
        "rate_limit 2/s kept {} of 6 sent at once",
        limited_kept.len()
    );
    assert!(limited_kept
        .iter()
        .all(|m| m.headers["tailsift.rule"] == "out-limited"
            && m.headers["tailsift.sample_rate"] == "1"));
    let hot_kept: Vec<&&OutMsg> = hot
        .iter()
        .filter_map(|t| by_key.get(TraceId(*t).to_hex().as_str()))
        .collect();
    assert!(
        !hot_kept.is_empty() && hot_kept.len() < 15,
        "hot key kept {} of 30",
        hot_kept.len()
    );
    let by_rule = pipe.by_rule();
    let tp = by_rule
        .iter()
        .find(|r| r.0 == "out-throughput")
        .expect("throughput decided");
    assert_eq!(
        tp.1 as usize,
        hot_kept.len() + 1,
        "kept: the hot ones seen and the rare one"
    );
    assert!(tp.2 >= 15, "the hot key is thinned: {tp:?}");
    assert_eq!(
        by_key[TraceId(rare).to_hex().as_str()].headers["tailsift.sample_rate"],
        "1"
    );

    // Marking: every kept span names its rule and rate, and carries the threshold.
    for m in &reader.messages {
        let rate: i64 = m.headers["tailsift.sample_rate"].parse().expect("rate");
        for (_, s) in spans_of(&m.payload).expect("OTLP") {
            assert_eq!(
                attr(&s, "tailsift.rule"),
                Some(&AnyValue::StringValue(m.headers["tailsift.rule"].clone()))
            );
            assert_eq!(
                attr(&s, "tailsift.sample_rate"),
                Some(&AnyValue::IntValue(rate))
            );
            assert_eq!(
                s.trace_state,
                format!("ot=th:{}", encode_threshold(threshold(rate as u32)))
            );
        }
    }

    // Per-rule metrics, flushed per decider tick.
    let limited_kept_n = limited_kept.len() as f64;
    assert!(
        eventually(Duration::from_secs(10), || {
            let body = pipe.scrape();
            let n =
                |name: &str, labels: &[&str]| metric(&body, name, &labels.join(",")).unwrap_or(0.0);
            n(
                "tailsift_rule_traces_total",
                &["rule=\"out-limited\"", "result=\"matched\""],
            ) == 6.0
                && n(
                    "tailsift_rule_traces_total",
                    &["rule=\"out-limited\"", "result=\"kept\""],
                ) == limited_kept_n
                && n(
                    "tailsift_rule_traces_total",
                    &["rule=\"out-limited-rest\"", "result=\"dropped\""],
                ) == 6.0 - limited_kept_n
                && n(
                    "tailsift_rule_spans_total",
                    &["rule=\"op-compare\"", "result=\"kept\""],
                ) == 2.0
                && n(
                    "tailsift_rule_traces_total",
                    &["rule=\"out-throughput\"", "result=\"matched\""],
                ) == 31.0
        })
        .await,
        "per-rule counts: {}",
        pipe.scrape()
            .lines()
            .filter(|l| l.contains("tailsift_rule_"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    pipe.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mode_forwards_every_trace_marked_with_what_the_rules_would_do() {
    let pipe = pipeline(
        "rules:\n  - name: shadow-errors\n    conditions: trace.error = true\n    outcome: keep\n  - name: shadow-rest\n    outcome: drop\n",
    )
    .config(|c| {
        c.rules.mode = tailsift::config::RulesMode::Shadow;
        c.rules.marking = Some(marking());
    })
    .start()
    .await;
    let (p, input) = (producer(), &pipe.input);
    let failed = trace_id(8_000_001);
    let mut r = with_error(root(failed, "pay", 5, vec![]));
    r.trace_state = "vendor=x".into();
    send_spans(&p, input, failed, vec![("gateway", vec![r.clone()])]);
    let ordinary: Vec<[u8; 16]> = (2..5).map(|i| trace_id(8_000_000 + i)).collect();
    for t in &ordinary {
        send_spans(
            &p,
            input,
            *t,
            vec![("gateway", vec![root(*t, "get", 5, vec![])])],
        );
    }
    flush(&p);
    let mut reader = pipe.reader();
    assert!(
        reader.read_until(Duration::from_secs(30), |m| m.len() >= 4),
        "every trace is forwarded in shadow mode ({} of 4)",
        reader.messages.len()
    );
    let keys: BTreeSet<&str> = reader.messages.iter().map(|m| m.key.as_str()).collect();
    assert_eq!(keys.len(), 4);
    for m in &reader.messages {
        assert_eq!(
            m.headers["tailsift.sample_rate"], "1",
            "each forwarded trace stands for itself"
        );
        let (_, s) = spans_of(&m.payload).expect("OTLP").remove(0);
        let want = if m.key == TraceId(failed).to_hex() {
            assert_eq!(
                s.trace_state, "vendor=x",
                "shadow mode leaves the tracestate alone"
            );
            ("shadow-errors", "keep")
        } else {
            assert_eq!(s.trace_state, "");
            ("shadow-rest", "drop")
        };
        assert_eq!(m.headers["tailsift.rule"], want.0);
        assert_eq!(
            attr(&s, "tailsift.shadow"),
            Some(&AnyValue::StringValue(want.1.into()))
        );
    }
    assert_eq!(
        (pipe.kept(), pipe.dropped()),
        (1, 3),
        "counted as the rules decided"
    );
    pipe.shutdown().await;
}
