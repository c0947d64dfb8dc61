//! `make demo`'s gateway (nginx-test-conf/demo.conf) records the plan's metric
//! catalog — names and label names exactly as the plan writes them — with the right
//! counts for a known set of requests.

mod common;

use common::*;
use std::time::Duration;

/// The catalog (seed README): family -> label names (histograms without `le`).
const CATALOG: &[(&str, &[&str])] = &[
    ("gateway_requests_total", &["method", "path", "namespace"]),
    ("gateway_request_duration_seconds", &["method", "path", "namespace"]),
    ("http_requests_total", &["method", "endpoint", "status_code", "namespace"]),
    ("http_request_duration_seconds", &["method", "endpoint", "namespace"]),
    ("namespace_requests_total", &["namespace", "status"]),
    ("namespace_tokens_total", &["namespace", "token_type"]),
    ("errors_total", &["error_type", "namespace", "upstream"]),
    ("model_requests_total", &["model", "namespace", "status"]),
    ("model_request_duration_seconds", &["model", "namespace"]),
    ("model_tokens_input_total", &["model", "namespace"]),
    ("model_tokens_output_total", &["model", "namespace"]),
    ("model_cost_usd_total", &["model", "namespace"]),
    ("rate_limit_hits_total", &["namespace", "rule_type"]),
    ("cache_hits_total", &["cache_type"]),
    ("cache_misses_total", &["cache_type"]),
];

const CHAT: &str = "/v1/chat/completions";

#[test]
fn demo_records_the_catalog() {
    let nginx = Nginx::start("demo", &[("WORKERS", "2")]);
    let wechat = [("X-Namespace", "wechat")];
    let send = |path: &str, headers: &[(&str, &str)], times: usize, status: u16| {
        for _ in 0..times {
            let r = get_with_headers(nginx.port, path, headers).unwrap();
            assert_eq!(r.status, status, "GET {path}: {}", String::from_utf8_lossy(&r.body));
        }
    };
    send(CHAT, &wechat, 5, 200);
    send("/v1/chat/completions?model=gpt-3.5-turbo", &[], 3, 200);
    send("/v1/embeddings", &wechat, 2, 200);
    send("/v1/chat/completions?simulate=rate_limit", &wechat, 1, 429);
    send("/v1/chat/completions?model=nope", &wechat, 1, 400);
    send("/v1/chat/completions?simulate=upstream_error", &wechat, 1, 502);
    send("/v1/models", &[], 1, 200);
    send("/nope", &[], 1, 404);
    const SENT: f64 = 15.0;

    let (body, exp) = scrape_until(nginx.metrics_port, Duration::from_secs(10), |e| e.sum("http_requests_total") >= SENT);
    for (family, labels) in CATALOG {
        let fam = exp.family(family).unwrap_or_else(|| panic!("{family} missing"));
        assert!(fam.help.is_some(), "{family} has no HELP");
        let samples: Vec<_> = exp.samples.iter().filter(|s| exp.families[s.family].name == *family).collect();
        assert!(!samples.is_empty(), "{family} has no series");
        for s in samples {
            let mut names: Vec<&str> = s.labels.keys().map(String::as_str).filter(|k| *k != "le").collect();
            let mut want = labels.to_vec();
            names.sort();
            want.sort();
            assert_eq!(names, want, "label names of {}", s.name);
        }
    }

    let v = |name: &str, labels: &[(&str, &str)]| exp.expect(name, labels);
    let (wc, df) = (("namespace", "wechat"), ("namespace", "default"));
    let http = |endpoint, code, ns| v("http_requests_total", &[("method", "GET"), ("endpoint", endpoint), ("status_code", code), ns]);
    assert_eq!(http(CHAT, "200", wc), 5.0);
    assert_eq!(http(CHAT, "200", df), 3.0);
    assert_eq!(http(CHAT, "429", wc), 1.0);
    assert_eq!(http(CHAT, "400", wc), 1.0);
    assert_eq!(http(CHAT, "502", wc), 1.0);
    assert_eq!(http("/v1/embeddings", "200", wc), 2.0);
    assert_eq!(http("/v1/models", "200", df), 1.0);
    assert_eq!(http("other", "404", df), 1.0);
    assert_eq!(exp.sum("http_requests_total"), SENT);
    assert_eq!(exp.sum("http_request_duration_seconds_count"), SENT);

    assert_eq!(v("gateway_requests_total", &[("method", "GET"), ("path", CHAT), wc]), 8.0);
    assert_eq!(v("gateway_requests_total", &[("method", "GET"), ("path", CHAT), df]), 3.0);
    assert_eq!(v("gateway_requests_total", &[("method", "GET"), ("path", "/v1/embeddings"), wc]), 2.0);
    assert_eq!(v("namespace_requests_total", &[wc, ("status", "success")]), 7.0);
    assert_eq!(v("namespace_requests_total", &[wc, ("status", "error")]), 3.0);
    assert_eq!(v("namespace_requests_total", &[df, ("status", "success")]), 3.0);

    let model = |m| ("model", m);
    assert_eq!(v("model_requests_total", &[model("gpt-4"), wc, ("status", "success")]), 5.0);
    assert_eq!(v("model_requests_total", &[model("gpt-4"), wc, ("status", "error")]), 1.0);
    assert_eq!(v("model_requests_total", &[model("gpt-3.5-turbo"), df, ("status", "success")]), 3.0);
    assert_eq!(v("model_requests_total", &[model("text-embedding-3-small"), wc, ("status", "success")]), 2.0);
    assert_eq!(v("model_tokens_input_total", &[model("gpt-4"), wc]), 60.0);
    assert_eq!(v("model_tokens_output_total", &[model("gpt-4"), wc]), 150.0);
    assert_eq!(v("model_tokens_input_total", &[model("gpt-3.5-turbo"), df]), 36.0);
    assert_eq!(v("namespace_tokens_total", &[wc, ("token_type", "input")]), 76.0);
    assert_eq!(v("namespace_tokens_total", &[wc, ("token_type", "output")]), 150.0);
    assert_eq!(v("namespace_tokens_total", &[df, ("token_type", "output")]), 90.0);
    assert_close("gpt-4 cost", v("model_cost_usd_total", &[model("gpt-4"), wc]), 5.0 * (12.0 * 0.03 + 30.0 * 0.06) / 1000.0, 1e-12);
    assert_close("gpt-3.5 cost", v("model_cost_usd_total", &[model("gpt-3.5-turbo"), df]), 3.0 * (12.0 * 0.0005 + 30.0 * 0.0015) / 1000.0, 1e-12);
    assert_close("embedding cost", v("model_cost_usd_total", &[model("text-embedding-3-small"), wc]), 2.0 * 8.0 * 0.00002 / 1000.0, 1e-12);

    assert_eq!(v("rate_limit_hits_total", &[wc, ("rule_type", "requests_per_minute")]), 1.0);
    assert_eq!(v("errors_total", &[("error_type", "client_error"), wc, ("upstream", "none")]), 2.0);
    assert_eq!(v("errors_total", &[("error_type", "server_error"), wc, ("upstream", "openai")]), 1.0);
    assert_eq!(v("errors_total", &[("error_type", "client_error"), df, ("upstream", "none")]), 1.0);
    // 13 requests looked up their namespace's configuration; each of 2 namespaces
    // misses once per worker that sees it.
    let (hits, misses) = (v("cache_hits_total", &[("cache_type", "namespace_config")]), v("cache_misses_total", &[("cache_type", "namespace_config")]));
    assert_eq!(hits + misses, 13.0);
    assert!((2.0..=4.0).contains(&misses), "cache misses {misses}");

    assert!(exp.check_histograms().is_empty(), "{:?}", exp.check_histograms());
    assert_eq!(exp.sum("shmetrics_errors_total"), 0.0, "refused updates");
    let warnings = promtool_lint(&body).unwrap();
    assert!(warnings.is_empty(), "promtool lint: {warnings:?}");
    nginx.assert_no_errors(&[]);
}
