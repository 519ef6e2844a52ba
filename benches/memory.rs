//! Resident memory per buffered span, against the spans' encoded size.
//!
//! Run with `cargo bench --bench memory [-- [sdk] TRACES]` (default 50 000 traces). It buffers
//! realistic traces from the demo generator (checkouts of about 10 spans of about 300-400
//! bytes, one message per service, as the Collector's kafka exporter sends them keyed by
//! trace id) in the sampler's buffer, with completion times that never fire, and reads the
//! process's resident memory (`VmRSS` in `/proc/self/status`) before and after. The messages
//! are generated, ingested and freed one trace at a time, as consumed Kafka messages are, so
//! the allocator's fragmentation is part of the figure. With `sdk`, the traces are the SDK
//! recording's (`tests/data/sdk-traffic.bin`), replayed with new trace ids until there are as
//! many: batches of many traces' spans, about 200 bytes each, a trace's spans arriving over
//! several batches. Then the same for the decision cache.
//!
//! The target: at most 1.3x the encoded span bytes plus 100 bytes per trace.
//! Allocation sizes do not depend on the build profile, so `--profile dev` gives the same
//! figures, faster to build.

mod common;

use std::sync::Arc;
use std::time::Duration;

use tailsift::buffer::{Completion, TRACE_OVERHEAD};
use tailsift::decision::{Decision, DecisionCache, CACHE_ENTRY_BYTES};
use tailsift::demo::generator::{Generator, GeneratorConfig};
use tailsift::offsets::OffsetHold;
use tailsift::otlp::decode::Decoder;
use tailsift::otlp::TraceId;
use tailsift::sampler::Sampler;

/// Returns freed heap memory to the system, so that the baseline is what is really in use.
fn trim() {
    #[cfg(target_os = "linux")]
    // SAFETY: malloc_trim only releases free memory; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn main() {
    let traces: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(50_000);
    let sdk = std::env::args().any(|a| a == "sdk");
    let never = Duration::from_secs(3600);
    let sampler = Sampler::new(
        Completion {
            decision_wait: never,
            root_grace: never,
            max_trace_age: never,
            ..Completion::default()
        },
        // Early rules would decide failing traces as they arrive: every trace stays here.
        common::example_rules_at_completion(),
        DecisionCache::new(10, never),
        Arc::new(common::Discard),
        1_000_000,
    );
    let mut gen = Generator::new(GeneratorConfig::default(), 7);
    let mut decoder = Decoder::new();
    let now = tokio::time::Instant::now();
    // Warm up: the generator, the decoder's scratch space, the map's first shards.
    for i in 0..1000u64 {
        let t = gen.next_trace(1_600_000_000_000_000_000 + i);
        std::hint::black_box(t);
    }
    trim();
    let before = common::rss();
    let (mut spans, mut span_bytes, mut message_bytes) = (0u64, 0u64, 0u64);
    let recording = sdk.then(common::recording::recording);
    // Traces fed in: one a generated step, those of the recording a replay.
    let (mut fed, mut step) = (0, 0u64);
    let mut ids = std::collections::HashSet::new();
    while fed < traces {
        // One trace's messages, or one replay of the recording's batches.
        let messages = match &recording {
            Some(r) => common::recording::replayed(r, step),
            None => {
                let t = gen.next_trace(1_700_000_000_000_000_000 + step * 1_000_000);
                t.messages
            }
        };
        step += 1;
        ids.clear();
        for (offset, msg) in messages.iter().enumerate() {
            message_bytes += msg.len() as u64;
            decoder.decode(msg).expect("the messages decode");
            for g in decoder.groups(msg) {
                ids.insert(g.trace_id);
                for s in g.spans() {
                    spans += 1;
                    span_bytes += s.bytes.len() as u64;
                }
            }
            // Generated messages are keyed by trace id (a trace's share a partition); the
            // SDK's batches are not, and go round six partitions.
            let hold = Arc::new(OffsetHold {
                partition: if sdk { (offset % 6) as u32 } else { 0 },
                offset: offset as i64,
            });
            sampler
                .ingest(&mut decoder, msg, &hold, false, now)
                .expect("ingest");
        }
        fed += ids.len();
    }
    let traces = fed;
    trim();
    let after = common::rss();
    assert_eq!(sampler.buffered_traces(), traces, "every trace is buffered");
    let resident = after.saturating_sub(before);
    let counted = sampler.buffered_bytes();
    let n = traces as f64;
    let target = 1.3 * span_bytes as f64 + 100.0 * n;
    println!(
        "buffer ({}): {traces} traces, {spans} spans ({:.1} spans/trace)",
        if sdk {
            "the SDK recording"
        } else {
            "generated"
        },
        spans as f64 / n
    );
    println!(
        "  encoded spans    {:>12} B  ({:.0} B/span; messages {message_bytes} B)",
        span_bytes,
        span_bytes as f64 / spans as f64
    );
    println!(
        "  resident (RSS)   {:>12} B  ({:.0} B/span, {:.0} B/trace)",
        resident,
        resident as f64 / spans as f64,
        resident as f64 / n
    );
    println!(
        "  counted (budget) {:>12} B  (TRACE_OVERHEAD {TRACE_OVERHEAD} B)",
        counted
    );
    println!(
        "  resident / encoded = {:.3}; resident / counted = {:.3}",
        resident as f64 / span_bytes as f64,
        resident as f64 / counted as f64
    );
    println!(
        "  per-trace overhead beyond the encoded spans: {:.0} B",
        (resident as f64 - span_bytes as f64) / n
    );
    println!(
        "  target 1.3 x encoded + 100 B/trace = {:.0} B: {}",
        target,
        if (resident as f64) <= target {
            "met"
        } else {
            "MISSED"
        }
    );
    drop(sampler);

    // The decision cache: resident bytes per remembered decision, in a full cache sized in
    // bytes as the pipeline sizes it, after pushing out twice its capacity (the steady state).
    trim();
    let before = common::rss();
    let max_bytes = (traces as u64 * 4 * CACHE_ENTRY_BYTES).max(1 << 20);
    let cache = DecisionCache::with_max_bytes(max_bytes, never);
    let capacity = DecisionCache::capacity_for_bytes(max_bytes);
    let rule: Arc<str> = "baseline".into();
    for i in 0..3 * capacity {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&(i + 1).to_le_bytes());
        id[8..].copy_from_slice(&i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
        cache.insert(TraceId(id), Decision::Drop { rule: rule.clone() });
    }
    let stats = cache.stats();
    trim();
    let resident = common::rss().saturating_sub(before);
    println!(
        "decision cache: bound {max_bytes} B, {} entries, {} B counted, {resident} B resident: \
         {:.0} resident B/entry (counted at CACHE_ENTRY_BYTES = {CACHE_ENTRY_BYTES})",
        stats.entries,
        stats.bytes,
        resident as f64 / stats.entries.max(1) as f64
    );
}
