//! Step 5: each team's plugins, in the team's order, on a batch's events — one round
//! trip to the team's worker process per batch.
//!
//! Instances are loaded from Postgres and reloaded when their `updated_at` moves (an
//! operator command): the new version is compiled and set up in the worker and swapped
//! in only if its `setup` succeeds. Failures never stop events: an event continues with
//! the last good version and says which plugins succeeded and failed
//! (`$plugins_succeeded`, `$plugins_failed`). A plugin that keeps failing is degraded,
//! then disabled, with the reason stored for the operator.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use serde_json::{json, Map, Value};
use sluice_plugin_runtime::protocol::Instance;
use sluice_plugin_runtime::supervisor::{Settings, Supervisor};
use sluice_plugin_runtime::{Limits, Manifest, PluginError};
use sluice_schema::clickhouse::Flavor;
use sluice_schema::CapturedEvent;
use sqlx::PgPool;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tracing::{debug, info, warn};

use crate::config::Config;

/// Written events of one team waiting for `on_event`.
pub type OnEventQueue = tokio::sync::mpsc::Receiver<(i64, Vec<Value>)>;

/// One link of a team's chain.
#[derive(Debug, Clone)]
struct Link {
    id: i64,
    /// `name (id)`, as `$plugins_succeeded` lists it.
    label: String,
    /// Its manifest says `required`: an event it did not process is not stored.
    required: bool,
}

pub struct Plugins {
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
    scheduled_only: RwLock<std::collections::HashSet<i64>>,
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
    hooks: Vec<String>,
    team: i64,
}

/// What became of one event in its team's chain.
pub enum AfterPlugins {
    Keep(CapturedEvent),
    /// A plugin dropped it.
    Dropped,
    /// A required plugin did not process it: dead-lettered with this reason.
    Dead(String),
}

/// What the chain did to a batch's events of one team.
pub struct Applied {
    /// Per event, in order.
    pub events: Vec<AfterPlugins>,
    /// Rows for ClickHouse `plugin_log_entries`.
    pub logs: Vec<Value>,
}

#[derive(sqlx::FromRow)]
struct ConfigRow {
    id: i64,
    team_id: i64,
    enabled: bool,
    status: String,
    config: sqlx::types::Json<Map<String, Value>>,
    updated_at: OffsetDateTime,
    manifest: sqlx::types::Json<Manifest>,
    source: String,
}

impl Plugins {
    /// The plugin stage, and the receiving end of its `on_event` queue for
    /// [`spawn_on_event`].
    pub fn new(config: &Config, pool: PgPool) -> anyhow::Result<(Plugins, OnEventQueue)> {
        let mut limits = Limits {
            memory_bytes: config.plugin_memory_mb << 20,
            process_event_wall: Duration::from_millis(config.plugin_process_event_timeout_ms),
            process_event_ticks: config.plugin_process_event_ticks,
            hook_wall: Duration::from_millis(config.plugin_hook_timeout_ms),
            hook_io: Duration::from_millis(config.plugin_hook_io_ms),
            store: sluice_plugin_runtime::kv::Quota {
                keys: config.plugin_store_max_keys,
                bytes: config.plugin_store_max_bytes,
                ..Default::default()
            },
            ..Limits::default()
        };
        limits.http.allow_private_addresses = config.plugin_http_allow_private;
        let settings = Settings {
            program: std::env::current_exe()?,
            args: vec!["plugin-worker".into()],
            // What the workers connect to, and nothing else of ingest's environment.
            env: [
                ("SLUICE_PLUGIN_CACHE_REDIS_URL".into(), config.redis_url.clone()),
                ("SLUICE_PLUGIN_CACHE_PREFIX".into(), format!("{}plugin-cache/", config.redis_key_prefix)),
                ("SLUICE_PLUGIN_STORAGE_DATABASE_URL".into(), config.database_url.clone()),
                ("SLUICE_PLUGIN_GEOIP_DATABASE".into(), config.geoip_database_path.clone()),
            ]
            .into_iter()
            .chain(config.redis_tls.to_vars("SLUICE_PLUGIN_CACHE_"))
            .collect(),
            workers: config.plugin_workers,
            batch_base: Duration::from_secs(5),
            per_event: limits.process_event_wall,
            max_strikes: config.plugin_max_strikes,
        };
        let exports = Settings {
            workers: config.plugin_export_workers,
            per_event: limits.hook_call() * config.plugin_on_event_attempts.max(1),
            ..settings.clone()
        };
        let (tx, rx) = tokio::sync::mpsc::channel(config.plugin_on_event_queue_batches.max(1));
        let plugins = Plugins {
            pool,
            supervisor: Supervisor::new(settings),
            exports: Supervisor::new(exports),
            limits,
            thresholds: HealthThresholds {
                degrade_after: config.plugin_degrade_after_failures,
                disable_after: config.plugin_disable_after_failures,
                failure_ratio: config.plugin_failure_ratio,
            },
            chains: RwLock::default(),
            blocked: RwLock::default(),
            on_event_chains: RwLock::default(),
            scheduled_only: RwLock::default(),
            on_event_queue: tx,
            on_event_attempts: config.plugin_on_event_attempts,
            loaded: Mutex::default(),
            failures: Mutex::default(),
        };
        Ok((plugins, rx))
    }

    /// `(team, instance, hook)` of every schedule hook of the running, enabled instances.
    pub fn scheduled(&self) -> Vec<(i64, i64, String)> {
        let live: std::collections::HashSet<i64> = self
            .chains
            .read()
            .expect("chains lock")
            .values()
            .chain(self.on_event_chains.read().expect("chains lock").values())
            .flatten()
            .map(|l| l.id)
            .collect();
        let loaded = self.loaded.lock().expect("loaded lock");
        let mut out = Vec::new();
        for (id, v) in loaded.iter().filter(|(_, v)| v.running) {
            for hook in v.hooks.iter().filter(|h| h.starts_with("every_")) {
                if live.contains(id) || self.scheduled_only.read().expect("lock").contains(id) {
                    out.push((v.team, *id, hook.clone()));
                }
            }
        }
        out
    }

    /// Runs one schedule of one instance and records what it logged or how it failed.
    pub async fn run_schedule(&self, team: i64, id: i64, hook: &str, info: Value, ch: &crate::write::ClickHouse) {
        let started = std::time::Instant::now();
        let (result, logs, strike) = self.exports.schedule(team, id, hook, info).await;
        crate::telemetry::step("schedule", started.elapsed().as_secs_f64());
        let now = ch.flavor.format(OffsetDateTime::now_utc());
        let mut rows: Vec<(usize, Value)> = logs
            .iter()
            .map(|e| (usize::MAX, json!({"team_id": team, "plugin_config_id": id, "level": e.level, "message": e.message, "timestamp": now})))
            .collect();
        if let Err(e) = &result {
            crate::telemetry::plugin_error(id, "schedule");
            warn!(plugin_config = id, team, hook, error = %e, "schedule failed");
            rows.push((usize::MAX, json!({"team_id": team, "plugin_config_id": id, "level": "error", "message": e.to_string(), "timestamp": now})));
        }
        if let Some(strike) = strike.filter(|s| s.disabled) {
            self.set_status(id, "disabled", &format!("its worker kept dying: {}", strike.reason)).await;
        }
        if !rows.is_empty() {
            if let Err(e) = ch.insert("plugin_log_entries", &rows, &format!("schedule-{}", uuid::Uuid::now_v7())).await
            {
                warn!(error = %e, "could not write schedule log lines");
            }
        }
    }

    /// Runs every instance's `teardown` (in both worker pools) and stops the workers.
    pub async fn shutdown(&self, within: Duration) {
        tokio::join!(self.supervisor.shutdown(within), self.exports.shutdown(within));
    }

    pub fn has_on_event(&self, team: i64) -> bool {
        self.on_event_chains.read().expect("chains lock").get(&team).is_some_and(|c| !c.is_empty())
    }

    /// Hands written events to the `on_event` exporters. Waits at most `wait` for room in
    /// the queue: exports never hold up the commit longer than that; what does not fit
    /// is counted.
    pub async fn enqueue_on_event(&self, team: i64, events: Vec<Value>, wait: Duration) {
        let n = events.len();
        if let Err(e) = self.on_event_queue.send_timeout((team, events), wait).await {
            warn!(team, events = n, error = %e, "on_event queue full; these events are not exported");
            crate::telemetry::on_event_dropped(n);
        }
    }

    /// Runs `on_event` for one team's written events.
    async fn export(&self, team: i64, events: Vec<Value>, ch: &crate::write::ClickHouse) {
        let chain = self.on_event_chains.read().expect("chains lock").get(&team).cloned().unwrap_or_default();
        if chain.is_empty() {
            return;
        }
        let ids: Vec<i64> = chain.iter().map(|l| l.id).collect();
        let started = std::time::Instant::now();
        let outcome = self.exports.on_event(team, &ids, events, self.on_event_attempts).await;
        crate::telemetry::step("on_event", started.elapsed().as_secs_f64());
        let now = ch.flavor.format(OffsetDateTime::now_utc());
        let mut rows = Vec::new();
        for (id, _, error) in &outcome.output.errors {
            crate::telemetry::plugin_error(*id, "on_event");
            warn!(plugin_config = id, team, error = %error, "on_event failed");
            rows.push((usize::MAX, json!({"team_id": team, "plugin_config_id": id, "level": "error", "message": error.to_string(), "timestamp": now})));
        }
        for (id, entry) in &outcome.output.logs {
            info!(plugin_config = id, team, level = %entry.level, "{}", entry.message);
            rows.push((usize::MAX, json!({"team_id": team, "plugin_config_id": id, "level": entry.level, "message": entry.message, "timestamp": now})));
        }
        for strike in &outcome.strikes {
            crate::telemetry::plugin_error(strike.id, "crash");
            if strike.disabled {
                self.set_status(strike.id, "disabled", &format!("its export worker kept dying: {}", strike.reason))
                    .await;
            }
        }
        if !rows.is_empty() {
            if let Err(e) = ch.insert("plugin_log_entries", &rows, &format!("on-event-{}", uuid::Uuid::now_v7())).await
            {
                warn!(error = %e, "could not write on_event log lines");
            }
        }
    }

    /// Whether the team's events go through [`Plugins::apply`].
    pub fn has_chain(&self, team: i64) -> bool {
        self.chains.read().expect("chains lock").get(&team).is_some_and(|c| !c.is_empty())
            || self.blocked.read().expect("blocked lock").contains_key(&team)
    }

    /// Loads what changed since the last call and rebuilds the chains.
    pub async fn refresh(&self) -> Result<(), sqlx::Error> {
        let rows: Vec<ConfigRow> = sqlx::query_as(
            "SELECT c.id, c.team_id, c.enabled, c.status, c.config, c.updated_at, p.manifest, p.source
             FROM plugin_configs c JOIN plugins p ON p.id = c.plugin_id
             ORDER BY c.team_id, c.\"order\", c.id",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut chains: HashMap<i64, Vec<Link>> = HashMap::new();
        let mut on_event_chains: HashMap<i64, Vec<Link>> = HashMap::new();
        let mut scheduled_only = std::collections::HashSet::new();
        let mut blocked: HashMap<i64, String> = HashMap::new();
        for row in rows {
            let label = format!("{} ({})", row.manifest.name, row.id);
            let required = row.manifest.required;
            if row.enabled && required && row.status == "disabled" {
                blocked.insert(row.team_id, format!("required plugin {label} is disabled"));
            }
            if !row.enabled || row.status == "disabled" {
                continue;
            }
            let attempted = self.loaded.lock().expect("loaded lock").get(&row.id).map(|l| l.attempted);
            if attempted != Some(row.updated_at) {
                let instance = Instance {
                    id: row.id,
                    source: sluice_plugin_runtime::PluginSource { manifest: row.manifest.0.clone(), main: row.source },
                    config: row.config.0,
                    limits: self.limits.clone(),
                };
                let mut result = self.supervisor.load(row.team_id, instance.clone()).await;
                if let Ok(hooks) = &result {
                    if hooks.iter().any(|h| h == "on_event" || h.starts_with("every_")) {
                        result = self.exports.load(row.team_id, instance).await.map(|_| hooks.clone());
                    }
                }
                let mut loaded = self.loaded.lock().expect("loaded lock");
                let entry = loaded.entry(row.id).or_insert(Version {
                    attempted: row.updated_at,
                    running: false,
                    hooks: Vec::new(),
                    team: row.team_id,
                });
                entry.attempted = row.updated_at;
                match result {
                    Ok(hooks) => {
                        info!(plugin_config = row.id, team = row.team_id, plugin = %row.manifest.name, ?hooks, "plugin loaded");
                        entry.running = true;
                        entry.hooks = hooks;
                        self.failures.lock().expect("failures lock").remove(&row.id);
                    }
                    Err(e) => {
                        // The version loaded before (if any) keeps running; this one is
                        // not tried again until the configuration changes.
                        warn!(plugin_config = row.id, error = %e, "plugin did not load; keeping what ran before");
                        crate::telemetry::plugin_error(row.id, "setup");
                    }
                }
            }
            let Some(hooks) =
                self.loaded.lock().expect("loaded lock").get(&row.id).filter(|l| l.running).map(|l| l.hooks.clone())
            else {
                if required {
                    blocked.insert(row.team_id, format!("required plugin {label} did not load"));
                }
                continue;
            };
            let link = Link { id: row.id, label, required };
            if hooks.iter().any(|h| h == "process_event") {
                chains.entry(row.team_id).or_default().push(link.clone());
            }
            if hooks.iter().any(|h| h == "on_event") {
                on_event_chains.entry(row.team_id).or_default().push(link);
            } else if !hooks.iter().any(|h| h == "process_event") {
                scheduled_only.insert(row.id);
            }
        }
        *self.scheduled_only.write().expect("lock") = scheduled_only;
        *self.blocked.write().expect("blocked lock") = blocked;
        *self.chains.write().expect("chains lock") = chains;
        *self.on_event_chains.write().expect("chains lock") = on_event_chains;
        Ok(())
    }

    /// Runs the team's chain over `events` (all of `team`).
    pub async fn apply(&self, team: i64, events: Vec<CapturedEvent>, flavor: Flavor) -> Applied {
        if let Some(reason) = self.blocked.read().expect("blocked lock").get(&team).cloned() {
            return Applied {
                events: events.iter().map(|_| AfterPlugins::Dead(reason.clone())).collect(),
                logs: Vec::new(),
            };
        }
        let chain = self.chains.read().expect("chains lock").get(&team).cloned().unwrap_or_default();
        let inputs: Vec<Value> = events.iter().map(|e| to_plugin_event(e, team)).collect();
        let started = std::time::Instant::now();
        let ids: Vec<i64> = chain.iter().map(|l| l.id).collect();
        let outcome = self.supervisor.process(team, &ids, inputs).await;
        crate::telemetry::step("plugins", started.elapsed().as_secs_f64());
        let label = |id: i64| chain.iter().find(|l| l.id == id).map_or_else(|| id.to_string(), |l| l.label.clone());
        let now = OffsetDateTime::now_utc();
        let mut logs = Vec::new();
        let log_row = |id: i64, level: &str, message: &str| json!({"team_id": team, "plugin_config_id": id, "level": level, "message": message, "timestamp": flavor.format(now)});

        for link in &chain {
            crate::telemetry::plugin_calls(link.id, events.len());
        }
        for (id, seconds) in &outcome.output.durations {
            crate::telemetry::plugin_duration(*id, *seconds);
        }
        let mut failed_now: HashMap<i64, (u32, String)> = HashMap::new();
        for (id, _, error) in &outcome.output.errors {
            let kind = match error {
                PluginError::Timeout { .. } => "timeout",
                PluginError::Ticks { .. } => "ticks",
                PluginError::Memory { .. } => "memory",
                _ => "error",
            };
            crate::telemetry::plugin_error(*id, kind);
            let entry = failed_now.entry(*id).or_insert((0, String::new()));
            entry.0 += 1;
            entry.1 = error.to_string();
            warn!(plugin = %label(*id), team, error = %error, "plugin call failed");
            logs.push(log_row(*id, "error", &error.to_string()));
        }
        for (id, entry) in &outcome.output.logs {
            info!(plugin = %label(*id), team, level = %entry.level, "{}", entry.message);
            logs.push(log_row(*id, &entry.level, &entry.message));
        }
        for strike in &outcome.strikes {
            crate::telemetry::plugin_error(strike.id, "crash");
            logs.push(log_row(strike.id, "error", &strike.reason));
            if strike.disabled {
                self.set_status(strike.id, "disabled", &format!("its worker kept dying: {}", strike.reason)).await;
            }
        }
        for link in &chain {
            self.track_health(link.id, failed_now.get(&link.id), events.len()).await;
        }

        let errors = &outcome.output.errors;
        let events = events
            .into_iter()
            .zip(outcome.output.events)
            .enumerate()
            .map(|(i, (mut captured, processed))| {
                let missed = chain.iter().find(|l| l.required && processed.failed.contains(&l.id));
                if let Some(link) = missed {
                    let why = errors
                        .iter()
                        .find(|(id, at, _)| *id == link.id && *at == i)
                        .map_or_else(|| "it could not run".to_string(), |(_, _, e)| e.to_string());
                    return AfterPlugins::Dead(format!("required plugin {} did not process it: {why}", link.label));
                }
                let Some(event) = processed.event else { return AfterPlugins::Dropped };
                let succeeded: Vec<String> = processed.succeeded.iter().map(|id| label(*id)).collect();
                let failed: Vec<String> = processed.failed.iter().map(|id| label(*id)).collect();
                from_plugin_event(&mut captured, &event, &succeeded, &failed);
                AfterPlugins::Keep(captured)
            })
            .collect();
        Applied { events, logs }
    }

    /// Failed calls among the recent ones degrade, then disable, an instance: judged on
    /// the rate, so a plugin that still succeeds now and then is not healthy for it.
    async fn track_health(&self, id: i64, failed: Option<&(u32, String)>, calls: usize) {
        let failed_calls = failed.map_or(0, |(k, _)| *k as u64);
        let (verdict, (recent_failed, recent_calls)) = {
            let mut failures = self.failures.lock().expect("failures lock");
            let health = failures.entry(id).or_default();
            (health.record(failed_calls, calls as u64, &self.thresholds), health.counts())
        };
        let (Some(status), Some((_, last))) = (verdict, failed) else { return };
        let reason = format!("{recent_failed} of the last {recent_calls} calls failed; last: {last}");
        self.set_status(id, status, &reason).await;
        if status == "disabled" {
            for chains in [&self.chains, &self.on_event_chains] {
                chains.write().expect("chains lock").values_mut().for_each(|c| c.retain(|l| l.id != id));
            }
        }
    }

    async fn set_status(&self, id: i64, status: &str, reason: &str) {
        warn!(plugin_config = id, status, reason, "plugin state changed");
        crate::telemetry::plugin_state_changed(match status {
            "disabled" => "disabled",
            "degraded" => "degraded",
            _ => "other",
        });
        if status == "disabled" {
            let chains = self.chains.read().expect("chains lock");
            for (team, chain) in chains.iter() {
                if let Some(link) = chain.iter().find(|l| l.id == id && l.required) {
                    let why = format!("required plugin {} is disabled: {reason}", link.label);
                    self.blocked.write().expect("blocked lock").insert(*team, why);
                }
            }
        }
        let result = sqlx::query("UPDATE plugin_configs SET status = $2, status_reason = $3 WHERE id = $1")
            .bind(id)
            .bind(status)
            .bind(reason)
            .execute(&self.pool)
            .await;
        if let Err(e) = result {
            warn!(plugin_config = id, error = %e, "could not store the plugin's state");
        }
    }
}

/// The Redis channel operator commands publish a plugin config id on after a change.
pub fn reload_channel(key_prefix: &str) -> String {
    format!("{key_prefix}plugin-reload")
}

/// Re-reads plugin configurations when a reload notice arrives on Redis, and every
/// `interval` anyway (a notice lost while Redis was away is caught up with).
pub fn spawn_reloader(
    plugins: std::sync::Arc<Plugins>,
    interval: Duration,
    redis: Option<redis::Client>,
    channel: String,
) {
    let notice = std::sync::Arc::new(tokio::sync::Notify::new());
    if let Some(client) = redis {
        let notice = notice.clone();
        tokio::spawn(async move {
            use futures::StreamExt;
            loop {
                let subscribed = async {
                    let mut pubsub = client.get_async_pubsub().await?;
                    pubsub.subscribe(&channel).await?;
                    Ok::<_, redis::RedisError>(pubsub)
                };
                match subscribed.await {
                    Ok(pubsub) => {
                        let mut messages = pubsub.into_on_message();
                        while messages.next().await.is_some() {
                            notice.notify_one();
                        }
                    }
                    Err(e) => debug!(error = %e, "no reload notices from redis; polling only"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = notice.notified() => {}
            }
            if let Err(e) = plugins.refresh().await {
                warn!(error = %e, "reading plugin configurations failed; keeping the loaded ones");
            }
        }
    });
}

/// Runs queued `on_event` work until `stopping`; then hands over what is queued until
/// its drain deadline and counts the rest as dropped.
pub fn spawn_on_event(
    plugins: std::sync::Arc<Plugins>,
    mut queue: OnEventQueue,
    ch: std::sync::Arc<crate::write::ClickHouse>,
    stopping: crate::Stopping,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // Resolves at the deadline once stopping has begun; an export in flight then is
        // cut like a queued one.
        let cut = stopping.deadline_passed();
        tokio::pin!(cut);
        let mut handed = 0;
        loop {
            let next = if stopping.is_cancelled() {
                queue.try_recv().ok()
            } else {
                tokio::select! {
                    next = queue.recv() => match next {
                        Some(work) => Some(work),
                        None => return,
                    },
                    _ = stopping.cancelled() => continue,
                }
            };
            let Some((team, events)) = next else { break };
            let n = events.len();
            tokio::select! {
                _ = plugins.export(team, events, &ch) => {
                    if stopping.is_cancelled() {
                        handed += n;
                    }
                }
                _ = &mut cut => {
                    let mut left = n;
                    while let Ok((_, events)) = queue.try_recv() {
                        left += events.len();
                    }
                    crate::telemetry::on_event_dropped(left);
                    warn!(events = left, "shutdown deadline: these written events were not exported");
                    return;
                }
            }
        }
        info!(events = handed, "queued on_event exports handed over before stopping");
    })
}

/// A written event row as `on_event` receives it: properties as objects, not text.
pub fn on_event_payload(row: &Value) -> Value {
    let mut event = row.clone();
    for key in ["properties", "person_properties"] {
        if let Some(text) = event.get(key).and_then(Value::as_str) {
            event[key] = serde_json::from_str(text).unwrap_or(Value::Null);
        }
    }
    event
}

/// The event as plugins see it: `uuid, event, distinct_id, properties, timestamp,
/// team_id, ip, now, sent_at, $set, $set_once`.
fn to_plugin_event(c: &CapturedEvent, team: i64) -> Value {
    let data: Map<String, Value> = serde_json::from_str(&c.data).unwrap_or_default();
    let mut e = Map::new();
    e.insert("uuid".into(), Value::String(c.uuid.to_string()));
    e.insert("event".into(), Value::String(c.event.clone()));
    e.insert("distinct_id".into(), Value::String(c.distinct_id.clone()));
    e.insert("properties".into(), data.get("properties").filter(|p| p.is_object()).cloned().unwrap_or(json!({})));
    if let Some(t) = &c.timestamp {
        e.insert("timestamp".into(), Value::String(t.clone()));
    }
    e.insert("team_id".into(), json!(team));
    e.insert("ip".into(), Value::String(c.ip.clone()));
    e.insert("now".into(), Value::String(c.now.format(&Rfc3339).expect("UTC times format")));
    if let Some(s) = c.sent_at {
        e.insert("sent_at".into(), Value::String(s.format(&Rfc3339).expect("UTC times format")));
    }
    for key in ["$set", "$set_once"] {
        if let Some(v) = data.get(key) {
            e.insert(key.into(), v.clone());
        }
    }
    Value::Object(e)
}

/// Writes what a chain made of an event back into the captured message.
/// When an instance's recent failures make it degraded, then disabled.
#[derive(Debug, Clone, Copy)]
pub struct HealthThresholds {
    pub degrade_after: u32,
    pub disable_after: u32,
    /// Share of recent calls that must have failed as well.
    pub failure_ratio: f64,
}

/// An instance's recent calls: counts halved whenever they pass the window (twice the
/// disable threshold), so old calls fade and the rate is of what it does now.
#[derive(Debug, Default, Clone, Copy)]
pub struct CallHealth {
    calls: u64,
    failed: u64,
    degraded: bool,
}

impl CallHealth {
    /// Adds a batch's calls; says the status it crosses into, if any.
    pub fn record(&mut self, failed: u64, calls: u64, t: &HealthThresholds) -> Option<&'static str> {
        self.calls += calls.max(failed);
        self.failed += failed;
        let window = u64::from(t.disable_after).saturating_mul(2).max(2);
        while self.calls > window {
            self.calls = self.calls.div_ceil(2);
            self.failed /= 2;
        }
        // Within the window the count of failures can reach the threshold; once the
        // window is full, the rate speaks for the whole of it.
        let full = self.calls >= window;
        let failing = |n: u32| {
            let rate = self.failed as f64 / self.calls.max(1) as f64;
            rate >= t.failure_ratio && (self.failed >= u64::from(n) || (full && rate * window as f64 >= f64::from(n)))
        };
        if failed > 0 && failing(t.disable_after) {
            Some("disabled")
        } else if failed > 0 && !self.degraded && failing(t.degrade_after) {
            self.degraded = true;
            Some("degraded")
        } else {
            None
        }
    }

    pub fn counts(&self) -> (u64, u64) {
        (self.failed, self.calls)
    }
}

fn from_plugin_event(c: &mut CapturedEvent, e: &Value, succeeded: &[String], failed: &[String]) {
    let mut data: Map<String, Value> = serde_json::from_str(&c.data).unwrap_or_default();
    if let Some(name) = e.get("event").and_then(Value::as_str).filter(|n| !n.is_empty()) {
        c.event = name.to_string();
        data.insert("event".into(), Value::String(c.event.clone()));
    }
    if let Some(d) = e.get("distinct_id").and_then(Value::as_str).filter(|d| !d.trim().is_empty()) {
        c.distinct_id = d.to_string();
        data.insert("distinct_id".into(), Value::String(c.distinct_id.clone()));
    }
    let mut properties = e.get("properties").and_then(Value::as_object).cloned().unwrap_or_default();
    if !succeeded.is_empty() {
        properties.insert("$plugins_succeeded".into(), json!(succeeded));
    }
    if !failed.is_empty() {
        properties.insert("$plugins_failed".into(), json!(failed));
    }
    data.insert("properties".into(), Value::Object(properties));
    for key in ["$set", "$set_once"] {
        match e.get(key) {
            Some(v) if v.is_object() => {
                data.insert(key.into(), v.clone());
            }
            _ => {
                data.remove(key);
            }
        }
    }
    c.timestamp = match e.get("timestamp") {
        Some(Value::String(t)) => Some(t.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    if let Some(ip) = e.get("ip").and_then(Value::as_str) {
        c.ip = ip.to_string();
    }
    c.data = Value::Object(data).to_string();
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: HealthThresholds = HealthThresholds { degrade_after: 10, disable_after: 100, failure_ratio: 0.5 };

    /// Batches of 100 calls with `failing` failures each, until a status or `batches`.
    fn run(failing: u64, batches: usize) -> Vec<&'static str> {
        let mut h = CallHealth::default();
        let mut seen = Vec::new();
        for _ in 0..batches {
            if let Some(status) = h.record(failing, 100, &T) {
                seen.push(status);
                if status == "disabled" {
                    break;
                }
            }
        }
        seen
    }

    #[test]
    fn health_is_judged_on_the_failure_rate() {
        assert_eq!(run(99, 5), vec!["degraded", "disabled"], "one success per batch does not keep it healthy");
        assert_eq!(run(100, 2), vec!["disabled"], "a whole batch failing");
        assert_eq!(run(1, 1_000), Vec::<&str>::new(), "a 1% failure rate is noise");
        assert_eq!(run(40, 1_000), Vec::<&str>::new(), "under the ratio");
        assert_eq!(run(60, 1_000), vec!["degraded", "disabled"]);
        let mut h = CallHealth::default();
        let statuses: Vec<_> = (0..20).filter_map(|_| h.record(1, 1, &T)).collect();
        assert_eq!(statuses, vec!["degraded"], "one call at a time: degraded after 10 failures");
    }

    #[test]
    fn an_event_goes_to_plugins_and_comes_back() {
        let mut c = CapturedEvent {
            uuid: uuid::Uuid::nil(),
            distinct_id: "d".into(),
            ip: "1.2.3.4".into(),
            data: json!({"event": "e", "properties": {"a": 1}, "$set": {"s": 1}}).to_string(),
            now: time::macros::datetime!(2026-01-01 00:00 UTC),
            sent_at: None,
            token: "phc".into(),
            event: "e".into(),
            timestamp: Some("2026-01-01T00:00:00Z".into()),
            historical_migration: false,
        };
        let mut e = to_plugin_event(&c, 7);
        assert_eq!(e["team_id"], 7);
        assert_eq!(e["properties"], json!({"a": 1}));
        assert_eq!(e["$set"], json!({"s": 1}));
        e["event"] = json!("renamed");
        e["properties"]["b"] = json!(2);
        e.as_object_mut().unwrap().remove("$set");
        from_plugin_event(&mut c, &e, &["p (1)".into()], &["q (2)".into()]);
        assert_eq!(c.event, "renamed");
        let data: Value = serde_json::from_str(&c.data).unwrap();
        assert_eq!(
            data["properties"],
            json!({"a": 1, "b": 2, "$plugins_succeeded": ["p (1)"], "$plugins_failed": ["q (2)"]})
        );
        assert!(data.get("$set").is_none());
        assert_eq!(c.timestamp.as_deref(), Some("2026-01-01T00:00:00Z"));
    }
}
