//! Worker slots: each writing process owns one slot of cells, claimed by a
//! compare-and-swap of its owner word, so two processes never share one (not
//! even an old and a new worker with the same nginx worker id during a
//! reload); a dead owner's slot is adopted with its counts.

use std::sync::atomic::Ordering;

use crate::cells;
use crate::error::Error;
use crate::layout::*;
use crate::owner::{is_nginx_master, my_owner_word, owner_alive, owner_word};
use crate::region::Region;

impl Region {
    /// Records this process's parent as the master when the recorded process
    /// is not a running nginx master and the parent is one: a daemon's
    /// `init_by_lua` runs in the process that launches nginx, which exits once it
    /// has forked the daemon (and may still be exiting when the first worker
    /// claims its slot), so only a worker knows the master that stays. Called at
    /// a slot claim (cold path).
    fn adopt_parent_as_master(&self) {
        // Relaxed: as in record_master.
        let recorded = self.header().master.load(Ordering::Relaxed);
        // SAFETY: getppid has no preconditions.
        let ppid = unsafe { libc::getppid() };
        if !is_nginx_master(ppid) {
            return;
        }
        let word = owner_word(ppid);
        if recorded == word || (owner_alive(recorded) && is_nginx_master((recorded & 0xffff_ffff) as i32)) {
            return;
        }
        // Relaxed: as in record_master. Only the record read above is replaced:
        // of two workers racing here, both store the same parent.
        let _ = self.header().master.compare_exchange(recorded, word, Ordering::Relaxed, Ordering::Relaxed);
    }

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

    /// The slot this process already owns, if any (never claims one: the
    /// master must not).
    pub(crate) fn own_slot(&self) -> Option<u32> {
        let mine = self.my_slot.load(Ordering::Relaxed);
        (mine != 0 && mine >> 32 == std::process::id() as u64).then_some((mine & 0xffff_ffff) as u32)
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
            Ok(slot) => cells::add(self, slot, CELL_ERRORS + reason, 1.0),
            Err(_) => {
                self.header().no_slot_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
