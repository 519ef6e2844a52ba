//! Is a parsed configuration sound, and what does it mean at runtime.
//!
//! [`Config::validate`] is the one way from a configuration to the [`Settings`] the pipeline
//! runs with: it refuses every invalid value or combination, naming the key, and derives the
//! runtime types once, so that no invalid state reaches the pipeline (a `Config` built or
//! changed in code goes through it too). One function per section keeps each check next to
//! its neighbours.

use std::path::Path;
use std::time::Duration;

use super::{ByteSize, Config, ConfigError, KafkaConfig, RulesMode};
use crate::buffer::Completion;
use crate::decision::{DecisionCache, CACHE_ENTRY_BYTES};
use crate::kafka::decision_log::topics::{check_topic_name, TOPIC_PLACEHOLDER};
use crate::kafka::decision_log::LogTopics;
use crate::memory::{resolve_budget, Budget, BudgetSource};
use crate::rules::{Mode, RuleOptions};

/// What is wrong, and with which key.
struct Invalid(&'static str, String);

type Checked = Result<(), Invalid>;

/// Fails with `message` for `key` unless `ok`.
fn ensure(ok: bool, key: &'static str, message: impl FnOnce() -> String) -> Checked {
    if ok {
        Ok(())
    } else {
        Err(Invalid(key, message()))
    }
}

fn human(d: Duration) -> impl std::fmt::Display {
    humantime_serde::re::humantime::format_duration(d)
}

/// Checks every section; the first finding is the error.
fn check(config: &Config) -> Result<(), ConfigError> {
    kafka(config)
        .and_then(|()| decision_log(config))
        .and_then(|()| completion_and_buffer(config))
        .and_then(|()| monitoring(config))
        .and_then(|()| rules(config))
        .and_then(|()| decision_cache(config))
        .and_then(|()| stress(config))
        .map_err(|Invalid(key, message)| ConfigError::Invalid {
            path: config.path.clone(),
            key,
            message,
        })
}

fn kafka(config: &Config) -> Checked {
    let k = &config.kafka;
    ensure(!k.brokers.trim().is_empty(), "kafka.brokers", || {
        "must name at least one broker".into()
    })?;
    ensure(
        !k.input_topics.is_empty() && k.input_topics.iter().all(|t| !t.trim().is_empty()),
        "kafka.input_topics",
        || "must list at least one non-empty topic".into(),
    )?;
    if let Some(t) = k
        .input_encodings
        .keys()
        .find(|t| !k.input_topics.contains(t))
    {
        return Err(Invalid(
            "kafka.input_encodings",
            format!("`{t}` is not one of kafka.input_topics"),
        ));
    }
    ensure(
        !k.output_topic.trim().is_empty(),
        "kafka.output_topic",
        || "must name a topic".into(),
    )?;
    ensure(
        !k.input_topics.contains(&k.output_topic),
        "kafka.output_topic",
        || {
            format!(
                "`{}` is also an input topic: kept traces would be read again",
                k.output_topic
            )
        },
    )?;
    if let Some(d) = &k.dead_letter_topic {
        ensure(
            !(d.trim().is_empty() || k.input_topics.contains(d) || *d == k.output_topic),
            "kafka.dead_letter_topic",
            || format!("`{d}` must be a topic of its own (not empty, input or output)"),
        )?;
    }
    ensure(
        k.max_message_bytes >= 1024,
        "kafka.max_message_bytes",
        || format!("{} is too small (at least 1024)", k.max_message_bytes),
    )?;
    ensure(
        !k.commit_interval.is_zero(),
        "kafka.commit_interval",
        || "must be above 0".into(),
    )?;
    const MANAGED: &str = "tailsift (it commits only safe offsets)";
    for (key, managed) in [
        ("group.id", "kafka.group_id"),
        ("group.instance.id", "kafka.group_instance_id"),
        ("bootstrap.servers", "kafka.brokers"),
        ("enable.auto.commit", MANAGED),
        ("enable.auto.offset.store", MANAGED),
    ] {
        ensure(
            !(k.properties.contains_key(key) || k.consumer_properties.contains_key(key)),
            "kafka.properties",
            || format!("`{key}` is set by {managed}, not here"),
        )?;
    }
    Ok(())
}

fn decision_log(config: &Config) -> Checked {
    let k = &config.kafka;
    let Some(topics) = log_topics(k) else {
        return Ok(());
    };
    ensure(
        k.input_topics.len() == 1
            || k.decision_topic
                .as_deref()
                .is_none_or(|d| d.contains(TOPIC_PLACEHOLDER)),
        "kafka.decision_topic",
        || {
            "with several input topics it must contain `{topic}`: each input topic needs a log \
             of its own"
                .into()
        },
    )?;
    for input in &k.input_topics {
        let name = topics.log_of(input);
        if let Err(why) = check_topic_name(&name) {
            let from = if k.decision_topic.is_none() {
                " (derived from kafka.group_id: set kafka.decision_topic)"
            } else {
                ""
            };
            return Err(Invalid(
                "kafka.decision_topic",
                format!("not a valid topic name{from}: {why}"),
            ));
        }
        ensure(
            !(k.input_topics.contains(&name)
                || name == k.output_topic
                || k.dead_letter_topic.as_deref() == Some(name.as_str())),
            "kafka.decision_topic",
            || {
                format!(
                    "`{name}` must be a topic of its own (not an input, the output or the \
                     dead-letter topic)"
                )
            },
        )?;
    }
    Ok(())
}

fn completion_and_buffer(config: &Config) -> Checked {
    let c = &config.completion;
    ensure(
        !c.decision_wait.is_zero(),
        "completion.decision_wait",
        || "must be above 0".into(),
    )?;
    ensure(
        c.max_trace_age >= c.decision_wait.min(c.root_grace),
        "completion.max_trace_age",
        || "must be at least the smaller of decision_wait and root_grace".into(),
    )?;
    ensure(
        c.root_grace <= c.max_trace_age,
        "completion.root_grace",
        || {
            format!(
                "{} is longer than completion.max_trace_age ({}): every trace would be decided by \
             its age before its root's grace ran out; make it at most max_trace_age",
                human(c.root_grace),
                human(c.max_trace_age)
            )
        },
    )?;
    ensure(
        c.max_spans_per_trace > 0,
        "completion.max_spans_per_trace",
        || "must be at least 1".into(),
    )?;
    let max_trace_bytes = c.max_trace_bytes();
    ensure(
        max_trace_bytes >= 1024,
        "completion.max_trace_bytes",
        || format!("{max_trace_bytes} bytes is too small (at least 1KiB)"),
    )?;
    let b = &config.buffer;
    if let Some(ByteSize(max)) = b.max_bytes {
        ensure(max >= 1 << 20, "buffer.max_bytes", || {
            format!("{max} bytes is too small (at least 1MiB)")
        })?;
        ensure(
            c.max_trace_bytes.is_none_or(|t| t.0 <= max / 2),
            "completion.max_trace_bytes",
            || {
                format!(
                    "{max_trace_bytes} bytes is more than half of buffer.max_bytes ({max}): one \
                     trace could starve the others"
                )
            },
        )?;
    }
    let fraction = |v: f64| v > 0.0 && v <= 1.0;
    ensure(fraction(b.high_watermark), "buffer.high_watermark", || {
        format!(
            "{} is not a fraction of the budget in (0, 1]",
            b.high_watermark
        )
    })?;
    ensure(
        fraction(b.low_watermark) && b.low_watermark < b.high_watermark,
        "buffer.low_watermark",
        || {
            format!(
                "{} must be above 0 and below buffer.high_watermark ({})",
                b.low_watermark, b.high_watermark
            )
        },
    )
}

fn monitoring(config: &Config) -> Checked {
    let m = &config.monitoring;
    ensure(
        m.lag_interval >= Duration::from_millis(100),
        "monitoring.lag_interval",
        || "must be at least 100ms".into(),
    )?;
    ensure(
        m.max_services > 0 && m.max_operations_per_service > 0,
        "monitoring.max_services",
        || "max_services and max_operations_per_service must be at least 1".into(),
    )?;
    ensure(
        m.stall_timeout > m.lag_interval,
        "monitoring.stall_timeout",
        || "must be longer than monitoring.lag_interval".into(),
    )
}

fn rules(config: &Config) -> Checked {
    let Some(m) = &config.rules.marking else {
        return Ok(());
    };
    let names = [
        &m.rule_attribute,
        &m.sample_rate_attribute,
        &m.shadow_attribute,
    ];
    let set: Vec<_> = names.iter().filter(|n| !n.trim().is_empty()).collect();
    ensure(
        !(1..set.len()).any(|i| set[..i].contains(&set[i])),
        "rules.marking",
        || "the attribute names must differ from each other".into(),
    )
}

fn decision_cache(config: &Config) -> Checked {
    let dc = &config.decision_cache;
    let holds = DecisionCache::capacity_for_bytes(dc.max_bytes.0);
    ensure(holds >= 16, "decision_cache.max_bytes", || {
        format!(
            "{} bytes is too small: room for {holds} decisions, at least 16 decisions are \
             needed ({CACHE_ENTRY_BYTES} bytes each)",
            dc.max_bytes.0
        )
    })?;
    ensure(
        !dc.read_back_timeout.is_zero(),
        "decision_cache.read_back_timeout",
        || "must be above 0".into(),
    )?;
    ensure(!dc.ttl.is_zero(), "decision_cache.ttl", || {
        "must be above 0 (0s would forget every decision at once, and late spans would start \
         new traces); the default is 5m"
            .into()
    })?;
    ensure(
        dc.max_entries != Some(0),
        "decision_cache.max_entries",
        || "must be at least 1".into(),
    )
}

fn stress(config: &Config) -> Checked {
    let st = &config.stress;
    ensure(st.exit_lag < st.enter_lag, "stress.exit_lag", || {
        format!(
            "{} must be below stress.enter_lag ({})",
            st.exit_lag, st.enter_lag
        )
    })?;
    ensure(st.sample_rate > 0, "stress.sample_rate", || {
        "must be at least 1".into()
    })
}

/// The decision log's topic names, unless it is turned off (`kafka.decision_topic: ""`).
fn log_topics(k: &KafkaConfig) -> Option<LogTopics> {
    let template = match &k.decision_topic {
        Some(t) if t.trim().is_empty() => return None,
        Some(t) => t.trim().to_string(),
        None => format!("{}.decisions.{TOPIC_PLACEHOLDER}", k.group_id),
    };
    Some(LogTopics::new(&template))
}

/// The configuration as the pipeline uses it: runtime types derived once from a checked
/// [`Config`] by [`Config::validate`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Settings {
    /// When a trace is complete, as the buffer takes it. `max_trace_bytes` is not yet
    /// lowered to half the budget (the pipeline does that with the budget it resolves).
    pub completion: Completion,
    /// The options every (re)load of the rules uses.
    pub rule_options: RuleOptions,
    /// The decision log's topics, or `None` when it is off.
    pub decision_log: Option<LogTopics>,
    /// The decision cache's bound in bytes (`max_entries`, when set, lowers it).
    pub decision_cache_bytes: u64,
}

impl Config {
    /// Checks every value and combination, naming the key of the first that cannot work, and
    /// derives the runtime settings.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        check(self)?;
        let c = &self.completion;
        let dc = &self.decision_cache;
        Ok(Settings {
            completion: Completion {
                decision_wait: c.decision_wait,
                root_grace: c.root_grace,
                max_trace_age: c.max_trace_age,
                max_spans_per_trace: c.max_spans_per_trace,
                max_trace_bytes: c.max_trace_bytes().min(u64::from(u32::MAX)) as u32,
            },
            rule_options: RuleOptions {
                salt: self.rules.salt.clone(),
                mode: match self.rules.mode {
                    RulesMode::Enforce => Mode::Enforce,
                    RulesMode::Shadow => Mode::Shadow,
                },
                marking: self.rules.marking.as_ref().map(|m| m.marking()),
                share: Default::default(),
            },
            decision_log: log_topics(&self.kafka),
            decision_cache_bytes: match dc.max_entries {
                Some(n) => dc.max_bytes.0.min(n.saturating_mul(CACHE_ENTRY_BYTES)),
                None => dc.max_bytes.0,
            },
        })
    }

    /// The memory budget: `buffer.max_bytes`, or derived from the container limit found under
    /// `/sys/fs/cgroup` (see [`crate::memory::resolve_budget`]). Not part of [`Settings`]: it
    /// reads the machine.
    pub fn budget(&self) -> (Budget, BudgetSource) {
        self.budget_from(Path::new("/sys/fs/cgroup"))
    }

    /// [`Config::budget`] with the cgroup filesystem at `cgroup_root`.
    pub fn budget_from(&self, cgroup_root: &Path) -> (Budget, BudgetSource) {
        let b = &self.buffer;
        let (max, source) = resolve_budget(b.max_bytes.map(|m| m.0), cgroup_root);
        (Budget::new(max, b.high_watermark, b.low_watermark), source)
    }

    /// The encoding of input topic `topic`.
    pub fn encoding_of(&self, topic: &str) -> crate::otlp::Encoding {
        let k = &self.kafka;
        k.input_encodings
            .get(topic)
            .copied()
            .unwrap_or(k.input_encoding)
    }
}
