//! Step 3: restrictions an operator sets for a token or a `token:distinct_id`: drop its
//! events, or skip person processing for them (a bot hammering one person, say).
//!
//! Two sources, either enough: the configuration (fixed for the process's life) and
//! Redis, re-read in the background so a restriction takes effect without a restart.
//! Redis keeps capture's layout (sorted sets whose members apply until the epoch second
//! of their score; key names in `sluice_schema::redis_keys`). Lists not refreshed for a
//! while are forgotten (fail open: a restriction lost means events processed, never
//! events lost).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use sluice_common::every::Every;
use sluice_common::expiring::{self, ExpiringSets, Fresh, Messages};
use sluice_schema::redis_keys;
use tokio::sync::watch;

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

pub(crate) struct Restrictions {
    configured: Sets,
    from_redis: Fresh<Sets>,
}

impl Restrictions {
    /// From comma separated `token` or `token:distinct_id` lists.
    pub(crate) fn parse(drop: &str, skip_persons: &str, redis_stale_after: Duration) -> Self {
        let list = |s: &str| s.split(',').map(str::trim).filter(|e| !e.is_empty()).map(str::to_string).collect();
        Restrictions {
            configured: Sets { drop: list(drop), skip_persons: list(skip_persons) },
            from_redis: Fresh::new(redis_stale_after),
        }
    }

    pub(crate) fn drops(&self, token: &str, distinct_id: &str) -> bool {
        self.configured.drops(token, distinct_id) || self.redis(|s| s.drops(token, distinct_id))
    }

    pub(crate) fn skips_persons(&self, token: &str, distinct_id: &str) -> bool {
        self.configured.skips_persons(token, distinct_id) || self.redis(|s| s.skips_persons(token, distinct_id))
    }

    fn redis(&self, f: impl Fn(&Sets) -> bool) -> bool {
        self.from_redis.get().is_some_and(|sets| f(&sets))
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

/// Re-reads the Redis restrictions every `interval` until `stop` changes. An empty URL
/// turns Redis restrictions off.
pub(crate) fn spawn_refresher(
    restrictions: Arc<Restrictions>,
    settings: RedisSettings,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Some(client) = settings.client else { return };
        let keys = [
            redis_keys::restrict_drop_events(&settings.key_prefix),
            redis_keys::restrict_skip_persons(&settings.key_prefix),
        ];
        let messages = Messages {
            failing: "restrictions cannot be read from redis; keeping the last until they go stale",
            still_failing: "reading restrictions from redis failed; keeping the last until they go stale",
            recovered: "restrictions readable from redis again",
        };
        let reader = ExpiringSets::new(client, settings.timeout);
        expiring::refresh(reader, &keys, Every::now(settings.interval, stop), messages, |read| match read {
            Some(sets) => {
                let [drop, skip_persons]: [HashSet<String>; 2] = sets.try_into().expect("one set per key");
                restrictions.from_redis.replace(Sets { drop, skip_persons });
            }
            None => crate::telemetry::dependency_retry("redis"),
        })
        .await
    })
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
        assert!(!Restrictions::parse("", "", Duration::from_secs(60)).drops("phc_a", "x"));
    }

    #[test]
    fn redis_lists_add_to_configuration_until_they_go_stale() {
        let r = Restrictions::parse("phc_a", "", Duration::from_millis(30));
        r.from_redis
            .replace(Sets { drop: ["phc_r:bot".to_string()].into(), skip_persons: ["phc_s".to_string()].into() });
        assert!(r.drops("phc_a", "x"));
        assert!(r.drops("phc_r", "bot"));
        assert!(r.skips_persons("phc_s", "anyone"));
        std::thread::sleep(Duration::from_millis(40));
        assert!(!r.drops("phc_r", "bot"), "stale: forgotten");
        assert!(!r.skips_persons("phc_s", "anyone"));
        assert!(r.drops("phc_a", "x"), "configuration stays");
    }
}
