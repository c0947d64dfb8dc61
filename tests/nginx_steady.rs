//! Steady load: 200,000 requests while /metrics is scraped back-to-back. Every count
//! must be exact, every scraped body valid (own parser + promtool), counters must
//! never go down, histograms must be consistent in every single scrape.

use std::time::Duration;
use testkit::harness::gateway::{self, assert_exact, assert_self_metrics, report_scrapes};
use testkit::harness::*;

const REQUESTS: u64 = 200_000;
const CONCURRENCY: usize = 32;

fn steady(workers: usize) {
    let nginx = Nginx::start("basic", &[("WORKERS", &workers.to_string())]);
    let scrapes = ScrapeLoop::start(nginx.metrics_port, "/metrics");
    let r = load(nginx.port, |i| gateway::path("/logged", i), REQUESTS, CONCURRENCY);
    let s = scrapes.stop();
    report!("steady {workers} workers: {REQUESTS} requests in {:?} ({} connections)", r.elapsed, r.connections);
    report_scrapes(&format!("steady {workers} workers"), &s);

    assert_eq!((r.ok, r.failed, r.unknown), (REQUESTS, 0, 0), "load outcome; first failures: {:?}", r.samples);
    // Recording runs in the log phase, after the client has its response: wait until
    // the last requests are in, then compare exactly.
    let (body, exp) = scrape_until(nginx.metrics_port, Duration::from_secs(10), |e| gateway::reached(e, r.ok));
    assert_exact(&exp, r.ok);
    assert_eq!(exp.expect(gateway::INFLIGHT, &[]), 0.0, "a family without labels shows 0");
    assert_self_metrics(&exp, workers);
    promtool_check(&body).unwrap();
    assert!(exp.check_histograms().is_empty(), "{:?}", exp.check_histograms());
    s.assert_clean();
    nginx.assert_no_errors(&[]);
}

#[test]
fn steady_2_workers() {
    steady(2);
}

#[test]
fn steady_4_workers() {
    steady(4);
}
