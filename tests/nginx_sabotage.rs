//! The sabotage suite: what an adversarial operator can do to the region's file
//! system and to the way `init` is called, against a real nginx. Each case runs
//! nginx in a private mount namespace with its own tmpfs on /dev/shm
//! (`SHM_TMPFS`, see `testkit/src/harness/nginx.rs`), so a small or full /dev/shm never
//! touches the machine's. Every case asserts: no "exited on signal" in
//! error.log, the master alive (or, for a refused start, a clean exit status),
//! refusals that say why, every /metrics answer valid for promtool or an error
//! status with the reason logged, and exact counts where counting is possible.
//!
//! `docs/hostile-input.md` §12 has the table of what each case does now.

use shmetrics::layout::Params;
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::time::Duration;
use testkit::harness::nginx::{alive, render, signal, wait_until};
use testkit::harness::*;

/// The region's path inside the namespace (the template's `REGION_PATH`).
const REGION: &str = "/dev/shm/shmetrics-sabotage";

/// `init` in the master and one counter, as the README shows.
const MASTER_INIT: &str = r#"prometheus = shmetrics.init("sab", { path = REGION_PATH })
        hits = prometheus:counter("sab_hits_total", "Hits", {"k"})"#;

fn vars<'a>(tmpfs: &'a str, workers: &'a str, master: &'a str, worker: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![("SHM_TMPFS", tmpfs), ("WORKERS", workers), ("MASTER_INIT", master), ("WORKER_INIT", worker), ("EXTRA", "")]
}

/// No worker or master died of a signal, and the master still runs.
fn assert_survived(nginx: &Nginx) {
    let log = nginx.error_log();
    assert!(!log.contains("exited on signal"), "a process died of a signal:\n{log}");
    assert!(alive(nginx.master_pid()), "the master is gone:\n{log}");
}

/// What one `/hit` answered: `Ok(worker pid)` if counted, `Err((worker pid, why))` if refused.
fn hit(port: u16, k: &str, m: &str) -> Result<i32, (i32, String)> {
    let resp = get(port, &format!("/hit?k={k}&m={m}")).unwrap_or_else(|e| panic!("GET /hit: {e}"));
    assert_eq!(resp.status, 200, "/hit: {}", resp.text());
    let text = resp.text().trim().to_string();
    let (pid, rest) = text.split_once(' ').unwrap_or_else(|| panic!("/hit answered {text:?}"));
    let pid: i32 = pid.parse().unwrap_or_else(|_| panic!("/hit answered {text:?}"));
    match rest.strip_prefix("refused: ") {
        None if rest == "ok" => Ok(pid),
        Some(why) => Err((pid, why.to_string())),
        None => panic!("/hit answered {text:?}"),
    }
}

/// Tallies of a series of hits: counted, and refused with their reasons.
#[derive(Default, Debug)]
struct Tally {
    ok: u64,
    refused: Vec<String>,
    ok_pids: Vec<i32>,
    refused_pids: Vec<i32>,
}

impl Tally {
    fn add(&mut self, r: Result<i32, (i32, String)>) {
        match r {
            Ok(pid) => {
                self.ok += 1;
                self.ok_pids.push(pid);
            }
            Err((pid, why)) => {
                self.refused.push(why);
                self.refused_pids.push(pid);
            }
        }
    }
}

/// One /metrics answer: `Some` (valid for promtool, parsed) on 200; `None` on an
/// error status, after checking that error.log says why with `reason`.
fn scrape_or_reason(nginx: &Nginx, reason: &str) -> Option<Exposition> {
    let resp = get(nginx.metrics_port, "/metrics").expect("GET /metrics");
    if resp.status == 200 {
        let body = resp.text().to_string();
        promtool_check(&body).unwrap_or_else(|e| panic!("promtool rejected /metrics: {e}\n{body}"));
        return Some(Exposition::parse(&body).unwrap_or_else(|e| panic!("unparsable /metrics: {e}\n{body}")));
    }
    assert_eq!(resp.status, 500, "/metrics: {}", resp.text());
    let log = nginx.error_log();
    assert!(log.contains(reason), "/metrics answered 500 without {reason:?} in error.log:\n{log}");
    None
}

fn total(exp: &Exposition, name: &str) -> f64 {
    exp.samples_named(name).map(|s| s.value).sum()
}

fn errors(exp: &Exposition, reason: &str) -> f64 {
    exp.expect("shmetrics_errors_total", &[("reason", reason)])
}

/// Rewrites nginx.conf with `vars` and sends SIGHUP.
fn reconfigure(nginx: &Nginx, vars: &[(&str, &str)]) {
    let template =
        fs::read_to_string(testkit::harness::nginx::repo_dir().join("nginx-test-conf/sabotage.conf")).unwrap();
    let conf = fs::read_to_string(&nginx.conf).unwrap();
    // Every placeholder but ours has its value in the running config: take them
    // from there by rendering our own, then replacing the parts we change.
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in [
        ("PREFIX", nginx.prefix.display().to_string()),
        ("PORT", nginx.port.to_string()),
        ("METRICS_PORT", nginx.metrics_port.to_string()),
        ("LUA_DIR", nginx.prefix.join("lua").display().to_string()),
        ("LIB_DIR", nginx.prefix.join("lib").display().to_string()),
        ("WORKERS", nginx.workers.to_string()),
    ] {
        values.insert(k.into(), v);
    }
    for (k, v) in vars {
        values.insert(k.to_string(), v.to_string());
    }
    let fresh = render(&template, &values);
    assert_ne!(fresh, conf, "the reload changes nothing");
    fs::write(&nginx.conf, fresh).unwrap();
    signal(nginx.master_pid(), libc::SIGHUP).expect("SIGHUP");
}

fn wait_log(nginx: &Nginx, what: &str) {
    wait_until(
        Duration::from_secs(30),
        || nginx.error_log().contains(what),
        || format!("{what:?} not in error.log:\n{}", nginx.error_log()),
    );
}

/// A start refused for want of room: a clean exit (status 1, no signal), and
/// error.log says what, where, how much and the fixes.
fn assert_refused_start(tmpfs: &str) {
    let report = Nginx::start_failing("sabotage", &vars(tmpfs, "2", MASTER_INIT, ""));
    let need = Params::default().resolved().reserved_at_init();
    for fragment in [
        "exit status: 1".to_string(),
        format!("cannot reserve {need} bytes for the region \"{REGION}\""),
        "No space left on device".to_string(),
        "bytes free (each worker process later reserves 1280256 bytes more".to_string(),
        "a larger /dev/shm (Docker: --shm-size), another `path`".to_string(),
        "smaller max_series/max_slots".to_string(),
    ] {
        assert!(report.contains(&fragment), "refusal lacks {fragment:?}:\n{report}");
    }
    assert!(!report.contains("signal"), "{report}");
}

#[test]
fn tmpfs_8k_refuses_start_with_the_reason() {
    assert_refused_start("8k");
}

#[test]
fn tmpfs_256k_refuses_start_with_the_reason() {
    assert_refused_start("256k");
}

/// Room for init and one worker slot, not two: the second worker records
/// nothing, says why, counts its refusals, and logs the reason once.
#[test]
fn tmpfs_with_room_for_one_slot_refuses_the_other_worker() {
    let p = Params { max_series: 500, max_families: 16, ..Params::default() }.resolved();
    let pages = (p.reserved_at_init() + p.slot_bytes()).div_ceil(4096) + 1;
    let size = format!("{}k", pages * 4);
    let init = r#"prometheus = shmetrics.init("sab", { path = REGION_PATH, max_series = 500, max_families = 16 })
        hits = prometheus:counter("sab_hits_total", "Hits", {"k"})"#;
    let nginx = Nginx::start("sabotage", &vars(&size, "2", init, ""));
    let mut t = Tally::default();
    let workers = nginx.worker_pids();
    // Until both workers answered a few times (connections spread over them).
    for i in 0..4000 {
        t.add(hit(nginx.port, &format!("k{}", i % 7), "hits"));
        if i >= 200 && workers.iter().all(|w| t.ok_pids.contains(w) || t.refused_pids.contains(w)) {
            break;
        }
    }
    assert!(t.ok > 0 && !t.refused.is_empty(), "one worker counts and one is refused: {t:?}");
    let counting: Vec<i32> = workers.iter().copied().filter(|w| t.ok_pids.contains(w)).collect();
    assert_eq!(counting.len(), 1, "exactly one worker has a slot: {t:?}");
    assert!(t.refused_pids.iter().all(|p| !counting.contains(p)), "{t:?}");
    let want = format!("cannot reserve {} bytes for worker slot 2 in \"{REGION}\"", p.slot_bytes());
    for why in &t.refused {
        assert!(why.contains(&want) && why.contains("this process records nothing"), "refusal {why:?}");
    }
    let exp = scrape_or_reason(&nginx, "rendering failed").expect("a scrape");
    assert_eq!(total(&exp, "sab_hits_total"), t.ok as f64, "every counted hit is exposed, nothing else");
    assert_eq!(errors(&exp, "no_slot"), t.refused.len() as f64, "every refusal is counted");
    // Logged once by the refused worker, not once per refusal.
    assert_eq!(nginx.error_log().matches(&want).count(), 1, "{}", nginx.error_log());
    assert_survived(&nginx);
}

/// nginx with the default `init` on a 64 MiB tmpfs, 2 workers, `n` hits counted.
fn started_with_hits(n: u64) -> Nginx {
    let nginx = Nginx::start("sabotage", &vars("64m", "2", MASTER_INIT, ""));
    let mut t = Tally::default();
    for i in 0..n {
        t.add(hit(nginx.port, &format!("a{}", i % 10), "hits"));
    }
    assert_eq!(t.ok, n, "{t:?}");
    nginx
}

/// Reloads with `extra` as the EXTRA Lua code; waits for 2 new workers and
/// returns their pids.
fn reload_with(nginx: &Nginx, extra: &str) -> Vec<i32> {
    let old = nginx.worker_pids();
    let mut v = vars("64m", "2", MASTER_INIT, "");
    v.retain(|(k, _)| *k != "EXTRA");
    v.push(("EXTRA", extra));
    reconfigure(nginx, &v);
    wait_until(
        Duration::from_secs(30),
        || nginx.worker_pids().iter().filter(|p| !old.contains(p)).count() >= 2,
        || format!("no new workers after the reload:\n{}", nginx.error_log()),
    );
    nginx.worker_pids().into_iter().filter(|p| !old.contains(p)).collect()
}

/// Fills the namespace's /dev/shm; returns the filler's path.
fn fill_shm(nginx: &Nginx) -> std::path::PathBuf {
    let filler = nginx.ns_path("/dev/shm/filler");
    let mut f = fs::File::create(&filler).expect("create filler");
    let chunk = vec![1u8; 1 << 16];
    loop {
        if f.write_all(&chunk).is_err() {
            break;
        }
    }
    let _ = f.flush();
    filler
}

/// /dev/shm filled after start: new series still count (the registries, the
/// arena and each worker's cells were reserved); a reload that adds a family
/// succeeds; new workers adopt the old workers' reserved slots or are refused
/// with the reason; every answer is counted exactly.
#[test]
fn full_tmpfs_after_start_then_reload_adding_a_family() {
    let nginx = started_with_hits(200);
    let filler = fill_shm(&nginx);
    // 300 new series into a full /dev/shm.
    let mut full = Tally::default();
    for i in 0..300 {
        full.add(hit(nginx.port, &format!("new{i}"), "hits"));
    }
    assert_eq!(full.ok, 300, "new series in a full /dev/shm: {full:?}");
    let exp = scrape_or_reason(&nginx, "rendering failed").expect("a scrape");
    assert_eq!(total(&exp, "sab_hits_total"), 500.0);

    let old = nginx.worker_pids();
    reload_with(&nginx, r#"extra = prometheus:counter("sab_extra_total", "Added by a reload", {"k"})"#);
    nginx.wait_old_workers_gone(&old);
    let (mut extra_t, mut hits_t) = (Tally::default(), Tally::default());
    for i in 0..300 {
        extra_t.add(hit(nginx.port, &format!("e{}", i % 30), "extra"));
        if i % 3 == 0 {
            hits_t.add(hit(nginx.port, "after", "hits"));
        }
    }
    for why in extra_t.refused.iter().chain(&hits_t.refused) {
        assert!(why.contains("cannot reserve 1280256 bytes for worker slot"), "refusal {why:?}");
    }
    assert!(extra_t.ok > 0, "the family added by the reload counts: {extra_t:?}");
    report!(
        "full /dev/shm after a reload: {} + {} counted, {} + {} refused for want of a slot",
        extra_t.ok,
        hits_t.ok,
        extra_t.refused.len(),
        hits_t.refused.len()
    );
    let exp = scrape_or_reason(&nginx, "rendering failed").expect("a scrape");
    assert_eq!(total(&exp, "sab_extra_total"), extra_t.ok as f64);
    assert_eq!(total(&exp, "sab_hits_total"), 500.0 + hits_t.ok as f64);
    assert_eq!(errors(&exp, "no_slot"), (extra_t.refused.len() + hits_t.refused.len()) as f64);
    assert!(!nginx.error_log().contains("[emerg]"), "the reload failed:\n{}", nginx.error_log());
    assert_survived(&nginx);
    let _ = fs::remove_file(filler);
}

/// /dev/shm full while an old worker still drains after a reload: of the two new
/// workers, one adopts the exited old worker's (reserved) slot and the other
/// cannot reserve a fresh one: it records nothing, says why, counts its
/// refusals; once the slow old worker exits, it adopts that slot and counts.
#[test]
fn full_tmpfs_reload_while_an_old_worker_drains() {
    let nginx = started_with_hits(100);
    let old = nginx.worker_pids();
    let port = nginx.port;
    let slow = std::thread::spawn(move || get(port, "/slow?s=4").map(|r| r.text().to_string()));
    std::thread::sleep(Duration::from_millis(300));
    let filler = fill_shm(&nginx);
    let fresh = reload_with(&nginx, "-- reloaded");
    // Until both new workers answered, while the slow request holds an old one.
    let mut during = Tally::default();
    for i in 0..3000 {
        during.add(hit(nginx.port, &format!("b{}", i % 10), "hits"));
        let seen = |p: &i32| during.ok_pids.contains(p) || during.refused_pids.contains(p);
        if fresh.iter().all(seen) {
            break;
        }
    }
    assert!(old.iter().any(|p| alive(*p)), "the slow old worker drained too soon for this test");
    // A new worker that claims while both old workers live, or after the idle one
    // exited but its slot was adopted by the other new worker, finds no room.
    let refused: Vec<i32> = fresh.iter().copied().filter(|p| during.refused_pids.contains(p)).collect();
    assert!(!refused.is_empty(), "a new worker was refused a slot: {during:?}");
    assert!(refused.iter().all(|p| !during.ok_pids.contains(p)), "a refused worker recorded: {during:?}");
    assert!(during.refused_pids.iter().all(|p| fresh.contains(p)), "only new workers are refused: {during:?}");
    let want =
        "cannot reserve 1280256 bytes for worker slot 3 in \"/dev/shm/shmetrics-sabotage\": No space left on device";
    for why in &during.refused {
        assert!(why.contains(want) && why.contains("this process records nothing"), "refusal {why:?}");
    }
    let slow = slow.join().unwrap().expect("the slow request is answered");
    assert!(slow.trim_end().ends_with(" slow"), "{slow}");
    nginx.wait_old_workers_gone(&old);
    // A refused worker claims again (at most once a second) and adopts a slot an
    // old worker left.
    let mut after = Tally::default();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !refused.iter().all(|p| after.ok_pids.contains(p)) && std::time::Instant::now() < deadline {
        after.add(hit(nginx.port, "c", "hits"));
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(refused.iter().all(|p| after.ok_pids.contains(p)), "a refused worker never got a slot: {after:?}");
    let exp = scrape_or_reason(&nginx, "rendering failed").expect("a scrape");
    assert_eq!(total(&exp, "sab_hits_total"), (100 + during.ok + after.ok) as f64);
    assert_eq!(errors(&exp, "no_slot"), (during.refused.len() + after.refused.len()) as f64);
    assert_eq!(nginx.error_log().matches(want).count(), refused.len(), "logged once a worker:\n{}", nginx.error_log());
    report!(
        "reload on a full /dev/shm with a draining worker: {} counted, {} refused then adopted",
        during.ok + after.ok,
        during.refused.len() + after.refused.len()
    );
    assert_survived(&nginx);
    let _ = fs::remove_file(filler);
}

/// The region file replaced (another file renamed over its path), then a
/// reload: refused with the reason; the workers keep counting into the mapped
/// file and scrapes keep serving it.
#[test]
fn replaced_region_then_reload() {
    let nginx = started_with_hits(50);
    let other = nginx.ns_path("/dev/shm/other");
    fs::write(&other, b"not a region").unwrap();
    fs::rename(&other, nginx.ns_path(REGION)).unwrap();
    let workers = nginx.worker_pids();
    signal(nginx.master_pid(), libc::SIGHUP).expect("SIGHUP");
    wait_log(
        &nginx,
        &format!("the region file \"{REGION}\" was replaced by another file while nginx ran; a reload cannot switch files: restart nginx"),
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(nginx.worker_pids(), workers, "a failed reload keeps the old workers");
    for i in 0..50 {
        assert!(hit(nginx.port, &format!("a{}", i % 10), "hits").is_ok());
    }
    let exp = scrape_or_reason(&nginx, "rendering failed").expect("the mapped region is still served");
    assert_eq!(total(&exp, "sab_hits_total"), 100.0);
    assert_survived(&nginx);
}

/// The region file cut to 0 bytes while nginx runs. A reload fails with the
/// reason and restores the file's size, so the running workers do not crash;
/// scrapes answer 500 with the reason; cutting it again is healed by the next
/// scrape the same way.
#[test]
fn truncated_region_then_reload() {
    let nginx = started_with_hits(100);
    let exp = scrape_or_reason(&nginx, "rendering failed").expect("a scrape");
    assert_eq!(total(&exp, "sab_hits_total"), 100.0);
    let file = nginx.ns_path(REGION);
    let len = fs::metadata(&file).unwrap().len();
    let workers = nginx.worker_pids();
    // Every worker records before the cut, so that each holds its slot: one
    // that claims its first slot after the cut is refused by the claim instead
    // (the file's header is zeroed), a case of its own.
    let mut before = Tally::default();
    for i in 0..2000 {
        if workers.iter().all(|w| before.ok_pids.contains(w)) {
            break;
        }
        before.add(hit(nginx.port, &format!("a{}", i % 10), "hits"));
    }
    assert!(workers.iter().all(|w| before.ok_pids.contains(w)), "every worker recorded: {before:?}");

    fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(0).unwrap();
    signal(nginx.master_pid(), libc::SIGHUP).expect("SIGHUP");
    let cut = format!("the region file \"{REGION}\" was cut to 0 bytes while nginx ran (it is {len} bytes)");
    wait_log(&nginx, &cut);
    assert!(
        nginx
            .error_log()
            .contains("its size was restored and its registries reserved again, so running workers do not crash"),
        "{}",
        nginx.error_log()
    );
    assert_eq!(fs::metadata(&file).unwrap().len(), len, "the master restored the size");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(nginx.worker_pids(), workers, "a failed reload keeps the old workers, starts none");
    // The workers write into the restored pages, no crash. A label set a worker
    // has cached is counted (into zeroed cells); one it must look up finds a
    // zeroed registry and is refused with the reason.
    let mut t = Tally::default();
    for i in 0..100 {
        t.add(hit(nginx.port, &format!("a{}", i % 10), "hits"));
    }
    for w in 0..4 {
        t.add(hit(nginx.port, &format!("unseen{w}"), "hits"));
    }
    assert!(t.refused.len() >= 4, "label sets never seen are refused: {t:?}");
    for why in &t.refused {
        assert_eq!(why, "sab_hits_total: no family with id 0", "refusal after the cut");
    }
    let overwritten =
        format!("rendering failed: the region file \"{REGION}\" was overwritten while nginx ran (wrong magic");
    assert!(scrape_or_reason(&nginx, &overwritten).is_none(), "a zeroed region is not served");

    // Cut again: this time a scrape finds it first.
    fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(4096).unwrap();
    assert!(scrape_or_reason(
        &nginx,
        "rendering failed: the region file \"/dev/shm/shmetrics-sabotage\" was cut to 4096 bytes"
    )
    .is_none());
    assert_eq!(fs::metadata(&file).unwrap().len(), len, "the scrape restored the size");
    for i in 0..100 {
        if let Err((_, why)) = hit(nginx.port, &format!("a{}", i % 10), "hits") {
            assert_eq!(why, "sab_hits_total: no family with id 0", "refusal after the second cut");
        }
    }
    // A second reload is refused on the zeroed header.
    signal(nginx.master_pid(), libc::SIGHUP).expect("SIGHUP");
    wait_log(&nginx, &format!("the region file \"{REGION}\" was overwritten while nginx ran (wrong magic"));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(nginx.worker_pids(), workers);
    assert_survived(&nginx);
}

/// `init` in init_worker_by_lua only: every worker refuses it with the reason,
/// nothing is created, nothing is split. 16 workers, started several times.
#[test]
fn init_in_init_worker_is_refused_in_every_worker() {
    let worker_init = r#"local ok, err = pcall(shmetrics.init, "sab", { path = "/dev/shm/shmetrics-sabotage" })
        if not ok then ngx.log(ngx.ERR, "sabotage init: ", err) end"#;
    for _ in 0..4 {
        let nginx = Nginx::start("sabotage", &vars("64m", "16", "", worker_init));
        let want = "shmetrics.init(\"sab\") called in init_worker_by_lua: call it in init_by_lua, \
                    where the nginx master maps the region once for every worker; metric definitions \
                    (counter, gauge, histogram) may stay in init_worker_by_lua";
        wait_until(
            Duration::from_secs(20),
            || nginx.error_log().matches(want).count() == 16,
            || format!("16 refusals expected:\n{}", nginx.error_log()),
        );
        assert!(!nginx.ns_path(REGION).exists(), "a worker created the region");
        assert!(matches!(hit(nginx.port, "x", "hits"), Err((_, why)) if why.contains("no metric")));
        let resp = get(nginx.metrics_port, "/metrics").expect("GET /metrics");
        assert_eq!((resp.status, resp.text().trim()), (500, "no registry (see error.log)"));
        assert_survived(&nginx);
    }
}

/// `init` in init_by_lua and again, for the same name, in init_worker_by_lua
/// (where nginx-lua-prometheus users define metrics): the workers get the
/// master's registry, one region, exact counts. 16 workers, started several times.
#[test]
fn init_again_in_init_worker_returns_the_masters_registry() {
    let master = r#"prometheus = shmetrics.init("sab", { path = REGION_PATH })"#;
    let worker = r#"prometheus = shmetrics.init("sab", { path = "/dev/shm/shmetrics-sabotage" })
        hits = prometheus:counter("sab_hits_total", "Hits", {"k"})"#;
    for _ in 0..3 {
        let nginx = Nginx::start("sabotage", &vars("64m", "16", master, worker));
        let r = load(nginx.port, |i| format!("/hit?k=k{}&m=hits", i % 4), 1600, 16);
        assert_eq!((r.ok, r.failed, r.unknown), (1600, 0, 0), "{:?}", r.samples);
        let exp = scrape_or_reason(&nginx, "rendering failed").expect("a scrape");
        assert_eq!(total(&exp, "sab_hits_total"), 1600.0, "one region, every hit counted once");
        assert_eq!(exp.family("sab_hits_total").map(|f| f.kind.as_deref()), Some(Some("counter")));
        assert!(!nginx.error_log().contains("called in init_worker_by_lua"), "{}", nginx.error_log());
        assert_survived(&nginx);
        nginx.assert_no_errors(&[]);
    }
}

/// More workers than slots with room for a draining generation: a warning at
/// start naming max_slots; the workers without a slot are refused and counted.
#[test]
fn too_few_slots_for_the_workers_warns_at_start() {
    let init = r#"prometheus = shmetrics.init("sab", { path = REGION_PATH, max_slots = 4 })
        hits = prometheus:counter("sab_hits_total", "Hits", {"k"})"#;
    let nginx = Nginx::start("sabotage", &vars("64m", "4", init, ""));
    let want = "shmetrics: max_slots = 4 leaves 3 worker slots for 4 worker processes: \
                with the old workers that drain after a reload, up to 8 processes write at once";
    assert!(nginx.error_log().contains(want), "no warning at start:\n{}", nginx.error_log());
    assert!(nginx.error_log().contains("raise max_slots to at least 9"));
    let mut t = Tally::default();
    for i in 0..400 {
        t.add(hit(nginx.port, &format!("k{}", i % 3), "hits"));
    }
    for why in &t.refused {
        assert!(why.contains("all 3 worker slots belong to live processes; raise max_slots"), "{why}");
    }
    let exp = scrape_or_reason(&nginx, "rendering failed").expect("a scrape");
    assert_eq!(total(&exp, "sab_hits_total"), t.ok as f64);
    assert_eq!(errors(&exp, "no_slot"), t.refused.len() as f64);
    assert_survived(&nginx);
}
