//! Readiness state shared between threads: the flags the ingest thread, the HTTP probes and the
//! shutdown sequence read and set ([`Health`]), the decision log's acknowledgements
//! ([`LogHealth`]) and consumer lag per partition ([`LagTracker`]).
//!
//! Plain state, free of Kafka: the Kafka edge writes it ([`crate::kafka`]), `/readyz`
//! ([`crate::http`]) and stress relief ([`crate::stress`]) read it.
//!
//! Lag of a partition = high watermark - position, where position is the offset after the last
//! message read; before the first message it is the group's committed offset (or the start of
//! the partition under `auto.offset.reset=earliest`, its end under `latest`). The ingest thread
//! reports what it owns and how far it has read ([`LagTracker::assigned`],
//! [`LagTracker::positions`], once per commit tick, never per message); the lag thread
//! ([`crate::kafka::lag`]) reports the high watermarks.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::telemetry as m;

/// Shared flags between the ingest thread, the HTTP probes and the shutdown sequence.
#[derive(Debug, Default)]
pub struct Health {
    /// Partitions assigned to this instance.
    pub assigned: AtomicUsize,
    /// Assigned partitions whose decisions are being read back from the decision log.
    pub reading_back: AtomicUsize,
    /// The decision log's state, when there is one.
    pub decision_log: OnceLock<Arc<LogHealth>>,
    /// Stop fetching (shutdown has begun); the thread keeps polling for callbacks.
    pub draining: AtomicBool,
    /// Commit what is safe and leave the group.
    pub stop: AtomicBool,
    /// Fetching is paused: the buffer is over its high watermark (back-pressure).
    pub paused: AtomicBool,
    /// Consumer lag and consumption progress (measured by [`crate::kafka::lag`]).
    pub lag: LagTracker,
}

/// The decision log's state for `/readyz`: records written but not acknowledged, and whether
/// acknowledgements still come. Counted per record with two atomic adds; time is read only
/// when a probe asks.
#[derive(Debug, Default)]
pub struct LogHealth {
    in_flight: AtomicI64,
    acknowledged: AtomicU64,
    /// (acknowledgements seen by the last probe, when that count last changed).
    probed: Mutex<Option<(u64, Instant)>>,
    last_error: Mutex<Option<String>>,
}

impl LogHealth {
    /// A record was handed to the producer.
    pub(crate) fn sent(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// The broker acknowledged a record.
    pub(crate) fn acknowledged(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.acknowledged.fetch_add(1, Ordering::Relaxed);
    }

    /// A write failed (it is retried); `/readyz` names the last error.
    pub(crate) fn failed(&self, why: String) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }

    /// Why the log holds the pipeline back: records wait, and no acknowledgement came for
    /// `patience` (measured between calls: `/readyz` probes call it regularly).
    pub fn stuck(&self, patience: Duration) -> Option<String> {
        let acks = self.acknowledged.load(Ordering::Relaxed);
        let waiting = self.in_flight.load(Ordering::Relaxed);
        let now = Instant::now();
        let mut probed = self.probed.lock().unwrap_or_else(|e| e.into_inner());
        let since = match *probed {
            Some((seen, at)) if seen == acks && waiting > 0 => at,
            _ => {
                *probed = Some((acks, now));
                return None;
            }
        };
        drop(probed);
        let idle = now.duration_since(since);
        if idle < patience {
            return None;
        }
        let error = self
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .map(|e| format!(" (last error: {e})"))
            .unwrap_or_default();
        Some(format!(
            "decision log: {waiting} records waiting for the broker's acknowledgement, none acknowledged for {}s{error}; offsets are not committed past them",
            idle.as_secs()
        ))
    }
}

/// `total` while no measurement has succeeded yet.
const UNKNOWN: i64 = -1;

struct PartitionLag {
    /// Offset after the last message read, once one was read.
    position: Option<i64>,
    /// Where reading starts when nothing was read yet (committed offset or reset point).
    start: Option<i64>,
    /// The high watermark of the consumer's last fetch response (librdkafka statistics).
    fetched_high: Option<i64>,
    lag: Option<i64>,
    gauge: metrics::Gauge,
}

/// Lag per assigned partition, total lag and the time of the last consumption progress.
/// Cheap to read from any thread.
pub struct LagTracker {
    partitions: Mutex<BTreeMap<(String, i32), PartitionLag>>,
    total: AtomicI64,
    origin: Instant,
    /// Milliseconds since `origin` of the last tick in which messages were consumed.
    last_progress_ms: AtomicU64,
    /// Why the last measurement failed, if it did.
    broker_error: Mutex<Option<String>>,
    /// The input topics, looked up while no partition is assigned ([`LagTracker::expect_topics`]).
    topics: Mutex<Vec<String>>,
    /// Those of them the brokers do not know (yet), for `/readyz`.
    missing: Mutex<Vec<String>>,
}

impl Default for LagTracker {
    fn default() -> Self {
        LagTracker {
            partitions: Mutex::new(BTreeMap::new()),
            total: AtomicI64::new(UNKNOWN),
            origin: Instant::now(),
            last_progress_ms: AtomicU64::new(0),
            broker_error: Mutex::new(None),
            topics: Mutex::new(Vec::new()),
            missing: Mutex::new(Vec::new()),
        }
    }
}

impl std::fmt::Debug for LagTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LagTracker")
            .field("total", &self.total())
            .field("since_progress", &self.since_progress())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LagTracker {
    /// Total lag over the assigned partitions, in messages (offsets); `None` until the first
    /// measurement (and while partitions measured so far are unknown).
    pub fn total(&self) -> Option<i64> {
        let t = self.total.load(Ordering::Relaxed);
        (t != UNKNOWN).then_some(t)
    }

    /// Lag of each assigned partition that has been measured: (topic, partition, lag).
    pub fn per_partition(&self) -> Vec<(String, i32, i64)> {
        lock(&self.partitions)
            .iter()
            .filter_map(|((t, p), l)| Some((t.clone(), *p, l.lag?)))
            .collect()
    }

    /// When messages were last consumed (or the tracker was created, if never).
    pub fn last_progress(&self) -> Instant {
        self.origin + Duration::from_millis(self.last_progress_ms.load(Ordering::Relaxed))
    }

    /// Time since messages were last consumed.
    pub fn since_progress(&self) -> Duration {
        self.last_progress().elapsed()
    }

    /// Why the last lag measurement failed (broker unreachable...), if it did.
    pub fn broker_error(&self) -> Option<String> {
        lock(&self.broker_error).clone()
    }

    /// The input topics: while no partition is assigned, each measurement round asks the
    /// brokers which of them exist, so that `/readyz` can name the one it waits for.
    pub fn expect_topics(&self, topics: &[String]) {
        *lock(&self.topics) = topics.to_vec();
    }

    /// The input topics the brokers did not know at the last look (only looked up while no
    /// partition is assigned).
    pub fn missing_topics(&self) -> Vec<String> {
        lock(&self.missing).clone()
    }

    /// The input topics named by [`LagTracker::expect_topics`].
    pub(crate) fn expected_topics(&self) -> Vec<String> {
        lock(&self.topics).clone()
    }

    /// Records which input topics are missing.
    pub fn set_missing_topics(&self, missing: Vec<String>) {
        *lock(&self.missing) = missing;
    }

    /// The ingest thread consumed messages since its last report.
    pub fn progress(&self) {
        let ms = self.origin.elapsed().as_millis() as u64;
        self.last_progress_ms.store(ms, Ordering::Relaxed);
    }

    /// A partition was assigned to this instance.
    pub fn assigned(&self, topic: &str, partition: i32) {
        let gauge = metrics::gauge!(m::CONSUMER_LAG,
            "topic" => topic.to_string(), "partition" => partition.to_string());
        lock(&self.partitions).insert(
            (topic.to_string(), partition),
            PartitionLag {
                position: None,
                start: None,
                fetched_high: None,
                lag: None,
                gauge,
            },
        );
    }

    /// A partition left this instance: its gauge reads 0 here (the new owner reports it).
    pub fn revoked(&self, topic: &str, partition: i32) {
        let mut parts = lock(&self.partitions);
        if let Some(p) = parts.remove(&(topic.to_string(), partition)) {
            p.gauge.set(0.0);
        }
        self.total.store(sum(&parts), Ordering::Relaxed);
    }

    /// The ingest thread's read positions (offset after the last message read), per partition.
    pub fn positions<'a>(&self, positions: impl IntoIterator<Item = (&'a str, i32, i64)>) {
        let mut parts = lock(&self.partitions);
        for (topic, partition, next) in positions {
            // Look up without allocating: the map is small and this runs once per tick.
            if let Some((_, p)) = parts
                .iter_mut()
                .find(|((t, n), _)| t == topic && *n == partition)
            {
                p.position = Some(next);
            }
        }
    }

    /// The high watermark the consumer saw in its last fetch response for a partition (from
    /// librdkafka's statistics, on the ingest thread).
    pub fn fetched_high(&self, topic: &str, partition: i32, high: i64) {
        let mut parts = lock(&self.partitions);
        if let Some((_, p)) = parts
            .iter_mut()
            .find(|((t, n), _)| t == topic && *n == partition)
        {
            p.fetched_high = Some(high);
        }
    }

    /// The partitions to measure and whether their start position is still unknown.
    pub(crate) fn targets(&self) -> Vec<(String, i32, bool)> {
        lock(&self.partitions)
            .iter()
            .map(|((t, p), l)| (t.clone(), *p, l.position.is_none() && l.start.is_none()))
            .collect()
    }

    pub(crate) fn set_start(&self, topic: &str, partition: i32, start: i64) {
        if let Some(p) = lock(&self.partitions).get_mut(&(topic.to_string(), partition)) {
            p.start = Some(start);
        }
    }

    /// Records a partition's high watermark as the brokers report it; returns its lag if its
    /// position is known. The larger of it and the last fetch response's counts: both can
    /// only be behind the true end (a fetch response is stale while fetching is paused; and
    /// some Kafka-protocol brokers answer the end-offset query with the start of the last
    /// record batch, not its end).
    pub(crate) fn measured(&self, topic: &str, partition: i32, high: i64) -> Option<i64> {
        let mut parts = lock(&self.partitions);
        let p = parts.get_mut(&(topic.to_string(), partition))?;
        let high = high.max(p.fetched_high.unwrap_or(high));
        let lag = (high - p.position.or(p.start)?).max(0);
        p.lag = Some(lag);
        p.gauge.set(lag as f64);
        Some(lag)
    }

    /// A measurement round of one partition, for tests elsewhere in the crate.
    #[cfg(test)]
    pub(crate) fn test_measure(
        &self,
        topic: &str,
        partition: i32,
        high: i64,
        error: Option<String>,
    ) {
        if error.is_none() {
            self.measured(topic, partition, high);
        }
        self.finish_round(error);
    }

    pub(crate) fn finish_round(&self, error: Option<String>) {
        let parts = lock(&self.partitions);
        self.total.store(sum(&parts), Ordering::Relaxed);
        drop(parts);
        *lock(&self.broker_error) = error;
    }
}

/// Total lag, or UNKNOWN when any assigned partition is not measured yet.
fn sum(parts: &BTreeMap<(String, i32), PartitionLag>) -> i64 {
    parts
        .values()
        .try_fold(0i64, |acc, p| Some(acc + p.lag?))
        .unwrap_or(UNKNOWN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_high_watermark_minus_position_and_total_waits_for_every_partition() {
        let t = LagTracker::default();
        t.assigned("in", 0);
        t.assigned("in", 1);
        assert_eq!(t.total(), None);
        t.positions([("in", 0, 40)]);
        assert_eq!(t.measured("in", 0, 100), Some(60));
        assert_eq!(t.measured("in", 1, 100), None, "position unknown yet");
        t.finish_round(None);
        assert_eq!(t.total(), None, "partition 1 is not measured");
        t.set_start("in", 1, 90);
        assert_eq!(t.measured("in", 1, 100), Some(10));
        t.finish_round(None);
        assert_eq!(t.total(), Some(70));
        // Reading moves the position; the start no longer counts.
        t.positions([("in", 1, 100)]);
        assert_eq!(t.measured("in", 1, 100), Some(0));
        t.finish_round(None);
        assert_eq!(t.total(), Some(60));
        t.revoked("in", 0);
        assert_eq!(t.total(), Some(0));
        assert_eq!(t.per_partition(), vec![("in".to_string(), 1, 0)]);
    }

    #[test]
    fn the_fresher_of_the_queried_and_the_fetched_watermark_counts() {
        let t = LagTracker::default();
        t.assigned("in", 0);
        t.positions([("in", 0, 10)]);
        t.fetched_high("in", 0, 30);
        assert_eq!(
            t.measured("in", 0, 25),
            Some(20),
            "fetch response is fresher"
        );
        assert_eq!(t.measured("in", 0, 40), Some(30), "query is fresher");
    }

    #[test]
    fn a_position_past_a_stale_watermark_is_no_lag() {
        let t = LagTracker::default();
        t.assigned("in", 0);
        t.positions([("in", 0, 120)]);
        assert_eq!(t.measured("in", 0, 100), Some(0));
    }

    #[test]
    fn progress_and_broker_errors_are_visible() {
        let t = LagTracker::default();
        std::thread::sleep(Duration::from_millis(20));
        assert!(t.since_progress() >= Duration::from_millis(20));
        t.progress();
        assert!(t.since_progress() < Duration::from_millis(20));
        t.finish_round(Some("unreachable".into()));
        assert_eq!(t.broker_error().as_deref(), Some("unreachable"));
        t.finish_round(None);
        assert_eq!(t.broker_error(), None);
    }
}
