//! The JSON view's encoder (the shape is in `crate::json`): user families
//! with their series and values, no self-metrics, optionally paged.

use super::{Ctx, Encoder, Value};
use crate::json::{write_number, write_string};
use crate::registry::FamilyView;

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

/// The encoder of one JSON view.
#[derive(Default)]
pub(crate) struct JsonView {
    /// A series of the current family was written (a comma goes before the
    /// next one; skipped series do not count).
    wrote_series: bool,
    page: Option<Page>,
    /// The series of the current family the page's needle selected so far.
    page_seen: u64,
}

impl Encoder for JsonView {
    fn begin(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"families\":[");
    }

    fn family_begin(&mut self, out: &mut Vec<u8>, family: &FamilyView, help: &[u8], index: usize) {
        if index > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"name\":");
        write_string(out, &family.name);
        out.extend_from_slice(b",\"type\":\"");
        out.extend_from_slice(family.kind.name().as_bytes());
        out.extend_from_slice(b"\",\"help\":");
        write_string(out, help);
        out.extend_from_slice(b",\"labels\":[");
        for (i, l) in family.labels.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_string(out, l);
        }
        out.extend_from_slice(b"],\"series\":[");
        self.wrote_series = false;
        self.page_seen = 0;
    }

    fn series(&mut self, out: &mut Vec<u8>, ctx: &mut Ctx, family: &FamilyView, id: u32, value: &Value) {
        let key = ctx.region.series_key(id);
        let mut values: Vec<&[u8]> = Vec::with_capacity(family.labels.len());
        if !ctx.decode(id, &key, family.labels.len(), &mut values) {
            return;
        }
        if let Some(p) = &self.page {
            if !p.needle.is_empty() && !values.iter().any(|v| contains(v, &p.needle)) {
                return;
            }
            let i = self.page_seen;
            self.page_seen += 1;
            if i < p.offset || i - p.offset >= p.limit {
                return;
            }
        }
        if self.wrote_series {
            out.push(b',');
        }
        self.wrote_series = true;
        out.extend_from_slice(b"{\"labels\":{");
        for (i, (n, v)) in family.labels.iter().zip(&values).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_string(out, n);
            out.push(b':');
            write_string(out, v);
        }
        out.push(b'}');
        match *value {
            Value::Scalar(v) => {
                out.extend_from_slice(b",\"value\":");
                write_number(out, v);
            }
            Value::Histogram { bounds, cells } => {
                out.extend_from_slice(b",\"buckets\":[");
                let mut acc = 0.0;
                for (i, b) in bounds.iter().enumerate() {
                    acc += cells[i];
                    out.push(b'[');
                    write_number(out, *b);
                    out.push(b',');
                    write_number(out, acc);
                    out.extend_from_slice(b"],");
                }
                acc += cells[bounds.len()];
                out.extend_from_slice(b"[\"+Inf\",");
                write_number(out, acc);
                out.extend_from_slice(b"]],\"sum\":");
                write_number(out, cells[bounds.len() + 1]);
                out.extend_from_slice(b",\"count\":");
                write_number(out, acc);
            }
        }
        out.push(b'}');
    }

    fn family_end(&mut self, out: &mut Vec<u8>) {
        out.push(b']');
        if self.page.is_some() {
            out.extend_from_slice(b",\"series_count\":");
            write_number(out, self.page_seen as f64);
        }
        out.push(b'}');
    }

    fn end(&mut self, out: &mut Vec<u8>, _ctx: &mut Ctx) {
        out.extend_from_slice(b"]}\n");
    }

    fn end_is_suffix(&self) -> bool {
        true
    }

    fn set_page(&mut self, offset: u64, limit: u64, needle: &[u8], started: bool) -> Result<(), String> {
        if started {
            return Err("paging must be set before the first chunk".into());
        }
        self.page = Some(Page { offset, limit, needle: needle.to_vec() });
        Ok(())
    }
}
