//! The text encoder: Prometheus text format 0.0.4 and OpenMetrics 1.0.0. The
//! two differ only line by line (HELP escaping, counter names, `# EOF`), which
//! `expo` writes for the [`Format`] it is given; this file decides what lines
//! an exposition has.

use super::self_metrics::{self, SelfFamily};
use super::{Ctx, Encoder, Value};
use crate::expo::{self, Format};
use crate::layout::Kind;
use crate::registry::FamilyView;

fn as_str(b: &[u8]) -> &str {
    // Names were validated as ASCII at definition; a corrupt file gets "_".
    std::str::from_utf8(b).unwrap_or("_")
}

/// Names a family is exposed under: `(family name for HELP/TYPE, sample name)`.
///
/// They differ only for OpenMetrics counters, whose family name drops `_total`
/// and whose samples always carry it (`requests_total` → family `requests`;
/// a counter defined as `requests` still exposes `requests_total`).
pub fn om_names(name: &str, kind: Kind, format: Format) -> (String, String) {
    if format == Format::OpenMetrics && kind == Kind::Counter {
        let base = name.strip_suffix("_total").unwrap_or(name);
        return (base.to_string(), format!("{base}_total"));
    }
    (name.to_string(), name.to_string())
}

/// The encoder of one text exposition.
pub(crate) struct Exposition {
    format: Format,
    /// The current family's sample name and label names.
    sample_name: String,
    /// The current histogram family's `le` values, formatted once per family.
    les: Vec<Vec<u8>>,
}

impl Exposition {
    pub(crate) fn new(format: Format) -> Exposition {
        Exposition { format, sample_name: String::new(), les: Vec::new() }
    }

    fn self_family(&self, out: &mut Vec<u8>, ctx: &Ctx, f: &SelfFamily) {
        if f.samples.is_empty() || !ctx.filter.wants(f.name.as_bytes(), f.kind) {
            return;
        }
        let (family_name, sample_name) = om_names(&f.name, f.kind, self.format);
        expo::write_family_header(out, self.format, &family_name, f.help, f.kind.name());
        for (label, value, v) in &f.samples {
            let mut lbl = Vec::new();
            if !label.is_empty() {
                expo::write_label_pairs(&mut lbl, &[label], &[value.as_bytes()]);
            }
            expo::write_sample(out, &sample_name, "", &lbl, None, *v);
        }
    }
}

impl Encoder for Exposition {
    fn begin(&mut self, _out: &mut Vec<u8>) {}

    fn family_begin(&mut self, out: &mut Vec<u8>, family: &FamilyView, help: &[u8], _index: usize) {
        let (family_name, sample_name) = om_names(as_str(&family.name), family.kind, self.format);
        expo::write_family_header(out, self.format, &family_name, help, family.kind.name());
        self.sample_name = sample_name;
        self.les = family
            .bounds
            .iter()
            .map(|&b| {
                let mut le = Vec::with_capacity(24);
                expo::write_le(&mut le, b);
                le
            })
            .collect();
    }

    fn series(&mut self, out: &mut Vec<u8>, ctx: &mut Ctx, family: &FamilyView, id: u32, value: &Value) {
        let block = match ctx.labels.get(id as usize) {
            Some(Some(b)) => b,
            _ => {
                let key = ctx.region.series_key(id);
                let mut values: Vec<&[u8]> = Vec::with_capacity(family.labels.len());
                if !ctx.decode(id, &key, family.labels.len(), &mut values) {
                    return;
                }
                let label_names: Vec<&str> = family.labels.iter().map(|l| as_str(l)).collect();
                let mut b = Vec::new();
                expo::write_label_pairs(&mut b, &label_names, &values);
                if ctx.labels.len() <= id as usize {
                    ctx.labels.resize(id as usize + 1, None);
                }
                ctx.labels[id as usize] = Some(b.into_boxed_slice());
                ctx.labels[id as usize].as_ref().unwrap()
            }
        };
        let name = self.sample_name.as_str();
        match *value {
            Value::Scalar(v) => expo::write_sample(out, name, "", block, None, v),
            Value::Histogram { bounds, cells } => {
                let mut acc = 0.0;
                for (i, le) in self.les.iter().enumerate().take(bounds.len()) {
                    acc += cells[i];
                    expo::write_sample(out, name, "_bucket", block, Some(("le", le)), acc);
                }
                acc += cells[bounds.len()];
                expo::write_sample(out, name, "_bucket", block, Some(("le", b"+Inf")), acc);
                expo::write_sample(out, name, "_sum", block, None, cells[bounds.len() + 1]);
                expo::write_sample(out, name, "_count", block, None, acc);
            }
        }
    }

    fn family_end(&mut self, _out: &mut Vec<u8>) {}

    fn end(&mut self, out: &mut Vec<u8>, ctx: &mut Ctx) {
        for f in self_metrics::gather(ctx) {
            self.self_family(out, ctx, &f);
        }
        expo::write_body_end(out, self.format);
    }

    fn end_is_suffix(&self) -> bool {
        false
    }

    fn set_page(&mut self, _offset: u64, _limit: u64, _needle: &[u8], _started: bool) -> Result<(), String> {
        Err("paging is for the JSON view only".into())
    }
}
