//! Memory relief: at the budget (a burst fetched before back-pressure took effect), or once
//! reading has been paused for `decision_wait`, the oldest traces are decided early, whole,
//! through the rules; none is dropped undecided. A trace reaching `max_trace_bytes` is
//! decided at once.

use super::*;
use crate::decision::Trigger;

/// Keeps every trace.
pub(super) const KEEP_ALL: &str = "rules:\n  - name: all\n    outcome: keep\n";

/// A message with `spans` child spans of trace `n`, each with a 200-byte name.
pub(super) fn message(n: u64, first_span: u64, spans: u64) -> Vec<u8> {
    let t = trace_id(n);
    let name = "x".repeat(200);
    request(
        "svc",
        (first_span..first_span + spans)
            .map(|i| span(t, i + 2, Some(1), &name, 1, 2))
            .collect(),
    )
}

/// Asserts that `kept` are traces 0, 1, ... in order, each whole (5 spans), kept by `all`.
fn assert_oldest_first_and_whole(kept: &[(TraceId, String, u32)]) {
    for (i, (id, rule, spans)) in kept.iter().enumerate() {
        assert_eq!(*id, TraceId(trace_id(i as u64)), "oldest first");
        assert_eq!(
            (rule.as_str(), *spans),
            ("all", 5),
            "whole, through the rules"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn at_the_budget_the_oldest_traces_are_decided_early_and_none_is_dropped() {
    // Each trace: 5 spans of ~220 bytes plus the per-trace overhead: about 1.4 KB.
    let mut f = Fixture::with(
        KEEP_ALL,
        Completion::default(),
        Budget::new(20_000, 0.5, 0.25),
    );
    for n in 0..14 {
        f.ingest(n as i64, &message(n, 0, 5), false);
        tokio::time::advance(Duration::from_millis(10)).await;
    }
    let before = f.sampler.buffered_bytes();
    assert!(before >= 20_000, "the burst reached the budget: {before}");
    assert!(f.sampler.decide_due(Instant::now()) > 0);
    let after = f.sampler.buffered_bytes();
    assert!(after <= 10_000, "back under the high watermark: {after}");
    let kept = f.output.take_delivered();
    assert_eq!(
        kept.len() + f.sampler.buffered_traces(),
        14,
        "every trace is decided or still buffered"
    );
    assert_oldest_first_and_whole(&kept);
    assert_eq!(
        f.sampler.counts().decided_by(Trigger::Memory),
        kept.len() as u64
    );
    assert_eq!(
        f.sampler.decide_due(Instant::now()),
        0,
        "under budget: nothing more"
    );
}

#[tokio::test(start_paused = true)]
async fn a_long_pause_makes_room_by_the_oldest_traces_not_by_the_timers() {
    let completion = Completion {
        root_grace: Duration::from_secs(1),
        decision_wait: Duration::from_secs(1),
        ..Completion::default()
    };
    let mut f = Fixture::with(KEEP_ALL, completion, Budget::new(20_000, 0.5, 0.25));
    // About 8 KB: between the low (5 000) and high (10 000) watermarks.
    for n in 0..4 {
        f.ingest(n as i64, &message(n, 0, 5), false);
        tokio::time::advance(Duration::from_millis(10)).await;
    }
    let before = f.sampler.buffered_bytes();
    assert!(
        (5_000..10_000).contains(&before),
        "between the watermarks: {before}"
    );
    let now = Instant::now();
    assert_eq!(
        f.sampler.decide_due(now),
        0,
        "reading goes on: nothing to do yet"
    );

    // Reading pauses: the timers stop. Once the pause has lasted decision_wait, the oldest
    // traces are decided until the buffer is below the low watermark (where reading resumes).
    f.sampler.reading_paused(now);
    tokio::time::advance(Duration::from_millis(900)).await;
    assert_eq!(
        f.sampler.decide_due(Instant::now()),
        0,
        "a short pause decides nothing"
    );
    tokio::time::advance(Duration::from_secs(5)).await;
    let decided = f.sampler.decide_due(Instant::now());
    assert!(decided > 0);
    assert!(
        f.sampler.buffered_bytes() < 5_000,
        "below the low watermark: {}",
        f.sampler.buffered_bytes()
    );
    assert_oldest_first_and_whole(&f.output.take_delivered());
    assert_eq!(
        f.sampler.counts().decided_by(Trigger::Memory),
        decided as u64
    );
    assert!(
        f.sampler.buffered_traces() > 0,
        "the newest wait: their grace has not run while paused"
    );
    assert_eq!(f.sampler.decide_due(Instant::now()), 0);

    // Reading resumes: the rest complete by their timers.
    let waiting = f.sampler.buffered_traces();
    assert_eq!(decided + waiting, 4, "none dropped undecided");
    f.sampler.reading_resumed(Instant::now());
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(f.sampler.decide_due(Instant::now()), waiting);
    assert_eq!(f.sampler.buffered_traces(), 0);
    assert_eq!(
        f.sampler.counts().decided_by(Trigger::Memory),
        decided as u64,
        "the rest by their timers"
    );
}

#[tokio::test(start_paused = true)]
async fn a_trace_reaching_max_trace_bytes_is_decided_and_its_later_spans_follow() {
    let completion = Completion {
        max_trace_bytes: 4_000,
        ..Completion::default()
    };
    let mut f = Fixture::with(KEEP_ALL, completion, Budget::default());
    f.ingest(1, &message(1, 0, 10), false); // ~2.4 KB
    f.ingest(2, &message(2, 0, 2), false); // an ordinary trace
    assert_eq!(f.sampler.buffered_traces(), 2);
    f.ingest(3, &message(1, 10, 10), false); // crosses 4 KB: decided now
    assert_eq!(
        f.sampler.buffered_traces(),
        1,
        "only the ordinary trace is still buffered"
    );
    let s = f.ingest(4, &message(1, 20, 10), false);
    assert_eq!(s.late_kept, 10, "late spans follow the decision");
    let giant = TraceId(trace_id(1));
    assert_eq!(
        f.output.take_delivered(),
        vec![(giant, "all".into(), 20), (giant, "all".into(), 10)]
    );
    // Counted by the deciders' next tick, which decides nothing else yet.
    assert_eq!(f.sampler.decide_due(Instant::now()), 0);
    assert_eq!(f.sampler.counts().decided_by(Trigger::ByteLimit), 1);
}

#[tokio::test(start_paused = true)]
async fn decided_traces_span_buffers_wait_for_the_ingesting_thread_to_free_them() {
    let mut f = fixture();
    let (kept, kept_pay, kept_root) = trace(1, true);
    let (_, dropped_pay, dropped_root) = trace(2, false);
    for (offset, m) in [&kept_pay, &kept_root, &dropped_pay, &dropped_root]
        .into_iter()
        .enumerate()
    {
        f.ingest(offset as i64, m, false);
    }
    assert_eq!(f.graveyard_waiting(), 0, "nothing decided yet");
    assert_eq!(f.sampler.decide_due(past_root_grace()), 2);
    // Kept and dropped alike: their span bytes, not freed by the decider.
    let spans = kept_pay.len() + kept_root.len() + dropped_pay.len() + dropped_root.len();
    let waiting = f.graveyard_waiting();
    assert!(
        waiting > 0 && waiting <= spans,
        "{waiting} bytes waiting, of {spans} bytes of messages"
    );
    assert_eq!(
        f.output.take_delivered()[0].0,
        kept,
        "the kept trace forwarded whole"
    );
    // The next message ingested frees them, as does an idle poll (`sweep`).
    let (_, pay, _) = trace(3, false);
    f.ingest(9, &pay, false);
    assert_eq!(f.graveyard_waiting(), 0);
    f.ingest(10, &trace(4, true).2, false);
    f.sampler.decide_due(past_root_grace());
    assert!(f.graveyard_waiting() > 0);
    f.sampler.sweep();
    assert_eq!(f.graveyard_waiting(), 0);
}

/// A message with the root span of trace `n` and `spans - 1` children, each with a 200-byte
/// name.
fn rooted(n: u64, spans: u64) -> Vec<u8> {
    let t = trace_id(n);
    let name = "x".repeat(200);
    let mut all = vec![span(t, 1, None, &name, 1, 9)];
    all.extend((1..spans).map(|i| span(t, i + 1, Some(1), &name, 2, 3)));
    request("svc", all)
}

#[tokio::test(start_paused = true)]
async fn memory_relief_decides_traces_with_their_root_before_an_older_one_still_without() {
    // The oldest trace's first message was read, its failing span and root were not (fetching
    // paused between them); newer traces came whole, root included.
    let mut f = Fixture::with(RULES, Completion::default(), Budget::new(20_000, 0.5, 0.25));
    let split = TraceId(trace_id(0));
    f.ingest(0, &message(0, 0, 5), false);
    for n in 1..14 {
        tokio::time::advance(Duration::from_millis(10)).await;
        f.ingest(n as i64, &rooted(n, 5), false);
    }
    assert!(
        f.sampler.buffered_bytes() >= 20_000,
        "the burst reached the budget"
    );
    let decided = f.sampler.decide_due(Instant::now());
    assert!(decided > 0);
    assert!(
        f.sampler.buffered_bytes() <= 10_000,
        "back under the high watermark"
    );
    assert_eq!(
        f.sampler.counts().decided_by(Trigger::Memory),
        decided as u64
    );
    assert!(
        f.sampler.buffer.with_entry(&split, |_| ()).is_some(),
        "the trace without its root waits, though oldest"
    );

    // Its failing span and root arrive: it completes whole, and its error keeps it.
    let t = trace_id(0);
    let rest = request(
        "svc",
        vec![
            with_error(span(t, 7, Some(1), "pay", 2, 3)),
            span(t, 1, None, "GET /", 1, 9),
        ],
    );
    f.ingest(20, &rest, false);
    assert!(f.sampler.decide_due(past_root_grace()) > 0);
    let kept = f.output.take_delivered();
    assert_eq!(kept, vec![(split, "errors".to_string(), 7)]);
    assert_eq!(f.sampler.buffered_traces(), 0, "every trace decided");
}
