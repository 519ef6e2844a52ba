//! The keyed hashes of `action: hash`, remembered per thread: an id repeats across the spans
//! of a trace and the traces of a user, and an HMAC-SHA256 costs some 7 000 instructions
//! without the CPU's SHA extensions (as under valgrind).
//!
//! A direct-mapped table: a value has one slot, chosen by its hash, and a newer value for the
//! same slot takes it over. Nothing is allocated per value: with a hash map of boxed values,
//! most ids being new to it (a customer id per trace), inserting and clearing cost more than
//! looking up (BENCHMARKS.md, "Redaction").

use std::cell::RefCell;
use std::hash::BuildHasher;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Slots per thread (about 120 KiB).
const SLOTS: usize = 1024;

/// Values longer than this are hashed every time (ids are short).
const VALUE_BYTES: usize = 48;

#[derive(Clone, Copy)]
struct Slot {
    /// The redaction (so the hash key) the hash was made under; 0: empty (generations
    /// start at 1). Kept per slot, so that two redactions in use on one thread (around a
    /// reload) do not wipe each other's.
    generation: u64,
    len: u8,
    value: [u8; VALUE_BYTES],
    hex: [u8; 64],
}

const EMPTY: Slot = Slot {
    generation: 0,
    len: 0,
    value: [0; VALUE_BYTES],
    hex: [0; 64],
};

thread_local! {
    /// Allocated on the first hash of the thread.
    static TABLE: RefCell<Option<Box<[Slot]>>> = const { RefCell::new(None) };
}

fn compute(keyed: &Hmac<Sha256>, value: &[u8]) -> [u8; 64] {
    let mut h = keyed.clone();
    h.update(value);
    let mut hex = [0u8; 64];
    // 32 bytes always fit 64 hex digits.
    let _ = hex::encode_to_slice(h.finalize().into_bytes(), &mut hex);
    hex
}

/// The hex HMAC-SHA256 of `value` under `keyed`, remembered for `generation`'s redaction.
pub(super) fn memo_hash(generation: u64, keyed: &Hmac<Sha256>, value: &[u8]) -> [u8; 64] {
    if value.len() > VALUE_BYTES {
        return compute(keyed, value);
    }
    let remembered = TABLE.try_with(|t| {
        let Ok(mut t) = t.try_borrow_mut() else {
            return compute(keyed, value);
        };
        let slots = t.get_or_insert_with(|| vec![EMPTY; SLOTS].into_boxed_slice());
        let i = foldhash::fast::FixedState::default().hash_one(value) as usize % SLOTS;
        let slot = &mut slots[i];
        if slot.generation == generation
            && usize::from(slot.len) == value.len()
            && slot.value[..value.len()] == *value
        {
            return slot.hex;
        }
        let hex = compute(keyed, value);
        *slot = Slot {
            generation,
            // At most VALUE_BYTES (48).
            len: value.len() as u8,
            value: [0; VALUE_BYTES],
            hex,
        };
        slot.value[..value.len()].copy_from_slice(value);
        hex
    });
    remembered.unwrap_or_else(|_| compute(keyed, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyed(key: &[u8]) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(key).expect("any key length")
    }

    /// Remembered or not, colliding or not, long or empty: always the HMAC of the value asked
    /// for, under the key of the generation asked for.
    #[test]
    fn remembered_hashes_are_always_those_of_the_value_and_key_asked_for() {
        let (a, b) = (keyed(b"key-a-0123456789"), keyed(b"key-b-0123456789"));
        let long = "x".repeat(VALUE_BYTES + 1);
        let mut values: Vec<String> = (0..3 * SLOTS).map(|i| format!("cust-{i}")).collect();
        values.extend(["".to_string(), long.clone(), long + "y"]);
        for round in 0..2 {
            for v in &values {
                let v = v.as_bytes();
                assert_eq!(memo_hash(7_001, &a, v), compute(&a, v), "round {round}");
                // Another generation (another key) on the same thread: its own hashes.
                assert_eq!(memo_hash(7_002, &b, v), compute(&b, v), "round {round}");
            }
        }
        // A value and its prefix (same slot or not) are told apart.
        assert_eq!(memo_hash(7_003, &a, b"ab"), compute(&a, b"ab"));
        assert_eq!(memo_hash(7_003, &a, b"a"), compute(&a, b"a"));
        assert_eq!(memo_hash(7_003, &a, b"ab"), compute(&a, b"ab"));
    }
}
