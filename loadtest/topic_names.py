#!/usr/bin/env python3
"""Memory of the topic names streams ask for (issue 28, item 2).

    python3 loadtest/topic_names.py [BIN] [STREAMS]

Starts BIN (default target/release/ssehub) with defaults on a free loopback port, opens
50 warm-up streams, reads the server's VmRSS, then opens STREAMS (default 2000) streams
that each ask for 32 topics, and reads VmRSS again, for two kinds of stream:
  shared: every stream asks for the same 32 names (what a stream costs with 32 topics);
  fresh:  every stream asks for 32 names of its own, 200 bytes each (the worst case an
          anonymous client can make: every name is new metadata).
Prints the growth per stream and per name. VmRSS is read 12 s after the streams opened
(SETTLE=seconds to change it): jemalloc gives freed pages (the subscriber sets' old
tables as they grow) back on a 10 s decay, so an earlier reading counts them.
Loopback only; bounded by STREAMS.
"""
import os
import socket
import subprocess
import sys
import tempfile
import time

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/ssehub"
N = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
SETTLE = float(os.environ.get("SETTLE", "12"))
NAMES = 32


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def measure(mode):
    d = tempfile.mkdtemp()
    port = free_port()
    cfg = os.path.join(d, "c.toml")
    with open(cfg, "w") as f:
        f.write(f'[http]\nlisten = "127.0.0.1:{port}"\n[ingest]\nsocket = "{d}/i.sock"\n')
    server = subprocess.Popen([BIN, "serve", "--config", cfg], stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 10
        while not os.path.exists(f"{d}/i.sock") and time.time() < deadline:
            time.sleep(0.05)

        def rss_kib():
            with open(f"/proc/{server.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS"):
                        return int(line.split()[1])
            return 0

        conns = []

        def open_streams(n, first):
            for c in range(first, first + n):
                if mode == "fresh":
                    names = [f"n{c:05d}-{i:03d}-" + "p" * 189 for i in range(NAMES)]
                else:
                    names = [f"shared{i:03d}" for i in range(NAMES)]
                query = "&".join("topic=" + n for n in names)
                s = socket.create_connection(("127.0.0.1", port))
                s.sendall(f"GET /events?{query} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
                head = s.recv(4096)
                assert head.startswith(b"HTTP/1.1 200"), head[:80]
                conns.append(s)

        open_streams(50, 90_000)
        time.sleep(SETTLE)
        before = rss_kib()
        open_streams(N, 0)
        time.sleep(SETTLE)
        after = rss_kib()
        grown = (after - before) * 1024
        print(
            f"{mode}: {N} streams x {NAMES} names: VmRSS {before} -> {after} KiB, "
            f"{grown / N:.0f} B per stream, {grown / N / NAMES:.0f} B per name"
        )
        for s in conns:
            s.close()
    finally:
        server.kill()
        server.wait()


for mode in ("shared", "fresh"):
    measure(mode)
