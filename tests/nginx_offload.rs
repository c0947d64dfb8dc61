//! Scrapes rendered on the library's render thread (nginx-test-conf/offload.conf):
//! the bodies are byte for byte what the synchronous renderer (`metric_data`) gives
//! for the same quiet data, in every format; concurrent scrapes all complete and
//! parse; a client that leaves mid-body stops its job at once; the thread starts in
//! the worker at its first scrape, never in the master, and only one.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use testkit::harness::*;

const SERIES: usize = 20_000;
const CONCURRENT: usize = 20;
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

fn threads(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).unwrap_or_else(|e| panic!("/proc/{pid}/task: {e}")).count()
}

fn fetch(port: u16, path: &str, headers: &[(&str, &str)]) -> Response {
    let r = get_with_headers(port, path, headers).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(r.status, 200, "GET {path}: {}", String::from_utf8_lossy(&r.body));
    r
}

fn jobs(nginx: &Nginx) -> u32 {
    fetch(nginx.port, "/jobs", &[]).text().trim().parse().unwrap()
}

/// The `/metrics` lines of the access log: (status, body bytes sent).
fn scrapes_logged(nginx: &Nginx) -> Vec<(u16, usize)> {
    let log = std::fs::read_to_string(nginx.prefix.join("logs/access.log")).unwrap_or_default();
    log.lines()
        .filter_map(|l| l.strip_prefix("/metrics "))
        .map(|l| {
            let (s, b) = l.split_once(' ').unwrap();
            (s.parse().unwrap(), b.parse().unwrap())
        })
        .collect()
}

#[test]
fn threaded_scrapes_match_the_synchronous_renderer() {
    let nginx = Nginx::start("offload", &[("WORKERS", "1")]);
    let worker = nginx.worker_pids()[0];
    let master = nginx.master_pid();
    // No render thread before the first scrape, in the worker or the master.
    assert_eq!((threads(master), threads(worker)), (1, 1));
    assert_eq!(fetch(nginx.port, &format!("/setup?n={SERIES}"), &[]).text(), "ok\n");
    let text = fetch(nginx.port, "/md?format=text", &[]).body;
    assert!(text.len() > 50 * 16384, "only {} bytes: too few pieces to test", text.len());
    assert_eq!(threads(worker), 1, "metric_data() renders in the event loop");

    // Text 0.0.4, OpenMetrics and JSON: the same bytes as metric_data.
    let t0 = Instant::now();
    let r = fetch(nginx.metrics_port, "/metrics", &[]);
    let took = t0.elapsed();
    assert_eq!(r.header("Content-Type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    assert!(r.body == text, "text body differs from metric_data(\"text\"): {} vs {} bytes", r.body.len(), text.len());
    assert_eq!((threads(master), threads(worker)), (1, 2), "one render thread, in the worker only");
    let om = fetch(nginx.port, "/md?format=openmetrics", &[]).body;
    let r = fetch(nginx.metrics_port, "/metrics", &[("Accept", PROMETHEUS_ACCEPT)]);
    assert_eq!(r.header("Content-Type"), Some("application/openmetrics-text; version=1.0.0; charset=utf-8"));
    assert!(r.body == om, "OpenMetrics body differs: {} vs {} bytes", r.body.len(), om.len());
    assert!(om.ends_with(b"# EOF\n"));
    let json = fetch(nginx.port, "/md?format=json", &[]).body;
    let r = fetch(nginx.metrics_port, "/json", &[]);
    assert!(r.body == json, "JSON body differs: {} vs {} bytes", r.body.len(), json.len());
    // An HTTP/1.0 client: ngx_lua buffers the whole body (ngx.flush answers
    // "buffering") and sends it with its length.
    let r = request_once(nginx.metrics_port, "GET", "/metrics", &[], "");
    assert_eq!(r.header("Content-Length"), Some(text.len().to_string().as_str()), "HTTP/1.0");
    assert!(r.body == text, "HTTP/1.0 text body differs: {} vs {} bytes", r.body.len(), text.len());
    // A filtered scrape.
    let r = fetch(nginx.metrics_port, "/metrics?name[]=offload_inflight", &[]);
    assert_eq!(r.text().lines().filter(|l| l.starts_with("offload_inflight{")).count(), SERIES / 10);
    assert!(!r.text().contains("offload_requests_total"));
    report!("offload: {} bytes in {:?} ({} pieces of 16 KiB)", text.len(), took, text.len() / 16384 + 1);

    // Concurrent scrapes: all complete, all identical, all parse.
    let t0 = Instant::now();
    let bodies: Vec<Vec<u8>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..CONCURRENT).map(|_| s.spawn(|| fetch(nginx.metrics_port, "/metrics", &[]).body)).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    report!("offload: {CONCURRENT} concurrent scrapes in {:?}", t0.elapsed());
    for (i, b) in bodies.iter().enumerate() {
        assert!(*b == text, "concurrent scrape {i}: {} bytes, want {}", b.len(), text.len());
    }
    promtool_check_all(bodies.iter().map(|b| std::str::from_utf8(b).unwrap())).unwrap();
    assert_eq!(jobs(&nginx), 0, "render jobs left after every scrape completed");
    assert_eq!(threads(worker), 2, "still one render thread");
    nginx.assert_no_errors(&[]);
}

#[test]
fn a_client_leaving_mid_body_stops_its_job() {
    let nginx = Nginx::start("offload", &[("WORKERS", "1")]);
    let worker = nginx.worker_pids()[0];
    assert_eq!(fetch(nginx.port, &format!("/setup?n={SERIES}"), &[]).text(), "ok\n");
    let full = fetch(nginx.metrics_port, "/metrics", &[]).body.len();
    let base = threads(worker);
    assert_eq!(base, 2);
    for round in 0..3 {
        let mut s = TcpStream::connect(("127.0.0.1", nginx.metrics_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut got = 0;
        let mut buf = [0u8; 4096];
        while got < 20_000 {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "closed after {got} bytes");
            got += n;
        }
        // Leaves with data unread: the kernel answers the next piece with a reset.
        drop(s);
        let t0 = Instant::now();
        nginx::wait_until(
            Duration::from_secs(10),
            || scrapes_logged(&nginx).len() == round + 2,
            || format!("{:?}", scrapes_logged(&nginx)),
        );
        let (status, sent) = *scrapes_logged(&nginx).last().unwrap();
        assert_eq!(status, 200);
        assert!(
            sent < full / 2,
            "round {round}: {sent} of {full} bytes sent: the scrape went on after the client left"
        );
        // The handler noticed, and stopped the job itself (not the GC, later).
        let stopped: Vec<String> = nginx
            .error_log()
            .lines()
            .filter(|l| l.contains("shmetrics: scrape stopped after "))
            .map(str::to_string)
            .collect();
        assert_eq!(stopped.len(), round + 1, "{stopped:?}");
        nginx::wait_until(Duration::from_secs(2), || jobs(&nginx) == 0, || "a render job is still held".into());
        report!(
            "offload abort {round}: {sent} of {full} bytes sent; job gone {:?} after the client left",
            t0.elapsed()
        );
        assert_eq!(threads(worker), base, "threads after an abandoned scrape");
    }
    // The worker still serves whole scrapes.
    assert_eq!(fetch(nginx.metrics_port, "/metrics", &[]).body.len(), full);
    assert_eq!(jobs(&nginx), 0);
    nginx.assert_no_errors(&[]);
}
