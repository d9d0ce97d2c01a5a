"""Process entry points: dev/server flags, config files, signals."""
import os
import signal
import subprocess

from conftest import BIN, Drover, free_port


def test_server_with_config_file(tmp_path):
    port = free_port()
    conf = tmp_path / "server.conf"
    conf.write_text(f"# drover server\ndata-dir = {tmp_path}/state\napi = 127.0.0.1:{port}\n"
                    "log-format = json\n")
    p = subprocess.Popen([BIN, "server", "--config", str(conf)], stderr=subprocess.PIPE,
                         text=True)
    d = Drover(str(tmp_path))
    d.proc = p
    d.url = f"http://127.0.0.1:{port}"
    try:
        d.wait_ready()
        assert d.put("/v1/kv/x", "1").status == 200
        assert os.path.exists(tmp_path / "state" / "store.db")
    finally:
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    first = err.strip().splitlines()[0]
    assert first.startswith("{") and '"level":"info"' in first  # JSON log lines


def test_bad_config_names_file_line_and_key(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text("api = 127.0.0.1:7999\ndta-dir = /tmp/x\n")
    r = subprocess.run([BIN, "server", "--config", str(conf)], capture_output=True, text=True,
                       timeout=10)
    assert r.returncode == 2
    assert "bad.conf:2" in r.stderr and "dta-dir" in r.stderr and "data-dir" in r.stderr


def test_usage_errors(tmp_path):
    r = subprocess.run([BIN, "dev", "--nope"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 2 and "--nope" in r.stderr
    r = subprocess.run([BIN, "server"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 2 and "--config" in r.stderr
    r = subprocess.run([BIN, "dev", "--log-level", "loud"], capture_output=True, text=True,
                       timeout=10)
    assert r.returncode == 2 and "loud" in r.stderr
    for verb in ("dev", "server"):
        r = subprocess.run([BIN, verb, "--help"], capture_output=True, text=True, timeout=10)
        assert r.returncode == 0 and f"usage: drover {verb}" in r.stdout
    r = subprocess.run([BIN, "--version"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0 and r.stdout.startswith("drover ")


def test_port_in_use_fails_clearly(make_drover):
    a = make_drover(subdir="a").start()
    b = make_drover(subdir="b")
    b.port, b.addr = a.port, a.addr
    b.start(wait=False)
    rc = b.proc.wait(timeout=15)
    assert rc != 0
    assert a.addr in b.logs() and "in use" in b.logs().lower()


def test_sigterm_while_streams_are_open(drover):
    import socket
    socks = []
    for _ in range(5):
        s = socket.create_connection(("127.0.0.1", drover.port))
        s.sendall(b"GET /v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
        socks.append(s)
    idx = drover.get("/v1/status").headers["x-drover-index"]
    s = socket.create_connection(("127.0.0.1", drover.port))
    s.sendall(f"GET /v1/kv/x?index={idx}&wait=60s HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    socks.append(s)
    # The fixture's teardown sends SIGTERM and asserts a clean exit 0.
