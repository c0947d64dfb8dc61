//! The keyed hash behind the shared indexes.
//!
//! It is part of the layout: index positions computed by one build are probed by
//! another, so the function is written out here rather than borrowed from `std`
//! (whose `DefaultHasher` may change between Rust releases). The seed is random
//! per region, so label values chosen by clients cannot aim at one probe chain.

const K: u64 = 0x9E37_79B9_7F4A_7C15;

#[inline]
fn mix(a: u64, b: u64) -> u64 {
    let r = (a as u128).wrapping_mul(b as u128);
    (r as u64) ^ ((r >> 64) as u64)
}

/// A streaming 64-bit hash: 8 bytes per multiply, a final avalanche.
#[derive(Clone, Copy)]
pub struct Hasher {
    h: u64,
    len: u64,
}

impl Hasher {
    pub fn new(seed: u64) -> Hasher {
        Hasher { h: seed ^ K, len: 0 }
    }

    pub fn write_u32(&mut self, v: u32) {
        self.h = mix(self.h ^ v as u64, K);
        self.len += 4;
    }

    pub fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            self.h = mix(self.h ^ w, K);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut buf = [0u8; 8];
            buf[..rest.len()].copy_from_slice(rest);
            self.h = mix(self.h ^ u64::from_le_bytes(buf) ^ ((rest.len() as u64) << 59), K);
        }
        self.len += bytes.len() as u64;
    }

    pub fn finish(&self) -> u64 {
        let mut x = self.h ^ self.len.rotate_left(32);
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^ (x >> 33)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(seed: u64, b: &[u8]) -> u64 {
        let mut s = Hasher::new(seed);
        s.write(b);
        s.finish()
    }

    const PINNED: [u64; 4] = [11286133854226296554, 5791798053938231215, 13009164026362325696, 7159544244048549156];

    #[test]
    fn pinned_values() {
        // The hash is part of layout version 1: a change here moves where
        // existing regions' entries live, and needs a LAYOUT_MAJOR bump.
        let mut s = Hasher::new(7);
        s.write_u32(3);
        s.write(b"wechat");
        let got = [
            h(0, b""),
            h(0, b"gateway_requests_total"),
            h(0x1234_5678_9abc_def0, b"GET/v1/chat/completions"),
            s.finish(),
        ];
        assert_eq!(got, PINNED);
    }

    #[test]
    fn distinguishes() {
        assert_ne!(h(0, b"a"), h(1, b"a"));
        assert_ne!(h(0, b"a"), h(0, b"a\0"));
        assert_ne!(h(0, b"abcdefgh"), h(0, b"abcdefgh\0"));
    }

    #[test]
    fn spreads_low_bits() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..4096u32 {
            seen.insert(h(7, format!("ns{i}").as_bytes()) & 0xfff);
        }
        // 4096 keys into 4096 buckets: a uniform hash fills about 63 %.
        assert!(seen.len() > 2400, "only {} distinct low-12-bit values", seen.len());
    }
}
