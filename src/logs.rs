//! Log output: text or JSON lines on stderr, colour only on a terminal, and librdkafka's own
//! messages rate-limited per kind.
//!
//! librdkafka reports every failed connection attempt (each client, each broker, every
//! reconnect back-off, ~20 a second with the broker down); tailsift's clients are several, so
//! an outage of half a minute wrote ~800 ERROR lines. Each kind of librdkafka message (its text
//! with the numbers taken out: addresses, counts and durations vary within one kind) is now
//! logged the 1st, 2nd, 4th, 8th... time, and at least once a minute while it repeats.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::{Event, Metadata};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Filter, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// The prefix rdkafka gives every message it forwards from librdkafka.
const LIBRDKAFKA: &str = "librdkafka:";
/// A repeating kind is logged at least this often.
pub const REPEAT_EVERY: Duration = Duration::from_secs(60);
/// Kinds remembered at most (they are forgotten all at once past it).
const MAX_KINDS: usize = 1024;

/// Installs the global subscriber: `RUST_LOG` levels (default info, librdkafka warn), text or
/// JSON on stderr, ANSI colours only when stderr is a terminal.
pub fn init(json: bool) {
    let ansi = std::io::stderr().is_terminal();
    let _ = subscriber(json, ansi, std::io::stderr).try_init();
}

/// The subscriber [`init`] installs, writing to `writer`.
pub fn subscriber<W>(json: bool, ansi: bool, writer: W) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,librdkafka=warn,rdkafka=warn"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi);
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = if json {
        fmt.json().with_filter(RateLimit::default()).boxed()
    } else {
        fmt.with_filter(RateLimit::default()).boxed()
    };
    Registry::default().with(fmt).with(filter)
}

/// Lets through every event but librdkafka's repeats (see the module doc).
#[derive(Debug, Default)]
pub struct RateLimit {
    /// Kind -> (times seen, when last let through).
    kinds: Mutex<HashMap<u64, (u64, Instant)>>,
}

impl RateLimit {
    /// Whether the `n`th (counted here) message of `text`'s kind, seen at `now`, is logged.
    pub fn allow(&self, text: &str, now: Instant) -> bool {
        let key = kind(text);
        let mut kinds = self.kinds.lock().unwrap_or_else(|e| e.into_inner());
        if kinds.len() >= MAX_KINDS && !kinds.contains_key(&key) {
            kinds.clear();
        }
        let (count, last) = kinds.entry(key).or_insert((0, now));
        *count += 1;
        let allowed = count.is_power_of_two() || now.duration_since(*last) >= REPEAT_EVERY;
        if allowed {
            *last = now;
        }
        allowed
    }
}

/// A message's kind: its text without digits.
fn kind(text: &str) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for b in text.bytes().filter(|b| !b.is_ascii_digit()) {
        h.update(&[b]);
    }
    h.digest()
}

/// Reads an event's message.
#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl<S> Filter<S> for RateLimit {
    fn enabled(&self, _meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &Event<'_>, _cx: &Context<'_, S>) -> bool {
        let mut m = Message::default();
        event.record(&mut m);
        !m.0.starts_with(LIBRDKAFKA) || self.allow(&m.0, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Captured {
        type Writer = Captured;
        fn make_writer(&'w self) -> Self::Writer {
            self.clone()
        }
    }

    fn captured(json: bool, ansi: bool, f: impl FnOnce()) -> String {
        let out = Captured::default();
        tracing::subscriber::with_default(subscriber(json, ansi, out.clone()), f);
        let bytes = out.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn repeated_librdkafka_errors_are_logged_at_doubling_intervals_others_always() {
        let text = captured(false, false, || {
            for i in 0..800 {
                tracing::error!(
                    "librdkafka: Global error: BrokerTransportFailure (Local: Broker transport \
                     failure): 127.0.0.1:{}/bootstrap: Connect failed (after {i}ms in state CONNECT)",
                    9000 + i % 3
                );
                tracing::error!("librdkafka: FAIL [thrd:127.0.0.1:9/bootstrap]: refused #{i}");
            }
            for _ in 0..5 {
                tracing::warn!("a tailsift warning");
            }
        });
        let lines = |needle: &str| text.lines().filter(|l| l.contains(needle)).count();
        // 1, 2, 4, ... 512 of 800: 10 lines per kind.
        assert_eq!(lines("BrokerTransportFailure"), 10, "{text}");
        assert_eq!(lines("FAIL [thrd"), 10, "{text}");
        assert_eq!(lines("a tailsift warning"), 5);
    }

    #[test]
    fn a_kind_that_keeps_repeating_is_logged_again_after_a_minute() {
        let r = RateLimit::default();
        let t0 = Instant::now();
        let allowed = |at: Duration| r.allow("librdkafka: down 1", t0 + at);
        assert!(allowed(Duration::ZERO)); // 1st
        assert!(allowed(Duration::from_secs(1))); // 2nd
        assert!(!allowed(Duration::from_secs(2))); // 3rd
        assert!(allowed(Duration::from_secs(3))); // 4th
        assert!(!allowed(Duration::from_secs(4)));
        assert!(
            allowed(Duration::from_secs(64)),
            "a minute after the last line"
        );
        assert!(!allowed(Duration::from_secs(65)));
    }

    #[test]
    fn no_colour_codes_without_a_terminal_and_json_lines_when_asked() {
        let text = captured(false, false, || tracing::info!(key = 1, "plain"));
        assert!(
            text.contains("plain") && !text.contains('\u{1b}'),
            "{text:?}"
        );
        let coloured = captured(false, true, || tracing::info!("coloured"));
        assert!(coloured.contains('\u{1b}'), "{coloured:?}");
        let json = captured(true, false, || tracing::info!("as json"));
        let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
        assert_eq!(v["fields"]["message"], "as json");
    }
}
