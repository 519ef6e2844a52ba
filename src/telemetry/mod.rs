//! Every metric tailsift exposes, in one place: name, kind, unit, description.
//!
//! Labels come from small fixed sets (topic names from the config, rule names from the rule
//! files, trigger and outcome names from this crate), never from trace data. Counting happens
//! in bulk: per message, per decider tick, per produced message; never per span.

use std::sync::OnceLock;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const MESSAGES_RECEIVED: &str = "tailsift_messages_received_total";
pub const SPANS_RECEIVED: &str = "tailsift_spans_received_total";
pub const BYTES_RECEIVED: &str = "tailsift_bytes_received_total";
pub const DECODE_FAILURES: &str = "tailsift_decode_failures_total";
pub const INVALID_SPANS: &str = "tailsift_invalid_spans_total";
pub const TRACES_BUFFERED: &str = "tailsift_traces_buffered";
pub const BYTES_BUFFERED: &str = "tailsift_buffered_bytes";
pub const TRACES_DECIDED: &str = "tailsift_traces_decided_total";
pub const SPANS_FORWARDED: &str = "tailsift_spans_forwarded_total";
pub const MESSAGES_PRODUCED: &str = "tailsift_messages_produced_total";
pub const PRODUCE_ERRORS: &str = "tailsift_produce_errors_total";
pub const LATE_SPANS: &str = "tailsift_late_spans_total";
pub const REPLAYED_SPANS_FORWARDED: &str = "tailsift_replayed_spans_forwarded_total";
pub const DECISION_LATENCY: &str = "tailsift_decision_latency_seconds";
pub const TRACES_RELEASED: &str = "tailsift_traces_released_total";
pub const REPLAY_HEAD_READS: &str = "tailsift_replay_head_reads_total";
pub const REPLAY_HEADS_MERGED: &str = "tailsift_replay_heads_merged_total";
pub const ASSIGNED_PARTITIONS: &str = "tailsift_assigned_partitions";
pub const REBALANCES: &str = "tailsift_rebalances_total";
pub const PAUSED: &str = "tailsift_consumption_paused";
pub const COMMITS: &str = "tailsift_commits_total";
pub const COMMIT_FAILURES: &str = "tailsift_commit_failures_total";
pub const OFFSETS_HELD_BACK: &str = "tailsift_offsets_held_back";
pub const CONSUMER_ERRORS: &str = "tailsift_consumer_errors_total";
pub const CONSUMER_LAG: &str = "tailsift_consumer_lag";
pub const LAG_QUERY_FAILURES: &str = "tailsift_lag_query_failures_total";
pub const ROUTED_TRACES: &str = "tailsift_routed_traces_total";
pub const DEAD_LETTERS: &str = "tailsift_dead_letters_total";
pub const DEAD_LETTER_ERRORS: &str = "tailsift_dead_letter_errors_total";
pub const PAUSED_PARTITIONS: &str = "tailsift_paused_partitions";
pub const TRACE_DURATION: &str = "tailsift_trace_duration_seconds";
pub const TRACE_SPANS: &str = "tailsift_trace_spans";
pub const BUFFER_BUDGET: &str = "tailsift_buffer_budget_bytes";
pub const DECISION_CACHE_LOOKUPS: &str = "tailsift_decision_cache_lookups_total";
pub const DECISION_CACHE_EVICTIONS: &str = "tailsift_decision_cache_evictions_total";
pub const DECISION_CACHE_ENTRIES: &str = "tailsift_decision_cache_entries";
pub const DECISION_CACHE_BYTES: &str = "tailsift_decision_cache_bytes";
pub const RED_REQUESTS: &str = "tailsift_red_requests_total";
pub const RED_ERRORS: &str = "tailsift_red_errors_total";
pub const RED_DURATION: &str = "tailsift_red_duration_seconds";
pub const RED_OVERFLOW: &str = "tailsift_red_overflow_spans_total";
pub const ORPHAN_SPANS: &str = "tailsift_orphan_spans_total";
pub const TRACES_WITHOUT_ROOT: &str = "tailsift_traces_without_root_total";
pub const DECISIONS_LOGGED: &str = "tailsift_decision_log_records_total";
pub const DECISION_LOG_ERRORS: &str = "tailsift_decision_log_errors_total";
pub const DECISION_LOG_BAD_RECORDS: &str = "tailsift_decision_log_bad_records_total";
pub const DECISION_LOG_READ_BACKS: &str = "tailsift_decision_log_read_backs_total";
pub const DECISION_LOG_READ_BACK_RECORDS: &str = "tailsift_decision_log_read_back_records_total";
pub const DECISION_LOG_READ_BACK_SECONDS: &str = "tailsift_decision_log_read_back_seconds";
pub const LOGGED_DECISION_SPANS: &str = "tailsift_logged_decision_spans_total";
pub const SPANS_SKIPPED_FORWARDED: &str = "tailsift_spans_skipped_as_forwarded_total";

/// Buckets of the RED duration histogram, in seconds.
pub const RED_DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
pub const STRESS_MODE: &str = "tailsift_stress_mode";
pub const STRESS_SPANS: &str = "tailsift_stress_spans_total";

pub const RULE_TRACES: &str = "tailsift_rule_traces_total";
pub const RULE_SPANS: &str = "tailsift_rule_spans_total";
pub const RULES_RELOADS: &str = "tailsift_rules_reloads_total";
/// Rendered by [`render_rules_info`], not through the recorder: it has one series at a time,
/// whose `version` label changes on reload, and the recorder cannot retire a series.
pub const RULES_INFO: &str = "tailsift_rules_info";
const RULES_INFO_HELP: &str =
    "The loaded rules: version (a hash of the rule files' names and contents) and mode (enforce, shadow). One series, value 1.";

/// Registers descriptions and units with the installed recorder.
pub mod broken;
pub mod red;

pub fn describe() {
    describe_counter!(
        MESSAGES_RECEIVED,
        Unit::Count,
        "Kafka messages read, by topic."
    );
    describe_counter!(SPANS_RECEIVED, Unit::Count, "Spans read, by topic.");
    describe_counter!(
        BYTES_RECEIVED,
        Unit::Bytes,
        "Message payload bytes read, by topic."
    );
    describe_counter!(
        DECODE_FAILURES,
        Unit::Count,
        "Messages skipped because they do not decode, by kind (malformed_protobuf, malformed_json, empty)."
    );
    describe_counter!(
        INVALID_SPANS,
        Unit::Count,
        "Spans skipped because their trace id is missing or invalid."
    );
    describe_gauge!(
        TRACES_BUFFERED,
        Unit::Count,
        "Undecided traces in the buffer."
    );
    describe_gauge!(
        BYTES_BUFFERED,
        Unit::Bytes,
        "Bytes counted against buffer.max_bytes: span data plus per-trace overhead."
    );
    describe_counter!(
        TRACES_DECIDED,
        Unit::Count,
        "Traces decided, by rule, outcome (kept, dropped) and trigger (idle, root, span_limit, byte_limit, max_age, memory, stress, rebalance)."
    );
    describe_counter!(
        SPANS_FORWARDED,
        Unit::Count,
        "Spans written to the output topic (acknowledged)."
    );
    describe_counter!(
        MESSAGES_PRODUCED,
        Unit::Count,
        "Messages written to the output topic (acknowledged)."
    );
    describe_counter!(
        PRODUCE_ERRORS,
        Unit::Count,
        "Failed deliveries to the output topic; each is retried, its offsets stay uncommitted meanwhile."
    );
    describe_counter!(
        LATE_SPANS,
        Unit::Count,
        "Spans that arrived after their trace was decided, by outcome (kept: forwarded at once, dropped)."
    );
    describe_counter!(
        REPLAYED_SPANS_FORWARDED,
        Unit::Count,
        "Spans forwarded from offsets this group had read before (after a crash or rebalance): an estimate of duplicates in the output."
    );
    describe_histogram!(
        DECISION_LATENCY,
        Unit::Seconds,
        "Time from a trace's completion deadline (or a late span's arrival) to the acknowledgement of its output."
    );
    describe_counter!(
        REPLAY_HEAD_READS,
        Unit::Count,
        "Partitions taken over whose replay needed the heads of traces straddling the commit offset read back, by result (complete, incomplete: cut short by time or memory)."
    );
    describe_counter!(
        REPLAY_HEADS_MERGED,
        Unit::Count,
        "Replayed traces whose head, read back from below the commit offset, joined their tail, so that they were decided on their whole view."
    );
    describe_counter!(
        TRACES_RELEASED,
        Unit::Count,
        "Undecided traces handed back to Kafka uncommitted (partition revoked): the next owner replays them."
    );
    describe_gauge!(
        ASSIGNED_PARTITIONS,
        Unit::Count,
        "Input partitions assigned to this instance."
    );
    describe_counter!(
        REBALANCES,
        Unit::Count,
        "Partition assignment changes, by kind (assign, revoke)."
    );
    describe_gauge!(
        PAUSED,
        Unit::Count,
        "1 while fetching is paused because the buffer is above its high watermark, else 0."
    );
    describe_counter!(COMMITS, Unit::Count, "Offset commits sent.");
    describe_counter!(
        COMMIT_FAILURES,
        Unit::Count,
        "Offset commits the broker refused."
    );
    describe_gauge!(
        OFFSETS_HELD_BACK,
        Unit::Count,
        "Offsets read but not yet safe to commit (held by undecided traces or produces in flight), summed over partitions."
    );
    describe_counter!(
        ROUTED_TRACES,
        Unit::Count,
        "tailsift route: per-trace span groups re-keyed by trace id and sent to the sampling topic."
    );
    describe_counter!(
        DEAD_LETTERS,
        Unit::Count,
        "Undecodable messages written to kafka.dead_letter_topic (acknowledged), by kind."
    );
    describe_counter!(
        DEAD_LETTER_ERRORS,
        Unit::Count,
        "Failed writes to the dead-letter topic; each is retried, the source offset stays uncommitted meanwhile."
    );
    describe_counter!(
        CONSUMER_ERRORS,
        Unit::Count,
        "Errors reported by the Kafka consumer."
    );
    describe_gauge!(
        CONSUMER_LAG,
        Unit::Count,
        "Messages between this instance's read position and the end of the partition, by topic and partition (0 once the partition left this instance)."
    );
    describe_counter!(
        LAG_QUERY_FAILURES,
        Unit::Count,
        "Lag measurements that failed because the brokers did not answer."
    );
    describe_gauge!(
        PAUSED_PARTITIONS,
        Unit::Count,
        "Assigned partitions whose fetching is paused (buffer over budget, or shutting down)."
    );
    describe_histogram!(
        TRACE_DURATION,
        Unit::Seconds,
        "Duration of each decided trace, from its earliest span start to its latest span end."
    );
    describe_histogram!(TRACE_SPANS, Unit::Count, "Spans of each decided trace.");
    describe_gauge!(
        BUFFER_BUDGET,
        Unit::Bytes,
        "The buffer's memory budget (buffer.max_bytes, or derived from the container limit)."
    );
    describe_counter!(
        DECISION_CACHE_LOOKUPS,
        Unit::Count,
        "Decision cache lookups for spans of traces not buffered, by result (hit: a late span, miss: a new trace)."
    );
    describe_counter!(
        DECISION_CACHE_EVICTIONS,
        Unit::Count,
        "Decisions removed from the cache, by cause (size: pushed out by decision_cache.max_bytes, expired: older than decision_cache.ttl)."
    );
    describe_gauge!(
        DECISION_CACHE_ENTRIES,
        Unit::Count,
        "Decisions in the cache."
    );
    describe_gauge!(
        DECISION_CACHE_BYTES,
        Unit::Bytes,
        "Bytes counted against decision_cache.max_bytes."
    );
    describe_gauge!(
        STRESS_MODE,
        Unit::Count,
        "1 while stress relief's degraded mode is on (new traces decided by trace id alone, without buffering), else 0."
    );
    describe_counter!(
        STRESS_SPANS,
        Unit::Count,
        "Spans decided by trace id alone in degraded mode, by outcome (kept, dropped)."
    );
    describe_counter!(
        DECISIONS_LOGGED,
        Unit::Count,
        "Decision records acknowledged by the decision log, by outcome (kept, dropped); a kept trace forwarded again (late spans) is recorded again."
    );
    describe_counter!(
        DECISION_LOG_ERRORS,
        Unit::Count,
        "Failed writes to the decision log; each is retried, the trace's offsets stay uncommitted meanwhile."
    );
    describe_counter!(
        DECISION_LOG_BAD_RECORDS,
        Unit::Count,
        "Decision log records skipped on read-back because they do not decode, by kind (key, value, version)."
    );
    describe_counter!(
        DECISION_LOG_READ_BACKS,
        Unit::Count,
        "Input partitions whose decisions were read back from the decision log on assignment, by result (complete; cut_short: more decisions than the cache holds, the newest read; incomplete: timed out or failed)."
    );
    describe_counter!(
        DECISION_LOG_READ_BACK_RECORDS,
        Unit::Count,
        "Decisions read back from the decision log into the decision cache."
    );
    describe_histogram!(
        DECISION_LOG_READ_BACK_SECONDS,
        Unit::Seconds,
        "Time each read-back of the decision log took (one per assignment)."
    );
    describe_counter!(
        LOGGED_DECISION_SPANS,
        Unit::Count,
        "Spans of traces not buffered (late, or replayed after a crash or rebalance) that followed a decision read back from the decision log, by outcome (kept, dropped)."
    );
    describe_counter!(
        SPANS_SKIPPED_FORWARDED,
        Unit::Count,
        "Replayed spans not forwarded again because the decision log says they already were."
    );
}

/// Registers every series whose labels are known at start, at zero, so that `/metrics` shows
/// the whole catalog from the first scrape (and `rate()` has a starting point). Series
/// labelled by partition, service or operation appear when those are first seen.
pub fn init_series(topics: &[String], rules: &[&str]) {
    for t in topics {
        for name in [MESSAGES_RECEIVED, SPANS_RECEIVED, BYTES_RECEIVED] {
            metrics::counter!(name, "topic" => t.clone()).absolute(0);
        }
    }
    for kind in crate::otlp::decode::DecodeError::KINDS {
        metrics::counter!(DECODE_FAILURES, "kind" => *kind).absolute(0);
        metrics::counter!(DEAD_LETTERS, "kind" => *kind).absolute(0);
    }
    init_rules(rules);
    for outcome in ["kept", "dropped"] {
        metrics::counter!(LATE_SPANS, "outcome" => outcome).absolute(0);
    }
    for result in ["complete", "incomplete"] {
        metrics::counter!(REPLAY_HEAD_READS, "result" => result).absolute(0);
    }
    for kind in ["assign", "revoke"] {
        metrics::counter!(REBALANCES, "kind" => kind).absolute(0);
    }
    for result in ["hit", "miss"] {
        metrics::counter!(DECISION_CACHE_LOOKUPS, "result" => result).absolute(0);
    }
    for cause in ["size", "expired"] {
        metrics::counter!(DECISION_CACHE_EVICTIONS, "cause" => cause).absolute(0);
    }
    for outcome in ["kept", "dropped"] {
        metrics::counter!(STRESS_SPANS, "outcome" => outcome).absolute(0);
        metrics::counter!(DECISIONS_LOGGED, "outcome" => outcome).absolute(0);
        metrics::counter!(LOGGED_DECISION_SPANS, "outcome" => outcome).absolute(0);
    }
    for kind in crate::decision::record::RecordError::KINDS {
        metrics::counter!(DECISION_LOG_BAD_RECORDS, "kind" => *kind).absolute(0);
    }
    for result in ["complete", "cut_short", "incomplete"] {
        metrics::counter!(DECISION_LOG_READ_BACKS, "result" => result).absolute(0);
    }
    for name in [
        INVALID_SPANS,
        SPANS_FORWARDED,
        MESSAGES_PRODUCED,
        PRODUCE_ERRORS,
        REPLAYED_SPANS_FORWARDED,
        TRACES_RELEASED,
        REPLAY_HEADS_MERGED,
        COMMITS,
        COMMIT_FAILURES,
        CONSUMER_ERRORS,
        LAG_QUERY_FAILURES,
        DEAD_LETTER_ERRORS,
        TRACES_WITHOUT_ROOT,
        ROUTED_TRACES,
        DECISION_LOG_ERRORS,
        DECISION_LOG_READ_BACK_RECORDS,
        SPANS_SKIPPED_FORWARDED,
    ] {
        metrics::counter!(name).absolute(0);
    }
    for name in [
        TRACES_BUFFERED,
        BYTES_BUFFERED,
        ASSIGNED_PARTITIONS,
        PAUSED,
        PAUSED_PARTITIONS,
        OFFSETS_HELD_BACK,
        BUFFER_BUDGET,
        DECISION_CACHE_ENTRIES,
        DECISION_CACHE_BYTES,
        STRESS_MODE,
    ] {
        metrics::gauge!(name).set(0.0);
    }
    for name in [
        DECISION_LATENCY,
        TRACE_DURATION,
        TRACE_SPANS,
        DECISION_LOG_READ_BACK_SECONDS,
    ] {
        let _ = metrics::histogram!(name);
    }
}

/// Registers the per-rule series of a (re)loaded rule set at zero.
pub fn init_rules(rules: &[&str]) {
    use crate::decision::Trigger;
    for result in ["success", "failure"] {
        metrics::counter!(RULES_RELOADS, "result" => result).absolute(0);
    }
    for rule in rules {
        for result in ["matched", "kept", "dropped"] {
            metrics::counter!(RULE_TRACES, "rule" => rule.to_string(), "result" => result)
                .increment(0);
            metrics::counter!(RULE_SPANS, "rule" => rule.to_string(), "result" => result)
                .increment(0);
        }
        for outcome in ["kept", "dropped"] {
            for trigger in Trigger::ALL {
                metrics::counter!(TRACES_DECIDED,
                    "rule" => rule.to_string(), "outcome" => outcome, "trigger" => trigger.as_str())
                .absolute(0);
            }
        }
    }
}

/// Histogram buckets per metric.
fn builder() -> PrometheusBuilder {
    let buckets: [(&str, &[f64]); 5] = [
        (
            DECISION_LOG_READ_BACK_SECONDS,
            &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0],
        ),
        (RED_DURATION, RED_DURATION_BUCKETS),
        (
            DECISION_LATENCY,
            &[
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ],
        ),
        (
            TRACE_DURATION,
            &[
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ],
        ),
        (
            TRACE_SPANS,
            &[
                1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0, 10000.0,
            ],
        ),
    ];
    let mut b = PrometheusBuilder::new();
    for (name, le) in buckets {
        // Fails only on an empty bucket list, which these are not.
        b = match b.set_buckets_for_metric(Matcher::Full(name.into()), le) {
            Ok(next) => next,
            Err(_) => PrometheusBuilder::new(),
        };
    }
    b
}

pub fn describe_rules() {
    describe_counter!(
        RULE_TRACES,
        Unit::Count,
        "Traces per rule, by result: matched (the rule's conditions held; a rate_limit counts its fall-throughs here too), kept, dropped (the rule decided). In shadow mode, what the rules would have done."
    );
    describe_counter!(
        RULE_SPANS,
        Unit::Count,
        "Spans of the traces counted in tailsift_rule_traces_total, by rule and result."
    );
    describe_counter!(
        RULES_RELOADS,
        Unit::Count,
        "Rule reloads, by result: success (new rules in use), failure (invalid; the old rules stay)."
    );
}

static RULES_INFO_VALUE: std::sync::Mutex<Option<(String, &'static str)>> =
    std::sync::Mutex::new(None);

/// Records the loaded rules' version and mode for [`RULES_INFO`].
pub fn set_rules_info(version: &str, mode: &'static str) {
    *RULES_INFO_VALUE.lock().unwrap_or_else(|e| e.into_inner()) = Some((version.to_string(), mode));
}

/// Appends the [`RULES_INFO`] series to a Prometheus text body.
pub fn render_rules_info(out: &mut String) {
    use std::fmt::Write;
    let v = RULES_INFO_VALUE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((version, mode)) = v.as_ref() {
        let _ = write!(
            out,
            "# HELP {RULES_INFO} {RULES_INFO_HELP}\n# TYPE {RULES_INFO} gauge\n{RULES_INFO}{{version=\"{version}\",mode=\"{mode}\"}} 1\n"
        );
    }
}

/// Installs the Prometheus recorder once per process and returns its handle.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = builder().build_recorder();
            let handle = recorder.handle();
            // Histogram samples wait in the recorder until drained; drain them even when
            // nothing scrapes, so memory stays bounded.
            let upkeep = handle.clone();
            let _ = std::thread::Builder::new()
                .name("tailsift-metrics".into())
                .spawn(move || loop {
                    std::thread::sleep(std::time::Duration::from_secs(5));
                    upkeep.run_upkeep();
                });
            // Fails only if another recorder is installed (a test harness); our handle then
            // renders nothing, which the tests would show.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            describe_rules();
            handle.run_upkeep(); // publishes the descriptions
            handle
        })
        .clone()
}
