//! `expect.forwarded` in `rules test` case files: what a forwarded span looks like once
//! redacted, asserted by span name.
//!
//! ```yaml
//! expect:
//!   outcome: keep
//!   forwarded:
//!     - span: SELECT orders
//!       attributes: { db.statement: "SELECT * FROM orders WHERE id = ?" }
//!       absent: [user.email]
//! ```

use std::collections::BTreeMap;
use std::fmt::Write;

use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde::Deserialize;

use super::{Redaction, Tally};
use crate::otlp::decode::Decoder;
use crate::otlp::wire::Fields;
use crate::rules::cases::AttrValue;

/// What a case expects of the forwarded spans named `span` (each of them).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardedSpan {
    /// The span's name.
    pub span: String,
    /// Attributes the forwarded span has, with these values.
    #[serde(default)]
    pub attributes: BTreeMap<String, AttrValue>,
    /// Attributes the forwarded span does not have.
    #[serde(default)]
    pub absent: Vec<String>,
    /// Resource attributes the span leaves under, with these values.
    #[serde(default)]
    pub resource: BTreeMap<String, AttrValue>,
    /// Resource attributes it leaves without.
    #[serde(default)]
    pub resource_absent: Vec<String>,
}

/// A span as it leaves: redacted, with the resource it leaves under.
#[derive(Debug, Clone, PartialEq)]
pub struct Forwarded {
    /// The span, decoded.
    pub span: Span,
    /// Its resource, decoded.
    pub resource: Resource,
}

/// The spans of `requests` as they would be forwarded with `redaction` (marks aside); spans
/// that cannot be redacted are left out, as they would be.
pub fn forwarded(
    redaction: Option<&Redaction>,
    requests: &[Vec<u8>],
) -> Result<Vec<Forwarded>, String> {
    let mut out = Vec::new();
    let mut decoder = Decoder::new();
    for r in requests {
        decoder
            .decode(r)
            .map_err(|e| format!("the trace does not decode: {e}"))?;
        for g in decoder.groups(r) {
            for (ctx, spans) in g.chunks() {
                let mut tally = Tally::default();
                let chunk = redaction.map(|red| red.chunk(ctx, &spans, &mut tally));
                let (ctx, spans) = match &chunk {
                    Some(c) => (
                        c.context.as_deref().unwrap_or(ctx),
                        c.spans.as_deref().unwrap_or(&spans),
                    ),
                    None => (&**ctx, &*spans),
                };
                let resource = Resource::decode(ctx.resource_message())
                    .map_err(|e| format!("a forwarded resource does not decode: {e}"))?;
                for f in Fields::new(spans) {
                    let bytes = f
                        .ok()
                        .and_then(|f| f.value.as_bytes())
                        .ok_or("forwarded spans do not parse")?;
                    let span = Span::decode(bytes)
                        .map_err(|e| format!("a forwarded span does not decode: {e}"))?;
                    out.push(Forwarded {
                        span,
                        resource: resource.clone(),
                    });
                }
            }
        }
    }
    Ok(out)
}

fn value_of(kv: &[KeyValue], key: &str) -> Option<Option<any_value::Value>> {
    kv.iter()
        .find(|a| a.key == key)
        .map(|a| a.value.as_ref().and_then(|v| v.value.clone()))
}

fn same(got: &Option<any_value::Value>, want: &AttrValue) -> bool {
    use any_value::Value as V;
    match (got, want) {
        (Some(V::StringValue(g)), AttrValue::Str(w)) => g == w,
        (Some(V::IntValue(g)), AttrValue::Int(w)) => g == w,
        (Some(V::BoolValue(g)), AttrValue::Bool(w)) => g == w,
        (Some(V::DoubleValue(g)), AttrValue::Double(w)) => g == w,
        _ => false,
    }
}

fn show(v: &Option<any_value::Value>) -> String {
    use any_value::Value as V;
    match v {
        Some(V::StringValue(s)) => format!("{s:?}"),
        Some(V::IntValue(i)) => i.to_string(),
        Some(V::BoolValue(b)) => b.to_string(),
        Some(V::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => "no value".into(),
    }
}

/// An expected value as a case file would write it (strings quoted).
fn show_want(w: &AttrValue) -> String {
    match w {
        AttrValue::Str(s) => format!("{s:?}"),
        AttrValue::Int(i) => i.to_string(),
        AttrValue::Bool(b) => b.to_string(),
        AttrValue::Double(d) => d.to_string(),
    }
}

fn check_attrs(
    place: &str,
    got: &[KeyValue],
    want: &BTreeMap<String, AttrValue>,
    absent: &[String],
    why: &mut String,
) {
    for (k, w) in want {
        match value_of(got, k) {
            Some(g) if same(&g, w) => {}
            Some(g) => {
                let _ = writeln!(
                    why,
                    "{place} `{k}`: expected {}, got {}",
                    show_want(w),
                    show(&g)
                );
            }
            None => {
                let _ = writeln!(
                    why,
                    "{place} `{k}`: expected {}, but it is absent",
                    show_want(w)
                );
            }
        }
    }
    for k in absent {
        if let Some(g) = value_of(got, k) {
            let _ = writeln!(why, "{place} `{k}`: expected absent, got {}", show(&g));
        }
    }
}

/// Checks the forwarded spans against a case's expectations; what differs, one per line
/// (empty when all hold).
pub fn check(spans: &[Forwarded], want: &[ForwardedSpan]) -> String {
    let mut why = String::new();
    for w in want {
        let named: Vec<&Forwarded> = spans.iter().filter(|f| f.span.name == w.span).collect();
        if named.is_empty() {
            let _ = writeln!(why, "no forwarded span is named `{}`", w.span);
            continue;
        }
        for f in named {
            let place = format!("span `{}`: attribute", w.span);
            check_attrs(
                &place,
                &f.span.attributes,
                &w.attributes,
                &w.absent,
                &mut why,
            );
            let place = format!("span `{}`: resource attribute", w.span);
            check_attrs(
                &place,
                &f.resource.attributes,
                &w.resource,
                &w.resource_absent,
                &mut why,
            );
        }
    }
    why
}

#[cfg(test)]
mod tests {
    use crate::rules::RuleSet;

    const REDACTION: &str = "attributes:
  - name: sql
    key: db.statement
    action: scrub
    patterns: [sql_literals]
  - name: email
    key: user.email
    action: remove
  - name: host
    key: host.secret
    action: remove
";

    const CASES: &str = r#"cases:
  - name: what leaves is what the case says
    expect:
      outcome: keep
      forwarded:
        - span: SELECT orders
          attributes: { db.statement: "SELECT * FROM orders WHERE id = ?", db.system: postgresql }
          absent: [user.email]
          resource: { service.name: orders }
          resource_absent: [host.secret]
    spans: &spans
      - service: orders
        name: SELECT orders
        attributes:
          db.statement: SELECT * FROM orders WHERE id = 42
          db.system: postgresql
          user.email: a@b.io
        resource: { host.secret: s3 }
  - name: the original values do not leave
    expect:
      forwarded:
        - span: SELECT orders
          attributes: { db.statement: "SELECT * FROM orders WHERE id = 42" }
          absent: [db.system]
          resource: { host.secret: s3 }
        - span: no such span
    spans: *spans
"#;

    #[test]
    fn a_case_asserts_the_forwarded_span_and_a_wrong_assertion_says_what_left() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: &str| {
            std::fs::write(dir.path().join(name), text).expect("write");
        };
        write("rules.yaml", "rules:\n  - name: all\n    outcome: keep\n");
        write("redaction.yaml", REDACTION);
        let cases = tempfile::tempdir().expect("tempdir");
        let file = cases.path().join("cases.yaml");
        std::fs::write(&file, CASES).expect("write");
        let set = RuleSet::load(dir.path(), None).expect("rules and redaction load");
        let report = crate::rules::cases::run(&set, &[file]);
        assert_eq!((report.passed, report.failed), (1, 1), "{}", report.text);
        for line in [
            "span `SELECT orders`: attribute `db.statement`: expected \"SELECT * FROM orders WHERE id = 42\", got \"SELECT * FROM orders WHERE id = ?\"",
            "span `SELECT orders`: attribute `db.system`: expected absent, got \"postgresql\"",
            "span `SELECT orders`: resource attribute `host.secret`: expected \"s3\", but it is absent",
            "no forwarded span is named `no such span`",
        ] {
            assert!(report.text.contains(line), "`{line}` in:\n{}", report.text);
        }
    }
}
