//! Step 5: the plugins of each team. A wing of its own, one module per job:
//!
//! - [`registry`]: which configurations run, loaded from Postgres and reloaded when an
//!   operator changes them ([`reload`] listens for that);
//! - [`chain`]: `process_event` over a batch, in the team's order;
//! - [`exports`]: `on_event` and `export_events` calls for the exports lane, in a worker
//!   pool of their own;
//! - [`schedules`]: `every_minute` / `every_hour` / `every_day`, once per period cluster-wide;
//! - [`capture`]: what plugins sent with `ctx.capture`, into the ingestion topic;
//! - [`jobs`]: plugins' jobs, claimed from Postgres and run once across processes;
//! - [`health`]: degraded and disabled, from recent failures;
//! - [`event`]: the event as plugins see it and back; [`store`]: the plugin-config SQL.

mod capture;
mod chain;
mod event;
mod exports;
mod health;
pub(crate) mod jobs;
mod registry;
mod reload;
pub(crate) mod schedules;
mod store;

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use sluice_plugin_runtime::WorkerEnv;
use sluice_plugin_runtime::{Hook, Limits};
use sluice_plugin_runtime::{Supervisor, SupervisorSettings};
use sluice_schema::clickhouse::Flavor;
use sqlx::PgPool;
use time::OffsetDateTime;
use tracing::warn;

use crate::config::Config;
use crate::rows::PluginLogRow;
use crate::write::ClickHouse;

pub(crate) use capture::CaptureSink;
pub(crate) use chain::AfterPlugins;
pub(crate) use exports::{on_event_payload, Delivered};
pub(crate) use health::{CallHealth, HealthThresholds, PluginState};
pub(crate) use reload::spawn_reloader;

/// One link of a team's chain.
#[derive(Debug, Clone)]
struct Link {
    id: i64,
    /// `name (id)`, as `$plugins_succeeded` lists it.
    label: String,
    /// Its manifest says `required`: an event it did not process is not stored.
    required: bool,
}

/// Which hooks of the teams' plugins a process runs: an event lane runs `process_event`
/// and the schedules, the exports lane `on_event` and `export_events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Events,
    Exports,
}

pub(crate) struct Plugins {
    pool: PgPool,
    role: Role,
    supervisor: Supervisor,
    /// A pool of its own for exports and schedules: they never hold up `process_event`.
    exports: Supervisor,
    limits: Limits,
    thresholds: HealthThresholds,
    chains: RwLock<HashMap<i64, Vec<Link>>>,
    /// Teams with a required plugin that cannot run (disabled, or never loaded), and why:
    /// their events are dead-lettered, not stored unprocessed.
    blocked: RwLock<HashMap<i64, String>>,
    /// Each team's export plugins and the export hook each runs (one with both
    /// `on_event` and `export_events` is listed twice).
    export_chains: RwLock<HashMap<i64, Vec<(Link, Hook)>>>,
    /// Instances with schedules but neither process_event nor an export hook.
    scheduled_only: RwLock<HashSet<i64>>,
    loaded: Mutex<HashMap<i64, Version>>,
    /// One refresh at a time (the reloader, and the exports lane when an event names a
    /// team it knows no exporter of).
    refreshing: tokio::sync::Mutex<()>,
    /// The configurations were read at least once: until then no team is known to have
    /// no plugins.
    read_once: std::sync::atomic::AtomicBool,
    /// Where `ctx.capture`'s events go, and the teams' tokens they go under.
    capture_sink: std::sync::OnceLock<CaptureSink>,
    tokens: Mutex<HashMap<i64, String>>,
    /// Recent calls and failures per instance.
    failures: Mutex<HashMap<i64, CallHealth>>,
}

/// Which configuration version of an instance was last tried, and whether some version
/// of it runs.
#[derive(Debug, Clone)]
struct Version {
    attempted: OffsetDateTime,
    running: bool,
    /// Hooks of the version running.
    hooks: Vec<Hook>,
    team: i64,
}

impl Plugins {
    /// The plugin stage of a process in `role`.
    pub(crate) fn new(config: &Config, pool: PgPool, role: Role) -> anyhow::Result<Plugins> {
        let limits = config.plugins.limits.limits();
        // What the workers connect to, and nothing else of ingest's environment.
        let settings = SupervisorSettings::production(
            std::env::current_exe()?,
            vec!["plugin-worker".into()],
            WorkerEnv {
                cache_redis_url: Some(config.redis.url.clone()),
                cache_prefix: sluice_schema::redis_keys::plugin_cache(&config.redis.key_prefix),
                cache_redis_tls: config.redis.tls.clone(),
                storage_database_url: Some(config.postgres.url.clone()),
                geoip_database: Some(config.plugins.geoip_database_path.clone()),
                http_stub: false,
            }
            .to_vars(),
            config.plugins.workers,
            &config.plugins.limits,
        );
        let exports = SupervisorSettings {
            workers: config.plugins.export_workers,
            per_event: limits.hook_call(),
            ..settings.clone()
        };
        let plugins = Plugins {
            pool,
            role,
            supervisor: Supervisor::new(settings),
            exports: Supervisor::new(exports),
            limits,
            thresholds: HealthThresholds {
                degrade_after: config.plugins.degrade_after_failures,
                disable_after: config.plugins.disable_after_failures,
                failure_ratio: config.plugins.failure_ratio,
            },
            chains: RwLock::default(),
            blocked: RwLock::default(),
            export_chains: RwLock::default(),
            scheduled_only: RwLock::default(),
            loaded: Mutex::default(),
            refreshing: tokio::sync::Mutex::default(),
            read_once: Default::default(),
            capture_sink: Default::default(),
            tokens: Mutex::default(),
            failures: Mutex::default(),
        };
        Ok(plugins)
    }

    /// Runs every instance's `teardown` (in both worker pools) and stops the workers.
    pub(crate) async fn shutdown(&self, within: Duration) {
        tokio::join!(self.supervisor.shutdown(within), self.exports.shutdown(within));
    }

    /// Whether the plugin configurations have been read at least once.
    pub(crate) fn read_once(&self) -> bool {
        self.read_once.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether the team's written events go to the exports topic.
    pub(crate) fn has_exports(&self, team: i64) -> bool {
        self.export_chains.read().expect("chains lock").get(&team).is_some_and(|c| !c.is_empty())
    }

    /// The team's export plugins: `(plugin config, hook)`, in the team's order.
    pub(crate) fn exporters(&self, team: i64) -> Vec<(i64, Hook)> {
        let chains = self.export_chains.read().expect("chains lock");
        chains.get(&team).map(|c| c.iter().map(|(l, h)| (l.id, *h)).collect()).unwrap_or_default()
    }

    /// Whether the team's events go through [`Plugins::apply`].
    pub(crate) fn has_chain(&self, team: i64) -> bool {
        self.chains.read().expect("chains lock").get(&team).is_some_and(|c| !c.is_empty())
            || self.blocked.read().expect("blocked lock").contains_key(&team)
    }
}

/// Lines for ClickHouse `plugin_log_entries`, gathered while a call's outcome is read.
pub(crate) struct PluginLogs {
    team: i64,
    flavor: Flavor,
    at: OffsetDateTime,
    rows: Vec<crate::rows::Encoded>,
}

impl PluginLogs {
    fn new(team: i64, flavor: Flavor) -> PluginLogs {
        PluginLogs { team, flavor, at: OffsetDateTime::now_utc(), rows: Vec::new() }
    }

    fn push(&mut self, plugin_config_id: i64, level: &str, message: &str) {
        let row = PluginLogRow { team_id: self.team, plugin_config_id, level, message, timestamp: self.at };
        self.rows.push(row.encode(self.flavor));
    }

    fn into_rows(self) -> Vec<crate::rows::Encoded> {
        self.rows
    }

    /// Writes the lines now (exports and schedules; a batch's lines go with the batch).
    async fn write(self, ch: &ClickHouse, what: &str) {
        if self.rows.is_empty() {
            return;
        }
        let rows: Vec<(usize, crate::rows::Encoded)> = self.rows.into_iter().map(|r| (usize::MAX, r)).collect();
        if let Err(e) =
            ch.insert(crate::rows::Table::PluginLogEntries, &rows, &format!("{what}-{}", uuid::Uuid::now_v7())).await
        {
            warn!(error = %e, what, "could not write plugin log lines");
        }
    }
}
