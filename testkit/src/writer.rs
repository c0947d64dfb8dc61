//! The cell writes of Lua's hot path (`lua/resty/shmetrics/metrics.lua`), in Rust,
//! through raw cell pointers as Lua holds them: how the fuzz targets write as a
//! worker does. The offsets are the layout's (`GAUGE_*`); the rule is
//! `shmetrics::cells`' (`gauge_set`, `gauge_add`), and a test below checks that
//! both leave the same cells; `tests/abi.rs` checks that Lua's constants are the
//! library's. (A histogram's
//! `observe` is the library's own `shmetrics_observe`, which Lua calls.)
//!
//! Each store is one 8-byte word, as LuaJIT's FFI stores a `double`: a concurrent
//! reader sees the old or the new value whole.

use std::sync::atomic::{AtomicU64, Ordering};

use shmetrics::layout::{
    CELL_GAUGE_SEQ, GAUGE_DELTA, GAUGE_DELTA_STAMP, GAUGE_SET_STAMP, GAUGE_SET_VALUE, GAUGE_SHARED_STAMP, SHARED_SLOT,
    STAMP_SLOTS,
};
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
            Self::put(self.own, base + GAUGE_SET_VALUE, v);
            Self::put(self.own, base + GAUGE_SET_STAMP, stamp);
            Self::put(self.shared, base + GAUGE_SHARED_STAMP, stamp);
        }
    }

    /// `gauge:inc(v)` (and `dec`): deltas count only since the last set.
    ///
    /// # Safety
    /// `base` is a gauge series' first cell.
    pub unsafe fn gauge_inc(&self, base: u32, v: f64) {
        // SAFETY: as gauge_set.
        unsafe {
            let stamp = Self::get(self.shared, base + GAUGE_SHARED_STAMP);
            if Self::get(self.own, base + GAUGE_DELTA_STAMP) != stamp {
                Self::put(self.own, base + GAUGE_DELTA, 0.0);
                Self::put(self.own, base + GAUGE_DELTA_STAMP, stamp);
            }
            Self::put(self.own, base + GAUGE_DELTA, Self::get(self.own, base + GAUGE_DELTA) + v);
        }
    }
}

#[cfg(test)]
mod tests {
    use shmetrics::cells;
    use shmetrics::layout::{Params, GAUGE_CELLS, RESERVED_CELLS};
    use shmetrics::region::{self, Region};

    use super::Cells;
    use crate::shm::Shm;

    fn open(shm: &Shm) -> &'static Region {
        let p =
            Params { max_series: 16, max_families: 4, max_slots: 4, max_label_bytes: 64, max_cells: 0, arena_bytes: 0 };
        region::open(&shm.path, p, false).unwrap_or_else(|e| panic!("open {}: {e}", shm.path.display())).0
    }

    /// The raw-pointer writer (as Lua writes) and the library's rule leave the
    /// same cells after the same sets and incs from three slots.
    #[test]
    fn the_writer_follows_the_library_rule() {
        let (sa, sb) = (Shm::new("writer-rule-a"), Shm::new("writer-rule-b"));
        let (a, b) = (open(&sa), open(&sb));
        let base = RESERVED_CELLS;
        let ops: [(u32, bool, f64); 8] = [
            (2, false, 5.0),
            (1, true, 10.0),
            (2, false, 2.5),
            (3, false, -1.0),
            (3, true, 1.0),
            (1, false, 4.0),
            (2, true, 7.0),
            (2, false, 0.5),
        ];
        for (slot, set, v) in ops {
            // SAFETY: each slot is written by this thread alone; the gauge's cells and
            // the sequence cell are below max_cells (RESERVED_CELLS + GAUGE_CELLS).
            unsafe {
                let w = Cells::of(b, slot);
                if set {
                    cells::gauge_set(a, slot, base, v);
                    w.gauge_set(base, v);
                } else {
                    cells::gauge_add(a, slot, base, v);
                    w.gauge_inc(base, v);
                }
            }
        }
        for slot in 0..4 {
            for i in (0..RESERVED_CELLS).chain(base..base + GAUGE_CELLS) {
                assert_eq!(a.cell(slot, i).to_bits(), b.cell(slot, i).to_bits(), "slot {slot} cell {i}");
            }
        }
    }
}
