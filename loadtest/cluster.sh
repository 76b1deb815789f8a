#!/usr/bin/env bash
# Cluster-mode load test (SPEC 6 and 7, issue 13): the same fan-out workload against
#   single  one plain ssehub node (no cluster mode): the baseline,
#   N=1     one node in cluster mode,
#   N=2     two nodes in cluster mode sharing one Redis stream,
# each with fresh nodes, one publisher writing to node 0's ingest socket and the
# subscribers split evenly over the nodes. Each run prints one JSON line (ssehub-loadtest
# fanout) with per-node streams, deliveries, latency p50/p99/max, CPU-seconds and
# deliveries per CPU-second, the totals, and Redis's CPU per event.
#
# It starts its own redis-server (loopback, a free port, `--save '' --appendonly no`) and
# its own nodes (the release binary, each its own HTTP port and ingest socket: not
# reuse_port, so every figure belongs to one node), waits for `ssehub_redis_up 1` in each
# node's /metrics, and stops everything by pid on exit.
#
# Pinning (2 cores): nodes AND Redis on core 0, the load generator on core 1. The load
# generator (parsing 2,000 streams) costs about as much CPU as a node, so "node i on core
# i" would put node 1 beside it and make node 1's latency and rate a measure of the
# client. CPU-seconds are counted per process, so per-node and Redis costs stay
# attributable when they share a core; what sharing costs is latency (queueing behind the
# other node and Redis), and the 2-node rate cannot exceed one core.
#
# A second workload, "rate" (few subscribers, RATE events/s, 2,000 unless set), measures Redis's and the
# nodes' cost per event nearer to where it matters for scale-out. A third, "redis", runs
# no nodes: redis-benchmark (core 1) calls the same Redis Function and XREAD directly,
# unbatched and batched (pipelined publishes, several entries per read), for Redis's cost
# per call and per entry at rates this machine cannot drive through nodes. Its JSON lines
# have "scenario":"redis-alone".
#
# Usage: bash loadtest/cluster.sh [--quick]
#   --quick          the fanout workload only, tiny (200 x 20 events): about 15 s (CI)
# Environment:
#   RUNS=3           repetitions of each configuration, fresh nodes each time (--quick: 1);
#                    the summary quotes medians. About 45 s per repetition.
#   WORKLOADS="fanout rate redis"   (--quick: "fanout")
#   CONFIGS="single 1 2"  which configurations (node counts in cluster mode; any N works;
#                    "Nr": N nodes reading from a replica, cluster.read_from, which starts
#                    one replica of the Redis on core 0 beside it; its CPU is reported as
#                    cluster.replica in the JSON line)
#   MIN_REPLICAS=0   cluster.min_replicas of every cluster node (1 or more starts the replica)
#   READ_LINGER=0ms  cluster.read_linger of every cluster node
#   WRITE_LINGER=0ms cluster.write_linger of every cluster node
#   RATE=2000        events/s of the "rate" workload (2 s of events; --quick: 500, 200 events)
#   OUT=DIR          also write runs.jsonl, machine.json and commands.txt there
#   NICE=-20         niceness of nodes, Redis and load (0: as is; --quick: 0)
# Loopback only; every run is bounded by the load generator's own hard deadline.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

QUICK=0
for arg in "$@"; do
  case $arg in
    --quick) QUICK=1 ;;
    *) echo "usage: $0 [--quick]" >&2; exit 2 ;;
  esac
done
if [ "$QUICK" = 1 ]; then RUNS=${RUNS:-1}; else RUNS=${RUNS:-3}; fi
if [ "$QUICK" = 1 ]; then WORKLOADS=${WORKLOADS:-fanout}; else WORKLOADS=${WORKLOADS:-"fanout rate redis"}; fi
CONFIGS=${CONFIGS:-"single 1 2"}
MIN_REPLICAS=${MIN_REPLICAS:-0}
READ_LINGER=${READ_LINGER:-0ms}
WRITE_LINGER=${WRITE_LINGER:-0ms}
if [ "$QUICK" = 1 ]; then RATE=${RATE:-500}; else RATE=${RATE:-2000}; fi
OUT=${OUT:-}
# --quick (CI) leaves priorities alone: raising the session's autogroup would outlast it.
if [ "$QUICK" = 1 ]; then NICE=${NICE:-0}; else NICE=${NICE:--20}; fi
[ "$(id -u)" = 0 ] || NICE=0
if [ "$NICE" != 0 ] && [ -w /proc/self/autogroup ]; then
  # With sched_autogroup, nice orders processes only within a session's group; raising
  # the group too makes other work on the machine yield (see compare.sh).
  echo "$NICE" >/proc/self/autogroup 2>/dev/null || true
fi
if [ "$(nproc)" -lt 2 ]; then
  echo "cluster: needs two cores (servers on core 0, load on core 1)" >&2
  exit 1
fi
for tool in redis-server redis-cli redis-benchmark curl taskset; do
  command -v "$tool" >/dev/null 2>&1 || { echo "cluster: $tool is missing" >&2; exit 1; }
done

if [ "$QUICK" = 1 ]; then
  fanout_args=(--subscribers 200 --events 20 --rate 50 --size 100 --settle 500ms --grace 5s)
  rate_args=(--subscribers 10 --events 200 --rate "$RATE" --size 100 --settle 500ms --grace 5s)
  deadline=30s
else
  fanout_args=(--subscribers 2000 --events 200 --rate 50 --size 100 --settle 2s --grace 10s)
  rate_args=(--subscribers 20 --events $((2 * RATE)) --rate "$RATE" --size 100 --settle 2s --grace 10s)
  deadline=90s
fi

target=${CARGO_TARGET_DIR:-$root/target}
cargo build --release --workspace --quiet
work=$(mktemp -d /tmp/ssehub-cluster.XXXXXX)
# Private copies: a rebuild during the session cannot swap the binaries.
mkdir -p "$work/bin"
cp "$target/release/ssehub" "$target/release/ssehub-loadtest" "$work/bin/"
ssehub_bin=$work/bin/ssehub
lt_bin=$work/bin/ssehub-loadtest

redis_pid=
node_pids=()
stop_nodes() {
  local p
  for p in "${node_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${node_pids[@]}"; do wait "$p" 2>/dev/null || true; done
  node_pids=()
}
cleanup() {
  stop_nodes
  local p
  for p in "$replica_pid" "$redis_pid"; do
    [ -n "$p" ] || continue
    kill -TERM "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A loopback port no socket uses, below the ephemeral range (outgoing connections on this
# busy machine take those), and not handed out before this session. Another process may
# still take it before our server binds it: start_nodes retries on "Address already in use".
used_ports=" "
low=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
free_port() {
  local p
  while :; do
    p=$((10000 + RANDOM % (low - 10000)))
    case $used_ports in *" $p "*) continue ;; esac
    if command -v ss >/dev/null 2>&1; then
      [ -z "$(ss -Htan "sport = :$p" 2>/dev/null)" ] || continue
    fi
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      used_ports+="$p "
      echo "$p"
      return
    fi
  done
}

# ---- Redis ------------------------------------------------------------------------------
for attempt in 1 2 3; do
  redis_port=$(free_port)
  taskset -c 0 nice -n "$NICE" redis-server --port "$redis_port" --bind 127.0.0.1 \
    --save '' --appendonly no --dir "$work" --logfile "$work/redis.log" &
  redis_pid=$!
  for _ in $(seq 100); do
    [ "$(redis-cli -p "$redis_port" ping 2>/dev/null)" = PONG ] && break
    kill -0 "$redis_pid" 2>/dev/null || break
    sleep 0.1
  done
  [ "$(redis-cli -p "$redis_port" ping 2>/dev/null)" = PONG ] && break
  kill -TERM "$redis_pid" 2>/dev/null || true
  wait "$redis_pid" 2>/dev/null || true
  redis_pid=
  grep -q 'Address already in use' "$work/redis.log" 2>/dev/null || break
done
[ -n "$redis_pid" ] || {
  echo "cluster: redis-server did not start:" >&2; cat "$work/redis.log" >&2; exit 1
}
redis_version=$(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')

# ---- a replica (configurations "Nr", or MIN_REPLICAS above 0) ---------------------------
replica_pid=
replica_port=
case " $CONFIGS " in *r\ *) want_replica=1 ;; *) want_replica=0 ;; esac
[ "$MIN_REPLICAS" -gt 0 ] && want_replica=1
if [ "$want_replica" = 1 ]; then
  replica_port=$(free_port)
  mkdir -p "$work/replica"
  taskset -c 0 nice -n "$NICE" redis-server --port "$replica_port" --bind 127.0.0.1 \
    --save '' --appendonly no --dir "$work/replica" --logfile "$work/replica.log" \
    --replicaof 127.0.0.1 "$redis_port" &
  replica_pid=$!
  redis-cli -p "$redis_port" CONFIG SET repl-diskless-sync-delay 0 >/dev/null
  for _ in $(seq 200); do
    redis-cli -p "$replica_port" INFO replication 2>/dev/null | grep -q '^master_link_status:up' && break
    sleep 0.1
  done
  redis-cli -p "$replica_port" INFO replication | grep -q '^master_link_status:up' || {
    echo "cluster: the replica did not sync:" >&2; cat "$work/replica.log" >&2; exit 1
  }
fi

# ---- nodes ------------------------------------------------------------------------------
# node_config FILE PORT SOCKET PREFIX [READ_FROM_PORT] (PREFIX empty: no cluster mode)
node_config() {
  cat >"$1" <<EOF
[http]
listen = "127.0.0.1:$2"
[ingest]
socket = "$3"
[streams]
keepalive = "15s"
[history]
max_events = 1000
max_age = "1h"
[log]
level = "warn"
EOF
  if [ -n "$4" ]; then
    printf '[cluster]\nredis = "redis://127.0.0.1:%s/0"\nkey_prefix = "%s"\n' "$redis_port" "$4" >>"$1"
    printf 'min_replicas = %s\nread_linger = "%s"\nwrite_linger = "%s"\n' \
      "$MIN_REPLICAS" "$READ_LINGER" "$WRITE_LINGER" >>"$1"
    if [ -n "${5:-}" ]; then
      printf 'read_from = ["redis://127.0.0.1:%s/0"]\n' "$5" >>"$1"
    fi
  fi
}

# start_nodes COUNT PREFIX [READ_FROM_PORT]: fresh nodes on core 0; sets node_args (--node ADDR@PID ...)
# and node0_sock. Each configuration and run gets its own key prefix, so a node starts on
# an empty stream (nothing to fill its history with).
node_args=()
node0_sock=
start_nodes() {
  local count=$1 prefix=$2 read_from=${3:-} i port sock cfg pid
  node_args=()
  for i in $(seq 0 $((count - 1))); do
    sock=$work/node$i.sock
    cfg=$work/node$i.toml
    local ok=0 attempt
    for attempt in 1 2 3; do
      port=$(free_port)
      node_config "$cfg" "$port" "$sock" "$prefix" "$read_from"
      : >"$work/node$i.log"
      taskset -c 0 nice -n "$NICE" "$ssehub_bin" --config "$cfg" 2>>"$work/node$i.log" &
      pid=$!
      for _ in $(seq 100); do
        if [ -S "$sock" ]; then
          local want='^ssehub_redis_up 1$'
          [ -n "$read_from" ] && want='^ssehub_redis_reading_replica 1$'
          if [ -z "$prefix" ] ||
            curl -sf -m 2 "http://127.0.0.1:$port/metrics" | grep -q "$want"; then
            ok=1
            break
          fi
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      [ "$ok" = 1 ] && break
      kill -TERM "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
      grep -q 'Address already in use' "$work/node$i.log" || break
      echo "cluster: port $port was taken meanwhile, trying another" >&2
    done
    if [ "$ok" = 1 ]; then
      node_pids+=("$pid")
      node_args+=(--node "127.0.0.1:$port@$pid")
      if [ "$i" = 0 ]; then node0_sock=$sock; fi
    else
      echo "cluster: node $i did not come up${prefix:+ with ssehub_redis_up 1} within 10 s:" >&2
      tail -n 20 "$work/node$i.log" >&2
      exit 1
    fi
  done
}

runs=$work/runs.jsonl
commands=$work/commands.txt
: >"$runs"
"$lt_bin" machine >"$work/machine.json"
rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if ! git diff --quiet HEAD -- src loadtest Cargo.toml Cargo.lock 2>/dev/null; then
  rev="$rev (with uncommitted changes)"
fi
echo "cluster: git $rev, redis $redis_version on port $redis_port, machine $(cat "$work/machine.json")" >&2
{
  echo "# git $rev; redis-server $redis_version; NICE=$NICE"
  echo "taskset -c 0 nice -n $NICE redis-server --port PORT --bind 127.0.0.1 --save '' --appendonly no"
  echo "taskset -c 0 nice -n $NICE target/release/ssehub --config nodeI.toml   # per node:"
  node_config /dev/stdout PORT_I "WORKDIR/nodeI.sock" "PREFIX" | sed 's/^/#   /'
  if [ -n "$replica_port" ]; then
    echo "taskset -c 0 nice -n $NICE redis-server --port RPORT --bind 127.0.0.1 --save '' --appendonly no --replicaof 127.0.0.1 PORT"
    echo "#   configurations Nr add to [cluster]: read_from = [\"redis://127.0.0.1:RPORT/0\"]"
  fi
} >"$commands"

# run_one WORKLOAD CONFIG REP: CONFIG is single, N or Nr (N nodes reading from the replica).
failed=0
replica_cpu_ns() { awk '{s += $1} END {printf "%.0f\n", s}' /proc/"$replica_pid"/task/*/schedstat; }
run_one() {
  local workload=$1 config=$2 rep=$3 count prefix label read_from= r0=0
  local -a args redis_args=()
  if [ "$workload" = fanout ]; then args=("${fanout_args[@]}"); else args=("${rate_args[@]}"); fi
  if [ "$config" = single ]; then
    count=1 prefix=
    label="$workload single"
  else
    count=${config%r} prefix="lt-$workload-$config-$rep-$$"
    label="$workload cluster N=$count"
    if [ "$config" != "$count" ]; then
      read_from=$replica_port
      label="$label replica"
    fi
    [ "$MIN_REPLICAS" -gt 0 ] && label="$label min_replicas=$MIN_REPLICAS"
    [ "$READ_LINGER" != 0ms ] && label="$label read_linger=$READ_LINGER"
    [ "$WRITE_LINGER" != 0ms ] && label="$label write_linger=$WRITE_LINGER"
    redis_args=(--redis-pid "$redis_pid" --redis-addr "127.0.0.1:$redis_port")
  fi
  start_nodes "$count" "$prefix" "$read_from"
  [ -n "$replica_pid" ] && r0=$(replica_cpu_ns)
  echo "taskset -c 1 nice -n $NICE ssehub-loadtest fanout ${args[*]} --socket node0.sock --node ADDR@PID ... ${redis_args[*]:+--redis-pid PID --redis-addr 127.0.0.1:PORT} --label '$label' --deadline $deadline" >>"$commands"
  echo "cluster: $label (run $rep)" >&2
  if ! taskset -c 1 nice -n "$NICE" "$lt_bin" fanout "${args[@]}" "${node_args[@]}" \
    --socket "$node0_sock" "${redis_args[@]}" --label "$label" --deadline "$deadline" \
    >"$work/run.json" 2>"$work/run.err"; then
    failed=1
    echo "cluster: $label failed:" >&2
    cat "$work/run.err" >&2
  else
    grep -E '^(fanout|node|redis)' "$work/run.err" | sed 's/^/  /' >&2
  fi
  if [ -n "$replica_pid" ] && [ -s "$work/run.json" ] && command -v jq >/dev/null 2>&1; then
    # The replica's CPU over the run (it replicates every cluster run's writes).
    jq -c --argjson ns "$(($(replica_cpu_ns) - r0))" \
      '.cluster.replica = {cpu_s: ($ns / 1e9), cpu_us_per_event: (if (.events // 0) > 0 then $ns / 1e3 / .events else null end)}' \
      "$work/run.json" >"$work/run.json.tmp" && mv "$work/run.json.tmp" "$work/run.json"
  fi
  cat "$work/run.json"
  cat "$work/run.json" >>"$runs"
  stop_nodes
}

# ---- Redis alone ------------------------------------------------------------------------
redis_cpu_ns() { awk '{s += $1} END {printf "%.0f\n", s}' /proc/"$redis_pid"/task/*/schedstat; }
redis_usec() { # COMMAND: microseconds inside it since the last CONFIG RESETSTAT
  redis-cli -p "$redis_port" INFO commandstats |
    sed -n "s/^cmdstat_$1:calls=[0-9]*,usec=\([0-9]*\),.*/\1/p" | tr -d '\r'
}
# bench_redis LABEL CALLS ENTRIES_PER_CALL STAT_NAME redis-benchmark-args...: one JSON line.
bench_redis() {
  local label=$1 calls=$2 per_call=$3 stat=$4 c0 c1 rps usec load0
  shift 4
  load0=$(cut -d' ' -f1-3 /proc/loadavg)
  redis-cli -p "$redis_port" CONFIG RESETSTAT >/dev/null
  c0=$(redis_cpu_ns)
  rps=$(taskset -c 1 nice -n "$NICE" redis-benchmark -p "$redis_port" -n "$calls" -c 1 --csv "$@" |
    awk -F'"' 'NR == 2 {print $4}')
  c1=$(redis_cpu_ns)
  usec=$(redis_usec "$stat")
  awk -v label="$label" -v calls="$calls" -v per="$per_call" -v rps="${rps:-0}" \
    -v cpu="$((c1 - c0))" -v usec="${usec:-0}" -v load0="$load0" \
    -v load1="$(cut -d' ' -f1-3 /proc/loadavg)" -v t="$(date +%s)" -v cmd="redis-benchmark -n $calls -c 1 --csv $*" \
    'BEGIN {
      gsub(/"/, "\\\"", cmd)
      printf "{\"scenario\":\"redis-alone\",\"label\":\"%s\",\"ok\":true,\"calls\":%d,", label, calls
      printf "\"entries_per_call\":%d,\"calls_per_s\":%.1f,\"cpu_s\":%.4f,", per, rps, cpu / 1e9
      printf "\"cpu_us_per_call\":%.2f,\"cpu_us_per_entry\":%.2f,", cpu / 1e3 / calls, cpu / 1e3 / calls / per
      printf "\"in_command_us_per_call\":%.2f,\"command\":\"%s\",", usec / calls, cmd
      printf "\"unix_time\":%d,\"load_avg_start\":\"%s\",\"load_avg_end\":\"%s\"}\n", t, load0, load1
    }'
}
redis_alone() { # REP
  local k="{lt-alone-$1-$$}" data n p count
  data=$(head -c 100 /dev/zero | tr '\0' x)
  n=20000
  [ "$QUICK" = 1 ] && n=2000
  redis-cli -p "$redis_port" FUNCTION LOAD REPLACE "$(cat "$root/src/cluster/function.lua")" >/dev/null
  # The data set's epoch, as a node's connect creates it; every publish names it.
  redis-cli -p "$redis_port" SET "$k:e" 0123456789abcdef >/dev/null
  echo "cluster: redis alone (run $1)" >&2
  {
    for p in 1 16 64; do
      bench_redis "redis FCALL ssehub_publish pipeline=$p" "$n" 1 fcall -P "$p" \
        FCALL ssehub_publish 5 "$k:s" "$k:l" "$k:i" "$k:e" "$k:f:t" 3600000 0 0 '' "$data" 0 0 0123456789abcdef t
    done
    # ssehub_publish_batch as the writer sends it: B publishes per call (one topic each).
    for b in 16 100; do
      local -a bkeys=() bargs=()
      for _ in $(seq "$b"); do
        bkeys+=("$k:f:t")
        bargs+=(0 0 '' "$data" 1 t)
      done
      bench_redis "redis FCALL ssehub_publish_batch events=$b" "$((n / b))" "$b" fcall \
        FCALL ssehub_publish_batch $((3 + b)) "$k:s" "$k:l" "$k:e" "${bkeys[@]}" 3600000 0 0 0123456789abcdef "${bargs[@]}"
    done
    # The stream now holds the entries just published (what readers get: p t d m x).
    for count in 1 10 100; do
      bench_redis "redis XREAD COUNT $count" "$((n / 4))" "$count" xread \
        XREAD COUNT "$count" STREAMS "$k:s" 0
    done
  } | tee -a "$runs"
  echo "taskset -c 1 nice -n $NICE redis-benchmark -p PORT -n $n -c 1 --csv -P {1,16,64} FCALL ssehub_publish 5 K:s K:l K:i K:e K:f:t 3600000 0 0 '' DATA100 0 0 EPOCH t; then -n $n/B FCALL ssehub_publish_batch 3+B K:s K:l K:e B*K:f:t 3600000 0 0 EPOCH B*(0 0 '' DATA100 1 t) for B in 16 100; then -n $((n / 4)) XREAD COUNT {1,10,100} STREAMS K:s 0" >>"$commands"
}

for workload in $WORKLOADS; do
  for rep in $(seq "$RUNS"); do
    if [ "$workload" = redis ]; then
      redis_alone "$rep"
      continue
    fi
    for config in $CONFIGS; do
      run_one "$workload" "$config" "$rep"
    done
  done
done

if [ -n "$OUT" ]; then
  mkdir -p "$OUT"
  cp "$runs" "$OUT/runs.jsonl"
  cp "$work/machine.json" "$OUT/machine.json"
  cp "$commands" "$OUT/commands.txt"
fi
# Charts beside the copied runs: OUT/cluster-<workload>.svg (ssehub-loadtest plot cluster).
if [ -n "$OUT" ] && [ -s "$runs" ]; then
  "$lt_bin" plot cluster "$OUT/runs.jsonl" --prefix cluster --revision "$rev" \
    --machine "$work/machine.json" || echo "cluster: plot failed (the runs are kept)" >&2
fi

# A summary (stderr) when jq is there: per configuration the medians over the runs of the
# table's columns, then per workload the Redis cost per event split into the write (once
# per event) and the reads (once per reading node): N=1 costs w + r, N=2 costs w + 2r.
if command -v jq >/dev/null 2>&1 && [ -s "$runs" ]; then
  jq_defs='
    def med: map(select(. != null)) | sort
      | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor]
        else (.[length / 2 - 1] + .[length / 2]) / 2 end;
    def cmd($c): [.cluster.redis.commands[]? | select(.command == $c) | .usec_per_event] | add;
    def r1: if . == null then "-" else (. * 10 | round / 10 | tostring) end;'
  jq -rs "$jq_defs"'
    (if any(.[]; .scenario == "fanout") then ["configuration", "runs ok", "deliveries/s",
      "deliv/node-CPU-s", "p99 per node (us)", "node CPU us/event", "redis us/event", "fcall",
      "xread", "outside cmds"] | @tsv else empty end),
    (map(select(.scenario == "fanout")) | group_by(.label)[] | . as $g | [
      $g[0].label,
      "\([$g[] | select(.ok)] | length)/\($g | length)",
      ([$g[].cluster.total.deliveries_per_s] | med | r1),
      ([$g[].cluster.total.deliveries_per_cpu_s] | med | r1),
      ([range(0; $g[0].cluster.nodes | length) as $i | [$g[].cluster.nodes[$i].latency_us.p99] | med | r1]
        | join("/")),
      ([$g[].cluster.total.cpu_us_per_event] | med | r1),
      ([$g[].cluster.redis.cpu_us_per_event_net] | med | r1),
      ([$g[] | cmd("fcall")] | med | r1),
      ([$g[] | cmd("xread")] | med | r1),
      ([$g[].cluster.redis.outside_commands_us_per_event] | med | r1)] | @tsv)
  ' "$runs" | column -t -s $'\t' >&2 || true
  jq -rs "$jq_defs"'
    (if any(.[]; .scenario == "redis-alone") then ["Redis alone", "calls/s", "CPU us/call",
      "CPU us/entry", "in command us/call"] | @tsv else empty end),
    (map(select(.scenario == "redis-alone")) | group_by(.label)[] | . as $g | [$g[0].label,
      ([$g[].calls_per_s] | med | r1), ([$g[].cpu_us_per_call] | med | r1),
      ([$g[].cpu_us_per_entry] | med | r1), ([$g[].in_command_us_per_call] | med | r1)] | @tsv)
  ' "$runs" | column -t -s $'\t' >&2 || true
  jq -rs "$jq_defs"'
    (map(select(.scenario == "fanout")) | group_by(.label | split(" ")[0])[] |
      (.[0].label | split(" ")[0]) as $w |
      ([.[] | select(.label | endswith("N=1")) | .cluster.redis.cpu_us_per_event_net] | med) as $r1 |
      ([.[] | select(.label | endswith("N=2")) | .cluster.redis.cpu_us_per_event_net] | med) as $r2 |
      if $r1 != null and $r2 != null then
        "\($w): Redis us/event N=1 \($r1 | r1), N=2 \($r2 | r1): read per node ~ \($r2 - $r1 | r1), write ~ \(2 * $r1 - $r2 | r1)"
      else empty end)
  ' "$runs" >&2 || true
fi
exit "$failed"
