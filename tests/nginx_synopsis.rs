//! README.md's Synopsis, taken from the README itself, works when pasted: the test
//! only points its paths at this checkout and its ports at free ones, and keeps
//! nginx's files in a temp prefix.
//!
//! The Synopsis calls `init("gateway")` without a `path`, so its region is the default
//! `/dev/shm/shmetrics-gateway`: this is the only test using that file, it is alone in
//! its test binary, and it holds a lock file so two test runs on one host (two
//! checkouts, say) do not share it.

use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::Duration;
use testkit::harness::nginx::{remove_shm, repo_dir};
use testkit::harness::*;

const DEFAULT_REGION: &str = "/dev/shm/shmetrics-gateway";
const REQUESTS: u64 = 1000;

/// The first fenced block of `lang` after the heading `heading` in README.md.
fn readme_block(heading: &str, lang: &str) -> String {
    let readme = std::fs::read_to_string(repo_dir().join("README.md")).expect("read README.md");
    let section =
        readme.split_once(&format!("\n{heading}\n")).unwrap_or_else(|| panic!("README.md has no {heading:?}")).1;
    let fence = format!("```{lang}\n");
    let start = section.find(&fence).unwrap_or_else(|| panic!("no ```{lang} block under {heading:?} in README.md"))
        + fence.len();
    let len = section[start..].find("\n```").expect("unterminated code block in README.md");
    section[start..start + len + 1].to_string()
}

/// Replaces `from` (which must occur exactly once) by `to`.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "README Synopsis: expected `{from}` exactly once — update tests/nginx_synopsis.rs with it"
    );
    text.replacen(from, to, 1)
}

/// The Synopsis as an nginx.conf template for the harness.
fn synopsis_template() -> String {
    let snippet = readme_block("## Synopsis", "nginx");
    let mut conf = snippet.clone();
    conf = replace_once(&conf, "/path/to/shmetrics/lua", "{{LUA_DIR}}");
    conf = replace_once(&conf, "/path/to/libdir", "{{LIB_DIR}}");
    conf = replace_once(&conf, "listen 8080;", "listen 127.0.0.1:{{PORT}};");
    conf = replace_once(&conf, "listen 9145;", "listen 127.0.0.1:{{METRICS_PORT}};");
    // nginx's own files go into the prefix, not /var/log/nginx and /var/lib/nginx.
    conf = replace_once(
        &conf,
        "http {\n",
        "http {\n    access_log {{PREFIX}}/logs/access.log;\n    client_body_temp_path {{PREFIX}}/tmp/body;\n    proxy_temp_path {{PREFIX}}/tmp/proxy;\n    fastcgi_temp_path {{PREFIX}}/tmp/fastcgi;\n    uwsgi_temp_path {{PREFIX}}/tmp/uwsgi;\n    scgi_temp_path {{PREFIX}}/tmp/scgi;\n",
    );
    // The minimal wrapper, only where the Synopsis leaves it out.
    let mut head = String::from("# README.md's Synopsis, as run by tests/nginx_synopsis.rs\nerror_log {{PREFIX}}/logs/error.log warn;\npid {{PREFIX}}/logs/nginx.pid;\n");
    if !snippet.contains("worker_processes") {
        head.push_str("worker_processes {{WORKERS}};\n");
    }
    if !snippet.contains("ngx_http_lua_module.so") {
        head.push_str("load_module /usr/share/nginx/modules/ndk_http_module.so;\nload_module /usr/share/nginx/modules/ngx_http_lua_module.so;\n");
    }
    if !snippet.contains("events") {
        head.push_str("events {}\n");
    }
    head + &conf
}

/// Holds an exclusive lock on a file next to the default region while the test runs.
struct RegionLock(#[allow(dead_code)] std::fs::File); // held for its lock

impl RegionLock {
    fn take() -> RegionLock {
        let file =
            std::fs::File::create(Path::new(&std::env::temp_dir()).join("shmetrics-gateway-region.lock")).unwrap();
        // SAFETY: flock on an open descriptor we own.
        assert_eq!(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) }, 0, "flock");
        RegionLock(file)
    }
}

struct RemoveRegion;
impl Drop for RemoveRegion {
    fn drop(&mut self) {
        remove_shm(Path::new(DEFAULT_REGION));
    }
}

#[test]
fn synopsis_conf() {
    let _lock = RegionLock::take();
    remove_shm(Path::new(DEFAULT_REGION));
    let _cleanup = RemoveRegion; // dropped after nginx (declared before it)
    let template = synopsis_template();
    let nginx = Nginx::start_text("synopsis", &template, &[]);
    assert!(Path::new(DEFAULT_REGION).exists(), "the Synopsis did not create {DEFAULT_REGION}");

    // One request, then the README's example output (its "..." elided).
    assert_eq!(get(nginx.port, "/").unwrap().status, 200);
    let (body, _) = scrape_until(nginx.metrics_port, Duration::from_secs(5), |e| {
        e.value(
            "gateway_requests_total",
            &[("method", "GET"), ("path", "/v1/chat/completions"), ("namespace", "wechat")],
        ) == Some(1.0)
    });
    let shown = readme_block("`curl localhost:9145/metrics` then shows, after one request to port 8080:", "");
    let mut lines = body.lines();
    for want in shown.lines().filter(|l| *l != "...") {
        // A bucket's value depends on this request's latency: compare the series only.
        let series = |l: &str| {
            if l.contains("_bucket{") {
                l.rsplit_once(' ').map(|p| p.0.to_string()).unwrap_or_default()
            } else {
                l.to_string()
            }
        };
        assert!(
            lines.any(|got| series(got) == series(want)),
            "README's example line {want:?} not in the exposition (in order):\n{body}"
        );
    }

    let r = load(nginx.port, |_| "/".into(), REQUESTS - 1, 4);
    assert_eq!((r.ok, r.failed, r.unknown), (REQUESTS - 1, 0, 0), "{:?}", r.samples);
    let labels = [("method", "GET"), ("path", "/v1/chat/completions"), ("namespace", "wechat")];
    let (body, exp) = scrape_until(nginx.metrics_port, Duration::from_secs(10), |e| {
        e.value("gateway_request_duration_seconds_count", &labels) >= Some(REQUESTS as f64)
            && e.value("model_cost_usd_total", &[("model", "gpt-4"), ("namespace", "wechat")])
                >= Some(REQUESTS as f64 * 0.0042 * (1.0 - 1e-9))
    });
    assert_eq!(exp.expect("gateway_requests_total", &labels), REQUESTS as f64);
    assert_eq!(exp.expect("gateway_request_duration_seconds_count", &labels), REQUESTS as f64);
    assert_eq!(
        exp.expect("gateway_request_duration_seconds_bucket", &[labels[0], labels[1], labels[2], ("le", "+Inf")]),
        REQUESTS as f64
    );
    assert_close(
        "model_cost_usd_total",
        exp.expect("model_cost_usd_total", &[("model", "gpt-4"), ("namespace", "wechat")]),
        REQUESTS as f64 * 0.0042,
        1e-9,
    );
    assert_eq!(exp.expect("gateway_inflight_requests", &[]), 0.0, "access inc(1) and log inc(-1)");
    assert!(exp.check_histograms().is_empty(), "{:?}", exp.check_histograms());
    let warnings = promtool_lint(&body).unwrap();
    assert!(warnings.is_empty(), "promtool lint: {warnings:?}");
    nginx.assert_no_errors(&[]);
}
