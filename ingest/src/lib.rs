//! `sluice-ingest`: captured events in, ClickHouse rows out.
//!
//! A batch flows through [`consume`] (bounded batches, commit after durable writes) →
//! [`batch`] (planned into ordered groups that run concurrently) → [`process`] (per
//! event: parse, [`resolve`] team, [`restrict`], [`normalize`], [`timestamp`],
//! [`persons`], [`groups`]) → [`write`] (ClickHouse) or [`dlq`] (dead letters), then its
//! offsets are committed; the written events of teams with export plugins go to the
//! exports topic, which the exports lane ([`exports`]) hands to their plugins.
//! [`commands`] are the operator commands of the same binary.

mod batch;
pub mod commands;
pub mod config;
mod consume;
mod dlq;
mod elements;
mod exports;
mod groups;
mod health;
mod lane;
mod normalize;
mod persons;
mod plugins;
mod process;
mod resolve;
mod restrict;
pub mod rows;
mod stopping;
mod stores;
pub mod telemetry;
mod timestamp;
mod watch;
mod write;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::producer::FutureProducer;
use sluice_connect::kafka::Role;
use tracing::{info, warn};

use crate::config::Config;
use crate::consume::{BatchLimits, LaneConsumer, LaneContext};
use crate::dlq::DeadLetters;
use crate::exports::ExportsTopic;
use crate::groups::GroupStore;
use crate::health::{Dependencies, Health};
use crate::persons::PersonStore;
use crate::plugins::Plugins;
use crate::process::Deps;
use crate::resolve::TeamCache;
use crate::restrict::{RedisSettings, Restrictions};
use crate::stopping::Stopping;
use crate::stores::Postgres;
use crate::write::{ClickHouse, ClickHouseAccess};

/// How often the lane's topic is read from the broker (owned partitions' lag, partitions
/// no one consumes), at most: a short KAFKA_STALLED_PARTITION_REJOIN_MS reads more often.
const WATCH_INTERVAL: Duration = Duration::from_secs(10);

/// Consumes the lane until `shutdown` resolves; the batch in flight is finished and
/// committed first.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let lane = config.lane.as_str();
    // After SIGTERM the batch in flight gets `drain` to be written and committed, and
    // queued plugin exports and teardowns share what is left of it; a dependency outage
    // must not keep the process past it (the orchestrator would kill it anyway), and what
    // is left uncommitted is the next owner's to do.
    let drain = config.shutdown_drain_timeout;
    let stopping = Stopping::default();
    // The background tasks stop on this and are joined before the process ends.
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut background = Vec::new();
    tokio::spawn({
        let stopping = stopping.clone();
        async move {
            shutdown.await;
            info!("stopping: finishing the batch in flight");
            stopping.begin(drain);
            let _ = stop_tx.send(true);
        }
    });
    let metrics = telemetry::metrics_handle();
    let health = Health::new();
    telemetry::register(lane);
    health.tick();
    health::serve(config.address, health.clone(), metrics).await?;

    // Every connection setting is checked before anything connects: one that cannot be
    // honoured stops the process here, naming it.
    let redis = config.redis.client()?;
    let clickhouse = config.clickhouse.access()?;
    let consumer_config = config.kafka.client_config(Role::Consumer)?;
    let producer_config = config.kafka.client_config(Role::Producer)?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(config.postgres.max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(config.postgres.options()?);
    let stores = Postgres {
        teams: TeamCache::new(pool.clone(), config.postgres.team_cache_ttl, config.postgres.team_cache_max_entries),
        persons: PersonStore::new(pool.clone()),
        groups: GroupStore::new(pool.clone()),
    };
    let exports_lane = config.lane == config::Lane::Exports;
    if exports_lane && !config.plugins.enabled {
        anyhow::bail!("LANE=exports runs export plugins: it needs PLUGINS_ENABLED=true");
    }
    let plugins = if config.plugins.enabled {
        let role = if exports_lane { plugins::Role::Exports } else { plugins::Role::Events };
        let plugins = Arc::new(Plugins::new(&config, pool.clone(), role)?);
        if let Err(e) = plugins.refresh().await {
            warn!(error = %e, "reading plugin configurations failed; retrying in the background");
        }
        background.push(plugins::spawn_reloader(
            plugins.clone(),
            config.plugins.reload_interval,
            redis.clone(),
            sluice_schema::redis_keys::plugin_reload(&config.redis.key_prefix),
            stop.clone(),
        ));
        Some(plugins)
    } else {
        None
    };
    let restrictions = Arc::new(Restrictions::parse(
        &config.restrict.drop_events,
        &config.restrict.skip_persons,
        config.redis.stale_after,
    ));
    background.push(restrict::spawn_refresher(
        restrictions.clone(),
        RedisSettings {
            client: redis.clone(),
            key_prefix: config.redis.key_prefix.clone(),
            interval: config.redis.refresh_interval,
            timeout: config.redis.timeout,
        },
        stop.clone(),
    ));
    let ch = tokio::select! {
        ch = connect_clickhouse(&config, &clickhouse, &health) => Arc::new(ch),
        _ = stopping.cancelled() => {
            info!("stopped before ClickHouse answered");
            return Ok(());
        }
    };
    if let Some(plugins) = plugins.as_ref().filter(|_| !exports_lane) {
        background.push(plugins::jobs::spawn(
            plugins.clone(),
            ch.clone(),
            plugins::jobs::Settings {
                poll: config.plugins.job_poll,
                concurrency: config.plugins.job_concurrency,
                max_attempts: config.plugins.job_max_attempts,
                backoff: config.plugins.job_retry_backoff,
            },
            stop.clone(),
        ));
        background.push(plugins::schedules::spawn(
            plugins.clone(),
            ch.clone(),
            plugins::schedules::Settings {
                redis: redis.clone(),
                key_prefix: config.redis.key_prefix.clone(),
                minute: config.plugins.schedule_minute,
            },
            stop.clone(),
        ));
    }
    info!(flavor = ?ch.flavor, database = %ch.database, "clickhouse ready");

    let mut consumer_config = consumer_config.clone();
    // A fetch waits up to this for data. Kafka answers as soon as there is some, but a
    // broker that holds every fetch for the whole wait (Tansu 0.6 does) adds it to each
    // event's lag: 500 ms, librdkafka's default, was most of the p99 at a steady load.
    // 50 ms costs an idle consumer 20 fetches a second. KAFKA_CONSUMER_FETCH_WAIT_MAX_MS wins.
    if consumer_config.get("fetch.wait.max.ms").is_none() {
        consumer_config.set("fetch.wait.max.ms", "50");
    }
    let consumer: Arc<LaneConsumer> = consumer_config
        .set("group.id", config.group_id())
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("session.timeout.ms", config.kafka.session_timeout.as_millis().to_string())
        .create_with_context(LaneContext::new(
            config.kafka.gap_rewind_messages,
            config.kafka.quiet_partition_check,
            lane,
        ))
        .map(Arc::new)?;
    consumer.subscribe(&[&config.topic()])?;
    let stall_after = Some(config.kafka.stalled_partition_rejoin).filter(|after| !after.is_zero());
    background.push(watch::spawn(
        &consumer,
        health.clone(),
        watch::Settings {
            topic: config.topic(),
            interval: stall_after.map_or(WATCH_INTERVAL, |after| WATCH_INTERVAL.min(after / 3)),
            stall_after,
            judge_owned: !exports_lane,
        },
        stop.clone(),
    ));
    let producer: FutureProducer =
        producer_config.clone().set("acks", "all").set("enable.idempotence", "true").create()?;
    if let Some(plugins) = &plugins {
        let topic = config.plugins.capture_topic.clone();
        plugins.capture_to(plugins::CaptureSink { producer: producer.clone(), topic });
    }
    background.push(health::spawn_probe(
        health.clone(),
        Dependencies { postgres: pool, clickhouse: ch.clone(), kafka: producer.clone() },
        config.readiness_probe_interval,
        stop.clone(),
    ));
    let dlq_topic = if exports_lane { &config.kafka.exports_dlq_topic } else { &config.kafka.dlq_topic };
    let dead_letters = DeadLetters::new(producer.clone(), dlq_topic.clone(), lane);
    let limits = BatchLimits {
        max_events: config.batch.max_events,
        max_bytes: config.batch.max_bytes,
        max_wait: config.batch.max_wait,
    };
    let max_backoff = config.retry_max_backoff;
    info!(lane, topic = %config.topic(), group = %config.group_id(), "sluice-ingest consuming");

    if let (true, Some(plugins)) = (exports_lane, &plugins) {
        let dead = Arc::new(dead_letters);
        exports::Lane {
            consumer: &consumer,
            topic: config.topic(),
            limits,
            plugins: plugins.clone(),
            ch: ch.clone(),
            dead: dead.clone(),
            settings: config.exports.clone(),
            health: &health,
            stopping: &stopping,
        }
        .run()
        .await;
        // A delivery cut at the deadline may still hold the producer: it goes with the
        // process.
        finish(Some(plugins), background, consumer, dead, &stopping, drain).await;
        info!("sluice-ingest exports lane stopped");
        return Ok(());
    }
    let exports = ExportsTopic::new(producer, config.kafka.exports_topic.clone());
    let deps = Deps { stores: &stores, restrictions: &restrictions, plugins: plugins.as_deref(), flavor: ch.flavor };
    let ended = lane::Loop {
        consumer: &consumer,
        topic: config.topic(),
        limits,
        deps,
        ch: &ch,
        dead_letters: &dead_letters,
        lane,
        concurrency: config.batch.concurrency,
        exports: plugins.is_some().then_some(&exports),
        max_backoff,
        health: &health,
        stopping: &stopping,
        drain,
    }
    .run()
    .await;
    finish(plugins.as_deref(), background, consumer, Arc::new(dead_letters), &stopping, drain).await;
    if ended == lane::Ended::LeftUncommitted {
        info!("sluice-ingest stopped; its last batch is left for the next owner of its partitions");
        return Ok(());
    }
    info!("sluice-ingest stopped after committing its last batch");
    Ok(())
}

/// After the lane's loop: plugin teardowns, the background tasks, then Kafka, each
/// within what is left of the drain.
async fn finish(
    plugins: Option<&Plugins>,
    background: Vec<tokio::task::JoinHandle<()>>,
    consumer: Arc<LaneConsumer>,
    dead_letters: Arc<DeadLetters>,
    stopping: &Stopping,
    drain: Duration,
) {
    if let Some(plugins) = plugins {
        plugins.shutdown(stopping.left(drain).max(Duration::from_millis(500))).await;
    }
    // A round in flight (a probe, a Redis read) is bounded by its own timeout; what is
    // still running at the deadline is left to the process's end.
    let _ =
        tokio::time::timeout(stopping.left(drain).max(Duration::from_secs(1)), futures::future::join_all(background))
            .await;
    lane::close_kafka(consumer, dead_letters, stopping.left(drain).max(Duration::from_secs(2)));
}

async fn connect_clickhouse(config: &Config, endpoint: &ClickHouseAccess, health: &Health) -> ClickHouse {
    let mut backoff = Duration::from_millis(200);
    loop {
        health.tick();
        match ClickHouse::connect(
            endpoint,
            &config.clickhouse.database,
            config.clickhouse.compression,
            config.clickhouse.topology(),
        )
        .await
        {
            Ok(ch) => return ch,
            Err(e) => {
                warn!(error = %e, "clickhouse not reachable yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(config.retry_max_backoff);
            }
        }
    }
}
