//! The per-event steps' decisions, on the in-memory stores: what is dropped and why,
//! what waits for Postgres instead of being dropped, and what the rows say.

use std::sync::atomic::Ordering;

use serde_json::{json, Value};
use sluice_schema::clickhouse::Flavor;
use sluice_schema::{person_uuid, CapturedEvent};
use time::macros::datetime;
use time::OffsetDateTime;

use super::{process, Deps, Fate, SideRows};
use crate::resolve::Team;
use crate::restrict::Restrictions;
use crate::rows::{Encoded, Table};
use crate::stores::memory::Memory;

const TOKEN: &str = "phc_team";
const NOW: OffsetDateTime = datetime!(2026-11-30 12:00 UTC);

fn team(anonymize_ips: bool, person_processing_opt_out: bool) -> Team {
    Team { id: 7, anonymize_ips, person_processing_opt_out }
}

fn captured(event: &str, distinct_id: &str, data: Value) -> CapturedEvent {
    CapturedEvent {
        uuid: uuid::Uuid::now_v7(),
        distinct_id: distinct_id.to_string(),
        ip: "203.0.113.9".to_string(),
        data: data.to_string(),
        now: NOW,
        sent_at: None,
        token: TOKEN.to_string(),
        event: event.to_string(),
        timestamp: Some("2026-11-30T11:59:00Z".to_string()),
        historical_migration: false,
    }
}

fn event(event: &str, distinct_id: &str, properties: Value) -> CapturedEvent {
    captured(event, distinct_id, json!({"event": event, "properties": properties}))
}

async fn run(stores: &Memory, restrictions: &Restrictions, captured: CapturedEvent) -> Result<Fate, String> {
    let deps = Deps { stores, restrictions, plugins: None, flavor: Flavor::Modern };
    process(captured, &deps).await.map_err(|e| e.to_string())
}

fn no_restrictions() -> Restrictions {
    Restrictions::parse("", "", std::time::Duration::from_secs(60))
}

/// Rows of `table` as ClickHouse would read them.
fn read(table: Table, rows: &[Encoded]) -> Vec<Value> {
    rows.iter().map(|r| Value::Object(table.decode(Flavor::Modern, r).unwrap())).collect()
}

/// The side rows of an event, read.
#[derive(Debug, Default, PartialEq)]
struct Side {
    persons: Vec<Value>,
    distinct_ids: Vec<Value>,
    groups: Vec<Value>,
}

/// The event row, side rows and warnings of a written event, read.
fn row(fate: Fate) -> (Value, Side, Vec<Value>) {
    match fate {
        Fate::Row { event, rows: SideRows { persons, distinct_ids, groups }, warnings, .. } => {
            let side = Side {
                persons: read(Table::Persons, &persons),
                distinct_ids: read(Table::PersonDistinctIds, &distinct_ids),
                groups: read(Table::Groups, &groups),
            };
            (read(Table::Events, &[event]).remove(0), side, read(Table::IngestionWarnings, &warnings))
        }
        other => panic!("expected a row, got {other:?}"),
    }
}

fn properties(row: &Value) -> Value {
    serde_json::from_str(row["properties"].as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn an_unknown_token_is_dropped_before_anything_is_written() {
    let stores = Memory::with_team("phc_other", team(false, false));
    let fate = run(&stores, &no_restrictions(), event("$pageview", "u1", json!({"$set": {"a": 1}}))).await.unwrap();
    assert_eq!(fate, Fate::Drop { cause: "invalid_token", warnings: vec![] });
    assert_eq!(stores.person_calls.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn restricted_keys_are_dropped_and_skip_persons_keys_are_written_personless() {
    let stores = Memory::with_team(TOKEN, team(false, false));
    let restrictions = Restrictions::parse(&format!("{TOKEN}:bot"), &format!("{TOKEN}:crawler"), Default::default());
    let dropped = run(&stores, &restrictions, event("$pageview", "bot", json!({}))).await.unwrap();
    assert_eq!(dropped, Fate::Drop { cause: "restricted", warnings: vec![] });

    let (event_row, side, _) =
        row(run(&stores, &restrictions, event("$pageview", "crawler", json!({}))).await.unwrap());
    assert_eq!(event_row["person_mode"], "propertyless");
    assert_eq!(event_row["person_id"], json!(person_uuid(7, "crawler")), "the uuid a later person will share");
    assert_eq!(side, Side::default());
    assert_eq!(stores.person_calls.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_person_event_without_person_processing_is_dropped_with_a_warning() {
    for (stores, props) in [
        (Memory::with_team(TOKEN, team(false, true)), json!({})),
        (Memory::with_team(TOKEN, team(false, false)), json!({"$process_person_profile": false})),
    ] {
        let fate = run(&stores, &no_restrictions(), event("$identify", "u1", props.clone())).await.unwrap();
        let Fate::Drop { cause: "personless_person_event", warnings } = fate else { panic!("{fate:?}") };
        let warnings = read(Table::IngestionWarnings, &warnings);
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0]["type"], "personless_person_event");
        assert_eq!(warnings[0]["team_id"], 7);

        let (event_row, _, _) = row(run(&stores, &no_restrictions(), event("$pageview", "u1", props)).await.unwrap());
        assert_eq!(event_row["person_mode"], "propertyless", "ordinary events are still written");
    }
}

#[tokio::test]
async fn postgres_away_means_wait_never_drop() {
    let stores = Memory::with_team(TOKEN, team(false, false));
    stores.down.store(true, Ordering::Relaxed);
    let err = run(&stores, &no_restrictions(), event("$pageview", "u1", json!({}))).await.unwrap_err();
    assert!(err.contains("postgres unavailable"), "{err}");

    stores.down.store(false, Ordering::Relaxed);
    stores.persons_down.store(true, Ordering::Relaxed);
    let err = run(&stores, &no_restrictions(), event("$pageview", "u1", json!({}))).await.unwrap_err();
    assert!(err.contains("postgres unavailable"), "the person step too: {err}");
}

#[tokio::test]
async fn data_that_is_not_an_event_object_is_a_dead_letter() {
    let stores = Memory::with_team(TOKEN, team(false, false));
    for data in [json!([1, 2]), json!("text")] {
        let Fate::Dead(dead) = run(&stores, &no_restrictions(), captured("e", "u1", data)).await.unwrap() else {
            panic!("expected a dead letter")
        };
        assert_eq!((dead.stage, dead.error_class), ("parse", "invalid_data"));
    }
    let mut broken = captured("e", "u1", json!({}));
    broken.data = "{not json".to_string();
    let Fate::Dead(dead) = run(&stores, &no_restrictions(), broken).await.unwrap() else { panic!("expected dead") };
    assert_eq!(dead.error_class, "invalid_data");
}

#[tokio::test]
async fn a_future_timestamp_is_clamped_to_now_with_a_warning() {
    let stores = Memory::with_team(TOKEN, team(false, false));
    let mut ev = event("$pageview", "u1", json!({}));
    ev.timestamp = Some("2027-06-01T00:00:00Z".to_string());
    let (event_row, _, warnings) = row(run(&stores, &no_restrictions(), ev).await.unwrap());
    assert_eq!(event_row["timestamp"], Flavor::Modern.format(NOW));
    assert_eq!(
        warnings.iter().map(|w| w["type"].clone()).collect::<Vec<_>>(),
        vec![json!("event_timestamp_in_future")]
    );
}

#[tokio::test]
async fn person_properties_reach_the_event_row_and_the_person_rows() {
    let stores = Memory::with_team(TOKEN, team(false, false));
    let first = event("$pageview", "u1", json!({"$set": {"plan": "free"}, "$set_once": {"first": "a"}}));
    let (event_row, side, _) = row(run(&stores, &no_restrictions(), first).await.unwrap());
    assert_eq!(event_row["person_mode"], "full");
    assert_eq!(event_row["person_id"], json!(person_uuid(7, "u1")));
    let person: Value = serde_json::from_str(event_row["person_properties"].as_str().unwrap()).unwrap();
    assert_eq!(person, json!({"plan": "free", "first": "a"}));
    assert_eq!((side.persons.len(), side.distinct_ids.len()), (1, 1), "a new person and its distinct id");

    let again = event("$pageview", "u1", json!({"$set": {"plan": "free"}}));
    let (_, side, _) = row(run(&stores, &no_restrictions(), again).await.unwrap());
    assert_eq!(side, Side::default(), "nothing changed, nothing written");

    let upgrade = event("$pageview", "u1", json!({"$set": {"plan": "pro"}, "$set_once": {"first": "b"}}));
    let (event_row, side, _) = row(run(&stores, &no_restrictions(), upgrade).await.unwrap());
    let person: Value = serde_json::from_str(event_row["person_properties"].as_str().unwrap()).unwrap();
    assert_eq!(person, json!({"plan": "pro", "first": "a"}), "$set overrides, $set_once does not");
    assert_eq!(side.persons[0]["version"], 1);
}

#[tokio::test]
async fn groups_fill_their_columns_up_to_five_types_and_groupidentify_writes_the_group() {
    let stores = Memory::with_team(TOKEN, team(false, false));
    let groups = json!({"a": "ka", "b": 42, "c": "kc", "d": "kd", "e": "ke", "f": "kf", "empty": ""});
    let (event_row, _, _) =
        row(run(&stores, &no_restrictions(), event("e", "u1", json!({"$groups": groups}))).await.unwrap());
    let props = properties(&event_row);
    let columns: Vec<Value> = (0..5).map(|i| event_row[format!("$group_{i}")].clone()).collect();
    assert_eq!(columns, vec![json!("ka"), json!("42"), json!("kc"), json!("kd"), json!("ke")], "a number key is text");
    let in_properties: Vec<Value> = (0..5).map(|i| props[format!("$group_{i}")].clone()).collect();
    assert_eq!(in_properties, columns, "the properties carry the same");
    assert!(props.get("$group_5").is_none(), "a sixth type gets no index");

    let identify =
        event("$groupidentify", "u1", json!({"$group_type": "a", "$group_key": "ka", "$group_set": {"name": "Acme"}}));
    let (_, side, _) = row(run(&stores, &no_restrictions(), identify).await.unwrap());
    assert_eq!(side.groups.len(), 1);
    assert_eq!(side.groups[0]["group_key"], "ka");
    assert_eq!(side.groups[0]["group_properties"], json!({"name": "Acme"}).to_string());
    let same =
        event("$groupidentify", "u1", json!({"$group_type": "a", "$group_key": "ka", "$group_set": {"name": "Acme"}}));
    let (_, side, _) = row(run(&stores, &no_restrictions(), same).await.unwrap());
    assert!(side.groups.is_empty(), "unchanged: no row");
}

#[tokio::test]
async fn a_team_that_anonymizes_ips_gets_no_ip_in_its_rows() {
    for (anonymize, expected) in [(true, None), (false, Some(json!("203.0.113.9")))] {
        let stores = Memory::with_team(TOKEN, team(anonymize, false));
        let (event_row, _, _) = row(run(&stores, &no_restrictions(), event("e", "u1", json!({}))).await.unwrap());
        assert_eq!(properties(&event_row).get("$ip").cloned(), expected);
    }
}
