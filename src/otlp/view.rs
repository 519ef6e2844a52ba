//! Read-only views over encoded spans, resources and scopes, for the rules.
//!
//! Strings stay byte slices: matching never needs valid UTF-8, so invalid UTF-8 from a client
//! can neither panic nor silently turn into something else.

use super::wire::{split_short_field, Fields, Value, WireError};
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
        // How SDKs write the values rules compare: one field, a short string or a one- or
        // two-byte integer (an HTTP status code). Read without the general walk, which
        // reads the same.
        match *any_value {
            [0x0a, len, ref s @ ..] if len < 0x80 && usize::from(len) == s.len() => {
                return Some(Self::Str(s))
            }
            [0x18, v] if v < 0x80 => return Some(Self::Int(i64::from(v))),
            [0x18, v0, v1] if v0 >= 0x80 && v1 < 0x80 => {
                return Some(Self::Int(i64::from(v0 & 0x7f) | (i64::from(v1) << 7)))
            }
            _ => {}
        }
        Self::parse_walk(any_value)
    }

    /// [`Self::parse`] for any encoding: the last value field wins.
    fn parse_walk(any_value: &'a [u8]) -> Option<Self> {
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
/// The last occurrence wins, as for any protobuf field appended later. Malformed bytes end
/// the search with what was found before them.
pub fn find_attr<'a>(msg: &'a [u8], field: u32, key: &[u8]) -> Option<AttrValue<'a>> {
    // The encoded value of the last attribute with the key (`None` if it has no value).
    let mut found = None;
    let mut rest = msg;
    // How SDKs write nearly every attribute: one-byte tag and length, then the key and the
    // value, each with a one-byte tag and length, and nothing else. Such a run is read here
    // in one pattern per attribute (this runs for every attribute of every span a rule looks
    // at); from the first attribute written otherwise, the general walk takes over. (Reading
    // longer lengths here too, or handing back to this loop after one such attribute, cost
    // more than it saved: BENCHMARKS.md, issue 19's seventh session.)
    if let Some(tag) = attr_tag(field) {
        while let [t, len, 0x0a, klen, tail @ ..] = rest {
            let (len, klen) = (usize::from(*len), usize::from(*klen));
            if *t != tag || len >= 0x80 || len < klen + 4 || tail.len() + 2 < len {
                break;
            }
            let (k, value) = tail.split_at(klen);
            match value {
                [0x12, vlen, v @ ..] if usize::from(*vlen) == len - klen - 4 => {
                    if k == key {
                        found = Some(&v[..usize::from(*vlen)]);
                    }
                }
                _ => break,
            }
            rest = &rest[2 + len..];
        }
    }
    if !rest.is_empty() {
        each_attr(rest, field, |k, v| {
            if k == key {
                found = v;
            }
        });
    }
    found.and_then(AttrValue::parse)
}

/// The one-byte tag of the length-delimited field numbered `field`: attribute fields are
/// numbered below 16 in OTLP; a field numbered higher has no one-byte tag, and no short path.
fn attr_tag(field: u32) -> Option<u8> {
    (field < 16).then_some(((field as u8) << 3) | 2)
}

/// Calls `f` with the key and encoded value of every `KeyValue` field numbered `field` of
/// `msg` that has a key, in order, up to the first malformed field: the walk every attribute
/// lookup makes.
#[inline(always)]
pub(crate) fn each_attr<'a>(
    msg: &'a [u8],
    field: u32,
    mut f: impl FnMut(&'a [u8], Option<&'a [u8]>),
) {
    let tag = attr_tag(field);
    let mut rest = msg;
    while !rest.is_empty() {
        // How every SDK writes an attribute: its one-byte tag and a short length. Read
        // without the general walk: this runs for every attribute a rule looks past.
        let kv = if let Some((kv, after)) = tag.and_then(|t| split_short_field(rest, t)) {
            rest = after;
            Some(kv)
        } else {
            let Some(Ok(g)) = Fields::new(rest).next() else {
                break;
            };
            rest = &rest[g.raw.len()..];
            g.value.as_bytes().filter(|_| g.number == field)
        };
        if let Some((Some(k), v)) = kv.map(key_value) {
            f(k, v);
        }
    }
}

/// The values of a few span attributes, looked up in one walk: for the probes that read
/// several attributes of one span (the root's). Answers what [`find_attr`] would. (A plain
/// array, not a `SmallVec`: a view holding it must stay covariant in its lifetimes.)
#[derive(Debug, Default)]
pub struct AttrMemo<'k, 'a> {
    found: [(&'k [u8], Option<AttrValue<'a>>); AttrMemo::MAX_KEYS],
    len: usize,
}

impl<'k, 'a> AttrMemo<'k, 'a> {
    /// At most this many keys are looked up together.
    pub const MAX_KEYS: usize = 8;

    /// Looks the first [`Self::MAX_KEYS`] of `keys` up among the attributes of `span` at once.
    pub fn new(span: &SpanView<'a>, keys: &'k [Vec<u8>]) -> Self {
        let mut memo = AttrMemo::default();
        for (slot, k) in memo.found.iter_mut().zip(keys) {
            slot.0 = k;
            memo.len += 1;
        }
        let found = &mut memo.found[..memo.len];
        each_attr(span.attrs, 9, |k, v| {
            if let Some(slot) = found.iter_mut().find(|(key, _)| *key == k) {
                slot.1 = v.and_then(AttrValue::parse);
            }
        });
        memo
    }

    /// `Some(value)` for a key it looked up (the value itself `None` when absent).
    fn get(&self, key: &[u8]) -> Option<Option<AttrValue<'a>>> {
        self.found[..self.len]
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
    }
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
    /// The encoded `Span` message, read again for events, links and the like.
    pub bytes: &'a [u8],
    /// The run of the span's fields from its first attribute to the end of its last one
    /// (every attribute is in it, and it may hold other fields): where attributes are looked
    /// up. Empty when the span has none.
    pub attrs: &'a [u8],
    /// Attributes already looked up, if any: see [`AttrMemo`].
    pub memo: Option<&'a AttrMemo<'a, 'a>>,
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
        let mut attrs: Option<(usize, usize)> = None;
        for f in Fields::new(bytes) {
            let f = f?;
            match (f.number, f.value) {
                (9, _) => {
                    let from = f.raw.as_ptr() as usize - bytes.as_ptr() as usize;
                    let to = from + f.raw.len();
                    attrs = Some((attrs.map_or(from, |(first, _)| first), to));
                }
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
        if let Some((from, to)) = attrs {
            v.attrs = bytes.get(from..to).unwrap_or_default();
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
        match self.memo.and_then(|m| m.get(key)) {
            Some(found) => found,
            None => find_attr(self.attrs, 9, key),
        }
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

    #[test]
    fn a_value_reads_the_same_on_the_short_path_and_the_walk() {
        use opentelemetry_proto::tonic::common::v1::any_value::Value as V;
        use opentelemetry_proto::tonic::common::v1::AnyValue;
        use prost::Message;
        let long = "x".repeat(200);
        let mut cases: Vec<Vec<u8>> = [
            V::StringValue(String::new()),
            V::StringValue("/api/checkout".into()),
            V::StringValue(long),
            V::IntValue(0),
            V::IntValue(127),
            V::IntValue(128),
            V::IntValue(503),
            V::IntValue(16_383),
            V::IntValue(16_384),
            V::IntValue(-1),
            V::BoolValue(true),
            V::DoubleValue(2.5),
            V::BytesValue(vec![1, 2]),
        ]
        .into_iter()
        .map(|v| AnyValue { value: Some(v) }.encode_to_vec())
        .collect();
        // Odd but valid: a value written twice (the last wins), a long length in two bytes
        // for a short string, a continued varint cut short, nothing at all.
        cases.extend([
            vec![0x18, 0x01, 0x18, 0x02],
            vec![0x0a, 0x81, 0x00, b'a'],
            vec![0x0a, 0x01, b'a', 0x18, 0x05],
            vec![0x18, 0x80],
            vec![0x18, 0x80, 0x80],
            vec![0x0a, 0x85, b'a', b'b', b'c', b'd', b'e'],
            vec![],
        ]);
        // A length byte of 0x81 followed by 129 bytes: 0x81 is a continued varint, not 129.
        cases.push([&[0x0a, 0x81, 0x01][..], &[b'a'; 128][..]].concat());
        for c in &cases {
            assert_eq!(AttrValue::parse(c), AttrValue::parse_walk(c), "{c:?}");
        }
        assert_eq!(AttrValue::parse(&cases[6]), Some(AttrValue::Int(503)));
        assert_eq!(
            AttrValue::parse(&cases[1]),
            Some(AttrValue::Str(b"/api/checkout"))
        );
    }

    /// The general walk `find_attr` short-cuts: every field read by [`Fields`].
    fn find_attr_walk<'a>(msg: &'a [u8], field: u32, key: &[u8]) -> Option<AttrValue<'a>> {
        let mut found = None;
        for f in Fields::new(msg) {
            let Ok(f) = f else { break };
            if f.number != field {
                continue;
            }
            if let Some(kv) = f.value.as_bytes() {
                let (k, v) = key_value_walk(kv);
                if k == Some(key) {
                    found = v.and_then(AttrValue::parse);
                }
            }
        }
        found
    }

    /// A `Span` of the given fields: (field number, payload), each length-delimited.
    fn message(fields: &[(u32, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (n, b) in fields {
            crate::otlp::wire::put_len_prefix(&mut out, *n, b.len());
            out.extend_from_slice(b);
        }
        out
    }

    fn attr(key: &[u8], value: &[u8]) -> Vec<u8> {
        kv(&[(0x0a, key), (0x12, &kv(&[(0x0a, value)]))])
    }

    #[test]
    fn a_field_numbered_zero_is_malformed_even_in_the_usual_attribute_shape() {
        // Tag 0 is no field's: the walk stops there, whatever field is looked for (a field
        // numbered 16 or more has no one-byte tag, which must not make 0 its tag).
        let mut msg = vec![0x00];
        let body = attr(b"k", b"v");
        msg.push(body.len() as u8);
        msg.extend_from_slice(&body);
        for field in [9, 17] {
            assert_eq!(find_attr(&msg, field, b"k"), None, "field {field}");
            assert_eq!(
                find_attr(&msg, field, b"k"),
                find_attr_walk(&msg, field, b"k")
            );
        }
    }

    #[test]
    fn attributes_are_found_in_their_run_as_in_the_whole_span() {
        let long = vec![b'v'; 300];
        let span = message(&[
            (1, vec![7; 16]),
            (9, attr(b"a", b"first")),
            (5, b"name".to_vec()),
            (9, attr(b"b", &long)),
            (9, attr(b"a", b"second")),
            (11, attr(b"a", b"an event's, not the span's")),
        ]);
        let v = SpanView::parse(&span).expect("a valid span");
        assert!(v.attrs.len() < span.len() && !v.attrs.is_empty());
        assert_eq!(
            v.attr(b"a"),
            Some(AttrValue::Str(b"second")),
            "the last wins"
        );
        assert_eq!(v.attr(b"b"), Some(AttrValue::Str(&long)));
        assert_eq!(v.attr(b"name"), None);
        for key in [&b"a"[..], b"b", b"c", b""] {
            assert_eq!(v.attr(key), find_attr_walk(&span, 9, key), "{key:?}");
        }
        let none = message(&[(1, vec![7; 16]), (5, b"name".to_vec())]);
        let v = SpanView::parse(&none).expect("a valid span");
        assert!(v.attrs.is_empty());
        assert_eq!(v.attr(b"a"), None);
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

        #[test]
        fn an_attribute_is_found_as_the_general_walk_finds_it(
            noise in proptest::collection::vec(any::<u8>(), 0..200),
            attrs in proptest::collection::vec(
                // Mostly span attributes (field 9), so that keys repeat within one run.
                (prop_oneof![3 => Just(8u32), 1 => 0u32..20],
                 prop_oneof![Just(b"k".to_vec()), Just(b"key".to_vec()),
                    proptest::collection::vec(any::<u8>(), 0..4)],
                 proptest::collection::vec(any::<u8>(), 0..200)),
                0..8),
            cut in any::<usize>(),
        ) {
            for field in [1, 3, 9, 17] {
                for key in [&b"k"[..], b"key", b""] {
                    prop_assert_eq!(find_attr(&noise, field, key), find_attr_walk(&noise, field, key));
                }
            }
            let fields: Vec<(u32, Vec<u8>)> = attrs
                .iter()
                .map(|(n, k, v)| (n + 1, attr(k, v)))
                .collect();
            let mut msg = message(&fields);
            for field in [1, 3, 9, 17] {
                for key in [&b"k"[..], b"key"] {
                    prop_assert_eq!(find_attr(&msg, field, key), find_attr_walk(&msg, field, key));
                }
            }
            // Cut short: the two stop at the same fault with the same answer.
            msg.truncate(cut % (msg.len() + 1));
            for field in [1, 9] {
                prop_assert_eq!(find_attr(&msg, field, b"k"), find_attr_walk(&msg, field, b"k"));
            }
            // Looked up together, the keys find what each lookup alone finds.
            let keys = vec![b"k".to_vec(), b"key".to_vec(), Vec::new()];
            for attrs in [&msg[..], &noise[..]] {
                let view = SpanView { attrs, ..SpanView::default() };
                let memo = AttrMemo::new(&view, &keys);
                let with = SpanView { memo: Some(&memo), ..view };
                for key in [&b"k"[..], b"key", b"", b"other"] {
                    prop_assert_eq!(with.attr(key), find_attr_walk(attrs, 9, key));
                }
            }
        }
    }
}
