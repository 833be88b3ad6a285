//! `ctx.capture` through the real pipeline: events a plugin sends enter the ingestion
//! topic under its team's token and become rows like any other, marked as the plugin's;
//! the shipped importer pages through an endpoint on a schedule without importing
//! anything twice; and plugins answering captured events by capturing stop at the
//! depth limit instead of looping.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_tests::plugins::{install, plugin_dir, Database};
use sluice_tests::receiver::{Answer, Receiver};
use sluice_tests::{clickhouse_rows, Capture, Ingest};

fn rows(ingest: &Ingest, team: i64) -> Vec<Value> {
    let sql = format!(
        "SELECT event, distinct_id, toString(timestamp) AS ts, properties FROM {} FINAL WHERE team_id = {team} ORDER BY event, ts",
        ingest.table("events")
    );
    clickhouse_rows(&sql)
        .into_iter()
        .map(|mut r| {
            r["properties"] = serde_json::from_str(r["properties"].as_str().unwrap()).unwrap();
            r
        })
        .collect()
}

fn wait_rows(ingest: &Ingest, team: i64, n: usize, log: impl Fn() -> String) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = rows(ingest, team);
        if got.len() >= n {
            return got;
        }
        assert!(Instant::now() < deadline, "{} of {n} rows: {got:?}\n{}", got.len(), log());
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Pages of a source: the first two events, then one more, then nothing new.
fn source() -> Receiver {
    Receiver::responding(
        |head, _| {
            let line = head.lines().next().unwrap_or_default();
            if line.contains("cursor=a ") || line.contains("cursor=a&") {
                Answer::Json(
                    200,
                    r#"{"events": [{"event": "Invoice Paid", "distinct_id": "cus-2", "properties": {"amount": 7}, "timestamp": "2026-01-02T00:00:00Z"}], "cursor": "b", "more": false}"#,
                )
            } else if line.contains("cursor=b") {
                Answer::Json(200, r#"{"events": [], "cursor": "b", "more": false}"#)
            } else {
                Answer::Json(
                    200,
                    r#"{"events": [{"event": "Customer Created", "distinct_id": "cus-1", "properties": {"plan": "pro"}, "timestamp": "2026-01-01T00:00:00Z"}, {"event": "Invoice Paid", "distinct_id": "cus-1", "properties": {"amount": 5}, "timestamp": "2026-01-01T01:00:00Z"}], "cursor": "a", "more": true}"#,
                )
            }
        },
        Duration::ZERO,
    )
}

/// The shipped importer, every (shortened) minute: both pages on the first run, the
/// cursor kept in storage, nothing imported twice on the runs after; the rows are the
/// team's, with the source's people and times, marked as the plugin's.
#[test]
fn the_importer_captures_each_source_event_once_under_its_team() {
    let db = Database::create("capture_import");
    db.run(&["migrate"]);
    let (team, _) = db.team("importing");
    let endpoint = source();
    let importer = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/json-importer");
    let id = install(&db, &importer, team, &["--config", &format!("url={}", endpoint.url("/events"))]);

    let cap = Capture::start("capture-import", &[]);
    let prefix = format!("{}/", sluice_tests::unique("import"));
    let mut env = db.env();
    env.extend([
        ("PLUGIN_HTTP_ALLOW_PRIVATE", "true"),
        ("PLUGIN_SCHEDULE_MINUTE_MS", "1000"),
        ("REDIS_KEY_PREFIX", prefix.as_str()),
        ("PLUGIN_CAPTURE_TOPIC", cap.topics.main.as_str()),
    ]);
    let ingest = Ingest::start("capture_import", &cap.topics.main, &env);
    let got = wait_rows(&ingest, team, 3, || format!("{}\n{}", db.run(&["plugins", "jobs"]), ingest.log_text()));
    // Several more runs: the cursor stays at "b", and nothing comes again.
    let deadline = Instant::now() + Duration::from_secs(30);
    while endpoint.all.lock().unwrap().len() < 5 {
        assert!(Instant::now() < deadline, "runs: {}\n{}", endpoint.all.lock().unwrap().len(), ingest.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    let got_after = rows(&ingest, team);
    assert_eq!(got_after.len(), 3, "imported once each: {got_after:?}");
    let summary: Vec<(String, String, String)> = got
        .iter()
        .map(|r| {
            (
                r["event"].as_str().unwrap().into(),
                r["distinct_id"].as_str().unwrap().into(),
                r["ts"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("Customer Created".into(), "cus-1".into(), "2026-01-01 00:00:00".into()),
            ("Invoice Paid".into(), "cus-1".into(), "2026-01-01 01:00:00".into()),
            ("Invoice Paid".into(), "cus-2".into(), "2026-01-02 00:00:00".into()),
        ],
        "{got:?}"
    );
    for r in &got {
        assert!(r["properties"].get("$ip").is_none(), "no client, no $ip: {r}");
        assert_eq!(r["properties"]["$lib"], "sluice-plugin", "{r}");
        assert_eq!(r["properties"]["$plugin_config_id"], id, "{r}");
    }
    assert!(ingest.metrics().contains(&format!("ingest_plugin_captured_events_total{{plugin_config=\"{id}\"}} 3")));
}

const ECHO: &str = r#"
return {
    on_event = function(event, ctx)
        ctx.capture("echo", {of = event.event}, event.distinct_id)
    end,
}
"#;

/// An `on_event` plugin that captures an echo of every event it sees, its own echoes
/// included: each original event makes exactly three echoes (the depth limit), then the
/// capture is refused, and the pipeline comes to rest.
#[test]
fn plugins_answering_captured_events_by_capturing_stop_at_the_depth_limit() {
    let db = Database::create("capture_loop");
    db.run(&["migrate"]);
    let (team, token) = db.team("echoing");
    install(&db, &plugin_dir("echo", json!({"name": "echo"}), ECHO), team, &[]);
    let cap = Capture::start("capture-loop", &[]);
    let mut env = db.env();
    env.push(("PLUGIN_CAPTURE_TOPIC", cap.topics.main.as_str()));
    let ingest = Ingest::start("capture_loop", &cap.topics.main, &env);
    let exports = ingest.exports_lane("exports", &[]);
    let batch: Vec<Value> = (0..2).map(|i| json!({"event": "original", "distinct_id": format!("d{i}")})).collect();
    let r = cap.post("/batch", "application/json", json!({"api_key": token, "batch": batch}).to_string());
    assert_eq!(r.status, 200);

    let log = || format!("{}\n{}", exports.log_text(), ingest.log_text());
    let got = wait_rows(&ingest, team, 8, log);
    std::thread::sleep(Duration::from_secs(5));
    let got = if rows(&ingest, team).len() > got.len() { rows(&ingest, team) } else { got };
    assert_eq!(got.len(), 8, "2 originals and 3 echoes of each: {got:?}\n{}", log());
    let mut depths: Vec<i64> = got.iter().filter_map(|r| r["properties"]["$plugin_capture_depth"].as_i64()).collect();
    depths.sort();
    assert_eq!(depths, vec![1, 1, 2, 2, 3, 3]);
    assert!(
        exports.log_text().contains("captured 3 times in a row"),
        "the refusal is in the log\n{}",
        exports.log_text()
    );
}
