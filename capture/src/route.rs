//! Stage 4: which topic an event goes to, under which key, or whether it is dropped.

use sluice_schema::kafka_key;

use crate::limits::RedisLists;
use crate::normalize::NormalizedEvent;
use crate::overflow::{OverflowLimiter, OverflowReason};
use crate::team_tokens::TeamTokens;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    Main,
    Overflow,
    Historical,
    Replay,
    ReplayOverflow,
}

impl Lane {
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Main => "main",
            Lane::Overflow => "overflow",
            Lane::Historical => "historical",
            Lane::Replay => "replay",
            Lane::ReplayOverflow => "replay_overflow",
        }
    }
}

/// Topic name of each lane.
#[derive(Debug, Clone)]
pub struct Topics {
    pub main: String,
    pub overflow: String,
    pub historical: String,
    pub replay: String,
    pub replay_overflow: String,
}

impl Topics {
    pub fn name(&self, lane: Lane) -> &str {
        match lane {
            Lane::Main => &self.main,
            Lane::Overflow => &self.overflow,
            Lane::Historical => &self.historical,
            Lane::Replay => &self.replay,
            Lane::ReplayOverflow => &self.replay_overflow,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    Produce {
        lane: Lane,
        key: Option<String>,
        overflow: Option<OverflowReason>,
    },
    /// Over quota: dropped, the client still gets 200 so it does not retry forever.
    QuotaLimited,
}

/// The pure part of routing an analytics event, given what the limiters said.
pub(crate) fn decide(
    key: String,
    historical: bool,
    quota_limited: bool,
    overflow: Option<OverflowReason>,
    preserve_locality: bool,
) -> Route {
    if quota_limited {
        return Route::QuotaLimited;
    }
    if historical {
        // Back-fills have their own topic and consumers; overflowing them would only
        // mix them into live traffic.
        return Route::Produce { lane: Lane::Historical, key: Some(key), overflow: None };
    }
    match overflow {
        Some(reason) => {
            Route::Produce { lane: Lane::Overflow, key: preserve_locality.then_some(key), overflow: Some(reason) }
        }
        None => Route::Produce { lane: Lane::Main, key: Some(key), overflow: None },
    }
}

pub(crate) struct Router {
    pub lists: RedisLists,
    pub overflow: OverflowLimiter,
    pub preserve_locality: bool,
    pub team_tokens: TeamTokens,
}

impl Router {
    pub(crate) fn token_allowed(&self, token: &str) -> bool {
        self.team_tokens.allows(token)
    }

    pub(crate) fn route(&self, ev: &NormalizedEvent, historical: bool) -> Route {
        let key = kafka_key(&ev.token, &ev.distinct_id);
        let quota_limited = self.lists.quota_events.contains(&ev.token);
        let overflow = if historical || quota_limited { None } else { self.overflow.check(&ev.token, &key) };
        decide(key, historical, quota_limited, overflow, self.preserve_locality)
    }

    pub(crate) fn recordings_limited(&self, token: &str) -> bool {
        self.lists.quota_recordings.contains(token)
    }

    pub(crate) fn replay_lane(&self, session_id: &str) -> Lane {
        if self.lists.overflow_replay.contains(session_id) {
            Lane::ReplayOverflow
        } else {
            Lane::Replay
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k() -> String {
        "t:d".to_string()
    }

    #[test]
    fn decisions() {
        assert_eq!(
            decide(k(), false, false, None, false),
            Route::Produce { lane: Lane::Main, key: Some(k()), overflow: None }
        );
        assert_eq!(decide(k(), false, true, None, false), Route::QuotaLimited);
        assert_eq!(decide(k(), true, true, None, false), Route::QuotaLimited, "quota applies to back-fills too");
        assert_eq!(
            decide(k(), true, false, None, false),
            Route::Produce { lane: Lane::Historical, key: Some(k()), overflow: None }
        );
        assert_eq!(
            decide(k(), true, false, Some(OverflowReason::Rate), false),
            Route::Produce { lane: Lane::Historical, key: Some(k()), overflow: None },
            "historical is never overflowed"
        );
        assert_eq!(
            decide(k(), false, false, Some(OverflowReason::Rate), false),
            Route::Produce { lane: Lane::Overflow, key: None, overflow: Some(OverflowReason::Rate) }
        );
        assert_eq!(
            decide(k(), false, false, Some(OverflowReason::Forced), true),
            Route::Produce { lane: Lane::Overflow, key: Some(k()), overflow: Some(OverflowReason::Forced) }
        );
    }
}
