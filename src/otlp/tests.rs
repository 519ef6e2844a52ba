//! Decoding, encoding and span views on generated requests: every span kept byte for byte,
//! and no input, however malformed, makes them panic.

use std::sync::Arc;

use opentelemetry_proto::tonic::trace::v1::Span;
use proptest::prelude::*;
use prost::Message;

use super::build::*;
use super::decode::{DecodeError, Decoder};
use super::encode::encode_trace;
use super::view::{AttrValue, ContextView, SpanView};
use super::{SpanContext, TraceId};
use crate::demo::generator::{Generator, GeneratorConfig};

fn group_bytes(d: &Decoder, payload: &[u8]) -> Vec<(TraceId, Vec<Vec<u8>>)> {
    d.groups(payload)
        .map(|g| (g.trace_id, g.spans().map(|s| s.bytes.to_vec()).collect()))
        .collect()
}

#[test]
fn decode_splits_a_request_into_traces_keeping_each_span_as_it_arrived() {
    let (a, b) = (trace_id(1), trace_id(2));
    let spans = vec![
        span(a, 1, None, "a-root", 10, 90),
        span(b, 2, Some(9), "b-child", 20, 30),
        with_error(span(a, 3, Some(1), "a-child", 20, 80)),
    ];
    let payload = request("checkout", spans.clone());
    let mut d = Decoder::new();
    assert_eq!(d.decode(&payload), Ok(3));
    let groups = group_bytes(&d, &payload);
    assert_eq!(groups.len(), 2);
    let ga = groups.iter().find(|g| g.0 == TraceId(a)).unwrap();
    assert_eq!(
        ga.1,
        vec![spans[0].encode_to_vec(), spans[2].encode_to_vec()],
        "spans are the original bytes, in arrival order"
    );
    let gb = groups.iter().find(|g| g.0 == TraceId(b)).unwrap();
    assert_eq!(gb.1, vec![spans[1].encode_to_vec()]);

    let facts: Vec<_> = d
        .groups(&payload)
        .find(|g| g.trace_id == TraceId(a))
        .unwrap()
        .spans()
        .map(|s| s.facts)
        .collect();
    assert!(facts[0].is_root && !facts[0].is_error);
    assert!(!facts[1].is_root && facts[1].is_error);
    assert_eq!((facts[1].start, facts[1].end), (20, 80));
}

#[test]
fn spans_without_a_valid_trace_id_are_counted_and_skipped() {
    let mut no_id = span(trace_id(1), 1, None, "x", 1, 2);
    no_id.trace_id = vec![];
    let mut zero = span(trace_id(1), 2, None, "y", 1, 2);
    zero.trace_id = vec![0; 16];
    let mut short = span(trace_id(1), 3, None, "z", 1, 2);
    short.trace_id = vec![1; 8];
    let good = span(trace_id(2), 4, None, "ok", 1, 2);
    let payload = request("svc", vec![no_id, zero, short, good]);
    let mut d = Decoder::new();
    assert_eq!(d.decode(&payload), Ok(1));
    assert_eq!(d.invalid_spans, 3);
}

#[test]
fn malformed_and_empty_messages_are_errors_not_panics() {
    let mut d = Decoder::new();
    assert_eq!(d.decode(&[]), Err(DecodeError::Empty));
    let payload = request("svc", vec![span(trace_id(1), 1, None, "x", 1, 2)]);
    for cut in 1..payload.len() {
        // Every truncation either fails cleanly or decodes a prefix.
        let _ = d.decode(&payload[..cut]);
    }
    assert!(
        d.decode(b"{\"resourceSpans\": []}").is_err(),
        "JSON is not protobuf"
    );
    assert_eq!(
        d.decode(&payload[..payload.len() - 1])
            .map_err(|e| e.kind()),
        Err("malformed_protobuf")
    );
}

/// A request of one resource and scope holding `span`, encoded by hand.
fn request_of_raw_span(span: &[u8]) -> Vec<u8> {
    use super::wire::put_len_prefix;
    let mut scope_spans = Vec::new();
    put_len_prefix(&mut scope_spans, 2, span.len());
    scope_spans.extend_from_slice(span);
    let mut resource_spans = Vec::new();
    put_len_prefix(&mut resource_spans, 2, scope_spans.len());
    resource_spans.extend_from_slice(&scope_spans);
    let mut req = Vec::new();
    put_len_prefix(&mut req, 1, resource_spans.len());
    req.extend_from_slice(&resource_spans);
    req
}

#[test]
fn odd_but_valid_span_encodings_decode_as_a_protobuf_reader_reads_them() {
    use super::wire::{put_len_prefix, put_varint};
    let tid = [7u8; 16];
    let mut span = Vec::new();
    // The end first, and again at the very end: the last one wins.
    span.push(0x41);
    span.extend_from_slice(&5_000u64.to_le_bytes());
    // An attribute before the ids.
    let kv = attr_str("http.route", "/x").encode_to_vec();
    put_len_prefix(&mut span, 9, kv.len());
    span.extend_from_slice(&kv);
    // The trace id's length as a two-byte varint (0x90 0x00 is 16).
    span.extend_from_slice(&[0x0a, 0x90, 0x00]);
    span.extend_from_slice(&tid);
    span.extend_from_slice(&[0x12, 8]);
    span.extend_from_slice(&[1; 8]);
    // A name of 200 bytes: a two-byte length.
    put_len_prefix(&mut span, 5, 200);
    span.extend_from_slice(&[b'n'; 200]);
    // Kind SERVER as a two-byte varint.
    span.extend_from_slice(&[0x30, 0x82, 0x00]);
    // The start as a varint where a fixed64 belongs: decoding still counts it.
    span.push(7 << 3);
    put_varint(&mut span, 1_000);
    // Two parents: the last, all zeros, wins, so the span is a root.
    span.extend_from_slice(&[0x22, 8]);
    span.extend_from_slice(&[9; 8]);
    span.extend_from_slice(&[0x22, 8]);
    span.extend_from_slice(&[0; 8]);
    // Flags (field 16, fixed32: a two-byte tag), status ERROR; then the second end.
    span.extend_from_slice(&[0x85, 0x01, 1, 3, 0, 0]);
    span.extend_from_slice(&[0x7a, 2, 0x18, 2]);
    span.push(0x41);
    span.extend_from_slice(&9_000u64.to_le_bytes());
    let req = request_of_raw_span(&span);

    let mut d = Decoder::new();
    assert_eq!(d.decode(&req), Ok(1));
    let g = d.groups(&req).next().expect("one trace");
    assert_eq!(g.trace_id, TraceId(tid));
    let s = g.spans().next().expect("one span");
    assert_eq!(s.bytes, &span[..]);
    assert_eq!((s.facts.start, s.facts.end), (1_000, 9_000));
    assert_eq!(s.facts.kind, 2);
    assert!(s.facts.is_root && s.facts.is_error);
    let v = s.view();
    assert_eq!(v.span_id, &[1; 8]);
    assert_eq!(v.parent_span_id, &[0; 8]);
    assert_eq!(v.name, &[b'n'; 200][..]);
    assert_eq!(v.status_code, 2);
    assert_eq!(v.attr(b"http.route"), Some(AttrValue::Str(b"/x")));

    // A time cut short at the end of the span, or anywhere else, is malformed, not read.
    let cut = request_of_raw_span(&span[..span.len() - 3]);
    assert_eq!(
        d.decode(&cut).map_err(|e| e.kind()),
        Err("malformed_protobuf")
    );
    let mut short_id = vec![0x0a, 16];
    short_id.extend_from_slice(&tid[..10]);
    assert!(d.decode(&request_of_raw_span(&short_id)).is_err());
    let mut short_flags = span[..span.len() - 9].to_vec();
    short_flags.extend_from_slice(&[0x85, 0x01, 1, 3]);
    assert!(d.decode(&request_of_raw_span(&short_flags)).is_err());
}

fn decoded_chunks(payload: &[u8]) -> Vec<(Arc<SpanContext>, Vec<u8>)> {
    let mut d = Decoder::new();
    d.decode(payload).unwrap();
    let mut chunks: Vec<(Arc<SpanContext>, Vec<u8>)> = Vec::new();
    for g in d.groups(payload) {
        for s in g.spans() {
            match chunks.iter_mut().find(|(c, _)| Arc::ptr_eq(c, s.context)) {
                Some((_, b)) => b.extend_from_slice(s.field),
                None => chunks.push((s.context.clone(), s.field.to_vec())),
            }
        }
    }
    chunks
}

fn sorted_spans(payloads: &[Vec<u8>]) -> Vec<(String, Vec<u8>)> {
    let mut all: Vec<_> = payloads
        .iter()
        .flat_map(|p| spans_of(p).unwrap())
        .map(|(svc, s)| (svc, s.encode_to_vec()))
        .collect();
    all.sort();
    all
}

#[test]
fn encoded_output_holds_every_span_with_its_resource_and_scope() {
    let mut gen = Generator::new(GeneratorConfig::default(), 7);
    let t = gen.next_trace(1_000_000_000);
    let all_chunks: Vec<_> = t.messages.iter().flat_map(|m| decoded_chunks(m)).collect();
    let out = encode_trace(
        all_chunks.iter().map(|(c, b)| (&**c, b.as_slice())),
        1 << 20,
    );
    assert_eq!(out.len(), 1);
    assert_eq!(sorted_spans(&out), sorted_spans(&t.messages));
    // Resource attributes beyond service.name survive too.
    let req = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(
        &out[0][..],
    )
    .unwrap();
    assert!(req
        .resource_spans
        .iter()
        .all(|rs| rs.resource.as_ref().is_some_and(|r| r.attributes.len() > 1)));
    assert!(req
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .all(|ss| ss.scope.is_some()));
}

#[test]
fn large_traces_are_split_into_messages_under_the_limit() {
    let t = trace_id(5);
    let spans: Vec<Span> = (1..=200)
        .map(|i| {
            with_attrs(
                span(t, i, Some(1), "work", i, i + 1),
                vec![attr_str("payload", &"x".repeat(100))],
            )
        })
        .collect();
    let payload = request("big", spans);
    let chunks = decoded_chunks(&payload);
    let limit = 4096;
    let out = encode_trace(chunks.iter().map(|(c, b)| (&**c, b.as_slice())), limit);
    assert!(out.len() > 5, "{} messages", out.len());
    assert!(
        out.iter().all(|m| m.len() <= limit),
        "every message within the limit"
    );
    assert_eq!(sorted_spans(&out), sorted_spans(&[payload]));
}

#[test]
fn span_view_reads_fields_and_attributes() {
    let s = with_attrs(
        with_error(span(trace_id(1), 7, Some(3), "GET /x", 100, 350)),
        vec![
            attr_str("http.route", "/x"),
            attr_int("http.response.status_code", 503),
        ],
    );
    let bytes = s.encode_to_vec();
    let v = SpanView::parse(&bytes).unwrap();
    assert_eq!(v.name, b"GET /x");
    assert_eq!(v.duration_nanos(), 250);
    assert_eq!(v.status_code, 2);
    assert!(!v.is_root());
    assert_eq!(v.attr(b"http.route"), Some(AttrValue::Str(b"/x")));
    assert_eq!(
        v.attr(b"http.response.status_code"),
        Some(AttrValue::Int(503))
    );
    assert_eq!(v.attr(b"missing"), None);

    let payload = request("orders", vec![s]);
    let chunks = decoded_chunks(&payload);
    let ctx = ContextView::new(&chunks[0].0);
    assert_eq!(ctx.service_name(), Some(&b"orders"[..]));
    assert_eq!(ctx.scope_name(), Some(&b"orders-instrumentation"[..]));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn decoding_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut d = Decoder::new();
        if d.decode(&bytes).is_ok() {
            for g in d.groups(&bytes) {
                for s in g.spans() {
                    let _ = SpanView::parse(s.bytes);
                }
            }
        }
    }

    #[test]
    fn generated_traces_survive_decode_and_encode_byte_for_byte(seed in any::<u64>()) {
        let mut gen = Generator::new(GeneratorConfig::default(), seed);
        let t = gen.next_trace(1_000_000_000);
        let chunks: Vec<_> = t.messages.iter().flat_map(|m| decoded_chunks(m)).collect();
        let out = encode_trace(chunks.iter().map(|(c, b)| (&**c, b.as_slice())), 1 << 20);
        prop_assert_eq!(sorted_spans(&out), sorted_spans(&t.messages));
    }

    #[test]
    fn the_decoders_view_of_a_span_is_the_full_walks(seed in any::<u64>()) {
        let mut gen = Generator::new(GeneratorConfig::default(), seed);
        let t = gen.next_trace(1_000_000_000);
        let mut d = Decoder::new();
        let mut found = 0;
        for m in &t.messages {
            d.decode(m).expect("generated traffic decodes");
            for g in d.groups(m) {
                for s in g.spans() {
                    let (fast, walked) = (s.view(), SpanView::parse(s.bytes).expect("a valid span"));
                    prop_assert_eq!(fast.attrs, walked.attrs);
                    prop_assert_eq!((fast.span_id, fast.parent_span_id, fast.name), (walked.span_id, walked.parent_span_id, walked.name));
                    prop_assert_eq!((fast.kind, fast.start, fast.end, fast.status_code), (walked.kind, walked.start, walked.end, walked.status_code));
                    prop_assert_eq!(s.facts.is_root, walked.is_root());
                    for key in [&b"http.response.status_code"[..], b"http.route", b"db.system", b"customer.tier", b"absent"] {
                        let a = fast.attr(key);
                        prop_assert_eq!(a, crate::otlp::view::find_attr(s.bytes, 9, key));
                        found += usize::from(a.is_some());
                    }
                }
            }
        }
        prop_assert!(found > 0, "the traffic sets some of these attributes");
    }

    #[test]
    fn corrupting_a_byte_never_panics(seed in any::<u64>(), pos in any::<usize>(), byte in any::<u8>()) {
        let mut gen = Generator::new(GeneratorConfig::default(), seed);
        let mut msg = gen.next_trace(1).messages.remove(0);
        let i = pos % msg.len();
        msg[i] = byte;
        let mut d = Decoder::new();
        let _ = d.decode(&msg);
    }
}

#[test]
fn a_context_finds_its_resource_and_scope_messages_the_last_occurrence_winning() {
    // ResourceSpans fields: resource (1) twice, schema_url (3); ScopeSpans: scope (1), schema (3).
    let mut resource = Vec::new();
    super::wire::put_len_prefix(&mut resource, 1, 3);
    resource.extend_from_slice(b"old");
    super::wire::put_len_prefix(&mut resource, 1, 3);
    resource.extend_from_slice(b"new");
    super::wire::put_len_prefix(&mut resource, 3, 2);
    resource.extend_from_slice(b"s1");
    let mut scope = Vec::new();
    super::wire::put_len_prefix(&mut scope, 3, 2);
    scope.extend_from_slice(b"s2");
    super::wire::put_len_prefix(&mut scope, 1, 5);
    scope.extend_from_slice(b"scope");
    let ctx = SpanContext::new(resource, scope);
    assert_eq!(ctx.resource_message(), b"new");
    assert_eq!(ctx.scope_message(), b"scope");
    let bare = SpanContext::new(Vec::new(), Vec::new());
    assert_eq!(bare.resource_message(), b"");
    assert_eq!(bare.scope_message(), b"");
}

#[test]
fn a_resource_written_around_its_scope_spans_is_one_context_of_its_fields_in_order() {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    let id = trace_id(1);
    // prost writes `schema_url` (3) after the scope spans (2): the resource in two pieces.
    let message = |schema: &str| {
        let mut rs = resource_spans("checkout", vec![span(id, 1, None, "root", 10, 20)]);
        rs.schema_url = schema.to_string();
        encode(vec![rs])
    };
    let context = |d: &mut Decoder, m: &[u8]| {
        d.decode(m).unwrap();
        let g = d.groups(m).next().unwrap();
        let s = g.spans().next().unwrap();
        s.context.clone()
    };
    let mut d = Decoder::new();
    let a = context(&mut d, &message("https://schema/1"));
    let rs = ExportTraceServiceRequest::decode(&message("https://schema/1")[..])
        .unwrap()
        .resource_spans
        .remove(0);
    let mut want = Vec::new();
    super::wire::put_len_prefix(&mut want, 1, rs.resource.as_ref().unwrap().encoded_len());
    rs.resource.as_ref().unwrap().encode(&mut want).unwrap();
    super::wire::put_len_prefix(&mut want, 3, rs.schema_url.len());
    want.extend_from_slice(rs.schema_url.as_bytes());
    assert_eq!(a.resource_fields(), &want[..]);
    assert!(Arc::ptr_eq(
        &a,
        &context(&mut d, &message("https://schema/1"))
    ));
    let b = context(&mut d, &message("https://schema/2"));
    assert!(!Arc::ptr_eq(&a, &b), "another schema, another context");
    let bare = context(&mut d, &message(""));
    assert!(!Arc::ptr_eq(&a, &bare) && !Arc::ptr_eq(&b, &bare));

    // Three pieces (the resource written twice): gathered, in order, and shared the same way.
    let mut scope_spans = Vec::new();
    rs.scope_spans[0].encode(&mut scope_spans).unwrap();
    let mut three = Vec::new();
    three.extend_from_slice(&want); // resource, schema_url
    super::wire::put_len_prefix(&mut three, 2, scope_spans.len());
    three.extend_from_slice(&scope_spans);
    super::wire::put_len_prefix(&mut three, 1, 0); // an empty resource, merged last
    let mut request = Vec::new();
    super::wire::put_len_prefix(&mut request, 1, three.len());
    request.extend_from_slice(&three);
    let c = context(&mut d, &request);
    assert_eq!(
        c.resource_fields(),
        &[&want[..], &[0x0a, 0x00]].concat()[..]
    );
    assert!(Arc::ptr_eq(&c, &context(&mut d, &request)));
}

#[test]
fn a_context_knows_its_service_name_as_an_attribute_lookup_would_find_it() {
    use opentelemetry_proto::tonic::common::v1::KeyValue;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    let resource_fields = |attrs: Vec<KeyValue>| {
        let r = Resource {
            attributes: attrs,
            ..Resource::default()
        };
        let mut out = Vec::new();
        super::wire::put_len_prefix(&mut out, 1, r.encoded_len());
        r.encode(&mut out).unwrap();
        out
    };
    let cases: Vec<(Vec<KeyValue>, Option<&[u8]>)> = vec![
        (vec![attr_str("service.name", "orders")], Some(b"orders")),
        (
            vec![
                attr_str("host.name", "h1"),
                attr_str("service.name", "first"),
                attr_str("service.name", "last"),
            ],
            Some(b"last"),
        ),
        (vec![attr_int("service.name", 7)], None),
        (vec![attr_str("host.name", "h1")], None),
        (vec![], None),
    ];
    for (attrs, want) in cases {
        let ctx = SpanContext::new(resource_fields(attrs.clone()), Vec::new());
        let view = ContextView::new(&ctx);
        let looked_up = match view.resource_attr(b"service.name") {
            Some(AttrValue::Str(s)) => Some(s),
            _ => None,
        };
        assert_eq!(view.service_name(), want, "{attrs:?}");
        assert_eq!(view.service_name(), looked_up, "{attrs:?}");
        assert_eq!(ctx.service_name(), want, "{attrs:?}");
    }
    assert_eq!(
        SpanContext::new(Vec::new(), Vec::new()).service_name(),
        None
    );
}

#[test]
fn a_groups_chunks_borrow_adjacent_spans_and_copy_only_scattered_ones() {
    use std::borrow::Cow;
    let (a, b) = (trace_id(1), trace_id(2));
    let field = |s: &Span| {
        let mut out = vec![0x12];
        super::wire::put_varint(&mut out, s.encoded_len() as u64);
        s.encode(&mut out).expect("a Vec grows");
        out
    };
    let a_spans = [
        span(a, 1, None, "a-root", 10, 90),
        span(a, 2, Some(1), "a-child", 20, 80),
        span(a, 3, Some(1), "a-scattered", 20, 80),
    ];
    let b_span = span(b, 4, None, "b-root", 10, 20);
    let gateway = vec![
        a_spans[0].clone(),
        a_spans[1].clone(),
        b_span.clone(),
        a_spans[2].clone(),
    ];
    let payload = encode(vec![
        resource_spans("gateway", gateway),
        resource_spans("orders", vec![b_span.clone()]),
    ]);
    let mut d = Decoder::new();
    assert_eq!(d.decode(&payload), Ok(5));
    for g in d.groups(&payload) {
        let chunks = g.chunks();
        let services: Vec<_> = chunks.iter().map(|(c, _)| c.service_name()).collect();
        if g.trace_id == TraceId(a) {
            assert_eq!(services, [Some(&b"gateway"[..])]);
            let want: Vec<u8> = a_spans.iter().flat_map(field).collect();
            assert_eq!(&*chunks[0].1, &want[..], "every span, in arrival order");
            assert!(
                matches!(chunks[0].1, Cow::Owned(_)),
                "a span of b lies between"
            );
        } else {
            assert_eq!(services, [Some(&b"gateway"[..]), Some(&b"orders"[..])]);
            for (_, run) in &chunks {
                assert_eq!(&**run, &field(&b_span)[..]);
                assert!(matches!(run, Cow::Borrowed(_)), "one span is borrowed");
            }
        }
    }
    // Two adjacent spans of one context make one borrowed run.
    let payload = request("gateway", a_spans[..2].to_vec());
    d.decode(&payload).expect("valid");
    let g = d.groups(&payload).next().expect("one trace");
    let chunks = g.chunks();
    assert_eq!(chunks.len(), 1);
    assert!(matches!(chunks[0].1, Cow::Borrowed(_)));
    let want: Vec<u8> = a_spans[..2].iter().flat_map(field).collect();
    assert_eq!(&*chunks[0].1, &want[..]);
}

#[test]
fn a_trace_id_in_hex_is_32_lowercase_characters_first_byte_first() {
    let mut id = [0u8; 16];
    id[0] = 0xab;
    id[15] = 0x01;
    assert_eq!(TraceId(id).to_hex(), "ab000000000000000000000000000001");
    assert_eq!(TraceId([0xff; 16]).to_hex(), "f".repeat(32));
}

proptest! {
    /// An SDK's batch interleaves the spans of many traces: each trace comes out as one group
    /// of its spans in the order they arrived, whatever the interleaving.
    #[test]
    fn interleaved_traces_are_grouped_each_in_arrival_order(
        picks in proptest::collection::vec(0u64..12, 1..200)
    ) {
        // Span i belongs to trace picks[i]; the ids' bytes sort in another order than picks.
        let spans: Vec<Span> = (picks.iter().enumerate())
            .map(|(i, &t)| span(trace_id((t * 0x9e37_79b9_7f4a) ^ 0x55), i as u64 + 1, None, "s", 1, 2))
            .collect();
        let payload = request("svc", spans.clone());
        let mut d = Decoder::new();
        prop_assert_eq!(d.decode(&payload), Ok(spans.len()));
        let mut want: std::collections::BTreeMap<TraceId, Vec<Vec<u8>>> = Default::default();
        for s in &spans {
            let id = TraceId::from_slice(&s.trace_id).expect("id");
            want.entry(id).or_default().push(s.encode_to_vec());
        }
        let groups = group_bytes(&d, &payload);
        prop_assert_eq!(groups.len(), want.len(), "one group a trace");
        for (id, got) in groups {
            prop_assert_eq!(Some(&got), want.get(&id));
        }
    }
}
