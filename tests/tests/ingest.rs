//! Capture and ingest together, against the real broker, Postgres and ClickHouse:
//! events sent by real SDKs become rows; clock skew and future timestamps are handled;
//! what cannot be processed is dead-lettered; a `kill -9` loses and duplicates nothing.

use std::collections::HashSet;
use std::time::Duration;

use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::json;
use sluice_tests::{create_team, unique, wait_for_rows, Capture, Ingest, Sdk};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// ClickHouse 18.16 prints DateTime as `YYYY-MM-DD hh:mm:ss` in the server's zone (UTC here).
fn parse_ch_time(s: &str) -> OffsetDateTime {
    let f = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::PrimitiveDateTime::parse(&s[..19], f).expect("clickhouse time").assume_utc()
}

#[test]
fn posthog_python_events_become_rows_with_their_team_and_person() {
    sdk_events_become_rows(Sdk::Python);
}

#[test]
fn posthog_node_events_become_rows_with_their_team_and_person() {
    sdk_events_become_rows(Sdk::Node);
}

fn sdk_events_become_rows(sdk: Sdk) {
    let cap = Capture::start("ingest-sdk", &[]);
    let ingest = Ingest::start("ingest_sdk", &cap.topics.main, &[]);
    let token = create_team(&unique("sdk team"));
    let run = unique("run");
    let out = sdk.send_command(&cap.url, &token, &run, true).output().expect("sdk client");
    assert!(out.status.success(), "{sdk:?}: {}", String::from_utf8_lossy(&out.stderr));

    let sql = format!(
        "SELECT event, team_id, distinct_id, person_id, properties, timestamp FROM {} FINAL",
        ingest.table("events")
    );
    let rows = wait_for_rows(&sql, 5, Duration::from_secs(30));
    assert_eq!(rows.len(), 5, "{rows:#?}\ningest log:\n{}", ingest.log_text());
    let team_id: i64 = rows[0]["team_id"].as_str().expect("Int64 as text").parse().unwrap();
    let events: HashSet<&str> = rows.iter().map(|r| r["event"].as_str().unwrap()).collect();
    assert_eq!(events, HashSet::from(["sdk test event", "$identify", "$create_alias", "$groupidentify", "grouped"]));
    let now = OffsetDateTime::now_utc();
    // anon → $identify → alias: one person throughout, created by whichever of the two
    // ids ingest saw first (the two ids' events are on different partitions).
    let person = rows[0]["person_id"].as_str().unwrap();
    let candidates =
        [format!("anon-{run}"), format!("user-{run}")].map(|d| sluice_schema::person_uuid(team_id, &d).to_string());
    assert!(candidates.contains(&person.to_string()), "{person} is the uuid of one of the two ids");
    for r in &rows {
        assert_eq!(r["team_id"].as_str().unwrap().parse::<i64>().unwrap(), team_id, "one team");
        assert_eq!(r["person_id"], person, "{} is on the same person", r["event"]);
        let ts = parse_ch_time(r["timestamp"].as_str().unwrap());
        assert!((now - ts).abs() < time::Duration::minutes(2), "timestamp {ts} near now {now}");
    }
    // Groups: the first group type of the team gets index 0, and $groupidentify set its properties.
    let grouped = wait_for_rows(
        &format!("SELECT `$group_0` AS g FROM {} WHERE event = 'grouped'", ingest.table("events")),
        1,
        Duration::from_secs(5),
    );
    assert_eq!(grouped[0]["g"], format!("acme-{run}"));
    let groups = wait_for_rows(
        &format!("SELECT group_type_index, group_key, group_properties FROM {} FINAL", ingest.table("groups")),
        1,
        Duration::from_secs(5),
    );
    assert_eq!(groups.len(), 1, "{groups:?}");
    assert_eq!(groups[0]["group_key"], format!("acme-{run}"));
    assert_eq!(groups[0]["group_type_index"], 0);
    let group_props: serde_json::Value = serde_json::from_str(groups[0]["group_properties"].as_str().unwrap()).unwrap();
    assert_eq!(group_props["name"], "Acme");

    // The metrics the operator watches.
    ingest.wait_for_metrics(
        &[
            "ingest_events_consumed_total",
            "ingest_events_processed_total",
            "ingest_end_to_end_lag_seconds",
            "ingest_step_duration_seconds_count{step=\"persons\"",
            "ingest_person_writes_total",
            "ingest_clickhouse_rows_total",
            "ingest_consumer_lag_messages{",
        ],
        Duration::from_secs(15),
    );

    let first = rows.iter().find(|r| r["event"] == "sdk test event").unwrap();
    let props: serde_json::Value = serde_json::from_str(first["properties"].as_str().unwrap()).unwrap();
    assert_eq!(props["run"], run.as_str());
    assert_eq!(props["$ip"], "127.0.0.1");
    assert_eq!(props["$set_once"]["first_seen_run"], run.as_str());
}

#[test]
fn clock_skew_is_corrected_and_future_events_are_clamped_with_a_warning() {
    let cap = Capture::start("ingest-time", &[]);
    let ingest = Ingest::start("ingest_time", &cap.topics.main, &[]);
    let token = create_team(&unique("time team"));
    let now = OffsetDateTime::now_utc();
    let fmt = |t: OffsetDateTime| t.format(&Rfc3339).unwrap();
    // The client's clock is 2 h fast; its event happened 30 s before it sent the batch.
    let client_now = now + time::Duration::hours(2);
    let body = json!({"api_key": token, "sent_at": fmt(client_now), "batch": [
        {"event": "skewed", "distinct_id": "d", "timestamp": fmt(client_now - time::Duration::seconds(30))},
    ]});
    assert_eq!(cap.post("/batch", "application/json", body.to_string()).status, 200);
    // No sent_at and two days ahead: clamped to now.
    let body = json!({"api_key": token, "batch": [{"event": "future", "distinct_id": "d", "timestamp": fmt(now + time::Duration::days(2))}]});
    assert_eq!(cap.post("/batch", "application/json", body.to_string()).status, 200);

    let rows = wait_for_rows(
        &format!("SELECT event, timestamp FROM {} FINAL", ingest.table("events")),
        2,
        Duration::from_secs(30),
    );
    let at = |name: &str| {
        parse_ch_time(rows.iter().find(|r| r["event"] == name).expect(name)["timestamp"].as_str().unwrap())
    };
    let skewed = at("skewed");
    assert!(
        (skewed - (now - time::Duration::seconds(30))).abs() <= time::Duration::seconds(3),
        "skewed at {skewed}, now {now}"
    );
    assert!((at("future") - now).abs() <= time::Duration::seconds(3));
    let warnings = wait_for_rows(
        &format!(
            "SELECT type, details FROM {} WHERE type = 'event_timestamp_in_future'",
            ingest.table("ingestion_warnings")
        ),
        1,
        Duration::from_secs(10),
    );
    assert_eq!(warnings.len(), 1, "{warnings:?}");
}

#[test]
fn malformed_messages_are_dead_lettered_and_unknown_tokens_dropped() {
    let cap = Capture::start("ingest-dlq", &[]);
    let ingest = Ingest::start("ingest_dlq", &cap.topics.main, &[]);
    let token = create_team(&unique("dlq team"));

    let producer: BaseProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", cap.kafka.as_str()).create().unwrap();
    producer.send(BaseRecord::to(&cap.topics.main).key("k").payload("this is not json")).map_err(|(e, _)| e).unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();
    let unknown = json!({"api_key": unique("phc-nobody"), "batch": [{"event": "lost", "distinct_id": "d"}]});
    assert_eq!(cap.post("/batch", "application/json", unknown.to_string()).status, 200);
    let marker = json!({"api_key": token, "batch": [{"event": "marker", "distinct_id": "d"}]});
    assert_eq!(cap.post("/batch", "application/json", marker.to_string()).status, 200);

    let rows =
        wait_for_rows(&format!("SELECT event FROM {} FINAL", ingest.table("events")), 1, Duration::from_secs(30));
    assert_eq!(
        rows.iter().map(|r| r["event"].as_str().unwrap()).collect::<Vec<_>>(),
        vec!["marker"],
        "{}",
        ingest.log_text()
    );

    let dead = sluice_tests::read_topic(&cap.kafka, &ingest.dlq_topic, 1, Duration::from_secs(20));
    assert_eq!(dead.len(), 1, "only the malformed message");
    assert_eq!(dead[0].key.as_deref(), Some("k"));
    assert_eq!(dead[0].value, "this is not json", "the original message, unchanged");
    assert_eq!(dead[0].headers.get("dlq_stage").map(String::as_str), Some("parse"));
    assert_eq!(dead[0].headers.get("dlq_error_class").map(String::as_str), Some("invalid_message"));
    assert!(dead[0].headers.get("dlq_error").is_some_and(|e| !e.is_empty()));

    // The operator sees it...
    let dlq_env = [("KAFKA_DLQ_TOPIC", ingest.dlq_topic.as_str())];
    let listed = sluice_tests::ingest_command(&["dlq", "list"], &dlq_env);
    assert!(listed.starts_with("1 of 1 dead letters"), "{listed}");
    assert!(listed.contains("stage=parse") && listed.contains("class=invalid_message"), "{listed}");

    // ...and replays what a since-fixed failure dead-lettered: here a valid event of this
    // team, as an ingest with a bug would have left it.
    let team_id: i64 = rows_team_id(&ingest);
    let event = sluice_schema::CapturedEvent {
        uuid: uuid::Uuid::now_v7(),
        distinct_id: "d".into(),
        ip: "127.0.0.1".into(),
        data: json!({"event": "recovered", "distinct_id": "d", "properties": {}}).to_string(),
        now: OffsetDateTime::now_utc(),
        sent_at: None,
        token: token.clone(),
        event: "recovered".into(),
        timestamp: None,
        historical_migration: false,
    };
    let failed_at = OffsetDateTime::now_utc().format(&Rfc3339).unwrap();
    let headers = rdkafka::message::OwnedHeaders::new()
        .insert(rdkafka::message::Header { key: "dlq_stage", value: Some("persons") })
        .insert(rdkafka::message::Header { key: "dlq_team_id", value: Some(team_id.to_string().as_str()) })
        .insert(rdkafka::message::Header { key: "dlq_failed_at", value: Some(failed_at.as_str()) })
        .insert(rdkafka::message::Header { key: "dlq_source_topic", value: Some(cap.topics.main.as_str()) });
    let payload = serde_json::to_vec(&event).unwrap();
    producer
        .send(BaseRecord::to(&ingest.dlq_topic).key("t:d").payload(&payload).headers(headers))
        .map_err(|(e, _)| e)
        .unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();
    let team = team_id.to_string();
    let dry = sluice_tests::ingest_command(&["dlq", "replay", "--team", &team, "--since", "1h", "--dry-run"], &dlq_env);
    assert_eq!(dry.trim(), "dry run: would replay 1 of 2 dead letters");
    let replayed = sluice_tests::ingest_command(&["dlq", "replay", "--team", &team, "--since", "1h"], &dlq_env);
    assert_eq!(replayed.trim(), "replayed 1 of 2 dead letters");
    let rows = wait_for_rows(
        &format!("SELECT event FROM {} FINAL WHERE event = 'recovered'", ingest.table("events")),
        1,
        Duration::from_secs(30),
    );
    assert_eq!(rows.len(), 1, "the replayed event is ingested: {}", ingest.log_text());
    let bad = std::process::Command::new(sluice_tests::bin_path("sluice-ingest"))
        .args(["dlq", "list", "--since", "soon"])
        .output()
        .unwrap();
    assert!(!bad.status.success(), "bad input exits non-zero");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--since"), "and says what is wrong");
}

fn rows_team_id(ingest: &Ingest) -> i64 {
    let rows = sluice_tests::clickhouse_rows(&format!("SELECT team_id FROM {} LIMIT 1", ingest.table("events")));
    rows[0]["team_id"].as_str().unwrap().parse().unwrap()
}

#[test]
fn kill_9_in_the_middle_of_a_stream_gives_every_event_exactly_once() {
    let cap = Capture::start("ingest-kill", &[("OVERFLOW_ENABLED", "false")]);
    let mut ingest = Ingest::start(
        "ingest_kill",
        &cap.topics.main,
        &[("BATCH_MAX_EVENTS", "25"), ("KAFKA_SESSION_TIMEOUT_MS", "6000")],
    );
    let token = create_team(&unique("kill team"));
    let total = 600;
    for chunk in 0..(total / 50) {
        let batch: Vec<_> =
            (0..50).map(|i| json!({"event": "stream", "distinct_id": format!("u{}", (chunk * 50 + i) % 37)})).collect();
        assert_eq!(
            cap.post("/batch", "application/json", json!({"api_key": token, "batch": batch}).to_string()).status,
            200
        );
    }
    let events = ingest.table("events");
    let count = |final_: bool| -> usize {
        let sql = format!("SELECT count() AS n FROM {events} {}", if final_ { "FINAL" } else { "" });
        sluice_tests::clickhouse_rows(&sql)[0]["n"].as_str().unwrap().parse().unwrap()
    };
    let start = std::time::Instant::now();
    while count(false) < 100 {
        assert!(start.elapsed() < Duration::from_secs(30), "ingest did not start: {}", ingest.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    ingest.kill_and_restart();
    let start = std::time::Instant::now();
    while count(true) < total && start.elapsed() < Duration::from_secs(90) {
        std::thread::sleep(Duration::from_millis(250));
    }
    std::thread::sleep(Duration::from_secs(1));
    if count(true) != total {
        let landed: std::collections::HashSet<String> =
            sluice_tests::clickhouse_rows(&format!("SELECT toString(uuid) AS u FROM {events}"))
                .iter()
                .map(|r| r["u"].as_str().unwrap().to_string())
                .collect();
        let all = sluice_tests::read_topic(&cap.kafka, &cap.topics.main, total, Duration::from_secs(10));
        for r in &all {
            let u = r.value["uuid"].as_str().unwrap();
            if !landed.contains(u) {
                eprintln!("MISSING partition {} uuid {u}", r.partition);
            }
        }
    }
    assert_eq!(count(true), total, "every event exactly once (FINAL)");
    assert!(count(false) >= total);
}

#[test]
fn sigterm_finishes_the_batch_in_flight_and_commits_it() {
    let cap = Capture::start("ingest-term", &[("OVERFLOW_ENABLED", "false")]);
    let mut ingest = Ingest::start("ingest_term", &cap.topics.main, &[("BATCH_MAX_EVENTS", "20")]);
    let token = create_team(&unique("term team"));
    let total = 400;
    for chunk in 0..(total / 50) {
        let batch: Vec<_> =
            (0..50).map(|i| json!({"event": "term", "distinct_id": format!("u{}", chunk * 50 + i)})).collect();
        assert_eq!(
            cap.post("/batch", "application/json", json!({"api_key": token, "batch": batch}).to_string()).status,
            200
        );
    }
    let events = ingest.table("events");
    let count = || -> usize {
        sluice_tests::clickhouse_rows(&format!("SELECT count() AS n FROM {events}"))[0]["n"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    while count() < 60 {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::process::Command::new("kill").args(["-TERM", &ingest.child.id().to_string()]).status().unwrap();
    let status = ingest.child.wait().unwrap();
    assert!(status.success(), "clean exit after SIGTERM: {status:?}\n{}", ingest.log_text());
    assert!(ingest.log_text().contains("stopped after committing its last batch"));

    ingest.restart();
    let start = std::time::Instant::now();
    while count() < total && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(250));
    }
    std::thread::sleep(Duration::from_secs(1));
    // Without FINAL: a batch written but not committed before exit would show twice.
    assert_eq!(count(), total, "every event once, none written twice: {}", ingest.log_text());
}

/// The overflow and historical lanes are the same binary configured by `LANE`: each
/// consumes what capture routed to its topic, with its own consumer group and metrics.
#[test]
fn overflow_and_historical_lanes_ingest_what_capture_routed_to_them() {
    let token = create_team(&unique("lanes team"));
    let forced = format!("{token}:hot");
    let cap = Capture::start("lanes", &[("OVERFLOW_FORCED_KEYS", &forced)]);
    let overflow = Ingest::start("lane_overflow", &cap.topics.overflow, &[("LANE", "overflow")]);
    let historical = Ingest::start("lane_historical", &cap.topics.historical, &[("LANE", "historical")]);

    let hot = json!({"api_key": token, "batch": [{"event": "hot", "distinct_id": "hot"}, {"event": "hot", "distinct_id": "hot"}]});
    assert_eq!(cap.post("/batch", "application/json", hot.to_string()).status, 200);
    let old = json!({"api_key": token, "historical_migration": true, "batch": [
        {"event": "old", "distinct_id": "importer", "timestamp": "2024-03-01T10:00:00Z"},
        {"event": "old", "distinct_id": "importer", "timestamp": "2024-03-02T10:00:00Z"},
        {"event": "old", "distinct_id": "importer", "timestamp": "2024-03-03T10:00:00Z"},
    ]});
    assert_eq!(cap.post("/batch", "application/json", old.to_string()).status, 200);

    for (ingest, event, n) in [(&overflow, "hot", 2), (&historical, "old", 3)] {
        let sql = format!("SELECT event, timestamp FROM {} FINAL ORDER BY timestamp", ingest.table("events"));
        let rows = wait_for_rows(&sql, n, Duration::from_secs(30));
        assert_eq!(rows.len(), n, "{}", ingest.log_text());
        assert!(rows.iter().all(|r| r["event"] == event), "{rows:?}");
        let lane = if event == "hot" { "overflow" } else { "historical" };
        ingest.wait_for_metrics(
            &[&format!("ingest_events_processed_total{{lane=\"{lane}\"}} {n}")],
            Duration::from_secs(10),
        );
    }
    let old = sluice_tests::clickhouse_rows(&format!(
        "SELECT timestamp FROM {} FINAL ORDER BY timestamp",
        historical.table("events")
    ));
    assert_eq!(old[0]["timestamp"], "2024-03-01 10:00:00", "historical events keep their own time");
}
