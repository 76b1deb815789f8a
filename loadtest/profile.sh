#!/usr/bin/env bash
# Where the server's core goes: `perf record -C 0 -g` for 10 s in the middle of a fanout
# run against ssehub, or of the floor's writer (issue 15's profiles).
#
#   bash loadtest/profile.sh ssehub|floor OUTDIR [SUBS] [EVENTS] [RATE] [fanout args...]
#
# Defaults: 10,000 subscribers, 150 events of 100 B at 10/s. ssehub is this tree's
# release build (BIN= another binary) on core 0, the load on core 1, both at niceness -20
# in a raised autogroup. Writes OUTDIR/run.json (the load's report), perf.data, and
# dso.txt / sym.txt (perf report by DSO and by symbol); prints the run's deliveries per
# CPU-second. Compare the two targets' samples with
#   perf report -i OUTDIR/perf.data --no-children --comm ssehub --sort sym -g none
# (the floor's writer thread is `ssehub-loadtest`). Needs `perf` (Debian: linux-perf).
set -u
cd "$(dirname "$0")/.."
target=$1 out=$2 n=${3:-10000} m=${4:-150} rate=${5:-10}
shift $(($# < 5 ? $# : 5))
bin=${BIN:-target/release/ssehub}
lt=target/release/ssehub-loadtest
cargo build --release --workspace --quiet
mkdir -p "$out"
work=$(mktemp -d)
NICE=-20
server_pid=
# shellcheck source=loadtest/lib.sh
source loadtest/lib.sh
raise_autogroup
trap stop_server_on_exit EXIT
port=18481
if [ "$target" = ssehub ]; then
  printf '[http]\nlisten = "127.0.0.1:%s"\n[ingest]\nsocket = "%s/ssehub.sock"\n[streams]\nkeepalive = "15s"\nwrite_timeout = "10s"\nmax_pending_bytes = 262144\n[history]\nmax_events = 1000\n[log]\nlevel = "warn"\n' "$port" "$work" >"$work/ssehub.toml"
  start_ssehub "$bin" $port
  taskset -c 1 nice -n "$NICE" "$lt" fanout --subscribers "$n" --events "$m" --size 100 --rate "$rate" \
    --grace 30s --deadline 400s --target ssehub --server-pid "$server_pid" \
    --addr "127.0.0.1:$port" --socket "$work/ssehub.sock" "$@" >"$out/run.json" 2>"$out/run.err" &
else
  taskset -c 1 nice -n "$NICE" "$lt" floor --cpu 0 --streams "$n" --events "$m" --size 100 \
    --rate "$rate" --grace 10s >"$out/run.json" 2>"$out/run.err" &
fi
load_pid=$!
sleep 4
perf record -C 0 -g -F 1999 -o "$out/perf.data" -- sleep 10 2>"$out/perf.err"
wait "$load_pid"
[ -n "$server_pid" ] && stop_server
rm -rf "$work"
perf report -i "$out/perf.data" --no-children --sort comm,dso -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -12 >"$out/dso.txt"
perf report -i "$out/perf.data" --no-children --sort sym -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -45 >"$out/sym.txt"
python3 - "$target" "$out/run.json" <<'PY'
import json, sys
d = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
p = (d.get('publish') or {}).get('answer', {})
print(sys.argv[1], 'deliveries/CPU-s', d.get('deliveries_per_cpu_s'), 'busy', d.get('server_busy'),
      'per write', d.get('deliveries_per_write'), 'answer p99 us', p.get('p99'), 'load', d.get('load_avg_start'))
PY
