//! Which events go to the overflow topic: keys over their rate, and keys forced there.
//!
//! One `token:distinct_id` sending far more than a person can (a bot, a loop in someone's
//! code) would otherwise fill one partition and delay every other person on it.

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::limits::LimitList;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OverflowReason {
    /// Over the per-key rate.
    Rate,
    /// On the operator's list (environment or Redis).
    Forced,
}

impl OverflowReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            OverflowReason::Rate => "rate",
            OverflowReason::Forced => "forced",
        }
    }
}

pub(crate) struct OverflowSettings {
    pub enabled: bool,
    pub per_second: u32,
    pub burst: u32,
    /// `token` or `token:distinct_id` entries.
    pub forced: HashSet<String>,
    pub max_keys: usize,
}

impl OverflowSettings {
    pub(crate) fn parse_forced(list: &str) -> HashSet<String> {
        list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
    }
}

pub(crate) struct OverflowLimiter {
    settings: OverflowSettings,
    quota: Quota,
    limiter: RwLock<Arc<DefaultKeyedRateLimiter<String>>>,
    forced_redis: LimitList,
}

impl OverflowLimiter {
    pub(crate) fn new(settings: OverflowSettings, forced_redis: LimitList) -> Self {
        let per_second = NonZeroU32::new(settings.per_second.max(1)).expect("max(1) is non-zero");
        let burst = NonZeroU32::new(settings.burst.max(1)).expect("max(1) is non-zero");
        let quota = Quota::per_second(per_second).allow_burst(burst);
        OverflowLimiter { settings, quota, limiter: RwLock::new(Arc::new(RateLimiter::keyed(quota))), forced_redis }
    }

    /// `key` is `token:distinct_id`. Forced keys are checked first so they do not use up rate.
    pub(crate) fn check(&self, token: &str, key: &str) -> Option<OverflowReason> {
        if self.is_forced(token, key) {
            return Some(OverflowReason::Forced);
        }
        if !self.settings.enabled {
            return None;
        }
        let limiter = self.limiter.read().expect("limiter lock poisoned").clone();
        // The key is cloned only for keys governor has not seen, which it needs to own.
        limiter.check_key(&key.to_string()).is_err().then_some(OverflowReason::Rate)
    }

    fn is_forced(&self, token: &str, key: &str) -> bool {
        let forced = &self.settings.forced;
        (!forced.is_empty() && (forced.contains(token) || forced.contains(key)))
            || (!self.forced_redis.is_empty() && (self.forced_redis.contains(token) || self.forced_redis.contains(key)))
    }

    /// Forgets keys back at full burst; past `max_keys`, starts over with an empty table
    /// (a reset costs one burst of leniency per key, unbounded memory costs the process).
    pub(crate) fn housekeep(&self) -> usize {
        let limiter = self.limiter.read().expect("limiter lock poisoned").clone();
        limiter.retain_recent();
        limiter.shrink_to_fit();
        if limiter.len() > self.settings.max_keys {
            *self.limiter.write().expect("limiter lock poisoned") = Arc::new(RateLimiter::keyed(self.quota));
            return 0;
        }
        limiter.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limiter(burst: u32, forced: &str, max_keys: usize) -> OverflowLimiter {
        OverflowLimiter::new(
            OverflowSettings {
                enabled: true,
                per_second: 1,
                burst,
                forced: OverflowSettings::parse_forced(forced),
                max_keys,
            },
            LimitList::new(Duration::from_secs(60)),
        )
    }

    #[test]
    fn overflows_after_the_burst_per_key() {
        let l = limiter(3, "", 100);
        for _ in 0..3 {
            assert_eq!(l.check("t", "t:a"), None);
        }
        assert_eq!(l.check("t", "t:a"), Some(OverflowReason::Rate));
        assert_eq!(l.check("t", "t:b"), None, "other keys are unaffected");
    }

    #[test]
    fn forced_by_token_or_key_from_env_or_redis() {
        let redis = LimitList::new(Duration::from_secs(60));
        redis.replace(["r:x".to_string()].into());
        let l = OverflowLimiter::new(
            OverflowSettings {
                enabled: false,
                per_second: 1,
                burst: 1,
                forced: OverflowSettings::parse_forced(" hot , t:d "),
                max_keys: 10,
            },
            redis,
        );
        assert_eq!(l.check("hot", "hot:anyone"), Some(OverflowReason::Forced));
        assert_eq!(l.check("t", "t:d"), Some(OverflowReason::Forced));
        assert_eq!(l.check("r", "r:x"), Some(OverflowReason::Forced));
        assert_eq!(l.check("t", "t:e"), None);
        for _ in 0..5 {
            assert_eq!(l.check("t", "t:e"), None, "rate limiting disabled");
        }
    }

    #[test]
    fn key_table_is_bounded() {
        let l = limiter(1, "", 10);
        for i in 0..50 {
            l.check("t", &format!("t:{i}"));
        }
        assert_eq!(l.housekeep(), 0, "reset past max_keys");
        assert_eq!(l.check("t", "t:1"), None, "state forgotten");
    }
}

/// Optional limit on the events one capture instance accepts per second, for operators
/// who would rather shed load with 429 than let a flood reach Kafka.
pub(crate) struct GlobalLimiter {
    limiter: Option<(DefaultDirectRateLimiter, NonZeroU32)>,
}

impl GlobalLimiter {
    pub(crate) fn new(per_second: u32, burst: u32) -> Self {
        let limiter = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst.max(1)).expect("max(1) is non-zero");
            (RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)), burst)
        });
        GlobalLimiter { limiter }
    }

    /// Takes `events` from the budget; a request larger than the burst takes the whole
    /// burst, so it can still pass once the bucket is full.
    pub(crate) fn allows(&self, events: usize) -> bool {
        let Some((limiter, burst)) = &self.limiter else { return true };
        let n =
            NonZeroU32::new(u32::try_from(events).unwrap_or(u32::MAX).clamp(1, burst.get())).expect("clamped to >= 1");
        matches!(limiter.check_n(n), Ok(Ok(())))
    }
}

#[cfg(test)]
mod global_tests {
    use super::*;

    #[test]
    fn global_limit_sheds_past_the_burst() {
        let g = GlobalLimiter::new(1, 5);
        assert!(g.allows(3));
        assert!(g.allows(2));
        assert!(!g.allows(1));
        assert!(GlobalLimiter::new(0, 5).allows(1_000_000), "0 is off");
        assert!(GlobalLimiter::new(1, 5).allows(50), "larger than the burst still passes on a full bucket");
    }
}
