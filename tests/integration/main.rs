//! The integration tests, in one binary: one module per area, and the fixture they share.

mod fixture;

mod bad_input;
mod broker_outage;
mod chart_schema;
mod cli;
mod configmap_reload;
mod crash;
mod dashboard;
mod dead_letter;
mod decision_cache;
mod decision_log;
mod fuzz;
mod health;
mod json_input;
mod late_topic;
mod logs;
mod memory;
mod metrics;
mod odd_input;
mod pipeline;
mod route;
mod rules_cli;
mod rules_pipeline;
mod rules_reload;
mod sasl;
mod scale_out;
mod secrets;
mod stress;
mod tls;
