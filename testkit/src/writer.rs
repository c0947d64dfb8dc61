//! The cell writes of `lua/resty/shmetrics.lua`'s hot path, in Rust: how the tests
//! and the fuzz targets write as a worker does. The one Rust copy of the writer's
//! side of the cell protocol (`docs/layout.md` §5); `tests/header.rs` and
//! `tests/abi.rs` check that Lua's constants are the library's. (A histogram's
//! `observe` is the library's own `shmetrics_observe`, which Lua calls.)
//!
//! Each store is one 8-byte word, as LuaJIT's FFI stores a `double`: a concurrent
//! reader sees the old or the new value whole.

use std::sync::atomic::{AtomicU64, Ordering};

use shmetrics::layout::{CELL_GAUGE_SEQ, SHARED_SLOT, STAMP_SLOTS};
use shmetrics::region::Region;

/// A process's own slot's cells, and the shared slot's.
pub struct Cells {
    own: *mut f64,
    shared: *mut f64,
    slot: u32,
}

impl Cells {
    /// # Safety
    /// `own` and `shared` are the cells of slot `slot` and of the shared slot of one
    /// region; the caller is the slot's only writer.
    pub unsafe fn new(own: *mut f64, shared: *mut f64, slot: u32) -> Cells {
        Cells { own, shared, slot }
    }

    /// Slot `slot` of `r` (its cells from the Rust API).
    ///
    /// # Safety
    /// The caller is the slot's only writer.
    pub unsafe fn of(r: &Region, slot: u32) -> Cells {
        Cells { own: r.cells(slot), shared: r.cells(SHARED_SLOT), slot }
    }

    /// # Safety (of every accessor below)
    /// `i` is below the region's `max_cells`.
    unsafe fn word(p: *mut f64, i: u32) -> &'static AtomicU64 {
        // SAFETY: in the slot's cells (caller); cells are 8-aligned in the mapping and
        // AtomicU64 has the layout of f64.
        unsafe { &*(p.add(i as usize) as *const AtomicU64) }
    }

    unsafe fn get(p: *mut f64, i: u32) -> f64 {
        // Relaxed: the writer reads its own slot (or the stamp it compares with),
        // as Lua does; nothing else is published through these loads.
        // SAFETY: `i` in range (this function's contract).
        f64::from_bits(unsafe { Self::word(p, i) }.load(Ordering::Relaxed))
    }

    unsafe fn put(p: *mut f64, i: u32, v: f64) {
        // Relaxed: one writer per slot; readers sum whatever word they see.
        // SAFETY: `i` in range (this function's contract).
        unsafe { Self::word(p, i) }.store(v.to_bits(), Ordering::Relaxed);
    }

    /// `counter:inc(v)`.
    ///
    /// # Safety
    /// `base` is a counter series' cell.
    pub unsafe fn counter_add(&self, base: u32, v: f64) {
        // SAFETY: `base` in range (caller).
        unsafe { Self::put(self.own, base, Self::get(self.own, base) + v) };
    }

    /// `gauge:set(v)`: a stamp from the slot's own sequence, the value and stamp in
    /// the slot, then the stamp published in the shared slot.
    ///
    /// # Safety
    /// `base` is a gauge series' first cell.
    pub unsafe fn gauge_set(&self, base: u32, v: f64) {
        // SAFETY (all four cells of the gauge and the slot's sequence cell): caller.
        unsafe {
            let seq = Self::get(self.own, CELL_GAUGE_SEQ) + 1.0;
            Self::put(self.own, CELL_GAUGE_SEQ, seq);
            let stamp = seq * STAMP_SLOTS as f64 + self.slot as f64;
            Self::put(self.own, base, v);
            Self::put(self.own, base + 1, stamp);
            Self::put(self.shared, base, stamp);
        }
    }

    /// `gauge:inc(v)` (and `dec`): deltas count only since the last set.
    ///
    /// # Safety
    /// `base` is a gauge series' first cell.
    pub unsafe fn gauge_inc(&self, base: u32, v: f64) {
        // SAFETY: as gauge_set.
        unsafe {
            let stamp = Self::get(self.shared, base);
            if Self::get(self.own, base + 3) != stamp {
                Self::put(self.own, base + 2, 0.0);
                Self::put(self.own, base + 3, stamp);
            }
            Self::put(self.own, base + 2, Self::get(self.own, base + 2) + v);
        }
    }
}
