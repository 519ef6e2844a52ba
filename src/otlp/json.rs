//! OTLP/JSON in, OTLP protobuf out: a JSON `ExportTraceServiceRequest` (as the OpenTelemetry
//! Collector's `encoding: otlp_json` and the OTLP/HTTP JSON exporters write it) becomes the
//! protobuf bytes the rest of tailsift reads, so that there is one decode path downstream.
//!
//! The encoding ([OTLP/JSON]) is the protobuf JSON mapping with three exceptions: trace and
//! span ids are hex strings (not base64), keys are lowerCamelCase, and enums are integers.
//! 64-bit integers (`startTimeUnixNano`, `intValue`) are decimal strings, though numbers are
//! accepted as well. Unknown fields are ignored, as the specification requires of receivers.
//!
//! The field mapping is `opentelemetry-proto`'s serde support; this module adds what it leaves
//! out: a missing `values` of an empty `arrayValue`/`kvlistValue` and a missing `key` (Go's
//! protojson omits empty fields) are defaults rather than errors, ids must be plain hex (no
//! `0x`), and every error names where in the document it is. Nothing here panics on input;
//! nesting is bounded by serde_json's recursion limit (128).
//!
//! [OTLP/JSON]: https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use serde_json::Value;
use thiserror::Error;

/// Why a JSON message is not an OTLP/JSON trace request.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum JsonError {
    /// Not JSON at all (or invalid UTF-8, or nested deeper than 128).
    #[error("invalid JSON: {0}")]
    Syntax(String),
    /// JSON, but a field does not have the OTLP/JSON shape.
    #[error("not an OTLP/JSON trace request: `{path}`: {message}")]
    Shape {
        /// Where in the document, dotted (`resourceSpans[0].scopeSpans[0].spans[2].traceId`);
        /// `.` for the document itself.
        path: String,
        /// What is wrong there, in serde's words or ours.
        message: String,
    },
}

/// Parses an OTLP/JSON `ExportTraceServiceRequest`.
pub fn parse(json: &[u8]) -> Result<ExportTraceServiceRequest, JsonError> {
    let mut value: Value =
        serde_json::from_slice(json).map_err(|e| JsonError::Syntax(e.to_string()))?;
    if !value.is_object() {
        return Err(JsonError::Shape {
            path: ".".into(),
            message: format!("expected an object, got {}", kind(&value)),
        });
    }
    let mut path = Vec::new();
    normalize(&mut value, &mut path)?;
    serde_path_to_error::deserialize(value).map_err(|e| JsonError::Shape {
        path: e.path().to_string(),
        message: e.inner().to_string(),
    })
}

/// Converts an OTLP/JSON trace request to its protobuf encoding, appended to `out`.
pub fn to_proto_into(json: &[u8], out: &mut Vec<u8>) -> Result<(), JsonError> {
    let req = parse(json)?;
    out.reserve(req.encoded_len());
    // Encoding into a Vec cannot run out of space.
    let _ = req.encode(out);
    Ok(())
}

/// Converts an OTLP/JSON trace request to its protobuf encoding.
pub fn to_proto(json: &[u8]) -> Result<Vec<u8>, JsonError> {
    let mut out = Vec::new();
    to_proto_into(json, &mut out)?;
    Ok(out)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

const ID_FIELDS: [&str; 3] = ["traceId", "spanId", "parentSpanId"];

/// Fills in the defaults the generated types do not, and checks ids, recursively. `path`
/// holds the keys and indexes above `v`, for errors.
fn normalize(v: &mut Value, path: &mut Vec<String>) -> Result<(), JsonError> {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                path.push(k.clone());
                if ID_FIELDS.contains(&k.as_str()) {
                    check_hex_id(child, path)?;
                }
                match k.as_str() {
                    "arrayValue" | "kvlistValue" => {
                        if let Value::Object(inner) = child {
                            inner
                                .entry("values")
                                .or_insert_with(|| Value::Array(Vec::new()));
                            if k == "kvlistValue" {
                                default_keys(inner.get_mut("values"));
                            }
                        }
                    }
                    "attributes" => default_keys(Some(child)),
                    _ => {}
                }
                normalize(child, path)?;
                path.pop();
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter_mut().enumerate() {
                path.push(format!("[{i}]"));
                normalize(child, path)?;
                path.pop();
            }
        }
        _ => {}
    }
    Ok(())
}

/// A `KeyValue` with an empty key may omit `key`.
fn default_keys(list: Option<&mut Value>) {
    if let Some(Value::Array(items)) = list {
        for item in items {
            if let Value::Object(kv) = item {
                kv.entry("key")
                    .or_insert_with(|| Value::String(String::new()));
            }
        }
    }
}

fn check_hex_id(v: &Value, path: &[String]) -> Result<(), JsonError> {
    let err = |message: String| JsonError::Shape {
        path: path.join(".").replace(".[", "["),
        message,
    };
    match v {
        Value::String(s) if s.len() % 2 == 0 && s.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(()),
        Value::String(s) => Err(err(format!(
            "expected a hex id (an even number of hex digits), got {:?}",
            truncate(s)
        ))),
        other => Err(err(format!("expected a hex string, got {}", kind(other)))),
    }
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(40) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::build::*;
    use crate::otlp::decode::Decoder;
    use crate::otlp::view::{AttrValue, SpanView};

    /// A request as the Collector's `otlp_json` encoding writes it.
    const COLLECTOR_JSON: &str = r#"{
      "resourceSpans": [{
        "resource": {"attributes": [
          {"key": "service.name", "value": {"stringValue": "checkout"}},
          {"key": "empty.list", "value": {"arrayValue": {}}},
          {"key": "empty.map", "value": {"kvlistValue": {}}}
        ]},
        "scopeSpans": [{
          "scope": {"name": "io.opentelemetry.http", "version": "1.2.0"},
          "spans": [{
            "traceId": "5B8EFFF798038103D269B633813FC60C",
            "spanId": "eee19b7ec3c1b174",
            "parentSpanId": "",
            "name": "POST /checkout",
            "kind": 2,
            "startTimeUnixNano": "1544712660000000000",
            "endTimeUnixNano": 1544712661000000000,
            "attributes": [
              {"key": "http.response.status_code", "value": {"intValue": "503"}},
              {"key": "retry", "value": {"boolValue": true}},
              {"key": "ratio", "value": {"doubleValue": 0.25}},
              {"key": "blob", "value": {"bytesValue": "aGk="}},
              {"value": {"stringValue": "keyless"}}
            ],
            "events": [{"timeUnixNano": "1544712660500000000", "name": "retry"}],
            "links": [{"traceId": "5b8efff798038103d269b633813fc60d", "spanId": "eee19b7ec3c1b175"}],
            "status": {"code": 2, "message": "upstream failed"},
            "flags": 257,
            "someFutureField": {"ignored": true}
          }]
        }]
      }]
    }"#;

    #[test]
    fn converts_a_collector_request_to_the_same_spans_and_fields() {
        let proto = to_proto(COLLECTOR_JSON.as_bytes()).expect("valid OTLP/JSON");
        let spans = spans_of(&proto).expect("protobuf");
        assert_eq!(spans.len(), 1);
        let (service, span) = &spans[0];
        assert_eq!(service, "checkout");
        assert_eq!(
            hex::encode(&span.trace_id),
            "5b8efff798038103d269b633813fc60c",
            "ids are hex, case-insensitive"
        );
        assert_eq!(hex::encode(&span.span_id), "eee19b7ec3c1b174");
        assert!(span.parent_span_id.is_empty());
        assert_eq!(span.kind, SpanKind::Server as i32);
        assert_eq!(span.start_time_unix_nano, 1_544_712_660_000_000_000);
        assert_eq!(
            span.end_time_unix_nano, 1_544_712_661_000_000_000,
            "int64 as a number too"
        );
        assert_eq!(span.events[0].time_unix_nano, 1_544_712_660_500_000_000);
        assert_eq!(span.links.len(), 1);
        assert_eq!(span.flags, 257);
        assert_eq!(span.attributes.len(), 5);
        assert_eq!(span.attributes[4].key, "", "a missing key is the empty key");
        assert_eq!(span.status.as_ref().map(|s| s.code), Some(2));

        // What the rules read from the converted bytes.
        let mut d = Decoder::new();
        assert_eq!(d.decode(&proto), Ok(1));
        let group = d.groups(&proto).next().expect("one trace");
        let s = group.spans().next().expect("one span");
        assert!(s.facts.is_root && s.facts.is_error);
        let v = SpanView::parse(s.bytes).expect("span");
        assert_eq!(v.name, b"POST /checkout");
        assert_eq!(
            v.attr(b"http.response.status_code"),
            Some(AttrValue::Int(503))
        );
        assert_eq!(v.attr(b"retry"), Some(AttrValue::Bool(true)));
        assert_eq!(v.attr(b"ratio"), Some(AttrValue::Double(0.25)));
        assert_eq!(v.attr(b"blob"), Some(AttrValue::Bytes(b"hi")));
    }

    #[test]
    fn round_trips_what_prost_encodes() {
        let t = trace_id(42);
        let s = with_attrs(
            with_error(span(t, 7, Some(3), "GET /x", 100, 350)),
            vec![attr_str("http.route", "/x"), attr_int("n", -5)],
        );
        let req = ExportTraceServiceRequest {
            resource_spans: vec![resource_spans("orders", vec![s])],
        };
        let json = serde_json::to_vec(&req).expect("serialize");
        assert_eq!(parse(&json), Ok(req));
    }

    #[test]
    fn rejects_what_is_not_otlp_json_with_the_place_named() {
        let span_with = |field: &str| {
            format!(r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{{field}}}]}}]}}]}}"#)
        };
        let cases: Vec<(String, &str)> = vec![
            ("".into(), "invalid JSON"),
            ("{\"resourceSpans\": [".into(), "invalid JSON"),
            ("[1, 2]".into(), "expected an object, got an array"),
            ("\"x\"".into(), "expected an object"),
            (
                span_with(r#""traceId": "xyz0""#),
                "resourceSpans[0].scopeSpans[0].spans[0].traceId",
            ),
            (
                span_with(r#""spanId": "0x1234567890abcdef""#),
                "expected a hex id",
            ),
            (span_with(r#""spanId": "abc""#), "even number"),
            (
                span_with(r#""traceId": 12"#),
                "expected a hex string, got a number",
            ),
            (
                span_with(r#""startTimeUnixNano": "soon""#),
                "startTimeUnixNano",
            ),
            (span_with(r#""startTimeUnixNano": -1"#), "out of range"),
            (
                span_with(r#""startTimeUnixNano": 1.5e18"#),
                "startTimeUnixNano",
            ),
            (span_with(r#""kind": "SPAN_KIND_SERVER""#), "kind"),
            (span_with(r#""name": 5"#), "name"),
            (
                span_with(r#""attributes": [{"key": "n", "value": {"intValue": "1e3"}}]"#),
                "attributes",
            ),
            (
                span_with(r#""attributes": [{"key": "b", "value": {"bytesValue": "!!"}}]"#),
                "attributes",
            ),
            ("{\"resourceSpans\": {}}".into(), "resourceSpans"),
        ];
        for (text, want) in cases {
            let err = parse(text.as_bytes()).expect_err(&text).to_string();
            assert!(
                err.contains(want),
                "{text}: {err:?} should mention {want:?}"
            );
        }
    }

    #[test]
    fn invalid_utf8_and_lone_surrogates_are_errors_not_panics() {
        let mut bad = br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":""#.to_vec();
        bad.extend_from_slice(&[0xff, 0xfe]);
        bad.extend_from_slice(br#""}]}]}]}"#);
        assert!(matches!(parse(&bad), Err(JsonError::Syntax(_))));
        let surrogate = r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":"\ud800"}]}]}]}"#;
        assert!(parse(surrogate.as_bytes()).is_err());
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let depth = 100_000;
        let mut s =
            String::from(r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"k","value":"#);
        for _ in 0..depth {
            s.push_str(r#"{"arrayValue":{"values":["#);
        }
        assert!(matches!(parse(s.as_bytes()), Err(JsonError::Syntax(_))));
    }

    #[test]
    fn an_empty_object_is_an_empty_request() {
        assert_eq!(to_proto(b"{}"), Ok(Vec::new()));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = to_proto(&bytes);
        }

        #[test]
        fn never_panics_on_a_corrupted_request(pos in proptest::prelude::any::<usize>(), byte in proptest::prelude::any::<u8>()) {
            let mut b = COLLECTOR_JSON.as_bytes().to_vec();
            let i = pos % b.len();
            b[i] = byte;
            let _ = to_proto(&b);
        }
    }
}
