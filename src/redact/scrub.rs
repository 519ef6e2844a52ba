//! Patterns scrubbed inside string values: SQL literals, emails, card numbers, and a regex of
//! the user's. Each returns `None` when the value has nothing to scrub, so that an attribute
//! without a match is left as it arrived.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::bytes::{Captures, Regex};

/// The built-in patterns, as `patterns:` names them.
pub const PATTERNS: [&str; 3] = ["sql_literals", "email", "card_number"];

/// What an email address looks like: enough to catch them in free text, not RFC 5322.
static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
        .expect("a valid regex")
});

/// 13 to 19 digits, optionally grouped by spaces or dashes; confirmed by the Luhn check, so
/// that order ids and timestamps are not taken for cards.
static CARD: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b\d(?:[ -]?\d){12,18}\b").expect("a valid regex"));

/// A scrub entry's compiled patterns.
#[derive(Debug, Clone)]
pub struct Scrub {
    pub sql: bool,
    pub email: bool,
    pub card: bool,
    pub custom: Option<Regex>,
    /// What a match of `email`, `card_number` or the regex becomes.
    pub mask: Box<[u8]>,
}

impl Scrub {
    /// The scrubbed value, or `None` when nothing matched.
    pub fn apply(&self, value: &[u8]) -> Option<Vec<u8>> {
        let mut v: Cow<'_, [u8]> = Cow::Borrowed(value);
        let mut changed = false;
        if let Some(r) = &self.custom {
            if let Cow::Owned(o) = r.replace_all(&v, &*self.mask) {
                v = Cow::Owned(o);
                changed = true;
            }
        }
        // Cheap checks first: most values hold no `@` and fewer than 13 digits.
        if self.email && memchr_at(&v) {
            if let Cow::Owned(o) = EMAIL.replace_all(&v, &*self.mask) {
                v = Cow::Owned(o);
                changed = true;
            }
        }
        if self.card && v.iter().filter(|b| b.is_ascii_digit()).count() >= 13 {
            let mut hit = false;
            let out = CARD.replace_all(&v, |c: &Captures<'_>| {
                let m = &c[0];
                if luhn(m) {
                    hit = true;
                    self.mask.to_vec()
                } else {
                    m.to_vec()
                }
            });
            if hit {
                v = Cow::Owned(out.into_owned());
                changed = true;
            }
        }
        if self.sql {
            if let Some(o) = sql_literals(&v) {
                v = Cow::Owned(o);
                changed = true;
            }
        }
        changed.then(|| v.into_owned())
    }
}

fn memchr_at(v: &[u8]) -> bool {
    v.contains(&b'@')
}

/// Whether the digits of `s` pass the Luhn check (card numbers do).
fn luhn(s: &[u8]) -> bool {
    let mut sum = 0u32;
    let mut double = false;
    for d in s.iter().rev().filter(|b| b.is_ascii_digit()) {
        let mut n = u32::from(d - b'0');
        if double {
            n *= 2;
            if n > 9 {
                n -= 9;
            }
        }
        sum += n;
        double = !double;
    }
    sum.is_multiple_of(10)
}

fn ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b == b'$' || b == b'@' || b == b':' || b >= 0x80
}

fn ident_continue(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// A SQL statement with its literals replaced by `?`: single-quoted strings (`''` and
/// backslash escapes inside) and numbers (`42`, `3.14`, `1e5`, `0x1F`). Identifiers keep
/// their digits (`table1`, `$1`, `:p1`), double-quoted names are identifiers (ANSI SQL) and are
/// kept. `None` when there is no literal. A scanner, not a regex: one pass, and identifiers are
/// told from numbers by what precedes them, which the regex crate cannot look behind for.
pub fn sql_literals(s: &[u8]) -> Option<Vec<u8>> {
    if !s.iter().any(|b| *b == b'\'' || b.is_ascii_digit()) {
        return None;
    }
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    let mut changed = false;
    while i < s.len() {
        let c = s[i];
        if c == b'\'' {
            let mut j = i + 1;
            while j < s.len() {
                match s[j] {
                    b'\\' => j += 2,
                    b'\'' if s.get(j + 1) == Some(&b'\'') => j += 2,
                    b'\'' => {
                        j += 1;
                        break;
                    }
                    _ => j += 1,
                }
            }
            out.push(b'?');
            changed = true;
            i = j.min(s.len());
        } else if c.is_ascii_digit() {
            let mut j = i + 1;
            while j < s.len() {
                let b = s[j];
                let exp_sign = (b == b'+' || b == b'-') && matches!(s[j - 1], b'e' | b'E');
                if b.is_ascii_alphanumeric() || b == b'.' || exp_sign {
                    j += 1;
                } else {
                    break;
                }
            }
            out.push(b'?');
            changed = true;
            i = j;
        } else if c == b'"' || c == b'`' {
            // A quoted identifier: copied whole.
            let end = s[i + 1..]
                .iter()
                .position(|b| *b == c)
                .map_or(s.len(), |p| i + 1 + p + 1);
            out.extend_from_slice(&s[i..end]);
            i = end;
        } else if ident_start(c) {
            let mut j = i + 1;
            while j < s.len() && ident_continue(s[j]) {
                j += 1;
            }
            out.extend_from_slice(&s[i..j]);
            i = j;
        } else {
            out.push(c);
            i += 1;
        }
    }
    changed.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_literals_become_placeholders_and_identifiers_stay() {
        let cases: &[(&str, Option<&str>)] = &[
            (
                "SELECT * FROM users WHERE email = 'a@b.com' AND id = 42",
                Some("SELECT * FROM users WHERE email = ? AND id = ?"),
            ),
            ("SELECT name FROM t1 WHERE x = $1", None),
            (
                "SELECT 'it''s', 3.14, 1e-5, 0x1F",
                Some("SELECT ?, ?, ?, ?"),
            ),
            (
                "UPDATE \"t2\" SET a = 'x\\'y' WHERE b=:p1",
                Some("UPDATE \"t2\" SET a = ? WHERE b=:p1"),
            ),
            (
                "INSERT INTO t VALUES (-7, 'unterminated",
                Some("INSERT INTO t VALUES (-?, ?"),
            ),
            ("SELECT count(*) FROM orders", None),
        ];
        for (input, want) in cases {
            let got = sql_literals(input.as_bytes()).map(|v| String::from_utf8(v).unwrap());
            assert_eq!(got.as_deref(), *want, "{input}");
        }
    }

    #[test]
    fn emails_and_card_numbers_are_masked_and_look_alikes_are_not() {
        let s = Scrub {
            sql: false,
            email: true,
            card: true,
            custom: None,
            mask: b"[REDACTED]".to_vec().into(),
        };
        let cases: &[(&str, Option<&str>)] = &[
            (
                "mail jane.doe+x@example.co.uk now",
                Some("mail [REDACTED] now"),
            ),
            ("card 4111 1111 1111 1111 ok", Some("card [REDACTED] ok")),
            ("card 4111-1111-1111-1111", Some("card [REDACTED]")),
            ("order 4111111111111112", None), // fails Luhn
            ("ts 1700000000000000000", None),
            ("nothing here", None),
        ];
        for (input, want) in cases {
            let got = s
                .apply(input.as_bytes())
                .map(|v| String::from_utf8(v).unwrap());
            assert_eq!(got.as_deref(), *want, "{input}");
        }
    }
}
