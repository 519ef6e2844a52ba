//! The dead-letter topic on a real broker: every undecodable message is copied there as it
//! arrived, with headers naming where it came from and why it was refused; good traffic on
//! the same partitions goes on.

use std::time::Duration;

use crate::fixture::*;
use tailsift::kafka::dead_letter::*;
use tailsift::otlp::build::*;
use tailsift::otlp::{Encoding, TraceId};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_messages_go_to_the_dead_letter_topic_with_their_origin() {
    own_process!(); // exact process-wide counts
    let (json_input, dlq) = (unique("in-json"), unique("dlq"));
    for t in [&json_input, &dlq] {
        create_topic(t, 1).await;
    }
    let (j, d) = (json_input.clone(), dlq.clone());
    let pipe = pipeline(ERRORS_ELSE_DROP)
        .config(move |c| {
            c.kafka.input_topics.push(j.clone());
            c.kafka.input_encodings.insert(j, Encoding::OtlpJson);
            c.kafka.dead_letter_topic = Some(d);
        })
        .start()
        .await;
    let input = &pipe.input;

    let p = producer();
    let t = trace_id(5);
    let good = request("svc", vec![with_error(span(t, 1, None, "root", 1, 2))]);
    // (topic, key, payload, kind)
    let bad: Vec<(&str, &str, Vec<u8>, &str)> = vec![
        (
            input,
            "garbage",
            b"\x0a\xff\xff\xff\x0f not protobuf".to_vec(),
            "malformed_protobuf",
        ),
        (input, "empty", Vec::new(), "empty"),
        (
            input,
            "truncated",
            good[..good.len() - 3].to_vec(),
            "malformed_protobuf",
        ),
        (&json_input, "proto-on-json", good.clone(), "malformed_json"),
        (
            &json_input,
            "bad-json",
            br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz"}]}]}]}"#.to_vec(),
            "malformed_json",
        ),
    ];
    for (topic, key, payload, _) in &bad {
        send(&p, topic, key, payload);
    }
    send(&p, input, &TraceId(t).to_hex(), &good);
    flush(&p);

    assert!(
        pipe.reader().read_key(secs(20), &TraceId(t).to_hex()),
        "the good trace after the bad messages is kept"
    );
    let mut letters = Reader::new(&dlq);
    assert!(
        letters.read_until(Duration::from_secs(20), |m| m.len() >= bad.len()),
        "every undecodable message reaches the dead-letter topic: {:?}",
        letters.messages.iter().map(|m| &m.key).collect::<Vec<_>>()
    );
    letters.settle(secs(1));
    assert_eq!(letters.messages.len(), bad.len(), "each exactly once");
    for (topic, key, payload, kind) in &bad {
        let l = letters.first(key);
        assert_eq!(&l.payload, payload, "{key}: the payload as it arrived");
        assert_eq!(l.headers[SOURCE_TOPIC_HEADER], **topic, "{key}");
        assert_eq!(l.headers[SOURCE_PARTITION_HEADER], "0", "{key}");
        assert!(
            l.headers[SOURCE_OFFSET_HEADER].parse::<i64>().is_ok(),
            "{key}"
        );
        assert_eq!(l.headers[ERROR_KIND_HEADER], *kind, "{key}");
        assert!(!l.headers[ERROR_HEADER].is_empty(), "{key}");
    }
    let offsets: Vec<&str> = ["garbage", "empty", "truncated"]
        .iter()
        .map(|k| letters.first(k).headers[SOURCE_OFFSET_HEADER].as_str())
        .collect();
    assert_eq!(offsets, ["0", "1", "2"], "offsets name the source messages");

    let body = pipe.scrape();
    assert_eq!(
        metric(&body, "tailsift_dead_letters_total", ""),
        Some(bad.len() as f64),
        "{body}"
    );
    assert_eq!(
        metric(&body, "tailsift_decode_failures_total", ""),
        Some(bad.len() as f64)
    );
    wait_for(
        secs(10),
        "the dead letters are acknowledged and their offsets released",
        || metric(&pipe.scrape(), "tailsift_offsets_held_back", "") == Some(0.0),
    )
    .await;
    pipe.shutdown().await;
}
