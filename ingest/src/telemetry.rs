//! Every metric of ingest, and the log setup.

use std::sync::OnceLock;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::config::LogFormat;

pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| PrometheusBuilder::new().install_recorder().expect("recorder installs once")).clone()
}

pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

pub fn consumed(lane: &'static str, n: usize) {
    counter!("ingest_events_consumed_total", "lane" => lane).increment(n as u64);
}

pub fn processed(lane: &'static str, n: usize) {
    counter!("ingest_events_processed_total", "lane" => lane).increment(n as u64);
}

pub fn dropped(cause: &'static str) {
    counter!("ingest_events_dropped_total", "cause" => cause).increment(1);
}

pub fn dead_lettered(stage: &'static str) {
    counter!("ingest_events_dead_lettered_total", "stage" => stage).increment(1);
}

/// A consumer error reported by librdkafka while reading.
pub fn consume_error() {
    counter!("ingest_kafka_consume_errors_total").increment(1);
}

/// A message read again after seeking back, skipped because it was processed before.
pub fn reread(lane: &'static str) {
    counter!("ingest_kafka_reread_messages_total", "lane" => lane).increment(1);
}

/// A jump in a partition's offsets, by what was done: `sought_back` (messages the broker
/// did not hand over, looked for again), `absent` (offsets that do not exist in the
/// log), `log_reset` (the log ends before the committed offset).
pub fn offset_gap(lane: &'static str, outcome: &'static str) {
    counter!("ingest_kafka_offset_gaps_total", "lane" => lane, "outcome" => outcome).increment(1);
}

/// A commit that was given up: the next commit of the same partitions covers it.
pub fn commit_abandoned() {
    counter!("ingest_kafka_commits_abandoned_total").increment(1);
}

pub fn batch(size: usize, seconds: f64) {
    histogram!("ingest_batch_size").record(size as f64);
    histogram!("ingest_batch_duration_seconds").record(seconds);
}

pub fn end_to_end_lag(seconds: f64) {
    histogram!("ingest_end_to_end_lag_seconds").record(seconds);
}

pub fn dependency_retry(dependency: &'static str) {
    counter!("ingest_dependency_retries_total", "dependency" => dependency).increment(1);
}

pub fn clickhouse_rows(table: &'static str, n: usize) {
    counter!("ingest_clickhouse_rows_total", "table" => table).increment(n as u64);
}

/// A row ClickHouse refused for its data; its event went to the dead letters.
pub fn clickhouse_refused(table: &'static str) {
    counter!("ingest_clickhouse_refused_rows_total", "table" => table).increment(1);
}

pub fn consumer_lag(topic: &str, partition: i32, lag: i64) {
    gauge!("ingest_consumer_lag", "topic" => topic.to_string(), "partition" => partition.to_string()).set(lag as f64);
}

/// Time spent in one per-event step.
pub fn step(step: &'static str, seconds: f64) {
    histogram!("ingest_step_duration_seconds", "step" => step).record(seconds);
}

/// Person-side writes by kind: `person_rows`, `distinct_id_rows`, `merges`.
pub fn person_writes(kind: &'static str, n: usize) {
    counter!("ingest_person_writes_total", "kind" => kind).increment(n as u64);
}

/// Events given to a plugin instance's `process_event`.
pub fn plugin_calls(plugin_config: i64, n: usize) {
    counter!("ingest_plugin_calls_total", "plugin_config" => plugin_config.to_string()).increment(n as u64);
}

/// A failed plugin call by kind: `error`, `timeout`, `ticks`, `memory`, `crash`, `setup`.
pub fn plugin_error(plugin_config: i64, kind: &'static str) {
    counter!("ingest_plugin_errors_total", "plugin_config" => plugin_config.to_string(), "kind" => kind).increment(1);
}

/// Written events whose on_event exports were dropped (queue full).
pub fn on_event_dropped(n: usize) {
    counter!("ingest_plugin_on_event_dropped_total").increment(n as u64);
}

/// Time one plugin instance spent on one batch.
pub fn plugin_duration(plugin_config: i64, seconds: f64) {
    histogram!("ingest_plugin_batch_duration_seconds", "plugin_config" => plugin_config.to_string()).record(seconds);
}
