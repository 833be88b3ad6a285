//! Lists kept in Redis that change what capture does with a token or key: quota limits
//! and forced overflow. They are read in the background, never on the request path,
//! and a list that could not be refreshed for a while is forgotten: capture fails open.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redis::AsyncConnectionConfig;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::every::{Every, Failures};
use crate::telemetry;

/// One list's members as last read, valid for `stale_after`.
#[derive(Clone)]
pub(crate) struct LimitList {
    state: Arc<RwLock<ListState>>,
    stale_after: Duration,
}

#[derive(Default)]
struct ListState {
    members: Arc<HashSet<String>>,
    refreshed: Option<Instant>,
}

impl LimitList {
    pub(crate) fn new(stale_after: Duration) -> Self {
        LimitList { state: Arc::default(), stale_after }
    }

    pub(crate) fn contains(&self, member: &str) -> bool {
        let state = self.state.read().expect("limit list lock poisoned");
        match state.refreshed {
            Some(at) if at.elapsed() <= self.stale_after => state.members.contains(member),
            _ => false,
        }
    }

    /// Whether the list was read recently enough to be believed.
    pub(crate) fn is_fresh(&self) -> bool {
        let state = self.state.read().expect("limit list lock poisoned");
        state.refreshed.is_some_and(|at| at.elapsed() <= self.stale_after)
    }

    pub(crate) fn is_empty(&self) -> bool {
        let state = self.state.read().expect("limit list lock poisoned");
        state.members.is_empty() || state.refreshed.is_none_or(|at| at.elapsed() > self.stale_after)
    }

    pub(crate) fn replace(&self, members: HashSet<String>) {
        let mut state = self.state.write().expect("limit list lock poisoned");
        state.members = Arc::new(members);
        state.refreshed = Some(Instant::now());
    }
}

/// The lists capture reads, each a Redis sorted set whose members are limited until the
/// epoch second of their score (PostHog's layout, so its tooling can fill them).
#[derive(Clone)]
pub(crate) struct RedisLists {
    /// Tokens whose events are dropped.
    pub quota_events: LimitList,
    /// Tokens whose recordings are dropped.
    pub quota_recordings: LimitList,
    /// `token` or `token:distinct_id` keys sent to the overflow topic.
    pub overflow_events: LimitList,
    /// Session ids whose replay goes to the replay overflow topic.
    pub overflow_replay: LimitList,
}

impl RedisLists {
    pub(crate) fn new(stale_after: Duration) -> Self {
        RedisLists {
            quota_events: LimitList::new(stale_after),
            quota_recordings: LimitList::new(stale_after),
            overflow_events: LimitList::new(stale_after),
            overflow_replay: LimitList::new(stale_after),
        }
    }

    fn keyed(&self, prefix: &str) -> [(String, &LimitList); 4] {
        [
            (format!("{prefix}quota-limits/events"), &self.quota_events),
            (format!("{prefix}quota-limits/recordings"), &self.quota_recordings),
            (format!("{prefix}capture-overflow/events"), &self.overflow_events),
            (format!("{prefix}capture-overflow/replay"), &self.overflow_replay),
        ]
    }
}

pub(crate) struct RefreshSettings {
    /// Built at start-up, so a URL or TLS setting that cannot be honoured stops capture
    /// there; `None` when the operator turned the lists off.
    pub client: Option<redis::Client>,
    pub key_prefix: String,
    pub interval: Duration,
    pub timeout: Duration,
}

/// Re-reads every list each `interval` until `stop` changes.
pub(crate) fn spawn_refresher(
    lists: RedisLists,
    settings: RefreshSettings,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Some(client) = settings.client.clone() else {
            warn!("REDIS_URL is empty: quota limits and forced overflow are off");
            return;
        };
        let mut conn = None;
        let mut failures = Failures::default();
        let mut every = Every::now(settings.interval, stop);
        while every.tick().await {
            match refresh_once(&client, &mut conn, &lists, &settings).await {
                Ok(()) => {
                    if failures.succeeded() {
                        info!("redis lists readable again");
                    }
                    telemetry::redis_refresh(true);
                }
                Err(e) => {
                    conn = None;
                    telemetry::redis_refresh(false);
                    failures.failed(
                        &e.to_string(),
                        "redis lists cannot be read; keeping the last lists until they go stale, then failing open",
                        "redis list refresh failed; keeping last lists until they go stale",
                    );
                }
            }
        }
    })
}

async fn refresh_once(
    client: &redis::Client,
    conn: &mut Option<redis::aio::MultiplexedConnection>,
    lists: &RedisLists,
    settings: &RefreshSettings,
) -> redis::RedisResult<()> {
    if conn.is_none() {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(settings.timeout)
            .set_response_timeout(settings.timeout);
        *conn = Some(client.get_multiplexed_async_connection_with_config(&config).await?);
    }
    let c = conn.as_mut().expect("connection set above");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    for (key, list) in lists.keyed(&settings.key_prefix) {
        let members: Vec<String> = redis::cmd("ZRANGEBYSCORE").arg(&key).arg(now).arg("+inf").query_async(c).await?;
        list.replace(members.into_iter().collect());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_lists_fail_open() {
        let list = LimitList::new(Duration::from_millis(30));
        assert!(!list.contains("t"), "never refreshed");
        list.replace(["t".to_string()].into());
        assert!(list.contains("t"));
        assert!(!list.contains("u"));
        std::thread::sleep(Duration::from_millis(40));
        assert!(!list.contains("t"), "stale");
        assert!(list.is_empty());
    }
}
