//! Reading what redaction walks: a message's fields, an attribute's key and value, a value's
//! text. Each has a shortcut for the layout every SDK writes (one-byte tags and lengths) and
//! falls back to [`Fields`], the general walk, for anything else, with the same answer or the
//! same error.

use super::rewrite::Unparsable;
use crate::otlp::wire::{Fields, Value, WireError};

/// The fields of a message, as [`Fields`] gives them, read by [`quick_field`] where it
/// can: each field's number, its payload if length-delimited, and where it lies in the
/// message. After an error, nothing more.
pub(super) struct Walk<'a> {
    msg: &'a [u8],
    at: usize,
}

impl<'a> Walk<'a> {
    pub(super) fn new(msg: &'a [u8]) -> Self {
        Walk { msg, at: 0 }
    }
}

pub(super) type Walked<'a> = (u32, Option<&'a [u8]>, std::ops::Range<usize>);

impl<'a> Iterator for Walk<'a> {
    type Item = Result<Walked<'a>, WireError>;

    #[inline(always)]
    fn next(&mut self) -> Option<Self::Item> {
        let start = self.at;
        if start >= self.msg.len() {
            return None;
        }
        if let Some((number, bytes, end)) = quick_field(self.msg, start) {
            self.at = end;
            return Some(Ok((number, bytes, start..end)));
        }
        // The general walk, for this one field: the same field, or the error.
        match Fields::new(&self.msg[start..]).next()? {
            Ok(f) => {
                self.at = start + f.raw.len();
                Some(Ok((f.number, f.value.as_bytes(), start..self.at)))
            }
            Err(e) => {
                self.at = self.msg.len();
                Some(Err(e))
            }
        }
    }
}

/// The field at `msg[at..]` when its tag and any length or varint take one byte each and it
/// fits (as nearly every field of a span does): its number, its payload if length-delimited,
/// and where it ends; `None` for anything else, which the caller reads with [`Fields`].
/// Where this answers, `Fields` gives the same field: it is the walk's common case without the
/// general one's bookkeeping, which was a third of walking a span (BENCHMARKS.md,
/// "Redaction").
#[inline(always)]
pub(super) fn quick_field(msg: &[u8], at: usize) -> Option<(u32, Option<&[u8]>, usize)> {
    let tag = *msg.get(at)?;
    // One byte, and a field number other than 0 (an error: left to `Fields`).
    if !(0x08..0x80).contains(&tag) {
        return None;
    }
    let number = u32::from(tag >> 3);
    match tag & 7 {
        2 => {
            let len = *msg.get(at + 1)?;
            if len >= 0x80 {
                return None;
            }
            let end = at + 2 + usize::from(len);
            Some((number, Some(msg.get(at + 2..end)?), end))
        }
        0 if *msg.get(at + 1)? < 0x80 => Some((number, None, at + 2)),
        1 if at + 9 <= msg.len() => Some((number, None, at + 9)),
        5 if at + 5 <= msg.len() => Some((number, None, at + 5)),
        _ => None,
    }
}

/// An attribute as found: its key field's raw bytes, its key, its `AnyValue` payload.
pub(super) struct Attr<'a> {
    pub(super) key_raw: &'a [u8],
    pub(super) key: &'a [u8],
    pub(super) value: &'a [u8],
}

/// An attribute's key and value. The layout every SDK writes — the key (under 128 bytes),
/// then the value (under 128 bytes), nothing else — is read without the general walk: most
/// attributes of most spans are only looked at for their key.
#[inline(always)]
pub(super) fn attr(kv: &[u8]) -> Result<Attr<'_>, Unparsable> {
    if let [0x0a, klen, rest @ ..] = kv {
        let klen = usize::from(*klen);
        if let Some((key, tail)) = rest.split_at_checked(klen).filter(|_| klen < 0x80) {
            let value = match tail {
                [] => Some(&[][..]),
                [0x12, vlen, value @ ..] if *vlen < 0x80 && usize::from(*vlen) == value.len() => {
                    Some(value)
                }
                _ => None,
            };
            if let Some(value) = value {
                return Ok(Attr {
                    key_raw: &kv[..2 + klen],
                    key,
                    value,
                });
            }
        }
    }
    attr_walked(kv)
}

fn attr_walked(kv: &[u8]) -> Result<Attr<'_>, Unparsable> {
    let mut a = Attr {
        key_raw: &[],
        key: &[],
        value: &[],
    };
    for f in Fields::new(kv) {
        let f = f.map_err(|source| Unparsable::Wire {
            what: "attribute",
            source,
        })?;
        match (f.number, f.value) {
            (1, Value::Bytes(k)) => {
                a.key_raw = f.raw;
                a.key = k;
            }
            (2, Value::Bytes(v)) => a.value = v,
            (1 | 2, _) => return Err(Unparsable::NotMessage("an attribute's key or value")),
            _ => {}
        }
    }
    Ok(a)
}

/// An `AnyValue`'s text for hashing and scrubbing: a string as it is, numbers and booleans as
/// they print, bytes, arrays and maps as their encoded bytes. `None` for a string-only use.
pub(super) enum Text<'a> {
    Str(&'a [u8]),
    Other(Vec<u8>),
}

pub(super) fn value_text(any: &[u8]) -> Result<Text<'_>, Unparsable> {
    // A string value alone, its length in one byte: as every SDK writes it, and read so
    // without the general walk (the same answer as the walk below).
    if let [0x0a, len, s @ ..] = any {
        if *len < 0x80 && usize::from(*len) == s.len() {
            return Ok(Text::Str(s));
        }
    }
    let mut text = Text::Other(Vec::new());
    for f in Fields::new(any) {
        let f = f.map_err(|source| Unparsable::Wire {
            what: "attribute value",
            source,
        })?;
        text = match (f.number, f.value) {
            (1, Value::Bytes(s)) => Text::Str(s),
            (2, Value::Varint(b)) => Text::Other(if b != 0 {
                b"true".to_vec()
            } else {
                b"false".to_vec()
            }),
            (3, Value::Varint(i)) => Text::Other((i as i64).to_string().into_bytes()),
            (4, Value::Fixed64(d)) => Text::Other(f64::from_bits(d).to_string().into_bytes()),
            (5..=7, Value::Bytes(b)) => Text::Other(b.to_vec()),
            (1..=7, _) => return Err(Unparsable::NotMessage("an attribute value")),
            _ => text,
        };
    }
    Ok(text)
}
