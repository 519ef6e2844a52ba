//! Bad input on a real broker: counted, logged, skipped; the pipeline goes on.

use crate::fixture as common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use tailsift::otlp::build::*;
use tailsift::otlp::TraceId;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_skipped_and_counted_while_the_pipeline_goes_on() {
    let (input, output) = (unique("in"), unique("out"));
    create_topic(&input, 1).await;
    create_topic(&output, 1).await;
    let mut config = config(&input, &output, Path::new("rules"));
    config.kafka.max_message_bytes = 100_000;
    let running = tailsift::pipeline::start(&config).await.expect("start");
    let p = producer();
    let t = trace_id(9);
    let good = request("svc", vec![with_error(span(t, 1, None, "root", 1, 2))]);
    // A kept trace with one span larger than any output message may be: it cannot be
    // forwarded, and must not stall the pipeline either.
    let huge_id = trace_id(10);
    let huge = with_attrs(
        with_error(span(huge_id, 1, None, "huge", 1, 2)),
        vec![attr_str("blob", &"x".repeat(300_000))],
    );
    send(
        &p,
        &input,
        &TraceId(huge_id).to_hex(),
        &request("svc", vec![huge]),
    );
    send(&p, &input, "garbage", b"\x0a\xff\xff\xff\x0f not protobuf");
    send(&p, &input, "empty", b"");
    send(&p, &input, "truncated", &good[..good.len() - 3]);
    send(&p, &input, &TraceId(t).to_hex(), &good);
    flush(&p);

    let mut reader = Reader::new(&output);
    let hex = TraceId(t).to_hex();
    assert!(
        reader.read_until(Duration::from_secs(20), |m| m.iter().any(|m| m.key == hex)),
        "the valid trace after the bad messages is still kept"
    );
    assert_eq!(
        running
            .sampler
            .stats
            .decode_failures
            .load(Ordering::Relaxed),
        3
    );
    let (status, body) = http_get(running.http_addr, "/metrics").expect("scrape");
    assert_eq!(status, 200);
    assert_eq!(
        metric(
            &body,
            "tailsift_decode_failures_total",
            "malformed_protobuf"
        ),
        Some(2.0),
        "{body}"
    );
    assert_eq!(
        metric(&body, "tailsift_decode_failures_total", "kind=\"empty\""),
        Some(1.0)
    );
    assert_eq!(
        metric(&body, "tailsift_produce_errors_total", ""),
        Some(1.0),
        "the oversized span is counted"
    );
    assert!(reader
        .messages
        .iter()
        .all(|m| m.key != TraceId(huge_id).to_hex()));
    // The bad messages' offsets were passed: the commit reaches past all of them.
    assert!(
        eventually(Duration::from_secs(10), || {
            http_get(running.http_addr, "/metrics")
                .ok()
                .and_then(|(_, b)| metric(&b, "tailsift_offsets_held_back", ""))
                == Some(0.0)
        })
        .await,
        "no offset is held back once the trace is delivered"
    );
    let (ready, _) = http_get(running.http_addr, "/readyz").expect("readyz");
    assert_eq!(ready, 200);
    running.shutdown().await.expect("shutdown");
}
