//! Counts across a reload (SIGHUP) and across a worker killed with SIGKILL, under load
//! and while /metrics is scraped back-to-back.

use std::time::Duration;
use testkit::harness::gateway::{self, report_scrapes, totals, COST_PER_REQUEST};
use testkit::harness::*;

const REQUESTS: u64 = 100_000;
const CONCURRENCY: usize = 16;
const LOAD_TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn reload_keeps_counts() {
    let nginx = Nginx::start("basic", &[("WORKERS", "2")]);
    let scrapes = ScrapeLoop::start(nginx.metrics_port, "/metrics");
    // Both recording phases: even requests count in the content phase, odd ones in
    // the log phase.
    let load = Load::spawn(
        nginx.port,
        |i| gateway::path(if i % 2 == 0 { "/hit" } else { "/logged" }, i),
        REQUESTS,
        CONCURRENCY,
    );
    load.wait_for(REQUESTS / 2, LOAD_TIMEOUT);
    let old = nginx.reload();
    let r = load.join();
    nginx.wait_old_workers_gone(&old);
    let s = scrapes.stop();
    report!(
        "reload: {REQUESTS} requests in {:?}: ok {} unknown {} resent {} connections {}",
        r.elapsed,
        r.ok,
        r.unknown,
        r.resent,
        r.connections
    );
    report_scrapes("reload", &s);

    assert_eq!(r.failed, 0, "non-200 responses: {:?}", r.samples);
    assert_eq!(r.ok + r.unknown, REQUESTS);
    // Exact, not a range. A reload stops old workers gracefully: a request a worker has
    // read is served to the end — counted, answered 200, logged. An old worker closes
    // only idle keep-alive connections, without reading what may have arrived on them.
    // So a request that got no response ("unknown": the client wrote it just as its
    // idle connection was closed) was never processed, and every 200 was counted once.
    let (_, exp) = scrape_until(nginx.metrics_port, Duration::from_secs(10), |e| gateway::reached(e, r.ok));
    let t = totals(&exp);
    assert_eq!(t.requests, r.ok as f64, "requests recorded vs answered 200 ({} unknown)", r.unknown);
    assert_eq!(t.count, r.ok as f64, "histogram _count vs answered 200");
    assert_close(gateway::COST, t.cost, r.ok as f64 * COST_PER_REQUEST, 1e-9);
    assert_eq!(exp.expect(gateway::INFLIGHT, &[]), 0.0, "every /hit's inc(1) had its inc(-1)");
    assert_eq!(exp.expect("shmetrics_errors_total", &[("reason", "no_slot")]), 0.0);
    // A scrape can fail when an old worker closes the scrape loop's idle connection
    // just as it is reused: at most once per old worker.
    s.assert_clean_allowing_errors(old.len());
    nginx.assert_no_errors(&[]);
}

#[test]
fn kill_worker_keeps_counts() {
    let nginx = Nginx::start("basic", &[("WORKERS", "2")]);
    let scrapes = ScrapeLoop::start(nginx.metrics_port, "/metrics");
    let load = Load::spawn(nginx.port, |i| gateway::path("/hit", i), REQUESTS, CONCURRENCY);
    load.wait_for(REQUESTS / 2, LOAD_TIMEOUT);
    let victim = nginx.worker_pids()[0];
    nginx.kill_worker(victim);
    nginx.wait_respawn();
    let r = load.join();
    let s = scrapes.stop();
    report!(
        "kill -9: {REQUESTS} requests in {:?}: ok {} unknown {} resent {} connections {}",
        r.elapsed,
        r.ok,
        r.unknown,
        r.resent,
        r.connections
    );
    report_scrapes("kill -9", &s);

    assert_eq!(r.failed, 0, "non-200 responses: {:?}", r.samples);
    assert_eq!(r.ok + r.unknown, REQUESTS);
    // /hit records before it answers, so every 200 was recorded before the kill could
    // take it: nothing answered may be missing (ok <= total). A request whose
    // connection died may or may not have been recorded, and nothing is sent twice
    // (total <= ok + unknown). Each family is bounded on its own: the kill can fall
    // between the three updates of one request.
    let (_, exp) = scrape(nginx.metrics_port);
    let t = totals(&exp);
    let (lo, hi) = (r.ok as f64, (r.ok + r.unknown) as f64);
    report!("kill -9: recorded {} with {} answered 200 and {} unknown", t.requests, r.ok, r.unknown);
    assert!(lo <= t.requests && t.requests <= hi, "requests recorded {} not in [{lo}, {hi}]", t.requests);
    assert!(lo <= t.count && t.count <= hi, "histogram _count {} not in [{lo}, {hi}]", t.count);
    let slack = 1e-9 * hi * COST_PER_REQUEST;
    assert!(
        lo * COST_PER_REQUEST - slack <= t.cost && t.cost <= hi * COST_PER_REQUEST + slack,
        "cost {} not in [{}, {}]",
        t.cost,
        lo * COST_PER_REQUEST,
        hi * COST_PER_REQUEST
    );
    // Counters never went down across the kill (checked on every consecutive pair of
    // scrapes); the scrape in flight on the killed worker may fail.
    s.assert_clean_allowing_errors(1);
    nginx.assert_no_errors(&["exited on signal 9"]);
}
