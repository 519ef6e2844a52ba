//! Consumer lag and readiness on a real broker.

use std::time::Duration;

use crate::fixture::broker::Broker;
use crate::fixture::*;
use rdkafka::consumer::BaseConsumer;
use tailsift::health::LagTracker;
use tailsift::kafka::lag::{measure, LagSettings};
use tailsift::otlp::build::*;
use tailsift::otlp::TraceId;

/// Sends one trace per message, each its own record batch: nisshi answers the end-offset query
/// with the start of the last batch, so one record per batch keeps its answer exact.
fn send_spans(topic: &str, traces: std::ops::Range<u64>, attr_bytes: usize) {
    let p = producer();
    for n in traces {
        let t = trace_id(n);
        let s = with_attrs(
            span(t, 2, Some(1), "work", 1, 2),
            vec![attr_str("blob", &"x".repeat(attr_bytes))],
        );
        send(&p, topic, &TraceId(t).to_hex(), &request("svc", vec![s]));
        flush(&p);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_is_the_distance_from_the_read_position_to_the_partition_end() {
    let topic = unique("lag");
    create_topic(&topic, 2).await;
    send_spans(&topic, 0..30, 10);
    let client: BaseConsumer = client_config(&brokers(), &[])
        .set("group.id", unique("group"))
        .create()
        .expect("client");
    let tracker = LagTracker::default();
    tracker.assigned(&topic, 0);
    tracker.assigned(&topic, 1);
    let settings = LagSettings {
        interval: Duration::from_secs(1),
        reset_to_latest: false,
    };
    measure(&client, &tracker, &settings);
    assert_eq!(tracker.broker_error(), None);
    // Nothing read and nothing committed: the whole partition is lag (auto.offset.reset =
    // earliest), so the total is every message sent.
    assert_eq!(tracker.total(), Some(30));
    let per = tracker.per_partition();
    let p0 = per.iter().find(|p| p.1 == 0).expect("partition 0").2;
    tracker.positions([(topic.as_str(), 0, p0 - 4)]);
    measure(&client, &tracker, &settings);
    assert_eq!(tracker.total(), Some(30 - (p0 - 4)));

    let latest = LagSettings {
        interval: Duration::from_secs(1),
        reset_to_latest: true,
    };
    let fresh = LagTracker::default();
    fresh.assigned(&topic, 0);
    fresh.assigned(&topic, 1);
    measure(&client, &fresh, &latest);
    assert_eq!(
        fresh.total(),
        Some(0),
        "auto.offset.reset = latest starts at the end"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_is_reported() {
    let client: BaseConsumer = client_config("127.0.0.1:1", &[])
        .set("group.id", unique("group"))
        .create()
        .expect("client");
    let tracker = LagTracker::default();
    tracker.assigned("nowhere", 0);
    let settings = LagSettings {
        interval: Duration::from_secs(1),
        reset_to_latest: false,
    };
    measure(&client, &tracker, &settings);
    let err = tracker.broker_error().expect("an error");
    assert!(err.contains("nowhere/0"), "{err}");
    assert_eq!(tracker.total(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_503_before_assignment_and_200_after_with_lag_measured() {
    // The input topic does not exist yet: the group has nothing to assign.
    let setup = example_pipeline()
        .partitions(2)
        .without_input_topic()
        .config(|c| {
            c.monitoring.lag_interval = Duration::from_millis(200);
            c.kafka
                .consumer_properties
                .insert("topic.metadata.refresh.interval.ms".into(), "500".into());
        })
        .create()
        .await;
    let pipe = setup.start().await;
    let (addr, input) = (pipe.addr(), &pipe.input);
    assert_eq!(http_get(addr, "/healthz").expect("healthz").0, 200);
    for _ in 0..5 {
        let (status, body) = http_get(addr, "/readyz").expect("readyz");
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("no partitions assigned"), "{body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    setup.create_input().await;
    send_spans(input, 0..20, 10);
    assert!(
        eventually(Duration::from_secs(30), || {
            let (s, b) = pipe.readyz();
            s == 200 && b.contains("lag 0")
        })
        .await,
        "ready once assigned and caught up: {:?}",
        pipe.readyz()
    );
    // Every message read, and both partitions' lag exposed at 0 (the first "lag 0" may
    // come before the messages arrived).
    let lag_of = |body: &str, p: i32| {
        metric(
            body,
            "tailsift_consumer_lag",
            &format!("topic=\"{input}\",partition=\"{p}\""),
        )
    };
    let scrape = || pipe.scrape();
    assert!(
        eventually(Duration::from_secs(20), || {
            let b = scrape();
            metric(
                &b,
                "tailsift_spans_received_total",
                &format!("topic=\"{input}\""),
            ) == Some(20.0)
                && lag_of(&b, 0) == Some(0.0)
                && lag_of(&b, 1) == Some(0.0)
        })
        .await,
        "lag of both partitions exposed at 0: {:?}",
        scrape()
            .lines()
            .filter(|l| l.contains(input.as_str()))
            .collect::<Vec<_>>()
    );
    assert_eq!(pipe.lag(), Some(0));
    pipe.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_reports_a_consumer_stuck_behind_its_lag() {
    // Every trace is kept, and the output's broker is unreachable: once the producer's queue
    // is full, no decision can hand its trace over, the buffer stays over its high watermark,
    // fetching stays paused while more messages arrive, so lag grows and nothing is consumed.
    // (Undeliverable traces alone do not stall: while paused, the oldest are decided to make
    // room, and that needs the producer.)
    let unreachable = free_addr().to_string();
    let pipe = pipeline(KEEP_ALL)
        .config(move |c| {
            c.kafka
                .producer_properties
                .insert("bootstrap.servers".into(), unreachable);
            c.completion.decision_wait = Duration::from_secs(120);
            c.completion.max_trace_age = Duration::from_secs(120);
            c.buffer.max_bytes = Some(tailsift::config::ByteSize(1 << 20));
            c.monitoring.lag_interval = Duration::from_millis(200);
            c.monitoring.stall_timeout = Duration::from_secs(2);
        })
        .start()
        .await;
    pipe.wait_assigned(1, secs(20)).await;
    send_spans(&pipe.input, 0..160, 40_000); // 6.4 MB of spans
    wait_for(secs(20), "fetching pauses over budget", || pipe.paused()).await;
    send_spans(&pipe.input, 40..60, 10);
    assert!(
        eventually(Duration::from_secs(20), || {
            let (s, b) = pipe.readyz();
            s == 503 && b.contains("stuck")
        })
        .await,
        "stuck: {:?}",
        pipe.readyz()
    );
    let (_, body) = pipe.readyz();
    assert!(body.contains("fetching paused"), "{body}");
    assert!(pipe.lag().is_some_and(|l| l >= 20));
    // Shutdown keeps its bound with the output unreachable: the deciders waiting for room
    // give up, and what they held stays uncommitted.
    let bound = pipe.config.shutdown_timeout + Duration::from_secs(5);
    let started = std::time::Instant::now();
    pipe.shutdown().await;
    assert!(
        started.elapsed() <= bound,
        "shutdown took {:?}, over its bound {bound:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn red_metrics_can_be_turned_off() {
    let pipe = example_pipeline()
        .config(|c| c.monitoring.red_metrics = false)
        .start()
        .await;
    let service = unique("red-off");
    let p = producer();
    let t = trace_id(4242);
    send(
        &p,
        &pipe.input,
        &TraceId(t).to_hex(),
        &request(&service, vec![span(t, 1, None, "GET /", 1, 2)]),
    );
    flush(&p);
    wait_for(secs(20), "the trace is decided", || pipe.decided() == 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // past the next flush tick
    let (_, body) = http_get(pipe.addr(), "/metrics").expect("metrics");
    assert!(
        !body.contains(&format!("service=\"{service}\"")),
        "no RED series for {service}"
    );
    pipe.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_reports_unreachable_brokers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path());
    let (input, output) = (unique("in"), unique("out"));
    for t in [&input, &output] {
        create_topic_on(&broker.addr, t, 1).await;
    }
    let mut config = pipeline::config(&input, &output, std::path::Path::new("rules"));
    config.kafka.brokers = broker.addr.clone();
    config.monitoring.lag_interval = Duration::from_millis(200);
    config.shutdown_timeout = Duration::from_secs(2);
    let running = tailsift::pipeline::start(&config).await.expect("start");
    let addr = running.http_addr;
    let readyz = || http_get(addr, "/readyz").unwrap_or_default();
    assert!(
        eventually(Duration::from_secs(30), || readyz().0 == 200).await,
        "ready: {:?}",
        readyz()
    );

    drop(broker);
    assert!(
        eventually(Duration::from_secs(20), || {
            let (s, b) = readyz();
            s == 503 && b.contains("brokers unreachable")
        })
        .await,
        "not ready once the broker is gone: {:?}",
        readyz()
    );
    assert_eq!(
        http_get(addr, "/healthz").expect("healthz").0,
        200,
        "still alive"
    );
    let _ = tokio::time::timeout(Duration::from_secs(10), running.shutdown()).await;
}
