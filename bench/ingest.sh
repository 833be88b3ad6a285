#!/usr/bin/env bash
# Ingest benchmark: pre-fills a topic of its own through a release sluice-capture, runs
# a release sluice-ingest on it, and reports events/s and events per CPU-second of the
# ingest process (from /proc/<pid>/stat), for (A) 1,000 returning persons sending events
# with unchanged properties and (B) every event creating a new person; then end-to-end
# lag p50/p99 (ingest's own metric) at a steady 5,000 events/s. Prints figures; never
# fails on them.
#
#   bench/ingest.sh          (BENCH_EVENTS=100000 per scenario by default;
#                             BENCH_SCENARIOS="returning new steady" picks some)
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
EVENTS="${BENCH_EVENTS:-100000}"

scripts/services.sh up >/dev/null
build_release
OHA="$(command -v oha || echo "$HOME/.cargo/bin/oha")"
[ -x "$OHA" ] || cargo install oha --locked >"$OUT/oha-build.log" 2>&1

own_databases "bench$(date +%s)"
TOKEN="$("$BIN/sluice-ingest" teams create --name "$RUN" | tail -1)"

# body NAME MODE: 500-event /batch bodies; MODE returning = 1,000 ids, same properties;
# new = a fresh id per event.
python3 - "$OUT" "$TOKEN" <<'EOF'
import json, sys
out, token = sys.argv[1], sys.argv[2]
props = {"$current_url": "https://app.example.com/dashboard", "$browser": "Chrome", "$os": "Mac OS X", "plan": "pro"}
for mode in ("returning", "new"):
    with open(f"{out}/ingest-{mode}.jsonl", "w") as f:
        for b in range(400):
            batch = []
            for i in range(500):
                n = b * 500 + i
                did = f"user-{n % 1000}" if mode == "returning" else f"{mode}-{n}"
                batch.append({"event": "$pageview", "distinct_id": did, "properties": props})
            f.write(json.dumps({"api_key": token, "batch": batch}) + "\n")
json.dump({"api_key": token, "batch": [{"event": "steady", "distinct_id": f"user-{i}", "properties": props} for i in range(50)]},
          open(f"{out}/ingest-steady.json", "w"))
EOF

count() { curl -s "$CLICKHOUSE_URL/" --data-binary "SELECT count() FROM $RUN.events WHERE event = '$1'" 2>/dev/null || echo 0; }
TICKS="$(getconf CLK_TCK)"

scenario() { # MODE
  local mode="$1" topic="${RUN}-$1"
  create_topic "$topic"
  start_capture "$topic" "$OUT/ingest-capture-$mode.log"
  log "$mode: pre-filling $EVENTS events"
  head -n "$((EVENTS / 500))" "$OUT/ingest-$mode.jsonl" | while read -r body; do
    curl -sf "http://127.0.0.1:$CAPTURE_PORT/batch" -H 'content-type: application/json' -d "$body" >/dev/null
  done
  local started pg0 ch0; started="$(date +%s.%N)"; pg0="$(server_cpu postgres)"; ch0="$(server_cpu clickhouse)"
  start_ingest "$topic" "$OUT/ingest-$mode.log"
  until [ "$(count '$pageview' | tr -d '[:space:]')" -ge "$((PREVIOUS + EVENTS))" ] 2>/dev/null; do sleep 0.2; done
  local ended ticks; ended="$(date +%s.%N)"; ticks="$(awk '{print $14 + $15}' "/proc/$INGEST_PID/stat")"
  PREVIOUS=$((PREVIOUS + EVENTS))
  kill "$INGEST_PID" "$CAPTURE_PID"; wait "$INGEST_PID" "$CAPTURE_PID" 2>/dev/null || true
  sleep 1 # the ingest's Postgres backends exit and are reaped
  local pg1 ch1; pg1="$(server_cpu postgres)"; ch1="$(server_cpu clickhouse)"
  python3 -c "
w = $ended - $started; cpu = $ticks / $TICKS
print(f'| {\"$mode\"}: events/s (wall, from start to last row) | {$EVENTS / w:,.0f} |')
print(f'| {\"$mode\"}: events per ingest CPU-second | {$EVENTS / cpu:,.0f} |')
for name, a, b in (('postgres', '$pg0', '$pg1'), ('clickhouse', '$ch0', '$ch1')):
    if a and b:
        print(f'| {\"$mode\"}: {name} CPU µs per event | {(int(b) - int(a)) / $TICKS / $EVENTS * 1e6:.1f} |')" >>"$OUT/ingest-figures.md"
}

steady() { # lag at a steady 5,000 events/s on an empty topic, ingest already running
  local topic="${RUN}-steady"
  create_topic "$topic"
  start_capture "$topic" "$OUT/ingest-capture-steady.log"
  start_ingest "$topic" "$OUT/ingest-steady.log"
  sleep 2
  log "steady 5,000 events/s for 20 s (100 requests/s of 50 events)"
  "$OHA" --no-tui -z 20s -q 100 -c 8 -m POST -H 'Content-Type: application/json' -D "$OUT/ingest-steady.json" \
    "http://127.0.0.1:$CAPTURE_PORT/batch" >/dev/null
  sleep 2
  # The lag is a Prometheus histogram: quantiles interpolated within buckets, as
  # histogram_quantile does (0.1 s apart from 0.1 to 1.5 s, so within 10% around 1 s).
  curl -s "http://127.0.0.1:$INGEST_PORT/metrics" | python3 -c "
import sys
buckets = []
for line in sys.stdin:
    if line.startswith('ingest_end_to_end_lag_seconds_bucket{'):
        le = line.split('le=\"')[1].split('\"')[0]
        buckets.append((float('inf') if le == '+Inf' else float(le), float(line.rsplit(' ', 1)[1])))
buckets.sort()
def quantile(q):
    total = buckets[-1][1] if buckets else 0
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= q * total and total:
            if upper == float('inf'):
                return lower
            return lower + (upper - lower) * (q * total - below) / max(count - below, 1e-9)
        lower, below = upper, count
    return 0.0
print(f'| end-to-end lag at a steady 5,000 events/s (capture receive → ClickHouse insert): p50 / p99 | {quantile(0.5):.3f} s / {quantile(0.99):.3f} s |')" >>"$OUT/ingest-figures.md"
  kill "$INGEST_PID" "$CAPTURE_PID"; wait "$INGEST_PID" "$CAPTURE_PID" 2>/dev/null || true
}

PREVIOUS=0
printf '| measure | figure |\n|---|---|\n' >"$OUT/ingest-figures.md"
for s in ${BENCH_SCENARIOS:-returning new steady}; do
  case "$s" in steady) steady ;; *) scenario "$s" ;; esac
done
echo
cat "$OUT/ingest-figures.md"

