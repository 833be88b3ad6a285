//! Teams' plugins through the whole pipeline: capture → Kafka → ingest, whose plugin
//! workers run each team's chain → ClickHouse. Each test has a Postgres database of its
//! own, so the plugins it installs are seen by its ingest only.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_tests::plugins::{install, plugin_dir, Database};
use sluice_tests::receiver::{Answer, Received, Receiver};
use sluice_tests::{clickhouse_rows, ingest_command, unique, wait_for_rows, Capture, Ingest};

fn send(cap: &Capture, token: &str, events: &[(&str, &str)]) {
    let batch: Vec<Value> = events.iter().map(|(e, d)| json!({"event": e, "distinct_id": d})).collect();
    let r = cap.post("/batch", "application/json", json!({"api_key": token, "batch": batch}).to_string());
    assert_eq!(r.status, 200, "{}", r.text);
}

fn rows(ingest: &Ingest, team: i64) -> Vec<Value> {
    clickhouse_rows(&format!(
        "SELECT event, properties FROM {} FINAL WHERE team_id = {team} ORDER BY event",
        ingest.table("events")
    ))
    .into_iter()
    .map(|mut r| {
        r["properties"] = serde_json::from_str(r["properties"].as_str().unwrap()).unwrap();
        r
    })
    .collect()
}

const TAGGER: &str = r#"
local plugin = {}
function plugin.process_event(event, ctx)
    ctx.log.info("tagging " .. event.event)
    event.properties.tag = ctx.config.tag
    return event
end
return plugin
"#;

const DROPPER: &str = r#"
return { process_event = function(event) if event.event == "drop me" then return nil end return event end }
"#;

const BROKEN: &str = r#"
return { process_event = function(event) error("boom") end }
"#;

#[test]
fn a_teams_chain_changes_and_drops_its_events_and_reloads_without_a_restart() {
    let db = Database::create("plugins");
    db.run(&["migrate"]);
    let (team_a, token_a) = db.team("with plugins");
    let (team_b, token_b) = db.team("without plugins");
    let tagger = plugin_dir(
        "tagger",
        json!({"name": "tagger", "version": "1.0.0", "config": [{"key": "tag", "type": "string", "default": "v1"}]}),
        TAGGER,
    );
    let dropper = plugin_dir("dropper", json!({"name": "dropper"}), DROPPER);
    let tagger_id = install(&db, &tagger, team_a, &[]);
    let dropper_id = install(&db, &dropper, team_a, &[]);

    let cap = Capture::start("plugins", &[]);
    let mut env = db.env();
    // Polling effectively off: the reload must come from the command's notice.
    env.push(("PLUGIN_RELOAD_INTERVAL_MS", "600000"));
    let ingest = Ingest::start("plugins", &cap.topics.main, &env);

    send(&cap, &token_a, &[("keep", "a1"), ("drop me", "a1"), ("keep too", "a2")]);
    send(&cap, &token_b, &[("keep", "b1"), ("drop me", "b1")]);
    wait_for_rows(&format!("SELECT uuid FROM {} FINAL", ingest.table("events")), 4, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500)); // a dropped event would have landed by now

    let a = rows(&ingest, team_a);
    assert_eq!(
        a.iter().map(|r| r["event"].as_str().unwrap()).collect::<Vec<_>>(),
        vec!["keep", "keep too"],
        "{}",
        ingest.log_text()
    );
    for r in &a {
        assert_eq!(r["properties"]["tag"], "v1");
        assert_eq!(
            r["properties"]["$plugins_succeeded"],
            json!([format!("tagger ({tagger_id})"), format!("dropper ({dropper_id})")])
        );
    }
    let b = rows(&ingest, team_b);
    assert_eq!(b.iter().map(|r| r["event"].as_str().unwrap()).collect::<Vec<_>>(), vec!["drop me", "keep"]);
    assert!(b
        .iter()
        .all(|r| r["properties"].get("tag").is_none() && r["properties"].get("$plugins_succeeded").is_none()));

    // Hot reload: a new setting changes the output of the running ingest.
    let out = db.run(&["plugins", "configure", &tagger_id.to_string(), "--config", "tag=v2"]);
    assert!(out.contains(r#""tag":"v2""#), "{out}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    loop {
        n += 1;
        let name = format!("probe {n}");
        send(&cap, &token_a, &[(&name, "a1")]);
        let sql =
            format!("SELECT properties FROM {} WHERE event = '{name}' AND team_id = {team_a}", ingest.table("events"));
        let got = wait_for_rows(&sql, 1, Duration::from_secs(10));
        let props: Value = serde_json::from_str(got[0]["properties"].as_str().unwrap()).unwrap();
        if props["tag"] == "v2" {
            break;
        }
        assert!(Instant::now() < deadline, "the new configuration never took effect");
        std::thread::sleep(Duration::from_millis(200));
    }

    let metrics = ingest.metrics();
    for m in [
        format!("ingest_plugin_calls_total{{plugin_config=\"{tagger_id}\"}}"),
        format!("ingest_plugin_batch_duration_seconds_count{{plugin_config=\"{tagger_id}\"}}"),
        "ingest_events_dropped_total{cause=\"plugin\"} 1".to_string(),
    ] {
        assert!(metrics.contains(&m), "{m} missing:\n{metrics}");
    }

    // The operator sees the instances and their log lines.
    let listed = db.run(&["plugins", "list", "--team", &team_a.to_string()]);
    assert!(listed.contains("tagger 1.0.0") && listed.contains("healthy"), "{listed}");
    let mut env = db.env();
    env.push(("CLICKHOUSE_DATABASE", ingest.database.as_str()));
    let logs = ingest_command(&["plugins", "logs", &tagger_id.to_string()], &env);
    assert!(logs.contains("tagging keep"), "{logs}");
}

#[test]
fn a_plugin_that_keeps_failing_is_disabled_and_events_still_flow() {
    let db = Database::create("plugins_failing");
    db.run(&["migrate"]);
    let (team, token) = db.team("failing plugin");
    let broken = plugin_dir("broken", json!({"name": "broken"}), BROKEN);
    let broken_id = install(&db, &broken, team, &[]);

    let cap = Capture::start("plugins-failing", &[]);
    let mut env = db.env();
    env.extend([("PLUGIN_DEGRADE_AFTER_FAILURES", "2"), ("PLUGIN_DISABLE_AFTER_FAILURES", "4")]);
    let ingest = Ingest::start("plugins_failing", &cap.topics.main, &env);

    send(&cap, &token, &[("e1", "d"), ("e2", "d")]);
    let got = wait_for_rows(&format!("SELECT uuid FROM {} FINAL", ingest.table("events")), 2, Duration::from_secs(30));
    assert_eq!(got.len(), 2, "{}", ingest.log_text());
    let r = rows(&ingest, team);
    assert_eq!(r[0]["properties"]["$plugins_failed"], json!([format!("broken ({broken_id})")]));
    send(&cap, &token, &[("e3", "d"), ("e4", "d"), ("e5", "d")]);
    wait_for_rows(&format!("SELECT uuid FROM {} FINAL", ingest.table("events")), 5, Duration::from_secs(30));

    let listed = db.run(&["plugins", "list"]);
    assert!(listed.contains("disabled (") && listed.contains("calls failed"), "{listed}");
    // Disabled: later events no longer go through it.
    send(&cap, &token, &[("e6", "d")]);
    let last = wait_for_rows(
        &format!("SELECT properties FROM {} WHERE event = 'e6'", ingest.table("events")),
        1,
        Duration::from_secs(30),
    );
    let props: Value = serde_json::from_str(last[0]["properties"].as_str().unwrap()).unwrap();
    assert!(props.get("$plugins_failed").is_none(), "{props}");
    let metrics = ingest.metrics();
    let errors =
        format!("ingest_plugin_errors_total{{plugin_config=\"{broken_id}\",kind=\"error\",hook=\"process_event\"}}");
    assert!(metrics.contains(&errors), "{errors} missing:\n{metrics}");
    // The operator turns it back on.
    assert!(db.run(&["plugins", "enable", &broken_id.to_string()]).contains("enabled"));
    assert!(db.run(&["plugins", "list"]).contains("healthy"));
}

/// A local HTTP receiver that records request heads and bodies and answers 200.
fn receiver() -> (u16, Received) {
    slow_receiver(Duration::ZERO)
}

/// [`receiver`] that takes `delay` to answer each request.
fn slow_receiver(delay: Duration) -> (u16, Received) {
    let r = Receiver::answering(|_| Answer::Status(200), delay);
    (r.port, r.got.clone())
}

#[test]
fn on_event_webhook_delivers_written_events_to_a_receiver() {
    let db = Database::create("plugins_webhook");
    db.run(&["migrate"]);
    let (team, token) = db.team("exports");
    let (_, other_token) = db.team("no exports");
    let (port, received) = receiver();
    let webhook = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/webhook");
    let url = format!("url=http://127.0.0.1:{port}/hook");
    install(&db, &webhook, team, &["--config", &url, "--config", "secret=s3cret", "--config", "events=purchase"]);

    let cap = Capture::start("plugins-webhook", &[]);
    let mut env = db.env();
    env.push(("PLUGIN_HTTP_ALLOW_PRIVATE", "true"));
    let ingest = Ingest::start("plugins_webhook", &cap.topics.main, &env);
    let exports = ingest.exports_lane("exports", &[]);
    send(&cap, &token, &[("purchase", "buyer"), ("$pageview", "buyer"), ("purchase", "buyer-2")]);
    send(&cap, &other_token, &[("purchase", "elsewhere")]);

    let deadline = Instant::now() + Duration::from_secs(30);
    while received.lock().unwrap().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "webhook got {:?}\n{}\n{}",
            received.lock().unwrap(),
            ingest.log_text(),
            exports.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500)); // nothing else should arrive
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "only this team's purchases: {got:?}");
    let written = rows(&ingest, team);
    for (head, body) in &got {
        assert!(head.starts_with("POST /hook"), "{head}");
        assert!(head.to_ascii_lowercase().contains("x-sluice-signature: sha256="), "{head}");
        let event: Value = serde_json::from_str(body).unwrap();
        assert_eq!(event["event"], "purchase");
        assert_eq!(event["team_id"], team);
        assert!(event["properties"].is_object(), "{event}");
        assert!(written.iter().any(|r| r["event"] == "purchase"), "sent after it was written");
    }
}

const TICKER: &str = r#"
return {
    every_minute = function(ctx, info)
        ctx.http.fetch(ctx.config.url, {method = "POST", body = tostring(info.period_start_ms)})
    end,
}
"#;

#[test]
fn a_schedule_runs_once_per_period_with_two_ingest_processes() {
    let db = Database::create("plugins_schedule");
    db.run(&["migrate"]);
    let (team, _) = db.team("scheduled");
    let (port, received) = receiver();
    let ticker = plugin_dir(
        "ticker",
        json!({"name": "ticker", "config": [{"key": "url", "type": "string", "required": true}],
               "http": {"allow": ["$config:url"]}, "schedule": ["every_minute"]}),
        TICKER,
    );
    install(&db, &ticker, team, &["--config", &format!("url=http://127.0.0.1:{port}/tick")]);

    let cap = Capture::start("plugins-schedule", &[]);
    let prefix = format!("{}/", unique("schedule"));
    let mut env = db.env();
    env.extend([
        ("PLUGIN_HTTP_ALLOW_PRIVATE", "true"),
        ("PLUGIN_SCHEDULE_MINUTE_MS", "1000"),
        ("REDIS_KEY_PREFIX", prefix.as_str()),
    ]);
    let first = Ingest::start("plugins_schedule_1", &cap.topics.main, &env);
    let second = Ingest::start("plugins_schedule_2", &cap.topics.main, &env);

    let deadline = Instant::now() + Duration::from_secs(40);
    while received.lock().unwrap().len() < 5 {
        assert!(
            Instant::now() < deadline,
            "{} runs\n{}\n{}",
            received.lock().unwrap().len(),
            first.log_text(),
            second.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for ingest in [&first, &second] {
        assert!(ingest.log_text().contains("plugin loaded"), "both processes hold the schedule");
    }
    let mut periods: Vec<u64> =
        received.lock().unwrap().iter().map(|(_, body)| body.parse().expect("period start")).collect();
    let runs = periods.len();
    periods.sort_unstable();
    periods.dedup();
    assert_eq!(periods.len(), runs, "a period ran twice: {:?}", received.lock().unwrap());
    assert!(periods.windows(2).all(|w| w[1] - w[0] >= 1000), "{periods:?}");
}

use sluice_tests::COUNTER_PLUGIN as COUNTER;

/// `ctx.cache` is Redis and `ctx.storage` Postgres, each namespaced by plugin config:
/// the same plugin for two teams counts apart.
#[test]
fn cache_and_storage_are_real_and_kept_apart_per_plugin_config() {
    let db = Database::create("plugins_state");
    db.run(&["migrate"]);
    let (team_a, token_a) = db.team("a");
    let (team_b, token_b) = db.team("b");
    let counter = plugin_dir("counter", json!({"name": "counter"}), COUNTER);
    let id_a = install(&db, &counter, team_a, &[]);
    let id_b = install(&db, &counter, team_b, &[]);

    let cap = Capture::start("plugins-state", &[]);
    let prefix = format!("{}/", unique("state"));
    let mut env = db.env();
    env.push(("REDIS_KEY_PREFIX", prefix.as_str()));
    let ingest = Ingest::start("plugins_state", &cap.topics.main, &env);
    send(&cap, &token_a, &[("e1", "d"), ("e2", "d"), ("e3", "d")]);
    send(&cap, &token_b, &[("only", "d")]);
    wait_for_rows(&format!("SELECT uuid FROM {} FINAL", ingest.table("events")), 4, Duration::from_secs(30));

    let mut seen_a: Vec<i64> =
        rows(&ingest, team_a).iter().map(|r| r["properties"]["seen"].as_i64().unwrap()).collect();
    seen_a.sort_unstable();
    assert_eq!(seen_a, vec![1, 2, 3], "{}", ingest.log_text());
    assert_eq!(rows(&ingest, team_b)[0]["properties"]["seen"], 1, "team b counts on its own");

    let client = redis::Client::open(sluice_tests::redis_url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let key = format!("{prefix}plugin-cache/plugin-config/{id_a}/seen");
    let n: i64 = redis::cmd("GET").arg(&key).query(&mut conn).unwrap();
    assert_eq!(n, 3, "{key}");

    let url = db.url.clone();
    let stored: Vec<(i64, String)> = sluice_tests::block_on(async move {
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        sqlx::query_as(
            "SELECT plugin_config_id, value FROM plugin_storage WHERE key = 'last' ORDER BY plugin_config_id",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
    });
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert_eq!(stored[1], (id_b, "\"only\"".to_string()));
    assert_eq!(stored[0].0, id_a);
}

/// The shipped geoip plugin through the pipeline, on the test MaxMind database.
#[test]
fn geoip_enriches_events_and_persons() {
    let mmdb = std::env::temp_dir().join(format!("{}.mmdb", unique("geoip")));
    let status = std::process::Command::new(sluice_tests::venv_python())
        .arg(sluice_tests::repo_root().join("tests/geoip/make_mmdb.py"))
        .arg(&mmdb)
        .status()
        .expect("the test virtualenv (./dev test creates it)");
    assert!(status.success());
    let db = Database::create("plugins_geoip");
    db.run(&["migrate"]);
    let (team, token) = db.team("geo");
    let geoip = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/geoip");
    install(&db, &geoip, team, &[]);

    let cap = Capture::start("plugins-geoip", &[]);
    let mut env = db.env();
    env.push(("GEOIP_DATABASE_PATH", mmdb.to_str().unwrap()));
    let ingest = Ingest::start("plugins_geoip", &cap.topics.main, &env);
    let body = json!({"api_key": token, "batch": [{"event": "visit", "distinct_id": "traveller", "properties": {"$ip": "81.2.69.160"}}]});
    assert_eq!(cap.post("/batch", "application/json", body.to_string()).status, 200);
    wait_for_rows(&format!("SELECT uuid FROM {} FINAL", ingest.table("events")), 1, Duration::from_secs(30));
    let row = &rows(&ingest, team)[0];
    assert_eq!(row["properties"]["$geoip_city_name"], "London", "{row}\n{}", ingest.log_text());
    assert_eq!(row["properties"]["$geoip_country_code"], "GB");
    let url = db.url.clone();
    let person: Value = sluice_tests::block_on(async move {
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        sqlx::query_scalar::<_, sqlx::types::Json<Value>>("SELECT properties FROM persons")
            .fetch_one(&pool)
            .await
            .unwrap()
            .0
    });
    assert_eq!(person["$geoip_city_name"], "London", "{person}");
    assert_eq!(person["$initial_geoip_country_code"], "GB", "{person}");
}

const SLOW_ON_CUE: &str = r#"
return {
    process_event = function(event, ctx)
        if event.event == "slow" then
            ctx.cache.set("started", 1)
            local t = ctx.time.now_ms()
            while ctx.time.now_ms() - t < 5000 do end
        end
        return event
    end,
}
"#;

/// Pids of the processes `parent` started (read from /proc, never by name).
fn children(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // pid (comm) state ppid …: comm may hold spaces, so read after its ')'.
            stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                == Some(parent)
        })
        .collect()
}

/// A plugin worker dying mid-batch (as a Luau crash would kill it) costs only the
/// worker: ingest goes on, the batch is retried without the plugin that was running,
/// which is struck, and the team's other plugins still run.
#[test]
fn a_dying_plugin_worker_does_not_take_ingest_down() {
    let db = Database::create("plugins_crash");
    db.run(&["migrate"]);
    let (team, token) = db.team("crashy");
    let slow = plugin_dir("slow", json!({"name": "slow"}), SLOW_ON_CUE);
    let slow_id = install(&db, &slow, team, &[]);
    let tagger = plugin_dir(
        "tagger",
        json!({"name": "tagger", "config": [{"key": "tag", "type": "string", "default": "t"}]}),
        TAGGER,
    );
    install(&db, &tagger, team, &[]);

    let cap = Capture::start("plugins-crash", &[]);
    let prefix = format!("{}/", unique("crash"));
    let mut env = db.env();
    env.extend([
        ("REDIS_KEY_PREFIX", prefix.as_str()),
        ("PLUGIN_PROCESS_EVENT_TIMEOUT_MS", "20000"),
        ("PLUGIN_PROCESS_EVENT_TICKS", "100000000000"),
        ("PLUGIN_WORKERS", "1"),
    ]);
    let mut ingest = Ingest::start("plugins_crash", &cap.topics.main, &env);
    send(&cap, &token, &[("slow", "d")]);

    // The plugin says when it is inside its long call; then its worker is killed.
    let client = redis::Client::open(sluice_tests::redis_url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let cue = format!("{prefix}plugin-cache/plugin-config/{slow_id}/started");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !redis::cmd("EXISTS").arg(&cue).query::<bool>(&mut conn).unwrap() {
        assert!(Instant::now() < deadline, "the slow plugin never started\n{}", ingest.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    let workers = children(ingest.child.id());
    assert_eq!(workers.len(), 1, "one plugin worker: {workers:?}");
    assert!(std::process::Command::new("kill").args(["-KILL", &workers[0].to_string()]).status().unwrap().success());

    let got = wait_for_rows(&format!("SELECT uuid FROM {} FINAL", ingest.table("events")), 1, Duration::from_secs(30));
    assert_eq!(got.len(), 1, "{}", ingest.log_text());
    let row = &rows(&ingest, team)[0];
    assert_eq!(row["properties"]["$plugins_failed"], json!([format!("slow ({slow_id})")]), "{row}");
    assert_eq!(row["properties"]["tag"], "t", "the other plugin still ran");
    assert!(ingest.child.try_wait().unwrap().is_none(), "ingest is alive");
    assert!(ingest.log_text().contains("plugin worker failed; restarting it"));

    // A new worker serves the next batch.
    send(&cap, &token, &[("after", "d")]);
    let after = wait_for_rows(
        &format!("SELECT properties FROM {} WHERE event = 'after'", ingest.table("events")),
        1,
        Duration::from_secs(30),
    );
    let props: Value = serde_json::from_str(after[0]["properties"].as_str().unwrap()).unwrap();
    assert_eq!(props["tag"], "t");
}

const EXPORTER: &str = r#"
return {
    on_event = function(event, ctx)
        ctx.http.fetch(ctx.config.url, {method = "POST", body = event.event})
    end,
    teardown = function(ctx)
        ctx.http.fetch(ctx.config.url, {method = "POST", body = "teardown"})
    end,
}
"#;

fn bodies(received: &Received) -> Vec<String> {
    received.lock().unwrap().iter().map(|(_, body)| body.clone()).collect()
}

/// A team whose exporter plugin posts each written event to a receiver that takes
/// `delay` to answer, twelve events (`e0`..`e11`) written in one batch, and the exports
/// lane (with `extra` settings) delivering them.
struct Exporting {
    // Dropped in this order: the processes before the database they use.
    exports: Ingest,
    _ingest: Ingest,
    _cap: Capture,
    received: Received,
    _db: Database,
}

fn exporting(test: &str, delay: Duration, extra: &[(&str, &str)]) -> Exporting {
    let db = Database::create(test);
    db.run(&["migrate"]);
    let (team, token) = db.team(test);
    let (port, received) = slow_receiver(delay);
    let manifest = json!({"name": "exporter", "config": [{"key": "url", "type": "string", "required": true}],
                          "http": {"allow": ["$config:url"]}});
    let exporter = plugin_dir("exporter", manifest, EXPORTER);
    install(&db, &exporter, team, &["--config", &format!("url=http://127.0.0.1:{port}/hook")]);
    let cap = Capture::start(test, &[]);
    let mut env = db.env();
    env.push(("PLUGIN_HTTP_ALLOW_PRIVATE", "true"));
    let ingest = Ingest::start(test, &cap.topics.main, &env);
    let exports = ingest.exports_lane("exports", extra);
    let names: Vec<String> = (0..12).map(|i| format!("e{i}")).collect();
    let batch: Vec<(&str, &str)> = names.iter().map(|e| (e.as_str(), "d")).collect();
    send(&cap, &token, &batch);
    wait_for_rows(&format!("SELECT uuid FROM {} FINAL", ingest.table("events")), 12, Duration::from_secs(30));
    // Wait for the first export, so SIGTERM finds the rest in flight.
    let deadline = Instant::now() + Duration::from_secs(30);
    while bodies(&received).is_empty() {
        assert!(Instant::now() < deadline, "nothing exported\n{}", exports.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    Exporting { exports, _ingest: ingest, _cap: cap, received, _db: db }
}

fn exported(received: &Received) -> Vec<String> {
    let mut got: Vec<String> = bodies(received).into_iter().filter(|b| b.starts_with('e')).collect();
    got.sort();
    got
}

/// SIGTERM with exports in flight: they are finished and committed before the process
/// exits (within the drain timeout), every plugin's `teardown` runs, and the lane started
/// again has nothing left to send.
#[test]
fn sigterm_finishes_exports_in_flight_commits_them_and_runs_teardown() {
    // Each export takes 250 ms to be answered, so most of them are still in flight when
    // SIGTERM arrives.
    let mut run = exporting("plugins_drain", Duration::from_millis(250), &[]);
    let before = exported(&run.received).len();
    let status = run.exports.terminate(Duration::from_secs(30)).expect("stops within the drain timeout");
    assert!(status.success(), "{status:?}\n{}", run.exports.log_text());

    let got = exported(&run.received);
    assert!(before < 12, "the exports were in flight at SIGTERM (else this test shows nothing): {before}");
    let all: Vec<String> = {
        let mut v: Vec<String> = (0..12).map(|i| format!("e{i}")).collect();
        v.sort();
        v
    };
    assert_eq!(got, all, "each exported once before exit\n{}", run.exports.log_text());
    assert!(bodies(&run.received).iter().any(|b| b == "teardown"), "teardown ran\n{}", run.exports.log_text());

    run.exports.restart();
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(exported(&run.received), all, "committed: the next owner sends nothing again");
}

/// With a drain timeout too short for the exports in flight, the process exits in time
/// and leaves them uncommitted: the lane started again delivers every one (at least
/// once), nothing is dropped.
#[test]
fn exports_cut_at_the_drain_deadline_are_delivered_by_the_next_owner() {
    let mut run =
        exporting("plugins_drain_short", Duration::from_millis(1_000), &[("SHUTDOWN_DRAIN_TIMEOUT_MS", "600")]);
    let started = Instant::now();
    let status = run.exports.terminate(Duration::from_secs(30)).expect("stops");
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "stopped near its drain deadline");
    let cut = exported(&run.received).len();
    assert!(cut < 12, "some were cut (else this test shows nothing): {cut}");

    run.exports.restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut got = exported(&run.received);
        got.dedup();
        if got.len() == 12 {
            break;
        }
        assert!(Instant::now() < deadline, "{got:?}\n{}", run.exports.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A filter of personal data that declares itself `required`.
const PII_FILTER: &str = r#"
return { process_event = function(event)
    if event.event == "poison" then error("cannot filter this one") end
    event.properties.email = nil
    return event
end }
"#;

/// Events as deep as capture accepts go through a team's chain like any other (they
/// once killed the plugin worker and got the filter disabled, and rows were stored with
/// the e-mail it should have removed); an event a required plugin cannot process is
/// dead-lettered, never stored unfiltered; and once it is disabled, so is every event of
/// the team until it is back.
#[test]
fn a_required_plugin_is_never_skipped_and_deep_events_do_not_disable_it() {
    let db = Database::create("plugins_required");
    db.run(&["migrate"]);
    let (team, token) = db.team("required plugin");
    let dir = plugin_dir("pii", json!({"name": "pii", "required": true}), PII_FILTER);
    let id = install(&db, &dir, team, &[]);
    let cap = Capture::start("plugins-required", &[]);
    let mut env = db.env();
    env.extend([("PLUGIN_MAX_STRIKES", "2"), ("PLUGIN_DISABLE_AFTER_FAILURES", "3")]);
    let ingest = Ingest::start("plugins_required", &cap.topics.main, &env);

    // 122 levels inside properties: 126 in the request, the most capture takes.
    let mut deep = json!("leaf");
    for _ in 0..122 {
        deep = json!([deep]);
    }
    let mut batch: Vec<Value> = (0..3)
        .map(|i| json!({"event": "deep", "distinct_id": format!("d{i}"), "properties": {"email": "a@b.c", "deep": deep}}))
        .collect();
    batch.push(json!({"event": "plain", "distinct_id": "p", "properties": {"email": "a@b.c"}}));
    batch.push(json!({"event": "poison", "distinct_id": "p", "properties": {"email": "a@b.c"}}));
    let r = cap.post("/batch", "application/json", json!({"api_key": token, "batch": batch}).to_string());
    assert_eq!(r.status, 200, "{}", r.text);

    let stored =
        wait_for_rows(&format!("SELECT uuid FROM {} FINAL", ingest.table("events")), 4, Duration::from_secs(40));
    assert_eq!(stored.len(), 4, "{}", ingest.log_text());
    for row in rows(&ingest, team) {
        assert!(row["properties"].get("email").is_none(), "stored unfiltered: {row}");
        assert_eq!(row["properties"]["$plugins_succeeded"], json!([format!("pii ({id})")]), "{row}");
    }
    let dead = sluice_tests::read_topic(&cap.kafka, &ingest.dlq_topic, 1, Duration::from_secs(20));
    assert_eq!(dead.len(), 1, "the poison event only");
    assert_eq!(dead[0].data()["event"], "poison");
    assert_eq!(dead[0].headers.get("dlq_error_class").map(String::as_str), Some("required_plugin"));
    assert!(dead[0].headers["dlq_error"].contains("cannot filter this one"), "{:?}", dead[0].headers);
    assert!(!db.run(&["plugins", "list"]).contains("disabled ("), "deep events struck nothing");

    // Failing every call disables it; from then on the team's events wait in the
    // dead-letter topic rather than being stored with the e-mail.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !db.run(&["plugins", "list"]).contains("disabled (") {
        assert!(Instant::now() < deadline, "not disabled: {}", ingest.log_text());
        send(&cap, &token, &[("poison", "p")]);
        std::thread::sleep(Duration::from_millis(500));
    }
    let r = cap.post(
        "/batch",
        "application/json",
        json!({"api_key": token, "batch": [{"event": "after", "distinct_id": "p", "properties": {"email": "a@b.c"}}]})
            .to_string(),
    );
    assert_eq!(r.status, 200);
    let dead = sluice_tests::read_topic(&cap.kafka, &ingest.dlq_topic, 5, Duration::from_secs(30));
    let after = dead.iter().find(|d| d.data()["event"] == "after").expect("the event after disabling is dead-lettered");
    assert!(after.headers["dlq_error"].contains("is disabled"), "{:?}", after.headers);
    let stored = clickhouse_rows(&format!("SELECT event FROM {} WHERE event = 'after'", ingest.table("events")));
    assert!(stored.is_empty(), "stored without its required plugin");
}

/// The same quota checks against a plugin configuration's store on each real backend.
async fn quota_holds(a: &sluice_plugin_runtime::KeyValue, b: &sluice_plugin_runtime::KeyValue, lists: bool) {
    use sluice_plugin_runtime::KvError;
    for k in ["k1", "k2", "k3"] {
        a.set(k, "v", None).await.unwrap();
    }
    assert!(matches!(a.set("k4", "v", None).await, Err(KvError::Quota(_))), "a fourth key");
    a.set("k1", "replaced", None).await.unwrap();
    assert!(matches!(a.set("k2", &"x".repeat(2_000), None).await, Err(KvError::Quota(_))), "over the bytes");
    assert!(matches!(a.set(&"k".repeat(100), "v", None).await, Err(KvError::Quota(_))), "key too long");
    b.set("k4", "v", None).await.unwrap();
    a.del("k1").await.unwrap();
    a.set("k4", "v", None).await.unwrap();
    assert_eq!(a.get("k4").await.unwrap().as_deref(), Some("v"));
    if lists {
        // Expired keys stop counting; lists count their items.
        a.set("k2", "v", Some(Duration::from_millis(20))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
        a.set("k5", "v", None).await.unwrap();
        a.del("k5").await.unwrap();
        for _ in 0..10 {
            b.lpush("l", &"x".repeat(99)).await.unwrap();
        }
        assert!(matches!(b.lpush("l", &"x".repeat(99)).await, Err(KvError::Quota(_))));
        assert_eq!(b.llen("l").await.unwrap(), 10);
    }
}

#[test]
fn plugin_store_quotas_hold_on_redis_and_postgres() {
    use sluice_plugin_runtime::Quota;
    use sluice_plugin_runtime::{KeyValue, PluginConfigId};
    let quota = Quota { keys: 3, bytes: 1_000, key_bytes: 64 };
    let db = Database::create("plugins_quota");
    db.run(&["migrate"]);
    let (team, _) = db.team("quota");
    let first = install(&db, &plugin_dir("q1", json!({"name": "q1"}), DROPPER), team, &[]);
    let second = install(&db, &plugin_dir("q2", json!({"name": "q2"}), DROPPER), team, &[]);
    sluice_tests::block_on(async {
        let client = redis::Client::open(sluice_tests::redis_url()).unwrap();
        let redis = redis::aio::ConnectionManager::new(client).await.unwrap();
        let cache = KeyValue::redis(redis, &format!("{}/", unique("quota")));
        quota_holds(
            &cache.for_plugin_config(PluginConfigId(1), quota),
            &cache.for_plugin_config(PluginConfigId(2), quota),
            true,
        )
        .await;

        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        let storage = KeyValue::postgres(pool);
        quota_holds(
            &storage.for_plugin_config(PluginConfigId(first), quota),
            &storage.for_plugin_config(PluginConfigId(second), quota),
            false,
        )
        .await;
    });
}

/// Maps event names with a table uploaded as an attachment.
const MAPPER: &str = r#"
local plugin = {}
function plugin.setup(ctx)
    ctx.global.map = ctx.json.decode(ctx.attachments.mapping.contents)
end
function plugin.process_event(event, ctx)
    event.properties.mapped = ctx.global.map[event.event]
    event.properties.file = ctx.attachments.mapping.file_name
    event.properties.content_type = ctx.attachments.mapping.content_type
    return event
end
return plugin
"#;

/// `plugins attach` uploads a file the plugin reads as `ctx.attachments.<key>`; a new
/// upload under the same key reloads the plugin with it, no restart; `plugins list`
/// names attachments and never shows their contents; a file over the limit or a bad key
/// is refused with the reason.
#[test]
fn attachments_are_read_by_the_plugin_and_reloaded_when_replaced() {
    let db = Database::create("plugins_attach");
    db.run(&["migrate"]);
    let (team, token) = db.team("attaching");
    let id = install(&db, &plugin_dir("mapper", json!({"name": "mapper"}), MAPPER), team, &[]);
    let dir = std::env::temp_dir().join(unique("attachments"));
    std::fs::create_dir_all(&dir).unwrap();
    let (first, second) = (dir.join("first.json"), dir.join("second.json"));
    std::fs::write(&first, r#"{"signup": "Signed Up (1)", "secret": "s3cr3t-value"}"#).unwrap();
    std::fs::write(&second, r#"{"signup": "Signed Up (2)"}"#).unwrap();
    let out = db.run(&["plugins", "attach", &id.to_string(), "mapping", first.to_str().unwrap()]);
    assert!(out.contains("attached first.json as ctx.attachments.mapping (application/json"), "{out}");

    let cap = Capture::start("plugins-attach", &[]);
    let ingest = Ingest::start("plugins_attach", &cap.topics.main, &db.env());
    // The event of one distinct id, not the n-th by timestamp: 18.16's timestamps are
    // whole seconds, so two events a reload apart can tie and come back in either order.
    let mapped = |distinct_id: &str| {
        let sql = format!(
            "SELECT properties FROM {} FINAL WHERE event = 'signup' AND distinct_id = '{distinct_id}'",
            ingest.table("events")
        );
        let rows = wait_for_rows(&sql, 1, Duration::from_secs(30));
        let props: Value = serde_json::from_str(rows[0]["properties"].as_str().unwrap()).unwrap();
        props
    };
    send(&cap, &token, &[("signup", "a")]);
    let props = mapped("a");
    assert_eq!(props["mapped"], "Signed Up (1)", "{props}\n{}", ingest.log_text());
    assert_eq!(
        (props["file"].as_str(), props["content_type"].as_str()),
        (Some("first.json"), Some("application/json"))
    );

    let loads = |log: &str| log.matches("plugin loaded").count();
    let before = loads(&ingest.log_text());
    db.run(&["plugins", "attach", &id.to_string(), "mapping", second.to_str().unwrap()]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while loads(&ingest.log_text()) == before {
        assert!(Instant::now() < deadline, "not reloaded\n{}", ingest.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    send(&cap, &token, &[("signup", "b")]);
    assert_eq!(mapped("b")["mapped"], "Signed Up (2)");

    let listed = db.run(&["plugins", "list"]);
    assert!(listed.contains("attachments: mapping=second.json (27 bytes)"), "{listed}");
    assert!(!listed.contains("Signed Up"), "contents are not listed: {listed}");

    let big = dir.join("big.csv");
    std::fs::write(&big, vec![b'x'; 2048]).unwrap();
    let refused = |args: &[&str]| {
        let out = std::process::Command::new(sluice_tests::bin_path("sluice-ingest"))
            .args(args)
            .envs(db.env())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} was refused");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let id_text = id.to_string();
    let text = refused(&["plugins", "attach", &id_text, "rates", big.to_str().unwrap(), "--max-bytes", "1024"]);
    assert!(text.contains("over the 1024 byte limit"), "{text}");
    let text = refused(&["plugins", "attach", &id_text, "a-b", first.to_str().unwrap()]);
    assert!(text.contains("use 1 to 64 letters, digits or _"), "{text}");
    let removed = db.run(&["plugins", "detach", &id.to_string(), "mapping"]);
    assert!(removed.contains("removed attachment mapping"), "{removed}");
}
