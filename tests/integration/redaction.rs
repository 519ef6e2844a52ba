//! Redaction on a real broker: traces carrying emails, card numbers, `db.statement` literals
//! and a `user.id` are kept and forwarded; nothing sensitive reaches the output topic (every
//! output span is decoded, and the raw bytes searched), the redacted values are what the
//! configuration says, and every other span (and every other field) is byte for byte what
//! arrived. A late span after the decision is redacted too; a span whose attributes cannot be
//! parsed goes to the dead-letter topic instead of the output.

use std::collections::HashMap;

use hmac::{Hmac, Mac};
use opentelemetry_proto::tonic::common::v1::any_value::Value as V;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::span::{Event, Link};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use sha2::Sha256;

use crate::fixture::*;
use tailsift::kafka::dead_letter::{ERROR_KIND_HEADER, UNREDACTABLE};
use tailsift::otlp::build::*;
use tailsift::otlp::wire::Fields;
use tailsift::otlp::TraceId;

const HASH_KEY: &str = "test-hash-key-0123456789";

const REDACTION: &str = r#"
hash_key: ${file:KEYFILE}
attributes:
  - name: user-id
    key: user.id
    action: hash
  - name: sql
    key: db.statement
    action: scrub
    patterns: [sql_literals]
  - name: contact
    key_regex: '.*'
    action: scrub
    patterns: [email, card_number]
"#;

/// Values that must not appear anywhere in the output topic.
const SECRETS: &[&str] = &[
    "jane.doe@example.com",
    "4111 1111 1111 1111",
    "5500-0000-0000-0004",
    "'s3cret-name'",
    "8675309",
    "user-31337",
];

fn sensitive_trace(n: u64) -> (Vec<u8>, Vec<Span>) {
    let t = trace_id(1000 + n);
    let root = with_attrs(
        span(t, 1, None, "POST /checkout", 0, 100),
        vec![
            attr_str("http.route", "/checkout"),
            attr_str("user.id", "user-31337"),
            attr_str("customer.contact", "mail jane.doe@example.com please"),
        ],
    );
    let mut db = with_attrs(
        span(t, 2, Some(1), "SELECT users", 10, 20),
        vec![
            attr_str(
                "db.statement",
                "SELECT * FROM users WHERE name = 's3cret-name' AND pin = 8675309",
            ),
            attr_str("db.system", "postgresql"),
        ],
    );
    db.links.push(Link {
        trace_id: trace_id(7).to_vec(),
        span_id: 9u64.to_be_bytes().to_vec(),
        attributes: vec![attr_str("user.id", "user-31337")],
        ..Link::default()
    });
    let mut pay = with_attrs(
        span(t, 3, Some(1), "charge", 30, 60),
        vec![attr_str("payment.note", "card 4111 1111 1111 1111")],
    );
    pay.events.push(Event {
        time_unix_nano: 40,
        name: "retry".into(),
        attributes: vec![
            attr_str("detail", "declined 5500-0000-0000-0004"),
            attr_int("attempt", 2),
        ],
        ..Event::default()
    });
    // Nothing to redact: must leave byte for byte.
    let plain = with_attrs(
        span(t, 4, Some(1), "render", 60, 90),
        vec![attr_str("template", "receipt"), attr_int("items", 3)],
    );
    let spans = vec![root, db, pay, plain];
    let mut rs = resource_spans("shop", spans.clone());
    if let Some(r) = rs.resource.as_mut() {
        r.attributes.push(attr_str("user.id", "user-31337"));
    }
    (encode(vec![rs]), spans)
}

/// The `Span` messages of an output request, as raw bytes.
fn raw_spans(payload: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let sub = |b: &[u8], n: u32| -> Vec<Vec<u8>> {
        Fields::new(b)
            .map(|f| f.expect("output parses"))
            .filter(|f| f.number == n)
            .filter_map(|f| f.value.as_bytes().map(<[u8]>::to_vec))
            .collect()
    };
    for rs in sub(payload, 1) {
        for ss in sub(&rs, 2) {
            out.extend(sub(&ss, 2));
        }
    }
    out
}

fn value(kv: &[KeyValue], key: &str) -> Option<V> {
    kv.iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.clone())
        .and_then(|v| v.value)
}

fn hashed(v: &str) -> V {
    let mut h = Hmac::<Sha256>::new_from_slice(HASH_KEY.as_bytes()).expect("key");
    h.update(v.as_bytes());
    V::StringValue(hex::encode(h.finalize().into_bytes()))
}

fn s(v: &str) -> Option<V> {
    Some(V::StringValue(v.into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_sensitive_reaches_the_output_and_the_rest_is_byte_for_byte() {
    own_process!(); // exact process-wide counts of redactions and refused spans
    let dlq = unique("dlq");
    create_topic(&dlq, 1).await;
    let key_dir = tempfile::tempdir().expect("tempdir");
    let key_file = key_dir.path().join("hash.key");
    std::fs::write(&key_file, format!("{HASH_KEY}\n")).expect("key file");
    let redaction = REDACTION.replace("KEYFILE", &key_file.display().to_string());
    let rules = rules_dir(&[("rules.yaml", KEEP_ALL), ("redaction.yaml", &redaction)]);
    let d = dlq.clone();
    let pipe = pipeline_on(rules.path())
        .config(move |c| c.kafka.dead_letter_topic = Some(d))
        .start()
        .await;
    let input = &pipe.input;

    let p = producer();
    let mut originals: HashMap<(Vec<u8>, Vec<u8>), Span> = HashMap::new();
    const TRACES: u64 = 10;
    for n in 0..TRACES {
        let (req, spans) = sensitive_trace(n);
        for sp in spans {
            originals.insert((sp.trace_id.clone(), sp.span_id.clone()), sp);
        }
        send(&p, input, &TraceId(trace_id(1000 + n)).to_hex(), &req);
    }
    // A trace with one span whose attribute cannot be parsed (a truncated key): the span never
    // leaves unchecked, its sibling does.
    let bad_t = trace_id(2000);
    let good_sibling = with_attrs(span(bad_t, 1, None, "ok", 0, 5), vec![attr_str("a", "b")]);
    let mut broken = span(bad_t, 2, Some(1), "broken", 1, 2).encode_to_vec();
    broken.extend_from_slice(&[0x4a, 0x03, 0x0a, 0x05, b'x']);
    let mut bad_req = request("shop", vec![good_sibling.clone()]);
    {
        // Append the broken span to the one ScopeSpans: rebuild the request around it.
        let mut ss = Vec::new();
        tailsift::otlp::wire::put_len_prefix(&mut ss, 2, good_sibling.encoded_len());
        ss.extend(good_sibling.encode_to_vec());
        tailsift::otlp::wire::put_len_prefix(&mut ss, 2, broken.len());
        ss.extend(&broken);
        let mut rs = Vec::new();
        let res = resource_spans("shop", vec![])
            .resource
            .expect("resource")
            .encode_to_vec();
        tailsift::otlp::wire::put_len_prefix(&mut rs, 1, res.len());
        rs.extend(res);
        tailsift::otlp::wire::put_len_prefix(&mut rs, 2, ss.len());
        rs.extend(ss);
        bad_req.clear();
        tailsift::otlp::wire::put_len_prefix(&mut bad_req, 1, rs.len());
        bad_req.extend(rs);
    }
    send(&p, input, &TraceId(bad_t).to_hex(), &bad_req);
    flush(&p);

    let mut out = pipe.reader();
    let want = (TRACES * 4 + 1) as usize;
    let count = |m: &[OutMsg]| m.iter().map(|m| raw_spans(&m.payload).len()).sum::<usize>();
    assert!(
        out.read_until(secs(30), |m| count(m) >= want),
        "every span but the broken one is forwarded: {} of {want}",
        count(&out.messages)
    );

    // A late span of a kept trace, after its decision: redacted as well.
    let late_t = trace_id(1000);
    let late = with_attrs(
        span(late_t, 99, Some(1), "late", 95, 99),
        vec![
            attr_str("user.id", "user-31337"),
            attr_str("note", "cc jane.doe@example.com"),
        ],
    );
    send(
        &p,
        input,
        &TraceId(late_t).to_hex(),
        &request("shop", vec![late.clone()]),
    );
    flush(&p);
    assert!(
        out.read_until(secs(30), |m| count(m) > want),
        "the late span is forwarded"
    );

    // Nothing sensitive anywhere in the output topic's bytes.
    for m in &out.messages {
        for secret in SECRETS {
            assert!(
                !m.payload
                    .windows(secret.len())
                    .any(|w| w == secret.as_bytes()),
                "`{secret}` reached the output topic"
            );
        }
    }
    // Every span decoded: redacted where the configuration says, the rest as it arrived.
    let mut seen = 0;
    for m in &out.messages {
        let req =
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(
                m.payload.as_slice(),
            )
            .expect("the output is valid OTLP");
        for rs in &req.resource_spans {
            let res = rs.resource.as_ref().expect("resource");
            assert_eq!(value(&res.attributes, "service.name"), s("shop"));
            if value(&res.attributes, "user.id").is_some() {
                assert_eq!(
                    value(&res.attributes, "user.id"),
                    Some(hashed("user-31337"))
                );
            }
        }
        for raw in raw_spans(&m.payload) {
            let got = Span::decode(raw.as_slice()).expect("span decodes");
            seen += 1;
            if got.span_id == 99u64.to_be_bytes() {
                assert_eq!(
                    value(&got.attributes, "user.id"),
                    Some(hashed("user-31337"))
                );
                assert_eq!(value(&got.attributes, "note"), s("cc [REDACTED]"));
                let mut want = late.clone();
                want.attributes = got.attributes.clone();
                assert_eq!(got, want);
                continue;
            }
            let orig = originals
                .get(&(got.trace_id.clone(), got.span_id.clone()))
                .unwrap_or(&good_sibling);
            match got.name.as_str() {
                "render" | "ok" => {
                    assert_eq!(raw, orig.encode_to_vec(), "{}: byte for byte", got.name)
                }
                "POST /checkout" => {
                    assert_eq!(
                        value(&got.attributes, "user.id"),
                        Some(hashed("user-31337"))
                    );
                    assert_eq!(
                        value(&got.attributes, "customer.contact"),
                        s("mail [REDACTED] please")
                    );
                    assert_eq!(value(&got.attributes, "http.route"), s("/checkout"));
                }
                "SELECT users" => {
                    assert_eq!(
                        value(&got.attributes, "db.statement"),
                        s("SELECT * FROM users WHERE name = ? AND pin = ?")
                    );
                    assert_eq!(
                        value(&got.links[0].attributes, "user.id"),
                        Some(hashed("user-31337"))
                    );
                }
                "charge" => {
                    assert_eq!(value(&got.attributes, "payment.note"), s("card [REDACTED]"));
                    assert_eq!(
                        value(&got.events[0].attributes, "detail"),
                        s("declined [REDACTED]")
                    );
                    assert_eq!(
                        value(&got.events[0].attributes, "attempt"),
                        Some(V::IntValue(2))
                    );
                }
                other => panic!("unexpected span `{other}`"),
            }
            // Every field but the redacted attributes' values is the original's: same keys in
            // the same order, same everything else.
            let keys = |kv: &[KeyValue]| kv.iter().map(|k| k.key.clone()).collect::<Vec<_>>();
            assert_eq!(keys(&got.attributes), keys(&orig.attributes));
            let mut a = orig.clone();
            let mut b = got.clone();
            for sp in [&mut a, &mut b] {
                sp.attributes.clear();
                sp.events.iter_mut().for_each(|e| e.attributes.clear());
                sp.links.iter_mut().for_each(|l| l.attributes.clear());
            }
            assert_eq!(a, b, "{}: only attributes differ", got.name);
        }
    }
    assert_eq!(seen, want + 1);

    // The broken span went to the dead-letter topic, not to the output.
    let mut letters = Reader::new(&dlq);
    assert!(
        letters.read_until(secs(20), |m| !m.is_empty()),
        "the unredactable span is dead-lettered"
    );
    let letter = &letters.messages[0];
    assert_eq!(letter.key, TraceId(bad_t).to_hex());
    assert_eq!(
        letter.headers.get(ERROR_KIND_HEADER).map(String::as_str),
        Some(UNREDACTABLE)
    );
    // The span as it arrived (prost cannot decode it: that is why it is here).
    assert_eq!(raw_spans(&letter.payload), vec![broken]);

    // Counted per decider tick, exactly (this process runs no other pipeline). Per trace:
    // user.id hashed 3 times (span, link, resource), one statement scrubbed, 3 contacts
    // scrubbed (the root's, the payment note, the event's detail), 4 rewrites (3 spans and
    // the resource); the late span adds a hash, a contact and a rewrite; one span refused.
    let n = TRACES as f64;
    let counts = || {
        let redacted = |labels: &str| pipe.metric("tailsift_redacted_attributes_total", labels);
        (
            redacted(r#"action="hash",redaction="user-id""#),
            redacted(r#"action="scrub",redaction="sql""#),
            redacted(r#"action="scrub",redaction="contact""#),
            pipe.metric("tailsift_redaction_rewritten_total", ""),
            pipe.metric("tailsift_redaction_refused_spans_total", ""),
        )
    };
    let want = (3.0 * n + 1.0, n, 3.0 * n + 1.0, 4.0 * n + 1.0, 1.0);
    eventually(secs(10), || counts() == want).await;
    assert_eq!(
        counts(),
        want,
        "(user.id hashed, statements scrubbed, contacts scrubbed, rewritten, refused)"
    );
    pipe.shutdown().await;
}
