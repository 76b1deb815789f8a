#!/usr/bin/env python3
"""Idle TLS streams: server private memory per stream (smaps_rollup delta / N).
Usage: tls_idle.py SERVER_PID N  (server on 127.0.0.1:18443 with [tls]; c.pem = its cert)."""
import socket, ssl, sys, time
pid=int(sys.argv[1]); n=int(sys.argv[2])
def priv():
    t=open(f"/proc/{pid}/smaps_rollup").read().split("\n")
    return sum(int(l.split()[1]) for l in t if l.startswith(("Private_Clean","Private_Dirty")))
ctx=ssl.create_default_context(cafile="c.pem")
b=priv(); socks=[]
for i in range(n):
    s=ctx.wrap_socket(socket.create_connection(("127.0.0.1",18443)),server_hostname="127.0.0.1")
    s.sendall(b"GET /events?topic=idle HTTP/1.1\r\nHost: x\r\n\r\n")
    socks.append(s)
for s in socks:
    d=b""
    while b"retry:" not in d: d+=s.recv(4096)
time.sleep(2)
a=priv()
print(f"tls streams={n} private before={b} KiB after={a} KiB per stream={(a-b)*1024/n:.0f} B")
