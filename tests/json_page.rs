//! The JSON view's paging (`shmetrics_render_page`, used by the status page): per
//! family a bounded window of series, a label-value filter, and the count.

use serde_json::Value;
use shmetrics::layout::*;
use shmetrics::region::{self, Opened, Region};
use shmetrics::registry::FamilyDef;
use shmetrics::scrape::{Filter, Render};
use testkit::shm::Shm;

fn region(test: &str) -> (&'static Region, Shm) {
    let shm = Shm::new(&format!("ut-page-{test}"));
    let p =
        Params { max_series: 1000, max_families: 8, max_slots: 4, max_label_bytes: 64, max_cells: 0, arena_bytes: 0 };
    let (r, how) = region::open(&shm.path, p, false).unwrap();
    assert_eq!(how, Opened::Created);
    (r, shm)
}

fn define(r: &Region, kind: u32, name: &str, labels: &[&str], bounds: &[f64]) -> u32 {
    let labels: Vec<&[u8]> = labels.iter().map(|l| l.as_bytes()).collect();
    r.define_family(&FamilyDef { kind, name: name.as_bytes(), help: b"h", labels: &labels, bounds, max_series: 0 })
        .unwrap()
}

fn json(r: &'static Region, page: Option<(u64, u64, &[u8])>, hint: usize) -> Value {
    let mut it = Render::json(r, Filter::all());
    if let Some((offset, limit, needle)) = page {
        it.set_page(offset, limit, needle).unwrap();
    }
    let mut body = Vec::new();
    while it.next_chunk(hint) {
        body.extend_from_slice(&it.buf);
        assert!(it.set_page(0, 1, b"").is_err(), "paging accepted after the first chunk");
    }
    serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&body)))
}

fn ids(fam: &Value) -> Vec<String> {
    fam["series"].as_array().unwrap().iter().map(|s| s["labels"]["id"].as_str().unwrap().to_string()).collect()
}

#[test]
fn pages_filters_and_counts() {
    let (r, _shm) = region("main");
    let c = define(r, KIND_COUNTER, "c_total", &["id"], &[]);
    let h = define(r, KIND_HISTOGRAM, "h_seconds", &["id"], &[0.1, 1.0]);
    for i in 0..250 {
        r.series_cell(c, &[format!("s{i}").as_bytes()]).unwrap();
    }
    for i in 0..3 {
        r.series_cell(h, &[format!("s{i}").as_bytes()]).unwrap();
    }
    // Without paging: no series_count (the view's shape is unchanged).
    let all = json(r, None, 1 << 20);
    assert_eq!(all["families"][0]["series"].as_array().unwrap().len(), 250);
    assert!(all["families"][0].get("series_count").is_none());

    for hint in [1, 100, 1 << 20] {
        let v = json(r, Some((0, 0, b"")), hint);
        assert_eq!(v["families"][0]["series_count"], 250, "hint {hint}");
        assert_eq!(v["families"][1]["series_count"], 3);
        assert!(ids(&v["families"][0]).is_empty());

        let v = json(r, Some((100, 50, b"")), hint);
        let want: Vec<String> = (100..150).map(|i| format!("s{i}")).collect();
        assert_eq!(ids(&v["families"][0]), want, "hint {hint}");
        assert_eq!(v["families"][0]["series_count"], 250);
        assert!(ids(&v["families"][1]).is_empty(), "offset 100 is past the histogram's 3 series");

        // "s2" is in s2, s20..s29, s200..s249: 1 + 10 + 50 = 61; the sixth is s24.
        let v = json(r, Some((5, 3, b"s2")), hint);
        assert_eq!(ids(&v["families"][0]), ["s24", "s25", "s26"], "hint {hint}");
        assert_eq!(v["families"][0]["series_count"], 61);
        assert_eq!(v["families"][1]["series_count"], 1);

        let v = json(r, Some((0, 1000, b"nothing")), hint);
        assert_eq!(v["families"][0]["series_count"], 0);
        assert!(ids(&v["families"][0]).is_empty());
    }
}

#[test]
fn paging_is_for_the_json_view_only() {
    let (r, _shm) = region("text");
    let mut it = Render::new(r, shmetrics::expo::Format::Text004);
    assert!(it.set_page(0, 10, b"").is_err());
}
