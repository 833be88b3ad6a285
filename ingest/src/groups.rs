//! Step 9: groups. Each team's group types get an index 0..4 on first sight; events
//! carry `$group_<index>` = key; `$groupidentify` upserts the group's properties.

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::{Map, Value};
use sqlx::PgPool;
use time::OffsetDateTime;

/// PostHog's limit, which its queries assume.
pub(crate) const MAX_GROUP_TYPES: i16 = 5;

/// A group as written, for ClickHouse.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Group {
    pub type_index: i16,
    pub key: String,
    pub properties: Map<String, Value>,
    pub created_at: OffsetDateTime,
    pub version: i64,
}

pub(crate) struct GroupStore {
    pool: PgPool,
    /// (team, type) → index; an index never changes once assigned, so it is cached forever
    /// (bounded: at most five per team).
    indexes: Mutex<HashMap<(i64, String), i16>>,
}

impl GroupStore {
    pub(crate) fn new(pool: PgPool) -> Self {
        GroupStore { pool, indexes: Mutex::default() }
    }

    /// The type's index, assigning the next free one; `None` once the team has five.
    pub(crate) async fn type_index(&self, team_id: i64, group_type: &str) -> Result<Option<i16>, sqlx::Error> {
        if let Some(i) = self.indexes.lock().expect("lock").get(&(team_id, group_type.to_string())) {
            return Ok(Some(*i));
        }
        for _ in 0..3 {
            let inserted = sqlx::query(
                "INSERT INTO group_type_mappings (team_id, group_type, group_type_index)
                 SELECT $1, $2, COALESCE(MAX(group_type_index) + 1, 0) FROM group_type_mappings WHERE team_id = $1
                 HAVING COALESCE(MAX(group_type_index) + 1, 0) < $3
                 ON CONFLICT (team_id, group_type) DO NOTHING",
            )
            .bind(team_id)
            .bind(group_type)
            .bind(MAX_GROUP_TYPES)
            .execute(&self.pool)
            .await;
            match inserted {
                // Another process took the same index for another type at the same time.
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => continue,
                Err(e) => return Err(e),
                Ok(_) => break,
            }
        }
        let index: Option<i16> = sqlx::query_scalar(
            "SELECT group_type_index FROM group_type_mappings WHERE team_id = $1 AND group_type = $2",
        )
        .bind(team_id)
        .bind(group_type)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(i) = index {
            self.indexes.lock().expect("lock").insert((team_id, group_type.to_string()), i);
        }
        Ok(index)
    }

    /// Merges `set` into the group's properties; returns the group when it changed.
    pub(crate) async fn upsert(
        &self,
        team_id: i64,
        type_index: i16,
        key: &str,
        set: &Map<String, Value>,
        at: OffsetDateTime,
    ) -> Result<Option<Group>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let existing: Option<(sqlx::types::Json<Value>, OffsetDateTime, i64)> = sqlx::query_as(
            "SELECT group_properties, created_at, version FROM groups WHERE team_id = $1 AND group_type_index = $2 AND group_key = $3 FOR UPDATE",
        )
        .bind(team_id)
        .bind(type_index)
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
        let existing = existing.map(|(props, created_at, version)| Stored {
            properties: props.0.as_object().cloned().unwrap_or_default(),
            created_at,
            version,
        });
        let Some(Stored { properties, created_at, version }) = apply_set(existing, set, at) else {
            return Ok(None);
        };
        sqlx::query(
            "INSERT INTO groups (team_id, group_type_index, group_key, group_properties, created_at, version)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (team_id, group_type_index, group_key) DO UPDATE SET group_properties = $4, version = $6",
        )
        .bind(team_id)
        .bind(type_index)
        .bind(key)
        .bind(sqlx::types::Json(Value::Object(properties.clone())))
        .bind(created_at)
        .bind(version)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(Group { type_index, key: key.to_string(), properties, created_at, version }))
    }
}

/// A group's row in Postgres.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Stored {
    pub properties: Map<String, Value>,
    pub created_at: OffsetDateTime,
    pub version: i64,
}

/// The group after a `$groupidentify`'s `$group_set`: a new group is written even with
/// nothing set (it exists from then on); an existing one only when a value changes, and
/// then with the next version. `None`: nothing to write, no row.
pub(crate) fn apply_set(existing: Option<Stored>, set: &Map<String, Value>, at: OffsetDateTime) -> Option<Stored> {
    let Some(mut group) = existing else {
        return Some(Stored { properties: set.clone(), created_at: at, version: 0 });
    };
    let mut changed = false;
    for (k, v) in set {
        if group.properties.get(k) != Some(v) {
            group.properties.insert(k.clone(), v.clone());
            changed = true;
        }
    }
    changed.then(|| Stored { version: group.version + 1, ..group })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    fn set(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn a_group_is_written_when_new_or_changed_and_versioned() {
        let t0 = datetime!(2026-01-01 00:00 UTC);
        let t1 = datetime!(2026-02-01 00:00 UTC);
        let new = apply_set(None, &Map::new(), t0).expect("a new group is written even with nothing set");
        assert_eq!((new.version, new.created_at, new.properties.len()), (0, t0, 0));

        let stored = Stored { properties: set(json!({"name": "Acme", "size": 10})), created_at: t0, version: 3 };
        assert_eq!(apply_set(Some(stored.clone()), &set(json!({"name": "Acme"})), t1), None, "nothing changed");
        assert_eq!(apply_set(Some(stored.clone()), &Map::new(), t1), None);

        let next = apply_set(Some(stored), &set(json!({"size": 12, "plan": "pro"})), t1).unwrap();
        assert_eq!(next.properties, set(json!({"name": "Acme", "size": 12, "plan": "pro"})), "merged, not replaced");
        assert_eq!((next.version, next.created_at), (4, t0), "next version; created_at kept");
    }
}
