//! What one plugin VM may use. The operator sets these; a plugin cannot raise them.

use std::time::Duration;

use crate::manifest::AskedLimits;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Lua heap of one VM. Host buffers (http bodies, cache values) have caps of their own.
    pub memory_bytes: usize,
    /// Wall time of one `process_event` call.
    pub process_event_wall: Duration,
    /// Interrupts (loop back-edges, calls) one `process_event` call may take: a budget
    /// that does not depend on the machine's speed or load.
    pub process_event_ticks: u64,
    /// Wall time of `setup`, `on_event`, a schedule, `teardown`, not counting the I/O
    /// they await (`http`, `cache`, `storage`), which has its own allowance.
    pub hook_wall: Duration,
    pub hook_ticks: u64,
    /// Awaited I/O one call of those hooks may spend in all; with `hook_wall` it bounds
    /// the call, and the supervisor's hang detection.
    pub hook_io: Duration,
    /// One `cache` or `storage` operation.
    pub store_timeout: Duration,
    /// Largest log line; longer lines are cut.
    pub log_line_bytes: usize,
    /// Log lines one VM may write per minute; the rest are counted and dropped.
    pub log_lines_per_minute: u32,
    /// Largest value `cache.set` / `storage.set` accept.
    pub value_bytes: usize,
    /// What one plugin configuration may keep in its cache, and again in its storage.
    #[serde(default)]
    pub store: crate::kv::Quota,
    /// Largest event `process_event` may return, as JSON.
    #[serde(default = "default_event_bytes")]
    pub event_bytes: usize,
    /// Events `ctx.capture` may send in one call, and per minute.
    #[serde(default)]
    pub capture: CaptureLimits,
    /// Jobs `ctx.jobs` may keep pending, and their payloads.
    #[serde(default)]
    pub jobs: crate::jobs::JobLimits,
    pub http: HttpLimits,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CaptureLimits {
    pub per_call: u32,
    pub per_minute: u32,
    /// How many times in a row events captured by plugins may lead plugins to capture
    /// again: an event a plugin captured carries its depth, and a capture in a call
    /// about such an event is refused past this.
    pub max_depth: u32,
}

impl Default for CaptureLimits {
    fn default() -> Self {
        CaptureLimits { per_call: 1_000, per_minute: 10_000, max_depth: 3 }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HttpLimits {
    pub timeout: Duration,
    pub max_response_bytes: usize,
    pub max_requests_per_call: u32,
    /// Lets plugins reach loopback, private and link-local addresses (tests, on-premise
    /// receivers). Off by default: those are the cluster's own services.
    pub allow_private_addresses: bool,
    /// Lets plugins that ask for it use `http.fetch` inside `process_event`.
    pub allow_in_process_event: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 32 << 20,
            process_event_wall: Duration::from_millis(50),
            process_event_ticks: 2_000_000,
            hook_wall: Duration::from_secs(30),
            hook_ticks: 1_000_000_000,
            hook_io: Duration::from_secs(120),
            store_timeout: Duration::from_secs(5),
            log_line_bytes: 1024,
            log_lines_per_minute: 600,
            value_bytes: 64 << 10,
            store: crate::kv::Quota::default(),
            event_bytes: default_event_bytes(),
            capture: CaptureLimits::default(),
            jobs: crate::jobs::JobLimits::default(),
            http: HttpLimits {
                timeout: Duration::from_secs(5),
                max_response_bytes: 1 << 20,
                max_requests_per_call: 50,
                allow_private_addresses: false,
                allow_in_process_event: false,
            },
        }
    }
}

/// PostHog's own limit on an event.
pub(crate) const DEFAULT_EVENT_BYTES: usize = 1 << 20;

fn default_event_bytes() -> usize {
    DEFAULT_EVENT_BYTES
}

impl Limits {
    /// The longest a call of `setup`, `on_event`, a schedule or `teardown` can take.
    pub fn hook_call(&self) -> Duration {
        self.hook_wall + self.hook_io
    }

    /// The limits one plugin runs with: what it asked for in `plugin.json`, each capped
    /// by the operator's. A plugin can make its own limits tighter, never looser.
    pub fn asked_by(&self, asked: &AskedLimits) -> Limits {
        let ms = |v: Option<u64>, cap: Duration| v.map_or(cap, |ms| Duration::from_millis(ms).min(cap));
        let mut limits = Limits {
            memory_bytes: asked
                .memory_mb
                .map_or(self.memory_bytes, |mb| mb.saturating_mul(1 << 20).min(self.memory_bytes)),
            process_event_wall: ms(asked.process_event_timeout_ms, self.process_event_wall),
            process_event_ticks: asked
                .process_event_ticks
                .map_or(self.process_event_ticks, |t| t.min(self.process_event_ticks)),
            hook_wall: ms(asked.hook_timeout_ms, self.hook_wall),
            ..self.clone()
        };
        limits.http.timeout = ms(asked.http_timeout_ms, self.http.timeout);
        limits
    }
}

/// What the operator sets of every plugin VM's limits (`PLUGIN_*`): ingest runs plugins
/// with these, and `sluice-plugin` runs an author's plugin with the very same settings and
/// defaults, so a plugin fails on the author's machine as it would in production.
#[derive(Debug, Clone, clap::Args)]
pub struct LimitSettings {
    /// Crashes or hangs of a worker while a plugin runs before that plugin is disabled.
    #[arg(long = "plugin-max-strikes", env = "PLUGIN_MAX_STRIKES", default_value_t = 3)]
    pub max_strikes: u32,
    /// Events one call of a hook may send with ctx.capture…
    #[arg(long = "plugin-capture-max-per-call", env = "PLUGIN_CAPTURE_MAX_PER_CALL", default_value_t = 1_000)]
    pub capture_per_call: u32,
    /// …and one plugin configuration per minute (in each worker process).
    #[arg(long = "plugin-capture-max-per-minute", env = "PLUGIN_CAPTURE_MAX_PER_MINUTE", default_value_t = 10_000)]
    pub capture_per_minute: u32,
    /// Pending jobs (ctx.jobs) one plugin configuration may have…
    #[arg(long = "plugin-jobs-max-pending", env = "PLUGIN_JOBS_MAX_PENDING", default_value_t = 10_000)]
    pub jobs_max_pending: u32,
    /// …and the largest payload of one, as JSON.
    #[arg(long = "plugin-job-payload-max-bytes", env = "PLUGIN_JOB_PAYLOAD_MAX_BYTES", default_value_t = 64 << 10)]
    pub job_payload_max_bytes: usize,
    /// Keys one plugin configuration may keep in its cache, and again in its storage.
    #[arg(long = "plugin-store-max-keys", env = "PLUGIN_STORE_MAX_KEYS", default_value_t = 10_000)]
    pub store_max_keys: usize,
    /// Bytes (keys and values) one plugin configuration may keep in its cache, and again in its storage.
    #[arg(long = "plugin-store-max-bytes", env = "PLUGIN_STORE_MAX_BYTES", default_value_t = 16 << 20)]
    pub store_max_bytes: usize,
    /// Wall time of setup, on_event, a schedule, teardown, not counting the I/O they
    /// await (http, cache, storage).
    #[arg(long = "plugin-hook-timeout-ms", env = "PLUGIN_HOOK_TIMEOUT_MS", default_value = "30000", value_name = "MS", value_parser = sluice_common::settings::millis)]
    pub hook_timeout: Duration,
    /// Awaited I/O one call of setup, on_event, a schedule or teardown may spend in all.
    #[arg(long = "plugin-hook-io-ms", env = "PLUGIN_HOOK_IO_MS", default_value = "120000", value_name = "MS", value_parser = sluice_common::settings::millis)]
    pub hook_io: Duration,
    /// Lua heap of one plugin VM.
    #[arg(long = "plugin-memory-mb", env = "PLUGIN_MEMORY_MB", default_value_t = 32)]
    pub memory_mb: usize,
    /// Wall time of one process_event call.
    #[arg(
        long = "plugin-process-event-timeout-ms",
        env = "PLUGIN_PROCESS_EVENT_TIMEOUT_MS",
        default_value = "50",
        value_name = "MS", value_parser = sluice_common::settings::millis
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

impl LimitSettings {
    /// What one plugin VM may use, as the operator set it (a plugin may ask for less).
    pub fn limits(&self) -> Limits {
        let mut limits = Limits {
            memory_bytes: self.memory_mb << 20,
            process_event_wall: self.process_event_timeout,
            process_event_ticks: self.process_event_ticks,
            hook_wall: self.hook_timeout,
            hook_io: self.hook_io,
            store: crate::kv::Quota { keys: self.store_max_keys, bytes: self.store_max_bytes, ..Default::default() },
            capture: CaptureLimits {
                per_call: self.capture_per_call,
                per_minute: self.capture_per_minute,
                ..CaptureLimits::default()
            },
            jobs: crate::jobs::JobLimits {
                max_pending: self.jobs_max_pending,
                payload_bytes: self.job_payload_max_bytes,
            },
            ..Limits::default()
        };
        limits.http.allow_private_addresses = self.http_allow_private;
        limits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The settings' defaults are the runtime's defaults, which the sandbox tests hold.
    #[test]
    fn the_settings_default_to_the_runtimes_limits() {
        use clap::Parser;
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            limits: LimitSettings,
        }
        let defaults = Only::try_parse_from(["plugins"]).expect("defaults parse").limits;
        assert_eq!(defaults.limits(), Limits::default());
        assert_eq!(defaults.max_strikes, 3, "the documented PLUGIN_MAX_STRIKES");
    }

    #[test]
    fn a_plugin_can_lower_its_limits_but_not_raise_them() {
        let operator = Limits::default();
        assert_eq!(operator.asked_by(&AskedLimits::default()), operator);
        let lower = AskedLimits {
            memory_mb: Some(4),
            process_event_timeout_ms: Some(10),
            process_event_ticks: Some(1_000),
            hook_timeout_ms: Some(2_000),
            http_timeout_ms: Some(500),
        };
        let l = operator.asked_by(&lower);
        assert_eq!(l.memory_bytes, 4 << 20);
        assert_eq!(l.process_event_wall, Duration::from_millis(10));
        assert_eq!(l.process_event_ticks, 1_000);
        assert_eq!(l.hook_wall, Duration::from_secs(2));
        assert_eq!(l.http.timeout, Duration::from_millis(500));
        assert_eq!(l.value_bytes, operator.value_bytes, "what cannot be asked for stays");
        let higher = AskedLimits {
            memory_mb: Some(usize::MAX),
            process_event_timeout_ms: Some(u64::MAX),
            process_event_ticks: Some(u64::MAX),
            hook_timeout_ms: Some(3_600_000),
            http_timeout_ms: Some(60_000),
        };
        assert_eq!(operator.asked_by(&higher), operator);
    }
}
