//! Stress relief on a real broker: under growing consumer lag the sampler switches to degraded
//! mode (traces decided by trace id alone, errors kept, nothing buffered) and back once the
//! lag is low again.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::fixture::*;
use tailsift::otlp::build::*;
use tailsift::otlp::TraceId;
use tailsift::rules::RuleSet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn degraded_mode_starts_under_growing_lag_and_ends_when_the_lag_is_low() {
    // Lag thresholds are measured against time: no multi-process test beside it.
    let _turn = load_sensitive().await;
    own_process!(); // tailsift_stress_mode is one gauge for the process
                    // Traces never complete by themselves during the test: a small buffer fills, fetching
                    // pauses, and the lag grows while traffic goes on.
    let pipe = pipeline(ERRORS_ELSE_DROP)
        .config(|c| {
            c.completion.decision_wait = Duration::from_secs(120);
            c.completion.max_trace_age = Duration::from_secs(120);
            c.buffer.max_bytes = Some(tailsift::config::ByteSize(1 << 20));
            c.monitoring.lag_interval = Duration::from_millis(200);
            c.stress.enter_lag = 30;
            c.stress.enter_after = Duration::from_secs(1);
            c.stress.exit_lag = 5;
            c.stress.exit_after = Duration::from_secs(1);
            c.stress.sample_rate = 4;
        })
        .start()
        .await;
    pipe.wait_assigned(1, secs(20)).await;
    let (p, input) = (producer(), &pipe.input);
    let base = 1_700_000_000_000_000_000u64;
    // 40 traces of one 40 KB span: more than the budget.
    let mut sent: Vec<([u8; 16], bool)> = Vec::new();
    let big = "x".repeat(40_000);
    for i in 0..40u64 {
        let t = trace_id(700_000 + i);
        let s = span(t, 2, Some(1), &big, base, base + 10);
        send(&p, input, &TraceId(t).to_hex(), &request("svc", vec![s]));
        sent.push((t, false));
    }
    flush(&p);
    wait_for(secs(20), "fetching pauses over budget", || pipe.paused()).await;

    // Small traces keep coming (every 7th with an error) until degraded mode is on.
    let mut modes = Vec::new();
    let mut n = 0u64;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !pipe.degraded() && std::time::Instant::now() < deadline {
        for _ in 0..5 {
            let t = trace_id(800_000 + n);
            let error = n.is_multiple_of(7);
            let mut s = span(t, 2, Some(1), "work", base, base + 10);
            if error {
                s = with_error(s);
            }
            send(&p, input, &TraceId(t).to_hex(), &request("svc", vec![s]));
            sent.push((t, error));
            n += 1;
        }
        flush(&p);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let m = pipe.scrape();
        modes.push(metric(&m, "tailsift_stress_mode", "").unwrap_or(0.0));
    }
    assert!(pipe.degraded(), "degraded mode started under growing lag");

    // Degraded: the buffer is decided and empties, the backlog is consumed without
    // buffering, the lag falls, and normal mode returns.
    // The mode is read before the scrape: the gauge is set before the sampler switches, so
    // once the sampler is out of degraded mode the scrape shows it (read the other way round,
    // a scrape just before the switch and a mode read just after it disagree).
    let back = eventually(Duration::from_secs(30), || {
        let off = !pipe.degraded();
        let m = pipe.scrape();
        modes.push(metric(&m, "tailsift_stress_mode", "").unwrap_or(0.0));
        off
    })
    .await;
    assert!(back, "normal mode returned once the lag was low");
    assert!(
        modes.contains(&1.0),
        "the mode metric showed degraded mode: {modes:?}"
    );
    assert_eq!(modes.last(), Some(&0.0), "and normal mode again");
    assert!(!pipe.paused(), "fetching resumed");
    let m = pipe.scrape();
    assert!(
        metric(&m, "tailsift_traces_decided_total", "trigger=\"stress\"").unwrap_or(0.0) > 0.0,
        "the buffered traces were decided when degraded mode began, not dropped"
    );
    assert!(
        metric(&m, "tailsift_stress_spans_total", "").unwrap_or(0.0) > 0.0,
        "spans were decided by trace id in degraded mode"
    );

    // What came out: every error trace, and of the rest only those the trace id samples.
    let set = RuleSet::load(&pipe.rules, None).expect("rules");
    let errors: BTreeSet<String> = sent
        .iter()
        .filter(|(_, e)| *e)
        .map(|(t, _)| TraceId(*t).to_hex())
        .collect();
    let mut reader = pipe.reader();
    reader.read_until(Duration::from_secs(20), |m| {
        let keys: BTreeSet<&String> = m.iter().map(|m| &m.key).collect();
        errors.iter().all(|e| keys.contains(e))
    });
    reader.settle(secs(1));
    let keys: BTreeSet<String> = reader.messages.iter().map(|m| m.key.clone()).collect();
    let missing: Vec<&String> = errors.iter().filter(|e| !keys.contains(*e)).collect();
    assert!(
        missing.is_empty(),
        "error traces kept in both modes: missing {missing:?}"
    );
    for msg in &reader.messages {
        let rule = msg.headers["tailsift.rule"].as_str();
        let id = sent
            .iter()
            .find(|(t, _)| TraceId(*t).to_hex() == msg.key)
            .map(|(t, _)| TraceId(*t));
        match rule {
            "errors" | "stress-errors" => assert!(errors.contains(&msg.key), "{msg:?}"),
            "stress" => {
                assert_eq!(msg.headers["tailsift.sample_rate"], "4");
                assert!(
                    id.is_some_and(|id| set.sampled(&id, 4)),
                    "kept by trace id only when sampled: {}",
                    msg.key
                );
            }
            other => panic!("unexpected rule {other} for {}", msg.key),
        }
    }
    assert!(
        reader
            .messages
            .iter()
            .any(|m| m.headers["tailsift.rule"] == "stress"),
        "degraded mode kept traces by trace id"
    );

    // Normal mode buffers new traces again.
    let t = trace_id(900_000);
    send(
        &p,
        input,
        &TraceId(t).to_hex(),
        &request("svc", vec![span(t, 2, Some(1), "after", base, base + 10)]),
    );
    flush(&p);
    wait_for(secs(10), "traces are buffered again in normal mode", || {
        pipe.buffered() > 0
    })
    .await;
    pipe.shutdown().await;
}
