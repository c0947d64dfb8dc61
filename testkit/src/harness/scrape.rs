//! A thread that scrapes `/metrics` back-to-back and checks every body as it arrives.

use super::expo::{check_monotonic, Exposition};
use super::http::{Conn, HttpError};
use super::promtool::PromtoolBatch;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the scrape loop saw. Every body was parsed by `Exposition::parse`, checked for
/// histogram invariants and against the previous body for counters that decreased, and
/// fed to promtool (in batches, see `promtool.rs`).
#[derive(Debug, Default)]
pub struct Scrapes {
    /// bodies received with status 200
    pub count: usize,
    /// scrapes that did not produce a 200 response (connection errors, other statuses)
    pub errors: Vec<String>,
    /// parse errors, wrong Content-Type, histogram invariants, decreasing counters
    /// (the first `MAX_VIOLATIONS`; `violation_count` counts all)
    pub violations: Vec<String>,
    pub violation_count: usize,
    /// promtool rejections (body number, line, message)
    pub(crate) promtool_errors: Vec<String>,
    /// distinct promtool lint warnings (not errors)
    pub(crate) promtool_warnings: BTreeSet<String>,
    pub promtool_runs: usize,
    pub promtool_time: Duration,
    pub elapsed: Duration,
    pub last: Option<Exposition>,
}

impl Scrapes {
    /// No scrape failed, no body violated anything, promtool accepted every body.
    pub fn assert_clean(&self) {
        self.assert_clean_allowing_errors(0);
    }

    /// Like `assert_clean`, tolerating up to `max_errors` failed scrapes (a scrape on a
    /// worker that is killed fails).
    pub fn assert_clean_allowing_errors(&self, max_errors: usize) {
        assert!(self.count > 0, "no successful scrape; errors: {:?}", self.errors);
        assert!(
            self.errors.len() <= max_errors,
            "{} failed scrapes (at most {max_errors} allowed): {:?}",
            self.errors.len(),
            &self.errors[..self.errors.len().min(10)]
        );
        assert!(
            self.violation_count == 0,
            "{} violations in {} scraped bodies, first 20:\n{}",
            self.violation_count,
            self.count,
            self.violations.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
        );
        assert!(
            self.promtool_errors.is_empty(),
            "promtool rejected scraped bodies:\n{}",
            self.promtool_errors.join("\n")
        );
    }
}

pub struct ScrapeLoop {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Scrapes>>,
}

const MAX_VIOLATIONS: usize = 200;

impl ScrapeLoop {
    /// GETs `path` from 127.0.0.1:`port` back-to-back until `stop()`.
    pub fn start(port: u16, path: &str) -> ScrapeLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let path = path.to_string();
        let handle = thread::Builder::new()
            .name("scrape".into())
            .spawn(move || scrape_loop(port, &path, &stop2))
            .expect("spawn scrape thread");
        ScrapeLoop { stop, handle: Some(handle) }
    }

    /// Stops after the scrape in progress; waits for promtool to finish the last batch.
    pub fn stop(mut self) -> Scrapes {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.take().unwrap().join() {
            Ok(s) => s,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for ScrapeLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn scrape_loop(port: u16, path: &str, stop: &AtomicBool) -> Scrapes {
    let mut s = Scrapes::default();
    let started = Instant::now();
    // promtool runs on a thread of its own so scraping continues meanwhile.
    let (tx, rx) = mpsc::sync_channel::<PromtoolBatch>(2);
    let checker = thread::spawn(move || {
        let mut out = (Vec::new(), BTreeSet::new(), 0usize, Duration::ZERO);
        for batch in rx {
            let t = Instant::now();
            match batch.check() {
                Ok(w) => out.1.extend(w),
                Err(e) => out.0.push(e),
            }
            out.2 += 1;
            out.3 += t.elapsed();
        }
        out
    });
    let mut batch = PromtoolBatch::default();
    let mut conn: Option<Conn> = None;
    let mut prev: Option<(usize, Exposition)> = None;
    let violation = |s: &mut Scrapes, msg: String| {
        s.violation_count += 1;
        if s.violations.len() < MAX_VIOLATIONS {
            s.violations.push(msg);
        }
    };
    while !stop.load(Ordering::Relaxed) {
        let c = match &mut conn {
            Some(c) => c,
            None => match Conn::connect(port) {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    s.errors.push(format!("connect: {e}"));
                    thread::sleep(Duration::from_millis(5));
                    continue;
                }
            },
        };
        let resp = match c.get(path) {
            Ok(r) => r,
            // The server had closed the idle connection (a reload, say): not a failure.
            Err(HttpError::NotSent(_)) => {
                conn = None;
                continue;
            }
            Err(e) => {
                s.errors.push(e.to_string());
                conn = None;
                continue;
            }
        };
        if !c.reusable() {
            conn = None;
        }
        if resp.status != 200 {
            s.errors.push(format!("status {}: {}", resp.status, String::from_utf8_lossy(&resp.body)));
            continue;
        }
        let n = s.count;
        s.count += 1;
        if resp.header("content-type") != Some(CONTENT_TYPE) {
            violation(
                &mut s,
                format!("scrape #{n}: Content-Type {:?}, want {CONTENT_TYPE:?}", resp.header("content-type")),
            );
        }
        let body = match String::from_utf8(resp.body) {
            Ok(b) => b,
            Err(e) => {
                violation(&mut s, format!("scrape #{n}: body is not UTF-8: {e}"));
                continue;
            }
        };
        batch.push(n, &body);
        if batch.len_bytes() >= PromtoolBatch::TARGET_BYTES {
            tx.send(std::mem::take(&mut batch)).unwrap();
        }
        match Exposition::parse(&body) {
            Err(e) => violation(&mut s, format!("scrape #{n}: {e}")),
            Ok(exp) => {
                for p in exp.check_histograms() {
                    violation(&mut s, format!("scrape #{n}: {p}"));
                }
                if let Some((prev_n, prev)) = &prev {
                    for p in check_monotonic(prev, &exp) {
                        violation(&mut s, format!("scrape #{n} vs #{prev_n}: {p}"));
                    }
                }
                prev = Some((n, exp));
            }
        }
    }
    s.elapsed = started.elapsed();
    if !batch.is_empty() {
        tx.send(batch).unwrap();
    }
    drop(tx);
    let (errors, warnings, runs, time) = checker.join().expect("promtool thread");
    s.promtool_errors = errors;
    s.promtool_warnings = warnings;
    s.promtool_runs = runs;
    s.promtool_time = time;
    s.last = prev.map(|(_, exp)| exp);
    s
}
