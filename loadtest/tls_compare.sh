#!/usr/bin/env bash
# TLS side by side (issue 15, part 4): memory per idle TLS stream and TLS fan-out
# deliveries per server CPU-second, for ssehub (this tree), optionally an older ssehub
# binary (BEFORE_BIN, e.g. built from main) and nginx+nchan terminating TLS, plus the same
# fan-out over plain HTTP for reference. Same pinning and method as loadtest/compare.sh:
# every run on a fresh server pinned to core 0, the load pinned to core 1.
#
# Environment:
#   RUNS=3  IDLE_N=10000  FAN_N=1000  FAN_M=100  FAN_RATE=20
#   BEFORE_BIN=path/to/ssehub   an older build measured the same way (label "ssehub-before")
#   TLS12=1                     TLS 1.2 instead of 1.3
#   SERVERS="ssehub nchan"      a subset (ssehub-before needs BEFORE_BIN)
#   NICE=-20                    niceness of servers and load (0: as is)
#   OUT=file.jsonl              every run's result line (default: WORKDIR/runs.jsonl); the
#                               charts (ssehub-loadtest plot tls) go beside it
# Loopback only; every run is bounded by the load generator's own deadline.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
RUNS=${RUNS:-3}
IDLE_N=${IDLE_N:-10000}
FAN_N=${FAN_N:-1000}
FAN_M=${FAN_M:-100}
FAN_RATE=${FAN_RATE:-20}
NICE=${NICE:--20}
BEFORE_BIN=${BEFORE_BIN:-}
TLS12=${TLS12:-0}
# shellcheck source=loadtest/lib.sh
source "$root/loadtest/lib.sh"
raise_autogroup
ensure_nchan tls_compare

target_dir=${CARGO_TARGET_DIR:-$root/target}
cargo build --release --workspace --quiet
work=$(mktemp -d /tmp/ssehub-tls-compare.XXXXXX)
mkdir -p "$work/bin"
cp "$target_dir/release/ssehub" "$target_dir/release/ssehub-loadtest" "$work/bin/"
[ -n "$BEFORE_BIN" ] && cp "$BEFORE_BIN" "$work/bin/ssehub-before"
lt_bin=$work/bin/ssehub-loadtest
"$lt_bin" machine >"$work/machine.json"
OUT=${OUT:-$work/runs.jsonl}
: >"$OUT"
server_pid=
trap stop_server_on_exit EXIT

# A self-signed certificate (P-256) for localhost / 127.0.0.1 that the load trusts.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout "$work/key.pem" -out "$work/cert.pem" -days 2 -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -addext "basicConstraints=critical,CA:FALSE" 2>/dev/null
tls_args=(--tls-ca "$work/cert.pem")
[ "$TLS12" = 1 ] && tls_args+=(--tls12)

port_ssehub=18091
port_nchan=18092
port_nchan_plain=18093

ssehub_config() { # keepalive tls(0/1)
  {
    echo "[http]"
    echo "listen = \"127.0.0.1:$port_ssehub\""
    echo "[ingest]"
    echo "socket = \"$work/ssehub.sock\""
    echo "[streams]"
    echo "keepalive = \"$1s\""
    echo "write_timeout = \"10s\""
    echo "[log]"
    echo "level = \"warn\""
    if [ "$2" = 1 ]; then
      echo "[tls]"
      echo "cert = \"$work/cert.pem\""
      echo "key = \"$work/key.pem\""
    fi
  } >"$work/ssehub.toml"
}

nchan_tls_config() { # keepalive tls(0/1): TLS (or plain) on port_nchan, plain for publishing
  local ssl=""
  [ "$2" = 1 ] && ssl="ssl"
  nchan_config "$1" "listen 127.0.0.1:$port_nchan $ssl backlog=4096;
    listen 127.0.0.1:$port_nchan_plain backlog=4096;" "ssl_certificate $work/cert.pem;
  ssl_certificate_key $work/key.pem;
  ssl_protocols TLSv1.2 TLSv1.3;"
}

start_server() { # server keepalive tls
  case $1 in
    ssehub | ssehub-before)
      local bin=$work/bin/ssehub
      [ "$1" = ssehub-before ] && bin=$work/bin/ssehub-before
      ssehub_config "$2" "$3"
      start_ssehub "$bin" $port_ssehub
      ;;
    nchan)
      nchan_tls_config "$2" "$3"
      start_nginx $port_nchan
      ;;
  esac
  sleep 0.5
}

load() { # server tls label args...
  local server=$1 tls=$2 label=$3
  shift 3
  local common=(--server-pid "$server_pid" --label "$label|$server")
  if [ "$server" = nchan ]; then
    common+=(--target nchan --addr "127.0.0.1:$port_nchan" --pub-path "/pub?topic=" --pub-addr "127.0.0.1:$port_nchan_plain")
  else
    common+=(--target ssehub --addr "127.0.0.1:$port_ssehub" --socket "$work/ssehub.sock")
  fi
  [ "$tls" = 1 ] && common+=("${tls_args[@]}")
  echo "taskset -c 1 ssehub-loadtest $* ${common[*]}" | sed "s|$work|WORKDIR|g" >>"$work/commands.txt"
  taskset -c 1 nice -n "$NICE" "$lt_bin" "$@" "${common[@]}" >>"$OUT" 2>"$work/last.err" ||
    { echo "tls_compare: $label on $server reported a problem:"; tail -n 5 "$work/last.err"; }
}

servers=${SERVERS:-ssehub nchan}
[ -n "$BEFORE_BIN" ] && [ -z "${SERVERS:-}" ] && servers="ssehub-before $servers"
echo "tls_compare: work dir $work; results in $OUT"
for run in $(seq "$RUNS"); do
  for server in $servers; do
    echo "== idle TLS $IDLE_N | $server | run $run/$RUNS | load $(cut -d' ' -f1-3 /proc/loadavg)"
    start_server "$server" 5 1
    load "$server" 1 "idle-tls" idle --streams "$IDLE_N" --hold 12s
    stop_server
    for tls in 1 0; do
      [ "$server" = ssehub-before ] && [ "$tls" = 0 ] && continue
      name=plain; [ "$tls" = 1 ] && name=tls
      echo "== fanout $name $FAN_N x $FAN_M at $FAN_RATE/s | $server | run $run/$RUNS | load $(cut -d' ' -f1-3 /proc/loadavg)"
      start_server "$server" 15 "$tls"
      load "$server" "$tls" "fanout-$name" fanout --subscribers "$FAN_N" --events "$FAN_M" --size 100 \
        --rate "$FAN_RATE" --grace 30s --deadline 300s
      stop_server
    done
  done
done

# Medians per (label, server).
python3 - "$OUT" <<'PY'
import json, sys, statistics
rows = {}
for line in open(sys.argv[1]):
    try:
        r = json.loads(line)
    except ValueError:
        continue
    label, _, name = (r.get("label") or "").partition("|")
    rows.setdefault((label, name), []).append(r)
for (label, name), rs in sorted(rows.items()):
    if label == "idle-tls":
        v = [r["server_private_bytes_per_stream"] for r in rs]
        k = [r["kernel_slab_bytes_per_stream_one_side"] for r in rs]
        o = [r["streams_open"] for r in rs]
        print(f"{label:14} {name:14} private B/stream median {statistics.median(v):8.0f}  runs {v}  kernel one side {statistics.median(k):.0f}  open {o}")
    else:
        v = [r["deliveries_per_cpu_s"] for r in rs]
        ok = [r["ok"] and r["missing"] == 0 and r["duplicates"] == 0 for r in rs]
        print(f"{label:14} {name:14} deliveries/CPU-s median {statistics.median(v):8.0f}  runs {v}  complete {ok}")
PY
cat "$work/commands.txt" | sort -u
# Charts beside the lines, named after them: <OUT without .jsonl>-idle-memory.svg, -fanout.svg.
"$lt_bin" plot tls "$OUT" --revision "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
  --machine "$work/machine.json" || echo "tls_compare: plot failed (the lines are kept)" >&2
