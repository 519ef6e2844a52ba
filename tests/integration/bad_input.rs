//! Bad input on a real broker: counted, logged, skipped; the pipeline goes on.

use std::time::Duration;

use crate::fixture::*;
use tailsift::otlp::build::*;
use tailsift::otlp::TraceId;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_skipped_and_counted_while_the_pipeline_goes_on() {
    own_process!(); // exact process-wide counts
    let pipe = example_pipeline()
        .config(|c| c.kafka.max_message_bytes = 100_000)
        .start()
        .await;
    let (p, input) = (producer(), &pipe.input);
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
        input,
        &TraceId(huge_id).to_hex(),
        &request("svc", vec![huge]),
    );
    send(&p, input, "garbage", b"\x0a\xff\xff\xff\x0f not protobuf");
    send(&p, input, "empty", b"");
    send(&p, input, "truncated", &good[..good.len() - 3]);
    send(&p, input, &TraceId(t).to_hex(), &good);
    flush(&p);

    let mut reader = pipe.reader();
    assert!(
        reader.read_key(secs(20), &TraceId(t).to_hex()),
        "the valid trace after the bad messages is still kept"
    );
    assert_eq!(pipe.decode_failures(), 3);
    let (status, body) = http_get(pipe.addr(), "/metrics").expect("scrape");
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
    wait_for(
        Duration::from_secs(10),
        "no offset is held back once the trace is delivered",
        || metric(&pipe.scrape(), "tailsift_offsets_held_back", "") == Some(0.0),
    )
    .await;
    assert_eq!(pipe.readyz().0, 200);
    pipe.shutdown().await;
}
