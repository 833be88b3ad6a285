"""Generates Sluice's Grafana dashboards (ops/grafana/*.json) from the panels below.

    python3 ops/grafana/generate.py          # rewrite the JSON files
    python3 ops/grafana/generate.py --check  # fail if they differ from what this makes

Every query names metrics both binaries export; tests/tests/observability.rs checks each
name against the /metrics of running binaries.
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def panel(title, exprs, unit="short", legend="{{lane}}", kind="timeseries"):
    """One panel; `exprs` is a list of (expr, legend) or plain exprs."""
    targets = []
    for i, e in enumerate(exprs):
        expr, fmt = e if isinstance(e, tuple) else (e, legend)
        targets.append({"refId": chr(65 + i), "expr": expr, "legendFormat": fmt, "datasource": DATASOURCE})
    return {"type": kind, "title": title, "datasource": DATASOURCE, "targets": targets,
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []}, "options": {}}


def dashboard(uid, title, rows):
    panels, y = [], 0
    for row in rows:
        width = 24 // len(row)
        for x, p in enumerate(row):
            p = dict(p, id=len(panels) + 1, gridPos={"h": 8, "w": width, "x": x * width, "y": y})
            panels.append(p)
        y += 8
    return {
        "uid": uid, "title": title, "tags": ["sluice"], "timezone": "utc", "schemaVersion": 39,
        "refresh": "30s", "time": {"from": "now-6h", "to": "now"}, "editable": True,
        "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus",
                                 "label": "Prometheus"}]},
        "panels": panels,
    }


RATE = "[$__rate_interval]"

OVERVIEW = dashboard("sluice-overview", "Sluice / Overview", [
    [panel("Events in (capture, acknowledged by Kafka) per lane",
           [f"sum by (lane) (rate(capture_events_ingested_total{RATE}))"], "ops"),
     panel("Events out (ingest, written to ClickHouse) per lane",
           [f"sum by (lane) (rate(ingest_events_processed_total{RATE}))"], "ops")],
    [panel("Consumer lag per lane (messages)", ["sum by (lane) (ingest_consumer_lag_messages)"]),
     panel("End-to-end lag p50 / p99",
           [(f"histogram_quantile(0.5, sum by (le) (rate(ingest_end_to_end_lag_seconds_bucket{RATE})))", "p50"),
            (f"histogram_quantile(0.99, sum by (le) (rate(ingest_end_to_end_lag_seconds_bucket{RATE})))", "p99")], "s")],
    [panel("Dead letters per stage", [f"sum by (stage) (increase(ingest_events_dead_lettered_total{RATE}))"],
           legend="{{stage}}"),
     panel("Dropped events per cause",
           [(f"sum by (cause) (rate(capture_events_dropped_total{RATE}))", "capture {{cause}}"),
            (f"sum by (cause) (rate(ingest_events_dropped_total{RATE}))", "ingest {{cause}}")], "ops"),
     panel("Capture 5xx ratio",
           [(f'sum(rate(capture_requests_total{{status=~"5.."}}{RATE})) / sum(rate(capture_requests_total{RATE}))',
             "5xx")], "percentunit")],
    [panel("Ready", [("min by (instance) (ingest_ready)", "ingest {{instance}}"),
                     ("min by (instance) (capture_kafka_broker_up)", "capture {{instance}}")])],
])

CAPTURE = dashboard("sluice-capture", "Sluice / Capture", [
    [panel("Requests per status", [f"sum by (status) (rate(capture_requests_total{RATE}))"], "reqps",
           legend="{{status}}"),
     panel("Request latency p50 / p99 per route",
           [(f"histogram_quantile(0.5, sum by (le, route) (rate(capture_request_duration_seconds_bucket{RATE})))",
             "p50 {{route}}"),
            (f"histogram_quantile(0.99, sum by (le, route) (rate(capture_request_duration_seconds_bucket{RATE})))",
             "p99 {{route}}")], "s")],
    [panel("Events received per route", [f"sum by (route) (rate(capture_events_received_total{RATE}))"], "ops",
           legend="{{route}}"),
     panel("Body size p50 / p99",
           [(f"histogram_quantile(0.5, sum by (le) (rate(capture_payload_bytes_bucket{RATE})))", "p50"),
            (f"histogram_quantile(0.99, sum by (le) (rate(capture_payload_bytes_bucket{RATE})))", "p99")], "bytes")],
    [panel("Producer queue", [("sum(capture_producer_queue_messages)", "messages")]),
     panel("Producer queue bytes", [("sum(capture_producer_queue_bytes)", "bytes")], "bytes"),
     panel("Broker up per instance", [("capture_kafka_broker_up", "{{instance}}")])],
    [panel("Overflow reroutes per reason", [f"sum by (reason) (rate(capture_overflow_reroutes_total{RATE}))"],
           "ops", legend="{{reason}}"),
     panel("Redis list refreshes per outcome", [f"sum by (outcome) (rate(capture_redis_refreshes_total{RATE}))"],
           "ops", legend="{{outcome}}")],
    [panel("SDK config requests per endpoint and outcome",
           [f"sum by (endpoint, outcome) (rate(capture_sdk_config_requests_total{RATE}))"], "reqps",
           legend="{{endpoint}} {{outcome}}")],
])

INGEST = dashboard("sluice-ingest", "Sluice / Ingest", [
    [panel("Batch time per step p99",
           [(f"histogram_quantile(0.99, sum by (le, step) (rate(ingest_step_duration_seconds_bucket{RATE})))",
             "{{step}}")], "s"),
     panel("Batch duration p50 / p99",
           [(f"histogram_quantile(0.5, sum by (le) (rate(ingest_batch_duration_seconds_bucket{RATE})))", "p50"),
            (f"histogram_quantile(0.99, sum by (le) (rate(ingest_batch_duration_seconds_bucket{RATE})))", "p99")],
           "s")],
    [panel("Events per batch p50",
           [(f"histogram_quantile(0.5, sum by (le) (rate(ingest_batch_events_bucket{RATE})))", "p50")]),
     panel("Person writes per kind", [f"sum by (kind) (rate(ingest_person_writes_total{RATE}))"], "ops",
           legend="{{kind}}")],
    [panel("ClickHouse rows per table", [f"sum by (table) (rate(ingest_clickhouse_rows_total{RATE}))"], "ops",
           legend="{{table}}"),
     panel("ClickHouse refused rows per table",
           [f"sum by (table) (increase(ingest_clickhouse_refused_rows_total{RATE}))"], legend="{{table}}"),
     panel("Dependency retries", [f"sum by (dependency) (rate(ingest_dependency_retries_total{RATE}))"], "ops",
           legend="{{dependency}}")],
    [panel("Consumer lag per partition", ["ingest_consumer_lag_messages"], legend="{{lane}} {{partition}}"),
     panel("Events consumed per lane", [f"sum by (lane) (rate(ingest_events_consumed_total{RATE}))"], "ops")],
    [panel("Group rejoins (partitions no one consumed)",
           [f"sum by (lane) (increase(ingest_group_rejoins_total{RATE}))"])],
])

PLUGINS = dashboard("sluice-plugins", "Sluice / Plugins", [
    [panel("Calls per plugin configuration", [f"sum by (plugin_config) (rate(ingest_plugin_calls_total{RATE}))"],
           "ops", legend="{{plugin_config}}"),
     panel("Errors per plugin configuration and kind",
           [f"sum by (plugin_config, kind) (rate(ingest_plugin_errors_total{RATE}))"], "ops",
           legend="{{plugin_config}} {{kind}}")],
    [panel("Batch time p99 per plugin configuration",
           [(f"histogram_quantile(0.99, sum by (le, plugin_config) "
             f"(rate(ingest_plugin_batch_duration_seconds_bucket{RATE})))", "{{plugin_config}}")], "s"),
     panel("Degraded / disabled", [f"sum by (status) (increase(ingest_plugin_state_changes_total{RATE}))"],
           legend="{{status}}")],
    [panel("Exported events by hook and outcome",
           [f"sum by (hook, outcome) (rate(ingest_exports_total{RATE}))"], "ops", legend="{{hook}} {{outcome}}"),
     panel("Exports lane: events waiting for a plugin", ["sum(ingest_exports_pending_messages)"], legend="pending"),
     panel("Exports lane lag", ['sum(ingest_consumer_lag_messages{lane="exports"})'], legend="lag"),
     panel("Published to the exports topic", [f"sum(rate(ingest_exports_published_total{RATE}))"], "ops",
           legend="published")],
])

DASHBOARDS = {"overview": OVERVIEW, "capture": CAPTURE, "ingest": INGEST, "plugins": PLUGINS}


def main():
    check = "--check" in sys.argv
    stale = []
    for name, board in DASHBOARDS.items():
        path = os.path.join(HERE, f"{name}.json")
        text = json.dumps(board, indent=2, sort_keys=True) + "\n"
        if check:
            if not os.path.exists(path) or open(path).read() != text:
                stale.append(path)
        else:
            with open(path, "w") as f:
                f.write(text)
    if stale:
        sys.exit(f"stale dashboards (run python3 ops/grafana/generate.py): {stale}")


if __name__ == "__main__":
    main()
