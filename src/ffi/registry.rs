//! Families and series: define, look up, delete.

use std::ffi::c_char;

use super::*;
use crate::layout::KIND_HISTOGRAM;
use crate::registry::FamilyDef;

/// Most bucket bounds `shmetrics_family` reads from its caller. Only a bound on
/// the slice built from the caller's pointer (a garbage count must not make a
/// slice of gigabytes): the definition itself allows `MAX_BUCKETS` finite
/// bounds (and a trailing `+Inf`) and refuses more with its own message.
const MAX_BOUNDS_READ: u32 = 4096;

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
    guard(|| {
        // SAFETY: caller contract for every pointer below.
        let r = unsafe { region_arg(r) }?;
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
        } else if bounds.is_null() || nbounds > MAX_BOUNDS_READ {
            return Err(Error::invalid("bad argument \"buckets\": NULL or too many".into()));
        } else {
            // SAFETY: non-NULL, and `nbounds` doubles by the caller's contract.
            unsafe { std::slice::from_raw_parts(bounds, nbounds as usize) }
        };
        // 0: the default limit, so that no family can take every series.
        let max_series = if max_series == 0 { r.params.default_family_cap() } else { max_series };
        let def = FamilyDef { kind, name, help, labels: &labels, bounds, max_series };
        let fam = if replace { r.define_family_replacing(&def)? } else { r.define_family(&def)? };
        Ok(fam as i32)
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
    guard(|| {
        // SAFETY: caller contract.
        let r = unsafe { region_arg(r) }?;
        let name = if name_len == 0 {
            &[][..]
        } else {
            // SAFETY: caller contract.
            unsafe { bytes(name, name_len) }.ok_or_else(|| Error::invalid("bad argument \"name\": NULL".into()))?
        };
        crate::scrape::set_error_metric(r, name)?;
        Ok(SHMETRICS_OK)
    })
}

/// Pointer to family `fam`'s deletion generation (changes on `del`/`reset`), or NULL.
///
/// # Safety
/// `r` must be NULL or a region handle.
#[no_mangle]
pub unsafe extern "C" fn shmetrics_family_gen(r: *const shmetrics_region, fam: u32) -> *const u32 {
    guard(|| {
        // SAFETY: caller contract.
        let Ok(r) = (unsafe { region_arg(r) }) else { return Ok(std::ptr::null()) };
        match r.live_family(fam) {
            Ok(f) => Ok(f.gen.as_ptr() as *const u32),
            Err(e) => {
                // The message is kept (the NULL alone does not say why).
                set_last(e.message());
                Ok(std::ptr::null())
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
    guard(|| {
        // SAFETY: caller contract.
        let Ok(r) = (unsafe { region_arg(r) }) else { return Ok(std::ptr::null()) };
        let own = r.defined_bounds(fam);
        if !own.is_null() {
            return Ok(own);
        }
        Ok(match r.live_family(fam) {
            // Not `as_ptr()` of an empty slice (a corrupt record's bounds): that
            // is a dangling non-NULL pointer.
            Ok(f) if !r.family_bounds(f).is_empty() => r.family_bounds(f).as_ptr(),
            _ => std::ptr::null(),
        })
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
    guard(|| {
        // SAFETY: caller contract.
        let r = unsafe { region_arg(r) }?;
        // SAFETY: caller contract: `n` pointer/length pairs.
        let values = unsafe { byte_list(values, lens, n, "label values") }?;
        op(r, &values)
    })
}

/// Deletes every series of family `fam`; returns how many.
///
/// # Safety
/// `r` must be NULL or a region handle.
#[no_mangle]
pub unsafe extern "C" fn shmetrics_reset(r: *const shmetrics_region, fam: u32) -> i32 {
    guard(|| {
        // SAFETY: caller contract.
        let n = unsafe { region_arg(r) }?.reset_family(fam)?;
        Ok(n.min(i32::MAX as u32) as i32)
    })
}
