"""KV API: values, revisions, recurse/keys, CAS, blocking reads, validation."""
import threading
import time


def test_put_get_delete_with_revisions(drover):
    r = drover.put("/v1/kv/config/web/PORT", "8080")
    assert r.status == 200, r
    rev1 = r.json()["mod_revision"]
    g = drover.get("/v1/kv/config/web/PORT")
    assert g.status == 200 and g.body == b"8080"
    assert int(g.headers["x-drover-mod-revision"]) == rev1
    assert int(g.headers["x-drover-create-revision"]) == rev1
    assert g.headers["x-drover-version"] == "1"
    r2 = drover.put("/v1/kv/config/web/PORT", "9090")
    assert r2.json()["mod_revision"] > rev1
    g = drover.get("/v1/kv/config/web/PORT")
    assert g.body == b"9090" and g.headers["x-drover-version"] == "2"
    assert int(g.headers["x-drover-create-revision"]) == rev1
    assert drover.delete("/v1/kv/config/web/PORT").json()["deleted"] == 1
    assert drover.get("/v1/kv/config/web/PORT").status == 404


def test_recurse_and_keys(drover):
    for k, v in [("config/web/A", "1"), ("config/web/B", "2"), ("config/webx/C", "3"),
                 ("other/D", "4")]:
        drover.put("/v1/kv/" + k, v)
    r = drover.get("/v1/kv/config/web/?recurse")
    assert r.status == 200
    assert [(e["key"], e["value"]) for e in r.json()] == [("config/web/A", "1"),
                                                          ("config/web/B", "2")]
    assert all(e["mod_revision"] > 0 and e["version"] == 1 for e in r.json())
    keys = drover.get("/v1/kv/config?keys").json()
    assert keys == ["config/web/A", "config/web/B", "config/webx/C"]
    assert len(drover.get("/v1/kv/?recurse").json()) == 4
    assert drover.delete("/v1/kv/config/?recurse").json()["deleted"] == 3
    assert drover.get("/v1/kv/?keys").json() == ["other/D"]
    assert drover.get("/v1/kv/nothing/?recurse").status == 404


def test_binary_value_roundtrip(drover):
    blob = bytes(range(256))
    drover.put("/v1/kv/bin/blob", blob)
    assert drover.get("/v1/kv/bin/blob").body == blob
    entry = drover.get("/v1/kv/bin?recurse").json()[0]
    assert "value_base64" in entry and "value" not in entry
    import base64
    assert base64.b64decode(entry["value_base64"]) == blob


def test_cas(drover):
    # cas=0: create only.
    assert drover.put("/v1/kv/lock?cas=0", "a").status == 200
    r = drover.put("/v1/kv/lock?cas=0", "b")
    assert r.status == 409 and "cas" in r.json()["error"]
    rev = int(drover.get("/v1/kv/lock").headers["x-drover-mod-revision"])
    assert drover.put(f"/v1/kv/lock?cas={rev + 100}", "c").status == 409
    assert drover.put(f"/v1/kv/lock?cas={rev}", "d").status == 200
    assert drover.get("/v1/kv/lock").body == b"d"
    assert drover.delete(f"/v1/kv/lock?cas={rev}").status == 409
    assert drover.put("/v1/kv/lock?cas=abc", "x").status == 400


def test_invalid_keys_and_sizes(drover):
    for bad in ["a//b", "a/../b", "a/./b", "a/b/", "%01x"]:
        r = drover.put("/v1/kv/" + bad, "x")
        assert r.status == 400, (bad, r)
        assert "key" in r.json()["error"]
    assert drover.put("/v1/kv/" + "k" * 600, "x").status == 400
    r = drover.put("/v1/kv/big", b"x" * (512 * 1024 + 1))
    assert r.status == 413
    assert drover.put("/v1/kv/big", b"x" * (512 * 1024)).status == 200
    assert drover.get("/v1/kv/").status == 400  # a plain read needs a key
    assert drover.get("/v1/status").status == 200


def test_blocking_read_returns_on_change(drover):
    drover.put("/v1/kv/config/web/A", "1")
    idx = int(drover.get("/v1/kv/config/web/?recurse").headers["x-drover-index"])
    out = {}

    def waiter():
        t0 = time.time()
        r = drover.get(f"/v1/kv/config/web/?recurse&index={idx}&wait=20s")
        out["elapsed"] = time.time() - t0
        out["resp"] = r

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.5)
    assert "resp" not in out  # still blocked
    drover.put("/v1/kv/unrelated", "x")  # outside the prefix: must not wake it
    time.sleep(0.3)
    assert "resp" not in out
    drover.put("/v1/kv/config/web/B", "2")
    t.join(10)
    r = out["resp"]
    assert r.status == 200
    assert [e["key"] for e in r.json()] == ["config/web/A", "config/web/B"]
    assert int(r.headers["x-drover-index"]) > idx
    assert out["elapsed"] < 5


def test_blocking_read_times_out_with_current_state(drover):
    drover.put("/v1/kv/k", "v")
    idx = int(drover.get("/v1/kv/k").headers["x-drover-index"])
    t0 = time.time()
    r = drover.get(f"/v1/kv/k?index={idx}&wait=700ms")
    assert r.status == 200 and r.body == b"v"
    assert 0.6 <= time.time() - t0 < 5
    # An index already passed answers at once.
    drover.put("/v1/kv/k", "w")
    t0 = time.time()
    assert drover.get(f"/v1/kv/k?index={idx}&wait=10s").body == b"w"
    assert time.time() - t0 < 2
    assert drover.get("/v1/kv/k?index=1&wait=forever").status == 400


def test_many_blocked_clients_disconnecting_leave_server_healthy(drover):
    import socket
    drover.put("/v1/kv/k", "v")
    idx = int(drover.get("/v1/kv/k").headers["x-drover-index"])
    socks = []
    for _ in range(50):
        s = socket.create_connection(("127.0.0.1", drover.port))
        s.sendall(f"GET /v1/kv/k?index={idx}&wait=60s HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        socks.append(s)
    time.sleep(0.3)
    for s in socks:
        s.close()
    time.sleep(0.3)
    assert drover.put("/v1/kv/k", "after").status == 200
    assert drover.get("/v1/kv/k").body == b"after"
