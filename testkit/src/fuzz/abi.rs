//! Regions and calls as the fuzz targets make them: fresh region files, the
//! Rust API or the C ABI (the input picks, per call; they must agree), the chunked
//! render, and cell writes the way Lua's hot path makes them.

use std::ffi::c_char;
use std::path::{Path, PathBuf};
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicU64, Ordering};

use shmetrics::cells;
use shmetrics::expo::Format;
use shmetrics::ffi::*;
use shmetrics::layout::*;
use shmetrics::region::{self, Opened, Region};
use shmetrics::registry::FamilyDef;
use shmetrics::scrape::{Filter, Render};

use super::input::Hints;
use crate::writer::Cells;

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A region file path no other input (or process) uses. Numbers are padded:
/// every path (and every message naming it) has the same length in every
/// process, so the coverage of an input does not depend on its pid.
pub fn fresh_path(tag: &str) -> PathBuf {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    PathBuf::from(format!("/dev/shm/shmetrics-fuzz-{tag}-{:010}-{n:012}", std::process::id()))
}

pub fn unlink(path: &Path) {
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
    pub fn inside(&self, p: usize, len: usize) -> bool {
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
pub fn no_panic<T>(what: &str, r: &Result<T, Fail>) {
    if let Err((code, msg)) = r {
        assert!(
            !(*code == SHMETRICS_E_INTERNAL && msg.starts_with(PANIC_PREFIX)),
            "{what}: a panic was caught at the C ABI: {msg}"
        );
    }
}

pub fn code_name(code: i32) -> &'static str {
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
    pub fn same_shape(&self, other: &Def) -> bool {
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
    pub fn from(n: usize) -> Fmt {
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

/// Slot `slot`'s cells, through the Rust API or the C ABI (which must agree).
pub fn slot_cells(r: &'static Region, slot: u32, ffi: bool) -> *mut f64 {
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
#[allow(clippy::too_many_arguments)] // the call as Lua makes it, plus which API
pub unsafe fn lua_write(r: &'static Region, fam: u32, def: &Def, slot: u32, cell: u32, v: f64, how: u8, ffi: bool) {
    let cells = slot_cells(r, slot, ffi);
    // SAFETY: this harness is the slot's one writer; the cell range is the caller's.
    let lua = Cells::new(cells, slot_cells(r, SHARED_SLOT, ffi), slot);
    match def.kind {
        KIND_COUNTER => lua.counter_add(cell, v),
        KIND_GAUGE if how & 1 == 0 => lua.gauge_set(cell, v),
        KIND_GAUGE => lua.gauge_inc(cell, v),
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
