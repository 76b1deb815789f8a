#!/usr/bin/env bash
# Two ssehub binaries side by side on the same machine in one session: idle memory per
# stream and fan-out deliveries per server CPU-second, alternating the binaries so that
# drift in the machine's state hits both alike.
#
#   bash loadtest/before_after.sh BEFORE_BIN AFTER_BIN [REPS] [IDLE_STREAMS] [FAN_SUBS]
#
# Each run starts a fresh server pinned to core 0 (defaults, keepalive 5s) and drives it
# with ssehub-loadtest pinned to core 1: `idle --streams IDLE_STREAMS --hold 12s`, then
# `fanout --subscribers FAN_SUBS --events 100 --size 100 --rate 10`. Prints one line per
# run (label, bytes per idle stream, deliveries per CPU-s, p99, load average) and writes
# the raw JSON reports next to it in $OUT (default: a temp dir, printed at the end).
# Bounded: every load run has its own deadline.
set -euo pipefail
cd "$(dirname "$0")/.."
before=$1
after=$2
reps=${3:-3}
idle_n=${4:-15000}
fan_n=${5:-10000}
loadtest=target/release/ssehub-loadtest
cargo build --release -p ssehub-loadtest --quiet
out=${OUT:-$(mktemp -d)}
sources=127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4
pid=
dir=$(mktemp -d)
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

start_server() {
  local bin=$1
  # Below the ephemeral range (32768-60999), where the load's own client sockets could
  # hold the port; and not in use in any state.
  port=$((20000 + RANDOM % 12000))
  while ss -tan | grep -q ":$port "; do port=$((20000 + RANDOM % 12000)); done
  rm -f "$dir/ingest.sock"
  printf '[http]\nlisten = "127.0.0.1:%s"\n[ingest]\nsocket = "%s"\n[streams]\nkeepalive = "5s"\n' \
    "$port" "$dir/ingest.sock" >"$dir/m.toml"
  taskset -c 0 "$bin" serve --config "$dir/m.toml" 2>"$dir/server.log" &
  pid=$!
  for _ in $(seq 100); do
    [ -S "$dir/ingest.sock" ] && grep -q "listening http=" "$dir/server.log" && return 0
    sleep 0.1
  done
  echo "server $bin did not start" >&2
  cat "$dir/server.log" >&2
  return 1
}

stop_server() {
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  pid=
}

run_one() {
  local label=$1 bin=$2 rep=$3
  start_server "$bin"
  taskset -c 1 "$loadtest" idle --addr "127.0.0.1:$port" --streams "$idle_n" --hold 12s \
    --server-pid "$pid" --sources "$sources" >"$out/$label-$rep-idle.json"
  stop_server
  start_server "$bin"
  taskset -c 1 "$loadtest" fanout --addr "127.0.0.1:$port" --socket "$dir/ingest.sock" \
    --server-pid "$pid" --subscribers "$fan_n" --events 100 --size 100 --rate 10 \
    --sources "$sources" --grace 30s --deadline 200s >"$out/$label-$rep-fanout.json"
  stop_server
  python3 - "$label" "$out/$label-$rep-idle.json" "$out/$label-$rep-fanout.json" <<'PY'
import json, sys
label, idle, fan = sys.argv[1], json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
print(f"{label:7} idle {idle['streams_open']} streams: {idle['server_private_bytes_per_stream']} B/stream"
      f" | fanout {fan['subscribers']}: {fan['deliveries_per_cpu_s']:.0f}/CPU-s"
      f" p99 {fan['latency_us']['p99'] / 1000:.1f} ms missing {fan['missing']} dup {fan['duplicates']}"
      f" | load {idle['load_avg_start']}")
PY
}

for rep in $(seq "$reps"); do
  if [ $((rep % 2)) -eq 1 ]; then
    run_one before "$before" "$rep"
    run_one after "$after" "$rep"
  else
    run_one after "$after" "$rep"
    run_one before "$before" "$rep"
  fi
done
echo "raw reports: $out"
