//! Every setting of `sluice-capture`, each an environment variable listed by `--help`.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use sluice_common::settings::millis;
use sluice_connect::kafka::KafkaSecurity;
use sluice_connect::redis::RedisTls;

pub use sluice_common::logging::LogFormat;

#[derive(Debug, Clone, Parser)]
#[command(name = "sluice-capture", version, about = "Accepts PostHog SDK traffic and writes it to Kafka.")]
pub struct Config {
    /// Address the HTTP server listens on.
    #[arg(long, env = "ADDRESS", default_value = "127.0.0.1:3000")]
    pub address: SocketAddr,

    /// Log output format (json in production).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    #[command(flatten)]
    pub kafka: KafkaSettings,

    #[command(flatten)]
    pub redis: RedisSettings,

    #[command(flatten)]
    pub team_tokens: TeamTokenSettings,

    #[command(flatten)]
    pub sdk_config: SdkConfigSettings,

    #[command(flatten)]
    pub overflow: OverflowSettings,

    #[command(flatten)]
    pub requests: RequestLimits,

    #[command(flatten)]
    pub lifecycle: Lifecycle,
}

/// Kafka: where events go and how the producer batches them.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Kafka")]
pub struct KafkaSettings {
    /// Bootstrap brokers, comma separated.
    #[arg(id = "kafka_hosts", long = "kafka-hosts", env = "KAFKA_HOSTS", default_value = "127.0.0.1:9092")]
    pub hosts: String,
    #[arg(id = "kafka_topic_main", long = "kafka-topic-main", env = "KAFKA_TOPIC_MAIN", default_value = sluice_schema::topics::EVENTS)]
    pub topic_main: String,
    #[arg(id = "kafka_topic_overflow", long = "kafka-topic-overflow", env = "KAFKA_TOPIC_OVERFLOW", default_value = sluice_schema::topics::EVENTS_OVERFLOW)]
    pub topic_overflow: String,
    #[arg(id = "kafka_topic_historical", long = "kafka-topic-historical", env = "KAFKA_TOPIC_HISTORICAL", default_value = sluice_schema::topics::EVENTS_HISTORICAL)]
    pub topic_historical: String,
    #[arg(id = "kafka_topic_replay", long = "kafka-topic-replay", env = "KAFKA_TOPIC_REPLAY", default_value = sluice_schema::topics::REPLAY)]
    pub topic_replay: String,
    #[arg(id = "kafka_topic_replay_overflow", long = "kafka-topic-replay-overflow", env = "KAFKA_TOPIC_REPLAY_OVERFLOW", default_value = sluice_schema::topics::REPLAY_OVERFLOW)]
    pub topic_replay_overflow: String,
    /// Producer compression codec (lz4, zstd, gzip, snappy, none).
    #[arg(id = "kafka_compression", long = "kafka-compression", env = "KAFKA_COMPRESSION", default_value = "lz4")]
    pub compression: String,
    /// How long the producer waits to fill a batch.
    #[arg(id = "kafka_linger", long = "kafka-linger-ms", env = "KAFKA_LINGER_MS", default_value = "5", value_name = "MS", value_parser = millis)]
    pub linger: Duration,
    /// Producer queue bound, in messages; past it requests get 503.
    #[arg(
        id = "kafka_queue_max_messages",
        long = "kafka-queue-max-messages",
        env = "KAFKA_QUEUE_MAX_MESSAGES",
        default_value_t = 100_000
    )]
    pub queue_max_messages: u64,
    /// Producer queue bound, in KiB; past it requests get 503.
    #[arg(
        id = "kafka_queue_max_kbytes",
        long = "kafka-queue-max-kbytes",
        env = "KAFKA_QUEUE_MAX_KBYTES",
        default_value_t = 65_536
    )]
    pub queue_max_kbytes: u64,
    /// How long a message may wait for the broker's acknowledgement before the request fails with 503.
    #[arg(id = "kafka_message_timeout", long = "kafka-message-timeout-ms", env = "KAFKA_MESSAGE_TIMEOUT_MS", default_value = "5000", value_name = "MS", value_parser = millis)]
    pub message_timeout: Duration,
    /// Largest message the broker accepts (key, value and headers); checked before producing.
    #[arg(
        id = "kafka_message_max_bytes",
        long = "kafka-message-max-bytes",
        env = "KAFKA_MESSAGE_MAX_BYTES",
        default_value_t = 1_000_000
    )]
    pub message_max_bytes: usize,

    /// librdkafka debug contexts (e.g. `broker,msg,eos`), empty for none.
    #[arg(id = "kafka_debug", long = "kafka-debug", env = "KAFKA_DEBUG", default_value = "")]
    pub debug: String,
    #[command(flatten)]
    pub security: KafkaSecurity,
}

/// Redis: the quota and overflow lists, read in the background.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Redis")]
pub struct RedisSettings {
    /// Redis holding quota limits and overflow lists (rediss:// for TLS; or a file holding
    /// the URL, named by REDIS_URL_FILE). Capture fails open while Redis cannot be read;
    /// empty turns the lists off.
    #[arg(
        id = "redis_url",
        long = "redis-url",
        env = "REDIS_URL",
        hide_env_values = true,
        default_value = "redis://127.0.0.1:6379"
    )]
    pub url: String,
    #[command(flatten)]
    pub tls: RedisTls,
    /// Prefix of the Redis keys (`<prefix>quota-limits/events`, `<prefix>capture-overflow/replay`, ...).
    #[arg(id = "redis_key_prefix", long = "redis-key-prefix", env = "REDIS_KEY_PREFIX", default_value = "@posthog/")]
    pub key_prefix: String,
    /// How often the Redis lists are re-read in the background.
    #[arg(id = "redis_refresh_interval", long = "redis-refresh-interval-ms", env = "REDIS_REFRESH_INTERVAL_MS", default_value = "5000", value_name = "MS", value_parser = millis)]
    pub refresh_interval: Duration,
    /// Timeout of each Redis call.
    #[arg(id = "redis_timeout", long = "redis-timeout-ms", env = "REDIS_TIMEOUT_MS", default_value = "250", value_name = "MS", value_parser = millis)]
    pub timeout: Duration,
    /// A list not refreshed for this long is forgotten (fail open).
    #[arg(id = "redis_stale_after", long = "redis-stale-after-ms", env = "REDIS_STALE_AFTER_MS", default_value = "60000", value_name = "MS", value_parser = millis)]
    pub stale_after: Duration,
}

/// The optional check of tokens against the teams in Postgres.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Team tokens")]
pub struct TeamTokenSettings {
    /// Reject tokens no team has, from a list read from Postgres in the background.
    /// Fails open: while the list cannot be read, every well-formed token is accepted.
    #[arg(id = "team_token_check", long = "team-token-check", env = "TEAM_TOKEN_CHECK", default_value_t = false, action = clap::ArgAction::Set)]
    pub check: bool,
    /// Postgres holding the teams, read in the background for the token check and the SDK
    /// config (`sslmode`, `sslrootcert` in the URL for TLS; or a file holding the URL,
    /// named by DATABASE_URL_FILE).
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/sluice"
    )]
    pub database_url: String,
    /// Query returning every valid token in its first column.
    #[arg(
        id = "team_token_query",
        long = "team-token-query",
        env = "TEAM_TOKEN_QUERY",
        default_value = "SELECT api_token FROM teams"
    )]
    pub query: String,
    /// How often the token list is re-read.
    #[arg(id = "team_token_refresh_interval", long = "team-token-refresh-interval-ms", env = "TEAM_TOKEN_REFRESH_INTERVAL_MS", default_value = "10000", value_name = "MS", value_parser = millis)]
    pub refresh_interval: Duration,
    /// A token list not refreshed for this long is ignored (fail open).
    #[arg(id = "team_token_stale_after", long = "team-token-stale-after-ms", env = "TEAM_TOKEN_STALE_AFTER_MS", default_value = "120000", value_name = "MS", value_parser = millis)]
    pub stale_after: Duration,
}

/// What SDKs are told when they load (recording, autocapture, ...).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "SDK configuration")]
pub struct SdkConfigSettings {
    /// Answer the SDK's configuration requests (/array/<token>/config and config.js,
    /// /flags, /decide) from each team's settings, read from DATABASE_URL in the
    /// background. Off, or before the first read, every token gets the defaults (no
    /// session recording); no feature flag is ever returned.
    #[arg(id = "sdk_config", long = "sdk-config", env = "SDK_CONFIG", default_value_t = true, action = clap::ArgAction::Set)]
    pub enabled: bool,
    /// How often the team settings are re-read.
    #[arg(id = "sdk_config_refresh_interval", long = "sdk-config-refresh-interval-ms", env = "SDK_CONFIG_REFRESH_INTERVAL_MS", default_value = "10000", value_name = "MS", value_parser = millis)]
    pub refresh_interval: Duration,
    /// Most teams whose answers are held in memory; tokens of the others get the defaults.
    #[arg(
        id = "sdk_config_max_teams",
        long = "sdk-config-max-teams",
        env = "SDK_CONFIG_MAX_TEAMS",
        default_value_t = 100_000
    )]
    pub max_teams: usize,
    /// Request compressions offered to SDKs, comma separated (`gzip-js`, `gzip`, `base64`):
    /// posthog-js uses gzip-js when offered, else base64, else none.
    #[arg(
        id = "sdk_config_supported_compression",
        long = "sdk-config-supported-compression",
        env = "SDK_CONFIG_SUPPORTED_COMPRESSION",
        default_value = "gzip,gzip-js"
    )]
    pub supported_compression: String,
    /// A token the last read did not have is looked up at once (a team created since is
    /// served without waiting for the next read): at most this many lookups at a time.
    #[arg(
        id = "sdk_config_lookup_concurrency",
        long = "sdk-config-lookup-concurrency",
        env = "SDK_CONFIG_LOOKUP_CONCURRENCY",
        default_value_t = 4
    )]
    pub lookup_concurrency: usize,
    /// Longest a request waits for a lookup slot and its query; past it the defaults are
    /// answered.
    #[arg(id = "sdk_config_lookup_timeout", long = "sdk-config-lookup-timeout-ms", env = "SDK_CONFIG_LOOKUP_TIMEOUT_MS", default_value = "1000", value_name = "MS", value_parser = millis)]
    pub lookup_timeout: Duration,
    /// How long a token found to be no team's is refused without asking Postgres again.
    #[arg(id = "sdk_config_unknown_token_ttl", long = "sdk-config-unknown-token-ttl-ms", env = "SDK_CONFIG_UNKNOWN_TOKEN_TTL_MS", default_value = "5000", value_name = "MS", value_parser = millis)]
    pub unknown_token_ttl: Duration,
    /// Most unknown tokens remembered; full, they are all forgotten.
    #[arg(
        id = "sdk_config_max_unknown_tokens",
        long = "sdk-config-max-unknown-tokens",
        env = "SDK_CONFIG_MAX_UNKNOWN_TOKENS",
        default_value_t = 100_000
    )]
    pub max_unknown_tokens: usize,
    /// Body limit of /flags and /decide, as received and decoded (413 past it): they carry
    /// a token and a few properties, never events.
    #[arg(
        id = "sdk_config_max_body_bytes",
        long = "sdk-config-max-body-bytes",
        env = "SDK_CONFIG_MAX_BODY_BYTES",
        default_value_t = 1024 * 1024
    )]
    pub max_body_bytes: usize,
}

/// Hot keys sent to the overflow lane.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Overflow")]
pub struct OverflowSettings {
    /// Reroute hot `token:distinct_id` keys to the overflow topic.
    #[arg(id = "overflow_enabled", long = "overflow-enabled", env = "OVERFLOW_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub enabled: bool,
    /// Sustained events per second allowed per `token:distinct_id` before overflow.
    #[arg(
        id = "overflow_per_second",
        long = "overflow-per-second",
        env = "OVERFLOW_PER_SECOND",
        default_value_t = 100
    )]
    pub per_second: u32,
    /// Burst allowed per `token:distinct_id` before overflow.
    #[arg(id = "overflow_burst", long = "overflow-burst", env = "OVERFLOW_BURST", default_value_t = 1_000)]
    pub burst: u32,
    /// Keys always sent to overflow: comma separated `token` or `token:distinct_id`.
    #[arg(
        id = "overflow_forced_keys",
        long = "overflow-forced-keys",
        env = "OVERFLOW_FORCED_KEYS",
        default_value = ""
    )]
    pub forced_keys: String,
    /// Keep the partition key on overflowed events (keeps per-person order, risks hot partitions).
    #[arg(id = "overflow_preserve_partition_locality", long = "overflow-preserve-partition-locality", env = "OVERFLOW_PRESERVE_PARTITION_LOCALITY", default_value_t = false, action = clap::ArgAction::Set)]
    pub preserve_partition_locality: bool,
    /// Most keys the overflow limiter tracks; past it the limiter state is reset.
    #[arg(
        id = "overflow_max_keys",
        long = "overflow-max-keys",
        env = "OVERFLOW_MAX_KEYS",
        default_value_t = 1_000_000
    )]
    pub max_keys: usize,
}

/// What one request, and all of them together, may take.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Requests")]
pub struct RequestLimits {
    /// Body limit (as received) on the event routes.
    #[arg(long, env = "MAX_EVENT_BODY_BYTES", default_value_t = 2 * 1024 * 1024)]
    pub max_event_body_bytes: usize,
    /// Body limit (as received) on /batch.
    #[arg(long, env = "MAX_BATCH_BODY_BYTES", default_value_t = 20 * 1024 * 1024)]
    pub max_batch_body_bytes: usize,
    /// Body limit (as received) on /s.
    #[arg(long, env = "MAX_REPLAY_BODY_BYTES", default_value_t = 25 * 1024 * 1024)]
    pub max_replay_body_bytes: usize,
    /// Limit of a payload after decompression (413 past it). SDKs send far less: posthog-python
    /// caps a batch at 5 MiB, posthog-js a recording request at about 1 MiB.
    #[arg(long, env = "MAX_DECOMPRESSED_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub max_decompressed_bytes: usize,
    /// Memory one request may take: its body, each decoded form, and its parsed JSON
    /// (estimated before parsing; about ten times the JSON text for real events). 413 past it.
    #[arg(long, env = "MAX_REQUEST_MEMORY_BYTES", default_value_t = 128 * 1024 * 1024)]
    pub max_request_memory_bytes: usize,
    /// Memory all requests in flight may take together; a request that cannot get its
    /// share at once is answered 503 (SDKs retry). Capture's peak memory is about this
    /// plus the producer queue (`KAFKA_QUEUE_MAX_KBYTES`) plus 30 MiB.
    #[arg(long, env = "MEMORY_BUDGET_BYTES", default_value_t = 128 * 1024 * 1024)]
    pub memory_budget_bytes: usize,
    /// Time allowed to read a request's headers.
    #[arg(long = "header-read-timeout-ms", env = "HEADER_READ_TIMEOUT_MS", default_value = "10000", value_name = "MS", value_parser = millis)]
    pub header_read_timeout: Duration,
    /// Time allowed between two chunks of a request body (408 past it).
    #[arg(long = "body-chunk-timeout-ms", env = "BODY_CHUNK_TIMEOUT_MS", default_value = "10000", value_name = "MS", value_parser = millis)]
    pub body_chunk_timeout: Duration,
    /// Time allowed for a whole request body, however it is trickled (408 past it).
    #[arg(long = "body-timeout-ms", env = "BODY_TIMEOUT_MS", default_value = "60000", value_name = "MS", value_parser = millis)]
    pub body_timeout: Duration,
    /// Requests decoded, parsed and produced at once; more are answered 503 at once (SDKs
    /// retry). A request takes its slot once its body is in.
    #[arg(long, env = "MAX_CONCURRENT_REQUESTS", default_value_t = 1_024)]
    pub max_concurrent_requests: usize,
    /// Open client connections; past it, new ones wait in the listen backlog.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 4_096)]
    pub max_connections: usize,
    /// A connection with no request in flight for this long is closed (HTTP/1 and HTTP/2).
    /// Keep it above the idle timeout of the load balancer in front.
    #[arg(long = "idle-timeout-ms", env = "IDLE_TIMEOUT_MS", default_value = "90000", value_name = "MS", value_parser = millis)]
    pub idle_timeout: Duration,
    /// Per connection: the HTTP/1 buffer for a request's head and the HTTP/2 flow-control
    /// window, so what a connection buffers before capture reads it stays small.
    #[arg(long, env = "CONNECTION_BUFFER_BYTES", default_value_t = 64 * 1024)]
    pub connection_buffer_bytes: usize,
    /// Events per second this instance accepts in all (429 past it); 0 turns the limit off.
    #[arg(long, env = "GLOBAL_RATE_LIMIT_PER_SECOND", default_value_t = 0)]
    pub global_rate_limit_per_second: u32,
    /// Burst of the global limit, in events.
    #[arg(long, env = "GLOBAL_RATE_LIMIT_BURST", default_value_t = 10_000)]
    pub global_rate_limit_burst: u32,
    /// Proxies in front of capture: 0 takes the leftmost X-Forwarded-For address,
    /// N takes the address N hops from the right.
    #[arg(long, env = "TRUSTED_PROXY_HOPS", default_value_t = 0)]
    pub trusted_proxy_hops: usize,
}

/// Liveness and the drain after SIGTERM.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Lifecycle")]
pub struct Lifecycle {
    /// After SIGTERM, how long /_readiness says 503 before the listener closes.
    #[arg(long = "shutdown-readiness-delay-ms", env = "SHUTDOWN_READINESS_DELAY_MS", default_value = "0", value_name = "MS", value_parser = millis)]
    pub shutdown_readiness_delay: Duration,
    /// After SIGTERM, how long in-flight requests and the producer get to finish.
    #[arg(long = "shutdown-drain-timeout-ms", env = "SHUTDOWN_DRAIN_TIMEOUT_MS", default_value = "30000", value_name = "MS", value_parser = millis)]
    pub shutdown_drain_timeout: Duration,
    /// Liveness fails when the server loop or the producer has not ticked for this long.
    #[arg(long = "liveness-stall-ms", env = "LIVENESS_STALL_MS", default_value = "15000", value_name = "MS", value_parser = millis)]
    pub liveness_stall: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_setting_is_an_environment_variable() {
        Config::command().debug_assert();
        let cmd = Config::command();
        for arg in cmd.get_arguments() {
            if ["help", "version"].contains(&arg.get_id().as_str()) {
                continue;
            }
            assert!(arg.get_env().is_some(), "setting {} has no environment variable", arg.get_id());
        }
    }
}
