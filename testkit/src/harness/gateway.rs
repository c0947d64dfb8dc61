//! What the `basic` and `worker_init` scenarios record (see nginx-test-conf/), and
//! the exact expectations derived from the requests a test sent.

use super::expo::Exposition;
use super::{assert_close, Scrapes};

pub const REQUESTS: &str = "gateway_requests_total";
pub const LATENCY: &str = "gateway_request_duration_seconds";
pub const COST: &str = "model_cost_usd_total";
pub const INFLIGHT: &str = "gateway_inflight_requests";
pub const REQUEST_LABELS: &[(&str, &str)] =
    &[("method", "GET"), ("path", "/v1/chat/completions"), ("namespace", "wechat")];
const COST_LABELS: &[(&str, &str)] = &[("model", "gpt-4"), ("namespace", "wechat")];
pub const COST_PER_REQUEST: f64 = 0.0042;

/// Latencies the requests ask to observe (`?v=`), cycled: bucket bounds themselves
/// (0.005, 0.1, 1: `le` means "less or equal"), values between bounds, one above the
/// largest bound (only `+Inf` counts it).
const OBSERVED: [&str; 8] = ["0.001", "0.005", "0.0123", "0.1", "0.3", "1", "7.5", "12"];

/// The path of request `i` to `location` (`/hit` or `/logged`).
pub fn path(location: &str, i: u64) -> String {
    format!("{location}?v={}", OBSERVED[(i % OBSERVED.len() as u64) as usize])
}

/// The observed value of request `i`.
pub fn observed(i: u64) -> f64 {
    OBSERVED[(i % OBSERVED.len() as u64) as usize].parse().unwrap()
}

/// The recorded totals in one exposition.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Totals {
    pub requests: f64,
    pub count: f64,
    pub cost: f64,
}

pub fn totals(exp: &Exposition) -> Totals {
    let count = format!("{LATENCY}_count");
    Totals {
        requests: exp.value(REQUESTS, REQUEST_LABELS).unwrap_or(0.0),
        count: exp.value(&count, REQUEST_LABELS).unwrap_or(0.0),
        cost: exp.value(COST, COST_LABELS).unwrap_or(0.0),
    }
}

/// True once every total has reached `n` requests' worth (used to wait out the log
/// phase; the exact assertions follow).
pub fn reached(exp: &Exposition, n: u64) -> bool {
    let t = totals(exp);
    t.requests >= n as f64 && t.count >= n as f64 && t.cost >= n as f64 * COST_PER_REQUEST * (1.0 - 1e-9)
}

/// Requests `0..n` (all answered 200) are recorded exactly: the counter, `_count`,
/// every bucket, `_sum` and the fractional cost.
pub fn assert_exact(exp: &Exposition, n: u64) {
    let t = totals(exp);
    assert_eq!(t.requests, n as f64, "{REQUESTS} vs requests answered 200");
    assert_eq!(t.count, n as f64, "{LATENCY}_count vs requests answered 200");
    assert_close(COST, t.cost, n as f64 * COST_PER_REQUEST, 1e-9);

    let buckets = exp.buckets(LATENCY, REQUEST_LABELS);
    assert!(buckets.len() >= 2, "{LATENCY}: buckets {buckets:?}");
    for &(le, got) in &buckets {
        let want = (0..OBSERVED.len() as u64)
            .filter(|&k| observed(k) <= le)
            .map(|k| (n + OBSERVED.len() as u64 - 1 - k) / OBSERVED.len() as u64) // #{i < n : i % 8 == k}
            .sum::<u64>();
        assert_eq!(got, want as f64, "{LATENCY}_bucket{{le=\"{le}\"}}");
    }
    let want_sum: f64 = (0..n).map(observed).sum();
    assert_close(&format!("{LATENCY}_sum"), exp.expect(&format!("{LATENCY}_sum"), REQUEST_LABELS), want_sum, 1e-9);
}

/// The self-metrics in a quiet state: present, no refused updates, series within
/// capacity, no dead worker slots (nothing was killed), live slots at most `workers`.
pub fn assert_self_metrics(exp: &Exposition, workers: usize) {
    for fam in
        ["shmetrics_errors_total", "shmetrics_series_used", "shmetrics_series_capacity", "shmetrics_worker_slots"]
    {
        assert!(exp.family(fam).is_some(), "self-metric {fam} missing");
    }
    let refused: Vec<_> = exp.samples_named("shmetrics_errors_total").filter(|s| s.value != 0.0).collect();
    assert!(refused.is_empty(), "refused updates: {refused:?}");
    let used = exp.expect("shmetrics_series_used", &[]);
    let capacity = exp.expect("shmetrics_series_capacity", &[]);
    assert!(used >= 1.0 && used <= capacity, "series used {used}, capacity {capacity}");
    assert_eq!(exp.expect("shmetrics_worker_slots", &[("state", "dead")]), 0.0, "dead worker slots");
    let live = exp.expect("shmetrics_worker_slots", &[("state", "live")]);
    // A worker takes a slot at its first update; which workers got connections is up
    // to the kernel, so only bounds are certain.
    assert!(live >= 1.0 && live <= workers as f64, "live worker slots {live} with {workers} workers");
}

/// Prints what a scrape loop saw (visible with --nocapture).
pub fn report_scrapes(what: &str, s: &Scrapes) {
    eprintln!(
        "[measure] {what}: {} scrapes in {:?} ({:.2} ms each), {} failed; promtool: {} runs in {:?}; lint warnings {:?}",
        s.count,
        s.elapsed,
        s.elapsed.as_secs_f64() * 1e3 / s.count.max(1) as f64,
        s.errors.len(),
        s.promtool_runs,
        s.promtool_time,
        s.promtool_warnings
    );
}
