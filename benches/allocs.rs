//! Heap allocations per span on the core path (decode -> buffer -> complete -> decide ->
//! encode), counted by a global allocator that wraps the system one.
//!
//! Run with `cargo bench --bench allocs`. It prints allocations (calls to alloc, alloc_zeroed
//! and realloc) and allocated bytes per span, per stage, in the steady state: a first round of
//! traffic warms the sampler up (map capacity, decision cache), a second round of new traces is
//! counted. The target is at most 1 allocation per span over the whole path.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tailsift::offsets::MessageHold;
use tailsift::otlp::decode::Decoder;
use tailsift::rules::RuleSet;
use tailsift::sampler::Sampler;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(layout.size() as u64, Relaxed);
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(layout.size() as u64, Relaxed);
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(new_size.saturating_sub(layout.size()) as u64, Relaxed);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Default, Clone, Copy)]
struct Count {
    allocs: u64,
    bytes: u64,
}

fn counted<T>(f: impl FnOnce() -> T) -> (T, Count) {
    let (a, b) = (ALLOCS.load(Relaxed), BYTES.load(Relaxed));
    let out = f();
    let c = Count {
        allocs: ALLOCS.load(Relaxed) - a,
        bytes: BYTES.load(Relaxed) - b,
    };
    (out, c)
}

/// Ingests every message (a new offset hold per message, as the Kafka source does) at `now`,
/// the messages going round `partitions` partitions in turn.
fn ingest(
    s: &Sampler,
    d: &mut Decoder,
    messages: &[Vec<u8>],
    partitions: usize,
    now: tokio::time::Instant,
) {
    for (i, m) in messages.iter().enumerate() {
        let hold = MessageHold::new((i % partitions) as u32, i as i64);
        let _ = s.ingest(d, m, &hold, false, now);
    }
}

fn row(stage: &str, c: Count, spans: u64) {
    println!(
        "{stage:<28} {:>8.3} allocs/span {:>9.1} bytes/span",
        c.allocs as f64 / spans as f64,
        c.bytes as f64 / spans as f64
    );
}

/// Counts `t`'s path after a warm-up on generated traffic of other traces; `t`'s messages
/// come from `partitions` partitions.
fn path(name: &str, rules: &RuleSet, t: &common::Traffic, partitions: usize) {
    let warm = common::traffic(20_000, 1);
    let s = common::sampler(rules);
    let mut d = Decoder::new();
    let start = tokio::time::Instant::now();
    ingest(&s, &mut d, &warm.messages, 1, start);
    s.decide_due(start + Duration::from_secs(3600));

    let now = start + Duration::from_secs(7200);
    let (_, decode) = counted(|| {
        for m in &t.messages {
            let _ = d.decode(m);
        }
    });
    let (_, ingested) = counted(|| ingest(&s, &mut d, &t.messages, partitions, now));
    let (decided, decide) = counted(|| s.decide_due(now + Duration::from_secs(3600)));
    // Every trace decided: by its completion here, or early (an early rule) as it was ingested.
    assert!(decided as u64 <= t.traces && s.buffered_traces() == 0);
    println!(
        "{name}: {} traces, {} spans, {:.0} bytes/span on the wire",
        t.traces,
        t.spans,
        t.bytes as f64 / t.spans as f64
    );
    row("  decode alone", decode, t.spans);
    row("  ingest (decode + buffer)", ingested, t.spans);
    row("  decide + encode", decide, t.spans);
    row(
        "  whole path",
        Count {
            allocs: ingested.allocs + decide.allocs,
            bytes: ingested.bytes + decide.bytes,
        },
        t.spans,
    );
}

fn main() {
    // `cargo bench` passes criterion's arguments; this bench takes none.
    // Keyed by trace id, as the generator's messages are: a trace's messages share a
    // partition (which one does not matter here).
    let generated = common::traffic(20_000, 2);
    path("example rules", &common::example_rules(), &generated, 1);
    path("keep every trace", &common::keep_all_rules(), &generated, 1);
    // The SDK's batches (spans of many traces a message) after the same warm-up, unkeyed:
    // spread over six partitions, so that a trace's spans come in several. Its 1 536 spans
    // are few: the decoder's first grouping of an interleaved batch (its scratch grows once)
    // is counted in them.
    let sdk = common::sdk_traffic();
    let (example, keep_all) = (common::example_rules(), common::keep_all_rules());
    path("SDK recording, example rules", &example, &sdk, 6);
    path("SDK recording, keep every trace", &keep_all, &sdk, 6);
}
