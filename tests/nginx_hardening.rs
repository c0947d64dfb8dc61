//! Hardening in nginx: every public function in every phase and nasty label values
//! through promtool (docs/hostile-input.md); binary upgrade, stop and start, reset,
//! resize, untrusted region files (docs/lifecycle.md); more live workers than slots;
//! a full store and a per-metric limit under load.
//!
//! Scenarios: `nginx-test-conf/hardening.conf` and `hardening_phases.conf`. Every
//! count is exact: requests that record in the content phase say in their answer
//! which worker recorded and whether the update was refused, and every refused
//! update is also logged, so the tests compare counters with answers and log lines.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};
use testkit::harness::nginx::{alive, children_of, remove_shm, signal, wait_until};
use testkit::harness::*;

const WAIT: Duration = Duration::from_secs(20);

/// A region path of the test's own, kept across several nginx runs; removed on drop.
struct Region(PathBuf);

impl Region {
    fn new() -> Region {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = PathBuf::from(format!("/dev/shm/shmetrics-hardening-{}-{n}", std::process::id()));
        remove_shm(&path);
        Region(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        remove_shm(&self.0);
    }
}

fn vars<'a>(region: &'a Region, workers: &'a str, opts: &'a str, ticks: bool) -> Vec<(&'a str, &'a str)> {
    vec![
        ("WORKERS", workers),
        ("REGION", region.path()),
        ("OPTS", opts),
        ("TICKS", if ticks { "true" } else { "false" }),
    ]
}

fn start(region: &Region, workers: usize, opts: &str, ticks: bool) -> Nginx {
    let w = workers.to_string();
    Nginx::start("hardening", &vars(region, &w, opts, ticks))
}

/// The body of a GET that must answer 200.
fn text(port: u16, path: &str) -> String {
    let r = get(port, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(r.status, 200, "GET {path}: {}", String::from_utf8_lossy(&r.body));
    r.text().to_string()
}

/// One `/count` answer: the worker that recorded, and the refusal message if any.
#[derive(Debug, Clone)]
struct Counted {
    pid: i32,
    family: String,
    value: String,
    refused: Option<String>,
}

fn parse_count(family: &str, value: &str, body: &str) -> Counted {
    let body = body.trim_end();
    let (pid, rest) = body.split_once(' ').unwrap_or_else(|| panic!("bad /count answer {body:?}"));
    let refused = match rest {
        "ok" => None,
        r => Some(r.strip_prefix("refused ").unwrap_or_else(|| panic!("bad /count answer {body:?}")).to_string()),
    };
    Counted { pid: pid.parse().unwrap(), family: family.into(), value: value.into(), refused }
}

fn count(port: u16, family: &str, value: &str) -> Counted {
    parse_count(family, value, &text(port, &format!("/count?f={family}&v={value}")))
}

/// `n` requests on one keep-alive connection; all must answer 200.
fn count_many(port: u16, family: &str, value: &str, n: usize) -> Vec<Counted> {
    let mut conn = Conn::connect(port).unwrap();
    (0..n)
        .map(|_| {
            if !conn.reusable() {
                conn = Conn::connect(port).unwrap();
            }
            let r = conn.get(&format!("/count?f={family}&v={value}")).unwrap();
            assert_eq!(r.status, 200);
            parse_count(family, value, r.text())
        })
        .collect()
}

/// Pids of the error.log lines at `level` (e.g. "[warn]") that contain `needle`,
/// one entry per line.
fn log_pids(log: &str, level: &str, needle: &str) -> Vec<i32> {
    log.lines()
        .filter(|l| l.contains(level) && l.contains(needle))
        .map(|l| {
            let after = &l[l.find(level).unwrap() + level.len()..];
            after.trim_start().split('#').next().unwrap().parse().unwrap_or_else(|_| panic!("no pid in {l:?}"))
        })
        .collect()
}

fn lines_with(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// `shmetrics_errors_total`: exactly the `want` counts, 0 for every other reason.
fn assert_errors(exp: &Exposition, want: &[(&str, f64)]) {
    for s in exp.samples_named("shmetrics_errors_total") {
        let reason = s.labels["reason"].as_str();
        let w = want.iter().find(|(r, _)| *r == reason).map_or(0.0, |(_, v)| *v);
        assert_eq!(s.value, w, "shmetrics_errors_total{{reason=\"{reason}\"}}");
    }
}

/// Scrapes until `worker_starts_total` is `n` (every worker ran init_worker).
fn started(nginx: &Nginx, n: f64) -> Exposition {
    let (_, exp) = scrape_until(nginx.metrics_port, WAIT, |e| e.value("worker_starts_total", &[]) == Some(n));
    assert_eq!(exp.value("worker_starts_total", &[]), Some(n), "worker_starts_total");
    exp
}

fn slots(exp: &Exposition) -> (f64, f64, f64) {
    let v = |s| exp.expect("shmetrics_worker_slots", &[("state", s)]);
    (v("live"), v("dead"), v("free"))
}

fn replaced(exp: &Exposition) -> Vec<(String, f64)> {
    exp.samples_named("shmetrics_region_replaced").map(|s| (s.labels["reason"].clone(), s.value)).collect()
}

fn write_mode(path: &Path, bytes: &[u8], mode: u32) {
    let _ = fs::remove_file(path);
    fs::write(path, bytes).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

// ---------------------------------------------------------------------------
// Phases and nasty label values

fn phase_lines(body: &str) -> BTreeMap<String, String> {
    body.lines()
        .map(|l| {
            let (call, rest) = l.split_once(' ').unwrap_or((l, ""));
            (call.to_string(), rest.to_string())
        })
        .collect()
}

/// Polls `/result?k=<phase>` until the phase has run.
fn phase_result(port: u16, phase: &str) -> String {
    let mut out = String::new();
    wait_until(
        WAIT,
        || {
            out = text(port, &format!("/result?k={phase}"));
            !out.is_empty()
        },
        || format!("phase {phase} never ran"),
    );
    out
}

const UPDATES: [&str; 5] = ["counter:inc", "gauge:set", "gauge:inc", "gauge:dec", "histogram:observe"];

#[test]
fn every_function_in_every_phase() {
    let region = Region::new();
    let nginx = Nginx::start("hardening_phases", &[("WORKERS", "1"), ("REGION", region.path())]);
    let port = nginx.port;

    // init_by_lua (the master): updates return nil and a message, uncounted;
    // definitions, metric_data, del and reset work; collect raises.
    let init = phase_lines(&text(port, "/init"));
    for call in UPDATES {
        assert_eq!(
            init[call], "nil metrics cannot be recorded in init_by_lua (the master); record them in a worker",
            "{call} in init_by_lua"
        );
    }
    assert_eq!(init["labels"], "nil metrics cannot be recorded in init_by_lua (the master); record them in a worker");
    assert!(!init.contains_key("child:inc"));
    for (call, want) in
        [("counter()", "true true"), ("metric_data", "string nil"), ("del", "true nil"), ("reset", "true nil")]
    {
        assert_eq!(init[call], want, "{call} in init_by_lua");
    }
    // (resty.core's ngx.var raises "no request found" there.)
    assert!(init["collect"].starts_with("false "), "collect in init_by_lua: {}", init["collect"]);

    // Every worker phase records; collect raises where there is no response to serve.
    let mut results = vec![
        ("init_worker", text(port, "/init_worker"), true),
        ("content", text(port, "/content"), false),
        ("rewrite", text(port, "/rewrite"), false),
        ("access", text(port, "/access"), false),
        ("set", text(port, "/set"), true),
    ];
    assert_eq!(text(port, "/log"), "ok\n");
    assert_eq!(text(port, "/header_filter"), "ok\n");
    assert_eq!(text(port, "/body_filter"), "ok\n");
    assert_eq!(text(port, "/timer"), "ok\n");
    for phase in ["log", "header_filter", "body_filter", "timer"] {
        results.push((phase, phase_result(port, phase), true));
    }
    let phases: Vec<&str> = results.iter().map(|r| r.0).collect();
    for (phase, body, with_collect) in &results {
        let lines = phase_lines(body);
        for call in UPDATES.iter().chain(&["child:inc", "del", "reset"]) {
            assert_eq!(lines[*call], "true nil", "{call} in {phase}");
        }
        assert_eq!(lines["labels"], "child nil", "labels() in {phase}");
        assert_eq!(lines["counter()"], "true true", "redefinition in {phase}");
        assert_eq!(lines["metric_data"], "string nil", "metric_data in {phase}");
        if *with_collect {
            let c = &lines["collect"];
            assert!(c.starts_with("false ") && c.contains("API disabled"), "collect in {phase}: {c}");
        }
    }

    let (body, exp) = scrape(nginx.metrics_port);
    for phase in &phases {
        assert_eq!(exp.expect("phase_total", &[("phase", phase)]), 1.0, "phase_total in {phase}");
        assert_eq!(exp.expect("phase_gauge", &[("phase", phase)]), 6.0, "phase_gauge in {phase}: set 5, inc 2, dec 1");
        assert_eq!(exp.expect("phase_seconds_count", &[("phase", phase)]), 1.0, "phase_seconds in {phase}");
        assert_eq!(exp.expect("phase_child_total", &[("phase", phase)]), 1.0, "phase_child_total in {phase}");
    }
    assert_eq!(exp.value("phase_total", &[("phase", "init")]), None, "nothing recorded in init_by_lua");
    assert_eq!(exp.value("phase_child_total", &[("phase", "init")]), None, "no child in init_by_lua");
    assert_errors(&exp, &[]);
    promtool_check(&body).unwrap();

    // collect() serves the exposition in access_by_lua too.
    let r = get(port, "/collect_access").unwrap();
    assert_eq!((r.status, r.header("content-type")), (200, Some(scrape::CONTENT_TYPE)));
    Exposition::parse(r.text()).unwrap();
    // In log_by_lua it raises (ngx_lua logs the error, the client has its answer).
    assert_eq!(text(port, "/collect_log"), "ok\n");
    wait_until(WAIT, || nginx.error_log().contains("failed to run log_by_lua*"), || "no log_by_lua error".into());
    let log = nginx.error_log();
    let failed: Vec<&str> = log.lines().filter(|l| l.contains("failed to run log_by_lua*")).collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].contains("API disabled in the context of log_by_lua*"), "{}", failed[0]);
    // Twice in one handler: the second exposition is appended, its Content-Type
    // cannot be set any more (ngx_lua logs that).
    let twice = text(port, "/collect_twice");
    assert_eq!(twice.matches("# TYPE phase_total counter\n").count(), 2);
    // That line comes from each collect() after the response headers went out: in
    // log_by_lua and body_filter_by_lua (try_all), /collect_log and /collect_twice.
    let header_error = "attempt to set ngx.header.HEADER after sending out response headers";
    wait_until(
        WAIT,
        || lines_with(&nginx.error_log(), header_error) >= 4,
        || format!("missing header errors in:\n{}", nginx.error_log()),
    );
    assert_eq!(lines_with(&nginx.error_log(), header_error), 4);

    // Nasty label values: each its own series, escaped, accepted by promtool; one
    // byte over max_label_bytes is refused and counted, never cut.
    let nasty = text(port, "/nasty");
    let answers: Vec<&str> = nasty.lines().collect();
    assert_eq!(answers.len(), 11, "{nasty}");
    for (i, a) in answers[..10].iter().enumerate() {
        assert_eq!(*a, format!("{} true nil", i + 1));
    }
    assert_eq!(answers[10], "11 nil nasty_total: label value #1 is 65537 bytes; the limit (max_label_bytes) is 65536");
    let (body, exp) = scrape(nginx.metrics_port);
    let x64k = "x".repeat(65536);
    let values = [
        "quote\"",
        "back\\slash",
        "new\nline",
        "nul\0byte",
        "bad\u{FFFD}utf8",
        "",
        &x64k,
        "cr\rtab\t",
        "{}=,\"",
        "ünïcødé ✓",
    ];
    for (i, v) in values.iter().enumerate() {
        assert_eq!(exp.expect("nasty_total", &[("v", v)]), (i + 1) as f64, "nasty_total{{v={v:.40?}}}");
    }
    assert_eq!(exp.samples_named("nasty_total").count(), values.len());
    assert!(body.contains(r#"nasty_total{v="quote\""} 1"#));
    assert!(body.contains(r#"nasty_total{v="back\\slash"} 2"#));
    assert!(body.contains(r#"nasty_total{v="new\nline"} 3"#));
    assert_errors(&exp, &[("label_too_long", 1.0)]);
    promtool_check(&body).unwrap();

    // Hot-path misuse is logged at level error (once per metric and reason).
    nginx.assert_no_errors(&[
        "failed to run log_by_lua*",
        header_error,
        "(reason not_in_worker)",
        "(reason label_too_long)",
    ]);
}

// ---------------------------------------------------------------------------
// Restarts

#[test]
fn stop_start_keeps_counts_and_reset_discards_them() {
    let region = Region::new();
    let path = region.path();

    let mut first = start(&region, 2, "", false);
    started(&first, 2.0);
    assert!(count_many(first.port, "hits", "run", 30).iter().all(|c| c.refused.is_none()));
    let (_, exp) = scrape(first.metrics_port);
    assert_eq!(exp.expect("hits_total", &[("k", "run")]), 30.0);
    assert!(replaced(&exp).is_empty(), "a new file is not a replacement");
    first.stop();
    first.assert_no_errors(&[]);
    drop(first);

    // Same file, same sizes: attached; the new workers adopt the dead slots.
    let second = start(&region, 2, "", false);
    started(&second, 4.0);
    assert!(count_many(second.port, "hits", "run", 20).iter().all(|c| c.refused.is_none()));
    let (_, exp) = scrape(second.metrics_port);
    assert_eq!(exp.expect("hits_total", &[("k", "run")]), 50.0, "counts carry on across stop and start");
    assert_eq!(slots(&exp), (2.0, 0.0, 61.0), "slots (live, dead, free): dead ones adopted");
    assert!(replaced(&exp).is_empty());
    assert_errors(&exp, &[]);
    assert!(!second.error_log().contains("replaced region file"));
    second.assert_no_errors(&[]);
    drop(second);

    // reset = true: a new file, and the self-metric and the log say why.
    let third = start(&region, 2, "reset = true", false);
    let exp = started(&third, 2.0);
    assert_eq!(exp.value("hits_total", &[("k", "run")]), None, "reset discards the counts");
    assert_eq!(replaced(&exp), vec![("reset".to_string(), 1.0)]);
    let warn = format!("shmetrics: replaced region file {path}: the reset option was given");
    assert_eq!(log_pids(&third.error_log(), "[warn]", &warn), vec![third.master_pid()], "one WARN from the master");
    // ... but never on reload.
    assert!(count_many(third.port, "hits", "run", 5).iter().all(|c| c.refused.is_none()));
    let old = third.reload();
    third.wait_old_workers_gone(&old);
    started(&third, 4.0);
    assert!(count_many(third.port, "hits", "run", 5).iter().all(|c| c.refused.is_none()));
    let (_, exp) = scrape(third.metrics_port);
    assert_eq!(exp.expect("hits_total", &[("k", "run")]), 10.0, "a reload with reset = true keeps the counts");
    assert_eq!(replaced(&exp), vec![("reset".to_string(), 1.0)]);
    assert_eq!(lines_with(&third.error_log(), &warn), 1, "no second replacement on reload");
    third.assert_no_errors(&[]);
}

#[test]
fn other_sizes_recreate_on_start_and_are_refused_on_reload() {
    let region = Region::new();
    let path = region.path();
    let first = start(&region, 2, "max_series = 1000", false);
    assert!(count_many(first.port, "hits", "run", 10).iter().all(|c| c.refused.is_none()));
    drop(first);

    let second = start(&region, 2, "max_series = 2000", false);
    let exp = started(&second, 2.0);
    assert_eq!(exp.value("hits_total", &[("k", "run")]), None, "a resized region starts from 0");
    assert_eq!(exp.expect("shmetrics_series_capacity", &[]), 2000.0);
    assert_eq!(replaced(&exp), vec![("sizes".to_string(), 1.0)]);
    let warn =
        format!("shmetrics: replaced region file {path}: max_series is 1000 in the file, 2000 in the configuration");
    assert_eq!(log_pids(&second.error_log(), "[warn]", &warn), vec![second.master_pid()]);
    assert!(count_many(second.port, "hits", "run", 7).iter().all(|c| c.refused.is_none()));

    // A reload cannot resize: init_by_lua raises, nginx keeps the running configuration.
    let workers = second.worker_pids();
    let conf = fs::read_to_string(&second.conf).unwrap().replace("max_series = 2000", "max_series = 3000");
    fs::write(&second.conf, conf).unwrap();
    signal(second.master_pid(), libc::SIGHUP).unwrap();
    let refusal = "a reload cannot resize it: restart nginx to apply the new sizes";
    wait_until(WAIT, || second.error_log().contains(refusal), || format!("no refusal in:\n{}", second.error_log()));
    assert_eq!(second.worker_pids(), workers, "the old workers keep running");
    assert!(count_many(second.port, "hits", "run", 3).iter().all(|c| c.refused.is_none()));
    let (_, exp) = scrape(second.metrics_port);
    assert_eq!(exp.expect("hits_total", &[("k", "run")]), 10.0);
    assert_eq!(exp.expect("shmetrics_series_capacity", &[]), 2000.0);
    second.assert_no_errors(&[refusal]);
}

#[test]
fn untrusted_or_broken_region_files() {
    let region = Region::new();
    let path = Path::new(region.path());

    // Garbage (mode 0600): replaced, nginx starts, the self-metric and log say why.
    let garbage: Vec<u8> = (0..10_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    write_mode(path, &garbage, 0o600);
    let nginx = start(&region, 2, "", false);
    let (_, exp) = scrape(nginx.metrics_port);
    assert_eq!(replaced(&exp), vec![("bad_file".to_string(), 1.0)]);
    let warn = format!("shmetrics: replaced region file {}: wrong magic: not a shmetrics region", region.path());
    assert_eq!(log_pids(&nginx.error_log(), "[warn]", &warn), vec![nginx.master_pid()]);
    assert!(count(nginx.port, "hits", "x").refused.is_none());
    nginx.assert_no_errors(&[]);
    drop(nginx);
    let valid = fs::read(path).unwrap();

    // A valid region of another layout version: replaced, reason "layout".
    let mut other = valid.clone();
    other[8] = 2;
    write_mode(path, &other, 0o600);
    let nginx = start(&region, 2, "", false);
    let (_, exp) = scrape(nginx.metrics_port);
    assert_eq!(replaced(&exp), vec![("layout".to_string(), 1.0)]);
    assert!(nginx.error_log().contains("layout version 2 is not ours (1)"));
    drop(nginx);

    // Truncated to half: replaced, reason "bad_file".
    write_mode(path, &valid[..valid.len() / 2], 0o600);
    let nginx = start(&region, 2, "", false);
    let (_, exp) = scrape(nginx.metrics_port);
    assert_eq!(replaced(&exp), vec![("bad_file".to_string(), 1.0)]);
    assert!(nginx.error_log().contains(&format!(
        "the file is {} bytes, the header says {}",
        valid.len() / 2,
        valid.len()
    )));
    drop(nginx);

    // Refused, nginx does not start: loose mode, a symlink, another owner.
    let refuse = |why: &str| {
        let out = Nginx::start_failing("hardening", &vars(&region, "2", "", false));
        assert!(out.contains("exit status: 1"), "{out}");
        assert!(out.contains("[error]") && out.contains("init_by_lua error"), "{out}");
        assert!(out.contains(why), "want {why:?} in:\n{out}");
    };
    write_mode(path, &valid, 0o644);
    refuse("has mode 644: group or others may access it; refusing it (want 0600)");
    assert_eq!(fs::read(path).unwrap(), valid, "a refused file is left alone");
    assert_eq!(fs::metadata(path).unwrap().permissions().mode() & 0o777, 0o644);

    let target = PathBuf::from(format!("{}.target", region.path()));
    write_mode(&target, &valid, 0o600);
    fs::remove_file(path).unwrap();
    std::os::unix::fs::symlink(&target, path).unwrap();
    refuse("is a symbolic link; refusing it");
    assert_eq!(fs::read(&target).unwrap(), valid, "the link's target is never written");
    fs::remove_file(path).unwrap();

    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        write_mode(path, &valid, 0o600);
        std::os::unix::fs::chown(path, Some(65534), None).unwrap();
        refuse("is owned by uid 65534, not by uid 0; refusing it");
    }
}

// ---------------------------------------------------------------------------
// Binary upgrade

/// A second master (the one a binary upgrade starts): stopped with its workers
/// when dropped, so a failing test leaves nothing running.
struct Master(i32);

impl Drop for Master {
    fn drop(&mut self) {
        if !alive(self.0) {
            return;
        }
        let workers = children_of(self.0);
        let _ = signal(self.0, libc::SIGQUIT);
        let deadline = Instant::now() + Duration::from_secs(15);
        while alive(self.0) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        for pid in std::iter::once(self.0).chain(workers) {
            if alive(pid) {
                let _ = signal(pid, libc::SIGKILL);
            }
        }
    }
}

fn read_pid(path: &Path) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[test]
fn binary_upgrade_keeps_every_count() {
    const REQUESTS: u64 = 40_000;
    let region = Region::new();
    let mut nginx = start(&region, 2, "", false);
    started(&nginx, 2.0);
    // nginx ignores USR2 in a master whose parent is still the process that started
    // it ("the changing binary signal is ignored"), as the harness's foreground
    // master is: run the same prefix again as a daemon, as in production. The
    // master runs /usr/sbin/nginx (an absolute path) again on USR2.
    nginx.stop();
    let pid_file = nginx.prefix.join("logs/nginx.pid");
    let oldbin = nginx.prefix.join("logs/nginx.pid.oldbin");
    let error_log = nginx.prefix.join("logs/error.log");
    let _ = fs::remove_file(&pid_file);
    let launched = std::process::Command::new(testkit::harness::nginx::NGINX)
        .args([
            "-p".as_ref(),
            nginx.prefix.as_os_str(),
            "-e".as_ref(),
            error_log.as_os_str(),
            "-c".as_ref(),
            nginx.conf.as_os_str(),
        ])
        .output()
        .unwrap();
    assert!(launched.status.success(), "nginx (daemon) did not start: {launched:?}\n{}", nginx.error_log());
    let mut old = 0;
    wait_until(
        WAIT,
        || {
            old = read_pid(&pid_file).unwrap_or(0);
            old != 0 && children_of(old).len() == 2
        },
        || format!("the daemon did not start; error.log:\n{}", nginx.error_log()),
    );
    // Declared after `nginx`: dropped (stopped) before the harness removes the prefix.
    let old_master = Master(old);
    started(&nginx, 4.0);
    // The daemon's init_by_lua ran in the process that started it, which has
    // exited: its workers recorded the daemon as the master at their slot
    // claims, so another nginx is refused the file.
    let refused = Nginx::start_failing("hardening", &vars(&region, "1", "", false));
    let in_use = format!("\"{}\" is in use by another running nginx (master pid {old})", region.path());
    assert!(refused.contains(&in_use), "want {in_use:?} in:\n{refused}");

    let scrapes = ScrapeLoop::start(nginx.metrics_port, "/metrics");
    let load = Load::spawn(nginx.port, |_| "/count?f=hits&v=up".to_string(), REQUESTS, 8);
    load.wait_for(REQUESTS / 5, WAIT);
    // USR2: a new master; it writes nginx.pid, the old one renames its file nginx.pid.oldbin.
    let old_workers = children_of(old);
    signal(old, libc::SIGUSR2).unwrap();
    let mut new = 0;
    wait_until(
        WAIT,
        || {
            new = read_pid(&pid_file).unwrap_or(0);
            new != old && new != 0 && read_pid(&oldbin) == Some(old) && children_of(new).len() == 2
        },
        || format!("no new master after USR2; error.log:\n{}", nginx.error_log()),
    );
    let new_master = Master(new);
    // The new workers have claimed their slots (each records a start in
    // init_worker) while the old ones still hold theirs: they take free slots.
    started(&nginx, 6.0);
    load.wait_for(REQUESTS / 2, WAIT);
    // WINCH: the old workers finish what they serve and exit; QUIT: the old master exits.
    signal(old, libc::SIGWINCH).unwrap();
    wait_until(WAIT, || old_workers.iter().all(|&p| !alive(p)), || "old workers still running after WINCH".into());
    signal(old, libc::SIGQUIT).unwrap();
    wait_until(WAIT, || !alive(old), || "old master still running after QUIT".into());
    let done_at_quit = load.completed();
    let r = load.join();
    let s = scrapes.stop();
    report!(
        "upgrade: {REQUESTS} requests in {:?}: ok {} unknown {} resent {}; {done_at_quit} done when the old master exited",
        r.elapsed, r.ok, r.unknown, r.resent
    );
    report_scrapes(&s);

    assert_eq!(r.failed, 0, "non-200 answers: {:?}", r.samples);
    assert_eq!(r.ok + r.unknown, REQUESTS);
    let exp = started(&nginx, 6.0);
    let hits = exp.expect("hits_total", &[("k", "up")]);
    report!("upgrade: hits_total {hits}");
    // Exact. /count records before it answers, so every 200 was counted. WINCH stops
    // the old workers gracefully, as a reload does: a request a worker has read is
    // served to the end; only idle keep-alive connections are closed, unread. So a
    // request without an answer ("unknown") was never processed.
    assert_eq!(hits, r.ok as f64, "hits recorded vs answered 200 ({} unknown)", r.unknown);
    // The daemon's workers adopted the first run's slots; the new master's took free
    // ones. (Polled: a worker's slot counts as live until its master has reaped it.)
    let (_, e) = scrape_until(nginx.metrics_port, WAIT, |e| slots(e) == (2.0, 2.0, 59.0));
    assert_eq!(slots(&e), (2.0, 2.0, 59.0), "slots (live, dead, free)");
    assert!(replaced(&exp).is_empty(), "the new master attached the file");
    assert_errors(&exp, &[]);
    // Counters never went down across the upgrade (checked on every pair of scrapes);
    // a scrape on an old worker's idle connection may fail as it exits.
    // The new master defined its metrics half a second after it mapped the
    // region (hardening.conf), and no family vanished from a scrape meanwhile.
    let (by_new, log) = (format!("[warn] {new}#{new}: "), nginx.error_log());
    let late = log.lines().filter(|l| l.contains(&by_new) && l.contains("hardening: a new binary, defining late"));
    assert_eq!(late.count(), 1, "the new master's late definitions in error.log:\n{log}");
    s.assert_clean_allowing_errors(old_workers.len());
    nginx.assert_no_errors(&[]);
    drop(new_master);
    drop(old_master);
}

fn report_scrapes(s: &Scrapes) {
    report!("upgrade: {} scrapes, {} failed, {} violations", s.count, s.errors.len(), s.violation_count);
}

// ---------------------------------------------------------------------------
// Capacity

#[test]
fn more_live_workers_than_slots() {
    // max_slots = 3: two writer slots for two workers. A reload while one old worker
    // serves a slow request leaves three live processes: a new worker finds no slot.
    let region = Region::new();
    let nginx = start(&region, 2, "max_slots = 3", true);
    let port = nginx.port;
    wait_until(
        WAIT,
        || {
            let (_, exp) = scrape(nginx.metrics_port);
            exp.value("worker_starts_total", &[]) == Some(2.0)
        },
        || "workers did not start".into(),
    );
    let (_, exp) = scrape(nginx.metrics_port);
    assert_eq!(slots(&exp), (2.0, 0.0, 0.0));

    let slow = thread::spawn(move || text(port, "/slow?s=3"));
    wait_until(
        WAIT,
        || scrape(nginx.metrics_port).1.value("slow_inflight", &[]) == Some(1.0),
        || "no slow request".into(),
    );
    let reloaded = Instant::now();
    let old = nginx.reload();
    let new: Vec<i32> = nginx.worker_pids().into_iter().filter(|p| !old.contains(p)).collect();
    let slow_pid: i32 = slow.join().unwrap().trim().parse().unwrap();
    assert!(old.contains(&slow_pid));
    nginx.wait_old_workers_gone(&old);
    let gone = Instant::now();
    // The slotless worker's next claim (at most once a second) adopts the slot.
    // Recovered: two live slots, and no_slot stops growing (a worker without a slot
    // drops a tick every 50 ms). Polled: the old worker's slot counts as live until
    // the master has reaped it.
    let mut stable: Option<(f64, Instant)> = None;
    let mut recovered_at = gone;
    wait_until(
        WAIT,
        || {
            let (_, e) = scrape(nginx.metrics_port);
            let n = e.expect("shmetrics_errors_total", &[("reason", "no_slot")]);
            match stable {
                _ if slots(&e) != (2.0, 0.0, 0.0) => stable = None,
                Some((m, since)) if m == n => {
                    recovered_at = since;
                    return since.elapsed() >= Duration::from_millis(300);
                }
                _ => stable = Some((n, Instant::now())),
            }
            false
        },
        || "no recovery".into(),
    );
    let recovered = recovered_at - gone;
    report!("no slot: old workers gone {:?} after the reload; slots recovered {recovered:?} later", gone - reloaded);
    assert!(recovered < Duration::from_secs(3), "recovery took {recovered:?}");

    // Counting resumes in every worker.
    assert!(count_many(port, "hits", "after", 20).iter().all(|c| c.refused.is_none()));
    let (_, exp) = scrape(nginx.metrics_port);
    assert_eq!(exp.expect("hits_total", &[("k", "after")]), 20.0);
    let log = nginx.error_log();
    // Both old workers counted their start; a new one did unless it had no slot then.
    let boot_refused = lines_with(&log, "hardening refused at start: all 2 worker slots") as f64;
    assert!((1.0..=2.0).contains(&boot_refused), "new workers refused at start: {boot_refused}");
    assert_eq!(exp.expect("worker_starts_total", &[]), 4.0 - boot_refused);
    let refused =
        log_pids(&log, "[error]", "hardening refused: all 2 worker slots belong to live processes; raise max_slots");
    assert_errors(&exp, &[("no_slot", refused.len() as f64 + boot_refused)]);
    assert!(!refused.is_empty(), "a new worker was refused a slot");
    assert!(refused.iter().all(|p| new.contains(p)), "refusals only in new workers: {refused:?} vs {new:?}");
    // The module logs a failed claim at most once a second per worker.
    let claims = log_pids(&log, "[error]", "shmetrics: all 2 worker slots belong to live processes");
    let window = (gone + recovered - reloaded).as_secs() + 2;
    for pid in refused.iter().collect::<BTreeSet<_>>() {
        let n = claims.iter().filter(|p| *p == pid).count() as u64;
        assert!(n >= 1 && n <= window, "worker {pid}: {n} failed claims logged in a {window} s window");
    }
    assert!(!log.contains("exited on signal"), "a worker crashed:\n{log}");
    let mut now = nginx.worker_pids();
    now.sort_unstable();
    assert_eq!(now, new, "the new workers still run");
    nginx.assert_no_errors(&["hardening refused", "worker slots belong to live processes"]);
}

#[test]
fn full_store_and_per_metric_limit_under_load() {
    // max_series = 24: the three families without labels take 3 at definition,
    // c_total (max_series = 4) takes 4 and its overflow series 1, a_total and
    // b_total share the 16 left among 50 label values each.
    let region = Region::new();
    let nginx = start(&region, 2, "max_series = 24", false);
    let port = nginx.port;
    let workers = nginx.worker_pids();
    let mut answers: Vec<Counted> = (1..=6).map(|i| count(port, "c", &format!("c{i}"))).collect();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            thread::spawn(move || {
                let mut conn = Conn::connect(port).unwrap();
                (0..300u64)
                    .map(|k| {
                        let j = t + 4 * k;
                        let (f, v) = match j % 3 {
                            0 => ("a", format!("v{}", j * 7 % 50)),
                            1 => ("b", format!("v{}", j * 7 % 50)),
                            _ => ("c", format!("c{}", j % 8 + 1)),
                        };
                        if !conn.reusable() {
                            conn = Conn::connect(port).unwrap();
                        }
                        let r = conn.get(&format!("/count?f={f}&v={v}")).unwrap();
                        assert_eq!(r.status, 200);
                        parse_count(f, &v, r.text())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for t in threads {
        answers.extend(t.join().unwrap());
    }
    let (body, exp) = scrape(nginx.metrics_port);
    let log = nginx.error_log();
    promtool_check(&body).unwrap();

    // Every answered update is in its series exactly; every refusal is counted once.
    let mut ok: BTreeMap<(String, String), f64> = BTreeMap::new();
    let mut refused: BTreeMap<String, f64> = BTreeMap::new();
    for a in &answers {
        match &a.refused {
            None => *ok.entry((a.family.clone(), a.value.clone())).or_default() += 1.0,
            Some(err) => {
                assert_eq!(err, &format!("{}_total: all 24 series are used; raise max_series", a.family));
                *refused.entry(a.family.clone()).or_default() += 1.0;
            }
        }
    }
    assert!(refused.contains_key("a") && refused.contains_key("b") && !refused.contains_key("c"), "{refused:?}");
    let over = |v: &str| v[1..].parse::<u32>().unwrap() > 4;
    for ((f, v), n) in &ok {
        let want = if f == "c" && over(v) { None } else { Some(*n) };
        assert_eq!(exp.value(&format!("{f}_total"), &[("v", v)]), want, "{f}_total{{v={v}}}");
    }
    let overflowed: f64 = ok.iter().filter(|((f, v), _)| f == "c" && over(v)).map(|(_, n)| n).sum();
    let c_total: f64 = ok.iter().filter(|((f, _), _)| f == "c").map(|(_, n)| n).sum();
    assert_eq!(exp.expect("c_total", &[("v", "__overflow__")]), overflowed);
    assert_eq!(exp.sum("c_total"), c_total, "the family's total stays right");
    assert_eq!(exp.expect("shmetrics_series_overflow_total", &[("family", "c_total")]), overflowed);
    for f in ["a", "b"] {
        assert_eq!(exp.expect("shmetrics_series_dropped_total", &[("family", &format!("{f}_total"))]), refused[f]);
        assert_eq!(exp.sum(&format!("{f}_total")), ok.iter().filter(|((g, _), _)| g == f).map(|(_, n)| n).sum::<f64>());
    }
    assert_eq!(exp.samples_named("shmetrics_series_dropped_total").count(), 2);
    assert_eq!(exp.samples_named("shmetrics_series_overflow_total").count(), 1);
    let total_refused: f64 = refused.values().sum();
    assert_errors(&exp, &[("store_full", total_refused)]);
    assert_eq!(exp.expect("shmetrics_series_used", &[]), 24.0);
    assert_eq!(lines_with(&log, "hardening refused:") as f64, total_refused);

    // A warning per worker and family, at most once a minute: exactly the workers
    // that met the condition, once each.
    let pids =
        |pred: &dyn Fn(&Counted) -> bool| answers.iter().filter(|a| pred(a)).map(|a| a.pid).collect::<BTreeSet<_>>();
    for f in ["a", "b"] {
        let want = pids(&|a| a.family == f && a.refused.is_some());
        // (logged at level error since hot-path errors are: the first at once)
        let mut got =
            log_pids(&log, "[error]", &format!("shmetrics: {f}_total: all 24 series are used; raise max_series"));
        got.sort_unstable();
        assert_eq!(got, want.into_iter().collect::<Vec<_>>(), "{f}_total: one line per worker that dropped");
    }
    let want = pids(&|a| a.family == "c" && over(&a.value));
    let mut got = log_pids(&log, "[warn]", "shmetrics: c_total: more than max_series=4 label sets");
    got.sort_unstable();
    assert_eq!(got, want.into_iter().collect::<Vec<_>>(), "c_total: one WARN per worker that overflowed");

    assert_eq!(nginx.worker_pids(), workers, "no worker crashed");
    nginx.assert_no_errors(&["hardening refused", "(reason store_full)"]);
}

#[test]
fn malformed_scrape_filter_is_a_client_error() {
    // `?name[]` without a value arrives as `true` among the names: the client's
    // mistake, so a 400 and nothing at [error] (a scraper must not be able to
    // fill the error log).
    let region = Region::new();
    let nginx = start(&region, 1, "", false);
    let ok = get(nginx.metrics_port, "/metrics?name[]=hits_total").unwrap();
    assert_eq!(ok.status, 200);
    let r = get(nginx.metrics_port, "/metrics?name[]=hits_total&name[]").unwrap();
    assert_eq!(r.status, 400, "GET /metrics?name[]=hits_total&name[]: {}", String::from_utf8_lossy(&r.body));
    nginx.assert_no_errors(&[]);
}
