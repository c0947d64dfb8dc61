//! Families defined in init_worker_by_lua — once per worker, as nginx-lua-prometheus
//! users write it — are one family each in the exposition, with exact counts.

use std::time::Duration;
use testkit::harness::gateway::{self, assert_exact, assert_self_metrics};
use testkit::harness::*;

const REQUESTS: u64 = 20_000;
const WORKERS: usize = 4;

/// nginx-lua-prometheus's default buckets, which the README documents as ours.
const DEFAULT_BUCKETS: [f64; 19] =
    [0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 10.0];

#[test]
fn worker_init_definitions() {
    let nginx = Nginx::start("worker_init", &[("WORKERS", &WORKERS.to_string())]);
    let r = load(nginx.port, |i| gateway::path("/logged", i), REQUESTS, 16);
    assert_eq!((r.ok, r.failed, r.unknown), (REQUESTS, 0, 0), "load outcome; first failures: {:?}", r.samples);
    let (body, exp) = scrape_until(nginx.metrics_port, Duration::from_secs(10), |e| gateway::reached(e, r.ok));

    for (family, kind) in [
        (gateway::REQUESTS, "counter"),
        (gateway::LATENCY, "histogram"),
        (gateway::COST, "counter"),
        (gateway::INFLIGHT, "gauge"),
    ] {
        // Exposition::parse already refuses a second HELP/TYPE or a split family; count
        // the lines too, so this test says it in its own words.
        for keyword in ["HELP", "TYPE"] {
            let lines = body.lines().filter(|l| l.starts_with(&format!("# {keyword} {family} "))).count();
            assert_eq!(lines, 1, "# {keyword} lines for {family}");
        }
        assert_eq!(exp.family(family).and_then(|f| f.kind.as_deref()), Some(kind), "type of {family}");
    }
    let les: Vec<f64> = exp.buckets(gateway::LATENCY, gateway::REQUEST_LABELS).iter().map(|b| b.0).collect();
    let mut want = DEFAULT_BUCKETS.to_vec();
    want.push(f64::INFINITY);
    assert_eq!(les, want, "default buckets");
    assert_exact(&exp, r.ok);
    assert_self_metrics(&exp, WORKERS);
    promtool_check(&body).unwrap();
    nginx.assert_no_errors(&[]);
}
