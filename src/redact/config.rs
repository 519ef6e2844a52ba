//! `redaction.yaml`: walked by hand like the rule files, so that every mistake is reported at
//! once, each with file:line, the entry, the key, a did-you-mean and what is accepted; then
//! compiled (regexes built, the hash key resolved and keyed) into a [`Redaction`].
//!
//! ```yaml
//! hash_key: ${env:TAILSIFT_HASH_KEY}     # for `action: hash`; ${env:..} or ${file:..}
//! attributes:                            # per attribute, the first entry that matches acts
//!   - name: user-id
//!     key: user.id                       # key, key_prefix, key_regex: a string or a list
//!     services: [checkout]               # optional: only spans of these services
//!     action: hash                       # remove, replace, hash, scrub
//!   - name: sql
//!     key: db.statement
//!     action: scrub
//!     patterns: [sql_literals]           # sql_literals, email, card_number; or `regex:`
//! allowlists:                            # for these services only the listed keys survive
//!   - name: payment
//!     services: [payment]
//!     keys: [http.method, http.route]    # or key_prefixes
//! ```

use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::scrub::{Scrub, PATTERNS};
use super::{Action, Allowlist, Entry, Keys, Redaction};
use crate::rules::yaml::{self, Kind, Node};
use crate::rules::{unknown, ReadFile, RuleError};

/// The file names read as redaction (any case), not as rules.
const FILE_NAMES: [&str; 2] = ["redaction.yaml", "redaction.yml"];
const TOP_KEYS: [&str; 3] = ["hash_key", "attributes", "allowlists"];
const ENTRY_KEYS: [&str; 9] = [
    "name",
    "key",
    "key_prefix",
    "key_regex",
    "services",
    "action",
    "mask",
    "patterns",
    "regex",
];
const ALLOW_KEYS: [&str; 5] = ["name", "services", "keys", "key_prefixes", "key_regex"];
const ACTIONS: [&str; 4] = ["remove", "replace", "hash", "scrub"];
/// What `replace` writes, and what `scrub` writes over an email, card number or regex match.
pub const DEFAULT_MASK: &str = "[REDACTED]";
/// Shorter hash keys are refused: the point of the key is that values cannot be guessed.
pub const MIN_HASH_KEY_BYTES: usize = 16;

/// Whether a file of the rules directory is the redaction file, not a rule file.
pub fn is_redaction_file(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| FILE_NAMES.iter().any(|f| f.eq_ignore_ascii_case(n)))
}

struct Errors<'a> {
    file: &'a str,
    entry: String,
    out: Vec<RuleError>,
}

impl Errors<'_> {
    fn push(&mut self, line: usize, field: &str, message: impl Into<String>) {
        self.out.push(RuleError {
            file: self.file.to_string(),
            line,
            rule: self.entry.clone(),
            field: field.to_string(),
            message: message.into(),
        });
    }
}

/// The redaction of a rules directory's files: `None` when there is no `redaction.yaml`.
pub fn load(files: &[ReadFile]) -> Result<Option<Redaction>, Vec<RuleError>> {
    let mut found = files.iter().filter(|(p, _)| is_redaction_file(p));
    let Some((path, bytes)) = found.next() else {
        return Ok(None);
    };
    let name = path.display().to_string();
    if let Some((other, _)) = found.next() {
        return Err(vec![RuleError {
            file: other.display().to_string(),
            line: 0,
            rule: "-".into(),
            field: "-".into(),
            message: format!("a second redaction file beside {name}: keep one"),
        }]);
    }
    let err = |message: String| {
        vec![RuleError {
            file: name.clone(),
            line: 0,
            rule: "-".into(),
            field: "-".into(),
            message,
        }]
    };
    let bytes = bytes.as_ref().map_err(|e| err(e.clone()))?;
    let text = std::str::from_utf8(bytes)
        .map_err(|e| err(format!("not UTF-8 (at offset {})", e.valid_up_to())))?;
    parse(&name, text, &|k| std::env::var(k).ok()).map(Some)
}

/// Parses and compiles a redaction file's text; `env` resolves `${env:..}`.
pub fn parse(
    file: &str,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Redaction, Vec<RuleError>> {
    let mut err = Errors {
        file,
        entry: "-".into(),
        out: Vec::new(),
    };
    let doc = match yaml::parse(text) {
        Ok(d) => d,
        Err(e) => {
            err.push(e.line, "-", format!("invalid YAML: {}", e.message));
            return Err(err.out);
        }
    };
    let Some(top) = doc.as_map() else {
        err.push(
            doc.line,
            "-",
            "a redaction file is a map with `attributes:` and/or `allowlists:` lists",
        );
        return Err(err.out);
    };
    let mut dups = Vec::new();
    yaml::duplicate_keys(&doc, true, &mut dups);
    for (line, key, first) in dups {
        err.push(
            line,
            key.trim_matches('`'),
            format!("{key} is given twice (first on line {first}): each key may appear once"),
        );
    }
    for (k, _) in top {
        let key = k.as_str().unwrap_or("?");
        if !TOP_KEYS.contains(&key) {
            err.push(k.line, key, unknown("key", key, &TOP_KEYS));
        }
    }
    let entries: Vec<Entry> = items(&doc, "attributes", &mut err)
        .iter()
        .enumerate()
        .filter_map(|(i, n)| entry(i, n, &mut err))
        .collect();
    let allowlists: Vec<Allowlist> = items(&doc, "allowlists", &mut err)
        .iter()
        .enumerate()
        .filter_map(|(i, n)| allowlist(i, n, &mut err))
        .collect();
    err.entry = "-".into();
    let mut seen = std::collections::HashMap::new();
    let lines = list(&doc, "attributes")
        .iter()
        .chain(list(&doc, "allowlists"))
        .map(|n| n.line);
    for (name, line) in entries
        .iter()
        .map(|e| e.name.clone())
        .chain(allowlists.iter().map(|a| a.name.clone()))
        .zip(lines)
    {
        if let Some(first) = seen.insert(name.clone(), line) {
            err.entry = format!("`{name}`");
            err.push(
                line,
                "name",
                format!("names must be unique in the file (first on line {first})"),
            );
        }
    }
    err.entry = "-".into();
    if entries.len() > super::MAX_ENTRIES {
        err.push(
            list(&doc, "attributes")[super::MAX_ENTRIES].line,
            "attributes",
            format!(
                "at most {} entries: give an entry several keys (`key: [a, b]`) instead",
                super::MAX_ENTRIES
            ),
        );
    }
    let hashes = entries.iter().any(|e| matches!(e.action, Action::Hash));
    let hasher = match doc.get("hash_key") {
        None if hashes => {
            err.push(
                doc.line,
                "hash_key",
                "`action: hash` needs `hash_key: ${env:NAME}` or `hash_key: ${file:/path}` \
                 (the secret of the keyed hash)",
            );
            None
        }
        None => None,
        Some(k) => hash_key(k, env, &mut err),
    };
    if !err.out.is_empty() {
        return Err(err.out);
    }
    Ok(Redaction::new(file.into(), entries, allowlists, hasher))
}

fn list<'a>(doc: &'a Node, key: &str) -> &'a [Node] {
    match doc.get(key).map(|n| &n.kind) {
        Some(Kind::Seq(items)) => items,
        _ => &[],
    }
}

fn items<'a>(doc: &'a Node, key: &str, err: &mut Errors<'_>) -> &'a [Node] {
    match doc.get(key) {
        Some(n) if !matches!(n.kind, Kind::Seq(_)) && !n.is_null() => {
            err.push(
                n.line,
                key,
                format!("expected a list, got {}", n.describe()),
            );
            &[]
        }
        _ => list(doc, key),
    }
}

fn hash_key(
    k: &Node,
    env: &dyn Fn(&str) -> Option<String>,
    err: &mut Errors<'_>,
) -> Option<Hmac<Sha256>> {
    let Some(text) = k.as_str() else {
        err.push(
            k.line,
            "hash_key",
            format!(
                "expected ${{env:NAME}} or ${{file:/path}}, got {}",
                k.describe()
            ),
        );
        return None;
    };
    let read = |p: &Path| std::fs::read_to_string(p);
    let secret = match crate::secrets::resolve(text, &env, &read) {
        Ok(Some(s)) if text.starts_with("${") => s,
        Ok(_) => {
            err.push(
                k.line,
                "hash_key",
                "write the key as a reference, ${env:NAME} or ${file:/path}, not in the file: \
                 whoever reads the rules could then reverse every hash",
            );
            return None;
        }
        Err(e) => {
            err.push(k.line, "hash_key", e);
            return None;
        }
    };
    if secret.len() < MIN_HASH_KEY_BYTES {
        err.push(
            k.line,
            "hash_key",
            format!(
                "the key is {} bytes; at least {MIN_HASH_KEY_BYTES} are needed so that hashed \
                 values cannot be guessed",
                secret.len()
            ),
        );
        return None;
    }
    Hmac::<Sha256>::new_from_slice(secret.as_bytes()).ok()
}

/// A string or a list of strings; errors for anything else.
fn strings(n: &Node, field: &str, err: &mut Errors<'_>) -> Vec<String> {
    let nodes: Vec<&Node> = match &n.kind {
        Kind::Seq(items) => items.iter().collect(),
        _ => vec![n],
    };
    let mut out = Vec::new();
    for item in nodes {
        match item.as_str() {
            Some(s) if !s.is_empty() => out.push(s.to_string()),
            _ => err.push(
                item.line,
                field,
                format!(
                    "expected a non-empty string or a list of them, got {}",
                    item.describe()
                ),
            ),
        }
    }
    if out.is_empty() && matches!(n.kind, Kind::Seq(_)) {
        err.push(n.line, field, "the list is empty");
    }
    out
}

fn regex(n: &Node, field: &str, err: &mut Errors<'_>) -> Option<regex::bytes::Regex> {
    let parts = strings(n, field, err);
    if parts.is_empty() {
        return None;
    }
    // Several regexes match like one alternation; each is checked alone for a precise error.
    for p in &parts {
        if let Err(e) = regex::bytes::Regex::new(p) {
            err.push(n.line, field, format!("invalid regex `{p}`: {e}"));
            return None;
        }
    }
    let joined = parts
        .iter()
        .map(|p| format!("(?:{p})"))
        .collect::<Vec<_>>()
        .join("|");
    regex::bytes::Regex::new(&joined)
        .map_err(|e| err.push(n.line, field, format!("invalid regex: {e}")))
        .ok()
}

fn bytes_list(v: Vec<String>) -> Vec<Box<[u8]>> {
    v.into_iter()
        .map(|s| s.into_bytes().into_boxed_slice())
        .collect()
}

/// Opens an entry: its label for messages, unknown and misplaced keys.
fn open<'a>(
    index: usize,
    v: &'a Node,
    keys: &[&str],
    what: &str,
    err: &mut Errors<'_>,
) -> Option<&'a [(Node, Node)]> {
    err.entry = v
        .get("name")
        .and_then(Node::as_str)
        .map(|n| format!("`{n}`"))
        .unwrap_or_else(|| format!("#{}", index + 1));
    let Some(m) = v.as_map() else {
        err.push(
            v.line,
            "-",
            format!("{what} is a map, got {}", v.describe()),
        );
        return None;
    };
    for (k, _) in m {
        let key = k.as_str().unwrap_or("?");
        if !keys.contains(&key) {
            err.push(k.line, key, unknown("key", key, keys));
        }
    }
    Some(m)
}

fn name(v: &Node, err: &mut Errors<'_>) -> Option<std::sync::Arc<str>> {
    match v.get("name").and_then(Node::as_str) {
        Some(n) if !n.trim().is_empty() => Some(n.into()),
        _ => {
            err.push(
                v.line,
                "name",
                "every entry needs a non-empty `name` (it labels the metrics)",
            );
            None
        }
    }
}

fn entry(index: usize, v: &Node, err: &mut Errors<'_>) -> Option<Entry> {
    let before = err.out.len();
    open(index, v, &ENTRY_KEYS, "an attribute entry", err)?;
    let name = name(v, err);
    let keys = Keys {
        exact: v
            .get("key")
            .map(|n| bytes_list(strings(n, "key", err)))
            .unwrap_or_default(),
        prefixes: v
            .get("key_prefix")
            .map(|n| bytes_list(strings(n, "key_prefix", err)))
            .unwrap_or_default(),
        regex: v.get("key_regex").and_then(|n| regex(n, "key_regex", err)),
    };
    if ["key", "key_prefix", "key_regex"]
        .iter()
        .all(|k| v.get(k).is_none())
    {
        err.push(
            v.line,
            "key",
            "an entry needs the attributes it applies to: `key`, `key_prefix` or `key_regex` \
             (key_regex: '.*' for every attribute)",
        );
    }
    let services = v
        .get("services")
        .map(|n| bytes_list(strings(n, "services", err)));
    let action_name = v.get("action").and_then(Node::as_str);
    let line = |k: &str| v.get(k).map_or(v.line, |n| n.line);
    for (key, owner) in [
        ("mask", &["replace", "scrub"][..]),
        ("patterns", &["scrub"]),
        ("regex", &["scrub"]),
    ] {
        if let (Some(n), Some(a)) = (v.get(key), action_name) {
            if ACTIONS.contains(&a) && !owner.contains(&a) {
                err.push(
                    n.line,
                    key,
                    format!(
                        "`{key}` applies to `action: {}` only; this entry's action is `{a}`",
                        owner.join("` or `action: ")
                    ),
                );
            }
        }
    }
    let mask = match v.get("mask") {
        None => None,
        Some(n) => match n.as_str() {
            Some(s) => Some(s.as_bytes().to_vec().into_boxed_slice()),
            None => {
                err.push(
                    n.line,
                    "mask",
                    format!("expected a string, got {}", n.describe()),
                );
                None
            }
        },
    };
    let action = match action_name {
        Some("remove") => Some(Action::Remove),
        Some("replace") => Some(Action::Replace(
            mask.clone()
                .unwrap_or_else(|| DEFAULT_MASK.as_bytes().into()),
        )),
        Some("hash") => Some(Action::Hash),
        Some("scrub") => scrub(v, mask, err).map(Action::Scrub),
        Some(other) => {
            err.push(line("action"), "action", unknown("action", other, &ACTIONS));
            None
        }
        None => {
            err.push(
                v.line,
                "action",
                "every entry needs an `action`: remove, replace, hash or scrub",
            );
            None
        }
    };
    if err.out.len() > before {
        return None;
    }
    Some(Entry {
        name: name?,
        keys,
        services,
        action: action?,
    })
}

fn scrub(v: &Node, mask: Option<Box<[u8]>>, err: &mut Errors<'_>) -> Option<Scrub> {
    let mut s = Scrub {
        sql: false,
        email: false,
        card: false,
        custom: v.get("regex").and_then(|n| regex(n, "regex", err)),
        mask: mask.unwrap_or_else(|| DEFAULT_MASK.as_bytes().into()),
    };
    if let Some(n) = v.get("patterns") {
        for p in strings(n, "patterns", err) {
            match p.as_str() {
                "sql_literals" => s.sql = true,
                "email" => s.email = true,
                "card_number" => s.card = true,
                other => err.push(n.line, "patterns", unknown("pattern", other, &PATTERNS)),
            }
        }
    } else if v.get("regex").is_none() {
        err.push(
            v.line,
            "patterns",
            format!(
                "`action: scrub` needs `patterns: [...]` ({}) or a `regex:` to scrub",
                PATTERNS.join(", ")
            ),
        );
    }
    Some(s)
}

fn allowlist(index: usize, v: &Node, err: &mut Errors<'_>) -> Option<Allowlist> {
    let before = err.out.len();
    open(index, v, &ALLOW_KEYS, "an allowlist", err)?;
    let name = name(v, err);
    let services = match v.get("services") {
        Some(n) => bytes_list(strings(n, "services", err)),
        None => {
            err.push(
                v.line,
                "services",
                "an allowlist needs `services: [...]`: the services whose spans keep only the \
                 listed keys",
            );
            Vec::new()
        }
    };
    let keys = Keys {
        exact: v
            .get("keys")
            .map(|n| bytes_list(strings(n, "keys", err)))
            .unwrap_or_default(),
        prefixes: v
            .get("key_prefixes")
            .map(|n| bytes_list(strings(n, "key_prefixes", err)))
            .unwrap_or_default(),
        regex: v.get("key_regex").and_then(|n| regex(n, "key_regex", err)),
    };
    if err.out.len() > before {
        return None;
    }
    let mut keys = keys;
    // A resource without its service name would be orphaned downstream: always allowed.
    keys.exact.push(b"service.name".to_vec().into_boxed_slice());
    Some(Allowlist {
        name: name?,
        services,
        keys,
    })
}
