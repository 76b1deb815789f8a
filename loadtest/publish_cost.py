#!/usr/bin/env python3
"""Server CPU per published event: the ingest socket against POST /publish (issue 23).

    python3 loadtest/publish_cost.py [--bin target/release/ssehub] [--events 300000]
        [--batch 300] [--single 30000] [--repeat 3] [--json OUT]

Starts a fresh ssehub (memory history, an auth secret, pinned to core 0 with taskset) and,
from this process (pin it to core 1: `taskset -c 1 python3 ...`), publishes the same
events three ways, one phase after the other, each phase repeated `--repeat` times:

  socket   batches of `--batch` NDJSON lines on one Unix-socket connection: write a
           batch, read its answers
  http     the same batches as `POST /publish` NDJSON bodies on one keep-alive
           connection: one request per batch, its answer read before the next
  single   `--single` requests of one JSON event each on one keep-alive connection,
           each answer read before the next request is sent
  single_pipelined  the same requests sent 100 at a time (pipelined), then their answers

Events: 100-byte data, ten topics, no subscribers (the publish path alone). The server's
CPU is utime + stime of /proc/PID/stat (10 ms ticks; phases are long enough for that to
be under 2 %) read before and after each phase. Every answer must be ok, else exit 1.
Prints a JSON object: per phase, events, server CPU seconds, microseconds of server CPU
per event, events per server CPU-second; the http/socket ratio; the machine's load.
Loopback only; the server is killed at the end.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

SECRET = "publish-cost-secret"


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def lines_for(n, start):
    data = "x" * 100
    return [
        f'{{"topic":"t{(start + i) % 10}","data":"{data}"}}\n'.encode()
        for i in range(n)
    ]


def read_response(sock_file):
    status = sock_file.readline()
    code = int(status.split()[1])
    length = 0
    while True:
        h = sock_file.readline()
        if h in (b"\r\n", b""):
            break
        k, _, v = h.decode().partition(":")
        if k.lower() == "content-length":
            length = int(v)
    return code, sock_file.read(length)


def phase_socket(path, events, batch, pid):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    f = s.makefile("rb")
    before = cpu_s(pid)
    t0 = time.monotonic()
    sent = 0
    while sent < events:
        n = min(batch, events - sent)
        s.sendall(b"".join(lines_for(n, sent)))
        for _ in range(n):
            a = f.readline()
            if not a.startswith(b'{"ok":true'):
                sys.exit(f"socket: refused: {a!r}")
        sent += n
    wall = time.monotonic() - t0
    used = cpu_s(pid) - before
    s.close()
    return events, used, wall


def phase_http(addr, token, events, batch, pid):
    s = socket.create_connection(addr)
    f = s.makefile("rb")
    before = cpu_s(pid)
    t0 = time.monotonic()
    sent = 0
    while sent < events:
        n = min(batch, events - sent)
        body = b"".join(lines_for(n, sent))
        head = (
            f"POST /publish HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/x-ndjson\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        s.sendall(head + body)
        code, answers = read_response(f)
        if code != 200 or answers.count(b'{"ok":true') != n:
            sys.exit(f"http: {code} {answers[:200]!r}")
        sent += n
    wall = time.monotonic() - t0
    used = cpu_s(pid) - before
    s.close()
    return events, used, wall


def phase_single(addr, token, requests, pid, depth=1):
    s = socket.create_connection(addr)
    f = s.makefile("rb")
    data = "x" * 100
    before = cpu_s(pid)
    t0 = time.monotonic()
    for start in range(0, requests, depth):
        group = []
        for i in range(start, min(start + depth, requests)):
            body = f'{{"topic":"t{i % 10}","data":"{data}"}}'.encode()
            head = (
                f"POST /publish HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            group.append(head + body)
        s.sendall(b"".join(group))
        for _ in group:
            code, answer = read_response(f)
            if code != 200:
                sys.exit(f"single: {code} {answer!r}")
    wall = time.monotonic() - t0
    used = cpu_s(pid) - before
    s.close()
    return requests, used, wall


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/ssehub")
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--batch", type=int, default=300)
    ap.add_argument("--single", type=int, default=30_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json")
    a = ap.parse_args()
    load_before = open("/proc/loadavg").read().split()[:3]
    d = tempfile.mkdtemp()
    sock_path = os.path.join(d, "ingest.sock")
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    conf = os.path.join(d, "c.toml")
    with open(conf, "w") as f:
        f.write(
            f'[http]\nlisten = "127.0.0.1:{port}"\n[ingest]\nsocket = "{sock_path}"\n'
            f'[history]\nmax_events = 100000\n[auth]\nsecret = "{SECRET}"\n'
        )
    token = subprocess.run(
        [a.bin, "token", "--secret", SECRET, "--publish", "*", "--ttl", "1h"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    server = subprocess.Popen(
        ["taskset", "-c", "0", a.bin, "serve", "--config", conf, "--log-level", "warn"]
    )
    try:
        for _ in range(100):
            if os.path.exists(sock_path):
                break
            time.sleep(0.05)
        time.sleep(0.2)
        addr = ("127.0.0.1", port)
        runs = {"socket": [], "http": [], "single": [], "single_pipelined": []}
        for _ in range(a.repeat):
            runs["socket"].append(phase_socket(sock_path, a.events, a.batch, server.pid))
            runs["http"].append(phase_http(addr, token, a.events, a.batch, server.pid))
            runs["single"].append(phase_single(addr, token, a.single, server.pid))
            runs["single_pipelined"].append(
                phase_single(addr, token, a.single, server.pid, depth=100)
            )
        out = {"load_before": load_before}
        for name, rs in runs.items():
            per = sorted(cpu / n * 1e6 for n, cpu, _ in rs)
            out[name] = {
                "events": rs[0][0],
                "server_cpu_s": [round(cpu, 3) for _, cpu, _ in rs],
                "wall_s": [round(w, 3) for _, _, w in rs],
                "cpu_us_per_event_median": round(per[len(per) // 2], 3),
                "events_per_cpu_s_median": round(1e6 / per[len(per) // 2]),
            }
        out["http_over_socket_cpu_per_event"] = round(
            out["http"]["cpu_us_per_event_median"]
            / out["socket"]["cpu_us_per_event_median"],
            3,
        )
        out["single_requests_per_cpu_s"] = out["single"]["events_per_cpu_s_median"]
        out["single_pipelined_requests_per_cpu_s"] = out["single_pipelined"][
            "events_per_cpu_s_median"
        ]
        out["batch"] = a.batch
        out["git"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        out["command"] = "taskset -c 1 python3 loadtest/publish_cost.py " + " ".join(sys.argv[1:])
        out["load_after"] = open("/proc/loadavg").read().split()[:3]
        text = json.dumps(out, indent=1)
        print(text)
        if a.json:
            with open(a.json, "w") as f:
                f.write(text + "\n")
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
