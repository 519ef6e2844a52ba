//! Core pipeline benchmarks, no Kafka, in spans per CPU-second (per core): decode, buffer
//! insert (one thread and several), and the whole in-process path decode -> buffer ->
//! complete -> decide -> encode. Times are the process's CPU time ([`common::CpuTime`]), not
//! wall time, so that a busy shared machine does not count against the code. Run with `cargo bench --bench pipeline`; allocations per span are counted by
//! `cargo bench --bench allocs`, rule evaluation by `cargo bench --bench rules`.
//! Method and figures: BENCHMARKS.md.

mod common;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use common::CpuTime;
use tailsift::buffer::{Buffer, Completion};
use tailsift::decision::DecisionCache;
use tailsift::offsets::MessageHold;
use tailsift::otlp::decode::Decoder;

use common::{traffic, Traffic};

const TRACES: usize = 2_000;

fn decoder(c: &mut Criterion<CpuTime>) {
    let mut g = c.benchmark_group("Decoder");
    for (name, t) in [
        ("decode_and_group", traffic(TRACES, 42)),
        ("decode_and_group/sdk_traffic", common::sdk_traffic()),
    ] {
        g.throughput(Throughput::Elements(t.spans));
        g.bench_function(name, |b| {
            let mut d = Decoder::new();
            b.iter(|| {
                let mut n = 0;
                for m in &t.messages {
                    n += d.decode(m).unwrap_or(0);
                    n += d.groups(m).count();
                }
                n
            })
        });
    }
    g.finish();
}

/// Messages decoded ahead, so that only the buffer is measured.
fn decoded(t: &Traffic) -> Vec<(Decoder, &[u8])> {
    t.messages
        .iter()
        .map(|m| {
            let mut d = Decoder::new();
            d.decode(m).expect("generated traffic decodes");
            (d, m.as_slice())
        })
        .collect()
}

fn insert_all(buffer: &Buffer, cache: &DecisionCache, msgs: &[(Decoder, &[u8])], part: u32) {
    let now = tokio::time::Instant::now();
    for (i, (d, m)) in msgs.iter().enumerate() {
        let hold = MessageHold::new(part, i as i64);
        for group in d.groups(m) {
            std::hint::black_box(buffer.ingest(&group, &hold, false, now, cache));
        }
    }
}

fn buffer(c: &mut Criterion<CpuTime>) {
    let mut g = c.benchmark_group("Buffer");
    let fresh = || {
        (
            Buffer::new(Completion::default()),
            DecisionCache::new(100_000, Duration::from_secs(60)),
        )
    };
    let t = traffic(TRACES, 42);
    let msgs = decoded(&t);
    g.throughput(Throughput::Elements(t.spans));
    g.bench_function("insert/1_thread", |b| {
        b.iter_batched(
            fresh,
            |(buffer, cache)| {
                insert_all(&buffer, &cache, &msgs, 0);
                (buffer, cache)
            },
            BatchSize::LargeInput,
        )
    });
    // Two threads (the machine's cores) insert disjoint traces into one buffer at once.
    let threads = 2;
    let per_thread: Vec<Traffic> = (0..threads).map(|i| traffic(TRACES, 100 + i)).collect();
    let per_thread_msgs: Vec<_> = per_thread.iter().map(decoded).collect();
    g.throughput(Throughput::Elements(
        per_thread.iter().map(|t| t.spans).sum(),
    ));
    g.bench_function("insert/2_threads", |b| {
        b.iter_batched(
            fresh,
            |(buffer, cache)| {
                std::thread::scope(|s| {
                    for (i, msgs) in per_thread_msgs.iter().enumerate() {
                        let (buffer, cache) = (&buffer, &cache);
                        s.spawn(move || insert_all(buffer, cache, msgs, i as u32));
                    }
                });
                (buffer, cache)
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn sampler(c: &mut Criterion<CpuTime>) {
    let generated = traffic(TRACES, 42);
    let sdk = common::sdk_traffic();
    let mut g = c.benchmark_group("Sampler");
    g.measurement_time(Duration::from_secs(8));
    for (name, rules, t) in [
        (
            "ingest_decide_encode/example_rules",
            common::example_rules(),
            &generated,
        ),
        (
            "ingest_decide_encode/keep_all",
            common::keep_all_rules(),
            &generated,
        ),
        // The OpenTelemetry SDK's batches: many traces a message, spans in export order.
        (
            "ingest_decide_encode/example_rules/sdk_traffic",
            common::example_rules(),
            &sdk,
        ),
    ] {
        g.throughput(Throughput::Elements(t.spans));
        g.bench_function(name, |b| {
            b.iter_batched(
                || common::sampler(&rules),
                |s| {
                    let mut d = Decoder::new();
                    let now = tokio::time::Instant::now();
                    for (i, m) in t.messages.iter().enumerate() {
                        let hold = MessageHold::new(0, i as i64);
                        let _ = s.ingest(&mut d, m, &hold, false, now);
                    }
                    let decided = s.decide_due(now + Duration::from_secs(3600));
                    assert_eq!(s.buffered_traces(), 0);
                    // Every trace decided: by its completion here, or early (an early rule) as it was ingested.
                    assert!(decided as u64 <= t.traces && s.buffered_traces() == 0);
                    s
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(CpuTime);
    targets = decoder, buffer, sampler
}
criterion_main!(benches);
