//! The C ABI: every exported function, in one place.
//!
//! Conventions: functions return `int` codes (0 or a non-negative result on
//! success, a negative `SHMETRICS_E_*` code on failure, with a detailed message
//! from `shmetrics_last_error`); pointers are checked for NULL; every buffer
//! comes with its length; outputs are written only on success. Each body runs
//! inside [`guard`], so a panic becomes `SHMETRICS_E_INTERNAL` and never unwinds
//! into LuaJIT (which would abort the nginx worker).

#![allow(non_camel_case_types)]

use std::ffi::c_char;
use std::os::unix::ffi::OsStrExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use crate::error::{self, Error};
use crate::expo::Format;
use crate::layout::{Params, KIND_HISTOGRAM, MAX_LABELS};
use crate::offload::{self, Job, Poll};
use crate::region::{self, Opened, Region};
use crate::render::{Filter, Render};
use crate::store;

/// Version of this ABI; bumped on any incompatible change. The Lua module and
/// the header carry the same number and refuse to run with another.
pub const SHMETRICS_ABI_VERSION: u32 = 1;

/// Error codes: 0 is success, negative codes are errors (never reused).
pub const SHMETRICS_OK: i32 = 0;
pub const SHMETRICS_E_INVALID: i32 = -1;
pub const SHMETRICS_E_CONFLICT: i32 = -2;
pub const SHMETRICS_E_LABEL_COUNT: i32 = -3;
pub const SHMETRICS_E_LABEL_TOO_LONG: i32 = -4;
pub const SHMETRICS_E_FULL: i32 = -5;
pub const SHMETRICS_E_NO_SLOT: i32 = -6;
pub const SHMETRICS_E_IO: i32 = -7;
pub const SHMETRICS_E_INTERNAL: i32 = -8;

/// `shmetrics_open` results.
pub const SHMETRICS_OPEN_CREATED: i32 = 0;
pub const SHMETRICS_OPEN_ATTACHED: i32 = 1;
pub const SHMETRICS_OPEN_RECREATED: i32 = 2;
pub const SHMETRICS_OPEN_REUSED: i32 = 3;

/// `shmetrics_options.flags`: discard an existing file (not on reload).
pub const SHMETRICS_FLAG_RESET: u32 = 1;
/// `shmetrics_options.flags`: the exposition follows the configuration. When this
/// call maps the file (not on reload, nor in a binary upgrade's new master),
/// every stored family is hidden until a
/// definition names it again, so a family the configuration dropped disappears.
pub const SHMETRICS_FLAG_FOLLOW_CONFIG: u32 = 2;

/// Added to `shmetrics_family`'s `kind`: a stored family of the same name whose
/// definition differs (type, labels, buckets) is replaced instead of refused.
pub const SHMETRICS_FAMILY_REPLACE: u32 = 256;

/// Exposition formats for `shmetrics_render_open`: Prometheus text 0.0.4.
pub const SHMETRICS_FORMAT_TEXT: u32 = 0;
/// OpenMetrics 1.0.0.
pub const SHMETRICS_FORMAT_OPENMETRICS: u32 = 1;
/// The JSON view: user families with their series and values.
pub const SHMETRICS_FORMAT_JSON: u32 = 2;
/// Added to a `shmetrics_series` result that is the overflow series' cell.
pub const SHMETRICS_SERIES_OVERFLOW: i32 = 1_073_741_824;
/// `shmetrics_render_poll`: no piece is ready yet (yield, then poll again).
pub const SHMETRICS_RENDER_PENDING: i32 = 2;
/// Most pieces `shmetrics_render_start` lets wait in a job's queue.
pub const SHMETRICS_RENDER_MAX_DEPTH: u32 = 16;
/// Most family names one scrape may ask for.
pub const SHMETRICS_MAX_FILTER_NAMES: u32 = 1024;

/// Sizes of a region. Zero means the default.
#[repr(C)]
pub struct shmetrics_options {
    pub max_series: u32,
    pub max_families: u32,
    pub max_slots: u32,
    pub max_label_bytes: u32,
    pub max_cells: u32,
    pub flags: u32,
    pub arena_bytes: u64,
}

/// An opaque region handle (declared in the header by cbindgen.toml).
/// cbindgen:ignore
pub type shmetrics_region = Region;
/// An opaque exposition iterator.
/// cbindgen:ignore
pub type shmetrics_render = Render;
/// An opaque exposition rendered on the library's thread.
/// cbindgen:ignore
pub type shmetrics_render_job = Job;

fn fail(e: &Error) -> i32 {
    error::set_last(e.message());
    e.code()
}

/// Runs `f`, turning a panic into `on_panic` and a recorded message.
fn guard<T>(on_panic: T, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(p) => {
            error::set_last(&error::panic_message(&*p));
            on_panic
        }
    }
}

/// # Safety
/// `p` must be NULL or point to `len` readable bytes.
unsafe fn bytes<'a>(p: *const c_char, len: usize) -> Option<&'a [u8]> {
    if p.is_null() {
        return if len == 0 { Some(&[]) } else { None };
    }
    // SAFETY: non-NULL here; `len` readable bytes by the caller's contract.
    Some(unsafe { std::slice::from_raw_parts(p.cast(), len) })
}

/// # Safety
/// `ptrs` and `lens` must be NULL or point to `n` entries, each pointer to its length in bytes.
unsafe fn byte_list<'a>(
    ptrs: *const *const c_char,
    lens: *const usize,
    n: u32,
    arg: &str,
) -> Result<Vec<&'a [u8]>, Error> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if n as usize > MAX_LABELS {
        return Err(Error::LabelCount(format!("{n} {arg}; at most {MAX_LABELS}")));
    }
    if ptrs.is_null() || lens.is_null() {
        return Err(Error::invalid(format!("bad argument \"{arg}\": NULL")));
    }
    (0..n as usize)
        .map(|i| {
            // SAFETY: `i < n` entries in both arrays, each pointer to its length (caller contract).
            unsafe { bytes(*ptrs.add(i), *lens.add(i)) }
                .ok_or_else(|| Error::invalid(format!("bad argument \"{arg}\": entry {} is NULL", i + 1)))
        })
        .collect()
}

/// # Safety
/// `r` must be NULL or a handle returned by `shmetrics_open`.
unsafe fn region<'a>(r: *const Region) -> Result<&'a Region, Error> {
    // SAFETY: NULL or a live handle (caller contract); handles are never freed.
    unsafe { r.as_ref() }.ok_or_else(|| Error::invalid("bad argument \"region\": NULL".to_string()))
}

/// The ABI version this library implements (`SHMETRICS_ABI_VERSION`).
#[no_mangle]
pub extern "C" fn shmetrics_abi_version() -> u32 {
    SHMETRICS_ABI_VERSION
}

/// A fixed, NUL-terminated description of an error code.
#[no_mangle]
pub extern "C" fn shmetrics_strerror(code: i32) -> *const c_char {
    error::strerror(code).as_ptr().cast()
}

/// Copies the detailed message of this thread's last failed call into `buf`
/// (at most `cap` bytes, not NUL-terminated) and returns its full length.
///
/// # Safety
/// `buf` must be NULL or point to `cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn shmetrics_last_error(buf: *mut c_char, cap: usize) -> usize {
    guard(0, || {
        error::with_last(|m| {
            if !buf.is_null() {
                let n = m.len().min(cap);
                // SAFETY: `buf` has `cap >= n` writable bytes (caller contract).
                unsafe { std::ptr::copy_nonoverlapping(m.as_ptr(), buf.cast(), n) };
            }
            m.len()
        })
    })
}

/// Opens (creates, attaches or reuses) the region file at `path`.
/// Returns one of `SHMETRICS_OPEN_*` and stores the handle in `*out`; for
/// `SHMETRICS_OPEN_RECREATED`, `shmetrics_last_error` says why the old file was replaced.
///
/// # Safety
/// `path` must point to `path_len` bytes; `opts` must be NULL or valid; `out` valid.
#[no_mangle]
pub unsafe extern "C" fn shmetrics_open(
    path: *const c_char,
    path_len: usize,
    opts: *const shmetrics_options,
    out: *mut *const shmetrics_region,
) -> i32 {
    guard(SHMETRICS_E_INTERNAL, || {
        let run = || -> Result<i32, Error> {
            // SAFETY: caller contract.
            let path = unsafe { bytes(path, path_len) }
                .filter(|p| !p.is_empty())
                .ok_or_else(|| Error::invalid("bad option \"path\": empty".to_string()))?;
            if out.is_null() {
                return Err(Error::invalid("bad argument \"out\": NULL".to_string()));
            }
            let mut params = Params::default();
            let mut reset = false;
            let mut follow = false;
            // SAFETY: caller contract: NULL or a valid options struct.
            if let Some(o) = unsafe { opts.as_ref() } {
                let pick = |v: u32, d: u32| if v == 0 { d } else { v };
                params.max_series = pick(o.max_series, params.max_series);
                params.max_families = pick(o.max_families, params.max_families);
                params.max_slots = pick(o.max_slots, params.max_slots);
                params.max_label_bytes = pick(o.max_label_bytes, params.max_label_bytes);
                params.max_cells = o.max_cells;
                params.arena_bytes = o.arena_bytes;
                reset = o.flags & SHMETRICS_FLAG_RESET != 0;
                follow = o.flags & SHMETRICS_FLAG_FOLLOW_CONFIG != 0;
            }
            let path = Path::new(std::ffi::OsStr::from_bytes(path));
            let (r, how) = region::open(path, params, reset)?;
            if follow && how != Opened::Reused && !store::joined_parent() {
                r.begin_configuration();
            }
            // SAFETY: `out` checked non-NULL above.
            unsafe { *out = r };
            Ok(match how {
                Opened::Created => SHMETRICS_OPEN_CREATED,
                Opened::Attached => SHMETRICS_OPEN_ATTACHED,
                Opened::Reused => SHMETRICS_OPEN_REUSED,
                Opened::Recreated(why) => {
                    error::set_last(&why);
                    SHMETRICS_OPEN_RECREATED
                }
            })
        };
        run().unwrap_or_else(|e| fail(&e))
    })
}

/// Defines a metric family (or finds the identical existing one) and returns its id.
/// `kind`: 0 counter, 1 gauge, 2 histogram, plus `SHMETRICS_FAMILY_REPLACE` to
/// replace a stored family of the same name whose definition differs (its
/// series leave the exposition) instead of failing with `SHMETRICS_E_CONFLICT`.
/// `bounds` are the finite bucket bounds of a histogram.
/// `max_series` limits the family's label sets (0: the default limit, a quarter of
/// the region's `max_series` and at least 1,000); beyond
/// it, updates go to one overflow series whose label values are all `__overflow__`.
///
/// # Safety
/// Every pointer/length pair must describe readable memory; `labels`/`label_lens` hold `nlabels` entries.
#[no_mangle]
pub unsafe extern "C" fn shmetrics_family(
    r: *const shmetrics_region,
    kind: u32,
    name: *const c_char,
    name_len: usize,
    help: *const c_char,
    help_len: usize,
    labels: *const *const c_char,
    label_lens: *const usize,
    nlabels: u32,
    bounds: *const f64,
    nbounds: u32,
    max_series: u32,
) -> i32 {
    guard(SHMETRICS_E_INTERNAL, || {
        let run = || -> Result<i32, Error> {
            // SAFETY: caller contract for every pointer below.
            let r = unsafe { region(r) }?;
            let replace = kind & SHMETRICS_FAMILY_REPLACE != 0;
            let kind = kind & !SHMETRICS_FAMILY_REPLACE;
            // SAFETY: caller contract: a pointer to `name_len` bytes.
            let name =
                unsafe { bytes(name, name_len) }.ok_or_else(|| Error::invalid("bad argument \"name\": NULL".into()))?;
            // SAFETY: caller contract: a pointer to `help_len` bytes.
            let help =
                unsafe { bytes(help, help_len) }.ok_or_else(|| Error::invalid("bad argument \"help\": NULL".into()))?;
            if nlabels as usize > MAX_LABELS {
                return Err(Error::invalid(format!(
                    "bad argument \"label_names\": {nlabels} labels; at most {MAX_LABELS}"
                )));
            }
            // SAFETY: caller contract: `nlabels` pointer/length pairs.
            let labels = unsafe { byte_list(labels, label_lens, nlabels, "label_names") }?;
            let bounds: &[f64] = if nbounds == 0 || kind != KIND_HISTOGRAM && bounds.is_null() {
                &[]
            } else if bounds.is_null() || nbounds > 4096 {
                return Err(Error::invalid("bad argument \"buckets\": NULL or too many".into()));
            } else {
                // SAFETY: non-NULL, and `nbounds` doubles by the caller's contract.
                unsafe { std::slice::from_raw_parts(bounds, nbounds as usize) }
            };
            // 0: the default limit, so that no family can take every series.
            let max_series = if max_series == 0 { r.params.default_family_cap() } else { max_series };
            let def = store::FamilyDef { kind, name, help, labels: &labels, bounds, max_series };
            let fam = if replace { r.define_family_replacing(&def)? } else { r.define_family(&def)? };
            Ok(fam as i32)
        };
        run().unwrap_or_else(|e| fail(&e))
    })
}

/// Exposes an unlabelled counter named `name` after the self-metrics: every
/// hot-path error plus the `log_error` calls (reserved cell 19). It takes no
/// series. `name_len == 0` removes it. Applies to the calling process and the
/// workers it forks afterwards. Returns 0 or `SHMETRICS_E_INVALID`.
///
/// # Safety
/// `r` is a handle from `shmetrics_open`; `name`/`name_len` describe readable memory.
#[no_mangle]
pub unsafe extern "C" fn shmetrics_error_metric(
    r: *const shmetrics_region,
    name: *const c_char,
    name_len: usize,
) -> i32 {
    guard(SHMETRICS_E_INTERNAL, || {
        let run = || -> Result<i32, Error> {
            // SAFETY: caller contract.
            let r = unsafe { region(r) }?;
            let name = if name_len == 0 {
                &[][..]
            } else {
                // SAFETY: caller contract.
                unsafe { bytes(name, name_len) }.ok_or_else(|| Error::invalid("bad argument \"name\": NULL".into()))?
            };
            r.set_error_metric(name)?;
            Ok(SHMETRICS_OK)
        };
        run().unwrap_or_else(|e| fail(&e))
    })
}

/// Pointer to family `fam`'s deletion generation (changes on `del`/`reset`), or NULL.
///
/// # Safety
/// `r` must be NULL or a region handle.
#[no_mangle]
pub unsafe extern "C" fn shmetrics_family_gen(r: *const shmetrics_region, fam: u32) -> *const u32 {
    guard(std::ptr::null(), || {
        // SAFETY: caller contract.
        let Ok(r) = (unsafe { region(r) }) else { return std::ptr::null() };
        match r.live_family(fam) {
            Ok(f) => f.gen.as_ptr() as *const u32,
            Err(e) => {
                fail(&e);
                std::ptr::null()
            }
        }
    })
}

/// Pointer to histogram family `fam`'s finite bucket bounds, or NULL: this
/// process's own copy of what it defined (valid for the life of the process,
/// whatever happens to the file), else the bounds in shared memory.
///
/// # Safety
/// `r` must be NULL or a region handle.
#[no_mangle]
pub unsafe extern "C" fn shmetrics_family_bounds(r: *const shmetrics_region, fam: u32) -> *const f64 {
    guard(std::ptr::null(), || {
        // SAFETY: caller contract.
        let Ok(r) = (unsafe { region(r) }) else { return std::ptr::null() };
        let own = r.defined_bounds(fam);
        if !own.is_null() {
            return own;
        }
        match r.live_family(fam) {
            // Not `as_ptr()` of an empty slice (a corrupt record's bounds): that
            // is a dangling non-NULL pointer.
            Ok(f) if !r.fam_bounds(f).is_empty() => r.fam_bounds(f).as_ptr(),
            _ => std::ptr::null(),
        }
    })
}

/// The first cell of series `fam{values}`, created if needed. Never blocks.
/// When the family's `max_series` is reached, the overflow series' cell is
/// returned with `SHMETRICS_SERIES_OVERFLOW` added (callers must not cache it).
///
/// # Safety
/// `values`/`lens` must hold `n` valid pointer/length pairs.
#[no_mangle]
pub unsafe extern "C" fn shmetrics_series(
    r: *const shmetrics_region,
    fam: u32,
    values: *const *const c_char,
    lens: *const usize,
    n: u32,
) -> i32 {
    // SAFETY: caller contract, passed on.
    unsafe { with_series(r, values, lens, n, |r, v| Ok(r.series_cell(fam, v)? as i32)) }
}

/// Deletes series `fam{values}`: 1 if it existed, 0 if not.
///
/// # Safety
/// As `shmetrics_series`.
#[no_mangle]
pub unsafe extern "C" fn shmetrics_delete(
    r: *const shmetrics_region,
    fam: u32,
    values: *const *const c_char,
    lens: *const usize,
    n: u32,
) -> i32 {
    // SAFETY: caller contract, passed on.
    unsafe { with_series(r, values, lens, n, |r, v| Ok(r.delete_series(fam, v)? as i32)) }
}

/// Runs `op` on a region and a list of label values, inside the panic guard.
///
/// # Safety
/// `r` NULL or a region handle; `values`/`lens` hold `n` valid pointer/length pairs.
unsafe fn with_series(
    r: *const shmetrics_region,
    values: *const *const c_char,
    lens: *const usize,
    n: u32,
    op: impl FnOnce(&Region, &[&[u8]]) -> Result<i32, Error>,
) -> i32 {
    guard(SHMETRICS_E_INTERNAL, || {
        let run = || -> Result<i32, Error> {
            // SAFETY: caller contract.
            let r = unsafe { region(r) }?;
            // SAFETY: caller contract: `n` pointer/length pairs.
            let values = unsafe { byte_list(values, lens, n, "label values") }?;
            op(r, &values)
        };
        run().unwrap_or_else(|e| fail(&e))
    })
}

/// Deletes every series of family `fam`; returns how many.
///
/// # Safety
/// `r` must be NULL or a region handle.
#[no_mangle]
pub unsafe extern "C" fn shmetrics_reset(r: *const shmetrics_region, fam: u32) -> i32 {
    guard(SHMETRICS_E_INTERNAL, || {
        // SAFETY: caller contract.
        let res = unsafe { region(r) }.and_then(|r| r.reset_family(fam));
        res.map(|n| n.min(i32::MAX as u32) as i32).unwrap_or_else(|e| fail(&e))
    })
}

/// The slot this process writes (claimed on first call; >= 1), or a negative code.
///
/// # Safety
/// `r` must be NULL or a region handle.
#[no_mangle]
pub unsafe extern "C" fn shmetrics_claim_slot(r: *const shmetrics_region) -> i32 {
    guard(SHMETRICS_E_INTERNAL, || {
        // SAFETY: caller contract.
        let res = unsafe { region(r) }.and_then(|r| r.claim_slot());
        res.map(|s| s as i32).unwrap_or_else(|e| fail(&e))
    })
}

/// Slot `slot`'s cell array (slot 0: shared gauge stamps), or NULL if out of range.
///
/// # Safety
/// `r` must be NULL or a region handle.
#[no_mangle]
pub unsafe extern "C" fn shmetrics_slot_cells(r: *const shmetrics_region, slot: u32) -> *mut f64 {
    guard(std::ptr::null_mut(), || {
        // SAFETY: caller contract.
        match unsafe { region(r) } {
            Ok(r) if slot < r.params.max_slots => r.cells(slot),
            _ => std::ptr::null_mut(),
        }
    })
}

/// Copies a message about corrupt records of the region file found by this
/// process into `buf` (at most `cap` bytes, not NUL-terminated) and returns
/// its full length; 0 when there is nothing (new) to log. Rate-limited: at
/// most one message every 10 seconds, which counts the records since the last.
///
/// # Safety
/// `r` must be NULL or a region handle; `buf` NULL or `cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn shmetrics_corrupt_notice(r: *const shmetrics_region, buf: *mut c_char, cap: usize) -> usize {
    guard(0, || {
        // SAFETY: caller contract.
        let Ok(r) = (unsafe { region(r) }) else { return 0 };
        let Some(m) = r.take_notice() else { return 0 };
        if !buf.is_null() {
            let n = m.len().min(cap);
            // SAFETY: `buf` has `cap >= n` writable bytes (caller contract).
            unsafe { std::ptr::copy_nonoverlapping(m.as_ptr(), buf.cast(), n) };
        }
        m.len()
    })
}

/// Counts a hot-path error of `reason` (an index into the reasons list) for this process.
///
/// # Safety
/// `r` must be NULL or a region handle.
#[no_mangle]
pub unsafe extern "C" fn shmetrics_count_error(r: *const shmetrics_region, reason: u32) {
    guard((), || {
        // SAFETY: caller contract.
        if let Ok(r) = unsafe { region(r) } {
            r.count_error(reason)
        }
    })
}

/// Records `v` into a histogram series: the hot path of `observe`, unchecked.
///
/// # Safety
/// `cells` must be the caller's own slot from `shmetrics_slot_cells`, `base` a
/// cell returned by `shmetrics_series` for a histogram family, and
/// `bounds`/`nbounds` that family's bounds from `shmetrics_family_bounds`.
#[no_mangle]
pub unsafe extern "C" fn shmetrics_observe(cells: *mut f64, base: u32, bounds: *const f64, nbounds: u32, v: f64) {
    // No guard: nothing here can panic (no indexing, no allocation), and the
    // guard would cost more than the work.
    // SAFETY: caller contract: `bounds` holds `nbounds` doubles.
    let bounds = unsafe { std::slice::from_raw_parts(bounds, nbounds as usize) };
    // SAFETY: the same contract, passed on from our caller.
    unsafe { store::observe(cells, base, bounds, v) };
}

/// Starts an exposition in `format` (`SHMETRICS_FORMAT_*`) of the families
/// named in `names`/`lens` (`n` of them, at most `SHMETRICS_MAX_FILTER_NAMES`;
/// a counter also matches without `_total`), or of every family when `n` is 0.
///
/// # Safety
/// `r` must be a region handle; `names`/`lens` hold `n` entries; `out` valid.
#[no_mangle]
pub unsafe extern "C" fn shmetrics_render_open(
    r: *const shmetrics_region,
    format: u32,
    names: *const *const c_char,
    lens: *const usize,
    n: u32,
    out: *mut *mut shmetrics_render,
) -> i32 {
    guard(SHMETRICS_E_INTERNAL, || {
        let run = || -> Result<i32, Error> {
            if out.is_null() {
                return Err(Error::invalid("bad argument \"out\": NULL".into()));
            }
            // SAFETY: caller contract, passed on.
            let args = unsafe { render_args(r, format, names, lens, n) }?;
            // SAFETY: `out` checked non-NULL above.
            unsafe { *out = Box::into_raw(Box::new(args.build())) };
            Ok(0)
        };
        run().unwrap_or_else(|e| fail(&e))
    })
}

/// What a render was asked for, checked: the region, the format, the filter.
struct RenderArgs {
    region: &'static Region,
    format: u32,
    filter: Filter,
}

impl RenderArgs {
    fn build(self) -> Render {
        if self.format == SHMETRICS_FORMAT_JSON {
            Render::json(self.region, self.filter)
        } else {
            let fmt = if self.format == SHMETRICS_FORMAT_OPENMETRICS { Format::OpenMetrics } else { Format::Text004 };
            Render::with_filter(self.region, fmt, self.filter)
        }
    }
}

/// Checks the arguments `shmetrics_render_open` and `shmetrics_render_start` share.
///
/// # Safety
/// `r` must be NULL or a region handle; `names`/`lens` hold `n` entries.
unsafe fn render_args(
    r: *const shmetrics_region,
    format: u32,
    names: *const *const c_char,
    lens: *const usize,
    n: u32,
) -> Result<RenderArgs, Error> {
    // SAFETY: caller contract; regions are never freed ('static).
    let region: &'static Region = unsafe { &*(region(r)? as *const Region) };
    // A file cut short or overwritten under us is not read (see check_mapped).
    region.check_mapped()?;
    if !matches!(format, SHMETRICS_FORMAT_TEXT | SHMETRICS_FORMAT_OPENMETRICS | SHMETRICS_FORMAT_JSON) {
        return Err(Error::invalid(format!("bad argument \"format\": {format}")));
    }
    let filter = if n == 0 {
        Filter::all()
    } else if n > SHMETRICS_MAX_FILTER_NAMES || names.is_null() || lens.is_null() {
        return Err(Error::invalid(format!("bad argument \"names\": NULL or more than {SHMETRICS_MAX_FILTER_NAMES}")));
    } else {
        let mut v = Vec::with_capacity(n as usize);
        for i in 0..n as usize {
            // SAFETY: caller contract: n entries, each pointer to its length.
            let name = unsafe { bytes(*names.add(i), *lens.add(i)) }
                .ok_or_else(|| Error::invalid(format!("bad argument \"names\": entry {} is NULL", i + 1)))?;
            v.push(name.to_vec());
        }
        Filter::names(v)
    };
    Ok(RenderArgs { region, format, filter })
}

/// Pages a JSON render: for every family, only its series `offset..offset +
/// limit` among those with a label value containing the `needle_len` bytes at
/// `needle` (every series when `needle_len` is 0), and the number of such series
/// as the family's `"series_count"`. Call after `shmetrics_render_open` with
/// `SHMETRICS_FORMAT_JSON`, before the first `shmetrics_render_next`.
///
/// # Safety
/// `it` from `shmetrics_render_open`, not closed; `needle` holds `needle_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn shmetrics_render_page(
    it: *mut shmetrics_render,
    offset: u64,
    limit: u64,
    needle: *const c_char,
    needle_len: usize,
) -> i32 {
    guard(SHMETRICS_E_INTERNAL, || {
        // SAFETY: caller contract.
        let Some(it) = (unsafe { it.as_mut() }) else {
            return fail(&Error::invalid("bad argument \"it\": NULL".into()));
        };
        // SAFETY: caller contract: `needle_len` bytes at `needle`.
        let Some(needle) = (unsafe { bytes(needle, needle_len) }) else {
            return fail(&Error::invalid("bad argument \"needle\": NULL".into()));
        };
        match it.set_page(offset, limit, needle) {
            Ok(()) => SHMETRICS_OK,
            Err(msg) => fail(&Error::invalid(msg)),
        }
    })
}

/// Renders the next piece (about `hint` bytes). Returns 1 and sets `*chunk`/`*len`
/// (valid until the next call on `it`), or 0 when the exposition is complete.
///
/// # Safety
/// `it` from `shmetrics_render_open`, not closed; `chunk`/`len` valid.
#[no_mangle]
pub unsafe extern "C" fn shmetrics_render_next(
    it: *mut shmetrics_render,
    hint: usize,
    chunk: *mut *const c_char,
    len: *mut usize,
) -> i32 {
    guard(SHMETRICS_E_INTERNAL, || {
        // SAFETY: caller contract.
        let Some(it) = (unsafe { it.as_mut() }) else {
            return fail(&Error::invalid("bad argument \"it\": NULL".into()));
        };
        if chunk.is_null() || len.is_null() {
            return fail(&Error::invalid("bad argument \"chunk\": NULL".into()));
        }
        if !it.next_chunk(hint.max(1)) {
            return 0;
        }
        // SAFETY: checked non-NULL above.
        unsafe {
            *chunk = it.buf.as_ptr().cast();
            *len = it.buf.len();
        }
        1
    })
}

/// Frees an exposition iterator. NULL is ignored.
///
/// # Safety
/// `it` from `shmetrics_render_open`, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn shmetrics_render_close(it: *mut shmetrics_render) {
    guard((), || {
        if !it.is_null() {
            // SAFETY: `it` came from Box::into_raw in render_open and is closed once.
            drop(unsafe { Box::from_raw(it) });
        }
    })
}

/// Starts an exposition, as `shmetrics_render_open` does, rendered on this
/// process's render thread (started by the first call in the process) in
/// pieces of about `hint` bytes, at most `depth` of them (1 to
/// `SHMETRICS_RENDER_MAX_DEPTH`) waiting at a time; take them with
/// `shmetrics_render_poll`. Call it in the process that serves the scrape (an
/// nginx worker), never in one that forks afterwards (the master).
///
/// # Safety
/// As `shmetrics_render_open`.
#[no_mangle]
pub unsafe extern "C" fn shmetrics_render_start(
    r: *const shmetrics_region,
    format: u32,
    names: *const *const c_char,
    lens: *const usize,
    n: u32,
    hint: usize,
    depth: u32,
    out: *mut *mut shmetrics_render_job,
) -> i32 {
    guard(SHMETRICS_E_INTERNAL, || {
        let run = || -> Result<i32, Error> {
            if out.is_null() {
                return Err(Error::invalid("bad argument \"out\": NULL".into()));
            }
            if depth == 0 || depth > SHMETRICS_RENDER_MAX_DEPTH {
                return Err(Error::invalid(format!(
                    "bad argument \"depth\": {depth}; 1 to {SHMETRICS_RENDER_MAX_DEPTH}"
                )));
            }
            // SAFETY: caller contract, passed on.
            let args = unsafe { render_args(r, format, names, lens, n) }?;
            let job = Job::start(Box::new(move || args.build()), hint, depth as usize).map_err(Error::Internal)?;
            // SAFETY: `out` checked non-NULL above.
            unsafe { *out = Box::into_raw(Box::new(job)) };
            Ok(0)
        };
        run().unwrap_or_else(|e| fail(&e))
    })
}

/// Takes the next piece of a job: returns 1 and sets `*chunk`/`*len` (valid
/// until the next call on `it`), `SHMETRICS_RENDER_PENDING` when it is not
/// rendered yet, 0 when the exposition is complete, or a negative code.
/// Never blocks (but for a lock the render thread holds only to move a piece).
///
/// # Safety
/// `it` from `shmetrics_render_start`, not stopped; `chunk`/`len` valid.
#[no_mangle]
pub unsafe extern "C" fn shmetrics_render_poll(
    it: *mut shmetrics_render_job,
    chunk: *mut *const c_char,
    len: *mut usize,
) -> i32 {
    guard(SHMETRICS_E_INTERNAL, || {
        // SAFETY: caller contract.
        let Some(it) = (unsafe { it.as_mut() }) else {
            return fail(&Error::invalid("bad argument \"it\": NULL".into()));
        };
        if chunk.is_null() || len.is_null() {
            return fail(&Error::invalid("bad argument \"chunk\": NULL".into()));
        }
        match it.poll() {
            Poll::Piece => {
                // SAFETY: checked non-NULL above.
                unsafe {
                    *chunk = it.current.as_ptr().cast();
                    *len = it.current.len();
                }
                1
            }
            Poll::Pending => SHMETRICS_RENDER_PENDING,
            Poll::Done => 0,
            Poll::Failed(m) => fail(&Error::Internal(m)),
        }
    })
}

/// Stops a job (complete or not) and frees it: the render thread drops its
/// work on it before rendering anything else. NULL is ignored.
///
/// # Safety
/// `it` from `shmetrics_render_start`, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn shmetrics_render_stop(it: *mut shmetrics_render_job) {
    guard((), || {
        if !it.is_null() {
            // SAFETY: `it` came from Box::into_raw in render_start and is stopped once.
            drop(unsafe { Box::from_raw(it) });
        }
    })
}

/// Jobs of this process the render thread still holds (started, and neither
/// finished nor dropped after a stop): 0 when no scrape is in progress.
#[no_mangle]
pub extern "C" fn shmetrics_render_jobs() -> u32 {
    guard(0, || offload::live_jobs().min(u32::MAX as usize) as u32)
}
