//! examples/prometheus/ without a server: `promtool check config`, `promtool check
//! rules`, `promtool test rules` (the rules' unit tests), and the Grafana dashboard's
//! structure. tests/nginx_prometheus.rs runs the same files in a real Prometheus.
//! Also the reference PromQL arithmetic and JSON parser of testkit/src/harness/prometheus.rs.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use testkit::harness::prometheus::*;

/// The seed plan's catalog (shared/seed/README.md) plus what resty.shmetrics.gateway
/// adds; the dashboard must show every one.
const FAMILIES: &[&str] = &[
    "gateway_requests_total",
    "gateway_request_duration_seconds",
    "rate_limit_hits_total",
    "rate_limit_violations_total",
    "cache_hits_total",
    "cache_misses_total",
    "http_requests_total",
    "http_request_duration_seconds",
    "namespace_requests_total",
    "namespace_tokens_total",
    "errors_total",
    "model_requests_total",
    "model_tokens_input_total",
    "model_tokens_output_total",
    "model_request_duration_seconds",
    "model_throughput_tokens_per_second",
    "model_cost_usd_total",
    "model_accuracy_percent",
    "model_time_to_first_token_seconds",
    "gateway_instrumentation_errors_total",
    "shmetrics_errors_total",
    "shmetrics_series_dropped_total",
    "shmetrics_series_used",
    "shmetrics_worker_slots",
];

/// Runs promtool with `args` in `dir`; panics with its output unless it succeeds.
fn promtool(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(PROMTOOL)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("run {PROMTOOL}: {e} (install Debian's prometheus package: `make deps`)"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?} failed ({}):\n{text}", out.status);
    text
}

#[test]
fn promtool_check_config() {
    // Also checks the rule files it names and the file-SD target files.
    let out = promtool(&examples_dir(), &["check", "config", "prometheus.yml"]);
    assert!(out.contains("SUCCESS: 1 rule files found"), "{out}");
    assert!(out.contains("valid prometheus config file syntax"), "{out}");
    let yml = std::fs::read_to_string(examples_dir().join("prometheus.yml")).unwrap();
    assert!(yml.contains("scrape_interval: 15s"), "the plan's scrape interval (15 s - 1 min)");
    assert!(yml.contains("file_sd_configs"), "gateways from file-based service discovery");
}

#[test]
fn promtool_check_rules() {
    let out = promtool(&examples_dir(), &["check", "rules", "rules/gateway.rules.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn promtool_test_rules() {
    let out = promtool(&examples_dir().join("rules"), &["test", "rules", "gateway.rules.test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn dashboard_is_well_formed() {
    let doc = dashboard();
    assert_eq!(doc.get("uid").and_then(Json::as_str), Some("shmetrics-gateway"));
    let vars: Vec<&str> = doc
        .get("templating")
        .and_then(|t| t.get("list"))
        .and_then(Json::as_array)
        .unwrap()
        .iter()
        .map(|v| v.get("name").and_then(Json::as_str).unwrap())
        .collect();
    assert_eq!(vars, ["datasource", "job", "instance", "namespace", "model"]);

    let panels = dashboard_panels(&doc);
    let mut ids = BTreeSet::new();
    let mut rows = Vec::new();
    for p in &panels {
        let title = p.get("title").and_then(Json::as_str).unwrap();
        let id = p.get("id").and_then(Json::as_f64).unwrap();
        assert!(ids.insert(id as i64), "panel id {id} twice ({title})");
        let grid = p.get("gridPos").unwrap_or_else(|| panic!("{title}: no gridPos"));
        let (x, w) = (grid.get("x").and_then(Json::as_f64).unwrap(), grid.get("w").and_then(Json::as_f64).unwrap());
        assert!(x + w <= 24.0, "{title}: wider than the dashboard");
        if p.get("type").and_then(Json::as_str) == Some("row") {
            rows.push(title);
            continue;
        }
        let ds = |j: &Json| j.get("datasource").and_then(|d| d.get("uid")).and_then(Json::as_str).map(str::to_string);
        assert_eq!(ds(p).as_deref(), Some("${datasource}"), "{title}: datasource");
        let targets = p.get("targets").and_then(Json::as_array).unwrap_or(&[]);
        assert!(!targets.is_empty(), "{title}: no targets");
        for t in targets {
            assert_eq!(ds(t).as_deref(), Some("${datasource}"), "{title}: target datasource");
        }
    }
    assert_eq!(
        rows,
        ["Gateway", "Namespaces", "Models, tokens and cost", "Rate limits", "Cache", "shmetrics (the metrics store)"]
    );

    // Every expression expands to plain PromQL, and the catalog is all there.
    let exprs: Vec<String> = dashboard_exprs(&doc).into_iter().map(|(_, e)| grafana_expand(&e)).collect();
    assert!(exprs.len() >= 40, "{} expressions", exprs.len());
    for family in FAMILIES {
        assert!(exprs.iter().any(|e| e.contains(family)), "no panel shows {family}");
    }
}

/// A table panel with several queries shows them as one table only through a merge
/// transformation (Grafana otherwise shows one query's frame at a time), and a column
/// of spend (a `*_usd*` series) carries a currency unit.
#[test]
fn dashboard_tables_merge_queries_and_spend_is_money() {
    let doc = dashboard();
    let mut spend_columns = 0;
    for p in dashboard_panels(&doc) {
        if p.get("type").and_then(Json::as_str) != Some("table") {
            continue;
        }
        let title = p.get("title").and_then(Json::as_str).unwrap();
        let targets = p.get("targets").and_then(Json::as_array).unwrap_or(&[]);
        let transforms = p.get("transformations").and_then(Json::as_array).unwrap_or(&[]);
        let ids: Vec<&str> = transforms.iter().filter_map(|t| t.get("id").and_then(Json::as_str)).collect();
        if targets.len() > 1 {
            assert_eq!(
                ids.first(),
                Some(&"merge"),
                "{title}: {} queries need a merge transformation first: {ids:?}",
                targets.len()
            );
        }
        let renamed = |column: &str| {
            transforms
                .iter()
                .filter(|t| t.get("id").and_then(Json::as_str) == Some("organize"))
                .find_map(|t| t.get("options")?.get("renameByName")?.get(column)?.as_str())
                .unwrap_or(column)
                .to_string()
        };
        let field_config = p.get("fieldConfig");
        let default_unit = field_config.and_then(|f| f.get("defaults")?.get("unit")?.as_str());
        let overrides = field_config.and_then(|f| f.get("overrides")?.as_array()).unwrap_or(&[]);
        for t in targets {
            if !t.get("expr").and_then(Json::as_str).unwrap().contains("_usd") {
                continue;
            }
            spend_columns += 1;
            let ref_id = t.get("refId").and_then(Json::as_str).unwrap();
            let column = renamed(&if targets.len() > 1 { format!("Value #{ref_id}") } else { "Value".to_string() });
            let unit = overrides
                .iter()
                .filter(|o| {
                    let m = o.get("matcher");
                    m.and_then(|m| m.get("id")?.as_str()) == Some("byName")
                        && m.and_then(|m| m.get("options")?.as_str()) == Some(column.as_str())
                })
                .flat_map(|o| o.get("properties").and_then(Json::as_array).unwrap_or(&[]))
                .find(|prop| prop.get("id").and_then(Json::as_str) == Some("unit"))
                .and_then(|prop| prop.get("value")?.as_str())
                .or(default_unit);
            assert_eq!(unit, Some("currencyUSD"), "{title}: spend column {column:?} (query {ref_id})");
        }
    }
    assert!(spend_columns > 0, "no table shows spend");
}

/// The README's "Try it" runs Prometheus on these files against `make demo`: the one
/// target is the demo's metrics server (scripts/demo.sh's default port).
#[test]
fn targets_scrape_make_demo() {
    let text = std::fs::read_to_string(examples_dir().join("targets/gateways.json")).unwrap();
    let groups = Json::parse(&text).unwrap();
    let targets: Vec<&str> = groups
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g.get("targets").and_then(Json::as_array).unwrap())
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(targets, ["127.0.0.1:9145"]);
    let demo = std::fs::read_to_string(examples_dir().join("../../scripts/demo.sh")).unwrap();
    assert!(demo.contains("metrics_port=${DEMO_METRICS_PORT:-9145}"), "make demo's metrics port is no longer 9145");
}

#[test]
fn json_parser_is_strict() {
    let j = Json::parse(r#"{"a":[1,-2.5e3,"x\n\u00e9\ud83d\ude00"],"b":{"c":null,"d":true}}"#).unwrap();
    let a = j.get("a").and_then(Json::as_array).unwrap();
    assert_eq!(a[1].as_f64(), Some(-2500.0));
    assert_eq!(a[2].as_str(), Some("x\né😀"));
    assert_eq!(j.get("b").and_then(|b| b.get("d")), Some(&Json::Bool(true)));
    for bad in ["{", "[1,]", "01", "\"a", "{\"a\" 1}", "NaN", "[1] x", "\"\t\"", "1.", "\"\\ud800\""] {
        assert!(Json::parse(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn promql_reference_arithmetic() {
    // 10 in (0, 0.1], 10 in (0.1, 1]: the 95th of 20 is rank 19, 9/10 into (0.1, 1].
    let b = [(0.1, 10.0), (1.0, 20.0), (f64::INFINITY, 20.0)];
    assert_near("p95", bucket_quantile(0.95, &b), 0.1 + 0.9 * 0.9);
    assert_eq!(bucket_quantile(0.5, &b), 0.1);
    assert_eq!(bucket_quantile(1.0, &b), 1.0, "rank in +Inf: the last finite bound");
    assert!(bucket_quantile(0.5, &[(1.0, 0.0), (f64::INFINITY, 0.0)]).is_nan());
    // Samples every 60 s from the range start to its end: no extrapolation.
    let pts: Vec<(i64, f64)> = (0..=5).map(|i| (i * 60_000, 60.0 * i as f64)).collect();
    assert_eq!(extrapolated_rate(&pts, 300_000, 300_000), Some(1.0));
    // Two samples 10 s apart, queried 5 s after the last, in a 5m window that starts
    // long before the first: extended to the query time (5 s) and back to where the
    // counter would have been 0 (10 s × 10/20 = 5 s before the first sample).
    let pts = [(100_000, 10.0), (110_000, 30.0)];
    let want = 20.0 * ((10.0 + 5.0 + 5.0) / 10.0) / 300.0;
    assert_near("rate", extrapolated_rate(&pts, 115_000, 300_000).unwrap(), want);
    assert_eq!(extrapolated_rate(&pts[..1], 115_000, 300_000), None);
    // A reset counts the value before it.
    let pts = [(0, 5.0), (60_000, 1.0), (120_000, 3.0)];
    assert_near("rate with a reset", extrapolated_rate(&pts, 120_000, 120_000).unwrap(), (3.0 - 5.0 + 5.0) / 120.0);
}

#[test]
fn grafana_variables_expand() {
    assert_eq!(
        grafana_expand(r#"sum(rate(x{job=~"$job", namespace=~"$namespace"}[$__rate_interval]))"#),
        r#"sum(rate(x{job=~".*", namespace=~".*"}[5m]))"#
    );
    assert_eq!(
        label_values(r#"label_values(m{job=~"$job"}, instance)"#),
        Some((r#"m{job=~"$job"}"#.into(), "instance".into()))
    );
}
