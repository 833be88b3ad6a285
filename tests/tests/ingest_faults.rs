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

/// Cuts the proxy, sends more, checks nothing moves and nothing is dead-lettered, restores
/// it and waits for every event.
fn outage_then_catch_up(cap: &Capture, ingest: &Ingest, proxy: &Proxy, token: &str) {
    send(cap, token, "before", 10);
    assert_eq!(
        wait_for_rows(&format!("SELECT uuid FROM {}", ingest.table("events")), 10, Duration::from_secs(30)).len(),
        10
    );

    proxy.cut();
    send(cap, token, "during", 20);
    std::thread::sleep(Duration::from_secs(3));
    let during = count(ingest);
    assert_eq!(during, 10, "nothing written while the dependency is down");
    let readiness =
        sluice_tests::http().get(format!("http://{}/_readiness", ingest.address())).send().unwrap().status();
    assert_eq!(readiness, 503, "readiness reports the outage");

    proxy.restore();
    let start = std::time::Instant::now();
    while count(ingest) < 30 {
        assert!(start.elapsed() < Duration::from_secs(60), "no catch-up: {}", ingest.log_text());
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(count(ingest), 30);
    assert!(read_topic(&cap.kafka, &ingest.dlq_topic, 0, Duration::from_secs(2)).is_empty(), "nothing dead-lettered");
}

#[test]
fn clickhouse_down_means_lag_then_catch_up() {
    let proxy = Proxy::start(&host_port(&sluice_tests::clickhouse_url()));
    let cap = Capture::start("ch-down", &[]);
    let url = format!("http://127.0.0.1:{}", proxy.port);
    let ingest =
        Ingest::start("ch_down", &cap.topics.main, &[("CLICKHOUSE_URL", &url), ("RETRY_MAX_BACKOFF_MS", "500")]);
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
        &[("DATABASE_URL", &url), ("RETRY_MAX_BACKOFF_MS", "500"), ("TEAM_CACHE_TTL_MS", "100")],
    );
    let token = create_team(&unique("pg-down team"));
    outage_then_catch_up(&cap, &ingest, &proxy, &token);
}
