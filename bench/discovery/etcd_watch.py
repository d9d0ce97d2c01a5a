#!/usr/bin/env python3
"""Change propagation through etcd's watch (the KV a confd/registrator-style
setup would use): time from a put being sent to the watcher seeing it, over
N changes, one at a time. Uses etcd's v3 HTTP/JSON gateway.

usage: etcd_watch.py HOST:PORT [N]
"""
import base64
import http.client
import json
import statistics
import sys
import threading
import time

host, port = sys.argv[1].rsplit(":", 1)
n = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
b64 = lambda s: base64.b64encode(s.encode()).decode()

seen = {}
cond = threading.Condition()


def watcher():
    conn = http.client.HTTPConnection(host, int(port))
    body = json.dumps({"create_request": {"key": b64("/bench/"), "range_end": b64("/bench0")}})
    conn.request("POST", "/v3/watch", body=body)
    resp = conn.getresponse()
    buf = b""
    while True:
        chunk = resp.read1(65536)
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            msg = json.loads(line).get("result", {})
            now = time.perf_counter()
            for ev in msg.get("events", []):
                key = base64.b64decode(ev["kv"]["key"]).decode()
                with cond:
                    seen[key] = now
                    cond.notify_all()


threading.Thread(target=watcher, daemon=True).start()
time.sleep(0.5)
put = http.client.HTTPConnection(host, int(port))
lat = []
for i in range(n):
    key = f"/bench/{i}"
    t0 = time.perf_counter()
    put.request("POST", "/v3/kv/put", body=json.dumps({"key": b64(key), "value": b64("x")}))
    put.getresponse().read()
    with cond:
        while key not in seen:
            if not cond.wait(5):
                sys.exit(f"change {i} never seen")
    lat.append((seen[key] - t0) * 1000)
lat.sort()
print(f"{statistics.median(lat):.3f} {lat[int(len(lat) * 0.99) - 1]:.3f}")
