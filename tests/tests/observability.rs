//! What operators watch: the metrics of both running binaries follow Prometheus's
//! conventions and carry no event data, the dashboards and alert rules name only metrics
//! the binaries export, and the lag alert, loaded into a real Prometheus scraping real
//! processes, fires during a ClickHouse outage and resolves after it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_tests::{create_team, free_port, http, ingest_command, redis_zadd, repo_root, unique, wait_for_rows};
use sluice_tests::{Capture, Ingest, Proxy};

/// A plugin that fails on one event, so its error counter exists.
const FLAKY: &str = r#"
return {
    process_event = function(event, ctx)
        if event.event == "boom" then error("boom") end
        return event
    end,
}
"#;

/// Metric families of a Prometheus text exposition: name → (type, help).
fn families(text: &str) -> BTreeMap<String, (String, Option<String>)> {
    let mut out: BTreeMap<String, (String, Option<String>)> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            out.entry(name.to_string()).or_insert((String::new(), None)).0 = kind.to_string();
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            out.entry(name.to_string()).or_insert((String::new(), None)).1 = Some(help.to_string());
        }
    }
    out
}

/// Breaks of the conventions in one binary's exposition, as strings.
fn convention_breaks(binary: &str, text: &str) -> Vec<String> {
    let mut breaks = Vec::new();
    for (name, (kind, help)) in families(text) {
        if !name.starts_with(&format!("{binary}_")) {
            breaks.push(format!("{name}: not prefixed {binary}_"));
        }
        if help.as_deref().is_none_or(|h| h.trim().is_empty()) {
            breaks.push(format!("{name}: no HELP"));
        }
        match kind.as_str() {
            "counter" if !name.ends_with("_total") => breaks.push(format!("{name}: a counter not ending in _total")),
            "histogram" => {
                if !text.lines().any(|l| l.starts_with(&format!("{name}_bucket{{")) && l.contains("le=")) {
                    breaks.push(format!("{name}: a histogram without buckets"));
                }
                if !["_seconds", "_bytes", "_events", "_ratio"].iter().any(|u| name.ends_with(u)) {
                    breaks.push(format!("{name}: a histogram without its unit in the name"));
                }
            }
            "gauge" if !["_messages", "_bytes", "_up", "_ready"].iter().any(|u| name.ends_with(u)) => {
                breaks.push(format!("{name}: a gauge without its unit in the name"))
            }
            "summary" | "untyped" | "" => {
                breaks.push(format!("{name}: type {kind:?}, not a counter, gauge or histogram"))
            }
            _ => {}
        }
    }
    if text.contains("quantile=") {
        breaks.push("a summary's quantiles: they cannot be summed across replicas".into());
    }
    breaks
}

/// Names of the metrics a PromQL expression reads (histogram series as their family).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word =
            i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_' || bytes[i - 1] == b':');
        if starts_word && (expr[i..].starts_with("capture_") || expr[i..].starts_with("ingest_")) {
            let end = expr[i..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map_or(expr.len(), |n| i + n);
            let name = &expr[i..end];
            names.insert(name.strip_suffix("_bucket").unwrap_or(name).to_string());
            i = end;
        } else {
            i += 1;
        }
    }
    names
}

/// Every PromQL expression of the dashboards and the rules.
fn ops_expressions() -> Vec<(String, String)> {
    let mut exprs = Vec::new();
    let grafana = repo_root().join("ops/grafana");
    for entry in std::fs::read_dir(&grafana).expect("ops/grafana") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let board: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            for panel in board["panels"].as_array().unwrap() {
                for target in panel["targets"].as_array().unwrap() {
                    exprs.push((path.display().to_string(), target["expr"].as_str().unwrap().to_string()));
                }
            }
        }
    }
    let rules = std::fs::read_to_string(repo_root().join("ops/prometheus/sluice.rules.yaml")).unwrap();
    // `expr:` values, single-line or a `|` block.
    let mut lines = rules.lines().peekable();
    while let Some(line) = lines.next() {
        if let Some(value) = line.trim_start().strip_prefix("expr:") {
            let mut expr = value.trim().trim_start_matches('|').to_string();
            let indent = line.len() - line.trim_start().len();
            while let Some(next) = lines.peek() {
                if next.trim().is_empty() || next.len() - next.trim_start().len() <= indent {
                    break;
                }
                expr.push(' ');
                expr.push_str(lines.next().unwrap().trim());
            }
            exprs.push(("sluice.rules.yaml".into(), expr));
        }
    }
    exprs
}

fn install_plugin(team: &str) {
    let dir = std::env::temp_dir().join(unique("plugin-flaky"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("plugin.json"), json!({"name": "flaky"}).to_string()).unwrap();
    std::fs::write(dir.join("main.lua"), FLAKY).unwrap();
    let teams = ingest_command(&["teams", "list"], &[]);
    let id = teams.lines().find(|l| l.contains(team)).and_then(|l| l.split_whitespace().next()).expect("team id");
    ingest_command(&["plugins", "install", dir.to_str().unwrap(), "--team", id], &[]);
}

#[test]
fn metrics_follow_the_conventions_and_every_dashboard_and_rule_reads_exported_ones() {
    let team_name = unique("observability team");
    let token = create_team(&team_name);
    install_plugin(&team_name);
    let cap = Capture::start("observability", &[]);
    let ingest = Ingest::start("observability", &cap.topics.main, &[]);
    let exports = ingest.exports_lane("exports", &[]);
    // Planted: none of these may appear in a label value.
    let distinct_id = unique("person-secret-id");
    let limited = unique("phc_limited");
    redis_zadd(&format!("{}quota-limits/events", cap.redis_prefix), &limited, 600);
    std::thread::sleep(Duration::from_millis(300));
    let batch = |token: &str, events: &[&str]| {
        let batch: Vec<Value> = events.iter().map(|e| json!({"event": e, "distinct_id": distinct_id})).collect();
        let r = cap.post("/batch", "application/json", json!({"api_key": token, "batch": batch}).to_string());
        assert_eq!(r.status, 200, "{}", r.text);
    };
    batch(&token, &["one", "two", "boom", "$pageview"]);
    batch(&limited, &["over quota"]);
    batch(&unique("phc_nobody"), &["unknown token"]);
    wait_for_rows(&format!("SELECT uuid FROM {} FINAL", ingest.table("events")), 4, Duration::from_secs(30));
    // librdkafka reports consumer lag every 5 s.
    let ingest_metrics = ingest.wait_for_metrics(
        &["ingest_consumer_lag_messages{", "ingest_plugin_errors_total{", "ingest_events_dropped_total{"],
        Duration::from_secs(30),
    );
    let capture_metrics = http().get(format!("{}/metrics", cap.url)).send().unwrap().text().unwrap();
    let exports_metrics = exports.wait_for_metrics(&["ingest_exports_pending_messages"], Duration::from_secs(30));

    let mut breaks = convention_breaks("capture", &capture_metrics);
    breaks.extend(convention_breaks("ingest", &ingest_metrics));
    breaks.extend(convention_breaks("ingest", &exports_metrics));
    for planted in [&token, &limited, &distinct_id] {
        for (binary, text) in
            [("capture", &capture_metrics), ("ingest", &ingest_metrics), ("exports", &exports_metrics)]
        {
            if text.contains(planted.as_str()) {
                breaks.push(format!("{binary}: event data ({planted}) in a label value"));
            }
        }
    }
    assert!(breaks.is_empty(), "{breaks:#?}\n{capture_metrics}\n{ingest_metrics}");

    let exported: BTreeSet<String> = families(&capture_metrics)
        .into_keys()
        .chain(families(&ingest_metrics).into_keys())
        .chain(families(&exports_metrics).into_keys())
        .collect();
    let mut unknown = Vec::new();
    let expressions = ops_expressions();
    assert!(expressions.len() > 30, "the dashboards and rules were read: {}", expressions.len());
    for (file, expr) in &expressions {
        for name in metric_names(expr) {
            if !exported.contains(&name) {
                unknown.push(format!("{file}: {name} in {expr}"));
            }
        }
    }
    assert!(unknown.is_empty(), "metrics no binary exports:\n{}\nexported: {exported:?}", unknown.join("\n"));
}

#[test]
fn the_checks_catch_what_they_are_for() {
    let bad = "# HELP x_total\n# TYPE x_total counter\nx_total 1\n# TYPE capture_lag gauge\ncapture_lag 1\n\
               # HELP capture_t_seconds t\n# TYPE capture_t_seconds summary\ncapture_t_seconds{quantile=\"0.5\"} 1\n\
               # HELP capture_n n\n# TYPE capture_n counter\ncapture_n 1\n";
    let breaks = convention_breaks("capture", bad);
    for expected in [
        "x_total: not prefixed",
        "x_total: no HELP",
        "capture_lag: no HELP",
        "capture_lag: a gauge without",
        "capture_t_seconds: type \"summary\"",
        "capture_n: a counter not ending",
        "a summary's quantiles",
    ] {
        assert!(breaks.iter().any(|b| b.contains(expected)), "{expected} not caught: {breaks:?}");
    }
    assert_eq!(
        metric_names("sum by (le) (rate(ingest_batch_events_bucket[5m])) / sluice:x and capture_up_total"),
        ["capture_up_total", "ingest_batch_events"].iter().map(|s| s.to_string()).collect()
    );
}

/// A real Prometheus scraping a capture and an ingest every second, with the project's
/// rules (their `for:` shortened to seconds so the test does not wait ten minutes; the
/// expressions are the shipped ones): ClickHouse is cut while events keep coming, the
/// lag alert goes pending then firing, and resolves once ClickHouse is back.
#[test]
fn a_real_prometheus_fires_the_lag_alert_during_an_outage_and_resolves_it() {
    let proxy = Proxy::start(sluice_tests::clickhouse_url().trim_start_matches("http://"));
    let cap = Capture::start("prometheus", &[]);
    let proxied = format!("http://127.0.0.1:{}", proxy.port);
    let ingest = Ingest::start(
        "prometheus",
        &cap.topics.main,
        &[("CLICKHOUSE_URL", proxied.as_str()), ("READINESS_PROBE_INTERVAL_MS", "500")],
    );
    let token = create_team(&unique("prometheus team"));
    let prometheus = Prometheus::start(&[cap.url.trim_start_matches("http://"), ingest.address()]);

    let send = |n: usize| {
        for chunk in 0..n / 500 {
            let batch: Vec<Value> = (0..500)
                .map(|i| json!({"event": "e", "distinct_id": format!("d{}", (chunk * 500 + i) % 50)}))
                .collect();
            let r = cap.post("/batch", "application/json", json!({"api_key": token, "batch": batch}).to_string());
            assert_eq!(r.status, 200, "{}", r.text);
        }
    };
    send(500);
    wait_for_rows(&format!("SELECT uuid FROM {} FINAL", ingest.table("events")), 500, Duration::from_secs(30));
    assert_eq!(prometheus.alert_state("SluiceIngestLagGrowing"), None, "no alert while ingest keeps up");

    proxy.cut();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        send(1000);
        let state = prometheus.alert_state("SluiceIngestLagGrowing");
        if seen.last() != Some(&state) {
            seen.push(state.clone());
        }
        if state.as_deref() == Some("firing") {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(seen.contains(&Some("pending".into())), "pending first: {seen:?}\n{}", prometheus.log());
    assert_eq!(seen.last(), Some(&Some("firing".into())), "{seen:?}\n{}", prometheus.log());

    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(120);
    while prometheus.alert_state("SluiceIngestLagGrowing").is_some() {
        assert!(Instant::now() < deadline, "the alert did not resolve:\n{}", ingest.log_text());
        std::thread::sleep(Duration::from_secs(1));
    }
}

struct Prometheus {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Prometheus {
    fn start(targets: &[&str]) -> Prometheus {
        let dir = std::env::temp_dir().join(unique("prometheus"));
        std::fs::create_dir_all(&dir).unwrap();
        let rules = std::fs::read_to_string(repo_root().join("ops/prometheus/sluice.rules.yaml")).unwrap();
        let rules: String = rules
            .lines()
            .map(|l| match l.trim_start().strip_prefix("for: ") {
                Some(_) => format!("{}for: 5s", &l[..l.len() - l.trim_start().len()]),
                None => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(dir.join("rules.yaml"), rules).unwrap();
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: ['rules.yaml']\n\
                 scrape_configs:\n  - job_name: sluice\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .current_dir(&dir)
            .args([
                "--config.file=prometheus.yml",
                "--storage.tsdb.path=data",
                &format!("--web.listen-address=127.0.0.1:{port}"),
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus (Debian's prometheus package; scripts/services.sh installs it)");
        let p = Prometheus { child, port, dir };
        let start = Instant::now();
        while http().get(format!("http://127.0.0.1:{port}/-/ready")).send().map_or(true, |r| r.status() != 200) {
            assert!(start.elapsed() < Duration::from_secs(30), "prometheus not ready:\n{}", p.log());
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    /// `pending`, `firing`, or `None` when the alert is inactive.
    fn alert_state(&self, name: &str) -> Option<String> {
        let body: Value =
            http().get(format!("http://127.0.0.1:{}/api/v1/alerts", self.port)).send().unwrap().json().unwrap();
        body["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["labels"]["alertname"] == name)
            .map(|a| a["state"].as_str().unwrap().to_string())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
