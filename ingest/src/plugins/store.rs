//! The plugin-configuration SQL: every query of `plugin_configs` and `plugins` the stage
//! makes, in one place.

use serde_json::{Map, Value};
use sluice_plugin_runtime::Manifest;
use sqlx::PgPool;
use time::OffsetDateTime;

use super::PluginState;

/// One enabled-or-not plugin configuration with its plugin's code.
#[derive(sqlx::FromRow)]
pub(super) struct ConfigRow {
    pub id: i64,
    pub team_id: i64,
    pub enabled: bool,
    pub status: String,
    pub config: sqlx::types::Json<Map<String, Value>>,
    pub updated_at: OffsetDateTime,
    pub manifest: sqlx::types::Json<Manifest>,
    pub source: String,
}

impl ConfigRow {
    pub(super) fn state(&self) -> PluginState {
        PluginState::parse(&self.status)
    }
}

/// Every configuration, in each team's chain order.
pub(super) async fn configs(pool: &PgPool) -> Result<Vec<ConfigRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.id, c.team_id, c.enabled, c.status, c.config, c.updated_at, p.manifest, p.source
         FROM plugin_configs c JOIN plugins p ON p.id = c.plugin_id
         ORDER BY c.team_id, c.\"order\", c.id",
    )
    .fetch_all(pool)
    .await
}

/// The files uploaded with a configuration (`plugins attach`).
pub(super) async fn attachments(pool: &PgPool, id: i64) -> Result<Vec<sluice_plugin_runtime::Attachment>, sqlx::Error> {
    let rows: Vec<(String, String, String, Vec<u8>)> = sqlx::query_as(
        "SELECT key, content_type, file_name, contents FROM plugin_attachments WHERE plugin_config_id = $1 ORDER BY key",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(key, content_type, file_name, contents)| sluice_plugin_runtime::Attachment {
            key,
            content_type,
            file_name,
            contents,
        })
        .collect())
}

/// Stores a configuration's new state and why, for `plugins list`.
pub(super) async fn set_state(pool: &PgPool, id: i64, state: PluginState, reason: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE plugin_configs SET status = $2, status_reason = $3 WHERE id = $1")
        .bind(id)
        .bind(state.as_str())
        .bind(reason)
        .execute(pool)
        .await
        .map(|_| ())
}
