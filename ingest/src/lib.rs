//! `sluice-ingest`: captured events in, ClickHouse rows out.
//!
//! A batch flows through [`consume`] (bounded batches, commit after durable writes) →
//! [`process`] (per event: parse, [`resolve`] team, [`normalize`], [`timestamp`]) →
//! [`write`] (ClickHouse) or [`dlq`] (dead letters), then its offsets are committed.
//! [`commands`] are the operator commands of the same binary.

pub mod commands;
pub mod config;
pub mod consume;
pub mod dlq;
pub mod dlq_commands;
pub mod groups;
pub mod normalize;
pub mod persons;
pub mod process;
pub mod resolve;
pub mod restrict;
pub mod rows;
pub mod telemetry;
pub mod timestamp;
pub mod write;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::Consumer;
use rdkafka::producer::FutureProducer;
use rdkafka::Message;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::consume::{BatchLimits, LaneConsumer, ResumeContext};
use crate::dlq::DeadLetters;
use crate::groups::GroupStore;
use crate::persons::PersonStore;
use crate::process::{Deps, Outcome};
use crate::resolve::TeamCache;
use crate::restrict::Restrictions;
use crate::write::ClickHouse;

/// Liveness fails when the consume loop has not gone round for this long.
const LOOP_STALL: Duration = Duration::from_secs(120);

/// What the health endpoints read.
struct Health {
    started: Instant,
    loop_tick_ms: AtomicU64,
    dependencies_ok: AtomicBool,
}

impl Health {
    fn new() -> Self {
        Health { started: Instant::now(), loop_tick_ms: AtomicU64::new(0), dependencies_ok: AtomicBool::new(true) }
    }
    fn tick(&self) {
        self.loop_tick_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    fn live(&self) -> bool {
        let idle =
            (self.started.elapsed().as_millis() as u64).saturating_sub(self.loop_tick_ms.load(Ordering::Relaxed));
        idle < LOOP_STALL.as_millis() as u64
    }
}

/// Consumes the lane until `shutdown` resolves; the batch in flight is finished and
/// committed first.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let lane = config.lane.as_str();
    let metrics = telemetry::metrics_handle();
    let health = Arc::new(Health::new());
    health.tick();
    serve_health(&config, health.clone(), metrics).await?;

    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(config.database_max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy(&config.database_url)?;
    let teams =
        TeamCache::new(pool.clone(), Duration::from_millis(config.team_cache_ttl_ms), config.team_cache_max_entries);
    let persons = PersonStore::new(pool.clone());
    let groups = GroupStore::new(pool);
    let restrictions = Restrictions::parse(&config.restrict_drop_events, &config.restrict_skip_persons);
    let ch = connect_clickhouse(&config, &health).await;
    info!(flavor = ?ch.flavor, database = %ch.database, "clickhouse ready");

    let mut consumer_config = ClientConfig::new();
    if !config.kafka_debug.is_empty() {
        consumer_config.set("debug", &config.kafka_debug);
    }
    let consumer: LaneConsumer = consumer_config
        .set("bootstrap.servers", &config.kafka_hosts)
        .set("group.id", config.group_id())
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("session.timeout.ms", config.kafka_session_timeout_ms.to_string())
        .set("statistics.interval.ms", "5000")
        .create_with_context(ResumeContext::new(config.kafka_resume_rewind_messages))?;
    consumer.subscribe(&[&config.topic()])?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka_hosts)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create()?;
    let dead_letters = DeadLetters::new(producer, config.kafka_dlq_topic.clone(), lane);
    let limits = BatchLimits {
        max_events: config.batch_max_events,
        max_bytes: config.batch_max_bytes,
        max_wait: Duration::from_millis(config.batch_max_wait_ms),
    };
    let max_backoff = Duration::from_millis(config.retry_max_backoff_ms);
    info!(lane, topic = %config.topic(), group = %config.group_id(), "sluice-ingest consuming");

    tokio::pin!(shutdown);
    loop {
        health.tick();
        let batch = tokio::select! {
            b = consume::next_batch(&consumer, &limits) => b,
            _ = &mut shutdown => break,
        };
        let batch = match batch {
            Ok(b) if b.is_empty() => continue,
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "kafka consume error");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let started = Instant::now();
        telemetry::consumed(lane, batch.len());
        // Until this batch is written and committed nothing else is read, so a
        // dependency outage becomes lag and never loss.
        let mut backoff = Duration::from_millis(100);
        loop {
            health.tick();
            let deps = Deps {
                teams: &teams,
                persons: &persons,
                groups: &groups,
                restrictions: &restrictions,
                flavor: ch.flavor,
            };
            match handle_batch(&batch, &deps, &ch, &dead_letters, lane).await {
                Ok(()) => break,
                Err(e) => {
                    health.dependencies_ok.store(false, Ordering::Relaxed);
                    warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "batch not written; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(max_backoff);
                }
            }
        }
        health.dependencies_ok.store(true, Ordering::Relaxed);
        while let Err(e) = consume::commit(&consumer, &batch) {
            warn!(error = %e, "offset commit failed; retrying");
            telemetry::dependency_retry("kafka");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        telemetry::batch(batch.len(), started.elapsed().as_secs_f64());
        debug!(
            events = batch.len(),
            first = ?batch.first().map(|m| (m.partition(), m.offset())),
            last = ?batch.last().map(|m| (m.partition(), m.offset())),
            "batch written and committed"
        );
    }
    info!("sluice-ingest stopped after committing its last batch");
    Ok(())
}

/// Processes every event of the batch, writes the rows and dead letters. Any error
/// means "retry the whole batch": the writes are idempotent.
async fn handle_batch(
    batch: &[rdkafka::message::OwnedMessage],
    deps: &Deps<'_>,
    ch: &ClickHouse,
    dead_letters: &DeadLetters,
    lane: &'static str,
) -> anyhow::Result<()> {
    prefetch_persons(batch, deps).await?;
    let mut events = Vec::with_capacity(batch.len());
    let mut persons = Vec::new();
    let mut distinct_ids = Vec::new();
    let mut groups = Vec::new();
    let mut warnings = Vec::new();
    let mut dead = Vec::new();
    let mut lags = Vec::new();
    for m in batch {
        let outcome = process::process(m.payload().unwrap_or_default(), deps).await.inspect_err(|_| {
            telemetry::dependency_retry("postgres");
        })?;
        match outcome {
            Outcome::Row { event, rows, warnings: w, captured_at } => {
                events.push(event);
                persons.extend(rows.persons);
                distinct_ids.extend(rows.distinct_ids);
                groups.extend(rows.groups);
                warnings.extend(w);
                lags.push(captured_at);
            }
            Outcome::Drop { cause, warnings: w } => {
                telemetry::dropped(cause);
                warnings.extend(w);
            }
            Outcome::Dead(d) => dead.push((m, d)),
        }
    }
    let first = batch.first().map(|m| (m.partition(), m.offset())).unwrap_or_default();
    let token = format!("{lane}-{}-{}-{}", batch[0].topic(), first.0, first.1);
    ch.insert("events", &events, &token).await.inspect_err(|_| telemetry::dependency_retry("clickhouse"))?;
    ch.insert("persons", &persons, &format!("{token}-persons")).await?;
    ch.insert("person_distinct_ids", &distinct_ids, &format!("{token}-distinct-ids")).await?;
    ch.insert("groups", &groups, &format!("{token}-groups")).await?;
    ch.insert("ingestion_warnings", &warnings, &format!("{token}-warnings")).await?;
    for (m, d) in &dead {
        dead_letters.send(m, d, 1).await?;
        telemetry::dead_lettered(d.stage);
    }
    let now = time::OffsetDateTime::now_utc();
    for at in lags {
        telemetry::end_to_end_lag((now - at).as_seconds_f64());
    }
    telemetry::clickhouse_rows("events", events.len());
    telemetry::processed(lane, events.len());
    Ok(())
}

/// Reads the persons of the batch's distinct ids in one query per team, so that events
/// of returning persons cost no round trip of their own.
async fn prefetch_persons(batch: &[rdkafka::message::OwnedMessage], deps: &Deps<'_>) -> anyhow::Result<()> {
    #[derive(serde::Deserialize)]
    struct Key {
        token: String,
        distinct_id: String,
    }
    let mut ids: std::collections::HashMap<i64, Vec<String>> = std::collections::HashMap::new();
    for m in batch {
        // Unparseable messages are the steps' business (dead letters), not this read's.
        let Ok(key) = serde_json::from_slice::<Key>(m.payload().unwrap_or_default()) else { continue };
        if let Some(team) = deps.teams.get(&key.token).await? {
            ids.entry(team.id).or_default().push(key.distinct_id);
        }
    }
    for list in ids.values_mut() {
        list.sort_unstable();
        list.dedup();
    }
    deps.persons.prefetch(&ids).await?;
    Ok(())
}

async fn connect_clickhouse(config: &Config, health: &Health) -> ClickHouse {
    let mut backoff = Duration::from_millis(200);
    loop {
        health.tick();
        match ClickHouse::connect(
            &config.clickhouse_url,
            &config.clickhouse_database,
            Duration::from_millis(config.clickhouse_timeout_ms),
        )
        .await
        {
            Ok(ch) => return ch,
            Err(e) => {
                warn!(error = %e, "clickhouse not reachable yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(config.retry_max_backoff_ms));
            }
        }
    }
}

async fn serve_health(
    config: &Config,
    health: Arc<Health>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
) -> anyhow::Result<()> {
    let app = axum::Router::new()
        .route(
            "/_liveness",
            get(|State(h): State<Arc<Health>>| async move {
                if h.live() {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            }),
        )
        .route(
            "/_readiness",
            get(|State(h): State<Arc<Health>>| async move {
                if h.dependencies_ok.load(Ordering::Relaxed) {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            }),
        )
        .route("/metrics", get(move || std::future::ready(metrics.render())))
        .with_state(health);
    let listener = tokio::net::TcpListener::bind(config.address).await?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(())
}
