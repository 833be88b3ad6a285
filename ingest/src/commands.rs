//! Operator commands: they say what they did in plain words, and fail with a clear
//! message and a non-zero exit on bad input.

use anyhow::Context;
use sqlx::PgPool;

use crate::config::Config;
use crate::write::ClickHouse;

pub async fn pool(config: &Config) -> anyhow::Result<PgPool> {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(config.database_max_connections)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect_with(config.postgres()?)
        .await
        .with_context(|| {
            format!("cannot connect to Postgres at DATABASE_URL={}", sluice_connect::redact::url(&config.database_url))
        })
}

/// ClickHouse for an operator command.
pub async fn clickhouse(config: &Config) -> anyhow::Result<ClickHouse> {
    ClickHouse::connect(
        &config.clickhouse(std::time::Duration::from_secs(30))?,
        &config.clickhouse_database,
        config.clickhouse_compression,
    )
    .await
    .with_context(|| {
        format!("cannot reach ClickHouse at CLICKHOUSE_URL={}", sluice_connect::redact::url(&config.clickhouse_url))
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

pub async fn create_team(config: &Config, name: &str) -> anyhow::Result<()> {
    anyhow::ensure!(!name.trim().is_empty(), "a team needs a non-empty --name");
    let pool = pool(config).await?;
    let token = format!("phc_{}", uuid::Uuid::new_v4().simple());
    let id: i64 = sqlx::query_scalar("INSERT INTO teams (name, api_token) VALUES ($1, $2) RETURNING id")
        .bind(name.trim())
        .bind(&token)
        .fetch_one(&pool)
        .await
        .context("creating the team (did you run `sluice-ingest migrate`?)")?;
    println!("created team {id} \"{}\"; its api token is:", name.trim());
    println!("{token}");
    Ok(())
}

pub async fn list_teams(config: &Config) -> anyhow::Result<()> {
    let pool = pool(config).await?;
    let teams: Vec<(i64, String, String)> = sqlx::query_as("SELECT id, name, api_token FROM teams ORDER BY id")
        .fetch_all(&pool)
        .await
        .context("listing teams (did you run `sluice-ingest migrate`?)")?;
    if teams.is_empty() {
        println!("no teams yet: create one with `sluice-ingest teams create --name NAME`");
    }
    for (id, name, token) in teams {
        println!("{id}\t{token}\t{name}");
    }
    Ok(())
}
