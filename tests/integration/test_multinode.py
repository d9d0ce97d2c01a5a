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
