#!/usr/bin/python3
"""echo worker (Python SDK): streams every request chunk of event "echo"
straight back. Started by the engine as
    echo_worker.py --app NAME --endpoint SOCKET --uuid UUID --locator HOST:PORT
"""
import os
import sys

# The SDK lives in the repo's sdk/python unless it is installed.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "..", "..", "sdk", "python"))
from drover import worker  # noqa: E402


@worker.on("echo")
def echo(request, response):
    for chunk in request:
        response.write(chunk)


if __name__ == "__main__":
    raise SystemExit(worker.run())
