"""`make demo` keeps working: run its script to the end on a free port."""
import os
import subprocess

from conftest import BIN, ROOT, free_port


def test_demo_script_runs_to_the_end(tmp_path):
    env = dict(os.environ, DEMO_EXIT="1", DEMO_ADDR=f"127.0.0.1:{free_port()}",
               DEMO_DATA=str(tmp_path / "demo"), DROVER_BIN=BIN,
               DEMO_GATEWAY=f"127.0.0.1:{free_port()}")
    r = subprocess.run(["bash", os.path.join(ROOT, "scripts", "demo.sh")], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "deployed /app/staging/test-server version 1" in out
    assert "deployed /app/staging/test-server version 2" in out
    assert "~ $.instances: 2 -> 4" in out
    assert "did you mean" in r.stdout + r.stderr
    assert "config/test-server/GREETING" in out
    assert "app.created" in out
    # A real app served traffic: two healthy instances, its health check and
    # its environment answered over HTTP, its logs read back.
    assert out.count("health check: HTTP 200") >= 2
    assert '{"status": "ok"}' in out
    assert '"MARATHON_APP_ID": "/app/demo/test-server"' in out
    assert "test-server listening on port" in out
    # ... and through the gateway, spread over both instances.
    pids = {line for line in out.splitlines() if line.startswith('{"pid": ')}
    assert len(pids) == 2, out
    assert "no route for host nobody.local" in out
