//! TLS to the broker, with the real binary and a broker of the test's own that accepts only
//! TLS connections: with the broker's CA in `kafka.properties`, every client tailsift makes
//! (consumer, producer, lag, read and head marks) works and every kept trace reaches the
//! output; with another CA, tailsift stays up, unready, and says why.

use std::path::Path;
use std::time::Duration;

use crate::fixture::broker::{self_signed, Broker};
use crate::fixture::instance::{launch, log_of, RunConfig};
use crate::fixture::traffic::{self, RULES};
use crate::fixture::*;

fn config(broker: &str, input: &str, output: &str, ca: &Path, rules: &Path) -> RunConfig {
    RunConfig::quick(input, output, rules)
        .set("kafka.brokers", broker)
        .remove("kafka.consumer_properties")
        .property("security.protocol", "SSL")
        .property("ssl.ca.location", &ca.display().to_string())
        .set("completion.root_grace", "300ms")
        .set("monitoring.lag_interval", "500ms")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_every_kept_trace_arrives_and_a_wrong_ca_is_reported_unready() {
    let _turn = several_processes().await;
    tokio::time::timeout(Duration::from_secs(180), tls())
        .await
        .expect("the TLS test finishes within 3 minutes");
}

async fn tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = self_signed(dir.path(), "broker");
    let (other_ca, _) = self_signed(dir.path(), "other");
    let broker = Broker::start_with(
        dir.path(),
        &[
            "--cert",
            &cert.display().to_string(),
            "--key",
            &key.display().to_string(),
        ],
    );
    let ca = cert.display().to_string();
    let ssl = [
        ("security.protocol", "SSL"),
        ("ssl.ca.location", ca.as_str()),
    ];
    let (input, output) = (unique("in"), unique("out"));
    create_topic_with(&broker.addr, &input, 2, &ssl).await;
    create_topic_with(&broker.addr, &output, 1, &ssl).await;
    let rules = rules_dir(&[("rules.yaml", RULES)]);

    let trusted = config(&broker.addr, &input, &output, &cert, rules.path());
    let inst = launch(dir.path(), "tls", &trusted).start();
    inst.wait_ready(Duration::from_secs(60)).await;
    let p = producer_with(&broker.addr, &ssl);
    let (run, n) = (11, 200);
    traffic::send_interleaved(&p, &input, run, 0..n, Duration::from_millis(1));

    let expected = traffic::expected(rules.path(), run, 0..n);
    let mut reader = Reader::with(&broker.addr, &output, &ssl);
    let whole = reader.read_until(Duration::from_secs(60), |m| traffic::complete(&expected, m));
    let v = traffic::verdict(&expected, &reader.messages);
    assert!(
        whole,
        "every kept trace whole over TLS: missing {:?}",
        v.missing
    );
    v.assert_promise_kept();
    // The lag comes from a client of its own: it too speaks TLS.
    let lag_seen = eventually(Duration::from_secs(20), || {
        http_get(inst.addr, "/metrics").is_ok_and(|(_, b)| b.contains("tailsift_consumer_lag{"))
    })
    .await;
    assert!(lag_seen, "the lag is measured over TLS");
    assert_eq!(inst.metric("tailsift_lag_query_failures_total", ""), 0.0);

    // The same with a CA that did not sign the broker's certificate: no connection, no crash,
    // unready with the reason, and the log says what failed.
    let wrong = config(&broker.addr, &input, &output, &other_ca, rules.path());
    let mut untrusted = launch(dir.path(), "untrusted", &wrong).start();
    let addr = untrusted.addr;
    let answered = eventually(Duration::from_secs(30), || {
        http_get(addr, "/readyz").is_ok_and(|(s, _)| s == 503)
    })
    .await;
    assert!(answered, "tailsift serves /readyz while it cannot connect");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (status, why) = http_get(addr, "/readyz").expect("readyz");
    assert_eq!(status, 503, "never ready without a trusted broker: {why}");
    assert!(untrusted.is_running(), "tailsift keeps running");
    untrusted.kill9();
    let log = log_of(dir.path(), "untrusted");
    assert!(
        log.contains("certificate verify failed") || log.contains("SSL handshake failed"),
        "the log says the broker's certificate was not trusted: {}",
        &log[..log.len().min(2000)]
    );
}
