//! `sluice-capture`: PostHog SDK traffic in, Kafka messages out.
//!
//! A request flows through one module per stage:
//! [`request`] (route, query, hints, ip) → [`decode`] (compression) → [`parse`] (JSON
//! shapes) → [`normalize`] (per-event validation) → [`route`] (topic and key, with
//! [`overflow`] and the Redis [`limits`]; [`replay`] for recordings) → [`produce`]
//! (Kafka, answered only once acknowledged). [`pipeline`] wires the stages, [`server`]
//! is the HTTP layer, and [`error`] is the single place errors become responses.

mod budget;
pub mod config;
mod decode;
mod error;
mod health;
mod limits;
mod normalize;
mod overflow;
mod parse;
mod pipeline;
mod produce;
mod replay;
mod request;
mod route;
mod routes;
mod sdk_config;
mod sdk_request;
mod server;
mod team_tokens;
pub mod telemetry;
mod token;
mod token_lookup;
mod v1;

pub use routes::{routes, RouteInfo};

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::budget::MemoryBudget;
use crate::config::Config;
use crate::health::Health;
use crate::limits::{RedisLists, RefreshSettings};
use crate::overflow::{GlobalLimiter, OverflowLimiter, OverflowReason, OverflowSettings};
use crate::pipeline::Pipeline;
use crate::produce::{KafkaSettings, KafkaSink, Sink};
use crate::route::{Router, Topics};
use crate::sdk_config::SdkConfigs;
use crate::server::{AppState, BodyLimits, BodyTimeouts, ConnectionLimits};
use crate::team_tokens::{TeamTokens, TokenRefresh};
use crate::token_lookup::LookupLimits;
use sluice_common::every::Every;

/// How often the overflow limiter forgets idle keys.
const OVERFLOW_HOUSEKEEPING: Duration = Duration::from_secs(10);
const BROKER_PROBE_INTERVAL: Duration = Duration::from_secs(1);
const BROKER_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

impl Config {
    pub fn topics(&self) -> Topics {
        Topics {
            main: self.kafka.topic_main.clone(),
            overflow: self.kafka.topic_overflow.clone(),
            historical: self.kafka.topic_historical.clone(),
            replay: self.kafka.topic_replay.clone(),
            replay_overflow: self.kafka.topic_replay_overflow.clone(),
        }
    }
}

/// Runs capture on `listener` until `shutdown` resolves, then drains and flushes.
pub async fn run(config: Config, listener: TcpListener, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let health = Health::new(config.lifecycle.liveness_stall);
    health.tick_server();
    let metrics = telemetry::metrics_handle();
    telemetry::register(&[OverflowReason::Rate.as_str(), OverflowReason::Forced.as_str()]);
    // Every connection setting is checked before anything connects: one that cannot be
    // honoured stops capture here, naming it.
    let redis = match config.redis.url.as_str() {
        "" => None,
        url => Some(sluice_connect::redis::client(url, &config.redis.tls)?),
    };
    let database = match config.team_tokens.check || config.sdk_config.enabled {
        true => Some(sluice_connect::postgres::options(&config.team_tokens.database_url)?),
        false => None,
    };

    let sink = KafkaSink::new(
        KafkaSettings {
            hosts: config.kafka.hosts.clone(),
            topics: config.topics(),
            compression: config.kafka.compression.clone(),
            linger_ms: config.kafka.linger.as_millis() as u64,
            queue_max_messages: config.kafka.queue_max_messages,
            queue_max_kbytes: config.kafka.queue_max_kbytes,
            message_timeout_ms: config.kafka.message_timeout.as_millis() as u64,
            message_max_bytes: config.kafka.message_max_bytes,
            debug: config.kafka.debug.clone(),
            security: config.kafka.security.clone(),
        },
        health.clone(),
    )?;
    let sink = Arc::new(sink);
    {
        let sink = sink.clone();
        match tokio::task::spawn_blocking(move || sink.probe(Duration::from_secs(5))).await? {
            Ok(()) => info!(hosts = %config.kafka.hosts, "kafka reachable"),
            Err(e) => {
                warn!(hosts = %config.kafka.hosts, error = %e, "kafka not reachable yet; readiness stays false until it is")
            }
        }
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let prober = spawn_broker_probe(sink.clone(), stop_rx.clone());
    let lists = RedisLists::new(config.redis.stale_after);
    let refresher = limits::spawn_refresher(
        lists.clone(),
        RefreshSettings {
            client: redis,
            key_prefix: config.redis.key_prefix.clone(),
            interval: config.redis.refresh_interval,
            timeout: config.redis.timeout,
        },
        stop_rx.clone(),
    );
    let team_tokens = TeamTokens::new(config.team_tokens.check, config.team_tokens.stale_after);
    let token_refresher = team_tokens::spawn_refresher(
        team_tokens.clone(),
        TokenRefresh {
            database: database.clone().filter(|_| config.team_tokens.check),
            query: config.team_tokens.query.clone(),
            interval: config.team_tokens.refresh_interval,
            timeout: config.redis.timeout.max(Duration::from_secs(1)),
        },
        stop_rx.clone(),
    );
    let sdk_configs = SdkConfigs::new(
        config
            .sdk_config
            .supported_compression
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(String::from)
            .collect(),
    );
    let sdk_configs = match database.clone().filter(|_| config.sdk_config.enabled) {
        Some(database) => sdk_configs.looking_up(
            database,
            LookupLimits {
                concurrency: config.sdk_config.lookup_concurrency,
                wait: config.sdk_config.lookup_timeout,
                unknown_for: config.sdk_config.unknown_token_ttl,
                max_unknown: config.sdk_config.max_unknown_tokens,
            },
            config.sdk_config.max_teams,
        ),
        None => sdk_configs,
    };
    let sdk_config_refresher = sdk_config::spawn_refresher(
        sdk_configs.clone(),
        sdk_config::Refresh {
            database: database.filter(|_| config.sdk_config.enabled),
            interval: config.sdk_config.refresh_interval,
            timeout: config.redis.timeout.max(Duration::from_secs(1)),
            max_teams: config.sdk_config.max_teams,
        },
        stop_rx.clone(),
    );
    let overflow = OverflowLimiter::new(
        OverflowSettings {
            enabled: config.overflow.enabled,
            per_second: config.overflow.per_second,
            burst: config.overflow.burst,
            forced: OverflowSettings::parse_forced(&config.overflow.forced_keys),
            max_keys: config.overflow.max_keys,
        },
        lists.overflow_events.clone(),
    );

    let state = Arc::new(AppState {
        pipeline: Pipeline {
            router: Router {
                lists,
                overflow,
                preserve_locality: config.overflow.preserve_partition_locality,
                team_tokens,
            },
            global_limit: GlobalLimiter::new(
                config.requests.global_rate_limit_per_second,
                config.requests.global_rate_limit_burst,
            ),
            sink: sink.clone() as Arc<dyn Sink>,
            max_decompressed_bytes: config.requests.max_decompressed_bytes,
            message_max_bytes: config.kafka.message_max_bytes,
        },
        sdk_config: sdk_configs,
        health: health.clone(),
        metrics: metrics.clone(),
        body_limits: BodyLimits {
            events: config.requests.max_event_body_bytes,
            batch: config.requests.max_batch_body_bytes,
            replay: config.requests.max_replay_body_bytes,
            sdk_config: config.sdk_config.max_body_bytes,
        },
        body_timeouts: BodyTimeouts { chunk: config.requests.body_chunk_timeout, whole: config.requests.body_timeout },
        trusted_proxy_hops: config.requests.trusted_proxy_hops,
        memory: MemoryBudget::new(config.requests.memory_budget_bytes, config.requests.max_request_memory_bytes),
        slots: tokio::sync::Semaphore::new(config.requests.max_concurrent_requests),
    });
    let background = spawn_background(state.clone(), metrics, stop_rx);

    let app = routes::router(state.clone());
    info!(address = %listener.local_addr()?, "sluice-capture listening");
    let readiness_delay = config.lifecycle.shutdown_readiness_delay;
    let health_for_shutdown = health.clone();
    let shutdown = async move {
        shutdown.await;
        info!("shutdown requested: readiness now fails");
        health_for_shutdown.begin_shutdown();
        tokio::time::sleep(readiness_delay).await;
    };
    let drain = config.lifecycle.shutdown_drain_timeout;
    let limits = ConnectionLimits {
        header_read_timeout: config.requests.header_read_timeout,
        idle_timeout: config.requests.idle_timeout,
        max_connections: config.requests.max_connections,
        max_buffer_bytes: config.requests.connection_buffer_bytes,
    };
    server::serve(listener, app, limits, drain, shutdown).await;

    let _ = stop_tx.send(true);
    let _ = tokio::join!(refresher, token_refresher, sdk_config_refresher, background, prober);
    // Every 200 was sent after its acknowledgement; this flush is for requests the
    // drain timeout cut off, so their messages still get a chance.
    tokio::task::spawn_blocking(move || sink.flush(drain)).await?;
    info!("sluice-capture stopped");
    Ok(())
}

/// Re-probes the broker every `BROKER_PROBE_INTERVAL` on a blocking thread (the metadata
/// call blocks) until `stop` changes.
fn spawn_broker_probe(sink: Arc<KafkaSink>, stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // The first probe ran at start.
        let mut every = Every::after(BROKER_PROBE_INTERVAL, stop);
        while every.tick().await {
            let sink = sink.clone();
            let _ = tokio::task::spawn_blocking(move || sink.probe(BROKER_PROBE_TIMEOUT)).await;
        }
    })
}

/// Heartbeat of the server loop, metrics upkeep and limiter housekeeping.
fn spawn_background(
    state: Arc<AppState>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = Every::now(Duration::from_secs(1), stop);
        let mut last_housekeeping = tokio::time::Instant::now();
        while every.tick().await {
            state.health.tick_server();
            metrics.run_upkeep();
            if last_housekeeping.elapsed() >= OVERFLOW_HOUSEKEEPING {
                last_housekeeping = tokio::time::Instant::now();
                state.pipeline.router.overflow.housekeep();
            }
        }
    })
}
