#!/usr/bin/env bash
# One-command demo (README "Run it"): a simulated vCenter with CI sessions,
# healthy ones and leaks, a simulated Prow deck and build cluster, a local
# Prometheus with its remote-write receiver, and the reporter between them.
# Shows what /metrics serves and what Prometheus stored, saves a picture of
# Prometheus's graph of the sessions by job and user agent, walks through the
# on-call commands (sessions, reap), then stops everything.
#
# Usage: scripts/demo.sh [--keep]
#   --keep  leave everything running at the end and print the URLs
set -euo pipefail
cd "$(dirname "$0")/.."

keep=false
case "${1:-}" in
  --keep) keep=true ;;
  "") ;;
  *) echo "usage: $0 [--keep]" >&2; exit 2 ;;
esac

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

say "Installing what is missing (Debian packages: Go, govmomi, Prometheus, curl, Chromium)"
scripts/install-deps.sh
if ! command -v chromium >/dev/null; then
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -q
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium
fi
say "Building the vCenter simulator and the reporter"
scripts/build-vcsim.sh target/peers/vcsim
cargo build --quiet --bin vsphere-ci-session-metrics --example fake_ci

work=$(mktemp -d)
pids=()
finished=false
cleanup() {
  # --keep leaves everything running only after a demo that got to its end.
  if $keep && $finished; then return; fi
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=scripts/lib.sh
. scripts/lib.sh

say "Starting vcsim with CI sessions: healthy ones and leaks (user, user agent, count)"
# Healthy: job 0001's CSI driver names its cluster (infraID ci-op-demo0001-a1b2c)
# in its agent; job 0003's machine API connects from its master VM; installers
# of ci-user-1 (used by jobs 0001 and 0002). Leaked: a cluster whose job ended
# (namespace ci-op-gone1234) left its CSI driver and cloud provider logged in;
# ci-user-3 holds a session though no job uses it. Not CI: an administrator's
# browser and a vCenter extension.
sessions=(
  "ci-user-1@vsphere.local,openshift-install/4.21 govmomi/0.46,4"
  'VSPHERE.LOCAL\ci-user-1,k8s-csi-useragent-ci-op-demo0001-a1b2c,2'
  "ci-user-1@vsphere.local,k8s-csi-useragent-ci-op-gone1234-q1w2e-7hj3k,2"
  "ci-user-3@vsphere.local,govc/0.37.3,1"
  "administrator@vsphere.local,Mozilla/5.0,1"
  "vpxd-extension-1a2b3c4d@vsphere.local,VMware vim-java 1.0,1"
)
sessions_from=(
  "127.0.0.23,ci-user-2@vsphere.local,machineAPIvSphereProvider,3"
  "127.0.0.31,ci-user-2@vsphere.local,k8s-cloud-provider-vsphere,1"
)
vms=(
  "ci-op-demo0003-x9k2p-master-0,127.0.0.23"
  "ci-op-gone1234-q1w2e-worker-0-ab12c,127.0.0.31"
)
args=()
for s in "${sessions[@]}"; do
  echo "  $s"
  args+=(-session "$s")
done
for s in "${sessions_from[@]}"; do
  echo "  from ${s%%,*}: ${s#*,}"
  args+=(-session-from "$s")
done
for v in "${vms[@]}"; do
  echo "  VM ${v%%,*} with guest IP ${v#*,}"
  args+=(-vm "$v")
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
start_prometheus "$work" "$prom_port"
echo "  Prometheus at http://127.0.0.1:$prom_port"

say "Running the reporter (cycle every 2s, /metrics and remote-write)"
port=$(free_port)
echo "  vsphere-ci-session-metrics start --kubeconfig KUBECONFIG --vsphere $vcsim_url \\"
echo "      --vsphere-user reporter@vsphere.local --vsphere-passwd-file PASSWORD_FILE --prow $ci_url \\"
echo "      --listen-port $port --interval 2s --remote-write http://127.0.0.1:$prom_port/api/v1/write"
printf 'demo-password\n' >"$work/password"
# The leak rules: the administrator is a person, not CI; the reaper may free
# orphaned sessions of the CI accounts only. The demo's sessions are seconds
# old, so its age and idle thresholds are 0 (the defaults are 2h and 1h).
cat >"$work/demo.yaml" <<'YAML'
leaks:
  exclude_users: ['administrator', 'vpxd-.*', 'vpxd-extension-.*']
reaper:
  users: ['ci-user-[0-9]+']
  min_age: 0s
  min_idle: 0s
  recheck_delay: 2s
YAML
target/debug/vsphere-ci-session-metrics start --config "$work/demo.yaml" \
  --kubeconfig "$work/kubeconfig" \
  --vsphere "$vcsim_url" \
  --vsphere-user reporter@vsphere.local \
  --vsphere-passwd-file "$work/password" \
  --prow "$ci_url" \
  --listen-port "$port" \
  --interval 2s \
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

say "/metrics: the leaks, by reason, and the sessions proven to be a running job's"
grep -E '^vsphere_ci_user_sessions_(orphaned|job_sessions)\{' "$work/metrics"

say "Prometheus's graph of the sessions by CI job and user agent (the original's view)"
# A few cycles of history first, so the graph has lines.
query='sum by (ci_job, user_agent) (vsphere_ci_user_sessions_correlated)'
for _ in $(seq 1 100); do
  count=$(curl -sf "http://127.0.0.1:$prom_port/api/v1/query" \
    --data-urlencode "query=count_over_time(vsphere_ci_user_sessions_vcenter_up[1m])" |
    python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else 0)' ||
    echo 0)
  [ "${count%.*}" -ge 6 ] && break
  sleep 0.5
done
graph_url="http://127.0.0.1:$prom_port/graph?g0.expr=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1]))' "$query")&g0.tab=0&g0.stacked=1&g0.range_input=1m"
mkdir -p target/demo
picture=$PWD/target/demo/demo-sessions.png
rm -f "$picture"
# Headless, with nothing that reaches beyond this machine.
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$work/chromium" --window-size=1400,900 --hide-scrollbars \
  --virtual-time-budget=15000 --screenshot="$picture" "$graph_url" >"$work/chromium.log" 2>&1 || true
if [ -s "$picture" ] && head -c 8 "$picture" | grep -q PNG; then
  echo "  saved $picture"
else
  echo "  Chromium wrote no picture:"; tail -n 5 "$work/chromium.log"; exit 1
fi

if ! $keep; then
  say "Stopping the reporter (SIGTERM: stale markers, vCenter logout)"
  kill -TERM "$reporter"
  wait "$reporter" || true
  tail -n 4 "$work/reporter.log"
fi

# The on-call commands take the same flags and config as the reporter.
oncall=(--config "$work/demo.yaml" --kubeconfig "$work/kubeconfig" --vsphere "$vcsim_url"
  --vsphere-user reporter@vsphere.local --vsphere-passwd-file "$work/password" --prow "$ci_url")
cli=target/debug/vsphere-ci-session-metrics

say "On call: vsphere-ci-session-metrics sessions (who holds the sessions)"
"$cli" sessions "${oncall[@]}"
say "On call: vsphere-ci-session-metrics sessions --orphaned (what no running job can own)"
"$cli" sessions --orphaned "${oncall[@]}"
say "On call: vsphere-ci-session-metrics reap (a dry run: what would be freed)"
"$cli" reap "${oncall[@]}" 2>"$work/dry-run.log" || { echo "reap failed:"; cat "$work/dry-run.log"; exit 1; }
say "On call: vsphere-ci-session-metrics reap --apply"
"$cli" reap --apply "${oncall[@]}" 2>"$work/reap.log" || { echo "reap --apply failed:"; cat "$work/reap.log"; exit 1; }
grep 'Terminated a leaked session' "$work/reap.log" | sed 's/^/  /' || true
say "After: sessions --orphaned"
"$cli" sessions --orphaned "${oncall[@]}"

# Check what the demo claims: no leak left, every running job's session
# and every excluded user's still there.
"$cli" sessions -o json "${oncall[@]}" >"$work/after.json"
python3 - "$work/after.json" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
status = {}
for s in doc["sessions"]:
    status[s["status"]] = status.get(s["status"], 0) + 1
want = {"attributed": 5, "shared": 4, "exempt": 2}
left = {k: status.get(k, 0) for k in ["orphaned", *want]}
ok = left == {"orphaned": 0, **want}
print(("  OK: " if ok else "  UNEXPECTED: ") + ", ".join(f"{k} {v}" for k, v in left.items()))
sys.exit(0 if ok else 1)
PY

say "The graph of the sessions by CI job and user agent"
echo "  $picture"
finished=true
if $keep; then
  say "Still running (--keep): stop them with: kill ${pids[*]}"
  echo "  vCenter (vcsim):        $vcsim_url/sdk"
  echo "  Prow deck and Kubernetes API (fake): $ci_url"
  echo "  Prometheus:             http://127.0.0.1:$prom_port/graph"
  echo "  the graph above:        $graph_url"
  echo "  reporter:               http://127.0.0.1:$port/metrics"
  echo "  files (config, kubeconfig, logs): $work"
fi
