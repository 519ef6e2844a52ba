//! Marking kept spans: the rule that kept the trace and its sample rate as span attributes,
//! and the OpenTelemetry sampling threshold (`ot=th:...`) in the span's tracestate.
//!
//! Spans stay the bytes they arrived in: protobuf lets a message grow at its end, where a
//! repeated field (`Span.attributes`) accumulates and a singular one (`Span.trace_state`)
//! overrides its earlier occurrences. So marking appends the new fields to each span and
//! rewrites only the span's length prefix.

use super::wire::{len_field_size, put_len_prefix, put_varint, Fields, Value};

/// The threshold space of OpenTelemetry probability sampling: 56 bits of randomness.
pub const MAX_THRESHOLD: u64 = 1 << 56;

/// The rejection threshold of a 1-in-`rate` sample: a trace is kept when its 56 random bits
/// are at least this (0 keeps everything).
pub fn threshold(rate: u32) -> u64 {
    if rate <= 1 {
        0
    } else {
        MAX_THRESHOLD - MAX_THRESHOLD / u64::from(rate)
    }
}

/// A threshold as `th` writes it: 14 hex digits without trailing zeros (`0` for keep-all).
pub fn encode_threshold(t: u64) -> String {
    if t == 0 {
        return "0".into();
    }
    let s = format!("{:014x}", t.min(MAX_THRESHOLD - 1));
    s.trim_end_matches('0').to_string()
}

/// Parses a `th` value (1 to 14 hex digits, right-padded with zeros).
pub fn parse_threshold(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 14 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let padded = format!("{s:0<14}");
    u64::from_str_radix(&padded, 16).ok()
}

/// Combines an upstream threshold with ours. Samplers that read the same randomness (the
/// trace id's) are nested, so the stricter threshold wins; a salted sampler is independent of
/// the upstream one, so the keep probabilities multiply.
pub fn combine_thresholds(upstream: u64, ours: u64, salted: bool) -> u64 {
    if !salted {
        return upstream.max(ours);
    }
    let m = u128::from(MAX_THRESHOLD);
    let keep = (m - u128::from(upstream)) * (m - u128::from(ours)) / m;
    (m - keep) as u64
}

/// Sets the `th` sub-key of the `ot` entry of a W3C tracestate, keeping every other entry
/// and sub-key. The `ot` entry moves to the front, as W3C asks of a modified entry.
pub fn merge_tracestate(existing: &str, ours: u64, salted: bool) -> String {
    let mut others: Vec<&str> = Vec::new();
    let mut ot_subkeys: Vec<&str> = Vec::new();
    let mut upstream = None;
    for member in existing.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        match member.strip_prefix("ot=") {
            Some(v) => {
                for sub in v.split(';').filter(|s| !s.is_empty()) {
                    match sub.strip_prefix("th:") {
                        Some(th) => upstream = parse_threshold(th),
                        None => ot_subkeys.push(sub),
                    }
                }
            }
            None => others.push(member),
        }
    }
    let th = match upstream {
        Some(u) => combine_thresholds(u, ours, salted),
        None => ours,
    };
    let mut out = format!("ot=th:{}", encode_threshold(th));
    for sub in ot_subkeys {
        out.push(';');
        out.push_str(sub);
    }
    // W3C allows 32 entries; ours counts as one.
    for member in others.into_iter().take(31) {
        out.push(',');
        out.push_str(member);
    }
    out
}

/// Which marks kept spans get. Attribute names are configurable; `None` leaves one out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marking {
    /// Attribute naming the rule that kept the trace (a string).
    pub rule_attribute: Option<String>,
    /// Attribute with the trace's sample rate, N of 1-in-N (an int).
    pub sample_rate_attribute: Option<String>,
    /// Attribute with the rules' verdict in shadow mode: `keep` or `drop` (a string).
    pub shadow_attribute: Option<String>,
    /// Whether to set `ot=th:...` in the span's tracestate.
    pub tracestate: bool,
}

/// What a forwarded trace is marked with (see `Decision::mark`, which gives it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark<'a> {
    /// The rule that decided the trace.
    pub rule: &'a str,
    /// The trace's sample rate, N of 1-in-N.
    pub sample_rate: u32,
    /// In shadow mode, what the rules said: keep (`true`) or drop. Every trace is forwarded in
    /// shadow mode, so the counts downstream need no threshold: the tracestate is left alone.
    pub shadow: Option<bool>,
}

/// The marks of one trace, encoded once and appended to each of its spans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marks {
    /// `Span.attributes` fields (number 9), encoded.
    attrs: Vec<u8>,
    /// Their keys: an attribute of the span with one of these keys is replaced (OTLP wants
    /// attribute keys unique), e.g. when a trace passes a second sampler.
    keys: Vec<Vec<u8>>,
    /// The threshold to merge into the tracestate, and whether sampling was salted.
    threshold: Option<(u64, bool)>,
}

fn put_str_attr(out: &mut Vec<u8>, key: &str, v: &str) {
    let any = len_field_size(1, v.len());
    let kv = len_field_size(1, key.len()) + len_field_size(2, any);
    put_len_prefix(out, 9, kv);
    put_len_prefix(out, 1, key.len());
    out.extend_from_slice(key.as_bytes());
    put_len_prefix(out, 2, any);
    put_len_prefix(out, 1, v.len());
    out.extend_from_slice(v.as_bytes());
}

fn put_int_attr(out: &mut Vec<u8>, key: &str, v: i64) {
    let mut int = Vec::with_capacity(11);
    put_varint(&mut int, 3 << 3); // AnyValue.int_value, varint
    put_varint(&mut int, v as u64);
    let kv = len_field_size(1, key.len()) + len_field_size(2, int.len());
    put_len_prefix(out, 9, kv);
    put_len_prefix(out, 1, key.len());
    out.extend_from_slice(key.as_bytes());
    put_len_prefix(out, 2, int.len());
    out.extend_from_slice(&int);
}

impl Marking {
    /// The marks for a forwarded trace; `None` when there is nothing to add.
    /// `salted`: whether the rules sample on a salted hash rather than the trace id's bits.
    pub fn marks(&self, mark: Mark<'_>, salted: bool) -> Option<Marks> {
        let Mark {
            rule,
            sample_rate: rate,
            shadow,
        } = mark;
        let shadow = shadow.map(|keep| if keep { "keep" } else { "drop" });
        let threshold = self.tracestate && shadow.is_none();
        let mut attrs = Vec::new();
        let mut keys = Vec::new();
        if let Some(k) = &self.rule_attribute {
            put_str_attr(&mut attrs, k, rule);
            keys.push(k.as_bytes().to_vec());
        }
        if let Some(k) = &self.sample_rate_attribute {
            put_int_attr(&mut attrs, k, i64::from(rate));
            keys.push(k.as_bytes().to_vec());
        }
        if let (Some(k), Some(v)) = (&self.shadow_attribute, shadow) {
            put_str_attr(&mut attrs, k, v);
            keys.push(k.as_bytes().to_vec());
        }
        let threshold = threshold.then(|| (self::threshold(rate), salted));
        (!attrs.is_empty() || threshold.is_some()).then_some(Marks {
            attrs,
            keys,
            threshold,
        })
    }
}

impl Marks {
    /// Marks that append `attrs`, encoded `Span.attributes` fields whose keys are `keys`
    /// (a span's own attributes of those keys are replaced), and leave the tracestate alone:
    /// a rule's own marks (`rules::marks`).
    pub fn from_attributes(attrs: Vec<u8>, keys: Vec<Vec<u8>>) -> Self {
        Marks {
            attrs,
            keys,
            threshold: None,
        }
    }

    /// These marks followed by `more`'s attributes (a rule's marks after the configured ones).
    pub fn and(mut self, more: &Marks) -> Self {
        self.attrs.extend_from_slice(&more.attrs);
        self.keys.extend(more.keys.iter().cloned());
        self
    }

    /// Appends the marked copy of `spans` — a run of `ScopeSpans.spans` fields, each with its
    /// tag and length — to `out`. A span that does not parse is copied unchanged.
    pub fn mark_spans(&self, spans: &[u8], out: &mut Vec<u8>) {
        out.reserve(spans.len() + 64);
        for f in Fields::new(spans) {
            let Ok(f) = f else {
                return;
            };
            match f.value {
                Value::Bytes(span) if f.number == 2 => self.mark_span(span, out),
                _ => out.extend_from_slice(f.raw),
            }
        }
    }

    /// Whether a `Span.attributes` entry has one of the marks' keys.
    fn is_mark(&self, kv: &[u8]) -> bool {
        Fields::new(kv).flatten().any(|g| {
            g.number == 1
                && g.value
                    .as_bytes()
                    .is_some_and(|k| self.keys.iter().any(|m| m.as_slice() == k))
        })
    }

    fn mark_span(&self, span: &[u8], out: &mut Vec<u8>) {
        let mut state: Option<&[u8]> = None;
        let mut clash = false;
        for f in Fields::new(span) {
            match f {
                Ok(f) if f.number == 3 => state = f.value.as_bytes(),
                Ok(f) if f.number == 9 => {
                    clash |= f.value.as_bytes().is_some_and(|kv| self.is_mark(kv));
                }
                Ok(_) => {}
                Err(_) => {
                    put_len_prefix(out, 2, span.len());
                    out.extend_from_slice(span);
                    return;
                }
            }
        }
        // Rare: the span already carries one of our attributes; copy it without them.
        let filtered;
        let span = if clash {
            filtered = Fields::new(span)
                .flatten()
                .filter(|f| {
                    !(f.number == 9 && f.value.as_bytes().is_some_and(|kv| self.is_mark(kv)))
                })
                .flat_map(|f| f.raw.iter().copied())
                .collect::<Vec<u8>>();
            filtered.as_slice()
        } else {
            span
        };
        let trace_state = self.threshold.map(|(th, salted)| {
            let existing = String::from_utf8_lossy(state.unwrap_or_default());
            merge_tracestate(&existing, th, salted)
        });
        let ts_len = trace_state
            .as_ref()
            .map_or(0, |t| len_field_size(3, t.len()));
        put_len_prefix(out, 2, span.len() + self.attrs.len() + ts_len);
        out.extend_from_slice(span);
        out.extend_from_slice(&self.attrs);
        if let Some(t) = trace_state {
            put_len_prefix(out, 3, t.len());
            out.extend_from_slice(t.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::any_value;
    use opentelemetry_proto::tonic::trace::v1::Span;
    use prost::Message;

    use crate::otlp::build::{attr_str, span, trace_id, with_attrs};

    fn marking() -> Marking {
        Marking {
            rule_attribute: Some("sampling.rule".into()),
            sample_rate_attribute: Some("sampling.rate".into()),
            shadow_attribute: Some("sampling.shadow".into()),
            tracestate: true,
        }
    }

    fn field(s: &Span) -> Vec<u8> {
        let b = s.encode_to_vec();
        let mut out = Vec::new();
        put_len_prefix(&mut out, 2, b.len());
        out.extend_from_slice(&b);
        out
    }

    fn spans_of(fields: &[u8]) -> Vec<Span> {
        Fields::new(fields)
            .map(|f| Span::decode(f.unwrap().value.as_bytes().unwrap()).unwrap())
            .collect()
    }

    #[test]
    fn thresholds_follow_the_probability_sampling_spec() {
        assert_eq!(encode_threshold(threshold(1)), "0");
        assert_eq!(encode_threshold(threshold(2)), "8");
        assert_eq!(encode_threshold(threshold(4)), "c");
        assert_eq!(encode_threshold(threshold(10)), "e6666666666667");
        assert_eq!(parse_threshold("c"), Some(threshold(4)));
        assert_eq!(parse_threshold("xyz"), None);
        assert_eq!(parse_threshold("123456789012345"), None);
    }

    #[test]
    fn tracestate_merges_with_existing_entries() {
        let t10 = threshold(10);
        assert_eq!(merge_tracestate("", t10, false), "ot=th:e6666666666667");
        // Upstream kept 1 in 4 on the same randomness; we keep 1 in 10 of those: 1 in 10.
        assert_eq!(
            merge_tracestate("vendor=a,ot=th:c;rv:abcdef01234567", t10, false),
            "ot=th:e6666666666667;rv:abcdef01234567,vendor=a"
        );
        // We keep everything: the upstream threshold stays.
        assert_eq!(merge_tracestate("ot=th:c", 0, false), "ot=th:c");
        // Salted (independent): 1/2 upstream times 1/2 ours is 1/4.
        assert_eq!(merge_tracestate("ot=th:8", threshold(2), true), "ot=th:c");
    }

    #[test]
    fn marked_spans_decode_with_the_attributes_and_tracestate_appended() {
        let t = trace_id(3);
        let mut a = with_attrs(span(t, 1, None, "root", 0, 10), vec![attr_str("k", "v")]);
        a.trace_state = "ot=th:8,vendor=x".into();
        let b = span(t, 2, Some(1), "child", 1, 9);
        let mut input = field(&a);
        input.extend(field(&b));
        let mark = Mark {
            rule: "slow",
            sample_rate: 10,
            shadow: None,
        };
        let marks = marking().marks(mark, false).unwrap();
        let mut out = Vec::new();
        marks.mark_spans(&input, &mut out);
        let spans = spans_of(&out);
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[0].trace_state, "ot=th:e6666666666667,vendor=x");
        assert_eq!(spans[1].trace_state, "ot=th:e6666666666667");
        assert_eq!(
            spans[0].attributes.len(),
            3,
            "the original attribute is kept"
        );
        let attr = |s: &Span, k: &str| {
            s.attributes
                .iter()
                .find(|kv| kv.key == k)
                .and_then(|kv| kv.value.clone())
                .and_then(|v| v.value)
        };
        assert_eq!(
            attr(&spans[1], "sampling.rule"),
            Some(any_value::Value::StringValue("slow".into()))
        );
        assert_eq!(
            attr(&spans[1], "sampling.rate"),
            Some(any_value::Value::IntValue(10))
        );
        assert_eq!(spans[1].name, "child");
    }

    #[test]
    fn shadow_marks_carry_the_verdict_and_leave_the_tracestate() {
        let t = trace_id(4);
        let mut a = span(t, 1, None, "root", 0, 10);
        a.trace_state = "vendor=x".into();
        let mark = Mark {
            rule: "baseline",
            sample_rate: 10,
            shadow: Some(false),
        };
        let mut out = Vec::new();
        marking()
            .marks(mark, false)
            .unwrap()
            .mark_spans(&field(&a), &mut out);
        let s = &spans_of(&out)[0];
        assert_eq!(s.trace_state, "vendor=x");
        assert!(s.attributes.iter().any(|kv| kv.key == "sampling.shadow"
            && kv.value.as_ref().and_then(|v| v.value.clone())
                == Some(any_value::Value::StringValue("drop".into()))));
        let nothing = Marking {
            rule_attribute: None,
            sample_rate_attribute: None,
            shadow_attribute: None,
            tracestate: true,
        };
        assert_eq!(nothing.marks(mark, false), None, "nothing to add");
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::any_value;
    use opentelemetry_proto::tonic::trace::v1::Span;
    use proptest::prelude::*;
    use prost::Message;

    use crate::otlp::build::{attr_int, attr_str, span, trace_id, with_attrs};

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Marking by appending bytes gives the same span prost decodes as setting the fields
        /// on the decoded span: original fields kept, attributes appended, tracestate merged.
        #[test]
        fn marked_spans_decode_as_the_original_plus_the_marks(
            name in "[a-zA-Z /]{0,40}",
            attrs in proptest::collection::vec((prop_oneof![Just("r".to_string()), Just("n".to_string()), "[a-z.]{1,12}"], any::<i64>()), 0..6),
            state in prop_oneof![
                Just(String::new()),
                Just("vendor=x".to_string()),
                Just("ot=th:c;rv:0123456789abcd,a=b".to_string()),
                "[a-z]{1,8}=[a-z0-9]{1,8}",
            ],
            rate in 1u32..1000,
            salted in any::<bool>(),
            n in 1usize..5,
        ) {
            let t = trace_id(1);
            let mut spans = Vec::new();
            let mut input = Vec::new();
            for i in 0..n {
                let mut s = with_attrs(
                    span(t, i as u64 + 1, None, &name, 10, 20),
                    attrs.iter().map(|(k, v)| attr_int(k, *v)).collect(),
                );
                s.attributes.push(attr_str("k", "v"));
                s.trace_state = state.clone();
                let b = s.encode_to_vec();
                put_len_prefix(&mut input, 2, b.len());
                input.extend_from_slice(&b);
                spans.push(s);
            }
            let marking = Marking {
                rule_attribute: Some("r".into()),
                sample_rate_attribute: Some("n".into()),
                shadow_attribute: None,
                tracestate: true,
            };
            let mark = Mark { rule: "rule-x", sample_rate: rate, shadow: None };
            let mut out = Vec::new();
            marking.marks(mark, salted).unwrap().mark_spans(&input, &mut out);
            let got: Vec<Span> = Fields::new(&out)
                .map(|f| Span::decode(f.unwrap().value.as_bytes().unwrap()).unwrap())
                .collect();
            prop_assert_eq!(got.len(), n);
            for (mut want, got) in spans.into_iter().zip(got) {
                // A mark replaces an attribute of the same key.
                want.attributes.retain(|kv| kv.key != "r" && kv.key != "n");
                want.attributes.push(attr_str("r", "rule-x"));
                want.attributes.push(attr_int("n", i64::from(rate)));
                want.trace_state = merge_tracestate(&state, threshold(rate), salted);
                prop_assert!(want.trace_state.starts_with("ot=th:"));
                prop_assert_eq!(&got, &want);
                let kept = got.attributes.iter().filter(|kv| kv.key == "r").count();
                prop_assert_eq!(kept, 1);
                prop_assert!(matches!(
                    got.attributes.last().and_then(|kv| kv.value.as_ref()).and_then(|v| v.value.as_ref()),
                    Some(any_value::Value::IntValue(_))
                ));
            }
        }

        /// The threshold written matches the sampling decision: a trace id kept at rate N has
        /// randomness at or above the threshold `th` encodes.
        #[test]
        fn thresholds_round_trip_and_order_like_rates(a in 1u32..100_000, b in 1u32..100_000) {
            let (ta, tb) = (threshold(a), threshold(b));
            prop_assert_eq!(parse_threshold(&encode_threshold(ta)), Some(ta));
            prop_assert_eq!(a <= b, ta <= tb);
        }
    }
}
