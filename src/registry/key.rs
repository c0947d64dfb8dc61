//! Label keys, written once: a series' label values are stored in the arena
//! as one key, per value a `u32` little-endian length and then the bytes
//! (layout.md has the byte table). The hash of a series is over the family
//! id and the same length-prefixed values.

use crate::hash::Hasher;
use crate::layout::{MAX_LABELS, OVERFLOW_VALUE};

/// The key of `values`.
pub(crate) fn encode(values: &[&[u8]]) -> Vec<u8> {
    let mut key = Vec::with_capacity(encoded_len(values) as usize);
    for v in values {
        key.extend_from_slice(&(v.len() as u32).to_le_bytes());
        key.extend_from_slice(v);
    }
    key
}

/// Bytes of the key of `values`.
pub(crate) fn encoded_len(values: &[&[u8]]) -> u64 {
    values.iter().map(|v| v.len() as u64 + 4).sum()
}

/// The first value of a non-empty key and the rest of the key; `None` when
/// the key is malformed (a length past its end).
fn split(key: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_le_bytes(key.get(..4)?.try_into().ok()?) as usize;
    let rest = &key[4..];
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// Splits a key into its values, appended to `out`. Returns false for a
/// malformed key (or one of more than [`MAX_LABELS`] values).
pub fn decode_key<'a>(mut key: &'a [u8], out: &mut Vec<&'a [u8]>) -> bool {
    while !key.is_empty() {
        if out.len() >= MAX_LABELS {
            return false;
        }
        let Some((v, rest)) = split(key) else { return false };
        out.push(v);
        key = rest;
    }
    true
}

/// Whether `key` is exactly the key of `values`.
pub(crate) fn is(mut key: &[u8], values: &[&[u8]]) -> bool {
    for v in values {
        match split(key) {
            Some((have, rest)) if have == *v => key = rest,
            _ => return false,
        }
    }
    key.is_empty()
}

/// Whether `key` is the overflow series' key of a family of `nlabels` labels
/// (every value [`OVERFLOW_VALUE`]); never for a family without labels.
pub(crate) fn is_overflow(mut key: &[u8], nlabels: u32) -> bool {
    if nlabels == 0 {
        return false;
    }
    for _ in 0..nlabels {
        match split(key) {
            Some((v, rest)) if v == OVERFLOW_VALUE => key = rest,
            _ => return false,
        }
    }
    key.is_empty()
}

/// Whether `values` are the overflow series' (every value [`OVERFLOW_VALUE`]).
pub(crate) fn values_are_overflow(values: &[&[u8]]) -> bool {
    !values.is_empty() && values.iter().all(|v| *v == OVERFLOW_VALUE)
}

/// The hash of series `fam{values}` under the region's seed.
pub(crate) fn hash(seed: u64, fam: u32, values: &[&[u8]]) -> u32 {
    let mut hs = Hasher::new(seed);
    hs.write_u32(fam);
    for v in values {
        hs.write_u32(v.len() as u32);
        hs.write(v);
    }
    hs.finish() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_key_accepts_well_formed_keys_only() {
        let mut out = Vec::new();
        assert!(decode_key(b"", &mut out) && out.is_empty());
        assert!(decode_key(b"\x01\0\0\0a\x00\0\0\0", &mut out));
        assert_eq!(out, [&b"a"[..], b""]);
        for bad in [&b"\x01\0\0"[..], b"\x02\0\0\0a", b"\xff\xff\xff\xffabc"] {
            out.clear();
            assert!(!decode_key(bad, &mut out), "{bad:?}");
        }
        let eleven: Vec<u8> = (0..11).flat_map(|_| [0u8, 0, 0, 0]).collect();
        out.clear();
        assert!(!decode_key(&eleven, &mut out), "more than MAX_LABELS values");
    }

    #[test]
    fn encode_is_and_overflow_agree_with_decode() {
        let values: [&[u8]; 3] = [b"GET", b"", b"200"];
        let key = encode(&values);
        assert_eq!(key.len() as u64, encoded_len(&values));
        let mut out = Vec::new();
        assert!(decode_key(&key, &mut out));
        assert_eq!(out, values);
        assert!(is(&key, &values));
        assert!(!is(&key, &values[..2]));
        assert!(!is(&key[..key.len() - 1], &values));
        let over = encode(&[OVERFLOW_VALUE, OVERFLOW_VALUE]);
        assert!(is_overflow(&over, 2) && !is_overflow(&over, 1) && !is_overflow(&over, 3));
        assert!(!is_overflow(&key, 3) && !is_overflow(b"", 0));
        assert!(values_are_overflow(&[OVERFLOW_VALUE]) && !values_are_overflow(&[]));
    }
}
