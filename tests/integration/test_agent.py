"""The node agent: instances of real processes, health checks, restarts,
limits, logs, artifacts, and surviving kill -9 of the agent."""
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request

from conftest import BIN, ROOT, Drover, free_port

TEST_SERVER = os.path.join(ROOT, "examples", "test-server")


def wait_for(fn, timeout=20, interval=0.1, what="condition"):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def instances(d, app=None):
    path = "/v1/instances" + (f"?app={app}" if app else "")
    return d.get(path).json()["instances"]


def healthy(d, app, n):
    inst = instances(d, app)
    ok = [i for i in inst if i["state"] == "healthy"]
    return ok if len(ok) == n and len(inst) == n else None


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


def http_get(port, path="/", timeout=5):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        return r.status, r.read()


def push(d, directory):
    r = d.cli("push", directory, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["id"]


def test_service_runs_with_ports_env_and_health(drover):
    art = push(drover, TEST_SERVER)
    spec_path = os.path.join(TEST_SERVER, "test-server.json")
    r = drover.cli("deploy", spec_path, "--var", "environment=staging", "--var", "instances=2",
                   "--var", f"artifact={art}")
    assert r.returncode == 0, r.stderr
    ok = wait_for(lambda: healthy(drover, "/app/staging/test-server", 2), 30,
                  what="2 healthy instances")
    ports = [i["ports"][0] for i in ok]
    assert len(set(ports)) == 2 and all(20000 <= p <= 32000 for p in ports)
    for inst in ok:
        assert inst["node"] and inst["host"] == "127.0.0.1" and inst["pid"] > 0
        assert alive(inst["pid"])
        status, body = http_get(inst["ports"][0])
        env = json.loads(body)["env"]
        assert env["PORT0"] == str(inst["ports"][0]) == env["PORT"] == env["PORT_HTTP"]
        assert env["MARATHON_APP_ID"] == env["DROVER_APP_ID"] == "/app/staging/test-server"
        assert env["DROVER_INSTANCE_ID"] == env["MESOS_TASK_ID"] == inst["id"]
        assert env["SERVICE_NAME"] == "test-server"
        assert env["DROVER_APP_VERSION"] == "1"
    # drover ps shows them.
    r = drover.cli("ps", "/app/staging/test-server")
    assert r.returncode == 0 and r.stdout.count("healthy") == 2, r.stdout


def test_scale_and_delete_stop_processes(drover):
    spec = {"id": "/t/sleeper", "cmd": "exec sleep 1000", "instances": 3, "mem": 32, "cpus": 0.1}
    drover.post("/v1/apps", spec)
    ok = wait_for(lambda: healthy(drover, "/t/sleeper", 3), what="3 sleepers")
    pids = {i["id"]: i["pid"] for i in ok}
    drover.put("/v1/apps/t/sleeper", dict(spec, instances=1))
    left = wait_for(lambda: healthy(drover, "/t/sleeper", 1), what="scaled to 1")
    gone = [p for i, p in pids.items() if i != left[0]["id"]]
    wait_for(lambda: not any(alive(p) for p in gone), what="stopped processes to exit")
    assert alive(left[0]["pid"]) and left[0]["pid"] == pids[left[0]["id"]]
    drover.delete("/v1/apps/t/sleeper")
    wait_for(lambda: instances(drover, "/t/sleeper") == [], what="instances removed")
    wait_for(lambda: not alive(left[0]["pid"]), what="last sleeper to exit")


def test_crash_loop_backoff_and_last_failure(drover):
    r = drover.post("/v1/apps", {"id": "/t/crasher", "cmd": "echo dying; exit 3",
                                 "backoffSeconds": 1, "backoffFactor": 1})
    assert r.status == 201, r
    inst = wait_for(lambda: [i for i in instances(drover, "/t/crasher") if i["restarts"] >= 3],
                    what="3 restarts")[0]
    assert inst["state"] == "failed"
    assert "exited with status 3" in inst["reason"] and "crash loop" in inst["reason"]
    assert inst["exit"]["exit_code"] == 3
    app = drover.get("/v1/apps/t/crasher").json()
    assert app["lastTaskFailure"]["reason"].startswith("exited with status 3")
    assert app["lastTaskFailure"]["instance"] == inst["id"]
    r = drover.cli("ps", "/t/crasher")
    assert "crash loop" in r.stdout


def test_start_failure_and_oom_are_reported(drover):
    drover.post("/v1/apps", {"id": "/t/nope", "args": ["/does/not/exist"],
                             "backoffSeconds": 5})
    inst = wait_for(lambda: [i for i in instances(drover, "/t/nope") if i["state"] == "failed"],
                    what="start failure")[0]
    assert "failed to start" in inst["reason"] and "No such file" in inst["reason"]
    drover.post("/v1/apps", {"id": "/t/hog", "mem": 32, "backoffSeconds": 5,
                             "cmd": "exec python3 -c 'x = bytearray(200 * 1024 * 1024); "
                                    "import time; time.sleep(30)'"})
    inst = wait_for(lambda: [i for i in instances(drover, "/t/hog") if i["state"] == "failed"],
                    what="oom kill")[0]
    assert "out of memory" in inst["reason"] and inst["exit"]["oom"] is True
    assert drover.get("/v1/status").status == 200


def test_failing_health_check_kills_and_restarts(drover, tmp_path):
    flag = tmp_path / "sick"
    port = free_port()
    # Healthy until the flag file appears; then /healthcheck answers 503.
    script = tmp_path / "svc.py"
    script.write_text(f"""
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        code = 503 if os.path.exists({str(flag)!r}) else 200
        self.send_response(code); self.send_header('Content-Length', '0'); self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer(('127.0.0.1', int(os.environ['PORT0'])), H).serve_forever()
""")
    drover.post("/v1/apps", {
        "id": "/t/sick", "cmd": f"exec python3 {script}", "backoffSeconds": 1,
        "healthChecks": [{"protocol": "HTTP", "path": "/healthcheck", "gracePeriodSeconds": 1,
                          "intervalSeconds": 1, "timeoutSeconds": 1,
                          "maxConsecutiveFailures": 2}]})
    first = wait_for(lambda: healthy(drover, "/t/sick", 1), what="healthy")[0]
    flag.write_text("x")
    wait_for(lambda: [i for i in instances(drover, "/t/sick") if i["state"] == "unhealthy"],
             what="unhealthy")
    wait_for(lambda: not alive(first["pid"]), what="sick process killed")
    flag.unlink()
    again = wait_for(lambda: healthy(drover, "/t/sick", 1), what="healthy again")[0]
    assert again["pid"] != first["pid"] and again["restarts"] >= 1
    states = [h["state"] for h in again["history"]]
    assert "killing" in states


def test_fixed_port_conflict_is_refused_with_reason(drover):
    port = free_port()
    spec = {"cmd": "exec sleep 1000", "requirePorts": True,
            "portDefinitions": [{"port": port}], "backoffSeconds": 5}
    drover.post("/v1/apps", dict(spec, id="/t/fixed-a"))
    a = wait_for(lambda: healthy(drover, "/t/fixed-a", 1), what="fixed-port app")[0]
    assert a["ports"] == [port]
    drover.post("/v1/apps", dict(spec, id="/t/fixed-b"))
    # placement knows the port is taken: the instance waits and says why
    p = wait_for(lambda: drover.get("/v1/apps/t/fixed-b").json()["placement"],
                 what="port conflict")
    assert p["waiting"] == 1 and f"has host port {port} in use" in p["summary"], p
    assert p["nodes"][0]["reason"] == f"host port {port} already in use"
    assert instances(drover, "/t/fixed-b") == []


def test_logs_tail_and_follow(drover):
    drover.post("/v1/apps", {"id": "/t/talker",
                             "cmd": "i=0; while true; do echo line-$i; echo err-$i >&2; "
                                    "i=$((i+1)); sleep 0.1; done"})
    inst = wait_for(lambda: healthy(drover, "/t/talker", 1), what="talker")[0]
    time.sleep(1)
    r = drover.cli("logs", "/t/talker", "--tail", "3", "--stdout")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 3 and all(l.startswith("line-") for l in lines)
    r = drover.cli("logs", inst["id"], "--stderr", "--tail", "1")
    assert r.stdout.startswith("err-")
    env = dict(os.environ, DROVER_ADDR=drover.url)
    p = subprocess.Popen([BIN, "logs", "/t/talker", "-f", "--tail", "0", "--stdout"],
                         stdout=subprocess.PIPE, text=True, env=env)
    got = [p.stdout.readline() for _ in range(3)]
    p.terminate()
    p.wait(timeout=10)
    nums = [int(l.strip().split("-")[1]) for l in got]
    assert nums == sorted(nums) and nums[0] > int(lines[-1].split("-")[1])


def test_hostile_artifact_is_refused(drover, tmp_path):
    import tarfile
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as t:
        info = tarfile.TarInfo("../escape.txt")
        data = b"gotcha"
        info.size = len(data)
        import io
        t.addfile(info, io.BytesIO(data))
    r = drover.post("/v1/artifacts", evil.read_bytes())
    assert r.status in (200, 201), r
    art = r.json()["id"]
    drover.post("/v1/apps", {"id": "/t/evil", "cmd": "true", "artifact": art,
                             "backoffSeconds": 5})
    inst = wait_for(lambda: [i for i in instances(drover, "/t/evil") if i["state"] == "failed"],
                    what="refused artifact")[0]
    assert "escape" in inst["reason"]
    assert not (tmp_path / "escape.txt").exists()


def test_kill9_of_dev_leaves_instances_and_readopts(make_drover):
    d = make_drover().start()
    d.post("/v1/apps", {"id": "/t/keep", "cmd": "exec sleep 1000", "instances": 2})
    before = {i["id"]: i for i in wait_for(lambda: healthy(d, "/t/keep", 2), what="2 up")}
    d.post("/v1/apps", {"id": "/t/short", "cmd": "exec sleep 1000"})
    short = wait_for(lambda: healthy(d, "/t/short", 1), what="short up")[0]
    d.kill9()
    assert all(alive(i["pid"]) for i in before.values())  # survived the agent
    os.kill(short["pid"], signal.SIGKILL)  # ends while no agent watches
    time.sleep(0.3)
    d.start()
    def readopted():
        ok = healthy(d, "/t/keep", 2)
        return ok if ok and all(
            any("re-adopted" in h["reason"] for h in i["history"]) for i in ok) else None
    after = {i["id"]: i for i in wait_for(readopted, what="re-adopted")}
    assert after.keys() == before.keys()  # no duplicates, same instances
    for iid, inst in after.items():
        assert inst["pid"] == before[iid]["pid"]
        assert inst["ports"] == before[iid]["ports"]
    # The one that died meanwhile was seen as ended and started again.
    restarted = wait_for(lambda: healthy(d, "/t/short", 1), what="short restarted")[0]
    assert restarted["id"] == short["id"] and restarted["pid"] != short["pid"]
    hist = " ".join(h["reason"] for h in restarted["history"])
    assert "ended while the agent was down" in hist
    # A clean stop of dev stops its instances.
    assert d.stop() == 0
    assert not any(alive(i["pid"]) for i in after.values())


def test_separate_server_and_agent_processes(make_drover, tmp_path):
    srv = make_drover(subdir="server")
    conf = tmp_path / "server.conf"
    conf.write_text(f"data-dir = {srv.data_dir}\napi = {srv.addr}\nlocator = 127.0.0.1:0\n")
    srv.verb, srv.args = "server", ["--config", str(conf)]
    srv.data_dir = str(tmp_path / "server" / "data")
    srv.start()
    agent_dir = str(tmp_path / "agent")
    env = dict(os.environ)
    log = open(tmp_path / "agent.log", "wb")
    ag = subprocess.Popen([BIN, "agent", "--server", srv.url, "--data-dir", agent_dir,
                           "--labels", "disk=ssd,rack=r1", "--listen", "127.0.0.1:0",
                           "--locator", "127.0.0.1:0",
                           "--advertise", "127.0.0.1", "--ports", "31000-31100"],
                          stdout=log, stderr=log, env=env)
    try:
        node = wait_for(lambda: srv.get("/v1/nodes").json()["nodes"], what="node registered")[0]
        assert node["labels"] == {"disk": "ssd", "rack": "r1"}
        assert node["ports"] == [31000, 31100] and node["cpus"] >= 1
        r = srv.cli("nodes")
        assert node["id"] in r.stdout and "disk=ssd" in r.stdout
        srv.post("/v1/apps", {"id": "/t/remote", "cmd": "exec sleep 1000", "instances": 2})
        ok = wait_for(lambda: healthy(srv, "/t/remote", 2), what="remote instances")
        assert all(31000 <= i["ports"][0] <= 31100 and i["node"] == node["id"] for i in ok)
        # kill -9 the agent: instances keep running; a new agent re-adopts them.
        ag.kill()
        ag.wait()
        assert all(alive(i["pid"]) for i in ok)
        ag = subprocess.Popen([BIN, "agent", "--server", srv.url, "--data-dir", agent_dir,
                               "--listen", "127.0.0.1:0", "--locator", "127.0.0.1:0",
                               "--advertise", "127.0.0.1",
                               "--ports", "31000-31100"], stdout=log, stderr=log, env=env)
        def readopted():
            ok2 = healthy(srv, "/t/remote", 2)
            return ok2 if ok2 and all(
                any("re-adopted" in h["reason"] for h in i["history"]) for i in ok2) else None
        again = wait_for(readopted, what="re-adopted remotely")
        assert sorted(i["pid"] for i in again) == sorted(i["pid"] for i in ok)
        assert srv.get("/v1/nodes").json()["nodes"][0]["id"] == node["id"]  # same node id
    finally:
        ag.send_signal(signal.SIGTERM)
        rc = ag.wait(timeout=20)
        log.close()
        # A plain agent's SIGTERM leaves instances running (for upgrades); clean up by hand.
        for i in instances(srv, "/t/remote"):
            if i["pid"] and alive(i["pid"]):
                os.killpg(i["pid"], signal.SIGKILL)
    assert rc == 0, (tmp_path / "agent.log").read_text()[-3000:]


def test_node_limits_refuse_with_reasons(make_drover):
    """A node's port range and memory are never over-committed; what does
    not fit fails with a reason that names the limit."""
    lo = free_port()
    d = make_drover(args=["--ports", f"{lo}-{lo + 1}"]).start()
    d.post("/v1/apps", {"id": "/t/ports", "cmd": "exec sleep 1000", "instances": 3,
                        "backoffSeconds": 30})

    up = wait_for(lambda: healthy(d, "/t/ports", 2), what="2 up")
    assert sorted(i["ports"][0] for i in up) == [lo, lo + 1]
    # the third never reaches the node: placement sees the range is used up
    p = wait_for(lambda: d.get("/v1/apps/t/ports").json()["placement"], what="port refusal")
    assert p["waiting"] == 1 and "no free host port" in p["summary"], p
    assert f"range {lo}-{lo + 1} used up" in p["nodes"][0]["reason"]
    assert len(instances(d, "/t/ports")) == 2
    d.post("/v1/apps", {"id": "/t/huge", "cmd": "exec sleep 1000", "mem": 100000000,
                        "portDefinitions": [], "backoffSeconds": 30})
    p = wait_for(lambda: d.get("/v1/apps/t/huge").json()["placement"], what="memory refusal")
    assert "lacks memory (needs 100000000 MiB)" in p["summary"], p
    assert "not enough memory (needs 100000000 MiB" in p["nodes"][0]["reason"]
    assert d.get("/v1/status").status == 200
