//! RED metrics cost per span, against decoding the same spans: `cargo bench --bench red`.
//! `Red::observe` runs on the ingest thread for every message; its counts reach the metrics
//! once per commit tick (`Red::flush`), which is measured with it here.

mod common;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tailsift::otlp::decode::Decoder;
use tailsift::telemetry::red::{Red, RedLimits};

use common::traffic;

fn red(c: &mut Criterion) {
    let t = traffic(2_000, 42);
    let mut g = c.benchmark_group("Red");
    g.throughput(Throughput::Elements(t.spans));
    g.bench_function("decode_only", |b| {
        let mut d = Decoder::new();
        b.iter(|| {
            t.messages
                .iter()
                .map(|m| d.decode(m).unwrap_or(0))
                .sum::<usize>()
        })
    });
    g.bench_function("decode_and_observe", |b| {
        let mut d = Decoder::new();
        let mut red = Red::new(RedLimits {
            max_services: 100,
            max_operations: 50,
        });
        b.iter(|| {
            for m in &t.messages {
                if d.decode(m).is_ok() {
                    red.observe(&d, m);
                }
            }
            red.flush();
            red.series()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5)).sample_size(20);
    targets = red
}
criterion_main!(benches);
