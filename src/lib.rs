//! tailsift: tail-based sampling of OpenTelemetry traces on Kafka.
//!
//! Spans arrive as OTLP protobuf on input topics, are buffered per trace until the trace is
//! complete, are judged by rules written as files, and the kept traces go out on a backend
//! topic. Offsets are committed only once everything below them is decided and delivered.
//!
//! # Layout
//! - [`config`]: `tailsift.yaml`, parsed and checked into runtime settings.
//! - [`yaml`]: the one YAML parser and its limits (aliases, duplicate keys, documents), for
//!   the configuration, rule files and case files.
//! - [`secrets`]: `${env:..}`/`${file:..}` property values, and their redaction in logs.
//! - [`otlp`]: the wire format: decode requests into per-trace span groups, read spans for the
//!   rules, encode kept traces from the spans' original bytes.
//! - [`buffer`]: the sharded trace map and its deadline index; completion triggers.
//! - [`rules`]: rule files, compiled conditions, deterministic sampling.
//! - [`memory`]: the byte budget (configured or from the container limit) and its watermarks.
//! - [`decision`]: decisions, triggers, the cache that late spans follow, and the decision
//!   log's record format.
//! - [`journal`]: which decision is recorded in the decision log, and when (Kafka-free).
//! - [`offsets`]: which offsets are safe to commit (the at-least-once bookkeeping).
//! - [`heads`]: the heads of traces that straddle the commit offset, read back on assignment
//!   (Kafka-free).
//! - [`sampler`]: the Kafka-free core: ingest a message, decide due traces, hand kept ones on.
//! - [`health`]: readiness flags, the decision log's acknowledgements and the lag tracker,
//!   shared by the Kafka edge, `/readyz` and stress relief.
//! - [`kafka`]: the Kafka edge, one file per stage: [`kafka::consume`] (poll loop,
//!   decode-or-dead-letter, back-pressure), [`kafka::rebalance`], [`kafka::partitions`],
//!   [`kafka::commit`], [`kafka::replay`] (decisions and heads read back on assignment),
//!   [`kafka::lag`], [`kafka::producer`] (the one retrying producer), [`kafka::sink`],
//!   [`kafka::dead_letter`], [`kafka::decision_log`], [`kafka::route`] (`tailsift route`).
//! - [`stress`]: stress relief: degraded mode switched on and off by consumer lag.
//! - [`pipeline`]: start everything, shut it down in an order that loses nothing.
//! - [`http`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`telemetry`]: the catalog of every metric (one table: name, kind, unit, help, labels,
//!   buckets), RED metrics from every span ([`telemetry::red`]), broken traces
//!   ([`telemetry::broken`]), build and process metrics.
//! - [`logs`]: log output (text or JSON, colour only on a terminal), librdkafka's repeats
//!   rate-limited.
//! - [`demo`]: the embedded default: in-process Kafka, trace generator, live summary.

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
pub mod rules;
pub mod sampler;
pub mod secrets;
pub mod stress;
pub mod telemetry;
pub mod yaml;
