#!/usr/bin/env bash
# How long the loop stops answering while the memory of a large peak is given back
# (issue 28 item 4).
#
#   bash loadtest/trim_stall.sh [BIN] [EVENTS] [TOPICS] [SIZE]
#
# One fresh server (memory only, pinned to core 0; BIN defaults to target/release/ssehub,
# pass another build for a before/after). A pipelining Python producer on core 1 fills the
# history with EVENTS events (300,000 by default) of SIZE bytes (1,000) round-robin over
# TOPICS topics (300): ~330 MB retained in scattered small blocks, kept `max_age` (4 s)
# and then dropped at once. From the end of the flood a prober on core 1 asks `/healthz`
# on one keep-alive connection every ~1 ms for WINDOW seconds (25: past the drop and two
# 10 s heap trims) and records each round trip. Prints the server's private memory
# (Private_Clean + Private_Dirty of smaps_rollup) at the peak and each second after, the
# round trips' p50/p99/p99.9/worst, the five worst with their time after the flood and
# the worst of each second (to tell the history's expiry from the memory's release), and
# the heap trim counters of /metrics. Bounded: the flood has a 180 s timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/ssehub}
events=${2:-300000}
topics=${3:-300}
size=${4:-1000}
window=${WINDOW:-25}
[ -x "$bin" ] || cargo build --release --quiet --bin ssehub
dir=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

# shellcheck source=loadtest/lib.sh
source loadtest/lib.sh

# Below the ephemeral range and not in use in any state (as in before_after.sh).
port=$((20000 + RANDOM % 12000))
while ss -tan | grep -q ":$port "; do port=$((20000 + RANDOM % 12000)); done
cat >"$dir/m.toml" <<EOF
[http]
listen = "127.0.0.1:$port"
[ingest]
socket = "$dir/ingest.sock"
[history]
max_events = 1000000
max_age = "4s"
max_bytes = 4294967296
EOF
taskset -c 0 "$bin" serve --config "$dir/m.toml" 2>"$dir/server.log" &
pid=$!
for _ in $(seq 100); do
  [ -S "$dir/ingest.sock" ] && grep -q "listening http=" "$dir/server.log" && break
  sleep 0.1
done
if ! grep -q "listening http=" "$dir/server.log"; then
  echo "server $bin did not start" >&2
  cat "$dir/server.log" >&2
  exit 1
fi
echo "binary: $bin ($(sha256sum "$bin" | cut -c1-12)); load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "idle: private $(private_kib "$pid") KiB"
trims0=$(metric ssehub_heap_trims_total)
secs0=$(metric ssehub_heap_trim_seconds_total)

taskset -c 1 timeout 180 python3 - "$dir/ingest.sock" "$events" "$topics" "$size" <<'PY'
import socket, sys, threading
path, n, topics, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_UNIX)
s.connect(path)
data = "x" * size
def feed():
    buf = []
    for i in range(n):
        buf.append('{"topic":"t%d","data":"%s"}\n' % (i % topics, data))
        if len(buf) == 1024:
            s.sendall("".join(buf).encode()); buf = []
    s.sendall("".join(buf).encode())
t = threading.Thread(target=feed); t.start()
f = s.makefile("rb")
ok = sum(1 for _ in range(n) if f.readline().startswith(b'{"ok":true'))
t.join()
assert ok == n, f"{ok} of {n} ok"
PY
echo "peak: private $(private_kib "$pid") KiB, history $(metric ssehub_history_bytes) bytes in $(metric ssehub_history_events) events"

# The prober: one keep-alive connection, GET /healthz, ~1 ms apart; writes "t rtt" in
# seconds after its start.
taskset -c 1 python3 - "$port" "$window" >"$dir/rtt" <<'PY' &
import socket, sys, time
port, window = int(sys.argv[1]), float(sys.argv[2])
req = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
def connect():
    c = socket.create_connection(("127.0.0.1", port))
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return c
c = connect()
start = time.monotonic()
out = []
while True:
    t0 = time.monotonic()
    if t0 - start > window:
        break
    try:
        c.sendall(req)
        buf = b""
        while True:
            chunk = c.recv(4096)
            if not chunk:
                raise ConnectionError
            buf += chunk
            head, sep, body = buf.partition(b"\r\n\r\n")
            if sep:
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        length = int(v)
                if len(body) >= length:
                    break
        keep = b"connection: close" not in head.lower()
    except (ConnectionError, OSError):
        c = connect(); continue
    t1 = time.monotonic()
    out.append("%.6f %.6f" % (t0 - start, t1 - t0))
    if not keep:
        c.close(); c = connect()
    time.sleep(max(0.0, 0.001 - (time.monotonic() - t1)))
print("\n".join(out))
PY
prober=$!
for s in $(seq "$window"); do
  sleep 1
  printf '%s ' "$(private_kib "$pid")" >>"$dir/mem"
done
wait "$prober"
echo "private KiB each second after the flood: $(cat "$dir/mem")"
echo "heap trims: $(awk -v a="$(metric ssehub_heap_trims_total)" -v b="$trims0" 'BEGIN { print a - b }'), \
seconds in them: $(awk -v a="$(metric ssehub_heap_trim_seconds_total)" -v b="$secs0" 'BEGIN { printf "%.4f", a - b }')"
python3 - "$dir/rtt" <<'PY'
import sys
rows = [tuple(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
r = sorted(x[1] for x in rows)
q = lambda p: r[min(len(r) - 1, int(p * len(r)))] * 1000
print("healthz round trips: %d, p50 %.3f ms, p99 %.3f ms, p99.9 %.3f ms, worst %.3f ms" % (
    len(r), q(0.5), q(0.99), q(0.999), r[-1] * 1000))
worst = sorted(rows, key=lambda x: -x[1])[:5]
print("five worst (s after the flood: ms): " + ", ".join("%.2f: %.2f" % (t, v * 1000) for t, v in worst))
per_second = {}
for t, v in rows:
    per_second[int(t)] = max(per_second.get(int(t), 0.0), v)
print("worst ms in each second after the flood: " + " ".join("%.1f" % (per_second[s] * 1000) for s in sorted(per_second)))
PY
