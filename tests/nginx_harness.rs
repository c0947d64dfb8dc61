//! Tests of the test harness itself (testkit/src/harness/): each checker must be able to fail,
//! and the load generator's counts must match what nginx logged. Uses
//! `nginx-test-conf/harness.conf`, which needs ngx_lua but not libshmetrics.

use std::time::Duration;
use testkit::harness::expo::Exposition;
use testkit::harness::promtool::PromtoolBatch;
use testkit::harness::*;

const GOOD: &str = "\
# HELP gateway_requests_total Requests \\\\ through\\n the gateway
# TYPE gateway_requests_total counter
gateway_requests_total{method=\"GET\",path=\"/v1/chat/completions\",namespace=\"wechat\"} 12
gateway_requests_total{method=\"POST\",path=\"/a\\\"b\\\\c\\nd\",namespace=\"wechat\"} 3
# HELP lat Latency
# TYPE lat histogram
lat_bucket{ns=\"a\",le=\"0.1\"} 1
lat_bucket{ns=\"a\",le=\"1\"} 3
lat_bucket{ns=\"a\",le=\"+Inf\"} 4
lat_sum{ns=\"a\"} 2.5
lat_count{ns=\"a\"} 4
# HELP up Up.
# TYPE up gauge
up 1
";

#[test]
fn parser_reads_values_labels_and_escapes() {
    let exp = Exposition::parse(GOOD).unwrap();
    assert_eq!(exp.families.len(), 3);
    let fam = exp.family("gateway_requests_total").unwrap();
    assert_eq!(fam.kind.as_deref(), Some("counter"));
    assert_eq!(fam.help.as_deref(), Some("Requests \\ through\n the gateway"));
    assert_eq!(
        exp.value(
            "gateway_requests_total",
            &[("method", "GET"), ("path", "/v1/chat/completions"), ("namespace", "wechat")]
        ),
        Some(12.0)
    );
    // label order in the query does not matter; the label set must be complete
    assert_eq!(
        exp.value(
            "gateway_requests_total",
            &[("namespace", "wechat"), ("path", "/v1/chat/completions"), ("method", "GET")]
        ),
        Some(12.0)
    );
    assert_eq!(exp.value("gateway_requests_total", &[("method", "GET")]), None);
    assert_eq!(
        exp.value("gateway_requests_total", &[("method", "POST"), ("path", "/a\"b\\c\nd"), ("namespace", "wechat")]),
        Some(3.0)
    );
    assert_eq!(exp.sum("gateway_requests_total"), 15.0);
    assert_eq!(exp.value("lat_bucket", &[("ns", "a"), ("le", "+Inf")]), Some(4.0));
    assert_eq!(exp.family("lat").unwrap().kind.as_deref(), Some("histogram"));
    assert_eq!(exp.samples.iter().filter(|s| exp.families[s.family].name == "lat").count(), 5);
    assert!(exp.check_histograms().is_empty(), "{:?}", exp.check_histograms());
}

#[test]
fn parser_rejects_malformed_bodies() {
    let cases = [
        ("no final newline", "up 1"),
        ("duplicate series", "a 1\na 2\n"),
        ("duplicate series, labels reordered", "a{x=\"1\",y=\"2\"} 1\na{y=\"2\",x=\"1\"} 2\n"),
        ("family not contiguous", "# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\na{x=\"1\"} 2\n"),
        ("second TYPE", "# TYPE a gauge\n# TYPE a gauge\na 1\n"),
        ("second HELP", "# HELP a x\n# HELP a y\na 1\n"),
        ("TYPE after samples", "a 1\n# TYPE a gauge\n"),
        ("bad name", "1a 1\n"),
        ("bad label name", "a{1x=\"1\"} 1\n"),
        ("unquoted label", "a{x=1} 1\n"),
        ("bad escape", "a{x=\"\\t\"} 1\n"),
        ("duplicate label", "a{x=\"1\",x=\"2\"} 1\n"),
        ("bad value", "a 1,5\n"),
        ("missing value", "a\n"),
        ("trailing garbage", "a 1 2 3\n"),
        ("unknown type", "# TYPE a countr\na 1\n"),
        ("histogram without suffix", "# TYPE h histogram\nh 1\n"),
        ("bucket without le", "# TYPE h histogram\nh_bucket 1\n"),
    ];
    for (what, body) in cases {
        assert!(Exposition::parse(body).is_err(), "{what}: accepted {body:?}");
    }
}

#[test]
fn histogram_check_finds_broken_histograms() {
    let body = |b1: u32, inf: u32, count: u32| {
        format!(
            "# TYPE h histogram\nh_bucket{{le=\"1\"}} {b1}\nh_bucket{{le=\"+Inf\"}} {inf}\nh_sum 1\nh_count {count}\n"
        )
    };
    assert!(Exposition::parse(&body(1, 2, 2)).unwrap().check_histograms().is_empty());
    let p = Exposition::parse(&body(1, 2, 3)).unwrap().check_histograms();
    assert!(p.len() == 1 && p[0].contains("+Inf bucket 2 != _count 3"), "{p:?}");
    let p = Exposition::parse(&body(3, 2, 2)).unwrap().check_histograms();
    assert!(p.len() == 1 && p[0].contains("bucket le=inf has 2 < bucket le=1 with 3"), "{p:?}");
    let p =
        Exposition::parse("# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n").unwrap().check_histograms();
    assert!(p.len() == 2 && p[0].contains("no le=\"+Inf\" bucket"), "{p:?}");
    let p = Exposition::parse("# TYPE h histogram\nh_sum 1\nh_count 1\n").unwrap().check_histograms();
    assert!(p.len() == 1 && p[0].contains("_count without buckets"), "{p:?}");
}

#[test]
fn monotonic_check_finds_decreases_and_vanished_series() {
    let a = Exposition::parse("# TYPE c_total counter\nc_total{x=\"1\"} 5\nc_total{x=\"2\"} 1\n# TYPE g gauge\ng 5\n")
        .unwrap();
    let b =
        Exposition::parse("# TYPE c_total counter\nc_total{x=\"1\"} 4.999999999999999\n# TYPE g gauge\ng 1\n").unwrap();
    let p = check_monotonic(&a, &b);
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(p[0].contains("decreased from 5 to 4.999999999999999"), "{p:?}");
    assert!(p[1].contains("vanished"), "{p:?}");
    assert!(check_monotonic(&b, &a).is_empty(), "gauges may go down, counters may appear");
}

#[test]
fn promtool_accepts_good_and_rejects_bad() {
    promtool_check(GOOD).unwrap();
    let err = promtool_check("a{x=\"1} 3\n").unwrap_err();
    assert!(err.contains("parsing error"), "{err}");
    // lint problems are warnings, not errors
    assert_eq!(promtool_lint("a_total 1\n").unwrap(), vec!["a_total no help text".to_string()]);
}

#[test]
fn promtool_batch_checks_every_body_and_names_the_bad_one() {
    let bad = "# HELP x_total X\n# TYPE x_total counter\nx_total{a=\"1\"} 1\nx_total{a=\"2} 1\n";
    let mut bodies = vec![GOOD; 50];
    assert!(promtool_check_all(bodies.iter().copied()).unwrap().is_empty());
    bodies[37] = bad;
    let err = promtool_check_all(bodies.iter().copied()).unwrap_err();
    assert!(err.starts_with("body #37, its line 4:"), "{err}");
    // a bad first character stays bad: it is not prefixed
    let mut batch = PromtoolBatch::default();
    batch.push(0, GOOD);
    batch.push(1, "# TYPE 1x gauge\n1x 1\n");
    assert!(batch.check().unwrap_err().starts_with("body #1, its line 1"));
    // lint warnings come back without the batch prefix, once
    let w = promtool_check_all(["a_total 1\n", "a_total 2\n"]).unwrap();
    assert_eq!(w, vec!["a_total no help text".to_string()]);
}

#[test]
fn http_client_reads_chunked_and_length_bodies() {
    let nginx = Nginx::start("harness", &[]);
    let r = get(nginx.port, "/ok").unwrap();
    assert_eq!((r.status, r.text()), (200, "ok\n"));
    assert_eq!(r.header("Content-Length"), Some("3"));
    let r = get(nginx.port, "/chunked").unwrap();
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!((r.status, r.text()), (200, "first\nsecond"));
    let r = get(nginx.port, "/missing").unwrap();
    assert_eq!(r.status, 404);
    // keep-alive: several requests on one connection
    let mut c = Conn::connect(nginx.port).unwrap();
    for path in ["/ok", "/chunked", "/missing", "/ok"] {
        assert!(c.get(path).is_ok());
        assert!(c.reusable());
    }
    nginx.assert_no_errors(&[]);
}

#[test]
fn load_counts_match_the_access_log() {
    let nginx = Nginx::start("harness", &[("WORKERS", "2")]);
    const N: u64 = 20_000;
    // every 10th request is a 404; keepalive_requests 100 forces ~200 reconnects
    let r = load(nginx.port, |i| if i % 10 == 0 { "/missing".into() } else { "/ok".into() }, N, 16);
    report!("harness load: {N} requests in {:?}, {} connections", r.elapsed, r.connections);
    assert_eq!((r.ok, r.failed, r.unknown), (N - N / 10, N / 10, 0), "{:?}", r.samples);
    assert!(r.connections >= N / 100, "{} connections: Connection: close not followed?", r.connections);
    let log = nginx.prefix.join("logs/access.log");
    let lines = |status: &str| {
        std::fs::read_to_string(&log).unwrap().lines().filter(|l| l.contains(&format!("HTTP/1.1\" {status} "))).count()
            as u64
    };
    // the access log is written in the log phase, after the response
    testkit::harness::nginx::wait_until(
        Duration::from_secs(10),
        || lines("200") + lines("404") == N,
        || format!("{} log lines", lines("200") + lines("404")),
    );
    assert_eq!((lines("200"), lines("404")), (r.ok, r.failed));
    nginx.assert_no_errors(&[]);
}

#[test]
fn error_log_check_finds_errors_and_honours_the_allow_list() {
    let nginx = Nginx::start("harness", &[]);
    assert_eq!(get(nginx.port, "/error").unwrap().status, 200);
    testkit::harness::nginx::wait_until(
        Duration::from_secs(5),
        || !nginx.error_lines(&[]).is_empty(),
        || "no error line".into(),
    );
    let caught = std::panic::catch_unwind(|| nginx.assert_no_errors(&[]));
    assert!(caught.is_err(), "assert_no_errors missed an [error] line");
    nginx.assert_no_errors(&["harness-test-error"]);
}

#[test]
fn reload_kill_and_stop_manage_processes() {
    let mut nginx = Nginx::start("harness", &[("WORKERS", "3")]);
    let first = nginx.worker_pids();
    assert_eq!(first.len(), 3);
    let old = nginx.reload();
    assert_eq!(old, first);
    nginx.wait_old_workers_gone(&old);
    let second = nginx.worker_pids();
    assert_eq!(second.len(), 3);
    assert!(second.iter().all(|p| !first.contains(p)));
    nginx.kill_worker(second[1]);
    let third = nginx.wait_respawn();
    assert_eq!(third.len(), 3);
    assert!(!third.contains(&second[1]));
    assert_eq!(get(nginx.port, "/ok").unwrap().status, 200);
    nginx.assert_no_errors(&["exited on signal 9"]);
    let master = nginx.master_pid();
    nginx.stop();
    assert!(!testkit::harness::nginx::alive(master), "master {master} still running");
    for pid in third {
        assert!(!testkit::harness::nginx::alive(pid), "worker {pid} still running");
    }
}

#[test]
fn scrape_loop_accepts_growing_and_reports_decreasing_counters() {
    let nginx = Nginx::start("harness", &[]);
    let good = ScrapeLoop::start(nginx.metrics_port, "/metrics");
    std::thread::sleep(Duration::from_millis(300));
    let s = good.stop();
    report!(
        "harness scrape loop: {} scrapes in {:?}, promtool {} runs in {:?}",
        s.count,
        s.elapsed,
        s.promtool_runs,
        s.promtool_time
    );
    s.assert_clean();
    assert!(s.count >= 10, "only {} scrapes", s.count);
    assert_eq!(s.last.as_ref().unwrap().value("harness_scrapes_total", &[]), Some(s.count as f64));

    let bad = ScrapeLoop::start(nginx.metrics_port, "/decreasing");
    std::thread::sleep(Duration::from_millis(300));
    let s = bad.stop();
    assert!(s.count >= 10);
    assert_eq!(s.violation_count, s.count / 3, "first: {:?}", s.violations.first());
    assert!(s.violations[0].contains("decreased"), "{:?}", s.violations[0]);
}
