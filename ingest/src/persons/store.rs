//! The person SQL: rows read, created, saved, merged; distinct ids added. Called inside
//! the transaction [`super::PersonStore`] holds for one event.

use std::sync::Arc;

use serde_json::{Map, Value};
use sluice_schema::person_uuid;
use sqlx::{Postgres, Row, Transaction};
use uuid::Uuid;

use super::{Changes, Person, PersonEvent};

/// A conflict with a concurrent transaction (this or another process): a unique key
/// taken meanwhile, or a deadlock between two merges locking the same persons in
/// opposite orders. Trying again sees the other's result.
pub(super) fn lost_race(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(e) => e.is_unique_violation() || matches!(e.code().as_deref(), Some("40P01" | "40001")),
        _ => false,
    }
}

/// The three person reads differ only in their tail; built at compile time because they
/// run for nearly every event.
macro_rules! person_query {
    ($tail:literal) => {
        concat!(
            "SELECT p.id, p.uuid, p.properties, p.is_identified, p.created_at, p.version, d.distinct_id
             FROM person_distinct_ids d JOIN persons p ON p.id = d.person_id ",
            $tail
        )
    };
}
pub(super) const PERSON_OF_DISTINCT_ID: &str = person_query!("WHERE d.team_id = $1 AND d.distinct_id = $2");
const PERSON_OF_DISTINCT_ID_LOCKED: &str = person_query!("WHERE d.team_id = $1 AND d.distinct_id = $2 FOR UPDATE OF p");
pub(super) const PERSONS_OF_DISTINCT_IDS: &str = person_query!("WHERE d.team_id = $1 AND d.distinct_id = ANY($2)");

/// Persons and their first distinct ids, one row each per `UNNEST`ed element (uuid,
/// team, properties, created_at, distinct id); the distinct-id rows come back.
pub(super) const CREATE_PERSONS: &str = "
    WITH input AS (
        SELECT * FROM UNNEST($1::uuid[], $2::int8[], $3::jsonb[], $4::timestamptz[], $5::text[])
            AS i (uuid, team_id, properties, created_at, distinct_id)
    ), p AS (
        INSERT INTO persons (uuid, team_id, properties, is_identified, created_at, version)
        SELECT uuid, team_id, properties, false, created_at, 0 FROM input
        RETURNING id, team_id, uuid
    )
    INSERT INTO person_distinct_ids (team_id, distinct_id, person_id, version)
    SELECT p.team_id, input.distinct_id, p.id, 0 FROM p JOIN input USING (team_id, uuid)
    RETURNING team_id, distinct_id, person_id";

pub(super) fn person_from_row(r: sqlx::postgres::PgRow) -> Person {
    Person {
        id: r.get("id"),
        uuid: r.get("uuid"),
        properties: Arc::new(match r.get::<sqlx::types::Json<Value>, _>("properties").0 {
            Value::Object(m) => m,
            _ => Map::new(),
        }),
        is_identified: r.get("is_identified"),
        created_at: r.get("created_at"),
        version: r.get("version"),
    }
}

/// The person of `distinct_id`, locked until the transaction ends.
pub(super) async fn find(
    tx: &mut Transaction<'_, Postgres>,
    team_id: i64,
    distinct_id: &str,
) -> Result<Option<Person>, sqlx::Error> {
    let row =
        sqlx::query(PERSON_OF_DISTINCT_ID_LOCKED).bind(team_id).bind(distinct_id).fetch_optional(&mut **tx).await?;
    Ok(row.map(person_from_row))
}

pub(super) async fn create(
    tx: &mut Transaction<'_, Postgres>,
    ev: &PersonEvent<'_>,
    properties: Map<String, Value>,
    is_identified: bool,
    changes: &mut Changes,
) -> Result<Person, sqlx::Error> {
    let uuid = person_uuid(ev.team_id, ev.distinct_id);
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO persons (uuid, team_id, properties, is_identified, created_at, version)
         VALUES ($1, $2, $3, $4, $5, 0) RETURNING id",
    )
    .bind(uuid)
    .bind(ev.team_id)
    .bind(sqlx::types::Json(&properties))
    .bind(is_identified)
    .bind(ev.timestamp)
    .fetch_one(&mut **tx)
    .await?;
    let person =
        Person { id, uuid, properties: Arc::new(properties), is_identified, created_at: ev.timestamp, version: 0 };
    add_distinct_id(tx, ev.team_id, ev.distinct_id, id, uuid, changes).await?;
    changes.persons.push((person.clone(), false));
    Ok(person)
}

pub(super) async fn save(tx: &mut Transaction<'_, Postgres>, p: &Person) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE persons SET properties = $2, is_identified = $3, created_at = $4, version = $5 WHERE id = $1")
        .bind(p.id)
        .bind(sqlx::types::Json(&*p.properties))
        .bind(p.is_identified)
        .bind(p.created_at)
        .bind(p.version)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub(super) async fn add_distinct_id(
    tx: &mut Transaction<'_, Postgres>,
    team_id: i64,
    distinct_id: &str,
    person_id: i64,
    person_uuid: Uuid,
    changes: &mut Changes,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO person_distinct_ids (team_id, distinct_id, person_id, version) VALUES ($1, $2, $3, 0)")
        .bind(team_id)
        .bind(distinct_id)
        .bind(person_id)
        .execute(&mut **tx)
        .await?;
    changes.distinct_ids.push((distinct_id.to_string(), person_uuid, 0));
    Ok(())
}

/// Moves every distinct id of `source` to `target`, merges properties (target wins),
/// keeps the earlier creation time, and deletes `source`.
pub(super) async fn merge_persons(
    tx: &mut Transaction<'_, Postgres>,
    team_id: i64,
    source: Person,
    mut target: Person,
    changes: &mut Changes,
) -> Result<(), sqlx::Error> {
    let moved = sqlx::query(
        "UPDATE person_distinct_ids SET person_id = $2, version = version + 1
         WHERE team_id = $3 AND person_id = $1 RETURNING distinct_id, version",
    )
    .bind(source.id)
    .bind(target.id)
    .bind(team_id)
    .fetch_all(&mut **tx)
    .await?;
    for row in moved {
        changes.distinct_ids.push((row.get("distinct_id"), target.uuid, row.get("version")));
    }
    let mut properties = (*source.properties).clone();
    for (k, v) in target.properties.iter() {
        properties.insert(k.clone(), v.clone());
    }
    target.properties = Arc::new(properties);
    target.created_at = target.created_at.min(source.created_at);
    target.version = target.version.max(source.version) + 1;
    target.is_identified = true;
    save(tx, &target).await?;
    sqlx::query("DELETE FROM persons WHERE id = $1").bind(source.id).execute(&mut **tx).await?;
    let deleted = Person { version: source.version + 1, ..source };
    changes.persons.push((deleted, true));
    changes.persons.push((target, false));
    Ok(())
}
