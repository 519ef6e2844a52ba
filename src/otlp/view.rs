//! Read-only views over encoded spans, resources and scopes, for the rules.
//!
//! Strings stay byte slices: matching never needs valid UTF-8, so invalid UTF-8 from a client
//! can neither panic nor silently turn into something else.

use super::wire::{Fields, Value, WireError};
use super::SpanContext;

/// An attribute value as found in the bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AttrValue<'a> {
    /// `string_value`, as bytes: not checked to be UTF-8.
    Str(&'a [u8]),
    /// `bool_value`.
    Bool(bool),
    /// `int_value`.
    Int(i64),
    /// `double_value`.
    Double(f64),
    /// `bytes_value`.
    Bytes(&'a [u8]),
    /// Arrays and key-value lists are kept encoded; rules compare them only for existence.
    Composite(&'a [u8]),
}

impl<'a> AttrValue<'a> {
    fn parse(any_value: &'a [u8]) -> Option<Self> {
        let mut out = None;
        for f in Fields::new(any_value) {
            let f = f.ok()?;
            out = Some(match (f.number, f.value) {
                (1, Value::Bytes(b)) => AttrValue::Str(b),
                (2, Value::Varint(v)) => AttrValue::Bool(v != 0),
                (3, Value::Varint(v)) => AttrValue::Int(v as i64),
                (4, Value::Fixed64(v)) => AttrValue::Double(f64::from_bits(v)),
                (5 | 6, Value::Bytes(b)) => AttrValue::Composite(b),
                (7, Value::Bytes(b)) => AttrValue::Bytes(b),
                _ => continue,
            });
        }
        out
    }

    /// The value as a number, for numeric comparisons (ints and doubles compare together).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            AttrValue::Int(i) => Some(i as f64),
            AttrValue::Double(d) => Some(d),
            _ => None,
        }
    }
}

/// Finds attribute `key` among the repeated `KeyValue` fields numbered `field` of `msg`.
/// The last occurrence wins, as for any protobuf field appended later.
pub fn find_attr<'a>(msg: &'a [u8], field: u32, key: &[u8]) -> Option<AttrValue<'a>> {
    let mut found = None;
    for f in Fields::new(msg) {
        let Ok(f) = f else { break };
        if f.number != field {
            continue;
        }
        let Some(kv) = f.value.as_bytes() else {
            continue;
        };
        let (k, v) = key_value(kv);
        if k == Some(key) {
            found = v.and_then(AttrValue::parse);
        }
    }
    found
}

/// The key and the encoded `AnyValue` of a `KeyValue` message (each the last occurrence).
#[inline(always)]
fn key_value(kv: &[u8]) -> (Option<&[u8]>, Option<&[u8]>) {
    // How every SDK writes it: the key (field 1) and then the value (field 2), each shorter than
    // 128 bytes and nothing else. Read without the general walk: this runs for every attribute
    // a rule looks past.
    if let [0x0a, klen, rest @ ..] = kv {
        let klen = usize::from(*klen);
        if klen < 0x80 && rest.len() > klen {
            let (k, rest) = rest.split_at(klen);
            if let [0x12, vlen, v @ ..] = rest {
                if *vlen < 0x80 && usize::from(*vlen) == v.len() {
                    return (Some(k), Some(v));
                }
            }
        }
    }
    key_value_walk(kv)
}

/// [`key_value`] for any encoding.
fn key_value_walk(kv: &[u8]) -> (Option<&[u8]>, Option<&[u8]>) {
    let mut k = None;
    let mut v = None;
    for g in Fields::new(kv) {
        let Ok(g) = g else { break };
        match (g.number, g.value) {
            (1, Value::Bytes(b)) => k = Some(b),
            (2, Value::Bytes(b)) => v = Some(b),
            _ => {}
        }
    }
    (k, v)
}

/// The fields of one span that rules look at.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpanView<'a> {
    /// The encoded `Span` message, read again for attributes.
    pub bytes: &'a [u8],
    /// As sent: 8 bytes from a well-behaved SDK, empty when absent, not checked.
    pub span_id: &'a [u8],
    /// Empty or all zeros for a root span.
    pub parent_span_id: &'a [u8],
    /// The span name, not checked to be UTF-8.
    pub name: &'a [u8],
    /// `SpanKind` number: 0 unspecified, 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: u64,
    /// `start_time_unix_nano`: nanoseconds since the Unix epoch, 0 when absent.
    pub start: u64,
    /// `end_time_unix_nano`: nanoseconds since the Unix epoch, 0 when absent.
    pub end: u64,
    /// `StatusCode` number: 0 unset, 1 ok, 2 error.
    pub status_code: u64,
}

impl<'a> SpanView<'a> {
    /// Reads the fixed fields of the encoded `Span` `bytes`; attributes are looked up on
    /// demand by [`attr`](Self::attr). An error means the span itself is malformed; a
    /// malformed `status` is read as far as it goes.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, WireError> {
        let mut v = SpanView {
            bytes,
            ..SpanView::default()
        };
        for f in Fields::new(bytes) {
            let f = f?;
            match (f.number, f.value) {
                (2, Value::Bytes(b)) => v.span_id = b,
                (4, Value::Bytes(b)) => v.parent_span_id = b,
                (5, Value::Bytes(b)) => v.name = b,
                (6, Value::Varint(k)) => v.kind = k,
                (7, Value::Fixed64(t)) => v.start = t,
                (8, Value::Fixed64(t)) => v.end = t,
                (15, Value::Bytes(status)) => {
                    for s in Fields::new(status).flatten() {
                        if s.number == 3 {
                            v.status_code = s.value.as_u64().unwrap_or(0);
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(v)
    }

    /// No parent: the parent span id is empty or all zeros (as decoding decides
    /// [`SpanFacts::is_root`](super::decode::SpanFacts::is_root)).
    pub fn is_root(&self) -> bool {
        self.parent_span_id.iter().all(|&b| b == 0)
    }

    /// End minus start, in nanoseconds; 0 when the end is missing or before the start.
    pub fn duration_nanos(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// The span attribute `key`, the last one if repeated; `None` when it is absent, or its
    /// value empty or unreadable.
    pub fn attr(&self, key: &[u8]) -> Option<AttrValue<'a>> {
        find_attr(self.bytes, 9, key)
    }
}

/// The resource and scope of a span.
#[derive(Debug, Clone, Copy)]
pub struct ContextView<'a> {
    resource: &'a [u8],
    scope: &'a [u8],
    service: Option<&'a [u8]>,
}

impl<'a> ContextView<'a> {
    /// A view of `ctx`, cheap to make: the slices were found when the context was built.
    pub fn new(ctx: &'a SpanContext) -> Self {
        ContextView {
            resource: ctx.resource_message(),
            scope: ctx.scope_message(),
            service: ctx.service_name(),
        }
    }

    /// The resource attribute `key`, the last one if repeated; `None` when it is absent, or its
    /// value empty or unreadable. For `service.name`, [`service_name`](Self::service_name) is
    /// cheaper.
    pub fn resource_attr(&self, key: &[u8]) -> Option<AttrValue<'a>> {
        find_attr(self.resource, 1, key)
    }

    /// The resource's `service.name` (found once per context, see [`SpanContext`]).
    pub fn service_name(&self) -> Option<&'a [u8]> {
        self.service
    }

    fn scope_field(&self, n: u32) -> Option<&'a [u8]> {
        Fields::new(self.scope)
            .filter_map(Result::ok)
            .filter(|f| f.number == n)
            .filter_map(|f| f.value.as_bytes())
            .last()
    }

    /// The instrumentation scope's `name`; `None` when there is no scope or no name.
    pub fn scope_name(&self) -> Option<&'a [u8]> {
        self.scope_field(1)
    }

    /// The instrumentation scope's `version`; `None` when there is no scope or no version.
    pub fn scope_version(&self) -> Option<&'a [u8]> {
        self.scope_field(2)
    }

    /// The scope attribute `key`, the last one if repeated; `None` when it is absent, or its
    /// value empty or unreadable.
    pub fn scope_attr(&self, key: &[u8]) -> Option<AttrValue<'a>> {
        find_attr(self.scope, 3, key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kv(parts: &[(u8, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (tag, b) in parts {
            out.push(*tag);
            crate::otlp::wire::put_varint(&mut out, b.len() as u64);
            out.extend_from_slice(b);
        }
        out
    }

    #[test]
    fn a_key_value_reads_the_same_on_the_short_path_and_the_walk() {
        let long = vec![b'x'; 200];
        let cases = [
            kv(&[(0x0a, b"http.route"), (0x12, b"\x0a\x04/api")]),
            kv(&[(0x12, b"\x0a\x04/api"), (0x0a, b"http.route")]),
            kv(&[(0x0a, b"a"), (0x0a, b"b"), (0x12, b"v")]),
            kv(&[(0x0a, b"a"), (0x12, b"v"), (0x12, b"w")]),
            kv(&[(0x0a, b"a"), (0x12, &long)]),
            kv(&[(0x0a, &long), (0x12, b"v")]),
            kv(&[(0x0a, b"only-key")]),
            kv(&[(0x0a, b""), (0x12, b"")]),
            vec![0x0a, 0x05, b'a'],
            vec![0x0a, 0x01, b'a', 0x12, 0x85, 0x01],
            vec![],
        ];
        for c in &cases {
            assert_eq!(key_value(c), key_value_walk(c), "{c:?}");
        }
        assert_eq!(
            key_value(&cases[0]),
            (Some(&b"http.route"[..]), Some(&b"\x0a\x04/api"[..]))
        );
        assert_eq!(key_value(&cases[2]).0, Some(&b"b"[..]), "the last key wins");
    }

    proptest! {
        #[test]
        fn a_key_value_of_any_bytes_reads_as_the_walk_reads_it(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
            key in proptest::collection::vec(any::<u8>(), 0..20),
            value in proptest::collection::vec(any::<u8>(), 0..200),
            tail in proptest::collection::vec(any::<u8>(), 0..4),
        ) {
            prop_assert_eq!(key_value(&bytes), key_value_walk(&bytes));
            let mut b = kv(&[(0x0a, &key), (0x12, &value)]);
            prop_assert_eq!(key_value(&b), key_value_walk(&b));
            b.extend_from_slice(&tail);
            prop_assert_eq!(key_value(&b), key_value_walk(&b));
        }
    }
}
