//! The batch's phases without servers: sorting outcomes, refused rows, the retry's
//! dependency, and parse → plan → process on the in-memory stores.

use serde_json::json;
use sluice_schema::clickhouse::Flavor;

use super::*;
use crate::process::SideRows;
use crate::resolve::Team;
use crate::stores::memory::Memory;

fn row(team: i64, n: u8) -> Fate {
    Fate::Row {
        event: format!("event {team} {n}").into_bytes(),
        team_id: team,
        rows: SideRows { persons: vec![vec![1, n]], distinct_ids: vec![], groups: vec![vec![2, n]] },
        warnings: vec![vec![3, n]],
        captured_at: time::OffsetDateTime::UNIX_EPOCH,
    }
}

fn dead(stage: &'static str) -> DeadLetter {
    DeadLetter { stage, error: "bad".into(), error_class: "invalid_data", team_id: None }
}

#[test]
fn outcomes_become_rows_per_table_dead_letters_and_drops_each_under_its_message() {
    let outcomes = vec![
        (0, row(7, 0)),
        (1, Fate::Drop { cause: "restricted", warnings: vec![vec![3, 9]] }),
        (2, Fate::Dead(dead("parse"))),
        (3, row(8, 3)),
    ];
    let sorted = Sorted::from(outcomes);
    let indices = |rows: &[SourcedRow]| rows.iter().map(|(i, _)| *i).collect::<Vec<_>>();
    assert_eq!(indices(&sorted.rows.events), vec![0, 3]);
    assert_eq!(indices(&sorted.rows.persons), vec![0, 3]);
    assert_eq!(indices(&sorted.rows.groups), vec![0, 3]);
    assert!(sorted.rows.distinct_ids.is_empty());
    // A dropped event's warnings are still written.
    assert_eq!(indices(&sorted.rows.warnings), vec![0, 1, 3]);
    assert_eq!(sorted.dead.iter().map(|(i, d)| (*i, d.stage)).collect::<Vec<_>>(), vec![(2, "parse")]);
    assert_eq!(sorted.team_of.get(&3), Some(&8));
    assert_eq!(sorted.captured_at.len(), 2);
}

#[test]
fn a_row_clickhouse_refused_makes_its_whole_event_a_dead_letter_with_its_team() {
    let mut sorted = Sorted::from(vec![(0, row(7, 0)), (1, row(9, 1))]);
    let refused = HashMap::from([(1, "persons: Cannot parse input".to_string())]);
    sorted.dead_letter_refused(&refused);
    assert_eq!(sorted.dead.len(), 1);
    let (i, d) = &sorted.dead[0];
    assert_eq!((*i, d.stage, d.error_class, d.team_id), (1, "write", "clickhouse_refused", Some(9)));
    assert_eq!(d.error, "persons: Cannot parse input");
}

#[test]
fn each_failure_names_the_dependency_the_retry_is_counted_against() {
    assert_eq!(BatchError::from(DependencyDown(sqlx::Error::PoolTimedOut)).dependency(), "postgres");
    let refused = ClickHouseError::Refused { status: 500, code: None, body: String::new() };
    assert_eq!(BatchError::from(refused).dependency(), "clickhouse");
    let kafka = rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull);
    assert_eq!(BatchError::from(kafka).dependency(), "kafka");
}

#[test]
fn a_batch_read_again_with_more_messages_gets_a_token_of_its_own() {
    let batch = |offsets: std::ops::Range<i64>| offsets.map(|o| message(o, b"{}")).collect::<Vec<_>>();
    assert_eq!(batch_token("main", &batch(10..20)), batch_token("main", &batch(10..20)), "a retry is a repeat");
    assert_eq!(batch_token("main", &batch(10..20)), "main-events-0-10-19-10");
    assert_ne!(batch_token("main", &batch(10..20)), batch_token("main", &batch(10..25)), "same first offset");
    assert_ne!(batch_token("main", &batch(10..20)), batch_token("overflow", &batch(10..20)));
}

fn message(offset: i64, payload: &[u8]) -> OwnedMessage {
    OwnedMessage::new(
        Some(payload.to_vec()),
        None,
        "events".to_string(),
        rdkafka::Timestamp::NotAvailable,
        0,
        offset,
        None,
    )
}

fn captured(token: &str, event: &str, distinct_id: &str, properties: serde_json::Value) -> Vec<u8> {
    let c = CapturedEvent {
        uuid: uuid::Uuid::now_v7(),
        distinct_id: distinct_id.to_string(),
        ip: "127.0.0.1".to_string(),
        data: json!({"event": event, "properties": properties}).to_string(),
        now: time::OffsetDateTime::now_utc(),
        sent_at: None,
        token: token.to_string(),
        event: event.to_string(),
        timestamp: None,
        historical_migration: false,
    };
    serde_json::to_vec(&c).unwrap()
}

async fn through_the_steps(stores: &Memory, batch: &[OwnedMessage]) -> Result<Vec<(usize, Fate)>, String> {
    let restrictions = crate::restrict::Restrictions::parse("", "", std::time::Duration::from_secs(60));
    let deps = Deps { stores, restrictions: &restrictions, plugins: None, flavor: Flavor::Modern };
    let prepared = prepare(parse(batch), &deps).await.map_err(|e| e.to_string())?;
    let groups = plan::plan_batch(&prepared, &deps).await.map_err(|e| e.to_string())?;
    process_groups(prepared, groups, &deps, 3).await.map_err(|e| e.to_string())
}

#[tokio::test]
async fn persons_are_created_ahead_only_by_the_first_plain_event_of_an_id_without_one() {
    let stores = Memory::with_team("phc_a", Team { id: 7, anonymize_ips: false, person_processing_opt_out: false });
    let known = vec![message(0, &captured("phc_a", "$pageview", "known", json!({})))];
    through_the_steps(&stores, &known).await.unwrap();
    stores.created_ahead.lock().unwrap().clear();
    let batch = vec![
        message(1, &captured("phc_a", "$pageview", "new-1", json!({"$set": {"a": 1}, "$set_once": {"b": 2}}))),
        message(2, &captured("phc_a", "$pageview", "new-1", json!({"$set": {"a": 3}}))),
        message(3, &captured("phc_a", "$pageview", "known", json!({"$set": {"a": 1}}))),
        // First seen as a merge's ids: the merge decides, nothing is created ahead.
        message(4, &captured("phc_a", "$identify", "user", json!({"$anon_distinct_id": "anon"}))),
        message(5, &captured("phc_a", "$pageview", "anon", json!({}))),
        message(6, &captured("phc_a", "$pageview", "user", json!({}))),
        // Personless: touches no person.
        message(7, &captured("phc_a", "$pageview", "ghost", json!({"$process_person_profile": false}))),
        message(8, &captured("phc_a", "$pageview", "new-2", json!({}))),
    ];
    let fates = through_the_steps(&stores, &batch).await.unwrap();
    let ahead = stores.created_ahead.lock().unwrap().clone();
    let ids: Vec<&str> = ahead.iter().map(|p| p.distinct_id.as_str()).collect();
    assert_eq!(ids, vec!["new-1", "new-2"]);
    assert_eq!(Value::Object(ahead[0].properties.clone()), json!({"a": 1, "b": 2}), "its own event's, not later ones'");
    // What the event reports is what it reported creating it alone.
    let Fate::Row { rows, .. } = &fates[0].1 else { panic!("a row") };
    assert_eq!((rows.persons.len(), rows.distinct_ids.len()), (1, 1));
}

#[tokio::test]
async fn every_message_gets_one_fate_under_its_own_index() {
    let stores = Memory::with_team("phc_a", Team { id: 7, anonymize_ips: false, person_processing_opt_out: false });
    let batch = vec![
        message(10, &captured("phc_a", "$pageview", "anon-1", json!({"$set": {"seen": 1}}))),
        message(11, b"{not a message"),
        message(12, &captured("phc_unknown", "$pageview", "x", json!({}))),
        message(13, &captured("phc_a", "$identify", "user-1", json!({"$anon_distinct_id": "anon-1"}))),
        message(14, &captured("phc_a", "$pageview", "user-1", json!({}))),
        message(15, &captured("phc_a", "$pageview", "other", json!({}))),
    ];
    let fates = through_the_steps(&stores, &batch).await.unwrap();
    assert_eq!(fates.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4, 5], "in message order");
    let kinds: Vec<&str> = fates
        .iter()
        .map(|(_, f)| match f {
            Fate::Row { .. } => "row",
            Fate::Drop { cause, .. } => cause,
            Fate::Dead(d) => d.stage,
        })
        .collect();
    assert_eq!(kinds, vec!["row", "parse", "invalid_token", "row", "row", "row"]);
    let sorted = Sorted::from(fates);
    assert_eq!(sorted.rows.events.len(), 4);
    assert_eq!(sorted.dead.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![1]);
}

#[tokio::test]
async fn postgres_away_fails_the_whole_batch_for_a_retry() {
    let stores = Memory::with_team("phc_a", Team { id: 7, anonymize_ips: false, person_processing_opt_out: false });
    stores.persons_down.store(true, std::sync::atomic::Ordering::Relaxed);
    let batch = vec![message(0, &captured("phc_a", "$pageview", "u", json!({})))];
    let err = through_the_steps(&stores, &batch).await.unwrap_err();
    assert!(err.contains("postgres unavailable"), "{err}");
    stores.persons_down.store(false, std::sync::atomic::Ordering::Relaxed);
    stores.down.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(through_the_steps(&stores, &batch).await.is_err(), "the plan's reads too");
}
