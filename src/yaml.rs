//! YAML as tailsift reads it: the configuration, rule files and case files go through one
//! parser (serde-saphyr, built for panic-free parsing under resource budgets) with the same
//! strict options, so that a file means one thing or is refused:
//!
//! - **Aliases** (`*name`) are expanded, within a budget: at most [`MAX_ALIAS_EVENTS`] parser
//!   events replayed from aliases per file, and [`MAX_NODES`] nodes in all. A file of nested
//!   aliases (an "alias bomb": a few hundred bytes that expand to billions of nodes) is refused
//!   in milliseconds with an error naming the line, instead of exhausting memory.
//! - **A key given twice** in one map is an error (YAML parsers differ on which one wins).
//! - **One document per file**: a second document after `---` is an error, not ignored.
//! - **Non-finite numbers** (`.nan`, `.inf`, `1e400`) are refused.
//! - A leading UTF-8 byte-order mark is allowed.
//!
//! Errors carry the line and column and, for typed files, the key path
//! (`completion.max_spans_per_trace`); their wording is for operators, not serde internals.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;

use serde::de::DeserializeOwned;
use serde_saphyr::budget::BudgetBreach;
use serde_saphyr::{Budget, DuplicateKeyPolicy, Error, MessageFormatter, Options};

/// Nodes (scalars, lists, maps) a file may hold, aliases expanded. The example rules hold
/// about 400; a 2000-rule file about 20 000.
pub const MAX_NODES: usize = 100_000;
/// Parser events a file's aliases may replay in all (each alias replays its anchor's events).
pub const MAX_ALIAS_EVENTS: usize = 10_000;

/// The options every YAML file of tailsift is read with (see the module doc).
pub fn options() -> Options {
    let mut budget = Budget::default();
    budget.max_nodes = MAX_NODES;
    budget.max_events = 4 * MAX_NODES;
    budget.max_documents = 1;
    let mut o = Options::default();
    o.budget = Some(budget);
    o.duplicate_keys = DuplicateKeyPolicy::Error;
    o.alias_limits.max_total_replayed_events = MAX_ALIAS_EVENTS;
    // YAML 1.2: only `true` and `false` are booleans (YAML 1.1 also read `y`, `n`, `on`,
    // `off`, `yes`, `no`, so a key `n:` was `false`).
    o.strict_booleans = true;
    o.with_snippet = false;
    o
}

/// A YAML file that cannot be read as expected: where, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct YamlError {
    /// 1-based; 0 when unknown.
    pub line: usize,
    /// 1-based; 0 when the line is unknown.
    pub column: usize,
    /// The key path of the value at fault (`completion.root_grace`), when known.
    pub path: Option<String>,
    /// What is wrong, worded for operators; without the location, which `Display` prefixes.
    pub message: String,
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}: ", self.line, self.column)?;
        }
        if let Some(p) = &self.path {
            write!(f, "`{p}`: ")?;
        }
        f.write_str(&self.message)
    }
}

impl YamlError {
    /// Turns a parser error into one worded for operators.
    pub fn from_saphyr(e: &Error) -> Self {
        let (line, column) = e
            .location()
            .map_or((0, 0), |l| (l.line() as usize, l.column() as usize));
        let mut inner = e;
        while let Error::AliasError { error, .. } | Error::WithSnippet { error, .. } = inner {
            inner = error;
        }
        YamlError {
            line,
            column,
            path: None,
            message: Wording.format_message(inner).into_owned(),
        }
    }
}

/// Parses one YAML document into `T` with [`options`]; errors name the line, column and key.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    let path = RefCell::new(None);
    serde_saphyr::with_deserializer_from_str_with_options(text, options(), |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            *path.borrow_mut() = key_path(&e.path().to_string());
            e.into_inner()
        })
    })
    .map_err(|e| YamlError {
        path: path.take(),
        ..YamlError::from_saphyr(&e)
    })
}

/// A path as serde_path_to_error writes it, without its unknown tail (`b.?` is `b`).
fn key_path(p: &str) -> Option<String> {
    let known: Vec<&str> = p
        .split('.')
        .take_while(|s| *s != "?" && !s.is_empty())
        .collect();
    (!known.is_empty()).then(|| known.join("."))
}

/// What a Rust type name means to someone writing YAML.
fn type_words(ty: &str) -> Cow<'static, str> {
    let whole = |max: u64| Cow::Owned(format!("a whole number from 0 to {max}"));
    match ty.trim_start_matches("a ").trim_start_matches("an ") {
        "u8" => whole(u8::MAX.into()),
        "u16" => whole(u16::MAX.into()),
        "u32" => whole(u32::MAX.into()),
        "u64" | "usize" => whole(u64::MAX),
        "i8" | "i16" | "i32" | "i64" | "isize" | "integer" => "a whole number".into(),
        "f32" | "f64" | "float" => "a number".into(),
        "bool" | "boolean" => "true or false".into(),
        "char" => "a single character".into(),
        "string" => "a string".into(),
        "sequence" => "a list".into(),
        "map" | "mapping" => "a map".into(),
        _ => Cow::Owned(ty.to_string()),
    }
}

/// serde-saphyr's messages, reworded where they would name Rust types or parser options.
struct Wording;

impl MessageFormatter for Wording {
    fn format_message<'a>(&self, err: &'a Error) -> Cow<'a, str> {
        match err {
            Error::DuplicateMappingKey { key, .. } => Cow::Owned(format!(
                "{} is given twice in the same map: each key may appear once",
                key.as_deref()
                    .map_or("a key".to_string(), |k| format!("`{k}`"))
            )),
            Error::MultipleDocuments { .. } => Cow::Borrowed(
                "a second YAML document (after `---`): a file holds exactly one document",
            ),
            Error::AliasReplayLimitExceeded { .. }
            | Error::AliasExpansionLimitExceeded { .. }
            | Error::AliasReplayStackDepthExceeded { .. }
            | Error::AliasReplayCounterOverflow { .. } => Cow::Owned(format!(
                "aliases (`*name`) expand to more than {MAX_ALIAS_EVENTS} parser events: refused \
                 (nested aliases can make a small file huge); write the repeated part out"
            )),
            Error::Budget { breach, .. } => Cow::Owned(match breach {
                BudgetBreach::Nodes { .. } | BudgetBreach::Events { .. } => format!(
                    "the document holds more than {MAX_NODES} nodes once its aliases are \
                     expanded: refused"
                ),
                BudgetBreach::Depth { .. } => "the document nests too deeply: refused".into(),
                BudgetBreach::Documents { .. } => {
                    "a second YAML document (after `---`): a file holds exactly one document".into()
                }
                other => format!("the document exceeds a parser limit ({other:?}): refused"),
            }),
            Error::NonFiniteFloat { value, .. } => {
                Cow::Owned(format!("`{value}` is not a finite number"))
            }
            Error::InvalidBooleanStrict { .. } => Cow::Borrowed("expected true or false"),
            Error::InvalidScalar { ty, .. } => Cow::Owned(format!("expected {}", type_words(ty))),
            Error::SerdeInvalidType {
                unexpected,
                expected,
                ..
            }
            | Error::SerdeInvalidValue {
                unexpected,
                expected,
                ..
            } => Cow::Owned(format!(
                "expected {}, got {unexpected}",
                type_words(expected)
            )),
            Error::SerdeUnknownField {
                field, expected, ..
            } => Cow::Owned(format!(
                "unknown key `{field}`{} (supported: {})",
                crate::rules::did_you_mean(field, expected)
                    .map(|o| format!(", did you mean `{o}`?"))
                    .unwrap_or_default(),
                expected.join(", ")
            )),
            Error::SerdeUnknownVariant {
                variant, expected, ..
            } => Cow::Owned(format!(
                "unknown value `{variant}` (supported: {})",
                expected.join(", ")
            )),
            Error::SerdeMissingField { field, .. } => {
                Cow::Owned(format!("missing key `{field}` (required)"))
            }
            Error::Message { msg, .. } => Cow::Borrowed(msg),
            other => serde_saphyr::UserMessageFormatter.format_message(other),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        a: u32,
        #[serde(default)]
        b: Option<Inner>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        flag: bool,
    }

    fn err(text: &str) -> String {
        from_str::<Doc>(text).expect_err(text).to_string()
    }

    #[test]
    fn errors_name_line_key_and_what_is_accepted_in_plain_words() {
        let cases = [
            (
                "a: -1\n",
                "1:4: `a`: expected a whole number from 0 to 4294967295",
            ),
            ("a: 1\nb: {flag: maybe}\n", "2:"),
            (
                "a: 1\nb: {flag: maybe}\n",
                "`b.flag`: expected true or false",
            ),
            ("a: 1\nb: {falg: true}\n", "did you mean `flag`?"),
            ("a: 1\na: 2\n", "2:1: `a` is given twice in the same map"),
            ("a: 1\n---\na: 2\n", "a second YAML document"),
            ("b: {flag: true}\n", "missing key `a`"),
        ];
        for (text, want) in cases {
            let e = err(text);
            assert!(e.contains(want), "{text:?}: {e:?} should contain {want:?}");
            for internal in ["u32", "untagged", "DuplicateKeyPolicy", "from_str_multiple"] {
                assert!(!e.contains(internal), "{text:?}: {e:?} leaks {internal}");
            }
        }
    }

    #[test]
    fn non_finite_numbers_are_refused_and_yaml_1_1_booleans_are_text() {
        for text in ["a: 1e400\n", "a: .nan\n", "a: -.inf\n"] {
            let e = from_str::<serde_json::Value>(text).expect_err(text);
            assert!(e.message.contains("is not a finite number"), "{e}");
        }
        let v: serde_json::Value = from_str("n: no\ny: off\n").expect("strings");
        assert_eq!(v, serde_json::json!({"n": "no", "y": "off"}));
    }

    #[test]
    fn a_byte_order_mark_is_allowed() {
        assert_eq!(from_str::<Doc>("\u{feff}a: 3\n").map(|d| d.a), Ok(3));
    }

    #[test]
    fn an_alias_bomb_is_refused_quickly() {
        let started = std::time::Instant::now();
        let e = from_str::<serde_json::Value>(&alias_bomb()).expect_err("refused");
        assert!(e.message.contains("aliases"), "{e}");
        assert!(e.line > 1, "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        // Aliases within the budget are expanded as usual.
        let v: serde_json::Value = from_str("a: &x [1, 2]\nb: *x\n").expect("small aliases");
        assert_eq!(v["b"], v["a"]);
    }

    /// Nine levels, each a list of nine aliases of the previous: 9^9 nodes once expanded.
    pub(crate) fn alias_bomb() -> String {
        let mut s = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let refs = vec![format!("*a{}", i - 1); 9].join(", ");
            s.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        s
    }
}
