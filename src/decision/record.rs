//! The decision log's record format: what tailsift writes for every decision, and what it (or
//! any other pipeline) reads back. A public interface, documented in the README ("The decision
//! log"); change it only compatibly, or with a new `v`.
//!
//! - **Key**: the trace id as 32 lowercase hex characters, like the output topic's keys. A key
//!   that is not a trace id is one of tailsift's own markers ([`FENCE_KEY`]): skip it.
//! - **Value**: a small JSON object (tens of bytes):
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

/// One decision, as logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub decision: Decision,
    /// Unix milliseconds.
    pub decided_at: u64,
    /// See the module's documentation.
    pub through: Option<i64>,
}

/// What a log record holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Decision(Record),
    /// A fence, to be skipped.
    Fence,
}

/// Why a record was not understood. `kind` is a small fixed word for metrics and logs.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordError {
    #[error("the key is not a 32-character hex trace id")]
    Key,
    #[error("the value is not a decision record: {0}")]
    Value(String),
    #[error("format version {0} is not understood (this tailsift reads version {VERSION})")]
    Version(u32),
}

impl RecordError {
    /// Every kind, for registering the metric series.
    pub const KINDS: &'static [&'static str] = &["key", "value", "version"];

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
}

impl Record {
    /// Appends the record's value to `out`: the JSON of [`Value`], written directly (serde's
    /// writer made many tiny writes; this runs once per decided trace).
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

/// The value of a fence record.
pub fn fence_value() -> Vec<u8> {
    format!("{{\"v\":{VERSION},\"fence\":true}}").into_bytes()
}

/// Reads a record's key as a trace id, or `None` for a fence (any key that is not one is one
/// of tailsift's markers).
pub fn trace_id_of(key: &[u8]) -> Result<Option<crate::otlp::TraceId>, RecordError> {
    if key == FENCE_KEY.as_bytes() {
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
            Entry::Fence => panic!("not a fence"),
        };
        let a = rule(decode(&r, &mut names).expect("decodes"));
        let b = rule(decode(&r, &mut names).expect("decodes"));
        assert!(Arc::ptr_eq(&a, &b));
    }
}
