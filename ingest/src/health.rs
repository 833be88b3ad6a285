//! `/_liveness`, `/_readiness` and `/metrics`.
//!
//! Liveness is the consume loop going round. Readiness is the dependencies answering:
//! the loop reports a batch it cannot write, and a probe asks each dependency between
//! batches, so an idle lane reports an outage before traffic finds it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, Producer};
use sluice_common::health::{Heartbeat, Probes};
use sqlx::PgPool;
use tracing::{info, warn};

use crate::write::ClickHouse;

/// Liveness fails when the consume loop has not gone round for this long.
const LOOP_STALL: Duration = Duration::from_secs(120);

pub(crate) struct Health {
    consume_loop: Heartbeat,
    batch_failing: AtomicBool,
    probe_failing: AtomicBool,
}

impl Health {
    pub(crate) fn new() -> Arc<Self> {
        let health = Arc::new(Health {
            consume_loop: Heartbeat::default(),
            batch_failing: AtomicBool::new(false),
            probe_failing: AtomicBool::new(false),
        });
        crate::telemetry::ready(health.ready());
        health
    }

    /// The consume loop is alive.
    pub(crate) fn tick(&self) {
        self.consume_loop.tick();
    }

    pub(crate) fn batch_failing(&self, failing: bool) {
        self.batch_failing.store(failing, Ordering::Relaxed);
        crate::telemetry::ready(self.ready());
    }

    /// Dependencies answer and batches succeed.
    pub(crate) fn ready(&self) -> bool {
        self.readiness().is_ok()
    }
}

impl Probes for Health {
    fn liveness(&self) -> Result<(), &'static str> {
        if self.consume_loop.stalled(LOOP_STALL) {
            return Err("consume loop stalled");
        }
        Ok(())
    }

    fn readiness(&self) -> Result<(), &'static str> {
        if self.batch_failing.load(Ordering::Relaxed) {
            return Err("batches cannot be written");
        }
        if self.probe_failing.load(Ordering::Relaxed) {
            return Err("dependencies not answering");
        }
        Ok(())
    }
}

/// Serves the probes and `/metrics` for the process's life: they answer while it drains.
pub(crate) async fn serve(
    address: std::net::SocketAddr,
    health: Arc<Health>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
) -> anyhow::Result<()> {
    let app: axum::Router = sluice_common::health::routes(health, metrics);
    let listener = tokio::net::TcpListener::bind(address).await?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(())
}

/// What the probe asks.
pub(crate) struct Dependencies {
    pub postgres: PgPool,
    pub clickhouse: Arc<ClickHouse>,
    pub kafka: FutureProducer,
}

/// Asks every dependency each `period` (bounded by it) until `stop` changes.
pub(crate) fn spawn_probe(
    health: Arc<Health>,
    deps: Dependencies,
    period: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = sluice_common::every::Every::now(period, stop);
        while every.tick().await {
            let down = probe(&deps, period.max(Duration::from_secs(1))).await;
            let was_failing = health.probe_failing.swap(!down.is_empty(), Ordering::Relaxed);
            crate::telemetry::ready(health.ready());
            match (was_failing, down.is_empty()) {
                (false, false) => warn!(?down, "dependencies not answering; not ready"),
                (true, true) => info!("dependencies answering again; ready"),
                _ => {}
            }
        }
    })
}

async fn probe(deps: &Dependencies, timeout: Duration) -> Vec<&'static str> {
    let postgres = tokio::time::timeout(timeout, sqlx::query("SELECT 1").execute(&deps.postgres));
    let clickhouse = tokio::time::timeout(timeout, deps.clickhouse.query("SELECT 1"));
    let producer = deps.kafka.clone();
    let kafka = tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, timeout).is_ok());
    let (postgres, clickhouse, kafka) = tokio::join!(postgres, clickhouse, kafka);
    let mut down = Vec::new();
    if !matches!(postgres, Ok(Ok(_))) {
        down.push("postgres");
    }
    if !matches!(clickhouse, Ok(Ok(_))) {
        down.push("clickhouse");
    }
    if !matches!(kafka, Ok(true)) {
        down.push("kafka");
    }
    down
}
