//! A Kafka message's payload as the protobuf decoder takes it: decoded, split per trace, and
//! every span read as the rules read it. Differential as well: what the decoder found in a
//! span on its short paths (ids, name, attributes, kind, times, status) must be what the full
//! walk of the span reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tailsift::otlp::decode::Decoder;
use tailsift::otlp::view::SpanView;
use tailsift::otlp::wire::{Fields, Value};

fuzz_target!(|data: &[u8]| {
    let mut d = Decoder::new();
    if d.decode(data).is_ok() {
        for g in d.groups(data) {
            for s in g.spans() {
                let Ok(walked) = SpanView::parse(s.bytes) else {
                    continue;
                };
                let fast = s.view();
                assert_eq!(fast.span_id, walked.span_id);
                assert_eq!(fast.parent_span_id, walked.parent_span_id);
                assert_eq!(fast.name, walked.name);
                assert_eq!(fast.attrs, walked.attrs);
                assert_eq!(fast.status_code, walked.status_code.min(255));
                // The full walk reads kind and times only in their own wire types; decoding
                // takes a number in any (documented on `GroupSpan::view`).
                let typed = Fields::new(s.bytes).flatten().all(|f| match f.number {
                    6 => matches!(f.value, Value::Varint(_)),
                    7 | 8 => matches!(f.value, Value::Fixed64(_)),
                    _ => true,
                });
                if typed {
                    assert_eq!(fast.kind, walked.kind.min(255));
                    assert_eq!((fast.start, fast.end), (walked.start, walked.end));
                }
                let _ = walked.attr(b"http.route");
                let _ = walked.duration_nanos();
                let _ = walked.is_root();
            }
        }
    }
});
