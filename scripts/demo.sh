#!/usr/bin/env bash
# One-command demo (README "Run it"): a simulated vCenter with CI users'
# sessions, a simulated Prow deck and build cluster, a local Prometheus with
# its remote-write receiver, and the reporter between them. Shows what
# /metrics serves and what Prometheus stored, then stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

say "Installing what is missing (Debian packages: Go, govmomi, Prometheus, curl)"
scripts/install-deps.sh
say "Building the vCenter simulator and the reporter"
scripts/build-vcsim.sh target/peers/vcsim
cargo build --quiet --bin vsphere-ci-session-metrics --example fake_ci

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Wait for a `NAME=value` line in a file, print the value.
wait_line() {
  local file=$1 name=$2
  for _ in $(seq 1 300); do
    if grep -q "^$name=" "$file" 2>/dev/null; then
      grep "^$name=" "$file" | head -1 | cut -d= -f2-
      return 0
    fi
    sleep 0.1
  done
  echo "timed out waiting for $name in $file" >&2
  cat "$file" >&2
  return 1
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

say "Starting vcsim with sessions of CI users (user, user agent, count)"
sessions=(
  "ci-user-1@vsphere.local,openshift-install,4"
  'VSPHERE.LOCAL\ci-user-1,vsphere-csi-driver,2'
  "ci-user-2@vsphere.local,machine-api-operator,3"
  "ci-user-3@vsphere.local,govc,1"
  "administrator@vsphere.local,Mozilla/5.0,1"
)
args=()
for s in "${sessions[@]}"; do
  echo "  $s"
  args+=(-session "$s")
done
target/peers/vcsim "${args[@]}" >"$work/vcsim.out" 2>"$work/vcsim.err" &
pids+=($!)
vcsim_url=$(wait_line "$work/vcsim.out" VCSIM_URL)
echo "  vCenter at $vcsim_url"

say "Starting the simulated Prow deck and build cluster (tests/fixtures/demo/scenario.json)"
target/debug/examples/fake_ci --scenario tests/fixtures/demo/scenario.json \
  --kubeconfig-out "$work/kubeconfig" >"$work/fake.out" 2>"$work/fake.err" &
pids+=($!)
ci_url=$(wait_line "$work/fake.out" FAKE_CI_URL)
echo "  deck and Kubernetes API at $ci_url: jobs 0001 and 0002 log in as ci-user-1, 0003 as ci-user-2;"
echo "  an AWS job and a finished job are not counted"

say "Starting Prometheus with its remote-write receiver"
prom_port=$(free_port)
cat >"$work/prometheus.yml" <<'YAML'
global: {}
YAML
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/prometheus" \
  --web.listen-address="127.0.0.1:$prom_port" --web.enable-remote-write-receiver \
  >"$work/prometheus.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$prom_port/-/ready" >/dev/null && break
  sleep 0.1
done
echo "  Prometheus at http://127.0.0.1:$prom_port"

say "Running the reporter (cycle every 5s, /metrics and remote-write)"
port=$(free_port)
echo "  vsphere-ci-session-metrics start --kubeconfig KUBECONFIG --vsphere $vcsim_url \\"
echo "      --vsphere-user reporter@vsphere.local --vsphere-passwd-file PASSWORD_FILE --prow $ci_url \\"
echo "      --listen-port $port --interval 5s --remote-write http://127.0.0.1:$prom_port/api/v1/write"
printf 'demo-password\n' >"$work/password"
target/debug/vsphere-ci-session-metrics start \
  --kubeconfig "$work/kubeconfig" \
  --vsphere "$vcsim_url" \
  --vsphere-user reporter@vsphere.local \
  --vsphere-passwd-file "$work/password" \
  --prow "$ci_url" \
  --listen-port "$port" \
  --interval 5s \
  --remote-write "http://127.0.0.1:$prom_port/api/v1/write" \
  2>"$work/reporter.log" &
reporter=$!
pids+=("$reporter")
for _ in $(seq 1 300); do
  curl -sf "http://127.0.0.1:$port/metrics" >"$work/metrics" 2>/dev/null && break
  sleep 0.1
done
[ -s "$work/metrics" ] || { echo "the reporter did not serve /metrics"; cat "$work/reporter.log"; exit 1; }

say "/metrics: sessions per CI job, user and user agent (the original's series)"
grep '^vsphere_ci_user_sessions_correlated{' "$work/metrics"
say "/metrics: exact sessions per user and agent, each counted once, and jobs per user"
grep -E '^vsphere_ci_user_sessions_(open|user_jobs|vcenter_sessions|vcenter_up|prow_up|reporter_logins_total)\b' "$work/metrics"

say "Prometheus: sum by (username) (vsphere_ci_user_sessions_open)"
for _ in $(seq 1 50); do
  result=$(curl -sf "http://127.0.0.1:$prom_port/api/v1/query" \
    --data-urlencode 'query=sum by (username) (vsphere_ci_user_sessions_open)')
  case "$result" in *'"result":[]'*) sleep 0.2 ;; *) break ;; esac
done
echo "$result" | python3 -c '
import json, sys
for s in json.load(sys.stdin)["data"]["result"]:
    print("  %-12s %s" % (s["metric"].get("username", ""), s["value"][1]))'

say "Stopping the reporter (SIGTERM: stale markers, vCenter logout)"
kill -TERM "$reporter"
wait "$reporter" || true
tail -n 4 "$work/reporter.log"
