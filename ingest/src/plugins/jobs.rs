//! Plugins' jobs (`ctx.jobs`), run by the event lanes: each due job is claimed by one
//! process at a time (`FOR UPDATE SKIP LOCKED`, with a lease longer than a job call may
//! take), run in the plugin's worker under the hook limits, then deleted; on error it is
//! tried again after a doubling back-off, and after its last attempt kept as `failed`
//! with the error (`sluice-ingest plugins jobs`, `plugins retry-job`). A process that dies
//! while a job runs leaves its claim to expire: the job runs again (at least once).

use std::sync::Arc;
use std::time::Duration;

use sluice_plugin_runtime::{PluginConfigId, TeamId};
use tracing::warn;

use super::{PluginLogs, PluginState, Plugins};
use crate::write::ClickHouse;

pub(crate) struct Settings {
    pub poll: Duration,
    /// Jobs claimed and run at once by this process.
    pub concurrency: usize,
    pub max_attempts: u32,
    pub backoff: Duration,
}

/// A claimed job.
#[derive(sqlx::FromRow)]
struct Claimed {
    id: i64,
    plugin_config_id: i64,
    team_id: i64,
    name: String,
    payload: String,
    attempts: i32,
}

pub(crate) fn spawn(
    plugins: Arc<Plugins>,
    ch: Arc<ClickHouse>,
    settings: Settings,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // Longer than a job call can take: a live runner never loses its claim.
        let lease = plugins.limits.hook_call() + Duration::from_secs(5);
        let mut every = sluice_common::every::Every::now(settings.poll, stop);
        while every.tick().await {
            let claimed = match claim(&plugins, settings.concurrency, lease).await {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "plugin jobs not claimed; trying again");
                    continue;
                }
            };
            let runs = claimed.into_iter().map(|job| plugins.run_job(job, &settings, &ch));
            futures::future::join_all(runs).await;
        }
    })
}

/// Claims up to `n` due jobs of running plugin configurations for `lease`.
async fn claim(plugins: &Plugins, n: usize, lease: Duration) -> Result<Vec<Claimed>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE plugin_jobs j
            SET locked_until = now() + make_interval(secs => $2), attempts = j.attempts + 1
           FROM plugin_configs c
          WHERE c.id = j.plugin_config_id
            AND j.id IN (
                SELECT q.id FROM plugin_jobs q JOIN plugin_configs qc ON qc.id = q.plugin_config_id
                 WHERE q.status = 'pending' AND q.run_at <= now()
                   AND (q.locked_until IS NULL OR q.locked_until < now())
                   AND qc.enabled AND qc.status <> 'disabled'
                 ORDER BY q.run_at
                 LIMIT $1
                 FOR UPDATE OF q SKIP LOCKED)
      RETURNING j.id, j.plugin_config_id, c.team_id, j.name, j.payload, j.attempts",
    )
    .bind(n.max(1) as i64)
    .bind(lease.as_secs_f64())
    .fetch_all(&plugins.pool)
    .await
}

impl Plugins {
    async fn run_job(&self, job: Claimed, settings: &Settings, ch: &ClickHouse) {
        let (id, team) = (job.plugin_config_id, job.team_id);
        let started = std::time::Instant::now();
        let run = self.exports.run_job(TeamId(team), PluginConfigId(id), job.name.clone(), job.payload).await;
        crate::telemetry::step("job", started);
        let mut lines = PluginLogs::new(team, ch.flavor);
        lines.extend(id, &run.logs);
        let mut outcome = run.result.map_err(|e| {
            let kind = run.strike.as_ref().map_or_else(|| e.kind(), |s| s.cause);
            crate::telemetry::plugin_error(id, "jobs", kind);
            e.to_string()
        });
        if outcome.is_ok() {
            if let Err(e) = self.send_captured(team, id, run.captured).await {
                outcome = Err(format!("events it captured were not sent: {e}"));
            }
        }
        if let Some(strike) = run.strike.filter(|s| s.disabled) {
            let reason = format!("its worker kept dying: {}", strike.reason);
            self.set_state(id, PluginState::Disabled, strike.cause, &reason).await;
        }
        let attempts = job.attempts.max(1) as u32;
        let settled = match &outcome {
            Ok(()) => sqlx::query("DELETE FROM plugin_jobs WHERE id = $1").bind(job.id).execute(&self.pool).await,
            Err(e) if attempts >= settings.max_attempts => {
                warn!(plugin_config = id, job = job.id, name = %job.name, error = %e, "job failed for good");
                lines.push(
                    id,
                    "error",
                    &format!("job {} ({}) failed after {attempts} attempts: {e}", job.id, job.name),
                );
                sqlx::query(
                    "UPDATE plugin_jobs SET status = 'failed', last_error = $2, locked_until = NULL WHERE id = $1",
                )
                .bind(job.id)
                .bind(e)
                .execute(&self.pool)
                .await
            }
            Err(e) => {
                let wait = settings.backoff * 2u32.pow(attempts.saturating_sub(1).min(16));
                lines.push(id, "warn", &format!("job {} ({}) failed, trying again in {wait:?}: {e}", job.id, job.name));
                sqlx::query(
                    "UPDATE plugin_jobs SET run_at = now() + make_interval(secs => $2), last_error = $3,
                            locked_until = NULL WHERE id = $1",
                )
                .bind(job.id)
                .bind(wait.as_secs_f64())
                .bind(e)
                .execute(&self.pool)
                .await
            }
        };
        crate::telemetry::plugin_job(if outcome.is_ok() { "done" } else { "failed" });
        if let Err(e) = settled {
            // The claim expires and the job runs again: at least once.
            warn!(plugin_config = id, job = job.id, error = %e, "job outcome not stored; it will run again");
        }
        lines.write(ch, "jobs").await;
    }
}
