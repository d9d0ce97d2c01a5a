"""The CLI against a real server: every verb, tables, --json, errors, --help."""
import json
import os
import subprocess
import time

from conftest import BIN, ROOT

TMPL = os.path.join(ROOT, "examples", "specs", "test-server.tmpl.json")
VARS = ["--var", "environment=staging", "--var", "tag=abc"]


def test_deploy_template_and_tables(drover):
    r = drover.cli("deploy", TMPL, *VARS, "--var", "instances=2")
    assert r.returncode == 0, r.stderr
    assert "deployed /app/staging/test-server version 1" in r.stdout
    r = drover.cli("deploy", TMPL, *VARS, "--var", "instances=2")
    assert r.returncode == 0 and "unchanged" in r.stdout and "version 1" in r.stdout
    r = drover.cli("apps")
    lines = r.stdout.strip().splitlines()
    assert lines[0].split()[:4] == ["ID", "VERSION", "INSTANCES", "KIND"]
    assert lines[1].split()[:4] == ["/app/staging/test-server", "1", "2", "service"]
    r = drover.cli("apps", "--json")
    assert json.loads(r.stdout)["apps"][0]["spec"]["instances"] == 2


def test_deploy_missing_vars_named(drover):
    r = drover.cli("deploy", TMPL, "--var", "environment=staging")
    assert r.returncode == 2
    assert "$tag" in r.stderr and "$instances" in r.stderr
    assert drover.get("/v1/apps").json()["apps"] == []


def test_deploy_dry_run_shows_diff_and_stores_nothing(drover):
    drover.cli("deploy", TMPL, *VARS, "--var", "instances=2")
    r = drover.cli("deploy", TMPL, *VARS, "--var", "instances=5", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert '"instances": 5' in r.stdout  # the filled spec
    assert "~ $.instances: 2 -> 5" in r.stdout
    assert drover.get("/v1/apps/app/staging/test-server").json()["version"] == 1
    r = drover.cli("deploy", TMPL, *VARS, "--var", "instances=2", "--dry-run")
    assert "no changes" in r.stdout


def test_deploy_invalid_spec_lists_errors(drover, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"id": "/x/y", "cmd": "sleep 1", "instanses": 2, "mem": -5}')
    r = drover.cli("deploy", str(bad))
    assert r.returncode == 1
    assert "spec invalid (2 errors)" in r.stderr
    assert '$.instanses: unknown field (did you mean "instances"?)' in r.stderr
    assert "$.mem" in r.stderr
    r = drover.cli("deploy", "-", input='{"id": "/x/y", "cmd": "sleep 1"}')
    assert r.returncode == 0 and "deployed /x/y version 1" in r.stdout
    r = drover.cli("deploy", str(tmp_path / "missing.json"))
    assert r.returncode != 0 and "missing.json" in r.stderr


def test_app_show_versions_rm(drover):
    drover.cli("deploy", TMPL, *VARS, "--var", "instances=2")
    drover.cli("deploy", TMPL, *VARS, "--var", "instances=3")
    r = drover.cli("app", "show", "/app/staging/test-server")
    assert r.returncode == 0
    assert "version:    2" in r.stdout or "version: 2" in " ".join(r.stdout.split())
    assert "registry.local/test-server:abc" in r.stdout
    r = drover.cli("versions", "/app/staging/test-server")
    assert [l.split()[0] for l in r.stdout.strip().splitlines()] == ["VERSION", "1", "2"]
    r = drover.cli("versions", "/app/staging/test-server", "--json")
    assert [v["version"] for v in json.loads(r.stdout)["versions"]] == [1, 2]
    assert drover.cli("app", "rm", "/app/staging/test-server").returncode == 0
    r = drover.cli("app", "show", "/app/staging/test-server")
    assert r.returncode == 1 and "not found" in r.stderr


def test_kv_verbs(drover):
    r = drover.cli("kv", "put", "config/web/GREETING", "hello")
    assert r.returncode == 0, r.stderr
    assert drover.cli("kv", "put", "config/web/BLOB", "-", input="from stdin").returncode == 0
    assert drover.cli("kv", "get", "config/web/GREETING").stdout.strip() == "hello"
    assert drover.cli("kv", "get", "config/web/BLOB").stdout.strip() == "from stdin"
    r = drover.cli("kv", "ls", "config/")
    rows = [l.split()[:2] for l in r.stdout.strip().splitlines()]
    assert rows[0] == ["KEY", "VALUE"]
    assert ["config/web/GREETING", "hello"] in rows
    r = drover.cli("kv", "ls", "config/", "--json")
    assert {e["key"] for e in json.loads(r.stdout)} == {"config/web/GREETING", "config/web/BLOB"}
    r = drover.cli("kv", "put", "config/web/GREETING", "x", "--cas", "0")
    assert r.returncode == 1 and "cas" in r.stderr
    r = drover.cli("kv", "get", "nope")
    assert r.returncode == 1 and "not found" in r.stderr
    r = drover.cli("kv", "put", "a//b", "x")
    assert r.returncode == 1 and "empty path segment" in r.stderr
    assert drover.cli("kv", "del", "config/", "--recurse").returncode == 0
    assert drover.get("/v1/kv/?keys").status == 404


def test_kv_get_blocks_until_change(drover):
    drover.put("/v1/kv/k", "v1")
    idx = drover.get("/v1/kv/k").headers["x-drover-index"]
    env = dict(os.environ, DROVER_ADDR=drover.url)
    p = subprocess.Popen([BIN, "kv", "get", "k", "--index", idx, "--wait", "20s"],
                         stdout=subprocess.PIPE, text=True, env=env)
    time.sleep(0.5)
    assert p.poll() is None
    drover.put("/v1/kv/k", "v2")
    out, _ = p.communicate(timeout=10)
    assert out.strip() == "v2"


def test_events_verb(drover):
    drover.put("/v1/kv/a", "1")
    drover.cli("deploy", "-", input='{"id": "/x/y", "cmd": "sleep 1"}')
    env = dict(os.environ, DROVER_ADDR=drover.url)
    p = subprocess.Popen([BIN, "events", "--from", "1", "--json", "--type", "kv,app,version"],
                         stdout=subprocess.PIPE,
                         text=True, env=env)
    lines = [p.stdout.readline() for _ in range(3)]
    p.terminate()
    p.wait(timeout=10)
    events = [json.loads(l) for l in lines]
    assert [e["type"] for e in events] == ["kv.put", "app.created", "version.created"]


def test_help_for_every_verb(drover):
    r = subprocess.run([BIN, "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    verbs = [["apps"], ["app", "show"], ["app", "rm"], ["deploy"], ["versions"],
             ["kv", "get"], ["kv", "put"], ["kv", "del"], ["kv", "ls"], ["events"],
             ["status"], ["dev"], ["server"], ["ps"], ["logs"], ["nodes"], ["push"]]
    for v in verbs:
        assert v[0] in r.stdout, v
        h = subprocess.run([BIN] + v + ["--help"], capture_output=True, text=True)
        assert h.returncode == 0, (v, h.stderr)
        assert "usage: drover " + v[0] in h.stdout, (v, h.stdout)
    r = subprocess.run([BIN, "frobnicate"], capture_output=True, text=True)
    assert r.returncode == 2 and "frobnicate" in r.stderr
    r = subprocess.run([BIN, "apps", "--bogus"], capture_output=True, text=True)
    assert r.returncode == 2 and "--bogus" in r.stderr


def test_unreachable_server_is_a_clear_error(tmp_path):
    from conftest import free_port
    env = dict(os.environ, DROVER_ADDR=f"http://127.0.0.1:{free_port()}")
    r = subprocess.run([BIN, "apps"], capture_output=True, text=True, env=env, timeout=20)
    assert r.returncode == 1
    assert "cannot connect" in r.stderr and "127.0.0.1" in r.stderr
