"""An acknowledged write survives kill -9 of the process."""
import http.client
import threading
import time


def writer(port, prefix, acked, stop):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    i = 0
    while not stop.is_set():
        key = f"storm/{prefix}/{i}"
        try:
            conn.request("PUT", "/v1/kv/" + key, body=f"value-{i}")
            r = conn.getresponse()
            r.read()
        except (OSError, http.client.HTTPException):
            return  # the process died mid-request: that write was not acknowledged
        if r.status == 200:
            acked.append((key, f"value-{i}"))
        i += 1


def test_acked_writes_survive_kill9(make_drover):
    d = make_drover().start()
    acked = []
    stop = threading.Event()
    threads = [threading.Thread(target=writer, args=(d.port, n, acked, stop)) for n in range(8)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    d.kill9()  # in the middle of the storm
    stop.set()
    for t in threads:
        t.join()
    assert len(acked) > 100, f"only {len(acked)} writes acknowledged before the kill"

    d.start()  # same data dir
    stored = {}
    r = d.get("/v1/kv/storm/?recurse")
    assert r.status == 200
    for e in r.json():
        stored[e["key"]] = e["value"]
    missing = [k for k, v in acked if stored.get(k) != v]
    assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:5]}"
    # Revisions keep increasing after recovery.
    before = int(r.headers["x-drover-index"])
    assert d.put("/v1/kv/after", "x").json()["mod_revision"] > before


def test_apps_survive_restart(make_drover):
    from conftest import seed_spec
    d = make_drover().start()
    d.post("/v1/apps", seed_spec())
    d.put("/v1/apps/app/production/test-server", dict(seed_spec(), instances=2))
    assert d.stop() == 0
    d.start()
    app = d.get("/v1/apps/app/production/test-server").json()
    assert app["version"] == 2 and app["spec"]["instances"] == 2
    assert len(d.get("/v1/apps/app/production/test-server/versions").json()["versions"]) == 2
