//! Every metric and the log setup, in one place so names and labels stay consistent.
//! Code elsewhere calls these functions; no metric name is written inline.

use std::sync::OnceLock;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::config::LogFormat;
use crate::overflow::OverflowReason;
use crate::request::Route;
use crate::route::Lane;

const REQUESTS: &str = "capture_requests_total";
const REQUEST_DURATION: &str = "capture_request_duration_seconds";
const EVENTS_RECEIVED: &str = "capture_events_received_total";
const EVENTS_INGESTED: &str = "capture_events_ingested_total";
const EVENTS_DROPPED: &str = "capture_events_dropped_total";
const PAYLOAD_BYTES: &str = "capture_payload_bytes";
const DECOMPRESSION_RATIO: &str = "capture_decompression_ratio";
const OVERFLOW_REROUTES: &str = "capture_overflow_reroutes_total";
const PRODUCER_QUEUE_MESSAGES: &str = "capture_producer_queue_messages";
const PRODUCER_QUEUE_BYTES: &str = "capture_producer_queue_bytes";
const BROKER_UP: &str = "capture_kafka_broker_up";
const PRODUCER_RECREATED: &str = "capture_producer_recreated_total";
const REDIS_REFRESHES: &str = "capture_redis_refreshes_total";

/// Installs the Prometheus recorder once per process and returns its handle.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(REQUEST_DURATION.into()),
                    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(PAYLOAD_BYTES.into()),
                        &[256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0],
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(DECOMPRESSION_RATIO.into()),
                        &[1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0],
                    )
                })
                .expect("bucket lists are non-empty")
                .install_recorder()
                .expect("the metrics recorder is installed once")
        })
        .clone()
}

pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

pub fn request_done(route: Route, status: u16, seconds: f64) {
    counter!(REQUESTS, "route" => route.as_str(), "status" => status.to_string()).increment(1);
    histogram!(REQUEST_DURATION, "route" => route.as_str()).record(seconds);
}

pub fn payload(route: Route, received_bytes: usize, decoded_bytes: usize) {
    histogram!(PAYLOAD_BYTES, "route" => route.as_str()).record(received_bytes as f64);
    if received_bytes > 0 {
        histogram!(DECOMPRESSION_RATIO, "route" => route.as_str()).record(decoded_bytes as f64 / received_bytes as f64);
    }
}

pub fn events_received(route: Route, count: usize) {
    counter!(EVENTS_RECEIVED, "route" => route.as_str()).increment(count as u64);
}

pub fn events_ingested(lane: Lane, count: usize) {
    counter!(EVENTS_INGESTED, "lane" => lane.as_str()).increment(count as u64);
}

/// Every event capture does not send on is counted here, with why.
pub fn events_dropped(cause: &'static str, count: usize) {
    counter!(EVENTS_DROPPED, "cause" => cause).increment(count as u64);
}

pub fn overflow_reroute(reason: OverflowReason) {
    counter!(OVERFLOW_REROUTES, "reason" => reason.as_str()).increment(1);
}

pub fn producer_stats(queue_messages: u64, queue_bytes: u64) {
    gauge!(PRODUCER_QUEUE_MESSAGES).set(queue_messages as f64);
    gauge!(PRODUCER_QUEUE_BYTES).set(queue_bytes as f64);
}

pub fn broker_up(up: bool) {
    gauge!(BROKER_UP).set(if up { 1.0 } else { 0.0 });
}

pub fn redis_refresh(ok: bool) {
    counter!(REDIS_REFRESHES, "outcome" => if ok { "ok" } else { "error" }).increment(1);
}

pub fn producer_recreated() {
    counter!(PRODUCER_RECREATED).increment(1);
}
