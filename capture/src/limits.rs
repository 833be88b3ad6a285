//! Lists kept in Redis that change what capture does with a token or key: quota limits
//! and forced overflow. They are read in the background, never on the request path,
//! and a list that could not be refreshed for a while is forgotten: capture fails open.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use sluice_common::every::Every;
use sluice_common::expiring::{self, ExpiringSets, Fresh, Messages};
use sluice_schema::redis_keys;
use tokio::sync::watch;
use tracing::warn;

use crate::telemetry;

/// One list's members as last read, believed for `stale_after`.
#[derive(Clone)]
pub(crate) struct LimitList {
    members: Arc<Fresh<HashSet<String>>>,
}

impl LimitList {
    pub(crate) fn new(stale_after: Duration) -> Self {
        LimitList { members: Arc::new(Fresh::new(stale_after)) }
    }

    pub(crate) fn contains(&self, member: &str) -> bool {
        self.members.get().is_some_and(|m| m.contains(member))
    }

    /// Whether the list was read recently enough to be believed.
    pub(crate) fn is_fresh(&self) -> bool {
        self.members.get().is_some()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.members.get().is_none_or(|m| m.is_empty())
    }

    pub(crate) fn replace(&self, members: HashSet<String>) {
        self.members.replace(members);
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
            (redis_keys::quota_events(prefix), &self.quota_events),
            (redis_keys::quota_recordings(prefix), &self.quota_recordings),
            (redis_keys::overflow_events(prefix), &self.overflow_events),
            (redis_keys::overflow_replay(prefix), &self.overflow_replay),
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
        let Some(client) = settings.client else {
            warn!("REDIS_URL is empty: quota limits and forced overflow are off");
            return;
        };
        let (keys, lists): (Vec<String>, Vec<&LimitList>) = lists.keyed(&settings.key_prefix).into_iter().unzip();
        let messages = Messages {
            failing: "redis lists cannot be read; keeping the last lists until they go stale, then failing open",
            still_failing: "redis list refresh failed; keeping last lists until they go stale",
            recovered: "redis lists readable again",
        };
        let reader = ExpiringSets::new(client, settings.timeout);
        expiring::refresh(reader, &keys, Every::now(settings.interval, stop), messages, |read| {
            telemetry::redis_refresh(read.is_some());
            for (list, members) in lists.iter().zip(read.into_iter().flatten()) {
                list.replace(members);
            }
        })
        .await
    })
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
