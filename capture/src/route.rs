//! Stage 4: which topic an event goes to, under which key, or whether it is dropped.

use sluice_schema::kafka_key;
use sluice_schema::topics::Lane;

use crate::limits::RedisLists;
use crate::normalize::NormalizedEvent;
use crate::overflow::{OverflowLimiter, OverflowReason};
use crate::team_tokens::TeamTokens;

/// The topic an event is produced to: its lane's, or one of the replay topics. Metrics
/// label it `lane`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    Events(Lane),
    Replay,
    ReplayOverflow,
}

impl Topic {
    pub fn as_str(self) -> &'static str {
        match self {
            Topic::Events(lane) => lane.as_str(),
            Topic::Replay => "replay",
            Topic::ReplayOverflow => "replay_overflow",
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
    pub fn name(&self, lane: Topic) -> &str {
        match lane {
            Topic::Events(Lane::Main) => &self.main,
            Topic::Events(Lane::Overflow) => &self.overflow,
            Topic::Events(Lane::Historical) => &self.historical,
            Topic::Replay => &self.replay,
            Topic::ReplayOverflow => &self.replay_overflow,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    Produce {
        lane: Topic,
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
) -> Decision {
    if quota_limited {
        return Decision::QuotaLimited;
    }
    if historical {
        // Back-fills have their own topic and consumers; overflowing them would only
        // mix them into live traffic.
        return Decision::Produce { lane: Topic::Events(Lane::Historical), key: Some(key), overflow: None };
    }
    match overflow {
        Some(reason) => Decision::Produce {
            lane: Topic::Events(Lane::Overflow),
            key: preserve_locality.then_some(key),
            overflow: Some(reason),
        },
        None => Decision::Produce { lane: Topic::Events(Lane::Main), key: Some(key), overflow: None },
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

    pub(crate) fn route(&self, ev: &NormalizedEvent, historical: bool) -> Decision {
        let key = kafka_key(&ev.token, &ev.distinct_id);
        let quota_limited = self.lists.quota_events.contains(&ev.token);
        let overflow = if historical || quota_limited { None } else { self.overflow.check(&ev.token, &key) };
        decide(key, historical, quota_limited, overflow, self.preserve_locality)
    }

    pub(crate) fn recordings_limited(&self, token: &str) -> bool {
        self.lists.quota_recordings.contains(token)
    }

    pub(crate) fn replay_topic(&self, session_id: &str) -> Topic {
        if self.lists.overflow_replay.contains(session_id) {
            Topic::ReplayOverflow
        } else {
            Topic::Replay
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
            Decision::Produce { lane: Topic::Events(Lane::Main), key: Some(k()), overflow: None }
        );
        assert_eq!(decide(k(), false, true, None, false), Decision::QuotaLimited);
        assert_eq!(decide(k(), true, true, None, false), Decision::QuotaLimited, "quota applies to back-fills too");
        assert_eq!(
            decide(k(), true, false, None, false),
            Decision::Produce { lane: Topic::Events(Lane::Historical), key: Some(k()), overflow: None }
        );
        assert_eq!(
            decide(k(), true, false, Some(OverflowReason::Rate), false),
            Decision::Produce { lane: Topic::Events(Lane::Historical), key: Some(k()), overflow: None },
            "historical is never overflowed"
        );
        assert_eq!(
            decide(k(), false, false, Some(OverflowReason::Rate), false),
            Decision::Produce { lane: Topic::Events(Lane::Overflow), key: None, overflow: Some(OverflowReason::Rate) }
        );
        assert_eq!(
            decide(k(), false, false, Some(OverflowReason::Forced), true),
            Decision::Produce {
                lane: Topic::Events(Lane::Overflow),
                key: Some(k()),
                overflow: Some(OverflowReason::Forced)
            }
        );
    }
}
