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
    /// Crashes or hangs of a worker while a plugin runs before that plugin is disabled.
    #[arg(long = "plugin-max-strikes", env = "PLUGIN_MAX_STRIKES", default_value_t = 3)]
    pub max_strikes: u32,
    /// Failed calls (errors, limits) among the recent ones before a plugin is degraded, and
    /// before it is disabled; at least `PLUGIN_FAILURE_RATIO` of its recent calls must have
    /// failed as well.
    #[arg(long = "plugin-degrade-after-failures", env = "PLUGIN_DEGRADE_AFTER_FAILURES", default_value_t = 10)]
    pub degrade_after_failures: u32,
    #[arg(long = "plugin-disable-after-failures", env = "PLUGIN_DISABLE_AFTER_FAILURES", default_value_t = 100)]
    pub disable_after_failures: u32,
    /// Keys one plugin configuration may keep in its cache, and again in its storage.
    #[arg(long = "plugin-store-max-keys", env = "PLUGIN_STORE_MAX_KEYS", default_value_t = 10_000)]
    pub store_max_keys: usize,
    /// Bytes (keys and values) one plugin configuration may keep in its cache, and again in its storage.
    #[arg(long = "plugin-store-max-bytes", env = "PLUGIN_STORE_MAX_BYTES", default_value_t = 16 << 20)]
    pub store_max_bytes: usize,
    /// Share of a plugin's recent calls that must fail for it to be degraded or disabled.
    #[arg(long = "plugin-failure-ratio", env = "PLUGIN_FAILURE_RATIO", default_value_t = 0.5)]
    pub failure_ratio: f64,
    /// Worker processes for on_event and schedules (kept apart from process_event's).
    #[arg(long = "plugin-export-workers", env = "PLUGIN_EXPORT_WORKERS", default_value_t = 1)]
    pub export_workers: usize,
    /// Batches of written events waiting for on_event; past it, a batch waits at most
    /// PLUGIN_ON_EVENT_ENQUEUE_TIMEOUT_MS, then its exports are dropped and counted.
    #[arg(long = "plugin-on-event-queue-batches", env = "PLUGIN_ON_EVENT_QUEUE_BATCHES", default_value_t = 64)]
    pub on_event_queue_batches: usize,
    #[arg(
        long = "plugin-on-event-enqueue-timeout-ms",
        env = "PLUGIN_ON_EVENT_ENQUEUE_TIMEOUT_MS",
        default_value = "1000",
        value_name = "MS", value_parser = millis
    )]
    pub on_event_enqueue_timeout: Duration,
    /// Calls of on_event for one event when it asks to be retried (ctx.retry).
    #[arg(long = "plugin-on-event-attempts", env = "PLUGIN_ON_EVENT_ATTEMPTS", default_value_t = 3)]
    pub on_event_attempts: u32,
    /// Wall time of setup, on_event, a schedule, teardown, not counting the I/O they
    /// await (http, cache, storage).
    #[arg(long = "plugin-hook-timeout-ms", env = "PLUGIN_HOOK_TIMEOUT_MS", default_value = "30000", value_name = "MS", value_parser = millis)]
    pub hook_timeout: Duration,
    /// Awaited I/O one call of setup, on_event, a schedule or teardown may spend in all.
    #[arg(long = "plugin-hook-io-ms", env = "PLUGIN_HOOK_IO_MS", default_value = "120000", value_name = "MS", value_parser = millis)]
    pub hook_io: Duration,
    /// The length of a "minute" for plugin schedules (every_hour is 60 of them,
    /// every_day 1,440). Only tests shorten it.
    #[arg(
        long = "plugin-schedule-minute-ms",
        env = "PLUGIN_SCHEDULE_MINUTE_MS",
        default_value = "60000",
        value_name = "MS", value_parser = millis
    )]
    pub schedule_minute: Duration,
    /// A MaxMind City (or GeoLite2-City) database file for plugins' ctx.geoip; empty
    /// for none.
    #[arg(long = "geoip-database-path", env = "GEOIP_DATABASE_PATH", default_value = "")]
    pub geoip_database_path: String,
    /// Lua heap of one plugin VM.
    #[arg(long = "plugin-memory-mb", env = "PLUGIN_MEMORY_MB", default_value_t = 32)]
    pub memory_mb: usize,
    /// Wall time of one process_event call.
    #[arg(
        long = "plugin-process-event-timeout-ms",
        env = "PLUGIN_PROCESS_EVENT_TIMEOUT_MS",
        default_value = "50",
        value_name = "MS", value_parser = millis
    )]
    pub process_event_timeout: Duration,
    /// Interrupts (loop turns, calls) one process_event call may take: a limit that
    /// does not depend on the machine's speed.
    #[arg(long = "plugin-process-event-ticks", env = "PLUGIN_PROCESS_EVENT_TICKS", default_value_t = 2_000_000)]
    pub process_event_ticks: u64,
    /// Let plugins' http.fetch reach loopback, private and link-local addresses.
    #[arg(long = "plugin-http-allow-private", env = "PLUGIN_HTTP_ALLOW_PRIVATE", default_value_t = false, action = clap::ArgAction::Set)]
    pub http_allow_private: bool,
}

impl PluginSettings {
    /// What one plugin VM may use, as the operator set it (a plugin may ask for less).
    pub fn limits(&self) -> sluice_plugin_runtime::Limits {
        let mut limits = sluice_plugin_runtime::Limits {
            memory_bytes: self.memory_mb << 20,
            process_event_wall: self.process_event_timeout,
            process_event_ticks: self.process_event_ticks,
            hook_wall: self.hook_timeout,
            hook_io: self.hook_io,
            store: sluice_plugin_runtime::Quota {
                keys: self.store_max_keys,
                bytes: self.store_max_bytes,
                ..Default::default()
            },
            ..sluice_plugin_runtime::Limits::default()
        };
        limits.http.allow_private_addresses = self.http_allow_private;
        limits
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    /// `sluice-plugin` runs authors' plugins with the runtime's default limits: they must
    /// be what ingest runs them with when the operator sets nothing.
    #[test]
    fn the_default_limits_are_the_author_tools() {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            plugins: super::PluginSettings,
        }
        let defaults = Only::try_parse_from(["sluice-ingest"]).expect("defaults parse").plugins;
        assert_eq!(defaults.limits(), sluice_plugin_runtime::Limits::default());
        assert_eq!(defaults.max_strikes, sluice_plugin_runtime::DEFAULT_MAX_STRIKES);
    }
}
