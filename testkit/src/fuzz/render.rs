//! Fuzz target `render`: builds a region from the input (families, series,
//! label values, updates as Lua makes them, cell bit patterns in any slot, deletes,
//! resets, other processes' slots) through the Rust API and the C ABI, renders it
//! in every format with arbitrary chunk hints and filters, and checks every body
//! against the oracle's model (`super::oracle`).

use std::sync::atomic::Ordering;

use shmetrics::ffi::*;
use shmetrics::layout::*;
use shmetrics::region::Region;
use shmetrics::registry::exposed_names;

use super::abi::*;
use super::gen::*;
use super::input::{gen_f64, Hints, Input};
use super::oracle::*;
use crate::model::{Kind, Op, Series};

/// Region sizes for the render target. In each, `max_slots × max_cells × 8` is a
/// multiple of 4096, so the cells end on a page boundary (where `Mapped` puts
/// its guard page), and some fill up within a few operations.
pub const RENDER_PARAMS: [Params; 4] = [
    Params { max_series: 16, max_families: 4, max_slots: 4, max_label_bytes: 32, max_cells: 128, arena_bytes: 4096 },
    Params {
        max_series: 64,
        max_families: 16,
        max_slots: 2,
        max_label_bytes: 300,
        max_cells: 1024,
        arena_bytes: 16384,
    },
    Params { max_series: 8, max_families: 8, max_slots: 8, max_label_bytes: 8, max_cells: 64, arena_bytes: 4096 },
    Params {
        max_series: 256,
        max_families: 32,
        max_slots: 4,
        max_label_bytes: 1024,
        max_cells: 2048,
        arena_bytes: 65536,
    },
];

pub struct RenderRun {
    r: &'static Region,
    p: Params,
    slot: u32,
    model: Model,
}

impl RenderRun {
    fn define(&mut self, d: Def, ffi: bool) {
        let res = define(self.r, &d, ffi);
        no_panic("define", &res);
        match res {
            Ok(id) => {
                assert!(def_is_valid(&d), "accepted an invalid definition as family {id}: {d:?}");
                if let Some(eid) = self.model.by_name(&d.name) {
                    let f = self.model.fams.get_mut(&eid).unwrap();
                    assert_eq!(id, eid, "a redefinition of {:?} returned another id", lossy(&d.name));
                    assert!(f.def.same_shape(&d), "accepted {d:?} over {:?}", f.def);
                    f.def.max_series = d.max_series;
                    f.helps.push(d.help);
                } else {
                    assert!(!self.model.fams.contains_key(&id), "id {id} handed out twice");
                    for f in self.model.fams.values() {
                        let theirs = exposed_names(&f.def.name, f.def.kind);
                        if let Some(n) = exposed_names(&d.name, d.kind).iter().find(|n| theirs.contains(n)) {
                            panic!(
                                "accepted {:?} although {:?} exposes {:?} too",
                                lossy(&d.name),
                                lossy(&f.def.name),
                                lossy(n)
                            );
                        }
                    }
                    self.model.fams.insert(id, FamM { helps: vec![d.help.clone()], def: d, gen: 0 });
                }
            }
            Err((code, msg)) => {
                assert!(
                    matches!(code, SHMETRICS_E_INVALID | SHMETRICS_E_CONFLICT | SHMETRICS_E_FULL),
                    "define {d:?}: {} {msg}",
                    code_name(code)
                );
                if let Some(eid) = self.model.by_name(&d.name) {
                    let f = &self.model.fams[&eid];
                    assert!(
                        !(def_is_valid(&d) && f.def.same_shape(&d)),
                        "refused an identical redefinition {d:?}: {msg}"
                    );
                }
            }
        }
    }

    /// Expected error of a call with `values` on a defined family.
    fn value_error(&self, f: &FamM, values: &[Vec<u8>]) -> Option<i32> {
        if values.len() != f.def.labels.len() {
            Some(SHMETRICS_E_LABEL_COUNT)
        } else if values.iter().any(|v| v.len() > self.p.max_label_bytes as usize) {
            Some(SHMETRICS_E_LABEL_TOO_LONG)
        } else {
            None
        }
    }

    fn undefined_family(&self, what: &str, fam: u32, values: &[Vec<u8>], ffi: bool, code: i32, msg: &str) {
        let ok = code == SHMETRICS_E_INVALID || (ffi && code == SHMETRICS_E_LABEL_COUNT && values.len() > MAX_LABELS);
        assert!(ok, "{what} on undefined family {fam}: {} {msg}", code_name(code));
    }

    fn series(&mut self, inp: &mut Input, ffi: bool) {
        let fam = pick_fam(inp, &self.model);
        let n = self.model.fams.get(&fam).map_or_else(|| inp.below(3), |f| f.def.labels.len());
        let values = gen_values(inp, &self.model, n, self.p.max_label_bytes);
        self.model.remember(&values);
        let res = series(self.r, fam, &values, ffi);
        no_panic("series", &res);
        let Some(f) = self.model.fams.get(&fam) else {
            match res {
                Ok(c) => panic!("series of undefined family {fam} returned {c}"),
                Err((code, msg)) => self.undefined_family("series", fam, &values, ffi, code, &msg),
            }
            return;
        };
        let def = f.def.clone();
        let expect_err = self.value_error(f, &values);
        let key = lossy_key(&values);
        let existing = self.model.live(fam, &key).map(|s| s.cell);
        let expect_overflow = existing.is_none()
            && !is_overflow_key(&key)
            && def.max_series > 0
            && self.model.limited_count(fam) >= def.max_series as usize;
        let what = format!("series {}{key:?}", lossy(&def.name));
        let rc = match res {
            Ok(rc) => rc,
            Err((code, msg)) => {
                match expect_err {
                    Some(e) => assert_eq!(code, e, "{what}: {msg}"),
                    None => {
                        assert_eq!(code, SHMETRICS_E_FULL, "{what}: {} {msg}", code_name(code));
                        assert!(existing.is_none(), "{what}: refused an existing series: {msg}");
                        if expect_overflow {
                            assert!(
                                self.model.live(fam, &overflow_key(n)).is_none(),
                                "{what}: refused, but the overflow series exists"
                            );
                        }
                    }
                }
                return;
            }
        };
        assert!(expect_err.is_none(), "{what}: accepted, expected {}", code_name(expect_err.unwrap()));
        let overflow = rc & SERIES_OVERFLOW != 0;
        assert_eq!(overflow, expect_overflow, "{what}: overflow flag (max_series {})", def.max_series);
        let cell = rc & !SERIES_OVERFLOW;
        let key = if overflow { overflow_key(n) } else { key };
        let ncells = def.need();
        match self.model.live(fam, &key) {
            Some(s) => assert_eq!(cell, s.cell, "{what}: another cell for an existing series"),
            None => {
                assert!(
                    cell >= RESERVED_CELLS && cell + ncells <= self.p.max_cells,
                    "{what}: cell {cell} + {ncells} out of bounds"
                );
                for s in &self.model.series {
                    assert!(
                        cell + ncells <= s.cell || s.cell + s.ncells <= cell,
                        "{what}: cell {cell} overlaps series {:?} at {}",
                        s.key,
                        s.cell
                    );
                }
                let ops = Series::new(model_kind(&def));
                self.model.series.push(SerM { fam, key: key.clone(), cell, ncells, live: true, ops });
            }
        }
        let idx = self.model.series.iter().position(|s| s.live && s.fam == fam && s.key == key).unwrap();
        for _ in 0..inp.below(4) {
            let v = gen_f64(inp);
            let how = inp.u8();
            self.write(idx, v, how, ffi);
        }
    }

    /// An update of series `idx` as Lua makes it, recorded in the model.
    fn write(&mut self, idx: usize, v: f64, how: u8, ffi: bool) {
        let s = &mut self.model.series[idx];
        let def = &self.model.fams[&s.fam].def;
        let op = match def.kind {
            KIND_COUNTER => Op::Add(v),
            KIND_GAUGE if how & 1 == 0 => Op::Set(v),
            KIND_GAUGE => Op::Delta(v),
            _ => Op::Observe(v),
        };
        s.ops.record(self.slot, op);
        // SAFETY: the cell range was checked against max_cells when created.
        unsafe { lua_write(self.r, s.fam, def, self.slot, s.cell, v, how, ffi) };
    }

    /// Every live counter and histogram series holds, in this process's slot
    /// (layout §5: one cell per value), the values its operations by this slot
    /// give: a counter the sum of its adds, a histogram the count of its
    /// observations in each bucket (`v` in `(bounds[k-1], bounds[k]]`, the last
    /// above every bound and NaN) and their sum, added in order.
    fn check_observations(&self) {
        for s in self.model.series.iter().filter(|s| s.live && s.ops.kind != Kind::Gauge) {
            let want = s.ops.slot_values(self.slot);
            let got: Vec<f64> = (0..want.len() as u32).map(|i| cell_at(self.r, self.slot, s.cell + i)).collect();
            assert!(
                got.iter().zip(&want).all(|(g, w)| same_value(*g, *w)),
                "{}{:?} ({:?}): operations {:?}, the cells of slot {} hold {got:?}, expected {want:?}",
                lossy(&self.model.fams[&s.fam].def.name),
                s.key,
                s.ops.kind,
                s.ops.ops,
                self.slot
            );
        }
    }

    fn delete(&mut self, inp: &mut Input, ffi: bool) {
        let fam = pick_fam(inp, &self.model);
        let n = self.model.fams.get(&fam).map_or_else(|| inp.below(3), |f| f.def.labels.len());
        let values = gen_values(inp, &self.model, n, self.p.max_label_bytes);
        let res = delete(self.r, fam, &values, ffi);
        no_panic("delete", &res);
        let Some(f) = self.model.fams.get(&fam) else {
            match res {
                Ok(d) => panic!("delete on undefined family {fam} returned {d}"),
                Err((code, msg)) => self.undefined_family("delete", fam, &values, ffi, code, &msg),
            }
            return;
        };
        let key = lossy_key(&values);
        match (res, self.value_error(f, &values)) {
            (Err((code, msg)), Some(e)) => assert_eq!(code, e, "delete {key:?}: {msg}"),
            (Err((code, msg)), None) => panic!("delete {key:?}: {} {msg}", code_name(code)),
            (Ok(_), Some(e)) => panic!("delete {key:?}: accepted, expected {}", code_name(e)),
            (Ok(gone), None) => {
                let exists = self.model.live(fam, &key).is_some();
                assert_eq!(gone, exists, "delete {}{key:?}", lossy(&f.def.name));
                if gone {
                    self.model
                        .series
                        .iter_mut()
                        .filter(|s| s.live && s.fam == fam && s.key == key)
                        .for_each(|s| s.live = false);
                    self.model.fams.get_mut(&fam).unwrap().gen += 1;
                }
            }
        }
    }

    fn reset(&mut self, inp: &mut Input, ffi: bool) {
        let fam = pick_fam(inp, &self.model);
        let res = reset(self.r, fam, ffi);
        no_panic("reset", &res);
        if !self.model.fams.contains_key(&fam) {
            match res {
                Ok(n) => panic!("reset of undefined family {fam} returned {n}"),
                Err((code, msg)) => assert_eq!(code, SHMETRICS_E_INVALID, "reset {fam}: {msg}"),
            }
            return;
        }
        let live: Vec<&mut SerM> = self.model.series.iter_mut().filter(|s| s.live && s.fam == fam).collect();
        let n = live.len() as u32;
        live.into_iter().for_each(|s| s.live = false);
        self.model.fams.get_mut(&fam).unwrap().gen += 1;
        match res {
            Ok(got) => assert_eq!(got, n, "reset {fam}: deleted count"),
            Err((code, msg)) => panic!("reset {fam}: {} {msg}", code_name(code)),
        }
    }

    fn check_family_pointers(&self, inp: &mut Input) {
        let fam = pick_fam(inp, &self.model);
        // SAFETY: live handle.
        let (gen, bounds) = unsafe { (shmetrics_family_gen(self.r, fam), shmetrics_family_bounds(self.r, fam)) };
        match self.model.fams.get(&fam) {
            Some(f) => {
                assert!(!gen.is_null(), "shmetrics_family_gen({fam}) is NULL");
                // SAFETY: a pointer into the mapped family record.
                assert_eq!(unsafe { *gen }, f.gen, "generation of family {fam}");
                if f.def.kind == KIND_HISTOGRAM {
                    let b = f.def.stored_bounds();
                    assert!(!bounds.is_null(), "shmetrics_family_bounds({fam}) is NULL");
                    // SAFETY: the family's bounds in the arena, `b.len()` of them.
                    let got = unsafe { std::slice::from_raw_parts(bounds, b.len()) };
                    assert!(
                        got.iter().map(|x| x.to_bits()).eq(b.iter().map(|x| x.to_bits())),
                        "bounds of {fam}: {got:?} vs {b:?}"
                    );
                } else {
                    assert!(bounds.is_null(), "shmetrics_family_bounds of a {}", kind_name(f.def.kind));
                }
            }
            None => assert!(gen.is_null() && bounds.is_null(), "pointers for undefined family {fam}"),
        }
    }

    fn render(&self, inp: &mut Input, ffi: bool) {
        let fmt = Fmt::from(inp.below(3));
        let filter: Option<Vec<Vec<u8>>> = if inp.u8() % 3 == 0 {
            let names: Vec<&Vec<u8>> = self.model.fams.values().map(|f| &f.def.name).collect();
            let list: Vec<Vec<u8>> = (0..1 + inp.below(3))
                .map(|_| match inp.u8() % 5 {
                    0 => raw(inp, 12),
                    1 => b"shmetrics_errors".to_vec(),
                    2 if !names.is_empty() => {
                        let n = names[inp.below(names.len())];
                        n.strip_suffix(b"_total").unwrap_or(n).to_vec()
                    }
                    _ if !names.is_empty() => names[inp.below(names.len())].clone(),
                    _ => b"a".to_vec(),
                })
                .collect();
            Some(list)
        } else {
            None
        };
        self.check_observations();
        let body = render(self.r, fmt, filter.as_deref(), ffi, &mut Hints::new(inp.u32()))
            .unwrap_or_else(|e| panic!("render {fmt:?}: {e}"));
        if let Err(e) = check_body(self.r, &self.model, fmt, filter.as_deref(), &body) {
            panic!("render {fmt:?} (filter {filter:?}): {e}\n--- body ---\n{}", lossy(&body));
        }
    }
}

/// Fuzz target `render`: see `fuzz_targets/render.rs`.
pub fn render_target(data: &[u8]) {
    let mut inp = Input::new(data);
    let p = RENDER_PARAMS[inp.below(RENDER_PARAMS.len())];
    let path = fresh_path("render");
    let opened = open_region(&path, p, false, inp.bool());
    unlink(&path);
    let (r, how) = opened.unwrap_or_else(|e| panic!("creating {}: {e:?}", path.display()));
    assert_eq!(how, SHMETRICS_OPEN_CREATED, "a fresh path was not created");
    // SAFETY: created just now, nothing in it yet.
    unsafe { fix_hash_seed(r) };
    // SAFETY: a fresh path, opened once; `r` is not used after `_m` is dropped.
    let _m = unsafe { Mapped::new(r) };
    let slot = claim(r, inp.bool()).expect("claiming a slot in a fresh region");
    assert_eq!(slot, 1, "the first slot of a fresh region");
    let mut run = RenderRun { r, p, slot, model: Model { slots: vec![slot], ..Model::default() } };
    let mut ops = 0;
    while !inp.is_empty() && ops < 256 {
        ops += 1;
        let op = inp.u8();
        let ffi = op & 0x80 != 0;
        match op % 16 {
            0 | 1 => {
                let d = gen_def(&mut inp, &run.model);
                run.define(d, ffi);
            }
            2 => {
                // A redefinition: the same, a new HELP or limit, or one change.
                let Some(f) = run.model.fams.values().nth(inp.below(run.model.fams.len().max(1))) else { continue };
                let mut d = f.def.clone();
                match inp.u8() % 8 {
                    0 => d.help = gen_help(&mut inp),
                    1 => d.max_series = inp.below(4) as u32,
                    2 => d.kind = (d.kind + 1) % 3,
                    3 => d.labels.push(gen_label_name(&mut inp)),
                    4 => d.bounds = gen_bounds(&mut inp, d.kind),
                    5 if d.kind == KIND_HISTOGRAM => d.bounds.push(f64::INFINITY),
                    _ => {}
                }
                run.define(d, ffi);
            }
            3..=6 | 15 => run.series(&mut inp, ffi),
            7 => run.delete(&mut inp, ffi),
            8 => run.reset(&mut inp, ffi),
            9 => {
                // Any bit pattern in any slot's copy of a series' cells.
                if run.model.series.is_empty() {
                    continue;
                }
                let n = inp.below(run.model.series.len());
                let s = &mut run.model.series[n];
                let slot = inp.below(p.max_slots as usize) as u32;
                let i = s.cell + inp.below(s.ncells as usize) as u32;
                let v = gen_f64(&mut inp);
                s.ops.record(slot, Op::Overwrite(i - s.cell, v));
                // SAFETY: `i < cell + ncells <= max_cells`, checked when created.
                unsafe { *slot_cells(r, slot, ffi).add(i as usize) = v };
            }
            10 => {
                // Another (dead) process's slot: its cells count in every scrape.
                let k = 1 + inp.below(p.max_slots as usize - 1) as u32;
                if k != slot {
                    let word = match inp.u8() % 3 {
                        0 => 0x3FFF_FF00 | k as u64,
                        1 => (inp.u32() as u64) << 32 | std::process::id() as u64,
                        _ => inp.u64() | 1,
                    };
                    r.slot(k).owner.store(word, Ordering::Release);
                    if let Err(at) = run.model.slots.binary_search(&k) {
                        run.model.slots.insert(at, k);
                    }
                }
            }
            11 => {
                let reason = match inp.u8() % 4 {
                    0 => inp.u32(),
                    _ => inp.below(REASONS.len()) as u32,
                };
                if ffi {
                    // SAFETY: live handle.
                    unsafe { shmetrics_count_error(r, reason) };
                } else {
                    r.count_error(reason);
                }
                if let Some(e) = run.model.errors.get_mut(reason as usize) {
                    *e += 1;
                }
            }
            12 => run.render(&mut inp, ffi),
            13 => {
                // More updates to an existing series, as Lua's cache hits do.
                let live: Vec<usize> = (0..run.model.series.len()).filter(|&i| run.model.series[i].live).collect();
                if live.is_empty() {
                    continue;
                }
                let idx = live[inp.below(live.len())];
                let (v, how) = (gen_f64(&mut inp), inp.u8());
                run.write(idx, v, how, ffi);
            }
            _ => run.check_family_pointers(&mut inp),
        }
    }
    run.check_observations();
    // Every format through both APIs, with different chunk hints: the same bytes.
    for fmt in [Fmt::Text, Fmt::OpenMetrics, Fmt::Json] {
        let seed = inp.u32();
        let a = render(r, fmt, None, false, &mut Hints::new(seed)).unwrap_or_else(|e| panic!("render {fmt:?}: {e}"));
        let b = render(r, fmt, None, true, &mut Hints::new(seed ^ 0x5bd1_e995))
            .unwrap_or_else(|e| panic!("render {fmt:?} (C ABI): {e}"));
        assert!(
            a == b,
            "{fmt:?}: the Rust API and the C ABI rendered different bodies:\n{}\n---\n{}",
            lossy(&a),
            lossy(&b)
        );
        if let Err(e) = check_body(r, &run.model, fmt, None, &a) {
            panic!("render {fmt:?}: {e}\n--- body ---\n{}", lossy(&a));
        }
    }
}

/// A cell of a slot, as this process's own writes left it (no reader rule).
fn cell_at(r: &'static Region, slot: u32, i: u32) -> f64 {
    assert!(i < r.params.max_cells);
    // SAFETY: `i < max_cells`, `slot < max_slots` (asserted by `cells`).
    unsafe { std::ptr::read_volatile(r.cells(slot).add(i as usize)) }
}
