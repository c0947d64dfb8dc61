//! The fuzz targets' bodies under plain `cargo test` (no libFuzzer, no nightly):
//!
//! - every crasher the fuzzers found, minimized, each with a readable test of the
//!   same bug next to it;
//! - the seed inputs `fuzz/corpus/<target>/seed-*` (not the rest of a corpus a
//!   local fuzzing run grew there: `cargo fuzz run <target> -- -runs=0` replays
//!   that);
//! - a few thousand deterministic pseudo-random inputs per target
//!   (`SHMETRICS_FUZZ_ITERS` changes how many).
//!
//! The bodies are `testkit::fuzz` (testkit/src/fuzz/), what `fuzz/fuzz_targets/`
//! run too: the same checks as under `make fuzz` (see `scripts/fuzz.sh`). A failure
//! prints the input; save it to a file and replay it in `fuzz/` with
//! `cargo fuzz run --sanitizer none <target> <file>`.
//!
//! The input is read through `arbitrary::Unstructured` with the byte meaning the
//! harness had before it did (`testkit/src/fuzz/input.rs`): the crashers below are
//! the bytes the fuzzers found, and still decode to the same cases.

use std::path::Path;
use std::ptr::{null, null_mut};

use shmetrics::ffi::*;
use shmetrics::layout::{Params, KIND_COUNTER};
use testkit::fuzz::{self as fuzz_bodies, attach_target, render_target};
use testkit::json::parse_json_view;
use testkit::XorShift;

/// Minimized crashers of the `render` target: (what it found, input).
const RENDER_CRASHERS: &[(&str, &[u8])] = &[(
    "JSON view: the {\"families\":[ prefix was written again on every call while a \
     hint was under its 13 bytes (render.rs, next_json_chunk)",
    b"\x01\x00\x00\x00\x6c\x59\xff\x5b\x34\x8c\x34\x34",
)];

/// Minimized crashers of the `attach` target.
const ATTACH_CRASHERS: &[(&str, &[u8])] = &[
    (
        "JSON view: a comma before the first series written when the family's first \
         series was skipped (malformed key in the file) gave \"series\":[,{ (render.rs, \
         render_some_json)",
        b"\xb9\x01\x00\xff\x0e\xff\x00\x0e",
    ),
    (
        "stack overflow: a family without labels whose max_series count was full \
         without its series asked for its overflow series, which is the same empty \
         key, recursively (store.rs, series_cell_checked)",
        b"\x1b\x00\x09\x00\x00\x00\x00\x01\x00\x00\x00\x01\x00\x00\x65\x00\x74",
    ),
    (
        "shmetrics_family_bounds returned the dangling pointer of an empty slice \
         (0x8), not NULL, for a histogram whose bounds cannot be read (ffi.rs)",
        b"\x81\x00\x62\x62\x62\x62\x62\x62\x62\x62\x62\x62\x62\x00\x00\x40\x6b\x02\xfd\x29\xd6\xd6\xd6\xd6\xd1\xf5\x29\xd6\xd6\xd6\xd6\x00\x00\x0b\xd6\xd6\xd6\xd6\x19",
    ),
    (
        "two families with one id: a file whose families_used (4) was below its live \
         family 4 (the histogram \"size\") was attached, and the next new family took \
         id 4 and overwrote that record (a gauge now) while the caller still wrote \
         into it as a histogram (region.rs, open: counters below the records in use \
         are now refused)",
        b"\x01\x04\x01\x25\x04\x0b\x93\x08\x00\x00\xff\x2e\x0b\x00\x00\x0b\x00\x31\x00\x01\x04\x01\x45\xd5\xa4\xbf\x0b\xa4\x2f\x77\x68\x6d\x65\x74\x5f\x01\xa4\x00\x2f\x64\x29\xff\xff\x2a\xff\xff\x73\x2f\xe4\xff\x68\xa9\x76\x6d\x2f\x73\x65\x74\x5f\x01\xa4\x00\x2f\x64\x29\xff\x40\xff\x2a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x1b\x01\x06\x00\x1b\x01\x06\x3f\x00\x00\x00\x00\x01\x41\x00\x41\x00\x00\xdd\xb6\xb6\xb6\xb6\xb6\xb6\xb6\xb6\xb6\x01\x41\x00\x41\x00\x00\xdd\xff\xff",
    ),
];

fn run_logged(target: fn(&[u8]), what: &str, input: &[u8]) {
    let r = std::panic::catch_unwind(|| target(input));
    if let Err(e) = r {
        eprintln!("{what}: failing input ({} bytes): {input:02x?}", input.len());
        std::panic::resume_unwind(e);
    }
}

fn iterations() -> usize {
    std::env::var("SHMETRICS_FUZZ_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(3000)
}

/// Inputs of every length up to 2 KiB, bytes skewed toward small values (most
/// decoders take a byte modulo a small number).
fn pseudo_random(seed: u64, i: usize) -> Vec<u8> {
    let mut rng = XorShift(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let len = match i % 4 {
        0 => (rng.next() % 32) as usize,
        1 | 2 => (rng.next() % 256) as usize,
        _ => (rng.next() % 2048) as usize,
    };
    (0..len)
        .map(|_| {
            let x = rng.next();
            if x % 3 == 0 {
                (x >> 8) as u8 % 16
            } else {
                (x >> 8) as u8
            }
        })
        .collect()
}

fn corpus(target: &str, run: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else { return 0 };
    let mut files: Vec<_> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("seed-")))
        .collect();
    files.sort();
    for f in &files {
        let input = std::fs::read(f).unwrap();
        run_logged(run, &f.display().to_string(), &input);
    }
    files.len()
}

#[test]
fn render_crashers() {
    for (what, input) in RENDER_CRASHERS {
        run_logged(render_target, what, input);
    }
}

#[test]
fn attach_crashers() {
    for (what, input) in ATTACH_CRASHERS {
        run_logged(attach_target, what, input);
    }
}

#[test]
fn render_corpus() {
    let n = corpus("render", render_target);
    eprintln!("render: {n} seed inputs");
}

#[test]
fn attach_corpus() {
    let n = corpus("attach", attach_target);
    eprintln!("attach: {n} seed inputs");
}

#[test]
fn render_pseudo_random() {
    for i in 0..iterations() {
        run_logged(render_target, &format!("render pseudo-random #{i}"), &pseudo_random(0x5EED_0001, i));
    }
}

#[test]
fn attach_pseudo_random() {
    for i in 0..iterations() {
        run_logged(attach_target, &format!("attach pseudo-random #{i}"), &pseudo_random(0x5EED_0002, i));
    }
}

// ---------------------------------------------------------------------------
// Readable versions of the crashers

/// The sizes of the small regions below.
fn small_params() -> Params {
    Params { max_series: 16, max_families: 4, max_slots: 4, max_label_bytes: 32, max_cells: 128, arena_bytes: 4096 }
}

/// A region with one family and one series, through the C ABI.
fn small_region(test: &str) -> (*const shmetrics_region, fuzz_bodies::Mapped) {
    let path = fuzz_bodies::fresh_path(test);
    let p = small_params();
    let (r, how) = fuzz_bodies::open_region(&path, p, false, true).unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(how, SHMETRICS_OPEN_CREATED);
    // SAFETY: a fresh path opened once; `r` is not used after the Mapped drops.
    let m = unsafe { fuzz_bodies::Mapped::new(r) };
    let name = b"requests_total";
    let (l, v) = (b"code".as_ptr().cast(), b"200".as_ptr().cast());
    // SAFETY: pointer/length pairs of static byte strings.
    unsafe {
        let fam =
            shmetrics_family(r, KIND_COUNTER, name.as_ptr().cast(), name.len(), null(), 0, &l, &4, 1, null(), 0, 0);
        assert_eq!(fam, 0);
        assert!(shmetrics_series(r, 0, &v, &3, 1) >= 32);
    }
    (r, m)
}

/// Renders with the same hint on every call; `None` if it did not end within
/// `max_calls` calls.
fn render_with_hint(r: *const shmetrics_region, format: u32, hint: usize, max_calls: usize) -> Option<Vec<u8>> {
    let mut it = null_mut();
    // SAFETY: live handle, no filter, valid out-pointer.
    assert_eq!(unsafe { shmetrics_render_open(r, format, null(), null(), 0, &mut it) }, 0);
    let mut body = Vec::new();
    let mut done = false;
    for _ in 0..max_calls {
        let (mut chunk, mut len) = (null(), 0);
        // SAFETY: open iterator, valid out-pointers; the chunk is copied at once.
        match unsafe { shmetrics_render_next(it, hint, &mut chunk, &mut len) } {
            0 => {
                done = true;
                break;
            }
            1 => body.extend_from_slice(unsafe { std::slice::from_raw_parts(chunk.cast::<u8>(), len) }),
            rc => panic!("shmetrics_render_next: {rc}"),
        }
    }
    // SAFETY: from render_open, closed once.
    unsafe { shmetrics_render_close(it) };
    done.then_some(body)
}

/// `chunk_bytes` below the JSON view's 13-byte `{"families":[` prefix made
/// `collect_json` render that prefix forever (the iterator never advanced).
#[test]
fn json_view_ends_with_tiny_chunk_hints() {
    let (r, _m) = small_region("json-tiny-hints");
    let whole = render_with_hint(r, SHMETRICS_FORMAT_JSON, 1 << 20, 10).expect("one big chunk");
    parse_json_view(&whole).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&whole)));
    for hint in [1, 2, 12, 13, 14, 50] {
        let body = render_with_hint(r, SHMETRICS_FORMAT_JSON, hint, 10_000)
            .unwrap_or_else(|| panic!("the JSON view did not end with chunk hints of {hint} bytes"));
        assert_eq!(String::from_utf8_lossy(&body), String::from_utf8_lossy(&whole), "hint {hint}");
    }
    for format in [SHMETRICS_FORMAT_TEXT, SHMETRICS_FORMAT_OPENMETRICS] {
        let whole = render_with_hint(r, format, 1 << 20, 10).unwrap();
        assert_eq!(render_with_hint(r, format, 1, 100_000), Some(whole), "format {format}");
    }
}

/// Attaches a copy of the fuzzers' template region with `patch` applied to its
/// bytes (as if the file had been damaged on disk).
fn attach_patched(test: &str, patch: impl FnOnce(&mut Vec<u8>, &shmetrics::layout::Offsets)) -> fuzz_bodies::Mapped {
    use std::os::unix::fs::PermissionsExt as _;
    let t = fuzz_bodies::template();
    let mut bytes = t.bytes.clone();
    patch(&mut bytes, &t.params.offsets());
    let path = fuzz_bodies::fresh_path(test);
    std::fs::write(&path, &bytes).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let opened = fuzz_bodies::open_region(&path, t.params, false, true);
    let _ = std::fs::remove_file(&path);
    let (r, how) = opened.unwrap_or_else(|e| panic!("attach: {e:?}"));
    assert_eq!(how, SHMETRICS_OPEN_ATTACHED);
    // SAFETY: a fresh path opened once; `r` is not used after the Mapped drops.
    unsafe { fuzz_bodies::Mapped::new(r) }
}

/// A family whose first series cannot be shown (its key points outside the
/// arena) made the JSON view write `"series":[,{...`: invalid JSON.
#[test]
fn json_view_valid_when_a_first_series_is_skipped() {
    // Series 0 is the template's req_total{method="GET",code="200"}: key_len at +12.
    let m = attach_patched("json-skip-first", |b, off| {
        let at = off.series as usize + 12;
        b[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    });
    for hint in [1, 64, 1 << 20] {
        let body = render_with_hint(m.r, SHMETRICS_FORMAT_JSON, hint, 100_000).expect("ends");
        let view = parse_json_view(&body).unwrap_or_else(|e| panic!("{e}\n{}", String::from_utf8_lossy(&body)));
        let req = view.iter().find(|f| f.name == "req_total").expect("req_total is still shown");
        assert!(!req.series.is_empty() && req.series.iter().all(|(l, _)| l[0].1 != "GET"), "{req:?}");
    }
}

/// Offsets of the fields of a family record (128 bytes) and a series record (24).
const FAM_KIND: usize = 8;
const FAM_NBOUNDS: usize = 16;
const FAM_NCELLS: usize = 20;
const SER_FAMILY: usize = 4;
const SER_CELL: usize = 16;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// A family record whose `ncells` is smaller than its kind needs, with a series
/// whose first cell is near the end of the slot: the exposition checked
/// `cell + ncells <= max_cells` but read the cells of the kind (a gauge 4, a
/// histogram nbounds + 2): past the last slot's cells, past the end of the file
/// (in release builds silently, or SIGSEGV; debug builds assert in
/// `Region::cell`). Such a series must not be shown.
#[test]
fn corrupt_ncells_never_reads_past_the_cells() {
    use shmetrics::layout::{KIND_GAUGE, KIND_HISTOGRAM};
    let t = fuzz_bodies::template();
    let max_cells = t.params.max_cells;
    // Kind, corrupt ncells, and the template series (the family's first) that
    // must disappear, as its text sample line and its JSON labels.
    let cases = [
        (KIND_COUNTER, 0, "req_total{method=\"GET\",code=\"200\"} ", "{\"method\":\"GET\",\"code\":\"200\"}"),
        (KIND_GAUGE, 1, "temp{room=\"kitchen\"} ", "{\"room\":\"kitchen\"}"),
        (KIND_HISTOGRAM, 2, "lat_seconds_count ", "\"name\":\"lat_seconds\""),
    ];
    for (kind, ncells, line, json) in cases {
        let m = attach_patched("ncells", |b, off| {
            let fam = (0..t.params.max_families as usize)
                .find(|&i| u32_at(b, off.families as usize + 128 * i + FAM_KIND) == kind)
                .unwrap();
            let f = off.families as usize + 128 * fam;
            let s = (0..t.params.max_series as usize)
                .map(|i| off.series as usize + 24 * i)
                .find(|&s| u32_at(b, s + SER_FAMILY) == fam as u32)
                .unwrap();
            put_u32(b, f + FAM_NCELLS, ncells);
            put_u32(b, s + SER_CELL, max_cells - ncells);
            if kind == KIND_HISTOGRAM {
                assert!(u32_at(b, f + FAM_NBOUNDS) > 0);
            }
        });
        let text = String::from_utf8(render_with_hint(m.r, SHMETRICS_FORMAT_TEXT, 1 << 20, 10).expect("ends")).unwrap();
        assert!(!text.contains(line), "kind {kind}: a series with cells past the end is shown:\n{text}");
        let body = String::from_utf8(render_with_hint(m.r, SHMETRICS_FORMAT_JSON, 1 << 20, 10).expect("ends")).unwrap();
        assert!(!body.contains(json), "kind {kind}: a series with cells past the end is in the JSON view:\n{body}");
        render_with_hint(m.r, SHMETRICS_FORMAT_OPENMETRICS, 1 << 20, 10).expect("ends");
    }
}

/// The same corrupt `ncells` on the writing side: a new series of that family
/// got `ncells` cells from the allocator, but Lua writes the cells of the kind
/// it defined (a gauge 4) from the returned cell on, unchecked.
#[test]
fn corrupt_ncells_never_hands_out_a_short_cell_range() {
    let t = fuzz_bodies::template();
    let max_cells = t.params.max_cells;
    let (temp, def) = t.defs.iter().find(|(_, d)| d.kind == shmetrics::layout::KIND_GAUGE).unwrap().clone();
    let m = attach_patched("short-range", |b, off| {
        put_u32(b, off.families as usize + 128 * temp as usize + FAM_NCELLS, 1);
        put_u32(b, 200, max_cells - 1); // cells_used: one cell left
    });
    let id = fuzz_bodies::define(m.r, &def, true).expect("the same definition");
    assert_eq!(id, temp);
    match fuzz_bodies::series(m.r, temp, &[b"new room".to_vec()], true) {
        Ok(cell) => assert!(
            cell + def.need() <= max_cells,
            "cell {cell} of a gauge: Lua writes cells {cell}..{} of {max_cells}",
            cell + def.need()
        ),
        Err((code, msg)) => eprintln!("refused: {code} {msg}"),
    }
}

/// A family without labels and with its own `max_series`, whose count is full
/// but whose one series does not exist: what a process killed between taking its
/// place and publishing the series leaves (or, for a moment, a second worker
/// creating the same series). `shmetrics_series` asked for the overflow series,
/// which for no labels is the same empty key, and recursed until the stack
/// overflowed: SIGSEGV in the worker, which the ABI's panic guard cannot catch.
#[test]
fn no_label_family_with_a_stale_full_count() {
    let path = fuzz_bodies::fresh_path("stale-count");
    let p = small_params();
    let (r, _) = fuzz_bodies::open_region(&path, p, false, true).unwrap();
    let _ = std::fs::remove_file(&path);
    // SAFETY: a fresh path opened once; `r` is not used after `_m` drops.
    let _m = unsafe { fuzz_bodies::Mapped::new(r) };
    let name = b"up";
    // SAFETY: static byte strings; no labels, no bounds.
    let fam = unsafe {
        shmetrics_family(r, KIND_COUNTER, name.as_ptr().cast(), 2, null(), 0, null(), null(), 0, null(), 0, 1)
    };
    assert_eq!(fam, 0);
    // The place a killed creator took under max_series = 1.
    r.family(0).series_count.store(1, std::sync::atomic::Ordering::Relaxed);
    // SAFETY: live handle, no values.
    let cell = unsafe { shmetrics_series(r, 0, null(), null(), 0) };
    assert!(cell >= 32 && cell & SHMETRICS_SERIES_OVERFLOW == 0, "shmetrics_series: {cell}");
    // SAFETY: as above.
    assert_eq!(unsafe { shmetrics_series(r, 0, null(), null(), 0) }, cell, "found again");
}

/// A histogram family whose bounds cannot be read (here: a misaligned arena
/// offset in the file) made `shmetrics_family_bounds` return the dangling
/// pointer of an empty slice (0x8) instead of NULL.
#[test]
fn family_bounds_is_null_or_inside_the_region() {
    const FAM_BOUNDS_OFF: usize = 40;
    let t = fuzz_bodies::template();
    let (lat, _) = t.defs.iter().find(|(_, d)| d.name == b"lat_seconds").unwrap();
    let m = attach_patched("bounds-off", |b, off| {
        let at = off.families as usize + 128 * *lat as usize + FAM_BOUNDS_OFF;
        let v = u32_at(b, at);
        put_u32(b, at, v + 1);
    });
    // SAFETY: live handle.
    let p = unsafe { shmetrics_family_bounds(m.r, *lat) };
    assert!(p.is_null(), "shmetrics_family_bounds of unreadable bounds: {p:?}");
}

/// Header offsets of the allocation counters (docs/layout.md).
const FAMILIES_USED: usize = 192;
const SERIES_USED: usize = 196;
const CELLS_USED: usize = 200;
const ARENA_USED: usize = 208;

/// A file whose allocation counters are below what its records use was
/// attached: the next family, series, arena bytes or cells handed out were ones
/// in use. With `families_used` one short, defining a new family rewrote the
/// last family's record (the histogram "size" became a gauge) under the caller
/// that still observed into it with its bounds; with `arena_used` short a new
/// key overwrote a family's bounds or the last key; with `cells_used` short two
/// series shared cells. Such a file is refused, like counters beyond the
/// capacities; one short of any counter is enough.
#[test]
fn counters_below_the_records_in_use_are_refused() {
    let t = fuzz_bodies::template();
    let refused = |what: &str, at: usize, wide: bool| {
        for ffi in [false, true] {
            let mut bytes = t.bytes.clone();
            if wide {
                let v = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
                bytes[at..at + 8].copy_from_slice(&(v - 1).to_le_bytes());
            } else {
                let v = u32_at(&bytes, at);
                put_u32(&mut bytes, at, v - 1);
            }
            let path = fuzz_bodies::fresh_path("low-counter");
            std::fs::write(&path, &bytes).unwrap();
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            let opened = fuzz_bodies::open_region(&path, t.params, false, ffi);
            let _ = std::fs::remove_file(&path);
            match opened {
                Ok((r, how)) => {
                    // SAFETY: a fresh path opened once; `r` is not used after this.
                    drop(unsafe { fuzz_bodies::Mapped::new(r) });
                    panic!("{what} one short: attached ({how}), not refused");
                }
                Err((code, msg)) => {
                    assert_eq!(code, SHMETRICS_E_IO, "{what}: {msg}");
                    assert!(msg.contains("has allocation counters below what its records use"), "{what}: {msg}");
                    assert!(msg.contains(what), "{what}: {msg}");
                }
            }
        }
    };
    refused("families_used", FAMILIES_USED, false);
    refused("series_used", SERIES_USED, false);
    refused("cells_used", CELLS_USED, false);
    refused("arena_used", ARENA_USED, true);
    // The intact template attaches (the counters cover its records exactly).
    let m = attach_patched("low-counter-intact", |_, _| {});
    drop(m);
}
