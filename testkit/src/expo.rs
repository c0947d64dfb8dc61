//! The one exposition reader of the tests and the fuzz targets: text 0.0.4 and
//! OpenMetrics, one line grammar (names, label blocks, escapes, values) read two ways.
//!
//! - [`Exposition::parse`]: any 0.0.4 body a scrape returns (comments, blanks, untyped
//!   samples and timestamps allowed), into series one can look up by labels; the
//!   integration tests' checks on it ([`Exposition::check_histograms`],
//!   [`check_monotonic`]). Stricter than promtool 2.42 where promtool is silent: it
//!   rejects duplicate series, a family whose samples are not contiguous, a missing final
//!   newline and invalid names; promtool (harness/promtool.rs) checks the rest of
//!   the grammar and lints.
//! - [`parse_strict`]: exactly what shmetrics' renderer may write, in either format:
//!   only `# HELP`, `# TYPE`, sample lines and (OpenMetrics, last) `# EOF`; every family
//!   HELP, TYPE, then its samples, once; one space, no timestamp, values spelled as Go's
//!   `strconv.FormatFloat(v, 'g', -1, 64)`; histogram series complete and consistent.
//!   The fuzz oracle reads bodies with it, in order.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

/// One `# HELP` / `# TYPE` family. `kind` is `None` for samples without a TYPE line.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: String,
    pub help: Option<String>,
    pub kind: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
    /// Index into `Exposition::families`.
    pub family: usize,
}

#[derive(Debug, Clone, Default)]
pub struct Exposition {
    pub families: Vec<Family>,
    pub samples: Vec<Sample>,
    /// series key (`series_key`) -> index into `samples`
    index: HashMap<String, usize>,
}

/// Canonical key of a series: `name{a="x",b="y"}` with labels sorted by name.
pub fn series_key<'a>(name: &str, labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut sorted: Vec<(&str, &str)> = labels.into_iter().collect();
    sorted.sort();
    let mut key = String::with_capacity(name.len() + 16 * sorted.len());
    key.push_str(name);
    key.push('{');
    for (i, (k, v)) in sorted.iter().enumerate() {
        if i > 0 {
            key.push(',');
        }
        let _ = write!(key, "{k}={v:?}");
    }
    key.push('}');
    key
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`; names starting with `__` are reserved (`reserved_ok`
/// false refuses them, as a renderer must never write one).
pub fn is_label_name(s: &str, reserved_ok: bool) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && (reserved_ok || !s.starts_with("__"))
}

/// Whether `s` is a number as Go's `strconv.FormatFloat(v, 'g', -1, 64)` writes
/// it (no leading zeros, a signed exponent of at least two digits), or one of
/// `+Inf`, `-Inf`, `NaN`: the spelling shmetrics' exposition uses.
pub fn is_go_float(s: &str) -> bool {
    if matches!(s, "+Inf" | "-Inf" | "NaN") {
        return true;
    }
    let s = s.strip_prefix('-').unwrap_or(s);
    let (mant, exp) = match s.split_once('e') {
        Some((m, e)) => (m, Some(e)),
        None => (s, None),
    };
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    let (int, frac) = match mant.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (mant, None),
    };
    let int_ok = digits(int) && (int == "0" || !int.starts_with('0'));
    let frac_ok = match frac {
        Some(f) => digits(f) && !f.ends_with('0'),
        None => true,
    };
    let exp_ok = match exp {
        Some(e) => {
            let d = &e[1.min(e.len())..];
            (e.starts_with('+') || e.starts_with('-'))
                && digits(d)
                && d.len() >= 2
                && (d.len() == 2 || !d.starts_with('0'))
        }
        None => true,
    };
    // In exponent form the mantissa has one digit before the point.
    int_ok && frac_ok && exp_ok && (exp.is_none() || int.len() == 1 && int != "0")
}

/// Parses a sample value the way Go's `strconv.ParseFloat` (used by promtool) does for
/// the spellings an exposition uses: decimal, exponent, `+Inf`, `-Inf`, `NaN`.
pub fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ if s.bytes().all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b)) => s.parse().ok(),
        _ => None,
    }
}

impl Exposition {
    /// Parses a whole body. Any deviation from the 0.0.4 grammar is an `Err` naming the
    /// line.
    pub fn parse(text: &str) -> Result<Exposition, String> {
        if !text.is_empty() && !text.ends_with('\n') {
            return Err("body does not end with a newline".into());
        }
        let mut exp = Exposition::default();
        let mut by_name: HashMap<String, usize> = HashMap::new();
        let mut family_has_samples: Vec<bool> = Vec::new();
        let mut family_closed: Vec<bool> = Vec::new();
        let mut current: Option<usize> = None;

        for (lineno, line) in text.lines().enumerate() {
            let err = |msg: String| format!("line {}: {msg}: {line:?}", lineno + 1);
            let trimmed = line.trim_start_matches([' ', '\t']);
            if trimmed.is_empty() {
                continue;
            }
            if let Some(comment) = trimmed.strip_prefix('#') {
                let comment = comment.trim_start_matches([' ', '\t']);
                let (keyword, rest) = comment.split_once([' ', '\t']).unwrap_or((comment, ""));
                if keyword != "HELP" && keyword != "TYPE" {
                    continue; // a plain comment
                }
                let rest = rest.trim_start_matches([' ', '\t']);
                let (name, arg) = rest.split_once([' ', '\t']).unwrap_or((rest, ""));
                if !is_metric_name(name) {
                    return Err(err(format!("invalid metric name {name:?} in {keyword}")));
                }
                let idx = *by_name.entry(name.to_string()).or_insert_with(|| {
                    exp.families.push(Family { name: name.to_string(), help: None, kind: None });
                    family_has_samples.push(false);
                    family_closed.push(false);
                    exp.families.len() - 1
                });
                if family_closed[idx] {
                    return Err(err(format!("{keyword} for family {name} after its block ended")));
                }
                if let Some(cur) = current {
                    if cur != idx {
                        family_closed[cur] = true;
                    }
                }
                current = Some(idx);
                let fam = &mut exp.families[idx];
                if keyword == "HELP" {
                    if fam.help.is_some() {
                        return Err(err(format!("second HELP line for {name}")));
                    }
                    fam.help = Some(unescape(arg, false).map_err(&err)?);
                } else {
                    if fam.kind.is_some() {
                        return Err(err(format!("second TYPE line for {name}")));
                    }
                    if family_has_samples[idx] {
                        return Err(err(format!("TYPE line for {name} after its samples")));
                    }
                    let kind = arg.trim_end_matches([' ', '\t']);
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(err(format!("unknown type {kind:?}")));
                    }
                    fam.kind = Some(kind.to_string());
                }
                continue;
            }

            let (name, labels, rest) = parse_sample_head(trimmed, false).map_err(&err)?;
            let labels = label_map(labels).map_err(&err)?;
            let mut fields = rest.split([' ', '\t']).filter(|f| !f.is_empty());
            let value_text = fields.next().ok_or_else(|| err("missing value".into()))?;
            let value = parse_value(value_text).ok_or_else(|| err(format!("bad value {value_text:?}")))?;
            if let Some(ts) = fields.next() {
                ts.parse::<i64>().map_err(|_| err(format!("bad timestamp {ts:?}")))?;
            }
            if fields.next().is_some() {
                return Err(err("trailing garbage after the sample".into()));
            }

            let family = family_of(&exp.families, &by_name, &name);
            let idx = match family {
                Some(idx) => idx,
                None => {
                    // An untyped sample without HELP/TYPE: a family of its own.
                    exp.families.push(Family { name: name.clone(), help: None, kind: None });
                    family_has_samples.push(false);
                    family_closed.push(false);
                    by_name.insert(name.clone(), exp.families.len() - 1);
                    exp.families.len() - 1
                }
            };
            if family_closed[idx] {
                return Err(err(format!("samples of family {} are not contiguous", exp.families[idx].name)));
            }
            if let Some(cur) = current {
                if cur != idx {
                    family_closed[cur] = true;
                }
            }
            current = Some(idx);
            family_has_samples[idx] = true;

            let fam = &exp.families[idx];
            match fam.kind.as_deref() {
                Some("histogram") => {
                    if name == format!("{}_bucket", fam.name) {
                        let le = labels.get("le").ok_or_else(|| err("histogram bucket without le".into()))?;
                        parse_value(le).ok_or_else(|| err(format!("bad le {le:?}")))?;
                    } else if name == fam.name {
                        return Err(err("histogram sample without _bucket/_sum/_count suffix".into()));
                    } else if labels.contains_key("le") {
                        return Err(err("le label outside _bucket".into()));
                    }
                }
                Some("summary") if name == fam.name && !labels.contains_key("quantile") => {
                    return Err(err("summary sample without quantile".into()));
                }
                _ => {}
            }

            let key = series_key(&name, labels.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            if exp.index.insert(key.clone(), exp.samples.len()).is_some() {
                return Err(err(format!("duplicate series {key}")));
            }
            exp.samples.push(Sample { name, labels, value, family: idx });
        }
        Ok(exp)
    }

    pub fn family(&self, name: &str) -> Option<&Family> {
        self.families.iter().find(|f| f.name == name)
    }

    /// The value of the series with exactly this label set.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.index.get(&series_key(name, labels.iter().copied())).map(|&i| self.samples[i].value)
    }

    /// Like `value`, panicking with the series list when the series is absent.
    pub fn expect(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or_else(|| {
            panic!(
                "series {} not in the exposition; series named {name}: {:?}",
                series_key(name, labels.iter().copied()),
                self.samples_named(name).map(|s| &s.labels).collect::<Vec<_>>()
            )
        })
    }

    /// The `(le, count)` buckets of histogram `name` for this label set (without
    /// `le`), sorted by `le`.
    pub fn buckets(&self, name: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
        let bucket = format!("{name}_bucket");
        let mut out: Vec<(f64, f64)> = self
            .samples_named(&bucket)
            .filter(|s| {
                s.labels.len() == labels.len() + 1
                    && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .filter_map(|s| Some((parse_value(s.labels.get("le")?)?, s.value)))
            .collect();
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        out
    }

    /// Sum over every series called `name` (any labels).
    pub fn sum(&self, name: &str) -> f64 {
        self.samples_named(name).map(|s| s.value).sum()
    }

    pub fn samples_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// Histogram invariants on one body, for every histogram family: per label set the
    /// buckets, sorted by `le`, are non-decreasing, the `+Inf` bucket exists and equals
    /// `_count`, and `_sum` exists. Returns the violations (empty when all hold).
    pub fn check_histograms(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (fi, fam) in self.families.iter().enumerate() {
            if fam.kind.as_deref() != Some("histogram") {
                continue;
            }
            let bucket = format!("{}_bucket", fam.name);
            let count = format!("{}_count", fam.name);
            let sum = format!("{}_sum", fam.name);
            // label set without le -> [(le, value)]
            let mut sets: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
            for s in self.samples.iter().filter(|s| s.family == fi && s.name == bucket) {
                let mut rest = s.labels.clone();
                let le = parse_value(&rest.remove("le").unwrap()).unwrap();
                sets.entry(rest).or_default().push((le, s.value));
            }
            for (labels, mut buckets) in sets {
                let lbl: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let what = series_key(&fam.name, lbl.iter().copied());
                buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                for w in buckets.windows(2) {
                    if w[1].1 < w[0].1 {
                        problems.push(format!(
                            "{what}: bucket le={} has {} < bucket le={} with {}",
                            w[1].0, w[1].1, w[0].0, w[0].1
                        ));
                    }
                }
                let inf = buckets.last().filter(|b| b.0 == f64::INFINITY).map(|b| b.1);
                match (inf, self.value(&count, &lbl)) {
                    (None, _) => problems.push(format!("{what}: no le=\"+Inf\" bucket")),
                    (_, None) => problems.push(format!("{what}: no _count")),
                    (Some(i), Some(c)) if i != c => problems.push(format!("{what}: +Inf bucket {i} != _count {c}")),
                    _ => {}
                }
                if self.value(&sum, &lbl).is_none() {
                    problems.push(format!("{what}: no _sum"));
                }
            }
            for s in self.samples.iter().filter(|s| s.family == fi && s.name == count) {
                let mut with_inf: Vec<(&str, &str)> = s.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                with_inf.push(("le", "+Inf"));
                if self.value(&bucket, &with_inf).is_none() {
                    problems.push(format!("{}: _count without buckets", series_key(&count, with_inf)));
                }
            }
        }
        problems
    }

    /// Series whose value may only grow: counters, histogram buckets and counts,
    /// summary counts.
    fn monotonic_series(&self) -> impl Iterator<Item = &Sample> {
        self.samples.iter().filter(|s| {
            let fam = &self.families[s.family];
            match fam.kind.as_deref() {
                Some("counter") => true,
                Some("histogram") => s.name != format!("{}_sum", fam.name),
                Some("summary") => s.name == format!("{}_count", fam.name),
                _ => false,
            }
        })
    }
}

/// Counters never decrease (and never vanish) from one scrape to the next. Prometheus
/// reads any decrease as a counter reset, so even one ulp is reported.
pub fn check_monotonic(prev: &Exposition, next: &Exposition) -> Vec<String> {
    let mut problems = Vec::new();
    for s in prev.monotonic_series() {
        let key = series_key(&s.name, s.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        match next.index.get(&key).map(|&i| next.samples[i].value) {
            None => problems.push(format!("{key} vanished (was {})", s.value)),
            Some(v) if v < s.value => problems.push(format!("{key} decreased from {} to {v}", s.value)),
            _ => {}
        }
    }
    problems
}

/// A label block as written, in order.
pub type Labels = Vec<(String, String)>;

fn label_map(labels: Labels) -> Result<BTreeMap<String, String>, String> {
    let mut map = BTreeMap::new();
    for (k, v) in labels {
        if map.insert(k.clone(), v).is_some() {
            return Err(format!("duplicate label {k}"));
        }
    }
    Ok(map)
}

/// `name`, `{labels}` (in order) and the rest of a sample line, from the blank before
/// the value on. `strict`: no blanks inside the label block, no reserved label names.
fn parse_sample_head(line: &str, strict: bool) -> Result<(String, Labels, &str), String> {
    let blanks: &[char] = if strict { &[] } else { &[' ', '\t'] };
    let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return Err(format!("invalid metric name {name:?}"));
    }
    let mut labels: Labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(mut r) = rest.strip_prefix('{') {
        loop {
            r = r.trim_start_matches(blanks);
            if let Some(after) = r.strip_prefix('}') {
                if strict {
                    return Err("an empty label block or a comma before the closing brace".into());
                }
                rest = after;
                break;
            }
            let eq = r.find('=').ok_or("label without '='")?;
            let lname = r[..eq].trim_end_matches(blanks);
            if !is_label_name(lname, !strict) {
                return Err(format!("invalid label name {lname:?}"));
            }
            if labels.iter().any(|(n, _)| n == lname) {
                return Err(format!("duplicate label {lname}"));
            }
            r = r[eq + 1..].trim_start_matches(blanks);
            r = r.strip_prefix('"').ok_or("label value not quoted")?;
            let close = find_closing_quote(r).ok_or("unterminated label value")?;
            labels.push((lname.to_string(), unescape(&r[..close], true)?));
            r = r[close + 1..].trim_start_matches(blanks);
            if let Some(after) = r.strip_prefix(',') {
                r = after;
            } else if let Some(after) = r.strip_prefix('}').filter(|_| strict) {
                rest = after;
                break;
            } else if !r.starts_with('}') {
                return Err("expected ',' or '}' after a label".into());
            }
        }
    }
    if !rest.starts_with([' ', '\t']) {
        return Err("no blank between series and value".into());
    }
    Ok((name.to_string(), labels, rest))
}

fn find_closing_quote(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// Unescapes a label value or HELP text: `\\` and `\n` always; `quote` (label values,
/// OpenMetrics HELP): `\"` too, and a bare `"` is an error.
pub fn unescape(s: &str, quote: bool) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\n' => return Err("raw newline".into()),
            '"' if quote => return Err(format!("unescaped quote in {s:?}")),
            '\\' => match chars.next() {
                Some('\\') => out.push('\\'),
                Some('n') => out.push('\n'),
                Some('"') if quote => out.push('"'),
                other => {
                    return Err(format!("invalid escape \\{} in {s:?}", other.map(String::from).unwrap_or_default()))
                }
            },
            c => out.push(c),
        }
    }
    Ok(out)
}

fn family_of(families: &[Family], by_name: &HashMap<String, usize>, name: &str) -> Option<usize> {
    if let Some(&i) = by_name.get(name) {
        return Some(i);
    }
    for (suffix, kinds) in [
        ("_bucket", &["histogram"][..]),
        ("_count", &["histogram", "summary"][..]),
        ("_sum", &["histogram", "summary"][..]),
    ] {
        if let Some(base) = name.strip_suffix(suffix) {
            if let Some(&i) = by_name.get(base) {
                if families[i].kind.as_deref().is_some_and(|k| kinds.contains(&k)) {
                    return Some(i);
                }
            }
        }
    }
    None
}

// ---------------------------------------------------------------------------
// The strict reading: exactly what the renderer may write.

/// A sample line as written: labels in order, the value's text.
#[derive(Clone, Debug, PartialEq)]
pub struct StrictSample {
    pub name: String,
    pub labels: Labels,
    pub value: String,
}

impl StrictSample {
    /// The value (its spelling was checked when parsed).
    pub fn number(&self) -> f64 {
        parse_value(&self.value).expect("checked by parse_strict")
    }
}

/// One family of a strictly read body.
#[derive(Clone, Debug)]
pub struct StrictFamily {
    pub name: String,
    /// HELP text, unescaped.
    pub help: String,
    pub typ: String,
    pub samples: Vec<StrictSample>,
}

/// One sample line: `name[{l="v",...}] value`, nothing else.
fn strict_sample(line: &str) -> Result<StrictSample, String> {
    let (name, labels, rest) = parse_sample_head(line, true)?;
    let value = rest.strip_prefix(' ').ok_or("no single space before the value")?;
    if !is_go_float(value) {
        return Err(format!("bad value {value:?}"));
    }
    Ok(StrictSample { name, labels, value: value.to_string() })
}

/// The histogram samples of one family: per series, buckets with increasing `le`
/// ending at `+Inf`, then `_sum` and `_count`, all with the same labels, and
/// `_count` equal to the `+Inf` bucket.
fn strict_histogram(fam: &str, samples: &[StrictSample]) -> Result<(), String> {
    let (bucket, sum, count) = (format!("{fam}_bucket"), format!("{fam}_sum"), format!("{fam}_count"));
    let mut i = 0;
    while i < samples.len() {
        let base: Labels = match samples[i].labels.split_last() {
            Some((le, base)) if le.0 == "le" => base.to_vec(),
            _ => return Err(format!("{}: a bucket without le last", samples[i].name)),
        };
        let mut prev = f64::NEG_INFINITY;
        let inf = loop {
            let s = samples.get(i).ok_or("the buckets do not end with +Inf")?;
            if s.name != bucket
                || s.labels.len() != base.len() + 1
                || s.labels[..base.len()] != base[..]
                || s.labels[base.len()].0 != "le"
            {
                return Err(format!("expected a bucket of {base:?}, got {s:?}"));
            }
            let le = &s.labels[base.len()].1;
            if !is_go_float(le) {
                return Err(format!("bad le {le:?}"));
            }
            let b = parse_value(le).unwrap();
            if b.is_nan() || b <= prev {
                return Err(format!("le {le:?} does not increase"));
            }
            prev = b;
            i += 1;
            if b == f64::INFINITY {
                break s.value.clone();
            }
        };
        for want in [&sum, &count] {
            let s = samples.get(i).ok_or_else(|| format!("no {want} after the buckets"))?;
            if &s.name != want || s.labels != base {
                return Err(format!("expected {want} with {base:?}, got {s:?}"));
            }
            if want == &count && s.value != inf {
                return Err(format!("{want}{base:?} is {} but the +Inf bucket is {inf}", s.value));
            }
            i += 1;
        }
    }
    Ok(())
}

/// Parses a whole body strictly: only `# HELP`, `# TYPE`, sample lines and (in
/// OpenMetrics, last) `# EOF`; every family is HELP, TYPE, then at least one
/// sample of its own, and appears once; no sample name belongs to two families
/// and no series appears twice.
pub fn parse_strict(body: &[u8], om: bool) -> Result<Vec<StrictFamily>, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("not UTF-8: {e}"))?;
    if text.is_empty() && !om {
        // Nothing to show (a filter that matched nothing): an empty exposition.
        return Ok(Vec::new());
    }
    let text = text.strip_suffix('\n').ok_or("the body does not end with a newline")?;
    let lines: Vec<&str> = text.split('\n').collect();
    let mut fams: Vec<StrictFamily> = Vec::new();
    // Ordered sets, not hashed ones: std's hashers are randomly seeded, and
    // their probing would make the coverage of one fuzz input differ between runs.
    let mut owner: BTreeMap<String, String> = BTreeMap::new();
    let mut series: BTreeSet<(String, Labels)> = BTreeSet::new();
    let mut i = 0;
    while i < lines.len() {
        let at = |i: usize| format!("line {}: {:?}", i + 1, lines[i]);
        if lines[i] == "# EOF" {
            if !om || i + 1 != lines.len() {
                return Err(format!("{}: # EOF not as the last line of OpenMetrics", at(i)));
            }
            return Ok(fams);
        }
        let help = lines[i].strip_prefix("# HELP ").ok_or_else(|| format!("{}: expected # HELP", at(i)))?;
        let (name, help) = help.split_once(' ').ok_or_else(|| format!("{}: HELP without text", at(i)))?;
        if !is_metric_name(name) {
            return Err(format!("{}: bad family name", at(i)));
        }
        let help = unescape(help, om).map_err(|e| format!("{}: {e}", at(i)))?;
        i += 1;
        let typ = lines
            .get(i)
            .and_then(|l| l.strip_prefix("# TYPE "))
            .ok_or_else(|| format!("line {}: no # TYPE after # HELP {name}", i + 1))?;
        let typ = match typ.split_once(' ') {
            Some((n, t)) if n == name && matches!(t, "counter" | "gauge" | "histogram") => t,
            _ => return Err(format!("{}: bad TYPE for {name}", at(i))),
        };
        if fams.iter().any(|f| f.name == name) {
            return Err(format!("{}: family {name} appears twice (families are not contiguous)", at(i)));
        }
        i += 1;
        let mut samples = Vec::new();
        while i < lines.len() && !lines[i].starts_with('#') {
            samples.push(strict_sample(lines[i]).map_err(|e| format!("{}: {e}", at(i)))?);
            i += 1;
        }
        if samples.is_empty() {
            return Err(format!("family {name} has no samples"));
        }
        let allowed: Vec<String> = match (typ, om) {
            ("counter", true) => vec![format!("{name}_total")],
            ("histogram", _) => ["_bucket", "_sum", "_count"].iter().map(|s| format!("{name}{s}")).collect(),
            _ => vec![name.to_string()],
        };
        for s in &samples {
            if !allowed.contains(&s.name) {
                return Err(format!("sample {} in family {name} ({typ})", s.name));
            }
            if let Some(f) = owner.insert(s.name.clone(), name.to_string()) {
                if f != name {
                    return Err(format!("sample name {} in families {f} and {name}", s.name));
                }
            }
            if !series.insert((s.name.clone(), s.labels.clone())) {
                return Err(format!("series {}{:?} twice", s.name, s.labels));
            }
        }
        if typ == "histogram" {
            strict_histogram(name, &samples).map_err(|e| format!("histogram {name}: {e}"))?;
        }
        fams.push(StrictFamily { name: name.to_string(), help, typ: typ.to_string(), samples });
    }
    if om {
        return Err("OpenMetrics body without # EOF".into());
    }
    Ok(fams)
}
