//! tailsift: tail-based sampling of OpenTelemetry traces on Kafka.
//!
//! Spans arrive as OTLP protobuf on input topics, are buffered per trace until the trace is
//! complete, are judged by rules written as files, and the kept traces go out on a backend
//! topic. Offsets are committed only once everything below them is decided and delivered.
//!
//! # Layout
//! In the order a span travels; every module is named.
//!
//! **Configuration and rules** (read at start, and at every rule reload):
//! - [`config`]: `tailsift.yaml` parsed by section, validated into the runtime
//!   [`config::Settings`].
//! - [`yaml`]: the one YAML parser and its limits (aliases, duplicate keys, documents), for the
//!   configuration, rule files and case files.
//! - [`secrets`]: `${env:..}`/`${file:..}` property values, and their redaction in logs.
//! - [`rules`]: rule files, compiled conditions, deterministic sampling, `rules test/explain`.
//! - [`redact`]: `redaction.yaml` beside the rules, compiled; forwarded spans' sensitive
//!   attributes removed, masked, hashed or scrubbed at field level on the way out.
//!
//! **The Kafka edge, in** ([`kafka`], one file per stage):
//! - [`kafka::consume`]: the ingest thread: poll, decode or dead-letter, feed the sampler,
//!   pause fetching when the buffer is full (back-pressure), commit on its tick.
//! - [`kafka::rebalance`]: partitions assigned and revoked; [`kafka::partitions`]: the table of
//!   assigned partitions and what to commit; [`kafka::commit`]: the commits themselves.
//! - [`kafka::replay`]: what a newly assigned partition reads back first: its decisions from
//!   the decision log, the heads of traces straddling its commit offset.
//! - [`kafka::lag`]: consumer lag, measured off the ingest thread.
//!
//! **The core, free of Kafka** (tested in paused time):
//! - [`otlp`]: the wire format: decode requests into per-trace span groups, read spans for
//!   the rules, encode kept traces from the spans' original bytes, mark them.
//! - [`sampler`]: a message in ([`sampler::Sampler::ingest`]), due traces decided, kept ones
//!   handed to an output; by step: ingest, decide, forward, tally.
//! - [`buffer`]: the sharded trace map and its deadline index; completion triggers.
//! - [`decision`]: decisions, triggers, the cache that late spans follow, the decision log's
//!   record format.
//! - [`memory`]: the byte budget (configured or from the container limit) and its watermarks.
//! - [`offsets`]: which offsets are safe to commit (the at-least-once bookkeeping).
//! - [`heads`]: the heads of straddling traces, joined to their tails on replay.
//! - [`journal`]: which decision is recorded in the decision log, and when.
//!
//! **The Kafka edge, out:**
//! - [`kafka::producer`]: the one retrying producer every writer shares: [`kafka::sink`] (kept
//!   traces), [`kafka::dead_letter`] (undecodable messages), [`kafka::decision_log`] (every
//!   decision, on a compacted topic).
//! - [`kafka::route`]: `tailsift route`, the stateless stage that re-keys unkeyed batches by
//!   trace id in front of the sampler.
//!
//! **Running and watching it:**
//! - [`pipeline`]: start everything; shut it down in an order that loses nothing.
//! - [`stress`]: stress relief: degraded mode, switched by consumer lag.
//! - [`health`]: readiness flags, the decision log's health and the lag tracker, shared by the
//!   Kafka edge, `/readyz` and stress relief.
//! - [`http`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`telemetry`]: the catalog of every metric (one table: name, kind, unit, help, labels,
//!   buckets), RED metrics ([`telemetry::red`]) with exemplars from kept traces only
//!   ([`telemetry::exemplars`], shown in OpenMetrics by [`telemetry::openmetrics`]), broken
//!   traces ([`telemetry::broken`]), build and process metrics.
//! - [`logs`]: log output (text or JSON, colour only on a terminal), librdkafka's repeats
//!   rate-limited.
//! - [`demo`]: the embedded default: in-process Kafka, trace generator, live summary.

#![warn(missing_docs)]

pub mod buffer;
pub mod config;
pub mod decision;
pub mod demo;
pub mod heads;
pub mod health;
pub mod http;
pub mod journal;
pub mod kafka;
pub mod logs;
pub mod memory;
pub mod offsets;
pub mod otlp;
pub mod pipeline;
pub mod redact;
pub mod rules;
pub mod sampler;
pub mod secrets;
pub mod stress;
pub mod telemetry;
pub mod yaml;

/// Traffic recorded from the OpenTelemetry SDK, for tests (`tests/data/sdk-traffic.bin`).
#[cfg(test)]
#[path = "../tests/data/sdk_traffic.rs"]
mod sdk_traffic;

#[cfg(test)]
mod layout {
    /// The `pub mod` names declared in a module file.
    fn modules(source: &str) -> Vec<&str> {
        source
            .lines()
            .filter_map(|l| l.strip_prefix("pub mod ")?.strip_suffix(';'))
            .collect()
    }

    #[test]
    fn the_layout_doc_names_every_module() {
        let lib = include_str!("lib.rs");
        let doc: String = lib.lines().filter(|l| l.starts_with("//!")).collect();
        let top = modules(lib);
        assert!(top.len() > 10, "found the module list: {top:?}");
        for m in top {
            assert!(
                doc.contains(&format!("[`{m}`]")),
                "`{m}` is not in the layout doc"
            );
        }
        for m in modules(include_str!("kafka/mod.rs")) {
            assert!(
                doc.contains(&format!("[`kafka::{m}`]")),
                "`kafka::{m}` is not in the layout doc"
            );
        }
    }
}
