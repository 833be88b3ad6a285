//! Step 5: the plugins of each team. A wing of its own, one module per job:
//!
//! - [`registry`]: which configurations run, loaded from Postgres and reloaded when an
//!   operator changes them ([`reload`] listens for that);
//! - [`chain`]: `process_event` over a batch, in the team's order;
//! - [`exports`]: `on_event` for written events, in a pool of its own;
//! - [`schedules`]: `every_minute` / `every_hour` / `every_day`, once per period cluster-wide;
//! - [`health`]: degraded and disabled, from recent failures;
//! - [`event`]: the event as plugins see it and back; [`store`]: the plugin-config SQL.

mod chain;
mod event;
mod exports;
mod health;
mod registry;
mod reload;
pub(crate) mod schedules;
mod store;

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use serde_json::Value;
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

pub(crate) use chain::AfterPlugins;
pub(crate) use exports::{on_event_payload, spawn_on_event, OnEventQueue};
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

pub(crate) struct Plugins {
    pool: PgPool,
    supervisor: Supervisor,
    /// A pool of its own for `on_event`: slow exports never hold up `process_event`.
    exports: Supervisor,
    limits: Limits,
    thresholds: HealthThresholds,
    chains: RwLock<HashMap<i64, Vec<Link>>>,
    /// Teams with a required plugin that cannot run (disabled, or never loaded), and why:
    /// their events are dead-lettered, not stored unprocessed.
    blocked: RwLock<HashMap<i64, String>>,
    on_event_chains: RwLock<HashMap<i64, Vec<Link>>>,
    /// Instances with schedules but neither process_event nor on_event.
    scheduled_only: RwLock<HashSet<i64>>,
    on_event_queue: tokio::sync::mpsc::Sender<(i64, Vec<Value>)>,
    on_event_attempts: u32,
    loaded: Mutex<HashMap<i64, Version>>,
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
    /// The plugin stage, and the receiving end of its `on_event` queue for
    /// [`spawn_on_event`].
    pub(crate) fn new(config: &Config, pool: PgPool) -> anyhow::Result<(Plugins, OnEventQueue)> {
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
            per_event: limits.hook_call() * config.plugins.on_event_attempts.max(1),
            ..settings.clone()
        };
        let (tx, rx) = tokio::sync::mpsc::channel(config.plugins.on_event_queue_batches.max(1));
        let plugins = Plugins {
            pool,
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
            on_event_chains: RwLock::default(),
            scheduled_only: RwLock::default(),
            on_event_queue: tx,
            on_event_attempts: config.plugins.on_event_attempts,
            loaded: Mutex::default(),
            failures: Mutex::default(),
        };
        Ok((plugins, rx))
    }

    /// Runs every instance's `teardown` (in both worker pools) and stops the workers.
    pub(crate) async fn shutdown(&self, within: Duration) {
        tokio::join!(self.supervisor.shutdown(within), self.exports.shutdown(within));
    }

    pub(crate) fn has_on_event(&self, team: i64) -> bool {
        self.on_event_chains.read().expect("chains lock").get(&team).is_some_and(|c| !c.is_empty())
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
    rows: Vec<Value>,
}

impl PluginLogs {
    fn new(team: i64, flavor: Flavor) -> PluginLogs {
        PluginLogs { team, flavor, at: OffsetDateTime::now_utc(), rows: Vec::new() }
    }

    fn push(&mut self, plugin_config_id: i64, level: &str, message: &str) {
        let row = PluginLogRow { team_id: self.team, plugin_config_id, level, message, timestamp: self.at };
        self.rows.push(row.to_json(self.flavor));
    }

    fn into_rows(self) -> Vec<Value> {
        self.rows
    }

    /// Writes the lines now (exports and schedules; a batch's lines go with the batch).
    async fn write(self, ch: &ClickHouse, what: &str) {
        if self.rows.is_empty() {
            return;
        }
        let rows: Vec<(usize, Value)> = self.rows.into_iter().map(|r| (usize::MAX, r)).collect();
        if let Err(e) =
            ch.insert(crate::rows::Table::PluginLogEntries, &rows, &format!("{what}-{}", uuid::Uuid::now_v7())).await
        {
            warn!(error = %e, what, "could not write plugin log lines");
        }
    }
}
