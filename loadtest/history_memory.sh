#!/usr/bin/env bash
# What retained history really costs, next to what `history.max_bytes` counts for it.
#
#   bash loadtest/history_memory.sh [EVENTS]      (BIN=path/to/ssehub: another build)
#
# Two fresh servers (memory only, pinned to core 0), each flooded over the ingest socket by
# a pipelining Python producer on core 1:
#   events: EVENTS events of 100-byte data on one topic, all retained
#           (max_events = EVENTS): server private memory per event vs ssehub_history_bytes
#           per event (frame + EVENT_OVERHEAD + EVENT_PER_TOPIC);
#   topics: EVENTS events, each on its own 100-byte topic name: private memory per topic
#           (topic metadata + its one event) vs what max_bytes counts for both.
# Private memory is Private_Clean + Private_Dirty of /proc/PID/smaps_rollup, after minus
# before. Prints one markdown table row per case. Bounded: each flood has a 120 s timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-500000}
bin=${BIN:-target/release/ssehub}
[ -n "${BIN:-}" ] || cargo build --release --quiet
dir=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

# shellcheck source=loadtest/lib.sh
source loadtest/lib.sh

run_case() {
  local name=$1 history=$2 topic_expr=$3
  port=$((20000 + RANDOM % 20000))
  rm -f "$dir/ingest.sock"
  cat >"$dir/m.toml" <<EOF
[http]
listen = "127.0.0.1:$port"
[ingest]
socket = "$dir/ingest.sock"
[history]
$history
EOF
  taskset -c 0 "$bin" serve --config "$dir/m.toml" 2>"$dir/server.log" &
  pid=$!
  for _ in $(seq 50); do [ -S "$dir/ingest.sock" ] && break; sleep 0.1; done
  local before
  before=$(private_kib "$pid")
  taskset -c 1 timeout 120 python3 - "$dir/ingest.sock" "$events" "$topic_expr" <<'PY'
import socket, sys, threading
path, n, expr = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_UNIX)
s.connect(path)
data = "x" * 100
def feed():
    buf = []
    for i in range(n):
        topic = eval(expr)
        buf.append('{"topic":"%s","data":"%s"}\n' % (topic, data))
        if len(buf) == 4096:
            s.sendall("".join(buf).encode()); buf = []
    s.sendall("".join(buf).encode())
t = threading.Thread(target=feed); t.start()
f = s.makefile("rb")
ok = sum(1 for _ in range(n) if f.readline().startswith(b'{"ok":true'))
t.join()
assert ok == n, f"{ok} of {n} ok"
PY
  local after retained bytes topics
  after=$(private_kib "$pid")
  retained=$(metric ssehub_history_events)
  bytes=$(metric ssehub_history_bytes)
  topics=$(metric ssehub_topics)
  awk -v name="$name" -v b="$before" -v a="$after" -v r="$retained" -v by="$bytes" -v t="$topics" 'BEGIN {
    printf "| %s | %d | %d | %d KiB | %.0f | %.0f | %.2f |\n", name, r, t, a - b, (a - b) * 1024 / r, by / r, (a - b) * 1024 / by
  }'
  kill "$pid"; wait "$pid" 2>/dev/null || true
  pid=
}

echo "| case | events retained | topics | private memory added | bytes / event | counted / event | real / counted |"
echo "|---|---:|---:|---:|---:|---:|---:|"
run_case "one topic, 100 B data" "max_events = $events
max_bytes = 4294967296" '"busy"'
run_case "a 100 B topic name per event" "max_events = 10
max_bytes = 4294967296" '"t%099d" % i'
