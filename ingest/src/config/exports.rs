//! The exports lane's settings (`EXPORT_*`): how `export_events` buffers are cut, how
//! failed deliveries are retried, and how much may wait unfinished.

use std::time::Duration;

use sluice_common::settings::millis;

#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Exports lane (LANE=exports)")]
pub struct ExportSettings {
    /// An `export_events` buffer is handed to its plugin when it holds this many events…
    #[arg(
        id = "export_buffer_max_events",
        long = "export-buffer-max-events",
        env = "EXPORT_BUFFER_MAX_EVENTS",
        default_value_t = 1_000
    )]
    pub buffer_max_events: usize,
    /// …or this many bytes of events (the app server's exportEventsBufferBytes)…
    #[arg(id = "export_buffer_max_bytes", long = "export-buffer-max-bytes", env = "EXPORT_BUFFER_MAX_BYTES", default_value_t = 1024 * 1024)]
    pub buffer_max_bytes: usize,
    /// …or when its oldest event has waited this long (exportEventsBufferSeconds).
    #[arg(id = "export_buffer_max_age_ms", long = "export-buffer-max-age-ms", env = "EXPORT_BUFFER_MAX_AGE_MS", default_value = "10000", value_name = "MS", value_parser = millis)]
    pub buffer_max_age: Duration,
    /// Calls of a plugin for one delivery (a buffer for export_events, an event for
    /// on_event) when it asks to be retried (ctx.retry) or its worker fails; then the
    /// events go to the exports dead-letter topic.
    #[arg(id = "export_max_attempts", long = "export-max-attempts", env = "EXPORT_MAX_ATTEMPTS", default_value_t = 6)]
    pub max_attempts: u32,
    /// Wait before the first retry; doubled for each one after, up to
    /// EXPORT_RETRY_MAX_BACKOFF_MS.
    #[arg(id = "export_retry_backoff_ms", long = "export-retry-backoff-ms", env = "EXPORT_RETRY_BACKOFF_MS", default_value = "3000", value_name = "MS", value_parser = millis)]
    pub retry_backoff: Duration,
    #[arg(id = "export_retry_max_backoff_ms", long = "export-retry-max-backoff-ms", env = "EXPORT_RETRY_MAX_BACKOFF_MS", default_value = "60000", value_name = "MS", value_parser = millis)]
    pub retry_max_backoff: Duration,
    /// Events read and not yet delivered by every plugin of their team (buffered, in
    /// flight, waiting for a retry). At this many, or at EXPORT_MAX_PENDING_BYTES, the
    /// lane stops reading until deliveries finish: a slow destination becomes lag.
    #[arg(
        id = "export_max_pending_events",
        long = "export-max-pending-events",
        env = "EXPORT_MAX_PENDING_EVENTS",
        default_value_t = 100_000
    )]
    pub max_pending_events: usize,
    #[arg(id = "export_max_pending_bytes", long = "export-max-pending-bytes", env = "EXPORT_MAX_PENDING_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_pending_bytes: usize,
    /// Deliveries running at once (each is one plugin call in a worker).
    #[arg(id = "export_concurrency", long = "export-concurrency", env = "EXPORT_CONCURRENCY", default_value_t = 8)]
    pub concurrency: usize,
    /// How often offsets of finished events are committed.
    #[arg(id = "export_commit_interval_ms", long = "export-commit-interval-ms", env = "EXPORT_COMMIT_INTERVAL_MS", default_value = "1000", value_name = "MS", value_parser = millis)]
    pub commit_interval: Duration,
}
