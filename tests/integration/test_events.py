"""Event stream: server-sent events per change, filters, resume by revision."""
import json
import socket
import time

from conftest import seed_spec


# The scheduler's own events (deployment progress, placement verdicts such
# as "app.waiting" while an app is not placed yet) come at their own pace,
# interleaved with the changes a test makes; sequence checks skip them.
SCHED = ("deployment", "app.waiting", "app.placed")


class SSE:
    """Minimal SSE reader over a raw socket (so the test sees exact bytes)."""

    def __init__(self, port, path="/v1/events", headers=""):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
        self.buf = b""
        self.status = None
        self._read_head()

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError
        self.buf += chunk

    def _read_head(self):
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        self.status = int(head.split()[1])
        self.head = head.decode()
        self.text = ""

    def _decode_chunks(self):
        # De-chunk what we have into self.text.
        while True:
            if b"\r\n" not in self.buf:
                return
            size_line, rest = self.buf.split(b"\r\n", 1)
            size = int(size_line, 16)
            if len(rest) < size + 2:
                return
            self.text += rest[:size].decode()
            self.buf = rest[size + 2:]

    def events(self, n, timeout=10):
        out = []
        deadline = time.time() + timeout
        while len(out) < n:
            self._decode_chunks()
            while "\n\n" in self.text and len(out) < n:
                block, self.text = self.text.split("\n\n", 1)
                ev = {}
                for line in block.split("\n"):
                    if line.startswith(":") or not line:
                        continue
                    k, _, v = line.partition(": ")
                    ev[k] = v
                if "event" in ev:
                    out.append(ev)
            if len(out) >= n:
                break
            if time.time() > deadline:
                raise TimeoutError(f"got {out}")
            self.sock.settimeout(max(0.1, deadline - time.time()))
            self._fill()
        return out

    def close(self):
        self.sock.close()


def test_events_for_app_and_kv_changes(drover):
    s = SSE(drover.port)
    assert s.status == 200 and "text/event-stream" in s.head
    drover.post("/v1/apps", seed_spec())
    drover.put("/v1/kv/config/x", "1")
    drover.delete("/v1/kv/config/x")
    drover.delete("/v1/apps/app/production/test-server")
    all_evs = s.events(6)
    # The create is a deployment too; its progress events, and the
    # scheduler's placement verdicts (no agent here: app.waiting), come and
    # go at their own pace, interleaved with the changes made above.
    assert "deployment" in [e["event"] for e in all_evs]
    evs = [e for e in all_evs if e["event"] not in SCHED]
    while len(evs) < 5:
        evs += [e for e in s.events(1) if e["event"] not in SCHED]
    types = [e["event"] for e in evs]
    assert types == ["app.created", "version.created", "kv.put", "kv.deleted", "app.deleted"]
    import json
    data = [json.loads(e["data"]) for e in evs]
    assert data[0]["id"] == "/app/production/test-server" and data[0]["version"] == 1
    assert data[2]["key"] == "config/x"
    revs = [d["revision"] for d in data]
    assert revs == sorted(revs)
    s.close()


def test_type_filter(drover):
    s = SSE(drover.port, "/v1/events?type=kv")
    drover.post("/v1/apps", seed_spec())
    drover.put("/v1/kv/a", "1")
    evs = s.events(1)
    assert evs[0]["event"] == "kv.put"
    s.close()


def test_resume_with_last_event_id_loses_nothing(drover):
    s = SSE(drover.port)
    drover.put("/v1/kv/a", "1")
    # the put's own event: the stream may start with something else the
    # node did meanwhile (its agent registering, a scheduler verdict)
    first = s.events(1)[0]
    while not (first["event"] == "kv.put" and json.loads(first["data"]).get("key") == "a"):
        first = s.events(1)[0]
    s.close()
    # Changes while disconnected.
    drover.put("/v1/kv/b", "2")
    drover.post("/v1/apps", seed_spec())
    drover.put("/v1/kv/c", "3")
    s2 = SSE(drover.port, headers=f"Last-Event-ID: {first['id']}\r\n")
    evs = [e for e in s2.events(5) if e["event"] not in SCHED]
    while len(evs) < 4:
        evs += [e for e in s2.events(1) if e["event"] not in SCHED]
    assert [e["event"] for e in evs] == ["kv.put", "app.created", "version.created", "kv.put"]
    s2.close()
    s3 = SSE(drover.port, f"/v1/events?from={first['id']}")
    assert s3.events(1)[0]["event"] == "kv.put"
    s3.close()


def test_bad_resume_header_is_400(drover):
    s = SSE(drover.port, headers="Last-Event-ID: nope\r\n")
    assert s.status == 400
    s.close()


def test_one_id_per_revision(drover):
    """Several events of one revision carry a single id, on the last one, so a
    client resuming from an id has seen the whole revision."""
    for k in ("a", "b", "c"):
        drover.put(f"/v1/kv/multi/{k}", "1")
    s = SSE(drover.port, "/v1/events?type=kv.deleted")
    drover.delete("/v1/kv/multi/?recurse")
    evs = s.events(3)
    assert [e["event"] for e in evs] == ["kv.deleted"] * 3
    assert [("id" in e) for e in evs] == [False, False, True]
    s.close()
