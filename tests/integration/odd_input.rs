//! Input that decodes but is odd, on a real broker, each with its defined behaviour: invalid
//! UTF-8 in strings is passed through byte for byte; absurd timestamps decide like any other
//! trace; spans without a trace id are counted and skipped while their message's other spans
//! go on; a message far larger than an output message is split on the way out. None of it
//! stops the pipeline.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::fixture::*;
use opentelemetry_proto::tonic::trace::v1::Span;
use tailsift::otlp::build::*;
use tailsift::otlp::TraceId;

/// `request` with every occurrence of `from` in the encoded bytes replaced by `to` (same
/// length): how invalid UTF-8 gets into a protobuf string field.
fn patched(service: &str, spans: Vec<Span>, from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut b = request(service, spans);
    let mut i = 0;
    while i + from.len() <= b.len() {
        if &b[i..i + from.len()] == from {
            b[i..i + from.len()].copy_from_slice(to);
        }
        i += 1;
    }
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_but_decodable_input_follows_its_defined_behaviour() {
    own_process!(); // exact process-wide counts
    let pipe = pipeline(ERRORS_ELSE_DROP)
        .partitions(2)
        .config(|c| c.kafka.max_message_bytes = 64 * 1024)
        .start()
        .await;
    let p = producer();

    // Invalid UTF-8 in the span name and an attribute value: forwarded exactly as it came.
    let (utf8, bad) = (trace_id(101), [0xff, 0xfe, 0xc0, 0x80]);
    let utf8_msg = patched(
        "svc",
        vec![with_attrs(
            with_error(span(utf8, 1, None, "QQQQ", 1, 2)),
            vec![attr_str("user", "QQQQ")],
        )],
        b"QQQQ",
        &bad,
    );
    assert!(spans_of(&utf8_msg).is_err(), "prost itself refuses it");
    // Absurd timestamps: end before start, u64::MAX, zero.
    let absurd = trace_id(102);
    let absurd_msg = request(
        "svc",
        vec![
            with_error(span(absurd, 1, None, "root", u64::MAX, 0)),
            span(absurd, 2, Some(1), "child", 0, u64::MAX),
        ],
    );
    // A span without a trace id and one with the all-zero id, beside a good one.
    let good = trace_id(103);
    let mut no_id = span(good, 7, None, "no id", 1, 2);
    no_id.trace_id.clear();
    let mut zero_id = span(good, 8, None, "zero id", 1, 2);
    zero_id.trace_id = vec![0; 16];
    let mixed_msg = request(
        "svc",
        vec![
            no_id,
            with_error(span(good, 1, None, "root", 1, 2)),
            zero_id,
        ],
    );
    // One message of ~800 KB: a trace of 1500 spans with 500-byte attributes.
    let big = trace_id(104);
    let mut spans: Vec<Span> = (2..1502u64)
        .map(|i| {
            with_attrs(
                span(big, i, Some(1), "work", 10, 20),
                vec![attr_str("payload", &"p".repeat(500))],
            )
        })
        .collect();
    spans.push(with_error(span(big, 1, None, "root", 1, 30)));
    let big_msg = request("svc", spans);
    assert!(big_msg.len() > 700_000, "{}", big_msg.len());

    for (t, m) in [
        (utf8, &utf8_msg),
        (absurd, &absurd_msg),
        (good, &mixed_msg),
        (big, &big_msg),
    ] {
        send(&p, &pipe.input, &TraceId(t).to_hex(), m);
    }
    flush(&p);

    let keys: Vec<String> = [utf8, absurd, good, big]
        .iter()
        .map(|t| TraceId(*t).to_hex())
        .collect();
    let mut out = pipe.reader();
    let all_there = out.read_until(Duration::from_secs(30), |m| {
        let have: BTreeSet<&str> = m.iter().map(|m| m.key.as_str()).collect();
        let big_spans: usize = m
            .iter()
            .filter(|m| m.key == keys[3])
            .map(|m| spans_of(&m.payload).map_or(0, |s| s.len()))
            .sum();
        keys.iter().all(|k| have.contains(k.as_str())) && big_spans == 1501
    });
    assert!(
        all_there,
        "all four traces are kept: {:?}",
        out.messages.iter().map(|m| &m.key).collect::<Vec<_>>()
    );

    // Invalid UTF-8: the output carries the very bytes that came in.
    let utf8_out = out
        .messages
        .iter()
        .find(|m| m.key == keys[0])
        .expect("utf8");
    assert!(
        utf8_out.payload.windows(4).filter(|w| *w == bad).count() == 2,
        "name and attribute bytes kept as they arrived"
    );
    // Absurd timestamps: both spans, unchanged.
    let absurd_spans = spans_of(
        &out.messages
            .iter()
            .find(|m| m.key == keys[1])
            .expect("absurd")
            .payload,
    )
    .expect("OTLP");
    assert_eq!(absurd_spans.len(), 2);
    assert!(absurd_spans
        .iter()
        .any(|(_, s)| s.start_time_unix_nano == u64::MAX && s.end_time_unix_nano == 0));
    // Spans without a valid trace id: skipped and counted; their neighbour kept alone.
    let good_spans: Vec<_> = out
        .messages
        .iter()
        .filter(|m| m.key == keys[2])
        .flat_map(|m| spans_of(&m.payload).expect("OTLP"))
        .collect();
    assert_eq!(good_spans.len(), 1);
    assert_eq!(good_spans[0].1.name, "root");
    let body = pipe.scrape();
    assert_eq!(
        metric(&body, "tailsift_invalid_spans_total", ""),
        Some(2.0),
        "{body}"
    );
    // The big message: split into messages under the output limit, every span once.
    let big_out: Vec<_> = out.messages.iter().filter(|m| m.key == keys[3]).collect();
    assert!(
        big_out.len() >= big_msg.len() / (64 * 1024),
        "split into {} messages",
        big_out.len()
    );
    assert!(big_out.iter().all(|m| m.payload.len() <= 64 * 1024));
    assert_eq!(
        metric(&body, "tailsift_decode_failures_total", "").unwrap_or(0.0),
        0.0,
        "nothing refused"
    );
    assert_eq!(pipe.readyz().0, 200, "the pipeline goes on");
    pipe.shutdown().await;
}
