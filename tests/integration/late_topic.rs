//! An instance started before its input topic exists (a fresh deployment usually starts before
//! the Collectors create the topic): `/readyz` names the topic it waits for, and the topic is
//! picked up within seconds of its creation, not at librdkafka's 5-minute metadata refresh.
//! On a real broker, with tailsift's own librdkafka settings (no override).

use std::time::{Duration, Instant};

use crate::fixture::*;
use tailsift::otlp::build::*;
use tailsift::otlp::TraceId;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_created_after_the_start_is_named_by_readyz_then_picked_up_within_seconds() {
    let setup = example_pipeline()
        .partitions(2)
        .without_input_topic()
        .config(|c| c.monitoring.lag_interval = Duration::from_millis(300))
        .create()
        .await;
    let pipe = setup.start().await;
    let input = &pipe.input;
    let waiting = format!("waiting for input topic `{input}` to exist");
    assert!(
        eventually(Duration::from_secs(10), || {
            let (s, b) = pipe.readyz();
            s == 503 && b.contains(&waiting)
        })
        .await,
        "readyz names the missing topic: {:?}",
        pipe.readyz()
    );
    // Long enough that the consumer's first look at the topic has failed.
    tokio::time::sleep(Duration::from_secs(2)).await;

    setup.create_input().await;
    let created = Instant::now();
    let p = producer();
    let t = trace_id(77);
    let s = span(t, 1, None, "GET /late", 1_000, 2_000);
    send(&p, input, &TraceId(t).to_hex(), &request("svc", vec![s]));
    flush(&p);
    wait_for(
        secs(30),
        "the trace sent to the new topic is decided",
        || pipe.decided() == 1,
    )
    .await;
    let took = created.elapsed();
    println!("late topic: assigned and decided {took:?} after its creation");
    assert!(
        took < Duration::from_secs(20),
        "picked up {took:?} after creation"
    );
    pipe.wait_ready(secs(10)).await; // ready once assigned
    pipe.shutdown().await;
}
