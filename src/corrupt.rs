//! Reporting corrupt records: a record that fails a check (see `records`) is
//! skipped (an update gets an error naming the file and the fix), counted in
//! this process's slot (`shmetrics_region_corrupt_total{what}`), and described
//! in a message the Lua module logs ([`Region::take_notice`]: the first record
//! found, then at most one message every [`NOTICE_INTERVAL`]).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::cells;
use crate::error::Error;
use crate::layout::*;
use crate::region::Region;

/// Least time between two corruption messages of one process.
pub const NOTICE_INTERVAL: Duration = Duration::from_secs(10);
/// Distinct corrupt records one process remembers (and counts); more are
/// skipped all the same, but neither counted nor described.
const MAX_FOUND: usize = 65_536;

impl Region {
    /// Reports a corrupt record and returns the error an update gets for it:
    /// counted once per record and process (in this process's slot, or the
    /// header if it has none), and described for the log.
    pub fn corrupt(&self, what: u32, id: u32, detail: &str) -> Error {
        let msg = format!(
            "the region file \"{}\" is corrupt: {detail}; remove the file or set reset = true, then restart nginx",
            self.path.display()
        );
        let mut found = self.corrupt.lock().unwrap_or_else(|e| e.into_inner());
        if found.seen.len() < MAX_FOUND && found.seen.insert((what, id)) {
            match self.own_slot() {
                // CELL_CORRUPT + what < RESERVED_CELLS < max_cells (layout asserts).
                Some(slot) => cells::add(self, slot, CELL_CORRUPT + what.min(CORRUPT_WHAT.len() as u32 - 1), 1.0),
                // Relaxed: a statistic; nothing is ordered after it.
                None => {
                    self.header().corrupt_unslotted.fetch_add(1, Ordering::Relaxed);
                }
            }
            found.pending += 1;
            if found.message.is_none() {
                found.message = Some(msg.clone());
            }
        }
        Error::Internal(msg)
    }

    /// A message to log about corrupt records found since the last one, at
    /// most one per [`NOTICE_INTERVAL`].
    pub fn take_notice(&self) -> Option<String> {
        let mut found = self.corrupt.lock().unwrap_or_else(|e| e.into_inner());
        found.message.as_ref()?;
        let now = Instant::now();
        if found.last_notice.is_some_and(|t| now.duration_since(t) < NOTICE_INTERVAL) {
            return None;
        }
        found.last_notice = Some(now);
        let mut msg = found.message.take()?;
        let more = std::mem::take(&mut found.pending).saturating_sub(1);
        if more > 0 {
            msg.push_str(&format!(
                " ({more} more corrupt records found and skipped; see shmetrics_region_corrupt_total)"
            ));
        }
        Some(msg)
    }

    /// Corrupt records counted so far, by `what` (all slots and the header).
    pub fn corrupt_counts(&self, slots: &[u32]) -> [f64; CORRUPT_WHAT.len()] {
        let mut v = [0.0; CORRUPT_WHAT.len()];
        for (i, n) in v.iter_mut().enumerate() {
            *n = slots.iter().map(|&s| self.cell(s, CELL_CORRUPT + i as u32)).sum();
        }
        v[0] += self.header().corrupt_unslotted.load(Ordering::Relaxed) as f64;
        v
    }
}
