//! Turning the store into an exposition, a bounded piece at a time.
//!
//! [`Render::new`] takes the list of live series (grouped by family, families in
//! definition order) once; [`Render::next_chunk`] then renders until the output
//! reaches a size hint, so the Lua side can hand each piece to nginx and let the
//! event loop serve other requests in between. Series created after `new` appear
//! in the next scrape.

use std::sync::atomic::Ordering;

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
        let mut order = Vec::with_capacity(scan.listed);
        for fam in 0..nfam.min(scan.by_family.len() as u32) {
            let list = &scan.by_family[fam as usize];
            let f = region.family(fam);
            let name = region.arena(f.name_off, f.name_len).unwrap_or(b"");
            // Names were validated at definition; one that is not valid now comes
            // from a corrupt file, and would make Prometheus drop the whole scrape.
            let valid = expo::is_valid_metric_name(name)
                && region.fam_labels(f).iter().all(|l| expo::is_valid_label_name(l));
            // Listed series stay listed when their family is replaced or left out
            // of the configuration: the family decides here, every scrape.
            if list.is_empty() || !valid || !region.family_visible(f) || !filter.wants(name, f.kind) {
                continue;
            }
            groups.push((fam, order.len(), order.len() + list.len()));
            order.extend_from_slice(list);
        }
        drop(scan);
        let slots = (1..region.params.max_slots)
            .filter(|&i| region.slot(i).owner.load(Ordering::Acquire) != 0)
            .collect();
        Render {
            region,
            fmt,
            json: false,
            json_series: false,
            order,
            groups,
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
        }
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
        let f = r.family(fam);
        let label_names = r.fam_labels(f);
        let bounds = r.fam_bounds(f);
        if self.pos <= start {
            self.pos = start;
            if self.group > 0 {
                self.buf.push(b',');
            }
            let type_name = match f.kind {
                KIND_COUNTER => "counter",
                KIND_GAUGE => "gauge",
                _ => "histogram",
            };
            self.buf.extend_from_slice(b"{\"name\":");
            json::write_string(&mut self.buf, r.arena(f.name_off, f.name_len).unwrap_or(b"_"));
            self.buf.extend_from_slice(b",\"type\":\"");
            self.buf.extend_from_slice(type_name.as_bytes());
            self.buf.extend_from_slice(b"\",\"help\":");
            json::write_string(&mut self.buf, r.fam_help(f));
            self.buf.extend_from_slice(b",\"labels\":[");
            for (i, l) in label_names.iter().enumerate() {
                if i > 0 {
                    self.buf.push(b',');
                }
                json::write_string(&mut self.buf, l);
            }
            self.buf.extend_from_slice(b"],\"series\":[");
            self.json_series = false;
        }
        let mut values: Vec<&[u8]> = Vec::with_capacity(label_names.len());
        let mut progressed = false;
        while self.pos < end && (!progressed || self.buf.len() < hint) {
            progressed = true;
            let s = r.series(self.order[self.pos]);
            self.pos += 1;
            // Deleted since it was listed: gone from this scrape too.
            if s.state.load(Ordering::Acquire) != STATE_LIVE {
                continue;
            }
            values.clear();
            if !decode_key(r.arena(s.key_off, s.key_len).unwrap_or(b""), &mut values) || values.len() != label_names.len() {
                continue;
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
            match f.kind {
                KIND_COUNTER | KIND_GAUGE => {
                    let v = if f.kind == KIND_COUNTER { self.sum(s.cell) } else { self.gauge_value(s.cell) };
                    self.buf.extend_from_slice(b",\"value\":");
                    json::write_number(&mut self.buf, v);
                }
                _ => {
                    let sums: Vec<f64> = (0..bounds.len() as u32 + 2).map(|i| self.sum(s.cell + i)).collect();
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
        if self.pos >= end {
            self.buf.extend_from_slice(b"]}");
            self.group += 1;
        }
    }

    /// Sum of cell `idx` over every claimed slot.
    fn sum(&self, idx: u32) -> f64 {
        self.slots.iter().map(|&s| self.region.cell(s, idx)).sum()
    }

    fn render_some(&mut self, hint: usize) {
        let r = self.region;
        let (fam, start, end) = self.groups[self.group];
        let f = r.family(fam);
        let (family_name, sample_name) = om_names(as_str(r.arena(f.name_off, f.name_len).unwrap_or(b"_")), f.kind, self.fmt);
        let name = sample_name.as_str();
        if self.pos <= start {
            self.pos = start;
            let type_name = match f.kind {
                KIND_COUNTER => "counter",
                KIND_GAUGE => "gauge",
                _ => "histogram",
            };
            expo::write_family_header(&mut self.buf, self.fmt, &family_name, r.fam_help(f), type_name);
        }
        let label_names: Vec<&str> = r.fam_labels(f).into_iter().map(as_str).collect();
        let bounds = r.fam_bounds(f);
        if f.kind == KIND_HISTOGRAM && self.les_group != self.group {
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
        let mut values: Vec<&[u8]> = Vec::with_capacity(label_names.len());
        // At least one series per call: otherwise a family header that alone
        // reaches the hint is written again on every call and never followed.
        let mut progressed = false;
        while self.pos < end && (!progressed || self.buf.len() < hint) {
            progressed = true;
            let id = self.order[self.pos];
            let s = r.series(id);
            self.pos += 1;
            // Deleted since it was listed: gone from this scrape too.
            if s.state.load(Ordering::Acquire) != STATE_LIVE {
                continue;
            }
            // Series are immutable once live and ids are never reused, so a
            // label block rendered once serves every later scrape.
            let block = match cache.get(id as usize) {
                Some(Some(b)) => b,
                _ => {
                    values.clear();
                    if !decode_key(r.arena(s.key_off, s.key_len).unwrap_or(b""), &mut values)
                        || values.len() != label_names.len()
                    {
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
            match f.kind {
                KIND_COUNTER => {
                    let v = self.sum(s.cell);
                    expo::write_sample(&mut self.buf, name, "", &self.labels, None, v);
                }
                KIND_GAUGE => {
                    let v = self.gauge_value(s.cell);
                    expo::write_sample(&mut self.buf, name, "", &self.labels, None, v);
                }
                _ => self.render_histogram(name, bounds, s.cell),
            }
        }
        if self.pos >= end {
            self.group += 1;
        }
    }

    /// A gauge's value: the last `set` (the slot named by the shared stamp) plus
    /// every slot's `inc` deltas made since that set.
    fn gauge_value(&self, base: u32) -> f64 {
        let r = self.region;
        let stamp = r.cell(SHARED_SLOT, base);
        let mut v = 0.0;
        if stamp > 0.0 {
            let slot = (stamp % STAMP_SLOTS as f64) as u32;
            if slot > 0 && slot < r.params.max_slots {
                v = r.cell(slot, base);
            }
        }
        for &s in &self.slots {
            if r.cell(s, base + 3) == stamp {
                v += r.cell(s, base + 2);
            }
        }
        v
    }

    fn render_histogram(&mut self, name: &str, bounds: &[f64], base: u32) {
        // One load per cell, then everything derived from these values: +Inf and
        // _count are the same number, and cumulative buckets cannot decrease.
        self.sums.clear();
        for i in 0..bounds.len() as u32 + 2 {
            self.sums.push(self.sum(base + i));
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
        let mut dropped = Vec::new();
        let mut overflowed = Vec::new();
        for fam in 0..nfam {
            let f = r.family(fam);
            if f.state.load(Ordering::Acquire) != STATE_LIVE {
                continue;
            }
            let name = as_str(r.arena(f.name_off, f.name_len).unwrap_or(b"_"));
            let d = f.dropped.load(Ordering::Relaxed);
            if d > 0 {
                dropped.push(("family", name, d as f64));
            }
            let o = f.overflowed.load(Ordering::Relaxed);
            if o > 0 {
                overflowed.push(("family", name, o as f64));
            }
        }
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
            let s = region.series(id);
            match s.state.load(Ordering::Acquire) {
                STATE_WRITING => self.pending.push(id),
                STATE_LIVE if s.family < nfam => {
                    let f = region.family(s.family);
                    // The cells read are those of the kind; `ncells` comes from the file.
                    let need = store::kind_cells(f).max(f.ncells);
                    if f.state.load(Ordering::Acquire) == STATE_LIVE
                        && s.cell as u64 + need as u64 <= region.params.max_cells as u64
                    {
                        self.by_family[s.family as usize].push(id);
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

/// Splits an encoded key (per value: `u32` LE length, bytes) into `out`.
/// Returns false for a malformed key.
fn decode_key<'a>(mut key: &'a [u8], out: &mut Vec<&'a [u8]>) -> bool {
    while !key.is_empty() {
        if key.len() < 4 || out.len() >= MAX_LABELS {
            return false;
        }
        let len = u32::from_le_bytes([key[0], key[1], key[2], key[3]]) as usize;
        if key.len() - 4 < len {
            return false;
        }
        out.push(&key[4..4 + len]);
        key = &key[4 + len..];
    }
    true
}
