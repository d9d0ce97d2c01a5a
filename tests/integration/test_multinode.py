"""Several hosts in network namespaces (DESIGN.md "This machine"): a server
and two agents, multicast discovery, cross-node resolve through the
metalocator, and a killed node's instances leaving every table within three
announce intervals. All traffic stays inside namespaces this test makes."""
import json
import os
import signal
import subprocess
import time

import pytest

from conftest import BIN, kill_leftover_instances

GROUP = "239.192.77.1:10054"
INTERVAL = "300ms"


def sh(*cmd, check=True):
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check)


class Net:
    def __init__(self, n):
        tag = f"{os.getpid() % 10000}"
        self.br = f"drvbr{tag}"
        self.hosts = [f"drvh{tag}x{i}" for i in range(1, n + 1)]
        sh("ip", "netns", "add", self.br)
        sh("ip", "netns", "exec", self.br, "ip", "link", "add", "br0", "type", "bridge")
        sh("ip", "netns", "exec", self.br, "ip", "link", "set", "br0", "up")
        for i, h in enumerate(self.hosts, 1):
            sh("ip", "netns", "add", h)
            a, b = f"v{tag}h{i}", f"v{tag}b{i}"
            sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
            sh("ip", "link", "set", a, "netns", h)
            sh("ip", "link", "set", b, "netns", self.br)
            sh("ip", "netns", "exec", self.br, "ip", "link", "set", b, "master", "br0", "up")
            sh("ip", "netns", "exec", h, "ip", "addr", "add", f"10.77.0.{i}/24", "dev", a)
            sh("ip", "netns", "exec", h, "ip", "link", "set", a, "up")
            sh("ip", "netns", "exec", h, "ip", "link", "set", "lo", "up")
            sh("ip", "netns", "exec", h, "ip", "route", "add", "224.0.0.0/4", "dev", a)

    def addr(self, i):
        return f"10.77.0.{i}"

    def run(self, i, *cmd, **kw):
        return subprocess.run(["ip", "netns", "exec", self.hosts[i - 1]] + list(cmd),
                              capture_output=True, text=True, timeout=30, **kw)

    def spawn(self, i, cmd, log):
        return subprocess.Popen(["ip", "netns", "exec", self.hosts[i - 1]] + cmd,
                                stdout=log, stderr=log)

    def close(self):
        for h in self.hosts + [self.br]:
            sh("ip", "netns", "del", h, check=False)


@pytest.fixture
def net():
    n = Net(3)
    yield n
    n.close()


def wait_for(fn, timeout=30, what="condition"):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def test_three_hosts_discovery_and_node_loss(net, tmp_path):
    api = f"http://{net.addr(1)}:7400"
    conf = tmp_path / "server.conf"
    conf.write_text(f"data-dir = {tmp_path}/server\napi = {net.addr(1)}:7400\n"
                    f"locator = {net.addr(1)}:10053\ndiscover = {GROUP}\n"
                    f"announce-interval = {INTERVAL}\nannounce-if = {net.addr(1)}\n")
    logs = open(tmp_path / "procs.log", "wb")
    procs = [net.spawn(1, [BIN, "server", "--config", str(conf)], logs)]
    agents = {}
    try:
        for i in (2, 3):
            agents[i] = net.spawn(i, [
                BIN, "agent", "--server", api, "--data-dir", f"{tmp_path}/agent{i}",
                "--advertise", net.addr(i), "--listen", f"{net.addr(i)}:7401",
                "--locator", f"{net.addr(i)}:10053", "--announce", GROUP,
                "--announce-interval", INTERVAL, "--announce-if", net.addr(i)], logs)
        cli = lambda *a, **kw: net.run(1, BIN, "--addr", api, *a, **kw)

        def nodes():
            r = cli("nodes", "--json")
            return json.loads(r.stdout)["nodes"] if r.returncode == 0 else None
        wait_for(lambda: (nodes() or []) if len(nodes() or []) == 2 else None, what="2 nodes")
        spec = json.dumps({"id": "/t/multi", "cmd": "exec sleep 1000", "instances": 4})
        assert cli("deploy", "-", input=spec).returncode == 0

        def healthy():
            r = cli("ps", "/t/multi", "--json")
            inst = json.loads(r.stdout)["instances"] if r.returncode == 0 else []
            ok = [i for i in inst if i["state"] == "healthy"]
            return ok if len(ok) == 4 else None
        ok = wait_for(healthy, what="4 healthy instances")
        assert {i["host"] for i in ok} == {net.addr(2), net.addr(3)}  # spread over both

        # Cross-node resolve: asked from host 3, answered by the metalocator
        # on host 1 with the instances of both nodes.
        def resolved():
            r = net.run(3, BIN, "resolve", "/t/multi", "--locator", f"{net.addr(1)}:10053",
                        "--json")
            eps = json.loads(r.stdout)["endpoints"] if r.returncode == 0 else []
            return eps if len(eps) == 4 else None
        eps = wait_for(resolved, what="4 endpoints via the metalocator")
        assert {e["host"] for e in eps} == {net.addr(2), net.addr(3)}

        # kill -9 node 3's agent: its announces stop, and within three
        # intervals (0.9 s, plus checking slack) the metalocator drops it.
        agents[3].kill()
        t0 = time.time()

        def only_node2():
            r = net.run(3, BIN, "resolve", "/t/multi", "--locator", f"{net.addr(1)}:10053",
                        "--json")
            eps = json.loads(r.stdout)["endpoints"] if r.returncode == 0 else None
            return eps if eps is not None and {e["host"] for e in eps} == {net.addr(2)} else None
        wait_for(only_node2, timeout=10, what="node 3's instances to leave the metalocator")
        assert time.time() - t0 < 3.0, f"took {time.time() - t0:.1f}s"
    finally:
        for p in list(agents.values()) + procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
        logs.close()
        kill_leftover_instances(str(tmp_path))


def test_partition_restart_and_static_peers(net, tmp_path):
    api = f"http://{net.addr(1)}:7400"
    conf = tmp_path / "server.conf"
    conf.write_text(f"data-dir = {tmp_path}/server\napi = {net.addr(1)}:7400\n"
                    f"locator = {net.addr(1)}:10053\ndiscover = {GROUP}\n"
                    f"announce-interval = {INTERVAL}\nannounce-if = {net.addr(1)}\n")
    logs = open(tmp_path / "procs.log", "wb")
    server = net.spawn(1, [BIN, "server", "--config", str(conf)], logs)
    agent = net.spawn(2, [
        BIN, "agent", "--server", api, "--data-dir", f"{tmp_path}/agent2",
        "--advertise", net.addr(2), "--listen", f"{net.addr(2)}:7401",
        "--locator", f"{net.addr(2)}:10053", "--announce", GROUP,
        "--announce-interval", INTERVAL, "--announce-if", net.addr(2)], logs)
    # A second server on host 3 that knows node 2 only as a static peer.
    conf3 = tmp_path / "peer.conf"
    conf3.write_text(f"data-dir = {tmp_path}/server3\napi = {net.addr(3)}:7400\n"
                     f"locator = {net.addr(3)}:10053\npeers = node2={net.addr(2)}:10053\n")
    peer_server = net.spawn(3, [BIN, "server", "--config", str(conf3)], logs)
    procs = [agent, server, peer_server]
    try:
        cli = lambda *a, **kw: net.run(1, BIN, "--addr", api, *a, **kw)
        wait_for(lambda: net.run(1, "curl", "-sf", f"{api}/v1/status").returncode == 0,
                 what="server up")
        spec = json.dumps({"id": "/t/part", "cmd": "exec sleep 1000", "instances": 2})
        wait_for(lambda: cli("deploy", "-", input=spec).returncode == 0, what="deploy")

        def endpoints(locator_host, want):
            def check():
                r = net.run(3, BIN, "resolve", "/t/part", "--locator",
                            f"{net.addr(locator_host)}:10053", "--json")
                eps = json.loads(r.stdout)["endpoints"] if r.returncode == 0 else []
                return eps if len(eps) == want else None
            return check
        wait_for(endpoints(1, 2), what="2 endpoints via the metalocator")
        wait_for(endpoints(3, 2), what="2 endpoints via the static-peer metalocator")

        # Partition node 2 (its link down): it stops being heard and leaves
        # the metalocator's table; link up: it is found again and resyncs.
        link = net.run(2, "ip", "-o", "link", "show").stdout
        veth = [l.split(":")[1].strip().split("@")[0] for l in link.splitlines()
                if "veth" in l or "@" in l][0]
        assert net.run(2, "ip", "link", "set", veth, "down").returncode == 0
        wait_for(lambda: endpoints(1, 0)() is not None or net.run(
            1, BIN, "resolve", "/t/part", "--locator", f"{net.addr(1)}:10053").returncode == 1,
            timeout=10, what="partitioned node dropped")
        assert net.run(2, "ip", "link", "set", veth, "up").returncode == 0
        net.run(2, "ip", "route", "replace", "224.0.0.0/4", "dev", veth)
        wait_for(endpoints(1, 2), timeout=15, what="node back after the partition")

        # Restart the metalocator (the server): it rebuilds its table.
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=20) == 0
        server = net.spawn(1, [BIN, "server", "--config", str(conf)], logs)
        procs[1] = server
        wait_for(endpoints(1, 2), timeout=15, what="table rebuilt after a metalocator restart")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
        logs.close()
        kill_leftover_instances(str(tmp_path))


def test_constraints_labels_resources_and_node_loss(tmp_path):
    """Three agents with labels, hostnames and capacities in their own
    namespaces: constraints and resources decide placement, what cannot be
    placed says why per node, and a killed node's instances are replaced on
    the others once its lease expires; a node that comes back gets work."""
    net = Net(4)
    api = f"http://{net.addr(1)}:7400"
    logs = open(tmp_path / "procs.log", "wb")
    conf = tmp_path / "server.conf"
    conf.write_text(f"data-dir = {tmp_path}/server\napi = {net.addr(1)}:7400\n"
                    f"locator = {net.addr(1)}:10053\n")
    procs = [net.spawn(1, [BIN, "server", "--config", str(conf)], logs)]
    labels = {2: "rack=r1,disk=ssd", 3: "rack=r2,disk=ssd", 4: "rack=r3,disk=hdd"}

    def agent(i):
        return net.spawn(i, [
            BIN, "agent", "--server", api, "--data-dir", f"{tmp_path}/agent{i}",
            "--advertise", net.addr(i), "--listen", f"{net.addr(i)}:7401",
            "--locator", f"{net.addr(i)}:10053", "--labels", labels[i],
            "--hostname", f"host{i}", "--cpus", "1", "--mem", "512"], logs)
    agents = {i: agent(i) for i in (2, 3, 4)}

    def call(method, path, body=None):
        cmd = ["curl", "-s", "-X", method, api + path]
        if body is not None:
            cmd += ["-d", json.dumps(body)]
        r = net.run(1, *cmd)
        return json.loads(r.stdout) if r.returncode == 0 and r.stdout else {}

    def placed(app):
        inst = call("GET", f"/v1/instances?app={app}").get("instances", [])
        return [i["host"] for i in inst if i["state"] in ("healthy", "running")]

    hosts = {net.addr(i): f"host{i}" for i in (2, 3, 4)}
    try:
        wait_for(lambda: len(call("GET", "/v1/nodes").get("nodes", [])) == 3, what="3 nodes")
        nodes = call("GET", "/v1/nodes")["nodes"]
        assert sorted(n["hostname"] for n in nodes) == ["host2", "host3", "host4"]
        assert all(n["cpus"] == 1 and n["mem_mb"] == 512 for n in nodes)

        base = {"cmd": "exec sleep 1000", "cpus": 0.1, "mem": 16}
        call("POST", "/v1/apps", dict(base, id="/t/ssd", instances=3, constraints=[
            ["disk", "CLUSTER", "ssd"], ["hostname", "UNIQUE"]]))
        call("POST", "/v1/apps", dict(base, id="/t/racks", instances=3,
                                      constraints=[["rack", "GROUP_BY"]]))
        call("POST", "/v1/apps", dict(base, id="/t/big", instances=1, cpus=2))
        call("POST", "/v1/apps", dict(base, id="/t/hdd", instances=2,
                                      constraints=[["disk", "LIKE", "h.*"]]))

        def on(app, n):
            got = placed(app)
            return got if len(got) == n else None
        ssd = wait_for(lambda: on("/t/ssd", 2), what="2 ssd instances")
        assert {hosts[h] for h in ssd} == {"host2", "host3"}
        racks = wait_for(lambda: on("/t/racks", 3), what="one per rack")
        assert {hosts[h] for h in racks} == {"host2", "host3", "host4"}
        hdd = wait_for(lambda: on("/t/hdd", 2), what="hdd instances")
        assert {hosts[h] for h in hdd} == {"host4"}

        def why(app):
            p = call("GET", f"/v1/apps{app}").get("placement")
            return p if p and p["waiting"] else None
        p = wait_for(lambda: why("/t/ssd"), what="ssd placement reason")
        assert p["waiting"] == 1 and "0 of 3 nodes fit" in p["summary"], p
        reasons = {n["node"]: n["reason"] for n in p["nodes"]}
        assert len(reasons) == 3
        assert any('["disk", "CLUSTER", "ssd"]' in r for r in reasons.values()), reasons
        assert sum('["hostname", "UNIQUE"]' in r for r in reasons.values()) == 2, reasons
        p = wait_for(lambda: why("/t/big"), what="big placement reason")
        assert "cpus" in p["summary"], p
        # the event stream never ends: read it for 2 s
        ev = net.run(1, "curl", "-s", "-m", "2", f"{api}/v1/events?from=1&type=app.waiting").stdout
        assert "/t/big" in ev and "/t/ssd" in ev

        # kill -9 host4's agent: its lease (15 s) expires, its instances are
        # marked lost and replaced elsewhere within the constraints
        agents[4].kill()
        agents[4].wait()

        def moved():
            got = placed("/t/racks")
            inst = call("GET", "/v1/instances?app=/t/racks").get("instances", [])
            lost = [i for i in inst if i["state"] == "lost"]
            return got if len(got) == 3 and net.addr(4) not in got and lost else None
        racks = wait_for(moved, timeout=45, what="host4's instance replaced")
        assert {hosts[h] for h in racks} <= {"host2", "host3"}
        # /t/hdd can only run on host4: it waits, and says so
        p = wait_for(lambda: why("/t/hdd"), what="hdd waits")
        assert p["waiting"] == 2 and "LIKE" in p["summary"], p

        # host4 comes back: the waiting instances go there, and the racks
        # app spreads over it again (one moved, surge first: never fewer
        # than 3 running)
        agents[4] = agent(4)
        hdd = wait_for(lambda: on("/t/hdd", 2), timeout=30, what="hdd back on host4")
        assert {hosts[h] for h in hdd} == {"host4"}
        low = []

        def spread_again():
            got = placed("/t/racks")
            low.append(len(got))
            ok = len(got) == 3 and {hosts[h] for h in got} == {"host2", "host3", "host4"}
            return got if ok else None
        wait_for(spread_again, timeout=40, what="racks app back on host4")
        assert min(low) >= 3, low
    finally:
        for p in list(agents.values()) + procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
        logs.close()
        kill_leftover_instances(str(tmp_path))
        net.close()
