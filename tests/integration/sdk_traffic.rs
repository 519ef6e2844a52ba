//! Traffic recorded from the OpenTelemetry SDK (`tests/data/sdk-traffic.bin`: five services
//! exporting with the SDK's `BatchSpanProcessor` at its defaults, a queue consumer among them)
//! on a real broker: its batches produced at the times they were exported, and the instance
//! that decides stopped and replaced midway, as a deploy does. Each batch holds spans of many
//! traces, and a round of batches comes every 5 s, so many spans (the queue consumer's, a
//! callee's that missed its caller's round) arrive after their trace was decided: by the
//! instance that was stopped, for those that arrive after it.

#[path = "../data/sdk_traffic.rs"]
mod recording;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::fixture::traffic::{complete, verdict, Group};
use crate::fixture::*;
use prost::Message as _;
use tailsift::otlp::build::spans_of;
use tailsift::otlp::TraceId;
use tailsift::rules::RuleSet;

/// When the first instance is stopped, after the recording's first export: its third round
/// of batches (at about 10.3 s) decided (`root_grace` is 500 ms), its fourth (at 15 s, with
/// the third's queue consumers' spans) not yet sent.
const STOP_AT: Duration = Duration::from_millis(12_500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_traffic_keeps_its_late_spans_with_their_traces_across_a_restart() {
    let _turn = several_processes().await;
    let s = Group::new(1, false).await;
    let rec = recording::recording();
    let messages: Vec<(u32, Vec<u8>)> = recording::messages(&rec)
        .into_iter()
        .map(|(ms, m)| (ms, m.to_vec()))
        .collect();

    // The traces the rules keep (an error span, or the trace-id sampler's half), with every
    // span the recording has of them.
    let set = RuleSet::load(s.rules.path(), None).expect("rules");
    let mut spans: BTreeMap<String, BTreeSet<Vec<u8>>> = BTreeMap::new();
    let (mut errors, mut sampled) = (BTreeSet::new(), BTreeSet::new());
    for (_, m) in &messages {
        for (_, span) in spans_of(m).expect("the SDK's protobuf") {
            let id = TraceId::from_slice(&span.trace_id).expect("trace id");
            if span.status.as_ref().is_some_and(|s| s.code == 2) {
                errors.insert(id.to_hex());
            }
            if set.sampled(&id, 2) {
                sampled.insert(id.to_hex());
            }
            spans
                .entry(id.to_hex())
                .or_default()
                .insert(span.encode_to_vec());
        }
    }
    let expected: BTreeMap<_, _> = spans
        .into_iter()
        .filter(|(id, _)| errors.contains(id) || sampled.contains(id))
        .collect();
    assert!(!errors.is_empty() && expected.len() > errors.len());

    let mut a = s.start("a", None);
    a.wait_ready(Duration::from_secs(60)).await;
    let input = s.input.clone();
    let start = Instant::now();
    let sender = std::thread::spawn(move || {
        let p = producer();
        for (ms, m) in &messages {
            let at = start + Duration::from_millis(u64::from(*ms));
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            // As a collector exporting each batch whole: no trace id to key it by.
            send(&p, &input, "", m);
        }
        flush(&p);
    });
    tokio::time::sleep(STOP_AT.saturating_sub(start.elapsed())).await;
    assert!(
        a.metric("tailsift_decision_log_records_total", "") > 0.0,
        "a logged decisions before it stopped"
    );
    let (ok, took) = a.terminate(Duration::from_secs(15)).await;
    assert!(ok, "clean exit on SIGTERM ({took:?})");
    let b = s.start("b", None);
    b.wait_ready(Duration::from_secs(60)).await;
    sender.join().expect("sender");

    let mut reader = Reader::new(&s.output);
    reader.read_until(Duration::from_secs(90), |m| complete(&expected, m));
    reader.settle(Duration::from_secs(2));
    let v = verdict(&expected, &reader.messages);
    let followed = b.metric("tailsift_logged_decision_spans_total", "");
    eprintln!(
        "sdk traffic: {} kept traces ({} spans, {} with an error), {} spans out, {} duplicates; \
         the new instance followed logged decisions for {followed} spans",
        v.kept_traces,
        v.expected_spans,
        errors.len(),
        v.spans_out,
        v.duplicate_spans
    );
    v.assert_promise_kept();
    assert!(
        followed > 0.0,
        "spans of traces the stopped instance decided reached the new one and followed its decisions"
    );
}
