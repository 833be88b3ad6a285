//! Every metric and the log setup, in one place so names and labels stay consistent.
//! Code elsewhere calls these functions; no metric name is written inline.

use std::sync::OnceLock;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::PrometheusHandle;
use sluice_schema::metrics::{Kind, Metric};

const REQUESTS: &str = "capture_requests_total";
const SDK_CONFIG_REQUESTS: &str = "capture_sdk_config_requests_total";
const SDK_CONFIG_LOOKUPS: &str = "capture_sdk_config_lookups_total";
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

/// Seconds, from a millisecond (a request answered from memory) to 10 s (one that
/// waited for Kafka through a broker failover).
const SECONDS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Bytes, from a single small event to the largest batch body.
const BYTES: &[f64] = &[256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0];
/// Decoded size over received size.
const RATIO: &[f64] = &[1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0];

/// Every metric: name, kind, help.
const METRICS: &[Metric] = &[
    (REQUESTS, Kind::Counter, "HTTP requests answered, by route and status code."),
    (
        SDK_CONFIG_REQUESTS,
        Kind::Counter,
        "SDK configuration requests (config, config_js, flags, decide), by what answered them: the team's \
         settings, the defaults (settings not read yet) or unknown_token.",
    ),
    (
        SDK_CONFIG_LOOKUPS,
        Kind::Counter,
        "Tokens not in the last read of the teams, looked up on demand, by outcome: found, unknown, \
         cached_unknown (refused from the short negative cache, no query), busy (every lookup slot \
         taken) or failed.",
    ),
    (
        REQUEST_DURATION,
        Kind::Histogram(SECONDS),
        "Time from a request's arrival to its answer, Kafka's acknowledgement included, by route.",
    ),
    (EVENTS_RECEIVED, Kind::Counter, "Events parsed from requests, by route."),
    (EVENTS_INGESTED, Kind::Counter, "Events Kafka acknowledged, by the lane they were written to."),
    (EVENTS_DROPPED, Kind::Counter, "Events not written, by cause."),
    (PAYLOAD_BYTES, Kind::Histogram(BYTES), "Request bodies as received, by route."),
    (DECOMPRESSION_RATIO, Kind::Histogram(RATIO), "Decoded size over received size of compressed bodies, by route."),
    (OVERFLOW_REROUTES, Kind::Counter, "Events sent to the overflow lane instead of the main one, by reason."),
    (PRODUCER_QUEUE_MESSAGES, Kind::Gauge, "Messages in the Kafka producer's queue, not yet acknowledged."),
    (PRODUCER_QUEUE_BYTES, Kind::Gauge, "Bytes in the Kafka producer's queue, not yet acknowledged."),
    (BROKER_UP, Kind::Gauge, "1 while the Kafka brokers answer capture's probe, else 0 (readiness follows it)."),
    (
        PRODUCER_RECREATED,
        Kind::Counter,
        "Kafka producers recreated after a fatal error or repeated unacknowledged requests.",
    ),
    (REDIS_REFRESHES, Kind::Counter, "Refreshes of the Redis lists (quotas, forced overflow), by outcome."),
];

/// Installs the Prometheus recorder once per process and returns its handle.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| sluice_schema::metrics::install(METRICS)).clone()
}

/// A configuration request of the SDK (`config`, `config_js`, `flags`, `decide`), by what
/// it was answered from: `team`, `defaults` (settings not read yet) or `unknown_token`.
pub fn sdk_config_request(endpoint: &'static str, outcome: &'static str) {
    counter!(SDK_CONFIG_REQUESTS, "endpoint" => endpoint, "outcome" => outcome).increment(1);
}

/// An on-demand lookup of a token the last read of the teams did not have.
pub fn sdk_config_lookup(outcome: &'static str) {
    counter!(SDK_CONFIG_LOOKUPS, "outcome" => outcome).increment(1);
}

// Labels are plain values, so that this module depends on no stage and every stage may
// count through it.

pub fn request_done(route: &'static str, status: u16, seconds: f64) {
    counter!(REQUESTS, "route" => route, "status" => status.to_string()).increment(1);
    histogram!(REQUEST_DURATION, "route" => route).record(seconds);
}

pub fn payload(route: &'static str, received_bytes: usize, decoded_bytes: usize) {
    histogram!(PAYLOAD_BYTES, "route" => route).record(received_bytes as f64);
    if received_bytes > 0 {
        histogram!(DECOMPRESSION_RATIO, "route" => route).record(decoded_bytes as f64 / received_bytes as f64);
    }
}

pub fn events_received(route: &'static str, count: usize) {
    counter!(EVENTS_RECEIVED, "route" => route).increment(count as u64);
}

pub fn events_ingested(lane: &'static str, count: usize) {
    counter!(EVENTS_INGESTED, "lane" => lane).increment(count as u64);
}

/// Every event capture does not send on is counted here, with why.
pub fn events_dropped(cause: &'static str, count: usize) {
    counter!(EVENTS_DROPPED, "cause" => cause).increment(count as u64);
}

pub fn overflow_reroute(reason: &'static str) {
    counter!(OVERFLOW_REROUTES, "reason" => reason).increment(1);
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

/// Creates the counters whose labels are known in advance at zero, so the first drop or
/// reroute is seen by `increase()` and dashboards show 0 rather than nothing.
/// `overflow_reasons`: every reason the overflow stage names.
pub fn register(overflow_reasons: &[&'static str]) {
    for cause in ["quota_limited", "quota_limited_recordings"] {
        counter!(EVENTS_DROPPED, "cause" => cause).increment(0);
    }
    for reason in overflow_reasons {
        counter!(OVERFLOW_REROUTES, "reason" => *reason).increment(0);
    }
    counter!(PRODUCER_RECREATED).increment(0);
    for outcome in ["found", "unknown", "cached_unknown", "busy", "failed"] {
        counter!(SDK_CONFIG_LOOKUPS, "outcome" => outcome).increment(0);
    }
    for endpoint in ["config", "config_js", "flags", "decide"] {
        for outcome in ["team", "defaults", "unknown_token"] {
            counter!(SDK_CONFIG_REQUESTS, "endpoint" => endpoint, "outcome" => outcome).increment(0);
        }
    }
}
