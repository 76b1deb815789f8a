#!/usr/bin/env python3
"""How the reconnections of N clients spread over time after a SIGTERM restart.

Loopback only, bounded (every phase has a deadline; the whole run ends within
--deadline seconds). What it does:

 1. starts ssehub (the release binary) with the stock stream timings (retry_base 3 s,
    retry_jitter 2 s, shutdown_spread 10 s, drain_timeout 5 s) unless overridden;
 2. opens N streams (from several 127.0.0.0/8 source addresses) and waits for each
    stream's head and first `retry:` line;
 3. sends SIGTERM (t = 0) and, as soon as the process has exited, starts a new one -
    what `systemctl restart` does;
 4. each client behaves like a browser's EventSource: when its stream ends it waits the
    last `retry:` it was given, then reconnects; a refused or failed attempt waits the
    same delay again;
 5. records, per client, the time of the close and of the first successful reconnection
    (a `200` head) relative to the SIGTERM, and writes a histogram.

With --activation the script holds the listening sockets itself and passes them to
each hub process as systemd's ssehub.socket would (LISTEN_FDS, fds 3 and 4): then no
attempt is ever refused while the hub restarts.

Usage: python3 loadtest/restart/restart_spread.py --clients 10000 --out bench-results/X
"""

import argparse
import asyncio
import json
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bin", default=os.path.join(ROOT, "target/release/ssehub"))
    p.add_argument("--clients", type=int, default=10000)
    p.add_argument("--sources", default="127.0.0.1,127.0.0.2,127.0.0.3")
    p.add_argument("--port", type=int, default=18090)
    p.add_argument("--retry-base", default="3s")
    p.add_argument("--retry-jitter", default="2s")
    p.add_argument("--shutdown-spread", default="10s")
    p.add_argument("--drain-timeout", default="5s")
    p.add_argument("--activation", action="store_true",
                   help="pass the listening sockets in, as ssehub.socket does")
    p.add_argument("--bucket-ms", type=int, default=500)
    p.add_argument("--deadline", type=float, default=120.0,
                   help="the whole run ends within this many seconds")
    p.add_argument("--out", help="write OUT.json and OUT.md (bench-results/...)")
    return p.parse_args()


def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft < need:
        sys.exit(f"need {need} descriptors, RLIMIT_NOFILE is {soft}")


class Hub:
    """One ssehub process; `ready` resolves when it logs its listening line."""

    def __init__(self, args, config, passed):
        self.args = args
        cmd = [args.bin, "serve", "--config", config]
        pass_fds = ()
        if passed:
            # fds 3 and 4, LISTEN_PID = the shell's pid, which exec keeps.
            tcp, unix = passed
            cmd = ["sh", "-c",
                   f'exec 3<&{tcp.fileno()} 4<&{unix.fileno()}; '
                   'LISTEN_PID=$$ LISTEN_FDS=2 exec "$0" "$@"'] + cmd
            pass_fds = (tcp.fileno(), unix.fileno())
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, pass_fds=pass_fds)
        self.log = []

    async def wait_listening(self, timeout):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            line = await loop.run_in_executor(None, self.proc.stderr.readline)
            if not line:
                break
            text = line.decode(errors="replace").rstrip()
            self.log.append(text)
            if "listening http=" in text:
                # keep draining stderr so the hub never blocks on a full pipe
                loop.run_in_executor(None, self._drain)
                return
        raise RuntimeError("hub did not start: " + "\n".join(self.log[-5:]))

    def _drain(self):
        for line in self.proc.stderr:
            self.log.append(line.decode(errors="replace").rstrip())


class Client:
    def __init__(self, idx, source):
        self.idx = idx
        self.source = source
        self.retry_ms = None
        self.shutdown_retry_ms = None
        self.closed_at = None
        self.reconnected_at = None
        self.first_attempt_at = None
        self.attempts = 0
        self.refused = 0
        self.writer = None


REQUEST = b"GET /events?topic=restart HTTP/1.1\r\nHost: loadtest\r\n\r\n"


async def open_stream(client, port):
    """Connects, sends the request, reads the head and the `retry:` line."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, local_addr=(client.source, 0))
    writer.write(REQUEST)
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200 "):
        writer.close()
        raise ConnectionError(head.split(b"\r\n")[0].decode())
    line = await reader.readline()
    if not line.startswith(b"retry: "):
        raise ConnectionError(f"no retry line: {line!r}")
    client.retry_ms = int(line[7:])
    client.writer = writer
    return reader


async def live(client, reader, t0, loop):
    """Reads until the hub closes the stream; keeps the last `retry:` it sent."""
    while True:
        line = await reader.readline()
        if not line:
            break
        if line.startswith(b"retry: "):
            client.retry_ms = int(line[7:])
            client.shutdown_retry_ms = client.retry_ms
    client.closed_at = loop.time() - t0()
    client.writer.close()


async def reconnect(client, port, t0, loop, end):
    """EventSource: wait `retry`, reconnect; on failure wait `retry` again."""
    while loop.time() < end:
        await asyncio.sleep(client.retry_ms / 1000.0)
        client.attempts += 1
        if client.first_attempt_at is None:
            client.first_attempt_at = loop.time() - t0()
        try:
            reader = await asyncio.wait_for(open_stream(client, port), 10)
        except (ConnectionError, OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            client.refused += 1
            continue
        client.reconnected_at = loop.time() - t0()
        client.writer.close()
        return


def percentile(sorted_values, q):
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[i]


async def run(args):
    loop = asyncio.get_running_loop()
    started = loop.time()
    loadavg = " ".join(f"{x:.2f}" for x in os.getloadavg())
    end = started + args.deadline
    sources = args.sources.split(",")
    raise_nofile(args.clients + 200)
    tmp = tempfile.mkdtemp(prefix="ssehub-restart-")
    sock_path = os.path.join(tmp, "ingest.sock")
    config = os.path.join(tmp, "ssehub.toml")
    with open(config, "w") as f:
        f.write(f"""[http]
listen = "127.0.0.1:{args.port}"
[ingest]
socket = "{sock_path}"
[streams]
retry_base = "{args.retry_base}"
retry_jitter = "{args.retry_jitter}"
shutdown_spread = "{args.shutdown_spread}"
drain_timeout = "{args.drain_timeout}"
keepalive = "15s"
""")
    passed = None
    if args.activation:
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind(("127.0.0.1", args.port))
        tcp.listen(4096)
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        unix.bind(sock_path)
        unix.listen(128)
        passed = (tcp, unix)

    first = Hub(args, config, passed)
    await first.wait_listening(10)

    clients = [Client(i, sources[i % len(sources)]) for i in range(args.clients)]
    readers = [None] * len(clients)
    sem = asyncio.Semaphore(500)

    async def connect(i):
        async with sem:
            readers[i] = await asyncio.wait_for(open_stream(clients[i], args.port), 30)

    t_open = loop.time()
    await asyncio.gather(*(connect(i) for i in range(len(clients))))
    open_s = loop.time() - t_open
    initial_retry = [c.retry_ms for c in clients]

    t0_box = [None]
    t0 = lambda: t0_box[0]  # noqa: E731
    t0_box[0] = loop.time()
    first.proc.send_signal(signal.SIGTERM)
    tasks = [asyncio.ensure_future(live(c, readers[i], t0, loop)) for i, c in enumerate(clients)]
    recon = []
    for c, t in zip(clients, tasks):
        async def chain(c=c, t=t):
            await t
            await reconnect(c, args.port, t0, loop, end)
        recon.append(asyncio.ensure_future(chain()))

    # Restart: as soon as the old process is gone, start the new one.
    code = await loop.run_in_executor(None, first.proc.wait)
    exited_at = loop.time() - t0()
    second = Hub(args, config, passed)
    await second.wait_listening(10)
    listening_at = loop.time() - t0()

    remaining = max(1.0, end - loop.time())
    done, pending = await asyncio.wait(recon, timeout=remaining)
    for p in pending:
        p.cancel()
    second.proc.send_signal(signal.SIGTERM)
    await loop.run_in_executor(None, second.proc.wait)

    closes = sorted(c.closed_at for c in clients if c.closed_at is not None)
    times = sorted(c.reconnected_at for c in clients if c.reconnected_at is not None)
    due = sorted(c.closed_at + c.shutdown_retry_ms / 1000.0 for c in clients
                 if c.closed_at is not None and c.shutdown_retry_ms is not None)
    first_attempts = sorted(c.first_attempt_at for c in clients if c.first_attempt_at is not None)
    retries = sorted(c.shutdown_retry_ms for c in clients if c.shutdown_retry_ms is not None)
    bucket = args.bucket_ms / 1000.0
    hist = {}
    for t in times:
        b = int(t // bucket)
        hist[b] = hist.get(b, 0) + 1
    due_hist = {}
    for t in due:
        b = int(t // bucket)
        due_hist[b] = due_hist.get(b, 0) + 1
    per_100ms = {}
    for t in times:
        b = int(t // 0.1)
        per_100ms[b] = per_100ms.get(b, 0) + 1
    result = {
        "clients": args.clients,
        "loadavg_before": loadavg,
        "mode": "socket-activated" if args.activation else "plain restart (hub binds)",
        "stream_timings": {
            "retry_base": args.retry_base, "retry_jitter": args.retry_jitter,
            "shutdown_spread": args.shutdown_spread, "drain_timeout": args.drain_timeout,
        },
        "open_seconds": round(open_s, 3),
        "old_exit_code": code,
        "old_exited_at_s": round(exited_at, 3),
        "new_listening_at_s": round(listening_at, 3),
        "closed": len(closes),
        "last_close_s": round(closes[-1], 3) if closes else None,
        "reconnected": len(times),
        "not_reconnected": args.clients - len(times),
        "attempts_refused_or_failed": sum(c.refused for c in clients),
        "clients_refused_at_least_once": sum(1 for c in clients if c.refused),
        "shutdown_retry_seen": len(retries),
        "shutdown_retry_ms": {
            "min": retries[0], "p50": percentile(retries, 0.5), "max": retries[-1],
            "mean": round(statistics.mean(retries)),
        },
        "initial_retry_ms": {"min": min(initial_retry), "max": max(initial_retry)},
        "reconnect_s": {
            "min": round(times[0], 3) if times else None,
            "p10": round(percentile(times, 0.1), 3) if times else None,
            "p50": round(percentile(times, 0.5), 3) if times else None,
            "p90": round(percentile(times, 0.9), 3) if times else None,
            "p99": round(percentile(times, 0.99), 3) if times else None,
            "max": round(times[-1], 3) if times else None,
        },
        "due_s": {
            "min": round(due[0], 3) if due else None,
            "p50": round(percentile(due, 0.5), 3) if due else None,
            "max": round(due[-1], 3) if due else None,
        },
        "first_attempt_s": {
            "min": round(first_attempts[0], 3) if first_attempts else None,
            "p50": round(percentile(first_attempts, 0.5), 3) if first_attempts else None,
            "max": round(first_attempts[-1], 3) if first_attempts else None,
        },
        "peak_reconnects_per_100ms": max(per_100ms.values()) if per_100ms else 0,
        "mean_reconnects_per_s_over_spread": (
            round(len(times) / (times[-1] - times[0]), 1) if len(times) > 1 else None),
        "histogram_bucket_ms": args.bucket_ms,
        "histogram": [[round(b * bucket, 3), n] for b, n in sorted(hist.items())],
        "due_histogram": [[round(b * bucket, 3), n] for b, n in sorted(due_hist.items())],
    }
    return result


def render_md(r, args, command):
    rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    width = 50
    peak = max((n for _, n in r["histogram"]), default=1)
    lines = []
    for start, n in r["histogram"]:
        bar = "#" * max(1, round(n * width / peak))
        lines.append(f"{start:6.1f}s {n:6d} {bar}")
    dpeak = max((n for _, n in r["due_histogram"]), default=1)
    due_lines = []
    for start, n in r["due_histogram"]:
        bar = "#" * max(1, round(n * width / dpeak))
        due_lines.append(f"{start:6.1f}s {n:6d} {bar}")
    rs = r["reconnect_s"]
    return f"""# Reconnection spread after a SIGTERM restart ({r['clients']:,} clients)

{time.strftime('%Y-%m-%d')}, git revision `{rev}`, {os.cpu_count()} cores ({cpu}),
{platform.system()} {platform.release()}, loopback only; load average before the run
{r['loadavg_before']} (other work on the machine skews the times).

Command: `{command}`

Mode: **{r['mode']}**. Stream timings: retry_base {r['stream_timings']['retry_base']},
retry_jitter {r['stream_timings']['retry_jitter']}, shutdown_spread
{r['stream_timings']['shutdown_spread']}, drain_timeout {r['stream_timings']['drain_timeout']}.
Each client acts as a browser's EventSource: after its stream ends it waits the last
`retry:` it was sent, then reconnects (a refused attempt waits `retry` again).

| | |
| --- | --- |
| streams open before the restart | {r['clients']:,} (opened in {r['open_seconds']} s) |
| old process exit (code {r['old_exit_code']}) | {r['old_exited_at_s']} s after SIGTERM |
| new process listening | {r['new_listening_at_s']} s |
| streams closed | {r['closed']:,} (last at {r['last_close_s']} s), {r['shutdown_retry_seen']:,} with a fresh `retry:` |
| shutdown `retry:` values | {r['shutdown_retry_ms']['min']}–{r['shutdown_retry_ms']['max']} ms (median {r['shutdown_retry_ms']['p50']}) |
| reconnected | {r['reconnected']:,} ({r['not_reconnected']} not) |
| attempts refused or failed | {r['attempts_refused_or_failed']:,} ({r['clients_refused_at_least_once']:,} clients) |
| reconnect time min / p10 / p50 / p90 / p99 / max | {rs['min']} / {rs['p10']} / {rs['p50']} / {rs['p90']} / {rs['p99']} / {rs['max']} s |
| peak reconnections in any 100 ms | {r['peak_reconnects_per_100ms']:,} |
| mean rate over the spread | {r['mean_reconnects_per_s_over_spread']} per s |

When each client was due back (its close + the shutdown `retry:` it was sent), per
{r['histogram_bucket_ms']} ms after the SIGTERM — the spread the hub asked for
(due min / p50 / max: {r['due_s']['min']} / {r['due_s']['p50']} / {r['due_s']['max']} s):

```
{chr(10).join(due_lines)}
```

Successful reconnections (a `200` head on the new process) per
{r['histogram_bucket_ms']} ms — what the clients achieved, including the one-threaded
Python client's own delays on a loaded machine (first attempts min / p50 / max:
{r['first_attempt_s']['min']} / {r['first_attempt_s']['p50']} / {r['first_attempt_s']['max']} s):

```
{chr(10).join(lines)}
```

Without the jitter every client would come back {r['stream_timings']['retry_base']} after
its close, all within the few milliseconds the drain takes.
"""


def main():
    args = parse_args()
    command = "python3 " + " ".join(sys.argv)
    result = asyncio.run(run(args))
    print(json.dumps({k: v for k, v in result.items() if k != "histogram"}, indent=1))
    if args.out:
        with open(args.out + ".json", "w") as f:
            json.dump({"command": command, **result}, f, indent=1)
        with open(args.out + ".md", "w") as f:
            f.write(render_md(result, args, command))
        print(f"wrote {args.out}.json and {args.out}.md")


if __name__ == "__main__":
    main()
