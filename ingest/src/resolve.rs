//! Step 2: which team a token belongs to, from Postgres behind a bounded cache that
//! remembers absences too (a flood of events with a wrong token must not become a
//! flood of queries). A batch's tokens are looked up together, in one query.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::PgPool;

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub(crate) struct Team {
    pub id: i64,
    pub anonymize_ips: bool,
    pub person_processing_opt_out: bool,
}

#[derive(sqlx::FromRow)]
struct TeamRow {
    api_token: String,
    #[sqlx(flatten)]
    team: Team,
}

pub(crate) struct TeamCache {
    pool: PgPool,
    ttl: Duration,
    entries: Mutex<Entries>,
}

/// token → (team or known absence, expiry), at most `max` of them.
#[derive(Default)]
struct Entries {
    map: HashMap<String, (Option<Team>, Instant)>,
    max: usize,
}

impl Entries {
    fn get(&self, token: &str, now: Instant) -> Option<Option<Team>> {
        let (team, expires) = self.map.get(token)?;
        (*expires > now).then(|| team.clone())
    }

    /// Makes room by forgetting the expired, then everything: the cache is rebuilt from
    /// the next batches' lookups, which cost a query each, not an outage.
    fn insert(&mut self, token: &str, team: Option<Team>, expires: Instant, now: Instant) {
        if self.map.len() >= self.max && !self.map.contains_key(token) {
            self.map.retain(|_, (_, e)| *e > now);
            if self.map.len() >= self.max {
                self.map.clear();
            }
        }
        self.map.insert(token.to_string(), (team, expires));
    }
}

impl TeamCache {
    pub(crate) fn new(pool: PgPool, ttl: Duration, max_entries: usize) -> Self {
        TeamCache { pool, ttl, entries: Mutex::new(Entries { map: HashMap::new(), max: max_entries.max(1) }) }
    }

    /// `Ok(None)`: no team has this token. `Err`: Postgres could not answer, which is a
    /// reason to pause, not to drop.
    pub(crate) async fn get(&self, token: &str) -> Result<Option<Team>, sqlx::Error> {
        if let Some(team) = self.cached(token) {
            return Ok(team);
        }
        self.load(&[token]).await?;
        Ok(self.cached(token).flatten())
    }

    /// Makes sure every token is cached, with one query for all that are not.
    pub(crate) async fn load(&self, tokens: &[&str]) -> Result<(), sqlx::Error> {
        let mut missing: Vec<&str> = tokens.iter().copied().filter(|t| self.cached(t).is_none()).collect();
        if missing.is_empty() {
            return Ok(());
        }
        missing.sort_unstable();
        missing.dedup();
        let rows: Vec<TeamRow> = sqlx::query_as(
            "SELECT api_token, id, anonymize_ips, person_processing_opt_out FROM teams WHERE api_token = ANY($1)",
        )
        .bind(&missing)
        .fetch_all(&self.pool)
        .await?;
        let mut found: HashMap<String, Team> = rows.into_iter().map(|r| (r.api_token, r.team)).collect();
        let mut entries = self.entries.lock().expect("cache lock");
        let now = Instant::now();
        for token in missing {
            // Spread expiries ±10% so that tokens cached together are not all looked up
            // again in the same batch.
            let ttl = self.ttl.mul_f64(0.9 + fastrand::f64() * 0.2);
            entries.insert(token, found.remove(token), now + ttl, now);
        }
        Ok(())
    }

    /// `None`: not cached (or expired); `Some(None)`: known to have no team.
    fn cached(&self, token: &str) -> Option<Option<Team>> {
        self.entries.lock().expect("cache lock").get(token, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn team(id: i64) -> Option<Team> {
        Some(Team { id, anonymize_ips: false, person_processing_opt_out: false })
    }

    #[test]
    fn remembers_teams_and_absences_until_they_expire() {
        let now = Instant::now();
        let mut e = Entries { map: HashMap::new(), max: 10 };
        e.insert("phc_a", team(1), now + Duration::from_secs(30), now);
        e.insert("phc_wrong", None, now + Duration::from_secs(30), now);
        assert_eq!(e.get("phc_a", now), Some(team(1)));
        assert_eq!(e.get("phc_wrong", now), Some(None));
        assert_eq!(e.get("phc_other", now), None);
        assert_eq!(e.get("phc_a", now + Duration::from_secs(31)), None);
    }

    #[test]
    fn never_holds_more_than_its_limit() {
        let now = Instant::now();
        let mut e = Entries { map: HashMap::new(), max: 3 };
        e.insert("old", team(1), now + Duration::from_secs(1), now);
        e.insert("b", team(2), now + Duration::from_secs(60), now);
        e.insert("c", team(3), now + Duration::from_secs(60), now);
        let later = now + Duration::from_secs(2);
        // Full: the expired entry makes room first.
        e.insert("d", team(4), later + Duration::from_secs(60), later);
        assert_eq!(e.map.len(), 3);
        assert_eq!(e.get("b", later), Some(team(2)));
        // Full of live entries: start over rather than grow.
        e.insert("e", team(5), later + Duration::from_secs(60), later);
        assert!(e.map.len() <= 3);
        assert_eq!(e.get("e", later), Some(team(5)));
        for i in 0..100 {
            e.insert(&format!("t{i}"), None, later + Duration::from_secs(60), later);
            assert!(e.map.len() <= 3);
        }
    }
}
