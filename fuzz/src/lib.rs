//! Fuzz target bodies for shmetrics.
//!
//! [`render_target`] and [`attach_target`] are what `fuzz/fuzz_targets/*.rs` run
//! under libFuzzer. `tests/fuzz_regressions.rs` includes this same file with
//! `#[path]` and runs the bodies under plain `cargo test` (kept crashers, the seed
//! corpus and a few thousand deterministic pseudo-random inputs), so this file
//! must stay self-contained: one file, no child modules, no `crate::` paths, and
//! nothing but `shmetrics`, `libc` and `std`.
//!
//! Every input gets fresh region files (`/dev/shm/shmetrics-fuzz-*-<pid>-<n>`),
//! unlinked right after they are opened. The library never unmaps a region in
//! nginx (Lua holds raw pointers into it), so [`Mapped`] hands it back with
//! `region::forget` when the input is done: unmapped, and out of the list of
//! paths `open` searches (otherwise a fuzzing process would slow down as that
//! list grows, and run out of mappings after ~65,000 inputs).
#![allow(dead_code, clippy::too_many_arguments, clippy::type_complexity)]
// Suggestions that need a newer Rust than the crate's rust-version (1.81).
#![allow(unknown_lints, clippy::manual_is_multiple_of, clippy::unnecessary_map_or)]
#![allow(clippy::nonminimal_bool, clippy::should_implement_trait)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::c_char;
use std::path::{Path, PathBuf};
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use shmetrics::cells;
use shmetrics::expo::Format;
use shmetrics::ffi::*;
use shmetrics::layout::*;
use shmetrics::region::{self, Opened, Region};
use shmetrics::registry::{exposed_names, FamilyDef};
use shmetrics::scrape::{Filter, Render};

// ===========================================================================
// Input decoding

/// Reads the fuzz input front to back; past its end every read returns zeros,
/// so any input decodes to something.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Input<'a> {
        Input { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    fn le(&mut self, n: usize) -> u64 {
        (0..n).fold(0u64, |v, i| v | (self.u8() as u64) << (8 * i))
    }

    pub fn u16(&mut self) -> u16 {
        self.le(2) as u16
    }

    pub fn u32(&mut self) -> u32 {
        self.le(4) as u32
    }

    pub fn u64(&mut self) -> u64 {
        self.le(8)
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

    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.data.split_at(n.min(self.data.len()));
        self.data = b;
        a
    }

    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.data.len())
    }
}

/// A deterministic xorshift generator (chunk hints; the pseudo-random inputs of
/// `tests/fuzz_regressions.rs`).
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0.max(1);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// An `f64` bit pattern: anything, or a value that matters to the formatter.
fn gen_f64(inp: &mut Input) -> f64 {
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

// ===========================================================================
// Region files and the C ABI

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A region file path no other input (or process) uses. Numbers are padded:
/// every path (and every message naming it) has the same length in every
/// process, so the coverage of an input does not depend on its pid.
pub fn fresh_path(tag: &str) -> PathBuf {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    PathBuf::from(format!("/dev/shm/shmetrics-fuzz-{tag}-{:010}-{n:012}", std::process::id()))
}

fn unlink(path: &Path) {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_dir(path);
    let tmp = format!("{}.tmp.{}", path.display(), std::process::id());
    let _ = std::fs::remove_file(tmp);
}

/// A region used by one input: unmapped and forgotten by the library when dropped. If it can, it also maps an
/// inaccessible page right after the region, so that a read or write past the
/// end of the last slot's cells faults instead of landing in a neighbour.
pub struct Mapped {
    pub r: &'static Region,
    guard: *mut libc::c_void,
}

impl Mapped {
    /// # Safety
    /// `r` must come from opening a fresh path (nothing else maps it through the
    /// library) and must not be used after this value is dropped.
    pub unsafe fn new(r: &'static Region) -> Mapped {
        let base = r.header() as *const Header as usize;
        let end = base + (r.off.total as usize).div_ceil(4096) * 4096;
        let g = libc::mmap(
            end as *mut libc::c_void,
            4096,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        );
        let guard = if g == libc::MAP_FAILED {
            null_mut()
        } else if g as usize != end {
            libc::munmap(g, 4096);
            null_mut()
        } else {
            g
        };
        Mapped { r, guard }
    }

    pub fn has_guard(&self) -> bool {
        !self.guard.is_null()
    }

    fn base(&self) -> usize {
        self.r.header() as *const Header as usize
    }

    /// Whether `len` bytes at `p` lie inside the region file's mapping.
    fn inside(&self, p: usize, len: usize) -> bool {
        p >= self.base() && p + len <= self.base() + self.r.off.total as usize
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: see `new`: the mapping is ours alone and no longer used.
        unsafe {
            if !self.guard.is_null() {
                libc::munmap(self.guard, 4096);
            }
            region::forget(self.r);
        }
    }
}

/// Replaces the random hash seed of a region just created by a fixed one, so
/// that an input takes the same index positions, and so the same paths, in every
/// process: a crash replays, and `make test`'s fixed-seed fuzzing repeats itself.
///
/// # Safety
/// `r` must have been created by this process just now: nothing was hashed with
/// its seed yet, and no other process maps it.
pub unsafe fn fix_hash_seed(r: &'static Region) {
    let back = r.off.cells as usize - std::mem::offset_of!(Header, hash_seed);
    // SAFETY: the header's `hash_seed` field, reached from the raw pointer the
    // library hands out for slot 0's cells (same mapping); 8-aligned; nobody
    // reads it concurrently (caller contract).
    unsafe { (r.cells(0) as *mut u8).sub(back).cast::<u64>().write_volatile(0x5EED_5EED_5EED_5EED) };
}

/// An error from the Rust API or the C ABI: the code and the message.
pub type Fail = (i32, String);

fn rust_err(e: shmetrics::error::Error) -> Fail {
    (e.code(), e.message().to_string())
}

/// `shmetrics_last_error` of this thread.
pub fn last_error() -> String {
    // SAFETY: NULL with capacity 0 only asks for the length; then `buf` has `n` bytes.
    unsafe {
        let n = shmetrics_last_error(null_mut(), 0);
        let mut buf = vec![0u8; n];
        shmetrics_last_error(buf.as_mut_ptr().cast(), n);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

fn ffi_result(rc: i32) -> Result<u32, Fail> {
    if rc < 0 {
        Err((rc, last_error()))
    } else {
        Ok(rc as u32)
    }
}

/// The message the C ABI's panic guard records.
const PANIC_PREFIX: &str = "internal error (a bug in shmetrics)";

/// Fails the input if an error is a panic caught at the C ABI boundary.
fn no_panic<T>(what: &str, r: &Result<T, Fail>) {
    if let Err((code, msg)) = r {
        assert!(
            !(*code == SHMETRICS_E_INTERNAL && msg.starts_with(PANIC_PREFIX)),
            "{what}: a panic was caught at the C ABI: {msg}"
        );
    }
}

fn code_name(code: i32) -> &'static str {
    match code {
        SHMETRICS_E_INVALID => "E_INVALID",
        SHMETRICS_E_CONFLICT => "E_CONFLICT",
        SHMETRICS_E_LABEL_COUNT => "E_LABEL_COUNT",
        SHMETRICS_E_LABEL_TOO_LONG => "E_LABEL_TOO_LONG",
        SHMETRICS_E_FULL => "E_FULL",
        SHMETRICS_E_NO_SLOT => "E_NO_SLOT",
        SHMETRICS_E_IO => "E_IO",
        SHMETRICS_E_INTERNAL => "E_INTERNAL",
        _ => "unknown code",
    }
}

/// Opens `path`; the `SHMETRICS_OPEN_*` result.
pub fn open_region(path: &Path, p: Params, reset: bool, ffi: bool) -> Result<(&'static Region, i32), Fail> {
    if !ffi {
        return region::open(path, p, reset)
            .map(|(r, how)| {
                let code = match how {
                    Opened::Created => SHMETRICS_OPEN_CREATED,
                    Opened::Attached => SHMETRICS_OPEN_ATTACHED,
                    Opened::Recreated(_) => SHMETRICS_OPEN_RECREATED,
                    Opened::Reused => SHMETRICS_OPEN_REUSED,
                };
                (r, code)
            })
            .map_err(rust_err);
    }
    let o = shmetrics_options {
        max_series: p.max_series,
        max_families: p.max_families,
        max_slots: p.max_slots,
        max_label_bytes: p.max_label_bytes,
        max_cells: p.max_cells,
        flags: if reset { SHMETRICS_FLAG_RESET } else { 0 },
        arena_bytes: p.arena_bytes,
    };
    let b = path.as_os_str().as_encoded_bytes();
    let mut out: *const shmetrics_region = null();
    // SAFETY: `b` is a live slice, `o` a valid struct, `out` a valid out-pointer.
    let rc = unsafe { shmetrics_open(b.as_ptr().cast(), b.len(), &o, &mut out) };
    if rc < 0 {
        return Err((rc, last_error()));
    }
    assert!(!out.is_null(), "shmetrics_open returned {rc} and a NULL handle");
    // SAFETY: a handle from shmetrics_open is a leaked, never freed Region.
    Ok((unsafe { &*out }, rc))
}

/// A family definition as a caller (Lua) makes it.
#[derive(Clone, Debug, PartialEq)]
pub struct Def {
    pub kind: u32,
    pub name: Vec<u8>,
    pub help: Vec<u8>,
    pub labels: Vec<Vec<u8>>,
    pub bounds: Vec<f64>,
    pub max_series: u32,
}

impl Def {
    /// The bounds the library keeps: a trailing `+Inf` is implied.
    pub fn stored_bounds(&self) -> Vec<f64> {
        let mut b = self.bounds.clone();
        if b.last() == Some(&f64::INFINITY) {
            b.pop();
        }
        b
    }

    /// Cells a caller writes per series (what Lua's hot path assumes).
    pub fn need(&self) -> u32 {
        match self.kind {
            KIND_COUNTER => 1,
            KIND_GAUGE => GAUGE_CELLS,
            _ => self.stored_bounds().len() as u32 + 2,
        }
    }

    /// Same kind, label names and bounds: a redefinition, not a conflict.
    fn same_shape(&self, other: &Def) -> bool {
        self.kind == other.kind
            && self.labels == other.labels
            && self.stored_bounds().iter().map(|b| b.to_bits()).eq(other.stored_bounds().iter().map(|b| b.to_bits()))
    }
}

fn ptrs(list: &[Vec<u8>]) -> (Vec<*const c_char>, Vec<usize>) {
    (list.iter().map(|v| v.as_ptr().cast()).collect(), list.iter().map(|v| v.len()).collect())
}

fn slices(list: &[Vec<u8>]) -> Vec<&[u8]> {
    list.iter().map(|v| v.as_slice()).collect()
}

pub fn define(r: &'static Region, d: &Def, ffi: bool) -> Result<u32, Fail> {
    if !ffi {
        let labels = slices(&d.labels);
        let def = FamilyDef {
            kind: d.kind,
            name: &d.name,
            help: &d.help,
            labels: &labels,
            bounds: &d.bounds,
            max_series: d.max_series,
        };
        return r.define_family(&def).map_err(rust_err);
    }
    let (lp, ll) = ptrs(&d.labels);
    // SAFETY: every pointer/length pair comes from a live Vec.
    let rc = unsafe {
        shmetrics_family(
            r,
            d.kind,
            d.name.as_ptr().cast(),
            d.name.len(),
            d.help.as_ptr().cast(),
            d.help.len(),
            lp.as_ptr(),
            ll.as_ptr(),
            d.labels.len() as u32,
            if d.bounds.is_empty() { null() } else { d.bounds.as_ptr() },
            d.bounds.len() as u32,
            d.max_series,
        )
    };
    ffi_result(rc)
}

pub fn series(r: &'static Region, fam: u32, values: &[Vec<u8>], ffi: bool) -> Result<u32, Fail> {
    if !ffi {
        return r.series_cell(fam, &slices(values)).map_err(rust_err);
    }
    let (vp, vl) = ptrs(values);
    // SAFETY: pointer/length pairs from live Vecs.
    ffi_result(unsafe { shmetrics_series(r, fam, vp.as_ptr(), vl.as_ptr(), values.len() as u32) })
}

pub fn delete(r: &'static Region, fam: u32, values: &[Vec<u8>], ffi: bool) -> Result<bool, Fail> {
    if !ffi {
        return r.delete_series(fam, &slices(values)).map_err(rust_err);
    }
    let (vp, vl) = ptrs(values);
    // SAFETY: pointer/length pairs from live Vecs.
    let rc = unsafe { shmetrics_delete(r, fam, vp.as_ptr(), vl.as_ptr(), values.len() as u32) };
    ffi_result(rc).map(|n| {
        assert!(n <= 1, "shmetrics_delete returned {n}");
        n == 1
    })
}

pub fn reset(r: &'static Region, fam: u32, ffi: bool) -> Result<u32, Fail> {
    if !ffi {
        return r.reset_family(fam).map_err(rust_err);
    }
    // SAFETY: a live handle.
    ffi_result(unsafe { shmetrics_reset(r, fam) })
}

pub fn claim(r: &'static Region, ffi: bool) -> Result<u32, Fail> {
    if !ffi {
        return r.claim_slot().map_err(rust_err);
    }
    // SAFETY: a live handle.
    ffi_result(unsafe { shmetrics_claim_slot(r) })
}

/// Exposition formats, as `shmetrics_render_open` numbers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fmt {
    Text,
    OpenMetrics,
    Json,
}

impl Fmt {
    fn from(n: usize) -> Fmt {
        [Fmt::Text, Fmt::OpenMetrics, Fmt::Json][n % 3]
    }

    fn code(self) -> u32 {
        match self {
            Fmt::Text => SHMETRICS_FORMAT_TEXT,
            Fmt::OpenMetrics => SHMETRICS_FORMAT_OPENMETRICS,
            Fmt::Json => SHMETRICS_FORMAT_JSON,
        }
    }
}

/// Chunk size hints: tiny, odd, typical and huge ones, from a seed.
pub struct Hints(XorShift);

impl Hints {
    pub fn new(seed: u32) -> Hints {
        Hints(XorShift(seed as u64 | 1 << 40))
    }

    fn next(&mut self) -> usize {
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

/// Longest body the renderer may produce for the regions used here.
const MAX_BODY: usize = 64 << 20;

/// Renders a whole body through the Rust API or the C ABI, checking the chunk
/// protocol on the way: every chunk but the last holds at least the hint, none
/// is empty, and the iteration ends.
pub fn render(
    r: &'static Region,
    fmt: Fmt,
    filter: Option<&[Vec<u8>]>,
    ffi: bool,
    hints: &mut Hints,
) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    let mut last: Option<(usize, usize)> = None;
    let mut step = |chunk: &[u8], hint: usize, body: &mut Vec<u8>| -> Result<(), String> {
        if chunk.is_empty() {
            return Err("a chunk is empty".into());
        }
        if let Some((len, h)) = last {
            if len < h {
                return Err(format!("a chunk of {len} bytes with a hint of {h} was not the last one"));
            }
        }
        last = Some((chunk.len(), hint));
        body.extend_from_slice(chunk);
        if body.len() > MAX_BODY {
            return Err(format!("the body exceeds {MAX_BODY} bytes: the renderer does not end"));
        }
        Ok(())
    };
    if !ffi {
        let filter = filter.map_or(Filter::all(), |n| Filter::names(n.to_vec()));
        let mut it = match fmt {
            Fmt::Text => Render::with_filter(r, Format::Text004, filter),
            Fmt::OpenMetrics => Render::with_filter(r, Format::OpenMetrics, filter),
            Fmt::Json => Render::json(r, filter),
        };
        loop {
            // The C ABI passes at least 1; `next_chunk(0)` renders nothing.
            let hint = hints.next().max(1);
            if !it.next_chunk(hint) {
                break;
            }
            let chunk = std::mem::take(&mut it.buf);
            step(&chunk, hint, &mut body)?;
            it.buf = chunk;
        }
        return Ok(body);
    }
    let names = filter.unwrap_or(&[]);
    let (np, nl) = ptrs(names);
    let mut it: *mut shmetrics_render = null_mut();
    // SAFETY: live handle; `names` pointer/length pairs from live Vecs; `it` valid.
    let rc = unsafe { shmetrics_render_open(r, fmt.code(), np.as_ptr(), nl.as_ptr(), names.len() as u32, &mut it) };
    if rc != 0 {
        return Err(format!("shmetrics_render_open: {rc} {}", last_error()));
    }
    let res = (|| loop {
        let hint = hints.next();
        let mut chunk: *const c_char = null();
        let mut len = 0usize;
        // SAFETY: `it` is open; `chunk`/`len` valid out-pointers.
        let rc = unsafe { shmetrics_render_next(it, hint, &mut chunk, &mut len) };
        match rc {
            0 => return Ok(()),
            1 => {
                // SAFETY: valid until the next call on `it` (contract of render_next).
                let c = unsafe { std::slice::from_raw_parts(chunk.cast::<u8>(), len) };
                step(c, hint.max(1), &mut body)?;
            }
            _ => return Err(format!("shmetrics_render_next: {rc} {}", last_error())),
        }
    })();
    // SAFETY: `it` from render_open, closed once.
    unsafe { shmetrics_render_close(it) };
    res.map(|()| body)
}

// ===========================================================================
// The exposition checker: a strict reader of what the renderer may write.

fn is_metric_name(s: &str) -> bool {
    shmetrics::expo::is_valid_metric_name(s.as_bytes()) && !s.as_bytes()[0].is_ascii_digit()
}

fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
        && !s.starts_with("__")
}

/// Whether `s` is a number as Go's `strconv.FormatFloat(v, 'g', -1, 64)` writes
/// it (no leading zeros, a signed exponent of at least two digits), or one of
/// `+Inf`, `-Inf`, `NaN`.
pub fn is_go_float(s: &str) -> bool {
    if matches!(s, "+Inf" | "-Inf" | "NaN") {
        return true;
    }
    let s = s.strip_prefix('-').unwrap_or(s);
    let (mant, exp) = match s.split_once('e') {
        Some((m, e)) => (m, Some(e)),
        None => (s, None),
    };
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    let (int, frac) = match mant.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (mant, None),
    };
    let int_ok = digits(int) && (int == "0" || !int.starts_with('0'));
    let frac_ok = frac.map_or(true, |f| digits(f) && !f.ends_with('0'));
    let exp_ok = exp.map_or(true, |e| {
        let d = &e[1.min(e.len())..];
        (e.starts_with('+') || e.starts_with('-')) && digits(d) && d.len() >= 2 && (d.len() == 2 || !d.starts_with('0'))
    });
    // In exponent form the mantissa has one digit before the point.
    int_ok && frac_ok && exp_ok && (exp.is_none() || int.len() == 1 && int != "0")
}

pub fn parse_number(s: &str) -> Option<f64> {
    match s {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// Equal as the exposition shows them: NaN is NaN, both zeros are `0`.
fn same_value(got: f64, want: f64) -> bool {
    (got.is_nan() && want.is_nan()) || (got == 0.0 && want == 0.0) || got.to_bits() == want.to_bits()
}

#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: String,
}

#[derive(Clone, Debug)]
pub struct ExpoFamily {
    pub name: String,
    /// HELP text, unescaped.
    pub help: String,
    pub typ: String,
    pub samples: Vec<Sample>,
}

/// Unescapes a HELP text or a label value. `quote`: `\"` is an escape and a
/// bare `"` is not allowed.
fn unescape(s: &str, quote: bool) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        match c {
            '\\' => match it.next() {
                Some('\\') => out.push('\\'),
                Some('n') => out.push('\n'),
                Some('"') if quote => out.push('"'),
                other => return Err(format!("invalid escape \\{other:?} in {s:?}")),
            },
            '"' if quote => return Err(format!("unescaped quote in {s:?}")),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// One sample line: `name[{l="v",...}] value`, nothing else.
fn parse_sample(line: &str) -> Result<Sample, String> {
    let end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..end];
    if !is_metric_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[end..];
    let mut labels: Vec<(String, String)> = Vec::new();
    if let Some(mut l) = rest.strip_prefix('{') {
        loop {
            let eq = l.find('=').ok_or("label without =")?;
            let lname = &l[..eq];
            if !is_label_name(lname) {
                return Err(format!("bad label name {lname:?}"));
            }
            if labels.iter().any(|(n, _)| n == lname) {
                return Err(format!("label {lname:?} twice"));
            }
            l = l[eq + 1..].strip_prefix('"').ok_or("label value without opening quote")?;
            // The value ends at the first quote not escaped by a backslash.
            let mut close = None;
            let mut esc = false;
            for (i, c) in l.char_indices() {
                match (esc, c) {
                    (true, _) => esc = false,
                    (false, '\\') => esc = true,
                    (false, '"') => {
                        close = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let close = close.ok_or("label value without closing quote")?;
            labels.push((lname.to_string(), unescape(&l[..close], true)?));
            l = &l[close + 1..];
            if let Some(r) = l.strip_prefix(',') {
                l = r;
            } else if let Some(r) = l.strip_prefix('}') {
                rest = r;
                break;
            } else {
                return Err("expected , or } after a label".into());
            }
        }
    }
    let value = rest.strip_prefix(' ').ok_or("no single space before the value")?;
    if !is_go_float(value) {
        return Err(format!("bad value {value:?}"));
    }
    Ok(Sample { name: name.to_string(), labels, value: value.to_string() })
}

/// The histogram samples of one family: per series, buckets with increasing `le`
/// ending at `+Inf`, then `_sum` and `_count`, all with the same labels, and
/// `_count` equal to the `+Inf` bucket.
fn check_histogram(fam: &str, samples: &[Sample]) -> Result<(), String> {
    let (bucket, sum, count) = (format!("{fam}_bucket"), format!("{fam}_sum"), format!("{fam}_count"));
    let mut i = 0;
    while i < samples.len() {
        let base: Vec<(String, String)> = match samples[i].labels.split_last() {
            Some((le, base)) if le.0 == "le" => base.to_vec(),
            _ => return Err(format!("{}: a bucket without le last", samples[i].name)),
        };
        let mut prev = f64::NEG_INFINITY;
        let inf = loop {
            let s = samples.get(i).ok_or("the buckets do not end with +Inf")?;
            if s.name != bucket
                || s.labels.len() != base.len() + 1
                || s.labels[..base.len()] != base[..]
                || s.labels[base.len()].0 != "le"
            {
                return Err(format!("expected a bucket of {base:?}, got {s:?}"));
            }
            let le = &s.labels[base.len()].1;
            if !is_go_float(le) {
                return Err(format!("bad le {le:?}"));
            }
            let b = parse_number(le).unwrap();
            if b.is_nan() || b <= prev {
                return Err(format!("le {le:?} does not increase"));
            }
            prev = b;
            i += 1;
            if b == f64::INFINITY {
                break s.value.clone();
            }
        };
        for want in [&sum, &count] {
            let s = samples.get(i).ok_or_else(|| format!("no {want} after the buckets"))?;
            if &s.name != want || s.labels != base {
                return Err(format!("expected {want} with {base:?}, got {s:?}"));
            }
            if want == &count && s.value != inf {
                return Err(format!("{want}{base:?} is {} but the +Inf bucket is {inf}", s.value));
            }
            i += 1;
        }
    }
    Ok(())
}

/// Parses a whole body strictly: only `# HELP`, `# TYPE`, sample lines and (in
/// OpenMetrics, last) `# EOF`; every family is HELP, TYPE, then at least one
/// sample of its own, and appears once; no sample name belongs to two families
/// and no series appears twice.
pub fn parse_exposition(body: &[u8], om: bool) -> Result<Vec<ExpoFamily>, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("not UTF-8: {e}"))?;
    if text.is_empty() && !om {
        // Nothing to show (a filter that matched nothing): an empty exposition.
        return Ok(Vec::new());
    }
    let text = text.strip_suffix('\n').ok_or("the body does not end with a newline")?;
    let lines: Vec<&str> = text.split('\n').collect();
    let mut fams: Vec<ExpoFamily> = Vec::new();
    // Ordered sets, not hashed ones: std's hashers are randomly seeded, and
    // their probing would make the coverage of one input differ between runs.
    let mut owner: BTreeMap<String, String> = BTreeMap::new();
    let mut series: BTreeSet<(String, Vec<(String, String)>)> = BTreeSet::new();
    let mut i = 0;
    while i < lines.len() {
        let at = |i: usize| format!("line {}: {:?}", i + 1, lines[i]);
        if lines[i] == "# EOF" {
            if !om || i + 1 != lines.len() {
                return Err(format!("{}: # EOF not as the last line of OpenMetrics", at(i)));
            }
            return Ok(fams);
        }
        let help = lines[i].strip_prefix("# HELP ").ok_or_else(|| format!("{}: expected # HELP", at(i)))?;
        let (name, help) = help.split_once(' ').ok_or_else(|| format!("{}: HELP without text", at(i)))?;
        if !is_metric_name(name) {
            return Err(format!("{}: bad family name", at(i)));
        }
        let help = unescape(help, om).map_err(|e| format!("{}: {e}", at(i)))?;
        i += 1;
        let typ = lines
            .get(i)
            .and_then(|l| l.strip_prefix("# TYPE "))
            .ok_or_else(|| format!("line {}: no # TYPE after # HELP {name}", i + 1))?;
        let typ = match typ.split_once(' ') {
            Some((n, t)) if n == name && matches!(t, "counter" | "gauge" | "histogram") => t,
            _ => return Err(format!("{}: bad TYPE for {name}", at(i))),
        };
        if fams.iter().any(|f| f.name == name) {
            return Err(format!("{}: family {name} appears twice (families are not contiguous)", at(i)));
        }
        i += 1;
        let mut samples = Vec::new();
        while i < lines.len() && !lines[i].starts_with('#') {
            samples.push(parse_sample(lines[i]).map_err(|e| format!("{}: {e}", at(i)))?);
            i += 1;
        }
        if samples.is_empty() {
            return Err(format!("family {name} has no samples"));
        }
        let allowed: Vec<String> = match (typ, om) {
            ("counter", true) => vec![format!("{name}_total")],
            ("histogram", _) => ["_bucket", "_sum", "_count"].iter().map(|s| format!("{name}{s}")).collect(),
            _ => vec![name.to_string()],
        };
        for s in &samples {
            if !allowed.contains(&s.name) {
                return Err(format!("sample {} in family {name} ({typ})", s.name));
            }
            if let Some(f) = owner.insert(s.name.clone(), name.to_string()) {
                if f != name {
                    return Err(format!("sample name {} in families {f} and {name}", s.name));
                }
            }
            if !series.insert((s.name.clone(), s.labels.clone())) {
                return Err(format!("series {}{:?} twice", s.name, s.labels));
            }
        }
        if typ == "histogram" {
            check_histogram(name, &samples).map_err(|e| format!("histogram {name}: {e}"))?;
        }
        fams.push(ExpoFamily { name: name.to_string(), help, typ: typ.to_string(), samples });
    }
    if om {
        return Err("OpenMetrics body without # EOF".into());
    }
    Ok(fams)
}

// ===========================================================================
// A strict JSON reader (RFC 8259), for the JSON view.

#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    /// The number's text, as written.
    Num(String),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

pub fn parse_json(body: &[u8]) -> Result<Json, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("not UTF-8: {e}"))?;
    let mut p = JsonParser { s: text.as_bytes(), i: 0, depth: 0 };
    let v = p.value()?;
    p.ws();
    if p.i != p.s.len() {
        return Err(format!("trailing bytes at {}: {:?}", p.i, &text[p.i..(p.i + 40).min(text.len())]));
    }
    Ok(v)
}

struct JsonParser<'a> {
    s: &'a [u8],
    i: usize,
    depth: u32,
}

impl JsonParser<'_> {
    fn err<T>(&self, what: &str) -> Result<T, String> {
        let ctx =
            String::from_utf8_lossy(&self.s[self.i.saturating_sub(20)..(self.i + 20).min(self.s.len())]).into_owned();
        Err(format!("JSON: {what} at byte {} (near {ctx:?})", self.i))
    }

    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        self.ws();
        if self.s.get(self.i) == Some(&b) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn value(&mut self) -> Result<Json, String> {
        self.ws();
        self.depth += 1;
        if self.depth > 64 {
            return self.err("nested too deep");
        }
        let v = match self.s.get(self.i) {
            Some(b'{') => {
                self.i += 1;
                let mut fields = Vec::new();
                if !self.eat(b'}') {
                    loop {
                        self.ws();
                        if self.s.get(self.i) != Some(&b'"') {
                            return self.err("expected a key");
                        }
                        let k = self.string()?;
                        if !self.eat(b':') {
                            return self.err("expected :");
                        }
                        fields.push((k, self.value()?));
                        if self.eat(b',') {
                            continue;
                        }
                        if self.eat(b'}') {
                            break;
                        }
                        return self.err("expected , or }");
                    }
                }
                Json::Obj(fields)
            }
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                if !self.eat(b']') {
                    loop {
                        items.push(self.value()?);
                        if self.eat(b',') {
                            continue;
                        }
                        if self.eat(b']') {
                            break;
                        }
                        return self.err("expected , or ]");
                    }
                }
                Json::Arr(items)
            }
            Some(b'"') => Json::Str(self.string()?),
            Some(b't') if self.s[self.i..].starts_with(b"true") => {
                self.i += 4;
                Json::Bool(true)
            }
            Some(b'f') if self.s[self.i..].starts_with(b"false") => {
                self.i += 5;
                Json::Bool(false)
            }
            Some(b'n') if self.s[self.i..].starts_with(b"null") => {
                self.i += 4;
                Json::Null
            }
            Some(b'-' | b'0'..=b'9') => self.number()?,
            _ => return self.err("expected a value"),
        };
        self.depth -= 1;
        Ok(v)
    }

    fn number(&mut self) -> Result<Json, String> {
        let start = self.i;
        let digits = |p: &mut Self| {
            let st = p.i;
            while p.i < p.s.len() && p.s[p.i].is_ascii_digit() {
                p.i += 1;
            }
            p.i - st
        };
        if self.s[self.i] == b'-' {
            self.i += 1;
        }
        let lead = self.s.get(self.i).copied();
        let n = digits(self);
        if n == 0 || (n > 1 && lead == Some(b'0')) {
            return self.err("bad number");
        }
        if self.s.get(self.i) == Some(&b'.') {
            self.i += 1;
            if digits(self) == 0 {
                return self.err("bad fraction");
            }
        }
        if matches!(self.s.get(self.i), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.s.get(self.i), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if digits(self) == 0 {
                return self.err("bad exponent");
            }
        }
        Ok(Json::Num(std::str::from_utf8(&self.s[start..self.i]).unwrap().to_string()))
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let h = self.s.get(self.i..self.i + 4).and_then(|h| std::str::from_utf8(h).ok());
        match h.and_then(|h| u32::from_str_radix(h, 16).ok()) {
            Some(v) => {
                self.i += 4;
                Ok(v)
            }
            None => self.err("bad \\u escape"),
        }
    }

    fn string(&mut self) -> Result<String, String> {
        self.i += 1; // the opening quote
        let mut out = String::new();
        loop {
            let Some(&b) = self.s.get(self.i) else { return self.err("unterminated string") };
            match b {
                b'"' => {
                    self.i += 1;
                    return Ok(out);
                }
                b'\\' => {
                    self.i += 1;
                    let e = self.s.get(self.i).copied();
                    self.i += 1;
                    match e {
                        Some(b'"') => out.push('"'),
                        Some(b'\\') => out.push('\\'),
                        Some(b'/') => out.push('/'),
                        Some(b'b') => out.push('\u{8}'),
                        Some(b'f') => out.push('\u{c}'),
                        Some(b'n') => out.push('\n'),
                        Some(b'r') => out.push('\r'),
                        Some(b't') => out.push('\t'),
                        Some(b'u') => {
                            let hi = self.hex4()?;
                            let c = if (0xD800..0xDC00).contains(&hi) {
                                if !self.s[self.i..].starts_with(b"\\u") {
                                    return self.err("lone high surrogate");
                                }
                                self.i += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return self.err("bad low surrogate");
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            match char::from_u32(c) {
                                Some(c) => out.push(c),
                                None => return self.err("lone surrogate"),
                            }
                        }
                        _ => return self.err("bad escape"),
                    }
                }
                0..=0x1f => return self.err("raw control character in a string"),
                _ => {
                    // Copy one UTF-8 character (the input is valid UTF-8).
                    let len = match b {
                        0..=0x7f => 1,
                        0xc0..=0xdf => 2,
                        0xe0..=0xef => 3,
                        _ => 4,
                    };
                    out.push_str(std::str::from_utf8(&self.s[self.i..self.i + len]).unwrap());
                    self.i += len;
                }
            }
        }
    }
}

fn obj<'a>(v: &'a Json, keys: &[&str]) -> Result<Vec<&'a Json>, String> {
    match v {
        Json::Obj(fields) if fields.len() == keys.len() && fields.iter().zip(keys).all(|((k, _), w)| k == w) => {
            Ok(fields.iter().map(|(_, v)| v).collect())
        }
        _ => Err(format!("expected an object with keys {keys:?}, got {v:?}")),
    }
}

fn arr(v: &Json) -> Result<&[Json], String> {
    match v {
        Json::Arr(a) => Ok(a),
        _ => Err(format!("expected an array, got {v:?}")),
    }
}

fn jstr(v: &Json) -> Result<&str, String> {
    match v {
        Json::Str(s) => Ok(s),
        _ => Err(format!("expected a string, got {v:?}")),
    }
}

/// A JSON view number: finite ones as numbers in the exposition's spelling,
/// others as the strings `+Inf`, `-Inf`, `NaN`.
fn jnum(v: &Json) -> Result<f64, String> {
    match v {
        Json::Num(s) if is_go_float(s) => Ok(parse_number(s).unwrap()),
        Json::Str(s) if matches!(s.as_str(), "+Inf" | "-Inf" | "NaN") => Ok(parse_number(s).unwrap()),
        _ => Err(format!("expected a number, got {v:?}")),
    }
}

/// The JSON view's shape (see `src/json.rs`), as plain data.
#[derive(Debug)]
pub struct JsonFamily {
    pub name: String,
    pub typ: String,
    pub help: String,
    pub labels: Vec<String>,
    /// Per series: label values by name, then the value or (buckets, sum, count).
    pub series: Vec<(Vec<(String, String)>, JsonValue)>,
}

#[derive(Debug)]
pub enum JsonValue {
    One(f64),
    Histogram(Vec<(f64, f64)>, f64, f64),
}

pub fn parse_json_view(body: &[u8]) -> Result<Vec<JsonFamily>, String> {
    let top = parse_json(body)?;
    let mut out = Vec::new();
    for f in arr(obj(&top, &["families"])?[0])? {
        let v = obj(f, &["name", "type", "help", "labels", "series"])?;
        let typ = jstr(v[1])?.to_string();
        if !matches!(typ.as_str(), "counter" | "gauge" | "histogram") {
            return Err(format!("bad type {typ:?}"));
        }
        let labels: Vec<String> = arr(v[3])?.iter().map(|l| jstr(l).map(str::to_string)).collect::<Result<_, _>>()?;
        let mut series = Vec::new();
        for s in arr(v[4])? {
            let keys: &[&str] =
                if typ == "histogram" { &["labels", "buckets", "sum", "count"] } else { &["labels", "value"] };
            let sv = obj(s, keys)?;
            let Json::Obj(lv) = sv[0] else { return Err(format!("series labels not an object: {:?}", sv[0])) };
            let lv: Vec<(String, String)> =
                lv.iter().map(|(k, v)| jstr(v).map(|v| (k.clone(), v.to_string()))).collect::<Result<_, _>>()?;
            let value = if typ == "histogram" {
                let mut buckets = Vec::new();
                for b in arr(sv[1])? {
                    let pair = arr(b)?;
                    if pair.len() != 2 {
                        return Err(format!("bucket {b:?} is not a pair"));
                    }
                    buckets.push((jnum(&pair[0])?, jnum(&pair[1])?));
                }
                JsonValue::Histogram(buckets, jnum(sv[2])?, jnum(sv[3])?)
            } else {
                JsonValue::One(jnum(sv[1])?)
            };
            series.push((lv, value));
        }
        out.push(JsonFamily { name: jstr(v[0])?.to_string(), typ, help: jstr(v[2])?.to_string(), labels, series });
    }
    Ok(out)
}

// ===========================================================================
// What the library promises about definitions, replicated as a model.

fn kind_name(kind: u32) -> &'static str {
    match kind {
        KIND_COUNTER => "counter",
        KIND_GAUGE => "gauge",
        _ => "histogram",
    }
}

/// Whether a definition is one the library may accept (`validate_def`): the
/// names and bounds that keep the exposition well-formed.
pub fn def_is_valid(d: &Def) -> bool {
    let label_ok = |l: &Vec<u8>| l.len() <= MAX_NAME_BYTES && std::str::from_utf8(l).is_ok_and(is_label_name);
    let b = d.stored_bounds();
    matches!(d.kind, KIND_COUNTER | KIND_GAUGE | KIND_HISTOGRAM)
        && d.name.len() <= MAX_NAME_BYTES
        && std::str::from_utf8(&d.name).is_ok_and(is_metric_name)
        && !d.name.starts_with(b"shmetrics_")
        && d.help.len() <= MAX_HELP_BYTES
        && d.labels.len() <= MAX_LABELS
        && d.labels.iter().all(label_ok)
        && d.labels.iter().enumerate().all(|(i, l)| !d.labels[..i].contains(l))
        && (d.kind != KIND_HISTOGRAM || !d.labels.iter().any(|l| l == b"le"))
        && if d.kind == KIND_HISTOGRAM {
            !b.is_empty()
                && b.len() <= MAX_BUCKETS
                && b.iter().all(|x| x.is_finite())
                && b.windows(2).all(|w| w[0] < w[1])
        } else {
            d.bounds.is_empty()
        }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn lossy_key(values: &[Vec<u8>]) -> Vec<String> {
    values.iter().map(|v| lossy(v)).collect()
}

fn overflow_key(n: usize) -> Vec<String> {
    vec![lossy(OVERFLOW_VALUE); n]
}

fn is_overflow_key(key: &[String]) -> bool {
    !key.is_empty() && key.iter().all(|v| v.as_bytes() == OVERFLOW_VALUE)
}

struct FamM {
    def: Def,
    /// Every HELP text given; a redefinition may or may not replace it (an
    /// arena too full for the new text keeps the old one).
    helps: Vec<Vec<u8>>,
    gen: u32,
}

struct SerM {
    fam: u32,
    key: Vec<String>,
    cell: u32,
    ncells: u32,
    live: bool,
    /// A histogram's observed values, in order, while its cells hold nothing
    /// else (None once bytes were written into them directly, or a NaN, whose
    /// bucket no contract says, was observed).
    obs: Option<Vec<f64>>,
}

#[derive(Default)]
struct Model {
    fams: BTreeMap<u32, FamM>,
    /// Every series created, in creation order (deleted ones too: their cells
    /// are never reused).
    series: Vec<SerM>,
    /// Label values used so far, to reach existing series again.
    pool: Vec<Vec<u8>>,
    errors: [u64; REASONS.len()],
}

impl Model {
    fn live(&self, fam: u32, key: &[String]) -> Option<&SerM> {
        self.series.iter().find(|s| s.live && s.fam == fam && s.key == key)
    }

    fn by_name(&self, name: &[u8]) -> Option<u32> {
        self.fams.iter().find(|(_, f)| f.def.name == name).map(|(id, _)| *id)
    }

    /// Live series under the family's own limit (the overflow series excluded).
    fn limited_count(&self, fam: u32) -> usize {
        self.series.iter().filter(|s| s.live && s.fam == fam && !is_overflow_key(&s.key)).count()
    }

    fn remember(&mut self, values: &[Vec<u8>]) {
        for v in values {
            if self.pool.len() < 64 && !self.pool.contains(v) {
                self.pool.push(v.clone());
            }
        }
    }
}

// ===========================================================================
// Input generators

fn gen_name(inp: &mut Input, alphabet: &[u8], max: usize) -> Vec<u8> {
    let n = 1 + inp.below(max);
    (0..n).map(|_| alphabet[inp.below(alphabet.len())]).collect()
}

fn raw(inp: &mut Input, max: usize) -> Vec<u8> {
    let n = inp.below(max + 1);
    inp.bytes(n).to_vec()
}

fn gen_metric_name(inp: &mut Input, model: &Model) -> Vec<u8> {
    let existing: Vec<&Vec<u8>> = model.fams.values().map(|f| &f.def.name).collect();
    match inp.u8() % 12 {
        0 => raw(inp, 40),
        1 | 2 if !existing.is_empty() => existing[inp.below(existing.len())].clone(),
        3 if !existing.is_empty() => {
            let n = existing[inp.below(existing.len())];
            match inp.u8() % 5 {
                0 => n.strip_suffix(b"_total").unwrap_or(n).to_vec(),
                k => [n.as_slice(), [&b"_total"[..], b"_bucket", b"_count", b"_sum"][k as usize - 1]].concat(),
            }
        }
        4 => [&b"shmetrics_"[..], &gen_name(inp, b"ab_", 4)].concat(),
        5 => vec![b'a'; MAX_NAME_BYTES - 1 + inp.below(3)],
        _ => {
            let mut n = gen_name(inp, b"ab_:0", 5);
            if inp.u8() % 4 == 0 {
                n.extend_from_slice([&b"_total"[..], b"_count", b"_sum", b"_bucket"][inp.below(4)]);
            }
            n
        }
    }
}

fn gen_label_name(inp: &mut Input) -> Vec<u8> {
    match inp.u8() % 10 {
        0 => raw(inp, 12),
        1 => b"le".to_vec(),
        2 => b"__x".to_vec(),
        3 => vec![b'l'; MAX_NAME_BYTES + inp.below(2)],
        _ => gen_name(inp, b"abel_0", 3),
    }
}

fn gen_help(inp: &mut Input) -> Vec<u8> {
    match inp.u8() % 10 {
        0 => vec![b'h'; MAX_HELP_BYTES + inp.below(2)],
        1 => Vec::new(),
        2 => b"a \\ b \"q\"\nc\xffd\r\t\0".to_vec(),
        _ => raw(inp, 48),
    }
}

fn gen_bounds(inp: &mut Input, kind: u32) -> Vec<f64> {
    if kind != KIND_HISTOGRAM && inp.u8() % 8 != 0 {
        return Vec::new();
    }
    match inp.u8() % 8 {
        0 => Vec::new(),
        1 => (0..inp.below(6)).map(|_| gen_f64(inp)).collect(),
        2 => (0..MAX_BUCKETS - 1 + inp.below(4)).map(|i| i as f64 / 7.0).collect(),
        _ => {
            let n = 1 + inp.below(6);
            let mut x = (inp.u8() as i8) as f64 / 4.0;
            let mut v = Vec::new();
            for _ in 0..n {
                v.push(x);
                x += (1 + inp.below(40)) as f64 / [8.0, 1000.0, 0.001][inp.below(3)];
            }
            if inp.bool() {
                v.push(f64::INFINITY);
            }
            v
        }
    }
}

fn gen_def(inp: &mut Input, model: &Model) -> Def {
    let kind = match inp.u8() % 8 {
        0..=2 => KIND_COUNTER,
        3 | 4 => KIND_GAUGE,
        5 | 6 => KIND_HISTOGRAM,
        _ => inp.u32(),
    };
    let name = gen_metric_name(inp, model);
    let help = gen_help(inp);
    let nl = match inp.u8() {
        x if x < 224 => x as usize % 4,
        x => x as usize % (MAX_LABELS + 3),
    };
    let labels = (0..nl).map(|_| gen_label_name(inp)).collect();
    let bounds = gen_bounds(inp, kind);
    let max_series = match inp.u8() % 8 {
        k @ 5..=7 => k as u32 - 4,
        _ => 0,
    };
    Def { kind, name, help, labels, bounds, max_series }
}

fn gen_value(inp: &mut Input, model: &Model, max_label_bytes: u32) -> Vec<u8> {
    const POOL: [&[u8]; 10] = [
        b"",
        b"a",
        b"\xff",
        b"\xef\xbf\xbd",
        b"__overflow__",
        b"\"\\\n",
        "\u{e9}\u{2028}".as_bytes(),
        b"a\xc3",
        b"\0\t\r\x7f",
        b"}{,=\" x",
    ];
    match inp.u8() % 10 {
        0..=2 if !model.pool.is_empty() => model.pool[inp.below(model.pool.len())].clone(),
        3..=5 => POOL[inp.below(POOL.len())].to_vec(),
        6 => {
            let mut v = vec![b'x'; max_label_bytes as usize + inp.below(2)];
            if inp.bool() {
                v[0] = 0xff;
            }
            v
        }
        _ => raw(inp, 24),
    }
}

fn gen_values(inp: &mut Input, model: &Model, n: usize, max_label_bytes: u32) -> Vec<Vec<u8>> {
    let n = match inp.u8() {
        x if x < 240 => n,
        x => (n + x as usize % 3).saturating_sub(1) + if x == 255 { MAX_LABELS } else { 0 },
    };
    (0..n).map(|_| gen_value(inp, model, max_label_bytes)).collect()
}

fn pick_fam(inp: &mut Input, model: &Model) -> u32 {
    let k = inp.u8();
    if k < 240 && !model.fams.is_empty() {
        return *model.fams.keys().nth(k as usize % model.fams.len()).unwrap();
    }
    match k % 3 {
        0 => inp.u32(),
        1 => model.fams.len() as u32,
        _ => 0,
    }
}

// ===========================================================================
// Writing cells the way Lua's hot path does

/// Slot `slot`'s cells, through the Rust API or the C ABI (which must agree).
fn slot_cells(r: &'static Region, slot: u32, ffi: bool) -> *mut f64 {
    if !ffi {
        return r.cells(slot);
    }
    // SAFETY: live handle.
    let p = unsafe { shmetrics_slot_cells(r, slot) };
    assert_eq!(p, r.cells(slot), "shmetrics_slot_cells({slot}) and Region::cells differ");
    p
}

/// What `counter:inc`, `gauge:set`/`gauge:inc` and `histogram:observe` do with a
/// cell returned by `shmetrics_series` (`lua/resty/shmetrics.lua`), with an
/// arbitrary value (Lua refuses NaN and some infinities; cells must cope anyway).
///
/// # Safety
/// `cell .. cell + def.need()` must lie within every slot's cells.
unsafe fn lua_write(r: &'static Region, fam: u32, def: &Def, slot: u32, cell: u32, v: f64, how: u8, ffi: bool) {
    let cells = slot_cells(r, slot, ffi);
    let c = cell as usize;
    match def.kind {
        KIND_COUNTER => *cells.add(c) += v,
        KIND_GAUGE if how & 1 == 0 => {
            let seq = *cells.add(CELL_GAUGE_SEQ as usize) + 1.0;
            *cells.add(CELL_GAUGE_SEQ as usize) = seq;
            let stamp = seq * STAMP_SLOTS as f64 + slot as f64;
            *cells.add(c) = v;
            *cells.add(c + 1) = stamp;
            *slot_cells(r, SHARED_SLOT, ffi).add(c) = stamp;
        }
        KIND_GAUGE => {
            let stamp = *slot_cells(r, SHARED_SLOT, ffi).add(c);
            if *cells.add(c + 3) != stamp {
                *cells.add(c + 2) = 0.0;
                *cells.add(c + 3) = stamp;
            }
            *cells.add(c + 2) += v;
        }
        _ => {
            let nb = def.stored_bounds().len();
            if ffi {
                let b = shmetrics_family_bounds(r, fam);
                assert!(!b.is_null(), "shmetrics_family_bounds({fam}) is NULL for a histogram");
                shmetrics_observe(cells, cell, b, nb as u32, v);
            } else {
                let b = r.family_bounds(r.family(fam));
                assert_eq!(b.len(), nb, "family_bounds({fam})");
                cells::observe(cells, cell, b, v);
            }
        }
    }
}

// ===========================================================================
// Expected values, read from the cells by the rules of docs/layout.md §5

fn cell_at(r: &'static Region, slot: u32, i: u32) -> f64 {
    assert!(i < r.params.max_cells);
    // SAFETY: `i < max_cells`, `slot < max_slots` (asserted by `cells`).
    unsafe { std::ptr::read_volatile(r.cells(slot).add(i as usize)) }
}

fn claimed_slots(r: &'static Region) -> Vec<u32> {
    (1..r.params.max_slots).filter(|&s| r.slot(s).owner.load(Ordering::Acquire) != 0).collect()
}

fn expect_sum(r: &'static Region, slots: &[u32], c: u32) -> f64 {
    slots.iter().map(|&s| cell_at(r, s, c)).sum()
}

fn expect_gauge(r: &'static Region, slots: &[u32], c: u32) -> f64 {
    let t = cell_at(r, SHARED_SLOT, c);
    let mut v = 0.0;
    if t > 0.0 {
        let s = (t % STAMP_SLOTS as f64) as u32;
        if s > 0 && s < r.params.max_slots {
            v = cell_at(r, s, c);
        }
    }
    for &s in slots {
        if cell_at(r, s, c + 3) == t {
            v += cell_at(r, s, c + 2);
        }
    }
    v
}

/// Cumulative buckets (the last is `+Inf`) and the sum.
fn expect_histogram(r: &'static Region, slots: &[u32], c: u32, nb: usize) -> (Vec<f64>, f64) {
    let mut acc = 0.0;
    let mut cum = Vec::new();
    for i in 0..=nb as u32 {
        acc += expect_sum(r, slots, c + i);
        cum.push(acc);
    }
    (cum, expect_sum(r, slots, c + nb as u32 + 1))
}

fn check_value(what: &str, got: f64, want: f64) -> Result<(), String> {
    if same_value(got, want) {
        Ok(())
    } else {
        Err(format!("{what}: rendered {got:?}, the cells say {want:?}"))
    }
}

fn filter_wants(filter: Option<&[Vec<u8>]>, name: &[u8], kind: u32) -> bool {
    let Some(names) = filter else { return true };
    let base = if kind == KIND_COUNTER { name.strip_suffix(b"_total") } else { None };
    names.iter().any(|n| n == name || Some(n.as_slice()) == base)
}

/// Checks a rendered body against the model: the user families with live
/// series that the filter wants, in definition order, each with exactly its
/// live series in creation order, their label values and cell values; then the
/// self-metrics.
fn check_body(
    r: &'static Region,
    model: &Model,
    fmt: Fmt,
    filter: Option<&[Vec<u8>]>,
    body: &[u8],
) -> Result<(), String> {
    let slots = claimed_slots(r);
    let expected: Vec<(&FamM, Vec<&SerM>)> = model
        .fams
        .iter()
        .filter(|(_, f)| filter_wants(filter, &f.def.name, f.def.kind))
        .map(|(id, f)| (f, model.series.iter().filter(|s| s.live && s.fam == *id).collect::<Vec<_>>()))
        .filter(|(_, s)| !s.is_empty())
        .collect();
    let label_pairs = |f: &FamM, s: &SerM| -> Vec<(String, String)> {
        f.def.labels.iter().map(|l| lossy(l)).zip(s.key.iter().cloned()).collect()
    };
    let help_ok = |f: &FamM, help: &str| f.helps.iter().any(|h| lossy(h) == help);

    if fmt == Fmt::Json {
        let fams = parse_json_view(body)?;
        if fams.len() != expected.len() {
            return Err(format!(
                "JSON has families {:?}, expected {:?}",
                fams.iter().map(|f| &f.name).collect::<Vec<_>>(),
                expected.iter().map(|(f, _)| lossy(&f.def.name)).collect::<Vec<_>>()
            ));
        }
        for (jf, (f, sers)) in fams.iter().zip(&expected) {
            let name = lossy(&f.def.name);
            let what = |s: &str| format!("JSON family {name}: {s}");
            if jf.name != name || jf.typ != kind_name(f.def.kind) || !help_ok(f, &jf.help) {
                return Err(what(&format!("got name {:?} type {:?} help {:?}", jf.name, jf.typ, jf.help)));
            }
            if jf.labels != f.def.labels.iter().map(|l| lossy(l)).collect::<Vec<_>>() {
                return Err(what(&format!("label names {:?}", jf.labels)));
            }
            if jf.series.len() != sers.len() {
                return Err(what(&format!("{} series, expected {}", jf.series.len(), sers.len())));
            }
            for ((labels, value), s) in jf.series.iter().zip(sers) {
                let want = label_pairs(f, s);
                if *labels != want {
                    return Err(what(&format!("series labels {labels:?}, expected {want:?}")));
                }
                let what = |x: &str| format!("JSON {name}{want:?} {x}");
                match (f.def.kind, value) {
                    (KIND_COUNTER, JsonValue::One(v)) => {
                        check_value(&what("value"), *v, expect_sum(r, &slots, s.cell))?
                    }
                    (KIND_GAUGE, JsonValue::One(v)) => {
                        check_value(&what("value"), *v, expect_gauge(r, &slots, s.cell))?
                    }
                    (KIND_HISTOGRAM, JsonValue::Histogram(buckets, sum, count)) => {
                        let bounds = f.def.stored_bounds();
                        let (cum, want_sum) = expect_histogram(r, &slots, s.cell, bounds.len());
                        if buckets.len() != bounds.len() + 1 {
                            return Err(what(&format!("has {} buckets", buckets.len())));
                        }
                        for (k, (le, v)) in buckets.iter().enumerate() {
                            let want_le = bounds.get(k).copied().unwrap_or(f64::INFINITY);
                            check_value(&what(&format!("bucket bound #{k}")), *le, want_le)?;
                            check_value(&what(&format!("bucket #{k}")), *v, cum[k])?;
                        }
                        check_value(&what("sum"), *sum, want_sum)?;
                        check_value(&what("count"), *count, cum[bounds.len()])?;
                    }
                    _ => return Err(what(&format!("value of the wrong shape: {value:?}"))),
                }
            }
        }
        return Ok(());
    }

    let om = fmt == Fmt::OpenMetrics;
    let fams = parse_exposition(body, om)?;
    let split = fams.iter().position(|f| f.name.starts_with("shmetrics_")).unwrap_or(fams.len());
    let (user, own) = fams.split_at(split);
    if let Some(f) = own.iter().find(|f| !f.name.starts_with("shmetrics_")) {
        return Err(format!("user family {} after the self-metrics", f.name));
    }
    if user.len() != expected.len() {
        return Err(format!(
            "families {:?}, expected {:?}",
            user.iter().map(|f| &f.name).collect::<Vec<_>>(),
            expected.iter().map(|(f, _)| lossy(&f.def.name)).collect::<Vec<_>>()
        ));
    }
    for (ef, (f, sers)) in user.iter().zip(&expected) {
        let name = lossy(&f.def.name);
        let fam_name =
            if om && f.def.kind == KIND_COUNTER { name.strip_suffix("_total").unwrap_or(&name) } else { &name };
        let what = |s: &str| format!("family {name}: {s}");
        if ef.name != fam_name || ef.typ != kind_name(f.def.kind) || !help_ok(f, &ef.help) {
            return Err(what(&format!("got name {:?} type {:?} help {:?}", ef.name, ef.typ, ef.help)));
        }
        let mut samples = ef.samples.iter();
        let mut next = |want_name: &str, want_labels: &[(String, String)]| -> Result<f64, String> {
            let s = samples.next().ok_or_else(|| what(&format!("missing sample {want_name}{want_labels:?}")))?;
            if s.name != want_name || s.labels != want_labels {
                return Err(what(&format!("sample {}{:?}, expected {want_name}{want_labels:?}", s.name, s.labels)));
            }
            Ok(parse_number(&s.value).unwrap())
        };
        for s in sers {
            let labels = label_pairs(f, s);
            let id = format!("{name}{labels:?}");
            match f.def.kind {
                KIND_COUNTER => {
                    let sample = if om { format!("{fam_name}_total") } else { name.clone() };
                    check_value(&id, next(&sample, &labels)?, expect_sum(r, &slots, s.cell))?;
                }
                KIND_GAUGE => check_value(&id, next(&name, &labels)?, expect_gauge(r, &slots, s.cell))?,
                _ => {
                    let bounds = f.def.stored_bounds();
                    let (cum, want_sum) = expect_histogram(r, &slots, s.cell, bounds.len());
                    for (k, want) in cum.iter().enumerate() {
                        let mut le = Vec::new();
                        match bounds.get(k) {
                            Some(&b) => shmetrics::expo::write_le(&mut le, b),
                            None => le.extend_from_slice(b"+Inf"),
                        }
                        if let Some(&b) = bounds.get(k) {
                            check_value(&format!("{id} le #{k}"), parse_number(&lossy(&le)).unwrap(), b)?;
                        }
                        let mut l = labels.clone();
                        l.push(("le".into(), lossy(&le)));
                        check_value(&format!("{id} bucket #{k}"), next(&format!("{name}_bucket"), &l)?, *want)?;
                    }
                    check_value(&format!("{id} _sum"), next(&format!("{name}_sum"), &labels)?, want_sum)?;
                    check_value(&format!("{id} _count"), next(&format!("{name}_count"), &labels)?, cum[bounds.len()])?;
                }
            }
        }
        if let Some(s) = samples.next() {
            return Err(what(&format!("unexpected sample {s:?}")));
        }
    }
    for f in own {
        match f.name.as_str() {
            "shmetrics_errors_total" | "shmetrics_errors" => {
                let h = r.header();
                for (i, reason) in REASONS.iter().enumerate() {
                    let s = f.samples.get(i).ok_or_else(|| format!("{}: no sample for {reason}", f.name))?;
                    if s.labels != [("reason".to_string(), reason.to_string())] {
                        return Err(format!("{}: sample #{i} is {s:?}", f.name));
                    }
                    let mut want = expect_sum(r, &slots, CELL_ERRORS + i as u32);
                    if i as u32 == REASON_NO_SLOT {
                        want += h.no_slot_errors.load(Ordering::Relaxed) as f64;
                    }
                    check_value(&format!("errors_total{{reason={reason}}}"), parse_number(&s.value).unwrap(), want)?;
                    if want != model.errors[i] as f64 {
                        return Err(format!(
                            "errors_total{{reason={reason}}} is {want}, {} were counted",
                            model.errors[i]
                        ));
                    }
                }
            }
            "shmetrics_series_capacity" => {
                let v = parse_number(&f.samples[0].value).unwrap();
                check_value("series_capacity", v, r.params.max_series as f64)?;
            }
            "shmetrics_worker_slots" => {
                let total: f64 = f.samples.iter().map(|s| parse_number(&s.value).unwrap()).sum();
                check_value("worker_slots (all states)", total, (r.params.max_slots - 1) as f64)?;
            }
            _ => {}
        }
    }
    Ok(())
}

// ===========================================================================
// Target 1: render

/// Region sizes for the render target. In each, `max_slots × max_cells × 8` is a
/// multiple of 4096, so the cells end on a page boundary (where `Mapped` puts
/// its guard page), and some fill up within a few operations.
pub const RENDER_PARAMS: [Params; 4] = [
    Params { max_series: 16, max_families: 4, max_slots: 4, max_label_bytes: 32, max_cells: 128, arena_bytes: 4096 },
    Params {
        max_series: 64,
        max_families: 16,
        max_slots: 2,
        max_label_bytes: 300,
        max_cells: 1024,
        arena_bytes: 16384,
    },
    Params { max_series: 8, max_families: 8, max_slots: 8, max_label_bytes: 8, max_cells: 64, arena_bytes: 4096 },
    Params {
        max_series: 256,
        max_families: 32,
        max_slots: 4,
        max_label_bytes: 1024,
        max_cells: 2048,
        arena_bytes: 65536,
    },
];

struct RenderRun {
    r: &'static Region,
    p: Params,
    slot: u32,
    model: Model,
}

impl RenderRun {
    fn define(&mut self, d: Def, ffi: bool) {
        let res = define(self.r, &d, ffi);
        no_panic("define", &res);
        match res {
            Ok(id) => {
                assert!(def_is_valid(&d), "accepted an invalid definition as family {id}: {d:?}");
                if let Some(eid) = self.model.by_name(&d.name) {
                    let f = self.model.fams.get_mut(&eid).unwrap();
                    assert_eq!(id, eid, "a redefinition of {:?} returned another id", lossy(&d.name));
                    assert!(f.def.same_shape(&d), "accepted {d:?} over {:?}", f.def);
                    f.def.max_series = d.max_series;
                    f.helps.push(d.help);
                } else {
                    assert!(!self.model.fams.contains_key(&id), "id {id} handed out twice");
                    for f in self.model.fams.values() {
                        let theirs = exposed_names(&f.def.name, f.def.kind);
                        if let Some(n) = exposed_names(&d.name, d.kind).iter().find(|n| theirs.contains(n)) {
                            panic!(
                                "accepted {:?} although {:?} exposes {:?} too",
                                lossy(&d.name),
                                lossy(&f.def.name),
                                lossy(n)
                            );
                        }
                    }
                    self.model.fams.insert(id, FamM { helps: vec![d.help.clone()], def: d, gen: 0 });
                }
            }
            Err((code, msg)) => {
                assert!(
                    matches!(code, SHMETRICS_E_INVALID | SHMETRICS_E_CONFLICT | SHMETRICS_E_FULL),
                    "define {d:?}: {} {msg}",
                    code_name(code)
                );
                if let Some(eid) = self.model.by_name(&d.name) {
                    let f = &self.model.fams[&eid];
                    assert!(
                        !(def_is_valid(&d) && f.def.same_shape(&d)),
                        "refused an identical redefinition {d:?}: {msg}"
                    );
                }
            }
        }
    }

    /// Expected error of a call with `values` on a defined family.
    fn value_error(&self, f: &FamM, values: &[Vec<u8>]) -> Option<i32> {
        if values.len() != f.def.labels.len() {
            Some(SHMETRICS_E_LABEL_COUNT)
        } else if values.iter().any(|v| v.len() > self.p.max_label_bytes as usize) {
            Some(SHMETRICS_E_LABEL_TOO_LONG)
        } else {
            None
        }
    }

    fn undefined_family(&self, what: &str, fam: u32, values: &[Vec<u8>], ffi: bool, code: i32, msg: &str) {
        let ok = code == SHMETRICS_E_INVALID || (ffi && code == SHMETRICS_E_LABEL_COUNT && values.len() > MAX_LABELS);
        assert!(ok, "{what} on undefined family {fam}: {} {msg}", code_name(code));
    }

    fn series(&mut self, inp: &mut Input, ffi: bool) {
        let fam = pick_fam(inp, &self.model);
        let n = self.model.fams.get(&fam).map_or_else(|| inp.below(3), |f| f.def.labels.len());
        let values = gen_values(inp, &self.model, n, self.p.max_label_bytes);
        self.model.remember(&values);
        let res = series(self.r, fam, &values, ffi);
        no_panic("series", &res);
        let Some(f) = self.model.fams.get(&fam) else {
            match res {
                Ok(c) => panic!("series of undefined family {fam} returned {c}"),
                Err((code, msg)) => self.undefined_family("series", fam, &values, ffi, code, &msg),
            }
            return;
        };
        let def = f.def.clone();
        let expect_err = self.value_error(f, &values);
        let key = lossy_key(&values);
        let existing = self.model.live(fam, &key).map(|s| s.cell);
        let expect_overflow = existing.is_none()
            && !is_overflow_key(&key)
            && def.max_series > 0
            && self.model.limited_count(fam) >= def.max_series as usize;
        let what = format!("series {}{key:?}", lossy(&def.name));
        let rc = match res {
            Ok(rc) => rc,
            Err((code, msg)) => {
                match expect_err {
                    Some(e) => assert_eq!(code, e, "{what}: {msg}"),
                    None => {
                        assert_eq!(code, SHMETRICS_E_FULL, "{what}: {} {msg}", code_name(code));
                        assert!(existing.is_none(), "{what}: refused an existing series: {msg}");
                        if expect_overflow {
                            assert!(
                                self.model.live(fam, &overflow_key(n)).is_none(),
                                "{what}: refused, but the overflow series exists"
                            );
                        }
                    }
                }
                return;
            }
        };
        assert!(expect_err.is_none(), "{what}: accepted, expected {}", code_name(expect_err.unwrap()));
        let overflow = rc & SERIES_OVERFLOW != 0;
        assert_eq!(overflow, expect_overflow, "{what}: overflow flag (max_series {})", def.max_series);
        let cell = rc & !SERIES_OVERFLOW;
        let key = if overflow { overflow_key(n) } else { key };
        let ncells = def.need();
        match self.model.live(fam, &key) {
            Some(s) => assert_eq!(cell, s.cell, "{what}: another cell for an existing series"),
            None => {
                assert!(
                    cell >= RESERVED_CELLS && cell + ncells <= self.p.max_cells,
                    "{what}: cell {cell} + {ncells} out of bounds"
                );
                for s in &self.model.series {
                    assert!(
                        cell + ncells <= s.cell || s.cell + s.ncells <= cell,
                        "{what}: cell {cell} overlaps series {:?} at {}",
                        s.key,
                        s.cell
                    );
                }
                let obs = (def.kind == KIND_HISTOGRAM).then(Vec::new);
                self.model.series.push(SerM { fam, key: key.clone(), cell, ncells, live: true, obs });
            }
        }
        let idx = self.model.series.iter().position(|s| s.live && s.fam == fam && s.key == key).unwrap();
        for _ in 0..inp.below(4) {
            let v = gen_f64(inp);
            let how = inp.u8();
            self.write(idx, v, how, ffi);
        }
    }

    /// An update of series `idx` as Lua makes it, remembered for the check of
    /// histogram buckets.
    fn write(&mut self, idx: usize, v: f64, how: u8, ffi: bool) {
        let s = &mut self.model.series[idx];
        let def = &self.model.fams[&s.fam].def;
        if def.kind == KIND_HISTOGRAM {
            match &mut s.obs {
                Some(_) if v.is_nan() => s.obs = None,
                Some(o) => o.push(v),
                None => {}
            }
        }
        // SAFETY: the cell range was checked against max_cells when created.
        unsafe { lua_write(self.r, s.fam, def, self.slot, s.cell, v, how, ffi) };
    }

    /// Every live histogram series whose cells only `observe` wrote holds, in
    /// this process's slot, the count of its observations in each bucket (`v`
    /// in `(bounds[k-1], bounds[k]]`, the last bucket above every bound) and
    /// their sum, added in order.
    fn check_observations(&self) {
        for s in self.model.series.iter().filter(|s| s.live) {
            let Some(obs) = &s.obs else { continue };
            let bounds = self.model.fams[&s.fam].def.stored_bounds();
            let mut counts = vec![0.0; bounds.len() + 1];
            for v in obs {
                counts[bounds.iter().position(|b| v <= b).unwrap_or(bounds.len())] += 1.0;
            }
            let sum = obs.iter().fold(0.0, |a, v| a + v);
            let got: Vec<f64> = (0..=bounds.len() as u32 + 1).map(|i| cell_at(self.r, self.slot, s.cell + i)).collect();
            let want: Vec<f64> = counts.iter().copied().chain([sum]).collect();
            assert!(
                got.iter().zip(&want).all(|(g, w)| same_value(*g, *w)),
                "histogram {}{:?} with bounds {bounds:?}: observed {obs:?}, the cells hold {got:?}, expected {want:?}",
                lossy(&self.model.fams[&s.fam].def.name),
                s.key
            );
        }
    }

    fn delete(&mut self, inp: &mut Input, ffi: bool) {
        let fam = pick_fam(inp, &self.model);
        let n = self.model.fams.get(&fam).map_or_else(|| inp.below(3), |f| f.def.labels.len());
        let values = gen_values(inp, &self.model, n, self.p.max_label_bytes);
        let res = delete(self.r, fam, &values, ffi);
        no_panic("delete", &res);
        let Some(f) = self.model.fams.get(&fam) else {
            match res {
                Ok(d) => panic!("delete on undefined family {fam} returned {d}"),
                Err((code, msg)) => self.undefined_family("delete", fam, &values, ffi, code, &msg),
            }
            return;
        };
        let key = lossy_key(&values);
        match (res, self.value_error(f, &values)) {
            (Err((code, msg)), Some(e)) => assert_eq!(code, e, "delete {key:?}: {msg}"),
            (Err((code, msg)), None) => panic!("delete {key:?}: {} {msg}", code_name(code)),
            (Ok(_), Some(e)) => panic!("delete {key:?}: accepted, expected {}", code_name(e)),
            (Ok(gone), None) => {
                let exists = self.model.live(fam, &key).is_some();
                assert_eq!(gone, exists, "delete {}{key:?}", lossy(&f.def.name));
                if gone {
                    self.model
                        .series
                        .iter_mut()
                        .filter(|s| s.live && s.fam == fam && s.key == key)
                        .for_each(|s| s.live = false);
                    self.model.fams.get_mut(&fam).unwrap().gen += 1;
                }
            }
        }
    }

    fn reset(&mut self, inp: &mut Input, ffi: bool) {
        let fam = pick_fam(inp, &self.model);
        let res = reset(self.r, fam, ffi);
        no_panic("reset", &res);
        if !self.model.fams.contains_key(&fam) {
            match res {
                Ok(n) => panic!("reset of undefined family {fam} returned {n}"),
                Err((code, msg)) => assert_eq!(code, SHMETRICS_E_INVALID, "reset {fam}: {msg}"),
            }
            return;
        }
        let live: Vec<&mut SerM> = self.model.series.iter_mut().filter(|s| s.live && s.fam == fam).collect();
        let n = live.len() as u32;
        live.into_iter().for_each(|s| s.live = false);
        self.model.fams.get_mut(&fam).unwrap().gen += 1;
        match res {
            Ok(got) => assert_eq!(got, n, "reset {fam}: deleted count"),
            Err((code, msg)) => panic!("reset {fam}: {} {msg}", code_name(code)),
        }
    }

    fn check_family_pointers(&self, inp: &mut Input) {
        let fam = pick_fam(inp, &self.model);
        // SAFETY: live handle.
        let (gen, bounds) = unsafe { (shmetrics_family_gen(self.r, fam), shmetrics_family_bounds(self.r, fam)) };
        match self.model.fams.get(&fam) {
            Some(f) => {
                assert!(!gen.is_null(), "shmetrics_family_gen({fam}) is NULL");
                // SAFETY: a pointer into the mapped family record.
                assert_eq!(unsafe { *gen }, f.gen, "generation of family {fam}");
                if f.def.kind == KIND_HISTOGRAM {
                    let b = f.def.stored_bounds();
                    assert!(!bounds.is_null(), "shmetrics_family_bounds({fam}) is NULL");
                    // SAFETY: the family's bounds in the arena, `b.len()` of them.
                    let got = unsafe { std::slice::from_raw_parts(bounds, b.len()) };
                    assert!(
                        got.iter().map(|x| x.to_bits()).eq(b.iter().map(|x| x.to_bits())),
                        "bounds of {fam}: {got:?} vs {b:?}"
                    );
                } else {
                    assert!(bounds.is_null(), "shmetrics_family_bounds of a {}", kind_name(f.def.kind));
                }
            }
            None => assert!(gen.is_null() && bounds.is_null(), "pointers for undefined family {fam}"),
        }
    }

    fn render(&self, inp: &mut Input, ffi: bool) {
        let fmt = Fmt::from(inp.below(3));
        let filter: Option<Vec<Vec<u8>>> = if inp.u8() % 3 == 0 {
            let names: Vec<&Vec<u8>> = self.model.fams.values().map(|f| &f.def.name).collect();
            let list: Vec<Vec<u8>> = (0..1 + inp.below(3))
                .map(|_| match inp.u8() % 5 {
                    0 => raw(inp, 12),
                    1 => b"shmetrics_errors".to_vec(),
                    2 if !names.is_empty() => {
                        let n = names[inp.below(names.len())];
                        n.strip_suffix(b"_total").unwrap_or(n).to_vec()
                    }
                    _ if !names.is_empty() => names[inp.below(names.len())].clone(),
                    _ => b"a".to_vec(),
                })
                .collect();
            Some(list)
        } else {
            None
        };
        self.check_observations();
        let body = render(self.r, fmt, filter.as_deref(), ffi, &mut Hints::new(inp.u32()))
            .unwrap_or_else(|e| panic!("render {fmt:?}: {e}"));
        if let Err(e) = check_body(self.r, &self.model, fmt, filter.as_deref(), &body) {
            panic!("render {fmt:?} (filter {filter:?}): {e}\n--- body ---\n{}", lossy(&body));
        }
    }
}

/// Fuzz target `render`: see `fuzz_targets/render.rs`.
pub fn render_target(data: &[u8]) {
    let mut inp = Input::new(data);
    let p = RENDER_PARAMS[inp.below(RENDER_PARAMS.len())];
    let path = fresh_path("render");
    let opened = open_region(&path, p, false, inp.bool());
    unlink(&path);
    let (r, how) = opened.unwrap_or_else(|e| panic!("creating {}: {e:?}", path.display()));
    assert_eq!(how, SHMETRICS_OPEN_CREATED, "a fresh path was not created");
    // SAFETY: created just now, nothing in it yet.
    unsafe { fix_hash_seed(r) };
    // SAFETY: a fresh path, opened once; `r` is not used after `_m` is dropped.
    let _m = unsafe { Mapped::new(r) };
    let slot = claim(r, inp.bool()).expect("claiming a slot in a fresh region");
    assert_eq!(slot, 1, "the first slot of a fresh region");
    let mut run = RenderRun { r, p, slot, model: Model::default() };
    let mut ops = 0;
    while !inp.is_empty() && ops < 256 {
        ops += 1;
        let op = inp.u8();
        let ffi = op & 0x80 != 0;
        match op % 16 {
            0 | 1 => {
                let d = gen_def(&mut inp, &run.model);
                run.define(d, ffi);
            }
            2 => {
                // A redefinition: the same, a new HELP or limit, or one change.
                let Some(f) = run.model.fams.values().nth(inp.below(run.model.fams.len().max(1))) else { continue };
                let mut d = f.def.clone();
                match inp.u8() % 8 {
                    0 => d.help = gen_help(&mut inp),
                    1 => d.max_series = inp.below(4) as u32,
                    2 => d.kind = (d.kind + 1) % 3,
                    3 => d.labels.push(gen_label_name(&mut inp)),
                    4 => d.bounds = gen_bounds(&mut inp, d.kind),
                    5 if d.kind == KIND_HISTOGRAM => d.bounds.push(f64::INFINITY),
                    _ => {}
                }
                run.define(d, ffi);
            }
            3..=6 | 15 => run.series(&mut inp, ffi),
            7 => run.delete(&mut inp, ffi),
            8 => run.reset(&mut inp, ffi),
            9 => {
                // Any bit pattern in any slot's copy of a series' cells.
                if run.model.series.is_empty() {
                    continue;
                }
                let n = inp.below(run.model.series.len());
                let s = &mut run.model.series[n];
                s.obs = None;
                let slot = inp.below(p.max_slots as usize) as u32;
                let i = s.cell + inp.below(s.ncells as usize) as u32;
                let v = gen_f64(&mut inp);
                // SAFETY: `i < cell + ncells <= max_cells`, checked when created.
                unsafe { *slot_cells(r, slot, ffi).add(i as usize) = v };
            }
            10 => {
                // Another (dead) process's slot: its cells count in every scrape.
                let k = 1 + inp.below(p.max_slots as usize - 1) as u32;
                if k != slot {
                    let word = match inp.u8() % 3 {
                        0 => 0x3FFF_FF00 | k as u64,
                        1 => (inp.u32() as u64) << 32 | std::process::id() as u64,
                        _ => inp.u64() | 1,
                    };
                    r.slot(k).owner.store(word, Ordering::Release);
                }
            }
            11 => {
                let reason = match inp.u8() % 4 {
                    0 => inp.u32(),
                    _ => inp.below(REASONS.len()) as u32,
                };
                if ffi {
                    // SAFETY: live handle.
                    unsafe { shmetrics_count_error(r, reason) };
                } else {
                    r.count_error(reason);
                }
                if let Some(e) = run.model.errors.get_mut(reason as usize) {
                    *e += 1;
                }
            }
            12 => run.render(&mut inp, ffi),
            13 => {
                // More updates to an existing series, as Lua's cache hits do.
                let live: Vec<usize> = (0..run.model.series.len()).filter(|&i| run.model.series[i].live).collect();
                if live.is_empty() {
                    continue;
                }
                let idx = live[inp.below(live.len())];
                let (v, how) = (gen_f64(&mut inp), inp.u8());
                run.write(idx, v, how, ffi);
            }
            _ => run.check_family_pointers(&mut inp),
        }
    }
    run.check_observations();
    // Every format through both APIs, with different chunk hints: the same bytes.
    for fmt in [Fmt::Text, Fmt::OpenMetrics, Fmt::Json] {
        let seed = inp.u32();
        let a = render(r, fmt, None, false, &mut Hints::new(seed)).unwrap_or_else(|e| panic!("render {fmt:?}: {e}"));
        let b = render(r, fmt, None, true, &mut Hints::new(seed ^ 0x5bd1_e995))
            .unwrap_or_else(|e| panic!("render {fmt:?} (C ABI): {e}"));
        assert!(
            a == b,
            "{fmt:?}: the Rust API and the C ABI rendered different bodies:\n{}\n---\n{}",
            lossy(&a),
            lossy(&b)
        );
        if let Err(e) = check_body(r, &run.model, fmt, None, &a) {
            panic!("render {fmt:?}: {e}\n--- body ---\n{}", lossy(&a));
        }
    }
}

// ===========================================================================
// Target 2: attach

/// Sizes of the template region the attach target corrupts (cells end on a
/// page boundary: 4 × 256 × 8 = 8192).
pub const ATTACH_PARAMS: Params =
    Params { max_series: 32, max_families: 8, max_slots: 4, max_label_bytes: 64, max_cells: 256, arena_bytes: 4096 };

/// A valid region file with some of everything in it, built once per process.
pub struct Template {
    pub params: Params,
    pub bytes: Vec<u8>,
    pub defs: Vec<(u32, Def)>,
    /// Label values of the template's series, by family id.
    pub values: Vec<(u32, Vec<Vec<u8>>)>,
}

fn def(kind: u32, name: &str, help: &[u8], labels: &[&str], bounds: &[f64], max_series: u32) -> Def {
    Def {
        kind,
        name: name.as_bytes().to_vec(),
        help: help.to_vec(),
        labels: labels.iter().map(|l| l.as_bytes().to_vec()).collect(),
        bounds: bounds.to_vec(),
        max_series,
    }
}

pub fn template() -> &'static Template {
    static T: OnceLock<Template> = OnceLock::new();
    T.get_or_init(build_template)
}

fn build_template() -> Template {
    let p = ATTACH_PARAMS;
    let path = fresh_path("template");
    let opened = open_region(&path, p, false, false);
    let (r, _) = opened.unwrap_or_else(|e| panic!("creating the template {}: {e:?}", path.display()));
    // SAFETY: created just now, nothing in it yet.
    unsafe { fix_hash_seed(r) };
    // SAFETY: a fresh path, opened once; `r` is not used after `m` is dropped.
    let m = unsafe { Mapped::new(r) };
    let defs = [
        def(KIND_COUNTER, "req_total", b"Requests.", &["method", "code"], &[], 4),
        def(KIND_GAUGE, "temp", b"Temperature \\ \"C\"\n.", &["room"], &[], 0),
        def(KIND_HISTOGRAM, "lat_seconds", b"", &[], &[0.1, 1.0, 10.0], 0),
        def(KIND_COUNTER, "up", b"Up.", &[], &[], 0),
        def(KIND_HISTOGRAM, "size", b"Sizes \xff.", &["a"], &[1.0, 2.0, 3.0, 4.0, 5.0, f64::INFINITY], 2),
    ];
    let v = |vals: &[&[u8]]| vals.iter().map(|x| x.to_vec()).collect::<Vec<_>>();
    let series_values: [(usize, Vec<Vec<u8>>); 12] = [
        (0, v(&[b"GET", b"200"])),
        (0, v(&[b"POST", b"500"])),
        (0, v(&[b"bad\xff", b"x"])),
        (0, v(&[b"PUT", b"201"])),
        (0, v(&[b"DELETE", b"204"])),
        (0, v(&[b"a", b"b"])),
        (1, v(&[b"kitchen"])),
        (1, v(&[b"hall\"\n"])),
        (2, v(&[])),
        (3, v(&[])),
        (4, v(&[b"q\"\n\\"])),
        (4, v(&[b"r"])),
    ];
    let slot = claim(r, false).expect("template: claim");
    let mut ids = Vec::new();
    for d in &defs {
        ids.push((define(r, d, false).unwrap_or_else(|e| panic!("template: define {d:?}: {e:?}")), d.clone()));
    }
    let mut values = Vec::new();
    for (k, (i, vals)) in series_values.iter().enumerate() {
        let (fam, d) = &ids[*i];
        let rc = series(r, *fam, vals, k % 2 == 0).unwrap_or_else(|e| panic!("template: series {vals:?}: {e:?}"));
        for j in 0..3 {
            // SAFETY: a cell the library handed out for this family.
            unsafe { lua_write(r, *fam, d, slot, rc & !SERIES_OVERFLOW, (k * 3 + j) as f64 * 0.75, j as u8, j == 1) };
        }
        values.push((*fam, vals.clone()));
    }
    assert!(delete(r, ids[0].0, &series_values[1].1, false).expect("template: delete"));
    for reason in [0, 3, REASON_NO_SLOT] {
        r.count_error(reason);
    }
    // Slot 1 belongs to a dead process now, and slot 2 to another dead one that
    // counted too; slot 3 was never used.
    r.slot(1).owner.store(0x0000_0001_3FFF_FF01, Ordering::Release);
    r.slot(2).owner.store(0x0000_0002_3FFF_FF02, Ordering::Release);
    for c in [RESERVED_CELLS, RESERVED_CELLS + 1, RESERVED_CELLS + 2, CELL_ERRORS + 1] {
        // SAFETY: below max_cells.
        unsafe { *r.cells(2).add(c as usize) = 2.0 };
    }
    let bytes = std::fs::read(&path).expect("template: read the file back");
    assert_eq!(bytes.len() as u64, r.off.total);
    drop(m);
    unlink(&path);
    Template { params: p, bytes, defs: ids, values }
}

fn interesting_u32(inp: &mut Input, p: &Params) -> u32 {
    let t = [
        0,
        1,
        2,
        3,
        4,
        8,
        10,
        11,
        31,
        32,
        33,
        128,
        129,
        p.max_cells - 4,
        p.max_cells - 1,
        p.max_cells,
        p.max_cells + 1,
        p.max_series - 1,
        p.max_series,
        p.max_families,
        p.arena_bytes as u32 - 1,
        p.arena_bytes as u32,
        1 << 30,
        0x7fff_ffff,
        0x8000_0000,
        0xffff_fffe,
        0xffff_ffff,
    ];
    match inp.u8() % 3 {
        0 => inp.u32(),
        _ => t[inp.below(t.len())],
    }
}

/// Overwrites fuzz-chosen bytes of a region file image, aiming at its sections.
fn mutate(inp: &mut Input, bytes: &mut [u8], p: &Params) {
    let off = p.offsets();
    // The template's arena use, from its header (offset 208).
    let arena_used = u64::from_le_bytes(bytes[208..216].try_into().unwrap()).min(p.arena_bytes);
    let sections: [(u64, u64); 10] = [
        (0, 256),
        (192, 64),
        (off.slots, p.max_slots as u64 * 64),
        (off.families, p.max_families as u64 * std::mem::size_of::<Family>() as u64),
        (off.family_index, off.family_index_cap as u64 * 4),
        (off.series, p.max_series as u64 * 24),
        (off.series_index, off.series_index_cap as u64 * 4),
        (off.arena, arena_used + 64),
        (off.cells, off.total - off.cells),
        (0, off.total),
    ];
    for _ in 0..1 + inp.below(16) {
        let (start, len) = sections[inp.below(sections.len())];
        let at = (start + inp.below(len as usize) as u64) as usize;
        let get =
            |bytes: &[u8], at: usize| -> [u8; 8] { std::array::from_fn(|i| bytes.get(at + i).copied().unwrap_or(0)) };
        let v: Vec<u8> = match inp.u8() % 6 {
            0 => vec![inp.u8()],
            1 => vec![bytes[at] ^ 1 << (inp.u8() % 8)],
            2 => interesting_u32(inp, p).to_le_bytes().to_vec(),
            3 => inp.u64().to_le_bytes().to_vec(),
            4 => {
                let old = u32::from_le_bytes(get(bytes, at)[..4].try_into().unwrap());
                old.wrapping_add(inp.u8() as i8 as u32).to_le_bytes().to_vec()
            }
            _ => get(bytes, (start + inp.below(len as usize) as u64) as usize).to_vec(),
        };
        for (i, b) in v.iter().enumerate() {
            if let Some(x) = bytes.get_mut(at + i) {
                *x = *b;
            }
        }
    }
}

/// Overwrites fields of records (families, series, slots, header counters) with
/// values near the limits they are checked against: several coordinated
/// corruptions (a short `ncells` and a `cell` near the end) are rare otherwise.
fn mutate_fields(inp: &mut Input, bytes: &mut [u8], p: &Params) {
    let off = p.offsets();
    for _ in 0..1 + inp.below(4) {
        // Family: state gen kind nlabels nbounds ncells hash name_off name_len
        // labels_off bounds_off max_series help(len, off) dropped series_count.
        const FAMILY: &[usize] = &[0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 64];
        // Series: state family key_off key_len cell hash.
        const SERIES: &[usize] = &[0, 4, 8, 12, 16, 20];
        let (base, size, n, fields): (u64, u64, u32, &[usize]) = match inp.u8() % 4 {
            0 => (off.families, std::mem::size_of::<Family>() as u64, p.max_families, FAMILY),
            1 => (off.series, 24, p.max_series / 2, SERIES),
            2 => (off.slots, 64, p.max_slots, &[0, 4, 8]),
            _ => (0, 0, 1, &[192, 196, 200, 208, 212, 216]),
        };
        let at = (base + size * inp.below(n as usize) as u64) as usize + fields[inp.below(fields.len())];
        let v = interesting_u32(inp, p).to_le_bytes();
        if let Some(dst) = bytes.get_mut(at..at + 4) {
            dst.copy_from_slice(&v);
        }
    }
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
    f.write_all(bytes).expect("writing the region file");
    f.set_permissions(std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Checks a body rendered from a region that may be corrupt: it ends, it is
/// UTF-8, every line is complete, and an OpenMetrics body ends with `# EOF`; a
/// JSON body is valid JSON.
fn check_corrupt_body(fmt: Fmt, body: &[u8]) -> Result<(), String> {
    if fmt == Fmt::Json {
        return parse_json(body).map(|_| ());
    }
    let text = std::str::from_utf8(body).map_err(|e| format!("not UTF-8: {e}"))?;
    if !text.ends_with('\n') && !(text.is_empty() && fmt == Fmt::Text) {
        return Err("does not end with a newline".into());
    }
    if fmt == Fmt::OpenMetrics && !(text == "# EOF\n" || text.ends_with("\n# EOF\n")) {
        return Err("no # EOF at the end".into());
    }
    Ok(())
}

struct AttachRun<'m> {
    m: &'m Mapped,
    r: &'static Region,
    /// Families this run defined (so it knows them as Lua would).
    known: Vec<(u32, Def)>,
    /// Cells handed out for known families: (index in `known`, cell).
    cells: Vec<(usize, u32)>,
}

impl AttachRun<'_> {
    fn pick_known(&self, inp: &mut Input) -> Option<usize> {
        (!self.known.is_empty()).then(|| inp.below(self.known.len()))
    }

    fn fam(&self, inp: &mut Input) -> u32 {
        match (inp.u8() % 4, self.pick_known(inp)) {
            (0..=2, Some(k)) => self.known[k].0,
            (3, _) => inp.u32() % 16,
            _ => inp.below(template().defs.len() + 2) as u32,
        }
    }

    fn values(&self, inp: &mut Input, fam: u32) -> Vec<Vec<u8>> {
        let t = template();
        let of_fam: Vec<&Vec<Vec<u8>>> = t.values.iter().filter(|(f, _)| *f == fam).map(|(_, v)| v).collect();
        if !of_fam.is_empty() && inp.u8() % 4 != 0 {
            return of_fam[inp.below(of_fam.len())].clone();
        }
        let n = self.known.iter().find(|(f, _)| *f == fam).map_or_else(|| inp.below(3), |(_, d)| d.labels.len());
        gen_values(inp, &Model::default(), n, t.params.max_label_bytes)
    }

    /// What Lua does after `shmetrics_series` returned `rc` for a known family:
    /// the ABI promises `cell .. cell + cells of its kind` lie within the slot.
    fn use_cell(&mut self, k: usize, rc: u32, inp: &mut Input, ffi: bool) {
        let d = self.known[k].1.clone();
        let cell = rc & !SERIES_OVERFLOW;
        let max = self.r.params.max_cells;
        assert!(
            cell >= RESERVED_CELLS && cell + d.need() <= max,
            "series of {} returned cell {cell}: a {} needs {} cells, there are {max} (a write out of bounds)",
            lossy(&d.name),
            kind_name(d.kind),
            d.need()
        );
        self.cells.push((k, cell));
        self.write(k, cell, inp, ffi);
    }

    fn write(&self, k: usize, cell: u32, inp: &mut Input, ffi: bool) {
        let (fam, d) = &self.known[k];
        let Ok(slot) = claim(self.r, ffi) else { return };
        assert!(slot >= 1 && slot < self.r.params.max_slots, "claimed slot {slot}");
        if d.kind == KIND_HISTOGRAM && ffi {
            // SAFETY: live handle.
            let b = unsafe { shmetrics_family_bounds(self.r, *fam) };
            let nb = d.stored_bounds().len();
            assert!(
                !b.is_null() && self.m.inside(b as usize, nb * 8),
                "bounds of {fam} at {b:?} are outside the region"
            );
        }
        let (v, how) = (gen_f64(inp), inp.u8());
        // SAFETY: `use_cell` checked the range against max_cells.
        unsafe { lua_write(self.r, *fam, d, slot, cell, v, how, ffi) };
    }

    fn define(&mut self, d: Def, ffi: bool) {
        let res = define(self.r, &d, ffi);
        no_panic("define", &res);
        if let Ok(id) = res {
            assert!(def_is_valid(&d), "accepted an invalid definition {d:?}");
            assert!(id < self.r.params.max_families, "family id {id}");
            self.known.push((id, d));
        }
    }

    fn op(&mut self, inp: &mut Input) {
        let op = inp.u8();
        let ffi = op & 0x80 != 0;
        let r = self.r;
        match op % 12 {
            0 => {
                let fmt = Fmt::from(inp.below(3));
                let filter: Option<Vec<Vec<u8>>> =
                    inp.bool().then(|| vec![template().defs[inp.below(5)].1.name.clone()]);
                let body = render(r, fmt, filter.as_deref(), ffi, &mut Hints::new(inp.u32()))
                    .unwrap_or_else(|e| panic!("render {fmt:?}: {e}"));
                if let Err(e) = check_corrupt_body(fmt, &body) {
                    panic!("render {fmt:?} of a corrupt region: {e}\n--- body ---\n{}", lossy(&body));
                }
            }
            1 => {
                let t = template();
                let mut d = t.defs[inp.below(t.defs.len())].1.clone();
                match inp.u8() % 4 {
                    0 => d.help = gen_help(inp),
                    1 => d.max_series = inp.below(4) as u32,
                    _ => {}
                }
                self.define(d, ffi);
            }
            2 => {
                let d = gen_def(inp, &Model::default());
                self.define(d, ffi);
            }
            3 | 4 => {
                let Some(k) = self.pick_known(inp) else { return };
                let fam = self.known[k].0;
                let values = self.values(inp, fam);
                let res = series(r, fam, &values, ffi);
                no_panic("series", &res);
                if let Ok(rc) = res {
                    self.use_cell(k, rc, inp, ffi);
                }
            }
            5 => {
                let fam = self.fam(inp);
                let values = self.values(inp, fam);
                no_panic("series", &series(r, fam, &values, ffi));
            }
            6 => {
                let fam = self.fam(inp);
                let values = self.values(inp, fam);
                no_panic("delete", &delete(r, fam, &values, ffi));
            }
            7 => {
                let fam = self.fam(inp);
                no_panic("reset", &reset(r, fam, ffi));
            }
            8 => {
                let res = claim(r, ffi);
                no_panic("claim", &res);
                if let Ok(s) = res {
                    assert!(s >= 1 && s < r.params.max_slots, "claimed slot {s}");
                }
            }
            9 => {
                let reason = inp.u32() % 16;
                if ffi {
                    // SAFETY: live handle.
                    unsafe { shmetrics_count_error(r, reason) };
                } else {
                    r.count_error(reason);
                }
            }
            10 => {
                let fam = self.fam(inp);
                // SAFETY: live handle.
                let (g, b) = unsafe { (shmetrics_family_gen(r, fam), shmetrics_family_bounds(r, fam)) };
                assert!(g.is_null() || self.m.inside(g as usize, 4), "family_gen({fam}) = {g:?} is outside the region");
                assert!(
                    b.is_null() || self.m.inside(b as usize, 0),
                    "family_bounds({fam}) = {b:?} is outside the region"
                );
                let slot = inp.below(r.params.max_slots as usize + 2) as u32;
                // SAFETY: live handle.
                let c = unsafe { shmetrics_slot_cells(r, slot) };
                if slot < r.params.max_slots {
                    assert!(self.m.inside(c as usize, r.params.max_cells as usize * 8), "slot_cells({slot}) = {c:?}");
                } else {
                    assert!(c.is_null(), "slot_cells({slot}) of {} slots", r.params.max_slots);
                }
            }
            _ => {
                if self.cells.is_empty() {
                    return;
                }
                let (k, cell) = self.cells[inp.below(self.cells.len())];
                self.write(k, cell, inp, ffi);
            }
        }
    }
}

/// Fuzz target `attach`: see `fuzz_targets/attach.rs`.
pub fn attach_target(data: &[u8]) {
    let t = template();
    let mut inp = Input::new(data);
    let mode = inp.u8();
    let flags = inp.u8();
    let mut p = t.params;
    if flags & 0x80 != 0 {
        // Sizes that differ from the file's: it must be recreated.
        match inp.u8() % 6 {
            0 => p.max_series += 1,
            1 => p.max_families += 1,
            2 => p.max_slots += 1,
            3 => p.max_label_bytes += 1,
            4 => p.max_cells *= 2,
            _ => p.arena_bytes *= 2,
        }
    }
    let bytes: Vec<u8> = match mode % 4 {
        // Arbitrary bytes.
        0 => {
            let n = inp.below(t.bytes.len() + 4097);
            inp.bytes(n).to_vec()
        }
        // A valid header over a repeated pattern.
        3 => {
            let n = 1 + inp.below(256);
            let pat = inp.bytes(n).to_vec();
            let mut b = t.bytes[..HEADER_BYTES as usize].to_vec();
            b.extend(pat.iter().cycle().take(t.bytes.len() - b.len()));
            if inp.bool() {
                // The allocation counters too (most such files are refused).
                for (i, x) in b[192..256].iter_mut().enumerate() {
                    *x = pat[i % pat.len()];
                }
            }
            b
        }
        // The template with bytes overwritten, then maybe cut or extended.
        m => {
            let mut b = t.bytes.clone();
            mutate(&mut inp, &mut b, &t.params);
            if mode & 0x40 != 0 {
                mutate_fields(&mut inp, &mut b, &t.params);
            }
            if m == 2 {
                let n = match inp.u8() % 3 {
                    0 => inp.below(t.bytes.len()),
                    1 => t.bytes.len() - 1 - inp.below(64),
                    _ => t.bytes.len() + 1 + inp.below(8192),
                };
                b.resize(n, 0);
            }
            b
        }
    };
    let path = fresh_path("attach");
    let target = PathBuf::from(format!("{}.target", path.display()));
    let kind = flags & 7;
    match kind {
        5 => write_file(&path, &bytes, 0o644),
        6 => {
            write_file(&target, &bytes, 0o600);
            std::os::unix::fs::symlink(&target, &path).expect("symlink");
        }
        7 => std::fs::create_dir(&path).expect("mkdir"),
        _ if flags & 0x08 != 0 => {}
        _ => write_file(&path, &bytes, 0o600),
    }
    let reset = flags & 0x70 == 0x70;
    let opened = open_region(&path, p, reset, flags & 0x40 != 0);
    unlink(&path);
    unlink(&target);
    no_panic("open", &opened);
    let (r, how) = match opened {
        Ok(x) => x,
        Err((code, msg)) => {
            // Refusing a file is fine (not ours alone, or counters past the
            // capacities); any other failure is not.
            assert_eq!(code, SHMETRICS_E_IO, "open ({kind}): {} {msg}", code_name(code));
            let refused = kind >= 5 || msg.contains("allocation counters");
            assert!(refused, "open refused a file of kind {kind}: {msg}");
            return;
        }
    };
    if how != SHMETRICS_OPEN_ATTACHED {
        // SAFETY: created (or recreated) just now, nothing in it yet.
        unsafe { fix_hash_seed(r) };
    }
    // SAFETY: a fresh path, opened once; `r` is not used after `m` is dropped.
    let m = unsafe { Mapped::new(r) };
    let regular = kind < 5 && flags & 0x08 == 0;
    if regular && !reset && p == t.params && bytes == t.bytes {
        assert_eq!(how, SHMETRICS_OPEN_ATTACHED, "the intact template was not attached");
    }
    if kind == 7 || (kind >= 5 && !reset) {
        panic!("open accepted a file of kind {kind} (result {how})");
    }
    let mut run = AttachRun { m: &m, r, known: Vec::new(), cells: Vec::new() };
    let mut ops = 0;
    while !inp.is_empty() && ops < 64 {
        ops += 1;
        run.op(&mut inp);
    }
    for fmt in [Fmt::Text, Fmt::OpenMetrics, Fmt::Json] {
        let body = render(r, fmt, None, false, &mut Hints::new(ops)).unwrap_or_else(|e| panic!("render {fmt:?}: {e}"));
        if let Err(e) = check_corrupt_body(fmt, &body) {
            panic!("render {fmt:?} of a corrupt region: {e}\n--- body ---\n{}", lossy(&body));
        }
    }
}
