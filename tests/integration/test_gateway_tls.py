"""HTTPS on `drover gateway`: two hosts with their own certificates (made
with the openssl CLI, signed by a test CA), static routes to a Python
backend, Python's ssl module verifying each host's certificate by SNI, HSTS,
X-Forwarded-Proto, a SIGHUP reload after a certificate file is replaced, and
the usage and startup errors."""
import http.server
import json
import os
import signal
import socket
import socketserver
import ssl
import subprocess
import threading
import time
import urllib.request

import pytest

from conftest import BIN, SANITIZER_MARKS, free_port


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=drover test CA",
            cwd=d)


def make_leaf(d, name, host):
    """<name>.crt / <name>.key for host, signed by the CA in d."""
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={host}", cwd=d)
    with open(os.path.join(d, f"{name}.ext"), "w") as f:
        f.write(f"subjectAltName=DNS:{host}\nbasicConstraints=CA:FALSE\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext",
            cwd=d)




def file_der(path):
    with open(path) as f:
        pem = f.read()
    return ssl.PEM_cert_to_DER_cert(pem)


class Backend(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = json.dumps({"name": self.server.name, "path": self.path,
                           "host": self.headers.get("Host"),
                           "xfp": self.headers.get("X-Forwarded-Proto")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def backend(name):
    s = Backend(("127.0.0.1", 0), Handler)
    s.name = name
    threading.Thread(target=s.serve_forever, daemon=True).start()
    return s


def wait_for(fn, timeout=20, interval=0.1, what="condition"):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


class TlsGateway:
    def __init__(self, tmp, args):
        self.http_port = free_port()
        self.https_port = free_port()
        self.admin_port = free_port()
        self.log_path = os.path.join(tmp, f"gateway-{self.https_port}.log")
        self.log = open(self.log_path, "ab")
        cmd = [BIN, "gateway", "--http", f"127.0.0.1:{self.http_port}",
               "--https", f"127.0.0.1:{self.https_port}",
               "--admin", f"127.0.0.1:{self.admin_port}", "--threads", "2"] + args
        env = dict(os.environ)
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=1")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log, env=env)
        wait_for(self._up, 20, what="gateway admin endpoint")

    def _up(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"gateway exited {self.proc.returncode}:\n{self.logs()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/healthz",
                                        timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def logs(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            rc = self.proc.wait(timeout=30)
        else:
            rc = self.proc.returncode
        self.log.close()
        reports = [line for line in self.logs().splitlines()
                   if any(m in line for m in SANITIZER_MARKS)]
        assert not reports, "\n".join(reports)
        return rc


def read_to_end(s):
    """Everything until the server closes (close_notify or EOF)."""
    data = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ssl.SSLZeroReturnError:
            break
        if not chunk:
            break
        data += chunk
    return data


def https_get(port, cafile, sni, path="/", host=None):
    """GET over TLS verifying sni against the CA: (peer cert DER, status, headers, body)."""
    ctx = ssl.create_default_context(cafile=cafile)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=sni) as s:
            der = s.getpeercert(binary_form=True)
            req = f"GET {path} HTTP/1.1\r\nHost: {host or sni}\r\nConnection: close\r\n\r\n"
            s.sendall(req.encode())
            data = read_to_end(s)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
    return der, status, headers, body


@pytest.fixture
def pki(tmp_path):
    d = str(tmp_path / "pki")
    os.makedirs(d)
    make_ca(d)
    make_leaf(d, "a", "a.test")
    make_leaf(d, "b", "b.test")
    make_leaf(d, "a2", "a.test")
    return d


@pytest.fixture
def backends():
    made = [backend("A"), backend("B")]
    yield made
    for b in made:
        b.shutdown()
        b.server_close()


def test_two_hosts_sni_hsts_and_sighup_reload(tmp_path, pki, backends):
    a, b = backends
    # a.test's files are copies, so the test can replace them in place
    with open(os.path.join(pki, "a.crt")) as f:
        a_crt = f.read()
    with open(os.path.join(pki, "a.key")) as f:
        a_key = f.read()
    live_crt, live_key = os.path.join(pki, "live.crt"), os.path.join(pki, "live.key")
    with open(live_crt, "w") as f:
        f.write(a_crt)
    with open(live_key, "w") as f:
        f.write(a_key)
    g = TlsGateway(str(tmp_path), [
        "--cert", f"a.test={live_crt},{live_key}",
        "--cert", f"b.test={pki}/b.crt,{pki}/b.key",
        "--hsts", "31536000",
        "--route", f"a.test=127.0.0.1:{a.server_address[1]}",
        "--route", f"b.test=127.0.0.1:{b.server_address[1]}",
    ])
    try:
        ca = os.path.join(pki, "ca.crt")
        for sni, name, crt in (("a.test", "A", "a.crt"), ("b.test", "B", "b.crt")):
            der, status, headers, body = https_get(g.https_port, ca, sni, "/x")
            assert der == file_der(os.path.join(pki, crt)), f"{sni} got the wrong certificate"
            assert status == 200
            info = json.loads(body)
            assert info["name"] == name and info["path"] == "/x" and info["host"] == sni
            assert info["xfp"] == "https"
            assert headers["strict-transport-security"] == "max-age=31536000"
        # plain HTTP still works, without HSTS, X-Forwarded-Proto http
        with urllib.request.urlopen(urllib.request.Request(
                f"http://127.0.0.1:{g.http_port}/p", headers={"Host": "b.test"}), timeout=5) as r:
            assert r.status == 200
            assert "strict-transport-security" not in {k.lower() for k in r.headers.keys()}
            assert json.loads(r.read())["xfp"] == "http"
        # the wrong name fails verification: b.test's certificate does not name a.test
        ctx = ssl.create_default_context(cafile=ca)
        with socket.create_connection(("127.0.0.1", g.https_port), timeout=10) as raw:
            with pytest.raises(ssl.SSLCertVerificationError):
                ctx.wrap_socket(raw, server_hostname="c.test")

        # replace a.test's certificate (as renewal tooling does: write + rename) and SIGHUP
        for src, dst in (("a2.crt", live_crt), ("a2.key", live_key)):
            with open(os.path.join(pki, src)) as f:
                text = f.read()
            with open(dst + ".tmp", "w") as f:
                f.write(text)
            os.rename(dst + ".tmp", dst)
        g.proc.send_signal(signal.SIGHUP)
        new = file_der(os.path.join(pki, "a2.crt"))
        wait_for(lambda: https_get(g.https_port, ca, "a.test")[0] == new, 10,
                 what="a.test's new certificate after SIGHUP")
        der, status, _, body = https_get(g.https_port, ca, "a.test", "/after")
        assert status == 200 and json.loads(body)["name"] == "A"
        der, _, _, _ = https_get(g.https_port, ca, "b.test")
        assert der == file_der(os.path.join(pki, "b.crt"))
        assert "reloaded certificate" in g.logs()
    finally:
        assert g.stop() == 0


def test_misdirected_request_421(tmp_path, pki, backends):
    """A request whose Host another certificate answers for, on a connection
    whose handshake proved a different name, gets 421 naming both; the same
    name (any case, with a port, a trailing dot) and names the same wildcard
    certificate covers are served; no SNI means no check."""
    a, b = backends
    make_leaf(pki, "w", "*.w.test")
    g = TlsGateway(str(tmp_path), [
        "--cert", f"a.test={pki}/a.crt,{pki}/a.key",
        "--cert", f"b.test={pki}/b.crt,{pki}/b.key",
        "--cert", f"*.w.test={pki}/w.crt,{pki}/w.key",
        "--route", f"a.test=127.0.0.1:{a.server_address[1]}",
        "--route", f"b.test=127.0.0.1:{b.server_address[1]}",
        "--route", f"x.w.test=127.0.0.1:{a.server_address[1]}",
        "--route", f"y.w.test=127.0.0.1:{b.server_address[1]}",
    ])
    try:
        ca = os.path.join(pki, "ca.crt")
        _, status, _, body = https_get(g.https_port, ca, "a.test", host="b.test")
        assert status == 421, body
        assert b"b.test" in body and b"a.test" in body
        for host in ("A.Test", f"a.test:{g.https_port}", "a.test."):
            _, status, _, body = https_get(g.https_port, ca, "a.test", host=host)
            assert status == 200 and json.loads(body)["name"] == "A", (host, body)
        # one wildcard certificate covers both names: no reason to refuse
        _, status, _, body = https_get(g.https_port, ca, "x.w.test", host="y.w.test")
        assert status == 200 and json.loads(body)["name"] == "B"
        # a client that sent no SNI got the default certificate; nothing to compare
        ctx = ssl.create_default_context(cafile=ca)
        ctx.check_hostname = False
        with socket.create_connection(("127.0.0.1", g.https_port), timeout=10) as raw:
            with ctx.wrap_socket(raw) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n")
                data = read_to_end(s)
        assert data.startswith(b"HTTP/1.1 200"), data[:200]
    finally:
        assert g.stop() == 0


def test_usage_and_startup_errors(tmp_path, pki):
    port = free_port()
    r = subprocess.run([BIN, "gateway", "--https", f"127.0.0.1:{port}", "--route",
                        "=127.0.0.1:1"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "--cert" in r.stderr
    missing = os.path.join(pki, "nope.crt")
    r = subprocess.run([BIN, "gateway", "--http", f"127.0.0.1:{free_port()}", "--admin", "off",
                        "--https", f"127.0.0.1:{port}", "--cert",
                        f"{missing},{pki}/a.key", "--route", "=127.0.0.1:1"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and missing in r.stderr, r.stderr
    assert not any(m in r.stderr for m in SANITIZER_MARKS), r.stderr
