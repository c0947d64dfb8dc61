//! A small HTTP/1.1 client over `std::net::TcpStream` (Content-Length, chunked and
//! close-delimited bodies; keep-alive) and a load generator built on it.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long a request may wait for its response before it counts as lost.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// First header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("response body is not UTF-8")
    }
}

/// Why a request on a connection did not produce a response.
#[derive(Debug)]
pub enum HttpError {
    /// Writing the request failed: the server cannot have received a complete request,
    /// so it is safe to retry on a new connection.
    NotSent(io::Error),
    /// The request was written but no complete response arrived: the server may or may
    /// not have processed it.
    NoResponse(io::Error),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::NotSent(e) => write!(f, "request not sent: {e}"),
            HttpError::NoResponse(e) => write!(f, "sent, but no complete response: {e}"),
        }
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// A keep-alive connection to 127.0.0.1:`port`.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// unread bytes are `buf[pos..end]`
    pos: usize,
    end: usize,
    reusable: bool,
}

impl Conn {
    pub fn connect(port: u16) -> io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&loopback(port), IO_TIMEOUT)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Conn { stream, buf: vec![0; 16 * 1024], pos: 0, end: 0, reusable: true })
    }

    /// False once the server said `Connection: close` or sent a close-delimited body;
    /// open a new connection for the next request.
    pub fn reusable(&self) -> bool {
        self.reusable
    }

    pub fn get(&mut self, path: &str) -> Result<Response, HttpError> {
        self.request(path, &[])
    }

    pub fn request(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<Response, HttpError> {
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        if !self.reusable {
            return Err(HttpError::NotSent(io::Error::other("connection closed by the server")));
        }
        self.stream.write_all(req.as_bytes()).map_err(HttpError::NotSent)?;
        self.read_response().map_err(|e| {
            self.reusable = false;
            HttpError::NoResponse(e)
        })
    }

    fn fill(&mut self) -> io::Result<usize> {
        if self.pos == self.end {
            self.pos = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            if self.pos > 0 {
                self.buf.copy_within(self.pos..self.end, 0);
                self.end -= self.pos;
                self.pos = 0;
            } else {
                self.buf.resize(self.buf.len() * 2, 0);
            }
        }
        let n = self.stream.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }

    fn fill_or_eof(&mut self) -> io::Result<()> {
        if self.fill()? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed mid-response"));
        }
        Ok(())
    }

    /// One line without its CRLF.
    fn read_line(&mut self) -> io::Result<String> {
        loop {
            if let Some(i) = self.buf[self.pos..self.end].windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[self.pos..self.pos + i]).into_owned();
                self.pos += i + 2;
                return Ok(line);
            }
            self.fill_or_eof()?;
        }
    }

    fn read_exact_into(&mut self, mut n: usize, out: &mut Vec<u8>) -> io::Result<()> {
        while n > 0 {
            if self.pos == self.end {
                self.fill_or_eof()?;
            }
            let take = n.min(self.end - self.pos);
            out.extend_from_slice(&self.buf[self.pos..self.pos + take]);
            self.pos += take;
            n -= take;
        }
        Ok(())
    }

    fn read_response(&mut self) -> io::Result<Response> {
        let bad = |msg: String| io::Error::new(io::ErrorKind::InvalidData, msg);
        let status_line = self.read_line()?;
        let mut parts = status_line.splitn(3, ' ');
        let (version, code) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        if !version.starts_with("HTTP/1.") {
            return Err(bad(format!("bad status line {status_line:?}")));
        }
        let status: u16 = code.parse().map_err(|_| bad(format!("bad status line {status_line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let line = self.read_line()?;
            if line.is_empty() {
                break;
            }
            let (k, v) = line.split_once(':').ok_or_else(|| bad(format!("bad header {line:?}")))?;
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        let mut resp = Response { status, headers, body: Vec::new() };
        if resp.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) || version == "HTTP/1.0" {
            self.reusable = false;
        }
        let chunked = resp.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        let length = resp.header("content-length").map(|v| v.parse::<usize>());
        if status < 200 || status == 204 || status == 304 {
            // no body
        } else if chunked {
            loop {
                let line = self.read_line()?;
                let size_hex = line.split(';').next().unwrap_or("").trim();
                let size =
                    usize::from_str_radix(size_hex, 16).map_err(|_| bad(format!("bad chunk size line {line:?}")))?;
                if size == 0 {
                    while !self.read_line()?.is_empty() {} // trailers
                    break;
                }
                self.read_exact_into(size, &mut resp.body)?;
                if !self.read_line()?.is_empty() {
                    return Err(bad("chunk not followed by CRLF".into()));
                }
            }
        } else if let Some(length) = length {
            let length = length.map_err(|_| bad("bad Content-Length".into()))?;
            self.read_exact_into(length, &mut resp.body)?;
        } else {
            // close-delimited
            self.reusable = false;
            loop {
                resp.body.extend_from_slice(&self.buf[self.pos..self.end]);
                self.pos = self.end;
                if self.fill()? == 0 {
                    break;
                }
            }
        }
        Ok(resp)
    }
}

/// One request on a fresh connection.
pub fn get(port: u16, path: &str) -> io::Result<Response> {
    get_with_headers(port, path, &[])
}

pub fn get_with_headers(port: u16, path: &str, headers: &[(&str, &str)]) -> io::Result<Response> {
    let mut conn = Conn::connect(port)?;
    conn.request(path, headers).map_err(|e| match e {
        HttpError::NotSent(e) | HttpError::NoResponse(e) => e,
    })
}

/// One HTTP/1.0 request on its own connection (so that nginx answers without
/// chunks and closes it), with a `Content-Length` for `body`.
pub fn request_once(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Response {
    let what = format!("{method} {path}");
    let mut s =
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap_or_else(|e| panic!("{what}: connect {port}: {e}"));
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut req = format!("{what} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap_or_else(|e| panic!("{what}: {e}"));
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| panic!("{what}: no head")) + 4;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok());
    let status = status.unwrap_or_else(|| panic!("{what}: bad status line in {head:?}"));
    let headers = lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.to_string(), v.trim().to_string())).collect();
    Response { status, headers, body: raw[end..].to_vec() }
}

/// Outcome of a load run. Every one of `total_requests` requests was written exactly
/// once, so `ok + failed + unknown == total_requests`.
#[derive(Debug, Clone, Default)]
pub struct LoadResult {
    /// got a complete 200 response
    pub ok: u64,
    /// got a complete non-200 response
    pub failed: u64,
    /// written, but the connection failed before a complete response: the server may
    /// or may not have processed it
    pub unknown: u64,
    /// connections opened (reconnects after `Connection: close` or errors included)
    pub connections: u64,
    /// requests re-sent because writing them failed (never reached the server)
    pub resent: u64,
    pub elapsed: Duration,
    /// the first few failures, for the assertion message
    pub samples: Vec<String>,
}

impl LoadResult {
    pub fn total(&self) -> u64 {
        self.ok + self.failed + self.unknown
    }
}

/// A load run in the background: `concurrency` threads, each on its own keep-alive
/// connection, share `total_requests` requests; request `i` goes to `path_fn(i)`.
pub struct Load {
    done: Arc<AtomicU64>,
    total: u64,
    handle: Option<JoinHandle<LoadResult>>,
}

impl Load {
    pub fn spawn<F>(port: u16, path_fn: F, total_requests: u64, concurrency: usize) -> Load
    where
        F: Fn(u64) -> String + Send + Sync + 'static,
    {
        let done = Arc::new(AtomicU64::new(0));
        let done2 = done.clone();
        let handle = thread::Builder::new()
            .name("load".into())
            .spawn(move || run_load(port, &path_fn, total_requests, concurrency, &done2))
            .expect("spawn load thread");
        Load { done, total: total_requests, handle: Some(handle) }
    }

    /// Requests that have an outcome so far.
    pub fn completed(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Blocks until at least `n` requests have an outcome (or the load ended).
    pub fn wait_for(&self, n: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.completed() < n.min(self.total) {
            if self.handle.as_ref().is_some_and(|h| h.is_finished()) {
                return;
            }
            assert!(Instant::now() < deadline, "load reached {} of {n} requests in {timeout:?}", self.completed());
            thread::sleep(Duration::from_millis(2));
        }
    }

    pub fn join(mut self) -> LoadResult {
        match self.handle.take().unwrap().join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// Runs a load to completion; see `Load::spawn`.
pub fn load<F>(port: u16, path_fn: F, total_requests: u64, concurrency: usize) -> LoadResult
where
    F: Fn(u64) -> String + Send + Sync + 'static,
{
    Load::spawn(port, path_fn, total_requests, concurrency).join()
}

fn run_load(
    port: u16,
    path_fn: &(dyn Fn(u64) -> String + Sync),
    total: u64,
    concurrency: usize,
    done: &AtomicU64,
) -> LoadResult {
    let next = AtomicU64::new(0);
    let result = Mutex::new(LoadResult::default());
    let start = Instant::now();
    thread::scope(|s| {
        for _ in 0..concurrency {
            s.spawn(|| {
                let mut mine = LoadResult::default();
                let mut conn: Option<Conn> = None;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let path = path_fn(i);
                    let mut not_sent = 0;
                    let mut connect_failing_since: Option<Instant> = None;
                    loop {
                        let c = match &mut conn {
                            Some(c) => c,
                            None => match Conn::connect(port) {
                                Ok(c) => {
                                    mine.connections += 1;
                                    connect_failing_since = None;
                                    conn.insert(c)
                                }
                                Err(e) => {
                                    let since = *connect_failing_since.get_or_insert_with(Instant::now);
                                    assert!(
                                        since.elapsed() < IO_TIMEOUT,
                                        "load: cannot connect to 127.0.0.1:{port} for {IO_TIMEOUT:?}: {e}"
                                    );
                                    thread::sleep(Duration::from_millis(5));
                                    continue;
                                }
                            },
                        };
                        match c.get(&path) {
                            Ok(resp) => {
                                if resp.status == 200 {
                                    mine.ok += 1;
                                } else {
                                    mine.failed += 1;
                                    if mine.samples.len() < 5 {
                                        mine.samples.push(format!(
                                            "GET {path}: status {} body {:?}",
                                            resp.status,
                                            String::from_utf8_lossy(&resp.body)
                                        ));
                                    }
                                }
                                if !c.reusable() {
                                    conn = None;
                                }
                                break;
                            }
                            Err(HttpError::NotSent(e)) => {
                                // The server closed this connection before the request
                                // reached it: resend on a new one.
                                conn = None;
                                not_sent += 1;
                                mine.resent += 1;
                                assert!(not_sent < 100, "load: GET {path} could not be sent 100 times: {e}");
                            }
                            Err(e @ HttpError::NoResponse(_)) => {
                                mine.unknown += 1;
                                if mine.samples.len() < 5 {
                                    mine.samples.push(format!("GET {path}: {e}"));
                                }
                                conn = None;
                                break;
                            }
                        }
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                let mut r = result.lock().unwrap();
                r.ok += mine.ok;
                r.failed += mine.failed;
                r.unknown += mine.unknown;
                r.connections += mine.connections;
                r.resent += mine.resent;
                let room = 10usize.saturating_sub(r.samples.len());
                r.samples.extend(mine.samples.into_iter().take(room));
            });
        }
    });
    let mut r = result.into_inner().unwrap();
    r.elapsed = start.elapsed();
    r
}
