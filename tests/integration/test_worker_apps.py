"""Worker apps end to end through `drover dev`: the example specs deployed
with `drover deploy`, the SDK examples run by the node's engine, reached
through the gateway (by route and by X-Drover-App) and by `drover invoke`.
Nothing here is faked: real engine, real workers (C and Python SDKs), real
gateway bridge."""
import http.client
import json
import os
import time

from conftest import ROOT


def wait_for(fn, timeout=30, interval=0.1, what="condition"):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = fn()
        except OSError as e:
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def deploy(d, name):
    spec = os.path.join(ROOT, "examples", "specs", name)
    r = d.cli("deploy", spec, "--var", f"root={ROOT}", "--wait", timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def request(port, method, path, host=None, body=None, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        h = dict(headers or {})
        if host:
            h["Host"] = host
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def test_http_workers_through_the_gateway(drover):
    port = drover.gateway_port
    deploy(drover, "http-worker-c.json")
    deploy(drover, "http-worker-py.json")

    for host, app in (("http-c.examples.local", "/examples/http-c"),
                      ("http-py.examples.local", "/examples/http-py")):
        # the first request may cold-start the pool; the route may take a
        # moment to reach the gateway
        status, headers, body = wait_for(
            lambda: (lambda r: r if r[0] == 200 else None)(
                request(port, "GET", "/hello?x=1", host)),
            what=f"{host} routed to its worker")
        doc = json.loads(body)
        assert doc["method"] == "GET" and doc["path"].startswith("/hello"), doc
        pid = doc["pid"]
        assert pid > 0
        # a body of 3 MB streamed back (chunked: the worker sets no length)
        status, headers, body = request(port, "GET", "/?size=3000000", host)
        assert status == 200 and len(body) == 3000000 and body == b"x" * 3000000
        # a POST's body reaches the worker
        status, _, body = request(port, "POST", "/echo", host, body=b"payload")
        assert status == 200, body
        # by header, without a route
        status, _, body = request(port, "GET", "/by-header", "unrouted.local",
                                  headers={"X-Drover-App": app})
        assert status == 200 and json.loads(body)["path"].startswith("/by-header")
        # the path form /<app>/<event>/<rest>, when no route matches
        status, _, body = request(port, "GET", f"{app}/http/pathform?a=1", "unrouted.local")
        assert status == 200 and json.loads(body)["path"].startswith("/pathform"), body
        # an event no handler serves: 404 from the worker's SDK
        status, _, body = request(port, "GET", "/", "unrouted.local",
                                  headers={"X-Drover-App": app, "X-Drover-Event": "nope"})
        assert status == 404, body

    # a service named in X-Drover-App is not a worker
    status, _, body = request(port, "GET", "/", "x", headers={"X-Drover-App": "/no/such"})
    assert status == 404

    # the pool grew on demand and shows in the CLI
    out = drover.cli("app", "pool", "/examples/http-c")
    assert out.returncode == 0 and "active" in out.stdout, out.stdout + out.stderr


def test_invoke_echo_workers(drover):
    # `drover invoke` resolves through the locator (dev's is on a free port here)
    loc = {"DROVER_LOCATOR": f"127.0.0.1:{drover.meta_port}"}
    deploy(drover, "echo-worker-c.json")
    deploy(drover, "echo-worker-py.json")
    for app in ("/examples/echo-c", "/examples/echo-py"):
        r = wait_for(lambda: (lambda o: o if o.returncode == 0 else None)(
            drover.cli("invoke", app, "echo", "hello", env=loc)), what=f"{app} answers")
        assert r.stdout == "hello", r
        # stdin streamed, 2 MB, comes back whole
        data = "0123456789abcdef" * (2 * 1024 * 1024 // 16)
        r = drover.cli("invoke", app, "echo", "-", input=data, timeout=60, env=loc)
        assert r.returncode == 0 and r.stdout == data, (r.returncode, len(r.stdout), r.stderr)
        # an unknown event: the SDK's [1, 38], a clear line, non-zero exit
        r = drover.cli("invoke", app, "nope", env=loc)
        assert r.returncode != 0 and "38" in r.stderr and "nope" in r.stderr, r.stderr
    r = drover.cli("invoke", "/no/such/app", "echo", env=loc)
    assert r.returncode != 0 and "/no/such/app" in r.stderr
