//! Step 2: which team a token belongs to, from Postgres behind a bounded cache that
//! remembers absences too (a flood of events with a wrong token must not become a
//! flood of queries).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::PgPool;

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Team {
    pub id: i64,
    pub anonymize_ips: bool,
    pub person_processing_opt_out: bool,
}

pub struct TeamCache {
    pool: PgPool,
    ttl: Duration,
    max_entries: usize,
    entries: Mutex<HashMap<String, (Option<Team>, Instant)>>,
}

impl TeamCache {
    pub fn new(pool: PgPool, ttl: Duration, max_entries: usize) -> Self {
        TeamCache { pool, ttl, max_entries, entries: Mutex::default() }
    }

    /// `Ok(None)`: no team has this token. `Err`: Postgres could not answer, which is a
    /// reason to pause, not to drop.
    pub async fn get(&self, token: &str) -> Result<Option<Team>, sqlx::Error> {
        if let Some((team, at)) = self.entries.lock().expect("cache lock").get(token) {
            if at.elapsed() < self.ttl {
                return Ok(team.clone());
            }
        }
        let team = sqlx::query_as::<_, Team>(
            "SELECT id, anonymize_ips, person_processing_opt_out FROM teams WHERE api_token = $1",
        )
        .bind(token)
        .fetch_optional(&self.pool)
        .await?;
        let mut entries = self.entries.lock().expect("cache lock");
        if entries.len() >= self.max_entries {
            let ttl = self.ttl;
            entries.retain(|_, (_, at)| at.elapsed() < ttl);
            if entries.len() >= self.max_entries {
                entries.clear();
            }
        }
        entries.insert(token.to_string(), (team.clone(), Instant::now()));
        Ok(team)
    }
}
