"""Routing groups: /v1/groups CRUD, validation with JSON paths, CAS, events,
and the `drover group` verbs, against a real `drover dev`."""
import json

from test_events import SSE

CANARY = {"name": "web",
          "members": [{"target": "/production/web@41", "weight": 90},
                      {"target": "/production/web@42", "weight": 10}],
          "sticky": {"header": "X-User"}}


def paths(r):
    assert r.status == 422, r
    return {e["path"]: e["reason"] for e in r.json()["errors"]}


# ---- API ---------------------------------------------------------------------

def test_crud(drover):
    assert drover.get("/v1/groups").json() == {"groups": []}
    assert drover.get("/v1/groups/web").status == 404

    r = drover.put("/v1/groups/web", CANARY)
    assert r.status == 201, r
    g = r.json()
    assert g["name"] == "web" and g["sticky"] == {"header": "X-User"}
    assert [(m["target"], m["weight"], m["share"]) for m in g["members"]] == [
        ("/production/web@41", 90, 90.0), ("/production/web@42", 10, 10.0)]
    assert g["mod_revision"] == int(r.headers["x-drover-index"])
    created = g["created_at"]

    got = drover.get("/v1/groups/web")
    assert got.status == 200
    assert got.json() == g

    # Replace: members and sticky go, created_at stays.
    r = drover.put("/v1/groups/web", {"members": [
        {"target": "/production/web@41", "weight": 1},
        {"target": "/production/web@42", "weight": 1},
        {"target": "/production/web@43", "weight": 1}]})
    assert r.status == 200, r
    g2 = r.json()
    assert g2["sticky"] is None and g2["created_at"] == created
    assert g2["updated_at"] >= created and g2["mod_revision"] > g["mod_revision"]
    assert [m["share"] for m in g2["members"]] == [33.33, 33.33, 33.33]

    drover.put("/v1/groups/api", {"members": [{"target": "/production/api", "weight": 5}],
                                  "sticky": {"cookie": "uid"}})
    listed = drover.get("/v1/groups").json()["groups"]
    assert [x["name"] for x in listed] == ["api", "web"]
    assert listed[0]["members"] == [{"target": "/production/api", "weight": 5, "share": 100.0}]
    assert listed[0]["sticky"] == {"cookie": "uid"}

    r = drover.delete("/v1/groups/web")
    assert r.status == 200 and r.json() == {"name": "web", "deleted": True}
    assert drover.get("/v1/groups/web").status == 404
    assert drover.delete("/v1/groups/web").status == 404
    assert [x["name"] for x in drover.get("/v1/groups").json()["groups"]] == ["api"]
    assert drover.request("HEAD", "/v1/groups/api").status == 200


def test_targets_are_normalized(drover):
    r = drover.put("/v1/groups/web", {"members": [
        {"target": "production/web@v41", "weight": 3},
        {"target": "/production/web@042", "weight": 1},
        {"target": "staging/web", "weight": 0}]})
    assert r.status == 201, r
    m = r.json()["members"]
    assert [x["target"] for x in m] == ["/production/web@41", "/production/web@42",
                                        "/staging/web"]
    assert [x["share"] for x in m] == [75.0, 25.0, 0.0]


def test_validation_errors_name_paths(drover):
    r = drover.put("/v1/groups/web", {
        "name": "other", "extra": 1,
        "members": [
            {"target": "/Production/web@41", "weight": 9.5},
            {"target": "/production/web@x", "wieght": 1},
            {"target": "/production/web@41", "weight": 10001},
            {"target": "production/web@v41", "weight": 1},
            "nope",
            {"weight": 1},
        ],
        "sticky": {"header": "X User"}})
    p = paths(r)
    assert "routing group web is invalid" in r.json()["error"]
    assert p["$.extra"].startswith("unknown field")
    assert "differs" in p["$.name"]
    assert "Production" in p["$.members[0].target"]
    assert p["$.members[0].weight"] == "must be an integer 0..10000"
    assert p["$.members[1].wieght"].startswith("unknown field")
    assert "required" in p["$.members[1].weight"]
    assert "positive integer" in p["$.members[1].target"]
    assert p["$.members[2].weight"] == "must be an integer 0..10000"
    # /production/web@41 and production/web@v41 are the same target.
    assert "duplicate of $.members[2].target" in p["$.members[3].target"]
    assert "must be an object" in p["$.members[4]"]
    assert "required" in p["$.members[5].target"]
    assert "header name" in p["$.sticky.header"]
    assert len(r.json()["errors"]) == len(p) == 12
    assert drover.get("/v1/groups/web").status == 404  # nothing stored


def test_validation_limits(drover):
    def put(body):
        return drover.put("/v1/groups/g", body)

    assert paths(put({"members": [{"target": "/a", "weight": 0},
                                  {"target": "/b", "weight": 0}]})) == {
        "$.members": "every weight is 0: at least one member needs a weight > 0"}
    assert "at least one" in paths(put({"members": []}))["$.members"]
    assert "required" in paths(put({}))["$.members"]
    assert "array" in paths(put({"members": {"target": "/a"}}))["$.members"]
    many = [{"target": f"/a@{i}", "weight": 1} for i in range(1, 102)]
    assert "at most 100" in paths(put({"members": many}))["$.members"]
    assert put({"members": many[:100]}).status == 201
    for w in (-1, 10001, "10", True, None, 1.0):
        p = paths(put({"members": [{"target": "/a", "weight": w}]}))
        assert p == {"$.members[0].weight": "must be an integer 0..10000"}, (w, p)
    assert put({"members": [{"target": "/a", "weight": 10000}]}).status == 200
    for t in ("/a@", "/a@0", "/a@v", "/a@1@2", "/a@-1", "/a@ 1", "", "/a b", 5):
        p = paths(put({"members": [{"target": t, "weight": 1}]}))
        assert list(p) == ["$.members[0].target"], (t, p)
    for s in ({}, {"header": "a", "cookie": "b"}, "X-User", {"hdr": "x"}, {"cookie": ""}):
        p = paths(put({"members": [{"target": "/a", "weight": 1}], "sticky": s}))
        assert all(k.startswith("$.sticky") for k in p) and p, (s, p)
    r = put({"members": [{"target": "/a", "weight": 1}], "sticky": None})
    assert r.status == 200 and r.json()["sticky"] is None
    r = drover.put("/v1/groups/g", "[1]")
    assert r.status == 422 and r.json()["errors"] == [{"path": "$", "reason": "must be an object"}]
    r = drover.put("/v1/groups/g", "{nope")
    assert r.status == 400 and "line 1" in r.json()["error"]
    assert drover.put("/v1/groups/g", "").status == 400
    assert drover.put("/v1/groups/g", "x" * (64 * 1024 + 1)).status == 413


def test_names_and_methods(drover):
    body = {"members": [{"target": "/a", "weight": 1}]}
    for bad in ("Web", "-web", "web_1", "a" * 64, "web%20x"):
        r = drover.put("/v1/groups/" + bad, body)
        assert r.status == 400 and "invalid group name" in r.json()["error"], (bad, r)
    for good in ("web", "0", "web-canary.v2", "a" * 63):
        assert drover.put("/v1/groups/" + good, body).status == 201, good
    assert drover.get("/v1/groups/web/extra").status == 404
    r = drover.post("/v1/groups/web", body)
    assert r.status == 405 and "PUT" in r.headers["allow"]
    assert drover.put("/v1/groups", body).status == 405


def test_cas(drover):
    body = {"members": [{"target": "/a", "weight": 1}]}
    assert drover.put("/v1/groups/web?cas=0", body).status == 201
    r = drover.put("/v1/groups/web?cas=0", body)
    assert r.status == 409 and "already exists" in r.json()["error"]
    rev = drover.get("/v1/groups/web").json()["mod_revision"]
    assert drover.put(f"/v1/groups/web?cas={rev + 5}", body).status == 409
    r = drover.put(f"/v1/groups/web?cas={rev}", body)
    assert r.status == 200 and r.json()["mod_revision"] > rev
    assert drover.delete(f"/v1/groups/web?cas={rev}").status == 409
    assert drover.get("/v1/groups/web").status == 200
    assert drover.put("/v1/groups/web?cas=x", body).status == 400
    assert drover.put("/v1/groups/nope?cas=3", body).status == 409
    new_rev = drover.get("/v1/groups/web").json()["mod_revision"]
    assert drover.delete(f"/v1/groups/web?cas={new_rev}").status == 200


def test_events(drover):
    s = SSE(drover.port, "/v1/events?type=group")
    drover.put("/v1/kv/ignored", "1")
    drover.put("/v1/groups/web", CANARY)
    drover.put("/v1/groups/web", {"members": [{"target": "/production/web@42", "weight": 1}]})
    drover.delete("/v1/groups/web")
    evs = s.events(3)
    assert [e["event"] for e in evs] == ["group.updated", "group.updated", "group.deleted"]
    data = [json.loads(e["data"]) for e in evs]
    assert all(d["name"] == "web" for d in data)
    assert data[0]["revision"] < data[1]["revision"] < data[2]["revision"]
    assert set(data[0]) == {"type", "revision", "name"}
    s.close()


def test_groups_survive_restart(make_drover):
    d = make_drover().start()
    d.put("/v1/groups/web", CANARY)
    before = d.get("/v1/groups/web").json()
    assert d.stop() == 0
    d.start()
    assert d.get("/v1/groups/web").json() == before
    assert d.stop() == 0


# ---- CLI ---------------------------------------------------------------------

def test_cli_create_set_show_ls_rm(drover):
    r = drover.cli("group", "create", "web", "/production/web@41=90", "/production/web@42=10",
                   "--sticky-header", "X-User")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "created group web: /production/web@41=90%, /production/web@42=10%\n"
    g = drover.get("/v1/groups/web").json()
    assert g["sticky"] == {"header": "X-User"}

    r = drover.cli("group", "create", "web", "/production/web@41=1")
    assert r.returncode == 1 and "already exists" in r.stderr and "group set" in r.stderr
    assert drover.get("/v1/groups/web").json() == g  # untouched

    # The example from the issue: "v" before the version; sticky is kept.
    r = drover.cli("group", "set", "web", "/production/web@v41=50", "/production/web@v42=50")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "updated group web: /production/web@41=50%, /production/web@42=50%\n"
    g = drover.get("/v1/groups/web").json()
    assert g["sticky"] == {"header": "X-User"}
    assert [m["weight"] for m in g["members"]] == [50, 50]

    r = drover.cli("group", "set", "web", "/production/web@42=1", "--no-sticky")
    assert r.returncode == 0, r.stderr
    assert drover.get("/v1/groups/web").json()["sticky"] is None
    r = drover.cli("group", "set", "web", "/production/web@42=3", "/production/web@43=1",
                   "--sticky-cookie", "uid")
    assert r.returncode == 0, r.stderr

    # set creates a missing group too.
    r = drover.cli("group", "set", "api", "production/api=1")
    assert r.returncode == 0 and r.stdout.startswith("created group api: /production/api=100%")

    r = drover.cli("group", "show", "web")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["name:", "web"]
    assert lines[1] == "members:"
    assert lines[2].split() == ["-", "/production/web@42", "weight", "3", "75%"]
    assert lines[3].split() == ["-", "/production/web@43", "weight", "1", "25%"]
    assert "sticky:     cookie uid" in r.stdout
    assert "created:" in r.stdout and "updated:" in r.stdout and "revision:" in r.stdout
    r = drover.cli("group", "show", "web", "--json")
    assert json.loads(r.stdout) == drover.get("/v1/groups/web").json()

    r = drover.cli("group", "ls")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["NAME", "MEMBERS", "UPDATED"]
    assert lines[1].startswith("api ") and "/production/api=100%" in lines[1]
    assert lines[2].startswith("web ")
    assert "/production/web@42=75%, /production/web@43=25%" in lines[2]
    assert lines[2].rstrip().endswith("ago")
    r = drover.cli("group", "ls", "--json")
    assert [g["name"] for g in json.loads(r.stdout)["groups"]] == ["api", "web"]

    r = drover.cli("group", "rm", "web")
    assert r.returncode == 0 and r.stdout == "deleted group web\n"
    r = drover.cli("group", "rm", "web")
    assert r.returncode == 1 and "group web not found" in r.stderr
    r = drover.cli("group", "show", "web")
    assert r.returncode == 1 and "not found" in r.stderr


def test_cli_errors(drover):
    # Words that are not TARGET=WEIGHT are usage errors; nothing is sent.
    for words in (["/a"], ["/a=x"], ["/a=10001"], ["=5"], ["/a=-1"]):
        r = drover.cli("group", "set", "web", *words)
        assert r.returncode == 2, (words, r.stderr)
        assert words[0] in r.stderr
    r = drover.cli("group", "set", "web")
    assert r.returncode == 2 and "TARGET=WEIGHT" in r.stderr
    r = drover.cli("group", "set", "web", "/a=1", "--sticky-header", "h", "--no-sticky")
    assert r.returncode == 2
    assert drover.get("/v1/groups/web").status == 404

    # Server-side problems come back with their paths and the word typed.
    r = drover.cli("group", "set", "web", "/a@1=1", "/a@v1=2", "/B=1")
    assert r.returncode == 1
    assert "routing group web is invalid (2 errors)" in r.stderr
    assert "$.members[1].target (from /a@v1=2): duplicate" in r.stderr
    assert "$.members[2].target (from /B=1):" in r.stderr
    r = drover.cli("group", "set", "web", "/a=0")
    assert r.returncode == 1 and "every weight is 0" in r.stderr
    r = drover.cli("group", "create", "Web", "/a=1")
    assert r.returncode == 1 and "invalid group name" in r.stderr
    r = drover.cli("group", "frob")
    assert r.returncode == 2 and "frob" in r.stderr


def test_cli_help(drover):
    import subprocess
    from conftest import BIN
    r = subprocess.run([BIN, "--help"], capture_output=True, text=True)
    assert "group create" in r.stdout and "group set" in r.stdout
    for sub in ("create", "set", "rm", "ls", "show"):
        h = subprocess.run([BIN, "group", sub, "--help"], capture_output=True, text=True)
        assert h.returncode == 0 and h.stdout.startswith("usage: drover group " + sub), h
    r = subprocess.run([BIN, "group", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "create" in r.stdout and "show" in r.stdout
