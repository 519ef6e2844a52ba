//! `tailsift.yaml`: what an operator writes, checked once and turned into [`Settings`].
//!
//! Every field's `///` doc is its user documentation (the README's config reference follows
//! it). Unknown keys are rejected; values are checked here, so that no invalid combination
//! reaches the pipeline.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::buffer::Completion;
use crate::memory::{resolve_budget, Budget, BudgetSource};
use crate::otlp::Encoding;
use crate::secrets;

/// Environment variable that overrides `kafka.brokers`.
pub const BROKERS_ENV: &str = "TAILSIFT_BROKERS";
/// Environment variable that sets `kafka.group_instance_id` (static membership), so that each
/// pod of a StatefulSet can take its own name from the downward API while sharing one config
/// file.
pub const GROUP_INSTANCE_ID_ENV: &str = "TAILSIFT_GROUP_INSTANCE_ID";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}{}{source}", path.display(), if source.line > 0 { ":" } else { ": " })]
    Parse {
        path: PathBuf,
        #[source]
        source: crate::yaml::YamlError,
    },
    #[error("{path}: `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where spans come from and kept traces go.
    pub kafka: KafkaConfig,
    /// The sampling rules.
    #[serde(default)]
    pub rules: RulesConfig,
    /// When a trace counts as complete.
    #[serde(default)]
    pub completion: CompletionConfig,
    /// The trace buffer.
    #[serde(default)]
    pub buffer: BufferConfig,
    /// Decisions remembered for late spans.
    #[serde(default)]
    pub decision_cache: DecisionCacheConfig,
    /// The HTTP server for `/metrics`, `/healthz` and `/readyz`.
    #[serde(default)]
    pub http: HttpConfig,
    /// Consumer lag, readiness and the metrics tailsift derives from the traffic.
    #[serde(default)]
    pub monitoring: MonitoringConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Stress relief: a degraded mode for when this instance cannot keep up.
    #[serde(default)]
    pub stress: StressConfig,
    /// How long a graceful shutdown (SIGTERM/SIGINT) may take before the process exits anyway.
    /// Default 30s. Kubernetes' terminationGracePeriodSeconds should be longer.
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port[,host:port...]`. The environment variable
    /// `TAILSIFT_BROKERS` overrides it.
    pub brokers: String,
    /// Topics of OTLP `ExportTraceServiceRequest` protobufs, keyed by trace id.
    pub input_topics: Vec<String>,
    /// How input messages are encoded: `otlp_proto` (default) or `otlp_json` (what the
    /// Collector's kafka exporter writes with `encoding: otlp_json`).
    #[serde(default)]
    pub input_encoding: Encoding,
    /// Per-topic encodings overriding `input_encoding`, e.g. `{spans-json: otlp_json}`.
    #[serde(default)]
    pub input_encodings: BTreeMap<String, Encoding>,
    /// Topic the kept traces are written to.
    pub output_topic: String,
    /// Topic undecodable input messages are copied to (as they arrived, with headers naming
    /// source topic, partition, offset and error). Unset: they are only counted and logged.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// The decision log: every decision, on a compacted topic, so that a partition's next
    /// owner (after a restart, a crash or a rebalance) follows the decisions made before.
    /// `{topic}` is replaced by each input topic's name: one log per input topic (required
    /// with several input topics). Created at start when absent (as many partitions as its
    /// input topic, `cleanup.policy=compact,delete`, retention twice `decision_cache.ttl` and
    /// at least 1h); one with fewer partitions than its input topic is an error. `""` turns the
    /// log off: late spans then follow only the decisions of the instance that made them.
    /// Default `<group_id>.decisions.{topic}`.
    #[serde(default)]
    pub decision_topic: Option<String>,
    /// Consumer group; every instance of one sampler shares it.
    #[serde(default = "default_group")]
    pub group_id: String,
    /// Static membership (`group.instance.id`), e.g. the pod name: a restart within the
    /// session timeout gets its partitions back without a rebalance. The environment variable
    /// `TAILSIFT_GROUP_INSTANCE_ID` overrides it.
    #[serde(default)]
    pub group_instance_id: Option<String>,
    /// librdkafka properties for both consumer and producer (security settings go here:
    /// `security.protocol`, `sasl.mechanism`, `ssl.ca.location`...). In this map and the two
    /// below, a value written `${env:NAME}` or `${file:/path}` is read from the environment or
    /// the file at load; secrets are never logged.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties for the consumer only.
    #[serde(default)]
    pub consumer_properties: BTreeMap<String, String>,
    /// librdkafka properties for the producer only.
    #[serde(default)]
    pub producer_properties: BTreeMap<String, String>,
    /// How often safe offsets are committed. Default 1s.
    #[serde(default = "default_commit_interval", with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Largest output message; a bigger trace is split into several messages (same key).
    /// Keep it under the topic's `max.message.bytes`. Default 1000000.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Property names whose values were resolved from `${env:..}`/`${file:..}`: redacted.
    #[serde(skip)]
    pub resolved_secrets: BTreeSet<String>,
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
}

impl KafkaConfig {
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesConfig {
    /// Directory of rule files (`*.yaml`), loaded in lexical order. Default `rules`.
    #[serde(default = "default_rules_dir")]
    pub dir: PathBuf,
    /// Salt mixed into the trace id for sample-rate decisions. Leave unset to sample on the
    /// trace id's own randomness (consistent with OpenTelemetry probability sampling); set it
    /// to decorrelate from upstream samplers. All instances must share it.
    #[serde(default)]
    pub salt: Option<String>,
    /// `enforce` (default): kept traces are forwarded, dropped ones are not. `shadow`: a dry
    /// run; decisions are computed, counted and marked, and every trace is forwarded.
    #[serde(default)]
    pub mode: RulesMode,
    /// Marks on forwarded spans (rule, sample rate, tracestate threshold). Absent (default):
    /// spans are forwarded byte for byte.
    #[serde(default)]
    pub marking: Option<MarkingConfig>,
    /// Reload the rules, without restart, when the directory changes (file watch), on
    /// SIGHUP, and when the periodic check finds changed files. Default true.
    #[serde(default = "d_true")]
    pub reload: bool,
    /// How often the rule files' hash is checked, a fallback for file systems where the
    /// watch misses changes. `0s` turns the check off. Default 10s.
    #[serde(default = "d_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            dir: default_rules_dir(),
            salt: None,
            mode: RulesMode::default(),
            marking: None,
            reload: true,
            poll_interval: d_poll_interval(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RulesMode {
    #[default]
    Enforce,
    Shadow,
}

/// How forwarded spans are marked. An attribute name set to `""` leaves that mark out.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarkingConfig {
    /// Span attribute naming the rule that kept the trace (string). Default `tailsift.rule`.
    #[serde(default = "d_rule_attr")]
    pub rule_attribute: String,
    /// Span attribute with the trace's sample rate N, keep 1 in N (int): the trace stands
    /// for N traces. Default `tailsift.sample_rate`.
    #[serde(default = "d_rate_attr")]
    pub sample_rate_attribute: String,
    /// Span attribute with the rules' verdict in shadow mode, `keep` or `drop` (string).
    /// Default `tailsift.shadow`.
    #[serde(default = "d_shadow_attr")]
    pub shadow_attribute: String,
    /// Set the OpenTelemetry sampling threshold `ot=th:...` in each kept span's tracestate
    /// (merged with an upstream one). Default true.
    #[serde(default = "d_true")]
    pub tracestate: bool,
}

impl MarkingConfig {
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletionConfig {
    /// Decide a trace this long after its last span arrived. Default 10s.
    #[serde(default = "d_decision_wait", with = "humantime_serde")]
    pub decision_wait: Duration,
    /// Decide a trace this long after its root span arrived. Default 2s.
    #[serde(default = "d_root_grace", with = "humantime_serde")]
    pub root_grace: Duration,
    /// Decide a trace this long after its first span, however busy. Default 60s.
    #[serde(default = "d_max_trace_age", with = "humantime_serde")]
    pub max_trace_age: Duration,
    /// Decide a trace as soon as it holds this many spans. Default 10000.
    #[serde(default = "d_max_spans")]
    pub max_spans_per_trace: u32,
    /// Decide a trace as soon as its buffered spans take this many bytes; its later spans
    /// follow the decision. At most half of `buffer.max_bytes`. Default 16MiB, or half the
    /// budget when that is smaller.
    #[serde(default)]
    pub max_trace_bytes: Option<ByteSize>,
}

impl Default for CompletionConfig {
    fn default() -> Self {
        CompletionConfig {
            decision_wait: d_decision_wait(),
            root_grace: d_root_grace(),
            max_trace_age: d_max_trace_age(),
            max_spans_per_trace: d_max_spans(),
            max_trace_bytes: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BufferConfig {
    /// Budget for buffered span data plus per-trace overhead, in bytes (`512MiB`, `2GB` or a
    /// number). Reaching it decides the oldest traces early (trigger `memory`). Default: half
    /// of the container's memory limit (cgroup v2 `memory.max`, else cgroup v1
    /// `memory.limit_in_bytes`), or 512MiB when there is no limit.
    #[serde(default)]
    pub max_bytes: Option<ByteSize>,
    /// Fetching pauses when the buffer holds more than this fraction of `max_bytes`.
    /// Default 0.9.
    #[serde(default = "d_high_watermark")]
    pub high_watermark: f64,
    /// Paused fetching resumes when the buffer holds less than this fraction of `max_bytes`.
    /// Default 0.8.
    #[serde(default = "d_low_watermark")]
    pub low_watermark: f64,
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            max_bytes: None,
            high_watermark: d_high_watermark(),
            low_watermark: d_low_watermark(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionCacheConfig {
    /// Memory the remembered decisions may take, in bytes (each costs
    /// `decision::CACHE_ENTRY_BYTES`, 173). The oldest are evicted first. Default 64MiB.
    #[serde(default = "d_cache_bytes")]
    pub max_bytes: ByteSize,
    /// Optionally, also at most this many decisions. Default: no count limit.
    #[serde(default)]
    pub max_entries: Option<u64>,
    /// How long a decision is remembered. Default 5m. With the decision log, also how far
    /// back a partition's next owner reads decisions.
    #[serde(default = "d_cache_ttl", with = "humantime_serde")]
    pub ttl: Duration,
    /// With the decision log: how long reading a newly assigned partition's decisions back may
    /// take before it is ingested anyway (the decisions not read by then are made anew).
    /// Default 30s.
    #[serde(default = "d_read_back_timeout", with = "humantime_serde")]
    pub read_back_timeout: Duration,
}

impl Default for DecisionCacheConfig {
    fn default() -> Self {
        DecisionCacheConfig {
            max_bytes: d_cache_bytes(),
            max_entries: None,
            ttl: d_cache_ttl(),
            read_back_timeout: d_read_back_timeout(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StressConfig {
    /// Switch to degraded mode (new traces decided by trace id alone, without buffering) when
    /// the consumer lag keeps growing past `enter_lag`. Default true.
    #[serde(default = "d_true")]
    pub enabled: bool,
    /// Total consumer lag, in messages, above which the lag counts as too high. Default 500000.
    #[serde(default = "d_enter_lag")]
    pub enter_lag: u64,
    /// How long the lag must stay above `enter_lag`, and grow, before degraded mode starts.
    /// Default 60s.
    #[serde(default = "d_stress_wait", with = "humantime_serde")]
    pub enter_after: Duration,
    /// Total consumer lag, in messages, below which the lag counts as low again.
    /// Default 50000.
    #[serde(default = "d_exit_lag")]
    pub exit_lag: u64,
    /// How long the lag must stay below `exit_lag` before normal mode returns. Default 60s.
    #[serde(default = "d_stress_wait", with = "humantime_serde")]
    pub exit_after: Duration,
    /// Degraded mode keeps 1 in this many traces by trace id (plus every trace whose error
    /// span it sees). Default 10.
    #[serde(default = "d_stress_rate")]
    pub sample_rate: u32,
}

impl Default for StressConfig {
    fn default() -> Self {
        StressConfig {
            enabled: true,
            enter_lag: d_enter_lag(),
            enter_after: d_stress_wait(),
            exit_lag: d_exit_lag(),
            exit_after: d_stress_wait(),
            sample_rate: d_stress_rate(),
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

fn d_true() -> bool {
    true
}
fn d_enter_lag() -> u64 {
    500_000
}
fn d_exit_lag() -> u64 {
    50_000
}
fn d_stress_wait() -> Duration {
    Duration::from_secs(60)
}
fn d_stress_rate() -> u32 {
    10
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address. Default `0.0.0.0:8080`.
    #[serde(default = "d_listen")]
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { listen: d_listen() }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (for people, the default) or `json` (one object per line, for log pipelines).
    /// The `--log-format` flag and `TAILSIFT_LOG_FORMAT` override it. Levels: `RUST_LOG`.
    #[serde(default)]
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitoringConfig {
    /// How often the consumer lag of every assigned partition is measured (a query of the
    /// partitions' end offsets). Default 5s.
    #[serde(default = "d_lag_interval", with = "humantime_serde")]
    pub lag_interval: Duration,
    /// `/readyz` fails when there is lag and nothing was consumed for this long (a stuck
    /// consumer). Default 60s.
    #[serde(default = "d_stall_timeout", with = "humantime_serde")]
    pub stall_timeout: Duration,
    /// Count rate, errors and duration of every SERVER and CONSUMER span, before sampling, per
    /// service and operation (`tailsift_red_*`). Default true.
    #[serde(default = "d_true")]
    pub red_metrics: bool,
    /// Services given their own label in the RED and broken-trace metrics; spans of further
    /// services count as service `other`. Default 100.
    #[serde(default = "d_max_services")]
    pub max_services: usize,
    /// Operations per service given their own label in the RED metrics; further ones count as
    /// operation `other`. Default 50.
    #[serde(default = "d_max_operations")]
    pub max_operations_per_service: usize,
}

impl Default for MonitoringConfig {
    fn default() -> Self {
        MonitoringConfig {
            lag_interval: d_lag_interval(),
            stall_timeout: d_stall_timeout(),
            red_metrics: true,
            max_services: d_max_services(),
            max_operations_per_service: d_max_operations(),
        }
    }
}

/// A size in bytes, written as a number or with a unit (`KiB`, `MiB`, `GiB`, `KB`, `MB`,
/// `GB`).
///
/// ```
/// use tailsift::config::ByteSize;
/// assert_eq!("512MiB".parse::<ByteSize>(), Ok(ByteSize(512 << 20)));
/// assert!("12XB".parse::<ByteSize>().unwrap_err().contains("unknown unit"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl std::str::FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a size such as 512MiB"))?;
        let scale: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            other => {
                return Err(format!(
                    "unknown unit `{other}` (supported: B, KiB, MiB, GiB, KB, MB, GB)"
                ))
            }
        };
        n.checked_mul(scale)
            .map(ByteSize)
            .ok_or_else(|| format!("`{s}` is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a size such as 512MiB, or a number of bytes")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(n))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<ByteSize, E> {
                u64::try_from(n)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("{n} is not a size (sizes are not negative)")))
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<ByteSize, E> {
                Err(E::custom(format!(
                    "{n} is not a size: a whole number of bytes, or a size such as 512MiB"
                )))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<ByteSize, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_group() -> String {
    "tailsift".into()
}
fn default_commit_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_max_message_bytes() -> usize {
    1_000_000
}
fn default_rules_dir() -> PathBuf {
    PathBuf::from("rules")
}
fn d_poll_interval() -> Duration {
    Duration::from_secs(10)
}
fn d_rule_attr() -> String {
    "tailsift.rule".into()
}
fn d_rate_attr() -> String {
    "tailsift.sample_rate".into()
}
fn d_shadow_attr() -> String {
    "tailsift.shadow".into()
}
fn d_decision_wait() -> Duration {
    Duration::from_secs(10)
}
fn d_root_grace() -> Duration {
    Duration::from_secs(2)
}
fn d_max_trace_age() -> Duration {
    Duration::from_secs(60)
}
fn d_max_spans() -> u32 {
    10_000
}
fn d_max_trace_bytes() -> ByteSize {
    ByteSize(16 << 20)
}
fn d_high_watermark() -> f64 {
    0.9
}
fn d_low_watermark() -> f64 {
    0.8
}
fn d_cache_bytes() -> ByteSize {
    ByteSize(64 << 20)
}
fn d_cache_ttl() -> Duration {
    Duration::from_secs(300)
}
fn d_read_back_timeout() -> Duration {
    Duration::from_secs(30)
}
fn d_lag_interval() -> Duration {
    Duration::from_secs(5)
}
fn d_stall_timeout() -> Duration {
    Duration::from_secs(60)
}
fn d_max_services() -> usize {
    100
}
fn d_max_operations() -> usize {
    50
}
fn d_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}

impl Config {
    /// Reads, parses and checks a config file; `TAILSIFT_BROKERS` overrides the brokers and
    /// `TAILSIFT_GROUP_INSTANCE_ID` the static membership id.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Self::parse(path, &text)?;
        config.apply_env(|name| std::env::var(name).ok());
        config.resolve_secrets(path, &|name: &str| std::env::var(name).ok(), &|p: &Path| {
            std::fs::read_to_string(p)
        })?;
        Ok(config)
    }

    /// Replaces `${env:NAME}` and `${file:/path}` values in the property maps, remembering
    /// which were secrets. Errors name the map and property, never a value.
    pub fn resolve_secrets(
        &mut self,
        path: &Path,
        env: &impl Fn(&str) -> Option<String>,
        read: &impl Fn(&Path) -> std::io::Result<String>,
    ) -> Result<(), ConfigError> {
        let k = &mut self.kafka;
        for (name, map) in [
            ("kafka.properties", &mut k.properties),
            ("kafka.consumer_properties", &mut k.consumer_properties),
            ("kafka.producer_properties", &mut k.producer_properties),
        ] {
            for (key, value) in map.iter_mut() {
                let resolved =
                    secrets::resolve(value, env, read).map_err(|message| ConfigError::Invalid {
                        path: path.to_path_buf(),
                        key: name,
                        message: format!("`{key}`: {message}"),
                    })?;
                if let Some(v) = resolved {
                    *value = v;
                    k.resolved_secrets.insert(key.clone());
                }
            }
        }
        Ok(())
    }

    /// Applies the environment overrides, read through `var`; an empty value overrides nothing.
    fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) {
        let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        if let Some(brokers) = set(BROKERS_ENV) {
            self.kafka.brokers = brokers;
        }
        if let Some(id) = set(GROUP_INSTANCE_ID_ENV) {
            self.kafka.group_instance_id = Some(id.trim().to_string());
        }
    }

    /// Parses and checks config text; `path` only names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let config: Config = crate::yaml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        config.check(path)?;
        Ok(config)
    }

    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            message,
        };
        let k = &self.kafka;
        if k.brokers.trim().is_empty() {
            return Err(invalid(
                "kafka.brokers",
                "must name at least one broker".into(),
            ));
        }
        if k.input_topics.is_empty() || k.input_topics.iter().any(|t| t.trim().is_empty()) {
            return Err(invalid(
                "kafka.input_topics",
                "must list at least one non-empty topic".into(),
            ));
        }
        if let Some(t) = k
            .input_encodings
            .keys()
            .find(|t| !k.input_topics.contains(t))
        {
            return Err(invalid(
                "kafka.input_encodings",
                format!("`{t}` is not one of kafka.input_topics"),
            ));
        }
        if k.output_topic.trim().is_empty() {
            return Err(invalid("kafka.output_topic", "must not be empty".into()));
        }
        if k.input_topics.contains(&k.output_topic) {
            return Err(invalid(
                "kafka.output_topic",
                format!(
                    "`{}` is also an input topic: kept traces would be read again",
                    k.output_topic
                ),
            ));
        }
        if let Some(d) = &k.dead_letter_topic {
            if d.trim().is_empty() || k.input_topics.contains(d) || *d == k.output_topic {
                return Err(invalid(
                    "kafka.dead_letter_topic",
                    format!("`{d}` must be a topic of its own (not empty, input or output)"),
                ));
            }
        }
        if let Some(t) = self.decision_log_topics() {
            if k.input_topics.len() > 1
                && !k.decision_topic.as_deref().is_none_or(|d| {
                    d.contains(crate::kafka::decision_log::topics::TOPIC_PLACEHOLDER)
                })
            {
                return Err(invalid(
                    "kafka.decision_topic",
                    "with several input topics it must contain `{topic}`: each input topic needs a log of its own".into(),
                ));
            }
            for input in &k.input_topics {
                let name = t.log_of(input);
                if let Err(why) = crate::kafka::decision_log::topics::check_topic_name(&name) {
                    let from = if k.decision_topic.is_none() {
                        " (derived from kafka.group_id: set kafka.decision_topic)"
                    } else {
                        ""
                    };
                    return Err(invalid(
                        "kafka.decision_topic",
                        format!("not a valid topic name{from}: {why}"),
                    ));
                }
                if k.input_topics.contains(&name)
                    || name == k.output_topic
                    || k.dead_letter_topic.as_deref() == Some(name.as_str())
                {
                    return Err(invalid(
                        "kafka.decision_topic",
                        format!("`{name}` must be a topic of its own (not an input, the output or the dead-letter topic)"),
                    ));
                }
            }
        }
        if k.max_message_bytes < 1024 {
            return Err(invalid(
                "kafka.max_message_bytes",
                format!("{} is too small (at least 1024)", k.max_message_bytes),
            ));
        }
        if k.commit_interval.is_zero() {
            return Err(invalid("kafka.commit_interval", "must be above 0".into()));
        }
        for (key, managed) in [
            ("group.id", "kafka.group_id"),
            ("group.instance.id", "kafka.group_instance_id"),
            ("bootstrap.servers", "kafka.brokers"),
            (
                "enable.auto.commit",
                "tailsift (it commits only safe offsets)",
            ),
            (
                "enable.auto.offset.store",
                "tailsift (it commits only safe offsets)",
            ),
        ] {
            if k.properties.contains_key(key) || k.consumer_properties.contains_key(key) {
                return Err(invalid(
                    "kafka.properties",
                    format!("`{key}` is set by {managed}, not here"),
                ));
            }
        }
        let c = &self.completion;
        if c.decision_wait.is_zero() {
            return Err(invalid(
                "completion.decision_wait",
                "must be above 0".into(),
            ));
        }
        if c.max_trace_age < c.decision_wait.min(c.root_grace) {
            return Err(invalid(
                "completion.max_trace_age",
                "must be at least the smaller of decision_wait and root_grace".into(),
            ));
        }
        if c.root_grace > c.max_trace_age {
            return Err(invalid(
                "completion.root_grace",
                format!(
                    "{} is longer than completion.max_trace_age ({}): every trace would be \
                     decided by its age before its root's grace ran out; make it at most \
                     max_trace_age",
                    humantime_serde::re::humantime::format_duration(c.root_grace),
                    humantime_serde::re::humantime::format_duration(c.max_trace_age)
                ),
            ));
        }
        if c.max_spans_per_trace == 0 {
            return Err(invalid(
                "completion.max_spans_per_trace",
                "must be at least 1".into(),
            ));
        }
        let max_trace_bytes = c.max_trace_bytes.unwrap_or(d_max_trace_bytes()).0;
        if max_trace_bytes < 1024 {
            return Err(invalid(
                "completion.max_trace_bytes",
                format!("{max_trace_bytes} bytes is too small (at least 1KiB)"),
            ));
        }
        let b = &self.buffer;
        if let Some(ByteSize(max)) = b.max_bytes {
            if max < (1 << 20) {
                return Err(invalid(
                    "buffer.max_bytes",
                    format!("{max} bytes is too small (at least 1MiB)"),
                ));
            }
            if c.max_trace_bytes.is_some_and(|t| t.0 > max / 2) {
                return Err(invalid(
                    "completion.max_trace_bytes",
                    format!(
                        "{} bytes is more than half of buffer.max_bytes ({max}): one trace could starve the others",
                        max_trace_bytes
                    ),
                ));
            }
        }
        let fraction = |v: f64| v > 0.0 && v <= 1.0;
        if !fraction(b.high_watermark) {
            return Err(invalid(
                "buffer.high_watermark",
                format!(
                    "{} is not a fraction of the budget in (0, 1]",
                    b.high_watermark
                ),
            ));
        }
        let mon = &self.monitoring;
        if mon.lag_interval < Duration::from_millis(100) {
            return Err(invalid(
                "monitoring.lag_interval",
                "must be at least 100ms".into(),
            ));
        }
        if mon.max_services == 0 || mon.max_operations_per_service == 0 {
            return Err(invalid(
                "monitoring.max_services",
                "max_services and max_operations_per_service must be at least 1".into(),
            ));
        }
        if mon.stall_timeout <= mon.lag_interval {
            return Err(invalid(
                "monitoring.stall_timeout",
                "must be longer than monitoring.lag_interval".into(),
            ));
        }
        if !fraction(b.low_watermark) || b.low_watermark >= b.high_watermark {
            return Err(invalid(
                "buffer.low_watermark",
                format!(
                    "{} must be above 0 and below buffer.high_watermark ({})",
                    b.low_watermark, b.high_watermark
                ),
            ));
        }
        if let Some(m) = &self.rules.marking {
            let names = [
                &m.rule_attribute,
                &m.sample_rate_attribute,
                &m.shadow_attribute,
            ];
            let set: Vec<_> = names.iter().filter(|n| !n.trim().is_empty()).collect();
            if (1..set.len()).any(|i| set[..i].contains(&set[i])) {
                return Err(invalid(
                    "rules.marking",
                    "the attribute names must differ from each other".into(),
                ));
            }
        }
        let dc = &self.decision_cache;
        let holds = crate::decision::DecisionCache::capacity_for_bytes(dc.max_bytes.0);
        if holds < 16 {
            return Err(invalid(
                "decision_cache.max_bytes",
                format!(
                    "{} bytes is too small: room for {holds} decisions, at least 16 decisions \
                     are needed ({} bytes each)",
                    dc.max_bytes.0,
                    crate::decision::CACHE_ENTRY_BYTES
                ),
            ));
        }
        let st = &self.stress;
        if st.exit_lag >= st.enter_lag {
            return Err(invalid(
                "stress.exit_lag",
                format!(
                    "{} must be below stress.enter_lag ({})",
                    st.exit_lag, st.enter_lag
                ),
            ));
        }
        if st.sample_rate == 0 {
            return Err(invalid("stress.sample_rate", "must be at least 1".into()));
        }
        if dc.read_back_timeout.is_zero() {
            return Err(invalid(
                "decision_cache.read_back_timeout",
                "must be above 0".into(),
            ));
        }
        if dc.ttl.is_zero() {
            return Err(invalid(
                "decision_cache.ttl",
                "must be above 0 (0s would forget every decision at once, and late spans would \
                 start new traces); the default is 5m"
                    .into(),
            ));
        }
        if dc.max_entries == Some(0) {
            return Err(invalid(
                "decision_cache.max_entries",
                "must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The decision log's topic names, unless it is turned off (`kafka.decision_topic: ""`).
    pub fn decision_log_topics(&self) -> Option<crate::kafka::decision_log::LogTopics> {
        let k = &self.kafka;
        let template = match &k.decision_topic {
            Some(t) if t.trim().is_empty() => return None,
            Some(t) => t.trim().to_string(),
            None => format!(
                "{}.decisions.{}",
                k.group_id,
                crate::kafka::decision_log::topics::TOPIC_PLACEHOLDER
            ),
        };
        Some(crate::kafka::decision_log::LogTopics::new(&template))
    }

    /// The encoding of input topic `topic`.
    pub fn encoding_of(&self, topic: &str) -> Encoding {
        let k = &self.kafka;
        k.input_encodings
            .get(topic)
            .copied()
            .unwrap_or(k.input_encoding)
    }

    /// The rule options every (re)load of the rules uses.
    pub fn rule_options(&self) -> crate::rules::RuleOptions {
        crate::rules::RuleOptions {
            salt: self.rules.salt.clone(),
            mode: match self.rules.mode {
                RulesMode::Enforce => crate::rules::Mode::Enforce,
                RulesMode::Shadow => crate::rules::Mode::Shadow,
            },
            marking: self.rules.marking.as_ref().map(MarkingConfig::marking),
        }
    }

    /// The completion settings as the buffer uses them.
    pub fn completion(&self) -> Completion {
        let c = &self.completion;
        Completion {
            decision_wait: c.decision_wait,
            root_grace: c.root_grace,
            max_trace_age: c.max_trace_age,
            max_spans_per_trace: c.max_spans_per_trace,
            max_trace_bytes: c
                .max_trace_bytes
                .unwrap_or(d_max_trace_bytes())
                .0
                .min(u64::from(u32::MAX)) as u32,
        }
    }

    /// The memory budget: `buffer.max_bytes`, or derived from the container limit found under
    /// `/sys/fs/cgroup` (see [`crate::memory::resolve_budget`]).
    pub fn budget(&self) -> (Budget, BudgetSource) {
        self.budget_from(Path::new("/sys/fs/cgroup"))
    }

    /// [`Config::budget`] with the cgroup filesystem at `cgroup_root`.
    pub fn budget_from(&self, cgroup_root: &Path) -> (Budget, BudgetSource) {
        let b = &self.buffer;
        let (max, source) = resolve_budget(b.max_bytes.map(|m| m.0), cgroup_root);
        (Budget::new(max, b.high_watermark, b.low_watermark), source)
    }

    /// The decision cache's bound in bytes (`max_entries`, when set, lowers it).
    pub fn decision_cache_bytes(&self) -> u64 {
        let dc = &self.decision_cache;
        match dc.max_entries {
            Some(n) => dc
                .max_bytes
                .0
                .min(n.saturating_mul(crate::decision::CACHE_ENTRY_BYTES)),
            None => dc.max_bytes.0,
        }
    }

    /// A configuration for the given brokers and topics with every other setting at its
    /// default (the demo and the tests start from this).
    pub fn for_brokers(brokers: &str, input: &str, output: &str, rules_dir: &Path) -> Self {
        Config {
            kafka: KafkaConfig {
                brokers: brokers.into(),
                input_topics: vec![input.into()],
                input_encoding: Encoding::default(),
                input_encodings: BTreeMap::new(),
                output_topic: output.into(),
                dead_letter_topic: None,
                decision_topic: None,
                group_id: default_group(),
                group_instance_id: None,
                properties: BTreeMap::new(),
                consumer_properties: BTreeMap::new(),
                producer_properties: BTreeMap::new(),
                commit_interval: default_commit_interval(),
                max_message_bytes: default_max_message_bytes(),
                resolved_secrets: BTreeSet::new(),
            },
            rules: RulesConfig {
                dir: rules_dir.to_path_buf(),
                ..RulesConfig::default()
            },
            completion: CompletionConfig::default(),
            buffer: BufferConfig::default(),
            decision_cache: DecisionCacheConfig::default(),
            http: HttpConfig::default(),
            monitoring: MonitoringConfig::default(),
            log: LogConfig::default(),
            stress: StressConfig::default(),
            shutdown_timeout: default_shutdown_timeout(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "kafka:\n  brokers: b:9092\n  input_topics: [in]\n  output_topic: out\n";

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(Path::new("t.yaml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.completion.decision_wait, Duration::from_secs(10));
        assert_eq!(c.completion.root_grace, Duration::from_secs(2));
        assert_eq!(c.completion.max_trace_age, Duration::from_secs(60));
        assert_eq!(c.completion.max_spans_per_trace, 10_000);
        assert_eq!(
            c.buffer.max_bytes, None,
            "derived from the container at start"
        );
        assert_eq!(c.completion().max_trace_bytes, 16 << 20);
        let small = parse(&format!("{MINIMAL}buffer:\n  max_bytes: 4MiB\n")).unwrap();
        assert_eq!(
            small.completion().max_trace_bytes,
            16 << 20,
            "lowered to half the budget at start, not an error"
        );
        assert_eq!(
            (c.buffer.high_watermark, c.buffer.low_watermark),
            (0.9, 0.8)
        );
        assert_eq!(c.decision_cache.max_bytes, ByteSize(64 << 20));
        assert_eq!(c.decision_cache.max_entries, None);
        assert!(c.stress.enabled);
        assert_eq!(
            (c.stress.enter_lag, c.stress.exit_lag, c.stress.sample_rate),
            (500_000, 50_000, 10)
        );
        assert_eq!(c.stress.enter_after, Duration::from_secs(60));
        assert_eq!(c.kafka.group_id, "tailsift");
        assert_eq!(c.http.listen.port(), 8080);
    }

    #[test]
    fn rejects_unknown_keys_and_bad_values_naming_the_key() {
        let cases = [
            (format!("{MINIMAL}bogus: 1\n"), "5:1: `bogus`: unknown key `bogus`"),
            (
                format!("{MINIMAL}completion:\n  decison_wait: 5s\n"),
                "`completion.decison_wait`: unknown key `decison_wait`, did you mean `decision_wait`?",
            ),
            (
                format!("{MINIMAL}completion:\n  decision_wait: soon\n"),
                "decision_wait",
            ),
            (
                format!("{MINIMAL}buffer:\n  max_bytes: 12XB\n"),
                "unknown unit `XB`",
            ),
            (
                "kafka:\n  brokers: b\n  input_topics: [t]\n  output_topic: t\n".to_string(),
                "`kafka.output_topic`",
            ),
            (
                format!("{MINIMAL}  properties:\n    group.id: x\n"),
                "`group.id` is set by kafka.group_id",
            ),
            (
                "kafka:\n  brokers: b\n  input_topics: []\n  output_topic: o\n".to_string(),
                "kafka.input_topics",
            ),
            (
                format!("{MINIMAL}  dead_letter_topic: in\n"),
                "`kafka.dead_letter_topic`: `in` must be a topic of its own",
            ),
            (
                format!("{MINIMAL}  input_encoding: json\n"),
                "unknown value `json` (supported: otlp_proto, otlp_json)",
            ),
            (
                format!("{MINIMAL}  input_encodings:\n    other: otlp_json\n"),
                "`other` is not one of kafka.input_topics",
            ),
            (
                format!("{MINIMAL}monitoring:\n  lag_interval: 10s\n  stall_timeout: 5s\n"),
                "`monitoring.stall_timeout`",
            ),
            (
                format!("{MINIMAL}monitoring:\n  lag_interval: 1ms\n"),
                "`monitoring.lag_interval`",
            ),
            (
                format!("{MINIMAL}buffer:\n  max_bytes: 512KiB\n"),
                "at least 1MiB",
            ),
            (
                format!(
                    "{MINIMAL}buffer:\n  max_bytes: 8MiB\ncompletion:\n  max_trace_bytes: 5MiB\n"
                ),
                "more than half of buffer.max_bytes",
            ),
            (
                format!("{MINIMAL}buffer:\n  high_watermark: 1.5\n"),
                "`buffer.high_watermark`",
            ),
            (
                format!("{MINIMAL}buffer:\n  high_watermark: 0.7\n  low_watermark: 0.8\n"),
                "below buffer.high_watermark",
            ),
            (
                format!("{MINIMAL}stress:\n  enter_lag: 100\n  exit_lag: 100\n"),
                "`stress.exit_lag`",
            ),
            (
                format!("{MINIMAL}stress:\n  sample_rate: 0\n"),
                "`stress.sample_rate`",
            ),
            (
                format!("{MINIMAL}decision_cache:\n  max_entries: 0\n"),
                "`decision_cache.max_entries`",
            ),
            (
                format!("{MINIMAL}decision_cache:\n  max_bytes: 100\n"),
                "at least 16 decisions",
            ),
            (
                format!("{MINIMAL}monitoring:\n  max_services: 0\n"),
                "`monitoring.max_services`",
            ),
            (
                format!("{MINIMAL}monitoring:\n  red_metrics: maybe\n"),
                "red_metrics",
            ),
            (
                format!("{MINIMAL}log:\n  format: xml\n"),
                "unknown value `xml` (supported: text, json)",
            ),
        ];
        for (text, want) in cases {
            let err = parse(&text).expect_err(&text);
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
    }

    #[test]
    fn the_example_config_in_the_repository_is_valid_and_matches_the_defaults() {
        let path = Path::new("tailsift.example.yaml");
        let text = std::fs::read_to_string(path).unwrap();
        let example = Config::parse(path, &text).unwrap();
        let minimal = parse(MINIMAL).unwrap();
        assert_eq!(example.completion(), minimal.completion());
        assert_eq!(example.buffer.max_bytes, minimal.buffer.max_bytes);
        assert_eq!(example.buffer.high_watermark, minimal.buffer.high_watermark);
        assert_eq!(example.buffer.low_watermark, minimal.buffer.low_watermark);
        assert_eq!(
            example.decision_cache_bytes(),
            minimal.decision_cache_bytes()
        );
        assert_eq!(example.kafka.commit_interval, minimal.kafka.commit_interval);
        assert_eq!(example.shutdown_timeout, minimal.shutdown_timeout);
        assert_eq!(example.http.listen, minimal.http.listen);
        assert_eq!(
            example.monitoring.lag_interval,
            minimal.monitoring.lag_interval
        );
        assert_eq!(
            example.monitoring.stall_timeout,
            minimal.monitoring.stall_timeout
        );
        assert!(example.monitoring.red_metrics && minimal.monitoring.red_metrics);
        assert_eq!(example.log.format, LogFormat::Text);
        assert_eq!(minimal.log.format, LogFormat::Text);
        let json = parse(&format!("{MINIMAL}log:\n  format: json\n")).unwrap();
        assert_eq!(json.log.format, LogFormat::Json);
        assert_eq!(
            example.monitoring.max_services,
            minimal.monitoring.max_services
        );
        assert_eq!(
            example.monitoring.max_operations_per_service,
            minimal.monitoring.max_operations_per_service
        );
    }

    #[test]
    fn environment_overrides_brokers_and_group_instance_id_but_not_with_empty_values() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let mut c = parse(&format!("{MINIMAL}  group_instance_id: from-file\n")).unwrap();
        c.apply_env(env(&[]));
        assert_eq!(c.kafka.brokers, "b:9092");
        assert_eq!(c.kafka.group_instance_id.as_deref(), Some("from-file"));

        c.apply_env(env(&[
            (BROKERS_ENV, "k1:9092,k2:9092"),
            (GROUP_INSTANCE_ID_ENV, "tailsift-2"),
        ]));
        assert_eq!(c.kafka.brokers, "k1:9092,k2:9092");
        assert_eq!(c.kafka.group_instance_id.as_deref(), Some("tailsift-2"));

        let mut c = parse(MINIMAL).unwrap();
        c.apply_env(env(&[(BROKERS_ENV, " "), (GROUP_INSTANCE_ID_ENV, "")]));
        assert_eq!(c.kafka.brokers, "b:9092");
        assert_eq!(c.kafka.group_instance_id, None);
    }

    #[test]
    fn input_encoding_defaults_to_proto_and_is_overridden_per_topic() {
        let c = parse(MINIMAL).unwrap();
        let topic = c.kafka.input_topics[0].clone();
        assert_eq!(c.encoding_of(&topic), Encoding::OtlpProto);
        let text = format!("{MINIMAL}  input_encoding: otlp_json\n");
        assert_eq!(
            parse(&text).unwrap().encoding_of(&topic),
            Encoding::OtlpJson
        );
        let text = format!(
            "{MINIMAL}  input_encoding: otlp_json\n  input_encodings:\n    {topic}: otlp_proto\n"
        );
        assert_eq!(
            parse(&text).unwrap().encoding_of(&topic),
            Encoding::OtlpProto
        );
    }

    #[test]
    fn the_budget_and_the_decision_cache_bound_resolve_from_config_or_container() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("memory.max"), "2147483648\n").unwrap();
        let derived = parse(MINIMAL).unwrap();
        let (b, source) = derived.budget_from(dir.path());
        assert_eq!(source, BudgetSource::CgroupV2 { limit: 2 << 30 });
        assert_eq!(b, Budget::new(1 << 30, 0.9, 0.8));
        let set = parse(&format!(
            "{MINIMAL}buffer:\n  max_bytes: 100MiB\n  high_watermark: 0.8\n  low_watermark: 0.5\ndecision_cache:\n  max_entries: 1000\n"
        ))
        .unwrap();
        let (b, source) = set.budget_from(dir.path());
        assert_eq!(source, BudgetSource::Configured);
        assert_eq!(
            (b.max_bytes, b.pause_above, b.resume_below),
            (100 << 20, 80 << 20, 50 << 20)
        );
        assert_eq!(
            set.decision_cache_bytes(),
            1000 * crate::decision::CACHE_ENTRY_BYTES
        );
        assert_eq!(derived.decision_cache_bytes(), 64 << 20);
    }

    #[test]
    fn rules_settings_parse_and_marking_names_must_differ() {
        let c = parse(&format!(
            "{MINIMAL}rules:\n  mode: shadow\n  marking:\n    rule_attribute: sampling.rule\n    tracestate: false\n"
        ))
        .unwrap();
        let o = c.rule_options();
        assert_eq!(o.mode, crate::rules::Mode::Shadow);
        let m = o.marking.unwrap();
        assert_eq!(m.rule_attribute.as_deref(), Some("sampling.rule"));
        assert_eq!(
            m.sample_rate_attribute.as_deref(),
            Some("tailsift.sample_rate")
        );
        assert!(!m.tracestate);
        assert!(parse(MINIMAL).unwrap().rule_options().marking.is_none());
        assert!(parse(MINIMAL).unwrap().rules.reload);
        let err = parse(&format!(
            "{MINIMAL}rules:\n  marking:\n    rule_attribute: x\n    shadow_attribute: x\n"
        ))
        .unwrap_err();
        assert!(err.contains("rules.marking"), "{err}");
        let err = parse(&format!("{MINIMAL}rules:\n  mode: dry\n")).unwrap_err();
        assert!(err.contains("unknown value `dry`"), "{err}");
        let err = parse(&format!("{MINIMAL}rules:\n  marking:\n    rule_attr: x\n")).unwrap_err();
        assert!(err.contains("unknown key `rule_attr`"), "{err}");
    }

    #[test]
    fn the_kafka_settings_line_is_readable_and_redacted() {
        let mut c = parse(&format!(
            "{MINIMAL}  properties:\n    security.protocol: SASL_SSL\n    sasl.password: hunter2\n"
        ))
        .unwrap();
        c.kafka.resolved_secrets.insert("sasl.password".into());
        let line = c.kafka.settings_line();
        assert_eq!(
            line,
            "brokers=b:9092 group=tailsift commit_interval=1s max_message_bytes=1000000 \
             properties={sasl.password=<redacted>, security.protocol=SASL_SSL}"
        );
    }

    #[test]
    fn byte_sizes_accept_units() {
        assert_eq!("512MiB".parse::<ByteSize>(), Ok(ByteSize(512 << 20)));
        assert_eq!("2GB".parse::<ByteSize>(), Ok(ByteSize(2_000_000_000)));
        assert_eq!("1024".parse::<ByteSize>(), Ok(ByteSize(1024)));
        assert!("lots".parse::<ByteSize>().is_err());
    }
}
