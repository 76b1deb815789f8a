#!/usr/bin/env bash
# Side-by-side comparison of ssehub and nginx+nchan on this machine (SPEC 6, issue 6).
#
# Installs nginx and the nchan module where missing (Debian: nginx-light,
# libnginx-mod-nchan), then for every workload and every repetition starts a FRESH server
# pinned to core 0 (`taskset -c 0`), runs the load generator pinned to core 1, stops the
# server by its pid, and finally writes bench-results/<date>-compare.md and .json with the
# exact commands, the machine, the git revision, the medians and the ratio ssehub/nchan,
# and their charts (`ssehub-loadtest plot compare`: <date>-compare-*.svg).
#
# Environment:
#   RUNS=3            repetitions of each workload per server (the median is reported)
#   WORKLOADS="..."   subset of: idle fanout latency slow slowcut churn, and the floor set
#                     (issue 15): fan1k fan10k sat
#   TARGETS="..."     subset of: ssehub nchan floor (default all three)
#   SSEHUB_BIN=path   run this ssehub binary instead of the work tree's (a before/after
#                     comparison with the same load generator); SSEHUB_REV names its revision
#   QUICK=1           small sizes, to try the script out in a minute (results not for quoting)
#   OUT=bench-results output folder; DATE=YYYY-MM-DD overrides the file date
#   FAN1K_EVENTS=100  events of the fan1k workload (more: a steadier CPU reading)
#   PUBLISHER_RT=1    fanout workloads run their publisher at real-time priority
#                     (`--publisher-rt`): the producer's answer round trip then leaves out
#                     the wait for the load generator's own busy core
#   NICE=-20          niceness of both servers and the load (other work on the machine then
#                     yields to them, the same for both servers); NICE=0 to run as is
#
# Loopback only; every run is bounded by the load generator's own hard deadline.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

RUNS=${RUNS:-3}
WORKLOADS=${WORKLOADS:-"idle fanout latency slow slowcut churn"}
TARGETS=${TARGETS:-"ssehub nchan floor"}
QUICK=${QUICK:-0}
OUT=${OUT:-bench-results}
NICE=${NICE:--20}
PUBLISHER_RT=${PUBLISHER_RT:-0}
# shellcheck source=loadtest/lib.sh
source "$root/loadtest/lib.sh"
raise_autogroup
DATE=${DATE:-$(date +%F)}
cores=$(nproc)
if [ "$cores" -lt 2 ]; then
  echo "compare: needs two cores (server on core 0, load on core 1)" >&2
  exit 1
fi

# ---- nginx + nchan ---------------------------------------------------------------------
ensure_nchan compare

cargo build --release --workspace --quiet
work=$(mktemp -d /tmp/ssehub-compare.XXXXXX)
# Private copies: a rebuild in the work tree during the session cannot swap the binaries.
mkdir -p "$work/bin"
cp "$root/target/release/ssehub" "$root/target/release/ssehub-loadtest" "$work/bin/"
ssehub_bin=$work/bin/ssehub
if [ -n "${SSEHUB_BIN:-}" ]; then
  cp "$SSEHUB_BIN" "$work/bin/ssehub-other"
  ssehub_bin=$work/bin/ssehub-other
fi
lt_bin=$work/bin/ssehub-loadtest
server_pid=
trap stop_server_on_exit EXIT
runs_file=$work/runs.jsonl
commands_file=$work/commands.txt
: >"$runs_file"
: >"$commands_file"

"$lt_bin" machine >"$work/machine.json"
rev=$(git rev-parse --short HEAD)
if [ -n "${SSEHUB_BIN:-}" ]; then
  rev="ssehub ${SSEHUB_REV:-$SSEHUB_BIN}, load generator $rev"
fi
if ! git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null; then
  rev="$rev (with uncommitted changes in src/)"
fi

port_ssehub=18081
port_nchan=18082

# ---- servers ---------------------------------------------------------------------------
# Same limits on both: keepalive/ping interval, the slow-client write timeout (ssehub
# streams.write_timeout = nginx send_timeout), a 1,000-event buffer per topic for resume.
ssehub_config() { # keepalive
  cat >"$work/ssehub.toml" <<EOF
[http]
listen = "127.0.0.1:$port_ssehub"
[ingest]
socket = "$work/ssehub.sock"
[streams]
keepalive = "$1s"
write_timeout = "10s"
max_pending_bytes = 262144
[history]
max_events = 1000
max_age = "1h"
[log]
level = "warn"
EOF
}

start_server() { # target keepalive
  case $1 in
    ssehub)
      ssehub_config "$2"
      start_ssehub "$ssehub_bin" $port_ssehub
      ;;
    nchan)
      nchan_config "$2" "listen 127.0.0.1:$port_nchan backlog=4096;"
      start_nginx $port_nchan
      ;;
  esac
  sleep 0.5 # let the server settle before the baseline memory reading
}

# ---- workloads -------------------------------------------------------------------------
# fan1k's 100 events cost a server ~0.6 CPU-s, too little for a steady reading:
# FAN1K_EVENTS=400 runs the same rate four times as long.
fan1k_m=${FAN1K_EVENTS:-100}
if [ "$QUICK" = 1 ]; then
  fan1k_n=200
  idle_n=2000 fan_n=1000 fan_m=40 lat_n=1000 lat_m=60 slow_n=1000 cut_n=200 cut_m=1200 churn_n=200 churn_m=200
else
  fan1k_n=1000
  idle_n=15000 fan_n=10000 fan_m=100 lat_n=10000 lat_m=300 slow_n=10000 cut_n=1000 cut_m=2000 churn_n=2000 churn_m=600
fi

# workload -> "label|keepalive|scenario and arguments"
workload() {
  case $1 in
    idle) echo "idle: $idle_n streams|5|idle --streams $idle_n --hold 12s" ;;
    fanout) echo "fanout: $fan_n subscribers x $fan_m events of 100 B at 20/s|15|fanout --subscribers $fan_n --events $fan_m --size 100 --rate 20 --grace 30s --deadline 400s" ;;
    latency) echo "latency: $lat_n subscribers at 10/s, 100 B|15|fanout --subscribers $lat_n --events $lat_m --size 100 --rate 10 --grace 30s --deadline 400s" ;;
    slow) echo "slow: $slow_n subscribers at 10/s, 100 B, 10% not reading|15|slow --subscribers $slow_n --events $lat_m --size 100 --rate 10 --slow-share 0.1 --expect-cut false --grace 30s --deadline 400s" ;;
    slowcut) echo "slow-cut: $cut_n subscribers at 50/s, 4 KB, 10% not reading|15|slow --subscribers $cut_n --events $cut_m --size 4000 --rate 50 --slow-share 0.1 --grace 30s --deadline 400s" ;;
    fan1k) echo "fan1k: $fan1k_n subscribers x $fan1k_m events of 100 B at 20/s|15|fanout --subscribers $fan1k_n --events $fan1k_m --size 100 --rate 20 --grace 30s --deadline 400s" ;;
    fan10k) echo "fan10k: $fan_n subscribers x 100 events of 100 B at 10/s|15|fanout --subscribers $fan_n --events 100 --size 100 --rate 10 --grace 30s --deadline 400s" ;;
    sat) echo "sat: $fan_n subscribers x 100 events of 100 B at 20/s, closed-loop producer|15|fanout --subscribers $fan_n --events 100 --size 100 --rate 20 --closed-loop --grace 30s --deadline 400s" ;;
    churn) echo "churn: $churn_n clients, $churn_m events at 50/s, resume|15|churn --clients $churn_n --events $churn_m --rate 50 --size 100 --min-events 1 --max-events 20 --max-delay 200ms --rst-share 0.1" ;;
    *) echo "compare: unknown workload $1" >&2; return 1 ;;
  esac
}

{
  echo "# servers (each run on a fresh server, pinned to core 0, niceness $NICE like the load)"
  echo "taskset -c 0 nice -n $NICE target/release/ssehub --config ssehub.toml   # binaries copied to WORKDIR/bin at the start"
  echo "taskset -c 0 nice -n $NICE nginx -c nginx.conf -p WORKDIR     # nginx $nginx_version, libnginx-mod-nchan $nchan_version"
  echo
  echo "# ssehub.toml (keepalive 5s for idle, 15s otherwise)"
  ssehub_config 15 && cat "$work/ssehub.toml"
  echo
  echo "# nginx.conf (ping interval 5 for idle, 15 otherwise)"
  nchan_config 15 "listen 127.0.0.1:$port_nchan backlog=4096;" && sed "s|$work|WORKDIR|g" "$work/nginx.conf"
  echo
  echo "# load (pinned to core 1); PID is the server's pid (nginx: the master, children counted)"
} >>"$commands_file"

load_cmd() { # target args...
  local target=$1; shift
  local common=(--target "$target" --server-pid "$server_pid")
  if [ "$target" = ssehub ]; then
    common+=(--addr "127.0.0.1:$port_ssehub" --socket "$work/ssehub.sock")
  else
    common+=(--addr "127.0.0.1:$port_nchan" --pub-path "/pub?topic=")
  fi
  [ "$1" = fanout ] && [ "$PUBLISHER_RT" = 1 ] && common+=(--publisher-rt)
  taskset -c 1 nice -n "$NICE" "$lt_bin" "$@" "${common[@]}"
}

echo "compare: workloads: $WORKLOADS; $RUNS runs each; work dir $work"
for w in $WORKLOADS; do
  spec=$(workload "$w")
  label=${spec%%|*}
  rest=${spec#*|}
  keepalive=${rest%%|*}
  args=${rest#*|}
  echo "ssehub-loadtest $args --target T --server-pid PID ...   # $label" >>"$commands_file"
  for run in $(seq "$RUNS"); do
    # Alternate which server goes first so drift in the machine's load hits both alike.
    if [ $((run % 2)) = 1 ]; then order="ssehub nchan"; else order="nchan ssehub"; fi
    case $w in fanout | latency | fan1k | fan10k | sat) order="$order floor" ;; esac
    for target in $order; do
      case " $TARGETS " in *" $target "*) ;; *) continue ;; esac
      echo "== $label | $target | run $run/$RUNS | load $(cut -d' ' -f1-3 /proc/loadavg)"
      if [ "$target" = floor ]; then
        # The same workload from a minimal in-process writer (one write per delivery),
        # its writing thread on core 0 like the servers.
        # shellcheck disable=SC2086
        floor_args=${args#fanout }
        floor_args=${floor_args/--closed-loop /}
        if ! taskset -c 1 nice -n "$NICE" "$lt_bin" floor --cpu 0 $floor_args --label "$label" \
          >>"$runs_file" 2>"$work/last.err"; then
          echo "compare: floor run for $label reported a problem (kept in the results):"
        fi
        tail -n 1 "$work/last.err"
        continue
      fi
      start_server "$target" "$keepalive"
      # shellcheck disable=SC2086
      if ! load_cmd "$target" $args --label "$label" >>"$runs_file" 2>"$work/last.err"; then
        echo "compare: $label on $target reported a problem (kept in the results):"
        tail -n 5 "$work/last.err"
      fi
      tail -n 1 "$work/last.err"
      stop_server
    done
  done
done

mkdir -p "$OUT"
base=$OUT/$DATE-compare
[ "$QUICK" = 1 ] && base=$OUT/$DATE-compare-quick
cat >"$work/notes.md" <<EOF
Produced by \`loadtest/compare.sh\` (RUNS=$RUNS, QUICK=$QUICK, NICE=$NICE, PUBLISHER_RT=$PUBLISHER_RT). Every workload ran $RUNS times on
each server, alternating which server went first; each run on a fresh server process pinned
to core 0 with \`taskset -c 0\`, the load generator pinned to core 1, both at niceness
$NICE, and so was the session's scheduler autogroup (\`$autogroup\`), so that other work on
the machine yields to them alike; loopback, plain HTTP.
The tables give the **median** of the runs, every run's value, and the ratio ssehub/nchan
(for memory, latency and CPU lower is better; for rates higher is better). The machine has
two cores and other work (builds, tests) may have run on it during the session: each run's
load average (\`/proc/loadavg\` at its start and end) is listed under "Every run".

- Memory per idle stream: \`Private_Clean + Private_Dirty\` of \`/proc/PID/smaps_rollup\`
  summed over ALL the server's processes (nginx: master and worker) with N streams open
  after two keepalive intervals, minus the same before the first connection, divided by N.
  Kernel: \`Slab\` delta of \`/proc/meminfo\` / N / 2 (loopback holds both ends).
- Latency: publish-to-receipt from a \`CLOCK_MONOTONIC\` timestamp in each payload; "from
  schedule" counts from when the open-loop schedule meant to publish the event. "Last
  subscriber" is, per event, the time until the last subscriber had it.
- Deliveries per CPU-second: events received by all subscribers / server utime+stime
  (\`/proc/PID/stat\`, all processes) during the run; per write call: / ssehub's
  \`ssehub_writes_total\` (nginx: \`syscw\` of \`/proc/PID/io\`, which counts write and
  writev but not send). A run whose sustained rate is under 95% of the offered rate, or whose
  server was busy more than 90% of the time, is a saturation run: quote its rate, not its
  latency.
- Floor: \`ssehub-loadtest floor\` runs the fanout and latency workloads against a minimal
  writer inside the load generator (each event encoded once, then one blocking \`write()\`
  per subscriber, on one thread pinned to core 0): its deliveries per CPU-second are what
  one write per delivery costs on this machine at that moment (the issue quotes about
  187,000 for its machine), so "ssehub/floor" reads the servers against the machine.
- Slow subscribers (\`slow\`) use a 4 KiB receive buffer and stop reading after the response
  head. On loopback the kernel lets the server's send buffer grow to megabytes per socket
  before any server sees backpressure, so at 1.4 KB/s per stream (\`slow\`) no server's
  limit is reached within the run; \`slow-cut\` pushes 200 KB/s per stream so that both
  servers' limits engage (ssehub: \`max_pending_bytes\` 256 KiB or \`write_timeout\` 10 s;
  nginx: \`send_timeout\` 10 s).
EOF
"$lt_bin" report --runs "$runs_file" --machine "$work/machine.json" --commands "$commands_file" \
  --notes "$work/notes.md" --git-revision "$rev" --date "$DATE" \
  --out-md "$base.md" --out-json "$base.json"
echo "compare: wrote $base.md and $base.json"
# Charts beside them: $base-deliveries-per-cpu.svg, -latency.svg, -idle-memory.svg.
"$lt_bin" plot compare "$base.json" --out-dir "$OUT" ||
  echo "compare: plot failed (the results above are kept)" >&2
