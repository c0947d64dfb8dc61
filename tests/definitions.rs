//! Definitions follow the configuration, and one region belongs to one nginx:
//! a changed definition replaces the stored one, a new configuration hides the
//! families it does not define, and a second live master is refused.

use std::process::{Child, Command};

use shmetrics::expo::Format;
use shmetrics::ffi;
use shmetrics::layout::*;
use shmetrics::region::{self, Opened, Region};
use shmetrics::registry::FamilyDef;
use shmetrics::scrape::Render;
use testkit::shm::Shm;

fn params() -> Params {
    Params { max_series: 64, max_families: 16, max_slots: 4, max_label_bytes: 64, max_cells: 0, arena_bytes: 0 }
}

fn def<'a>(kind: u32, name: &'a str, help: &'a str, labels: &'a [&'a [u8]], bounds: &'a [f64]) -> FamilyDef<'a> {
    FamilyDef { kind, name: name.as_bytes(), help: help.as_bytes(), labels, bounds, max_series: 0 }
}

fn add(r: &Region, fam: u32, values: &[&[u8]], v: f64) {
    let cell = r.series_cell(fam, values).unwrap_or_else(|e| panic!("series of {fam}: {e}"));
    let slot = r.claim_slot().unwrap();
    // SAFETY: our own slot (single writer), and `cell` is a counter or gauge series'
    // first cell, inside the slot (series_cell checked it).
    unsafe { *r.cells(slot).add(cell as usize) += v };
}

/// The user families' part of the text exposition.
fn user_part(r: &'static Region) -> String {
    let mut it = Render::new(r, Format::Text004);
    let mut body = Vec::new();
    while it.next_chunk(usize::MAX) {
        body.extend_from_slice(&it.buf);
    }
    let body = String::from_utf8(body).unwrap();
    let end = body.find("# HELP shmetrics_errors_total").expect("self-metrics present");
    body[..end].to_string()
}

#[test]
fn a_changed_definition_replaces_the_stored_one() {
    let shm = Shm::new("def-replace");
    let (r, _) = region::open(&shm.path, params(), false).unwrap();
    let room: &[&[u8]] = &[b"room"];
    let room_floor: &[&[u8]] = &[b"room", b"floor"];
    let old = r.define_family(&def(KIND_GAUGE, "temp", "T", room, &[])).unwrap();
    add(r, old, &[b"kitchen"], 21.0);
    let kept = r.define_family(&def(KIND_COUNTER, "kept_total", "K", &[], &[])).unwrap();
    add(r, kept, &[], 5.0);

    // Without the replace flag a differing definition is still refused, naming both.
    let e = r.define_family(&def(KIND_GAUGE, "temp", "T", room_floor, &[])).unwrap_err();
    assert_eq!(e.code(), ffi::SHMETRICS_E_CONFLICT);
    assert!(e.message().contains("gauge {room}; this definition is gauge {room,floor}"), "{}", e.message());

    let new = r.define_family_replacing(&def(KIND_GAUGE, "temp", "T2", room_floor, &[])).unwrap();
    assert_ne!(new, old);
    // The old series left; the new family has none yet; the other family kept its count.
    assert_eq!(user_part(r), "# HELP kept_total K\n# TYPE kept_total counter\nkept_total 5\n");
    // The old id still takes writes (old workers draining), unseen.
    add(r, old, &[b"hall"], 1.0);
    // (a raw add is not how a gauge is written: the series shows 0, which is enough here)
    add(r, new, &[b"kitchen", b"1"], 3.0);
    assert_eq!(
        user_part(r),
        "# HELP kept_total K\n# TYPE kept_total counter\nkept_total 5\n\
         # HELP temp T2\n# TYPE temp gauge\ntemp{room=\"kitchen\",floor=\"1\"} 0\n"
    );
    // The same definition again finds the new family; the old one is gone for good.
    assert_eq!(r.define_family(&def(KIND_GAUGE, "temp", "T2", room_floor, &[])).unwrap(), new);
    let e = r.define_family(&def(KIND_GAUGE, "temp", "T", room, &[])).unwrap_err();
    assert!(e.message().contains("already defined as gauge {room,floor}"), "{}", e.message());
    // Buckets and type are part of the definition too.
    let h = r.define_family(&def(KIND_HISTOGRAM, "lat", "L", &[], &[1.0, 2.0])).unwrap();
    let h2 = r.define_family_replacing(&def(KIND_HISTOGRAM, "lat", "L", &[], &[1.0, 5.0])).unwrap();
    assert_ne!(h, h2);
    let c = r.define_family_replacing(&def(KIND_COUNTER, "lat", "L", &[], &[])).unwrap();
    assert_ne!(c, h2);
    add(r, h, &[], 1.0);
    add(r, c, &[], 1.0);
    let body = user_part(r);
    assert!(body.contains("# TYPE lat counter\nlat 1\n"), "{body}");
    assert!(!body.contains("lat_bucket"), "{body}");
}

#[test]
fn a_new_configuration_shows_only_what_it_defines() {
    let shm = Shm::new("def-config");
    let (r, _) = region::open(&shm.path, params(), false).unwrap();
    r.begin_configuration();
    let k: &[&[u8]] = &[b"k"];
    let a = r.define_family(&def(KIND_COUNTER, "a_total", "A", k, &[])).unwrap();
    let b = r.define_family(&def(KIND_COUNTER, "b_total", "B", k, &[])).unwrap();
    add(r, a, &[b"x"], 7.0);
    add(r, b, &[b"y"], 2.0);
    assert!(user_part(r).contains("b_total{k=\"y\"} 2\n"));

    // A restart: the new master's configuration defines a_total only.
    r.begin_configuration();
    assert_eq!(user_part(r), "");
    assert_eq!(r.define_family(&def(KIND_COUNTER, "a_total", "A", k, &[])).unwrap(), a);
    assert_eq!(user_part(r), "# HELP a_total A\n# TYPE a_total counter\na_total{k=\"x\"} 7\n");

    // Left over from before and defined differently now: replaced without the flag.
    r.begin_configuration();
    let b2 = r.define_family(&def(KIND_GAUGE, "b_total", "B", k, &[])).unwrap();
    assert_ne!(b2, b);
    assert_eq!(user_part(r), "");
    // A family left over does not block the names of this configuration's families...
    let h: &[&[u8]] = &[];
    r.define_family(&def(KIND_COUNTER, "a", "A", h, &[])).unwrap();
    // ... but it cannot come back beside one that took its names.
    let e = r.define_family(&def(KIND_COUNTER, "a_total", "A", k, &[])).unwrap_err();
    assert_eq!(e.code(), ffi::SHMETRICS_E_CONFLICT);
}

/// The owner word of a running process, as the region records it.
fn owner_word(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 1..];
    let start: u64 = rest.split_ascii_whitespace().nth(19).unwrap().parse().unwrap();
    ((start & 0xffff_ffff) << 32) | pid as u64
}

fn write_master(path: &std::path::Path, word: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&word.to_le_bytes(), std::mem::offset_of!(Header, master) as u64).unwrap();
}

struct Sleeper(Child);

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_region_belongs_to_one_live_master() {
    let src = Shm::new("def-owner-src");
    let (r, how) = region::open(&src.path, params(), false).unwrap();
    assert_eq!(how, Opened::Created);
    assert_eq!(r.header().master.load(std::sync::atomic::Ordering::Relaxed), owner_word(std::process::id()));

    // A copy whose recorded master is another live process (not our parent).
    let other = Sleeper(Command::new("sleep").arg("30").spawn().unwrap());
    let dst = Shm::new("def-owner-dst");
    std::fs::copy(&src.path, &dst.path).unwrap();
    write_master(&dst.path, owner_word(other.0.id()));
    for reset in [false, true] {
        let e = region::open(&dst.path, params(), reset).err().expect("a live master's region is refused");
        assert_eq!(e.code(), ffi::SHMETRICS_E_IO);
        let want =
            format!("\"{}\" is in use by another running nginx (master pid {})", dst.path.display(), other.0.id());
        assert!(e.message().starts_with(&want), "{}", e.message());
        assert!(e.message().contains("\"path\" option"), "{}", e.message());
    }
    // The same process, recorded with another start time (a reused pid), is dead.
    write_master(&dst.path, owner_word(other.0.id()) ^ (1 << 32));
    let (_, how) = region::open(&dst.path, params(), false).unwrap();
    assert_eq!(how, Opened::Attached);

    // Our parent (a binary upgrade: the new master is the old one's child) shares.
    let up = Shm::new("def-owner-upgrade");
    std::fs::copy(&src.path, &up.path).unwrap();
    write_master(&up.path, owner_word(std::os::unix::process::parent_id()));
    let (r2, how) = region::open(&up.path, params(), false).unwrap();
    assert_eq!(how, Opened::Attached);
    assert_eq!(r2.header().master.load(std::sync::atomic::Ordering::Relaxed), owner_word(std::process::id()));

    // Once the other master is gone, the region is free to take.
    let gone = Shm::new("def-owner-gone");
    std::fs::copy(&src.path, &gone.path).unwrap();
    write_master(&gone.path, owner_word(other.0.id()));
    drop(other);
    let (_, how) = region::open(&gone.path, params(), false).unwrap();
    assert_eq!(how, Opened::Attached);
}
