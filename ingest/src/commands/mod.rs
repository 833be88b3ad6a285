//! Operator commands: they say what they did in plain words, and fail with a clear
//! message and a non-zero exit on bad input. `migrate` and the connections are here; one
//! module per command group: [`teams`], [`dlq`], [`plugins`].

pub mod dlq;
pub mod plugins;
pub mod teams;

use anyhow::Context;
use sqlx::PgPool;

use crate::config::Config;
use crate::write::ClickHouse;

pub async fn pool(config: &Config) -> anyhow::Result<PgPool> {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(config.postgres.max_connections)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect_with(config.postgres.options()?)
        .await
        .with_context(|| {
            format!("cannot connect to Postgres at DATABASE_URL={}", sluice_connect::redact::url(&config.postgres.url))
        })
}

/// ClickHouse for an operator command.
pub async fn clickhouse(config: &Config) -> anyhow::Result<ClickHouse> {
    ClickHouse::connect(
        &config.clickhouse.access()?,
        &config.clickhouse.database,
        config.clickhouse.compression,
        config.clickhouse.topology(),
    )
    .await
    .with_context(|| {
        format!("cannot reach ClickHouse at CLICKHOUSE_URL={}", sluice_connect::redact::url(&config.clickhouse.url))
    })
}

pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    let pool = pool(config).await?;
    sluice_schema::postgres::MIGRATOR.run(&pool).await.context("applying the Postgres migrations")?;
    println!("postgres: migrations applied ({} known)", sluice_schema::postgres::MIGRATOR.iter().count());
    let ch = clickhouse(config).await?;
    let n = ch.migrate().await.context("applying the ClickHouse DDL")?;
    println!("clickhouse: {n} statements applied to database {} ({:?} column types)", ch.database, ch.flavor);
    Ok(())
}
