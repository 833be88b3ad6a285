//! Where `ctx.jobs` puts the jobs a plugin starts: the `plugin_jobs` table in Postgres
//! (ingest's runner claims and runs them), or memory for the author tool. Each plugin
//! configuration's pending jobs and each payload are bounded here, when a job is started.

use std::sync::{Arc, Mutex};

/// How many jobs and how large.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct JobLimits {
    /// Pending jobs one plugin configuration may have.
    pub max_pending: u32,
    /// Largest payload, as JSON.
    pub payload_bytes: usize,
}

impl Default for JobLimits {
    fn default() -> Self {
        JobLimits { max_pending: 10_000, payload_bytes: 64 << 10 }
    }
}

/// A job as started.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct QueuedJob {
    pub plugin_config: i64,
    pub name: String,
    /// JSON text.
    pub payload: String,
    /// Unix milliseconds.
    pub run_at_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("plugin config {0} has {1} pending jobs, the most it may have")]
    Quota(i64, u32),
    #[error("jobs unavailable: {0}")]
    Unavailable(String),
    #[error("jobs: {0}")]
    Postgres(#[from] sqlx::Error),
}

#[derive(Clone)]
pub enum JobQueue {
    Memory(Arc<Mutex<Vec<QueuedJob>>>),
    Postgres(sqlx::PgPool),
    Unavailable(String),
}

impl JobQueue {
    pub fn memory() -> JobQueue {
        JobQueue::Memory(Arc::default())
    }

    pub async fn enqueue(&self, job: QueuedJob, limits: &JobLimits) -> Result<(), JobError> {
        match self {
            JobQueue::Unavailable(why) => Err(JobError::Unavailable(why.clone())),
            JobQueue::Memory(jobs) => {
                let mut jobs = jobs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let pending = jobs.iter().filter(|j| j.plugin_config == job.plugin_config).count() as u32;
                if pending >= limits.max_pending {
                    return Err(JobError::Quota(job.plugin_config, pending));
                }
                jobs.push(job);
                Ok(())
            }
            JobQueue::Postgres(pool) => {
                // The count and the insert in one statement: concurrent starts may pass
                // the bound by the number of them at once, never more.
                let done = sqlx::query(
                    "INSERT INTO plugin_jobs (plugin_config_id, name, payload, run_at)
                     SELECT $1, $2, $3, to_timestamp($4::float8 / 1000)
                     WHERE (SELECT count(*) FROM plugin_jobs WHERE plugin_config_id = $1 AND status = 'pending') < $5",
                )
                .bind(job.plugin_config)
                .bind(&job.name)
                .bind(&job.payload)
                .bind(job.run_at_ms as f64)
                .bind(i64::from(limits.max_pending))
                .execute(pool)
                .await?;
                if done.rows_affected() == 0 {
                    return Err(JobError::Quota(job.plugin_config, limits.max_pending));
                }
                Ok(())
            }
        }
    }

    /// What was started, in memory (the author tool's view); empty on Postgres.
    pub fn started(&self) -> Vec<QueuedJob> {
        match self {
            JobQueue::Memory(jobs) => {
                std::mem::take(&mut *jobs.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
            }
            _ => Vec::new(),
        }
    }
}
