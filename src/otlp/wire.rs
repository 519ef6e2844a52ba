//! Protobuf wire format: just enough to walk OTLP messages without decoding them.
//!
//! A hand-written reader is the one place we do not lean on prost: the hot path needs to find
//! fields inside a span *and keep the span's bytes as they arrived*, which a generated decoder
//! cannot do without copying every field into owned structs. Every read is bounds-checked and
//! returns an error instead of panicking, whatever the input.

use thiserror::Error;

/// Why a buffer is not valid protobuf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum WireError {
    /// The buffer ends inside a field (a tag, a varint, or a length past the end).
    #[error("truncated message")]
    Truncated,
    /// A varint that has not ended after 10 bytes, more than any `u64` needs.
    #[error("varint longer than 10 bytes")]
    VarintOverflow,
    /// A wire type other than varint (0), 64-bit (1), length-delimited (2) and 32-bit (5):
    /// groups (3, 4), deprecated and absent from OTLP, or no wire type at all (6, 7).
    #[error("unsupported wire type {0}")]
    WireType(u8),
    /// A field number of 0, which protobuf reserves; also a number that does not fit a `u32`.
    #[error("field number 0")]
    FieldZero,
}

/// The payload of one field.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    /// Wire type 0: ints, enums and bools, still zigzag-encoded for `sint` fields.
    Varint(u64),
    /// Wire type 1, eight bytes: `fixed64`, `sfixed64`, and a `double`'s bits.
    Fixed64(u64),
    /// Wire type 5, four bytes: `fixed32`, `sfixed32`, and a `float`'s bits.
    Fixed32(u32),
    /// Wire type 2, the payload without its length: strings, bytes, sub-messages and packed
    /// repeated fields alike.
    Bytes(&'a [u8]),
}

impl<'a> Value<'a> {
    /// The payload of a length-delimited field; `None` for the numeric wire types.
    pub fn as_bytes(self) -> Option<&'a [u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }
    /// A numeric field's raw value, widened to `u64` and not reinterpreted (no sign, zigzag or
    /// float: the caller knows the field's type); `None` for a length-delimited field.
    pub fn as_u64(self) -> Option<u64> {
        match self {
            Value::Varint(v) | Value::Fixed64(v) => Some(v),
            Value::Fixed32(v) => Some(u64::from(v)),
            Value::Bytes(_) => None,
        }
    }
}

/// One field as read: its number, its value, and the raw bytes (tag included) it spans.
#[derive(Debug, Clone, Copy)]
pub struct Field<'a> {
    /// The field number, never 0.
    pub number: u32,
    /// The payload, decoded only as far as its wire type goes.
    pub value: Value<'a>,
    /// The whole field as it arrived, tag (and length) included: append it to copy the field
    /// unchanged.
    pub raw: &'a [u8],
}

/// Iterator over the top-level fields of one message.
#[derive(Debug, Clone)]
pub struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
    failed: bool,
}

impl<'a> Fields<'a> {
    /// Walks the fields of the message `buf`. On malformed input the iterator yields one
    /// error and then ends.
    pub fn new(buf: &'a [u8]) -> Self {
        Fields {
            buf,
            pos: 0,
            failed: false,
        }
    }

    /// Reads a varint. Tags and lengths almost always fit one byte, and most of the rest two
    /// (a span's own length, an HTTP status code): those cases are inlined, the general one
    /// is not, which keeps walking a span's fields cheap. (The two-byte case took 3.6 % of
    /// the core path's instructions through the general one: callgrind, `benches/allocs.rs`.)
    #[inline(always)]
    fn read_varint(&mut self) -> Result<u64, WireError> {
        match self.buf.get(self.pos) {
            Some(&b) if b < 0x80 => {
                self.pos += 1;
                Ok(u64::from(b))
            }
            Some(&b) => match self.buf.get(self.pos + 1) {
                Some(&c) if c < 0x80 => {
                    self.pos += 2;
                    Ok(u64::from(b & 0x7f) | u64::from(c) << 7)
                }
                _ => self.read_varint_slow(),
            },
            None => Err(WireError::Truncated),
        }
    }

    #[inline(never)]
    fn read_varint_slow(&mut self) -> Result<u64, WireError> {
        let mut value = 0u64;
        for i in 0..10 {
            let byte = *self.buf.get(self.pos).ok_or(WireError::Truncated)?;
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(WireError::VarintOverflow)
    }

    #[inline(always)]
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::Truncated)?;
        let out = self.buf.get(self.pos..end).ok_or(WireError::Truncated)?;
        self.pos = end;
        Ok(out)
    }

    #[inline(always)]
    fn next_field(&mut self) -> Result<Field<'a>, WireError> {
        let start = self.pos;
        let key = self.read_varint()?;
        let number = u32::try_from(key >> 3).map_err(|_| WireError::FieldZero)?;
        if number == 0 {
            return Err(WireError::FieldZero);
        }
        let value = match (key & 7) as u8 {
            0 => Value::Varint(self.read_varint()?),
            1 => {
                let b = self.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                Value::Fixed64(u64::from_le_bytes(a))
            }
            2 => {
                let len = self.read_varint()?;
                let len = usize::try_from(len).map_err(|_| WireError::Truncated)?;
                Value::Bytes(self.take(len)?)
            }
            5 => {
                let b = self.take(4)?;
                let mut a = [0u8; 4];
                a.copy_from_slice(b);
                Value::Fixed32(u32::from_le_bytes(a))
            }
            other => return Err(WireError::WireType(other)),
        };
        Ok(Field {
            number,
            value,
            raw: &self.buf[start..self.pos],
        })
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<Field<'a>, WireError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        let r = self.next_field();
        if r.is_err() {
            self.failed = true;
        }
        Some(r)
    }
}

/// Splits off the front of `buf` a length-delimited field with the one-byte `tag` (a field
/// numbered 1 to 15, wire type 2) and a length
/// of one or two bytes: (its payload, what follows). `None` for anything else (another field,
/// a longer length, a length past the end), for the general walk to read. The short path for
/// the fields a span repeats most (attributes): the general walk's decoding of the tag into
/// number and wire type costs more than the rest of reading them.
#[inline(always)]
pub fn split_short_field(buf: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (len, body) = match buf {
        [t, l, body @ ..] if *t == tag && *l < 0x80 => (usize::from(*l), body),
        [t, l0, l1, body @ ..] if *t == tag && *l1 < 0x80 => {
            (usize::from(*l0 & 0x7f) | (usize::from(*l1) << 7), body)
        }
        _ => return None,
    };
    (body.len() >= len).then(|| body.split_at(len))
}

/// Appends a varint.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Encoded size of a varint.
pub fn varint_len(v: u64) -> usize {
    // Each byte carries 7 bits; zero still takes one byte.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Appends the key of a length-delimited field and its length.
pub fn put_len_prefix(out: &mut Vec<u8>, field: u32, len: usize) {
    put_varint(out, (u64::from(field) << 3) | 2);
    put_varint(out, len as u64);
}

/// Size of a length-delimited field with `len` payload bytes, key included.
pub fn len_field_size(field: u32, len: usize) -> usize {
    varint_len((u64::from(field) << 3) | 2) + varint_len(len as u64) + len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_roundtrip_and_len() {
        for v in [
            0u64,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u32::MAX as u64,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "len of {v}");
            // Wrap as a varint field 1 and read it back.
            let mut msg = vec![0x08];
            msg.extend_from_slice(&out);
            let f = Fields::new(&msg).next().unwrap().unwrap();
            assert_eq!(f.value, Value::Varint(v));
        }
    }

    #[test]
    fn truncated_and_garbage_input_errors_without_panic() {
        let cases: &[&[u8]] = &[
            &[0x0a, 0x05, 1, 2], // length past the end
            &[0x08],             // varint missing
            &[0x0b],             // wire type 3 (groups) unsupported
            &[0x00, 0x01],       // field 0
            &[0x09, 1, 2, 3],    // fixed64 truncated
            &[
                0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
            ], // huge len
            &[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
        ];
        for case in cases {
            let results: Vec<_> = Fields::new(case).collect();
            assert!(
                results.last().is_some_and(|r| r.is_err()),
                "{case:?} should fail"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn a_short_field_splits_as_the_general_walk_reads_it(
            buf in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            len in 0usize..400,
            number in 1u8..16,
        ) {
            let tag = (number << 3) | 2;
            let mut framed = vec![tag];
            put_varint(&mut framed, len as u64);
            framed.extend_from_slice(&buf);
            for b in [&buf[..], &framed[..]] {
                if let Some((payload, rest)) = split_short_field(b, tag) {
                    let f = Fields::new(b).next().expect("a field").expect("valid");
                    proptest::prop_assert_eq!(u64::from(tag), (u64::from(f.number) << 3) | 2);
                    proptest::prop_assert_eq!(f.value, Value::Bytes(payload));
                    proptest::prop_assert_eq!(&b[f.raw.len()..], rest);
                }
            }
            // Framed with a length that fits what follows: always taken.
            if len <= buf.len() {
                proptest::prop_assert!(split_short_field(&framed, tag).is_some());
            }
        }
    }

    #[test]
    fn raw_covers_tag_and_payload() {
        let msg = [0x0a, 0x02, b'h', b'i', 0x10, 0x07];
        let fields: Vec<_> = Fields::new(&msg).map(|f| f.unwrap()).collect();
        assert_eq!(fields[0].raw, &msg[..4]);
        assert_eq!(fields[0].value.as_bytes(), Some(&b"hi"[..]));
        assert_eq!(fields[1].raw, &msg[4..]);
        assert_eq!(fields[1].value.as_u64(), Some(7));
    }
}
