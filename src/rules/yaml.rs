//! A YAML tree that remembers the line of every node, so that rule-file errors can say where.
//!
//! Rule files are walked by hand (every error of a file is reported, each with its rule and
//! field, which a derived deserializer cannot do), so they are read into this small tree,
//! through [`crate::yaml`]'s parser and budgets: aliases bounded, duplicate keys and second
//! documents refused.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// A YAML node and the (1-based) line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub line: usize,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// `~`, `null` or nothing, unquoted.
    Null,
    /// A scalar: its text, and its value as the YAML core schema resolves it (quoted text is
    /// always a string; `3`, `true` unquoted are a number and a boolean).
    Scalar {
        text: String,
        value: Scalar,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scalar {
    Str,
    Bool(bool),
    Int(i128),
    Float(f64),
}

impl Node {
    pub fn is_null(&self) -> bool {
        matches!(self.kind, Kind::Null)
    }

    /// A scalar's text (quoted or not), for keys and strings.
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// An unquoted whole number.
    pub fn as_u64(&self) -> Option<u64> {
        match self.kind {
            Kind::Scalar {
                value: Scalar::Int(n),
                ..
            } => u64::try_from(n).ok(),
            _ => None,
        }
    }

    /// An unquoted number that is not finite (`.nan`, `.inf`, `1e400`).
    pub fn is_non_finite(&self) -> bool {
        matches!(self.kind, Kind::Scalar { value: Scalar::Float(n), .. } if !n.is_finite())
    }

    /// An unquoted finite number.
    pub fn as_f64(&self) -> Option<f64> {
        match self.kind {
            Kind::Scalar {
                value: Scalar::Int(n),
                ..
            } => Some(n as f64),
            Kind::Scalar {
                value: Scalar::Float(n),
                ..
            } => Some(n).filter(|n| n.is_finite()),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.kind {
            Kind::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The value of `key` in a map.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    /// What kind of YAML this is, for messages.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Null => "nothing".into(),
            Kind::Scalar { text, .. } => format!("`{text}`"),
            Kind::Seq(items) if items.is_empty() => "an empty list".into(),
            Kind::Seq(_) => "a list".into(),
            Kind::Map(_) => "a map".into(),
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s: Spanned<Kind> = Spanned::deserialize(d)?;
        Ok(Node {
            line: s.referenced.line() as usize,
            kind: s.value,
        })
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(KindVisitor)
    }
}

struct KindVisitor;

fn scalar(text: String, value: Scalar) -> Kind {
    Kind::Scalar { text, value }
}

impl<'de> Visitor<'de> for KindVisitor {
    type Value = Kind;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Kind, E> {
        Ok(scalar(v.to_string(), Scalar::Bool(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Kind, E> {
        Ok(scalar(v.to_string(), Scalar::Int(v.into())))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Kind, E> {
        Ok(scalar(v.to_string(), Scalar::Int(v.into())))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Kind, E> {
        Ok(scalar(v.to_string(), Scalar::Int(v)))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Kind, E> {
        let n = i128::try_from(v).map_err(|_| E::custom(format!("{v} is too large")))?;
        Ok(scalar(v.to_string(), Scalar::Int(n)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Kind, E> {
        let text = match v {
            _ if v.is_nan() => ".nan".into(),
            _ if v.is_infinite() && v > 0.0 => ".inf".into(),
            _ if v.is_infinite() => "-.inf".into(),
            _ => format!("{v:?}"),
        };
        Ok(scalar(text, Scalar::Float(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Kind, E> {
        Ok(scalar(v.to_string(), Scalar::Str))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Kind, E> {
        Ok(scalar(v, Scalar::Str))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Kind, E> {
        Ok(Kind::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Kind, E> {
        Ok(Kind::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Kind, D::Error> {
        Kind::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Kind, A::Error> {
        let mut items = Vec::new();
        while let Some(n) = a.next_element()? {
            items.push(n);
        }
        Ok(Kind::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Kind, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = a.next_entry()? {
            entries.push(entry);
        }
        Ok(Kind::Map(entries))
    }
}

/// The keys given more than once in `node`'s maps (`deep`: and in the maps inside it): the
/// line of the repeat, the key, and the line it was first given on.
pub fn duplicate_keys(node: &Node, deep: bool, out: &mut Vec<(usize, String, usize)>) {
    match &node.kind {
        Kind::Map(entries) => {
            for (i, (k, v)) in entries.iter().enumerate() {
                if let Some(first) = entries[..i].iter().find(|(f, _)| f.kind == k.kind) {
                    out.push((k.line, k.describe(), first.0.line));
                }
                if deep {
                    duplicate_keys(v, deep, out);
                }
            }
        }
        Kind::Seq(items) if deep => {
            for i in items {
                duplicate_keys(i, deep, out);
            }
        }
        _ => {}
    }
}

/// A syntax error, with its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: usize,
    pub message: String,
}

/// Parses a YAML document into a tree of [`Node`]s. An empty document is null.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    if text.trim_start_matches('\u{feff}').trim().is_empty() {
        return Ok(Node {
            line: 1,
            kind: Kind::Null,
        });
    }
    // Repeated keys reach the tree, where the rule-file checks report them with their rule
    // and field ([`duplicate_keys`]); every other limit is the shared one.
    let mut options = crate::yaml::options();
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::PassThrough;
    // Likewise `.nan` and `.inf`, refused by the rule checks with their rule and field.
    options.non_finite_float_policy = serde_saphyr::NonFiniteFloatPolicy::PassThrough;
    serde_saphyr::from_str_with_options::<Node>(text, options).map_err(|e| {
        let e = crate::yaml::YamlError::from_saphyr(&e);
        SyntaxError {
            line: e.line,
            message: e.message,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_carry_their_lines_and_quoting() {
        let doc = parse("rules:\n  - name: a\n    x: 'quoted'\n    n: 3\n    c: {span: [a, b]}\n")
            .unwrap();
        let rule = &match &doc.get("rules").unwrap().kind {
            Kind::Seq(items) => items.clone(),
            _ => panic!("not a list"),
        }[0];
        assert_eq!(rule.line, 2);
        assert_eq!(rule.get("x").unwrap().line, 3);
        assert_eq!(rule.get("x").unwrap().as_u64(), None);
        assert_eq!(rule.get("n").unwrap().as_u64(), Some(3));
        assert_eq!(rule.get("c").unwrap().line, 5);
        assert!(parse("").unwrap().is_null());
        assert!(parse("a: '3'\n")
            .unwrap()
            .get("a")
            .unwrap()
            .as_u64()
            .is_none());
    }

    #[test]
    fn syntax_errors_have_a_line() {
        let e = parse("rules:\n  - name: a\n   bad: [\n").unwrap_err();
        assert!(e.line >= 2, "{e:?}");
    }

    #[test]
    fn aliases_resolve_to_their_anchor() {
        let doc = parse("a: &x [1, 2]\nb: *x\n").unwrap();
        let texts = |key: &str| match &doc.get(key).unwrap().kind {
            Kind::Seq(items) => items.iter().map(|n| n.describe()).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        assert_eq!(texts("b"), texts("a"));
    }

    #[test]
    fn duplicate_keys_second_documents_and_alias_bombs_are_refused_with_a_line() {
        let doc = parse("a: 1\nb: {c: 1, c: 2}\na: 3\n").expect("repeats reach the tree");
        let mut dups = Vec::new();
        duplicate_keys(&doc, true, &mut dups);
        assert_eq!(dups, [(2, "`c`".to_string(), 2), (3, "`a`".to_string(), 1)]);
        let cases = [("a: 1\n---\nb: 2\n", 2, "a second YAML document")];
        for (text, line, want) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e:?}");
            assert!(e.message.contains(want), "{text:?}: {e:?}");
        }
        let e = parse(&crate::yaml::tests::alias_bomb()).unwrap_err();
        assert!(e.message.contains("aliases"), "{e:?}");
    }
}
