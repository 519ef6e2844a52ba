//! The dead-letter topic on a real broker: every undecodable message is copied there as it
//! arrived, with headers naming where it came from and why it was refused; good traffic on
//! the same partitions goes on. (Its own test binary: metrics are process-wide.)

use crate::fixture as common;

use std::time::Duration;

use common::*;
use tailsift::dead_letter::*;
use tailsift::otlp::build::*;
use tailsift::otlp::{Encoding, TraceId};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_messages_go_to_the_dead_letter_topic_with_their_origin() {
    let (input, json_input, output, dlq) = (
        unique("in"),
        unique("in-json"),
        unique("out"),
        unique("dlq"),
    );
    for t in [&input, &json_input, &output, &dlq] {
        create_topic(t, 1).await;
    }
    let rules = rules_dir(&[(
        "rules.yaml",
        "rules:\n  - name: errors\n    conditions: trace.error = true\n    outcome: keep\n  - name: rest\n    outcome: drop\n",
    )]);
    let mut config = config(&input, &output, rules.path());
    config.kafka.input_topics.push(json_input.clone());
    config
        .kafka
        .input_encodings
        .insert(json_input.clone(), Encoding::OtlpJson);
    config.kafka.dead_letter_topic = Some(dlq.clone());
    let running = tailsift::pipeline::start(&config).await.expect("start");

    let p = producer();
    let t = trace_id(5);
    let good = request("svc", vec![with_error(span(t, 1, None, "root", 1, 2))]);
    // (topic, key, payload, kind)
    let bad: Vec<(&str, &str, Vec<u8>, &str)> = vec![
        (
            &input,
            "garbage",
            b"\x0a\xff\xff\xff\x0f not protobuf".to_vec(),
            "malformed_protobuf",
        ),
        (&input, "empty", Vec::new(), "empty"),
        (
            &input,
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
    send(&p, &input, &TraceId(t).to_hex(), &good);
    flush(&p);

    let mut out = Reader::new(&output);
    let hex = TraceId(t).to_hex();
    assert!(
        out.read_until(Duration::from_secs(20), |m| m.iter().any(|m| m.key == hex)),
        "the good trace after the bad messages is kept"
    );
    let mut letters = Reader::new(&dlq);
    assert!(
        letters.read_until(Duration::from_secs(20), |m| m.len() >= bad.len()),
        "every undecodable message reaches the dead-letter topic: {:?}",
        letters.messages.iter().map(|m| &m.key).collect::<Vec<_>>()
    );
    letters.read_until(Duration::from_secs(1), |_| false);
    assert_eq!(letters.messages.len(), bad.len(), "each exactly once");
    for (topic, key, payload, kind) in &bad {
        let l = letters
            .messages
            .iter()
            .find(|m| m.key == *key)
            .unwrap_or_else(|| panic!("dead letter {key}"));
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
        .map(|k| {
            let l = letters
                .messages
                .iter()
                .find(|m| m.key == *k)
                .expect("letter");
            l.headers[SOURCE_OFFSET_HEADER].as_str()
        })
        .collect();
    assert_eq!(offsets, ["0", "1", "2"], "offsets name the source messages");

    let (_, body) = http_get(running.http_addr, "/metrics").expect("scrape");
    assert_eq!(
        metric(&body, "tailsift_dead_letters_total", ""),
        Some(bad.len() as f64),
        "{body}"
    );
    assert_eq!(
        metric(&body, "tailsift_decode_failures_total", ""),
        Some(bad.len() as f64)
    );
    assert!(
        eventually(Duration::from_secs(10), || {
            http_get(running.http_addr, "/metrics")
                .ok()
                .and_then(|(_, b)| metric(&b, "tailsift_offsets_held_back", ""))
                == Some(0.0)
        })
        .await,
        "the dead letters are acknowledged and their offsets released"
    );
    running.shutdown().await.expect("shutdown");
}
