#!/usr/bin/env bash
# Durability benchmarks (issue: history, resume and durability). Measures, never asserts:
#  1. ingest throughput, durability=os and =fsync: one pipelined producer
#     (`ssehub publish --lines`), 200-byte payloads;
#  2. start-up recovery time for a log of 1,000,000 such events;
#  3. replay: 1,000 clients resuming 1,000 events each at once.
# Server on core 0, clients on core 1, loopback only. Writes a markdown report to stdout.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --quiet
bin=$PWD/target/release/ssehub
events=${EVENTS:-200000}
recovery_events=${RECOVERY_EVENTS:-1000000}
work=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill $pid 2>/dev/null; rm -rf "$work"' EXIT
port=$((20000 + RANDOM % 20000))

start_server() { # durability data_dir
  cat >"$work/cfg.toml" <<CFG
[http]
listen = "127.0.0.1:$port"
[ingest]
socket = "$work/ingest.sock"
[history]
data_dir = "$2"
durability = "$1"
max_events = 1000
CFG
  taskset -c 0 "$bin" --config "$work/cfg.toml" 2>"$work/server.log" &
  pid=$!
  for _ in $(seq 600); do grep -q "listening" "$work/server.log" 2>/dev/null && return; sleep 0.05; done
  echo "server did not start"; cat "$work/server.log"; exit 1
}
stop_server() { kill -TERM $pid; wait $pid || true; pid=; }

payloads() { # n lines of 200 bytes
  python3 -c "
import sys
line = ('x' * 190)
out = sys.stdout
for i in range($1):
    out.write(f'{i:09d} {line}\n')
"
}

echo "# Durability benchmarks ($(date -u +%F))"
echo
echo "- Revision: \`$(git rev-parse --short HEAD)\`; machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), Linux $(uname -r); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "- Command: \`loadtest/durability/run.sh\` (EVENTS=$events, RECOVERY_EVENTS=$recovery_events); server \`taskset -c 0\`, clients \`taskset -c 1\`"
echo
payloads "$events" >"$work/payloads"
echo "| durability | events | seconds | events/s |"
echo "|---|---:|---:|---:|"
for mode in os fsync; do
  rm -rf "$work/data"
  start_server $mode "$work/data"
  t0=$(date +%s.%N)
  taskset -c 1 "$bin" publish --socket "$work/ingest.sock" --topic bench --lines <"$work/payloads" >"$work/ids"
  t1=$(date +%s.%N)
  n=$(wc -l <"$work/ids")
  stop_server
  python3 -c "print(f'| $mode | $n | {($t1-$t0):.2f} | {$n/($t1-$t0):,.0f} |')"
done
echo
echo "Recovery of a log of $recovery_events events (200-byte payloads):"
echo
rm -rf "$work/data"
start_server os "$work/data"
payloads "$recovery_events" | taskset -c 1 "$bin" publish --socket "$work/ingest.sock" --topic bench --lines >/dev/null
stop_server
du -sh "$work/data" | awk '{print "- log size on disk: " $1}'
start_server os "$work/data"
echo "- start-up: \`$(grep 'log recovered' "$work/server.log" | sed 's/^[0-9.]* //')\`"
first_id=$(taskset -c 1 "$bin" publish --socket "$work/ingest.sock" --topic replay seed)
payloads 1000 | taskset -c 1 "$bin" publish --socket "$work/ingest.sock" --topic replay --lines >/dev/null
echo
echo "Replay: 1,000 clients resuming 1,000 events each (from the same Last-Event-ID):"
echo
echo '```json'
taskset -c 1 python3 loadtest/durability/replay_clients.py --port $port --topic replay --clients 1000 --events 1000 --last-event-id "$first_id"
echo '```'
echo
echo "Server resident memory after the replay: $(grep VmRSS /proc/$pid/status | awk '{print $2, $3}')"
stop_server
