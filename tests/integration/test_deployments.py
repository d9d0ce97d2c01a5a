"""Deployments under `drover dev` with real test-server instances behind the
real gateway: a rolling upgrade while clients hammer the route loses no
request and never breaks the upgrade strategy's bounds; a version that never
gets healthy fails at its deadline and rolls itself back without touching
the instances that serve; a KV change under an app's config prefix rolls the
instances one at a time; cancel holds an app where it is; a canary takes its
share of the traffic through the app's routing group until promoted or
aborted; scale, stop/start and rollback to any version."""
import http.client
import socket
import threading
import time

from test_gateway import get, healthy, pid_of, routed, service, wait_for


def deployment(d, dep_id):
    return d.get(f"/v1/deployments/{dep_id}").json()


def finished(d, dep_id):
    dep = deployment(d, dep_id)
    return dep if dep["status"] != "running" else None


def read_events(port, path, until, timeout=10):
    """Read a server-sent event stream until `until` shows up, or the
    timeout passes; returns what was read."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    buf = b""
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and until.encode() not in buf:
            s.settimeout(max(0.1, deadline - time.time()))
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            buf += chunk
    finally:
        s.close()
    return buf.decode(errors="replace")


def instances(d, app):
    return d.get(f"/v1/instances?app={app}").json()["instances"]


class Hammer:
    """Clients looping GETs through the gateway; every answer is checked."""

    def __init__(self, port, host, n=4):
        self.port, self.host = port, host
        self.stop_ev = threading.Event()
        self.ok = 0
        self.bad = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run) for _ in range(n)]
        for t in self.threads:
            t.start()

    def run(self):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self.stop_ev.is_set():
            try:
                c.request("GET", "/slow?ms=10", headers={"Host": self.host})
                r = c.getresponse()
                r.read()
                with self.lock:
                    if r.status == 200:
                        self.ok += 1
                    else:
                        self.bad.append(r.status)
            except (OSError, http.client.HTTPException) as e:
                with self.lock:
                    self.bad.append(repr(e))
                c.close()
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        c.close()

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join()


def test_rolling_upgrade_through_gateway_loses_nothing(drover):
    spec = service("/t/roll", instances=4, routes=[{"host": "roll.test"}],
                   upgradeStrategy={"minimumHealthCapacity": 0.5, "maximumOverCapacity": 0.5})
    r = drover.post("/v1/apps", spec)
    assert r.status == 201 and r.json()["deployment"]
    first = r.json()["deployment"]
    wait_for(lambda: healthy(drover, "/t/roll", 4), what="4 healthy")
    assert wait_for(lambda: finished(drover, first), what="create done")["status"] == "succeeded"
    port = drover.gateway_port
    wait_for(lambda: routed(port, "roll.test"), what="route")
    old_ids = {i["id"] for i in instances(drover, "/t/roll")}

    hammer = Hammer(port, "roll.test")
    seen_running = []
    try:
        time.sleep(0.5)
        spec["env"] = {"RELEASE": "2"}
        r = drover.put("/v1/apps/t/roll", spec)
        assert r.status == 200, r.text
        body = r.json()
        assert body["version"] == 2 and body["deployment"]
        dep_id = body["deployment"]

        def done():
            inst = [i for i in instances(drover, "/t/roll")
                    if i["state"] not in ("finished", "killed", "failed")]
            seen_running.append(len(inst))
            return finished(drover, dep_id)
        dep = wait_for(done, timeout=90, interval=0.05, what="rolling upgrade")
        time.sleep(0.5)
    finally:
        hammer.stop()
    assert dep["status"] == "succeeded", dep
    assert dep["kind"] == "deploy" and dep["from_version"] == 1 and dep["version"] == 2
    assert hammer.ok > 100, hammer.ok
    assert hammer.bad == [], hammer.bad[:10]
    # 4 x (1 + 0.5) = 6 at most, counting instances still draining
    assert max(seen_running) <= 6 + 2, seen_running
    msgs = [s["message"] for s in dep["steps"]]
    assert any(m.startswith("started") and "version 2" in m for m in msgs), msgs
    assert any(m.startswith("stopped") and "version 1" in m for m in msgs), msgs
    assert msgs[-1].startswith("succeeded"), msgs
    now = wait_for(lambda: healthy(drover, "/t/roll", 4), what="4 new healthy")
    assert not old_ids & {i["id"] for i in now}
    assert {i["version"] for i in now} == {2}
    app = drover.get("/v1/apps/t/roll").json()
    assert app["deployment"] == dep_id and app["placement"] is None
    # the events stream told the story too
    ev = read_events(drover.port, "/v1/events?from=1&type=deployment", "no such text", timeout=2)
    lines = [ln for ln in ev.splitlines() if dep_id in ln]
    assert any('"succeeded"' in ln for ln in lines), ev[-2000:]


def test_broken_version_fails_and_rolls_back(drover):
    spec = service("/t/broken", instances=2, autoRollback=True, progressDeadlineSeconds=4)
    dep1 = drover.post("/v1/apps", spec).json()["deployment"]
    wait_for(lambda: healthy(drover, "/t/broken", 2), what="2 healthy")
    wait_for(lambda: finished(drover, dep1), what="create done")
    keep = {i["id"] for i in instances(drover, "/t/broken")}
    bad = dict(spec)
    bad["healthChecks"] = [dict(spec["healthChecks"][0], path="/no-such-path",
                                gracePeriodSeconds=0)]
    r = drover.put("/v1/apps/t/broken", bad)
    dep2 = r.json()["deployment"]
    assert r.json()["version"] == 2
    failed = wait_for(lambda: finished(drover, dep2), timeout=60, what="deadline")
    assert failed["status"] == "failed", failed
    assert "no progress for 4 s" in failed["reason"], failed["reason"]
    assert failed["rolled_back_by"]
    rb = wait_for(lambda: finished(drover, failed["rolled_back_by"]), timeout=60,
                  what="rollback deployment")
    assert rb["status"] == "succeeded" and rb["kind"] == "rollback", rb
    app = drover.get("/v1/apps/t/broken").json()
    assert app["version"] == 3
    assert app["spec"]["healthChecks"][0]["path"] == "/healthcheck"
    # the instances that served all along were never touched
    ok = wait_for(lambda: healthy(drover, "/t/broken", 2), what="back to 2 healthy")
    assert {i["id"] for i in ok} == keep


def test_config_change_rolls_one_at_a_time(drover):
    assert drover.put("/v1/kv/config/greeter/greeting", b"hello").status == 200
    spec = service("/t/greeter", instances=3, config="config/greeter",
                   upgradeStrategy={"minimumHealthCapacity": 1, "maximumOverCapacity": 0})
    r = drover.post("/v1/apps", spec)
    assert r.json()["app"]["config_env"] == {"GREETING": "hello"}
    wait_for(lambda: healthy(drover, "/t/greeter", 3), what="3 healthy")
    wait_for(lambda: finished(drover, r.json()["deployment"]), what="create done")

    assert drover.put("/v1/kv/config/greeter/greeting", b"bonjour").status == 200

    def config_deployment():
        app = drover.get("/v1/apps/t/greeter").json()
        return app if app["version"] == 2 else None
    app = wait_for(config_deployment, what="a config version")
    assert app["config_env"] == {"GREETING": "bonjour"}
    dep_id = app["deployment"]
    counts = []

    def done():
        inst = instances(drover, "/t/greeter")
        live = [i for i in inst if i["state"] not in ("finished", "killed", "failed")]
        good = [i for i in inst if i["state"] == "healthy"]
        counts.append((len(live), len(good)))
        return finished(drover, dep_id)
    dep = wait_for(done, timeout=120, interval=0.05, what="config rollout")
    assert dep["status"] == "succeeded" and dep["kind"] == "config", dep
    # one extra at a time (1 and 0): never more than 4 running, 3 healthy kept
    assert max(c[0] for c in counts) <= 4 + 1, counts
    assert min(c[1] for c in counts) >= 3 - 1, counts
    starts = [s for s in dep["steps"] if s["message"].startswith("started")]
    assert len(starts) >= 3, dep["steps"]
    assert all(s["message"].startswith("started 1 ") for s in starts), starts
    # the instances run with the new value
    node = drover.get("/v1/nodes").json()["nodes"][0]["id"]
    asg = drover.get(f"/v1/nodes/{node}/assignments").json()["instances"]
    envs = {a["spec"]["env"].get("GREETING") for a in asg if a["app"] == "/t/greeter"}
    assert envs == {"bonjour"}
    # and rolling back restores the old value
    r = drover.post("/v1/apps/t/greeter/rollback")
    assert r.status == 200 and r.json()["app"]["config_env"] == {"GREETING": "hello"}


def test_cancel_holds_the_app_where_it_is(drover):
    spec = service("/t/hold", instances=2)
    first = drover.post("/v1/apps", spec).json()["deployment"]
    wait_for(lambda: healthy(drover, "/t/hold", 2), what="2 healthy")
    wait_for(lambda: finished(drover, first), what="create done")
    bad = dict(spec)
    bad["healthChecks"] = [dict(spec["healthChecks"][0], path="/no-such-path")]
    dep_id = drover.put("/v1/apps/t/hold", bad).json()["deployment"]
    wait_for(lambda: len(instances(drover, "/t/hold")) == 4, what="2 new started beside")
    r = drover.delete(f"/v1/deployments/{dep_id}")
    assert r.status == 200 and r.json()["status"] == "cancelled"
    assert drover.delete(f"/v1/deployments/{dep_id}").status == 409
    before = sorted(i["id"] for i in instances(drover, "/t/hold"))
    time.sleep(2)
    assert sorted(i["id"] for i in instances(drover, "/t/hold")) == before
    # the next change takes over from what runs
    r = drover.post("/v1/apps/t/hold/rollback", {"version": 1})
    assert r.status == 200
    dep = wait_for(lambda: finished(drover, r.json()["deployment"]), timeout=60, what="rollback")
    assert dep["status"] == "succeeded"
    wait_for(lambda: healthy(drover, "/t/hold", 2), what="2 healthy again")


def test_canary_share_promote_and_abort(drover):
    spec = service("/t/can", instances=3, routes=[{"host": "can.test"}])
    first = drover.post("/v1/apps", spec).json()["deployment"]
    wait_for(lambda: healthy(drover, "/t/can", 3), what="3 healthy")
    wait_for(lambda: finished(drover, first), what="create done")
    port = drover.gateway_port
    wait_for(lambda: routed(port, "can.test"), what="route")

    spec2 = dict(spec, env={"RELEASE": "canary"})
    r = drover.put("/v1/apps/t/can?canary=25", spec2)
    assert r.status == 200, r.text
    body = r.json()
    assert body["version"] == 2 and body["app"]["version"] == 1
    assert body["app"]["canary"]["percent"] == 25 and body["app"]["canary"]["instances"] == 1
    dep = wait_for(lambda: finished(drover, body["deployment"]), timeout=60, what="canary up")
    assert dep["status"] == "succeeded" and dep["kind"] == "canary"
    group = drover.get("/v1/groups/canary.t.can").json()
    assert {m["target"]: m["weight"] for m in group["members"]} == {"/t/can@1": 7500,
                                                                     "/t/can@2": 2500}

    def canary_pids():
        inst = [i for i in instances(drover, "/t/can") if i["state"] == "healthy"]
        return {i["pid"] for i in inst if i["version"] == 2} or None
    cpids = wait_for(canary_pids, what="canary pid")

    def share():
        hits = 0
        for _ in range(400):
            status, _, body = get(port, "/whoami", "can.test")
            assert status == 200
            hits += pid_of(body) in cpids
        return hits / 400
    frac = wait_for(lambda: (lambda f: f if 0.17 < f < 0.33 else None)(share()), timeout=20,
                    what="about 25% on the canary")
    assert 0.17 < frac < 0.33

    # abort: the canary goes, the group goes, everything on version 1
    r = drover.post("/v1/apps/t/can/abort")
    assert r.status == 200 and r.json()["app"]["canary"] is None
    wait_for(lambda: finished(drover, r.json()["deployment"]), timeout=60, what="abort")
    wait_for(lambda: drover.get("/v1/groups/canary.t.can").status == 404, what="group gone")
    ok = wait_for(lambda: healthy(drover, "/t/can", 3), what="3 of version 1")
    assert {i["version"] for i in ok} == {1}
    assert drover.post("/v1/apps/t/can/promote").status == 409

    # canary again, then promote: the canary's version takes over, rolled
    r = drover.put("/v1/apps/t/can?canary=34%25", spec2)
    canary_dep = r.json()["deployment"]
    wait_for(lambda: finished(drover, canary_dep), timeout=60, what="canary up")
    r = drover.post("/v1/apps/t/can/promote")
    assert r.status == 200, r.text
    assert r.json()["app"]["version"] == 3 and r.json()["app"]["canary"] is None
    dep = wait_for(lambda: finished(drover, r.json()["deployment"]), timeout=90, what="promote")
    assert dep["status"] == "succeeded" and dep["kind"] == "promote"
    ok = wait_for(lambda: healthy(drover, "/t/can", 3), what="3 of version 3")
    assert {i["version"] for i in ok} == {3}
    wait_for(lambda: drover.get("/v1/groups/canary.t.can").status == 404, what="group gone")


def test_scale_stop_start_restart_and_rollback_to_any_version(drover):
    base = {"id": "/t/ops", "cmd": "exec sleep 1000", "instances": 2, "cpus": 0.01, "mem": 16}
    assert drover.post("/v1/apps", base).status == 201
    wait_for(lambda: healthy(drover, "/t/ops", 2), what="2 running")
    ids = {i["id"] for i in instances(drover, "/t/ops")}

    r = drover.post("/v1/apps/t/ops/scale", {"instances": 3})
    assert r.status == 200 and r.json()["app"]["spec"]["instances"] == 3
    dep = wait_for(lambda: finished(drover, r.json()["deployment"]), what="scale")
    assert dep["kind"] == "scale" and dep["status"] == "succeeded"
    now = {i["id"] for i in healthy(drover, "/t/ops", 3)}
    assert ids < now  # nothing restarted

    assert drover.post("/v1/apps/t/ops/scale", {"instances": -1}).status == 400
    assert drover.post("/v1/apps/t/ops/scale", {}).status == 400
    assert drover.post("/v1/apps/t/ops/frobnicate").status == 404
    assert drover.post("/v1/apps/t/nope/scale", {"instances": 1}).status == 404

    r = drover.post("/v1/apps/t/ops/stop")
    assert r.status == 200 and r.json()["app"]["stopped"] == {"instances": 3}
    wait_for(lambda: not [i for i in instances(drover, "/t/ops")
                          if i["state"] in ("running", "healthy")], what="stopped")
    assert drover.post("/v1/apps/t/ops/stop").status == 409
    r = drover.post("/v1/apps/t/ops/start")
    assert r.status == 200 and r.json()["app"]["spec"]["instances"] == 3
    wait_for(lambda: healthy(drover, "/t/ops", 3), what="started again")

    before = {i["id"] for i in healthy(drover, "/t/ops", 3)}
    r = drover.post("/v1/apps/t/ops/restart")
    assert r.status == 200
    wait_for(lambda: finished(drover, r.json()["deployment"]), timeout=60, what="restart")
    after = {i["id"] for i in wait_for(lambda: healthy(drover, "/t/ops", 3), what="restarted")}
    assert not before & after

    drover.put("/v1/apps/t/ops", dict(base, cmd="exec sleep 1001", instances=3))
    drover.put("/v1/apps/t/ops", dict(base, cmd="exec sleep 1002", instances=3))
    r = drover.post("/v1/apps/t/ops/rollback", {"version": 1})
    assert r.status == 200
    app = r.json()["app"]
    assert app["spec"]["cmd"] == "exec sleep 1000" and app["spec"]["instances"] == 3
    assert drover.post("/v1/apps/t/ops/rollback", {"version": 99}).status == 404
    deps = drover.get("/v1/deployments?app=/t/ops&all=1").json()["deployments"]
    kinds = [d["kind"] for d in deps]
    assert kinds[0] == "rollback" and "create" in kinds and "restart" in kinds, kinds
    assert all(d["status"] in ("running", "succeeded", "superseded") for d in deps), deps
