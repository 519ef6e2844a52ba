//! `tailsift.yaml`: what an operator writes, checked once and turned into [`Settings`].
//!
//! - [`sections`]: one struct per section; every field's `///` doc is its user documentation
//!   (the README's config reference follows it), and each section's `Default` is the one
//!   place its defaults are written.
//! - [`validate`]: every value and combination checked, naming the key; the runtime
//!   [`Settings`] derived from a checked file.
//! - [`bytesize`]: sizes such as `512MiB`.
//!
//! Unknown keys are rejected, so that a typo is an error rather than a silent default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::secrets;

pub mod bytesize;
pub mod sections;
#[cfg(test)]
mod tests;
pub mod validate;

pub use bytesize::ByteSize;
pub use sections::*;
pub use validate::Settings;

/// Environment variable that overrides `kafka.brokers`.
pub const BROKERS_ENV: &str = "TAILSIFT_BROKERS";
/// Environment variable that sets `kafka.group_instance_id` (static membership), so that each
/// pod of a StatefulSet can take its own name from the downward API while sharing one config
/// file.
pub const GROUP_INSTANCE_ID_ENV: &str = "TAILSIFT_GROUP_INSTANCE_ID";

/// `shutdown_timeout` when it is not set.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a configuration file was refused. Each names the file; `Invalid` also the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not YAML of the expected shape (unknown key, wrong type...).
    #[error("{}{}{source}", path.display(), if source.line > 0 { ":" } else { ": " })]
    Parse {
        /// The file.
        path: PathBuf,
        /// Where and why.
        #[source]
        source: crate::yaml::YamlError,
    },
    /// A value, or a combination of values, that cannot work.
    #[error("{path}: `{key}`: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key, as a dotted path (`completion.root_grace`).
        key: &'static str,
        /// What is wrong, and what would be right.
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
    /// The file this configuration was read from, naming it in errors (`(built in)` for one
    /// made by [`Config::for_brokers`]).
    #[serde(skip)]
    pub path: PathBuf,
}

fn default_shutdown_timeout() -> Duration {
    DEFAULT_SHUTDOWN_TIMEOUT
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
        let mut config: Config =
            crate::yaml::from_str(text).map_err(|source| ConfigError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        config.path = path.to_path_buf();
        config.validate()?;
        Ok(config)
    }

    /// A configuration for the given brokers and topics with every other setting at its
    /// default (the demo and the tests start from this).
    pub fn for_brokers(brokers: &str, input: &str, output: &str, rules_dir: &Path) -> Self {
        Config {
            kafka: KafkaConfig {
                brokers: brokers.into(),
                input_topics: vec![input.into()],
                output_topic: output.into(),
                ..KafkaConfig::default()
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
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            path: PathBuf::from("(built in)"),
        }
    }
}
