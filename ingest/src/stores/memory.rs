//! [`Stores`] in memory, for unit tests: teams as given, one person per distinct id with
//! the real property rules, group types and groups with the real `$group_set` rule, and
//! switches that make Postgres "go away" for every call or only the person step.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::Stores;
use crate::groups::{apply_set, Group, Stored, MAX_GROUP_TYPES};
use crate::persons::properties::Updates;
use crate::persons::{Changes, NewPerson, Person, PersonEvent};
use crate::resolve::Team;

#[derive(Default)]
pub(crate) struct Memory {
    pub teams: HashMap<String, Team>,
    /// Every call fails, as with Postgres unreachable.
    pub down: AtomicBool,
    /// Only the person step fails (a lock timeout, say).
    pub persons_down: AtomicBool,
    pub person_calls: AtomicUsize,
    /// What `create_persons` was asked to create, in order.
    pub created_ahead: Mutex<Vec<NewPerson>>,
    persons: Mutex<HashMap<(i64, String), Person>>,
    group_types: Mutex<HashMap<(i64, String), i16>>,
    groups: Mutex<HashMap<(i64, i16, String), Stored>>,
}

impl Memory {
    pub(crate) fn with_team(token: &str, team: Team) -> Self {
        Memory { teams: HashMap::from([(token.to_string(), team)]), ..Memory::default() }
    }

    fn answer(&self) -> Result<(), sqlx::Error> {
        if self.down.load(Ordering::Relaxed) {
            return Err(sqlx::Error::PoolTimedOut);
        }
        Ok(())
    }
}

impl Stores for Memory {
    async fn load_teams(&self, _tokens: &[&str]) -> Result<(), sqlx::Error> {
        self.answer()
    }

    async fn team(&self, token: &str) -> Result<Option<Team>, sqlx::Error> {
        self.answer()?;
        Ok(self.teams.get(token).cloned())
    }

    async fn prefetch_persons(
        &self,
        ids: &HashMap<i64, Vec<String>>,
    ) -> Result<HashMap<(i64, String), i64>, sqlx::Error> {
        self.answer()?;
        let persons = self.persons.lock().expect("persons lock");
        Ok(ids
            .iter()
            .flat_map(|(team, list)| list.iter().map(move |d| (*team, d.clone())))
            .filter_map(|key| persons.get(&key).map(|p| (key, p.id)))
            .collect())
    }

    /// Records what it was asked; each event then creates its person alone, which
    /// `create_persons` must match (the Postgres tests hold that).
    async fn create_persons(&self, new: Vec<NewPerson>) -> Result<(), sqlx::Error> {
        self.answer()?;
        self.created_ahead.lock().expect("created lock").extend(new);
        Ok(())
    }

    async fn person(&self, ev: &PersonEvent<'_>) -> Result<(Person, Changes), sqlx::Error> {
        self.answer()?;
        self.person_calls.fetch_add(1, Ordering::Relaxed);
        if self.persons_down.load(Ordering::Relaxed) {
            return Err(sqlx::Error::PoolTimedOut);
        }
        let mut persons = self.persons.lock().expect("persons lock");
        let next_id = persons.len() as i64 + 1;
        let updates = Updates::from_properties(ev.properties);
        let key = (ev.team_id, ev.distinct_id.to_string());
        let mut changes = Changes::default();
        let person = match persons.get_mut(&key) {
            Some(p) => {
                if updates.apply(std::sync::Arc::make_mut(&mut p.properties)) {
                    p.version += 1;
                    changes.persons.push((p.clone(), false));
                }
                p.clone()
            }
            None => {
                let (p, created) = NewPerson::of(ev).created(next_id);
                changes = created;
                persons.insert(key, p.clone());
                p
            }
        };
        Ok((person, changes))
    }

    async fn group_type_index(&self, team_id: i64, group_type: &str) -> Result<Option<i16>, sqlx::Error> {
        self.answer()?;
        let mut types = self.group_types.lock().expect("group types lock");
        if let Some(i) = types.get(&(team_id, group_type.to_string())) {
            return Ok(Some(*i));
        }
        let next = types.keys().filter(|(t, _)| *t == team_id).count() as i16;
        if next >= MAX_GROUP_TYPES {
            return Ok(None);
        }
        types.insert((team_id, group_type.to_string()), next);
        Ok(Some(next))
    }

    async fn upsert_group(
        &self,
        team_id: i64,
        type_index: i16,
        key: &str,
        set: &Map<String, Value>,
        at: OffsetDateTime,
    ) -> Result<Option<Group>, sqlx::Error> {
        self.answer()?;
        let mut groups = self.groups.lock().expect("groups lock");
        let slot = (team_id, type_index, key.to_string());
        let Some(next) = apply_set(groups.get(&slot).cloned(), set, at) else { return Ok(None) };
        groups.insert(slot, next.clone());
        Ok(Some(Group {
            type_index,
            key: key.to_string(),
            properties: next.properties,
            created_at: next.created_at,
            version: next.version,
        }))
    }
}
