//! Every metric of ingest, and the log setup. Each metric is declared once, in
//! [`METRICS`], with its help text and, for histograms, buckets chosen for what it
//! measures; the functions below are the only places that record them.

use std::sync::OnceLock;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::PrometheusHandle;
use sluice_schema::metrics::{Kind, Metric};

const EVENTS_CONSUMED: &str = "ingest_events_consumed_total";
const EVENTS_PROCESSED: &str = "ingest_events_processed_total";
const EVENTS_DROPPED: &str = "ingest_events_dropped_total";
const EVENTS_DEAD_LETTERED: &str = "ingest_events_dead_lettered_total";
const CONSUME_ERRORS: &str = "ingest_kafka_consume_errors_total";
const REREAD: &str = "ingest_kafka_reread_messages_total";
const OFFSET_GAPS: &str = "ingest_kafka_offset_gaps_total";
const COMMITS_ABANDONED: &str = "ingest_kafka_commits_abandoned_total";
const CONSUMER_LAG: &str = "ingest_consumer_lag_messages";
const GROUP_REJOINS: &str = "ingest_group_rejoins_total";
const BATCH_EVENTS: &str = "ingest_batch_events";
const BATCH_DURATION: &str = "ingest_batch_duration_seconds";
const END_TO_END_LAG: &str = "ingest_end_to_end_lag_seconds";
const STEP_DURATION: &str = "ingest_step_duration_seconds";
const DEPENDENCY_RETRIES: &str = "ingest_dependency_retries_total";
const READY: &str = "ingest_ready";
const CLICKHOUSE_ROWS: &str = "ingest_clickhouse_rows_total";
const CLICKHOUSE_REFUSED: &str = "ingest_clickhouse_refused_rows_total";
const CLICKHOUSE_TEXT_INSERTS: &str = "ingest_clickhouse_text_inserts_total";
const PERSON_WRITES: &str = "ingest_person_writes_total";
const PLUGIN_CALLS: &str = "ingest_plugin_calls_total";
const PLUGIN_ERRORS: &str = "ingest_plugin_errors_total";
const PLUGIN_STATE_CHANGES: &str = "ingest_plugin_state_changes_total";
const PLUGIN_BATCH_DURATION: &str = "ingest_plugin_batch_duration_seconds";
const EXPORTS_PUBLISHED: &str = "ingest_exports_published_total";
const PLUGIN_CAPTURED: &str = "ingest_plugin_captured_events_total";
const PLUGIN_JOBS: &str = "ingest_plugin_jobs_total";
const EXPORTS: &str = "ingest_exports_total";
const EXPORTS_PENDING: &str = "ingest_exports_pending_messages";

/// Seconds, from a millisecond to an hour: batches and steps are milliseconds, lag after
/// an outage is minutes.
const SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, 3600.0,
];
/// End-to-end lag: 0.1 s apart up to 1.5 s, where the target (p99 under a second) and
/// the batch wait live, so a quantile interpolated within a bucket is off by under 10%
/// there; then coarser up to an hour, for outages.
const LAG_SECONDS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 2.0, 2.5, 3.0, 5.0,
    10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];
/// Events in a batch, up to BATCH_MAX_EVENTS' order of magnitude.
const EVENTS: &[f64] = &[1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0];

/// Every metric: name, kind, help.
const METRICS: &[Metric] = &[
    (EVENTS_CONSUMED, Kind::Counter, "Events read from Kafka, by lane."),
    (EVENTS_PROCESSED, Kind::Counter, "Events written to ClickHouse, by lane."),
    (EVENTS_DROPPED, Kind::Counter, "Events deliberately not written (unknown token, restriction, plugin), by cause."),
    (EVENTS_DEAD_LETTERED, Kind::Counter, "Events sent to the dead-letter topic, by the stage that failed them."),
    (CONSUME_ERRORS, Kind::Counter, "Errors librdkafka reported while reading."),
    (REREAD, Kind::Counter, "Messages read again after seeking back and skipped as already processed, by lane."),
    (OFFSET_GAPS, Kind::Counter, "Jumps in a partition's offsets, by lane and what was done about them."),
    (COMMITS_ABANDONED, Kind::Counter, "Offset commits given up; the next commit of the partitions covers them."),
    (
        CONSUMER_LAG,
        Kind::Gauge,
        "Messages between the consumer's position and the partition's end, by lane, topic and partition.",
    ),
    (
        GROUP_REJOINS,
        Kind::Counter,
        "Times this process rejoined its consumer group because a partition had messages and no commit \
         while it was ready (KAFKA_STALLED_PARTITION_REJOIN_MS), by lane.",
    ),
    (BATCH_EVENTS, Kind::Histogram(EVENTS), "Events in each batch."),
    (BATCH_DURATION, Kind::Histogram(SECONDS), "Time to process, write and commit one batch."),
    (END_TO_END_LAG, Kind::Histogram(LAG_SECONDS), "Time from capture receiving an event to ingest writing it."),
    (STEP_DURATION, Kind::Histogram(SECONDS), "Time one batch spent in each step of the path."),
    (DEPENDENCY_RETRIES, Kind::Counter, "Batches retried because a dependency failed, by dependency."),
    (READY, Kind::Gauge, "1 while the lane can make progress (dependencies answer, batches succeed), else 0."),
    (CLICKHOUSE_ROWS, Kind::Counter, "Rows written to ClickHouse, by table."),
    (
        CLICKHOUSE_REFUSED,
        Kind::Counter,
        "Rows ClickHouse refused for their data (their events are dead-lettered), by table.",
    ),
    (
        CLICKHOUSE_TEXT_INSERTS,
        Kind::Counter,
        "Inserts sent as JSONEachRow instead of RowBinary because the table's columns are not the types ingest \
         writes (changed by an operator), by table.",
    ),
    (PERSON_WRITES, Kind::Counter, "Person-side writes to Postgres, by kind."),
    (
        PLUGIN_CALLS,
        Kind::Counter,
        "Events given to a plugin configuration's process_event, by plugin configuration id.",
    ),
    (
        PLUGIN_ERRORS,
        Kind::Counter,
        "Failed plugin calls, by plugin configuration id, kind of failure (the limit hit: timeout, ticks, memory; \
         a strike: watchdog, hang, crash; or error, invalid_event, compile, retry) and hook.",
    ),
    (
        PLUGIN_STATE_CHANGES,
        Kind::Counter,
        "Plugin configurations that became degraded or disabled, by the new status and the kind of failure that \
         made it so.",
    ),
    (PLUGIN_BATCH_DURATION, Kind::Histogram(SECONDS), "Time one plugin configuration spent on one batch."),
    (EXPORTS_PUBLISHED, Kind::Counter, "Written events an event lane published to the exports topic."),
    (PLUGIN_CAPTURED, Kind::Counter, "Events plugins sent with ctx.capture, produced to the ingestion topic."),
    (PLUGIN_JOBS, Kind::Counter, "Plugin job runs, by outcome: done, or failed (retried later or kept as failed)."),
    (
        EXPORTS,
        Kind::Counter,
        "Events in export deliveries, by hook and outcome: delivered, retried (a retry scheduled), gave_up (in the \
         exports dead-letter topic).",
    ),
    (EXPORTS_PENDING, Kind::Gauge, "Events the exports lane read and not every plugin has finished yet."),
];

pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| sluice_schema::metrics::install(METRICS)).clone()
}

pub fn consumed(lane: &'static str, n: usize) {
    counter!(EVENTS_CONSUMED, "lane" => lane).increment(n as u64);
}

pub fn processed(lane: &'static str, n: usize) {
    counter!(EVENTS_PROCESSED, "lane" => lane).increment(n as u64);
}

pub fn dropped(cause: &'static str) {
    counter!(EVENTS_DROPPED, "cause" => cause).increment(1);
}

pub fn dead_lettered(stage: &'static str) {
    counter!(EVENTS_DEAD_LETTERED, "stage" => stage).increment(1);
}

/// A consumer error reported by librdkafka while reading.
pub fn consume_error() {
    counter!(CONSUME_ERRORS).increment(1);
}

/// A message read again after seeking back, skipped because it was processed before.
pub fn reread(lane: &'static str) {
    counter!(REREAD, "lane" => lane).increment(1);
}

/// A jump in a partition's offsets, by what was done: `sought_back` (messages the broker
/// did not hand over, looked for again), `absent` (offsets that do not exist in the
/// log), `log_reset` (the log ends before the committed offset).
pub fn offset_gap(lane: &'static str, outcome: &'static str) {
    counter!(OFFSET_GAPS, "lane" => lane, "outcome" => outcome).increment(1);
}

/// A commit that was given up: the next commit of the same partitions covers it.
pub fn commit_abandoned() {
    counter!(COMMITS_ABANDONED).increment(1);
}

pub fn batch(size: usize, seconds: f64) {
    histogram!(BATCH_EVENTS).record(size as f64);
    histogram!(BATCH_DURATION).record(seconds);
}

/// Each written event's time from capture to its row, one handle for the batch (a
/// registry lookup per event was a measurable part of a returning person's cost).
pub fn end_to_end_lags(seconds: impl Iterator<Item = f64>) {
    let lag = histogram!(END_TO_END_LAG);
    for s in seconds {
        lag.record(s);
    }
}

pub fn dependency_retry(dependency: &'static str) {
    counter!(DEPENDENCY_RETRIES, "dependency" => dependency).increment(1);
}

pub fn clickhouse_rows(table: &'static str, n: usize) {
    counter!(CLICKHOUSE_ROWS, "table" => table).increment(n as u64);
}

/// A row ClickHouse refused for its data; its event went to the dead letters.
pub fn clickhouse_refused(table: &'static str, n: usize) {
    counter!(CLICKHOUSE_REFUSED, "table" => table).increment(n as u64);
}

/// An insert that went as `JSONEachRow`: its table's columns are not the rows' types.
pub fn clickhouse_text_insert(table: &'static str) {
    counter!(CLICKHOUSE_TEXT_INSERTS, "table" => table).increment(1);
}

pub fn consumer_lag(lane: &'static str, topic: &str, partition: i32, lag: i64) {
    gauge!(CONSUMER_LAG, "lane" => lane, "topic" => topic.to_string(), "partition" => partition.to_string())
        .set(lag as f64);
}

/// A rejoin asked for because a partition of the lane's topic was consumed by no one.
pub fn group_rejoin(lane: &'static str) {
    counter!(GROUP_REJOINS, "lane" => lane).increment(1);
}

/// Records the time since `started` as one batch's (or one plugin call's) time in
/// `step`, and returns now, where a next step starts. Timed per batch: a clock read and
/// a registry lookup per event cost more than the steps they timed.
pub fn step(step: &'static str, started: std::time::Instant) -> std::time::Instant {
    let now = std::time::Instant::now();
    histogram!(STEP_DURATION, "step" => step).record((now - started).as_secs_f64());
    now
}

/// Person-side writes by kind: `person_rows`, `distinct_id_rows`, `merges`.
pub fn person_writes(kind: &'static str, n: usize) {
    // Most events write nothing: no lookup for them.
    if n > 0 {
        counter!(PERSON_WRITES, "kind" => kind).increment(n as u64);
    }
}

/// Events given to a plugin instance's `process_event`.
pub fn plugin_calls(plugin_config: i64, n: usize) {
    counter!(PLUGIN_CALLS, "plugin_config" => plugin_config.to_string()).increment(n as u64);
}

/// A failed plugin call: the hook (`setup`, `process_event`, `on_event`, a schedule) and
/// the kind, a limit (`timeout`, `ticks`, `memory`), a strike (`watchdog`, `hang`,
/// `crash`) or another failure (`error`, `invalid_event`, `compile`, `retry`).
pub fn plugin_error(plugin_config: i64, hook: &'static str, kind: &'static str) {
    let id = plugin_config.to_string();
    counter!(PLUGIN_ERRORS, "plugin_config" => id, "kind" => kind, "hook" => hook).increment(1);
}

/// Events a plugin configuration sent with `ctx.capture`.
pub fn plugin_captured(plugin_config: i64, n: usize) {
    counter!(PLUGIN_CAPTURED, "plugin_config" => plugin_config.to_string()).increment(n as u64);
}

/// One run of a plugin's job: `done` or `failed`.
pub fn plugin_job(outcome: &'static str) {
    counter!(PLUGIN_JOBS, "outcome" => outcome).increment(1);
}

/// Written events published to the exports topic.
pub fn exports_published(n: usize) {
    counter!(EXPORTS_PUBLISHED).increment(n as u64);
}

/// Events of a delivery by what came of them: `delivered`, `retried` or `gave_up`.
pub fn exports(hook: &'static str, outcome: &'static str, n: usize) {
    counter!(EXPORTS, "hook" => hook, "outcome" => outcome).increment(n as u64);
}

pub fn exports_pending(events: usize) {
    gauge!(EXPORTS_PENDING).set(events as f64);
}

/// Time one plugin instance spent on one batch.
pub fn plugin_duration(plugin_config: i64, seconds: f64) {
    histogram!(PLUGIN_BATCH_DURATION, "plugin_config" => plugin_config.to_string()).record(seconds);
}

/// Whether the lane can make progress, as readiness reports it.
pub fn ready(ready: bool) {
    gauge!(READY).set(if ready { 1.0 } else { 0.0 });
}

/// A plugin configuration that became `degraded` or `disabled`, and the kind of failure
/// that made it so (as [`plugin_error`]'s).
pub fn plugin_state_changed(status: &'static str, cause: &'static str) {
    counter!(PLUGIN_STATE_CHANGES, "status" => status, "cause" => cause).increment(1);
}

/// Creates the counters whose labels are known in advance at zero: an alert on
/// `increase()` sees the first dead letter only if the series existed before it, and a
/// lane that has processed nothing yet shows 0 rather than nothing.
pub fn register(lane: &'static str) {
    counter!(EVENTS_CONSUMED, "lane" => lane).increment(0);
    counter!(EVENTS_PROCESSED, "lane" => lane).increment(0);
    counter!(GROUP_REJOINS, "lane" => lane).increment(0);
    // The stages that dead-letter (batch parsing, plugins, the ClickHouse write).
    for stage in ["parse", "plugins", "write"] {
        counter!(EVENTS_DEAD_LETTERED, "stage" => stage).increment(0);
    }
    for dependency in ["postgres", "clickhouse", "kafka", "redis"] {
        counter!(DEPENDENCY_RETRIES, "dependency" => dependency).increment(0);
    }
    for status in ["degraded", "disabled"] {
        for cause in ["timeout", "ticks", "memory", "watchdog", "hang", "crash", "error"] {
            counter!(PLUGIN_STATE_CHANGES, "status" => status, "cause" => cause).increment(0);
        }
    }
    counter!(CONSUME_ERRORS).increment(0);
    counter!(COMMITS_ABANDONED).increment(0);
    counter!(EXPORTS_PUBLISHED).increment(0);
    for hook in ["on_event", "export_events"] {
        for outcome in ["delivered", "retried", "gave_up"] {
            counter!(EXPORTS, "hook" => hook, "outcome" => outcome).increment(0);
        }
    }
}
