//! The prefilter that skips spans holding no named key: it must never skip one that does,
//! however the key is written and wherever it sits. Spans are written by hand here, because
//! the cases that matter (a key's tag or length in more bytes than needed) are valid protobuf
//! that no encoder in these tests writes on its own.

use opentelemetry_proto::tonic::common::v1::any_value::Value as V;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use proptest::prelude::*;
use prost::Message;

use super::tests::{ctx, env, get, hmac_hex, spans_of};
use super::*;
use crate::otlp::build::{span, trace_id};
use crate::otlp::SpanContext;

/// A key longer than 127 bytes: its length takes two bytes even when written shortest.
fn long_key() -> String {
    format!("tenant.{}", "x".repeat(130))
}

/// Exact keys and a prefix only, so that the prefilter applies; a per-service entry and an
/// allowlist as in any real file.
fn literal_config() -> String {
    format!(
        r#"
hash_key: ${{env:HASH_KEY}}
attributes:
  - name: user-id
    key: user.id
    action: hash
  - name: sql
    key: db.statement
    action: scrub
    patterns: [sql_literals]
  - name: auth
    key_prefix: http.request.header.
    action: replace
  - name: long
    key: {}
    action: remove
  - name: bodies
    key: http.request.body
    services: [gateway]
    action: remove
allowlists:
  - name: payment-allowlist
    services: [payment]
    keys: [http.method]
"#,
        long_key()
    )
}

/// The redaction of [`literal_config`], and the same without its prefilter (every span walked).
fn with_and_without() -> (Redaction, Redaction) {
    let red = parse("redaction.yaml", &literal_config(), &env).expect("the config loads");
    assert!(
        red.matcher.prefilter.is_some(),
        "exact keys and prefixes build one"
    );
    let mut walked = red.clone();
    walked.matcher.prefilter = None;
    (red, walked)
}

/// How many bytes more than needed a field's tag and length take: as valid to any decoder.
#[derive(Debug, Clone, Copy, Default)]
struct Pad {
    tag: usize,
    len: usize,
}

const SHORTEST: Pad = Pad { tag: 0, len: 0 };

fn padded_varint(out: &mut Vec<u8>, mut v: u64, extra: usize) {
    let mut groups = Vec::new();
    loop {
        groups.push((v & 0x7f) as u8);
        v >>= 7;
        if v == 0 {
            break;
        }
    }
    groups.resize(groups.len() + extra, 0);
    let last = groups.len() - 1;
    for (i, g) in groups.into_iter().enumerate() {
        out.push(if i < last { g | 0x80 } else { g });
    }
}

fn put_field(out: &mut Vec<u8>, number: u64, bytes: &[u8], pad: Pad) {
    padded_varint(out, number << 3 | 2, pad.tag);
    padded_varint(out, bytes.len() as u64, pad.len);
    out.extend_from_slice(bytes);
}

/// A `KeyValue` with a string value, its key field written as `pad` says.
fn kv(key: &str, value: &str, pad: Pad) -> Vec<u8> {
    let mut any = Vec::new();
    put_field(&mut any, 1, value.as_bytes(), SHORTEST);
    let mut out = Vec::new();
    put_field(&mut out, 1, key.as_bytes(), pad);
    put_field(&mut out, 2, &any, SHORTEST);
    out
}

/// Where an attribute sits in a span.
#[derive(Debug, Clone, Copy)]
enum At {
    Span,
    Event,
    Link,
}

/// Appends the attribute `kv` to the span fields `body`, at `at`, its own field written as
/// `pad` says.
fn put_attr(body: &mut Vec<u8>, kv: &[u8], at: At, pad: Pad) {
    match at {
        At::Span => put_field(body, 9, kv, pad),
        At::Event => {
            let mut e = Vec::new();
            put_field(&mut e, 2, b"exception", SHORTEST);
            put_field(&mut e, 3, kv, pad);
            put_field(body, 11, &e, SHORTEST);
        }
        At::Link => {
            let mut l = Vec::new();
            put_field(&mut l, 2, &[1; 8], SHORTEST);
            put_field(&mut l, 4, kv, pad);
            put_field(body, 13, &l, SHORTEST);
        }
    }
}

/// A `ScopeSpans.spans` field: a span holding these attributes.
fn span_field(attrs: &[(Vec<u8>, At, Pad)]) -> Vec<u8> {
    let mut body = span(trace_id(9), 3, None, "op", 1, 2).encode_to_vec();
    for (kv, at, pad) in attrs {
        put_attr(&mut body, kv, *at, *pad);
    }
    let mut out = Vec::new();
    put_field(&mut out, 2, &body, SHORTEST);
    out
}

/// Every attribute of a span: its own, its events', its links'.
fn all_attributes(s: &Span) -> Vec<KeyValue> {
    s.attributes
        .iter()
        .chain(s.events.iter().flat_map(|e| &e.attributes))
        .chain(s.links.iter().flat_map(|l| &l.attributes))
        .cloned()
        .collect()
}

/// Redacts `input` with and without the prefilter and checks both agree in every respect.
fn agreed(service: &str, input: &[u8]) -> (Chunk, Tally) {
    agreed_under(&ctx(service, vec![]), input)
}

/// [`agreed`], under the context `ctx`.
fn agreed_under(ctx: &SpanContext, input: &[u8]) -> (Chunk, Tally) {
    let (red, walked) = with_and_without();
    let (mut t1, mut t2) = (Tally::default(), Tally::default());
    let a = red.chunk(ctx, input, &mut t1);
    let b = walked.chunk(ctx, input, &mut t2);
    let resource = |c: &Chunk| c.context.as_ref().map(|c| c.resource_fields().to_vec());
    assert_eq!(resource(&a), resource(&b), "the same resource leaves");
    assert_eq!(a.spans, b.spans, "the same spans leave");
    assert_eq!(a.refused, b.refused, "the same spans are refused");
    assert_eq!(a.reason, b.reason);
    assert_eq!(t1, t2, "the same counts");
    (a, t1)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Hashed,
    Masked,
    Removed,
    Untouched,
}

#[test]
fn a_named_key_is_redacted_however_its_tag_and_length_are_written_and_wherever_it_sits() {
    let long = long_key();
    let two = Pad { tag: 0, len: 1 };
    let three = Pad { tag: 0, len: 2 };
    let long_tag = Pad { tag: 1, len: 0 };
    #[rustfmt::skip]
    let cases: &[(&str, &str, At, Pad, Pad, &str, Expect)] = &[
        // what,                      key,                           at,        key's pad, attribute's pad, service, expect
        ("shortest",                  "user.id",                     At::Span,  SHORTEST, SHORTEST, "orders",  Expect::Hashed),
        ("length in two bytes",       "user.id",                     At::Span,  two,      SHORTEST, "orders",  Expect::Hashed),
        ("length in three bytes",     "user.id",                     At::Span,  three,    SHORTEST, "orders",  Expect::Hashed),
        ("tag in two bytes",          "user.id",                     At::Span,  long_tag, SHORTEST, "orders",  Expect::Hashed),
        ("attribute's field padded",  "user.id",                     At::Span,  SHORTEST, three,    "orders",  Expect::Hashed),
        ("in an event, padded",       "user.id",                     At::Event, two,      SHORTEST, "orders",  Expect::Hashed),
        ("in a link, padded",         "user.id",                     At::Link,  three,    long_tag, "orders",  Expect::Hashed),
        ("by prefix, padded",         "http.request.header.cookie",  At::Span,  two,      SHORTEST, "orders",  Expect::Masked),
        ("by prefix, in a link",      "http.request.header.cookie",  At::Link,  SHORTEST, SHORTEST, "orders",  Expect::Masked),
        ("a 137-byte key",            &long,                         At::Span,  SHORTEST, SHORTEST, "orders",  Expect::Removed),
        ("a 137-byte key, padded",    &long,                         At::Event, two,      SHORTEST, "orders",  Expect::Removed),
        ("its service's entry",       "http.request.body",           At::Span,  two,      SHORTEST, "gateway", Expect::Removed),
        ("another service's entry",   "http.request.body",           At::Span,  SHORTEST, SHORTEST, "orders",  Expect::Untouched),
        ("allowlisted service",       "card.holder",                 At::Event, SHORTEST, SHORTEST, "payment", Expect::Removed),
        ("a key containing one",      "user.identity",               At::Span,  SHORTEST, SHORTEST, "orders",  Expect::Untouched),
        ("no named key",              "http.method",                 At::Link,  two,      SHORTEST, "orders",  Expect::Untouched),
    ];
    for &(what, key, at, key_pad, attr_pad, service, expect) in cases {
        let input = span_field(&[
            (kv("http.method", "GET", SHORTEST), At::Span, SHORTEST),
            (kv(key, "u-42 'secret'", key_pad), at, attr_pad),
        ]);
        let (c, tally) = agreed(service, &input);
        assert!(c.reason.is_none(), "{what}: {:?}", c.reason);
        if expect == Expect::Untouched {
            assert!(c.spans.is_none(), "{what}: left as it arrived");
            assert_eq!(tally.rewritten, 0, "{what}");
            continue;
        }
        let out = c.spans.expect(what);
        let got = all_attributes(&spans_of(&out)[0]);
        let want = match expect {
            Expect::Hashed => Some(V::StringValue(hmac_hex("u-42 'secret'"))),
            Expect::Masked => Some(V::StringValue("[REDACTED]".into())),
            _ => None,
        };
        assert_eq!(get(&got, key), want, "{what}");
        assert_eq!(tally.rewritten, 1, "{what}");
        assert_eq!(
            get(&got, "http.method"),
            Some(V::StringValue("GET".into())),
            "{what}: the rest stays"
        );
    }
}

#[test]
fn a_named_key_in_a_resource_is_redacted_however_it_is_written() {
    let input = span_field(&[(kv("http.method", "GET", SHORTEST), At::Span, SHORTEST)]);
    for (what, key, pad, hashed) in [
        ("shortest", "user.id", SHORTEST, true),
        (
            "length in two bytes",
            "user.id",
            Pad { tag: 0, len: 1 },
            true,
        ),
        ("tag in two bytes", "user.id", Pad { tag: 1, len: 0 }, true),
        ("no named key", "host.name", Pad { tag: 0, len: 2 }, false),
    ] {
        // Resource { attributes: [service.name, key] } as ResourceSpans.resource.
        let mut resource = Vec::new();
        put_field(
            &mut resource,
            1,
            &kv("service.name", "orders", SHORTEST),
            SHORTEST,
        );
        put_field(&mut resource, 1, &kv(key, "u-7", pad), SHORTEST);
        let mut fields = Vec::new();
        put_field(&mut fields, 1, &resource, SHORTEST);
        let ctx = SpanContext::new(fields, Vec::new());
        let (c, _) = agreed_under(&ctx, &input);
        assert!(c.spans.is_none(), "{what}: the span names no key");
        let Some(out) = c.context else {
            assert!(!hashed, "{what}: the resource is redacted");
            continue;
        };
        assert!(hashed, "{what}: the resource is left as it arrived");
        let r = opentelemetry_proto::tonic::resource::v1::Resource::decode(out.resource_message())
            .expect("decodes");
        assert_eq!(
            get(&r.attributes, key),
            Some(V::StringValue(hmac_hex("u-7"))),
            "{what}"
        );
        assert_eq!(out.service_name(), Some(&b"orders"[..]), "{what}");
    }
}

#[test]
fn a_regex_entry_or_an_allowlist_makes_every_span_walked() {
    let regex = parse(
        "redaction.yaml",
        "attributes:\n  - name: r\n    key_regex: '^secret'\n    action: remove\n  \
         - name: k\n    key: user.id\n    services: [orders]\n    action: remove\n",
        &env,
    )
    .expect("loads");
    let span = span_field(&[(kv("secret.sauce", "x", SHORTEST), At::Span, SHORTEST)]);
    let mut tally = Tally::default();
    let c = regex.chunk(&ctx("orders", vec![]), &span, &mut tally);
    assert!(c.spans.is_some(), "the regex entry removed its key");
    let bare = regex.matcher.may_match(0b10, b"no key here");
    assert!(
        !bare,
        "with only the exact entry active, the prefilter answers"
    );
    assert!(
        regex.matcher.may_match(0b11, b"no key here"),
        "with the regex, it cannot"
    );
}

#[test]
fn under_literal_keys_a_broken_span_is_refused_only_if_it_may_hold_one() {
    // Attributes that end inside their key: one naming `user.id`, one naming nothing.
    let named = [&[0x0a, 0x20][..], b"user.id"].concat();
    let unnamed = [0x0a, 0x05, b'a'];
    let [may_hold, holds_nothing] = [&named[..], &unnamed[..]].map(|broken| {
        let mut body = span(trace_id(7), 1, None, "op", 1, 2).encode_to_vec();
        put_field(&mut body, 9, broken, SHORTEST);
        let mut field = Vec::new();
        put_field(&mut field, 2, &body, SHORTEST);
        field
    });
    let input = [&may_hold[..], &holds_nothing].concat();
    let (red, _) = with_and_without();
    let mut tally = Tally::default();
    let c = red.chunk(&ctx("orders", vec![]), &input, &mut tally);
    assert_eq!(
        c.refused, may_hold,
        "the span that may hold user.id is refused"
    );
    assert_eq!(
        c.spans.as_deref(),
        Some(&holds_nothing[..]),
        "the other holds nothing the file names: it leaves as it arrived"
    );
    assert_eq!(tally.refused, 1);
}

/// A key from the file, one containing or contained in one, or any other.
fn any_key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("user.id".to_string()),
        Just("db.statement".to_string()),
        Just("http.request.body".to_string()),
        "http\\.request\\.header\\.[a-z-]{0,8}",
        Just(long_key()),
        Just("user.identity".to_string()),
        Just("user.i".to_string()),
        Just("http.method".to_string()),
        "[a-z]{1,6}(\\.[a-z]{1,6}){0,2}",
    ]
}

fn any_attr() -> impl Strategy<Value = (Vec<u8>, At, Pad)> {
    let pad = (0..3usize, 0..3usize).prop_map(|(tag, len)| Pad { tag, len });
    let at = prop_oneof![Just(At::Span), Just(At::Event), Just(At::Link)];
    let value = prop_oneof![
        "[ -~]{0,30}",
        Just("SELECT * FROM t WHERE a = 'x' AND b = 7".to_string()),
    ];
    (any_key(), value, pad.clone(), at, pad)
        .prop_map(|(k, v, key_pad, at, pad)| (kv(&k, &v, key_pad), at, pad))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the spans, the prefilter changes nothing that leaves: it only skips walks that
    /// would have changed nothing. And what leaves still decodes.
    #[test]
    fn the_prefilter_only_skips_spans_the_walk_would_leave_alone(
        spans in prop::collection::vec(prop::collection::vec(any_attr(), 0..5), 1..5),
        service in prop_oneof![Just("orders"), Just("gateway"), Just("payment")],
    ) {
        let input: Vec<u8> = spans.iter().flat_map(|a| span_field(a)).collect();
        let (c, _) = agreed(service, &input);
        prop_assert!(c.reason.is_none());
        let out = c.spans.unwrap_or(input);
        for s in spans_of(&out) {
            for kv in all_attributes(&s) {
                prop_assert!(kv.key != long_key(), "removed");
                if kv.key == "user.id" {
                    let hashed = matches!(&kv.value.and_then(|v| v.value),
                        Some(V::StringValue(h)) if h.len() == 64);
                    prop_assert!(hashed, "user.id hashed");
                }
            }
        }
    }
}

#[test]
fn a_run_is_searched_as_a_whole_and_every_span_holding_a_key_is_walked() {
    let clean = || span_field(&[(kv("http.method", "GET", SHORTEST), At::Span, SHORTEST)]);
    let named = || span_field(&[(kv("user.id", "u-1", SHORTEST), At::Span, SHORTEST)]);
    // A span ending in the key's first bytes: the search looks past it into the next.
    let tail = || span_field(&[(kv("note", "user.i", SHORTEST), At::Span, SHORTEST)]);
    // Each run as letters: `c` a span naming nothing, `n` one holding user.id, `t` the near
    // miss.
    for (what, run) in [
        ("after clean spans", "ccn"),
        ("two apart", "ncctnc"),
        ("back to back", "cnn"),
        ("after a near miss", "tnt"),
        ("none", "ctc"),
    ] {
        let spans: Vec<Vec<u8>> = run
            .chars()
            .map(|c| match c {
                'n' => named(),
                't' => tail(),
                _ => clean(),
            })
            .collect();
        let hashed: Vec<bool> = run.chars().map(|c| c == 'n').collect();
        let input = spans.concat();
        let (c, tally) = agreed("orders", &input);
        let n = hashed.iter().filter(|h| **h).count() as u64;
        assert_eq!(tally.rewritten, n, "{what}");
        let out = c.spans.unwrap_or(input);
        for (s, hashed) in spans_of(&out).iter().zip(hashed) {
            let v = get(&s.attributes, "user.id");
            assert_eq!(
                v.is_some_and(|v| v == V::StringValue(hmac_hex("u-1"))),
                hashed,
                "{what}"
            );
        }
    }
}

#[test]
fn a_context_found_clean_by_one_redaction_is_still_redacted_by_another() {
    let (red, _) = with_and_without();
    let other = parse(
        "redaction.yaml",
        "attributes:\n  - name: host\n    key: host.name\n    action: remove\n",
        &env,
    )
    .expect("loads");
    let ctx = ctx(
        "orders",
        vec![crate::otlp::build::attr_str("host.name", "h-1")],
    );
    let input = span_field(&[(kv("http.method", "GET", SHORTEST), At::Span, SHORTEST)]);
    for round in 0..2 {
        let mut tally = Tally::default();
        let c = red.chunk(&ctx, &input, &mut tally);
        assert!(c.context.is_none(), "round {round}: nothing of it is named");
        let c = other.chunk(&ctx, &input, &mut tally);
        let out = c.context.expect("the other removes host.name");
        assert!(
            !out.resource_fields().windows(9).any(|w| w == b"host.name"),
            "round {round}"
        );
        assert_eq!(tally.rewritten, 1, "round {round}: counted each time");
    }
}

proptest! {
    /// Where the walk's shortcut reads a field, it reads what the general walk reads.
    #[test]
    fn the_quick_field_read_agrees_with_the_general_one(
        bytes in prop::collection::vec(any::<u8>(), 0..24),
        at in 0..24usize,
    ) {
        if let Some((number, body, end)) = super::read::quick_field(&bytes, at) {
            let f = crate::otlp::wire::Fields::new(&bytes[at..])
                .next()
                .expect("a field")
                .expect("no error where the shortcut reads one");
            prop_assert_eq!(number, f.number);
            prop_assert_eq!(body, f.value.as_bytes());
            prop_assert_eq!(end, at + f.raw.len());
        }
    }
}

#[test]
fn attributes_before_the_first_named_key_are_still_checked_to_parse() {
    // A broken attribute naming nothing, then `user.id`: the search finds the key after it,
    // and the span is refused for the broken one, as when every attribute is looked up.
    let mut body = span(trace_id(7), 1, None, "op", 1, 2).encode_to_vec();
    put_field(&mut body, 9, &[0x0a, 0x05, b'a'], SHORTEST);
    put_field(&mut body, 9, &kv("user.id", "u-1", SHORTEST), SHORTEST);
    let mut broken_first = Vec::new();
    put_field(&mut broken_first, 2, &body, SHORTEST);
    let input = [
        span_field(&[(kv("http.method", "GET", SHORTEST), At::Span, SHORTEST)]),
        broken_first.clone(),
    ]
    .concat();
    let (c, tally) = agreed("orders", &input);
    assert_eq!(c.refused, broken_first);
    assert_eq!(tally.refused, 1);
}
