//! Sabotage: random writes into a live region file while nginx records and serves it.
//!
//! nginx with two workers takes a bounded load of updates (counters, a gauge, a
//! histogram, some `del`s, new label sets all along) while this test scrapes
//! `/metrics` (text, OpenMetrics, JSON) and, between scrapes, writes random 8-byte
//! words over the region's metadata through its own mapping of the file: the
//! header's counters, the family records, the family index, the series records,
//! the series index, the arena, and the `cell` field of live series. It runs as the
//! file's owner (the master's user), as an adversary with write access would.
//!
//! Asserted: no worker exits on a signal (error.log has no "exited on signal", the
//! workers are the ones that started), the master is alive, every `/metrics`
//! answer is either valid (promtool and the harness's strict parser for text,
//! `# EOF` for OpenMetrics, a whole JSON document) or a 500 whose reason is logged, and the
//! corruption is both counted (`shmetrics_region_corrupt_total`) and logged with
//! the file's path.

use std::time::Instant;

use shmetrics::layout::*;
use testkit::harness::nginx::alive;
use testkit::harness::*;
use testkit::shm::FileMap;
use testkit::XorShift;

/// Random writes in all, in rounds of `WRITES_PER_ROUND`, one scrape per round.
const WRITES: usize = 20_000;
const WRITES_PER_ROUND: usize = 20;
/// Requests of the background load (bounded: the test ends when both are done).
const REQUESTS: u64 = 150_000;
const CONCURRENCY: usize = 8;

const CONF: &str = r#"
load_module /usr/share/nginx/modules/ndk_http_module.so;
load_module /usr/share/nginx/modules/ngx_http_lua_module.so;

worker_processes {{WORKERS}};
error_log {{PREFIX}}/logs/error.log warn;
pid {{PREFIX}}/logs/nginx.pid;

events { worker_connections 1024; }

http {
    access_log off;
    client_body_temp_path {{PREFIX}}/tmp/body;
    proxy_temp_path {{PREFIX}}/tmp/proxy;
    fastcgi_temp_path {{PREFIX}}/tmp/fastcgi;
    uwsgi_temp_path {{PREFIX}}/tmp/uwsgi;
    scgi_temp_path {{PREFIX}}/tmp/scgi;

    lua_package_path "{{LUA_DIR}}/?.lua;/usr/share/lua/5.1/?.lua;;";
    lua_package_cpath "{{LIB_DIR}}/?.so;;";

    init_by_lua_block {
        prometheus = require("resty.shmetrics").init("sabotage", {
            path = "{{SHM_PATH}}", max_series = 4096, max_families = 64, max_slots = 8 })
        requests = prometheus:counter("sab_requests_total", "Requests", {"route", "code"})
        latency = prometheus:histogram("sab_latency_seconds", "Latency", {"route"}, {0.1, 0.5, 1, 5})
        level = prometheus:gauge("sab_level", "Level", {"route"})
        plain = prometheus:counter("sab_plain_total", "No labels")
    }

    server {
        listen 127.0.0.1:{{PORT}};
        location = /hit {
            content_by_lua_block {
                -- Updates may be refused (nil, err) by a corrupt file: that is
                -- counted in shmetrics_errors_total, and the request goes on.
                local i = tonumber(ngx.var.arg_i) or 0
                local route = "/r" .. (i % 300)
                requests:inc(1, {route, tostring(200 + i % 3)})
                latency:observe((i % 70) / 10, {route})
                level:set(i, {route})
                level:inc(1, {route})
                plain:inc(1)
                if i % 97 == 0 then
                    requests:del({route, "200"})
                end
                ngx.say("ok")
            }
        }
    }

    server {
        listen 127.0.0.1:{{METRICS_PORT}};
        location = /metrics { content_by_lua_block { prometheus:collect() } }
        location = /json { content_by_lua_block { prometheus:collect_json() } }
    }
}
"#;

/// A random word: often a small or boundary value, which passes more checks
/// than noise does and so goes further into the code.
fn word(rng: &mut XorShift, max_cells: u32) -> u64 {
    match rng.below(8) {
        0 => rng.next(),
        1 => rng.below(64),
        2 => u32::MAX as u64 - rng.below(4),
        3 => (max_cells as u64 - rng.below(8)) | ((max_cells as u64 - rng.below(8)) << 32),
        4 => rng.below(1 << 20) | (rng.below(1 << 20) << 32),
        5 => 0,
        6 => rng.below(4) | (rng.below(4) << 32),
        _ => rng.next() & 0x0000_ffff_0000_ffff,
    }
}

/// Where the writes go: `(name, start, end)` byte ranges of the file.
fn targets(h: &Header) -> Vec<(&'static str, u64, u64)> {
    use std::sync::atomic::Ordering::Relaxed;
    let fams = (h.families_used.load(Relaxed).min(h.max_families) as u64).max(1);
    let series = (h.series_used.load(Relaxed).min(h.max_series) as u64).max(1);
    let arena = h.arena_used.load(Relaxed).clamp(8, h.arena_bytes);
    vec![
        ("header counters", 192, 224),
        ("families", h.off_families, h.off_families + fams * 128),
        ("family index", h.off_family_index, h.off_family_index + h.family_index_cap as u64 * 4),
        ("series", h.off_series, h.off_series + series * 24),
        ("series index", h.off_series_index, h.off_series_index + h.series_index_cap as u64 * 4),
        ("arena", h.off_arena, h.off_arena + arena),
    ]
}

#[test]
fn random_writes_over_the_metadata_never_take_nginx_down() {
    let started = Instant::now();
    let nginx = Nginx::start_text("corruption", CONF, &[("WORKERS", "2")]);
    let workers = nginx.worker_pids();
    let warm = load(nginx.port, |i| format!("/hit?i={i}"), 3_000, 4);
    assert_eq!(warm.ok, 3_000, "warm-up: {:?}", warm.samples);
    let (body, _) = scrape(nginx.metrics_port);
    assert!(body.contains("sab_requests_total{"), "warm-up recorded nothing:\n{body}");

    let map = FileMap::open(&nginx.shm_path);
    let max_cells = map.header().max_cells;
    let cell_field = |rng: &mut XorShift| -> u64 {
        let h = map.header();
        let used = h.series_used.load(std::sync::atomic::Ordering::Relaxed).min(h.max_series) as u64;
        h.off_series + rng.below(used.max(1)) * 24 + 16
    };
    let load = Load::spawn(nginx.port, |i| format!("/hit?i={}", 3_000 + i), REQUESTS, CONCURRENCY);
    let mut rng = XorShift(0x5eed_c0ff_ee15_900d);
    let (mut writes, mut cell_writes, mut scrapes, mut refused) = (0usize, 0usize, 0usize, 0usize);
    let mut bodies = Vec::new();
    let mut by_target = std::collections::BTreeMap::new();
    while writes < WRITES {
        for _ in 0..WRITES_PER_ROUND {
            if rng.below(4) == 0 {
                // The `cell` field of a series (a live one, mostly: the used part).
                let off = cell_field(&mut rng);
                map.write_u32(off, word(&mut rng, max_cells) as u32);
                cell_writes += 1;
                *by_target.entry("series cell field").or_insert(0) += 1;
            } else {
                let t = targets(map.header());
                let (name, start, end) = t[rng.below(t.len() as u64) as usize];
                let off = (start + rng.below(end - start)).min(end.saturating_sub(8)).max(start);
                map.write_u64(off, word(&mut rng, max_cells));
                *by_target.entry(name).or_insert(0) += 1;
            }
            writes += 1;
        }
        let path = ["/metrics", "/metrics", "/json"][scrapes % 3];
        let accept = if scrapes % 6 == 1 { "application/openmetrics-text; version=1.0.0" } else { "text/plain" };
        let resp = get_with_headers(nginx.metrics_port, path, &[("Accept", accept)])
            .unwrap_or_else(|e| panic!("GET {path} after {writes} writes: {e}\nerror.log:\n{}", nginx.error_log()));
        scrapes += 1;
        match resp.status {
            200 if path == "/json" => {
                let text = resp.text();
                assert!(text.starts_with("{\"families\":[") && text.ends_with("]}\n"), "JSON body:\n{text}");
            }
            200 if accept.starts_with("application/openmetrics") => {
                assert!(resp.text().ends_with("# EOF\n"), "OpenMetrics body without # EOF");
            }
            200 => {
                // The harness's strict 0.0.4 parser too (duplicate series, for one).
                if let Err(e) = Exposition::parse(resp.text()) {
                    panic!("scrape {scrapes} after {writes} writes: {e}\n{}", resp.text());
                }
                bodies.push(resp.text().to_string())
            }
            500 => refused += 1,
            s => panic!("GET {path}: status {s} after {writes} writes"),
        }
        assert!(alive(nginx.master_pid()), "the master died after {writes} writes");
    }
    let result = load.join();
    let elapsed = started.elapsed();

    let log = nginx.error_log();
    assert!(!log.contains("exited on signal"), "a worker crashed:\n{log}");
    assert!(alive(nginx.master_pid()), "the master died");
    assert_eq!(nginx.worker_pids(), workers, "workers were replaced (one died):\n{log}");
    if refused > 0 {
        assert!(log.contains("shmetrics: rendering failed"), "{refused} scrapes answered 500 without a logged reason");
    }
    promtool_check_all(bodies.iter().map(|b| b.as_str())).unwrap_or_else(|e| panic!("promtool rejected a scrape: {e}"));
    let path = nginx.shm_path.display().to_string();
    assert!(
        log.lines().any(|l| l.contains("shmetrics: the region file") && l.contains(&path) && l.contains("is corrupt")),
        "no corruption logged with the path {path}:\n{log}"
    );
    let (body, exp) = scrape(nginx.metrics_port);
    let counted: f64 = exp.samples_named("shmetrics_region_corrupt_total").map(|s| s.value).sum();
    assert!(counted > 0.0, "corruption not counted:\n{body}");
    report!(
        "corruption: {writes} random writes ({cell_writes} into series cell fields; {by_target:?}), {scrapes} scrapes \
         ({} text bodies checked by promtool, {refused} answered 500), {} requests ({} ok, {} failed, {} unknown), {counted} corrupt records counted, {elapsed:?}",
        bodies.len(),
        result.total(),
        result.ok,
        result.failed,
        result.unknown
    );
    drop(map);
}
