//! What each check on the region file does with a corrupt record: the exact
//! behaviour of updates, lookups, definitions and the exposition when one field
//! of a live region is overwritten (through a second mapping of the file, as
//! another process would).
//!
//! Every test maps its own region file `/dev/shm/shmetrics-ct-<test>-<pid>`
//! and removes it when done. The library keeps each mapping for the life of the
//! process, and counts each corrupt record once per process: so each test has
//! its own file and its exact counts start from zero.

use std::sync::atomic::Ordering;

use shmetrics::cells;
use shmetrics::error::Error;
use shmetrics::expo::Format;
use shmetrics::layout::*;
use shmetrics::region::{self, Region};
use shmetrics::registry::FamilyDef;
use shmetrics::scrape::Render;
use testkit::shm::{FileMap, Shm};

/// A region file of one test and a second, writable mapping of it.
struct Sabotage {
    shm: Shm,
    r: &'static Region,
    map: FileMap,
}

impl Sabotage {
    fn new(test: &str) -> Sabotage {
        let shm = Shm::new(&format!("ct-{test}"));
        let p =
            Params { max_series: 64, max_families: 8, max_slots: 4, max_label_bytes: 64, max_cells: 0, arena_bytes: 0 };
        let (r, _) = region::open(&shm.path, p, false).unwrap_or_else(|e| panic!("open {}: {e}", shm.path.display()));
        let map = FileMap::open(&shm.path);
        Sabotage { shm, r, map }
    }

    fn put_u32(&self, off: u64, v: u32) {
        self.map.write_u32(off, v);
    }

    fn family_field(&self, fam: u32, field: u64, v: u32) {
        self.put_u32(self.r.off.families + fam as u64 * 128 + field, v);
    }

    fn series_field(&self, id: u32, field: u64, v: u32) {
        self.put_u32(self.r.off.series + id as u64 * 24 + field, v);
    }

    /// The whole exposition (text 0.0.4).
    fn render(&self) -> String {
        let mut it = Render::new(self.r, Format::Text004);
        let mut out = Vec::new();
        while it.next_chunk(1 << 16) {
            out.extend_from_slice(&it.buf);
        }
        String::from_utf8(out).unwrap()
    }

    fn corrupt_total(&self, what: &str) -> f64 {
        let body = self.render();
        let key = format!("shmetrics_region_corrupt_total{{what=\"{what}\"}} ");
        body.lines().find_map(|l| l.strip_prefix(&key)).map_or(0.0, |v| v.parse().unwrap())
    }

    fn assert_corrupt_error(&self, e: &Error, detail: &str) {
        assert!(matches!(e, Error::Internal(_)), "{e:?}");
        let m = e.message();
        assert!(m.starts_with(&format!("the region file \"{}\" is corrupt: ", self.shm.path.display())), "{m}");
        assert!(m.contains(detail), "{m}");
        assert!(m.ends_with("remove the file or set reset = true, then restart nginx"), "{m}");
    }
}

// Field offsets (docs/layout.md §2.5, §2.6).
const F_KIND: u64 = 8;
const F_NBOUNDS: u64 = 16;
const F_NCELLS: u64 = 20;
const F_LABELS_OFF: u64 = 36;
const F_BOUNDS_OFF: u64 = 40;
const S_STATE: u64 = 0;
const S_KEY_LEN: u64 = 12;
const S_CELL: u64 = 16;

fn define(r: &Region, kind: u32, name: &str, labels: &[&str], bounds: &[f64]) -> Result<u32, Error> {
    let labels: Vec<&[u8]> = labels.iter().map(|l| l.as_bytes()).collect();
    r.define_family(&FamilyDef { kind, name: name.as_bytes(), help: b"Help.", labels: &labels, bounds, max_series: 0 })
}

/// A histogram `lat_seconds{route}` with series /a (id 0) and /b (id 1), and a
/// counter `req_total{route}` with /a (id 2); a claimed slot with counts.
fn populated(s: &Sabotage) -> (u32, u32, [u32; 3]) {
    let r = s.r;
    let h = define(r, KIND_HISTOGRAM, "lat_seconds", &["route"], &[0.1, 1.0]).unwrap();
    let c = define(r, KIND_COUNTER, "req_total", &["route"], &[]).unwrap();
    let cells =
        [r.series_cell(h, &[b"/a"]).unwrap(), r.series_cell(h, &[b"/b"]).unwrap(), r.series_cell(c, &[b"/a"]).unwrap()];
    let slot = r.claim_slot().unwrap();
    // SAFETY: our own slot; the cells were returned for histograms with bounds [0.1, 1].
    unsafe {
        shmetrics::cells::observe(r.cells(slot), cells[0], &[0.1, 1.0], 0.5);
        shmetrics::cells::observe(r.cells(slot), cells[1], &[0.1, 1.0], 2.0);
    }
    cells::add(r, slot, cells[2], 7.0);
    (h, c, cells)
}

#[test]
fn a_live_series_cell_field_past_the_slot_is_skipped_and_counted() {
    let s = Sabotage::new("cell");
    let (h, _, cells) = populated(&s);
    let before = s.render();
    assert!(before.contains("lat_seconds_count{route=\"/a\"} 1\n"), "{before}");
    // The 4-byte write of the issue: series 0's cell now points at the last cell.
    s.series_field(0, S_CELL, s.r.params.max_cells - 1);
    let body = s.render();
    assert!(!body.contains("route=\"/a\",le"), "series /a still rendered:\n{body}");
    assert!(body.contains("lat_seconds_count{route=\"/b\"} 1\n"), "the other series is kept:\n{body}");
    assert!(body.contains("req_total{route=\"/a\"} 7\n"), "{body}");
    assert!(body.contains("shmetrics_region_corrupt_total{what=\"series\"} 1\n"), "{body}");
    let e = s.r.series_cell(h, &[b"/a"]).unwrap_err();
    s.assert_corrupt_error(&e, &format!("series record 0: cells {}..", s.r.params.max_cells - 1));
    assert_eq!(s.corrupt_total("series"), 1.0, "counted once per record and process");
    let notice = s.r.take_notice().expect("a notice to log");
    assert!(notice.contains(&s.shm.path.display().to_string()), "{notice}");
    // Into the reserved cells: refused too.
    s.series_field(0, S_CELL, CELL_ERRORS);
    s.assert_corrupt_error(&s.r.series_cell(h, &[b"/a"]).unwrap_err(), "series record 0");
    // Restored: served again, with its counts.
    s.series_field(0, S_CELL, cells[0]);
    assert_eq!(s.r.series_cell(h, &[b"/a"]).unwrap(), cells[0]);
    assert!(s.render().contains("lat_seconds_count{route=\"/a\"} 1\n"));
}

#[test]
fn a_corrupt_family_kind_or_bucket_count_refuses_updates_and_hides_the_family() {
    let s = Sabotage::new("kind");
    let (h, c, _) = populated(&s);
    s.family_field(h, F_KIND, 7);
    s.assert_corrupt_error(&s.r.series_cell(h, &[b"/a"]).unwrap_err(), "family record 0: kind 7 is not a metric kind");
    s.assert_corrupt_error(&s.r.delete_series(h, &[b"/a"]).unwrap_err(), "family record 0");
    let body = s.render();
    assert!(!body.contains("lat_seconds"), "{body}");
    assert!(body.contains("req_total{route=\"/a\"} 7\n"), "{body}");
    assert!(body.contains("shmetrics_region_corrupt_total{what=\"family\"} 1\n"), "{body}");
    // A consistent-looking change (a gauge: 4 cells) still disagrees with this
    // process's definition.
    s.family_field(c, F_KIND, KIND_GAUGE);
    s.assert_corrupt_error(&s.r.series_cell(c, &[b"/a"]).unwrap_err(), "1 cells per series, 4 by its kind");
    s.family_field(c, F_NCELLS, GAUGE_CELLS);
    s.assert_corrupt_error(&s.r.series_cell(c, &[b"/a"]).unwrap_err(), "it was defined as kind 0 with 1");
    s.family_field(c, F_KIND, KIND_COUNTER);
    s.family_field(c, F_NCELLS, 1);
    s.family_field(h, F_KIND, KIND_HISTOGRAM);
    s.family_field(h, F_NBOUNDS, 200);
    s.assert_corrupt_error(&s.r.series_cell(h, &[b"/a"]).unwrap_err(), "200 bucket bounds");
    s.family_field(h, F_NBOUNDS, 2);
    assert!(s.r.series_cell(h, &[b"/a"]).is_ok());
    assert!(s.render().contains("lat_seconds_count{route=\"/a\"} 1\n"));
}

#[test]
fn corrupt_bounds_or_label_offsets_hide_the_family_but_writers_keep_their_bounds() {
    let s = Sabotage::new("offsets");
    let (h, _, cells) = populated(&s);
    let own = s.r.defined_bounds(h);
    assert!(!own.is_null());
    s.family_field(h, F_BOUNDS_OFF, 3);
    let body = s.render();
    assert!(!body.contains("lat_seconds"), "{body}");
    assert!(body.contains("shmetrics_region_corrupt_total{what=\"family\"} 1\n"), "{body}");
    // Updates go on: the cells are proven for this process's own definition, and
    // the bounds handed to writers are where they were defined.
    assert_eq!(s.r.series_cell(h, &[b"/a"]).unwrap(), cells[0]);
    assert_eq!(s.r.defined_bounds(h), own);
    s.family_field(h, F_BOUNDS_OFF, u32::MAX - 7);
    assert!(!s.render().contains("lat_seconds"));
    s.family_field(h, F_BOUNDS_OFF, own as u64 as u32 - (s.r.arena(0, 0).unwrap().as_ptr() as u64 as u32));
    assert!(s.render().contains("lat_seconds_count{route=\"/a\"} 1\n"), "restored");
    s.family_field(h, F_LABELS_OFF, 2);
    assert!(!s.render().contains("lat_seconds"));
    s.family_field(h, F_LABELS_OFF, u32::MAX - 3);
    let body = s.render();
    assert!(!body.contains("lat_seconds") && body.contains("req_total{route=\"/a\"} 7\n"), "{body}");
    assert_eq!(s.corrupt_total("family"), 1.0, "one record, counted once");
}

#[test]
fn a_corrupt_key_hides_its_series_only() {
    let s = Sabotage::new("key");
    let (_, _, _) = populated(&s);
    s.series_field(1, S_KEY_LEN, u32::MAX);
    let body = s.render();
    assert!(!body.contains("route=\"/b\""), "{body}");
    assert!(body.contains("lat_seconds_count{route=\"/a\"} 1\n"), "{body}");
    assert!(body.contains("shmetrics_region_corrupt_total{what=\"series\"} 1\n"), "{body}");
}

#[test]
fn index_entries_past_the_used_counts_are_stepped_over_and_counted() {
    let s = Sabotage::new("index");
    let (h, _, cells) = populated(&s);
    let used = s.r.header().series_used.load(Ordering::Relaxed);
    // Every free series index entry names a series id that was never handed out.
    for i in 0..s.r.off.series_index_cap {
        let e = s.r.series_index(i);
        if e.load(Ordering::Relaxed) == 0 {
            s.put_u32(s.r.off.series_index + i as u64 * 4, used + 10);
        }
    }
    // Existing series are still found (their entries come before any free one).
    assert_eq!(s.r.series_cell(h, &[b"/a"]).unwrap(), cells[0]);
    // A new one cannot be placed: a corrupt file, not "full".
    let e = s.r.series_cell(h, &[b"/new"]).unwrap_err();
    s.assert_corrupt_error(
        &e,
        &format!("the series index (128 entries) has no free entry, yet {used} series are used (at most 64)"),
    );
    assert!(s.corrupt_total("index") >= 2.0, "the bad entries met and the full index are counted");
    // The family index full of garbage: a definition says corrupt, naming the fix.
    for i in 0..s.r.off.family_index_cap {
        s.put_u32(s.r.off.family_index + i as u64 * 4, 1000);
    }
    let e = define(s.r, KIND_GAUGE, "temp", &[], &[]).unwrap_err();
    s.assert_corrupt_error(&e, "the family index (16 entries) has no free entry, yet 2 families are used (at most 8)");
    assert_eq!(s.r.find_family(b"req_total"), None, "garbage entries are never followed");
}

#[test]
fn garbage_in_unused_series_records_does_not_hide_new_series() {
    let s = Sabotage::new("garbage");
    let (_, c, _) = populated(&s);
    let used = s.r.header().series_used.load(Ordering::Relaxed);
    for id in used..s.r.params.max_series {
        for field in 0..6 {
            s.series_field(id, field * 4, 0xDEAD_BEEF);
        }
    }
    let cell = s.r.series_cell(c, &[b"/new"]).unwrap();
    assert_eq!(s.r.series(used).state.load(Ordering::Relaxed), STATE_LIVE, "published LIVE, from WRITING");
    let slot = s.r.claim_slot().unwrap();
    cells::add(s.r, slot, cell, 3.0);
    let body = s.render();
    assert!(body.contains("req_total{route=\"/new\"} 3\n"), "{body}");
    assert!(!body.contains("shmetrics_region_corrupt_total"), "nothing corrupt was met:\n{body}");
    // A record whose state is garbage is neither listed nor counted as live.
    s.series_field(0, S_STATE, 0xDEAD_BEEF);
    assert!(!s.render().contains("route=\"/a\",le"));
}
