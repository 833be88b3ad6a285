//! How both binaries declare their metrics: each one once, with its help text and, for a
//! histogram, buckets chosen for what it measures. Metric names are a contract like topic
//! names: the alert rules and dashboards in `ops/` are written against them.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub enum Kind {
    Counter,
    Gauge,
    /// A Prometheus histogram with these bucket bounds, so it sums across replicas.
    Histogram(&'static [f64]),
}

/// One metric: name, kind, help text.
pub type Metric = (&'static str, Kind, &'static str);

/// Installs the Prometheus recorder for `metrics` (once per process: call it from a
/// `OnceLock`) and returns the handle `/metrics` renders.
pub fn install(metrics: &[Metric]) -> PrometheusHandle {
    let mut builder = PrometheusBuilder::new();
    for (name, kind, _) in metrics {
        if let Kind::Histogram(buckets) = kind {
            builder = builder
                .set_buckets_for_metric(Matcher::Full(name.to_string()), buckets)
                .expect("bucket lists are non-empty");
        }
    }
    let handle = builder.install_recorder().expect("the metrics recorder is installed once");
    for (name, kind, help) in metrics {
        match kind {
            Kind::Counter => metrics::describe_counter!(*name, *help),
            Kind::Gauge => metrics::describe_gauge!(*name, *help),
            Kind::Histogram(_) => metrics::describe_histogram!(*name, *help),
        }
    }
    handle
}
