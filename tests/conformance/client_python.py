"""Python client under test: httpx-sse (on httpx) in the suite's venv.

Reads JSON commands on stdin, reports what each stream does as JSON lines on stdout (the
same protocol as client_node.mjs). httpx-sse parses the stream; it has no reconnection of
its own, so this wrapper adds the loop an application writes around it (as the EventSource
spec does it): reconnect after the last `retry` value the parser handed over, send
`Last-Event-ID` with the last id seen, stop on any answer other than a 200
text/event-stream (a 204 means "do not reconnect"). TLS trust: `verify=` an SSL context
made from the test's CA file.
"""

import json
import socket
import ssl
import sys
import threading
import time
from importlib.metadata import version

import httpx
from httpx_sse import connect_sse

LOCK = threading.Lock()


def emit(obj):
    obj["t"] = time.monotonic() * 1000.0
    with LOCK:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


class Stream(threading.Thread):
    def __init__(self, cmd):
        super().__init__(daemon=True)
        self.sid = cmd["id"]
        self.url = cmd["url"]
        self.headers = cmd.get("headers") or {}
        self.ca = cmd.get("ca")
        self.closed = False
        self.sock = None

    def close(self):
        """Stops the stream now: shutting the socket down wakes the blocked read."""
        self.closed = True
        sock = self.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def run(self):
        verify = ssl.create_default_context(cafile=self.ca) if self.ca else True
        last_id = ""
        retry_ms = 3000  # the EventSource default until the server says otherwise
        timeout = httpx.Timeout(10.0, read=None)  # a stream may be quiet for long
        with httpx.Client(verify=verify, timeout=timeout) as client:
            while not self.closed:
                headers = dict(self.headers)
                if last_id:
                    headers["Last-Event-ID"] = last_id
                try:
                    with connect_sse(client, "GET", self.url, headers=headers) as source:
                        response = source.response
                        stream = response.extensions.get("network_stream")
                        self.sock = stream.get_extra_info("socket") if stream else None
                        if self.closed:
                            return
                        ctype = response.headers.get("content-type", "")
                        if response.status_code != 200 or not ctype.startswith("text/event-stream"):
                            if not self.closed:
                                emit({"id": self.sid, "kind": "error", "readyState": 2,
                                      "status": response.status_code})
                            return
                        emit({"id": self.sid, "kind": "open", "readyState": 1})
                        for sse in source.iter_sse():
                            if self.closed:
                                return
                            if sse.retry is not None:
                                retry_ms = sse.retry
                            if sse.id:
                                last_id = sse.id
                            emit({"id": self.sid, "kind": "message", "type": sse.event,
                                  "data": sse.data, "lastEventId": sse.id})
                    reason = "stream ended"
                except httpx.TransportError as e:
                    reason = f"{type(e).__name__}: {e}"
                if self.closed:
                    return
                emit({"id": self.sid, "kind": "error", "readyState": 0, "message": reason})
                time.sleep(retry_ms / 1000.0)


def main():
    streams = {}
    emit({"kind": "ready",
          "version": f"httpx-sse {version('httpx-sse')} (httpx {version('httpx')}, "
                     f"Python {sys.version.split()[0]})"})
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "open":
            s = Stream(cmd)
            streams[cmd["id"]] = s
            s.start()
        elif cmd["cmd"] == "close":
            s = streams.pop(cmd["id"], None)
            if s:
                s.close()
        elif cmd["cmd"] == "exit":
            break
    sys.stdout.flush()


if __name__ == "__main__":
    main()
