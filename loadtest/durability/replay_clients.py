#!/usr/bin/env python3
"""N clients resume at once from the same Last-Event-ID and each reads M replayed events.

Prints one JSON line: time from the first connect until the last client has all M
events, and whether every client saw exactly the expected ids in order. Loopback only,
bounded by --timeout.
"""
import argparse, json, selectors, socket, sys, time

ap = argparse.ArgumentParser()
ap.add_argument("--port", type=int, required=True)
ap.add_argument("--topic", required=True)
ap.add_argument("--clients", type=int, default=1000)
ap.add_argument("--events", type=int, default=1000)
ap.add_argument("--last-event-id", required=True)
ap.add_argument("--timeout", type=float, default=120)
args = ap.parse_args()

sel = selectors.DefaultSelector()
request = (f"GET /events?topic={args.topic} HTTP/1.1\r\nHost: bench\r\n"
           f"Last-Event-ID: {args.last_event_id}\r\n\r\n").encode()
state = {}
start = time.monotonic()
for i in range(args.clients):
    s = socket.create_connection(("127.0.0.1", args.port))
    s.setblocking(False)
    s.send(request)
    state[s] = {"tail": b"", "ids": [], "done": False}
    sel.register(s, selectors.EVENT_READ)
done = 0
while done < args.clients and time.monotonic() - start < args.timeout:
    for key, _ in sel.select(timeout=1):
        s = key.fileobj
        st = state[s]
        data = s.recv(1 << 20)
        if not data:
            sel.unregister(s)
            st["done"] = True
            done += 1
            continue
        buf = st["tail"] + data
        blocks = buf.split(b"\n\n")
        st["tail"] = blocks.pop()
        for b in blocks:
            for line in b.split(b"\n"):
                if line.startswith(b"id: "):
                    st["ids"].append(int(line[4:]))
        if len(st["ids"]) >= args.events and not st["done"]:
            st["done"] = True
            done += 1
            sel.unregister(s)
elapsed = time.monotonic() - start
first = state[next(iter(state))]["ids"]
ok = all(len(st["ids"]) == args.events and st["ids"] == first for st in state.values())
ok = ok and all(a < b for a, b in zip(first, first[1:]))
print(json.dumps({"clients": args.clients, "events_each": args.events, "complete": done,
                  "identical_gap_free": ok, "seconds": round(elapsed, 3),
                  "events_per_second": round(args.clients * args.events / elapsed)}))
sys.exit(0 if ok and done == args.clients else 1)
