#!/usr/bin/env bash
# Local servers for development and tests: a Kafka-API broker (Tansu), Postgres, Redis
# and ClickHouse, on loopback, with no Docker.
#
#   scripts/services.sh up       install what is missing, start what is not running, create topics
#   scripts/services.sh status   say what runs where
#   scripts/services.sh down     stop what this script started (by recorded pid), nothing else
#   scripts/services.sh restart postgres|redis|clickhouse   restart one server it started
#   scripts/services.sh build-broker   (re)build the Tansu broker with cargo, showing progress
#
# Addresses come from the same variables the binaries read (KAFKA_HOSTS, DATABASE_URL,
# REDIS_URL, CLICKHOUSE_URL). A server already answering at its address is reused; one
# that is not on this machine is only checked.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${SLUICE_STATE_DIR:-$ROOT/.sluice}"
mkdir -p "$STATE"

KAFKA_HOSTS="${KAFKA_HOSTS:-127.0.0.1:9092}"
DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/sluice}"
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
CLICKHOUSE_URL="${CLICKHOUSE_URL:-http://127.0.0.1:8123}"
KAFKA_PARTITIONS="${KAFKA_PARTITIONS:-4}"
TOPICS=(events_plugin_ingestion events_plugin_ingestion_overflow events_plugin_ingestion_historical
        session_recording_snapshot_item_events session_recording_snapshot_item_overflow events_dead_letter_queue
        clickhouse_events_json exports_dead_letter_queue)

log() { printf '[services] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# host and port out of "host:port", "scheme://user@host:port/path"
hostport() { local s="${1#*://}"; s="${s#*@}"; s="${s%%/*}"; s="${s%%,*}"; echo "$s"; }
host_of() { local hp; hp="$(hostport "$1")"; echo "${hp%:*}"; }
port_of() { local hp; hp="$(hostport "$1")"; echo "${hp##*:}"; }
is_local() { case "$1" in 127.*|localhost|::1|"[::1]") return 0 ;; *) return 1 ;; esac; }
answers() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_for() { # name host port seconds
  local i
  for ((i = 0; i < $4 * 10; i++)); do
    answers "$2" "$3" && return 0
    sleep 0.1
  done
  die "$1 did not answer on $2:$3 within $4 s (logs in $STATE)"
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }

APT_UPDATED=0
apt_install() {
  if [ "$APT_UPDATED" = 0 ]; then
    log "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    APT_UPDATED=1
  fi
  log "installing $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# --- installation ------------------------------------------------------------------
pg_bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

TANSU="$(command -v tansu || true)"
[ -n "$TANSU" ] || { [ -x "$HOME/.cargo/bin/tansu" ] && TANSU="$HOME/.cargo/bin/tansu"; } || true
# memory: fast, emptied when the broker stops (tests); sqlite: kept in $STATE/tansu.db
# across restarts (`./dev up`'s choice is the operator's; the chaos run restarts its own).
KAFKA_STORAGE="${KAFKA_STORAGE:-memory}"
# The storage engines the broker is built with: memory (dynostore), postgres, and
# sqlite (libsql), the durable one the chaos run restarts.
TANSU_FEATURES=dynostore,postgres,libsql
tansu_has_features() {
  # cargo install records the features of what it installed.
  python3 - "$HOME/.cargo/.crates2.json" "$TANSU_FEATURES" <<'PY' 2>/dev/null
import json, sys
installs = json.load(open(sys.argv[1]))["installs"]
wanted = set(sys.argv[2].split(","))
sys.exit(0 if any(k.startswith("tansu ") and wanted <= set(v.get("features", [])) for k, v in installs.items()) else 1)
PY
}

# Crates compiled in a full build of the broker, for the progress line (measured on a
# fresh machine; a different count only makes the line's total approximate).
TANSU_CRATES=430
build_tansu() {
  local build_log="$STATE/tansu-build.log" started=$SECONDS pid n every="${SLUICE_PROGRESS_SECONDS:-30}"
  log "building the Tansu broker with cargo: once per machine, about 15-30 minutes on 2 cores"
  log "(later runs reuse ~/.cargo/bin/tansu); progress every $every s, full log in $build_log"
  cargo install tansu --version '^0.6' --locked --features "$TANSU_FEATURES" >"$build_log" 2>&1 &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    for _ in $(seq "$every"); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -0 "$pid" 2>/dev/null || break
    n=$(grep -c '^ *Compiling ' "$build_log" || true)
    log "tansu: $n of about $TANSU_CRATES crates compiled, $(( (SECONDS - started) / 60 )) min so far ($(grep -E '^ *(Compiling|Downloaded|Updating)' "$build_log" | tail -n 1 | sed 's/^ *//'))"
  done
  wait "$pid" || die "cargo install tansu failed; see $build_log"
  log "tansu: built in $(( (SECONDS - started) / 60 )) min"
}

install_missing() {
  local pkgs=()
  [ -n "$(pg_bindir)" ] && [ -x "$(pg_bindir)/initdb" ] || pkgs+=(postgresql)
  command -v redis-server >/dev/null || pkgs+=(redis-server)
  command -v clickhouse-server >/dev/null || pkgs+=(clickhouse-server clickhouse-client)
  command -v curl >/dev/null || pkgs+=(curl)
  # The observability tests run a real Prometheus, and promtool tests the alert rules.
  command -v prometheus >/dev/null && command -v promtool >/dev/null || pkgs+=(prometheus)
  # The TLS tests put stunnel in front of a Tansu broker (tests/src/tls.rs).
  command -v stunnel4 >/dev/null || command -v stunnel >/dev/null || pkgs+=(stunnel4)
  if [ "${#pkgs[@]}" -gt 0 ]; then apt_install "${pkgs[@]}"; fi
  if [ -z "$TANSU" ] || { [ "$TANSU" = "$HOME/.cargo/bin/tansu" ] && ! tansu_has_features; }; then
    # Built once (15-20 minutes on 2 cores), then reused from ~/.cargo/bin.
    build_tansu
    TANSU="$HOME/.cargo/bin/tansu"
  fi
}

# --- Kafka (Tansu) ------------------------------------------------------------------
kafka_up() {
  local host port; host="$(host_of "$KAFKA_HOSTS")"; port="$(port_of "$KAFKA_HOSTS")"
  if answers "$host" "$port"; then
    log "kafka: already answering on $host:$port"
  elif ! is_local "$host"; then
    die "kafka: nothing answers on $host:$port"
  else
    local engine=memory://tansu/
    # Tansu opens a sqlite database relative to its working directory ($STATE here).
    [ "$KAFKA_STORAGE" = sqlite ] && engine="sqlite://tansu.db"
    (cd "$STATE" && exec nohup "$TANSU" broker --listener-url "tcp://$host:$port" --advertised-listener-url "tcp://$host:$port" \
      --storage-engine "$engine" >"$STATE/tansu.log" 2>&1) &
    echo $! >"$STATE/tansu.pid"
    wait_for kafka "$host" "$port" 30
    log "kafka: started Tansu on $host:$port (pid $(cat "$STATE/tansu.pid"))"
  fi
  if [ -n "$TANSU" ]; then
    local t
    for t in "${TOPICS[@]}"; do
      "$TANSU" topic create "$t" --broker "tcp://$host:$port" --partitions "$KAFKA_PARTITIONS" >/dev/null 2>&1 || true
    done
    log "kafka: topics ${TOPICS[*]}"
  fi
}

# --- Postgres -------------------------------------------------------------------------
pg_data_dir() {
  # Postgres refuses to run as root, so as root the cluster belongs to the postgres user
  # and lives where that user can reach it whatever the checkout's permissions.
  if [ "$(id -u)" = 0 ]; then echo "/var/tmp/sluice-postgres-$(port_of "$DATABASE_URL")"; else echo "$STATE/postgres"; fi
}
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

postgres_up() {
  local host port bin data; host="$(host_of "$DATABASE_URL")"; port="$(port_of "$DATABASE_URL")"
  if answers "$host" "$port"; then
    log "postgres: already answering on $host:$port"
  elif ! is_local "$host"; then
    die "postgres: nothing answers on $host:$port"
  else
    bin="$(pg_bindir)"; data="$(pg_data_dir)"
    if [ ! -f "$data/PG_VERSION" ]; then
      mkdir -p "$data"
      [ "$(id -u)" = 0 ] && chown postgres: "$data"
      as_pg "$bin/initdb" -D "$data" -A trust -U postgres >"$STATE/postgres-init.log" 2>&1 || die "initdb failed: $STATE/postgres-init.log"
    fi
    as_pg "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w -t 30 \
      -o "-h $host -p $port -k $data -c fsync=off -c full_page_writes=off -c max_connections=200" start >/dev/null \
      || die "postgres did not start: $data/server.log"
    head -n 1 "$data/postmaster.pid" >"$STATE/postgres.pid"
    echo "$data" >"$STATE/postgres.datadir"
    wait_for postgres "$host" "$port" 30
    log "postgres: started on $host:$port (data $data)"
  fi
  local db="${DATABASE_URL##*/}"; db="${db%%\?*}"
  if command -v psql >/dev/null && [ -n "$db" ]; then
    local admin="${DATABASE_URL%/*}/postgres"
    if ! psql "$admin" -tAc "select 1 from pg_database where datname = '$db'" 2>/dev/null | grep -q 1; then
      psql "$admin" -qc "create database \"$db\"" >/dev/null 2>&1 && log "postgres: created database $db" || true
    fi
  fi
}

# --- Redis ------------------------------------------------------------------------------
redis_up() {
  local host port; host="$(host_of "$REDIS_URL")"; port="$(port_of "$REDIS_URL")"
  if answers "$host" "$port"; then
    log "redis: already answering on $host:$port"
  elif ! is_local "$host"; then
    die "redis: nothing answers on $host:$port"
  else
    redis-server --daemonize yes --bind "$host" --port "$port" --save '' --appendonly no \
      --pidfile "$STATE/redis.pid" --logfile "$STATE/redis.log" --dir "$STATE" >/dev/null
    wait_for redis "$host" "$port" 15
    log "redis: started on $host:$port"
  fi
}

# --- ClickHouse -------------------------------------------------------------------------
# clickhouse_users FILE: the local servers' one user, default, with no password, from
# loopback only (scripts/cluster.sh's nodes use it too).
clickhouse_users() {
  cat >"$1" <<EOF
<yandex>
  <profiles><default><max_memory_usage>4000000000</max_memory_usage></default></profiles>
  <users><default><password></password><networks><ip>::1</ip><ip>127.0.0.1</ip></networks>
    <profile>default</profile><quota>default</quota></default></users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>
    <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
EOF
}

# clickhouse_files DIR HOST HTTP_PORT TCP_PORT [XML]: a local server's directories, user
# file and config (with XML added inside it), all under DIR.
clickhouse_files() {
  local dir="$1"
  mkdir -p "$dir/data" "$dir/tmp" "$dir/user_files" "$dir/format_schemas"
  clickhouse_users "$dir/users.xml"
  cat >"$dir/config.xml" <<EOF
<yandex>
  <logger><level>warning</level><log>$dir/server.log</log><errorlog>$dir/error.log</errorlog><size>50M</size><count>2</count></logger>
  <http_port>$3</http_port>
  <tcp_port>$4</tcp_port>
  <listen_host>$2</listen_host>
  <path>$dir/data/</path>
  <tmp_path>$dir/tmp/</tmp_path>
  <user_files_path>$dir/user_files/</user_files_path>
  <format_schema_path>$dir/format_schemas/</format_schema_path>
  <users_config>$dir/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>268435456</mark_cache_size>
  <max_concurrent_queries>100</max_concurrent_queries>
  ${5:-}
</yandex>
EOF
}

clickhouse_up() {
  local host port dir; host="$(host_of "$CLICKHOUSE_URL")"; port="$(port_of "$CLICKHOUSE_URL")"
  if answers "$host" "$port"; then
    log "clickhouse: already answering on $host:$port"
    return
  elif ! is_local "$host"; then
    die "clickhouse: nothing answers on $host:$port"
  fi
  dir="$STATE/clickhouse"
  clickhouse_files "$dir" "$host" "$port" "${CLICKHOUSE_TCP_PORT:-19000}"
  nohup clickhouse-server --config-file="$dir/config.xml" >"$dir/stdout.log" 2>&1 &
  echo $! >"$STATE/clickhouse.pid"
  wait_for clickhouse "$host" "$port" 60
  log "clickhouse: started on $host:$port"
}

# --- commands -----------------------------------------------------------------------------
stop_pidfile() { # name pidfile
  if pid_alive "$2"; then
    kill "$(cat "$2")" 2>/dev/null || true
    local i; for ((i = 0; i < 100; i++)); do pid_alive "$2" || break; sleep 0.1; done
    pid_alive "$2" && kill -9 "$(cat "$2")" 2>/dev/null || true
    log "$1: stopped"
  fi
  rm -f "$2"
}

cmd_down() {
  stop_pidfile kafka "$STATE/tansu.pid"
  stop_pidfile redis "$STATE/redis.pid"
  stop_pidfile clickhouse "$STATE/clickhouse.pid"
  if [ -f "$STATE/postgres.pid" ] && pid_alive "$STATE/postgres.pid"; then
    as_pg "$(pg_bindir)/pg_ctl" -D "$(cat "$STATE/postgres.datadir")" -m fast -w stop >/dev/null && log "postgres: stopped"
  fi
  rm -f "$STATE/postgres.pid"
}

cmd_status() {
  local name url
  for name in kafka postgres redis clickhouse; do
    case $name in
      kafka) url="$KAFKA_HOSTS" ;; postgres) url="$DATABASE_URL" ;; redis) url="$REDIS_URL" ;; clickhouse) url="$CLICKHOUSE_URL" ;;
    esac
    local who="not started by this script"
    case $name in kafka) pid_alive "$STATE/tansu.pid" && who="started here, pid $(cat "$STATE/tansu.pid")" ;;
      *) pid_alive "$STATE/$name.pid" && who="started here, pid $(cat "$STATE/$name.pid")" ;; esac
    if answers "$(host_of "$url")" "$(port_of "$url")"; then
      printf '%-10s up    %-22s (%s)\n' "$name" "$(hostport "$url")" "$who"
    else
      printf '%-10s down  %s\n' "$name" "$(hostport "$url")"
    fi
  done
}

# Restart one server this script started (the chaos run's faults); refuses others.
cmd_restart() {
  case "${1:-}" in
    postgres)
      pid_alive "$STATE/postgres.pid" || die "postgres was not started by this script"
      as_pg "$(pg_bindir)/pg_ctl" -D "$(cat "$STATE/postgres.datadir")" -m fast -w -t 60 restart >/dev/null \
        || die "postgres did not restart"
      head -n 1 "$(cat "$STATE/postgres.datadir")/postmaster.pid" >"$STATE/postgres.pid"
      wait_for postgres "$(host_of "$DATABASE_URL")" "$(port_of "$DATABASE_URL")" 30
      log "postgres: restarted" ;;
    redis)
      pid_alive "$STATE/redis.pid" || die "redis was not started by this script"
      stop_pidfile redis "$STATE/redis.pid"; redis_up ;;
    clickhouse)
      pid_alive "$STATE/clickhouse.pid" || die "clickhouse was not started by this script"
      stop_pidfile clickhouse "$STATE/clickhouse.pid"; clickhouse_up ;;
    *) die "usage: $0 restart postgres|redis|clickhouse" ;;
  esac
}

# Sourced (scripts/cluster.sh uses the helpers above): define, do not run.
[[ "${BASH_SOURCE[0]}" == "$0" ]] || return 0

case "${1:-up}" in
  up)
    install_missing
    kafka_up
    postgres_up
    redis_up
    clickhouse_up
    cmd_status
    ;;
  down) cmd_down ;;
  restart) cmd_restart "${2:-}" ;;
  status) cmd_status ;;
  build-broker) build_tansu ;;
  *) die "usage: $0 up|down|status|restart NAME|build-broker" ;;
esac
