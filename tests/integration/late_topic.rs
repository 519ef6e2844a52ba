//! An instance started before its input topic exists (a fresh deployment usually starts before
//! the Collectors create the topic): `/readyz` names the topic it waits for, and the topic is
//! picked up within seconds of its creation, not at librdkafka's 5-minute metadata refresh.
//! On a real broker, with tailsift's own librdkafka settings (no override).

use crate::fixture as common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use tailsift::otlp::build::*;
use tailsift::otlp::TraceId;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_created_after_the_start_is_named_by_readyz_then_picked_up_within_seconds() {
    let (input, output) = (unique("late-in"), unique("late-out"));
    create_topic(&output, 1).await;
    let mut config = config(&input, &output, Path::new("rules"));
    config.monitoring.lag_interval = Duration::from_millis(300);
    let running = tailsift::pipeline::start(&config).await.expect("start");
    let addr = running.http_addr;
    let waiting = format!("waiting for input topic `{input}` to exist");
    assert!(
        eventually(Duration::from_secs(10), || {
            http_get(addr, "/readyz").is_ok_and(|(s, b)| s == 503 && b.contains(&waiting))
        })
        .await,
        "readyz names the missing topic: {:?}",
        http_get(addr, "/readyz")
    );
    // Long enough that the consumer's first look at the topic has failed.
    tokio::time::sleep(Duration::from_secs(2)).await;

    create_topic(&input, 2).await;
    let created = Instant::now();
    let p = producer();
    let t = trace_id(77);
    let s = span(t, 1, None, "GET /late", 1_000, 2_000);
    send(&p, &input, &TraceId(t).to_hex(), &request("svc", vec![s]));
    flush(&p);
    let stats = &running.sampler.stats;
    assert!(
        eventually(Duration::from_secs(30), || stats.kept() + stats.dropped()
            == 1)
        .await,
        "the trace sent to the new topic is decided"
    );
    let took = created.elapsed();
    println!("late topic: assigned and decided {took:?} after its creation");
    assert!(
        took < Duration::from_secs(20),
        "picked up {took:?} after creation"
    );
    assert!(
        eventually(Duration::from_secs(10), || {
            http_get(addr, "/readyz").is_ok_and(|(s, _)| s == 200)
        })
        .await,
        "ready once assigned: {:?}",
        http_get(addr, "/readyz")
    );
    running.shutdown().await.expect("shutdown");
}
