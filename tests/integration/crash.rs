//! The at-least-once promise with the real binary: SIGKILL mid-stream, restart, and every span
//! of every trace the rules keep still reaches the output; then SIGTERM exits cleanly in time.

use std::time::Duration;

use crate::fixture::instance::{launch, RunConfig};
use crate::fixture::traffic::{self, RULES};
use crate::fixture::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_then_restart_loses_no_span_of_a_kept_trace() {
    let _turn = several_processes().await;
    tokio::time::timeout(Duration::from_secs(240), crash_and_restart())
        .await
        .expect("the crash test finishes within 4 minutes");
}

async fn crash_and_restart() {
    let (input, output) = (unique("in"), unique("out"));
    create_topic(&input, 4).await;
    create_topic(&output, 1).await;
    let rules = rules_dir(&[("rules.yaml", RULES)]);
    let dir = tempfile::tempdir().expect("tempdir");
    // Both instances share the group; only the HTTP port differs.
    let config = RunConfig::quick(&input, &output, rules.path());
    let mut a = launch(dir.path(), "a", &config).start();
    a.wait_ready(Duration::from_secs(60)).await;
    let mut reader = Reader::new(&output);
    // Traffic keeps flowing while instance A is killed and B takes over.
    let sender = {
        let input = input.clone();
        std::thread::spawn(move || {
            let p = producer();
            traffic::send_interleaved(&p, &input, 0, 0..600, Duration::from_millis(6));
            traffic::send_interleaved(&p, &input, 0, 600..1200, Duration::from_millis(3));
        })
    };
    assert!(
        reader.read_until(Duration::from_secs(30), |m| m.len() >= 30),
        "instance A forwards kept traces"
    );
    a.kill9();
    eprintln!(
        "crash test: A killed after {} output messages",
        reader.messages.len()
    );

    let mut b = launch(dir.path(), "b", &config).start();
    b.wait_ready(Duration::from_secs(60)).await;
    sender.join().expect("sender");
    eprintln!("crash test: traffic sent");

    // What arrived: every expected trace whole, nothing else, duplicates counted.
    let expected = traffic::expected(rules.path(), 0, 0..1200);
    let all_there = reader.read_until(Duration::from_secs(60), |m| traffic::complete(&expected, m));
    reader.settle(secs(2));
    let v = traffic::verdict(&expected, &reader.messages);
    assert!(all_there || !v.missing.is_empty(), "read everything");
    v.assert_promise_kept();
    let replayed = b.metric("tailsift_replayed_spans_forwarded_total", "");
    let merged = b.metric("tailsift_replay_heads_merged_total", "");
    eprintln!(
        "crash test: {} kept traces, {} spans out, {} duplicate spans, {replayed} counted as replayed by the restarted instance, {merged} traces made whole from read-back heads",
        v.kept_traces, v.spans_out, v.duplicate_spans
    );
    // Every duplicate is counted: a trace is decided at least root_grace (500ms) after it was
    // read, longer than the read marks' commit interval (200ms), so whatever the killed
    // instance forwarded had been marked as read.
    assert!(
        replayed >= v.duplicate_spans as f64,
        "duplicates after the crash are counted ({replayed} counted, {} seen)",
        v.duplicate_spans
    );

    // Graceful shutdown: SIGTERM, exit 0 within the bound (shutdown_timeout + 5 s).
    let (ok, took) = b.terminate(Duration::from_secs(15)).await;
    eprintln!("crash test: SIGTERM exit after {took:?}");
    assert!(ok, "clean exit on SIGTERM within its bound");
}

/// A trace already decided and forwarded whose messages straddle the commit offset (an
/// undecided trace holds an offset between them) is decided whole, and the same way, by the
/// instance that replays after `stop` (SIGKILL or SIGTERM). Without the decision log
/// (`log: false`) it reads back the trace's head and decides it again on its whole view; with
/// it, the replayed tail follows the logged decision and is not forwarded twice.
async fn straddling_trace_is_decided_the_same_after(stop: &str, log: bool) {
    let (input, output, group) = (unique("in"), unique("out"), unique("straddle-group"));
    create_topic(&input, 1).await;
    create_topic(&output, 1).await;
    let rules = rules_dir(&[("rules.yaml", RULES)]);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = RunConfig::new(&input, &output, rules.path())
        .set("kafka.group_id", group.as_str())
        .set("kafka.commit_interval", "100ms")
        .set("completion.decision_wait", "60s")
        .set("completion.root_grace", "200ms")
        .set("shutdown_timeout", "10s");
    if !log {
        config = config.set("kafka.decision_topic", "");
    }
    // Trace A fails in its first message (kept by `errors`); its later messages alone would
    // be kept by `half` instead: a partial view decides differently. Trace B never completes
    // before the stop, so it holds the commit offset between A's messages.
    let set = tailsift::rules::RuleSet::load(rules.path(), None).expect("rules");
    let run = 7;
    let a = (0..)
        .step_by(7)
        .find(|i| set.sampled(&tailsift::otlp::TraceId(traffic::trace(run, *i).0), 2))
        .expect("a failing trace that `half` keeps");
    let b = a + 1;
    let (ta, ma, _) = traffic::trace(run, a);
    let (tb, mb, _) = traffic::trace(run, b);
    let (ka, kb) = (
        tailsift::otlp::TraceId(ta).to_hex(),
        tailsift::otlp::TraceId(tb).to_hex(),
    );

    let mut first = launch(dir.path(), "first", &config).start();
    first.wait_ready(Duration::from_secs(60)).await;
    let p = producer();
    send(&p, &input, &ka, &ma[0]); // offset 0: A's failing span
    send(&p, &input, &kb, &mb[0]); // offset 1: B, undecided: the commit stays here
    send(&p, &input, &ka, &ma[1]); // offset 2
    send(&p, &input, &ka, &ma[2]); // offset 3: A's root; A is decided and forwarded
    flush(&p);
    let mut reader = Reader::new(&output);
    assert!(reader.read_key(secs(30), &ka), "A is forwarded");
    let committed_at_b = eventually(Duration::from_secs(30), || {
        committed(&group, &input, 0) == Some(1)
    })
    .await;
    assert!(
        committed_at_b,
        "the commit offset stops at B's first message, inside A"
    );
    match stop {
        "SIGKILL" => first.kill9(),
        _ => {
            let (ok, _) = first.terminate(Duration::from_secs(15)).await;
            assert!(ok, "clean exit on SIGTERM");
        }
    }

    let second = launch(dir.path(), "second", &config).start();
    second.wait_ready(Duration::from_secs(60)).await;
    send(&p, &input, &kb, &mb[1]);
    send(&p, &input, &kb, &mb[2]);
    flush(&p);

    let expected: std::collections::BTreeMap<_, _> = traffic::expected(rules.path(), run, a..b + 1);
    assert!(expected.contains_key(&ka), "A is kept");
    let whole = reader.read_until(Duration::from_secs(30), |m| traffic::complete(&expected, m));
    // A replayed decision of A, if any, is on its way by now.
    reader.settle(secs(2));
    let v = traffic::verdict(&expected, &reader.messages);
    assert!(whole, "every kept trace whole: missing {:?}", v.missing);
    let rules_of_a: std::collections::BTreeSet<_> = reader
        .messages
        .iter()
        .filter(|m| m.key == ka)
        .map(|m| m.headers.get("tailsift.rule").cloned().unwrap_or_default())
        .collect();
    assert_eq!(
        rules_of_a,
        ["errors".to_string()].into(),
        "after {stop}, A is decided again on its whole view, by the same rule"
    );
    v.assert_promise_kept();
    if log {
        assert!(
            second.metric("tailsift_logged_decision_spans_total", "outcome=\"kept\"") >= 1.0,
            "A's replayed tail follows its logged decision"
        );
        assert_eq!(
            second.metric("tailsift_replay_heads_merged_total", ""),
            0.0,
            "a trace whose decision is logged needs no re-decision"
        );
        assert_eq!(
            v.duplicate_spans, 0,
            "A's replayed spans were already forwarded"
        );
    } else {
        assert!(
            second.metric("tailsift_replay_heads_merged_total", "") >= 1.0,
            "the replaying instance counts the head it joined to A's tail"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_straddling_the_commit_is_decided_the_same_after_a_sigkill() {
    let _turn = several_processes().await;
    tokio::time::timeout(
        Duration::from_secs(120),
        straddling_trace_is_decided_the_same_after("SIGKILL", false),
    )
    .await
    .expect("finishes within 2 minutes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_straddling_the_commit_follows_its_logged_decision_after_a_sigkill() {
    let _turn = several_processes().await;
    tokio::time::timeout(
        Duration::from_secs(120),
        straddling_trace_is_decided_the_same_after("SIGKILL", true),
    )
    .await
    .expect("finishes within 2 minutes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_straddling_the_commit_is_decided_the_same_after_a_graceful_stop() {
    let _turn = several_processes().await;
    tokio::time::timeout(
        Duration::from_secs(120),
        straddling_trace_is_decided_the_same_after("SIGTERM", false),
    )
    .await
    .expect("finishes within 2 minutes");
}
