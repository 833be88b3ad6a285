//! Every Redis key the pipeline reads or writes, each under the operator's prefix
//! (`REDIS_KEY_PREFIX`). The lists are sorted sets whose members apply until the epoch
//! second of their score, named as PostHog names them so its tooling can fill them.

/// Tokens whose events capture drops.
pub fn quota_events(prefix: &str) -> String {
    format!("{prefix}quota-limits/events")
}

/// Tokens whose recordings capture drops.
pub fn quota_recordings(prefix: &str) -> String {
    format!("{prefix}quota-limits/recordings")
}

/// `token` or `token:distinct_id` keys capture sends to the overflow lane.
pub fn overflow_events(prefix: &str) -> String {
    format!("{prefix}capture-overflow/events")
}

/// Session ids whose replay capture sends to the replay overflow topic.
pub fn overflow_replay(prefix: &str) -> String {
    format!("{prefix}capture-overflow/replay")
}

/// `token` or `token:distinct_id` keys whose events ingest drops.
pub fn restrict_drop_events(prefix: &str) -> String {
    format!("{prefix}ingest-restrictions/drop-events")
}

/// `token` or `token:distinct_id` keys ingest skips person processing for.
pub fn restrict_skip_persons(prefix: &str) -> String {
    format!("{prefix}ingest-restrictions/skip-persons")
}

/// The pub/sub channel that tells every ingest process to reload plugin configurations.
pub fn plugin_reload(prefix: &str) -> String {
    format!("{prefix}plugin-reload")
}

/// Where plugins' `ctx.cache` keys live; the plugin configuration id follows.
pub fn plugin_cache(prefix: &str) -> String {
    format!("{prefix}plugin-cache/")
}

/// The claim of one period of a scheduled hook, taken by one ingest process of all.
pub fn plugin_schedule_claim(prefix: &str, plugin_config: i64, hook: &str, period: u64) -> String {
    format!("{prefix}plugin-schedule/{plugin_config}/{hook}/{period}")
}

/// Held while a scheduled hook runs, so a slow run is not started again beside itself.
pub fn plugin_schedule_running(prefix: &str, plugin_config: i64, hook: &str) -> String {
    format!("{prefix}plugin-schedule-running/{plugin_config}/{hook}")
}
