//! Records read once: anything that can open the region file can write any
//! byte of it, at any time, so a record checked when it was listed may be
//! different when it is used. Every offset, index and length read from the
//! file is read once, into a private copy ([`FamilyRec`], [`SeriesRec`],
//! [`Region::arena_copy`]), checked, and only the copy is used; a record that
//! fails a check is skipped and reported (see `corrupt`).

use std::ptr::{addr_of, read_volatile};

use crate::layout::*;
use crate::region::Region;

/// The plain fields of a family record, copied once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FamilyRec {
    pub kind: u32,
    pub nlabels: u32,
    pub nbounds: u32,
    pub ncells: u32,
    pub hash: u32,
    pub name_off: u32,
    pub name_len: u32,
    pub labels_off: u32,
    pub bounds_off: u32,
}

impl FamilyRec {
    /// Copies the plain fields of `f` with volatile loads: the compiler may
    /// neither load a field twice nor assume it unchanged.
    pub fn read(f: &Family) -> FamilyRec {
        let f: *const Family = f;
        // SAFETY: `f` comes from a reference: valid and aligned. Each field is
        // a u32 that any bit pattern makes valid.
        unsafe {
            FamilyRec {
                kind: read_volatile(addr_of!((*f).kind)),
                nlabels: read_volatile(addr_of!((*f).nlabels)),
                nbounds: read_volatile(addr_of!((*f).nbounds)),
                ncells: read_volatile(addr_of!((*f).ncells)),
                hash: read_volatile(addr_of!((*f).hash)),
                name_off: read_volatile(addr_of!((*f).name_off)),
                name_len: read_volatile(addr_of!((*f).name_len)),
                labels_off: read_volatile(addr_of!((*f).labels_off)),
                bounds_off: read_volatile(addr_of!((*f).bounds_off)),
            }
        }
    }

    /// Cells a series of this record uses, by its kind (what the exposition reads).
    pub fn kind_cells(&self) -> u32 {
        cells_of(self.kind, self.nbounds)
    }
}

/// The plain fields of a series record, copied once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeriesRec {
    pub family: u32,
    pub key_off: u32,
    pub key_len: u32,
    pub cell: u32,
    pub hash: u32,
}

impl SeriesRec {
    /// Copies the plain fields of `s` (see [`FamilyRec::read`]).
    pub fn read(s: &Series) -> SeriesRec {
        let s: *const Series = s;
        // SAFETY: as in FamilyRec::read.
        unsafe {
            SeriesRec {
                family: read_volatile(addr_of!((*s).family)),
                key_off: read_volatile(addr_of!((*s).key_off)),
                key_len: read_volatile(addr_of!((*s).key_len)),
                cell: read_volatile(addr_of!((*s).cell)),
                hash: read_volatile(addr_of!((*s).hash)),
            }
        }
    }
}

/// Whether cells `cell .. cell + n` of every slot belong to series (not the
/// reserved cells) and lie inside a slot of `max_cells` cells.
pub fn cells_in_range(cell: u32, n: u32, max_cells: u32) -> bool {
    cell >= RESERVED_CELLS && cell as u64 + n as u64 <= max_cells as u64
}

/// Why a family record's numbers cannot be used, if they cannot.
pub fn family_numbers_bad(rec: &FamilyRec) -> Option<String> {
    if Kind::from_raw(rec.kind).is_none() {
        return Some(format!("kind {} is not a metric kind", rec.kind));
    }
    if rec.nlabels as usize > MAX_LABELS {
        return Some(format!("{} label names (at most {MAX_LABELS})", rec.nlabels));
    }
    let bounds_ok =
        if rec.kind == KIND_HISTOGRAM { (1..=MAX_BUCKETS as u32).contains(&rec.nbounds) } else { rec.nbounds == 0 };
    if !bounds_ok {
        return Some(format!("{} bucket bounds for kind {}", rec.nbounds, rec.kind));
    }
    if rec.ncells != rec.kind_cells() {
        return Some(format!("{} cells per series, {} by its kind", rec.ncells, rec.kind_cells()));
    }
    None
}

impl Region {
    /// A copy of family record `id` (`id < max_families`, else a panic).
    pub fn family_rec(&self, id: u32) -> FamilyRec {
        FamilyRec::read(self.family(id))
    }

    /// A copy of series record `id` (`id < max_series`, else a panic).
    pub fn series_rec(&self, id: u32) -> SeriesRec {
        SeriesRec::read(self.series(id))
    }

    /// A private copy of series `id`'s encoded label values (empty if the
    /// record points outside the arena: it then fails to decode).
    pub fn series_key(&self, id: u32) -> Vec<u8> {
        let rec = self.series_rec(id);
        self.arena_copy(rec.key_off, rec.key_len).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_in_range_refuses_reserved_and_overflowing_ranges() {
        assert!(cells_in_range(RESERVED_CELLS, 1, 100));
        assert!(cells_in_range(96, 4, 100));
        assert!(!cells_in_range(97, 4, 100));
        assert!(!cells_in_range(RESERVED_CELLS - 1, 1, 100));
        assert!(!cells_in_range(u32::MAX, 2, u32::MAX));
    }

    fn rec(kind: u32, nbounds: u32, ncells: u32) -> FamilyRec {
        FamilyRec { kind, nlabels: 1, nbounds, ncells, hash: 0, name_off: 0, name_len: 1, labels_off: 0, bounds_off: 0 }
    }

    #[test]
    fn family_numbers_are_checked() {
        assert_eq!(family_numbers_bad(&rec(KIND_COUNTER, 0, 1)), None);
        assert_eq!(family_numbers_bad(&rec(KIND_HISTOGRAM, 3, 5)), None);
        assert!(family_numbers_bad(&rec(7, 0, 1)).unwrap().contains("kind 7"));
        assert!(family_numbers_bad(&rec(KIND_HISTOGRAM, 0, 2)).is_some());
        assert!(family_numbers_bad(&rec(KIND_HISTOGRAM, 129, 131)).is_some());
        assert!(family_numbers_bad(&rec(KIND_GAUGE, 0, 1)).unwrap().contains("cells"));
        assert!(family_numbers_bad(&FamilyRec { nlabels: 11, ..rec(KIND_COUNTER, 0, 1) }).is_some());
    }
}
