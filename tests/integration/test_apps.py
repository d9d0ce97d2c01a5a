"""App API: create, update, versions, validation, dry-run, delete."""
import json
import threading

from conftest import seed_spec


def test_seed_spec_accepted_as_is(drover):
    spec = seed_spec()
    r = drover.post("/v1/apps", spec)
    assert r.status == 201, r
    body = r.json()
    assert body["id"] == "/app/production/test-server"
    assert body["version"] == 1
    assert body["changed"] is True
    app = body["app"]
    assert app["spec"]["instances"] == 4
    assert app["spec"]["container"]["docker"]["image"].startswith("registry.local/test-server:")
    assert int(r.headers["x-drover-index"]) > 0

    got = drover.get("/v1/apps/app/production/test-server")
    assert got.status == 200
    assert got.json()["version"] == 1
    assert got.json()["spec"]["healthChecks"][0]["path"] == "/healthcheck"


def test_unchanged_spec_makes_no_version(drover):
    spec = seed_spec()
    assert drover.post("/v1/apps", spec).status == 201
    r = drover.post("/v1/apps", spec)
    assert r.status == 200
    assert r.json()["changed"] is False
    assert r.json()["version"] == 1
    # Defaults spelled out normalize to the same spec: still no new version.
    spec2 = dict(spec, backoffFactor=spec.get("backoffFactor", 1.15))
    r = drover.post("/v1/apps", spec2)
    assert r.json()["changed"] is False
    versions = drover.get("/v1/apps/app/production/test-server/versions").json()["versions"]
    assert [v["version"] for v in versions] == [1]


def test_update_makes_versions_and_history(drover):
    spec = seed_spec()
    drover.post("/v1/apps", spec)
    for n in (5, 6):
        r = drover.put("/v1/apps/app/production/test-server", dict(spec, instances=n))
        assert r.status == 200, r
        assert r.json()["changed"] is True
    assert drover.get("/v1/apps/app/production/test-server").json()["version"] == 3
    versions = drover.get("/v1/apps/app/production/test-server/versions").json()
    assert [v["version"] for v in versions["versions"]] == [1, 2, 3]
    assert all(v["created_at"].endswith("Z") for v in versions["versions"])
    v2 = drover.get("/v1/apps/app/production/test-server/versions/2")
    assert v2.status == 200
    assert v2.json()["spec"]["instances"] == 5
    assert drover.get("/v1/apps/app/production/test-server/versions/9").status == 404
    assert drover.get("/v1/apps/app/production/test-server/versions/x").status == 400


def test_put_without_id_takes_path_and_mismatch_is_422(drover):
    spec = seed_spec()
    del spec["id"]
    r = drover.put("/v1/apps/staging/web", spec)
    assert r.status == 201, r
    assert r.json()["id"] == "/staging/web"
    r = drover.put("/v1/apps/staging/web", dict(spec, id="/staging/other"))
    assert r.status == 422
    assert r.json()["errors"][0]["path"] == "$.id"


def test_list_and_delete(drover):
    drover.post("/v1/apps", seed_spec(env="production"))
    drover.post("/v1/apps", seed_spec(env="staging"))
    apps = drover.get("/v1/apps").json()["apps"]
    assert sorted(a["id"] for a in apps) == ["/app/production/test-server",
                                             "/app/staging/test-server"]
    r = drover.delete("/v1/apps/app/staging/test-server")
    assert r.status == 200 and r.json()["deleted"] is True
    assert drover.get("/v1/apps/app/staging/test-server").status == 404
    assert drover.get("/v1/apps/app/staging/test-server/versions").status == 404
    assert drover.delete("/v1/apps/app/staging/test-server").status == 404
    assert [a["id"] for a in drover.get("/v1/apps").json()["apps"]] == [
        "/app/production/test-server"]
    # Recreating starts a fresh history.
    r = drover.post("/v1/apps", seed_spec(env="staging"))
    assert r.status == 201 and r.json()["version"] == 1


def test_validation_reports_every_error_with_paths(drover):
    spec = seed_spec()
    spec["healtChecks"] = spec.pop("healthChecks")
    spec["instances"] = -1
    spec["cpus"] = "lots"
    r = drover.post("/v1/apps", spec)
    assert r.status == 422, r
    body = r.json()
    paths = {e["path"]: e["reason"] for e in body["errors"]}
    assert "$.healtChecks" in paths and "healthChecks" in paths["$.healtChecks"]
    assert "$.instances" in paths
    assert "$.cpus" in paths
    assert "3 errors" in body["error"]
    # Nothing was stored.
    assert drover.get("/v1/apps/app/production/test-server").status == 404


def test_unimplemented_marathon_fields_are_warnings(drover):
    spec = dict(seed_spec(), dependencies=["/app/production/db"])
    r = drover.post("/v1/apps", spec)
    assert r.status == 201, r
    warns = r.json()["warnings"]
    assert any(w["path"] == "$.dependencies" for w in warns)
    assert drover.get("/v1/apps/app/production/test-server").json()["warnings"] == warns


def test_dry_run_diff_stores_nothing(drover):
    spec = seed_spec()
    r = drover.post("/v1/apps?dry_run=1", spec)
    assert r.status == 200
    assert r.json()["current_version"] is None
    assert r.json()["changed"] is True
    assert drover.get("/v1/apps").json()["apps"] == []
    drover.post("/v1/apps", spec)
    r = drover.post("/v1/apps?dry_run=1", dict(spec, instances=8))
    body = r.json()
    assert body["current_version"] == 1
    assert {"path": "$.instances", "op": "change", "old": 4, "new": 8} in body["diff"]
    assert drover.get("/v1/apps/app/production/test-server").json()["version"] == 1


def test_bad_requests_get_clear_4xx(drover):
    r = drover.post("/v1/apps", '{"id": "/a/b", "cmd": ')
    assert r.status == 400
    assert "line 1" in r.json()["error"]
    assert drover.post("/v1/apps", "").status == 400
    assert drover.post("/v1/apps", "[1,2]").status == 422
    r = drover.request("PATCH", "/v1/apps")
    assert r.status == 405 and "POST" in r.headers["allow"]
    assert drover.get("/v1/apps/Bad_Id").status == 400
    r = drover.get("/v1/nothing")
    assert r.status == 404 and "/v1/nothing" in r.json()["error"]
    # Still serving.
    assert drover.get("/v1/status").status == 200


def test_concurrent_updates_make_distinct_versions(drover):
    spec = seed_spec()
    drover.post("/v1/apps", spec)
    results = []

    def worker(n):
        r = drover.put("/v1/apps/app/production/test-server", dict(spec, instances=10 + n))
        results.append((r.status, r.json().get("version")))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = [v for s, v in results if s == 200]
    # Every successful write got its own version number; none were lost.
    assert len(ok) == len(set(ok))
    versions = drover.get("/v1/apps/app/production/test-server/versions").json()["versions"]
    assert len(versions) == 1 + len(ok)
    assert all(s in (200, 409) for s, _ in results)
