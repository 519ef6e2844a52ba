//! `tailsift route` on a real broker: batches that mix many traces, sent without trace keys,
//! come out split per trace and keyed by trace id, one partition per trace; fed to the
//! sampler, every trace the rules keep is whole.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::fixture::instance::{launch, RunConfig};
use crate::fixture::traffic::{self, RULES};
use crate::fixture::*;
use prost::Message;
use tailsift::otlp::build::spans_of;
use tailsift::otlp::TraceId;

/// Trace id hex -> partitions and spans of the routed messages, asserting that each message
/// holds only the trace it is keyed by.
type Routed<'a> = (
    BTreeMap<&'a str, BTreeSet<i32>>,
    BTreeMap<&'a str, BTreeSet<Vec<u8>>>,
);

fn routed(messages: &[OutMsg]) -> Routed<'_> {
    let mut partitions: BTreeMap<&str, BTreeSet<i32>> = BTreeMap::new();
    let mut spans: BTreeMap<&str, BTreeSet<Vec<u8>>> = BTreeMap::new();
    for m in messages {
        partitions.entry(&m.key).or_default().insert(m.partition);
        for (_, s) in spans_of(&m.payload).expect("OTLP") {
            assert_eq!(
                TraceId::from_slice(&s.trace_id)
                    .map(|t| t.to_hex())
                    .as_deref(),
                Some(m.key.as_str()),
                "a routed message holds only the trace it is keyed by"
            );
            spans.entry(&m.key).or_default().insert(s.encode_to_vec());
        }
    }
    (partitions, spans)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_splits_mixed_batches_per_trace_and_the_sampler_keeps_them_whole() {
    own_process!(); // exact process-wide counts
                    // The sampler reads what the router writes.
    let sampler = pipeline(RULES).partitions(4).start().await;
    let (sampling, output) = (&sampler.input, &sampler.output);
    let input = unique("raw");
    create_topic(&input, 3).await;
    let mut route_config = pipeline::config(&input, sampling, &sampler.rules);
    route_config.kafka.dead_letter_topic = None;
    let router = tailsift::kafka::route::start(&route_config)
        .await
        .expect("route");

    // 200 traces of 3 spans. Each batch concatenates one span of each of 20 traces (a valid
    // ExportTraceServiceRequest: repeated fields append), under a key that is no trace's.
    let (run, n) = (4u64, 200u64);
    let p = producer();
    let mut batches = 0;
    for part in 0..3 {
        for chunk in (0..n).collect::<Vec<_>>().chunks(20) {
            let mut batch = Vec::new();
            for &i in chunk {
                batch.extend_from_slice(&traffic::trace(run, i).1[part]);
            }
            send(&p, &input, &format!("batch-{batches}"), &batch);
            batches += 1;
        }
    }
    send(&p, &input, "garbage", b"\x0a\xff\xff\xff\x0f not protobuf");
    flush(&p);

    // The sampling topic: one trace per message, keyed by it, each trace in one partition.
    let mut keyed = Reader::new(sampling);
    assert!(
        keyed.read_until(Duration::from_secs(30), |m| m.len() >= (3 * n) as usize),
        "every (batch, trace) pair is routed: {} messages",
        keyed.messages.len()
    );
    let (partitions, spans) = routed(&keyed.messages);
    assert_eq!(spans.len(), n as usize, "every trace routed");
    assert!(
        partitions.values().all(|p| p.len() == 1),
        "each trace lands in one partition"
    );
    for i in 0..n {
        let (t, _, all) = traffic::trace(run, i);
        assert_eq!(
            spans.get(TraceId(t).to_hex().as_str()),
            Some(&all),
            "trace {i} whole"
        );
    }

    // Sampled downstream: the promise holds through the extra stage.
    let expected = traffic::expected(&sampler.rules, run, 0..n);
    let mut out = Reader::new(output);
    out.read_until(Duration::from_secs(30), |m| traffic::complete(&expected, m));
    let v = traffic::verdict(&expected, &out.messages);
    v.assert_promise_kept();

    let (_, body) = http_get(router.http_addr, "/metrics").expect("scrape");
    assert_eq!(
        metric(&body, "tailsift_routed_traces_total", ""),
        Some((3 * n) as f64),
        "one routed group per (batch, trace)"
    );
    assert!(
        metric(
            &body,
            "tailsift_decode_failures_total",
            "malformed_protobuf"
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    sampler.shutdown().await;
    router.shutdown().await.expect("route shutdown");
}

/// The `tailsift route` command, SIGKILLed while it routes and started again: every span of
/// every trace still reaches the sampling topic, keyed by its trace id, each trace in one
/// partition (at least once: the commit follows the produce acknowledgements).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_command_loses_no_span_across_a_sigkill() {
    let _turn = several_processes().await;
    tokio::time::timeout(Duration::from_secs(180), route_across_a_sigkill())
        .await
        .expect("finishes within 3 minutes");
}

async fn route_across_a_sigkill() {
    let (input, sampling) = (unique("raw"), unique("sampling"));
    create_topic(&input, 3).await;
    create_topic(&sampling, 4).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = rules_dir(&[("rules.yaml", RULES)]);
    let config = RunConfig::new(&input, &sampling, rules.path())
        .set("kafka.commit_interval", "100ms")
        .consumer_property("session.timeout.ms", "6000")
        .set("shutdown_timeout", "10s");
    let (run, n) = (5u64, 600u64);
    // Batches of 10 traces' spans, under keys that are no trace's.
    let batches: Vec<Vec<u8>> = (0..3)
        .flat_map(|part| {
            (0..n)
                .collect::<Vec<_>>()
                .chunks(10)
                .map(move |chunk| {
                    chunk
                        .iter()
                        .flat_map(|&i| traffic::trace(run, i).1[part].clone())
                        .collect()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let mut first = launch(dir.path(), "first", &config)
        .command("route")
        .start();
    first.wait_ready(Duration::from_secs(60)).await;
    // Batches keep coming while the first router is killed and the second takes over.
    let sender = {
        let input = input.clone();
        std::thread::spawn(move || {
            let p = producer();
            for (i, b) in batches.iter().enumerate() {
                send(&p, &input, &format!("batch-{i}"), b);
                std::thread::sleep(Duration::from_millis(15));
            }
            flush(&p);
        })
    };
    let mut keyed = Reader::new(&sampling);
    assert!(
        keyed.read_until(Duration::from_secs(30), |m| m.len() >= 100),
        "the first router routes"
    );
    first.kill9();
    let killed_after = keyed.messages.len();
    let second = launch(dir.path(), "second", &config)
        .command("route")
        .start();
    second.wait_ready(Duration::from_secs(60)).await;
    sender.join().expect("sender");

    let whole = |msgs: &[OutMsg]| {
        let mut spans: BTreeMap<&str, BTreeSet<Vec<u8>>> = BTreeMap::new();
        for m in msgs {
            for (_, s) in spans_of(&m.payload).unwrap_or_default() {
                spans.entry(&m.key).or_default().insert(s.encode_to_vec());
            }
        }
        (0..n).all(|i| {
            let (t, _, all) = traffic::trace(run, i);
            spans.get(TraceId(t).to_hex().as_str()) == Some(&all)
        })
    };
    let all_there = keyed.read_until(Duration::from_secs(60), whole);
    let (partitions, _) = routed(&keyed.messages);
    assert!(
        all_there,
        "every span of every trace routed across the SIGKILL"
    );
    assert_eq!(partitions.len(), n as usize);
    assert!(
        partitions.values().all(|p| p.len() == 1),
        "each trace lands in one partition, whichever router routed it"
    );
    let routed = keyed.messages.len() as f64;
    let by_second = second.metric("tailsift_routed_traces_total", "");
    eprintln!(
        "route across a SIGKILL: {routed} messages routed for {} (batch, trace) pairs, {by_second} by the second router, {} before the kill",
        3 * n, killed_after
    );
    assert!(
        by_second >= (3 * n / 2) as f64,
        "the second router routes the rest"
    );
}
