//! Redaction tests: the config's errors as a table, the rewrite on built spans, and the
//! property that redacted output is valid OTLP and unmatched spans leave untouched.

use opentelemetry_proto::tonic::common::v1::any_value::Value as V;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::{Event, Link};
use opentelemetry_proto::tonic::trace::v1::Span;
use proptest::prelude::*;
use prost::Message;

use super::*;
use crate::otlp::build::{attr_int, attr_str, span, trace_id, with_attrs};
use crate::otlp::wire::{put_len_prefix, Fields};
use crate::otlp::SpanContext;
use hmac::Mac as _;

pub(super) const KEY: &str = "0123456789abcdef-secret";

pub(super) fn env(k: &str) -> Option<String> {
    (k == "HASH_KEY").then(|| KEY.to_string())
}

const CONFIG: &str = r#"
hash_key: ${env:HASH_KEY}
attributes:
  - name: user-id
    key: user.id
    action: hash
  - name: sql
    key: db.statement
    action: scrub
    patterns: [sql_literals]
  - name: contact
    key_regex: '^(user\.email|message|card)$'
    action: scrub
    patterns: [email, card_number]
  - name: auth
    key_prefix: http.request.header.
    action: replace
  - name: bodies
    key: [http.request.body, http.response.body]
    services: [gateway]
    action: remove
allowlists:
  - name: payment-allowlist
    services: [payment]
    keys: [http.method, payment.amount]
"#;

fn redaction() -> Redaction {
    parse("redaction.yaml", CONFIG, &env).expect("the example config loads")
}

pub(super) fn ctx(service: &str, extra: Vec<KeyValue>) -> SpanContext {
    let mut attributes = vec![attr_str("service.name", service)];
    attributes.extend(extra);
    let r = Resource {
        attributes,
        ..Resource::default()
    };
    let mut fields = Vec::new();
    let b = r.encode_to_vec();
    put_len_prefix(&mut fields, 1, b.len());
    fields.extend_from_slice(&b);
    SpanContext::new(fields, Vec::new())
}

pub(super) fn field(s: &Span) -> Vec<u8> {
    let b = s.encode_to_vec();
    let mut out = Vec::new();
    put_len_prefix(&mut out, 2, b.len());
    out.extend_from_slice(&b);
    out
}

pub(super) fn spans_of(fields: &[u8]) -> Vec<Span> {
    Fields::new(fields)
        .map(|f| Span::decode(f.unwrap().value.as_bytes().unwrap()).unwrap())
        .collect()
}

pub(super) fn get(kv: &[KeyValue], k: &str) -> Option<V> {
    kv.iter()
        .find(|a| a.key == k)
        .and_then(|a| a.value.clone())
        .and_then(|v| v.value)
}

pub(super) fn hmac_hex(v: &str) -> String {
    let mut h = Hmac::<Sha256>::new_from_slice(KEY.as_bytes()).unwrap();
    hmac::Mac::update(&mut h, v.as_bytes());
    hex::encode(hmac::Mac::finalize(h).into_bytes())
}

#[test]
fn each_action_rewrites_only_the_attributes_it_names() {
    let t = trace_id(1);
    let s = with_attrs(
        span(t, 1, None, "SELECT", 10, 20),
        vec![
            attr_str("user.id", "u-42"),
            attr_int("http.status", 200),
            attr_str(
                "db.statement",
                "SELECT * FROM users WHERE id = 42 AND name = 'bob'",
            ),
            attr_str("user.email", "write to jane@example.com"),
            attr_str("http.request.header.authorization", "Bearer abc"),
            attr_str("http.request.body", "{...}"),
            attr_str("card", "4111 1111 1111 1111"),
        ],
    );
    let red = redaction();
    let mut tally = Tally::default();
    let c = red.chunk(&ctx("gateway", vec![]), &field(&s), &mut tally);
    assert!(c.context.is_none(), "nothing to redact in the resource");
    assert!(c.reason.is_none());
    let got = &spans_of(c.spans.as_deref().expect("rewritten"))[0];
    let a = &got.attributes;
    assert_eq!(get(a, "user.id"), Some(V::StringValue(hmac_hex("u-42"))));
    assert_eq!(get(a, "http.status"), Some(V::IntValue(200)));
    assert_eq!(
        get(a, "db.statement"),
        Some(V::StringValue(
            "SELECT * FROM users WHERE id = ? AND name = ?".into()
        ))
    );
    assert_eq!(
        get(a, "user.email"),
        Some(V::StringValue("write to [REDACTED]".into()))
    );
    assert_eq!(
        get(a, "http.request.header.authorization"),
        Some(V::StringValue("[REDACTED]".into()))
    );
    assert_eq!(get(a, "http.request.body"), None, "removed for gateway");
    assert_eq!(get(a, "card"), Some(V::StringValue("[REDACTED]".into())));
    // Everything but the attributes is as it was, attribute order included.
    let keys: Vec<&str> = a.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "user.id",
            "http.status",
            "db.statement",
            "user.email",
            "http.request.header.authorization",
            "card"
        ]
    );
    let mut want = s.clone();
    want.attributes = got.attributes.clone();
    assert_eq!(got, &want);
    assert_eq!(tally.rewritten, 1);
    assert_eq!(tally.attributes, vec![1, 1, 2, 1, 1, 0]);
}

#[test]
fn a_per_service_entry_leaves_other_services_alone() {
    let s = with_attrs(
        span(trace_id(2), 1, None, "x", 1, 2),
        vec![attr_str("http.request.body", "{...}")],
    );
    let mut tally = Tally::default();
    let c = redaction().chunk(&ctx("orders", vec![]), &field(&s), &mut tally);
    assert!(c.spans.is_none() && c.context.is_none(), "untouched");
    assert_eq!(tally, Tally::default());
}

#[test]
fn events_links_and_resources_are_redacted_too() {
    let mut s = span(trace_id(3), 1, None, "x", 1, 2);
    s.events.push(Event {
        name: "exception".into(),
        attributes: vec![attr_str("user.id", "u-1"), attr_str("keep", "me")],
        ..Event::default()
    });
    s.links.push(Link {
        trace_id: trace_id(4).to_vec(),
        span_id: 7u64.to_be_bytes().to_vec(),
        attributes: vec![attr_str("user.email", "a@b.io")],
        ..Link::default()
    });
    let ctx = ctx(
        "orders",
        vec![attr_str("user.id", "u-9"), attr_str("host.name", "h1")],
    );
    let mut tally = Tally::default();
    let c = redaction().chunk(&ctx, &field(&s), &mut tally);
    let got = &spans_of(c.spans.as_deref().unwrap())[0];
    assert_eq!(
        get(&got.events[0].attributes, "user.id"),
        Some(V::StringValue(hmac_hex("u-1")))
    );
    assert_eq!(
        get(&got.events[0].attributes, "keep"),
        Some(V::StringValue("me".into()))
    );
    assert_eq!(got.events[0].name, "exception");
    assert_eq!(
        get(&got.links[0].attributes, "user.email"),
        Some(V::StringValue("[REDACTED]".into()))
    );
    assert_eq!(got.links[0].span_id, 7u64.to_be_bytes().to_vec());
    let rctx = c.context.expect("the resource is rewritten");
    let r = Resource::decode(rctx.resource_message()).unwrap();
    assert_eq!(
        get(&r.attributes, "user.id"),
        Some(V::StringValue(hmac_hex("u-9")))
    );
    assert_eq!(
        get(&r.attributes, "host.name"),
        Some(V::StringValue("h1".into()))
    );
    assert_eq!(rctx.service_name(), Some(&b"orders"[..]));
    assert_eq!(rctx.scope_fields(), ctx.scope_fields());
}

#[test]
fn an_allowlist_keeps_only_its_keys_and_the_service_name() {
    let s = with_attrs(
        span(trace_id(5), 1, None, "pay", 1, 2),
        vec![
            attr_str("http.method", "POST"),
            attr_str("card.holder", "Jane"),
            attr_int("payment.amount", 12),
        ],
    );
    let ctx = ctx("payment", vec![attr_str("k8s.pod.name", "p-1")]);
    let mut tally = Tally::default();
    let c = redaction().chunk(&ctx, &field(&s), &mut tally);
    let got = &spans_of(c.spans.as_deref().unwrap())[0];
    let keys: Vec<&str> = got.attributes.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(keys, ["http.method", "payment.amount"]);
    let r = Resource::decode(c.context.unwrap().resource_message()).unwrap();
    let keys: Vec<&str> = r.attributes.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(keys, ["service.name"]);
    assert_eq!(tally.attributes[5], 2, "counted under the allowlist");
}

#[test]
fn a_span_whose_attributes_do_not_parse_is_refused_and_the_others_pass() {
    let good = with_attrs(
        span(trace_id(6), 1, None, "ok", 1, 2),
        vec![attr_str("a", "b")],
    );
    // A span whose attribute is a truncated message: the span walks, the attribute does not.
    let mut bad = Vec::new();
    let broken_kv = [0x0a, 0x05, b'a'];
    put_len_prefix(&mut bad, 9, broken_kv.len());
    bad.extend_from_slice(&broken_kv);
    let mut input = field(&good);
    let bad_field_start = input.len();
    put_len_prefix(&mut input, 2, bad.len());
    input.extend_from_slice(&bad);
    let mut tally = Tally::default();
    let c = redaction().chunk(&ctx("orders", vec![]), &input, &mut tally);
    assert_eq!(c.refused, input[bad_field_start..]);
    assert!(
        matches!(
            c.reason,
            Some(Unparsable::Wire {
                what: "attribute",
                ..
            })
        ),
        "{:?}",
        c.reason
    );
    assert_eq!(
        c.spans.as_deref(),
        Some(&input[..bad_field_start]),
        "the good span as it was"
    );
    assert_eq!(tally.refused, 1);
}

#[test]
fn config_mistakes_name_the_line_entry_and_key_and_what_is_accepted() {
    // (yaml, line, entry, field, part of the message)
    let cases: &[(&str, usize, &str, &str, &str)] = &[
        ("atributes: []", 1, "-", "atributes", "did you mean `attributes`?"),
        ("attributes:\n  - name: a\n    key: k\n    acton: remove", 4, "`a`", "acton", "did you mean `action`?"),
        ("attributes:\n  - name: a\n    key: k\n    action: mask", 4, "`a`", "action", "unknown action `mask` (supported: remove, replace, hash, scrub)"),
        ("attributes:\n  - name: a\n    key_regex: 'user.(id'\n    action: remove", 3, "`a`", "key_regex", "invalid regex `user.(id`"),
        ("attributes:\n  - name: a\n    key: k\n    action: hash", 1, "-", "hash_key", "needs `hash_key: ${env:NAME}`"),
        ("hash_key: ${env:NOPE}\nattributes:\n  - name: a\n    key: k\n    action: hash", 1, "-", "hash_key", "environment variable `NOPE` is not set"),
        ("hash_key: plain-text-key-1234567\nattributes: []", 1, "-", "hash_key", "as a reference"),
        ("hash_key: ${env:SHORT}\nattributes: []", 1, "-", "hash_key", "at least 16"),
        ("attributes:\n  - name: a\n    key: k\n    action: scrub\n    patterns: [emails]", 5, "`a`", "patterns", "did you mean `email`?"),
        ("attributes:\n  - name: a\n    key: k\n    action: scrub", 2, "`a`", "patterns", "needs `patterns: [...]`"),
        ("attributes:\n  - name: a\n    key: k\n    action: hash\n    mask: x", 5, "`a`", "mask", "applies to `action: replace` or `action: scrub` only"),
        ("attributes:\n  - name: a\n    action: remove", 2, "`a`", "key", "`key`, `key_prefix` or `key_regex`"),
        ("attributes:\n  - name: a\n    key: k\n    action: remove\n  - name: a\n    key: j\n    action: remove", 5, "`a`", "name", "unique"),
        ("allowlists:\n  - name: p\n    keys: [a]", 2, "`p`", "services", "needs `services"),
    ];
    let env = |k: &str| match k {
        "SHORT" => Some("short".to_string()),
        _ => env(k),
    };
    for (yaml, line, entry, field, part) in cases {
        let errors = parse("r/redaction.yaml", yaml, &env).expect_err(yaml);
        let hit = errors.iter().find(|e| e.field == *field);
        let Some(e) = hit else {
            panic!("{yaml}: no error on `{field}`: {errors:?}");
        };
        assert_eq!((e.line, e.rule.as_str()), (*line, *entry), "{yaml}: {e}");
        assert!(e.message.contains(part), "{yaml}: {e}");
        assert!(e.to_string().starts_with("r/redaction.yaml:"), "{e}");
    }
}

#[test]
fn every_entry_and_allowlist_labels_a_counter_registered_at_zero() {
    let red = redaction();
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || red.register_metrics());
    let mut series: Vec<String> = handle
        .render()
        .lines()
        .filter_map(|l| l.strip_prefix("tailsift_redacted_attributes_total{"))
        .map(str::to_string)
        .collect();
    series.sort();
    assert_eq!(
        series,
        [
            r#"action="allowlist",redaction="payment-allowlist"} 0"#,
            r#"action="hash",redaction="user-id"} 0"#,
            r#"action="remove",redaction="bodies"} 0"#,
            r#"action="replace",redaction="auth"} 0"#,
            r#"action="scrub",redaction="contact"} 0"#,
            r#"action="scrub",redaction="sql"} 0"#,
        ]
    );
    let names: Vec<&str> = red.names().collect();
    assert_eq!(
        names,
        [
            "user-id",
            "sql",
            "contact",
            "auth",
            "bodies",
            "payment-allowlist"
        ]
    );
}

/// A random attribute: sometimes one the config redacts, mostly not.
fn any_attr() -> impl Strategy<Value = KeyValue> {
    let key = prop_oneof![
        3 => "[a-z]{1,6}(\\.[a-z]{1,6}){0,2}",
        1 => Just("user.id".to_string()),
        1 => Just("db.statement".to_string()),
        1 => Just("user.email".to_string()),
        1 => Just("http.request.header.cookie".to_string()),
        1 => Just("http.request.body".to_string()),
    ];
    let value = prop_oneof![
        "[ -~]{0,40}".prop_map(V::StringValue),
        any::<i64>().prop_map(V::IntValue),
        any::<bool>().prop_map(V::BoolValue),
        Just(V::StringValue("SELECT 1 FROM t WHERE a = 'x'".into())),
        Just(V::StringValue("to: a.b@example.org".into())),
    ];
    (key, value).prop_map(|(k, v)| KeyValue {
        key: k,
        value: Some(opentelemetry_proto::tonic::common::v1::AnyValue { value: Some(v) }),
        ..KeyValue::default()
    })
}

fn any_span() -> impl Strategy<Value = Span> {
    (
        "[a-zA-Z /]{0,20}",
        prop::collection::vec(any_attr(), 0..6),
        prop::collection::vec(any_attr(), 0..3),
        prop::collection::vec(any_attr(), 0..3),
        any::<u64>(),
    )
        .prop_map(|(name, attrs, ev, ln, n)| {
            let mut s = with_attrs(span(trace_id(n), n | 1, None, &name, 1, 2), attrs);
            if !ev.is_empty() {
                s.events.push(Event {
                    name: "e".into(),
                    attributes: ev,
                    ..Event::default()
                });
            }
            if !ln.is_empty() {
                s.links.push(Link {
                    span_id: vec![1; 8],
                    attributes: ln,
                    ..Link::default()
                });
            }
            s
        })
}

/// The attributes a span would lose or have changed under [`CONFIG`] for a service other
/// than gateway and payment.
fn sensitive(kv: &KeyValue) -> bool {
    matches!(kv.key.as_str(), "user.id" | "db.statement" | "user.email")
        || kv.key.starts_with("http.request.header.")
}

/// Whether [`CONFIG`] must change this value of this (sensitive) key.
fn must_change(key: &str, v: &str) -> bool {
    let emails = scrub::Scrub {
        sql: false,
        email: true,
        card: true,
        custom: None,
        mask: b"x".to_vec().into(),
    };
    match key {
        "db.statement" => scrub::sql_literals(v.as_bytes()).is_some(),
        "user.email" => emails.apply(v.as_bytes()).is_some(),
        _ => true,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Redacted output decodes as valid OTLP, spans that name no redacted key come out byte
    /// for byte, and the others differ from their original in redacted attributes only.
    #[test]
    fn redacted_spans_decode_and_unmatched_spans_are_untouched(
        spans in prop::collection::vec(any_span(), 1..6),
        service in prop_oneof![Just("orders"), Just("gateway"), Just("payment")],
    ) {
        let red = redaction();
        let ctx = ctx(service, vec![]);
        let fields: Vec<Vec<u8>> = spans.iter().map(field).collect();
        let input = fields.concat();
        let mut tally = Tally::default();
        let c = red.chunk(&ctx, &input, &mut tally);
        prop_assert!(c.reason.is_none());
        let out = c.spans.clone().unwrap_or_else(|| input.clone());
        // The whole request still decodes with prost.
        let mut request = Vec::new();
        for m in crate::otlp::encode::encode_trace(std::iter::once((&ctx, out.as_slice())), usize::MAX) {
            request.extend(m);
        }
        let decoded = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(request.as_slice());
        prop_assert!(decoded.is_ok());
        let got = spans_of(&out);
        prop_assert_eq!(got.len(), spans.len());
        let raw: Vec<&[u8]> = Fields::new(&out).map(|f| f.unwrap().raw).collect();
        for ((orig, got), (raw, before)) in spans.iter().zip(&got).zip(raw.iter().zip(&fields)) {
            let all = orig.attributes.iter()
                .chain(orig.events.iter().flat_map(|e| &e.attributes))
                .chain(orig.links.iter().flat_map(|l| &l.attributes));
            let touched = match service {
                "payment" => all.clone().any(|kv| !["http.method", "payment.amount"].contains(&kv.key.as_str())),
                "gateway" => all.clone().any(|kv| sensitive(kv) || kv.key == "http.request.body"),
                _ => all.clone().any(sensitive),
            };
            if !touched {
                prop_assert_eq!(raw, &before.as_slice(), "untouched byte for byte");
            }
            // Everything but attributes is the original.
            let mut a = orig.clone();
            let mut b = got.clone();
            a.attributes.clear(); b.attributes.clear();
            for e in a.events.iter_mut().chain(b.events.iter_mut()) { e.attributes.clear(); }
            for l in a.links.iter_mut().chain(b.links.iter_mut()) { l.attributes.clear(); }
            prop_assert_eq!(a, b);
            // No sensitive original value survives.
            for kv in orig.attributes.iter().filter(|kv| sensitive(kv)) {
                if let Some(V::StringValue(v)) = kv.value.as_ref().and_then(|v| v.value.clone()) {
                    let leaked = got.attributes.iter().any(|g| g.key == kv.key
                        && g.value.as_ref().and_then(|v| v.value.clone()) == Some(V::StringValue(v.clone()))
                        && must_change(&kv.key, &v));
                    prop_assert!(!leaked, "{} = {:?} left as it was", kv.key, v);
                }
            }
        }
    }
}

#[test]
fn dead_letter_kinds_are_the_decode_kinds_and_unredactable() {
    let mut want: Vec<&str> = crate::otlp::decode::DecodeError::KINDS.to_vec();
    want.push(crate::kafka::dead_letter::UNREDACTABLE);
    assert_eq!(crate::telemetry::catalog::LETTER_KINDS, want.as_slice());
}

/// The example file the repository ships (`rules/redaction/redaction.yaml`) loads, and does
/// what its comments say: it cannot rot.
#[test]
fn the_example_redaction_file_loads_and_does_what_it_says() {
    let env = |k: &str| (k == "TAILSIFT_HASH_KEY").then(|| KEY.to_string());
    let red = parse(
        "rules/redaction/redaction.yaml",
        include_str!("../../rules/redaction/redaction.yaml"),
        &env,
    )
    .expect("the example loads");
    assert_eq!(red.file(), "rules/redaction/redaction.yaml");
    assert_eq!(red.counts(), (5, 1));
    let s = with_attrs(
        span(trace_id(3), 1, None, "GET /orders", 1, 2),
        vec![
            attr_str("user.id", "u-42"),
            attr_str("db.statement", "SELECT * FROM t WHERE id = 42"),
            attr_str("url.full", "https://shop.example/?mail=jane@example.com"),
            attr_str("http.request.header.cookie", "session=abc"),
            attr_str("http.route", "/orders"),
        ],
    );
    let mut tally = Tally::default();
    let c = red.chunk(&ctx("orders", vec![]), &field(&s), &mut tally);
    let out = &spans_of(&c.spans.expect("rewritten"))[0].attributes;
    let want = [
        ("user.id", hmac_hex("u-42")),
        ("db.statement", "SELECT * FROM t WHERE id = ?".to_string()),
        (
            "url.full",
            "https://shop.example/?mail=[REDACTED]".to_string(),
        ),
        ("http.request.header.cookie", "***".to_string()),
        ("http.route", "/orders".to_string()),
    ];
    for (k, v) in want {
        assert_eq!(get(out, k), Some(V::StringValue(v)), "{k}");
    }
}
