//! A Kafka message's payload as OTLP/JSON: converted to protobuf as on arrival, then decoded
//! as the protobuf decoder does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tailsift::otlp::decode::Decoder;
use tailsift::otlp::json;
use tailsift::otlp::view::SpanView;

fuzz_target!(|data: &[u8]| {
    let Ok(proto) = json::to_proto(data) else {
        return;
    };
    let mut d = Decoder::new();
    if d.decode(&proto).is_ok() {
        for g in d.groups(&proto) {
            for s in g.spans() {
                if let Ok(v) = SpanView::parse(s.bytes) {
                    let _ = v.attr(b"http.route");
                    let _ = v.duration_nanos();
                }
            }
        }
    }
});
