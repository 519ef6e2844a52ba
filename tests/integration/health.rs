//! Consumer lag and readiness on a real broker.

use crate::fixture as common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use tailsift::lag::{measure, LagSettings, LagTracker};
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
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
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
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", "127.0.0.1:1")
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
    let (input, output) = (unique("in"), unique("out"));
    create_topic(&output, 1).await;
    let mut config = config(&input, &output, Path::new("rules"));
    config.monitoring.lag_interval = Duration::from_millis(200);
    // The input topic does not exist yet: the group has nothing to assign.
    config
        .kafka
        .consumer_properties
        .insert("topic.metadata.refresh.interval.ms".into(), "500".into());
    let running = tailsift::pipeline::start(&config).await.expect("start");
    let addr = running.http_addr;
    assert_eq!(http_get(addr, "/healthz").expect("healthz").0, 200);
    for _ in 0..5 {
        let (status, body) = http_get(addr, "/readyz").expect("readyz");
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("no partitions assigned"), "{body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    create_topic(&input, 2).await;
    send_spans(&input, 0..20, 10);
    assert!(
        eventually(Duration::from_secs(30), || {
            http_get(addr, "/readyz").is_ok_and(|(s, b)| s == 200 && b.contains("lag 0"))
        })
        .await,
        "ready once assigned and caught up: {:?}",
        http_get(addr, "/readyz")
    );
    // Every message read, and both partitions' lag exposed at 0 (the first "lag 0" may
    // come before the messages arrived).
    let lag_of = |body: &str, p: i32| {
        metric(
            body,
            "tailsift_consumer_lag",
            &format!("topic=\"{input}\",partition=\"{p}\""),
        )
        .or_else(|| {
            metric(
                body,
                "tailsift_consumer_lag",
                &format!("partition=\"{p}\",topic=\"{input}\""),
            )
        })
    };
    let scrape = || http_get(addr, "/metrics").map(|r| r.1).unwrap_or_default();
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
            .filter(|l| l.contains(&input))
            .collect::<Vec<_>>()
    );
    assert_eq!(running.health.lag.total(), Some(0));
    running.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_reports_a_consumer_stuck_behind_its_lag() {
    let (input, output) = (unique("in"), unique("out"));
    create_topic(&input, 1).await;
    create_topic(&output, 1).await;
    // Every trace is kept, and the output's broker is unreachable: once the producer's queue
    // is full, no decision can hand its trace over, the buffer stays over its high watermark,
    // fetching stays paused while more messages arrive, so lag grows and nothing is consumed.
    // (Undeliverable traces alone do not stall: while paused, the oldest are decided to make
    // room, and that needs the producer.)
    let rules = rules_dir(&[("all.yaml", "rules:\n  - name: all\n    outcome: keep\n")]);
    let mut config = config(&input, &output, rules.path());
    let unreachable = common::instance::free_addr().to_string();
    config
        .kafka
        .producer_properties
        .insert("bootstrap.servers".into(), unreachable);
    config.completion.decision_wait = Duration::from_secs(120);
    config.completion.max_trace_age = Duration::from_secs(120);
    config.buffer.max_bytes = Some(tailsift::config::ByteSize(1 << 20));
    config.monitoring.lag_interval = Duration::from_millis(200);
    config.monitoring.stall_timeout = Duration::from_secs(2);
    let running = tailsift::pipeline::start(&config).await.expect("start");
    let addr = running.http_addr;
    assert!(
        eventually(Duration::from_secs(20), || running
            .health
            .assigned
            .load(Ordering::Relaxed)
            == 1)
        .await
    );
    send_spans(&input, 0..160, 40_000); // 6.4 MB of spans
    assert!(
        eventually(Duration::from_secs(20), || running
            .health
            .paused
            .load(Ordering::Relaxed))
        .await,
        "fetching pauses over budget"
    );
    send_spans(&input, 40..60, 10);
    assert!(
        eventually(Duration::from_secs(20), || {
            http_get(addr, "/readyz").is_ok_and(|(s, b)| s == 503 && b.contains("stuck"))
        })
        .await,
        "stuck: {:?}",
        http_get(addr, "/readyz")
    );
    let (_, body) = http_get(addr, "/readyz").expect("readyz");
    assert!(body.contains("fetching paused"), "{body}");
    assert!(running.health.lag.total().is_some_and(|l| l >= 20));
    // Shutdown keeps its bound with the output unreachable: the deciders waiting for room
    // give up, and what they held stays uncommitted.
    let started = std::time::Instant::now();
    running.shutdown().await.expect("shutdown");
    let bound = config.shutdown_timeout + Duration::from_secs(5);
    assert!(
        started.elapsed() <= bound,
        "shutdown took {:?}, over its bound {bound:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn red_metrics_can_be_turned_off() {
    let (input, output) = (unique("in"), unique("out"));
    create_topic(&input, 1).await;
    create_topic(&output, 1).await;
    let mut config = config(&input, &output, Path::new("rules"));
    config.monitoring.red_metrics = false;
    let running = tailsift::pipeline::start(&config).await.expect("start");
    let service = unique("red-off");
    let p = producer();
    let t = trace_id(4242);
    send(
        &p,
        &input,
        &TraceId(t).to_hex(),
        &request(&service, vec![span(t, 1, None, "GET /", 1, 2)]),
    );
    flush(&p);
    assert!(
        eventually(Duration::from_secs(20), || running.sampler.stats.kept()
            + running.sampler.stats.dropped()
            == 1)
        .await,
        "the trace is decided"
    );
    tokio::time::sleep(Duration::from_millis(500)).await; // past the next flush tick
    let (_, body) = http_get(running.http_addr, "/metrics").expect("metrics");
    assert!(
        !body.contains(&format!("service=\"{service}\"")),
        "no RED series for {service}"
    );
    running.shutdown().await.expect("shutdown");
}

/// A nisshi broker of this test's own (tests that stop a broker never touch the shared one).
struct OwnBroker {
    child: std::process::Child,
    addr: String,
}

impl OwnBroker {
    fn start() -> Option<Self> {
        let bin = std::env::var("TAILSIFT_NISSHI")
            .unwrap_or_else(|_| "/opt/tailsift-ci/nisshi-0.7.0/bin/nisshi".into());
        if !std::path::Path::new(&bin).exists() {
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        let log = tempfile::tempfile().expect("log file");
        let child = std::process::Command::new(bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args([
                "--storage-engine",
                "memory://nisshi/",
                "--group-initial-rebalance-delay",
                "100ms",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nisshi");
        let addr = format!("127.0.0.1:{port}");
        for _ in 0..100 {
            if std::net::TcpStream::connect(&addr).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(OwnBroker { child, addr })
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_reports_unreachable_brokers() {
    let Some(mut broker) = OwnBroker::start() else {
        panic!("set TAILSIFT_NISSHI to the nisshi binary (scripts/test.sh does)");
    };
    let (input, output) = (unique("in"), unique("out"));
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        ClientConfig::new()
            .set("bootstrap.servers", &broker.addr)
            .create()
            .expect("admin");
    for t in [&input, &output] {
        let topic = rdkafka::admin::NewTopic::new(t, 1, rdkafka::admin::TopicReplication::Fixed(1));
        admin
            .create_topics(&[topic], &rdkafka::admin::AdminOptions::new())
            .await
            .expect("create topics");
    }
    let mut config = config(&input, &output, Path::new("rules"));
    config.kafka.brokers = broker.addr.clone();
    config.monitoring.lag_interval = Duration::from_millis(200);
    config.shutdown_timeout = Duration::from_secs(2);
    let running = tailsift::pipeline::start(&config).await.expect("start");
    let addr = running.http_addr;
    assert!(
        eventually(Duration::from_secs(30), || {
            http_get(addr, "/readyz").is_ok_and(|(s, _)| s == 200)
        })
        .await,
        "ready: {:?}",
        http_get(addr, "/readyz")
    );

    let _ = broker.child.kill();
    let _ = broker.child.wait();
    assert!(
        eventually(Duration::from_secs(20), || {
            http_get(addr, "/readyz")
                .is_ok_and(|(s, b)| s == 503 && b.contains("brokers unreachable"))
        })
        .await,
        "not ready once the broker is gone: {:?}",
        http_get(addr, "/readyz")
    );
    assert_eq!(
        http_get(addr, "/healthz").expect("healthz").0,
        200,
        "still alive"
    );
    let _ = tokio::time::timeout(Duration::from_secs(10), running.shutdown()).await;
}
