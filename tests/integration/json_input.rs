//! OTLP/JSON input on a real broker: sampled like protobuf, bad JSON counted and skipped.

use std::time::Duration;

use crate::fixture::*;
use tailsift::otlp::build::*;
use tailsift::otlp::TraceId;

/// A request as the Collector's kafka exporter writes it with `encoding: otlp_json`.
fn collector_json(trace_hex: &str, span_hex: &str, error: bool) -> String {
    let code = if error { 2 } else { 0 };
    format!(
        r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"checkout"}}}}]}},"scopeSpans":[{{"scope":{{"name":"otel-go"}},"spans":[{{"traceId":"{trace_hex}","spanId":"{span_hex}","parentSpanId":"","name":"POST /checkout","kind":2,"startTimeUnixNano":"1700000000000000000","endTimeUnixNano":"1700000000250000000","attributes":[{{"key":"http.response.status_code","value":{{"intValue":"503"}}}}],"status":{{"code":{code}}}}}]}}]}}]}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_json_input_is_sampled_like_protobuf_and_bad_json_is_counted() {
    own_process!(); // exact process-wide counts
    let pipe = pipeline(ERRORS_ELSE_DROP)
        .input_named("in-json")
        .config(|c| c.kafka.input_encoding = tailsift::otlp::Encoding::OtlpJson)
        .start()
        .await;
    let (p, input) = (producer(), &pipe.input);
    let (kept, dropped) = (
        TraceId(trace_id(21)).to_hex(),
        TraceId(trace_id(22)).to_hex(),
    );
    send(&p, input, "bad", b"{\"resourceSpans\": [");
    send(
        &p,
        input,
        "proto",
        &request("svc", vec![span(trace_id(23), 1, None, "x", 1, 2)]),
    );
    send(&p, input, "empty", b"");
    send(
        &p,
        input,
        &dropped,
        collector_json(&dropped, "00000000000000a2", false).as_bytes(),
    );
    // Uppercase hex ids are valid OTLP/JSON; the output key is the canonical lowercase form.
    let upper = collector_json(&kept.to_uppercase(), "00000000000000A1", true);
    send(&p, input, &kept, upper.as_bytes());
    flush(&p);

    let mut reader = pipe.reader();
    assert!(
        reader.read_key(Duration::from_secs(20), &kept),
        "the failed JSON trace is kept"
    );
    reader.settle(secs(3));
    assert_eq!(reader.messages.len(), 1, "only the kept trace is forwarded");
    let spans = spans_of(&reader.messages[0].payload).expect("protobuf out");
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].0, "checkout");
    assert_eq!(spans[0].1.name, "POST /checkout");
    assert_eq!(spans[0].1.end_time_unix_nano, 1_700_000_000_250_000_000);
    let body = pipe.scrape();
    assert_eq!(
        metric(
            &body,
            "tailsift_decode_failures_total",
            "kind=\"malformed_json\""
        ),
        Some(2.0),
        "bad JSON and a protobuf message on a JSON topic: {body}"
    );
    assert_eq!(
        metric(&body, "tailsift_decode_failures_total", "kind=\"empty\""),
        Some(1.0)
    );
    pipe.shutdown().await;
}
