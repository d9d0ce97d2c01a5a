"""The gateway against real backends: drover dev's gateway routing by Host to
test-server instances, a standalone `drover gateway` following dev's
metalocator (internal ports from SERVICE_TAGS, staging on 1<port>), static
routes, routing-group weights, instances leaving under load without a failed
request, smuggling attempts, and the admin endpoints."""
import http.client
import json
import os
import random
import socket
import subprocess
import threading
import time
import urllib.request

import pytest

from conftest import BIN, ROOT, SANITIZER_MARKS, free_port

SERVER_PY = os.path.join(ROOT, "examples", "test-server", "server.py")


def wait_for(fn, timeout=30, interval=0.1, what="condition"):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def healthy(d, app, n):
    inst = d.get(f"/v1/instances?app={app}").json()["instances"]
    ok = [i for i in inst if i["state"] == "healthy"]
    return ok if len(ok) == n and len(inst) == n else None


def service(app_id, instances=2, **extra):
    spec = {
        "id": app_id,
        "cmd": f"exec python3 {SERVER_PY}",
        "instances": instances,
        "mem": 64,
        "cpus": 0.05,
        "portDefinitions": [{"port": 0, "name": "http"}],
        "healthChecks": [{"protocol": "HTTP", "path": "/healthcheck", "portIndex": 0,
                          "gracePeriodSeconds": 5, "intervalSeconds": 1,
                          "timeoutSeconds": 2, "maxConsecutiveFailures": 3}],
        "taskKillGracePeriodSeconds": 10,
    }
    spec.update(extra)
    return spec


def get(port, path="/", host=None, timeout=10):
    """GET through a gateway: (status, headers, body)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path, headers={"Host": host} if host else {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def pid_of(body):
    return json.loads(body)["pid"]


def routed(port, host, path="/"):
    try:
        status, _, _ = get(port, path, host, timeout=2)
        return status == 200
    except OSError:
        return False


class Gateway:
    """A standalone `drover gateway` process."""

    def __init__(self, tmp, args):
        self.http_port = free_port()
        self.admin_port = free_port()
        self.log_path = os.path.join(tmp, f"gateway-{self.http_port}.log")
        self.log = open(self.log_path, "ab")
        cmd = [BIN, "gateway", "--http", f"127.0.0.1:{self.http_port}",
               "--admin", f"127.0.0.1:{self.admin_port}", "--threads", "2"] + args
        env = dict(os.environ)
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=1")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log, env=env)
        wait_for(self._up, 20, what="gateway admin endpoint")

    def _up(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"gateway exited {self.proc.returncode}:\n{self.logs()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/healthz",
                                        timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def admin(self, path):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5) as r:
            return r.read().decode()

    def logs(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            rc = self.proc.wait(timeout=30)
        else:
            rc = self.proc.returncode
        self.log.close()
        reports = [line for line in self.logs().splitlines()
                   if any(m in line for m in SANITIZER_MARKS)]
        assert not reports, "\n".join(reports)
        return rc


@pytest.fixture
def gateway(tmp_path):
    made = []

    def make(args):
        g = Gateway(str(tmp_path), args)
        made.append(g)
        return g

    yield make
    for g in made:
        assert g.stop() == 0


def test_dev_gateway_routes_by_host(drover):
    security = {"Strict-Transport-Security": "max-age=31536000; preload",
                "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff"}
    spec = service("/t/web", routes=[{"host": "web.test", "headers": security},
                                     {"host": "*.web.test", "path": "/slow"}])
    assert drover.post("/v1/apps", spec).status == 201
    insts = wait_for(lambda: healthy(drover, "/t/web", 2), what="2 healthy instances")
    port = drover.gateway_port
    wait_for(lambda: routed(port, "web.test"), what="the route to reach the gateway")

    # Both instances serve: the balancer spreads requests over them (the
    # second may reach the gateway's table a moment after the API saw it
    # healthy, so look for a few seconds, not for a fixed count).
    pids = set()
    want = {i["pid"] for i in insts}
    deadline = time.time() + 5
    while pids != want and time.time() < deadline:
        status, headers, body = get(port, "/", "web.test")
        assert status == 200
        pids.add(pid_of(body))
        # the route's security headers, as the field report's HAProxy set them
        assert headers["x-frame-options"] == "DENY"
        assert headers["strict-transport-security"] == "max-age=31536000; preload"
        assert headers["x-content-type-options"] == "nosniff"
    assert pids == want, (pids, insts)

    # Host matching ignores case and port; wildcards match subdomains by path.
    assert get(port, "/", "WEB.test:8080")[0] == 200
    status, _, body = get(port, "/slow?ms=1", "a.web.test")
    assert status == 200 and b"slept_ms" in body
    status, _, body = get(port, "/", "a.web.test")
    assert status == 404 and b"a.web.test" in body

    # An unknown host gets 404 naming it.
    status, _, body = get(port, "/", "nope.test")
    assert status == 404 and b"nope.test" in body

    # The app's routes are on the locator stream: resolve shows them.
    r = drover.cli("resolve", "/t/web", "--locator", f"127.0.0.1:{drover.meta_port}", "--json")
    assert r.returncode == 0, r.stderr


def test_scale_down_under_load_loses_nothing(drover):
    """Instances leave the gateway's table, the gateway confirms, and only
    then do they get SIGTERM: a client hammering the route sees no error."""
    spec = service("/t/load", instances=3, routes=[{"host": "load.test"}])
    drover.post("/v1/apps", spec)
    wait_for(lambda: healthy(drover, "/t/load", 3), what="3 healthy")
    port = drover.gateway_port
    wait_for(lambda: routed(port, "load.test"), what="route")
    stop = threading.Event()
    results = {"ok": 0, "bad": []}
    lock = threading.Lock()

    def hammer():
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while not stop.is_set():
            try:
                c.request("GET", "/slow?ms=20", headers={"Host": "load.test"})
                r = c.getresponse()
                r.read()
                with lock:
                    if r.status == 200:
                        results["ok"] += 1
                    else:
                        results["bad"].append(r.status)
            except (OSError, http.client.HTTPException) as e:
                with lock:
                    results["bad"].append(repr(e))
                c.close()
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.close()

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1)
    spec["instances"] = 1
    assert drover.put("/v1/apps/t/load", spec).status == 200
    wait_for(lambda: healthy(drover, "/t/load", 1), what="scaled to 1")
    time.sleep(1)
    stop.set()
    for t in threads:
        t.join()
    assert results["ok"] > 100, results
    assert results["bad"] == [], results["bad"][:10]


def test_standalone_gateway_internal_ports_and_staging(drover, gateway):
    """A Marathon-era spec routes unchanged: SERVICE_TAGS
    internal-listen-http-P gives production P and staging 1P."""
    while True:
        p = random.randint(2000, 5535)
        try:
            for port in (p, int(f"1{p}")):
                s = socket.socket()
                s.bind(("127.0.0.1", port))
                s.close()
            break
        except OSError:
            continue
    for env in ("production", "staging"):
        spec = service(f"/app/{env}/ts", instances=1,
                       env={"SERVICE_TAGS": f"{env},internal-listen-http-{p}"},
                       labels={"environment": env})
        assert drover.post("/v1/apps", spec).status == 201
    for env in ("production", "staging"):
        wait_for(lambda: healthy(drover, f"/app/{env}/ts", 1), what=f"{env} healthy")
    g = gateway(["--metalocator", f"127.0.0.1:{drover.meta_port}", "--internal",
                 "--internal-host", "127.0.0.1"])

    def app_on(port):
        try:
            status, _, body = get(port, "/")
            return status == 200 and json.loads(body)["env"]["MARATHON_APP_ID"]
        except (OSError, ValueError):
            return None

    assert wait_for(lambda: app_on(p), what=f"production on {p}") == "/app/production/ts"
    assert wait_for(lambda: app_on(int(f"1{p}")), what=f"staging on 1{p}") == "/app/staging/ts"
    status = json.loads(g.admin("/status"))
    ports = sorted(r.get("internal", 0) for r in status["routes"])
    assert p in ports and int(f"1{p}") in ports, status["routes"]

    # Deleting the app closes its internal listener.
    assert drover.delete("/v1/apps/app/staging/ts").status in (200, 204)
    wait_for(lambda: app_on(int(f"1{p}")) is None, what="staging listener gone")
    assert app_on(p) == "/app/production/ts"


def test_group_weights_split_traffic(drover):
    """A route to a routing group: 10k requests split 80/20 within 2%."""
    drover.post("/v1/apps", service("/t/blue", instances=1,
                                    routes=[{"host": "ab.test", "group": "ab"}]))
    drover.post("/v1/apps", service("/t/green", instances=1))
    r = drover.cli("group", "set", "ab", "/t/blue=80", "/t/green=20")
    assert r.returncode == 0, r.stderr
    blue = wait_for(lambda: healthy(drover, "/t/blue", 1), what="blue")[0]["pid"]
    wait_for(lambda: healthy(drover, "/t/green", 1), what="green")
    port = drover.gateway_port

    def both_seen():
        seen = set()
        for _ in range(50):
            s, _, b = get(port, "/", "ab.test")
            if s != 200:
                return None
            seen.add(pid_of(b))
        return len(seen) == 2

    wait_for(both_seen, what="both members routed")
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    n, to_blue = 10000, 0
    for _ in range(n):
        c.request("GET", "/whoami", headers={"Host": "ab.test"})
        r = c.getresponse()
        assert r.status == 200
        to_blue += pid_of(r.read()) == blue
    c.close()
    share = to_blue / n
    assert abs(share - 0.8) < 0.02, share

    # A sticky seed pins a client to one member.
    drover.post("/v1/apps", service("/t/sticky", instances=1,
                                    routes=[{"host": "st.test", "group": "ab",
                                             "sticky": "header:X-User"}]))
    wait_for(lambda: healthy(drover, "/t/sticky", 1), what="sticky app")
    wait_for(lambda: routed(port, "st.test"), what="sticky route")
    for user in ("alice", "bob", "carol"):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        pids = set()
        for _ in range(20):
            c.request("GET", "/", headers={"Host": "st.test", "X-User": user})
            pids.add(pid_of(c.getresponse().read()))
        c.close()
        assert len(pids) == 1, (user, pids)


def test_static_routes_admin_and_bad_input(gateway, tmp_path):
    backend_port = free_port()
    env = dict(os.environ, PORT0=str(backend_port))
    backend = subprocess.Popen(["python3", SERVER_PY], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: routed(backend_port, None, "/healthcheck"), what="backend")
        g = gateway(["--route", f"static.test=127.0.0.1:{backend_port}",
                     "--route", f"/only-path=127.0.0.1:{backend_port}"])
        status, headers, body = get(g.http_port, "/", "static.test")
        assert status == 200
        env_seen = json.loads(body)["env"]
        assert env_seen["PORT0"] == str(backend_port)
        assert get(g.http_port, "/only-path/x", "any.host")[0] == 404  # test-server's own 404
        assert get(g.http_port, "/elsewhere", "any.host")[0] == 404

        # Request smuggling: Content-Length with Transfer-Encoding is refused.
        s = socket.create_connection(("127.0.0.1", g.http_port), timeout=5)
        s.sendall(b"POST / HTTP/1.1\r\nHost: static.test\r\nContent-Length: 4\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        reply = s.recv(4096)
        s.close()
        assert reply.startswith(b"HTTP/1.1 400"), reply
        # A header block over the limit: 431.
        s = socket.create_connection(("127.0.0.1", g.http_port), timeout=5)
        s.sendall(b"GET / HTTP/1.1\r\nHost: static.test\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
        reply = s.recv(4096)
        s.close()
        assert reply.startswith(b"HTTP/1.1 431"), reply

        metrics = g.admin("/metrics")
        assert "drover_gateway_table_revision" in metrics
        status = json.loads(g.admin("/status"))
        assert any(r["host"] == "static.test" for r in status["routes"]), status
        pool = [p for p in status["pools"] if p["backends"]][0]
        assert pool["backends"][0]["addr"] == f"127.0.0.1:{backend_port}"
    finally:
        backend.terminate()
        backend.wait()

    # Dead backend: connect refused -> 502/503 with a body saying why.
    dead = free_port()
    g2 = gateway(["--route", f"dead.test=127.0.0.1:{dead}"])
    status, _, body = get(g2.http_port, "/", "dead.test")
    assert status in (502, 503) and body, (status, body)


def test_gateway_flags():
    r = subprocess.run([BIN, "gateway", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--metalocator" in r.stdout and "--route" in r.stdout
    r = subprocess.run([BIN, "gateway"], capture_output=True, text=True)
    assert r.returncode == 2 and "nothing to route" in r.stderr
    r = subprocess.run([BIN, "gateway", "--route", "x.test=nohost"], capture_output=True, text=True)
    assert r.returncode == 1 and "nohost" in r.stderr, r.stderr
    r = subprocess.run([BIN, "gateway", "--threads", "0", "--route", "=127.0.0.1:1"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--threads" in r.stderr


def ws_accept(key):
    import base64
    import hashlib
    magic = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
    return base64.b64encode(hashlib.sha1(key.encode() + magic).digest()).decode()


def ws_echo_backend(listener):
    """One WebSocket connection: answer the upgrade, then echo each frame
    back unmasked (enough of RFC 6455 for short text frames)."""
    conn, _ = listener.accept()
    with conn:
        head = b""
        while b"\r\n\r\n" not in head:
            head += conn.recv(4096)
        lines = head.decode().split("\r\n")
        hdrs = {l.split(":", 1)[0].lower(): l.split(":", 1)[1].strip() for l in lines[1:] if ":" in l}
        assert hdrs.get("upgrade", "").lower() == "websocket", hdrs
        conn.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Accept: "
                      f"{ws_accept(hdrs['sec-websocket-key'])}\r\n\r\n").encode())
        while True:
            hdr = conn.recv(2)
            if len(hdr) < 2:
                return
            n = hdr[1] & 0x7F
            mask = conn.recv(4)
            data = b""
            while len(data) < n:
                data += conn.recv(n - len(data))
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            conn.sendall(bytes([0x81, len(payload)]) + payload)


def test_websocket_upgrade_is_tunnelled(gateway):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    bport = listener.getsockname()[1]
    t = threading.Thread(target=ws_echo_backend, args=(listener,), daemon=True)
    t.start()
    g = gateway(["--route", f"ws.test=127.0.0.1:{bport}"])
    s = socket.create_connection(("127.0.0.1", g.http_port), timeout=10)
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    s.sendall((f"GET /chat HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head
    assert ws_accept(key).encode() in head
    for text in (b"hello", b"through the gateway", b"x" * 100):
        mask = os.urandom(4)
        s.sendall(bytes([0x81, 0x80 | len(text)]) + mask +
                  bytes(b ^ mask[i % 4] for i, b in enumerate(text)))
        got = b""
        while len(got) < 2 + len(text):
            got += s.recv(4096)
        assert got == bytes([0x81, len(text)]) + text
    s.close()
    t.join(5)
    listener.close()


def test_holds_10k_idle_keepalive_connections(gateway):
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 10000 + 500
    if hard < want:
        pytest.fail(f"RLIMIT_NOFILE hard limit {hard} is below {want}: cannot hold 10k connections")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    backend_port = free_port()
    env = dict(os.environ, PORT0=str(backend_port))
    backend = subprocess.Popen(["python3", SERVER_PY], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    socks = []
    try:
        wait_for(lambda: routed(backend_port, None, "/healthcheck"), what="backend")
        g = gateway(["--route", f"=127.0.0.1:{backend_port}", "--threads", "2"])
        req = b"GET /healthcheck HTTP/1.1\r\nHost: idle.test\r\n\r\n"
        for i in range(10000):
            s = socket.create_connection(("127.0.0.1", g.http_port), timeout=10)
            socks.append(s)
            if i % 100 == 0:  # some have had a request: keep-alive, then idle
                s.sendall(req)
                assert s.recv(4096).startswith(b"HTTP/1.1 200")
        time.sleep(1)
        # Every connection is still open: a request on a sample of them works.
        for s in random.sample(socks, 200):
            s.sendall(req)
            reply = s.recv(4096)
            assert reply.startswith(b"HTTP/1.1 200"), reply
        status = json.loads(g.admin("/status"))
        assert status["routes"], status
        with open(f"/proc/{g.proc.pid}/status") as f:
            rss = [l for l in f if l.startswith("VmRSS")][0]
        print("gateway with 10k idle connections:", rss.strip())
    finally:
        for s in socks:
            s.close()
        backend.terminate()
        backend.wait()
