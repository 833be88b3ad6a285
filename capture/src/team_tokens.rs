//! Optional: which tokens some team has, read from Postgres in the background.
//!
//! Off by default, because capture's promise is to take events without touching a
//! database on the request path; operators who would rather turn away unknown tokens at
//! the door than count them as drops in ingest turn it on. It fails open: a list that
//! could not be read recently is not used, and every well-formed token passes.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::sync::watch;

use crate::limits::LimitList;
use sluice_common::every::{Every, Failures};

#[derive(Clone)]
pub(crate) struct TeamTokens {
    enabled: bool,
    known: LimitList,
}

impl TeamTokens {
    pub(crate) fn new(enabled: bool, stale_after: Duration) -> Self {
        TeamTokens { enabled, known: LimitList::new(stale_after) }
    }

    #[cfg(test)]
    pub(crate) fn disabled() -> Self {
        Self::new(false, Duration::ZERO)
    }

    pub(crate) fn allows(&self, token: &str) -> bool {
        !self.enabled || !self.known.is_fresh() || self.known.contains(token)
    }
}

pub(crate) struct TokenRefresh {
    /// Parsed at start-up (a URL or certificate that cannot be used stops capture there);
    /// `None` when the check is off.
    pub database: Option<PgConnectOptions>,
    pub query: String,
    pub interval: Duration,
    pub timeout: Duration,
}

/// Re-reads the token list every `interval` until `stop` changes; does nothing when the
/// check is off.
pub(crate) fn spawn_refresher(
    tokens: TeamTokens,
    settings: TokenRefresh,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let (true, Some(database)) = (tokens.enabled, settings.database.clone()) else { return };
        let pool =
            PgPoolOptions::new().max_connections(1).acquire_timeout(settings.timeout).connect_lazy_with(database);
        let mut every = Every::now(settings.interval, stop);
        let mut failures = Failures::default();
        while every.tick().await {
            let read = sqlx::query_scalar::<_, String>(&settings.query).fetch_all(&pool);
            let error = match tokio::time::timeout(settings.timeout, read).await {
                Ok(Ok(list)) => {
                    tokens.known.replace(list.into_iter().collect());
                    failures.succeeded();
                    continue;
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => "timed out".to_string(),
            };
            failures.failed(
                &error,
                "team tokens cannot be read; the check stays open until they can",
                "team token refresh failed",
            );
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fails_open_until_a_list_is_read() {
        let t = TeamTokens::new(true, Duration::from_secs(60));
        assert!(t.allows("anything"), "nothing read yet");
        t.known.replace(["phc_a".to_string()].into());
        assert!(t.allows("phc_a"));
        assert!(!t.allows("phc_b"));
        assert!(TeamTokens::disabled().allows("phc_b"));
    }
}
