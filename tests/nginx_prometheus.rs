//! A real Prometheus server (Debian's 2.42) scrapes nginx + shmetrics
//! (nginx-test-conf/prometheus.conf, the whole seed catalog recorded from values this
//! test chooses), and the test checks through Prometheus's HTTP API that the plan's
//! queries return exactly the values the requests imply.
//!
//! Three scenarios, each with its own nginx and Prometheus:
//! - `openmetrics_scrape_with_the_shipped_config`: Prometheus runs on a copy of
//!   examples/prometheus/ (prometheus.yml, file-SD targets, the rules), intervals cut
//!   to 1 s, scraping the negotiated /metrics: OpenMetrics, gzipped. The recording
//!   and alerting rules evaluate without error, and every expression of the Grafana
//!   dashboard parses and returns data.
//! - `text_scrape_in_two_parts`: Prometheus scrapes /metrics-text (text 0.0.4) as
//!   two jobs, each asking for its half of the families with `params: name[]`.
//! - `gateway_module_through_prometheus`: resty.shmetrics.gateway itself
//!   (nginx-test-conf/gateway.conf and its mock upstream): exact counts, tokens and
//!   spend; its real durations' quantiles against Prometheus's formulas applied to
//!   the raw samples; the dashboard on the module's own output.
//!
//! Why the rate-based values are exact. `rate(v[5m])` is `(last - first) × F / 300`
//! where F is Prometheus's extrapolation factor, which depends on the sample
//! timestamps (the same for every series of one target: a scrape stamps them all
//! alike) and, through the "do not extrapolate below zero" rule, on `first /
//! (last - first)`. The test sends the same batch of requests twice: all of it
//! before Prometheus starts (so every series is born in the first scrape), then all
//! of it again. Every series that grows then ends at exactly twice its first value,
//! so F is the same for all of them, and ratios of rates (the success ratio, the
//! shares that `histogram_quantile` interpolates with) equal the ratios of the
//! batch's own counts. Rates themselves depend on the scrape times: they are
//! compared with `extrapolated_rate` (Prometheus's formula) applied to the raw
//! samples Prometheus stored, fetched at the same evaluation time.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use testkit::harness::nginx::free_port;
use testkit::harness::prometheus::*;
use testkit::harness::*;

/// Prometheus 2.42's Accept header (see tests/nginx_formats.rs).
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
const WAIT: Duration = Duration::from_secs(60);
/// resty.shmetrics.gateway's request-duration buckets (prometheus.conf uses them).
const BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];
const TTFT_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0];
/// USD per million tokens (prometheus.conf's PRICES).
const PRICES: &[(&str, f64, f64)] =
    &[("gpt-4o", 2.5, 10.0), ("gpt-4o-mini", 0.15, 0.6), ("text-embedding-3-small", 0.02, 0.0)];

const CHAT: &str = "/v1/chat/completions";
const EMBED: &str = "/v1/embeddings";
const MODELS: &str = "/v1/models";

/// A kind of request, sent once per latency in `latencies`.
struct Class {
    ns: &'static str,
    route: &'static str,
    model: Option<&'static str>,
    status: u16,
    latencies: &'static [f64],
    ttft: Option<f64>,
    /// usage tokens (input, output)
    tokens: Option<(f64, f64)>,
    limit: Option<&'static str>,
    cache: Option<&'static str>,
    problem: Option<&'static str>,
}

/// The batch, sent twice. 30 requests: 25 answered 2xx.
const BATCH: &[Class] = &[
    // Chat for wechat: 12 answers, latencies spread over the buckets.
    Class {
        ns: "wechat",
        route: CHAT,
        model: Some("gpt-4o"),
        status: 200,
        latencies: &[0.02, 0.04, 0.07, 0.2, 0.3, 0.3, 0.45, 0.6, 0.8, 1.2, 2.0, 4.0],
        ttft: Some(0.2),
        tokens: Some((120.0, 30.0)),
        limit: None,
        cache: Some("hit"),
        problem: None,
    },
    Class {
        ns: "alipay",
        route: CHAT,
        model: Some("gpt-4o-mini"),
        status: 200,
        latencies: &[0.1, 0.15, 0.3, 0.6, 1.1, 3.5],
        ttft: Some(0.1),
        tokens: Some((60.0, 20.0)),
        limit: None,
        cache: Some("miss"),
        problem: None,
    },
    Class {
        ns: "wechat",
        route: EMBED,
        model: Some("text-embedding-3-small"),
        status: 200,
        latencies: &[0.01, 0.02, 0.03, 0.004],
        ttft: None,
        tokens: Some((8.0, 0.0)),
        limit: None,
        cache: Some("hit"),
        problem: None,
    },
    // The upstream fails (5xx) twice for wechat.
    Class {
        ns: "wechat",
        route: CHAT,
        model: Some("gpt-4o"),
        status: 502,
        latencies: &[6.0, 12.0],
        ttft: None,
        tokens: None,
        limit: None,
        cache: Some("hit"),
        problem: None,
    },
    // alipay over its token limit: refused with 429 before any upstream.
    Class {
        ns: "alipay",
        route: CHAT,
        model: Some("gpt-4o-mini"),
        status: 429,
        latencies: &[0.001, 0.002],
        ttft: None,
        tokens: None,
        limit: Some("tokens_per_minute"),
        cache: Some("hit"),
        problem: None,
    },
    Class {
        ns: "wechat",
        route: CHAT,
        model: Some("gpt-4o"),
        status: 400,
        latencies: &[0.003],
        ttft: None,
        tokens: None,
        limit: None,
        cache: Some("hit"),
        problem: None,
    },
    // Not model calls.
    Class {
        ns: "wechat",
        route: MODELS,
        model: None,
        status: 200,
        latencies: &[0.002, 0.003],
        ttft: None,
        tokens: None,
        limit: None,
        cache: None,
        problem: None,
    },
    // No X-Namespace header ("default"); an answer without usage.
    Class {
        ns: "default",
        route: EMBED,
        model: Some("text-embedding-3-small"),
        status: 200,
        latencies: &[0.05],
        ttft: None,
        tokens: None,
        limit: None,
        cache: None,
        problem: Some("usage_missing"),
    },
];

impl Class {
    fn path(&self, latency: f64) -> String {
        let mut q = vec![format!("latency={latency}")];
        if let Some(m) = self.model {
            q.push(format!("model={m}"));
        }
        if self.status != 200 && self.limit.is_none() {
            q.push(format!("status={}", self.status));
        }
        if let Some(t) = self.ttft {
            q.push(format!("ttft={t}"));
        }
        if let Some((i, o)) = self.tokens {
            q.push(format!("in={i}&out={o}"));
        }
        if let Some(l) = self.limit {
            q.push(format!("limit={l}"));
        }
        if let Some(c) = self.cache {
            q.push(format!("cache={c}"));
        }
        if let Some(p) = self.problem {
            q.push(format!("problem={p}"));
        }
        format!("{}?{}", self.route, q.join("&"))
    }

    fn n(&self) -> f64 {
        self.latencies.len() as f64
    }

    fn cost_each(&self) -> f64 {
        let (Some(m), Some((i, o))) = (self.model, self.tokens) else { return 0.0 };
        let p = PRICES.iter().find(|p| p.0 == m).unwrap();
        // As prometheus.conf computes it.
        i * p.1 / 1e6 + o * p.2 / 1e6
    }
}

/// Per-batch sum of `f` over the classes that `keep`.
fn total(keep: impl Fn(&Class) -> bool, f: impl Fn(&Class) -> f64) -> f64 {
    BATCH.iter().filter(|c| keep(c)).map(f).sum()
}

const BATCH_SIZE: f64 = 30.0;
const BATCH_2XX: f64 = 25.0;

/// Sends the batch, one request after another on one connection (so the last
/// throughput gauge set is known), and waits until nginx shows `phases` batches
/// recorded in every family (log phases run after the client has its answer).
fn send_batch(nginx: &Nginx, phases: f64) {
    let mut conn = Conn::connect(nginx.port).unwrap();
    for c in BATCH {
        for &latency in c.latencies {
            let path = c.path(latency);
            let mut headers = vec![];
            if c.ns != "default" {
                headers.push(("X-Namespace", c.ns));
            }
            if !conn.reusable() {
                conn = Conn::connect(nginx.port).unwrap();
            }
            let r = conn.request(&path, &headers).unwrap_or_else(|e| panic!("GET {path}: {e}"));
            assert_eq!(r.status, c.status, "GET {path}");
        }
    }
    let want = |f: &dyn Fn(&Class) -> f64| phases * total(|_| true, f);
    let families: [(&str, f64); 8] = [
        ("gateway_requests_total", phases * BATCH_SIZE),
        ("http_request_duration_seconds_count", phases * BATCH_SIZE),
        ("model_requests_total", want(&|c| if c.model.is_some() { c.n() } else { 0.0 })),
        ("model_request_duration_seconds_count", want(&|c| if c.model.is_some() { c.n() } else { 0.0 })),
        ("model_tokens_output_total", want(&|c| c.tokens.map_or(0.0, |t| t.1 * c.n()))),
        ("namespace_tokens_total", want(&|c| c.tokens.map_or(0.0, |t| (t.0 + t.1) * c.n()))),
        ("cache_hits_total", want(&|c| if c.cache == Some("hit") { c.n() } else { 0.0 })),
        ("gateway_instrumentation_errors_total", phases),
    ];
    let (_, exp) =
        scrape_until(nginx.metrics_port, Duration::from_secs(10), |e| families.iter().all(|(f, n)| e.sum(f) >= *n));
    for (f, n) in families {
        assert_eq!(exp.sum(f), n, "{f} in nginx after {phases} batches");
    }
}

/// `sum by (labels) (...)` results as a map from the labels' values.
fn by(samples: &[Sample], labels: &[&str]) -> BTreeMap<Vec<String>, f64> {
    let mut out = BTreeMap::new();
    for s in samples {
        let key: Vec<String> = labels.iter().map(|l| s.label(l).to_string()).collect();
        assert!(out.insert(key.clone(), s.value).is_none(), "two samples for {key:?}");
    }
    out
}

fn key(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Cumulative bucket counts of `latencies` over `bounds` (+Inf last).
fn buckets(latencies: &[f64], bounds: &[f64]) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> =
        bounds.iter().map(|&b| (b, latencies.iter().filter(|&&v| v <= b).count() as f64)).collect();
    out.push((f64::INFINITY, latencies.len() as f64));
    out
}

/// Every query the plan runs, checked at `t` (ms) against the values two batches
/// imply. Returns the queries with what they returned (printed with --nocapture).
fn check_plan_queries(prom: &Prometheus, t: i64) -> Vec<String> {
    let mut verified = Vec::new();
    let q = |expr: &str| prom.query_at(expr, t).unwrap_or_else(|e| panic!("{e}")).samples();
    let mut note = |expr: &str, what: String| {
        eprintln!("[verified] {expr}  =>  {what}");
        verified.push(format!("{expr} => {what}"));
    };

    // Counters: exact sums.
    let expr = "sum(gateway_requests_total)";
    let v = prom.query_at(expr, t).unwrap().samples();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].value, 2.0 * BATCH_SIZE, "{expr}");
    note(expr, format!("{}", v[0].value));

    // The request rate, per series: Prometheus's own extrapolation over the raw
    // samples it stored; and one factor F shared by all series (rate / increase).
    let expr = "rate(http_requests_total[5m])";
    let rates = q(expr);
    let raw = match prom.query_at("http_requests_total[5m]", t).unwrap() {
        QueryResult::Matrix(m) => m,
        other => panic!("raw samples: {other:?}"),
    };
    let mut routes: BTreeSet<(String, String, String)> = BTreeSet::new();
    for c in BATCH {
        routes.insert((c.route.to_string(), c.status.to_string(), c.ns.to_string()));
    }
    assert_eq!(rates.len(), routes.len(), "{expr}: one rate per route, status and namespace: {rates:?}");
    let mut factor = None;
    for r in &rates {
        let series = raw
            .iter()
            .find(|s| s.labels == with_name(&r.labels, "http_requests_total"))
            .expect("raw samples of the series");
        let want = extrapolated_rate(&series.points, t, 300_000).unwrap();
        assert_near(&format!("{expr} {:?}", r.labels), r.value, want);
        let sent = total(
            |c| {
                c.route == r.label("endpoint")
                    && c.status.to_string() == r.label("status_code")
                    && c.ns == r.label("namespace")
            },
            Class::n,
        );
        assert_eq!(series.points[0].1, sent, "first sample: the first batch, {:?}", r.labels);
        assert_eq!(series.points.last().unwrap().1, 2.0 * sent, "last sample: both batches, {:?}", r.labels);
        let f = r.value / sent;
        assert_near("one extrapolation factor for every series", f, *factor.get_or_insert(f));
    }
    note(
        expr,
        format!(
            "{} series, each = Prometheus's extrapolated rate of its raw samples (e.g. {:?} {})",
            rates.len(),
            rates[0].labels,
            rates[0].value
        ),
    );

    // The plan's success ratio: exactly 25 of 30.
    let expr = r#"sum(rate(http_requests_total{status_code=~"2.."}[5m])) / sum(rate(http_requests_total[5m])) * 100"#;
    let v = q(expr);
    assert_eq!(v.len(), 1, "{expr}");
    assert_near(expr, v[0].value, BATCH_2XX / BATCH_SIZE * 100.0);
    note(expr, format!("{} (25/30 × 100)", v[0].value));

    // p95 latency per series of the plan's query, and over everything, from the
    // latencies the requests asked for (Prometheus's interpolation in the bucket).
    let expr = "histogram_quantile(0.95, rate(http_request_duration_seconds_bucket[5m]))";
    let v = by(&q(expr), &["endpoint", "namespace"]);
    let mut groups: BTreeMap<Vec<String>, Vec<f64>> = BTreeMap::new();
    for c in BATCH {
        groups.entry(key(&[c.route, c.ns])).or_default().extend_from_slice(c.latencies);
    }
    assert_eq!(v.keys().collect::<Vec<_>>(), groups.keys().collect::<Vec<_>>(), "{expr}");
    for (k, lat) in &groups {
        let want = bucket_quantile(0.95, &buckets(lat, BUCKETS));
        assert_near(&format!("{expr} {k:?}"), v[k], want);
    }
    note(expr, format!("{v:?}"));
    let expr = "histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket[5m])))";
    let all: Vec<f64> = BATCH.iter().flat_map(|c| c.latencies.iter().copied()).collect();
    let v = q(expr);
    assert_eq!(v.len(), 1);
    let want = bucket_quantile(0.95, &buckets(&all, BUCKETS));
    assert_near(expr, v[0].value, want);
    note(expr, format!("{} (rank 28.5 of 30 latencies, interpolated in its bucket)", v[0].value));
    // Another histogram, with other buckets: time to first token of streamed answers.
    let expr = "histogram_quantile(0.95, sum by (model, le) (rate(model_time_to_first_token_seconds_bucket[5m])))";
    let v = by(&q(expr), &["model"]);
    for c in BATCH.iter().filter(|c| c.ttft.is_some()) {
        let want = bucket_quantile(0.95, &buckets(&vec![c.ttft.unwrap(); c.latencies.len()], TTFT_BUCKETS));
        assert_near(&format!("{expr} {}", c.model.unwrap()), v[&key(&[c.model.unwrap()])], want);
    }
    note(expr, format!("{v:?}"));

    // Model calls, tokens and spend by (model, namespace): exact totals.
    let mut model_ns: BTreeSet<Vec<String>> = BTreeSet::new();
    for c in BATCH.iter().filter(|c| c.model.is_some()) {
        model_ns.insert(key(&[c.model.unwrap(), c.ns]));
    }
    let want_by = |f: &dyn Fn(&Class) -> f64, only_with_tokens: bool| -> BTreeMap<Vec<String>, f64> {
        model_ns
            .iter()
            .filter(|k| {
                !only_with_tokens
                    || BATCH.iter().any(|c| c.model == Some(k[0].as_str()) && c.ns == k[1] && c.tokens.is_some())
            })
            .map(|k| (k.clone(), 2.0 * total(|c| c.model == Some(k[0].as_str()) && c.ns == k[1], f)))
            .collect()
    };
    for (family, f, tokens_only) in [
        ("model_requests_total", &Class::n as &dyn Fn(&Class) -> f64, false),
        ("model_tokens_input_total", &|c: &Class| c.tokens.map_or(0.0, |t| t.0 * c.n()), true),
        ("model_tokens_output_total", &|c: &Class| c.tokens.map_or(0.0, |t| t.1 * c.n()), true),
    ] {
        let expr = format!("sum({family}) by (model, namespace)");
        let got = by(&q(&expr), &["model", "namespace"]);
        assert_eq!(got, want_by(f, tokens_only), "{expr}");
        note(&expr, format!("{got:?}"));
    }
    let expr = "sum(model_cost_usd_total) by (model, namespace)";
    let got = by(&q(expr), &["model", "namespace"]);
    let want = want_by(&|c: &Class| c.cost_each() * c.n(), true);
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{expr}");
    for (k, w) in &want {
        assert_near(&format!("{expr} {k:?}"), got[k], *w);
    }
    note(expr, format!("{got:?}"));
    let expr = "sum by (namespace, token_type) (namespace_tokens_total)";
    let got = by(&q(expr), &["namespace", "token_type"]);
    let mut want = BTreeMap::new();
    for c in BATCH {
        if let Some((i, o)) = c.tokens {
            *want.entry(key(&[c.ns, "input"])).or_insert(0.0) += 2.0 * i * c.n();
            *want.entry(key(&[c.ns, "output"])).or_insert(0.0) += 2.0 * o * c.n();
        }
    }
    assert_eq!(got, want, "{expr}");
    note(expr, format!("{got:?}"));
    let expr = "sum by (namespace, status) (namespace_requests_total)";
    let got = by(&q(expr), &["namespace", "status"]);
    let mut want = BTreeMap::new();
    for c in BATCH {
        *want.entry(key(&[c.ns, if c.status < 400 { "success" } else { "error" }])).or_insert(0.0) += 2.0 * c.n();
    }
    assert_eq!(got, want, "{expr}");
    note(expr, format!("{got:?}"));

    // Errors, rate limits, cache, gauges.
    let expr = "sum by (error_type, namespace, upstream) (errors_total)";
    let got = by(&q(expr), &["error_type", "namespace", "upstream"]);
    let want: BTreeMap<Vec<String>, f64> = [
        (key(&["upstream_5xx", "wechat", "openai"]), 4.0),
        (key(&["client_error", "alipay", "none"]), 4.0),
        (key(&["client_error", "wechat", "openai"]), 2.0),
    ]
    .into();
    assert_eq!(got, want, "{expr}");
    note(expr, format!("{got:?}"));
    for family in ["rate_limit_hits_total", "rate_limit_violations_total"] {
        let expr = format!("sum by (namespace, rule_type) ({family})");
        let got = by(&q(&expr), &["namespace", "rule_type"]);
        assert_eq!(got, [(key(&["alipay", "tokens_per_minute"]), 4.0)].into(), "{expr}");
        note(&expr, format!("{got:?}"));
    }
    let expr =
        "sum(rate(cache_hits_total[5m])) / (sum(rate(cache_hits_total[5m])) + sum(rate(cache_misses_total[5m])))";
    let v = q(expr);
    let hits = total(|c| c.cache == Some("hit"), Class::n);
    let misses = total(|c| c.cache == Some("miss"), Class::n);
    assert_near(expr, v[0].value, hits / (hits + misses));
    note(expr, format!("{} ({hits}/{})", v[0].value, hits + misses));
    let expr = "model_throughput_tokens_per_second";
    let got = by(&q(expr), &["model", "namespace"]);
    let mut want = BTreeMap::new();
    for c in BATCH {
        // the last answer with output tokens, as the Lua computes it
        if let (Some((_, out)), Some(m)) = (c.tokens, c.model) {
            let last = *c.latencies.last().unwrap();
            if out > 0.0 {
                want.insert(key(&[m, c.ns]), out / (last - c.ttft.unwrap_or(0.0)));
            }
        }
    }
    assert_eq!(got, want, "{expr}");
    note(expr, format!("{got:?}"));
    let expr = "model_accuracy_percent";
    let got = by(&q(expr), &["model", "task_type"]);
    assert_eq!(got, [(key(&["gpt-4o", "classification"]), 93.5)].into(), "{expr}");
    note(expr, format!("{got:?}"));
    verified
}

/// `labels` plus `__name__`.
fn with_name(labels: &BTreeMap<String, String>, name: &str) -> BTreeMap<String, String> {
    let mut l = labels.clone();
    l.insert("__name__".into(), name.into());
    l
}

/// Every expression of the Grafana dashboard, variables at "All", parses and
/// returns data at `t` (the panels titled in `may_be_empty` may have no data).
fn check_dashboard(prom: &Prometheus, t: i64, may_be_empty: &[&str]) {
    let doc = dashboard();
    let exprs = dashboard_exprs(&doc);
    let mut failures = Vec::new();
    let mut empty = Vec::new();
    for (place, expr) in &exprs {
        let e = grafana_expand(expr);
        match prom.query_at(&e, t) {
            Ok(r) if !r.is_empty() => {}
            Ok(_) if may_be_empty.iter().any(|p| place.contains(&format!("{p:?}"))) => empty.push(place.clone()),
            Ok(_) => failures.push(format!("{place}: no data: {e}")),
            Err(err) => failures.push(format!("{place}: {err}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} dashboard expressions failed:\n{}",
        failures.len(),
        exprs.len(),
        failures.join("\n")
    );
    eprintln!("[verified] all {} Grafana dashboard expressions parse; all return data but {empty:?}", exprs.len());
}

/// The lines nginx logged for Prometheus's scrapes (its User-Agent), as
/// `(uri, status, content_type, content_encoding, accept, accept_encoding, args)`.
fn prometheus_scrapes(nginx: &Nginx) -> Vec<Vec<String>> {
    let log = std::fs::read_to_string(nginx.prefix.join("logs").join("scrape.log")).unwrap_or_default();
    log.lines()
        .filter(|l| l.contains("\"Prometheus/"))
        .map(|l| {
            let (head, rest) = l.split_once(" \"").unwrap();
            let mut f: Vec<String> = head.split(' ').map(str::to_string).collect();
            f.extend(rest.trim_end_matches('"').split("\" \"").map(str::to_string));
            f
        })
        .collect()
}

/// Sends a batch (`send(1.0)`), starts Prometheus (`start`), waits until its scrapes
/// show the first batch (`sum(gateway_requests_total)` = `batch_size`), sends the
/// batch again (`send(2.0)`, which returns once nginx has recorded it all) and waits
/// for a scrape that has it all. Returns the evaluation time for the checks.
fn run(
    send: impl Fn(f64),
    batch_size: f64,
    start: impl FnOnce() -> Prometheus,
    targets: usize,
    up_selector: &str,
) -> (Prometheus, i64) {
    send(1.0);
    let prom = start();
    prom.wait_targets_up(targets, WAIT);
    // Every family in the first scrape: the first batch, complete.
    prom.wait_value("sum(gateway_requests_total)", batch_size, WAIT);
    send(2.0);
    let done = now_ms();
    // A scrape that started after nginx had recorded everything. (Prometheus may
    // move a scrape's timestamp by up to 2 ms to align it with the interval.)
    poll(WAIT, "a scrape after the second batch", || {
        let v = prom.query(&format!("min(timestamp({up_selector}))"))?.samples();
        match v.first() {
            Some(s) if (s.value * 1000.0) as i64 > done + 10 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    (prom, now_ms())
}

/// prometheus.conf's batch, and the accuracy gauge (set once).
fn send_known(nginx: &Nginx) -> impl Fn(f64) + '_ {
    move |phases| {
        send_batch(nginx, phases);
        if phases == 1.0 {
            get(nginx.port, "/admin/accuracy?model=gpt-4o&task_type=classification&percent=93.5").unwrap();
        }
    }
}

#[test]
fn openmetrics_scrape_with_the_shipped_config() {
    let nginx = Nginx::start("prometheus", &[("WORKERS", "2")]);
    let start = || {
        // examples/prometheus/ as shipped, but with 1 s intervals and this nginx as
        // the one gateway in targets/.
        let dir = temp_dir("shipped");
        copy_tree(&examples_dir(), &dir);
        let yml = std::fs::read_to_string(dir.join("prometheus.yml")).unwrap();
        assert!(yml.contains("scrape_interval: 15s") && yml.contains("evaluation_interval: 15s"));
        std::fs::write(dir.join("prometheus.yml"), yml.replace(": 15s", ": 1s")).unwrap();
        let rules = dir.join("rules").join("gateway.rules.yml");
        let text = std::fs::read_to_string(&rules).unwrap();
        assert!(text.contains("interval: 5m"));
        std::fs::write(&rules, text.replace("interval: 5m", "interval: 1s")).unwrap();
        for f in std::fs::read_dir(dir.join("targets")).unwrap() {
            std::fs::remove_file(f.unwrap().path()).unwrap();
        }
        let targets = format!(r#"[{{"targets": ["127.0.0.1:{}"], "labels": {{"env": "test"}}}}]"#, nginx.metrics_port);
        std::fs::write(dir.join("targets").join("gateways.json"), targets).unwrap();
        Prometheus::start_dir(&dir)
    };
    let (prom, t) = run(send_known(&nginx), BATCH_SIZE, start, 1, r#"up{job="llm-gateway"}"#);
    let targets = prom.targets();
    assert_eq!(targets[0].1, "llm-gateway", "the shipped job name");
    assert!(targets[0].0.ends_with("/metrics"), "{targets:?}");

    let verified = check_plan_queries(&prom, t);
    check_dashboard(&prom, t, &[]);

    // The shipped rules: every one evaluates without error; the recording rules
    // have data, and the ratios are exact (same reasoning as the success ratio).
    let rules = poll(WAIT, "every rule evaluated", || {
        let r = prom.rules();
        if r.len() >= 28 && r.iter().all(|x| x.3 == "ok") {
            Ok(r)
        } else {
            Err(format!("{r:?}"))
        }
    });
    for (group, name, kind, _, _) in &rules {
        if kind == "recording" {
            poll(WAIT, &format!("recording rule {name} ({group}) has data"), || match prom.query(name)? {
                r if !r.is_empty() => Ok(()),
                r => Err(format!("{r:?}")),
            });
        }
    }
    let wechat_5xx = total(|c| c.ns == "wechat" && c.status >= 500, Class::n) / total(|c| c.ns == "wechat", Class::n);
    let hits = total(|c| c.cache == Some("hit"), Class::n);
    let lookups = total(|c| c.cache.is_some(), Class::n);
    for (expr, want) in [
        ("job:http_requests_2xx:ratio_rate5m", BATCH_2XX / BATCH_SIZE),
        (r#"namespace:http_requests_5xx:ratio_rate5m{namespace="wechat"}"#, wechat_5xx),
        (r#"namespace:http_requests_5xx:ratio_rate5m{namespace="alipay"}"#, 0.0),
        (r#"cache_type:cache_hits:ratio_rate5m{cache_type="namespace_config"}"#, hits / lookups),
    ] {
        // Evaluated every second: wait for an evaluation over the final scrape.
        poll(WAIT, &format!("{expr} == {want}"), || {
            let v = prom.query(expr)?.samples();
            match v.as_slice() {
                [s] if (s.value - want).abs() <= 1e-9 * want.abs().max(1e-300) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });
        eprintln!("[verified] recording rule {expr} => {want}");
    }

    // What went over the wire: Prometheus's OpenMetrics-first Accept, answered in
    // OpenMetrics, gzipped.
    let scrapes = prometheus_scrapes(&nginx);
    assert!(scrapes.len() >= 2, "nginx logged {} Prometheus scrapes", scrapes.len());
    for s in &scrapes {
        assert_eq!(s[0], "/metrics");
        assert_eq!(s[1], "200");
        assert_eq!(s[2], "application/openmetrics-text; version=1.0.0; charset=utf-8", "{s:?}");
        assert_eq!(s[3], "gzip", "{s:?}");
        assert_eq!(s[4], PROMETHEUS_ACCEPT, "{s:?}");
    }
    eprintln!("[verified] {} scrapes: OpenMetrics 1.0.0, gzip, Accept {PROMETHEUS_ACCEPT}", scrapes.len());
    eprintln!("{} plan queries verified", verified.len());
    drop(prom);
    nginx.assert_no_errors(&[]);
}

/// The families of each part of the text scrape.
const PART_A: &[&str] = &[
    "gateway_requests_total",
    "gateway_request_duration_seconds",
    "http_requests_total",
    "http_request_duration_seconds",
    "namespace_requests_total",
    "namespace_tokens_total",
    "errors_total",
    "rate_limit_hits_total",
    "rate_limit_violations_total",
    "cache_hits_total",
    "cache_misses_total",
];
const PART_B: &[&str] = &[
    "model_requests_total",
    "model_request_duration_seconds",
    "model_time_to_first_token_seconds",
    "model_tokens_input_total",
    "model_tokens_output_total",
    "model_throughput_tokens_per_second",
    "model_cost_usd_total",
    "model_accuracy_percent",
    "gateway_instrumentation_errors_total",
    "gateway_build_info",
    "shmetrics_errors_total",
    "shmetrics_series_used",
    "shmetrics_series_capacity",
    "shmetrics_worker_slots",
];

#[test]
fn text_scrape_in_two_parts() {
    let nginx = Nginx::start("prometheus", &[("WORKERS", "2")]);
    let job = |name: &str, families: &[&str]| {
        format!(
            "  - job_name: {name}\n    metrics_path: /metrics-text\n    params:\n      \"name[]\": [{}]\n    static_configs:\n      - targets: [\"127.0.0.1:{}\"]\n",
            families.join(", "),
            nginx.metrics_port
        )
    };
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n{}{}",
        job("gateway-part-a", PART_A),
        job("gateway-part-b", PART_B)
    );
    let (prom, t) =
        run(send_known(&nginx), BATCH_SIZE, || Prometheus::start("text", &config), 2, r#"up{job=~"gateway-part-.+"}"#);

    // Each family came from its part only.
    let names = prom.query_at(r#"group by (__name__, job) ({job=~"gateway-part-.+"})"#, t).unwrap().samples();
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in &names {
        let name = s.label("__name__");
        if name == "up" || name.starts_with("scrape_") {
            continue;
        }
        seen.entry(name.to_string()).or_default().insert(s.label("job").to_string());
    }
    for (part, families) in [("gateway-part-a", PART_A), ("gateway-part-b", PART_B)] {
        for f in families {
            let jobs = seen
                .iter()
                .filter(|(n, _)| {
                    *n == f || n.strip_prefix(f).is_some_and(|s| ["_bucket", "_sum", "_count"].contains(&s))
                })
                .flat_map(|(_, j)| j.iter().cloned())
                .collect::<BTreeSet<_>>();
            assert_eq!(jobs, [part.to_string()].into(), "{f}: scraped by {jobs:?}");
        }
    }
    assert!(
        seen.keys().all(|n| [PART_A, PART_B].concat().iter().any(|f| n.starts_with(f))),
        "unexpected series: {seen:?}"
    );

    check_plan_queries(&prom, t);
    check_dashboard(&prom, t, &[]);

    let scrapes = prometheus_scrapes(&nginx);
    assert!(scrapes.len() >= 4, "nginx logged {} Prometheus scrapes", scrapes.len());
    for s in &scrapes {
        assert_eq!(s[0], "/metrics-text");
        assert_eq!(s[2], "text/plain; version=0.0.4; charset=utf-8", "{s:?}");
        assert_eq!(s[3], "gzip", "{s:?}");
        assert_eq!(s[4], PROMETHEUS_ACCEPT, "{s:?}");
        assert!(s[6].starts_with("name%5B%5D="), "the family filter: {s:?}");
    }
    eprintln!("[verified] {} scrapes of text 0.0.4 in two parts, gzip", scrapes.len());
    drop(prom);
    nginx.assert_no_errors(&[]);
}

// ---------------------------------------------------------------------------
// resty.shmetrics.gateway itself (nginx-test-conf/gateway.conf: the module in front
// of its mock OpenAI-compatible upstream). Durations are real here, so the
// latency quantiles are checked against Prometheus's formulas applied to the raw
// bucket samples it stored; every count, token and cost is known exactly.

struct GwRequest {
    ns: &'static str,
    method: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    body: String,
    status: u16,
    model: Option<&'static str>,
    /// (input, output) tokens of the mock's usage: input = body bytes
    tokens: Option<(f64, f64)>,
}

fn chat(model: &'static str, ns: &'static str, stream: bool) -> GwRequest {
    let mut body = format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"Hello from {ns}"}}]"#);
    if stream {
        body.push_str(r#","stream":true,"stream_options":{"include_usage":true}"#);
    }
    body.push('}');
    let out = if model == "gpt-4o" { 30.0 } else { 20.0 };
    let delay = if stream { ("X-Mock-Chunk-Delay", "0.001") } else { ("X-Mock-Delay", "0.01") };
    GwRequest {
        ns,
        method: "POST",
        path: CHAT,
        headers: vec![("X-Namespace", ns), delay],
        tokens: Some((body.len() as f64, out)),
        body,
        status: 200,
        model: Some(model),
    }
}

/// The gateway batch: 13 requests, 11 answered 2xx.
fn gateway_batch() -> Vec<GwRequest> {
    let mut v = Vec::new();
    for _ in 0..4 {
        v.push(chat("gpt-4o", "wechat", false));
    }
    for _ in 0..2 {
        v.push(chat("gpt-4o-mini", "alipay", false));
        v.push(chat("gpt-4o", "wechat", true));
    }
    let body = r#"{"model":"text-embedding-3-small","input":"The food was delicious"}"#.to_string();
    v.push(GwRequest {
        ns: "alipay",
        method: "POST",
        path: EMBED,
        headers: vec![("X-Namespace", "alipay")],
        tokens: Some((body.len() as f64, 0.0)),
        body,
        status: 200,
        model: Some("text-embedding-3-small"),
    });
    let mut r = chat("gpt-4o", "wechat", false);
    r.headers.push(("X-Mock-Status", "500"));
    r.status = 500;
    r.tokens = None;
    v.push(r);
    let mut r = chat("gpt-4o", "wechat", false);
    r.headers.push(("X-Simulate-Limit", "token_limit"));
    r.status = 429;
    r.tokens = None;
    v.push(r);
    let mut r = chat("gpt-4o-mini", "alipay", false);
    r.headers.push(("X-Mock-Body", "no_usage"));
    r.tokens = None;
    v.push(r);
    v.push(GwRequest {
        ns: "default",
        method: "GET",
        path: MODELS,
        headers: vec![],
        body: String::new(),
        status: 200,
        model: None,
        tokens: None,
    });
    v
}

/// `histogram_quantile(q, ...)` of `rate(<metric>_bucket[5m])` at `t`, computed by the
/// test from the raw bucket samples Prometheus stored: per label set, or summed by
/// `le` over everything when `all`.
fn reference_quantiles(
    prom: &Prometheus,
    t: i64,
    metric: &str,
    q: f64,
    all: bool,
) -> BTreeMap<BTreeMap<String, String>, f64> {
    let raw = match prom.query_at(&format!("{metric}_bucket[5m]"), t).unwrap() {
        QueryResult::Matrix(m) => m,
        other => panic!("raw samples: {other:?}"),
    };
    let mut groups: BTreeMap<BTreeMap<String, String>, BTreeMap<String, (f64, f64)>> = BTreeMap::new();
    for s in &raw {
        let le = s.labels["le"].clone();
        let mut key = s.labels.clone();
        key.remove("le");
        key.remove("__name__");
        if all {
            key.clear();
        }
        let rate = extrapolated_rate(&s.points, t, 300_000).expect("two samples");
        let bound = testkit::harness::expo::parse_value(&le).unwrap();
        let e = groups.entry(key).or_default().entry(le).or_insert((bound, 0.0));
        e.1 += rate;
    }
    groups.into_iter().map(|(k, b)| (k, bucket_quantile(q, &b.into_values().collect::<Vec<_>>()))).collect()
}

#[test]
fn gateway_module_through_prometheus() {
    let closed = free_port(); // nothing listens there: gateway.conf's "down" backend, unused here
    let mock_port = free_port();
    let nginx = Nginx::start(
        "gateway",
        &[("MOCK_PORT", &mock_port.to_string()), ("CLOSED_PORT", &closed.to_string()), ("WORKERS", "2")],
    );
    let batch = gateway_batch();
    let n = batch.len() as f64;
    let per = |keep: &dyn Fn(&GwRequest) -> bool, f: &dyn Fn(&GwRequest) -> f64| {
        batch.iter().filter(|r| keep(r)).map(f).sum::<f64>()
    };
    let out_tokens = per(&|_| true, &|r| r.tokens.map_or(0.0, |t| t.1));
    let send = |phases: f64| {
        for r in &batch {
            let mut headers: Vec<(&str, &str)> = r.headers.clone();
            if !r.body.is_empty() {
                headers.push(("Content-Type", "application/json"));
            }
            let status = request_once(nginx.port, r.method, r.path, &headers, &r.body).status;
            assert_eq!(status, r.status, "{} {} {headers:?}", r.method, r.path);
        }
        let want = [
            ("gateway_requests_total", phases * n),
            ("http_request_duration_seconds_count", phases * n),
            ("namespace_requests_total", phases * n),
            ("model_requests_total", phases * per(&|r| r.model.is_some(), &|_| 1.0)),
            ("model_tokens_output_total", phases * out_tokens),
            ("gateway_instrumentation_errors_total", phases),
        ];
        let (_, exp) =
            scrape_until(nginx.metrics_port, Duration::from_secs(10), |e| want.iter().all(|(f, v)| e.sum(f) >= *v));
        for (f, v) in want {
            assert_eq!(exp.sum(f), v, "{f} in nginx after {phases} batches");
        }
    };
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: llm-gateway\n    static_configs:\n      - targets: [\"127.0.0.1:{}\"]\n",
        nginx.metrics_port
    );
    let (prom, t) = run(send, n, || Prometheus::start("gateway", &config), 1, r#"up{job="llm-gateway"}"#);
    let q = |expr: &str| prom.query_at(expr, t).unwrap_or_else(|e| panic!("{e}")).samples();
    let show = |expr: &str, what: &dyn std::fmt::Debug| eprintln!("[verified, gateway module] {expr}  =>  {what:?}");

    let expr = "sum(gateway_requests_total)";
    assert_eq!(prom.query_at(expr, t).unwrap().samples()[0].value, 2.0 * n);
    show(expr, &(2.0 * n));
    let expr = r#"sum(rate(http_requests_total{status_code=~"2.."}[5m])) / sum(rate(http_requests_total[5m])) * 100"#;
    let ok = per(&|r| r.status < 300, &|_| 1.0);
    assert_eq!(ok, 11.0);
    let v = q(expr)[0].value;
    assert_near(expr, v, ok / n * 100.0);
    show(expr, &v);

    // Counts, tokens and spend per (model, namespace), exact.
    let mut want: BTreeMap<&str, BTreeMap<Vec<String>, f64>> = BTreeMap::new();
    for r in batch.iter().filter(|r| r.model.is_some()) {
        let k = key(&[r.model.unwrap(), r.ns]);
        *want.entry("model_requests_total").or_default().entry(k.clone()).or_insert(0.0) += 2.0;
        if let Some((i, o)) = r.tokens {
            *want.entry("model_tokens_input_total").or_default().entry(k.clone()).or_insert(0.0) += 2.0 * i;
            *want.entry("model_tokens_output_total").or_default().entry(k.clone()).or_insert(0.0) += 2.0 * o;
            let p = PRICES.iter().find(|p| p.0 == r.model.unwrap()).unwrap();
            *want.entry("model_cost_usd_total").or_default().entry(k).or_insert(0.0) +=
                2.0 * (i * p.1 / 1e6 + o * p.2 / 1e6);
        }
    }
    for (family, w) in &want {
        let expr = format!("sum({family}) by (model, namespace)");
        let got = by(&q(&expr), &["model", "namespace"]);
        assert_eq!(got.keys().collect::<Vec<_>>(), w.keys().collect::<Vec<_>>(), "{expr}");
        for (k, v) in w {
            assert_near(&format!("{expr} {k:?}"), got[k], *v);
        }
        show(&expr, &got);
    }
    assert_eq!(want["model_requests_total"][&key(&["gpt-4o", "wechat"])], 16.0);
    for (expr, labels, w) in [
        (
            "sum by (error_type, namespace, upstream) (errors_total)",
            &["error_type", "namespace", "upstream"][..],
            BTreeMap::from([
                (key(&["client_error", "wechat", "none"]), 2.0),
                (key(&["upstream_5xx", "wechat", "openai"]), 2.0),
            ]),
        ),
        (
            "sum by (namespace, rule_type) (rate_limit_hits_total)",
            &["namespace", "rule_type"][..],
            BTreeMap::from([(key(&["wechat", "token_limit"]), 2.0)]),
        ),
        (
            "sum by (namespace, rule_type) (rate_limit_violations_total)",
            &["namespace", "rule_type"][..],
            BTreeMap::from([(key(&["wechat", "token_limit"]), 2.0)]),
        ),
        // The namespace cache (a shared dict) misses once per namespace.
        (
            "sum by (cache_type) (cache_misses_total)",
            &["cache_type"][..],
            BTreeMap::from([(key(&["namespace_config"]), 3.0)]),
        ),
        (
            "sum by (cache_type) (cache_hits_total)",
            &["cache_type"][..],
            BTreeMap::from([(key(&["namespace_config"]), 2.0 * n - 3.0)]),
        ),
        (
            "sum by (reason) (gateway_instrumentation_errors_total)",
            &["reason"][..],
            BTreeMap::from([(key(&["usage_missing"]), 2.0)]),
        ),
    ] {
        let got = by(&q(expr), labels);
        assert_eq!(got, w, "{expr}");
        show(expr, &got);
    }

    // Rates and quantiles over real durations: what Prometheus's formulas give on
    // the raw samples it stored.
    let expr = "rate(http_requests_total[5m])";
    let raw = match prom.query_at("http_requests_total[5m]", t).unwrap() {
        QueryResult::Matrix(m) => m,
        other => panic!("{other:?}"),
    };
    let rates = q(expr);
    assert_eq!(rates.len(), raw.len());
    for r in &rates {
        let s = raw.iter().find(|s| s.labels == with_name(&r.labels, "http_requests_total")).unwrap();
        assert_near(expr, r.value, extrapolated_rate(&s.points, t, 300_000).unwrap());
    }
    show(expr, &format!("{} series = the extrapolated rates of their raw samples", rates.len()));
    for (metric, expr, all) in [
        (
            "http_request_duration_seconds",
            "histogram_quantile(0.95, rate(http_request_duration_seconds_bucket[5m]))",
            false,
        ),
        (
            "http_request_duration_seconds",
            "histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket[5m])))",
            true,
        ),
        (
            "model_time_to_first_token_seconds",
            "histogram_quantile(0.95, sum by (le) (rate(model_time_to_first_token_seconds_bucket[5m])))",
            true,
        ),
    ] {
        let want = reference_quantiles(&prom, t, metric, 0.95, all);
        let got: BTreeMap<BTreeMap<String, String>, f64> = q(expr).into_iter().map(|s| (s.labels, s.value)).collect();
        assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{expr}");
        for (k, w) in &want {
            assert_near(&format!("{expr} {k:?}"), got[k], *w);
        }
        show(expr, &got.values().collect::<Vec<_>>());
    }

    // gateway.conf runs no offline evaluation: nothing sets model_accuracy_percent.
    check_dashboard(&prom, t, &["Model accuracy"]);
    drop(prom);
    nginx.assert_no_errors(&[]);
}
