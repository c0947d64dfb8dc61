//! Checks on what the shared file says, at the point of use.
//!
//! Anything that can open the region file can write any byte of it, at any
//! time: a record checked when it was listed may be different when it is
//! used. So every offset, index and length read from the file is read once,
//! into a private copy ([`FamilyRec`], [`SeriesRec`], [`Region::arena_copy`]),
//! checked, and only the copy is used. A record that fails a check is skipped
//! (an update gets an error naming the file and the fix), counted in this
//! process's slot (`shmetrics_region_corrupt_total{what}`), and described in a
//! message the Lua module logs ([`Region::take_notice`]: the first record
//! found, then at most one message every [`NOTICE_INTERVAL`]).
//!
//! What a caller writes into its cells follows its own definition, never the
//! file's record: [`Def`] keeps, per process, what `define_family` returned
//! to it, and the cells of a series are proven in range for that.

use std::collections::HashSet;
use std::ptr::{addr_of, read_volatile};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::expo;
use crate::layout::*;
use crate::region::Region;

/// Least time between two corruption messages of one process.
pub const NOTICE_INTERVAL: Duration = Duration::from_secs(10);
/// Distinct corrupt records one process remembers (and counts); more are
/// skipped all the same, but neither counted nor described.
const MAX_FOUND: usize = 65_536;

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

/// Cells per series of a kind: 1, 4, or the buckets plus `+Inf` plus the sum.
pub fn cells_of(kind: u32, nbounds: u32) -> u32 {
    match kind {
        KIND_COUNTER => 1,
        KIND_GAUGE => GAUGE_CELLS,
        _ => nbounds.min(MAX_BUCKETS as u32) + 2,
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

/// A definition as this process made or matched it.
pub(crate) struct Def {
    kind: u32,
    cells: u32,
    /// Where the finite bounds (histograms) were in the arena when defined:
    /// what `shmetrics_family_bounds` hands to Lua, whatever the record's
    /// `bounds_off` says later. NULL if none.
    bounds: *const f64,
}

/// A family record that passed every check, with private copies of its
/// names and bounds (what a renderer uses).
#[derive(Clone, Debug)]
pub struct FamView {
    pub id: u32,
    pub kind: u32,
    /// Cells per series.
    pub cells: u32,
    pub name: Vec<u8>,
    pub labels: Vec<Vec<u8>>,
    pub bounds: Vec<f64>,
}

impl FamView {
    /// A placeholder while a renderer borrows a group's view.
    pub(crate) fn empty() -> FamView {
        FamView { id: 0, kind: KIND_COUNTER, cells: 1, name: Vec::new(), labels: Vec::new(), bounds: Vec::new() }
    }
}

/// Corrupt records this process has found (see the module docs).
#[derive(Default)]
pub(crate) struct Found {
    seen: HashSet<(u32, u32)>,
    /// The first message not logged yet, and how many records it stands for.
    message: Option<String>,
    pending: u64,
    last_notice: Option<Instant>,
}

/// Splits an encoded key (per value: `u32` LE length, bytes) into `out`.
/// Returns false for a malformed key.
pub fn decode_key<'a>(mut key: &'a [u8], out: &mut Vec<&'a [u8]>) -> bool {
    while !key.is_empty() {
        if key.len() < 4 || out.len() >= MAX_LABELS {
            return false;
        }
        let len = u32::from_le_bytes([key[0], key[1], key[2], key[3]]) as usize;
        if key.len() - 4 < len {
            return false;
        }
        out.push(&key[4..4 + len]);
        key = &key[4 + len..];
    }
    true
}

/// Whether cells `cell .. cell + n` of every slot belong to series (not the
/// reserved cells) and lie inside a slot of `max_cells` cells.
pub fn cells_in_range(cell: u32, n: u32, max_cells: u32) -> bool {
    cell >= RESERVED_CELLS && cell as u64 + n as u64 <= max_cells as u64
}

/// Why a family record's numbers cannot be used, if they cannot.
pub fn family_numbers_bad(rec: &FamilyRec) -> Option<String> {
    if !matches!(rec.kind, KIND_COUNTER | KIND_GAUGE | KIND_HISTOGRAM) {
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

    /// Remembers what this process defined as family `fam`.
    pub(crate) fn remember_def(&self, fam: u32, kind: u32, bounds: &[f64]) {
        let mut defs = self.defs.lock().unwrap_or_else(|e| e.into_inner());
        if defs.len() <= fam as usize {
            defs.resize_with(fam as usize + 1, || None);
        }
        if defs[fam as usize].is_none() {
            let cells = cells_of(kind, bounds.len() as u32);
            // The record was just written or compared with `bounds` (same bits).
            let shared = self.fam_bounds(self.family(fam));
            let same = shared.len() == bounds.len() && !bounds.is_empty();
            let bounds = if same { shared.as_ptr() } else { std::ptr::null() };
            defs[fam as usize] = Some(Def { kind, cells, bounds });
        }
    }

    /// `(kind, cells per series)` of family `fam` as this process defined it.
    pub fn defined(&self, fam: u32) -> Option<(u32, u32)> {
        let defs = self.defs.lock().unwrap_or_else(|e| e.into_inner());
        defs.get(fam as usize)?.as_ref().map(|d| (d.kind, d.cells))
    }

    /// Where family `fam`'s finite bounds were in the arena when this process
    /// defined it (as many as it defined: a pointer inside the arena whatever
    /// the record says since), or NULL if it did not define a histogram `fam`.
    pub fn defined_bounds(&self, fam: u32) -> *const f64 {
        let defs = self.defs.lock().unwrap_or_else(|e| e.into_inner());
        match defs.get(fam as usize) {
            Some(Some(d)) if d.kind == KIND_HISTOGRAM => d.bounds,
            _ => std::ptr::null(),
        }
    }

    /// Family `fam`'s record if its numbers are sound and agree with this
    /// process's definition; else the corruption is reported and returned.
    pub fn family_check(&self, fam: u32) -> Result<FamilyRec, Error> {
        let rec = self.family_rec(fam);
        let mut why = family_numbers_bad(&rec);
        if why.is_none() {
            if let Some((kind, cells)) = self.defined(fam) {
                if kind != rec.kind || cells != rec.kind_cells() {
                    why = Some(format!(
                        "it says kind {} with {} cells per series; it was defined as kind {kind} with {cells}",
                        rec.kind,
                        rec.kind_cells()
                    ));
                }
            }
        }
        match why {
            None => Ok(rec),
            Some(why) => Err(self.corrupt(CORRUPT_FAMILY, fam, &format!("family record {fam}: {why}"))),
        }
    }

    /// Family `fam` checked whole, with private copies of what a renderer needs.
    pub fn family_view(&self, fam: u32) -> Result<FamView, Error> {
        let rec = self.family_check(fam)?;
        let bad = |why: String| self.corrupt(CORRUPT_FAMILY, fam, &format!("family record {fam}: {why}"));
        let name = match self.arena_copy(rec.name_off, rec.name_len) {
            // Not a self-metric's prefix either (refused at definition).
            Some(n) if n.len() <= MAX_NAME_BYTES && expo::is_valid_metric_name(&n) && !n.starts_with(b"shmetrics_") => {
                n
            }
            Some(_) => return Err(bad("its name is not a valid metric name".into())),
            None => {
                return Err(bad(format!("its name ({} bytes at {}) is outside the arena", rec.name_len, rec.name_off)))
            }
        };
        if rec.labels_off % 4 != 0 {
            return Err(bad(format!("label names at {} are not 4-aligned", rec.labels_off)));
        }
        let Some(pairs) = self.arena_copy(rec.labels_off, rec.nlabels * 8) else {
            return Err(bad(format!("label names at {} are outside the arena", rec.labels_off)));
        };
        let mut labels = Vec::with_capacity(rec.nlabels as usize);
        for c in pairs.chunks_exact(8) {
            let off = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            let len = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
            match self.arena_copy(off, len) {
                Some(l)
                    if l.len() <= MAX_NAME_BYTES
                        && expo::is_valid_label_name(&l)
                        && !labels.contains(&l)
                        && !(rec.kind == KIND_HISTOGRAM && l == b"le") =>
                {
                    labels.push(l)
                }
                _ => return Err(bad(format!("label name #{} is not a valid label name", labels.len() + 1))),
            }
        }
        let mut bounds = Vec::new();
        if rec.kind == KIND_HISTOGRAM {
            if rec.bounds_off % 8 != 0 {
                return Err(bad(format!("bucket bounds at {} are not 8-aligned", rec.bounds_off)));
            }
            let Some(raw) = self.arena_copy(rec.bounds_off, rec.nbounds * 8) else {
                return Err(bad(format!("bucket bounds at {} are outside the arena", rec.bounds_off)));
            };
            bounds = raw.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect();
            let sound = bounds.iter().all(|b| b.is_finite()) && bounds.windows(2).all(|w| w[0] < w[1]);
            if !sound {
                return Err(bad("its bucket bounds are not finite and increasing".into()));
            }
        }
        Ok(FamView { id: fam, kind: rec.kind, cells: rec.kind_cells(), name, labels, bounds })
    }

    /// Reports a corrupt record and returns the error an update gets for it:
    /// counted once per record and process (in this process's slot, or the
    /// header if it has none), and described for the log.
    pub fn corrupt(&self, what: u32, id: u32, detail: &str) -> Error {
        let msg = format!(
            "the region file \"{}\" is corrupt: {detail}; remove the file or set reset = true, then restart nginx",
            self.path.display()
        );
        let mut found = self.corrupt.lock().unwrap_or_else(|e| e.into_inner());
        if found.seen.len() < MAX_FOUND && found.seen.insert((what, id)) {
            match self.own_slot() {
                // CELL_CORRUPT + what < RESERVED_CELLS < max_cells (layout asserts).
                Some(slot) => self.cell_add(slot, CELL_CORRUPT + what.min(CORRUPT_WHAT.len() as u32 - 1), 1.0),
                // Relaxed: a statistic; nothing is ordered after it.
                None => {
                    self.header().corrupt_unslotted.fetch_add(1, Ordering::Relaxed);
                }
            }
            found.pending += 1;
            if found.message.is_none() {
                found.message = Some(msg.clone());
            }
        }
        Error::Internal(msg)
    }

    /// The slot this process already owns, if any (never claims one: the
    /// master must not).
    pub(crate) fn own_slot(&self) -> Option<u32> {
        let mine = self.my_slot.load(Ordering::Relaxed);
        (mine != 0 && mine >> 32 == std::process::id() as u64).then_some((mine & 0xffff_ffff) as u32)
    }

    /// A message to log about corrupt records found since the last one, at
    /// most one per [`NOTICE_INTERVAL`].
    pub fn take_notice(&self) -> Option<String> {
        let mut found = self.corrupt.lock().unwrap_or_else(|e| e.into_inner());
        found.message.as_ref()?;
        let now = Instant::now();
        if found.last_notice.is_some_and(|t| now.duration_since(t) < NOTICE_INTERVAL) {
            return None;
        }
        found.last_notice = Some(now);
        let mut msg = found.message.take()?;
        let more = std::mem::take(&mut found.pending).saturating_sub(1);
        if more > 0 {
            msg.push_str(&format!(
                " ({more} more corrupt records found and skipped; see shmetrics_region_corrupt_total)"
            ));
        }
        Some(msg)
    }

    /// Corrupt records counted so far, by `what` (all slots and the header).
    pub fn corrupt_counts(&self, slots: &[u32]) -> [f64; CORRUPT_WHAT.len()] {
        let mut v = [0.0; CORRUPT_WHAT.len()];
        for (i, n) in v.iter_mut().enumerate() {
            *n = slots.iter().map(|&s| self.cell(s, CELL_CORRUPT + i as u32)).sum();
        }
        v[0] += self.header().corrupt_unslotted.load(Ordering::Relaxed) as f64;
        v
    }
}

#[cfg(test)]
mod tests {
    //! Pure checks, runnable under Miri: key decoding, range checks, record
    //! validation, lookups and rendering on a heap region
    //! (`MIRIFLAGS=-Zmiri-ignore-leaks cargo +nightly miri test --lib -- check:: hash:: json::`;
    //! regions are leaked on purpose, as mapped ones live as long as the process).
    //! The file-backed tests (`tests/*.rs`) cannot run under Miri: they `mmap`
    //! files, fork, signal and read `/proc`.

    use super::*;
    use crate::store::FamilyDef;

    #[test]
    fn decode_key_accepts_well_formed_keys_only() {
        let mut out = Vec::new();
        assert!(decode_key(b"", &mut out) && out.is_empty());
        assert!(decode_key(b"\x01\0\0\0a\x00\0\0\0", &mut out));
        assert_eq!(out, [&b"a"[..], b""]);
        for bad in [&b"\x01\0\0"[..], b"\x02\0\0\0a", b"\xff\xff\xff\xffabc"] {
            out.clear();
            assert!(!decode_key(bad, &mut out), "{bad:?}");
        }
        let eleven: Vec<u8> = (0..11).flat_map(|_| [0u8, 0, 0, 0]).collect();
        out.clear();
        assert!(!decode_key(&eleven, &mut out), "more than MAX_LABELS values");
    }

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

    fn params() -> Params {
        Params { max_series: 64, max_families: 8, max_slots: 3, max_label_bytes: 64, max_cells: 0, arena_bytes: 0 }
    }

    fn histogram(r: &Region) -> u32 {
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
    fn a_sound_region_passes_and_renders() {
        let r = Region::heap(params());
        let fam = histogram(r);
        let v = r.family_view(fam).unwrap();
        assert_eq!((v.kind, v.cells, v.bounds.as_slice()), (KIND_HISTOGRAM, 4, &[0.1, 1.0][..]));
        let cell = r.series_cell(fam, &[b"/a"]).unwrap();
        assert!(cells_in_range(cell, 4, r.params.max_cells));
        assert_eq!(r.take_notice(), None);
        let mut it = crate::render::Render::new(r, crate::expo::Format::Text004);
        let mut body = Vec::new();
        while it.next_chunk(1 << 16) {
            body.extend_from_slice(&it.buf);
        }
        let body = String::from_utf8(body).unwrap();
        assert!(body.contains("lat_bucket{route=\"/a\",le=\"+Inf\"} 0\n"), "{body}");
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
