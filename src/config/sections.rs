//! The sections of `tailsift.yaml`, one struct each.
//!
//! Every field's `///` doc is its user documentation (the README's config reference follows
//! it). Each section is `#[serde(default)]` as a whole: its `Default` impl is the one place
//! where its defaults are written, and a missing key takes the value from there.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::ByteSize;
use crate::otlp::Encoding;
use crate::secrets;

/// `kafka`: where spans come from and kept traces go.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port[,host:port...]`. The environment variable
    /// `TAILSIFT_BROKERS` overrides it.
    pub brokers: String,
    /// Topics of OTLP `ExportTraceServiceRequest` protobufs, keyed by trace id.
    pub input_topics: Vec<String>,
    /// How input messages are encoded: `otlp_proto` (default) or `otlp_json` (what the
    /// Collector's kafka exporter writes with `encoding: otlp_json`).
    pub input_encoding: Encoding,
    /// Per-topic encodings overriding `input_encoding`, e.g. `{spans-json: otlp_json}`.
    pub input_encodings: BTreeMap<String, Encoding>,
    /// Topic the kept traces are written to.
    pub output_topic: String,
    /// Topic undecodable input messages are copied to (as they arrived, with headers naming
    /// source topic, partition, offset and error). Unset: they are only counted and logged.
    pub dead_letter_topic: Option<String>,
    /// The decision log: every decision, on a compacted topic, so that a partition's next
    /// owner (after a restart, a crash or a rebalance) follows the decisions made before.
    /// `{topic}` is replaced by each input topic's name: one log per input topic (required
    /// with several input topics). Created at start when absent (as many partitions as its
    /// input topic, `cleanup.policy=compact,delete`, retention twice `decision_cache.ttl` and
    /// at least 1h); one with fewer partitions than its input topic is an error. `""` turns the
    /// log off: late spans then follow only the decisions of the instance that made them.
    /// Default `<group_id>.decisions.{topic}`.
    pub decision_topic: Option<String>,
    /// Consumer group; every instance of one sampler shares it.
    pub group_id: String,
    /// Static membership (`group.instance.id`), e.g. the pod name: a restart within the
    /// session timeout gets its partitions back without a rebalance. The environment variable
    /// `TAILSIFT_GROUP_INSTANCE_ID` overrides it.
    pub group_instance_id: Option<String>,
    /// librdkafka properties for both consumer and producer (security settings go here:
    /// `security.protocol`, `sasl.mechanism`, `ssl.ca.location`...). In this map and the two
    /// below, a value written `${env:NAME}` or `${file:/path}` is read from the environment or
    /// the file at load; secrets are never logged.
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties for the consumer only.
    pub consumer_properties: BTreeMap<String, String>,
    /// librdkafka properties for the producer only.
    pub producer_properties: BTreeMap<String, String>,
    /// How often safe offsets are committed. Default 1s.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Largest output message; a bigger trace is split into several messages (same key).
    /// Keep it under the topic's `max.message.bytes`. Default 1000000.
    pub max_message_bytes: usize,
    /// Property names whose values were resolved from `${env:..}`/`${file:..}`: redacted.
    #[serde(skip)]
    pub resolved_secrets: BTreeSet<String>,
}

impl Default for KafkaConfig {
    /// `brokers`, `input_topics` and `output_topic` have no default: empty, they are refused
    /// by validation, which names the key.
    fn default() -> Self {
        KafkaConfig {
            brokers: String::new(),
            input_topics: Vec::new(),
            input_encoding: Encoding::default(),
            input_encodings: BTreeMap::new(),
            output_topic: String::new(),
            dead_letter_topic: None,
            decision_topic: None,
            group_id: "tailsift".into(),
            group_instance_id: None,
            properties: BTreeMap::new(),
            consumer_properties: BTreeMap::new(),
            producer_properties: BTreeMap::new(),
            commit_interval: Duration::from_secs(1),
            max_message_bytes: 1_000_000,
            resolved_secrets: BTreeSet::new(),
        }
    }
}

impl KafkaConfig {
    /// The three property maps with secret values replaced by `<redacted>`, for logs.
    pub fn redacted_properties(&self) -> [(&'static str, BTreeMap<String, String>); 3] {
        let r = |m| secrets::redact(m, &self.resolved_secrets);
        [
            ("properties", r(&self.properties)),
            ("consumer_properties", r(&self.consumer_properties)),
            ("producer_properties", r(&self.producer_properties)),
        ]
    }

    /// The Kafka settings on one line, secrets redacted, for the start line of the log:
    /// `brokers=a:9092 group=g commit_interval=1s properties={security.protocol=SSL, ...}`.
    pub fn settings_line(&self) -> String {
        let mut line = format!(
            "brokers={} group={}{} commit_interval={} max_message_bytes={}",
            self.brokers,
            self.group_id,
            self.group_instance_id
                .as_ref()
                .map(|i| format!(" group_instance_id={i}"))
                .unwrap_or_default(),
            humantime_serde::re::humantime::format_duration(self.commit_interval),
            self.max_message_bytes
        );
        if let Some(d) = &self.dead_letter_topic {
            line.push_str(&format!(" dead_letter_topic={d}"));
        }
        for (name, map) in self.redacted_properties() {
            if !map.is_empty() {
                let kv: Vec<String> = map.iter().map(|(k, v)| format!("{k}={v}")).collect();
                line.push_str(&format!(" {name}={{{}}}", kv.join(", ")));
            }
        }
        line
    }
}

/// Prints property maps redacted: a config can be logged whole without leaking secrets.
impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [(_, p), (_, c), (_, pr)] = self.redacted_properties();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("input_topics", &self.input_topics)
            .field("input_encoding", &self.input_encoding)
            .field("input_encodings", &self.input_encodings)
            .field("output_topic", &self.output_topic)
            .field("dead_letter_topic", &self.dead_letter_topic)
            .field("decision_topic", &self.decision_topic)
            .field("group_id", &self.group_id)
            .field("group_instance_id", &self.group_instance_id)
            .field("properties", &p)
            .field("consumer_properties", &c)
            .field("producer_properties", &pr)
            .field("commit_interval", &self.commit_interval)
            .field("max_message_bytes", &self.max_message_bytes)
            .finish()
    }
}

/// `rules`: where the rule files are and how their decisions are applied.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RulesConfig {
    /// Directory of rule files (`*.yaml`), loaded in lexical order. Default `rules`.
    pub dir: PathBuf,
    /// Salt mixed into the trace id for sample-rate decisions. Leave unset to sample on the
    /// trace id's own randomness (consistent with OpenTelemetry probability sampling); set it
    /// to decorrelate from upstream samplers. All instances must share it.
    pub salt: Option<String>,
    /// `enforce` (default): kept traces are forwarded, dropped ones are not. `shadow`: a dry
    /// run; decisions are computed, counted and marked, and every trace is forwarded.
    pub mode: RulesMode,
    /// Marks on forwarded spans (rule, sample rate, tracestate threshold). Absent (default):
    /// spans are forwarded byte for byte.
    pub marking: Option<MarkingConfig>,
    /// Reload the rules, without restart, when the directory changes (file watch), on
    /// SIGHUP, and when the periodic check finds changed files. Default true.
    pub reload: bool,
    /// How often the rule files' hash is checked, a fallback for file systems where the
    /// watch misses changes. `0s` turns the check off. Default 10s.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            dir: PathBuf::from("rules"),
            salt: None,
            mode: RulesMode::default(),
            marking: None,
            reload: true,
            poll_interval: Duration::from_secs(10),
        }
    }
}

/// `rules.mode`: whether decisions are applied or only observed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RulesMode {
    /// Kept traces are forwarded, dropped ones are not.
    #[default]
    Enforce,
    /// A dry run: decisions are computed, counted and marked, and every trace is forwarded.
    Shadow,
}

/// How forwarded spans are marked. An attribute name set to `""` leaves that mark out.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MarkingConfig {
    /// Span attribute naming the rule that kept the trace (string). Default `tailsift.rule`.
    pub rule_attribute: String,
    /// Span attribute with the trace's sample rate N, keep 1 in N (int): the trace stands
    /// for N traces. Default `tailsift.sample_rate`.
    pub sample_rate_attribute: String,
    /// Span attribute with the rules' verdict in shadow mode, `keep` or `drop` (string).
    /// Default `tailsift.shadow`.
    pub shadow_attribute: String,
    /// Set the OpenTelemetry sampling threshold `ot=th:...` in each kept span's tracestate
    /// (merged with an upstream one). Default true.
    pub tracestate: bool,
}

impl Default for MarkingConfig {
    fn default() -> Self {
        MarkingConfig {
            rule_attribute: "tailsift.rule".into(),
            sample_rate_attribute: "tailsift.sample_rate".into(),
            shadow_attribute: "tailsift.shadow".into(),
            tracestate: true,
        }
    }
}

impl MarkingConfig {
    /// The marks as the encoder applies them (`""` names leave that mark out).
    pub fn marking(&self) -> crate::otlp::mark::Marking {
        let name = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_string());
        crate::otlp::mark::Marking {
            rule_attribute: name(&self.rule_attribute),
            sample_rate_attribute: name(&self.sample_rate_attribute),
            shadow_attribute: name(&self.shadow_attribute),
            tracestate: self.tracestate,
        }
    }
}

/// `completion`: when a trace counts as complete and is decided.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompletionConfig {
    /// Decide a trace this long after its last span arrived. Default 10s.
    #[serde(with = "humantime_serde")]
    pub decision_wait: Duration,
    /// Decide a trace this long after its root span arrived. Default 2s.
    #[serde(with = "humantime_serde")]
    pub root_grace: Duration,
    /// Decide a trace this long after its first span, however busy. Default 60s.
    #[serde(with = "humantime_serde")]
    pub max_trace_age: Duration,
    /// Decide a trace as soon as it holds this many spans. Default 10000.
    pub max_spans_per_trace: u32,
    /// Decide a trace as soon as its buffered spans take this many bytes; its later spans
    /// follow the decision. At most half of `buffer.max_bytes`. Default 16MiB, or half the
    /// budget when that is smaller.
    pub max_trace_bytes: Option<ByteSize>,
}

impl CompletionConfig {
    /// `max_trace_bytes` when it is not set (before lowering to half the budget at start).
    pub const DEFAULT_MAX_TRACE_BYTES: ByteSize = ByteSize(16 << 20);

    /// `max_trace_bytes`, or its default.
    pub fn max_trace_bytes(&self) -> u64 {
        self.max_trace_bytes
            .unwrap_or(Self::DEFAULT_MAX_TRACE_BYTES)
            .0
    }
}

impl Default for CompletionConfig {
    fn default() -> Self {
        CompletionConfig {
            decision_wait: Duration::from_secs(10),
            root_grace: Duration::from_secs(2),
            max_trace_age: Duration::from_secs(60),
            max_spans_per_trace: 10_000,
            max_trace_bytes: None,
        }
    }
}

/// `buffer`: the memory budget of the buffered traces.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BufferConfig {
    /// Budget for buffered span data plus per-trace overhead, in bytes (`512MiB`, `2GB` or a
    /// number). Reaching it decides the oldest traces early (trigger `memory`). Default: half
    /// of the container's memory limit (cgroup v2 `memory.max`, else cgroup v1
    /// `memory.limit_in_bytes`), or 512MiB when there is no limit.
    pub max_bytes: Option<ByteSize>,
    /// Fetching pauses when the buffer holds more than this fraction of `max_bytes`.
    /// Default 0.9.
    pub high_watermark: f64,
    /// Paused fetching resumes when the buffer holds less than this fraction of `max_bytes`.
    /// Default 0.8.
    pub low_watermark: f64,
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            max_bytes: None,
            high_watermark: 0.9,
            low_watermark: 0.8,
        }
    }
}

/// `decision_cache`: decisions remembered for late spans.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecisionCacheConfig {
    /// Memory the remembered decisions may take, in bytes (each costs
    /// `decision::CACHE_ENTRY_BYTES`, 173). The oldest are evicted first. Default 64MiB.
    pub max_bytes: ByteSize,
    /// Optionally, also at most this many decisions. Default: no count limit.
    pub max_entries: Option<u64>,
    /// How long a decision is remembered. Default 5m. With the decision log, also how far
    /// back a partition's next owner reads decisions.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// With the decision log: how long reading a newly assigned partition's decisions back may
    /// take before it is ingested anyway (the decisions not read by then are made anew).
    /// Default 30s.
    #[serde(with = "humantime_serde")]
    pub read_back_timeout: Duration,
}

impl Default for DecisionCacheConfig {
    fn default() -> Self {
        DecisionCacheConfig {
            max_bytes: ByteSize(64 << 20),
            max_entries: None,
            ttl: Duration::from_secs(300),
            read_back_timeout: Duration::from_secs(30),
        }
    }
}

/// `stress`: stress relief, a degraded mode for when this instance cannot keep up.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StressConfig {
    /// Switch to degraded mode (new traces decided by trace id alone, without buffering) when
    /// the consumer lag keeps growing past `enter_lag`. Default true.
    pub enabled: bool,
    /// Total consumer lag, in messages, above which the lag counts as too high. Default 500000.
    pub enter_lag: u64,
    /// How long the lag must stay above `enter_lag`, and grow, before degraded mode starts.
    /// Default 60s.
    #[serde(with = "humantime_serde")]
    pub enter_after: Duration,
    /// Total consumer lag, in messages, below which the lag counts as low again.
    /// Default 50000.
    pub exit_lag: u64,
    /// How long the lag must stay below `exit_lag` before normal mode returns. Default 60s.
    #[serde(with = "humantime_serde")]
    pub exit_after: Duration,
    /// Degraded mode keeps 1 in this many traces by trace id (plus every trace whose error
    /// span it sees). Default 10.
    pub sample_rate: u32,
}

impl Default for StressConfig {
    fn default() -> Self {
        StressConfig {
            enabled: true,
            enter_lag: 500_000,
            enter_after: Duration::from_secs(60),
            exit_lag: 50_000,
            exit_after: Duration::from_secs(60),
            sample_rate: 10,
        }
    }
}

impl StressConfig {
    /// The thresholds as the stress-relief state machine takes them.
    pub fn settings(&self) -> crate::stress::StressSettings {
        let lag = |v: u64| v.min(i64::MAX as u64) as i64;
        crate::stress::StressSettings {
            enter_lag: lag(self.enter_lag),
            enter_after: self.enter_after,
            exit_lag: lag(self.exit_lag),
            exit_after: self.exit_after,
        }
    }
}

/// `http`: the server of `/metrics`, `/healthz` and `/readyz`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address. Default `0.0.0.0:8080`.
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
        }
    }
}

/// `log`: how log lines are written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (for people, the default) or `json` (one object per line, for log pipelines).
    /// The `--log-format` flag and `TAILSIFT_LOG_FORMAT` override it. Levels: `RUST_LOG`.
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For people: one readable line per event.
    #[default]
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// `monitoring`: consumer lag, readiness, and the metrics derived from the traffic.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonitoringConfig {
    /// How often the consumer lag of every assigned partition is measured (a query of the
    /// partitions' end offsets). Default 5s.
    #[serde(with = "humantime_serde")]
    pub lag_interval: Duration,
    /// `/readyz` fails when there is lag and nothing was consumed for this long (a stuck
    /// consumer). Default 60s.
    #[serde(with = "humantime_serde")]
    pub stall_timeout: Duration,
    /// Count rate, errors and duration of every SERVER and CONSUMER span, before sampling, per
    /// service and operation (`tailsift_red_*`). Default true.
    pub red_metrics: bool,
    /// Attach exemplars to the RED metrics: the trace id and span id of a span of a *kept*
    /// trace per series and duration bucket (latest wins), with the keeping rule's sample rate,
    /// shown when `/metrics` is scraped as OpenMetrics. Never a dropped trace's. Default true.
    pub exemplars: bool,
    /// Services given their own label in the RED and broken-trace metrics; spans of further
    /// services count as service `other`. Default 100.
    pub max_services: usize,
    /// Operations per service given their own label in the RED metrics; further ones count as
    /// operation `other`. Default 50.
    pub max_operations_per_service: usize,
}

impl Default for MonitoringConfig {
    fn default() -> Self {
        MonitoringConfig {
            lag_interval: Duration::from_secs(5),
            stall_timeout: Duration::from_secs(60),
            red_metrics: true,
            exemplars: true,
            max_services: 100,
            max_operations_per_service: 50,
        }
    }
}
