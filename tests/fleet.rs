//! examples/fleet/ run for real: three gateway hosts (three nginx, each with its own
//! prefix, ports and region file, all from examples/fleet/gateway.conf), one Prometheus
//! (Debian's 2.42) on a copy of examples/fleet/prometheus.yml and its rules, discovering
//! the hosts through a file-SD target file, and remote-writing into VictoriaMetrics
//! (Debian's `victoria-metrics`, 1.79), the long-term store.
//!
//! 1. Exact, different traffic to each host. The same PromQL is then asked of
//!    Prometheus and of VictoriaMetrics' Prometheus-compatible API, and both must
//!    answer exactly the values the requests imply: per-host and fleet-wide request
//!    counts, tokens and spend per namespace and model, the success ratio, the p95 of
//!    the summed latency buckets; and the recording rules' outputs, which
//!    VictoriaMetrics receives from Prometheus (the rate rules, whose values depend
//!    on scrape times, agree between the two at one instant).
//! 2. One host is stopped (Prometheus sees it down), started again on the same region
//!    file (its counts carry on), and every host gets more traffic. `increase()` per
//!    host over a window that spans the outage equals the traffic sent in it, on both
//!    servers, and neither sees a counter reset.
//!
//! Why those values are exact. The counters are summed as they are (no `rate`), so
//! the sums are the counts. The latency histogram holds real durations, which only
//! the mock's delays control: fast requests (well under 2.5 s, even on a loaded
//! machine), requests delayed 3 s (in the bucket (2.5, 5]) and 6 s (in (5, 10]).
//! The p95's rank lands in (2.5, 5], so the answer depends only on the counts at
//! `le` 2.5 and 5, which the delays fix. (With 0.6 s and 1.5 s in (0.5, 1] and
//! (1, 2.5], a loaded machine once pushed two 0.6 s requests past 1 s.)
//! `increase()` extrapolates in Prometheus unless the window starts and ends on
//! samples: the window is taken from one sample of the host to another
//! (milliseconds), evaluated at the later one; VictoriaMetrics never extrapolates and
//! takes the sample at the window's start as its base, so both give `last - first`.
//!
//! Every server is stopped on drop, failing or not (and by PDEATHSIG if the test
//! process dies); the region files are removed.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};
use testkit::harness::http::get;
use testkit::harness::nginx::{die_with_parent, free_port, remove_shm, repo_dir};
use testkit::harness::prometheus::*;
use testkit::harness::Nginx;

const VICTORIA: &str = "/usr/bin/victoria-metrics";
const WAIT: Duration = Duration::from_secs(60);
const HOSTS: [&str; 3] = ["gw-a", "gw-b", "gw-c"];
const CHAT: &str = "/v1/chat/completions";
const EMBED: &str = "/v1/embeddings";
/// USD per million tokens, as examples/fleet/gateway.conf sets them.
const PRICES: &[(&str, f64, f64)] =
    &[("gpt-4o", 2.5, 10.0), ("gpt-4o-mini", 0.15, 0.6), ("text-embedding-3-small", 0.02, 0.0)];

fn fleet_dir() -> PathBuf {
    repo_dir().join("examples").join("fleet")
}

// ---------------------------------------------------------------------------
// The traffic.

/// A kind of request the test sends.
struct Kind {
    /// `X-Namespace`; `None` sends none (namespace `default`).
    ns: Option<&'static str>,
    route: &'static str,
    model: &'static str,
    /// `X-Mock-Status`: the mock answers with this error instead.
    error: Option<u16>,
    /// `X-Mock-Delay`, seconds.
    delay: Option<&'static str>,
}

const KINDS: [Kind; 7] = [
    Kind { ns: Some("wechat"), route: CHAT, model: "gpt-4o", error: None, delay: None },
    Kind { ns: Some("alipay"), route: CHAT, model: "gpt-4o-mini", error: None, delay: None },
    Kind { ns: None, route: EMBED, model: "text-embedding-3-small", error: None, delay: None },
    Kind { ns: Some("wechat"), route: CHAT, model: "gpt-4o", error: Some(500), delay: None },
    Kind { ns: Some("alipay"), route: CHAT, model: "gpt-4o-mini", error: Some(429), delay: None },
    // Slow, for the latency buckets: (2.5, 5] and (5, 10].
    Kind { ns: Some("alipay"), route: CHAT, model: "gpt-4o-mini", error: None, delay: Some("3") },
    Kind { ns: Some("wechat"), route: CHAT, model: "gpt-4o", error: None, delay: Some("6") },
];

/// Requests per kind (index into KINDS) for each host, first round. 65 requests: 59
/// fast or failed, 3 in (2.5, 5], 3 in (5, 10]; the p95's rank, 61.75, falls in
/// (2.5, 5]. With round 2: 79, 73, 3, 3, rank 75.05.
const ROUND1: [[u32; 7]; 3] = [[12, 5, 3, 2, 0, 1, 1], [4, 9, 6, 0, 2, 2, 0], [9, 3, 1, 2, 1, 0, 2]];
/// Second round, after gw-b's restart: only kinds each host had in round 1 (so every
/// series already exists and `increase()` over the window is the difference).
const ROUND2: [[u32; 7]; 3] = [[3, 1, 0, 0, 0, 0, 0], [0, 4, 2, 0, 1, 0, 0], [2, 0, 0, 1, 0, 0, 0]];

/// The request body of kind `k`: its length is the prompt tokens the mock reports.
fn body(k: &Kind) -> String {
    if k.route == EMBED {
        format!(r#"{{"model":"{}","input":"the quick brown fox"}}"#, k.model)
    } else {
        format!(
            r#"{{"model":"{}","max_tokens":{},"messages":[{{"role":"user","content":"Hello"}}]}}"#,
            k.model,
            max_tokens(k)
        )
    }
}

fn max_tokens(k: &Kind) -> u32 {
    if k.model == "gpt-4o" {
        40
    } else {
        25
    }
}

/// (input, output) tokens of one request of kind `k` (none for an error answer).
fn tokens(k: &Kind) -> (f64, f64) {
    match (k.error, k.route) {
        (Some(_), _) => (0.0, 0.0),
        (None, EMBED) => (body(k).len() as f64, 0.0),
        (None, _) => (body(k).len() as f64, max_tokens(k) as f64),
    }
}

fn cost(k: &Kind) -> f64 {
    let (i, o) = tokens(k);
    let p = PRICES.iter().find(|p| p.0 == k.model).unwrap();
    i / 1e6 * p.1 + o / 1e6 * p.2
}

fn namespace(k: &Kind) -> &'static str {
    k.ns.unwrap_or("default")
}

/// One POST on a fresh connection (`Connection: close`); returns the status.
fn post(port: u16, k: &Kind) -> u16 {
    let body = body(k);
    let mut req = format!(
        "POST {} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\n",
        k.route
    );
    if let Some(ns) = k.ns {
        req.push_str(&format!("X-Namespace: {ns}\r\n"));
    }
    if let Some(s) = k.error {
        req.push_str(&format!("X-Mock-Status: {s}\r\n"));
    }
    if let Some(d) = k.delay {
        req.push_str(&format!("X-Mock-Delay: {d}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    let mut s = TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap_or_else(|e| panic!("POST {}: {e}", k.route));
    let head = String::from_utf8_lossy(&raw);
    head.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("POST {}: bad answer {head:?}", k.route))
}

/// Sends one round to every host, the slow requests in parallel; checks every status.
fn send_round(hosts: &[Host], round: &[[u32; 7]; 3]) {
    thread::scope(|s| {
        for (h, counts) in hosts.iter().zip(round) {
            for (k, &n) in KINDS.iter().zip(counts) {
                for _ in 0..n {
                    let port = h.port;
                    let send = move || {
                        let status = post(port, k);
                        assert_eq!(status, k.error.unwrap_or(200), "{} {} {:?}", h.name, k.route, k.model);
                    };
                    if k.delay.is_some() {
                        s.spawn(send);
                    } else {
                        send();
                    }
                }
            }
        }
    });
}

/// What a round (or the sum of rounds) implies, per query.
#[derive(Default, Debug)]
struct Expected {
    per_host: BTreeMap<String, f64>,
    total: f64,
    ok: f64,
    /// (namespace, token_type) -> tokens
    ns_tokens: BTreeMap<(String, String), f64>,
    /// (namespace, model) -> (input tokens, output tokens, USD)
    ns_model: BTreeMap<(String, String), (f64, f64, f64)>,
    /// requests at most 2.5 s, at most 5 s (the delays decide)
    le_2_5: f64,
    le_5: f64,
}

fn expected(rounds: &[&[[u32; 7]; 3]]) -> Expected {
    let mut e = Expected::default();
    for round in rounds {
        for (host, counts) in HOSTS.iter().zip(round.iter()) {
            for (k, &n) in KINDS.iter().zip(counts) {
                let n = n as f64;
                *e.per_host.entry(host.to_string()).or_default() += n;
                e.total += n;
                if k.error.is_none() {
                    e.ok += n;
                }
                match k.delay {
                    None => {
                        e.le_2_5 += n;
                        e.le_5 += n;
                    }
                    Some("3") => e.le_5 += n,
                    Some(_) => {}
                }
                let (i, o) = tokens(k);
                if n > 0.0 && k.error.is_none() {
                    let ns = namespace(k).to_string();
                    *e.ns_tokens.entry((ns.clone(), "input".into())).or_default() += n * i;
                    *e.ns_tokens.entry((ns.clone(), "output".into())).or_default() += n * o;
                    let m = e.ns_model.entry((ns, k.model.to_string())).or_default();
                    m.0 += n * i;
                    m.1 += n * o;
                    m.2 += n * cost(k);
                }
            }
        }
    }
    e
}

impl Expected {
    /// The p95 over the summed buckets, by Prometheus's interpolation (only the
    /// buckets around the rank matter; the lower ones are folded into 2.5).
    fn p95(&self) -> f64 {
        bucket_quantile(0.95, &[(2.5, self.le_2_5), (5.0, self.le_5), (10.0, self.total), (f64::INFINITY, self.total)])
    }
}

// ---------------------------------------------------------------------------
// The servers.

/// One gateway host: its nginx and the values its template was rendered with.
struct Host {
    name: &'static str,
    port: u16,
    vars: Vec<(&'static str, String)>,
    nginx: Nginx,
}

impl Host {
    fn start(name: &'static str, shm: &Path) -> Host {
        let port = free_port();
        let vars = vec![
            ("PORT", port.to_string()),
            ("MOCK_PORT", free_port().to_string()),
            ("METRICS_PORT", free_port().to_string()),
            ("SHM_PATH", shm.display().to_string()),
            ("WORKERS", "2".to_string()),
        ];
        let nginx = start_nginx(name, &vars);
        Host { name, port, vars, nginx }
    }

    fn metrics_port(&self) -> u16 {
        self.nginx.metrics_port
    }

    /// Stops nginx, waits until Prometheus has seen the host down, and starts it
    /// again with the same ports and region file. Returns the stopped one.
    fn restart(&mut self, prom: &Prometheus) -> Nginx {
        self.nginx.stop();
        let expr = format!("up{{host=\"{}\"}} == 0", self.name);
        poll(WAIT, &format!("prometheus sees {} down", self.name), || match prom.query(&expr)? {
            r if !r.is_empty() => Ok(()),
            r => Err(format!("{r:?}")),
        });
        let fresh = start_nginx(self.name, &self.vars);
        std::mem::replace(&mut self.nginx, fresh)
    }
}

fn start_nginx(name: &str, vars: &[(&'static str, String)]) -> Nginx {
    let conf = fleet_dir().join("gateway.conf");
    let text = fs::read_to_string(&conf).unwrap_or_else(|e| panic!("read {}: {e}", conf.display()));
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Nginx::start_text(&format!("fleet-{name}"), &text, &vars)
}

/// Region files the hosts share across restarts: the harness does not own them.
struct Regions(Vec<PathBuf>);

impl Drop for Regions {
    fn drop(&mut self) {
        for p in &self.0 {
            remove_shm(p);
        }
    }
}

/// A VictoriaMetrics single-node server on a free loopback port, its data in `dir`.
/// Stopped (SIGINT, then SIGKILL) when dropped; `dir` removed unless the test failed.
struct Victoria {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Victoria {
    fn start(dir: &Path) -> Victoria {
        assert!(
            Path::new(VICTORIA).is_file(),
            "{VICTORIA} not found: install Debian's victoria-metrics package (`make deps`)"
        );
        let port = free_port();
        let log = fs::File::create(dir.join("victoria.log")).unwrap();
        let mut cmd = Command::new(VICTORIA);
        cmd.arg(format!("-storageDataPath={}", dir.join("vmdata").display()))
            .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            .arg("-retentionPeriod=1d")
            // Fresh samples are queryable at once (default: 30 s behind now), and
            // every query reads the raw data (no response cache).
            .arg("-search.latencyOffset=0s")
            .arg("-search.disableCache")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {VICTORIA}: {e}"));
        let mut vm = Victoria { dir: dir.to_path_buf(), port, child: Some(child) };
        poll(WAIT, "victoria-metrics /health", || {
            if let Some(status) = vm.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("victoria-metrics exited ({status}); its log:\n{}", vm.log());
            }
            match get(port, "/health") {
                Ok(r) if r.status == 200 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });
        vm
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("victoria.log")).unwrap_or_default()
    }

    fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            stop_child(child, libc::SIGINT, "victoria-metrics");
        }
    }
}

impl Drop for Victoria {
    fn drop(&mut self) {
        self.stop();
        if thread::panicking() {
            eprintln!("test failed: victoria-metrics log and data kept in {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// The two servers that answer PromQL.
struct Servers<'a> {
    prom: &'a Prometheus,
    vm: &'a Victoria,
}

/// A query's answer as `labels -> value`, the labels named in `keys` only
/// (VictoriaMetrics keeps the metric name where Prometheus drops it, and neither
/// matters here).
type Answer = BTreeMap<Vec<String>, f64>;

fn answer(result: QueryResult, keys: &[&str]) -> Answer {
    result.samples().into_iter().map(|s| (keys.iter().map(|k| s.label(k).to_string()).collect(), s.value)).collect()
}

impl Servers<'_> {
    fn ask(&self, port: u16, expr: &str, keys: &[&str], at: Option<i64>) -> Result<Answer, String> {
        query_api(port, expr, at).map(|r| answer(r, keys))
    }

    /// Asks both servers `expr` until each answers `want` (labels `keys`), values
    /// equal within a relative `tol` (`EXACT`, `SUMMED`, `STORED`); returns both answers.
    fn check(&self, expr: &str, keys: &[&str], want: &Answer, tol: Tolerance, at: Option<i64>) -> (Answer, Answer) {
        let matches = |got: &Answer, rel: f64| {
            got.len() == want.len()
                && got
                    .iter()
                    .zip(want)
                    .all(|((gk, gv), (wk, wv))| gk == wk && (gv == wv || (gv - wv).abs() <= rel * wv.abs()))
        };
        let mut out = Vec::new();
        for (server, port, rel) in
            [("prometheus", self.prom.port, tol.prometheus), ("victoria-metrics", self.vm.port, tol.victoria)]
        {
            let got = poll(WAIT, &format!("{server}: {expr} == {want:?} (relative {rel:e})"), || {
                let got = self.ask(port, expr, keys, at)?;
                if matches(&got, rel) {
                    Ok(got)
                } else {
                    Err(format!("{got:?}"))
                }
            });
            out.push(got);
        }
        let vm = out.pop().unwrap();
        let prom = out.pop().unwrap();
        eprintln!("[checked] {expr}\n    prometheus:       {}\n    victoria-metrics: {}", show(&prom), show(&vm));
        (prom, vm)
    }

    /// A query whose answer is one value with no labels.
    fn check_value(&self, expr: &str, want: f64, tol: Tolerance) {
        self.check(expr, &[], &BTreeMap::from([(vec![], want)]), tol, None);
    }
}

/// How far each server's answer may be from the value the traffic implies, relative.
#[derive(Clone, Copy)]
struct Tolerance {
    prometheus: f64,
    victoria: f64,
}

/// Counts, tokens (integers), and anything either server computes from them.
const EXACT: Tolerance = Tolerance { prometheus: 0.0, victoria: 0.0 };
/// A fraction Prometheus computes and stores (a recorded ratio or quantile):
/// VictoriaMetrics 1.79 stores values as decimals of about 12 significant digits
/// (0.8923076923076924 comes back as 0.892307692307).
const STORED: Tolerance = Tolerance { prometheus: 0.0, victoria: 1e-11 };
/// A quantile VictoriaMetrics interpolates itself: its arithmetic differs from
/// Prometheus's in the last bits (4.208333333333331 where Prometheus and the
/// formula give 4.20833333333333).
const INTERPOLATED: Tolerance = Tolerance { prometheus: 0.0, victoria: 1e-14 };
/// Sums of fractional increments (spend): the order of additions (per worker, per
/// host, per server) moves the last bits, and VictoriaMetrics stores 12 digits.
const SUMMED: Tolerance = Tolerance { prometheus: 1e-12, victoria: 1e-11 };

fn show(a: &Answer) -> String {
    a.iter()
        .map(|(k, v)| if k.is_empty() { format!("{v}") } else { format!("{}={v}", k.join(",")) })
        .collect::<Vec<_>>()
        .join("  ")
}

/// Expected values as an answer, zeros left out.
fn keyed(m: impl IntoIterator<Item = (Vec<String>, f64)>) -> Answer {
    m.into_iter().filter(|(_, v)| *v != 0.0).collect()
}

/// The plan's figures across hosts on both servers, ad hoc and as recorded by the
/// rules. Zero-valued series (tokens the embeddings never produce) are not compared:
/// the queries drop them with `> 0`.
fn check_figures(s: &Servers, e: &Expected) {
    let per_host = keyed(e.per_host.iter().map(|(h, v)| (vec![h.clone()], *v)));
    s.check("sum by (host) (http_requests_total)", &["host"], &per_host, EXACT, None);
    s.check("host:http_requests:sum", &["host"], &per_host, EXACT, None);
    s.check_value("sum(http_requests_total)", e.total, EXACT);
    s.check_value("sum(fleet:http_requests:sum)", e.total, EXACT);

    let tokens = keyed(e.ns_tokens.iter().map(|((n, t), v)| (vec![n.clone(), t.clone()], *v)));
    s.check(
        "sum by (namespace, token_type) (namespace_tokens_total) > 0",
        &["namespace", "token_type"],
        &tokens,
        EXACT,
        None,
    );
    s.check("namespace_token_type:namespace_tokens:sum > 0", &["namespace", "token_type"], &tokens, EXACT, None);
    let by =
        |f: fn(&(f64, f64, f64)) -> f64| keyed(e.ns_model.iter().map(|((n, m), v)| (vec![n.clone(), m.clone()], f(v))));
    let nm = ["namespace", "model"];
    s.check("sum by (namespace, model) (model_tokens_input_total) > 0", &nm, &by(|v| v.0), EXACT, None);
    s.check("sum by (namespace, model) (model_tokens_output_total) > 0", &nm, &by(|v| v.1), EXACT, None);
    s.check("namespace_model:model_tokens_output:sum > 0", &nm, &by(|v| v.1), EXACT, None);
    // Spend is a sum of fractional increments: the order of additions (per worker,
    // per host, per server) moves the last bits.
    s.check("sum by (namespace, model) (model_cost_usd_total) > 0", &nm, &by(|v| v.2), SUMMED, None);
    s.check("namespace_model:model_cost_usd:sum > 0", &nm, &by(|v| v.2), SUMMED, None);

    s.check_value("sum(http_requests_total{status_code=~\"2..\"}) / sum(http_requests_total)", e.ok / e.total, EXACT);
    s.check_value("fleet:http_requests_2xx:ratio", e.ok / e.total, STORED);
    s.check_value(
        "histogram_quantile(0.95, sum by (le) (http_request_duration_seconds_bucket))",
        e.p95(),
        INTERPOLATED,
    );
    s.check_value("fleet:http_request_duration_seconds:p95", e.p95(), STORED);
}

// ---------------------------------------------------------------------------

#[test]
fn fleet_through_prometheus_and_victoria_metrics() {
    let started = Instant::now();
    let regions = Regions(
        HOSTS.iter().map(|h| PathBuf::from(format!("/dev/shm/shmetrics-fleet-{}-{h}", std::process::id()))).collect(),
    );
    for r in &regions.0 {
        remove_shm(r);
    }
    let mut hosts: Vec<Host> = HOSTS.iter().zip(&regions.0).map(|(h, r)| Host::start(h, r)).collect();

    let dir = temp_dir("fleet");
    let vm = Victoria::start(&dir);

    // The example's Prometheus: intervals cut to 1 s, remote write flushed every
    // second to this VictoriaMetrics, the target file naming this test's hosts.
    let prom_dir = dir.join("prometheus");
    copy_tree(&fleet_dir(), &prom_dir);
    let yml = fs::read_to_string(prom_dir.join("prometheus.yml")).unwrap();
    for want in [
        "scrape_interval: 15s",
        "evaluation_interval: 15s",
        "batch_send_deadline: 5s",
        "url: http://127.0.0.1:8428/api/v1/write",
    ] {
        assert!(yml.contains(want), "examples/fleet/prometheus.yml no longer has {want:?}: update this test");
    }
    let yml = yml
        .replace(": 15s", ": 1s")
        .replace("batch_send_deadline: 5s", "batch_send_deadline: 1s")
        .replace("127.0.0.1:8428", &format!("127.0.0.1:{}", vm.port));
    fs::write(prom_dir.join("prometheus.yml"), yml).unwrap();
    let targets: Vec<String> = hosts
        .iter()
        .map(|h| format!(r#"{{"targets": ["127.0.0.1:{}"], "labels": {{"host": "{}"}}}}"#, h.metrics_port(), h.name))
        .collect();
    fs::write(prom_dir.join("targets").join("hosts.json"), format!("[\n  {}\n]\n", targets.join(",\n  "))).unwrap();
    let prom = Prometheus::start_dir(&prom_dir);
    let prom_started = Instant::now();
    prom.wait_targets_up(3, WAIT);
    let s = Servers { prom: &prom, vm: &vm };

    // Every target's instance is its host name, not its address.
    let up = poll(WAIT, "up by instance", || {
        let a = s.ask(prom.port, "up", &["instance", "host"], None)?;
        if a.len() == 3 {
            Ok(a)
        } else {
            Err(format!("{a:?}"))
        }
    });
    let names: Vec<Vec<String>> = HOSTS.iter().map(|h| vec![h.to_string(), h.to_string()]).collect();
    assert_eq!(up.keys().cloned().collect::<Vec<_>>(), names, "instance and host labels");

    // 1. Different, exact traffic to each host.
    send_round(&hosts, &ROUND1);
    let e1 = expected(&[&ROUND1]);
    check_figures(&s, &e1);
    // The rate rules' values depend on scrape times, not only on the traffic: both
    // servers hold the same recorded samples, so at one instant they agree. The
    // instant is 1.5 s back, so that no evaluation stamped before it is still to be
    // written; waited for until the rule has its series (a rate needs two scrapes).
    for (expr, keys, series) in [
        ("host:http_requests:rate5m", &["host"][..], 3),
        ("fleet:http_requests:rate5m", &[][..], 1),
        ("fleet:http_requests_5xx:ratio_rate5m", &[][..], 1),
        ("fleet:http_request_duration_seconds:p95_5m", &[][..], 1),
        ("namespace_model:model_cost_usd:rate5m", &["namespace", "model"][..], 3),
    ] {
        let (at, prom_answer) = poll(WAIT, &format!("prometheus: {series} series of {expr}"), || {
            let at = now_ms() - 1500;
            let a = s.ask(prom.port, expr, keys, Some(at))?;
            if a.len() == series {
                Ok((at, a))
            } else {
                Err(format!("{a:?}"))
            }
        });
        // (A series born at its final value has a rate of 0: the 5xx ratio may be.)
        assert!(prom_answer.values().all(|v| v.is_finite()), "{expr}: {prom_answer:?}");
        s.check(expr, keys, &prom_answer, STORED, Some(at));
    }
    let round1_checked = now_ms();
    eprintln!("[measure] round 1 checked on both servers after {:?}", started.elapsed());

    // 2. gw-b stops; Prometheus sees it down (and marks its series stale); it starts
    //    again on the same region file; the counts carry on.
    let old = hosts[1].restart(&prom);
    drop(old);
    prom.wait_targets_up(3, WAIT);
    s.check(
        "sum by (host) (http_requests_total)",
        &["host"],
        &keyed(e1.per_host.iter().map(|(h, v)| (vec![h.clone()], *v))),
        EXACT,
        None,
    );

    send_round(&hosts, &ROUND2);
    let e12 = expected(&[&ROUND1, &ROUND2]);
    check_figures(&s, &e12);
    let e2 = expected(&[&ROUND2]);

    // increase() per host, from its last sample before the stop to its latest one.
    let mut fleet_increase = 0.0;
    for h in HOSTS {
        let samples = prom.query(&format!("up{{host=\"{h}\"}}[5m]")).unwrap_or_else(|e| panic!("{e}"));
        let QueryResult::Matrix(m) = samples else { panic!("up[5m]: {samples:?}") };
        let points = &m[0].points;
        let first = points.iter().rev().find(|p| p.0 <= round1_checked).expect("a sample before the stop").0;
        let last = points.last().unwrap().0;
        let down = points.iter().filter(|p| p.0 > first && p.0 < last && p.1 == 0.0).count();
        assert_eq!(down > 0, h == "gw-b", "{h}: {down} failed scrapes between {first} and {last}: {points:?}");
        let expr = format!("sum(increase(http_requests_total{{host=\"{h}\"}}[{}ms]))", last - first);
        let want = e2.per_host[h];
        s.check(&expr, &[], &BTreeMap::from([(vec![], want)]), EXACT, Some(last));
        fleet_increase += want;
        let resets = format!("sum(resets(http_requests_total{{host=\"{h}\"}}[{}ms]))", last - first);
        s.check(&resets, &[], &BTreeMap::from([(vec![], 0.0)]), EXACT, Some(last));
    }
    assert_eq!(fleet_increase, e2.total, "round 2 across hosts");
    eprintln!(
        "[measure] increase() across the restart: {fleet_increase} requests over 3 hosts (round 2 sent {})",
        e2.total
    );

    // Every recording and alerting rule evaluated without error.
    let rules = prom.rules();
    assert_eq!(rules.len(), 21, "rules loaded: {rules:?}");
    for r in &rules {
        assert!(r.3 == "ok" && r.4.is_empty(), "rule {} in {}: health {}, error {}", r.1, r.0, r.3, r.4);
    }
    // Remote write went through without a complaint on either side.
    let bad: Vec<String> = (prom.log().lines().filter(|l| l.contains("level=error")))
        .chain(vm.log().lines().filter(|l| ["\terror\t", "\tpanic\t", "\tfatal\t"].iter().any(|lvl| l.contains(lvl))))
        .map(str::to_string)
        .collect();
    assert!(bad.is_empty(), "errors logged by prometheus or victoria-metrics:\n{}", bad.join("\n"));
    measure(&prom, &vm, &hosts, prom_started);
    for h in &hosts {
        h.nginx.assert_no_errors(&[]);
    }
    eprintln!("[measure] fleet test took {:?}", started.elapsed());
}

/// The example's size, for README's "Many hosts": series per host, samples per
/// second into Prometheus and VictoriaMetrics, what VictoriaMetrics stores per sample.
/// `SHMETRICS_FLEET_SOAK=<seconds>` first keeps traffic flowing that long (1 s scrapes)
/// so that VictoriaMetrics' figure per sample is not one of a few seconds of data.
fn measure(prom: &Prometheus, vm: &Victoria, hosts: &[Host], prom_started: Instant) {
    let soak: u64 = std::env::var("SHMETRICS_FLEET_SOAK").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    if soak > 0 {
        let end = Instant::now() + Duration::from_secs(soak);
        while Instant::now() < end {
            send_round(hosts, &ROUND2);
            thread::sleep(Duration::from_millis(200));
        }
    }
    for sample in prom.samples("scrape_samples_scraped") {
        eprintln!("[measure] {} exposes {} samples per scrape", sample.label("host"), sample.value);
    }
    let metric = |port: u16, line_prefix: &str| -> f64 {
        let body = get(port, "/metrics").map(|r| String::from_utf8_lossy(&r.body).into_owned()).unwrap_or_default();
        body.lines()
            .filter(|l| l.starts_with(line_prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let seconds = prom_started.elapsed().as_secs_f64();
    let appended = metric(prom.port, "prometheus_tsdb_head_samples_appended_total");
    let sent = metric(prom.port, "prometheus_remote_storage_samples_total");
    let series = metric(prom.port, "prometheus_tsdb_head_series ");
    eprintln!(
        "[measure] prometheus: {series} series in its head; {appended} samples appended, {sent} remote-written in {seconds:.1} s ({:.1} samples/s at 1 s scrapes)",
        appended / seconds
    );
    for path in ["/internal/force_flush", "/internal/force_merge"] {
        let r = get(vm.port, path);
        eprintln!("[measure] victoria-metrics {path}: {:?}", r.map(|r| r.status));
    }
    if soak > 0 {
        thread::sleep(Duration::from_secs(5)); // the merge runs in the background
    }
    let rows = metric(vm.port, "vm_rows_inserted_total{type=\"promremotewrite\"}");
    let data = metric(vm.port, "vm_data_size_bytes{type=\"storage/");
    let index = metric(vm.port, "vm_data_size_bytes{type=\"indexdb\"}");
    eprintln!(
        "[measure] victoria-metrics: {rows} rows received; data {data} bytes ({:.2} per row), index {index} bytes",
        data / rows.max(1.0)
    );
}

/// The example's files as promtool sees them: the configuration is valid, and the
/// rules' unit tests (rules/fleet.rules.test.yml, exact values) pass.
#[test]
fn promtool_checks_the_example() {
    for args in [&["check", "config", "prometheus.yml"][..], &["test", "rules", "rules/fleet.rules.test.yml"][..]] {
        let out = Command::new(PROMTOOL)
            .args(args)
            .current_dir(fleet_dir())
            .output()
            .unwrap_or_else(|e| panic!("run {PROMTOOL}: {e} (install Debian's prometheus package: `make deps`)"));
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && text.contains("SUCCESS"), "promtool {}:\n{text}", args.join(" "));
    }
}
