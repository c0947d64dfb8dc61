//! Families: defining one (validated, published in the family index, or
//! matched with the stored one), this process's own record of what it
//! defined, and the checked view of a family the scrape renders.

use std::ptr::addr_of_mut;
use std::sync::atomic::{AtomicU32, Ordering};

use super::probe::{Index, Look, Probe};
use super::{bump_u32, exposed_names, show, usable};
use crate::error::Error;
use crate::expo;
use crate::hash::Hasher;
use crate::layout::Family;
use crate::layout::*;
use crate::records::{family_numbers_bad, FamilyRec};
use crate::region::{Def, Region};

/// A metric definition as the API receives it.
pub struct FamilyDef<'a> {
    pub kind: u32,
    pub name: &'a [u8],
    pub help: &'a [u8],
    pub labels: &'a [&'a [u8]],
    pub bounds: &'a [f64],
    /// The family's own cardinality limit; 0 for none.
    pub max_series: u32,
}

/// A family record that passed every check, with private copies of its
/// names and bounds (what a renderer uses).
#[derive(Clone, Debug)]
pub struct FamilyView {
    pub id: u32,
    pub kind: Kind,
    /// Cells per series.
    pub cells: u32,
    pub name: Vec<u8>,
    pub labels: Vec<Vec<u8>>,
    pub bounds: Vec<f64>,
}

impl FamilyView {
    /// A placeholder while a renderer borrows a group's view.
    pub(crate) fn empty() -> FamilyView {
        FamilyView { id: 0, kind: Kind::Counter, cells: 1, name: Vec::new(), labels: Vec::new(), bounds: Vec::new() }
    }
}

impl Region {
    fn family_name_of(&self, f: &Family) -> &[u8] {
        let rec = FamilyRec::read(f);
        self.arena(rec.name_off, rec.name_len).unwrap_or(b"")
    }

    /// Label names of a family (from the arena; bounds-checked, not validated:
    /// see [`Region::family_view`]).
    pub fn family_labels(&self, f: &Family) -> Vec<&[u8]> {
        let rec = FamilyRec::read(f);
        let n = rec.nlabels.min(MAX_LABELS as u32);
        let Some(raw) = self.arena(rec.labels_off, n * 8) else { return Vec::new() };
        raw.chunks_exact(8)
            .map(|c| {
                let off = u32::from_le_bytes(c[..4].try_into().unwrap());
                let len = u32::from_le_bytes(c[4..].try_into().unwrap());
                self.arena(off, len).unwrap_or(b"")
            })
            .collect()
    }

    /// Finite bucket bounds of a histogram family.
    ///
    /// Empty when the record is unsound (a corrupt file). Writers use the
    /// bounds their own process defined ([`Region::defined_bounds`]).
    pub fn family_bounds(&self, f: &Family) -> &[f64] {
        let rec = FamilyRec::read(f);
        let n = rec.nbounds.min(MAX_BUCKETS as u32);
        if rec.kind != KIND_HISTOGRAM || rec.bounds_off % 8 != 0 || self.arena(rec.bounds_off, n * 8).is_none() {
            return &[];
        }
        // SAFETY: in bounds (checked above on the same copy of the fields),
        // 8-aligned (the arena starts 64-aligned and bounds_off % 8 == 0); any
        // bit pattern is an f64.
        unsafe { std::slice::from_raw_parts(self.arena_mut(rec.bounds_off) as *const f64, n as usize) }
    }

    pub fn family_help(&self, f: &Family) -> &[u8] {
        // Acquire: pairs with the Release store of a replacement text.
        let h = f.help.load(Ordering::Acquire);
        self.arena((h >> 32) as u32, h as u32).unwrap_or(b"")
    }

    fn describe(&self, kind: u32, labels: &[&[u8]], bounds: &[f64]) -> String {
        let labels: Vec<String> = labels.iter().map(|l| show(l)).collect();
        let mut s = format!("{} {{{}}}", kind_name(kind), labels.join(","));
        if kind == KIND_HISTOGRAM {
            s.push_str(&format!(" buckets {bounds:?}"));
        }
        s
    }

    /// Defines a family, or returns the existing one if the definition matches.
    pub fn define_family(&self, def: &FamilyDef) -> Result<u32, Error> {
        self.define(def, false)
    }

    /// Like [`Region::define_family`], but a stored family of the same name whose
    /// definition differs is replaced by this one instead of refused (see
    /// [`Region::replace_family`]). A family the current configuration has not
    /// defined yet (one left from before a restart) is replaced either way.
    pub fn define_family_replacing(&self, def: &FamilyDef) -> Result<u32, Error> {
        self.define(def, true)
    }

    fn define(&self, def: &FamilyDef, replace: bool) -> Result<u32, Error> {
        let bounds = validate_def(def)?;
        let mut hs = Hasher::new(self.header().hash_seed);
        hs.write(def.name);
        let hash = hs.finish() as u32;
        let mut built: Option<u32> = None;
        let mut probe = Probe::new(self, Index::Family, hash);
        while let Some(pos) = probe.next_pos() {
            let (entry, look) = self.look(Index::Family, pos);
            match look {
                Look::Corrupt => {}
                Look::Free => {
                    let id = match built {
                        Some(id) => id,
                        None => {
                            self.check_generated_names(def)?;
                            let id = self.build_family(def, &bounds, hash)?;
                            built = Some(id);
                            id
                        }
                    };
                    // Release: the family's fields and arena bytes happen-before any
                    // process that finds it through this position (Acquire in `look`).
                    match entry.compare_exchange(0, id + 1, Ordering::AcqRel, Ordering::Acquire) {
                        Ok(_) => {
                            self.family(id).state.store(STATE_LIVE, Ordering::Release);
                            self.remember_def(id, def.kind, &bounds);
                            return Ok(id);
                        }
                        Err(other) => {
                            if let Look::Taken(theirs) = self.classify(Index::Family, pos, other) {
                                if let Some(found) = self.family_matches(theirs, def, &bounds, hash)? {
                                    self.family(id).state.store(STATE_ORPHAN, Ordering::Release);
                                    self.remember_def(found, def.kind, &bounds);
                                    return Ok(found);
                                }
                            }
                        }
                    }
                }
                Look::Taken(old) => {
                    if self.differing_family(old, def, &bounds, hash, replace) {
                        if let Some(id) = self.replace_family(entry, old, def, &bounds, hash, &mut built)? {
                            return Ok(id);
                        }
                        // Another process replaced it first: look at this position again.
                        probe.look_again();
                    } else if let Some(found) = self.family_matches(old, def, &bounds, hash)? {
                        if let Some(id) = built {
                            self.family(id).state.store(STATE_ORPHAN, Ordering::Release);
                        }
                        self.remember_def(found, def.kind, &bounds);
                        return Ok(found);
                    }
                }
            }
        }
        Err(self.index_full(Index::Family))
    }

    /// Whether `f` has the kind, label names and bucket bounds of `def`.
    fn same_shape(&self, f: &Family, def: &FamilyDef, bounds: &[f64]) -> bool {
        let labels = self.family_labels(f);
        f.kind == def.kind
            && labels.len() == def.labels.len()
            && labels.iter().zip(def.labels).all(|(a, b)| a == b)
            && self.family_bounds(f).iter().map(|b| b.to_bits()).eq(bounds.iter().map(|b| b.to_bits()))
    }

    /// Whether family `id` (from an index entry) is named like `def` and
    /// `def` replaces it: its shape differs, and either `replace` was asked for or
    /// the current configuration has not defined it (it is left from before).
    fn differing_family(&self, id: u32, def: &FamilyDef, bounds: &[f64], hash: u32, replace: bool) -> bool {
        if id >= self.params.max_families {
            return false;
        }
        let f = self.family(id);
        if f.hash != hash || self.family_name_of(f) != def.name || self.same_shape(f, def, bounds) {
            return false;
        }
        replace || !self.family_current(f)
    }

    /// Replaces family `old` (published at index position `slot`) by a new
    /// family built from `def`: the new one takes over the index position with
    /// one compare-and-swap, so every later lookup by name finds it, and `old`
    /// becomes `ORPHAN`: never shown or found again. Workers that cached `old`
    /// (old workers draining after a reload) keep writing its cells, unseen; its
    /// series keep their space (the store is insert-only). Returns the new id, or
    /// `None` if another process changed the position first (the caller looks
    /// again).
    fn replace_family(
        &self,
        slot: &AtomicU32,
        old: u32,
        def: &FamilyDef,
        bounds: &[f64],
        hash: u32,
        built: &mut Option<u32>,
    ) -> Result<Option<u32>, Error> {
        let id = match *built {
            Some(id) => id,
            None => {
                self.check_generated_names(def)?;
                let id = self.build_family(def, bounds, hash)?;
                *built = Some(id);
                id
            }
        };
        // Release: as for a first publication, the new family's fields happen-before
        // every process that finds it here; Acquire on failure to read the winner.
        if slot.compare_exchange(old + 1, id + 1, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return Ok(None);
        }
        self.family(id).state.store(STATE_LIVE, Ordering::Release);
        // Release: the exposition (Acquire) stops listing it from here on.
        self.family(old).state.store(STATE_ORPHAN, Ordering::Release);
        Ok(Some(id))
    }

    /// If family `id` (from an index entry) is named like `def`: `Ok(Some(id))`
    /// when the definitions agree, an error naming both when they do not.
    fn family_matches(&self, id: u32, def: &FamilyDef, bounds: &[f64], hash: u32) -> Result<Option<u32>, Error> {
        if id >= self.params.max_families {
            return Ok(None);
        }
        let f = self.family(id);
        let rec = FamilyRec::read(f);
        if rec.hash != hash || self.family_name_of(f) != def.name {
            return Ok(None);
        }
        if !self.same_shape(f, def, bounds) {
            let labels = self.family_labels(f);
            return Err(Error::Conflict(format!(
                "metric \"{}\" is already defined as {}; this definition is {}",
                show(def.name),
                self.describe(rec.kind, &labels, self.family_bounds(f)),
                self.describe(def.kind, def.labels, bounds)
            )));
        }
        usable(&f.state);
        if !self.family_current(f) {
            // Left from before a restart and defined again: shown again, with its
            // counts, unless a family of this configuration took its names.
            self.check_generated_names(def)?;
            self.mark_current(f);
        }
        // A redefinition (after a reload) may bring a new limit.
        f.max_series.store(def.max_series, Ordering::Relaxed);
        if self.family_help(f) != def.help {
            // A reload may bring a new HELP text; readers see the old or the new one whole.
            if let Some(off) = self.arena_put(&[def.help], 1) {
                f.help.store(((off as u64) << 32) | def.help.len() as u64, Ordering::Release);
            }
        }
        Ok(Some(id))
    }

    /// Whether the configuration the region follows now has defined `f`.
    fn family_current(&self, f: &Family) -> bool {
        // Relaxed: epochs only decide visibility; the family's fields are
        // published by its state (Acquire where it is read).
        f.epoch.load(Ordering::Relaxed) == self.header().config_epoch.load(Ordering::Relaxed)
    }

    fn mark_current(&self, f: &Family) {
        // Relaxed: see family_current.
        f.epoch.store(self.header().config_epoch.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Whether family `f` is in the exposition: live, and defined by the
    /// configuration the region follows now (see [`Region::begin_configuration`]).
    pub fn family_visible(&self, f: &Family) -> bool {
        f.state.load(Ordering::Acquire) == STATE_LIVE && self.family_current(f)
    }

    /// Starts a new configuration: every family is hidden from the exposition
    /// until a definition names it again (with its counts, if the definition is
    /// the same). Called when a new nginx master maps the region, so that a
    /// family the configuration no longer defines disappears after a restart.
    pub fn begin_configuration(&self) {
        // Relaxed: see family_current.
        self.header().config_epoch.fetch_add(1, Ordering::Relaxed);
    }

    /// Finds a live family by exact name.
    pub fn find_family(&self, name: &[u8]) -> Option<u32> {
        let mut hs = Hasher::new(self.header().hash_seed);
        hs.write(name);
        let hash = hs.finish() as u32;
        let mut probe = Probe::new(self, Index::Family, hash);
        while let Some(pos) = probe.next_pos() {
            match self.look(Index::Family, pos).1 {
                Look::Free => return None,
                Look::Taken(id) => {
                    let f = self.family(id);
                    if FamilyRec::read(f).hash == hash && self.family_name_of(f) == name {
                        return Some(id);
                    }
                }
                Look::Corrupt => {}
            }
        }
        None
    }

    /// Refuses a name whose exposed names collide with another family's: a
    /// histogram's `_bucket`/`_count`/`_sum` series, or a counter's OpenMetrics
    /// family name (without `_total`) and sample name (with it).
    fn check_generated_names(&self, def: &FamilyDef) -> Result<(), Error> {
        let mine = exposed_names(def.name, def.kind);
        let used = self.header().families_used.load(Ordering::Acquire).min(self.params.max_families);
        for id in 0..used {
            let f = self.family(id);
            // The same name is not a collision but a redefinition, which the
            // index decides (a concurrent definer may have just published it).
            if !self.family_visible(f) || self.family_name_of(f) == def.name {
                continue;
            }
            let theirs = exposed_names(self.family_name_of(f), FamilyRec::read(f).kind);
            if let Some(clash) = mine.iter().find(|n| theirs.contains(n)) {
                return Err(Error::Conflict(format!(
                    "bad argument \"name\": {} \"{}\" collides with {} \"{}\": both would expose \"{}\"",
                    kind_name(def.kind),
                    show(def.name),
                    kind_name(FamilyRec::read(f).kind),
                    show(self.family_name_of(f)),
                    show(clash)
                )));
            }
        }
        Ok(())
    }

    fn build_family(&self, def: &FamilyDef, bounds: &[f64], hash: u32) -> Result<u32, Error> {
        let h = self.header();
        let full = || Error::Full("the arena is full; raise arena_bytes".to_string());
        let id = bump_u32(&h.families_used, 1, self.params.max_families).ok_or_else(|| {
            Error::Full(format!("all {} families are used; raise max_families", self.params.max_families))
        })?;
        // The record may hold anything (an unused record of a corrupt file):
        // WRITING first, so that no reader takes it for a published one.
        // Relaxed: readers reach the record only through the index CAS
        // (Release) below, or see WRITING and skip it.
        self.family(id).state.store(STATE_WRITING, Ordering::Relaxed);
        let name_off = self.arena_put(&[def.name], 1).ok_or_else(full)?;
        let help_off = self.arena_put(&[def.help], 1).ok_or_else(full)?;
        let mut pairs = Vec::with_capacity(def.labels.len() * 8);
        for l in def.labels {
            let off = self.arena_put(&[l], 1).ok_or_else(full)?;
            pairs.extend_from_slice(&off.to_le_bytes());
            pairs.extend_from_slice(&(l.len() as u32).to_le_bytes());
        }
        let labels_off = self.arena_put(&[&pairs], 4).ok_or_else(full)?;
        let bound_bytes: Vec<u8> = bounds.iter().flat_map(|b| b.to_le_bytes()).collect();
        let bounds_off = self.arena_put(&[&bound_bytes], 8).ok_or_else(full)?;
        // validate_def accepted the kind.
        let ncells = Kind::from_raw(def.kind).map_or(0, |k| k.cells(bounds.len() as u32));
        let p = self.family_ptr(id);
        // SAFETY: `p` comes from the mapping's base (writable) and is in bounds
        // (family_ptr checks); family `id` was handed to us alone by bump_u32
        // and is unreachable until published, so these plain writes race with
        // nobody (but a corrupting writer); no reference to these fields is live.
        unsafe {
            addr_of_mut!((*p).kind).write(def.kind);
            addr_of_mut!((*p).nlabels).write(def.labels.len() as u32);
            addr_of_mut!((*p).nbounds).write(bounds.len() as u32);
            addr_of_mut!((*p).ncells).write(ncells);
            addr_of_mut!((*p).hash).write(hash);
            addr_of_mut!((*p).name_off).write(name_off);
            addr_of_mut!((*p).name_len).write(def.name.len() as u32);
            addr_of_mut!((*p).labels_off).write(labels_off);
            addr_of_mut!((*p).bounds_off).write(bounds_off);
        }
        let f = self.family(id);
        f.help.store(((help_off as u64) << 32) | def.help.len() as u64, Ordering::Relaxed);
        f.max_series.store(def.max_series, Ordering::Relaxed);
        self.mark_current(f);
        Ok(id)
    }

    /// Checks that `fam` names a live family of this region.
    pub fn live_family(&self, fam: u32) -> Result<&Family, Error> {
        if fam >= self.header().families_used.load(Ordering::Acquire).min(self.params.max_families) {
            return Err(Error::invalid(format!("no family with id {fam}")));
        }
        let f = self.family(fam);
        if f.state.load(Ordering::Acquire) != STATE_LIVE {
            return Err(Error::invalid(format!("family {fam} is not live")));
        }
        Ok(f)
    }

    /// Like [`Region::live_family`], but also a family that a changed definition
    /// replaced (`ORPHAN` after [`Region::replace_family`]): old workers draining
    /// after a reload still record into it, unseen, instead of failing. Only a
    /// published family's id is ever handed out, so an `ORPHAN` id is a replaced
    /// family, complete.
    pub(crate) fn writable_family(&self, fam: u32) -> Result<&Family, Error> {
        match self.live_family(fam) {
            Err(_)
                if fam < self.header().families_used.load(Ordering::Acquire).min(self.params.max_families)
                    && self.family(fam).state.load(Ordering::Acquire) == STATE_ORPHAN =>
            {
                Ok(self.family(fam))
            }
            r => r,
        }
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
            let shared = self.family_bounds(self.family(fam));
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
    pub fn family_view(&self, fam: u32) -> Result<FamilyView, Error> {
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
        // family_check refused an unknown kind.
        let kind = Kind::from_raw(rec.kind).ok_or_else(|| bad(format!("kind {} is not a metric kind", rec.kind)))?;
        Ok(FamilyView { id: fam, kind, cells: rec.kind_cells(), name, labels, bounds })
    }
}

/// Validates a definition; returns the finite bucket bounds to store.
fn validate_def(def: &FamilyDef) -> Result<Vec<f64>, Error> {
    let bad = |arg: &str, why: String| Err(Error::invalid(format!("bad argument \"{arg}\": {why}")));
    if Kind::from_raw(def.kind).is_none() {
        return bad("kind", format!("{} is not a metric kind", def.kind));
    }
    if def.name.len() > MAX_NAME_BYTES || !expo::is_valid_metric_name(def.name) {
        return bad(
            "name",
            format!(
                "\"{}\" is not a valid metric name ([a-zA-Z_:][a-zA-Z0-9_:]*, at most {MAX_NAME_BYTES} bytes)",
                show(def.name)
            ),
        );
    }
    if def.name.starts_with(b"shmetrics_") {
        return bad("name", format!("\"{}\": the prefix shmetrics_ is reserved for self-metrics", show(def.name)));
    }
    if def.help.len() > MAX_HELP_BYTES {
        return bad("help", format!("{} bytes; at most {MAX_HELP_BYTES}", def.help.len()));
    }
    if def.labels.len() > MAX_LABELS {
        return bad("label_names", format!("{} labels; at most {MAX_LABELS}", def.labels.len()));
    }
    for (i, l) in def.labels.iter().enumerate() {
        if l.len() > MAX_NAME_BYTES || !expo::is_valid_label_name(l) {
            return bad(
                "label_names",
                format!("\"{}\" is not a valid label name ([a-zA-Z_][a-zA-Z0-9_]*, not starting with __)", show(l)),
            );
        }
        if def.labels[..i].contains(l) {
            return bad("label_names", format!("\"{}\" appears twice", show(l)));
        }
        if def.kind == KIND_HISTOGRAM && *l == b"le" {
            return bad("label_names", "\"le\" is reserved for histogram buckets".to_string());
        }
    }
    if def.kind != KIND_HISTOGRAM {
        if !def.bounds.is_empty() {
            return bad("buckets", format!("only histograms have buckets, not a {}", kind_name(def.kind)));
        }
        return Ok(Vec::new());
    }
    let mut b = def.bounds.to_vec();
    if b.last() == Some(&f64::INFINITY) {
        b.pop();
    }
    if b.is_empty() {
        return bad("buckets", "a histogram needs at least one finite bucket".to_string());
    }
    if b.len() > MAX_BUCKETS {
        return bad("buckets", format!("{} buckets; at most {MAX_BUCKETS}", b.len()));
    }
    for (i, x) in b.iter().enumerate() {
        if !x.is_finite() {
            return bad("buckets", format!("bucket #{} is {x}; bounds must be finite (+Inf is implied)", i + 1));
        }
        if i > 0 && b[i - 1] >= *x {
            return bad("buckets", format!("bucket #{} ({x}) is not greater than the one before", i + 1));
        }
    }
    Ok(b)
}
