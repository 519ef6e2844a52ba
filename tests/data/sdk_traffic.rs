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
