//! Step 8: persons in Postgres.
//!
//! Each event is one transaction: the person rows it touches are locked (`FOR UPDATE`),
//! so two ingest processes merging the same people serialize; a unique-key race (two
//! processes creating the same distinct id at once) is retried a bounded number of
//! times. The decisions themselves are pure ([`merge`], [`properties`]).

pub(crate) mod merge;
pub(crate) mod properties;
mod store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{json, Map, Value};
use sluice_schema::person_uuid;
use sqlx::{PgPool, Row};
use time::OffsetDateTime;
use uuid::Uuid;

use self::merge::{Decision, PersonRef};
use self::properties::Updates;
use self::store::{
    add_distinct_id, create, find, lost_race, merge_persons, person_from_row, save, CREATE_PERSONS,
    PERSONS_OF_DISTINCT_IDS, PERSON_OF_DISTINCT_ID,
};

/// Attempts of one event's transaction when it loses a race (see [`lost_race`]).
const MAX_ATTEMPTS: u32 = 3;

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Person {
    pub id: i64,
    pub uuid: Uuid,
    /// Shared: a known person's properties go from the batch's view into each of its
    /// events' rows, and copying (then freeing) them per event was a measurable share of
    /// a returning person's cost. Changed through `Arc::make_mut`.
    pub properties: Arc<Map<String, Value>>,
    pub is_identified: bool,
    pub created_at: OffsetDateTime,
    pub version: i64,
}

impl Person {
    fn as_ref(&self) -> PersonRef {
        PersonRef { id: self.id, is_identified: self.is_identified }
    }
}

/// Everything an event changed, for ClickHouse and the warnings table.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    /// Persons written, with `is_deleted`.
    pub persons: Vec<(Person, bool)>,
    /// `(distinct_id, person uuid, version)` rows.
    pub distinct_ids: Vec<(String, Uuid, i64)>,
    pub warnings: Vec<(&'static str, Value)>,
}

/// What the person step reads from an event.
pub(crate) struct PersonEvent<'a> {
    pub team_id: i64,
    pub event: &'a str,
    pub distinct_id: &'a str,
    pub properties: &'a Map<String, Value>,
    pub timestamp: OffsetDateTime,
}

impl<'a> PersonEvent<'a> {
    /// The id this event merges into its own distinct_id, if it is a merge.
    pub(crate) fn merge_source(&self) -> Option<&'a str> {
        self.properties.get(merge_source_property(self.event)?).and_then(Value::as_str)
    }
}

/// The property naming the id a merge event merges into its `distinct_id`.
pub(crate) fn merge_source_property(event: &str) -> Option<&'static str> {
    match event {
        "$identify" => Some("$anon_distinct_id"),
        "$create_alias" | "$merge_dangerously" => Some("alias"),
        _ => None,
    }
}

/// A person an event of the batch will create, created ahead with the others
/// (`PersonStore::create_new`), or alone by its event (`create_alone`): the same rows.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NewPerson {
    pub team_id: i64,
    pub distinct_id: String,
    pub properties: Map<String, Value>,
    pub created_at: OffsetDateTime,
}

impl NewPerson {
    pub(crate) fn of(ev: &PersonEvent<'_>) -> NewPerson {
        NewPerson {
            team_id: ev.team_id,
            distinct_id: ev.distinct_id.to_string(),
            properties: Updates::from_properties(ev.properties).initial(),
            created_at: ev.timestamp,
        }
    }

    /// The person and rows its event reports, as if it had created it alone.
    pub(crate) fn created(self, id: i64) -> (Person, Changes) {
        let uuid = person_uuid(self.team_id, &self.distinct_id);
        let person = Person {
            id,
            uuid,
            properties: Arc::new(self.properties),
            is_identified: false,
            created_at: self.created_at,
            version: 0,
        };
        let changes = Changes {
            persons: vec![(person.clone(), false)],
            distinct_ids: vec![(self.distinct_id, uuid, 0)],
            warnings: Vec::new(),
        };
        (person, changes)
    }
}

/// What the batch being processed knows of its persons: `None` is a distinct id known to
/// have no person.
type BatchPersons = HashMap<(i64, String), Option<Person>>;

pub(crate) struct PersonStore {
    pool: PgPool,
    /// Filled once per batch by [`PersonStore::prefetch`] and kept current by this
    /// process's own writes, so most events cost no query. Cleared with each batch: a
    /// merge made by another ingest process is seen from the next batch on.
    batch: Mutex<BatchPersons>,
    /// Persons created ahead for the batch ([`PersonStore::create_new`]), each waiting
    /// for the event that creates it to take what it reports.
    created: Mutex<HashMap<(i64, String), (Person, Changes)>>,
}

impl PersonStore {
    pub(crate) fn new(pool: PgPool) -> Self {
        PersonStore { pool, batch: Mutex::default(), created: Mutex::default() }
    }

    /// Reads, in one query per team, the persons of every distinct id of a batch;
    /// returns the person id of each distinct id that has one.
    pub(crate) async fn prefetch(
        &self,
        ids: &HashMap<i64, Vec<String>>,
    ) -> Result<HashMap<(i64, String), i64>, sqlx::Error> {
        let mut known: BatchPersons = HashMap::new();
        for (team_id, distinct_ids) in ids {
            for d in distinct_ids {
                known.insert((*team_id, d.clone()), None);
            }
            let rows =
                sqlx::query(PERSONS_OF_DISTINCT_IDS).bind(team_id).bind(distinct_ids).fetch_all(&self.pool).await?;
            for row in rows {
                let distinct_id: String = row.get("distinct_id");
                known.insert((*team_id, distinct_id), Some(person_from_row(row)));
            }
        }
        let person_ids = known.iter().filter_map(|(k, p)| Some((k.clone(), p.as_ref()?.id))).collect();
        *self.batch.lock().expect("batch lock") = known;
        self.created.lock().expect("created lock").clear();
        Ok(person_ids)
    }

    /// Creates the batch's new persons with their distinct ids in one statement. Another
    /// process creating one of them meanwhile fails the statement on a unique key, and
    /// then none is created ahead: each event creates its own as before, and the one that
    /// lost the race finds the other's.
    pub(crate) async fn create_new(&self, new: Vec<NewPerson>) -> Result<(), sqlx::Error> {
        if new.is_empty() {
            return Ok(());
        }
        let mut ids = match self.insert_new(&new).await {
            Ok(ids) => ids,
            Err(e) if lost_race(&e) => return Ok(()),
            Err(e) => return Err(e),
        };
        let (mut batch, mut created) =
            (self.batch.lock().expect("batch lock"), self.created.lock().expect("created lock"));
        for p in new {
            let key = (p.team_id, p.distinct_id.clone());
            let Some(id) = ids.remove(&key) else { continue };
            let (person, changes) = p.created(id);
            batch.insert(key.clone(), Some(person.clone()));
            created.insert(key, (person, changes));
        }
        Ok(())
    }

    /// Inserts new persons with their first distinct ids in one statement; the person id
    /// of each `(team, distinct id)`. Fails whole on a unique key another process took.
    async fn insert_new(&self, new: &[NewPerson]) -> Result<HashMap<(i64, String), i64>, sqlx::Error> {
        let mut columns = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for p in new {
            columns.0.push(person_uuid(p.team_id, &p.distinct_id));
            columns.1.push(p.team_id);
            columns.2.push(sqlx::types::Json(&p.properties));
            columns.3.push(p.created_at);
            columns.4.push(p.distinct_id.as_str());
        }
        let rows = sqlx::query(CREATE_PERSONS)
            .bind(columns.0)
            .bind(columns.1)
            .bind(columns.2)
            .bind(columns.3)
            .bind(columns.4)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|r| ((r.get("team_id"), r.get("distinct_id")), r.get("person_id"))).collect())
    }

    /// Applies one event; returns the event's person (after the event) and what changed.
    pub(crate) async fn process(&self, ev: &PersonEvent<'_>) -> Result<(Person, Changes), sqlx::Error> {
        // Most events are a known person's and change nothing (the same $set again): the
        // batch's prefetch (or one plain read) answers them, without a transaction or lock.
        if ev.merge_source().is_none() {
            let key = (ev.team_id, ev.distinct_id.to_string());
            if let Some(done) = self.created.lock().expect("created lock").remove(&key) {
                return Ok(done);
            }
            let cached = self.batch.lock().expect("batch lock").get(&key).cloned();
            let current = match cached {
                Some(known) => known,
                None => sqlx::query(PERSON_OF_DISTINCT_ID)
                    .bind(ev.team_id)
                    .bind(ev.distinct_id)
                    .fetch_optional(&self.pool)
                    .await?
                    .map(person_from_row),
            };
            match current {
                Some(person) => {
                    if !Updates::would_change(ev.properties, &person.properties) {
                        return Ok((person, Changes::default()));
                    }
                }
                // A new person: one statement creates it with its distinct id. Losing a
                // race to another process fails on the unique keys, and the locked path
                // below then finds what the other one created.
                None => match self.create_alone(ev).await {
                    Ok((person, changes)) => {
                        self.remember(ev, &person, &changes);
                        return Ok((person, changes));
                    }
                    Err(e) if lost_race(&e) => {}
                    Err(e) => return Err(e),
                },
            }
        }
        let mut attempt = 1;
        loop {
            match self.try_process(ev).await {
                Err(e) if lost_race(&e) && attempt < MAX_ATTEMPTS => attempt += 1,
                Ok((person, changes)) => {
                    self.remember(ev, &person, &changes);
                    return Ok((person, changes));
                }
                other => return other,
            }
        }
    }

    async fn create_alone(&self, ev: &PersonEvent<'_>) -> Result<(Person, Changes), sqlx::Error> {
        let new = NewPerson::of(ev);
        let id = self.insert_new(std::slice::from_ref(&new)).await?.into_values().next();
        Ok(new.created(id.ok_or(sqlx::Error::RowNotFound)?))
    }

    /// Keeps the batch's view current after a write of this process.
    fn remember(&self, ev: &PersonEvent<'_>, person: &Person, changes: &Changes) {
        let mut batch = self.batch.lock().expect("batch lock");
        // Entries of a person deleted by a merge, or of the person just changed, are stale.
        let stale: Vec<i64> = changes.persons.iter().map(|(p, _)| p.id).chain([person.id]).collect();
        batch.retain(|_, p| p.as_ref().is_none_or(|p| !stale.contains(&p.id)));
        for (distinct_id, uuid, _) in &changes.distinct_ids {
            if *uuid == person.uuid {
                batch.insert((ev.team_id, distinct_id.clone()), Some(person.clone()));
            }
        }
        batch.insert((ev.team_id, ev.distinct_id.to_string()), Some(person.clone()));
    }

    async fn try_process(&self, ev: &PersonEvent<'_>) -> Result<(Person, Changes), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let mut changes = Changes::default();
        let updates = Updates::from_properties(ev.properties);
        let mut identified_now = false;

        if let Some(source) = ev.merge_source() {
            let target_person = find(&mut tx, ev.team_id, ev.distinct_id).await?;
            let source_person = find(&mut tx, ev.team_id, source).await?;
            let dangerous = ev.event == "$merge_dangerously";
            match merge::decide(
                ev.distinct_id,
                source,
                target_person.as_ref().map(Person::as_ref),
                source_person.as_ref().map(Person::as_ref),
                dangerous,
            ) {
                Decision::Nothing => identified_now = ev.distinct_id != source,
                Decision::IllegalId => changes.warnings.push((
                    "cannot_merge_with_illegal_distinct_id",
                    json!({"event": ev.event, "distinct_id": ev.distinct_id, "other": source}),
                )),
                Decision::RefuseAlreadyIdentified => changes.warnings.push((
                    "cannot_merge_already_identified",
                    json!({"event": ev.event, "distinct_id": ev.distinct_id, "other": source}),
                )),
                Decision::AttachSourceToTarget { person } => {
                    let p = target_person.expect("decided on its presence");
                    add_distinct_id(&mut tx, ev.team_id, source, person.id, p.uuid, &mut changes).await?;
                    identified_now = true;
                }
                Decision::AttachTargetToSource { person } => {
                    let p = source_person.expect("decided on its presence");
                    add_distinct_id(&mut tx, ev.team_id, ev.distinct_id, person.id, p.uuid, &mut changes).await?;
                    identified_now = true;
                }
                Decision::CreateWithBoth => {
                    let p = create(&mut tx, ev, updates.initial(), true, &mut changes).await?;
                    add_distinct_id(&mut tx, ev.team_id, source, p.id, p.uuid, &mut changes).await?;
                    identified_now = true;
                }
                Decision::Merge { .. } => {
                    let (source_p, target_p) = (source_person.expect("present"), target_person.expect("present"));
                    merge_persons(&mut tx, ev.team_id, source_p, target_p, &mut changes).await?;
                    identified_now = true;
                }
            }
        }

        let person = match find(&mut tx, ev.team_id, ev.distinct_id).await? {
            None => create(&mut tx, ev, updates.initial(), identified_now, &mut changes).await?,
            Some(mut p) => {
                let mut changed = updates.apply(Arc::make_mut(&mut p.properties));
                if identified_now && !p.is_identified {
                    p.is_identified = true;
                    changed = true;
                }
                // A person merged into just now was already written by the merge.
                let merged = changes.persons.iter().any(|(q, deleted)| q.id == p.id && !deleted);
                if changed {
                    if !merged {
                        p.version += 1;
                    }
                    save(&mut tx, &p).await?;
                    changes.persons.retain(|(q, _)| q.id != p.id);
                    changes.persons.push((p.clone(), false));
                }
                p
            }
        };
        tx.commit().await?;
        Ok((person, changes))
    }
}
