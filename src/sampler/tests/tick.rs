//! The decider's tick: slower while nothing is buffered, never so slow that a trace arriving
//! meanwhile is decided later than at the busy tick.

use super::*;
use crate::pipeline::{decider, DECIDE_TICK, IDLE_TICK};

/// How long after its arrival a trace (one span, no root) reaching an idle decider is decided,
/// with `decision_wait` the shortest completion wait.
async fn decided_after(decision_wait: Duration) -> Duration {
    let completion = Completion {
        decision_wait,
        root_grace: decision_wait,
        ..Completion::default()
    };
    let Fixture {
        sampler,
        mut decoder,
        ..
    } = Fixture::with(RULES, completion, Budget::default());
    let sampler = Arc::new(sampler);
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(decider(sampler.clone(), stop_rx));
    // The decider has looked at the empty buffer and sleeps its idle tick.
    tokio::time::sleep(Duration::from_millis(3)).await;
    let (_, payment, _) = trace(1, false);
    let arrived = Instant::now();
    let hold = MessageHold::new(0, 0);
    sampler
        .ingest_with_heads(&mut decoder, &payment, &hold, false, arrived, None)
        .expect("decodes");
    assert_eq!(sampler.buffered_traces(), 1);
    // Paused time moves on only while the decider's blocking work is not running.
    while sampler.buffered_traces() > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let after = Instant::now() - arrived;
    let _ = stop.send(true);
    running.await.expect("decider");
    after
}

#[tokio::test(start_paused = true)]
async fn a_trace_reaching_an_idle_decider_is_decided_when_due_at_the_busy_tick() {
    // The deadline index's 10 ms buckets, and the busy tick after it.
    let slack = Duration::from_millis(10) + DECIDE_TICK;
    for wait in [
        Duration::from_millis(30),
        Duration::from_millis(60),
        IDLE_TICK * 3,
    ] {
        let after = decided_after(wait).await;
        assert!(
            after >= wait && after <= wait + slack,
            "a trace due {wait:?} after it arrived was decided after {after:?}"
        );
    }
}
