#!/usr/bin/env bash
# Small smoke of the README quick start and of every load-test scenario (idle, fanout,
# churn with resume, slow readers): real binary, curl subscriber, `ssehub publish`
# producer, `ssehub-loadtest`. Correctness only (nothing missing, nothing duplicated,
# slow readers cut), never a timing. Bounded in time: each load run has its own deadline.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/ssehub
loadtest=target/release/ssehub-loadtest
cargo build --release --workspace --quiet
dir=$(mktemp -d)
server_pid=
slow_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  [ -n "$slow_pid" ] && kill "$slow_pid" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

port=$((20000 + RANDOM % 20000))
"$bin" --listen "127.0.0.1:$port" --socket "$dir/ingest.sock" 2>"$dir/server.log" &
server_pid=$!
for _ in $(seq 50); do [ -S "$dir/ingest.sock" ] && break; sleep 0.1; done

curl -sN -m 5 "http://127.0.0.1:$port/events?topic=smoke&topic=other" >"$dir/stream.out" &
curl_pid=$!
sleep 0.5
id1=$("$bin" publish --socket "$dir/ingest.sock" --topic smoke --event greeting $'hello\nworld')
id2=$(echo '{"n": 1}' | "$bin" publish --socket "$dir/ingest.sock" --topic other -)
wait "$curl_pid" || true
expected=$(printf 'id: %s\nevent: greeting\ndata: hello\ndata: world\n\nid: %s\ndata: {"n": 1}\n\n' "$id1" "$id2")
actual=$(tail -n +2 "$dir/stream.out")
if [ "$actual" != "$expected" ]; then
  echo "smoke: curl saw:"; cat "$dir/stream.out"; echo "expected:"; echo "$expected"; exit 1
fi
echo "smoke: curl subscriber received both events exactly"

"$loadtest" idle --addr "127.0.0.1:$port" --streams 500 --hold 1s --server-pid "$server_pid" \
  --sources 127.0.0.1,127.0.0.2 --connect-timeout 20s >"$dir/idle.json"
grep -q '"streams_open":500' "$dir/idle.json" || { cat "$dir/idle.json"; exit 1; }
echo "smoke: idle load generator held 500 streams: $(cat "$dir/idle.json")"

# Each scenario exits non-zero when anything was missing, duplicated or refused; the
# summary line it prints on stderr is shown. Two worker processes where it matters, so the
# coordinator's merge is exercised too.
run_load() { # name server-pid args...
  local name=$1 pid=$2
  shift 2
  if ! "$loadtest" "$@" --server-pid "$pid" --deadline 90s >"$dir/$name.json" 2>"$dir/$name.err"; then
    echo "smoke: $name failed:"; cat "$dir/$name.err"; cat "$dir/$name.json"; exit 1
  fi
  echo "smoke: $(tail -n 1 "$dir/$name.err")"
}
run_load fanout "$server_pid" fanout --addr "127.0.0.1:$port" --socket "$dir/ingest.sock" \
  --subscribers 200 --events 50 --rate 50 --workers 2
grep -q '"missing":0,"duplicates":0' "$dir/fanout.json"
run_load churn "$server_pid" churn --addr "127.0.0.1:$port" --socket "$dir/ingest.sock" \
  --clients 200 --events 150 --rate 50 --max-events 10 --workers 2
grep -q '"missing":0,"duplicates":0' "$dir/churn.json"

# Slow readers need limits that a short run reaches: a second server with small ones.
slow_port=$((port + 1))
printf '[http]\nlisten = "127.0.0.1:%s"\n[ingest]\nsocket = "%s"\n[streams]\nmax_pending_bytes = 16384\nwrite_timeout = "2s"\n' \
  "$slow_port" "$dir/slow.sock" >"$dir/slow.toml"
"$bin" --config "$dir/slow.toml" 2>"$dir/slow-server.log" &
slow_pid=$!
for _ in $(seq 50); do [ -S "$dir/slow.sock" ] && break; sleep 0.1; done
run_load slow "$slow_pid" slow --addr "127.0.0.1:$slow_port" --socket "$dir/slow.sock" \
  --subscribers 100 --slow-share 0.1 --events 400 --size 16000 --rate 100
grep -q '"slow_streams":10,"slow_cut":10' "$dir/slow.json"
kill -TERM "$slow_pid"
wait "$slow_pid"
slow_pid=

# TLS streams (rustls for the handshake, ssehub's record layer after it): fan-out over
# TLS 1.3 and churn with resume over TLS 1.2, against a third server with a certificate.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout "$dir/key.pem" -out "$dir/cert.pem" -days 2 -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -addext "basicConstraints=critical,CA:FALSE" 2>/dev/null
tls_port=$((port + 2))
printf '[http]\nlisten = "127.0.0.1:%s"\n[ingest]\nsocket = "%s"\n[tls]\ncert = "%s"\nkey = "%s"\n' \
  "$tls_port" "$dir/tls.sock" "$dir/cert.pem" "$dir/key.pem" >"$dir/tls.toml"
"$bin" --config "$dir/tls.toml" 2>"$dir/tls-server.log" &
tls_pid=$!
for _ in $(seq 50); do [ -S "$dir/tls.sock" ] && break; sleep 0.1; done
run_load tls-fanout "$tls_pid" fanout --addr "127.0.0.1:$tls_port" --socket "$dir/tls.sock" \
  --subscribers 200 --events 50 --rate 50 --workers 2 --tls-ca "$dir/cert.pem"
grep -q '"missing":0,"duplicates":0' "$dir/tls-fanout.json"
run_load tls-churn "$tls_pid" churn --addr "127.0.0.1:$tls_port" --socket "$dir/tls.sock" \
  --clients 100 --events 100 --rate 50 --max-events 10 --tls-ca "$dir/cert.pem" --tls12
grep -q '"missing":0,"duplicates":0' "$dir/tls-churn.json"
kill -TERM "$tls_pid"
wait "$tls_pid"

kill -TERM "$server_pid"
wait "$server_pid"
server_pid=
[ ! -e "$dir/ingest.sock" ] || { echo "smoke: socket file left behind"; exit 1; }
echo "smoke: SIGTERM exited 0 and removed the socket"
