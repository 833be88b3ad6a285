//! Step 3: restrictions an operator sets for a token or a `token:distinct_id`: drop its
//! events, or skip person processing for them (a bot hammering one person, say).
//!
//! Two sources, either enough: the configuration (fixed for the process's life) and
//! Redis, re-read in the background so a restriction takes effect without a restart.
//! Redis keeps capture's layout: sorted sets `<prefix>ingest-restrictions/drop-events`
//! and `<prefix>ingest-restrictions/skip-persons` whose members apply until the epoch
//! second of their score. Lists not refreshed for a while are forgotten (fail open: a
//! restriction lost means events processed, never events lost).

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redis::AsyncConnectionConfig;
use tracing::debug;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Sets {
    drop: HashSet<String>,
    skip_persons: HashSet<String>,
}

impl Sets {
    fn drops(&self, token: &str, distinct_id: &str) -> bool {
        matches(&self.drop, token, distinct_id)
    }
    fn skips_persons(&self, token: &str, distinct_id: &str) -> bool {
        matches(&self.skip_persons, token, distinct_id)
    }
}

#[derive(Debug, Default)]
pub(crate) struct Restrictions {
    configured: Sets,
    from_redis: RwLock<Option<(Sets, Instant)>>,
    stale_after: Duration,
}

impl Restrictions {
    /// From comma separated `token` or `token:distinct_id` lists.
    pub(crate) fn parse(drop: &str, skip_persons: &str, redis_stale_after: Duration) -> Self {
        let list = |s: &str| s.split(',').map(str::trim).filter(|e| !e.is_empty()).map(str::to_string).collect();
        Restrictions {
            configured: Sets { drop: list(drop), skip_persons: list(skip_persons) },
            from_redis: RwLock::default(),
            stale_after: redis_stale_after,
        }
    }

    pub(crate) fn drops(&self, token: &str, distinct_id: &str) -> bool {
        self.configured.drops(token, distinct_id) || self.redis(|s| s.drops(token, distinct_id))
    }

    pub(crate) fn skips_persons(&self, token: &str, distinct_id: &str) -> bool {
        self.configured.skips_persons(token, distinct_id) || self.redis(|s| s.skips_persons(token, distinct_id))
    }

    fn redis(&self, f: impl Fn(&Sets) -> bool) -> bool {
        match &*self.from_redis.read().expect("restrictions lock") {
            Some((sets, at)) if at.elapsed() <= self.stale_after => f(sets),
            _ => false,
        }
    }

    fn replace_from_redis(&self, sets: Sets) {
        *self.from_redis.write().expect("restrictions lock") = Some((sets, Instant::now()));
    }
}

fn matches(set: &HashSet<String>, token: &str, distinct_id: &str) -> bool {
    !set.is_empty() && (set.contains(token) || set.contains(&sluice_schema::kafka_key(token, distinct_id)))
}

pub(crate) struct RedisSettings {
    /// `None` when the operator turned Redis off.
    pub client: Option<redis::Client>,
    pub key_prefix: String,
    pub interval: Duration,
    pub timeout: Duration,
}

/// Re-reads the Redis restrictions every `interval` while the process runs. An empty
/// URL turns Redis restrictions off.
pub(crate) fn spawn_refresher(restrictions: Arc<Restrictions>, settings: RedisSettings) {
    let Some(client) = settings.client.clone() else { return };
    tokio::spawn(async move {
        let mut conn = None;
        let mut ticks = tokio::time::interval(settings.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match read(&client, &mut conn, &settings).await {
                Ok(sets) => restrictions.replace_from_redis(sets),
                Err(e) => {
                    conn = None;
                    crate::telemetry::dependency_retry("redis");
                    debug!(error = %e, "reading restrictions from redis failed; keeping the last until they go stale");
                }
            }
        }
    });
}

async fn read(
    client: &redis::Client,
    conn: &mut Option<redis::aio::MultiplexedConnection>,
    settings: &RedisSettings,
) -> redis::RedisResult<Sets> {
    if conn.is_none() {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(settings.timeout)
            .set_response_timeout(settings.timeout);
        *conn = Some(client.get_multiplexed_async_connection_with_config(&config).await?);
    }
    let c = conn.as_mut().expect("connection set above");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let key = |name: &str| format!("{}ingest-restrictions/{name}", settings.key_prefix);
    let drop = live_members(c, &key("drop-events"), now).await?;
    let skip_persons = live_members(c, &key("skip-persons"), now).await?;
    Ok(Sets { drop, skip_persons })
}

/// Members whose expiry (score) is not past.
async fn live_members(
    c: &mut redis::aio::MultiplexedConnection,
    key: &str,
    now: i64,
) -> redis::RedisResult<HashSet<String>> {
    let members: Vec<String> = redis::cmd("ZRANGEBYSCORE").arg(key).arg(now).arg("+inf").query_async(c).await?;
    Ok(members.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_token_or_token_and_distinct_id() {
        let r = Restrictions::parse("phc_a, phc_b:bot ,", "phc_c:crawler", Duration::from_secs(60));
        assert!(r.drops("phc_a", "anyone"));
        assert!(r.drops("phc_b", "bot"));
        assert!(!r.drops("phc_b", "human"));
        assert!(r.skips_persons("phc_c", "crawler"));
        assert!(!r.skips_persons("phc_c", "human"));
        assert!(!Restrictions::default().drops("phc_a", "x"));
    }

    #[test]
    fn redis_lists_add_to_configuration_until_they_go_stale() {
        let r = Restrictions::parse("phc_a", "", Duration::from_millis(30));
        r.replace_from_redis(Sets {
            drop: ["phc_r:bot".to_string()].into(),
            skip_persons: ["phc_s".to_string()].into(),
        });
        assert!(r.drops("phc_a", "x"));
        assert!(r.drops("phc_r", "bot"));
        assert!(r.skips_persons("phc_s", "anyone"));
        std::thread::sleep(Duration::from_millis(40));
        assert!(!r.drops("phc_r", "bot"), "stale: forgotten");
        assert!(!r.skips_persons("phc_s", "anyone"));
        assert!(r.drops("phc_a", "x"), "configuration stays");
    }
}
