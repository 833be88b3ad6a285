//! `sluice-ingest plugins …`: install, list, enable, disable, configure, attach, detach,
//! logs. Every
//! change moves the config's `updated_at`, which running ingest processes pick up and
//! load without a restart.

use std::path::Path;

use anyhow::Context;
use serde_json::{Map, Value};
use sluice_plugin_runtime::{Manifest, PluginSource};

use super::pool;
use crate::config::Config;

type Json<T> = sqlx::types::Json<T>;
type Settings = Map<String, Value>;

/// Tells running ingest processes to load the change now (they also poll, so a notice
/// that cannot be sent only delays it).
async fn notify_reload(config: &Config, id: i64) {
    let client = match config.redis.client() {
        Ok(Some(client)) => client,
        Ok(None) => return,
        Err(e) => {
            eprintln!("note: no reload notice sent ({e}); ingest picks the change up within PLUGIN_RELOAD_INTERVAL_MS");
            return;
        }
    };
    let publish = async {
        let mut c = client.get_multiplexed_async_connection().await?;
        redis::cmd("PUBLISH")
            .arg(sluice_schema::redis_keys::plugin_reload(&config.redis.key_prefix))
            .arg(id)
            .query_async::<i64>(&mut c)
            .await
    };
    match tokio::time::timeout(std::time::Duration::from_secs(3), publish).await {
        Ok(Ok(_)) => {}
        _ => eprintln!(
            "note: no reload notice sent (Redis at REDIS_URL={} not reachable); ingest picks the change up within PLUGIN_RELOAD_INTERVAL_MS",
            sluice_connect::redact::url(&config.redis.url)
        ),
    }
}

fn given(config: &[(String, String)]) -> Map<String, Value> {
    config.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect()
}

pub async fn install(
    config: &Config,
    dir: &Path,
    team: i64,
    settings: &[(String, String)],
    order: Option<i32>,
) -> anyhow::Result<()> {
    let source = PluginSource::from_dir(dir).with_context(|| format!("reading the plugin in {}", dir.display()))?;
    let manifest = &source.manifest;
    let pool = pool(config).await?;
    let team_exists: Option<i64> =
        sqlx::query_scalar("SELECT id FROM teams WHERE id = $1").bind(team).fetch_optional(&pool).await?;
    anyhow::ensure!(team_exists.is_some(), "no team with id {team} (see `sluice-ingest teams list`)");
    let existing: Option<(i64, Json<Settings>)> = sqlx::query_as(
        "SELECT c.id, c.config FROM plugin_configs c JOIN plugins p ON p.id = c.plugin_id
         WHERE c.team_id = $1 AND p.name = $2 ORDER BY c.id LIMIT 1",
    )
    .bind(team)
    .bind(&manifest.name)
    .fetch_optional(&pool)
    .await?;
    // An update keeps the settings it had unless given again.
    let mut values = existing.as_ref().map(|(_, c)| c.0.clone()).unwrap_or_default();
    values.retain(|k, _| manifest.config.iter().any(|f| &f.key == k));
    values.extend(given(settings));
    let validated = manifest.validate_config(&values)?;
    let mut tx = pool.begin().await?;
    let plugin_id: i64 = sqlx::query_scalar(
        "INSERT INTO plugins (name, version, manifest, source) VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(&manifest.name)
    .bind(&manifest.version)
    .bind(sqlx::types::Json(manifest))
    .bind(&source.main)
    .fetch_one(&mut *tx)
    .await?;
    let (id, verb) = match existing {
        Some((id, _)) => {
            sqlx::query(
                "UPDATE plugin_configs SET plugin_id = $2, config = $3, \"order\" = COALESCE($4, \"order\"),
                 updated_at = now() WHERE id = $1",
            )
            .bind(id)
            .bind(plugin_id)
            .bind(sqlx::types::Json(&validated))
            .bind(order)
            .execute(&mut *tx)
            .await?;
            (id, "updated")
        }
        None => {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO plugin_configs (team_id, plugin_id, \"order\", config)
                 VALUES ($1, $2, COALESCE($3, (SELECT COALESCE(MAX(\"order\") + 1, 0) FROM plugin_configs WHERE team_id = $1)), $4)
                 RETURNING id",
            )
            .bind(team)
            .bind(plugin_id)
            .bind(order)
            .bind(sqlx::types::Json(&validated))
            .fetch_one(&mut *tx)
            .await?;
            (id, "installed")
        }
    };
    tx.commit().await?;
    notify_reload(config, id).await;
    println!(
        "{verb} plugin {} {} for team {team} as plugin config {id}; config {}",
        manifest.name,
        manifest.version,
        Value::Object(manifest.redact(&validated))
    );
    Ok(())
}

pub async fn list(config: &Config, team: Option<i64>) -> anyhow::Result<()> {
    let pool = pool(config).await?;
    type Row = (
        i64,
        i64,
        i32,
        bool,
        String,
        String,
        String,
        String,
        sqlx::types::Json<Manifest>,
        sqlx::types::Json<Map<String, Value>>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT c.id, c.team_id, c.\"order\", c.enabled, c.status, c.status_reason, p.name, p.version, p.manifest, c.config
         FROM plugin_configs c JOIN plugins p ON p.id = c.plugin_id
         WHERE $1::bigint IS NULL OR c.team_id = $1 ORDER BY c.team_id, c.\"order\", c.id",
    )
    .bind(team)
    .fetch_all(&pool)
    .await
    .context("listing plugins (did you run `sluice-ingest migrate`?)")?;
    if rows.is_empty() {
        println!("no plugins installed: install one with `sluice-ingest plugins install DIR --team ID`");
    }
    // Listed by name and size, never their contents (a credentials file, say).
    let files: Vec<(i64, String, String, i32)> = sqlx::query_as(
        "SELECT plugin_config_id, key, file_name, octet_length(contents) FROM plugin_attachments ORDER BY key",
    )
    .fetch_all(&pool)
    .await?;
    for (id, team, order, enabled, status, reason, name, version, manifest, settings) in rows {
        let state = if enabled { status } else { "off".to_string() };
        let reason = if reason.is_empty() { String::new() } else { format!(" ({reason})") };
        let shown = Value::Object(manifest.0.redact(&settings.0));
        let attached: Vec<String> = files
            .iter()
            .filter(|(of, ..)| *of == id)
            .map(|(_, key, file, bytes)| format!("{key}={file} ({bytes} bytes)"))
            .collect();
        let attached =
            if attached.is_empty() { String::new() } else { format!("\tattachments: {}", attached.join(", ")) };
        println!("{id}\tteam={team}\torder={order}\t{name} {version}\t{state}{reason}\tconfig={shown}{attached}");
    }
    Ok(())
}

pub async fn set_enabled(config: &Config, id: i64, enabled: bool) -> anyhow::Result<()> {
    let pool = pool(config).await?;
    let done = sqlx::query(
        "UPDATE plugin_configs SET enabled = $2,
           status = CASE WHEN $2 THEN 'healthy' ELSE status END,
           status_reason = CASE WHEN $2 THEN '' ELSE status_reason END,
           updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(enabled)
    .execute(&pool)
    .await?;
    anyhow::ensure!(done.rows_affected() == 1, "no plugin config with id {id} (see `sluice-ingest plugins list`)");
    notify_reload(config, id).await;
    println!("plugin config {id} {}", if enabled { "enabled" } else { "disabled" });
    Ok(())
}

pub async fn configure(config: &Config, id: i64, settings: &[(String, String)]) -> anyhow::Result<()> {
    anyhow::ensure!(!settings.is_empty(), "nothing to change: give --config key=value");
    let pool = pool(config).await?;
    let row: Option<(Json<Manifest>, Json<Settings>)> = sqlx::query_as(
        "SELECT p.manifest, c.config FROM plugin_configs c JOIN plugins p ON p.id = c.plugin_id WHERE c.id = $1",
    )
    .bind(id)
    .fetch_optional(&pool)
    .await?;
    let Some((manifest, current)) = row else { anyhow::bail!("no plugin config with id {id}") };
    let mut values = current.0;
    values.extend(given(settings));
    let validated = manifest.0.validate_config(&values)?;
    sqlx::query("UPDATE plugin_configs SET config = $2, updated_at = now() WHERE id = $1")
        .bind(id)
        .bind(sqlx::types::Json(&validated))
        .execute(&pool)
        .await?;
    notify_reload(config, id).await;
    println!("plugin config {id} configured: {}", Value::Object(manifest.0.redact(&validated)));
    Ok(())
}

/// Attachments a plugin config may have: each is loaded into its VM.
const MAX_ATTACHMENTS: i64 = 16;

pub async fn attach(
    config: &Config,
    id: i64,
    key: &str,
    file: &Path,
    content_type: Option<&str>,
    max_bytes: u64,
) -> anyhow::Result<()> {
    let file =
        sluice_plugin_runtime::Attachment::from_file(key, file, content_type, max_bytes).map_err(anyhow::Error::msg)?;
    let pool = pool(config).await?;
    let mut tx = pool.begin().await?;
    let exists: Option<(i64,)> = sqlx::query_as("SELECT id FROM plugin_configs WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    anyhow::ensure!(exists.is_some(), "no plugin config with id {id}");
    let (others,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM plugin_attachments WHERE plugin_config_id = $1 AND key <> $2")
            .bind(id)
            .bind(key)
            .fetch_one(&mut *tx)
            .await?;
    anyhow::ensure!(
        others < MAX_ATTACHMENTS,
        "plugin config {id} already has {others} attachments, the most it may have"
    );
    sqlx::query(
        "INSERT INTO plugin_attachments (plugin_config_id, key, content_type, file_name, contents)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (plugin_config_id, key) DO UPDATE
           SET content_type = EXCLUDED.content_type, file_name = EXCLUDED.file_name,
               contents = EXCLUDED.contents, created_at = now()",
    )
    .bind(id)
    .bind(&file.key)
    .bind(&file.content_type)
    .bind(&file.file_name)
    .bind(&file.contents)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE plugin_configs SET updated_at = now() WHERE id = $1").bind(id).execute(&mut *tx).await?;
    tx.commit().await?;
    notify_reload(config, id).await;
    println!(
        "plugin config {id}: attached {} as ctx.attachments.{} ({}, {} bytes)",
        file.file_name,
        file.key,
        file.content_type,
        file.contents.len()
    );
    Ok(())
}

pub async fn detach(config: &Config, id: i64, key: &str) -> anyhow::Result<()> {
    let pool = pool(config).await?;
    let mut tx = pool.begin().await?;
    let done = sqlx::query("DELETE FROM plugin_attachments WHERE plugin_config_id = $1 AND key = $2")
        .bind(id)
        .bind(key)
        .execute(&mut *tx)
        .await?;
    anyhow::ensure!(done.rows_affected() == 1, "plugin config {id} has no attachment {key:?}");
    sqlx::query("UPDATE plugin_configs SET updated_at = now() WHERE id = $1").bind(id).execute(&mut *tx).await?;
    tx.commit().await?;
    notify_reload(config, id).await;
    println!("plugin config {id}: removed attachment {key}");
    Ok(())
}

pub async fn jobs(config: &Config, plugin_config: Option<i64>, limit: i64) -> anyhow::Result<()> {
    let pool = pool(config).await?;
    type Row = (i64, i64, String, String, i32, String, String, String);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, plugin_config_id, name, status, attempts, to_char(run_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                last_error, left(payload, 200)
           FROM plugin_jobs WHERE $1::bigint IS NULL OR plugin_config_id = $1
          ORDER BY id DESC LIMIT $2",
    )
    .bind(plugin_config)
    .bind(limit)
    .fetch_all(&pool)
    .await
    .context("listing jobs (did you run `sluice-ingest migrate`?)")?;
    if rows.is_empty() {
        println!("no pending or failed jobs");
    }
    for (id, config_id, name, status, attempts, run_at, error, payload) in rows {
        let error = if error.is_empty() { String::new() } else { format!("\terror={error}") };
        println!("{id}\tplugin_config={config_id}\t{name}\t{status}\tattempts={attempts}\trun_at={run_at}\tpayload={payload}{error}");
    }
    Ok(())
}

pub async fn retry_job(config: &Config, job: i64) -> anyhow::Result<()> {
    let pool = pool(config).await?;
    let done = sqlx::query(
        "UPDATE plugin_jobs SET status = 'pending', attempts = 0, run_at = now(), locked_until = NULL
          WHERE id = $1 AND status = 'failed'",
    )
    .bind(job)
    .execute(&pool)
    .await?;
    anyhow::ensure!(done.rows_affected() == 1, "no failed job with id {job}");
    println!("job {job} will run again");
    Ok(())
}

pub async fn logs(config: &Config, id: i64, limit: u32) -> anyhow::Result<()> {
    let ch = super::clickhouse(config).await?;
    let text = ch
        .query(&format!(
            "SELECT timestamp, level, message FROM {}.plugin_log_entries WHERE plugin_config_id = {id}
             ORDER BY timestamp DESC LIMIT {limit} FORMAT TabSeparated",
            ch.database
        ))
        .await?;
    if text.is_empty() {
        println!("no log lines for plugin config {id}");
    }
    for line in text.lines().rev() {
        println!("{line}");
    }
    Ok(())
}
