# Shared by the benchmarks (sourced, not run): the repository root as working
# directory, the cargo target dir outside the clone, where figures and logs go, and
# starting the release binaries. Every process started here is stopped by its pid on exit.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice/target}"
# SLUICE_BIN_DIR runs other builds (e.g. an older commit's) under the same load, to tell
# a regression from a slower machine; the benchmarks then build nothing.
BIN="${SLUICE_BIN_DIR:-$CARGO_TARGET_DIR/release}"
build_release() { [ -n "${SLUICE_BIN_DIR:-}" ] || cargo build --release --bins --quiet; }
OUT="$ROOT/.sluice/bench"
mkdir -p "$OUT"

log() { printf '[bench] %s\n' "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# The services script builds Tansu when it is missing, so look it up after that. A path,
# not a function, so that `"$(tansu_path)" broker &` gives the broker's own pid in $!.
tansu_path() { type -P tansu || echo "$HOME/.cargo/bin/tansu"; }

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# create_topic NAME: four partitions on the local broker.
create_topic() { "$(tansu_path)" topic create "$1" --broker "tcp://${KAFKA_HOSTS:-127.0.0.1:9092}" --partitions 4 >/dev/null 2>&1; }

# start_capture TOPIC LOG: a release capture producing every event to TOPIC, ready when
# this returns; sets CAPTURE_PID and CAPTURE_PORT.
start_capture() {
  CAPTURE_PORT="$(free_port)"
  ADDRESS="127.0.0.1:$CAPTURE_PORT" KAFKA_TOPIC_MAIN="$1" OVERFLOW_ENABLED=false LOG_FORMAT=json RUST_LOG=warn \
    "$BIN/sluice-capture" >"$2" 2>&1 &
  CAPTURE_PID=$!; PIDS+=("$CAPTURE_PID")
  until curl -sf "http://127.0.0.1:$CAPTURE_PORT/_readiness" >/dev/null; do sleep 0.1; done
}

# start_ingest TOPIC LOG: a release ingest consuming TOPIC with a group of that name;
# sets INGEST_PID and INGEST_PORT.
start_ingest() {
  INGEST_PORT="$(free_port)"
  ADDRESS="127.0.0.1:$INGEST_PORT" KAFKA_TOPIC="$1" KAFKA_GROUP_ID="$1" LOG_FORMAT=json RUST_LOG=warn \
    "$BIN/sluice-ingest" >"$2" 2>&1 &
  INGEST_PID=$!; PIDS+=("$INGEST_PID")
}

# cpu_of_tree PID [reaped]: CPU ticks of the process and its live children (plugin
# workers, Postgres backends); with `reaped`, also of the children it has waited for.
cpu_of_tree() {
  local own='$14 + $15' total
  [ "${2:-}" = reaped ] && own='$14 + $15 + $16 + $17'
  total="$(awk "{print $own}" "/proc/$1/stat")"
  for stat in /proc/[0-9]*/stat; do
    read -r -a f <"$stat" 2>/dev/null || continue
    # comm has no spaces for our binaries: field 4 is the parent pid.
    if [ "${f[3]:-}" = "$1" ]; then total=$((total + f[13] + f[14])); fi
  done
  echo "$total"
}

# server_cpu NAME: CPU ticks so far of a server the services script started (postgres,
# clickhouse), its children included, reaped ones too (a Postgres backend's time moves
# to the postmaster when its connection closes). Empty when the script did not start it.
server_cpu() {
  local pidfile="${SLUICE_STATE_DIR:-$ROOT/.sluice}/$1.pid" pid
  [ -f "$pidfile" ] && pid="$(head -n 1 "$pidfile")" && [ -r "/proc/$pid/stat" ] || return 0
  cpu_of_tree "$pid" reaped
}

# own_databases RUN: a Postgres database and a ClickHouse database named RUN for this
# run, migrated by $BIN's ingest (so another build's binaries run on their own schema),
# both dropped on exit.
own_databases() {
  RUN="$1"
  BASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/sluice}"
  CLICKHOUSE_URL="${CLICKHOUSE_URL:-http://127.0.0.1:8123}"
  psql "$BASE_URL" -qc "CREATE DATABASE $RUN" >/dev/null
  export DATABASE_URL="${BASE_URL%/*}/$RUN" CLICKHOUSE_DATABASE="$RUN"
  "$BIN/sluice-ingest" migrate >/dev/null
  trap 'cleanup; drop_databases' EXIT
}
drop_databases() {
  curl -s "$CLICKHOUSE_URL/" --data-binary "DROP DATABASE IF EXISTS $RUN" >/dev/null || true
  psql "$BASE_URL" -qc "DROP DATABASE IF EXISTS $RUN WITH (FORCE)" >/dev/null 2>&1 || true
}

# team NAME: creates a team, prints its id; token_of ID: its api token.
team() { "$BIN/sluice-ingest" teams create --name "$1" | awk 'NR == 1 {print $3}'; }
token_of() { psql "$DATABASE_URL" -tAc "SELECT api_token FROM teams WHERE id = $1"; }

