#!/usr/bin/env bash
# Exports benchmark: events/s and events per CPU-second through the exports lane
# (LANE=exports: the lane and its plugin workers, IPC included, from /proc), with one
# export_events plugin (the shipped http-export, buffers of EXPORT_BUFFER_MAX_EVENTS)
# and with one on_event plugin (the shipped webhook, one request per event), each
# delivering into a local HTTP sink (a threaded Python server that counts events).
# The exports topic is filled first by a release capture and main lane, so only the
# exports lane runs while it is measured. Prints figures; never fails on them.
#
#   bench/exports.sh          (BENCH_EVENTS=20000 per scenario by default)
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
EVENTS="${BENCH_EVENTS:-20000}"

scripts/services.sh up >/dev/null
build_release

own_databases "benchexports$(date +%s)"
TICKS="$(getconf CLK_TCK)"

SINK_PORT="$(free_port)"
python3 - "$SINK_PORT" <<'PY' &
import json, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
count, lock = {"n": 0}, threading.Lock()
class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        data = json.loads(body)
        with lock:
            count["n"] += len(data) if isinstance(data, list) else 1
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def do_GET(self):
        with lock:
            body = str(count["n"]).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
PY
PIDS+=("$!")
until curl -sf "http://127.0.0.1:$SINK_PORT/" >/dev/null; do sleep 0.1; done
sink_count() { curl -s "http://127.0.0.1:$SINK_PORT/"; }

TB="$(team batched)"; TS="$(team single)"
"$BIN/sluice-ingest" plugins install plugins/http-export --team "$TB" --config "url=http://127.0.0.1:$SINK_PORT/in" >/dev/null
"$BIN/sluice-ingest" plugins install plugins/webhook --team "$TS" --config "url=http://127.0.0.1:$SINK_PORT/hook" >/dev/null


scenario() { # NAME TEAM
  local name="$1" topic="${RUN}-$1" exports="${RUN}-$1-exports" token
  token="$(token_of "$2")"
  create_topic "$topic"; create_topic "$exports"; create_topic "${exports}-dlq"
  start_capture "$topic" "$OUT/exports-capture-$name.log"
  log "$name: filling the exports topic with $EVENTS written events"
  python3 - "http://127.0.0.1:$CAPTURE_PORT/batch" "$token" "$EVENTS" <<'PY'
import json, sys, urllib.request
url, token, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
props = {"$current_url": "https://app.example.com/checkout", "plan": "pro", "amount": 42.5, "currency": "EUR"}
for b in range(n // 500):
    batch = [{"event": "Order Completed", "distinct_id": f"user-{(b * 500 + i) % 1000}", "properties": props} for i in range(500)]
    req = urllib.request.Request(url, data=json.dumps({"api_key": token, "batch": batch}).encode(),
                                 headers={"Content-Type": "application/json"})
    assert urllib.request.urlopen(req).status == 200
PY
  KAFKA_EXPORTS_TOPIC="$exports" start_ingest "$topic" "$OUT/exports-main-$name.log"
  until curl -s "http://127.0.0.1:$INGEST_PORT/metrics" | awk '/^ingest_exports_published_total/ {n = $2} END {exit !(n >= '"$EVENTS"')}'; do
    sleep 0.2
  done
  kill "$INGEST_PID" "$CAPTURE_PID"; wait "$INGEST_PID" "$CAPTURE_PID" 2>/dev/null || true
  local before started; before="$(sink_count)"; started="$(date +%s.%N)"
  log "$name: exporting"
  LANE=exports PLUGIN_HTTP_ALLOW_PRIVATE=true KAFKA_EXPORTS_DLQ_TOPIC="${exports}-dlq" \
    start_ingest "$exports" "$OUT/exports-lane-$name.log"
  until [ "$(( $(sink_count) - before ))" -ge "$EVENTS" ]; do sleep 0.1; done
  local ended ticks; ended="$(date +%s.%N)"; ticks="$(cpu_of_tree "$INGEST_PID")"
  echo "$name $EVENTS $started $ended $ticks" >>"$OUT/exports-raw.txt"
  kill "$INGEST_PID"; wait "$INGEST_PID" 2>/dev/null || true
}

: >"$OUT/exports-raw.txt"
scenario export_events "$TB"
scenario on_event "$TS"
python3 - "$OUT/exports-raw.txt" "$TICKS" <<'PY'
import sys
print("| hook (one plugin) | events/s (wall) | events per CPU-second (exports lane + workers) | CPU µs per event |")
print("|---|---|---|---|")
for line in open(sys.argv[1]):
    name, n, start, end, ticks = line.split()
    n, wall, cpu = int(n), float(end) - float(start), int(ticks) / int(sys.argv[2])
    print(f"| {name} | {n / wall:,.0f} | {n / cpu:,.0f} | {cpu / n * 1e6:.1f} |")
PY
