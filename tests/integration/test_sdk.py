"""The worker SDKs (C: include/drover/worker.h + lib/worker, Python:
sdk/python/drover) through their example workers, against a fake agent
written here: a unix socket server speaking the worker protocol
(docs/protocol.md section 5) with msgpack. No drover process is needed.

The C examples are the ASan builds (build/asan/examples/) when present, else
bin/examples/; a sanitizer report on a worker's stderr fails the test.
"""
import json
import os
import socket
import subprocess
import sys
import threading
import time

import msgpack
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "sdk", "python"))
from drover import worker as pyworker  # noqa: E402

SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")


def c_example(name):
    for d in ("build/asan/examples", "bin/examples"):
        p = os.path.join(ROOT, d, name)
        if os.path.exists(p):
            return [p]
    pytest.skip(f"{name} is not built (make {os.path.join('bin/examples', name)})")


def py_example(kind):
    return ["/usr/bin/python3", os.path.join(ROOT, "examples", "workers", f"{kind}-py",
                                             f"{kind}_worker.py")]


WORKERS = {
    "echo-c": lambda: c_example("echo-worker"),
    "http-c": lambda: c_example("http-worker"),
    "echo-py": lambda: py_example("echo"),
    "http-py": lambda: py_example("http"),
}
ECHO = ["echo-c", "echo-py"]
HTTP = ["http-c", "http-py"]


class Agent:
    """The agent's side of one worker: listens, starts the worker, speaks."""

    def __init__(self, tmp, cmd, uuid="4a7c0f6e-0000-4000-8000-000000000001"):
        self.path = os.path.join(str(tmp), "agent.sock")
        self.uuid = uuid
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(self.path)
        self.srv.listen(1)
        self.srv.settimeout(20)
        self.log_path = os.path.join(str(tmp), "worker.log")
        self.log = open(self.log_path, "wb")
        env = dict(os.environ)
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=1")
        self.proc = subprocess.Popen(
            cmd + ["--app", "/test/app", "--endpoint", self.path, "--uuid", uuid,
                   "--locator", "127.0.0.1:10053"],
            stdout=self.log, stderr=self.log, env=env)
        self.conn, _ = self.srv.accept()
        self.unpacker = msgpack.Unpacker(raw=False)

    def send(self, *msg):
        self.conn.sendall(msgpack.packb(list(msg), use_bin_type=True))

    def recv(self, timeout=10):
        """The next message, or None at end of stream; fails on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            for m in self.unpacker:
                return m
            left = deadline - time.monotonic()
            assert left > 0, f"no message from the worker in {timeout}s:\n{self.logs()}"
            self.conn.settimeout(left)
            try:
                data = self.conn.recv(1 << 16)
            except socket.timeout:
                continue
            if not data:
                return None
            self.unpacker.feed(data)

    def expect(self, ch, type_, timeout=10):
        """args of the next message, which must be [ch, type_, args];
        heartbeats are skipped unless they are what is expected."""
        while True:
            m = self.recv(timeout)
            assert m is not None, f"worker closed the connection:\n{self.logs()}"
            if m[0] == 1 and m[1] == 0 and (ch, type_) != (1, 0):
                continue
            assert (m[0], m[1]) == (ch, type_), f"expected [{ch}, {type_}], got {m}"
            return m[2]

    def handshake(self):
        assert self.expect(1, 0) == [self.uuid]
        self.send(1, 0, [])  # the agent answers the handshake with a heartbeat

    def logs(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def wait(self, timeout=10):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"worker did not exit within {timeout}s:\n{self.logs()}")

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.conn.close()
        self.srv.close()
        self.log.close()
        bad = [ln for ln in self.logs().splitlines() if any(m in ln for m in SANITIZER_MARKS)]
        assert not bad, "sanitizer report in the worker:\n" + self.logs()


@pytest.fixture
def agent(tmp_path, request):
    made = []

    def start(name):
        a = Agent(tmp_path, WORKERS[name]())
        made.append(a)
        a.handshake()
        return a

    yield start
    for a in made:
        a.close()


def http_request(method, uri, headers=(), body=b""):
    return msgpack.packb([method, uri, "1.1", [list(h) for h in headers], body],
                         use_bin_type=True)


def read_http(a, ch):
    """(code, headers dict, body, chunks) of an HTTP response on ch."""
    head = msgpack.unpackb(a.expect(ch, 0)[0], raw=False)
    code, headers = head[0], {k: v for k, v in head[1]}
    chunks = []
    while True:
        m = a.recv()
        if m[0] == 1 and m[1] == 0:
            continue
        assert m[0] == ch, m
        if m[1] == 2:
            break
        assert m[1] == 0, m
        chunks.append(m[2][0])
    return code, headers, b"".join(chunks), chunks


@pytest.mark.parametrize("name", list(WORKERS))
def test_handshake_heartbeat(agent, name):
    a = agent(name)
    # the handshake's heartbeat is answered
    assert a.expect(1, 0) == []
    assert a.proc.poll() is None


@pytest.mark.parametrize("name", ECHO)
def test_echo_streams(agent, name):
    a = agent(name)
    a.send(2, 0, ["echo"])
    # each chunk comes back before the next is sent: streamed, not buffered
    for i in range(5):
        data = f"chunk {i} ".encode() * (i + 1)
        a.send(2, 0, [data])
        assert a.expect(2, 0) == [data]
    big = os.urandom(300000)
    a.send(2, 0, [big])
    assert a.expect(2, 0) == [big]
    a.send(2, 2, [])
    assert a.expect(2, 2) == []


@pytest.mark.parametrize("name", ECHO)
def test_interleaved(agent, name):
    a = agent(name)
    chans = [2, 3, 5, 9]
    for ch in chans:
        a.send(ch, 0, ["echo"])
    for r in range(3):
        for ch in reversed(chans):
            a.send(ch, 0, [f"{ch}:{r}".encode()])
    for ch in chans:
        a.send(ch, 2, [])
    got = {ch: [] for ch in chans}
    closed = set()
    while len(closed) < len(chans):
        m = a.recv()
        assert m is not None
        if m[0] == 1:
            continue
        if m[1] == 2:
            closed.add(m[0])
        else:
            assert m[1] == 0 and m[0] not in closed, m
            got[m[0]].append(m[2][0])
    for ch in chans:
        assert got[ch] == [f"{ch}:{r}".encode() for r in range(3)]


@pytest.mark.parametrize("name", HTTP)
def test_http_round_trip(agent, name):
    a = agent(name)
    a.send(2, 0, ["http"])
    a.send(2, 0, [http_request("POST", "/some/path?x=1", [("host", "h")], b"body")])
    a.send(2, 2, [])
    code, headers, body, _ = read_http(a, 2)
    assert code == 200
    assert headers["content-type"] == "application/json"
    doc = json.loads(body)
    assert doc == {"app": "/test/app", "method": "POST", "path": "/some/path",
                   "pid": a.proc.pid}
    # ?size=N answers N bytes, in chunks of at most 1 MiB
    a.send(3, 0, ["http"])
    a.send(3, 0, [http_request("GET", "/bench?size=2500000")])
    a.send(3, 2, [])
    code, headers, body, chunks = read_http(a, 3)
    assert code == 200
    assert headers["content-length"] == "2500000"
    assert body == b"x" * 2500000
    assert all(len(c) <= 1 << 20 for c in chunks)
    a.send(4, 0, ["http"])
    a.send(4, 0, [http_request("GET", "/?size=lots")])
    a.send(4, 2, [])
    assert read_http(a, 4)[0] == 400
    # a chunk that is no HTTP request gets an error, the worker carries on
    a.send(5, 0, ["http"])
    a.send(5, 0, [b"\x01"])
    a.send(5, 2, [])
    err = a.expect(5, 1)
    assert err[0] == [1, 22]
    assert "bad HTTP request chunk" in err[1]


@pytest.mark.parametrize("name", list(WORKERS))
def test_unknown_event(agent, name):
    a = agent(name)
    a.send(2, 0, ["nope"])
    assert a.expect(2, 1) == [[1, 38], "no handler for event nope"]
    a.send(2, 0, [b"ignored"])
    a.send(2, 2, [])
    # still serving
    ev = "echo" if name.startswith("echo") else "http"
    a.send(3, 0, [ev])
    a.send(3, 1, [[3, 110], "client gone"])
    # the worker ends its side of an aborted request too (close or error)
    while True:
        m = a.recv()
        if m[0] == 3:
            assert m[1] in (1, 2), m
            break
    a.send(1, 0, [])
    time.sleep(1.1)  # heartbeat replies are rate-limited to one a second
    a.send(1, 0, [])
    assert a.expect(1, 0) == []
    assert a.proc.poll() is None


@pytest.mark.parametrize("name", list(WORKERS))
def test_terminate_exits_0(agent, name):
    a = agent(name)
    t0 = time.monotonic()
    a.send(1, 1, [1, "normal"])
    assert a.expect(1, 1)[0] == 1
    assert a.recv() is None  # then the worker closes
    assert a.wait(5) == 0
    assert time.monotonic() - t0 < 5


@pytest.mark.parametrize("name", ECHO)
def test_terminate_finishes_open_invocation(agent, name):
    a = agent(name)
    a.send(2, 0, ["echo"])
    a.send(2, 0, [b"before"])
    assert a.expect(2, 0) == [b"before"]
    a.send(1, 1, [1, "normal"])
    # no new invocations, but the open one goes on
    a.send(3, 0, ["echo"])
    assert a.expect(3, 1)[0] == [4, 108]
    a.send(2, 0, [b"after"])
    assert a.expect(2, 0) == [b"after"]
    a.send(2, 2, [])
    assert a.expect(2, 2) == []
    assert a.expect(1, 1)[0] == 1
    assert a.wait(5) == 0


@pytest.mark.parametrize("name", ECHO)
def test_terminate_grace_is_bounded(agent, name):
    a = agent(name)
    a.send(2, 0, ["echo"])
    t0 = time.monotonic()
    a.send(1, 1, [1, "normal"])
    # the request never ends: the worker gives up after its grace (5 s)
    assert a.expect(2, 1)[0] == [4, 108]
    assert a.expect(1, 1)[0] == 1
    assert a.wait(5) == 0
    assert 4 < time.monotonic() - t0 < 9


@pytest.mark.parametrize("name", ["echo-c", "echo-py"])
def test_garbage_from_agent(agent, name):
    a = agent(name)
    a.conn.sendall(b"\xc1\xc1\xc1")
    assert a.wait(5) == 1
    assert "msgpack" in a.logs()


@pytest.mark.parametrize("name", ["echo-c", "echo-py"])
def test_oversized_message(agent, name):
    a = agent(name)
    # a bin32 header announcing 64 MiB: refused from the header alone
    a.conn.sendall(b"\x93\x02\x00\x91\xc6\x04\x00\x00\x00")
    assert a.wait(5) == 1
    assert "over" in a.logs()


@pytest.mark.parametrize("name", ["echo-c", "http-py"])
def test_agent_gone(agent, name):
    a = agent(name)
    a.send(2, 0, ["echo" if "echo" in name else "http"])
    a.conn.shutdown(socket.SHUT_RDWR)
    assert a.wait(5) == 1


# ---- the Python SDK in-process (handlers the examples do not exercise) ----

class Pair:
    """A Worker serving one end of a socketpair in a thread."""

    def __init__(self, w):
        self.w = w
        self.mine, theirs = socket.socketpair()
        w.uuid = "u"
        self.rc = None
        self.t = threading.Thread(target=self._run, args=(theirs,), daemon=True)
        self.t.start()
        self.unpacker = msgpack.Unpacker(raw=False)
        assert self.expect(1, 0) == ["u"]

    def _run(self, s):
        self.rc = self.w.serve(s)

    def send(self, *msg):
        self.mine.sendall(msgpack.packb(list(msg), use_bin_type=True))

    def expect(self, ch, type_):
        self.mine.settimeout(5)
        while True:
            for m in self.unpacker:
                if m[0] == 1 and m[1] == 0 and (ch, type_) != (1, 0):
                    continue
                assert (m[0], m[1]) == (ch, type_), m
                return m[2]
            data = self.mine.recv(1 << 16)
            assert data, "worker closed"
            self.unpacker.feed(data)

    def stop(self):
        self.send(1, 1, [0, "bye"])
        self.expect(1, 1)
        self.t.join(5)
        assert self.rc == 0


def test_py_errors_and_body_limit():
    w = pyworker.Worker(body_limit=10)

    @w.on("raise")
    def raise_error(req, res):
        req.read()
        raise pyworker.Error(5, 42, "boom")

    @w.on("crash")
    def crash(req, res):
        raise KeyError("k")

    @w.on("read")
    def read_all(req, res):
        res.write(req.read())

    p = Pair(w)
    p.send(2, 0, ["raise"])
    p.send(2, 2, [])
    assert p.expect(2, 1) == [[5, 42], "boom"]
    p.send(3, 0, ["crash"])
    assert p.expect(3, 1) == [[5, 1], "KeyError: 'k'"]
    p.send(3, 2, [])
    p.send(4, 0, ["read"])
    p.send(4, 0, [b"12345678"])
    p.send(4, 0, [b"12345678"])
    assert p.expect(4, 1) == [[1, 90], "request body over 10 bytes"]
    p.send(4, 2, [])
    p.send(5, 0, ["read"])
    p.send(5, 0, ["str chunk"])
    p.send(5, 2, [])
    assert p.expect(5, 0) == [b"str chunk"]
    assert p.expect(5, 2) == []
    p.stop()


def test_py_streaming_http_and_helpers():
    w = pyworker.Worker()

    @w.http("web")
    def web(req):
        assert req.header("X-Thing") == "1"
        assert req.args == {"a": ["b"]}
        return 201, [("x-k", "v")], (bytes([i]) * 10 for i in range(3))

    p = Pair(w)
    p.send(2, 0, ["web"])
    p.send(2, 0, [pyworker.encode_request("GET", "/p?a=b", [("x-thing", "1")])])
    p.send(2, 2, [])
    code, headers = pyworker.decode_head(p.expect(2, 0)[0])
    assert (code, headers) == (201, [("x-k", "v")])
    for i in range(3):
        assert p.expect(2, 0) == [bytes([i]) * 10]
    assert p.expect(2, 2) == []
    p.stop()
    with pytest.raises(ValueError):
        pyworker.parse_args(["w", "--uuid", "u"])
    assert pyworker.parse_args(["w", "--x", "--endpoint=/s", "--uuid", "u", "--app", "a"]) == \
        {"endpoint": "/s", "uuid": "u", "app": "a"}
    r = pyworker.HttpRequest.decode(pyworker.encode_request("PUT", "/a/b?c=1", [], b"zz"))
    assert (r.method, r.path, r.query, r.body) == ("PUT", "/a/b", "c=1", b"zz")
    with pytest.raises(pyworker.Error) as e:
        pyworker.HttpRequest.decode(msgpack.packb([1, 2]))
    assert (e.value.category, e.value.code) == (1, 22)


def test_py_channel_backwards_is_protocol_error():
    w = pyworker.Worker()
    w.register("x", lambda req, res: None)
    p = Pair(w)
    p.send(5, 0, ["x"])
    p.send(5, 2, [])
    assert p.expect(5, 2) == []
    p.send(4, 0, ["x"])
    p.t.join(5)
    assert p.rc == 1
    assert "backwards" in w.error
