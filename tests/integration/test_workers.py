"""Worker apps through `drover dev`: the agent runs an engine per worker
instance, workers (tests/integration/workers/raw_echo.py, raw msgpack, no
SDK) are started on demand, and the test invokes them over the node's
invocation service with a raw msgpack client: echo, queue-full refusal,
scale to zero and cold start, crash -> crashlog at the agent, pin."""
import json
import os
import socket
import time

import msgpack

from conftest import ROOT

WORKER = os.path.join(ROOT, "tests", "integration", "workers", "raw_echo.py")


def wait_for(fn, timeout=20, interval=0.05, what="condition"):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def worker_spec(app_id, **pool):
    return {"id": app_id, "kind": "worker", "cmd": f"exec /usr/bin/python3 {WORKER}",
            "instances": 1, "cpus": 0.1, "mem": 64, "pool": pool}


def healthy_instance(d, app_id):
    def get():
        insts = d.get(f"/v1/instances?app={app_id}").json()["instances"]
        ok = [i for i in insts if i["state"] == "healthy"]
        return ok[0] if ok else None
    return wait_for(get, what=f"a healthy instance of {app_id}")


def agent_url(d, inst):
    return d.get(f"/v1/nodes/{inst['node']}").json()["agent_url"]


def agent_get(d, inst, path):
    import urllib.request
    with urllib.request.urlopen(agent_url(d, inst) + f"/v1/instances/{inst['id']}/{path}",
                                timeout=10) as r:
        body = r.read()
        return json.loads(body) if r.headers.get("Content-Type") == "application/json" else body


def agent_post(d, inst, path, body):
    import urllib.error
    import urllib.request
    req = urllib.request.Request(agent_url(d, inst) + f"/v1/instances/{inst['id']}/{path}",
                                 data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


class Client:
    """Raw msgpack client of the invocation service."""

    def __init__(self, host, port):
        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.unpacker = msgpack.Unpacker(raw=False)
        self.msgs = []

    def send(self, *msg):
        self.sock.sendall(msgpack.packb(list(msg), use_bin_type=True))

    def enqueue(self, ch, event):
        self.send(ch, 0, [event])

    def write(self, ch, data):
        self.send(ch, 0, [data])

    def close(self, ch):
        self.send(ch, 2, [])

    def pump(self, timeout):
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return
        if not data:
            raise ConnectionError("invocation service closed the connection")
        self.unpacker.feed(data)
        self.msgs.extend(self.unpacker)

    def end(self, ch):
        for m in self.msgs:
            if m[0] == ch and m[1] != 0:
                return m
        return None

    def wait_end(self, ch, timeout=15):
        deadline = time.time() + timeout
        while time.time() < deadline and not self.end(ch):
            self.pump(0.1)
        m = self.end(ch)
        assert m, f"no close/error on channel {ch}; got {self.msgs!r}"
        return m

    def wait_first(self, ch, timeout=15):
        deadline = time.time() + timeout
        while time.time() < deadline:
            for m in self.msgs:
                if m[0] == ch:
                    return m
            self.pump(0.1)
        raise AssertionError(f"nothing on channel {ch}")

    def data(self, ch):
        return b"".join(m[2][0] for m in self.msgs if m[0] == ch and m[1] == 0)

    def shut(self):
        self.sock.close()


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def invoke(c, ch, payload=b"ping"):
    c.enqueue(ch, "echo")
    c.write(ch, payload)
    c.close(ch)
    end = c.wait_end(ch)
    assert end[1] == 2, end
    assert c.data(ch) == payload


def test_worker_echo_queue_full_scale_to_zero(drover):
    app_id = "/t/echo"
    r = drover.post("/v1/apps", worker_spec(app_id, **{"pool-limit": 1, "concurrency": 1,
                                                       "queue-limit": 1, "idle-timeout": 1}))
    assert r.status in (200, 201), r
    inst = healthy_instance(drover, app_id)
    assert len(inst["ports"]) == 1
    host, port = inst["host"], inst["ports"][0]
    st = agent_get(drover, inst, "pool")
    assert st["workers"]["total"] == 0  # nothing runs before the first request

    c = Client(host, port)
    t0 = time.monotonic()
    c.enqueue(1, "echo")
    c.write(1, b"hello")
    c.wait_first(1)
    print(f"cold start through drover dev (python raw worker): "
          f"{(time.monotonic() - t0) * 1000:.1f} ms")
    c.write(1, b" world")
    c.close(1)
    end = c.wait_end(1)
    assert end[1] == 2 and c.data(1) == b"hello world"

    # one running (held open), one queued, the third refused at once
    c.enqueue(2, "hold")
    wait_for(lambda: agent_get(drover, inst, "pool")["running"] == 1, what="one running")
    c.enqueue(3, "hold")
    c.enqueue(4, "hold")
    end = c.wait_end(4, timeout=5)
    assert end[1] == 1 and end[2][0] == [3, 11], end
    assert "queue is full (1 waiting)" in end[2][1]
    c.close(4)
    c.close(2)
    c.close(3)
    assert c.wait_end(3)[1] == 2
    st = agent_get(drover, inst, "pool")
    assert st["totals"]["refused"] == 1 and st["totals"]["served"] >= 3

    # idle-timeout 1 s: the pool goes to zero, the next request starts one
    wait_for(lambda: agent_get(drover, inst, "pool")["workers"]["total"] == 0, timeout=10,
             what="scale to zero")
    # at zero, a spare waits parked: forked by its monitor, not yet the
    # worker's program; the next request starts that very process
    wait_for(lambda: (agent_get(drover, inst, "pool")["spare"] or {}).get("pid", 0) > 0,
             what="a parked spare")
    spare = agent_get(drover, inst, "pool")["spare"]
    assert os.readlink(f"/proc/{spare['pid']}/exe").endswith("drover-shim")
    t0 = time.monotonic()
    invoke(c, 5, b"again")
    print(f"second cold start (from the spare): {(time.monotonic() - t0) * 1000:.1f} ms")
    st = agent_get(drover, inst, "pool")
    assert st["totals"]["spawned"] == 2 and st["totals"]["crashes"] == 0
    assert st["spare"] is None
    assert [w["uuid"] for w in st["workers_list"]] == [spare["uuid"]]
    assert st["workers_list"][0]["pid"] == spare["pid"]
    assert not os.readlink(f"/proc/{spare['pid']}/exe").endswith("drover-shim")
    c.shut()

    # the instance is published under the app name with api "worker"
    r = drover.cli("resolve", app_id)
    if r.returncode == 0:
        assert str(port) in r.stdout

    # deleting the app stops the pool and removes the instance
    drover.delete("/v1/apps/t/echo")
    wait_for(lambda: drover.get(f"/v1/instances?app={app_id}").json()["instances"] == [],
             what="instance removed")
    # and nothing of it keeps running, the spare parked meanwhile included
    wait_for(lambda: not [p for p in os.listdir("/proc") if p.isdigit() and
                          inst["id"] in _cmdline(p)], what="no process of the instance left")


def test_worker_crash_crashlog_and_pin(drover):
    app_id = "/t/crashy"
    drover.post("/v1/apps", worker_spec(app_id, **{"pool-limit": 3, "idle-timeout": 30,
                                                   "crashlog-limit": 3}))
    inst = healthy_instance(drover, app_id)
    c = Client(inst["host"], inst["ports"][0])
    invoke(c, 1)
    c.enqueue(2, "crash")
    end = c.wait_end(2)
    assert end[1] == 1 and end[2][0] == [4, 32], end
    assert "worker died" in end[2][1]

    logs = wait_for(lambda: agent_get(drover, inst, "crashlogs"), what="a crashlog")
    assert logs[0]["lines"] >= 3 and "status 3" in logs[0]["reason"]
    text = agent_get(drover, inst, f"crashlogs/{logs[0]['id']}").decode()
    assert "raw_echo crash line 4" in text and "raw_echo dying on purpose" in text
    assert "crash line 0" not in text  # only the last crashlog-limit lines

    # after the backoff a new worker serves
    invoke(c, 3, b"after crash")
    c.shut()

    # pin on this node: two workers without traffic; bad input names the field
    status, body = agent_post(drover, inst, "pool", {"workers": "two"})
    assert status == 400 and "workers" in body["error"]
    status, body = agent_post(drover, inst, "pool", {"workers": 99})
    assert status == 400 and "pool-limit" in body["error"]
    status, body = agent_post(drover, inst, "pool", {"workers": 2})
    assert status == 200 and body["pin"] == 2
    wait_for(lambda: agent_get(drover, inst, "pool")["workers"]["active"] == 2, timeout=10,
             what="two pinned workers")
    status, body = agent_post(drover, inst, "pool", {"workers": 1})
    wait_for(lambda: agent_get(drover, inst, "pool")["workers"]["total"] == 1, timeout=10,
             what="pinned down to one")
    status, body = agent_post(drover, inst, "pool", {"workers": 0})
    assert status == 200 and body["pin"] == 0

    r = agent_post(drover, {"node": inst["node"], "id": "nope"}, "pool", {"workers": 1})
    assert r[0] == 404


def test_app_pool_pin_through_api_and_cli(drover):
    """The app-wide pin: POST /v1/apps/<id>/pool is kept on the app, copied
    into its assignments by the scheduler (no new version, no restart) and
    applied by the node's engine; the CLI shows it through the node."""
    app_id = "/t/pinned"
    drover.post("/v1/apps", worker_spec(app_id, **{"pool-limit": 3, "idle-timeout": 30}))
    inst = healthy_instance(drover, app_id)
    r = drover.post("/v1/apps/t/pinned/pool", {"workers": 2})
    assert r.status == 200, r
    assert r.json() == {"id": app_id, "workers": 2, "automatic": False}
    wait_for(lambda: agent_get(drover, inst, "pool")["workers"]["active"] == 2, timeout=15,
             what="two workers pinned by the app")
    app = drover.get("/v1/apps/t/pinned").json()
    assert app["poolPin"] == 2 and app["version"] == 1  # no new version
    # the same instance: nothing restarted
    assert [i["id"] for i in drover.get(f"/v1/instances?app={app_id}").json()["instances"]] \
        == [inst["id"]]

    out = drover.cli("app", "pool", app_id)
    assert out.returncode == 0, out.stderr
    assert inst["id"] in out.stdout and "2 active" in out.stdout and " 2" in out.stdout
    out = drover.cli("app", "pool", app_id, "--json")
    assert json.loads(out.stdout)[0]["pin"] == 2

    # bad input names the field; a service has no pool
    r = drover.post("/v1/apps/t/pinned/pool", {"workers": -1})
    assert r.status == 400 and "$.workers" in r.json()["error"]
    r = drover.post("/v1/apps/t/pinned/pool", {"workers": 9})
    assert r.status == 400 and "pool-limit 3" in r.json()["error"]
    drover.post("/v1/apps", {"id": "/t/svc", "cmd": "sleep 1000", "instances": 0})
    r = drover.post("/v1/apps/t/svc/pool", {"workers": 1})
    assert r.status == 409 and "service" in r.json()["error"]
    assert drover.post("/v1/apps/t/none/pool", {"workers": 1}).status == 404

    # back to automatic through the CLI
    out = drover.cli("app", "pool", app_id, "auto")
    assert out.returncode == 0 and "automatic" in out.stdout, out.stderr
    wait_for(lambda: agent_get(drover, inst, "pool")["pin"] == 0, timeout=15,
             what="the pin lifted")
    assert "poolPin" not in drover.get("/v1/apps/t/pinned").json()

    # a crash shows in `drover crashlog`
    c = Client(inst["host"], inst["ports"][0])
    c.enqueue(1, "crash")
    assert c.wait_end(1)[2][0] == [4, 32]
    c.shut()
    def crash_listed():
        o = drover.cli("crashlog", "ls", app_id)
        return o if "status 3" in o.stdout else (o.returncode, o.stdout, o.stderr)
    out = wait_for(lambda: (lambda o: o if not isinstance(o, tuple) else None)(crash_listed()),
                   what="crashlog in the CLI")
    assert inst["id"] in out.stdout
    out = drover.cli("crashlog", "show", app_id)
    assert out.returncode == 0 and "raw_echo dying on purpose" in out.stdout


def test_invoke_headers_reach_the_worker(drover):
    """`drover invoke --header` and `--timeout` travel on the enqueue and
    reach the worker with its invoke, in order; a malformed one is a usage
    error before anything is sent."""
    app_id = "/t/hdr"
    r = drover.post("/v1/apps", worker_spec(app_id))
    assert r.status in (200, 201), r
    healthy_instance(drover, app_id)
    loc = {"DROVER_LOCATOR": f"127.0.0.1:{drover.meta_port}"}
    out = wait_for(lambda: (lambda o: o if o.returncode == 0 else None)(
        drover.cli("invoke", app_id, "headers", "--timeout", "9000", "--header", "trace-id=abc",
                   "--header", "tenant=blue", env=loc)), what="an answer")
    assert out.stdout == "timeout=9000;trace-id=abc;tenant=blue;", out.stdout
    bad = drover.cli("invoke", app_id, "headers", "--header", "no-equals", env=loc)
    assert bad.returncode == 2 and "NAME=VALUE" in bad.stderr, bad.stderr
