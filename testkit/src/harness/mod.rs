//! Harness for the nginx integration tests (`tests/nginx_*.rs`): start nginx from a
//! template in `nginx-test-conf/`, load it, scrape `/metrics`, check what comes back.
//!
//! - `nginx`: render a template into a temp prefix, start/reload/kill/stop nginx
//! - `http`: a small HTTP/1.1 client and the load generator
//! - `scrape`: a back-to-back `/metrics` scrape loop checking every body
//! - `expo`: the exposition reader, from testkit (`testkit::expo`)
//! - `promtool`: `promtool check metrics`, batched
//! - `prometheus`: a real Prometheus server, its query API, PromQL reference arithmetic
//! - `gateway`: what the `basic` and `worker_init` scenarios record, and the exact checks
//!
//! Behind testkit's `harness` feature (the main crate's dev-dependency turns it on),
//! so that the fuzz targets, which depend on testkit too, do not build it.

pub use crate::expo;
pub mod gateway;
pub mod http;
pub mod nginx;
pub mod prometheus;
pub mod promtool;
pub mod scrape;

pub use expo::{check_monotonic, Exposition};
pub use http::{get, get_with_headers, load, request_once, Conn, Load, LoadResult, Response};
pub use nginx::Nginx;
pub use promtool::{promtool_check, promtool_check_all, promtool_lint};
pub use scrape::{ScrapeLoop, Scrapes};
// `report!` is exported at testkit's root (`#[macro_export]`); here too, for the
// tests' `use testkit::harness::*`.
pub use crate::report;

use std::time::{Duration, Instant};

/// One GET of `/metrics` on `port`: asserts status 200 and the 0.0.4 Content-Type, and
/// returns the body with its parsed form.
pub fn scrape(port: u16) -> (String, Exposition) {
    let resp = get(port, "/metrics").unwrap_or_else(|e| panic!("GET /metrics on port {port}: {e}"));
    assert_eq!(resp.status, 200, "GET /metrics: {}", String::from_utf8_lossy(&resp.body));
    assert_eq!(resp.header("content-type"), Some(scrape::CONTENT_TYPE), "Content-Type of /metrics");
    let body = resp.text().to_string();
    let exp = Exposition::parse(&body).unwrap_or_else(|e| panic!("unparsable /metrics: {e}\n{body}"));
    (body, exp)
}

/// Scrapes until `done(exposition)` holds and returns that scrape; after `timeout`
/// returns the last scrape anyway, for the caller's exact assertions to explain.
///
/// Needed after load on a `log_by_lua` location: the client has its response before
/// the worker runs the log phase, so the last few counts can land a moment later.
/// Counters only grow, so waiting for "reached the expected value" cannot hide an
/// over-count: the caller still asserts equality.
pub fn scrape_until(port: u16, timeout: Duration, mut done: impl FnMut(&Exposition) -> bool) -> (String, Exposition) {
    let deadline = Instant::now() + timeout;
    loop {
        let (body, exp) = scrape(port);
        if done(&exp) || Instant::now() >= deadline {
            return (body, exp);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `a` and `b` equal within a relative tolerance.
pub fn assert_close(what: &str, got: f64, want: f64, rel: f64) {
    let scale = want.abs().max(f64::MIN_POSITIVE);
    assert!(
        (got - want).abs() / scale <= rel,
        "{what}: got {got}, want {want} (relative error {:e} > {rel:e})",
        (got - want).abs() / scale
    );
}

/// Prints a measurement line (visible with `--nocapture`, and in failing tests' output).
#[macro_export]
macro_rules! report {
    ($($arg:tt)*) => { eprintln!("[measure] {}", format!($($arg)*)) };
}
