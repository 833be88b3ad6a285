//! What `sluice-capture` and `sluice-ingest` each need and must do alike: one way to log,
//! to hear the orchestrator's stop, to run a background task every period, to read the
//! operator's Redis lists, and to answer the orchestrator's probes and Prometheus.

pub mod every;
pub mod expiring;
pub mod health;
pub mod logging;
pub mod settings;
pub mod shutdown;
