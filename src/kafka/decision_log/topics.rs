//! The decision log's topics: one per input topic, named from `kafka.decision_topic`, created
//! when absent (compacted and time-retained) and checked when present.

use std::time::Duration;

use rdkafka::admin::{
    AdminClient, AdminOptions, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;

use super::LogError;

/// The placeholder `kafka.decision_topic` uses for the input topic's name.
pub const TOPIC_PLACEHOLDER: &str = "{topic}";

/// An admin client for `config` that never creates a topic as a side effect: librdkafka's
/// clients of the producer kind (an admin client is one) let a metadata request for a missing
/// topic create it with the broker's default partition count.
fn admin(config: &ClientConfig) -> Result<AdminClient<DefaultClientContext>, LogError> {
    let mut config = config.clone();
    config.set("allow.auto.create.topics", "false");
    Ok(config.create()?)
}

/// How metadata requests may take at most.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// The names of the log topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogTopics {
    /// `kafka.decision_topic`: with [`TOPIC_PLACEHOLDER`], one log per input topic.
    template: String,
}

impl LogTopics {
    /// Log topic names from `kafka.decision_topic` (with or without [`TOPIC_PLACEHOLDER`]).
    pub fn new(template: &str) -> Self {
        LogTopics {
            template: template.to_string(),
        }
    }

    /// The log topic of input topic `input`.
    pub fn log_of(&self, input: &str) -> String {
        self.template.replace(TOPIC_PLACEHOLDER, input)
    }
}

/// Whether `name` is a legal Kafka topic name (at most 249 of `[a-zA-Z0-9._-]`, not `.` or
/// `..`); `Err` says why not.
pub fn check_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." {
        return Err(format!("`{name}` is not a topic name"));
    }
    if name.len() > 249 {
        return Err(format!("`{name}` is longer than 249 characters"));
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        Some(c) => Err(format!(
            "`{name}` has `{c}`: topic names take only letters, digits, `.`, `_` and `-`"
        )),
        None => Ok(()),
    }
}

/// How long a log topic keeps records: created with [`Retention::retention`], and at least
/// the ttl when found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// `decision_cache.ttl`: how far back a read-back looks.
    pub ttl: Duration,
}

impl Retention {
    /// `retention.ms` of a created log: twice the ttl, and at least an hour (the read-back
    /// needs a ttl; a log pipeline joining on the log is better served with more).
    /// `segment.ms` is a quarter of it, so that closed segments (the only ones compaction and
    /// deletion touch) come often enough.
    pub fn retention(&self) -> Duration {
        (self.ttl * 2).max(Duration::from_secs(3600))
    }
}

/// What [`ensure`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ensured {
    /// The topic was absent and is now created.
    Created {
        /// Its partitions.
        partitions: i32,
    },
    /// The topic was there with enough partitions.
    Present {
        /// Its partitions.
        partitions: i32,
    },
    /// The topic was there with too few partitions for a grown input topic, and was grown.
    Grown {
        /// Partitions it had.
        from: i32,
        /// Partitions it has now.
        to: i32,
    },
}

/// Makes sure the log topic `log` exists with at least `partitions` partitions (those of its
/// input topic `input`): created when absent (`cleanup.policy=compact,delete`, the retention
/// given); when present with fewer partitions, an error that says what to do, or, with
/// `grow` (on assignment: an input topic that gained partitions while running), partitions
/// added. Its retention and cleanup policy are checked (a warning) at start, not on `grow`.
pub async fn ensure(
    config: &ClientConfig,
    log: &str,
    input: &str,
    partitions: i32,
    retention: Retention,
    grow: bool,
) -> Result<Ensured, LogError> {
    let admin = admin(config)?;
    let (present, brokers) = describe(&admin, log)?;
    let opts = AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT));
    match present {
        None => {
            let retention_ms = retention.retention().as_millis().to_string();
            let segment_ms = (retention.retention() / 4).as_millis().to_string();
            // Three copies where the cluster has them, as Kafka's own internal topics.
            let replication = brokers.clamp(1, 3);
            let topic = NewTopic::new(log, partitions, TopicReplication::Fixed(replication))
                .set("cleanup.policy", "compact,delete")
                .set("retention.ms", &retention_ms)
                .set("segment.ms", &segment_ms);
            let created = admin.create_topics([&topic], &opts).await?;
            for r in created {
                match r {
                    Ok(_) => {}
                    Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {
                        // Another instance created it meanwhile: check what it made.
                        return Box::pin(ensure(config, log, input, partitions, retention, grow))
                            .await;
                    }
                    Err((_, code)) => {
                        return Err(LogError::Topic(format!(
                            "the decision log topic `{log}` does not exist and cannot be created ({code}). \
                             Create it with {partitions} partitions (those of `{input}`), \
                             cleanup.policy=compact,delete and retention.ms of at least decision_cache.ttl, \
                             give tailsift's principal write and read access to it, \
                             or set kafka.decision_topic: \"\" to run without a decision log"
                        )))
                    }
                }
            }
            Ok(Ensured::Created { partitions })
        }
        Some(have) if have >= partitions => {
            if !grow {
                // At start only: a read-back on assignment need not ask again.
                check_retention(&admin, log, retention).await;
            }
            Ok(Ensured::Present { partitions: have })
        }
        Some(have) if grow => {
            let more = NewPartitions::new(log, partitions as usize);
            let r = admin.create_partitions([&more], &opts).await?;
            if let Some(Err((_, code))) = r.into_iter().next() {
                return Err(LogError::Topic(format!(
                    "the decision log topic `{log}` has {have} partitions and `{input}` now has {partitions}; \
                     adding partitions failed ({code}): add them (kafka-topics.sh --alter --topic {log} --partitions {partitions})"
                )));
            }
            Ok(Ensured::Grown {
                from: have,
                to: partitions,
            })
        }
        Some(have) => Err(LogError::Topic(format!(
            "the decision log topic `{log}` has {have} partitions, fewer than the {partitions} of input topic `{input}`: \
             the decisions of partition {have} and above would have nowhere to go. \
             Add partitions (kafka-topics.sh --alter --topic {log} --partitions {partitions}), \
             or point kafka.decision_topic at a topic with at least {partitions}"
        ))),
    }
}

/// The number of partitions of `topic` (`None` when it does not exist), and of brokers.
fn describe(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
) -> Result<(Option<i32>, i32), LogError> {
    let md = admin
        .inner()
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)?;
    let brokers = md.brokers().len() as i32;
    let partitions = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.partitions().len() as i32);
    Ok((partitions, brokers))
}

/// The number of partitions of `topic`, if it exists (for the input topics).
pub fn partitions_of(config: &ClientConfig, topic: &str) -> Result<Option<i32>, LogError> {
    Ok(describe(&admin(config)?, topic)?.0)
}

/// Warns when an existing log topic keeps decisions for less than they are needed: those
/// older than its retention are gone before a read-back looks for them. Best effort: a broker
/// that does not describe configurations is taken at its word.
async fn check_retention(admin: &AdminClient<DefaultClientContext>, log: &str, want: Retention) {
    // Short: a broker without DescribeConfigs (librdkafka's mock cluster) never answers.
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(2)));
    let Ok(results) = admin
        .describe_configs([&ResourceSpecifier::Topic(log)], &opts)
        .await
    else {
        return;
    };
    let Some(Ok(resource)) = results.into_iter().next() else {
        return;
    };
    let value = |name: &str| {
        resource
            .entries
            .iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    };
    if let Some(ms) = value("retention.ms").and_then(|v| v.parse::<i64>().ok()) {
        let ttl_ms = want.ttl.as_millis() as i64;
        if ms >= 0 && ms < ttl_ms {
            tracing::warn!(topic = log, retention_ms = ms,
                "the decision log keeps records for less than decision_cache.ttl: a partition's next owner finds only the decisions still there");
        }
    }
    if let Some(policy) = value("cleanup.policy") {
        if !policy.contains("compact") {
            tracing::warn!(topic = log, cleanup_policy = %policy,
                "the decision log is not compacted: it keeps every record of a trace until its retention");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_per_input_topic_and_topic_names_checked() {
        let t = LogTopics::new("tailsift.decisions.{topic}");
        assert_eq!(t.log_of("otlp-spans"), "tailsift.decisions.otlp-spans");
        assert_eq!(LogTopics::new("decisions").log_of("x"), "decisions");
        assert!(check_topic_name("tailsift.decisions.otlp_spans-1").is_ok());
        for bad in ["", ".", "..", "a b", "tail/sift", &"x".repeat(250)] {
            assert!(check_topic_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_topic_name("a:b").unwrap_err().contains("`:`"));
    }

    #[test]
    fn retention_is_twice_the_ttl_and_at_least_an_hour() {
        let r = |secs| Retention {
            ttl: Duration::from_secs(secs),
        };
        assert_eq!(r(300).retention(), Duration::from_secs(3600));
        assert_eq!(r(7200).retention(), Duration::from_secs(14400));
    }
}
