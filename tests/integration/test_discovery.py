"""Discovery on a node: the agent's locator (msgpack RPC), `drover resolve`,
DNS with dig, and draining with router confirmation before SIGTERM."""
import os
import signal
import socket
import subprocess
import time

import msgpack

from conftest import BIN

from test_agent import alive, healthy, instances, wait_for


def locator_of(d):
    node = wait_for(lambda: d.get("/v1/nodes").json()["nodes"], what="node")[0]
    return node["locator"]


class Subscriber:
    """A router subscribed to a node's table with `connect`."""

    def __init__(self, hostport, uuid="test-router"):
        host, port = hostport.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.unpacker = msgpack.Unpacker(raw=False)
        self.sock.sendall(msgpack.packb([1, 1, [uuid]]))
        self.table = {}
        self.revision = 0

    def next_write(self, timeout=10):
        self.sock.settimeout(timeout)
        while True:
            for msg in self.unpacker:
                channel, mtype, args = msg[0], msg[1], msg[2]
                headers = dict(msg[3]) if len(msg) > 3 else {}
                assert channel == 1 and mtype == 0, msg
                self.revision = int(headers["revision"])
                for name, value in args[0].items():
                    if value[0]:
                        self.table[name] = value
                    else:
                        self.table.pop(name, None)
                return args[0]
            self.unpacker.feed(self.sock.recv(65536))

    def until(self, pred, timeout=15):
        deadline = time.time() + timeout
        while not pred(self.table):
            self.next_write(max(0.1, deadline - time.time()))

    def settle(self, quiet=0.3):
        """Read every write that arrives until none has for `quiet` seconds."""
        try:
            while True:
                self.next_write(quiet)
        except socket.timeout:
            pass

    def ack(self, revision=None):
        self.sock.sendall(msgpack.packb([1, 3, [revision or self.revision]]))

    def close(self):
        self.sock.close()


def test_resolve_and_versions(drover):
    drover.post("/v1/apps", {"id": "/t/web", "cmd": "exec sleep 1000", "instances": 2})
    ok = wait_for(lambda: healthy(drover, "/t/web", 2), what="2 up")
    loc = locator_of(drover)
    r = drover.cli("resolve", "/t/web", "--locator", loc, "--json")
    assert r.returncode == 0, r.stderr
    import json
    got = json.loads(r.stdout)
    assert sorted(e["port"] for e in got["endpoints"]) == sorted(i["ports"][0] for i in ok)
    assert got["version"] == 1 and got["api"] == "service"
    r = drover.cli("resolve", "/t/web@1", "--locator", loc, "--json")
    assert len(json.loads(r.stdout)["endpoints"]) == 2
    r = drover.cli("resolve", "/t/nothing", "--locator", loc)
    assert r.returncode == 1 and "not found" in r.stderr


def test_subscriber_gets_table_and_changes(drover):
    loc = locator_of(drover)
    sub = Subscriber(loc)
    sub.next_write()  # the full table (maybe empty)
    drover.post("/v1/apps", {"id": "/t/sub", "cmd": "exec sleep 1000", "instances": 2})
    sub.until(lambda t: len(t.get("/t/sub", [[]])[0]) == 2)
    drover.delete("/v1/apps/t/sub")
    sub.until(lambda t: "/t/sub" not in t)
    sub.close()


def test_dns_a_and_srv(drover):
    drover.post("/v1/apps", {"id": "/production/web", "cmd": "exec sleep 1000", "instances": 2})
    ok = wait_for(lambda: healthy(drover, "/production/web", 2), what="2 up")
    dig = ["dig", "@127.0.0.1", "-p", str(drover.dns_port), "+short", "+time=2", "+tries=2"]
    a = subprocess.run(dig + ["web.production.drover.", "A"], capture_output=True, text=True)
    assert a.stdout.split() == ["127.0.0.1"], a.stdout + a.stderr
    srv = subprocess.run(dig + ["web.production.drover.", "SRV"], capture_output=True, text=True)
    ports = sorted(int(line.split()[2]) for line in srv.stdout.strip().splitlines())
    assert ports == sorted(i["ports"][0] for i in ok)
    nx = subprocess.run(["dig", "@127.0.0.1", "-p", str(drover.dns_port), "+time=2",
                         "nope.production.drover.", "A"], capture_output=True, text=True)
    assert "NXDOMAIN" in nx.stdout


def test_instance_killed_only_after_routers_confirm(make_drover):
    d = make_drover(args=["--drain-timeout", "20s"]).start()
    d.post("/v1/apps", {"id": "/t/drain", "cmd": "exec sleep 1000", "instances": 2})
    ok = wait_for(lambda: healthy(d, "/t/drain", 2), what="2 up")
    sub = Subscriber(locator_of(d))
    sub.until(lambda t: len(t.get("/t/drain", [[]])[0]) == 2)
    sub.ack()
    d.put("/v1/apps/t/drain", {"id": "/t/drain", "cmd": "exec sleep 1000", "instances": 1})
    sub.until(lambda t: len(t.get("/t/drain", [[]])[0]) == 1)
    gone = [i for i in ok if [i["host"], i["ports"][0]] not in sub.table["/t/drain"][0]]
    assert len(gone) == 1
    sub.settle()
    time.sleep(0.7)
    assert alive(gone[0]["pid"]), "SIGTERM before the router confirmed the removal"
    sub.ack()
    wait_for(lambda: not alive(gone[0]["pid"]), timeout=10, what="stop after the ack")
    sub.close()


def test_unconfirmed_drain_proceeds_after_timeout_and_names_router(make_drover):
    d = make_drover(args=["--drain-timeout", "1s"]).start()
    d.post("/v1/apps", {"id": "/t/slow", "cmd": "exec sleep 1000", "instances": 1})
    ok = wait_for(lambda: healthy(d, "/t/slow", 1), what="up")[0]
    sub = Subscriber(locator_of(d), uuid="lazy-router")
    sub.until(lambda t: "/t/slow" in t)
    d.delete("/v1/apps/t/slow")
    wait_for(lambda: not alive(ok["pid"]), timeout=10, what="stop after the drain timeout")
    # The events stream carried the instance's reason naming the router.
    import json as _json
    sock = socket.create_connection(("127.0.0.1", d.port), timeout=10)
    sock.sendall(b"GET /v1/events?from=1&type=instance HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    deadline = time.time() + 10
    while b"lazy-router" not in data and time.time() < deadline:
        data += sock.recv(65536)
    sock.close()
    assert b"lazy-router" in data and b"not confirmed" in data
    sub.close()


def test_metalocator_serves_every_node_two_hops(drover):
    """agent locator -> server metalocator -> client: resolve and connect on
    the metalocator see what the node runs."""
    drover.post("/v1/apps", {"id": "/t/meta", "cmd": "exec sleep 1000", "instances": 2})
    ok = wait_for(lambda: healthy(drover, "/t/meta", 2), what="2 up")
    meta = f"127.0.0.1:{drover.meta_port}"
    import json

    def resolved():
        r = drover.cli("resolve", "/t/meta", "--locator", meta, "--json")
        return json.loads(r.stdout) if r.returncode == 0 else None
    got = wait_for(resolved, what="metalocator resolve")
    assert sorted(e["port"] for e in got["endpoints"]) == sorted(i["ports"][0] for i in ok)
    sub = Subscriber(meta)
    sub.until(lambda t: len(t.get("/t/meta", [[]])[0]) == 2)
    sub.close()


def test_drain_waits_for_router_two_hops_away(make_drover):
    d = make_drover(args=["--drain-timeout", "20s"]).start()
    d.post("/v1/apps", {"id": "/t/far", "cmd": "exec sleep 1000", "instances": 2})
    ok = wait_for(lambda: healthy(d, "/t/far", 2), what="2 up")
    sub = Subscriber(f"127.0.0.1:{d.meta_port}", uuid="edge-router")
    sub.until(lambda t: len(t.get("/t/far", [[]])[0]) == 2)
    sub.settle()
    sub.ack()
    d.put("/v1/apps/t/far", {"id": "/t/far", "cmd": "exec sleep 1000", "instances": 1})
    sub.until(lambda t: len(t.get("/t/far", [[]])[0]) == 1)
    gone = [i for i in ok if [i["host"], i["ports"][0]] not in sub.table["/t/far"][0]]
    assert len(gone) == 1
    sub.settle()
    time.sleep(0.7)
    assert alive(gone[0]["pid"]), "SIGTERM before the router two hops away confirmed"
    sub.ack()
    wait_for(lambda: not alive(gone[0]["pid"]), timeout=10, what="stop after the edge ack")
    hist = [h["reason"] for i in instances(d, "/t/far") for h in i["history"]]
    sub.close()


def rpc_resolve(hostport, name, seed=None, channel=1):
    host, port = hostport.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    s.sendall(msgpack.packb([channel, 0, [name] + ([seed] if seed else [])]))
    u = msgpack.Unpacker(raw=False)
    while True:
        for msg in u:
            s.close()
            return msg
        u.feed(s.recv(65536))


def test_routing_groups_through_the_metalocator(drover):
    for app in ("blue", "green"):
        drover.post("/v1/apps", {"id": f"/t/{app}", "cmd": "exec sleep 1000"})
    blue = wait_for(lambda: healthy(drover, "/t/blue", 1), what="blue")[0]
    green = wait_for(lambda: healthy(drover, "/t/green", 1), what="green")[0]
    meta = f"127.0.0.1:{drover.meta_port}"
    # Subscribe to the groups first: the change must arrive on this channel.
    host, port = meta.rsplit(":", 1)
    rs = socket.create_connection((host, int(port)), timeout=10)
    rs.sendall(msgpack.packb([1, 5, ["test-router"]]))
    ru = msgpack.Unpacker(raw=False)

    def routing_update():
        while True:
            for msg in ru:
                assert msg[0] == 1 and msg[1] == 0, msg
                return msg[2][0]
            ru.feed(rs.recv(65536))
    assert routing_update() == {}  # no groups yet

    r = drover.put("/v1/groups/web", {"members": [{"target": "/t/blue", "weight": 100},
                                                  {"target": "/t/green", "weight": 0}]})
    assert r.status in (200, 201), r
    assert routing_update() == {"web": [["/t/blue", 100], ["/t/green", 0]]}

    def picks(port_of):
        out = []
        for i in range(20):
            msg = rpc_resolve(meta, "web", channel=1)
            assert msg[1] == 0, msg  # value
            out.append(msg[2][0][0][1])
        return out
    wait_for(lambda: set(picks(None)) == {blue["ports"][0]}, what="all traffic to blue")

    drover.put("/v1/groups/web", {"members": [{"target": "/t/blue", "weight": 0},
                                              {"target": "/t/green", "weight": 100}]})
    assert routing_update() == {"web": [["/t/blue", 0], ["/t/green", 100]]}  # same connection
    wait_for(lambda: set(picks(None)) == {green["ports"][0]}, what="all traffic to green")

    # 50/50: a seed pins a client to one member.
    drover.put("/v1/groups/web", {"members": [{"target": "/t/blue", "weight": 50},
                                              {"target": "/t/green", "weight": 50}]})
    routing_update()
    pinned = {rpc_resolve(meta, "web", seed="user-42")[2][0][0][1] for _ in range(10)}
    assert len(pinned) == 1
    drover.delete("/v1/groups/web")
    assert routing_update() == {"web": []}
    assert rpc_resolve(meta, "web")[1] == 1  # error: gone
    rs.close()


def test_node_locator_serves_groups_and_own_services(drover):
    """Every agent's own locator serves the routing groups too (followed from
    /v1/groups), and the agent's own services are resolvable names."""
    drover.post("/v1/apps", {"id": "/t/blue", "cmd": "exec sleep 1000"})
    drover.post("/v1/apps", {"id": "/t/green", "cmd": "exec sleep 1000"})
    blue = wait_for(lambda: healthy(drover, "/t/blue", 1), what="blue")[0]
    green = wait_for(lambda: healthy(drover, "/t/green", 1), what="green")[0]
    meta = f"127.0.0.1:{drover.meta_port}"
    # The node's locator, found by name at the metalocator.
    msg = wait_for(lambda: (lambda m: m if m[1] == 0 else None)(rpc_resolve(meta, "drover/locator")),
                   what="drover/locator")
    (lhost, lport), = msg[2][0]
    node_loc = f"{lhost}:{lport}"
    for own in ("drover/node", "drover/logging"):
        m = rpc_resolve(node_loc, own)
        assert m[1] == 0 and len(m[2][0]) == 1, m
    # cluster at the metalocator: itself, then the node it links.
    host, port = meta.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    s.sendall(msgpack.packb([1, 3, []]))
    u = msgpack.Unpacker(raw=False)
    while True:
        got = next(iter(u), None)
        if got:
            break
        u.feed(s.recv(65536))
    s.close()
    assert got[1] == 0 and len(got[2]) == 2, got
    assert got[2][1][1] == [[lhost, lport]], got

    drover.put("/v1/groups/ab", {"members": [{"target": "/t/blue", "weight": 100},
                                             {"target": "/t/green", "weight": 0}]})

    def pick():
        m = rpc_resolve(node_loc, "ab")
        return m[2][0][0][1] if m[1] == 0 else None
    wait_for(lambda: pick() == blue["ports"][0], what="node locator serves the group")
    drover.put("/v1/groups/ab", {"members": [{"target": "/t/blue", "weight": 0},
                                             {"target": "/t/green", "weight": 100}]})
    wait_for(lambda: pick() == green["ports"][0], what="the weight change at the node")
    drover.delete("/v1/groups/ab")
    wait_for(lambda: rpc_resolve(node_loc, "ab")[1] == 1, what="group gone at the node")
