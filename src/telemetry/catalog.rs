//! The catalog: one row per metric. Its name constant, description, unit, labels and
//! histogram buckets are written here once; [`super::describe`], [`super::init_series`], the
//! recorder's buckets, the `/metrics` text of the metrics rendered at scrape time, and the table
//! in docs/metrics.md (held to this by a unit test) all derive from [`CATALOG`].
//!
//! Rows are in the order of docs/metrics.md: intake, buffer and decisions, output, replay and
//! rebalance, memory, decision cache and log, commits and lag, route and dead letters, RED,
//! broken traces, rules, build and process.

use metrics::Unit;

use super::labels::{
    CacheLookup, Eviction, HeadRead, Outcome, ReadBack, RebalanceKind, RedKind, RedactAction,
    Reload, RuleResult,
};
use super::{Exposed, Kind, Label, MetricDef};

/// Buckets of the RED duration histogram, in seconds.
pub const RED_DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The trigger label's values: [`crate::decision::Trigger::as_str`] of every trigger (a unit
/// test holds the two together; `as_str` is not a `const fn`, so this list is written out).
const TRIGGERS: &[&str] = &[
    "idle",
    "root",
    "span_limit",
    "byte_limit",
    "max_age",
    "memory",
    "stress",
    "rebalance",
    "early",
];

const TOPIC: Label = Label::topics("topic");
const RULE: Label = Label::rules("rule");
const OUTCOME: Label = Label::fixed("outcome", Outcome::NAMES);
const SERVICE: Label = Label::seen("service", "");
const RED: &[Label] = &[
    SERVICE,
    Label::seen("operation", ""),
    Label::fixed("kind", RedKind::NAMES),
];
const DECODE_KIND: Label = Label::fixed("kind", crate::otlp::decode::DecodeError::KINDS);
/// The `kind` of a dead letter: a decode error's, or `unredactable` (a test holds this list to
/// `DecodeError::KINDS`).
pub(crate) const LETTER_KINDS: &[&str] = &[
    "malformed_protobuf",
    "malformed_json",
    "empty",
    "unredactable",
];

/// Defines a `pub const` per metric name (documented with its help) and [`CATALOG`], the
/// rows in the order given.
macro_rules! catalog {
    ($(
        $id:ident: $kind:ident $name:literal {
            unit: $unit:ident,
            labels: [$($label:expr),* $(,)?],
            $(buckets: $buckets:expr,)?
            $(exposed: $exposed:ident,)?
            help: $help:literal $(,)?
        }
    )*) => {
        $(
            #[doc = concat!("`", $name, "` (", stringify!($kind), "): ", $help)]
            pub const $id: &str = $name;
        )*

        /// Every metric tailsift exposes, one row each, in the order of docs/metrics.md.
        pub static CATALOG: &[MetricDef] = &[
            $(MetricDef {
                name: $id,
                kind: Kind::$kind,
                unit: Unit::$unit,
                labels: &[$($label),*],
                buckets: catalog!(@buckets $($buckets)?),
                exposed: catalog!(@exposed $($exposed)?),
                help: $help,
            },)*
        ];
    };
    (@buckets) => { None };
    (@buckets $b:expr) => { Some($b) };
    (@exposed) => { Exposed::Recorder };
    (@exposed $e:ident) => { Exposed::$e };
}

catalog! {
    MESSAGES_RECEIVED: Counter "tailsift_messages_received_total" {
        unit: Count,
        labels: [TOPIC],
        help: "Kafka messages read, by topic.",
    }
    SPANS_RECEIVED: Counter "tailsift_spans_received_total" {
        unit: Count,
        labels: [TOPIC],
        help: "Spans read, by topic.",
    }
    BYTES_RECEIVED: Counter "tailsift_bytes_received_total" {
        unit: Bytes,
        labels: [TOPIC],
        help: "Message payload bytes read, by topic.",
    }
    DECODE_FAILURES: Counter "tailsift_decode_failures_total" {
        unit: Count,
        labels: [DECODE_KIND],
        help: "Messages skipped because they do not decode, by kind (malformed_protobuf, malformed_json, empty).",
    }
    INVALID_SPANS: Counter "tailsift_invalid_spans_total" {
        unit: Count,
        labels: [],
        help: "Spans skipped because their trace id is missing or invalid.",
    }
    TRACES_BUFFERED: Gauge "tailsift_traces_buffered" {
        unit: Count,
        labels: [],
        help: "Undecided traces in the buffer.",
    }
    BYTES_BUFFERED: Gauge "tailsift_buffered_bytes" {
        unit: Bytes,
        labels: [],
        help: "Bytes counted against buffer.max_bytes: span data plus per-trace overhead.",
    }
    TRACES_DECIDED: Counter "tailsift_traces_decided_total" {
        unit: Count,
        labels: [RULE, OUTCOME, Label::fixed("trigger", TRIGGERS)],
        help: "Traces decided, by rule, outcome (kept, dropped) and trigger (idle, root, span_limit, byte_limit, max_age, memory, stress, rebalance, early: an early rule was sure of the outcome as the spans arrived). At start every trigger is at zero for each outcome its rule can give (a drop rule never keeps, a keep-all or rate_limit rule never drops).",
    }
    SPANS_FORWARDED: Counter "tailsift_spans_forwarded_total" {
        unit: Count,
        labels: [],
        help: "Spans written to the output topic (acknowledged).",
    }
    MESSAGES_PRODUCED: Counter "tailsift_messages_produced_total" {
        unit: Count,
        labels: [],
        help: "Messages written to the output topic (acknowledged).",
    }
    PRODUCE_ERRORS: Counter "tailsift_produce_errors_total" {
        unit: Count,
        labels: [],
        help: "Failed deliveries to the output topic; each is retried, its offsets stay uncommitted meanwhile.",
    }
    LATE_SPANS: Counter "tailsift_late_spans_total" {
        unit: Count,
        labels: [OUTCOME],
        help: "Spans that arrived after their trace was decided, by outcome (kept: forwarded at once, dropped).",
    }
    REPLAYED_SPANS_FORWARDED: Counter "tailsift_replayed_spans_forwarded_total" {
        unit: Count,
        labels: [],
        help: "Spans forwarded from offsets this group had read before (after a crash or rebalance): an estimate of duplicates in the output.",
    }
    DECISION_LATENCY: Histogram "tailsift_decision_latency_seconds" {
        unit: Seconds,
        labels: [],
        buckets: &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
        help: "Time from a trace's completion deadline (or a late span's arrival) to the acknowledgement of its output.",
    }
    TRACE_VISIBILITY: Histogram "tailsift_trace_visibility_seconds" {
        unit: Seconds,
        labels: [Label::fixed("trigger", TRIGGERS)],
        buckets: &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0],
        help: "Time from the arrival of a kept trace's first span to the acknowledgement of its first output message, by the trigger that decided it: how long a kept trace takes to become visible in the backend (early rules shorten it).",
    }
    TRACE_DURATION: Histogram "tailsift_trace_duration_seconds" {
        unit: Seconds,
        labels: [],
        buckets: &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0],
        help: "Duration of each decided trace, from its earliest span start to its latest span end.",
    }
    TRACE_SPANS: Histogram "tailsift_trace_spans" {
        unit: Count,
        labels: [],
        buckets: &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0, 10000.0],
        help: "Spans of each decided trace.",
    }
    TRACES_RELEASED: Counter "tailsift_traces_released_total" {
        unit: Count,
        labels: [],
        help: "Undecided traces handed back to Kafka uncommitted (partition revoked): the next owner replays them.",
    }
    REPLAY_HEAD_READS: Counter "tailsift_replay_head_reads_total" {
        unit: Count,
        labels: [Label::fixed("result", HeadRead::NAMES)],
        help: "Partitions taken over whose replay needed the heads of traces straddling the commit offset read back, by result (complete; incomplete: cut short by HEAD_READ_TIMEOUT, 15 s, or by 1/8 of the buffer budget, and those traces are decided on the part replayed).",
    }
    REPLAY_HEADS_MERGED: Counter "tailsift_replay_heads_merged_total" {
        unit: Count,
        labels: [],
        help: "Replayed traces whose head, read back from below the commit offset, joined their tail, so that they were decided on their whole view.",
    }
    ASSIGNED_PARTITIONS: Gauge "tailsift_assigned_partitions" {
        unit: Count,
        labels: [],
        help: "Input partitions assigned to this instance.",
    }
    BUDGET_SHARE: Gauge "tailsift_budget_share" {
        unit: Count,
        labels: [],
        help: "This instance's share of the fleet's budgets (rate_limit, max_traces_per_second, throughput targets, min_traces), 0 to 1: the input partitions it owns over all partitions of the input topics. Recomputed on every rebalance; 0 until the first assignment.",
    }
    REBALANCES: Counter "tailsift_rebalances_total" {
        unit: Count,
        labels: [Label::fixed("kind", RebalanceKind::NAMES)],
        help: "Partition assignment changes, by kind (assign, revoke).",
    }
    PAUSED: Gauge "tailsift_consumption_paused" {
        unit: Count,
        labels: [],
        help: "1 while fetching is paused because the buffer is above its high watermark, else 0.",
    }
    PAUSED_PARTITIONS: Gauge "tailsift_paused_partitions" {
        unit: Count,
        labels: [],
        help: "Assigned partitions whose fetching is paused (buffer over budget, or shutting down).",
    }
    BUFFER_BUDGET: Gauge "tailsift_buffer_budget_bytes" {
        unit: Bytes,
        labels: [],
        help: "The buffer's memory budget (buffer.max_bytes, or derived from the container limit).",
    }
    DECISION_CACHE_LOOKUPS: Counter "tailsift_decision_cache_lookups_total" {
        unit: Count,
        labels: [Label::fixed("result", CacheLookup::NAMES)],
        help: "Decision cache lookups for spans of traces not buffered, by result (hit: a late span, miss: a new trace).",
    }
    DECISION_CACHE_EVICTIONS: Counter "tailsift_decision_cache_evictions_total" {
        unit: Count,
        labels: [Label::fixed("cause", Eviction::NAMES)],
        help: "Decisions removed from the cache, by cause (size: pushed out by decision_cache.max_bytes, expired: older than decision_cache.ttl).",
    }
    DECISION_CACHE_ENTRIES: Gauge "tailsift_decision_cache_entries" {
        unit: Count,
        labels: [],
        help: "Decisions in the cache.",
    }
    DECISION_CACHE_BYTES: Gauge "tailsift_decision_cache_bytes" {
        unit: Bytes,
        labels: [],
        help: "Bytes counted against decision_cache.max_bytes.",
    }
    STRESS_MODE: Gauge "tailsift_stress_mode" {
        unit: Count,
        labels: [],
        help: "1 while stress relief's degraded mode is on (new traces decided by trace id alone, without buffering), else 0.",
    }
    STRESS_SPANS: Counter "tailsift_stress_spans_total" {
        unit: Count,
        labels: [OUTCOME],
        help: "Spans decided by trace id alone in degraded mode, by outcome (kept, dropped).",
    }
    DECISIONS_LOGGED: Counter "tailsift_decision_log_records_total" {
        unit: Count,
        labels: [OUTCOME],
        help: "Decision records acknowledged by the decision log, by outcome (kept, dropped); a kept trace forwarded again (late spans) is recorded again.",
    }
    DECISION_LOG_ERRORS: Counter "tailsift_decision_log_errors_total" {
        unit: Count,
        labels: [],
        help: "Failed writes to the decision log; each is retried, the trace's offsets stay uncommitted meanwhile.",
    }
    DECISION_LOG_LAG: Histogram "tailsift_decision_log_lag_seconds" {
        unit: Seconds,
        labels: [],
        buckets: &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
        help: "Time from a kept trace's output being acknowledged to its decision record being acknowledged: a crash inside it forwards the trace again (what a SIGKILL duplicates is this window's share of the kept spans).",
    }
    DECISION_LOG_BAD_RECORDS: Counter "tailsift_decision_log_bad_records_total" {
        unit: Count,
        labels: [Label::fixed("kind", crate::decision::record::RecordError::KINDS)],
        help: "Decision log records skipped on read-back because they do not decode, by kind (key, value, version).",
    }
    DECISION_LOG_READ_BACKS: Counter "tailsift_decision_log_read_backs_total" {
        unit: Count,
        labels: [Label::fixed("result", ReadBack::NAMES)],
        help: "Input partitions whose decisions were read back from the decision log on assignment, by result (complete; cut_short: more decisions than the cache holds, the newest read; incomplete: timed out or failed).",
    }
    DECISION_LOG_READ_BACK_RECORDS: Counter "tailsift_decision_log_read_back_records_total" {
        unit: Count,
        labels: [],
        help: "Decisions read back from the decision log into the decision cache.",
    }
    DECISION_LOG_READ_BACK_SECONDS: Histogram "tailsift_decision_log_read_back_seconds" {
        unit: Seconds,
        labels: [],
        buckets: &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0],
        help: "Time each read-back of the decision log took (one per assignment).",
    }
    LOGGED_DECISION_SPANS: Counter "tailsift_logged_decision_spans_total" {
        unit: Count,
        labels: [OUTCOME],
        help: "Spans of traces not buffered (late, or replayed after a crash or rebalance) that followed a decision read back from the decision log, by outcome (kept, dropped).",
    }
    SPANS_SKIPPED_FORWARDED: Counter "tailsift_spans_skipped_as_forwarded_total" {
        unit: Count,
        labels: [],
        help: "Replayed spans not forwarded again because the decision log says they already were.",
    }
    COMMITS: Counter "tailsift_commits_total" {
        unit: Count,
        labels: [],
        help: "Offset commits sent.",
    }
    COMMIT_FAILURES: Counter "tailsift_commit_failures_total" {
        unit: Count,
        labels: [],
        help: "Offset commits the broker refused.",
    }
    OFFSETS_HELD_BACK: Gauge "tailsift_offsets_held_back" {
        unit: Count,
        labels: [],
        help: "Offsets read but not yet safe to commit (held by undecided traces or produces in flight), summed over partitions.",
    }
    CONSUMER_ERRORS: Counter "tailsift_consumer_errors_total" {
        unit: Count,
        labels: [],
        help: "Errors reported by the Kafka consumer.",
    }
    CONSUMER_LAG: Gauge "tailsift_consumer_lag" {
        unit: Count,
        labels: [TOPIC, Label::seen("partition", "")],
        help: "Messages between this instance's read position and the end of the partition, by topic and partition (0 once the partition left this instance).",
    }
    LAG_QUERY_FAILURES: Counter "tailsift_lag_query_failures_total" {
        unit: Count,
        labels: [],
        help: "Lag measurements that failed because the brokers did not answer.",
    }
    ROUTED_TRACES: Counter "tailsift_routed_traces_total" {
        unit: Count,
        labels: [],
        help: "tailsift route: per-trace span groups re-keyed by trace id and sent to the sampling topic.",
    }
    DEAD_LETTERS: Counter "tailsift_dead_letters_total" {
        unit: Count,
        labels: [Label::fixed("kind", LETTER_KINDS)],
        help: "Letters written to kafka.dead_letter_topic (acknowledged), by kind: undecodable messages by decode error, and unredactable (spans of kept traces whose attributes cannot be parsed for redaction).",
    }
    DEAD_LETTER_ERRORS: Counter "tailsift_dead_letter_errors_total" {
        unit: Count,
        labels: [],
        help: "Failed writes to the dead-letter topic; each is retried, the source offset stays uncommitted meanwhile.",
    }
    RED_REQUESTS: Counter "tailsift_red_requests_total" {
        unit: Count,
        labels: [RED[0], RED[1], RED[2]],
        help: "SERVER and CONSUMER spans received, before sampling (request rate), by service, operation (the http.route attribute, else the span name) and kind. Exemplar (OpenMetrics): the latest span of a kept trace.",
    }
    RED_ERRORS: Counter "tailsift_red_errors_total" {
        unit: Count,
        labels: [RED[0], RED[1], RED[2]],
        help: "Those of tailsift_red_requests_total whose status is error (error rate). Exemplar (OpenMetrics): the latest error span of a kept trace.",
    }
    RED_DURATION: Histogram "tailsift_red_duration_seconds" {
        unit: Seconds,
        labels: [RED[0], RED[1], RED[2]],
        buckets: RED_DURATION_BUCKETS,
        help: "Duration of the spans counted in tailsift_red_requests_total, end minus start. Exemplars (OpenMetrics): per bucket, the latest span of a kept trace there.",
    }
    RED_OVERFLOW: Counter "tailsift_red_overflow_spans_total" {
        unit: Count,
        labels: [SERVICE],
        help: "Spans counted under operation other (or service other) because a cardinality cap was reached (monitoring.max_operations_per_service, monitoring.max_services), by service.",
    }
    ORPHAN_SPANS: Counter "tailsift_orphan_spans_total" {
        unit: Count,
        labels: [SERVICE],
        help: "Spans of decided traces whose parent span never arrived, by the orphan's service (capped by monitoring.max_services like RED, the rest as other).",
    }
    TRACES_WITHOUT_ROOT: Counter "tailsift_traces_without_root_total" {
        unit: Count,
        labels: [],
        help: "Traces decided without their root span.",
    }
    RULE_TRACES: Counter "tailsift_rule_traces_total" {
        unit: Count,
        labels: [RULE, Label::fixed("result", RuleResult::NAMES)],
        help: "Traces per rule, by result: matched (the rule's conditions held; a rate_limit counts its fall-throughs here too), kept, dropped (the rule decided). In shadow mode, what the rules would have done. Added per decider tick.",
    }
    RULE_SPANS: Counter "tailsift_rule_spans_total" {
        unit: Count,
        labels: [RULE, Label::fixed("result", RuleResult::NAMES)],
        help: "Spans of the traces counted in tailsift_rule_traces_total, by rule and result.",
    }
    RULE_ACTIVE: Gauge "tailsift_rule_active" {
        unit: Count,
        labels: [RULE],
        help: "Whether a rule is active: 1, or 0 for a time-boxed rule before its active_from or retired past its active_until (it then matches no trace), or for a rule a reload removed. Set per decider tick.",
    }
    RULES_RELOADS: Counter "tailsift_rules_reloads_total" {
        unit: Count,
        labels: [Label::fixed("result", Reload::NAMES)],
        help: "Rule reloads, by result: success (new rules in use), failure (invalid; the old rules stay).",
    }
    RULES_INFO: Gauge "tailsift_rules_info" {
        unit: Count,
        labels: [
            Label::seen("version", "hash of the rule files"),
            Label::fixed("mode", &["enforce", "shadow"]),
        ],
        exposed: Scrape,
        help: "The loaded rules: version (a hash of the rule files' names and contents) and mode (enforce, shadow). One series, value 1.",
    }
    REDACTED_ATTRIBUTES: Counter "tailsift_redacted_attributes_total" {
        unit: Count,
        labels: [
            Label::fixed("action", RedactAction::NAMES),
            Label::seen("redaction", "entry and allowlist names of redaction.yaml"),
        ],
        help: "Attributes of forwarded spans, events, links and resources redacted, by action and by the redaction.yaml entry that did it. Every entry and allowlist is at zero from the start (and from a reload). Added per decider tick.",
    }
    REDACTION_REWRITTEN: Counter "tailsift_redaction_rewritten_total" {
        unit: Count,
        labels: [],
        help: "Forwarded spans and resources rewritten by redaction (the others leave byte for byte).",
    }
    REDACTION_REFUSED: Counter "tailsift_redaction_refused_spans_total" {
        unit: Count,
        labels: [],
        help: "Spans of kept traces not forwarded because their attributes cannot be parsed for redaction; each is sent to kafka.dead_letter_topic when one is set.",
    }
    BUILD_INFO: Gauge "tailsift_build_info" {
        unit: Count,
        labels: [
            Label::seen("version", "the crate version"),
            Label::seen("commit", "TAILSIFT_GIT_COMMIT at build time, else unknown"),
        ],
        help: "The running build: version and git commit. One series, value 1.",
    }
    PROCESS_CPU_SECONDS: Counter "process_cpu_seconds_total" {
        unit: Seconds,
        labels: [],
        exposed: Scrape,
        help: "User and system CPU time of the process, in seconds (Linux).",
    }
    PROCESS_RESIDENT_MEMORY: Gauge "process_resident_memory_bytes" {
        unit: Bytes,
        labels: [],
        exposed: Scrape,
        help: "Resident memory of the process, in bytes (Linux).",
    }
    PROCESS_VIRTUAL_MEMORY: Gauge "process_virtual_memory_bytes" {
        unit: Bytes,
        labels: [],
        exposed: Scrape,
        help: "Virtual memory of the process, in bytes (Linux).",
    }
    PROCESS_OPEN_FDS: Gauge "process_open_fds" {
        unit: Count,
        labels: [],
        exposed: Scrape,
        help: "Open file descriptors of the process (Linux).",
    }
    PROCESS_MAX_FDS: Gauge "process_max_fds" {
        unit: Count,
        labels: [],
        exposed: Scrape,
        help: "The process's limit of open file descriptors (the soft RLIMIT_NOFILE; Linux).",
    }
    PROCESS_START_TIME: Gauge "process_start_time_seconds" {
        unit: Seconds,
        labels: [],
        exposed: Scrape,
        help: "Start time of the process, in seconds since the Unix epoch (Linux).",
    }
}
