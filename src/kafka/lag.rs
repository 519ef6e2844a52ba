//! The lag thread: asks the brokers for each assigned partition's high watermark every
//! `lag_interval`, with its own client, so that a slow broker never stalls ingestion and the
//! lag stays true while fetching is paused (librdkafka's cached watermarks only move while a
//! partition is fetched). What it measures goes to the [`LagTracker`] (see [`crate::health`]).
//!
//! Readers: `/readyz` (stuck = lag and no progress), stress relief ([`LagTracker::total`]) and
//! `tailsift_consumer_lag`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::SetupError;
use crate::health::{Health, LagTracker};
use crate::telemetry as m;

/// What the lag thread needs to know.
pub struct LagSettings {
    /// How often watermarks are queried.
    pub interval: Duration,
    /// Start from the end of a partition (not its beginning) when the group has no offset.
    pub reset_to_latest: bool,
}

/// Starts the thread that measures lag every `settings.interval` until `health.stop` holds.
/// `config` is the consumer's configuration: the thread's client reads the group's committed
/// offsets but never joins the group.
pub fn spawn(
    config: &ClientConfig,
    health: Arc<Health>,
    settings: LagSettings,
) -> Result<std::thread::JoinHandle<()>, SetupError> {
    let mut config = config.clone();
    config
        .remove("group.instance.id")
        .remove("statistics.interval.ms");
    let client: BaseConsumer = config
        .create()
        .map_err(SetupError::client("Kafka client that measures lag"))?;
    super::spawn("tailsift-lag", move || {
        let step = Duration::from_millis(100).min(settings.interval);
        let mut next = Instant::now();
        while !health.stop.load(Ordering::Relaxed) {
            if Instant::now() >= next {
                measure(&client, &health.lag, &settings);
                next = Instant::now() + settings.interval;
            }
            std::thread::sleep(step);
        }
    })
}

/// Asks the brokers which input topics exist (nothing assigned yet: perhaps the topic is not
/// created yet, as in a fresh deployment started before its producers). An unanswered query
/// changes nothing: an unreachable broker is reported by the lag queries.
fn look_for_topics(client: &BaseConsumer, tracker: &LagTracker, timeout: Duration) {
    let topics = tracker.expected_topics();
    let mut missing = Vec::new();
    for topic in topics {
        match client.fetch_metadata(Some(&topic), timeout) {
            Ok(md) => {
                let known = md.topics().iter().any(|t| {
                    t.name() == topic && t.error().is_none() && !t.partitions().is_empty()
                });
                if !known {
                    missing.push(topic);
                }
            }
            Err(_) => return,
        }
    }
    tracker.set_missing_topics(missing);
}

/// One measurement round: every assigned partition's high watermark (and, for partitions not
/// read yet, where reading starts). Stops at the first failure: the broker is unreachable.
pub fn measure(client: &BaseConsumer, tracker: &LagTracker, settings: &LagSettings) {
    let timeout = settings
        .interval
        .clamp(Duration::from_secs(1), Duration::from_secs(5));
    let targets = tracker.targets();
    if targets.is_empty() {
        look_for_topics(client, tracker, timeout);
    } else {
        tracker.set_missing_topics(Vec::new());
    }
    let unstarted: Vec<_> = targets.iter().filter(|t| t.2).collect();
    let mut committed = None;
    if !unstarted.is_empty() {
        let mut tpl = TopicPartitionList::new();
        for (t, p, _) in &unstarted {
            tpl.add_partition(t, *p);
        }
        committed = client.committed_offsets(tpl, timeout).ok();
    }
    for (topic, partition, unstarted) in &targets {
        let (low, high) = match client.fetch_watermarks(topic, *partition, timeout) {
            Ok(w) => w,
            Err(e) => {
                metrics::counter!(m::LAG_QUERY_FAILURES).increment(1);
                let why = format!("cannot read the end offset of {topic}/{partition}: {e}");
                tracing::debug!(error = %e, topic, partition, "lag measurement failed");
                tracker.finish_round(Some(why));
                return;
            }
        };
        if *unstarted {
            let from_group = committed
                .as_ref()
                .and_then(|c| c.find_partition(topic, *partition))
                .and_then(|e| match e.offset() {
                    Offset::Offset(n) => Some(n),
                    _ => None,
                });
            let start = from_group.unwrap_or(if settings.reset_to_latest { high } else { low });
            tracker.set_start(topic, *partition, start);
        }
        tracker.measured(topic, *partition, high);
    }
    tracker.finish_round(None);
}
