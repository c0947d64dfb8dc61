//! The fuzz oracle: what the library promises, written from the operations the
//! input made. A model of the registry (families, their definitions and HELP
//! texts, live series with their label values and cell ranges, the error counts)
//! and, per series, its recorded updates ([`crate::model::Series`]): a rendered body
//! must hold exactly the families and series the model says, in order, each with
//! the value its operations give. Nothing here reads the cells the way the
//! library's reader does.

use std::collections::BTreeMap;

use shmetrics::layout::*;
use shmetrics::region::Region;

use super::abi::{Def, Fmt};
use crate::expo::{is_label_name, is_metric_name, parse_strict};
use crate::json::{parse_json, parse_json_view, JsonValue};
use crate::model::{self, Expected, Kind};

/// The `# TYPE` word the exposition must give a kind: the oracle's own spelling of
/// the text format, not the library's table.
pub fn expected_type(kind: u32) -> &'static str {
    match kind {
        KIND_COUNTER => "counter",
        KIND_GAUGE => "gauge",
        _ => "histogram",
    }
}

/// Whether a definition is one the library may accept (`validate_def`): the
/// names and bounds that keep the exposition well-formed.
pub fn def_is_valid(d: &Def) -> bool {
    let label_ok =
        |l: &Vec<u8>| l.len() <= MAX_NAME_BYTES && std::str::from_utf8(l).is_ok_and(|l| is_label_name(l, false));
    let b = d.stored_bounds();
    matches!(d.kind, KIND_COUNTER | KIND_GAUGE | KIND_HISTOGRAM)
        && d.name.len() <= MAX_NAME_BYTES
        && std::str::from_utf8(&d.name).is_ok_and(|n| is_metric_name(n) && !n.starts_with(|c: char| c.is_ascii_digit()))
        && !d.name.starts_with(b"shmetrics_")
        && d.help.len() <= MAX_HELP_BYTES
        && d.labels.len() <= MAX_LABELS
        && d.labels.iter().all(label_ok)
        && d.labels.iter().enumerate().all(|(i, l)| !d.labels[..i].contains(l))
        && (d.kind != KIND_HISTOGRAM || !d.labels.iter().any(|l| l == b"le"))
        && if d.kind == KIND_HISTOGRAM {
            !b.is_empty()
                && b.len() <= MAX_BUCKETS
                && b.iter().all(|x| x.is_finite())
                && b.windows(2).all(|w| w[0] < w[1])
        } else {
            d.bounds.is_empty()
        }
}

pub fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn lossy_key(values: &[Vec<u8>]) -> Vec<String> {
    values.iter().map(|v| lossy(v)).collect()
}

pub fn overflow_key(n: usize) -> Vec<String> {
    vec![lossy(OVERFLOW_VALUE); n]
}

pub fn is_overflow_key(key: &[String]) -> bool {
    !key.is_empty() && key.iter().all(|v| v.as_bytes() == OVERFLOW_VALUE)
}

pub struct FamM {
    pub def: Def,
    /// Every HELP text given; a redefinition may or may not replace it (an
    /// arena too full for the new text keeps the old one).
    pub helps: Vec<Vec<u8>>,
    pub gen: u32,
}

pub struct SerM {
    pub fam: u32,
    pub key: Vec<String>,
    pub cell: u32,
    pub ncells: u32,
    pub live: bool,
    /// Every update and overwrite of its cells, by slot.
    pub ops: model::Series,
}

/// The model's kind of a definition.
pub fn model_kind(d: &Def) -> Kind {
    match d.kind {
        KIND_COUNTER => Kind::Counter,
        KIND_GAUGE => Kind::Gauge,
        _ => Kind::Histogram(d.stored_bounds()),
    }
}

#[derive(Default)]
pub struct Model {
    pub fams: BTreeMap<u32, FamM>,
    /// Every series created, in creation order (deleted ones too: their cells
    /// are never reused).
    pub series: Vec<SerM>,
    /// Label values used so far, to reach existing series again.
    pub pool: Vec<Vec<u8>>,
    pub errors: [u64; REASONS.len()],
    /// Slots whose cells a scrape counts: the harness's own and the ones it
    /// marked as another process's (in increasing order).
    pub slots: Vec<u32>,
}

impl Model {
    pub fn live(&self, fam: u32, key: &[String]) -> Option<&SerM> {
        self.series.iter().find(|s| s.live && s.fam == fam && s.key == key)
    }

    pub fn by_name(&self, name: &[u8]) -> Option<u32> {
        self.fams.iter().find(|(_, f)| f.def.name == name).map(|(id, _)| *id)
    }

    /// Live series under the family's own limit (the overflow series excluded).
    pub fn limited_count(&self, fam: u32) -> usize {
        self.series.iter().filter(|s| s.live && s.fam == fam && !is_overflow_key(&s.key)).count()
    }

    pub fn remember(&mut self, values: &[Vec<u8>]) {
        for v in values {
            if self.pool.len() < 64 && !self.pool.contains(v) {
                self.pool.push(v.clone());
            }
        }
    }
}

/// Equal as the exposition shows them: NaN is NaN, both zeros are `0`.
pub fn same_value(got: f64, want: f64) -> bool {
    (got.is_nan() && want.is_nan()) || (got == 0.0 && want == 0.0) || got.to_bits() == want.to_bits()
}

pub fn check_value(what: &str, got: f64, want: f64) -> Result<(), String> {
    if same_value(got, want) {
        Ok(())
    } else {
        Err(format!("{what}: rendered {got:?}, the operations give {want:?}"))
    }
}

pub fn filter_wants(filter: Option<&[Vec<u8>]>, name: &[u8], kind: u32) -> bool {
    let Some(names) = filter else { return true };
    let base = if kind == KIND_COUNTER { name.strip_suffix(b"_total") } else { None };
    names.iter().any(|n| n == name || Some(n.as_slice()) == base)
}

/// Checks a value a scrape showed against what the operations give (any
/// number when no contract says).
fn check_one(what: &str, got: f64, want: &Expected) -> Result<(), String> {
    match want {
        Expected::One(w) => check_value(what, got, *w),
        Expected::Unknown => Ok(()),
        Expected::Histogram(..) => Err(format!("{what}: one value where a histogram was expected")),
    }
}

/// Checks a rendered body against the model: the user families with live
/// series that the filter wants, in definition order, each with exactly its
/// live series in creation order, their label values and the values their
/// operations give; then the self-metrics.
pub fn check_body(
    r: &'static Region,
    model: &Model,
    fmt: Fmt,
    filter: Option<&[Vec<u8>]>,
    body: &[u8],
) -> Result<(), String> {
    let expected: Vec<(&FamM, Vec<&SerM>)> = model
        .fams
        .iter()
        .filter(|(_, f)| filter_wants(filter, &f.def.name, f.def.kind))
        .map(|(id, f)| (f, model.series.iter().filter(|s| s.live && s.fam == *id).collect::<Vec<_>>()))
        .filter(|(_, s)| !s.is_empty())
        .collect();
    let label_pairs = |f: &FamM, s: &SerM| -> Vec<(String, String)> {
        f.def.labels.iter().map(|l| lossy(l)).zip(s.key.iter().cloned()).collect()
    };
    let help_ok = |f: &FamM, help: &str| f.helps.iter().any(|h| lossy(h) == help);

    if fmt == Fmt::Json {
        let fams = parse_json_view(body)?;
        if fams.len() != expected.len() {
            return Err(format!(
                "JSON has families {:?}, expected {:?}",
                fams.iter().map(|f| &f.name).collect::<Vec<_>>(),
                expected.iter().map(|(f, _)| lossy(&f.def.name)).collect::<Vec<_>>()
            ));
        }
        for (jf, (f, sers)) in fams.iter().zip(&expected) {
            let name = lossy(&f.def.name);
            let what = |s: &str| format!("JSON family {name}: {s}");
            if jf.name != name || jf.typ != expected_type(f.def.kind) || !help_ok(f, &jf.help) {
                return Err(what(&format!("got name {:?} type {:?} help {:?}", jf.name, jf.typ, jf.help)));
            }
            if jf.labels != f.def.labels.iter().map(|l| lossy(l)).collect::<Vec<_>>() {
                return Err(what(&format!("label names {:?}", jf.labels)));
            }
            if jf.series.len() != sers.len() {
                return Err(what(&format!("{} series, expected {}", jf.series.len(), sers.len())));
            }
            for ((labels, value), s) in jf.series.iter().zip(sers) {
                let want = label_pairs(f, s);
                if *labels != want {
                    return Err(what(&format!("series labels {labels:?}, expected {want:?}")));
                }
                let what = |x: &str| format!("JSON {name}{want:?} {x}");
                let expected = s.ops.expected(&model.slots);
                match (f.def.kind, value, &expected) {
                    (KIND_COUNTER | KIND_GAUGE, JsonValue::One(v), _) => check_one(&what("value"), *v, &expected)?,
                    (KIND_HISTOGRAM, JsonValue::Histogram(buckets, sum, count), Expected::Histogram(cum, want_sum)) => {
                        let bounds = f.def.stored_bounds();
                        if buckets.len() != bounds.len() + 1 {
                            return Err(what(&format!("has {} buckets", buckets.len())));
                        }
                        for (k, (le, v)) in buckets.iter().enumerate() {
                            let want_le = bounds.get(k).copied().unwrap_or(f64::INFINITY);
                            check_value(&what(&format!("bucket bound #{k}")), *le, want_le)?;
                            check_value(&what(&format!("bucket #{k}")), *v, cum[k])?;
                        }
                        check_value(&what("sum"), *sum, *want_sum)?;
                        check_value(&what("count"), *count, cum[bounds.len()])?;
                    }
                    _ => return Err(what(&format!("value of the wrong shape: {value:?}, expected {expected:?}"))),
                }
            }
        }
        return Ok(());
    }

    let om = fmt == Fmt::OpenMetrics;
    let fams = parse_strict(body, om)?;
    let split = fams.iter().position(|f| f.name.starts_with("shmetrics_")).unwrap_or(fams.len());
    let (user, own) = fams.split_at(split);
    if let Some(f) = own.iter().find(|f| !f.name.starts_with("shmetrics_")) {
        return Err(format!("user family {} after the self-metrics", f.name));
    }
    if user.len() != expected.len() {
        return Err(format!(
            "families {:?}, expected {:?}",
            user.iter().map(|f| &f.name).collect::<Vec<_>>(),
            expected.iter().map(|(f, _)| lossy(&f.def.name)).collect::<Vec<_>>()
        ));
    }
    for (ef, (f, sers)) in user.iter().zip(&expected) {
        let name = lossy(&f.def.name);
        let fam_name =
            if om && f.def.kind == KIND_COUNTER { name.strip_suffix("_total").unwrap_or(&name) } else { &name };
        let what = |s: &str| format!("family {name}: {s}");
        if ef.name != fam_name || ef.typ != expected_type(f.def.kind) || !help_ok(f, &ef.help) {
            return Err(what(&format!("got name {:?} type {:?} help {:?}", ef.name, ef.typ, ef.help)));
        }
        let mut samples = ef.samples.iter();
        // The next sample, which must have this name and these labels; a bucket's
        // `le` (last) is compared as a number (its spelling was checked by the parser).
        let mut next = |want_name: &str, want_labels: &[(String, String)], le: Option<f64>| -> Result<f64, String> {
            let s = samples.next().ok_or_else(|| what(&format!("missing sample {want_name}{want_labels:?}")))?;
            let labels_ok = match le {
                None => s.labels == want_labels,
                Some(b) => {
                    s.labels.len() == want_labels.len() + 1
                        && s.labels[..want_labels.len()] == *want_labels
                        && s.labels[want_labels.len()].0 == "le"
                        && crate::expo::parse_value(&s.labels[want_labels.len()].1).is_some_and(|x| same_value(x, b))
                }
            };
            if s.name != want_name || !labels_ok {
                return Err(what(&format!(
                    "sample {}{:?}, expected {want_name}{want_labels:?} (le {le:?})",
                    s.name, s.labels
                )));
            }
            Ok(s.number())
        };
        for s in sers {
            let labels = label_pairs(f, s);
            let id = format!("{name}{labels:?}");
            let expected = s.ops.expected(&model.slots);
            match (f.def.kind, &expected) {
                (KIND_COUNTER, _) => {
                    let sample = if om { format!("{fam_name}_total") } else { name.clone() };
                    check_one(&id, next(&sample, &labels, None)?, &expected)?;
                }
                (KIND_GAUGE, _) => check_one(&id, next(&name, &labels, None)?, &expected)?,
                (_, Expected::Histogram(cum, want_sum)) => {
                    let bounds = f.def.stored_bounds();
                    for (k, want) in cum.iter().enumerate() {
                        let le = bounds.get(k).copied().unwrap_or(f64::INFINITY);
                        let got = next(&format!("{name}_bucket"), &labels, Some(le))?;
                        check_value(&format!("{id} bucket #{k} (le {le})"), got, *want)?;
                    }
                    check_value(&format!("{id} _sum"), next(&format!("{name}_sum"), &labels, None)?, *want_sum)?;
                    let count = next(&format!("{name}_count"), &labels, None)?;
                    check_value(&format!("{id} _count"), count, cum[bounds.len()])?;
                }
                _ => return Err(format!("{id}: the model has {expected:?} for a histogram")),
            }
        }
        if let Some(s) = samples.next() {
            return Err(what(&format!("unexpected sample {s:?}")));
        }
    }
    for f in own {
        match f.name.as_str() {
            "shmetrics_errors_total" | "shmetrics_errors" => {
                for (i, reason) in REASONS.iter().enumerate() {
                    let s = f.samples.get(i).ok_or_else(|| format!("{}: no sample for {reason}", f.name))?;
                    if s.labels != [("reason".to_string(), reason.to_string())] {
                        return Err(format!("{}: sample #{i} is {s:?}", f.name));
                    }
                    let what = format!("errors_total{{reason={reason}}} ({} were counted)", model.errors[i]);
                    check_value(&what, s.number(), model.errors[i] as f64)?;
                }
            }
            "shmetrics_series_capacity" => {
                let v = f.samples[0].number();
                check_value("series_capacity", v, r.params.max_series as f64)?;
            }
            "shmetrics_worker_slots" => {
                let total: f64 = f.samples.iter().map(|s| s.number()).sum();
                check_value("worker_slots (all states)", total, (r.params.max_slots - 1) as f64)?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Checks a body rendered from a region that may be corrupt: it ends, it is
/// UTF-8, every line is complete, and an OpenMetrics body ends with `# EOF`; a
/// JSON body is valid JSON.
pub fn check_corrupt_body(fmt: Fmt, body: &[u8]) -> Result<(), String> {
    if fmt == Fmt::Json {
        return parse_json(body).map(|_| ());
    }
    let text = std::str::from_utf8(body).map_err(|e| format!("not UTF-8: {e}"))?;
    if !(text.ends_with('\n') || text.is_empty() && fmt == Fmt::Text) {
        return Err("does not end with a newline".into());
    }
    if fmt == Fmt::OpenMetrics && !(text == "# EOF\n" || text.ends_with("\n# EOF\n")) {
        return Err("no # EOF at the end".into());
    }
    Ok(())
}
