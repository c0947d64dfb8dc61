//! Shared memory per series, pinned (a "memory golden" test, as Envoy pins bytes
//! per stat): a change that makes a series cost more shared memory fails here.
//!
//! A series costs, in the region:
//!
//! - its registry entry (`layout::Series`, 24 bytes);
//! - its share of the series index: `series_index_cap` `u32` positions over
//!   `max_series` (the cap is `2 × max_series` rounded up to a power of two, so
//!   between 8 and 16 bytes a series);
//! - its label values in the arena: per value a `u32` length and the bytes, the
//!   key 4-aligned;
//! - its cells: 8 bytes each, in every slot (slot 0 is shared, so 2 workers
//!   mean 3 slots).
//!
//! The sizes come from `shmetrics::layout`; the arena and cell figures are
//! measured by creating series in a real region and reading the header's
//! counters. The pure-Lua shared-dict library uses about 384 bytes a series
//! (FACTS.md); the budget is half of that at 2 worker slots.
//!
//! Run with `--nocapture` to see the table (`scripts/bench.sh memory` puts it in
//! BENCHMARKS.md). If a figure shrinks, update the pin to the new value.

use std::sync::atomic::Ordering;

use shmetrics::layout::*;
use shmetrics::region::{self, Region};
use shmetrics::registry::FamilyDef;
use testkit::shm::Shm;

/// Series created per kind to measure the arena and cells they take.
const N: u32 = 1000;
/// The typical label set: method, path, namespace (the seed's gateway counter).
const LABELS: [&[u8]; 3] = [b"method", b"path", b"namespace"];
const METHOD: &[u8] = b"GET";
const PATH: &[u8] = b"/v1/chat/completions";
/// Namespaces of the typical length ("wechat"), distinct per series.
fn namespace(i: u32) -> Vec<u8> {
    format!("ns{i:04}").into_bytes()
}

/// The pure-Lua shared-dict library's bytes per series (FACTS.md).
const PURE_LUA_BYTES: f64 = 384.0;

/// Pinned figures. Update them (downwards) when a change shrinks a series.
const PIN_ENTRY: u64 = 24;
const PIN_KEY_BYTES: u64 = 44; // 4+3 + 4+20 + 4+6 = 41, 4-aligned
const PIN_INDEX_CAP_100K: u32 = 262_144;
const PIN_CELLS_COUNTER: u64 = 1;
const PIN_CELLS_GAUGE: u64 = 4;
const PIN_CELLS_HISTOGRAM_19: u64 = 21; // 19 buckets + +Inf + sum
/// Bytes for 100,000 such counters at 3 slots (2 workers): entry + index + key + cells.
const PIN_COUNTER_100K_3_SLOTS: u64 = 2_400_000 + 1_048_576 + 4_400_000 + 2_400_000;
/// The region file with default options (20,000 series, 64 slots, 8 cells and
/// 128 arena bytes reserved a series): its apparent size, what it would take with
/// all 63 worker slots claimed.
const PIN_DEFAULT_REGION_BYTES: u64 = 85_454_848;
/// What a default `init` reserves (`fallocate`) at once: header, registries,
/// arena and slot 0's cells. A default region must leave most of Docker's 64 MiB
/// `/dev/shm` free.
const PIN_DEFAULT_INIT_RESERVED: u64 = 4_798_720;
/// What each worker process reserves more when it claims its slot (default sizes).
const PIN_DEFAULT_SLOT_BYTES: u64 = 1_280_256;

fn fresh_region(tag: &str, p: Params) -> (Shm, &'static Region) {
    let shm = Shm::new(&format!("memtest-{tag}"));
    let (r, _) = region::open(&shm.path, p, true).unwrap_or_else(|e| panic!("open {}: {e}", shm.path.display()));
    (shm, r)
}

fn params(max_slots: u32) -> Params {
    Params { max_series: 100_000, max_families: 16, max_slots, max_label_bytes: 1024, max_cells: 0, arena_bytes: 0 }
}

/// Arena bytes and cells one series of `kind` takes, measured over N series.
fn measure(r: &Region, kind: u32, name: &str) -> (u64, u64) {
    let bounds: Vec<f64> = if kind == KIND_HISTOGRAM {
        vec![0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 10.0]
    } else {
        Vec::new()
    };
    let def = FamilyDef { kind, name: name.as_bytes(), help: b"help", labels: &LABELS, bounds: &bounds, max_series: 0 };
    let fam = r.define_family(&def).expect("define family");
    // One series first, so that each measured key also pays the padding that
    // aligns it after the one before (as every key but the first does).
    r.series_cell(fam, &[METHOD, PATH, b"first!"]).expect("create series");
    let h = r.header();
    let (arena0, cells0, series0) = (
        h.arena_used.load(Ordering::Relaxed),
        h.cells_used.load(Ordering::Relaxed),
        h.series_used.load(Ordering::Relaxed),
    );
    for i in 0..N {
        let ns = namespace(i);
        r.series_cell(fam, &[METHOD, PATH, &ns]).expect("create series");
    }
    let arena = h.arena_used.load(Ordering::Relaxed) - arena0;
    let cells = (h.cells_used.load(Ordering::Relaxed) - cells0) as u64;
    assert_eq!(h.series_used.load(Ordering::Relaxed) - series0, N, "one registry entry per series");
    assert_eq!(arena % N as u64, 0, "every key took the same arena bytes ({arena} for {N})");
    assert_eq!(cells % N as u64, 0, "every series took the same cells ({cells} for {N})");
    (arena / N as u64, cells / N as u64)
}

/// Index bytes a series, at `max_series` (exact rational: bytes × 1e5 / max_series).
fn index_bytes(max_series: u32) -> f64 {
    let p = Params { max_series, ..params(3) };
    p.offsets().series_index_cap as f64 * 4.0 / max_series as f64
}

#[test]
fn shared_memory_per_series_is_pinned() {
    assert_eq!(std::mem::size_of::<Series>() as u64, PIN_ENTRY, "registry entry grew");
    assert_eq!(params(3).offsets().series_index_cap, PIN_INDEX_CAP_100K, "series index grew");

    let (_shm, r) = fresh_region("kinds", params(3));
    let (key, c_cells) = measure(r, KIND_COUNTER, "mem_counter_total");
    let (gkey, g_cells) = measure(r, KIND_GAUGE, "mem_gauge");
    let (hkey, h_cells) = measure(r, KIND_HISTOGRAM, "mem_histogram_seconds");
    assert_eq!(key, PIN_KEY_BYTES, "arena bytes of a typical 3-label key changed");
    assert_eq!((gkey, hkey), (key, key), "the key does not depend on the kind");
    assert_eq!(c_cells, PIN_CELLS_COUNTER, "cells of a counter series");
    assert_eq!(g_cells, PIN_CELLS_GAUGE, "cells of a gauge series");
    assert_eq!(h_cells, PIN_CELLS_HISTOGRAM_19, "cells of a 19-bucket histogram series");

    let cap = PIN_INDEX_CAP_100K as u64;
    let total_100k = |cells: u64, slots: u64| 100_000 * (PIN_ENTRY + key + cells * 8 * slots) + cap * 4;
    let counter_100k = total_100k(c_cells, 3);
    assert_eq!(counter_100k, PIN_COUNTER_100K_3_SLOTS, "bytes of 100,000 3-label counters at 3 slots");
    let per_series = counter_100k as f64 / 100_000.0;
    println!("MEMORY-COUNTER-2-WORKERS {per_series}");
    assert!(
        per_series <= PURE_LUA_BYTES / 2.0,
        "{per_series} bytes a series is more than half of the pure-Lua library's {PURE_LUA_BYTES}"
    );

    let defaults = Params::default().resolved();
    let default_total = defaults.offsets().total;
    assert_eq!(default_total, PIN_DEFAULT_REGION_BYTES, "the default region's apparent size changed");
    assert_eq!(defaults.reserved_at_init(), PIN_DEFAULT_INIT_RESERVED, "what a default init reserves changed");
    assert_eq!(defaults.slot_bytes(), PIN_DEFAULT_SLOT_BYTES, "what a default worker slot reserves changed");
    // A default init and 16 workers with 16 more draining after a reload fit in 64 MiB.
    assert!(defaults.reserved_at_init() + 32 * defaults.slot_bytes() < 64 << 20);

    // The table for BENCHMARKS.md (scripts/bench.sh memory): "MEMORY|" rows.
    let idx = index_bytes(100_000);
    let row = |what: &str, cells: u64, slots: u64| {
        let b = PIN_ENTRY as f64 + idx + key as f64 + (cells * 8 * slots) as f64;
        println!(
            "MEMORY| {what} | {slots} | {PIN_ENTRY} | {idx:.2} | {key} | {} | **{b:.1}** | {:.0} % |",
            cells * 8 * slots,
            b / PURE_LUA_BYTES * 100.0
        );
    };
    println!("MEMORY| series (3 labels: GET, /v1/chat/completions, a 6-byte namespace) | slots | registry entry | index (at max_series 100,000) | arena key | cells × 8 B × slots | bytes/series | of pure-Lua's ~384 B |");
    println!("MEMORY|---|---:|---:|---:|---:|---:|---:|---:|");
    row("counter, 1 worker (slot 0 + 1)", c_cells, 2);
    row("counter, **2 workers** (slot 0 + 2)", c_cells, 3);
    row("gauge, 2 workers", g_cells, 3);
    row("histogram (19 buckets: 22 exposition lines), 2 workers", h_cells, 3);
    row("counter, 8 workers", c_cells, 9);
    let range = (index_bytes(65_536), index_bytes(65_537));
    println!(
        "MEMORY| index share by max_series: {:.1} B (a power of two ÷ 2) to {:.1} B (just above) | | | | | | | |",
        range.0, range.1
    );
    let reserved = default_total as f64 / defaults.max_series as f64;
    println!(
        "MEMORY| default options (max_series 20,000, max_slots 64, 8 cells and 128 arena bytes a series): init reserves {} B, each worker {} B more; region file {default_total} B | 64 | | | | | {reserved:.0} (with every slot claimed) | |",
        defaults.reserved_at_init(),
        defaults.slot_bytes()
    );
}
