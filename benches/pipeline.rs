//! Core pipeline benchmarks, no Kafka: decode, and decode -> buffer -> decide -> encode.
//!
//! Run with `cargo bench --bench pipeline`. Traffic comes from the demo generator (checkout
//! traces of ~10 spans around 370 bytes each, several services per trace).

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tailsift::buffer::Completion;
use tailsift::decision::{Decision, DecisionCache};
use tailsift::demo::generator::{Generator, GeneratorConfig};
use tailsift::offsets::OffsetHold;
use tailsift::otlp::decode::Decoder;
use tailsift::otlp::TraceId;
use tailsift::sampler::{Output, Sampler, Ticket};

/// Counts kept traces and drops their tickets at once (an instant acknowledgement).
struct Discard;

impl Output for Discard {
    fn send(&self, _: &TraceId, _: &Decision, messages: Vec<(Vec<u8>, Ticket)>) {
        std::hint::black_box(messages);
    }
}

fn traffic(traces: usize) -> (Vec<Vec<u8>>, u64) {
    let mut gen = Generator::new(GeneratorConfig::default(), 42);
    let mut msgs = Vec::new();
    let mut spans = 0;
    for i in 0..traces {
        let t = gen.next_trace(1_700_000_000_000_000_000 + i as u64 * 1_000_000);
        spans += t.span_count as u64;
        msgs.extend(t.messages);
    }
    (msgs, spans)
}

fn decoder(c: &mut Criterion) {
    let (msgs, spans) = traffic(2_000);
    let mut g = c.benchmark_group("Decoder");
    g.throughput(Throughput::Elements(spans));
    g.bench_function("decode_and_group", |b| {
        let mut d = Decoder::new();
        b.iter(|| {
            let mut n = 0;
            for m in &msgs {
                n += d.decode(m).unwrap_or(0);
                n += d.groups(m).count();
            }
            n
        })
    });
    g.finish();
}

fn sampler(c: &mut Criterion) {
    let (msgs, spans) = traffic(2_000);
    let rules = tailsift::demo::embedded_rules().expect("example rules");
    let mut g = c.benchmark_group("Sampler");
    g.throughput(Throughput::Elements(spans));
    g.measurement_time(Duration::from_secs(8));
    g.bench_function("ingest_decide_encode", |b| {
        b.iter_batched(
            || {
                Sampler::new(
                    Completion::default(),
                    rules.clone(),
                    DecisionCache::new(100_000, Duration::from_secs(60)),
                    Arc::new(Discard),
                    1_000_000,
                )
            },
            |s| {
                let mut d = Decoder::new();
                let now = tokio::time::Instant::now();
                for (i, m) in msgs.iter().enumerate() {
                    let hold = Arc::new(OffsetHold {
                        partition: 0,
                        offset: i as i64,
                    });
                    let _ = s.ingest(&mut d, m, &hold, false, now);
                }
                let decided = s.decide_due(now + Duration::from_secs(3600));
                assert_eq!(s.buffer.len(), 0);
                decided
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, decoder, sampler);
criterion_main!(benches);
