//! Per-rule marks: attributes a rule adds to the spans of the traces it keeps
//! (`marks: { sampling.reason: span-explosion }`), appended to each span as the configured
//! marking is (see [`crate::otlp::mark`]): encoded once at load, copied per span.

use std::fmt;

use crate::otlp::mark::Marks;
use crate::otlp::wire::{len_field_size, put_len_prefix, put_varint};

use super::yaml::{Kind, Node, Scalar};

/// A mark's value: an attribute of one of the scalar types.
#[derive(Debug, Clone, PartialEq)]
pub enum MarkValue {
    /// A string attribute.
    Str(String),
    /// An integer attribute.
    Int(i64),
    /// A double attribute.
    Double(f64),
    /// A boolean attribute.
    Bool(bool),
}

impl fmt::Display for MarkValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MarkValue::Str(s) => write!(f, "{s:?}"),
            MarkValue::Int(n) => write!(f, "{n}"),
            MarkValue::Double(d) => write!(f, "{d}"),
            MarkValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// A rule's marks, in file order.
pub type RuleMarks = Vec<(String, MarkValue)>;

/// Parses a rule's `marks:` map; errors come with their line.
pub(crate) fn parse(v: &Node) -> Result<RuleMarks, Vec<(usize, String)>> {
    const FORM: &str = "a map of attribute names to values, e.g. `marks: { sampling.reason: \
                        span-explosion }`";
    let Some(m) = v.as_map() else {
        return Err(vec![(
            v.line,
            format!("expected {FORM}, got {}", v.describe()),
        )]);
    };
    if m.is_empty() {
        return Err(vec![(
            v.line,
            format!("an empty map marks nothing: expected {FORM}"),
        )]);
    }
    let mut out = Vec::new();
    let mut errs = Vec::new();
    for (k, val) in m {
        let key = match k.as_str().map(str::trim) {
            Some(key) if !key.is_empty() => key.to_string(),
            _ => {
                errs.push((
                    k.line,
                    format!("a mark's name is a non-empty string, got {}", k.describe()),
                ));
                continue;
            }
        };
        let value = match &val.kind {
            Kind::Scalar { text, value } => match value {
                Scalar::Str => Ok(MarkValue::Str(text.clone())),
                Scalar::Bool(b) => Ok(MarkValue::Bool(*b)),
                Scalar::Int(n) => i64::try_from(*n)
                    .map(MarkValue::Int)
                    .map_err(|_| format!("`{key}`: {text} does not fit an int attribute (64 bits); quote it for a string")),
                Scalar::Float(d) if d.is_finite() => Ok(MarkValue::Double(*d)),
                Scalar::Float(_) => Err(format!("`{key}`: {text} is not a finite number; quote it for a string")),
            },
            _ => Err(format!(
                "`{key}`: a mark's value is a string, number or boolean, got {}",
                val.describe()
            )),
        };
        match value {
            Ok(value) => out.push((key, value)),
            Err(e) => errs.push((val.line, e)),
        }
    }
    if errs.is_empty() {
        Ok(out)
    } else {
        Err(errs)
    }
}

/// The marks as `Span.attributes` fields, encoded once.
pub(crate) fn encode(marks: &RuleMarks) -> Option<Marks> {
    if marks.is_empty() {
        return None;
    }
    let mut attrs = Vec::new();
    let mut keys = Vec::new();
    for (key, value) in marks {
        let mut any = Vec::new();
        match value {
            MarkValue::Str(s) => {
                put_len_prefix(&mut any, 1, s.len());
                any.extend_from_slice(s.as_bytes());
            }
            MarkValue::Bool(b) => {
                put_varint(&mut any, 2 << 3);
                put_varint(&mut any, u64::from(*b));
            }
            MarkValue::Int(n) => {
                put_varint(&mut any, 3 << 3);
                put_varint(&mut any, *n as u64);
            }
            MarkValue::Double(d) => {
                put_varint(&mut any, (4 << 3) | 1);
                any.extend_from_slice(&d.to_bits().to_le_bytes());
            }
        }
        let kv = len_field_size(1, key.len()) + len_field_size(2, any.len());
        put_len_prefix(&mut attrs, 9, kv);
        put_len_prefix(&mut attrs, 1, key.len());
        attrs.extend_from_slice(key.as_bytes());
        put_len_prefix(&mut attrs, 2, any.len());
        attrs.extend_from_slice(&any);
        keys.push(key.as_bytes().to_vec());
    }
    Some(Marks::from_attributes(attrs, keys))
}
