//! Spans of traces already decided follow the decision at once (late spans), and stress
//! relief's degraded mode decides new traces by trace id instead of buffering them.

use super::*;
use crate::decision::Trigger;
use crate::stress;

/// A span of trace `n` arriving after its trace was decided.
fn late_span(n: u64, span_id: u64) -> Vec<u8> {
    let t = trace_id(n);
    request("stock", vec![span(t, span_id, Some(1), "late", 3, 4)])
}

#[tokio::test(start_paused = true)]
async fn late_spans_follow_a_cached_decision_forwarded_if_kept_and_dropped_if_dropped() {
    let mut f = fixture();
    let (kept, kept_pay, kept_root) = trace(1, true);
    let (dropped, dropped_pay, dropped_root) = trace(2, false);
    f.ingest(1, &kept_pay, false);
    f.ingest(2, &kept_root, false);
    f.ingest(3, &dropped_pay, false);
    f.ingest(4, &dropped_root, false);
    assert_eq!(f.sampler.decide_due(past_root_grace()), 2);
    let first = f.output.take_delivered();
    assert_eq!(first, vec![(kept, "errors".to_string(), 2)]);
    drop(f.log.take()); // the log has both decisions

    // A late span of the kept trace: forwarded at once, under the same rule, alone.
    let s = f.ingest(10, &late_span(1, 7), false);
    assert_eq!(
        s,
        Spans {
            late_kept: 1,
            ..Spans::default()
        }
    );
    let sent = f.output.take();
    assert_eq!(sent.len(), 1);
    let (id, decision, tickets) = &sent[0];
    assert_eq!((*id, decision.rule()), (kept, "errors"));
    assert_eq!(tickets.iter().map(|t| t.spans).sum::<u32>(), 1);
    assert_eq!(f.safe_offset(), Some(10), "held until acknowledged");
    for (_, _, tickets) in sent {
        tickets.into_iter().for_each(Ticket::delivered);
    }
    let logged = f.log.take();
    assert_eq!(logged.len(), 1, "the late forward is logged with its reach");
    assert_eq!(logged[0].trace_id, kept);
    assert_eq!(logged[0].partitions.as_slice(), &[(0, Some(10))]);
    drop(logged);
    assert_eq!(f.safe_offset(), Some(11));

    // A late span of the dropped trace: dropped, its offset passed at once.
    let s = f.ingest(11, &late_span(2, 7), false);
    assert_eq!(
        s,
        Spans {
            late_dropped: 1,
            ..Spans::default()
        }
    );
    assert!(f.output.take().is_empty());
    assert!(f.log.take().is_empty(), "nothing new to log");
    assert_eq!(f.safe_offset(), Some(12));

    assert_eq!(
        f.sampler.buffered_traces(),
        0,
        "late spans are not buffered"
    );
    let c = f.sampler.counts();
    assert_eq!((c.kept(), c.dropped()), (1, 1), "each trace decided once");
    assert_eq!(
        (c.late.kept.get(), c.late.dropped.get()),
        (1, 1),
        "the counts a scrape shows"
    );
    assert_eq!(
        f.sampler
            .decision_cache()
            .get(&dropped)
            .map(|d| d.is_keep()),
        Some(false),
        "the drop is remembered for the spans still to come"
    );
}

#[tokio::test(start_paused = true)]
async fn a_late_spans_redactions_are_counted_at_the_next_tick_though_it_decides_nothing() {
    let mut f = fixture();
    let redaction = crate::redact::parse(
        "redaction.yaml",
        "attributes:\n  - name: drop-user\n    key: user.id\n    action: remove\n",
        &|_| None,
    )
    .expect("redaction");
    let rules = RuleSet::new(parse_file("rules.yaml", RULES).expect("rules"), None)
        .expect("set")
        .with_redaction(Some(redaction));
    f.sampler.swap_rules(Arc::new(rules));
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let removed = || {
        let series =
            r#"tailsift_redacted_attributes_total{action="remove",redaction="drop-user"} "#;
        handle
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.parse::<f64>().ok()))
            .unwrap_or(0.0)
    };
    let (_, pay, root) = trace(1, true);
    f.ingest(1, &pay, false);
    f.ingest(2, &root, false);
    metrics::with_local_recorder(&recorder, || {
        assert_eq!(f.sampler.decide_due(past_root_grace()), 1, "kept")
    });
    assert_eq!(removed(), 0.0, "the trace had no user.id");
    assert_eq!(f.output.take().len(), 1, "the trace is forwarded");

    let late = with_attrs(
        span(trace_id(1), 7, Some(1), "late", 3, 4),
        vec![attr_str("user.id", "u-1")],
    );
    f.ingest(10, &request("stock", vec![late]), false);
    assert_eq!(f.output.take().len(), 1, "the late span is forwarded");
    metrics::with_local_recorder(&recorder, || {
        assert_eq!(
            f.sampler.decide_due(past_root_grace()),
            0,
            "nothing to decide"
        )
    });
    assert_eq!(removed(), 1.0, "the late span's removal is counted");
}

#[tokio::test(start_paused = true)]
async fn degraded_mode_decides_the_buffer_now_then_new_traces_by_id_until_it_is_off() {
    let mut f = fixture();
    let (err, err_pay, _) = trace(1, true);
    let (_, ok_pay, _) = trace(2, false);
    f.ingest(1, &err_pay, false);
    f.ingest(2, &ok_pay, false);
    assert_eq!(f.sampler.buffered_traces(), 2, "incomplete: buffered");

    // On: every buffered trace is decided now, through the rules, with trigger `stress`.
    let decided = f.sampler.set_degraded(true, 1, Instant::now());
    assert!(f.sampler.degraded());
    assert_eq!(decided, 2);
    assert_eq!(f.sampler.buffered_traces(), 0, "the buffer empties");
    assert_eq!(f.sampler.counts().decided_by(Trigger::Stress), 2);
    assert_eq!(
        f.output.take_delivered(),
        vec![(err, "errors".to_string(), 1)]
    );

    // A new trace is not buffered: decided by its id (rate 1 keeps every id) and forwarded.
    let (new, new_pay, new_root) = trace(3, false);
    let s = f.ingest(3, &new_pay, false);
    assert_eq!(
        s,
        Spans {
            stress_kept: 1,
            ..Spans::default()
        }
    );
    assert_eq!(f.sampler.buffered_traces(), 0);
    assert_eq!(
        f.output.take_delivered(),
        vec![(new, stress::STRESS_RULE.to_string(), 1)]
    );

    // Off: new traces are buffered and decided by the rules again ...
    assert_eq!(f.sampler.set_degraded(false, 1, Instant::now()), 0);
    assert!(!f.sampler.degraded());
    let (_, later_pay, _) = trace(4, false);
    let s = f.ingest(4, &later_pay, false);
    assert_eq!(s, Spans::default());
    assert_eq!(f.sampler.buffered_traces(), 1);
    // ... while a trace decided in degraded mode keeps its decision: its root follows it.
    let s = f.ingest(5, &new_root, false);
    assert_eq!(
        s,
        Spans {
            late_kept: 1,
            ..Spans::default()
        }
    );
    assert_eq!(
        f.output.take_delivered(),
        vec![(new, stress::STRESS_RULE.to_string(), 1)]
    );
    assert_eq!(f.sampler.buffered_traces(), 1, "only the later trace waits");
}

#[tokio::test(start_paused = true)]
async fn an_early_kept_trace_is_counted_at_the_next_flush_and_not_as_a_broken_one() {
    const EARLY: &str = "rules:\n  - name: errors\n    conditions: trace.error = true\n    \
                         outcome: keep\n    early: true\n  - name: rest\n    outcome: drop\n";
    let mut f = Fixture::with(EARLY, Completion::default(), Budget::default());
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let value = |series: &str| {
        handle
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.parse::<f64>().ok()))
            .unwrap_or(0.0)
    };
    let early = r#"tailsift_traces_decided_total{rule="errors",outcome="kept",trigger="early"} "#;
    // Trace 1 fails at its payment span (its parent, the root, is still to come): decided at
    // once. Trace 2 lost its root for good: decided at completion, without it.
    let (id, pay, root) = trace(1, true);
    metrics::with_local_recorder(&recorder, || {
        f.ingest(1, &pay, false);
    });
    assert_eq!(
        f.output.take().len(),
        1,
        "forwarded as its failing span arrived"
    );
    assert_eq!(
        f.sampler.counts().decided_by(Trigger::Early),
        0,
        "not yet published"
    );
    let (_, orphan, _) = trace(2, false);
    f.ingest(2, &orphan, false);
    metrics::with_local_recorder(&recorder, || {
        f.sampler
            .decide_due(Instant::now() + Duration::from_secs(60))
    });
    assert_eq!(f.sampler.counts().decided_by(Trigger::Early), 1);
    assert_eq!(value(early), 1.0, "published with the deciders' flush");
    assert_eq!(
        value("tailsift_traces_without_root_total "),
        1.0,
        "trace 2 only: an early decision is incomplete by design"
    );
    assert_eq!(
        value(r#"tailsift_orphan_spans_total{service="payment"} "#),
        1.0
    );
    // Its root follows the decision, as a late span.
    let s = f.ingest(3, &root, false);
    assert_eq!((s.late_kept, f.output.take()[0].0), (1, id));
}
