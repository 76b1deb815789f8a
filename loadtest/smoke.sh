#!/usr/bin/env bash
# Small smoke of the README quick start and the idle load generator: real binary, curl
# subscriber, `ssehub publish` producer. Correctness only, never a timing. Bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/ssehub
loadtest=target/release/ssehub-loadtest
cargo build --release --workspace --quiet
dir=$(mktemp -d)
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
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

kill -TERM "$server_pid"
wait "$server_pid"
server_pid=
[ ! -e "$dir/ingest.sock" ] || { echo "smoke: socket file left behind"; exit 1; }
echo "smoke: SIGTERM exited 0 and removed the socket"
