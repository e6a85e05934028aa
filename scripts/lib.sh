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
