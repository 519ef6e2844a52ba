//! `/metrics` in OpenMetrics text, with the RED metrics' exemplars: what a scraper that sent
//! `Accept: application/openmetrics-text` gets (Prometheus does, with exemplar storage on).
//!
//! Why written here rather than with a crate: the values live in the `metrics` recorder of
//! `metrics-exporter-prometheus` 0.18, which renders only the classic Prometheus text (and
//! protobuf), never exemplars; `prometheus-client`, the well-kept OpenMetrics crate, renders
//! only metrics registered in its own registry, so using it would mean recording every RED
//! value twice, in two registries that could disagree. Instead the classic text of the same
//! scrape is converted line by line (one source of numbers for both formats) and the
//! exemplars of [`super::exemplars`] are appended to the lines that carry them: the buckets of
//! `tailsift_red_duration_seconds` and the samples of `tailsift_red_requests_total` and
//! `tailsift_red_errors_total`. The conversion is what OpenMetrics asks of that text:
//! counter families named without `_total`, `"` escaped in `# HELP`, `le` written as a
//! canonical float (`1.0`, not `1`), no blank lines, `# EOF` at the end. A unit test holds it
//! to that on the real exporter's output, and a broker test parses a scrape with the Python
//! `prometheus_client` OpenMetrics parser.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write;

use super::exemplars::{Exemplar, Exemplars, SeriesExemplars};
use super::{RED_DURATION, RED_DURATION_BUCKETS, RED_ERRORS, RED_REQUESTS};

/// The content type of an OpenMetrics response.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether an `Accept` header prefers OpenMetrics to the classic text: it lists
/// `application/openmetrics-text` with a quality above 0 and at least that of any
/// `text/plain`. (Prometheus sends `application/openmetrics-text;version=1.0.0,...;q=0.75,
/// text/plain;version=0.0.4;q=0.5,*/*;q=0.1` when exemplar storage is on.)
pub fn accepts(accept: &str) -> bool {
    let (mut om, mut text) = (0.0f32, 0.0f32);
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        match media.as_str() {
            "application/openmetrics-text" => om = om.max(q),
            "text/plain" => text = text.max(q),
            _ => {}
        }
    }
    om > 0.0 && om >= text
}

/// Converts the classic text `body` (what [`super::render`] gives) to OpenMetrics, with the
/// exemplars of `exemplars` on the RED lines.
pub fn render(body: &str, exemplars: Option<&Exemplars>) -> String {
    match exemplars {
        Some(e) => e.with_series(|series| convert(body, series)),
        None => convert(body, &[]),
    }
}

/// The family of each `# TYPE` line: name -> type.
fn types(body: &str) -> HashMap<&str, &str> {
    body.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .collect()
}

/// The family name OpenMetrics wants: a counter's without its `_total`.
fn family<'a>(name: &'a str, types: &HashMap<&str, &str>) -> &'a str {
    match types.get(name) {
        Some(&"counter") => name.strip_suffix("_total").unwrap_or(name),
        _ => name,
    }
}

fn convert(body: &str, series: &[SeriesExemplars]) -> String {
    let types = types(body);
    let by_labels: HashMap<(&str, &str, &str), &SeriesExemplars> = series
        .iter()
        .map(|s| ((&*s.service, &*s.operation, s.kind.as_str()), s))
        .collect();
    let mut out = String::with_capacity(body.len() + body.len() / 8);
    for line in body.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let _ = writeln!(out, "# HELP {} {}", family(name, &types), help_text(help));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let kind = match kind {
                "counter" if !name.ends_with("_total") => "unknown",
                "untyped" => "unknown",
                k => k,
            };
            let _ = writeln!(out, "# TYPE {} {kind}", family(name, &types));
        } else if line.starts_with('#') {
            continue; // other comments are not OpenMetrics
        } else {
            sample(&mut out, line, &by_labels);
        }
    }
    out.push_str("# EOF\n");
    out
}

/// `# HELP` text as OpenMetrics escapes it: the exporter escapes `\` and line feeds but not `"`.
fn help_text(help: &str) -> Cow<'_, str> {
    if !help.contains('"') {
        return Cow::Borrowed(help);
    }
    let mut out = String::with_capacity(help.len() + 4);
    let mut escaped = false;
    for c in help.chars() {
        if c == '"' && !escaped {
            out.push('\\');
        }
        escaped = c == '\\' && !escaped;
        out.push(c);
    }
    Cow::Owned(out)
}

/// One sample line: `le` made canonical, the value spelt as OpenMetrics spells it, and an
/// exemplar appended where the RED series has one.
fn sample(out: &mut String, line: &str, by_labels: &HashMap<(&str, &str, &str), &SeriesExemplars>) {
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = &line[..name_end];
    let (labels, value) = match line[name_end..].strip_prefix('{') {
        Some(rest) => match label_pairs(rest) {
            Some((pairs, after)) => (pairs, after.trim()),
            None => {
                let _ = writeln!(out, "{line}");
                return;
            }
        },
        None => (Vec::new(), line[name_end..].trim()),
    };
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let v = if *k == "le" || *k == "quantile" {
                canonical(v)
            } else {
                escape(v)
            };
            let _ = write!(out, "{k}=\"{v}\"");
        }
        out.push('}');
    }
    let value = match value {
        "inf" => "+Inf",
        "-inf" => "-Inf",
        "NaN" | "nan" => "NaN",
        v => v,
    };
    let _ = write!(out, " {value}");
    if let Some(e) = exemplar(name, &labels, by_labels) {
        // A counter's exemplar is its increment (one span); a bucket's, the span's duration.
        let counter = !name.ends_with("_bucket");
        write_exemplar(out, &e, if counter { 1.0 } else { e.seconds });
    }
    out.push('\n');
}

/// The exemplar a RED sample carries, if any.
fn exemplar(
    name: &str,
    labels: &[(&str, Cow<'_, str>)],
    by_labels: &HashMap<(&str, &str, &str), &SeriesExemplars>,
) -> Option<Exemplar> {
    let get = |k: &str| labels.iter().find(|(n, _)| *n == k).map(|(_, v)| &**v);
    let bucket = name.strip_suffix("_bucket") == Some(RED_DURATION);
    if !bucket && name != RED_REQUESTS && name != RED_ERRORS {
        return None;
    }
    let s = by_labels.get(&(get("service")?, get("operation")?, get("kind")?))?;
    if name == RED_REQUESTS {
        return s.requests;
    }
    if name == RED_ERRORS {
        return s.errors;
    }
    let le = get("le")?;
    let i = if le == "+Inf" {
        RED_DURATION_BUCKETS.len()
    } else {
        let le: f64 = le.parse().ok()?;
        RED_DURATION_BUCKETS.iter().position(|b| *b == le)?
    };
    s.buckets[i]
}

/// ` # {trace_id="..",span_id="..",sample_rate="N"} value timestamp`, the timestamp the
/// span's end (seconds).
fn write_exemplar(out: &mut String, e: &Exemplar, value: f64) {
    let _ = write!(
        out,
        " # {{trace_id=\"{}\",span_id=\"{}\",sample_rate=\"{}\"}} {}",
        hex::encode(e.trace_id),
        hex::encode(e.span_id),
        e.sample_rate,
        value
    );
    if e.end_unix_nanos > 0 {
        let _ = write!(
            out,
            " {}.{:09}",
            e.end_unix_nanos / 1_000_000_000,
            e.end_unix_nanos % 1_000_000_000
        );
    }
}

/// The `name="value"` pairs of a label set whose `{` was consumed, values unescaped; and what
/// follows the closing `}`. `None` if it does not parse.
#[allow(clippy::type_complexity)]
fn label_pairs(s: &str) -> Option<(Vec<(&str, Cow<'_, str>)>, &str)> {
    let mut pairs = Vec::new();
    let mut rest = s.trim_start();
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Some((pairs, after));
        }
        let (key, after) = rest.split_once('=')?;
        let after = after.strip_prefix('"')?;
        let mut end = None;
        let mut escaped = false;
        let mut needs_unescape = false;
        for (i, c) in after.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => {
                    escaped = true;
                    needs_unescape = true;
                }
                '"' => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let end = end?;
        let raw = &after[..end];
        let value = if needs_unescape {
            Cow::Owned(unescape(raw))
        } else {
            Cow::Borrowed(raw)
        };
        pairs.push((key.trim().trim_start_matches(','), value));
        rest = after[end + 1..]
            .trim_start()
            .trim_start_matches(',')
            .trim_start();
    }
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some(c) => out.push(c),
            None => out.push('\\'),
        }
    }
    out
}

fn escape(s: &str) -> Cow<'_, str> {
    if !s.contains(['\\', '"', '\n']) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n"),
    )
}

/// A bound as OpenMetrics writes it: `1.0` rather than `1`, `+Inf`.
fn canonical(v: &str) -> Cow<'_, str> {
    match v.parse::<f64>() {
        Ok(f) if f.is_infinite() => Cow::Borrowed(if f > 0.0 { "+Inf" } else { "-Inf" }),
        Ok(f) if f.fract() == 0.0 && f.abs() < 1e15 => Cow::Owned(format!("{f:.1}")),
        Ok(f) => Cow::Owned(format!("{f}")),
        Err(_) => escape(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::RedKind;
    use std::sync::Arc;

    #[test]
    fn prometheus_accept_headers_are_told_apart() {
        let cases = [
            ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1", true),
            ("application/openmetrics-text; version=1.0.0", true),
            ("text/plain;version=0.0.4;q=1,application/openmetrics-text;q=0.5", false),
            ("application/openmetrics-text;q=0", false),
            ("text/plain", false),
            ("*/*", false),
            ("", false),
        ];
        for (accept, want) in cases {
            assert_eq!(accepts(accept), want, "{accept}");
        }
    }

    fn series(trace: u8) -> SeriesExemplars {
        let e = Exemplar {
            trace_id: [trace; 16],
            span_id: [0xab; 8],
            seconds: 0.03,
            end_unix_nanos: 1_700_000_000_500_000_000,
            sample_rate: 10,
        };
        let mut s = SeriesExemplars {
            service: Arc::from("shop \"eu\""),
            operation: Arc::from("/items/{id}"),
            kind: RedKind::Server,
            buckets: [None; crate::telemetry::exemplars::BUCKETS],
            requests: Some(e),
            errors: None,
        };
        s.buckets[3] = Some(e); // le 0.05
        s
    }

    #[test]
    fn converts_the_classic_text_and_appends_exemplars_where_a_series_has_them() {
        let body = "# HELP tailsift_red_requests_total Spans \"counted\".\n\
            # TYPE tailsift_red_requests_total counter\n\
            tailsift_red_requests_total{service=\"shop \\\"eu\\\"\",operation=\"/items/{id}\",kind=\"server\"} 5\n\
            tailsift_red_requests_total{service=\"other\",operation=\"x\",kind=\"server\"} 2\n\
            \n\
            # TYPE tailsift_red_duration_seconds histogram\n\
            tailsift_red_duration_seconds_bucket{service=\"shop \\\"eu\\\"\",operation=\"/items/{id}\",kind=\"server\",le=\"0.025\"} 0\n\
            tailsift_red_duration_seconds_bucket{service=\"shop \\\"eu\\\"\",operation=\"/items/{id}\",kind=\"server\",le=\"0.05\"} 5\n\
            tailsift_red_duration_seconds_bucket{service=\"shop \\\"eu\\\"\",operation=\"/items/{id}\",kind=\"server\",le=\"1\"} 5\n\
            tailsift_red_duration_seconds_bucket{service=\"shop \\\"eu\\\"\",operation=\"/items/{id}\",kind=\"server\",le=\"+Inf\"} 5\n\
            tailsift_red_duration_seconds_sum{service=\"shop \\\"eu\\\"\",operation=\"/items/{id}\",kind=\"server\"} 0.15\n\
            tailsift_red_duration_seconds_count{service=\"shop \\\"eu\\\"\",operation=\"/items/{id}\",kind=\"server\"} 5\n\
            # TYPE tailsift_traces_buffered gauge\n\
            tailsift_traces_buffered 3\n";
        let out = convert(body, &[series(0x11)]);
        let ex = " # {trace_id=\"11111111111111111111111111111111\",span_id=\"abababababababab\",sample_rate=\"10\"} 0.03 1700000000.500000000";
        let counter_ex = ex.replace("} 0.03 ", "} 1 ");
        let want = format!(
            "# HELP tailsift_red_requests Spans \\\"counted\\\".\n\
            # TYPE tailsift_red_requests counter\n\
            tailsift_red_requests_total{{service=\"shop \\\"eu\\\"\",operation=\"/items/{{id}}\",kind=\"server\"}} 5{counter_ex}\n\
            tailsift_red_requests_total{{service=\"other\",operation=\"x\",kind=\"server\"}} 2\n\
            # TYPE tailsift_red_duration_seconds histogram\n\
            tailsift_red_duration_seconds_bucket{{service=\"shop \\\"eu\\\"\",operation=\"/items/{{id}}\",kind=\"server\",le=\"0.025\"}} 0\n\
            tailsift_red_duration_seconds_bucket{{service=\"shop \\\"eu\\\"\",operation=\"/items/{{id}}\",kind=\"server\",le=\"0.05\"}} 5{ex}\n\
            tailsift_red_duration_seconds_bucket{{service=\"shop \\\"eu\\\"\",operation=\"/items/{{id}}\",kind=\"server\",le=\"1.0\"}} 5\n\
            tailsift_red_duration_seconds_bucket{{service=\"shop \\\"eu\\\"\",operation=\"/items/{{id}}\",kind=\"server\",le=\"+Inf\"}} 5\n\
            tailsift_red_duration_seconds_sum{{service=\"shop \\\"eu\\\"\",operation=\"/items/{{id}}\",kind=\"server\"}} 0.15\n\
            tailsift_red_duration_seconds_count{{service=\"shop \\\"eu\\\"\",operation=\"/items/{{id}}\",kind=\"server\"}} 5\n\
            # TYPE tailsift_traces_buffered gauge\n\
            tailsift_traces_buffered 3\n\
            # EOF\n"
        );
        assert_eq!(out, want);
    }

    #[test]
    fn without_exemplars_the_conversion_only_reshapes() {
        let out = render(
            "# TYPE a_total counter\na_total 1\n\n# TYPE odd counter\nodd 2\n",
            None,
        );
        assert_eq!(
            out,
            "# TYPE a counter\na_total 1\n# TYPE odd unknown\nodd 2\n# EOF\n"
        );
    }

    /// The real exporter's text of the whole catalog, with a RED series whose kept span is
    /// an exemplar, keeps OpenMetrics' rules.
    #[test]
    fn the_whole_catalog_converts_into_well_formed_openmetrics() {
        use crate::otlp::build::*;
        let recorder = crate::telemetry::builder().build_recorder();
        let handle = recorder.handle();
        let ex = crate::telemetry::exemplars::Exemplars::new();
        metrics::with_local_recorder(&recorder, || {
            crate::telemetry::describe();
            crate::telemetry::init_series(&["spans".to_string()], &[]);
            let mut red = crate::telemetry::red::Red::new(crate::telemetry::red::RedLimits {
                max_services: 10,
                max_operations: 10,
            })
            .with_exemplars(ex.clone());
            let req = request(
                "shop",
                vec![with_error(span(
                    trace_id(3),
                    1,
                    None,
                    "GET /",
                    0,
                    2_000_000,
                ))],
            );
            let mut d = crate::otlp::decode::Decoder::new();
            d.decode(&req).expect("decodes");
            red.observe(&d, &req);
            red.flush();
            for g in d.groups(&req) {
                ex.offer_group(&g, 4);
            }
        });
        handle.run_upkeep();
        let out = render(&crate::telemetry::render(&handle), Some(&ex));
        assert!(out.ends_with("# EOF\n") && !out.contains("\n\n"), "{out}");
        let types = types(&out);
        for (name, kind) in &types {
            assert!(
                *kind != "counter" || !name.ends_with("_total"),
                "family {name}"
            );
        }
        let mut exemplars = 0;
        for line in out.lines().filter(|l| !l.starts_with('#')) {
            let name = &line[..line.find(['{', ' ']).expect("a value")];
            let family = ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .filter_map(|s| name.strip_suffix(s))
                .find(|f| types.contains_key(f))
                .unwrap_or(name);
            assert!(types.contains_key(family), "{line}: no # TYPE {family}");
            if types[family] == "counter" {
                assert!(name.ends_with("_total"), "{line}");
            }
            if let Some(i) = line.find(",le=\"") {
                let le = &line[i + 5..];
                let le = &le[..le.find('"').expect("closed")];
                assert!(le == "+Inf" || le.contains('.'), "{line}: le {le}");
            }
            if line.contains(&format!(" # {{trace_id=\"{}", hex::encode(trace_id(3)))) {
                exemplars += 1;
            }
        }
        assert_eq!(exemplars, 3, "requests, errors and one bucket:\n{out}");
        for help in out.lines().filter_map(|l| l.strip_prefix("# HELP ")) {
            let quotes = help.matches('"').count();
            assert_eq!(quotes, help.matches("\\\"").count(), "{help}");
        }
    }

    #[test]
    fn bounds_are_written_as_canonical_floats() {
        for (v, want) in [
            ("1", "1.0"),
            ("0.005", "0.005"),
            ("10", "10.0"),
            ("+Inf", "+Inf"),
            ("2.5", "2.5"),
        ] {
            assert_eq!(canonical(v), want);
        }
    }
}
