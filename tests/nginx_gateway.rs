//! `resty.shmetrics.gateway` in a real nginx (nginx-test-conf/gateway.conf): a known set
//! of requests through the gateway to the mock OpenAI-compatible upstream — JSON and
//! SSE, several models and namespaces, upstream 500s, a timeout, a refused connection,
//! client aborts, malformed and usage-less responses — and every family of the catalog
//! compared series by series with what those requests must give.
//!
//! The harness's client only sends GETs, so this file has a small POST client of its
//! own (`send`), which also counts the reads a streamed body arrives in.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use testkit::harness::expo::series_key;
use testkit::harness::nginx::free_port;
use testkit::harness::*;

const CHAT: &str = "/v1/chat/completions";
const EMBEDDINGS: &str = "/v1/embeddings";
const WAIT: Duration = Duration::from_secs(15);

/// Scrapes until `check` passes and returns that scrape; panics with the last
/// failure after `WAIT`. Needed because the log phase runs after the client has its
/// answer, and one request's updates land one after the other: a scrape from the
/// other worker can fall between them. Counters only grow, so waiting for the
/// expected values cannot hide an over-count.
fn settle(metrics_port: u16, check: impl Fn(&Exposition) -> Result<(), String>) -> (String, Exposition) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (body, exp) = scrape(metrics_port);
        match check(&exp) {
            Ok(()) => return (body, exp),
            Err(e) if Instant::now() >= deadline => panic!("after {WAIT:?}: {e}\n{body}"),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// `Err` naming the series when it is absent or not `want`.
fn expect_value(exp: &Exposition, name: &str, labels: &[(&str, &str)], want: f64) -> Result<(), String> {
    match exp.value(name, labels) {
        Some(v) if v == want => Ok(()),
        got => Err(format!("{}: got {got:?}, want {want}", series_key(name, labels.iter().copied()))),
    }
}

/// USD per million tokens (input, output), as gateway.conf configures them.
fn price(model: &str) -> Option<(f64, f64)> {
    match model {
        "gpt-4o" => Some((2.5, 10.0)),
        "gpt-4o-mini" => Some((0.15, 0.6)),
        "text-embedding-3-small" => Some((0.02, 0.0)),
        _ => None,
    }
}

/// The mock's completion_tokens for the model a request names (see gateway.conf).
fn mock_completion(raw_model: &str) -> u64 {
    match raw_model {
        "gpt-4o" => 30,
        "gpt-4o-mini" => 20,
        _ => 10,
    }
}

// ---------------------------------------------------------------------------
// A small HTTP/1.1 client: one request per connection (Connection: close).

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    /// de-chunked
    body: Vec<u8>,
    /// read() calls that returned body bytes
    body_reads: usize,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

fn request_bytes(method: &str, path: &str, headers: &[(&str, String)], body: &str) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    if method != "GET" {
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    bytes
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connect to {port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = find(raw, b"\r\n").expect("chunk size line");
        let size_text = std::str::from_utf8(&raw[..eol]).unwrap();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).expect("chunk size");
        raw = &raw[eol + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[..size]);
        assert_eq!(&raw[size..size + 2], b"\r\n", "chunk not followed by CRLF");
        raw = &raw[size + 2..];
    }
}

fn send(port: u16, method: &str, path: &str, headers: &[(&str, String)], body: &str) -> Reply {
    let mut s = connect(port);
    s.write_all(&request_bytes(method, path, headers, body)).unwrap();
    let mut raw = Vec::new();
    let mut head_end = None;
    let mut body_reads = 0;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = s.read(&mut buf).unwrap_or_else(|e| panic!("{method} {path}: read: {e}"));
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        match head_end {
            Some(_) => body_reads += 1,
            None => {
                if let Some(i) = find(&raw, b"\r\n\r\n") {
                    head_end = Some(i + 4);
                    if raw.len() > i + 4 {
                        body_reads += 1;
                    }
                }
            }
        }
    }
    let head_end =
        head_end.unwrap_or_else(|| panic!("{method} {path}: no response head in {:?}", String::from_utf8_lossy(&raw)));
    let head = std::str::from_utf8(&raw[..head_end]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    let mut reply = Reply { status, headers, body: Vec::new(), body_reads };
    reply.body = if reply.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        dechunk(&raw[head_end..])
    } else {
        raw[head_end..].to_vec()
    };
    reply
}

/// How many requests with `X-Mock-Id: id` the mock has seen.
fn mock_seen(mock_port: u16, id: &str) -> u64 {
    let r = get(mock_port, &format!("/mock/seen?id={id}")).expect("GET /mock/seen");
    r.text().trim().parse().unwrap()
}

/// A TCP port bound on 127.0.0.1 but not listening: connecting is refused, and no one
/// else can take the port while this lives.
struct ClosedPort {
    fd: i32,
    port: u16,
}

impl ClosedPort {
    fn new() -> ClosedPort {
        // SAFETY: plain socket calls on a socket this function owns; `addr` and `len`
        // are valid for the sizes passed.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            assert_eq!(
                libc::bind(fd, &addr as *const _ as *const libc::sockaddr, len),
                0,
                "bind: {}",
                std::io::Error::last_os_error()
            );
            let mut len = len;
            assert_eq!(libc::getsockname(fd, &mut addr as *mut _ as *mut libc::sockaddr, &mut len), 0);
            ClosedPort { fd, port: u16::from_be(addr.sin_port) }
        }
    }
}

impl Drop for ClosedPort {
    fn drop(&mut self) {
        // SAFETY: fd is this struct's own socket, closed once.
        unsafe { libc::close(self.fd) };
    }
}

fn start_gateway(closed: &ClosedPort) -> (Nginx, u16) {
    let mock_port = free_port();
    let nginx = Nginx::start(
        "gateway",
        &[("MOCK_PORT", &mock_port.to_string()), ("CLOSED_PORT", &closed.port.to_string()), ("WORKERS", "2")],
    );
    (nginx, mock_port)
}

/// The error.log lines the scenarios cause on purpose.
const EXPECTED_ERRORS: &[&str] = &[
    "upstream timed out (110: Connection timed out) while reading response header from upstream",
    "connect() failed (111: Connection refused) while connecting to upstream",
    "shmetrics gateway: an option's function raised: ",
];

// ---------------------------------------------------------------------------
// The scenario: requests and what each must record.

fn chat_body(model: &str, stream: bool, include_usage: bool, content: &str) -> String {
    let mut b = format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"{content}"}}]"#);
    if stream {
        b.push_str(r#","stream":true"#);
        if include_usage {
            b.push_str(r#","stream_options":{"include_usage":true}"#);
        }
    }
    b.push('}');
    b
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    /// sent, answered in full
    Normal,
    /// the client closes its connection once the upstream has the request, before any answer
    AbortBefore,
    /// the client closes its connection after the first streamed event
    AbortMidStream,
}

#[derive(Clone, Debug)]
struct Case {
    what: &'static str,
    kind: Kind,
    method: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, String)>,
    body: String,
    /// expected:
    status: u16,
    route: &'static str,
    ns: &'static str,
    /// model label; None: not a model request
    model: Option<&'static str>,
    /// (error_type, upstream label)
    error: Option<(&'static str, &'static str)>,
    /// (input, output) tokens read from the response
    tokens: Option<(u64, u64)>,
    /// gateway_instrumentation_errors_total reason
    reason: Option<&'static str>,
    /// a TTFT observation
    ttft: bool,
}

impl Case {
    fn new(
        what: &'static str,
        ns_header: Option<&'static str>,
        ns: &'static str,
        path: &'static str,
        body: String,
    ) -> Case {
        let mut headers = Vec::new();
        if let Some(h) = ns_header {
            headers.push(("X-Namespace", h.to_string()));
        }
        Case {
            what,
            kind: Kind::Normal,
            method: "POST",
            path,
            headers,
            body,
            status: 200,
            route: path,
            ns,
            model: None,
            error: None,
            tokens: None,
            reason: None,
            ttft: false,
        }
    }

    /// A chat completion that succeeds with usage (prompt = body bytes).
    fn chat(what: &'static str, ns: &'static str, raw_model: &'static str, label: &'static str, stream: bool) -> Case {
        let body = chat_body(raw_model, stream, stream, what);
        let tokens = (body.len() as u64, mock_completion(raw_model));
        let mut c = Case::new(what, Some(ns), ns, CHAT, body).model(label).tokens(tokens);
        if stream {
            c.ttft = true;
        } else {
            // answered after 10 ms, so every JSON answer has a duration (throughput)
            c = c.header("X-Mock-Delay", "0.01");
        }
        c
    }

    /// Sets a request header (replacing one of the same name).
    fn header(mut self, k: &'static str, v: &str) -> Case {
        self.headers.retain(|(name, _)| *name != k);
        self.headers.push((k, v.to_string()));
        self
    }
    fn no_tokens(mut self) -> Case {
        self.tokens = None;
        self
    }
    fn model(mut self, m: &'static str) -> Case {
        self.model = Some(m);
        self
    }
    fn tokens(mut self, t: (u64, u64)) -> Case {
        self.tokens = Some(t);
        self
    }
    fn fails(mut self, status: u16, error_type: &'static str, upstream: &'static str) -> Case {
        self.status = status;
        self.error = Some((error_type, upstream));
        self.tokens = None;
        self
    }
    fn reason(mut self, r: &'static str) -> Case {
        self.reason = Some(r);
        self
    }
}

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for _ in 0..3 {
        v.push(Case::chat("json gpt-4o wechat", "wechat", "gpt-4o", "gpt-4o", false));
    }
    for _ in 0..2 {
        v.push(Case::chat("json gpt-4o-mini alipay", "alipay", "gpt-4o-mini", "gpt-4o-mini", false));
        v.push(Case::chat("sse gpt-4o wechat", "wechat", "gpt-4o", "gpt-4o", true));
    }
    v.push(Case::chat("an alias of gpt-4o", "alipay", "gpt-4o-2024-08-06", "gpt-4o", false));
    v.push(Case::chat("an unknown model is other", "wechat", "llama-3-70b", "other", false));
    let mut c = Case::chat("sse without include_usage", "alipay", "gpt-4o-mini", "gpt-4o-mini", true);
    c.body = chat_body("gpt-4o-mini", true, false, c.what);
    v.push(c.no_tokens().reason("usage_not_requested"));
    let body = r#"{"model":"text-embedding-3-small","input":"The food was delicious"}"#.to_string();
    v.push(
        Case::new("embeddings", Some("alipay"), "alipay", EMBEDDINGS, body.clone())
            .model("text-embedding-3-small")
            .tokens((body.len() as u64, 0)),
    );
    let mut c = Case::new("GET without a body is no model request", None, "default", "/v1/models", String::new());
    c.method = "GET";
    v.push(c);
    v.push(
        Case::chat("a large JSON answer", "wechat", "gpt-4o-mini", "gpt-4o-mini", false).header("X-Mock-Pad", "300000"),
    );
    let big = chat_body("gpt-4o", false, false, &"x".repeat(100_000));
    v.push(
        Case::new("a request body spooled to a file", None, "default", CHAT, big.clone())
            .model("other")
            .tokens((big.len() as u64, 30))
            .header("X-Mock-Delay", "0.01")
            .reason("request_unreadable"),
    );
    v.push(
        Case::new(
            "a truncated request body, an unknown namespace",
            Some("evil"),
            "other",
            CHAT,
            r#"{"model":"gpt-4o","messages":["#.into(),
        )
        .model("other")
        .header("X-Mock-Status", "400")
        .fails(400, "client_error", "openai")
        .reason("request_malformed"),
    );
    v.push(Case::chat("upstream 500", "wechat", "gpt-4o", "gpt-4o", false).header("X-Mock-Status", "500").fails(
        500,
        "upstream_5xx",
        "openai",
    ));
    v.push(
        Case::chat("upstream 429", "alipay", "gpt-4o-mini", "gpt-4o-mini", false).header("X-Mock-Status", "429").fails(
            429,
            "client_error",
            "openai",
        ),
    );
    v.push(
        Case::chat("the upstream option's function raises", "wechat", "gpt-4o", "gpt-4o", false)
            .header("X-Mock-Status", "500")
            .header("X-Break-Upstream-Label", "1")
            .fails(500, "upstream_5xx", "default")
            .reason("callback_error"),
    );
    v.push(
        Case::chat("the gateway's own rate limit", "wechat", "gpt-4o", "gpt-4o", false)
            .header("X-Simulate-Limit", "token_limit")
            .fails(429, "client_error", "none"),
    );
    v.push(Case::chat("upstream timeout", "wechat", "gpt-4o", "gpt-4o", false).header("X-Mock-Delay", "3").fails(
        504,
        "upstream_timeout",
        "openai",
    ));
    v.push(
        Case::chat("connection refused", "alipay", "gpt-4o-mini", "gpt-4o-mini", false)
            .header("X-Backend", "down")
            .fails(502, "upstream_connect_failed", "openai"),
    );
    let mut c = Case::chat("client abort before the answer", "wechat", "gpt-4o", "gpt-4o", false)
        .header("X-Mock-Delay", "5")
        .header("X-Mock-Id", "abort-before")
        .fails(499, "client_abort", "openai");
    c.kind = Kind::AbortBefore;
    v.push(c);
    let mut c = Case::chat("client abort mid-stream", "alipay", "gpt-4o-mini", "gpt-4o-mini", true)
        .header("X-Mock-Chunk-Delay", "1")
        .header("X-Mock-Id", "abort-mid")
        .fails(200, "client_abort", "openai");
    c.kind = Kind::AbortMidStream;
    c.ttft = true;
    v.push(c);
    v.push(
        Case::chat("malformed JSON answer", "wechat", "gpt-4o", "gpt-4o", false)
            .header("X-Mock-Body", "malformed")
            .no_tokens()
            .reason("response_malformed"),
    );
    v.push(
        Case::chat("answer without usage", "alipay", "gpt-4o-mini", "gpt-4o-mini", false)
            .header("X-Mock-Body", "no_usage")
            .no_tokens()
            .reason("usage_missing"),
    );
    v.push(
        Case::chat("usage with a string count", "wechat", "gpt-4o", "gpt-4o", false)
            .header("X-Mock-Body", "bad_usage")
            .no_tokens()
            .reason("usage_malformed"),
    );
    // tokens are read, and the stray line is counted
    v.push(
        Case::chat("a stream with a line that is not SSE", "alipay", "gpt-4o", "gpt-4o", true)
            .header("X-Mock-Body", "sse_garbage")
            .reason("response_malformed"),
    );
    v.push(Case::chat("an unknown route", "wechat", "gpt-4o", "gpt-4o", false).fails(404, "client_error", "openai"));
    let last = v.len() - 1;
    v[last].path = "/v1/unknown";
    v[last].route = "other";
    v
}

/// Sends one case and checks its status.
fn run_case(c: &Case, port: u16, mock_port: u16, metrics_port: u16) {
    match c.kind {
        Kind::Normal => {
            let r = send(port, c.method, c.path, &c.headers, &c.body);
            assert_eq!(r.status, c.status, "{}: {}", c.what, String::from_utf8_lossy(&r.body));
        }
        Kind::AbortBefore | Kind::AbortMidStream => {
            let id = &c.headers.iter().find(|(k, _)| *k == "X-Mock-Id").unwrap().1;
            let before = scrape(metrics_port)
                .1
                .value("errors_total", &[("error_type", "client_abort"), ("namespace", c.ns), ("upstream", "openai")])
                .unwrap_or(0.0);
            let mut s = connect(port);
            s.write_all(&request_bytes(c.method, c.path, &c.headers, &c.body)).unwrap();
            if c.kind == Kind::AbortBefore {
                // close only once the upstream has the request (so nginx is waiting for it)
                let deadline = Instant::now() + WAIT;
                while mock_seen(mock_port, id) == 0 {
                    assert!(Instant::now() < deadline, "{}: the mock never saw the request", c.what);
                    std::thread::sleep(Duration::from_millis(5));
                }
            } else {
                // close once the first event has arrived
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while find(&got, b"data: ").is_none() {
                    let n = s.read(&mut buf).expect("read the first event");
                    assert!(n > 0, "{}: connection closed before the first event", c.what);
                    got.extend_from_slice(&buf[..n]);
                }
            }
            drop(s);
            let (_, exp) = scrape_until(metrics_port, WAIT, |e| {
                e.value("errors_total", &[("error_type", "client_abort"), ("namespace", c.ns), ("upstream", "openai")])
                    .unwrap_or(0.0)
                    > before
            });
            assert_eq!(
                exp.value(
                    "errors_total",
                    &[("error_type", "client_abort"), ("namespace", c.ns), ("upstream", "openai")]
                ),
                Some(before + 1.0),
                "{}: no client_abort recorded",
                c.what
            );
        }
    }
}

/// Expected series of one family: series key -> value.
#[derive(Default)]
struct Want(BTreeMap<String, BTreeMap<String, f64>>);

impl Want {
    fn add(&mut self, family: &str, labels: &[(&str, &str)], v: f64) {
        *self
            .0
            .entry(family.to_string())
            .or_default()
            .entry(series_key(family, labels.iter().copied()))
            .or_insert(0.0) += v;
    }

    /// The family's series in `exp` are exactly these, with these values (relative
    /// tolerance `rel`, for sums of fractions; NaN: any value).
    fn check(&self, exp: &Exposition, family: &str, rel: f64) -> Result<(), String> {
        let want = self.0.get(family).cloned().unwrap_or_default();
        let got: BTreeMap<String, f64> = exp
            .samples_named(family)
            .map(|s| (series_key(family, s.labels.iter().map(|(k, v)| (k.as_str(), v.as_str()))), s.value))
            .collect();
        let keys = |m: &BTreeMap<String, f64>| m.keys().cloned().collect::<Vec<_>>();
        if keys(&got) != keys(&want) {
            return Err(format!("{family}: series\n got  {got:?}\n want {want:?}"));
        }
        for (k, w) in &want {
            let g = got[k];
            let ok = w.is_nan() || g == *w || (rel > 0.0 && ((g - w) / w).abs() <= rel);
            if !ok {
                return Err(format!("{k}: got {g}, want {w}"));
            }
        }
        Ok(())
    }
}

fn expected(cases: &[Case]) -> Want {
    let mut w = Want::default();
    let mut namespaces_seen: Vec<&str> = Vec::new();
    for c in cases {
        let status = c.status.to_string();
        let outcome = if c.error.is_some() { "error" } else { "success" };
        let (m, r, ns) = (("method", c.method), ("path", c.route), ("namespace", c.ns));
        w.add("gateway_requests_total", &[m, r, ns], 1.0);
        w.add("gateway_request_duration_seconds_count", &[m, r, ns], 1.0);
        w.add("http_requests_total", &[m, ("endpoint", c.route), ("status_code", &status), ns], 1.0);
        w.add("http_request_duration_seconds_count", &[m, ("endpoint", c.route), ns], 1.0);
        w.add("namespace_requests_total", &[ns, ("status", outcome)], 1.0);
        if let Some((error_type, upstream)) = c.error {
            w.add("errors_total", &[("error_type", error_type), ns, ("upstream", upstream)], 1.0);
        }
        if let Some(model) = c.model {
            let mdl = ("model", model);
            w.add("model_requests_total", &[mdl, ns, ("status", outcome)], 1.0);
            w.add("model_request_duration_seconds_count", &[mdl, ns], 1.0);
            if c.ttft {
                w.add("model_time_to_first_token_seconds_count", &[mdl, ns], 1.0);
            }
            if let Some((tin, tout)) = c.tokens {
                w.add("model_tokens_input_total", &[mdl, ns], tin as f64);
                w.add("model_tokens_output_total", &[mdl, ns], tout as f64);
                w.add("namespace_tokens_total", &[ns, ("token_type", "input")], tin as f64);
                w.add("namespace_tokens_total", &[ns, ("token_type", "output")], tout as f64);
                if let Some((pin, pout)) = price(model) {
                    w.add("model_cost_usd_total", &[mdl, ns], (tin as f64 * pin + tout as f64 * pout) / 1e6);
                }
                if tout > 0 {
                    // the gauge's series exists; its value is checked separately
                    w.0.entry("model_throughput_tokens_per_second".into())
                        .or_default()
                        .insert(series_key("model_throughput_tokens_per_second", [mdl, ns]), f64::NAN);
                }
            }
        }
        if let Some(reason) = c.reason {
            w.add("gateway_instrumentation_errors_total", &[("reason", reason)], 1.0);
        }
        if c.path.starts_with("/v1/") {
            // access_by_lua's namespace-configuration lookup (a shared dict: the first
            // request of each namespace misses, in whichever worker)
            if namespaces_seen.contains(&c.ns) {
                w.add("cache_hits_total", &[("cache_type", "namespace_config")], 1.0);
            } else {
                namespaces_seen.push(c.ns);
                w.add("cache_misses_total", &[("cache_type", "namespace_config")], 1.0);
            }
        }
        if c.headers.iter().any(|(k, _)| *k == "X-Simulate-Limit") {
            w.add("rate_limit_hits_total", &[ns, ("rule_type", "token_limit")], 1.0);
            w.add("rate_limit_violations_total", &[ns, ("rule_type", "token_limit")], 1.0);
        }
    }
    w
}

/// Families compared series by series, exactly.
const EXACT_FAMILIES: &[&str] = &[
    "gateway_requests_total",
    "gateway_request_duration_seconds_count",
    "http_requests_total",
    "http_request_duration_seconds_count",
    "namespace_requests_total",
    "namespace_tokens_total",
    "errors_total",
    "model_requests_total",
    "model_request_duration_seconds_count",
    "model_time_to_first_token_seconds_count",
    "model_tokens_input_total",
    "model_tokens_output_total",
    "rate_limit_hits_total",
    "rate_limit_violations_total",
    "cache_hits_total",
    "cache_misses_total",
    "gateway_instrumentation_errors_total",
];

#[test]
fn gateway_records_the_catalog() {
    let closed = ClosedPort::new();
    let (nginx, mock_port) = start_gateway(&closed);
    let cases = cases();
    for c in &cases {
        run_case(c, nginx.port, mock_port, nginx.metrics_port);
    }
    let want = expected(&cases);
    let (body, exp) = settle(nginx.metrics_port, |exp| {
        for family in EXACT_FAMILIES {
            want.check(exp, family, 0.0)?;
        }
        want.check(exp, "model_cost_usd_total", 1e-9)?;
        want.check(exp, "model_throughput_tokens_per_second", 0.0)
    });

    // A few values by hand, so a mistake shared by the scenario table and the module
    // cannot hide: 3 JSON + 2 SSE gpt-4o requests from wechat.
    let wechat_gpt4o = [("model", "gpt-4o"), ("namespace", "wechat")];
    let json_in = chat_body("gpt-4o", false, false, "json gpt-4o wechat").len() as f64;
    let sse_in = chat_body("gpt-4o", true, true, "sse gpt-4o wechat").len() as f64;
    assert_eq!(exp.expect("model_tokens_input_total", &wechat_gpt4o), 3.0 * json_in + 2.0 * sse_in);
    assert_eq!(exp.expect("model_tokens_output_total", &wechat_gpt4o), 5.0 * 30.0);
    assert_close(
        "gpt-4o wechat cost",
        exp.expect("model_cost_usd_total", &wechat_gpt4o),
        ((3.0 * json_in + 2.0 * sse_in) * 2.5 + 150.0 * 10.0) / 1e6,
        1e-12,
    );
    assert_eq!(
        exp.expect(
            "errors_total",
            &[("error_type", "upstream_timeout"), ("namespace", "wechat"), ("upstream", "openai")]
        ),
        1.0
    );

    // Histograms: every family's invariants; the timeout took proxy_read_timeout (1 s).
    assert!(exp.check_histograms().is_empty(), "{:?}", exp.check_histograms());
    let wechat_chat = [("method", "POST"), ("path", CHAT), ("namespace", "wechat")];
    let sum = exp.expect("gateway_request_duration_seconds_sum", &wechat_chat);
    assert!(sum >= 1.0, "wechat duration sum {sum} < the 1 s timeout");
    let buckets = exp.buckets("gateway_request_duration_seconds", &wechat_chat);
    let count = exp.expect("gateway_request_duration_seconds_count", &wechat_chat);
    let below_half = buckets.iter().find(|(le, _)| *le == 0.5).unwrap().1;
    assert!(below_half <= count - 1.0, "the timed-out request is in le=0.5: {buckets:?}");
    // TTFT: before the end of each stream; streams take 6+ event gaps of 50 ms.
    for (model, ns) in [("gpt-4o", "wechat"), ("gpt-4o-mini", "alipay"), ("gpt-4o", "alipay")] {
        let l = [("model", model), ("namespace", ns)];
        let ttft = exp.expect("model_time_to_first_token_seconds_sum", &l);
        let total = exp.expect("model_request_duration_seconds_sum", &l);
        assert!(ttft >= 0.0 && ttft < total, "{model}/{ns}: TTFT sum {ttft}, duration sum {total}");
    }

    // Throughput: exactly the series of models with output tokens (checked above);
    // plausible values.
    for s in exp.samples_named("model_throughput_tokens_per_second") {
        // at most 30 tokens, at least 10 ms: < 3000/s; more than 0
        assert!(s.value > 0.0 && s.value <= 3000.0, "throughput {s:?}");
    }
    // gpt-4o/alipay's last answer with tokens was the stream with a stray line: 30
    // tokens over 8 gaps of 50 ms after the first event (the gauge keeps the latest).
    let sse_tp = exp.expect("model_throughput_tokens_per_second", &[("model", "gpt-4o"), ("namespace", "alipay")]);
    assert!((10.0..=100.0).contains(&sse_tp), "gpt-4o/alipay stream throughput {sse_tp}/s, want about 30/0.35");

    assert_eq!(exp.sum("shmetrics_errors_total"), 0.0, "refused updates");
    promtool_check(&body).unwrap_or_else(|e| panic!("{e}\n{body}"));
    nginx.assert_no_errors(EXPECTED_ERRORS);
    let log = nginx.error_log();
    for allowed in EXPECTED_ERRORS {
        assert_eq!(log.matches(allowed).count(), 1, "error.log should have `{allowed}` once:\n{log}");
    }
}

#[test]
fn streams_pass_through_untouched_and_unbuffered() {
    let closed = ClosedPort::new();
    let (nginx, mock_port) = start_gateway(&closed);
    let body = chat_body("gpt-4o", true, true, "stream me");
    let headers = [("X-Namespace", "wechat".to_string()), ("X-Mock-Chunk-Delay", "0.05".to_string())];
    let direct = send(mock_port, "POST", CHAT, &headers, &body);
    let through = send(nginx.port, "POST", CHAT, &headers, &body);
    assert_eq!(direct.status, 200);
    assert_eq!(through.status, 200);
    assert_eq!(through.header("content-type"), Some("text/event-stream"));
    assert_eq!(
        String::from_utf8_lossy(&through.body),
        String::from_utf8_lossy(&direct.body),
        "the gateway changed the stream"
    );
    let events = through.body.windows(6).filter(|w| w == b"data: ").count();
    assert_eq!(events, 8, "events in {:?}", String::from_utf8_lossy(&through.body));
    // 8 events 50 ms apart: each arrives on its own (the last read also carries the
    // terminating chunk), so the client sees them in at least 6 reads.
    assert!(through.body_reads >= 6, "the stream arrived in {} reads: buffered?", through.body_reads);

    // A large JSON answer: passed intact too, and its usage read.
    let big = chat_body("gpt-4o-mini", false, false, "big");
    let headers = [("X-Namespace", "alipay".to_string()), ("X-Mock-Pad", "1000000".to_string())];
    let direct = send(mock_port, "POST", CHAT, &headers, &big);
    let through = send(nginx.port, "POST", CHAT, &headers, &big);
    assert_eq!(through.status, 200);
    assert!(through.body.len() > 1_000_000);
    assert!(through.body == direct.body, "the gateway changed a large JSON answer");

    let (_, exp) = settle(nginx.metrics_port, |e| {
        expect_value(
            e,
            "model_tokens_input_total",
            &[("model", "gpt-4o"), ("namespace", "wechat")],
            body.len() as f64,
        )?;
        expect_value(e, "model_tokens_output_total", &[("model", "gpt-4o"), ("namespace", "wechat")], 30.0)?;
        expect_value(
            e,
            "model_time_to_first_token_seconds_count",
            &[("model", "gpt-4o"), ("namespace", "wechat")],
            1.0,
        )?;
        expect_value(
            e,
            "model_tokens_input_total",
            &[("model", "gpt-4o-mini"), ("namespace", "alipay")],
            big.len() as f64,
        )?;
        expect_value(e, "model_tokens_output_total", &[("model", "gpt-4o-mini"), ("namespace", "alipay")], 20.0)
    });
    assert_eq!(exp.sum("gateway_instrumentation_errors_total"), 0.0);
    nginx.assert_no_errors(&[]);
}

/// The seed's catalog (its README): family -> label names (histograms without `le`).
const CATALOG: &[(&str, &[&str])] = &[
    ("gateway_requests_total", &["method", "path", "namespace"]),
    ("gateway_request_duration_seconds", &["method", "path", "namespace"]),
    ("rate_limit_hits_total", &["namespace", "rule_type"]),
    ("rate_limit_violations_total", &["namespace", "rule_type"]),
    ("cache_hits_total", &["cache_type"]),
    ("cache_misses_total", &["cache_type"]),
    ("http_requests_total", &["method", "endpoint", "status_code", "namespace"]),
    ("http_request_duration_seconds", &["method", "endpoint", "namespace"]),
    ("namespace_requests_total", &["namespace", "status"]),
    ("namespace_tokens_total", &["namespace", "token_type"]),
    ("errors_total", &["error_type", "namespace", "upstream"]),
    ("model_requests_total", &["model", "namespace", "status"]),
    ("model_tokens_input_total", &["model", "namespace"]),
    ("model_tokens_output_total", &["model", "namespace"]),
    ("model_request_duration_seconds", &["model", "namespace"]),
    ("model_throughput_tokens_per_second", &["model", "namespace"]),
    ("model_cost_usd_total", &["model", "namespace"]),
    ("model_accuracy_percent", &["model", "task_type"]),
];

/// `make demo` (nginx-test-conf/demo.conf) starts, the curls its header shows move
/// the metrics they say, and every family of the seed's catalog is there with
/// exactly the plan's label names.
#[test]
fn demo_conf_records_the_catalog() {
    let mock_port = free_port();
    let nginx = Nginx::start("demo", &[("MOCK_PORT", &mock_port.to_string())]);
    let chat = |ns: &str, body: &str, extra: &[(&str, &str)]| {
        let mut h: Vec<(&str, String)> = vec![("X-Namespace", ns.to_string())];
        h.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        send(nginx.port, "POST", CHAT, &h, body)
    };
    let r = chat("wechat", r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Hello"}]}"#, &[]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = chat(
        "alipay",
        r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Hi"}]}"#,
        &[],
    );
    assert_eq!(r.status, 200);
    let r = chat("alipay", r#"{"model":"gpt-4o","messages":[]}"#, &[("X-Mock-Status", "500")]);
    assert_eq!(r.status, 500);
    // wechat is limited to 5 requests a second: a quick burst of 12 meets the limit.
    let limited = (0..12)
        .map(|_| chat("wechat", r#"{"model":"gpt-4o","messages":[]}"#, &[]).status)
        .filter(|&s| s == 429)
        .count();
    assert!(limited >= 1, "no 429 in a burst of 12");
    let (body, exp) = settle(nginx.metrics_port, |e| {
        expect_value(e, "model_tokens_output_total", &[("model", "gpt-4o-mini"), ("namespace", "alipay")], 20.0)?;
        expect_value(
            e,
            "errors_total",
            &[("error_type", "upstream_5xx"), ("namespace", "alipay"), ("upstream", "openai")],
            1.0,
        )?;
        expect_value(
            e,
            "rate_limit_violations_total",
            &[("namespace", "wechat"), ("rule_type", "requests_per_second")],
            limited as f64,
        )
    });
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
    let gpt4o_wechat = [("model", "gpt-4o"), ("namespace", "wechat")];
    assert_eq!(exp.value("model_tokens_output_total", &gpt4o_wechat), Some(30.0 * (1 + 12 - limited) as f64));
    assert_eq!(
        exp.value("model_accuracy_percent", &[("model", "gpt-4o"), ("task_type", "classification")]),
        Some(92.5)
    );
    assert_eq!(exp.sum("gateway_instrumentation_errors_total"), 0.0);
    assert_eq!(exp.sum("shmetrics_errors_total"), 0.0);
    promtool_check(&body).unwrap();
    nginx.assert_no_errors(&[]);
}

/// nginx-test-conf/gateway_bench.conf (the per-request cost benchmark) answers the
/// same on its three locations and records only through /gw/.
#[test]
fn bench_conf_runs() {
    let mock_port = free_port();
    let nginx = Nginx::start("gateway_bench", &[("MOCK_PORT", &mock_port.to_string()), ("WORKERS", "1")]);
    let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Say hello to the benchmark, please."}]}"#;
    let ns = ("X-Namespace", "wechat".to_string());
    let stream = ("X-Bench-Stream", "1".to_string());
    let mut answers = Vec::new();
    for prefix in ["plain", "lua", "gw"] {
        let path = format!("/{prefix}{CHAT}");
        let json = send(nginx.port, "POST", &path, std::slice::from_ref(&ns), body);
        let sse = send(nginx.port, "POST", &path, &[ns.clone(), stream.clone()], body);
        assert_eq!((json.status, sse.status), (200, 200), "{path}");
        assert_eq!(sse.header("content-type"), Some("text/event-stream"));
        answers.push((json.body, sse.body));
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "the locations answer differently");
    let labels = [("model", "gpt-4o"), ("namespace", "wechat")];
    let (_, exp) = settle(nginx.metrics_port, |e| {
        expect_value(
            e,
            "model_requests_total",
            &[("model", "gpt-4o"), ("namespace", "wechat"), ("status", "success")],
            2.0,
        )?;
        expect_value(e, "model_tokens_input_total", &labels, 24.0)?;
        expect_value(e, "model_tokens_output_total", &labels, 16.0)
    });
    assert_eq!(exp.sum("gateway_requests_total"), 2.0);
    assert_eq!(exp.sum("gateway_instrumentation_errors_total"), 0.0);
    nginx.assert_no_errors(&[]);
}
