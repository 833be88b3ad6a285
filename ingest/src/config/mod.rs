//! Every setting of `sluice-ingest`, each an environment variable listed by `--help`,
//! and its operator commands.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser};
use sluice_common::settings::millis;
use sluice_connect::redis::RedisTls;
use sqlx::postgres::PgConnectOptions;

use crate::write::{ClickHouseAccess, ClickHouseError};
use sluice_schema::clickhouse::Topology;

mod commands;
mod exports;
mod kafka;
mod plugins;

pub use commands::{Command, DlqCommand, PluginsCommand, TeamsCommand};
pub use exports::ExportSettings;
pub use kafka::KafkaSettings;
pub use plugins::PluginSettings;

/// What one `sluice-ingest` process consumes: one of the three lanes capture produces
/// to, or the written events of teams with export plugins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Lane {
    Main,
    Overflow,
    Historical,
    /// `on_event` and `export_events` of the teams' plugins, on the exports topic.
    Exports,
}

impl Lane {
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Main => "main",
            Lane::Overflow => "overflow",
            Lane::Historical => "historical",
            Lane::Exports => "exports",
        }
    }

    pub fn default_topic(self) -> &'static str {
        use sluice_schema::topics;
        match self {
            Lane::Main => topics::EVENTS,
            Lane::Overflow => topics::EVENTS_OVERFLOW,
            Lane::Historical => topics::EVENTS_HISTORICAL,
            Lane::Exports => topics::EXPORTS,
        }
    }
}

pub use sluice_common::logging::LogFormat;

#[derive(Debug, Parser)]
#[command(name = "sluice-ingest", version, about = "Turns captured events into ClickHouse rows.")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address of the health and metrics server.
    #[arg(long, env = "ADDRESS", default_value = "127.0.0.1:3001")]
    pub address: SocketAddr,
    /// Log output format (json in production).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text", global = true)]
    pub log_format: LogFormat,

    /// Which lane this process consumes.
    #[arg(long, env = "LANE", value_enum, default_value = "main")]
    pub lane: Lane,
    /// After SIGTERM, how long the batch in flight may take to be written and committed
    /// (dependency retries included), and queued plugin exports to be handed over,
    /// before the process exits leaving the rest uncommitted for the next owner.
    #[arg(long = "shutdown-drain-timeout-ms", env = "SHUTDOWN_DRAIN_TIMEOUT_MS", default_value = "20000", value_name = "MS", value_parser = millis)]
    pub shutdown_drain_timeout: Duration,

    /// How often readiness asks Kafka, Postgres and ClickHouse while the lane is idle.
    #[arg(long = "readiness-probe-interval-ms", env = "READINESS_PROBE_INTERVAL_MS", default_value = "5000", value_name = "MS", value_parser = millis)]
    pub readiness_probe_interval: Duration,
    #[command(flatten)]
    pub plugins: PluginSettings,
    #[command(flatten)]
    pub exports: ExportSettings,

    /// Longest pause between retries while a dependency is down.
    #[arg(long = "retry-max-backoff-ms", env = "RETRY_MAX_BACKOFF_MS", default_value = "10000", value_name = "MS", value_parser = millis)]
    pub retry_max_backoff: Duration,
    #[command(flatten)]
    pub kafka: KafkaSettings,
    #[command(flatten)]
    pub batch: BatchSettings,
    #[command(flatten)]
    pub postgres: PostgresSettings,
    #[command(flatten)]
    pub restrict: Restrictions,
    #[command(flatten)]
    pub redis: RedisSettings,
    #[command(flatten)]
    pub clickhouse: ClickHouseSettings,
}

/// How a batch is gathered and run.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Batches")]
pub struct BatchSettings {
    /// Most events in one batch.
    #[arg(id = "batch_max_events", long = "batch-max-events", env = "BATCH_MAX_EVENTS", default_value_t = 2_000)]
    pub max_events: usize,
    /// Most message bytes in one batch.
    #[arg(id = "batch_max_bytes", long = "batch-max-bytes", env = "BATCH_MAX_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_bytes: usize,
    /// Longest wait to fill a batch.
    #[arg(id = "batch_max_wait", long = "batch-max-wait-ms", env = "BATCH_MAX_WAIT_MS", default_value = "500", value_name = "MS", value_parser = millis)]
    pub max_wait: Duration,

    /// Most groups of a batch (events of one person, in order) processed at once.
    #[arg(id = "batch_concurrency", long = "batch-concurrency", env = "BATCH_CONCURRENCY", default_value_t = 8)]
    pub concurrency: usize,
}

/// Postgres: teams, persons, groups.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Postgres")]
pub struct PostgresSettings {
    /// Postgres holding teams (and persons): `sslmode` (up to verify-full) and
    /// `sslrootcert` in the URL for TLS; or a file holding the URL, named by DATABASE_URL_FILE.
    #[arg(
        id = "database_url",
        long = "database-url",
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/sluice",
        global = true
    )]
    pub url: String,
    /// Most Postgres connections.
    #[arg(
        id = "database_max_connections",
        long = "database-max-connections",
        env = "DATABASE_MAX_CONNECTIONS",
        default_value_t = 8,
        global = true
    )]
    pub max_connections: u32,
    /// How long a resolved token (or its absence) is trusted before it is looked up again.
    #[arg(long = "team-cache-ttl-ms", env = "TEAM_CACHE_TTL_MS", default_value = "30000", value_name = "MS", value_parser = millis)]
    pub team_cache_ttl: Duration,
    /// Most tokens the team cache holds.
    #[arg(long, env = "TEAM_CACHE_MAX_ENTRIES", default_value_t = 100_000)]
    pub team_cache_max_entries: usize,
}

/// Restrictions set in the configuration (Redis adds to them).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Restrictions")]
pub struct Restrictions {
    /// Drop the events of these, comma separated `token` or `token:distinct_id`.
    #[arg(
        id = "restrict_drop_events",
        long = "restrict-drop-events",
        env = "RESTRICT_DROP_EVENTS",
        default_value = ""
    )]
    pub drop_events: String,
    /// Skip person processing for these, comma separated `token` or `token:distinct_id`.
    #[arg(
        id = "restrict_skip_persons",
        long = "restrict-skip-persons",
        env = "RESTRICT_SKIP_PERSONS",
        default_value = ""
    )]
    pub skip_persons: String,
}

/// Redis: restrictions, plugin reloads and schedules.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Redis")]
pub struct RedisSettings {
    /// Redis holding restrictions set at run time, plugin caches and reload notices
    /// (rediss:// for TLS; or a file holding the URL, named by REDIS_URL_FILE); empty for none.
    #[arg(
        id = "redis_url",
        long = "redis-url",
        env = "REDIS_URL",
        hide_env_values = true,
        default_value = "redis://127.0.0.1:6379",
        global = true
    )]
    pub url: String,
    #[command(flatten)]
    pub tls: RedisTls,
    /// Prefix of the Redis keys (`<prefix>ingest-restrictions/drop-events`, `.../skip-persons`).
    #[arg(
        id = "redis_key_prefix",
        long = "redis-key-prefix",
        env = "REDIS_KEY_PREFIX",
        default_value = "@posthog/",
        global = true
    )]
    pub key_prefix: String,
    /// How often the Redis restrictions are re-read.
    #[arg(id = "redis_refresh_interval", long = "redis-refresh-interval-ms", env = "REDIS_REFRESH_INTERVAL_MS", default_value = "5000", value_name = "MS", value_parser = millis)]
    pub refresh_interval: Duration,
    /// Timeout of each Redis call.
    #[arg(id = "redis_timeout", long = "redis-timeout-ms", env = "REDIS_TIMEOUT_MS", default_value = "500", value_name = "MS", value_parser = millis, global = true)]
    pub timeout: Duration,
    /// Restrictions read from Redis are forgotten when not refreshed for this long.
    #[arg(id = "redis_stale_after", long = "redis-stale-after-ms", env = "REDIS_STALE_AFTER_MS", default_value = "60000", value_name = "MS", value_parser = millis)]
    pub stale_after: Duration,
}

/// ClickHouse: where rows are written.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "ClickHouse")]
pub struct ClickHouseSettings {
    /// ClickHouse HTTP interface, http:// or https:// (or a file holding the URL, named by
    /// CLICKHOUSE_URL_FILE); it may carry the user and password.
    #[arg(
        id = "clickhouse_url",
        long = "clickhouse-url",
        env = "CLICKHOUSE_URL",
        hide_env_values = true,
        default_value = "http://127.0.0.1:8123",
        global = true
    )]
    pub url: String,
    /// ClickHouse user; empty for the URL's, or none.
    #[arg(
        id = "clickhouse_user",
        long = "clickhouse-user",
        env = "CLICKHOUSE_USER",
        default_value = "",
        global = true
    )]
    pub user: String,
    /// ClickHouse password (or a file holding it, named by CLICKHOUSE_PASSWORD_FILE).
    #[arg(
        id = "clickhouse_password",
        long = "clickhouse-password",
        env = "CLICKHOUSE_PASSWORD",
        hide_env_values = true,
        default_value = "",
        global = true
    )]
    pub password: String,
    /// CA certificates (PEM file) an https:// ClickHouse is checked against, besides the public roots.
    #[arg(id = "clickhouse_ca_file", long = "clickhouse-ca-file", env = "CLICKHOUSE_CA_FILE", global = true)]
    pub ca_file: Option<std::path::PathBuf>,
    /// ClickHouse database holding Sluice's tables.
    #[arg(
        id = "clickhouse_database",
        long = "clickhouse-database",
        env = "CLICKHOUSE_DATABASE",
        default_value = "sluice",
        global = true
    )]
    pub database: String,
    /// ClickHouse cluster (a name in the servers' remote_servers) to create the tables on and write
    /// through, sharded by distinct id behind Distributed tables; empty for one server.
    #[arg(
        id = "clickhouse_cluster",
        long = "clickhouse-cluster",
        env = "CLICKHOUSE_CLUSTER",
        default_value = "",
        global = true
    )]
    pub cluster: String,
    /// Encoding of insert bodies.
    #[arg(
        id = "clickhouse_compression",
        long = "clickhouse-compression",
        env = "CLICKHOUSE_COMPRESSION",
        value_enum,
        default_value = "gzip",
        global = true
    )]
    pub compression: crate::write::Compression,
    /// Timeout of one ClickHouse request.
    #[arg(id = "clickhouse_timeout", long = "clickhouse-timeout-ms", env = "CLICKHOUSE_TIMEOUT_MS", default_value = "30000", value_name = "MS", value_parser = millis, global = true)]
    pub timeout: Duration,
}

impl Config {
    pub fn topic(&self) -> String {
        let default = match self.lane {
            Lane::Exports => self.kafka.exports_topic.clone(),
            lane => lane.default_topic().to_string(),
        };
        self.kafka.topic.clone().unwrap_or(default)
    }

    pub fn group_id(&self) -> String {
        self.kafka.group_id.clone().unwrap_or_else(|| format!("sluice-ingest-{}", self.lane.as_str()))
    }
}

impl PostgresSettings {
    pub fn options(&self) -> Result<PgConnectOptions, sluice_connect::postgres::PostgresSettingError> {
        sluice_connect::postgres::options(&self.url)
    }
}

impl RedisSettings {
    /// `None` when `REDIS_URL` is empty (the operator turned Redis off).
    pub fn client(&self) -> Result<Option<redis::Client>, sluice_connect::redis::RedisSettingError> {
        match self.url.as_str() {
            "" => Ok(None),
            url => sluice_connect::redis::client(url, &self.tls).map(Some),
        }
    }
}

impl ClickHouseSettings {
    pub fn access(&self) -> Result<ClickHouseAccess, ClickHouseError> {
        ClickHouseAccess::new(&self.url, &self.user, &self.password, self.ca_file.clone(), self.timeout)
    }

    pub fn topology(&self) -> Topology {
        match self.cluster.trim() {
            "" => Topology::Single,
            name => Topology::Cluster(name.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_setting_is_an_environment_variable() {
        Cli::command().debug_assert();
        for arg in Cli::command().get_arguments() {
            if ["help", "version"].contains(&arg.get_id().as_str()) {
                continue;
            }
            assert!(arg.get_env().is_some(), "setting {} has no environment variable", arg.get_id());
        }
    }
}
