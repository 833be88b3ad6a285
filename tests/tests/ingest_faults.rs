//! A dependency going away under ingest: the outcome is lag, then catch-up; nothing is
//! lost and nothing is dead-lettered. Each test reaches its dependency through a proxy
//! of its own, so cutting it disturbs no other test.

use std::time::Duration;

use serde_json::json;
use sluice_tests::{clickhouse_rows, create_team, read_topic, unique, wait_for_rows, Capture, Ingest, Proxy};

fn send(cap: &Capture, token: &str, tag: &str, n: usize) {
    let batch: Vec<_> = (0..n).map(|i| json!({"event": tag, "distinct_id": format!("{tag}-{i}")})).collect();
    assert_eq!(
        cap.post("/batch", "application/json", json!({"api_key": token, "batch": batch}).to_string()).status,
        200
    );
}

fn count(ingest: &Ingest) -> usize {
    clickhouse_rows(&format!("SELECT count() AS n FROM {} FINAL", ingest.table("events")))[0]["n"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn host_port(url: &str) -> String {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let rest = rest.rsplit('@').next().unwrap_or(rest);
    rest.split('/').next().unwrap_or(rest).to_string()
}

fn readiness(ingest: &Ingest) -> u16 {
    sluice_tests::http().get(format!("http://{}/_readiness", ingest.address())).send().unwrap().status().as_u16()
}

fn wait_for_readiness(ingest: &Ingest, status: u16) {
    let start = std::time::Instant::now();
    while readiness(ingest) != status {
        assert!(start.elapsed() < Duration::from_secs(15), "readiness never became {status}: {}", ingest.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Cuts the proxy, sends more, checks nothing moves and nothing is dead-lettered, restores
/// it and waits for every event.
fn outage_then_catch_up(cap: &Capture, ingest: &Ingest, proxy: &Proxy, token: &str) {
    send(cap, token, "before", 10);
    assert_eq!(
        wait_for_rows(&format!("SELECT uuid FROM {}", ingest.table("events")), 10, Duration::from_secs(30)).len(),
        10
    );

    proxy.cut();
    // The lane is idle: the readiness probe, not a failing batch, must notice.
    wait_for_readiness(ingest, 503);
    send(cap, token, "during", 20);
    std::thread::sleep(Duration::from_secs(3));
    let during = count(ingest);
    assert_eq!(during, 10, "nothing written while the dependency is down");
    assert_eq!(readiness(ingest), 503, "readiness reports the outage");

    proxy.restore();
    let start = std::time::Instant::now();
    while count(ingest) < 30 {
        assert!(start.elapsed() < Duration::from_secs(60), "no catch-up: {}", ingest.log_text());
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(count(ingest), 30);
    wait_for_readiness(ingest, 200);
    assert!(read_topic(&cap.kafka, &ingest.dlq_topic, 0, Duration::from_secs(2)).is_empty(), "nothing dead-lettered");
}

#[test]
fn clickhouse_down_means_lag_then_catch_up() {
    let proxy = Proxy::start(&host_port(&sluice_tests::clickhouse_url()));
    let cap = Capture::start("ch-down", &[]);
    let url = format!("http://127.0.0.1:{}", proxy.port);
    let ingest = Ingest::start(
        "ch_down",
        &cap.topics.main,
        &[("CLICKHOUSE_URL", &url), ("RETRY_MAX_BACKOFF_MS", "500"), ("READINESS_PROBE_INTERVAL_MS", "300")],
    );
    let token = create_team(&unique("ch-down team"));
    outage_then_catch_up(&cap, &ingest, &proxy, &token);
}

#[test]
fn postgres_down_means_lag_then_catch_up() {
    let db = sluice_tests::database_url();
    let proxy = Proxy::start(&host_port(&db));
    let cap = Capture::start("pg-down", &[]);
    let url = db.replacen(&host_port(&db), &format!("127.0.0.1:{}", proxy.port), 1);
    // A short team cache, so the outage is felt at once and not only by persons.
    let ingest = Ingest::start(
        "pg_down",
        &cap.topics.main,
        &[
            ("DATABASE_URL", &url),
            ("RETRY_MAX_BACKOFF_MS", "500"),
            ("TEAM_CACHE_TTL_MS", "100"),
            ("READINESS_PROBE_INTERVAL_MS", "300"),
        ],
    );
    let token = create_team(&unique("pg-down team"));
    outage_then_catch_up(&cap, &ingest, &proxy, &token);
}

/// ClickHouse refusing one row's data is not an outage: that event goes to the dead
/// letters with the reason, its neighbours are written, the lane goes on, and a replay
/// after the fix brings it in.
#[test]
fn a_row_clickhouse_refuses_is_dead_lettered_and_the_rest_written() {
    let cap = Capture::start("ch-refuses", &[]);
    let ingest = Ingest::start("ch_refuses", &cap.topics.main, &[]);
    let token = create_team(&unique("ch-refuses team"));
    let events = ingest.table("events");
    // A schema that cannot hold every value: distinct ids must now be numbers.
    let alter = |ty: &str| {
        let sql = format!("ALTER TABLE {events} MODIFY COLUMN distinct_id {ty}");
        let r = sluice_tests::http().post(sluice_tests::clickhouse_url()).body(sql).send().unwrap();
        assert!(r.status().is_success(), "{}", r.text().unwrap());
    };
    alter("UInt64");

    let ids = ["1001", "1002", "1003", "not-a-number", "1004", "1005", "1006"];
    let batch: Vec<_> = ids.iter().map(|d| json!({"event": "e", "distinct_id": d})).collect();
    assert_eq!(
        cap.post("/batch", "application/json", json!({"api_key": token, "batch": batch}).to_string()).status,
        200
    );
    let rows = wait_for_rows(&format!("SELECT distinct_id FROM {events}"), 6, Duration::from_secs(30));
    assert_eq!(rows.len(), 6, "{}", ingest.log_text());
    let dead = read_topic(&cap.kafka, &ingest.dlq_topic, 1, Duration::from_secs(20));
    assert_eq!(dead.len(), 1, "only the refused event");
    assert_eq!(dead[0].value["distinct_id"], "not-a-number", "{}", dead[0].value);
    assert_eq!(dead[0].headers.get("dlq_stage").map(String::as_str), Some("write"));
    assert_eq!(dead[0].headers.get("dlq_error_class").map(String::as_str), Some("clickhouse_refused"));
    assert!(dead[0].headers.get("dlq_error").is_some_and(|e| e.contains("events")), "{:?}", dead[0].headers);

    // The lane did not stop at it.
    let later = json!({"api_key": token, "batch": [{"event": "later", "distinct_id": "2001"}]});
    assert_eq!(cap.post("/batch", "application/json", later.to_string()).status, 200);
    assert_eq!(wait_for_rows(&format!("SELECT distinct_id FROM {events}"), 7, Duration::from_secs(30)).len(), 7);

    // The operator fixes the schema and replays.
    alter("String");
    let dlq_env = [("KAFKA_DLQ_TOPIC", ingest.dlq_topic.as_str())];
    let replayed = sluice_tests::ingest_command(&["dlq", "replay", "--since", "1h"], &dlq_env);
    assert_eq!(replayed.trim(), "replayed 1 of 1 dead letters");
    let rows = wait_for_rows(
        &format!("SELECT distinct_id FROM {events} WHERE distinct_id = 'not-a-number'"),
        1,
        Duration::from_secs(30),
    );
    assert_eq!(rows.len(), 1, "{}", ingest.log_text());
    let metrics = ingest.metrics();
    assert!(metrics.contains(r#"ingest_clickhouse_refused_rows_total{table="events"} 1"#), "{metrics}");
}

/// SIGTERM while the batch in flight cannot be written: ingest stops within its drain
/// timeout instead of retrying forever, commits nothing of that batch, and the events
/// are written by the next process once ClickHouse is back.
#[test]
fn sigterm_during_an_outage_stops_within_the_drain_timeout_leaving_the_batch_uncommitted() {
    let proxy = Proxy::start(&host_port(&sluice_tests::clickhouse_url()));
    let cap = Capture::start("ch-term", &[]);
    let url = format!("http://127.0.0.1:{}", proxy.port);
    let mut ingest = Ingest::start(
        "ch_term",
        &cap.topics.main,
        &[("CLICKHOUSE_URL", &url), ("RETRY_MAX_BACKOFF_MS", "300"), ("SHUTDOWN_DRAIN_TIMEOUT_MS", "1500")],
    );
    let token = create_team(&unique("ch-term team"));
    send(&cap, &token, "before", 5);
    assert_eq!(
        wait_for_rows(&format!("SELECT uuid FROM {}", ingest.table("events")), 5, Duration::from_secs(30)).len(),
        5
    );

    proxy.cut();
    send(&cap, &token, "during", 10);
    let start = std::time::Instant::now();
    while !ingest.log_text().contains("batch not written; retrying") {
        assert!(start.elapsed() < Duration::from_secs(30), "the batch never failed: {}", ingest.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    // Without a drain deadline the retry loop would hold the process until ClickHouse
    // returned; 20 s is far above the 1.5 s deadline and far below "forever".
    let status = ingest.terminate(Duration::from_secs(20));
    let status = status.unwrap_or_else(|| panic!("still running after SIGTERM: {}", ingest.log_text()));
    assert!(status.success(), "clean exit: {status:?}");
    assert!(ingest.log_text().contains("left for the next owner"), "{}", ingest.log_text());
    assert_eq!(count(&ingest), 5, "nothing of the failed batch written");

    proxy.restore();
    ingest.restart();
    let start = std::time::Instant::now();
    while count(&ingest) < 15 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the uncommitted batch was not redone: {}",
            ingest.log_text()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(count(&ingest), 15);
    assert!(read_topic(&cap.kafka, &ingest.dlq_topic, 0, Duration::from_secs(2)).is_empty(), "nothing dead-lettered");
}

/// SIGTERM with the broker gone: librdkafka's consumer close (and a synchronous commit)
/// wait for the group coordinator without a deadline, which once kept ingest alive for
/// good. It must exit within its drain timeout all the same.
#[test]
fn sigterm_with_the_broker_gone_still_exits() {
    let port = sluice_tests::free_port();
    let tansu = std::env::var("HOME").map(|h| format!("{h}/.cargo/bin/tansu")).unwrap_or_default();
    let tansu = if std::path::Path::new(&tansu).exists() { tansu } else { "tansu".to_string() };
    let listener = format!("tcp://127.0.0.1:{port}");
    let mut broker = std::process::Command::new(tansu)
        .args(["broker", "--listener-url", &listener, "--advertised-listener-url", &listener])
        .args(["--storage-engine", "memory://tansu/"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start a broker of this test's own");
    let kafka = format!("127.0.0.1:{port}");
    let start = std::time::Instant::now();
    while std::net::TcpStream::connect(&kafka).is_err() {
        assert!(start.elapsed() < Duration::from_secs(30), "the test's broker did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let topic = unique("broker-gone");
    sluice_tests::create_topics(&kafka, std::slice::from_ref(&topic), 2);
    let mut ingest =
        Ingest::start("broker_gone", &topic, &[("KAFKA_HOSTS", &kafka), ("SHUTDOWN_DRAIN_TIMEOUT_MS", "2000")]);
    while !ingest.log_text().contains("partitions assigned") {
        assert!(start.elapsed() < Duration::from_secs(60), "never joined the group: {}", ingest.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = broker.kill();
    let _ = broker.wait();
    std::thread::sleep(Duration::from_secs(1));
    let status = ingest.terminate(Duration::from_secs(30));
    let status = status.unwrap_or_else(|| panic!("still running 30 s after SIGTERM: {}", ingest.log_text()));
    assert!(status.success(), "{status:?}");
}
