//! The buffer without Kafka, in paused time: completion triggers, the stopped clock, late
//! spans, freed bytes and held offsets.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{advance, Instant};

use super::*;
use crate::decision::{Decision, DecisionCache, Trigger};
use crate::offsets::OffsetHold;
use crate::otlp::build::*;
use crate::otlp::decode::Decoder;

const WAIT: Duration = Duration::from_secs(10);
const GRACE: Duration = Duration::from_secs(2);
const AGE: Duration = Duration::from_secs(30);

fn buffer(max_spans: u32) -> Buffer {
    Buffer::new(Completion {
        decision_wait: WAIT,
        root_grace: GRACE,
        max_trace_age: AGE,
        max_spans_per_trace: max_spans,
        max_trace_bytes: 1 << 20,
    })
}

fn hold(offset: i64) -> Arc<OffsetHold> {
    Arc::new(OffsetHold {
        partition: 0,
        offset,
    })
}

fn cache() -> DecisionCache {
    DecisionCache::new(1000, Duration::from_secs(60))
}

/// Ingests one message, returning what happened to each trace group.
fn ingest(b: &Buffer, c: &DecisionCache, payload: &[u8]) -> Vec<Ingested> {
    let mut d = Decoder::new();
    d.decode(payload).unwrap();
    let h = hold(1);
    d.groups(payload)
        .map(|g| b.ingest(&g, &h, false, Instant::now(), c))
        .collect()
}

fn due(b: &Buffer) -> Vec<(crate::otlp::TraceId, Trigger)> {
    let mut out = Vec::new();
    let now = Instant::now();
    b.due(now, &mut out);
    assert!(
        out.iter().all(|(_, _, at)| *at <= now),
        "deadlines are in the past"
    );
    out.into_iter().map(|(id, t, _)| (id, t)).collect()
}

#[tokio::test(start_paused = true)]
async fn idle_trigger_fires_decision_wait_after_the_last_span() {
    let (b, c) = (buffer(100), cache());
    let t = trace_id(1);
    ingest(
        &b,
        &c,
        &request("a", vec![span(t, 2, Some(1), "child", 1, 2)]),
    );
    advance(Duration::from_secs(6)).await;
    ingest(
        &b,
        &c,
        &request("b", vec![span(t, 3, Some(1), "child", 1, 2)]),
    );
    advance(WAIT - Duration::from_millis(100)).await;
    assert!(due(&b).is_empty(), "the second span moved the deadline");
    advance(Duration::from_millis(200)).await;
    assert_eq!(due(&b), vec![(crate::otlp::TraceId(t), Trigger::Idle)]);
}

#[tokio::test(start_paused = true)]
async fn root_trigger_fires_root_grace_after_the_root_arrived() {
    let (b, c) = (buffer(100), cache());
    let t = trace_id(2);
    ingest(
        &b,
        &c,
        &request("a", vec![span(t, 2, Some(1), "child", 1, 2)]),
    );
    advance(Duration::from_secs(1)).await;
    ingest(&b, &c, &request("gw", vec![span(t, 1, None, "root", 0, 3)]));
    advance(GRACE - Duration::from_millis(100)).await;
    assert!(due(&b).is_empty());
    advance(Duration::from_millis(200)).await;
    assert_eq!(due(&b), vec![(crate::otlp::TraceId(t), Trigger::Root)]);
    assert!(due(&b).is_empty(), "the stale idle entry is skipped later");
}

#[tokio::test(start_paused = true)]
async fn the_completion_clock_stands_still_while_reading_is_paused() {
    let (b, c) = (buffer(100), cache());
    let t = trace_id(20);
    ingest(&b, &c, &request("gw", vec![span(t, 1, None, "root", 0, 3)]));
    advance(GRACE / 2).await;
    b.stop_clock(Instant::now());
    assert!(b.clock_stopped());
    advance(GRACE * 10).await;
    assert!(
        due(&b).is_empty(),
        "no trace completes while its spans cannot arrive"
    );
    b.start_clock(Instant::now());
    assert!(!b.clock_stopped());
    advance(GRACE / 2 - Duration::from_millis(100)).await;
    assert!(due(&b).is_empty(), "the grace resumes where it stopped");
    advance(Duration::from_millis(200)).await;
    let mut out = Vec::new();
    b.due(Instant::now(), &mut out);
    assert_eq!(out.len(), 1, "then the root's grace is over");
    let late = Instant::now() - out[0].2;
    assert!(
        late <= Duration::from_millis(200),
        "the deadline maps back to real time, the pause included: {late:?} ago"
    );
}

#[tokio::test(start_paused = true)]
async fn max_age_trigger_fires_for_a_trace_that_never_goes_quiet() {
    let (b, c) = (buffer(1000), cache());
    let t = trace_id(3);
    let mut fired = None;
    for i in 0..40u64 {
        ingest(
            &b,
            &c,
            &request("a", vec![span(t, i + 2, Some(1), "busy", 1, 2)]),
        );
        advance(Duration::from_secs(1)).await;
        if let Some(d) = due(&b).pop() {
            fired = Some((i, d.1));
            break;
        }
    }
    let (at, trigger) = fired.expect("decided");
    assert_eq!(trigger, Trigger::MaxAge);
    assert_eq!(
        at + 1,
        AGE.as_secs(),
        "decided at max_trace_age after the first span"
    );
}

#[tokio::test(start_paused = true)]
async fn span_limit_trigger_fires_at_the_limit() {
    let (b, c) = (buffer(3), cache());
    let t = trace_id(4);
    let two = (2..4).map(|i| span(t, i, Some(1), "s", 1, 2)).collect();
    assert_eq!(ingest(&b, &c, &request("a", two)), vec![Ingested::Buffered]);
    let one = vec![span(t, 9, Some(1), "s", 1, 2)];
    assert_eq!(
        ingest(&b, &c, &request("a", one)),
        vec![Ingested::Full(Trigger::SpanLimit)]
    );
}

#[tokio::test(start_paused = true)]
async fn taken_traces_free_their_bytes_and_late_spans_find_the_decision() {
    let (b, c) = (buffer(100), cache());
    let t = trace_id(5);
    ingest(&b, &c, &request("a", vec![span(t, 1, None, "root", 1, 2)]));
    assert!(b.bytes() > TRACE_OVERHEAD as u64);
    assert_eq!(b.len(), 1);
    let keep = Decision::Keep {
        rule: "r".into(),
        sample_rate: 1,
    };
    let (entry, d) = b
        .take(&crate::otlp::TraceId(t), |id, _| {
            c.insert(*id, keep.clone());
            keep.clone()
        })
        .unwrap();
    assert_eq!(d, keep);
    assert_eq!(entry.span_count, 1);
    assert_eq!(b.bytes(), 0);
    assert!(b.is_empty());
    let late = ingest(
        &b,
        &c,
        &request("a", vec![span(t, 2, Some(1), "late", 1, 2)]),
    );
    let [Ingested::Late(followed)] = &late[..] else {
        panic!("one late group: {late:?}");
    };
    assert_eq!(followed.decision, keep);
    assert_eq!(followed.logged, None, "decided here, not read back");
    assert!(b.is_empty(), "late spans are not buffered");
}

#[tokio::test(start_paused = true)]
async fn a_trace_holds_its_first_offset_until_taken() {
    let (b, c) = (buffer(100), cache());
    let t = trace_id(6);
    let mut d = Decoder::new();
    let p1 = request("a", vec![span(t, 2, Some(1), "s", 1, 2)]);
    let p2 = request("a", vec![span(t, 3, Some(1), "s", 1, 2)]);
    let (h1, h2) = (hold(10), hold(11));
    d.decode(&p1).unwrap();
    for g in d.groups(&p1) {
        b.ingest(&g, &h1, false, Instant::now(), &c);
    }
    d.decode(&p2).unwrap();
    for g in d.groups(&p2) {
        b.ingest(&g, &h2, false, Instant::now(), &c);
    }
    assert_eq!(
        Arc::strong_count(&h1),
        2,
        "the trace holds its first message"
    );
    assert_eq!(
        Arc::strong_count(&h2),
        1,
        "the later message is covered by the first"
    );
    drop(b.take(&crate::otlp::TraceId(t), |_, _| Decision::Drop {
        rule: "r".into(),
    }));
    assert_eq!(Arc::strong_count(&h1), 1);
}

/// Spans joining a trace already buffered in stress relief's degraded mode
/// ([`Buffer::ingest_existing`]) are shown to the rules' probes like any other: the trace is
/// decided from its probe bits, and a span they never saw would be missing from them.
#[tokio::test(start_paused = true)]
async fn spans_joining_in_degraded_mode_are_seen_by_the_rules() {
    let rules = crate::rules::RuleSet::with_options(
        crate::rules::parse_file(
            "t.yaml",
            "rules:\n  - name: inventory\n    conditions: span.service = inventory\n    outcome: keep\n  - name: rest\n    outcome: drop\n",
        )
        .unwrap(),
        crate::rules::RuleOptions::default(),
        "test".into(),
    )
    .unwrap();
    let (b, c) = (buffer(100), cache());
    let t = trace_id(21);
    let id = crate::otlp::TraceId(t);
    let mut d = Decoder::new();
    let h = hold(1);
    let first = request("gateway", vec![span(t, 1, None, "GET /", 1, 9)]);
    d.decode(&first).unwrap();
    for g in d.groups(&first) {
        b.ingest_with(&g, &h, false, Instant::now(), &c, Some(&rules));
    }
    // Degraded mode came on: the trace's next span joins it without buffering new traces.
    let later = request("inventory", vec![span(t, 2, Some(1), "lookup", 2, 5)]);
    d.decode(&later).unwrap();
    for g in d.groups(&later) {
        let got = b.ingest_existing(&g, &h, false, Instant::now(), Some(&rules));
        assert_eq!(got, Some(Ingested::Buffered));
    }
    let decided = b.with_entry(&id, |e| {
        assert!(rules.probes().current(&e.seen));
        rules.decide_buffered(id, e, Instant::now())
    });
    assert_eq!(
        decided.map(|d| d.rule().to_string()).as_deref(),
        Some("inventory")
    );
}

/// The group list grows past its first four contexts by half (4, 6, 9, 13...): a trace over
/// more services than any of those sizes keeps every service's spans in its own group, in
/// the order the services came, whatever the growth steps.
#[tokio::test(start_paused = true)]
async fn a_trace_over_many_services_keeps_each_services_spans_in_its_own_group() {
    let (b, c) = (buffer(1000), cache());
    let t = trace_id(6);
    let services: Vec<String> = (0..14).map(|i| format!("svc-{i}")).collect();
    for round in 0..2u64 {
        for (i, svc) in services.iter().enumerate() {
            let id = 100 * round + i as u64 + 2;
            let spans = vec![span(t, id, Some(1), svc, 1, 2)];
            assert_eq!(
                ingest(&b, &c, &request(svc, spans)),
                vec![Ingested::Buffered]
            );
        }
    }
    let (entry, _) = b
        .take(&crate::otlp::TraceId(t), |_, _| Decision::Drop {
            rule: "r".into(),
        })
        .expect("buffered");
    assert_eq!(entry.span_count, 28);
    let names: Vec<&[u8]> = (entry.groups.iter())
        .map(|g| g.ctx.service_name().unwrap_or_default())
        .collect();
    let want: Vec<&[u8]> = services.iter().map(|s| s.as_bytes()).collect();
    assert_eq!(names, want, "one group a service, in the order they came");
    for (i, g) in entry.groups.iter().enumerate() {
        // Each group holds its service's two spans' encoded bytes, in the order they came.
        let field = |id: u64| {
            let one = request(&services[i], vec![span(t, id, Some(1), &services[i], 1, 2)]);
            let mut d = Decoder::new();
            d.decode(&one).expect("decodes");
            let bytes: Vec<Vec<u8>> = d
                .groups(&one)
                .flat_map(|g| g.spans().map(|s| s.field.to_vec()).collect::<Vec<_>>())
                .collect();
            bytes.concat()
        };
        let want = [field(i as u64 + 2), field(100 + i as u64 + 2)].concat();
        assert_eq!(g.spans, want, "group {i}");
    }
}

/// A trace whose spans come in several partitions (an SDK's batches, unkeyed) holds an
/// offset in each, kept beside the entry once there is more than one: the budget counts
/// those lists too, and gives every byte back when the trace is taken.
#[tokio::test(start_paused = true)]
async fn holds_in_several_partitions_are_counted_against_the_budget() {
    let c = cache();
    // The same two spans: in one partition, then in two, three and six.
    let mut counted = Vec::new();
    for partitions in [1, 2, 3, 6] {
        let b = buffer(100);
        let t = trace_id(7);
        let mut d = Decoder::new();
        let mut held = Vec::new();
        for i in 0..6u64 {
            let p = request("a", vec![span(t, i + 2, Some(1), "s", 1, 2)]);
            let h = Arc::new(OffsetHold {
                partition: (i % partitions) as u32,
                offset: i as i64,
            });
            d.decode(&p).unwrap();
            for g in d.groups(&p) {
                b.ingest(&g, &h, false, Instant::now(), &c);
            }
            held.push(h);
        }
        let strong: usize = held.iter().map(|h| Arc::strong_count(h) - 1).sum();
        assert_eq!(strong as u64, partitions, "one hold a partition");
        counted.push(b.bytes());
        drop(b.take(&crate::otlp::TraceId(t), |_, _| Decision::Drop {
            rule: "r".into(),
        }));
        assert_eq!(
            b.bytes(),
            0,
            "{partitions} partitions: every byte given back"
        );
    }
    assert!(
        counted[1] > counted[0],
        "a second partition is counted: {counted:?}"
    );
    assert_eq!(
        counted[2], counted[1],
        "up to four share one allocation: {counted:?}"
    );
    assert!(counted[3] > counted[2], "past four, more: {counted:?}");
}
