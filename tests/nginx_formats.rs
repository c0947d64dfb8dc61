//! The exposition formats as a scraper sees them through nginx
//! (nginx-test-conf/prometheus.conf): Accept negotiation between OpenMetrics 1.0.0
//! and text 0.0.4, each body checked by a strict parser of its own format (Python
//! `prometheus_client`'s OpenMetrics parser; promtool and testkit/src/expo.rs for
//! 0.0.4) and against the other format; HELP and label escaping; gzip; the
//! `?name[]=` family filter; the JSON view.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;
use testkit::harness::expo::series_key;
use testkit::harness::prometheus::Json;
use testkit::harness::*;

/// Prometheus 2.42's Accept header (scrape/scrape.go `acceptHeader`; the string is in
/// /usr/bin/prometheus), which tests/nginx_prometheus.rs also sees in nginx's log.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
const CT_OM: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const CT_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const CT_JSON: &str = "application/json; charset=utf-8";

/// The help text and label value of `gateway_build_info` as defined in
/// prometheus.conf (a quote, a backslash and a newline in each).
const BUILD_HELP: &str = "Build of the gateway: \"quoted\", C:\\gateway\\conf and a newline\nin the help text";
const BUILD_NOTE: &str = "a \"quoted\" \\ value\nline 2";

/// A small known load: (namespace, path and query, times).
const REQUESTS: &[(&str, &str, usize)] = &[
    ("wechat", "/v1/chat/completions?model=gpt-4o&in=100&out=30&latency=0.3&ttft=0.2&cache=hit", 3),
    ("alipay", "/v1/chat/completions?model=gpt-4o-mini&in=50&out=20&latency=1.5&cache=miss", 2),
    ("wechat", "/v1/chat/completions?model=gpt-4o&limit=requests_per_minute&latency=0.002&cache=hit", 1),
    ("wechat", "/v1/embeddings?model=text-embedding-3-small&in=8&out=0&latency=0.02&problem=usage_missing", 1),
];
const SENT: f64 = 7.0;

/// nginx with the known load recorded (all of it, log phases included).
/// One worker: a scrape then never lands between the updates of one request's log
/// handler (with two, the first fetch could see a request half recorded).
fn loaded_nginx() -> Nginx {
    let nginx = Nginx::start("prometheus", &[("WORKERS", "1")]);
    for &(ns, path, times) in REQUESTS {
        for _ in 0..times {
            let r = get_with_headers(nginx.port, path, &[("X-Namespace", ns)]).unwrap();
            assert!(r.status == 200 || r.status == 429, "GET {path}: {}", r.status);
        }
    }
    get(nginx.port, "/admin/accuracy?model=gpt-4o&task_type=classification&percent=93.5").unwrap();
    scrape_until(nginx.metrics_port, Duration::from_secs(10), |e| e.sum("gateway_requests_total") >= SENT);
    nginx
}

fn fetch(port: u16, path: &str, headers: &[(&str, &str)]) -> Response {
    let r = get_with_headers(port, path, headers).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(r.status, 200, "GET {path} {headers:?}: {}", String::from_utf8_lossy(&r.body));
    r
}

// ---------------------------------------------------------------------------
// Python's prometheus_client OpenMetrics parser

/// A python3 that has `prometheus_client`, or None (the checks that need it skip).
fn python() -> Option<&'static str> {
    static PY: OnceLock<Option<&'static str>> = OnceLock::new();
    *PY.get_or_init(|| {
        for py in ["python3", "/usr/bin/python3"] {
            let ok = Command::new(py)
                .args(["-c", "import prometheus_client.openmetrics.parser"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Some(py);
            }
        }
        eprintln!(
            "SKIPPED: no python3 with prometheus_client: the strict OpenMetrics checks did not run \
             (install it: python3 -m pip install prometheus_client)"
        );
        None
    })
}

/// Runs `script` with `input` on stdin; its stdout, or the error it printed.
fn run_python(py: &str, script: &str, input: &[u8]) -> Result<String, String> {
    let mut child = Command::new(py)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{py}: {e}"))?;
    let mut stdin = child.stdin.take().unwrap();
    let out = std::thread::scope(|s| {
        s.spawn(move || {
            let _ = stdin.write_all(input);
        });
        child.wait_with_output()
    })
    .map_err(|e| format!("{py}: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8(out.stdout).unwrap())
}

/// One family as the Python parser returned it.
#[derive(Debug)]
struct OmFamily {
    name: String,
    kind: String,
    help: String,
    /// (sample name, labels, value)
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

/// Parses `body` with `prometheus_client.openmetrics.parser` (which rejects any
/// deviation from OpenMetrics 1.0.0: a missing or early `# EOF`, a counter sample
/// without `_total`, interleaved label sets, bad escapes...). `Ok(None)` when no
/// python3 has the module.
fn python_openmetrics(body: &str) -> Result<Option<Vec<OmFamily>>, String> {
    let Some(py) = python() else { return Ok(None) };
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for f in text_string_to_metric_families(sys.stdin.read()):
    out.append({"name": f.name, "type": f.type, "help": f.documentation,
                "samples": [[s.name, s.labels, repr(float(s.value))] for s in f.samples]})
print(json.dumps(out))
"#;
    let text = run_python(py, SCRIPT, body.as_bytes())?;
    let doc = Json::parse(&text).map_err(|e| format!("python output: {e}"))?;
    let mut fams = Vec::new();
    for f in doc.as_array().unwrap() {
        let s = |k: &str| f.get(k).and_then(Json::as_str).unwrap().to_string();
        let samples = f
            .get("samples")
            .and_then(Json::as_array)
            .unwrap()
            .iter()
            .map(|s| {
                let a = s.as_array().unwrap();
                let labels = a[1]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect();
                let v = match a[2].as_str().unwrap() {
                    "inf" => f64::INFINITY,
                    "-inf" => f64::NEG_INFINITY,
                    other => other.parse().unwrap(),
                };
                (a[0].as_str().unwrap().to_string(), labels, v)
            })
            .collect();
        fams.push(OmFamily { name: s("name"), kind: s("type"), help: s("help"), samples });
    }
    Ok(Some(fams))
}

/// The label set of a sample line without `le`, and the sample name (a small
/// quote-aware reader: label values may hold `{`, `}`, `,`, `"`).
fn sample_key(line: &str) -> (String, String) {
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = line[..name_end].to_string();
    let mut pairs = Vec::new();
    if line[name_end..].starts_with('{') {
        let b = line.as_bytes();
        let mut i = name_end + 1;
        while b[i] != b'}' {
            let eq = i + line[i..].find('=').unwrap();
            let key = &line[i..eq];
            let mut j = eq + 2; // past ="
            while b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            if key != "le" {
                pairs.push(line[i..=j].to_string());
            }
            i = j + 1;
            if b[i] == b',' {
                i += 1;
            }
        }
    }
    (name, pairs.join(","))
}

/// Families are contiguous, and within a family each label set's samples (a
/// histogram's buckets, `_sum` and `_count`) are contiguous, with HELP/TYPE first.
fn assert_grouped(body: &str) {
    let mut families_done = BTreeSet::new();
    let mut keys_done = BTreeSet::new();
    let (mut family, mut key) = (String::new(), String::new());
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ").or_else(|| line.strip_prefix("# TYPE ")) {
            let name = rest.split(' ').next().unwrap().to_string();
            if name != family {
                assert!(families_done.insert(family.clone()), "family {family} appears twice");
                assert!(!families_done.contains(&name), "family {name} is split:\n{body}");
                family = name;
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (sample, labels) = sample_key(line);
        assert!(sample.starts_with(&family), "sample {sample} outside its family's block ({family})");
        let k = format!("{family}{{{labels}}}");
        if k != key {
            assert!(keys_done.insert(key.clone()) || key.is_empty(), "label set {key} twice");
            assert!(!keys_done.contains(&k), "the samples of label set {k} are not contiguous:\n{body}");
            key = k;
        }
    }
}

/// The body is 0.0.4: parsed by the strict harness parser and by promtool.
fn assert_text(body: &str) -> Exposition {
    let exp = Exposition::parse(body).unwrap_or_else(|e| panic!("not text 0.0.4: {e}\n{body}"));
    promtool_check(body).unwrap_or_else(|e| panic!("promtool: {e}\n{body}"));
    assert!(!body.contains("# EOF"), "0.0.4 body with # EOF");
    exp
}

/// The body is OpenMetrics 1.0.0 and says exactly what the 0.0.4 body `text` says.
fn assert_openmetrics(body: &str, text: &Exposition) {
    assert!(body.ends_with("# EOF\n"), "OpenMetrics body must end with # EOF:\n{body}");
    assert_eq!(body.matches("# EOF").count(), 1, "one # EOF only");
    assert_grouped(body);
    // Counter families are named without _total; their samples carry it.
    for line in body.lines().filter(|l| l.starts_with("# TYPE ") && l.ends_with(" counter")) {
        let name = line.split(' ').nth(2).unwrap();
        assert!(!name.ends_with("_total"), "OpenMetrics counter family named with _total: {line}");
        let total = format!("{name}_total");
        assert!(
            body.lines()
                .filter(|l| !l.starts_with('#'))
                .all(|l| !l.starts_with(&format!("{name}{{")) && !l.starts_with(&format!("{name} "))),
            "counter {name} has a sample without _total"
        );
        assert!(text.family(&total).is_some(), "{total} in OpenMetrics but not in text");
    }
    let Some(om) =
        python_openmetrics(body).unwrap_or_else(|e| panic!("prometheus_client rejected the body: {e}\n{body}"))
    else {
        return;
    };
    // Same families, types, help texts and samples as the text exposition.
    let mut om_samples = BTreeSet::new();
    for f in &om {
        let text_name = if f.kind == "counter" { format!("{}_total", f.name) } else { f.name.clone() };
        let tf = text.family(&text_name).unwrap_or_else(|| panic!("{} not in the text body", f.name));
        assert_eq!(tf.kind.as_deref(), Some(f.kind.as_str()), "type of {}", f.name);
        assert_eq!(tf.help.as_deref(), Some(f.help.as_str()), "help of {}", f.name);
        for (name, labels, v) in &f.samples {
            // Worker slots move when a worker first records: not the same between fetches.
            if name == "shmetrics_worker_slots" {
                continue;
            }
            om_samples
                .insert(format!("{} {v:?}", series_key(name, labels.iter().map(|(k, v)| (k.as_str(), v.as_str())))));
        }
    }
    assert_eq!(om.len(), text.families.len(), "family count");
    let text_samples: BTreeSet<String> = text
        .samples
        .iter()
        .filter(|s| s.name != "shmetrics_worker_slots")
        .map(|s| {
            format!("{} {:?}", series_key(&s.name, s.labels.iter().map(|(k, v)| (k.as_str(), v.as_str()))), s.value)
        })
        .collect();
    assert_eq!(om_samples, text_samples, "OpenMetrics and text samples differ");
}

/// A body without the worker-slot self-metric, which moves when a worker first
/// records (in whichever worker answers a later request).
fn stable(body: &str) -> String {
    body.lines().filter(|l| !l.starts_with("shmetrics_worker_slots{")).collect::<Vec<_>>().join("\n")
}

#[test]
fn accept_header_picks_the_format() {
    let nginx = loaded_nginx();
    let port = nginx.metrics_port;

    let text_body = fetch(port, "/metrics", &[]);
    assert_eq!(text_body.header("content-type"), Some(CT_TEXT), "no Accept header");
    let text = assert_text(text_body.text());
    assert_eq!(text.sum("gateway_requests_total"), SENT);

    // Anything but an OpenMetrics-preferring Accept gets 0.0.4.
    for accept in [
        "text/plain",
        "*/*",
        "text/plain;version=0.0.4",
        "application/json",
        "text/plain;q=0.9,application/openmetrics-text;q=0.5",
        "application/openmetrics-text;version=2.0.0",
        "",
    ] {
        let r = fetch(port, "/metrics", &[("Accept", accept)]);
        assert_eq!(r.header("content-type"), Some(CT_TEXT), "Accept: {accept}");
        assert_eq!(stable(r.text()), stable(text_body.text()), "Accept: {accept}: a different body");
    }
    assert_text(fetch(port, "/metrics", &[("Accept", "text/plain")]).text());

    // Prometheus's own header, and other ways of preferring OpenMetrics.
    for accept in [
        PROMETHEUS_ACCEPT,
        "application/openmetrics-text",
        "application/openmetrics-text; version=0.0.1; q=0.75, text/plain; version=0.0.4; q=0.5",
    ] {
        let r = fetch(port, "/metrics", &[("Accept", accept)]);
        assert_eq!(r.header("content-type"), Some(CT_OM), "Accept: {accept}");
        assert_openmetrics(r.text(), &text);
    }

    // /metrics-text ignores Accept (the way to scrape 0.0.4 with Prometheus 2.42).
    let forced = fetch(port, "/metrics-text", &[("Accept", PROMETHEUS_ACCEPT)]);
    assert_eq!(forced.header("content-type"), Some(CT_TEXT));
    assert_eq!(forced.text(), text_body.text());
    nginx.assert_no_errors(&[]);
}

#[test]
fn help_and_label_escaping_per_format() {
    let nginx = loaded_nginx();
    let text = fetch(nginx.metrics_port, "/metrics", &[]);
    let om = fetch(nginx.metrics_port, "/metrics", &[("Accept", PROMETHEUS_ACCEPT)]);
    let has = |body: &str, line: &str| body.lines().any(|l| l == line);

    // 0.0.4: HELP escapes \ and newline only; OpenMetrics escapes " too.
    let text_help = r#"# HELP gateway_build_info Build of the gateway: "quoted", C:\\gateway\\conf and a newline\nin the help text"#;
    let om_help = r#"# HELP gateway_build_info Build of the gateway: \"quoted\", C:\\gateway\\conf and a newline\nin the help text"#;
    assert!(has(text.text(), text_help), "text HELP line; body:\n{}", text.text());
    assert!(has(om.text(), om_help), "OpenMetrics HELP line; body:\n{}", om.text());
    // Label values escape \, " and newline in both.
    let sample = r#"gateway_build_info{version="1.2.3",note="a \"quoted\" \\ value\nline 2"} 1"#;
    assert!(has(text.text(), sample) && has(om.text(), sample), "escaped label value");

    // Both parsers read back the original strings.
    let exp = assert_text(text.text());
    assert_eq!(exp.family("gateway_build_info").unwrap().help.as_deref(), Some(BUILD_HELP));
    assert_eq!(exp.expect("gateway_build_info", &[("version", "1.2.3"), ("note", BUILD_NOTE)]), 1.0);
    if let Some(fams) = python_openmetrics(om.text()).unwrap() {
        let f = fams.iter().find(|f| f.name == "gateway_build_info").unwrap();
        assert_eq!(f.help, BUILD_HELP);
        assert_eq!(f.samples[0].1.get("note").map(String::as_str), Some(BUILD_NOTE));
    }
}

/// `gzip -dc` of `data`.
fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut child = Command::new("gzip")
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run gzip");
    let mut stdin = child.stdin.take().unwrap();
    let out = std::thread::scope(|s| {
        s.spawn(move || {
            let _ = stdin.write_all(data);
        });
        child.wait_with_output().unwrap()
    });
    assert!(out.status.success(), "gzip -dc: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[test]
fn gzip_when_the_scraper_accepts_it() {
    let nginx = loaded_nginx();
    let port = nginx.metrics_port;
    for (path, accept, ct) in [
        ("/metrics", "", CT_TEXT),
        ("/metrics", PROMETHEUS_ACCEPT, CT_OM),
        ("/metrics-text", PROMETHEUS_ACCEPT, CT_TEXT),
        ("/metrics.json", "", CT_JSON),
    ] {
        let mut headers = vec![];
        if !accept.is_empty() {
            headers.push(("Accept", accept));
        }
        let plain = fetch(port, path, &headers);
        assert_eq!(plain.header("content-type"), Some(ct), "{path}");
        assert_eq!(plain.header("content-encoding"), None, "{path} without Accept-Encoding");

        headers.push(("Accept-Encoding", "gzip"));
        let gz = fetch(port, path, &headers);
        assert_eq!(gz.header("content-type"), Some(ct), "{path} gzipped");
        assert_eq!(gz.header("content-encoding"), Some("gzip"), "{path} with Accept-Encoding: gzip");
        assert_eq!(gz.header("vary"), Some("Accept-Encoding"), "{path}: caches must key on Accept-Encoding");
        let body = gunzip(&gz.body);
        assert_eq!(String::from_utf8(body).unwrap(), plain.text(), "{path}: gunzipped body");
        assert!(
            gz.body.len() * 3 < plain.body.len(),
            "{path}: {} bytes gzipped from {}",
            gz.body.len(),
            plain.body.len()
        );
    }
}

/// The family names (HELP lines) of a body.
fn families(body: &str) -> Vec<String> {
    body.lines().filter_map(|l| l.strip_prefix("# HELP ")).map(|l| l.split(' ').next().unwrap().to_string()).collect()
}

#[test]
fn name_filter_selects_families() {
    let nginx = loaded_nginx();
    let port = nginx.metrics_port;
    let om = [("Accept", PROMETHEUS_ACCEPT)];

    // One family, by its name; a counter also by its OpenMetrics name.
    for q in ["name[]=model_requests_total", "name%5B%5D=model_requests_total", "name[]=model_requests"] {
        let text = fetch(port, &format!("/metrics?{q}"), &[]);
        assert_eq!(families(text.text()), ["model_requests_total"], "?{q}");
        let exp = assert_text(text.text());
        assert_eq!(exp.sum("model_requests_total"), SENT);
        let body = fetch(port, &format!("/metrics?{q}"), &om);
        assert_eq!(families(body.text()), ["model_requests"], "?{q} OpenMetrics");
        assert_openmetrics(body.text(), &exp);
    }

    // Two families, encoded the way Prometheus encodes `params` (Go's url.Values),
    // a histogram and a self-metric among them; in definition order.
    let q = "name%5B%5D=shmetrics_series_used&name%5B%5D=http_request_duration_seconds";
    let text = fetch(port, &format!("/metrics?{q}"), &[]);
    assert_eq!(families(text.text()), ["http_request_duration_seconds", "shmetrics_series_used"]);
    let exp = assert_text(text.text());
    let body = fetch(port, &format!("/metrics?{q}"), &om);
    assert_eq!(families(body.text()), ["http_request_duration_seconds", "shmetrics_series_used"]);
    assert_openmetrics(body.text(), &exp);
    let forced = fetch(port, &format!("/metrics-text?{q}"), &om);
    assert_eq!(forced.text(), text.text(), "/metrics-text filters too");

    // A name nothing has: an empty exposition in each format.
    let none = fetch(port, "/metrics?name[]=no_such_family", &[]);
    assert_eq!(none.text(), "");
    assert_eq!(none.header("content-type"), Some(CT_TEXT));
    assert_eq!(fetch(port, "/metrics?name[]=no_such_family", &om).text(), "# EOF\n");
    assert_eq!(fetch(port, "/metrics.json?name[]=no_such_family", &[]).text(), "{\"families\":[]}\n");

    // No filter: everything.
    let all = fetch(port, "/metrics", &[]);
    assert!(families(all.text()).len() > 20);
}

/// The JSON view parsed by Python's strict `json` (NaN and Infinity refused; when
/// there is a python3) and by testkit's JSON reader (`testkit::json`).
fn strict_json(body: &str) -> Json {
    let py = ["python3", "/usr/bin/python3"]
        .into_iter()
        .find(|py| Command::new(py).arg("-c").arg("pass").status().is_ok_and(|s| s.success()));
    if let Some(py) = py {
        const SCRIPT: &str = r#"
import json, sys
def no(c): raise ValueError("non-JSON constant " + c)
json.loads(sys.stdin.buffer.read().decode("utf-8"), parse_constant=no)
"#;
        run_python(py, SCRIPT, body.as_bytes())
            .unwrap_or_else(|e| panic!("python json rejected the JSON view: {e}\n{body}"));
    }
    Json::parse(body).unwrap_or_else(|e| panic!("JSON view: {e}\n{body}"))
}

#[test]
fn json_view_has_the_values() {
    let nginx = loaded_nginx();
    let port = nginx.metrics_port;
    let r = fetch(port, "/metrics.json", &[]);
    assert_eq!(r.header("content-type"), Some(CT_JSON));
    let doc = strict_json(r.text());
    let text = assert_text(fetch(port, "/metrics", &[]).text());

    // Every family and series in the JSON view says what the exposition says.
    let fams = doc.get("families").and_then(Json::as_array).expect("families array");
    // (nginx_metric_errors_total, the error counter, is a self-metric too)
    let user_families = text
        .families
        .iter()
        .filter(|f| !f.name.starts_with("shmetrics_") && f.name != "nginx_metric_errors_total")
        .count();
    assert_eq!(fams.len(), user_families, "JSON families: the user's, no self-metrics");
    let mut checked = 0;
    for f in fams {
        let name = f.get("name").and_then(Json::as_str).unwrap();
        let kind = f.get("type").and_then(Json::as_str).unwrap();
        let tf = text.family(name).unwrap_or_else(|| panic!("{name} not in the exposition"));
        assert_eq!(tf.kind.as_deref(), Some(kind), "{name}");
        assert_eq!(tf.help.as_deref(), f.get("help").and_then(Json::as_str), "{name}");
        let label_names: Vec<&str> =
            f.get("labels").and_then(Json::as_array).unwrap().iter().map(|l| l.as_str().unwrap()).collect();
        for s in f.get("series").and_then(Json::as_array).unwrap() {
            let labels: Vec<(&str, &str)> = s
                .get("labels")
                .and_then(Json::as_object)
                .unwrap()
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str().unwrap()))
                .collect();
            assert_eq!(labels.iter().map(|l| l.0).collect::<Vec<_>>(), label_names, "{name}: label order");
            if kind == "histogram" {
                let buckets: Vec<(f64, f64)> = s
                    .get("buckets")
                    .and_then(Json::as_array)
                    .unwrap()
                    .iter()
                    .map(|b| {
                        let b = b.as_array().unwrap();
                        let le = b[0].as_f64().unwrap_or_else(|| {
                            if b[0].as_str() == Some("+Inf") {
                                f64::INFINITY
                            } else {
                                panic!("le {b:?}")
                            }
                        });
                        (le, b[1].as_f64().unwrap())
                    })
                    .collect();
                assert_eq!(buckets, text.buckets(name, &labels), "{name} {labels:?} buckets");
                assert_eq!(s.get("count").and_then(Json::as_f64), text.value(&format!("{name}_count"), &labels));
                assert_eq!(s.get("sum").and_then(Json::as_f64), text.value(&format!("{name}_sum"), &labels));
            } else {
                assert_eq!(s.get("value").and_then(Json::as_f64), text.value(name, &labels), "{name} {labels:?}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 30, "{checked} series checked");

    // The numbers the plan's front-end pages show: per-namespace requests and tokens.
    let series = |family: &str| -> Vec<(BTreeMap<String, String>, f64)> {
        let f = fams.iter().find(|f| f.get("name").and_then(Json::as_str) == Some(family)).unwrap();
        f.get("series")
            .and_then(Json::as_array)
            .unwrap()
            .iter()
            .map(|s| {
                let labels = s
                    .get("labels")
                    .and_then(Json::as_object)
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect();
                (labels, s.get("value").and_then(Json::as_f64).unwrap())
            })
            .collect()
    };
    let pick = |rows: &[(BTreeMap<String, String>, f64)], want: &[(&str, &str)]| -> f64 {
        rows.iter()
            .filter(|(l, _)| want.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
            .map(|r| r.1)
            .sum()
    };
    let req = series("namespace_requests_total");
    assert_eq!(pick(&req, &[("namespace", "wechat"), ("status", "success")]), 4.0);
    assert_eq!(pick(&req, &[("namespace", "wechat"), ("status", "error")]), 1.0);
    assert_eq!(pick(&req, &[("namespace", "alipay"), ("status", "success")]), 2.0);
    let tokens = series("namespace_tokens_total");
    assert_eq!(pick(&tokens, &[("namespace", "wechat"), ("token_type", "input")]), 308.0);
    assert_eq!(pick(&tokens, &[("namespace", "wechat"), ("token_type", "output")]), 90.0);
    assert_eq!(pick(&tokens, &[("namespace", "alipay"), ("token_type", "input")]), 100.0);
    assert_eq!(pick(&tokens, &[("namespace", "alipay"), ("token_type", "output")]), 40.0);
    let cost = series("model_cost_usd_total");
    assert_close(
        "gpt-4o wechat cost",
        pick(&cost, &[("model", "gpt-4o"), ("namespace", "wechat")]),
        3.0 * (100.0 * 2.5 + 30.0 * 10.0) / 1e6,
        1e-12,
    );

    // Filtered: one family.
    let one = strict_json(fetch(port, "/metrics.json?name[]=namespace_tokens_total", &[]).text());
    let names: Vec<&str> = one
        .get("families")
        .and_then(Json::as_array)
        .unwrap()
        .iter()
        .map(|f| f.get("name").and_then(Json::as_str).unwrap())
        .collect();
    assert_eq!(names, ["namespace_tokens_total"]);
    nginx.assert_no_errors(&[]);
}
