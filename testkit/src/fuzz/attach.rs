//! Fuzz target `attach`: writes a region file (arbitrary bytes; a valid region
//! with bytes or record fields overwritten, truncated or extended; a valid header
//! over garbage; also mode 0644, a symlink, a directory, no file), opens it, then
//! runs every operation on it. Checks: no panic; only the right files are refused
//! and the intact one is attached; every cell range handed out fits the slot for
//! the kind the caller defined; every pointer is NULL or inside the region; bodies
//! are UTF-8, complete and (JSON) valid.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::OnceLock;

use shmetrics::ffi::*;
use shmetrics::layout::*;
use shmetrics::region::Region;

use super::abi::*;
use super::gen::{gen_def, gen_help, gen_values};
use super::input::{gen_f64, Hints, Input};
use super::oracle::{check_corrupt_body, def_is_valid, expected_type, lossy, Model};

/// Sizes of the template region the attach target corrupts (cells end on a
/// page boundary: 4 × 256 × 8 = 8192).
pub const ATTACH_PARAMS: Params =
    Params { max_series: 32, max_families: 8, max_slots: 4, max_label_bytes: 64, max_cells: 256, arena_bytes: 4096 };

/// A valid region file with some of everything in it, built once per process.
pub struct Template {
    pub params: Params,
    pub bytes: Vec<u8>,
    pub defs: Vec<(u32, Def)>,
    /// Label values of the template's series, by family id.
    pub values: Vec<(u32, Vec<Vec<u8>>)>,
}

pub fn def(kind: u32, name: &str, help: &[u8], labels: &[&str], bounds: &[f64], max_series: u32) -> Def {
    Def {
        kind,
        name: name.as_bytes().to_vec(),
        help: help.to_vec(),
        labels: labels.iter().map(|l| l.as_bytes().to_vec()).collect(),
        bounds: bounds.to_vec(),
        max_series,
    }
}

pub fn template() -> &'static Template {
    static T: OnceLock<Template> = OnceLock::new();
    T.get_or_init(build_template)
}

pub fn build_template() -> Template {
    let p = ATTACH_PARAMS;
    let path = fresh_path("template");
    let opened = open_region(&path, p, false, false);
    let (r, _) = opened.unwrap_or_else(|e| panic!("creating the template {}: {e:?}", path.display()));
    // SAFETY: created just now, nothing in it yet.
    unsafe { fix_hash_seed(r) };
    // SAFETY: a fresh path, opened once; `r` is not used after `m` is dropped.
    let m = unsafe { Mapped::new(r) };
    let defs = [
        def(KIND_COUNTER, "req_total", b"Requests.", &["method", "code"], &[], 4),
        def(KIND_GAUGE, "temp", b"Temperature \\ \"C\"\n.", &["room"], &[], 0),
        def(KIND_HISTOGRAM, "lat_seconds", b"", &[], &[0.1, 1.0, 10.0], 0),
        def(KIND_COUNTER, "up", b"Up.", &[], &[], 0),
        def(KIND_HISTOGRAM, "size", b"Sizes \xff.", &["a"], &[1.0, 2.0, 3.0, 4.0, 5.0, f64::INFINITY], 2),
    ];
    let v = |vals: &[&[u8]]| vals.iter().map(|x| x.to_vec()).collect::<Vec<_>>();
    let series_values: [(usize, Vec<Vec<u8>>); 12] = [
        (0, v(&[b"GET", b"200"])),
        (0, v(&[b"POST", b"500"])),
        (0, v(&[b"bad\xff", b"x"])),
        (0, v(&[b"PUT", b"201"])),
        (0, v(&[b"DELETE", b"204"])),
        (0, v(&[b"a", b"b"])),
        (1, v(&[b"kitchen"])),
        (1, v(&[b"hall\"\n"])),
        (2, v(&[])),
        (3, v(&[])),
        (4, v(&[b"q\"\n\\"])),
        (4, v(&[b"r"])),
    ];
    let slot = claim(r, false).expect("template: claim");
    let mut ids = Vec::new();
    for d in &defs {
        ids.push((define(r, d, false).unwrap_or_else(|e| panic!("template: define {d:?}: {e:?}")), d.clone()));
    }
    let mut values = Vec::new();
    for (k, (i, vals)) in series_values.iter().enumerate() {
        let (fam, d) = &ids[*i];
        let rc = series(r, *fam, vals, k % 2 == 0).unwrap_or_else(|e| panic!("template: series {vals:?}: {e:?}"));
        for j in 0..3 {
            // SAFETY: a cell the library handed out for this family.
            unsafe { lua_write(r, *fam, d, slot, rc & !SERIES_OVERFLOW, (k * 3 + j) as f64 * 0.75, j as u8, j == 1) };
        }
        values.push((*fam, vals.clone()));
    }
    assert!(delete(r, ids[0].0, &series_values[1].1, false).expect("template: delete"));
    for reason in [0, 3, REASON_NO_SLOT] {
        r.count_error(reason);
    }
    // Slot 1 belongs to a dead process now, and slot 2 to another dead one that
    // counted too; slot 3 was never used.
    r.slot(1).owner.store(0x0000_0001_3FFF_FF01, Ordering::Release);
    r.slot(2).owner.store(0x0000_0002_3FFF_FF02, Ordering::Release);
    for c in [RESERVED_CELLS, RESERVED_CELLS + 1, RESERVED_CELLS + 2, CELL_ERRORS + 1] {
        // SAFETY: below max_cells.
        unsafe { *r.cells(2).add(c as usize) = 2.0 };
    }
    let bytes = std::fs::read(&path).expect("template: read the file back");
    assert_eq!(bytes.len() as u64, r.off.total);
    drop(m);
    unlink(&path);
    Template { params: p, bytes, defs: ids, values }
}

pub fn interesting_u32(inp: &mut Input, p: &Params) -> u32 {
    let t = [
        0,
        1,
        2,
        3,
        4,
        8,
        10,
        11,
        31,
        32,
        33,
        128,
        129,
        p.max_cells - 4,
        p.max_cells - 1,
        p.max_cells,
        p.max_cells + 1,
        p.max_series - 1,
        p.max_series,
        p.max_families,
        p.arena_bytes as u32 - 1,
        p.arena_bytes as u32,
        1 << 30,
        0x7fff_ffff,
        0x8000_0000,
        0xffff_fffe,
        0xffff_ffff,
    ];
    match inp.u8() % 3 {
        0 => inp.u32(),
        _ => t[inp.below(t.len())],
    }
}

/// Overwrites fuzz-chosen bytes of a region file image, aiming at its sections.
pub fn mutate(inp: &mut Input, bytes: &mut [u8], p: &Params) {
    let off = p.offsets();
    // The template's arena use, from its header (offset 208).
    let arena_used = u64::from_le_bytes(bytes[208..216].try_into().unwrap()).min(p.arena_bytes);
    let sections: [(u64, u64); 10] = [
        (0, 256),
        (192, 64),
        (off.slots, p.max_slots as u64 * 64),
        (off.families, p.max_families as u64 * std::mem::size_of::<Family>() as u64),
        (off.family_index, off.family_index_cap as u64 * 4),
        (off.series, p.max_series as u64 * 24),
        (off.series_index, off.series_index_cap as u64 * 4),
        (off.arena, arena_used + 64),
        (off.cells, off.total - off.cells),
        (0, off.total),
    ];
    for _ in 0..1 + inp.below(16) {
        let (start, len) = sections[inp.below(sections.len())];
        let at = (start + inp.below(len as usize) as u64) as usize;
        let get =
            |bytes: &[u8], at: usize| -> [u8; 8] { std::array::from_fn(|i| bytes.get(at + i).copied().unwrap_or(0)) };
        let v: Vec<u8> = match inp.u8() % 6 {
            0 => vec![inp.u8()],
            1 => vec![bytes[at] ^ 1 << (inp.u8() % 8)],
            2 => interesting_u32(inp, p).to_le_bytes().to_vec(),
            3 => inp.u64().to_le_bytes().to_vec(),
            4 => {
                let old = u32::from_le_bytes(get(bytes, at)[..4].try_into().unwrap());
                old.wrapping_add(inp.u8() as i8 as u32).to_le_bytes().to_vec()
            }
            _ => get(bytes, (start + inp.below(len as usize) as u64) as usize).to_vec(),
        };
        for (i, b) in v.iter().enumerate() {
            if let Some(x) = bytes.get_mut(at + i) {
                *x = *b;
            }
        }
    }
}

/// Overwrites fields of records (families, series, slots, header counters) with
/// values near the limits they are checked against: several coordinated
/// corruptions (a short `ncells` and a `cell` near the end) are rare otherwise.
pub fn mutate_fields(inp: &mut Input, bytes: &mut [u8], p: &Params) {
    let off = p.offsets();
    for _ in 0..1 + inp.below(4) {
        // Family: state gen kind nlabels nbounds ncells hash name_off name_len
        // labels_off bounds_off max_series help(len, off) dropped series_count.
        const FAMILY: &[usize] = &[0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 64];
        // Series: state family key_off key_len cell hash.
        const SERIES: &[usize] = &[0, 4, 8, 12, 16, 20];
        let (base, size, n, fields): (u64, u64, u32, &[usize]) = match inp.u8() % 4 {
            0 => (off.families, std::mem::size_of::<Family>() as u64, p.max_families, FAMILY),
            1 => (off.series, 24, p.max_series / 2, SERIES),
            2 => (off.slots, 64, p.max_slots, &[0, 4, 8]),
            _ => (0, 0, 1, &[192, 196, 200, 208, 212, 216]),
        };
        let at = (base + size * inp.below(n as usize) as u64) as usize + fields[inp.below(fields.len())];
        let v = interesting_u32(inp, p).to_le_bytes();
        if let Some(dst) = bytes.get_mut(at..at + 4) {
            dst.copy_from_slice(&v);
        }
    }
}

pub fn write_file(path: &Path, bytes: &[u8], mode: u32) {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
    f.write_all(bytes).expect("writing the region file");
    f.set_permissions(std::fs::Permissions::from_mode(mode)).expect("chmod");
}

pub struct AttachRun<'m> {
    m: &'m Mapped,
    r: &'static Region,
    /// Families this run defined (so it knows them as Lua would).
    known: Vec<(u32, Def)>,
    /// Cells handed out for known families: (index in `known`, cell).
    cells: Vec<(usize, u32)>,
}

impl AttachRun<'_> {
    fn pick_known(&self, inp: &mut Input) -> Option<usize> {
        (!self.known.is_empty()).then(|| inp.below(self.known.len()))
    }

    fn fam(&self, inp: &mut Input) -> u32 {
        match (inp.u8() % 4, self.pick_known(inp)) {
            (0..=2, Some(k)) => self.known[k].0,
            (3, _) => inp.u32() % 16,
            _ => inp.below(template().defs.len() + 2) as u32,
        }
    }

    fn values(&self, inp: &mut Input, fam: u32) -> Vec<Vec<u8>> {
        let t = template();
        let of_fam: Vec<&Vec<Vec<u8>>> = t.values.iter().filter(|(f, _)| *f == fam).map(|(_, v)| v).collect();
        if !of_fam.is_empty() && inp.u8() % 4 != 0 {
            return of_fam[inp.below(of_fam.len())].clone();
        }
        let n = self.known.iter().find(|(f, _)| *f == fam).map_or_else(|| inp.below(3), |(_, d)| d.labels.len());
        gen_values(inp, &Model::default(), n, t.params.max_label_bytes)
    }

    /// What Lua does after `shmetrics_series` returned `rc` for a known family:
    /// the ABI promises `cell .. cell + cells of its kind` lie within the slot.
    fn use_cell(&mut self, k: usize, rc: u32, inp: &mut Input, ffi: bool) {
        let d = self.known[k].1.clone();
        let cell = rc & !SERIES_OVERFLOW;
        let max = self.r.params.max_cells;
        assert!(
            cell >= RESERVED_CELLS && cell + d.need() <= max,
            "series of {} returned cell {cell}: a {} needs {} cells, there are {max} (a write out of bounds)",
            lossy(&d.name),
            expected_type(d.kind),
            d.need()
        );
        self.cells.push((k, cell));
        self.write(k, cell, inp, ffi);
    }

    fn write(&self, k: usize, cell: u32, inp: &mut Input, ffi: bool) {
        let (fam, d) = &self.known[k];
        let Ok(slot) = claim(self.r, ffi) else { return };
        assert!(slot >= 1 && slot < self.r.params.max_slots, "claimed slot {slot}");
        if d.kind == KIND_HISTOGRAM && ffi {
            // SAFETY: live handle.
            let b = unsafe { shmetrics_family_bounds(self.r, *fam) };
            let nb = d.stored_bounds().len();
            assert!(
                !b.is_null() && self.m.inside(b as usize, nb * 8),
                "bounds of {fam} at {b:?} are outside the region"
            );
        }
        let (v, how) = (gen_f64(inp), inp.u8());
        // SAFETY: `use_cell` checked the range against max_cells.
        unsafe { lua_write(self.r, *fam, d, slot, cell, v, how, ffi) };
    }

    fn define(&mut self, d: Def, ffi: bool) {
        let res = define(self.r, &d, ffi);
        no_panic("define", &res);
        if let Ok(id) = res {
            assert!(def_is_valid(&d), "accepted an invalid definition {d:?}");
            assert!(id < self.r.params.max_families, "family id {id}");
            self.known.push((id, d));
        }
    }

    fn op(&mut self, inp: &mut Input) {
        let op = inp.u8();
        let ffi = op & 0x80 != 0;
        let r = self.r;
        match op % 12 {
            0 => {
                let fmt = Fmt::from(inp.below(3));
                let filter: Option<Vec<Vec<u8>>> =
                    inp.bool().then(|| vec![template().defs[inp.below(5)].1.name.clone()]);
                let body = render(r, fmt, filter.as_deref(), ffi, &mut Hints::new(inp.u32()))
                    .unwrap_or_else(|e| panic!("render {fmt:?}: {e}"));
                if let Err(e) = check_corrupt_body(fmt, &body) {
                    panic!("render {fmt:?} of a corrupt region: {e}\n--- body ---\n{}", lossy(&body));
                }
            }
            1 => {
                let t = template();
                let mut d = t.defs[inp.below(t.defs.len())].1.clone();
                match inp.u8() % 4 {
                    0 => d.help = gen_help(inp),
                    1 => d.max_series = inp.below(4) as u32,
                    _ => {}
                }
                self.define(d, ffi);
            }
            2 => {
                let d = gen_def(inp, &Model::default());
                self.define(d, ffi);
            }
            3 | 4 => {
                let Some(k) = self.pick_known(inp) else { return };
                let fam = self.known[k].0;
                let values = self.values(inp, fam);
                let res = series(r, fam, &values, ffi);
                no_panic("series", &res);
                if let Ok(rc) = res {
                    self.use_cell(k, rc, inp, ffi);
                }
            }
            5 => {
                let fam = self.fam(inp);
                let values = self.values(inp, fam);
                no_panic("series", &series(r, fam, &values, ffi));
            }
            6 => {
                let fam = self.fam(inp);
                let values = self.values(inp, fam);
                no_panic("delete", &delete(r, fam, &values, ffi));
            }
            7 => {
                let fam = self.fam(inp);
                no_panic("reset", &reset(r, fam, ffi));
            }
            8 => {
                let res = claim(r, ffi);
                no_panic("claim", &res);
                if let Ok(s) = res {
                    assert!(s >= 1 && s < r.params.max_slots, "claimed slot {s}");
                }
            }
            9 => {
                let reason = inp.u32() % 16;
                if ffi {
                    // SAFETY: live handle.
                    unsafe { shmetrics_count_error(r, reason) };
                } else {
                    r.count_error(reason);
                }
            }
            10 => {
                let fam = self.fam(inp);
                // SAFETY: live handle.
                let (g, b) = unsafe { (shmetrics_family_gen(r, fam), shmetrics_family_bounds(r, fam)) };
                assert!(g.is_null() || self.m.inside(g as usize, 4), "family_gen({fam}) = {g:?} is outside the region");
                assert!(
                    b.is_null() || self.m.inside(b as usize, 0),
                    "family_bounds({fam}) = {b:?} is outside the region"
                );
                let slot = inp.below(r.params.max_slots as usize + 2) as u32;
                // SAFETY: live handle.
                let c = unsafe { shmetrics_slot_cells(r, slot) };
                if slot < r.params.max_slots {
                    assert!(self.m.inside(c as usize, r.params.max_cells as usize * 8), "slot_cells({slot}) = {c:?}");
                } else {
                    assert!(c.is_null(), "slot_cells({slot}) of {} slots", r.params.max_slots);
                }
            }
            _ => {
                if self.cells.is_empty() {
                    return;
                }
                let (k, cell) = self.cells[inp.below(self.cells.len())];
                self.write(k, cell, inp, ffi);
            }
        }
    }
}

/// Fuzz target `attach`: see `fuzz_targets/attach.rs`.
pub fn attach_target(data: &[u8]) {
    let t = template();
    let mut inp = Input::new(data);
    let mode = inp.u8();
    let flags = inp.u8();
    let mut p = t.params;
    if flags & 0x80 != 0 {
        // Sizes that differ from the file's: it must be recreated.
        match inp.u8() % 6 {
            0 => p.max_series += 1,
            1 => p.max_families += 1,
            2 => p.max_slots += 1,
            3 => p.max_label_bytes += 1,
            4 => p.max_cells *= 2,
            _ => p.arena_bytes *= 2,
        }
    }
    let bytes: Vec<u8> = match mode % 4 {
        // Arbitrary bytes.
        0 => {
            let n = inp.below(t.bytes.len() + 4097);
            inp.bytes(n).to_vec()
        }
        // A valid header over a repeated pattern.
        3 => {
            let n = 1 + inp.below(256);
            let pat = inp.bytes(n).to_vec();
            let mut b = t.bytes[..HEADER_BYTES as usize].to_vec();
            b.extend(pat.iter().cycle().take(t.bytes.len() - b.len()));
            if inp.bool() {
                // The allocation counters too (most such files are refused).
                for (i, x) in b[192..256].iter_mut().enumerate() {
                    *x = pat[i % pat.len()];
                }
            }
            b
        }
        // The template with bytes overwritten, then maybe cut or extended.
        m => {
            let mut b = t.bytes.clone();
            mutate(&mut inp, &mut b, &t.params);
            if mode & 0x40 != 0 {
                mutate_fields(&mut inp, &mut b, &t.params);
            }
            if m == 2 {
                let n = match inp.u8() % 3 {
                    0 => inp.below(t.bytes.len()),
                    1 => t.bytes.len() - 1 - inp.below(64),
                    _ => t.bytes.len() + 1 + inp.below(8192),
                };
                b.resize(n, 0);
            }
            b
        }
    };
    let path = fresh_path("attach");
    let target = PathBuf::from(format!("{}.target", path.display()));
    let kind = flags & 7;
    match kind {
        5 => write_file(&path, &bytes, 0o644),
        6 => {
            write_file(&target, &bytes, 0o600);
            std::os::unix::fs::symlink(&target, &path).expect("symlink");
        }
        7 => std::fs::create_dir(&path).expect("mkdir"),
        _ if flags & 0x08 != 0 => {}
        _ => write_file(&path, &bytes, 0o600),
    }
    let reset = flags & 0x70 == 0x70;
    let opened = open_region(&path, p, reset, flags & 0x40 != 0);
    unlink(&path);
    unlink(&target);
    no_panic("open", &opened);
    let (r, how) = match opened {
        Ok(x) => x,
        Err((code, msg)) => {
            // Refusing a file is fine (not ours alone, or counters past the
            // capacities); any other failure is not.
            assert_eq!(code, SHMETRICS_E_IO, "open ({kind}): {} {msg}", code_name(code));
            let refused = kind >= 5 || msg.contains("allocation counters");
            assert!(refused, "open refused a file of kind {kind}: {msg}");
            return;
        }
    };
    if how != SHMETRICS_OPEN_ATTACHED {
        // SAFETY: created (or recreated) just now, nothing in it yet.
        unsafe { fix_hash_seed(r) };
    }
    // SAFETY: a fresh path, opened once; `r` is not used after `m` is dropped.
    let m = unsafe { Mapped::new(r) };
    let regular = kind < 5 && flags & 0x08 == 0;
    if regular && !reset && p == t.params && bytes == t.bytes {
        assert_eq!(how, SHMETRICS_OPEN_ATTACHED, "the intact template was not attached");
    }
    if kind == 7 || (kind >= 5 && !reset) {
        panic!("open accepted a file of kind {kind} (result {how})");
    }
    let mut run = AttachRun { m: &m, r, known: Vec::new(), cells: Vec::new() };
    let mut ops = 0;
    while !inp.is_empty() && ops < 64 {
        ops += 1;
        run.op(&mut inp);
    }
    for fmt in [Fmt::Text, Fmt::OpenMetrics, Fmt::Json] {
        let body = render(r, fmt, None, false, &mut Hints::new(ops)).unwrap_or_else(|e| panic!("render {fmt:?}: {e}"));
        if let Err(e) = check_corrupt_body(fmt, &body) {
            panic!("render {fmt:?} of a corrupt region: {e}\n--- body ---\n{}", lossy(&body));
        }
    }
}
