#!/usr/bin/env bash
# Plugin benchmark: ingest throughput and CPU per event with 0, 1 and 3 simple plugins
# per team (property-filter; + taxonomy and user-agent). Each scenario pre-fills a topic
# of its own with 1,000 returning persons' events (so persons cost little and plugins
# show), runs a release ingest on it, and counts the CPU of ingest *and* its plugin
# worker processes (IPC included) from /proc. Uses a Postgres database of its own.
# Prints figures; never fails on them.
#
#   bench/plugins.sh          (BENCH_EVENTS=40000 per scenario by default)
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
EVENTS="${BENCH_EVENTS:-40000}"

scripts/services.sh up >/dev/null
build_release

own_databases "benchplugins$(date +%s)"
TICKS="$(getconf CLK_TCK)"

T0="$(team none)"; T1="$(team one)"; T3="$(team three)"
"$BIN/sluice-ingest" plugins install plugins/property-filter --team "$T1" --config 'properties=secret,$ip' >/dev/null
for t in "$T3"; do
  "$BIN/sluice-ingest" plugins install plugins/property-filter --team "$t" --config 'properties=secret,$ip' >/dev/null
  "$BIN/sluice-ingest" plugins install plugins/taxonomy --team "$t" >/dev/null
  "$BIN/sluice-ingest" plugins install plugins/user-agent --team "$t" >/dev/null
done

bodies() { # TOKEN FILE
  python3 - "$1" "$2" "$EVENTS" <<'PY'
import json, sys
token, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
ua = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
props = {"$current_url": "https://app.example.com/dashboard", "$raw_user_agent": ua, "plan": "pro", "secret": "x"}
with open(path, "w") as f:
    for b in range(n // 500):
        batch = [{"event": "Dashboard Viewed", "distinct_id": f"user-{(b * 500 + i) % 1000}", "properties": props} for i in range(500)]
        f.write(json.dumps({"api_key": token, "batch": batch}) + "\n")
PY
}


scenario() { # NAME TEAM
  local name="$1" topic="${RUN}-$1" token
  token="$(token_of "$2")"
  bodies "$token" "$OUT/plugins-$name.jsonl"
  create_topic "$topic"
  start_capture "$topic" "$OUT/plugins-capture-$name.log"
  log "$name: pre-filling $EVENTS events"
  python3 - "http://127.0.0.1:$CAPTURE_PORT/batch" "$OUT/plugins-$name.jsonl" <<'PY'
import sys, urllib.request
for line in open(sys.argv[2], "rb"):
    req = urllib.request.Request(sys.argv[1], data=line.strip(), headers={"Content-Type": "application/json"})
    assert urllib.request.urlopen(req).status == 200
PY
  local started; started="$(date +%s.%N)"
  start_ingest "$topic" "$OUT/plugins-$name.log"
  until [ "$(curl -s "$CLICKHOUSE_URL/" --data-binary "SELECT count() FROM $RUN.events WHERE team_id = $2" | tr -d '[:space:]')" -ge "$EVENTS" ] 2>/dev/null; do
    sleep 0.2
  done
  local ended ticks; ended="$(date +%s.%N)"; ticks="$(cpu_of_tree "$INGEST_PID")"
  echo "$name $EVENTS $started $ended $ticks" >>"$OUT/plugins-raw.txt"
  kill "$INGEST_PID" "$CAPTURE_PID"; wait "$INGEST_PID" "$CAPTURE_PID" 2>/dev/null || true
}

: >"$OUT/plugins-raw.txt"
scenario none "$T0"
scenario one "$T1"
scenario three "$T3"
python3 - "$OUT/plugins-raw.txt" "$TICKS" <<'PY'
import sys
rows = {}
for line in open(sys.argv[1]):
    name, n, start, end, ticks = line.split()
    rows[name] = (int(n), float(end) - float(start), int(ticks) / int(sys.argv[2]))
print("| plugins per team | events/s (wall) | CPU µs per event (ingest + workers) | added per plugin |")
print("|---|---|---|---|")
base = rows["none"][2] / rows["none"][0] * 1e6
for name, k in (("none", 0), ("one", 1), ("three", 3)):
    n, wall, cpu = rows[name]
    per = cpu / n * 1e6
    added = f"{(per - base) / k:.1f} µs" if k else ""
    print(f"| {k} | {n / wall:,.0f} | {per:.1f} | {added} |")
PY
