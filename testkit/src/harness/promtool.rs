//! `promtool check metrics` on exposition bodies.
//!
//! promtool reads one exposition per run and a run costs ~60 ms, mostly start-up, so
//! checking thousands of scraped bodies one by one takes minutes. `PromtoolBatch`
//! checks many bodies in one run instead: every metric name of body `k` gets the prefix
//! `b<k>_`, which makes each body's families distinct, so the concatenation parses and
//! lints exactly as the bodies would one by one. (A line whose name does not start with
//! a valid character is left unprefixed, so promtool still rejects it.)

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

/// Result of one promtool run: `Ok(lint warnings)` or `Err(parse error)`.
fn run_promtool(input: &str) -> Result<Vec<String>, String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run promtool (install it with `make deps`): {e}"))?;
    let mut stdin = child.stdin.take().unwrap();
    let out = std::thread::scope(|s| {
        s.spawn(move || {
            // promtool stops reading at the first parse error: ignore the broken pipe.
            let _ = stdin.write_all(input.as_bytes());
        });
        child.wait_with_output()
    })
    .map_err(|e| format!("promtool: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    // Exit 0: clean. Exit 3: lint problems only (one "<metric> <text>" per line on
    // stderr) — warnings. Anything else (exit 1 with "error while linting: text format
    // parsing error ...") is an error.
    match out.status.code() {
        Some(0) => Ok(Vec::new()),
        Some(3) if !stderr.contains("error while linting") => {
            Ok(stderr.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect())
        }
        _ => Err(format!("promtool check metrics failed ({}): {stderr}{stdout}", out.status)),
    }
}

/// `Ok(lint warnings)` or `Err(why promtool rejected the body)`.
pub fn promtool_lint(body: &str) -> Result<Vec<String>, String> {
    run_promtool(body)
}

/// promtool accepts the body. Lint warnings (e.g. a family without HELP) are printed,
/// not errors.
pub fn promtool_check(body: &str) -> Result<(), String> {
    for w in promtool_lint(body)? {
        eprintln!("promtool warning: {w}");
    }
    Ok(())
}

/// Checks every body, batched; returns the distinct lint warnings.
pub fn promtool_check_all<'a>(bodies: impl IntoIterator<Item = &'a str>) -> Result<Vec<String>, String> {
    let mut batch = PromtoolBatch::default();
    let mut warnings = BTreeSet::new();
    for (k, body) in bodies.into_iter().enumerate() {
        batch.push(k, body);
        if batch.text.len() >= PromtoolBatch::TARGET_BYTES {
            warnings.extend(batch.check()?);
            batch = PromtoolBatch::default();
        }
    }
    warnings.extend(batch.check()?);
    Ok(warnings.into_iter().collect())
}

/// Many bodies checked by one promtool run (see the module docs).
#[derive(Default)]
pub struct PromtoolBatch {
    text: String,
    /// (first line number in `text`, 1-based; body id), in order
    starts: Vec<(usize, usize)>,
    lines: usize,
}

impl PromtoolBatch {
    /// A good batch size: promtool takes ~0.1 s per MB.
    pub(crate) const TARGET_BYTES: usize = 8 << 20;

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    pub(crate) fn len_bytes(&self) -> usize {
        self.text.len()
    }

    pub fn bodies(&self) -> usize {
        self.starts.len()
    }

    /// Adds body `id` (any number that identifies it in error messages).
    pub fn push(&mut self, id: usize, body: &str) {
        let prefix = format!("b{id}_");
        self.starts.push((self.lines + 1, id));
        for line in body.split_inclusive('\n') {
            self.text.push_str(&prefixed(line, &prefix));
            self.lines += 1;
        }
        if !body.is_empty() && !body.ends_with('\n') {
            // Keep the next body's first line separate; the parser in expo.rs reports
            // the missing newline itself.
            self.text.push('\n');
        }
    }

    /// Runs promtool once on the batch: `Ok(distinct lint warnings, prefixes removed)`
    /// or `Err` naming the body and line promtool rejected.
    pub fn check(&self) -> Result<Vec<String>, String> {
        if self.is_empty() {
            return Ok(Vec::new());
        }
        let started = Instant::now();
        let result = run_promtool(&self.text);
        if std::env::var_os("SHMETRICS_TEST_VERBOSE").is_some() {
            eprintln!("promtool: {} bodies, {} KB in {:?}", self.bodies(), self.text.len() / 1024, started.elapsed());
        }
        match result {
            Ok(warnings) => {
                Ok(warnings.iter().map(|w| strip_body_prefix(w)).collect::<BTreeSet<_>>().into_iter().collect())
            }
            Err(e) => Err(self.explain(&e)),
        }
    }

    fn explain(&self, err: &str) -> String {
        let line_no = err
            .split("in line ")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse::<usize>().ok());
        let Some(line_no) = line_no else { return err.to_string() };
        let at = self.starts.partition_point(|&(start, _)| start <= line_no).saturating_sub(1);
        let (start, id) = self.starts[at];
        let line = self.text.lines().nth(line_no - 1).unwrap_or("");
        format!("body #{id}, its line {}: {line:?} (names prefixed b{id}_ for the batch)\n{err}", line_no - start + 1)
    }
}

fn prefixed(line: &str, prefix: &str) -> String {
    let blank = |c: char| c == ' ' || c == '\t';
    let name_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let body = line.trim_start_matches(blank);
    let indent = line.len() - body.len();
    let at = if let Some(comment) = body.strip_prefix('#') {
        let after_hash = comment.trim_start_matches(blank);
        let keyword_end = after_hash.find(blank).unwrap_or(after_hash.len());
        if !matches!(&after_hash[..keyword_end], "HELP" | "TYPE") {
            return line.to_string();
        }
        let name = after_hash[keyword_end..].trim_start_matches(blank);
        line.len() - name.len()
    } else {
        indent
    };
    if line[at..].starts_with(name_start) {
        format!("{}{prefix}{}", &line[..at], &line[at..])
    } else {
        line.to_string()
    }
}

fn strip_body_prefix(s: &str) -> String {
    if let Some(rest) = s.strip_prefix('b') {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits > 0 && rest[digits..].starts_with('_') {
            return rest[digits + 1..].to_string();
        }
    }
    s.to_string()
}
