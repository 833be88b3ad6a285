//! The orchestrator's probes and Prometheus's scrape, answered alike by both binaries:
//! `/_liveness` and `/_readiness` say `ok` (200) or why not (503), `/metrics` is the text
//! format. What "live" and "ready" mean is each binary's own ([`Probes`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

pub trait Probes: Send + Sync + 'static {
    /// Why the process is not live, if it is not: the orchestrator restarts it.
    fn liveness(&self) -> Result<(), &'static str>;
    /// Why the process should not get traffic, if it should not.
    fn readiness(&self) -> Result<(), &'static str>;
}

pub const LIVENESS: &str = "/_liveness";
pub const READINESS: &str = "/_readiness";
pub const METRICS: &str = "/metrics";
/// The paths [`routes`] serves, each GET only, for a binary that lists its routes.
pub const PATHS: [&str; 3] = [LIVENESS, READINESS, METRICS];

/// The three routes, to serve alone (ingest) or beside the event routes (capture).
pub fn routes<S: Clone + Send + Sync + 'static>(probes: Arc<dyn Probes>, metrics: PrometheusHandle) -> axum::Router<S> {
    let live = probes.clone();
    axum::Router::new()
        .route(LIVENESS, get(move || std::future::ready(answer(live.liveness()))))
        .route(READINESS, get(move || std::future::ready(answer(probes.readiness()))))
        .route(
            METRICS,
            get(move || std::future::ready(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics.render()))),
        )
}

fn answer(probe: Result<(), &'static str>) -> Response {
    match probe {
        Ok(()) => (StatusCode::OK, "ok").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
}

/// A loop's sign of progress: it ticks each time round, and a tick older than the stall
/// limit means the loop is wedged.
pub struct Heartbeat {
    epoch: Instant,
    last_ms: AtomicU64,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat { epoch: Instant::now(), last_ms: AtomicU64::new(0) }
    }
}

impl Heartbeat {
    pub fn tick(&self) {
        self.last_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// No tick for longer than `after` (counting from creation if none yet).
    pub fn stalled(&self, after: Duration) -> bool {
        let idle = (self.epoch.elapsed().as_millis() as u64).saturating_sub(self.last_ms.load(Ordering::Relaxed));
        idle > after.as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_stalls_without_ticks() {
        let beat = Heartbeat::default();
        assert!(!beat.stalled(Duration::from_millis(20)));
        std::thread::sleep(Duration::from_millis(30));
        assert!(beat.stalled(Duration::from_millis(20)));
        beat.tick();
        assert!(!beat.stalled(Duration::from_millis(20)));
    }
}
