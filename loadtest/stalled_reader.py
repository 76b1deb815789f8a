#!/usr/bin/env python3
"""Issue 14 part 1 measurements for streams.send_buffer (bench-results/2026-11-29-stalled-reader.md).
Needs root (network namespaces); touches no interface outside the namespaces it creates.

  replay BIN SEND_BUFFER...  replay throughput over a 100 ms round trip: a hub and a client
                             in two namespaces joined by a user-space delay line (two TUN
                             devices, MTU 1500, 50 ms each way; the kernel has no netem);
                             a resume replays EVENTS events of 16,000 bytes from history.
  memory BIN SEND_BUFFER...  kernel memory of STREAMS stalled streams (SO_RCVBUF 4 KiB,
                             not reading) after a burst of BURST events of 16,000 bytes, in
                             a namespace of its own (loopback): skmem of the hub's sockets.

Environment: EVENTS (250), STREAMS (200), BURST (20), SERVER_CPU (0), CLIENT_CPU (1).
"""
import collections, ctypes, fcntl, json, os, re, select, signal, socket, struct
import subprocess, sys, tempfile, time

PAYLOAD = 16_000
CLONE_NEWNET = 0x40000000
libc = ctypes.CDLL(None, use_errno=True)
SERVER_CPU = os.environ.get("SERVER_CPU", "0")
CLIENT_CPU = os.environ.get("CLIENT_CPU", "1")


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=True, check=True, **kw)


def enter(ns):
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")
    os.close(fd)


def start_hub(bin_, send_buffer, listen, tmp, netns=None):
    sock = os.path.join(tmp, "ingest.sock")
    conf = os.path.join(tmp, "ssehub.toml")
    with open(conf, "w") as f:
        f.write(f'[http]\nlisten = "{listen}"\n[ingest]\nsocket = "{sock}"\n'
                f"[streams]\nsend_buffer = {send_buffer}\nmax_pending_bytes = 262144\n"
                f'write_timeout = "{os.environ.get("WRITE_TIMEOUT", "30s")}"\n'
                f'[history]\nmax_events = 100000\n[log]\nlevel = "warn"\n')
    cmd = ["taskset", "-c", SERVER_CPU, bin_, "serve", "--config", conf]
    if netns:
        cmd = ["ip", "netns", "exec", netns] + cmd
    p = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    for _ in range(200):
        if os.path.exists(sock):
            break
        time.sleep(0.02)
    time.sleep(0.1)
    return p, sock


def publish(sock_path, n, topic="t", size=PAYLOAD):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock_path)
    f = s.makefile("rb")
    ids = []
    for i in range(n):
        data = f"{i:06}:" + "x" * (size - 7)
        s.sendall((json.dumps({"topic": topic, "data": data}) + "\n").encode())
        ids.append(int(json.loads(f.readline())["id"]))
    s.close()
    return ids


# ---- replay over a long round trip --------------------------------------------------------

DELAY_LINE = r'''
import collections, ctypes, fcntl, os, select, struct, sys, time
libc = ctypes.CDLL(None, use_errno=True)
def tun(ns, name):
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY); libc.setns(fd, 0x40000000); os.close(fd)
    t = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(t, 0x400454ca, struct.pack("16sH", name.encode(), 0x0001 | 0x1000))
    os.set_blocking(t, False)
    return t
a = tun(sys.argv[1], "dl0"); b = tun(sys.argv[2], "dl0")
delay = float(sys.argv[3]); other = {a: b, b: a}; q = collections.deque()
print("ready", flush=True)
while True:
    timeout = max(0.0, q[0][0] - time.monotonic()) if q else None
    r, _, _ = select.select([a, b], [], [], timeout)
    now = time.monotonic()
    for fd in r:
        for _ in range(64):
            try: pkt = os.read(fd, 65536)
            except BlockingIOError: break
            q.append((now + delay, other[fd], pkt))
    while q and q[0][0] <= time.monotonic():
        _, fd, pkt = q.popleft(); os.write(fd, pkt)
'''


def replay(bin_, buffers):
    events = int(os.environ.get("EVENTS", "250"))
    tag = f"sshst{os.getpid()}"
    srv, cli = f"{tag}s", f"{tag}c"
    line = None
    try:
        sh(f"ip netns add {srv} && ip netns add {cli}")
        for ns in (srv, cli):
            sh(f"ip netns exec {ns} ip link set lo up")
        line = subprocess.Popen(["taskset", "-c", CLIENT_CPU, sys.executable, "-c", DELAY_LINE,
                                 srv, cli, "0.050"], stdout=subprocess.PIPE, text=True)
        assert line.stdout.readline().strip() == "ready"
        sh(f"ip netns exec {srv} ip addr add 10.77.0.1/24 dev dl0")
        sh(f"ip netns exec {srv} ip link set dl0 up mtu 1500")
        sh(f"ip netns exec {cli} ip addr add 10.77.0.2/24 dev dl0")
        sh(f"ip netns exec {cli} ip link set dl0 up mtu 1500")
        rtt = probe_rtt(srv, cli)
        print(f"# delay line: rtt {rtt * 1000:.1f} ms; {events} events x {PAYLOAD} B replayed")
        print("send_buffer  tb_seen  seconds  MB/s   (replay of %.1f MB)" % (events * PAYLOAD / 1e6))
        for sb in buffers:
            with tempfile.TemporaryDirectory() as tmp:
                hub, sock = start_hub(bin_, sb, "10.77.0.1:8080", tmp, netns=srv)
                try:
                    marker = publish(sock, 1, size=10)[0]
                    publish(sock, events)
                    out = subprocess.run(
                        ["ip", "netns", "exec", cli, "taskset", "-c", CLIENT_CPU, sys.executable,
                         "-c", READER, "10.77.0.1", "8080", str(marker), str(events), srv],
                        capture_output=True, text=True, check=True).stdout.split()
                    secs, tb = float(out[0]), out[1]
                    mb = events * PAYLOAD / secs / 1e6
                    print(f"{sb:>11}  {tb:>7}  {secs:7.2f}  {mb:5.2f}", flush=True)
                finally:
                    hub.terminate(); hub.wait()
    finally:
        if line:
            line.kill(); line.wait()
        subprocess.run(f"ip netns del {srv}; ip netns del {cli}", shell=True)


def probe_rtt(srv, cli):
    # A TCP connect to a closed port: SYN out, RST back, one round trip.
    code = ("import socket,time;s=socket.socket();t=time.monotonic()\n"
            "try: s.connect(('10.77.0.1', 9))\nexcept OSError: pass\nprint(time.monotonic()-t)")
    return float(subprocess.run(["ip", "netns", "exec", cli, sys.executable, "-c", code],
                                capture_output=True, text=True, check=True).stdout)


READER = r'''
import socket, subprocess, sys, time, re
host, port, marker, events, srv = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
s = socket.create_connection((host, port))
t = time.monotonic()
s.sendall(f"GET /events?topic=t HTTP/1.1\r\nHost: x\r\nLast-Event-ID: {marker}\r\n\r\n".encode())
seen, tail, tb = 0, b"", "?"
while seen < events:
    b = s.recv(1 << 20)
    if not b: raise SystemExit("EOF after %d events" % seen)
    chunk = tail + b
    seen += chunk.count(b"\ndata: ")
    tail = chunk[-8:]
    if tb == "?" and seen > events // 2:
        o = subprocess.run(["ip", "netns", "exec", srv, "ss", "-tmnH", "sport", "= :8080"],
                           capture_output=True, text=True).stdout
        m = re.search(r"tb(\d+)", o); tb = m.group(1) if m else "-"
print(time.monotonic() - t, tb)
'''


# ---- kernel memory of stalled streams -----------------------------------------------------

def memory(bin_, buffers):
    streams = int(os.environ.get("STREAMS", "200"))
    burst = int(os.environ.get("BURST", "20"))
    libc.unshare(CLONE_NEWNET)
    sh("ip link set lo up")
    print(f"# {streams} stalled streams (SO_RCVBUF 4096), burst of {burst} x {PAYLOAD} B")
    print("send_buffer  open  cut  tb/stream  sum_w_KiB  w/stream_KiB  sum_t_KiB  fin_wait_w_KiB")
    for sb in buffers:
        with tempfile.TemporaryDirectory() as tmp:
            hub, sock = start_hub(bin_, sb, "127.0.0.1:8099", tmp)
            clients = []
            try:
                for _ in range(streams):
                    c = socket.socket()
                    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                    c.connect(("127.0.0.1", 8099))
                    c.sendall(b"GET /events?topic=t HTTP/1.1\r\nHost: x\r\n\r\n")
                    head = b""
                    while not re.search(rb"\r\n\r\nretry: \d+\n", head):
                        head += c.recv(1)
                    clients.append(c)
                publish(sock, burst)
                time.sleep(1.0)
                out = subprocess.run(["ss", "-tmnaH", "sport", "= :8099"], capture_output=True,
                                     text=True).stdout
                n_open = cut = sum_w = sum_t = fin_w = 0
                tbs = set()
                for state, rest in re.findall(r"^(\S+)(.*?skmem:\([^)]*\))", out, re.M | re.S):
                    w = int(re.search(r"[(,]w(\d+)", rest).group(1))
                    t = int(re.search(r"[(,]t(\d+)", rest).group(1))
                    if state == "LISTEN":
                        continue
                    if state == "ESTAB":
                        n_open += 1
                        tbs.add(int(re.search(r"tb(\d+)", rest).group(1)))
                        sum_w += w
                        sum_t += t
                    else:
                        cut += 1
                        fin_w += w
                tb = "/".join(str(x) for x in sorted(tbs)) or "-"
                per = sum_w / max(n_open, 1) / 1024
                print(f"{sb:>11}  {n_open:>4}  {cut:>3}  {tb:>9}  {sum_w / 1024:9.0f}  {per:12.1f}"
                      f"  {sum_t / 1024:9.0f}  {fin_w / 1024:14.0f}", flush=True)
                hold = float(os.environ.get("HOLD", "0"))
                t0 = time.monotonic()
                while time.monotonic() - t0 < hold:
                    time.sleep(5)
                    o = subprocess.run(["ss", "-tmnaH", "sport", "= :8099"], capture_output=True,
                                       text=True).stdout
                    left = [int(w) for st, w in re.findall(r"^(\S+).*?skmem:\([^)]*?,w(\d+)", o, re.M | re.S)
                            if st not in ("LISTEN", "ESTAB")]
                    print(f"#   +{time.monotonic() - t0 + 1:.0f} s: {len(left)} cut sockets hold "
                          f"{sum(left) / 1024:.0f} KiB", flush=True)
            finally:
                for c in clients:
                    c.close()
                hub.terminate(); hub.wait()
        time.sleep(0.5)


if __name__ == "__main__":
    mode, bin_, *sizes = sys.argv[1:]
    {"replay": replay, "memory": memory}[mode](bin_, [int(x) for x in sizes])
