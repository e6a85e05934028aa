#!/usr/bin/env bash
# Builds the container image from the Dockerfile, unchanged, with Debian's
# podman, and runs it against vcsim, the fake deck and build cluster and a
# Prometheus receiving remote-write, all on 127.0.0.1.
#
# No registry is reachable and no Docker engine runs here, so the base images
# are made locally first:
#   debian:bookworm-slim   debootstrap --variant=minbase bookworm, imported
#   rust:1.95-bookworm     that, with gcc and this machine's Rust toolchain
# Checks: `--help`; `once` exits 0 and Prometheus has the expected series; the
# process runs as uid 65532 and cannot write its root filesystem. Prints the
# image's size and how long each step took.
#
# Usage: scripts/image.sh   (scripts/test.sh runs it when CI_IMAGE=1)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }
started=$SECONDS
step() { printf '    (%ds so far)\n' "$((SECONDS - started))"; }

sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
missing=()
for tool in podman:podman debootstrap:debootstrap runc:runc; do
  command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "Installing ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update -q
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# What works on these machines: runc with cgroupfs, the host's network, and
# explicit limits (the defaults ask for more than the sandbox allows).
podman=("${sudo_cmd[@]}" podman --runtime runc --cgroup-manager cgroupfs)
limits=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
tag=vsphere-ci-session-metrics:test

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  "${sudo_cmd[@]}" rm -rf "$work"
}
trap cleanup EXIT

if ! "${podman[@]}" image exists debian:bookworm-slim; then
  log "Making debian:bookworm-slim (debootstrap --variant=minbase bookworm)"
  "${sudo_cmd[@]}" debootstrap --variant=minbase bookworm "$work/rootfs" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 ||
    { tail -n 20 "$work/debootstrap.log"; exit 1; }
  # Slim as Debian's own -slim image: no downloaded packages, package
  # lists, apt caches, documentation, manuals or translations, now or after
  # a later apt-get install.
  rootfs=$work/rootfs
  "${sudo_cmd[@]}" sh -c "
    rm -rf '$rootfs'/var/cache/apt/archives/*.deb '$rootfs'/var/cache/apt/*.bin '$rootfs'/var/lib/apt/lists/*
    rm -rf '$rootfs'/usr/share/doc/* '$rootfs'/usr/share/man/* '$rootfs'/usr/share/info/* '$rootfs'/usr/share/locale/*
    cat >'$rootfs'/etc/apt/apt.conf.d/docker-clean <<'CONF'
DPkg::Post-Invoke { \"rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true\"; };
APT::Update::Post-Invoke { \"rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true\"; };
Dir::Cache::pkgcache \"\";
Dir::Cache::srcpkgcache \"\";
CONF
    cat >'$rootfs'/etc/dpkg/dpkg.cfg.d/docker-slim <<'CONF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
CONF
  "
  "${sudo_cmd[@]}" tar -C "$rootfs" -c . | "${podman[@]}" import - debian:bookworm-slim >/dev/null
  "${sudo_cmd[@]}" rm -rf "$work/rootfs"
  step
fi

if ! "${podman[@]}" image exists rust:1.95-bookworm; then
  log "Making rust:1.95-bookworm (debian:bookworm-slim with gcc and this machine's Rust toolchain)"
  sysroot=$(rustc --print sysroot)
  case "$(rustc --version)" in
    "rustc 1.95."*) ;;
    *) echo "the Dockerfile builds with Rust 1.95; this machine has $(rustc --version)"; exit 1 ;;
  esac
  mkdir -p "$work/rust/toolchain"
  # The compiler and the standard library; not the documentation.
  cp -a "$sysroot/bin" "$sysroot/lib" "$work/rust/toolchain/"
  cat >"$work/rust/Containerfile" <<'EOF'
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY toolchain /usr/local/rust
ENV CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
EOF
  "${podman[@]}" build --network host "${limits[@]}" -t rust:1.95-bookworm "$work/rust" >"$work/rust.log" 2>&1 ||
    { tail -n 20 "$work/rust.log"; exit 1; }
  rm -rf "$work/rust"
  step
fi

log "podman build -f Dockerfile (unchanged)"
build_started=$SECONDS
# Crates come from this machine's cargo cache when it has them.
mkdir -p "$HOME/.cargo/registry"
"${podman[@]}" build --network host "${limits[@]}" \
  --volume "$HOME/.cargo/registry:/usr/local/cargo/registry" \
  -t "$tag" -f Dockerfile . >"$work/build.log" 2>&1 || { tail -n 30 "$work/build.log"; exit 1; }
build_seconds=$((SECONDS - build_started))
size=$("${podman[@]}" image inspect -f '{{.Size}}' "$tag")
echo "    built $tag in ${build_seconds}s; $((size / 1024 / 1024)) MiB"

log "Peers: vcsim, the fake deck and build cluster, Prometheus"
scripts/build-vcsim.sh target/peers/vcsim >/dev/null
cargo build --quiet --example fake_ci
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
target/peers/vcsim -session "ci-user-1@vsphere.local,openshift-install,2" \
  -session 'VSPHERE.LOCAL\ci-user-1,k8s-csi-useragent-ci-op-demo0001-a1b2c,2' \
  >"$work/vcsim.out" 2>"$work/vcsim.err" &
pids+=($!)
vcsim_url=$(wait_line "$work/vcsim.out" VCSIM_URL)
mkdir -p "$work/in"
target/debug/examples/fake_ci --scenario tests/fixtures/demo/scenario.json \
  --kubeconfig-out "$work/in/kubeconfig" >"$work/fake.out" 2>"$work/fake.err" &
pids+=($!)
ci_url=$(wait_line "$work/fake.out" FAKE_CI_URL)
prom_port=$(free_port)
start_prometheus "$work" "$prom_port"
printf 'demo-password\n' >"$work/in/password"
chmod -R a+rX "$work/in"

run=("${podman[@]}" run --rm --network host --read-only "${limits[@]}")

log "The image: --help"
"${run[@]}" "$tag" --help >"$work/help.txt"
grep -q '^Usage: vsphere-ci-session-metrics' "$work/help.txt" || { cat "$work/help.txt"; exit 1; }
echo "    ok"

log "The image: once against vcsim, the fakes and Prometheus"
"${run[@]}" -v "$work/in:/in:ro" "$tag" once \
  --vsphere "$vcsim_url" --vsphere-user reporter@vsphere.local --vsphere-passwd-file /in/password \
  --prow "$ci_url" --kubeconfig /in/kubeconfig --listen-port 0 \
  --remote-write "http://127.0.0.1:$prom_port/api/v1/write" >"$work/once.log" 2>&1 ||
  { echo "once failed:"; cat "$work/once.log"; exit 1; }
query() {
  curl -sf "http://127.0.0.1:$prom_port/api/v1/query" --data-urlencode "query=$1" |
    python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(" ".join(sorted(s["value"][1] for s in r)) or "none")'
}
# The scenario's jobs 0001 and 0002 log in as ci-user-1: 4 sessions each.
got=$(query 'sum by (ci_job) (vsphere_ci_user_sessions_correlated{username="ci-user-1"})')
up=$(query 'vsphere_ci_user_sessions_vcenter_up')
echo "    correlated per job: $got; vcenter_up: $up"
[ "$got" = "4 4" ] && [ "$up" = "1" ] || { echo "unexpected series"; cat "$work/once.log"; exit 1; }

log "The image: uid 65532 and a read-only root filesystem"
user=$("${podman[@]}" image inspect -f '{{.Config.User}}' "$tag")
uid=$("${run[@]}" --entrypoint /usr/bin/id "$tag" -u)
echo "    image user $user, process uid $uid"
[ "$user" = "65532:65532" ] && [ "$uid" = "65532" ] || exit 1
# As root, so only the read-only mount (not file permissions) can refuse.
if "${run[@]}" --user 0 --entrypoint /usr/bin/touch "$tag" /probe 2>/dev/null; then
  echo "the root filesystem is writable"; exit 1
fi
# And the check itself works: without --read-only, root may write there.
"${podman[@]}" run --rm --network host "${limits[@]}" --user 0 --entrypoint /usr/bin/touch "$tag" /probe
echo "    writing to / fails with --read-only (and works without it), as it should"

log "Image $tag: $((size / 1024 / 1024)) MiB, built in ${build_seconds}s; whole script $((SECONDS - started))s"
