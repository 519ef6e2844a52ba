//! Property-based fuzzing of what reads outside input: the OTLP decoders (protobuf and JSON)
//! and the rules parser. Each property only asks "no panic, and an error rather than garbage";
//! the case count is small for CI. A longer run:
//!
//! ```sh
//! PROPTEST_CASES=20000 cargo test --release --test integration fuzz::
//! ```

use proptest::prelude::*;
use tailsift::otlp::decode::Decoder;
use tailsift::otlp::json;
use tailsift::otlp::view::SpanView;
use tailsift::rules::RuleSet;

/// Everything a decoded message offers is read, as the pipeline would.
fn decode_all(bytes: &[u8]) {
    let mut d = Decoder::new();
    if d.decode(bytes).is_ok() {
        for g in d.groups(bytes) {
            for s in g.spans() {
                if let Ok(v) = SpanView::parse(s.bytes) {
                    let _ = v.attr(b"http.route");
                    let _ = v.duration_nanos();
                }
            }
        }
    }
}

fn example_rule_files() -> Vec<(String, String)> {
    let mut files: Vec<_> = std::fs::read_dir("rules")
        .expect("rules/")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            (
                name.unwrap_or_default(),
                std::fs::read_to_string(p).expect("rule file"),
            )
        })
        .collect()
}

/// Loads the example rules directory with file `which` replaced by `text`.
fn load_examples_with(which: usize, text: &str) -> bool {
    let dir = tempfile::tempdir().expect("tempdir");
    for (i, (name, original)) in example_rule_files().into_iter().enumerate() {
        let body = if i == which { text } else { &original };
        std::fs::write(dir.path().join(name), body).expect("write");
    }
    RuleSet::load(dir.path(), None).is_ok()
}

/// Loads one rule file's text as a rules directory; Ok or Err, never a panic.
fn load_rules(text: &str) -> bool {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("r.yaml"), text).expect("write");
    RuleSet::load(dir.path(), None).is_ok()
}

const TOKENS: &[&str] = &[
    "trace.error",
    "trace.duration",
    "trace.span_count",
    "root.name",
    "span.name",
    "span.status",
    "span.kind",
    "resource[\"service.name\"]",
    "span.attr[\"http.route\"]",
    "attr[\"x\"]",
    "any",
    "all",
    "and",
    "or",
    "not",
    "(",
    ")",
    "[",
    "]",
    ",",
    "=",
    "!=",
    ">",
    ">=",
    "<",
    "<=",
    "~",
    "!~",
    "in",
    "exists",
    "true",
    "false",
    "5",
    "-1",
    "2.5",
    "1e400",
    "500ms",
    "3s",
    "\"s\"",
    "\"(\"",
    "'q'",
    "\"\\\\\"",
    "/regex(/",
    "null",
    "",
    " ",
];

fn condition() -> impl Strategy<Value = String> {
    proptest::collection::vec(proptest::sample::select(TOKENS), 0..12).prop_map(|t| t.join(" "))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn protobuf_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        decode_all(&bytes);
    }

    #[test]
    fn json_decoder_never_panics_on_json_shaped_text(
        parts in proptest::collection::vec(proptest::sample::select(&[
            "{", "}", "[", "]", ",", ":", "\"resourceSpans\"", "\"scopeSpans\"", "\"spans\"",
            "\"traceId\"", "\"spanId\"", "\"attributes\"", "\"value\"", "\"intValue\"",
            "\"arrayValue\"", "\"kvlistValue\"", "\"values\"", "\"key\"", "\"0af7651916cd43dd8448eb211c80319c\"",
            "\"12\"", "12", "-1", "1e999", "null", "true", "\"\\ud800\"", "\"x\"",
        ][..]), 0..64)
    ) {
        let text = parts.concat();
        if let Ok(proto) = json::to_proto(text.as_bytes()) {
            decode_all(&proto);
        }
    }

    #[test]
    fn rules_parser_never_panics_on_arbitrary_text(text in "\\PC{0,200}") {
        let _ = load_rules(&text);
    }

    #[test]
    fn rules_parser_never_panics_on_generated_conditions(c in condition(), name in "[a-z-]{0,8}") {
        let text = format!(
            "rules:\n  - name: \"{name}\"\n    conditions: {c:?}\n    outcome: keep\n  - name: rest\n    outcome: drop\n"
        );
        let _ = load_rules(&text);
    }

    #[test]
    fn rules_parser_never_panics_on_mutated_example_files(
        file in any::<prop::sample::Index>(),
        edits in proptest::collection::vec(
            (any::<prop::sample::Index>(), proptest::sample::select(&[
                "", ":", "-", "\"", "(", ")", "=", "~", "[", "]", " ", "\n", "'", "0", "{", "}",
                "  ", "\t", "*", "&a", "!!", "\u{0}",
            ][..])),
            1..4,
        ),
    ) {
        let files = example_rule_files();
        let which = file.index(files.len());
        let mut text = files[which].1.clone();
        for (at, s) in edits {
            let chars: Vec<char> = text.chars().collect();
            let i = at.index(chars.len() + 1);
            let mut out: String = chars[..i].iter().collect();
            out.push_str(s);
            // Replace one character rather than only inserting, half the time.
            let rest = if s.len() % 2 == 0 { i + 1 } else { i };
            out.extend(chars.get(rest.min(chars.len())..).into_iter().flatten());
            text = out;
        }
        let _ = load_examples_with(which, &text);
    }
}

#[test]
fn the_example_rules_load_so_the_mutations_start_from_valid_files() {
    let files = example_rule_files();
    assert!(!files.is_empty());
    for (i, (_, text)) in files.iter().enumerate() {
        assert!(load_examples_with(i, text));
    }
    assert!(
        !load_examples_with(0, "rules: [oops"),
        "a broken file is refused"
    );
}
