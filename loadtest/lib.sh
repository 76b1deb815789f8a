# Shared by compare.sh, tls_compare.sh, profile.sh, trim_stall.sh and history_memory.sh
# (sourced, not run): other work on the machine made to yield, nginx+nchan installed where
# missing and configured like ssehub, a wait for a listening port, the server started by
# the caller stopped by its pid, and a server's private memory and metrics read.
# The caller sets `work` (the run's directory), `NICE` and `server_pid`.

# With sched_autogroup (the default), nice only orders processes within one session's
# group and every session's group gets an equal share of the CPU: a build in another
# session would still take half of the server's core. Raising this session's group too
# makes other work on the machine yield to the benchmark (both servers alike).
raise_autogroup() {
  if [ "$NICE" != 0 ] && [ -w /proc/self/autogroup ]; then
    echo "$NICE" >/proc/self/autogroup 2>/dev/null || true
  fi
  autogroup=$(cat /proc/self/autogroup 2>/dev/null || echo none)
}

# Installs nginx and the nchan module where missing (Debian: nginx-light,
# libnginx-mod-nchan); sets nchan_module, nginx_version and nchan_version.
ensure_nchan() { # who
  local missing=()
  command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
  dpkg -s libnginx-mod-nchan >/dev/null 2>&1 || missing+=(libnginx-mod-nchan)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "$1: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  nchan_module=/usr/lib/nginx/modules/ngx_nchan_module.so
  [ -e "$nchan_module" ] || { echo "$1: $nchan_module not found" >&2; return 1; }
  nginx_version=$(nginx -v 2>&1 | sed 's/^nginx version: //')
  nchan_version=$(dpkg-query -W -f='${Version}' libnginx-mod-nchan)
}

# Writes $work/nginx.conf: one worker, the same limits as ssehub's configuration in the
# scripts (ping interval = keepalive, send_timeout = streams.write_timeout 10 s, a
# 1,000-event buffer per topic kept an hour for resume), /events and /pub?topic=.
nchan_config() { # keepalive-seconds "listen directives" ["more http directives"]
  cat >"$work/nginx.conf" <<NGINX
load_module $nchan_module;
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events {
  worker_connections 20000;
  multi_accept on;
}
http {
  access_log off;
  client_body_temp_path $work/nginx-body;
  keepalive_requests 1000000;
  send_timeout 10s;
  nchan_max_reserved_memory 256M;
  ${3:-}
  server {
    $2
    location = /events {
      nchan_subscriber eventsource;
      nchan_channel_id \$arg_topic;
      nchan_subscriber_first_message newest;
      nchan_eventsource_ping_interval $1;
    }
    location = /pub {
      nchan_publisher http;
      nchan_channel_id \$arg_topic;
      nchan_message_buffer_length 1000;
      nchan_message_timeout 1h;
    }
  }
}
NGINX
  mkdir -p "$work/nginx-body"
}

wait_port() { # port
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2
  return 1
}

# Starts ssehub on core 0 from $work/ssehub.toml (written by the caller); waits for its
# ingest socket and its HTTP port.
start_ssehub() { # binary port
  rm -f "$work/ssehub.sock"
  taskset -c 0 nice -n "$NICE" "$1" --config "$work/ssehub.toml" 2>>"$work/ssehub.log" &
  server_pid=$!
  for _ in $(seq 100); do [ -S "$work/ssehub.sock" ] && break; sleep 0.05; done
  wait_port "$2"
}

# Starts nginx on core 0 from $work/nginx.conf (nchan_config); waits for its port.
start_nginx() { # port
  taskset -c 0 nice -n "$NICE" nginx -c "$work/nginx.conf" -p "$work" 2>>"$work/nginx-error.log" &
  server_pid=$!
  wait_port "$1"
}

# Stops the server still running when the script ends (a failed run, Ctrl-C):
# `trap stop_server_on_exit EXIT`.
stop_server_on_exit() {
  if [ -n "${server_pid:-}" ]; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
}

stop_server() {
  kill -TERM "$server_pid"
  wait "$server_pid" || true
  server_pid=
}

# Private memory of process PID in KiB (Private_Clean + Private_Dirty of smaps_rollup).
private_kib() { # pid
  awk '/^Private_(Clean|Dirty):/ { s += $2 } END { print s }' "/proc/$1/smaps_rollup"
}

# One unlabelled series of ssehub's /metrics on 127.0.0.1:$port.
metric() { # name
  curl -s "http://127.0.0.1:$port/metrics" | awk -v m="$1" '$1 == m { print $2 }'
}
