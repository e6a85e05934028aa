# Shell helpers shared by scripts/demo.sh and scripts/image.sh (sourced).

# Wait for a `NAME=value` line in a file (a peer announcing its address),
# print the value; fail with the file's content after 30 s.
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

# A TCP port free on 127.0.0.1 right now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Start Prometheus with its remote-write receiver on 127.0.0.1:PORT, its
# config, data and log in DIR, and wait until it is ready. Its pid is added
# to the caller's `pids` array (for the caller's cleanup).
start_prometheus() {
  local dir=$1 port=$2
  printf 'global: {}\n' >"$dir/prometheus.yml"
  prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/prometheus" \
    --web.listen-address="127.0.0.1:$port" --web.enable-remote-write-receiver \
    >"$dir/prometheus.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$port/-/ready" >/dev/null && return 0
    sleep 0.1
  done
  echo "Prometheus did not start:" >&2
  cat "$dir/prometheus.log" >&2
  return 1
}
