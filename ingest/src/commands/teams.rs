//! `teams create | list | configure`.

use anyhow::Context;

use super::pool;
use crate::config::{Config, TeamsCommand};

pub async fn create(config: &Config, name: &str) -> anyhow::Result<()> {
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

pub async fn list(config: &Config) -> anyhow::Result<()> {
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

/// `teams configure`: the settings given change, the others stay; prints them all.
pub async fn configure(config: &Config, command: TeamsCommand) -> anyhow::Result<()> {
    let TeamsCommand::Configure {
        token,
        session_recording,
        recording_sample_rate,
        recording_minimum_duration_ms,
        console_logs,
        autocapture,
        heatmaps,
        exception_autocapture,
        elements_chain_as_string,
    } = command
    else {
        anyhow::bail!("not a configure command");
    };
    if let Some(rate) = recording_sample_rate {
        anyhow::ensure!((0.0..=1.0).contains(&rate), "--recording-sample-rate must be between 0 and 1, not {rate}");
    }
    if let Some(ms) = recording_minimum_duration_ms {
        anyhow::ensure!(ms >= 0, "--recording-minimum-duration-ms must not be negative, not {ms}");
    }
    let pool = pool(config).await?;
    let row: Option<SdkSettings> = sqlx::query_as(
        "UPDATE teams SET \
           session_recording_opt_in = COALESCE($2, session_recording_opt_in), \
           session_recording_sample_rate = CASE WHEN $3::float8 IS NULL THEN session_recording_sample_rate \
             WHEN $3::float8 >= 1 THEN NULL ELSE $3::float8 END, \
           session_recording_minimum_duration_ms = CASE WHEN $4::int IS NULL THEN session_recording_minimum_duration_ms \
             WHEN $4::int = 0 THEN NULL ELSE $4::int END, \
           capture_console_log_opt_in = COALESCE($5, capture_console_log_opt_in), \
           autocapture_opt_out = COALESCE(NOT $6, autocapture_opt_out), \
           heatmaps_opt_in = COALESCE($7, heatmaps_opt_in), \
           autocapture_exceptions_opt_in = COALESCE($8, autocapture_exceptions_opt_in), \
           elements_chain_as_string = COALESCE($9, elements_chain_as_string) \
         WHERE api_token = $1 \
         RETURNING id, session_recording_opt_in, session_recording_sample_rate, session_recording_minimum_duration_ms, \
           capture_console_log_opt_in, NOT autocapture_opt_out AS autocapture, heatmaps_opt_in, \
           autocapture_exceptions_opt_in, elements_chain_as_string",
    )
    .bind(&token)
    .bind(session_recording)
    .bind(recording_sample_rate)
    .bind(recording_minimum_duration_ms)
    .bind(console_logs)
    .bind(autocapture)
    .bind(heatmaps)
    .bind(exception_autocapture)
    .bind(elements_chain_as_string)
    .fetch_optional(&pool)
    .await
    .context("updating the team (did you run `sluice-ingest migrate`?)")?;
    let Some(team) = row else {
        anyhow::bail!("no team has the token {token} (see `sluice-ingest teams list`)");
    };
    println!(
        "team {}: session recording {}, sample rate {}, minimum duration {} ms, console logs {}, autocapture {}, \
         heatmaps {}, exception autocapture {}, elements as {}",
        team.id,
        on(team.session_recording_opt_in),
        team.session_recording_sample_rate.map_or("all".to_string(), |r| r.to_string()),
        team.session_recording_minimum_duration_ms.unwrap_or(0),
        on(team.capture_console_log_opt_in),
        on(team.autocapture),
        on(team.heatmaps_opt_in),
        on(team.autocapture_exceptions_opt_in),
        if team.elements_chain_as_string { "chain string" } else { "$elements list" },
    );
    Ok(())
}

/// A team's SDK settings as `teams configure` prints them.
#[derive(sqlx::FromRow)]
struct SdkSettings {
    id: i64,
    session_recording_opt_in: bool,
    session_recording_sample_rate: Option<f64>,
    session_recording_minimum_duration_ms: Option<i32>,
    capture_console_log_opt_in: bool,
    autocapture: bool,
    heatmaps_opt_in: bool,
    autocapture_exceptions_opt_in: bool,
    elements_chain_as_string: bool,
}

fn on(flag: bool) -> &'static str {
    if flag {
        "on"
    } else {
        "off"
    }
}
