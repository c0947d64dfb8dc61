//! A real Prometheus server (Debian's `prometheus`, 2.42) for the integration tests,
//! its HTTP query API, and reference implementations of the PromQL arithmetic the
//! tests predict (`rate`'s extrapolation, `histogram_quantile`'s interpolation).
//!
//! `Prometheus::start_dir(dir)` runs `/usr/bin/prometheus` on a free loopback port
//! with `dir/prometheus.yml` (relative paths in it — rule files, file-SD target
//! files — resolve against `dir`) and its TSDB in `dir/data`; it waits for
//! `/-/ready`. Dropping it stops the server (SIGTERM, then SIGKILL) and removes `dir`
//! unless the test is failing. Queries go through `GET /api/v1/query`, answers are
//! read with the small JSON parser below (std only). Nothing here sleeps a fixed
//! time: every wait polls a condition until a deadline.

use super::http::get;
use super::nginx::{die_with_parent, free_port, repo_dir};
pub use crate::json::Json;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const PROMETHEUS: &str = "/usr/bin/prometheus";
pub const PROMTOOL: &str = "/usr/bin/promtool";
/// Start-up takes 1–2 s; generous for two shared CPUs.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh, empty directory for one Prometheus (config, rules, targets, TSDB).
pub fn temp_dir(name: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("shmetrics-prom-{}-{n}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// Copies the directory tree `from` into `to` (created if needed), or panics.
pub fn copy_tree(from: &Path, to: &Path) {
    crate::shm::copy_tree(from, to).unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
}

/// `examples/prometheus/` of this checkout.
pub fn examples_dir() -> PathBuf {
    repo_dir().join("examples").join("prometheus")
}

/// Wall-clock time in milliseconds since the epoch (Prometheus's timestamps).
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// A Prometheus timestamp parameter (`time=`), seconds with milliseconds.
fn ts_param(ms: i64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// Percent-encodes a query-string component (everything but RFC 3986's unreserved).
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Polls `f` (every 50 ms) until it returns `Ok`; after `timeout` panics with `what`
/// and the last `Err` (which says what was seen instead).
pub fn poll<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => panic!("timed out after {timeout:?}: {what}; last: {last}"),
            Err(_) => thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// One element of an instant vector (or a scalar, with no labels).
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    /// evaluation timestamp, ms
    pub t: i64,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map(String::as_str).unwrap_or("")
    }
}

/// One series of a range vector: its raw samples `(ms, value)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: BTreeMap<String, String>,
    pub points: Vec<(i64, f64)>,
}

/// The `data` of a successful `/api/v1/query`.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryResult {
    Vector(Vec<Sample>),
    Scalar(Sample),
    Matrix(Vec<Series>),
    String(String),
}

impl QueryResult {
    /// The samples of a vector, or the scalar as one sample; panics on a matrix.
    pub fn samples(&self) -> Vec<Sample> {
        match self {
            QueryResult::Vector(v) => v.clone(),
            QueryResult::Scalar(s) => vec![s.clone()],
            other => panic!("want an instant vector or scalar, got {other:?}"),
        }
    }

    /// No sample at all (an empty vector or matrix).
    pub fn is_empty(&self) -> bool {
        match self {
            QueryResult::Vector(v) => v.is_empty(),
            QueryResult::Matrix(m) => m.is_empty(),
            _ => false,
        }
    }
}

/// A running Prometheus server. Stopped when dropped.
pub struct Prometheus {
    pub dir: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

impl Prometheus {
    /// Writes `config` as `prometheus.yml` into a fresh directory and starts it.
    pub fn start(name: &str, config: &str) -> Prometheus {
        let dir = temp_dir(name);
        fs::write(dir.join("prometheus.yml"), config).unwrap();
        Prometheus::start_dir(&dir)
    }

    /// Starts Prometheus on `dir/prometheus.yml`, the TSDB in `dir/data`, and waits
    /// until it is ready. `dir` is removed when the Prometheus is dropped (kept if the
    /// test fails).
    pub fn start_dir(dir: &Path) -> Prometheus {
        assert!(
            Path::new(PROMETHEUS).is_file(),
            "{PROMETHEUS} not found: install Debian's prometheus package (`make deps`)"
        );
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Prometheus::try_start(dir) {
                Ok(p) => return p,
                Err((msg, true)) if attempt < 4 => {
                    eprintln!("prometheus could not bind, retrying on another port: {msg}")
                }
                Err((msg, _)) => panic!("{msg}"),
            }
        }
    }

    fn try_start(dir: &Path) -> Result<Prometheus, (String, bool)> {
        let port = free_port();
        let log_path = dir.join("prometheus.log");
        let log = fs::File::create(&log_path).unwrap();
        let mut cmd = Command::new(PROMETHEUS);
        cmd.arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().map_err(|e| (format!("spawn {PROMETHEUS}: {e}"), false))?;
        let mut p = Prometheus { dir: dir.to_path_buf(), port, child: Some(child) };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = p.child.as_mut().unwrap().try_wait().unwrap() {
                p.child = None;
                let log = p.log();
                let in_use = log.contains("address already in use");
                return Err((format!("prometheus exited during start-up ({status}); its log:\n{log}"), in_use));
            }
            if get(port, "/-/ready").is_ok_and(|r| r.status == 200) {
                return Ok(p);
            }
            if Instant::now() >= deadline {
                return Err((format!("prometheus not ready after {START_TIMEOUT:?}; its log:\n{}", p.log()), false));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Prometheus's own log (stdout and stderr).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// GET `path` of the API; `Ok(data)` when the answer is `"status":"success"`.
    pub fn api(&self, path: &str) -> Result<Json, String> {
        api_get(self.port, path)
    }

    /// An instant query at the server's "now".
    pub fn query(&self, expr: &str) -> Result<QueryResult, String> {
        self.query_impl(expr, None)
    }

    /// An instant query evaluated at `t_ms`.
    pub fn query_at(&self, expr: &str, t_ms: i64) -> Result<QueryResult, String> {
        self.query_impl(expr, Some(t_ms))
    }

    fn query_impl(&self, expr: &str, t_ms: Option<i64>) -> Result<QueryResult, String> {
        query_api(self.port, expr, t_ms)
    }

    /// The samples of an instant query that must succeed.
    pub fn samples(&self, expr: &str) -> Vec<Sample> {
        self.query(expr).unwrap_or_else(|e| panic!("{e}")).samples()
    }

    /// The single value of a query whose answer must be exactly one sample.
    pub fn value(&self, expr: &str) -> f64 {
        let s = self.samples(expr);
        assert_eq!(s.len(), 1, "{expr}: want one sample, got {s:?}");
        s[0].value
    }

    /// Waits until the query returns one sample with `value` exactly; panics with the
    /// last answer after `timeout`.
    pub fn wait_value(&self, expr: &str, value: f64, timeout: Duration) {
        poll(timeout, &format!("{expr} never became {value}"), || match self.query(expr)? {
            QueryResult::Vector(v) if v.len() == 1 && v[0].value == value => Ok(()),
            other => Err(format!("{other:?}")),
        });
    }

    /// The active targets: `(scrapeUrl, job, health, lastError)`.
    pub fn targets(&self) -> Vec<(String, String, String, String)> {
        let data = self.api("/api/v1/targets?state=active").unwrap_or_else(|e| panic!("{e}"));
        data.get("activeTargets")
            .and_then(Json::as_array)
            .unwrap_or(&[])
            .iter()
            .map(|t| {
                let s = |k: &str| t.get(k).and_then(Json::as_str).unwrap_or("").to_string();
                let job = t.get("labels").and_then(|l| l.get("job")).and_then(Json::as_str).unwrap_or("").to_string();
                (s("scrapeUrl"), job, s("health"), s("lastError"))
            })
            .collect()
    }

    /// Waits until exactly `n` targets are active and every one is up.
    pub fn wait_targets_up(&self, n: usize, timeout: Duration) {
        poll(timeout, &format!("want {n} targets up"), || {
            let t = self.targets();
            if t.len() == n && t.iter().all(|t| t.2 == "up") {
                Ok(())
            } else {
                Err(format!("{t:?}; prometheus log:\n{}", self.log()))
            }
        });
    }

    /// The rule groups as `/api/v1/rules` reports them: `(group, rule name, type,
    /// health, lastError)` for every rule.
    pub fn rules(&self) -> Vec<(String, String, String, String, String)> {
        let data = self.api("/api/v1/rules").unwrap_or_else(|e| panic!("{e}"));
        let mut out = Vec::new();
        for g in data.get("groups").and_then(Json::as_array).unwrap_or(&[]) {
            let group = g.get("name").and_then(Json::as_str).unwrap_or("").to_string();
            for r in g.get("rules").and_then(Json::as_array).unwrap_or(&[]) {
                let s = |k: &str| r.get(k).and_then(Json::as_str).unwrap_or("").to_string();
                out.push((group.clone(), s("name"), s("type"), s("health"), s("lastError")));
            }
        }
        out
    }

    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            stop_child(child, libc::SIGTERM, "prometheus");
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
        if thread::panicking() {
            eprintln!("test failed: prometheus directory kept for inspection: {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Stops a server: `sig` (its graceful stop), then SIGKILL after STOP_TIMEOUT.
pub fn stop_child(mut child: Child, sig: i32, name: &str) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as i32, sig) };
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        thread::sleep(Duration::from_millis(10));
    }
    eprintln!("{name} {} did not stop in {STOP_TIMEOUT:?} after signal {sig}: killing it", child.id());
    let _ = child.kill();
    let _ = child.wait();
}

/// GET `path` of a Prometheus-compatible HTTP API on 127.0.0.1:`port` (Prometheus,
/// VictoriaMetrics); `Ok(data)` when the answer is `"status":"success"`.
fn api_get(port: u16, path: &str) -> Result<Json, String> {
    let resp = get(port, path).map_err(|e| format!("GET {path}: {e}"))?;
    let body = String::from_utf8_lossy(&resp.body).into_owned();
    let doc = Json::parse(&body).map_err(|e| format!("GET {path}: status {}, bad JSON ({e}): {body}", resp.status))?;
    if resp.status != 200 || doc.get("status").and_then(Json::as_str) != Some("success") {
        return Err(format!(
            "GET {path}: status {}: {}: {}",
            resp.status,
            doc.get("errorType").and_then(Json::as_str).unwrap_or("?"),
            doc.get("error").and_then(Json::as_str).unwrap_or(&body)
        ));
    }
    doc.get("data").cloned().ok_or_else(|| format!("GET {path}: no data: {body}"))
}

/// An instant query (`/api/v1/query`) on a Prometheus-compatible API, at `t_ms` or
/// the server's "now".
pub fn query_api(port: u16, expr: &str, t_ms: Option<i64>) -> Result<QueryResult, String> {
    let mut path = format!("/api/v1/query?query={}", url_encode(expr));
    if let Some(t) = t_ms {
        path.push_str(&format!("&time={}", ts_param(t)));
    }
    let data = api_get(port, &path).map_err(|e| format!("query {expr:?}: {e}"))?;
    parse_result(&data).map_err(|e| format!("query {expr:?}: {e}"))
}

fn labels_of(j: Option<&Json>) -> BTreeMap<String, String> {
    j.and_then(Json::as_object)
        .unwrap_or(&[])
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
        .collect()
}

/// `[ <seconds>, "<value>" ]`
fn point(j: &Json) -> Result<(i64, f64), String> {
    let a = j.as_array().ok_or("point is not an array")?;
    let (Some(t), Some(v)) = (a.first().and_then(Json::as_f64), a.get(1).and_then(Json::as_str)) else {
        return Err(format!("bad point {j:?}"));
    };
    let value = super::expo::parse_value(v).ok_or_else(|| format!("bad sample value {v:?}"))?;
    Ok(((t * 1000.0).round() as i64, value))
}

fn parse_result(data: &Json) -> Result<QueryResult, String> {
    let kind = data.get("resultType").and_then(Json::as_str).ok_or("no resultType")?;
    let result = data.get("result").ok_or("no result")?;
    match kind {
        "vector" => {
            let mut out = Vec::new();
            for s in result.as_array().ok_or("vector result is not an array")? {
                let (t, value) = point(s.get("value").ok_or("vector sample without value")?)?;
                out.push(Sample { labels: labels_of(s.get("metric")), t, value });
            }
            Ok(QueryResult::Vector(out))
        }
        "scalar" => {
            let (t, value) = point(result)?;
            Ok(QueryResult::Scalar(Sample { labels: BTreeMap::new(), t, value }))
        }
        "matrix" => {
            let mut out = Vec::new();
            for s in result.as_array().ok_or("matrix result is not an array")? {
                let points = s
                    .get("values")
                    .and_then(Json::as_array)
                    .ok_or("matrix series without values")?
                    .iter()
                    .map(point)
                    .collect::<Result<Vec<_>, _>>()?;
                out.push(Series { labels: labels_of(s.get("metric")), points });
            }
            Ok(QueryResult::Matrix(out))
        }
        "string" => Ok(QueryResult::String(
            result.as_array().and_then(|a| a.get(1)).and_then(Json::as_str).unwrap_or("").to_string(),
        )),
        other => Err(format!("unknown resultType {other}")),
    }
}

// ---------------------------------------------------------------------------
// PromQL arithmetic as Prometheus 2.42 does it (promql/functions.go), to predict
// query results from raw samples exactly.

/// `rate(v[range])` of one counter series evaluated at `t_ms`: Prometheus 2.42's
/// `extrapolatedRate(isCounter = true, isRate = true)`. `points` are the raw samples
/// in the range, oldest first. `None` with fewer than two samples (no result).
pub fn extrapolated_rate(points: &[(i64, f64)], t_ms: i64, range_ms: i64) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let (range_start, range_end) = (t_ms - range_ms, t_ms);
    let (first, last) = (points[0], points[points.len() - 1]);
    let mut result = last.1 - first.1;
    let mut prev = first.1;
    for &(_, v) in &points[1..] {
        if v < prev {
            result += prev; // a counter reset
        }
        prev = v;
    }
    let mut duration_to_start = (first.0 - range_start) as f64 / 1000.0;
    let duration_to_end = (range_end - last.0) as f64 / 1000.0;
    let sampled_interval = (last.0 - first.0) as f64 / 1000.0;
    let average = sampled_interval / (points.len() - 1) as f64;
    if result > 0.0 && first.1 >= 0.0 {
        // No extrapolation below zero.
        let duration_to_zero = sampled_interval * (first.1 / result);
        if duration_to_zero < duration_to_start {
            duration_to_start = duration_to_zero;
        }
    }
    let threshold = average * 1.1;
    let mut interval = sampled_interval;
    interval += if duration_to_start < threshold { duration_to_start } else { average / 2.0 };
    interval += if duration_to_end < threshold { duration_to_end } else { average / 2.0 };
    Some(result * (interval / sampled_interval) / (range_ms as f64 / 1000.0))
}

/// `histogram_quantile(q, ...)` over one set of buckets `(le, cumulative count)`:
/// Prometheus 2.42's `bucketQuantile` (linear interpolation inside the bucket that
/// holds rank `q × count`; the first bucket starts at 0).
pub fn bucket_quantile(q: f64, buckets: &[(f64, f64)]) -> f64 {
    let mut b: Vec<(f64, f64)> = buckets.to_vec();
    b.sort_by(|x, y| x.0.partial_cmp(&y.0).unwrap());
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    if b.last().map_or(true, |l| l.0 != f64::INFINITY) || b.len() < 2 {
        return f64::NAN;
    }
    // ensureMonotonic
    let mut max = f64::NEG_INFINITY;
    for x in b.iter_mut() {
        if x.1 > max {
            max = x.1;
        } else if x.1 < max {
            x.1 = max;
        }
    }
    let observations = b[b.len() - 1].1;
    if observations == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * observations;
    let i = b[..b.len() - 1].iter().position(|x| x.1 >= rank).unwrap_or(b.len() - 1);
    if i == b.len() - 1 {
        return b[b.len() - 2].0;
    }
    if i == 0 && b[0].0 <= 0.0 {
        return b[0].0;
    }
    let (mut start, end, mut count) = (0.0, b[i].0, b[i].1);
    if i > 0 {
        start = b[i - 1].0;
        count -= b[i - 1].1;
        rank -= b[i - 1].1;
    }
    start + (end - start) * (rank / count)
}

/// `got` equals `want` within a relative `1e-9` (floating-point summation order is
/// Prometheus's own).
pub fn assert_near(what: &str, got: f64, want: f64) {
    let scale = want.abs().max(1e-300);
    assert!(
        got == want || (got - want).abs() / scale <= 1e-9,
        "{what}: got {got}, want {want} (relative error {:e})",
        (got - want).abs() / scale
    );
}

// ---------------------------------------------------------------------------
// The Grafana dashboard of examples/prometheus/grafana/.

const DASHBOARD: &str = "grafana/shmetrics-gateway.json";

/// The dashboard, parsed.
pub fn dashboard() -> Json {
    let path = examples_dir().join(DASHBOARD);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    Json::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every panel, rows' nested panels included.
pub fn dashboard_panels(doc: &Json) -> Vec<&Json> {
    let mut out = Vec::new();
    for p in doc.get("panels").and_then(Json::as_array).unwrap_or(&[]) {
        out.push(p);
        for inner in p.get("panels").and_then(Json::as_array).unwrap_or(&[]) {
            out.push(inner);
        }
    }
    out
}

/// The dashboard's PromQL as `(where, expr)`: every panel target's `expr`, and every
/// query variable's `label_values(<selector>, <label>)` as `<selector>` (Grafana
/// variables still in them; see `grafana_expand`).
pub fn dashboard_exprs(doc: &Json) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in dashboard_panels(doc) {
        let title = p.get("title").and_then(Json::as_str).unwrap_or("?");
        for t in p.get("targets").and_then(Json::as_array).unwrap_or(&[]) {
            let expr = t
                .get("expr")
                .and_then(Json::as_str)
                .unwrap_or_else(|| panic!("panel {title:?}: a target without expr"));
            let refid = t.get("refId").and_then(Json::as_str).unwrap_or("?");
            out.push((format!("panel {title:?} target {refid}"), expr.to_string()));
        }
    }
    for v in doc.get("templating").and_then(|t| t.get("list")).and_then(Json::as_array).unwrap_or(&[]) {
        if v.get("type").and_then(Json::as_str) != Some("query") {
            continue;
        }
        let name = v.get("name").and_then(Json::as_str).unwrap_or("?");
        let q = v.get("query").and_then(|q| q.as_str().or_else(|| q.get("query").and_then(Json::as_str))).unwrap_or("");
        let (selector, _label) = label_values(q)
            .unwrap_or_else(|| panic!("variable {name}: want label_values(<selector>, <label>), got {q:?}"));
        out.push((format!("variable ${name}"), selector));
    }
    out
}

/// `label_values(<selector>, <label>)` → `(selector, label)`.
pub fn label_values(q: &str) -> Option<(String, String)> {
    let inner = q.trim().strip_prefix("label_values(")?.strip_suffix(')')?;
    let comma = inner.rfind(',')?;
    Some((inner[..comma].trim().to_string(), inner[comma + 1..].trim().to_string()))
}

/// A dashboard expression as Grafana would send it with every variable at "All":
/// `$__rate_interval` 5m, `$__range` 1h, `$job`/`$instance`/`$namespace`/`$model` `.*`.
pub fn grafana_expand(expr: &str) -> String {
    let mut e = expr.to_string();
    for (var, value) in [
        ("$__rate_interval", "5m"),
        ("$__range", "1h"),
        ("$__interval", "15s"),
        ("$job", ".*"),
        ("$instance", ".*"),
        ("$namespace", ".*"),
        ("$model", ".*"),
    ] {
        e = e.replace(var, value);
    }
    assert!(!e.contains('$'), "unknown Grafana variable left in {e:?}");
    e
}
