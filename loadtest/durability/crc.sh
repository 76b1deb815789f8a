#!/usr/bin/env bash
# Recovery and ingest timing for a change on the log's hot path (first used for the CRC-32C
# implementation, issue 12). Measures, never asserts. RUNS times (default 3):
#  - ingest: EVENTS (default 1,000,000) 200-byte events into an empty data dir, durability
#    `os`, one pipelined producer (`ssehub publish --lines`); events/s;
#  - recovery: restart on the last run's log and read the `log recovered ... ms=` line.
# Prints each run and the medians. Server on core 0, producer on core 1, loopback only.
# Same server setup as run.sh, without its fsync and replay parts. BIN=path times another
# build (e.g. a copy of the previous revision's) instead of building this worktree, so that
# two builds can be run alternately under the same load.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -n "${BIN:-}" ]; then
  bin=$BIN
else
  cargo build --release --quiet
  bin=$PWD/target/release/ssehub
fi
events=${EVENTS:-1000000}
runs=${RUNS:-3}
work=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill $pid 2>/dev/null; rm -rf "$work"' EXIT
port=$((20000 + RANDOM % 20000))

start_server() { # data_dir
  cat >"$work/cfg.toml" <<CFG
[http]
listen = "127.0.0.1:$port"
[ingest]
socket = "$work/ingest.sock"
[history]
data_dir = "$1"
durability = "os"
max_events = 1000
CFG
  taskset -c 0 "$bin" --config "$work/cfg.toml" 2>"$work/server.log" &
  pid=$!
  for _ in $(seq 1200); do grep -q "listening" "$work/server.log" 2>/dev/null && return; sleep 0.05; done
  echo "server did not start"; cat "$work/server.log"; exit 1
}
stop_server() { kill -TERM $pid; wait $pid || true; pid=; }
median() { sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

python3 -c "
import sys
line = 'x' * 190
out = sys.stdout
for i in range($events):
    out.write(f'{i:09d} {line}\n')
" >"$work/payloads"

echo "- binary $bin$([ -z "${BIN:-}" ] && echo " at revision \`$(git rev-parse --short HEAD)\`$(git diff --quiet HEAD || echo ' (+ uncommitted changes)')"); $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), Linux $(uname -r); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
: >"$work/rates"
for i in $(seq "$runs"); do
  rm -rf "$work/data"
  start_server "$work/data"
  t0=$(date +%s.%N)
  taskset -c 1 "$bin" publish --socket "$work/ingest.sock" --topic bench --lines <"$work/payloads" >"$work/ids"
  t1=$(date +%s.%N)
  n=$(wc -l <"$work/ids")
  stop_server
  rate=$(python3 -c "print(round($n/($t1-$t0)))")
  echo "- ingest run $i: $n events in $(python3 -c "print(f'{$t1-$t0:.2f}')") s = $rate events/s"
  echo "$rate" >>"$work/rates"
done
: >"$work/ms"
for i in $(seq "$runs"); do
  start_server "$work/data"
  line=$(grep 'log recovered' "$work/server.log" | sed 's/^[0-9.]* //')
  stop_server
  echo "- recovery run $i: \`$line\`"
  echo "$line" | sed 's/.* ms=//' >>"$work/ms"
done
echo "- load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "- **median ingest: $(median <"$work/rates") events/s; median recovery: $(median <"$work/ms") ms**"
