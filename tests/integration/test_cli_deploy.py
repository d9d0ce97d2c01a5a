"""The deployment verbs of the CLI against `drover dev`: `deploy --wait`
following a deployment to its end, the `deployments` table, `scale`,
`rollback`, `app stop/start`, `restart`, a canary promoted and aborted,
`deployment cancel|wait|show` on a version that never gets healthy, a
deadline failing `deploy --wait`, the placement reasons of `app show`, and
the --json forms."""
import json
import os
import re
import subprocess
import time

from conftest import BIN

SLOW = 120  # seconds a --wait may take under ASan on a busy machine


def spec(app_id, cmd="exec sleep 1000", instances=2, **extra):
    s = {"id": app_id, "cmd": cmd, "instances": instances, "cpus": 0.05, "mem": 32}
    s.update(extra)
    return s


def write_spec(tmp_path, s, name="app.json"):
    p = tmp_path / name
    p.write_text(json.dumps(s))
    return str(p)


def ok(r):
    assert r.returncode == 0, f"rc {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return r


def dep_id_of(stdout):
    m = re.search(r"deployment ([0-9a-f]{12})", stdout)
    assert m, stdout
    return m.group(1)


def wait_for(fn, timeout=30, interval=0.1, what="condition"):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def deploy_wait(d, path, *args):
    return d.cli("deploy", path, "--wait", *args, timeout=SLOW)


def test_deploy_wait_prints_progress_and_succeeds(drover, tmp_path):
    path = write_spec(tmp_path, spec("/t/cli"))
    r = ok(deploy_wait(drover, path))
    lines = r.stdout.splitlines()
    dep = dep_id_of(lines[0])
    assert lines[0] == f"deployed /t/cli version 1 (deployment {dep})", r.stdout
    progress = [ln for ln in lines[1:-1] if re.match(r"^  \d+/2 new healthy, \d+ old left", ln)]
    assert progress, r.stdout
    assert progress[-1].startswith("  2/2 new healthy, 0 old left"), r.stdout
    # the first step is in the first progress line
    assert "create: version 1" in lines[1], r.stdout
    assert re.fullmatch(rf"deployment {dep} succeeded in [0-9.]+ s", lines[-1]), r.stdout

    # the same spec again: no deployment, nothing to wait for
    r = ok(deploy_wait(drover, path))
    assert r.stdout == "unchanged: /t/cli is at version 1\n"

    # finished deployments are listed with --all only
    r = ok(drover.cli("deployments"))
    assert dep not in r.stdout
    r = ok(drover.cli("deployments", "--all"))
    head, *rows = r.stdout.splitlines()
    assert head.split() == ["ID", "APP", "KIND", "VERSION", "STATUS", "PROGRESS", "AGE"]
    row = [x for x in rows if x.startswith(dep)]
    assert row, r.stdout
    cols = row[0].split()
    assert cols[:5] == [dep, "/t/cli", "create", "1", "succeeded"], row
    assert "2/2 new, 0 old" in row[0]
    r = ok(drover.cli("deployments", "--app", "t/cli", "--all", "--json"))
    deps = json.loads(r.stdout)["deployments"]
    assert [d["id"] for d in deps] == [dep]
    assert deps[0]["status"] == "succeeded"

    r = ok(drover.cli("deployment", "show", dep))
    assert f"id:         {dep}\n" in r.stdout
    assert "status:     succeeded\n" in r.stdout
    assert "version:    1 (new app)\n" in r.stdout
    assert "  - " in r.stdout and "create: version 1" in r.stdout

    r = ok(drover.cli("app", "show", "t/cli"))
    assert "deployment:" in r.stdout
    assert "placement:" not in r.stdout


def test_scale_then_rollback(drover, tmp_path):
    path = write_spec(tmp_path, spec("/t/ops"))
    ok(deploy_wait(drover, path))

    r = ok(drover.cli("scale", "t/ops", "3", "--wait", timeout=SLOW))
    first, *_, last = r.stdout.splitlines()
    dep = dep_id_of(first)
    assert first == f"scaled /t/ops to 3 (version 2, deployment {dep})", r.stdout
    assert last.startswith(f"deployment {dep} succeeded in "), r.stdout
    assert "  3/3 new healthy" in r.stdout
    assert json.loads(drover.cli("app", "show", "/t/ops", "--json").stdout)["spec"]["instances"] == 3

    # a new command, then back to the previous spec (the count stays 3)
    path = write_spec(tmp_path, spec("/t/ops", cmd="exec sleep 1001", instances=3))
    ok(deploy_wait(drover, path))
    r = ok(drover.cli("rollback", "/t/ops", "--wait", timeout=SLOW))
    assert r.stdout.startswith("rolled back /t/ops (version 4, deployment "), r.stdout
    assert " succeeded in " in r.stdout.splitlines()[-1]
    app = json.loads(drover.cli("app", "show", "/t/ops", "--json").stdout)
    assert app["version"] == 4
    assert app["spec"]["cmd"] == "exec sleep 1000" and app["spec"]["instances"] == 3

    # to a version by number (v3: sleep 1001)
    r = ok(drover.cli("rollback", "/t/ops", "v3", "--wait", timeout=SLOW))
    assert "version 5" in r.stdout.splitlines()[0]
    app = json.loads(drover.cli("app", "show", "/t/ops", "--json").stdout)
    assert app["spec"]["cmd"] == "exec sleep 1001"

    r = drover.cli("rollback", "/t/ops", "99")
    assert r.returncode == 1 and r.stderr.startswith("drover: "), r
    r = drover.cli("rollback", "/t/ops", "latest")
    assert r.returncode == 2
    r = drover.cli("scale", "/t/nope", "1")
    assert r.returncode == 1 and "not found" in r.stderr

    r = ok(drover.cli("deployments", "--app", "/t/ops", "--all", "--json"))
    kinds = [d["kind"] for d in json.loads(r.stdout)["deployments"]]
    assert kinds[:2] == ["rollback", "rollback"] and "scale" in kinds and "create" in kinds, kinds


def test_stop_start_restart(drover, tmp_path):
    ok(deploy_wait(drover, write_spec(tmp_path, spec("/t/ss"))))
    r = ok(drover.cli("app", "stop", "t/ss", "--wait", timeout=SLOW))
    assert "`drover app start /t/ss` brings back 2 instance(s)" in r.stdout
    assert " succeeded in " in r.stdout
    r = ok(drover.cli("app", "show", "t/ss"))
    assert "stopped:    yes (`drover app start` brings back 2 instance(s))" in r.stdout
    assert "instances:  0\n" in r.stdout
    r = ok(drover.cli("app", "start", "t/ss", "--wait", timeout=SLOW))
    assert r.stdout.startswith("started /t/ss with 2 instance(s) (version 3, deployment ")
    r = drover.cli("app", "start", "t/ss")
    assert r.returncode == 1 and "stopped" in r.stderr, r
    r = ok(drover.cli("restart", "/t/ss", "--wait", timeout=SLOW))
    assert r.stdout.startswith("restarting every instance of /t/ss (version 4, deployment ")
    assert " succeeded in " in r.stdout.splitlines()[-1]


def test_canary_promote_and_abort(drover, tmp_path):
    ok(deploy_wait(drover, write_spec(tmp_path, spec("/t/can", instances=4))))
    path = write_spec(tmp_path, spec("/t/can", cmd="exec sleep 1001", instances=4), "v2.json")
    r = ok(drover.cli("deploy", path, "--canary", "25%", "--wait", timeout=SLOW))
    first = r.stdout.splitlines()[0]
    assert first.startswith("canary /t/can version 2: 25% of the traffic, 1 instance(s) "), r.stdout
    assert "canary healthy" in r.stdout
    r = ok(drover.cli("app", "show", "/t/can"))
    assert "canary:     version 2, 25% of the traffic, 1 instance(s)\n" in r.stdout
    assert "version:    1\n" in r.stdout
    r = ok(drover.cli("promote", "/t/can", "--wait", timeout=SLOW))
    assert r.stdout.startswith("promoted the canary of /t/can (version 2, deployment ")
    assert " succeeded in " in r.stdout.splitlines()[-1]
    app = json.loads(drover.cli("app", "show", "/t/can", "--json").stdout)
    assert app["version"] == 2 and app["canary"] is None
    assert drover.cli("promote", "/t/can").returncode == 1

    path = write_spec(tmp_path, spec("/t/can", cmd="exec sleep 1002", instances=4), "v3.json")
    ok(drover.cli("deploy", path, "--canary", "50", "--wait", timeout=SLOW))
    r = ok(drover.cli("abort", "/t/can", "--wait", timeout=SLOW))
    assert r.stdout.startswith("aborted the canary of /t/can; the current version keeps all traffic")
    app = json.loads(drover.cli("app", "show", "/t/can", "--json").stdout)
    assert app["canary"] is None and app["spec"]["cmd"] == "exec sleep 1001"
    r = drover.cli("deploy", path, "--canary", "100")
    assert r.returncode == 2 and "1..99" in r.stderr


# A health check that never passes and never gets the instance replaced:
# the version never counts as healthy.
NEVER_HEALTHY = [{"protocol": "COMMAND", "command": {"value": "exit 1"}, "intervalSeconds": 1,
                  "delaySeconds": 0, "gracePeriodSeconds": 0, "maxConsecutiveFailures": 0}]


def test_cancel_a_deployment_that_never_gets_healthy(drover, tmp_path):
    ok(deploy_wait(drover, write_spec(tmp_path, spec("/t/hold"))))
    bad = write_spec(tmp_path, spec("/t/hold", cmd="exec sleep 1001", healthChecks=NEVER_HEALTHY),
                     "bad.json")
    r = ok(drover.cli("deploy", bad))
    dep = dep_id_of(r.stdout)
    r = ok(drover.cli("deployments"))
    row = [x for x in r.stdout.splitlines() if x.startswith(dep)]
    assert row and row[0].split()[1:5] == ["/t/hold", "deploy", "1->2", "running"], r.stdout

    # a follower started now ends when the deployment is cancelled
    follower = subprocess.Popen([BIN, "deployment", "wait", dep], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, DROVER_ADDR=drover.url))
    try:
        time.sleep(1)
        assert follower.poll() is None, follower.communicate()
        r = ok(drover.cli("deployment", "cancel", dep))
        assert r.stdout.startswith(f"cancelled deployment {dep} of /t/hold ("), r.stdout
        out, err = follower.communicate(timeout=SLOW)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert follower.returncode == 1, (out, err)
    assert out.splitlines()[0] == f"deployment {dep}: deploy /t/hold version 1 -> 2", out
    assert out.splitlines()[-1] == f"deployment {dep} cancelled", out

    r = drover.cli("deployment", "cancel", dep)
    assert r.returncode == 1 and "not running" in r.stderr, r
    r = drover.cli("deployment", "wait", dep)
    assert r.returncode == 1 and r.stdout.splitlines()[-1] == f"deployment {dep} cancelled"
    r = ok(drover.cli("deployment", "show", dep))
    assert "status:     cancelled\n" in r.stdout
    r = drover.cli("deployment", "show", "ffffffffffff")
    assert r.returncode == 1 and "not found" in r.stderr

    # a deadline fails `deploy --wait` (exit 1) with the server's reason
    bad = write_spec(tmp_path, spec("/t/hold", cmd="exec sleep 1002", healthChecks=NEVER_HEALTHY,
                                    progressDeadlineSeconds=3), "bad2.json")
    r = deploy_wait(drover, bad)
    assert r.returncode == 1, r
    last = r.stdout.splitlines()[-1]
    assert re.match(r"deployment [0-9a-f]{12} failed: .*no progress", last), r.stdout


def test_placement_shown_while_waiting_for_a_node(drover, tmp_path):
    s = spec("/t/nowhere", instances=1, constraints=[["disk", "CLUSTER", "ssd"]])
    path = write_spec(tmp_path, s)
    follower = subprocess.Popen([BIN, "deploy", path, "--wait"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, DROVER_ADDR=drover.url))
    try:
        def app_placement():
            a = drover.get("/v1/apps/t/nowhere")
            return a.status == 200 and a.json().get("placement")
        wait_for(app_placement, what="a placement reason")
        r = ok(drover.cli("app", "show", "/t/nowhere"))
        assert re.search(r"^placement:  1 waiting for a node: .+$", r.stdout, re.M), r.stdout
        assert re.search(r"^  - \S+: .+$", r.stdout, re.M), r.stdout
        dep = json.loads(drover.cli("app", "show", "/t/nowhere", "--json").stdout)["deployment"]
        ok(drover.cli("deployment", "cancel", dep))
        out, err = follower.communicate(timeout=SLOW)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert follower.returncode == 1, (out, err)
    assert "  waiting for a node: " in out, out
    assert out.splitlines()[-1] == f"deployment {dep} cancelled", out


def test_json_outputs_parse(drover, tmp_path):
    path = write_spec(tmp_path, spec("/t/js"))
    r = ok(drover.cli("deploy", path, "--wait", "--json", timeout=SLOW))
    answer = json.loads(r.stdout)  # the answer alone; progress went to stderr
    dep = answer["deployment"]
    assert answer["id"] == "/t/js" and answer["version"] == 1
    assert f"deployment {dep} succeeded" in r.stderr
    r = ok(drover.cli("deployment", "wait", dep, "--json"))
    assert json.loads(r.stdout)["status"] == "succeeded"
    r = ok(drover.cli("deployment", "show", dep, "--json"))
    shown = json.loads(r.stdout)
    assert shown["id"] == dep and shown["app"] == "/t/js" and shown["kind"] == "create"
    r = ok(drover.cli("scale", "/t/js", "1", "--json"))
    scaled = json.loads(r.stdout)
    assert scaled["app"]["spec"]["instances"] == 1 and scaled["deployment"]
    r = ok(drover.cli("deployment", "wait", scaled["deployment"], timeout=SLOW))
    r = ok(drover.cli("deployments", "--all", "--json"))
    assert {d["id"] for d in json.loads(r.stdout)["deployments"]} >= {dep, scaled["deployment"]}
    r = ok(drover.cli("app", "show", "/t/js", "--json"))
    assert "deployment" in json.loads(r.stdout)
