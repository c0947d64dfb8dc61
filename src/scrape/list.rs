//! This process's scrape state of each region, kept across scrapes: its lists
//! of live series by family ([`Scan`]), its rendered label blocks, and the
//! name of its error counter. Owned here, by the scrape layer, and keyed by
//! [`Region::id`]; the state of a region no longer mapped is dropped.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use crate::layout::*;
use crate::region::{self, Region};

/// Rendered label blocks by series id: series are immutable once live and
/// ids are never reused, so a block rendered once serves every later scrape.
pub(crate) type Labels = Vec<Option<Box<[u8]>>>;

/// This process's scrape state of one region.
#[derive(Default)]
pub(crate) struct ScrapeState {
    pub(crate) scan: Mutex<Scan>,
    pub(crate) labels: Mutex<Labels>,
    /// Name of the error counter this process exposes (empty: none); see
    /// `set_error_metric`. Per process: workers inherit the master's.
    pub(crate) error_metric: Mutex<Vec<u8>>,
}

/// Every region's state, by region id.
static STATES: Mutex<Vec<(u64, Arc<ScrapeState>)>> = Mutex::new(Vec::new());

/// This process's scrape state of `r`, made on first use.
pub(crate) fn state(r: &Region) -> Arc<ScrapeState> {
    let mut states = STATES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, s)) = states.iter().find(|(id, _)| *id == r.id) {
        return s.clone();
    }
    // Regions forgotten since (tests and fuzzing open thousands) leave no state behind.
    states.retain(|(id, _)| region::is_open(*id));
    let s = Arc::new(ScrapeState::default());
    states.push((r.id, s.clone()));
    s
}

/// This process's list of live series by family, kept across scrapes so that
/// starting one reads only the series created since the last: the series
/// table is append-only, so ids below `upto` never need reading again.
#[derive(Default)]
pub(crate) struct Scan {
    /// Series ids below this have been looked at.
    upto: u32,
    /// Ids that were still being written when looked at.
    pending: Vec<u32>,
    /// Live series ids by family id, in the order they were found.
    pub(crate) by_family: Vec<Vec<u32>>,
    /// Each family's deletion generation when its list was last pruned.
    gens: Vec<u32>,
    /// Ids in all lists.
    pub(crate) listed: usize,
}

impl Scan {
    /// Brings the lists up to date with the region.
    pub(crate) fn update(&mut self, region: &Region) {
        let h = region.header();
        let nfam = h.families_used.load(Ordering::Acquire).min(region.params.max_families);
        // Acquire: every id below this count was allocated before; its state
        // (Acquire below) tells whether it is complete.
        let nser = h.series_used.load(Ordering::Acquire).min(region.params.max_series);
        if self.by_family.len() < nfam as usize {
            self.by_family.resize_with(nfam as usize, Vec::new);
            self.gens.resize(nfam as usize, 0);
        }
        let pending = std::mem::take(&mut self.pending);
        for id in pending.into_iter().chain(self.upto..nser) {
            match State::from_raw(region.series(id).state.load(Ordering::Acquire)) {
                Some(State::Writing) => self.pending.push(id),
                Some(State::Live) => {
                    // Listed by its family id; whether its cells fit that
                    // family is checked when it is rendered (the record may
                    // change in between).
                    let fam = region.series_rec(id).family;
                    if fam >= nfam {
                        let _ = region.corrupt(
                            CORRUPT_SERIES,
                            id,
                            &format!("series record {id} names family {fam}, but only {nfam} are used"),
                        );
                    } else if region.family(fam).state.load(Ordering::Acquire) == STATE_LIVE {
                        self.by_family[fam as usize].push(id);
                        self.listed += 1;
                    }
                }
                _ => {}
            }
        }
        self.upto = self.upto.max(nser);
        // A family whose generation moved had series deleted: prune its list
        // (only then, so a scrape does not reread every series).
        for fam in 0..nfam as usize {
            let gen = region.family(fam as u32).gen.load(Ordering::Acquire);
            if gen != self.gens[fam] {
                self.gens[fam] = gen;
                let list = &mut self.by_family[fam];
                let before = list.len();
                list.retain(|&id| region.series(id).state.load(Ordering::Acquire) == STATE_LIVE);
                self.listed -= before - list.len();
            }
        }
    }
}
