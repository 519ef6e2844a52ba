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
//! - [`red`]: rate, errors and duration per service and operation from every span.
//! - [`rules`]: rule files, compiled conditions, deterministic sampling.
//! - [`memory`]: the byte budget (configured or from the container limit) and its watermarks.
//! - [`broken`]: broken traces at decision time: orphan spans per service, missing roots.
//! - [`decision`]: decisions, triggers, the cache that late spans follow, and the decision
//!   log's record format.
//! - [`journal`]: which decision is recorded in the decision log, and when (Kafka-free).
//! - [`offsets`]: which offsets are safe to commit (the at-least-once bookkeeping).
//! - [`sampler`]: the Kafka-free core: ingest a message, decide due traces, hand kept ones on.
//! - [`kafka::consume`]: the Kafka consumer thread: ingest, commit, rebalance, back-pressure.
//! - [`kafka::sink`]: the Kafka producer of kept traces, with delivery tracking and retries.
//! - [`kafka::decision_log`]: every decision on a compacted Kafka topic, read back by a partition's
//!   next owner before it ingests.
//! - [`kafka::lag`]: consumer lag per partition and consumption progress, measured off the ingest
//!   thread.
//! - [`kafka::dead_letter`]: undecodable messages copied to a dead-letter topic before their offset
//!   is released.
//! - [`kafka::route`]: `tailsift route`: split unkeyed OTLP batches per trace, re-key by trace id.
//! - [`pipeline`]: start everything, shut it down in an order that loses nothing.
//! - [`http`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`metrics`]: every metric's name and description.
//! - [`logs`]: log output (text or JSON, colour only on a terminal), librdkafka's repeats
//!   rate-limited.
//! - [`demo`]: the embedded default: in-process Kafka, trace generator, live summary.

pub mod broken;
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
pub mod metrics;
pub mod offsets;
pub mod otlp;
pub mod pipeline;
pub mod red;
pub mod rules;
pub mod sampler;
pub mod secrets;
pub mod stress;
pub mod yaml;
