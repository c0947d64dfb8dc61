//! Fuzz input decoding: `arbitrary::Unstructured` reads the bytes.
//!
//! Integers are `Unstructured`'s own (little-endian, zeros past the end of the
//! input), `bool` its low bit; a number below `n` is one byte (two, four for larger
//! `n`) modulo `n`. That keeps the byte meaning the harness had before it used
//! `arbitrary`, so the kept seeds (`fuzz/corpus/*/seed-*`) and crashers
//! (`tests/fuzz_regressions.rs`) still decode to the cases they were kept for.

use arbitrary::{Arbitrary, Unstructured};

use crate::shm::XorShift;

/// The fuzz input, read front to back; past its end every read returns zeros,
/// so any input decodes to something.
pub struct Input<'a> {
    u: Unstructured<'a>,
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Input<'a> {
        Input { u: Unstructured::new(data) }
    }

    pub fn is_empty(&self) -> bool {
        self.u.is_empty()
    }

    /// `T::arbitrary`: `Unstructured` never fails on a short input for the
    /// integers and `bool` read here (it pads with zeros).
    fn get<T: Arbitrary<'a> + Default>(&mut self) -> T {
        T::arbitrary(&mut self.u).unwrap_or_default()
    }

    pub fn u8(&mut self) -> u8 {
        self.get()
    }

    pub fn bool(&mut self) -> bool {
        self.get()
    }

    pub fn u16(&mut self) -> u16 {
        self.get()
    }

    pub fn u32(&mut self) -> u32 {
        self.get()
    }

    pub fn u64(&mut self) -> u64 {
        self.get()
    }

    /// A number below `n` (0 when `n` is 0 or 1).
    pub fn below(&mut self, n: usize) -> usize {
        match n {
            0 | 1 => 0,
            2..=256 => self.u8() as usize % n,
            257..=65536 => self.u16() as usize % n,
            _ => self.u32() as usize % n,
        }
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        self.u.bytes(n.min(self.u.len())).unwrap_or_default()
    }
}

/// An `f64` bit pattern: anything, or a value that matters to the formatter.
pub fn gen_f64(inp: &mut Input) -> f64 {
    const SPECIAL: [f64; 16] = [
        0.0,
        -0.0,
        1.0,
        -1.0,
        0.5,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        9_007_199_254_740_992.0,
        9_007_199_254_740_991.0,
        1e21,
        5e-324,
        f64::MAX,
        f64::MIN_POSITIVE,
        1e-5,
        123456.5,
    ];
    match inp.u8() % 4 {
        0 => f64::from_bits(inp.u64()),
        1 => SPECIAL[inp.below(SPECIAL.len())],
        2 => inp.u8() as f64,
        _ => inp.u16() as i16 as f64 / 64.0,
    }
}

/// Chunk size hints: tiny, odd, typical and huge ones, from a seed.
pub struct Hints(XorShift);

impl Hints {
    pub fn new(seed: u32) -> Hints {
        Hints(XorShift(seed as u64 | 1 << 40))
    }

    #[allow(clippy::should_implement_trait)] // an endless generator, not an Iterator
    pub fn next(&mut self) -> usize {
        let x = self.0.next();
        match x % 8 {
            0 => 1,
            1 => 2 + (x >> 8) as usize % 16,
            2 => 64,
            3 => 256 * 1024,
            4 => 1 << 30,
            _ => 1 + (x >> 8) as usize % 3000,
        }
    }
}
