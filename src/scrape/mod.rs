//! Turning the store into an exposition, a bounded piece at a time: one walk
//! over the series ([`Render`]) and one encoder per output format
//! (`Encoder`: `text.rs` for Prometheus text 0.0.4 and OpenMetrics 1.0.0,
//! `json.rs` for the JSON view).
//!
//! [`Render::new`] takes the list of live series (grouped by family, families in
//! definition order) once; [`Render::next_chunk`] then renders until the output
//! reaches a size hint, so the Lua side can hand each piece to nginx and let the
//! event loop serve other requests in between. Series created after `new` appear
//! in the next scrape.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::cells;
use crate::error::Error;
use crate::expo::{self, Format};
use crate::layout::*;
use crate::records::cells_in_range;
use crate::region::Region;
use crate::registry::{exposed_names, show, FamilyView};

mod json;
mod list;
mod self_metrics;
mod text;

use list::{state, Labels};

/// One series' value, read once per scrape: every number an encoder writes
/// for it is derived from these loads (a histogram's `+Inf` bucket and
/// `_count` are the same number, cumulative buckets cannot decrease).
pub(crate) enum Value<'a> {
    /// A counter's sum over the slots, or a gauge's value.
    Scalar(f64),
    /// A histogram: per bucket (the finite bounds, then `+Inf`) the count of
    /// its own observations (not cumulative), then the sum.
    Histogram { bounds: &'a [f64], cells: &'a [f64] },
}

/// What an encoder may use besides the output: the region, the slots that
/// are summed, this process's rendered label blocks, and corruption reports.
pub(crate) struct Ctx<'a> {
    pub(crate) region: &'static Region,
    pub(crate) slots: &'a [u32],
    pub(crate) filter: &'a Filter,
    /// Rendered label blocks by series id (the text formats').
    pub(crate) labels: &'a mut Labels,
}

impl Ctx<'_> {
    /// Series `id`'s label values, decoded into `out` (which owns a copy of
    /// the key); false, with the series reported as corrupt, when its key
    /// does not decode into `nlabels` values.
    pub(crate) fn decode<'k>(&self, id: u32, key: &'k [u8], nlabels: usize, out: &mut Vec<&'k [u8]>) -> bool {
        if crate::registry::decode_key(key, out) && out.len() == nlabels {
            return true;
        }
        let _ = self.region.corrupt(CORRUPT_SERIES, id, &format!("series record {id}: its label values do not decode"));
        false
    }
}

/// An output format: called by the walk for each part of the exposition.
pub(crate) trait Encoder: Send {
    /// Before the first family.
    fn begin(&mut self, out: &mut Vec<u8>);
    /// A family's start; `index` counts the families written before it.
    fn family_begin(&mut self, out: &mut Vec<u8>, family: &FamilyView, help: &[u8], index: usize);
    /// One live series of the family begun last.
    fn series(&mut self, out: &mut Vec<u8>, ctx: &mut Ctx, family: &FamilyView, id: u32, value: &Value);
    /// The end of the family begun last.
    fn family_end(&mut self, out: &mut Vec<u8>);
    /// After the last family.
    fn end(&mut self, out: &mut Vec<u8>, ctx: &mut Ctx);
    /// Whether [`end`](Self::end) is a suffix written right after the last
    /// family whatever the chunk's size (the JSON view's closing brackets), or
    /// a section of its own written into a chunk with room (the text formats'
    /// self-metrics).
    fn end_is_suffix(&self) -> bool;
    /// Pages the series (the JSON view only; `started`: a chunk was rendered).
    fn set_page(&mut self, offset: u64, limit: u64, needle: &[u8], started: bool) -> Result<(), String>;
}

/// Which families a scrape asked for: all, or those named (by their defined
/// name, or for counters also without `_total`).
pub struct Filter(Option<Vec<Vec<u8>>>);

impl Filter {
    pub fn all() -> Filter {
        Filter(None)
    }

    pub fn names(names: Vec<Vec<u8>>) -> Filter {
        Filter(Some(names))
    }

    pub fn wants(&self, name: &[u8], kind: Kind) -> bool {
        let Some(names) = &self.0 else { return true };
        let base = if kind == Kind::Counter { name.strip_suffix(b"_total") } else { None };
        names.iter().any(|n| n == name || Some(n.as_slice()) == base)
    }
}

/// Exposes an unlabelled counter named `name` (nginx-lua-prometheus's
/// `nginx_metric_errors_total`) after the self-metrics: every hot-path error
/// of every reason, plus the `log_error` calls counted in `CELL_LOG_ERRORS`.
/// It takes no series. An empty name removes it. This process's setting:
/// workers forked afterwards inherit it.
pub fn set_error_metric(r: &Region, name: &[u8]) -> Result<(), Error> {
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
    *state(r).error_metric.lock().unwrap_or_else(|e| e.into_inner()) = name.to_vec();
    Ok(())
}

/// One exposition being rendered: the walk over the families and series
/// listed when it was made, handing each to its format's encoder.
pub struct Render {
    region: &'static Region,
    encoder: Box<dyn Encoder>,
    /// This process's scrape state of the region (its label blocks).
    state: Arc<list::ScrapeState>,
    /// Live series ids, grouped by family.
    order: Vec<u32>,
    /// `(family id, start, end)` ranges of `order`, in family id order.
    groups: Vec<(u32, usize, usize)>,
    /// Each group's family, checked and copied once per scrape.
    views: Vec<FamilyView>,
    /// Slots that were ever claimed (dead owners' counts still count).
    slots: Vec<u32>,
    filter: Filter,
    group: usize,
    pos: usize,
    started: bool,
    done: bool,
    pub buf: Vec<u8>,
    /// A histogram's cells, loaded once per series.
    cells: Vec<f64>,
}

impl Render {
    pub fn new(region: &'static Region, format: Format) -> Render {
        Render::with_filter(region, format, Filter::all())
    }

    /// A renderer of the JSON view (see `json.rs` for its shape).
    pub fn json(region: &'static Region, filter: Filter) -> Render {
        Render::with_encoder(region, Box::new(json::JsonView::default()), filter)
    }

    pub fn with_filter(region: &'static Region, format: Format, filter: Filter) -> Render {
        Render::with_encoder(region, Box::new(text::Exposition::new(format)), filter)
    }

    fn with_encoder(region: &'static Region, encoder: Box<dyn Encoder>, filter: Filter) -> Render {
        let h = region.header();
        // Acquire: every family id below this count was allocated before.
        let nfam = h.families_used.load(Ordering::Acquire).min(region.params.max_families);
        let state = state(region);
        let mut scan = state.scan.lock().unwrap_or_else(|e| e.into_inner());
        scan.update(region);
        // Only the ids are copied here (a memcpy per family): the series table
        // itself was read once, when each series was new.
        let mut groups = Vec::new();
        let mut views = Vec::new();
        let mut exposed = std::collections::HashSet::new();
        let mut order = Vec::with_capacity(scan.listed);
        for fam in 0..nfam.min(scan.by_family.len() as u32) {
            let list = &scan.by_family[fam as usize];
            // Listed series stay listed when their family is replaced or left out
            // of the configuration: the family decides here, every scrape.
            if list.is_empty() || !region.family_visible(region.family(fam)) {
                continue;
            }
            // Checked whole here, and only this copy is used while rendering:
            // a record or name changed by a corrupting writer during the scrape
            // cannot send a read out of bounds or an invalid name to Prometheus
            // (which would drop the whole scrape). A corrupt family is skipped
            // and counted.
            let Ok(view) = region.family_view(fam) else { continue };
            if !filter.wants(&view.name, view.kind) {
                continue;
            }
            // Two families exposing one name (a name changed in the file)
            // would make Prometheus drop the scrape: the later one is skipped.
            let names = exposed_names(&view.name, view.kind as u32);
            if let Some(clash) = names.iter().find(|n| exposed.contains(*n)) {
                let _ = region.corrupt(
                    CORRUPT_FAMILY,
                    fam,
                    &format!(
                        "family record {fam}: another family already exposes \"{}\"",
                        String::from_utf8_lossy(clash)
                    ),
                );
                continue;
            }
            exposed.extend(names);
            groups.push((fam, order.len(), order.len() + list.len()));
            views.push(view);
            order.extend_from_slice(list);
        }
        drop(scan);
        let slots =
            (1..region.params.max_slots).filter(|&i| region.slot(i).owner.load(Ordering::Acquire) != 0).collect();
        Render {
            region,
            encoder,
            state,
            order,
            groups,
            views,
            slots,
            filter,
            group: 0,
            pos: 0,
            started: false,
            done: false,
            buf: Vec::with_capacity(64 * 1024),
            cells: Vec::with_capacity(MAX_BUCKETS + 2),
        }
    }

    /// Pages a JSON render: each family object then also carries
    /// `"series_count"`, the number of its series the needle selects. Only
    /// before the first chunk of a JSON render.
    pub fn set_page(&mut self, offset: u64, limit: u64, needle: &[u8]) -> Result<(), String> {
        self.encoder.set_page(offset, limit, needle, self.started)
    }

    /// Series left to render (for tests and progress).
    pub fn remaining(&self) -> usize {
        self.order.len() - self.pos.min(self.order.len())
    }

    /// Renders into `buf` (cleared first) until it holds at least `hint` bytes or
    /// everything is rendered. Returns false when there was nothing left.
    pub fn next_chunk(&mut self, hint: usize) -> bool {
        self.buf.clear();
        if self.done {
            return false;
        }
        // A prefix alone can reach a small hint: render one piece after it
        // anyway, or the next call would write it again (only `walk` moves
        // group/pos), forever with a constant small hint.
        let mut first = false;
        if !self.started {
            self.started = true;
            self.encoder.begin(&mut self.buf);
            first = !self.buf.is_empty();
        }
        while (first || self.buf.len() < hint) && self.group < self.groups.len() {
            first = false;
            self.walk(hint);
        }
        if self.group >= self.groups.len() && (self.encoder.end_is_suffix() || self.buf.len() < hint) {
            let mut labels = self.state.labels.lock().unwrap_or_else(|e| e.into_inner());
            let mut ctx = Ctx { region: self.region, slots: &self.slots, filter: &self.filter, labels: &mut labels };
            self.encoder.end(&mut self.buf, &mut ctx);
            self.done = true;
        }
        !self.buf.is_empty()
    }

    /// Renders the current family's series until the output reaches `hint`
    /// (at least one series: otherwise a family header that alone reaches
    /// the hint is written again on every call and never followed).
    fn walk(&mut self, hint: usize) {
        let r = self.region;
        let (fam, start, end) = self.groups[self.group];
        let view = std::mem::replace(&mut self.views[self.group], FamilyView::empty());
        if self.pos <= start {
            self.pos = start;
            self.encoder.family_begin(&mut self.buf, &view, r.family_help(r.family(fam)), self.group);
        }
        let mut labels = self.state.labels.lock().unwrap_or_else(|e| e.into_inner());
        let mut progressed = false;
        while self.pos < end && (!progressed || self.buf.len() < hint) {
            progressed = true;
            let id = self.order[self.pos];
            self.pos += 1;
            let Some(cell) = self.live_cell(&view, id) else { continue };
            // live_cell proved cell..cell + view.cells in range: the cells of
            // view.kind (bounds.len() + 2 for a histogram).
            let value = match view.kind {
                // SAFETY: cell < cell + 1 <= max_cells (above); slots below max_slots.
                Kind::Counter => Value::Scalar(unsafe { cells::sum(r, &self.slots, cell) }),
                // SAFETY: cell + GAUGE_CELLS <= max_cells (above).
                Kind::Gauge => Value::Scalar(unsafe { cells::gauge_value(r, &self.slots, cell) }),
                Kind::Histogram => {
                    self.cells.clear();
                    for i in 0..view.bounds.len() as u32 + 2 {
                        // SAFETY: cell + bounds.len() + 2 <= max_cells (above).
                        self.cells.push(unsafe { cells::sum(r, &self.slots, cell + i) });
                    }
                    Value::Histogram { bounds: &view.bounds, cells: &self.cells }
                }
            };
            let mut ctx = Ctx { region: r, slots: &self.slots, filter: &self.filter, labels: &mut labels };
            self.encoder.series(&mut self.buf, &mut ctx, &view, id, &value);
        }
        drop(labels);
        self.views[self.group] = view;
        if self.pos >= end {
            self.encoder.family_end(&mut self.buf);
            self.group += 1;
        }
    }

    /// Series `id`'s first cell if it is still live and its record still
    /// fits `view` (read once, here: the record may have changed since it
    /// was listed); a record that does not is counted as corrupt.
    fn live_cell(&self, view: &FamilyView, id: u32) -> Option<u32> {
        let r = self.region;
        // Deleted since it was listed: gone from this scrape too.
        if r.series(id).state.load(Ordering::Acquire) != STATE_LIVE {
            return None;
        }
        let rec = r.series_rec(id);
        if rec.family != view.id || !cells_in_range(rec.cell, view.cells, r.params.max_cells) {
            let _ = r.corrupt(
                CORRUPT_SERIES,
                id,
                &format!(
                    "series record {id} of family {}: family {}, cells {}..{} (max {})",
                    view.id,
                    rec.family,
                    rec.cell,
                    rec.cell as u64 + view.cells as u64,
                    r.params.max_cells
                ),
            );
            return None;
        }
        Some(rec.cell)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::tests::{histogram, params};

    #[test]
    fn a_sound_region_renders() {
        let r = Region::heap(params());
        let fam = histogram(r);
        r.series_cell(fam, &[b"/a"]).unwrap();
        let mut it = Render::new(r, Format::Text004);
        let mut body = Vec::new();
        while it.next_chunk(1 << 16) {
            body.extend_from_slice(&it.buf);
        }
        let body = String::from_utf8(body).unwrap();
        assert!(body.contains("lat_bucket{route=\"/a\",le=\"+Inf\"} 0\n"), "{body}");
    }
}
