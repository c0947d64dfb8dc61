//! Tests of the C ABI: every exported `extern "C"` function of `shmetrics::ffi`,
//! called directly as LuaJIT calls them (pointers, lengths, return codes, and
//! `shmetrics_last_error` for the message).
//!
//! Each test uses its own region file `/dev/shm/shmetrics-<test>-<pid>`,
//! removed at the end ([`Shm`]).

use std::ffi::{c_char, CStr};
use std::os::unix::fs::PermissionsExt;
use std::ptr::{null, null_mut};

use shmetrics::ffi::*;
use shmetrics::layout::{KIND_COUNTER, KIND_GAUGE, KIND_HISTOGRAM, REASONS};
use testkit::shm::Shm;

// ---------------------------------------------------------------------------
// Helpers

type R = *const shmetrics_region;

fn opts(max_series: u32, max_slots: u32) -> shmetrics_options {
    shmetrics_options {
        max_series,
        max_families: 32,
        max_slots,
        max_label_bytes: 0,
        max_cells: 0,
        flags: 0,
        arena_bytes: 0,
    }
}

/// `shmetrics_open`: the code and the handle (NULL on failure).
fn open_with(path: &[u8], o: Option<&shmetrics_options>) -> (i32, R) {
    let mut out: R = null();
    // SAFETY: `path` is a live slice; `o` NULL or a valid struct; `out` valid.
    let rc = unsafe { shmetrics_open(path.as_ptr().cast(), path.len(), o.map_or(null(), |o| o as *const _), &mut out) };
    (rc, out)
}

fn create(shm: &Shm, o: &shmetrics_options) -> R {
    let (rc, r) = open_with(shm.bytes(), Some(o));
    assert_eq!(rc, SHMETRICS_OPEN_CREATED, "open: {}", last_error());
    assert!(!r.is_null());
    r
}

/// `shmetrics_last_error`, count-then-fill.
fn last_error() -> String {
    // SAFETY: NULL buffer with capacity 0 only asks for the length.
    let n = unsafe { shmetrics_last_error(null_mut(), 0) };
    let mut buf = vec![0u8; n];
    // SAFETY: `buf` has `n` writable bytes.
    let m = unsafe { shmetrics_last_error(buf.as_mut_ptr().cast(), n) };
    assert_eq!(m, n);
    String::from_utf8(buf).unwrap()
}

/// `shmetrics_family` with Rust slices (empty slices pass NULL, as Lua does).
fn family(r: R, kind: u32, name: &str, labels: &[&str], bounds: &[f64]) -> i32 {
    family_help(r, kind, name, "Help.", labels, bounds)
}

fn family_help(r: R, kind: u32, name: &str, help: &str, labels: &[&str], bounds: &[f64]) -> i32 {
    let ptrs: Vec<*const c_char> = labels.iter().map(|l| l.as_ptr().cast()).collect();
    let lens: Vec<usize> = labels.iter().map(|l| l.len()).collect();
    // SAFETY: every pointer/length pair describes a live slice.
    unsafe {
        shmetrics_family(
            r,
            kind,
            name.as_ptr().cast(),
            name.len(),
            help.as_ptr().cast(),
            help.len(),
            if labels.is_empty() { null() } else { ptrs.as_ptr() },
            if labels.is_empty() { null() } else { lens.as_ptr() },
            labels.len() as u32,
            if bounds.is_empty() { null() } else { bounds.as_ptr() },
            bounds.len() as u32,
            0,
        )
    }
}

fn series(r: R, fam: u32, values: &[&[u8]]) -> i32 {
    let ptrs: Vec<*const c_char> = values.iter().map(|v| v.as_ptr().cast()).collect();
    let lens: Vec<usize> = values.iter().map(|v| v.len()).collect();
    // SAFETY: live slices of `values.len()` entries.
    unsafe { shmetrics_series(r, fam, ptrs.as_ptr(), lens.as_ptr(), values.len() as u32) }
}

fn delete(r: R, fam: u32, values: &[&[u8]]) -> i32 {
    let ptrs: Vec<*const c_char> = values.iter().map(|v| v.as_ptr().cast()).collect();
    let lens: Vec<usize> = values.iter().map(|v| v.len()).collect();
    // SAFETY: live slices of `values.len()` entries.
    unsafe { shmetrics_delete(r, fam, ptrs.as_ptr(), lens.as_ptr(), values.len() as u32) }
}

/// The whole exposition through `shmetrics_render_*` in pieces of about `hint`.
fn render(r: R, hint: usize) -> String {
    let mut it: *mut shmetrics_render = null_mut();
    // SAFETY: `r` is a region handle; `it` a valid out-pointer.
    assert_eq!(unsafe { shmetrics_render_open(r, SHMETRICS_FORMAT_TEXT, null(), null(), 0, &mut it) }, 0);
    let mut body = Vec::new();
    let mut chunk: *const c_char = null();
    let mut len = 0usize;
    let mut n = 0;
    loop {
        // SAFETY: `it` is open; out-pointers valid.
        let rc = unsafe { shmetrics_render_next(it, hint, &mut chunk, &mut len) };
        if rc == 0 {
            break;
        }
        assert_eq!(rc, 1);
        // SAFETY: the chunk is valid until the next call on `it`.
        body.extend_from_slice(unsafe { std::slice::from_raw_parts(chunk.cast::<u8>(), len) });
        n += 1;
        assert!(n <= 100_000, "render with hint {hint} did not finish");
    }
    // SAFETY: `it` came from render_open and is closed once.
    unsafe { shmetrics_render_close(it) };
    String::from_utf8(body).unwrap()
}

fn sample_lines<'a>(body: &'a str, name: &str) -> Vec<&'a str> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')))
        .collect()
}

fn cstr(p: *const c_char) -> &'static str {
    // SAFETY: strerror returns a static NUL-terminated string.
    unsafe { CStr::from_ptr(p) }.to_str().unwrap()
}

// ---------------------------------------------------------------------------
// Version, constants, error strings

/// `local NAME = <integer>` in lua/resty/shmetrics/binding.lua.
fn lua_const(src: &str, name: &str) -> i64 {
    let prefix = format!("local {name} = ");
    let line = src
        .lines()
        .find(|l| l.trim_start().starts_with(&prefix))
        .unwrap_or_else(|| panic!("lua/resty/shmetrics/binding.lua has no `{prefix}...`"));
    let v = line.trim_start()[prefix.len()..].split_whitespace().next().unwrap();
    v.parse().unwrap_or_else(|_| panic!("not an integer: {line}"))
}

fn lua_source() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/lua/resty/shmetrics/binding.lua")).unwrap()
}

#[test]
fn abi_version_agrees_with_constant_and_lua_module() {
    assert_eq!(shmetrics_abi_version(), SHMETRICS_ABI_VERSION);
    assert_eq!(SHMETRICS_ABI_VERSION, 1);
    let src = lua_source();
    let line = src.lines().find(|l| l.trim_start().starts_with("ABI_VERSION = ")).expect("Lua ABI_VERSION");
    let v: u32 = line.trim().trim_start_matches("ABI_VERSION = ").trim_end_matches(',').parse().unwrap();
    assert_eq!(v, SHMETRICS_ABI_VERSION);
}

#[test]
fn lua_constants_mirror_the_library() {
    use shmetrics::layout::{
        CELL_ERRORS, CELL_GAUGE_SEQ, GAUGE_DELTA, GAUGE_DELTA_STAMP, GAUGE_SET_STAMP, GAUGE_SET_VALUE,
        GAUGE_SHARED_STAMP, STAMP_SLOTS,
    };
    let src = lua_source();
    let want: [(&str, i64); 19] = [
        ("E_LABEL_COUNT", SHMETRICS_E_LABEL_COUNT as i64),
        ("E_LABEL_TOO_LONG", SHMETRICS_E_LABEL_TOO_LONG as i64),
        ("E_FULL", SHMETRICS_E_FULL as i64),
        ("E_NO_SLOT", SHMETRICS_E_NO_SLOT as i64),
        ("OPEN_RECREATED", SHMETRICS_OPEN_RECREATED as i64),
        ("FORMAT_TEXT", SHMETRICS_FORMAT_TEXT as i64),
        ("FLAG_RESET", SHMETRICS_FLAG_RESET as i64),
        ("KIND_COUNTER", KIND_COUNTER as i64),
        ("KIND_GAUGE", KIND_GAUGE as i64),
        ("KIND_HISTOGRAM", KIND_HISTOGRAM as i64),
        ("CELL_GAUGE_SEQ", CELL_GAUGE_SEQ as i64),
        ("GAUGE_SET_VALUE", GAUGE_SET_VALUE as i64),
        ("GAUGE_SET_STAMP", GAUGE_SET_STAMP as i64),
        ("GAUGE_DELTA", GAUGE_DELTA as i64),
        ("GAUGE_DELTA_STAMP", GAUGE_DELTA_STAMP as i64),
        ("GAUGE_SHARED_STAMP", GAUGE_SHARED_STAMP as i64),
        ("CELL_ERRORS", CELL_ERRORS as i64),
        ("STAMP_SLOTS", STAMP_SLOTS as i64),
        ("DEFAULT_MAX_SLOTS", shmetrics::layout::Params::default().max_slots as i64),
    ];
    for (name, v) in want {
        assert_eq!(lua_const(&src, name), v, "Lua {name}");
    }
    // The reasons table `local R = { name = index, ... }` is the library's list.
    let start = src.find("local R = {").expect("Lua reasons table R");
    let end = start + src[start..].find('}').unwrap();
    let mut lua: Vec<(String, usize)> = src[start + "local R = {".len()..end]
        .split(',')
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let (k, v) = e.split_once('=').unwrap();
            (k.trim().to_string(), v.trim().parse().unwrap())
        })
        .collect();
    lua.sort_by_key(|(_, i)| *i);
    let lib: Vec<(String, usize)> = REASONS.iter().enumerate().map(|(i, r)| (r.to_string(), i)).collect();
    assert_eq!(lua, lib);
}

#[test]
fn strerror_is_distinct_and_non_empty_for_every_code() {
    let codes = [
        (SHMETRICS_OK, "success"),
        (SHMETRICS_E_INVALID, "invalid argument"),
        (SHMETRICS_E_CONFLICT, "conflicting definition"),
        (SHMETRICS_E_LABEL_COUNT, "wrong number of label values"),
        (SHMETRICS_E_LABEL_TOO_LONG, "label value too long"),
        (SHMETRICS_E_FULL, "store full"),
        (SHMETRICS_E_NO_SLOT, "no free worker slot"),
        (SHMETRICS_E_IO, "region file error"),
        (SHMETRICS_E_INTERNAL, "internal error"),
    ];
    assert_eq!(codes.iter().map(|c| c.0).collect::<Vec<_>>(), vec![0, -1, -2, -3, -4, -5, -6, -7, -8]);
    let mut seen = std::collections::HashSet::new();
    for (code, want) in codes {
        let s = cstr(shmetrics_strerror(code));
        assert_eq!(s, want, "code {code}");
        assert!(seen.insert(s), "duplicate text {s:?}");
    }
    for code in [1, -9, i32::MIN, i32::MAX] {
        assert_eq!(cstr(shmetrics_strerror(code)), "unknown error code");
    }
}

#[test]
fn last_error_is_count_then_fill() {
    let (rc, r) = open_with(b"", None);
    assert_eq!((rc, r), (SHMETRICS_E_INVALID, null()));
    let msg = "bad option \"path\": empty";
    // SAFETY: NULL buffer: length only.
    assert_eq!(unsafe { shmetrics_last_error(null_mut(), 0) }, msg.len());
    let mut small = [b'#'; 5];
    // SAFETY: `small` has 5 writable bytes.
    assert_eq!(unsafe { shmetrics_last_error(small.as_mut_ptr().cast(), 5) }, msg.len());
    assert_eq!(&small, b"bad o");
    assert_eq!(last_error(), msg);
    // Per thread: another thread has no message.
    std::thread::spawn(|| assert_eq!(last_error(), "")).join().unwrap();
}

// ---------------------------------------------------------------------------
// shmetrics_open

#[test]
fn open_refuses_missing_path_and_out() {
    let shm = Shm::new("abi-open-null");
    // NULL path, with and without a length.
    let mut out: R = null();
    // SAFETY: NULL path is allowed by the contract (it is refused).
    let rc = unsafe { shmetrics_open(null(), 0, null(), &mut out) };
    assert_eq!(rc, SHMETRICS_E_INVALID);
    assert_eq!(last_error(), "bad option \"path\": empty");
    // SAFETY: as above.
    let rc = unsafe { shmetrics_open(null(), 12, null(), &mut out) };
    assert_eq!(rc, SHMETRICS_E_INVALID);
    assert_eq!(last_error(), "bad option \"path\": empty");
    assert!(out.is_null());
    // Empty path.
    assert_eq!(open_with(b"", None), (SHMETRICS_E_INVALID, null()));
    // NUL inside the path.
    assert_eq!(open_with(b"/dev/shm/a\0b", None).0, SHMETRICS_E_INVALID);
    assert_eq!(last_error(), "bad option \"path\": contains a NUL byte");
    // NULL out: refused before anything is created.
    let p = shm.bytes();
    // SAFETY: valid path; NULL out is refused.
    let rc = unsafe { shmetrics_open(p.as_ptr().cast(), p.len(), null(), null_mut()) };
    assert_eq!(rc, SHMETRICS_E_INVALID);
    assert_eq!(last_error(), "bad argument \"out\": NULL");
    assert!(!shm.path.exists());
}

#[test]
fn open_refuses_bad_options_naming_the_option() {
    let shm = Shm::new("abi-open-opts");
    let cases: Vec<(shmetrics_options, &str)> = vec![
        (opts(100, 1), "bad option \"max_slots\": 1 is not in 2..=4095"),
        (opts(100, 5000), "bad option \"max_slots\": 5000 is not in 2..=4095"),
        (opts((1 << 28) + 1, 8), "bad option \"max_series\": 268435457 is not in 1..=268435456"),
        (
            shmetrics_options { max_families: (1 << 20) + 1, ..opts(100, 8) },
            "bad option \"max_families\": 1048577 is not in 1..=1048576",
        ),
        (
            shmetrics_options { max_label_bytes: (1 << 20) + 1, ..opts(100, 8) },
            "bad option \"max_label_bytes\": 1048577 is not in 1..=1048576",
        ),
        (shmetrics_options { max_cells: 32, ..opts(100, 8) }, "bad option \"max_cells\": 32 is not in 33..=1073741823"),
        (
            shmetrics_options { max_cells: 1 << 30, ..opts(100, 8) },
            "bad option \"max_cells\": 1073741824 is not in 33..=1073741823",
        ),
        (
            shmetrics_options { arena_bytes: 100, ..opts(100, 8) },
            "bad option \"arena_bytes\": 100 is not in 4096..=4294967295",
        ),
        (
            shmetrics_options { arena_bytes: 1 << 32, ..opts(100, 8) },
            "bad option \"arena_bytes\": 4294967296 is not in 4096..=4294967295",
        ),
    ];
    for (o, msg) in cases {
        let (rc, r) = open_with(shm.bytes(), Some(&o));
        assert_eq!((rc, r), (SHMETRICS_E_INVALID, null()), "{msg}");
        assert_eq!(last_error(), msg);
        assert!(!shm.path.exists(), "{msg}: a file was created");
    }
}

#[test]
fn open_reuses_in_process_and_reports_recreated_reason() {
    let a = Shm::new("abi-open-a");
    let b = Shm::new("abi-open-b");
    let o = opts(16, 4);
    let r = create(&a, &o);
    let md = std::fs::metadata(&a.path).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o600);
    // Same path again in this process (a reload): the same mapping.
    let (rc, r2) = open_with(a.bytes(), Some(&o));
    assert_eq!((rc, r2), (SHMETRICS_OPEN_REUSED, r));
    // NULL options mean the defaults: other sizes than this mapping's.
    let (rc, r3) = open_with(a.bytes(), None);
    assert_eq!((rc, r3), (SHMETRICS_E_INVALID, null()));
    assert!(last_error().contains("already mapped with other sizes"));
    // A copy at another path: attached; with the reset flag: recreated, and why.
    std::fs::copy(&a.path, &b.path).unwrap();
    let o_reset = shmetrics_options { flags: SHMETRICS_FLAG_RESET, ..o };
    let (rc, rb) = open_with(b.bytes(), Some(&o_reset));
    assert_eq!(rc, SHMETRICS_OPEN_RECREATED);
    assert!(!rb.is_null() && rb != r);
    assert_eq!(last_error(), "the reset option was given");
    let c = Shm::new("abi-open-c");
    std::fs::copy(&a.path, &c.path).unwrap();
    let (rc, rc_r) = open_with(c.bytes(), Some(&o));
    assert_eq!(rc, SHMETRICS_OPEN_ATTACHED);
    assert!(!rc_r.is_null());
}

// ---------------------------------------------------------------------------
// shmetrics_family

/// (kind, name, help, label names, buckets, the message's start)
type DefCase<'a> = (u32, &'a str, &'a str, Vec<&'a str>, Vec<f64>, &'a str);
/// (kind, name, label names, buckets, the whole message)
type Redef<'a> = (u32, &'a str, Vec<&'a str>, Vec<f64>, &'a str);

#[test]
fn family_definition_errors_name_the_argument() {
    let shm = Shm::new("abi-family-errors");
    let r = create(&shm, &opts(16, 4));
    let eleven: Vec<String> = (0..11).map(|i| format!("l{i}")).collect();
    let eleven: Vec<&str> = eleven.iter().map(|s| s.as_str()).collect();
    let long_name = "a".repeat(257);
    let long_help = "h".repeat(4097);
    let many_bounds: Vec<f64> = (1..=129).map(|i| i as f64).collect();
    #[rustfmt::skip]
    let cases: Vec<DefCase> = vec![
        (KIND_COUNTER, "1abc", "", vec![], vec![], "bad argument \"name\": \"1abc\" is not a valid metric name"),
        (KIND_COUNTER, "a-b", "", vec![], vec![], "bad argument \"name\": \"a-b\" is not a valid metric name"),
        (KIND_COUNTER, "", "", vec![], vec![], "bad argument \"name\": \"\" is not a valid metric name"),
        (KIND_COUNTER, &long_name, "", vec![], vec![], "bad argument \"name\": \"aaaa"),
        (KIND_COUNTER, "shmetrics_x", "", vec![], vec![], "bad argument \"name\": \"shmetrics_x\": the prefix shmetrics_ is reserved"),
        (KIND_COUNTER, "ok_total", "", vec!["a-b"], vec![], "bad argument \"label_names\": \"a-b\" is not a valid label name"),
        (KIND_COUNTER, "ok_total", "", vec!["1a"], vec![], "bad argument \"label_names\": \"1a\" is not a valid label name"),
        (KIND_COUNTER, "ok_total", "", vec!["__x"], vec![], "bad argument \"label_names\": \"__x\" is not a valid label name"),
        (KIND_COUNTER, "ok_total", "", vec![""], vec![], "bad argument \"label_names\": \"\" is not a valid label name"),
        (KIND_COUNTER, "ok_total", "", eleven.clone(), vec![], "bad argument \"label_names\": 11 labels; at most 10"),
        (KIND_COUNTER, "ok_total", "", vec!["a", "b", "a"], vec![], "bad argument \"label_names\": \"a\" appears twice"),
        (KIND_HISTOGRAM, "h", "", vec!["le"], vec![1.0], "bad argument \"label_names\": \"le\" is reserved for histogram buckets"),
        (KIND_HISTOGRAM, "h", "", vec![], vec![1.0, 1.0], "bad argument \"buckets\": bucket #2 (1) is not greater than the one before"),
        (KIND_HISTOGRAM, "h", "", vec![], vec![2.0, 1.0], "bad argument \"buckets\": bucket #2 (1) is not greater than the one before"),
        (KIND_HISTOGRAM, "h", "", vec![], vec![1.0, f64::NAN], "bad argument \"buckets\": bucket #2 is NaN; bounds must be finite"),
        (KIND_HISTOGRAM, "h", "", vec![], vec![f64::NEG_INFINITY, 1.0], "bad argument \"buckets\": bucket #1 is -inf; bounds must be finite"),
        (KIND_HISTOGRAM, "h", "", vec![], vec![], "bad argument \"buckets\": a histogram needs at least one finite bucket"),
        (KIND_HISTOGRAM, "h", "", vec![], vec![f64::INFINITY], "bad argument \"buckets\": a histogram needs at least one finite bucket"),
        (KIND_HISTOGRAM, "h", "", vec![], many_bounds.clone(), "bad argument \"buckets\": 129 buckets; at most 128"),
        (KIND_COUNTER, "c_total", "", vec![], vec![1.0], "bad argument \"buckets\": only histograms have buckets, not a counter"),
        (KIND_GAUGE, "g", "", vec![], vec![1.0], "bad argument \"buckets\": only histograms have buckets, not a gauge"),
        (3, "k", "", vec![], vec![], "bad argument \"kind\": 3 is not a metric kind"),
        (KIND_COUNTER, "ok_total", &long_help, vec![], vec![], "bad argument \"help\": 4097 bytes; at most 4096"),
    ];
    for (kind, name, help, labels, bounds, msg) in &cases {
        let rc = family_help(r, *kind, name, help, labels, bounds);
        assert_eq!(rc, SHMETRICS_E_INVALID, "{msg}");
        let got = last_error();
        assert!(got.starts_with(msg), "want {msg:?}, got {got:?}");
    }
    // None of them took a family entry: the next definition gets id 0.
    assert_eq!(family(r, KIND_COUNTER, "first_total", &[], &[]), 0);
    // 10 labels and `le` on a counter are fine.
    assert_eq!(family(r, KIND_COUNTER, "ten_total", &eleven[..10], &[]), 1);
    assert_eq!(family(r, KIND_COUNTER, "le_total", &["le"], &[]), 2);
}

#[test]
fn family_null_pointers_are_refused() {
    let shm = Shm::new("abi-family-null");
    let r = create(&shm, &opts(16, 4));
    let name = "n_total";
    let l = "a";
    let lp: *const c_char = l.as_ptr().cast();
    let ll = l.len();
    let null_entry: *const c_char = null();
    // SAFETY (all calls): pointers are NULL or live; the function must refuse NULLs.
    unsafe {
        let rc =
            shmetrics_family(null(), 0, name.as_ptr().cast(), name.len(), null(), 0, null(), null(), 0, null(), 0, 0);
        assert_eq!((rc, last_error().as_str()), (SHMETRICS_E_INVALID, "bad argument \"region\": NULL"));
        let rc = shmetrics_family(r, 0, null(), 5, null(), 0, null(), null(), 0, null(), 0, 0);
        assert_eq!((rc, last_error().as_str()), (SHMETRICS_E_INVALID, "bad argument \"name\": NULL"));
        let rc = shmetrics_family(r, 0, name.as_ptr().cast(), name.len(), null(), 3, null(), null(), 0, null(), 0, 0);
        assert_eq!((rc, last_error().as_str()), (SHMETRICS_E_INVALID, "bad argument \"help\": NULL"));
        let rc = shmetrics_family(r, 0, name.as_ptr().cast(), name.len(), null(), 0, null(), &ll, 1, null(), 0, 0);
        assert_eq!((rc, last_error().as_str()), (SHMETRICS_E_INVALID, "bad argument \"label_names\": NULL"));
        let rc = shmetrics_family(r, 0, name.as_ptr().cast(), name.len(), null(), 0, &lp, null(), 1, null(), 0, 0);
        assert_eq!((rc, last_error().as_str()), (SHMETRICS_E_INVALID, "bad argument \"label_names\": NULL"));
        let rc = shmetrics_family(r, 0, name.as_ptr().cast(), name.len(), null(), 0, &null_entry, &ll, 1, null(), 0, 0);
        assert_eq!((rc, last_error().as_str()), (SHMETRICS_E_INVALID, "bad argument \"label_names\": entry 1 is NULL"));
        let rc =
            shmetrics_family(r, KIND_HISTOGRAM, "h".as_ptr().cast(), 1, null(), 0, null(), null(), 0, null(), 3, 0);
        assert_eq!((rc, last_error().as_str()), (SHMETRICS_E_INVALID, "bad argument \"buckets\": NULL or too many"));
        // NULL help with length 0 is an empty help; it works.
        let rc = shmetrics_family(r, 0, name.as_ptr().cast(), name.len(), null(), 0, &lp, &ll, 1, null(), 0, 0);
        assert_eq!(rc, 0);
    }
}

#[test]
fn family_name_collisions_with_histogram_series() {
    let shm = Shm::new("abi-family-collide");
    let r = create(&shm, &opts(16, 4));
    assert_eq!(family(r, KIND_HISTOGRAM, "lat", &[], &[1.0]), 0);
    for suffix in ["_bucket", "_count", "_sum"] {
        let name = format!("lat{suffix}");
        for kind in [KIND_COUNTER, KIND_GAUGE, KIND_HISTOGRAM] {
            let rc = family(r, kind, &name, &[], if kind == KIND_HISTOGRAM { &[1.0] } else { &[] });
            assert_eq!(rc, SHMETRICS_E_CONFLICT, "{name}");
            let msg = last_error();
            assert!(msg.starts_with("bad argument \"name\": "), "{msg}");
            assert!(msg.contains(&format!("\"{name}\"")) && msg.contains("\"lat\""), "{msg}");
        }
    }
    // The other way round: a histogram whose generated series names exist.
    assert_eq!(family(r, KIND_COUNTER, "req_sum", &[], &[]), 1);
    assert_eq!(family(r, KIND_GAUGE, "q_count", &[], &[]), 2);
    assert_eq!(family(r, KIND_COUNTER, "z_bucket", &[], &[]), 3);
    for (h, exposed) in [("req", "req_sum"), ("q", "q_count"), ("z", "z_bucket")] {
        assert_eq!(family(r, KIND_HISTOGRAM, h, &[], &[1.0]), SHMETRICS_E_CONFLICT);
        let msg = last_error();
        assert!(msg.starts_with("bad argument \"name\": "), "{msg}");
        assert!(msg.contains(&format!("\"{h}\"")) && msg.contains(&format!("\"{exposed}\"")), "{msg}");
    }
    // A counter named like a counter's suffix is fine (only histograms expose suffixes).
    assert_eq!(family(r, KIND_COUNTER, "c", &[], &[]), 4);
    assert_eq!(family(r, KIND_COUNTER, "c_sum", &[], &[]), 5);
}

#[test]
fn redefinition_same_returns_id_different_conflicts() {
    let shm = Shm::new("abi-family-redefine");
    let r = create(&shm, &opts(16, 4));
    let c = family(r, KIND_COUNTER, "c_total", &["a", "b"], &[]);
    let h = family(r, KIND_HISTOGRAM, "h", &["x"], &[1.0, 2.0]);
    assert_eq!((c, h), (0, 1));
    assert_eq!(family(r, KIND_COUNTER, "c_total", &["a", "b"], &[]), c);
    // A trailing +Inf bucket is implied: the same definition.
    assert_eq!(family(r, KIND_HISTOGRAM, "h", &["x"], &[1.0, 2.0, f64::INFINITY]), h);
    let conflicts: Vec<Redef> = vec![
        (
            KIND_GAUGE,
            "c_total",
            vec!["a", "b"],
            vec![],
            "metric \"c_total\" is already defined as counter {a,b}; this definition is gauge {a,b}",
        ),
        (
            KIND_COUNTER,
            "c_total",
            vec!["a"],
            vec![],
            "metric \"c_total\" is already defined as counter {a,b}; this definition is counter {a}",
        ),
        (
            KIND_COUNTER,
            "c_total",
            vec!["b", "a"],
            vec![],
            "metric \"c_total\" is already defined as counter {a,b}; this definition is counter {b,a}",
        ),
        (
            KIND_HISTOGRAM,
            "h",
            vec!["x"],
            vec![1.0, 3.0],
            "metric \"h\" is already defined as histogram {x} buckets [1.0, 2.0]; this definition is histogram {x} buckets [1.0, 3.0]",
        ),
        (
            KIND_COUNTER,
            "h",
            vec!["x"],
            vec![],
            "metric \"h\" is already defined as histogram {x} buckets [1.0, 2.0]; this definition is counter {x}",
        ),
    ];
    for (kind, name, labels, bounds, msg) in conflicts {
        assert_eq!(family(r, kind, name, &labels, &bounds), SHMETRICS_E_CONFLICT, "{msg}");
        assert_eq!(last_error(), msg);
    }
    // Another HELP text is not a conflict: the same id, the new text is shown.
    assert_eq!(family_help(r, KIND_COUNTER, "c_total", "New help.", &["a", "b"], &[]), c);
    assert!(series(r, c as u32, &[b"1", b"2"]) >= 0);
    let body = render(r, usize::MAX);
    assert!(
        body.starts_with("# HELP c_total New help.\n# TYPE c_total counter\nc_total{a=\"1\",b=\"2\"} 0\n"),
        "{body}"
    );
}

// ---------------------------------------------------------------------------
// shmetrics_series / delete / reset

#[test]
fn series_label_checks_and_identity() {
    let shm = Shm::new("abi-series");
    let o = shmetrics_options { max_label_bytes: 8, ..opts(16, 4) };
    let r = create(&shm, &o);
    let fam = family(r, KIND_COUNTER, "s_total", &["a", "b"], &[]) as u32;
    let g = family(r, KIND_GAUGE, "g", &[], &[]) as u32;
    for n in [0usize, 1, 3, 10] {
        let vals: Vec<&[u8]> = vec![b"x"; n];
        assert_eq!(series(r, fam, &vals), SHMETRICS_E_LABEL_COUNT, "{n} values");
        assert_eq!(last_error(), format!("expected 2 label values, got {n}"));
    }
    let vals: Vec<&[u8]> = vec![b"x"; 11];
    assert_eq!(series(r, fam, &vals), SHMETRICS_E_LABEL_COUNT);
    assert_eq!(last_error(), "11 label values; at most 10");
    assert_eq!(series(r, fam, &[b"x", b"123456789"]), SHMETRICS_E_LABEL_TOO_LONG);
    assert_eq!(last_error(), "label value #2 is 9 bytes; the limit (max_label_bytes) is 8");
    // At the limit is fine; empty values are values too.
    let first = series(r, fam, &[b"x", b"12345678"]);
    assert_eq!(first, 32);
    assert_eq!(series(r, fam, &[b"x", b"12345678"]), 32);
    assert_eq!(series(r, fam, &[b"", b""]), 33);
    assert_eq!(series(r, fam, &[b"x", b"y"]), 34);
    assert_eq!(series(r, fam, &[b"y", b"x"]), 35);
    // Values are length-delimited: ("ab","c") is not ("a","bc").
    assert_eq!(series(r, fam, &[b"ab", b"c"]), 36);
    assert_eq!(series(r, fam, &[b"a", b"bc"]), 37);
    assert_eq!(series(r, fam, &[b"ab", b"c"]), 36);
    // A gauge takes 4 cells per series.
    assert_eq!(series(r, g, &[]), 38);
    assert_eq!(family(r, KIND_HISTOGRAM, "h", &[], &[1.0, 2.0]), 2);
    assert_eq!(series(r, 2, &[]), 42);
    assert_eq!(series(r, 2, &[]), 42);
    assert_eq!(family(r, KIND_COUNTER, "after_total", &[], &[]), 3);
    assert_eq!(series(r, 3, &[]), 46);
    // No such family.
    assert_eq!(series(r, 99, &[]), SHMETRICS_E_INVALID);
    assert_eq!(last_error(), "no family with id 99");
}

#[test]
fn series_delete_reset_null_pointers_are_refused() {
    let shm = Shm::new("abi-series-null");
    let r = create(&shm, &opts(16, 4));
    let fam = family(r, KIND_COUNTER, "n_total", &["a", "b"], &[]) as u32;
    let v: [*const c_char; 2] = ["x".as_ptr().cast(), "y".as_ptr().cast()];
    let l: [usize; 2] = [1, 1];
    let vnull: [*const c_char; 2] = ["x".as_ptr().cast(), null()];
    let l0: [usize; 2] = [1, 0];
    // SAFETY (all calls): pointers are NULL or live arrays of 2; NULLs must be refused.
    unsafe {
        for f in [shmetrics_series, shmetrics_delete] {
            assert_eq!(f(null(), fam, v.as_ptr(), l.as_ptr(), 2), SHMETRICS_E_INVALID);
            assert_eq!(last_error(), "bad argument \"region\": NULL");
            assert_eq!(f(r, fam, null(), l.as_ptr(), 2), SHMETRICS_E_INVALID);
            assert_eq!(last_error(), "bad argument \"label values\": NULL");
            assert_eq!(f(r, fam, v.as_ptr(), null(), 2), SHMETRICS_E_INVALID);
            assert_eq!(last_error(), "bad argument \"label values\": NULL");
            assert_eq!(f(r, fam, vnull.as_ptr(), l.as_ptr(), 2), SHMETRICS_E_INVALID);
            assert_eq!(last_error(), "bad argument \"label values\": entry 2 is NULL");
            // n = 0 with NULL arrays: a label count error, not a crash.
            assert_eq!(f(r, fam, null(), null(), 0), SHMETRICS_E_LABEL_COUNT);
        }
        // A NULL entry with length 0 is the empty value.
        let cell = shmetrics_series(r, fam, vnull.as_ptr(), l0.as_ptr(), 2);
        assert_eq!(cell, 32);
        assert_eq!(series(r, fam, &[b"x", b""]), 32);
        assert_eq!(shmetrics_delete(r, fam, vnull.as_ptr(), l0.as_ptr(), 2), 1);
        assert_eq!(shmetrics_reset(null(), fam), SHMETRICS_E_INVALID);
        assert_eq!(shmetrics_reset(r, 77), SHMETRICS_E_INVALID);
        assert_eq!(last_error(), "no family with id 77");
        assert_eq!(shmetrics_claim_slot(null()), SHMETRICS_E_INVALID);
        assert!(shmetrics_slot_cells(null(), 1).is_null());
        assert!(shmetrics_slot_cells(r, 4).is_null());
        assert!(!shmetrics_slot_cells(r, 3).is_null());
        assert!(shmetrics_family_gen(null(), fam).is_null());
        assert!(shmetrics_family_gen(r, 77).is_null());
        assert!(shmetrics_family_bounds(null(), fam).is_null());
        assert!(shmetrics_family_bounds(r, fam).is_null()); // not a histogram
        shmetrics_count_error(null(), 0);
        shmetrics_count_error(r, 1000); // unknown reason: ignored
    }
}

#[test]
fn delete_and_reset_return_counts_and_move_the_generation() {
    let shm = Shm::new("abi-delete");
    let r = create(&shm, &opts(16, 4));
    let fam = family(r, KIND_COUNTER, "d_total", &["k"], &[]) as u32;
    // SAFETY: `r` is a region handle; the pointer stays valid (never unmapped).
    let gen = unsafe { shmetrics_family_gen(r, fam) };
    assert!(!gen.is_null());
    // SAFETY: as above.
    let read_gen = || unsafe { std::ptr::read_volatile(gen) };
    let g0 = read_gen();
    let a = series(r, fam, &[b"a"]);
    let b = series(r, fam, &[b"b"]);
    assert_eq!((a, b), (32, 33));
    assert_eq!(delete(r, fam, &[b"a"]), 1);
    assert_eq!(read_gen(), g0 + 1);
    assert_eq!(delete(r, fam, &[b"a"]), 0);
    assert_eq!(delete(r, fam, &[b"zzz"]), 0);
    assert_eq!(read_gen(), g0 + 1);
    assert_eq!(delete(r, fam, &[]), SHMETRICS_E_LABEL_COUNT);
    assert_eq!(series(r, fam, &[b"a"]), 34);
    // SAFETY: region handle.
    assert_eq!(unsafe { shmetrics_reset(r, fam) }, 2);
    assert_eq!(read_gen(), g0 + 2);
    // SAFETY: region handle.
    assert_eq!(unsafe { shmetrics_reset(r, fam) }, 0);
    assert_eq!(sample_lines(&render(r, usize::MAX), "d_total"), Vec::<&str>::new());
}

#[test]
fn full_store_is_e_full() {
    let shm = Shm::new("abi-full");
    let r = create(&shm, &opts(2, 4));
    let fam = family(r, KIND_COUNTER, "f_total", &["k"], &[]) as u32;
    assert_eq!(series(r, fam, &[b"1"]), 32);
    assert_eq!(series(r, fam, &[b"2"]), 33);
    assert_eq!(series(r, fam, &[b"3"]), SHMETRICS_E_FULL);
    assert_eq!(last_error(), "all 2 series are used; raise max_series");
    assert_eq!(series(r, fam, &[b"1"]), 32);
}

// ---------------------------------------------------------------------------
// Hot path: slots, cells, observe

#[test]
fn observe_uses_le_semantics_and_adds_to_the_sum() {
    let shm = Shm::new("abi-observe");
    let r = create(&shm, &opts(16, 4));
    let fam = family(r, KIND_HISTOGRAM, "lat", &["p"], &[0.5, 1.0, 2.5, f64::INFINITY]) as u32;
    // SAFETY: region handle.
    let slot = unsafe { shmetrics_claim_slot(r) };
    assert_eq!(slot, 1);
    // SAFETY: region handle.
    assert_eq!(unsafe { shmetrics_claim_slot(r) }, 1);
    // SAFETY: region handle, slot in range.
    let cells = unsafe { shmetrics_slot_cells(r, slot as u32) };
    // SAFETY: region handle; a histogram family.
    let bounds = unsafe { shmetrics_family_bounds(r, fam) };
    assert!(!cells.is_null() && !bounds.is_null());
    // SAFETY: the family has 3 finite bounds (the +Inf was dropped).
    assert_eq!(unsafe { std::slice::from_raw_parts(bounds, 3) }, &[0.5, 1.0, 2.5]);
    let base = series(r, fam, &[b"/x"]);
    assert_eq!(base, 32);
    let next_after_2_5 = f64::from_bits(2.5f64.to_bits() + 1);
    let values = [0.5, 0.25, -1.0, 1.0, 0.75, 2.5, 1.5, next_after_2_5, 1e9];
    let mut sum = 0.0;
    for v in values {
        // SAFETY: own slot's cells, a histogram series' base, its bounds.
        unsafe { shmetrics_observe(cells, base as u32, bounds, 3, v) };
        sum += v;
    }
    // Non-cumulative cells: (≤0.5) 0.5 0.25 -1 | (≤1) 1 0.75 | (≤2.5) 2.5 1.5 | (+Inf) 2.5+ 1e9; then the sum.
    // SAFETY: the series owns cells base..base+5 of this slot.
    let got: Vec<f64> = (0..5).map(|i| unsafe { *cells.add(base as usize + i) }).collect();
    assert_eq!(got, vec![3.0, 2.0, 2.0, 2.0, sum]);
    let body = render(r, usize::MAX);
    let mut sum_text = Vec::new();
    shmetrics::expo::write_value(&mut sum_text, sum);
    let sum_line = format!("lat_sum{{p=\"/x\"}} {}", String::from_utf8(sum_text).unwrap());
    assert_eq!(
        [sample_lines(&body, "lat_bucket"), sample_lines(&body, "lat_sum"), sample_lines(&body, "lat_count")].concat(),
        vec![
            "lat_bucket{p=\"/x\",le=\"0.5\"} 3",
            "lat_bucket{p=\"/x\",le=\"1\"} 5",
            "lat_bucket{p=\"/x\",le=\"2.5\"} 7",
            "lat_bucket{p=\"/x\",le=\"+Inf\"} 9",
            sum_line.as_str(),
            "lat_count{p=\"/x\"} 9",
        ]
    );
    // NaN (the Lua module refuses it; a C caller may not) counts in +Inf.
    let nan_series = series(r, fam, &[b"/nan"]);
    // SAFETY: own slot's cells, a histogram series' base, its bounds.
    unsafe { shmetrics_observe(cells, nan_series as u32, bounds, 3, f64::NAN) };
    // SAFETY: the series owns cells base..base+5 of this slot.
    let buckets: Vec<f64> = (0..4).map(|i| unsafe { *cells.add(nan_series as usize + i) }).collect();
    assert_eq!(buckets, vec![0.0, 0.0, 0.0, 1.0]);
}

#[test]
fn count_error_shows_in_self_metrics() {
    let shm = Shm::new("abi-count-error");
    let r = create(&shm, &opts(16, 4));
    // SAFETY: region handle; reasons by index.
    unsafe {
        shmetrics_count_error(r, 0);
        shmetrics_count_error(r, 0);
        shmetrics_count_error(r, 10);
    }
    let body = render(r, usize::MAX);
    let lines = sample_lines(&body, "shmetrics_errors_total");
    let want: Vec<String> = REASONS
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let n = match i {
                0 => 2,
                10 => 1,
                _ => 0,
            };
            format!("shmetrics_errors_total{{reason=\"{name}\"}} {n}")
        })
        .collect();
    assert_eq!(lines, want);
}

// ---------------------------------------------------------------------------
// Rendering through the ABI

#[test]
fn render_null_arguments_are_refused() {
    let shm = Shm::new("abi-render-null");
    let r = create(&shm, &opts(16, 4));
    let mut it: *mut shmetrics_render = null_mut();
    let mut chunk: *const c_char = null();
    let mut len = 0usize;
    // SAFETY (all calls): NULLs must be refused; `it` is closed once.
    unsafe {
        assert_eq!(
            shmetrics_render_open(null(), SHMETRICS_FORMAT_TEXT, null(), null(), 0, &mut it),
            SHMETRICS_E_INVALID
        );
        assert_eq!(last_error(), "bad argument \"region\": NULL");
        assert_eq!(shmetrics_render_open(r, SHMETRICS_FORMAT_TEXT, null(), null(), 0, null_mut()), SHMETRICS_E_INVALID);
        assert_eq!(last_error(), "bad argument \"out\": NULL");
        assert_eq!(shmetrics_render_open(r, 3, null(), null(), 0, &mut it), SHMETRICS_E_INVALID);
        assert_eq!(last_error(), "bad argument \"format\": 3");
        // A name filter of n > 0 entries needs both arrays, and no NULL entry.
        let name = "x";
        let np: *const c_char = name.as_ptr().cast();
        let nl = name.len();
        let nnull: *const c_char = null();
        assert_eq!(shmetrics_render_open(r, SHMETRICS_FORMAT_TEXT, null(), &nl, 1, &mut it), SHMETRICS_E_INVALID);
        assert!(last_error().starts_with("bad argument \"names\": NULL"));
        assert_eq!(shmetrics_render_open(r, SHMETRICS_FORMAT_TEXT, &np, null(), 1, &mut it), SHMETRICS_E_INVALID);
        assert!(last_error().starts_with("bad argument \"names\": NULL"));
        assert_eq!(shmetrics_render_open(r, SHMETRICS_FORMAT_TEXT, &nnull, &nl, 1, &mut it), SHMETRICS_E_INVALID);
        assert_eq!(last_error(), "bad argument \"names\": entry 1 is NULL");
        assert!(it.is_null());
        assert_eq!(shmetrics_render_next(null_mut(), 100, &mut chunk, &mut len), SHMETRICS_E_INVALID);
        assert_eq!(last_error(), "bad argument \"it\": NULL");
        shmetrics_render_close(null_mut());
        assert_eq!(shmetrics_render_open(r, SHMETRICS_FORMAT_TEXT, null(), null(), 0, &mut it), 0);
        assert!(!it.is_null());
        assert_eq!(shmetrics_render_next(it, 100, null_mut(), &mut len), SHMETRICS_E_INVALID);
        assert_eq!(last_error(), "bad argument \"chunk\": NULL");
        assert_eq!(shmetrics_render_next(it, 100, &mut chunk, null_mut()), SHMETRICS_E_INVALID);
        assert_eq!(last_error(), "bad argument \"len\": NULL");
        // Still usable after the refused calls; then done, and done again.
        assert_eq!(shmetrics_render_next(it, usize::MAX, &mut chunk, &mut len), 1);
        assert!(len > 0);
        assert_eq!(shmetrics_render_next(it, usize::MAX, &mut chunk, &mut len), 0);
        assert_eq!(shmetrics_render_next(it, usize::MAX, &mut chunk, &mut len), 0);
        shmetrics_render_close(it);
    }
}

#[test]
fn render_with_tiny_hints_concatenates_to_the_same_body() {
    let shm = Shm::new("abi-render-chunks");
    let r = create(&shm, &opts(64, 4));
    let c = family_help(r, KIND_COUNTER, "a_total", "A counter with a long help text.", &["k"], &[]) as u32;
    let h = family(r, KIND_HISTOGRAM, "b", &[], &[1.0, 2.0]) as u32;
    for i in 0..20 {
        assert!(series(r, c, &[format!("v{i}").as_bytes()]) >= 0);
    }
    assert!(series(r, h, &[]) >= 0);
    let whole = render(r, usize::MAX);
    assert_eq!(sample_lines(&whole, "a_total").len(), 20);
    for hint in [0, 1, 3, 50, 1000] {
        assert_eq!(render(r, hint), whole, "hint {hint}");
    }
}

/// The whole exposition through `shmetrics_render_start`/`_poll` (the render
/// thread), polling until done, and the number of pieces it came in.
fn render_threaded(r: R, hint: usize, depth: u32) -> (String, usize) {
    let mut it: *mut shmetrics_render_job = null_mut();
    // SAFETY: `r` is a region handle; `it` a valid out-pointer.
    assert_eq!(unsafe { shmetrics_render_start(r, SHMETRICS_FORMAT_TEXT, null(), null(), 0, hint, depth, &mut it) }, 0);
    let (mut body, mut pieces) = (Vec::new(), 0);
    let mut chunk: *const c_char = null();
    let mut len = 0usize;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        // SAFETY: `it` is running; out-pointers valid.
        match unsafe { shmetrics_render_poll(it, &mut chunk, &mut len) } {
            0 => break,
            1 => {
                // SAFETY: the piece is valid until the next call on `it`.
                body.extend_from_slice(unsafe { std::slice::from_raw_parts(chunk.cast::<u8>(), len) });
                pieces += 1;
            }
            SHMETRICS_RENDER_PENDING => std::thread::sleep(std::time::Duration::from_micros(100)),
            rc => panic!("poll: {rc} {}", last_error()),
        }
        assert!(std::time::Instant::now() < deadline, "threaded render with hint {hint} did not finish");
    }
    // SAFETY: `it` came from render_start and is stopped once.
    unsafe { shmetrics_render_stop(it) };
    (String::from_utf8(body).unwrap(), pieces)
}

#[test]
fn render_thread_gives_the_same_body_and_refuses_bad_arguments() {
    let shm = Shm::new("abi-render-thread");
    let r = create(&shm, &opts(256, 4));
    let c = family(r, KIND_COUNTER, "t_total", &["k"], &[]) as u32;
    let h = family(r, KIND_HISTOGRAM, "u", &["k"], &[0.5, 1.0]) as u32;
    for i in 0..100 {
        assert!(series(r, c, &[format!("v{i}").as_bytes()]) >= 0);
        assert!(series(r, h, &[format!("w{i}").as_bytes()]) >= 0);
    }
    let whole = render(r, usize::MAX);
    for (hint, depth) in [(1, 1), (100, 2), (1000, 16), (usize::MAX, 1)] {
        let (body, pieces) = render_threaded(r, hint, depth);
        assert_eq!(body, whole, "hint {hint}, depth {depth}");
        assert_eq!(pieces > 1, hint < whole.len(), "hint {hint}: {pieces} pieces");
    }
    let mut it: *mut shmetrics_render_job = null_mut();
    let mut chunk: *const c_char = null();
    let mut len = 0usize;
    // SAFETY (all calls): NULLs and bad values must be refused; `it` is stopped once.
    unsafe {
        for depth in [0, SHMETRICS_RENDER_MAX_DEPTH + 1] {
            assert_eq!(
                shmetrics_render_start(r, SHMETRICS_FORMAT_TEXT, null(), null(), 0, 100, depth, &mut it),
                SHMETRICS_E_INVALID
            );
            assert_eq!(last_error(), format!("bad argument \"depth\": {depth}; 1 to {SHMETRICS_RENDER_MAX_DEPTH}"));
        }
        assert_eq!(
            shmetrics_render_start(null(), SHMETRICS_FORMAT_TEXT, null(), null(), 0, 100, 2, &mut it),
            SHMETRICS_E_INVALID
        );
        assert_eq!(last_error(), "bad argument \"region\": NULL");
        assert_eq!(shmetrics_render_start(r, 3, null(), null(), 0, 100, 2, &mut it), SHMETRICS_E_INVALID);
        assert_eq!(
            shmetrics_render_start(r, SHMETRICS_FORMAT_TEXT, null(), null(), 0, 100, 2, null_mut()),
            SHMETRICS_E_INVALID
        );
        assert!(it.is_null());
        assert_eq!(shmetrics_render_poll(null_mut(), &mut chunk, &mut len), SHMETRICS_E_INVALID);
        shmetrics_render_stop(null_mut());
        // Stopped early: the thread lets go of the job.
        assert_eq!(shmetrics_render_start(r, SHMETRICS_FORMAT_TEXT, null(), null(), 0, 1, 1, &mut it), 0);
        assert_eq!(shmetrics_render_poll(it, null_mut(), &mut len), SHMETRICS_E_INVALID);
        assert_eq!(last_error(), "bad argument \"chunk\": NULL");
        assert_eq!(shmetrics_render_poll(it, &mut chunk, null_mut()), SHMETRICS_E_INVALID);
        assert_eq!(last_error(), "bad argument \"len\": NULL");
        shmetrics_render_stop(it);
    }
    // Tests of this file run in parallel: other threaded renders may be running.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while shmetrics_render_jobs() != 0 {
        assert!(std::time::Instant::now() < deadline, "{} render jobs still held", shmetrics_render_jobs());
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}
