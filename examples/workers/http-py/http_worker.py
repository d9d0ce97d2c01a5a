#!/usr/bin/python3
"""HTTP worker (Python SDK) for HTTP over invocation (event "http"): answers
{"app", "method", "path", "pid"} as JSON for any request, or N bytes of "x"
for ?size=N (benchmarks). Started by the engine as
    http_worker.py --app NAME --endpoint SOCKET --uuid UUID --locator HOST:PORT
"""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "..", "..", "sdk", "python"))
from drover import worker  # noqa: E402

SIZE_MAX = 1 << 30
BLOCK = b"x" * (64 << 10)


def _blocks(n):
    while n > 0:
        yield BLOCK[:n]
        n -= len(BLOCK)


@worker.http("http")
def serve(req):
    if "size" in req.args:
        size = req.args["size"][0]
        if not size.isdigit() or int(size) > SIZE_MAX:
            return 400, [("content-type", "text/plain")], "bad size\n"
        n = int(size)
        return 200, [("content-type", "application/octet-stream"),
                     ("content-length", str(n))], _blocks(n)
    body = json.dumps({"app": worker.default.app, "method": req.method, "path": req.path,
                       "pid": os.getpid()})
    return 200, [("content-type", "application/json")], body + "\n"


if __name__ == "__main__":
    raise SystemExit(worker.run())
