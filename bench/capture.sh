#!/usr/bin/env bash
# Capture benchmark: starts a release sluice-capture against a Tansu broker of its own
# and reports, for posthog-js style single gzip events and 50-event /batch bodies:
# requests/s and events/s at saturation, events per CPU-second of the capture process
# (from /proc/<pid>/stat, so the load generator and the broker do not count), p50/p99
# latency at a fixed 1,000 requests/s, and peak RSS at twice the saturating load and
# with the broker stopped. Prints figures; never fails on them.
#
#   bench/capture.sh            (BENCH_SECONDS=15 by default per phase; CAPTURE_BIN=path)
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SECONDS_PER_PHASE="${BENCH_SECONDS:-15}"

OHA="$(command -v oha || true)"
[ -n "$OHA" ] || { [ -x "$HOME/.cargo/bin/oha" ] && OHA="$HOME/.cargo/bin/oha"; } || true
if [ -z "$OHA" ]; then
  log "installing the oha load generator (cargo install oha)"
  cargo install oha --locked >"$OUT/oha-build.log" 2>&1
  OHA="$HOME/.cargo/bin/oha"
fi
scripts/services.sh up >/dev/null # Redis (quota lists), and Tansu built if missing

# CAPTURE_BIN runs another build (e.g. an older commit's) under the same load, to tell a
# regression from a slower machine.
if [ -z "${CAPTURE_BIN:-}" ]; then
  cargo build --release -p sluice-capture --quiet
  CAPTURE_BIN="$BIN/sluice-capture"
fi
python3 bench/payloads.py "$OUT"

BROKER_PORT="$(free_port)"
CAPTURE_PORT="$(free_port)"

"$(tansu_path)" broker --listener-url "tcp://127.0.0.1:$BROKER_PORT" --advertised-listener-url "tcp://127.0.0.1:$BROKER_PORT" \
  --storage-engine memory://tansu/ >"$OUT/tansu.log" 2>&1 &
BROKER_PID=$!
PIDS+=("$BROKER_PID")
until (exec 3<>"/dev/tcp/127.0.0.1/$BROKER_PORT") 2>/dev/null; do sleep 0.1; done
for t in bench_main bench_overflow bench_historical bench_replay bench_replay_overflow; do
  "$(tansu_path)" topic create "$t" --broker "tcp://127.0.0.1:$BROKER_PORT" --partitions 4 >/dev/null 2>&1
done

# Overflow off: the bodies repeat one distinct_id, which would otherwise (rightly) be
# rerouted after its burst; the path measured is the ordinary one.
ADDRESS="127.0.0.1:$CAPTURE_PORT" KAFKA_HOSTS="127.0.0.1:$BROKER_PORT" OVERFLOW_ENABLED=false LOG_FORMAT=json RUST_LOG=warn \
  KAFKA_TOPIC_MAIN=bench_main KAFKA_TOPIC_OVERFLOW=bench_overflow KAFKA_TOPIC_HISTORICAL=bench_historical \
  KAFKA_TOPIC_REPLAY=bench_replay KAFKA_TOPIC_REPLAY_OVERFLOW=bench_replay_overflow \
  "$CAPTURE_BIN" >"$OUT/capture.log" 2>&1 &
CAPTURE_PID=$!
PIDS+=("$CAPTURE_PID")
until curl -sf "http://127.0.0.1:$CAPTURE_PORT/_readiness" >/dev/null; do sleep 0.1; done

URL="http://127.0.0.1:$CAPTURE_PORT"
SINGLE=("$URL/e/?compression=gzip-js&ver=1.150.0&_=1714557600123" -m POST -H "Content-Type: text/plain" -D "$OUT/single.json.gz")
BATCH=("$URL/batch/" -m POST -H "Content-Type: application/json" -D "$OUT/batch50.json")
TICKS="$(getconf CLK_TCK)"
cpu_ticks() { awk '{print $14 + $15}' "/proc/$CAPTURE_PID/stat"; }
reset_peak_rss() { echo 5 >"/proc/$CAPTURE_PID/clear_refs" 2>/dev/null || true; }
peak_rss_mib() { awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$CAPTURE_PID/status"; }

# run NAME oha-args... -> writes $OUT/NAME.json and $OUT/NAME.cpu (capture CPU seconds)
run() {
  local name="$1"; shift
  local t0 t1
  t0="$(cpu_ticks)"
  "$OHA" --no-tui --output-format json -z "${SECONDS_PER_PHASE}s" "$@" >"$OUT/$name.json"
  t1="$(cpu_ticks)"
  python3 -c "print(($t1 - $t0) / $TICKS)" >"$OUT/$name.cpu"
}
field() { python3 - "$OUT/$1.json" "$2" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
v = d
for k in sys.argv[2].split("."):
    v = v.get(k) if isinstance(v, dict) else None
print(v if v is not None else 0)
EOF
}

log "warm-up"
"$OHA" --no-tui -z 3s -c 32 "${SINGLE[@]}" >/dev/null

log "1/5 single gzip events, saturating"
run single -c 256 "${SINGLE[@]}"
log "2/5 50-event batches, saturating"
run batch -c 32 "${BATCH[@]}"
log "3/5 single events at a fixed 1,000 requests/s"
run fixed -c 64 -q 1000 --latency-correction "${SINGLE[@]}"

SINGLE_RPS="$(field single summary.requestsPerSec)"
DOUBLE="$(python3 -c "print(int(2 * $SINGLE_RPS))")"
log "4/5 twice the saturating load ($DOUBLE requests/s offered, 512 connections)"
reset_peak_rss
run overload -c 512 -q "$DOUBLE" "${SINGLE[@]}"
RSS_OVERLOAD="$(peak_rss_mib)"

log "5/5 broker stopped, same overload"
kill "$BROKER_PID"; wait "$BROKER_PID" 2>/dev/null || true
sleep 3
reset_peak_rss
run brokerdown -c 512 -q "$DOUBLE" "${SINGLE[@]}"
RSS_DOWN="$(peak_rss_mib)"

python3 - "$OUT" "$RSS_OVERLOAD" "$RSS_DOWN" <<'EOF'
import json, sys
out, rss_over, rss_down = sys.argv[1], sys.argv[2], sys.argv[3]
def load(n):
    return json.load(open(f"{out}/{n}.json")), float(open(f"{out}/{n}.cpu").read())
def ok(d):
    return int(d.get("statusCodeDistribution", {}).get("200", 0))
def secs(d):
    return d["summary"]["total"]
s, s_cpu = load("single")
b, b_cpu = load("batch")
f, _ = load("fixed")
o, _ = load("overload")
x, _ = load("brokerdown")
print()
print("| measure | figure |")
print("|---|---|")
print(f"| single gzip events: requests/s (200s) | {ok(s) / secs(s):,.0f} |")
print(f"| single gzip events: events per capture CPU-second | {ok(s) / s_cpu:,.0f} |")
print(f"| 50-event batches: events/s | {50 * ok(b) / secs(b):,.0f} |")
print(f"| 50-event batches: events per capture CPU-second | {50 * ok(b) / b_cpu:,.0f} |")
lp = f["latencyPercentiles"]
print(f"| latency at 1,000 req/s: p50 / p99 | {lp['p50'] * 1000:.2f} ms / {lp['p99'] * 1000:.2f} ms |")
print(f"| peak RSS at 2x saturating load | {rss_over} MiB (statuses {o.get('statusCodeDistribution')}) |")
print(f"| peak RSS with the broker stopped | {rss_down} MiB (statuses {x.get('statusCodeDistribution')}) |")
EOF
