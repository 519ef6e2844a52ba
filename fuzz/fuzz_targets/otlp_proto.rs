//! A Kafka message's payload as the protobuf decoder takes it: decoded, split per trace, and
//! every span read as the rules read it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tailsift::otlp::decode::Decoder;
use tailsift::otlp::view::SpanView;

fuzz_target!(|data: &[u8]| {
    let mut d = Decoder::new();
    if d.decode(data).is_ok() {
        for g in d.groups(data) {
            for s in g.spans() {
                if let Ok(v) = SpanView::parse(s.bytes) {
                    let _ = v.attr(b"http.route");
                    let _ = v.duration_nanos();
                    let _ = v.is_root();
                }
            }
        }
    }
});
