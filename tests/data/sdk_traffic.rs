//! `sdk-traffic.bin`: trace traffic recorded from the OpenTelemetry Python SDK by
//! `scripts/sdk-traffic/record.py` (five services over HTTP and a job queue, each exporting
//! with the SDK's `BatchSpanProcessor`), its batches in the order and at the times they were
//! exported. Shared by the library's tests and the benchmarks (`#[path]`), so that both read
//! the one recording the same way.

/// The recording, as committed.
pub fn recording() -> Vec<u8> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/sdk-traffic.bin");
    std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The recording's messages: (milliseconds since the first export, the
/// `ExportTraceServiceRequest`), in export order. Each record is the two as a little-endian
/// `u32` and a `u32` length, then the message.
pub fn messages(recording: &[u8]) -> Vec<(u32, &[u8])> {
    let mut out = Vec::new();
    let mut rest = recording;
    while let Some((head, body)) = rest.split_first_chunk::<8>() {
        let ms = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
        assert!(
            len <= body.len(),
            "a record cut short at byte {}",
            recording.len() - rest.len()
        );
        out.push((ms, &body[..len]));
        rest = &body[len..];
    }
    assert!(rest.is_empty(), "trailing bytes");
    out
}

/// The recording's batches as replay `replay` sends them: every span's trace id with `replay`
/// XORed into its low eight bytes (the half sampling reads), so that each replay's traces are
/// new ones, and as varied; the batches otherwise as recorded (one service's resource, spans
/// of many traces interleaved, the queue worker's late spans in later batches). Replay 0 is
/// the recording itself, re-encoded.
#[allow(dead_code)] // not every includer replays
pub fn replayed(recording: &[u8], replay: u64) -> Vec<Vec<u8>> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message as _;

    messages(recording)
        .into_iter()
        .map(|(_, m)| {
            let mut batch = ExportTraceServiceRequest::decode(m).expect("the SDK's protobuf");
            let spans = (batch.resource_spans.iter_mut())
                .flat_map(|rs| rs.scope_spans.iter_mut())
                .flat_map(|ss| ss.spans.iter_mut());
            for s in spans {
                if let Some(low) = s.trace_id.get_mut(8..16) {
                    for (b, r) in low.iter_mut().zip(replay.to_be_bytes()) {
                        *b ^= r;
                    }
                }
            }
            batch.encode_to_vec()
        })
        .collect()
}
