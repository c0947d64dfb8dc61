//! Store tests: capacity limits, delete/reset, label sanitising, attaching and
//! recreating region files, several processes writing one region (fork), the
//! gauge stamp protocol, and the renderer.
//!
//! Every test maps its own region file `/dev/shm/shmetrics-<test>-<pid>` and
//! removes it when done ([`Shm`]). The library keeps each mapping for the life of
//! the process (Lua holds raw pointers into it), so a test that needs a "second
//! open" of a file uses a copy at another path, or a forked child.
//!
//! Forked children never return into the test harness: they run a closure that
//! returns an exit code and leave with `_exit`. A child reports a failed check as
//! a distinct non-zero code; the parent asserts every child exited 0. Tests that
//! fork hold [`FORK_LOCK`], so the harness's other threads are the only company
//! (at most one family of children runs at a time on a 2-CPU machine).

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use shmetrics::cells;
use shmetrics::error::Error;
use shmetrics::expo::Format;
use shmetrics::ffi;
use shmetrics::layout::*;
use shmetrics::region::{self, Opened, Region};
use shmetrics::registry::FamilyDef;
use shmetrics::scrape::Render;
use testkit::shm::Shm;

// ---------------------------------------------------------------------------
// Helpers

/// A region file path of one test, removed (with any copies) when dropped.
fn params(max_series: u32, max_slots: u32) -> Params {
    Params { max_series, max_families: 16, max_slots, max_label_bytes: 64, max_cells: 0, arena_bytes: 0 }
}

/// Opens a fresh region at `shm`; it must be newly created.
fn create(shm: &Shm, p: Params) -> &'static Region {
    let (r, how) = region::open(&shm.path, p, false).unwrap_or_else(|e| panic!("open {}: {e}", shm.path.display()));
    assert_eq!(how, Opened::Created);
    r
}

fn define(r: &Region, kind: u32, name: &str, help: &str, labels: &[&str], bounds: &[f64]) -> Result<u32, Error> {
    let labels: Vec<&[u8]> = labels.iter().map(|l| l.as_bytes()).collect();
    r.define_family(&FamilyDef {
        kind,
        name: name.as_bytes(),
        help: help.as_bytes(),
        labels: &labels,
        bounds,
        max_series: 0,
    })
}

fn family(r: &Region, kind: u32, name: &str, labels: &[&str], bounds: &[f64]) -> u32 {
    define(r, kind, name, "Help.", labels, bounds).unwrap_or_else(|e| panic!("define {name}: {e}"))
}

fn cell(r: &Region, fam: u32, values: &[&str]) -> u32 {
    let values: Vec<&[u8]> = values.iter().map(|v| v.as_bytes()).collect();
    r.series_cell(fam, &values).unwrap_or_else(|e| panic!("series of family {fam}: {e}"))
}

fn series(r: &Region, fam: u32, values: &[&[u8]]) -> Result<u32, Error> {
    r.series_cell(fam, values)
}

/// Renders the whole exposition in chunks of about `hint` bytes; panics instead
/// of looping forever if the renderer never finishes.
fn render_chunks(r: &'static Region, hint: usize) -> Vec<Vec<u8>> {
    render_chunks_in(r, Format::Text004, hint)
}

fn render_chunks_in(r: &'static Region, fmt: Format, hint: usize) -> Vec<Vec<u8>> {
    let mut it = Render::new(r, fmt);
    let mut chunks = Vec::new();
    while it.next_chunk(hint) {
        chunks.push(it.buf.clone());
        assert!(chunks.len() <= 100_000, "render with hint {hint} did not finish after 100000 chunks");
    }
    chunks
}

fn render(r: &'static Region) -> String {
    let chunks = render_chunks(r, usize::MAX);
    assert!(chunks.len() <= 1, "hint usize::MAX gave {} chunks", chunks.len());
    String::from_utf8(chunks.concat()).expect("exposition is UTF-8")
}

/// The value of the sample line whose name and labels are exactly `key`.
fn sample(body: &str, key: &str) -> Option<f64> {
    let mut found = None;
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let (k, v) = line.rsplit_once(' ')?;
        if k == key {
            assert!(found.is_none(), "sample {key} appears twice in:\n{body}");
            found = Some(match v {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                _ => v.parse::<f64>().unwrap_or_else(|_| panic!("bad value in {line:?}")),
            });
        }
    }
    found
}

fn must_sample(body: &str, key: &str) -> f64 {
    sample(body, key).unwrap_or_else(|| panic!("no sample {key} in:\n{body}"))
}

/// Sample lines (not comments) of metric `name` (exactly `name`, then `{` or ` `).
fn lines_of<'a>(body: &'a str, name: &str) -> Vec<&'a str> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')))
        .collect()
}

/// The exposition up to the self-metrics.
fn user_part(body: &str) -> &str {
    let i = body.find("# HELP shmetrics_errors_total").expect("self-metrics present");
    &body[..i]
}

/// `gauge:set` of lua/resty/shmetrics/metrics.lua, by the library's rule (`cells::gauge_set`).
fn gauge_set(r: &Region, slot: u32, base: u32, v: f64) {
    assert!(base + GAUGE_CELLS <= r.params.max_cells);
    // SAFETY: the caller's own slot, a gauge's cells (in range: asserted).
    unsafe { cells::gauge_set(r, slot, base, v) };
}

/// `gauge:inc` of lua/resty/shmetrics/metrics.lua: deltas count only since the last set.
fn gauge_inc(r: &Region, slot: u32, base: u32, v: f64) {
    assert!(base + GAUGE_CELLS <= r.params.max_cells);
    // SAFETY: as gauge_set.
    unsafe { cells::gauge_add(r, slot, base, v) };
}

fn promtool_check(body: &str) {
    if !Path::new("/usr/bin/promtool").exists() {
        eprintln!("promtool not installed: skipping `promtool check metrics`");
        return;
    }
    let mut child = Command::new("/usr/bin/promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    let mut stdin = child.stdin.take().unwrap();
    let input = body.as_bytes().to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("promtool output");
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}\n{}{}\nbody:\n{body}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// --- fork helpers ----------------------------------------------------------

static FORK_LOCK: Mutex<()> = Mutex::new(());

fn fork_lock() -> std::sync::MutexGuard<'static, ()> {
    FORK_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Control words shared by the parent and its children (an anonymous shared mapping).
#[repr(C)]
struct Ctl {
    ready: AtomicU32,
    go: AtomicU32,
    step: AtomicU32,
    flag: AtomicU32,
    slots: [AtomicU32; 16],
    codes: [AtomicU32; 16],
}

fn ctl() -> &'static Ctl {
    // SAFETY: a fresh anonymous shared mapping, zero-filled, page aligned; Ctl is
    // atomics only, for which all-zero is a valid value. Never unmapped.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            std::mem::size_of::<Ctl>(),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        &*(p as *const Ctl)
    }
}

/// Spins (yielding) until `a == v`; false after 30 s.
fn wait_for(a: &AtomicU32, v: u32) -> bool {
    let t = Instant::now();
    while a.load(Ordering::Acquire) != v {
        if t.elapsed() > Duration::from_secs(30) {
            return false;
        }
        // SAFETY: no preconditions.
        unsafe { libc::sched_yield() };
    }
    true
}

/// Forks a child that runs `f` and exits with its result (101 if it panicked).
fn spawn(f: impl FnOnce() -> i32) -> libc::pid_t {
    // SAFETY: the child only runs `f` (no locks held by other threads are taken:
    // no stdout, no region::open) and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let code = std::panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or(101);
        // SAFETY: ends the child without running the harness or destructors.
        unsafe { libc::_exit(code) };
    }
    pid
}

/// Waits for `pid`; its exit code, or 1000 + signal.
fn wait(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    // SAFETY: `pid` is our child; `status` a valid out-pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid, "waitpid: {}", std::io::Error::last_os_error());
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        1000 + libc::WTERMSIG(status)
    }
}

fn wait_all(pids: &[libc::pid_t]) {
    let codes: Vec<i32> = pids.iter().map(|&p| wait(p)).collect();
    assert!(codes.iter().all(|&c| c == 0), "child exit codes: {codes:?}");
}

/// Returns `Err(code)` from the enclosing child closure when `cond` is false.
macro_rules! check {
    ($cond:expr, $code:expr) => {
        if !$cond {
            return $code;
        }
    };
}

fn total_series_lines(body: &str, name: &str) -> usize {
    lines_of(body, name).len()
}

// ---------------------------------------------------------------------------
// 1. Capacity

#[test]
fn series_capacity_full_keeps_existing_and_counts_dropped() {
    let shm = Shm::new("cap-series");
    let r = create(&shm, params(10, 4));
    let fam = family(r, KIND_COUNTER, "cap_total", &["k"], &[]);
    let slot = r.claim_slot().unwrap();
    let mut cells = Vec::new();
    for i in 0..10 {
        let c = cell(r, fam, &[&format!("v{i}")]);
        cells::add(r, slot, c, (i + 1) as f64);
        cells.push(c);
    }
    // Counters use one cell each, handed out in order after the reserved cells.
    assert_eq!(cells, (RESERVED_CELLS..RESERVED_CELLS + 10).collect::<Vec<_>>());
    let e = series(r, fam, &[b"v10"]).unwrap_err();
    assert_eq!(e.code(), ffi::SHMETRICS_E_FULL);
    assert_eq!(e.message(), "all 10 series are used; raise max_series");
    assert_eq!(r.family(fam).dropped.load(Ordering::Relaxed), 1);
    let e = series(r, fam, &[b"v11"]).unwrap_err();
    assert_eq!(e.code(), ffi::SHMETRICS_E_FULL);
    assert_eq!(r.family(fam).dropped.load(Ordering::Relaxed), 2);
    // Existing series still resolve to their own cells and keep counting.
    for (i, &c) in cells.iter().enumerate() {
        assert_eq!(cell(r, fam, &[&format!("v{i}")]), c);
        cells::add(r, slot, c, 100.0);
    }
    let body = render(r);
    assert_eq!(total_series_lines(&body, "cap_total"), 10);
    for i in 0..10 {
        assert_eq!(must_sample(&body, &format!("cap_total{{k=\"v{i}\"}}")), (i + 1) as f64 + 100.0);
    }
    assert_eq!(sample(&body, "cap_total{k=\"v10\"}"), None);
    assert_eq!(must_sample(&body, "shmetrics_series_used"), 10.0);
    assert_eq!(must_sample(&body, "shmetrics_series_capacity"), 10.0);
    assert_eq!(r.header().series_used.load(Ordering::Relaxed), 10);
}

#[test]
fn family_capacity_full_keeps_existing() {
    let shm = Shm::new("cap-families");
    let mut p = params(10, 4);
    p.max_families = 3;
    let r = create(&shm, p);
    let ids: Vec<u32> = (0..3).map(|i| family(r, KIND_COUNTER, &format!("f{i}_total"), &[], &[])).collect();
    assert_eq!(ids, vec![0, 1, 2]);
    let e = define(r, KIND_COUNTER, "f3_total", "Help.", &[], &[]).unwrap_err();
    assert_eq!(e.code(), ffi::SHMETRICS_E_FULL);
    assert_eq!(e.message(), "all 3 families are used; raise max_families");
    // Redefining an existing family needs no new entry.
    assert_eq!(family(r, KIND_COUNTER, "f1_total", &[], &[]), 1);
    assert_eq!(r.header().families_used.load(Ordering::Relaxed), 3);
    let c = cell(r, 2, &[]);
    let slot = r.claim_slot().unwrap();
    cells::add(r, slot, c, 4.0);
    assert_eq!(must_sample(&render(r), "f2_total"), 4.0);
}

#[test]
fn arena_exhaustion_is_e_full_not_a_crash() {
    let shm = Shm::new("cap-arena");
    let p = Params {
        max_series: 100,
        max_families: 4,
        max_slots: 4,
        max_label_bytes: 1024,
        max_cells: 0,
        arena_bytes: 4096,
    };
    let r = create(&shm, p);
    let fam = family(r, KIND_COUNTER, "arena_total", &["v"], &[]);
    let used_after_family = r.header().arena_used.load(Ordering::Relaxed);
    let long = |c: u8| vec![c; 1000];
    // Each key takes 4 + 1000 bytes (4-aligned): count how many fit, exactly.
    let per_key = 1004u64;
    let fits = ((4096 - used_after_family.div_ceil(4) * 4) / per_key) as usize;
    assert!(fits >= 2, "arena test needs room for two keys, has {fits}");
    let slot = r.claim_slot().unwrap();
    let mut created = Vec::new();
    for i in 0..fits {
        let v = long(b'a' + i as u8);
        let c = series(r, fam, &[&v]).unwrap();
        cells::add(r, slot, c, 1.0 + i as f64);
        created.push((v, c));
    }
    let v = long(b'z');
    let e = series(r, fam, &[&v]).unwrap_err();
    assert_eq!(e.code(), ffi::SHMETRICS_E_FULL);
    assert_eq!(e.message(), "the arena is full; raise arena_bytes");
    assert_eq!(r.family(fam).dropped.load(Ordering::Relaxed), 1);
    assert!(r.header().arena_used.load(Ordering::Relaxed) <= 4096);
    // Existing series still work; short ones still fit in what is left.
    for (v, c) in &created {
        assert_eq!(series(r, fam, &[v]).unwrap(), *c);
    }
    let short = series(r, fam, &[b"s"]).unwrap();
    cells::add(r, slot, short, 9.0);
    let body = render(r);
    assert_eq!(total_series_lines(&body, "arena_total"), fits + 1);
    for (i, (v, _)) in created.iter().enumerate() {
        let key = format!("arena_total{{v=\"{}\"}}", String::from_utf8_lossy(v));
        assert_eq!(must_sample(&body, &key), 1.0 + i as f64);
    }
    assert_eq!(must_sample(&body, "arena_total{v=\"s\"}"), 9.0);
}

#[test]
fn cell_exhaustion_is_e_full() {
    let shm = Shm::new("cap-cells");
    // Two series' worth of default cells (8 each): 32 reserved + 16.
    let r = create(&shm, params(2, 4));
    assert_eq!(r.params.max_cells, RESERVED_CELLS + 16);
    let bounds: Vec<f64> = (1..=20).map(|i| i as f64).collect();
    let fam = family(r, KIND_HISTOGRAM, "wide", &[], &bounds);
    let e = series(r, fam, &[]).unwrap_err();
    assert_eq!(e.code(), ffi::SHMETRICS_E_FULL);
    assert_eq!(e.message(), "all cells are used; raise max_cells");
    assert_eq!(r.family(fam).dropped.load(Ordering::Relaxed), 1);
    assert_eq!(r.header().cells_used.load(Ordering::Relaxed), RESERVED_CELLS);
    let body = render(r);
    assert_eq!(total_series_lines(&body, "wide_bucket"), 0);
}

#[test]
fn refused_series_use_up_nothing() {
    let shm = Shm::new("cap-nothing");
    let r = create(&shm, params(2, 4));
    let bounds: Vec<f64> = (1..=20).map(|i| i as f64).collect();
    let wide = family(r, KIND_HISTOGRAM, "wide", &["k"], &bounds);
    let small = family(r, KIND_COUNTER, "small_total", &["k"], &[]);
    // Many refusals for want of cells: no series id, cell or arena byte is taken...
    let arena0 = r.header().arena_used.load(Ordering::Relaxed);
    for i in 0..100 {
        let v = format!("v{i}");
        assert_eq!(series(r, wide, &[v.as_bytes()]).unwrap_err().code(), ffi::SHMETRICS_E_FULL);
    }
    assert_eq!(r.header().series_used.load(Ordering::Relaxed), 0);
    assert_eq!(r.header().arena_used.load(Ordering::Relaxed), arena0);
    assert_eq!(r.family(wide).dropped.load(Ordering::Relaxed), 100);
    // ...so both series of the capacity are still there for others.
    assert_eq!(cell(r, small, &["a"]), RESERVED_CELLS);
    assert_eq!(cell(r, small, &["b"]), RESERVED_CELLS + 1);
}

#[test]
fn label_length_limit_counts_the_bytes_sent() {
    let shm = Shm::new("label-len");
    let mut p = params(8, 4);
    p.max_label_bytes = 4;
    let r = create(&shm, p);
    let fam = family(r, KIND_COUNTER, "len_total", &["k"], &[]);
    // 4 bytes sent, two of them invalid UTF-8 (8 bytes once replaced): accepted.
    assert!(series(r, fam, &[b"ab\xff\xfe"]).is_ok());
    let e = series(r, fam, &[b"abcde"]).unwrap_err();
    assert_eq!(e.code(), ffi::SHMETRICS_E_LABEL_TOO_LONG);
    assert_eq!(e.message(), "label value #1 is 5 bytes; the limit (max_label_bytes) is 4");
}

// ---------------------------------------------------------------------------
// 2. Delete and reset

#[test]
fn delete_hides_series_bumps_gen_and_recreation_starts_at_zero() {
    let shm = Shm::new("delete");
    let r = create(&shm, params(16, 4));
    let fam = family(r, KIND_COUNTER, "del_total", &["k"], &[]);
    let slot = r.claim_slot().unwrap();
    let a = cell(r, fam, &["a"]);
    let b = cell(r, fam, &["b"]);
    cells::add(r, slot, a, 5.0);
    cells::add(r, slot, b, 7.0);
    let gen0 = r.family(fam).gen.load(Ordering::Relaxed);
    assert_eq!(r.delete_series(fam, &[b"a"]), Ok(true));
    assert_eq!(r.family(fam).gen.load(Ordering::Relaxed), gen0 + 1);
    let body = render(r);
    assert_eq!(sample(&body, "del_total{k=\"a\"}"), None);
    assert_eq!(must_sample(&body, "del_total{k=\"b\"}"), 7.0);
    assert_eq!(lines_of(&body, "del_total"), vec!["del_total{k=\"b\"} 7"]);
    // A missing series: Ok(false), and the generation stays.
    assert_eq!(r.delete_series(fam, &[b"a"]), Ok(false));
    assert_eq!(r.delete_series(fam, &[b"never"]), Ok(false));
    assert_eq!(r.family(fam).gen.load(Ordering::Relaxed), gen0 + 1);
    // Recreated: a new cell, starting from exactly 0.
    let a2 = cell(r, fam, &["a"]);
    assert_ne!(a2, a);
    assert_eq!(r.cell(slot, a2), 0.0);
    let body = render(r);
    assert_eq!(lines_of(&body, "del_total"), vec!["del_total{k=\"b\"} 7", "del_total{k=\"a\"} 0"]);
    cells::add(r, slot, a2, 2.0);
    assert_eq!(must_sample(&render(r), "del_total{k=\"a\"}"), 2.0);
    // Wrong label count is an error, not "missing".
    assert_eq!(r.delete_series(fam, &[]).unwrap_err().code(), ffi::SHMETRICS_E_LABEL_COUNT);
    // Series entries are not reused: 3 allocated (a, b, a again).
    assert_eq!(must_sample(&render(r), "shmetrics_series_used"), 3.0);
}

#[test]
fn reset_removes_every_series_of_that_family_only() {
    let shm = Shm::new("reset");
    let r = create(&shm, params(32, 4));
    let f1 = family(r, KIND_COUNTER, "one_total", &["k"], &[]);
    let f2 = family(r, KIND_COUNTER, "two_total", &["k"], &[]);
    let slot = r.claim_slot().unwrap();
    for k in ["a", "b", "c"] {
        let c1 = cell(r, f1, &[k]);
        cells::add(r, slot, c1, 1.0);
        let c2 = cell(r, f2, &[k]);
        cells::add(r, slot, c2, 2.0);
    }
    let gen1 = r.family(f1).gen.load(Ordering::Relaxed);
    let gen2 = r.family(f2).gen.load(Ordering::Relaxed);
    assert_eq!(r.reset_family(f1), Ok(3));
    assert_eq!(r.family(f1).gen.load(Ordering::Relaxed), gen1 + 1);
    assert_eq!(r.family(f2).gen.load(Ordering::Relaxed), gen2);
    let body = render(r);
    assert_eq!(lines_of(&body, "one_total"), Vec::<&str>::new());
    assert!(!body.contains("# TYPE one_total"), "empty family printed:\n{body}");
    assert_eq!(
        lines_of(&body, "two_total"),
        vec!["two_total{k=\"a\"} 2", "two_total{k=\"b\"} 2", "two_total{k=\"c\"} 2"]
    );
    // Nothing left to reset; a new series starts at 0.
    assert_eq!(r.reset_family(f1), Ok(0));
    let c = cell(r, f1, &["a"]);
    assert_eq!(r.cell(slot, c), 0.0);
    assert_eq!(lines_of(&render(r), "one_total"), vec!["one_total{k=\"a\"} 0"]);
    assert_eq!(r.reset_family(99).unwrap_err().code(), ffi::SHMETRICS_E_INVALID);
}

/// A creator killed after publishing an entry (index CAS) but before marking it
/// `LIVE` leaves it `WRITING`; the next process that finds it finishes the job.
#[test]
fn entry_left_writing_by_a_dead_creator_is_finished_by_the_next_finder() {
    let shm = Shm::new("writing");
    let r = create(&shm, params(16, 4));
    let fam = family(r, KIND_COUNTER, "w_total", &["k"], &[]);
    let slot = r.claim_slot().unwrap();
    let c = cell(r, fam, &["a"]);
    cells::add(r, slot, c, 5.0);
    // Simulate the crash window for the series (id 0).
    r.series(0).state.store(STATE_WRITING, Ordering::Release);
    assert_eq!(lines_of(&render(r), "w_total"), Vec::<&str>::new());
    assert_eq!(cell(r, fam, &["a"]), c);
    assert_eq!(r.series(0).state.load(Ordering::Acquire), STATE_LIVE);
    assert_eq!(lines_of(&render(r), "w_total"), vec!["w_total{k=\"a\"} 5"]);
    assert_eq!(r.header().series_used.load(Ordering::Relaxed), 1);
    // The same for a family: unusable until redefined, then the same id, live.
    r.family(fam).state.store(STATE_WRITING, Ordering::Release);
    assert_eq!(series(r, fam, &[b"a"]).unwrap_err().code(), ffi::SHMETRICS_E_INVALID);
    assert_eq!(family(r, KIND_COUNTER, "w_total", &["k"], &[]), fam);
    assert_eq!(r.family(fam).state.load(Ordering::Acquire), STATE_LIVE);
    assert_eq!(cell(r, fam, &["a"]), c);
    assert_eq!(r.header().families_used.load(Ordering::Relaxed), 1);
}

// ---------------------------------------------------------------------------
// 3. Label values that are not UTF-8

#[test]
fn invalid_utf8_values_that_render_alike_are_one_series() {
    let shm = Shm::new("utf8");
    let r = create(&shm, params(16, 4));
    let fam = family(r, KIND_COUNTER, "utf_total", &["v"], &[]);
    let slot = r.claim_slot().unwrap();
    let a = series(r, fam, &[b"a\xff"]).unwrap();
    let b = series(r, fam, &[b"a\xfe"]).unwrap();
    let c = series(r, fam, &["a\u{FFFD}".as_bytes()]).unwrap();
    let other = series(r, fam, &[b"b\xff"]).unwrap();
    assert_eq!(a, b);
    assert_eq!(a, c);
    assert_ne!(a, other);
    cells::add(r, slot, a, 1.0);
    cells::add(r, slot, b, 1.0);
    cells::add(r, slot, c, 1.0);
    cells::add(r, slot, other, 4.0);
    let body = render(r);
    assert_eq!(lines_of(&body, "utf_total"), vec!["utf_total{v=\"a\u{FFFD}\"} 3", "utf_total{v=\"b\u{FFFD}\"} 4"]);
    assert_eq!(r.header().series_used.load(Ordering::Relaxed), 2);
    promtool_check(&body);
    // Deleting through another invalid spelling deletes the same series.
    assert_eq!(r.delete_series(fam, &[b"a\x80"]), Ok(true));
    assert_eq!(lines_of(&render(r), "utf_total"), vec!["utf_total{v=\"b\u{FFFD}\"} 4"]);
}

// ---------------------------------------------------------------------------
// 4. Attaching, recreating and refusing existing files

/// A region with a counter family `att_total{k}` holding `{k="x"} 42`, `{k="y"} 1`.
fn populated(shm: &Shm, p: Params) -> &'static Region {
    let r = create(shm, p);
    let fam = family(r, KIND_COUNTER, "att_total", &["k"], &[]);
    let slot = r.claim_slot().unwrap();
    let x = cell(r, fam, &["x"]);
    let y = cell(r, fam, &["y"]);
    cells::add(r, slot, x, 42.0);
    cells::add(r, slot, y, 1.0);
    r
}

fn copy_to(src: &Shm, dst: &Shm) {
    std::fs::copy(&src.path, &dst.path).unwrap();
    std::fs::set_permissions(&dst.path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn assert_empty_region(r: &'static Region, path: &Path, p: Params) {
    let h = r.header();
    assert_eq!(h.families_used.load(Ordering::Relaxed), 0);
    assert_eq!(h.series_used.load(Ordering::Relaxed), 0);
    assert_eq!(h.cells_used.load(Ordering::Relaxed), RESERVED_CELLS);
    assert_eq!(h.arena_used.load(Ordering::Relaxed), 0);
    assert_eq!(h.magic, MAGIC);
    let body = render(r);
    assert_eq!(user_part(&body), "");
    let md = std::fs::symlink_metadata(path).unwrap();
    assert!(md.file_type().is_file());
    assert_eq!(md.permissions().mode() & 0o777, 0o600);
    assert_eq!(md.len(), p.resolved().offsets().total);
}

#[test]
fn attach_a_valid_file_keeps_its_counts() {
    let src = Shm::new("attach-src");
    let dst = Shm::new("attach-dst");
    let p = params(16, 4);
    let r = populated(&src, p);
    copy_to(&src, &dst);
    let (r2, how) = region::open(&dst.path, p, false).unwrap();
    assert_eq!(how, Opened::Attached);
    assert!(!std::ptr::eq(r, r2));
    let body = render(r2);
    assert_eq!(lines_of(&body, "att_total"), vec!["att_total{k=\"x\"} 42", "att_total{k=\"y\"} 1"]);
    // The registries carry on: same family id and cells, new entries after the old.
    assert_eq!(family(r2, KIND_COUNTER, "att_total", &["k"], &[]), 0);
    assert_eq!(cell(r2, 0, &["x"]), RESERVED_CELLS);
    assert_eq!(cell(r2, 0, &["z"]), RESERVED_CELLS + 2);
    // The copy is independent of the original.
    assert_eq!(lines_of(&render(r), "att_total").len(), 2);
    // Opening the same path again in this process reuses the mapping.
    let (r3, how) = region::open(&dst.path, p, false).unwrap();
    assert_eq!(how, Opened::Reused);
    assert!(std::ptr::eq(r2, r3));
    // ... but never with other sizes.
    let e = region::open(&dst.path, params(17, 4), false).err().unwrap();
    assert_eq!(e.code(), ffi::SHMETRICS_E_INVALID);
    assert!(e.message().contains("already mapped with other sizes"), "{}", e.message());
}

/// Copies `src` to `dst`, damages it with `damage`, opens it with `p`: it must be
/// recreated for `reason`, empty.
fn expect_recreated(src: &Shm, dst: &Shm, p: Params, damage: impl FnOnce(&Path), reason: &str) {
    copy_to(src, dst);
    damage(&dst.path);
    let (r, how) = region::open(&dst.path, p, false).unwrap_or_else(|e| panic!("{}: {e}", dst.path.display()));
    assert_eq!(how, Opened::Recreated(reason.to_string()), "{}", dst.path.display());
    assert_empty_region(r, &dst.path, p);
}

fn write_at(path: &Path, off: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, off).unwrap();
}

fn truncate(path: &Path, len: u64) {
    std::fs::OpenOptions::new().write(true).open(path).unwrap().set_len(len).unwrap();
}

#[test]
fn unusable_files_are_recreated_with_the_reason() {
    let src = Shm::new("recreate-src");
    let p = params(10, 4);
    populated(&src, p);
    let total = p.resolved().offsets().total;

    let d = Shm::new("recreate-magic");
    expect_recreated(&src, &d, p, |f| write_at(f, 0, b"NOTMAGIC"), "wrong magic: not a shmetrics region");

    let d = Shm::new("recreate-major");
    expect_recreated(&src, &d, p, |f| write_at(f, 8, &2u16.to_le_bytes()), "layout version 2 is not ours (1)");

    let d = Shm::new("recreate-series");
    expect_recreated(&src, &d, params(20, 4), |_| {}, "max_series is 10 in the file, 20 in the configuration");

    let d = Shm::new("recreate-slots");
    expect_recreated(&src, &d, params(10, 8), |_| {}, "max_slots is 4 in the file, 8 in the configuration");

    let d = Shm::new("recreate-trunc100");
    expect_recreated(&src, &d, p, |f| truncate(f, 100), "the file is 100 bytes, shorter than a header");

    let d = Shm::new("recreate-empty");
    expect_recreated(&src, &d, p, |f| truncate(f, 0), "the file is 0 bytes, shorter than a header");

    let d = Shm::new("recreate-short");
    let short = total - 4096;
    expect_recreated(
        &src,
        &d,
        p,
        |f| truncate(f, short),
        &format!("the file is {short} bytes, the header says {total}"),
    );
}

#[test]
fn reset_flag_recreates_a_valid_file() {
    let src = Shm::new("resetflag-src");
    let dst = Shm::new("resetflag-dst");
    let p = params(10, 4);
    populated(&src, p);
    copy_to(&src, &dst);
    let (r, how) = region::open(&dst.path, p, true).unwrap();
    assert_eq!(how, Opened::Recreated("the reset option was given".to_string()));
    assert_empty_region(r, &dst.path, p);
    // reset with no file: plainly created.
    let fresh = Shm::new("resetflag-fresh");
    let (_, how) = region::open(&fresh.path, p, true).unwrap();
    assert_eq!(how, Opened::Created);
}

#[test]
fn group_readable_files_and_symlinks_are_refused() {
    let src = Shm::new("refuse-src");
    let p = params(10, 4);
    populated(&src, p);

    let open = Shm::new("refuse-mode");
    copy_to(&src, &open);
    std::fs::set_permissions(&open.path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = region::open(&open.path, p, false).err().expect("mode 0644 refused");
    assert_eq!(e.code(), ffi::SHMETRICS_E_IO);
    assert_eq!(
        e.message(),
        format!("\"{}\" has mode 644: group or others may access it; refusing it (want 0600)", open.path.display())
    );
    // Refused means untouched: still the old contents and mode.
    assert_eq!(std::fs::metadata(&open.path).unwrap().permissions().mode() & 0o777, 0o644);
    assert_eq!(&std::fs::read(&open.path).unwrap()[..8], &MAGIC);

    let target = Shm::new("refuse-target");
    copy_to(&src, &target);
    let link = Shm::new("refuse-link");
    std::os::unix::fs::symlink(&target.path, &link.path).unwrap();
    let e = region::open(&link.path, p, false).err().expect("symlink refused");
    assert_eq!(e.code(), ffi::SHMETRICS_E_IO);
    assert_eq!(e.message(), format!("\"{}\" is a symbolic link; refusing it", link.path.display()));
    assert!(std::fs::symlink_metadata(&link.path).unwrap().file_type().is_symlink());

    // A file whose allocation counters exceed its capacity is corrupt: refused.
    let bad = Shm::new("refuse-counters");
    copy_to(&src, &bad);
    write_at(&bad.path, 196, &11u32.to_le_bytes()); // series_used > max_series (10)
    let e = region::open(&bad.path, p, false).err().expect("corrupt counters refused");
    assert_eq!(e.code(), ffi::SHMETRICS_E_IO);
    assert!(e.message().contains("allocation counters beyond its capacity"), "{}", e.message());
}

// ---------------------------------------------------------------------------
// 5. Several processes

#[test]
fn four_processes_count_exactly() {
    let _g = fork_lock();
    let shm = Shm::new("fork-four");
    let r = create(&shm, params(64, 8));
    let c_fam = family(r, KIND_COUNTER, "hits_total", &["w"], &[]);
    let bounds = [10.0, 100.0];
    let h_fam = family(r, KIND_HISTOGRAM, "size", &[], &bounds);
    let g_fam = family(r, KIND_GAUGE, "inflight", &[], &[]);
    let c = cell(r, c_fam, &["all"]);
    let h = cell(r, h_fam, &[]);
    let g = cell(r, g_fam, &[]);
    let ctl = ctl();
    let pids: Vec<_> = (0..4u32)
        .map(|k| {
            spawn(move || {
                let Ok(slot) = r.claim_slot() else { return 2 };
                ctl.slots[k as usize].store(slot, Ordering::Release);
                ctl.ready.fetch_add(1, Ordering::AcqRel);
                check!(wait_for(&ctl.go, 1), 3);
                // Same slot on every call in this process.
                check!(r.claim_slot().ok() == Some(slot), 4);
                for _ in 0..100_000 {
                    cells::add(r, slot, c, 1.0);
                }
                for i in 0..1000u32 {
                    // SAFETY: our own slot and a histogram series of these bounds.
                    unsafe { cells::observe(r.cells(slot), h, &bounds, (i % 200) as f64) };
                    gauge_inc(r, slot, g, 1.0);
                }
                0
            })
        })
        .collect();
    assert!(wait_for(&ctl.ready, 4), "children did not start");
    ctl.go.store(1, Ordering::Release);
    wait_all(&pids);

    let mut slots: Vec<u32> = ctl.slots.iter().take(4).map(|s| s.load(Ordering::Acquire)).collect();
    slots.sort();
    slots.dedup();
    assert_eq!(slots.len(), 4, "slots not distinct: {slots:?}");
    assert!(slots.iter().all(|&s| (1..8).contains(&s)), "{slots:?}");
    for &s in &slots {
        assert_eq!(r.slot(s).claims.load(Ordering::Relaxed), 1);
    }
    // Expected histogram from the same values.
    let (mut b10, mut b100, mut inf, mut sum) = (0.0, 0.0, 0.0, 0.0);
    for i in 0..1000u32 {
        let v = (i % 200) as f64;
        if v <= 10.0 {
            b10 += 1.0
        } else if v <= 100.0 {
            b100 += 1.0
        } else {
            inf += 1.0
        }
        sum += v;
    }
    let body = render(r);
    assert_eq!(must_sample(&body, "hits_total{w=\"all\"}"), 400_000.0);
    assert_eq!(must_sample(&body, "size_bucket{le=\"10\"}"), 4.0 * b10);
    assert_eq!(must_sample(&body, "size_bucket{le=\"100\"}"), 4.0 * (b10 + b100));
    assert_eq!(must_sample(&body, "size_bucket{le=\"+Inf\"}"), 4000.0);
    assert_eq!(must_sample(&body, "size_count"), 4000.0);
    assert_eq!(4.0 * (b10 + b100 + inf), 4000.0);
    assert_eq!(must_sample(&body, "size_sum"), 4.0 * sum);
    assert_eq!(must_sample(&body, "inflight"), 4000.0);
    assert_eq!(must_sample(&body, "shmetrics_worker_slots{state=\"live\"}"), 0.0);
    assert_eq!(must_sample(&body, "shmetrics_worker_slots{state=\"dead\"}"), 4.0);
    assert_eq!(must_sample(&body, "shmetrics_worker_slots{state=\"free\"}"), 3.0);
}

#[test]
fn dead_process_slot_is_adopted_with_its_counts() {
    let _g = fork_lock();
    let shm = Shm::new("fork-adopt");
    let r = create(&shm, params(16, 4));
    let fam = family(r, KIND_COUNTER, "adopt_total", &[], &[]);
    let c = cell(r, fam, &[]);
    let ctl = ctl();
    let first = spawn(move || {
        let Ok(slot) = r.claim_slot() else { return 2 };
        ctl.slots[0].store(slot, Ordering::Release);
        cells::add(r, slot, c, 123.0);
        0
    });
    wait_all(&[first]);
    let s1 = ctl.slots[0].load(Ordering::Acquire);
    assert_eq!(s1, 1);
    assert_eq!(r.slot(s1).claims.load(Ordering::Relaxed), 1);
    let body = render(r);
    assert_eq!(must_sample(&body, "adopt_total"), 123.0);
    assert_eq!(must_sample(&body, "shmetrics_worker_slots{state=\"dead\"}"), 1.0);
    assert_eq!(must_sample(&body, "shmetrics_worker_slots{state=\"free\"}"), 2.0);

    let second = spawn(move || {
        let Ok(slot) = r.claim_slot() else { return 2 };
        ctl.slots[1].store(slot, Ordering::Release);
        // The adopted slot's counts are there, and this process adds to them.
        check!(r.cell(slot, c) == 123.0, 3);
        cells::add(r, slot, c, 7.0);
        0
    });
    wait_all(&[second]);
    assert_eq!(ctl.slots[1].load(Ordering::Acquire), s1);
    assert_eq!(r.slot(s1).claims.load(Ordering::Relaxed), 2);
    assert_eq!(must_sample(&render(r), "adopt_total"), 130.0);

    // This (live) process adopts it too; then the slot counts as live.
    assert_eq!(r.claim_slot().unwrap(), s1);
    assert_eq!(r.slot(s1).claims.load(Ordering::Relaxed), 3);
    cells::add(r, s1, c, 1.0);
    let body = render(r);
    assert_eq!(must_sample(&body, "adopt_total"), 131.0);
    assert_eq!(must_sample(&body, "shmetrics_worker_slots{state=\"live\"}"), 1.0);
    assert_eq!(must_sample(&body, "shmetrics_worker_slots{state=\"dead\"}"), 0.0);
    assert_eq!(must_sample(&body, "shmetrics_worker_slots{state=\"free\"}"), 2.0);
}

#[test]
fn no_free_slot_is_an_error_and_counted() {
    let _g = fork_lock();
    let shm = Shm::new("fork-noslot");
    // max_slots 2: slot 0 is shared, slot 1 the only writer slot.
    let r = create(&shm, params(16, 2));
    assert_eq!(r.claim_slot().unwrap(), 1);
    let child = spawn(move || {
        let Err(e) = r.claim_slot() else { return 2 };
        check!(e.code() == ffi::SHMETRICS_E_NO_SLOT, 3);
        check!(e.message() == "all 1 worker slots belong to live processes; raise max_slots", 4);
        // SAFETY: `r` is a live region handle.
        let rc = unsafe { shmetrics::ffi::shmetrics_claim_slot(r) };
        check!(rc == ffi::SHMETRICS_E_NO_SLOT, 5);
        // A failed claim is not an update: nothing counted yet.
        check!(r.header().no_slot_errors.load(Ordering::Relaxed) == 0, 6);
        // The update the caller then drops is counted, in the header (no slot).
        r.count_error(REASON_NO_SLOT);
        check!(r.header().no_slot_errors.load(Ordering::Relaxed) == 1, 7);
        0
    });
    wait_all(&[child]);
    assert_eq!(r.header().no_slot_errors.load(Ordering::Relaxed), 1);
    let body = render(r);
    assert_eq!(must_sample(&body, "shmetrics_errors_total{reason=\"no_slot\"}"), 1.0);
    assert_eq!(must_sample(&body, "shmetrics_worker_slots{state=\"live\"}"), 1.0);
    assert_eq!(must_sample(&body, "shmetrics_worker_slots{state=\"free\"}"), 0.0);
}

/// Four children create the same `n` series of `fam` at once, child `k` in
/// order `order(k, i)`, adding `(j + 1) * (k + 1)` to series `j`. With
/// `lockstep`, no child starts its `i`-th series before all have finished the
/// previous one, so they keep racing for the same entries.
fn create_concurrently(r: &'static Region, fam: u32, n: u32, lockstep: bool, order: fn(u32, u32) -> u32) {
    let ctl = ctl();
    let pids: Vec<_> = (0..4u32)
        .map(|k| {
            spawn(move || {
                let Ok(slot) = r.claim_slot() else { return 2 };
                ctl.ready.fetch_add(1, Ordering::AcqRel);
                check!(wait_for(&ctl.go, 1), 3);
                let mut seen = vec![false; n as usize];
                for i in 0..n {
                    if lockstep {
                        ctl.step.fetch_add(1, Ordering::AcqRel);
                        let t = Instant::now();
                        let mut spins = 0u32;
                        while ctl.step.load(Ordering::Acquire) < 4 * (i + 1) {
                            check!(t.elapsed() < Duration::from_secs(30), 6);
                            // Spin a little (to start together with the other
                            // running child), then let the waiting ones run.
                            spins += 1;
                            if spins % 4096 == 0 {
                                // SAFETY: no preconditions.
                                unsafe { libc::sched_yield() };
                            } else {
                                std::hint::spin_loop();
                            }
                        }
                    }
                    let j = order(k, i);
                    check!(j < n && !seen[j as usize], 4);
                    seen[j as usize] = true;
                    let v = format!("s{j}");
                    let Ok(c) = r.series_cell(fam, &[v.as_bytes()]) else { return 5 };
                    cells::add(r, slot, c, ((j + 1) * (k + 1)) as f64);
                }
                0
            })
        })
        .collect();
    assert!(wait_for(&ctl.ready, 4), "children did not start");
    ctl.go.store(1, Ordering::Release);
    wait_all(&pids);
}

fn check_created_once(r: &'static Region, name: &str, fam: u32, n: u32) -> u32 {
    let body = render(r);
    let mut got: Vec<&str> = lines_of(&body, name);
    got.sort();
    let mut want: Vec<String> = (0..n).map(|j| format!("{name}{{k=\"s{j}\"}} {}", (j + 1) * 10)).collect();
    want.sort();
    assert_eq!(got, want, "series of {name}");
    // Every entry of this family is the one live series of its key, or an orphan.
    let used = r.header().series_used.load(Ordering::Acquire);
    let (mut live, mut orphan) = (0, 0);
    for id in 0..used {
        let s = r.series(id);
        if s.family != fam {
            continue;
        }
        match s.state.load(Ordering::Acquire) {
            STATE_LIVE => live += 1,
            STATE_ORPHAN => orphan += 1,
            st => panic!("series {id} of {name} in state {st}"),
        }
    }
    assert_eq!(live, n);
    orphan
}

#[test]
fn concurrent_creation_of_the_same_series_has_no_duplicates() {
    let _g = fork_lock();
    let shm = Shm::new("fork-create");
    let r = create(&shm, params(16_384, 8));
    let f1 = family(r, KIND_COUNTER, "cc_total", &["k"], &[]);
    const N: u32 = 1000;
    // Different orders: forward, backward, two strides coprime with 1000.
    create_concurrently(r, f1, N, false, |k, i| match k {
        0 => i,
        1 => N - 1 - i,
        2 => (i * 7) % N,
        _ => (i * 13 + 500) % N,
    });
    let o1 = check_created_once(r, "cc_total", f1, N);
    // The same order in every child, in lockstep: they race for each entry.
    // Repeated (on fresh families) until some creation lost a race, so the
    // losing path (orphan, use the winner's cell) has most likely run; on a
    // machine too loaded for the children to overlap it may not, and the
    // checks that matter (no duplicate, exact counts) hold either way.
    let mut total = N + o1;
    let mut orphans = Vec::new();
    for round in 0..5 {
        let name = format!("same{round}_total");
        let f = family(r, KIND_COUNTER, &name, &["k"], &[]);
        create_concurrently(r, f, N, true, |_, i| i);
        let o = check_created_once(r, &name, f, N);
        orphans.push(o);
        total += N + o;
        if o > 0 {
            break;
        }
    }
    eprintln!("orphans: {o1} (different orders), {orphans:?} (same order, by round)");
    if orphans.iter().sum::<u32>() == 0 {
        eprintln!("note: no creation lost a race in 5 rounds (the children did not overlap)");
    }
    assert_eq!(r.header().series_used.load(Ordering::Acquire), total);
}

#[test]
fn reader_sees_monotonic_consistent_values_while_writers_run() {
    let _g = fork_lock();
    let shm = Shm::new("fork-reader");
    let r = create(&shm, params(64, 8));
    let a_fam = family(r, KIND_COUNTER, "a_total", &[], &[]);
    let b_fam = family(r, KIND_COUNTER, "b_total", &[], &[]);
    let bounds = [1.0, 2.0, 3.0];
    let h_fam = family(r, KIND_HISTOGRAM, "obs", &[], &bounds);
    let (a, b, h) = (cell(r, a_fam, &[]), cell(r, b_fam, &[]), cell(r, h_fam, &[]));
    const N: u64 = 2_000_000;
    const KIDS: u64 = 3;
    let ctl = ctl();
    let pids: Vec<_> = (0..KIDS)
        .map(|_| {
            spawn(move || {
                let Ok(slot) = r.claim_slot() else { return 2 };
                ctl.ready.fetch_add(1, Ordering::AcqRel);
                check!(wait_for(&ctl.go, 1), 3);
                let cells = r.cells(slot);
                for i in 0..N {
                    cells::add(r, slot, a, 1.0);
                    cells::add(r, slot, b, 2.0);
                    // SAFETY: our own slot and a histogram series of these bounds.
                    unsafe { cells::observe(cells, h, &bounds, (i % 5) as f64 * 0.75) };
                    if i == N / 2 {
                        // Halfway: make sure the reader has seen a partial state.
                        check!(wait_for(&ctl.flag, 1), 4);
                    }
                }
                0
            })
        })
        .collect();
    assert!(wait_for(&ctl.ready, KIDS as u32), "children did not start");
    ctl.go.store(1, Ordering::Release);

    let keys = [
        "a_total",
        "b_total",
        "obs_bucket{le=\"1\"}",
        "obs_bucket{le=\"2\"}",
        "obs_bucket{le=\"3\"}",
        "obs_bucket{le=\"+Inf\"}",
        "obs_sum",
        "obs_count",
    ];
    let mut prev = vec![0.0f64; keys.len()];
    let mut renders = 0u64;
    let mut partial = 0u64;
    let mut running = pids.clone();
    let mut codes = Vec::new();
    loop {
        let body = render(r);
        renders += 1;
        let now: Vec<f64> = keys.iter().map(|k| must_sample(&body, k)).collect();
        for (i, k) in keys.iter().enumerate() {
            assert!(now[i] >= prev[i], "render {renders}: {k} went from {} to {}", prev[i], now[i]);
        }
        assert!(now[2] <= now[3] && now[3] <= now[4] && now[4] <= now[5], "buckets not cumulative: {now:?}");
        assert_eq!(now[5], now[7], "+Inf bucket != _count");
        if now[0] > 0.0 && now[0] < (KIDS * N) as f64 {
            partial += 1;
            ctl.flag.store(1, Ordering::Release);
        }
        prev = now;
        if running.is_empty() {
            break;
        }
        running.retain(|&p| {
            let mut status = 0;
            // SAFETY: `p` is our child; status is a valid out-pointer.
            let rc = unsafe { libc::waitpid(p, &mut status, libc::WNOHANG) };
            if rc == p {
                codes.push(if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 1000 });
                false
            } else {
                true
            }
        });
    }
    assert_eq!(codes, vec![0; KIDS as usize], "child exit codes");
    eprintln!("{renders} renders, {partial} while writers ran");
    assert!(partial >= 1);
    let n = (KIDS * N) as f64;
    let fifth = n / 5.0;
    assert_eq!(prev, vec![n, 2.0 * n, 2.0 * fifth, 3.0 * fifth, n, n, fifth * 7.5, n]);
}

#[test]
fn gauge_set_and_inc_from_different_processes() {
    let _g = fork_lock();
    let shm = Shm::new("fork-gauge");
    let r = create(&shm, params(16, 8));
    let fam = family(r, KIND_GAUGE, "level", &["g"], &[]);
    let g1 = cell(r, fam, &["set_then_inc"]);
    let g2 = cell(r, fam, &["inc_then_set"]);
    let g3 = cell(r, fam, &["mixed"]);
    let g4 = cell(r, fam, &["set_then_set"]);
    let ctl = ctl();
    // Both children stay alive to the end, so each keeps its own slot; they take
    // turns through `ctl.step`.
    let child = |k: u32, script: fn(&Region, u32, u32, [u32; 4], &Ctl) -> i32| {
        spawn(move || {
            let Ok(slot) = r.claim_slot() else { return 2 };
            ctl.slots[k as usize].store(slot, Ordering::Release);
            let rc = script(r, slot, k, [g1, g2, g3, g4], ctl);
            check!(rc == 0, rc);
            ctl.ready.fetch_add(1, Ordering::AcqRel);
            check!(wait_for(&ctl.go, 1), 3);
            0
        })
    };
    fn turn(ctl: &Ctl, step: u32, f: impl FnOnce()) -> bool {
        if !wait_for(&ctl.step, step) {
            return false;
        }
        f();
        ctl.step.store(step + 1, Ordering::Release);
        true
    }
    // Process A: only sets (and one inc after its own set).
    let a = child(0, |r, slot, _, g, ctl| {
        check!(turn(ctl, 0, || gauge_set(r, slot, g[0], 10.0)), 10);
        check!(turn(ctl, 3, || gauge_set(r, slot, g[1], 10.0)), 11);
        check!(turn(ctl, 5, || gauge_set(r, slot, g[2], 7.0)), 12);
        check!(turn(ctl, 6, || gauge_inc(r, slot, g[2], 1.0)), 13);
        check!(turn(ctl, 8, || gauge_set(r, slot, g[3], 1.0)), 14);
        0
    });
    // Process B: incs, and one later set.
    let b = child(1, |r, slot, _, g, ctl| {
        check!(turn(ctl, 1, || gauge_inc(r, slot, g[0], 5.0)), 20);
        check!(turn(ctl, 2, || gauge_inc(r, slot, g[1], 5.0)), 21);
        check!(turn(ctl, 4, || gauge_inc(r, slot, g[2], 100.0)), 22);
        check!(turn(ctl, 7, || gauge_inc(r, slot, g[2], 2.0)), 23);
        check!(turn(ctl, 9, || gauge_set(r, slot, g[3], -3.5)), 24);
        0
    });
    assert!(wait_for(&ctl.ready, 2), "children did not finish their scripts");
    let sa = ctl.slots[0].load(Ordering::Acquire);
    let sb = ctl.slots[1].load(Ordering::Acquire);
    assert_ne!(sa, sb);
    // Render while both are alive, then after they exit: the same values.
    let expect = vec![
        "level{g=\"set_then_inc\"} 15",
        "level{g=\"inc_then_set\"} 10",
        "level{g=\"mixed\"} 10",
        "level{g=\"set_then_set\"} -3.5",
    ];
    assert_eq!(lines_of(&render(r), "level"), expect);
    ctl.go.store(1, Ordering::Release);
    wait_all(&[a, b]);
    assert_eq!(lines_of(&render(r), "level"), expect);
    // The shared stamp names the last setter's slot.
    assert_eq!(r.cell(SHARED_SLOT, g4) % STAMP_SLOTS as f64, sb as f64);
    assert_eq!(r.cell(SHARED_SLOT, g1) % STAMP_SLOTS as f64, sa as f64);
}

// ---------------------------------------------------------------------------
// 6. Rendering

/// A region with four used families (one defined but unused), series created
/// interleaved, values in one slot of this process.
fn sample_region(shm: &Shm) -> &'static Region {
    let r = create(shm, params(100, 8));
    let req = define(r, KIND_COUNTER, "http_requests_total", "Requests.", &["method", "code"], &[]).unwrap();
    let temp = define(r, KIND_GAUGE, "temp", "Temperature.", &[], &[]).unwrap();
    let lat = define(r, KIND_HISTOGRAM, "lat_seconds", "Latency.", &["path"], &[0.25, 1.0]).unwrap();
    let _unused = define(r, KIND_COUNTER, "unused_total", "Never used.", &[], &[]).unwrap();
    let zz = define(r, KIND_COUNTER, "zz_total", "Z with \\ and\nnewline.", &["x"], &[]).unwrap();
    let slot = r.claim_slot().unwrap();
    let c1 = cell(r, req, &["GET", "200"]);
    let cz = cell(r, zz, &["a\"b"]);
    let c2 = cell(r, req, &["POST", "500"]);
    let ch = cell(r, lat, &["/a"]);
    let ct = cell(r, temp, &[]);
    let _c3 = cell(r, req, &["GET", "404"]);
    cells::add(r, slot, c1, 3.0);
    cells::add(r, slot, c2, 1.0);
    cells::add(r, slot, cz, 5.5);
    for v in [0.125, 0.25, 0.5, 2.0] {
        // SAFETY: our own slot and a histogram series of these bounds.
        unsafe { cells::observe(r.cells(slot), ch, &[0.25, 1.0], v) };
    }
    gauge_set(r, slot, ct, 10.5);
    gauge_inc(r, slot, ct, -0.5);
    r.count_error(7);
    r
}

const SAMPLE_USER_PART: &str = "\
# HELP http_requests_total Requests.
# TYPE http_requests_total counter
http_requests_total{method=\"GET\",code=\"200\"} 3
http_requests_total{method=\"POST\",code=\"500\"} 1
http_requests_total{method=\"GET\",code=\"404\"} 0
# HELP temp Temperature.
# TYPE temp gauge
temp 10
# HELP lat_seconds Latency.
# TYPE lat_seconds histogram
lat_seconds_bucket{path=\"/a\",le=\"0.25\"} 2
lat_seconds_bucket{path=\"/a\",le=\"1\"} 3
lat_seconds_bucket{path=\"/a\",le=\"+Inf\"} 4
lat_seconds_sum{path=\"/a\"} 2.875
lat_seconds_count{path=\"/a\"} 4
# HELP zz_total Z with \\\\ and\\nnewline.
# TYPE zz_total counter
zz_total{x=\"a\\\"b\"} 5.5
";

#[test]
fn render_families_in_definition_order_contiguous_without_empty_ones() {
    let shm = Shm::new("render-order");
    let r = sample_region(&shm);
    let body = render(r);
    assert_eq!(user_part(&body), SAMPLE_USER_PART);
    assert!(!body.contains("unused_total"));
    promtool_check(&body);
}

#[test]
fn render_self_metrics() {
    let shm = Shm::new("render-self");
    let r = sample_region(&shm);
    let body = render(r);
    let own = &body[user_part(&body).len()..];
    let samples: Vec<&str> = own.lines().filter(|l| !l.starts_with('#')).collect();
    let mut want: Vec<String> = REASONS
        .iter()
        .map(|reason| {
            format!("shmetrics_errors_total{{reason=\"{reason}\"}} {}", if *reason == "store_full" { 1 } else { 0 })
        })
        .collect();
    want.push("shmetrics_series_used 6".into());
    want.push("shmetrics_series_capacity 100".into());
    want.push("shmetrics_worker_slots{state=\"live\"} 1".into());
    want.push("shmetrics_worker_slots{state=\"dead\"} 0".into());
    want.push("shmetrics_worker_slots{state=\"free\"} 6".into());
    assert_eq!(samples, want);
    let types: Vec<&str> = own.lines().filter(|l| l.starts_with("# TYPE")).collect();
    assert_eq!(
        types,
        vec![
            "# TYPE shmetrics_errors_total counter",
            "# TYPE shmetrics_series_used gauge",
            "# TYPE shmetrics_series_capacity gauge",
            "# TYPE shmetrics_worker_slots gauge",
        ]
    );
    for name in
        ["shmetrics_errors_total", "shmetrics_series_used", "shmetrics_series_capacity", "shmetrics_worker_slots"]
    {
        let help = format!("# HELP {name} ");
        assert!(own.lines().any(|l| l.starts_with(&help) && l.len() > help.len()), "no HELP for {name}");
    }
    // An empty region has the self-metrics only.
    let empty = Shm::new("render-self-empty");
    let r = create(&empty, params(10, 4));
    let body = render(r);
    assert_eq!(user_part(&body), "");
    assert_eq!(must_sample(&body, "shmetrics_series_used"), 0.0);
    assert_eq!(must_sample(&body, "shmetrics_worker_slots{state=\"free\"}"), 3.0);
}

#[test]
fn render_in_tiny_chunks_gives_the_same_body() {
    let shm = Shm::new("render-chunks");
    let r = sample_region(&shm);
    let whole = render(r);
    for hint in [1, 2, 7, 30, 64, 100, 1000, 1 << 20] {
        let chunks = render_chunks(r, hint);
        let joined = String::from_utf8(chunks.concat()).unwrap();
        assert_eq!(joined, whole, "hint {hint}");
        // Every chunk but the last reaches the hint (a piece is never cut short).
        for (i, c) in chunks.iter().enumerate() {
            assert!(!c.is_empty());
            if i + 1 < chunks.len() {
                assert!(c.len() >= hint, "hint {hint}: chunk {i} has {} bytes", c.len());
            }
        }
    }
    // With hint 1 every series is its own piece: no more pieces than lines.
    let pieces = render_chunks(r, 1).len();
    assert!(pieces <= whole.lines().count(), "{pieces} pieces for {} lines", whole.lines().count());
    // The same in OpenMetrics.
    let om = render_chunks_in(r, Format::OpenMetrics, usize::MAX).concat();
    assert!(om.ends_with(b"# EOF\n"));
    for hint in [1, 7, 100] {
        assert_eq!(render_chunks_in(r, Format::OpenMetrics, hint).concat(), om, "OpenMetrics, hint {hint}");
    }
}

#[test]
fn render_of_a_large_family_in_chunks() {
    let shm = Shm::new("render-large");
    let r = create(&shm, params(3000, 4));
    let fam = family(r, KIND_COUNTER, "many_total", &["i"], &[]);
    let slot = r.claim_slot().unwrap();
    for i in 0..2500u32 {
        let c = cell(r, fam, &[&i.to_string()]);
        cells::add(r, slot, c, i as f64);
    }
    let whole = render(r);
    let lines = lines_of(&whole, "many_total");
    assert_eq!(lines.len(), 2500);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(*l, format!("many_total{{i=\"{i}\"}} {i}"));
    }
    for hint in [1, 4096, 65536] {
        assert_eq!(String::from_utf8(render_chunks(r, hint).concat()).unwrap(), whole, "hint {hint}");
    }
}

#[test]
fn forget_closes_what_open_kept() {
    // The fuzzers open and forget regions by the thousand in one process: each
    // forget must give back the descriptor its open kept (a leak ran the render
    // fuzzer out of descriptors after 20,000 inputs).
    let shm = Shm::new("forget");
    // Descriptors of this test's file (other tests run in parallel threads).
    let fds = || {
        let dir = std::fs::read_dir("/proc/self/fd").unwrap();
        dir.filter(|e| e.as_ref().is_ok_and(|e| std::fs::read_link(e.path()).is_ok_and(|t| t == shm.path))).count()
    };
    let before = fds();
    for i in 0..50 {
        let (r, how) = region::open(&shm.path, params(100, 4), false).unwrap();
        assert_eq!(how, if i == 0 { Opened::Created } else { Opened::Attached });
        // SAFETY: nothing else uses `r` or its mapping.
        unsafe { region::forget(r) };
    }
    assert_eq!((before, fds()), (0, 0), "descriptors of the file before and after 50 open/forget pairs");
}
