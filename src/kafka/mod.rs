//! The Kafka edge, one file per stage, in flow order:
//!
//! - [`consume`]: the ingest thread's poll loop: decode or dead-letter each message, feed the
//!   sampler, pause and resume fetching (back-pressure), commit on its tick.
//! - [`rebalance`]: the consumer's context: partitions assigned and revoked, librdkafka's
//!   statistics and commit reports.
//! - [`partitions`]: the table of assigned partitions, their offsets, and what to commit.
//! - [`commit`]: sending the commits: the group's offsets, read marks and head marks.
//! - [`replay`]: what a newly assigned partition reads back before it is ingested: its
//!   decisions from the decision log, the heads of traces straddling its commit offset.
//! - [`lag`]: the thread that measures consumer lag.
//! - [`producer`]: the one retrying producer every writer below shares.
//! - [`sink`]: kept traces to the output topic.
//! - [`dead_letter`]: undecodable messages to the dead-letter topic.
//! - [`decision_log`]: every decision on a compacted topic, and its read-back.
//! - [`route`]: `tailsift route`, the stateless re-keying stage.
//!
//! This file holds the librdkafka settings every client starts from and the error type of
//! setting the edge up ([`SetupError`]).

pub mod commit;
pub mod consume;
pub mod dead_letter;
pub mod decision_log;
pub mod lag;
pub mod partitions;
pub mod producer;
pub mod rebalance;
pub mod replay;
pub mod route;
pub mod sink;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;

use crate::config::Config;

/// Appended to client-creation errors: what a TLS or SCRAM setting needs in a build without
/// the `tls` feature.
pub const TLS_HINT: &str = if cfg!(feature = "tls") {
    ""
} else {
    " (if it names TLS/SSL or SCRAM: this build lacks them; build with the default features, or `--features tls-vendored`)"
};

/// Bytes librdkafka may queue on each side (fetched but not yet ingested; produced but not yet
/// acknowledged): an eighth of the memory budget, between 1MiB and 64MiB. Outside the budget,
/// so part of the fixed overhead the README documents; properties in the config override it.
pub fn kafka_queue_bytes(c: &Config) -> u64 {
    (c.budget().0.max_bytes / 8).clamp(1 << 20, 64 << 20)
}

/// How long librdkafka waits to fetch a partition again when its fetch queue is full
/// (`fetch.queue.backoff.ms`), in milliseconds: the decider's tick.
pub const FETCH_QUEUE_BACKOFF_MS: &str = "10";

/// How often librdkafka refreshes the input topics' metadata (`topic.metadata.refresh.interval.ms`),
/// in milliseconds: a topic created after the start is picked up within this.
pub const TOPIC_REFRESH_MS: &str = "3000";

/// librdkafka settings for the consumer.
pub fn consumer_config(c: &Config) -> ClientConfig {
    let k = &c.kafka;
    let mut cc = ClientConfig::new();
    cc.set(
        "queued.max.messages.kbytes",
        (kafka_queue_bytes(c) >> 10).to_string(),
    );
    // When the fetch queue is full, librdkafka waits this long before fetching that partition
    // again. Its default (1 s) left the ingest thread idle more than half the time once it
    // had drained the queue: end to end, 290 000 spans/s instead of 620 000-730 000 (see
    // BENCHMARKS.md). The queue's bound, and so the memory, is the same either way.
    cc.set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS);
    // A subscribed topic that does not exist yet is looked for again at each metadata refresh:
    // librdkafka's default (5 min) left a fresh deployment, started before its topic was
    // created, idle for exactly 300 s. Refreshing every few seconds costs one small request.
    cc.set("topic.metadata.refresh.interval.ms", TOPIC_REFRESH_MS);
    cc.set("bootstrap.servers", &k.brokers)
        .set("group.id", &k.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set(
            "statistics.interval.ms",
            c.monitoring.lag_interval.as_millis().to_string(),
        );
    if let Some(id) = &k.group_instance_id {
        cc.set("group.instance.id", id);
    }
    for (key, v) in k.properties.iter().chain(&k.consumer_properties) {
        cc.set(key, v);
    }
    cc
}

/// librdkafka settings for the producer.
pub fn producer_config(c: &Config) -> ClientConfig {
    let k = &c.kafka;
    let mut pc = ClientConfig::new();
    let queue = kafka_queue_bytes(c).max(2 * k.max_message_bytes as u64 + (1 << 20));
    pc.set("queue.buffering.max.kbytes", (queue >> 10).to_string());
    pc.set("bootstrap.servers", &k.brokers)
        .set("linger.ms", "5")
        .set("acks", "all")
        .set(
            "message.max.bytes",
            (k.max_message_bytes + 64 * 1024).to_string(),
        );
    for (key, v) in k.properties.iter().chain(&k.producer_properties) {
        pc.set(key, v);
    }
    pc
}

/// Why the Kafka edge could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// librdkafka refused to create a client (most often: a property it does not know or
    /// accept), or a consumer could not subscribe.
    #[error("cannot create the {what}{}", TLS_HINT)]
    Client {
        /// Which client: `Kafka producer`, `Kafka consumer`, `dead-letter producer`...
        what: &'static str,
        /// librdkafka's refusal.
        #[source]
        source: KafkaError,
    },
    /// A thread of the edge could not be started.
    #[error("cannot start the {name} thread")]
    Thread {
        /// The thread's name.
        name: &'static str,
        /// The operating system's refusal.
        #[source]
        source: std::io::Error,
    },
}

impl SetupError {
    /// A `map_err` for creating the client named `what`.
    pub fn client(what: &'static str) -> impl FnOnce(KafkaError) -> SetupError {
        move |source| SetupError::Client { what, source }
    }
}

/// Starts a named thread of the edge.
pub fn spawn<F>(name: &'static str, f: F) -> Result<std::thread::JoinHandle<()>, SetupError>
where
    F: FnOnce() + Send + 'static,
{
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|source| SetupError::Thread { name, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_consumer_refetches_a_full_partition_soon_unless_the_config_says_otherwise() {
        let dir = std::path::Path::new("rules");
        let mut c = Config::for_brokers("127.0.0.1:9092", "in", "out", dir);
        let cc = consumer_config(&c);
        assert_eq!(
            cc.get("fetch.queue.backoff.ms"),
            Some(FETCH_QUEUE_BACKOFF_MS)
        );
        c.kafka
            .consumer_properties
            .insert("fetch.queue.backoff.ms".into(), "500".into());
        assert_eq!(
            consumer_config(&c).get("fetch.queue.backoff.ms"),
            Some("500")
        );
    }
}
