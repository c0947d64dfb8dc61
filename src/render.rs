//! Turning the store into an exposition, a bounded piece at a time.
//!
//! [`Render::new`] takes the list of live series (grouped by family, families in
//! definition order) once; [`Render::next_chunk`] then renders until the output
//! reaches a size hint, so the Lua side can hand each piece to nginx and let the
//! event loop serve other requests in between. Series created after `new` appear
//! in the next scrape.

use std::sync::atomic::Ordering;

use crate::check::{cells_in_range, decode_key, FamView};
use crate::expo::{self, Format};
use crate::json;
use crate::layout::*;
use crate::region::Region;
use crate::store;

pub struct Render {
    region: &'static Region,
    fmt: Format,
    /// The JSON view instead of `fmt` (user families only, no self-metrics).
    json: bool,
    /// The JSON view has written a series of the current family (a comma goes
    /// before the next one; skipped series do not count).
    json_series: bool,
    /// Live series ids, grouped by family.
    order: Vec<u32>,
    /// `(family id, start, end)` ranges of `order`, in family id order.
    groups: Vec<(u32, usize, usize)>,
    /// Each group's family, checked and copied once per scrape.
    views: Vec<FamView>,
    /// Slots that were ever claimed (dead owners' counts still count).
    slots: Vec<u32>,
    filter: Filter,
    group: usize,
    pos: usize,
    self_done: bool,
    pub buf: Vec<u8>,
    labels: Vec<u8>,
    sums: Vec<f64>,
    /// The current histogram family's `le` values, formatted once per family.
    les: Vec<Vec<u8>>,
    les_group: usize,
    /// The JSON view's paging (`set_page`), and the series of the current
    /// family counted by it so far.
    page: Option<Page>,
    page_seen: u64,
}

/// A page of the JSON view: per family, the series `offset..offset + limit`
/// among those with a label value containing `needle` (every series when it is
/// empty), so that a front end polling a registry of any size gets a bounded body.
struct Page {
    offset: u64,
    limit: u64,
    needle: Vec<u8>,
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

fn as_str(b: &[u8]) -> &str {
    // Names were validated as ASCII at definition; a corrupt file gets "_".
    std::str::from_utf8(b).unwrap_or("_")
}

/// Names a family is exposed under: `(family name for HELP/TYPE, sample name)`.
///
/// They differ only for OpenMetrics counters, whose family name drops `_total`
/// and whose samples always carry it (`requests_total` → family `requests`;
/// a counter defined as `requests` still exposes `requests_total`).
pub fn om_names(name: &str, kind: u32, fmt: Format) -> (String, String) {
    if fmt == Format::OpenMetrics && kind == KIND_COUNTER {
        let base = name.strip_suffix("_total").unwrap_or(name);
        return (base.to_string(), format!("{base}_total"));
    }
    (name.to_string(), name.to_string())
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

    pub fn wants(&self, name: &[u8], kind: u32) -> bool {
        let Some(names) = &self.0 else { return true };
        let base = if kind == KIND_COUNTER { name.strip_suffix(b"_total") } else { None };
        names.iter().any(|n| n == name || Some(n.as_slice()) == base)
    }
}

impl Render {
    pub fn new(region: &'static Region, fmt: Format) -> Render {
        Render::with_filter(region, fmt, Filter::all())
    }

    /// A renderer of the JSON view (see `json.rs` for its shape).
    pub fn json(region: &'static Region, filter: Filter) -> Render {
        let mut r = Render::with_filter(region, Format::Text004, filter);
        r.json = true;
        r
    }

    pub fn with_filter(region: &'static Region, fmt: Format, filter: Filter) -> Render {
        let h = region.header();
        // Acquire: every family id below this count was allocated before.
        let nfam = h.families_used.load(Ordering::Acquire).min(region.params.max_families);
        let mut scan = region.scan.lock().unwrap_or_else(|e| e.into_inner());
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
            let names = store::exposed_names(&view.name, view.kind);
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
            fmt,
            json: false,
            json_series: false,
            order,
            groups,
            views,
            slots,
            filter,
            group: 0,
            pos: 0,
            self_done: false,
            buf: Vec::with_capacity(64 * 1024),
            labels: Vec::with_capacity(256),
            sums: Vec::with_capacity(MAX_BUCKETS + 2),
            les: Vec::new(),
            les_group: usize::MAX,
            page: None,
            page_seen: 0,
        }
    }

    /// Pages a JSON render (see [`Page`]): each family object then also carries
    /// `"series_count"`, the number of its series the needle selects. Only
    /// before the first chunk of a JSON render.
    pub fn set_page(&mut self, offset: u64, limit: u64, needle: &[u8]) -> Result<(), String> {
        if !self.json {
            return Err("paging is for the JSON view only".into());
        }
        if self.group != 0 || self.pos != 0 || self.self_done {
            return Err("paging must be set before the first chunk".into());
        }
        self.page = Some(Page { offset, limit, needle: needle.to_vec() });
        Ok(())
    }

    /// Series left to render (for tests and progress).
    pub fn remaining(&self) -> usize {
        self.order.len() - self.pos.min(self.order.len())
    }

    /// Renders into `buf` (cleared first) until it holds at least `hint` bytes or
    /// everything is rendered. Returns false when there was nothing left.
    pub fn next_chunk(&mut self, hint: usize) -> bool {
        self.buf.clear();
        if self.json {
            return self.next_json_chunk(hint);
        }
        while self.buf.len() < hint {
            if self.group < self.groups.len() {
                self.render_some(hint);
            } else if !self.self_done {
                self.render_self();
                self.self_done = true;
            } else {
                break;
            }
        }
        !self.buf.is_empty()
    }

    fn next_json_chunk(&mut self, hint: usize) -> bool {
        if self.self_done {
            return false;
        }
        // The prefix alone can reach a small hint: render one piece after it
        // anyway, or the next call would write it again (only render_some_json
        // moves group/pos), forever with a constant small hint.
        let mut first = self.group == 0 && self.pos == 0;
        if first {
            self.buf.extend_from_slice(b"{\"families\":[");
        }
        while (first || self.buf.len() < hint) && self.group < self.groups.len() {
            first = false;
            self.render_some_json(hint);
        }
        if self.group >= self.groups.len() {
            self.buf.extend_from_slice(b"]}\n");
            self.self_done = true;
        }
        true
    }

    fn render_some_json(&mut self, hint: usize) {
        let r = self.region;
        let (fam, start, end) = self.groups[self.group];
        let view = std::mem::replace(&mut self.views[self.group], FamView::empty());
        let label_names = &view.labels;
        let bounds = view.bounds.as_slice();
        if self.pos <= start {
            self.pos = start;
            if self.group > 0 {
                self.buf.push(b',');
            }
            let type_name = match view.kind {
                KIND_COUNTER => "counter",
                KIND_GAUGE => "gauge",
                _ => "histogram",
            };
            self.buf.extend_from_slice(b"{\"name\":");
            json::write_string(&mut self.buf, &view.name);
            self.buf.extend_from_slice(b",\"type\":\"");
            self.buf.extend_from_slice(type_name.as_bytes());
            self.buf.extend_from_slice(b"\",\"help\":");
            json::write_string(&mut self.buf, r.fam_help(r.family(fam)));
            self.buf.extend_from_slice(b",\"labels\":[");
            for (i, l) in label_names.iter().enumerate() {
                if i > 0 {
                    self.buf.push(b',');
                }
                json::write_string(&mut self.buf, l);
            }
            self.buf.extend_from_slice(b"],\"series\":[");
            self.json_series = false;
            self.page_seen = 0;
        }
        let mut progressed = false;
        while self.pos < end && (!progressed || self.buf.len() < hint) {
            progressed = true;
            let id = self.order[self.pos];
            self.pos += 1;
            let Some(cell) = self.live_cell(&view, id) else { continue };
            let key = r.series_key(id);
            let mut values: Vec<&[u8]> = Vec::with_capacity(label_names.len());
            if !decode_key(&key, &mut values) || values.len() != label_names.len() {
                self.bad_key(id);
                continue;
            }
            if let Some(p) = &self.page {
                if !p.needle.is_empty() && !values.iter().any(|v| contains(v, &p.needle)) {
                    continue;
                }
                let i = self.page_seen;
                self.page_seen += 1;
                if i < p.offset || i - p.offset >= p.limit {
                    continue;
                }
            }
            if self.json_series {
                self.buf.push(b',');
            }
            self.json_series = true;
            self.buf.extend_from_slice(b"{\"labels\":{");
            for (i, (n, v)) in label_names.iter().zip(&values).enumerate() {
                if i > 0 {
                    self.buf.push(b',');
                }
                json::write_string(&mut self.buf, n);
                self.buf.push(b':');
                json::write_string(&mut self.buf, v);
            }
            self.buf.push(b'}');
            match view.kind {
                KIND_COUNTER | KIND_GAUGE => {
                    // SAFETY: live_cell proved cell..cell + view.cells in range.
                    let v = unsafe {
                        if view.kind == KIND_COUNTER {
                            self.sum(cell)
                        } else {
                            self.gauge_value(cell)
                        }
                    };
                    self.buf.extend_from_slice(b",\"value\":");
                    json::write_number(&mut self.buf, v);
                }
                _ => {
                    // SAFETY: live_cell proved cell..cell + nbounds + 2 in range.
                    let sums: Vec<f64> = (0..bounds.len() as u32 + 2).map(|i| unsafe { self.sum(cell + i) }).collect();
                    self.buf.extend_from_slice(b",\"buckets\":[");
                    let mut acc = 0.0;
                    for (i, b) in bounds.iter().enumerate() {
                        acc += sums[i];
                        self.buf.push(b'[');
                        json::write_number(&mut self.buf, *b);
                        self.buf.push(b',');
                        json::write_number(&mut self.buf, acc);
                        self.buf.extend_from_slice(b"],");
                    }
                    acc += sums[bounds.len()];
                    self.buf.extend_from_slice(b"[\"+Inf\",");
                    json::write_number(&mut self.buf, acc);
                    self.buf.extend_from_slice(b"]],\"sum\":");
                    json::write_number(&mut self.buf, sums[bounds.len() + 1]);
                    self.buf.extend_from_slice(b",\"count\":");
                    json::write_number(&mut self.buf, acc);
                }
            }
            self.buf.push(b'}');
        }
        self.views[self.group] = view;
        if self.pos >= end {
            self.buf.push(b']');
            if self.page.is_some() {
                self.buf.extend_from_slice(b",\"series_count\":");
                json::write_number(&mut self.buf, self.page_seen as f64);
            }
            self.buf.push(b'}');
            self.group += 1;
        }
    }

    /// Series `id`'s first cell if it is still live and its record still
    /// fits `view` (read once, here: the record may have changed since it
    /// was listed); a record that does not is counted as corrupt.
    fn live_cell(&self, view: &FamView, id: u32) -> Option<u32> {
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

    fn bad_key(&self, id: u32) {
        let _ = self.region.corrupt(CORRUPT_SERIES, id, &format!("series record {id}: its label values do not decode"));
    }

    /// Sum of cell `idx` over every claimed slot.
    ///
    /// # Safety
    /// `idx < max_cells` (every slot in `self.slots` is below `max_slots`).
    unsafe fn sum(&self, idx: u32) -> f64 {
        // SAFETY: idx by the caller's contract; slots were taken below max_slots.
        self.slots.iter().map(|&s| unsafe { self.region.cell_unchecked(s, idx) }).sum()
    }

    fn render_some(&mut self, hint: usize) {
        let r = self.region;
        let (fam, start, end) = self.groups[self.group];
        let view = std::mem::replace(&mut self.views[self.group], FamView::empty());
        let (family_name, sample_name) = om_names(as_str(&view.name), view.kind, self.fmt);
        let name = sample_name.as_str();
        if self.pos <= start {
            self.pos = start;
            let type_name = match view.kind {
                KIND_COUNTER => "counter",
                KIND_GAUGE => "gauge",
                _ => "histogram",
            };
            expo::write_family_header(&mut self.buf, self.fmt, &family_name, r.fam_help(r.family(fam)), type_name);
        }
        let label_names: Vec<&str> = view.labels.iter().map(|l| as_str(l)).collect();
        let bounds = view.bounds.as_slice();
        if view.kind == KIND_HISTOGRAM && self.les_group != self.group {
            self.les = bounds
                .iter()
                .map(|&b| {
                    let mut le = Vec::with_capacity(24);
                    expo::write_le(&mut le, b);
                    le
                })
                .collect();
            self.les_group = self.group;
        }
        let mut cache = r.label_cache.lock().unwrap_or_else(|e| e.into_inner());
        // At least one series per call: otherwise a family header that alone
        // reaches the hint is written again on every call and never followed.
        let mut progressed = false;
        while self.pos < end && (!progressed || self.buf.len() < hint) {
            progressed = true;
            let id = self.order[self.pos];
            self.pos += 1;
            let Some(cell) = self.live_cell(&view, id) else { continue };
            // Series are immutable once live and ids are never reused, so a
            // label block rendered once serves every later scrape.
            let block = match cache.get(id as usize) {
                Some(Some(b)) => b,
                _ => {
                    let key = r.series_key(id);
                    let mut values: Vec<&[u8]> = Vec::with_capacity(label_names.len());
                    if !decode_key(&key, &mut values) || values.len() != label_names.len() {
                        self.bad_key(id);
                        continue;
                    }
                    let mut b = Vec::new();
                    expo::write_label_pairs(&mut b, &label_names, &values);
                    if cache.len() <= id as usize {
                        cache.resize(id as usize + 1, None);
                    }
                    cache[id as usize] = Some(b.into_boxed_slice());
                    cache[id as usize].as_ref().unwrap()
                }
            };
            self.labels.clear();
            self.labels.extend_from_slice(block);
            // live_cell proved cell..cell + view.cells in range: the cells of
            // view.kind (bounds.len() + 2 for a histogram).
            match view.kind {
                KIND_COUNTER => {
                    // SAFETY: cell < cell + 1 <= max_cells (above).
                    let v = unsafe { self.sum(cell) };
                    expo::write_sample(&mut self.buf, name, "", &self.labels, None, v);
                }
                KIND_GAUGE => {
                    // SAFETY: cell + GAUGE_CELLS <= max_cells (above).
                    let v = unsafe { self.gauge_value(cell) };
                    expo::write_sample(&mut self.buf, name, "", &self.labels, None, v);
                }
                // SAFETY: cell + bounds.len() + 2 <= max_cells (above).
                _ => unsafe { self.render_histogram(name, bounds, cell) },
            }
        }
        drop(cache);
        self.views[self.group] = view;
        if self.pos >= end {
            self.group += 1;
        }
    }

    /// A gauge's value: the last `set` (the slot named by the shared stamp) plus
    /// every slot's `inc` deltas made since that set.
    ///
    /// # Safety
    /// `base + GAUGE_CELLS <= max_cells`.
    unsafe fn gauge_value(&self, base: u32) -> f64 {
        let r = self.region;
        // Every cell read below is in base..base + 4 (in range by the contract),
        // of slot 0, a slot of the set or the stamp's slot (checked): all below max_slots.
        // SAFETY: as just said.
        let stamp = unsafe { r.cell_unchecked(SHARED_SLOT, base) };
        let mut v = 0.0;
        if stamp > 0.0 {
            let slot = (stamp % STAMP_SLOTS as f64) as u32;
            if slot > 0 && slot < r.params.max_slots {
                // SAFETY: as above.
                v = unsafe { r.cell_unchecked(slot, base) };
            }
        }
        for &s in &self.slots {
            // SAFETY: as above.
            if unsafe { r.cell_unchecked(s, base + 3) } == stamp {
                // SAFETY: as above.
                v += unsafe { r.cell_unchecked(s, base + 2) };
            }
        }
        v
    }

    /// # Safety
    /// `base + bounds.len() + 2 <= max_cells`.
    unsafe fn render_histogram(&mut self, name: &str, bounds: &[f64], base: u32) {
        // One load per cell, then everything derived from these values: +Inf and
        // _count are the same number, and cumulative buckets cannot decrease.
        self.sums.clear();
        for i in 0..bounds.len() as u32 + 2 {
            // SAFETY: in range by the contract.
            self.sums.push(unsafe { self.sum(base + i) });
        }
        let mut acc = 0.0;
        for (i, le) in self.les.iter().enumerate().take(bounds.len()) {
            acc += self.sums[i];
            expo::write_sample(&mut self.buf, name, "_bucket", &self.labels, Some(("le", le)), acc);
        }
        acc += self.sums[bounds.len()];
        expo::write_sample(&mut self.buf, name, "_bucket", &self.labels, Some(("le", b"+Inf")), acc);
        expo::write_sample(&mut self.buf, name, "_sum", &self.labels, None, self.sums[bounds.len() + 1]);
        expo::write_sample(&mut self.buf, name, "_count", &self.labels, None, acc);
    }

    fn render_self(&mut self) {
        let r = self.region;
        let h = r.header();
        let fmt = self.fmt;
        let filter = &self.filter;
        let out = &mut self.buf;
        let family = |out: &mut Vec<u8>, name: &str, kind: u32, help: &[u8], samples: &[(&str, &str, f64)]| {
            if samples.is_empty() || !filter.wants(name.as_bytes(), kind) {
                return;
            }
            let (family_name, sample_name) = om_names(name, kind, fmt);
            let type_name = if kind == KIND_COUNTER { "counter" } else { "gauge" };
            expo::write_family_header(out, fmt, &family_name, help, type_name);
            for (label, value, v) in samples {
                let mut lbl = Vec::new();
                if !label.is_empty() {
                    expo::write_label_pairs(&mut lbl, &[label], &[value.as_bytes()]);
                }
                expo::write_sample(out, &sample_name, "", &lbl, None, *v);
            }
        };
        let errors: Vec<(&str, &str, f64)> = REASONS
            .iter()
            .enumerate()
            .map(|(i, reason)| {
                let mut v: f64 = self.slots.iter().map(|&s| r.cell(s, CELL_ERRORS + i as u32)).sum();
                if i as u32 == REASON_NO_SLOT {
                    v += h.no_slot_errors.load(Ordering::Relaxed) as f64;
                }
                ("reason", *reason, v)
            })
            .collect();
        family(
            out,
            "shmetrics_errors_total",
            KIND_COUNTER,
            b"Updates refused on the hot path (nil, err returned), by reason.",
            &errors,
        );
        let error_metric = r.error_metric.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if !error_metric.is_empty() {
            // Validated as a metric name when it was set.
            let logged: f64 = self.slots.iter().map(|&s| r.cell(s, CELL_LOG_ERRORS)).sum();
            let total = errors.iter().map(|e| e.2).sum::<f64>() + logged;
            family(
                out,
                as_str(&error_metric),
                KIND_COUNTER,
                b"Errors while recording metrics: hot-path updates refused, and log_error calls.",
                &[("", "", total)],
            );
        }
        let used = h.series_used.load(Ordering::Relaxed).min(r.params.max_series);
        family(
            out,
            "shmetrics_series_used",
            KIND_GAUGE,
            b"Series entries allocated in the shared registry (deleted ones included).",
            &[("", "", used as f64)],
        );
        family(
            out,
            "shmetrics_series_capacity",
            KIND_GAUGE,
            b"Series the shared registry can hold (max_series).",
            &[("", "", r.params.max_series as f64)],
        );
        // Per family, only where something happened: most never drop or overflow.
        let nfam = h.families_used.load(Ordering::Acquire).min(r.params.max_families);
        // Label values are the families' checked names, each once: a corrupt
        // record (whose name may be anything, or another family's) is left out.
        let mut counts: Vec<(String, u64, u64)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for fam in 0..nfam {
            let f = r.family(fam);
            let (d, o) = (f.dropped.load(Ordering::Relaxed), f.overflowed.load(Ordering::Relaxed));
            if f.state.load(Ordering::Acquire) != STATE_LIVE || d == 0 && o == 0 {
                continue;
            }
            let Ok(view) = r.family_view(fam) else { continue };
            if seen.insert(view.name.clone()) {
                counts.push((as_str(&view.name).to_string(), d, o));
            }
        }
        let dropped: Vec<(&str, &str, f64)> =
            counts.iter().filter(|c| c.1 > 0).map(|c| ("family", c.0.as_str(), c.1 as f64)).collect();
        let overflowed: Vec<(&str, &str, f64)> =
            counts.iter().filter(|c| c.2 > 0).map(|c| ("family", c.0.as_str(), c.2 as f64)).collect();
        family(
            out,
            "shmetrics_series_dropped_total",
            KIND_COUNTER,
            b"New series refused because the store was full (max_series, max_cells or arena_bytes), by family.",
            &dropped,
        );
        family(
            out,
            "shmetrics_series_overflow_total",
            KIND_COUNTER,
            b"Updates counted in a family's __overflow__ series because of its own max_series, by family.",
            &overflowed,
        );
        let origin = h.origin as usize;
        if origin != ORIGIN_NEW as usize {
            let reason = ORIGIN_NAMES.get(origin).copied().unwrap_or("unknown");
            family(
                out,
                "shmetrics_region_replaced",
                KIND_GAUGE,
                b"1 when this region replaced an unusable file at its path, by reason (the error log has the details).",
                &[("reason", reason, 1.0)],
            );
        }
        let corrupt = r.corrupt_counts(&self.slots);
        let corrupt: Vec<(&str, &str, f64)> =
            CORRUPT_WHAT.iter().zip(corrupt).filter(|(_, n)| *n > 0.0).map(|(w, n)| ("what", *w, n)).collect();
        family(
            out,
            "shmetrics_region_corrupt_total",
            KIND_COUNTER,
            b"Records of a corrupt region file found and skipped, by what they were (the error log names the file).",
            &corrupt,
        );
        let (live, dead, free) = r.slot_stats();
        family(
            out,
            "shmetrics_worker_slots",
            KIND_GAUGE,
            b"Worker slots by owner state (dead owners' counts are kept and adopted).",
            &[("state", "live", live as f64), ("state", "dead", dead as f64), ("state", "free", free as f64)],
        );
        expo::write_body_end(out, fmt);
    }
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
    by_family: Vec<Vec<u32>>,
    /// Each family's deletion generation when its list was last pruned.
    gens: Vec<u32>,
    /// Ids in all lists.
    listed: usize,
}

impl Scan {
    /// Brings the lists up to date with the region.
    fn update(&mut self, region: &Region) {
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
            match region.series(id).state.load(Ordering::Acquire) {
                STATE_WRITING => self.pending.push(id),
                STATE_LIVE => {
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
