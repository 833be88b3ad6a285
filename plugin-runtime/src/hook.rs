//! The hooks a plugin may define and how a call of one can fail: the vocabulary the VM,
//! its host API, the worker protocol and the supervisor share, kept apart from all of
//! them so none imports another for it.

/// The hooks a plugin may define; on the wire by their Lua names (`process_event`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hook {
    Setup,
    ProcessEvent,
    OnEvent,
    /// `export_events(events, ctx)`: a buffer of written events at once (the app
    /// server's `exportEvents`).
    ExportEvents,
    EveryMinute,
    EveryHour,
    EveryDay,
    Teardown,
    /// One of the plugin's `jobs` (a table of functions, not a function).
    Jobs,
}

impl Hook {
    pub const ALL: [Hook; 9] = [
        Hook::Setup,
        Hook::ProcessEvent,
        Hook::OnEvent,
        Hook::ExportEvents,
        Hook::EveryMinute,
        Hook::EveryHour,
        Hook::EveryDay,
        Hook::Teardown,
        Hook::Jobs,
    ];

    /// The hooks that receive written events: they run in the exports lane.
    pub fn is_export(self) -> bool {
        matches!(self, Hook::OnEvent | Hook::ExportEvents)
    }

    /// `every_minute`, `every_hour`, `every_day`.
    pub fn is_schedule(self) -> bool {
        matches!(self, Hook::EveryMinute | Hook::EveryHour | Hook::EveryDay)
    }

    /// The schedule's period in minutes; `None` for other hooks.
    pub fn period_minutes(self) -> Option<u64> {
        match self {
            Hook::EveryMinute => Some(1),
            Hook::EveryHour => Some(60),
            Hook::EveryDay => Some(60 * 24),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Hook::Setup => "setup",
            Hook::ProcessEvent => "process_event",
            Hook::OnEvent => "on_event",
            Hook::ExportEvents => "export_events",
            Hook::EveryMinute => "every_minute",
            Hook::EveryHour => "every_hour",
            Hook::EveryDay => "every_day",
            Hook::Teardown => "teardown",
            Hook::Jobs => "jobs",
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum PluginError {
    #[error("main.lua does not load: {0}")]
    Compile(String),
    #[error("{hook} failed: {message}")]
    Failed { hook: String, message: String },
    #[error("{hook} took longer than its time limit of {limit_ms} ms (stopped after {took_ms} ms)")]
    Timeout { hook: String, limit_ms: u64, took_ms: u64 },
    #[error("{hook} used up its tick budget of {budget} interrupts (loop turns and calls)")]
    Ticks { hook: String, budget: u64 },
    #[error("{hook} ran out of memory (limit {limit} bytes)")]
    Memory { hook: String, limit: usize },
    #[error("process_event returned something that is not an event: {0}")]
    InvalidEvent(String),
    #[error("retry requested: {0}")]
    Retry(String),
}

impl PluginError {
    /// Errors that count against the plugin's health as limit violations.
    pub fn is_limit(&self) -> bool {
        matches!(self, PluginError::Timeout { .. } | PluginError::Ticks { .. } | PluginError::Memory { .. })
    }

    /// What kind of failure it is, for metric labels: `timeout`, `ticks`, `memory`,
    /// `invalid_event`, `compile`, `retry` or `error`.
    pub fn kind(&self) -> &'static str {
        match self {
            PluginError::Timeout { .. } => "timeout",
            PluginError::Ticks { .. } => "ticks",
            PluginError::Memory { .. } => "memory",
            PluginError::InvalidEvent(_) => "invalid_event",
            PluginError::Compile(_) => "compile",
            PluginError::Retry(_) => "retry",
            PluginError::Failed { .. } => "error",
        }
    }
}

/// A team, by its id in ingest's Postgres: which worker runs its plugins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct TeamId(pub i64);

/// One plugin installed for one team with its settings (a `plugin_configs` row): what
/// runs, and what strikes, logs and store quotas are counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct PluginConfigId(pub i64);

impl std::fmt::Display for TeamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::fmt::Display for PluginConfigId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}
