//! What the sampler records in the decision log and when, and how spans of traces it does not
//! buffer follow logged decisions (a replay after a crash or rebalance).

use super::*;
use crate::decision::Logged;
use crate::stress;

#[tokio::test(start_paused = true)]
async fn a_dropped_trace_is_logged_at_once_and_holds_its_offsets_until_the_log_has_it() {
    let mut f = fixture();
    let (id, pay, root) = trace(1, false);
    f.ingest(5, &pay, false);
    f.ingest(6, &root, false);
    assert_eq!(f.safe_offset(), Some(5), "undecided: held");
    assert_eq!(f.sampler.decide_due(past_root_grace()), 1);
    assert!(f.output.take().is_empty(), "dropped: nothing forwarded");
    let logged = f.log.take();
    assert_eq!(logged.len(), 1);
    let e = &logged[0];
    assert_eq!((e.trace_id, e.decision.rule()), (id, "rest"));
    assert!(!e.decision.is_keep());
    assert_eq!(e.partitions.as_slice(), &[(0, None)], "nothing forwarded");
    assert_eq!(
        f.safe_offset(),
        Some(5),
        "the unlogged decision keeps its trace's offset from being committed"
    );
    drop(logged); // the log acknowledged it
    assert_eq!(f.safe_offset(), Some(7));
}

#[tokio::test(start_paused = true)]
async fn a_kept_trace_is_logged_once_its_output_is_acknowledged_with_how_far_it_reaches() {
    let mut f = fixture();
    let (id, pay, root) = trace(2, true);
    f.ingest(3, &pay, false);
    f.ingest(4, &trace(3, false).1, false); // another trace between its messages
    f.ingest(7, &root, false);
    f.sampler.decide_due(past_root_grace());
    let sent = f.output.take();
    let kept: Vec<_> = sent.iter().filter(|(t, _, _)| *t == id).collect();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].1.rule(), "errors");
    assert!(
        f.log.take().iter().all(|e| e.trace_id != id),
        "not logged before the output has it"
    );
    for (_, _, tickets) in sent {
        for t in tickets {
            t.delivered();
        }
    }
    let logged = f.log.take();
    let e = logged.iter().find(|e| e.trace_id == id).expect("logged");
    assert_eq!(e.decision.rule(), "errors");
    assert_eq!(
        e.partitions.as_slice(),
        &[(0, Some(7))],
        "its spans reach offset 7"
    );
    assert_eq!(
        f.safe_offset(),
        Some(3),
        "held until the log has the decision"
    );
    drop(logged);
    assert_eq!(f.safe_offset(), Some(4), "the other trace holds 4");
}

#[tokio::test(start_paused = true)]
async fn replayed_spans_follow_a_logged_decision_and_are_not_forwarded_twice() {
    let mut f = fixture();
    let (kept, kept_pay, kept_root) = trace(4, true);
    let (dropped, dropped_pay, _) = trace(5, false);
    let keep = Decision::Keep {
        rule: "errors".into(),
        sample_rate: 1,
    };
    let drop_ = Decision::Drop {
        rule: "rest".into(),
    };
    let logged = |through| Logged {
        partition: 0,
        through,
    };
    let now = crate::decision::unix_ms();
    let cache = f.sampler.decision_cache();
    cache.insert_logged(kept, keep.clone(), now - 1000, logged(Some(10)));
    cache.insert_logged(dropped, drop_.clone(), now - 1000, logged(None));

    // Offset 8 is at or below `through`: already in the output, skipped.
    let s = f.ingest(8, &kept_pay, true);
    assert_eq!((s.skipped_forwarded, s.logged_kept, s.late_kept), (1, 1, 0));
    assert!(f.output.take().is_empty());
    // Offset 12 was never forwarded: forwarded now, under the logged decision.
    let s = f.ingest(12, &kept_root, true);
    assert_eq!((s.skipped_forwarded, s.logged_kept, s.late_kept), (0, 1, 1));
    let sent = f.output.take();
    assert_eq!(sent.len(), 1);
    assert_eq!((sent[0].0, &sent[0].1), (kept, &keep));
    // A dropped trace's spans stay dropped.
    let s = f.ingest(13, &dropped_pay, true);
    assert_eq!((s.logged_dropped, s.late_dropped), (1, 1));
    assert!(f.output.take().is_empty());
    assert_eq!(f.sampler.buffered_traces(), 0, "nothing decided anew");

    // The forward at 12, once acknowledged, is logged with the new reach.
    for t in sent.into_iter().flat_map(|s| s.2) {
        t.delivered();
    }
    let e = f.log.take();
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].decision, keep);
    assert_eq!(e[0].partitions.as_slice(), &[(0, Some(12))]);
    assert!(
        e[0].decided_at <= now - 1000,
        "the decision keeps its own time"
    );
}

#[tokio::test(start_paused = true)]
async fn a_logged_reach_applies_only_to_the_partition_it_was_read_for() {
    let mut f = fixture();
    let (id, pay, _) = trace(6, true);
    let keep = Decision::Keep {
        rule: "errors".into(),
        sample_rate: 1,
    };
    // Read back for another assignment (ingest index 9).
    f.sampler.decision_cache().insert_logged(
        id,
        keep,
        crate::decision::unix_ms(),
        Logged {
            partition: 9,
            through: Some(100),
        },
    );
    let s = f.ingest(8, &pay, true);
    assert_eq!(
        (s.skipped_forwarded, s.late_kept),
        (0, 1),
        "forwarded: a duplicate at worst, never a loss"
    );
}

#[tokio::test(start_paused = true)]
async fn degraded_mode_logs_its_decisions_and_keeps_a_trace_once_its_error_shows() {
    let mut f = fixture();
    f.sampler.set_degraded(true, u32::MAX, Instant::now()); // keeps (almost) nothing by id
    let (id, pay_err, root) = trace(7, true);
    let s = f.ingest(1, &root, false);
    assert_eq!(s.stress_dropped, 1);
    let logged = f.log.take();
    assert_eq!(logged.len(), 1, "a decision by trace id is logged too");
    assert_eq!(logged[0].decision.rule(), stress::STRESS_RULE);
    drop(logged);
    let s = f.ingest(2, &pay_err, false);
    assert_eq!(s.stress_kept, 1, "its error span is kept");
    let sent = f.output.take();
    assert_eq!(sent[0].1.rule(), stress::STRESS_ERRORS_RULE);
    for t in sent.into_iter().flat_map(|s| s.2) {
        t.delivered();
    }
    let logged = f.log.take();
    assert_eq!(logged[0].trace_id, id);
    assert_eq!(logged[0].decision.rule(), stress::STRESS_ERRORS_RULE);
    assert_eq!(logged[0].partitions.as_slice(), &[(0, Some(2))]);
    // Its later spans follow, without a new decision.
    let s = f.ingest(3, &root, false);
    assert_eq!(s.stress_kept, 1);
    assert_eq!(f.output.take()[0].1.rule(), stress::STRESS_ERRORS_RULE);
}
