//! A broker outage, with the real binary and a broker of the test's own (never the shared
//! one): the broker is frozen with SIGSTOP for 30 s while traffic is pending, then resumed.
//! tailsift keeps running, reports itself unready while the broker does not answer, becomes
//! ready again, and every trace the rules keep reaches the output whole.

use std::time::{Duration, Instant};

use crate::fixture::broker::Broker;
use crate::fixture::instance::{launch, RunConfig};
use crate::fixture::traffic::{self, RULES};
use crate::fixture::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_broker_makes_tailsift_unready_then_it_recovers_and_loses_nothing() {
    let _turn = several_processes().await;
    tokio::time::timeout(Duration::from_secs(240), outage())
        .await
        .expect("the outage test finishes within 4 minutes");
}

async fn outage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path());
    let (input, output) = (unique("in"), unique("out"));
    create_topic_on(&broker.addr, &input, 4).await;
    create_topic_on(&broker.addr, &output, 1).await;
    let rules = rules_dir(&[("rules.yaml", RULES)]);
    let config = RunConfig::quick(&input, &output, rules.path())
        .set("kafka.brokers", broker.addr.as_str())
        .set("monitoring.lag_interval", "500ms");
    let mut inst = launch(dir.path(), "tailsift", &config).start();
    inst.wait_ready(Duration::from_secs(60)).await;
    let p = producer_on(&broker.addr);
    traffic::send_interleaved(&p, &input, 3, 0..300, Duration::from_millis(2));

    // Freeze: the next traces wait in the test producer's queue; tailsift's own produces and
    // commits in flight wait in librdkafka's.
    broker.signal(libc::SIGSTOP);
    let frozen = Instant::now();
    let sender = {
        let (input, addr) = (input.clone(), broker.addr.clone());
        std::thread::spawn(move || {
            let p = producer_on(&addr);
            traffic::send_interleaved(&p, &input, 3, 300..600, Duration::from_millis(2));
        })
    };
    let addr = inst.addr;
    let unready = eventually(Duration::from_secs(25), || {
        http_get(addr, "/readyz").is_ok_and(|(s, _)| s == 503)
    })
    .await;
    let (_, why) = http_get(addr, "/readyz").expect("readyz");
    eprintln!(
        "outage: unready after {:?}: {}",
        frozen.elapsed(),
        why.trim()
    );
    assert!(
        unready,
        "tailsift reports itself unready while the broker is frozen"
    );
    let remaining = Duration::from_secs(30).saturating_sub(frozen.elapsed());
    tokio::time::sleep(remaining).await;
    assert!(
        inst.child.try_wait().expect("wait").is_none(),
        "tailsift keeps running through the outage"
    );
    assert_eq!(http_get(addr, "/healthz").map(|r| r.0).ok(), Some(200));
    broker.signal(libc::SIGCONT);
    eprintln!("outage: broker resumed after {:?}", frozen.elapsed());

    let resumed = Instant::now();
    inst.wait_ready(Duration::from_secs(60)).await;
    eprintln!(
        "outage: ready again {:?} after the resume",
        resumed.elapsed()
    );
    sender.join().expect("sender");

    let expected = traffic::expected(rules.path(), 3, 0..600);
    let mut reader = Reader::on(&broker.addr, &output);
    reader.read_until(Duration::from_secs(60), |m| traffic::complete(&expected, m));
    reader.settle(secs(1));
    let v = traffic::verdict(&expected, &reader.messages);
    eprintln!(
        "outage: {} kept traces, {} duplicate spans (rate {:.4})",
        v.kept_traces,
        v.duplicate_spans,
        v.duplicate_rate()
    );
    v.assert_promise_kept();
    eprintln!(
        "outage: {} spans counted as replayed",
        inst.metric("tailsift_replayed_spans_forwarded_total", "")
    );
    let (ok, took) = inst.terminate(Duration::from_secs(15)).await;
    assert!(ok, "clean exit after the outage (took {took:?})");
}
