//! What the batch's phases ask of Postgres, behind one trait: the servers' implementation
//! ([`Postgres`]) runs in production and the end-to-end tests, and an in-memory one
//! (`tests::Memory`, in `process.rs`) lets the steps' decisions be unit-tested without
//! servers, outages included.

use std::collections::HashMap;
use std::future::Future;

use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::groups::{Group, GroupStore};
use crate::persons::{Changes, NewPerson, Person, PersonEvent, PersonStore};
use crate::resolve::{Team, TeamCache};

/// Every error is Postgres not answering: the batch is retried, never dropped.
pub(crate) trait Stores: Sync {
    /// Makes the next [`Stores::team`] calls for these tokens cheap (one query for all).
    fn load_teams(&self, tokens: &[&str]) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// `None`: no team has this token.
    fn team(&self, token: &str) -> impl Future<Output = Result<Option<Team>, sqlx::Error>> + Send;

    /// Reads the persons of a batch's distinct ids at once; returns the person id of each
    /// distinct id that has one.
    fn prefetch_persons(
        &self,
        ids: &HashMap<i64, Vec<String>>,
    ) -> impl Future<Output = Result<HashMap<(i64, String), i64>, sqlx::Error>> + Send;

    /// Creates the persons the batch's events will create (after `prefetch_persons`);
    /// each event then reports its own from `person`, as if it had created it alone.
    fn create_persons(&self, new: Vec<NewPerson>) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// Applies one event to its person; the person after it, and what changed.
    fn person(&self, ev: &PersonEvent<'_>) -> impl Future<Output = Result<(Person, Changes), sqlx::Error>> + Send;

    /// The group type's index, assigned on first sight; `None` once the team has five.
    fn group_type_index(
        &self,
        team_id: i64,
        group_type: &str,
    ) -> impl Future<Output = Result<Option<i16>, sqlx::Error>> + Send;

    /// Merges `set` into the group; the group when it changed.
    fn upsert_group(
        &self,
        team_id: i64,
        type_index: i16,
        key: &str,
        set: &Map<String, Value>,
        at: OffsetDateTime,
    ) -> impl Future<Output = Result<Option<Group>, sqlx::Error>> + Send;
}

/// The stores on the Postgres server.
pub(crate) struct Postgres {
    pub teams: TeamCache,
    pub persons: PersonStore,
    pub groups: GroupStore,
}

impl Stores for Postgres {
    async fn load_teams(&self, tokens: &[&str]) -> Result<(), sqlx::Error> {
        self.teams.load(tokens).await
    }

    async fn team(&self, token: &str) -> Result<Option<Team>, sqlx::Error> {
        self.teams.get(token).await
    }

    async fn prefetch_persons(
        &self,
        ids: &HashMap<i64, Vec<String>>,
    ) -> Result<HashMap<(i64, String), i64>, sqlx::Error> {
        self.persons.prefetch(ids).await
    }

    async fn create_persons(&self, new: Vec<NewPerson>) -> Result<(), sqlx::Error> {
        self.persons.create_new(new).await
    }

    async fn person(&self, ev: &PersonEvent<'_>) -> Result<(Person, Changes), sqlx::Error> {
        self.persons.process(ev).await
    }

    async fn group_type_index(&self, team_id: i64, group_type: &str) -> Result<Option<i16>, sqlx::Error> {
        self.groups.type_index(team_id, group_type).await
    }

    async fn upsert_group(
        &self,
        team_id: i64,
        type_index: i16,
        key: &str,
        set: &Map<String, Value>,
        at: OffsetDateTime,
    ) -> Result<Option<Group>, sqlx::Error> {
        self.groups.upsert(team_id, type_index, key, set, at).await
    }
}

#[cfg(test)]
pub(crate) mod memory;
