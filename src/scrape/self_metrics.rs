//! The self-metrics (`shmetrics_*`, and the optional error counter): what
//! they count, gathered from the region once per scrape. The text encoder
//! writes them after the user families; the JSON view has none.

use std::sync::atomic::Ordering;

use super::list::state;
use super::Ctx;
use crate::layout::*;

/// One self-metric family: its name, kind, HELP text and samples, each a
/// label `(name, value)` (an empty name: none) and a value.
pub(crate) struct SelfFamily {
    pub(crate) name: String,
    pub(crate) kind: Kind,
    pub(crate) help: &'static [u8],
    pub(crate) samples: Vec<(&'static str, String, f64)>,
}

fn family(name: &str, kind: Kind, help: &'static [u8], samples: Vec<(&'static str, String, f64)>) -> SelfFamily {
    SelfFamily { name: name.to_string(), kind, help, samples }
}

fn as_str(b: &[u8]) -> &str {
    // Names were validated as ASCII at definition; a corrupt file gets "_".
    std::str::from_utf8(b).unwrap_or("_")
}

/// The self-metric families in exposition order (families without samples
/// included: the encoder leaves them out).
pub(crate) fn gather(ctx: &Ctx) -> Vec<SelfFamily> {
    let r = ctx.region;
    let h = r.header();
    let slots = ctx.slots;
    let mut out = Vec::new();
    let errors: Vec<(&'static str, String, f64)> = REASONS
        .iter()
        .enumerate()
        .map(|(i, reason)| {
            let mut v: f64 = slots.iter().map(|&s| r.cell(s, CELL_ERRORS + i as u32)).sum();
            if i as u32 == REASON_NO_SLOT {
                v += h.no_slot_errors.load(Ordering::Relaxed) as f64;
            }
            ("reason", reason.to_string(), v)
        })
        .collect();
    let total_errors: f64 = errors.iter().map(|e| e.2).sum();
    out.push(family(
        "shmetrics_errors_total",
        Kind::Counter,
        b"Updates refused on the hot path (nil, err returned), by reason.",
        errors,
    ));
    let error_metric = state(r).error_metric.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if !error_metric.is_empty() {
        // Validated as a metric name when it was set.
        let logged: f64 = slots.iter().map(|&s| r.cell(s, CELL_LOG_ERRORS)).sum();
        out.push(family(
            as_str(&error_metric),
            Kind::Counter,
            b"Errors while recording metrics: hot-path updates refused, and log_error calls.",
            vec![("", String::new(), total_errors + logged)],
        ));
    }
    let used = h.series_used.load(Ordering::Relaxed).min(r.params.max_series);
    out.push(family(
        "shmetrics_series_used",
        Kind::Gauge,
        b"Series entries allocated in the shared registry (deleted ones included).",
        vec![("", String::new(), used as f64)],
    ));
    out.push(family(
        "shmetrics_series_capacity",
        Kind::Gauge,
        b"Series the shared registry can hold (max_series).",
        vec![("", String::new(), r.params.max_series as f64)],
    ));
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
    let by_family = |pick: fn(&(String, u64, u64)) -> u64| -> Vec<(&'static str, String, f64)> {
        counts.iter().filter(|c| pick(c) > 0).map(|c| ("family", c.0.clone(), pick(c) as f64)).collect()
    };
    out.push(family(
        "shmetrics_series_dropped_total",
        Kind::Counter,
        b"New series refused because the store was full (max_series, max_cells or arena_bytes), by family.",
        by_family(|c| c.1),
    ));
    out.push(family(
        "shmetrics_series_overflow_total",
        Kind::Counter,
        b"Updates counted in a family's __overflow__ series because of its own max_series, by family.",
        by_family(|c| c.2),
    ));
    let origin = h.origin as usize;
    if origin != ORIGIN_NEW as usize {
        let reason = ORIGIN_NAMES.get(origin).copied().unwrap_or("unknown");
        out.push(family(
            "shmetrics_region_replaced",
            Kind::Gauge,
            b"1 when this region replaced an unusable file at its path, by reason (the error log has the details).",
            vec![("reason", reason.to_string(), 1.0)],
        ));
    }
    let corrupt = r.corrupt_counts(slots);
    out.push(family(
        "shmetrics_region_corrupt_total",
        Kind::Counter,
        b"Records of a corrupt region file found and skipped, by what they were (the error log names the file).",
        CORRUPT_WHAT.iter().zip(corrupt).filter(|(_, n)| *n > 0.0).map(|(w, n)| ("what", w.to_string(), n)).collect(),
    ));
    let (live, dead, free) = r.slot_stats();
    out.push(family(
        "shmetrics_worker_slots",
        Kind::Gauge,
        b"Worker slots by owner state (dead owners' counts are kept and adopted).",
        vec![
            ("state", "live".to_string(), live as f64),
            ("state", "dead".to_string(), dead as f64),
            ("state", "free".to_string(), free as f64),
        ],
    ));
    out
}
