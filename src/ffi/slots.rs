//! Slots and their cells: the calls behind the Lua hot path.

use std::ffi::c_char;

use super::*;
use crate::cells;

/// The slot this process writes (claimed on first call; >= 1), or a negative code.
///
/// # Safety
/// `r` must be NULL or a region handle.
#[no_mangle]
pub unsafe extern "C" fn shmetrics_claim_slot(r: *const shmetrics_region) -> i32 {
    guard(|| {
        // SAFETY: caller contract.
        Ok(unsafe { region_arg(r) }?.claim_slot()? as i32)
    })
}

/// Slot `slot`'s cell array (slot 0: shared gauge stamps), or NULL if out of range.
///
/// # Safety
/// `r` must be NULL or a region handle.
#[no_mangle]
pub unsafe extern "C" fn shmetrics_slot_cells(r: *const shmetrics_region, slot: u32) -> *mut f64 {
    guard(|| {
        // SAFETY: caller contract.
        Ok(match unsafe { region_arg(r) } {
            Ok(r) if slot < r.params.max_slots => r.cells(slot),
            _ => std::ptr::null_mut(),
        })
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
    guard(|| {
        // SAFETY: caller contract.
        let Ok(r) = (unsafe { region_arg(r) }) else { return Ok(0) };
        let Some(m) = r.take_notice() else { return Ok(0) };
        if !buf.is_null() {
            let n = m.len().min(cap);
            // SAFETY: `buf` has `cap >= n` writable bytes (caller contract).
            unsafe { std::ptr::copy_nonoverlapping(m.as_ptr(), buf.cast(), n) };
        }
        Ok(m.len())
    })
}

/// Counts a hot-path error of `reason` (an index into the reasons list) for this process.
///
/// # Safety
/// `r` must be NULL or a region handle.
#[no_mangle]
pub unsafe extern "C" fn shmetrics_count_error(r: *const shmetrics_region, reason: u32) {
    guard(|| {
        // SAFETY: caller contract.
        if let Ok(r) = unsafe { region_arg(r) } {
            r.count_error(reason)
        }
        Ok(())
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
    // The one function without `guard`: nothing here can panic (no indexing,
    // no allocation), and the guard would cost more than the work.
    // SAFETY: caller contract: `bounds` holds `nbounds` doubles.
    let bounds = unsafe { std::slice::from_raw_parts(bounds, nbounds as usize) };
    // SAFETY: the same contract, passed on from our caller.
    unsafe { cells::observe(cells, base, bounds, v) };
}
