//! The decision log's record format: what tailsift writes for every decision, and what it (or
//! any other pipeline) reads back. A public interface, documented in the README ("The decision
//! log"); change it only compatibly, or with a new `v`.
//!
//! A kept trace's decision is a record of its own, keyed by trace id, which compaction keeps
//! up to date (`through` grows with late spans). Dropped traces, most of them, come in *drop
//! lists*: one record for up to [`DROP_LIST_MAX`] traces of a partition decided within a few
//! milliseconds. A record per dropped trace cost the writer and the broker their per-record
//! work five times over for what a list says as well (see BENCHMARKS.md).
//!
//! - **Key**: the trace id as 32 lowercase hex characters, like the output topic's keys; a drop
//!   list's key starts with [`DROP_LIST_KEY_PREFIX`] (unique per list); a fence's is
//!   [`FENCE_KEY`]. Any key that is not a trace id is not a single decision.
//! - **Value** of a single decision: a small JSON object (tens of bytes):
//!   `{"v":1,"decision":"keep","rule":"errors","sample_rate":1,"decided_at":1764347990123,"through":5312}`
//!   - `v`: the format version, 1. Fields may be added within a version; a reader ignores the
//!     ones it does not know. A different meaning gets another `v`, which a reader refuses.
//!   - `decision`: `keep` or `drop`.
//!   - `rule`: the rule that decided.
//!   - `sample_rate`: with `keep`, N: the trace stands for N traces (1 in N kept).
//!   - `shadow`: `true` when the rules ran in shadow mode (every trace forwarded; `decision`
//!     is what the rules said).
//!   - `decided_at`: when the trace was decided, in Unix milliseconds.
//!   - `through`: with `keep`, the highest offset of the input partition (the one numbered
//!     like this record's partition, in the input topic this log belongs to) whose spans of
//!     the trace have been forwarded and acknowledged under this decision. A trace's later
//!     forwards (late spans) write the record again with a higher `through`; compaction keeps
//!     the last.
//! - **Value** of a drop list: `{"v":1,"decision":"drop","rules":["baseline","drop-health-checks"],
//!   "traces":[["4bf92f3577b34da6a3ce929d0e0e4736",0,1764347990123],...]}`: each trace as its
//!   id, the index of its rule in `rules`, and `decided_at`.
//!
//! The format is JSON rather than protobuf or a packed binary so that a log pipeline in any
//! language joins on it with a stock JSON reader; Kafka batches the small records together.

use std::borrow::Cow;
use std::sync::Arc;

use serde::Deserialize;

use super::Decision;

/// The format version written and understood.
pub const VERSION: u32 = 1;

/// Key of a fence: a marker a partition's new owner writes to learn where the log ends (see
/// `decision_log`). Not a trace id, so a reader joining on trace ids never matches it.
pub const FENCE_KEY: &str = "tailsift.fence";

/// How a drop list's key begins; the first trace id of the list follows, so that compaction,
/// which keeps the last record per key, never merges two lists.
pub const DROP_LIST_KEY_PREFIX: &str = "tailsift.drops.";

/// The most dropped traces in one drop list (about 50 bytes each).
pub const DROP_LIST_MAX: usize = 512;

/// One decision, as logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// What was decided, by which rule; in a drop list, always a `Drop`.
    pub decision: Decision,
    /// Unix milliseconds.
    pub decided_at: u64,
    /// See the module's documentation.
    pub through: Option<i64>,
}

/// What a log record holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// One trace's decision; its trace id is the record's key (see [`trace_id_of`]).
    Decision(Record),
    /// Dropped traces, each with its decision.
    Drops(Vec<(crate::otlp::TraceId, Record)>),
    /// A fence, to be skipped.
    Fence,
}

/// Why a record was not understood. `kind` is a small fixed word for metrics and logs.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordError {
    /// A key, or a trace id in a drop list, that is not a valid trace id in hex.
    #[error("the key is not a 32-character hex trace id")]
    Key,
    /// The value is not JSON, or a field is missing or out of range; the message says which.
    #[error("the value is not a decision record: {0}")]
    Value(String),
    /// A `v` other than [`VERSION`]: a format this reader does not know the meaning of.
    #[error("format version {0} is not understood (this tailsift reads version {VERSION})")]
    Version(u32),
}

impl RecordError {
    /// Every kind, for registering the metric series.
    pub const KINDS: &'static [&'static str] = &["key", "value", "version"];

    /// The label for metrics and logs, one of [`RecordError::KINDS`].
    pub fn kind(&self) -> &'static str {
        match self {
            RecordError::Key => "key",
            RecordError::Value(_) => "value",
            RecordError::Version(_) => "version",
        }
    }
}

/// The value's fields, as read (see [`Record::encode`] for writing).
#[derive(Deserialize)]
struct Value<'a> {
    v: u32,
    #[serde(default)]
    fence: Option<bool>,
    #[serde(borrow, default)]
    decision: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    rule: Option<Cow<'a, str>>,
    #[serde(default)]
    sample_rate: Option<u32>,
    #[serde(default)]
    shadow: bool,
    #[serde(default)]
    decided_at: Option<u64>,
    #[serde(default)]
    through: Option<i64>,
    #[serde(borrow, default)]
    rules: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow, default)]
    traces: Option<Vec<(Cow<'a, str>, usize, u64)>>,
}

impl Record {
    /// Appends the record's value to `out`: the JSON object of the module's documentation,
    /// written directly (serde's writer made many tiny writes; this runs once per decided
    /// trace). `through` is written only for a decision that forwards.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (keep, sample_rate, shadow) = match &self.decision {
            Decision::Keep { sample_rate, .. } => (true, *sample_rate, false),
            Decision::Drop { .. } => (false, 1, false),
            Decision::Shadow {
                keep, sample_rate, ..
            } => (*keep, *sample_rate, true),
        };
        let mut n = itoa::Buffer::new();
        out.extend_from_slice(b"{\"v\":");
        out.extend_from_slice(n.format(VERSION).as_bytes());
        out.extend_from_slice(match keep {
            true => b",\"decision\":\"keep\",\"rule\":".as_slice(),
            false => b",\"decision\":\"drop\",\"rule\":".as_slice(),
        });
        let rule = self.decision.rule();
        if rule.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
            out.push(b'"');
            out.extend_from_slice(rule.as_bytes());
            out.push(b'"');
        } else {
            // Writing a string into memory cannot fail.
            let _ = serde_json::to_writer(&mut *out, rule);
        }
        if keep {
            out.extend_from_slice(b",\"sample_rate\":");
            out.extend_from_slice(n.format(sample_rate).as_bytes());
        }
        if shadow {
            out.extend_from_slice(b",\"shadow\":true");
        }
        out.extend_from_slice(b",\"decided_at\":");
        out.extend_from_slice(n.format(self.decided_at).as_bytes());
        if let Some(t) = self.through.filter(|_| self.decision.forwards()) {
            out.extend_from_slice(b",\"through\":");
            out.extend_from_slice(n.format(t).as_bytes());
        }
        out.push(b'}');
    }

    /// The record's value, as bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(112);
        self.encode(&mut out);
        out
    }
}

/// Dropped traces of one partition, gathered into one record (see the module's documentation).
#[derive(Debug, Default)]
pub struct DropList {
    rules: Vec<std::sync::Arc<str>>,
    /// Trace, index in `rules`, decided at.
    traces: Vec<(crate::otlp::TraceId, u16, u64)>,
}

impl DropList {
    /// Adds a dropped trace decided by `rule` at `decided_at`.
    pub fn push(&mut self, id: crate::otlp::TraceId, rule: &std::sync::Arc<str>, decided_at: u64) {
        let i = match self
            .rules
            .iter()
            .position(|r| std::sync::Arc::ptr_eq(r, rule) || r == rule)
        {
            Some(i) => i,
            None => {
                self.rules.push(rule.clone());
                self.rules.len() - 1
            }
        };
        self.traces.push((id, i as u16, decided_at));
    }

    /// Traces in the list; a writer sends it at [`DROP_LIST_MAX`].
    pub fn len(&self) -> usize {
        self.traces.len()
    }

    /// No trace in the list: nothing to send.
    pub fn is_empty(&self) -> bool {
        self.traces.is_empty()
    }

    /// The list's key: [`DROP_LIST_KEY_PREFIX`] and its first trace id.
    pub fn key(&self) -> String {
        let first = self
            .traces
            .first()
            .map(|t| t.0.to_hex())
            .unwrap_or_default();
        format!("{DROP_LIST_KEY_PREFIX}{first}")
    }

    /// The list's value, written directly (as [`Record::encode`]).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut n = itoa::Buffer::new();
        out.extend_from_slice(b"{\"v\":");
        out.extend_from_slice(n.format(VERSION).as_bytes());
        out.extend_from_slice(b",\"decision\":\"drop\",\"rules\":[");
        for (i, r) in self.rules.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            json_str(r, out);
        }
        out.extend_from_slice(b"],\"traces\":[");
        let mut hex = [0u8; 32];
        for (i, (id, rule, at)) in self.traces.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let _ = hex::encode_to_slice(id.0, &mut hex);
            out.extend_from_slice(b"[\"");
            out.extend_from_slice(&hex);
            out.extend_from_slice(b"\",");
            out.extend_from_slice(n.format(*rule).as_bytes());
            out.push(b',');
            out.extend_from_slice(n.format(*at).as_bytes());
            out.push(b']');
        }
        out.extend_from_slice(b"]}");
    }

    /// Empties the list for reuse.
    pub fn clear(&mut self) {
        self.rules.clear();
        self.traces.clear();
    }
}

/// Appends `s` as a JSON string.
fn json_str(s: &str, out: &mut Vec<u8>) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing a string into memory cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// The value of a fence record.
pub fn fence_value() -> Vec<u8> {
    format!("{{\"v\":{VERSION},\"fence\":true}}").into_bytes()
}

/// Reads a record's key as a trace id, or `None` for a fence or a drop list.
pub fn trace_id_of(key: &[u8]) -> Result<Option<crate::otlp::TraceId>, RecordError> {
    if key == FENCE_KEY.as_bytes() || key.starts_with(DROP_LIST_KEY_PREFIX.as_bytes()) {
        return Ok(None);
    }
    let mut id = [0u8; 16];
    hex::decode_to_slice(key, &mut id).map_err(|_| RecordError::Key)?;
    crate::otlp::TraceId::from_slice(&id)
        .map(Some)
        .ok_or(RecordError::Key)
}

/// Reads a record's value. `rules` interns rule names, so that the decisions read back share
/// one allocation per rule.
pub fn decode(value: &[u8], rules: &mut RuleNames) -> Result<Entry, RecordError> {
    let v: Value<'_> =
        serde_json::from_slice(value).map_err(|e| RecordError::Value(e.to_string()))?;
    if v.v != VERSION {
        return Err(RecordError::Version(v.v));
    }
    if v.fence == Some(true) {
        return Ok(Entry::Fence);
    }
    if let Some(traces) = v.traces {
        let names: Vec<Arc<str>> = v
            .rules
            .unwrap_or_default()
            .iter()
            .map(|r| rules.get(r))
            .collect();
        let mut out = Vec::with_capacity(traces.len());
        for (hex, rule, decided_at) in traces {
            let id = match trace_id_of(hex.as_bytes())? {
                Some(id) => id,
                None => return Err(RecordError::Key),
            };
            let rule = names
                .get(rule)
                .ok_or_else(|| RecordError::Value(format!("rule index {rule} out of range")))?;
            out.push((
                id,
                Record {
                    decision: Decision::Drop { rule: rule.clone() },
                    decided_at,
                    through: None,
                },
            ));
        }
        return Ok(Entry::Drops(out));
    }
    let missing = |field: &str| RecordError::Value(format!("missing field `{field}`"));
    let rule = rules.get(&v.rule.ok_or_else(|| missing("rule"))?);
    let keep = match v.decision.as_deref() {
        Some("keep") => true,
        Some("drop") => false,
        Some(other) => {
            return Err(RecordError::Value(format!(
                "unknown decision `{other}`, expected keep or drop"
            )))
        }
        None => return Err(missing("decision")),
    };
    let sample_rate = match (keep, v.sample_rate) {
        (true, Some(0)) => return Err(RecordError::Value("sample_rate 0".into())),
        (true, Some(n)) => n,
        (true, None) => return Err(missing("sample_rate")),
        (false, _) => 1,
    };
    let decision = match (v.shadow, keep) {
        (true, _) => Decision::Shadow {
            rule,
            keep,
            sample_rate,
        },
        (false, true) => Decision::Keep { rule, sample_rate },
        (false, false) => Decision::Drop { rule },
    };
    Ok(Entry::Decision(Record {
        decided_at: v.decided_at.ok_or_else(|| missing("decided_at"))?,
        through: v.through.filter(|_| decision.forwards()),
        decision,
    }))
}

/// Rule names read back, shared: a read-back of a million decisions allocates each rule's
/// name once.
#[derive(Debug, Default)]
pub struct RuleNames(Vec<Arc<str>>);

impl RuleNames {
    fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(r) = self.0.iter().find(|r| &***r == name) {
            return r.clone();
        }
        let r: Arc<str> = Arc::from(name);
        // Rule sets are small; a log written by many rule versions stays bounded too.
        if self.0.len() < 4096 {
            self.0.push(r.clone());
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keep(rule: &str, n: u32) -> Decision {
        Decision::Keep {
            rule: rule.into(),
            sample_rate: n,
        }
    }

    #[test]
    fn every_decision_survives_the_round_trip() {
        let cases = [
            (keep("errors", 1), Some(17)),
            (keep("baseline", 10), None),
            (
                Decision::Drop {
                    rule: "drop-health-checks".into(),
                },
                None,
            ),
            (
                Decision::Shadow {
                    rule: "baseline".into(),
                    keep: false,
                    sample_rate: 1,
                },
                Some(3),
            ),
            (
                Decision::Shadow {
                    rule: "a \"quoted\" rule".into(),
                    keep: true,
                    sample_rate: 4,
                },
                Some(0),
            ),
        ];
        let mut names = RuleNames::default();
        for (decision, through) in cases {
            let r = Record {
                decision: decision.clone(),
                decided_at: 1_764_347_990_123,
                through,
            };
            let bytes = r.to_vec();
            assert!(bytes.len() < 128, "a record is small: {}", bytes.len());
            assert_eq!(
                decode(&bytes, &mut names),
                Ok(Entry::Decision(r)),
                "{decision:?}"
            );
        }
    }

    #[test]
    fn the_value_is_the_documented_json() {
        let r = Record {
            decision: keep("errors", 1),
            decided_at: 1_764_347_990_123,
            through: Some(5312),
        };
        assert_eq!(
            String::from_utf8(r.to_vec()).expect("utf-8"),
            r#"{"v":1,"decision":"keep","rule":"errors","sample_rate":1,"decided_at":1764347990123,"through":5312}"#
        );
        let d = Record {
            decision: Decision::Drop { rule: "b".into() },
            decided_at: 5,
            through: Some(9), // a drop forwards nothing: never written
        };
        assert_eq!(
            String::from_utf8(d.to_vec()).expect("utf-8"),
            r#"{"v":1,"decision":"drop","rule":"b","decided_at":5}"#
        );
    }

    #[test]
    fn fences_and_unknown_fields_are_understood_and_bad_records_refused_by_kind() {
        let mut names = RuleNames::default();
        assert_eq!(decode(&fence_value(), &mut names), Ok(Entry::Fence));
        assert_eq!(trace_id_of(FENCE_KEY.as_bytes()), Ok(None));
        let id = crate::otlp::TraceId([7; 16]);
        assert_eq!(trace_id_of(id.to_hex().as_bytes()), Ok(Some(id)));
        // A later tailsift may add fields: they are ignored.
        let newer = br#"{"v":1,"decision":"drop","rule":"r","decided_at":1,"region":"eu"}"#;
        assert!(matches!(decode(newer, &mut names), Ok(Entry::Decision(_))));
        let cases: &[(&[u8], &str)] = &[
            (b"", "value"),
            (b"not json", "value"),
            (br#"{"v":2,"decision":"keep"}"#, "version"),
            (
                br#"{"v":1,"decision":"maybe","rule":"r","decided_at":1}"#,
                "value",
            ),
            (
                br#"{"v":1,"decision":"keep","rule":"r","decided_at":1}"#,
                "value",
            ),
            (
                br#"{"v":1,"decision":"keep","rule":"r","sample_rate":0,"decided_at":1}"#,
                "value",
            ),
            (br#"{"v":1,"decision":"drop","decided_at":1}"#, "value"),
            (br#"{"v":1,"decision":"drop","rule":"r"}"#, "value"),
            (br#"[1,2]"#, "value"),
        ];
        for (bytes, kind) in cases {
            let e = decode(bytes, &mut names).expect_err("refused");
            assert_eq!(e.kind(), *kind, "{}: {e}", String::from_utf8_lossy(bytes));
        }
        for key in [&b"abc"[..], &[b'0'; 32], &[b'z'; 32]] {
            assert_eq!(trace_id_of(key), Err(RecordError::Key));
        }
    }

    #[test]
    fn a_drop_list_carries_each_trace_with_its_rule_and_time() {
        let (a, b): (Arc<str>, Arc<str>) = ("baseline".into(), "a \"quoted\" rule".into());
        let mut list = DropList::default();
        let ids: Vec<_> = (1..=3u8).map(|n| crate::otlp::TraceId([n; 16])).collect();
        list.push(ids[0], &a, 10);
        list.push(ids[1], &b, 11);
        list.push(ids[2], &a, 12);
        assert_eq!(list.key(), format!("tailsift.drops.{}", ids[0].to_hex()));
        assert_eq!(
            trace_id_of(list.key().as_bytes()),
            Ok(None),
            "not a trace id"
        );
        let mut value = Vec::new();
        list.encode(&mut value);
        let text = String::from_utf8(value.clone()).expect("utf-8");
        assert!(text.starts_with(r#"{"v":1,"decision":"drop","rules":["baseline","a \"quoted\" rule"],"traces":[["0101"#), "{text}");
        let Ok(Entry::Drops(got)) = decode(&value, &mut RuleNames::default()) else {
            panic!("a drop list: {text}");
        };
        let want: Vec<_> = [(0, &a, 10), (1, &b, 11), (2, &a, 12)]
            .iter()
            .map(|(i, r, at)| {
                (
                    ids[*i],
                    Record {
                        decision: Decision::Drop { rule: (*r).clone() },
                        decided_at: *at,
                        through: None,
                    },
                )
            })
            .collect();
        assert_eq!(got, want);
        for bad in [
            &br#"{"v":1,"decision":"drop","rules":["r"],"traces":[["00",0,1]]}"#[..],
            br#"{"v":1,"decision":"drop","rules":["r"],"traces":[["0101010101010101010101010101010101",0,1]]}"#,
            br#"{"v":1,"decision":"drop","rules":[],"traces":[["01010101010101010101010101010101",0,1]]}"#,
            br#"{"v":1,"decision":"drop","rules":["r"],"traces":[["01010101010101010101010101010101","x",1]]}"#,
        ] {
            assert!(decode(bad, &mut RuleNames::default()).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn rule_names_read_back_share_one_allocation() {
        let mut names = RuleNames::default();
        let r = Record {
            decision: keep("errors", 1),
            decided_at: 1,
            through: None,
        }
        .to_vec();
        let rule = |e: Entry| match e {
            Entry::Decision(r) => r.decision.rule_arc().clone(),
            other => panic!("a decision, not {other:?}"),
        };
        let a = rule(decode(&r, &mut names).expect("decodes"));
        let b = rule(decode(&r, &mut names).expect("decodes"));
        assert!(Arc::ptr_eq(&a, &b));
    }
}
