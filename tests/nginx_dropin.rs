//! nginx-lua-prometheus's own integration scenario, played against shmetrics with
//! that library's configuration style (nginx-test-conf/dropin.conf): 4 workers,
//! nine concurrent clients per scenario, exact totals per (host, path, status),
//! and a gauge set and reset from any worker, read back from any worker.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex, RwLock};
use std::thread;
use std::time::{Duration, Instant};
use testkit::harness::*;

const WORKERS: usize = 4;
const CLIENTS: usize = 9;
const SCENARIO: Duration = Duration::from_secs(3);
const BUCKETS: [f64; 15] =
    [0.08, 0.089991, 0.1, 0.2, 0.75, 1.0, 1.5, 3.123232001, 5.0, 15.0, 120.0, 350.5, 1500.0, 75000.0, 1500000.0];
const PROMETHEUS_ACCEPT: &str =
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// One request on a fresh connection with its own Host header; the status code.
fn request(port: u16, host: &str, path: &str) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read response");
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok());
    status.unwrap_or_else(|| panic!("no status line in {out:?}"))
}

/// A small xorshift generator per client: the test needs variety, not quality.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn start() -> (Nginx, u16) {
    let reset_port = nginx::free_port();
    let nginx = Nginx::start("dropin", &[("WORKERS", &WORKERS.to_string()), ("RESET_PORT", &reset_port.to_string())]);
    (nginx, reset_port)
}

/// Answers counted by (host, path, status).
type Tally = BTreeMap<(String, String, u16), u64>;

#[test]
fn incumbent_traffic_scenario() {
    let (nginx, _) = start();
    let port = nginx.port;
    let tally: Arc<Mutex<Tally>> = Arc::default();
    let end = Instant::now() + SCENARIO;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let tally = tally.clone();
            thread::spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (c as u64 + 1));
                let mut mine: BTreeMap<(String, String, u16), u64> = BTreeMap::new();
                while Instant::now() < end {
                    let host = format!("client{}.example", rng.next() % 3);
                    let path = ["/fast", "/slow", "/error"][(rng.next() % 3) as usize];
                    let status = request(port, &host, path);
                    *mine.entry((host, path.to_string(), status)).or_default() += 1;
                }
                let mut t = tally.lock().unwrap();
                for (k, n) in mine {
                    *t.entry(k).or_default() += n;
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client thread");
    }
    let tally = tally.lock().unwrap().clone();
    let total: u64 = tally.values().sum();
    assert!(total > 100, "only {total} requests in {SCENARIO:?}");
    for (_, path, status) in tally.keys() {
        let want = if path == "/error" { 500 } else { 200 };
        assert_eq!(*status, want, "status of {path}");
    }

    // The log phase runs after the answer: wait until every request is counted.
    let counted = |e: &Exposition| e.samples_named("requests_total").map(|s| s.value).sum::<f64>() == total as f64;
    let (body, exp) = scrape_until(nginx.metrics_port, Duration::from_secs(10), counted);
    for ((host, path, status), n) in &tally {
        let status = status.to_string();
        let labels = [("host", host.as_str()), ("path", path.as_str()), ("status", status.as_str())];
        assert_eq!(exp.value("requests_total", &labels), Some(*n as f64), "requests_total{labels:?}");
    }
    assert_eq!(exp.samples_named("requests_total").count(), tally.len(), "no other requests_total series");

    let per_path = |path: &str| tally.iter().filter(|(k, _)| k.1 == path).map(|(_, n)| *n).sum::<u64>() as f64;
    for path in ["/fast", "/slow", "/error"] {
        let labels = [("path", path)];
        let les: Vec<f64> = exp.buckets("request_duration_seconds", &labels).iter().map(|b| b.0).collect();
        let mut want = BUCKETS.to_vec();
        want.push(f64::INFINITY);
        assert_eq!(les, want, "bucket boundaries of {path}");
        assert_eq!(exp.value("request_duration_seconds_count", &labels), Some(per_path(path)), "count of {path}");
    }
    // request_time has millisecond resolution; the slow requests sleep at least 10 ms.
    let slow_sum = exp.expect("request_duration_seconds_sum", &[("path", "/slow")]);
    assert!(slow_sum >= 0.01 * per_path("/slow"), "slow _sum {slow_sum} for {} requests", per_path("/slow"));
    let fast_sum = exp.expect("request_duration_seconds_sum", &[("path", "/fast")]);
    assert!(fast_sum < 0.005 * per_path("/fast"), "fast _sum {fast_sum} for {} requests", per_path("/fast"));
    let bytes = exp.expect("nginx_http_request_size_bytes", &[]);
    assert!(bytes >= 40.0 * total as f64, "request bytes {bytes} for {total} requests");

    // The error counter exists (and nothing went wrong); the connection gauges
    // were set from ngx.var strings.
    assert_eq!(exp.value("nginx_metric_errors_total", &[]), Some(0.0), "error counter");
    for state in ["reading", "waiting", "writing"] {
        assert!(exp.value("connections", &[("state", state)]).is_some(), "connections{{state={state}}} in\n{body}");
    }
    assert!(exp.expect("connections", &[("state", "writing")]) >= 1.0, "the scrape itself is writing");
    promtool_check(&body).unwrap();

    // Prometheus prefers OpenMetrics, which would rename the counter without
    // _total: it gets text 0.0.4, and the log says why.
    let r = get_with_headers(nginx.metrics_port, "/metrics", &[("Accept", PROMETHEUS_ACCEPT)]).unwrap();
    assert_eq!(r.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    assert!(r.text().contains("\nnginx_http_request_size_bytes "), "stored name kept");
    let log = nginx.error_log();
    assert!(
        log.contains("counter \"nginx_http_request_size_bytes\" lacks the _total suffix"),
        "negotiation not explained in error.log:\n{log}"
    );
    nginx.assert_no_errors(&[]);
}

#[test]
fn incumbent_reset_scenario() {
    let (nginx, reset_port) = start();
    let metrics_port = nginx.metrics_port;
    // A client resetting the gauge does so alone: the others hold the read side
    // while they set and check their own series.
    let gate = Arc::new(RwLock::new(()));
    let end = Instant::now() + SCENARIO;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let gate = gate.clone();
            thread::spawn(move || {
                let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ (c as u64 + 1));
                let label = format!("client{c}");
                let (mut checks, mut resets) = (0u64, 0u64);
                while Instant::now() < end {
                    if c == 0 && rng.next() % 10 == 0 {
                        let _alone = gate.write().unwrap();
                        assert_eq!(request(reset_port, "reset", "/reset_gauge"), 200);
                        let (body, exp) = scrape(metrics_port);
                        assert_eq!(exp.samples_named("reset_test").count(), 0, "series left after reset:\n{body}");
                        resets += 1;
                        continue;
                    }
                    let _shared = gate.read().unwrap();
                    let value = format!("{}.{}", rng.next() % 100_000, rng.next() % 1000);
                    let path = format!("/set_gauge?labelvalue={label}&metricvalue={value}");
                    assert_eq!(request(reset_port, "reset", &path), 200);
                    let (body, exp) = scrape(metrics_port);
                    let want: f64 = value.parse().unwrap();
                    assert_eq!(
                        exp.value("reset_test", &[("label", &label)]),
                        Some(want),
                        "{label} after set {value}:\n{body}"
                    );
                    checks += 1;
                }
                (checks, resets)
            })
        })
        .collect();
    let (mut checks, mut resets) = (0, 0);
    for c in clients {
        let (k, r) = c.join().expect("client thread");
        checks += k;
        resets += r;
    }
    assert!(checks >= 50 && resets >= 1, "{checks} checks and {resets} resets in {SCENARIO:?}");

    // Misuse on one keep-alive connection (one worker): counted every time, in
    // both error counters; logged once per (metric, reason) within the interval.
    let mut conn = Conn::connect(reset_port).unwrap();
    const MISUSE: usize = 20;
    for _ in 0..MISUSE {
        assert_eq!(conn.get("/misuse").unwrap().status, 200);
    }
    assert_eq!(conn.get("/log_error").unwrap().status, 200);
    let (_, exp) = scrape(metrics_port);
    assert_eq!(exp.value("shmetrics_errors_total", &[("reason", "value_type")]), Some(MISUSE as f64));
    assert_eq!(exp.value("shmetrics_errors_total", &[("reason", "label_count")]), Some(MISUSE as f64));
    assert_eq!(exp.value("nginx_metric_errors_total", &[]), Some(2.0 * MISUSE as f64 + 1.0));
    let log = nginx.error_log();
    let lines = |needle: &str| log.lines().filter(|l| l.contains("[error]") && l.contains(needle)).count();
    assert_eq!(
        lines("reset_test: value must be a number, got string \"not a number\" (reason value_type)"),
        1,
        "{log}"
    );
    assert_eq!(lines("requests_total needs 3 label values, got 1 (reason label_count)"), 1, "{log}");
    assert_eq!(lines("cannot set reset_test to x: a test error"), 1, "{log}");
    nginx.assert_no_errors(&["(reason value_type)", "(reason label_count)", "a test error"]);
}
