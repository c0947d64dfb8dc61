//! The hash-index probe, written once. An index is an open-addressing table
//! of `u32` (0 = free, else `id + 1`) with twice the entries of the table it
//! indexes; nothing is ever removed from it. A probe starts at the key's hash
//! and steps one position at a time; every position is looked at most once
//! in all, so a corrupt index with no free entry ends the probe instead of
//! looping forever.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::Error;
use crate::layout::*;
use crate::region::Region;

/// How corrupt index entries are told apart when counted once each: a
/// position in the series index, one in the family index with this bit set,
/// and "no free entry" with [`INDEX_FULL_TAG`].
const FAMILY_INDEX_TAG: u32 = 1 << 31;
const INDEX_FULL_TAG: u32 = 1 << 30;

/// Which index a probe walks.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Index {
    Family,
    Series,
}

/// What one look at an index position found.
pub(crate) enum Look {
    /// A free entry (`0`).
    Free,
    /// Entry `id + 1`, an id that was handed out.
    Taken(u32),
    /// An entry naming an id never handed out (a corrupt file; reported).
    Corrupt,
}

/// The positions of one probe: from the hash on, each at most once.
pub(crate) struct Probe {
    next: u32,
    left: u32,
    again: bool,
}

impl Probe {
    /// A probe of `index` of `r` for a key whose hash is `hash`.
    pub(crate) fn new(r: &Region, index: Index, hash: u32) -> Probe {
        let left = match index {
            Index::Family => r.off.family_index_cap,
            Index::Series => r.off.series_index_cap,
        };
        Probe { next: hash, left, again: false }
    }

    /// The next position to look at, or `None` when all were looked at.
    pub(crate) fn next_pos(&mut self) -> Option<u32> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        if !self.again {
            self.next = self.next.wrapping_add(1);
        }
        self.again = false;
        Some(self.next.wrapping_sub(1))
    }

    /// Makes the next look at the position just returned again (its entry
    /// changed under a compare-and-swap); it counts as a look.
    pub(crate) fn look_again(&mut self) {
        self.again = true;
    }
}

impl Region {
    /// Index entry `pos` (masked to the index's size).
    pub(crate) fn index_entry(&self, index: Index, pos: u32) -> &AtomicU32 {
        match index {
            Index::Family => self.family_index(pos),
            Index::Series => self.series_index(pos),
        }
    }

    /// Looks at entry `pos` of `index` (`Acquire`: pairs with the `Release`
    /// of the compare-and-swap that published it, so the entry's record and
    /// key bytes are complete).
    pub(crate) fn look(&self, index: Index, pos: u32) -> (&AtomicU32, Look) {
        let entry = self.index_entry(index, pos);
        let v = entry.load(Ordering::Acquire);
        (entry, self.classify(index, pos, v))
    }

    /// What entry value `v` (found at `pos`) is; a corrupt one is reported.
    pub(crate) fn classify(&self, index: Index, pos: u32, v: u32) -> Look {
        if v == 0 {
            Look::Free
        } else if self.entry_ok(index, pos, v) {
            Look::Taken(v - 1)
        } else {
            Look::Corrupt
        }
    }

    /// Whether index entry `v` (at `pos`) names an id handed out; reports it
    /// as corrupt if not.
    fn entry_ok(&self, index: Index, pos: u32, v: u32) -> bool {
        let h = self.header();
        let (what, used, max, cap, tag) = match index {
            Index::Family => {
                ("family", &h.families_used, self.params.max_families, self.off.family_index_cap, FAMILY_INDEX_TAG)
            }
            Index::Series => ("series", &h.series_used, self.params.max_series, self.off.series_index_cap, 0),
        };
        // Loaded after the entry (Acquire): an id was handed out before its
        // entry was published, so a sound entry is always below this count.
        let used = used.load(Ordering::Relaxed).min(max);
        if v - 1 < used {
            return true;
        }
        let pos = pos & (cap - 1);
        let msg = format!("{what} index entry {pos} names {what} {}, but only {used} are used", v - 1);
        let _ = self.corrupt(CORRUPT_INDEX, tag | pos, &msg);
        false
    }

    /// The error of a probe that found no free entry: an index has twice
    /// the entries of the table it indexes, so only a corrupt file says so,
    /// whatever its counts say.
    pub(crate) fn index_full(&self, index: Index) -> Error {
        let h = self.header();
        let (what, used, cap, max, tag) = match index {
            Index::Family => (
                "families",
                h.families_used.load(Ordering::Relaxed),
                self.off.family_index_cap,
                self.params.max_families,
                FAMILY_INDEX_TAG | INDEX_FULL_TAG,
            ),
            Index::Series => (
                "series",
                h.series_used.load(Ordering::Relaxed),
                self.off.series_index_cap,
                self.params.max_series,
                INDEX_FULL_TAG,
            ),
        };
        let name = if index == Index::Family { "family" } else { "series" };
        self.corrupt(
            CORRUPT_INDEX,
            tag,
            &format!("the {name} index ({cap} entries) has no free entry, yet {used} {what} are used (at most {max})"),
        )
    }
}
