#!/usr/bin/env bash
# Builds the vcsim test peer (tests/vcsim/main.go): govmomi's vCenter simulator
# from Debian's golang-github-vmware-govmomi-dev, compiled in GOPATH mode with
# Debian's golang-go, so no Go module download is needed.
#
# Usage: scripts/build-vcsim.sh [OUTPUT]   (default: target/peers/vcsim)
# Skips the build when OUTPUT is newer than its sources.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-$root/target/peers/vcsim}
govmomi=/usr/share/gocode/src/github.com/vmware/govmomi
src=$root/tests/vcsim/main.go

if ! command -v go >/dev/null 2>&1 || [ ! -d "$govmomi" ]; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo=sudo; fi
    packages=(golang-go golang-github-vmware-govmomi-dev)
    # Refresh the package lists only when the install cannot proceed without it.
    if ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y "${packages[@]}"; then
        $sudo apt-get update
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y "${packages[@]}"
    fi
fi

if [ -x "$out" ] && [ "$out" -nt "$src" ] && [ "$out" -nt "${BASH_SOURCE[0]}" ] \
    && [ "$out" -nt "$govmomi/simulator" ]; then
    echo "vcsim is up to date: $out"
    exit 0
fi

mkdir -p "$(dirname "$out")"
# GOPATH mode: govmomi 0.24 and its one dependency (google/uuid) live under
# /usr/share/gocode. The build cache goes under target/ so a read-only or
# missing $HOME does not matter.
cd "$root"
GO111MODULE=off GOPATH=/usr/share/gocode GOFLAGS= \
    GOCACHE="${GOCACHE:-$root/target/peers/go-cache}" \
    go build -o "$out.tmp" ./tests/vcsim
mv -f "$out.tmp" "$out"
echo "built $out"
