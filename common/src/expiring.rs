//! The operator's Redis lists: sorted sets whose members apply until the epoch second of
//! their score (PostHog's layout, so its tooling can fill them). Both binaries read them
//! in the background, never on a request's or a batch's path, and forget a list that
//! could not be re-read for a while: they fail open.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisResult};
use tracing::info;

use crate::every::{Every, Failures};

/// Reads sorted sets' live members over one connection, made again after a failure.
pub struct ExpiringSets {
    client: redis::Client,
    timeout: Duration,
    conn: Option<MultiplexedConnection>,
}

impl ExpiringSets {
    /// Every connect and every read is bounded by `timeout`.
    pub fn new(client: redis::Client, timeout: Duration) -> Self {
        ExpiringSets { client, timeout, conn: None }
    }

    /// The members of each set in `keys` whose expiry is not past, in the same order.
    pub async fn read(&mut self, keys: &[String]) -> RedisResult<Vec<HashSet<String>>> {
        let result = self.read_on_connection(keys).await;
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    async fn read_on_connection(&mut self, keys: &[String]) -> RedisResult<Vec<HashSet<String>>> {
        if self.conn.is_none() {
            let config =
                AsyncConnectionConfig::new().set_connection_timeout(self.timeout).set_response_timeout(self.timeout);
            self.conn = Some(self.client.get_multiplexed_async_connection_with_config(&config).await?);
        }
        let conn = self.conn.as_mut().expect("connection set above");
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut sets = Vec::with_capacity(keys.len());
        for key in keys {
            let members: Vec<String> =
                redis::cmd("ZRANGEBYSCORE").arg(key).arg(now).arg("+inf").query_async(conn).await?;
            sets.push(members.into_iter().collect());
        }
        Ok(sets)
    }
}

/// What a refresher logs: when its reads start failing (a warning: a wrong password or
/// certificate shows at start-up), while they keep failing (debug), and when one
/// succeeds again.
pub struct Messages {
    pub failing: &'static str,
    pub still_failing: &'static str,
    pub recovered: &'static str,
}

/// Re-reads `keys` at each tick of `every` until it stops, and hands each round to
/// `apply`: the live members of each key in order, or `None` when Redis did not answer
/// (what was read last stays until it goes stale).
pub async fn refresh(
    mut reader: ExpiringSets,
    keys: &[String],
    mut every: Every,
    messages: Messages,
    mut apply: impl FnMut(Option<Vec<HashSet<String>>>),
) {
    let mut failures = Failures::default();
    while every.tick().await {
        match reader.read(keys).await {
            Ok(sets) => {
                apply(Some(sets));
                if failures.succeeded() {
                    info!("{}", messages.recovered);
                }
            }
            Err(e) => {
                apply(None);
                failures.failed(&e.to_string(), messages.failing, messages.still_failing);
            }
        }
    }
}

/// A value read in the background, believed for `stale_after` after it was read and
/// forgotten after that.
pub struct Fresh<T> {
    read: RwLock<Option<(Arc<T>, Instant)>>,
    stale_after: Duration,
}

impl<T> Fresh<T> {
    pub fn new(stale_after: Duration) -> Self {
        Fresh { read: RwLock::new(None), stale_after }
    }

    pub fn replace(&self, value: T) {
        *self.read.write().expect("fresh value lock poisoned") = Some((Arc::new(value), Instant::now()));
    }

    /// The value, unless it was never read or has gone stale.
    pub fn get(&self) -> Option<Arc<T>> {
        match &*self.read.read().expect("fresh value lock poisoned") {
            Some((value, at)) if at.elapsed() <= self.stale_after => Some(value.clone()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_believed_until_it_goes_stale() {
        let fresh = Fresh::new(Duration::from_millis(30));
        assert!(fresh.get().is_none(), "never read");
        fresh.replace(7);
        assert_eq!(fresh.get().as_deref(), Some(&7));
        std::thread::sleep(Duration::from_millis(40));
        assert!(fresh.get().is_none(), "stale");
        fresh.replace(8);
        assert_eq!(fresh.get().as_deref(), Some(&8), "read again");
    }
}
