//! A consumer group whose assignment gives a partition to no one, and no member is told.
//!
//! Tansu 0.6's coordinator did this in a chaos run after a burst of session timeouts:
//! three partitions of the main lane were held by nobody for eight minutes while every
//! heartbeat was answered as if the group were stable. Here a rogue leader
//! (`tests/group/rogue_leader.py`, kafka-python with an assignor of its own) leaves one
//! partition out of the group's first assignment, which is the same state made on
//! purpose. Ingest must notice (messages past the committed offset, no commit, while it
//! is ready) and rejoin the group, whose next assignment covers every partition; with the
//! check turned off the partition's events stay unconsumed, which shows the state is real.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use sluice_tests::{
    clickhouse_rows, create_team, kafka_hosts, read_topic, repo_root, unique, Capture, Ingest, TestTopics,
};

const SKIPPED: i32 = 2;

/// The rogue leader, with what it printed so far.
struct Rogue {
    child: Child,
    said: Arc<Mutex<Vec<String>>>,
}

impl Rogue {
    fn lead(group: &str, topic: &str) -> Rogue {
        let mut child = Command::new(sluice_tests::venv_python())
            .arg(repo_root().join("tests/group/rogue_leader.py"))
            .args([&kafka_hosts(), group, topic, &SKIPPED.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the rogue leader (kafka-python in .venv)");
        let said = Arc::new(Mutex::new(Vec::new()));
        let lines = BufReader::new(child.stdout.take().expect("stdout"));
        let sink = said.clone();
        std::thread::spawn(move || {
            for line in lines.lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let rogue = Rogue { child, said };
        rogue.wait_for("leading", Duration::from_secs(30));
        rogue
    }

    fn wait_for(&self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.said.lock().unwrap().iter().find(|l| l.starts_with(prefix)) {
                return line.clone();
            }
            assert!(
                Instant::now() < deadline,
                "the rogue leader never said {prefix:?}: {:?}",
                self.said.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Rogue {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts capture, the rogue leader and one ingest process in its group, sends events
/// over every partition, and returns the uuids that landed in the skipped partition and
/// in the others.
fn unassigned_partition(test: &str, rejoin_ms: &str) -> (Capture, Rogue, Ingest, Vec<String>, Vec<String>) {
    let topics = TestTopics::create_with_partitions(&kafka_hosts(), test, 4);
    let cap = Capture::start_with_topics(test, topics, &kafka_hosts(), &[]);
    let group = unique(&format!("{test}-group"));
    let rogue = Rogue::lead(&group, &cap.topics.main);
    let ingest = Ingest::start(
        &test.replace('-', "_"),
        &cap.topics.main,
        &[("KAFKA_GROUP_ID", &group), ("KAFKA_STALLED_PARTITION_REJOIN_MS", rejoin_ms)],
    );
    let first = rogue.wait_for("assignment 1:", Duration::from_secs(60));
    assert!(!assigned(&first).contains(&SKIPPED), "the first assignment leaves partition {SKIPPED} out: {first}");

    let token = create_team(&unique(&format!("{test} team")));
    let batch: Vec<_> = (0..200)
        .map(|i| json!({"event": "grouped", "uuid": uuid::Uuid::new_v4().to_string(), "distinct_id": format!("user-{i}")}))
        .collect();
    let response = sluice_tests::http()
        .post(format!("{}/batch", cap.url))
        .header("content-type", "application/json")
        .body(json!({"api_key": token, "batch": batch}).to_string())
        .send()
        .expect("capture answers");
    assert_eq!(response.status(), 200);
    let records = read_topic(&cap.kafka, &cap.topics.main, 200, Duration::from_secs(20));
    let (skipped, others): (Vec<_>, Vec<_>) = records.iter().partition(|r| r.partition == SKIPPED);
    let uuids = |rs: Vec<&sluice_tests::Record>| -> Vec<String> {
        rs.iter().map(|r| r.value["uuid"].as_str().expect("uuid").to_string()).collect()
    };
    let (skipped, others) = (uuids(skipped), uuids(others));
    assert!(!skipped.is_empty() && !others.is_empty(), "events in partition {SKIPPED} and in the others");
    (cap, rogue, ingest, skipped, others)
}

/// The partitions of one of the rogue's "assignment N: partitions [..] to K members" lines.
fn assigned(line: &str) -> Vec<i32> {
    let list = line.split('[').nth(1).and_then(|rest| rest.split(']').next()).expect("a partition list");
    list.split(',').filter_map(|p| p.trim().parse().ok()).collect()
}

fn stored(ingest: &Ingest) -> HashSet<String> {
    clickhouse_rows(&format!("SELECT toString(uuid) AS u FROM {} FINAL", ingest.table("events")))
        .iter()
        .map(|r| r["u"].as_str().unwrap().to_string())
        .collect()
}

fn wait_stored(ingest: &Ingest, uuids: &[String], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let found = stored(ingest);
        if uuids.iter().all(|u| found.contains(u)) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_partition_the_group_gave_to_no_one_is_noticed_and_consumed_after_a_rejoin() {
    let (_cap, rogue, ingest, skipped, others) = unassigned_partition("unassigned-heals", "6000");
    assert!(
        wait_stored(&ingest, &others, Duration::from_secs(60)),
        "the assigned partitions are consumed\n{}",
        ingest.log_text()
    );
    assert!(
        wait_stored(&ingest, &skipped, Duration::from_secs(90)),
        "the unassigned partition's {} events are consumed after the rejoin\n{}",
        skipped.len(),
        ingest.log_text()
    );
    let second = rogue.wait_for("assignment 2:", Duration::from_secs(5));
    assert!(assigned(&second).contains(&SKIPPED), "the group's next assignment covers partition {SKIPPED}: {second}");
    let log = ingest.log_text();
    assert!(log.contains("rejoining the group"), "ingest says why it rejoined:\n{log}");
    let metrics = ingest.wait_for_metrics(&["ingest_group_rejoins_total{lane=\"main\"} 1"], Duration::from_secs(5));
    assert!(metrics.contains("ingest_group_rejoins_total"));
    // Every event once: nothing the rejoin made another member read again is doubled.
    assert_eq!(stored(&ingest).len(), skipped.len() + others.len());
}

#[test]
fn with_the_check_off_the_partition_given_to_no_one_stays_unconsumed() {
    let (_cap, rogue, ingest, skipped, others) = unassigned_partition("unassigned-stays", "0");
    assert!(
        wait_stored(&ingest, &others, Duration::from_secs(60)),
        "the assigned partitions are consumed\n{}",
        ingest.log_text()
    );
    // Longer than the other test needed to notice (6 s) and heal.
    std::thread::sleep(Duration::from_secs(20));
    let found = stored(&ingest);
    assert!(skipped.iter().all(|u| !found.contains(u)), "nothing of the unassigned partition was consumed");
    assert!(!rogue.said.lock().unwrap().iter().any(|l| l.starts_with("assignment 2:")), "no rebalance happened");
    assert!(ingest.metrics().contains("ingest_group_rejoins_total{lane=\"main\"} 0"));
}
