#!/usr/bin/env bash
# The project's test command (README "Test it"): installs what the tests need,
# builds the vCenter simulator, checks formatting, lints, the alert rules and
# the Kubernetes manifests, and runs every
# test against real peers on 127.0.0.1 (vcsim, Prometheus 2.42,
# VictoriaMetrics, the Pushgateway; the tests start and stop them).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

log "Installing what is missing"
scripts/install-deps.sh

log "Building vcsim"
scripts/build-vcsim.sh target/peers/vcsim
export VCSIM_BIN="$PWD/target/peers/vcsim"

log "cargo fmt --check"
cargo fmt --all -- --check

log "promtool check rules config/alerts.yaml"
promtool check rules config/alerts.yaml

log "promtool test rules config/alerts_test.yaml"
promtool test rules config/alerts_test.yaml

log "Kubernetes manifests: kubectl kustomize, then schemas and pod security"
# A virtualenv of pinned packages (scripts/requirements-validate.txt), made
# once and remade when the pins change.
venv=target/venv-validate
if ! cmp -s scripts/requirements-validate.txt "$venv/requirements.txt"; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --require-virtualenv \
    -r scripts/requirements-validate.txt
  cp scripts/requirements-validate.txt "$venv/requirements.txt"
fi
command -v kubectl >/dev/null || { echo "kubectl (with kustomize) is needed to render config/kubernetes"; exit 1; }
kubectl kustomize config/kubernetes | "$venv/bin/python" scripts/validate-manifests.py config/kubernetes
for overlay in cronjob ha shards; do
  kubectl kustomize "config/overlays/$overlay" | "$venv/bin/python" scripts/validate-manifests.py "config/overlays/$overlay"
done

log "cargo clippy"
cargo clippy --all-targets --locked -- -D warnings

log "cargo test"
results=$(mktemp)
trap 'rm -f "$results"' EXIT
set +e
cargo test --locked --no-fail-fast 2>&1 | tee "$results"
status=${PIPESTATUS[0]}
set -e

# The container image, built and run (slow: a release build inside podman).
if [ "${CI_IMAGE:-0}" = 1 ]; then
  log "CI_IMAGE=1: scripts/image.sh"
  if ! scripts/image.sh; then
    status=1
  fi
fi

# One closing line over every test binary (unit, integration, doc tests).
echo
awk '/^test result:/ {
       for (i = 1; i < NF; i++) {
         if ($(i + 1) ~ /^passed/) passed += $i
         if ($(i + 1) ~ /^failed/) failed += $i
       }
     }
     END { printf "tests: %d passed, %d failed\n", passed, failed }' "$results"
exit "$status"
