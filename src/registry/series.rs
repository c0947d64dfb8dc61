//! Series: finding or creating `family{values}` (under the family's own
//! cardinality limit, else its overflow series), deleting, resetting.

use std::ptr::addr_of_mut;
use std::sync::atomic::Ordering;

use super::key;
use super::probe::{Index, Look, Probe};
use super::{bump_u32, usable};
use crate::error::Error;
use crate::layout::*;
use crate::layout::{Family, Series};
use crate::records::{cells_in_range, FamilyRec, SeriesRec};
use crate::region::Region;

impl Region {
    fn series_hash(&self, fam: u32, values: &[&[u8]]) -> u32 {
        key::hash(self.header().hash_seed, fam, values)
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
        self.arena(s.key_off, s.key_len).is_some_and(|k| key::is(k, values))
    }

    /// Finds the live series `fam{values}`; its index position, id and cell.
    ///
    /// The cell is as the record says: check it before use ([`Region::checked_cell`]).
    fn find_series(&self, fam: u32, hash: u32, values: &[&[u8]]) -> Result<(u32, Option<(u32, u32)>), Error> {
        let mut probe = Probe::new(self, Index::Series, hash);
        while let Some(pos) = probe.next_pos() {
            match self.look(Index::Series, pos).1 {
                Look::Free => return Ok((pos, None)),
                Look::Taken(id) if self.series_is(id, fam, hash, values) && usable(&self.series(id).state) => {
                    return Ok((pos, Some((id, self.series_rec(id).cell))));
                }
                _ => {}
            }
        }
        Err(self.index_full(Index::Series))
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
        if key::values_are_overflow(values) {
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
        pos: u32,
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
        // From the free position the lookup found: the first free one then
        // takes the series, unless the same key was published meanwhile.
        let mut probe = Probe::new(self, Index::Series, pos);
        while let Some(pos) = probe.next_pos() {
            let (entry, look) = self.look(Index::Series, pos);
            let oid = match look {
                // Release: the entry and its key bytes happen-before every lookup
                // that reaches it through this position (their Acquire load).
                Look::Free => match entry.compare_exchange(0, id + 1, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => {
                        // Release: exposition takes LIVE entries (Acquire) as complete.
                        let _ =
                            s.state.compare_exchange(STATE_WRITING, STATE_LIVE, Ordering::Release, Ordering::Relaxed);
                        // Our own `cell`, not the record's (which the file may have changed since).
                        return Ok((cell, true));
                    }
                    Err(other) => match self.classify(Index::Series, pos, other) {
                        Look::Taken(oid) => oid,
                        _ => continue,
                    },
                },
                Look::Taken(oid) => oid,
                Look::Corrupt => continue,
            };
            // Occupied by another key (or a deleted twin): probe on to the next free entry.
            if self.series_is(oid, fam, hash, values) && usable(&self.series(oid).state) {
                return theirs(oid);
            }
        }
        s.state.store(STATE_ORPHAN, Ordering::Release);
        Err(self.index_full(Index::Series))
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
        let key_len = key::encoded_len(values);
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
        let key = key::encode(values);
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
        if gone && !key::values_are_overflow(values) {
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
        key::is_overflow(self.arena(s.key_off, s.key_len).unwrap_or(b""), f.nlabels)
    }
}

/// The values with invalid UTF-8 replaced, or `None` when all are valid already.
fn sanitized(values: &[&[u8]]) -> Option<Vec<Vec<u8>>> {
    if values.iter().all(|v| std::str::from_utf8(v).is_ok()) {
        return None;
    }
    Some(values.iter().map(|v| String::from_utf8_lossy(v).into_owned().into_bytes()).collect())
}
