//! A YAML tree that remembers the line of every node, so that rule-file errors can say where.
//!
//! serde_yaml's `Value` forgets positions; yaml-rust2's event parser reports a marker with
//! every event, from which this small tree is built.

use std::collections::HashMap;

use yaml_rust2::parser::{MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};
use yaml_rust2::Event;

/// A YAML node and the (1-based) line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub line: usize,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// A scalar's text; `plain` when unquoted (then `~`, `null` and the empty text are null,
    /// and numbers and booleans are not strings).
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar { text, plain: true } if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// A scalar's text (quoted or not), for keys and strings.
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar { text, .. } if !self.is_null() => Some(text),
            _ => None,
        }
    }

    /// An unquoted whole number.
    pub fn as_u64(&self) -> Option<u64> {
        match &self.kind {
            Kind::Scalar { text, plain: true } => text.parse().ok(),
            _ => None,
        }
    }

    /// An unquoted number.
    pub fn as_f64(&self) -> Option<f64> {
        match &self.kind {
            Kind::Scalar { text, plain: true } => {
                text.parse::<f64>().ok().filter(|n| n.is_finite())
            }
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
            _ if self.is_null() => "nothing".into(),
            Kind::Scalar { text, .. } => format!("`{text}`"),
            Kind::Seq(_) => "a list".into(),
            Kind::Map(_) => "a map".into(),
        }
    }
}

/// A syntax error, with its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: usize,
    pub message: String,
}

#[derive(Default)]
struct Builder {
    /// Open collections: the node and, for maps, a pending key.
    stack: Vec<(Node, Option<Node>)>,
    anchors: HashMap<usize, Node>,
    /// Anchor ids of the open collections, to record them when they close.
    open_anchors: Vec<usize>,
    root: Option<Node>,
    /// Documents after the first are ignored; this notes that there were some.
    extra_documents: bool,
}

impl Builder {
    fn push(&mut self, node: Node) {
        match self.stack.last_mut() {
            None => {
                if self.root.is_some() {
                    self.extra_documents = true;
                } else {
                    self.root = Some(node);
                }
            }
            Some((parent, pending)) => match &mut parent.kind {
                Kind::Seq(items) => items.push(node),
                Kind::Map(entries) => match pending.take() {
                    None => *pending = Some(node),
                    Some(key) => entries.push((key, node)),
                },
                Kind::Scalar { .. } => {}
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            Event::Scalar(text, style, anchor, _) => {
                let node = Node {
                    line,
                    kind: Kind::Scalar {
                        text,
                        plain: style == TScalarStyle::Plain,
                    },
                };
                if anchor > 0 {
                    self.anchors.insert(anchor, node.clone());
                }
                self.push(node);
            }
            Event::Alias(id) => {
                let node = self.anchors.get(&id).cloned().unwrap_or(Node {
                    line,
                    kind: Kind::Scalar {
                        text: String::new(),
                        plain: true,
                    },
                });
                self.push(Node { line, ..node });
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                let kind = if matches!(ev, Event::SequenceStart(..)) {
                    Kind::Seq(Vec::new())
                } else {
                    Kind::Map(Vec::new())
                };
                self.stack.push((Node { line, kind }, None));
                self.open_anchors.push(anchor);
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((node, _)) = self.stack.pop() {
                    let anchor = self.open_anchors.pop().unwrap_or(0);
                    if anchor > 0 {
                        self.anchors.insert(anchor, node.clone());
                    }
                    self.push(node);
                }
            }
            _ => {}
        }
    }
}

/// Parses a YAML document into a tree of [`Node`]s. An empty document is a null scalar.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    let mut b = Builder::default();
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut b, false).map_err(|e| SyntaxError {
        line: e.marker().line(),
        message: e.info().to_string(),
    })?;
    Ok(b.root.unwrap_or(Node {
        line: 1,
        kind: Kind::Scalar {
            text: String::new(),
            plain: true,
        },
    }))
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
    }

    #[test]
    fn syntax_errors_have_a_line() {
        let e = parse("rules:\n  - name: a\n   bad: [\n").unwrap_err();
        assert!(e.line >= 2, "{e:?}");
    }

    #[test]
    fn aliases_resolve_to_their_anchor() {
        let doc = parse("a: &x [1, 2]\nb: *x\n").unwrap();
        assert_eq!(doc.get("b").unwrap().kind, doc.get("a").unwrap().kind);
    }
}
