#!/usr/bin/env bash
# Installs the Debian packages the tests and the demo use, only those missing:
# Go and govmomi (to build the vCenter simulator), Prometheus 2.42 with
# promtool, VictoriaMetrics, the Pushgateway, openssl (test certificates) and
# curl (the demo). Also the rustfmt and clippy components.
set -euo pipefail

sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)

# Each entry: a package and a file that proves it is installed.
packages=(
  "golang-go:/usr/bin/go"
  "golang-github-vmware-govmomi-dev:/usr/share/gocode/src/github.com/vmware/govmomi/simulator"
  "prometheus:/usr/bin/prometheus"
  "prometheus:/usr/bin/promtool"
  "prometheus-pushgateway:/usr/bin/prometheus-pushgateway"
  "victoria-metrics:/usr/bin/victoria-metrics"
  "openssl:/usr/bin/openssl"
  "ca-certificates:/etc/ssl/certs/ca-certificates.crt"
  "curl:/usr/bin/curl"
  "python3:/usr/bin/python3"
  "procps:/bin/kill"
)
missing=()
for entry in "${packages[@]}"; do
  pkg=${entry%%:*}
  file=${entry#*:}
  [ -e "$file" ] || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "Installing Debian packages: ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update -q
  # shellcheck disable=SC2046
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    $(printf '%s\n' "${missing[@]}" | sort -u)
fi

if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  echo "Adding rustfmt and clippy"
  if command -v rustup >/dev/null 2>&1; then
    rustup component add rustfmt clippy
  else
    # A Debian-packaged toolchain has no rustup.
    "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q rustfmt rust-clippy
  fi
fi
