//! Several ingest processes in one consumer group, through crashes and rebalances: every
//! event capture acknowledged ends up in ClickHouse exactly once (with `FINAL`), none is
//! lost and none is dead-lettered.
//!
//! This is how the loss was found from outside: three processes in a group, one of them
//! killed with `kill -9` and restarted every few seconds while traffic flows. A process
//! resuming a partition at a committed offset in the middle of a record batch got the
//! next batch from the broker (Tansu), skipped the tail, and committed past it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sluice_tests::{clickhouse_rows, create_team, kafka_hosts, read_topic, unique, Capture, Ingest, TestTopics};

/// A small seeded generator, so a failing schedule can be run again (`SCALE_OUT_SEED`).
struct Schedule(u64);

impl Schedule {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}

fn post_batch(client: &reqwest::blocking::Client, url: &str, token: &str, batch: Vec<serde_json::Value>) {
    let body = json!({"api_key": token, "batch": batch}).to_string();
    let response = client
        .post(format!("{url}/batch"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .expect("capture answers");
    assert_eq!(response.status(), 200, "capture acknowledges every batch");
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
fn three_ingest_processes_in_one_group_lose_nothing_through_kills_and_rebalances() {
    let events = env_or("SCALE_OUT_EVENTS", 24_000) as usize;
    let rate = env_or("SCALE_OUT_RATE", 1_500);
    let seed = env_or("SCALE_OUT_SEED", 0x5eed_0008);
    eprintln!("scale-out: {events} events at {rate}/s, seed {seed:#x}");

    let topics = TestTopics::create_with_partitions(&kafka_hosts(), "scale-out", 4);
    let cap = Capture::start_with_topics("scale-out", topics, &kafka_hosts(), &[]);
    // Small batches that end anywhere inside the producer's record batches, and a short
    // session so a killed member's partitions move on quickly.
    let settings = [("KAFKA_SESSION_TIMEOUT_MS", "6000"), ("BATCH_MAX_EVENTS", "173"), ("BATCH_MAX_WAIT_MS", "100")];
    let steady = Ingest::start("scale_out", &cap.topics.main, &settings);
    let mut crashing = [steady.member("b"), steady.member("c")];
    let token = create_team(&unique("scale-out team"));
    // A token of the right shape with no team: its events are dropped (and counted) once
    // each, not again every time a partition moves (the old consumer re-read up to
    // 100,000 messages per assignment and counted them as dropped each time).
    let teamless = format!("phc_{}", unique("teamless").replace(['-', '_'], ""));
    let teamless_events = 200;

    // Traffic: batches of 50 over 500 distinct ids, each event with a uuid of its own.
    let sent: Vec<String> = (0..events).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let traffic_done = Arc::new(AtomicBool::new(false));
    let traffic = {
        let sent = sent.clone();
        let url = cap.url.clone();
        let token = token.clone();
        let done = traffic_done.clone();
        std::thread::spawn(move || {
            let client = sluice_tests::http();
            let started = Instant::now();
            for (n, chunk) in sent.chunks(50).enumerate() {
                let batch: Vec<_> = chunk
                    .iter()
                    .enumerate()
                    .map(|(i, uuid)| {
                        json!({"event": "scale-out", "uuid": uuid, "distinct_id": format!("user-{}", (n * 50 + i) % 500),
                               "properties": {"n": n * 50 + i}})
                    })
                    .collect();
                post_batch(&client, &url, &token, batch);
                let due = Duration::from_secs_f64(((n + 1) * 50) as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            let ghosts: Vec<_> =
                (0..teamless_events).map(|i| json!({"event": "ghost", "distinct_id": format!("g{i}")})).collect();
            post_batch(&client, &url, &teamless, ghosts);
            done.store(true, Ordering::SeqCst);
        })
    };

    // Faults on a seeded schedule: mostly kill -9, sometimes SIGTERM, of one of the two
    // crashing members, every 2–5 s while traffic flows.
    let mut schedule = Schedule(seed);
    let mut faults = Vec::new();
    while !traffic_done.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(schedule.between(2_000, 5_000)));
        let victim = &mut crashing[schedule.between(0, 1) as usize];
        if schedule.between(0, 3) == 0 {
            let exited = victim.terminate(Duration::from_secs(30));
            assert!(exited.is_some(), "SIGTERM stops ingest within the drain timeout: {}", victim.log_text());
            victim.restart();
            faults.push("SIGTERM");
        } else {
            victim.kill_and_restart();
            faults.push("kill -9");
        }
    }
    traffic.join().expect("traffic thread");
    eprintln!("scale-out: faults {faults:?}");

    // Every acknowledged event, exactly once under FINAL.
    let events_table = steady.table("events");
    let deadline = Instant::now() + Duration::from_secs(120);
    let found: Vec<String> = loop {
        let rows = clickhouse_rows(&format!("SELECT toString(uuid) AS u FROM {events_table} FINAL"));
        let found: Vec<String> = rows.iter().map(|r| r["u"].as_str().unwrap().to_string()).collect();
        if found.len() >= events || Instant::now() > deadline {
            break found;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let found_set: HashSet<&str> = found.iter().map(String::as_str).collect();
    let lost: Vec<&String> = sent.iter().filter(|u| !found_set.contains(u.as_str())).collect();
    let dead = read_topic(&cap.kafka, &steady.dlq_topic, 0, Duration::from_secs(2));
    assert!(
        lost.is_empty(),
        "{} of {events} acknowledged events lost (faults {faults:?}, seed {seed:#x}); first: {:?}\n{}",
        lost.len(),
        &lost[..lost.len().min(10)],
        crashing.iter().map(Ingest::log_text).collect::<Vec<_>>().join("\n---\n"),
    );
    assert_eq!(found.len(), found_set.len(), "no duplicate under FINAL");
    assert_eq!(found.len(), events, "nothing that was not sent");
    assert!(dead.is_empty(), "nothing dead-lettered: {:?}", dead.first().map(|d| &d.headers));
    assert!(faults.len() >= 3, "the schedule injected faults: {faults:?}");

    // The member never killed has taken partitions over many times; its drop count stays
    // near the teamless events (a killed member's uncommitted batch is legitimately
    // processed again), far from a re-read per assignment.
    let metrics = steady.metrics();
    let dropped: f64 = metrics
        .lines()
        .find(|l| l.starts_with("ingest_events_dropped_total{cause=\"invalid_token\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(dropped <= 2.0 * teamless_events as f64, "teamless events counted {dropped} times on one member");
}
