//! Tokens the last background read did not have, looked up one at a time, so a team
//! created a moment ago is served at once instead of at the next read.
//!
//! Anyone can send a token, so the lookups are bounded: a few at once (a request waits
//! at most `wait` for a slot, then is answered without one), and a token found to be no
//! team's is remembered for `unknown_for` so a flood of one random token costs one query.
//! The memory of unknown tokens is bounded too; full, it forgets them all (a flood of
//! distinct tokens is then still held to the slots).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::telemetry;

/// The query for one token: its row, `None` when no team has it, or why it failed.
pub(crate) type Find<T> =
    Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = Result<Option<T>, String>> + Send>> + Send + Sync>;

#[derive(Debug, Clone, Copy)]
pub(crate) struct LookupLimits {
    /// Lookups at once.
    pub concurrency: usize,
    /// Longest a request waits for a slot and its query together.
    pub wait: Duration,
    /// How long a token found to be no team's is refused without a query.
    pub unknown_for: Duration,
    /// Most unknown tokens remembered.
    pub max_unknown: usize,
}

/// What a lookup says about a token.
#[derive(Debug, PartialEq)]
pub(crate) enum Looked<T> {
    Found(T),
    /// No team has it (now, or a moment ago).
    Unknown,
    /// The lookup could not be made in time, or failed: no one can tell.
    CannotTell,
}

pub(crate) struct TokenLookup<T> {
    find: Find<T>,
    slots: Semaphore,
    limits: LookupLimits,
    unknown: Mutex<HashMap<String, Instant>>,
}

impl<T> TokenLookup<T> {
    pub(crate) fn new(find: Find<T>, limits: LookupLimits) -> Self {
        TokenLookup { find, slots: Semaphore::new(limits.concurrency.max(1)), limits, unknown: Mutex::default() }
    }

    fn known_unknown(&self, token: &str) -> bool {
        let unknown = self.unknown.lock().expect("unknown tokens lock");
        unknown.get(token).is_some_and(|until| Instant::now() < *until)
    }

    fn remember_unknown(&self, token: String) {
        let mut unknown = self.unknown.lock().expect("unknown tokens lock");
        if unknown.len() >= self.limits.max_unknown {
            let now = Instant::now();
            unknown.retain(|_, until| now < *until);
            if unknown.len() >= self.limits.max_unknown {
                unknown.clear();
            }
        }
        unknown.insert(token, Instant::now() + self.limits.unknown_for);
    }

    pub(crate) async fn look_up(&self, token: &str) -> Looked<T> {
        if self.known_unknown(token) {
            telemetry::sdk_config_lookup("cached_unknown");
            return Looked::Unknown;
        }
        let deadline = tokio::time::Instant::now() + self.limits.wait;
        let slot = tokio::time::timeout_at(deadline, self.slots.acquire()).await;
        // A slot handed over just as the wait ran out is not used: the request has gone.
        let (Ok(Ok(_slot)), false) = (slot, tokio::time::Instant::now() >= deadline) else {
            telemetry::sdk_config_lookup("busy");
            return Looked::CannotTell;
        };
        // Another request may have found it unknown while this one waited.
        if self.known_unknown(token) {
            telemetry::sdk_config_lookup("cached_unknown");
            return Looked::Unknown;
        }
        match tokio::time::timeout_at(deadline, (self.find)(token.to_string())).await {
            Ok(Ok(Some(found))) => {
                telemetry::sdk_config_lookup("found");
                Looked::Found(found)
            }
            Ok(Ok(None)) => {
                telemetry::sdk_config_lookup("unknown");
                self.remember_unknown(token.to_string());
                Looked::Unknown
            }
            Ok(Err(_)) | Err(_) => {
                telemetry::sdk_config_lookup("failed");
                Looked::CannotTell
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn limits() -> LookupLimits {
        LookupLimits {
            concurrency: 2,
            wait: Duration::from_millis(200),
            unknown_for: Duration::from_millis(300),
            max_unknown: 3,
        }
    }

    /// A fake table: `phc_team*` tokens are teams; each query takes `delay` and is counted,
    /// with the most in flight at once.
    fn fake(delay: Duration) -> (Find<String>, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let (queries, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let (q, m) = (queries.clone(), most.clone());
        let find: Find<String> = Arc::new(move |token: String| {
            let (q, m, f) = (q.clone(), m.clone(), in_flight.clone());
            Box::pin(async move {
                /// Leaves the count when the query ends, or is given up on.
                struct InFlight(Arc<AtomicUsize>);
                impl Drop for InFlight {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                q.fetch_add(1, Ordering::SeqCst);
                let now = f.fetch_add(1, Ordering::SeqCst) + 1;
                let _in_flight = InFlight(f);
                m.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                Ok(token.starts_with("phc_team").then(|| format!("settings of {token}")))
            })
        });
        (find, queries, most)
    }

    #[tokio::test]
    async fn a_team_is_found_and_an_unknown_token_costs_one_query_while_remembered() {
        let (find, queries, _) = fake(Duration::ZERO);
        let lookup = TokenLookup::new(find, limits());
        assert_eq!(lookup.look_up("phc_team_new").await, Looked::Found("settings of phc_team_new".into()));
        for _ in 0..50 {
            assert_eq!(lookup.look_up("phc_random").await, Looked::Unknown);
        }
        assert_eq!(queries.load(Ordering::SeqCst), 2, "one query for the team, one for the unknown token");
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(lookup.look_up("phc_random").await, Looked::Unknown);
        assert_eq!(queries.load(Ordering::SeqCst), 3, "asked again once the memory of it expired");
    }

    #[tokio::test]
    async fn a_flood_of_distinct_tokens_is_held_to_the_slots_and_the_rest_cannot_be_told() {
        let (find, queries, most) = fake(Duration::from_millis(150));
        let lookup = Arc::new(TokenLookup::new(find, limits()));
        let answers: Vec<_> = futures::future::join_all((0..20).map(|i| {
            let lookup = lookup.clone();
            async move { lookup.look_up(&format!("phc_flood_{i}")).await }
        }))
        .await;
        assert!(most.load(Ordering::SeqCst) <= 2, "{} queries at once", most.load(Ordering::SeqCst));
        assert!(queries.load(Ordering::SeqCst) <= 4, "the others gave up waiting for a slot");
        assert!(answers.contains(&Looked::CannotTell));
        assert!(lookup.unknown.lock().unwrap().len() <= 3, "the memory of unknown tokens is bounded");
    }

    #[tokio::test]
    async fn a_failed_query_cannot_tell_and_is_not_remembered() {
        let find: Find<String> = Arc::new(|_| Box::pin(async { Err("connection refused".to_string()) }));
        let lookup = TokenLookup::new(find, limits());
        assert_eq!(lookup.look_up("phc_x").await, Looked::CannotTell);
        assert!(lookup.unknown.lock().unwrap().is_empty());
    }
}
