#!/usr/bin/env bash
# A local ClickHouse cluster for the cluster tests: two shards of two replicas each
# (four Debian ClickHouse servers on their own ports and data directories) and the
# ZooKeeper they replicate through (Debian's zookeeper package), all on loopback.
#
#   scripts/cluster.sh up            install what is missing, start a fresh cluster
#   scripts/cluster.sh down          stop what this script started (by recorded pid)
#   scripts/cluster.sh stop N        stop node N (1-4: shard 1 is nodes 1 and 2, shard 2 nodes 3 and 4)
#   scripts/cluster.sh start N       start node N again, on its data
#   scripts/cluster.sh env           the variables the cluster tests read, for `eval`
#
# The cluster is named `sluice`; node N answers HTTP on 127.0.0.1:$((CLUSTER_PORT + N))
# (CLUSTER_PORT=18200 by default), native TCP on +100, interserver HTTP on +200, and
# ZooKeeper on CLUSTER_PORT + 300. `up` starts from empty data: ZooKeeper and the
# replicas' parts must agree, and the tests make databases of their own.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/services.sh"
CLUSTER_PORT="${CLUSTER_PORT:-18200}"
DIR="$STATE/cluster"
ZK_PORT=$((CLUSTER_PORT + 300))
NODES=(1 2 3 4)

http_port() { echo $((CLUSTER_PORT + $1)); }
tcp_port() { echo $((CLUSTER_PORT + 100 + $1)); }
shard_of() { echo $(( ($1 + 1) / 2 )); }

zookeeper_up() {
  mkdir -p "$DIR/zookeeper/data"
  # The server class alone, with its port and data directory on the command line: no
  # config file, no admin server, no JMX; `ruok` answers the readiness check.
  nohup java -Xmx256m -Dzookeeper.admin.enableServer=false -Dzookeeper.4lw.commands.whitelist=ruok \
    -cp "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar" org.apache.zookeeper.server.ZooKeeperServerMain \
    "$ZK_PORT" "$DIR/zookeeper/data" >"$DIR/zookeeper/stdout.log" 2>&1 &
  echo $! >"$DIR/zookeeper.pid"
  wait_for zookeeper 127.0.0.1 "$ZK_PORT" 60
  log "cluster: zookeeper on 127.0.0.1:$ZK_PORT"
}

node_config() { # N
  local n="$1" dir="$DIR/node$1" replicas="" s r
  for s in 1 2; do
    replicas+="<shard><internal_replication>true</internal_replication>"
    for r in $((2 * s - 1)) $((2 * s)); do
      replicas+="<replica><host>127.0.0.1</host><port>$(tcp_port "$r")</port></replica>"
    done
    replicas+="</shard>"
  done
  clickhouse_files "$dir" 127.0.0.1 "$(http_port "$n")" "$(tcp_port "$n")" "
  <interserver_http_port>$((CLUSTER_PORT + 200 + n))</interserver_http_port>
  <interserver_http_host>127.0.0.1</interserver_http_host>
  <remote_servers><sluice>$replicas</sluice></remote_servers>
  <zookeeper><node><host>127.0.0.1</host><port>$ZK_PORT</port></node><session_timeout_ms>10000</session_timeout_ms></zookeeper>
  <macros><shard>$(shard_of "$n")</shard><replica>node$n</replica></macros>
  <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>"
}

node_start() { # N
  local n="$1"
  pid_alive "$DIR/node$n.pid" && { log "cluster: node $n already running"; return; }
  nohup clickhouse-server --config-file="$DIR/node$n/config.xml" >"$DIR/node$n/stdout.log" 2>&1 &
  echo $! >"$DIR/node$n.pid"
}

node_stop() { stop_pidfile "cluster node $1" "$DIR/node$1.pid"; }

cmd_cluster_down() {
  local n
  for n in "${NODES[@]}"; do node_stop "$n"; done
  stop_pidfile "cluster zookeeper" "$DIR/zookeeper.pid"
}

cmd_cluster_up() {
  command -v java >/dev/null && [ -f /usr/share/java/zookeeper.jar ] || apt_install zookeeper
  command -v clickhouse-server >/dev/null || apt_install clickhouse-server clickhouse-client
  cmd_cluster_down
  rm -rf "$DIR"
  mkdir -p "$DIR"
  zookeeper_up
  local n
  for n in "${NODES[@]}"; do node_config "$n"; node_start "$n"; done
  for n in "${NODES[@]}"; do wait_for "cluster node $n" 127.0.0.1 "$(http_port "$n")" 60; done
  log "cluster: nodes on http://127.0.0.1:$(http_port 1) … $(http_port 4) (cluster 'sluice', 2 shards × 2 replicas)"
}

cmd_env() {
  local urls=() n
  for n in "${NODES[@]}"; do urls+=("http://127.0.0.1:$(http_port "$n")"); done
  echo "export SLUICE_CLUSTER_URLS=$(IFS=,; echo "${urls[*]}") SLUICE_CLUSTER_NAME=sluice" \
    "SLUICE_CLUSTER_SCRIPT=$ROOT/scripts/cluster.sh SLUICE_CLUSTER_ZOOKEEPER=127.0.0.1:$ZK_PORT"
}

case "${1:-up}" in
  up) cmd_cluster_up ;;
  down) cmd_cluster_down ;;
  stop) node_stop "${2:?node 1-4}" ;;
  start) node_start "${2:?node 1-4}"; wait_for "cluster node $2" 127.0.0.1 "$(http_port "$2")" 60 ;;
  env) cmd_env ;;
  *) die "usage: $0 up|down|stop N|start N|env" ;;
esac
