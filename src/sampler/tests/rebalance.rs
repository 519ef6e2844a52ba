//! What a rebalance asks of the sampler: the new owner's replay joins a straddling trace's
//! head, read back below the commit offset, to its tail; the old owner hands back the
//! undecided traces of its revoked partitions without deciding them.

use super::*;
use crate::decision::Trigger;
use crate::offsets::DecidedRange;

#[tokio::test(start_paused = true)]
async fn a_replayed_head_joins_its_tail_and_the_trace_is_decided_on_its_whole_view() {
    let mut f = fixture();
    // Trace 1's error span is in its head (offset 3), below the commit offset the replay
    // starts from; alone, its replayed root would be dropped by `rest`.
    let (id, head, tail) = trace(1, true);
    let mut heads = Heads::new(12);
    heads.add(3, &head).expect("decodes");
    let s = f.ingest_at(0, 10, &tail, true, Some(&mut heads));
    assert_eq!(s, Spans::default());
    assert_eq!(f.sampler.counts().heads_merged.get(), 1);
    assert!(heads.is_empty(), "the head is taken once");
    assert_eq!(f.sampler.buffered_traces(), 1);

    assert_eq!(f.sampler.decide_due(past_root_grace()), 1);
    let sent = f.output.take();
    assert_eq!(sent.len(), 1);
    let (got, decision, tickets) = &sent[0];
    assert_eq!(
        (*got, decision.rule()),
        (id, "errors"),
        "decided with its head"
    );
    let spans: u32 = tickets.iter().map(|t| t.spans).sum();
    let replayed: u32 = tickets.iter().map(|t| t.replayed_spans).sum();
    assert_eq!((spans, replayed), (2, 2), "head and tail, both replayed");
    let mut ranges = Vec::new();
    f.sampler.take_decided_ranges(&mut ranges);
    assert_eq!(
        ranges,
        vec![DecidedRange {
            partition: 0,
            first: 3,
            last: 10
        }],
        "the trace's range starts at its head"
    );
}

#[tokio::test(start_paused = true)]
async fn a_head_of_a_trace_decided_since_is_not_joined_its_replayed_spans_follow() {
    let mut f = fixture();
    let (id, head, tail) = trace(2, true);
    f.sampler.decision_cache().insert(
        id,
        Decision::Drop {
            rule: "rest".into(),
        },
    );
    let mut heads = Heads::new(12);
    heads.add(4, &head).expect("decodes");
    let s = f.ingest_at(0, 10, &tail, true, Some(&mut heads));
    assert_eq!(
        s,
        Spans {
            late_dropped: 1,
            ..Spans::default()
        }
    );
    assert_eq!(f.sampler.counts().heads_merged.get(), 0);
    assert_eq!(f.sampler.buffered_traces(), 0);
    assert!(f.output.take().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_revoked_partition_releases_its_undecided_traces_and_decides_those_it_shares() {
    let mut f = fixture();
    // Trace 1 only on partition 0; trace 2 on partitions 0 and 1 (failing); trace 3 only on 1.
    let (only_revoked, pay1, _) = trace(1, false);
    let (shared, pay2, root2) = trace(2, true);
    let (stays, pay3, _) = trace(3, false);
    f.ingest_at(0, 5, &pay1, false, None);
    f.ingest_at(0, 6, &pay2, false, None);
    f.ingest_at(1, 7, &root2, false, None);
    f.ingest_at(1, 8, &pay3, false, None);
    assert_eq!(f.sampler.buffered_traces(), 3);
    assert_eq!(
        f.safe_offset(),
        Some(5),
        "what the revoke commits: nothing of the undecided traces"
    );

    let (released, decided) = f.sampler.partitions_revoked(&[0], Instant::now());
    assert_eq!((released, decided), (1, 1));
    assert_eq!(f.sampler.counts().released.get(), 1);
    assert_eq!(f.sampler.counts().decided_by(Trigger::Rebalance), 1);
    // The shared trace is decided now, so that the spans on partition 1 are not lost.
    assert_eq!(
        f.output.take_delivered(),
        vec![(shared, "errors".to_string(), 2)]
    );
    // The released one is neither decided nor logged: the next owner replays and decides it.
    assert!(f.sampler.decision_cache().get(&only_revoked).is_none());
    let logged = f.log.take();
    assert!(logged.iter().all(|e| e.trace_id != only_revoked));
    assert_eq!(
        f.sampler.buffered_traces(),
        1,
        "partition 1's own trace stays"
    );
    assert!(f
        .sampler
        .decide(&stays, Trigger::Idle, Instant::now())
        .is_some());
}
