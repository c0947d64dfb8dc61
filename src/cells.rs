//! The cell semantics, written once: what a counter add, a gauge set or
//! delta and a histogram observe store, and how a reader turns cells into a
//! value. Lua's hot path writes the same cells (`lua/resty/shmetrics.lua`,
//! checked against this by the tests); every Rust writer and reader uses these.
//!
//! A series owns [`Kind::cells`] consecutive cells in every slot, from the
//! cell its record names. A slot is written by its owner alone (see `slots`),
//! so a write is a relaxed load and store of whole 8-byte words: exact for
//! the single writer, and never torn for a reader (layout.md §4.2).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::layout::*;
use crate::region::Region;

/// Adds `v` to cell `idx` of the calling process's own slot: a counter's
/// `inc`, a histogram bucket, a reserved error counter.
///
/// # Safety
/// `slot < max_slots`, `idx < max_cells`, and `slot` is the caller's own
/// slot (or load+store would lose another writer's update).
#[inline]
pub unsafe fn add_unchecked(r: &Region, slot: u32, idx: u32, v: f64) {
    // SAFETY: bounds by the caller's contract.
    let a = unsafe { r.cell_word(slot, idx) };
    // Relaxed: only the slot's owner writes it, so load+store is not a lost
    // update; readers need no ordering with other cells (layout.md §4.2).
    let old = f64::from_bits(a.load(Ordering::Relaxed));
    a.store((old + v).to_bits(), Ordering::Relaxed);
}

/// Adds to a cell of the calling process's own slot (single writer).
///
/// # Panics
/// If `slot >= max_slots` or `idx >= max_cells` (checked in release builds).
#[inline]
pub fn add(r: &Region, slot: u32, idx: u32, v: f64) {
    assert!(slot < r.params.max_slots && idx < r.params.max_cells, "cell {slot}:{idx} out of range");
    // SAFETY: both bounds checked just above; one writer per slot is the
    // slot protocol (a wrong slot loses updates, never memory).
    unsafe { add_unchecked(r, slot, idx, v) }
}

/// Sets gauge series `base` to `v` from the calling process's slot `slot`:
/// the value and a fresh stamp in its own cells, then the stamp in the
/// shared slot, last, which makes this set the one readers use (the order
/// Lua's `gauge:set` follows).
///
/// # Safety
/// `0 < slot < max_slots` is the caller's own slot and `base + GAUGE_CELLS
/// <= max_cells` (a gauge series' cells).
pub unsafe fn gauge_set(r: &Region, slot: u32, base: u32, v: f64) {
    // SAFETY: every cell below is in range by the contract; CELL_GAUGE_SEQ
    // and the gauge's cells are in the caller's own slot, GAUGE_SHARED_STAMP
    // in slot 0, which every writer stores whole words into.
    unsafe {
        let seq = r.cell_unchecked(slot, CELL_GAUGE_SEQ) + 1.0;
        store(r, slot, CELL_GAUGE_SEQ, seq);
        let stamp = seq * STAMP_SLOTS as f64 + slot as f64;
        store(r, slot, base + GAUGE_SET_VALUE, v);
        store(r, slot, base + GAUGE_SET_STAMP, stamp);
        store(r, SHARED_SLOT, base + GAUGE_SHARED_STAMP, stamp);
    }
}

/// Adds `v` to gauge series `base` from the calling process's slot: its
/// delta counts only since the last set of any writer (whose stamp is
/// shared), so a delta made before that set is dropped first (Lua's `gauge:inc`).
///
/// # Safety
/// As [`gauge_set`].
pub unsafe fn gauge_add(r: &Region, slot: u32, base: u32, v: f64) {
    // SAFETY: as in gauge_set.
    unsafe {
        let stamp = r.cell_unchecked(SHARED_SLOT, base + GAUGE_SHARED_STAMP);
        if r.cell_unchecked(slot, base + GAUGE_DELTA_STAMP) != stamp {
            store(r, slot, base + GAUGE_DELTA, 0.0);
            store(r, slot, base + GAUGE_DELTA_STAMP, stamp);
        }
        add_unchecked(r, slot, base + GAUGE_DELTA, v);
    }
}

/// # Safety
/// `slot < max_slots`, `idx < max_cells`, and the caller may write the cell.
#[inline]
unsafe fn store(r: &Region, slot: u32, idx: u32, v: f64) {
    // SAFETY: bounds by the caller's contract.
    let a = unsafe { r.cell_word(slot, idx) };
    // Relaxed: whole-word stores that readers take one by one (see gauge_value).
    a.store(v.to_bits(), Ordering::Relaxed);
}

/// A gauge's value: the last `set` (the slot named by the shared stamp) plus
/// every slot's `inc` deltas made since that set. `slots` are the slots to
/// sum (every slot ever claimed).
///
/// # Safety
/// `base + GAUGE_CELLS <= max_cells` and every slot in `slots` is below `max_slots`.
pub unsafe fn gauge_value(r: &Region, slots: &[u32], base: u32) -> f64 {
    // Every cell read below is in base..base + GAUGE_CELLS (in range by the
    // contract), of slot 0, a slot of `slots` or the stamp's slot (checked):
    // all below max_slots.
    // SAFETY: as just said.
    let stamp = unsafe { r.cell_unchecked(SHARED_SLOT, base + GAUGE_SHARED_STAMP) };
    let mut v = 0.0;
    if stamp > 0.0 {
        let slot = (stamp % STAMP_SLOTS as f64) as u32;
        if slot > 0 && slot < r.params.max_slots {
            // SAFETY: as above.
            v = unsafe { r.cell_unchecked(slot, base + GAUGE_SET_VALUE) };
        }
    }
    for &s in slots {
        // SAFETY: as above.
        if unsafe { r.cell_unchecked(s, base + GAUGE_DELTA_STAMP) } == stamp {
            // SAFETY: as above.
            v += unsafe { r.cell_unchecked(s, base + GAUGE_DELTA) };
        }
    }
    v
}

/// Sum of cell `idx` over `slots`: a counter's value, a histogram bucket's
/// count or its sum.
///
/// # Safety
/// `idx < max_cells` and every slot in `slots` is below `max_slots`.
#[inline]
pub unsafe fn sum(r: &Region, slots: &[u32], idx: u32) -> f64 {
    // SAFETY: idx by the caller's contract; slots below max_slots.
    slots.iter().map(|&s| unsafe { r.cell_unchecked(s, idx) }).sum()
}

/// Adds `v` to a histogram series: one bucket cell and the sum cell.
///
/// Cell layout from `base`: `nbounds + 1` non-cumulative bucket counts (the
/// last is `+Inf`), then the sum.
///
/// # Safety
/// `cells` must be the calling process's own slot (single writer) and `base`
/// the first cell of a histogram series whose family has exactly `bounds`, so
/// that cells `base..base + bounds.len() + 2` belong to it.
#[inline]
pub unsafe fn observe(cells: *mut f64, base: u32, bounds: &[f64], v: f64) {
    // The bucket is the number of bounds below v (bounds increase strictly):
    // counted without branches, so random values cost no mispredictions, and
    // LLVM compares four bounds per instruction.
    // NaN (refused by the Lua module; possible from C) goes to +Inf.
    let i = if v.is_nan() { bounds.len() } else { bounds.iter().filter(|&&b| b < v).count() };
    let add = |idx: usize, d: f64| {
        // SAFETY: the caller passes its own slot and a series' base; the series
        // owns cells base..base+nbounds+2 (allocated with ncells = nbounds + 2).
        let a = unsafe { &*(cells.add(base as usize + idx) as *const AtomicU64) };
        // Single writer (the slot's owner): a relaxed load and store are exact, and
        // the 8-byte store is what concurrent readers see whole.
        a.store((f64::from_bits(a.load(Ordering::Relaxed)) + d).to_bits(), Ordering::Relaxed);
    };
    add(i, 1.0);
    add(bounds.len() + 1, v);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region() -> &'static Region {
        let p =
            Params { max_series: 16, max_families: 4, max_slots: 4, max_label_bytes: 64, max_cells: 0, arena_bytes: 0 };
        Region::heap(p)
    }

    #[test]
    fn a_gauge_is_the_last_set_plus_the_deltas_since() {
        let r = region();
        let base = RESERVED_CELLS;
        let slots = [1, 2, 3];
        // SAFETY: a private heap region; slots 1..=3 < max_slots and the
        // gauge's cells base..base + 4 < max_cells; each slot written by this
        // thread alone.
        unsafe {
            assert_eq!(gauge_value(r, &slots, base), 0.0);
            gauge_add(r, 2, base, 5.0);
            assert_eq!(gauge_value(r, &slots, base), 5.0, "deltas before any set count");
            gauge_set(r, 1, base, 10.0);
            assert_eq!(gauge_value(r, &slots, base), 10.0, "a set drops the deltas made before it");
            gauge_add(r, 2, base, 2.5);
            gauge_add(r, 3, base, -1.0);
            assert_eq!(gauge_value(r, &slots, base), 11.5);
            gauge_set(r, 3, base, 1.0);
            gauge_add(r, 1, base, 4.0);
            assert_eq!(gauge_value(r, &slots, base), 5.0, "the newest set, from another slot");
        }
    }

    #[test]
    fn observe_counts_one_bucket_and_the_sum() {
        let r = region();
        let base = RESERVED_CELLS;
        let bounds = [0.1, 1.0];
        // SAFETY: as above; the histogram's cells base..base + 4 are in range.
        unsafe {
            for v in [0.05, 0.1, 0.5, 2.0, f64::NAN] {
                observe(r.cells(1), base, &bounds, v);
            }
            let cells: Vec<f64> = (0..4).map(|i| sum(r, &[1, 2], base + i)).collect();
            assert_eq!(&cells[..3], &[2.0, 1.0, 2.0], "le 0.1 (inclusive), le 1, +Inf (NaN included)");
            assert!(cells[3].is_nan(), "the sum of a NaN observation");
        }
        add(r, 2, base, 3.0);
        // SAFETY: as above.
        assert_eq!(unsafe { sum(r, &[1, 2], base) }, 5.0);
    }
}
