#!/usr/bin/env bash
# The image and the Kubernetes manifests, checked (part of `./dev test`):
#   hadolint and checkov on the Dockerfile; every overlay rendered with kubectl kustomize,
#   then yamllint, kubernetes-validate (strict, Kubernetes $K8S_VERSION) and checkov with
#   zero failed checks (each skip carries its reason next to it, in the manifest);
#   tests/deploy/image.py (the runtime stage has every library the binaries link) and
#   tests/deploy/contract.py (the manifests against the binaries; the local overlay's
#   workloads started against the local servers).
# Usage: scripts/check-deploy.sh BIN_DIR
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN_DIR="${1:?usage: scripts/check-deploy.sh BIN_DIR}"
K8S_VERSION="${K8S_VERSION:-1.33.0}"
VENV="$ROOT/.venv-deploy"
OUT="$(mktemp -d "${TMPDIR:-/tmp}/sluice-k8s.XXXXXX")"
trap 'rm -rf "$OUT"' EXIT
log() { printf '[deploy] %s\n' "$*" >&2; }

# A virtualenv of its own: checkov's dependencies and the SDKs' do not mix.
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
if ! cmp -s tests/deploy/requirements.txt "$VENV/installed-requirements.txt"; then
  log "installing the deploy tools"
  "$VENV/bin/pip" install -q -r tests/deploy/requirements.txt
  cp tests/deploy/requirements.txt "$VENV/installed-requirements.txt"
fi
export PATH="$VENV/bin:$PATH"

log "hadolint Dockerfile"
hadolint Dockerfile
for overlay in k8s/overlays/*/; do
  name="$(basename "$overlay")"
  kubectl kustomize "$overlay" >"$OUT/$name.yaml"
done
log "rendered: $(cd "$OUT" && echo *.yaml)"
log "yamllint"
yamllint -c .yamllint.yaml k8s "$OUT"
log "kubernetes-validate --strict (Kubernetes $K8S_VERSION; CRDs of KEDA and the Prometheus Operator have no schema there)"
kubernetes-validate --strict --quiet -k "$K8S_VERSION" "$OUT"/*.yaml
log "checkov"
checkov_args=(--compact --quiet --skip-download)
for f in "$OUT"/*.yaml Dockerfile; do checkov_args+=(-f "$f"); done
checkov "${checkov_args[@]}"
log "image: libraries"
python tests/deploy/image.py Dockerfile "$BIN_DIR"
log "contract: every overlay against the binaries"
python tests/deploy/contract.py "$BIN_DIR" "$OUT"/*.yaml
log "contract: the local overlay's workloads started"
python tests/deploy/contract.py "$BIN_DIR" "$OUT/local.yaml" --start
log "all deploy checks passed"
