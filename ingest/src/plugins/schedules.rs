//! Plugins' `every_minute`, `every_hour` and `every_day`, on exactly one ingest process
//! of the cluster per period and never two at once.
//!
//! Each period of each schedule is claimed with a Redis key (`SET … NX`, expiring after
//! two periods): whoever sets it runs that period. A second lock, held with a token and
//! renewed while the run lasts, keeps a long run from overlapping the next period's run
//! on another process. Without Redis no schedule runs: exclusivity cannot be promised.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use serde_json::{json, Value};
use tracing::{debug, warn};

use sluice_common::every::Every;
use sluice_plugin_runtime::{Hook, PluginConfigId, TeamId};
use sluice_schema::redis_keys;

use super::{PluginLogs, PluginState, Plugins};
use crate::write::ClickHouse;

/// How long the running lock lives without renewal; renewed every third of it.
const RUNNING_LOCK: Duration = Duration::from_secs(30);

pub(crate) struct Settings {
    /// `None` when the operator turned Redis off.
    pub redis: Option<redis::Client>,
    pub key_prefix: String,
    /// The length of a "minute" (hours and days are 60 and 1,440 of them). Shorter in tests.
    pub minute: Duration,
}

pub(crate) fn spawn(
    plugins: Arc<Plugins>,
    ch: Arc<ClickHouse>,
    settings: Settings,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let token = uuid::Uuid::new_v4().to_string();
    tokio::spawn(async move {
        let Some(client) = settings.redis.clone() else {
            warn!("no REDIS_URL: plugin schedules are off");
            return;
        };
        let mut conn: Option<MultiplexedConnection> = None;
        let mut done: HashMap<(i64, Hook), u64> = HashMap::new();
        let mut every = Every::now((settings.minute / 4).max(Duration::from_millis(50)), stop);
        while every.tick().await {
            if conn.is_none() {
                match client.get_multiplexed_async_connection().await {
                    Ok(c) => conn = Some(c),
                    Err(e) => {
                        debug!(error = %e, "redis unreachable; schedules wait");
                        continue;
                    }
                }
            }
            let c = conn.as_mut().expect("connected above");
            let now_ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as u64 / 1_000_000;
            for (team, id, hook) in plugins.scheduled() {
                let period = settings.minute.as_millis() as u64 * hook.period_minutes().unwrap_or(1);
                let k = now_ms / period;
                if done.get(&(id, hook)) == Some(&k) {
                    continue;
                }
                let claim = redis_keys::plugin_schedule_claim(&settings.key_prefix, id, hook.name(), k);
                match set_nx(c, &claim, &token, Duration::from_millis(period * 2)).await {
                    Ok(true) => {}
                    Ok(false) => {
                        done.insert((id, hook), k);
                        continue;
                    }
                    Err(e) => {
                        warn!(error = %e, "redis failed; schedules wait");
                        conn = None;
                        break;
                    }
                }
                done.insert((id, hook), k);
                let running = redis_keys::plugin_schedule_running(&settings.key_prefix, id, hook.name());
                if !set_nx(c, &running, &token, RUNNING_LOCK).await.unwrap_or(false) {
                    warn!(
                        plugin_config = id,
                        hook = hook.name(),
                        "the previous run is still going; this period is skipped"
                    );
                    continue;
                }
                let (plugins, ch, mut lock_conn, token) = (plugins.clone(), ch.clone(), c.clone(), token.clone());
                tokio::spawn(async move {
                    let info = json!({"period_start_ms": k * period});
                    let run = plugins.run_schedule(team, id, hook, info, &ch);
                    tokio::pin!(run);
                    let mut renew = tokio::time::interval(RUNNING_LOCK / 3);
                    renew.tick().await;
                    loop {
                        tokio::select! {
                            _ = &mut run => break,
                            _ = renew.tick() => { let _ = extend(&mut lock_conn, &running, &token, RUNNING_LOCK).await; }
                        }
                    }
                    let _ = release(&mut lock_conn, &running, &token).await;
                });
            }
        }
    })
}

async fn set_nx(c: &mut MultiplexedConnection, key: &str, token: &str, ttl: Duration) -> redis::RedisResult<bool> {
    let r: Option<String> =
        redis::cmd("SET").arg(key).arg(token).arg("NX").arg("PX").arg(ttl.as_millis() as u64).query_async(c).await?;
    Ok(r.is_some())
}

/// Extends the lock only while it is still ours.
async fn extend(c: &mut MultiplexedConnection, key: &str, token: &str, ttl: Duration) -> redis::RedisResult<()> {
    const SCRIPT: &str =
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";
    redis::cmd("EVAL")
        .arg(SCRIPT)
        .arg(1)
        .arg(key)
        .arg(token)
        .arg(ttl.as_millis() as u64)
        .query_async::<i64>(c)
        .await
        .map(drop)
}

/// Deletes the lock only while it is still ours.
async fn release(c: &mut MultiplexedConnection, key: &str, token: &str) -> redis::RedisResult<()> {
    const SCRIPT: &str =
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";
    redis::cmd("EVAL").arg(SCRIPT).arg(1).arg(key).arg(token).query_async::<i64>(c).await.map(drop)
}

impl Plugins {
    /// Runs one schedule of one instance and records what it logged or how it failed.
    async fn run_schedule(&self, team: i64, id: i64, hook: Hook, info: Value, ch: &ClickHouse) {
        let started = std::time::Instant::now();
        let run = self.exports.schedule(TeamId(team), PluginConfigId(id), hook, info).await;
        let (result, logs, strike) = (run.result, run.logs, run.strike);
        crate::telemetry::step("schedule", started);
        let mut lines = PluginLogs::new(team, ch.flavor);
        for entry in &logs {
            lines.push(id, &entry.level, &entry.message);
        }
        if let Err(e) = self.send_captured(team, id, run.captured).await {
            // The run is over; its period is not run again for this.
            warn!(plugin_config = id, team, hook = hook.name(), error = %e, "events the schedule captured were not sent");
            lines.push(id, "error", &format!("events captured by {} were not sent: {e}", hook.name()));
        }
        if let Err(e) = &result {
            let kind = strike.as_ref().map_or_else(|| e.kind(), |s| s.cause);
            crate::telemetry::plugin_error(id, hook.name(), kind);
            warn!(plugin_config = id, team, hook = hook.name(), error = %e, "schedule failed");
            lines.push(id, "error", &e.to_string());
        }
        if let Some(strike) = strike.filter(|s| s.disabled) {
            let reason = format!("its worker kept dying: {}", strike.reason);
            self.set_state(id, PluginState::Disabled, strike.cause, &reason).await;
        }
        lines.write(ch, "schedule").await;
    }
}
