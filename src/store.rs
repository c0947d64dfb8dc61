//! The store's operations: worker slots, the family and series registries.
//!
//! # The registries
//!
//! Families and series live in dense, append-only tables (`families`, `series`)
//! and are found through open-addressing hash indexes of `u32` (0 = empty, else
//! `id + 1`). Nothing is ever removed from an index; `del` marks a series
//! `DELETED`, and lookups step over it.
//!
//! Insertion is lock-free:
//!
//! 1. claim a dense id with a compare-and-swap on the table's `used` counter;
//! 2. allocate arena bytes and cells the same way, and write the entry in state
//!    `WRITING` (no reader can reach it yet);
//! 3. publish it with a compare-and-swap of an empty index position from 0 to
//!    `id + 1` (`Release`), probing from the key's hash;
//! 4. if another process published the same key first, mark ours `ORPHAN` and
//!    use theirs; otherwise store `LIVE`.
//!
//! A process killed between any two steps leaves an entry that is unreachable
//! (steps 1–2) or reachable and complete (after 3): never a half-written one,
//! and no lock is left held. An entry left in `WRITING` after step 3 is marked
//! `LIVE` by the next process that finds it through the index.
//!
//! # The reader protocol (exposition)
//!
//! 1. load `families_used` and `series_used` (`Acquire`);
//! 2. for each id below them, load `state` (`Acquire`) and take only `LIVE`
//!    entries: their fields and arena bytes were written before the `Release`
//!    that made them `LIVE` and never change again;
//! 3. for each series, load each cell of each claimed slot with an 8-byte
//!    relaxed load and add them up. A cell only ever grows between reads for a
//!    counter, so sums never decrease; a histogram's `+Inf` bucket and `_count`
//!    come from the same loads, so they agree.

use std::ptr::addr_of_mut;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::check::{cells_in_range, FamilyRec, SeriesRec};
use crate::error::Error;
use crate::expo;
use crate::hash::Hasher;
use crate::layout::*;
use crate::region::Region;

/// How corrupt index entries are told apart when counted once each: a
/// position in the series index, one in the family index with this bit set,
/// and "no free entry" with [`INDEX_FULL_TAG`].
const FAMILY_INDEX_TAG: u32 = 1 << 31;
const INDEX_FULL_TAG: u32 = 1 << 30;

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

fn kind_name(kind: u32) -> &'static str {
    match kind {
        KIND_COUNTER => "counter",
        KIND_GAUGE => "gauge",
        KIND_HISTOGRAM => "histogram",
        _ => "unknown",
    }
}

/// A user-supplied name for a message: at most 128 bytes of it.
fn show(b: &[u8]) -> String {
    const MAX: usize = 128;
    if b.len() <= MAX {
        return String::from_utf8_lossy(b).into_owned();
    }
    format!("{}... ({} bytes)", String::from_utf8_lossy(&b[..MAX]), b.len())
}

/// Bumps `counter` by `n` unless that passes `limit`; returns the old value.
fn bump_u32(counter: &AtomicU32, n: u32, limit: u32) -> Option<u32> {
    // Relaxed: the counter only hands out disjoint ranges; what is written into
    // a range is published later by the index CAS (Release).
    counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_add(n).filter(|&e| e <= limit)).ok()
}

/// Whether the process recorded in a slot's `owner` word still runs.
///
/// `owner` is `(start_time_low32 << 32) | pid`; comparing the start time tells a
/// live owner from an unrelated process that reused its pid.
pub fn owner_alive(owner: u64) -> bool {
    let pid = (owner & 0xffff_ffff) as i32;
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission.
    let r = unsafe { libc::kill(pid, 0) };
    if r != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
        return false;
    }
    match proc_stat(pid) {
        // A zombie has exited: its stores are complete, only its parent has not
        // reaped it yet (PID 1 in a container may take its time).
        Some((state, _)) if state == 'Z' || state == 'X' => false,
        Some((_, st)) => (st & 0xffff_ffff) as u32 == (owner >> 32) as u32,
        None => true,
    }
}

/// State (field 3) and start time (field 22, clock ticks since boot) of
/// `/proc/<pid>/stat`.
fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let mut f = rest.split_ascii_whitespace();
    let state = f.next()?.chars().next()?;
    Some((state, f.nth(18)?.parse().ok()?))
}

/// The owner word of process `pid`: its start time (low 32 bits) above its pid.
fn owner_word(pid: i32) -> u64 {
    let st = proc_stat(pid).map_or(0, |(_, st)| st);
    ((st & 0xffff_ffff) << 32) | pid as u32 as u64
}

fn my_owner_word() -> u64 {
    owner_word(std::process::id() as i32)
}

/// Refuses a region whose recorded master (`word`, an owner word as in
/// [`Header::master`]) is another nginx that still runs: two masters mapping one
/// file would add their counts together. The process itself (a second `open`
/// after its mapping was made elsewhere) and its parent are not others: a binary
/// upgrade (USR2) starts the new master as the old master's child, and both share
/// the region while the old workers drain.
pub(crate) fn check_master(word: u64, path: &std::path::Path) -> Result<(), Error> {
    let pid = (word & 0xffff_ffff) as u32;
    if word == 0 || pid == std::process::id() || !owner_alive(word) {
        // The recorded master may have exited while its nginx still runs: a
        // daemon's `init_by_lua` runs before nginx forks the daemon, so the
        // recorded pid is that of the process that started it. A binary upgrade's
        // new master is still one: nginx hands it the listening sockets in the
        // environment variable NGINX.
        if std::env::var_os("NGINX").is_some() {
            // Relaxed: read later by this same thread's caller (see joined_parent).
            JOINED_PARENT.store(true, Ordering::Relaxed);
        }
        return Ok(());
    }
    // SAFETY: getppid has no preconditions.
    if pid as i32 == unsafe { libc::getppid() } {
        // Relaxed: as above.
        JOINED_PARENT.store(true, Ordering::Relaxed);
        return Ok(());
    }
    Err(Error::Io(format!(
        "\"{}\" is in use by another running nginx (master pid {pid}): two instances would add \
         their counts together; give each instance its own file with the \"path\" option of \
         shmetrics.init (or stop the other one)",
        path.display()
    )))
}

/// Set when this process is a binary upgrade's new master: the region's
/// recorded master is its live parent, or nginx handed it the listening
/// sockets (the environment variable NGINX).
static JOINED_PARENT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process joined a region of its parent (a binary upgrade): its
/// open must not start a new configuration, since the old master's workers
/// are still being scraped and every family would vanish until this master's
/// definitions name it again.
pub fn joined_parent() -> bool {
    JOINED_PARENT.load(Ordering::Relaxed)
}

impl Region {
    /// Exposes an unlabelled counter named `name` (nginx-lua-prometheus's
    /// `nginx_metric_errors_total`) after the self-metrics: every hot-path error
    /// of every reason, plus the `log_error` calls counted in `CELL_LOG_ERRORS`.
    /// It takes no series. An empty name removes it. This process's setting:
    /// workers forked afterwards inherit it.
    pub fn set_error_metric(&self, name: &[u8]) -> Result<(), Error> {
        if !name.is_empty() && (name.len() > MAX_NAME_BYTES || !expo::is_valid_metric_name(name)) {
            return Err(Error::invalid(format!(
                "bad option \"error_metric_name\": \"{}\" is not a valid metric name",
                show(name)
            )));
        }
        if name.starts_with(b"shmetrics_") {
            return Err(Error::invalid(format!(
                "bad option \"error_metric_name\": \"{}\": the prefix shmetrics_ is reserved",
                show(name)
            )));
        }
        *self.error_metric.lock().unwrap_or_else(|e| e.into_inner()) = name.to_vec();
        Ok(())
    }

    /// Records the calling process as the master that maps this region (see
    /// [`check_master`]).
    pub(crate) fn record_master(&self) {
        // Relaxed: an identity read by the next master's `open`, which runs after
        // this process made its mapping; no other data is published with it.
        self.header().master.store(my_owner_word(), Ordering::Relaxed);
    }

    /// Records this process's parent as the master when the recorded one has
    /// exited and the parent is an nginx master: a daemon's `init_by_lua` runs
    /// in the process that started nginx, which exits once it has forked the
    /// daemon, so only a worker knows the master that stays. Called at a slot
    /// claim (cold path).
    fn adopt_parent_as_master(&self) {
        // Relaxed: as in record_master.
        let recorded = self.header().master.load(Ordering::Relaxed);
        if recorded != 0 && owner_alive(recorded) {
            return;
        }
        // SAFETY: getppid has no preconditions.
        let ppid = unsafe { libc::getppid() };
        // nginx titles its master "nginx: master process <command line>".
        let title = std::fs::read(format!("/proc/{ppid}/cmdline")).unwrap_or_default();
        if ppid <= 1 || !title.starts_with(b"nginx: master process") {
            return;
        }
        let word = owner_word(ppid);
        // Relaxed: as in record_master. Only a dead record is replaced: of two
        // workers racing here, both store the same parent.
        let _ = self.header().master.compare_exchange(recorded, word, Ordering::Relaxed, Ordering::Relaxed);
    }
}

impl Region {
    /// The slot this process writes, claiming one on first use.
    ///
    /// A process first adopts the slot of a dead process (its counts stay and
    /// grow from there), then takes a never-used one. Ownership changes only by
    /// compare-and-swap of the whole owner word, so two processes never share a
    /// slot, even when they have the same nginx worker id.
    pub fn claim_slot(&self) -> Result<u32, Error> {
        let pid = std::process::id() as u64;
        let mine = self.my_slot.load(Ordering::Relaxed);
        if mine != 0 && mine >> 32 == pid {
            return Ok((mine & 0xffff_ffff) as u32);
        }
        // Nothing of the file is touched before it is known to be whole.
        self.check_mapped()?;
        let me = my_owner_word();
        let n = self.params.max_slots;
        let take = |i: u32, old: u64| -> Result<bool, Error> {
            // Reserve the slot's cells before it can be ours: every update writes them.
            self.reserve_slot(i)?;
            // AcqRel: Acquire so the previous owner's cell stores happen-before our
            // own read-modify-writes of them; Release publishes the claim.
            let ok = self.slot(i).owner.compare_exchange(old, me, Ordering::AcqRel, Ordering::Relaxed).is_ok();
            if ok {
                self.slot(i).claims.fetch_add(1, Ordering::Relaxed);
                self.my_slot.store((pid << 32) | i as u64, Ordering::Relaxed);
                self.adopt_parent_as_master();
            }
            Ok(ok)
        };
        for i in 1..n {
            let o = self.slot(i).owner.load(Ordering::Acquire);
            if o != 0 && o != me && !owner_alive(o) && take(i, o)? {
                return Ok(i);
            }
        }
        for i in 1..n {
            if self.slot(i).owner.load(Ordering::Relaxed) == 0 && take(i, 0)? {
                return Ok(i);
            }
        }
        Err(Error::NoSlot(format!("all {} worker slots belong to live processes; raise max_slots", n - 1)))
    }

    /// Slots by state: (live, dead, never used), slot 0 excluded.
    pub fn slot_stats(&self) -> (u32, u32, u32) {
        let (mut live, mut dead, mut free) = (0, 0, 0);
        for i in 1..self.params.max_slots {
            match self.slot(i).owner.load(Ordering::Relaxed) {
                0 => free += 1,
                o if owner_alive(o) => live += 1,
                _ => dead += 1,
            }
        }
        (live, dead, free)
    }

    fn alloc_arena(&self, len: usize, align: u32) -> Option<u32> {
        let len = u64::try_from(len).ok()?;
        let limit = self.params.arena_bytes;
        let mut start = 0;
        // Relaxed: hands out disjoint ranges only (see bump_u32).
        self.header()
            .arena_used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                start = v.div_ceil(align as u64) * align as u64;
                Some(start + len).filter(|&e| e <= limit)
            })
            .ok()?;
        Some(start as u32)
    }

    /// Copies `parts` one after another into fresh arena space.
    fn arena_put(&self, parts: &[&[u8]], align: u32) -> Option<u32> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let off = self.alloc_arena(len, align)?;
        let mut at = off;
        for p in parts {
            // SAFETY: `off..off+len` was allocated to us just above and lies within
            // the arena; nobody reads it before we publish.
            unsafe { std::ptr::copy_nonoverlapping(p.as_ptr(), self.arena_mut(at), p.len()) };
            at += p.len() as u32;
        }
        Some(off)
    }

    fn fam_name(&self, f: &Family) -> &[u8] {
        let rec = FamilyRec::read(f);
        self.arena(rec.name_off, rec.name_len).unwrap_or(b"")
    }

    /// Label names of a family (from the arena; bounds-checked, not validated:
    /// see [`Region::family_view`]).
    pub fn fam_labels(&self, f: &Family) -> Vec<&[u8]> {
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
    pub fn fam_bounds(&self, f: &Family) -> &[f64] {
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

    pub fn fam_help(&self, f: &Family) -> &[u8] {
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
        let bounds = validate_def(def, self.params.max_label_bytes)?;
        let h = self.header();
        let mut hs = Hasher::new(h.hash_seed);
        hs.write(def.name);
        let hash = hs.finish();
        let mut built: Option<u32> = None;
        let mut pos = hash as u32;
        for _ in 0..self.off.family_index_cap {
            let slot = self.family_index(pos);
            let v = slot.load(Ordering::Acquire);
            if v != 0 && !self.family_entry_ok(pos, v) {
                pos = pos.wrapping_add(1);
                continue;
            }
            if v == 0 {
                let id = match built {
                    Some(id) => id,
                    None => {
                        self.check_generated_names(def)?;
                        let id = self.build_family(def, &bounds, hash as u32)?;
                        built = Some(id);
                        id
                    }
                };
                // Release: the family's fields and arena bytes happen-before any
                // process that finds it through this position (Acquire above).
                match slot.compare_exchange(0, id + 1, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => {
                        self.family(id).state.store(STATE_LIVE, Ordering::Release);
                        self.remember_def(id, def.kind, &bounds);
                        return Ok(id);
                    }
                    Err(other) => {
                        if !self.family_entry_ok(pos, other) {
                            pos = pos.wrapping_add(1);
                            continue;
                        }
                        if let Some(found) = self.family_matches(other, def, &bounds, hash as u32)? {
                            self.family(id).state.store(STATE_ORPHAN, Ordering::Release);
                            self.remember_def(found, def.kind, &bounds);
                            return Ok(found);
                        }
                    }
                }
            } else if let Some(old) = self.differing_family(v, def, &bounds, hash as u32, replace) {
                if let Some(id) = self.replace_family(slot, old, def, &bounds, hash as u32, &mut built)? {
                    return Ok(id);
                }
                // Another process replaced it first: look at this position again.
                continue;
            } else if let Some(found) = self.family_matches(v, def, &bounds, hash as u32)? {
                if let Some(id) = built {
                    self.family(id).state.store(STATE_ORPHAN, Ordering::Release);
                }
                self.remember_def(found, def.kind, &bounds);
                return Ok(found);
            }
            pos = pos.wrapping_add(1);
        }
        // An index has twice the entries of the table it indexes: with no free
        // entry, the file is corrupt, whatever its counts say.
        let used = self.header().families_used.load(Ordering::Relaxed);
        Err(self.corrupt(
            CORRUPT_INDEX,
            FAMILY_INDEX_TAG | INDEX_FULL_TAG,
            &format!(
                "the family index ({} entries) has no free entry, yet {used} families are used (at most {})",
                self.off.family_index_cap, self.params.max_families
            ),
        ))
    }

    /// Whether family index entry `v` (at `pos`) names a family id handed out;
    /// reports it as corrupt if not.
    fn family_entry_ok(&self, pos: u32, v: u32) -> bool {
        let used = &self.header().families_used;
        self.index_entry_ok(
            "family",
            used,
            self.params.max_families,
            self.off.family_index_cap,
            FAMILY_INDEX_TAG,
            pos,
            v,
        )
    }

    /// The same for series index entries.
    fn series_entry_ok(&self, pos: u32, v: u32) -> bool {
        let used = &self.header().series_used;
        self.index_entry_ok("series", used, self.params.max_series, self.off.series_index_cap, 0, pos, v)
    }

    #[allow(clippy::too_many_arguments)]
    fn index_entry_ok(&self, what: &str, used: &AtomicU32, max: u32, cap: u32, tag: u32, pos: u32, v: u32) -> bool {
        // Loaded after the entry (Acquire): an id was handed out before its
        // entry was published, so a sound entry is always below this count.
        let used = used.load(Ordering::Relaxed).min(max);
        if v - 1 < used {
            return true;
        }
        let pos = pos & (cap - 1);
        let msg = format!("{what} index entry {pos} names {what} {}, but only {used} are used", v - 1);
        let _ = self.corrupt(CORRUPT_INDEX, tag | pos, &msg);
        false
    }

    /// The series index has no free entry: only a corrupt file can say so.
    fn series_index_corrupt(&self) -> Error {
        let used = self.header().series_used.load(Ordering::Relaxed);
        self.corrupt(
            CORRUPT_INDEX,
            INDEX_FULL_TAG,
            &format!(
                "the series index ({} entries) has no free entry, yet {used} series are used (at most {})",
                self.off.series_index_cap, self.params.max_series
            ),
        )
    }

    /// Whether `f` has the kind, label names and bucket bounds of `def`.
    fn same_shape(&self, f: &Family, def: &FamilyDef, bounds: &[f64]) -> bool {
        let labels = self.fam_labels(f);
        f.kind == def.kind
            && labels.len() == def.labels.len()
            && labels.iter().zip(def.labels).all(|(a, b)| a == b)
            && self.fam_bounds(f).iter().map(|b| b.to_bits()).eq(bounds.iter().map(|b| b.to_bits()))
    }

    /// The id behind index value `v` if it is a family named like `def` that
    /// `def` replaces: its shape differs, and either `replace` was asked for or
    /// the current configuration has not defined it (it is left from before).
    fn differing_family(&self, v: u32, def: &FamilyDef, bounds: &[f64], hash: u32, replace: bool) -> Option<u32> {
        let id = v - 1;
        if id >= self.params.max_families {
            return None;
        }
        let f = self.family(id);
        if f.hash != hash || self.fam_name(f) != def.name || self.same_shape(f, def, bounds) {
            return None;
        }
        (replace || !self.family_current(f)).then_some(id)
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

    /// If index value `v` holds a family named like `def`: `Ok(Some(id))` when
    /// the definitions agree, an error naming both when they do not.
    fn family_matches(&self, v: u32, def: &FamilyDef, bounds: &[f64], hash: u32) -> Result<Option<u32>, Error> {
        let id = v - 1;
        if id >= self.params.max_families {
            return Ok(None);
        }
        let f = self.family(id);
        let rec = FamilyRec::read(f);
        if rec.hash != hash || self.fam_name(f) != def.name {
            return Ok(None);
        }
        if !self.same_shape(f, def, bounds) {
            let labels = self.fam_labels(f);
            return Err(Error::Conflict(format!(
                "metric \"{}\" is already defined as {}; this definition is {}",
                show(def.name),
                self.describe(rec.kind, &labels, self.fam_bounds(f)),
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
        if self.fam_help(f) != def.help {
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
        let hash = hs.finish();
        let mut pos = hash as u32;
        for _ in 0..self.off.family_index_cap {
            let v = self.family_index(pos).load(Ordering::Acquire);
            if v == 0 {
                return None;
            }
            let id = v - 1;
            if self.family_entry_ok(pos, v) {
                let f = self.family(id);
                if FamilyRec::read(f).hash == hash as u32 && self.fam_name(f) == name {
                    return Some(id);
                }
            }
            pos = pos.wrapping_add(1);
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
            if !self.family_visible(f) || self.fam_name(f) == def.name {
                continue;
            }
            let theirs = exposed_names(self.fam_name(f), FamilyRec::read(f).kind);
            if let Some(clash) = mine.iter().find(|n| theirs.contains(n)) {
                return Err(Error::Conflict(format!(
                    "bad argument \"name\": {} \"{}\" collides with {} \"{}\": both would expose \"{}\"",
                    kind_name(def.kind),
                    show(def.name),
                    kind_name(FamilyRec::read(f).kind),
                    show(self.fam_name(f)),
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
        let ncells = match def.kind {
            KIND_COUNTER => 1,
            KIND_GAUGE => GAUGE_CELLS,
            _ => bounds.len() as u32 + 2,
        };
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
    fn writable_family(&self, fam: u32) -> Result<&Family, Error> {
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

    fn series_hash(&self, fam: u32, values: &[&[u8]]) -> u32 {
        let mut hs = Hasher::new(self.header().hash_seed);
        hs.write_u32(fam);
        for v in values {
            hs.write_u32(v.len() as u32);
            hs.write(v);
        }
        hs.finish() as u32
    }

    /// Family `fam`, live, with a sound record (see [`Region::family_check`]).
    fn usable_family(&self, fam: u32) -> Result<(&Family, FamilyRec), Error> {
        let f = self.live_family(fam)?;
        Ok((f, self.family_check(fam)?))
    }

    fn check_values(&self, rec: &FamilyRec, values: &[&[u8]]) -> Result<(), Error> {
        if values.len() != rec.nlabels as usize {
            return Err(Error::LabelCount(format!("expected {} label values, got {}", rec.nlabels, values.len())));
        }
        let max = self.params.max_label_bytes as usize;
        if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| v.len() > max) {
            return Err(Error::LabelTooLong(format!(
                "label value #{} is {} bytes; the limit (max_label_bytes) is {max}",
                i + 1,
                v.len()
            )));
        }
        Ok(())
    }

    /// Whether series `id` is `fam` with exactly these label values.
    fn series_is(&self, id: u32, fam: u32, hash: u32, values: &[&[u8]]) -> bool {
        if id >= self.params.max_series {
            return false;
        }
        let s = self.series_rec(id);
        if s.hash != hash || s.family != fam {
            return false;
        }
        let Some(mut key) = self.arena(s.key_off, s.key_len) else { return false };
        for v in values {
            if key.len() < 4 {
                return false;
            }
            let len = u32::from_le_bytes(key[..4].try_into().unwrap()) as usize;
            if len != v.len() || key.len() < 4 + len || &key[4..4 + len] != *v {
                return false;
            }
            key = &key[4 + len..];
        }
        key.is_empty()
    }

    /// Finds the live series `fam{values}`; its index position, id and cell.
    ///
    /// The cell is as the record says: check it before use ([`Region::checked_cell`]).
    fn find_series(&self, fam: u32, hash: u32, values: &[&[u8]]) -> Result<(u32, Option<(u32, u32)>), Error> {
        let mut pos = hash;
        for _ in 0..self.off.series_index_cap {
            let v = self.series_index(pos).load(Ordering::Acquire);
            if v == 0 {
                return Ok((pos, None));
            }
            let id = v - 1;
            if self.series_entry_ok(pos, v) && self.series_is(id, fam, hash, values) && usable(&self.series(id).state) {
                return Ok((pos, Some((id, self.series_rec(id).cell))));
            }
            pos = pos.wrapping_add(1);
        }
        Err(self.series_index_corrupt())
    }

    /// The first cell of series `fam{values}`, creating the series if needed.
    ///
    /// Label values that are not UTF-8 are stored with U+FFFD in place of each
    /// invalid sequence, as the exposition would show them: two values that would
    /// render alike are one series, never two identical-looking ones.
    ///
    /// The cell returned is proven in range for what the caller writes: the
    /// cells of the kind this process defined `fam` as, inside every slot.
    pub fn series_cell(&self, fam: u32, values: &[&[u8]]) -> Result<u32, Error> {
        // A family replaced by a newer definition stays writable for the workers
        // that cached it (old workers draining after a reload): unseen, never a crash.
        let f = self.writable_family(fam)?;
        let rec = self.family_check(fam)?;
        // The length limit applies to what the caller sent, before replacement.
        self.check_values(&rec, values)?;
        match sanitized(values) {
            Some(clean) => {
                let clean: Vec<&[u8]> = clean.iter().map(|v| v.as_slice()).collect();
                self.series_cell_checked(f, &rec, fam, &clean)
            }
            None => self.series_cell_checked(f, &rec, fam, values),
        }
    }

    fn series_cell_checked(&self, f: &Family, rec: &FamilyRec, fam: u32, values: &[&[u8]]) -> Result<u32, Error> {
        let hash = self.series_hash(fam, values);
        let pos = match self.find_series(fam, hash, values)? {
            (_, Some((id, cell))) => return self.checked_cell(rec, fam, id, cell),
            (pos, None) => pos,
        };
        let overflow_key = !values.is_empty() && values.iter().all(|v| *v == OVERFLOW_VALUE);
        if overflow_key {
            // The overflow series is outside the family's limit.
            return self.insert_series(f, rec, fam, hash, values, pos).map(|(cell, _)| cell);
        }
        // Take a place under the family's own limit first; give it back unless
        // this call is the one that creates the series.
        let limit = match f.max_series.load(Ordering::Relaxed) {
            0 => u32::MAX,
            n => n,
        };
        if bump_u32(&f.series_count, 1, limit).is_none() {
            if values.is_empty() {
                // Without labels this is the family's only series and there is
                // no overflow series besides it (asking for one would land here
                // again, recursing until the stack overflows). A full count
                // without the series is stale (its creator died after taking
                // the place) or racing (it is publishing it now).
                return self.insert_series(f, rec, fam, hash, values, pos).map(|(cell, _)| cell);
            }
            let overflow = vec![OVERFLOW_VALUE; values.len()];
            let cell = self.series_cell_checked(f, rec, fam, &overflow)?;
            f.overflowed.fetch_add(1, Ordering::Relaxed);
            return Ok(cell | SERIES_OVERFLOW);
        }
        let r = self.insert_series(f, rec, fam, hash, values, pos);
        if !matches!(r, Ok((_, true))) {
            f.series_count.fetch_sub(1, Ordering::Relaxed);
        }
        r.map(|(cell, _)| cell)
    }

    /// Series `id`'s cell as its record said, refused unless the cells its
    /// writers use fit in a slot after the reserved ones (only a corrupt file
    /// can say otherwise; Lua writes there unchecked).
    fn checked_cell(&self, rec: &FamilyRec, fam: u32, id: u32, cell: u32) -> Result<u32, Error> {
        let need = self.defined(fam).map_or(rec.kind_cells(), |(_, cells)| cells);
        if !cells_in_range(cell, need, self.params.max_cells) {
            return Err(self.corrupt(
                CORRUPT_SERIES,
                id,
                &format!(
                    "series record {id}: cells {cell}..{} are not within {RESERVED_CELLS}..{}",
                    cell as u64 + need as u64,
                    self.params.max_cells
                ),
            ));
        }
        Ok(cell)
    }

    /// Builds and publishes a new series at or after index position `pos`.
    /// Returns its cell and whether this call created it (false: another
    /// process published the same key first, and its cell is returned).
    fn insert_series(
        &self,
        f: &Family,
        rec: &FamilyRec,
        fam: u32,
        hash: u32,
        values: &[&[u8]],
        mut pos: u32,
    ) -> Result<(u32, bool), Error> {
        let (id, cell) = match self.build_series(rec, fam, hash, values) {
            Ok(built) => built,
            Err(e) => {
                f.dropped.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        let s = self.series(id);
        let theirs = |oid: u32| -> Result<(u32, bool), Error> {
            s.state.store(STATE_ORPHAN, Ordering::Release);
            Ok((self.checked_cell(rec, fam, oid, self.series_rec(oid).cell)?, false))
        };
        // Every position is looked at most once in all: a corrupt index with
        // no free entry ends the probe instead of looping forever.
        let mut budget = self.off.series_index_cap;
        while budget > 0 {
            budget -= 1;
            let slot = self.series_index(pos);
            // Release: the entry and its key bytes happen-before every lookup that
            // reaches it through this position (their Acquire load).
            match slot.compare_exchange(0, id + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    // Release: exposition takes LIVE entries (Acquire) as complete.
                    let _ = s.state.compare_exchange(STATE_WRITING, STATE_LIVE, Ordering::Release, Ordering::Relaxed);
                    // Our own `cell`, not the record's (which the file may have changed since).
                    return Ok((cell, true));
                }
                Err(other) => {
                    let oid = other - 1;
                    if self.series_entry_ok(pos, other)
                        && self.series_is(oid, fam, hash, values)
                        && usable(&self.series(oid).state)
                    {
                        return theirs(oid);
                    }
                }
            }
            // Occupied by another key (or a deleted twin): probe on to the next free entry.
            while budget > 0 {
                budget -= 1;
                pos = pos.wrapping_add(1);
                let v = self.series_index(pos).load(Ordering::Acquire);
                if v == 0 {
                    budget += 1; // looked at again by the CAS above
                    break;
                }
                if self.series_entry_ok(pos, v)
                    && self.series_is(v - 1, fam, hash, values)
                    && usable(&self.series(v - 1).state)
                {
                    return theirs(v - 1);
                }
            }
        }
        s.state.store(STATE_ORPHAN, Ordering::Release);
        Err(self.series_index_corrupt())
    }

    /// Claims, writes and returns a new series record `(id, cell)`, not yet published.
    fn build_series(&self, rec: &FamilyRec, fam: u32, hash: u32, values: &[&[u8]]) -> Result<(u32, u32), Error> {
        let h = self.header();
        // Callers write the cells of the kind they defined from the returned
        // cell on; `rec` was checked against that (family_check).
        let ncells = self.defined(fam).map_or(rec.kind_cells(), |(_, cells)| cells);
        // Check every capacity before taking anything: a refused series then
        // uses up nothing (a race between two creators near the limit can
        // still leave a few unused cells or bytes behind).
        let key_len: u64 = values.iter().map(|v| v.len() as u64 + 4).sum();
        if h.series_used.load(Ordering::Relaxed) >= self.params.max_series {
            return Err(Error::Full(format!("all {} series are used; raise max_series", self.params.max_series)));
        }
        if h.cells_used.load(Ordering::Relaxed) as u64 + ncells as u64 > self.params.max_cells as u64 {
            return Err(Error::Full("all cells are used; raise max_cells".to_string()));
        }
        if h.arena_used.load(Ordering::Relaxed) + key_len + 4 > self.params.arena_bytes {
            return Err(Error::Full("the arena is full; raise arena_bytes".to_string()));
        }
        let id = bump_u32(&h.series_used, 1, self.params.max_series)
            .ok_or_else(|| Error::Full(format!("all {} series are used; raise max_series", self.params.max_series)))?;
        let s = self.series(id);
        // The record may hold anything (an unused record of a corrupt file):
        // WRITING first, so that no reader takes it for a published one.
        // Relaxed: lookups reach it only through the index CAS (Release); the
        // exposition loads the state with Acquire and skips WRITING.
        s.state.store(STATE_WRITING, Ordering::Relaxed);
        let fail = |msg: &str| {
            s.state.store(STATE_ORPHAN, Ordering::Release);
            Error::Full(msg.to_string())
        };
        let mut key = Vec::with_capacity(values.iter().map(|v| v.len() + 4).sum());
        for v in values {
            key.extend_from_slice(&(v.len() as u32).to_le_bytes());
            key.extend_from_slice(v);
        }
        let key_off = self.arena_put(&[&key], 4).ok_or_else(|| fail("the arena is full; raise arena_bytes"))?;
        let cell = bump_u32(&h.cells_used, ncells, self.params.max_cells)
            .ok_or_else(|| fail("all cells are used; raise max_cells"))?;
        // A corrupt `cells_used` (below the reserved cells) would hand out
        // cells that are not a series'.
        if !cells_in_range(cell, ncells, self.params.max_cells) {
            s.state.store(STATE_ORPHAN, Ordering::Release);
            return Err(self.corrupt(
                CORRUPT_HEADER,
                0,
                &format!("cells_used handed out cell {cell}, a reserved cell"),
            ));
        }
        let p = self.series_ptr(id);
        // SAFETY: `p` comes from the mapping's base (writable) and is in bounds;
        // series `id` is ours alone until published (bump_u32 handed it out);
        // the `s` reference is only used for `state`, an atomic field.
        unsafe {
            addr_of_mut!((*p).family).write(fam);
            addr_of_mut!((*p).key_off).write(key_off);
            addr_of_mut!((*p).key_len).write(key.len() as u32);
            addr_of_mut!((*p).cell).write(cell);
            addr_of_mut!((*p).hash).write(hash);
        }
        Ok((id, cell))
    }

    /// Deletes `fam{values}`; `Ok(false)` if it did not exist.
    pub fn delete_series(&self, fam: u32, values: &[&[u8]]) -> Result<bool, Error> {
        let (f, rec) = self.usable_family(fam)?;
        self.check_values(&rec, values)?;
        if let Some(clean) = sanitized(values) {
            let clean: Vec<&[u8]> = clean.iter().map(|v| v.as_slice()).collect();
            return self.delete_checked(f, fam, &clean);
        }
        self.delete_checked(f, fam, values)
    }

    fn delete_checked(&self, f: &Family, fam: u32, values: &[&[u8]]) -> Result<bool, Error> {
        let hash = self.series_hash(fam, values);
        let Some((id, _)) = self.find_series(fam, hash, values)?.1 else { return Ok(false) };
        let s = self.series(id);
        let gone = [STATE_LIVE, STATE_WRITING]
            .iter()
            .any(|&st| s.state.compare_exchange(st, STATE_DELETED, Ordering::AcqRel, Ordering::Relaxed).is_ok());
        let overflow_key = !values.is_empty() && values.iter().all(|v| *v == OVERFLOW_VALUE);
        if gone && !overflow_key {
            f.series_count.fetch_sub(1, Ordering::Relaxed);
        }
        // Release: a worker that sees the new generation and looks the series up
        // again sees it DELETED.
        f.gen.fetch_add(1, Ordering::Release);
        Ok(gone)
    }

    /// Deletes every series of `fam`; returns how many.
    pub fn reset_family(&self, fam: u32) -> Result<u32, Error> {
        let f = self.live_family(fam)?;
        let used = self.header().series_used.load(Ordering::Acquire).min(self.params.max_series);
        let mut n = 0;
        for id in 0..used {
            let s = self.series(id);
            if self.series_rec(id).family == fam
                && s.state.compare_exchange(STATE_LIVE, STATE_DELETED, Ordering::AcqRel, Ordering::Relaxed).is_ok()
            {
                n += 1;
                if !self.is_overflow_series(f, s) {
                    f.series_count.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        f.gen.fetch_add(1, Ordering::Release);
        Ok(n)
    }

    /// Whether `s` is its family's overflow series (every value `__overflow__`).
    pub fn is_overflow_series(&self, f: &Family, s: &Series) -> bool {
        let (f, s) = (FamilyRec::read(f), SeriesRec::read(s));
        if f.nlabels == 0 {
            return false;
        }
        let mut one = (OVERFLOW_VALUE.len() as u32).to_le_bytes().to_vec();
        one.extend_from_slice(OVERFLOW_VALUE);
        let key = self.arena(s.key_off, s.key_len).unwrap_or(b"");
        key.len() == one.len() * f.nlabels as usize && key.chunks(one.len()).all(|c| c == one)
    }

    /// Counts one hot-path error of `reason` for the calling process.
    ///
    /// An update dropped for want of a slot has no slot to be counted in: it is
    /// counted in the header (an atomic add, on this error path only).
    pub fn count_error(&self, reason: u32) {
        if reason as usize >= REASONS.len() {
            return;
        }
        if reason == REASON_NO_SLOT {
            self.header().no_slot_errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match self.claim_slot() {
            Ok(slot) => self.cell_add(slot, CELL_ERRORS + reason, 1.0),
            Err(_) => {
                self.header().no_slot_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Every name a family takes in either exposition format.
pub fn exposed_names(name: &[u8], kind: u32) -> Vec<Vec<u8>> {
    let mut v = vec![name.to_vec()];
    match kind {
        KIND_COUNTER => {
            let base = name.strip_suffix(b"_total").unwrap_or(name);
            v.push(base.to_vec());
            v.push([base, b"_total"].concat());
        }
        KIND_HISTOGRAM => {
            for s in [&b"_bucket"[..], b"_count", b"_sum"] {
                v.push([name, s].concat());
            }
        }
        _ => {}
    }
    v.dedup();
    v
}

/// Whether an entry reached through an index may be used, promoting it to
/// `LIVE` if its creator died between publishing it and marking it live: an
/// entry in an index is complete (its fields were written before the `Release`
/// that published it), so finishing the creator's last step is safe.
fn usable(state: &AtomicU32) -> bool {
    match state.load(Ordering::Acquire) {
        STATE_LIVE => true,
        STATE_WRITING => {
            // Release: publishes LIVE to the exposition like the creator would have.
            let r = state.compare_exchange(STATE_WRITING, STATE_LIVE, Ordering::AcqRel, Ordering::Acquire);
            matches!(r, Ok(_) | Err(STATE_LIVE))
        }
        _ => false,
    }
}

/// The values with invalid UTF-8 replaced, or `None` when all are valid already.
fn sanitized(values: &[&[u8]]) -> Option<Vec<Vec<u8>>> {
    if values.iter().all(|v| std::str::from_utf8(v).is_ok()) {
        return None;
    }
    Some(values.iter().map(|v| String::from_utf8_lossy(v).into_owned().into_bytes()).collect())
}

/// Validates a definition; returns the finite bucket bounds to store.
fn validate_def(def: &FamilyDef, max_label_bytes: u32) -> Result<Vec<f64>, Error> {
    let _ = max_label_bytes;
    let bad = |arg: &str, why: String| Err(Error::invalid(format!("bad argument \"{arg}\": {why}")));
    if !matches!(def.kind, KIND_COUNTER | KIND_GAUGE | KIND_HISTOGRAM) {
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

/// Adds `v` to a histogram series: one bucket cell and the sum cell.
///
/// Cell layout from `base`: `nbounds + 1` non-cumulative bucket counts (the
/// last is `+Inf`), then the sum.
///
/// # Safety
/// `cells` must be the calling process's own slot (single writer) and `base`
/// the first cell of a histogram series whose family has exactly `bounds`, so
/// that cells `base..base + bounds.len() + 2` belong to it.
#[inline]
pub unsafe fn observe(cells: *mut f64, base: u32, bounds: &[f64], v: f64) {
    // The bucket is the number of bounds below v (bounds increase strictly):
    // counted without branches, so random values cost no mispredictions, and
    // LLVM compares four bounds per instruction.
    // NaN (refused by the Lua module; possible from C) goes to +Inf.
    let i = if v.is_nan() { bounds.len() } else { bounds.iter().filter(|&&b| b < v).count() };
    let add = |idx: usize, d: f64| {
        // SAFETY: the caller passes its own slot and a series' base; the series
        // owns cells base..base+nbounds+2 (allocated with ncells = nbounds + 2).
        let a = unsafe { &*(cells.add(base as usize + idx) as *const AtomicU64) };
        // Single writer (the slot's owner): a relaxed load and store are exact, and
        // the 8-byte store is what concurrent readers see whole.
        a.store((f64::from_bits(a.load(Ordering::Relaxed)) + d).to_bits(), Ordering::Relaxed);
    };
    add(i, 1.0);
    add(bounds.len() + 1, v);
}
