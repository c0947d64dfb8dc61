//! The registries of families and series: defining a family, finding or
//! creating a series, deleting; built on one index probe (`probe.rs`) and one
//! label-key encoding (`key.rs`).
//!
//! # The registries
//!
//! Families and series live in dense, append-only tables (`families`, `series`)
//! and are found through open-addressing hash indexes of `u32` (0 = empty, else
//! `id + 1`). Nothing is ever removed from an index; `del` marks a series
//! `DELETED`, and lookups step over it.
//!
//! Insertion is lock-free:
//!
//! 1. claim a dense id with a compare-and-swap on the table's `used` counter;
//! 2. allocate arena bytes and cells the same way, and write the entry in state
//!    `WRITING` (no reader can reach it yet);
//! 3. publish it with a compare-and-swap of an empty index position from 0 to
//!    `id + 1` (`Release`), probing from the key's hash;
//! 4. if another process published the same key first, mark ours `ORPHAN` and
//!    use theirs; otherwise store `LIVE`.
//!
//! A process killed between any two steps leaves an entry that is unreachable
//! (steps 1–2) or reachable and complete (after 3): never a half-written one,
//! and no lock is left held. An entry left in `WRITING` after step 3 is marked
//! `LIVE` by the next process that finds it through the index.
//!
//! # The reader protocol (exposition)
//!
//! 1. load `families_used` and `series_used` (`Acquire`);
//! 2. for each id below them, load `state` (`Acquire`) and take only `LIVE`
//!    entries: their fields and arena bytes were written before the `Release`
//!    that made them `LIVE` and never change again;
//! 3. for each series, load each cell of each claimed slot with an 8-byte
//!    relaxed load and add them up. A cell only ever grows between reads for a
//!    counter, so sums never decrease; a histogram's `+Inf` bucket and `_count`
//!    come from the same loads, so they agree.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::layout::*;
use crate::region::Region;

mod families;
mod key;
mod probe;
mod series;

pub use families::{FamilyDef, FamilyView};
pub use key::decode_key;

/// A user-supplied name for a message: at most 128 bytes of it.
pub(crate) fn show(b: &[u8]) -> String {
    const MAX: usize = 128;
    if b.len() <= MAX {
        return String::from_utf8_lossy(b).into_owned();
    }
    format!("{}... ({} bytes)", String::from_utf8_lossy(&b[..MAX]), b.len())
}

/// Bumps `counter` by `n` unless that passes `limit`; returns the old value.
pub(crate) fn bump_u32(counter: &AtomicU32, n: u32, limit: u32) -> Option<u32> {
    // Relaxed: the counter only hands out disjoint ranges; what is written into
    // a range is published later by the index CAS (Release).
    counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_add(n).filter(|&e| e <= limit)).ok()
}

impl Region {
    pub(crate) fn alloc_arena(&self, len: usize, align: u32) -> Option<u32> {
        let len = u64::try_from(len).ok()?;
        let limit = self.params.arena_bytes;
        let mut start = 0;
        // Relaxed: hands out disjoint ranges only (see bump_u32).
        self.header()
            .arena_used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                start = v.div_ceil(align as u64) * align as u64;
                Some(start + len).filter(|&e| e <= limit)
            })
            .ok()?;
        Some(start as u32)
    }

    /// Copies `parts` one after another into fresh arena space.
    pub(crate) fn arena_put(&self, parts: &[&[u8]], align: u32) -> Option<u32> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let off = self.alloc_arena(len, align)?;
        let mut at = off;
        for p in parts {
            // SAFETY: `off..off+len` was allocated to us just above and lies within
            // the arena; nobody reads it before we publish.
            unsafe { std::ptr::copy_nonoverlapping(p.as_ptr(), self.arena_mut(at), p.len()) };
            at += p.len() as u32;
        }
        Some(off)
    }
}

/// Every name a family takes in either exposition format.
pub fn exposed_names(name: &[u8], kind: u32) -> Vec<Vec<u8>> {
    let mut v = vec![name.to_vec()];
    match kind {
        KIND_COUNTER => {
            let base = name.strip_suffix(b"_total").unwrap_or(name);
            v.push(base.to_vec());
            v.push([base, b"_total"].concat());
        }
        KIND_HISTOGRAM => {
            for s in [&b"_bucket"[..], b"_count", b"_sum"] {
                v.push([name, s].concat());
            }
        }
        _ => {}
    }
    v.dedup();
    v
}

/// Whether an entry reached through an index may be used, promoting it to
/// `LIVE` if its creator died between publishing it and marking it live: an
/// entry in an index is complete (its fields were written before the `Release`
/// that published it), so finishing the creator's last step is safe.
pub(crate) fn usable(state: &AtomicU32) -> bool {
    match State::from_raw(state.load(Ordering::Acquire)) {
        Some(State::Live) => true,
        Some(State::Writing) => {
            // Release: publishes LIVE to the exposition like the creator would have.
            let r = state.compare_exchange(STATE_WRITING, STATE_LIVE, Ordering::AcqRel, Ordering::Acquire);
            matches!(r, Ok(_) | Err(STATE_LIVE))
        }
        _ => false,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! Pure checks, runnable under Miri: key decoding, range checks, record
    //! validation, lookups and rendering on a heap region
    //! (`MIRIFLAGS=-Zmiri-ignore-leaks cargo +nightly miri test --lib -- registry:: records:: hash:: json::`;
    //! regions are leaked on purpose, as mapped ones live as long as the process).
    //! The file-backed tests (`tests/*.rs`) cannot run under Miri: they `mmap`
    //! files, fork, signal and read `/proc`.

    use super::*;
    use crate::records::cells_in_range;

    pub(crate) fn params() -> Params {
        Params { max_series: 64, max_families: 8, max_slots: 3, max_label_bytes: 64, max_cells: 0, arena_bytes: 0 }
    }

    pub(crate) fn histogram(r: &Region) -> u32 {
        let labels: [&[u8]; 1] = [b"route"];
        let def = FamilyDef {
            kind: KIND_HISTOGRAM,
            name: b"lat",
            help: b"h",
            labels: &labels,
            bounds: &[0.1, 1.0],
            max_series: 0,
        };
        r.define_family(&def).unwrap()
    }

    #[test]
    fn a_sound_region_passes() {
        let r = Region::heap(params());
        let fam = histogram(r);
        let v = r.family_view(fam).unwrap();
        assert_eq!((v.kind, v.cells, v.bounds.as_slice()), (Kind::Histogram, 4, &[0.1, 1.0][..]));
        let cell = r.series_cell(fam, &[b"/a"]).unwrap();
        assert!(cells_in_range(cell, 4, r.params.max_cells));
        assert_eq!(r.take_notice(), None);
    }

    #[test]
    fn a_corrupt_family_record_is_refused_counted_and_described() {
        let r = Region::heap(params());
        let fam = histogram(r);
        // SAFETY: a private heap region; no other thread uses it.
        unsafe { std::ptr::addr_of_mut!((*r.family_ptr(fam)).nbounds).write_volatile(200) };
        let e = r.series_cell(fam, &[b"/a"]).unwrap_err();
        assert!(e.message().contains("is corrupt: family record 0: 200 bucket bounds"), "{e}");
        assert!(e.message().ends_with("remove the file or set reset = true, then restart nginx"), "{e}");
        assert_eq!(r.corrupt_counts(&[])[CORRUPT_FAMILY as usize], 1.0, "counted once (no slot: the header)");
        let _ = r.series_cell(fam, &[b"/b"]);
        assert_eq!(r.corrupt_counts(&[])[CORRUPT_FAMILY as usize], 1.0, "the same record is counted once");
        let notice = r.take_notice().expect("a notice");
        assert!(notice.contains(&r.path.display().to_string()), "{notice}");
        assert_eq!(r.take_notice(), None, "one notice per interval");
        // What this process hands its writers does not depend on the record.
        assert!(!r.defined_bounds(fam).is_null());
    }

    #[test]
    fn a_corrupt_series_cell_is_never_returned() {
        let r = Region::heap(params());
        let fam = histogram(r);
        let cell = r.series_cell(fam, &[b"/a"]).unwrap();
        // The cell field of the live series: past the slot's end.
        // SAFETY: a private heap region; no other thread uses it.
        unsafe { std::ptr::addr_of_mut!((*r.series_ptr(0)).cell).write_volatile(r.params.max_cells - 1) };
        let e = r.series_cell(fam, &[b"/a"]).unwrap_err();
        assert!(e.message().contains("series record 0"), "{e}");
        // SAFETY: as above.
        unsafe { std::ptr::addr_of_mut!((*r.series_ptr(0)).cell).write_volatile(cell) };
        assert_eq!(r.series_cell(fam, &[b"/a"]).unwrap(), cell);
    }
}
