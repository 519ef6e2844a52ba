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
        if self.email && v.contains(&b'@') {
            if let Cow::Owned(o) = EMAIL.replace_all(&v, &*self.mask) {
                v = Cow::Owned(o);
                changed = true;
            }
        }
        if self.card && count_digits(&v) >= 13 {
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

/// How many bytes of `v` are ASCII digits. In blocks of 16 with a fixed-size body, which the
/// compiler turns into vector code: counted byte by byte, this was a fifth of the scrub's cost
/// on values that hold no card number (BENCHMARKS.md, "Redaction").
fn count_digits(v: &[u8]) -> usize {
    let mut blocks = v.chunks_exact(16);
    let mut n = 0;
    for b in &mut blocks {
        let in_block = b
            .iter()
            .fold(0u8, |a, &x| a + u8::from(x.wrapping_sub(b'0') < 10));
        n += usize::from(in_block);
    }
    n + blocks
        .remainder()
        .iter()
        .filter(|x| x.is_ascii_digit())
        .count()
}

/// Whether `s` may hold a SQL literal; `false` proves it holds none, so that the scanner
/// need not run: it has no `'`, and an identifier byte (a letter, digit, `_`, `$` or
/// non-ASCII) comes right before each of its digits. Why that proves it: reading left to
/// right, the first digit follows such a byte, which starts or continues an identifier (or
/// sits in a quoted one), and a digit continues it; no string has begun (no quote), and no
/// number has (a number begins at a digit that starts a token, and this one does not); each
/// later digit likewise. Statements with bind parameters (`WHERE sku = $1`) are the common
/// case, and checked in blocks of 16 byte pairs that the compiler turns into vector code,
/// this costs a fraction of the scan (BENCHMARKS.md, "Redaction").
fn may_hold_literal(s: &[u8]) -> bool {
    let starts =
        |prev: u8, x: u8| x == b'\'' || (x.wrapping_sub(b'0') < 10 && !ident_continue(prev));
    let Some(&first) = s.first() else {
        return false;
    };
    // Nothing before the first byte: a digit there starts a number.
    if first == b'\'' || first.is_ascii_digit() {
        return true;
    }
    let (prev, cur) = (&s[..s.len() - 1], &s[1..]);
    let mut i = 0;
    while i + 16 <= cur.len() {
        let pairs = prev[i..i + 16].iter().zip(&cur[i..i + 16]);
        if pairs.fold(false, |a, (&p, &x)| a | starts(p, x)) {
            return true;
        }
        i += 16;
    }
    prev[i..].iter().zip(&cur[i..]).any(|(&p, &x)| starts(p, x))
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

const fn ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b == b'$' || b == b'@' || b == b':' || b >= 0x80
}

const fn ident_continue(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// [`ident_continue`] of every byte, looked up: the SQL scanner spends most of its time
/// stepping through identifiers, and a table costs one load per byte where the test costs
/// half a dozen comparisons.
static IDENT_CONTINUE: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = ident_continue(b as u8);
        b += 1;
    }
    t
};

/// A SQL statement with its literals replaced by `?`: single-quoted strings (`''` and
/// backslash escapes inside) and numbers (`42`, `3.14`, `1e5`, `0x1F`). Identifiers keep
/// their digits (`table1`, `$1`, `:p1`), double-quoted names are identifiers (ANSI SQL) and are
/// kept. `None` when there is no literal. A scanner, not a regex: one pass, and identifiers are
/// told from numbers by what precedes them, which the regex crate cannot look behind for.
/// Nothing is copied until the first literal, and then only the runs between literals: most
/// statements of a service with bind parameters (`$1`) have none, and copying them token by
/// token was most of the scrub's cost (BENCHMARKS.md, "Redaction").
pub fn sql_literals(s: &[u8]) -> Option<Vec<u8>> {
    if !may_hold_literal(s) {
        return None;
    }
    let mut out: Option<Vec<u8>> = None;
    // `s[..copied]` is in `out`, literals replaced.
    let mut copied = 0;
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        let literal_end = if c == b'\'' {
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
            Some(j.min(s.len()))
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
            Some(j)
        } else {
            None
        };
        if let Some(end) = literal_end {
            let o = out.get_or_insert_with(|| Vec::with_capacity(s.len()));
            o.extend_from_slice(&s[copied..i]);
            o.push(b'?');
            copied = end;
            i = end;
        } else if c == b'"' || c == b'`' {
            // A quoted identifier: kept whole.
            i = s[i + 1..]
                .iter()
                .position(|b| *b == c)
                .map_or(s.len(), |p| i + 1 + p + 1);
        } else if ident_start(c) {
            i += 1;
            while i < s.len() && IDENT_CONTINUE[usize::from(s[i])] {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    let mut out = out?;
    out.extend_from_slice(&s[copied..]);
    Some(out)
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

    /// The scanner as it was before it copied lazily (token by token into a new buffer):
    /// what the faster one must still agree with.
    fn sql_literals_reference(s: &[u8]) -> Option<Vec<u8>> {
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

    proptest::proptest! {
        /// Statements made of the bytes that steer the scanner (quotes, escapes, digits,
        /// exponents, identifier marks, non-ASCII) and a few others, of any length across the
        /// 16-byte blocks of the pre-checks.
        #[test]
        fn sql_scanner_agrees_with_the_token_by_token_one(
            s in proptest::collection::vec(
                proptest::sample::select(b"'\\\"`0159eE+-.x$@:_ aZ(,=\xc3\xa9".to_vec()),
                0..80,
            )
        ) {
            let want = sql_literals_reference(&s);
            if !may_hold_literal(&s) {
                proptest::prop_assert_eq!(&want, &None, "the pre-check must not skip a literal");
            }
            proptest::prop_assert_eq!(sql_literals(&s), want);
        }

        #[test]
        fn digit_count_agrees_with_a_byte_by_byte_one(
            s in proptest::collection::vec(proptest::num::u8::ANY, 0..70)
        ) {
            proptest::prop_assert_eq!(
                count_digits(&s),
                s.iter().filter(|b| b.is_ascii_digit()).count()
            );
        }
    }

    #[test]
    fn statements_with_bind_parameters_are_not_scanned_and_literals_are() {
        let cases: &[(&str, bool)] = &[
            ("SELECT sku FROM inventory WHERE sku = $1", false),
            ("UPDATE t2 SET a = :p1 WHERE b = @p2", false),
            // `:1` is a parameter, not a literal, but `:` only starts identifiers: scanned.
            ("SELECT x FROM t WHERE y = :1", true),
            ("SELECT a1, b_2, \"c3\" FROM t", false),
            ("SELECT 1", true),
            ("1", true),
            ("SELECT x FROM t WHERE y = 'z'", true),
            ("SELECT x FROM t WHERE y=-2", true),
            ("SELECT x FROM t LIMIT 10", true),
            ("", false),
        ];
        for (input, may) in cases {
            assert_eq!(may_hold_literal(input.as_bytes()), *may, "{input}");
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
