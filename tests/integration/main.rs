//! The integration tests, in one binary (rdkafka is linked once, not once per file): one
//! module per area, and the fixture they share (`fixture/`: topics, readers, a pipeline built
//! from rules, instances of the binary, brokers of a test's own, the checkout traffic).
//!
//! Tests share this process; `fixture/process.rs` says what that changes and how the tests
//! that cannot share it (exact process-wide metric values, SIGHUP) run in a process of their
//! own. A new test goes into a module here, not into a new file under `tests/`.

mod fixture;

mod bad_input;
mod broker_outage;
mod budgets;
mod chart_schema;
mod cli;
mod configmap_reload;
mod crash;
mod dashboard;
mod dead_letter;
mod decision_cache;
mod decision_log;
mod early;
mod exemplars;
mod fuzz;
mod health;
mod json_input;
mod late_topic;
mod logs;
mod memory;
mod metrics;
mod odd_input;
mod pipeline;
mod redaction;
mod route;
mod rules_cli;
mod rules_pipeline;
mod rules_reload;
mod sasl;
mod scale_out;
mod sdk_traffic;
mod secrets;
mod stress;
mod tls;
