//! Shared helpers for the tests that run against a real Kafka broker.
//!
//! The broker's address comes from `TAILSIFT_TEST_BROKERS` (`scripts/test.sh` starts one and
//! sets it). Every test uses its own topics and consumer groups, so tests can share a broker.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use tailsift::config::Config;

pub mod broker;
pub mod instance;
pub mod traffic;

pub fn brokers() -> String {
    std::env::var("TAILSIFT_TEST_BROKERS").unwrap_or_else(|_| {
        panic!(
            "these tests need a real Kafka broker: run `scripts/test.sh` (it installs and starts \
             one), or set TAILSIFT_TEST_BROKERS=host:port"
        )
    })
}

/// A name no other test (or earlier run on the same broker) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub async fn create_topic(name: &str, partitions: i32) {
    create_topic_on(&brokers(), name, partitions).await
}

pub async fn create_topic_on(brokers: &str, name: &str, partitions: i32) {
    create_topic_with(brokers, name, partitions, &[]).await
}

/// A client configuration for `brokers` with extra librdkafka properties (TLS...).
pub fn client_config(brokers: &str, props: &[(&str, &str)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    for (k, v) in props {
        c.set(*k, *v);
    }
    c
}

pub async fn create_topic_with(brokers: &str, name: &str, partitions: i32, props: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> = client_config(brokers, props)
        .create()
        .expect("admin client");
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let res = admin
        .create_topics(&[topic], &AdminOptions::new())
        .await
        .expect("create topics request");
    for r in res {
        r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
    }
}

pub fn producer() -> ThreadedProducer<DefaultProducerContext> {
    producer_on(&brokers())
}

pub fn producer_on(brokers: &str) -> ThreadedProducer<DefaultProducerContext> {
    producer_with(brokers, &[])
}

pub fn producer_with(
    brokers: &str,
    props: &[(&str, &str)],
) -> ThreadedProducer<DefaultProducerContext> {
    client_config(brokers, props)
        .set("linger.ms", "2")
        .create()
        .expect("producer")
}

pub fn send(p: &ThreadedProducer<DefaultProducerContext>, topic: &str, key: &str, payload: &[u8]) {
    let mut record = BaseRecord::<str, [u8]>::to(topic).key(key).payload(payload);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match p.send(record) {
            Ok(()) => return,
            Err((e, r)) => {
                assert!(Instant::now() < deadline, "cannot produce to {topic}: {e}");
                record = r;
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

pub fn flush(p: &ThreadedProducer<DefaultProducerContext>) {
    p.flush(Duration::from_secs(30)).expect("flush");
}

/// One message read from the output topic.
#[derive(Debug, Clone)]
pub struct OutMsg {
    pub partition: i32,
    pub key: String,
    pub headers: HashMap<String, String>,
    pub payload: Vec<u8>,
}

/// Reads a topic from the beginning.
pub struct Reader {
    consumer: BaseConsumer,
    pub messages: Vec<OutMsg>,
}

impl Reader {
    pub fn new(topic: &str) -> Self {
        Self::on(&brokers(), topic)
    }

    pub fn on(brokers: &str, topic: &str) -> Self {
        Self::with(brokers, topic, &[])
    }

    pub fn with(brokers: &str, topic: &str, props: &[(&str, &str)]) -> Self {
        let consumer: BaseConsumer = client_config(brokers, props)
            .set("group.id", unique("reader"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .expect("reader");
        consumer.subscribe(&[topic]).expect("subscribe");
        Reader {
            consumer,
            messages: Vec::new(),
        }
    }

    /// Reads for up to `timeout` or until `done` holds of everything read so far.
    pub fn read_until(&mut self, timeout: Duration, done: impl Fn(&[OutMsg]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(Ok(m)) = self.consumer.poll(Duration::from_millis(100)) {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                let v = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                                (h.key.to_string(), v.unwrap_or_default())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                self.messages.push(OutMsg {
                    partition: m.partition(),
                    key: m
                        .key()
                        .map(|k| String::from_utf8_lossy(k).into_owned())
                        .unwrap_or_default(),
                    headers,
                    payload: m.payload().unwrap_or_default().to_vec(),
                });
            }
            if done(&self.messages) {
                return true;
            }
        }
        done(&self.messages)
    }
}

/// A config for tests: short completion times, quick commits, HTTP on a free port.
pub fn config(input: &str, output: &str, rules: &Path) -> Config {
    let mut c = Config::for_brokers(&brokers(), input, output, rules);
    c.kafka.group_id = unique("group");
    c.kafka.commit_interval = Duration::from_millis(200);
    c.completion.decision_wait = Duration::from_millis(1500);
    c.completion.root_grace = Duration::from_millis(500);
    c.completion.max_trace_age = Duration::from_secs(20);
    c.http.listen = "127.0.0.1:0".parse().expect("addr");
    c.shutdown_timeout = Duration::from_secs(10);
    c
}

/// Writes rule files into a fresh temporary directory.
pub fn rules_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("write rule file");
    }
    dir
}

/// GETs a path from a local HTTP server; returns (status, body).
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The value of a Prometheus sample line `name{labels} value` (labels matched as a substring).
pub fn metric(body: &str, name: &str, labels: &str) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter(|l| l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(|a, b| a + b)
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    f()
}

/// The offset `group` has committed for `topic`/`partition`, if any.
pub fn committed(group: &str, topic: &str, partition: i32) -> Option<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).ok()?;
    match got.find_partition(topic, partition)?.offset() {
        rdkafka::Offset::Offset(n) => Some(n),
        _ => None,
    }
}
