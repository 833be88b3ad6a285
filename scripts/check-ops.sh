#!/usr/bin/env bash
# The operations files, checked (part of `./dev test`): the Prometheus rules with
# promtool (syntax, and the unit tests that fire every alert), and the Grafana
# dashboards against their generator. The metric names both read are checked against
# the running binaries by tests/tests/observability.rs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
log() { printf '[ops] %s\n' "$*" >&2; }
command -v promtool >/dev/null || { log "promtool missing: scripts/services.sh up installs Debian's prometheus package"; exit 1; }
log "promtool check rules"
promtool check rules ops/prometheus/sluice.rules.yaml
log "promtool test rules"
(cd ops/prometheus && promtool test rules sluice.rules.test.yaml)
log "dashboards match ops/grafana/generate.py"
python3 ops/grafana/generate.py --check
log "all operations checks passed"
