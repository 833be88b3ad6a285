//! The plugin stage's settings (`PLUGIN_*`, `GEOIP_DATABASE_PATH`), grouped apart from the
//! lane's.

use std::time::Duration;

use sluice_common::settings::millis;

#[derive(Debug, Clone, clap::Args)]
pub struct PluginSettings {
    /// Run teams' plugins (step 5).
    #[arg(long = "plugins-enabled", env = "PLUGINS_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub enabled: bool,
    /// Plugin worker processes; each team's plugins live in one of them.
    #[arg(long = "plugin-workers", env = "PLUGIN_WORKERS", default_value_t = 2)]
    pub workers: usize,
    /// Changes to plugins (installs, config, enable/disable) are loaded without a
    /// restart when the operator command's reload notice arrives (Redis pub/sub), and
    /// at this interval anyway.
    #[arg(
        long = "plugin-reload-interval-ms",
        env = "PLUGIN_RELOAD_INTERVAL_MS",
        default_value = "30000",
        value_name = "MS", value_parser = millis
    )]
    pub reload_interval: Duration,
    /// Failed calls (errors, limits) among the recent ones before a plugin is degraded, and
    /// before it is disabled; at least `PLUGIN_FAILURE_RATIO` of its recent calls must have
    /// failed as well.
    #[arg(long = "plugin-degrade-after-failures", env = "PLUGIN_DEGRADE_AFTER_FAILURES", default_value_t = 10)]
    pub degrade_after_failures: u32,
    #[arg(long = "plugin-disable-after-failures", env = "PLUGIN_DISABLE_AFTER_FAILURES", default_value_t = 100)]
    pub disable_after_failures: u32,
    /// Share of a plugin's recent calls that must fail for it to be degraded or disabled.
    #[arg(long = "plugin-failure-ratio", env = "PLUGIN_FAILURE_RATIO", default_value_t = 0.5)]
    pub failure_ratio: f64,
    /// Worker processes for schedules (in an event lane) or for on_event and
    /// export_events (in the exports lane), kept apart from process_event's.
    #[arg(long = "plugin-export-workers", env = "PLUGIN_EXPORT_WORKERS", default_value_t = 1)]
    pub export_workers: usize,
    /// The length of a "minute" for plugin schedules (every_hour is 60 of them,
    /// every_day 1,440). Only tests shorten it.
    #[arg(
        long = "plugin-schedule-minute-ms",
        env = "PLUGIN_SCHEDULE_MINUTE_MS",
        default_value = "60000",
        value_name = "MS", value_parser = millis
    )]
    pub schedule_minute: Duration,
    /// How often an event lane looks for plugin jobs that are due…
    #[arg(long = "plugin-job-poll-ms", env = "PLUGIN_JOB_POLL_MS", default_value = "1000", value_name = "MS", value_parser = millis)]
    pub job_poll: Duration,
    /// …and how many it claims and runs at once.
    #[arg(long = "plugin-job-concurrency", env = "PLUGIN_JOB_CONCURRENCY", default_value_t = 4)]
    pub job_concurrency: usize,
    /// Runs of a failing job before it is kept as failed; the wait before each retry
    /// starts at PLUGIN_JOB_RETRY_BACKOFF_MS and doubles.
    #[arg(long = "plugin-job-max-attempts", env = "PLUGIN_JOB_MAX_ATTEMPTS", default_value_t = 5)]
    pub job_max_attempts: u32,
    #[arg(long = "plugin-job-retry-backoff-ms", env = "PLUGIN_JOB_RETRY_BACKOFF_MS", default_value = "5000", value_name = "MS", value_parser = millis)]
    pub job_retry_backoff: Duration,
    /// Where events plugins send with ctx.capture go: the ingestion topic capture
    /// produces ordinary events to.
    #[arg(long = "plugin-capture-topic", env = "PLUGIN_CAPTURE_TOPIC", default_value = sluice_schema::topics::EVENTS)]
    pub capture_topic: String,
    /// A MaxMind City (or GeoLite2-City) database file for plugins' ctx.geoip; empty
    /// for none.
    #[arg(long = "geoip-database-path", env = "GEOIP_DATABASE_PATH", default_value = "")]
    pub geoip_database_path: String,
    /// The limits of every plugin VM, shared with `sluice-plugin`, which runs authors'
    /// plugins with the same settings and defaults.
    #[command(flatten)]
    pub limits: sluice_plugin_runtime::LimitSettings,
}
