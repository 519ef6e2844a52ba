//! Decision latency past the trigger with a million traces buffered, and resident memory per
//! buffered span. In process, no Kafka; run with `cargo bench --bench latency`.
//!
//! 1. Fill: `TAILSIFT_BENCH_BUFFERED` traces (default 1 000 000) are buffered, each with the
//!    first message of a generated trace (a leaf service's spans, no root), so that none of
//!    them completes during the run. Resident memory (VmRSS) is read before and after, and
//!    compared with the encoded bytes of the buffered spans.
//! 2. Measure: for `TAILSIFT_BENCH_SECONDS` (default 5) an ingest thread feeds whole traces at
//!    a steady rate while a decider thread looks for complete traces every 10 ms, as the
//!    pipeline's decider does; each decided trace's latency is the time from its completion
//!    deadline (its root span's arrival + root_grace) to the end of its decision (rules run,
//!    kept trace encoded and handed to the output).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tailsift::buffer::Completion;
use tailsift::decision::DecisionCache;
use tailsift::demo::generator::{Generator, GeneratorConfig};
use tailsift::offsets::MessageHold;
use tailsift::otlp::decode::Decoder;
use tailsift::pipeline::DECIDE_TICK;
use tailsift::sampler::Sampler;
use tokio::time::Instant;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn main() {
    let buffered = env("TAILSIFT_BENCH_BUFFERED", 1_000_000);
    let seconds = env("TAILSIFT_BENCH_SECONDS", 5);
    let rate = env("TAILSIFT_BENCH_TRACES_PER_SEC", 20_000);
    let completion = Completion {
        decision_wait: Duration::from_secs(600),
        root_grace: Duration::from_millis(200),
        max_trace_age: Duration::from_secs(600),
        ..Completion::default()
    };
    let sampler = Arc::new(Sampler::new(
        completion,
        common::example_rules(),
        DecisionCache::new(1_000_000, Duration::from_secs(300)),
        Arc::new(common::Discard),
        1_000_000,
    ));

    // 1. Fill.
    // No health checks among the fillers: a single-span trace is its own root and would
    // complete; a checkout's first message is a leaf service's, without the root.
    let mut filler = Generator::new(
        GeneratorConfig {
            health_check_rate: 0.0,
            ..GeneratorConfig::default()
        },
        7,
    );
    let mut gen = Generator::new(GeneratorConfig::default(), 8);
    let mut d = Decoder::new();
    let before = common::rss();
    let (mut spans, mut span_bytes) = (0u64, 0u64);
    let mut offset = 0i64;
    // Generating a million traces would take minutes: a thousand are generated and copied
    // with new trace ids.
    let templates: Vec<_> = (0..1_000u64)
        .map(|i| filler.next_trace(1_700_000_000_000_000_000 + i * 1_000))
        .collect();
    for i in 0..buffered {
        let t = &templates[(i % 1_000) as usize];
        let m = &with_trace_id(&t.messages[0], &t.trace_id, i);
        let hold = MessageHold::new(0, offset);
        offset += 1;
        if d.decode(m).is_ok() {
            for g in d.groups(m) {
                spans += g.len() as u64;
                span_bytes += g.spans().map(|s| s.field.len() as u64).sum::<u64>();
            }
        }
        let _ = sampler.ingest(&mut d, m, &hold, false, Instant::now());
    }
    let after = common::rss();
    let traces = sampler.buffered_traces() as u64;
    let grown = after.saturating_sub(before);
    println!(
        "filled: {traces} traces, {spans} spans, {:.0} encoded bytes/span",
        span_bytes as f64 / spans as f64
    );
    println!(
        "resident: {:.1} MiB more, {:.0} bytes/buffered span; {:.2}x (encoded span bytes + 100 B/trace)",
        grown as f64 / (1 << 20) as f64,
        grown as f64 / spans as f64,
        grown as f64 / (span_bytes + 100 * traces) as f64
    );

    // 2. Measure, on traffic generated beforehand.
    let traffic: Vec<_> = (0..rate * seconds)
        .map(|i| gen.next_trace(1_800_000_000_000_000_000 + i * 1_000))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let decider = {
        let (s, stop) = (sampler.clone(), stop.clone());
        std::thread::spawn(move || {
            let cpu_start = thread_cpu();
            let wall_start = std::time::Instant::now();
            let mut latencies = Vec::new();
            let mut due = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let tick = std::time::Instant::now();
                due.clear();
                s.due(Instant::now(), &mut due);
                for (id, trigger, at) in due.drain(..) {
                    if s.decide(&id, trigger, at).is_some() {
                        latencies.push(Instant::now().saturating_duration_since(at));
                    }
                }
                if let Some(rest) = DECIDE_TICK.checked_sub(tick.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
            let cpu = thread_cpu().saturating_sub(cpu_start);
            (latencies, cpu, wall_start.elapsed())
        })
    };
    let mut fed = 0u64;
    let start = std::time::Instant::now();
    let mut d = Decoder::new();
    while start.elapsed() < Duration::from_secs(seconds) {
        // Traces due by now at the given rate; fed in slices of 1 ms.
        let target = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        while fed < target && (fed as usize) < traffic.len() {
            let t = &traffic[fed as usize];
            for m in &t.messages {
                let hold = MessageHold::new(0, offset);
                offset += 1;
                let _ = sampler.ingest(&mut d, m, &hold, false, Instant::now());
            }
            fed += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // Let the last traces come due and be decided.
    std::thread::sleep(completion_wait());
    stop.store(true, Ordering::Relaxed);
    let (mut latencies, decider_cpu, decider_wall) = decider.join().expect("decider thread");
    latencies.sort();
    println!(
        "measured: {fed} traces fed at {rate}/s for {seconds} s with {} traces buffered; {} decided",
        sampler.buffered_traces(),
        latencies.len()
    );
    println!(
        "decision latency past the trigger: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    println!(
        "the decider thread ran {:.0} ms on a CPU in {:.0} ms ({:.0}% of a core); a starved decider shows as latency",
        decider_cpu.as_secs_f64() * 1e3,
        decider_wall.as_secs_f64() * 1e3,
        100.0 * decider_cpu.as_secs_f64() / decider_wall.as_secs_f64()
    );
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; the clock id is valid on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The root grace plus a few ticks.
fn completion_wait() -> Duration {
    Duration::from_millis(200) + DECIDE_TICK * 5
}

/// `message` with every occurrence of trace id `old` replaced by one made from `n`.
fn with_trace_id(message: &[u8], old: &[u8; 16], n: u64) -> Vec<u8> {
    let mut new = *old;
    new[..8].copy_from_slice(&n.to_be_bytes());
    new[8] |= 1; // never the invalid all-zero id
    let mut out = message.to_vec();
    let mut i = 0;
    while i + 16 <= out.len() {
        if out[i..i + 16] == old[..] {
            out[i..i + 16].copy_from_slice(&new);
            i += 16;
        } else {
            i += 1;
        }
    }
    out
}
