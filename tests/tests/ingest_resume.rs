//! A lane resuming in the middle of a partition's last record batch.
//!
//! A commit often lands inside a record batch: capture produces a request's events as one
//! batch, and a lane commits where its own batch ended. Tansu 0.6 answers a fetch inside a
//! batch with the *next* batch, and leaves it unanswered when there is none, so a lane
//! restarted there would wait for new traffic on that partition before it sent the
//! batch's tail on (the exports lane's restart test hit this under load: the tail sat
//! for its whole minute). The lane must notice that messages wait in the log past where
//! the partition is done, fetch them again, and skip what was done before.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::json;
use sluice_tests::{
    clickhouse_rows, create_team, ingest_command, kafka_hosts, read_topic, unique, Capture, Ingest, TestTopics,
};

const EVENTS: usize = 12;
const DONE: i64 = 5;

/// Commits `offset` of `topic`'s partition 0 for `group`, as a lane that processed the
/// messages before it would have.
fn commit(group: &str, topic: &str, offset: i64) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_hosts())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("kafka consumer");
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, 0, Offset::Offset(offset)).expect("offset");
    consumer.commit(&list, CommitMode::Sync).expect("commit");
}

fn stored(ingest: &Ingest) -> BTreeSet<String> {
    clickhouse_rows(&format!("SELECT event FROM {} FINAL", ingest.table("events")))
        .iter()
        .map(|r| r["event"].as_str().expect("event").to_string())
        .collect()
}

#[test]
fn a_lane_resuming_inside_the_last_batch_of_a_quiet_partition_sends_its_tail_on() {
    let test = "resume-tail";
    // Postgres migrated before the team is made (on a fresh machine no test did it yet).
    ingest_command(&["migrate"], &[]);
    let token = create_team(&unique("resume tail team"));
    let topics = TestTopics::create_with_partitions(&kafka_hosts(), test, 1);
    let cap = Capture::start_with_topics(test, topics, &kafka_hosts(), &[]);
    // One request, one partition, one record batch: offsets 0..12.
    let batch: Vec<_> = (0..EVENTS).map(|i| json!({"event": format!("e{i:02}"), "distinct_id": "d"})).collect();
    let r = cap.post("/batch", "application/json", json!({"api_key": token, "batch": batch}).to_string());
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(read_topic(&cap.kafka, &cap.topics.main, EVENTS, Duration::from_secs(20)).len(), EVENTS);

    let group = unique(&format!("{test}-group"));
    commit(&group, &cap.topics.main, DONE);
    let ingest = Ingest::start(
        "resume_tail",
        &cap.topics.main,
        &[("KAFKA_GROUP_ID", &group), ("KAFKA_QUIET_PARTITION_CHECK_MS", "2000")],
    );

    let tail: BTreeSet<String> = (DONE as usize..EVENTS).map(|i| format!("e{i:02}")).collect();
    let deadline = Instant::now() + Duration::from_secs(45);
    while stored(&ingest) != tail {
        assert!(
            Instant::now() < deadline,
            "stored {:?}, not the tail after offset {DONE}\n{}",
            stored(&ingest),
            ingest.log_text()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // What was read again to get there was skipped, not written a second time.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(stored(&ingest), tail, "the messages before the committed offset stay done");
    // Without FINAL: no row was written twice either.
    let count = clickhouse_rows(&format!("SELECT toUInt32(count()) AS n FROM {}", ingest.table("events")));
    assert_eq!(count[0]["n"], json!(tail.len()));
}
