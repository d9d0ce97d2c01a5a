"""Fixtures that start the real drover binary.

DROVER_BIN picks the binary (tests/run.sh passes the ASan+UBSan build); a
sanitizer report in a process's stderr fails the test that started it.
"""
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("DROVER_BIN") or os.path.join(ROOT, "bin", "drover")
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")


_handed_out = set()


def free_port():
    """A port nothing listens on now, never one this run handed out before:
    the kernel may give the same ephemeral port to two binds in a row once
    the first socket is closed, and a process given two equal ports fails."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no fresh free port after 100 tries")


class Drover:
    """A running `drover dev` (or `server`) process and a tiny API client."""

    def __init__(self, tmp, args=(), verb="dev"):
        self.tmp = tmp
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.addr}"
        self.data_dir = os.path.join(tmp, "data")
        self.verb = verb
        self.args = list(args)
        self.proc = None
        self.log_path = os.path.join(tmp, f"drover-{self.port}.log")
        self.dns_port = free_port()
        self.meta_port = free_port()
        self.gateway_port = free_port()

    def start(self, wait=True):
        extra = []
        if self.verb == "dev":
            # Fixed default ports would collide between tests and with a
            # developer's own `drover dev`: pick free ones.
            if "--locator" not in self.args:
                extra += ["--locator", f"127.0.0.1:{self.meta_port}"]
            if "--dns" not in self.args:
                extra += ["--dns", f"127.0.0.1:{self.dns_port}"]
            if "--gateway" not in self.args:
                extra += ["--gateway", f"127.0.0.1:{self.gateway_port}"]
        cmd = [BIN, self.verb, "--data-dir", self.data_dir, "--api", self.addr] + extra + self.args
        self.log = open(self.log_path, "ab")
        env = dict(os.environ)
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=1")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log, env=env)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=20):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"drover exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                with urllib.request.urlopen(self.url + "/v1/status", timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.05)
        raise RuntimeError(f"drover not ready in {timeout}s:\n{self.logs()}")

    def logs(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def stop(self, sig=signal.SIGTERM, timeout=20):
        if not self.proc or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"drover did not stop within {timeout}s after {sig}")
        self.log.close()
        return rc

    def kill9(self):
        self.proc.kill()
        self.proc.wait()
        self.log.close()

    def sanitizer_reports(self):
        text = self.logs()
        return [line for line in text.splitlines() if any(m in line for m in SANITIZER_MARKS)]

    # -- API helpers (urllib keeps the tests free of extra dependencies) --
    def request(self, method, path, body=None, headers=None, timeout=30):
        data = body
        if isinstance(body, (dict, list)):
            data = json.dumps(body).encode()
        elif isinstance(body, str):
            data = body.encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return Response(r.status, dict(r.headers), r.read())
        except urllib.error.HTTPError as e:
            return Response(e.code, dict(e.headers), e.read())

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body, **kw)

    def put(self, path, body=None, **kw):
        return self.request("PUT", path, body, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)

    def cli(self, *args, input=None, env=None, timeout=30):
        e = dict(os.environ)
        e["DROVER_ADDR"] = self.url
        if env:
            e.update(env)
        return subprocess.run([BIN] + list(args), input=input, capture_output=True,
                              text=True, env=e, timeout=timeout)


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = {k.lower(): v for k, v in headers.items()}
        self.body = body

    def json(self):
        return json.loads(self.body)

    @property
    def text(self):
        return self.body.decode(errors="replace")

    def __repr__(self):
        return f"<Response {self.status} {self.body[:200]!r}>"


def seed_spec(name="test-server", env="production", instances=4):
    """The Marathon test-server definition from the field report, placeholders filled."""
    with open(os.path.join(ROOT, "examples", "specs", "test-server.json")) as f:
        spec = json.load(f)
    spec["id"] = f"/app/{env}/{name}"
    spec["instances"] = instances
    return spec


def kill_leftover_instances(root):
    """Instances outlive a killed agent by design; a test must not leave
    them behind. Kill every monitor (and its app's group) under `root`."""
    r = subprocess.run(["pgrep", "-f", f"drover-shim --dir {root}"], capture_output=True,
                       text=True)
    for pid in r.stdout.split():
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                for child in f.read().split():
                    os.killpg(int(child), signal.SIGKILL)
        except (OSError, ValueError):
            pass
        try:
            os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass


@pytest.fixture
def drover(tmp_path):
    d = Drover(str(tmp_path)).start()
    yield d
    try:
        rc = d.stop()
    finally:
        kill_leftover_instances(str(tmp_path))
    reports = d.sanitizer_reports()
    assert not reports, "sanitizer reports:\n" + "\n".join(reports) + "\n" + d.logs()[-4000:]
    assert rc == 0, f"drover exited with {rc} on SIGTERM:\n{d.logs()[-4000:]}"


@pytest.fixture
def make_drover(tmp_path):
    """Factory for tests that restart or run several processes."""
    made = []

    def make(args=(), verb="dev", subdir="d"):
        path = os.path.join(str(tmp_path), subdir)
        os.makedirs(path, exist_ok=True)
        d = Drover(path, args=args, verb=verb)
        made.append(d)
        return d

    yield make
    try:
        for d in made:
            if d.proc and d.proc.poll() is None:
                d.stop()
    finally:
        kill_leftover_instances(str(tmp_path))
        reports = d.sanitizer_reports()
        assert not reports, "sanitizer reports:\n" + "\n".join(reports)
